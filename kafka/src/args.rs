//! The command-line flags (and environment variables) of a Kafka connection, shared by every command that connects.

use std::path::PathBuf;

use crate::secret::{Secret, read_secret_file};
use crate::settings::{
    Connection, Field, Naming, SaslMechanism, Security, SecurityProtocol, SettingsError,
    parse_kafka_option, refuse_secrets,
};

/// The environment variable the SASL password is read from (there is no flag for it: a command
/// line is readable by every user of the machine).
pub const PASSWORD_ENV: &str = "KAFKA_SASL_PASSWORD";

/// TLS, SASL and extra librdkafka settings of a connection; flatten into a command's arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// plaintext, ssl, sasl_plaintext or sasl_ssl [default: sasl_ssl with a SASL mechanism, ssl
    /// with only a CA or client certificate, else plaintext].
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_name = "PROTOCOL")]
    pub security_protocol: Option<SecurityProtocol>,
    /// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, or AWS_MSK_IAM (the AWS credentials of the machine).
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_name = "MECHANISM")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name (PLAIN, SCRAM). The password comes from KAFKA_SASL_PASSWORD or
    /// --sasl-password-file, never from the command line.
    #[arg(long, env = "KAFKA_SASL_USERNAME", value_name = "USER")]
    pub sasl_username: Option<String>,
    /// File whose first line is the SASL password.
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE", value_name = "FILE")]
    pub sasl_password_file: Option<PathBuf>,
    /// PEM file of the CA certificates that verify the brokers [default: the system's CA store].
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION", value_name = "FILE")]
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by certificate (mutual TLS).
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION", value_name = "FILE")]
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM private key (unencrypted) of the client certificate.
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION", value_name = "FILE")]
    pub ssl_key_location: Option<PathBuf>,
    /// AWS region of the MSK cluster, with AWS_MSK_IAM [default: AWS_REGION, the profile's, or
    /// the instance's].
    #[arg(long, env = "KAFKA_MSK_REGION", value_name = "REGION")]
    pub msk_region: Option<String>,
    /// Extra librdkafka setting, key=value (timeouts, client.id, ...), applied last; repeatable.
    /// Secrets are refused here.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_kafka_option)]
    pub kafka_options: Vec<(String, String)>,
}

impl SecurityArgs {
    /// The connection to `brokers`, with the password from the environment or its file; validated.
    pub fn connection(&self, brokers: &str) -> Result<Connection, SettingsError> {
        self.connection_with(brokers, std::env::var(PASSWORD_ENV).ok())
    }

    /// [`connection`](Self::connection) with the password variable's value given.
    pub fn connection_with(
        &self,
        brokers: &str,
        password_env: Option<String>,
    ) -> Result<Connection, SettingsError> {
        let n = Naming::CommandLine;
        refuse_secrets(&self.kafka_options, n)?;
        let password = match (&self.sasl_password_file, password_env) {
            (Some(_), Some(_)) => {
                return Err(SettingsError::new(
                    n,
                    Field::SaslPassword,
                    "both KAFKA_SASL_PASSWORD and a password file are set: keep one",
                ));
            }
            (Some(file), None) => Some(
                read_secret_file(file)
                    .map_err(|why| SettingsError::new(n, Field::SaslPassword, why))?,
            ),
            (None, Some(p)) if !p.is_empty() => Some(Secret::new(p)),
            _ => None,
        };
        let conn = Connection {
            brokers: brokers.to_owned(),
            security: Security {
                protocol: self.security_protocol,
                mechanism: self.sasl_mechanism,
                username: self.sasl_username.clone(),
                // A password left in the environment is ignored unless a mechanism uses it.
                password: password.filter(|_| {
                    self.sasl_mechanism
                        .is_some_and(SaslMechanism::takes_password)
                }),
                ca_location: self.ssl_ca_location.clone(),
                certificate_location: self.ssl_certificate_location.clone(),
                key_location: self.ssl_key_location.clone(),
                aws_region: self.msk_region.clone(),
            },
            options: self.kafka_options.clone(),
            naming: n,
            tokens: None,
        };
        conn.validate()?;
        Ok(conn)
    }

    /// The flags and variables that give `conn` to a child process (a password goes to the child's
    /// environment, never its arguments): `(args, env)`.
    pub fn for_child(conn: &Connection) -> (Vec<String>, Vec<(String, String)>) {
        let s = &conn.security;
        let mut args = Vec::new();
        let mut env = Vec::new();
        if let Some(p) = s.protocol {
            args.extend(["--security-protocol".into(), p.to_string()]);
        }
        if let Some(m) = s.mechanism {
            args.extend(["--sasl-mechanism".into(), m.as_str().into()]);
        }
        if let Some(u) = &s.username {
            args.extend(["--sasl-username".into(), u.clone()]);
        }
        if let Some(p) = &s.password {
            env.push((PASSWORD_ENV.to_owned(), p.expose().to_owned()));
        }
        for (flag, path) in [
            ("--ssl-ca-location", &s.ca_location),
            ("--ssl-certificate-location", &s.certificate_location),
            ("--ssl-key-location", &s.key_location),
        ] {
            if let Some(p) = path {
                args.extend([flag.into(), p.display().to_string()]);
            }
        }
        if let Some(r) = &s.aws_region {
            args.extend(["--msk-region".into(), r.clone()]);
        }
        for (k, v) in &conn.options {
            args.extend(["--kafka-option".into(), format!("{k}={v}")]);
        }
        (args, env)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        security: SecurityArgs,
    }

    fn parse(args: &[&str]) -> SecurityArgs {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .security
    }

    #[test]
    fn the_password_comes_from_the_environment_or_a_file_never_a_flag() {
        assert!(Cli::try_parse_from(["x", "--sasl-password", "pw"]).is_err());
        let e = parse(&["--kafka-option", "sasl.password=pw"])
            .connection_with("b:9096", None)
            .unwrap_err();
        assert!(
            e.why.contains("is a secret") && !e.why.contains("pw"),
            "{e}"
        );
        let a = parse(&["--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "u"]);
        let c = a.connection_with("b:9096", Some("pw".into())).unwrap();
        assert_eq!(c.security.password.unwrap().expose(), "pw");
        let e = a.connection_with("b:9096", None).unwrap_err();
        assert!(e.setting.contains("KAFKA_SASL_PASSWORD"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let mut a = a;
        a.sasl_password_file = Some(f);
        let c = a.connection_with("b:9096", None).unwrap();
        assert_eq!(c.security.password.unwrap().expose(), "from-file");
        assert!(a.connection_with("b:9096", Some("pw".into())).is_err());
    }

    #[test]
    fn a_child_gets_the_same_connection_with_the_password_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let a = parse(&[
            "--sasl-mechanism",
            "scram-sha-256",
            "--sasl-username",
            "u",
            "--ssl-ca-location",
            ca.to_str().unwrap(),
            "--kafka-option",
            "linger.ms=5",
        ]);
        let conn = a.connection_with("b:9094", Some("pw".into())).unwrap();
        let (args, env) = SecurityArgs::for_child(&conn);
        assert!(!args.iter().any(|a| a.contains("pw")), "{args:?}");
        assert_eq!(env, vec![(PASSWORD_ENV.to_owned(), "pw".to_owned())]);
        let mut argv = vec!["x"];
        argv.extend(args.iter().map(String::as_str));
        let again = Cli::try_parse_from(argv).unwrap().security;
        assert_eq!(
            again.connection_with("b:9094", Some("pw".into())).unwrap(),
            conn
        );
    }

    #[test]
    fn a_stray_password_variable_is_ignored_without_a_mechanism() {
        let c = parse(&[])
            .connection_with("b:9092", Some("pw".into()))
            .unwrap();
        assert_eq!(c, Connection::plaintext("b:9092"));
    }
}
