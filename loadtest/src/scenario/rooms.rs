//! Scenario `rooms`: the chat shape. Many rooms with a few members each; every member both
//! publishes (with `"echo": false`) and receives, all at one total rate R on the fixed schedule.
//! A message that reaches a member of another room is counted as misrouted.
//!
//! Owns the parameters and their translation into a traffic plan; the engine in `traffic` runs
//! it and counts.

use crate::Common;
use crate::scenario::traffic::{self, Layout, TrafficPlan, TrafficReport};
use crate::schedule::{RoomLayout, Schedule};

#[derive(Clone, Debug)]
pub struct RoomsParams {
    pub rooms: u64,
    /// Members per room (at least 2, or nobody receives anything).
    pub members: u64,
    /// Messages per second, all members together.
    pub rate: f64,
    pub max_rate_per_member: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub payload_bytes: usize,
    /// Rooms are named `{prefix}-0`, `{prefix}-1`, ...
    pub room_prefix: String,
    pub min_ratio: f64,
    pub max_p99_ms: f64,
}

impl Default for RoomsParams {
    fn default() -> Self {
        RoomsParams {
            rooms: 200,
            members: 5,
            rate: 500.0,
            max_rate_per_member: 20.0,
            duration_s: 10.0,
            drain_s: 5.0,
            payload_bytes: 100,
            room_prefix: "chat".into(),
            min_ratio: 0.999,
            max_p99_ms: 100.0,
        }
    }
}

impl RoomsParams {
    pub fn plan(&self) -> Result<TrafficPlan, String> {
        if self.rooms == 0 || self.members < 2 {
            return Err("need at least one room of at least two members".into());
        }
        crate::payload::check_room(&format!("{}-{}", self.room_prefix, self.rooms))?;
        let layout = RoomLayout {
            rooms: self.rooms,
            members: self.members,
        };
        let schedule = Schedule::new(
            self.rate,
            self.duration_s,
            layout.total_members(),
            self.max_rate_per_member,
        )?;
        Ok(TrafficPlan {
            scenario: "rooms",
            layout: Layout::Rooms(layout),
            schedule,
            room_prefix: self.room_prefix.clone(),
            duration_s: self.duration_s,
            drain_s: self.drain_s.max(0.0),
            payload_bytes: self.payload_bytes,
            min_ratio: self.min_ratio,
            max_p99_ms: self.max_p99_ms,
            publishers_on_first_url: false,
        })
    }
}

pub async fn run(common: &Common, params: &RoomsParams) -> Result<TrafficReport, String> {
    traffic::run(common, params.plan()?).await
}
