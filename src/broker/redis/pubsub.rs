//! The pub/sub task of a single Redis: one connection, batched SUBSCRIBE/UNSUBSCRIBE, the
//! unsubscribe grace, and the liveness probe (published through the command pool on this
//! node's own probe channel, awaited on the pub/sub connection).
//!
//! Leaves to others: the reconnect loop and the channels the node wants (`reconnect`), commands
//! (`commands`), the cluster (`cluster`).

use crate::broker::redis::error::RedisFailure;
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Client, RedisError};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{Instrument, debug, info, warn};

use super::commands::{bounded, publish, redis_error};
use super::reconnect::{
    Asked, Demand, Exit, MAX_BATCH, Reconnecting, Stopped, SubscriptionChange, Waiter, link_broken,
};
use super::subscriptions::Subscriptions;
use crate::broker::BrokerError;

/// Why the pub/sub connection could not be made or was lost.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PubSubError {
    #[error("{during} timed out")]
    TimedOut { during: &'static str },
    #[error("{during}: {source}")]
    Redis {
        during: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("SUBSCRIBE failed: {0}")]
    Subscribe(#[source] BrokerError),
    #[error("connection closed")]
    Closed,
    #[error("the liveness probe did not come back within {0:?}")]
    ProbeLost(Duration),
}

/// `work` bounded by `limit`, its failure labelled with what it was doing.
async fn within<T>(
    limit: Duration,
    during: &'static str,
    work: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, PubSubError> {
    match timeout(limit, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(PubSubError::Redis { during, source }),
        Err(_) => Err(PubSubError::TimedOut { during }),
    }
}

/// The one task that owns the pub/sub connection to a single Redis.
pub(crate) struct PubSubTask {
    demand: Demand,
    client: Client,
    command_timeout: Duration,
    /// This node's own channel for liveness probes.
    probe_channel: String,
}
/// One live pub/sub connection and what is subscribed on it.
pub(crate) struct Connection {
    sink: PubSubSink,
    stream: PubSubStream,
    /// Channels on this connection (the probe channel aside).
    subscriptions: Subscriptions<()>,
    last_activity: Instant,
    last_probe: Instant,
    probe_seq: u64,
    /// The probe in flight: its sequence number, when it was sent.
    probe: Option<(u64, Instant)>,
}

impl Reconnecting for PubSubTask {
    type Connected = Connection;
    type Error = PubSubError;

    fn demand(&mut self) -> &mut Demand {
        &mut self.demand
    }

    fn target(&self) -> String {
        redacted_addr(&self.client)
    }

    async fn connect(&mut self) -> Result<Option<Connection>, PubSubError> {
        self.open().await
    }

    async fn serve(&mut self, link: Connection) -> Exit<PubSubError> {
        self.serve_link(link).await
    }
}

/// Host and port of the client's address, for logs (never the password).
pub(crate) fn redacted_addr(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

impl PubSubTask {
    pub(crate) fn new(
        demand: Demand,
        client: Client,
        command_timeout: Duration,
        probe_channel: String,
    ) -> PubSubTask {
        PubSubTask {
            demand,
            client,
            command_timeout,
            probe_channel,
        }
    }

    /// Connect and subscribe every wanted channel. `Ok(None)`: stop.
    async fn open(&mut self) -> Result<Option<Connection>, PubSubError> {
        let client = self.client.clone();
        let connecting = within(
            self.demand.timings.connect_timeout,
            "connect",
            client.get_async_pubsub(),
        );
        let Some(pubsub) = self.demand.while_down(connecting).await else {
            return Ok(None);
        };
        let (mut sink, stream) = pubsub?.split();

        // Everything wanted, and what was asked for while the link was down by callers that
        // still wait (a channel nobody waits for must not stay subscribed).
        let mut channels = self.demand.pending_channels();
        channels.push(self.probe_channel.clone());
        for chunk in channels.chunks(MAX_BATCH) {
            let started = Instant::now();
            within(self.command_timeout, "resubscribe", sink.subscribe(chunk)).await?;
            self.demand.observe_roundtrip(started);
        }
        let waiting = self.demand.take_waiting();
        let now = Instant::now();
        let mut subscriptions = Subscriptions::default();
        for (channel, kind) in &self.demand.wanted {
            subscriptions.insert_live(channel.clone(), kind.clone(), ());
        }
        let mut link = Connection {
            sink,
            stream,
            subscriptions,
            last_activity: now,
            last_probe: now,
            probe_seq: 0,
            probe: None,
        };
        for (channel, _, reply) in waiting {
            if reply.send(Ok(())).is_err() {
                self.release(&mut link, channel);
            }
        }
        self.demand.count_live(link.subscriptions.live_count());
        let resumed = self.demand.mark_up();
        info!(
            channels = link.subscriptions.live_count(),
            resumed, "redis pub/sub link up"
        );
        if !self.demand.announce_up(resumed).await {
            return Ok(None);
        }
        Ok(Some(link))
    }

    /// Serve one connection until it fails or the broker stops.
    async fn serve_link(&mut self, mut link: Connection) -> Exit<PubSubError> {
        let timer = sleep_until(self.next_wake(&link));
        tokio::pin!(timer);
        loop {
            let wake = self.next_wake(&link);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            // Biased, timers first: a stream that is always ready must not starve the probe
            // and the ends of graces.
            let step = tokio::select! {
                biased;
                _ = self.demand.stop.cancelled() => Err(Exit::Stop),
                _ = &mut timer => self.on_timer(&mut link).await,
                change = self.demand.changes.recv() => match change {
                    Some(change) => self.on_changes(&mut link, change).await,
                    None => Err(Exit::Stop),
                },
                message = link.stream.next() => match message {
                    Some(message) => self.on_message(&mut link, message).await,
                    None => Err(Exit::Lost(PubSubError::Closed)),
                },
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// The earliest of: the end of a grace, a probe due, a probe overdue.
    fn next_wake(&self, link: &Connection) -> Instant {
        let timings = &self.demand.timings;
        let probe = match link.probe {
            Some((_, sent)) => sent + timings.probe_timeout,
            None => {
                (link.last_activity + timings.probe_idle).min(link.last_probe + timings.probe_every)
            }
        };
        link.subscriptions
            .next_release()
            .map_or(probe, |release| probe.min(release))
    }

    /// A batch of subscription changes: everything queued now, one SUBSCRIBE.
    async fn on_changes(
        &mut self,
        link: &mut Connection,
        first: SubscriptionChange,
    ) -> Result<(), Exit<PubSubError>> {
        let mut to_subscribe: Vec<String> = Vec::new();
        let mut replies = Vec::new();
        for asked in self.demand.take_batch(first) {
            match asked {
                Asked::Subscribe((channel, target, reply)) => {
                    if link.subscriptions.is_live(&channel) {
                        // Still subscribed (maybe in its grace): live now, nothing to send.
                        link.subscriptions.keep(&channel);
                        if reply.send(Ok(())).is_err() {
                            self.release(link, channel);
                        }
                    } else {
                        if !to_subscribe.contains(&channel) {
                            to_subscribe.push(channel.clone());
                        }
                        replies.push((channel, target, reply));
                    }
                }
                Asked::Release(channel) => {
                    if link.subscriptions.is_live(&channel) {
                        self.release(link, channel);
                    }
                }
            }
        }
        if to_subscribe.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        match timeout(self.command_timeout, link.sink.subscribe(&to_subscribe)).await {
            Ok(Ok(())) => {
                self.demand.observe_roundtrip(started);
                self.subscribed(link, to_subscribe, replies);
                Ok(())
            }
            Ok(Err(err)) if !link_broken(&err) => {
                // Redis refused (an ACL, say): the connection itself is fine.
                warn!(%err, "redis refused SUBSCRIBE");
                self.refuse(replies, RedisFailure::Redis(err).into());
                Ok(())
            }
            other => {
                let error = match other {
                    Ok(Err(err)) => redis_error(err),
                    _ => BrokerError::Timeout,
                };
                self.refuse(replies, error.clone());
                Err(Exit::Lost(PubSubError::Subscribe(error)))
            }
        }
    }

    /// SUBSCRIBE succeeded: the channels are live, their callers answered.
    fn subscribed(&mut self, link: &mut Connection, channels: Vec<String>, replies: Vec<Waiter>) {
        for (channel, target, reply) in replies {
            link.subscriptions.insert_live(channel.clone(), target, ());
            if reply.send(Ok(())).is_err() {
                self.release(link, channel);
            }
        }
        // Released within this batch, after its subscribe was queued.
        for channel in channels {
            if !self.demand.wanted.contains_key(&channel)
                && !link.subscriptions.is_releasing(&channel)
            {
                self.release(link, channel);
            }
        }
        self.demand.count_live(link.subscriptions.live_count());
    }

    /// Subscriptions that cannot be made: no longer wanted, their callers told why.
    fn refuse(&mut self, replies: Vec<Waiter>, error: BrokerError) {
        for (channel, _, reply) in replies {
            self.demand.wanted.remove(&channel);
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// Start the grace of a channel that is subscribed but no longer wanted.
    fn release(&mut self, link: &mut Connection, channel: String) {
        self.demand.wanted.remove(&channel);
        let deadline = Instant::now() + self.demand.timings.unsubscribe_grace;
        link.subscriptions.release(channel, deadline);
    }

    async fn on_message(
        &mut self,
        link: &mut Connection,
        message: redis::Msg,
    ) -> Result<(), Exit<PubSubError>> {
        let now = Instant::now();
        link.last_activity = now;
        let channel = message.get_channel_name();
        if channel == self.probe_channel {
            let seq: Option<u64> = std::str::from_utf8(message.get_payload_bytes())
                .ok()
                .and_then(|s| s.parse().ok());
            if let (Some((expected, sent)), Some(seq)) = (link.probe, seq)
                && seq == expected
            {
                link.probe = None;
                self.demand.observe_roundtrip(sent);
            }
            return Ok(());
        }
        // Publications for a channel already unsubscribed can still be on their way.
        let Some((kind, ())) = link.subscriptions.live(channel) else {
            return Ok(());
        };
        self.demand
            .deliver(kind, message.get_payload_bytes())
            .await
            .map_err(|Stopped| Exit::Stop)
    }

    async fn on_timer(&mut self, link: &mut Connection) -> Result<(), Exit<PubSubError>> {
        let now = Instant::now();
        let timings = &self.demand.timings;
        if let Some((_, sent)) = link.probe {
            if now >= sent + timings.probe_timeout {
                return Err(Exit::Lost(PubSubError::ProbeLost(timings.probe_timeout)));
            }
        } else if now >= link.last_activity + timings.probe_idle
            || now >= link.last_probe + timings.probe_every
        {
            self.send_probe(link, now);
        }

        let wanted = &self.demand.wanted;
        let expired = link
            .subscriptions
            .due_releases(now, MAX_BATCH, |channel| wanted.contains_key(channel));
        if expired.is_empty() {
            return Ok(());
        }
        match within(
            self.command_timeout,
            "unsubscribe",
            link.sink.unsubscribe(&expired),
        )
        .await
        {
            Ok(()) => {
                for channel in &expired {
                    link.subscriptions.remove_live(channel);
                }
                self.demand.count_live(link.subscriptions.live_count());
                Ok(())
            }
            Err(PubSubError::Redis { source, .. }) if !link_broken(&source) => {
                warn!(err = %source, "redis refused UNSUBSCRIBE");
                Ok(())
            }
            Err(err) => Err(Exit::Lost(err)),
        }
    }

    /// Publish the next probe through the pool, without waiting here: its return is awaited
    /// on the pub/sub connection.
    fn send_probe(&self, link: &mut Connection, now: Instant) {
        link.probe_seq += 1;
        link.probe = Some((link.probe_seq, now));
        link.last_probe = now;
        let shared = self.demand.shared.clone();
        let channel = self.probe_channel.clone();
        let payload = link.probe_seq.to_string();
        let limit = self.command_timeout;
        tokio::spawn(
            async move {
                // Bounded: a probe that cannot be sent simply does not come back.
                let sent = publish(&shared.commands, &channel, false, payload.as_bytes());
                if let Err(err) = bounded(limit, sent).await {
                    debug!(%err, "liveness probe not published");
                }
            }
            .in_current_span(),
        );
    }
}
