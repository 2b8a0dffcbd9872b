//! The node: hub + broker + metrics, and the rules that tie them together.
//!
//! Owns interest (the first local member of a room subscribes the node to its channel, the
//! last one unsubscribes it), message ids, publishing on behalf of clients and services, and
//! turning broker events into hub deliveries. Connections reach the broker only through here.
//! Sockets, frames on the wire and HTTP are left to `connection`, `listener` and `admin`.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, warn};

use crate::auth::Identity;
use crate::broker::{Broker, BrokerError, BrokerEvent, Envelope, Origin, Target};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::{Drop, Metrics};
use crate::outbox::{ConnId, Outbox, OutboxReceiver, outbox};
use crate::protocol::{CommandError, ErrorCode, RESERVED_ROOM_PREFIX, validate_room};

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
    /// `from` of the messages this connection publishes.
    fn from(&self) -> String {
        match &self.user {
            Some(user) => user.to_string(),
            None => self.conn_id.clone(),
        }
    }
}

/// Outcome of a successful join.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// `recovered` of the reply: `Some(false)` when the client asked to resume with `since`
    /// and nothing is retained to resume from.
    pub recovered: Option<bool>,
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
    accepting: AtomicBool,
    /// Connections open or mid-handshake, for `server.max_connections`.
    slots: AtomicU64,
    command_timeout: Duration,
}

impl Node {
    pub fn new(config: Arc<Config>, broker: Box<dyn Broker>, metrics: Arc<Metrics>) -> Arc<Node> {
        let instance = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
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
            accepting: AtomicBool::new(true),
            slots: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
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
        for room in std::mem::take(&mut session.rooms) {
            self.leave_room(&room, session.conn).await;
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
        // No history is kept yet: a client resuming with `since` must reload its state.
        let recovered = since.map(|_| false);
        if session.rooms.contains(room) {
            return Ok(JoinOutcome { recovered });
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
        {
            let _guard = self.interest_lock(&target).await;
            if self.hub.room_members(&room) == 0 {
                self.subscribe(target).await.map_err(|err| {
                    CommandError::new(ErrorCode::Unavailable, format!("cannot join: {err}"))
                })?;
            }
            self.hub.join(&room, &session.outbox);
        }
        session.rooms.insert(room);
        self.metrics.rooms.set(self.hub.room_count() as i64);
        Ok(JoinOutcome { recovered })
    }

    pub async fn leave(&self, session: &mut Session, room: &str) -> Result<(), CommandError> {
        validate_room(room)?;
        if !session.rooms.remove(room) {
            return Err(CommandError::new(
                ErrorCode::NotJoined,
                "not a member of this room",
            ));
        }
        self.leave_room(room, session.conn).await;
        Ok(())
    }

    async fn leave_room(&self, room: &str, conn: ConnId) {
        let target = Target::Room(Arc::from(room));
        let _guard = self.interest_lock(&target).await;
        if self.hub.leave(room, conn) == Some(true) {
            self.unsubscribe(target).await;
        }
        self.metrics.rooms.set(self.hub.room_count() as i64);
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
        let started = Instant::now();
        let result = tokio::time::timeout(self.command_timeout, self.broker.publish(envelope))
            .await
            .unwrap_or(Err(BrokerError::Timeout));
        self.metrics
            .broker_publish_latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => Ok(id),
            Err(err) => {
                self.metrics.broker_publish_errors.inc();
                Err(err)
            }
        }
    }

    async fn subscribe(&self, target: Target) -> Result<(), BrokerError> {
        tokio::time::timeout(self.command_timeout, self.broker.subscribe(target))
            .await
            .unwrap_or(Err(BrokerError::Timeout))
    }

    async fn unsubscribe(&self, target: Target) {
        let result = tokio::time::timeout(self.command_timeout, self.broker.unsubscribe(target))
            .await
            .unwrap_or(Err(BrokerError::Timeout));
        if let Err(err) = result {
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
    pub fn handle_event(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::Publication(envelope) => self.deliver(&envelope),
            BrokerEvent::Up { resumed } => {
                self.metrics.broker_up.set(1);
                if resumed {
                    self.metrics.broker_reconnects.inc();
                }
            }
            BrokerEvent::Down => {
                self.metrics.broker_up.set(0);
                warn!("broker down: publishes fail with `unavailable` until it returns");
            }
        }
    }

    fn deliver(&self, envelope: &Envelope) {
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
                self.hub.deliver_room(room, &frame, skip)
            }
            Target::User(user) => self.hub.deliver_user(user, &frame),
            Target::Broadcast => self.hub.deliver_all(&frame),
        };
        self.metrics.messages_delivered.inc_by(delivery.delivered);
        self.metrics
            .dropped(Drop::SlowConsumer, delivery.overflowed);
    }

    /// Feed broker events to the hub until the broker's queue closes.
    pub async fn dispatch(self: Arc<Self>, mut events: mpsc::Receiver<BrokerEvent>) {
        let mut batch = Vec::with_capacity(64);
        while events.recv_many(&mut batch, 64).await > 0 {
            for event in batch.drain(..) {
                self.handle_event(event);
            }
        }
    }

    /// Subscribe the channels every node always needs.
    pub async fn subscribe_broadcast(&self) -> Result<(), BrokerError> {
        self.subscribe(Target::Broadcast).await
    }
}

/// A connection slot, released on drop.
pub struct SlotGuard {
    node: Arc<Node>,
}

impl std::ops::Drop for SlotGuard {
    fn drop(&mut self) {
        self.node.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
