//! `damselfly agent`: collect this VM's metrics and publish them, or print one collection with --once.

use damselfly_agent::cli::{AgentArgs, run};

/// Runs the agent command until a shutdown signal (or once, with `--once`).
pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    run(&args, super::shutdown_signal()).await?;
    Ok(())
}
