//! The engine under `fanout` and `rooms`: connect and join every member, publish on the fixed
//! schedule, count every delivery, drain, and sum it all up.
//!
//! Owns the phases of a traffic run and their time bounds (connect phase, publish deadline,
//! drain, collection), the per-member task, and the counting rules:
//! - expected = for every message actually sent, the members of its room that had joined
//!   before publishing started, less its sender (publishers send with `"echo": false`);
//! - received = distinct (member, message) pairs of this run (a per-member bitset), so
//!   duplicates, messages of another run and messages of another room are counted apart;
//! - latency = receive time − send time on this process's one monotonic clock.
//!
//! What the members are and where they go (the [`Layout`]) comes from the scenario modules.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::Common;
use crate::client::{self, Endpoint, Ws};
use crate::payload::{self, Incoming, Payload};
use crate::schedule::{RoomLayout, Schedule};
use crate::stats::{self, Insert, Percentiles, Seen, Series, SeriesPoint, round3};

/// Microseconds on this process's monotonic clock; senders and receivers share it.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A run id that differs between runs (so a late message of one never counts in another) and
/// fits the payload's integer.
pub fn new_run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()).rotate_left(40)) & 0x1f_ffff_ffff_ffff | 1
}

/// Who the members are and which messages go where.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// Members `0..subscribers` receive; members `subscribers..` publish; one room.
    Fanout { subscribers: u64 },
    /// Every member is in room `i / members`, publishes and receives.
    Rooms(RoomLayout),
}

impl Layout {
    fn rooms(&self) -> u64 {
        match self {
            Layout::Fanout { .. } => 1,
            Layout::Rooms(l) => l.rooms,
        }
    }

    fn members(&self, schedule: &Schedule) -> u64 {
        match self {
            Layout::Fanout { subscribers } => subscribers + schedule.publishers,
            Layout::Rooms(l) => l.total_members(),
        }
    }

    fn room_of_member(&self, i: u64) -> u64 {
        match self {
            Layout::Fanout { .. } => 0,
            Layout::Rooms(l) => l.room_of_member(i),
        }
    }

    fn is_receiver(&self, i: u64) -> bool {
        match self {
            Layout::Fanout { subscribers } => i < *subscribers,
            Layout::Rooms(_) => true,
        }
    }

    /// The publisher number (`Schedule::messages_of`) of member `i`, if it publishes.
    fn publisher_number(&self, i: u64) -> Option<u64> {
        match self {
            Layout::Fanout { subscribers } => i.checked_sub(*subscribers),
            Layout::Rooms(_) => Some(i),
        }
    }

    fn room_of_message(&self, k: u64) -> u64 {
        match self {
            Layout::Fanout { .. } => 0,
            Layout::Rooms(l) => l.room_of_message(k),
        }
    }

    fn index_in_room(&self, k: u64) -> u64 {
        match self {
            Layout::Fanout { .. } => k,
            Layout::Rooms(l) => l.index_in_room(k),
        }
    }

    fn capacity(&self, planned: u64) -> u64 {
        match self {
            Layout::Fanout { .. } => planned,
            Layout::Rooms(l) => l.per_room_capacity(planned),
        }
    }
}

/// One traffic run, fully described.
#[derive(Clone, Debug)]
pub struct TrafficPlan {
    pub scenario: &'static str,
    pub layout: Layout,
    pub schedule: Schedule,
    /// Room `r` is named `{room_prefix}` (one room) or `{room_prefix}-{r}`.
    pub room_prefix: String,
    pub duration_s: f64,
    pub drain_s: f64,
    pub payload_bytes: usize,
    pub min_ratio: f64,
    pub max_p99_ms: f64,
    /// Fanout: publishers connect to the first URL only (so with two nodes every delivery on
    /// the second one crossed the broker).
    pub publishers_on_first_url: bool,
}

impl TrafficPlan {
    fn room_name(&self, r: u64) -> String {
        if self.layout.rooms() == 1 {
            self.room_prefix.clone()
        } else {
            format!("{}-{r}", self.room_prefix)
        }
    }
}

/// CPU seconds used during the publish window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuReport {
    /// Per watched process (`--pid`), CPU seconds in the window.
    pub watched_s: BTreeMap<u32, Option<f64>>,
    /// This load generator's own CPU seconds in the window.
    pub loadtest_s: Option<f64>,
    pub window_s: f64,
    /// Watched processes' CPU per received delivery, microseconds.
    pub server_us_per_delivery: Option<f64>,
    pub loadtest_us_per_delivery: Option<f64>,
}

/// What a `fanout` or `rooms` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct TrafficReport {
    pub scenario: &'static str,
    pub urls: Vec<String>,
    pub rooms: u64,
    pub receivers: u64,
    pub receivers_joined: u64,
    pub publishers: u64,
    pub publishers_joined: u64,
    pub rate_msgs_per_s: f64,
    pub target_deliveries_per_s: f64,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub planned_msgs: u64,
    pub sent_msgs: u64,
    pub expected_deliveries: u64,
    pub received_deliveries: u64,
    pub duplicates: u64,
    /// Messages of another run, or with data not ours.
    pub foreign: u64,
    /// Messages of this run that arrived in a room they were not sent to.
    pub misrouted: u64,
    pub delivery_ratio: f64,
    /// Received deliveries over the window from the first scheduled send to the last delivery.
    pub deliveries_per_s: f64,
    pub window_s: f64,
    pub latency_ms: Percentiles,
    /// How late publishers sent against the schedule.
    pub send_lag_ms: Percentiles,
    pub connect_ms: Percentiles,
    pub join_ms: Percentiles,
    pub connect_phase_s: f64,
    pub acks: u64,
    pub errors: ErrorReport,
    pub cpu: CpuReport,
    pub min_ratio: f64,
    pub max_p99_ms: f64,
    /// Every receiver joined, every planned message was sent with send lag p99 under the
    /// latency bound, delivery ratio ≥ min_ratio and latency p99 < max_p99_ms.
    pub pass: bool,
    /// Per second of the run, for the HTML report (left out of the JSON line).
    #[serde(skip)]
    pub series: Vec<SeriesPoint>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorReport {
    /// Connections or joins that failed, by reason.
    pub connect: BTreeMap<String, u64>,
    /// `error` frames received, by code.
    pub server: BTreeMap<String, u64>,
    /// Members that lost their connection before the end, by reason.
    pub closed_early: BTreeMap<String, u64>,
}

/// Recorded by receivers, sharded to keep lock contention away.
struct Recorder {
    latency: Histogram<u64>,
    series: Series,
    /// Latest receive time, microseconds on [`now_us`]'s clock.
    last_us: u64,
}

struct Shared {
    plan: TrafficPlan,
    run: u64,
    t0_us: AtomicU64,
    sent: AtomicU64,
    sent_by_room: Vec<AtomicU64>,
    /// Messages sent by members that also receive (their own message is not expected back).
    sent_by_receivers: AtomicU64,
    sent_per_second: Vec<AtomicU64>,
    received: AtomicU64,
    recorders: Vec<Mutex<Recorder>>,
}

const RECORDER_SHARDS: usize = 16;
/// Most due messages one publisher writes before one flush.
const SEND_BATCH: usize = 64;

#[derive(Debug, Default)]
struct MemberResult {
    joined: bool,
    unique: u64,
    duplicates: u64,
    foreign: u64,
    misrouted: u64,
    acks: u64,
    server_errors: BTreeMap<String, u64>,
    closed_early: Option<String>,
    lag: Option<Histogram<u64>>,
}

/// Set up outcome of one member: connect and join times, or why it failed.
type Outcome = Result<(u64, u64), String>;

/// Run one traffic plan against the nodes of `common`.
pub async fn run(common: &Common, plan: TrafficPlan) -> Result<TrafficReport, String> {
    let endpoints = resolve_all(&common.urls).await?;
    let layout = plan.layout;
    let schedule = plan.schedule;
    let members = layout.members(&schedule);
    let rooms = layout.rooms();
    let series_len = (plan.duration_s + plan.drain_s).ceil() as usize + 2;
    let shared = Arc::new(Shared {
        run: new_run_id(),
        t0_us: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        sent_by_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
        sent_by_receivers: AtomicU64::new(0),
        sent_per_second: (0..series_len).map(|_| AtomicU64::new(0)).collect(),
        received: AtomicU64::new(0),
        recorders: (0..RECORDER_SHARDS)
            .map(|_| {
                Mutex::new(Recorder {
                    latency: stats::histogram(),
                    series: Series::new(series_len),
                    last_us: 0,
                })
            })
            .collect(),
        plan,
    });
    let plan = &shared.plan;

    // ---- connect and join ----
    let progress = crate::progress_bar(common.progress, members, "connecting");
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let (go_tx, go_rx) = watch::channel::<Option<(tokio::time::Instant, u64)>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<(u64, Outcome)>(members as usize);
    let connect_start = Instant::now();
    let mut tasks: Vec<JoinHandle<MemberResult>> = Vec::with_capacity(members as usize);
    for i in 0..members {
        let endpoint = if plan.publishers_on_first_url && !layout.is_receiver(i) {
            endpoints[0].clone()
        } else {
            endpoints[i as usize % endpoints.len()].clone()
        };
        tasks.push(tokio::spawn(member(
            i,
            endpoint,
            client::source_address(i as usize, common.sources),
            common.clone(),
            shared.clone(),
            sem.clone(),
            outcome_tx.clone(),
            go_rx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(outcome_tx);
    let mut connect_h = stats::histogram();
    let mut join_h = stats::histogram();
    let mut joined_by_room = vec![0u64; rooms as usize];
    let (mut receivers_joined, mut publishers_joined) = (0u64, 0u64);
    let mut errors = ErrorReport::default();
    let deadline = tokio::time::Instant::now() + common.connect_phase_timeout;
    let mut settled = 0u64;
    while settled < members {
        let next = tokio::time::timeout_at(deadline, outcome_rx.recv()).await;
        let (i, outcome) = match next {
            Ok(Some(o)) => o,
            Ok(None) => break,
            Err(_) => {
                // Members still connecting are turned away: one that joined after publishing
                // began would receive only part of the run.
                outcome_rx.close();
                *errors
                    .connect
                    .entry("connect phase timed out".into())
                    .or_default() += members - settled;
                break;
            }
        };
        settled += 1;
        progress.inc(1);
        match outcome {
            Ok((connect_us, join_us)) => {
                stats::record(&mut connect_h, connect_us);
                stats::record(&mut join_h, join_us);
                if layout.is_receiver(i) {
                    receivers_joined += 1;
                    joined_by_room[layout.room_of_member(i) as usize] += 1;
                }
                if layout.publisher_number(i).is_some() {
                    publishers_joined += 1;
                }
            }
            Err(e) => *errors.connect.entry(e).or_default() += 1,
        }
    }
    drop(outcome_rx);
    let connect_phase_s = connect_start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let receivers = (0..members).filter(|&i| layout.is_receiver(i)).count() as u64;
    crate::note(
        common,
        &format!(
            "{}: {receivers_joined}/{receivers} receivers and {publishers_joined}/{} publishers \
             joined in {connect_phase_s:.2}s",
            plan.scenario, schedule.publishers
        ),
    );
    if receivers_joined == 0 || publishers_joined < schedule.publishers {
        let _ = stop_tx.send(true);
        collect(tasks, Duration::from_secs(5)).await;
        return Err(format!(
            "setup failed: {receivers_joined}/{receivers} receivers and {publishers_joined}/{} \
             publishers joined; errors: {:?}",
            schedule.publishers, errors.connect
        ));
    }

    // ---- publish on the schedule ----
    let cpu_before = cpu_snapshot(&common.pids);
    let lead = Duration::from_millis(200);
    let t0 = tokio::time::Instant::now() + lead;
    let t0_us = now_us() + lead.as_micros() as u64;
    shared.t0_us.store(t0_us, Ordering::Release);
    let _ = go_tx.send(Some((t0, t0_us)));
    let expected_now = || {
        let by_room: u64 = shared
            .sent_by_room
            .iter()
            .zip(&joined_by_room)
            .map(|(sent, joined)| sent.load(Ordering::Relaxed) * joined)
            .sum();
        by_room.saturating_sub(shared.sent_by_receivers.load(Ordering::Relaxed))
    };
    let bar = crate::progress_bar(
        common.progress,
        (plan.duration_s * 1000.0) as u64,
        "publishing",
    );
    let publish_deadline = t0 + Duration::from_secs_f64(plan.duration_s + 30.0);
    let drain_for = Duration::from_secs_f64(plan.drain_s);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = tokio::time::Instant::now();
        let sent = shared.sent.load(Ordering::Relaxed);
        let received = shared.received.load(Ordering::Relaxed);
        let expected = expected_now();
        bar.set_position((now.saturating_duration_since(t0).as_millis() as u64).min(bar_len(&bar)));
        bar.set_message(format!(
            "sent {sent}/{} received {received}/{expected}",
            schedule.planned
        ));
        let sends_done = sent >= schedule.planned || now >= publish_deadline;
        if sends_done && drain_deadline.is_none() {
            drain_deadline = Some(now + drain_for);
        }
        if let Some(d) = drain_deadline
            && (received >= expected || now >= d)
        {
            break;
        }
    }
    bar.finish_and_clear();
    let cpu_after = cpu_snapshot(&common.pids);
    let _ = stop_tx.send(true);

    // ---- collect ----
    let results = collect(tasks, Duration::from_secs(5)).await;
    let mut latency = stats::histogram();
    let mut series = Series::new(series_len);
    let mut last_us = t0_us;
    for r in &shared.recorders {
        let r = r.lock().unwrap_or_else(|p| p.into_inner());
        let _ = latency.add(&r.latency);
        series.merge(&r.series);
        last_us = last_us.max(r.last_us);
    }
    let mut lag = stats::histogram();
    let (mut unique, mut duplicates, mut foreign, mut misrouted, mut acks) = (0, 0, 0, 0, 0);
    for r in results.iter().flatten() {
        unique += r.unique;
        duplicates += r.duplicates;
        foreign += r.foreign;
        misrouted += r.misrouted;
        acks += r.acks;
        for (code, n) in &r.server_errors {
            *errors.server.entry(code.clone()).or_default() += n;
        }
        if let Some(reason) = &r.closed_early {
            *errors.closed_early.entry(reason.clone()).or_default() += 1;
        }
        if let Some(h) = &r.lag {
            let _ = lag.add(h);
        }
    }
    let lost_tasks = results.iter().filter(|r| r.is_none()).count() as u64;
    if lost_tasks > 0 {
        *errors
            .closed_early
            .entry("member task did not finish in time".into())
            .or_default() += lost_tasks;
    }
    // Every member has stopped: no send completes after this read.
    let sent_msgs = shared.sent.load(Ordering::Relaxed);
    let expected = expected_now();
    let sent_per_second: Vec<u64> = shared
        .sent_per_second
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let points = series.points(&sent_per_second);
    let window_s = (last_us.saturating_sub(t0_us) as f64 / 1e6).max(plan.duration_s);
    let latency_ms = Percentiles::of(&latency);
    let send_lag_ms = Percentiles::of(&lag);
    let delivery_ratio = stats::ratio(unique, expected);
    let pass = receivers_joined == receivers
        && sent_msgs == schedule.planned
        && send_lag_ms.p99 < plan.max_p99_ms
        && delivery_ratio >= plan.min_ratio
        && latency_ms.count > 0
        && latency_ms.p99 < plan.max_p99_ms;
    let cpu = cpu_report(&common.pids, &cpu_before, &cpu_after, unique);
    Ok(TrafficReport {
        scenario: plan.scenario,
        urls: common.urls.clone(),
        rooms,
        receivers,
        receivers_joined,
        publishers: schedule.publishers,
        publishers_joined,
        rate_msgs_per_s: schedule.rate,
        target_deliveries_per_s: round3(
            schedule.rate * receivers_joined as f64 / rooms as f64
                - if matches!(layout, Layout::Rooms(_)) {
                    schedule.rate
                } else {
                    0.0
                },
        ),
        duration_s: plan.duration_s,
        payload_bytes: plan.payload_bytes,
        planned_msgs: schedule.planned,
        sent_msgs,
        expected_deliveries: expected,
        received_deliveries: unique,
        duplicates,
        foreign,
        misrouted,
        delivery_ratio,
        deliveries_per_s: round3(unique as f64 / window_s),
        window_s: round3(window_s),
        latency_ms,
        send_lag_ms,
        connect_ms: Percentiles::of(&connect_h),
        join_ms: Percentiles::of(&join_h),
        connect_phase_s: round3(connect_phase_s),
        acks,
        errors,
        cpu,
        min_ratio: plan.min_ratio,
        max_p99_ms: plan.max_p99_ms,
        pass,
        series: points,
    })
}

fn bar_len(bar: &ProgressBar) -> u64 {
    bar.length().unwrap_or(u64::MAX)
}

pub async fn resolve_all(urls: &[String]) -> Result<Vec<Endpoint>, String> {
    if urls.is_empty() {
        return Err("give at least one --url".into());
    }
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        out.push(client::resolve(url).await?);
    }
    Ok(out)
}

/// Join every task, waiting at most `grace` in all; a task still running then is aborted and
/// its result is `None`.
pub async fn collect<T: Send + 'static>(
    tasks: Vec<JoinHandle<T>>,
    grace: Duration,
) -> Vec<Option<T>> {
    let deadline = tokio::time::Instant::now() + grace;
    let mut out = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(r)) => out.push(Some(r)),
            Ok(Err(_)) => out.push(None),
            Err(_) => {
                task.abort();
                out.push(None);
            }
        }
    }
    out
}

pub type CpuSnapshot = (Vec<Option<f64>>, Option<f64>, Instant);

pub fn cpu_snapshot(pids: &[u32]) -> CpuSnapshot {
    (
        pids.iter()
            .map(|&p| crate::procfs::cpu_seconds(Some(p)))
            .collect(),
        crate::procfs::cpu_seconds(None),
        Instant::now(),
    )
}

pub fn cpu_report(
    pids: &[u32],
    before: &CpuSnapshot,
    after: &CpuSnapshot,
    deliveries: u64,
) -> CpuReport {
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(round3(b - a)),
        _ => None,
    };
    let watched: BTreeMap<u32, Option<f64>> = pids
        .iter()
        .zip(before.0.iter().zip(&after.0))
        .map(|(&pid, (&b, &a))| (pid, delta(b, a)))
        .collect();
    let server: Option<f64> = if pids.is_empty() {
        None
    } else {
        watched.values().copied().sum()
    };
    let loadtest = delta(before.1, after.1);
    let per = |s: Option<f64>| {
        s.filter(|_| deliveries > 0)
            .map(|s| round3(s * 1e6 / deliveries as f64))
    };
    CpuReport {
        server_us_per_delivery: per(server),
        loadtest_us_per_delivery: per(loadtest),
        watched_s: watched,
        loadtest_s: loadtest,
        window_s: round3(after.2.duration_since(before.2).as_secs_f64()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn member(
    i: u64,
    endpoint: Endpoint,
    source: Option<std::net::IpAddr>,
    common: Common,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    outcome: mpsc::Sender<(u64, Outcome)>,
    mut go: watch::Receiver<Option<(tokio::time::Instant, u64)>>,
    mut stop: watch::Receiver<bool>,
) -> MemberResult {
    let plan = &shared.plan;
    let layout = plan.layout;
    let room_index = layout.room_of_member(i);
    let room = plan.room_name(room_index);
    let mut result = MemberResult::default();

    let setup = async {
        let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
        let connected = client::connect(&endpoint, source, common.handshake_timeout)
            .await
            .map_err(|e| e.0)?;
        let mut ws = connected.ws;
        let join_us = client::join(&mut ws, &room, common.handshake_timeout)
            .await
            .map_err(|e| e.0)?;
        Ok::<_, String>((ws, connected.connect_us, join_us))
    };
    let mut ws = tokio::select! {
        r = setup => match r {
            Ok((ws, connect_us, join_us)) => {
                // A closed channel means the connect phase is over: too late to take part.
                if outcome.send((i, Ok((connect_us, join_us)))).await.is_err() {
                    return result;
                }
                ws
            }
            Err(e) => {
                let _ = outcome.send((i, Err(e))).await;
                return result;
            }
        },
        _ = stop.changed() => return result,
    };
    drop(outcome);
    result.joined = true;

    let mut receiver = layout
        .is_receiver(i)
        .then(|| Seen::new(layout.capacity(plan.schedule.planned)));
    let shard = &shared.recorders[i as usize % RECORDER_SHARDS];
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + common.heartbeat,
        common.heartbeat,
    );

    // ---- wait for the start, answering what comes ----
    let (t0, t0_us) = loop {
        tokio::select! {
            changed = go.changed() => {
                if changed.is_err() {
                    return result;
                }
                if let Some(start) = *go.borrow_and_update() {
                    break start;
                }
            }
            _ = stop.changed() => {
                close(ws).await;
                return result;
            }
            frame = ws.next() => {
                if let Err(reason) = on_frame(frame, &shared, &mut result, receiver.as_mut(), room_index, shard) {
                    result.closed_early = Some(reason);
                    return result;
                }
            }
            _ = heartbeat.tick() => {
                if ws.send(Message::Text("ping".into())).await.is_err() {
                    result.closed_early = Some("heartbeat failed".into());
                    return result;
                }
            }
        }
    };

    // ---- run: publish what is due, receive, heartbeat, until stopped ----
    let mut outgoing = layout
        .publisher_number(i)
        .map(|j| plan.schedule.messages_of(j).peekable());
    if outgoing.is_some() {
        result.lag = Some(stats::histogram());
    }
    let due_of = |k: u64| t0 + plan.schedule.offset(k);
    let far = t0 + Duration::from_secs(86_400);
    let first_due = outgoing
        .as_mut()
        .and_then(|o| o.peek().copied())
        .map_or(far, due_of);
    let timer = tokio::time::sleep_until(first_due);
    tokio::pin!(timer);
    let mut sending = outgoing.as_mut().is_some_and(|o| o.peek().is_some());
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            _ = &mut timer, if sending => {
                let Some(out) = outgoing.as_mut() else { break };
                match send_due(&mut ws, out, &shared, &mut result, t0, t0_us, i).await {
                    Ok(()) => {}
                    Err(reason) => {
                        result.closed_early = Some(reason);
                        return result;
                    }
                }
                match out.peek() {
                    Some(&k) => timer.as_mut().reset(due_of(k)),
                    None => sending = false,
                }
            }
            frame = ws.next() => {
                if let Err(reason) = on_frame(frame, &shared, &mut result, receiver.as_mut(), room_index, shard) {
                    result.closed_early = Some(reason);
                    return result;
                }
            }
            _ = heartbeat.tick() => {
                if ws.send(Message::Text("ping".into())).await.is_err() {
                    result.closed_early = Some("heartbeat failed".into());
                    return result;
                }
            }
        }
    }
    if let Some(seen) = &receiver {
        result.unique = seen.count();
    }
    close(ws).await;
    result
}

async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// Write every message that is due now (at most [`SEND_BATCH`]) and flush once.
async fn send_due(
    ws: &mut Ws,
    out: &mut std::iter::Peekable<impl Iterator<Item = u64>>,
    shared: &Shared,
    result: &mut MemberResult,
    t0: tokio::time::Instant,
    t0_us: u64,
    member: u64,
) -> Result<(), String> {
    let plan = &shared.plan;
    let layout = plan.layout;
    let now = tokio::time::Instant::now();
    let mut batch = 0;
    while let Some(&k) = out.peek() {
        if batch >= SEND_BATCH || t0 + plan.schedule.offset(k) > now {
            break;
        }
        out.next();
        batch += 1;
        let t = now_us();
        let due_us = t0_us + plan.schedule.offset(k).as_micros() as u64;
        if let Some(lag) = result.lag.as_mut() {
            stats::record(lag, t.saturating_sub(due_us).max(1));
        }
        let room = plan.room_name(layout.room_of_message(k));
        let data = payload::encode(
            Payload {
                run: shared.run,
                seq: k,
                t,
            },
            plan.payload_bytes,
        );
        ws.feed(Message::Text(payload::publish_command(&room, &data).into()))
            .await
            .map_err(|e| format!("publish failed: {e}"))?;
        let r = layout.room_of_message(k) as usize;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = shared.sent_by_room.get(r) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if layout.is_receiver(member) {
            shared.sent_by_receivers.fetch_add(1, Ordering::Relaxed);
        }
        let second = (t.saturating_sub(t0_us) / 1_000_000) as usize;
        let last = shared.sent_per_second.len().saturating_sub(1);
        if let Some(c) = shared.sent_per_second.get(second.min(last)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    ws.flush().await.map_err(|e| format!("publish failed: {e}"))
}

type Frame = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// Count one incoming frame. `Err` ends the member with that reason.
fn on_frame(
    frame: Frame,
    shared: &Shared,
    result: &mut MemberResult,
    receiver: Option<&mut Seen>,
    room_index: u64,
    shard: &Mutex<Recorder>,
) -> Result<(), String> {
    let text = match frame {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Close(frame))) => {
            let code = frame.map_or(0, |f| u16::from(f.code));
            return Err(format!("closed by the server ({code})"));
        }
        Some(Ok(_)) => return Ok(()),
        Some(Err(e)) => return Err(format!("connection failed: {e}")),
        None => return Err("connection ended".into()),
    };
    match payload::classify(text.as_str()) {
        Incoming::Message(p) if p.run == shared.run => {
            let Some(seen) = receiver else {
                // A publisher in the room hears the other publishers: not counted.
                return Ok(());
            };
            let layout = shared.plan.layout;
            if layout.room_of_message(p.seq) != room_index {
                result.misrouted += 1;
                return Ok(());
            }
            match seen.insert(layout.index_in_room(p.seq)) {
                Insert::New => {
                    let now = now_us();
                    let at = now.saturating_sub(shared.t0_us.load(Ordering::Relaxed));
                    let latency = now.saturating_sub(p.t).max(1);
                    {
                        let mut r = shard.lock().unwrap_or_else(|e| e.into_inner());
                        stats::record(&mut r.latency, latency);
                        r.series.record(at, latency);
                        r.last_us = r.last_us.max(now);
                    }
                    shared.received.fetch_add(1, Ordering::Relaxed);
                }
                Insert::Duplicate => result.duplicates += 1,
                Insert::OutOfRange => result.foreign += 1,
            }
        }
        Incoming::Message(_) | Incoming::ForeignMessage => result.foreign += 1,
        Incoming::Ack => result.acks += 1,
        Incoming::Error { code, .. } => {
            *result.server_errors.entry(code.into_owned()).or_default() += 1;
        }
        _ => {}
    }
    Ok(())
}

/// A progress-bar style shared by the scenarios.
pub fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}
