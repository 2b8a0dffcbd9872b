//! What both pub/sub tasks share: the channels the node wants and the subscribers waiting
//! for a link ([`Demand`], kept across reconnects), Up/Down towards the node, the reconnect
//! loop with capped exponential backoff and jitter ([`run_reconnecting`]), and turning what
//! arrives on a channel into the node's event ([`ExternalIds`]).
//!
//! Leaves to others: the connections themselves and what is subscribed on them (the
//! single-Redis task in `pubsub`, the cluster task in `cluster`), commands (`commands`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::RedisError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::commands::{Commands, load_functions};
use crate::broker::{BrokerError, BrokerEvent, PresenceEvent, Target};
use crate::metrics::Metrics;
use crate::protocol::{decode_control, decode_envelope, decode_presence_event};

/// Room for subscribe/unsubscribe requests waiting for the pub/sub task.
pub(crate) const COMMAND_QUEUE: usize = 4096;
/// At most this many channels in one SUBSCRIBE or UNSUBSCRIBE.
pub(crate) const MAX_BATCH: usize = 1024;

/// The timings of the pub/sub link. [`Default`] is what a node uses; tests shorten them.
#[derive(Clone, Debug)]
pub struct Timings {
    /// A channel the node no longer needs stays subscribed this long, so join/leave churn does
    /// not thrash Redis; a subscribe within it cancels the pending unsubscribe.
    pub unsubscribe_grace: Duration,
    /// When nothing has arrived on the pub/sub connection for this long, publish a probe on
    /// the node's private probe channel.
    pub probe_idle: Duration,
    /// Probe at least this often even when traffic flows: a probe that comes back late shows
    /// the node is this far behind Redis, which bounds what piles up in front of it.
    pub probe_every: Duration,
    /// A probe that has not come back by then means the subscription stopped delivering (or the
    /// node fell this far behind): drop the connection and reconnect.
    pub probe_timeout: Duration,
    /// Longest wait for a new pub/sub connection (TCP, TLS, AUTH).
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            unsubscribe_grace: Duration::from_secs(2),
            probe_idle: Duration::from_secs(5),
            probe_every: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// What the broker's handle and its pub/sub task both need.
pub(crate) struct Shared {
    /// True while the pub/sub link is connected and every wanted channel is subscribed.
    pub(crate) up: AtomicBool,
    pub(crate) commands: Commands,
    pub(crate) prefix: String,
    pub(crate) metrics: Arc<Metrics>,
}

/// What arrives on a subscribed channel.
#[derive(Clone, Debug)]
pub(crate) enum Channel {
    /// Publications for a target (docs/protocol.md "Redis channels").
    Messages(Target),
    /// `member_joined` / `member_left` of a room, published by `roomcast_presence`.
    Presence(Arc<str>),
}

/// Answers a subscribe once the subscription is live (or cannot be).
pub(crate) type Reply = oneshot::Sender<Result<(), BrokerError>>;

/// What the broker asks of its pub/sub task (not to be confused with the clients' commands).
pub(crate) enum SubscriptionChange {
    /// Subscribe a channel; the caller hears once it is live.
    Subscribe(Waiter),
    Unsubscribe {
        channel: String,
    },
}

/// What a batch of changes asks of a live link, the wanted channels already updated.
pub(crate) enum Asked {
    /// A channel now wanted, by a caller that still waits.
    Subscribe(Waiter),
    /// A channel that was wanted and no longer is.
    Release(String),
}

/// A subscribe waiting for its answer: the channel, its kind, the caller.
pub(crate) type Waiter = (String, Channel, Reply);

/// The node stopped listening, or the broker was dropped: the task ends.
#[derive(Debug)]
pub(crate) struct Stopped;

/// Why a pub/sub link ended.
pub(crate) enum Exit<E> {
    /// The broker was dropped or the node stopped listening: end the task.
    Stop,
    /// The connection failed or the probe did not come back: reconnect.
    Lost(E),
}

/// What a pub/sub task keeps across its connections: the channels the node wants, the
/// subscribers waiting for a link, the node's event queue, and whether the node heard `Up`.
pub(crate) struct Demand {
    pub(crate) shared: Arc<Shared>,
    events: mpsc::Sender<BrokerEvent>,
    pub(crate) changes: mpsc::Receiver<SubscriptionChange>,
    pub(crate) stop: CancellationToken,
    pub(crate) timings: Timings,
    /// Every channel the node wants, whatever the state of the connection.
    pub(crate) wanted: HashMap<String, Channel>,
    /// Subscribe requests made while the link is down: answered once it is back.
    waiting: Vec<Waiter>,
    /// Ids for publications that arrive without one (plain `PUBLISH` from services).
    external_ids: ExternalIds,
    /// An `Up` was sent and no `Down` since.
    announced_up: bool,
    /// The link has been up at least once (the next `Up` is a resumption).
    ever_up: bool,
}

impl Demand {
    pub(crate) fn new(
        shared: Arc<Shared>,
        events: mpsc::Sender<BrokerEvent>,
        changes: mpsc::Receiver<SubscriptionChange>,
        stop: CancellationToken,
        timings: Timings,
        token: u64,
    ) -> Demand {
        Demand {
            shared,
            events,
            changes,
            stop,
            timings,
            wanted: HashMap::new(),
            waiting: Vec::new(),
            external_ids: ExternalIds::new(token),
            announced_up: false,
            ever_up: false,
        }
    }

    /// `first` and every change queued behind it, up to [`MAX_BATCH`] (one round trip),
    /// applied to the wanted channels: what the link must do about them.
    pub(crate) fn take_batch(&mut self, first: SubscriptionChange) -> Vec<Asked> {
        let mut asked = Vec::new();
        let mut taken = 1;
        let mut next = Some(first);
        while let Some(change) = next {
            match change {
                SubscriptionChange::Subscribe((_, _, reply)) if reply.is_closed() => {}
                SubscriptionChange::Subscribe(waiter) => {
                    self.wanted.insert(waiter.0.clone(), waiter.1.clone());
                    asked.push(Asked::Subscribe(waiter));
                }
                SubscriptionChange::Unsubscribe { channel } => {
                    if self.wanted.remove(&channel).is_some() {
                        asked.push(Asked::Release(channel));
                    }
                }
            }
            next = if taken < MAX_BATCH {
                self.changes.try_recv().ok()
            } else {
                None
            };
            taken += 1;
        }
        asked
    }

    /// A change while the link is down: subscribes wait for it, unsubscribes apply.
    fn queue_while_down(&mut self, change: SubscriptionChange) {
        match change {
            SubscriptionChange::Subscribe(waiter) => {
                // Callers give up after their timeout; forget them as they go.
                self.waiting.retain(|(_, _, reply)| !reply.is_closed());
                self.waiting.push(waiter);
            }
            SubscriptionChange::Unsubscribe { channel } => {
                self.wanted.remove(&channel);
            }
        }
    }

    /// Whether the node heard `Up` at least once (a new link is a resumption).
    pub(crate) fn has_been_up(&self) -> bool {
        self.ever_up
    }

    /// The link is up with every wanted channel: publishes may go. Returns whether this is a
    /// resumption; the caller sends `Up` (after loading the functions).
    pub(crate) fn mark_up(&mut self) -> bool {
        self.shared.up.store(true, Ordering::Release);
        let resumed = self.ever_up;
        self.ever_up = true;
        self.announced_up = true;
        resumed
    }

    /// The link is down: publishes fail, the node hears `Down`. False: stop.
    async fn went_down(&mut self) -> bool {
        self.shared.up.store(false, Ordering::Release);
        self.shared.metrics.broker_subscriptions.set(0);
        if self.announced_up {
            self.announced_up = false;
            return self.emit(BrokerEvent::Down).await;
        }
        true
    }

    /// Sleep `delay` while the link is down, answering changes. False: stop.
    async fn wait_down(&mut self, delay: Duration) -> bool {
        self.while_down(sleep_until(Instant::now() + delay))
            .await
            .is_some()
    }

    /// Run `work` (connecting, say) while the link is down, queueing the changes that arrive
    /// meanwhile. None: stop.
    pub(crate) async fn while_down<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                done = &mut work => return Some(done),
                change = self.changes.recv() => match change {
                    Some(change) => self.queue_while_down(change),
                    None => return None,
                },
            }
        }
    }

    /// Every channel a new link must subscribe: the wanted ones, and those asked for while
    /// the link was down by callers that still wait (a channel nobody waits for must not
    /// stay subscribed).
    pub(crate) fn pending_channels(&mut self) -> Vec<String> {
        self.waiting.retain(|(_, _, reply)| !reply.is_closed());
        let mut channels: Vec<String> = self.wanted.keys().cloned().collect();
        for (channel, _, _) in &self.waiting {
            if !self.wanted.contains_key(channel) {
                channels.push(channel.clone());
            }
        }
        channels
    }

    /// The subscribes that waited for a link, now wanted: the caller answers them.
    pub(crate) fn take_waiting(&mut self) -> Vec<Waiter> {
        self.waiting.retain(|(_, _, reply)| !reply.is_closed());
        let waiting = std::mem::take(&mut self.waiting);
        for (channel, kind, _) in &waiting {
            self.wanted.insert(channel.clone(), kind.clone());
        }
        waiting
    }

    /// Tell the node the link is up, once the function library is loaded: services'
    /// `FCALL roomcast_publish` needs it, also after a Redis restart. False: stop.
    pub(crate) async fn announce_up(&mut self, resumed: bool) -> bool {
        if let Err(err) = load_functions(&self.shared.commands).await {
            warn!(%err, "cannot load the roomcast Redis functions (history)");
        }
        self.emit(BrokerEvent::Up { resumed }).await
    }

    /// A subscribe/unsubscribe/ping round trip that began at `started` is over.
    pub(crate) fn observe_roundtrip(&self, started: Instant) {
        self.shared
            .metrics
            .broker_roundtrip
            .observe(started.elapsed().as_secs_f64());
    }

    /// How many channels are live now (the subscriptions gauge).
    pub(crate) fn count_live(&self, live: usize) {
        self.shared.metrics.broker_subscriptions.set(live as i64);
    }

    /// Hand what arrived on a live channel of `kind` to the node.
    pub(crate) async fn deliver(&mut self, kind: &Channel, payload: &[u8]) -> Result<(), Stopped> {
        let Some(event) = self.external_ids.event(kind, payload, &self.shared.metrics) else {
            return Ok(());
        };
        if self.emit(event).await {
            Ok(())
        } else {
            Err(Stopped)
        }
    }

    /// Hand an event to the node, waiting for room in its queue. False: the node is gone or
    /// the broker stopped.
    pub(crate) async fn emit(&self, event: BrokerEvent) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            sent = self.events.send(event) => sent.is_ok(),
        }
    }
}

/// A pub/sub task: [`run_reconnecting`] connects it, lets it serve until its link is lost,
/// and connects it again with capped backoff, telling the node `Down` and `Up` as it goes.
pub(crate) trait Reconnecting {
    type Connected;
    /// Why a link could not be made or was lost.
    type Error: std::fmt::Display;
    fn demand(&mut self) -> &mut Demand;
    /// What it connects to, for logs (never a password).
    fn target(&self) -> String;
    /// Connect and subscribe every wanted channel. `Ok(None)`: stop.
    async fn connect(&mut self) -> Result<Option<Self::Connected>, Self::Error>;
    /// Serve the link until it fails or the broker stops.
    async fn serve(&mut self, link: Self::Connected) -> Exit<Self::Error>;
}

pub(crate) async fn run_reconnecting<T: Reconnecting>(task: T, span: tracing::Span) {
    run_reconnecting_in_span(task).instrument(span).await
}

async fn run_reconnecting_in_span<T: Reconnecting>(mut task: T) {
    let mut failures: u32 = 0;
    loop {
        match task.connect().await {
            Ok(Some(link)) => {
                let connected = Instant::now();
                match task.serve(link).await {
                    Exit::Stop => break,
                    Exit::Lost(reason) => {
                        // A link that keeps dropping right after it came up backs off too.
                        if connected.elapsed() >= task.demand().timings.backoff_max {
                            failures = 0;
                        } else {
                            failures = failures.saturating_add(1);
                        }
                        warn!(%reason, redis = %task.target(), "redis pub/sub link lost; reconnecting");
                        if !task.demand().went_down().await {
                            break;
                        }
                    }
                }
            }
            Ok(None) => break,
            Err(reason) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(50) {
                    warn!(%reason, redis = %task.target(), failures, "cannot reach redis; retrying");
                } else {
                    debug!(%reason, failures, "cannot reach redis; retrying");
                }
                if !task.demand().went_down().await {
                    break;
                }
            }
        }
        let delay = backoff(&task.demand().timings, failures);
        if !task.demand().wait_down(delay).await {
            break;
        }
    }
    let demand = task.demand();
    demand.shared.up.store(false, Ordering::Release);
    demand.shared.metrics.broker_subscriptions.set(0);
    debug!("redis pub/sub task stopped");
}

/// Turns what arrives on a subscribed channel into the node's event, giving ids to
/// publications that arrive without one (plain `PUBLISH` from services).
pub(crate) struct ExternalIds {
    prefix: String,
    next: u64,
}

impl ExternalIds {
    /// Ids unique to this process: a random token, then a counter.
    pub(crate) fn new(token: u64) -> ExternalIds {
        ExternalIds {
            prefix: format!("{token:012x}x"),
            next: 1,
        }
    }

    /// The event for `payload` on a channel of `kind`; None for a malformed presence event.
    pub(crate) fn event(
        &mut self,
        kind: &Channel,
        payload: &[u8],
        metrics: &Metrics,
    ) -> Option<BrokerEvent> {
        match kind {
            Channel::Presence(room) => {
                let Some(wire) = decode_presence_event(payload) else {
                    debug!("ignoring a malformed presence event");
                    return None;
                };
                Some(BrokerEvent::Presence(PresenceEvent {
                    room: room.clone(),
                    user: wire.user,
                    joined: wire.joined,
                    ts: wire.ts,
                    info: wire.info,
                }))
            }
            Channel::Messages(target) => {
                if !matches!(target, Target::Room(_))
                    && let Some(control) = decode_control(payload)
                {
                    return match control {
                        Ok(control) => Some(BrokerEvent::Control {
                            target: target.clone(),
                            control,
                        }),
                        Err(err) => {
                            warn!(%err, "ignoring a control envelope");
                            None
                        }
                    };
                }
                let now_ms = crate::clock::now_ms();
                let envelope = decode_envelope(
                    target.clone(),
                    payload,
                    || {
                        let id = format!("{}{}", self.prefix, self.next);
                        self.next += 1;
                        id
                    },
                    now_ms,
                );
                metrics
                    .pubsub_lag
                    .observe(now_ms.saturating_sub(envelope.ts) as f64 / 1000.0);
                Some(BrokerEvent::Publication(envelope))
            }
        }
    }
}

/// Milliseconds since the Unix epoch (what `ts` counts).
/// Whether an error means the connection is unusable (as opposed to Redis refusing a command).
pub(crate) fn link_broken(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
}

/// Delay before reconnect attempt `failures` (0 after a link that was up): exponential from
/// `backoff_min`, capped at `backoff_max`, with jitter over its upper half so that nodes do
/// not reconnect in step.
pub(crate) fn backoff(timings: &Timings, failures: u32) -> Duration {
    let min = timings.backoff_min.as_millis() as u64;
    let max = timings.backoff_max.as_millis().max(1) as u64;
    let ceiling = min.saturating_mul(1u64 << failures.min(20)).clamp(1, max);
    let half = ceiling / 2;
    Duration::from_millis(half + rand::random::<u64>() % (ceiling - half + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let t = Timings {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..Timings::default()
        };
        for failures in 0..40 {
            let d = backoff(&t, failures);
            let ceiling = (100u64 << failures.min(20)).min(2000);
            assert!(d >= Duration::from_millis(ceiling / 2), "{failures}: {d:?}");
            assert!(d <= Duration::from_millis(ceiling), "{failures}: {d:?}");
        }
    }
}
