//! The pub/sub side of the Redis broker on a Redis Cluster (`redis.cluster = true`).
//!
//! Owns: one subscriber link per master that owns a wanted channel's hash slot, on which room
//! and user channels are subscribed with `SSUBSCRIBE`, so that each publication travels only
//! to its own shard; the classic `SUBSCRIBE` of the channels every shard carries (the
//! broadcast, presence events) on the link to the owner of slot 0, which is always open and so
//! also tells whether the cluster is reachable; following a slot to its new owner when a shard
//! answers `MOVED` or drops a subscription itself (`SUNSUBSCRIBE`: slot migrated, master
//! demoted), rebuilding every link when one is lost (a killed master, a failover), each
//! counted in `roomcast_broker_resubscribes_total`; PING liveness on every link; the
//! unsubscribe grace. The slot map (`slots`), the RESP reader (`resp`) and the connections
//! (`links`) live apart.
//!
//! Leaves to others: commands (publishes, function calls, presence writes) go through the
//! redis crate's cluster connection (`commands`), which routes by key and follows `MOVED`
//! itself; wanted channels, backoff and event decoding are shared with the single-Redis task
//! (`reconnect`). Which channels are wanted is the node's business.
//!
//! The links speak RESP2 directly: the redis crate's pub/sub connection has no `SSUBSCRIBE`,
//! and its cluster connection resubscribes out of sight of the up/down state the node relies
//! on for `unavailable` and catch-up.

mod links;
mod resp;
mod slots;

use crate::broker::redis::error::RedisFailure;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::links::{ClusterError, Incoming, LinkSet, Sent, is_shard_channel};
use self::resp::{ErrorReply, Resp};
use self::slots::{SlotMap, SlotMapError, query_slots, split_addr};
use super::reconnect::{
    Asked, Channel, Demand, Exit, MAX_BATCH, Reconnecting, Reply, Shared, Stopped,
    SubscriptionChange, Timings,
};
use crate::broker::{BrokerError, BrokerEvent};
use crate::metrics::Resubscribe;

pub use self::slots::key_slot;

type Step = Result<(), Exit<ClusterError>>;

/// The one task that owns every subscriber link to the cluster.
pub(crate) struct ClusterPubSubTask {
    demand: Demand,
    /// The seeds as given, then the masters of the last map read.
    seeds: Vec<(String, u16)>,
    known: Vec<String>,
    /// Credentials of the first seed, used for every node.
    seed_info: ConnectionInfo,
    command_timeout: Duration,
    next_link_id: u64,
}

impl Reconnecting for ClusterPubSubTask {
    type Connected = LinkSet;
    type Error = ClusterError;

    fn demand(&mut self) -> &mut Demand {
        &mut self.demand
    }

    fn target(&self) -> String {
        format!("cluster via {} seed(s)", self.seeds.len())
    }

    async fn connect(&mut self) -> Result<Option<LinkSet>, ClusterError> {
        self.open_links().await
    }

    async fn serve(&mut self, links: LinkSet) -> Exit<ClusterError> {
        self.serve_links(links).await
    }
}

/// The seeds' addresses, and the first seed's connection info (its credentials serve for
/// every node). Errors name the key, never the URL (it may hold a password).
fn parse_seeds(seed_urls: &[String]) -> Result<(Vec<(String, u16)>, ConnectionInfo), BrokerError> {
    let mut seeds = Vec::new();
    let mut seed_info = None;
    for (i, url) in seed_urls.iter().enumerate() {
        let key = || format!("redis.urls[{i}]");
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|err| RedisFailure::BadSetting {
                key: key(),
                kind: err.kind(),
            })?;
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => seeds.push((host.clone(), *port)),
            _ => {
                return Err(RedisFailure::Unsupported {
                    key: key(),
                    requirement: "only redis://host:port is supported with redis.cluster",
                }
                .into());
            }
        }
        seed_info.get_or_insert(info);
    }
    match seed_info {
        Some(info) => Ok((seeds, info)),
        None => Err(RedisFailure::Unsupported {
            key: "redis.urls".into(),
            requirement: "no seed node given",
        }
        .into()),
    }
}

impl ClusterPubSubTask {
    pub(crate) fn new(
        shared: Arc<Shared>,
        seed_urls: &[String],
        events: mpsc::Sender<BrokerEvent>,
        changes: mpsc::Receiver<SubscriptionChange>,
        stop: CancellationToken,
        command_timeout: Duration,
        timings: Timings,
    ) -> Result<ClusterPubSubTask, BrokerError> {
        let (seeds, seed_info) = parse_seeds(seed_urls)?;
        let token = rand::random::<u64>() & 0xffff_ffff_ffff;
        Ok(ClusterPubSubTask {
            demand: Demand::new(shared, events, changes, stop, timings, token),
            seeds,
            known: Vec::new(),
            seed_info,
            command_timeout,
            next_link_id: 1,
        })
    }

    /// Read the slot map from the known masters, then the seeds; the first complete one wins.
    fn read_slot_map(&self) -> impl Future<Output = Result<SlotMap, SlotMapError>> + use<> {
        let mut candidates: Vec<(String, u16)> = self
            .known
            .iter()
            .filter_map(|addr| split_addr(addr))
            .collect();
        candidates.extend(self.seeds.iter().cloned());
        let info = self.seed_info.clone();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.demand.timings.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        async move {
            let mut last_error = SlotMapError::NoNode;
            for (host, port) in candidates {
                let info = info
                    .clone()
                    .set_addr(ConnectionAddr::Tcp(host.clone(), port));
                match query_slots(info, &config, &host).await {
                    Ok(map) => return Ok(map),
                    Err(err) => {
                        last_error = SlotMapError::At {
                            addr: format!("{host}:{port}"),
                            source: Box::new(err),
                        }
                    }
                }
            }
            Err(last_error)
        }
    }

    /// Open a link to `addr` (TCP, AUTH) and start reading it.
    async fn open_link(&mut self, links: &mut LinkSet, addr: &str) -> Result<(), ClusterError> {
        let halves =
            links::connect(addr, &self.seed_info, self.demand.timings.connect_timeout).await?;
        let id = self.next_link_id;
        self.next_link_id += 1;
        links.add(id, addr, halves, &self.demand.stop);
        Ok(())
    }

    /// Queue the subscription of `channel` on the link of its owner (opened if need be).
    async fn queue_subscribe(
        &mut self,
        links: &mut LinkSet,
        channel: &str,
        kind: &Channel,
        owner: Option<String>,
    ) -> Result<(), ClusterError> {
        let addr = owner.unwrap_or_else(|| links.owner(channel, kind));
        if !links.links.contains_key(&addr) {
            self.open_link(links, &addr).await?;
        }
        let verb = if is_shard_channel(kind) {
            "SSUBSCRIBE"
        } else {
            "SUBSCRIBE"
        };
        if let Some(link) = links.links.get_mut(&addr) {
            link.queue(
                redis::cmd(verb).arg(channel),
                Sent::Subscribe(channel.to_owned()),
            );
        }
        links.subscriptions.start_subscribing(channel, kind);
        Ok(())
    }

    /// Read the map, open the classic link and subscribe every wanted channel. `Ok(None)`:
    /// stop. The links are up once every subscription is confirmed (see [`Self::confirm`]).
    async fn open_links(&mut self) -> Result<Option<LinkSet>, ClusterError> {
        let reading = self.read_slot_map();
        let Some(slots) = self.demand.while_down(reading).await else {
            return Ok(None);
        };
        let slots = slots?;
        self.known = slots.masters();
        let mut links = LinkSet::new(slots);
        let classic = links.classic.clone();
        self.open_link(&mut links, &classic).await?;

        // Everything wanted, and what was asked for while down by callers that still wait.
        let resubscribing = self.demand.wanted.len() as u64;
        let waiting = self.demand.take_waiting();
        let all: Vec<(String, Channel)> = self
            .demand
            .wanted
            .iter()
            .map(|(channel, kind)| (channel.clone(), kind.clone()))
            .collect();
        for (channel, kind) in &all {
            self.queue_subscribe(&mut links, channel, kind, None)
                .await?;
        }
        for (channel, _, reply) in waiting {
            // Every waiting channel is wanted now, so its subscription is pending.
            let _ = links.subscriptions.wait_for(&channel, reply);
        }
        links.flush(self.command_timeout).await?;
        if self.demand.has_been_up() {
            self.demand
                .shared
                .metrics
                .resubscribed(Resubscribe::Reconnect, resubscribing);
        }
        if links.subscriptions.subscribing_count() == 0 && !self.links_up(&mut links).await {
            return Ok(None);
        }
        Ok(Some(links))
    }

    /// Every channel of the spell's start is confirmed: tell the node. False: stop.
    async fn links_up(&mut self, links: &mut LinkSet) -> bool {
        links.up = true;
        let resumed = self.demand.mark_up();
        info!(
            masters = links.slots.masters().len(),
            links = links.links.len(),
            channels = links.subscriptions.live_count(),
            resumed,
            "redis cluster pub/sub up"
        );
        self.demand.announce_up(resumed).await
    }

    async fn serve_links(&mut self, mut links: LinkSet) -> Exit<ClusterError> {
        let timer = sleep_until(self.next_wake(&links));
        tokio::pin!(timer);
        loop {
            let wake = self.next_wake(&links);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let step = tokio::select! {
                biased;
                _ = self.demand.stop.cancelled() => return Exit::Stop,
                _ = &mut timer => self.on_timer(&mut links),
                change = self.demand.changes.recv() => match change {
                    Some(change) => self.on_changes(&mut links, change).await,
                    None => return Exit::Stop,
                },
                incoming = links.incoming.recv() => match incoming {
                    Some((id, incoming)) => self.on_incoming(&mut links, id, incoming).await,
                    None => Err(Exit::Lost(ClusterError::AllClosed)),
                },
            };
            if let Err(exit) = step {
                return exit;
            }
            if let Err(reason) = links.flush(self.command_timeout).await {
                return Exit::Lost(reason);
            }
        }
    }

    /// The earliest of: a link's ping due or overdue, the end of a grace, the start deadline.
    fn next_wake(&self, links: &LinkSet) -> Instant {
        let timings = &self.demand.timings;
        let mut wake = links
            .subscriptions
            .next_release()
            .unwrap_or_else(|| Instant::now() + timings.probe_idle);
        if !links.up {
            wake = wake.min(links.started + timings.connect_timeout);
        }
        for link in links.links.values() {
            let due = match link.ping {
                Some(sent) => sent + timings.probe_timeout,
                None => link.last_activity + timings.probe_idle,
            };
            wake = wake.min(due);
        }
        wake
    }

    fn on_timer(&mut self, links: &mut LinkSet) -> Step {
        let now = Instant::now();
        let timings = &self.demand.timings;
        if !links.up && now >= links.started + timings.connect_timeout {
            return Err(Exit::Lost(ClusterError::NotConfirmed {
                pending: links.subscriptions.subscribing_count(),
                limit: timings.connect_timeout,
            }));
        }
        for (addr, link) in &mut links.links {
            match link.ping {
                Some(sent) if now >= sent + timings.probe_timeout => {
                    return Err(Exit::Lost(ClusterError::PingLost {
                        addr: addr.clone(),
                        limit: timings.probe_timeout,
                    }));
                }
                None if now >= link.last_activity + timings.probe_idle => {
                    link.ping = Some(now);
                    link.queue(&redis::cmd("PING"), Sent::Ping);
                }
                _ => {}
            }
        }
        let wanted = &self.demand.wanted;
        let due = links
            .subscriptions
            .due_releases(now, MAX_BATCH, |channel| wanted.contains_key(channel));
        for channel in due {
            // Gone from `live` now: a subscribe from here on goes through SSUBSCRIBE again,
            // queued after this unsubscribe on the same link.
            if let Some((kind, addr)) = links.subscriptions.remove_live(&channel)
                && let Some(link) = links.links.get_mut(&addr)
            {
                let verb = if is_shard_channel(&kind) {
                    "SUNSUBSCRIBE"
                } else {
                    "UNSUBSCRIBE"
                };
                link.queue(redis::cmd(verb).arg(&channel), Sent::Unsubscribe(channel));
            }
        }
        self.demand.count_live(links.subscriptions.live_count());
        Ok(())
    }

    /// A batch of subscription changes: everything queued now.
    async fn on_changes(&mut self, links: &mut LinkSet, first: SubscriptionChange) -> Step {
        for asked in self.demand.take_batch(first) {
            match asked {
                Asked::Subscribe((channel, target, reply)) => {
                    if links.subscriptions.is_live(&channel) {
                        links.subscriptions.keep(&channel);
                        if reply.send(Ok(())).is_err() {
                            self.release(links, channel);
                        }
                        continue;
                    }
                    let Some(reply) = links.subscriptions.wait_for(&channel, reply) else {
                        continue; // joined the subscription on its way
                    };
                    self.queue_subscribe(links, &channel, &target, None)
                        .await
                        .map_err(Exit::Lost)?;
                    let _ = links.subscriptions.wait_for(&channel, reply);
                }
                Asked::Release(channel) => {
                    if links.subscriptions.is_live(&channel) {
                        self.release(links, channel);
                    }
                }
            }
        }
        Ok(())
    }

    fn release(&mut self, links: &mut LinkSet, channel: String) {
        self.demand.wanted.remove(&channel);
        let deadline = Instant::now() + self.demand.timings.unsubscribe_grace;
        links.subscriptions.release(channel, deadline);
    }

    async fn on_incoming(&mut self, links: &mut LinkSet, id: u64, incoming: Incoming) -> Step {
        let Some(addr) = links.link_addr.get(&id).cloned() else {
            return Ok(()); // a link this spell already dropped
        };
        let reply = match incoming {
            Incoming::Closed(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Exit::Lost(ClusterError::Closed { addr }));
            }
            Incoming::Closed(source) => {
                return Err(Exit::Lost(ClusterError::Io { addr, source }));
            }
            Incoming::Reply(reply) => reply,
        };
        let Some(link) = links.links.get_mut(&addr) else {
            return Ok(());
        };
        link.last_activity = Instant::now();
        match reply {
            Resp::Array(items) => self.on_push(links, addr, items).await,
            Resp::Simple(pong) if pong.eq_ignore_ascii_case("PONG") => {
                self.on_pong(links, &addr);
                Ok(())
            }
            Resp::Error(err) => self.on_error_reply(links, addr, err).await,
            _ => {
                debug!("ignoring an unexpected reply");
                Ok(())
            }
        }
    }

    /// A push on `addr`: a publication, or the answer to a (un)subscribe or a PING.
    async fn on_push(&mut self, links: &mut LinkSet, addr: String, items: Vec<Resp>) -> Step {
        let kind = match items.first() {
            Some(Resp::Bulk(kind)) => kind.as_slice(),
            _ => return Ok(()),
        };
        let channel = match items.get(1) {
            Some(Resp::Bulk(channel)) => String::from_utf8_lossy(channel).into_owned(),
            _ => String::new(),
        };
        match kind {
            b"smessage" | b"message" => {
                let Some(Resp::Bulk(payload)) = items.get(2) else {
                    return Ok(());
                };
                // Publications for a channel already released can still be on their way.
                let Some((kind, _)) = links.subscriptions.live(&channel) else {
                    debug!(channel, %addr, "a publication for a channel not live here");
                    return Ok(());
                };
                self.demand
                    .deliver(kind, payload)
                    .await
                    .map_err(|Stopped| Exit::Stop)
            }
            b"ssubscribe" | b"subscribe" => {
                if let Some(link) = links.links.get_mut(&addr)
                    && let Some((Sent::Subscribe(_), sent)) = link.sent.pop_front()
                {
                    self.demand.observe_roundtrip(sent);
                }
                self.confirm(links, channel, addr).await
            }
            b"sunsubscribe" | b"unsubscribe" => {
                let link = links.links.get_mut(&addr);
                match link {
                    Some(link)
                        if matches!(
                            link.sent.front(),
                            Some((Sent::Unsubscribe(sent), _)) if *sent == channel
                        ) =>
                    {
                        link.sent.pop_front();
                        Ok(())
                    }
                    // The shard dropped it: its slot moved, or the master was demoted.
                    _ => {
                        self.follow_slot(links, &channel, Resubscribe::Sunsubscribe, None)
                            .await
                    }
                }
            }
            b"pong" => {
                self.on_pong(links, &addr);
                Ok(())
            }
            _ => {
                debug!("ignoring an unexpected pub/sub reply");
                Ok(())
            }
        }
    }

    /// An error reply on `addr`, to the oldest thing it was sent.
    async fn on_error_reply(&mut self, links: &mut LinkSet, addr: String, err: String) -> Step {
        let Some(link) = links.links.get_mut(&addr) else {
            return Ok(());
        };
        match link.sent.pop_front() {
            Some((Sent::Subscribe(channel), _)) => match ErrorReply::classify(&err) {
                ErrorReply::Moved { addr: moved_to } => {
                    links.subscriptions.remove_live(&channel);
                    self.follow_slot(links, &channel, Resubscribe::Moved, Some(moved_to))
                        .await
                }
                ErrorReply::ClusterBusy => {
                    Err(Exit::Lost(ClusterError::ClusterBusy { addr, reply: err }))
                }
                ErrorReply::Refused => {
                    warn!(%err, "redis refused a subscription");
                    self.demand.wanted.remove(&channel);
                    let refused: Arc<str> = err.into();
                    for reply in links.subscriptions.fail(&channel) {
                        let _ = reply.send(Err(RedisFailure::Refused(refused.clone()).into()));
                    }
                    Ok(())
                }
            },
            Some((Sent::Ping, _)) => {
                Err(Exit::Lost(ClusterError::PingRefused { addr, reply: err }))
            }
            Some((Sent::Unsubscribe(_), _)) => {
                warn!(%err, "redis refused an unsubscribe");
                Ok(())
            }
            None => {
                debug!(%err, "an error reply nothing waited for");
                Ok(())
            }
        }
    }

    fn on_pong(&self, links: &mut LinkSet, addr: &str) {
        let Some(link) = links.links.get_mut(addr) else {
            return;
        };
        if matches!(link.sent.front(), Some((Sent::Ping, _))) {
            link.sent.pop_front();
        }
        if let Some(sent) = link.ping.take() {
            self.demand.observe_roundtrip(sent);
        }
    }

    /// `channel` is confirmed on `addr`.
    async fn confirm(&mut self, links: &mut LinkSet, channel: String, addr: String) -> Step {
        let Some(replies) = links.subscriptions.confirm(&channel, addr) else {
            return Ok(()); // a confirmation nothing waited for
        };
        if !self.demand.wanted.contains_key(&channel) {
            // Released while it was on its way: subscribed, unwanted, in its grace.
            self.release(links, channel);
            return self.check_started(links).await;
        }
        let had_callers = !replies.is_empty();
        let answered = answer_all(replies);
        if had_callers && !answered && !links.up {
            // Everyone who asked gave up before the links came up: do not keep it.
            self.release(links, channel);
        }
        self.check_started(links).await
    }

    /// Count the live channels; once the last subscription of the start is confirmed, the
    /// links are up.
    async fn check_started(&mut self, links: &mut LinkSet) -> Step {
        self.demand.count_live(links.subscriptions.live_count());
        if !links.up && links.subscriptions.subscribing_count() == 0 && !self.links_up(links).await
        {
            return Err(Exit::Stop);
        }
        Ok(())
    }

    /// Subscribe `channel` again on whoever owns its slot now (`moved_to` when a shard said).
    async fn follow_slot(
        &mut self,
        links: &mut LinkSet,
        channel: &str,
        reason: Resubscribe,
        moved_to: Option<String>,
    ) -> Step {
        let was_on = links
            .subscriptions
            .remove_live(channel)
            .map(|(_, addr)| addr);
        let Some(kind) = self.demand.wanted.get(channel).cloned() else {
            links.subscriptions.fail(channel);
            return Ok(());
        };
        let fresh = self
            .read_slot_map()
            .await
            .map_err(|err| Exit::Lost(err.into()))?;
        let mut owner = fresh.owner(key_slot(channel.as_bytes())).to_owned();
        if let Some(moved_to) = moved_to
            && Some(&owner) == was_on.as_ref()
        {
            owner = moved_to; // the map we read is behind the shard that answered
        }
        if was_on.as_ref() == Some(&owner) && reason == Resubscribe::Sunsubscribe {
            return Err(Exit::Lost(ClusterError::DroppedOwnSlot(owner)));
        }
        links.slots = fresh;
        self.known = links.slots.masters();
        self.demand.shared.metrics.resubscribed(reason, 1);
        debug!(channel, %owner, reason = reason.label(), "following a slot to its owner");
        self.queue_subscribe(links, channel, &kind, Some(owner))
            .await
            .map_err(Exit::Lost)
    }
}

/// Answer every caller: whether any was still there to hear it.
fn answer_all(replies: Vec<Reply>) -> bool {
    let mut answered = false;
    for reply in replies {
        answered |= reply.send(Ok(())).is_ok();
    }
    answered
}
