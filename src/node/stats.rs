//! The node's stats for the cluster view: every `admin.stats_interval_ms` the node reads the
//! counters that metrics and hub keep anyway (publishes, dispatched publications, deliveries,
//! connections, rooms), turns their differences into rates, and announces them with its
//! biggest rooms through the broker's node registry; it withdraws them when it stops.
//!
//! Nothing here runs per delivery. Keeping and expiring announcements is the broker's; the
//! routes that read them are `admin`'s.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Node, now_ms};
use crate::protocol::{NodeRooms, NodeStats};

/// An announcement counts for this many stats intervals: a node that misses two is still
/// listed, one silent for three is gone.
pub const STATS_LIVE_INTERVALS: u64 = 3;

/// The counters the rates come from, read at one moment.
struct Sample {
    at: Instant,
    published: u64,
    dispatched: u64,
    delivered: u64,
}

/// Biggest room first; equal sizes in name order, so an announcement is stable.
fn biggest_first(a: &(Arc<str>, usize), b: &(Arc<str>, usize)) -> Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

impl Node {
    fn sample(&self) -> Sample {
        Sample {
            at: Instant::now(),
            // Every publish of this node goes through `Node::publish`, which times it.
            published: self.metrics.broker_publish_latency.get_sample_count(),
            // Every publication handed to the hub is timed once in `deliver`.
            dispatched: self.metrics.delivery_latency.get_sample_count(),
            delivered: self.metrics.messages_delivered.get(),
        }
    }

    fn stats_between(&self, before: &Sample, now: &Sample) -> NodeStats {
        let seconds = now.at.duration_since(before.at).as_secs_f64();
        let rate = |from: u64, to: u64| {
            if seconds <= 0.0 {
                return 0.0;
            }
            // Two decimals are plenty for a rate and keep the JSON short.
            (to.saturating_sub(from) as f64 / seconds * 100.0).round() / 100.0
        };
        NodeStats {
            id: self.instance.clone(),
            node: self.node_id.clone(),
            connections: self.hub.connection_count() as u64,
            users: self.hub.user_count() as u64,
            rooms: self.hub.room_count() as u64,
            messages_in_per_s: rate(before.published, now.published),
            messages_out_per_s: rate(before.dispatched, now.dispatched),
            deliveries_per_s: rate(before.delivered, now.delivered),
            started_at: self.started_at,
            last_seen: now_ms(),
            live_ms: self.config.admin.stats_interval_ms * STATS_LIVE_INTERVALS,
        }
    }

    /// This node's rooms with their member counts: the `admin.stats_max_rooms` biggest.
    fn local_rooms(&self) -> NodeRooms {
        let mut sizes = self.hub.room_sizes();
        let total = sizes.len() as u64;
        let max = self.config.admin.stats_max_rooms;
        if sizes.len() > max {
            sizes.select_nth_unstable_by(max, biggest_first);
            sizes.truncate(max);
        }
        sizes.sort_unstable_by(biggest_first);
        NodeRooms {
            id: self.instance.clone(),
            total,
            rooms: sizes
                .into_iter()
                .map(|(room, members)| (room.to_string(), members as u64))
                .collect(),
        }
    }

    /// Announce this node's stats every `admin.stats_interval_ms` (the first at once) until
    /// `stop` fires, then withdraw them.
    pub async fn run_stats(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks =
            tokio::time::interval(Duration::from_millis(self.config.admin.stats_interval_ms));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last = self.sample();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let now = self.sample();
            let stats = self.stats_between(&last, &now);
            last = now;
            let announcing = self.broker.announce(stats, self.local_rooms());
            if let Err(err) = self.bounded(announcing).await {
                // The next interval tries again; the registry meanwhile lists us for a while.
                debug!(%err, "cannot announce the node's stats");
            }
        }
        let withdrawing = self.broker.withdraw(self.instance.clone());
        if let Err(err) = self.bounded(withdrawing).await {
            debug!(%err, "cannot withdraw the node's stats; they expire on their own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_biggest_rooms_come_first_then_by_name() {
        let mut rooms: Vec<(Arc<str>, usize)> =
            vec![("b".into(), 1), ("c".into(), 5), ("a".into(), 1)];
        rooms.sort_unstable_by(biggest_first);
        let names: Vec<&str> = rooms.iter().map(|(r, _)| r.as_ref()).collect();
        assert_eq!(names, ["c", "a", "b"]);
    }
}
