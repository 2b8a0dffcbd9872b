//! Per-connection message rate limiting (governor), returning a decision rather than an error.
//!
//! A refused message only costs itself; a connection is closed for its rate only once it has
//! stayed over its limit for `limits.rate_limit_window_ms` (see [`Overrun`]), so one burst
//! never closes it and a steady flood always does. The connection decides what each decision
//! costs on the wire (`rate_limited`, close 1008). Per-address handshake limiting lives in the
//! listener, which owns the keyed limiter.

use std::num::NonZeroU32;
use std::sync::OnceLock;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::LimitsConfig;

const NANOS_PER_MS: u64 = 1_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Drop this message and tell the client.
    Limited,
    /// Over the limit for the whole window: close the connection.
    Exceeded,
}

/// The clock of every connection's limiter: the process's one calibrated quanta clock, read
/// through a type with no state, so that each connection keeps no clock of its own.
///
/// governor's default clock carries its calibration in every limiter (40 bytes per
/// connection), and a fresh one per connection calibrates itself with CPUID, which traps to
/// the hypervisor in a VM. Nanoseconds from the first reading in the process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessClock;

impl Clock for ProcessClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        static START: OnceLock<quanta::Instant> = OnceLock::new();
        let start = *START.get_or_init(quanta::Instant::now);
        let elapsed = quanta::Instant::now().saturating_duration_since(start);
        Nanos::from(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, ProcessClock, NoOpMiddleware<Nanos>>;

pub struct MessageRate {
    limiter: Limiter,
    overrun: Overrun<Nanos>,
}

impl MessageRate {
    pub fn new(limits: &LimitsConfig) -> Self {
        let per_sec = NonZeroU32::new(limits.rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.rate_burst).unwrap_or(NonZeroU32::MIN);
        MessageRate {
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(per_sec).allow_burst(burst),
                ProcessClock,
            ),
            overrun: Overrun::new(limits, ProcessClock.now()),
        }
    }

    pub fn check(&mut self) -> RateDecision {
        if self.limiter.check().is_ok() {
            return RateDecision::Allowed;
        }
        // The clock is read only on a refusal: the allowed path stays one limiter check.
        self.overrun.refused(self.limiter.clock().now())
    }
}

/// One run of refusals, and when it is long enough to close the connection.
///
/// Two refusals closer together than the limiter takes to refill its whole burst prove the
/// client used its full rate between them and still wanted more: it was over its limit all that
/// time. So a run continues while each refusal follows the previous one within that refill
/// time, and a longer pause starts a new run. A run that has lasted `rate_limit_window_ms` and
/// counted `rate_limit_strikes` refusals closes the connection. An accepted message does not
/// end a run: a flood is accepted at exactly the limit, between its refusals.
#[derive(Debug)]
struct Overrun<I> {
    /// How long a run must last.
    window: Nanos,
    /// The longest pause between two refusals of one run: the burst's refill time.
    refill: Nanos,
    strikes: u32,
    since: I,
    last: I,
    /// Refusals in the current run; 0: no run yet.
    refusals: u32,
}

impl<I: Reference> Overrun<I> {
    fn new(limits: &LimitsConfig, now: I) -> Self {
        let per_sec = u64::from(limits.rate_per_sec.max(1));
        let burst = u64::from(limits.rate_burst.max(1));
        Overrun {
            window: Nanos::from(limits.rate_limit_window_ms.saturating_mul(NANOS_PER_MS)),
            refill: Nanos::from(burst.saturating_mul(NANOS_PER_SEC) / per_sec),
            strikes: limits.rate_limit_strikes,
            since: now,
            last: now,
            refusals: 0,
        }
    }

    fn refused(&mut self, now: I) -> RateDecision {
        if self.refusals == 0 || now.duration_since(self.last) > self.refill {
            self.since = now;
            self.refusals = 0;
        }
        self.last = now;
        self.refusals = self.refusals.saturating_add(1);
        if now.duration_since(self.since) >= self.window && self.refusals >= self.strikes {
            RateDecision::Exceeded
        } else {
            RateDecision::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = NANOS_PER_MS;

    /// 1 message/s, burst 3 (refilled in 3 s), a 10 s window, 4 strikes.
    fn overrun() -> Overrun<Nanos> {
        let limits = LimitsConfig {
            rate_per_sec: 1,
            rate_burst: 3,
            rate_limit_strikes: 4,
            rate_limit_window_ms: 10_000,
            ..LimitsConfig::default()
        };
        Overrun::new(&limits, Nanos::from(0))
    }

    fn at(ms: u64) -> Nanos {
        Nanos::from(ms * MS)
    }

    #[test]
    fn burst_then_limited() {
        let limits = LimitsConfig {
            rate_per_sec: 1,
            rate_burst: 3,
            ..LimitsConfig::default()
        };
        let mut rate = MessageRate::new(&limits);
        for _ in 0..3 {
            assert_eq!(rate.check(), RateDecision::Allowed);
        }
        for _ in 0..1_000 {
            assert_eq!(
                rate.check(),
                RateDecision::Limited,
                "one burst never closes"
            );
        }
    }

    #[test]
    fn a_run_as_long_as_the_window_with_enough_refusals_is_exceeded() {
        let mut overrun = overrun();
        for ms in (0..10_000).step_by(2_000) {
            assert_eq!(overrun.refused(at(ms)), RateDecision::Limited, "{ms}");
        }
        assert_eq!(overrun.refused(at(10_000)), RateDecision::Exceeded);
    }

    #[test]
    fn one_burst_of_refusals_is_only_limited() {
        let mut overrun = overrun();
        for n in 0..10_000 {
            assert_eq!(overrun.refused(Nanos::from(n)), RateDecision::Limited);
        }
    }

    #[test]
    fn a_pause_longer_than_the_refill_starts_a_new_run() {
        let mut overrun = overrun();
        // Bursts 3.5 s apart: the bucket could have refilled between them.
        for ms in (0..30_000).step_by(3_500) {
            for n in 0..10 {
                assert_eq!(overrun.refused(at(ms + n)), RateDecision::Limited, "{ms}");
            }
        }
    }

    #[test]
    fn a_long_run_with_too_few_refusals_is_only_limited() {
        let mut overrun = Overrun {
            strikes: 10,
            ..overrun()
        };
        // A refusal every 3 s (the refill time): one run, past the window from the 5th.
        for ms in (0..27_000).step_by(3_000) {
            assert_eq!(overrun.refused(at(ms)), RateDecision::Limited, "{ms}");
        }
        assert_eq!(overrun.refused(at(27_000)), RateDecision::Exceeded);
    }
}
