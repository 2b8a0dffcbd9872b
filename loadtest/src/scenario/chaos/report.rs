//! The report of a `chaos` run: its fields (serialized as the JSON line) and its text form.
//!
//! Owns only the shape and the printing; `mod` fills it in.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::scenario::footer;
use crate::scenario::traffic::CpuReport;
use crate::stats::Percentiles;

use super::KillDist;

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
