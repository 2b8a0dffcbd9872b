//! Every Prometheus metric of the node, registered in one place.
//!
//! Labels are closed enums (command kinds, error codes, close reasons), never room or user
//! names, so cardinality is bounded whatever clients send. Components update these; rendering
//! for `/metrics` is here too.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::auth::AuthFailure;
use crate::protocol::{CommandKind, Disconnect, ErrorCode};

/// A backend hook (`[hooks]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Join,
    Publish,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Connect, Hook::Join, Hook::Publish];

    pub fn label(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Join => "join",
            Hook::Publish => "publish",
        }
    }
}

/// How a hook call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// The backend allowed (connect: named a user).
    Allowed,
    /// The backend refused (`allow: false`; connect: 401/403).
    Refused,
    /// No answer within `hooks.timeout_ms`.
    Timeout,
    /// Unreachable, a status other than 2xx/401/403, or an answer that is not the contract's.
    Failed,
    /// `hooks.max_in_flight` requests were already waiting: not sent.
    Overloaded,
}

impl HookOutcome {
    pub const ALL: [HookOutcome; 5] = [
        HookOutcome::Allowed,
        HookOutcome::Refused,
        HookOutcome::Timeout,
        HookOutcome::Failed,
        HookOutcome::Overloaded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HookOutcome::Allowed => "allowed",
            HookOutcome::Refused => "refused",
            HookOutcome::Timeout => "timeout",
            HookOutcome::Failed => "failed",
            HookOutcome::Overloaded => "overloaded",
        }
    }
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Capacity,
    RateLimited,
    Origin,
    Unauthorized,
    NotFound,
    HandshakeFailed,
    HandshakeTimeout,
    ShuttingDown,
    /// The connect hook gave no answer (503).
    BackendUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Capacity,
        Refusal::RateLimited,
        Refusal::Origin,
        Refusal::Unauthorized,
        Refusal::NotFound,
        Refusal::HandshakeFailed,
        Refusal::HandshakeTimeout,
        Refusal::ShuttingDown,
        Refusal::BackendUnavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::RateLimited => "rate_limited",
            Refusal::Origin => "origin",
            Refusal::Unauthorized => "unauthorized",
            Refusal::NotFound => "not_found",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::BackendUnavailable => "backend_unavailable",
        }
    }
}

/// Why a message was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    RateLimited,
    Invalid,
    SlowConsumer,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::RateLimited,
        DropReason::Invalid,
        DropReason::SlowConsumer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::Invalid => "invalid",
            DropReason::SlowConsumer => "slow_consumer",
        }
    }
}

/// Why the cluster broker subscribed a channel again (`redis.cluster`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resubscribe {
    /// A shard answered `MOVED`: the slot has another owner now.
    Moved,
    /// A shard dropped the subscription itself (`SUNSUBSCRIBE`: slot migrated, shard demoted).
    Sunsubscribe,
    /// The links were rebuilt after a connection to a shard was lost (failover, restart).
    Reconnect,
}

impl Resubscribe {
    pub const ALL: [Resubscribe; 3] = [
        Resubscribe::Moved,
        Resubscribe::Sunsubscribe,
        Resubscribe::Reconnect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Resubscribe::Moved => "moved",
            Resubscribe::Sunsubscribe => "sunsubscribe",
            Resubscribe::Reconnect => "reconnect",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections_open: IntGauge,
    pub connections_accepted: IntCounter,
    connections_refused: IntCounterVec,
    auth_failures: IntCounterVec,
    pub rooms: IntGauge,
    messages_received: IntCounterVec,
    pub messages_delivered: IntCounter,
    messages_dropped: IntCounterVec,
    pub rate_limited: IntCounter,
    invalid: IntCounterVec,
    disconnects: IntCounterVec,
    pub slow_consumer_closes: IntCounter,
    pub delivery_latency: Histogram,
    pub broker_publish_latency: Histogram,
    pub broker_up: IntGauge,
    pub broker_publish_errors: IntCounter,
    pub broker_reconnects: IntCounter,
    pub broker_subscriptions: IntGauge,
    pub broker_roundtrip: Histogram,
    broker_resubscribes: IntCounterVec,
    pub pubsub_lag: Histogram,
    pub history_unkept: IntCounter,
    pub messages_conflated: IntCounter,
    pub frames_compressed: IntCounter,
    pub compressed_deliveries: IntCounter,
    pub conflation_keys_too_long: IntCounter,
    pub history_caught_up: IntCounter,
    pub presence_writes: IntCounter,
    pub presence_room_writes: IntCounter,
    hook_latency: HistogramVec,
    hook_calls: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register a component's own metrics (they render with the others).
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            // Every label value exists from the start, so dashboards and tests see zeros.
            for v in values {
                c.with_label_values(&[*v]);
            }
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            h
        };
        let labels = |it: &mut dyn Iterator<Item = &'static str>| it.collect::<Vec<_>>();

        Metrics {
            connections_open: gauge(
                "roomcast_connections_open",
                "WebSocket connections open now",
            ),
            connections_accepted: counter(
                "roomcast_connections_accepted_total",
                "WebSocket handshakes accepted",
            ),
            connections_refused: counter_vec(
                "roomcast_connections_refused_total",
                "Connections refused before or at the handshake, by reason",
                "reason",
                &labels(&mut Refusal::ALL.iter().map(|r| r.label())),
            ),
            auth_failures: counter_vec(
                "roomcast_auth_failures_total",
                "Handshakes refused with 401, by what was wrong with the token",
                "reason",
                &labels(&mut AuthFailure::ALL.iter().map(|f| f.label())),
            ),
            rooms: gauge(
                "roomcast_rooms",
                "Rooms with at least one member on this node",
            ),
            messages_received: counter_vec(
                "roomcast_messages_received_total",
                "Client frames received, by command type",
                "command",
                &labels(&mut CommandKind::ALL.iter().map(|k| k.as_str())),
            ),
            messages_delivered: counter(
                "roomcast_messages_delivered_total",
                "Frames queued for local recipients (one per recipient)",
            ),
            messages_dropped: counter_vec(
                "roomcast_messages_dropped_total",
                "Messages not delivered, by reason",
                "reason",
                &labels(&mut DropReason::ALL.iter().map(|d| d.label())),
            ),
            rate_limited: counter(
                "roomcast_rate_limited_total",
                "Client messages refused by the per-connection rate limit",
            ),
            invalid: counter_vec(
                "roomcast_invalid_messages_total",
                "Client commands answered with an error, by error code",
                "code",
                &labels(&mut ErrorCode::ALL.iter().map(|c| c.as_str())),
            ),
            disconnects: counter_vec(
                "roomcast_disconnects_total",
                "Connections ended, by reason",
                "reason",
                &labels(&mut Disconnect::ALL.iter().map(|d| d.label())),
            ),
            slow_consumer_closes: counter(
                "roomcast_slow_consumer_closes_total",
                "Connections closed with 1013 because their outbox filled",
            ),
            delivery_latency: histogram(
                "roomcast_delivery_latency_seconds",
                "From a message's ts to its fan-out on this node",
            ),
            broker_publish_latency: histogram(
                "roomcast_broker_publish_seconds",
                "Time for the broker to accept a publish",
            ),
            broker_up: gauge("roomcast_broker_up", "1 while the broker is reachable"),
            broker_publish_errors: counter(
                "roomcast_broker_publish_errors_total",
                "Publishes that failed with unavailable",
            ),
            broker_reconnects: counter(
                "roomcast_broker_reconnects_total",
                "Times the broker's subscription link was re-established",
            ),
            broker_subscriptions: gauge(
                "roomcast_broker_subscriptions",
                "Broker channels this node is subscribed to",
            ),
            broker_roundtrip: histogram(
                "roomcast_broker_roundtrip_seconds",
                "Round-trip time of broker commands (PING, SUBSCRIBE)",
            ),
            broker_resubscribes: counter_vec(
                "roomcast_broker_resubscribes_total",
                "Channels subscribed again on a Redis Cluster shard, by why (redis.cluster)",
                "reason",
                &labels(&mut Resubscribe::ALL.iter().map(|r| r.label())),
            ),
            pubsub_lag: histogram(
                "roomcast_pubsub_lag_seconds",
                "From a publication's ts to its arrival from the broker",
            ),
            history_unkept: counter(
                "roomcast_history_unkept_total",
                "Messages delivered in a history room without being kept (a plain PUBLISH)",
            ),
            messages_conflated: counter(
                "roomcast_messages_conflated_total",
                "Queued frames replaced by a newer message with the same key in a conflated room \
                 (the older one is never sent)",
            ),
            frames_compressed: counter(
                "roomcast_frames_compressed_total",
                "Frames compressed for permessage-deflate: once per message for all the members \
                 that negotiated it, once per frame for a connection's own replies",
            ),
            compressed_deliveries: counter(
                "roomcast_compressed_deliveries_total",
                "Frames written compressed (permessage-deflate) to a connection",
            ),
            conflation_keys_too_long: counter(
                "roomcast_conflation_keys_too_long_total",
                "Broker messages whose key is longer than conflate.max_key_bytes, delivered \
                 without conflation",
            ),
            history_caught_up: counter(
                "roomcast_history_caught_up_total",
                "Kept messages delivered from history after a broker outage",
            ),
            presence_writes: counter(
                "roomcast_presence_writes_total",
                "Batches of presence changes and refreshes written to the broker",
            ),
            presence_room_writes: counter(
                "roomcast_presence_room_writes_total",
                "Rooms carried by those batches (one per room per batch)",
            ),
            hook_latency: hook_latency(&registry),
            hook_calls: hook_calls(&registry),
            registry,
        }
    }

    /// A hook call ended with `outcome` after `seconds` (an overloaded one was never sent and
    /// is not timed).
    pub fn hook_called(&self, hook: Hook, outcome: HookOutcome, seconds: Option<f64>) {
        self.hook_calls
            .with_label_values(&[hook.label(), outcome.label()])
            .inc();
        if let Some(seconds) = seconds {
            self.hook_latency
                .with_label_values(&[hook.label()])
                .observe(seconds);
        }
    }

    pub fn refused(&self, reason: Refusal) {
        self.connections_refused
            .with_label_values(&[reason.label()])
            .inc();
    }

    pub fn auth_failed(&self, failure: AuthFailure) {
        self.auth_failures
            .with_label_values(&[failure.label()])
            .inc();
    }

    pub fn received(&self, kind: CommandKind) {
        self.messages_received
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    pub fn invalid(&self, code: ErrorCode) {
        self.invalid.with_label_values(&[code.as_str()]).inc();
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.messages_dropped
                .with_label_values(&[reason.label()])
                .inc_by(n);
        }
    }

    pub fn disconnected(&self, reason: Disconnect) {
        self.disconnects.with_label_values(&[reason.label()]).inc();
        if reason == Disconnect::SlowConsumer {
            self.slow_consumer_closes.inc();
        }
    }

    pub fn resubscribed(&self, reason: Resubscribe, channels: u64) {
        if channels > 0 {
            self.broker_resubscribes
                .with_label_values(&[reason.label()])
                .inc_by(channels);
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn hook_latency(registry: &Registry) -> HistogramVec {
    let name = "roomcast_hook_seconds";
    let opts = HistogramOpts::new(name, "Time from a hook request to its answer, by hook")
        .buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, &["hook"]).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    for hook in Hook::ALL {
        h.with_label_values(&[hook.label()]);
    }
    h
}

fn hook_calls(registry: &Registry) -> IntCounterVec {
    let name = "roomcast_hook_calls_total";
    let opts = Opts::new(name, "Hook calls, by hook and outcome");
    let c = IntCounterVec::new(opts, &["hook", "outcome"])
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    for hook in Hook::ALL {
        for outcome in HookOutcome::ALL {
            c.with_label_values(&[hook.label(), outcome.label()]);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_zeros() {
        let m = Metrics::new();
        m.received(CommandKind::Join);
        let text = m.render();
        assert!(text.contains(r#"roomcast_messages_received_total{command="join"} 1"#));
        assert!(text.contains(r#"roomcast_connections_refused_total{reason="capacity"} 0"#));
    }
}
