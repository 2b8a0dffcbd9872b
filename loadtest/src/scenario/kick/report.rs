//! What a `kick` run measured, how one watcher's stream is scored, and the pass rule.
//!
//! Pure: no sockets, no clock. The tasks in `members` fill [`WatcherLog`]s and counters; `mod`
//! sums them into a [`KickReport`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::scenario::footer;
use crate::scenario::traffic::CpuReport;
use crate::stats::{Insert, Percentiles, Seen};

/// What the backend does to a victim, and the close code the victim must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `POST /api/disconnect {user}`: close 4000 ("reconnect").
    Kick,
    /// `POST /api/disconnect {user, code: 4403}`: close 4403.
    Forbid,
    /// `POST /api/revoke {user, until}`: the live token is refused, close 4403.
    Revoke,
}

impl Action {
    pub fn expected_code(self) -> u16 {
        match self {
            Action::Kick => 4000,
            Action::Forbid | Action::Revoke => 4403,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Kick => "kick",
            Action::Forbid => "forbid",
            Action::Revoke => "revoke",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Action, String> {
        match s {
            "kick" => Ok(Action::Kick),
            "forbid" => Ok(Action::Forbid),
            "revoke" => Ok(Action::Revoke),
            other => Err(format!("action {other:?}: kick, forbid or revoke")),
        }
    }
}

/// One watcher's stream of this run's messages, in arrival order.
#[derive(Clone, Debug)]
pub struct WatcherLog {
    pub room: u64,
    seen: Seen,
    /// The last seq from each publisher (`seq % publishers`).
    last_by_pub: Vec<Option<u64>>,
    /// FNV-1a over the seqs as they arrived (first receipts only): equal for two watchers of
    /// a room exactly when they got the same messages in the same order.
    pub order_hash: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Messages of this run published to another room.
    pub misrouted: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl WatcherLog {
    pub fn new(room: u64, planned: u64, publishers: u64) -> WatcherLog {
        WatcherLog {
            room,
            seen: Seen::new(planned),
            last_by_pub: vec![None; publishers.max(1) as usize],
            order_hash: FNV_OFFSET,
            duplicates: 0,
            out_of_order: 0,
            misrouted: 0,
        }
    }

    /// Note message `seq`, published to room `room_of_seq`; true when it is a first receipt.
    pub fn receive(&mut self, seq: u64, room_of_seq: u64) -> bool {
        if room_of_seq != self.room {
            self.misrouted += 1;
            return false;
        }
        match self.seen.insert(seq) {
            Insert::New => {}
            Insert::Duplicate => {
                self.duplicates += 1;
                return false;
            }
            Insert::OutOfRange => {
                self.misrouted += 1;
                return false;
            }
        }
        let publisher = (seq % self.last_by_pub.len() as u64) as usize;
        if let Some(last) = self.last_by_pub.get_mut(publisher) {
            if last.is_some_and(|l| seq < l) {
                self.out_of_order += 1;
            }
            *last = Some(last.map_or(seq, |l| l.max(seq)));
        }
        for b in seq.to_le_bytes() {
            self.order_hash = (self.order_hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        true
    }

    /// (acknowledged messages of its room it never received, received ones never
    /// acknowledged), against `acked`, the acknowledged seqs of its room.
    pub fn score(&self, acked: &[u64]) -> (u64, u64) {
        let mut seen = self.seen.clone();
        let received = seen.count();
        let mut lost = 0;
        for &k in acked {
            if seen.insert(k) == Insert::New {
                lost += 1;
            }
        }
        (lost, received - (acked.len() as u64 - lost))
    }
}

/// Watchers whose order hash differs from the most common one of their room.
pub fn order_disagreements(logs: &[&WatcherLog]) -> u64 {
    let mut by_room: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for log in logs {
        *by_room
            .entry(log.room)
            .or_default()
            .entry(log.order_hash)
            .or_default() += 1;
    }
    by_room
        .values()
        .map(|hashes| {
            let total: u64 = hashes.values().sum();
            total - hashes.values().copied().max().unwrap_or(0)
        })
        .sum()
}

/// What a `kick` run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KickReport {
    pub scenario: &'static str,
    pub urls: Vec<String>,
    pub admin_urls: Vec<String>,
    pub rooms: u64,
    /// Non-victim members per room, and in all.
    pub watchers_per_room: u64,
    pub watchers: u64,
    pub watchers_joined: u64,
    pub victims_per_room: u64,
    pub victims: u64,
    pub victims_joined: u64,
    pub publishers: u64,
    pub publishers_joined: u64,
    pub rate_msgs_per_s: f64,
    pub duration_s: f64,
    pub kick_every_s: f64,
    pub actions: Vec<Action>,
    pub planned_msgs: u64,
    pub sent_msgs: u64,
    pub acked_msgs: u64,
    pub publish_errors: BTreeMap<String, u64>,
    /// Admin calls answered 202, by action.
    pub actions_done: BTreeMap<Action, u64>,
    /// Admin calls that failed (status or transport), by reason.
    pub action_errors: BTreeMap<String, u64>,
    /// Ticks when no victim could be targeted (all reconnecting, or a revoke would land in
    /// the second its token was issued).
    pub ticks_skipped: u64,
    /// Victims closed with the code their action promises, by action.
    pub victims_closed_expected: BTreeMap<Action, u64>,
    /// Victims closed with another code after an action: "action→code".
    pub victims_closed_wrong: BTreeMap<String, u64>,
    /// Actions whose victim was still open at the end.
    pub victims_not_closed: u64,
    /// Victim connections that ended with no action pending, by close code: a victim's new
    /// connection (fresh token) closed by an action meant for its previous one. Reported,
    /// not failed: the rule under test is about the other members.
    pub victims_unexpected_closes: BTreeMap<String, u64>,
    pub victim_reconnects: u64,
    pub victim_reconnect_failures: BTreeMap<String, u64>,
    /// Admin call sent → close frame at the victim.
    pub action_to_close_ms: Percentiles,
    /// Σ over watchers of the acknowledged messages of their room.
    pub expected_deliveries: u64,
    pub received_acked: u64,
    pub received_unacked: u64,
    /// The rule: all four are zero, and no watcher was closed.
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub order_disagreements: u64,
    pub misrouted: u64,
    pub watchers_with_gaps: u64,
    /// Watcher connections the server ended, by close code ("none": no close frame).
    pub watchers_closed: BTreeMap<String, u64>,
    pub server_errors: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    pub connect_ms: Percentiles,
    pub connect_phase_s: f64,
    pub connect_errors: BTreeMap<String, u64>,
    pub cpu: CpuReport,
    pub pass: bool,
    /// Why it did not pass (empty when it did).
    pub failures: Vec<String>,
}

impl KickReport {
    /// Fill `pass` and `failures` from the counts.
    pub fn judge(&mut self) {
        let mut f = Vec::new();
        if self.watchers_joined < self.watchers
            || self.victims_joined < self.victims
            || self.publishers_joined < self.publishers
        {
            f.push("not every member joined".to_string());
        }
        if self.acked_msgs == 0 {
            f.push("no publish was acknowledged".into());
        }
        let done: u64 = self.actions_done.values().sum();
        let closed: u64 = self.victims_closed_expected.values().sum();
        if done == 0 {
            f.push("no kick or revoke was done".into());
        }
        if !self.action_errors.is_empty() {
            f.push(format!("admin calls failed: {:?}", self.action_errors));
        }
        if closed != done {
            f.push(format!(
                "{closed} of {done} victims closed with the expected code"
            ));
        }
        for (name, n) in [
            ("messages lost", self.lost),
            ("messages duplicated", self.duplicates),
            ("messages out of order", self.out_of_order),
            (
                "members saw another order than the rest of their room",
                self.order_disagreements,
            ),
            ("messages from another room", self.misrouted),
        ] {
            if n > 0 {
                f.push(format!("non-victim members: {n} {name}"));
            }
        }
        if !self.watchers_closed.is_empty() {
            f.push(format!(
                "non-victim members closed: {:?}",
                self.watchers_closed
            ));
        }
        self.pass = f.is_empty();
        self.failures = f;
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }

    pub fn text(&self) -> String {
        let pct = |name: &str, p: &Percentiles| {
            format!(
                "{name:<15} p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  max {:>9.3}  (n={})",
                p.p50, p.p90, p.p99, p.max, p.count
            )
        };
        let names: Vec<&str> = self.actions.iter().map(|a| a.name()).collect();
        let mut lines = vec![
            format!(
                "kick {}: {} rooms × ({} members + {} victims) over {} node(s), {} publishers, \
                 {} msg/s for {} s, an action every {} s ({})",
                if self.pass { "PASS" } else { "FAIL" },
                self.rooms,
                self.watchers_per_room,
                self.victims_per_room,
                self.urls.len(),
                self.publishers,
                self.rate_msgs_per_s,
                self.duration_s,
                self.kick_every_s,
                names.join(","),
            ),
            format!(
                "messages        planned {}  sent {}  acknowledged {}  publish errors {:?}",
                self.planned_msgs, self.sent_msgs, self.acked_msgs, self.publish_errors
            ),
            format!(
                "actions         done {:?}  failed {:?}  ticks skipped {}",
                self.actions_done, self.action_errors, self.ticks_skipped
            ),
            format!(
                "victims         closed as expected {:?}  wrong code {:?}  not closed {}  \
                 closed with no action pending {:?}",
                self.victims_closed_expected,
                self.victims_closed_wrong,
                self.victims_not_closed,
                self.victims_unexpected_closes
            ),
            format!(
                "                reconnects {}  failed attempts {:?}",
                self.victim_reconnects, self.victim_reconnect_failures
            ),
            format!(
                "other members   {} of {} joined; {}/{} acknowledged deliveries; lost {}  \
                 duplicated {}  out of order {}  order disagreements {}  misrouted {}  \
                 closed {:?}",
                self.watchers_joined,
                self.watchers,
                self.received_acked,
                self.expected_deliveries,
                self.lost,
                self.duplicates,
                self.out_of_order,
                self.order_disagreements,
                self.misrouted,
                self.watchers_closed
            ),
            pct("action→close ms", &self.action_to_close_ms),
            pct("latency ms", &self.latency_ms),
            pct("connect ms", &self.connect_ms),
        ];
        lines.extend(footer::error_and_cpu_lines(
            15,
            &self.connect_errors,
            &self.server_errors,
            &self.cpu,
        ));
        for f in &self.failures {
            lines.push(format!("FAIL: {f}"));
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_log_counts_loss_duplicates_order_and_rooms() {
        // Two publishers: even seqs from publisher 0, odd from 1.
        let mut log = WatcherLog::new(1, 20, 2);
        for seq in [0, 1, 2, 3, 6, 4, 4, 5] {
            log.receive(seq, 1);
        }
        log.receive(7, 0);
        assert_eq!(log.duplicates, 1);
        assert_eq!(log.out_of_order, 1, "4 after 6 from publisher 0");
        assert_eq!(log.misrouted, 1);
        // Acknowledged in room 1: 0..=6 and 8; 8 was never received.
        assert_eq!(log.score(&[0, 1, 2, 3, 4, 5, 6, 8]), (1, 0));
        assert_eq!(log.score(&[0, 1]), (0, 5));
        // Across publishers, interleaving is no disorder.
        let mut log = WatcherLog::new(0, 10, 2);
        for seq in [1, 0, 3, 2] {
            log.receive(seq, 0);
        }
        assert_eq!(log.out_of_order, 0);
    }

    #[test]
    fn watchers_of_a_room_must_agree_on_its_order() {
        let log = |room, seqs: &[u64]| {
            let mut l = WatcherLog::new(room, 10, 3);
            for &s in seqs {
                l.receive(s, room);
            }
            l
        };
        let (a, b, c) = (log(0, &[0, 1, 2]), log(0, &[0, 1, 2]), log(0, &[1, 0, 2]));
        let other = log(1, &[5, 4]);
        assert_eq!(order_disagreements(&[&a, &b, &other]), 0);
        assert_eq!(order_disagreements(&[&a, &b, &c, &other]), 1);
        // A watcher missing a message disagrees too.
        assert_eq!(order_disagreements(&[&a, &log(0, &[0, 2])]), 1);
    }

    fn passing() -> KickReport {
        let mut r = KickReport {
            watchers: 4,
            watchers_joined: 4,
            victims: 2,
            victims_joined: 2,
            publishers: 1,
            publishers_joined: 1,
            acked_msgs: 10,
            ..KickReport::default()
        };
        r.actions_done.insert(Action::Kick, 3);
        r.victims_closed_expected.insert(Action::Kick, 3);
        r
    }

    #[test]
    fn the_run_fails_when_a_non_victim_loses_anything_or_a_victim_stays() {
        let mut r = passing();
        r.judge();
        assert!(r.pass, "{:?}", r.failures);
        for spoil in [
            (|r: &mut KickReport| r.lost = 1) as fn(&mut KickReport),
            |r| r.duplicates = 1,
            |r| r.out_of_order = 1,
            |r| r.order_disagreements = 1,
            |r| r.misrouted = 1,
            |r| {
                r.watchers_closed.insert("4000".into(), 1);
            },
            |r| {
                r.victims_closed_expected.insert(Action::Kick, 2);
            },
            |r| {
                r.action_errors.insert("HTTP 400".into(), 1);
            },
            |r| r.actions_done.clear(),
            |r| r.watchers_joined = 3,
            |r| r.acked_msgs = 0,
        ] {
            let mut r = passing();
            spoil(&mut r);
            r.judge();
            assert!(!r.pass, "{r:?}");
            assert!(!r.failures.is_empty());
            assert!(r.text().contains("FAIL"));
        }
    }

    #[test]
    fn actions_parse_and_promise_their_codes() {
        assert_eq!("kick".parse::<Action>(), Ok(Action::Kick));
        assert_eq!(
            "revoke".parse::<Action>().map(Action::expected_code),
            Ok(4403)
        );
        assert_eq!(Action::Forbid.expected_code(), 4403);
        assert_eq!(Action::Kick.expected_code(), 4000);
        assert!("ban".parse::<Action>().is_err());
    }
}
