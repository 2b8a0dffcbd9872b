//! Builders for the Redis setups the modules repeat: a node configuration on a `redis-server`
//! or a Redis Cluster with a channel prefix no other test shares, a direct connection, several
//! nodes started and ready, the real binary as a node on Redis. The servers themselves
//! ([`RedisServer`], [`RedisCluster`]) are started by `support` and `support::cluster`.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::MultiplexedConnection;
use roomcast::config::{BrokerKind, Config, HistoryRule};

use super::cluster::RedisCluster;
use super::{Child, RedisServer, TestNode, WAIT, eventually, http_status, spawn_binary};

/// A channel prefix no other test shares: `{family}:{test}:{random}:`, so that tests on one
/// Redis (or a leftover key) never see each other's channels.
pub fn unique_prefix(family: &str, test: &str) -> String {
    format!("{family}:{test}:{:08x}:", rand::random::<u32>())
}

/// A direct connection to Redis at `url`, for a test to look at or publish past the nodes.
pub async fn redis_conn(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("redis url");
    tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("redis connects in time")
        .expect("redis connection")
}

/// The setup steps a test adds to [`super::test_config`], as chainable calls.
pub trait ConfigExt {
    /// The Redis broker on `redis` with channel `prefix`.
    fn on_redis(self, redis: &RedisServer, prefix: &str) -> Config;
    /// The Redis broker on every node of `cluster` as seeds, with channel `prefix`.
    fn on_redis_cluster(self, cluster: &RedisCluster, prefix: &str) -> Config;
    /// Rate and burst both `per_sec`: high enough that a test's bursts are never limited.
    fn with_rate(self, per_sec: u32) -> Config;
    /// History kept for rooms `chat:*`: the last `size` messages, ten minutes.
    fn with_chat_history(self, size: usize) -> Config;
}

impl ConfigExt for Config {
    fn on_redis(mut self, redis: &RedisServer, prefix: &str) -> Config {
        self.broker.kind = BrokerKind::Redis;
        self.redis.url = redis.url();
        self.redis.prefix = prefix.to_owned();
        self
    }

    fn on_redis_cluster(mut self, cluster: &RedisCluster, prefix: &str) -> Config {
        self.broker.kind = BrokerKind::Redis;
        self.redis.cluster = true;
        self.redis.urls = cluster.seed_urls();
        self.redis.prefix = prefix.to_owned();
        self
    }

    fn with_rate(mut self, per_sec: u32) -> Config {
        self.limits.rate_per_sec = per_sec;
        self.limits.rate_burst = per_sec;
        self
    }

    fn with_chat_history(mut self, size: usize) -> Config {
        self.history.rooms = vec![HistoryRule {
            pattern: "chat:*".into(),
            size,
            ttl_s: 600,
        }];
        self
    }
}

/// Wait until every node's `/readyz` answers 200.
pub async fn wait_ready(nodes: &[TestNode], what: &str) {
    for node in nodes {
        let url = node.admin_url("/readyz");
        eventually(what, || async { http_status(&url).await == 200 }).await;
    }
}

/// The real `roomcast` binary as a node on a `redis-server`: loopback on port 0, the Redis
/// broker with a channel prefix, a configuration file; more flags and environment as needed.
pub struct BinaryOnRedis<'a> {
    args: Vec<OsString>,
    envs: Vec<(&'a str, &'a str)>,
}

impl<'a> BinaryOnRedis<'a> {
    /// Writes `config_toml` to a temp file of its own for `--config`.
    pub fn new(redis: &RedisServer, prefix: &'a str, config_toml: &str) -> BinaryOnRedis<'a> {
        static FILES: AtomicU64 = AtomicU64::new(0);
        let file = std::env::temp_dir().join(format!(
            "roomcast-{}-{}{}.toml",
            std::process::id(),
            prefix.replace(':', "-"),
            FILES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, config_toml).expect("write config");
        let mut args: Vec<OsString> = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
            .map(OsString::from)
            .into();
        args.extend(["--redis".into(), redis.url().into()]);
        args.extend(["--config".into(), file.into_os_string()]);
        BinaryOnRedis {
            args,
            envs: vec![("ROOMCAST_REDIS__PREFIX", prefix)],
        }
    }

    pub fn flag(mut self, name: &str, value: &str) -> BinaryOnRedis<'a> {
        self.args.extend([name.into(), value.into()]);
        self
    }

    pub fn env(mut self, key: &'a str, value: &'a str) -> BinaryOnRedis<'a> {
        self.envs.push((key, value));
        self
    }

    /// Start it and wait for its WebSocket address: the process and `ws://ADDR/ws`.
    pub async fn spawn(self) -> (Child, String) {
        let args: Vec<&std::ffi::OsStr> = self.args.iter().map(OsString::as_os_str).collect();
        spawn_binary(&args, &self.envs).await
    }
}
