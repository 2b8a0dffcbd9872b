//! A `chaos` subscriber's life: join, count what arrives, get cut at random, and come back
//! with `join` + `since`; and the pure helpers it uses (the cut delays, the join command, a
//! frame's metadata, the score of what one subscriber saw).
//!
//! Owns one subscriber's loop and counts; the phases and the report are `mod`'s.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::payload::{self, Incoming, Payload};
use crate::scenario::traffic::now_us;
use crate::stats::{self, Insert, Seen};

use super::{KillDist, Member, Shared, first_join};

/// A small deterministic generator (SplitMix64): enough randomness for cut times and URL
/// choice without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Seconds to the next cut for a uniform draw `u` in [0, 1); `None` when cuts are off.
pub fn kill_delay(dist: KillDist, mean_s: f64, u: f64) -> Option<Duration> {
    if !(mean_s.is_finite() && mean_s > 0.0) {
        return None;
    }
    let u = u.clamp(0.0, 1.0 - f64::EPSILON);
    let s = match dist {
        KillDist::Uniform => mean_s * (0.5 + u),
        KillDist::Exp => (-mean_s * (1.0 - u).ln()).clamp(0.05 * mean_s, 5.0 * mean_s),
    };
    Duration::try_from_secs_f64(s).ok()
}

/// `join` of `room`, resuming after `since` when given, else asking for the last `history`
/// messages when given.
pub fn join_command(room: &str, since: Option<&str>, history: Option<u64>) -> String {
    let mut cmd = serde_json::json!({ "type": "join", "room": room, "id": "chaos" });
    if let Some(since) = since {
        cmd["since"] = since.into();
    } else if let Some(n) = history {
        cmd["history"] = n.into();
    }
    cmd.to_string()
}

/// The fields of a server frame the chaos subscriber needs beyond `payload::classify`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct FrameMeta<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Cow<'a, str>,
    /// A message's id (or a reply's request id).
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub recovered: Option<bool>,
    #[serde(default)]
    pub history: Option<u64>,
}

pub fn frame_meta(text: &str) -> FrameMeta<'_> {
    serde_json::from_str(text).unwrap_or_default()
}

/// One subscriber's delivery against the acknowledged set: (acknowledged received, received
/// but not acknowledged). Consumes `seen`.
pub fn score(mut seen: Seen, acked: &[u64]) -> (u64, u64) {
    let received = seen.count();
    let mut missing = 0;
    for &k in acked {
        if seen.insert(k) == Insert::New {
            missing += 1;
        }
    }
    let got = acked.len() as u64 - missing;
    (got, received - got)
}

#[derive(Default)]
pub(super) struct SubResult {
    pub(super) seen: Option<Seen>,
    pub(super) duplicates: u64,
    pub(super) foreign: u64,
    pub(super) kills: u64,
    pub(super) lost: u64,
    pub(super) reconnects: u64,
    pub(super) reconnect_failures: BTreeMap<String, u64>,
    pub(super) not_recovered: u64,
    pub(super) without_since: u64,
    pub(super) replayed: u64,
    pub(super) server_errors: BTreeMap<String, u64>,
    pub(super) joined_h: Option<Histogram<u64>>,
    pub(super) first_h: Option<Histogram<u64>>,
    pub(super) latency_h: Option<Histogram<u64>>,
}

/// Reset the connection (no close frame) so the server sees an abrupt loss.
fn cut(ws: Ws) {
    let _ = ws.get_ref().set_zero_linger();
    drop(ws);
}

/// Send `join` and wait for `joined`: (`recovered`, `history`). Frames before it go to
/// `on_text`.
async fn join_since(
    ws: &mut Ws,
    cmd: String,
    timeout: Duration,
    mut on_text: impl FnMut(&str),
) -> Result<(Option<bool>, Option<u64>), String> {
    let attempt = async {
        ws.send(Message::Text(cmd.into()))
            .await
            .map_err(|e| format!("join send: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let meta = frame_meta(text.as_str());
                    match meta.kind.as_ref() {
                        "joined" => return Ok((meta.recovered, meta.history)),
                        "error" => return Err("join refused".to_string()),
                        _ => on_text(text.as_str()),
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Err("closed while joining".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("join: {e}")),
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| "join timed out".to_string())?
}

/// What one subscriber keeps between its connections.
struct SubState {
    seen: Seen,
    last_id: Option<String>,
    /// `now_us` when the current reconnect started, until its first message of this run.
    pending_first: Option<u64>,
    result: SubResult,
}

impl SubState {
    fn on_text(&mut self, shared: &Shared, text: &str) {
        match payload::classify(text) {
            Incoming::Message(p) => {
                self.note_id(text);
                if p.run != shared.publishing.run {
                    self.result.foreign += 1;
                    return;
                }
                self.on_payload(shared, p);
            }
            Incoming::ForeignMessage => {
                self.note_id(text);
                self.result.foreign += 1;
            }
            Incoming::Error { code, .. } => {
                *self
                    .result
                    .server_errors
                    .entry(code.into_owned())
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    fn note_id(&mut self, text: &str) {
        if let Some(id) = frame_meta(text).id {
            self.last_id = Some(id.into_owned());
        }
    }

    fn on_payload(&mut self, shared: &Shared, p: Payload) {
        let now = now_us();
        if let Some(start) = self.pending_first.take()
            && let Some(h) = self.result.first_h.as_mut()
        {
            stats::record(h, now.saturating_sub(start));
        }
        match self.seen.insert(p.seq) {
            Insert::New => {
                if let Some(h) = self.result.latency_h.as_mut() {
                    stats::record(h, now.saturating_sub(p.t));
                }
                shared.received.fetch_add(1, Ordering::Relaxed);
            }
            Insert::Duplicate => self.result.duplicates += 1,
            Insert::OutOfRange => self.result.foreign += 1,
        }
    }
}

pub(super) async fn subscriber(i: u64, mut m: Member) -> SubResult {
    let source = client::source_address(i as usize, m.common.sources);
    let mut rng = Rng::new(m.shared.publishing.run ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let first_endpoint = i as usize % m.shared.endpoints.len();
    let Some(mut ws) = first_join(i, first_endpoint, &mut m).await else {
        return SubResult::default();
    };
    let mut st = SubState {
        seen: Seen::new(m.shared.publishing.schedule.planned),
        last_id: None,
        pending_first: None,
        result: SubResult {
            joined_h: Some(stats::histogram()),
            first_h: Some(stats::histogram()),
            latency_h: Some(stats::histogram()),
            ..SubResult::default()
        },
    };
    let finish = |st: SubState| SubResult {
        seen: Some(st.seen),
        ..st.result
    };

    // ---- wait for the start ----
    let cuts_end = loop {
        tokio::select! {
            changed = m.go.changed() => {
                if changed.is_err() {
                    return finish(st);
                }
                if let Some((_, end)) = *m.go.borrow_and_update() {
                    break end;
                }
            }
            _ = m.stop.changed() => return finish(st),
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => st.on_text(&m.shared, t.as_str()),
                Some(Ok(_)) => {}
                _ => {
                    st.result.lost += 1;
                    return finish(st);
                }
            },
        }
    };

    let stopped = m.stop.changed();
    tokio::pin!(stopped);
    let far = cuts_end + Duration::from_secs(86_400);
    loop {
        // ---- one connection's life ----
        let kill_at = kill_delay(m.shared.kill_dist, m.shared.kill_every_s, rng.unit())
            .map(|d| tokio::time::Instant::now() + d)
            .filter(|&at| at < cuts_end)
            .unwrap_or(far);
        let kill = tokio::time::sleep_until(kill_at);
        tokio::pin!(kill);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + m.common.heartbeat,
            m.common.heartbeat,
        );
        let cut_now = loop {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return finish(st);
                }
                _ = &mut kill => break true,
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => st.on_text(&m.shared, t.as_str()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break false,
                    Some(Ok(_)) => {}
                },
                _ = heartbeat.tick() => {
                    if ws.send(Message::Text("ping".into())).await.is_err() {
                        break false;
                    }
                }
            }
        };
        if cut_now {
            st.result.kills += 1;
        } else {
            st.result.lost += 1;
        }
        cut(ws);

        // ---- reconnect with since ----
        let start_us = now_us();
        let started = Instant::now();
        ws = loop {
            let endpoint = &m.shared.endpoints[rng.below(m.shared.endpoints.len())];
            let attempt = async {
                let _permit = m.sem.acquire().await.map_err(|e| e.to_string())?;
                let mut ws = client::connect(endpoint, source, m.common.handshake_timeout)
                    .await
                    .map_err(|e| e.0)?
                    .ws;
                let cmd = join_command(
                    &m.shared.room,
                    st.last_id.as_deref(),
                    Some(m.shared.publishing.schedule.planned),
                );
                let mut early: Vec<String> = Vec::new();
                let reply = join_since(&mut ws, cmd, m.common.handshake_timeout, |t| {
                    early.push(t.to_owned())
                })
                .await?;
                Ok::<_, String>((ws, reply, early))
            };
            let r = tokio::select! {
                r = attempt => r,
                _ = &mut stopped => return finish(st),
            };
            match r {
                Ok((ws, (recovered, history), early)) => {
                    if let Some(h) = st.result.joined_h.as_mut() {
                        stats::record(h, started.elapsed().as_micros() as u64);
                    }
                    st.result.reconnects += 1;
                    if st.last_id.is_none() {
                        st.result.without_since += 1;
                    } else if recovered == Some(false) {
                        st.result.not_recovered += 1;
                    }
                    st.result.replayed += history.unwrap_or(0);
                    st.pending_first = Some(start_us);
                    for t in &early {
                        st.on_text(&m.shared, t);
                    }
                    break ws;
                }
                Err(e) => {
                    *st.result.reconnect_failures.entry(e).or_default() += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = &mut stopped => return finish(st),
                    }
                }
            }
        };
    }
}
