//! Per-connection message rate limiting (governor), returning a decision rather than an error.
//!
//! The connection decides what each decision costs on the wire (`rate_limited`, close 1008).
//! Per-address handshake limiting lives in the listener, which owns the keyed limiter.

use std::num::NonZeroU32;

pub use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Drop this message and tell the client.
    Limited,
    /// Too many limited messages in a row: close the connection.
    Exceeded,
}

pub struct MessageRate {
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
    max_strikes: u32,
}

impl MessageRate {
    /// `clock` is shared by the node: a fresh one per connection calibrates itself with
    /// CPUID, which traps to the hypervisor in a VM and showed at the top of the connect path.
    pub fn new(limits: &LimitsConfig, clock: &DefaultClock) -> Self {
        let per_sec = NonZeroU32::new(limits.rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.rate_burst).unwrap_or(NonZeroU32::MIN);
        MessageRate {
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(per_sec).allow_burst(burst),
                clock.clone(),
            ),
            strikes: 0,
            max_strikes: limits.rate_limit_strikes,
        }
    }

    pub fn check(&mut self) -> RateDecision {
        if self.limiter.check().is_ok() {
            self.strikes = 0;
            return RateDecision::Allowed;
        }
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes > self.max_strikes {
            RateDecision::Exceeded
        } else {
            RateDecision::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_then_exceeded() {
        let limits = LimitsConfig {
            rate_per_sec: 1,
            rate_burst: 3,
            rate_limit_strikes: 2,
            ..LimitsConfig::default()
        };
        let mut rate = MessageRate::new(&limits, &DefaultClock::default());
        for _ in 0..3 {
            assert_eq!(rate.check(), RateDecision::Allowed);
        }
        assert_eq!(rate.check(), RateDecision::Limited);
        assert_eq!(rate.check(), RateDecision::Limited);
        assert_eq!(rate.check(), RateDecision::Exceeded);
    }
}
