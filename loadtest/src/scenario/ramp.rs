//! Scenario `ramp`: `fanout` at rising rates, each step with fresh connections; a failing step
//! is tried once more, and the ramp ends at a step that fails twice. Reports the highest rate
//! whose step passed (every subscriber joined, every message sent on schedule, delivery ratio
//! ≥ the minimum, p99 under the bound).
//!
//! Owns the step sequence and the verdict; each step is an ordinary fanout run.

use std::time::Duration;

use serde::Serialize;

use crate::Common;
use crate::scenario::fanout::{self, FanoutParams};
use crate::scenario::traffic::TrafficReport;

#[derive(Clone, Debug)]
pub struct RampParams {
    /// The fanout run of every step; its `rate` is replaced by each step's.
    pub fanout: FanoutParams,
    /// Messages per second of each step, rising.
    pub rates: Vec<f64>,
    /// Try a failing step once more before ending the ramp.
    pub retry: bool,
    /// Pause between steps, so the server finishes closing the last step's connections.
    pub pause: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub rate_msgs_per_s: f64,
    pub target_deliveries_per_s: f64,
    pub attempt: u32,
    pub pass: bool,
    /// The step's fanout report, or why it could not run.
    pub result: Result<TrafficReport, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RampReport {
    pub scenario: &'static str,
    pub urls: Vec<String>,
    pub subscribers: u64,
    pub rates: Vec<f64>,
    pub min_ratio: f64,
    pub max_p99_ms: f64,
    pub highest_passing_rate: Option<f64>,
    pub highest_passing_deliveries_per_s: Option<f64>,
    pub first_failing_rate: Option<f64>,
    pub steps: Vec<Step>,
    pub pass: bool,
}

/// Rates `start, start × factor, ...` up to `max` (inclusive, within rounding), at most 64.
pub fn geometric_rates(start: f64, factor: f64, max: f64) -> Vec<f64> {
    let mut rates = Vec::new();
    let mut r = start;
    while r.is_finite() && r > 0.0 && r <= max * (1.0 + 1e-9) && rates.len() < 64 {
        rates.push((r * 1000.0).round() / 1000.0);
        if factor <= 1.0 {
            break;
        }
        r *= factor;
    }
    rates
}

pub async fn run(common: &Common, params: &RampParams) -> Result<RampReport, String> {
    if params.rates.is_empty() {
        return Err("the ramp has no steps".into());
    }
    let mut steps = Vec::new();
    let mut highest: Option<(f64, f64)> = None;
    let mut first_failing = None;
    'ramp: for &rate in &params.rates {
        let attempts = if params.retry { 2 } else { 1 };
        for attempt in 1..=attempts {
            let mut step_params = params.fanout.clone();
            step_params.schedule.rate = rate;
            crate::note(
                common,
                &format!(
                    "ramp: {rate} msg/s × {} subscribers (attempt {attempt})",
                    params.fanout.subscribers
                ),
            );
            let result = fanout::run(common, &step_params).await;
            let pass = result.as_ref().is_ok_and(|r| r.pass);
            let target = rate * params.fanout.subscribers as f64;
            if pass {
                let delivered = result.as_ref().map_or(0.0, |r| r.deliveries_per_s);
                highest = Some((rate, delivered));
            }
            if let Ok(r) = &result {
                crate::note(common, &crate::report::traffic_line(r));
            }
            steps.push(Step {
                rate_msgs_per_s: rate,
                target_deliveries_per_s: target,
                attempt,
                pass,
                result,
            });
            tokio::time::sleep(params.pause).await;
            if pass {
                continue 'ramp;
            }
        }
        first_failing = Some(rate);
        break;
    }
    Ok(RampReport {
        scenario: "ramp",
        urls: common.urls.clone(),
        subscribers: params.fanout.subscribers,
        rates: params.rates.clone(),
        min_ratio: params.fanout.min_ratio,
        max_p99_ms: params.fanout.max_p99_ms,
        highest_passing_rate: highest.map(|h| h.0),
        highest_passing_deliveries_per_s: highest.map(|h| h.1),
        first_failing_rate: first_failing,
        pass: highest.is_some(),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_steps() {
        assert_eq!(
            geometric_rates(10.0, 2.0, 80.0),
            vec![10.0, 20.0, 40.0, 80.0]
        );
        assert_eq!(geometric_rates(10.0, 1.0, 80.0), vec![10.0]);
        assert!(geometric_rates(0.0, 2.0, 80.0).is_empty());
        assert_eq!(geometric_rates(1.0, 10.0, 1e300).len(), 64);
    }
}
