//! Damselfly over TLS and SASL/SCRAM on Apache Kafka's SASL_SSL listener: the agent, the simulator and `run aggregate` connect with SCRAM-SHA-512 and the local stack's CA, and the lake holds every sample once; a wrong password and an untrusted CA are clear errors within seconds, and what the agent collected meanwhile reaches the topic once the setting is fixed.
//!
//! Also SASL OAUTHBEARER, the mechanism of MSK IAM: the agent's publisher and the runner take their
//! tokens from a token source, which the broker checks. MSK's tokens themselves are SigV4-signed
//! URLs only MSK validates (checked against botocore in kafka/tests); here the source makes the
//! unsecured JWTs Kafka's default validator accepts, which proves the clients' token plumbing.
//!
//! Needs `localstack/up` and its `localstack/.env` (the SASL_SSL listener, its user, password file
//! and CA), `DAMSELFLY_PYTHON` with DuckDB, and `openssl` (for a CA the broker does not use).

mod common;
use common::agent::{Agent, read_topic};
use common::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use base64::Engine as _;
use damselfly_agent::{Fleet, Publisher, PublisherConfig};
use damselfly_kafka::{Connection, SaslMechanism, Security, TokenSource, Tokens};
use damselfly_runner::{Function, FunctionError, RunnerConfig, ScalingConfig, Stats};
use rdkafka::client::OAuthToken;

/// Partitions of each test topic.
const PARTITIONS: i32 = 4;

/// How soon a refused password or certificate must be reported: librdkafka learns it in the
/// first handshake, well under a second; the rest is process start and a busy 2-core machine.
const REPORTED_WITHIN: Duration = Duration::from_secs(20);

/// The local stack's SASL_SSL listener and its credentials.
struct Sasl {
    brokers: String,
    user: String,
    password_file: PathBuf,
    ca: PathBuf,
}

fn sasl() -> Sasl {
    Sasl {
        brokers: env("DAMSELFLY_SASL_BROKERS"),
        user: env("DAMSELFLY_SASL_USERNAME"),
        password_file: env("DAMSELFLY_SASL_PASSWORD_FILE").into(),
        ca: env("DAMSELFLY_KAFKA_CA").into(),
    }
}

impl Sasl {
    /// Command-line flags of a client of the listener (the password from `password_file`).
    fn flags(&self, password_file: &Path, ca: &Path) -> Vec<String> {
        vec![
            "--brokers".into(),
            self.brokers.clone(),
            "--sasl-mechanism".into(),
            "SCRAM-SHA-512".into(),
            "--sasl-username".into(),
            self.user.clone(),
            "--sasl-password-file".into(),
            password_file.display().to_string(),
            "--ssl-ca-location".into(),
            ca.display().to_string(),
        ]
    }

    fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file)
            .unwrap()
            .trim_end()
            .to_owned()
    }
}

/// An agent configuration for the SASL_SSL listener, collecting every second.
fn agent_config(
    dir: &Path,
    s: &Sasl,
    topic: &str,
    vm: &str,
    password_file: &Path,
    ca: &Path,
) -> PathBuf {
    let path = dir.join(format!("{vm}.toml"));
    std::fs::write(
        &path,
        format!(
            "interval = \"1s\"\n\
             [tags]\nns = \"ns-tls\"\nmcis = \"tls\"\nvm = \"{vm}\"\n\
             [kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
             sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"{}\"\n\
             sasl_password_file = {:?}\nssl_ca_location = {:?}\n\
             [spool]\ndir = {:?}\nmax_bytes = \"16MiB\"\n\
             [metadata]\ndetect = false\n",
            s.brokers,
            s.user,
            password_file.display().to_string(),
            ca.display().to_string(),
            dir.join(format!("{vm}-spool")).display().to_string(),
        ),
    )
    .unwrap();
    path
}

/// Runs `damselfly ARGS` (at most 90 s) and returns whether it succeeded, its stderr and how long it took.
fn run_damselfly(args: &[String], envs: &[(&str, &str)]) -> (bool, String, Duration) {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_damselfly"))
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("KAFKA_SASL_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start damselfly");
    let (out, log) = wait_bounded(child, Duration::from_secs(90));
    let out = out.unwrap_or_else(|| panic!("damselfly {args:?} hung:\n{log}"));
    (out.status.success(), log, started.elapsed())
}

/// A CA certificate that signed nothing the broker presents.
fn other_ca(dir: &Path) -> PathBuf {
    let (key, cert) = (dir.join("other-ca.key"), dir.join("other-ca.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not the local stack's CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert
}

#[test]
#[ignore = "needs the local stack (tests/run starts it)"]
fn every_client_over_sasl_ssl_and_the_lake_holds_every_sample_once() {
    let s = sasl();
    let id = run_id();
    let topic = format!("tls-{id}");
    create_topic(&env("KAFKA_BROKERS"), &topic, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();

    // The simulator, with the password from a file.
    let mut args: Vec<String> = [
        "simulate",
        "--topic",
        &topic,
        "--vms",
        "12",
        "--interval",
        "1s",
    ]
    .map(String::from)
    .into();
    args.extend(["--duration", "10s", "--no-pace", "--json"].map(String::from));
    args.extend(s.flags(&s.password_file, &s.ca));
    let published = damselfly(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(published["published"], 120, "{published}");

    // The agent, with the password in a file named by agent.toml.
    let vm = "vm-tls-agent";
    let config = agent_config(dir.path(), &s, &topic, vm, &s.password_file, &s.ca);
    let mut agent = Agent::start(&config, dir.path().join("agent.log"));
    std::thread::sleep(Duration::from_secs(6));
    let stats = agent.stop();
    assert!(stats["collections"] >= 4, "{stats:?}");
    assert_eq!(
        (stats["sent"], stats["spooled"], stats["lost"]),
        (stats["collections"], 0, 0),
        "every collection delivered at once over SASL_SSL: {stats:?}"
    );

    // The runner, with the password in the environment.
    let lake = dir.path().join("lake");
    let mut args: Vec<String> = ["run", "aggregate", "--topic", &topic, "--group", &topic]
        .map(String::from)
        .into();
    args.extend(["--lake".into(), lake.display().to_string()]);
    args.extend(["--until-caught-up", "--json"].map(String::from));
    let mut flags = s.flags(&s.password_file, &s.ca);
    flags.drain(6..8); // no --sasl-password-file: KAFKA_SASL_PASSWORD instead
    args.extend(flags);
    let out = Command::new(env!("CARGO_BIN_EXE_damselfly"))
        .args(&args)
        .env("KAFKA_SASL_PASSWORD", s.password())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, log) = wait_bounded(out, Duration::from_secs(180));
    let out = out.unwrap_or_else(|| panic!("run aggregate hung:\n{log}"));
    assert!(out.status.success(), "run aggregate failed:\n{log}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["records"].as_u64(),
        Some(120 + stats["sent"]),
        "{summary}"
    );

    let samples = 120 * SAMPLES_PER_MESSAGE + stats["samples"];
    let counts = duckdb(
        &lake,
        &format!(
            "SELECT count(*) AS rows, \
             (SELECT count(*) FROM (SELECT DISTINCT vm, metric, device, ts FROM raw)) AS distinct_samples, \
             (SELECT count(DISTINCT ts) FROM raw WHERE vm = '{vm}') AS agent_intervals FROM raw"
        ),
    );
    assert_eq!(
        counts,
        serde_json::json!([{
            "rows": samples,
            "distinct_samples": samples,
            "agent_intervals": stats["collections"],
        }]),
        "every sample of the simulator and the agent exactly once"
    );
}

#[test]
#[ignore = "needs the local stack (tests/run starts it)"]
fn a_wrong_password_and_an_untrusted_ca_are_named_and_the_agent_keeps_its_samples() {
    let s = sasl();
    let id = run_id();
    let topic = format!("tls-bad-{id}");
    create_topic(&env("KAFKA_BROKERS"), &topic, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let other = other_ca(dir.path());

    // The command-line clients stop with the problem, naming the setting.
    let simulate = |password: &Path, ca: &Path| {
        let mut args: Vec<String> = [
            "simulate",
            "--topic",
            &topic,
            "--vms",
            "2",
            "--duration",
            "2s",
        ]
        .map(String::from)
        .into();
        args.extend(["--interval", "1s", "--no-pace"].map(String::from));
        args.extend(s.flags(password, ca));
        run_damselfly(&args, &[])
    };
    let (ok, log, took) = simulate(&wrong, &s.ca);
    eprintln!("simulate, wrong password: failed after {took:?}");
    assert!(!ok, "a wrong password must fail:\n{log}");
    assert!(took < REPORTED_WITHIN, "took {took:?}:\n{log}");
    assert!(
        log.contains("the brokers refused the credentials for user"),
        "{log}"
    );
    assert!(
        log.contains("--sasl-username (KAFKA_SASL_USERNAME)"),
        "{log}"
    );
    assert!(
        !log.contains("not-the-password"),
        "the password is never printed:\n{log}"
    );

    let (ok, log, took) = simulate(&s.password_file, &other);
    eprintln!("simulate, untrusted CA: failed after {took:?}");
    assert!(!ok, "an untrusted CA must fail:\n{log}");
    assert!(took < REPORTED_WITHIN, "took {took:?}:\n{log}");
    assert!(log.contains("TLS certificate is not trusted"), "{log}");
    assert!(
        log.contains("--ssl-ca-location (KAFKA_SSL_CA_LOCATION)"),
        "{log}"
    );

    let mut args: Vec<String> = ["run", "aggregate", "--topic", &topic, "--until-caught-up"]
        .map(String::from)
        .into();
    args.extend([
        "--lake".into(),
        dir.path().join("lake").display().to_string(),
    ]);
    args.extend(s.flags(&wrong, &s.ca));
    let (ok, log, took) = run_damselfly(&args, &[]);
    eprintln!("run aggregate, wrong password: failed after {took:?}");
    assert!(!ok, "a wrong password must fail:\n{log}");
    assert!(took < REPORTED_WITHIN, "took {took:?}:\n{log}");
    assert!(log.contains("the brokers refused the credentials"), "{log}");

    // The agent keeps collecting into its spool while the brokers refuse it, says why in its log,
    // and delivers everything once a restart fixes the setting.
    let vm = "vm-tls-bad";
    let log = |n: usize| dir.path().join(format!("agent-{n}.log"));
    let mut collections = 0;
    for (n, password, ca, needle, setting) in [
        (
            1,
            &wrong,
            &s.ca,
            "the brokers refused the credentials",
            "kafka.sasl_username",
        ),
        (
            2,
            &s.password_file,
            &other,
            "TLS certificate is not trusted",
            "kafka.ssl_ca_location",
        ),
    ] {
        let config = agent_config(dir.path(), &s, &topic, vm, password, ca);
        let started = Instant::now();
        let mut agent = Agent::start(&config, log(n));
        agent.wait_for_log(needle, 1, REPORTED_WITHIN);
        eprintln!(
            "agent {n}: {needle:?} logged {:?} after start",
            started.elapsed()
        );
        assert!(agent.log_count(setting) >= 1, "the log names {setting}");
        // Past kafka.slow_after (5s): the collections go to the spool.
        std::thread::sleep(Duration::from_secs(7));
        let stats = agent.stop();
        eprintln!("agent {n}: {stats:?}");
        assert_eq!(stats["sent"], 0, "{stats:?}");
        assert_eq!((stats["lost"], stats["evicted"]), (0, 0), "{stats:?}");
        assert_eq!(
            stats["backlog"],
            stats["spooled"] + collections,
            "{stats:?}"
        );
        collections += stats["collections"];
    }
    let config = agent_config(dir.path(), &s, &topic, vm, &s.password_file, &s.ca);
    let mut agent = Agent::start(&config, log(3));
    agent.wait_for_log("spool drained: broker is back", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let stats = agent.stop();
    eprintln!("agent 3: {stats:?}");
    assert_eq!((stats["backlog"], stats["lost"]), (0, 0), "{stats:?}");
    // Everything spooled before, and whatever this run spooled while the spool drained.
    assert_eq!(stats["resent"], collections + stats["spooled"], "{stats:?}");
    collections += stats["collections"];

    let reads = read_topic(&env("KAFKA_BROKERS"), &topic, PARTITIONS);
    let mine: Vec<i64> = reads.iter().filter(|r| r.vm == vm).map(|r| r.ts).collect();
    let distinct: BTreeSet<i64> = mine.iter().copied().collect();
    eprintln!(
        "on the topic: {} messages, {} distinct collections, {collections} collected",
        mine.len(),
        distinct.len()
    );
    assert_eq!(
        distinct.len() as u64,
        collections,
        "every collection reached the topic"
    );
    assert_eq!(
        mine.len(),
        distinct.len(),
        "none twice (nothing was delivered before the fix)"
    );
    assert!(mine.windows(2).all(|w| w[0] < w[1]), "in collection order");
}

/// Makes the unsecured JWTs (`alg: none`) Kafka's default OAUTHBEARER validator accepts, and counts
/// how often a client asked.
#[derive(Default)]
struct UnsecuredJwt {
    made: AtomicU64,
}

impl TokenSource for UnsecuredJwt {
    fn token(&self) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let now = (now_ms() / 1000) as u64;
        let expires = now + 3600;
        self.made.fetch_add(1, Relaxed);
        Ok(OAuthToken {
            token: format!(
                "{}.{}.",
                b64(serde_json::json!({"alg": "none"})),
                b64(serde_json::json!({"sub": "damselfly-test", "iat": now, "exp": expires}))
            ),
            principal_name: "damselfly-test".into(),
            lifetime_ms: expires as i64 * 1000,
        })
    }
}

/// Counts the records it is invoked with.
#[derive(Default)]
struct Count(AtomicU64);

#[async_trait::async_trait]
impl Function for Count {
    async fn invoke(
        &self,
        event: aws_lambda_events::event::kafka::KafkaEvent,
    ) -> Result<serde_json::Value, FunctionError> {
        let n: usize = event.records.values().map(Vec::len).sum();
        self.0.fetch_add(n as u64, Relaxed);
        Ok(serde_json::json!({}))
    }
}

#[test]
#[ignore = "needs the local stack (tests/run starts it)"]
fn oauthbearer_tokens_reach_the_broker_from_the_agents_publisher_and_the_runner() {
    let id = run_id();
    let topic = format!("oauth-{id}");
    create_topic(&env("KAFKA_BROKERS"), &topic, PARTITIONS);
    let source = Arc::new(UnsecuredJwt::default());
    let kafka = Connection {
        brokers: env("DAMSELFLY_SASL_BROKERS"),
        security: Security {
            mechanism: Some(SaslMechanism::OAuthBearer),
            ca_location: Some(env("DAMSELFLY_KAFKA_CA").into()),
            ..Security::default()
        },
        tokens: Some(Tokens(source.clone())),
        ..Connection::default()
    };

    let publisher = Publisher::new(&PublisherConfig::on(kafka.clone(), &topic)).unwrap();
    let mut fleet = Fleet::new(10, 7, "ns-oauth");
    let mut sent = 0;
    for i in 0..5 {
        for m in fleet.tick(now_ms() - 10_000 + i * 1000, Duration::from_secs(1)) {
            publisher.send(&m.tags.vm, &m.to_json()).unwrap();
            sent += 1;
        }
    }
    publisher.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(publisher.deliveries().delivered.load(Relaxed), sent);
    let after_publish = source.made.load(Relaxed);
    assert!(after_publish >= 1, "the publisher asked for a token");
    drop(publisher);

    let count = Arc::new(Count::default());
    let mut config = RunnerConfig::new(&kafka.brokers, &topic, &topic);
    config.kafka = kafka;
    config.until_caught_up = true;
    config.scaling = ScalingConfig::fixed(1);
    let summary = rt()
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(120),
                damselfly_runner::run(
                    &config,
                    count.clone(),
                    Arc::new(Stats::default()),
                    std::future::pending(),
                ),
            )
            .await
        })
        .expect("the runner caught up in time")
        .expect("the runner ran over OAUTHBEARER");
    assert_eq!(summary.records, sent);
    assert_eq!(count.0.load(Relaxed), sent);
    // The runner's monitor and its worker each authenticated with a token of their own.
    assert!(
        source.made.load(Relaxed) >= after_publish + 2,
        "tokens made: {}",
        source.made.load(Relaxed)
    );
}
