//! The publish schedule: which message is due when, and who sends it.
//!
//! Owns the arithmetic of a fixed-rate plan (message `k` is due at `t0 + k / rate`, whatever
//! happened to the messages before it, so a slow server cannot hide its queueing by slowing the
//! publishers down) and how messages map to publishers and rooms. Pure: no clock, no I/O; the
//! scenarios turn offsets into deadlines.

use std::time::Duration;

/// The publishing part of a scenario's parameters (`fanout`, `chaos`, `kick`): what
/// [`Schedule::new`] is given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleParams {
    /// 0: as few as keep each under `max_rate_per_pub`.
    pub publishers: u64,
    /// Upper bound of one publisher's rate (roomcast allows 50 msg/s per connection).
    pub max_rate_per_pub: f64,
    /// Messages per second, all publishers together.
    pub rate: f64,
    pub duration_s: f64,
}

impl ScheduleParams {
    /// `rate` msg/s for `duration_s` seconds from as few publishers as keep each at or under
    /// 20 msg/s.
    pub fn new(rate: f64, duration_s: f64) -> ScheduleParams {
        ScheduleParams {
            publishers: 0,
            max_rate_per_pub: 20.0,
            rate,
            duration_s,
        }
    }

    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::new(
            self.rate,
            self.duration_s,
            self.publishers,
            self.max_rate_per_pub,
        )
    }
}

/// A fixed-rate plan of `planned` messages spread over `publishers` connections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Messages per second, all publishers together.
    pub rate: f64,
    /// Messages in the plan: `round(rate × duration)`, at least 1.
    pub planned: u64,
    /// Publishing connections; message `k` is sent by publisher `k % publishers`.
    pub publishers: u64,
}

impl Schedule {
    /// A plan for `duration_s` seconds at `rate` messages/s. `publishers` = 0 picks the fewest
    /// connections that keep each one at or under `max_rate_per_pub` (roomcast allows 50 msg/s
    /// per connection); an explicit count must respect that bound too.
    pub fn new(
        rate: f64,
        duration_s: f64,
        publishers: u64,
        max_rate_per_pub: f64,
    ) -> Result<Schedule, String> {
        // Written so that NaN fails too.
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("rate must be positive, got {rate}"));
        }
        if !(duration_s.is_finite() && duration_s > 0.0) {
            return Err(format!("duration must be positive, got {duration_s}"));
        }
        if !(max_rate_per_pub.is_finite() && max_rate_per_pub > 0.0) {
            return Err(format!(
                "max rate per publisher must be positive, got {max_rate_per_pub}"
            ));
        }
        let publishers = if publishers == 0 {
            (rate / max_rate_per_pub).ceil().max(1.0) as u64
        } else {
            publishers
        };
        if rate / publishers as f64 > max_rate_per_pub * (1.0 + 1e-9) {
            return Err(format!(
                "{publishers} publishers at {rate} msg/s is {:.1} msg/s each, above the \
                 per-connection bound of {max_rate_per_pub} msg/s: add publishers",
                rate / publishers as f64
            ));
        }
        let planned = (rate * duration_s).round().max(1.0) as u64;
        Ok(Schedule {
            rate,
            planned,
            publishers,
        })
    }

    /// When message `k` is due, after the start of the schedule.
    pub fn offset(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// The publisher that sends message `k`.
    pub fn publisher_of(&self, k: u64) -> u64 {
        k % self.publishers
    }

    /// The messages publisher `j` sends, in order.
    pub fn messages_of(&self, j: u64) -> impl Iterator<Item = u64> + use<> {
        let step = self.publishers.max(1) as usize;
        (j..self.planned).step_by(step)
    }

    /// The rate each publisher sends at.
    pub fn per_publisher_rate(&self) -> f64 {
        self.rate / self.publishers as f64
    }
}

/// How the chat-shaped `rooms` scenario lays members into rooms: member `i` is in room
/// `i / members`, and sends message `k` when `k % (rooms × members) == i`, so every member
/// publishes at the same rate and every room gets the same share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLayout {
    pub rooms: u64,
    pub members: u64,
}

impl RoomLayout {
    pub fn total_members(&self) -> u64 {
        self.rooms * self.members
    }

    pub fn room_of_member(&self, member: u64) -> u64 {
        member / self.members.max(1)
    }

    /// The room message `k` is published to.
    pub fn room_of_message(&self, k: u64) -> u64 {
        self.room_of_member(k % self.total_members().max(1))
    }

    /// Index of message `k` among the messages of its room (0, 1, 2, ... with no gaps), so a
    /// receiver's bitset needs only one bit per message of its own room.
    pub fn index_in_room(&self, k: u64) -> u64 {
        let total = self.total_members().max(1);
        (k / total) * self.members + (k % total) % self.members.max(1)
    }

    /// Messages per room in a plan of `planned` messages, rounded up (the bitset size).
    pub fn per_room_capacity(&self, planned: u64) -> u64 {
        planned.div_ceil(self.total_members().max(1)) * self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_offsets() {
        let s = Schedule::new(100.0, 1.0, 0, 20.0).expect("valid");
        assert_eq!(s.planned, 100);
        assert_eq!(s.publishers, 5);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(50), Duration::from_millis(500));
        assert_eq!(s.offset(99), Duration::from_millis(990));
        assert!((s.per_publisher_rate() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn publishers_split_the_plan_without_gaps_or_overlap() {
        let s = Schedule::new(70.0, 2.0, 0, 20.0).expect("valid");
        assert_eq!(s.publishers, 4);
        let mut all: Vec<u64> = (0..s.publishers).flat_map(|j| s.messages_of(j)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..s.planned).collect::<Vec<_>>());
        for j in 0..s.publishers {
            assert!(s.messages_of(j).all(|k| s.publisher_of(k) == j));
        }
    }

    #[test]
    fn rejects_bad_plans() {
        assert!(Schedule::new(0.0, 1.0, 0, 20.0).is_err());
        assert!(Schedule::new(f64::NAN, 1.0, 0, 20.0).is_err());
        assert!(Schedule::new(10.0, -1.0, 0, 20.0).is_err());
        // 2 publishers cannot carry 100 msg/s under a 20 msg/s bound.
        assert!(Schedule::new(100.0, 1.0, 2, 20.0).is_err());
        assert!(Schedule::new(100.0, 1.0, 5, 20.0).is_ok());
        // A tiny plan still sends one message.
        assert_eq!(Schedule::new(0.1, 1.0, 0, 20.0).expect("valid").planned, 1);
    }

    #[test]
    fn room_layout_maps_messages_densely() {
        let l = RoomLayout {
            rooms: 3,
            members: 4,
        };
        assert_eq!(l.room_of_member(0), 0);
        assert_eq!(l.room_of_member(11), 2);
        let planned = 50;
        let cap = l.per_room_capacity(planned);
        for room in 0..l.rooms {
            let mut idx: Vec<u64> = (0..planned)
                .filter(|&k| l.room_of_message(k) == room)
                .map(|k| l.index_in_room(k))
                .collect();
            let n = idx.len() as u64;
            idx.sort_unstable();
            idx.dedup();
            assert_eq!(idx.len() as u64, n, "no two messages share an index");
            assert!(idx.iter().all(|&i| i < cap), "indices fit the bitset");
        }
        // Sender of k is member k % 12, in the room of that member.
        assert_eq!(l.room_of_message(5), 1);
        assert_eq!(l.room_of_message(12 + 9), 2);
    }
}
