//! The per-connection bounded outbox and close signal.
//!
//! Producers (the hub fanning out, the connection's own reader replying) hold an [`Outbox`];
//! the connection's writer holds the [`OutboxReceiver`]. A full outbox never waits: it closes the
//! connection as a slow consumer (1013). What is written to the socket, and when, is the
//! connection's business.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Disconnect, Frame};

/// Node-local connection number; `conn_id` on the wire is derived from it.
pub type ConnId = u64;

/// Why and whether a connection is closing. The first reason wins.
#[derive(Debug, Default)]
pub struct Closer {
    reason: AtomicU8,
    token: CancellationToken,
}

impl Closer {
    /// Ask the connection to close for `reason`; later reasons are ignored.
    pub fn close(&self, reason: Disconnect) {
        let _ =
            self.reason
                .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<Disconnect> {
        Disconnect::from_u8(self.reason.load(Ordering::Acquire))
    }

    pub fn is_closing(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once [`Closer::close`] has been called.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }
}

/// The sending side, cheap to clone into the hub's room and user tables.
#[derive(Clone, Debug)]
pub struct Outbox {
    conn: ConnId,
    tx: mpsc::Sender<Frame>,
    closer: Arc<Closer>,
}

/// Result of offering a frame to an outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The outbox was full: the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is already gone or closing.
    Closed,
}

impl Outbox {
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    pub fn closer(&self) -> &Arc<Closer> {
        &self.closer
    }

    /// Queue a frame without waiting. A full queue closes the connection with 1013.
    pub fn offer(&self, frame: Frame) -> Offer {
        match self.tx.try_send(frame) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.closer.is_closing() {
                    Offer::Closed
                } else {
                    self.closer.close(Disconnect::SlowConsumer);
                    Offer::Overflowed
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

pub struct OutboxReceiver {
    pub rx: mpsc::Receiver<Frame>,
    pub closer: Arc<Closer>,
}

/// A new outbox holding at most `capacity` frames.
pub fn outbox(conn: ConnId, capacity: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let closer = Arc::new(Closer::default());
    (
        Outbox {
            conn,
            tx,
            closer: closer.clone(),
        },
        OutboxReceiver { rx, closer },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_outbox_closes_as_slow_consumer() {
        let (tx, rx) = outbox(1, 2);
        assert_eq!(tx.offer(Frame::plain_pong()), Offer::Queued);
        assert_eq!(tx.offer(Frame::plain_pong()), Offer::Queued);
        assert_eq!(tx.offer(Frame::plain_pong()), Offer::Overflowed);
        assert_eq!(rx.closer.reason(), Some(Disconnect::SlowConsumer));
        assert_eq!(tx.offer(Frame::plain_pong()), Offer::Closed);
    }

    #[test]
    fn first_close_reason_wins() {
        let (tx, _rx) = outbox(1, 2);
        tx.closer().close(Disconnect::TooLarge);
        tx.closer().close(Disconnect::Idle);
        assert_eq!(tx.closer().reason(), Some(Disconnect::TooLarge));
    }
}
