//! The `[webhooks]` section: where presence events are POSTed (`url`, signed with `secret`),
//! how long a departure waits for a rejoin (`leave_delay_ms`), and the bounds of delivery
//! (batch size, request timeout, retry backoff, attempts before parking, takeover idle time,
//! polling interval).
//!
//! Owns the section's keys, defaults and the checks that name them. What the keys drive is
//! `webhooks`'s (delivery) and the brokers' (recording the events).

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where events are POSTed; empty: no webhooks (no event is recorded either).
    pub url: String,
    /// The HMAC-SHA256 key of `X-Roomcast-Signature`; required with `url`.
    pub secret: String,
    /// A user's departure waits this long; a rejoin within it cancels `member_left` (and the
    /// rejoin's `member_joined`). 0: at once.
    pub leave_delay_ms: u64,
    /// Most events in one POST.
    pub batch_size: usize,
    /// A POST not answered within this counts as a failed attempt.
    pub timeout_ms: u64,
    /// Wait after the first failed attempt; doubles each failure up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Failed attempts of a batch before its events are parked (`GET /api/webhooks/failed`).
    pub max_attempts: u32,
    /// Events a node took and has not acknowledged nor retried for this long are taken over
    /// by another node (a node that died mid-delivery). Must exceed `timeout_ms +
    /// retry_max_ms`, the longest a live node goes without touching its events.
    pub claim_idle_ms: u64,
    /// How often an idle node looks for new events and for departures whose delay is over.
    pub poll_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: String::new(),
            secret: String::new(),
            leave_delay_ms: 0,
            batch_size: 100,
            timeout_ms: 5_000,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            max_attempts: 10,
            claim_idle_ms: 60_000,
            poll_ms: 100,
        }
    }
}

/// Most events in one POST (`webhooks.batch_size`).
pub const MAX_BATCH: usize = 10_000;

impl WebhooksConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The section's own checks; `cluster` is `redis.cluster` with the Redis broker.
    pub(super) fn validate(&self, cluster: bool) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let http = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !http || reqwest::Url::parse(&self.url).is_err() {
            return Err(ConfigError::key(
                "webhooks.url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.secret.is_empty() {
            return Err(ConfigError::key(
                "webhooks.secret",
                "is required when webhooks.url is set",
            ));
        }
        if cluster {
            return Err(ConfigError::key(
                "webhooks.url",
                "webhooks are not supported with redis.cluster yet",
            ));
        }
        for (key, value) in [
            ("batch_size", self.batch_size as u64),
            ("timeout_ms", self.timeout_ms),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("max_attempts", self.max_attempts.into()),
            ("claim_idle_ms", self.claim_idle_ms),
            ("poll_ms", self.poll_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::key(
                    &format!("webhooks.{key}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.batch_size > MAX_BATCH {
            return Err(ConfigError::key(
                "webhooks.batch_size",
                format!("must be at most {MAX_BATCH}"),
            ));
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(ConfigError::key(
                "webhooks.retry_max_ms",
                "must be at least webhooks.retry_initial_ms",
            ));
        }
        if self.claim_idle_ms <= self.timeout_ms.saturating_add(self.retry_max_ms) {
            return Err(ConfigError::key(
                "webhooks.claim_idle_ms",
                "must exceed webhooks.timeout_ms + webhooks.retry_max_ms, or a live node's \
                 events would be taken over while it retries",
            ));
        }
        Ok(())
    }
}
