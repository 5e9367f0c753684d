//! Alarm rules: the JSON rule set (`schemas/alarm-rules.v1.schema.json`), its serde types and validation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use damselfly_schemas::Tags;
use damselfly_schemas::catalog::{self, Kind};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::rates::RATE_SUFFIX;

use super::eval::AlarmLevel;

/// The only rule set version this build reads and writes.
pub const RULES_VERSION: u32 = 1;

/// Longest rule id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Largest `n` of an M-out-of-N window.
pub const MAX_WINDOW: u32 = 100;

/// Longest period accepted.
pub const MAX_PERIOD: Duration = Duration::from_secs(86_400);

/// Shortest repeat interval accepted (an e-mail every few seconds helps nobody).
pub const MIN_REPEAT: Duration = Duration::from_secs(60);

/// Tag names a scope's `tags` filter may use (the identity tags have their own lists).
pub const SCOPE_TAG_KEYS: [&str; 3] = ["region", "os", "host"];

/// A set of alarm rules (`schemas/alarm-rules.v1.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Rule set format version; always 1 here.
    pub v: u32,
    /// The rules, each with a unique id.
    pub rules: Vec<Rule>,
}

/// One alarm rule: which series, which statistic over which period, which thresholds, and when to fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable identifier: letters, digits, `-`, `_`, `.`; keys the alarm states, so keep it across edits.
    pub id: String,
    /// Human-readable name, shown in notifications.
    pub name: String,
    /// Free text appended to notifications (what to do, who owns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Which VMs the rule watches; absent or `{}` means every VM.
    #[serde(default, skip_serializing_if = "Scope::is_all")]
    pub scope: Scope,
    /// Metric name as published (`cpu_utilization`), or `{counter}_rate` for a counter's per-second rate.
    pub metric: String,
    /// Only this device (mount point, block device, interface); absent means one alarm per device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// How each period's samples are reduced to one value.
    pub statistic: Statistic,
    /// Length of a period (`"1m"`, `"5m"`); periods are aligned to multiples of it since the epoch.
    pub period: HumanDuration,
    /// How a period's value is compared with the thresholds (`value <comparator> threshold` breaches).
    pub comparator: Comparator,
    /// Threshold of the WARNING level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<f64>,
    /// Threshold of the CRITICAL level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<f64>,
    /// Fire when at least `m` of the last `n` periods breach (default 1 of 1).
    #[serde(default)]
    pub fire: MOfN,
    /// Resolve when at least `m` of the last `n` periods are below the level (default: all `fire.n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<MOfN>,
    /// How periods without samples count (CloudWatch semantics; default `missing`).
    #[serde(default)]
    pub missing_data: MissingData,
    /// With `missing_data: missing`, NO_DATA after this long without a sample (default `fire.n` periods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data_after: Option<HumanDuration>,
    /// Notify again at this interval while WARNING, CRITICAL or NO_DATA; absent means transitions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_every: Option<HumanDuration>,
    /// Whether the rule is evaluated; a disabled rule's alarm states are dropped.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

/// Which VMs a rule watches: every non-empty list must contain the VM's tag, every `tags` entry must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ns: Vec<String>,
    /// Multi-cloud infra services (VM groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcis: Vec<String>,
    /// VM ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vm: Vec<String>,
    /// Cloud service providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub csp: Vec<String>,
    /// Exact matches on other tags (`region`, `os`, `host`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// How a period's samples are reduced to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistic {
    /// Mean of the samples.
    Avg,
    /// Smallest sample.
    Min,
    /// Largest sample.
    Max,
    /// The latest sample.
    Last,
}

/// How a value is compared with a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Comparator {
    /// Breaches above the threshold.
    #[serde(rename = ">")]
    Gt,
    /// Breaches at or above the threshold.
    #[serde(rename = ">=")]
    Ge,
    /// Breaches below the threshold.
    #[serde(rename = "<")]
    Lt,
    /// Breaches at or below the threshold.
    #[serde(rename = "<=")]
    Le,
    /// Breaches at exactly the threshold.
    #[serde(rename = "==")]
    Eq,
}

/// How periods without any sample count (CloudWatch's `TreatMissingData`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingData {
    /// Missing periods count neither way; a series silent for `no_data_after` goes NO_DATA.
    #[default]
    Missing,
    /// Missing periods count as breaching at the rule's highest level.
    Breaching,
    /// Missing periods count as OK.
    NotBreaching,
    /// Missing periods are skipped: the state stays as it is.
    Ignore,
}

/// "At least `m` of the last `n` periods".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MOfN {
    /// How many periods must agree.
    pub m: u32,
    /// How many of the latest decided periods are looked at.
    pub n: u32,
}

impl Default for MOfN {
    fn default() -> Self {
        MOfN { m: 1, n: 1 }
    }
}

/// A duration written the humantime way in JSON (`"90s"`, `"1m"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration such as \"90s\", \"1m\" or \"1h\": {e}"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl HumanDuration {
    /// The duration in whole milliseconds (saturating).
    pub fn as_millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Why a rule set is not valid; each message names the field and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// The bytes are not JSON of the rule set shape (unknown field, wrong type, bad duration...).
    #[error("not a v1 alarm rule set: {0}")]
    Json(String),
    /// The `v` field names a version this build does not read.
    #[error("unsupported rule set version {0}: set \"v\": 1")]
    Version(u32),
    /// Two rules share an id.
    #[error("rule id `{0}` is used by more than one rule: give each rule its own `id`")]
    DuplicateId(String),
    /// One field of one rule is invalid.
    #[error("rule `{rule}`: `{field}` {message}")]
    Field {
        /// The rule's id (or `#index` when the id itself is empty).
        rule: String,
        /// The offending field, as written in JSON (`fire.m`, `scope.tags`).
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl RuleError {
    /// The JSON field the error is about, when it is about one field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RuleError::Field { field, .. } => Some(field),
            RuleError::Version(_) => Some("v"),
            RuleError::DuplicateId(_) => Some("id"),
            RuleError::Json(_) => None,
        }
    }
}

impl RuleSet {
    /// Parses and validates a rule set from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RuleError> {
        let set: RuleSet =
            serde_json::from_slice(bytes).map_err(|e| RuleError::Json(e.to_string()))?;
        set.validate()?;
        Ok(set)
    }

    /// Serializes the rule set as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what the types cannot: the version, unique ids, and every rule (see [`Rule::validate`]).
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.v != RULES_VERSION {
            return Err(RuleError::Version(self.v));
        }
        let mut ids = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate_as(&format!("#{i}"))?;
            if !ids.insert(rule.id.as_str()) {
                return Err(RuleError::DuplicateId(rule.id.clone()));
            }
        }
        Ok(())
    }

    /// The rule with this id.
    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

impl Rule {
    /// Checks the rule's values; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), RuleError> {
        self.validate_as("#0")
    }

    /// Checks the rule's values, naming the rule `fallback` in the error when its id is empty.
    fn validate_as(&self, fallback: &str) -> Result<(), RuleError> {
        self.check_fields()
            .map_err(|(field, message)| RuleError::Field {
                rule: if self.id.is_empty() {
                    fallback.to_string()
                } else {
                    self.id.clone()
                },
                field,
                message,
            })
    }

    /// Checks every field; the first invalid one as (field, message).
    fn check_fields(&self) -> Result<(), (&'static str, String)> {
        self.check_names()?;
        self.scope.validate()?;
        self.check_series()?;
        let p = self.period.0;
        if p < Duration::from_secs(1) || p > MAX_PERIOD || p.subsec_nanos() != 0 {
            return Err((
                "period",
                format!(
                    "is {}: use whole seconds between 1s and 1day (e.g. \"1m\")",
                    self.period
                ),
            ));
        }
        self.check_thresholds()?;
        check_window(self.fire, "fire.m", "fire.n")?;
        if let Some(r) = self.resolve {
            check_window(r, "resolve.m", "resolve.n")?;
        }
        self.check_notifications()
    }

    /// Checks `id`, `name` and `description`.
    fn check_names(&self) -> Result<(), (&'static str, String)> {
        if self.id.is_empty()
            || self.id.len() > MAX_ID_LEN
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err((
                "id",
                format!(
                    "`{}` is not a rule id: use 1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`",
                    self.id
                ),
            ));
        }
        if !is_text(&self.name, 200) {
            return Err((
                "name",
                "must be 1 to 200 characters without control characters".into(),
            ));
        }
        if let Some(d) = &self.description
            && d.chars().count() > 2000
        {
            return Err((
                "description",
                "is longer than 2000 characters: shorten it".into(),
            ));
        }
        Ok(())
    }

    /// Checks `metric` and `device`, the series the rule watches.
    fn check_series(&self) -> Result<(), (&'static str, String)> {
        if !is_metric_name(&self.metric) {
            return Err((
                "metric",
                format!(
                    "`{}` is not a metric name: use lowercase letters, digits and `_`, at most 64 bytes (e.g. `cpu_utilization`)",
                    self.metric
                ),
            ));
        }
        if catalog::lookup(&self.metric).is_some_and(|m| m.kind == Kind::Counter) {
            return Err((
                "metric",
                format!(
                    "`{0}` is a counter (a running total): alarm on its per-second rate `{0}{RATE_SUFFIX}` instead",
                    self.metric
                ),
            ));
        }
        if let Some(d) = &self.device
            && !is_text(d, 256)
        {
            return Err((
                "device",
                "must be 1 to 256 characters without control characters; omit it to watch every device".into(),
            ));
        }
        Ok(())
    }

    /// Checks `warning` and `critical`: at least one, finite, and in the comparator's order.
    fn check_thresholds(&self) -> Result<(), (&'static str, String)> {
        match (self.warning, self.critical) {
            (None, None) => Err((
                "critical",
                "and `warning` are both absent: set at least one threshold".into(),
            )),
            (Some(w), _) if !w.is_finite() => Err(("warning", "must be a finite number".into())),
            (_, Some(c)) if !c.is_finite() => Err(("critical", "must be a finite number".into())),
            (Some(w), Some(c)) => {
                let ok = match self.comparator {
                    Comparator::Gt | Comparator::Ge => c > w,
                    Comparator::Lt | Comparator::Le => c < w,
                    Comparator::Eq => c != w,
                };
                if ok {
                    return Ok(());
                }
                let hint = match self.comparator {
                    Comparator::Gt | Comparator::Ge => "greater than",
                    Comparator::Lt | Comparator::Le => "less than",
                    Comparator::Eq => "different from",
                };
                Err((
                    "critical",
                    format!(
                        "({c}) must be {hint} `warning` ({w}) with comparator `{}`: swap them or drop one",
                        self.comparator
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks `no_data_after` (only with missing data treated as missing, at least one period)
    /// and `repeat_every`.
    fn check_notifications(&self) -> Result<(), (&'static str, String)> {
        if let Some(d) = self.no_data_after {
            if self.missing_data != MissingData::Missing {
                return Err((
                    "no_data_after",
                    format!(
                        "only applies with `missing_data: \"missing\"` (this rule has `{}`): remove it",
                        self.missing_data
                    ),
                ));
            }
            if d.0 < self.period.0 {
                return Err((
                    "no_data_after",
                    format!(
                        "({d}) is shorter than `period` ({}): make it at least one period",
                        self.period
                    ),
                ));
            }
        }
        if let Some(r) = self.repeat_every
            && r.0 < MIN_REPEAT
        {
            return Err((
                "repeat_every",
                format!("({r}) is shorter than 1m: use \"1m\" or more, or remove it"),
            ));
        }
        Ok(())
    }

    /// The period in milliseconds.
    pub fn period_ms(&self) -> i64 {
        self.period.as_millis().max(1)
    }

    /// The resolve window: `resolve`, or all of the last `fire.n` periods.
    pub fn resolve_window(&self) -> MOfN {
        self.resolve.unwrap_or(MOfN {
            m: self.fire.n,
            n: self.fire.n,
        })
    }

    /// How long without a sample makes the alarm NO_DATA (only with `missing_data: missing`).
    pub fn no_data_after_ms(&self) -> i64 {
        match self.no_data_after {
            Some(d) => d.as_millis(),
            None => self.period_ms().saturating_mul(i64::from(self.fire.n)),
        }
    }

    /// Whether the rule watches this VM's series of this device.
    pub fn applies_to(&self, tags: &Tags, device: Option<&str>) -> bool {
        self.scope.matches(tags) && self.device.as_deref().is_none_or(|d| device == Some(d))
    }

    /// The counter whose rate the rule watches, when `metric` is `{counter}_rate`.
    pub fn rate_of(&self) -> Option<&str> {
        self.metric
            .strip_suffix(RATE_SUFFIX)
            .filter(|c| catalog::lookup(c).is_some_and(|m| m.kind == Kind::Counter))
    }

    /// The level one period's value is at: CRITICAL, WARNING or OK.
    pub fn level_of(&self, value: f64) -> AlarmLevel {
        let breaches = |t: Option<f64>| t.is_some_and(|t| self.comparator.holds(value, t));
        if breaches(self.critical) {
            AlarmLevel::Critical
        } else if breaches(self.warning) {
            AlarmLevel::Warning
        } else {
            AlarmLevel::Ok
        }
    }

    /// The highest level the rule can reach (what a breaching missing period counts as).
    pub fn top_level(&self) -> AlarmLevel {
        if self.critical.is_some() {
            AlarmLevel::Critical
        } else {
            AlarmLevel::Warning
        }
    }

    /// The threshold of a level (`None` for OK and NO_DATA).
    pub fn threshold(&self, level: AlarmLevel) -> Option<f64> {
        match level {
            AlarmLevel::Critical => self.critical,
            AlarmLevel::Warning => self.warning,
            AlarmLevel::Ok | AlarmLevel::NoData => None,
        }
    }

    /// Whether one sample can already settle a period as breaching (max with `>`/`>=`, min with `<`/`<=`).
    pub fn decides_early(&self) -> bool {
        matches!(
            (self.statistic, self.comparator),
            (Statistic::Max, Comparator::Gt | Comparator::Ge)
                | (Statistic::Min, Comparator::Lt | Comparator::Le)
        )
    }

    /// What changes to the rule invalidate collected periods (metric, device, statistic, period).
    pub(crate) fn basis(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.metric,
            self.device.as_deref().unwrap_or(""),
            self.statistic,
            self.period_ms()
        )
    }
}

impl Scope {
    /// Whether the scope is every VM.
    pub fn is_all(&self) -> bool {
        *self == Scope::default()
    }

    /// Whether a VM with these tags is in scope.
    pub fn matches(&self, tags: &Tags) -> bool {
        let within = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        within(&self.ns, &tags.ns)
            && within(&self.mcis, &tags.mcis)
            && within(&self.vm, &tags.vm)
            && within(&self.csp, &tags.csp)
            && self.tags.iter().all(|(k, v)| {
                let actual = match k.as_str() {
                    "region" => &tags.region,
                    "os" => &tags.os,
                    "host" => &tags.host,
                    _ => return false,
                };
                actual == v
            })
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, list) in [
            ("scope.ns", &self.ns),
            ("scope.mcis", &self.mcis),
            ("scope.vm", &self.vm),
            ("scope.csp", &self.csp),
        ] {
            if list.iter().any(|v| !is_text(v, 256)) {
                return Err((
                    field,
                    "has an empty or invalid entry: list non-empty tag values, or omit the list to match all".into(),
                ));
            }
        }
        for (k, v) in &self.tags {
            if !SCOPE_TAG_KEYS.contains(&k.as_str()) {
                return Err((
                    "scope.tags",
                    format!(
                        "has key `{k}`: use one of {SCOPE_TAG_KEYS:?} (ns, mcis, vm and csp have their own lists)"
                    ),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err((
                    "scope.tags",
                    format!("value of `{k}` contains control characters"),
                ));
            }
        }
        Ok(())
    }
}

impl Comparator {
    /// Whether `value <self> threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparator::Gt => value > threshold,
            Comparator::Ge => value >= threshold,
            Comparator::Lt => value < threshold,
            Comparator::Le => value <= threshold,
            Comparator::Eq => value == threshold,
        }
    }

    /// The comparator as written in rules (`>=`).
    pub fn symbol(self) -> &'static str {
        match self {
            Comparator::Gt => ">",
            Comparator::Ge => ">=",
            Comparator::Lt => "<",
            Comparator::Le => "<=",
            Comparator::Eq => "==",
        }
    }
}

impl fmt::Display for Comparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

impl Statistic {
    /// The statistic as written in rules (`avg`).
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Avg => "avg",
            Statistic::Min => "min",
            Statistic::Max => "max",
            Statistic::Last => "last",
        }
    }
}

impl fmt::Display for Statistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for MissingData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MissingData::Missing => "missing",
            MissingData::Breaching => "breaching",
            MissingData::NotBreaching => "not_breaching",
            MissingData::Ignore => "ignore",
        })
    }
}

fn check_window(
    w: MOfN,
    m_field: &'static str,
    n_field: &'static str,
) -> Result<(), (&'static str, String)> {
    if w.n == 0 || w.n > MAX_WINDOW {
        return Err((
            n_field,
            format!("is {}: use 1 to {MAX_WINDOW} periods", w.n),
        ));
    }
    if w.m == 0 || w.m > w.n {
        return Err((
            m_field,
            format!("is {} with n = {}: use 1 <= m <= n", w.m, w.n),
        ));
    }
    Ok(())
}

fn is_text(s: &str, max_chars: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn schemas_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
    }

    fn validator() -> jsonschema::Validator {
        let bytes = std::fs::read(schemas_dir().join("alarm-rules.v1.schema.json")).unwrap();
        let schema: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        jsonschema::validator_for(&schema).expect("the schema itself is valid")
    }

    fn json_files(sub: &str) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(schemas_dir().join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no examples under {sub}");
        files
    }

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

    #[test]
    fn examples_pass_schema_and_types() {
        let v = validator();
        for path in json_files("examples/alarm-rules") {
            let bytes = std::fs::read(&path).unwrap();
            let instance: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let errors: Vec<String> = v.iter_errors(&instance).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{}: schema says {errors:?}",
                path.display()
            );
            let set = RuleSet::from_json(&bytes)
                .unwrap_or_else(|e| panic!("{}: types say {e}", path.display()));
            assert!(!set.rules.is_empty());
            // What we write back is what we read, and the schema still accepts it.
            let again = RuleSet::from_json(set.to_json().as_bytes()).unwrap();
            assert_eq!(again, set);
            assert!(v.is_valid(&serde_json::to_value(&set).unwrap()));
        }
    }

    #[test]
    fn invalid_examples_fail_schema_and_types() {
        let v = validator();
        for path in json_files("examples/alarm-rules/invalid") {
            let bytes = std::fs::read(&path).unwrap();
            let instance: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(
                !v.is_valid(&instance),
                "{}: schema accepted it",
                path.display()
            );
            let err = RuleSet::from_json(&bytes)
                .expect_err(&format!("{}: types accepted it", path.display()));
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn sample_rule_set_uses_catalog_metrics() {
        let bytes = std::fs::read(schemas_dir().join("examples/alarm-rules/sample.json")).unwrap();
        let set = RuleSet::from_json(&bytes).unwrap();
        for r in &set.rules {
            let base = r.rate_of().unwrap_or(&r.metric);
            assert!(
                catalog::lookup(base).is_some(),
                "{} is not in the catalog",
                r.metric
            );
        }
    }

    fn field_of(r: &Rule) -> &'static str {
        r.validate().expect_err("invalid").field().unwrap()
    }

    #[test]
    fn validation_errors_name_the_field_and_the_fix() {
        assert!(rule().validate().is_ok());
        type Edit = Box<dyn Fn(&mut Rule)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("id", Box::new(|r| r.id = "cpu high!".into())),
            ("name", Box::new(|r| r.name = String::new())),
            ("metric", Box::new(|r| r.metric = "CPU".into())),
            ("metric", Box::new(|r| r.metric = "bytes_in".into())),
            ("device", Box::new(|r| r.device = Some(String::new()))),
            ("period", Box::new(|r| r.period = "500ms".parse().unwrap())),
            ("period", Box::new(|r| r.period = "2days".parse().unwrap())),
            (
                "critical",
                Box::new(|r| {
                    r.warning = None;
                    r.critical = None;
                }),
            ),
            ("critical", Box::new(|r| r.critical = Some(70.0))),
            ("warning", Box::new(|r| r.warning = Some(f64::NAN))),
            ("fire.m", Box::new(|r| r.fire = MOfN { m: 6, n: 5 })),
            ("fire.n", Box::new(|r| r.fire = MOfN { m: 1, n: 0 })),
            (
                "resolve.m",
                Box::new(|r| r.resolve = Some(MOfN { m: 0, n: 3 })),
            ),
            (
                "no_data_after",
                Box::new(|r| {
                    r.missing_data = MissingData::Ignore;
                    r.no_data_after = Some("5m".parse().unwrap());
                }),
            ),
            (
                "no_data_after",
                Box::new(|r| r.no_data_after = Some("10s".parse().unwrap())),
            ),
            (
                "repeat_every",
                Box::new(|r| r.repeat_every = Some("5s".parse().unwrap())),
            ),
            (
                "scope.tags",
                Box::new(|r| {
                    r.scope.tags.insert("zone".into(), "a".into());
                }),
            ),
            ("scope.vm", Box::new(|r| r.scope.vm = vec![String::new()])),
        ];
        for (field, edit) in cases {
            let mut r = rule();
            edit(&mut r);
            assert_eq!(field_of(&r), field, "{:?}", r.validate());
        }
        // Messages say how to fix it.
        let mut r = rule();
        r.metric = "bytes_in".into();
        let msg = r.validate().unwrap_err().to_string();
        assert!(msg.contains("bytes_in_rate"), "{msg}");
        let mut r = rule();
        r.comparator = Comparator::Lt;
        let msg = r.validate().unwrap_err().to_string();
        assert!(
            msg.contains("`critical`") && msg.contains("less than"),
            "{msg}"
        );
    }

    #[test]
    fn rule_set_checks_version_and_unique_ids() {
        let set = RuleSet {
            v: 1,
            rules: vec![rule(), rule()],
        };
        assert_eq!(
            set.validate(),
            Err(RuleError::DuplicateId("cpu-high".into()))
        );
        let set = RuleSet {
            v: 2,
            rules: vec![rule()],
        };
        assert_eq!(set.validate().unwrap_err().field(), Some("v"));
        let err = RuleSet::from_json(br#"{"v":1,"rules":[{"id":"x","nme":"typo"}]}"#).unwrap_err();
        assert!(
            matches!(err, RuleError::Json(ref m) if m.contains("nme")),
            "{err}"
        );
        let err = RuleSet::from_json(
            br#"{"v":1,"rules":[{"id":"x","name":"x","metric":"cpu_idle","statistic":"avg","period":"soon","comparator":"<","warning":5}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }

    #[test]
    fn scope_filters() {
        let tags = Tags {
            ns: "ns-1".into(),
            mcis: "web".into(),
            vm: "vm-1".into(),
            csp: "aws".into(),
            region: "us-east-1".into(),
            os: "linux".into(),
            host: "h1".into(),
        };
        let mut s = Scope::default();
        assert!(s.is_all() && s.matches(&tags));
        s.ns = vec!["ns-0".into(), "ns-1".into()];
        s.csp = vec!["aws".into()];
        assert!(s.matches(&tags));
        s.tags.insert("region".into(), "us-east-1".into());
        assert!(s.matches(&tags));
        s.tags.insert("os".into(), "windows".into());
        assert!(!s.matches(&tags));
        let s = Scope {
            vm: vec!["vm-2".into()],
            ..Scope::default()
        };
        assert!(!s.matches(&tags));
        let s = Scope {
            mcis: vec!["db".into()],
            ..Scope::default()
        };
        assert!(!s.matches(&tags));
        // The device filter.
        let mut r = rule();
        r.device = Some("/data".into());
        assert!(r.applies_to(&tags, Some("/data")));
        assert!(!r.applies_to(&tags, Some("/")));
        assert!(!r.applies_to(&tags, None));
    }

    #[test]
    fn levels_and_rates() {
        let r = rule();
        assert_eq!(r.level_of(95.0), AlarmLevel::Critical);
        assert_eq!(r.level_of(85.0), AlarmLevel::Warning);
        assert_eq!(r.level_of(80.0), AlarmLevel::Ok);
        let mut r = rule();
        r.metric = "bytes_in_rate".into();
        assert_eq!(r.rate_of(), Some("bytes_in"));
        r.metric = "custom_rate".into();
        assert_eq!(r.rate_of(), None);
        assert!(!rule().decides_early());
    }
}
