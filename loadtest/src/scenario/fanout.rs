//! Scenario `fanout`: S subscribers spread over the node URLs join one room; P publishers (on
//! the first URL) publish at a total rate R for D seconds on the fixed schedule, each under the
//! per-connection rate limit, with `"echo": false`.
//!
//! Owns the parameters and their translation into a traffic plan; the engine in `traffic` runs
//! it and counts.

use crate::Common;
use crate::scenario::traffic::{self, Layout, TrafficPlan, TrafficReport};
use crate::schedule::ScheduleParams;

#[derive(Clone, Debug)]
pub struct FanoutParams {
    pub subscribers: u64,
    pub schedule: ScheduleParams,
    /// Seconds to wait after the last send for deliveries still in flight.
    pub drain_s: f64,
    pub payload_bytes: usize,
    pub room: String,
    pub min_ratio: f64,
    pub max_p99_ms: f64,
}

impl Default for FanoutParams {
    fn default() -> Self {
        FanoutParams {
            subscribers: 1000,
            schedule: ScheduleParams::new(100.0, 10.0),
            drain_s: 5.0,
            payload_bytes: 100,
            room: "bench".into(),
            min_ratio: 0.999,
            max_p99_ms: 100.0,
        }
    }
}

impl FanoutParams {
    pub fn plan(&self) -> Result<TrafficPlan, String> {
        if self.subscribers == 0 {
            return Err("need at least one subscriber".into());
        }
        crate::payload::check_room(&self.room)?;
        let schedule = self.schedule.schedule()?;
        Ok(TrafficPlan {
            scenario: "fanout",
            layout: Layout::Fanout {
                subscribers: self.subscribers,
            },
            schedule,
            room_prefix: self.room.clone(),
            duration_s: self.schedule.duration_s,
            drain_s: self.drain_s.max(0.0),
            payload_bytes: self.payload_bytes,
            min_ratio: self.min_ratio,
            max_p99_ms: self.max_p99_ms,
            publishers_on_first_url: true,
        })
    }
}

pub async fn run(common: &Common, params: &FanoutParams) -> Result<TrafficReport, String> {
    traffic::run(common, params.plan()?).await
}
