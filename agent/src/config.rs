//! `agent.toml`: what the agent collects, how it tags and publishes samples, where it spools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use damselfly_kafka::secret::read_secret_file;
use damselfly_kafka::{
    Connection, Field, Naming, SaslMechanism, Secret, Security, SecurityProtocol, SettingsError,
};
use serde::{Deserialize, Deserializer};

use crate::collect::{Patterns, SkipLists};

/// Shortest collection interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Smallest spool cap accepted in `agent.toml`.
pub const MIN_SPOOL_BYTES: u64 = 1024 * 1024;

/// Compression codecs librdkafka accepts for `kafka.compression`.
pub const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];

/// The whole agent configuration, as read from `agent.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// How often to collect and publish one message, e.g. "2s" (CB-Dragonfly's default); at least 1s.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// The tags attached to every message; `vm`, `csp`, `region` and `host` may be detected.
    pub tags: TagsConfig,
    /// Where and how to publish.
    pub kafka: KafkaConfig,
    /// The on-disk spool that holds messages while the broker is unreachable.
    pub spool: SpoolConfig,
    /// Which devices the collector leaves out.
    pub collect: CollectConfig,
    /// Cloud instance metadata detection (csp, region, instance id).
    pub metadata: MetadataConfig,
}

/// The tags of this VM. Empty values are filled in at start (see each field).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagsConfig {
    /// Namespace (tenant or project); required.
    pub ns: String,
    /// Multi-cloud infra service (the VM group); required.
    pub mcis: String,
    /// VM id and Kafka message key; empty = the cloud instance id if detected, else the host name.
    pub vm: String,
    /// Cloud service provider (aws, gcp, azure, ...); empty = detected from instance metadata.
    pub csp: String,
    /// Cloud region; empty = detected from instance metadata.
    pub region: String,
    /// Operating system family; defaults to this build's (`linux`).
    pub os: String,
    /// Host name; empty = the kernel's host name.
    pub host: String,
}

/// The Kafka topic the agent publishes to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic carrying the metric messages.
    pub topic: String,
    /// Producer compression: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// When librdkafka gives up on a message (`message.timeout.ms`); it is then spooled and resent.
    #[serde(deserialize_with = "duration")]
    pub delivery_timeout: Duration,
    /// When the oldest unacknowledged message is this old, it and every newer one go to the spool
    /// (so this much of collections is all a crash during an outage can lose).
    #[serde(deserialize_with = "duration")]
    pub slow_after: Duration,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl; unset: sasl_ssl with a SASL mechanism, ssl
    /// with only a CA or client certificate, else plaintext.
    pub security_protocol: Option<SecurityProtocol>,
    /// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, or AWS_MSK_IAM (the instance's AWS credentials).
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name (PLAIN, SCRAM).
    pub sasl_username: Option<String>,
    /// File whose first line is the SASL password (the password may also come from the
    /// `KAFKA_SASL_PASSWORD` environment variable).
    pub sasl_password_file: Option<PathBuf>,
    /// The SASL password itself: accepted only when this file is readable by its owner alone.
    pub sasl_password: Option<String>,
    /// PEM file of the CA certificates that verify the brokers; unset: the system's CA store.
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by certificate.
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM private key (unencrypted) of the client certificate.
    pub ssl_key_location: Option<PathBuf>,
    /// AWS region of the MSK cluster, with AWS_MSK_IAM; unset: AWS_REGION, else the instance's.
    pub msk_region: Option<String>,
    /// Extra librdkafka settings, applied last, e.g. `"linger.ms" = "50"`.
    pub options: BTreeMap<String, String>,
}

/// The bounded on-disk spool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the spool's segment files (created if missing; one agent per directory).
    pub dir: PathBuf,
    /// Most bytes on disk, e.g. "256MiB" or 268435456; past it the oldest messages are dropped.
    #[serde(deserialize_with = "byte_size")]
    pub max_bytes: u64,
}

/// Devices the collector leaves out. Glob patterns (globset's syntax) match whole names; `*`
/// matches any run of characters, `/` included.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// File system types without disk usage worth reporting (pseudo and in-memory file systems).
    pub skip_fs_types: Vec<String>,
    /// Mount points to leave out of the `disk` family.
    pub skip_mount_points: Vec<String>,
    /// Block devices to leave out of the `diskio` family.
    pub skip_block_devices: Vec<String>,
    /// Network interfaces to leave out of the `network` family.
    pub skip_interfaces: Vec<String>,
}

/// Detection of the cloud, region and instance id from the instance metadata service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// Ask the AWS (IMDSv2), GCP and Azure metadata services at start; off = use the tags as given.
    pub detect: bool,
    /// Base URL of the metadata service (all three clouds serve it at 169.254.169.254).
    pub endpoint: String,
    /// How long each metadata request may take; off-cloud, detection costs about this much at start.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            tags: TagsConfig::default(),
            kafka: KafkaConfig::default(),
            spool: SpoolConfig::default(),
            collect: CollectConfig::default(),
            metadata: MetadataConfig::default(),
        }
    }
}

impl Default for TagsConfig {
    fn default() -> Self {
        Self {
            ns: String::new(),
            mcis: String::new(),
            vm: String::new(),
            csp: String::new(),
            region: String::new(),
            os: std::env::consts::OS.to_owned(),
            host: String::new(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "metrics".into(),
            compression: "lz4".into(),
            delivery_timeout: Duration::from_secs(30),
            slow_after: Duration::from_secs(5),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_file: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            msk_region: None,
            options: BTreeMap::new(),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/damselfly/spool"),
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Default for CollectConfig {
    fn default() -> Self {
        let strings = |s: &[&str]| s.iter().map(|&x| x.to_owned()).collect();
        Self {
            skip_fs_types: strings(&[
                "tmpfs",
                "devtmpfs",
                "devpts",
                "overlay",
                "squashfs",
                "proc",
                "sysfs",
                "cgroup*",
                "autofs",
                "mqueue",
                "debugfs",
                "tracefs",
                "securityfs",
                "pstore",
                "bpf",
                "configfs",
                "fusectl",
                "hugetlbfs",
                "binfmt_misc",
                "nsfs",
                "ramfs",
                "rpc_pipefs",
                "efivarfs",
                "iso9660",
                "fuse.lxcfs",
                "fuse.gvfsd-fuse",
                "fuse.portal",
            ]),
            skip_mount_points: Vec::new(),
            skip_block_devices: strings(&["loop*", "ram*"]),
            skip_interfaces: strings(&["lo"]),
        }
    }
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            detect: true,
            endpoint: "http://169.254.169.254".into(),
            timeout: Duration::from_millis(300),
        }
    }
}

/// Why `agent.toml` was not accepted; every message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (unknown field, wrong type, bad duration...).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML error, which shows the offending line.
        message: String,
    },
    /// A field has a value the agent cannot run with.
    #[error("{path}: `{field}` = {value}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// Dotted field name, e.g. `kafka.compression`.
        field: &'static str,
        /// The value as written in TOML.
        value: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The Kafka connection settings cannot work together (or a file they name is unreadable).
    #[error("{path}: {source}")]
    Kafka {
        /// The file.
        path: String,
        /// The setting and what to do.
        source: SettingsError,
    },
    /// The file holds a secret but other users may read it.
    #[error(
        "{path} holds {what} but {problem}; or move the password to kafka.sasl_password_file or KAFKA_SASL_PASSWORD"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Which secret it holds.
        what: String,
        /// Who can read it and the chmod that fixes it.
        problem: String,
    },
}

impl AgentConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config = Self::parse(&text, &shown)?;
        if let Some(what) = config.kafka.secret_in_file() {
            damselfly_kafka::secret::private(path).map_err(|problem| ConfigError::Exposed {
                path: shown.clone(),
                what,
                problem,
            })?;
        }
        Ok(config)
    }

    /// Parses and validates configuration text; `path` names the source in error messages.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the rules the types alone cannot express.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.check_interval_and_tags()
            .and_then(|()| self.check_kafka())
            .and_then(|()| self.check_spool())
            .and_then(|()| self.check_skip_lists())
            .and_then(|()| self.check_metadata())
            .map_err(|(field, value, problem)| ConfigError::Invalid {
                path: path.to_owned(),
                field,
                value,
                problem,
            })
    }

    /// The interval, the required tags and every tag's length and characters.
    fn check_interval_and_tags(&self) -> Result<(), Invalid> {
        if self.interval < MIN_INTERVAL {
            return bad("interval", dur(self.interval), "must be at least 1s");
        }
        for (field, value) in [("tags.ns", &self.tags.ns), ("tags.mcis", &self.tags.mcis)] {
            if value.trim().is_empty() {
                return bad(
                    field,
                    quoted(value),
                    "is required: name the namespace and VM group this VM belongs to",
                );
            }
        }
        for (field, value) in [
            ("tags.ns", &self.tags.ns),
            ("tags.mcis", &self.tags.mcis),
            ("tags.vm", &self.tags.vm),
            ("tags.csp", &self.tags.csp),
            ("tags.region", &self.tags.region),
            ("tags.os", &self.tags.os),
            ("tags.host", &self.tags.host),
        ] {
            if value.len() > damselfly_schemas::wire::MAX_TAG_LEN
                || value.chars().any(char::is_control)
            {
                return bad(
                    field,
                    quoted(value),
                    "must be at most 256 bytes without control characters",
                );
            }
        }
        Ok(())
    }

    /// Brokers, topic, compression and the delivery timeouts.
    fn check_kafka(&self) -> Result<(), Invalid> {
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            return bad(
                "kafka.brokers",
                quoted(&k.brokers),
                "is required: set host:port of at least one broker",
            );
        }
        if k.topic.trim().is_empty() {
            return bad(
                "kafka.topic",
                quoted(&k.topic),
                "is required: set the metrics topic (usually \"metrics\")",
            );
        }
        if !COMPRESSIONS.contains(&k.compression.as_str()) {
            return bad(
                "kafka.compression",
                quoted(&k.compression),
                "must be one of none, gzip, snappy, lz4, zstd",
            );
        }
        if k.delivery_timeout < Duration::from_secs(1) {
            return bad(
                "kafka.delivery_timeout",
                dur(k.delivery_timeout),
                "must be at least 1s",
            );
        }
        if k.slow_after.is_zero() || k.slow_after > k.delivery_timeout {
            return bad(
                "kafka.slow_after",
                dur(k.slow_after),
                "must be longer than 0s and at most kafka.delivery_timeout",
            );
        }
        Ok(())
    }

    /// The spool's directory and its smallest size.
    fn check_spool(&self) -> Result<(), Invalid> {
        if self.spool.dir.as_os_str().is_empty() {
            return bad(
                "spool.dir",
                "\"\"".into(),
                "is required: set a directory the agent may write",
            );
        }
        if self.spool.max_bytes < MIN_SPOOL_BYTES {
            return bad(
                "spool.max_bytes",
                self.spool.max_bytes.to_string(),
                "must be at least \"1MiB\"",
            );
        }
        Ok(())
    }

    /// Every skip list: no empty pattern, and valid globs.
    fn check_skip_lists(&self) -> Result<(), Invalid> {
        let c = &self.collect;
        for (field, list) in [
            ("collect.skip_fs_types", &c.skip_fs_types),
            ("collect.skip_mount_points", &c.skip_mount_points),
            ("collect.skip_block_devices", &c.skip_block_devices),
            ("collect.skip_interfaces", &c.skip_interfaces),
        ] {
            if list.iter().any(|p| p.is_empty()) {
                return bad(
                    field,
                    format!("{list:?}"),
                    "contains an empty pattern: remove it (use \"*\" to match everything)",
                );
            }
            if let Err(e) = Patterns::new(list) {
                return bad(
                    field,
                    format!("{list:?}"),
                    &format!(
                        "is not a list of glob patterns ({e}); \"*\" matches any run of characters, \"[\" opens a class"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The metadata endpoint and timeout, when detection is on.
    fn check_metadata(&self) -> Result<(), Invalid> {
        let m = &self.metadata;
        if !m.detect {
            return Ok(());
        }
        if !m.endpoint.starts_with("http://") {
            return bad(
                "metadata.endpoint",
                quoted(&m.endpoint),
                "must be an http:// URL, e.g. \"http://169.254.169.254\"",
            );
        }
        if m.timeout.is_zero() || m.timeout > Duration::from_secs(10) {
            return bad(
                "metadata.timeout",
                dur(m.timeout),
                "must be between 1ms and 10s",
            );
        }
        Ok(())
    }

    /// The skip lists the collector applies, compiled. A list that is not valid globs (which
    /// [`AgentConfig::parse`] refuses) skips nothing, with a warning.
    pub fn skip_lists(&self) -> SkipLists {
        let compile = |field: &str, list: &[String]| {
            Patterns::new(list).unwrap_or_else(|e| {
                tracing::warn!(field, error = %e, "skip list is not valid globs: nothing skipped");
                Patterns::default()
            })
        };
        let c = &self.collect;
        SkipLists {
            fs_types: compile("collect.skip_fs_types", &c.skip_fs_types),
            mount_points: compile("collect.skip_mount_points", &c.skip_mount_points),
            block_devices: compile("collect.skip_block_devices", &c.skip_block_devices),
            interfaces: compile("collect.skip_interfaces", &c.skip_interfaces),
        }
    }

    /// The publisher settings: the connection (password from the file, the configuration or
    /// `KAFKA_SASL_PASSWORD`), the delivery timeout, then the user's options; `path` names the
    /// configuration in errors.
    pub fn publisher_config(&self, path: &str) -> Result<crate::PublisherConfig, ConfigError> {
        let kafka = self
            .kafka
            .connection(std::env::var(PASSWORD_ENV).ok())
            .map_err(|source| ConfigError::Kafka {
                path: path.to_owned(),
                source,
            })?;
        Ok(crate::PublisherConfig {
            compression: self.kafka.compression.clone(),
            ..crate::PublisherConfig::on(kafka, &self.kafka.topic)
        })
    }
}

/// The environment variable that may hold the SASL password.
pub const PASSWORD_ENV: &str = "KAFKA_SASL_PASSWORD";

impl KafkaConfig {
    /// The secret this table holds in the file itself, if any (a password, a secret option).
    pub fn secret_in_file(&self) -> Option<String> {
        if self.sasl_password.is_some() {
            return Some("kafka.sasl_password".into());
        }
        self.options
            .keys()
            .find(|k| damselfly_kafka::secret::is_secret_option(k))
            .map(|k| format!("[kafka.options] \"{k}\""))
    }

    /// The connection these settings describe, validated; `password_env` is the value of
    /// [`PASSWORD_ENV`], used when neither the file nor a password file gives one.
    pub fn connection(&self, password_env: Option<String>) -> Result<Connection, SettingsError> {
        let n = Naming::AgentToml;
        let given = [
            self.sasl_password_file.is_some(),
            self.sasl_password.is_some(),
        ];
        if given.iter().all(|g| *g) {
            return Err(SettingsError::new(
                n,
                Field::SaslPassword,
                "both kafka.sasl_password_file and kafka.sasl_password are set: keep one",
            ));
        }
        let password = match (&self.sasl_password_file, &self.sasl_password) {
            (Some(file), _) => Some(
                read_secret_file(file)
                    .map_err(|why| SettingsError::new(n, Field::SaslPassword, why))?,
            ),
            (None, Some(p)) => Some(Secret::new(p.clone())),
            (None, None) => password_env.filter(|p| !p.is_empty()).map(Secret::new),
        };
        let mut options = vec![(
            "message.timeout.ms".to_owned(),
            self.delivery_timeout.as_millis().to_string(),
        )];
        options.extend(self.options.iter().map(|(k, v)| (k.clone(), v.clone())));
        let conn = Connection {
            brokers: self.brokers.clone(),
            security: Security {
                protocol: self.security_protocol,
                mechanism: self.sasl_mechanism,
                username: self.sasl_username.clone(),
                password: password.filter(|_| {
                    self.sasl_mechanism
                        .is_some_and(SaslMechanism::takes_password)
                }),
                ca_location: self.ssl_ca_location.clone(),
                certificate_location: self.ssl_certificate_location.clone(),
                key_location: self.ssl_key_location.clone(),
                aws_region: self.msk_region.clone(),
            },
            options,
            naming: n,
            tokens: None,
        };
        conn.validate()?;
        Ok(conn)
    }
}

/// A field a check refused: its dotted name, its value as written in TOML, and what is wrong.
type Invalid = (&'static str, String, String);

/// Refuses `field`.
fn bad(field: &'static str, value: String, problem: &str) -> Result<(), Invalid> {
    Err((field, value, problem.to_owned()))
}

/// A string value as TOML shows it.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A duration value as TOML shows it.
fn dur(d: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(d))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}): write e.g. \"2s\", \"500ms\" or \"1m\""
        ))
    })
}

/// A size written as a number of bytes or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Bytes(u64),
    Text(String),
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match ByteSize::deserialize(d)? {
        ByteSize::Bytes(n) => Ok(n),
        ByteSize::Text(t) => parse_byte_size(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid size {t:?}: write bytes (268435456) or a number with a unit, \
                 e.g. \"256MiB\", \"1GiB\", \"500MB\""
            ))
        }),
    }
}

/// Parses "256MiB", "1 GiB", "500MB", "4096" into bytes (the `bytesize` crate's syntax).
pub fn parse_byte_size(text: &str) -> Option<u64> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .ok()
        .map(|b| b.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[tags]\nns = \"ns01\"\nmcis = \"web\"\n";

    fn err(text: &str) -> String {
        AgentConfig::parse(text, "agent.toml")
            .expect_err("should be rejected")
            .to_string()
    }

    #[test]
    fn defaults_fill_everything_but_the_group() {
        let c = AgentConfig::parse(MINIMAL, "agent.toml").unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.kafka.topic, "metrics");
        assert_eq!(c.kafka.compression, "lz4");
        assert_eq!(c.spool.max_bytes, 256 << 20);
        assert!(c.collect.skip_interfaces.contains(&"lo".to_owned()));
        assert!(c.collect.skip_fs_types.contains(&"cgroup*".to_owned()));
        assert!(c.metadata.detect);
        assert_eq!(c.metadata.timeout, Duration::from_millis(300));
        assert_eq!(c.tags.os, std::env::consts::OS);
    }

    #[test]
    fn the_example_file_is_valid_and_complete() {
        let text = include_str!("../agent.example.toml");
        let c = AgentConfig::parse(text, "agent.example.toml").unwrap();
        assert_eq!(
            c.collect,
            CollectConfig::default(),
            "example shows defaults"
        );
        assert_eq!(c.kafka.delivery_timeout, Duration::from_secs(30));
        // Every field of every table is written out in the example.
        for key in [
            "interval",
            "ns",
            "mcis",
            "vm",
            "csp",
            "region",
            "os",
            "host",
            "brokers",
            "topic",
            "compression",
            "delivery_timeout",
            "slow_after",
            "security_protocol",
            "sasl_mechanism",
            "sasl_username",
            "sasl_password_file",
            "sasl_password",
            "ssl_ca_location",
            "ssl_certificate_location",
            "ssl_key_location",
            "msk_region",
            "[kafka.options]",
            "dir",
            "max_bytes",
            "skip_fs_types",
            "skip_mount_points",
            "skip_block_devices",
            "skip_interfaces",
            "detect",
            "endpoint",
            "timeout",
        ] {
            assert!(text.contains(key), "example lacks `{key}`");
        }
    }

    #[test]
    fn values_parse() {
        let c = AgentConfig::parse(
            &format!(
                "interval = \"10s\"\n{MINIMAL}[kafka]\nbrokers = \"b:1\"\n\
                 [kafka.options]\n\"security.protocol\" = \"SSL\"\n\
                 [spool]\ndir = \"/tmp/s\"\nmax_bytes = \"64MiB\"\n"
            ),
            "agent.toml",
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.spool.max_bytes, 64 << 20);
        let p = c.publisher_config("agent.toml").unwrap();
        assert_eq!(p.kafka.brokers, "b:1");
        assert_eq!(
            p.kafka.options,
            vec![
                ("message.timeout.ms".to_owned(), "30000".to_owned()),
                ("security.protocol".to_owned(), "SSL".to_owned())
            ]
        );
        assert_eq!(parse_byte_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_byte_size("4096"), Some(4096));
        assert_eq!(parse_byte_size("12 parsecs"), None);
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        assert_eq!(
            err(&format!("interval = \"0s\"\n{MINIMAL}")),
            "agent.toml: `interval` = \"0s\": must be at least 1s"
        );
        assert_eq!(
            err("[tags]\nns = \"a\"\n"),
            "agent.toml: `tags.mcis` = \"\": is required: name the namespace and VM group \
             this VM belongs to"
        );
        let e = err(&format!("{MINIMAL}[kafka]\ncompression = \"brotli\"\n"));
        assert!(
            e.contains("`kafka.compression` = \"brotli\"") && e.contains("lz4"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[spool]\nmax_bytes = \"1KiB\"\n"));
        assert!(
            e.contains("`spool.max_bytes` = 1024: must be at least"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[collect]\nskip_interfaces = [\"\"]\n"));
        assert!(e.contains("`collect.skip_interfaces`"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[collect]\nskip_block_devices = [\"loop*\", \"nvme[0-9\"]\n"
        ));
        assert!(
            e.contains("`collect.skip_block_devices`") && e.contains("not a list of glob patterns"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[metadata]\nendpoint = \"https://x\"\n"));
        assert!(
            e.contains("`metadata.endpoint`") && e.contains("http://"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[kafka]\nslow_after = \"1m\"\n"));
        assert!(e.contains("`kafka.slow_after` = \"1m\""), "{e}");
    }

    #[test]
    fn kafka_security_settings_make_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file\n").unwrap();
        let text = format!(
            "{MINIMAL}[kafka]\nbrokers = \"b:9096\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             sasl_username = \"agent\"\nsasl_password_file = {pw:?}\n"
        );
        let c = AgentConfig::parse(&text, "agent.toml").unwrap();
        let conn = c.kafka.connection(Some("from-env".into())).unwrap();
        assert_eq!(conn.security.protocol(), SecurityProtocol::SaslSsl);
        assert_eq!(conn.security.password.unwrap().expose(), "from-file");
        assert_eq!(conn.naming, Naming::AgentToml);

        // Without a password file the environment gives the password; without either, an error
        // names every way to give one.
        let text = format!(
            "{MINIMAL}[kafka]\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"agent\"\n"
        );
        let c = AgentConfig::parse(&text, "agent.toml").unwrap();
        let conn = c.kafka.connection(Some("from-env".into())).unwrap();
        assert_eq!(conn.security.password.unwrap().expose(), "from-env");
        let e = c.publisher_config("agent.toml");
        if std::env::var(PASSWORD_ENV).is_err() {
            let e = e.unwrap_err().to_string();
            assert!(
                e.starts_with("agent.toml: the SASL password (kafka.sasl_password_file"),
                "{e}"
            );
        }
        let e = err(&format!("{MINIMAL}[kafka]\nsasl_mechanism = \"GSSAPI\"\n"));
        assert!(e.contains("not a SASL mechanism"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_password_in_the_file_needs_a_private_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        for (secret, what) in [
            ("sasl_password = \"hunter2\"\n", "kafka.sasl_password"),
            (
                "[kafka.options]\n\"sasl.password\" = \"hunter2\"\n",
                "[kafka.options] \"sasl.password\"",
            ),
        ] {
            std::fs::write(
                &path,
                format!(
                    "{MINIMAL}[kafka]\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\n{secret}"
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = AgentConfig::load(&path).unwrap_err().to_string();
            assert!(e.contains(&format!("holds {what}")), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            AgentConfig::load(&path).unwrap();
        }
    }

    #[test]
    fn parse_errors_show_the_offending_key() {
        let e = err(&format!("intervall = \"2s\"\n{MINIMAL}"));
        assert!(e.starts_with("agent.toml: "), "{e}");
        assert!(e.contains("unknown field `intervall`"), "{e}");
        assert!(e.contains("`interval`"), "lists the valid names: {e}");
        let e = err(&format!("interval = \"soon\"\n{MINIMAL}"));
        assert!(e.contains("interval = \"soon\""), "shows the line: {e}");
        assert!(e.contains("invalid duration \"soon\""), "{e}");
        let e = err(&format!("{MINIMAL}[spool]\nmax_bytes = \"lots\"\n"));
        assert!(
            e.contains("max_bytes = \"lots\"") && e.contains("256MiB"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[tags.extra]\nx = 1\n"));
        assert!(e.contains("unknown field `extra`"), "{e}");
    }
}
