//! The publishing side of the Redis broker: where commands go and how they are sent.
//!
//! Owns: [`Commands`] (the deadpool-redis pool of a single Redis, or the redis crate's cluster
//! connection, which routes by key and follows `MOVED` itself), one `PUBLISH` / `SPUBLISH`,
//! the Redis Function library ([`FUNCTIONS`], `functions.lua`) and its (re)loading, the one
//! "bounded by the command timeout" helper, and the mapping of redis errors to
//! [`BrokerError`]. Leaves to others: what is published (the broker), pub/sub (the link tasks).

use crate::broker::redis::error::RedisFailure;
use std::future::Future;
use std::time::Duration;

use deadpool_redis::{Pool, PoolError};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::time::timeout;

use crate::broker::{BrokerError, Target};

/// The Redis Function library that keeps room history and presence. `roomcast_publish`
/// appends, numbers, trims, expires and publishes atomically; `roomcast_history` reads a
/// room's history; `roomcast_presence` / `roomcast_presence_read` keep and read presence.
///
/// `FCALL roomcast_publish 1 CHANNEL PAYLOAD [SIZE TTL_S [EPOCH [TRUSTED [PUBLISH_COMMAND]]]]`:
/// PAYLOAD is `{"data":…}` (other fields optional) or any other payload, which becomes the
/// data; SIZE and TTL_S default to what the room last used, else 100 and 3600. The id is
/// `<epoch>-<offset>`, offsets consecutive; the epoch changes when the history expired.
/// PUBLISH_COMMAND (`PUBLISH` or `SPUBLISH`) defaults to `SPUBLISH` on a Redis Cluster.
pub const FUNCTIONS: &str = include_str!("functions.lua");

/// Where commands (publishes, function calls, probes) go: a pooled single Redis, or a Redis
/// Cluster through the redis crate's cluster connection, which routes each command to the
/// shard that owns its key and follows `MOVED` and failovers.
pub(crate) enum Commands {
    Single(Pool),
    Cluster {
        client: Box<ClusterClient>,
        /// Made at first use: a cluster that is down when the node starts is not an error.
        connection: tokio::sync::OnceCell<ClusterConnection>,
        timeout: Duration,
    },
}

impl Commands {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Commands::Cluster { .. })
    }

    async fn cluster_connection(
        client: &ClusterClient,
        connection: &tokio::sync::OnceCell<ClusterConnection>,
        limit: Duration,
    ) -> Result<ClusterConnection, BrokerError> {
        connection
            .get_or_try_init(|| {
                bounded(limit, async {
                    client.get_async_connection().await.map_err(redis_error)
                })
            })
            .await
            .cloned()
    }

    /// Send one command (or a pipeline, on a single Redis) and read its answer.
    pub(crate) async fn send<T: redis::FromRedisValue, C: FunctionCall>(
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
                bounded(*timeout, async { Ok(call.send(&mut conn).await) }).await
            }
        }
    }

    pub(crate) fn close(&self) {
        if let Commands::Single(pool) = self {
            pool.close();
        }
    }
}

/// `work`, or [`BrokerError::Timeout`] once `limit` has passed.
pub(crate) async fn bounded<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    timeout(limit, work)
        .await
        .unwrap_or(Err(BrokerError::Timeout))
}

/// Whether a target's channel is a shard channel on a Redis Cluster: rooms and users are
/// (`SPUBLISH`, one shard), the broadcast every node needs is not (`PUBLISH`, every shard).
pub(crate) fn sharded(target: &Target) -> bool {
    !matches!(target, Target::Broadcast)
}

/// The command that publishes on `sharded` channels with these commands.
pub(crate) fn publish_command(commands: &Commands, sharded: bool) -> &'static str {
    if sharded && commands.is_cluster() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}

/// One PUBLISH (SPUBLISH for a shard channel on a cluster).
pub(crate) async fn publish(
    commands: &Commands,
    channel: &str,
    sharded: bool,
    payload: &[u8],
) -> Result<(), BrokerError> {
    let mut cmd = redis::cmd(publish_command(commands, sharded));
    cmd.arg(channel).arg(payload);
    commands
        .send::<i64, _>(&cmd)
        .await?
        .map(|_receivers| ())
        .map_err(redis_error)
}

/// Load the function library (idempotent; on a cluster, on every master).
pub(crate) async fn load_functions(commands: &Commands) -> Result<(), BrokerError> {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(FUNCTIONS);
    commands
        .send::<redis::Value, _>(&cmd)
        .await?
        .map(|_| ())
        .map_err(redis_error)
}

/// A command or a pipeline: what [`Commands::send`] can send.
pub(crate) trait FunctionCall {
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

/// Run a function call (or a pipeline of them); when Redis answers a generic `ERR` (which is
/// how it says "Function not found" after a restart without persistence: the reply has no
/// code of its own), load the library and try once more. A retry is safe:
/// `roomcast_publish` publishes as its last step, and presence writes are absolute.
pub(crate) async fn with_functions<T: redis::FromRedisValue, C: FunctionCall>(
    commands: &Commands,
    call: impl Fn() -> C,
) -> Result<T, BrokerError> {
    match commands.send::<T, C>(&call()).await? {
        Ok(value) => Ok(value),
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::ResponseError) => {
            load_functions(commands).await?;
            commands.send::<T, C>(&call()).await?.map_err(redis_error)
        }
        Err(err) => Err(redis_error(err)),
    }
}

/// Send several calls, one answer per call in order: one pipeline on a single Redis; on a
/// cluster one call each, all in flight at once (a pipeline must stay on one shard, and the
/// calls' keys spread over all of them).
pub(crate) async fn send_calls<T: redis::FromRedisValue>(
    commands: &Commands,
    calls: &[redis::Cmd],
) -> Result<Vec<T>, BrokerError> {
    if commands.is_cluster() {
        futures_util::future::try_join_all(
            calls
                .iter()
                .map(|call| with_functions(commands, move || call.clone())),
        )
        .await
    } else {
        let pipe = || {
            let mut pipe = redis::pipe();
            for call in calls {
                pipe.add_command(call.clone());
            }
            pipe
        };
        with_functions(commands, pipe).await
    }
}

fn pool_error(err: PoolError) -> BrokerError {
    match err {
        PoolError::Timeout(_) => BrokerError::Timeout,
        PoolError::Backend(err) => redis_error(err),
        other => RedisFailure::Pool(other).into(),
    }
}

pub(crate) fn redis_error(err: RedisError) -> BrokerError {
    if err.is_timeout() {
        BrokerError::Timeout
    } else {
        RedisFailure::Redis(err).into()
    }
}
