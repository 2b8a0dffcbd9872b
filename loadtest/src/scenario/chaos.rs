//! Scenario `chaos`: S subscribers join one history room (default `chat:chaos`) spread over the
//! node URLs; P publishers (on the first URL) publish at a total rate R for D seconds on the
//! fixed schedule of `schedule::Schedule`, like `fanout`. While publishing, every subscriber is
//! cut off at random (uniform in [0.5, 1.5] × `kill_every`, or exponential with that mean) by
//! dropping its TCP connection with `SO_LINGER` 0 (a reset, no close frame), and reconnects at
//! once to a random URL of the list with `join` + `since` = the id of the last message it saw.
//!
//! Counting rules:
//! - acknowledged = the messages whose `publish` got an `ack` (replies come in command order,
//!   so each publisher matches them to its sends first in, first out);
//! - per subscriber, received = distinct seqs of this run (a `stats::Seen` bitset); the
//!   delivery ratio is Σ(acknowledged seqs received) / (acknowledged × subscribers joined),
//!   target 1.0; duplicates are counted apart;
//! - replay latency = from the moment a reconnect starts (right after the cut) to `joined`,
//!   and to the first message of this run (replayed or live) after it;
//! - `recovered: false` answers to a `join` with `since` are counted.
//!
//! The server must keep history for the room (`history.rooms`), else every rejoin answers
//! `recovered: false` and messages published during the gap are lost.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::Common;
use crate::client::{self, Endpoint, Ws};
use crate::payload::{self, Incoming, Payload};
use crate::scenario::connect_phase::{self, Connects};
use crate::scenario::footer;
use crate::scenario::publish::{Go, PubResult, Publishing};
use crate::scenario::traffic::{self, CpuReport, new_run_id, now_us};
use crate::schedule::ScheduleParams;
use crate::stats::{self, Insert, Percentiles, Seen, round3};

/// How the time to the next cut is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KillDist {
    /// Uniform in [0.5, 1.5] × mean.
    Uniform,
    /// Exponential with that mean, clamped to [0.05, 5] × mean.
    Exp,
}

impl std::str::FromStr for KillDist {
    type Err = String;
    fn from_str(s: &str) -> Result<KillDist, String> {
        match s {
            "uniform" => Ok(KillDist::Uniform),
            "exp" | "exponential" => Ok(KillDist::Exp),
            other => Err(format!("kill distribution {other:?}: uniform or exp")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChaosParams {
    pub subscribers: u64,
    pub schedule: ScheduleParams,
    /// Seconds to wait after the last ack for deliveries and replays still in flight.
    pub drain_s: f64,
    pub payload_bytes: usize,
    pub room: String,
    /// Mean seconds between two cuts of one subscriber; 0 disables cuts.
    pub kill_every_s: f64,
    pub kill_dist: KillDist,
    /// Lowest delivery ratio of acknowledged messages that passes.
    pub min_ratio: f64,
}

impl Default for ChaosParams {
    fn default() -> Self {
        ChaosParams {
            subscribers: 200,
            schedule: ScheduleParams::new(50.0, 30.0),
            drain_s: 10.0,
            payload_bytes: 100,
            room: "chat:chaos".into(),
            kill_every_s: 15.0,
            kill_dist: KillDist::Uniform,
            min_ratio: 1.0,
        }
    }
}

/// What a `chaos` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    pub scenario: &'static str,
    pub urls: Vec<String>,
    pub room: String,
    pub subscribers: u64,
    pub subscribers_joined: u64,
    pub publishers: u64,
    pub publishers_joined: u64,
    pub rate_msgs_per_s: f64,
    pub duration_s: f64,
    pub kill_every_s: f64,
    pub kill_dist: KillDist,
    pub planned_msgs: u64,
    pub sent_msgs: u64,
    pub acked_msgs: u64,
    /// `error` replies to publishes, by code.
    pub publish_errors: BTreeMap<String, u64>,
    /// acknowledged × subscribers joined.
    pub expected_deliveries: u64,
    /// Σ over subscribers of the acknowledged seqs it received.
    pub received_acked: u64,
    /// Distinct seqs received that were never acknowledged (sent, reply lost or refused).
    pub received_unacked: u64,
    pub delivery_ratio: f64,
    /// The lowest per-subscriber ratio of acknowledged seqs received.
    pub min_subscriber_ratio: f64,
    /// Subscribers that missed at least one acknowledged message.
    pub subscribers_with_gaps: u64,
    pub duplicates: u64,
    pub foreign: u64,
    /// Forced cuts.
    pub kills: u64,
    /// Connections the server ended (not cut by this tool).
    pub lost: u64,
    /// Reconnects that got `joined`.
    pub reconnects: u64,
    /// Reconnect attempts that failed (and were retried).
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Rejoins with `since` answered `recovered: false`.
    pub not_recovered: u64,
    /// Rejoins without `since` (no message seen yet; they asked for `history` instead).
    pub rejoins_without_since: u64,
    /// Messages the rejoins announced as replayed (`joined.history`), summed.
    pub replayed_announced: u64,
    /// Reconnect start → `joined`.
    pub replay_joined_ms: Percentiles,
    /// Reconnect start → first message of this run after it (replayed or live).
    pub replay_first_ms: Percentiles,
    /// Send → first receipt, every distinct delivery (replays included).
    pub latency_ms: Percentiles,
    pub connect_ms: Percentiles,
    pub connect_phase_s: f64,
    pub connect_errors: BTreeMap<String, u64>,
    pub server_errors: BTreeMap<String, u64>,
    pub cpu: CpuReport,
    pub min_ratio: f64,
    /// Every subscriber joined, something was acknowledged and the delivery ratio of
    /// acknowledged messages is at least `min_ratio`.
    pub pass: bool,
}

impl ChaosReport {
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }

    pub fn text(&self) -> String {
        let pct = |name: &str, p: &Percentiles| {
            format!(
                "{name:<14} p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  p99.9 {:>9.3}  max {:>9.3}  (n={})",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            )
        };
        let mut lines = vec![
            format!(
                "chaos {}: {} subscribers ({} joined) in {} over {} node(s), {} publishers, {} msg/s for {} s, cut every ~{} s ({:?})",
                if self.pass { "PASS" } else { "FAIL" },
                self.subscribers,
                self.subscribers_joined,
                self.room,
                self.urls.len(),
                self.publishers,
                self.rate_msgs_per_s,
                self.duration_s,
                self.kill_every_s,
                self.kill_dist,
            ),
            format!(
                "messages       planned {}  sent {}  acknowledged {}  publish errors {:?}",
                self.planned_msgs, self.sent_msgs, self.acked_msgs, self.publish_errors
            ),
            format!(
                "delivery       {}/{} acknowledged deliveries = {:.6} (min per subscriber {:.6}, {} with gaps; target {})",
                self.received_acked,
                self.expected_deliveries,
                self.delivery_ratio,
                self.min_subscriber_ratio,
                self.subscribers_with_gaps,
                self.min_ratio
            ),
            format!(
                "               duplicates {}  unacknowledged received {}  foreign {}",
                self.duplicates, self.received_unacked, self.foreign
            ),
            format!(
                "reconnects     {} after {} cuts and {} lost connections; failed attempts {:?}",
                self.reconnects, self.kills, self.lost, self.reconnect_failures
            ),
            format!(
                "rejoins        recovered:false {}  without since {}  replayed (announced) {}",
                self.not_recovered, self.rejoins_without_since, self.replayed_announced
            ),
            pct("to joined ms", &self.replay_joined_ms),
            pct("to first ms", &self.replay_first_ms),
            pct("latency ms", &self.latency_ms),
            pct("connect ms", &self.connect_ms),
        ];
        lines.extend(footer::error_and_cpu_lines(
            14,
            &self.connect_errors,
            &self.server_errors,
            &self.cpu,
        ));
        lines.join("\n")
    }
}

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

struct Shared {
    publishing: Publishing,
    room: String,
    kill_every_s: f64,
    kill_dist: KillDist,
    endpoints: Vec<Endpoint>,
    received: AtomicU64,
}

#[derive(Default)]
struct SubResult {
    seen: Option<Seen>,
    duplicates: u64,
    foreign: u64,
    kills: u64,
    lost: u64,
    reconnects: u64,
    reconnect_failures: BTreeMap<String, u64>,
    not_recovered: u64,
    without_since: u64,
    replayed: u64,
    server_errors: BTreeMap<String, u64>,
    joined_h: Option<Histogram<u64>>,
    first_h: Option<Histogram<u64>>,
    latency_h: Option<Histogram<u64>>,
}

type Outcome = Result<u64, String>;

pub async fn run(common: &Common, params: &ChaosParams) -> Result<ChaosReport, String> {
    if params.subscribers == 0 {
        return Err("need at least one subscriber".into());
    }
    payload::check_room(&params.room)?;
    let schedule = params.schedule.schedule()?;
    let endpoints = traffic::resolve_all(&common.urls).await?;
    let shared = Arc::new(Shared {
        publishing: Publishing::new(new_run_id(), schedule, params.payload_bytes),
        room: params.room.clone(),
        kill_every_s: params.kill_every_s,
        kill_dist: params.kill_dist,
        endpoints,
        received: AtomicU64::new(0),
    });
    let subs = params.subscribers;
    let members = subs + schedule.publishers;

    // ---- connect and join ----
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let (go_tx, go_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (outcome_tx, outcome_rx) = mpsc::channel::<(u64, Outcome)>(members as usize);
    let connect_start = Instant::now();
    let mut sub_tasks: Vec<JoinHandle<SubResult>> = Vec::with_capacity(subs as usize);
    let mut pub_tasks: Vec<JoinHandle<PubResult>> = Vec::new();
    for i in 0..subs {
        sub_tasks.push(tokio::spawn(subscriber(
            i,
            common.clone(),
            shared.clone(),
            sem.clone(),
            outcome_tx.clone(),
            go_rx.clone(),
            stop_rx.clone(),
        )));
    }
    for j in 0..schedule.publishers {
        pub_tasks.push(tokio::spawn(publisher(
            j,
            subs + j,
            common.clone(),
            shared.clone(),
            sem.clone(),
            outcome_tx.clone(),
            go_rx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(outcome_tx);
    let (mut subs_joined, mut pubs_joined) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + common.connect_phase_timeout;
    let Connects {
        connect_h,
        errors: connect_errors,
    } = connect_phase::gather(outcome_rx, members, deadline, |i| {
        if i < subs {
            subs_joined += 1;
        } else {
            pubs_joined += 1;
        }
    })
    .await;
    let connect_phase_s = connect_start.elapsed().as_secs_f64();
    crate::note(
        common,
        &format!(
            "chaos: {subs_joined}/{subs} subscribers and {pubs_joined}/{} publishers joined in \
             {connect_phase_s:.2}s",
            schedule.publishers
        ),
    );
    if subs_joined == 0 || pubs_joined < schedule.publishers {
        let _ = stop_tx.send(true);
        traffic::collect(sub_tasks, Duration::from_secs(5)).await;
        traffic::collect(pub_tasks, Duration::from_secs(5)).await;
        return Err(format!(
            "setup failed: {subs_joined}/{subs} subscribers and {pubs_joined}/{} publishers \
             joined; errors: {connect_errors:?}",
            schedule.publishers
        ));
    }

    // ---- publish, cut, reconnect ----
    let cpu_before = traffic::cpu_snapshot(&common.pids);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let cuts_end = t0 + Duration::from_secs_f64(params.schedule.duration_s);
    let _ = go_tx.send(Some((t0, cuts_end)));
    let bar = crate::progress_bar(
        common.progress,
        (params.schedule.duration_s * 1000.0) as u64,
        "chaos",
    );
    let publish_deadline = cuts_end + Duration::from_secs(30);
    let drain_for = Duration::from_secs_f64(params.drain_s.max(0.0));
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = tokio::time::Instant::now();
        let sent = shared.publishing.sent.load(Ordering::Relaxed);
        let acked = shared.publishing.acked.load(Ordering::Relaxed);
        let replied = acked + shared.publishing.refused.load(Ordering::Relaxed);
        let received = shared.received.load(Ordering::Relaxed);
        bar.set_position(now.saturating_duration_since(t0).as_millis() as u64);
        bar.set_message(format!(
            "sent {sent}/{} acked {acked} received {received}/{}",
            schedule.planned,
            acked * subs_joined
        ));
        let sends_done = (sent >= schedule.planned && replied >= sent && now >= cuts_end)
            || now >= publish_deadline;
        if sends_done && drain_deadline.is_none() {
            drain_deadline = Some(now + drain_for);
        }
        if let Some(d) = drain_deadline
            && (received >= sent * subs_joined || now >= d)
        {
            break;
        }
    }
    bar.finish_and_clear();
    let cpu_after = traffic::cpu_snapshot(&common.pids);
    let _ = stop_tx.send(true);
    let sub_results = traffic::collect(sub_tasks, Duration::from_secs(10)).await;
    let pub_results = traffic::collect(pub_tasks, Duration::from_secs(5)).await;

    // ---- sum up ----
    let mut acked: Vec<u64> = Vec::new();
    let mut publish_errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in pub_results.iter().flatten() {
        acked.extend_from_slice(&r.acked);
        for (code, n) in &r.errors {
            *publish_errors.entry(code.clone()).or_default() += n;
        }
    }
    acked.sort_unstable();
    acked.dedup();
    let mut joined_h = stats::histogram();
    let mut first_h = stats::histogram();
    let mut latency_h = stats::histogram();
    let mut server_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut reconnect_failures: BTreeMap<String, u64> = BTreeMap::new();
    let (mut received_acked, mut received_unacked, mut with_gaps) = (0u64, 0u64, 0u64);
    let mut min_sub_ratio: f64 = 1.0;
    let (mut duplicates, mut foreign, mut kills, mut lost, mut reconnects) = (0, 0, 0, 0, 0);
    let (mut not_recovered, mut without_since, mut replayed) = (0, 0, 0);
    let mut scored = 0u64;
    for r in sub_results.into_iter().flatten() {
        duplicates += r.duplicates;
        foreign += r.foreign;
        kills += r.kills;
        lost += r.lost;
        reconnects += r.reconnects;
        not_recovered += r.not_recovered;
        without_since += r.without_since;
        replayed += r.replayed;
        for (k, n) in r.reconnect_failures {
            *reconnect_failures.entry(k).or_default() += n;
        }
        for (k, n) in r.server_errors {
            *server_errors.entry(k).or_default() += n;
        }
        for (into, from) in [
            (&mut joined_h, r.joined_h),
            (&mut first_h, r.first_h),
            (&mut latency_h, r.latency_h),
        ] {
            if let Some(h) = from {
                let _ = into.add(&h);
            }
        }
        if let Some(seen) = r.seen {
            scored += 1;
            let (got, unacked) = score(seen, &acked);
            received_acked += got;
            received_unacked += unacked;
            if got < acked.len() as u64 {
                with_gaps += 1;
            }
            min_sub_ratio = min_sub_ratio.min(stats::ratio(got, acked.len() as u64));
        }
    }
    // A subscriber whose task did not report counts as having received nothing.
    let missing_subs = subs_joined.saturating_sub(scored);
    if missing_subs > 0 {
        with_gaps += missing_subs;
        min_sub_ratio = 0.0;
    }
    let expected = acked.len() as u64 * subs_joined;
    let delivery_ratio = stats::ratio(received_acked, expected);
    let pass = subs_joined == subs && !acked.is_empty() && delivery_ratio >= params.min_ratio;
    let cpu = traffic::cpu_report(&common.pids, &cpu_before, &cpu_after, received_acked);
    Ok(ChaosReport {
        scenario: "chaos",
        urls: common.urls.clone(),
        room: params.room.clone(),
        subscribers: subs,
        subscribers_joined: subs_joined,
        publishers: schedule.publishers,
        publishers_joined: pubs_joined,
        rate_msgs_per_s: schedule.rate,
        duration_s: params.schedule.duration_s,
        kill_every_s: params.kill_every_s,
        kill_dist: params.kill_dist,
        planned_msgs: schedule.planned,
        sent_msgs: shared.publishing.sent.load(Ordering::Relaxed),
        acked_msgs: acked.len() as u64,
        publish_errors,
        expected_deliveries: expected,
        received_acked,
        received_unacked,
        delivery_ratio,
        min_subscriber_ratio: round3(min_sub_ratio * 1000.0) / 1000.0,
        subscribers_with_gaps: with_gaps,
        duplicates,
        foreign,
        kills,
        lost,
        reconnects,
        reconnect_failures,
        not_recovered,
        rejoins_without_since: without_since,
        replayed_announced: replayed,
        replay_joined_ms: Percentiles::of(&joined_h),
        replay_first_ms: Percentiles::of(&first_h),
        latency_ms: Percentiles::of(&latency_h),
        connect_ms: Percentiles::of(&connect_h),
        connect_phase_s: round3(connect_phase_s),
        connect_errors,
        server_errors,
        cpu,
        min_ratio: params.min_ratio,
        pass,
    })
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

async fn subscriber(
    i: u64,
    common: Common,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    outcome: mpsc::Sender<(u64, Outcome)>,
    mut go: Go,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let source = client::source_address(i as usize, common.sources);
    let mut rng = Rng::new(shared.publishing.run ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let first_endpoint = &shared.endpoints[i as usize % shared.endpoints.len()];
    let setup = async {
        let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
        let connected = client::connect(first_endpoint, source, common.handshake_timeout)
            .await
            .map_err(|e| e.0)?;
        let mut ws = connected.ws;
        client::join(&mut ws, &shared.room, common.handshake_timeout)
            .await
            .map_err(|e| e.0)?;
        Ok::<_, String>((ws, connected.connect_us))
    };
    let mut ws = tokio::select! {
        r = setup => match r {
            Ok((ws, us)) => {
                if outcome.send((i, Ok(us))).await.is_err() {
                    return SubResult::default();
                }
                ws
            }
            Err(e) => {
                let _ = outcome.send((i, Err(e))).await;
                return SubResult::default();
            }
        },
        _ = stop.changed() => return SubResult::default(),
    };
    drop(outcome);
    let mut st = SubState {
        seen: Seen::new(shared.publishing.schedule.planned),
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
            changed = go.changed() => {
                if changed.is_err() {
                    return finish(st);
                }
                if let Some((_, end)) = *go.borrow_and_update() {
                    break end;
                }
            }
            _ = stop.changed() => return finish(st),
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => st.on_text(&shared, t.as_str()),
                Some(Ok(_)) => {}
                _ => {
                    st.result.lost += 1;
                    return finish(st);
                }
            },
        }
    };

    let stopped = stop.changed();
    tokio::pin!(stopped);
    let far = cuts_end + Duration::from_secs(86_400);
    loop {
        // ---- one connection's life ----
        let kill_at = kill_delay(shared.kill_dist, shared.kill_every_s, rng.unit())
            .map(|d| tokio::time::Instant::now() + d)
            .filter(|&at| at < cuts_end)
            .unwrap_or(far);
        let kill = tokio::time::sleep_until(kill_at);
        tokio::pin!(kill);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + common.heartbeat,
            common.heartbeat,
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
                    Some(Ok(Message::Text(t))) => st.on_text(&shared, t.as_str()),
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
            let endpoint = &shared.endpoints[rng.below(shared.endpoints.len())];
            let attempt = async {
                let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
                let mut ws = client::connect(endpoint, source, common.handshake_timeout)
                    .await
                    .map_err(|e| e.0)?
                    .ws;
                let cmd = join_command(
                    &shared.room,
                    st.last_id.as_deref(),
                    Some(shared.publishing.schedule.planned),
                );
                let mut early: Vec<String> = Vec::new();
                let reply = join_since(&mut ws, cmd, common.handshake_timeout, |t| {
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
                        st.on_text(&shared, t);
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

#[allow(clippy::too_many_arguments)]
async fn publisher(
    j: u64,
    member: u64,
    common: Common,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    outcome: mpsc::Sender<(u64, Outcome)>,
    mut go: Go,
    mut stop: watch::Receiver<bool>,
) -> PubResult {
    let endpoint = &shared.endpoints[0];
    let source = client::source_address(member as usize, common.sources);
    let setup = async {
        let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
        let connected = client::connect(endpoint, source, common.handshake_timeout)
            .await
            .map_err(|e| e.0)?;
        let mut ws = connected.ws;
        client::join(&mut ws, &shared.room, common.handshake_timeout)
            .await
            .map_err(|e| e.0)?;
        Ok::<_, String>((ws, connected.connect_us))
    };
    let ws = tokio::select! {
        r = setup => match r {
            Ok((ws, us)) => {
                if outcome.send((member, Ok(us))).await.is_err() {
                    return PubResult::default();
                }
                ws
            }
            Err(e) => {
                let _ = outcome.send((member, Err(e))).await;
                return PubResult::default();
            }
        },
        _ = stop.changed() => return PubResult::default(),
    };
    drop(outcome);
    shared
        .publishing
        .publisher(j, ws, common.heartbeat, &mut go, &mut stop, |_| {
            Cow::Borrowed(shared.room.as_str())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_delays_stay_around_the_mean() {
        let d = |dist, u| kill_delay(dist, 10.0, u).expect("on").as_secs_f64();
        assert!((d(KillDist::Uniform, 0.0) - 5.0).abs() < 1e-9);
        assert!((d(KillDist::Uniform, 0.5) - 10.0).abs() < 1e-9);
        assert!(d(KillDist::Uniform, 1.0) <= 15.0);
        assert!((d(KillDist::Exp, 0.0) - 0.5).abs() < 1e-9, "clamped low");
        assert!(d(KillDist::Exp, 1.0) <= 50.0, "clamped high");
        assert!((d(KillDist::Exp, 1.0 - (-1.0f64).exp()) - 10.0).abs() < 1e-6);
        assert_eq!(kill_delay(KillDist::Uniform, 0.0, 0.5), None);
        assert_eq!(kill_delay(KillDist::Exp, f64::NAN, 0.5), None);
        // The mean of many uniform draws is near the mean.
        let mut rng = Rng::new(7);
        let n = 10_000;
        let mean: f64 = (0..n)
            .map(|_| {
                kill_delay(KillDist::Exp, 10.0, rng.unit())
                    .expect("on")
                    .as_secs_f64()
            })
            .sum::<f64>()
            / n as f64;
        assert!((mean - 10.0).abs() < 0.6, "{mean}");
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let (mut a, mut b) = (Rng::new(1), Rng::new(1));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(a.below(3) < 3);
        }
        assert_eq!(a.below(0), 0);
    }

    #[test]
    fn join_commands_resume_or_ask_for_history() {
        let v: serde_json::Value =
            serde_json::from_str(&join_command("chat:x", Some("h3-41"), Some(9))).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"join","room":"chat:x","id":"chaos","since":"h3-41"})
        );
        let v: serde_json::Value =
            serde_json::from_str(&join_command("chat:x", None, Some(9))).expect("json");
        assert_eq!(v["history"], 9);
        assert!(v.get("since").is_none());
        let v: serde_json::Value =
            serde_json::from_str(&join_command("r", None, None)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"join","room":"r","id":"chaos"})
        );
    }

    #[test]
    fn frame_meta_reads_ids_and_recovery() {
        let m = frame_meta(
            r#"{"type":"message","room":"chat:x","id":"h1-5","data":{"run":1,"seq":2,"t":3},"from":"c","ts":1}"#,
        );
        assert_eq!(
            (m.kind.as_ref(), m.id.as_deref()),
            ("message", Some("h1-5"))
        );
        let m = frame_meta(
            r#"{"type":"joined","room":"chat:x","id":"chaos","recovered":false,"history":0}"#,
        );
        assert_eq!((m.recovered, m.history), (Some(false), Some(0)));
        assert_eq!(frame_meta("pong"), FrameMeta::default());
    }

    #[test]
    fn score_counts_acknowledged_against_received() {
        let mut seen = Seen::new(10);
        for k in [0, 1, 2, 5, 9] {
            seen.insert(k);
        }
        // Acknowledged 0..=5: received 0, 1, 2, 5; 9 was received but never acknowledged.
        assert_eq!(score(seen.clone(), &[0, 1, 2, 3, 4, 5]), (4, 1));
        assert_eq!(score(seen, &[]), (0, 5));
        assert_eq!(score(Seen::new(4), &[0, 1]), (0, 0));
    }
}
