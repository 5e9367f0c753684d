//! The cost of one collection from this host's /proc: `cargo run --release -p damselfly-agent --example collect_cost [N]`.

use std::time::Instant;

use damselfly_agent::{AgentConfig, Collector};
use damselfly_schemas::Tags;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);
    let mut c = Collector::new(Tags::default(), AgentConfig::default().skip_lists());
    // Warm the page cache and the allocator.
    for _ in 0..10 {
        c.collect(0);
    }
    let started = Instant::now();
    let mut samples = 0;
    for i in 0..n {
        let got = c.collect(i64::from(i));
        samples += got.message.metrics.len()
            + got.message.devices.values().map(|d| d.len()).sum::<usize>();
    }
    let per = started.elapsed().as_secs_f64() / f64::from(n);
    println!(
        "{n} collections, {} samples each, {:.1} µs a collection",
        samples / n as usize,
        per * 1e6
    );
}
