//! The runner's knobs, with the Lambda Kafka event source mapping's defaults and limits.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use damselfly_kafka::Connection;

/// Lambda's default BatchSize for Kafka sources.
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// Lambda's maximum BatchSize for Kafka sources.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Lambda's default MaximumBatchingWindow for Kafka sources.
pub const DEFAULT_BATCHING_WINDOW: Duration = Duration::from_millis(500);
/// Lambda's invocation payload limit; a batch stops growing before its records pass it.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// Lambda's upper bound on MaximumRetryAttempts.
pub const MAX_RETRY_ATTEMPTS: u32 = 10_000;
/// Lambda's upper bound on MaximumRecordAgeInSeconds (7 days).
pub const MAX_RECORD_AGE: Duration = Duration::from_secs(604_800);
/// How often the controller measures lag by default (KEDA's pollingInterval is 30s; we are local).
pub const DEFAULT_SCALE_INTERVAL: Duration = Duration::from_secs(5);
/// How long demand must stay lower before workers are removed, by default.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// Records of lag one worker is expected to absorb, by default (KEDA's `lagThreshold`).
pub const DEFAULT_LAG_THRESHOLD: u64 = 1_000;
/// Default cap on workers; the topic's partition count caps them too.
pub const DEFAULT_MAX_WORKERS: usize = 100;

/// How the runner consumes and invokes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    /// Brokers, TLS, SASL and extra librdkafka settings (applied after the runner's own).
    pub kafka: Connection,
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
    /// The consumer-group protocol the workers join with.
    pub group_protocol: GroupProtocol,
    /// Bound on every broker round trip the runner waits for (commit, metadata, watermarks).
    pub broker_timeout: Duration,
    /// Retries of a failed batch before it counts as failed; `None` retries until the records
    /// are older than [`max_record_age`](Self::max_record_age) (Lambda's -1).
    pub max_retry_attempts: Option<u32>,
    /// Records older than this are not invoked again; `None` is unlimited (Lambda's -1).
    pub max_record_age: Option<Duration>,
    /// Split a failing batch in halves to isolate the bad records (Lambda's BisectBatchOnFunctionError).
    pub bisect_on_error: bool,
    /// A function error of type `NonRetryable` fails its batch at once (to
    /// [`on_failure`](Self::on_failure)) instead of being retried. Not Lambda's behaviour: its
    /// event source mapping retries every function error up to MaximumRetryAttempts; off by default.
    pub fail_fast_non_retryable: bool,
    /// Where a failed batch goes before its offsets are committed; `None` stops the runner instead.
    pub on_failure: Option<OnFailure>,
    /// Where a group without committed offsets starts.
    pub starting_position: StartingPosition,
    /// How many workers (consumer-group members) run, from lag.
    pub scaling: ScalingConfig,
    /// Serve Prometheus metrics on this address while running.
    pub metrics_listen: Option<SocketAddr>,
}

impl RunnerConfig {
    /// A configuration with Lambda's defaults for the given source.
    pub fn new(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        Self {
            kafka: Connection::plaintext(brokers),
            topic: topic.into(),
            group: group.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            batching_window: DEFAULT_BATCHING_WINDOW,
            until_caught_up: false,
            group_protocol: GroupProtocol::Classic,
            broker_timeout: Duration::from_secs(10),
            max_retry_attempts: None,
            max_record_age: None,
            bisect_on_error: false,
            fail_fast_non_retryable: false,
            on_failure: None,
            starting_position: StartingPosition::Earliest,
            scaling: ScalingConfig::default(),
            metrics_listen: None,
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
            ("brokers", &self.kafka.brokers),
            ("topic", &self.topic),
            ("group", &self.group),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(name, "must not be empty".into()));
            }
        }
        if self
            .max_retry_attempts
            .is_some_and(|n| n > MAX_RETRY_ATTEMPTS)
        {
            return Err(ConfigError::new(
                "max-retry-attempts",
                format!("Lambda allows -1 or 0..={MAX_RETRY_ATTEMPTS}"),
            ));
        }
        if let Some(age) = self.max_record_age
            && (age.is_zero() || age > MAX_RECORD_AGE)
        {
            return Err(ConfigError::new(
                "max-record-age",
                "must be -1 or between 1s and 7d".into(),
            ));
        }
        if let Some(OnFailure::Kafka { topic }) = &self.on_failure
            && topic == &self.topic
        {
            return Err(ConfigError::new(
                "on-failure",
                "must not be the topic being consumed".into(),
            ));
        }
        self.scaling.validate()
    }
}

/// Lag-driven scaling (KEDA's rule) and its bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    /// Fewest workers; 0 lets the runner idle with no group member until lag passes the activation threshold.
    pub min_workers: usize,
    /// Most workers; the topic's partition count caps them too.
    pub max_workers: usize,
    /// Records of lag per worker: workers = ceil(lag / threshold).
    pub lag_threshold: u64,
    /// At or below this total lag the runner stays at `min_workers`.
    pub activation_lag: u64,
    /// How often lag is measured and a decision taken.
    pub interval: Duration,
    /// How long demand must stay lower before workers are removed (scale-out is immediate).
    pub cooldown: Duration,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            min_workers: 1,
            max_workers: DEFAULT_MAX_WORKERS,
            lag_threshold: DEFAULT_LAG_THRESHOLD,
            activation_lag: 0,
            interval: DEFAULT_SCALE_INTERVAL,
            cooldown: DEFAULT_COOLDOWN,
        }
    }
}

impl ScalingConfig {
    /// A fixed number of workers: no scaling.
    pub fn fixed(workers: usize) -> Self {
        Self {
            min_workers: workers,
            max_workers: workers,
            ..Self::default()
        }
    }

    /// Checks that the bounds make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_workers == 0 {
            return Err(ConfigError::new("max-workers", "must be at least 1".into()));
        }
        if self.min_workers > self.max_workers {
            return Err(ConfigError::new(
                "min-workers",
                format!(
                    "{} is more than --max-workers {}",
                    self.min_workers, self.max_workers
                ),
            ));
        }
        if self.lag_threshold == 0 {
            return Err(ConfigError::new(
                "lag-threshold",
                "must be at least 1".into(),
            ));
        }
        if self.interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "scale-interval",
                "must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

/// How the workers join their consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup/SyncGroup, client-side assignment, eager rebalances): what
    /// Lambda's event source mapping and every Kafka version speak.
    #[default]
    Classic,
    /// KIP-848's consumer protocol (Kafka 4.0+): the broker assigns partitions incrementally and
    /// owns the session timeout (`group.consumer.session.timeout.ms`, 45 s by default).
    Consumer,
}

impl GroupProtocol {
    /// librdkafka's `group.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

impl FromStr for GroupProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(Self::Classic),
            "consumer" => Ok(Self::Consumer),
            _ => Err(format!(
                "`{s}` is not a group protocol: use classic or consumer"
            )),
        }
    }
}

impl fmt::Display for GroupProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a consumer group without committed offsets starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still on the broker (Lambda's TRIM_HORIZON).
    Earliest,
    /// Records published after the runner starts (Lambda's LATEST).
    Latest,
    /// The first record at or after this time (Lambda's AT_TIMESTAMP).
    Timestamp(DateTime<Utc>),
}

impl FromStr for StartingPosition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "earliest" | "trim_horizon" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => match s.split_once(':') {
                Some((kind, ts)) if kind.eq_ignore_ascii_case("timestamp") => {
                    DateTime::parse_from_rfc3339(ts)
                        .map(|t| Self::Timestamp(t.with_timezone(&Utc)))
                        .map_err(|e| format!("`{ts}` is not an RFC 3339 time ({e})"))
                }
                _ => Err(format!(
                    "`{s}` is not latest, earliest or timestamp:RFC3339 (e.g. timestamp:2026-11-21T09:00:00Z)"
                )),
            },
        }
    }
}

impl fmt::Display for StartingPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::Latest => f.write_str("latest"),
            Self::Timestamp(t) => write!(f, "timestamp:{}", t.to_rfc3339()),
        }
    }
}

/// Where a batch goes when its retries are exhausted, or at once when its error is not retryable
/// and [`RunnerConfig::fail_fast_non_retryable`] is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// A Kafka topic on the same brokers: one message per failed batch.
    Kafka {
        /// The topic.
        topic: String,
    },
    /// An S3 bucket and key prefix (S3 settings from the standard AWS variables).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/`; may be empty.
        prefix: String,
    },
    /// A local directory (created if missing): one JSON file per failed batch.
    Dir(PathBuf),
}

impl FromStr for OnFailure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(topic) = s.strip_prefix("kafka://") {
            if topic.is_empty() || topic.contains('/') {
                return Err(format!("`{s}`: expected kafka://TOPIC"));
            }
            return Ok(Self::Kafka {
                topic: topic.to_owned(),
            });
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("`{s}`: expected s3://BUCKET[/PREFIX]"));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{s}`: a file:// URL needs an absolute path (file:///...)"
                ));
            }
            return Ok(Self::Dir(PathBuf::from(path)));
        }
        Err(format!(
            "`{s}` is not kafka://TOPIC, s3://BUCKET/PREFIX or file:///DIR"
        ))
    }
}

impl fmt::Display for OnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kafka { topic } => write!(f, "kafka://{topic}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Self::Dir(dir) => write!(f, "file://{}", dir.display()),
        }
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

/// A limit that `-1` lifts, as Lambda's MaximumRetryAttempts and MaximumRecordAgeInSeconds take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<T>(pub Option<T>);

/// Parses `--max-retry-attempts`: `-1` (until the record age limit) or a count.
pub fn parse_retry_attempts(s: &str) -> Result<Limit<u32>, String> {
    match s.trim() {
        "-1" => Ok(Limit(None)),
        n => n
            .parse()
            .map(|n| Limit(Some(n)))
            .map_err(|_| format!("`{s}` is not -1 or a count of retries")),
    }
}

/// Parses `--max-record-age`: `-1` (unlimited) or a duration such as `1h` or `3600s`.
pub fn parse_record_age(s: &str) -> Result<Limit<Duration>, String> {
    match s.trim() {
        "-1" => Ok(Limit(None)),
        d => humantime::parse_duration(d)
            .map(|d| Limit(Some(d)))
            .map_err(|e| format!("`{s}` is not -1 or a duration ({e})")),
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
        c.batch_size = 100;
        c.max_retry_attempts = Some(10_001);
        assert_eq!(c.validate().unwrap_err().option, "max-retry-attempts");
        c.max_retry_attempts = Some(2);
        c.max_record_age = Some(Duration::from_secs(8 * 86_400));
        assert_eq!(c.validate().unwrap_err().option, "max-record-age");
        c.max_record_age = None;
        c.scaling.min_workers = 3;
        c.scaling.max_workers = 2;
        assert_eq!(c.validate().unwrap_err().option, "min-workers");
        c.scaling = ScalingConfig::fixed(2);
        assert!(c.validate().is_ok());
        c.on_failure = Some(OnFailure::Kafka { topic: "t".into() });
        assert_eq!(c.validate().unwrap_err().option, "on-failure");
    }

    #[test]
    fn group_protocols_parse() {
        assert_eq!("consumer".parse(), Ok(GroupProtocol::Consumer));
        assert_eq!(" Classic".parse(), Ok(GroupProtocol::Classic));
        assert!(
            "cooperative"
                .parse::<GroupProtocol>()
                .unwrap_err()
                .contains("classic or consumer")
        );
        assert_eq!(GroupProtocol::default(), GroupProtocol::Classic);
    }

    #[test]
    fn minus_one_means_unlimited() {
        assert_eq!(parse_retry_attempts("-1").unwrap(), Limit(None));
        assert_eq!(parse_retry_attempts("3").unwrap(), Limit(Some(3)));
        assert!(parse_retry_attempts("-2").is_err());
        assert_eq!(parse_record_age("-1").unwrap(), Limit(None));
        assert_eq!(
            parse_record_age("90s").unwrap(),
            Limit(Some(Duration::from_secs(90)))
        );
        assert!(parse_record_age("soon").is_err());
    }

    #[test]
    fn starting_positions_parse() {
        assert_eq!(
            "earliest".parse::<StartingPosition>().unwrap(),
            StartingPosition::Earliest
        );
        assert_eq!(
            "LATEST".parse::<StartingPosition>().unwrap(),
            StartingPosition::Latest
        );
        let t: StartingPosition = "timestamp:2026-11-21T09:00:00+09:00".parse().unwrap();
        assert_eq!(t.to_string(), "timestamp:2026-11-21T00:00:00+00:00");
        assert!(
            "timestamp:yesterday"
                .parse::<StartingPosition>()
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!("middle".parse::<StartingPosition>().is_err());
    }

    #[test]
    fn on_failure_destinations_parse() {
        assert_eq!(
            "kafka://metrics-failed".parse::<OnFailure>().unwrap(),
            OnFailure::Kafka {
                topic: "metrics-failed".into()
            }
        );
        assert_eq!(
            "s3://lake/failed/".parse::<OnFailure>().unwrap(),
            OnFailure::S3 {
                bucket: "lake".into(),
                prefix: "failed".into()
            }
        );
        assert_eq!(
            "file:///tmp/failed".parse::<OnFailure>().unwrap(),
            OnFailure::Dir("/tmp/failed".into())
        );
        assert!("file://rel".parse::<OnFailure>().is_err());
        assert!("http://x".parse::<OnFailure>().is_err());
        assert!("kafka://".parse::<OnFailure>().is_err());
    }
}
