//! The backend's hooks (`[hooks]`, docs/backend.md): the HTTP POSTs a node makes to ask the
//! backend who a connection is (connect), whether it may enter a room (join), and whether and
//! what it may publish (publish).
//!
//! Owns the pooled keep-alive HTTP client, the request and answer bodies, the per-node bound on
//! requests in flight, the timeout, and the metrics of every call. Every failure fails closed:
//! a hook that cannot be asked, or whose answer is late or not the contract's, refuses (the
//! caller turns that into handshake 503 or command `unavailable`). No call is retried.
//! When a hook is asked (which rooms, at which step) is the node's and the listener's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::auth::Glob;
use crate::clock::within;
use crate::config::{Config, HooksConfig};
use crate::metrics::{Hook, HookOutcome, Metrics};
use crate::protocol::{CommandError, ErrorCode};

/// Why a hook gave no usable answer; the node fails closed on every one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookFailure {
    #[error("the backend did not answer within {0} ms")]
    Timeout(u64),
    #[error("the backend cannot be reached")]
    Unreachable,
    #[error("the backend answered HTTP {0}")]
    Status(u16),
    #[error("the backend's answer is not the hook's contract: {0}")]
    BadAnswer(String),
    #[error("too many hook requests in flight on this node")]
    Overloaded,
}

impl HookFailure {
    fn outcome(&self) -> HookOutcome {
        match self {
            HookFailure::Timeout(_) => HookOutcome::Timeout,
            HookFailure::Overloaded => HookOutcome::Overloaded,
            _ => HookOutcome::Failed,
        }
    }

    /// The command error a client gets for a hook that gave no answer.
    fn unavailable(&self, hook: Hook) -> CommandError {
        CommandError::new(
            ErrorCode::Unavailable,
            format!("{} hook: {self}", hook.label()),
        )
    }
}

/// A hook's HTTP answer: its status and body (read in full, bounded).
struct Answer {
    status: u16,
    body: bytes::Bytes,
}

/// The join hook's request body.
#[derive(Serialize)]
struct JoinRequest<'a> {
    user: Option<&'a str>,
    conn_id: &'a str,
    room: &'a str,
}

/// The join hook's answer.
#[derive(Deserialize)]
struct JoinAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    /// Accepted, not used yet (docs/backend.md).
    #[serde(default, rename = "info")]
    _info: Option<serde_json::Value>,
}

/// The publish hook's request body.
#[derive(Serialize)]
struct PublishRequest<'a> {
    user: Option<&'a str>,
    conn_id: &'a str,
    room: &'a str,
    data: &'a RawValue,
}

/// The publish hook's answer.
#[derive(Deserialize)]
struct PublishAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    /// Replaces the client's data when present (`null` included: JSON `null` is data).
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
}

/// `Some` for a field that is present, even `null`.
fn present<'de, D>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// Who asks: the connection's user (`None` without authentication) and its `conn_id`.
#[derive(Clone, Copy)]
pub struct Asker<'a> {
    pub user: Option<&'a str>,
    pub conn_id: &'a str,
}

/// The configured hooks of a node.
pub struct Hooks {
    client: reqwest::Client,
    config: HooksConfig,
    join_rooms: Vec<Glob>,
    publish_rooms: Vec<Glob>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    /// The longest answer read: twice `limits.max_message_bytes` (a publish answer carries
    /// data, which may be that large, with its JSON around it).
    max_answer_bytes: usize,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the hooks' HTTP client: {0}")]
pub struct HooksError(#[source] reqwest::Error);

impl Hooks {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Hooks, HooksError> {
        let hooks = &config.hooks;
        let timeout = Duration::from_millis(hooks.timeout_ms);
        // Pooled keep-alive connections, as many idle as requests may be in flight; no proxy
        // from the environment (the backend is on the internal network).
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(hooks.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(timeout)
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(HooksError)?;
        Ok(Hooks {
            client,
            join_rooms: hooks.join_rooms.iter().map(|p| Glob::new(p)).collect(),
            publish_rooms: hooks.publish_rooms.iter().map(|p| Glob::new(p)).collect(),
            in_flight: Arc::new(Semaphore::new(hooks.max_in_flight)),
            timeout,
            max_answer_bytes: config.limits.max_message_bytes.saturating_mul(2),
            config: hooks.clone(),
            metrics,
        })
    }

    pub fn config(&self) -> &HooksConfig {
        &self.config
    }

    /// The join hook, for a room matching `hooks.join_rooms`: `Ok` when the backend allows
    /// (or no hook applies), `forbidden` with its reason when it refuses, `unavailable` when
    /// it gives no usable answer.
    pub async fn join(&self, asker: Asker<'_>, room: &str) -> Result<(), CommandError> {
        if self.config.join_url.is_empty() || !self.join_rooms.iter().any(|g| g.matches(room)) {
            return Ok(());
        }
        let body = JoinRequest {
            user: asker.user,
            conn_id: asker.conn_id,
            room,
        };
        let answer: JoinAnswer = self
            .ask(
                Hook::Join,
                &self.config.join_url,
                &body,
                |a: &JoinAnswer| a.allow,
            )
            .await
            .map_err(|failure| failure.unavailable(Hook::Join))?;
        if answer.allow {
            Ok(())
        } else {
            Err(CommandError::new(
                ErrorCode::Forbidden,
                answer
                    .reason
                    .unwrap_or_else(|| "the backend refused the join".to_owned()),
            ))
        }
    }

    /// The publish hook, for a room matching `hooks.publish_rooms`: `Ok(None)` to publish the
    /// data as it is, `Ok(Some(data))` to publish the backend's data instead, `rejected` with
    /// its reason when it refuses, `unavailable` when it gives no usable answer.
    pub async fn publish(
        &self,
        asker: Asker<'_>,
        room: &str,
        data: &RawValue,
    ) -> Result<Option<Box<RawValue>>, CommandError> {
        if self.config.publish_url.is_empty() || !self.publish_rooms.iter().any(|g| g.matches(room))
        {
            return Ok(None);
        }
        let body = PublishRequest {
            user: asker.user,
            conn_id: asker.conn_id,
            room,
            data,
        };
        let answer: PublishAnswer = self
            .ask(
                Hook::Publish,
                &self.config.publish_url,
                &body,
                |a: &PublishAnswer| a.allow,
            )
            .await
            .map_err(|failure| failure.unavailable(Hook::Publish))?;
        if answer.allow {
            Ok(answer.data)
        } else {
            Err(CommandError::new(
                ErrorCode::Rejected,
                answer
                    .reason
                    .unwrap_or_else(|| "the backend rejected the message".to_owned()),
            ))
        }
    }

    /// POST `body` to `url` and decode a 2xx answer as `A`; `allowed` says which outcome the
    /// metrics count.
    async fn ask<A: for<'de> Deserialize<'de>>(
        &self,
        hook: Hook,
        url: &str,
        body: &impl Serialize,
        allowed: impl Fn(&A) -> bool,
    ) -> Result<A, HookFailure> {
        let started = Instant::now();
        let result = self.post(url, body).await.and_then(|answer| {
            if !(200..300).contains(&answer.status) {
                return Err(HookFailure::Status(answer.status));
            }
            serde_json::from_slice::<A>(&answer.body)
                .map_err(|err| HookFailure::BadAnswer(err.to_string()))
        });
        let outcome = match &result {
            Ok(answer) if allowed(answer) => HookOutcome::Allowed,
            Ok(_) => HookOutcome::Refused,
            Err(failure) => failure.outcome(),
        };
        self.record(hook, outcome, started);
        result
    }

    fn record(&self, hook: Hook, outcome: HookOutcome, started: Instant) {
        let seconds = (outcome != HookOutcome::Overloaded).then(|| started.elapsed().as_secs_f64());
        self.metrics.hook_called(hook, outcome, seconds);
    }

    /// One POST, bounded by `hooks.timeout_ms` as a whole (connect, send, answer) and by
    /// `hooks.max_in_flight`: over it, nothing is sent.
    async fn post(&self, url: &str, body: &impl Serialize) -> Result<Answer, HookFailure> {
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            return Err(HookFailure::Overloaded);
        };
        let body =
            serde_json::to_vec(body).map_err(|err| HookFailure::BadAnswer(err.to_string()))?;
        let call = async {
            let mut response = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|err| classify(&err, self.config.timeout_ms))?;
            let status = response.status().as_u16();
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|err| classify(&err, self.config.timeout_ms))?
            {
                if body.len() + chunk.len() > self.max_answer_bytes {
                    return Err(HookFailure::BadAnswer(format!(
                        "longer than {} bytes",
                        self.max_answer_bytes
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer {
                status,
                body: body.freeze(),
            })
        };
        within(
            self.timeout,
            HookFailure::Timeout(self.config.timeout_ms),
            call,
        )
        .await
    }
}

fn classify(err: &reqwest::Error, timeout_ms: u64) -> HookFailure {
    if err.is_timeout() {
        HookFailure::Timeout(timeout_ms)
    } else {
        HookFailure::Unreachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_answer_tells_absent_data_from_null() {
        let a: PublishAnswer = serde_json::from_str(r#"{"allow":true}"#).expect("answer");
        assert!(a.data.is_none());
        let a: PublishAnswer =
            serde_json::from_str(r#"{"allow":true,"data":null}"#).expect("answer");
        assert_eq!(a.data.as_deref().map(RawValue::get), Some("null"));
        let a: PublishAnswer =
            serde_json::from_str(r#"{"allow":false,"reason":"spam"}"#).expect("answer");
        assert!(!a.allow);
        assert_eq!(a.reason.as_deref(), Some("spam"));
        assert!(serde_json::from_str::<PublishAnswer>(r#"{"reason":"x"}"#).is_err());
    }
}
