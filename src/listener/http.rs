//! Plain HTTP on the public port: `GET /sse` and `POST /publish` (docs/protocol.md "SSE
//! transport"), beside the WebSocket upgrade.
//!
//! A connection's first bytes decide its route, read with `MSG_PEEK` so that the WebSocket
//! handshake still reads its request from the start (one extra system call per connect, no
//! copy). An HTTP request then meets every check of a handshake, in the same order and with
//! the same statuses (the listener's `screen`, the token or the connect hook, revocation, the
//! slots); the event stream itself is `sse`'s, a publish the node's. One request per TCP
//! connection: every answer closes it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tracing::debug;

use super::{Admission, Listener};
use crate::metrics::Refusal;
use crate::protocol::{self, Command, CommandError, CommandKind, ErrorCode, RoomName};
use crate::sse::{self, SseRequest};

/// The event stream's path.
pub const SSE_PATH: &str = "/sse";
/// The path of an HTTP publish.
pub const PUBLISH_PATH: &str = "/publish";
/// Most headers an HTTP request may carry.
const MAX_HEADERS: usize = 64;

/// Where a new connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    WebSocket,
    Sse,
    Publish,
    /// A CORS preflight of `POST /publish`.
    Preflight,
}

/// The request lines that are not a WebSocket upgrade, each followed by ` ` or `?`.
const ROUTES: [(&[u8], Route); 3] = [
    (b"GET /sse", Route::Sse),
    (b"POST /publish", Route::Publish),
    (b"OPTIONS /publish", Route::Preflight),
];

/// The route of the request line `start` begins with; `None` while it could still become
/// one of [`ROUTES`] (fewer bytes than it takes to tell).
fn route_of(start: &[u8]) -> Option<Route> {
    for (line, route) in ROUTES {
        if start.len() > line.len() {
            if start.starts_with(line) && matches!(start[line.len()], b' ' | b'?') {
                return Some(route);
            }
        } else if line.starts_with(start) {
            return None;
        }
    }
    Some(Route::WebSocket)
}

/// Peek at the connection's first bytes for its route; the WebSocket path when the client
/// closes first (its handshake then fails as it always did). The caller bounds the wait.
pub(super) async fn route(tcp: &TcpStream) -> Route {
    let mut start = [0u8; 18];
    loop {
        let n = match tcp.peek(&mut start).await {
            Ok(0) | Err(_) => return Route::WebSocket,
            Ok(n) => n,
        };
        if let Some(route) = route_of(&start[..n]) {
            return route;
        }
        // A request line split across segments (never seen from a real client): peeking again
        // at once would see the same bytes, so give the rest a moment to arrive.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A parsed request head and the bytes read after it (the start of a body).
struct Head {
    request: Request,
    rest: Vec<u8>,
}

/// Read and parse a request head of at most `max` bytes.
async fn read_head(tcp: &mut TcpStream, max: usize) -> Result<Head, (StatusCode, &'static str)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= max {
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request too large",
            ));
        }
        let room = (max - buf.len()).min(4096);
        let n = (&mut *tcp)
            .take(room as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|_| (StatusCode::BAD_REQUEST, "cannot read the request"))?;
        if n == 0 {
            return Err((StatusCode::BAD_REQUEST, "incomplete request"));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let size = match parsed.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(size)) => size,
            Err(httparse::Error::TooManyHeaders) => {
                return Err((
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many headers",
                ));
            }
            Err(_) => return Err((StatusCode::BAD_REQUEST, "malformed request")),
        };
        let bad = (StatusCode::BAD_REQUEST, "malformed request");
        let mut builder = Request::builder()
            .method(parsed.method.unwrap_or("GET"))
            .uri(parsed.path.unwrap_or("/"));
        for header in parsed.headers.iter() {
            let value = HeaderValue::from_bytes(header.value).map_err(|_| bad)?;
            builder = builder.header(header.name, value);
        }
        let request = builder.body(()).map_err(|_| bad)?;
        let rest = buf.split_off(size);
        return Ok(Head { request, rest });
    }
}

/// Write a whole response and let the connection close. Best effort: the peer may be gone.
async fn respond(
    tcp: &mut TcpStream,
    status: StatusCode,
    content_type: &str,
    extra: &[String],
    body: &str,
) {
    let mut text = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    for line in extra {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.push_str(body);
    let _ = tcp.write_all(text.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// The CORS headers of an answer to a browser's request: its `Origin`, which the checks have
/// let through, is allowed to read the answer with its credentials.
fn cors_headers(request: &Request) -> Vec<String> {
    let Some(origin) = request
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .filter(|o| !o.contains(['\r', '\n']))
    else {
        return Vec::new();
    };
    vec![
        format!("Access-Control-Allow-Origin: {origin}"),
        "Access-Control-Allow-Credentials: true".to_owned(),
        "Vary: Origin".to_owned(),
    ]
}

/// An SSE request's rooms (`room=`, in order) and `Last-Event-ID` (the header, which a
/// browser's reconnect sends, before `last_event_id=` of the first request's URL).
fn sse_request(request: &Request) -> Result<SseRequest, String> {
    let mut rooms: Vec<RoomName> = Vec::new();
    let mut last_event_id = None;
    for pair in request.uri().query().unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "room" => {
                let name = crate::auth::form_value_decode(value);
                let room = RoomName::new(&name)
                    .map_err(|err| format!("room {name:?}: {}", err.message))?;
                if !rooms.contains(&room) {
                    rooms.push(room);
                }
            }
            "last_event_id" if !value.is_empty() => {
                last_event_id = Some(crate::auth::form_value_decode(value));
            }
            _ => {}
        }
    }
    if let Some(header) = request.headers().get("last-event-id") {
        let header = header
            .to_str()
            .map_err(|_| "Last-Event-ID is not text".to_owned())?;
        if !header.is_empty() {
            last_event_id = Some(header.to_owned());
        }
    }
    Ok(SseRequest {
        rooms,
        last_event_id,
        headers: cors_headers(request),
    })
}

/// The HTTP status of a publish's error; the body is the error frame a WebSocket gets.
fn error_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Forbidden | ErrorCode::Rejected => StatusCode::FORBIDDEN,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::InvalidToken => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl Listener {
    /// Serve one plain HTTP request of `route` (not the WebSocket's). Each step bounds itself.
    pub(super) async fn serve_http(&self, mut tcp: TcpStream, peer: SocketAddr, route: Route) {
        let node = &self.node;
        // Boxed, both: reading and checking the request, and a publish (with its hooks' HTTP
        // calls), are over quickly, and unboxed they would size the state an open event
        // stream holds for its whole life.
        let checked = Box::pin(self.checked_request(&mut tcp, peer, route)).await;
        let Some((head, mut admission)) = checked else {
            return;
        };
        if route != Route::Sse {
            Box::pin(self.publish(tcp, head, admission, peer)).await;
            return;
        }
        let request = sse_request(&head.request);
        drop(head);
        let request = match request {
            Ok(request) => request,
            Err(message) => {
                node.metrics().refused(Refusal::HandshakeFailed);
                respond(
                    &mut tcp,
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    &[],
                    &message,
                )
                .await;
                return;
            }
        };
        node.metrics().connections_accepted.inc();
        let identity = admission.identity.take();
        sse::serve(node.clone(), tcp, identity, request).await;
        drop(admission);
    }

    /// Read the request and make every check of a handshake; `None` once it is answered (a
    /// refusal, or a preflight).
    async fn checked_request(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        route: Route,
    ) -> Option<(Head, Admission)> {
        let node = &self.node;
        // The same bound as a hooked WebSocket handshake's request.
        let max = node.config().limits.max_message_bytes;
        let head = match tokio::time::timeout(self.handshake_timeout, read_head(tcp, max)).await {
            Err(_) => {
                node.metrics().refused(Refusal::HandshakeTimeout);
                return None;
            }
            Ok(Err((status, message))) => {
                node.metrics().refused(Refusal::HandshakeFailed);
                respond(tcp, status, "text/plain", &[], message).await;
                return None;
            }
            Ok(Ok(head)) => head,
        };
        let path = match route {
            Route::Sse => SSE_PATH,
            _ => PUBLISH_PATH,
        };
        if route == Route::Preflight {
            self.preflight(tcp, head.request).await;
            return None;
        }
        let admitted = if node.hooks().connect_enabled() {
            let hooked = self.admit_hooked(&head.request, peer, path);
            match tokio::time::timeout(self.handshake_timeout, hooked).await {
                Ok(admitted) => admitted,
                Err(_) => {
                    node.metrics().refused(Refusal::HandshakeTimeout);
                    return None;
                }
            }
        } else {
            self.admit(&head.request, peer, path)
        };
        match admitted {
            Ok(admission) => Some((head, admission)),
            Err((reason, status, message)) => {
                node.metrics().refused(reason);
                debug!(%peer, reason = reason.label(), "HTTP request refused");
                // An allowed page may read why (401, 429, 503…): no "blocked by CORS" in it.
                let cors = match self.check_origin(&head.request) {
                    Ok(_) => cors_headers(&head.request),
                    Err(_) => Vec::new(),
                };
                respond(tcp, status, "text/plain", &cors, message).await;
                None
            }
        }
    }

    /// `POST /publish`: the body is a `publish` command; the answer its `ack` or `error`.
    async fn publish(
        &self,
        mut tcp: TcpStream,
        head: Head,
        admission: Admission,
        peer: SocketAddr,
    ) {
        let node = &self.node;
        let cors = cors_headers(&head.request);
        let body = match self.read_body(&mut tcp, &head).await {
            Ok(body) => body,
            Err(err) => {
                node.metrics().invalid(err.code);
                let frame = protocol::error(&err, None);
                respond(
                    &mut tcp,
                    error_status(err.code),
                    "application/json",
                    &cors,
                    frame.text(),
                )
                .await;
                return;
            }
        };
        let identity = admission.identity.as_deref();
        let key = match identity {
            Some(identity) => format!("user:{}", identity.user),
            None => format!("addr:{}", self.client_ip(&head.request, peer.ip())),
        };
        let decoded = protocol::decode_command(&body);
        let id = decoded.id.as_ref();
        let result = match decoded.result {
            _ if self.publish_rate.check_key(&key).is_err() => {
                node.metrics().rate_limited.inc();
                Err(CommandError::new(
                    ErrorCode::RateLimited,
                    "rate limit exceeded",
                ))
            }
            Ok(Command::Publish {
                room, data, key, ..
            }) => {
                node.metrics().received(CommandKind::Publish);
                node.publish_over_http(identity, &room, data, key)
                    .await
                    .map(|msg_id| protocol::ack(&room, &msg_id, id))
            }
            Ok(_) => {
                node.metrics().received(CommandKind::Invalid);
                Err(CommandError::bad_request(
                    "only a `publish` command can be posted",
                ))
            }
            Err(err) => {
                node.metrics().received(CommandKind::Invalid);
                Err(err)
            }
        };
        let (status, frame) = match result {
            Ok(frame) => (StatusCode::OK, frame),
            Err(err) => {
                node.metrics().invalid(err.code);
                (error_status(err.code), protocol::error(&err, id))
            }
        };
        respond(&mut tcp, status, "application/json", &cors, frame.text()).await;
        drop(admission);
    }

    /// The body of a request: `Content-Length` bytes, at most `limits.max_message_bytes`.
    async fn read_body(&self, tcp: &mut TcpStream, head: &Head) -> Result<String, CommandError> {
        let max = self.node.config().limits.max_message_bytes;
        let headers = head.request.headers();
        if headers.contains_key("transfer-encoding") {
            return Err(CommandError::bad_request(
                "send the body with a Content-Length",
            ));
        }
        let length: usize = match headers.get("content-length").map(|v| v.to_str()) {
            Some(Ok(text)) => text
                .trim()
                .parse()
                .map_err(|_| CommandError::bad_request("bad Content-Length"))?,
            _ => {
                return Err(CommandError::bad_request(
                    "send the body with a Content-Length",
                ));
            }
        };
        if length > max {
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!("a message is at most {max} bytes"),
            ));
        }
        let expects = headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut body = head.rest.clone();
        body.truncate(length);
        let read = async {
            if expects && body.len() < length {
                tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            while body.len() < length {
                let left = (length - body.len()) as u64;
                if (&mut *tcp).take(left).read_buf(&mut body).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(self.handshake_timeout, read).await {
            Ok(Ok(())) => String::from_utf8(body)
                .map_err(|_| CommandError::bad_request("the body is not UTF-8")),
            _ => Err(CommandError::bad_request("incomplete body")),
        }
    }

    /// A CORS preflight of `POST /publish`: allowed for an `Origin` the checks let through.
    async fn preflight(&self, tcp: &mut TcpStream, request: Request) {
        if let Err((reason, status, message)) = self.check_origin(&request) {
            self.node.metrics().refused(reason);
            respond(tcp, status, "text/plain", &[], message).await;
            return;
        }
        let mut headers = cors_headers(&request);
        headers.push("Access-Control-Allow-Methods: POST".to_owned());
        headers.push("Access-Control-Allow-Headers: authorization, content-type".to_owned());
        headers.push("Access-Control-Max-Age: 600".to_owned());
        respond(tcp, StatusCode::NO_CONTENT, "text/plain", &headers, "").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_find_their_route() {
        assert_eq!(route_of(b"GET /sse?room=a HTTP/1.1"), Some(Route::Sse));
        assert_eq!(route_of(b"GET /sse HTTP/1.1"), Some(Route::Sse));
        assert_eq!(route_of(b"POST /publish HTTP/1.1"), Some(Route::Publish));
        assert_eq!(
            route_of(b"OPTIONS /publish HTTP/1.1"),
            Some(Route::Preflight)
        );
        assert_eq!(route_of(b"GET /ws HTTP/1.1\r\n"), Some(Route::WebSocket));
        assert_eq!(route_of(b"GET /sset HTTP/1.1"), Some(Route::WebSocket));
        assert_eq!(
            route_of(b"POST /publisher HTTP/1.1"),
            Some(Route::WebSocket)
        );
    }

    #[test]
    fn a_short_start_waits_for_more() {
        assert_eq!(route_of(b"GE"), None);
        assert_eq!(route_of(b"GET /sse"), None);
        assert_eq!(route_of(b"POST /pub"), None);
        assert_eq!(route_of(b"X"), Some(Route::WebSocket));
    }
}
