//! One client connection after its handshake: reading and answering commands, writing the
//! outbox, heartbeats, limits, and closing with the right code.
//!
//! One task drives the socket: it handles commands one at a time, so replies leave in the
//! order the commands arrived, while it keeps draining the bounded outbox, many frames per
//! flush, and one timer serves the idle limit, the server ping, the token's expiry and the
//! `token_expiring` warning before it (moved by a `refresh`), and the end of the write
//! coalescing window. An idle connection is that one task, its socket and one timer entry.
//!
//! Write coalescing (`server.write_coalesce_ms`): a connection that flushed within the window
//! holds its next flush until the window has passed, so the frames queued meanwhile leave in
//! one write (one TCP segment); a quiet connection flushes at once, and replies to the
//! client's own commands ([`Outbox::reply`](crate::outbox::Outbox::reply)) are never held. Everything stops when the
//! connection's [`Closer`](crate::outbox::Closer) fires, whoever fired it. The handshake and
//! its checks are the listener's; rooms and publishing are the node's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, error};

use crate::auth::Identity;
use crate::deflate::{ClientSocket, InflateError};
use crate::limits::MessageRate;
use crate::node::{Node, Session};
use crate::outbox::{Closer, OutboxReceiver, Received, ServerRoom};
use crate::protocol::{self, CommandError, CommandKind, Disconnect, Frame};

mod commands;
mod deadlines;
mod wire;
use commands::{check_rate, handle_text, reply_error};
/// When a token runs out, as an instant (SSE streams end at it too).
pub(crate) use deadlines::token_deadline;
use deadlines::{Due, Heartbeat, on_timer};

/// Most frames written per flush.
const WRITE_BATCH: usize = 256;
/// What a writer keeps of its batch buffer between bursts.
const IDLE_BATCH_CAPACITY: usize = 8;

/// A WebSocket the node registered and greeted, ready for [`run`]. `keep` is whatever must
/// live as long as the connection (the listener's address slots).
pub struct Opened<K> {
    node: Arc<Node>,
    ws: Box<WebSocketStream<ClientSocket>>,
    session: Session,
    receiver: OutboxReceiver,
    keep: K,
}

/// Register an accepted WebSocket with the node and send its welcome; `None` when the
/// connection is already over (closed 1011 when the node could not register it, or the peer
/// went away).
///
/// The listener hands the socket over corked (`TCP_CORK`): the handshake's 101 response waits
/// in the kernel until the welcome is written behind it, then both leave in one segment, one
/// transmit (and one wake-up of the client) per connect instead of two. The listener runs this
/// in the boxed future of the handshake, so none of its state stays with the connection.
pub async fn open<K>(
    node: Arc<Node>,
    mut ws: Box<WebSocketStream<ClientSocket>>,
    identity: Option<Arc<Identity>>,
    keep: K,
) -> Option<Opened<K>> {
    let close_timeout = Duration::from_millis(node.config().limits.close_timeout_ms);
    let (session, receiver) = match node.open_session(identity).await {
        Ok(opened) => opened,
        Err(err) => {
            error!(%err, "cannot register connection with the broker");
            close_unregistered(&node, &mut ws, close_timeout).await;
            return None;
        }
    };
    let session = greet(&node, &mut ws, session, close_timeout).await?;
    Some(Opened {
        node,
        ws,
        session,
        receiver,
        keep,
    })
}

/// Serve an opened WebSocket until it closes, then take it out of the node. A node shutting
/// down closes it with 1001 through its [`Closer`](crate::outbox::Closer), like any other
/// reason.
///
/// This future is all a connection holds for its life, so it is the connection loop itself,
/// with nothing of the handshake around it.
pub fn run<K: Send + 'static>(opened: Opened<K>) -> impl Future<Output = ()> + Send + 'static {
    let Opened {
        node,
        ws,
        session,
        receiver,
        keep,
    } = opened;
    let idle_state = Some((session, MessageRate::new(&node.config().limits)));
    drive(node, ws, idle_state, receiver, keep)
}

/// The node could not register the connection: close it with 1011.
async fn close_unregistered(
    node: &Node,
    ws: &mut WebSocketStream<ClientSocket>,
    close_timeout: Duration,
) {
    let close = ws.close(Some(close_frame(Disconnect::Internal)));
    let _ = tokio::time::timeout(close_timeout, close).await;
    uncork(ws);
    node.metrics().disconnected(Disconnect::Internal);
}

/// Send the welcome; the session back when it went out, else the connection is over.
async fn greet(
    node: &Node,
    ws: &mut WebSocketStream<ClientSocket>,
    mut session: Session,
    close_timeout: Duration,
) -> Option<Session> {
    session.name_in_span();
    // Written here rather than through the outbox, so that it leaves with the 101 response
    // (see `open`); nothing reaches the socket from the outbox before it.
    let welcome = protocol::welcome(
        &session.conn_id,
        node.node_id(),
        session.user.as_deref(),
        node.config().limits.ping_interval_ms,
    );
    let sent = tokio::time::timeout(
        close_timeout,
        wire::write_one(ws, wire::TEXT, welcome.text().as_bytes()),
    );
    let greeted = matches!(sent.await, Ok(Ok(())));
    uncork(ws);
    if greeted {
        return Some(session);
    }
    node.close_session(&mut session).await;
    node.metrics().disconnected(Disconnect::PeerGone);
    None
}

/// A command under way; it owns the session and the rate limiter until it is done.
type Running<'a> = Pin<Box<dyn Future<Output = (Session, MessageRate)> + Send + 'a>>;

/// Serve the socket until the connection closes, then take the session out of the node and
/// let `keep` go.
///
/// A plain function around an `async move` block rather than an `async fn`: an async fn keeps
/// its arguments twice in its state (as arguments, and as the locals they are moved into),
/// which every idle connection would pay for.
// Not `async fn`, on purpose: see above.
#[allow(clippy::manual_async_fn)]
fn drive<K: Send + 'static>(
    node: Arc<Node>,
    mut ws: Box<WebSocketStream<ClientSocket>>,
    mut idle_state: Option<(Session, MessageRate)>,
    outbox: OutboxReceiver,
    keep: K,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let node: &Node = &node;
        let closer = outbox.closer();
        let mut beat = Heartbeat::new(node.config(), idle_state.as_ref().map(|(s, _)| s));
        // One timer for every deadline; a frame only moves `last_read`, and the timer is
        // re-armed when it fires, so a busy connection does not touch the timer wheel per frame.
        let timer = tokio::time::sleep_until(beat.deadline());
        tokio::pin!(timer);
        let closed = closer.closed();
        tokio::pin!(closed);
        // Allocated on first use and shrunk after a burst: an idle connection holds no batch.
        let mut batch = Vec::new();
        let mut running: Option<Running<'_>> = None;

        loop {
            // The arms only decide; the writes they call for are awaited after the select, so
            // that its output (a whole session, for a finished command) is not kept across
            // them in the connection's future, which every idle connection would pay for.
            let step = tokio::select! {
                biased;
                _ = &mut closed => Step::Stop,
                _ = &mut timer => Step::Tick,
                done = async {
                    match running.as_mut() {
                        Some(command) => command.await,
                        None => std::future::pending().await,
                    }
                }, if running.is_some() => {
                    // A `refresh` may have moved the token's expiry.
                    if beat.retoken(&done.0) {
                        timer.as_mut().reset(beat.deadline());
                    }
                    idle_state = Some(done);
                    running = None;
                    Step::Go
                }
                received = outbox.recv_coalesced(&mut batch, WRITE_BATCH, beat.window_end) => {
                    match received {
                        Received::Frames(n) => Step::Write(n),
                        Received::End => Step::Write(0),
                        Received::Hold => Step::Hold,
                    }
                }
                rooms = outbox.server_rooms(), if running.is_none() => {
                    running = apply_server_rooms(node, &mut idle_state, rooms);
                    if running.is_some() { Step::Go } else { Step::Stop }
                }
                next = ws.next(), if running.is_none() => {
                    beat.last_read = Instant::now();
                    on_frame(node, next, &mut idle_state, &mut running, closer).into()
                }
            };
            let flow = match step {
                Step::Go => Flow::Go,
                Step::Stop => Flow::Stop,
                Step::Tick => {
                    // The ping and the warning go straight to the socket, not through the
                    // outbox: neither answers a command, so neither has a place in the order
                    // of replies. Boxed, like the outbox's write: rare (a ping per interval),
                    // and unboxed their state would size every connection's task.
                    let flow = match on_timer(&mut beat, closer) {
                        Due::Nothing => Flow::Go,
                        Due::Close => Flow::Stop,
                        Due::Ping => {
                            let ping = Bytes::new();
                            Box::pin(send_due(&mut ws, wire::PING, ping, closer, closed.as_mut()))
                                .await
                        }
                        Due::Warning { in_ms } => {
                            let warning = protocol::token_expiring(in_ms).into_utf8_bytes();
                            let warning = Bytes::from(warning);
                            Box::pin(send_due(
                                &mut ws,
                                wire::TEXT,
                                warning,
                                closer,
                                closed.as_mut(),
                            ))
                            .await
                        }
                    };
                    timer.as_mut().reset(beat.deadline());
                    flow
                }
                Step::Hold => {
                    // Frames wait for the window's end: the one timer comes back for them.
                    beat.holding = true;
                    timer.as_mut().reset(beat.deadline());
                    Flow::Go
                }
                Step::Write(received) => {
                    // Boxed: the write's state is the largest of the loop's, and unboxed it
                    // would size every connection's task for its whole life (128 bytes more);
                    // one allocation per flush (a syscall's worth of work), which coalescing
                    // makes rare under load.
                    let write =
                        on_outbox(node, &mut ws, &mut batch, received, closer, closed.as_mut());
                    let flow = Box::pin(write).await;
                    // The window starts when the write is done: what is queued from now on
                    // waits for its end, unless the connection stays quiet until then.
                    beat.holding = false;
                    let window = node.config().server.write_coalesce_ms;
                    if window > 0 {
                        beat.window_end = Some(Instant::now() + Duration::from_millis(window));
                    }
                    flow
                }
            };
            if matches!(flow, Flow::Stop) {
                break;
            }
        }

        // Boxed: it runs once, at the end, and its state (a whole session) would otherwise
        // size every connection's future.
        Box::pin(finish(node, &mut ws, running, idle_state, &outbox)).await;
        drop(keep);
    }
}

/// The loop is over: let a command under way finish, write what is still queued, close the
/// WebSocket and take the connection out of the node.
async fn finish(
    node: &Node,
    ws: &mut WebSocketStream<ClientSocket>,
    running: Option<Running<'_>>,
    idle_state: Option<(Session, MessageRate)>,
    outbox: &OutboxReceiver,
) {
    let closer = outbox.closer();
    // A command under way finishes first (each is bounded by its own timeouts): its session
    // is what the node needs to take the connection out of its rooms.
    let session = match running {
        Some(command) => Some(command.await.0),
        None => idle_state.map(|(session, _)| session),
    };
    // What was queued before the close still goes out first (the coalescing window may
    // have held it), except to a client too slow to take what it had, or one that is gone or
    // closed first (nothing may follow the close tungstenite echoed to it).
    if !matches!(
        closer.reason(),
        Some(Disconnect::SlowConsumer | Disconnect::PeerGone)
    ) {
        write_queued(node, ws, outbox).await;
    }
    close_handshake(
        ws,
        closer,
        outbox.take_close_text(),
        Duration::from_millis(node.config().limits.close_timeout_ms),
    )
    .await;
    close(node, session).await;
}

/// Write what the outbox still holds, within `limits.close_timeout_ms`.
async fn write_queued(
    node: &Node,
    ws: &mut WebSocketStream<ClientSocket>,
    outbox: &OutboxReceiver,
) {
    let close_timeout = Duration::from_millis(node.config().limits.close_timeout_ms);
    let queued = std::iter::from_fn(|| outbox.try_recv().ok());
    let _ = tokio::time::timeout(close_timeout, write_frames(node, ws, queued)).await;
    count_compressed(node, ws);
}

/// Count the compressed frames the last writes sent into the metric, once per write.
fn count_compressed(node: &Node, ws: &mut WebSocketStream<ClientSocket>) {
    let compressed = ws.get_mut().take_compressed_sent();
    if compressed > 0 {
        node.metrics().compressed_deliveries.inc_by(compressed);
    }
}

/// The connection is over: take it out of the node and count why it closed.
async fn close(node: &Node, session: Option<Session>) {
    let Some(mut session) = session else {
        // Only a bug could lose it; the node keeps the connection in its tables then.
        error!("a connection ended without its session");
        node.metrics().disconnected(Disconnect::Internal);
        return;
    };
    node.close_session(&mut session).await;
    let reason = session
        .outbox
        .closer()
        .reason()
        .unwrap_or(Disconnect::PeerGone);
    node.metrics().disconnected(reason);
    debug!(reason = reason.label(), "connection closed");
}

/// What woke the connection loop, decided inside its select: go on, stop, or a write to make.
enum Step {
    Go,
    Stop,
    Tick,
    /// Frames are queued within the coalescing window: arm the timer for its end.
    Hold,
    Write(usize),
}

impl From<Flow> for Step {
    fn from(flow: Flow) -> Step {
        match flow {
            Flow::Go => Step::Go,
            Flow::Stop => Step::Stop,
        }
    }
}

/// The backend changed the connection's server rooms: apply them between two commands, like
/// one (the session is the task's alone meanwhile); `None` when the session is gone.
fn apply_server_rooms<'a>(
    node: &'a Node,
    idle_state: &mut Option<(Session, MessageRate)>,
    rooms: Vec<ServerRoom>,
) -> Option<Running<'a>> {
    let (mut session, rate) = idle_state.take()?;
    Some(Box::pin(async move {
        node.apply_server_rooms(&mut session, rooms).await;
        (session, rate)
    }))
}

/// Whether the connection loop goes on.
enum Flow {
    Go,
    Stop,
}

/// Send the ping or the token warning the timer said is due.
async fn send_due<F>(
    ws: &mut WebSocketStream<ClientSocket>,
    first_byte: u8,
    payload: Bytes,
    closer: &Closer,
    closed: Pin<&mut F>,
) -> Flow
where
    F: Future<Output = ()>,
{
    let write = std::pin::pin!(wire::write_one(ws, first_byte, &payload));
    write_unless_closed(write, closer, closed).await
}

/// Wait for a write unless the connection closes first; a failed write means the peer is gone.
/// The write is pinned by the caller, so its future is stored once, in the caller's.
async fn write_unless_closed<F>(
    write: Pin<&mut impl Future<Output = Result<(), WsError>>>,
    closer: &Closer,
    closed: Pin<&mut F>,
) -> Flow
where
    F: Future<Output = ()>,
{
    let written = tokio::select! {
        biased;
        _ = closed => return Flow::Stop,
        written = write => written,
    };
    if written.is_err() {
        closer.close(Disconnect::PeerGone);
        return Flow::Stop;
    }
    Flow::Go
}

/// Frames came out of the outbox: write them in one flush (0 received: the outbox is gone).
async fn on_outbox<F>(
    node: &Node,
    ws: &mut WebSocketStream<ClientSocket>,
    batch: &mut Vec<Frame>,
    received: usize,
    closer: &Closer,
    closed: Pin<&mut F>,
) -> Flow
where
    F: Future<Output = ()>,
{
    if received == 0 {
        return Flow::Stop;
    }
    {
        let write = std::pin::pin!(write_frames(node, ws, batch.drain(..)));
        if let Flow::Stop = write_unless_closed(write, closer, closed).await {
            return Flow::Stop;
        }
    }
    count_compressed(node, ws);
    if batch.capacity() > IDLE_BATCH_CAPACITY {
        batch.shrink_to(IDLE_BATCH_CAPACITY);
    }
    Flow::Go
}

/// Write `frames` in order, in writes of `server.write_buffer_bytes`, the last one at the end.
async fn write_frames(
    node: &Node,
    ws: &mut WebSocketStream<ClientSocket>,
    frames: impl Iterator<Item = Frame>,
) -> Result<(), WsError> {
    let write_at = node.config().server.write_buffer_bytes;
    for frame in frames {
        let (first_byte, payload) = wire_form(node, ws.get_mut(), frame);
        wire::push(ws, first_byte, &payload, write_at).await?;
    }
    wire::write_unsent(ws).await
}

/// A frame as it goes on the wire, as the first byte of its header and its payload: compressed
/// when the connection negotiated it, the frame is at least `server.compression_min_bytes`
/// long, and compressing shrinks it.
fn wire_form(node: &Node, socket: &mut ClientSocket, frame: Frame) -> (u8, Bytes) {
    if socket.deflates() && frame.text().len() >= node.config().server.compression_min_bytes {
        let (payload, computed) = frame.compressed();
        if computed {
            node.metrics().frames_compressed.inc();
        }
        if let Some(payload) = payload {
            socket.count_compressed();
            return (wire::TEXT_COMPRESSED, payload);
        }
    }
    (wire::TEXT, Bytes::from(frame.into_utf8_bytes()))
}

/// The client sent something (or the socket ended). A text frame starts a command, which
/// takes the session until it is done; anything else is handled here and now.
fn on_frame<'a>(
    node: &'a Node,
    next: Option<Result<Message, WsError>>,
    idle_state: &mut Option<(Session, MessageRate)>,
    running: &mut Option<Running<'a>>,
    closer: &Closer,
) -> Flow {
    let Some((mut session, mut rate)) = idle_state.take() else {
        return Flow::Stop;
    };
    match next {
        None => closer.close(Disconnect::PeerGone),
        Some(Err(err)) => closer.close(classify(&err)),
        Some(Ok(Message::Text(text))) => {
            // Boxed: the command futures (join, publish) are large, and an idle connection
            // should not carry their space while it waits.
            *running = Some(Box::pin(async move {
                handle_text(node, &mut session, &mut rate, text.as_str()).await;
                (session, rate)
            }));
            return Flow::Go;
        }
        Some(Ok(Message::Binary(_))) => {
            if check_rate(node, &session, &mut rate, None) {
                node.metrics().received(CommandKind::Invalid);
                let err = CommandError::bad_request("binary frames are not supported");
                reply_error(node, &session, &err, None);
            }
        }
        Some(Ok(Message::Close(_))) => {
            // tungstenite queued the close reply; the drain in `close_handshake` flushes it.
            closer.close(Disconnect::PeerGone);
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
    }
    *idle_state = Some((session, rate));
    if closer.is_closing() {
        Flow::Stop
    } else {
        Flow::Go
    }
}

/// Send our close frame when the reason has a code, then wait briefly for the peer's side of
/// the close handshake (or flush our reply to theirs).
async fn close_handshake<S>(
    ws: &mut WebSocketStream<S>,
    closer: &Closer,
    text: Option<Box<str>>,
    close_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(reason) = closer.reason().filter(|r| r.close_code().is_some()) {
        let mut frame = close_frame(reason);
        if let Some(text) = text {
            // The backend's own words (`/api/disconnect` `reason`), checked to fit a frame.
            frame.reason = String::from(text).into();
        }
        let _ = tokio::time::timeout(close_timeout, ws.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(close_timeout, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Let the kernel send what the listener's `TCP_CORK` held back. Failing leaves the data to
/// the kernel's 200 ms cork ceiling: later, not lost.
fn uncork(ws: &WebSocketStream<ClientSocket>) {
    if let Err(err) = socket2::SockRef::from(ws.get_ref().tcp()).set_tcp_cork(false) {
        debug!(%err, "cannot uncork the socket");
    }
}

/// Map a read error to why the connection ends.
fn classify(err: &WsError) -> Disconnect {
    match err {
        WsError::Capacity(_) => Disconnect::TooLarge,
        WsError::Utf8(_) => Disconnect::InvalidUtf8,
        WsError::Protocol(_) | WsError::AttackAttempt => Disconnect::ProtocolError,
        WsError::Io(err) => match InflateError::of(err) {
            Some(InflateError::TooLarge) => Disconnect::TooLarge,
            Some(InflateError::Corrupt) => Disconnect::ProtocolError,
            None => Disconnect::PeerGone,
        },
        _ => Disconnect::PeerGone,
    }
}

fn close_frame(reason: Disconnect) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(reason.close_code().unwrap_or(1000)),
        reason: reason.reason().into(),
    }
}
