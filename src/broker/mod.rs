//! The broker boundary: how a node publishes and how publications come back to it.
//!
//! A broker never sees the hub. It is handed a channel of [`BrokerEvent`]s by the node and sends
//! every publication it receives for this node's interest into it, its own publishes included,
//! so that every node delivers in the order the broker delivered. Which channels the node needs
//! is the node's business; the broker keeps them subscribed (across reconnects, for Redis).

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

pub use crate::protocol::{Envelope, Origin, Target};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The broker cannot be reached; nothing was published.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not answer within `redis.command_timeout_ms`.
    #[error("broker timed out")]
    Timeout,
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
}

pub trait Broker: Send + Sync + 'static {
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
