//! The pub/sub side of the Redis broker on a Redis Cluster (`redis.cluster = true`).
//!
//! Owns: the slot map as this node last read it (`CLUSTER SLOTS`); one subscriber connection
//! ("link") per master that owns a wanted channel's hash slot, on which room and user channels
//! are subscribed with `SSUBSCRIBE`, so that each publication travels only to its own shard;
//! the classic `SUBSCRIBE` of the channels every shard carries (the broadcast, presence events)
//! on the link to the owner of slot 0, which is always open and so also tells whether the
//! cluster is reachable; following a slot to its new owner when a shard answers `MOVED` or
//! drops a subscription itself (`SUNSUBSCRIBE`: slot migrated, master demoted), rebuilding
//! every link when one is lost (a killed master, a failover), each counted in
//! `roomcast_broker_resubscribes_total`; PING liveness on every link; the unsubscribe grace.
//!
//! Leaves to others: commands (publishes, function calls, presence writes) go through the
//! redis crate's cluster connection in [`super::redis`], which routes by key and follows
//! `MOVED` itself; that module also owns the channel kinds, backoff and event decoding this
//! task shares with the single-Redis one. Which channels are wanted is the node's business.
//!
//! The links speak RESP2 directly ([`read_reply`] is all the parsing they need): the redis
//! crate's pub/sub connection has no `SSUBSCRIBE`, and its cluster connection resubscribes out
//! of sight of the up/down state the node relies on for `unavailable` and catch-up.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::redis::{
    Channel, Command, Demand, Exit, MAX_BATCH, Reconnecting, Reply, Shared, Timings,
    load_functions, sharded,
};
use super::{BrokerError, BrokerEvent};
use crate::metrics::Resubscribe;

/// Hash slots of a Redis Cluster.
const SLOTS: u32 = 16384;
/// Longest bulk reply a link accepts (Redis's own limit for a value is 512 MiB).
const MAX_BULK_BYTES: usize = 64 << 20;
/// Longest header line of a reply (`*3`, `$1234`, an error message).
const MAX_LINE_BYTES: u64 = 64 << 10;
/// Replies read from the links, waiting for the task: the links stop reading when it is full.
const INCOMING_QUEUE: usize = 1024;

/// Which hash slot a key (or a shard channel) belongs to: CRC16 (XMODEM) of the key, or of its
/// hash tag (the part between the first `{` and the next `}`, when not empty), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    (u32::from(crc) % SLOTS) as u16
}

/// Whether a channel is a shard channel (`SSUBSCRIBE` on its slot's owner) or one every shard
/// carries (`SUBSCRIBE` anywhere).
fn is_shard_channel(kind: &Channel) -> bool {
    matches!(kind, Channel::Messages(target) if sharded(target))
}

/// The masters and the slot ranges they serve, sorted by first slot, covering every slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SlotMap(Vec<(u16, u16, String)>);

impl SlotMap {
    fn owner(&self, slot: u16) -> &str {
        let index = self.0.partition_point(|(start, _, _)| *start <= slot);
        // Coverage was checked when the map was read: slot lies in range index - 1.
        self.0
            .get(index.saturating_sub(1))
            .map_or("", |(_, _, addr)| addr.as_str())
    }

    fn masters(&self) -> Vec<String> {
        let mut masters: Vec<String> = self.0.iter().map(|(_, _, addr)| addr.clone()).collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// Parse a `CLUSTER SLOTS` answer from `queried` (whose host stands in for an empty one).
    fn parse(value: &Value, queried_host: &str) -> Result<SlotMap, String> {
        let Value::Array(ranges) = value else {
            return Err("CLUSTER SLOTS: not an array".into());
        };
        let mut map = Vec::with_capacity(ranges.len());
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err("CLUSTER SLOTS: a range is not an array".into());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err("CLUSTER SLOTS: a range lacks its bounds or master".into());
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => return Err("CLUSTER SLOTS: a master without a host".into()),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err("CLUSTER SLOTS: a master without a port".into());
            };
            let host = if host.is_empty() || host == "?" {
                queried_host.to_owned()
            } else {
                host
            };
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
                return Err("CLUSTER SLOTS: a slot out of range".into());
            };
            map.push((start, end, format!("{host}:{port}")));
        }
        map.sort();
        let mut next: u32 = 0;
        for (start, end, _) in &map {
            if u32::from(*start) != next || end < start {
                return Err(format!("CLUSTER SLOTS: slot {next} has no master"));
            }
            next = u32::from(*end) + 1;
        }
        if next != SLOTS {
            return Err(format!("CLUSTER SLOTS: slot {next} has no master"));
        }
        Ok(SlotMap(map))
    }
}

/// A RESP2 reply, as much of it as pub/sub needs (arrays of scalars).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Resp>),
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// One line without its CRLF.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    (&mut *reader)
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', &mut line)
        .await?;
    if line.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("a reply line without CRLF (or too long)"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_number(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("a malformed number"))
}

async fn read_scalar<R: AsyncBufRead + Unpin>(reader: &mut R, line: Vec<u8>) -> io::Result<Resp> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match line.first() {
        Some(b'+') => Ok(Resp::Simple(text(&line[1..]))),
        Some(b'-') => Ok(Resp::Error(text(&line[1..]))),
        Some(b':') => Ok(Resp::Int(parse_number(&line[1..])?)),
        Some(b'$') => {
            let len = parse_number(&line[1..])?;
            if len < 0 {
                return Ok(Resp::Nil);
            }
            let len = usize::try_from(len).map_err(|_| invalid("a bulk length"))?;
            if len > MAX_BULK_BYTES {
                return Err(invalid("a bulk reply over the size limit"));
            }
            let mut bulk = vec![0; len + 2];
            reader.read_exact(&mut bulk).await?;
            if !bulk.ends_with(b"\r\n") {
                return Err(invalid("a bulk reply without CRLF"));
            }
            bulk.truncate(len);
            Ok(Resp::Bulk(bulk))
        }
        _ => Err(invalid("an unexpected reply type")),
    }
}

/// Read one reply: a scalar, or an array of scalars (every pub/sub reply is one).
async fn read_reply<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Resp> {
    let line = read_line(reader).await?;
    if line.first() != Some(&b'*') {
        return read_scalar(reader, line).await;
    }
    let len = parse_number(&line[1..])?;
    if len < 0 {
        return Ok(Resp::Nil);
    }
    if len > 16 {
        return Err(invalid("an array longer than any pub/sub reply"));
    }
    let mut items = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let line = read_line(reader).await?;
        if line.first() == Some(&b'*') {
            return Err(invalid("a nested array"));
        }
        items.push(read_scalar(reader, line).await?);
    }
    Ok(Resp::Array(items))
}

/// What a link sent and still waits an answer for, in order.
#[derive(Debug)]
enum Sent {
    Subscribe(String),
    Unsubscribe(String),
    Ping,
}

enum Incoming {
    Reply(Resp),
    Closed(String),
}

/// One subscriber connection to one master.
struct Link {
    writer: OwnedWriteHalf,
    /// Commands queued since the last flush.
    out: Vec<u8>,
    sent: VecDeque<(Sent, Instant)>,
    last_activity: Instant,
    ping: Option<Instant>,
    /// Stops the task that reads this link.
    _reader: DropGuard,
}

impl Link {
    fn queue(&mut self, command: &redis::Cmd, sent: Sent) {
        self.out.extend_from_slice(&command.get_packed_command());
        self.sent.push_back((sent, Instant::now()));
    }
}

/// The links of one connected spell, and what is subscribed on them.
pub(super) struct Session {
    slots: SlotMap,
    /// The link that carries the classic subscriptions: the owner of slot 0.
    classic: String,
    links: HashMap<String, Link>,
    link_addr: HashMap<u64, String>,
    incoming_tx: mpsc::Sender<(u64, Incoming)>,
    incoming: mpsc::Receiver<(u64, Incoming)>,
    /// Channels confirmed, with their kind and the link they are on.
    live: HashMap<String, (Channel, String)>,
    /// Channels sent and not yet confirmed, with their kind and who waits for them.
    subscribing: HashMap<String, (Channel, Vec<Reply>)>,
    releasing: HashMap<String, Instant>,
    release_queue: VecDeque<(Instant, String)>,
    /// Every channel wanted at the start is confirmed: the node heard `Up`.
    up: bool,
    started: Instant,
}

impl Session {
    fn owner(&self, channel: &str, kind: &Channel) -> String {
        if is_shard_channel(kind) {
            self.slots.owner(key_slot(channel.as_bytes())).to_owned()
        } else {
            self.classic.clone()
        }
    }
}

/// The one task that owns every subscriber link to the cluster.
pub(super) struct ClusterPubSubTask {
    demand: Demand,
    /// The seeds as given, then the masters of the last map read.
    seeds: Vec<(String, u16)>,
    known: Vec<String>,
    /// Credentials of the first seed, used for every node.
    seed_info: ConnectionInfo,
    command_timeout: Duration,
    next_link_id: u64,
}

impl Reconnecting for ClusterPubSubTask {
    type Link = Session;

    fn demand(&mut self) -> &mut Demand {
        &mut self.demand
    }

    fn target(&self) -> String {
        format!("cluster via {} seed(s)", self.seeds.len())
    }

    async fn connect(&mut self) -> Result<Option<Session>, String> {
        self.open_session().await
    }

    async fn serve(&mut self, session: Session) -> Exit {
        self.serve_session(session).await
    }
}

impl ClusterPubSubTask {
    pub(super) fn new(
        shared: Arc<Shared>,
        seed_urls: &[String],
        events: mpsc::Sender<BrokerEvent>,
        commands: mpsc::Receiver<Command>,
        stop: CancellationToken,
        command_timeout: Duration,
        timings: Timings,
    ) -> Result<ClusterPubSubTask, BrokerError> {
        let mut seeds = Vec::new();
        let mut seed_info = None;
        for (i, url) in seed_urls.iter().enumerate() {
            // Errors name the key, never the URL (it may hold a password).
            let info = url.as_str().into_connection_info().map_err(|err| {
                BrokerError::Unavailable(format!(
                    "redis.urls[{i}] is not a usable Redis URL ({:?})",
                    err.kind()
                ))
            })?;
            match info.addr() {
                ConnectionAddr::Tcp(host, port) => seeds.push((host.clone(), *port)),
                _ => {
                    return Err(BrokerError::Unavailable(format!(
                        "redis.urls[{i}]: only redis://host:port is supported with redis.cluster"
                    )));
                }
            }
            seed_info.get_or_insert(info);
        }
        let Some(seed_info) = seed_info else {
            return Err(BrokerError::Unavailable(
                "redis.urls: no seed node given".into(),
            ));
        };
        let token = rand::random::<u64>() & 0xffff_ffff_ffff;
        Ok(ClusterPubSubTask {
            demand: Demand::new(shared, events, commands, stop, timings, token),
            seeds,
            known: Vec::new(),
            seed_info,
            command_timeout,
            next_link_id: 1,
        })
    }

    /// Read the slot map from the known masters, then the seeds; the first complete one wins.
    fn read_slot_map(&self) -> impl Future<Output = Result<SlotMap, String>> + use<> {
        let mut candidates: Vec<(String, u16)> = self
            .known
            .iter()
            .filter_map(|addr| split_addr(addr))
            .collect();
        candidates.extend(self.seeds.iter().cloned());
        let info = self.seed_info.clone();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.demand.timings.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        async move {
            let mut last_error = String::from("no node to ask");
            for (host, port) in candidates {
                let info = info
                    .clone()
                    .set_addr(ConnectionAddr::Tcp(host.clone(), port));
                match query_slots(info, &config, &host).await {
                    Ok(map) => return Ok(map),
                    Err(err) => last_error = format!("{host}:{port}: {err}"),
                }
            }
            Err(last_error)
        }
    }

    /// Open a link to `addr` (TCP, AUTH) and start reading it.
    async fn open_link(&mut self, session: &mut Session, addr: &str) -> Result<(), String> {
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            let settings = self.seed_info.redis_settings();
            if let Some(password) = settings.password() {
                let mut auth = redis::cmd("AUTH");
                if let Some(user) = settings.username() {
                    auth.arg(user);
                }
                auth.arg(password);
                write.write_all(&auth.get_packed_command()).await?;
                match read_reply(&mut reader).await? {
                    Resp::Simple(_) => {}
                    Resp::Error(err) => return Err(io::Error::other(format!("AUTH: {err}"))),
                    _ => return Err(invalid("AUTH: an unexpected reply")),
                }
            }
            Ok::<_, io::Error>((reader, write))
        };
        let (reader, writer) = match timeout(self.demand.timings.connect_timeout, connect).await {
            Ok(Ok(halves)) => halves,
            Ok(Err(err)) => return Err(format!("connect to {addr}: {err}")),
            Err(_) => return Err(format!("connect to {addr}: timed out")),
        };
        let id = self.next_link_id;
        self.next_link_id += 1;
        let reader_stop = self.demand.stop.child_token();
        tokio::spawn(read_link(
            id,
            reader,
            session.incoming_tx.clone(),
            reader_stop.clone(),
        ));
        let now = Instant::now();
        session.link_addr.insert(id, addr.to_owned());
        session.links.insert(
            addr.to_owned(),
            Link {
                writer,
                out: Vec::new(),
                sent: VecDeque::new(),
                last_activity: now,
                ping: None,
                _reader: reader_stop.drop_guard(),
            },
        );
        Ok(())
    }

    /// Queue the subscription of `channel` on the link of its owner (opened if need be).
    async fn queue_subscribe(
        &mut self,
        session: &mut Session,
        channel: &str,
        kind: &Channel,
        owner: Option<String>,
    ) -> Result<(), String> {
        let addr = owner.unwrap_or_else(|| session.owner(channel, kind));
        if !session.links.contains_key(&addr) {
            self.open_link(session, &addr).await?;
        }
        let verb = if is_shard_channel(kind) {
            "SSUBSCRIBE"
        } else {
            "SUBSCRIBE"
        };
        if let Some(link) = session.links.get_mut(&addr) {
            link.queue(
                redis::cmd(verb).arg(channel),
                Sent::Subscribe(channel.to_owned()),
            );
        }
        session
            .subscribing
            .entry(channel.to_owned())
            .or_insert_with(|| (kind.clone(), Vec::new()));
        Ok(())
    }

    /// Write everything queued on every link.
    async fn flush(&self, session: &mut Session) -> Result<(), String> {
        for (addr, link) in &mut session.links {
            if link.out.is_empty() {
                continue;
            }
            let out = std::mem::take(&mut link.out);
            match timeout(self.command_timeout, link.writer.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(format!("write to {addr}: {err}")),
                Err(_) => return Err(format!("write to {addr}: timed out")),
            }
        }
        Ok(())
    }

    /// Read the map, open the classic link and subscribe every wanted channel. `Ok(None)`:
    /// stop. The session is up once every subscription is confirmed (see [`Self::confirm`]).
    async fn open_session(&mut self) -> Result<Option<Session>, String> {
        let reading = self.read_slot_map();
        tokio::pin!(reading);
        let slots = loop {
            tokio::select! {
                _ = self.demand.stop.cancelled() => return Ok(None),
                map = &mut reading => break map?,
                command = self.demand.commands.recv() => match command {
                    Some(command) => self.demand.queue_while_down(command),
                    None => return Ok(None),
                },
            }
        };
        self.known = slots.masters();
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let classic = slots.owner(0).to_owned();
        let mut session = Session {
            slots,
            classic: classic.clone(),
            links: HashMap::new(),
            link_addr: HashMap::new(),
            incoming_tx,
            incoming,
            live: HashMap::new(),
            subscribing: HashMap::new(),
            releasing: HashMap::new(),
            release_queue: VecDeque::new(),
            up: false,
            started: Instant::now(),
        };
        self.open_link(&mut session, &classic).await?;

        // Everything wanted, and what was asked for while down by callers that still wait.
        self.demand
            .waiting
            .retain(|(_, _, reply)| !reply.is_closed());
        let resubscribing = self.demand.wanted.len() as u64;
        let mut callers: HashMap<String, Vec<Reply>> = HashMap::new();
        for (channel, kind, reply) in std::mem::take(&mut self.demand.waiting) {
            self.demand.wanted.insert(channel.clone(), kind);
            callers.entry(channel).or_default().push(reply);
        }
        let all: Vec<(String, Channel)> = self
            .demand
            .wanted
            .iter()
            .map(|(channel, kind)| (channel.clone(), kind.clone()))
            .collect();
        for (channel, kind) in &all {
            self.queue_subscribe(&mut session, channel, kind, None)
                .await?;
        }
        for (channel, replies) in callers {
            if let Some((_, waiting)) = session.subscribing.get_mut(&channel) {
                waiting.extend(replies);
            }
        }
        self.flush(&mut session).await?;
        if self.demand.has_been_up() {
            self.demand
                .shared
                .metrics
                .resubscribed(Resubscribe::Reconnect, resubscribing);
        }
        if session.subscribing.is_empty() && !self.session_up(&mut session).await {
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Every channel of the session's start is confirmed: tell the node. False: stop.
    async fn session_up(&mut self, session: &mut Session) -> bool {
        session.up = true;
        let resumed = self.demand.mark_up();
        info!(
            masters = session.slots.masters().len(),
            links = session.links.len(),
            channels = session.live.len(),
            resumed,
            "redis cluster pub/sub up"
        );
        // Services' FCALL roomcast_publish needs the library, also after a restart.
        if let Err(err) = load_functions(&self.demand.shared.commands).await {
            warn!(%err, "cannot load the roomcast Redis functions (history)");
        }
        self.demand.emit(BrokerEvent::Up { resumed }).await
    }

    async fn serve_session(&mut self, mut session: Session) -> Exit {
        let timer = sleep_until(self.next_wake(&session));
        tokio::pin!(timer);
        loop {
            let wake = self.next_wake(&session);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let step = tokio::select! {
                biased;
                _ = self.demand.stop.cancelled() => return Exit::Stop,
                _ = &mut timer => self.on_timer(&mut session).await,
                command = self.demand.commands.recv() => match command {
                    Some(command) => self.on_commands(&mut session, command).await,
                    None => return Exit::Stop,
                },
                incoming = session.incoming.recv() => match incoming {
                    Some((id, incoming)) => self.on_incoming(&mut session, id, incoming).await,
                    None => Err(Exit::Lost("every link closed".into())),
                },
            };
            if let Err(exit) = step {
                return exit;
            }
            if let Err(reason) = self.flush(&mut session).await {
                return Exit::Lost(reason);
            }
        }
    }

    /// The earliest of: a link's ping due or overdue, the end of a grace, the start deadline.
    fn next_wake(&self, session: &Session) -> Instant {
        let mut wake = session.release_queue.front().map_or(
            Instant::now() + self.demand.timings.probe_idle,
            |(at, _)| *at,
        );
        if !session.up {
            wake = wake.min(session.started + self.demand.timings.connect_timeout);
        }
        for link in session.links.values() {
            let due = match link.ping {
                Some(sent) => sent + self.demand.timings.probe_timeout,
                None => link.last_activity + self.demand.timings.probe_idle,
            };
            wake = wake.min(due);
        }
        wake
    }

    async fn on_timer(&mut self, session: &mut Session) -> Result<(), Exit> {
        let now = Instant::now();
        if !session.up && now >= session.started + self.demand.timings.connect_timeout {
            return Err(Exit::Lost(format!(
                "{} subscriptions not confirmed within {:?}",
                session.subscribing.len(),
                self.demand.timings.connect_timeout
            )));
        }
        for (addr, link) in &mut session.links {
            match link.ping {
                Some(sent) if now >= sent + self.demand.timings.probe_timeout => {
                    return Err(Exit::Lost(format!(
                        "{addr} did not answer PING within {:?}",
                        self.demand.timings.probe_timeout
                    )));
                }
                None if now >= link.last_activity + self.demand.timings.probe_idle => {
                    link.ping = Some(now);
                    link.queue(&redis::cmd("PING"), Sent::Ping);
                }
                _ => {}
            }
        }
        let mut released = 0;
        while let Some((deadline, _)) = session.release_queue.front() {
            if *deadline > now || released >= MAX_BATCH {
                break;
            }
            let Some((deadline, channel)) = session.release_queue.pop_front() else {
                break;
            };
            if session.releasing.get(&channel) != Some(&deadline) {
                continue; // a later release or a resubscribe made this entry stale
            }
            session.releasing.remove(&channel);
            if self.demand.wanted.contains_key(&channel) {
                continue;
            }
            // Gone from `live` now: a subscribe from here on goes through SSUBSCRIBE again,
            // queued after this unsubscribe on the same link.
            if let Some((kind, addr)) = session.live.remove(&channel)
                && let Some(link) = session.links.get_mut(&addr)
            {
                let verb = if is_shard_channel(&kind) {
                    "SUNSUBSCRIBE"
                } else {
                    "UNSUBSCRIBE"
                };
                link.queue(redis::cmd(verb).arg(&channel), Sent::Unsubscribe(channel));
                released += 1;
            }
        }
        self.demand
            .shared
            .metrics
            .broker_subscriptions
            .set(session.live.len() as i64);
        Ok(())
    }

    /// A batch of subscribe/unsubscribe requests: everything queued now.
    async fn on_commands(&mut self, session: &mut Session, first: Command) -> Result<(), Exit> {
        let batch = self.demand.batch(first);
        for command in batch {
            match command {
                Command::Subscribe {
                    channel,
                    target,
                    reply,
                } => {
                    if reply.is_closed() {
                        continue;
                    }
                    self.demand.wanted.insert(channel.clone(), target.clone());
                    if session.live.contains_key(&channel) {
                        session.releasing.remove(&channel);
                        if reply.send(Ok(())).is_err() {
                            self.release(session, channel);
                        }
                    } else if let Some((_, waiting)) = session.subscribing.get_mut(&channel) {
                        waiting.push(reply);
                    } else {
                        self.queue_subscribe(session, &channel, &target, None)
                            .await
                            .map_err(Exit::Lost)?;
                        if let Some((_, waiting)) = session.subscribing.get_mut(&channel) {
                            waiting.push(reply);
                        }
                    }
                }
                Command::Unsubscribe { channel } => {
                    if self.demand.wanted.remove(&channel).is_some()
                        && session.live.contains_key(&channel)
                    {
                        self.release(session, channel);
                    }
                }
            }
        }
        Ok(())
    }

    fn release(&mut self, session: &mut Session, channel: String) {
        self.demand.wanted.remove(&channel);
        let deadline = Instant::now() + self.demand.timings.unsubscribe_grace;
        session.releasing.insert(channel.clone(), deadline);
        session.release_queue.push_back((deadline, channel));
    }

    async fn on_incoming(
        &mut self,
        session: &mut Session,
        id: u64,
        incoming: Incoming,
    ) -> Result<(), Exit> {
        let Some(addr) = session.link_addr.get(&id).cloned() else {
            return Ok(()); // a link this session already dropped
        };
        let reply = match incoming {
            Incoming::Closed(reason) => return Err(Exit::Lost(format!("{addr}: {reason}"))),
            Incoming::Reply(reply) => reply,
        };
        let Some(link) = session.links.get_mut(&addr) else {
            return Ok(());
        };
        link.last_activity = Instant::now();
        match reply {
            Resp::Array(items) => {
                let kind = match items.first() {
                    Some(Resp::Bulk(kind)) => kind.as_slice(),
                    _ => return Ok(()),
                };
                let channel = match items.get(1) {
                    Some(Resp::Bulk(channel)) => String::from_utf8_lossy(channel).into_owned(),
                    _ => String::new(),
                };
                match kind {
                    b"smessage" | b"message" => {
                        let Some(Resp::Bulk(payload)) = items.get(2) else {
                            return Ok(());
                        };
                        // Publications for a channel already released can still be on their way.
                        let Some((kind, _)) = session.live.get(&channel) else {
                            debug!(channel, %addr, "a publication for a channel not live here");
                            return Ok(());
                        };
                        let Some(event) = self.demand.external_ids.event(
                            kind,
                            payload,
                            &self.demand.shared.metrics,
                        ) else {
                            return Ok(());
                        };
                        if !self.demand.emit(event).await {
                            return Err(Exit::Stop);
                        }
                    }
                    b"ssubscribe" | b"subscribe" => {
                        if let Some((Sent::Subscribe(_), sent)) = link.sent.pop_front() {
                            self.demand
                                .shared
                                .metrics
                                .broker_roundtrip
                                .observe(sent.elapsed().as_secs_f64());
                        }
                        self.confirm(session, channel, addr).await?;
                    }
                    b"sunsubscribe" | b"unsubscribe" => {
                        let ours = matches!(
                            link.sent.front(),
                            Some((Sent::Unsubscribe(sent), _)) if *sent == channel
                        );
                        if ours {
                            link.sent.pop_front();
                        } else {
                            // The shard dropped it: its slot moved, or the master was demoted.
                            self.follow_slot(session, &channel, Resubscribe::Sunsubscribe, None)
                                .await?;
                        }
                    }
                    b"pong" => self.on_pong(session, &addr),
                    _ => debug!("ignoring an unexpected pub/sub reply"),
                }
            }
            Resp::Simple(pong) if pong.eq_ignore_ascii_case("PONG") => self.on_pong(session, &addr),
            Resp::Error(err) => match link.sent.pop_front() {
                Some((Sent::Subscribe(channel), _)) => {
                    if let Some(moved_to) = err
                        .strip_prefix("MOVED ")
                        .and_then(|rest| rest.split_whitespace().nth(1))
                    {
                        let moved_to = moved_to.to_owned();
                        session.live.remove(&channel);
                        self.follow_slot(session, &channel, Resubscribe::Moved, Some(moved_to))
                            .await?;
                    } else if err.starts_with("CLUSTERDOWN") || err.starts_with("TRYAGAIN") {
                        return Err(Exit::Lost(format!("{addr}: {err}")));
                    } else {
                        warn!(%err, "redis refused a subscription");
                        self.demand.wanted.remove(&channel);
                        let replies = session.subscribing.remove(&channel);
                        for reply in replies.map(|(_, r)| r).unwrap_or_default() {
                            let _ = reply.send(Err(BrokerError::Unavailable(err.clone())));
                        }
                    }
                }
                Some((Sent::Ping, _)) => return Err(Exit::Lost(format!("{addr}: PING: {err}"))),
                Some((Sent::Unsubscribe(_), _)) => warn!(%err, "redis refused an unsubscribe"),
                None => debug!(%err, "an error reply nothing waited for"),
            },
            _ => debug!("ignoring an unexpected reply"),
        }
        Ok(())
    }

    fn on_pong(&self, session: &mut Session, addr: &str) {
        let Some(link) = session.links.get_mut(addr) else {
            return;
        };
        if matches!(link.sent.front(), Some((Sent::Ping, _))) {
            link.sent.pop_front();
        }
        if let Some(sent) = link.ping.take() {
            self.demand
                .shared
                .metrics
                .broker_roundtrip
                .observe(sent.elapsed().as_secs_f64());
        }
    }

    /// `channel` is confirmed on `addr`.
    async fn confirm(
        &mut self,
        session: &mut Session,
        channel: String,
        addr: String,
    ) -> Result<(), Exit> {
        let Some((kind, replies)) = session.subscribing.remove(&channel) else {
            return Ok(()); // a confirmation nothing waited for
        };
        session.live.insert(channel.clone(), (kind, addr));
        if !self.demand.wanted.contains_key(&channel) {
            // Released while it was on its way: subscribed, unwanted, in its grace.
            self.release(session, channel);
            return self.check_started(session).await;
        }
        let had_callers = !replies.is_empty();
        let mut answered = false;
        for reply in replies {
            answered |= reply.send(Ok(())).is_ok();
        }
        if had_callers && !answered && !session.up {
            // Everyone who asked gave up before the link came up: do not keep it.
            self.release(session, channel);
        }
        self.check_started(session).await
    }

    /// Count the live channels; once the last subscription of the start is confirmed, the
    /// session is up.
    async fn check_started(&mut self, session: &mut Session) -> Result<(), Exit> {
        self.demand
            .shared
            .metrics
            .broker_subscriptions
            .set(session.live.len() as i64);
        if !session.up && session.subscribing.is_empty() && !self.session_up(session).await {
            return Err(Exit::Stop);
        }
        Ok(())
    }

    /// Subscribe `channel` again on whoever owns its slot now (`moved_to` when a shard said).
    async fn follow_slot(
        &mut self,
        session: &mut Session,
        channel: &str,
        reason: Resubscribe,
        moved_to: Option<String>,
    ) -> Result<(), Exit> {
        let was_on = session.live.remove(channel).map(|(_, addr)| addr);
        let Some(kind) = self.demand.wanted.get(channel).cloned() else {
            session.subscribing.remove(channel);
            return Ok(());
        };
        let fresh = self.read_slot_map().await.map_err(Exit::Lost)?;
        let mut owner = fresh.owner(key_slot(channel.as_bytes())).to_owned();
        if let Some(moved_to) = moved_to
            && Some(&owner) == was_on.as_ref()
        {
            owner = moved_to; // the map we read is behind the shard that answered
        }
        if was_on.as_ref() == Some(&owner) && reason == Resubscribe::Sunsubscribe {
            return Err(Exit::Lost(format!(
                "{owner} dropped a channel of a slot it still owns"
            )));
        }
        session.slots = fresh;
        self.known = session.slots.masters();
        self.demand.shared.metrics.resubscribed(reason, 1);
        debug!(channel, %owner, reason = reason.label(), "following a slot to its owner");
        self.queue_subscribe(session, channel, &kind, Some(owner))
            .await
            .map_err(Exit::Lost)
    }
}

async fn query_slots(
    info: ConnectionInfo,
    config: &redis::AsyncConnectionConfig,
    host: &str,
) -> Result<SlotMap, String> {
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .map_err(|e| e.to_string())?;
    let value: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    SlotMap::parse(&value, host)
}

fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
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
                let reason = if err.kind() == io::ErrorKind::UnexpectedEof {
                    "connection closed".to_owned()
                } else {
                    err.to_string()
                };
                let _ = to.send((id, Incoming::Closed(reason))).await;
                return;
            }
        };
        if to.send((id, incoming)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag hashes the whole key.
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        // A room's channel and its history keys share a slot.
        assert_eq!(
            key_slot(b"roomcast:room:news"),
            key_slot(b"{roomcast:room:news}:log")
        );
    }

    #[tokio::test]
    async fn replies_parse_and_bad_ones_are_errors() {
        let wire: &[u8] = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\nhe\r\nl\r\n\
            +PONG\r\n-MOVED 3999 127.0.0.1:7002\r\n:7\r\n$-1\r\n";
        let mut reader = BufReader::new(wire);
        assert_eq!(
            read_reply(&mut reader).await.expect("array"),
            Resp::Array(vec![
                Resp::Bulk(b"smessage".to_vec()),
                Resp::Bulk(b"ch".to_vec()),
                Resp::Bulk(b"he\r\nl".to_vec()),
            ])
        );
        assert_eq!(
            read_reply(&mut reader).await.expect("simple"),
            Resp::Simple("PONG".into())
        );
        assert_eq!(
            read_reply(&mut reader).await.expect("error"),
            Resp::Error("MOVED 3999 127.0.0.1:7002".into())
        );
        assert_eq!(read_reply(&mut reader).await.expect("int"), Resp::Int(7));
        assert_eq!(read_reply(&mut reader).await.expect("nil"), Resp::Nil);
        assert_eq!(
            read_reply(&mut reader).await.expect_err("eof").kind(),
            io::ErrorKind::UnexpectedEof
        );
        for bad in [
            &b"*1\r\n*1\r\n:1\r\n"[..],
            b"$3\r\nabcd\r\n",
            b"?\r\n",
            b":x\r\n",
            b"+no crlf\n",
            b"$99999999999\r\n",
        ] {
            let mut reader = BufReader::new(bad);
            assert!(read_reply(&mut reader).await.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slot_maps_must_cover_every_slot() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |start: i64, end: i64, master: Value| {
            Value::Array(vec![Value::Int(start), Value::Int(end), master])
        };
        let full = Value::Array(vec![
            range(5461, 16383, node("10.0.0.2", 7001)),
            range(0, 5460, node("", 7000)),
        ]);
        let map = SlotMap::parse(&full, "10.0.0.1").expect("complete map");
        assert_eq!(map.owner(0), "10.0.0.1:7000");
        assert_eq!(map.owner(5460), "10.0.0.1:7000");
        assert_eq!(map.owner(5461), "10.0.0.2:7001");
        assert_eq!(map.owner(16383), "10.0.0.2:7001");
        assert_eq!(map.masters().len(), 2);

        let gap = Value::Array(vec![
            range(0, 5000, node("h", 1)),
            range(5461, 16383, node("h", 2)),
        ]);
        assert!(SlotMap::parse(&gap, "h").is_err());
        let short = Value::Array(vec![range(0, 100, node("h", 1))]);
        assert!(SlotMap::parse(&short, "h").is_err());
        assert!(SlotMap::parse(&Value::Nil, "h").is_err());
    }
}
