//! `damselfly`: the one binary operators run. Setup only; each command lives in `commands/`.

mod cli;
mod commands;
mod output;

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    bound_malloc_arenas();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    // Arms the fail points `FAILPOINTS` names (a test build only: feature `failpoints`).
    let _failpoints = damselfly_core::failpoints::setup();
    let cli = cli::Cli::parse();
    let progress = output::init(cli.verbose);
    commands::dispatch(cli.command, &progress).await
}

/// Caps glibc's malloc arenas at one per core, before any thread starts, unless
/// `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives threads that allocate at the same time arenas of their own (up to 8 per core), and
/// an arena keeps what was freed in it: the runner's workers each left a batch's worth in theirs.
/// At 20,000 VMs one arena per core held the runner's peak RSS to 495 MiB, from 700 (issue 25;
/// mimalloc, tried too, peaked at 888).
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: mallopt sets one allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, i32::try_from(cores).unwrap_or(i32::MAX));
        }
    }
}
