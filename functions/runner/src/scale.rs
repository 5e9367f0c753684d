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
