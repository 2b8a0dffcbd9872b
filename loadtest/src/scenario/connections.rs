//! Scenario `connections`: open C connections from several loopback source addresses, hold
//! them with the text `ping` heartbeat, and report how many stayed up, how fast they opened,
//! and what each one costs the gateway in memory (VmRSS of `--pid`, before and while held).
//!
//! Owns opening under a concurrency limit, the hold, heartbeats and the memory sampling;
//! connection details are `client`'s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::Common;
use crate::client::{self, Endpoint};
use crate::payload::{self, Incoming};
use crate::scenario::traffic::{CpuReport, collect, cpu_report, cpu_snapshot, resolve_all};
use crate::stats::{self, Percentiles, round3};

#[derive(Clone, Debug)]
pub struct ConnectionsParams {
    pub connections: u64,
    /// Seconds to hold every connection once all are open; memory is sampled at the end.
    pub hold_s: f64,
}

impl Default for ConnectionsParams {
    fn default() -> Self {
        ConnectionsParams {
            connections: 10_000,
            hold_s: 30.0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RssReport {
    pub pid: u32,
    pub before_kib: Option<u64>,
    pub held_kib: Option<u64>,
    /// Connections this process held at the end: those of URL `j` for the `j`-th pid when
    /// there are as many `--pid`s as `--url`s, else all of them.
    pub held_connections: u64,
    /// (held − before) / held_connections, in bytes.
    pub per_connection_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectionsReport {
    pub scenario: &'static str,
    pub urls: Vec<String>,
    pub sources: usize,
    pub connections: u64,
    pub connected: u64,
    pub failed: u64,
    pub held_to_end: u64,
    pub dropped_during_hold: u64,
    pub connect_phase_s: f64,
    pub connects_per_s: f64,
    pub handshake_ms: Percentiles,
    pub hold_s: f64,
    pub heartbeats_sent: u64,
    pub pongs_received: u64,
    pub errors: BTreeMap<String, u64>,
    pub rss: Vec<RssReport>,
    pub cpu: CpuReport,
    /// Every connection opened and was still up at the end.
    pub pass: bool,
    /// Open connections over time (seconds since the start, count), for the HTML report.
    #[serde(skip)]
    pub timeline: Vec<(f64, u64)>,
}

struct Counters {
    open: AtomicU64,
    dropped: AtomicU64,
    /// Per URL (same order as `Common::urls`): connections that opened there, and dropped.
    connected_by_url: Vec<AtomicU64>,
    dropped_by_url: Vec<AtomicU64>,
    pings: AtomicU64,
    pongs: AtomicU64,
}

pub async fn run(common: &Common, params: &ConnectionsParams) -> Result<ConnectionsReport, String> {
    let endpoints = resolve_all(&common.urls).await?;
    let n = params.connections;
    if n == 0 {
        return Err("need at least one connection".into());
    }
    let rss_before: Vec<Option<u64>> = common
        .pids
        .iter()
        .map(|&p| crate::procfs::status_kib(p, "VmRSS"))
        .collect();
    let cpu_before = cpu_snapshot(&common.pids);
    let counters = Arc::new(Counters {
        open: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        connected_by_url: endpoints.iter().map(|_| AtomicU64::new(0)).collect(),
        dropped_by_url: endpoints.iter().map(|_| AtomicU64::new(0)).collect(),
        pings: AtomicU64::new(0),
        pongs: AtomicU64::new(0),
    });
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<Result<u64, String>>(n as usize);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let url = i as usize % endpoints.len();
        tasks.push(tokio::spawn(hold(
            i,
            url,
            endpoints[url].clone(),
            client::source_address(i as usize, common.sources),
            common.clone(),
            counters.clone(),
            sem.clone(),
            outcome_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(outcome_tx);

    let bar = crate::progress_bar(common.progress, n, "connecting");
    let mut timeline = vec![(0.0, 0)];
    let mut sample = tokio::time::interval(Duration::from_millis(250));
    let mut handshake = stats::histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + common.connect_phase_timeout;
    let mut settled = 0u64;
    while settled < n {
        tokio::select! {
            next = tokio::time::timeout_at(deadline, outcome_rx.recv()) => match next {
                Ok(Some(Ok(us))) => {
                    stats::record(&mut handshake, us);
                    settled += 1;
                    bar.inc(1);
                }
                Ok(Some(Err(e))) => {
                    *errors.entry(e).or_default() += 1;
                    settled += 1;
                    bar.inc(1);
                }
                Ok(None) => break,
                Err(_) => {
                    outcome_rx.close();
                    *errors.entry("connect phase timed out".into()).or_default() += n - settled;
                    break;
                }
            },
            _ = sample.tick() => {
                timeline.push((start.elapsed().as_secs_f64(), counters.open.load(Ordering::Relaxed)));
            }
        }
    }
    drop(outcome_rx);
    bar.finish_and_clear();
    let connect_phase_s = start.elapsed().as_secs_f64();
    let connected = handshake.len();
    crate::note(
        common,
        &format!(
            "connections: {connected}/{n} open in {connect_phase_s:.2}s, holding {}s",
            params.hold_s
        ),
    );

    let hold_bar = crate::progress_bar(common.progress, (params.hold_s * 1000.0) as u64, "holding");
    let hold_until = tokio::time::Instant::now() + Duration::from_secs_f64(params.hold_s.max(0.0));
    while tokio::time::Instant::now() < hold_until {
        tokio::select! {
            _ = tokio::time::sleep_until(hold_until) => {}
            _ = sample.tick() => {
                let open = counters.open.load(Ordering::Relaxed);
                timeline.push((start.elapsed().as_secs_f64(), open));
                let left = hold_until.saturating_duration_since(tokio::time::Instant::now());
                hold_bar.set_position(((params.hold_s - left.as_secs_f64()) * 1000.0) as u64);
                hold_bar.set_message(format!("{open} open"));
            }
        }
    }
    hold_bar.finish_and_clear();
    let rss_held: Vec<Option<u64>> = common
        .pids
        .iter()
        .map(|&p| crate::procfs::status_kib(p, "VmRSS"))
        .collect();
    let cpu_after = cpu_snapshot(&common.pids);
    let dropped = counters.dropped.load(Ordering::Relaxed);
    let held = connected.saturating_sub(dropped);
    let held_by_url: Vec<u64> = counters
        .connected_by_url
        .iter()
        .zip(&counters.dropped_by_url)
        .map(|(c, d)| {
            c.load(Ordering::Relaxed)
                .saturating_sub(d.load(Ordering::Relaxed))
        })
        .collect();
    timeline.push((
        start.elapsed().as_secs_f64(),
        counters.open.load(Ordering::Relaxed),
    ));
    let _ = stop_tx.send(true);
    collect(tasks, Duration::from_secs(10)).await;

    let rss = common
        .pids
        .iter()
        .zip(rss_before.iter().zip(&rss_held))
        .enumerate()
        .map(|(j, (&pid, (&before_kib, &held_kib)))| {
            let held_here = held_on_pid(j, common.pids.len(), &held_by_url, held);
            RssReport {
                pid,
                before_kib,
                held_kib,
                held_connections: held_here,
                per_connection_bytes: match (before_kib, held_kib) {
                    (Some(b), Some(h)) if held_here > 0 => {
                        Some(h.saturating_sub(b) * 1024 / held_here)
                    }
                    _ => None,
                },
            }
        })
        .collect();
    Ok(ConnectionsReport {
        scenario: "connections",
        urls: common.urls.clone(),
        sources: common.sources.max(1),
        connections: n,
        connected,
        failed: errors.values().sum(),
        held_to_end: held,
        dropped_during_hold: dropped,
        connect_phase_s: round3(connect_phase_s),
        connects_per_s: round3(connected as f64 / connect_phase_s.max(1e-9)),
        handshake_ms: Percentiles::of(&handshake),
        hold_s: params.hold_s,
        heartbeats_sent: counters.pings.load(Ordering::Relaxed),
        pongs_received: counters.pongs.load(Ordering::Relaxed),
        errors,
        rss,
        cpu: cpu_report(&common.pids, &cpu_before, &cpu_after, 0),
        pass: held == n,
        timeline,
    })
}

/// Connections held by the `j`-th of `pids` watched processes: with as many `--pid`s as
/// `--url`s, pid `j` is taken to serve URL `j`; otherwise every connection counts for each.
fn held_on_pid(j: usize, pids: usize, held_by_url: &[u64], held: u64) -> u64 {
    if pids == held_by_url.len() {
        held_by_url.get(j).copied().unwrap_or(0)
    } else {
        held
    }
}

#[allow(clippy::too_many_arguments)]
async fn hold(
    i: u64,
    url: usize,
    endpoint: Endpoint,
    source: Option<IpAddr>,
    common: Common,
    counters: Arc<Counters>,
    sem: Arc<Semaphore>,
    outcome: mpsc::Sender<Result<u64, String>>,
    mut stop: watch::Receiver<bool>,
) {
    let setup = async {
        let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
        client::connect(&endpoint, source, common.handshake_timeout)
            .await
            .map_err(|e| e.0)
    };
    let mut ws = tokio::select! {
        r = setup => match r {
            Ok(c) => {
                if outcome.send(Ok(c.connect_us)).await.is_err() {
                    return;
                }
                c.ws
            }
            Err(e) => {
                let _ = outcome.send(Err(e)).await;
                return;
            }
        },
        _ = stop.changed() => return,
    };
    drop(outcome);
    counters.open.fetch_add(1, Ordering::Relaxed);
    if let Some(c) = counters.connected_by_url.get(url) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    // Spread the heartbeats of all connections over the interval.
    let spread = common.heartbeat.mul_f64((i % 1000) as f64 / 1000.0);
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + spread, common.heartbeat);
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let dropped = loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break false,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if payload::classify(text.as_str()) == Incoming::Pong {
                        counters.pongs.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                if ws.send(Message::Text("ping".into())).await.is_err() {
                    break true;
                }
                counters.pings.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    counters.open.fetch_sub(1, Ordering::Relaxed);
    if dropped {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = counters.dropped_by_url.get(url) {
            d.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::held_on_pid;

    #[test]
    fn memory_is_split_by_url_when_pids_match_urls() {
        assert_eq!(held_on_pid(0, 2, &[10, 20], 30), 10);
        assert_eq!(held_on_pid(1, 2, &[10, 20], 30), 20);
        assert_eq!(held_on_pid(0, 1, &[10, 20], 30), 30);
        assert_eq!(held_on_pid(0, 1, &[30], 30), 30);
    }
}
