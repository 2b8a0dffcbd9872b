//! The broker side of webhooks (`[webhooks]`): the events, and the durable queue they wait in
//! until a node delivers them.
//!
//! A broker with webhooks records `room_occupied`, `room_vacated`, `member_joined` and
//! `member_left` in the same atomic step that decides presence (the Redis function
//! `roomcast_presence`, or the memory broker's table), holding a departure back for
//! `leave_delay_ms` so that a rejoin cancels it. Each recorded event waits in a queue (a Redis
//! stream read through a consumer group, or an in-process queue) until a node takes it,
//! POSTs it and acknowledges it; events a node took and left untouched for `claim_idle` are
//! taken over by the next node that asks. Events that failed too often are parked, listed and
//! replayed on request.
//!
//! Leaves to others: the HTTP request, signature, retries and when to park (`webhooks`), the
//! admin routes (`admin`).

use std::time::Duration;

use serde::Serialize;

use super::{BoxFuture, BrokerError};

/// What happened, as the `type` of an event.
pub const EVENT_TYPES: [&str; 4] = [
    "room_occupied",
    "room_vacated",
    "member_joined",
    "member_left",
];

/// One event as the backend receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookEvent {
    /// Unique and kept across retries, takeovers and replays: the backend drops duplicates by it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub room: String,
    /// `null` for `room_occupied` / `room_vacated`.
    pub user: Option<String>,
    /// Milliseconds since the Unix epoch, when the broker decided it.
    pub ts: u64,
}

/// An event taken from the queue: `entry` names it there (to acknowledge or park it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEvent {
    pub entry: String,
    pub event: WebhookEvent,
}

/// An event that failed `webhooks.max_attempts` times and waits for an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParkedEvent {
    #[serde(flatten)]
    pub event: WebhookEvent,
    /// The last failure, e.g. `HTTP 503` or `timed out`.
    pub error: String,
    pub attempts: u32,
    /// Milliseconds since the Unix epoch.
    pub parked_at: u64,
}

/// How a broker records webhook events (`[webhooks]` with a url).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookSettings {
    pub leave_delay: Duration,
}

/// The queue of webhook events. A broker without webhooks has an empty one.
pub trait WebhookStore: Send + Sync + 'static {
    /// Record `member_left` (and `room_vacated`) for departures whose delay is over, at most
    /// `max` of them. Returns how many were recorded.
    fn webhook_due(&self, max: usize) -> BoxFuture<'_, Result<u64, BrokerError>>;
    /// Take at most `max` events for `consumer`: first those another consumer took and left
    /// untouched for `claim_idle`, then new ones. Oldest first.
    fn webhook_take(
        &self,
        consumer: &str,
        max: usize,
        claim_idle: Duration,
    ) -> BoxFuture<'_, Result<Vec<QueuedEvent>, BrokerError>>;
    /// Still working on these (a retry): restart their idle time so no one takes them over.
    fn webhook_hold(
        &self,
        consumer: &str,
        entries: Vec<String>,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Delivered: forget them.
    fn webhook_ack(&self, entries: Vec<String>) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Failed too often: move them to the parked events, with the last error.
    fn webhook_park(
        &self,
        events: Vec<QueuedEvent>,
        error: String,
        attempts: u32,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// The oldest `max` parked events.
    fn webhook_parked(&self, max: usize) -> BoxFuture<'_, Result<Vec<ParkedEvent>, BrokerError>>;
    /// Queue parked events again, with their ids: those whose id is in `ids`, or the oldest
    /// `max` when `ids` is empty. Returns how many.
    fn webhook_replay(
        &self,
        ids: Vec<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<u64, BrokerError>>;
    /// Events recorded and not yet acknowledged nor parked.
    fn webhook_pending(&self) -> BoxFuture<'_, Result<u64, BrokerError>>;
}
