//! librdkafka's connection errors turned into problems that say which setting to fix.
//!
//! librdkafka reports a refused password, an untrusted certificate or an unreachable broker as a
//! client error with a code and a free-text reason, and retries forever. [`diagnose`] classifies
//! one; [`Watch`] (inside every Damselfly client's context, see [`crate::Hooks`]) logs each kind of
//! problem once a minute at most, and keeps the latest so that a command can stop within seconds
//! with the problem instead of a bare time-out.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::settings::{Connection, Field, Naming, SaslMechanism};

/// How often the same kind of problem is logged again while it lasts.
const RELOG_EVERY: Duration = Duration::from_secs(60);

/// What kind of connection problem a client error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The brokers refused the SASL credentials (or no token could be made for them).
    Credentials,
    /// The brokers' certificate is not signed by a trusted CA.
    Certificate,
    /// TLS failed otherwise (a plaintext listener, a bad client certificate, ...).
    Tls,
    /// The broker hung up before answering: the client speaks the wrong security protocol.
    Protocol,
    /// The credentials are good but lack a permission (ACL) for the topic, group or cluster.
    Authorization,
    /// No broker could be reached (refused, name not resolved, timed out).
    Unreachable,
}

impl ProblemKind {
    /// Whether waiting cannot help: the settings must change (every kind but [`Unreachable`](Self::Unreachable)).
    pub fn needs_a_fix(self) -> bool {
        !matches!(self, Self::Unreachable)
    }
}

/// A connection problem: its kind, the setting to look at and a message saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What went wrong.
    pub kind: ProblemKind,
    /// The setting to change, as the user sets it.
    pub setting: &'static str,
    /// The whole explanation, librdkafka's own words included.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

/// What the problems of one connection are explained with: its settings, without secrets.
#[derive(Debug, Clone)]
pub struct Subject {
    naming: Naming,
    brokers: String,
    security: String,
    user: Option<String>,
    mechanism: Option<SaslMechanism>,
}

impl Subject {
    /// The subject of `conn`'s problems.
    pub fn of(conn: &Connection) -> Self {
        Self {
            naming: conn.naming,
            brokers: conn.brokers.clone(),
            security: conn.security.describe(),
            user: conn.security.username.clone(),
            mechanism: conn.security.mechanism,
        }
    }

    fn name(&self, field: Field) -> &'static str {
        self.naming.name(field)
    }

    /// `Some` problem of `kind`, with the setting `field` (as this connection names it) to look at.
    fn problem(&self, kind: ProblemKind, field: Field, message: String) -> Option<Problem> {
        Some(Problem {
            kind,
            setting: self.name(field),
            message,
        })
    }
}

/// Classifies a client error of a connection; `None` for errors that are not about connecting.
pub fn diagnose(
    code: Option<RDKafkaErrorCode>,
    reason: &str,
    subject: &Subject,
) -> Option<Problem> {
    // The first that matches wins: TLS, then credentials, then the rest.
    let lower = reason.to_ascii_lowercase();
    tls_problem(code, reason, &lower, subject)
        .or_else(|| credentials_problem(code, reason, &lower, subject))
        .or_else(|| broker_problem(code, reason, &lower, subject))
}

/// An untrusted certificate, a plaintext listener, or another failed TLS handshake.
fn tls_problem(
    code: Option<RDKafkaErrorCode>,
    reason: &str,
    lower: &str,
    s: &Subject,
) -> Option<Problem> {
    if lower.contains("certificate verify failed") || lower.contains("unable to get local issuer") {
        return s.problem(
            ProblemKind::Certificate,
            Field::SslCaLocation,
            format!(
                "the brokers' TLS certificate is not trusted ({reason}): set {} to the PEM file of the CA that signed the brokers' certificates (unset, the system's CA store is used)",
                s.name(Field::SslCaLocation)
            ),
        );
    }
    if lower.contains("plaintext broker listener") {
        return s.problem(
            ProblemKind::Protocol,
            Field::SecurityProtocol,
            format!(
                "the listener at {} does not speak TLS ({reason}): check {} and {}",
                s.brokers,
                s.name(Field::Brokers),
                s.name(Field::SecurityProtocol)
            ),
        );
    }
    if lower.contains("ssl handshake failed") || code == Some(RDKafkaErrorCode::SSL) {
        let check =
            if lower.contains("wrong version number") || lower.contains("packet length too long") {
                format!(
                    "the listener at {} does not speak TLS: check {} and {}",
                    s.brokers,
                    s.name(Field::Brokers),
                    s.name(Field::SecurityProtocol)
                )
            } else {
                format!(
                    "check {}, {} and {}",
                    s.name(Field::SecurityProtocol),
                    s.name(Field::SslCertificateLocation),
                    s.name(Field::SslKeyLocation)
                )
            };
        return s.problem(
            ProblemKind::Tls,
            Field::SecurityProtocol,
            format!("TLS with the brokers failed ({reason}): {check}"),
        );
    }
    None
}

/// Refused SASL credentials (or no token made for them), with the settings of the mechanism.
fn credentials_problem(
    code: Option<RDKafkaErrorCode>,
    reason: &str,
    lower: &str,
    s: &Subject,
) -> Option<Problem> {
    use RDKafkaErrorCode as C;
    if !(matches!(code, Some(C::Authentication | C::SaslAuthenticationFailed))
        || lower.contains("sasl authentication error")
        || lower.contains("sasl oauthbearer token"))
    {
        return None;
    }
    let who = s
        .user
        .as_deref()
        .map_or(String::new(), |u| format!(" for user `{u}`"));
    let (field, check) = match s.mechanism {
        Some(SaslMechanism::AwsMskIam) => (
            Field::AwsRegion,
            format!(
                "check the AWS credentials of this machine (instance profile, AWS_* variables), \
                 their kafka-cluster:Connect permission, and {}",
                s.name(Field::AwsRegion)
            ),
        ),
        Some(SaslMechanism::OAuthBearer) => (
            Field::SaslMechanism,
            "check the tokens the program's token source makes".to_owned(),
        ),
        _ => (
            Field::SaslPassword,
            format!(
                "check {} and {}",
                s.name(Field::SaslUsername),
                s.name(Field::SaslPassword)
            ),
        ),
    };
    s.problem(
        ProblemKind::Credentials,
        field,
        format!(
            "the brokers refused the credentials{who} ({}; {reason}): {check}",
            s.security
        ),
    )
}

/// A connection closed for the wrong security protocol, a missing ACL, or no broker reachable.
fn broker_problem(
    code: Option<RDKafkaErrorCode>,
    reason: &str,
    lower: &str,
    s: &Subject,
) -> Option<Problem> {
    use RDKafkaErrorCode as C;
    if lower.contains("incorrect security.protocol")
        || lower.contains("connecting to a ssl listener")
        || lower.contains("connecting to a sasl listener")
        || lower.contains("disconnected while requesting apiversion")
    {
        return s.problem(
            ProblemKind::Protocol,
            Field::SecurityProtocol,
            format!(
                "the broker closed the connection before answering ({reason}): {} is {} here; check that it matches the listener at {}",
                s.name(Field::SecurityProtocol),
                s.security,
                s.brokers
            ),
        );
    }
    if matches!(
        code,
        Some(
            C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
        )
    ) {
        return s.problem(
            ProblemKind::Authorization,
            Field::SaslUsername,
            format!(
                "not authorized ({reason}): the credentials ({}) were accepted but lack an ACL for this topic or group",
                s.security
            ),
        );
    }
    if matches!(
        code,
        Some(C::AllBrokersDown | C::BrokerTransportFailure | C::Resolve)
    ) {
        return s.problem(
            ProblemKind::Unreachable,
            Field::Brokers,
            format!(
                "no broker reachable at {} ({reason}): check {} and the network",
                s.brokers,
                s.name(Field::Brokers)
            ),
        );
    }
    None
}

/// The problems one client has seen: each kind logged at most once a minute, the latest kept.
#[derive(Debug)]
pub struct Watch {
    subject: Subject,
    state: Mutex<WatchState>,
}

#[derive(Debug, Default)]
struct WatchState {
    latest: Option<Problem>,
    /// The latest problem that needs a fix: an outage seen after it does not hide it.
    blocking: Option<Problem>,
    logged: HashMap<ProblemKind, Instant>,
}

impl Watch {
    /// A watch over the problems of `conn`.
    pub fn new(conn: &Connection) -> Self {
        Self {
            subject: Subject::of(conn),
            state: Mutex::default(),
        }
    }

    /// Takes in one client error: classified, logged (problems at error level, once a minute;
    /// an unreachable broker at warn, since clients ride it out), and kept when it is a problem.
    pub fn saw(&self, error: &KafkaError, reason: &str) {
        let Some(problem) = diagnose(error.rdkafka_error_code(), reason, &self.subject) else {
            tracing::warn!(error = %error, reason, "kafka client");
            return;
        };
        let mut st = self.state.lock().expect("watch lock poisoned");
        let now = Instant::now();
        let due = st
            .logged
            .get(&problem.kind)
            .is_none_or(|at| now.duration_since(*at) >= RELOG_EVERY);
        if due {
            st.logged.insert(problem.kind, now);
            if problem.kind.needs_a_fix() {
                tracing::error!(setting = problem.setting, kind = ?problem.kind, "{problem}");
            } else {
                tracing::warn!(setting = problem.setting, kind = ?problem.kind, "{problem}");
            }
        } else {
            tracing::debug!(error = %error, reason, "kafka client");
        }
        if problem.kind.needs_a_fix() {
            st.blocking = Some(problem.clone());
        }
        st.latest = Some(problem);
    }

    /// The latest problem seen, if any.
    pub fn latest(&self) -> Option<Problem> {
        self.state
            .lock()
            .expect("watch lock poisoned")
            .latest
            .clone()
    }

    /// The latest problem seen that waiting cannot fix (credentials, certificates, protocol,
    /// ACLs), even when an outage was reported after it (librdkafka reports the broker as down
    /// right after it refused the credentials).
    pub fn blocking(&self) -> Option<Problem> {
        self.state
            .lock()
            .expect("watch lock poisoned")
            .blocking
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::settings::Security;

    fn subject(naming: Naming) -> Subject {
        Subject::of(&Connection {
            brokers: "127.0.0.1:9094".into(),
            security: Security {
                mechanism: Some(SaslMechanism::ScramSha512),
                username: Some("damselfly".into()),
                password: Some(Secret::new("pw")),
                ..Security::default()
            },
            naming,
            options: vec![],
            tokens: None,
        })
    }

    // The reasons below are librdkafka 2.12's own, as it reported them against Apache Kafka 4.4
    // here (localstack/up's SASL_SSL and PLAINTEXT listeners).
    #[test]
    fn a_refused_password_names_the_user_and_the_password_settings() {
        let p = diagnose(
            Some(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 322ms in state AUTH_REQ)",
            &subject(Naming::AgentToml),
        )
        .unwrap();
        assert_eq!(p.kind, ProblemKind::Credentials);
        assert!(p.message.contains("for user `damselfly`"), "{p}");
        assert!(p.message.contains("kafka.sasl_username"), "{p}");
        assert!(p.message.contains("kafka.sasl_password_file"), "{p}");
        assert!(!p.message.contains("pw)"), "{p}");
    }

    #[test]
    fn a_refused_msk_iam_token_points_at_the_aws_credentials() {
        let s = Subject::of(&Connection {
            brokers: "b-1:9098".into(),
            security: Security {
                mechanism: Some(SaslMechanism::AwsMskIam),
                ..Security::default()
            },
            ..Connection::default()
        });
        // Kafka's answer to a token it does not accept, as the local broker gave it.
        let p = diagnose(
            Some(RDKafkaErrorCode::Authentication),
            "sasl_ssl://b-1:9098/bootstrap: SASL authentication error: {\"status\":\"invalid_token\"} (after 305ms in state AUTH_REQ)",
            &s,
        )
        .unwrap();
        assert_eq!(p.kind, ProblemKind::Credentials);
        assert_eq!(p.setting, "--msk-region (KAFKA_MSK_REGION, AWS_REGION)");
        assert!(p.message.contains("kafka-cluster:Connect"), "{p}");
        assert!(!p.message.contains("password"), "{p}");
    }

    #[test]
    fn an_untrusted_certificate_names_the_ca_setting() {
        let p = diagnose(
            Some(RDKafkaErrorCode::SSL),
            "sasl_ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)",
            &subject(Naming::CommandLine),
        )
        .unwrap();
        assert_eq!(p.kind, ProblemKind::Certificate);
        assert_eq!(p.setting, "--ssl-ca-location (KAFKA_SSL_CA_LOCATION)");
        assert!(p.message.contains("not trusted"), "{p}");
    }

    #[test]
    fn protocol_mismatches_point_at_the_security_protocol() {
        let p = diagnose(
            Some(RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer: connecting to a PLAINTEXT broker listener? (after 7ms in state SSL_HANDSHAKE)",
            &subject(Naming::CommandLine),
        )
        .unwrap();
        assert_eq!(p.kind, ProblemKind::Protocol);
        assert!(p.message.contains("does not speak TLS"), "{p}");
        assert_eq!(p.setting, "--security-protocol (KAFKA_SECURITY_PROTOCOL)");
        // Older brokers or proxies: OpenSSL's own words for a plaintext answer.
        let p = diagnose(
            Some(RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: error:0A00010B:SSL routines::wrong version number (after 0ms in state SSL_HANDSHAKE)",
            &subject(Naming::CommandLine),
        )
        .unwrap();
        assert_eq!(p.kind, ProblemKind::Tls);
        assert!(p.message.contains("does not speak TLS"), "{p}");
        // librdkafka's hint when a plaintext client meets a TLS listener that answers garbage
        // (rdkafka_broker.c; Kafka 4.4 closes the connection instead, an outage to the client).
        let p = diagnose(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "127.0.0.1:9094/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 2ms in state APIVERSION_QUERY)",
            &subject(Naming::CommandLine),
        )
        .unwrap();
        assert_eq!(p.kind, ProblemKind::Protocol);
    }

    #[test]
    fn an_unreachable_broker_is_a_problem_waiting_may_fix() {
        let p = diagnose(
            Some(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
            &subject(Naming::CommandLine),
        )
        .unwrap();
        assert_eq!(p.kind, ProblemKind::Unreachable);
        assert!(!p.kind.needs_a_fix());
        assert!(p.message.contains("127.0.0.1:9094"), "{p}");
        assert_eq!(
            diagnose(
                Some(RDKafkaErrorCode::MessageTimedOut),
                "x",
                &subject(Naming::CommandLine)
            ),
            None
        );
    }

    #[test]
    fn a_watch_keeps_the_latest_problem_and_blocking_ignores_outages() {
        let conn = Connection::plaintext("127.0.0.1:1");
        let w = Watch::new(&conn);
        assert!(w.latest().is_none());
        w.saw(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(w.latest().unwrap().kind, ProblemKind::Unreachable);
        assert!(w.blocking().is_none());
        w.saw(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed",
        );
        assert_eq!(w.blocking().unwrap().kind, ProblemKind::Credentials);
        // librdkafka follows a refused handshake with "all brokers down": the cause stays.
        w.saw(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(w.latest().unwrap().kind, ProblemKind::Unreachable);
        assert_eq!(w.blocking().unwrap().kind, ProblemKind::Credentials);
    }
}
