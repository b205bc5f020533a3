//! Fixed-size log-linear latency histogram (nanoseconds, under 1% bucket error): recording is
//! one index computation and an increment, so the receive path stays cheap at millions of msgs.

/// Linear sub-buckets per power of two is 2^(SUB_BITS-1).
const SUB_BITS: u32 = 7;
const HALF: usize = 1 << (SUB_BITS - 1);
const BUCKETS: usize = (64 - SUB_BITS as usize + 2) * HALF;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < (1 << SUB_BITS) {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let exp = msb - SUB_BITS + 1;
    exp as usize * HALF + (v >> exp) as usize
}

/// Midpoint of the values mapped to bucket `i`.
fn value(i: usize) -> u64 {
    if i < (1 << SUB_BITS) {
        return i as u64;
    }
    let exp = (i / HALF - 1) as u32;
    let mantissa = (i - exp as usize * HALF) as u64;
    let lo = mantissa << exp;
    lo + ((1u64 << exp) - 1) / 2
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Value at quantile `q` in [0, 1] (nearest rank); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_monotonic_and_value_is_close() {
        let mut last = 0;
        let mut v = 0u64;
        while v < 1 << 40 {
            let i = index(v);
            assert!(i >= last, "index not monotonic at {v}");
            assert!(i < BUCKETS);
            last = i;
            let back = value(i);
            let err = back.abs_diff(v) as f64 / (v.max(1) as f64);
            assert!(err < 0.01, "value {v} -> bucket {i} -> {back}");
            v = v + 1 + v / 97;
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.01, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.01, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
