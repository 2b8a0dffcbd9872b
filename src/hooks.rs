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

use std::collections::BTreeMap;
use std::net::IpAddr;

use percent_encoding::percent_decode_str;
use tokio_tungstenite::tungstenite::http::HeaderMap;

use crate::auth::{Glob, Identity};
use crate::clock::now_ms;
use crate::clock::within;
use crate::config::{Config, HooksConfig};
use crate::metrics::{Hook, HookOutcome, Metrics};
use crate::protocol::{CommandError, ErrorCode, RoomName};

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
    /// What presence shows of the user in this room (instead of the connect hook's).
    #[serde(default)]
    info: Option<Box<RawValue>>,
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

/// The connect hook's request body.
#[derive(Serialize)]
struct ConnectRequest<'a> {
    address: String,
    headers: BTreeMap<&'a str, String>,
    query: BTreeMap<String, String>,
}

/// The connect hook's answer: the identity a JWT's claims would give.
#[derive(Deserialize)]
struct ConnectAnswer {
    user: serde_json::Value,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    subs: Vec<String>,
    #[serde(default)]
    exp: Option<u64>,
    /// What presence shows of the user (a join hook's answer may replace it per room).
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

/// An answer's `info`: a JSON object of at most `max_bytes` (`hooks.max_info_bytes`); `null`
/// or absent is none.
fn checked_info(info: Option<Box<RawValue>>, max_bytes: usize) -> Result<Option<Arc<str>>, String> {
    let Some(info) = info else {
        return Ok(None);
    };
    let text = info.get().trim();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with('{') {
        return Err("`info` must be a JSON object".to_owned());
    }
    if text.len() > max_bytes {
        return Err(format!(
            "`info` is {} bytes, above hooks.max_info_bytes ({max_bytes})",
            text.len()
        ));
    }
    Ok(Some(Arc::from(text)))
}

impl ConnectAnswer {
    /// The identity, or why the answer is not the contract's.
    fn identity(self, now_s: u64, max_info_bytes: usize) -> Result<Identity, String> {
        let info = checked_info(self.info, max_info_bytes)?;
        let user = match self.user {
            serde_json::Value::String(s) if !s.is_empty() => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err("`user` must be a non-empty string or a number".to_owned()),
        };
        let subs = self
            .subs
            .iter()
            .map(|room| RoomName::new(room).map_err(|err| format!("`subs`: {}", err.message)))
            .collect::<Result<Vec<_>, _>>()?;
        if self.exp.is_some_and(|exp| exp <= now_s) {
            return Err("`exp` is in the past".to_owned());
        }
        // Without `exp` the connection lasts until it ends (or is disconnected or revoked).
        let exp = self.exp.unwrap_or(u64::MAX);
        Ok(Identity {
            user: user.into(),
            rooms: self.rooms,
            publish: self.publish,
            exp,
            expires_at: exp,
            issued_at: None,
            jti: None,
            subs,
            info,
        })
    }
}

/// Why the connect hook gave no identity: the handshake's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectRefused {
    /// The backend answered 401 or 403: that status is the handshake's.
    Refused(u16),
    /// No usable answer: the handshake gets 503.
    Unavailable(HookFailure),
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
pub enum HooksError {
    #[error("cannot build the hooks' HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot set up TLS for the hooks' HTTP client: {0}")]
    Tls(#[source] rustls::Error),
}

impl Hooks {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Hooks, HooksError> {
        let hooks = &config.hooks;
        let timeout = Duration::from_millis(hooks.timeout_ms);
        // Pooled keep-alive connections, as many idle as requests may be in flight; no proxy
        // from the environment (the backend is on the internal network).
        let client = crate::backend_http::client_builder()
            .map_err(HooksError::Tls)?
            .pool_max_idle_per_host(hooks.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(timeout)
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(HooksError::Client)?;
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

    /// The connect hook is configured: asked at handshakes without a valid token (or at
    /// every one, `connect_always`).
    pub fn connect_enabled(&self) -> bool {
        !self.config.connect_url.is_empty()
    }

    /// The connect hook: the client's `address`, the `forward_headers` it sent and its query
    /// parameters go to the backend, whose answer is the connection's identity.
    pub async fn connect(
        &self,
        address: IpAddr,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Identity, ConnectRefused> {
        let body = ConnectRequest {
            address: address.to_string(),
            headers: self.forwarded(headers),
            query: query.map(query_pairs).unwrap_or_default(),
        };
        let started = Instant::now();
        let result = match self.post(&self.config.connect_url, &body).await {
            Ok(Answer {
                status: status @ (401 | 403),
                ..
            }) => Err(ConnectRefused::Refused(status)),
            Ok(answer) if (200..300).contains(&answer.status) => {
                serde_json::from_slice::<ConnectAnswer>(&answer.body)
                    .map_err(|err| err.to_string())
                    .and_then(|a| a.identity(now_ms() / 1000, self.config.max_info_bytes))
                    .map_err(|problem| ConnectRefused::Unavailable(HookFailure::BadAnswer(problem)))
            }
            Ok(answer) => Err(ConnectRefused::Unavailable(HookFailure::Status(
                answer.status,
            ))),
            Err(failure) => Err(ConnectRefused::Unavailable(failure)),
        };
        let outcome = match &result {
            Ok(_) => HookOutcome::Allowed,
            Err(ConnectRefused::Refused(_)) => HookOutcome::Refused,
            Err(ConnectRefused::Unavailable(failure)) => failure.outcome(),
        };
        self.record(Hook::Connect, outcome, started);
        result
    }

    /// The request's `forward_headers`, by their configured (lower-case) names; several
    /// values of one header are joined with ", " ("; " for `cookie`, as RFC 6265 has it).
    fn forwarded<'a>(&'a self, headers: &HeaderMap) -> BTreeMap<&'a str, String> {
        self.config
            .forward_headers
            .iter()
            .filter_map(|name| {
                let values: Vec<&str> = headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let separator = if name.eq_ignore_ascii_case("cookie") {
                    "; "
                } else {
                    ", "
                };
                (!values.is_empty()).then(|| (name.as_str(), values.join(separator)))
            })
            .collect()
    }

    /// The join hook, for a room matching `hooks.join_rooms`: `Ok` (with the `info` presence
    /// shows of the user in this room, if the answer has one) when the backend allows (or no
    /// hook applies), `forbidden` with its reason when it refuses, `unavailable` when
    /// it gives no usable answer.
    pub async fn join(
        &self,
        asker: Asker<'_>,
        room: &str,
    ) -> Result<Option<Arc<str>>, CommandError> {
        if self.config.join_url.is_empty() || !self.join_rooms.iter().any(|g| g.matches(room)) {
            return Ok(None);
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
            checked_info(answer.info, self.config.max_info_bytes)
                .map_err(|problem| HookFailure::BadAnswer(problem).unavailable(Hook::Join))
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

/// `a=1&b=x%20y` as a map (form decoding: `+` is a space; a repeated name keeps its last
/// value, a name without `=` has the value "").
fn query_pairs(query: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (decode(name), decode(value)),
            None => (decode(pair), String::new()),
        })
        .collect()
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
    fn query_parameters_are_form_decoded() {
        let pairs = query_pairs("session=a%20b&x=1+2&flag&&x2=");
        assert_eq!(pairs.get("session").map(String::as_str), Some("a b"));
        assert_eq!(pairs.get("x").map(String::as_str), Some("1 2"));
        assert_eq!(pairs.get("flag").map(String::as_str), Some(""));
        assert_eq!(pairs.len(), 4);
    }

    #[test]
    fn a_connect_answer_becomes_an_identity_or_is_refused() {
        let answer = |text: &str| serde_json::from_str::<ConnectAnswer>(text).expect("answer");
        let identity = answer(r#"{"user":"alice","rooms":["chat:*"],"subs":["news"],"exp":2000}"#)
            .identity(1000, 1024)
            .expect("identity");
        assert_eq!(&*identity.user, "alice");
        assert_eq!(identity.rooms, Some(vec!["chat:*".to_owned()]));
        assert!(identity.publish.is_none());
        assert_eq!(identity.subs.len(), 1);
        assert_eq!((identity.exp, identity.expires_at), (2000, 2000));
        let forever = answer(r#"{"user":42}"#)
            .identity(1000, 1024)
            .expect("identity");
        assert_eq!(&*forever.user, "42");
        assert_eq!(forever.expires_at, u64::MAX);
        for bad in [
            r#"{"user":""}"#,
            r#"{"user":null}"#,
            r#"{"user":"a","subs":["bad room!"]}"#,
            r#"{"user":"a","exp":999}"#,
            r#"{"user":"a","info":"a string"}"#,
            r#"{"user":"a","info":{"bio":"0123456789ab"}}"#,
        ] {
            assert!(answer(bad).identity(1000, 20).is_err(), "{bad}");
        }
        let info = |text: &str| answer(text).identity(1000, 20).expect("identity").info;
        assert_eq!(
            info(r#"{"user":"a","info":{"n":"A"}}"#).as_deref(),
            Some(r#"{"n":"A"}"#)
        );
        assert_eq!(info(r#"{"user":"a","info":null}"#), None);
        assert_eq!(info(r#"{"user":"a"}"#), None);
    }

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
