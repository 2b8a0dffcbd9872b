//! The wall clock and time-bounded calls: a leaf every other module may use.
//!
//! Owns `now_ms` (milliseconds since the Unix epoch, the `ts` of envelopes and presence) and
//! [`within`], the one way a call is bounded by a deadline. What a timeout means (which error,
//! which metric) is left to the caller; rate-limiter clocks are `limits`'.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch, with fractions; 0 for a clock set before 1970.
pub fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `call`'s result, or `timed_out` when it takes longer than `limit` (the call is dropped).
pub async fn within<T, E>(
    limit: Duration,
    timed_out: E,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(timed_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_limit_gives_the_timeout_error() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, &str>(1)
        };
        assert_eq!(
            within(Duration::from_secs(1), "late", slow).await,
            Err("late")
        );
        let quick = async { Ok::<_, &str>(2) };
        assert_eq!(within(Duration::from_secs(1), "late", quick).await, Ok(2));
        let failing = async { Err::<u8, _>("broken") };
        assert_eq!(
            within(Duration::from_secs(1), "late", failing).await,
            Err("broken")
        );
    }

    #[test]
    fn the_clock_is_past_2020() {
        assert!(now_ms() > 1_577_836_800_000);
        assert!(now_secs_f64() > 1_577_836_800.0);
    }
}
