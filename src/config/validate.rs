//! Validation: the checks serde cannot express, each naming the key it refuses.

use std::net::SocketAddr;

use super::{AuthMode, Config, ConfigError, LimitsConfig};

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
    /// Checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.server.listen)?;
        parse_addr("admin.listen", &self.admin.listen)?;
        if !self.server.path.starts_with('/') {
            return Err(ConfigError::key("server.path", "must start with `/`"));
        }
        // The plain HTTP routes of the public port (`listener::SSE_PATH`, `PUBLISH_PATH`).
        if ["/sse", "/publish"].contains(&self.server.path.as_str()) {
            return Err(ConfigError::key(
                "server.path",
                "must not be /sse or /publish (the SSE transport's routes)",
            ));
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
        if self.server.write_coalesce_ms > super::MAX_WRITE_COALESCE_MS {
            return Err(ConfigError::key(
                "server.write_coalesce_ms",
                format!(
                    "must be at most {} (0 turns coalescing off)",
                    super::MAX_WRITE_COALESCE_MS
                ),
            ));
        }
        if self.server.compression_min_bytes > super::MAX_COMPRESSION_MIN_BYTES {
            return Err(ConfigError::key(
                "server.compression_min_bytes",
                format!("must be at most {}", super::MAX_COMPRESSION_MIN_BYTES),
            ));
        }
        self.admin.validate()?;
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
        self.webhooks
            .validate(self.broker.kind == super::BrokerKind::Redis && self.redis.cluster)?;
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
        positive("auth.max_revocation_s", self.auth.max_revocation_s)?;
        positive("auth.server_subs_ttl_s", self.auth.server_subs_ttl_s)?;
        if self.auth.mode == AuthMode::Jwt
            && self.auth.jwt_secret.is_none()
            && self.auth.jwt_public_key_file.is_none()
        {
            return Err(ConfigError::key(
                "auth.mode",
                "`jwt` needs auth.jwt_secret or auth.jwt_public_key_file",
            ));
        }
        positive("auth.expiry_warning_ms", self.auth.expiry_warning_ms)?;
        // A cookie name is an RFC 6265 token: no separators, spaces or controls.
        let cookie = &self.auth.token_cookie;
        if cookie
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            return Err(ConfigError::key(
                "auth.token_cookie",
                "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
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
        for (i, rule) in self.conflate.rooms.iter().enumerate() {
            if rule.pattern.is_empty() {
                return Err(ConfigError::key(
                    &format!("conflate.rooms[{i}].pattern"),
                    "must not be empty",
                ));
            }
        }
        if !(1..=super::MAX_KEY_BYTES_CEILING).contains(&self.conflate.max_key_bytes) {
            return Err(ConfigError::key(
                "conflate.max_key_bytes",
                format!("must be between 1 and {}", super::MAX_KEY_BYTES_CEILING),
            ));
        }
        self.hooks.validate()?;
        if !self.hooks.connect_url.is_empty()
            && self.hooks.timeout_ms >= self.server.handshake_timeout_ms
        {
            return Err(ConfigError::key(
                "hooks.timeout_ms",
                "must be below server.handshake_timeout_ms with a connect hook, or a slow \
                 backend's handshake is dropped instead of answered with 503",
            ));
        }
        // Last, since no stand-in makes a file readable (`check-config` names the keys before
        // it). Compiled again by the node at start; here so that a bad schema stops the node
        // (and `check-config`) before anything listens.
        self.validation.compile()?;
        Ok(())
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

/// Accepts `HOST:PORT` and `:PORT` (all interfaces).
pub(super) fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
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

pub(super) fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::key(key, "must be greater than 0"))
    } else {
        Ok(())
    }
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
