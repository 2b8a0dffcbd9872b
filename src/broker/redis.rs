//! The Redis broker: roomcast nodes share rooms through Redis pub/sub (PROTOCOL.md "Redis
//! channels"), on one Redis or on a Redis Cluster (`redis.cluster`).
//!
//! Owns: where commands go (`Commands`: the deadpool-redis pool of a single Redis, or the
//! redis crate's cluster connection, which routes by key), one `PUBLISH` (`SPUBLISH` for a
//! room or user on a cluster) of [`protocol::encode_envelope`](crate::protocol::encode_envelope)
//! per message; what both pub/sub tasks share (`Demand`: the channels the node wants, kept
//! across reconnects, subscribers waiting for a link, Up/Down; `run_reconnecting`: capped
//! exponential backoff with jitter); the single-Redis pub/sub task itself (one connection,
//! batched SUBSCRIBE/UNSUBSCRIBE, the unsubscribe grace, the liveness probe); and the broker
//! metrics that only it can see (subscriptions, round trips, pub/sub lag). The cluster's
//! pub/sub task is `redis_cluster`'s.
//!
//! Leaves to others: which channels are needed and when (the node: first local member
//! subscribes, last one unsubscribes), delivery to clients and echo suppression (node and hub,
//! from the [`Origin`](crate::protocol::Origin) in the envelope), the up/down gauge and the
//! reconnect counter (the node, from [`BrokerEvent::Up`] / [`BrokerEvent::Down`]), and every
//! wire format (`protocol`).
//!
//! Room history (`history.rooms`) lives in Redis too, beside the channel: a list and a hash
//! whose keys are hash-tagged with the channel name (`{roomcast:room:news}:log`), so channel
//! and keys share one Redis Cluster slot. The Redis Function library [`FUNCTIONS`] keeps,
//! numbers and publishes a message in one atomic step, for nodes and for services alike
//! (`FCALL roomcast_publish 1 roomcast:room:ROOM '{"data":…}'`); nodes load it at every
//! (re)connect.
//!
//! Presence (`presence.rooms`) is kept beside them too: per room, a hash per node
//! (`{roomcast:room:ROOM}:presence:NODE`, user → its connections on that node), a sorted set
//! of the nodes scored by when each stops counting (`{roomcast:room:ROOM}:presence`), and the
//! sum over nodes (`…:presence-conns`, `…:presence-users`). The function `roomcast_presence`
//! applies one node's changes to one room atomically: it first drops the other nodes whose
//! time is up, then sets the node's users, and publishes `{"user","event":"joined"|"left","ts"}`
//! on `{prefix}presence:ROOM` for users whose sum leaves or reaches 0 (rooms with events only).
//! A node sends all its rooms' changes in one pipeline; `roomcast_presence_read` returns the
//! count and the first users in name order without reading the whole room.
//!
//! Every node delivers what Redis delivers to it, its own publishes included, so every member
//! of a room sees Redis's one order. Nothing here is unbounded: commands reach the pub/sub task
//! through a bounded queue, and publications reach the node through its bounded event queue,
//! awaited (back-pressure). The redis crate buffers between the socket and the pub/sub stream
//! without a bound of its own; the probe bounds that backlog (see [`Timings::probe_every`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_redis::{Manager, Pool, PoolError, Runtime};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::redis_cluster::ClusterPubSubTask;
use super::{
    BoxFuture, Broker, BrokerError, BrokerEvent, Envelope, HistoryPage, Position, PresenceEvent,
    PresenceList, PresenceUpdate, Retention, Target, presence_live_for,
};
use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::protocol::{
    PresenceMember, decode_envelope, decode_presence_event, encode_envelope,
    encode_envelope_unnumbered,
};

/// Room for subscribe/unsubscribe requests waiting for the pub/sub task.
pub(super) const COMMAND_QUEUE: usize = 4096;
/// At most this many channels in one SUBSCRIBE or UNSUBSCRIBE.
pub(super) const MAX_BATCH: usize = 1024;

/// The timings of the pub/sub link. [`Default`] is what a node uses; tests shorten them.
#[derive(Clone, Debug)]
pub struct Timings {
    /// A channel the node no longer needs stays subscribed this long, so join/leave churn does
    /// not thrash Redis; a subscribe within it cancels the pending unsubscribe.
    pub unsubscribe_grace: Duration,
    /// When nothing has arrived on the pub/sub connection for this long, publish a probe on
    /// the node's private probe channel.
    pub probe_idle: Duration,
    /// Probe at least this often even when traffic flows: a probe that comes back late shows
    /// the node is this far behind Redis, which bounds what piles up in front of it.
    pub probe_every: Duration,
    /// A probe that has not come back by then means the subscription stopped delivering (or the
    /// node fell this far behind): drop the connection and reconnect.
    pub probe_timeout: Duration,
    /// Longest wait for a new pub/sub connection (TCP, TLS, AUTH).
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            unsubscribe_grace: Duration::from_secs(2),
            probe_idle: Duration::from_secs(5),
            probe_every: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

pub struct RedisBroker {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    /// Stops the pub/sub task when the broker is dropped.
    stop: CancellationToken,
}

/// What the broker's handle and its pub/sub task both need.
pub(super) struct Shared {
    /// True while the pub/sub link is connected and every wanted channel is subscribed.
    pub(super) up: AtomicBool,
    pub(super) commands: Commands,
    pub(super) prefix: String,
    pub(super) metrics: Arc<Metrics>,
}

/// Where commands (publishes, function calls, probes) go: a pooled single Redis, or a Redis
/// Cluster through the redis crate's cluster connection, which routes each command to the
/// shard that owns its key and follows `MOVED` and failovers.
pub(super) enum Commands {
    Single(Pool),
    Cluster {
        client: Box<ClusterClient>,
        /// Made at first use: a cluster that is down when the node starts is not an error.
        connection: tokio::sync::OnceCell<ClusterConnection>,
        timeout: Duration,
    },
}

impl Commands {
    fn is_cluster(&self) -> bool {
        matches!(self, Commands::Cluster { .. })
    }

    async fn cluster_connection(
        client: &ClusterClient,
        connection: &tokio::sync::OnceCell<ClusterConnection>,
        limit: Duration,
    ) -> Result<ClusterConnection, BrokerError> {
        connection
            .get_or_try_init(|| async {
                match timeout(limit, client.get_async_connection()).await {
                    Ok(Ok(conn)) => Ok(conn),
                    Ok(Err(err)) => Err(redis_error(&err)),
                    Err(_) => Err(BrokerError::Timeout),
                }
            })
            .await
            .cloned()
    }

    /// Send one command (or a pipeline, on a single Redis) and read its answer.
    async fn send<T: redis::FromRedisValue, C: FunctionCall>(
        &self,
        call: &C,
    ) -> Result<Result<T, RedisError>, BrokerError> {
        match self {
            Commands::Single(pool) => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                Ok(call.send(&mut *conn).await)
            }
            Commands::Cluster {
                client,
                connection,
                timeout,
            } => {
                let mut conn = Self::cluster_connection(client, connection, *timeout).await?;
                // The crate retries MOVED and lost nodes on its own: bound the whole exchange.
                tokio::time::timeout(*timeout, call.send(&mut conn))
                    .await
                    .map_err(|_| BrokerError::Timeout)
            }
        }
    }

    fn close(&self) {
        if let Commands::Single(pool) = self {
            pool.close();
        }
    }
}

/// What arrives on a subscribed channel.
#[derive(Clone, Debug)]
pub(super) enum Channel {
    /// Publications for a target (PROTOCOL.md "Redis channels").
    Messages(Target),
    /// `member_joined` / `member_left` of a room, published by `roomcast_presence`.
    Presence(Arc<str>),
}

/// At most this many rooms' presence in one pipeline.
const PRESENCE_PIPELINE: usize = 256;

/// Answers a subscribe once the subscription is live (or cannot be).
pub(super) type Reply = oneshot::Sender<Result<(), BrokerError>>;

pub(super) enum Command {
    Subscribe {
        channel: String,
        target: Channel,
        reply: Reply,
    },
    Unsubscribe {
        channel: String,
    },
}

impl RedisBroker {
    async fn subscribe_channel(&self, channel: String, target: Channel) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                channel,
                target,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Start the broker: returns at once, connects in the background, and keeps reconnecting.
    /// Fails only on a configuration that can never work (an unparsable URL) or outside a
    /// tokio runtime; a Redis that is down at start is not an error.
    pub fn start(
        config: &RedisConfig,
        events: mpsc::Sender<BrokerEvent>,
        metrics: Arc<Metrics>,
    ) -> Result<RedisBroker, BrokerError> {
        Self::start_with(config, events, metrics, Timings::default())
    }

    /// [`RedisBroker::start`] with other timings.
    pub fn start_with(
        config: &RedisConfig,
        events: mpsc::Sender<BrokerEvent>,
        metrics: Arc<Metrics>,
        timings: Timings,
    ) -> Result<RedisBroker, BrokerError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BrokerError::Unavailable("the redis broker needs a tokio runtime".into())
        })?;
        if config.cluster {
            return Self::start_cluster(config, events, metrics, timings, runtime);
        }
        // The URL may hold a password: errors name the key, never the value.
        let client = Client::open(config.url.as_str()).map_err(|err| {
            BrokerError::Unavailable(format!(
                "redis.url is not a usable Redis URL ({:?})",
                err.kind()
            ))
        })?;
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(command_timeout))
            .set_response_timeout(Some(command_timeout));
        let manager =
            Manager::new_with_config(config.url.as_str(), connection_config).map_err(|err| {
                BrokerError::Unavailable(format!("redis.url is not usable ({:?})", err.kind()))
            })?;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(command_timeout))
            .create_timeout(Some(command_timeout))
            .recycle_timeout(Some(command_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| {
                BrokerError::Unavailable(format!("cannot build the redis pool: {err}"))
            })?;

        let shared = Arc::new(Shared {
            up: AtomicBool::new(false),
            commands: Commands::Single(pool),
            prefix: config.prefix.clone(),
            metrics,
        });
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let stop = CancellationToken::new();
        let token = rand::random::<u64>() & 0xffff_ffff_ffff;
        let task = PubSubTask {
            demand: Demand::new(
                shared.clone(),
                events,
                commands_rx,
                stop.clone(),
                timings,
                token,
            ),
            client,
            command_timeout,
            probe_channel: format!("{}probe:{token:012x}", config.prefix),
        };
        info!(redis = %redacted_addr(&task.client), prefix = %config.prefix, "starting the redis broker");
        runtime.spawn(run_reconnecting(task));
        Ok(RedisBroker {
            shared,
            commands: commands_tx,
            stop,
        })
    }

    /// The broker on a Redis Cluster: commands through the redis crate's cluster connection,
    /// pub/sub through [`ClusterPubSubTask`].
    fn start_cluster(
        config: &RedisConfig,
        events: mpsc::Sender<BrokerEvent>,
        metrics: Arc<Metrics>,
        timings: Timings,
        runtime: tokio::runtime::Handle,
    ) -> Result<RedisBroker, BrokerError> {
        if config.prefix.contains(['{', '}']) {
            // A brace would make the channel's hash tag differ from its keys' (`{channel}:log`).
            return Err(BrokerError::Unavailable(
                "redis.prefix must not contain `{` or `}` with redis.cluster".into(),
            ));
        }
        let seeds = config.seed_urls();
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let client = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(command_timeout)
            .response_timeout(command_timeout)
            .build()
            .map_err(|err| {
                BrokerError::Unavailable(format!(
                    "redis.urls are not usable Redis Cluster seeds ({:?})",
                    err.kind()
                ))
            })?;
        let shared = Arc::new(Shared {
            up: AtomicBool::new(false),
            commands: Commands::Cluster {
                client: Box::new(client),
                connection: tokio::sync::OnceCell::new(),
                timeout: command_timeout,
            },
            prefix: config.prefix.clone(),
            metrics,
        });
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let stop = CancellationToken::new();
        let task = ClusterPubSubTask::new(
            shared.clone(),
            &seeds,
            events,
            commands_rx,
            stop.clone(),
            command_timeout,
            timings,
        )?;
        info!(seeds = seeds.len(), prefix = %config.prefix, "starting the redis cluster broker");
        runtime.spawn(run_reconnecting(task));
        Ok(RedisBroker {
            shared,
            commands: commands_tx,
            stop,
        })
    }

    fn channel(&self, target: &Target) -> String {
        channel_name(&self.shared.prefix, target)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.commands.close();
    }
}

impl Broker for RedisBroker {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            if !self.shared.up.load(Ordering::Acquire) {
                return Err(BrokerError::Unavailable("redis is not reachable".into()));
            }
            let channel = self.channel(&envelope.target);
            publish(
                &self.shared.commands,
                &channel,
                sharded(&envelope.target),
                &encode_envelope(&envelope),
            )
            .await
        })
    }

    fn subscribe(&self, target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let channel = self.channel(&target);
            self.subscribe_channel(channel, Channel::Messages(target))
                .await
        })
    }

    fn subscribe_presence(&self, room: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let channel = presence_channel(&self.shared.prefix, &room);
            self.subscribe_channel(channel, Channel::Presence(room))
                .await
        })
    }

    fn unsubscribe_presence(&self, room: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let channel = presence_channel(&self.shared.prefix, &room);
            self.commands
                .send(Command::Unsubscribe { channel })
                .await
                .map_err(|_| stopped())
        })
    }

    fn presence_update(
        &self,
        node: &str,
        ttl: Duration,
        updates: Vec<PresenceUpdate>,
    ) -> BoxFuture<'_, Result<Vec<Arc<str>>, BrokerError>> {
        let node = node.to_owned();
        Box::pin(async move {
            if !self.shared.up.load(Ordering::Acquire) {
                return Err(BrokerError::Unavailable("redis is not reachable".into()));
            }
            let live_ms = presence_live_for(ttl).as_millis().max(1) as u64;
            let expire_ms = (ttl * 2).as_millis().max(1) as u64;
            let mut lost = Vec::new();
            for chunk in updates.chunks(PRESENCE_PIPELINE) {
                let calls: Vec<redis::Cmd> = chunk
                    .iter()
                    .map(|update| {
                        let target = Target::Room(update.room.clone());
                        let events = if update.events {
                            presence_channel(&self.shared.prefix, &update.room)
                        } else {
                            String::new()
                        };
                        let mut cmd = redis::cmd("FCALL");
                        cmd.arg("roomcast_presence")
                            .arg(1)
                            .arg(self.channel(&target))
                            .arg(&node)
                            .arg(live_ms)
                            .arg(expire_ms)
                            .arg(events)
                            .arg(if update.full { "1" } else { "0" });
                        for (user, conns) in &update.users {
                            cmd.arg(user.as_ref()).arg(*conns);
                        }
                        cmd
                    })
                    .collect();
                let commands = &self.shared.commands;
                let answers: Vec<i64> = if commands.is_cluster() {
                    // A pipeline must stay on one shard, and rooms spread over all of them:
                    // one call per room, all in flight at once.
                    futures_util::future::try_join_all(
                        calls
                            .iter()
                            .map(|call| with_functions(commands, move || call.clone())),
                    )
                    .await?
                } else {
                    let pipe = || {
                        let mut pipe = redis::pipe();
                        for call in &calls {
                            pipe.add_command(call.clone());
                        }
                        pipe
                    };
                    with_functions(commands, pipe).await?
                };
                for (update, answer) in chunk.iter().zip(answers) {
                    if answer == 1 {
                        lost.push(update.room.clone());
                    }
                }
            }
            Ok(lost)
        })
    }

    fn presence(
        &self,
        room: Arc<str>,
        events: bool,
        max: usize,
    ) -> BoxFuture<'_, Result<PresenceList, BrokerError>> {
        Box::pin(async move {
            let events = if events {
                presence_channel(&self.shared.prefix, &room)
            } else {
                String::new()
            };
            let channel = self.channel(&Target::Room(room));
            let call = || {
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("roomcast_presence_read")
                    .arg(1)
                    .arg(&channel)
                    .arg(&events)
                    .arg(max);
                cmd
            };
            let (count, members): (u64, Vec<(String, u64)>) =
                with_functions(&self.shared.commands, call).await?;
            Ok(PresenceList {
                count,
                truncated: count > members.len() as u64,
                members: members
                    .into_iter()
                    .map(|(user, conns)| PresenceMember { user, conns })
                    .collect(),
            })
        })
    }

    fn unsubscribe(&self, target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let channel = self.channel(&target);
            self.commands
                .send(Command::Unsubscribe { channel })
                .await
                .map_err(|_| stopped())
        })
    }

    fn publish_retained(
        &self,
        envelope: Envelope,
        retention: Retention,
    ) -> BoxFuture<'_, Result<String, BrokerError>> {
        Box::pin(async move {
            if !self.shared.up.load(Ordering::Acquire) {
                return Err(BrokerError::Unavailable("redis is not reachable".into()));
            }
            let channel = self.channel(&envelope.target);
            let payload = encode_envelope_unnumbered(&envelope);
            let call = || {
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("roomcast_publish")
                    .arg(1)
                    .arg(&channel)
                    .arg(&payload)
                    .arg(retention.size)
                    .arg(retention.ttl.as_secs().max(1))
                    .arg(Position::new_epoch())
                    .arg(1);
                cmd
            };
            with_functions(&self.shared.commands, call).await
        })
    }

    fn history(
        &self,
        room: Arc<str>,
        _retention: Retention,
    ) -> BoxFuture<'_, Result<HistoryPage, BrokerError>> {
        Box::pin(async move {
            let target = Target::Room(room);
            let channel = self.channel(&target);
            let call = || {
                let mut cmd = redis::cmd("FCALL_RO");
                cmd.arg("roomcast_history").arg(1).arg(&channel);
                cmd
            };
            let (epoch, top, entries): (String, String, Vec<Vec<u8>>) =
                with_functions(&self.shared.commands, call).await?;
            let now = unix_ms();
            Ok(HistoryPage {
                epoch,
                top: top.parse().unwrap_or(0),
                entries: entries
                    .iter()
                    .map(|payload| decode_envelope(target.clone(), payload, String::new, now))
                    .collect(),
            })
        })
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

pub(super) fn stopped() -> BrokerError {
    BrokerError::Unavailable("the redis broker has stopped".into())
}

/// `{prefix}room:{ROOM}`, `{prefix}user:{USER}`, `{prefix}broadcast`.
pub fn channel_name(prefix: &str, target: &Target) -> String {
    match target {
        Target::Room(room) => format!("{prefix}room:{room}"),
        Target::User(user) => format!("{prefix}user:{user}"),
        Target::Broadcast => format!("{prefix}broadcast"),
    }
}

/// `{prefix}presence:{ROOM}`: where `roomcast_presence` publishes a room's `member_joined` /
/// `member_left` (apart from `{prefix}room:…`, whose payloads are messages).
pub fn presence_channel(prefix: &str, room: &str) -> String {
    format!("{prefix}presence:{room}")
}

/// Host and port of the client's address, for logs (never the password).
fn redacted_addr(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// Whether a target's channel is a shard channel on a Redis Cluster: rooms and users are
/// (`SPUBLISH`, one shard), the broadcast every node needs is not (`PUBLISH`, every shard).
pub(super) fn sharded(target: &Target) -> bool {
    !matches!(target, Target::Broadcast)
}

/// One PUBLISH (SPUBLISH for a shard channel on a cluster).
pub(super) async fn publish(
    commands: &Commands,
    channel: &str,
    sharded: bool,
    payload: &[u8],
) -> Result<(), BrokerError> {
    let verb = if sharded && commands.is_cluster() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    let mut cmd = redis::cmd(verb);
    cmd.arg(channel).arg(payload);
    commands
        .send::<i64, _>(&cmd)
        .await?
        .map(|_receivers| ())
        .map_err(|err| redis_error(&err))
}

/// The Redis Function library that keeps room history. `roomcast_publish` appends, numbers,
/// trims, expires and publishes atomically; `roomcast_history` reads a room's history.
///
/// `FCALL roomcast_publish 1 CHANNEL PAYLOAD [SIZE TTL_S [EPOCH [TRUSTED]]]`: PAYLOAD is
/// `{"data":…}` (other fields optional) or any other payload, which becomes the data; SIZE and
/// TTL_S default to what the room last used, else 100 and 3600. The id is
/// `<epoch>-<offset>`, offsets consecutive; the epoch changes when the history expired.
pub const FUNCTIONS: &str = r#"#!lua name=roomcast

local function keys_of(channel)
  return '{' .. channel .. '}:meta', '{' .. channel .. '}:log'
end

-- What publishes a room's messages: SPUBLISH on a Redis Cluster (see functions_for).
local MESSAGE_PUBLISH = 'PUBLISH'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function publish(keys, args)
  local channel = keys[1]
  local payload = args[1] or ''
  local meta, log = keys_of(channel)
  local size = tonumber(args[2]) or tonumber(redis.call('HGET', meta, 'size')) or 100
  local ttl = tonumber(args[3]) or tonumber(redis.call('HGET', meta, 'ttl')) or 3600
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = args[4]
    if not epoch or epoch == '' then
      epoch = string.format('h%08x', now_ms() % 4294967296)
    end
    redis.call('HSET', meta, 'epoch', epoch)
  end
  local offset = redis.call('HINCRBY', meta, 'top', 1)
  redis.call('HSET', meta, 'size', size, 'ttl', ttl)
  local head = '{"id":"' .. epoch .. '-' .. offset .. '",'
  local body
  if args[5] == '1' then
    -- A node's envelope: a JSON object with data and ts, and no id.
    body = head .. string.sub(payload, 2)
  else
    head = head .. '"ts":' .. now_ms() .. ','
    local ok, decoded = pcall(cjson.decode, payload)
    if ok and type(decoded) == 'table' and decoded['data'] ~= nil
        and string.match(payload, '^%s*{') then
      local start = string.find(payload, '{', 1, true)
      body = head .. '"from":"server",' .. string.sub(payload, start + 1)
      if decoded['ts'] ~= nil or decoded['id'] ~= nil or decoded['from'] ~= nil then
        -- Keep the service's own fields out: ours are set above.
        body = head .. '"from":"server","data":' .. cjson.encode(decoded['data']) .. '}'
      end
    elseif ok then
      body = head .. '"from":"server","data":' .. payload .. '}'
    else
      body = head .. '"from":"server","data":' .. cjson.encode(payload) .. '}'
    end
  end
  redis.call('RPUSH', log, body)
  redis.call('LTRIM', log, -size, -1)
  redis.call('EXPIRE', log, ttl)
  redis.call('EXPIRE', meta, ttl)
  redis.call(MESSAGE_PUBLISH, channel, body)
  return epoch .. '-' .. offset
end

local function history(keys, args)
  local meta, log = keys_of(keys[1])
  local m = redis.call('HMGET', meta, 'epoch', 'top')
  return { m[1] or '', m[2] or '0', redis.call('LRANGE', log, 0, -1) }
end

-- Presence (presence.rooms): per room, a hash per node (user -> its connections there), a
-- sorted set of the nodes scored by when each stops counting, and the sum over nodes: a hash
-- user -> connections and a sorted set of the users (all scores 0: name order), so that a
-- read costs O(log N + M) for M listed users whatever the room's size N. A user appears or
-- vanishes when its sum leaves or reaches 0. Every call first drops the nodes whose time is up,
-- announcing their users that vanish, so a killed node's users leave with the next call of
-- any other node in the room.

local function presence_set(channel)
  return '{' .. channel .. '}:presence'
end

local function presence_hash(channel, node)
  return '{' .. channel .. '}:presence:' .. node
end

local function presence_conns(channel)
  return '{' .. channel .. '}:presence-conns'
end

local function presence_users(channel)
  return '{' .. channel .. '}:presence-users'
end

local function announce(events, user, what, ts)
  if events ~= '' then
    redis.call('PUBLISH', events, cjson.encode({ user = user, event = what, ts = ts }))
  end
end

-- Add delta to user's connections over every node; returns them before and after.
local function adjust(channel, user, delta)
  if delta == 0 then
    return 0, 0
  end
  local after = redis.call('HINCRBY', presence_conns(channel), user, delta)
  local before = after - delta
  if after <= 0 then
    redis.call('HDEL', presence_conns(channel), user)
    redis.call('ZREM', presence_users(channel), user)
    after = 0
  elseif before <= 0 then
    redis.call('ZADD', presence_users(channel), 0, user)
  end
  return before, after
end

-- Drop every node but `except` whose time is up.
local function reap(channel, except, events, now)
  local set = presence_set(channel)
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', '(' .. now)) do
    if n ~= except then
      local h = presence_hash(channel, n)
      local entries = redis.call('HGETALL', h)
      for i = 1, #entries, 2 do
        local before, after = adjust(channel, entries[i], -(tonumber(entries[i + 1]) or 0))
        if before > 0 and after == 0 then
          announce(events, entries[i], 'left', now)
        end
      end
      redis.call('DEL', h)
      redis.call('ZREM', set, n)
    end
  end
end

local function keep(channel, expire_ms)
  for _, k in ipairs({ presence_set(channel), presence_conns(channel), presence_users(channel) }) do
    if redis.call('EXISTS', k) == 1 then
      redis.call('PEXPIRE', k, expire_ms)
    end
  end
end

-- FCALL roomcast_presence 1 CHANNEL NODE LIVE_MS EXPIRE_MS EVENTS_CHANNEL FULL [USER CONNS]...
-- Sets NODE's users of the room (CONNS 0: gone; FULL 1: these are all of them), keeps NODE
-- live for LIVE_MS, publishes joined/left on EVENTS_CHANNEL (none when empty) for users that
-- appear or vanish across every node. Returns 1 when NODE's earlier state was lost.
local function presence(keys, args)
  local channel = keys[1]
  local node, live_ms, expire_ms = args[1], tonumber(args[2]), tonumber(args[3])
  local events, full = args[4], args[5] == '1'
  local set, own = presence_set(channel), presence_hash(channel, node)
  local now = now_ms()
  reap(channel, node, events, now)

  local lost = (not full) and redis.call('EXISTS', own) == 0
  local changes, given = {}, {}
  for i = 6, #args, 2 do
    table.insert(changes, { args[i], tonumber(args[i + 1]) or 0 })
    given[args[i]] = true
  end
  if full then
    local stale = {}
    for _, u in ipairs(redis.call('HKEYS', own)) do
      if not given[u] then
        table.insert(stale, u)
      end
    end
    table.sort(stale)
    for _, u in ipairs(stale) do
      table.insert(changes, { u, 0 })
    end
  end
  for _, c in ipairs(changes) do
    local u, conns = c[1], c[2]
    local had = tonumber(redis.call('HGET', own, u)) or 0
    if conns > 0 then
      redis.call('HSET', own, u, conns)
    elseif had > 0 then
      redis.call('HDEL', own, u)
    end
    local before, after = adjust(channel, u, conns - had)
    if before <= 0 and after > 0 then
      announce(events, u, 'joined', now)
    elseif before > 0 and after <= 0 then
      announce(events, u, 'left', now)
    end
  end

  if redis.call('EXISTS', own) == 1 then
    redis.call('ZADD', set, now + live_ms, node)
    redis.call('PEXPIRE', own, expire_ms)
  else
    redis.call('ZREM', set, node)
  end
  keep(channel, expire_ms)
  if lost then
    return 1
  end
  return 0
end

-- FCALL roomcast_presence_read 1 CHANNEL EVENTS_CHANNEL MAX: {COUNT, {USER, CONNS, ...}} for
-- the first MAX users in name order, after dropping the nodes whose time is up.
local function presence_read(keys, args)
  local channel = keys[1]
  reap(channel, nil, args[1] or '', now_ms())
  local max = tonumber(args[2]) or 1000
  local count = redis.call('ZCARD', presence_users(channel))
  local out = {}
  if max > 0 and count > 0 then
    local users = redis.call('ZRANGE', presence_users(channel), 0, max - 1)
    for _, u in ipairs(users) do
      table.insert(out, u)
      table.insert(out, tonumber(redis.call('HGET', presence_conns(channel), u)) or 0)
    end
  end
  return { count, out }
end

redis.register_function('roomcast_publish', publish)
redis.register_function('roomcast_presence', presence)
redis.register_function('roomcast_presence_read', presence_read)
redis.register_function{function_name = 'roomcast_history', callback = history, flags = { 'no-writes' }}
"#;

/// [`FUNCTIONS`] as loaded: on a cluster, `roomcast_publish` publishes on the room's shard
/// (`SPUBLISH`; its keys share the channel's hash slot), elsewhere with `PUBLISH`.
pub fn functions_for(cluster: bool) -> String {
    if cluster {
        FUNCTIONS.replace(
            "local MESSAGE_PUBLISH = 'PUBLISH'",
            "local MESSAGE_PUBLISH = 'SPUBLISH'",
        )
    } else {
        FUNCTIONS.to_owned()
    }
}

/// Load the function library (idempotent; on a cluster, on every master).
pub(super) async fn load_functions(commands: &Commands) -> Result<(), BrokerError> {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD")
        .arg("REPLACE")
        .arg(functions_for(commands.is_cluster()));
    commands
        .send::<redis::Value, _>(&cmd)
        .await?
        .map(|_| ())
        .map_err(|err| redis_error(&err))
}

/// A command or a pipeline: what [`Commands::send`] can send.
pub(super) trait FunctionCall {
    async fn send<T: redis::FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<T, RedisError>;
}

impl FunctionCall for redis::Cmd {
    async fn send<T: redis::FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}

impl FunctionCall for redis::Pipeline {
    async fn send<T: redis::FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}

/// Run a function call (or a pipeline of them); when Redis lost the library (a restart
/// without persistence), load it and try once more.
async fn with_functions<T: redis::FromRedisValue, C: FunctionCall>(
    commands: &Commands,
    call: impl Fn() -> C,
) -> Result<T, BrokerError> {
    match commands.send::<T, C>(&call()).await? {
        Ok(value) => Ok(value),
        Err(err) if err.to_string().contains("Function not found") => {
            load_functions(commands).await?;
            commands
                .send::<T, C>(&call())
                .await?
                .map_err(|err| redis_error(&err))
        }
        Err(err) => Err(redis_error(&err)),
    }
}

fn pool_error(err: PoolError) -> BrokerError {
    match err {
        PoolError::Timeout(_) => BrokerError::Timeout,
        PoolError::Backend(err) => redis_error(&err),
        other => BrokerError::Unavailable(other.to_string()),
    }
}

pub(super) fn redis_error(err: &RedisError) -> BrokerError {
    if err.is_timeout() {
        BrokerError::Timeout
    } else {
        BrokerError::Unavailable(err.to_string())
    }
}

/// Why a pub/sub link ended.
pub(super) enum Exit {
    /// The broker was dropped or the node stopped listening: end the task.
    Stop,
    /// The connection failed or the probe did not come back: reconnect.
    Lost(String),
}

/// What a pub/sub task keeps across its connections: the channels the node wants, the
/// subscribers waiting for a link, the node's event queue, and whether the node heard `Up`.
pub(super) struct Demand {
    pub(super) shared: Arc<Shared>,
    events: mpsc::Sender<BrokerEvent>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) stop: CancellationToken,
    pub(super) timings: Timings,
    /// Every channel the node wants, whatever the state of the connection.
    pub(super) wanted: HashMap<String, Channel>,
    /// Subscribe requests made while the link is down: answered once it is back.
    pub(super) waiting: Vec<(String, Channel, Reply)>,
    /// Ids for publications that arrive without one (plain `PUBLISH` from services).
    pub(super) external_ids: ExternalIds,
    /// An `Up` was sent and no `Down` since.
    announced_up: bool,
    /// The link has been up at least once (the next `Up` is a resumption).
    ever_up: bool,
}

impl Demand {
    pub(super) fn new(
        shared: Arc<Shared>,
        events: mpsc::Sender<BrokerEvent>,
        commands: mpsc::Receiver<Command>,
        stop: CancellationToken,
        timings: Timings,
        token: u64,
    ) -> Demand {
        Demand {
            shared,
            events,
            commands,
            stop,
            timings,
            wanted: HashMap::new(),
            waiting: Vec::new(),
            external_ids: ExternalIds::new(token),
            announced_up: false,
            ever_up: false,
        }
    }

    /// `first` and every command queued behind it, up to [`MAX_BATCH`]: one round trip.
    pub(super) fn batch(&mut self, first: Command) -> Vec<Command> {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        batch
    }

    /// A command while the link is down: subscribes wait for it, unsubscribes apply.
    pub(super) fn queue_while_down(&mut self, command: Command) {
        match command {
            Command::Subscribe {
                channel,
                target,
                reply,
            } => {
                // Callers give up after their timeout; forget them as they go.
                self.waiting.retain(|(_, _, reply)| !reply.is_closed());
                self.waiting.push((channel, target, reply));
            }
            Command::Unsubscribe { channel } => {
                self.wanted.remove(&channel);
            }
        }
    }

    /// Whether the node heard `Up` at least once (a new link is a resumption).
    pub(super) fn has_been_up(&self) -> bool {
        self.ever_up
    }

    /// The link is up with every wanted channel: publishes may go. Returns whether this is a
    /// resumption; the caller sends `Up` (after loading the functions).
    pub(super) fn mark_up(&mut self) -> bool {
        self.shared.up.store(true, Ordering::Release);
        let resumed = self.ever_up;
        self.ever_up = true;
        self.announced_up = true;
        resumed
    }

    /// The link is down: publishes fail, the node hears `Down`. False: stop.
    async fn went_down(&mut self) -> bool {
        self.shared.up.store(false, Ordering::Release);
        self.shared.metrics.broker_subscriptions.set(0);
        if self.announced_up {
            self.announced_up = false;
            return self.emit(BrokerEvent::Down).await;
        }
        true
    }

    /// Sleep `delay` while the link is down, answering commands. False: stop.
    async fn wait_down(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = sleep_until(deadline) => return true,
                command = self.commands.recv() => match command {
                    Some(command) => self.queue_while_down(command),
                    None => return false,
                },
            }
        }
    }

    /// Hand an event to the node, waiting for room in its queue. False: the node is gone or
    /// the broker stopped.
    pub(super) async fn emit(&self, event: BrokerEvent) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            sent = self.events.send(event) => sent.is_ok(),
        }
    }
}

/// A pub/sub task: [`run_reconnecting`] connects it, lets it serve until its link is lost,
/// and connects it again with capped backoff, telling the node `Down` and `Up` as it goes.
pub(super) trait Reconnecting {
    type Link;
    fn demand(&mut self) -> &mut Demand;
    /// What it connects to, for logs (never a password).
    fn target(&self) -> String;
    /// Connect and subscribe every wanted channel. `Ok(None)`: stop.
    async fn connect(&mut self) -> Result<Option<Self::Link>, String>;
    /// Serve the link until it fails or the broker stops.
    async fn serve(&mut self, link: Self::Link) -> Exit;
}

pub(super) async fn run_reconnecting<T: Reconnecting>(mut task: T) {
    let mut failures: u32 = 0;
    loop {
        match task.connect().await {
            Ok(Some(link)) => {
                let connected = Instant::now();
                match task.serve(link).await {
                    Exit::Stop => break,
                    Exit::Lost(reason) => {
                        // A link that keeps dropping right after it came up backs off too.
                        if connected.elapsed() >= task.demand().timings.backoff_max {
                            failures = 0;
                        } else {
                            failures = failures.saturating_add(1);
                        }
                        warn!(%reason, redis = %task.target(), "redis pub/sub link lost; reconnecting");
                        if !task.demand().went_down().await {
                            break;
                        }
                    }
                }
            }
            Ok(None) => break,
            Err(reason) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(50) {
                    warn!(%reason, redis = %task.target(), failures, "cannot reach redis; retrying");
                } else {
                    debug!(%reason, failures, "cannot reach redis; retrying");
                }
                if !task.demand().went_down().await {
                    break;
                }
            }
        }
        let delay = backoff(&task.demand().timings, failures);
        if !task.demand().wait_down(delay).await {
            break;
        }
    }
    let demand = task.demand();
    demand.shared.up.store(false, Ordering::Release);
    demand.shared.metrics.broker_subscriptions.set(0);
    debug!("redis pub/sub task stopped");
}

/// The one task that owns the pub/sub connection to a single Redis.
struct PubSubTask {
    demand: Demand,
    client: Client,
    command_timeout: Duration,
    /// This node's own channel for liveness probes.
    probe_channel: String,
}

/// One live pub/sub connection and what is subscribed on it.
struct Link {
    sink: PubSubSink,
    stream: PubSubStream,
    /// Channels confirmed on this connection (the probe channel aside).
    live: HashMap<String, Channel>,
    /// Channels no longer wanted, with the end of their grace.
    releasing: HashMap<String, Instant>,
    /// The same, in deadline order (the grace is constant, so pushing keeps the order).
    release_queue: VecDeque<(Instant, String)>,
    last_activity: Instant,
    last_probe: Instant,
    probe_seq: u64,
    /// The probe in flight: its sequence number, when it was sent.
    probe: Option<(u64, Instant)>,
}

impl Reconnecting for PubSubTask {
    type Link = Link;

    fn demand(&mut self) -> &mut Demand {
        &mut self.demand
    }

    fn target(&self) -> String {
        redacted_addr(&self.client)
    }

    async fn connect(&mut self) -> Result<Option<Link>, String> {
        self.open().await
    }

    async fn serve(&mut self, link: Link) -> Exit {
        self.serve_link(link).await
    }
}

impl PubSubTask {
    /// Connect and subscribe every wanted channel. `Ok(None)`: stop.
    async fn open(&mut self) -> Result<Option<Link>, String> {
        // Keep answering commands while the connection is being made.
        let client = self.client.clone();
        let connect_timeout = self.demand.timings.connect_timeout;
        let connecting = async move {
            match timeout(connect_timeout, client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => Ok(pubsub),
                Ok(Err(err)) => Err(format!("connect: {err}")),
                Err(_) => Err("connect: timed out".to_owned()),
            }
        };
        tokio::pin!(connecting);
        let pubsub = loop {
            tokio::select! {
                _ = self.demand.stop.cancelled() => return Ok(None),
                result = &mut connecting => break result?,
                command = self.demand.commands.recv() => match command {
                    Some(command) => self.demand.queue_while_down(command),
                    None => return Ok(None),
                },
            }
        };
        let (mut sink, stream) = pubsub.split();

        // Everything wanted, and what was asked for while the link was down (those callers
        // that still wait: a channel nobody waits for must not stay subscribed).
        self.demand
            .waiting
            .retain(|(_, _, reply)| !reply.is_closed());
        let mut live = self.demand.wanted.clone();
        for (channel, target, _) in &self.demand.waiting {
            live.insert(channel.clone(), target.clone());
        }
        let mut channels: Vec<&str> = live.keys().map(String::as_str).collect();
        channels.push(&self.probe_channel);
        for chunk in channels.chunks(MAX_BATCH) {
            let started = Instant::now();
            match timeout(self.command_timeout, sink.subscribe(chunk)).await {
                Ok(Ok(())) => self
                    .demand
                    .shared
                    .metrics
                    .broker_roundtrip
                    .observe(started.elapsed().as_secs_f64()),
                Ok(Err(err)) => return Err(format!("resubscribe: {err}")),
                Err(_) => return Err("resubscribe: timed out".to_owned()),
            }
        }
        let now = Instant::now();
        let waiting = std::mem::take(&mut self.demand.waiting);
        for (channel, target, _) in &waiting {
            self.demand.wanted.insert(channel.clone(), target.clone());
        }
        let mut link = Link {
            sink,
            stream,
            live,
            releasing: HashMap::new(),
            release_queue: VecDeque::new(),
            last_activity: now,
            last_probe: now,
            probe_seq: 0,
            probe: None,
        };
        for (channel, _, reply) in waiting {
            if reply.send(Ok(())).is_err() {
                self.release(&mut link, channel);
            }
        }
        self.demand
            .shared
            .metrics
            .broker_subscriptions
            .set(link.live.len() as i64);
        let resumed = self.demand.mark_up();
        info!(
            redis = %redacted_addr(&self.client),
            channels = link.live.len(),
            resumed,
            "redis pub/sub link up"
        );
        // Services' FCALL roomcast_publish needs the library, also after a Redis restart.
        if let Err(err) = load_functions(&self.demand.shared.commands).await {
            warn!(%err, "cannot load the roomcast Redis functions (history)");
        }
        if !self.demand.emit(BrokerEvent::Up { resumed }).await {
            return Ok(None);
        }
        Ok(Some(link))
    }

    /// Serve one connection until it fails or the broker stops.
    async fn serve_link(&mut self, mut link: Link) -> Exit {
        let timer = sleep_until(self.next_wake(&link));
        tokio::pin!(timer);
        loop {
            let wake = self.next_wake(&link);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            // Biased, timers first: a stream that is always ready must not starve the probe
            // and the ends of graces.
            tokio::select! {
                biased;
                _ = self.demand.stop.cancelled() => return Exit::Stop,
                _ = &mut timer => {
                    if let Err(exit) = self.on_timer(&mut link).await {
                        return exit;
                    }
                }
                command = self.demand.commands.recv() => match command {
                    Some(command) => {
                        if let Err(exit) = self.on_commands(&mut link, command).await {
                            return exit;
                        }
                    }
                    None => return Exit::Stop,
                },
                message = link.stream.next() => match message {
                    Some(message) => {
                        if let Err(exit) = self.on_message(&mut link, message).await {
                            return exit;
                        }
                    }
                    None => return Exit::Lost("connection closed".into()),
                },
            }
        }
    }

    /// The earliest of: the end of a grace, a probe due, a probe overdue.
    fn next_wake(&self, link: &Link) -> Instant {
        let probe = match link.probe {
            Some((_, sent)) => sent + self.demand.timings.probe_timeout,
            None => (link.last_activity + self.demand.timings.probe_idle)
                .min(link.last_probe + self.demand.timings.probe_every),
        };
        match link.release_queue.front() {
            Some((deadline, _)) => probe.min(*deadline),
            None => probe,
        }
    }

    /// A batch of subscribe/unsubscribe requests: everything queued now, one SUBSCRIBE.
    async fn on_commands(&mut self, link: &mut Link, first: Command) -> Result<(), Exit> {
        let batch = self.demand.batch(first);
        let mut to_subscribe: Vec<String> = Vec::new();
        let mut replies = Vec::new();
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
                    if link.live.contains_key(&channel) {
                        // Still subscribed (maybe in its grace): live now, nothing to send.
                        link.releasing.remove(&channel);
                        if reply.send(Ok(())).is_err() {
                            self.release(link, channel);
                        }
                    } else {
                        if !to_subscribe.contains(&channel) {
                            to_subscribe.push(channel.clone());
                        }
                        replies.push((channel, target, reply));
                    }
                }
                Command::Unsubscribe { channel } => {
                    if self.demand.wanted.remove(&channel).is_some()
                        && link.live.contains_key(&channel)
                    {
                        self.release(link, channel);
                    }
                }
            }
        }
        if to_subscribe.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = timeout(self.command_timeout, link.sink.subscribe(&to_subscribe)).await;
        match result {
            Ok(Ok(())) => {
                self.demand
                    .shared
                    .metrics
                    .broker_roundtrip
                    .observe(started.elapsed().as_secs_f64());
                for (channel, target, reply) in replies {
                    link.live.insert(channel.clone(), target);
                    if reply.send(Ok(())).is_err() {
                        self.release(link, channel);
                    }
                }
                // Released within this batch, after its subscribe was queued.
                for channel in to_subscribe {
                    if !self.demand.wanted.contains_key(&channel)
                        && !link.releasing.contains_key(&channel)
                    {
                        self.release(link, channel);
                    }
                }
                self.demand
                    .shared
                    .metrics
                    .broker_subscriptions
                    .set(link.live.len() as i64);
                Ok(())
            }
            Ok(Err(err)) if !link_broken(&err) => {
                // Redis refused (an ACL, say): the connection itself is fine.
                warn!(%err, "redis refused SUBSCRIBE");
                for (channel, _, reply) in replies {
                    self.demand.wanted.remove(&channel);
                    let _ = reply.send(Err(BrokerError::Unavailable(err.to_string())));
                }
                Ok(())
            }
            other => {
                let error = match other {
                    Ok(Err(err)) => redis_error(&err),
                    _ => BrokerError::Timeout,
                };
                for (channel, _, reply) in replies {
                    self.demand.wanted.remove(&channel);
                    let _ = reply.send(Err(error.clone()));
                }
                Err(Exit::Lost(format!("SUBSCRIBE failed: {error}")))
            }
        }
    }

    /// Start the grace of a channel that is subscribed but no longer wanted.
    fn release(&mut self, link: &mut Link, channel: String) {
        self.demand.wanted.remove(&channel);
        let deadline = Instant::now() + self.demand.timings.unsubscribe_grace;
        link.releasing.insert(channel.clone(), deadline);
        link.release_queue.push_back((deadline, channel));
    }

    async fn on_message(&mut self, link: &mut Link, message: redis::Msg) -> Result<(), Exit> {
        let now = Instant::now();
        link.last_activity = now;
        let channel = message.get_channel_name();
        if channel == self.probe_channel {
            let seq: Option<u64> = std::str::from_utf8(message.get_payload_bytes())
                .ok()
                .and_then(|s| s.parse().ok());
            if let (Some((expected, sent)), Some(seq)) = (link.probe, seq)
                && seq == expected
            {
                link.probe = None;
                self.demand
                    .shared
                    .metrics
                    .broker_roundtrip
                    .observe(now.duration_since(sent).as_secs_f64());
            }
            return Ok(());
        }
        // Publications for a channel already unsubscribed can still be on their way.
        let Some(kind) = link.live.get(channel) else {
            return Ok(());
        };
        let Some(event) = self.demand.external_ids.event(
            kind,
            message.get_payload_bytes(),
            &self.demand.shared.metrics,
        ) else {
            return Ok(());
        };
        if self.demand.emit(event).await {
            Ok(())
        } else {
            Err(Exit::Stop)
        }
    }

    async fn on_timer(&mut self, link: &mut Link) -> Result<(), Exit> {
        let now = Instant::now();
        if let Some((_, sent)) = link.probe {
            if now >= sent + self.demand.timings.probe_timeout {
                return Err(Exit::Lost(format!(
                    "the liveness probe did not come back within {:?}",
                    self.demand.timings.probe_timeout
                )));
            }
        } else if now >= link.last_activity + self.demand.timings.probe_idle
            || now >= link.last_probe + self.demand.timings.probe_every
        {
            self.send_probe(link, now);
        }

        let mut expired = Vec::new();
        while let Some((deadline, _)) = link.release_queue.front() {
            if *deadline > now || expired.len() >= MAX_BATCH {
                break;
            }
            let Some((deadline, channel)) = link.release_queue.pop_front() else {
                break;
            };
            // A later release or a resubscribe makes this entry stale.
            if link.releasing.get(&channel) == Some(&deadline) {
                link.releasing.remove(&channel);
                if !self.demand.wanted.contains_key(&channel) {
                    expired.push(channel);
                }
            }
        }
        if expired.is_empty() {
            return Ok(());
        }
        match timeout(self.command_timeout, link.sink.unsubscribe(&expired)).await {
            Ok(Ok(())) => {
                for channel in &expired {
                    link.live.remove(channel);
                }
                self.demand
                    .shared
                    .metrics
                    .broker_subscriptions
                    .set(link.live.len() as i64);
                Ok(())
            }
            Ok(Err(err)) if !link_broken(&err) => {
                warn!(%err, "redis refused UNSUBSCRIBE");
                Ok(())
            }
            Ok(Err(err)) => Err(Exit::Lost(format!("UNSUBSCRIBE failed: {err}"))),
            Err(_) => Err(Exit::Lost("UNSUBSCRIBE timed out".into())),
        }
    }

    /// Publish the next probe through the pool, without waiting here: its return is awaited
    /// on the pub/sub connection.
    fn send_probe(&self, link: &mut Link, now: Instant) {
        link.probe_seq += 1;
        link.probe = Some((link.probe_seq, now));
        link.last_probe = now;
        let shared = self.demand.shared.clone();
        let channel = self.probe_channel.clone();
        let payload = link.probe_seq.to_string();
        let limit = self.command_timeout;
        tokio::spawn(async move {
            // Bounded: a probe that cannot be sent simply does not come back.
            let sent = publish(&shared.commands, &channel, false, payload.as_bytes());
            match timeout(limit, sent).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!(%err, "liveness probe not published"),
                Err(_) => debug!("liveness probe publish timed out"),
            }
        });
    }
}

/// Turns what arrives on a subscribed channel into the node's event, giving ids to
/// publications that arrive without one (plain `PUBLISH` from services).
pub(super) struct ExternalIds {
    prefix: String,
    next: u64,
}

impl ExternalIds {
    /// Ids unique to this process: a random token, then a counter.
    pub(super) fn new(token: u64) -> ExternalIds {
        ExternalIds {
            prefix: format!("{token:012x}x"),
            next: 1,
        }
    }

    /// The event for `payload` on a channel of `kind`; None for a malformed presence event.
    pub(super) fn event(
        &mut self,
        kind: &Channel,
        payload: &[u8],
        metrics: &Metrics,
    ) -> Option<BrokerEvent> {
        match kind {
            Channel::Presence(room) => {
                let Some((user, joined, ts)) = decode_presence_event(payload) else {
                    debug!("ignoring a malformed presence event");
                    return None;
                };
                Some(BrokerEvent::Presence(PresenceEvent {
                    room: room.clone(),
                    user,
                    joined,
                    ts,
                }))
            }
            Channel::Messages(target) => {
                let now_ms = unix_ms();
                let envelope = decode_envelope(
                    target.clone(),
                    payload,
                    || {
                        let id = format!("{}{}", self.prefix, self.next);
                        self.next += 1;
                        id
                    },
                    now_ms,
                );
                metrics
                    .pubsub_lag
                    .observe(now_ms.saturating_sub(envelope.ts) as f64 / 1000.0);
                Some(BrokerEvent::Publication(envelope))
            }
        }
    }
}

/// Milliseconds since the Unix epoch (what `ts` counts).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether an error means the connection is unusable (as opposed to Redis refusing a command).
pub(super) fn link_broken(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
}

/// Delay before reconnect attempt `failures` (0 after a link that was up): exponential from
/// `backoff_min`, capped at `backoff_max`, with jitter over its upper half so that nodes do
/// not reconnect in step.
pub(super) fn backoff(timings: &Timings, failures: u32) -> Duration {
    let min = timings.backoff_min.as_millis() as u64;
    let max = timings.backoff_max.as_millis().max(1) as u64;
    let ceiling = min.saturating_mul(1u64 << failures.min(20)).clamp(1, max);
    let half = ceiling / 2;
    Duration::from_millis(half + rand::random::<u64>() % (ceiling - half + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_the_protocol() {
        assert_eq!(
            channel_name("roomcast:", &Target::Room("news".into())),
            "roomcast:room:news"
        );
        assert_eq!(channel_name("p:", &Target::User("42".into())), "p:user:42");
        assert_eq!(
            channel_name("roomcast:", &Target::Broadcast),
            "roomcast:broadcast"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let t = Timings {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..Timings::default()
        };
        for failures in 0..40 {
            let d = backoff(&t, failures);
            let ceiling = (100u64 << failures.min(20)).min(2000);
            assert!(d >= Duration::from_millis(ceiling / 2), "{failures}: {d:?}");
            assert!(d <= Duration::from_millis(ceiling), "{failures}: {d:?}");
        }
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_without_echoing_it() {
        let (tx, _rx) = mpsc::channel(1);
        let config = RedisConfig {
            url: "redis://:secret@[not-a-host".into(),
            ..RedisConfig::default()
        };
        let err = RedisBroker::start(&config, tx, Arc::new(Metrics::new()))
            .err()
            .expect("refused");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
