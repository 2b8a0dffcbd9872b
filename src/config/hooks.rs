//! The `[[validation.rooms]]` rules (a JSON Schema per room pattern) and the `[hooks]` section
//! (the backend's connect, join and publish hooks).
//!
//! Owns the keys, their defaults, the checks that name them, and reading and compiling the
//! schema files (once, at start). Matching rooms and checking data is `node::validation`'s.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Rooms whose published data must match a JSON Schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// First matching rule wins.
    pub rooms: Vec<ValidationRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationRule {
    /// A room glob (`*`, `?`), as `history.rooms`.
    pub pattern: String,
    /// A JSON Schema file (drafts 4, 6, 7, 2019-09, 2020-12); a relative path is from the
    /// node's working directory. Remote `$ref`s are not fetched.
    pub schema_file: PathBuf,
}

/// A schema compiled from its file, with the pattern of its rule.
pub struct CompiledRule {
    pub pattern: String,
    pub validator: jsonschema::Validator,
}

impl ValidationConfig {
    /// Read and compile every rule's schema; the error names the key and the file.
    pub fn compile(&self) -> Result<Vec<CompiledRule>, ConfigError> {
        self.rooms
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                if rule.pattern.is_empty() {
                    return Err(ConfigError::key(
                        &format!("validation.rooms[{i}].pattern"),
                        "must not be empty",
                    ));
                }
                let validator = compile_schema(&rule.schema_file).map_err(|problem| {
                    ConfigError::key(
                        &format!("validation.rooms[{i}].schema_file"),
                        format!("`{}` {problem}", rule.schema_file.display()),
                    )
                })?;
                Ok(CompiledRule {
                    pattern: rule.pattern.clone(),
                    validator,
                })
            })
            .collect()
    }
}

fn compile_schema(path: &Path) -> Result<jsonschema::Validator, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("cannot be read: {err}"))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| format!("is not JSON: {err}"))?;
    jsonschema::validator_for(&schema).map_err(|err| format!("is not a valid JSON Schema: {err}"))
}

/// The largest `hooks.max_in_flight`: far above what one node should send a backend at once,
/// far below what a semaphore can count.
const MAX_IN_FLIGHT: usize = 100_000;
/// Above this an `info` is not "small": presence replies carry one per listed member.
const MAX_INFO_BYTES: usize = 65_536;

/// The backend's hooks: HTTP POSTs the node makes at a connect, a join or a publish
/// (docs/backend.md). An empty URL turns its hook off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Asked at the handshake of a connection without a valid token (`connect_always`: of
    /// every connection); its answer is the connection's identity.
    pub connect_url: String,
    /// Ask the connect hook even when the handshake carries a valid JWT.
    pub connect_always: bool,
    /// Request headers passed to the connect hook (lower case; others are not sent).
    pub forward_headers: Vec<String>,
    /// Asked before a client joins a room matching `join_rooms`.
    pub join_url: String,
    pub join_rooms: Vec<String>,
    /// Asked before a client's publish to a room matching `publish_rooms` is published.
    pub publish_url: String,
    pub publish_rooms: Vec<String>,
    /// A hook not answered within this fails closed (handshake 503, command `unavailable`).
    pub timeout_ms: u64,
    /// Hook requests in flight at once on this node; above it a hook fails closed at once.
    pub max_in_flight: usize,
    /// The largest `info` a connect or join answer may carry (presence shows it to members).
    pub max_info_bytes: usize,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            connect_url: String::new(),
            connect_always: false,
            forward_headers: vec!["cookie".into(), "authorization".into()],
            join_url: String::new(),
            join_rooms: Vec::new(),
            publish_url: String::new(),
            publish_rooms: Vec::new(),
            timeout_ms: 1_000,
            max_in_flight: 256,
            max_info_bytes: 1_024,
        }
    }
}

impl HooksConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("connect_url", &self.connect_url),
            ("join_url", &self.join_url),
            ("publish_url", &self.publish_url),
        ] {
            check_url(key, url)?;
        }
        for (key, url, rooms) in [
            ("join", &self.join_url, &self.join_rooms),
            ("publish", &self.publish_url, &self.publish_rooms),
        ] {
            if !url.is_empty() && rooms.is_empty() {
                return Err(ConfigError::key(
                    &format!("hooks.{key}_url"),
                    format!("is never called: hooks.{key}_rooms is empty"),
                ));
            }
            for (i, pattern) in rooms.iter().enumerate() {
                if pattern.is_empty() {
                    return Err(ConfigError::key(
                        &format!("hooks.{key}_rooms[{i}]"),
                        "must not be empty",
                    ));
                }
            }
        }
        for (i, name) in self.forward_headers.iter().enumerate() {
            if super::validate::http_header_name_invalid(name) {
                return Err(ConfigError::key(
                    &format!("hooks.forward_headers[{i}]"),
                    format!("`{name}` is not an HTTP header name"),
                ));
            }
        }
        if self.connect_always && self.connect_url.is_empty() {
            return Err(ConfigError::key(
                "hooks.connect_always",
                "needs hooks.connect_url",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::key(
                "hooks.timeout_ms",
                "must be greater than 0",
            ));
        }
        if !(2..=MAX_INFO_BYTES).contains(&self.max_info_bytes) {
            return Err(ConfigError::key(
                "hooks.max_info_bytes",
                format!("must be between 2 and {MAX_INFO_BYTES}"),
            ));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(ConfigError::key(
                "hooks.max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        Ok(())
    }
}

/// Empty (no hook) or `http://HOST[:PORT]/…`.
fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.is_empty() {
        return Ok(());
    }
    let scheme_only = ["http://", "https://"].contains(&url);
    if scheme_only || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::key(
            &format!("hooks.{key}"),
            "must be empty (no hook) or an http:// or https:// URL",
        ));
    }
    Ok(())
}
