//! Scenario `kick`: the backend kicks and revokes users under load, and no other member loses
//! a message (issue 18, "the backend is in charge").
//!
//! R rooms, each with M members that must receive everything ("watchers") and V victims,
//! spread round-robin over the node URLs (two nodes on one Redis put every room on both).
//! P publishers send at a total rate R msg/s on the fixed schedule of `schedule::Schedule`,
//! message `k` to room `k % R`. Every `kick_every` seconds while publishing, the kicker takes
//! the next action of its cycle (`kick`: `POST /api/disconnect {user}`, close 4000; `forbid`:
//! the same with code 4403; `revoke`: `POST /api/revoke {user, until}`, close 4403) on the next
//! live victim, through the admin URLs in turn. A victim checks the code of its close and
//! comes back at once with a fresh token (issued after the revocation, so accepted).
//!
//! Every connection has a user, so the nodes run `auth.mode = "jwt"` with the HS256 secret
//! given here: with `auth.mode = "none"` connections have no user and neither route can
//! reach them by user.
//!
//! Counting rules, for watchers only (victims lose messages by design):
//! - acknowledged = the publishes answered `ack` (FIFO per publisher, as in `chaos`);
//! - lost = acknowledged messages of its room a watcher never received; duplicated = second
//!   receipts; out of order = a seq below an earlier one of the same publisher (the order the
//!   protocol promises); order disagreements = watchers whose sequence of first receipts
//!   differs from the most common one of their room (all members see one order);
//! - a watcher the server closes is a failure.
//!
//! The run passes when every member joined, something was acknowledged, at least one action
//! was done, every admin call answered 202, every action's victim was closed with its code,
//! and the watchers' counts above are all zero.
//!
//! Also reported, not failed: a victim's new connection closed with no action pending
//! (`victims_unexpected_closes`, and `closed while joining` among reconnect failures), i.e.
//! an action reaching a node after the victim came back there with a fresh token.

mod members;
pub mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::members::{KickPlan, Shared, VictimState};
pub use self::report::{Action, KickReport};
use crate::Common;
use crate::payload;
use crate::scenario::connect_phase::{self, Connects};
use crate::scenario::publish::{PubResult, Publishing};
use crate::scenario::traffic::{self, new_run_id};
use crate::schedule::ScheduleParams;
use crate::stats::{self, Percentiles, round3};
use crate::token::Minter;

#[derive(Clone, Debug)]
pub struct KickParams {
    pub rooms: u64,
    /// Members per room that must lose nothing.
    pub members: u64,
    /// Victims per room.
    pub victims: u64,
    pub schedule: ScheduleParams,
    /// Seconds to wait after the last reply for deliveries and closes in flight.
    pub drain_s: f64,
    pub payload_bytes: usize,
    /// Rooms are `{room_prefix}0`, `{room_prefix}1`, ...
    pub room_prefix: String,
    /// Seconds between two actions (all victims together).
    pub kick_every_s: f64,
    /// The cycle of actions.
    pub actions: Vec<Action>,
    /// Admin URLs (`http://127.0.0.1:9090`), used in turn.
    pub admin_urls: Vec<String>,
    pub admin_key: Option<String>,
    /// The nodes' `auth.jwt_secret` (HS256).
    pub jwt_secret: String,
    /// A revocation's `until`, seconds from now (at most the nodes' `auth.max_revocation_s`).
    pub revoke_for_s: u64,
    /// Users are `{prefix}-w{i}` (members), `{prefix}-v{i}` (victims), `{prefix}-p{j}`
    /// (publishers); default `lt` and the run id in hex, so runs never share a user.
    pub user_prefix: Option<String>,
}

impl Default for KickParams {
    fn default() -> Self {
        KickParams {
            rooms: 4,
            members: 20,
            victims: 2,
            schedule: ScheduleParams::new(100.0, 20.0),
            drain_s: 10.0,
            payload_bytes: 100,
            room_prefix: "kick:".into(),
            kick_every_s: 0.5,
            actions: vec![Action::Kick, Action::Forbid, Action::Revoke],
            admin_urls: vec!["http://127.0.0.1:9090".into()],
            admin_key: None,
            jwt_secret: String::new(),
            revoke_for_s: 60,
            user_prefix: None,
        }
    }
}

fn check(params: &KickParams) -> Result<(), String> {
    if params.rooms == 0 || params.members == 0 || params.victims == 0 {
        return Err("need at least one room, one member and one victim per room".into());
    }
    if params.jwt_secret.is_empty() {
        return Err(
            "kick needs the nodes' HS256 secret (--jwt-secret): with auth.mode = \"none\" \
             connections have no user to kick or revoke"
                .into(),
        );
    }
    if params.actions.is_empty() {
        return Err("give at least one action (kick, forbid, revoke)".into());
    }
    if !(params.kick_every_s.is_finite() && params.kick_every_s >= 0.01) {
        return Err(format!(
            "kick-every must be at least 0.01 s, got {}",
            params.kick_every_s
        ));
    }
    if params.revoke_for_s == 0 {
        return Err("revoke-for must be at least 1 s".into());
    }
    payload::check_room(&format!("{}{}", params.room_prefix, params.rooms - 1))
}

pub async fn run(common: &Common, params: &KickParams) -> Result<KickReport, String> {
    check(params)?;
    let schedule = params.schedule.schedule()?;
    let endpoints = traffic::resolve_all(&common.urls).await?;
    let mut admin = Vec::new();
    for url in &params.admin_urls {
        admin.push(crate::admin::resolve(url).await?);
    }
    if admin.is_empty() {
        return Err("give at least one --admin URL".into());
    }
    let run = new_run_id();
    let (watchers, victims) = (params.rooms * params.members, params.rooms * params.victims);
    let lifetime = (params.schedule.duration_s + params.drain_s).max(0.0) as u64 + 3_600;
    let shared = Arc::new(Shared {
        publishing: Publishing::new(run, schedule, params.payload_bytes),
        rooms: params.rooms,
        room_prefix: params.room_prefix.clone(),
        user_prefix: params
            .user_prefix
            .clone()
            .unwrap_or_else(|| format!("lt{run:x}")),
        endpoints,
        minter: Minter::new(&params.jwt_secret, lifetime),
        received: AtomicU64::new(0),
        victims: (0..victims)
            .map(|_| Mutex::new(VictimState::Connecting))
            .collect(),
    });
    let members = watchers + victims + schedule.publishers;

    // ---- connect and join ----
    let (mut member, signals) = connect_phase::members(common, &shared, members);
    let connect_start = Instant::now();
    let mut watcher_tasks: Vec<JoinHandle<members::WatcherResult>> = Vec::new();
    for i in 0..watchers {
        let room = i / params.members;
        watcher_tasks.push(tokio::spawn(members::watcher(i, room, member.clone())));
    }
    let mut victim_tasks: Vec<JoinHandle<members::VictimResult>> = Vec::new();
    for v in 0..victims {
        let room = v / params.victims;
        victim_tasks.push(tokio::spawn(members::victim(v, room, member.clone())));
    }
    let mut pub_tasks: Vec<JoinHandle<PubResult>> = Vec::new();
    for j in 0..schedule.publishers {
        pub_tasks.push(tokio::spawn(members::publisher(j, member.clone())));
    }
    member.outcome = None;
    let mut joined = [0u64; 3];
    let deadline = tokio::time::Instant::now() + common.connect_phase_timeout;
    let Connects {
        connect_h,
        errors: connect_errors,
    } = connect_phase::gather(signals.outcome_rx, members, deadline, |kind: u8| {
        joined[kind as usize % 3] += 1;
    })
    .await;
    let connect_phase_s = connect_start.elapsed().as_secs_f64();
    let [watchers_joined, victims_joined, pubs_joined] = joined;
    crate::note(
        common,
        &format!(
            "kick: {watchers_joined}/{watchers} members, {victims_joined}/{victims} victims and \
             {pubs_joined}/{} publishers joined in {connect_phase_s:.2}s",
            schedule.publishers
        ),
    );
    let stop_all = |stop_tx: &watch::Sender<bool>| {
        let _ = stop_tx.send(true);
    };
    if watchers_joined == 0 || pubs_joined < schedule.publishers {
        stop_all(&signals.stop_tx);
        traffic::collect(watcher_tasks, Duration::from_secs(5)).await;
        traffic::collect(victim_tasks, Duration::from_secs(5)).await;
        traffic::collect(pub_tasks, Duration::from_secs(5)).await;
        return Err(format!(
            "setup failed: {watchers_joined}/{watchers} members and {pubs_joined}/{} \
             publishers joined; errors: {connect_errors:?}",
            schedule.publishers
        ));
    }

    // ---- publish and kick ----
    let plan = KickPlan {
        admin,
        admin_key: params.admin_key.clone(),
        actions: params.actions.clone(),
        every: Duration::from_secs_f64(params.kick_every_s),
        revoke_for_s: params.revoke_for_s,
        call_timeout: common.handshake_timeout,
    };
    let kicker = tokio::spawn(members::kicker(
        shared.clone(),
        plan,
        member.go.clone(),
        member.stop.clone(),
    ));
    let cpu_before = traffic::cpu_snapshot(&common.pids);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = t0 + Duration::from_secs_f64(params.schedule.duration_s);
    let _ = signals.go_tx.send(Some((t0, end)));
    let bar = crate::progress_bar(
        common.progress,
        (params.schedule.duration_s * 1000.0) as u64,
        "kick",
    );
    let publish_deadline = end + Duration::from_secs(30);
    let drain_for = Duration::from_secs_f64(params.drain_s.max(0.0));
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let targeted = || {
        shared
            .victims
            .iter()
            .filter(|s| {
                matches!(
                    *s.lock().unwrap_or_else(|p| p.into_inner()),
                    VictimState::Targeted { .. }
                )
            })
            .count() as u64
    };
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = tokio::time::Instant::now();
        let sent = shared.publishing.sent.load(Ordering::Relaxed);
        let replied = shared.publishing.acked.load(Ordering::Relaxed)
            + shared.publishing.refused.load(Ordering::Relaxed);
        let received = shared.received.load(Ordering::Relaxed);
        bar.set_position(now.saturating_duration_since(t0).as_millis() as u64);
        bar.set_message(format!(
            "sent {sent}/{} received {received}/{}",
            schedule.planned,
            sent * params.members
        ));
        let sends_done =
            (sent >= schedule.planned && replied >= sent && now >= end) || now >= publish_deadline;
        if sends_done && drain_deadline.is_none() {
            drain_deadline = Some(now + drain_for);
        }
        if let Some(d) = drain_deadline
            && ((received >= sent * params.members && targeted() == 0) || now >= d)
        {
            break;
        }
    }
    bar.finish_and_clear();
    let cpu_after = traffic::cpu_snapshot(&common.pids);
    let not_closed = targeted();
    stop_all(&signals.stop_tx);
    let kicked = traffic::collect(vec![kicker], Duration::from_secs(5)).await;
    let watcher_results = traffic::collect(watcher_tasks, Duration::from_secs(10)).await;
    let victim_results = traffic::collect(victim_tasks, Duration::from_secs(5)).await;
    let pub_results = traffic::collect(pub_tasks, Duration::from_secs(5)).await;

    // ---- sum up ----
    let mut r = KickReport {
        scenario: "kick",
        urls: common.urls.clone(),
        admin_urls: params.admin_urls.clone(),
        rooms: params.rooms,
        watchers_per_room: params.members,
        watchers,
        watchers_joined,
        victims_per_room: params.victims,
        victims,
        victims_joined,
        publishers: schedule.publishers,
        publishers_joined: pubs_joined,
        rate_msgs_per_s: schedule.rate,
        duration_s: params.schedule.duration_s,
        kick_every_s: params.kick_every_s,
        actions: params.actions.clone(),
        planned_msgs: schedule.planned,
        sent_msgs: shared.publishing.sent.load(Ordering::Relaxed),
        victims_not_closed: not_closed,
        connect_ms: Percentiles::of(&connect_h),
        connect_phase_s: round3(connect_phase_s),
        connect_errors,
        ..KickReport::default()
    };
    if let Some(Some(k)) = kicked.into_iter().next() {
        r.actions_done = k.done;
        r.action_errors = k.errors;
        r.ticks_skipped = k.skipped;
    }
    let mut acked_by_room: Vec<Vec<u64>> = vec![Vec::new(); params.rooms as usize];
    for p in pub_results.iter().flatten() {
        for &k in &p.acked {
            acked_by_room[shared.room_of(k) as usize].push(k);
        }
        merge(&mut r.publish_errors, &p.errors);
    }
    for acked in &mut acked_by_room {
        acked.sort_unstable();
        acked.dedup();
    }
    r.acked_msgs = acked_by_room.iter().map(|a| a.len() as u64).sum();

    let mut close_h = stats::histogram();
    for v in victim_results.iter().flatten() {
        for (a, n) in &v.closed_expected {
            *r.victims_closed_expected.entry(*a).or_default() += n;
        }
        merge(&mut r.victims_closed_wrong, &v.closed_wrong);
        merge(&mut r.victims_unexpected_closes, &v.unexpected);
        merge(&mut r.victim_reconnect_failures, &v.reconnect_failures);
        r.victim_reconnects += v.reconnects;
        if let Some(h) = &v.close_h {
            let _ = close_h.add(h);
        }
    }
    r.action_to_close_ms = Percentiles::of(&close_h);

    let mut latency_h = stats::histogram();
    let mut logs = Vec::new();
    for w in watcher_results.iter().flatten() {
        if let Some(label) = &w.closed {
            *r.watchers_closed.entry(label.clone()).or_default() += 1;
        }
        merge(&mut r.server_errors, &w.server_errors);
        if let Some(h) = &w.latency_h {
            let _ = latency_h.add(h);
        }
        let Some(log) = &w.log else { continue };
        let acked = &acked_by_room[log.room as usize];
        let (lost, unacked) = log.score(acked);
        r.expected_deliveries += acked.len() as u64;
        r.received_acked += acked.len() as u64 - lost;
        r.received_unacked += unacked;
        r.lost += lost;
        r.duplicates += log.duplicates;
        r.out_of_order += log.out_of_order;
        r.misrouted += log.misrouted;
        if lost > 0 {
            r.watchers_with_gaps += 1;
        }
        logs.push(log);
    }
    // A joined watcher whose task did not report lost everything of its room.
    let missing = watchers_joined.saturating_sub(logs.len() as u64);
    if missing > 0 {
        r.watchers_with_gaps += missing;
        let per_room = r.acked_msgs / params.rooms.max(1);
        r.lost += missing * per_room.max(1);
        r.expected_deliveries += missing * per_room;
    }
    r.order_disagreements = report::order_disagreements(&logs);
    r.latency_ms = Percentiles::of(&latency_h);
    r.cpu = traffic::cpu_report(&common.pids, &cpu_before, &cpu_after, r.received_acked);
    r.judge();
    Ok(r)
}

fn merge(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, n) in from {
        *into.entry(k.clone()).or_default() += n;
    }
}
