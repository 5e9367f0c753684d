//! `damselfly agent`: collect this VM's metrics and publish them, or print one collection with --once.

use anyhow::Context as _;
use damselfly_agent::{AgentConfig, collect_once, run_agent};

use crate::cli::AgentArgs;

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args.config)?;
    if args.once {
        let collection = collect_once(&config).await;
        for e in &collection.errors {
            tracing::warn!(error = %e, "collection incomplete");
        }
        let json = serde_json::to_string_pretty(&collection.message)
            .context("serializing the collected message")?;
        println!("{json}");
        return Ok(());
    }
    tracing::info!(
        config = %args.config.display(),
        brokers = %config.kafka.brokers,
        topic = %config.kafka.topic,
        spool = %config.spool.dir.display(),
        "starting the agent"
    );
    // The loop logs its own closing totals ("agent stopped").
    run_agent(&config, super::shutdown_signal())
        .await
        .with_context(|| format!("starting the agent from {}", args.config.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, toml: &str, once: bool) -> AgentArgs {
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml).unwrap();
        AgentArgs { config, once }
    }

    #[tokio::test]
    async fn once_prints_one_collection() {
        let dir = tempfile::tempdir().unwrap();
        let toml =
            "[tags]\nns = \"ns01\"\nmcis = \"g\"\nvm = \"vm-1\"\n[metadata]\ndetect = false\n";
        agent(args(dir.path(), toml, true)).await.unwrap();
    }

    #[tokio::test]
    async fn config_errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let err = agent(args(dir.path(), "interval = \"0s\"\n", true))
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
        };
        let err = agent(missing).await.unwrap_err().to_string();
        assert!(err.contains("nope.toml: cannot read"), "{err}");
    }
}
