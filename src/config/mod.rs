//! Node configuration: the keys of docs/protocol.md "Running a node", their defaults and the
//! error that names a bad one. Reading file and environment is `load`'s (the only place the
//! `config` crate is used); the checks serde cannot express are `validate`'s.
//!
//! Command-line flags are parsed in `main.rs` and arrive here as [`Overrides`], applied last.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod admin;
mod hooks;
mod load;
mod validate;
mod webhooks;

pub use admin::AdminConfig;
pub use hooks::{CompiledRule, HooksConfig, ValidationConfig, ValidationRule};
pub use webhooks::WebhooksConfig;

use validate::parse_addr;

/// Environment variables `ROOMCAST_SECTION__KEY` override the file.
pub const ENV_PREFIX: &str = "ROOMCAST";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub limits: LimitsConfig,
    pub broker: BrokerConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub history: HistoryConfig,
    pub presence: PresenceConfig,
    pub validation: ValidationConfig,
    pub conflate: ConflateConfig,
    pub hooks: HooksConfig,
    pub log: LogConfig,
    pub webhooks: WebhooksConfig,
}

/// The longest `server.write_coalesce_ms`: past it a held frame is a stall, not a coalesced
/// write.
pub const MAX_WRITE_COALESCE_MS: u64 = 10_000;

/// The largest `server.compression_min_bytes`: above it nothing a node sends is compressed,
/// which is `server.compression = false`.
pub const MAX_COMPRESSION_MIN_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub path: String,
    /// Empty means "host name and pid", filled in by [`Config::node_id`].
    pub node_id: String,
    pub max_connections: u64,
    pub connect_rate_per_ip: u32,
    /// When set, a request whose `Origin` is not listed gets HTTP 403; a request without one
    /// (not a browser) is let through unless `require_origin`.
    pub allowed_origins: Vec<String>,
    /// Browsers only: a request without `Origin` gets HTTP 403.
    pub require_origin: bool,
    /// Connections open at once from one client address; above it HTTP 429.
    pub max_connections_per_ip: u64,
    /// Addresses of load balancers whose `client_ip_header` is believed.
    pub trusted_proxies: Vec<String>,
    /// Header carrying the client address when the peer is a trusted proxy.
    pub client_ip_header: String,
    pub handshake_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Bytes read from a socket at a time (tungstenite's read buffer, held by every
    /// connection); a larger frame grows it for as long as it needs.
    pub read_buffer_bytes: usize,
    /// Frames queued for a socket are written once this many bytes are buffered (and at every
    /// flush).
    pub write_buffer_bytes: usize,
    /// `TCP_NODELAY` on client sockets: each flush leaves at once. `false` lets the kernel
    /// hold a small write while an earlier one is unacknowledged (Nagle), which packs several
    /// frames per segment under load, at up to a round trip (or a client's delayed ACK) of
    /// latency on a burst.
    pub tcp_nodelay: bool,
    /// Adaptive write coalescing window, in milliseconds (0: off). A connection that flushed
    /// within the window holds its next flush until the window has passed, so the frames
    /// queued meanwhile leave in one write; a quiet connection flushes at once, and replies to
    /// the client's own commands are never held. At most [`MAX_WRITE_COALESCE_MS`].
    pub write_coalesce_ms: u64,
    /// permessage-deflate (RFC 7692) for clients that offer it: each message compressed once
    /// per node, the same bytes to every member that negotiated it.
    pub compression: bool,
    /// Frames shorter than this leave uncompressed (compressing them saves little and costs
    /// CPU). At most [`MAX_COMPRESSION_MIN_BYTES`].
    pub compression_min_bytes: usize,
    /// Connections the kernel queues for the accept loop (`listen` backlog; the kernel caps it
    /// at `net.core.somaxconn`). A reconnect storm overflowing it costs each dropped client a
    /// 1 s SYN retransmission.
    pub listen_backlog: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            path: "/ws".into(),
            node_id: String::new(),
            max_connections: 100_000,
            connect_rate_per_ip: 50,
            allowed_origins: Vec::new(),
            require_origin: false,
            max_connections_per_ip: 10_000,
            trusted_proxies: Vec::new(),
            client_ip_header: "x-forwarded-for".into(),
            handshake_timeout_ms: 5_000,
            read_buffer_bytes: 256,
            write_buffer_bytes: 8192,
            tcp_nodelay: true,
            // Measured (BENCHMARKS.md, issue 20): at 100k-200k deliveries/s over 1,000
            // members, 20 ms halves the segments per delivery and cuts CPU per delivery by
            // about a quarter; 5 and 10 ms hardly coalesce at those per-connection rates.
            write_coalesce_ms: 20,
            compression: false,
            compression_min_bytes: 256,
            listen_backlog: 4096,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Messages refused for the rate limit, in one unbroken run of refusals lasting at least
    /// `rate_limit_window_ms`, before the connection is closed with 1008 (see `limits`).
    pub rate_limit_strikes: u32,
    /// How long a connection must stay over its rate limit before it is closed with 1008; a
    /// shorter burst only costs its refused messages.
    pub rate_limit_window_ms: u64,
    pub max_rooms_per_connection: usize,
    pub outbox_messages: usize,
    pub idle_timeout_ms: u64,
    pub ping_interval_ms: u64,
    /// How long a closing connection waits for its close frame to be written and for the
    /// peer's reply, before the socket is dropped.
    pub close_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 65_536,
            rate_per_sec: 50,
            rate_burst: 100,
            rate_limit_strikes: 50,
            rate_limit_window_ms: 10_000,
            max_rooms_per_connection: 64,
            outbox_messages: 1024,
            idle_timeout_ms: 60_000,
            ping_interval_ms: 25_000,
            close_timeout_ms: 2_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    pub pool_size: usize,
    pub command_timeout_ms: u64,
    /// Redis Cluster: room and user channels use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`).
    pub cluster: bool,
    /// Seed nodes of the cluster (`redis.cluster`); empty means `redis.url` alone.
    pub urls: Vec<String>,
    /// A PEM file of CA certificates trusted for `rediss://`, besides the platform's roots;
    /// empty: the platform's roots alone.
    pub tls_ca_file: String,
}

impl RedisConfig {
    /// Where to find the cluster: `urls`, or `url` when that is empty.
    pub fn seed_urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "roomcast:".into(),
            pool_size: 16,
            command_timeout_ms: 1_000,
            cluster: false,
            urls: Vec::new(),
            tls_ca_file: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub jwt_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// The longest a revocation (`/api/revoke` `until`) may last, in seconds from now.
    pub max_revocation_s: u64,
    /// How long a user's server subscriptions (`/api/subscribe`) are kept after the last one.
    pub server_subs_ttl_s: u64,
    /// How long before a connection's token runs out it is sent `token_expiring`, in ms.
    pub expiry_warning_ms: u64,
    /// The cookie a handshake's token may come in (after `?token=` and `Authorization`);
    /// empty: none is read.
    pub token_cookie: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            jwt_secret: None,
            jwt_public_key_file: None,
            leeway_s: 5,
            issuer: None,
            audience: None,
            max_revocation_s: 2_592_000,
            server_subs_ttl_s: 86_400,
            expiry_warning_ms: 30_000,
            token_cookie: String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub rooms: Vec<HistoryRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    pub pattern: String,
    pub size: usize,
    pub ttl_s: u64,
}

/// Who is in which room (`presence.rooms`), and how long a silent node stays in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    pub rooms: Vec<PresenceRule>,
    /// A node refreshes its presence every quarter of this; one that stops (SIGKILL) is out of
    /// every room, its users' `member_left` sent by the others, within this many seconds.
    pub ttl_s: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            rooms: Vec::new(),
            ttl_s: 30,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceRule {
    pub pattern: String,
    /// Send `member_joined` / `member_left` to the room's members.
    #[serde(default)]
    pub events: bool,
    /// Most members a `presence` reply lists (the count stays exact).
    #[serde(default = "default_max_members")]
    pub max_members: usize,
}

fn default_max_members() -> usize {
    1_000
}

/// Conflated rooms (`conflate.rooms`): a member that is behind gets only the latest message
/// per `key` (docs/protocol.md "Conflated rooms").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflateConfig {
    pub rooms: Vec<ConflateRule>,
    /// Longest `key` of a publish, in bytes (client command, admin API, Redis envelope).
    pub max_key_bytes: usize,
}

/// The most `conflate.max_key_bytes` may be: a key is an identifier, not a payload.
pub const MAX_KEY_BYTES_CEILING: usize = 4096;

impl Default for ConflateConfig {
    fn default() -> Self {
        ConflateConfig {
            rooms: Vec::new(),
            max_key_bytes: 256,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflateRule {
    /// A room glob (`*`, `?`), as `history.rooms`.
    pub pattern: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// Values from command-line flags; they win over file and environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster (broker.kind = "redis", redis.cluster, redis.urls).
    pub redis_cluster: Option<Vec<String>>,
    pub node_id: Option<String>,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    /// A value that parses but cannot work (validation).
    #[error("invalid configuration key `{key}`: {problem}")]
    Key { key: String, problem: String },
    /// A key nobody reads: a typo would otherwise be silently ignored.
    #[error("unknown configuration key `{key}` ({source})")]
    UnknownKey {
        key: String,
        source: Box<config::ConfigError>,
    },
    /// The sources could not be read or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(#[source] Box<config::ConfigError>),
}

impl ConfigError {
    fn key(key: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError::Key {
            key: key.to_owned(),
            problem: problem.to_string(),
        }
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        parse_addr("server.listen", &self.server.listen).unwrap_or_else(|_| default_listen())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        parse_addr("admin.listen", &self.admin.listen).unwrap_or_else(|_| default_admin())
    }

    /// `server.node_id`, or "HOST-PID" when it is not set.
    pub fn node_id(&self) -> String {
        if !self.server.node_id.is_empty() {
            return self.server.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "roomcast".to_owned());
        format!("{host}-{}", std::process::id())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// Addresses of `server.trusted_proxies` (validated at load).
pub fn trusted_proxy_addrs(config: &ServerConfig) -> Vec<std::net::IpAddr> {
    config
        .trusted_proxies
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect()
}
