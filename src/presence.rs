//! Presence on this node: which users are in which `presence.rooms` room here, how many
//! connections each has there, and the task that writes that to the broker in batches.
//!
//! Owns the `presence.rooms` rules, the local table (room → user → connections, synchronous,
//! like the hub: a std lock never held across an await), the batching flusher (one broker call
//! carries every room that changed since the last one, and every room is refreshed each quarter
//! of `presence.ttl_s` so the node stays live), and the barrier a read waits at until this
//! node's own changes are written.
//!
//! Leaves to others: deciding who is in a room cluster-wide and when a user appears or vanishes
//! (`member_joined` / `member_left`, sent once per user) is the broker's, atomically (the Redis
//! function `roomcast_presence`, or the memory broker's table); subscribing to the events and
//! delivering them is the node's; wire formats are `protocol`'s.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::Glob;
use crate::broker::{Broker, BrokerError, PresenceUpdate};
use crate::clock::within;
use crate::config::{PresenceConfig, PresenceRule};
use crate::metrics::Metrics;

/// Changes that arrive this close together go to the broker in one call.
const LINGER: Duration = Duration::from_millis(5);
/// First wait after a failed write; doubles up to a quarter of the ttl.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// The first `presence.rooms` rule whose pattern matches a room.
#[derive(Clone, Debug, Default)]
pub struct PresenceRules(Vec<(Glob, PresenceRule)>);

impl PresenceRules {
    pub fn new(config: &PresenceConfig) -> Self {
        PresenceRules(
            config
                .rooms
                .iter()
                .map(|rule| (Glob::new(&rule.pattern), rule.clone()))
                .collect(),
        )
    }

    pub fn rule(&self, room: &str) -> Option<&PresenceRule> {
        self.0
            .iter()
            .find(|(glob, _)| glob.matches(room))
            .map(|(_, rule)| rule)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One room on this node.
#[derive(Default)]
struct LocalRoom {
    events: bool,
    users: HashMap<Arc<str>, u64>,
    /// The `info` of users that have one here (the latest connection's that came with one);
    /// empty in rooms whose users carry none.
    info: HashMap<Arc<str>, Arc<str>>,
    /// Users whose count changed since the last write.
    dirty: HashSet<Arc<str>>,
    /// The broker has this room's state for this node (from this process): later writes
    /// send only what changed.
    synced: bool,
}

#[derive(Default)]
struct LocalState {
    rooms: HashMap<Arc<str>, LocalRoom>,
    /// Rooms with something to write.
    dirty: HashSet<Arc<str>>,
    /// Counts every change, so a reader can wait until what it has seen is written.
    changes: u64,
}

/// This node's presence table and its batching writer.
pub struct LocalPresence {
    state: Mutex<LocalState>,
    wake: Notify,
    /// The last of `LocalState::changes` that the broker has (all changes up to it written).
    written: watch::Sender<u64>,
    ttl: Duration,
}

impl LocalPresence {
    pub fn new(ttl: Duration) -> Self {
        LocalPresence {
            state: Mutex::new(LocalState::default()),
            wake: Notify::new(),
            written: watch::Sender::new(0),
            ttl,
        }
    }

    fn state(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more connection of `user` in `room`, with its `info` (JSON text) if it has one: the
    /// latest given is the user's, here.
    pub fn add(&self, room: &Arc<str>, events: bool, user: &Arc<str>, info: Option<Arc<str>>) {
        {
            let mut state = self.state();
            let local = state.rooms.entry(room.clone()).or_default();
            local.events = events;
            *local.users.entry(user.clone()).or_insert(0) += 1;
            if let Some(info) = info {
                local.info.insert(user.clone(), info);
            }
            local.dirty.insert(user.clone());
            state.dirty.insert(room.clone());
            state.changes += 1;
        }
        self.wake.notify_one();
    }

    /// One connection of `user` fewer in `room`.
    pub fn remove(&self, room: &str, user: &str) {
        {
            let mut state = self.state();
            let Some(room) = state.rooms.get_key_value(room).map(|(k, _)| k.clone()) else {
                return;
            };
            let Some(local) = state.rooms.get_mut(&room) else {
                return;
            };
            let Some(user) = local.users.get_key_value(user).map(|(k, _)| k.clone()) else {
                return;
            };
            let left = local.users.get_mut(&user).map_or(0, |conns| {
                *conns = conns.saturating_sub(1);
                *conns
            });
            if left == 0 {
                local.users.remove(&user);
                local.info.remove(&user);
            }
            local.dirty.insert(user);
            state.dirty.insert(room);
            state.changes += 1;
        }
        self.wake.notify_one();
    }

    /// Wait (at most `timeout`) until every change made so far is written, so that a read
    /// from the broker includes this node's latest members.
    pub async fn written(&self, timeout: Duration) {
        let want = self.state().changes;
        let mut written = self.written.subscribe();
        if *written.borrow() >= want {
            return;
        }
        self.wake.notify_one();
        let _ = tokio::time::timeout(timeout, written.wait_for(|w| *w >= want)).await;
    }

    #[cfg(test)]
    fn users(&self, room: &str) -> Vec<(String, u64)> {
        self.state()
            .rooms
            .get(room)
            .map(|r| r.users.iter().map(|(u, c)| (u.to_string(), *c)).collect())
            .unwrap_or_default()
    }

    /// What to write now: every room with changes (all of its users when the broker does not
    /// have it yet), and with `refresh` every other room too, with no users (to keep it live).
    fn take_batch(&self, refresh: bool) -> (Vec<PresenceUpdate>, u64) {
        let mut state = self.state();
        let changes = state.changes;
        let dirty: Vec<Arc<str>> = state.dirty.drain().collect();
        let mut batch = Vec::with_capacity(dirty.len());
        for room in &dirty {
            let Some(local) = state.rooms.get_mut(room) else {
                continue;
            };
            let full = !local.synced;
            let users: Vec<(Arc<str>, u64)> = if full {
                local.dirty.clear();
                local.users.iter().map(|(u, c)| (u.clone(), *c)).collect()
            } else {
                local
                    .dirty
                    .drain()
                    .map(|u| {
                        let conns = local.users.get(&u).copied().unwrap_or(0);
                        (u, conns)
                    })
                    .collect()
            };
            local.synced = true;
            let info = users
                .iter()
                .filter_map(|(u, _)| local.info.get(u).map(|i| (u.clone(), i.clone())))
                .collect();
            batch.push(PresenceUpdate {
                room: room.clone(),
                events: local.events,
                full,
                users,
                info,
            });
            if local.users.is_empty() {
                state.rooms.remove(room);
            }
        }
        if refresh {
            let dirty: HashSet<&Arc<str>> = dirty.iter().collect();
            for (room, local) in &state.rooms {
                if !dirty.contains(room) {
                    batch.push(PresenceUpdate {
                        room: room.clone(),
                        events: local.events,
                        full: false,
                        users: Vec::new(),
                        info: Vec::new(),
                    });
                }
            }
        }
        (batch, changes)
    }

    fn mark_written(&self, changes: u64) {
        self.written.send_if_modified(|w| {
            let newer = changes > *w;
            *w = (*w).max(changes);
            newer
        });
    }

    /// A write failed: everything in it is to be written again.
    fn restore(&self, batch: Vec<PresenceUpdate>) {
        let mut state = self.state();
        for update in batch {
            let local = state.rooms.entry(update.room.clone()).or_default();
            local.events = update.events;
            if update.full {
                local.synced = false;
            }
            for (user, _) in update.users {
                local.dirty.insert(user);
            }
            if update.full || !local.dirty.is_empty() {
                state.dirty.insert(update.room);
            }
        }
    }

    /// The broker lost these rooms' state for this node: write them whole again.
    fn resync(&self, rooms: &[Arc<str>]) {
        let mut state = self.state();
        for room in rooms {
            if let Some(local) = state.rooms.get_mut(room) {
                local.synced = false;
                state.dirty.insert(room.clone());
                state.changes += 1;
            }
        }
    }

    /// One write of whatever is pending (and with `refresh`, of every room).
    pub async fn flush(
        &self,
        broker: &dyn Broker,
        node: &str,
        refresh: bool,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Result<(), BrokerError> {
        let (batch, changes) = self.take_batch(refresh);
        if batch.is_empty() {
            self.mark_written(changes);
            return Ok(());
        }
        metrics.presence_writes.inc();
        metrics.presence_room_writes.inc_by(batch.len() as u64);
        let writing = broker.presence_update(node, self.ttl, batch.clone());
        let result = within(timeout, BrokerError::Timeout, writing).await;
        match result {
            Ok(lost) => {
                self.mark_written(changes);
                if !lost.is_empty() {
                    debug!(rooms = lost.len(), "presence lost by the broker; resending");
                    self.resync(&lost);
                    self.wake.notify_one();
                }
                Ok(())
            }
            Err(err) => {
                self.restore(batch);
                Err(err)
            }
        }
    }

    /// Write changes as they come (a burst of joins shares one write) and refresh every
    /// room each quarter of the ttl, until `stop` (a write under way finishes first).
    pub async fn run(
        &self,
        broker: &dyn Broker,
        node: &str,
        timeout: Duration,
        stop: CancellationToken,
        metrics: &Metrics,
    ) {
        let every = (self.ttl / 4).max(Duration::from_millis(10));
        let mut next_refresh = Instant::now() + every;
        let mut retry = RETRY_MIN;
        loop {
            let refresh = tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {
                    tokio::time::sleep(LINGER).await;
                    Instant::now() >= next_refresh
                }
                _ = tokio::time::sleep_until(next_refresh) => true,
            };
            match self.flush(broker, node, refresh, timeout, metrics).await {
                Ok(()) => {
                    retry = RETRY_MIN;
                    if refresh {
                        next_refresh = Instant::now() + every;
                    }
                }
                Err(err) => {
                    warn!(%err, "cannot write presence; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(every);
                    if refresh {
                        // Keep trying the refresh itself until it goes through.
                        next_refresh = Instant::now();
                    }
                    self.wake.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn sorted(mut users: Vec<(Arc<str>, u64)>) -> Vec<(String, u64)> {
        users.sort();
        users.into_iter().map(|(u, c)| (u.to_string(), c)).collect()
    }

    #[test]
    fn rules_take_the_first_match() {
        let config = PresenceConfig {
            rooms: vec![
                PresenceRule {
                    pattern: "chat:vip".into(),
                    events: false,
                    max_members: 5,
                },
                PresenceRule {
                    pattern: "chat:*".into(),
                    events: true,
                    max_members: 1000,
                },
            ],
            ttl_s: 30,
        };
        let rules = PresenceRules::new(&config);
        assert_eq!(rules.rule("chat:vip").map(|r| r.max_members), Some(5));
        assert_eq!(rules.rule("chat:x").map(|r| r.events), Some(true));
        assert!(rules.rule("news").is_none());
    }

    #[test]
    fn batches_carry_absolute_counts_and_coalesce() {
        let p = LocalPresence::new(Duration::from_secs(30));
        let room = arc("r");
        p.add(&room, true, &arc("alice"), None);
        p.add(&room, true, &arc("alice"), None);
        p.add(&room, true, &arc("bob"), None);
        let batch = p.take_batch(false).0;
        assert_eq!(batch.len(), 1);
        assert!(batch[0].full, "the first write of a room is whole");
        assert_eq!(
            sorted(batch[0].users.clone()),
            [("alice".into(), 2), ("bob".into(), 1)]
        );
        assert!(p.take_batch(false).0.is_empty(), "nothing pending");

        // A join and a leave before the next write: one entry, the count now.
        p.add(&room, true, &arc("carol"), None);
        p.remove("r", "carol");
        p.remove("r", "alice");
        let batch = p.take_batch(false).0;
        assert!(!batch[0].full);
        assert_eq!(
            sorted(batch[0].users.clone()),
            [("alice".into(), 1), ("carol".into(), 0)]
        );
    }

    #[test]
    fn refresh_lists_every_room_and_empty_rooms_are_forgotten() {
        let p = LocalPresence::new(Duration::from_secs(30));
        p.add(&arc("a"), false, &arc("u"), None);
        p.add(&arc("b"), false, &arc("u"), None);
        p.take_batch(false);
        p.remove("b", "u");
        let batch = p.take_batch(true).0;
        let mut rooms: Vec<(String, usize)> = batch
            .iter()
            .map(|u| (u.room.to_string(), u.users.len()))
            .collect();
        rooms.sort();
        assert_eq!(rooms, [("a".into(), 0), ("b".into(), 1)]);
        let batch = p.take_batch(true).0;
        assert_eq!(batch.len(), 1, "b has no one left: {batch:?}");
        assert!(p.users("b").is_empty());
    }

    #[test]
    fn a_failed_write_is_written_again_and_a_lost_room_whole() {
        let p = LocalPresence::new(Duration::from_secs(30));
        let room = arc("r");
        p.add(&room, true, &arc("alice"), None);
        let batch = p.take_batch(false).0;
        p.restore(batch);
        let batch = p.take_batch(false).0;
        assert!(batch[0].full, "never written: still whole");
        p.add(&room, true, &arc("bob"), None);
        let batch = p.take_batch(false).0;
        assert!(!batch[0].full);
        p.resync(std::slice::from_ref(&room));
        let batch = p.take_batch(false).0;
        assert!(batch[0].full);
        assert_eq!(
            sorted(batch[0].users.clone()),
            [("alice".into(), 1), ("bob".into(), 1)]
        );
    }

    #[test]
    fn a_users_info_is_the_latest_given_and_goes_with_each_write_of_it() {
        let p = LocalPresence::new(Duration::from_secs(30));
        let room = arc("r");
        p.add(&room, true, &arc("alice"), Some(arc(r#"{"v":1}"#)));
        p.add(&room, true, &arc("bob"), None);
        let batch = p.take_batch(false).0;
        assert_eq!(batch[0].info, [(arc("alice"), arc(r#"{"v":1}"#))]);
        // A second tab with new info, and one with none: the newer info stays the user's.
        p.add(&room, true, &arc("alice"), Some(arc(r#"{"v":2}"#)));
        p.add(&room, true, &arc("alice"), None);
        let batch = p.take_batch(false).0;
        assert_eq!(batch[0].info, [(arc("alice"), arc(r#"{"v":2}"#))]);
        // Gone here: its info goes with it, and comes back only with a new one.
        for _ in 0..3 {
            p.remove("r", "alice");
        }
        p.take_batch(false);
        p.add(&room, true, &arc("alice"), None);
        assert!(p.take_batch(false).0[0].info.is_empty());
    }
}
