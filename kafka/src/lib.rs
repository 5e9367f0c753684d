//! How every Damselfly client reaches Kafka: brokers, TLS, SASL (PLAIN, SCRAM, MSK IAM), secrets kept off the command line, and errors that name the setting to fix.
//!
//! The agent, the simulator, the runner's consumers and producers, the benchmarks and the tests all
//! build their clients from one [`Connection`]:
//!
//! | setting | command line (and environment) | `agent.toml` `[kafka]` | librdkafka |
//! |---|---|---|---|
//! | brokers | `--brokers` (`KAFKA_BROKERS`) | `brokers` | `bootstrap.servers` |
//! | protocol | `--security-protocol` (`KAFKA_SECURITY_PROTOCOL`) | `security_protocol` | `security.protocol` |
//! | mechanism | `--sasl-mechanism` (`KAFKA_SASL_MECHANISM`) | `sasl_mechanism` | `sasl.mechanism` |
//! | user | `--sasl-username` (`KAFKA_SASL_USERNAME`) | `sasl_username` | `sasl.username` |
//! | password | `KAFKA_SASL_PASSWORD`, `--sasl-password-file` | `sasl_password_file`, `sasl_password` (file mode 0600 only), `KAFKA_SASL_PASSWORD` | `sasl.password` |
//! | CA | `--ssl-ca-location` | `ssl_ca_location` | `ssl.ca.location` (default `probe`: the system's store) |
//! | client certificate | `--ssl-certificate-location`, `--ssl-key-location` | `ssl_certificate_location`, `ssl_key_location` | `ssl.certificate.location`, `ssl.key.location` |
//! | MSK IAM region | `--msk-region` (`KAFKA_MSK_REGION`, `AWS_REGION`) | `msk_region` | (signs the OAUTHBEARER token) |
//! | anything else | `--kafka-option k=v` (no secrets) | `[kafka.options]` | as given, applied last |
//!
//! TLS comes from OpenSSL built into the binary (rdkafka's `ssl-vendored`), so one agent binary
//! runs on any glibc Linux; SASL PLAIN, SCRAM-SHA-256/512 and OAUTHBEARER are librdkafka's own.
//! GSSAPI (Kerberos) is not built in: it needs Cyrus SASL on every machine.

/// The rdkafka this crate builds clients with (for [`client_context!`]).
pub use rdkafka;

pub mod diagnose;
pub mod hooks;
pub mod secret;
pub mod settings;

#[cfg(feature = "clap")]
pub mod args;
#[cfg(feature = "msk-iam")]
pub mod msk_iam;

pub use diagnose::{Problem, ProblemKind, Watch};
pub use hooks::{Hooks, KafkaContext, TokenSource};
pub use secret::Secret;
pub use settings::{
    Connection, Field, Naming, SaslMechanism, Security, SecurityProtocol, SettingsError, Tokens,
    parse_kafka_option, refuse_secrets,
};

#[cfg(feature = "clap")]
pub use args::SecurityArgs;
