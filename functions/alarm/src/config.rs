//! The alarm function's configuration, read from the environment as Lambda provides it.

use std::time::Duration;

/// Settings of the alarm function.
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
pub const DEFAULT_RULES_KEY: &str = "_config/alarm-rules.json";

/// The default consumer group / state namespace of the alarm function.
pub const DEFAULT_GROUP: &str = "damselfly-alarm";

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through a lookup function (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let lake = damselfly_core::env::lake(get("LAKE"))?;
        let rules = set("ALARM_RULES")
            .unwrap_or_else(|| format!("{}/{DEFAULT_RULES_KEY}", lake.trim_end_matches('/')));
        let sns_topic_arn = set("SNS_TOPIC_ARN");
        if let Some(arn) = &sns_topic_arn
            && !arn.starts_with("arn:")
        {
            return Err(ConfigError::Invalid {
                var: "SNS_TOPIC_ARN",
                value: arn.clone(),
                why: "not an ARN".into(),
                fix: "use the topic's ARN, e.g. arn:aws:sns:eu-west-1:123456789012:damselfly-alarms",
            });
        }
        let grace = damselfly_core::env::duration(
            "ALARM_GRACE",
            set("ALARM_GRACE"),
            Duration::from_secs(60),
            "use a duration such as 30s or 2m",
        )?;
        Ok(Self {
            lake,
            rules,
            sns_topic_arn,
            outbox: set("ALARM_OUTBOX"),
            group: set("ALARM_GROUP").unwrap_or_else(|| DEFAULT_GROUP.to_owned()),
            grace,
        })
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
        assert_eq!(c.grace, Duration::from_secs(60));
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
            e.contains("SNS_TOPIC_ARN=\"alarms\" is invalid (not an ARN)"),
            "{e}"
        );
        let e = cfg(&[("LAKE", "/l"), ("ALARM_GRACE", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ALARM_GRACE=\"soon\"") && e.contains("30s"),
            "{e}"
        );
    }
}
