//! The `[admin]` section: the admin HTTP address, its API key, and how often each node
//! announces its stats to the cluster (the console and `GET /api/nodes|rooms`).
//!
//! Owns the section's keys, defaults and the checks that name them. What the keys drive is
//! `admin`'s (routes) and `node::stats`'s (the announcing task).

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
    pub api_key: Option<String>,
    /// How often a node announces its stats and rooms through the broker; a node silent for
    /// three of its intervals drops out of `GET /api/nodes`.
    pub stats_interval_ms: u64,
    /// Most rooms a node announces (its biggest first): bounds the announcement's size.
    pub stats_max_rooms: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9090".into(),
            api_key: None,
            stats_interval_ms: 1_000,
            stats_max_rooms: 1_000,
        }
    }
}

impl AdminConfig {
    /// The checks of the section that need no other section (`admin.api_key` with a
    /// non-loopback address is checked with the address, in `validate`).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.api_key.as_deref() == Some("") {
            return Err(ConfigError::key("admin.api_key", "must not be empty"));
        }
        for (key, value) in [
            ("stats_interval_ms", self.stats_interval_ms),
            ("stats_max_rooms", self.stats_max_rooms as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::key(
                    &format!("admin.{key}"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}
