//! `damselfly`: the one binary operators run. Setup only; each command lives in `commands/`.

mod cli;
mod commands;
mod output;

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Arms the fail points `FAILPOINTS` names (a test build only: feature `failpoints`).
    let _failpoints = damselfly_core::failpoints::setup();
    let cli = cli::Cli::parse();
    let progress = output::init(cli.verbose);
    commands::dispatch(cli.command, &progress).await
}
