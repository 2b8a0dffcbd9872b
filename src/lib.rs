//! roomcast: a WebSocket broadcast gateway.
//!
//! # Layout
//!
//! Leaves first; imports flow one way:
//!
//! - `clock`: wall-clock milliseconds and time-bounded calls.
//! - `deflate`: permessage-deflate (RFC 7692): the offer's answer, a message compressed once,
//!   client messages inflated under the socket, bounded.
//! - `protocol`: wire types, decoding and validation, frames encoded once, error and close codes.
//! - `config`: the keys of docs/protocol.md "Running a node", loading and validation.
//! - `metrics`: every Prometheus metric.
//! - `outbox`: the bounded per-connection queue and its close signal.
//! - `limits`: per-connection rate decisions.
//! - `auth`: token verification and room permission patterns.
//! - `hooks`: the backend's connect, join and publish hooks (HTTP), bounded and timed.
//! - `hub`: local rooms and users → outboxes; synchronous.
//! - `broker`: the broker trait, the in-process broker and the Redis broker.
//! - `presence`: this node's users of `presence.rooms` rooms, written to the broker in batches.
//! - `webhooks`: delivery of the brokers' webhook events to the backend (signed, retried).
//! - `node`: hub + broker; interest, ids, publishing, dispatching broker events.
//! - `connection`, `sse`, `listener`, `admin`: the sockets (`sse`: the event-stream writer of
//!   `GET /sse` clients, the same sessions as `connection`'s).
//!
//! [`run`] takes bound listeners and a shutdown future, so tests bind `127.0.0.1:0` and run
//! the real server.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend_http;
pub mod broker;
pub mod clock;
pub mod config;
pub mod connection;
pub mod deflate;
pub mod hooks;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod sse;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::memory::MemoryBroker;
use crate::broker::{Broker, BrokerError, BrokerEvent};
use crate::config::{BrokerKind, Config};
use crate::metrics::Metrics;
use crate::node::{BROKER_EVENT_QUEUE, Node};

/// The two sockets a node serves, bound by the caller.
pub struct Listeners {
    pub ws: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Bind the addresses of `config`; the WebSocket one with `server.listen_backlog`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            ws: bind_with_backlog(config.listen_addr(), config.server.listen_backlog)?,
            admin: TcpListener::bind(config.admin_addr()).await?,
        })
    }
}

/// A listening socket with an explicit backlog: `TcpListener::bind` uses 128 here, which a
/// few hundred clients connecting at once overflow (measured: `BENCHMARKS.md` §9).
fn bind_with_backlog(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted node can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("admin server failed")]
    Admin(#[source] std::io::Error),
    #[error("cannot start the broker")]
    Broker(#[source] BrokerError),
    #[error("cannot set up authentication")]
    Auth(#[source] auth::AuthConfigError),
    #[error("cannot compile the validation schemas")]
    Validation(#[source] config::ConfigError),
    #[error("cannot set up the backend hooks")]
    Hooks(#[source] hooks::HooksError),
}

fn start_broker(
    config: &Config,
    events: mpsc::Sender<BrokerEvent>,
    metrics: Arc<Metrics>,
) -> Result<Box<dyn Broker>, RunError> {
    match config.broker.kind {
        BrokerKind::Memory => {
            metrics.broker_up.set(1);
            let broker = MemoryBroker::new(
                events,
                Duration::from_millis(config.redis.command_timeout_ms),
            );
            Ok(match webhooks::settings(&config.webhooks) {
                Some(settings) => Box::new(broker.with_webhook_events(settings)),
                None => Box::new(broker),
            })
        }
        BrokerKind::Redis => broker::redis::RedisBroker::start(&config.redis, events, metrics)
            .map(|b| match webhooks::settings(&config.webhooks) {
                Some(settings) => Box::new(b.with_webhook_events(settings)) as Box<dyn Broker>,
                None => Box::new(b),
            })
            .map_err(RunError::Broker),
    }
}

/// Subscribe the broadcast channel: without it no broadcast arrives. Keeps trying while the
/// broker is down, until it succeeds or `stop` fires.
async fn keep_broadcast_interest(node: Arc<Node>, stop: CancellationToken) {
    loop {
        match node.subscribe_broadcast().await {
            Ok(()) => break,
            Err(err) => warn!(%err, "cannot subscribe to broadcasts yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The admin API until `stop` fires.
async fn serve_admin(
    node: Arc<Node>,
    listener: TcpListener,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, admin::router(node))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// Close every client with 1001 and give the connections `server.shutdown_grace_ms` to end.
async fn close_clients(node: &Node, tracker: &TaskTracker, config: &Config) {
    node.close_all_clients();
    tracker.close();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            remaining = tracker.len(),
            "shutdown grace elapsed with connections still open"
        );
    }
}

/// Serve until `shutdown` resolves, then drain: `/readyz` turns 503, accepting stops, every
/// client is closed with 1001, and connections get `server.shutdown_grace_ms` to finish.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let authenticator = auth::Authenticator::from_config(&config.auth)
        .map_err(RunError::Auth)?
        .map(Arc::new);
    let schemas = node::RoomSchemas::new(&config.validation).map_err(RunError::Validation)?;
    let metrics = Arc::new(Metrics::new());
    let hooks = Arc::new(hooks::Hooks::new(&config, metrics.clone()).map_err(RunError::Hooks)?);
    let (events_tx, events_rx) = mpsc::channel(BROKER_EVENT_QUEUE);
    let broker = start_broker(&config, events_tx, metrics.clone())?;
    let node = Node::new(
        config.clone(),
        broker,
        metrics,
        authenticator.clone(),
        schemas,
        hooks,
    );
    let dispatcher = tokio::spawn(node.clone().dispatch(events_rx));
    let stop_presence = CancellationToken::new();
    let presence = tokio::spawn(node.clone().run_presence(stop_presence.clone()));
    let stop_stats = CancellationToken::new();
    let stats = tokio::spawn(node.clone().run_stats(stop_stats.clone()));
    let stop_webhooks = CancellationToken::new();
    let webhooks = tokio::spawn(node.clone().run_webhooks(stop_webhooks.clone()));

    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let tracker = TaskTracker::new();

    let broadcast_interest = tokio::spawn(keep_broadcast_interest(
        node.clone(),
        stop_accepting.clone(),
    ));
    let admin = tokio::spawn(serve_admin(
        node.clone(),
        listeners.admin,
        stop_admin.clone(),
    ));

    // Before the first handshake, when the broker answers in time; otherwise its first `Up`.
    node.reload_revocations().await;
    if let Ok(addr) = listeners.ws.local_addr() {
        info!(%addr, path = %config.server.path, node = node.node_id(), "websocket listening");
    }
    let accept = tokio::spawn(listener::Listener::new(node.clone(), authenticator).run(
        listeners.ws,
        stop_accepting.clone(),
        tracker.clone(),
    ));

    shutdown.await;
    info!("shutting down: refusing new clients, closing open ones with 1001");
    node.stop_accepting();
    stop_accepting.cancel();
    let _ = accept.await;
    broadcast_interest.abort();
    close_clients(&node, &tracker, &config).await;
    // The clients are gone: write their departure now rather than let the others wait for
    // this node's presence to time out.
    stop_presence.cancel();
    let _ = presence.await;
    node.flush_presence().await;
    // A batch under way finishes (or, failing, is left pending for another node).
    stop_webhooks.cancel();
    let _ = webhooks.await;
    // Out of the cluster's node list at once, rather than after three silent intervals.
    stop_stats.cancel();
    let _ = stats.await;
    stop_admin.cancel();
    let admin_result = admin.await;
    dispatcher.abort();
    match admin_result {
        Ok(Err(err)) => Err(RunError::Admin(err)),
        _ => Ok(()),
    }
}
