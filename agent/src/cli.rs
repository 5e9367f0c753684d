//! The agent's command line, shared by the slim `damselfly-agent` binary and `damselfly agent`.

use std::path::PathBuf;

use damselfly_kafka::parse_kafka_option;

use crate::config::{AgentConfig, ConfigError};
use crate::run::{AgentError, RunStats, collect_once, run_agent};

/// Options of the agent command.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The agent configuration file (every field: agent/agent.example.toml).
    #[arg(long, default_value = "agent.toml")]
    pub config: PathBuf,
    /// Collect once (cpu over one second), print the message as pretty JSON on stdout and exit.
    #[arg(long)]
    pub once: bool,
    /// Extra librdkafka setting, key=value (timeouts, client.id, ...), applied after
    /// `[kafka.options]` of the file; repeatable. Secrets are refused here (a command line is
    /// readable by every user): put the password in kafka.sasl_password_file or KAFKA_SASL_PASSWORD.
    #[arg(long = "kafka-option", value_parser = parse_kafka_option)]
    pub kafka_options: Vec<(String, String)>,
}

/// Why the agent command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The configuration file is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The agent could not start (bad Kafka settings, unusable spool).
    #[error("starting the agent from {path}: {source}")]
    Start {
        /// The configuration file.
        path: String,
        /// What failed.
        source: AgentError,
    },
    /// The collection could not be printed.
    #[error("printing the collection: {0}")]
    Print(#[from] serde_json::Error),
}

impl AgentArgs {
    /// The configuration file with the command line's Kafka options applied on top.
    pub fn load_config(&self) -> Result<AgentConfig, ConfigError> {
        damselfly_kafka::refuse_secrets(&self.kafka_options, damselfly_kafka::Naming::CommandLine)
            .map_err(|source| ConfigError::Kafka {
                path: self.config.display().to_string(),
                source,
            })?;
        let mut config = AgentConfig::load(&self.config)?;
        config
            .kafka
            .options
            .extend(self.kafka_options.iter().cloned());
        Ok(config)
    }
}

/// Runs the agent command: print one collection (`--once`) or collect and publish until `shutdown`.
pub async fn run(
    args: &AgentArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<RunStats>, CommandError> {
    let config = args.load_config()?;
    if args.once {
        let collection = collect_once(&config).await;
        for e in &collection.errors {
            tracing::warn!(error = %e, "collection incomplete");
        }
        println!("{}", serde_json::to_string_pretty(&collection.message)?);
        return Ok(None);
    }
    let path = args.config.display().to_string();
    let publisher = config.publisher_config(&path)?;
    tracing::info!(
        config = %path,
        brokers = %publisher.kafka.brokers,
        security = %publisher.kafka.security.describe(),
        topic = %publisher.topic,
        spool = %config.spool.dir.display(),
        "starting the agent"
    );
    // The loop logs its own closing totals ("agent stopped").
    let stats = run_agent(&config, publisher, shutdown)
        .await
        .map_err(|source| CommandError::Start {
            path: args.config.display().to_string(),
            source,
        })?;
    Ok(Some(stats))
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, toml: &str, once: bool) -> AgentArgs {
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml).unwrap();
        AgentArgs {
            config,
            once,
            kafka_options: Vec::new(),
        }
    }

    #[tokio::test]
    async fn once_prints_one_collection() {
        let dir = tempfile::tempdir().unwrap();
        let toml =
            "[tags]\nns = \"ns01\"\nmcis = \"g\"\nvm = \"vm-1\"\n[metadata]\ndetect = false\n";
        assert!(
            run(&args(dir.path(), toml, true), std::future::pending())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn config_errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            &args(dir.path(), "interval = \"0s\"\n", true),
            std::future::pending(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("agent.toml: `interval` = \"0s\": must be at least 1s"),
            "{err}"
        );
        let missing = AgentArgs {
            config: dir.path().join("nope.toml"),
            once: true,
            kafka_options: Vec::new(),
        };
        let err = run(&missing, std::future::pending())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.toml: cannot read"), "{err}");
    }

    #[test]
    fn command_line_options_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(
            dir.path(),
            "[tags]\nns = \"n\"\nmcis = \"g\"\n[kafka.options]\n\"security.protocol\" = \"SSL\"\n\"client.id\" = \"a\"\n",
            false,
        );
        a.kafka_options = vec![
            parse_kafka_option("security.protocol=SASL_SSL").unwrap(),
            parse_kafka_option("sasl.mechanisms=SCRAM-SHA-512").unwrap(),
        ];
        let options = a
            .load_config()
            .unwrap()
            .publisher_config("agent.toml")
            .unwrap()
            .kafka
            .options;
        let get = |k: &str| {
            options
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(get("client.id"), Some("a"));
    }
}
