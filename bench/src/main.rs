//! `damselfly-bench`: benchmarks that print a table, with a peer's figure from the same run as a ratio.

mod agent;
mod aggregate;
mod alarm;
mod api;
mod console;
mod fleet;
mod http;
mod lambda;
mod prometheus;
mod promql;
mod runner;
mod simulate;
mod sys;

use clap::Parser as _;

/// Damselfly benchmarks (build with `--release`; see bench/README.md).
#[derive(Debug, clap::Parser)]
#[command(name = "damselfly-bench")]
enum Bench {
    /// A breaching sample published -> its alarm notification sent, with 20,000 VMs publishing.
    Alarm(alarm::Args),
    /// Decode + rate + roll up + Parquet encode on one core, against DuckDB doing the same job.
    Aggregate(aggregate::Args),
    /// N simulated VMs through Apache Kafka, aggregate and alarm into LocalStack, for growing N (issue 9).
    Fleet(Box<fleet::Args>),
    /// The aggregate and alarm Lambda binaries under a local Runtime API: peak RSS on a typical and a 6 MB batch.
    Lambda(lambda::Args),
    /// The metric API's p50/p99 for 5-minute and 24-hour queries over a week of rollups, against DuckDB.
    Api(api::Args),
    /// A Grafana VM dashboard's refresh and a fleet-wide topk via the Prometheus API, against a real Prometheus.
    Promql(promql::Args),
    /// The console's fleet and VM pages on the API benchmark's 10,000-VM lake: p95 of 20 loads in Chromium.
    Console(console::Args),
    /// `damselfly agent` against a local broker: CPU % of one core and peak RSS, from /proc.
    Agent(agent::Args),
    /// `damselfly run`'s event source mapping (no-op and aggregate) against a bare rdkafka consumer.
    Runner(runner::Args),
    /// The fleet simulator: 20,000 VMs every 2 s in each wire format, sustained and burst rates.
    Simulate(simulate::Args),
}

fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::Aggregate(args) => aggregate::run(&args),
        Bench::Alarm(args) => alarm::run(&args),
        Bench::Agent(args) => agent::run(&args),
        Bench::Api(args) => api::run(&args),
        Bench::Console(args) => console::run(&args),
        Bench::Promql(args) => promql::run(&args),
        Bench::Fleet(args) => fleet::run(&args),
        Bench::Lambda(args) => lambda::run(&args),
        Bench::Runner(args) => runner::run(&args),
        Bench::Simulate(args) => simulate::run(&args),
    }
}
