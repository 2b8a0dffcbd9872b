//! The tasks of a `kick` run: watchers (the members that must lose nothing), victims (kicked
//! or revoked, then back with a fresh token), publishers (the fixed schedule, one room per
//! message), and the kicker that calls the admin API.
//!
//! Owns each task's loop and its own counts; the victims' states are shared with the kicker
//! (a victim is targeted only while live, so every action has exactly one close to wait for).
//! Scoring and the report are `report`'s; the phases are `mod`'s.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use super::report::{Action, WatcherLog};
use crate::Common;
use crate::admin::{self, AdminEndpoint};
use crate::client::{self, Endpoint, Ws};
use crate::payload::{self, Incoming};
use crate::scenario::connect_phase;
use crate::scenario::publish::{Go, PubResult, Publishing, wait_for_go};
use crate::scenario::traffic::now_us;
use crate::stats;
use crate::token::{self, Minter};

/// Everything the tasks share.
pub(super) struct Shared {
    pub publishing: Publishing,
    pub rooms: u64,
    pub room_prefix: String,
    pub user_prefix: String,
    pub endpoints: Vec<Endpoint>,
    pub minter: Minter,
    /// Watchers' first receipts.
    pub received: AtomicU64,
    pub victims: Vec<Mutex<VictimState>>,
}

impl Shared {
    pub fn room_name(&self, room: u64) -> String {
        format!("{}{room}", self.room_prefix)
    }

    /// The room message `seq` goes to.
    pub fn room_of(&self, seq: u64) -> u64 {
        seq % self.rooms.max(1)
    }
}

/// Where one victim is, as the kicker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VictimState {
    /// Not joined (starting or reconnecting): not a target.
    Connecting,
    /// Joined with a token issued at `iat` (unix seconds).
    Live { iat: u64 },
    /// An admin call for it went out at `at_us`; its close is awaited.
    Targeted {
        action: Action,
        iat: u64,
        at_us: u64,
    },
}

/// What every member task (watcher, victim, publisher) is given besides its number and room;
/// it reports its connect outcome as its kind: 0 watcher, 1 victim, 2 publisher.
pub(super) type Member = connect_phase::Member<Shared, u8>;

/// Connect as `user` with a token issued now and join `rooms`: the socket, the token's `iat`
/// and the handshake time in microseconds.
#[allow(clippy::too_many_arguments)]
async fn open(
    shared: &Shared,
    common: &Common,
    sem: &Semaphore,
    endpoint: &Endpoint,
    source: Option<std::net::IpAddr>,
    user: &str,
    jti: &str,
    rooms: &[String],
) -> Result<(Ws, u64, u64), String> {
    let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
    let iat = token::unix_now();
    let token = shared.minter.mint(user, iat, jti)?;
    let connected = client::connect(
        &token::with_token(endpoint, &token),
        source,
        common.handshake_timeout,
    )
    .await
    .map_err(|e| e.0)?;
    let mut ws = connected.ws;
    for room in rooms {
        client::join(&mut ws, room, common.handshake_timeout)
            .await
            .map_err(|e| e.0)?;
    }
    Ok((ws, iat, connected.connect_us))
}

fn close_label(frame: Option<Result<Message, impl std::fmt::Display>>) -> Option<String> {
    match frame {
        Some(Ok(Message::Close(f))) => {
            Some(f.map_or("no code".into(), |f| u16::from(f.code).to_string()))
        }
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(format!("error: {e}")),
        None => Some("none".into()),
    }
}

#[derive(Default)]
pub(super) struct WatcherResult {
    pub log: Option<WatcherLog>,
    /// How the server ended it, if it did.
    pub closed: Option<String>,
    pub server_errors: BTreeMap<String, u64>,
    pub latency_h: Option<Histogram<u64>>,
}

/// A member that must receive every message of its room, in order, once.
pub(super) async fn watcher(i: u64, room: u64, mut m: Member) -> WatcherResult {
    let mut r = WatcherResult::default();
    let endpoint = &m.shared.endpoints[i as usize % m.shared.endpoints.len()];
    let user = format!("{}-w{i}", m.shared.user_prefix);
    let rooms = [m.shared.room_name(room)];
    let source = client::source_address(i as usize, m.common.sources);
    let opened = tokio::select! {
        o = open(&m.shared, &m.common, &m.sem, endpoint, source, &user, &user, &rooms) => o,
        _ = m.stop.changed() => return r,
    };
    let Some(mut ws) = m.report(0, opened.map(|(ws, _, us)| (ws, us))).await else {
        return r;
    };
    let mut log = WatcherLog::new(
        room,
        m.shared.publishing.schedule.planned,
        m.shared.publishing.schedule.publishers,
    );
    let mut latency = stats::histogram();
    let mut on_text = |text: &str, r: &mut WatcherResult| match payload::classify(text) {
        Incoming::Message(p) if p.run == m.shared.publishing.run => {
            let first = log.receive(p.seq, m.shared.room_of(p.seq));
            if first {
                stats::record(&mut latency, now_us().saturating_sub(p.t));
                m.shared.received.fetch_add(1, Ordering::Relaxed);
            }
        }
        Incoming::Error { code, .. } => {
            *r.server_errors.entry(code.into_owned()).or_default() += 1;
        }
        _ => {}
    };
    let mut early = Vec::new();
    let started = wait_for_go(&mut ws, &mut m.go, &mut m.stop, |t| {
        early.push(t.to_owned())
    })
    .await;
    for t in &early {
        on_text(t, &mut r);
    }
    if started.is_some() {
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + m.common.heartbeat,
            m.common.heartbeat,
        );
        loop {
            tokio::select! {
                biased;
                _ = m.stop.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    break;
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => on_text(t.as_str(), &mut r),
                    other => if let Some(label) = close_label(other) {
                        r.closed = Some(label);
                        break;
                    },
                },
                _ = heartbeat.tick() => {
                    if ws.send(Message::Text("ping".into())).await.is_err() {
                        r.closed = Some("send failed".into());
                        break;
                    }
                }
            }
        }
    } else {
        r.closed = Some("before the start".into());
    }
    r.log = Some(log);
    r.latency_h = Some(latency);
    r
}

#[derive(Default)]
pub(super) struct VictimResult {
    pub closed_expected: BTreeMap<Action, u64>,
    pub closed_wrong: BTreeMap<String, u64>,
    pub unexpected: BTreeMap<String, u64>,
    pub reconnects: u64,
    pub reconnect_failures: BTreeMap<String, u64>,
    pub close_h: Option<Histogram<u64>>,
}

/// A member the kicker targets: it waits for its close, checks the code, and comes back with
/// a fresh token (the app's backend lets it in again) until the run stops.
pub(super) async fn victim(v: u64, room: u64, mut m: Member) -> VictimResult {
    let mut r = VictimResult::default();
    let user = format!("{}-v{v}", m.shared.user_prefix);
    let rooms = [m.shared.room_name(room)];
    let source = client::source_address(v as usize + 1, m.common.sources);
    let n = m.shared.endpoints.len();
    let mut conns = 0u64;
    let jti = |conns: u64| format!("{user}.{conns}");
    let endpoint = &m.shared.endpoints[(v as usize + 1) % n];
    let first_jti = jti(0);
    let opened = tokio::select! {
        o = open(&m.shared, &m.common, &m.sem, endpoint, source, &user, &first_jti, &rooms) => o,
        _ = m.stop.changed() => return r,
    };
    if let Ok((_, iat, _)) = &opened {
        set_state(&m.shared, v, VictimState::Live { iat: *iat });
    }
    let Some(mut ws) = m.report(1, opened.map(|(ws, _, us)| (ws, us))).await else {
        return r;
    };
    let mut close_h = stats::histogram();
    if wait_for_go(&mut ws, &mut m.go, &mut m.stop, |_| {})
        .await
        .is_none()
    {
        r.close_h = Some(close_h);
        return r;
    }
    let stopped = m.stop.changed();
    tokio::pin!(stopped);
    loop {
        // ---- one connection's life: read (and drop) messages until it is closed ----
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + m.common.heartbeat,
            m.common.heartbeat,
        );
        let label = loop {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    r.close_h = Some(close_h);
                    return r;
                }
                frame = ws.next() => if let Some(label) = close_label(frame) {
                    break label;
                },
                _ = heartbeat.tick() => {
                    if ws.send(Message::Text("ping".into())).await.is_err() {
                        break "send failed".to_string();
                    }
                }
            }
        };
        let was = {
            let mut state = lock(&m.shared, v);
            std::mem::replace(&mut *state, VictimState::Connecting)
        };
        match was {
            VictimState::Targeted { action, at_us, .. } => {
                if label == action.expected_code().to_string() {
                    *r.closed_expected.entry(action).or_default() += 1;
                    stats::record(&mut close_h, now_us().saturating_sub(at_us));
                } else {
                    let key = format!("{}→{label}", action.name());
                    *r.closed_wrong.entry(key).or_default() += 1;
                }
            }
            _ => *r.unexpected.entry(label).or_default() += 1,
        }
        drop(ws);

        // ---- back in with a fresh token ----
        ws = loop {
            conns += 1;
            let endpoint = &m.shared.endpoints[(v + conns) as usize % n];
            let this_jti = jti(conns);
            let attempt = open(
                &m.shared, &m.common, &m.sem, endpoint, source, &user, &this_jti, &rooms,
            );
            let result = tokio::select! {
                o = attempt => o,
                _ = &mut stopped => {
                    r.close_h = Some(close_h);
                    return r;
                }
            };
            match result {
                Ok((ws, iat, _)) => {
                    set_state(&m.shared, v, VictimState::Live { iat });
                    r.reconnects += 1;
                    break ws;
                }
                Err(e) => {
                    *r.reconnect_failures.entry(e).or_default() += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = &mut stopped => {
                            r.close_h = Some(close_h);
                            return r;
                        }
                    }
                }
            }
        };
    }
}

fn lock(shared: &Shared, v: u64) -> std::sync::MutexGuard<'_, VictimState> {
    // A poisoned lock only means a task panicked holding it; the state is still a value.
    shared.victims[v as usize]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn set_state(shared: &Shared, v: u64, state: VictimState) {
    *lock(shared, v) = state;
}

#[derive(Default)]
pub(super) struct KickerResult {
    pub done: BTreeMap<Action, u64>,
    pub errors: BTreeMap<String, u64>,
    pub skipped: u64,
}

/// What the kicker needs beyond the shared state.
pub(super) struct KickPlan {
    pub admin: Vec<AdminEndpoint>,
    pub admin_key: Option<String>,
    pub actions: Vec<Action>,
    pub every: Duration,
    pub revoke_for_s: u64,
    pub call_timeout: Duration,
}

/// From the start to the end of the actions, every `plan.every`: the next action of the
/// cycle on the next live victim (round robin), through the next admin URL.
pub(super) async fn kicker(
    shared: Arc<Shared>,
    plan: KickPlan,
    mut go: Go,
    mut stop: watch::Receiver<bool>,
) -> KickerResult {
    let mut r = KickerResult::default();
    let (t0, end) = loop {
        tokio::select! {
            changed = go.changed() => {
                if changed.is_err() {
                    return r;
                }
                if let Some(start) = *go.borrow_and_update() {
                    break start;
                }
            }
            _ = stop.changed() => return r,
        }
    };
    let victims = shared.victims.len();
    if victims == 0 || plan.actions.is_empty() || plan.admin.is_empty() {
        return r;
    }
    let mut ticks = tokio::time::interval_at(t0 + plan.every, plan.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut cursor, mut n) = (0usize, 0usize);
    loop {
        tokio::select! {
            _ = stop.changed() => return r,
            at = ticks.tick() => if at >= end { return r; },
        }
        let action = plan.actions[n % plan.actions.len()];
        let now_s = token::unix_now();
        let mut target = None;
        for off in 0..victims {
            let v = (cursor + off) % victims;
            let mut state = lock(&shared, v as u64);
            if let VictimState::Live { iat } = *state
                // A revocation spares tokens issued in its own second.
                && (action != Action::Revoke || iat < now_s)
            {
                *state = VictimState::Targeted {
                    action,
                    iat,
                    at_us: now_us(),
                };
                target = Some((v, iat));
                break;
            }
        }
        let Some((v, iat)) = target else {
            r.skipped += 1;
            continue;
        };
        cursor = v + 1;
        let user = format!("{}-v{v}", shared.user_prefix);
        let (path, body) = match action {
            Action::Kick => ("/api/disconnect", serde_json::json!({ "user": user })),
            Action::Forbid => (
                "/api/disconnect",
                serde_json::json!({ "user": user, "code": 4403, "reason": "loadtest" }),
            ),
            Action::Revoke => (
                "/api/revoke",
                serde_json::json!({ "user": user, "until": now_s + plan.revoke_for_s }),
            ),
        };
        let endpoint = &plan.admin[n % plan.admin.len()];
        n += 1;
        let status = admin::post(
            endpoint,
            path,
            &body.to_string(),
            plan.admin_key.as_deref(),
            plan.call_timeout,
        )
        .await;
        match status {
            Ok(202) => *r.done.entry(action).or_default() += 1,
            other => {
                let why = match other {
                    Ok(code) => format!("{} HTTP {code}", action.name()),
                    Err(e) => format!("{} {e}", action.name()),
                };
                *r.errors.entry(why).or_default() += 1;
                // No close to wait for (as far as this tool can tell).
                let mut state = lock(&shared, v as u64);
                if matches!(*state, VictimState::Targeted { .. }) {
                    *state = VictimState::Live { iat };
                }
            }
        }
    }
}

/// Publisher `j`: joins the rooms its messages go to, then sends them on the schedule
/// (`echo: false`) and matches replies to sends first in, first out.
pub(super) async fn publisher(j: u64, mut m: Member) -> PubResult {
    let schedule = m.shared.publishing.schedule;
    let mine: BTreeSet<u64> = schedule
        .messages_of(j)
        .take(m.shared.rooms as usize)
        .map(|k| m.shared.room_of(k))
        .collect();
    let rooms: Vec<String> = mine.iter().map(|&r| m.shared.room_name(r)).collect();
    let endpoint = &m.shared.endpoints[j as usize % m.shared.endpoints.len()];
    let user = format!("{}-p{j}", m.shared.user_prefix);
    let source = client::source_address(j as usize + 2, m.common.sources);
    let opened = tokio::select! {
        o = open(&m.shared, &m.common, &m.sem, endpoint, source, &user, &user, &rooms) => o,
        _ = m.stop.changed() => return PubResult::default(),
    };
    let Some(ws) = m.report(2, opened.map(|(ws, _, us)| (ws, us))).await else {
        return PubResult::default();
    };
    m.shared
        .publishing
        .publisher(j, ws, m.common.heartbeat, &mut m.go, &mut m.stop, |k| {
            Cow::Owned(m.shared.room_name(m.shared.room_of(k)))
        })
        .await
}
