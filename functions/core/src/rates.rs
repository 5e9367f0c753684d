//! Per-second rates of counters between consecutive samples of a series, never negative (a counter
//! reset yields no rate), as CB-Dragonfly's `non_negative_derivative` did.
//!
//! The previous sample of each series may lie in an earlier batch: it is carried in a [`Tail`]
//! that the lake ledger keeps per partition, so rates do not depend on batch boundaries.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use damselfly_schemas::catalog::{self, Kind};
use serde::{Deserialize, Serialize};

/// Suffix of the derived rate series in `rollup_1m`: `bytes_in` gives `bytes_in_rate`.
pub const RATE_SUFFIX: &str = "_rate";

/// Identity of a series in a tail: `vm`, metric, device joined by the unit separator.
pub type SeriesKey = String;

/// The last sample (ts ms, value) of every counter series seen so far on a partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tail(pub std::collections::HashMap<SeriesKey, (i64, f64), ahash::RandomState>);

/// The key of a series.
pub fn series_key(vm: &str, metric: &str, device: &str) -> SeriesKey {
    format!("{vm}\u{1f}{metric}\u{1f}{device}")
}

/// Whether a metric is a counter whose rate the pipeline derives.
pub fn is_counter(metric: &str) -> bool {
    catalog::lookup(metric).is_some_and(|m| m.kind == Kind::Counter)
}

static RATE_NAMES: LazyLock<BTreeMap<&'static str, String>> = LazyLock::new(|| {
    catalog::METRICS
        .iter()
        .filter(|m| m.kind == Kind::Counter)
        .map(|m| (m.name, format!("{}{RATE_SUFFIX}", m.name)))
        .collect()
});

/// The derived rate series of a counter (`bytes_in` -> `bytes_in_rate`); `None` for non-counters.
pub fn rate_name(metric: &str) -> Option<&'static str> {
    RATE_NAMES.get(metric).map(String::as_str)
}

/// What a batch changed in a tail: each touched series' sample before the batch (`None`: new series).
pub type TailUndo = BTreeMap<SeriesKey, Option<(i64, f64)>>;

/// The rate between two consecutive samples in units per second; `None` when time does not move
/// forward or the counter went down (a reset: the interval's increase is unknown).
pub fn rate(prev: (i64, f64), next: (i64, f64)) -> Option<f64> {
    let (dt_ms, dv) = (next.0 - prev.0, next.1 - prev.1);
    (dt_ms > 0 && dv >= 0.0).then(|| dv * 1000.0 / dt_ms as f64)
}

impl Tail {
    /// The undo record that turns `after` back into `self` (the tail before a batch).
    pub fn undo_of(&self, after: &Tail) -> TailUndo {
        after
            .0
            .iter()
            .filter(|(k, v)| self.0.get(*k) != Some(v))
            .map(|(k, _)| (k.clone(), self.0.get(k).copied()))
            .collect()
    }

    /// Applies an undo record: the tail as it was before the batch that produced the record.
    pub fn undo(mut self, undo: &TailUndo) -> Tail {
        for (k, before) in undo {
            match before {
                Some(v) => self.0.insert(k.clone(), *v),
                None => self.0.remove(k),
            };
        }
        self
    }

    /// Forgets the series whose last sample is more than `keep` older than the newest sample of
    /// any series (VMs gone, devices removed), so that the tail stays the size of the live fleet;
    /// returns how many it dropped. Measured against the samples, not the clock, so a retry or a
    /// backfill of old data expires the same series.
    pub fn expire(&mut self, keep: std::time::Duration) -> usize {
        let Some(newest) = self.0.values().map(|(ts, _)| *ts).max() else {
            return 0;
        };
        let cutoff = newest.saturating_sub(keep.as_millis() as i64);
        let before = self.0.len();
        self.0.retain(|_, (ts, _)| *ts >= cutoff);
        before - self.0.len()
    }

    /// Keeps at most `max` series, forgetting the ones seen longest ago (a flood of made-up VMs or
    /// devices cannot grow the partition's state past it); returns how many it dropped.
    pub fn cap(&mut self, max: usize) -> usize {
        let excess = self.0.len().saturating_sub(max);
        if excess == 0 {
            return 0;
        }
        if max == 0 {
            let all = self.0.len();
            self.0.clear();
            return all;
        }
        let mut ts: Vec<i64> = self.0.values().map(|(t, _)| *t).collect();
        let (_, cutoff, _) = ts.select_nth_unstable(excess);
        let cutoff = *cutoff;
        // Everything older than the cutoff goes, then as many at the cutoff as still exceed.
        let before = self.0.len();
        self.0.retain(|_, (t, _)| *t >= cutoff);
        let mut over = self.0.len().saturating_sub(max);
        if over > 0 {
            self.0.retain(|_, (t, _)| {
                if *t == cutoff && over > 0 {
                    over -= 1;
                    false
                } else {
                    true
                }
            });
        }
        before - self.0.len()
    }

    /// The last sample of a series, if it has one.
    pub fn last(&self, vm: &str, metric: &str, device: &str) -> Option<(i64, f64)> {
        with_key(vm, metric, device, |key| self.0.get(key).copied())
    }

    /// Records the last sample of a series.
    pub fn set(&mut self, vm: &str, metric: &str, device: &str, last: (i64, f64)) {
        with_key(vm, metric, device, |key| match self.0.get_mut(key) {
            Some(slot) => *slot = last,
            None => {
                self.0.insert(key.to_owned(), last);
            }
        })
    }
}

/// Moves a series' last sample on to (`ts`, `value`) and returns the rate between them; a sample
/// older than or as old as the last one is ignored, and the first sample has no rate.
pub fn advance(last: &mut Option<(i64, f64)>, ts: i64, value: f64) -> Option<f64> {
    match last {
        Some(prev) if ts <= prev.0 => None,
        Some(prev) => {
            let r = rate(*prev, (ts, value));
            *prev = (ts, value);
            r
        }
        None => {
            *last = Some((ts, value));
            None
        }
    }
}

/// Calls `f` with the [`series_key`] of a series, built in a reused buffer.
fn with_key<R>(vm: &str, metric: &str, device: &str, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    KEY.with_borrow_mut(|key| {
        key.clear();
        // What `series_key` gives, without the formatting machinery (once per counter series).
        for (i, part) in [vm, metric, device].into_iter().enumerate() {
            if i > 0 {
                key.push('\u{1f}');
            }
            key.push_str(part);
        }
        f(key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one sample of a counter series; returns its rate against the previous sample, if any
    /// (what the aggregate's batch does with `last`, `advance` and `set`).
    fn observe(
        t: &mut Tail,
        vm: &str,
        metric: &str,
        device: &str,
        ts: i64,
        value: f64,
    ) -> Option<f64> {
        let mut last = t.last(vm, metric, device);
        let r = advance(&mut last, ts, value);
        if let Some(last) = last {
            t.set(vm, metric, device, last);
        }
        r
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate((0, 100.0), (2_000, 300.0)), Some(100.0));
        assert_eq!(
            rate((0, 100.0), (2_000, 50.0)),
            None,
            "a reset gives no rate"
        );
        assert_eq!(rate((2_000, 1.0), (2_000, 5.0)), None, "no time, no rate");
    }

    #[test]
    fn tail_carries_the_last_sample_across_calls() {
        let mut t = Tail::default();
        let mut k = |ts, v| observe(&mut t, "vm-1", "bytes_in", "eth0", ts, v);
        assert_eq!(k(1_000, 10.0), None);
        assert_eq!(k(3_000, 30.0), Some(10.0));
        assert_eq!(k(2_000, 99.0), None, "out of order is ignored");
        assert_eq!(k(4_000, 5.0), None, "reset");
        assert_eq!(k(5_000, 15.0), Some(10.0), "rates resume after a reset");
        assert_eq!(
            t.0.keys().next().unwrap(),
            &series_key("vm-1", "bytes_in", "eth0")
        );
        assert!(is_counter("bytes_in") && !is_counter("cpu_utilization") && !is_counter("unknown"));
        assert_eq!(rate_name("bytes_in"), Some("bytes_in_rate"));
        assert_eq!(rate_name("cpu_utilization"), None);
    }

    #[test]
    fn undo_restores_the_tail_before_a_batch() {
        let mut before = Tail::default();
        observe(&mut before, "a", "bytes_in", "eth0", 1, 1.0);
        observe(&mut before, "b", "bytes_in", "eth0", 1, 1.0);
        let mut after = before.clone();
        observe(&mut after, "a", "bytes_in", "eth0", 2, 5.0);
        observe(&mut after, "c", "bytes_in", "eth0", 2, 7.0);
        let undo = before.undo_of(&after);
        assert_eq!(undo.len(), 2, "only touched series are recorded");
        assert_eq!(after.undo(&undo), before);
    }

    #[test]
    fn a_capped_tail_keeps_the_series_seen_last() {
        let mut t = Tail::default();
        for i in 0..100 {
            t.set(&format!("vm-{i}"), "bytes_in", "eth0", (i / 2, i as f64));
        }
        assert_eq!(t.cap(150), 0);
        assert_eq!(t.cap(31), 69);
        assert_eq!(t.0.len(), 31);
        assert!(t.0.values().all(|(ts, _)| *ts >= 34), "the newest kept");
        assert!(t.last("vm-99", "bytes_in", "eth0").is_some());
        assert_eq!(t.cap(0), 31);
    }

    #[test]
    fn series_silent_longer_than_the_expiry_leave_the_tail() {
        let mut t = Tail::default();
        t.set("vm-gone", "bytes_in", "eth0", (1_000, 5.0));
        t.set("vm-live", "bytes_in", "eth0", (3_601_000, 7.0));
        t.set("vm-late", "bytes_in", "eth0", (2_000, 9.0));
        // Measured from the newest sample (3,601 s): a series exactly `keep` older stays.
        assert_eq!(t.expire(std::time::Duration::from_secs(3_599)), 1);
        assert!(t.last("vm-gone", "bytes_in", "eth0").is_none());
        assert_eq!(t.last("vm-late", "bytes_in", "eth0"), Some((2_000, 9.0)));
        assert_eq!(t.expire(std::time::Duration::from_secs(3_598)), 1);
        assert!(t.last("vm-late", "bytes_in", "eth0").is_none());
        assert_eq!(
            t.last("vm-live", "bytes_in", "eth0"),
            Some((3_601_000, 7.0))
        );
        assert_eq!(t.expire(std::time::Duration::ZERO), 0);
        assert_eq!(Tail::default().expire(std::time::Duration::ZERO), 0);
    }
}
