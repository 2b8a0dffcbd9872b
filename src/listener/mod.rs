//! The public WebSocket listener: the accept loop and every check made at the handshake (path,
//! `Origin`, per-address handshake rate and concurrent connections, the token, the node's
//! connection cap, shutdown), each answered with the HTTP status docs/protocol.md names.
//!
//! The client address is the TCP peer, or, when the peer is a configured trusted proxy, the
//! rightmost untrusted address of `server.client_ip_header`: never a header any client can set.
//!
//! Once a handshake succeeds the socket is handed to `connection::open` (still in the
//! handshake's boxed future), then served by `connection::run`; this module never sees a
//! frame. A connection whose request line is `GET /sse`, `POST /publish` (or its CORS
//! preflight) is plain HTTP: `http` makes the same checks and answers it in a task of its own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use tracing::{Instrument, debug, debug_span, warn};

use crate::auth::{AuthFailure, Authenticator, Identity, token_from_cookies, token_from_request};
use crate::config::trusted_proxy_addrs;
use crate::connection;
use crate::deflate::{self, ClientSocket};
use crate::metrics::Refusal;
use crate::node::{Node, SlotGuard};

mod hooked;
mod http;

pub use http::{PUBLISH_PATH, SSE_PATH};

/// How often forgotten per-address limiter entries are purged.
const ADDRESS_LIMITER_SWEEP: Duration = Duration::from_secs(30);

pub struct Listener {
    node: Arc<Node>,
    authenticator: Option<Arc<Authenticator>>,
    per_address: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// `POST /publish` per user (per address without a token), at `limits.rate_per_sec`.
    publish_rate: Arc<DefaultKeyedRateLimiter<String>>,
    open_per_address: Arc<AddressSlots>,
    trusted_proxies: Vec<IpAddr>,
    ws_config: WebSocketConfig,
    handshake_timeout: Duration,
    /// Where `run` spawns connections: plain HTTP requests get a task of their own.
    tracker: TaskTracker,
}

impl Listener {
    pub fn new(node: Arc<Node>, authenticator: Option<Arc<Authenticator>>) -> Self {
        let config = node.config();
        let rate = NonZeroU32::new(config.server.connect_rate_per_ip).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        let max = config.limits.max_message_bytes;
        // Per-socket buffers are small by default, because idle connections dominate memory
        // at scale: client frames are small commands, and a larger one grows the buffer for as
        // long as it needs.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.server.read_buffer_bytes)
            // tungstenite writes only its close frames and pong replies; the connection
            // writes data frames itself (connection/wire.rs), with the same threshold.
            .write_buffer_size(config.server.write_buffer_bytes)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        Listener {
            handshake_timeout: Duration::from_millis(config.server.handshake_timeout_ms),
            per_address: Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
            publish_rate: Arc::new(RateLimiter::keyed(
                Quota::per_second(
                    NonZeroU32::new(config.limits.rate_per_sec).unwrap_or(NonZeroU32::MIN),
                )
                .allow_burst(NonZeroU32::new(config.limits.rate_burst).unwrap_or(NonZeroU32::MIN)),
            )),
            ws_config,
            open_per_address: Arc::new(AddressSlots {
                max: config.server.max_connections_per_ip,
                open: Mutex::new(HashMap::new()),
            }),
            trusted_proxies: trusted_proxy_addrs(&config.server),
            tracker: TaskTracker::new(),
            node,
            authenticator,
        }
    }

    /// Accept until `stop` fires. Connection tasks are spawned on `tracker`; the node closes
    /// them at shutdown.
    pub async fn run(
        mut self,
        listener: TcpListener,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) {
        self.tracker = tracker.clone();
        let this = Arc::new(self);
        let sweeper = {
            let limiter = this.per_address.clone();
            let publish_rate = this.publish_rate.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(ADDRESS_LIMITER_SWEEP);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {
                            limiter.retain_recent();
                            limiter.shrink_to_fit();
                            publish_rate.retain_recent();
                            publish_rate.shrink_to_fit();
                        }
                    }
                }
            })
        };
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    // Every log line of the connection names it; `connection::open` fills in
                    // the ids once the node has registered it. At debug level: an enabled span
                    // costs every connection ~0.6 KB for its life in the subscriber's tables
                    // (BENCHMARKS.md, idle memory), about a fifth of all it holds
                    // (`RUST_LOG=info,roomcast::listener=debug` turns it on).
                    let span = debug_span!("conn", %peer, conn = Empty, user = Empty);
                    tracker.spawn(this.clone().handle(tcp, peer).instrument(span));
                }
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        sweeper.abort();
    }

    /// One accepted TCP connection, in two phases: the handshake up to the welcome, boxed, then
    /// the connection loop. The task holds the boxed handshake only until it is done, and then
    /// nothing but the loop's own state (`connection::run`): none of the handshake's locals
    /// (the request, the admission checks, the socket before it was wrapped) stays reserved
    /// for the connection's life, as it would in one future spanning both.
    fn handle(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static {
        Box::pin(self.accept(tcp, peer))
            .then(|opened| OptionFuture::from(opened.map(connection::run)))
            .map(drop)
    }

    /// Route, check and upgrade one TCP connection, and open it with the node: what
    /// `connection::run` serves, or `None` when it was refused, answered as plain HTTP (in a
    /// task of its own), or is already over.
    async fn accept(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<connection::Opened<Option<Admission>>> {
        prepare_socket(&tcp, self.node.config().server.tcp_nodelay);
        let route = tokio::time::timeout(self.handshake_timeout, http::route(&tcp)).await;
        match route {
            Ok(http::Route::WebSocket) => {}
            Ok(route) => {
                // A task of its own, so that an open event stream holds its own state only,
                // not this future's (sized by the WebSocket's); same span, same tracker.
                let this = self.clone();
                let serve = async move { this.serve_http(tcp, peer, route).await };
                self.tracker
                    .spawn(serve.instrument(tracing::Span::current()));
                return None;
            }
            Err(_) => {
                self.node.metrics().refused(Refusal::HandshakeTimeout);
                return None;
            }
        }
        let node = &self.node;
        let mut admitted: Option<Admission> = None;
        let mut refusal: Option<Refusal> = None;
        // The Err type is fixed by tungstenite's handshake `Callback` signature.
        #[allow(clippy::result_large_err)]
        let check = |request: &Request, mut response: Response| match self.admit(
            request,
            peer,
            &node.config().server.path,
        ) {
            Ok(mut admission) => {
                admission.deflates = self.answer_compression(request, &mut response);
                admitted = Some(admission);
                Ok(response)
            }
            Err((reason, status, message)) => {
                refusal = Some(reason);
                Err(error_response(status, message))
            }
        };
        let ws = if node.hooks().connect_enabled() {
            // Not boxed on its own: all of `accept` is, and freed once the welcome is out.
            let handshake = self.hooked_handshake(tcp, peer);
            match tokio::time::timeout(self.handshake_timeout, handshake).await {
                Err(_) => {
                    node.metrics().refused(Refusal::HandshakeTimeout);
                    debug!(%peer, "handshake timed out");
                    return None;
                }
                Ok(Err(reason)) => {
                    node.metrics().refused(reason);
                    debug!(%peer, reason = reason.label(), "handshake refused");
                    return None;
                }
                Ok(Ok((ws, admission))) => {
                    admitted = Some(admission);
                    ws
                }
            }
        } else {
            let handshake = tokio_tungstenite::accept_hdr_async_with_config(
                ClientSocket::new(tcp),
                check,
                Some(self.ws_config),
            );
            match tokio::time::timeout(self.handshake_timeout, handshake).await {
                Err(_) => {
                    node.metrics().refused(Refusal::HandshakeTimeout);
                    debug!(%peer, "handshake timed out");
                    return None;
                }
                Ok(Err(err)) => {
                    node.metrics()
                        .refused(refusal.unwrap_or(Refusal::HandshakeFailed));
                    debug!(%peer, %err, "handshake refused");
                    return None;
                }
                Ok(Ok(mut ws)) => {
                    if admitted
                        .as_ref()
                        .is_some_and(|admission| admission.deflates)
                    {
                        let max = node.config().limits.max_message_bytes;
                        ws.get_mut().inflate_from_now(max);
                    }
                    ws
                }
            }
        };
        // `admitted` keeps the address slots until the connection ends; only the identity
        // moves on (taken in place, so the state holds one admission, not two).
        let identity = admitted
            .as_mut()
            .map(|admission| admission.identity.take())?;
        node.metrics().connections_accepted.inc();
        // `admitted` keeps the address slots for as long as the connection lives.
        connection::open(node.clone(), Box::new(ws), identity, admitted).await
    }

    /// Answer a permessage-deflate offer when `server.compression` is on; whether the
    /// connection now compresses.
    fn answer_compression(&self, request: &Request, response: &mut Response) -> bool {
        if !self.node.config().server.compression {
            return false;
        }
        let Some(answer) = deflate::negotiate(request.headers()) else {
            return false;
        };
        match HeaderValue::from_str(&answer) {
            Ok(value) => {
                response
                    .headers_mut()
                    .insert(deflate::EXTENSIONS_HEADER, value);
                true
            }
            Err(_) => false,
        }
    }

    /// Every check of a handshake, in the order docs/protocol.md gives; the admission holds the
    /// slots it took.
    fn admit(&self, request: &Request, peer: SocketAddr, path: &str) -> Result<Admission, Refused> {
        let client = self.screen(request, peer, path)?;
        let identity = self.authenticate(request)?;
        self.admission(client, identity)
    }

    /// The checks before the identity: `path`, `Origin`, the per-address handshake rate.
    /// Returns the client address.
    fn screen(&self, request: &Request, peer: SocketAddr, path: &str) -> Result<IpAddr, Refused> {
        let client = self.client_ip(request, peer.ip());
        if request.uri().path() != path {
            return Err((Refusal::NotFound, StatusCode::NOT_FOUND, "no such path"));
        }
        self.check_origin(request)?;
        if self.per_address.check_key(&client).is_err() {
            return Err((
                Refusal::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            ));
        }
        Ok(client)
    }

    /// The checks after the identity: shutdown, and the slots (per address, per node).
    fn admission(&self, client: IpAddr, identity: Option<Identity>) -> Result<Admission, Refused> {
        if !self.node.is_accepting() {
            return Err((
                Refusal::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                "node is shutting down",
            ));
        }
        let address_slot = AddressSlots::reserve(&self.open_per_address, client).ok_or((
            Refusal::RateLimited,
            StatusCode::TOO_MANY_REQUESTS,
            "too many open connections from this address",
        ))?;
        let node_slot = self.node.reserve_slot().ok_or((
            Refusal::Capacity,
            StatusCode::SERVICE_UNAVAILABLE,
            "node is at its connection limit",
        ))?;
        Ok(Admission {
            _slots: (node_slot, address_slot),
            identity: identity.map(Arc::new),
            deflates: false,
        })
    }
}

/// Why a handshake is refused: the metric label, the HTTP status and the body.
type Refused = (Refusal, StatusCode, &'static str);

impl Listener {
    /// `server.allowed_origins`, when set, must name the request's `Origin`. A request without
    /// one is not a browser's, so not a cross-site request: it passes unless
    /// `server.require_origin` asks for browsers only.
    fn check_origin(&self, request: &Request) -> Result<(), Refused> {
        let server = &self.node.config().server;
        let Some(origin) = request.headers().get("origin") else {
            return if server.require_origin {
                Err((Refusal::Origin, StatusCode::FORBIDDEN, "origin required"))
            } else {
                Ok(())
            };
        };
        // An Origin that is not text cannot be one of the list.
        let listed = |origin: &str| {
            server
                .allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        };
        if server.allowed_origins.is_empty() || origin.to_str().is_ok_and(listed) {
            Ok(())
        } else {
            Err((Refusal::Origin, StatusCode::FORBIDDEN, "origin not allowed"))
        }
    }

    /// 401 (with `body`) for an identity a revocation in force covers, counted as revoked.
    fn refuse_if_revoked(&self, identity: &Identity, body: &'static str) -> Result<(), Refused> {
        if !self.node.is_revoked(identity) {
            return Ok(());
        }
        self.node.metrics().auth_failed(AuthFailure::Revoked);
        Err((Refusal::Unauthorized, StatusCode::UNAUTHORIZED, body))
    }

    /// The identity of the request's token; `None` without authentication.
    fn authenticate(&self, request: &Request) -> Result<Option<Identity>, Refused> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(None);
        };
        let token = self.request_token(request);
        let verified = match token {
            None => Err(AuthFailure::Missing),
            Some(token) => authenticator.verify(&token),
        };
        let identity = verified.map_err(|failure| {
            self.node.metrics().auth_failed(failure);
            (
                Refusal::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "missing, expired or invalid token",
            )
        })?;
        self.refuse_if_revoked(&identity, "token revoked")?;
        Ok(Some(identity))
    }

    /// The request's token: `?token=`, else `Authorization: Bearer`, else the cookie
    /// `auth.token_cookie` names.
    fn request_token(&self, request: &Request) -> Option<String> {
        let headers = request.headers();
        token_from_request(
            request.uri().query(),
            headers.get("authorization").and_then(|v| v.to_str().ok()),
        )
        .or_else(|| {
            let cookies = headers.get_all("cookie").iter();
            let cookies = cookies.filter_map(|v| v.to_str().ok());
            token_from_cookies(cookies, &self.node.config().auth.token_cookie)
        })
    }

    fn client_ip(&self, request: &Request, peer: IpAddr) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        let header = &self.node.config().server.client_ip_header;
        request
            .headers()
            .get_all(header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|part| part.trim().parse::<IpAddr>().ok())
            .rev()
            .find(|ip| !self.trusted_proxies.contains(ip))
            .unwrap_or(peer)
    }
}

/// What a successful handshake holds for the connection's lifetime.
struct Admission {
    /// Held, never read: dropping them frees the node-wide and per-address slots.
    _slots: (SlotGuard, AddressSlot),
    /// Shared from here on: the connection's future and the session hold a pointer, not the
    /// claims (every idle connection's future is as large as its largest state).
    identity: Option<Arc<Identity>>,
    /// permessage-deflate was negotiated (set by the handshake's answer).
    deflates: bool,
}

/// Open connections per client address.
struct AddressSlots {
    max: u64,
    open: Mutex<HashMap<IpAddr, u64>>,
}

impl AddressSlots {
    fn reserve(this: &Arc<AddressSlots>, ip: IpAddr) -> Option<AddressSlot> {
        let mut open = this.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= this.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: this.clone(),
            ip,
        })
    }
}

struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn error_response(status: StatusCode, message: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message.to_owned()));
    *response.status_mut() = status;
    response
}

/// `server.tcp_nodelay`, and `TCP_CORK` until the welcome is written (`connection::open`
/// uncorks), so the 101 response and the welcome share one segment; a refused handshake's
/// response leaves at close. Failures only cost an extra segment or the kernel's default.
fn prepare_socket(tcp: &TcpStream, nodelay: bool) {
    if let Err(err) = tcp.set_nodelay(nodelay) {
        debug!(%err, "cannot set TCP_NODELAY");
    }
    if let Err(err) = socket2::SockRef::from(tcp).set_tcp_cork(true) {
        debug!(%err, "cannot cork the socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An accepted socket of this machine's loopback and what `prepare_socket` leaves on it.
    async fn prepared(nodelay: bool) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        prepare_socket(&accepted, nodelay);
        (accepted, client)
    }

    #[tokio::test]
    async fn accepted_sockets_follow_tcp_nodelay_and_start_corked() {
        for nodelay in [true, false] {
            let (accepted, _client) = prepared(nodelay).await;
            assert_eq!(accepted.nodelay().expect("nodelay"), nodelay);
            let sock = socket2::SockRef::from(&accepted);
            assert!(sock.tcp_cork().expect("cork"), "corked until the welcome");
        }
    }
}
