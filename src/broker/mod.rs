//! The broker boundary: how a node publishes and how publications come back to it.
//!
//! A broker never sees the hub. It is handed a channel of [`BrokerEvent`]s by the node and sends
//! every publication it receives for this node's interest into it, its own publishes included,
//! so that every node delivers in the order the broker delivered. Which channels the node needs
//! is the node's business; the broker keeps them subscribed (across reconnects, for Redis).

mod control_table;
pub mod memory;
pub mod redis;
mod webhooks;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use crate::protocol::{Control, Envelope, Origin, Position, Revocation, Target};

pub use webhooks::{
    EVENT_TYPES, ParkedEvent, QueuedEvent, WebhookEvent, WebhookSettings, WebhookStore,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a broker call failed. The node matches on the variant; the cause is kept for logs.
#[derive(Debug, thiserror::Error, Clone)]
pub enum BrokerError {
    /// The broker cannot be reached; nothing was published.
    #[error("broker unavailable")]
    Unavailable(#[source] Unavailable),
    /// The broker did not answer within `redis.command_timeout_ms`.
    #[error("broker timed out")]
    Timeout,
}

/// What made the broker unavailable.
#[derive(Debug, thiserror::Error, Clone)]
pub enum Unavailable {
    #[error("the node is shutting down")]
    NodeStopping,
    #[error("the broker has stopped")]
    BrokerStopped,
    #[error("redis is not reachable")]
    NotConnected,
    #[error("only rooms keep history")]
    NotARoom,
    /// The backend's own failure (the Redis broker's `RedisFailure`), its cause kept.
    #[error("broker backend")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl From<Unavailable> for BrokerError {
    fn from(cause: Unavailable) -> Self {
        BrokerError::Unavailable(cause)
    }
}

/// What a broker hands back to its node.
#[derive(Debug)]
pub enum BrokerEvent {
    /// A publication on a channel this node is interested in.
    Publication(Envelope),
    /// The broker's link came up (or back); `resumed` is true after an outage.
    Up { resumed: bool },
    /// The broker's link went down; publishes fail with `unavailable` until `Up`.
    Down,
    /// A user's first connection joined a room on some node, or its last one left
    /// (`presence.rooms` with `events = true`).
    Presence(PresenceEvent),
    /// A control envelope (docs/protocol.md "Control envelopes") on a user channel or the
    /// broadcast channel: acted on by the node, never delivered as a message.
    Control { target: Target, control: Control },
}

/// `member_joined` / `member_left` as the broker hands it to every node with members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceEvent {
    pub room: Arc<str>,
    pub user: String,
    pub joined: bool,
    /// Milliseconds since the Unix epoch, set by the broker.
    pub ts: u64,
    /// The joining user's `info` (JSON text) when the backend gave one.
    pub info: Option<Arc<str>>,
}

/// A node's batch of presence changes for one room: each user's number of connections in
/// the room on this node now (0: gone). Absolute, so a batch can be resent after a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceUpdate {
    pub room: Arc<str>,
    /// Publish `member_joined` / `member_left` for users that appear or vanish cluster-wide.
    pub events: bool,
    /// `users` is everything this node has in the room: replace what the broker holds for
    /// this node (the first write of a room by this process, or a resync).
    pub full: bool,
    pub users: Vec<(Arc<str>, u64)>,
    /// The `info` (JSON text) of users in `users` that have one: the latest given on this node.
    pub info: Vec<(Arc<str>, Arc<str>)>,
}

/// How long a node's presence counts after its last write: two of its refreshes (every quarter
/// of `presence.ttl_s`). A node silent for longer is dropped by the next write of any other
/// node in the room, whose users it then announces as `member_left`, all within the ttl.
pub fn presence_live_for(ttl: Duration) -> Duration {
    ttl / 2
}

pub use crate::protocol::PresenceList;

/// How much of a room's traffic is kept (`history.rooms` of the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The last `size` messages are kept ...
    pub size: usize,
    /// ... until the room has been quiet this long.
    pub ttl: Duration,
}

/// What a room's history holds now.
#[derive(Clone, Debug, Default)]
pub struct HistoryPage {
    /// The history's current epoch; empty when nothing is kept.
    pub epoch: String,
    /// Offset of the newest kept message (0 when none).
    pub top: u64,
    /// Kept messages, oldest first, offsets consecutive up to `top`.
    pub entries: Vec<Envelope>,
}

/// Publish/subscribe: how publications travel between nodes.
pub trait PubSub: Send + Sync + 'static {
    /// Publish an envelope to its target's channel.
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Start receiving a channel. Returns once the subscription is live.
    fn subscribe(&self, target: Target) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Stop receiving a channel.
    fn unsubscribe(&self, target: Target) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Whether the broker is reachable now (for `/readyz`).
    fn is_up(&self) -> bool;
    /// Metric label.
    fn kind(&self) -> &'static str;
}

/// Room history (`history.rooms`).
pub trait HistoryStore: Send + Sync + 'static {
    /// Keep `envelope` in its room's history and publish it, atomically: its id becomes its
    /// position (`h<epoch>-<offset>`), returned, so id order and delivery order agree.
    fn publish_retained(
        &self,
        envelope: Envelope,
        retention: Retention,
    ) -> BoxFuture<'_, Result<String, BrokerError>>;
    /// The kept messages of `room`.
    fn history(&self, room: Arc<str>) -> BoxFuture<'_, Result<HistoryPage, BrokerError>>;
}

/// Presence (`presence.rooms`): who is in a room across nodes, and its events.
pub trait PresenceStore: Send + Sync + 'static {
    /// Write a node's presence changes (and refresh every room listed, an empty `users`
    /// included) so that they stay live for `ttl`; nodes silent for longer drop out. Returns
    /// the rooms whose state for this node the broker had lost: send them again, `full`.
    fn presence_update(
        &self,
        node: &str,
        ttl: Duration,
        updates: Vec<PresenceUpdate>,
    ) -> BoxFuture<'_, Result<Vec<Arc<str>>, BrokerError>>;
    /// Who is in `room` on every live node: the exact count, and the first `max` users in
    /// name order with their connections summed over nodes. Drops nodes whose time is up
    /// first (announcing their users when `events`).
    fn presence(
        &self,
        room: Arc<str>,
        events: bool,
        max: usize,
    ) -> BoxFuture<'_, Result<PresenceList, BrokerError>>;
    /// Start receiving `room`'s `member_joined` / `member_left`. Returns once live.
    fn subscribe_presence(&self, room: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Stop receiving `room`'s presence events.
    fn unsubscribe_presence(&self, room: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>>;
}

pub use crate::protocol::{NodeRooms, NodeStats};

/// The node registry: every node announces its stats and rooms here, so that any node can
/// answer for the whole cluster (`GET /api/nodes`, `/api/rooms`, the console). An
/// announcement counts until `last_seen + live_ms`; one older than that is not listed.
pub trait NodeRegistry: Send + Sync + 'static {
    /// Replace what the registry holds for `stats.id`.
    fn announce(
        &self,
        stats: NodeStats,
        rooms: NodeRooms,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Forget a node at once (a node that stops cleanly).
    fn withdraw(&self, id: String) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Every live node, in `id` order; entries found expired are forgotten on the way.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeStats>, BrokerError>>;
    /// The announced rooms of every live node.
    fn node_rooms(&self) -> BoxFuture<'_, Result<Vec<NodeRooms>, BrokerError>>;
}

/// The backend's control plane: control envelopes and the revocations every node mirrors.
pub trait ControlStore: Send + Sync + 'static {
    /// Publish a control envelope on `target`'s channel (a user, or the broadcast).
    fn publish_control(
        &self,
        target: Target,
        control: Control,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Keep revocations until their `until` (storing one again is harmless).
    fn store_revocations(
        &self,
        revocations: Vec<Revocation>,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Every revocation still in force.
    fn revocations(&self) -> BoxFuture<'_, Result<Vec<Revocation>, BrokerError>>;
    /// Add `room` to `user`'s server subscriptions for `ttl` (restarting the user's ttl), or
    /// remove it (`None`).
    fn set_server_sub(
        &self,
        user: Arc<str>,
        room: Arc<str>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// `user`'s server subscriptions, for a connection that opens.
    fn server_subs(&self, user: Arc<str>) -> BoxFuture<'_, Result<Vec<String>, BrokerError>>;
}

/// Everything a node needs from its broker.
pub trait Broker:
    PubSub + HistoryStore + PresenceStore + NodeRegistry + ControlStore + WebhookStore
{
}

impl<T: PubSub + HistoryStore + PresenceStore + NodeRegistry + ControlStore + WebhookStore> Broker
    for T
{
}
