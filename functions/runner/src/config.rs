//! The runner's knobs, with the Lambda Kafka event source mapping's defaults and limits.

use std::time::Duration;

/// Lambda's default BatchSize for Kafka sources.
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// Lambda's maximum BatchSize for Kafka sources.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Lambda's default MaximumBatchingWindow for Kafka sources.
pub const DEFAULT_BATCHING_WINDOW: Duration = Duration::from_millis(500);
/// Lambda's invocation payload limit; a batch stops growing before its records pass it.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// How the runner consumes and invokes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic to consume.
    pub topic: String,
    /// Consumer group id; offsets are committed under it.
    pub group: String,
    /// Most records per invocation (1..=10000).
    pub batch_size: usize,
    /// How long to gather records after the first one before invoking.
    pub batching_window: Duration,
    /// Stop once the group has no lag left and everything is committed.
    pub until_caught_up: bool,
    /// Extra librdkafka settings (`key=value`), applied last.
    pub kafka_options: Vec<(String, String)>,
    /// Bound on every broker round trip the runner waits for (commit, metadata, watermarks).
    pub broker_timeout: Duration,
}

impl RunnerConfig {
    /// A configuration with Lambda's defaults for the given source.
    pub fn new(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            group: group.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            batching_window: DEFAULT_BATCHING_WINDOW,
            until_caught_up: false,
            kafka_options: Vec::new(),
            broker_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the values against the event source mapping's limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(ConfigError::new(
                "batch-size",
                format!("{} is outside 1..={MAX_BATCH_SIZE}", self.batch_size),
            ));
        }
        if self.batching_window > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "batching-window",
                "Lambda allows at most 300s".into(),
            ));
        }
        for (name, value) in [
            ("brokers", &self.brokers),
            ("topic", &self.topic),
            ("group", &self.group),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(name, "must not be empty".into()));
            }
        }
        Ok(())
    }
}

/// A runner setting that cannot work, naming the option.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--{option}: {why}")]
pub struct ConfigError {
    /// The command-line option at fault.
    pub option: &'static str,
    /// What is wrong with it.
    pub why: String,
}

impl ConfigError {
    fn new(option: &'static str, why: String) -> Self {
        Self { option, why }
    }
}

/// Parses a `key=value` librdkafka option as given to `--kafka-option`.
pub fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!(
            "`{s}` is not key=value (e.g. security.protocol=SASL_SSL)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_match_lambda() {
        let mut c = RunnerConfig::new("b:9092", "t", "g");
        assert!(c.validate().is_ok());
        c.batch_size = 10_001;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--batch-size: 10001 is outside 1..=10000"
        );
        c.batch_size = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn kafka_options_parse() {
        assert_eq!(
            parse_kafka_option("a.b=c=d").unwrap(),
            ("a.b".into(), "c=d".into())
        );
        assert!(
            parse_kafka_option("novalue")
                .unwrap_err()
                .contains("key=value")
        );
    }
}
