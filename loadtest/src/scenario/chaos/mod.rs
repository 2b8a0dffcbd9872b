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
//!
//! This module owns the parameters, the phases and the publishers; `subscriber` one
//! subscriber's loop and its pure helpers; `report` the report and its text.

mod report;
mod subscriber;

pub use self::report::ChaosReport;
pub use self::subscriber::{FrameMeta, Rng, frame_meta, join_command, kill_delay, score};
use self::subscriber::{SubResult, subscriber};

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::Common;
use crate::client::{self, Endpoint, Ws};
use crate::payload;
use crate::scenario::connect_phase::{self, Connects};
use crate::scenario::publish::{PubResult, Publishing};
use crate::scenario::traffic::{self, new_run_id};
use crate::schedule::ScheduleParams;
use crate::stats::{self, Percentiles, round3};

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

struct Shared {
    publishing: Publishing,
    room: String,
    kill_every_s: f64,
    kill_dist: KillDist,
    endpoints: Vec<Endpoint>,
    received: AtomicU64,
}

/// What every subscriber and publisher task is given besides its number.
type Member = connect_phase::Member<Shared, u64>;

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
    let (member, signals) = connect_phase::members(common, &shared, members);
    let connect_start = Instant::now();
    let mut sub_tasks: Vec<JoinHandle<SubResult>> = Vec::with_capacity(subs as usize);
    let mut pub_tasks: Vec<JoinHandle<PubResult>> = Vec::new();
    for i in 0..subs {
        sub_tasks.push(tokio::spawn(subscriber(i, member.clone())));
    }
    for j in 0..schedule.publishers {
        pub_tasks.push(tokio::spawn(publisher(j, subs + j, member.clone())));
    }
    drop(member);
    let (mut subs_joined, mut pubs_joined) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + common.connect_phase_timeout;
    let Connects {
        connect_h,
        errors: connect_errors,
    } = connect_phase::gather(signals.outcome_rx, members, deadline, |i| {
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
        let _ = signals.stop_tx.send(true);
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
    let _ = signals.go_tx.send(Some((t0, cuts_end)));
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
    let _ = signals.stop_tx.send(true);
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

/// A member's first connection: connect to endpoint number `endpoint` (holding a connect permit), join the
/// room, and report the outcome to the connect phase as member `who`. `None` when the run
/// stopped first, the connection failed, or the connect phase no longer listens.
async fn first_join(who: u64, endpoint: usize, m: &mut Member) -> Option<Ws> {
    let endpoint = &m.shared.endpoints[endpoint];
    let source = client::source_address(who as usize, m.common.sources);
    let (common, shared, sem) = (&m.common, &m.shared, &m.sem);
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
    let opened = tokio::select! {
        r = setup => r,
        _ = m.stop.changed() => return None,
    };
    m.report(who, opened).await
}

async fn publisher(j: u64, member: u64, mut m: Member) -> PubResult {
    let Some(ws) = first_join(member, 0, &mut m).await else {
        return PubResult::default();
    };
    m.shared
        .publishing
        .publisher(j, ws, m.common.heartbeat, &mut m.go, &mut m.stop, |_| {
            Cow::Borrowed(m.shared.room.as_str())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Seen;

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
