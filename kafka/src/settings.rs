//! The connection settings every client shares: brokers, security protocol, SASL, TLS files, extra librdkafka options.
//!
//! A [`Connection`] is built from the agent's `[kafka]` table or from the command line and the
//! environment (see [`crate::args`]); [`Connection::validate`] checks it before any client exists,
//! and [`Connection::client_config`] turns it into librdkafka properties. Every error names the
//! setting the way the user wrote it ([`Naming`]), so the message says what to change.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::sync::Arc;

use rdkafka::config::ClientConfig;
use serde::Deserialize;

use crate::hooks::TokenSource;
use crate::secret::Secret;

/// How a client talks to the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS, authenticated by a client certificate if one is set.
    Ssl,
    /// SASL without TLS: the credentials cross the network readable (PLAIN) or hashed (SCRAM).
    SaslPlaintext,
    /// SASL over TLS: what Amazon MSK, Confluent Cloud and Aiven expect.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection is encrypted.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plaintext" => Ok(Self::Plaintext),
            "ssl" => Ok(Self::Ssl),
            "sasl_plaintext" => Ok(Self::SaslPlaintext),
            "sasl_ssl" => Ok(Self::SaslSsl),
            _ => Err(format!(
                "`{s}` is not a security protocol: use plaintext, ssl, sasl_plaintext or sasl_ssl"
            )),
        }
    }
}

impl TryFrom<String> for SecurityProtocol {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a SASL client proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SaslMechanism {
    /// User name and password, sent as they are (use with TLS only): Confluent Cloud's API keys.
    Plain,
    /// Salted challenge-response with SHA-256.
    ScramSha256,
    /// Salted challenge-response with SHA-512: Amazon MSK's SCRAM.
    ScramSha512,
    /// Amazon MSK's IAM access control: SASL OAUTHBEARER with a SigV4-signed token made from the
    /// AWS credentials of the machine (instance profile, environment, ...).
    AwsMskIam,
    /// SASL OAUTHBEARER with tokens from [`Connection::tokens`], for programs that embed the
    /// clients and bring their own identity provider (not accepted from configuration).
    OAuthBearer,
}

impl SaslMechanism {
    /// The name users write (and librdkafka's, but for MSK IAM, which is OAUTHBEARER there).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::AwsMskIam => "AWS_MSK_IAM",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// librdkafka's `sasl.mechanism`.
    pub fn librdkafka(self) -> &'static str {
        match self {
            Self::AwsMskIam | Self::OAuthBearer => "OAUTHBEARER",
            other => other.as_str(),
        }
    }

    /// Whether the mechanism takes a user name and a password.
    pub fn takes_password(self) -> bool {
        !matches!(self, Self::AwsMskIam | Self::OAuthBearer)
    }
}

impl FromStr for SaslMechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().replace('_', "-").as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            "AWS-MSK-IAM" => Ok(Self::AwsMskIam),
            _ => Err(format!(
                "`{s}` is not a SASL mechanism: use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM"
            )),
        }
    }
}

impl TryFrom<String> for SaslMechanism {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection setting, for messages that must name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The bootstrap brokers.
    Brokers,
    /// The security protocol.
    SecurityProtocol,
    /// The SASL mechanism.
    SaslMechanism,
    /// The SASL user name.
    SaslUsername,
    /// The SASL password (from a file or the environment).
    SaslPassword,
    /// The CA certificates that verify the brokers.
    SslCaLocation,
    /// The client certificate (mutual TLS).
    SslCertificateLocation,
    /// The client certificate's private key.
    SslKeyLocation,
    /// The AWS region of an MSK cluster (IAM access control).
    AwsRegion,
    /// An extra librdkafka option.
    Option,
}

/// Where the settings came from, so that messages name them as the user wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// Command-line flags and their environment variables (`damselfly run`, `simulate`, bench).
    #[default]
    CommandLine,
    /// The `[kafka]` table of `agent.toml`.
    AgentToml,
}

impl Naming {
    /// How the user sets `field`.
    pub fn name(self, field: Field) -> &'static str {
        match (self, field) {
            (Self::CommandLine, Field::Brokers) => "--brokers (KAFKA_BROKERS)",
            (Self::CommandLine, Field::SecurityProtocol) => {
                "--security-protocol (KAFKA_SECURITY_PROTOCOL)"
            }
            (Self::CommandLine, Field::SaslMechanism) => "--sasl-mechanism (KAFKA_SASL_MECHANISM)",
            (Self::CommandLine, Field::SaslUsername) => "--sasl-username (KAFKA_SASL_USERNAME)",
            (Self::CommandLine, Field::SaslPassword) => {
                "the SASL password (KAFKA_SASL_PASSWORD, or --sasl-password-file / KAFKA_SASL_PASSWORD_FILE)"
            }
            (Self::CommandLine, Field::SslCaLocation) => {
                "--ssl-ca-location (KAFKA_SSL_CA_LOCATION)"
            }
            (Self::CommandLine, Field::SslCertificateLocation) => {
                "--ssl-certificate-location (KAFKA_SSL_CERTIFICATE_LOCATION)"
            }
            (Self::CommandLine, Field::SslKeyLocation) => {
                "--ssl-key-location (KAFKA_SSL_KEY_LOCATION)"
            }
            (Self::CommandLine, Field::AwsRegion) => "--msk-region (KAFKA_MSK_REGION, AWS_REGION)",
            (Self::CommandLine, Field::Option) => "--kafka-option",
            (Self::AgentToml, Field::Brokers) => "kafka.brokers",
            (Self::AgentToml, Field::SecurityProtocol) => "kafka.security_protocol",
            (Self::AgentToml, Field::SaslMechanism) => "kafka.sasl_mechanism",
            (Self::AgentToml, Field::SaslUsername) => "kafka.sasl_username",
            (Self::AgentToml, Field::SaslPassword) => {
                "the SASL password (kafka.sasl_password_file, kafka.sasl_password, or KAFKA_SASL_PASSWORD)"
            }
            (Self::AgentToml, Field::SslCaLocation) => "kafka.ssl_ca_location",
            (Self::AgentToml, Field::SslCertificateLocation) => "kafka.ssl_certificate_location",
            (Self::AgentToml, Field::SslKeyLocation) => "kafka.ssl_key_location",
            (Self::AgentToml, Field::AwsRegion) => "kafka.msk_region (or AWS_REGION)",
            (Self::AgentToml, Field::Option) => "[kafka.options]",
        }
    }
}

/// A setting that cannot work, named as the user wrote it, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {why}")]
pub struct SettingsError {
    /// The setting at fault, as the user sets it.
    pub setting: &'static str,
    /// What is wrong and how to fix it.
    pub why: String,
}

impl SettingsError {
    /// An error about `field` under `naming`.
    pub fn new(naming: Naming, field: Field, why: impl Into<String>) -> Self {
        Self {
            setting: naming.name(field),
            why: why.into(),
        }
    }
}

/// TLS and authentication of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Security {
    /// The protocol as set; `None` infers it (see [`Security::protocol`]).
    pub protocol: Option<SecurityProtocol>,
    /// The SASL mechanism, when the brokers require SASL.
    pub mechanism: Option<SaslMechanism>,
    /// SASL user name (PLAIN, SCRAM).
    pub username: Option<String>,
    /// SASL password (PLAIN, SCRAM); never from the command line.
    pub password: Option<Secret>,
    /// PEM file of the CA certificates that verify the brokers; `None` uses the system's store.
    pub ca_location: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by certificate.
    pub certificate_location: Option<PathBuf>,
    /// PEM private key of the client certificate (unencrypted).
    pub key_location: Option<PathBuf>,
    /// AWS region of the MSK cluster, for IAM access control; `None` uses the AWS default chain.
    pub aws_region: Option<String>,
}

impl Security {
    /// The protocol in force: as set, else `sasl_ssl` when a SASL mechanism is set (SASL without
    /// TLS must be asked for), else `ssl` when a CA or client certificate is set, else `plaintext`.
    pub fn protocol(&self) -> SecurityProtocol {
        match self.protocol {
            Some(p) => p,
            None if self.mechanism.is_some() => SecurityProtocol::SaslSsl,
            None if self.ca_location.is_some() || self.certificate_location.is_some() => {
                SecurityProtocol::Ssl
            }
            None => SecurityProtocol::Plaintext,
        }
    }

    /// A one-line description without secrets, for logs: `sasl_ssl SCRAM-SHA-512 as agent`.
    pub fn describe(&self) -> String {
        let mut s = self.protocol().to_string();
        if let Some(m) = self.mechanism {
            s.push(' ');
            s.push_str(m.as_str());
        }
        if let Some(u) = &self.username {
            s.push_str(" as ");
            s.push_str(u);
        }
        s
    }
}

/// Where a connection's OAUTHBEARER tokens come from when the program supplies them.
#[derive(Clone)]
pub struct Tokens(pub Arc<dyn TokenSource>);

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl PartialEq for Tokens {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Tokens {}

/// Everything a client needs to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connection {
    /// Bootstrap brokers, `host:port[,host:port]`.
    pub brokers: String,
    /// TLS and authentication.
    pub security: Security,
    /// Extra librdkafka properties, applied last (they win over everything above).
    pub options: Vec<(String, String)>,
    /// How the settings are named in errors.
    pub naming: Naming,
    /// The token source of [`SaslMechanism::OAuthBearer`].
    pub tokens: Option<Tokens>,
}

impl Connection {
    /// A plaintext connection to `brokers`, named as command-line settings.
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            ..Self::default()
        }
    }

    /// The same connection to other brokers (a test's own broker, the SASL listener).
    pub fn with_brokers(&self, brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            ..self.clone()
        }
    }

    /// Checks that the settings can work together and that the files they name are readable.
    ///
    /// The checks run in this order and the first that fails is the error.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.check_brokers()?;
        self.check_protocol_and_mechanism()?;
        self.check_credentials()?;
        self.check_tls_files_need_tls()?;
        self.check_certificate_and_key()?;
        self.check_files_readable()
    }

    /// The error about `field`, named the way the user wrote the settings.
    fn error(&self, field: Field, why: impl Into<String>) -> Result<(), SettingsError> {
        Err(SettingsError::new(self.naming, field, why))
    }

    /// Checks that there are bootstrap brokers.
    fn check_brokers(&self) -> Result<(), SettingsError> {
        if self.brokers.trim().is_empty() {
            return self.error(Field::Brokers, "must not be empty (host:port[,host:port])");
        }
        Ok(())
    }

    /// Checks that a SASL protocol has a mechanism and that a mechanism has a SASL protocol.
    fn check_protocol_and_mechanism(&self) -> Result<(), SettingsError> {
        let protocol = self.security.protocol();
        match (protocol.sasl(), self.security.mechanism) {
            (true, None) => self.error(
                Field::SaslMechanism,
                format!(
                    "{protocol} needs a SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM"
                ),
            ),
            (false, Some(m)) => self.error(
                Field::SecurityProtocol,
                format!(
                    "is {protocol}, which does not use SASL, but the SASL mechanism is {m}: set sasl_ssl (or leave it unset)"
                ),
            ),
            _ => Ok(()),
        }
    }

    /// Checks that the SASL mechanism has the credentials it takes, and no others.
    fn check_credentials(&self) -> Result<(), SettingsError> {
        let s = &self.security;
        let Some(m) = s.mechanism else {
            return Ok(());
        };
        if m.takes_password() {
            if s.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                return self.error(Field::SaslUsername, format!("{m} needs a user name"));
            }
            if s.password.as_ref().is_none_or(|p| p.expose().is_empty()) {
                return self.error(Field::SaslPassword, format!("{m} needs a password"));
            }
            return Ok(());
        }
        if m == SaslMechanism::OAuthBearer && self.tokens.is_none() {
            return self.error(
                Field::SaslMechanism,
                "OAUTHBEARER needs a token source from the program; for Amazon MSK use AWS_MSK_IAM",
            );
        }
        if !s.protocol().tls() {
            return self.error(
                Field::SecurityProtocol,
                format!("{m} works over TLS only: use sasl_ssl (MSK's IAM listener is port 9098)"),
            );
        }
        if s.username.is_some() || s.password.is_some() {
            return self.error(
                Field::SaslUsername,
                "AWS_MSK_IAM takes no user name or password (it signs with the AWS credentials): remove them",
            );
        }
        Ok(())
    }

    /// Checks that no CA or client certificate is set on a connection without TLS.
    fn check_tls_files_need_tls(&self) -> Result<(), SettingsError> {
        let s = &self.security;
        let protocol = s.protocol();
        if protocol.tls() {
            return Ok(());
        }
        for (field, path) in [
            (Field::SslCaLocation, &s.ca_location),
            (Field::SslCertificateLocation, &s.certificate_location),
        ] {
            if path.is_some() {
                return self.error(
                    field,
                    format!(
                        "is set but the security protocol is {protocol}, without TLS: use ssl or sasl_ssl"
                    ),
                );
            }
        }
        Ok(())
    }

    /// Checks that a client certificate and its private key come together.
    fn check_certificate_and_key(&self) -> Result<(), SettingsError> {
        match (
            &self.security.certificate_location,
            &self.security.key_location,
        ) {
            (Some(_), None) => self.error(
                Field::SslKeyLocation,
                "a client certificate needs its private key",
            ),
            (None, Some(_)) => self.error(
                Field::SslCertificateLocation,
                "a private key was given without its client certificate",
            ),
            _ => Ok(()),
        }
    }

    /// Checks that the TLS files that are set are readable PEM files.
    fn check_files_readable(&self) -> Result<(), SettingsError> {
        let s = &self.security;
        for (field, path) in [
            (Field::SslCaLocation, &s.ca_location),
            (Field::SslCertificateLocation, &s.certificate_location),
            (Field::SslKeyLocation, &s.key_location),
        ] {
            if let Some(path) = path {
                readable_pem(path).map_err(|why| SettingsError::new(self.naming, field, why))?;
            }
        }
        Ok(())
    }

    /// The librdkafka properties of the connection: ours, then [`Connection::options`].
    pub fn client_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        self.apply(&mut cc);
        cc
    }

    /// Sets the connection's properties on `cc` (a client that already set its own).
    pub fn apply(&self, cc: &mut ClientConfig) {
        let s = &self.security;
        let protocol = s.protocol();
        cc.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", protocol.as_str());
        if protocol.tls() {
            // Vendored OpenSSL looks for the system's CA store under its own build prefix, which no
            // distribution uses: without a CA file, have librdkafka probe the usual places.
            let ca = s
                .ca_location
                .as_deref()
                .map_or_else(|| "probe".to_owned(), |p| p.display().to_string());
            cc.set("ssl.ca.location", ca);
            if let (Some(cert), Some(key)) = (&s.certificate_location, &s.key_location) {
                cc.set("ssl.certificate.location", cert.display().to_string())
                    .set("ssl.key.location", key.display().to_string());
            }
        }
        if let Some(m) = s.mechanism {
            cc.set("sasl.mechanism", m.librdkafka());
            if let Some(u) = &s.username {
                cc.set("sasl.username", u);
            }
            if let Some(p) = &s.password {
                cc.set("sasl.password", p.expose());
            }
        }
        for (k, v) in &self.options {
            cc.set(k, v);
        }
    }
}

/// Checks that `path` is a readable file that looks like PEM.
fn readable_pem(path: &Path) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !text.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!(
            "{} is not a PEM file (no -----BEGIN line): give the certificate or key in PEM",
            path.display()
        ));
    }
    Ok(())
}

/// Parses a `key=value` librdkafka option as given to `--kafka-option`. Secrets are refused
/// afterwards by [`refuse_secrets`], whose message does not repeat the value (clap's would).
pub fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not key=value (e.g. linger.ms=50)")),
    }
}

/// Refuses librdkafka options given on a command line that hold secrets: a command line is
/// readable by every user of the machine (`/proc/*/cmdline`).
pub fn refuse_secrets(options: &[(String, String)], naming: Naming) -> Result<(), SettingsError> {
    match options
        .iter()
        .find(|(k, _)| crate::secret::is_secret_option(k))
    {
        Some((k, _)) => Err(SettingsError::new(
            naming,
            Field::Option,
            format!(
                "{k} is a secret, and a command line is readable by every user of the machine: \
                 give the SASL password in KAFKA_SASL_PASSWORD or a password file, other secrets in a file"
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl(mechanism: SaslMechanism) -> Connection {
        Connection {
            brokers: "b:9096".into(),
            security: Security {
                mechanism: Some(mechanism),
                username: Some("agent".into()),
                password: Some(Secret::new("pw")),
                ..Security::default()
            },
            ..Connection::default()
        }
    }

    fn get(cc: &ClientConfig, key: &str) -> Option<String> {
        cc.get(key).map(str::to_owned)
    }

    #[test]
    fn a_mechanism_alone_means_sasl_over_tls_with_the_system_cas() {
        let c = sasl(SaslMechanism::ScramSha512);
        c.validate().unwrap();
        let cc = c.client_config();
        assert_eq!(get(&cc, "security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(get(&cc, "sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&cc, "sasl.username").as_deref(), Some("agent"));
        assert_eq!(get(&cc, "sasl.password").as_deref(), Some("pw"));
        assert_eq!(get(&cc, "ssl.ca.location").as_deref(), Some("probe"));
    }

    #[test]
    fn plaintext_sets_no_tls_or_sasl_and_options_win() {
        let mut c = Connection::plaintext("127.0.0.1:9092");
        c.options.push(("security.protocol".into(), "ssl".into()));
        c.options.push(("linger.ms".into(), "7".into()));
        c.validate().unwrap();
        let cc = c.client_config();
        assert_eq!(get(&cc, "security.protocol").as_deref(), Some("ssl"));
        assert_eq!(get(&cc, "linger.ms").as_deref(), Some("7"));
        assert_eq!(get(&cc, "ssl.ca.location"), None);
        assert_eq!(get(&cc, "sasl.mechanism"), None);
    }

    #[test]
    fn msk_iam_is_oauthbearer_over_tls_without_a_password() {
        let mut c = sasl(SaslMechanism::AwsMskIam);
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "--sasl-username (KAFKA_SASL_USERNAME)");
        assert!(e.why.contains("takes no user name"), "{e}");
        c.security.username = None;
        c.security.password = None;
        c.validate().unwrap();
        assert_eq!(
            get(&c.client_config(), "sasl.mechanism").as_deref(),
            Some("OAUTHBEARER")
        );
        c.security.protocol = Some(SecurityProtocol::SaslPlaintext);
        let e = c.validate().unwrap_err();
        assert!(e.why.contains("over TLS only"), "{e}");
    }

    #[test]
    fn errors_name_the_setting_as_the_user_wrote_it() {
        let mut c = sasl(SaslMechanism::ScramSha256);
        c.security.password = None;
        let e = c.validate().unwrap_err();
        assert!(e.setting.contains("KAFKA_SASL_PASSWORD"), "{e}");
        c.naming = Naming::AgentToml;
        let e = c.validate().unwrap_err();
        assert!(
            e.setting
                .starts_with("the SASL password (kafka.sasl_password_file"),
            "{e}"
        );
        assert_eq!(e.why, "SCRAM-SHA-256 needs a password");

        let mut c = sasl(SaslMechanism::Plain);
        c.naming = Naming::AgentToml;
        c.security.username = Some(" ".into());
        assert_eq!(c.validate().unwrap_err().setting, "kafka.sasl_username");

        let c = Connection {
            security: Security {
                protocol: Some(SecurityProtocol::SaslSsl),
                ..Security::default()
            },
            ..Connection::plaintext("b:1")
        };
        assert!(
            c.validate()
                .unwrap_err()
                .why
                .contains("needs a SASL mechanism")
        );
        let mut c = sasl(SaslMechanism::Plain);
        c.security.protocol = Some(SecurityProtocol::Ssl);
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "--security-protocol (KAFKA_SECURITY_PROTOCOL)");
        assert!(Connection::plaintext(" ").validate().is_err());
    }

    #[test]
    fn tls_files_must_be_readable_pem_and_need_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let mut c = sasl(SaslMechanism::ScramSha512);
        c.security.ca_location = Some(ca.clone());
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "--ssl-ca-location (KAFKA_SSL_CA_LOCATION)");
        assert!(e.why.starts_with("cannot read"), "{e}");
        std::fs::write(&ca, "not a certificate").unwrap();
        assert!(c.validate().unwrap_err().why.contains("not a PEM file"));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n...\n").unwrap();
        c.validate().unwrap();
        assert_eq!(
            get(&c.client_config(), "ssl.ca.location"),
            Some(ca.display().to_string())
        );
        c.security.protocol = Some(SecurityProtocol::SaslPlaintext);
        assert!(c.validate().unwrap_err().why.contains("without TLS"));

        let mut c = Connection::plaintext("b:1");
        c.security.certificate_location = Some(ca.clone());
        assert_eq!(c.security.protocol(), SecurityProtocol::Ssl);
        assert_eq!(
            c.validate().unwrap_err().setting,
            "--ssl-key-location (KAFKA_SSL_KEY_LOCATION)"
        );
    }

    #[test]
    fn names_parse_as_users_write_them() {
        assert_eq!("SASL_SSL".parse(), Ok(SecurityProtocol::SaslSsl));
        assert_eq!("scram-sha-512".parse(), Ok(SaslMechanism::ScramSha512));
        assert_eq!("SCRAM_SHA_256".parse(), Ok(SaslMechanism::ScramSha256));
        assert_eq!("aws_msk_iam".parse(), Ok(SaslMechanism::AwsMskIam));
        assert!(
            "GSSAPI"
                .parse::<SaslMechanism>()
                .unwrap_err()
                .contains("PLAIN")
        );
        assert!("tls".parse::<SecurityProtocol>().is_err());
        assert_eq!(
            sasl(SaslMechanism::Plain).security.describe(),
            "sasl_ssl PLAIN as agent"
        );
    }

    #[test]
    fn kafka_options_are_key_value_and_never_secrets_on_a_command_line() {
        assert_eq!(
            parse_kafka_option("a.b=c=d").unwrap(),
            ("a.b".to_owned(), "c=d".to_owned())
        );
        assert!(
            parse_kafka_option("novalue")
                .unwrap_err()
                .contains("key=value")
        );
        assert!(parse_kafka_option("=x").is_err());
        for key in ["sasl.password", "SSL.KEY.PASSWORD", "ssl.key.pem"] {
            let options = vec![parse_kafka_option(&format!("{key}=hunter2")).unwrap()];
            let e = refuse_secrets(&options, Naming::CommandLine).unwrap_err();
            assert_eq!(e.setting, "--kafka-option");
            assert!(e.why.contains("is a secret"), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        refuse_secrets(&[("linger.ms".into(), "5".into())], Naming::CommandLine).unwrap();
    }
}
