//! The node: hub + broker + metrics, and the rules that tie them together.
//!
//! Owns interest (the first local member of a room subscribes the node to its channel, the
//! last one unsubscribes it), message ids, publishing on behalf of clients and services, and
//! turning broker events into hub deliveries. Connections reach the broker only through here.
//! Sockets, frames on the wire and HTTP are left to `connection`, `listener` and `admin`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, warn};

use crate::auth::{Identity, glob_match};
// `broker::memory` imports the clock from here.
pub use crate::clock::now_ms;

use crate::broker::{
    Broker, BrokerError, BrokerEvent, Envelope, HistoryPage, Origin, Position, PresenceEvent,
    Retention, Target,
};
use crate::clock::within;
use crate::config::Config;
use crate::hub::{Gate, Hub};
use crate::metrics::{DropReason, Metrics};
use crate::outbox::{ConnId, Outbox, OutboxReceiver, outbox};
use crate::presence::{LocalPresence, PresenceRules};
use crate::protocol::{
    self, CommandError, Disconnect, ErrorCode, Frame, PresenceList, RESERVED_ROOM_PREFIX,
    validate_room,
};

/// Capacity of the queue from the broker to the dispatcher.
pub const BROKER_EVENT_QUEUE: usize = 65_536;
const INTEREST_SHARDS: usize = 64;

/// One client connection as the node sees it.
pub struct Session {
    pub conn: ConnId,
    /// `conn_id` on the wire: unique across nodes and restarts.
    pub conn_id: String,
    pub user: Option<Arc<str>>,
    /// What the connection's token allows; `None` without authentication.
    pub identity: Option<Arc<Identity>>,
    pub outbox: Outbox,
    pub rooms: HashSet<Arc<str>>,
}

impl Session {
    /// `from` of the messages this connection publishes, and who it is in presence.
    fn from(&self) -> String {
        match &self.user {
            Some(user) => user.to_string(),
            None => self.conn_id.clone(),
        }
    }
}

/// Outcome of a successful join: what goes into `joined`, the history to send right after
/// it, and the gate holding the member's live traffic until the replay is out.
#[derive(Default)]
pub struct JoinOutcome {
    /// `recovered` of the reply, when the client asked to resume with `since`.
    pub recovered: Option<bool>,
    /// `history` of the reply: how many kept messages are replayed.
    pub history: Option<u64>,
    pub replay: Vec<Frame>,
    /// Open with [`Node::open_gate`] after `joined` and the replay are queued.
    pub gate: Option<(Gate, Option<u64>)>,
}

/// What this node knows of a kept room's history, for de-duplication and catching up after
/// a broker outage.
#[derive(Default)]
struct RoomCursor {
    /// The newest kept message delivered here.
    delivered: Option<Position>,
    /// The history's top when this node subscribed: messages up to it were either older than
    /// the subscription or delivered live.
    seed: Option<Position>,
}

pub struct Node {
    config: Arc<Config>,
    node_id: String,
    /// Random per process: the prefix of message and connection ids, and this node's identity
    /// in envelopes (node ids from configuration may collide; this may not).
    instance: String,
    hub: Hub,
    broker: Box<dyn Broker>,
    metrics: Arc<Metrics>,
    /// Serialises subscribe/unsubscribe per channel, so a join never answers `joined` before
    /// the subscription that another join started is live.
    interest: Box<[Mutex<()>]>,
    interest_hasher: RandomState,
    next_conn: AtomicU64,
    next_msg: AtomicU64,
    history_rules: Vec<(String, Retention)>,
    cursors: std::sync::Mutex<HashMap<Arc<str>, RoomCursor>>,
    accepting: AtomicBool,
    presence_rules: PresenceRules,
    /// This node's users of `presence.rooms` rooms, written to the broker in batches.
    presence: LocalPresence,
    /// Connections open or mid-handshake, for `server.max_connections`.
    slots: AtomicU64,
    command_timeout: Duration,
    rate_clock: crate::limits::DefaultClock,
}

impl Node {
    pub fn new(config: Arc<Config>, broker: Box<dyn Broker>, metrics: Arc<Metrics>) -> Arc<Node> {
        let instance = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let history_rules = config
            .history
            .rooms
            .iter()
            .map(|r| {
                (
                    r.pattern.clone(),
                    Retention {
                        size: r.size,
                        ttl: Duration::from_secs(r.ttl_s),
                    },
                )
            })
            .collect();
        let presence_rules = PresenceRules::new(&config.presence);
        let presence = LocalPresence::new(Duration::from_secs(config.presence.ttl_s));
        Arc::new(Node {
            node_id: config.node_id(),
            command_timeout: Duration::from_millis(config.redis.command_timeout_ms),
            config,
            instance,
            hub: Hub::new(),
            broker,
            metrics,
            interest: (0..INTEREST_SHARDS).map(|_| Mutex::new(())).collect(),
            interest_hasher: RandomState::new(),
            next_conn: AtomicU64::new(1),
            next_msg: AtomicU64::new(1),
            history_rules,
            cursors: std::sync::Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            presence_rules,
            presence,
            slots: AtomicU64::new(0),
            rate_clock: crate::limits::DefaultClock::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The clock every connection's rate limiter reads (one calibration per node).
    pub fn rate_clock(&self) -> &crate::limits::DefaultClock {
        &self.rate_clock
    }

    /// How `room`'s traffic is kept: the first `history.rooms` rule whose pattern matches.
    pub fn retention_for(&self, room: &str) -> Option<Retention> {
        self.history_rules
            .iter()
            .find(|(pattern, _)| glob_match(pattern, room))
            .map(|(_, retention)| *retention)
    }

    fn cursors(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomCursor>> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// `/readyz`: accepting clients and the broker is reachable.
    pub fn is_ready(&self) -> bool {
        self.accepting.load(Ordering::Acquire) && self.broker.is_up()
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    /// Close every client with 1001; call after [`Node::stop_accepting`]. A session opening
    /// concurrently either is in the hub here or sees the node no longer accepting and closes
    /// itself (the hub's shard lock orders the two).
    pub fn close_all_clients(&self) {
        self.hub.close_all(Disconnect::Shutdown);
    }

    /// Take a connection slot, or `None` when the node is at `server.max_connections`.
    pub fn reserve_slot(self: &Arc<Self>) -> Option<SlotGuard> {
        let max = self.config.server.max_connections;
        let previous = self.slots.fetch_add(1, Ordering::AcqRel);
        if previous >= max {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SlotGuard { node: self.clone() })
    }

    fn next_message_id(&self) -> String {
        format!(
            "{}-{}",
            self.instance,
            self.next_msg.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Register a new connection: its outbox, and its user's channel when it is the user's
    /// first connection here.
    pub async fn open_session(
        &self,
        identity: Option<Identity>,
    ) -> Result<(Session, OutboxReceiver), BrokerError> {
        let identity = identity.map(Arc::new);
        let user = identity.as_ref().map(|i| i.user.clone());
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbox, receiver) = outbox(conn, self.config.limits.outbox_messages);
        if let Some(user) = &user {
            let target = Target::User(user.clone());
            let _guard = self.interest_lock(&target).await;
            if self.hub.add_connection(&outbox, Some(user))
                && let Err(err) = self.subscribe(target).await
            {
                self.hub.remove_connection(conn, Some(user));
                return Err(err);
            }
        } else {
            self.hub.add_connection(&outbox, None);
        }
        self.metrics.connections_open.inc();
        if !self.is_accepting() {
            outbox.closer().close(Disconnect::Shutdown);
        }
        let session = Session {
            conn,
            conn_id: format!("{}.{conn}", self.instance),
            user,
            identity,
            outbox,
            rooms: HashSet::new(),
        };
        Ok((session, receiver))
    }

    /// Leave every room and forget the connection.
    pub async fn close_session(&self, session: &mut Session) {
        let who = session.from();
        for room in std::mem::take(&mut session.rooms) {
            self.leave_room(&room, session.conn, &who).await;
        }
        match &session.user {
            Some(user) => {
                let target = Target::User(user.clone());
                let _guard = self.interest_lock(&target).await;
                if self.hub.remove_connection(session.conn, Some(user)) {
                    self.unsubscribe(target).await;
                }
            }
            None => {
                self.hub.remove_connection(session.conn, None);
            }
        }
        self.metrics.connections_open.dec();
    }

    pub async fn join(
        &self,
        session: &mut Session,
        room: &str,
        since: Option<&str>,
        history: Option<u64>,
    ) -> Result<JoinOutcome, CommandError> {
        validate_room(room)?;
        if room.starts_with(RESERVED_ROOM_PREFIX) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "rooms named user:… are reserved",
            ));
        }
        if let Some(identity) = &session.identity
            && !identity.may_join(room)
        {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "your token does not allow joining this room",
            ));
        }
        if session.rooms.contains(room) {
            // Already live in the room: there is nothing to replay that it has not been sent.
            return Ok(JoinOutcome::default());
        }
        let max = self.config.limits.max_rooms_per_connection;
        if session.rooms.len() >= max {
            return Err(CommandError::new(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {max} rooms"),
            ));
        }
        let room: Arc<str> = Arc::from(room);
        let target = Target::Room(room.clone());
        let retention = self.retention_for(&room);
        let wants_replay = since.is_some() || history.is_some_and(|n| n > 0);
        let presence = self.presence_rules.rule(&room).map(|rule| rule.events);
        let mut gate = None;
        let first;
        {
            let _guard = self.interest_lock(&target).await;
            first = self.hub.room_members(&room) == 0;
            if first {
                self.subscribe_room(&room, presence == Some(true))
                    .await
                    .map_err(|err| {
                        CommandError::new(ErrorCode::Unavailable, format!("cannot join: {err}"))
                    })?;
            }
            match retention {
                Some(_) if wants_replay => {
                    let capacity = self.config.limits.outbox_messages;
                    gate = self.hub.join_gated(&room, &session.outbox, capacity).1;
                }
                _ => {
                    self.hub.join(&room, &session.outbox);
                }
            }
            if let Some(events) = presence {
                self.presence.add(&room, events, &Arc::from(session.from()));
            }
        }
        session.rooms.insert(room.clone());
        self.metrics.rooms.set(self.hub.room_count() as i64);

        let Some(retention) = retention else {
            // Nothing is kept for this room: a client resuming must reload its state.
            return Ok(JoinOutcome {
                recovered: since.map(|_| false),
                history: history.map(|_| 0),
                ..JoinOutcome::default()
            });
        };
        if !first && gate.is_none() {
            return Ok(JoinOutcome::default());
        }
        let page = match self.fetch_history(&room, retention).await {
            Ok(page) => page,
            Err(err) => {
                if let Some(gate) = gate {
                    gate.open(&self.hub, &session.outbox, None);
                }
                session.rooms.remove(&room);
                self.leave_room(&room, session.conn, &session.from()).await;
                return Err(CommandError::new(
                    ErrorCode::Unavailable,
                    format!("cannot read the room's history: {err}"),
                ));
            }
        };
        if first {
            self.seed_cursor(&room, &page);
        }
        let Some(gate) = gate else {
            return Ok(JoinOutcome::default());
        };
        Ok(plan_replay(page, since, history, gate))
    }

    /// Queue what a gated join held back, after `joined` and the replay.
    pub fn open_gate(&self, session: &Session, gate: Gate, after: Option<u64>) {
        let delivery = gate.open(&self.hub, &session.outbox, after);
        self.metrics.messages_delivered.inc_by(delivery.delivered);
    }

    async fn fetch_history(
        &self,
        room: &Arc<str>,
        retention: Retention,
    ) -> Result<HistoryPage, BrokerError> {
        self.bounded(self.broker.history(room.clone(), retention))
            .await
    }

    fn seed_cursor(&self, room: &Arc<str>, page: &HistoryPage) {
        if page.epoch.is_empty() {
            return;
        }
        self.cursors().entry(room.clone()).or_default().seed = Some(Position {
            epoch: page.epoch.clone(),
            offset: page.top,
        });
    }

    pub async fn leave(&self, session: &mut Session, room: &str) -> Result<(), CommandError> {
        validate_room(room)?;
        if !session.rooms.remove(room) {
            return Err(CommandError::new(
                ErrorCode::NotJoined,
                "not a member of this room",
            ));
        }
        self.leave_room(room, session.conn, &session.from()).await;
        Ok(())
    }

    /// `who` is the member's name in presence ([`Session::from`]).
    async fn leave_room(&self, room: &str, conn: ConnId, who: &str) {
        let target = Target::Room(Arc::from(room));
        let _guard = self.interest_lock(&target).await;
        let left = self.hub.leave(room, conn);
        if left.is_some() && self.presence_rules.rule(room).is_some() {
            self.presence.remove(room, who);
        }
        if left == Some(true) {
            self.cursors().remove(room);
            if self
                .presence_rules
                .rule(room)
                .is_some_and(|rule| rule.events)
            {
                let unsubscribing = self.broker.unsubscribe_presence(Arc::from(room));
                if let Err(err) = self.bounded(unsubscribing).await {
                    debug!(%err, "presence unsubscribe failed");
                }
            }
            self.unsubscribe(target).await;
        }
        self.metrics.rooms.set(self.hub.room_count() as i64);
    }

    /// Subscribe a room's channel, and its presence events when `events`, together (one
    /// round trip for both with Redis).
    async fn subscribe_room(&self, room: &Arc<str>, events: bool) -> Result<(), BrokerError> {
        if !events {
            return self.subscribe(Target::Room(room.clone())).await;
        }
        let presence = self.bounded(self.broker.subscribe_presence(room.clone()));
        let (messages, events) = tokio::join!(self.subscribe(Target::Room(room.clone())), presence);
        if let Err(err) = messages.and(events) {
            // The hub drops what arrives for rooms without members: a half-made subscription
            // costs traffic, not correctness; give it back anyway.
            let _ = self
                .bounded(self.broker.unsubscribe_presence(room.clone()))
                .await;
            self.unsubscribe(Target::Room(room.clone())).await;
            return Err(err);
        }
        Ok(())
    }

    /// `presence` from a client: it must have joined the room, its token must allow the room,
    /// and the room must keep presence.
    pub async fn presence(
        &self,
        session: &Session,
        room: &str,
    ) -> Result<PresenceList, CommandError> {
        validate_room(room)?;
        if let Some(identity) = &session.identity
            && !identity.may_join(room)
        {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "your token does not allow this room",
            ));
        }
        if self.presence_rules.rule(room).is_none() {
            return Err(CommandError::bad_request(
                "presence is not kept for this room",
            ));
        }
        if !session.rooms.contains(room) {
            return Err(CommandError::new(
                ErrorCode::NotJoined,
                "join the room before asking who is in it",
            ));
        }
        self.presence_of(room).await
    }

    /// Who is in `room` on every node (admin API and `presence`): `bad_request` for a room
    /// that keeps no presence, `unavailable` when the broker cannot say.
    pub async fn presence_of(&self, room: &str) -> Result<PresenceList, CommandError> {
        validate_room(room)?;
        let Some(rule) = self.presence_rules.rule(room) else {
            return Err(CommandError::bad_request(
                "presence is not kept for this room",
            ));
        };
        // Read our own writes: this node's changes so far reach the broker first.
        self.presence.written(self.command_timeout).await;
        self.bounded(
            self.broker
                .presence(room.into(), rule.events, rule.max_members),
        )
        .await
        .map_err(|err| {
            CommandError::new(
                ErrorCode::Unavailable,
                format!("cannot read presence: {err}"),
            )
        })
    }

    /// Write presence changes in batches and keep this node live in every room, until
    /// `stop`. Spawned by `run`.
    pub async fn run_presence(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.presence_rules.is_empty() {
            return;
        }
        self.presence
            .run(
                &*self.broker,
                &self.node_id,
                self.command_timeout,
                stop,
                &self.metrics,
            )
            .await;
    }

    /// Write what presence changes are pending now (at shutdown, after the clients are gone,
    /// so the others see them leave at once rather than after the ttl).
    pub async fn flush_presence(&self) {
        if self.presence_rules.is_empty() {
            return;
        }
        if let Err(err) = self
            .presence
            .flush(
                &*self.broker,
                &self.node_id,
                false,
                self.command_timeout,
                &self.metrics,
            )
            .await
        {
            warn!(%err, "cannot write the last presence changes");
        }
    }

    fn deliver_presence(&self, event: &PresenceEvent) {
        if !self
            .presence_rules
            .rule(&event.room)
            .is_some_and(|rule| rule.events)
        {
            return;
        }
        let frame = protocol::member_event(&event.room, &event.user, event.joined, event.ts);
        let delivery = self.hub.deliver_room(&event.room, &frame, None, None);
        self.metrics.messages_delivered.inc_by(delivery.delivered);
        self.metrics
            .dropped(DropReason::SlowConsumer, delivery.overflowed);
    }

    /// Publish a client's message to a room it has joined; returns the message id.
    pub async fn publish_from_client(
        &self,
        session: &Session,
        room: &str,
        data: Box<RawValue>,
        echo: bool,
    ) -> Result<String, CommandError> {
        validate_room(room)?;
        let Some(room) = session.rooms.get(room) else {
            return Err(CommandError::new(
                ErrorCode::NotJoined,
                "join the room before publishing to it",
            ));
        };
        if let Some(identity) = &session.identity
            && !identity.may_publish(room)
        {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "your token does not allow publishing to this room",
            ));
        }
        let envelope = Envelope {
            target: Target::Room(room.clone()),
            id: self.next_message_id(),
            data,
            from: session.from(),
            ts: now_ms(),
            origin: Some(Origin {
                node: self.instance.clone(),
                conn: session.conn,
                echo,
            }),
        };
        self.publish(envelope).await.map_err(|err| {
            CommandError::new(ErrorCode::Unavailable, format!("not published: {err}"))
        })
    }

    /// Publish on behalf of a service (admin API); `from` is "server".
    pub async fn publish_from_service(
        &self,
        target: Target,
        data: Box<RawValue>,
    ) -> Result<String, BrokerError> {
        let envelope = Envelope {
            target,
            id: self.next_message_id(),
            data,
            from: "server".to_owned(),
            ts: now_ms(),
            origin: None,
        };
        self.publish(envelope).await
    }

    async fn publish(&self, envelope: Envelope) -> Result<String, BrokerError> {
        let id = envelope.id.clone();
        let retention = match &envelope.target {
            Target::Room(room) => self.retention_for(room),
            _ => None,
        };
        let started = Instant::now();
        let publishing = async {
            match retention {
                Some(retention) => self.broker.publish_retained(envelope, retention).await,
                None => self.broker.publish(envelope).await.map(|()| id),
            }
        };
        let result = self.bounded(publishing).await;
        self.metrics
            .broker_publish_latency
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.broker_publish_errors.inc();
        }
        result
    }

    /// A broker call bounded by `redis.command_timeout_ms`.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        within(self.command_timeout, BrokerError::Timeout, call).await
    }

    async fn subscribe(&self, target: Target) -> Result<(), BrokerError> {
        self.bounded(self.broker.subscribe(target)).await
    }

    async fn unsubscribe(&self, target: Target) {
        if let Err(err) = self.bounded(self.broker.unsubscribe(target)).await {
            // The hub drops publications for rooms without members, so a lingering
            // subscription costs traffic, not correctness.
            debug!(%err, "unsubscribe failed");
        }
    }

    async fn interest_lock(&self, target: &Target) -> tokio::sync::MutexGuard<'_, ()> {
        let index = (self.interest_hasher.hash_one(target) as usize) % self.interest.len();
        self.interest[index].lock().await
    }

    /// Hand one broker event to the hub.
    pub async fn handle_event(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::Publication(envelope) => self.deliver(&envelope),
            BrokerEvent::Presence(event) => self.deliver_presence(&event),
            BrokerEvent::Up { resumed } => {
                self.metrics.broker_up.set(1);
                if resumed {
                    self.metrics.broker_reconnects.inc();
                    self.catch_up().await;
                }
            }
            BrokerEvent::Down => {
                self.metrics.broker_up.set(0);
                warn!("broker down: publishes fail with `unavailable` until it returns");
            }
        }
    }

    /// After a broker outage, deliver from history what kept rooms missed, before any live
    /// message that arrived after the reconnect (the dispatcher waits for this).
    async fn catch_up(&self) {
        let rooms: Vec<(Arc<str>, Retention)> = {
            let cursors = self.cursors();
            cursors
                .keys()
                .filter_map(|room| self.retention_for(room).map(|r| (room.clone(), r)))
                .collect()
        };
        let pages = futures_util::future::join_all(
            rooms
                .iter()
                .map(|(room, retention)| self.fetch_history(room, *retention)),
        )
        .await;
        let mut caught_up = 0u64;
        for ((room, _), page) in rooms.iter().zip(pages) {
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    warn!(%err, "cannot catch a room up from history");
                    continue;
                }
            };
            let from = {
                let cursors = self.cursors();
                cursors
                    .get(room)
                    .and_then(|c| c.delivered.clone().or_else(|| c.seed.clone()))
            };
            for envelope in &page.entries {
                let missed = match (Position::parse(&envelope.id), &from) {
                    (Some(p), Some(from)) => p.epoch != from.epoch || p.offset > from.offset,
                    (Some(_), None) => false,
                    (None, _) => false,
                };
                if missed {
                    caught_up += 1;
                    self.deliver(envelope);
                }
            }
        }
        self.metrics.history_caught_up.inc_by(caught_up);
        if caught_up > 0 {
            warn!(
                messages = caught_up,
                "delivered messages missed during a broker outage"
            );
        }
    }

    /// Whether a kept message was already delivered here (it can come twice: live and from
    /// a catch-up); records it otherwise.
    fn already_delivered(&self, room: &Arc<str>, position: Position) -> bool {
        let mut cursors = self.cursors();
        let Some(cursor) = cursors.get_mut(room) else {
            // No local member: nothing to record.
            return false;
        };
        if let Some(last) = &cursor.delivered
            && last.epoch == position.epoch
            && position.offset <= last.offset
        {
            return true;
        }
        cursor.delivered = Some(position);
        false
    }

    fn deliver(&self, envelope: &Envelope) {
        let mut offset = None;
        if let Target::Room(room) = &envelope.target {
            match Position::parse(&envelope.id) {
                Some(position) => {
                    offset = Some(position.offset);
                    if self.hub.room_members(room) > 0 {
                        self.cursors().entry(room.clone()).or_default();
                    }
                    if self.already_delivered(room, position) {
                        return;
                    }
                }
                None if !self.history_rules.is_empty() && self.retention_for(room).is_some() => {
                    self.metrics.history_unkept.inc();
                }
                None => {}
            }
        }
        let age_ms = now_ms().saturating_sub(envelope.ts);
        self.metrics
            .delivery_latency
            .observe(age_ms as f64 / 1000.0);
        let frame = envelope.frame();
        let delivery = match &envelope.target {
            Target::Room(room) => {
                let skip = envelope
                    .origin
                    .as_ref()
                    .filter(|o| !o.echo && o.node == self.instance)
                    .map(|o| o.conn);
                self.hub.deliver_room(room, &frame, skip, offset)
            }
            Target::User(user) => self.hub.deliver_user(user, &frame),
            Target::Broadcast => self.hub.deliver_all(&frame),
        };
        self.metrics.messages_delivered.inc_by(delivery.delivered);
        self.metrics
            .dropped(DropReason::SlowConsumer, delivery.overflowed);
    }

    /// Feed broker events to the hub until the broker's queue closes.
    pub async fn dispatch(self: Arc<Self>, mut events: mpsc::Receiver<BrokerEvent>) {
        let mut batch = Vec::with_capacity(64);
        while events.recv_many(&mut batch, 64).await > 0 {
            for event in batch.drain(..) {
                self.handle_event(event).await;
            }
        }
    }

    /// Subscribe the channels every node always needs.
    pub async fn subscribe_broadcast(&self) -> Result<(), BrokerError> {
        self.subscribe(Target::Broadcast).await
    }
}

/// Which kept messages a gated join replays, and from where its held live traffic resumes.
fn plan_replay(
    page: HistoryPage,
    since: Option<&str>,
    history: Option<u64>,
    gate: Gate,
) -> JoinOutcome {
    let resume = since.map(|since| {
        Position::parse(since).filter(|p| {
            p.epoch == page.epoch
                && (p.offset >= page.top
                    || page
                        .entries
                        .first()
                        .and_then(|e| Position::parse(&e.id))
                        .is_some_and(|first| first.offset <= p.offset + 1))
        })
    });
    let recovered = resume.as_ref().map(Option::is_some);
    let replay: Vec<&Envelope> = match (&resume, history) {
        (Some(Some(from)), _) => page
            .entries
            .iter()
            .filter(|e| Position::parse(&e.id).is_some_and(|p| p.offset > from.offset))
            .collect(),
        (_, Some(n)) => {
            let skip = page.entries.len().saturating_sub(n as usize);
            page.entries.iter().skip(skip).collect()
        }
        _ => Vec::new(),
    };
    let after = replay
        .last()
        .and_then(|e| Position::parse(&e.id))
        .map(|p| p.offset)
        .or_else(|| resume.flatten().map(|p| p.offset));
    JoinOutcome {
        recovered,
        history: Some(replay.len() as u64),
        replay: replay.iter().map(|e| e.frame()).collect(),
        gate: Some((gate, after)),
    }
}

/// A connection slot, released on drop.
pub struct SlotGuard {
    node: Arc<Node>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.node.slots.fetch_sub(1, Ordering::AcqRel);
    }
}
