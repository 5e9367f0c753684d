//! The alarm function's settings, declared once: the Lambda reads them from the environment, `damselfly run alarm`, `alarm tick` and `redrive` from the same variables or flags.

use std::time::Duration;

use damselfly_core::alarm::EvalConfig;
use damselfly_core::env::{Problem, WithLake, duration, show_duration};

/// The alarm function's own settings (the lake and the consumer group aside): each field's
/// variable, flag, default and help, for the Lambda binary ([`Config::from_env`]) and
/// `damselfly` (flattened).
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[group(id = "alarm-settings")]
pub struct Settings {
    /// Rules: a JSON file or s3://bucket/key.json [default: LAKE/_config/alarm-rules.json].
    #[arg(long, env = "ALARM_RULES")]
    pub rules: Option<String>,
    /// SNS topic ARN for notifications (AWS_* variables configure the client).
    #[arg(long, env = "SNS_TOPIC_ARN", value_parser = topic_arn)]
    pub sns_topic_arn: Option<String>,
    /// Without an SNS topic, append notifications to this file as JSON lines [damselfly's
    /// default: alarm-outbox.jsonl; the Lambda needs one of the two].
    #[arg(long, env = "ALARM_OUTBOX")]
    pub outbox: Option<String>,
    /// How long after a period's end the tick waits for late samples before deciding it.
    #[arg(long, env = "ALARM_GRACE", value_parser = duration,
          default_value = show_duration(EvalConfig::default().grace))]
    pub grace: Duration,
}

/// An SNS topic's ARN (blank is taken as none).
fn topic_arn(text: &str) -> Result<String, Problem> {
    if text.trim().is_empty() || text.starts_with("arn:") {
        Ok(text.to_owned())
    } else {
        Err(Problem::new(
            "not an ARN",
            "use the topic's ARN, e.g. arn:aws:sns:eu-west-1:123456789012:damselfly-alarms",
        ))
    }
}

impl Settings {
    /// The function's configuration with these settings, over the lake at `lake`, keeping the
    /// states of the consumer group `group`.
    pub fn config(&self, lake: &str, group: &str) -> Config {
        let set = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        Config {
            lake: lake.to_owned(),
            rules: set(&self.rules)
                .unwrap_or_else(|| format!("{}/{DEFAULT_RULES_KEY}", lake.trim_end_matches('/'))),
            sns_topic_arn: set(&self.sns_topic_arn),
            outbox: set(&self.outbox),
            group: group.to_owned(),
            grace: self.grace,
        }
    }
}

/// What the Lambda binary reads besides the lake: the consumer group whose states it keeps.
#[derive(Debug, Clone, PartialEq, clap::Args)]
struct LambdaSettings {
    /// Name of the consumer group whose partitions' states this function keeps (its event source
    /// mapping's group).
    #[arg(long, env = "ALARM_GROUP", default_value = DEFAULT_GROUP)]
    group: String,
    /// The settings `damselfly` shares.
    #[command(flatten)]
    settings: Settings,
}

/// Configuration of the alarm function, as its handler takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Lake URL (`LAKE`): where the alarm states and the `alarms` history table live.
    pub lake: String,
    /// Where the rules are (`ALARM_RULES`): a file path, or a URL under the lake's store; default
    /// `{LAKE}/_config/alarm-rules.json`.
    pub rules: String,
    /// SNS topic for notifications (`SNS_TOPIC_ARN`); without it they go to the outbox file.
    pub sns_topic_arn: Option<String>,
    /// File that receives notifications as JSON lines when no SNS topic is set (`ALARM_OUTBOX`).
    pub outbox: Option<String>,
    /// Name of the consumer group whose partitions' states this function keeps (`ALARM_GROUP`).
    pub group: String,
    /// How long after a period's end the tick waits for late samples (`ALARM_GRACE`).
    pub grace: Duration,
}

/// A configuration problem, naming the variable and how to fix it.
pub use damselfly_core::env::EnvError as ConfigError;

/// The rules object inside a lake when `ALARM_RULES` is not set.
pub use damselfly_core::alarm::DEFAULT_RULES_KEY;

/// The default consumer group / state namespace of the alarm function.
pub const DEFAULT_GROUP: &str = "damselfly-alarm";

/// Where `damselfly` appends notifications when given neither an SNS topic nor an outbox.
pub const LOCAL_OUTBOX: &str = "alarm-outbox.jsonl";

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through a lookup function (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env: WithLake<LambdaSettings> = damselfly_core::env::from_lookup(get)?;
        Ok(env.settings.settings.config(&env.lake, &env.settings.group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_lake() {
        let c = cfg(&[("LAKE", "s3://b/lake/")]).unwrap();
        assert_eq!(c.rules, "s3://b/lake/_config/alarm-rules.json");
        assert_eq!(c.group, DEFAULT_GROUP);
        assert_eq!(c.sns_topic_arn, None);
        assert_eq!(c.outbox, None);
        assert_eq!(c.grace, Duration::from_secs(60));
        let arn = "arn:aws:sns:eu-west-1:123456789012:a";
        let c = cfg(&[
            ("LAKE", "/l"),
            ("ALARM_RULES", "/r.json"),
            ("SNS_TOPIC_ARN", arn),
            ("ALARM_OUTBOX", "/o.jsonl"),
            ("ALARM_GROUP", "g"),
            ("ALARM_GRACE", "2m"),
        ])
        .unwrap();
        assert_eq!(
            c,
            Config {
                lake: "/l".into(),
                rules: "/r.json".into(),
                sns_topic_arn: Some(arn.into()),
                outbox: Some("/o.jsonl".into()),
                group: "g".into(),
                grace: Duration::from_secs(120),
            }
        );
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        let e = cfg(&[]).unwrap_err().to_string();
        assert!(
            e.starts_with("LAKE is not set: set it to the lake URL"),
            "{e}"
        );
        let e = cfg(&[("LAKE", "/l"), ("SNS_TOPIC_ARN", "alarms")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SNS_TOPIC_ARN=\"alarms\" is invalid (not an ARN): use the topic's ARN"),
            "{e}"
        );
        let e = cfg(&[("LAKE", "/l"), ("ALARM_GRACE", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ALARM_GRACE=\"soon\" is invalid")
                && e.contains("use a duration such as"),
            "{e}"
        );
    }
}
