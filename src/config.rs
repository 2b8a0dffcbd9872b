//! Node configuration: the keys of docs/protocol.md "Running a node", their defaults, loading from
//! file and environment (the `config` crate lives only here), and validation.
//!
//! Command-line flags are parsed in `main.rs` and arrive here as [`Overrides`], applied last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    pub log: LogConfig,
}

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
            listen_backlog: 4096,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
    pub api_key: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9090".into(),
            api_key: None,
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

#[derive(Debug, thiserror::Error)]
enum CaFileProblem {
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    #[error("is not a PEM certificate file: {0}")]
    NotPem(rustls_pki_types::pem::Error),
    #[error("holds no PEM certificate")]
    NoCertificate,
}

/// The CA file exists and holds at least one PEM certificate, every one readable.
fn check_ca_file(path: &str) -> Result<(), CaFileProblem> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};

    let pem = std::fs::read(path).map_err(CaFileProblem::Unreadable)?;
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(CaFileProblem::NotPem)?;
    match certificates.is_empty() {
        true => Err(CaFileProblem::NoCertificate),
        false => Ok(()),
    }
}

impl Config {
    /// Defaults, then the TOML file, then `ROOMCAST_SECTION__KEY` variables from `env`, then
    /// the overrides.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let config = Config::load_unvalidated(file, env, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] without [`Config::validate`]: `roomcast check-config` validates on its
    /// own to name every bad key, not only the first.
    pub fn load_unvalidated(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // Only ROOMCAST_SECTION__KEY names configuration: another tool's ROOMCAST_BIN or
        // ROOMCAST_URL must not stop the node.
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix(&format!("{ENV_PREFIX}_"))
                    .is_some_and(|rest| rest.contains("__"))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("server.allowed_origins")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("redis.urls")
                .try_parsing(true)
                .source(Some(env)),
        );
        let set = |b: config::ConfigBuilder<config::builder::DefaultState>,
                   key: &str,
                   v: &Option<String>| match v {
            Some(v) => b.set_override(key, v.clone()),
            None => Ok(b),
        };
        let map_err = |e| ConfigError::Load(Box::new(e));
        builder = set(builder, "server.listen", &overrides.listen).map_err(map_err)?;
        builder = set(builder, "admin.listen", &overrides.admin_listen).map_err(map_err)?;
        builder = set(builder, "server.node_id", &overrides.node_id).map_err(map_err)?;
        if let Some(url) = &overrides.redis_url {
            builder = builder
                .set_override("broker.kind", "redis")
                .and_then(|b| b.set_override("redis.url", url.clone()))
                .map_err(map_err)?;
        }
        if let Some(urls) = &overrides.redis_cluster {
            builder = builder
                .set_override("broker.kind", "redis")
                .and_then(|b| b.set_override("redis.cluster", true))
                .and_then(|b| b.set_override("redis.urls", urls.clone()))
                .map_err(map_err)?;
        }
        let raw = builder.build().map_err(map_err)?;
        let config: Config = raw.try_deserialize().map_err(describe_deserialize_error)?;
        Ok(config)
    }

    /// Checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.server.listen)?;
        parse_addr("admin.listen", &self.admin.listen)?;
        if !self.server.path.starts_with('/') {
            return Err(ConfigError::key("server.path", "must start with `/`"));
        }
        positive("server.max_connections", self.server.max_connections)?;
        positive(
            "server.connect_rate_per_ip",
            self.server.connect_rate_per_ip.into(),
        )?;
        positive(
            "server.handshake_timeout_ms",
            self.server.handshake_timeout_ms,
        )?;
        positive(
            "server.read_buffer_bytes",
            self.server.read_buffer_bytes as u64,
        )?;
        positive(
            "server.write_buffer_bytes",
            self.server.write_buffer_bytes as u64,
        )?;
        positive("server.listen_backlog", self.server.listen_backlog.into())?;
        if self.admin.api_key.as_deref() == Some("") {
            return Err(ConfigError::key("admin.api_key", "must not be empty"));
        }
        if self.admin.api_key.is_none() && !self.admin_addr().ip().is_loopback() {
            return Err(ConfigError::key(
                "admin.api_key",
                "is required when admin.listen is not a loopback address",
            ));
        }
        positive(
            "server.max_connections_per_ip",
            self.server.max_connections_per_ip,
        )?;
        for (i, proxy) in self.server.trusted_proxies.iter().enumerate() {
            if proxy.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::key(
                    &format!("server.trusted_proxies[{i}]"),
                    format!("`{proxy}` is not an IP address"),
                ));
            }
        }
        if http_header_name_invalid(&self.server.client_ip_header) {
            return Err(ConfigError::key(
                "server.client_ip_header",
                "must be an HTTP header name",
            ));
        }
        self.limits.validate()?;
        if !(self.redis.url.starts_with("redis://") || self.redis.url.starts_with("rediss://")) {
            return Err(ConfigError::key(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        for (i, url) in self.redis.urls.iter().enumerate() {
            let key = format!("redis.urls[{i}]");
            if !url.starts_with("redis://") {
                let problem = if url.starts_with("rediss://") {
                    "rediss:// is not supported with redis.cluster yet; use redis://"
                } else {
                    "must start with redis://"
                };
                return Err(ConfigError::key(&key, problem));
            }
        }
        if self.redis.cluster
            && self.redis.urls.is_empty()
            && !self.redis.url.starts_with("redis://")
        {
            return Err(ConfigError::key(
                "redis.url",
                "rediss:// is not supported with redis.cluster yet; use redis://",
            ));
        }
        if !self.redis.cluster && !self.redis.urls.is_empty() {
            return Err(ConfigError::key(
                "redis.urls",
                "lists cluster seed nodes: set redis.cluster = true, or use redis.url",
            ));
        }
        if !self.redis.tls_ca_file.is_empty() {
            check_ca_file(&self.redis.tls_ca_file).map_err(|problem| {
                let file = &self.redis.tls_ca_file;
                ConfigError::key("redis.tls_ca_file", format!("`{file}` {problem}"))
            })?;
        }
        positive("redis.pool_size", self.redis.pool_size as u64)?;
        positive("redis.command_timeout_ms", self.redis.command_timeout_ms)?;
        if self.auth.mode == AuthMode::Jwt
            && self.auth.jwt_secret.is_none()
            && self.auth.jwt_public_key_file.is_none()
        {
            return Err(ConfigError::key(
                "auth.mode",
                "`jwt` needs auth.jwt_secret or auth.jwt_public_key_file",
            ));
        }
        for (i, rule) in self.history.rooms.iter().enumerate() {
            if rule.pattern.is_empty() {
                return Err(ConfigError::key(
                    &format!("history.rooms[{i}].pattern"),
                    "must not be empty",
                ));
            }
            positive(&format!("history.rooms[{i}].size"), rule.size as u64)?;
            positive(&format!("history.rooms[{i}].ttl_s"), rule.ttl_s)?;
        }
        for (i, rule) in self.presence.rooms.iter().enumerate() {
            if rule.pattern.is_empty() {
                return Err(ConfigError::key(
                    &format!("presence.rooms[{i}].pattern"),
                    "must not be empty",
                ));
            }
            positive(
                &format!("presence.rooms[{i}].max_members"),
                rule.max_members as u64,
            )?;
        }
        positive("presence.ttl_s", self.presence.ttl_s)?;
        Ok(())
    }

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

impl LimitsConfig {
    /// Every limit is a count or a duration that 0 would turn into "refuse everything".
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("max_message_bytes", self.max_message_bytes as u64),
            ("rate_per_sec", self.rate_per_sec.into()),
            ("rate_burst", self.rate_burst.into()),
            ("rate_limit_strikes", self.rate_limit_strikes.into()),
            ("rate_limit_window_ms", self.rate_limit_window_ms),
            (
                "max_rooms_per_connection",
                self.max_rooms_per_connection as u64,
            ),
            ("outbox_messages", self.outbox_messages as u64),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("ping_interval_ms", self.ping_interval_ms),
            ("close_timeout_ms", self.close_timeout_ms),
        ] {
            positive(&format!("limits.{key}"), value)?;
        }
        Ok(())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// Accepts `HOST:PORT` and `:PORT` (all interfaces).
fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let normalized = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else if value == "localhost" || value.starts_with("localhost:") {
        value.replacen("localhost", "127.0.0.1", 1)
    } else {
        value.to_owned()
    };
    normalized.parse().map_err(|_| {
        ConfigError::key(
            key,
            format!("`{value}` is not an address like 127.0.0.1:8080"),
        )
    })
}

fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Addresses of `server.trusted_proxies` (validated at load).
pub fn trusted_proxy_addrs(config: &ServerConfig) -> Vec<std::net::IpAddr> {
    config
        .trusted_proxies
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::key(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// The `config` crate names the section; serde names the field. Put them together so the
/// message names the whole key.
/// serde's "unknown field" reaches us only as text inside the config crate's error (it has no
/// variant for it), so the key is read from that text to name it.
fn describe_deserialize_error(err: config::ConfigError) -> ConfigError {
    let text = err.to_string();
    let quoted = |marker: &str, from: &str| {
        let (_, rest) = from.split_once(marker)?;
        rest.split_once('`').map(|(name, _)| name.to_owned())
    };
    let Some(field) = quoted("unknown field `", &text) else {
        return ConfigError::Load(Box::new(err));
    };
    let key = match text
        .rfind("for key `")
        .and_then(|at| quoted("for key `", &text[at..]))
    {
        Some(section) => format!("{section}.{field}"),
        None => field,
    };
    let source = Box::new(err);
    ConfigError::UnknownKey { key, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_accept_port_only() {
        assert_eq!(
            parse_addr("k", ":0").expect("addr"),
            "0.0.0.0:0".parse::<SocketAddr>().expect("addr")
        );
        assert!(parse_addr("k", "nowhere").is_err());
    }
}
