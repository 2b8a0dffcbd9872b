//! One SSE client (`GET /sse`, docs/protocol.md "SSE transport") after the listener admitted
//! it: the same session, rooms, outbox and close reasons as a WebSocket connection, written as
//! `text/event-stream` instead of WebSocket frames.
//!
//! The node cannot tell an SSE member from a WebSocket one: it is a hub member with an outbox,
//! and this module is its writer. Each frame becomes one event: `event:` is the frame's
//! `type`, `data:` its JSON (the very text a WebSocket member gets), and `id:` the message id
//! when the message is kept in a history room, so that the browser's `Last-Event-ID` resumes
//! it. Heartbeats are comment lines; the close reason is a final `close` event. Writes are
//! coalesced as a WebSocket's are (`server.write_coalesce_ms`: a stream that wrote less than a
//! window ago holds what is queued until the window's end). One task per client, as for a
//! WebSocket: it writes what the outbox holds (never waiting on the socket in a way that stops
//! it noticing a close), joins the rooms asked for and the backend's server
//! subscriptions, and watches the socket for the client going away. The HTTP request, its
//! checks and the response head's status on refusal are the listener's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, error};

use crate::auth::Identity;
use crate::node::{Node, Session};
use crate::outbox::{Closer, OutboxReceiver, Received};
use crate::protocol::{self, Disconnect, Frame, Position, RequestId, RoomName};

/// Most frames taken from the outbox per write.
const WRITE_BATCH: usize = 256;

/// What the client asked for in its request.
pub struct SseRequest {
    pub rooms: Vec<RoomName>,
    /// `Last-Event-ID` (the header, else `?last_event_id=`): the `since` of every join.
    pub last_event_id: Option<String>,
    /// Extra response headers (CORS), each a whole `Name: value` line without its CRLF.
    pub headers: Vec<String>,
}

/// A join or server-subscription change under way; it owns the session until it is done.
type Running<'a> = Pin<Box<dyn Future<Output = Session> + Send + 'a>>;

/// Serve one admitted SSE client until it closes.
// Not `async fn`, on purpose: see `connection::drive`.
#[allow(clippy::manual_async_fn)]
pub fn serve(
    node: Arc<Node>,
    mut tcp: TcpStream,
    identity: Option<Arc<Identity>>,
    request: SseRequest,
) -> impl Future<Output = ()> + Send {
    async move {
        let close_timeout = Duration::from_millis(node.config().limits.close_timeout_ms);
        // Boxed, like the close below: run once, they would otherwise size every stream's state.
        let (session, receiver) = match Box::pin(node.open_session(identity)).await {
            Ok(opened) => opened,
            Err(err) => {
                error!(%err, "cannot register SSE client with the broker");
                let head = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                            Connection: close\r\n\r\n";
                let _ = tokio::time::timeout(close_timeout, tcp.write_all(head.as_bytes())).await;
                node.metrics().disconnected(Disconnect::Internal);
                return;
            }
        };
        session.name_in_span();
        let mut out = response_head(&request.headers);
        let welcome = protocol::welcome(
            &session.conn_id,
            node.node_id(),
            session.user.as_deref(),
            node.config().limits.ping_interval_ms,
        );
        encode_event(&mut out, &welcome);
        let greeted = matches!(
            tokio::time::timeout(close_timeout, tcp.write_all(&out)).await,
            Ok(Ok(()))
        );
        uncork(&tcp);
        if !greeted {
            let mut session = session;
            Box::pin(node.close_session(&mut session)).await;
            node.metrics().disconnected(Disconnect::PeerGone);
            return;
        }
        // An idle stream keeps no buffer: the next write allocates its own.
        drop(out);
        let session = drive(&node, &mut tcp, session, request, &receiver).await;
        let Some(mut session) = session else {
            error!("an SSE client ended without its session");
            node.metrics().disconnected(Disconnect::Internal);
            return;
        };
        Box::pin(node.close_session(&mut session)).await;
        let reason = receiver.closer().reason().unwrap_or(Disconnect::PeerGone);
        node.metrics().disconnected(reason);
        debug!(reason = reason.label(), "SSE client closed");
    }
}

/// Let the kernel send what the listener's `TCP_CORK` held back (the head and the welcome leave
/// in one segment). Failing leaves the data to the kernel's 200 ms cork ceiling.
fn uncork(tcp: &TcpStream) {
    if let Err(err) = socket2::SockRef::from(tcp).set_tcp_cork(false) {
        debug!(%err, "cannot uncork the socket");
    }
}

/// The `200` head of an event stream. No length: the body is the stream, until the close.
fn response_head(extra: &[String]) -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\nConnection: close\r\n",
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Serve the stream until the client closes; returns the session for the node to forget.
// Not `async fn`, on purpose: see `connection::drive`.
#[allow(clippy::manual_async_fn)]
fn drive<'a>(
    node: &'a Node,
    tcp: &'a mut TcpStream,
    session: Session,
    request: SseRequest,
    outbox: &'a OutboxReceiver,
) -> impl Future<Output = Option<Session>> + Send + 'a {
    async move {
        let closer = outbox.closer();
        let close_timeout = Duration::from_millis(node.config().limits.close_timeout_ms);
        let (mut reader, mut writer) = tcp.split();
        let mut beat = Beat::new(node, &session);
        let timer = tokio::time::sleep_until(beat.deadline());
        tokio::pin!(timer);
        let closed = closer.closed();
        tokio::pin!(closed);
        let mut batch: Vec<Frame> = Vec::new();
        let mut out: Vec<u8> = Vec::new();
        // `out[written..]` is still to be written; a new batch waits until it is all out, so a
        // client that does not read fills the outbox, which closes it (1013) as for a WebSocket.
        let mut written = 0usize;
        let mut scratch = [0u8; 64];
        let mut idle: Option<Session> = None;
        let mut running: Option<Running<'_>> = Some(Box::pin(join_rooms(node, session, request)));

        loop {
            tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = &mut timer => {
                    if !on_timer(&mut beat, closer, &mut out, written) {
                        break;
                    }
                    timer.as_mut().reset(beat.deadline());
                }
                done = async {
                    match running.as_mut() {
                        Some(work) => work.await,
                        None => std::future::pending().await,
                    }
                }, if running.is_some() => {
                    beat.retoken(&done);
                    timer.as_mut().reset(beat.deadline());
                    idle = Some(done);
                    running = None;
                }
                wrote = writer.write(&out[written..]), if written < out.len() => match wrote {
                    Ok(n) if n > 0 => {
                        written += n;
                        if written == out.len() {
                            // All out: an idle stream keeps no buffer.
                            out = Vec::new();
                            written = 0;
                            // What is queued from now on waits for the window's end, unless
                            // the stream stays quiet until then (as `connection::drive`).
                            beat.wrote();
                        }
                    }
                    _ => {
                        closer.close(Disconnect::PeerGone);
                        break;
                    }
                },
                received = outbox.recv_coalesced(&mut batch, WRITE_BATCH, beat.window_end),
                    if written == out.len() => match received {
                    Received::End => break,
                    Received::Hold => {
                        // The one timer comes back for the held frames at the window's end.
                        beat.holding = true;
                        timer.as_mut().reset(beat.deadline());
                    }
                    Received::Frames(_) => {
                        for frame in batch.drain(..) {
                            encode_event(&mut out, &frame);
                        }
                        if batch.capacity() > 8 {
                            batch.shrink_to(8);
                        }
                    }
                },
                rooms = outbox.server_rooms(), if running.is_none() => {
                    let Some(mut session) = idle.take() else { break };
                    running = Some(Box::pin(async move {
                        node.apply_server_rooms(&mut session, rooms).await;
                        session
                    }));
                }
                // An event stream's client sends nothing after its request: what it sends is
                // ignored, and the end of its side is the end of the connection.
                read = reader.read(&mut scratch) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        closer.close(Disconnect::PeerGone);
                        break;
                    }
                }
            }
        }

        let session = match running {
            Some(work) => Some(work.await),
            None => idle,
        };
        // What was begun is finished, then what is still queued (the coalescing window may
        // have held it; not for a slow consumer, as for a WebSocket), then the close event;
        // bounded like a close frame.
        if closer.reason() != Some(Disconnect::SlowConsumer) {
            while let Ok(frame) = outbox.try_recv() {
                encode_event(&mut out, &frame);
            }
        }
        if let Some(reason) = closer.reason().filter(|r| r.close_code().is_some()) {
            let text = outbox.take_close_text();
            close_event(&mut out, reason, text.as_deref());
        }
        if written < out.len() {
            let _ = tokio::time::timeout(close_timeout, async {
                writer.write_all(&out[written..]).await?;
                writer.shutdown().await
            })
            .await;
        }
        session
    }
}

/// Join the rooms of the request, as `join` commands in that order, each resuming from
/// `Last-Event-ID`. A refused room is an `error` event whose `id` is the room.
async fn join_rooms(node: &Node, mut session: Session, request: SseRequest) -> Session {
    let since = request.last_event_id.as_deref();
    for room in &request.rooms {
        match node.join(&mut session, room, since, None).await {
            Ok(outcome) => {
                let id = RequestId::Str(room.to_string());
                let joined = protocol::joined(room, Some(&id), outcome.recovered, outcome.history);
                session.outbox.offer(joined);
                for frame in outcome.replay {
                    session.outbox.offer(frame);
                }
                if let Some((gate, after)) = outcome.gate {
                    node.open_gate(&session, gate, after);
                }
            }
            Err(err) => {
                node.metrics().invalid(err.code);
                let id = RequestId::Str(room.to_string());
                session.outbox.offer(protocol::error(&err, Some(&id)));
            }
        }
    }
    session
}

/// The head of a frame: all an event needs besides the frame's text.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// Append `frame` as one event. `id:` is set for kept messages only (history ids): an event
/// without one leaves the browser's last event id as it was, so the messages of rooms without
/// history, which cannot be resumed, never overwrite the position of one that can.
pub fn encode_event(out: &mut Vec<u8>, frame: &Frame) {
    let text = frame.text();
    if let Ok(head) = serde_json::from_str::<Head<'_>>(text) {
        if head.kind == Some("message")
            && let Some(id) = head
                .id
                .and_then(|raw| serde_json::from_str::<&str>(raw.get()).ok())
            && Position::parse(id).is_some()
        {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id.as_bytes());
            out.push(b'\n');
        }
        if let Some(kind) = head.kind.filter(|k| !k.contains(['\r', '\n'])) {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(kind.as_bytes());
            out.push(b'\n');
        }
    }
    // JSON holds line breaks only as whitespace (the client's own data keeps its layout): each
    // line is a `data:` line, which the browser joins with `\n`, the same JSON.
    for line in text.split(['\r', '\n']) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// The final event: `{"type":"close","code":…,"reason":…}`, the close frame's code and reason.
fn close_event(out: &mut Vec<u8>, reason: Disconnect, text: Option<&str>) {
    let body = serde_json::json!({
        "type": "close",
        "code": reason.close_code(),
        "reason": text.unwrap_or(reason.reason()),
    });
    out.extend_from_slice(b"event: close\ndata: ");
    out.extend_from_slice(body.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The deadlines of an SSE client: the heartbeat comment, and its token's warning and expiry.
/// There is no idle limit: the client sends nothing, and its going away is seen on the socket.
struct Beat {
    every: Duration,
    next: Instant,
    warning: Duration,
    /// The token's `exp`, its expiry and, until sent, when `token_expiring` goes.
    token: Option<(u64, Instant, Option<Instant>)>,
    /// `server.write_coalesce_ms` (zero: off).
    window: Duration,
    /// The end of the coalescing window the last write opened.
    window_end: Option<Instant>,
    /// The outbox said it holds frames until `window_end`.
    holding: bool,
}

impl Beat {
    fn new(node: &Node, session: &Session) -> Beat {
        let config = node.config();
        let every = Duration::from_millis(config.limits.ping_interval_ms);
        let mut beat = Beat {
            every,
            next: Instant::now() + every,
            warning: Duration::from_millis(config.auth.expiry_warning_ms),
            token: None,
            window: Duration::from_millis(config.server.write_coalesce_ms),
            window_end: None,
            holding: false,
        };
        beat.retoken(session);
        beat
    }

    fn retoken(&mut self, session: &Session) {
        let Some(identity) = &session.identity else {
            return;
        };
        if self
            .token
            .is_some_and(|(exp, _, _)| exp == identity.expires_at)
        {
            return;
        }
        let expiry = crate::connection::token_deadline(identity.expires_at);
        let warn_at = expiry
            .checked_sub(self.warning)
            .unwrap_or_else(Instant::now);
        self.token = Some((identity.expires_at, expiry, Some(warn_at)));
    }

    /// A write ended: the next coalescing window starts now.
    fn wrote(&mut self) {
        self.holding = false;
        if !self.window.is_zero() {
            self.window_end = Some(Instant::now() + self.window);
        }
    }

    fn deadline(&self) -> Instant {
        let mut due = self.next;
        if self.holding
            && let Some(window_end) = self.window_end
        {
            due = due.min(window_end);
        }
        match self.token {
            None => due,
            Some((_, expiry, warn_at)) => {
                let due = due.min(expiry);
                warn_at.map_or(due, |w| due.min(w))
            }
        }
    }
}

/// The timer fired: false when the connection closes (its token ran out); otherwise what is
/// due is appended to `out`. A heartbeat is skipped while events are still being written.
fn on_timer(beat: &mut Beat, closer: &Closer, out: &mut Vec<u8>, written: usize) -> bool {
    let now = Instant::now();
    if beat.holding && beat.window_end.is_none_or(|end| now >= end) {
        // The outbox hands the held frames over on the loop's next turn.
        beat.holding = false;
    }
    if let Some((_, expiry, warn_at)) = &mut beat.token {
        if now >= *expiry {
            closer.close(Disconnect::TokenExpired);
            return false;
        }
        if warn_at.is_some_and(|w| now >= w) {
            *warn_at = None;
            let left = expiry.saturating_duration_since(now).as_millis();
            let frame = protocol::token_expiring(u64::try_from(left).unwrap_or(u64::MAX));
            encode_event(out, &frame);
        }
    }
    if now >= beat.next {
        beat.next = now + beat.every;
        if written == out.len() {
            out.extend_from_slice(b": ping\n\n");
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> String {
        let mut out = Vec::new();
        encode_event(&mut out, &Frame::text_for_tests(text));
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_kept_message_carries_its_id_and_type() {
        let text = r#"{"type":"message","room":"r","id":"habc-7","data":1,"from":"u","ts":1}"#;
        assert_eq!(
            event(text),
            format!("id: habc-7\nevent: message\ndata: {text}\n\n")
        );
    }

    #[test]
    fn messages_without_history_and_replies_carry_no_id() {
        let live = r#"{"type":"message","room":"r","id":"n1.2-3","data":1,"from":"u","ts":1}"#;
        assert_eq!(event(live), format!("event: message\ndata: {live}\n\n"));
        let joined = r#"{"type":"joined","room":"r","id":"h1-1"}"#;
        assert_eq!(event(joined), format!("event: joined\ndata: {joined}\n\n"));
    }

    #[test]
    fn line_breaks_in_data_become_data_lines() {
        let text = "{\"type\":\"message\",\"data\":{\"a\":\r\n1}}";
        assert_eq!(
            event(text),
            "event: message\ndata: {\"type\":\"message\",\"data\":{\"a\":\ndata: \ndata: 1}}\n\n"
        );
    }

    #[test]
    fn the_close_event_names_code_and_reason() {
        let mut out = Vec::new();
        close_event(&mut out, Disconnect::SlowConsumer, None);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("event: close\ndata: {"), "{text}");
        assert!(text.contains("\"code\":1013"), "{text}");
        assert!(text.ends_with("\n\n"), "{text}");
    }
}
