//! The embedded in-process broker, the default when no Redis is configured.
//!
//! It hands every publish straight back to its node as a [`BrokerEvent`], exactly as Redis
//! would, so a single node and a cluster share one delivery path and one ordering rule. It
//! leaves interest tracking to the node: the hub drops publications for rooms with no member.
//! Room history is kept in process, with the same ids and expiry rules as the Redis broker, and
//! so is presence ([`PresenceTable`], the model that the Redis function `roomcast_presence`
//! follows step for step).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

mod nodes;
mod presence;
mod webhooks;

pub use presence::PresenceTable;
pub use webhooks::WebhookTable;

use super::control_table::ControlTable;
use super::{
    BoxFuture, BrokerError, BrokerEvent, Control, ControlStore, Envelope, HistoryPage,
    HistoryStore, Position, PresenceEvent, PresenceList, PresenceStore, PresenceUpdate, PubSub,
    Retention, Revocation, Target, Unavailable, WebhookSettings, presence_live_for,
};

/// One room's kept messages.
struct RoomHistory {
    epoch: String,
    top: u64,
    entries: VecDeque<Envelope>,
    /// The whole history is forgotten once the room has been quiet for its ttl.
    expires: Instant,
}

pub struct MemoryBroker {
    events: mpsc::Sender<BrokerEvent>,
    /// Held across the send of a retained publish, so offsets and delivery order agree.
    histories: Mutex<HashMap<Arc<str>, RoomHistory>>,
    presence: std::sync::Mutex<PresenceTable>,
    /// The node registry: only this node, as no other shares this broker.
    nodes: std::sync::Mutex<nodes::NodeTable>,
    /// Revocations and server subscriptions, in process.
    control: ControlTable,
    /// A publish waits at most this long for room in the node's event queue, then fails with
    /// `unavailable` rather than hold its publisher forever.
    publish_timeout: Duration,
}

impl MemoryBroker {
    pub fn new(events: mpsc::Sender<BrokerEvent>, publish_timeout: Duration) -> Self {
        MemoryBroker {
            events,
            histories: Mutex::new(HashMap::new()),
            presence: std::sync::Mutex::new(PresenceTable::default()),
            nodes: std::sync::Mutex::new(nodes::NodeTable::default()),
            control: ControlTable::default(),
            publish_timeout,
        }
    }

    /// Record webhook events (`[webhooks]` with a url) from now on.
    pub fn with_webhook_events(self, settings: WebhookSettings) -> Self {
        self.presence_table().webhooks = Some(WebhookTable::new(settings));
        self
    }

    async fn send(&self, envelope: Envelope) -> Result<(), BrokerError> {
        self.emit(BrokerEvent::Publication(envelope)).await
    }

    fn presence_table(&self) -> std::sync::MutexGuard<'_, PresenceTable> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn emit(&self, event: BrokerEvent) -> Result<(), BrokerError> {
        match self.events.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(event)) => {
                tokio::time::timeout(self.publish_timeout, self.events.send(event))
                    .await
                    .map_err(|_| BrokerError::Timeout)?
                    .map_err(|_| Unavailable::NodeStopping.into())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Unavailable::NodeStopping.into()),
        }
    }
}

fn live_history(
    histories: &mut HashMap<Arc<str>, RoomHistory>,
    room: &Arc<str>,
    now: Instant,
) -> Option<()> {
    if histories.get(room).is_some_and(|h| h.expires <= now) {
        histories.remove(room);
    }
    histories.get(room).map(|_| ())
}

impl PubSub for MemoryBroker {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.send(envelope))
    }

    /// Every publication comes back to this node: interest is the hub's business.
    fn subscribe(&self, _target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe(&self, _target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn is_up(&self) -> bool {
        !self.events.is_closed()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

impl HistoryStore for MemoryBroker {
    fn publish_retained(
        &self,
        mut envelope: Envelope,
        retention: Retention,
    ) -> BoxFuture<'_, Result<String, BrokerError>> {
        Box::pin(async move {
            let Target::Room(room) = envelope.target.clone() else {
                return Err(Unavailable::NotARoom.into());
            };
            let mut histories = self.histories.lock().await;
            let now = Instant::now();
            // An expired history is forgotten: the room starts a new life (a new epoch).
            live_history(&mut histories, &room, now);
            let history = histories
                .entry(room.clone())
                .or_insert_with(|| RoomHistory {
                    epoch: Position::new_epoch(),
                    top: 0,
                    entries: VecDeque::new(),
                    expires: now,
                });
            let position = Position {
                epoch: history.epoch.clone(),
                offset: history.top + 1,
            };
            envelope.id = position.id();
            // Deliver first: a publish that cannot be delivered is not kept either.
            self.send(envelope.clone()).await?;
            history.top = position.offset;
            history.expires = now + retention.ttl;
            history.entries.push_back(envelope);
            while history.entries.len() > retention.size {
                history.entries.pop_front();
            }
            Ok(position.id())
        })
    }

    fn history(&self, room: Arc<str>) -> BoxFuture<'_, Result<HistoryPage, BrokerError>> {
        Box::pin(async move {
            let mut histories = self.histories.lock().await;
            if live_history(&mut histories, &room, Instant::now()).is_none() {
                return Ok(HistoryPage::default());
            }
            Ok(histories
                .get(&room)
                .map(|h| HistoryPage {
                    epoch: h.epoch.clone(),
                    top: h.top,
                    entries: h.entries.iter().cloned().collect(),
                })
                .unwrap_or_default())
        })
    }
}

impl ControlStore for MemoryBroker {
    fn publish_control(
        &self,
        target: Target,
        control: Control,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.emit(BrokerEvent::Control { target, control }))
    }

    fn store_revocations(
        &self,
        revocations: Vec<Revocation>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let now = crate::clock::now_ms() / 1000;
        self.control.store_revocations(revocations, now);
        Box::pin(async { Ok(()) })
    }

    fn revocations(&self) -> BoxFuture<'_, Result<Vec<Revocation>, BrokerError>> {
        let live = self.control.revocations(crate::clock::now_ms() / 1000);
        Box::pin(async { Ok(live) })
    }

    fn set_server_sub(
        &self,
        user: Arc<str>,
        room: Arc<str>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.control.set_server_sub(&user, &room, ttl);
        Box::pin(async { Ok(()) })
    }

    fn server_subs(&self, user: Arc<str>) -> BoxFuture<'_, Result<Vec<String>, BrokerError>> {
        let rooms = self.control.server_subs(&user);
        Box::pin(async { Ok(rooms) })
    }
}

impl PresenceStore for MemoryBroker {
    fn presence_update(
        &self,
        node: &str,
        ttl: Duration,
        updates: Vec<PresenceUpdate>,
    ) -> BoxFuture<'_, Result<Vec<Arc<str>>, BrokerError>> {
        let node = node.to_owned();
        Box::pin(async move {
            let now = Instant::now();
            let mut lost = Vec::new();
            let mut events = Vec::new();
            {
                let mut table = self.presence_table();
                for update in &updates {
                    let (changes, was_lost) =
                        table.apply(&node, update, now, presence_live_for(ttl));
                    if was_lost {
                        lost.push(update.room.clone());
                    }
                    events.extend(changes.into_iter().map(|change| PresenceEvent {
                        room: update.room.clone(),
                        user: change.user,
                        joined: change.joined,
                        ts: crate::clock::now_ms(),
                        info: change.info,
                    }));
                }
            }
            for event in events {
                self.emit(BrokerEvent::Presence(event)).await?;
            }
            Ok(lost)
        })
    }

    fn presence(
        &self,
        room: Arc<str>,
        events: bool,
        max: usize,
    ) -> BoxFuture<'_, Result<PresenceList, BrokerError>> {
        Box::pin(async move {
            let (list, gone) = self.presence_table().read(&room, Instant::now(), max);
            if events {
                for user in gone {
                    self.emit(BrokerEvent::Presence(PresenceEvent {
                        room: room.clone(),
                        user,
                        joined: false,
                        ts: crate::clock::now_ms(),
                        info: None,
                    }))
                    .await?;
                }
            }
            Ok(list)
        })
    }

    /// Presence events reach this node whatever it subscribes (the hub filters by room).
    fn subscribe_presence(&self, _room: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe_presence(&self, _room: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::data_from_payload;

    fn envelope(id: &str) -> Envelope {
        Envelope {
            target: Target::Room("r".into()),
            id: id.into(),
            data: data_from_payload(b"1"),
            from: "server".into(),
            ts: 0,
            origin: None,
            key: None,
        }
    }

    fn update(room: &str, events: bool, full: bool, users: &[(&str, u64)]) -> PresenceUpdate {
        PresenceUpdate {
            room: room.into(),
            events,
            full,
            users: users.iter().map(|(u, c)| (Arc::from(*u), *c)).collect(),
            info: Vec::new(),
        }
    }

    #[test]
    fn presence_events_are_once_per_user_across_nodes() {
        let mut t = PresenceTable::default();
        let now = Instant::now();
        let live = Duration::from_secs(20);
        let (ev, lost) = t.apply("a", &update("r", true, true, &[("alice", 1)]), now, live);
        assert_eq!(ev, [("alice".to_owned(), true)]);
        assert!(!lost);
        // alice's second tab on node b: nothing; bob on b: joined.
        let (ev, _) = t.apply(
            "b",
            &update("r", true, true, &[("alice", 1), ("bob", 2)]),
            now,
            live,
        );
        assert_eq!(ev, [("bob".to_owned(), true)]);
        // alice leaves a: still on b.
        let (ev, _) = t.apply("a", &update("r", true, false, &[("alice", 0)]), now, live);
        assert!(ev.is_empty(), "{ev:?}");
        let (ev, _) = t.apply("b", &update("r", true, false, &[("alice", 0)]), now, live);
        assert_eq!(ev, [("alice".to_owned(), false)]);
        let (read, gone) = t.read("r", now, 10);
        assert!(gone.is_empty());
        assert_eq!(read.count, 1);
        assert_eq!(
            read.members,
            [crate::protocol::PresenceMember {
                user: "bob".into(),
                conns: 2,
                info: None,
            }]
        );
        // Without events: the same bookkeeping, no announcements.
        let (ev, _) = t.apply("a", &update("q", false, true, &[("x", 1)]), now, live);
        assert!(ev.is_empty());
    }

    #[test]
    fn a_users_info_is_announced_with_its_join_shown_while_present_and_forgotten_after() {
        let mut t = PresenceTable::default();
        let now = Instant::now();
        let live = Duration::from_secs(20);
        let mut with_info = update("r", true, true, &[("alice", 1)]);
        with_info.info = vec![(Arc::from("alice"), Arc::from(r#"{"name":"Alice"}"#))];
        let (ev, _) = t.apply("a", &with_info, now, live);
        assert_eq!(ev[0].info.as_deref(), Some(r#"{"name":"Alice"}"#));
        let (read, _) = t.read("r", now, 10);
        assert_eq!(read.members[0].info.as_deref(), Some(r#"{"name":"Alice"}"#));
        // Gone from every node, then back with none: the old info is not hers any more.
        t.apply("a", &update("r", true, false, &[("alice", 0)]), now, live);
        let (ev, _) = t.apply("b", &update("r", true, true, &[("alice", 1)]), now, live);
        assert_eq!(ev[0].info, None);
        assert_eq!(t.read("r", now, 10).0.members[0].info, None);
    }

    #[test]
    fn a_silent_node_is_dropped_and_its_users_announced_by_another() {
        let mut t = PresenceTable::default();
        let start = Instant::now();
        let live = Duration::from_secs(20);
        t.apply(
            "dead",
            &update("r", true, true, &[("ann", 1), ("both", 1)]),
            start,
            live,
        );
        t.apply(
            "alive",
            &update("r", true, true, &[("both", 1)]),
            start,
            live,
        );
        let later = start + Duration::from_secs(15);
        t.apply("alive", &update("r", true, false, &[]), later, live);
        let after = start + Duration::from_secs(21);
        let (ev, lost) = t.apply("alive", &update("r", true, false, &[]), after, live);
        assert_eq!(ev, [("ann".to_owned(), false)], "`both` is still on alive");
        assert!(!lost);
        let (list, _) = t.read("r", after, 10);
        assert_eq!(list.count, 1, "the dead node no longer counts");
        // The dead node comes back: its state is gone and it is told to resend.
        let (_, lost) = t.apply("dead", &update("r", true, false, &[]), after, live);
        assert!(lost);
    }

    #[test]
    fn reads_sum_nodes_and_list_the_first_users_in_name_order() {
        let mut t = PresenceTable::default();
        let now = Instant::now();
        let live = Duration::from_secs(20);
        t.apply(
            "a",
            &update("r", false, true, &[("zed", 1), ("alice", 2)]),
            now,
            live,
        );
        t.apply(
            "b",
            &update("r", false, true, &[("alice", 1), ("mia", 1)]),
            now,
            live,
        );
        let (list, _) = t.read("r", now, 2);
        assert_eq!(
            (list.count, list.truncated),
            (3, true),
            "the count stays exact"
        );
        let members: Vec<(&str, u64)> = list
            .members
            .iter()
            .map(|m| (m.user.as_str(), m.conns))
            .collect();
        assert_eq!(members, [("alice", 3), ("mia", 1)]);
        let (list, _) = t.read("r", now, 3);
        assert!(!list.truncated);
    }

    #[test]
    fn a_whole_update_replaces_a_previous_life() {
        let mut t = PresenceTable::default();
        let now = Instant::now();
        let live = Duration::from_secs(20);
        t.apply(
            "n",
            &update("r", true, true, &[("ghost", 1), ("stay", 1)]),
            now,
            live,
        );
        let (ev, _) = t.apply(
            "n",
            &update("r", true, true, &[("stay", 1), ("new", 1)]),
            now,
            live,
        );
        assert_eq!(ev, [("new".to_owned(), true), ("ghost".to_owned(), false)]);
    }

    #[tokio::test]
    async fn publishes_come_back_in_order() {
        let (tx, mut rx) = mpsc::channel(8);
        let broker = MemoryBroker::new(tx, Duration::from_millis(50));
        for i in 0..5 {
            broker
                .publish(envelope(&i.to_string()))
                .await
                .expect("publish");
        }
        for i in 0..5 {
            match rx.recv().await {
                Some(BrokerEvent::Publication(e)) => assert_eq!(e.id, i.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_full_queue_times_out_instead_of_waiting_forever() {
        let (tx, _rx) = mpsc::channel(1);
        let broker = MemoryBroker::new(tx, Duration::from_millis(20));
        broker.publish(envelope("a")).await.expect("first fits");
        let second = broker.publish(envelope("b")).await;
        assert!(matches!(second, Err(BrokerError::Timeout)), "{second:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retained_publishes_get_consecutive_positions_bounded_by_size_and_ttl() {
        let (tx, mut rx) = mpsc::channel(64);
        let broker = MemoryBroker::new(tx, Duration::from_millis(50));
        let retention = Retention {
            size: 3,
            ttl: Duration::from_secs(10),
        };
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                broker
                    .publish_retained(envelope(&i.to_string()), retention)
                    .await
                    .expect("publish"),
            );
        }
        let positions: Vec<Position> = ids.iter().filter_map(|id| Position::parse(id)).collect();
        assert_eq!(
            positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(positions.iter().all(|p| p.epoch == positions[0].epoch));
        for id in &ids {
            match rx.recv().await {
                Some(BrokerEvent::Publication(e)) => assert_eq!(&e.id, id),
                other => panic!("unexpected {other:?}"),
            }
        }
        let page = broker.history("r".into()).await.expect("history");
        assert_eq!(page.top, 5);
        assert_eq!(
            page.entries
                .iter()
                .map(|e| e.id.clone())
                .collect::<Vec<_>>(),
            ids[2..]
        );

        tokio::time::advance(Duration::from_secs(11)).await;
        let page = broker.history("r".into()).await.expect("history");
        assert!(
            page.entries.is_empty() && page.top == 0,
            "expired after ttl"
        );
        let id = broker
            .publish_retained(envelope("new"), retention)
            .await
            .expect("publish");
        let p = Position::parse(&id).expect("position");
        assert_eq!(p.offset, 1);
        assert_ne!(p.epoch, positions[0].epoch, "a new life of the history");
    }
}
