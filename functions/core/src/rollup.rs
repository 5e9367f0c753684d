//! Mergeable one-minute partial aggregates: any split of the samples into batches merges to the same answer.

/// Length of a `rollup_1m` window in milliseconds.
pub const MINUTE_MS: i64 = 60_000;

/// The start of the one-minute window a timestamp falls in.
pub fn minute_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// Partial aggregate of one series over one window: merges exactly with any other partial of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partial {
    /// Number of samples.
    pub count: i64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Value of the earliest sample.
    pub first: f64,
    /// Timestamp of the earliest sample (ms).
    pub first_ts: i64,
    /// Value of the latest sample.
    pub last: f64,
    /// Timestamp of the latest sample (ms).
    pub last_ts: i64,
}

impl Partial {
    /// The partial of a single sample.
    pub fn of(ts_ms: i64, value: f64) -> Self {
        Self {
            count: 1,
            sum: value,
            min: value,
            max: value,
            first: value,
            first_ts: ts_ms,
            last: value,
            last_ts: ts_ms,
        }
    }

    /// Folds another partial of the same series and window into this one.
    ///
    /// Ties on `first_ts`/`last_ts` keep the smaller/larger value so the result does not depend
    /// on merge order.
    pub fn merge(&mut self, o: &Partial) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if (o.first_ts, o.first) < (self.first_ts, self.first) {
            self.first_ts = o.first_ts;
            self.first = o.first;
        }
        if (o.last_ts, o.last) > (self.last_ts, self.last) {
            self.last_ts = o.last_ts;
            self.last = o.last;
        }
    }

    /// Mean of the samples.
    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_floors_including_before_epoch() {
        assert_eq!(minute_of(125_000), 120_000);
        assert_eq!(minute_of(-1), -60_000);
    }

    #[test]
    fn merge_is_order_independent() {
        let samples = [(1_000, 5.0), (3_000, 1.0), (2_000, 9.0), (3_000, 2.0)];
        let fold = |order: &[usize]| {
            let mut p = Partial::of(samples[order[0]].0, samples[order[0]].1);
            for &i in &order[1..] {
                p.merge(&Partial::of(samples[i].0, samples[i].1));
            }
            p
        };
        let a = fold(&[0, 1, 2, 3]);
        let b = fold(&[3, 2, 1, 0]);
        assert_eq!(a, b);
        assert_eq!((a.count, a.sum, a.min, a.max), (4, 17.0, 1.0, 9.0));
        assert_eq!(
            (a.first_ts, a.first, a.last_ts, a.last),
            (1_000, 5.0, 3_000, 2.0)
        );
        assert_eq!(a.avg(), 4.25);
    }
}
