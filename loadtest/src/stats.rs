//! Counting and timing: which deliveries a receiver has seen, latency histograms, per-second
//! series, and percentile summaries.
//!
//! Owns the numbers; knows nothing of sockets or of how a scenario is laid out. Latencies are
//! recorded in microseconds into HDR histograms (1 µs to 60 s, 3 significant digits) and
//! reported in milliseconds.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram records; longer ones are clamped to it.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // Valid bounds (low 1, high ≥ 2 × low, 0..=5 digits): this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// A coarser histogram for one second of a time series (2 significant digits, ~1 % error).
pub fn coarse_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).unwrap_or_else(|_| unreachable!())
}

/// Record `us` (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// The set of messages one receiver has seen, one bit per message index.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    bits: Vec<u64>,
    capacity: u64,
}

/// What [`Seen::insert`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    New,
    Duplicate,
    /// An index beyond the plan: not a message of this run's schedule.
    OutOfRange,
}

impl Seen {
    pub fn new(capacity: u64) -> Seen {
        Seen {
            bits: vec![0; capacity.div_ceil(64) as usize],
            capacity,
        }
    }

    pub fn insert(&mut self, index: u64) -> Insert {
        if index >= self.capacity {
            return Insert::OutOfRange;
        }
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        match self.bits.get_mut(word) {
            Some(w) if *w & bit != 0 => Insert::Duplicate,
            Some(w) => {
                *w |= bit;
                Insert::New
            }
            None => Insert::OutOfRange,
        }
    }

    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// p50 / p90 / p99 / p99.9 / max / mean of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| round3(us as f64 / 1000.0);
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: round3(h.mean() / 1000.0),
        }
    }
}

/// One second of a run, for the charts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Seconds after the start of publishing (start of this bucket).
    pub t_s: f64,
    pub sent: u64,
    pub delivered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Deliveries and their latency per second of receive time, bounded to `buckets` seconds (a
/// delivery later than that lands in the last bucket).
#[derive(Clone, Debug)]
pub struct Series {
    buckets: Vec<(u64, Histogram<u64>)>,
}

impl Series {
    pub fn new(buckets: usize) -> Series {
        Series {
            buckets: (0..buckets.max(1))
                .map(|_| (0, coarse_histogram()))
                .collect(),
        }
    }

    /// A delivery received `at_us` after the start of publishing, `latency_us` after its send.
    pub fn record(&mut self, at_us: u64, latency_us: u64) {
        let last = self.buckets.len() - 1;
        let i = ((at_us / 1_000_000) as usize).min(last);
        let (count, h) = &mut self.buckets[i];
        *count += 1;
        record(h, latency_us);
    }

    pub fn merge(&mut self, other: &Series) {
        for ((c, h), (oc, oh)) in self.buckets.iter_mut().zip(&other.buckets) {
            *c += oc;
            // Same bounds on both sides: adding cannot fail.
            let _ = h.add(oh);
        }
    }

    /// The points, with `sent[i]` messages sent in second `i`; trailing empty seconds are cut.
    pub fn points(&self, sent: &[u64]) -> Vec<SeriesPoint> {
        let mut points: Vec<SeriesPoint> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, (count, h))| {
                let q = |q: f64| {
                    if h.is_empty() {
                        0.0
                    } else {
                        round3(h.value_at_quantile(q) as f64 / 1000.0)
                    }
                };
                SeriesPoint {
                    t_s: i as f64,
                    sent: sent.get(i).copied().unwrap_or(0),
                    delivered: *count,
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                    max_ms: if h.is_empty() {
                        0.0
                    } else {
                        round3(h.max() as f64 / 1000.0)
                    },
                }
            })
            .collect();
        while points
            .last()
            .is_some_and(|p| p.delivered == 0 && p.sent == 0)
        {
            points.pop();
        }
        points
    }
}

/// The value at quantile `q` of a sorted slice (0 when empty).
pub fn quantile_sorted(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `received / expected`, 0 when nothing was expected, rounded to 6 digits.
pub fn ratio(received: u64, expected: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        (received as f64 / expected as f64 * 1e6).round() / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_new_duplicate_and_out_of_range() {
        let mut s = Seen::new(130);
        assert_eq!(s.insert(0), Insert::New);
        assert_eq!(s.insert(129), Insert::New);
        assert_eq!(s.insert(64), Insert::New);
        assert_eq!(s.insert(64), Insert::Duplicate);
        assert_eq!(s.insert(130), Insert::OutOfRange);
        assert_eq!(s.count(), 3);
        assert_eq!(Seen::new(0).insert(0), Insert::OutOfRange);
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, us * 1000); // 1..1000 ms
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
        // Out-of-range values are clamped, not lost.
        let mut h = histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn series_buckets_by_second_and_merges() {
        let mut a = Series::new(3);
        a.record(100, 2_000);
        a.record(1_500_000, 4_000);
        let mut b = Series::new(3);
        b.record(1_600_000, 8_000);
        b.record(99_000_000, 1_000); // past the end: last bucket
        a.merge(&b);
        let points = a.points(&[5, 5]);
        assert_eq!(points.len(), 3);
        assert_eq!(
            (points[0].sent, points[0].delivered, points[1].delivered),
            (5, 1, 2)
        );
        assert!((points[1].max_ms - 8.0).abs() < 0.1);
        assert_eq!(points[2].delivered, 1);
        let empty = Series::new(4).points(&[]);
        assert!(empty.is_empty());
    }

    #[test]
    fn quantiles_and_ratio() {
        assert_eq!(quantile_sorted(&[], 0.5), 0);
        assert_eq!(quantile_sorted(&[1, 2, 3, 4], 0.5), 2);
        assert_eq!(quantile_sorted(&[1, 2, 3, 4], 1.0), 4);
        assert_eq!(ratio(1, 0), 0.0);
        assert_eq!(ratio(999, 1000), 0.999);
    }
}
