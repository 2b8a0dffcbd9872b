//! The per-connection bounded outbox and close signal.
//!
//! Producers (the hub fanning out, the connection's own reader replying) hold an [`Outbox`];
//! the connection's writer holds the [`OutboxReceiver`]. A full outbox never waits: it closes the
//! connection as a slow consumer (1013). A frame offered with a [`ConflationKey`] (a conflated
//! room's keyed message) instead replaces the frame of the same key still queued, in its place.
//! What is written to the socket, and when, is the connection's business; the outbox only
//! carries its decision to hold frames for write coalescing (`server.write_coalesce_ms`):
//! while it holds, a queued frame does not wake it, unless the frame is a reply to the
//! client's own command ([`Outbox::reply`]). Which rooms are conflated is the node's.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio::time::Instant;

use futures_util::task::AtomicWaker;

use crate::protocol::{Disconnect, Frame, RoomName};

/// Node-local connection number; `conn_id` on the wire is derived from it.
pub type ConnId = u64;

/// Why and whether a connection is closing. The first reason wins.
///
/// An atomic and one waker rather than a `CancellationToken`: the connection's loop checks it
/// on every turn, and a token locks its tree node's mutex for each check; a token also costs
/// an allocation per connection. Only the connection's own task waits on [`Closer::closed`].
#[derive(Debug, Default)]
pub struct Closer {
    /// 0 while open, else `Disconnect::to_u8` of the first reason.
    reason: AtomicU8,
    waiter: AtomicWaker,
}

impl Closer {
    /// Ask the connection to close for `reason`; later reasons are ignored.
    pub fn close(&self, reason: Disconnect) {
        let _ =
            self.reason
                .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire);
        self.waiter.wake();
    }

    pub fn reason(&self) -> Option<Disconnect> {
        Disconnect::from_u8(self.reason.load(Ordering::Acquire))
    }

    pub fn is_closing(&self) -> bool {
        self.reason.load(Ordering::Acquire) != 0
    }

    /// Resolves once [`Closer::close`] has been called. For the connection's own task only: a
    /// second task waiting at the same time would take the first one's place.
    pub fn closed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.is_closing() {
                return Poll::Ready(());
            }
            self.waiter.register(cx.waker());
            // A close between the check and the registration woke nobody: look again.
            if self.is_closing() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// The queue behind one connection's outbox. A plain locked `VecDeque` rather than a tokio
/// channel: an idle connection holds no queue memory at all (a bounded mpsc allocates its
/// first block of 32 slots up front, a kilobyte per connection), and the lock is held only
/// to push one frame or to take a batch.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    /// Here rather than in an `Arc` of its own: one allocation per connection, and the writer
    /// checks it on the cache lines it touches anyway.
    closer: Closer,
    /// Live `Outbox` handles; the receiver sees the end of the stream when it reaches 0.
    senders: AtomicUsize,
}

#[derive(Debug, Default)]
struct QueueState {
    frames: VecDeque<Frame>,
    /// The writer waiting for a frame.
    waiter: Option<Waker>,
    receiver_gone: bool,
    /// The writer holds its frames until its coalescing window ends (and comes back for them
    /// by its own timer): a frame queued meanwhile does not wake it.
    held: bool,
    /// A reply to the client's own command is queued: the writer takes everything at once,
    /// window or not.
    urgent: bool,
    /// What the backend asked of this connection, and its conflation state; boxed, so a
    /// connection that the backend never steers and that is in no conflated room pays one
    /// pointer.
    control: Option<Box<Steering>>,
}

/// The backend's requests to one connection, and (in the same box, as rare) its conflation
/// state.
#[derive(Debug, Default)]
struct Steering {
    /// The close frame's reason when the backend gave one (`/api/disconnect`).
    close_text: Option<Box<str>>,
    /// Rooms to join or leave (server subscriptions), for the connection's task to apply
    /// between two commands.
    server_rooms: Vec<ServerRoom>,
    /// Made at the first keyed frame: where each key's frame sits in the queue.
    conflation: Option<Conflation>,
}

/// What identifies a conflated frame: its room and key, as one string `ROOM\nKEY` (a room
/// name holds no `\n`, so two pairs never share one). Made once per delivery and shared by
/// every member's outbox.
pub type ConflationKey = Arc<str>;

/// The conflation key of a keyed message in `room`.
pub fn conflation_key(room: &str, key: &str) -> ConflationKey {
    let mut joined = String::with_capacity(room.len() + 1 + key.len());
    joined.push_str(room);
    joined.push('\n');
    joined.push_str(key);
    Arc::from(joined)
}

/// Frames are numbered as they are pushed; the queue's front is number `taken`, so a number
/// at or above it is still queued, at index `number - taken`. Frames only leave from the
/// front and a replaced frame keeps its place, so the indexes stay true.
#[derive(Debug, Default)]
struct Conflation {
    taken: u64,
    pushed: u64,
    /// The number of the last frame pushed for each key; below `taken`: already taken.
    pending: HashMap<ConflationKey, u64>,
}

impl Conflation {
    fn took(&mut self, n: usize, now_empty: bool) {
        if now_empty {
            // Every number is stale: start over, keeping the table's memory for the next burst
            // unless it grew large.
            self.taken = 0;
            self.pushed = 0;
            self.pending.clear();
            if self.pending.capacity() > IDLE_QUEUE_CAPACITY * 4 {
                self.pending.shrink_to(IDLE_QUEUE_CAPACITY);
            }
        } else {
            self.taken += n as u64;
        }
    }
}

/// A server subscription change for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerRoom {
    Join(RoomName),
    Leave(RoomName),
}

impl Queue {
    /// Queued frames that end a coalescing hold: half the capacity, so that a burst is written
    /// before it could fill the outbox and close the connection as a slow consumer.
    fn hold_limit(&self) -> usize {
        (self.capacity / 2).max(1)
    }

    fn state(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a queue keeps between bursts: a connection that has gone quiet gives the rest back.
const IDLE_QUEUE_CAPACITY: usize = 8;

/// The sending side, cheap to clone into the hub's room and user tables.
#[derive(Debug)]
pub struct Outbox {
    conn: ConnId,
    queue: Arc<Queue>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.queue.senders.fetch_add(1, Ordering::Relaxed);
        Outbox {
            conn: self.conn,
            queue: self.queue.clone(),
        }
    }
}

impl std::ops::Drop for Outbox {
    fn drop(&mut self) {
        if self.queue.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waiter = self.queue.state().waiter.take();
            if let Some(waker) = waiter {
                waker.wake();
            }
        }
    }
}

/// Result of offering a frame to an outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// A frame with the same conflation key was still queued: the new one took its place,
    /// the old one will never be sent.
    Replaced,
    /// The outbox was full: the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is already gone or closing.
    Closed,
}

impl Outbox {
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    pub fn closer(&self) -> &Closer {
        &self.queue.closer
    }

    /// Close for `reason` with the close frame's reason text `text` instead of the
    /// reason's own (when this is the first reason).
    pub fn close_with(&self, reason: Disconnect, text: Option<&str>) {
        {
            let mut state = self.queue.state();
            if !self.queue.closer.is_closing()
                && let Some(text) = text
            {
                state.control.get_or_insert_default().close_text = Some(Box::from(text));
            }
        }
        self.queue.closer.close(reason);
    }

    /// Ask the connection to join or leave a room on the backend's behalf.
    pub fn server_room(&self, change: ServerRoom) {
        let mut state = self.queue.state();
        if state.receiver_gone {
            return;
        }
        state
            .control
            .get_or_insert_default()
            .server_rooms
            .push(change);
        // The same waiter as frames': the connection's one task polls both (`server_rooms`).
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    /// Queue a frame without waiting. A full queue closes the connection with 1013.
    pub fn offer(&self, frame: Frame) -> Offer {
        self.push(frame, false)
    }

    /// Queue a reply to the client's own command (an ack, an error, `joined`, a pong): like
    /// [`Outbox::offer`], but the writer takes it at once, never holding it for coalescing.
    pub fn reply(&self, frame: Frame) -> Offer {
        self.push(frame, true)
    }

    fn push(&self, frame: Frame, urgent: bool) -> Offer {
        let mut state = self.queue.state();
        if state.receiver_gone {
            return Offer::Closed;
        }
        if state.frames.len() >= self.queue.capacity {
            drop(state);
            return self.overflow();
        }
        state.frames.push_back(frame);
        state.urgent |= urgent;
        if let Some(conflation) = state.control.as_mut().and_then(|c| c.conflation.as_mut()) {
            conflation.pushed += 1;
        }
        // A holding writer comes back by its own timer: waking it per frame would only cost.
        let waiter = if state.held && !urgent && state.frames.len() < self.queue.hold_limit() {
            None
        } else {
            state.waiter.take()
        };
        drop(state);
        if let Some(waker) = waiter {
            waker.wake();
        }
        Offer::Queued
    }

    /// The queue is full: close the connection as a slow consumer (1013), unless it is
    /// closing already. Called without the queue's lock.
    fn overflow(&self) -> Offer {
        let closer = &self.queue.closer;
        if closer.is_closing() {
            return Offer::Closed;
        }
        closer.close(Disconnect::SlowConsumer);
        Offer::Overflowed
    }

    /// [`Outbox::offer_keyed`] when `key` is given, else [`Outbox::offer`].
    pub fn offer_with(&self, frame: Frame, key: Option<&ConflationKey>) -> Offer {
        match key {
            Some(key) => self.offer_keyed(frame, key),
            None => self.offer(frame),
        }
    }

    /// Queue a conflated room's keyed frame: it replaces, in its place in the queue, the
    /// frame of the same key that is still waiting to be written (never closing the
    /// connection for it); with none waiting it is queued as [`Outbox::offer`] does, taking a
    /// place (a full queue still closes with 1013).
    pub fn offer_keyed(&self, frame: Frame, key: &ConflationKey) -> Offer {
        let mut guard = self.queue.state();
        let state = &mut *guard;
        if state.receiver_gone {
            return Offer::Closed;
        }
        let queued = state.frames.len();
        let conflation = state
            .control
            .get_or_insert_default()
            .conflation
            .get_or_insert_with(|| Conflation {
                // The frames already queued hold the numbers before this one.
                pushed: queued as u64,
                ..Conflation::default()
            });
        if let Some(&number) = conflation.pending.get(key)
            && number >= conflation.taken
            && let Some(slot) = state.frames.get_mut((number - conflation.taken) as usize)
        {
            // The writer was woken when the replaced frame was queued.
            *slot = frame;
            return Offer::Replaced;
        }
        if queued >= self.queue.capacity {
            drop(guard);
            return self.overflow();
        }
        state.frames.push_back(frame);
        conflation.pending.insert(key.clone(), conflation.pushed);
        conflation.pushed += 1;
        // Stale numbers (frames already taken) are dropped when the queue empties; a queue
        // that never quite empties drops them here, so the table stays within twice the queue.
        if conflation.pending.len() > self.queue.capacity.saturating_mul(2) {
            let taken = conflation.taken;
            conflation.pending.retain(|_, number| *number >= taken);
        }
        // As in `push`: a holding writer comes back by its own timer.
        let waiter = if state.held && state.frames.len() < self.queue.hold_limit() {
            None
        } else {
            state.waiter.take()
        };
        drop(guard);
        if let Some(waker) = waiter {
            waker.wake();
        }
        Offer::Queued
    }
}

/// What the writer got from [`OutboxReceiver::recv_coalesced`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// This many frames were moved into the batch.
    Frames(usize),
    /// Frames are queued, but the coalescing window has not ended: the writer arms its timer
    /// for the window's end and comes back then (a reply wakes it before). Said once per hold.
    Hold,
    /// Every sender is gone.
    End,
}

/// The empty outbox, from [`OutboxReceiver::try_recv`].
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

/// The connection writer's side of the outbox.
#[derive(Debug)]
pub struct OutboxReceiver {
    queue: Arc<Queue>,
}

impl OutboxReceiver {
    pub fn closer(&self) -> &Closer {
        &self.queue.closer
    }

    /// Wait for frames and move up to `max` of them into `batch`. 0: every sender is gone.
    /// Never holds (see [`OutboxReceiver::recv_coalesced`]).
    pub async fn recv_many(&self, batch: &mut Vec<Frame>, max: usize) -> usize {
        match self.recv_coalesced(batch, max, None).await {
            Received::Frames(n) => n,
            // Without a window there is no hold.
            Received::Hold | Received::End => 0,
        }
    }

    /// Wait for frames and move up to `max` of them into `batch`.
    ///
    /// `hold_until` is the end of the writer's coalescing window: before it, queued frames
    /// stay queued ([`Received::Hold`]) unless a reply is among them or they fill half the
    /// outbox.
    pub async fn recv_coalesced(
        &self,
        batch: &mut Vec<Frame>,
        max: usize,
        hold_until: Option<Instant>,
    ) -> Received {
        std::future::poll_fn(|cx| {
            let mut state = self.queue.state();
            if state.frames.is_empty() {
                if self.queue.senders.load(Ordering::Acquire) == 0 {
                    return Poll::Ready(Received::End);
                }
                match &state.waiter {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => state.waiter = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            if !state.urgent
                && state.frames.len() < self.queue.hold_limit()
                && hold_until.is_some_and(|until| Instant::now() < until)
            {
                // Registered still: a reply (or the end of every sender) must wake it.
                match &state.waiter {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => state.waiter = Some(cx.waker().clone()),
                }
                if state.held {
                    return Poll::Pending;
                }
                state.held = true;
                return Poll::Ready(Received::Hold);
            }
            state.held = false;
            let n = state.frames.len().min(max);
            batch.extend(state.frames.drain(..n));
            let empty = state.frames.is_empty();
            if empty {
                state.urgent = false;
                if state.frames.capacity() > IDLE_QUEUE_CAPACITY {
                    state.frames.shrink_to(IDLE_QUEUE_CAPACITY);
                }
            }
            if let Some(conflation) = state.control.as_mut().and_then(|c| c.conflation.as_mut()) {
                conflation.took(n, empty);
            }
            Poll::Ready(Received::Frames(n))
        })
        .await
    }

    /// Wait for server subscription changes and take them all, in order. It shares the
    /// frames' waiter slot: poll it from the task that polls [`OutboxReceiver::recv_many`].
    pub async fn server_rooms(&self) -> Vec<ServerRoom> {
        std::future::poll_fn(|cx| {
            let mut state = self.queue.state();
            match state.control.as_mut() {
                Some(control) if !control.server_rooms.is_empty() => {
                    Poll::Ready(std::mem::take(&mut control.server_rooms))
                }
                _ => {
                    state.waiter = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The reason text given with [`Outbox::close_with`], if any.
    pub fn take_close_text(&self) -> Option<Box<str>> {
        self.queue
            .state()
            .control
            .as_mut()
            .and_then(|c| c.close_text.take())
    }

    /// The next frame, if one is queued.
    pub fn try_recv(&self) -> Result<Frame, Empty> {
        let mut state = self.queue.state();
        let frame = state.frames.pop_front().ok_or(Empty)?;
        let empty = state.frames.is_empty();
        if let Some(conflation) = state.control.as_mut().and_then(|c| c.conflation.as_mut()) {
            conflation.took(1, empty);
        }
        Ok(frame)
    }
}

impl std::ops::Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut state = self.queue.state();
        state.receiver_gone = true;
        state.frames.clear();
    }
}

/// A new outbox holding at most `capacity` frames.
pub fn outbox(conn: ConnId, capacity: usize) -> (Outbox, OutboxReceiver) {
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState::default()),
        capacity: capacity.max(1),
        closer: Closer::default(),
        senders: AtomicUsize::new(1),
    });
    (
        Outbox {
            conn,
            queue: queue.clone(),
        },
        OutboxReceiver { queue },
    )
}

#[cfg(test)]
mod tests;
