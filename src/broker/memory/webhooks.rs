//! Webhooks on the memory broker: the in-process model of what the Redis functions do
//! (`roomcast_presence` records events in a stream, `roomcast_webhook_*` read, acknowledge,
//! park and replay them), step for step, under the presence table's lock so that an event is
//! decided and recorded at once.
//!
//! A user is a webhook member of a room from its `member_joined` to its `member_left`; with a
//! leave delay it stays one, marked leaving, until the delay is over, and a rejoin meanwhile
//! cancels the departure and sends nothing. `room_occupied` comes before the first member's
//! `member_joined`, `room_vacated` after the last one's `member_left`.
//!
//! Leaves to others: deciding who appears or vanishes (the presence table), delivery
//! (`webhooks`). Nothing here outlives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::MemoryBroker;
use crate::broker::{
    BoxFuture, BrokerError, ParkedEvent, QueuedEvent, WebhookEvent, WebhookSettings, WebhookStore,
};
use crate::clock::now_ms;

/// The webhook members of every room, the departures waiting for their delay, and the queue.
pub struct WebhookTable {
    delay: Duration,
    /// room → user → `None` (in) or the end of its leave delay.
    members: HashMap<Arc<str>, HashMap<String, Option<Instant>>>,
    leaves: BTreeSet<(Instant, Arc<str>, String)>,
    queue: VecDeque<QueuedEvent>,
    /// Taken and not yet acknowledged nor parked, by sequence.
    taken: BTreeMap<u64, QueuedEvent>,
    parked: VecDeque<ParkedEvent>,
    next: u64,
}

impl WebhookTable {
    pub fn new(settings: WebhookSettings) -> Self {
        WebhookTable {
            delay: settings.leave_delay,
            members: HashMap::new(),
            leaves: BTreeSet::new(),
            queue: VecDeque::new(),
            taken: BTreeMap::new(),
            parked: VecDeque::new(),
            next: 0,
        }
    }

    fn record(&mut self, kind: &str, room: &str, user: Option<&str>) {
        self.next += 1;
        let ts = now_ms();
        // Shaped like a Redis stream id: `<ms>-<seq>`, unique in the process.
        let entry = format!("{ts}-{}", self.next);
        self.queue.push_back(QueuedEvent {
            entry: entry.clone(),
            event: WebhookEvent {
                id: entry,
                kind: kind.to_owned(),
                room: room.to_owned(),
                user: user.map(str::to_owned),
                ts,
            },
        });
    }

    /// `user` appeared in `room` across every node.
    pub fn appear(&mut self, room: &Arc<str>, user: &str) {
        let members = self.members.entry(room.clone()).or_default();
        match members.get(user).copied() {
            Some(None) => {}
            Some(Some(deadline)) => {
                // A rejoin within the leave delay: nothing happened.
                members.insert(user.to_owned(), None);
                self.leaves
                    .remove(&(deadline, room.clone(), user.to_owned()));
            }
            None => {
                let first = members.is_empty();
                members.insert(user.to_owned(), None);
                if first {
                    self.record("room_occupied", room, None);
                }
                self.record("member_joined", room, Some(user));
            }
        }
    }

    /// `user` vanished from `room` across every node at `now`.
    pub fn vanish(&mut self, room: &Arc<str>, user: &str, now: Instant) {
        let Some(Some(None)) = self.members.get(room).map(|m| m.get(user)) else {
            // Not a member (it came before webhooks were on) or already leaving.
            return;
        };
        if self.delay.is_zero() {
            self.leave(room, user);
        } else {
            let deadline = now + self.delay;
            if let Some(members) = self.members.get_mut(room) {
                members.insert(user.to_owned(), Some(deadline));
            }
            self.leaves
                .insert((deadline, room.clone(), user.to_owned()));
        }
    }

    fn leave(&mut self, room: &Arc<str>, user: &str) {
        let Some(members) = self.members.get_mut(room) else {
            return;
        };
        members.remove(user);
        let last = members.is_empty();
        if last {
            self.members.remove(room);
        }
        self.record("member_left", room, Some(user));
        if last {
            self.record("room_vacated", room, None);
        }
    }

    /// Record the departures whose delay is over at `now`, at most `max`.
    pub fn due(&mut self, now: Instant, max: usize) -> u64 {
        let mut done = 0;
        while done < max as u64 {
            let Some(first) = self.leaves.first().cloned() else {
                break;
            };
            if first.0 > now {
                break;
            }
            self.leaves.remove(&first);
            self.leave(&first.1, &first.2);
            done += 1;
        }
        done
    }

    fn take(&mut self, max: usize) -> Vec<QueuedEvent> {
        let n = max.min(self.queue.len());
        let batch: Vec<QueuedEvent> = self.queue.drain(..n).collect();
        for event in &batch {
            self.next += 1;
            self.taken.insert(self.next, event.clone());
        }
        batch
    }

    fn remove_taken(&mut self, entries: &[String]) -> Vec<QueuedEvent> {
        let keys: Vec<u64> = self
            .taken
            .iter()
            .filter(|(_, e)| entries.contains(&e.entry))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.taken.remove(&k))
            .collect()
    }

    fn pending(&self) -> u64 {
        (self.queue.len() + self.taken.len()) as u64
    }
}

impl MemoryBroker {
    /// Apply `f` to the webhook table, when webhooks are on.
    fn with_webhooks<T: Default>(&self, f: impl FnOnce(&mut WebhookTable) -> T) -> T {
        self.presence_table()
            .webhooks
            .as_mut()
            .map(f)
            .unwrap_or_default()
    }
}

impl WebhookStore for MemoryBroker {
    fn webhook_due(&self, max: usize) -> BoxFuture<'_, Result<u64, BrokerError>> {
        let done = self.with_webhooks(|w| w.due(Instant::now(), max));
        Box::pin(async move { Ok(done) })
    }

    /// One consumer (this node) takes events; none is left to take over.
    fn webhook_take(
        &self,
        _consumer: &str,
        max: usize,
        _claim_idle: Duration,
    ) -> BoxFuture<'_, Result<Vec<QueuedEvent>, BrokerError>> {
        let batch = self.with_webhooks(|w| w.take(max));
        Box::pin(async move { Ok(batch) })
    }

    fn webhook_hold(
        &self,
        _consumer: &str,
        _entries: Vec<String>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn webhook_ack(&self, entries: Vec<String>) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.with_webhooks(|w| w.remove_taken(&entries));
        Box::pin(async { Ok(()) })
    }

    fn webhook_park(
        &self,
        events: Vec<QueuedEvent>,
        error: String,
        attempts: u32,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let entries: Vec<String> = events.iter().map(|e| e.entry.clone()).collect();
        self.with_webhooks(|w| {
            let parked_at = now_ms();
            for event in w.remove_taken(&entries) {
                w.parked.push_back(ParkedEvent {
                    event: event.event,
                    error: error.clone(),
                    attempts,
                    parked_at,
                });
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn webhook_parked(&self, max: usize) -> BoxFuture<'_, Result<Vec<ParkedEvent>, BrokerError>> {
        let parked = self.with_webhooks(|w| w.parked.iter().take(max).cloned().collect());
        Box::pin(async move { Ok(parked) })
    }

    fn webhook_replay(
        &self,
        ids: Vec<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<u64, BrokerError>> {
        let replayed = self.with_webhooks(|w| {
            let mut kept = VecDeque::new();
            let mut replayed = 0u64;
            for parked in std::mem::take(&mut w.parked) {
                let wanted = if ids.is_empty() {
                    (replayed as usize) < max
                } else {
                    ids.contains(&parked.event.id)
                };
                if wanted {
                    replayed += 1;
                    w.next += 1;
                    w.queue.push_back(QueuedEvent {
                        entry: format!("{}-{}", now_ms(), w.next),
                        event: parked.event,
                    });
                } else {
                    kept.push_back(parked);
                }
            }
            w.parked = kept;
            replayed
        });
        Box::pin(async move { Ok(replayed) })
    }

    fn webhook_pending(&self) -> BoxFuture<'_, Result<u64, BrokerError>> {
        let pending = self.with_webhooks(|w| w.pending());
        Box::pin(async move { Ok(pending) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(table: &mut WebhookTable) -> Vec<(String, Option<String>)> {
        table
            .take(100)
            .into_iter()
            .map(|e| (e.event.kind, e.event.user))
            .collect()
    }

    fn ev(kind: &str, user: Option<&str>) -> (String, Option<String>) {
        (kind.to_owned(), user.map(str::to_owned))
    }

    #[test]
    fn occupied_and_vacated_frame_the_members() {
        let mut t = WebhookTable::new(WebhookSettings {
            leave_delay: Duration::ZERO,
        });
        let room: Arc<str> = Arc::from("r");
        let now = Instant::now();
        t.appear(&room, "a");
        t.appear(&room, "b");
        t.appear(&room, "a");
        t.vanish(&room, "a", now);
        t.vanish(&room, "a", now);
        t.vanish(&room, "b", now);
        assert_eq!(
            kinds(&mut t),
            [
                ev("room_occupied", None),
                ev("member_joined", Some("a")),
                ev("member_joined", Some("b")),
                ev("member_left", Some("a")),
                ev("member_left", Some("b")),
                ev("room_vacated", None),
            ]
        );
    }

    #[test]
    fn a_rejoin_within_the_delay_cancels_the_departure() {
        let delay = Duration::from_secs(5);
        let mut t = WebhookTable::new(WebhookSettings { leave_delay: delay });
        let room: Arc<str> = Arc::from("r");
        let now = Instant::now();
        t.appear(&room, "a");
        t.vanish(&room, "a", now);
        assert_eq!(t.due(now + delay / 2, 10), 0);
        t.appear(&room, "a");
        assert_eq!(t.due(now + delay * 2, 10), 0, "cancelled");
        t.vanish(&room, "a", now + delay);
        assert_eq!(t.due(now + delay * 2, 10), 1);
        assert_eq!(
            kinds(&mut t),
            [
                ev("room_occupied", None),
                ev("member_joined", Some("a")),
                ev("member_left", Some("a")),
                ev("room_vacated", None),
            ]
        );
    }

    #[test]
    fn taken_events_stay_pending_until_acknowledged() {
        let mut t = WebhookTable::new(WebhookSettings {
            leave_delay: Duration::ZERO,
        });
        t.appear(&Arc::from("r"), "a");
        let taken = t.take(10);
        assert_eq!(t.pending(), 2);
        let ids: Vec<String> = taken.iter().map(|e| e.event.id.clone()).collect();
        t.remove_taken(&[taken[0].entry.clone()]);
        assert_eq!(t.pending(), 1);
        assert_ne!(ids[0], ids[1]);
    }
}
