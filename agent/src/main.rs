//! `damselfly-agent`: the slim agent binary for VMs (no query engine), the same command as `damselfly agent`.

use clap::Parser as _;
use damselfly_agent::cli::{AgentArgs, run, shutdown_signal};
use tracing_subscriber::EnvFilter;

/// Damselfly's host agent: collect this VM's metrics every interval and publish them to Kafka,
/// spooling to disk while the broker is unreachable (see agent/agent.example.toml).
#[derive(Debug, clap::Parser)]
#[command(name = "damselfly-agent", version)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

// One thread is plenty for one collection every couple of seconds; librdkafka runs its own.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    run(&cli.agent, shutdown_signal()).await?;
    Ok(())
}
