//! Import of CB-Dragonfly alert tasks (its Kapacitor-backed `AlertTaskReq` JSON) into alarm rules.
//!
//! CB-Dragonfly counts consecutive `event_duration` windows in which `metric <op> alert_threshold`
//! holds (Kapacitor's `stateCount`): WARNING at `warn_event_cnt`, CRITICAL at `critic_event_cnt`,
//! back to OK on the first window where it does not hold. Our rules have one M-of-N per rule, so a
//! task becomes up to two rules. Field by field:
//!
//! - `name` -> rule `name`; the rule `id` is the name in lowercase with other characters turned
//!   into `-`, suffixed `-warning` / `-critical`.
//! - `measurement` + `metric` -> `metric`: a catalog name is taken as is (a counter becomes its
//!   `_rate`); Telegraf field names are translated (`cpu`/`usage_idle` -> `cpu_idle`,
//!   `mem`/`used_percent` -> `mem_utilization`, `net`/`bytes_recv` -> `bytes_in_rate`, ...);
//!   `cpu`/`utilization` also resolves as `cpu_utilization`. Anything else is an error.
//! - `target_type` (`NS`, `MCIS`, `VM`, any case) and `target_id` -> `scope.ns`, `scope.mcis` or
//!   `scope.vm` = `[target_id]`.
//! - `event_duration` (`"30s"`, `"5m"`) -> `period`; `statistic` is `avg` (each window's mean).
//! - `alert_math_expression` -> `comparator`: CB-Dragonfly's words (`equal`, `greater`,
//!   `equalgreater`, `less`, `equalless`), an operator (`>`, `>=`, `<`, `<=`, `==`, `=`), or a
//!   whole expression `usage_idle < 20` whose left side is the metric and right side the threshold.
//! - `alert_threshold` -> `warning` of the `-warning` rule and `critical` of the `-critical` rule.
//! - `warn_event_cnt` -> `fire` = `{m: cnt, n: cnt}` (cnt consecutive periods) of the `-warning`
//!   rule; `critic_event_cnt` the same for `-critical`; a count of 0 means no such rule. Both rules
//!   `resolve` on `{m: 1, n: 1}`, as `stateCount` resets on the first good window.
//! - `missing_data` is `ignore`: CB-Dragonfly never alerted on silence.
//! - `alert_event_message_email` (or else `alert_event_message`) -> `description`, shown in the body.
//! - `alert_event_type`, `alert_event_name`, `alert_post_url` (Slack/SMTP/HTTP handler) are not
//!   imported: delivery is an SNS subscription, filtered on the `rule`/`severity` attributes.

use serde::{Deserialize, Serialize};

use crate::rates;
use damselfly_schemas::catalog;

use super::rules::{
    Comparator, HumanDuration, MOfN, MissingData, RULES_VERSION, Rule, RuleError, RuleSet, Scope,
    Statistic,
};

/// One CB-Dragonfly alert task as its API takes and lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CbAlertTask {
    /// Task name.
    pub name: String,
    /// InfluxDB measurement (`cpu`, `mem`, `disk`, `net`, ...).
    pub measurement: String,
    /// `NS`, `MCIS` or `VM`.
    pub target_type: String,
    /// Id of the namespace, MCIS or VM.
    pub target_id: String,
    /// Window length (`"30s"`, `"5m"`).
    pub event_duration: String,
    /// Field of the measurement; optional when `alert_math_expression` names it.
    #[serde(default)]
    pub metric: Option<String>,
    /// Comparison: `greater`, `>=`, or `usage_idle < 20`.
    pub alert_math_expression: String,
    /// Threshold; optional when `alert_math_expression` carries it.
    #[serde(default)]
    pub alert_threshold: Option<f64>,
    /// Consecutive windows for WARNING (0: none).
    #[serde(default)]
    pub warn_event_cnt: u32,
    /// Consecutive windows for CRITICAL (0: none).
    #[serde(default)]
    pub critic_event_cnt: u32,
    /// Event handler type (`slack`, `smtp`); not imported.
    #[serde(default)]
    pub alert_event_type: Option<String>,
    /// Event handler name; not imported.
    #[serde(default)]
    pub alert_event_name: Option<String>,
    /// Message text; becomes the description when there is no e-mail message.
    #[serde(default)]
    pub alert_event_message: Option<String>,
    /// E-mail message text; becomes the description.
    #[serde(default)]
    pub alert_event_message_email: Option<String>,
    /// HTTP handler URL; not imported.
    #[serde(default)]
    pub alert_post_url: Option<String>,
}

/// Why an alert task does not map onto rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    /// The bytes are not a CB-Dragonfly alert task or a list of them.
    #[error("not a CB-Dragonfly alert task (or list of them): {0}")]
    Json(String),
    /// One field of one task cannot be mapped.
    #[error("alert task `{task}`: `{field}` {message}")]
    Field {
        /// The task's name.
        task: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The mapped rules are not valid.
    #[error("alert task mapped to an invalid rule: {0}")]
    Rule(#[from] RuleError),
}

/// Maps one alert task onto its rules (`-warning` and/or `-critical`), validated.
pub fn import_alert_task(task: &CbAlertTask) -> Result<Vec<Rule>, ImportError> {
    let rules = map_task(task).map_err(|(field, message)| ImportError::Field {
        task: task.name.clone(),
        field,
        message,
    })?;
    for r in &rules {
        r.validate()?;
    }
    Ok(rules)
}

/// Maps a task's fields onto its rules, not yet validated; the first field that does not map as
/// (field, message).
fn map_task(task: &CbAlertTask) -> Result<Vec<Rule>, (&'static str, String)> {
    let (metric, comparator, threshold) = map_comparison(task)?;
    let scope = map_scope(task)?;
    let period: HumanDuration = task
        .event_duration
        .parse()
        .map_err(|e: String| ("event_duration", e))?;
    let base = slug(&task.name);
    let description = task
        .alert_event_message_email
        .clone()
        .or_else(|| task.alert_event_message.clone())
        .filter(|d| !d.trim().is_empty());
    let make = |level: &str, count: u32, warning: Option<f64>, critical: Option<f64>| Rule {
        id: format!("{base}-{level}"),
        name: format!("{} ({level})", task.name),
        description: description.clone(),
        scope: scope.clone(),
        metric: metric.clone(),
        device: None,
        statistic: Statistic::Avg,
        period,
        comparator,
        warning,
        critical,
        fire: MOfN { m: count, n: count },
        resolve: Some(MOfN { m: 1, n: 1 }),
        missing_data: MissingData::Ignore,
        no_data_after: None,
        repeat_every: None,
        enabled: true,
    };
    let mut rules = Vec::new();
    if task.warn_event_cnt > 0 {
        rules.push(make("warning", task.warn_event_cnt, Some(threshold), None));
    }
    if task.critic_event_cnt > 0 {
        rules.push(make(
            "critical",
            task.critic_event_cnt,
            None,
            Some(threshold),
        ));
    }
    if rules.is_empty() {
        return Err((
            "critic_event_cnt",
            "and warn_event_cnt are both 0: set at least one count".into(),
        ));
    }
    Ok(rules)
}

/// The comparison a task alerts on: the Damselfly metric, the comparator and the threshold, from
/// `alert_math_expression`, `metric`, `measurement` and `alert_threshold`, which must agree.
fn map_comparison(task: &CbAlertTask) -> Result<(String, Comparator, f64), (&'static str, String)> {
    let (expr_metric, comparator, expr_threshold) = parse_expression(&task.alert_math_expression)
        .ok_or_else(|| {
            (
                "alert_math_expression",
                format!(
                    "`{}` is not a comparison: use greater, equalgreater, less, equalless, equal, an operator, or `field < number`",
                    task.alert_math_expression
                ),
            )
        })?;
    let field = match (expr_metric, task.metric.as_deref()) {
        (Some(e), Some(m)) if e != m => {
            return Err((
                "metric",
                format!("`{m}` differs from `{e}` in alert_math_expression: make them agree"),
            ));
        }
        (Some(e), _) => e,
        (None, Some(m)) if !m.trim().is_empty() => m.trim().to_string(),
        (None, _) => {
            return Err((
                "metric",
                "is missing: set `metric` or write it in alert_math_expression".into(),
            ));
        }
    };
    let metric = map_metric(&task.measurement, &field).ok_or_else(|| {
        (
            "metric",
            format!(
                "`{}`/`{field}` has no Damselfly metric: use a catalog name such as cpu_utilization",
                task.measurement
            ),
        )
    })?;
    let threshold = match (expr_threshold, task.alert_threshold) {
        (Some(a), Some(b)) if a != b => {
            return Err((
                "alert_threshold",
                format!("{b} differs from {a} in alert_math_expression: make them agree"),
            ));
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Err(("alert_threshold", "is missing".into())),
    };
    Ok((metric, comparator, threshold))
}

/// The scope a task's `target_type` and `target_id` name: one namespace, MCIS or VM.
fn map_scope(task: &CbAlertTask) -> Result<Scope, (&'static str, String)> {
    let mut scope = Scope::default();
    let target = vec![task.target_id.clone()];
    match task.target_type.to_ascii_uppercase().as_str() {
        "NS" => scope.ns = target,
        "MCIS" => scope.mcis = target,
        "VM" => scope.vm = target,
        other => {
            return Err(("target_type", format!("`{other}` is not NS, MCIS or VM")));
        }
    }
    if task.target_id.trim().is_empty() {
        return Err((
            "target_id",
            "is empty: name the namespace, MCIS or VM".into(),
        ));
    }
    Ok(scope)
}

/// Maps a JSON alert task, or a JSON array of them, onto a validated rule set.
pub fn import_alert_tasks(bytes: &[u8]) -> Result<RuleSet, ImportError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ImportError::Json(e.to_string()))?;
    let tasks: Vec<CbAlertTask> = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value),
        _ => serde_json::from_value(value).map(|t| vec![t]),
    }
    .map_err(|e| ImportError::Json(e.to_string()))?;
    let mut rules = Vec::new();
    for t in &tasks {
        rules.extend(import_alert_task(t)?);
    }
    let set = RuleSet {
        v: RULES_VERSION,
        rules,
    };
    set.validate()?;
    Ok(set)
}

/// Splits `usage_idle < 20`, `>=` or `greater` into (field, comparator, threshold).
fn parse_expression(expr: &str) -> Option<(Option<String>, Comparator, Option<f64>)> {
    let expr = expr.trim();
    let word = match expr.to_ascii_lowercase().as_str() {
        "greater" => Some(Comparator::Gt),
        "equalgreater" => Some(Comparator::Ge),
        "less" => Some(Comparator::Lt),
        "equalless" => Some(Comparator::Le),
        "equal" => Some(Comparator::Eq),
        _ => None,
    };
    if let Some(c) = word {
        return Some((None, c, None));
    }
    const OPS: [(&str, Comparator); 6] = [
        (">=", Comparator::Ge),
        ("<=", Comparator::Le),
        ("==", Comparator::Eq),
        (">", Comparator::Gt),
        ("<", Comparator::Lt),
        ("=", Comparator::Eq),
    ];
    let (at, op, c) = OPS
        .iter()
        .filter_map(|(op, c)| expr.find(op).map(|at| (at, *op, *c)))
        .min_by_key(|(at, op, _)| (*at, std::cmp::Reverse(op.len())))?;
    let lhs = expr[..at].trim().trim_matches('"');
    let rhs = expr[at + op.len()..].trim();
    let field = (!lhs.is_empty()).then(|| lhs.to_string());
    if field
        .as_deref()
        .is_some_and(|f| !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return None;
    }
    let threshold = if rhs.is_empty() {
        None
    } else {
        Some(rhs.parse::<f64>().ok().filter(|t| t.is_finite())?)
    };
    Some((field, c, threshold))
}

/// The Damselfly metric of a CB-Dragonfly / Telegraf measurement field.
fn map_metric(measurement: &str, field: &str) -> Option<String> {
    let measurement = measurement.trim().to_ascii_lowercase();
    let field = field.trim();
    let known = |name: &str| -> Option<String> {
        let def = catalog::lookup(name)?;
        Some(match rates::rate_name(def.name) {
            Some(rate) => rate.to_string(),
            None => def.name.to_string(),
        })
    };
    if let Some(m) = known(field) {
        return Some(m);
    }
    if let Some(base) = field.strip_suffix(rates::RATE_SUFFIX)
        && rates::is_counter(base)
    {
        return Some(field.to_string());
    }
    let telegraf = match (measurement.as_str(), field) {
        ("cpu", "usage_idle") => "cpu_idle",
        ("cpu", "usage_user") => "cpu_user",
        ("cpu", "usage_system") => "cpu_system",
        ("cpu", "usage_iowait") => "cpu_iowait",
        ("cpu", "usage_nice") => "cpu_nice",
        ("cpu", "usage_steal") => "cpu_steal",
        ("cpu", "usage_irq") => "cpu_hintr",
        ("cpu", "usage_softirq") => "cpu_sintr",
        ("cpu", "usage_guest") => "cpu_guest",
        ("cpu", "usage_guest_nice") => "cpu_guest_nice",
        ("mem" | "memory", "used_percent") => "mem_utilization",
        ("mem" | "memory", "buffered") => "mem_buffers",
        ("disk", "used_percent") => "disk_utilization",
        ("swap", "used_percent") => "swap_utilization",
        ("swap", "in") => "page_in",
        ("swap", "out") => "page_out",
        ("net" | "network", "bytes_recv") => "bytes_in",
        ("net" | "network", "bytes_sent") => "bytes_out",
        ("net" | "network", "packets_recv") => "pkts_in",
        ("net" | "network", "packets_sent") => "pkts_out",
        ("system" | "load", "load1") => "load_avg_1",
        ("system" | "load", "load5") => "load_avg_5",
        ("system" | "load", "load15") => "load_avg_15",
        ("processes" | "process", "running") => "proc_run",
        ("processes" | "process", "total") => "proc_num",
        _ => "",
    };
    if let Some(m) = known(telegraf) {
        return Some(m);
    }
    let prefix = match measurement.as_str() {
        "cpu" => "cpu",
        "mem" | "memory" => "mem",
        "disk" => "disk",
        "swap" => "swap",
        _ => return None,
    };
    known(&format!("{prefix}_{field}"))
}

/// A rule id stem from a task name: lowercase, `[a-z0-9_.-]` kept, the rest `-`, at most 50 bytes.
fn slug(name: &str) -> String {
    let s: String = name
        .trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    let s = s.trim_matches('-');
    if s.is_empty() {
        "cb-alert".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> CbAlertTask {
        CbAlertTask {
            name: "CPU Idle Low".into(),
            measurement: "cpu".into(),
            target_type: "VM".into(),
            target_id: "vm-0042".into(),
            event_duration: "30s".into(),
            metric: None,
            alert_math_expression: "usage_idle < 20".into(),
            alert_threshold: None,
            warn_event_cnt: 3,
            critic_event_cnt: 5,
            alert_event_type: Some("smtp".into()),
            alert_event_name: Some("ops-mail".into()),
            alert_event_message: None,
            alert_event_message_email: Some("CPU is saturated".into()),
            alert_post_url: None,
        }
    }

    #[test]
    fn expression_task_becomes_warning_and_critical_rules() {
        let rules = import_alert_task(&task()).unwrap();
        assert_eq!(rules.len(), 2);
        let (w, c) = (&rules[0], &rules[1]);
        assert_eq!(w.id, "cpu-idle-low-warning");
        assert_eq!(c.id, "cpu-idle-low-critical");
        assert_eq!(w.metric, "cpu_idle");
        assert_eq!(w.comparator, Comparator::Lt);
        assert_eq!((w.warning, w.critical), (Some(20.0), None));
        assert_eq!((c.warning, c.critical), (None, Some(20.0)));
        assert_eq!(w.fire, MOfN { m: 3, n: 3 });
        assert_eq!(c.fire, MOfN { m: 5, n: 5 });
        assert_eq!(c.resolve, Some(MOfN { m: 1, n: 1 }));
        assert_eq!(w.scope.vm, vec!["vm-0042".to_string()]);
        assert_eq!(w.period.0, std::time::Duration::from_secs(30));
        assert_eq!(w.missing_data, MissingData::Ignore);
        assert_eq!(w.description.as_deref(), Some("CPU is saturated"));
    }

    #[test]
    fn cb_dragonfly_words_metric_and_targets() {
        let t = CbAlertTask {
            name: "mem".into(),
            measurement: "mem".into(),
            target_type: "mcis".into(),
            target_id: "web".into(),
            metric: Some("used_percent".into()),
            alert_math_expression: "equalgreater".into(),
            alert_threshold: Some(90.0),
            warn_event_cnt: 0,
            critic_event_cnt: 2,
            event_duration: "1m".into(),
            ..task()
        };
        let rules = import_alert_task(&t).unwrap();
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.metric, "mem_utilization");
        assert_eq!(r.comparator, Comparator::Ge);
        assert_eq!(r.critical, Some(90.0));
        assert_eq!(r.scope.mcis, vec!["web".to_string()]);
        // Counters become rates; catalog names pass through; `ns` targets namespaces.
        let t = CbAlertTask {
            measurement: "net".into(),
            target_type: "NS".into(),
            target_id: "ns-01".into(),
            alert_math_expression: "bytes_recv > 1e6".into(),
            ..task()
        };
        let r = &import_alert_task(&t).unwrap()[0];
        assert_eq!(r.metric, "bytes_in_rate");
        assert_eq!(r.scope.ns, vec!["ns-01".to_string()]);
        let t = CbAlertTask {
            measurement: "cpu".into(),
            metric: Some("cpu_utilization".into()),
            alert_math_expression: ">".into(),
            alert_threshold: Some(80.0),
            ..task()
        };
        assert_eq!(import_alert_task(&t).unwrap()[0].metric, "cpu_utilization");
        let t = CbAlertTask {
            measurement: "cpu".into(),
            metric: Some("utilization".into()),
            alert_math_expression: "greater".into(),
            alert_threshold: Some(80.0),
            ..task()
        };
        assert_eq!(import_alert_task(&t).unwrap()[0].metric, "cpu_utilization");
    }

    #[test]
    fn import_errors_name_the_field() {
        let field = |t: CbAlertTask| match import_alert_task(&t) {
            Err(ImportError::Field { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(CbAlertTask {
                alert_math_expression: "about".into(),
                ..task()
            }),
            "alert_math_expression"
        );
        assert_eq!(
            field(CbAlertTask {
                target_type: "HOST".into(),
                ..task()
            }),
            "target_type"
        );
        assert_eq!(
            field(CbAlertTask {
                event_duration: "often".into(),
                ..task()
            }),
            "event_duration"
        );
        assert_eq!(
            field(CbAlertTask {
                alert_math_expression: "nonsense_field < 3".into(),
                ..task()
            }),
            "metric"
        );
        assert_eq!(
            field(CbAlertTask {
                alert_threshold: Some(30.0),
                ..task()
            }),
            "alert_threshold"
        );
        assert_eq!(
            field(CbAlertTask {
                warn_event_cnt: 0,
                critic_event_cnt: 0,
                ..task()
            }),
            "critic_event_cnt"
        );
    }

    #[test]
    fn imports_json_lists_into_a_valid_rule_set() {
        let json = br#"[
          {"name": "cpu-busy", "measurement": "cpu", "target_type": "NS", "target_id": "ns-01",
           "event_duration": "1m", "metric": "cpu_utilization", "alert_math_expression": "greater",
           "alert_threshold": 90, "warn_event_cnt": 2, "critic_event_cnt": 4,
           "alert_event_type": "slack", "alert_event_name": "ops", "alert_event_message": "busy"},
          {"name": "disk-full", "measurement": "disk", "target_type": "VM", "target_id": "vm-1",
           "event_duration": "5m", "alert_math_expression": "used_percent >= 95",
           "critic_event_cnt": 1, "alert_event_message_email": "disk almost full"}
        ]"#;
        let set = import_alert_tasks(json).unwrap();
        let ids: Vec<&str> = set.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "cpu-busy-warning",
                "cpu-busy-critical",
                "disk-full-critical"
            ]
        );
        assert_eq!(set.rules[2].metric, "disk_utilization");
        assert_eq!(set.rules[0].description.as_deref(), Some("busy"));
        // A single object works too; unknown fields are refused.
        let one = br#"{"name": "x", "measurement": "cpu", "target_type": "VM", "target_id": "v",
            "event_duration": "1m", "alert_math_expression": "cpu_idle < 5", "critic_event_cnt": 1}"#;
        assert_eq!(import_alert_tasks(one).unwrap().rules.len(), 1);
        let typo = br#"{"name": "x", "measurment": "cpu"}"#;
        assert!(matches!(
            import_alert_tasks(typo),
            Err(ImportError::Json(_))
        ));
    }
}
