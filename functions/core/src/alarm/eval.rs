//! The alarm evaluator: samples in, per-(rule, vm, device) states updated, notifications out.
//!
//! Each series keeps a window of decided periods (the statistic's value, or missing) and the
//! period being collected. Periods are aligned to multiples of the rule's period since the epoch.
//! A period is decided when a later sample of the series arrives, when [`Evaluator::tick`] sees
//! `now >= period end + grace`, or early, as soon as one sample settles it as breaching (max with
//! `>`/`>=`, min with `<`/`<=`). After every decision the state is recomputed:
//!
//! - up: to the highest level with at least `fire.m` of the last `fire.n` periods at or above it;
//! - down: while at least `resolve.m` of the last `resolve.n` periods are below the current level,
//!   one level down (CRITICAL to WARNING when the rule has a warning threshold, then OK), never
//!   below what the fire window supports. The default resolve window is all of the last `fire.n`
//!   periods, so a series alternating between breaching and OK does not flap.
//!
//! Missing periods (no sample) count per `missing_data`: `missing` neither way, `breaching` at the
//! rule's top level, `not_breaching` as OK, `ignore` not at all. With `missing`, a series without a
//! sample for `no_data_after` goes NO_DATA at the next tick; it leaves NO_DATA when a period with
//! samples is decided. Levels are recomputed from the stored values, so a threshold edit applies
//! to the periods already collected.
//!
//! Notifications are emitted on every state change and, with `repeat_every`, again while WARNING,
//! CRITICAL or NO_DATA. A new series starts OK without a notification.
//!
//! The state is per Kafka partition (a VM's samples all land on one partition): it records the
//! last offset evaluated and [`Evaluator::evaluate`] skips offsets at or below it, so replaying a
//! batch after the adapter persisted the state yields nothing. Samples of a period already decided
//! are dropped (late), as are samples stamped before 1970 or after 9999. Series not seen for [`EvalConfig::forget_after`] (or twice their window if
//! longer) are forgotten silently at a tick; series of removed or disabled rules, or out of a
//! rule's new scope, are forgotten when the rule set changes; an edit of a rule's metric, device,
//! statistic or period clears the series' periods but keeps its state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use damselfly_schemas::{MetricMessage, Tags};
use serde::{Deserialize, Serialize};

use crate::rates;

use super::rules::{MissingData, Rule, RuleError, RuleSet, Statistic};

/// The state of one alarm (rule, vm, device); also the level of one decided period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmLevel {
    /// Within thresholds.
    #[default]
    Ok,
    /// Past the warning threshold.
    Warning,
    /// Past the critical threshold.
    Critical,
    /// No samples for too long.
    NoData,
}

impl AlarmLevel {
    /// The level's name as shown and stored (`OK`, `WARNING`, `CRITICAL`, `NO_DATA`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmLevel::Ok => "OK",
            AlarmLevel::Warning => "WARNING",
            AlarmLevel::Critical => "CRITICAL",
            AlarmLevel::NoData => "NO_DATA",
        }
    }

    /// Whether the alarm is firing (WARNING, CRITICAL or NO_DATA), i.e. repeats apply.
    pub fn is_firing(self) -> bool {
        self != AlarmLevel::Ok
    }

    /// Severity order: OK < NO_DATA < WARNING < CRITICAL.
    pub fn severity_rank(self) -> u8 {
        match self {
            AlarmLevel::Ok => 0,
            AlarmLevel::NoData => 1,
            AlarmLevel::Warning => 2,
            AlarmLevel::Critical => 3,
        }
    }
}

impl fmt::Display for AlarmLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sample as the evaluator sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// Collection time, ms since the epoch.
    pub ts_ms: i64,
    /// The VM's tags (`tags.vm` is the VM id).
    pub tags: &'a Tags,
    /// Metric name as published.
    pub metric: &'a str,
    /// Device of per-device metrics.
    pub device: Option<&'a str>,
    /// The value.
    pub value: f64,
}

/// Every sample of a metric message.
pub fn samples(msg: &MetricMessage) -> impl Iterator<Item = Sample<'_>> {
    let plain = msg.metrics.iter().map(|(metric, &value)| Sample {
        ts_ms: msg.ts,
        tags: &msg.tags,
        metric,
        device: None,
        value,
    });
    let devices = msg.devices.iter().flat_map(move |(device, metrics)| {
        metrics.iter().map(move |(metric, &value)| Sample {
            ts_ms: msg.ts,
            tags: &msg.tags,
            metric,
            device: Some(device.as_str()),
            value,
        })
    });
    plain.chain(devices)
}

/// Whether a notification reports a state change or repeats a firing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    /// The state changed.
    Transition,
    /// Still firing; `repeat_every` elapsed.
    Repeat,
}

impl NotificationKind {
    /// The kind as stored in the alarms table (`transition`, `repeat`).
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Transition => "transition",
            NotificationKind::Repeat => "repeat",
        }
    }
}

/// One alarm event to publish and to record in the alarms table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Transition or repeat.
    pub kind: NotificationKind,
    /// When it happened (ms since the epoch): the deciding sample, the decided period's end, or the tick.
    pub ts_ms: i64,
    /// The rule's id.
    pub rule_id: String,
    /// The rule's name.
    pub rule_name: String,
    /// The rule's description, if any.
    pub description: Option<String>,
    /// The series' VM tags (ns, mcis, vm, csp, region, ...).
    pub tags: Tags,
    /// The series' device, for per-device metrics.
    pub device: Option<String>,
    /// The metric the rule watches (a `_rate` name for counter rates).
    pub metric: String,
    /// The state before (equal to `to` for repeats).
    pub from: AlarmLevel,
    /// The state now.
    pub to: AlarmLevel,
    /// The statistic of the latest period with samples (`None` when there was none).
    pub value: Option<f64>,
    /// The threshold crossed: of `to` when firing, of `from` when resolved; `None` for NO_DATA.
    pub threshold: Option<f64>,
    /// The rule's comparator.
    pub comparator: super::rules::Comparator,
    /// The rule's statistic.
    pub statistic: Statistic,
    /// The rule's period in seconds.
    pub period_s: i64,
    /// When the current state began (ms since the epoch).
    pub since_ms: i64,
    /// Offset of the record whose sample caused it; `None` when a tick did.
    pub offset: Option<i64>,
}

impl Notification {
    /// The VM id.
    pub fn vm(&self) -> &str {
        &self.tags.vm
    }

    /// The severity for routing: the more severe of `from` and `to`, so a resolved CRITICAL is still CRITICAL.
    pub fn severity(&self) -> AlarmLevel {
        if self.from.severity_rank() > self.to.severity_rank() {
            self.from
        } else {
            self.to
        }
    }

    /// A short stable id of this event (16 hex digits), e.g. for SNS FIFO deduplication.
    pub fn dedup_id(&self) -> String {
        let text = format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.rule_id,
            self.tags.vm,
            self.device.as_deref().unwrap_or(""),
            self.to,
            self.ts_ms,
            self.kind.as_str()
        );
        format!("{:016x}", fnv1a(text.as_bytes()))
    }
}

/// Settings of an evaluator that are not per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalConfig {
    /// How long after a period's end a tick waits for late samples before deciding it.
    pub grace: Duration,
    /// Series without a sample for this long are forgotten (at least twice their window).
    pub forget_after: Duration,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            grace: Duration::from_secs(60),
            forget_after: Duration::from_secs(86_400),
        }
    }
}

/// Every alarm state of one partition, serde-serializable for the adapter to persist between batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlarmState {
    /// The last offset evaluated; records at or below it are skipped.
    #[serde(default)]
    last_offset: Option<i64>,
    /// Digest of the rule set the series were built with; a change triggers a reconcile.
    #[serde(default)]
    rules_digest: String,
    /// Series by `rule \x1f vm \x1f device`.
    #[serde(default)]
    series: BTreeMap<String, SeriesState>,
}

impl AlarmState {
    /// The last offset evaluated, if any.
    pub fn last_offset(&self) -> Option<i64> {
        self.last_offset
    }

    /// Number of series (rule, vm, device) tracked.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The state of one alarm, if its series is tracked.
    pub fn level(&self, rule_id: &str, vm: &str, device: Option<&str>) -> Option<AlarmLevel> {
        self.series
            .get(&series_key(rule_id, vm, device))
            .map(|s| s.level)
    }

    /// Every tracked alarm that is firing: (rule id, vm, device, state, since ms).
    pub fn firing(&self) -> impl Iterator<Item = (&str, &str, Option<&str>, AlarmLevel, i64)> {
        self.series
            .values()
            .filter(|s| s.level.is_firing())
            .map(|s| {
                (
                    s.rule.as_str(),
                    s.tags.vm.as_str(),
                    s.device.as_deref(),
                    s.level,
                    s.since_ms,
                )
            })
    }
}

/// One (rule, vm, device) alarm: its state and the periods it is computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SeriesState {
    rule: String,
    tags: Tags,
    device: Option<String>,
    /// Metric, device, statistic and period the periods were collected with.
    basis: String,
    level: AlarmLevel,
    since_ms: i64,
    last_seen_ms: i64,
    /// When the last notification while firing went out (for repeats).
    last_notified_ms: Option<i64>,
    /// Start of the earliest undecided period; `None` until the first sample.
    decided_through: Option<i64>,
    /// The undecided period being collected (it starts at `decided_through`).
    open: Option<Acc>,
    /// The latest decided periods, oldest first (the open period too once decided early).
    history: VecDeque<Period>,
    /// The last raw counter sample (ts, value), for rate rules.
    prev: Option<(i64, f64)>,
    /// The statistic of the latest period with samples.
    last_value: Option<f64>,
}

/// A decided period: its start and its statistic (`None`: no sample).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Period {
    start: i64,
    value: Option<f64>,
}

/// The samples of the period being collected, reduced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Acc {
    start: i64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_ts: i64,
}

impl Acc {
    fn new(start: i64) -> Self {
        Acc {
            start,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: 0.0,
            last_ts: i64::MIN,
        }
    }

    fn add(&mut self, ts: i64, v: f64) {
        self.count += 1;
        // Clamped: an infinite sum would not survive the state's JSON round trip.
        self.sum = (self.sum + v).clamp(f64::MIN, f64::MAX);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if ts >= self.last_ts {
            self.last = v;
            self.last_ts = ts;
        }
    }

    fn value(&self, s: Statistic) -> Option<f64> {
        (self.count > 0).then(|| match s {
            Statistic::Avg => self.sum / self.count as f64,
            Statistic::Min => self.min,
            Statistic::Max => self.max,
            Statistic::Last => self.last,
        })
    }
}

/// Evaluates one validated rule set; cheap to keep for the life of a function instance.
#[derive(Debug, Clone)]
pub struct Evaluator {
    rules: Vec<Rule>,
    /// Input metric name (the counter for rate rules) to (rule index, is rate).
    by_metric: HashMap<String, Vec<(usize, bool)>>,
    digest: String,
    config: EvalConfig,
}

/// Where a notification's time and offset come from.
#[derive(Clone, Copy)]
struct At {
    ts: i64,
    offset: Option<i64>,
}

impl Evaluator {
    /// An evaluator of the enabled rules of a rule set, with default settings; fails if the set is invalid.
    pub fn new(rules: RuleSet) -> Result<Self, RuleError> {
        Self::with_config(rules, EvalConfig::default())
    }

    /// An evaluator with explicit settings.
    pub fn with_config(rules: RuleSet, config: EvalConfig) -> Result<Self, RuleError> {
        rules.validate()?;
        let digest = format!(
            "{:016x}",
            fnv1a(serde_json::to_string(&rules).unwrap_or_default().as_bytes())
        );
        let rules: Vec<Rule> = rules.rules.into_iter().filter(|r| r.enabled).collect();
        let mut by_metric: HashMap<String, Vec<(usize, bool)>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            let (input, is_rate) = match r.rate_of() {
                Some(counter) => (counter.to_string(), true),
                None => (r.metric.clone(), false),
            };
            by_metric.entry(input).or_default().push((i, is_rate));
        }
        Ok(Evaluator {
            rules,
            by_metric,
            digest,
            config,
        })
    }

    /// The enabled rules evaluated.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Evaluates the samples of the record at `offset` (in timestamp order per series); records at or
    /// below the state's last offset are skipped, so a replayed batch notifies nothing.
    pub fn evaluate<'a>(
        &self,
        state: &mut AlarmState,
        offset: i64,
        samples: impl IntoIterator<Item = Sample<'a>>,
    ) -> Vec<Notification> {
        let mut out = Vec::new();
        if state.last_offset.is_some_and(|last| offset <= last) {
            return out;
        }
        self.reconcile(state);
        state.last_offset = Some(offset);
        for s in samples {
            let Some(candidates) = self.by_metric.get(s.metric) else {
                continue;
            };
            for &(i, is_rate) in candidates {
                let rule = &self.rules[i];
                if !rule.applies_to(s.tags, s.device) {
                    continue;
                }
                let series = state
                    .series
                    .entry(series_key(&rule.id, &s.tags.vm, s.device))
                    .or_insert_with(|| SeriesState::new(rule, s));
                if s.tags != &series.tags {
                    series.tags = s.tags.clone();
                }
                let at = At {
                    ts: s.ts_ms,
                    offset: Some(offset),
                };
                series.observe(rule, s.ts_ms, s.value, is_rate, at, &mut out);
                series.repeat(rule, at, &mut out);
            }
        }
        out
    }

    /// Evaluates every sample of one metric message (the record at `offset`).
    pub fn evaluate_message(
        &self,
        state: &mut AlarmState,
        offset: i64,
        msg: &MetricMessage,
    ) -> Vec<Notification> {
        self.evaluate(state, offset, samples(msg))
    }

    /// Advances time to `now_ms` (wall clock, after the batch): decides periods past their end plus
    /// grace, marks silent series NO_DATA, emits repeats, forgets long-silent series. Idempotent for
    /// a given `now_ms`.
    pub fn tick(&self, state: &mut AlarmState, now_ms: i64) -> Vec<Notification> {
        let mut out = Vec::new();
        self.reconcile(state);
        let grace = duration_ms(self.config.grace);
        let forget = duration_ms(self.config.forget_after);
        let index: HashMap<&str, &Rule> = self.rules.iter().map(|r| (r.id.as_str(), r)).collect();
        state.series.retain(|_, series| {
            let Some(rule) = index.get(series.rule.as_str()) else {
                return false;
            };
            series.advance(rule, now_ms, grace, &mut out);
            let window = i64::from(rule.fire.n.max(rule.resolve_window().n));
            let span = rule
                .period_ms()
                .saturating_mul(window)
                .saturating_add(rule.no_data_after_ms())
                .saturating_mul(2);
            now_ms.saturating_sub(series.last_seen_ms) < forget.max(span)
        });
        out
    }

    /// Drops series of removed, disabled or out-of-scope rules and clears those whose basis changed,
    /// when the rule set differs from the one the state was built with.
    fn reconcile(&self, state: &mut AlarmState) {
        if state.rules_digest == self.digest {
            return;
        }
        let index: HashMap<&str, &Rule> = self.rules.iter().map(|r| (r.id.as_str(), r)).collect();
        state.series.retain(|_, s| {
            let Some(rule) = index.get(s.rule.as_str()) else {
                return false;
            };
            if !rule.applies_to(&s.tags, s.device.as_deref()) {
                return false;
            }
            let basis = rule.basis();
            if s.basis != basis {
                s.basis = basis;
                s.decided_through = None;
                s.open = None;
                s.history.clear();
                s.prev = None;
            }
            true
        });
        state.rules_digest = self.digest.clone();
    }
}

impl SeriesState {
    fn new(rule: &Rule, s: Sample<'_>) -> Self {
        SeriesState {
            rule: rule.id.clone(),
            tags: s.tags.clone(),
            device: s.device.map(str::to_string),
            basis: rule.basis(),
            level: AlarmLevel::Ok,
            since_ms: s.ts_ms,
            last_seen_ms: s.ts_ms,
            last_notified_ms: None,
            decided_through: None,
            open: None,
            history: VecDeque::new(),
            prev: None,
            last_value: None,
        }
    }

    /// Feeds one raw sample (a counter's total for rate rules).
    fn observe(
        &mut self,
        rule: &Rule,
        ts: i64,
        raw: f64,
        is_rate: bool,
        at: At,
        out: &mut Vec<Notification>,
    ) {
        if !(0..=MAX_TS).contains(&ts) {
            return;
        }
        let value = if is_rate {
            // A sample no newer than the last one is ignored; any other moves the series on.
            if self.prev.is_none_or(|p| ts > p.0) {
                self.last_seen_ms = self.last_seen_ms.max(ts);
            }
            match rates::advance(&mut self.prev, ts, raw) {
                Some(r) => r,
                None => return,
            }
        } else {
            raw
        };
        if !value.is_finite() {
            return;
        }
        self.last_seen_ms = self.last_seen_ms.max(ts);
        let p = rule.period_ms();
        let start = ts.div_euclid(p) * p;
        let decided = *self.decided_through.get_or_insert(start);
        if start < decided {
            return; // late: its period is decided
        }
        if let Some(acc) = self.open
            && acc.start < start
        {
            self.close(rule, at_end(acc.start + p, at), out);
        }
        self.fill_missing(rule, start, at, out);
        let acc = self.open.get_or_insert_with(|| Acc::new(start));
        acc.add(ts, value);
        if rule.decides_early()
            && let Some(v) = acc.value(rule.statistic)
            && rule.level_of(v) != AlarmLevel::Ok
        {
            self.record(rule, start, Some(v), at, out);
        }
    }

    /// Decides the open period with what it collected.
    fn close(&mut self, rule: &Rule, at: At, out: &mut Vec<Notification>) {
        if let Some(acc) = self.open.take() {
            self.decided_through = Some(acc.start + rule.period_ms());
            self.record(rule, acc.start, acc.value(rule.statistic), at, out);
        }
    }

    /// Decides every period from `decided_through` up to (not including) `until` as missing; only
    /// the last window's worth matter.
    fn fill_missing(&mut self, rule: &Rule, until: i64, at: At, out: &mut Vec<Notification>) {
        let Some(mut start) = self.decided_through else {
            return;
        };
        if start >= until || self.open.is_some() {
            return;
        }
        let p = rule.period_ms();
        let window = i64::from(rule.fire.n.max(rule.resolve_window().n));
        let count = (until - start) / p;
        if count > window {
            start += (count - window) * p;
        }
        while start < until {
            self.record(rule, start, None, at_end(start + p, at), out);
            start += p;
        }
        self.decided_through = Some(until);
    }

    /// Time passes: decides periods ended more than `grace` ago, then NO_DATA and repeats.
    fn advance(&mut self, rule: &Rule, now: i64, grace: i64, out: &mut Vec<Notification>) {
        let now = now.clamp(0, MAX_TS);
        let at = At {
            ts: now,
            offset: None,
        };
        let p = rule.period_ms();
        let until = now.saturating_sub(grace).div_euclid(p) * p;
        if let Some(acc) = self.open
            && acc.start < until
        {
            self.close(rule, at_end(acc.start + p, at), out);
        }
        if self.decided_through.is_some_and(|d| d < until) {
            self.fill_missing(rule, until, at, out);
        }
        if rule.missing_data == MissingData::Missing
            && self.level != AlarmLevel::NoData
            && now.saturating_sub(self.last_seen_ms) >= rule.no_data_after_ms()
        {
            let when = self.last_seen_ms.saturating_add(rule.no_data_after_ms());
            self.transition(rule, AlarmLevel::NoData, At { ts: when, ..at }, out);
        }
        self.repeat(rule, at, out);
    }

    /// Records a decided (or early-decided) period and recomputes the state.
    fn record(
        &mut self,
        rule: &Rule,
        start: i64,
        value: Option<f64>,
        at: At,
        out: &mut Vec<Notification>,
    ) {
        if value.is_none() && rule.missing_data == MissingData::Ignore {
            return;
        }
        match self.history.back_mut() {
            Some(last) if last.start == start => last.value = value,
            _ => self.history.push_back(Period { start, value }),
        }
        let keep = rule.fire.n.max(rule.resolve_window().n) as usize;
        while self.history.len() > keep {
            self.history.pop_front();
        }
        if value.is_some() {
            self.last_value = value;
        }
        let next = self.next_level(rule, value.is_some());
        if next != self.level {
            self.transition(rule, next, at, out);
        }
    }

    /// The level of each period in the window (None: missing, counted neither way).
    fn levels<'a>(&'a self, rule: &'a Rule, n: u32) -> impl Iterator<Item = AlarmLevel> + 'a {
        let skip = self.history.len().saturating_sub(n as usize);
        self.history
            .iter()
            .skip(skip)
            .filter_map(move |p| match p.value {
                Some(v) => Some(rule.level_of(v)),
                None => match rule.missing_data {
                    MissingData::Breaching => Some(rule.top_level()),
                    MissingData::NotBreaching => Some(AlarmLevel::Ok),
                    MissingData::Missing | MissingData::Ignore => None,
                },
            })
    }

    /// The state the window supports, from the current one (see the module docs).
    fn next_level(&self, rule: &Rule, newest_has_data: bool) -> AlarmLevel {
        let rank = |l: AlarmLevel| l.severity_rank();
        let fire = rule.fire;
        let at_least = |l: AlarmLevel| {
            self.levels(rule, fire.n)
                .filter(|x| rank(*x) >= rank(l))
                .count()
        };
        let up = if at_least(AlarmLevel::Critical) >= fire.m as usize {
            AlarmLevel::Critical
        } else if at_least(AlarmLevel::Warning) >= fire.m as usize {
            AlarmLevel::Warning
        } else {
            AlarmLevel::Ok
        };
        match self.level {
            AlarmLevel::NoData if newest_has_data => up,
            AlarmLevel::NoData => AlarmLevel::NoData,
            current if rank(up) > rank(current) => up,
            current => {
                let resolve = rule.resolve_window();
                let mut next = current;
                while next != AlarmLevel::Ok {
                    let below = self
                        .levels(rule, resolve.n)
                        .filter(|x| rank(*x) < rank(next))
                        .count();
                    if below < resolve.m as usize {
                        break;
                    }
                    next = match next {
                        AlarmLevel::Critical if rule.warning.is_some() => AlarmLevel::Warning,
                        _ => AlarmLevel::Ok,
                    };
                }
                if rank(up) > rank(next) { up } else { next }
            }
        }
    }

    fn transition(&mut self, rule: &Rule, to: AlarmLevel, at: At, out: &mut Vec<Notification>) {
        let from = self.level;
        self.level = to;
        self.since_ms = at.ts;
        self.last_notified_ms = Some(at.ts);
        let threshold = match to {
            AlarmLevel::Ok => rule.threshold(from),
            _ => rule.threshold(to),
        };
        out.push(self.notification(rule, NotificationKind::Transition, from, threshold, at));
    }

    /// Emits a repeat when firing and `repeat_every` has passed since the last notification.
    fn repeat(&mut self, rule: &Rule, at: At, out: &mut Vec<Notification>) {
        let Some(every) = rule.repeat_every else {
            return;
        };
        if !self.level.is_firing() {
            return;
        }
        let last = self.last_notified_ms.unwrap_or(self.since_ms);
        if at.ts.saturating_sub(last) >= every.as_millis() {
            self.last_notified_ms = Some(at.ts);
            let threshold = rule.threshold(self.level);
            out.push(self.notification(rule, NotificationKind::Repeat, self.level, threshold, at));
        }
    }

    fn notification(
        &self,
        rule: &Rule,
        kind: NotificationKind,
        from: AlarmLevel,
        threshold: Option<f64>,
        at: At,
    ) -> Notification {
        Notification {
            kind,
            ts_ms: at.ts,
            rule_id: rule.id.clone(),
            rule_name: rule.name.clone(),
            description: rule.description.clone(),
            tags: self.tags.clone(),
            device: self.device.clone(),
            metric: rule.metric.clone(),
            from,
            to: self.level,
            value: if self.level == AlarmLevel::NoData {
                None
            } else {
                self.last_value
            },
            threshold,
            comparator: rule.comparator,
            statistic: rule.statistic,
            period_s: rule.period_ms() / 1000,
            since_ms: self.since_ms,
            offset: at.offset,
        }
    }
}

/// A period decided at its end: the notification time is the end, unless the trigger came earlier.
fn at_end(end: i64, at: At) -> At {
    At {
        ts: end.min(at.ts),
        ..at
    }
}

/// Latest timestamp evaluated (9999-12-31T23:59:59.999Z); samples outside `0..=MAX_TS` are ignored.
const MAX_TS: i64 = 253_402_300_799_999;

fn series_key(rule: &str, vm: &str, device: Option<&str>) -> String {
    format!("{rule}\u{1f}{vm}\u{1f}{}", device.unwrap_or(""))
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// 64-bit FNV-1a: a stable hash (unlike `std`'s) for digests and ids.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::rules::{Comparator, MOfN, Scope};

    const MIN: i64 = 60_000;

    fn rule() -> Rule {
        Rule {
            id: "cpu-high".into(),
            name: "CPU usage high".into(),
            description: None,
            scope: Scope::default(),
            metric: "cpu_utilization".into(),
            device: None,
            statistic: Statistic::Avg,
            period: "1m".parse().unwrap(),
            comparator: Comparator::Gt,
            warning: Some(80.0),
            critical: Some(90.0),
            fire: MOfN::default(),
            resolve: None,
            missing_data: MissingData::Missing,
            no_data_after: None,
            repeat_every: None,
            enabled: true,
        }
    }

    fn ev(rules: Vec<Rule>) -> Evaluator {
        Evaluator::new(RuleSet { v: 1, rules }).unwrap()
    }

    fn tags(vm: &str) -> Tags {
        Tags {
            ns: "ns-1".into(),
            mcis: "web".into(),
            vm: vm.into(),
            csp: "aws".into(),
            region: "us-east-1".into(),
            ..Tags::default()
        }
    }

    /// A test harness: one partition's state and its next offset.
    struct H {
        ev: Evaluator,
        state: AlarmState,
        offset: i64,
        tags: Tags,
    }

    impl H {
        fn new(rules: Vec<Rule>) -> Self {
            H {
                ev: ev(rules),
                state: AlarmState::default(),
                offset: 0,
                tags: tags("vm-1"),
            }
        }

        fn feed_dev(
            &mut self,
            ts: i64,
            metric: &str,
            device: Option<&str>,
            value: f64,
        ) -> Vec<Notification> {
            self.offset += 1;
            let s = Sample {
                ts_ms: ts,
                tags: &self.tags,
                metric,
                device,
                value,
            };
            self.ev.evaluate(&mut self.state, self.offset, [s])
        }

        fn feed(&mut self, ts: i64, value: f64) -> Vec<Notification> {
            self.feed_dev(ts, "cpu_utilization", None, value)
        }

        /// One sample per period (at +1s), for periods `first..`, returning every notification.
        fn periods(&mut self, first: i64, values: &[f64]) -> Vec<Notification> {
            let mut out = Vec::new();
            for (i, v) in values.iter().enumerate() {
                out.extend(self.feed((first + i as i64) * MIN + 1_000, *v));
            }
            out
        }

        fn level(&self) -> Option<AlarmLevel> {
            self.state.level("cpu-high", "vm-1", None)
        }
    }

    fn transitions(notes: &[Notification]) -> Vec<(AlarmLevel, AlarmLevel)> {
        notes.iter().map(|n| (n.from, n.to)).collect()
    }

    #[test]
    fn m_of_n_fires_on_the_third_breaching_period() {
        let mut r = rule();
        r.fire = MOfN { m: 3, n: 5 };
        let mut h = H::new(vec![r]);
        // Periods are decided when the next period's first sample arrives.
        assert!(h.periods(0, &[95.0, 50.0, 95.0, 50.0]).is_empty());
        let out = h.periods(4, &[95.0, 50.0]);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::Critical)]);
        let n = &out[0];
        assert_eq!(n.ts_ms, 5 * MIN, "decided at the period's end");
        assert_eq!(n.value, Some(95.0));
        assert_eq!(n.threshold, Some(90.0));
        assert_eq!(n.offset, Some(6));
        assert_eq!(n.since_ms, 5 * MIN);
        assert_eq!(n.kind, NotificationKind::Transition);
    }

    #[test]
    fn levels_escalate_deescalate_and_resolve() {
        let mut h = H::new(vec![rule()]);
        let out = h.periods(0, &[85.0, 95.0, 85.0, 50.0, 50.0]);
        assert_eq!(
            transitions(&out),
            [
                (AlarmLevel::Ok, AlarmLevel::Warning),
                (AlarmLevel::Warning, AlarmLevel::Critical),
                (AlarmLevel::Critical, AlarmLevel::Warning),
                (AlarmLevel::Warning, AlarmLevel::Ok),
            ]
        );
        assert_eq!(out[0].threshold, Some(80.0));
        assert_eq!(out[1].threshold, Some(90.0));
        // Resolved: the threshold that was crossed, and the severity of what resolved.
        assert_eq!(out[3].threshold, Some(80.0));
        assert_eq!(out[3].severity(), AlarmLevel::Warning);
        assert_eq!(h.level(), Some(AlarmLevel::Ok));
    }

    #[test]
    fn alternating_breach_and_ok_does_not_flap() {
        let mut r = rule();
        r.fire = MOfN { m: 3, n: 5 };
        let mut h = H::new(vec![r]);
        let alternating: Vec<f64> = (0..40)
            .map(|i| if i % 2 == 0 { 95.0 } else { 50.0 })
            .collect();
        let out = h.periods(0, &alternating);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::Critical)]);
        // Five good periods in a row resolve it (the default resolve window is all of fire.n).
        let out = h.periods(40, &[50.0; 6]);
        assert_eq!(transitions(&out), [(AlarmLevel::Critical, AlarmLevel::Ok)]);
    }

    #[test]
    fn explicit_resolve_window() {
        let mut r = rule();
        r.fire = MOfN { m: 2, n: 3 };
        r.resolve = Some(MOfN { m: 2, n: 3 });
        let mut h = H::new(vec![r]);
        let out = h.periods(0, &[95.0, 95.0, 50.0, 95.0, 50.0, 50.0, 50.0]);
        assert_eq!(
            transitions(&out),
            [
                (AlarmLevel::Ok, AlarmLevel::Critical),
                (AlarmLevel::Critical, AlarmLevel::Ok)
            ]
        );
        assert_eq!(out[1].ts_ms, 5 * MIN, "periods 2 and 4 of 2..=4 are OK");
    }

    #[test]
    fn missing_data_missing_goes_no_data_and_back() {
        let mut h = H::new(vec![rule()]);
        h.periods(0, &[50.0, 50.0]);
        // Silence: the last sample was at 1m01s; no_data_after defaults to fire.n periods (1m).
        assert!(h.ev.tick(&mut h.state, 2 * MIN).is_empty());
        let out = h.ev.tick(&mut h.state, 3 * MIN);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::NoData)]);
        assert_eq!(out[0].ts_ms, MIN + 1_000 + MIN);
        assert_eq!(out[0].value, None);
        assert_eq!(out[0].threshold, None);
        assert_eq!(out[0].offset, None);
        assert!(
            h.ev.tick(&mut h.state, 3 * MIN).is_empty(),
            "tick is idempotent"
        );
        assert!(h.ev.tick(&mut h.state, 10 * MIN).is_empty());
        // Data is back: leaves NO_DATA once a period with samples is decided.
        assert!(h.periods(20, &[50.0]).is_empty());
        let out = h.periods(21, &[50.0]);
        assert_eq!(transitions(&out), [(AlarmLevel::NoData, AlarmLevel::Ok)]);
    }

    #[test]
    fn no_data_after_is_configurable() {
        let mut r = rule();
        r.no_data_after = Some("10m".parse().unwrap());
        let mut h = H::new(vec![r]);
        h.periods(0, &[50.0]);
        assert!(h.ev.tick(&mut h.state, 10 * MIN).is_empty());
        let out = h.ev.tick(&mut h.state, 10 * MIN + 1_000);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::NoData)]);
    }

    #[test]
    fn missing_data_breaching_counts_silence_as_top_level() {
        let mut r = rule();
        r.missing_data = MissingData::Breaching;
        r.fire = MOfN { m: 2, n: 2 };
        let mut h = H::new(vec![r]);
        h.periods(0, &[50.0, 50.0]);
        // Period 1 closes at 2m, period 2 (empty) at 3m; the grace is 1m.
        assert!(h.ev.tick(&mut h.state, 4 * MIN).is_empty());
        let out = h.ev.tick(&mut h.state, 5 * MIN);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::Critical)]);
        assert_eq!(
            out[0].ts_ms,
            4 * MIN,
            "at the end of the second missing period"
        );
        assert_eq!(out[0].value, Some(50.0), "the last value seen");
    }

    #[test]
    fn missing_data_not_breaching_resolves_on_silence() {
        let mut r = rule();
        r.missing_data = MissingData::NotBreaching;
        let mut h = H::new(vec![r]);
        let out = h.periods(0, &[95.0, 95.0]);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::Critical)]);
        let out = h.ev.tick(&mut h.state, 4 * MIN);
        assert_eq!(transitions(&out), [(AlarmLevel::Critical, AlarmLevel::Ok)]);
        assert!(h.ev.tick(&mut h.state, 100 * MIN).is_empty());
    }

    #[test]
    fn missing_data_ignore_keeps_the_state() {
        let mut r = rule();
        r.missing_data = MissingData::Ignore;
        let mut h = H::new(vec![r]);
        h.periods(0, &[95.0, 95.0]);
        assert_eq!(h.level(), Some(AlarmLevel::Critical));
        assert!(h.ev.tick(&mut h.state, 60 * MIN).is_empty());
        assert_eq!(h.level(), Some(AlarmLevel::Critical));
        // The next period with data decides.
        let out = h.periods(61, &[50.0, 50.0]);
        assert_eq!(transitions(&out), [(AlarmLevel::Critical, AlarmLevel::Ok)]);
    }

    #[test]
    fn repeats_at_the_interval_while_firing() {
        let mut r = rule();
        r.repeat_every = Some("1h".parse().unwrap());
        r.missing_data = MissingData::Ignore;
        let mut h = H::new(vec![r]);
        let out = h.periods(0, &[95.0, 95.0]);
        assert_eq!(out.len(), 1);
        let fired_at = out[0].ts_ms;
        assert!(h.ev.tick(&mut h.state, fired_at + 30 * MIN).is_empty());
        let out = h.ev.tick(&mut h.state, fired_at + 61 * MIN);
        assert_eq!(out.len(), 1);
        let n = &out[0];
        assert_eq!(n.kind, NotificationKind::Repeat);
        assert_eq!((n.from, n.to), (AlarmLevel::Critical, AlarmLevel::Critical));
        assert_eq!(n.since_ms, fired_at, "since the transition, not the repeat");
        assert!(h.ev.tick(&mut h.state, fired_at + 61 * MIN).is_empty());
        assert!(h.ev.tick(&mut h.state, fired_at + 120 * MIN).is_empty());
        assert_eq!(h.ev.tick(&mut h.state, fired_at + 122 * MIN).len(), 1);
        // Resolved: no more repeats.
        h.periods(200, &[50.0, 50.0]);
        assert!(h.ev.tick(&mut h.state, 400 * MIN).is_empty());
    }

    #[test]
    fn early_decision_notifies_on_the_breaching_sample() {
        let mut r = rule();
        r.statistic = Statistic::Max;
        r.comparator = Comparator::Ge;
        r.period = "5m".parse().unwrap();
        let mut h = H::new(vec![r]);
        assert!(h.feed(10_000, 50.0).is_empty());
        let out = h.feed(20_000, 85.0);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::Warning)]);
        assert_eq!(
            out[0].ts_ms, 20_000,
            "seconds after the sample, not a period later"
        );
        let out = h.feed(30_000, 99.0);
        assert_eq!(
            transitions(&out),
            [(AlarmLevel::Warning, AlarmLevel::Critical)]
        );
        assert!(h.feed(40_000, 10.0).is_empty());
        // Closing the period changes nothing; the next good period resolves.
        assert!(h.feed(5 * MIN + 1_000, 10.0).is_empty());
        let out = h.feed(10 * MIN + 1_000, 10.0);
        assert_eq!(transitions(&out), [(AlarmLevel::Critical, AlarmLevel::Ok)]);

        // An average is not settled by one sample: it waits for the period to end.
        let mut r = rule();
        r.period = "5m".parse().unwrap();
        let mut h = H::new(vec![r]);
        assert!(h.feed(10_000, 99.0).is_empty());
        let out = h.feed(5 * MIN + 1_000, 10.0);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::Critical)]);
    }

    #[test]
    fn early_decision_for_min_below() {
        let mut r = rule();
        r.metric = "cpu_idle".into();
        r.statistic = Statistic::Min;
        r.comparator = Comparator::Lt;
        r.warning = Some(20.0);
        r.critical = Some(5.0);
        let mut h = H::new(vec![r]);
        assert!(h.feed_dev(1_000, "cpu_idle", None, 50.0).is_empty());
        let out = h.feed_dev(2_000, "cpu_idle", None, 3.0);
        assert_eq!(transitions(&out), [(AlarmLevel::Ok, AlarmLevel::Critical)]);
    }

    #[test]
    fn rate_rules_use_per_second_rates_and_skip_resets() {
        let mut r = rule();
        r.metric = "bytes_in_rate".into();
        r.device = Some("eth0".into());
        r.warning = Some(1000.0);
        r.critical = None;
        let mut h = H::new(vec![r]);
        let mut out = Vec::new();
        let mut feed = |h: &mut H, ts: i64, v: f64| {
            out.extend(h.feed_dev(ts, "bytes_in", Some("eth0"), v));
        };
        // Period 0: 500 B/s. Period 1: 2000 B/s. Period 2: a reset, then 100 B/s.
        for (i, v) in [0.0, 5_000.0, 10_000.0, 15_000.0, 20_000.0, 25_000.0]
            .iter()
            .enumerate()
        {
            feed(&mut h, i as i64 * 10_000, *v);
        }
        for i in 0..6 {
            feed(
                &mut h,
                MIN + i * 10_000,
                25_000.0 + (i + 1) as f64 * 20_000.0,
            );
        }
        for (i, v) in [100.0, 1_100.0, 2_100.0].iter().enumerate() {
            feed(&mut h, 2 * MIN + i as i64 * 10_000, *v);
        }
        feed(&mut h, 3 * MIN, 3_100.0);
        assert_eq!(
            transitions(&out),
            [
                (AlarmLevel::Ok, AlarmLevel::Warning),
                (AlarmLevel::Warning, AlarmLevel::Ok)
            ]
        );
        assert_eq!(out[0].value, Some(2000.0));
        assert_eq!(
            out[1].value,
            Some(100.0),
            "the reset yields no (negative) rate"
        );
        assert_eq!(out[0].metric, "bytes_in_rate");
        assert_eq!(out[0].device.as_deref(), Some("eth0"));
        // Another device is not watched.
        assert!(
            h.feed_dev(4 * MIN, "bytes_in", Some("eth1"), 1.0)
                .is_empty()
        );
        assert_eq!(h.state.series_count(), 1);

        // A reset never counts as a negative rate.
        let mut r = rule();
        r.metric = "bytes_in_rate".into();
        r.statistic = Statistic::Min;
        r.comparator = Comparator::Lt;
        r.warning = Some(0.0);
        r.critical = None;
        let mut h = H::new(vec![r]);
        let mut out = Vec::new();
        for (i, v) in [100.0, 200.0, 5.0, 10.0, 1.0, 2.0].iter().enumerate() {
            out.extend(h.feed_dev(i as i64 * 20_000, "bytes_in", Some("eth0"), *v));
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn replayed_offsets_do_not_notify() {
        let mut h = H::new(vec![rule()]);
        h.periods(0, &[50.0]);
        let persisted = h.state.clone();
        let batch: Vec<(i64, i64, f64)> = (1..4).map(|i| (i + 1, i * MIN + 1_000, 95.0)).collect();
        let run = |state: &mut AlarmState, ev: &Evaluator, tags: &Tags| {
            let mut out = Vec::new();
            for &(offset, ts, v) in &batch {
                let s = Sample {
                    ts_ms: ts,
                    tags,
                    metric: "cpu_utilization",
                    device: None,
                    value: v,
                };
                out.extend(ev.evaluate(state, offset, [s]));
            }
            out
        };
        let first = run(&mut h.state, &h.ev, &h.tags);
        assert_eq!(first.len(), 1);
        assert_eq!(h.state.last_offset(), Some(4));
        // The adapter persisted the state after the batch; the batch is delivered again.
        let mut reloaded: AlarmState =
            serde_json::from_str(&serde_json::to_string(&h.state).unwrap()).unwrap();
        assert!(run(&mut reloaded, &h.ev, &h.tags).is_empty());
        assert_eq!(reloaded, h.state);
        // The state from before the batch replays it identically (a failed batch is retried).
        let mut before = persisted;
        assert_eq!(run(&mut before, &h.ev, &h.tags), first);
    }

    #[test]
    fn state_serde_round_trip_continues_identically() {
        let mut r = rule();
        r.fire = MOfN { m: 2, n: 3 };
        let mut rate = rule();
        rate.id = "net".into();
        rate.metric = "bytes_in_rate".into();
        let mut h = H::new(vec![r, rate]);
        h.periods(0, &[95.0, 50.0]);
        h.feed(2 * MIN + 5_000, 97.0); // an open period
        h.feed_dev(2 * MIN, "bytes_in", Some("eth0"), 1e6);
        let json = serde_json::to_string(&h.state).unwrap();
        let back: AlarmState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h.state);
        let mut other = H {
            ev: h.ev.clone(),
            state: back,
            offset: h.offset,
            tags: h.tags.clone(),
        };
        let a = h.periods(3, &[95.0, 95.0]);
        let b = other.periods(3, &[95.0, 95.0]);
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn scope_and_devices_select_series() {
        let mut r = rule();
        r.scope.ns = vec!["ns-2".into()];
        let mut h = H::new(vec![r]);
        assert!(h.periods(0, &[95.0, 95.0]).is_empty());
        assert_eq!(h.state.series_count(), 0);

        let mut disk = rule();
        disk.id = "disk".into();
        disk.metric = "disk_utilization".into();
        disk.statistic = Statistic::Last;
        let mut h = H::new(vec![disk]);
        h.feed_dev(1_000, "disk_utilization", Some("/"), 50.0);
        h.feed_dev(1_000, "disk_utilization", Some("/data"), 95.0);
        let out = h.feed_dev(MIN + 1_000, "disk_utilization", Some("/data"), 95.0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].device.as_deref(), Some("/data"));
        assert_eq!(h.state.series_count(), 2);
        assert_eq!(
            h.state.level("disk", "vm-1", Some("/")),
            Some(AlarmLevel::Ok)
        );
        let firing: Vec<_> = h.state.firing().collect();
        assert_eq!(firing.len(), 1);
        assert_eq!(firing[0].2, Some("/data"));
    }

    #[test]
    fn late_samples_are_dropped() {
        let mut r = rule();
        r.statistic = Statistic::Max;
        let mut h = H::new(vec![r]);
        h.periods(0, &[50.0, 50.0]);
        // Period 0 is decided; a late 99 for it changes nothing.
        assert!(h.feed(30_000, 99.0).is_empty());
        assert_eq!(h.level(), Some(AlarmLevel::Ok));
        // Absurd timestamps are ignored rather than overflowing period arithmetic.
        assert!(h.feed(i64::MIN, 99.0).is_empty());
        assert!(h.feed(i64::MAX, 99.0).is_empty());
        assert!(h.ev.tick(&mut h.state, i64::MIN).is_empty());
    }

    #[test]
    fn rule_edits_keep_state_and_removals_drop_it() {
        let mut h = H::new(vec![rule()]);
        h.periods(0, &[85.0, 85.0]);
        assert_eq!(h.level(), Some(AlarmLevel::Warning));
        // A threshold edit keeps the state and re-levels the stored periods.
        let mut edited = rule();
        edited.warning = Some(70.0);
        edited.critical = Some(84.0);
        h.ev = ev(vec![edited]);
        assert!(h.ev.tick(&mut h.state, 2 * MIN).is_empty());
        assert_eq!(h.level(), Some(AlarmLevel::Warning));
        let out = h.periods(2, &[85.0]);
        assert_eq!(
            transitions(&out),
            [(AlarmLevel::Warning, AlarmLevel::Critical)]
        );
        // A period edit clears the collected periods but keeps the state.
        let mut longer = rule();
        longer.period = "5m".parse().unwrap();
        h.ev = ev(vec![longer]);
        assert!(h.feed(3 * MIN + 1_000, 50.0).is_empty());
        assert_eq!(h.level(), Some(AlarmLevel::Critical));
        // A disabled or removed rule's states are dropped.
        let mut off = rule();
        off.enabled = false;
        h.ev = ev(vec![off]);
        assert!(h.ev.tick(&mut h.state, 4 * MIN).is_empty());
        assert_eq!(h.state.series_count(), 0);
    }

    #[test]
    fn long_silent_series_are_forgotten() {
        let mut r = rule();
        r.missing_data = MissingData::Ignore;
        let mut h = H::new(vec![r]);
        h.periods(0, &[50.0]);
        h.ev.tick(&mut h.state, 23 * 60 * MIN);
        assert_eq!(h.state.series_count(), 1);
        h.ev.tick(&mut h.state, 25 * 60 * MIN);
        assert_eq!(h.state.series_count(), 0);
    }

    #[test]
    fn evaluates_metric_messages() {
        let msg = MetricMessage::from_json(
            br#"{"v":1,"ts":61000,"tags":{"ns":"ns-1","mcis":"web","vm":"vm-9"},
                "metrics":{"cpu_utilization":99.0,"mem_utilization":10.0},
                "devices":{"/data":{"disk_utilization":99.0}}}"#,
        )
        .unwrap();
        assert_eq!(samples(&msg).count(), 3);
        let mut r = rule();
        r.statistic = Statistic::Max; // decided early
        let mut disk = rule();
        disk.id = "disk".into();
        disk.metric = "disk_utilization".into();
        disk.statistic = Statistic::Max;
        let ev = ev(vec![r, disk]);
        let mut state = AlarmState::default();
        let out = ev.evaluate_message(&mut state, 7, &msg);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|n| n.to == AlarmLevel::Critical && n.offset == Some(7))
        );
        assert!(ev.evaluate_message(&mut state, 7, &msg).is_empty());
        assert_ne!(out[0].dedup_id(), out[1].dedup_id());
        assert_eq!(out[0].dedup_id().len(), 16);
    }
}
