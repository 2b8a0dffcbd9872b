//! The cluster's subscriber connections: one [`Link`] per master (TCP, AUTH, a reader task
//! handing every reply to the cluster task in order), the [`LinkSet`] of one connected spell
//! with the subscriptions on it, and why a spell ends ([`ClusterError`]).
//!
//! Leaves to others: what to subscribe where and when (the cluster task), parsing replies
//! (`resp`), the slot map (`slots`).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Duration;

use redis::ConnectionInfo;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, info_span};

use super::resp::{Resp, read_reply};
use super::slots::{SlotMap, SlotMapError, key_slot};
use crate::broker::redis::commands::sharded;
use crate::broker::redis::reconnect::Channel;
use crate::broker::redis::subscriptions::Subscriptions;

/// Replies read from the links, waiting for the task: the links stop reading when it is full.
pub(crate) const INCOMING_QUEUE: usize = 1024;

/// Why the cluster's links could not be made or were lost: every one is rebuilt.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{addr}: {during} timed out")]
    TimedOut { addr: String, during: &'static str },
    #[error("{addr}: AUTH refused: {reply}")]
    AuthRefused { addr: String, reply: String },
    #[error("{addr}: connection closed")]
    Closed { addr: String },
    #[error("{addr}: {reply}")]
    ClusterBusy { addr: String, reply: String },
    #[error("{addr}: PING: {reply}")]
    PingRefused { addr: String, reply: String },
    #[error("{addr} did not answer PING within {limit:?}")]
    PingLost { addr: String, limit: Duration },
    #[error("{pending} subscriptions not confirmed within {limit:?}")]
    NotConfirmed { pending: usize, limit: Duration },
    #[error("{0} dropped a channel of a slot it still owns")]
    DroppedOwnSlot(String),
    #[error("every link closed")]
    AllClosed,
    #[error("cannot read the slot map")]
    SlotMap(#[from] SlotMapError),
}

/// Whether a channel is a shard channel (`SSUBSCRIBE` on its slot's owner) or one every shard
/// carries (`SUBSCRIBE` anywhere).
pub(crate) fn is_shard_channel(kind: &Channel) -> bool {
    matches!(kind, Channel::Messages(target) if sharded(target))
}

/// What a link sent and still waits an answer for, in order.
#[derive(Debug)]
pub(crate) enum Sent {
    Subscribe(String),
    Unsubscribe(String),
    Ping,
}

pub(crate) enum Incoming {
    Reply(Resp),
    Closed(io::Error),
}

/// One subscriber connection to one master.
pub(crate) struct Link {
    writer: OwnedWriteHalf,
    /// Commands queued since the last flush.
    out: Vec<u8>,
    pub(crate) sent: VecDeque<(Sent, Instant)>,
    pub(crate) last_activity: Instant,
    pub(crate) ping: Option<Instant>,
    /// Stops the task that reads this link.
    _reader: DropGuard,
}

impl Link {
    pub(crate) fn queue(&mut self, command: &redis::Cmd, sent: Sent) {
        self.out.extend_from_slice(&command.get_packed_command());
        self.sent.push_back((sent, Instant::now()));
    }
}

/// The links of one connected spell, and what is subscribed on them.
pub(crate) struct LinkSet {
    pub(crate) slots: SlotMap,
    /// The link that carries the classic subscriptions: the owner of slot 0.
    pub(crate) classic: String,
    pub(crate) links: HashMap<String, Link>,
    pub(crate) link_addr: HashMap<u64, String>,
    incoming_tx: mpsc::Sender<(u64, Incoming)>,
    pub(crate) incoming: mpsc::Receiver<(u64, Incoming)>,
    /// Live, subscribing and releasing channels, and the link each live one is on.
    pub(crate) subscriptions: Subscriptions<String>,
    /// Every channel wanted at the start is confirmed: the node heard `Up`.
    pub(crate) up: bool,
    pub(crate) started: Instant,
}

impl LinkSet {
    pub(crate) fn new(slots: SlotMap) -> LinkSet {
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        LinkSet {
            classic: slots.owner(0).to_owned(),
            slots,
            links: HashMap::new(),
            link_addr: HashMap::new(),
            incoming_tx,
            incoming,
            subscriptions: Subscriptions::default(),
            up: false,
            started: Instant::now(),
        }
    }

    /// The master whose link carries `channel`.
    pub(crate) fn owner(&self, channel: &str, kind: &Channel) -> String {
        if is_shard_channel(kind) {
            self.slots.owner(key_slot(channel.as_bytes())).to_owned()
        } else {
            self.classic.clone()
        }
    }

    /// Add a connected link to `addr`, read by its own task until the link is dropped.
    pub(crate) fn add(
        &mut self,
        id: u64,
        addr: &str,
        (reader, writer): (BufReader<OwnedReadHalf>, OwnedWriteHalf),
        stop: &CancellationToken,
    ) {
        let reader_stop = stop.child_token();
        let reading = read_link(id, reader, self.incoming_tx.clone(), reader_stop.clone());
        tokio::spawn(reading.instrument(info_span!("pubsub", link = %addr)));
        self.link_addr.insert(id, addr.to_owned());
        self.links.insert(
            addr.to_owned(),
            Link {
                writer,
                out: Vec::new(),
                sent: VecDeque::new(),
                last_activity: Instant::now(),
                ping: None,
                _reader: reader_stop.drop_guard(),
            },
        );
    }

    /// Write everything queued on every link.
    pub(crate) async fn flush(&mut self, limit: Duration) -> Result<(), ClusterError> {
        for (addr, link) in &mut self.links {
            if link.out.is_empty() {
                continue;
            }
            let out = std::mem::take(&mut link.out);
            match timeout(limit, link.writer.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    return Err(ClusterError::Io {
                        addr: addr.clone(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(ClusterError::TimedOut {
                        addr: addr.clone(),
                        during: "write",
                    });
                }
            }
        }
        Ok(())
    }
}

/// Connect to `addr` and authenticate with the seed's credentials.
pub(crate) async fn connect(
    addr: &str,
    seed_info: &ConnectionInfo,
    limit: Duration,
) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), ClusterError> {
    let io_error = |source| ClusterError::Io {
        addr: addr.to_owned(),
        source,
    };
    let connecting = async {
        let stream = TcpStream::connect(addr).await.map_err(io_error)?;
        stream.set_nodelay(true).map_err(io_error)?;
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let settings = seed_info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            write
                .write_all(&auth.get_packed_command())
                .await
                .map_err(io_error)?;
            match read_reply(&mut reader).await.map_err(io_error)? {
                Resp::Simple(_) => {}
                Resp::Error(reply) => {
                    return Err(ClusterError::AuthRefused {
                        addr: addr.to_owned(),
                        reply,
                    });
                }
                _ => {
                    return Err(ClusterError::AuthRefused {
                        addr: addr.to_owned(),
                        reply: "an unexpected reply".to_owned(),
                    });
                }
            }
        }
        Ok((reader, write))
    };
    timeout(limit, connecting).await.unwrap_or_else(|_| {
        Err(ClusterError::TimedOut {
            addr: addr.to_owned(),
            during: "connect",
        })
    })
}

/// Read a link until it fails or is dropped, handing every reply to the task in order.
async fn read_link(
    id: u64,
    mut reader: BufReader<OwnedReadHalf>,
    to: mpsc::Sender<(u64, Incoming)>,
    stop: CancellationToken,
) {
    loop {
        let reply = tokio::select! {
            _ = stop.cancelled() => return,
            reply = read_reply(&mut reader) => reply,
        };
        let incoming = match reply {
            Ok(reply) => Incoming::Reply(reply),
            Err(err) => {
                let _ = to.send((id, Incoming::Closed(err))).await;
                return;
            }
        };
        if to.send((id, incoming)).await.is_err() {
            return;
        }
    }
}
