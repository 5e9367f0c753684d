//! KEDA's lag rule with an activation threshold and a scale-in cooldown, as pure functions of lag and time.

use std::fmt;
use std::time::Instant;

use crate::config::ScalingConfig;

/// Workers that `total_lag` calls for: `clamp(ceil(lag / threshold), min, min(max, partitions))`,
/// or `min` while the lag is at or below the activation threshold.
pub fn desired_workers(total_lag: u64, partitions: usize, config: &ScalingConfig) -> usize {
    let cap = config.max_workers.min(partitions).max(config.min_workers);
    if total_lag <= config.activation_lag {
        return config.min_workers;
    }
    let wanted = total_lag.div_ceil(config.lag_threshold.max(1));
    let wanted = usize::try_from(wanted).unwrap_or(usize::MAX);
    // Active: at least one worker even when min is 0 (KEDA activates from zero to one).
    wanted.max(config.min_workers).max(1).min(cap)
}

/// Why a decision keeps or changes the number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Demand matches the workers running.
    Steady,
    /// Demand is above the workers running: scale out at once.
    ScaleOut,
    /// Demand is lower, but not yet for the whole cooldown.
    CoolingDown,
    /// Demand stayed lower for the whole cooldown: scale in to the highest demand seen meanwhile.
    ScaleIn,
}

impl Reason {
    /// The reason as logged and exported.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::ScaleOut => "lag above what the workers absorb",
            Self::CoolingDown => "lower demand, cooling down",
            Self::ScaleIn => "lower demand for the whole cooldown",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scaling decision with its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Total lag measured.
    pub lag: u64,
    /// Partitions of the topic.
    pub partitions: usize,
    /// Workers the lag calls for right now.
    pub desired: usize,
    /// Workers running before the decision.
    pub from: usize,
    /// Workers to run after it.
    pub to: usize,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// Whether the decision changes the number of workers.
    pub fn changes(&self) -> bool {
        self.from != self.to
    }
}

/// Turns lag samples into decisions: scale out immediately, scale in only after a cooldown of lower demand.
#[derive(Debug, Clone)]
pub struct Scaler {
    config: ScalingConfig,
    /// Since when demand has been below the running workers, and its peak since then.
    lower: Option<(Instant, usize)>,
}

impl Scaler {
    /// A scaler with no history.
    pub fn new(config: ScalingConfig) -> Self {
        Self {
            config,
            lower: None,
        }
    }

    /// Decides how many workers to run at `now`, given the running `current` and a lag sample.
    pub fn decide(
        &mut self,
        now: Instant,
        current: usize,
        total_lag: u64,
        partitions: usize,
    ) -> Decision {
        let desired = desired_workers(total_lag, partitions, &self.config);
        let decision = |to, reason| Decision {
            lag: total_lag,
            partitions,
            desired,
            from: current,
            to,
            reason,
        };
        if desired >= current {
            self.lower = None;
            let reason = if desired > current {
                Reason::ScaleOut
            } else {
                Reason::Steady
            };
            return decision(desired, reason);
        }
        let (since, peak) = self.lower.get_or_insert((now, desired));
        *peak = (*peak).max(desired);
        if now.saturating_duration_since(*since) >= self.config.cooldown {
            let to = *peak;
            self.lower = None;
            decision(to, Reason::ScaleIn)
        } else {
            decision(current, Reason::CoolingDown)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> ScalingConfig {
        ScalingConfig {
            min_workers: 1,
            max_workers: 8,
            lag_threshold: 100,
            activation_lag: 0,
            interval: Duration::from_secs(1),
            cooldown: Duration::from_secs(10),
        }
    }

    #[test]
    fn keda_rule_clamps_to_min_max_and_partitions() {
        let c = config();
        assert_eq!(desired_workers(0, 12, &c), 1, "no lag: min");
        assert_eq!(desired_workers(1, 12, &c), 1);
        assert_eq!(desired_workers(100, 12, &c), 1);
        assert_eq!(desired_workers(101, 12, &c), 2, "ceil");
        assert_eq!(desired_workers(450, 12, &c), 5);
        assert_eq!(desired_workers(1_000_000, 12, &c), 8, "max");
        assert_eq!(desired_workers(1_000_000, 3, &c), 3, "partitions");
        assert_eq!(desired_workers(u64::MAX, 12, &c), 8, "no overflow");
        let c = ScalingConfig {
            min_workers: 4,
            ..config()
        };
        assert_eq!(desired_workers(0, 2, &c), 4, "min wins over partitions");
    }

    #[test]
    fn activation_threshold_keeps_min() {
        let c = ScalingConfig {
            min_workers: 0,
            activation_lag: 50,
            ..config()
        };
        assert_eq!(desired_workers(50, 12, &c), 0, "at the threshold: inactive");
        assert_eq!(desired_workers(51, 12, &c), 1, "active: at least one");
        assert_eq!(desired_workers(250, 12, &c), 3);
    }

    #[test]
    fn scales_out_at_once_and_in_after_cooldown() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut s = Scaler::new(config());
        let d = s.decide(at(0), 1, 50, 12);
        assert_eq!((d.to, d.reason), (1, Reason::Steady));
        let d = s.decide(at(1), 1, 650, 12);
        assert_eq!((d.from, d.to, d.reason), (1, 7, Reason::ScaleOut));
        assert_eq!(d.desired, 7);
        // Lag drains: hold for the cooldown, remembering the peak demand meanwhile.
        let d = s.decide(at(2), 7, 0, 12);
        assert_eq!((d.to, d.reason), (7, Reason::CoolingDown));
        let d = s.decide(at(5), 7, 250, 12);
        assert_eq!((d.to, d.reason), (7, Reason::CoolingDown));
        let d = s.decide(at(11), 7, 0, 12);
        assert_eq!((d.to, d.reason), (7, Reason::CoolingDown), "9s < 10s");
        let d = s.decide(at(12), 7, 0, 12);
        assert_eq!(
            (d.to, d.reason),
            (3, Reason::ScaleIn),
            "the peak within the window"
        );
        // A fresh window starts after a scale-in.
        let d = s.decide(at(13), 3, 0, 12);
        assert_eq!((d.to, d.reason), (3, Reason::CoolingDown));
        let d = s.decide(at(23), 3, 0, 12);
        assert_eq!((d.to, d.reason), (1, Reason::ScaleIn));
    }

    #[test]
    fn renewed_demand_resets_the_cooldown() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut s = Scaler::new(config());
        assert_eq!(s.decide(at(0), 4, 0, 12).reason, Reason::CoolingDown);
        assert_eq!(s.decide(at(8), 4, 400, 12).reason, Reason::Steady);
        assert_eq!(s.decide(at(9), 4, 0, 12).reason, Reason::CoolingDown);
        assert_eq!(
            s.decide(at(18), 4, 0, 12).reason,
            Reason::CoolingDown,
            "the window restarted at 9s"
        );
        let d = s.decide(at(19), 4, 0, 12);
        assert_eq!((d.to, d.reason), (1, Reason::ScaleIn));
        // Scale-out interrupts a cooldown at once.
        assert_eq!(s.decide(at(20), 4, 0, 12).reason, Reason::CoolingDown);
        let d = s.decide(at(21), 4, 900, 12);
        assert_eq!((d.to, d.reason), (8, Reason::ScaleOut));
    }

    /// Twelve partitions and the settings of `tests/scaling.rs`: threshold 100, 1..=16 workers,
    /// an evaluation every second, a 3 s cooldown.
    fn end_to_end_config() -> ScalingConfig {
        ScalingConfig {
            min_workers: 1,
            max_workers: 16,
            lag_threshold: 100,
            activation_lag: 0,
            interval: Duration::from_secs(1),
            cooldown: Duration::from_secs(3),
        }
    }

    /// The runner's control loop on an injected clock: an evaluation every `interval` from 0 to
    /// `until` (milliseconds), skipping those at which `settling` holds (the runner takes no
    /// decision while a rebalance settles), and the workers set to every decision's `to` at once.
    /// `lag(ms)` is the total lag measured at that time. Returns the decisions that changed the
    /// number of workers, with their times in milliseconds. (The runner's ticks are a
    /// `tokio::time::interval` that delays, rather than bursts, a tick missed while a scaling step
    /// ran; here every step is instant, so evaluations fall on whole intervals.)
    fn drive(
        config: ScalingConfig,
        partitions: usize,
        until: u64,
        lag: impl Fn(u64) -> u64,
        settling: impl Fn(u64) -> bool,
    ) -> Vec<(u64, Decision)> {
        let t0 = Instant::now();
        let every = config.interval.as_millis() as u64;
        let mut workers = config.min_workers;
        let mut scaler = Scaler::new(config);
        let mut changes = Vec::new();
        for ms in (0..=until).step_by(every as usize) {
            if settling(ms) {
                continue;
            }
            let d = scaler.decide(t0 + Duration::from_millis(ms), workers, lag(ms), partitions);
            if d.changes() {
                workers = d.to;
                changes.push((ms, d));
            }
        }
        changes
    }

    /// Each change as (ms, from, to, reason), the shape the scenarios assert.
    fn moves(changes: &[(u64, Decision)]) -> Vec<(u64, usize, usize, Reason)> {
        changes
            .iter()
            .map(|(ms, d)| (*ms, d.from, d.to, d.reason))
            .collect()
    }

    /// The scenario of `tests/scaling.rs` with exact times: a burst of 2,400 records published at
    /// 3.4 s, drained by 8.2 s. Scale-out is decided at the first evaluation after the lag
    /// crosses (4 s: within one interval, which the end-to-end test asserted as "within two
    /// intervals" of wall-clock time), to the cap the partitions set (12, under max 16); scale-in
    /// at the first evaluation a whole cooldown after demand first fell (the lag is 700 at 6 s,
    /// asking for 7; scale-in to the peak want, 7, at 9 s; then to 1 at 13 s, since a new window
    /// starts at the first evaluation after a scale-in, 10 s).
    #[test]
    fn burst_scales_out_at_the_first_evaluation_and_in_after_the_cooldown() {
        let lag = |ms: u64| match ms {
            0..3_400 => 0,
            3_400..5_000 => 2_400,
            5_000..6_000 => 1_500,
            6_000..7_000 => 700,
            7_000..8_200 => 300,
            _ => 0,
        };
        let changes = drive(end_to_end_config(), 12, 20_000, lag, |_| false);
        let at = moves(&changes);
        assert_eq!(
            at,
            [
                (4_000, 1, 12, Reason::ScaleOut),
                (9_000, 12, 7, Reason::ScaleIn),
                (13_000, 7, 1, Reason::ScaleIn),
            ]
        );
        let (out, d) = changes[0];
        assert!(out - 3_400 <= 1_000, "within one interval of the burst");
        assert_eq!(
            (d.lag, d.desired),
            (2_400, 12),
            "capped by partitions (max 16)"
        );
        // Not before the cooldown: demand first fell at 6 s; every evaluation up to 8 s held.
        let (scale_in, _) = changes[1];
        assert_eq!(
            scale_in - 6_000,
            3_000,
            "exactly the cooldown after demand fell"
        );
        assert!(scale_in - out >= 3_000, "scale-in only after the cooldown");
    }

    /// The localstack scenario (`tests/scaling_localstack.rs`): activation at 12 x threshold - 1
    /// keeps one worker while the burst is still being published, then the cap in one decision.
    #[test]
    fn activation_past_the_cap_asks_for_the_cap_in_one_decision() {
        let config = ScalingConfig {
            max_workers: 12,
            activation_lag: 12 * 100 - 1,
            cooldown: Duration::from_secs(4),
            ..end_to_end_config()
        };
        // Publishing from 2.5 s: 600 by 3 s, 1,199 (at the activation threshold) by 4 s, 2,400 by 5 s;
        // consumed down to 1,250 (still the cap) at 7 s, 900 (at or below the activation: min) at 8 s,
        // 0 from 10 s.
        let lag = |ms: u64| match ms {
            0..2_500 => 0,
            2_500..4_000 => 600,
            4_000..5_000 => 1_199,
            5_000..7_000 => 2_400,
            7_000..8_000 => 1_250,
            8_000..10_000 => 900,
            _ => 0,
        };
        let changes = drive(config, 12, 30_000, lag, |_| false);
        let at = moves(&changes);
        assert_eq!(
            at,
            [
                (5_000, 1, 12, Reason::ScaleOut),
                // 900 is below the activation threshold: demand falls to min at 8 s, and the
                // peak within the window is 1 (the window starts at 8 s).
                (12_000, 12, 1, Reason::ScaleIn),
            ]
        );
    }

    /// Evaluations skipped while a rebalance settles take no decision, and a skipped evaluation
    /// neither starts nor ends a cooldown: it counts from the first evaluation that saw lower demand.
    #[test]
    fn settling_defers_decisions_to_the_next_evaluation() {
        let lag = |ms: u64| {
            if (3_400..6_000).contains(&ms) {
                2_400
            } else {
                0
            }
        };
        // Rebalances settle over the evaluations at 5 s (after the scale-out), 6 s and 7 s.
        let settling = |ms: u64| (5_000..=5_000).contains(&ms) || (6_000..=7_000).contains(&ms);
        let changes = drive(end_to_end_config(), 12, 20_000, lag, settling);
        let at: Vec<(u64, usize, Reason)> = changes
            .iter()
            .map(|(ms, d)| (*ms, d.to, d.reason))
            .collect();
        assert_eq!(
            at,
            [(4_000, 12, Reason::ScaleOut), (11_000, 1, Reason::ScaleIn)],
            "demand fell at 6 s, first seen at 8 s; scale-in at 8 s + 3 s"
        );
    }

    /// Bounds: never above `max_workers` even with more partitions, never below `min_workers`,
    /// and from zero workers to one and back once the lag passes and falls below the activation.
    #[test]
    fn bounds_hold_through_out_and_in() {
        let lag = |ms: u64| {
            if (2_000..4_000).contains(&ms) {
                5_000
            } else {
                0
            }
        };
        let capped = ScalingConfig {
            max_workers: 5,
            ..end_to_end_config()
        };
        let changes = drive(capped, 12, 20_000, lag, |_| false);
        let at: Vec<(u64, usize)> = changes.iter().map(|(ms, d)| (*ms, d.to)).collect();
        assert_eq!(
            at,
            [(2_000, 5), (7_000, 1)],
            "max 5 of 12 partitions; back to min 1"
        );

        let floor = ScalingConfig {
            min_workers: 3,
            ..end_to_end_config()
        };
        let changes = drive(floor, 12, 20_000, lag, |_| false);
        let at: Vec<(u64, usize)> = changes.iter().map(|(ms, d)| (*ms, d.to)).collect();
        assert_eq!(at, [(2_000, 12), (7_000, 3)], "never below min 3");

        let idle = ScalingConfig {
            min_workers: 0,
            activation_lag: 10,
            ..end_to_end_config()
        };
        let lag = |ms: u64| match ms {
            2_000..3_000 => 10,
            3_000..4_000 => 11,
            _ => 0,
        };
        let changes = drive(idle, 12, 20_000, lag, |_| false);
        let at: Vec<(u64, usize, usize)> =
            changes.iter().map(|(ms, d)| (*ms, d.from, d.to)).collect();
        assert_eq!(
            at,
            [(3_000, 0, 1), (7_000, 1, 0)],
            "at the activation threshold: idle; past it: one; back to zero after the cooldown"
        );
    }

    /// A cooldown that is not a whole number of intervals ends at the first evaluation after it.
    #[test]
    fn scale_in_waits_for_the_evaluation_after_the_cooldown() {
        let config = ScalingConfig {
            cooldown: Duration::from_millis(2_500),
            ..end_to_end_config()
        };
        let lag = |ms: u64| if ms == 1_000 { 800 } else { 0 };
        let changes = drive(config, 12, 20_000, lag, |_| false);
        let at: Vec<(u64, usize)> = changes.iter().map(|(ms, d)| (*ms, d.to)).collect();
        assert_eq!(
            at,
            [(1_000, 8), (5_000, 1)],
            "fell at 2 s; 4 s < 2 s + 2.5 s <= 5 s"
        );
    }

    #[test]
    fn zero_cooldown_scales_in_immediately() {
        let mut s = Scaler::new(ScalingConfig {
            cooldown: Duration::ZERO,
            ..config()
        });
        let d = s.decide(Instant::now(), 5, 0, 12);
        assert_eq!((d.to, d.reason), (1, Reason::ScaleIn));
    }
}
