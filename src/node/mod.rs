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
use tokio::sync::Mutex;
use tracing::debug;

use crate::auth::{Authenticator, Identity};
// `broker::memory` imports the clock from here.
use crate::clock::now_ms;

use crate::broker::{Broker, BrokerError, Envelope, Origin, Target};
use crate::clock::within;
use crate::config::Config;
use crate::hooks::{Asker, Hooks};
use crate::hub::{Gate, Hub};
use crate::metrics::Metrics;
use crate::outbox::{ConnId, Outbox, OutboxReceiver, outbox};
use crate::presence::LocalPresence;
use crate::protocol::{CommandError, Disconnect, ErrorCode, Frame, RoomName};
use history::RoomCursor;
use policy::RoomPolicies;

mod control;
mod dispatch;
mod history;
mod http_publish;
mod interest;
mod policy;
mod presence_hooks;
mod read;
mod refresh;
mod revocations;
mod server_subs;
mod stats;
mod validation;
mod webhooks;

pub use control::RevokeError;
pub use policy::{RoomPolicy, RoomPresence};
pub use read::{HistoryQuery, ReadError};
pub use refresh::Refreshed;
pub use validation::RoomSchemas;
pub use webhooks::MAX_PARKED_PAGE;

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
    /// The rooms of `rooms` the backend joined ([server subscriptions](server_subs)): a
    /// `refresh` narrowing the token's `rooms` claim leaves them, as a connect's check does.
    /// A few at most, so a `Vec`: a connection without any pays 24 bytes.
    pub server_rooms: Vec<Arc<str>>,
}

impl Session {
    /// Who the backend's hooks are told is asking.
    fn asker(&self) -> Asker<'_> {
        Asker {
            user: self.user.as_deref(),
            conn_id: &self.conn_id,
        }
    }

    /// Name the connection in the current tracing span (its `conn` and `user` fields), once
    /// the node has registered it: while the span is on (debug level), every later log line of
    /// the socket then says whose it is.
    pub fn name_in_span(&self) {
        let span = tracing::Span::current();
        span.record("conn", self.conn_id.as_str());
        if let Some(user) = self.user.as_deref() {
            span.record("user", user);
        }
    }

    /// `from` of the messages this connection publishes, and who it is in presence.
    fn from(&self) -> String {
        match &self.user {
            Some(user) => user.to_string(),
            None => self.conn_id.clone(),
        }
    }
}

/// Who publishes a client's message: what the hooks are told, its `from`, and the connection
/// its echo setting refers to.
struct Sender<'a> {
    asker: Asker<'a>,
    from: String,
    conn: ConnId,
    echo: bool,
    /// The publish's conflation key, checked against `conflate.max_key_bytes` first.
    key: Option<String>,
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
    /// The `history.rooms` and `presence.rooms` rules.
    policies: RoomPolicies,
    /// The `validation.rooms` rules: checked on every publish to a room before the broker.
    schemas: RoomSchemas,
    /// The backend's join and publish hooks (`[hooks]`).
    hooks: Arc<Hooks>,
    cursors: std::sync::Mutex<HashMap<Arc<str>, RoomCursor>>,
    accepting: AtomicBool,
    /// Cancelled with `stop_accepting`: what long-lived admin responses (the stats stream)
    /// wait on, so that they end and the admin server can stop.
    stopping: tokio_util::sync::CancellationToken,
    /// This node's users of `presence.rooms` rooms, written to the broker in batches.
    presence: LocalPresence,
    /// Connections open or mid-handshake, for `server.max_connections`.
    slots: AtomicU64,
    command_timeout: Duration,
    /// Milliseconds since the Unix epoch, for the node's stats.
    started_at: u64,
    /// The revocations in force, so a handshake checks them without a broker round trip.
    revocations: revocations::RevocationMirror,
    /// Checks `refresh` tokens (the listener checks the handshake's); `None` without auth.
    authenticator: Option<Arc<Authenticator>>,
}

impl Node {
    pub fn new(
        config: Arc<Config>,
        broker: Box<dyn Broker>,
        metrics: Arc<Metrics>,
        authenticator: Option<Arc<Authenticator>>,
        schemas: RoomSchemas,
        hooks: Arc<Hooks>,
    ) -> Arc<Node> {
        let instance = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let policies = RoomPolicies::new(&config);
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
            policies,
            schemas,
            hooks,
            cursors: std::sync::Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            stopping: tokio_util::sync::CancellationToken::new(),
            presence,
            slots: AtomicU64::new(0),
            started_at: now_ms(),
            revocations: revocations::RevocationMirror::default(),
            authenticator,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Unique per process: this node's id in the node registry.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The backend's hooks; the listener asks the connect hook.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
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
        self.stopping.cancel();
    }

    /// Resolves once the node has begun to shut down.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await
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
        identity: Option<Arc<Identity>>,
    ) -> Result<(Session, OutboxReceiver), BrokerError> {
        let user = identity.as_ref().map(|i| i.user.clone());
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbox, receiver) = outbox(conn, self.config.limits.outbox_messages);
        if let Some(user) = &user {
            let target = Target::User(user.clone());
            let _guard = self.interest_lock(&target).await;
            let issued_at = identity.as_ref().and_then(|i| i.issued_at);
            if self.hub.add_connection(&outbox, Some((user, issued_at)))
                && let Err(err) = self.subscribe(target).await
            {
                self.hub.remove_connection(conn, Some(user));
                return Err(err);
            }
        } else {
            self.hub.add_connection(&outbox, None);
        }
        if let Some(jti) = identity.as_ref().and_then(|i| i.jti.as_deref()) {
            self.hub.add_token(jti, &outbox);
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
            server_rooms: Vec::new(),
        };
        self.queue_server_rooms(&session).await;
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
        if let Some(jti) = session.identity.as_ref().and_then(|i| i.jti.as_deref()) {
            self.hub.remove_token(jti, session.conn);
        }
        self.metrics.connections_open.dec();
    }

    /// Publish a client's message to a room it has joined; returns the message id.
    pub async fn publish_from_client(
        &self,
        session: &Session,
        room: &RoomName,
        data: Box<RawValue>,
        echo: bool,
        key: Option<String>,
    ) -> Result<String, CommandError> {
        self.check_key(key.as_deref())?;
        let Some(room) = session.rooms.get(room.as_str()) else {
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
        let sender = Sender {
            asker: session.asker(),
            from: session.from(),
            conn: session.conn,
            echo,
            key,
        };
        self.publish_checked(sender, room, data).await
    }

    /// The rest of a client's publish once its right to publish to `room` is settled: the
    /// room's schema, the publish hook, then the broker. Shared by the WebSocket command and
    /// `POST /publish` ([`Node::publish_over_http`]).
    async fn publish_checked(
        &self,
        sender: Sender<'_>,
        room: &Arc<str>,
        data: Box<RawValue>,
    ) -> Result<String, CommandError> {
        // The client's data first: an invalid message costs no round trip to the backend.
        self.schemas.check(room, &data)?;
        let data = match self.hooks.publish(sender.asker, room, &data).await? {
            Some(replacement) => self.checked_replacement(room, replacement)?,
            None => data,
        };
        let envelope = Envelope {
            target: Target::Room(room.clone()),
            id: self.next_message_id(),
            data,
            from: sender.from,
            ts: now_ms(),
            origin: Some(Origin {
                node: self.instance.clone(),
                conn: sender.conn,
                echo: sender.echo,
            }),
            key: sender.key,
        };
        self.publish(envelope).await.map_err(|err| {
            CommandError::new(ErrorCode::Unavailable, format!("not published: {err}"))
        })
    }

    /// The publish hook's replacement data, held to the rules the client's data met: the
    /// message size limit and the room's schema.
    fn checked_replacement(
        &self,
        room: &str,
        data: Box<RawValue>,
    ) -> Result<Box<RawValue>, CommandError> {
        let max = self.config.limits.max_message_bytes;
        if data.get().len() > max {
            return Err(CommandError::new(
                ErrorCode::Unavailable,
                format!("publish hook: the backend's data is larger than {max} bytes"),
            ));
        }
        self.schemas.check(room, &data).map_err(|err| {
            CommandError::new(err.code, format!("the backend's data: {}", err.message))
        })?;
        Ok(data)
    }

    /// The `validation.rooms` check of a service's publish (admin API): rooms only, users'
    /// notifications and broadcasts carry no room.
    pub fn check_service_data(&self, target: &Target, data: &RawValue) -> Result<(), CommandError> {
        match target {
            Target::Room(room) => self.schemas.check(room, data),
            _ => Ok(()),
        }
    }

    /// A publish's conflation key, if any, is within `conflate.max_key_bytes` (in any room:
    /// a key is carried to members wherever it is given).
    pub fn check_key(&self, key: Option<&str>) -> Result<(), CommandError> {
        let max = self.config.conflate.max_key_bytes;
        match key {
            Some(key) if key.len() > max => Err(CommandError::bad_request(format!(
                "`key` must be at most {max} bytes (conflate.max_key_bytes)"
            ))),
            _ => Ok(()),
        }
    }

    /// Publish on behalf of a service (admin API); `from` is "server". The caller checks the
    /// data with [`Node::check_service_data`] and the key with [`Node::check_key`] first.
    pub async fn publish_from_service(
        &self,
        target: Target,
        data: Box<RawValue>,
        key: Option<String>,
    ) -> Result<String, BrokerError> {
        let envelope = Envelope {
            target,
            id: self.next_message_id(),
            data,
            from: "server".to_owned(),
            ts: now_ms(),
            origin: None,
            key,
        };
        self.publish(envelope).await
    }

    async fn publish(&self, envelope: Envelope) -> Result<String, BrokerError> {
        let id = envelope.id.clone();
        let retention = match &envelope.target {
            Target::Room(room) => self.policies.retention(room),
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

    /// Subscribe the channels every node always needs.
    pub async fn subscribe_broadcast(&self) -> Result<(), BrokerError> {
        self.subscribe(Target::Broadcast).await
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
