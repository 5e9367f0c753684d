//! The command-line contract: every command, option and default, with `--help` on each.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use damselfly_core::env::{duration, show_duration};
use damselfly_runner::config::{
    DEFAULT_BATCHING_WINDOW, DEFAULT_COOLDOWN, DEFAULT_LAG_THRESHOLD, DEFAULT_MAX_WORKERS,
    DEFAULT_SCALE_INTERVAL,
};

/// Damselfly: serverless multi-cloud VM monitoring on Kafka, Parquet and SQL.
#[derive(Debug, Parser)]
#[command(name = "damselfly", version, propagate_version = true)]
pub struct Cli {
    /// More logging (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline on an embedded Kafka broker into a local lake, then query it.
    Demo(DemoArgs),
    /// Publish a simulated fleet's metrics to a Kafka topic.
    Simulate(SimulateArgs),
    /// Run a function under the local event source mapping (consume, batch, invoke, commit).
    Run(Box<RunArgs>),
    /// Answer SQL over the lake (tables raw, rollup_1m, rollup_1h, rollup_1d, dlq, alarms; rollups
    /// have `avg` and `*_merged` views; partition columns dt, hour).
    Sql(SqlArgs),
    /// Merge the small files of closed hours into one per partition, build rollup_1h and
    /// rollup_1d, and delete partitions past their table's retention (run it hourly).
    Compact(CompactArgs),
    /// Run the host agent: collect this VM's metrics every interval and publish them to Kafka,
    /// spooling to disk while the broker is unreachable (see agent/agent.example.toml).
    Agent(AgentArgs),
    /// Alarm rules and the alarm tick: rules list|put|delete|validate, import, tick.
    #[command(subcommand)]
    Alarm(AlarmCommand),
    /// Serve the web console (at /), the CB-Dragonfly-compatible metric API and Prometheus's
    /// query API (/api/v1, for Grafana) over the lake (axum; the same router as the
    /// damselfly-query Lambda).
    Serve(ServeArgs),
    /// Replay the batches an on-failure destination kept (kafka://TOPIC, s3://BUCKET/PREFIX or
    /// file:///DIR) through a function; the lake gets every record once, however often it is run.
    Redrive(Box<RedriveArgs>),
    /// One VM's metrics per window, as CB-Dragonfly's `cbmon get metric`: metric get.
    #[command(subcommand)]
    Metric(MetricCommand),
    /// The VMs in the lake: vm list.
    #[command(subcommand)]
    Vm(VmCommand),
}

/// `damselfly alarm ...`.
#[derive(Debug, Subcommand)]
pub enum AlarmCommand {
    /// Run the scheduled tick once: decide late periods, detect NO_DATA, repeat firing alarms,
    /// retry pending notifications.
    Tick(AlarmTickArgs),
    /// Read and edit the rule set.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Convert CB-Dragonfly alert tasks (JSON: one task or an array) into rules; prints them, or
    /// adds them to the rule set with --put.
    Import(AlarmImportArgs),
}

/// Where the rules are.
#[derive(Debug, Clone, Args)]
pub struct RulesLocation {
    /// Rules: a JSON file or s3://bucket/key.json [default: LAKE/_config/alarm-rules.json].
    #[arg(long, env = "ALARM_RULES")]
    pub rules: Option<String>,
    /// Lake URL, for the default rules location.
    #[arg(long, env = "LAKE")]
    pub lake: Option<String>,
}

/// `damselfly alarm rules ...`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Print the rules (table, or the rule set as JSON with --json).
    List {
        /// Where the rules are.
        #[command(flatten)]
        at: RulesLocation,
        /// Print the rule set as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add rules from a file (a rule set or one rule), replacing rules with the same id.
    Put {
        /// Where the rules are.
        #[command(flatten)]
        at: RulesLocation,
        /// JSON file with a rule set (`{"v":1,"rules":[...]}`) or a single rule.
        file: std::path::PathBuf,
    },
    /// Remove one rule by id.
    Delete {
        /// Where the rules are.
        #[command(flatten)]
        at: RulesLocation,
        /// The rule's id.
        id: String,
    },
    /// Check a rule-set file against the schema and the rules' constraints, without storing it.
    Validate {
        /// JSON file with a rule set.
        file: std::path::PathBuf,
    },
}

/// `damselfly alarm tick`.
#[derive(Debug, Args)]
pub struct AlarmTickArgs {
    /// Lake URL (states and the alarms table).
    #[arg(long, env = "LAKE")]
    pub lake: String,
    /// Consumer group whose partition states to tick.
    #[arg(long, default_value = damselfly_alarm::config::DEFAULT_GROUP)]
    pub group: String,
    /// Rules and where notifications go.
    #[command(flatten)]
    pub alarm: damselfly_alarm::config::Settings,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `damselfly alarm import`.
#[derive(Debug, Args)]
pub struct AlarmImportArgs {
    /// CB-Dragonfly alert task JSON file.
    pub file: std::path::PathBuf,
    /// Add the imported rules to the rule set instead of printing them.
    #[arg(long)]
    pub put: bool,
    /// Where the rules are (with --put).
    #[command(flatten)]
    pub at: RulesLocation,
}

/// Where the metrics topic is, and how to reach it.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, host:port[,host:port].
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: String,
    /// Topic carrying the metric messages.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "metrics")]
    pub topic: String,
    /// TLS, SASL and extra librdkafka settings.
    #[command(flatten)]
    pub security: damselfly_kafka::SecurityArgs,
}

impl KafkaArgs {
    /// The connection these arguments (and the environment) describe, validated.
    pub fn connection(
        &self,
    ) -> Result<damselfly_kafka::Connection, damselfly_kafka::SettingsError> {
        self.security.connection(&self.brokers)
    }
}

/// The fleet to simulate.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Number of virtual VMs.
    #[arg(long, default_value_t = 100)]
    pub vms: usize,
    /// Collection interval (CB-Dragonfly's default is 2s).
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub interval: Duration,
    /// Random seed: the same seed gives the same fleet and values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Namespace tag of the simulated VMs.
    #[arg(long, default_value = "ns01")]
    pub ns: String,
}

/// `damselfly demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of virtual VMs.
    #[arg(long, default_value_t = 20)]
    pub vms: usize,
    /// How long the fleet publishes, in seconds; the first half is published at once as a
    /// backlog (stamped in the past), so that the runner scales out and then back in.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Collection interval.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub interval: Duration,
    /// Lake directory (created; a previous demo lake there is replaced).
    #[arg(long, default_value = "demo-lake")]
    pub lake: String,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Serve the runner's Prometheus metrics on this address (e.g. 127.0.0.1:9464) while the demo runs.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Send the demo's alarm notifications to this SNS topic (AWS_* variables configure the
    /// client) instead of LAKE/alarm-outbox.jsonl.
    #[arg(long, env = "SNS_TOPIC_ARN")]
    pub sns_topic_arn: Option<String>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Then keep serving the web console and the metric API over the demo lake on this address
    /// (127.0.0.1:9090 when given without one) until Ctrl-C.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9090")]
    pub serve: Option<std::net::SocketAddr>,
}

/// `damselfly simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The fleet.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// How long to publish; the number of intervals is duration / interval.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub duration: Duration,
    /// Publish as fast as possible instead of one interval per interval of wall-clock time;
    /// timestamps still step by --interval, ending now.
    #[arg(long)]
    pub no_pace: bool,
    /// Producer compression (none, gzip, snappy, lz4, zstd).
    #[arg(long, default_value = "lz4")]
    pub compression: String,
    /// Message format on the topic: Damselfly's native v1, or what Telegraf would publish.
    #[arg(long, value_enum, default_value_t = WireFormatArg::Native)]
    pub format: WireFormatArg,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Message formats `damselfly simulate` can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireFormatArg {
    /// Damselfly's v1 JSON message (schemas/metric.v1.schema.json).
    Native,
    /// Telegraf's JSON serializer (batch form), as Telegraf's Kafka output writes it.
    TelegrafJson,
    /// Influx line protocol, one line per measurement and device.
    Influx,
}

/// The functions `damselfly run` can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FunctionName {
    /// Decode, roll up and write Parquet to the lake.
    Aggregate,
    /// Evaluate alarm rules and publish notifications to SNS (or the outbox file).
    Alarm,
}

impl FunctionName {
    /// The function's default consumer group.
    pub fn default_group(self) -> &'static str {
        match self {
            FunctionName::Aggregate => "damselfly-aggregate",
            FunctionName::Alarm => damselfly_alarm::config::DEFAULT_GROUP,
        }
    }
}

/// `damselfly run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Which function to run.
    pub function: FunctionName,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group; offsets are committed under it [default: damselfly-aggregate or
    /// damselfly-alarm]. The alarm function also keeps its states under this name.
    #[arg(long)]
    pub group: Option<String>,
    /// Consumer-group protocol: classic (what Lambda's event source mapping uses) or consumer
    /// (KIP-848, Kafka 4.0+; the broker sets the session timeout).
    #[arg(long, env = "KAFKA_GROUP_PROTOCOL", default_value_t = damselfly_runner::GroupProtocol::Classic)]
    pub group_protocol: damselfly_runner::GroupProtocol,
    /// Lake URL: a directory, file:///abs/path or s3://bucket/prefix (S3 settings from AWS_* variables).
    /// Not needed with --invoke-url: the invoked function has its own LAKE.
    #[arg(long, env = "LAKE", required_unless_present = "invoke_url")]
    pub lake: Option<String>,
    /// Invoke the function over Lambda's Invoke API instead of in this process: `aws` (the
    /// configured region's Lambda), `http://127.0.0.1:9000` (`cargo lambda watch`), or a whole
    /// `http://HOST:PORT/2015-03-31/functions/NAME/invocations` URL [function name:
    /// damselfly-aggregate or damselfly-alarm].
    #[arg(long)]
    pub invoke_url: Option<String>,
    /// With --invoke-url: how long an invocation may take before the runner gives it up and
    /// retries the batch (set it to the function's timeout; Lambda's maximum by default).
    #[arg(long, value_parser = duration,
          default_value = show_duration(damselfly_runner::remote::INVOKE_TIMEOUT))]
    pub invoke_timeout: Duration,
    /// Most records per invocation (Lambda: default 100, max 10000).
    #[arg(long, default_value_t = damselfly_runner::config::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// How long to gather records before invoking (Lambda's MaximumBatchingWindow).
    #[arg(long, value_parser = duration, default_value = show_duration(DEFAULT_BATCHING_WINDOW))]
    pub batching_window: Duration,
    /// Where a group without committed offsets starts: earliest, latest or timestamp:RFC3339
    /// (e.g. timestamp:2026-11-21T09:00:00Z).
    #[arg(long, default_value = "earliest")]
    pub starting_position: damselfly_runner::StartingPosition,
    /// Exit 0 once the group's lag is 0 and everything consumed is written and committed.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Retries of a failed batch before it goes to --on-failure; -1 retries until the records
    /// are older than --max-record-age (Lambda's MaximumRetryAttempts, 0..10000).
    #[arg(
        long,
        default_value = "-1",
        allow_hyphen_values = true,
        value_parser = damselfly_runner::config::parse_retry_attempts,
        help_heading = "Failure handling"
    )]
    pub max_retry_attempts: damselfly_runner::config::Limit<u32>,
    /// Records older than this are not invoked again but go to --on-failure; -1 is unlimited
    /// (Lambda's MaximumRecordAgeInSeconds; e.g. 1h).
    #[arg(
        long,
        default_value = "-1",
        allow_hyphen_values = true,
        value_parser = damselfly_runner::config::parse_record_age,
        help_heading = "Failure handling"
    )]
    pub max_record_age: damselfly_runner::config::Limit<Duration>,
    /// Split a failing batch in halves, recursively, so that only the bad records fail
    /// (Lambda's BisectBatchOnFunctionError).
    #[arg(long, help_heading = "Failure handling")]
    pub bisect_on_error: bool,
    /// A function error of type NonRetryable fails its batch at once (to --on-failure) instead of
    /// being retried. Not what Lambda does: its event source mapping retries every function error
    /// up to --max-retry-attempts, as the runner does without this flag.
    #[arg(long, help_heading = "Failure handling")]
    pub fail_fast_non_retryable: bool,
    /// Where a batch goes, with its error, attempts and timestamps, when its retries are exhausted
    /// (or its error is not retryable, with --fail-fast-non-retryable): kafka://TOPIC,
    /// s3://BUCKET/PREFIX or file:///DIR. Without it such a batch stops the runner instead of
    /// being skipped.
    #[arg(long, help_heading = "Failure handling")]
    pub on_failure: Option<damselfly_runner::OnFailure>,
    /// Fewest workers (consumer-group members in this process); 0 idles until lag passes --activation-lag.
    #[arg(long, default_value_t = 1, help_heading = "Scaling")]
    pub min_workers: usize,
    /// Most workers; the topic's partition count caps them too.
    #[arg(long, default_value_t = DEFAULT_MAX_WORKERS, help_heading = "Scaling")]
    pub max_workers: usize,
    /// Records of lag per worker: workers = ceil(lag / threshold), within the bounds (KEDA's lagThreshold).
    #[arg(long, default_value_t = DEFAULT_LAG_THRESHOLD, help_heading = "Scaling")]
    pub lag_threshold: u64,
    /// At or below this total lag the runner stays at --min-workers (KEDA's activationLagThreshold).
    #[arg(long, default_value_t = 0, help_heading = "Scaling")]
    pub activation_lag: u64,
    /// How often lag is measured and a scaling decision taken.
    #[arg(long, value_parser = duration, default_value = show_duration(DEFAULT_SCALE_INTERVAL),
          help_heading = "Scaling")]
    pub scale_interval: Duration,
    /// How long demand must stay lower before workers are removed (adding them is immediate).
    #[arg(long, value_parser = duration, default_value = show_duration(DEFAULT_COOLDOWN),
          help_heading = "Scaling")]
    pub cooldown: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (lag per partition, workers, batches,
    /// records, errors, retries, invocation latency, scaling events).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The aggregate function's settings.
    #[command(flatten, next_help_heading = "Aggregate function")]
    pub aggregate: damselfly_aggregate::config::Settings,
    /// The alarm function's settings.
    #[command(flatten, next_help_heading = "Alarm function")]
    pub alarm: damselfly_alarm::config::Settings,
    /// Run the alarm tick (NO_DATA, late periods, repeats, pending retries) this often, as the
    /// cloud's schedule would.
    #[arg(long, default_value = "10s", value_parser = duration, help_heading = "Alarm function")]
    pub tick_every: Duration,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `damselfly redrive <function> --from ...`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// Which function replays the batches.
    pub function: FunctionName,
    /// Where the failed batches are: kafka://TOPIC, s3://BUCKET/PREFIX (every object below it) or
    /// file:///DIR, as `damselfly run --on-failure` or Lambda's on-failure destination wrote them.
    /// Redriven records move to `redriven/` beside them (a topic: the redrive group commits).
    #[arg(long)]
    pub from: damselfly_runner::OnFailure,
    /// Lake URL of an in-process function (see `run --lake`).
    #[arg(long, env = "LAKE", required_unless_present = "invoke_url")]
    pub lake: Option<String>,
    /// Invoke the function over Lambda's Invoke API instead (see `run --invoke-url`).
    #[arg(long)]
    pub invoke_url: Option<String>,
    /// Bootstrap brokers of a kafka:// source.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// TLS, SASL and extra librdkafka settings of a kafka:// source.
    #[command(flatten)]
    pub security: damselfly_kafka::SecurityArgs,
    /// The consumer group a kafka:// source commits its progress under.
    #[arg(long, default_value = damselfly_runner::redrive::DEFAULT_GROUP)]
    pub redrive_group: String,
    /// The alarm function's consumer group, which names its states [default: damselfly-alarm].
    #[arg(long)]
    pub group: Option<String>,
    /// Invocations of one batch before it counts as failed and stays where it is.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// The aggregate function's settings (a redrive replays old batches: raise --max-past past
    /// their age).
    #[command(flatten, next_help_heading = "Aggregate function")]
    pub aggregate: damselfly_aggregate::config::Settings,
    /// The alarm function's settings.
    #[command(flatten, next_help_heading = "Alarm function")]
    pub alarm: damselfly_alarm::config::Settings,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Output formats of `damselfly sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text table.
    Table,
    /// CSV with a header.
    Csv,
    /// JSON array of objects.
    Json,
}

/// `damselfly sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Lake URL: a directory, file:///abs/path or s3://bucket/prefix.
    #[arg(long, env = "LAKE")]
    pub lake: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The SQL statement; without one, an interactive prompt (statements end with `;`, history
    /// in ~/.damselfly_sql_history, Ctrl-D leaves).
    pub query: Option<String>,
}

/// `damselfly serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Lake URL: a directory, file:///abs/path or s3://bucket/prefix.
    #[arg(long, env = "LAKE")]
    pub lake: String,
    /// Address to listen on (CB-Dragonfly's API listens on 9090).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: std::net::SocketAddr,
    /// The query function's settings.
    #[command(flatten)]
    pub query: damselfly_query::config::Settings,
    /// Longest a request may run before it is answered 503.
    #[arg(long, value_parser = duration,
          default_value = show_duration(damselfly_query::api::Limits::default().timeout))]
    pub request_timeout: Duration,
    /// Most requests answered at once; one more is answered 503 at once (no queue).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..),
          default_value_t = u16::try_from(damselfly_query::api::Limits::default().concurrency).unwrap_or(u16::MAX))]
    pub max_concurrent: u16,
}

/// `damselfly metric ...`.
#[derive(Debug, Subcommand)]
pub enum MetricCommand {
    /// One VM's metric family, one statistic per window over the last --duration (the API's
    /// GET /dragonfly/ns/NS/mcis/MCIS/vm/VM/metric/METRIC/info, answered from the lake).
    Get(MetricGetArgs),
}

/// `damselfly metric get`.
#[derive(Debug, Args)]
pub struct MetricGetArgs {
    /// Lake URL: a directory, file:///abs/path or s3://bucket/prefix.
    #[arg(long, env = "LAKE")]
    pub lake: String,
    /// Namespace.
    #[arg(long)]
    pub ns: String,
    /// MCIS (VM group).
    #[arg(long)]
    pub mcis: String,
    /// VM id.
    #[arg(long)]
    pub vm: String,
    /// Metric family: cpu, cpufreq, memory, disk, diskio, network, swap, load, process.
    #[arg(long)]
    pub metric: String,
    /// Window: m (minute), h (hour) or d (day).
    #[arg(long, default_value = "m")]
    pub period: String,
    /// Statistic per window: min, max, avg or last (of per-second rates for counters).
    #[arg(long, default_value = "avg")]
    pub stat: String,
    /// How far back: 5m, 1h30m, 7d (InfluxQL style, as CB-Dragonfly).
    #[arg(long, default_value = "5m")]
    pub duration: String,
    /// Only this device (disk, diskio, network).
    #[arg(long)]
    pub device: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `damselfly vm ...`.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// The VMs with samples in the lake: ns, mcis, vm, csp, region, os, last seen.
    List(VmListArgs),
}

/// `damselfly vm list`.
#[derive(Debug, Args)]
pub struct VmListArgs {
    /// Lake URL: a directory, file:///abs/path or s3://bucket/prefix.
    #[arg(long, env = "LAKE")]
    pub lake: String,
    /// Only VMs seen within this long.
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub since: Duration,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `damselfly compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Lake URL: a directory, file:///abs/path or s3://bucket/prefix.
    #[arg(long, env = "LAKE")]
    pub lake: String,
    /// Take this time (RFC 3339, e.g. 2026-11-21T10:05:00Z) as now [default: the clock].
    #[arg(long)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// The compaction function's settings.
    #[command(flatten)]
    pub compact: damselfly_compact::config::Settings,
    /// Print what would be merged and deleted, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Crash drill: write the compacted files and rollups, then stop before deleting anything.
    #[arg(long, hide = true)]
    pub halt_after_write: bool,
}

/// Options of `damselfly agent` (the same as the slim `damselfly-agent` binary).
pub use damselfly_agent::cli::AgentArgs;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_and_the_lambdas_variables_fill_the_same_settings() {
        // Every setting given (so that the test's own environment cannot matter).
        let pairs = [
            ("max-past", "DAMSELFLY_MAX_PAST", "30d"),
            ("max-future", "DAMSELFLY_MAX_FUTURE", "1m"),
            ("max-message-bytes", "DAMSELFLY_MAX_MESSAGE_BYTES", "2048"),
            ("tail-expiry", "DAMSELFLY_TAIL_EXPIRY", "6h"),
            ("max-tail-series", "DAMSELFLY_MAX_TAIL_SERIES", "10"),
        ];
        let mut argv = vec![
            "damselfly",
            "run",
            "aggregate",
            "--brokers",
            "b",
            "--lake",
            "/l",
        ];
        let flags: Vec<String> = pairs.iter().map(|(f, _, _)| format!("--{f}")).collect();
        for (flag, (_, _, value)) in flags.iter().zip(pairs) {
            argv.extend([flag.as_str(), value]);
        }
        let Command::Run(run) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not run")
        };
        let lambda: damselfly_aggregate::config::Settings = damselfly_core::env::from_lookup(|k| {
            pairs
                .iter()
                .find(|(_, var, _)| *var == k)
                .map(|(_, _, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(run.aggregate, lambda);
        assert_eq!(lambda.max_past, Duration::from_secs(30 * 86_400));
        // A bad value names the flag and the fix.
        let e = Cli::try_parse_from(["damselfly", "compact", "--lake", "/l", "--grace", "soon"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'--grace <GRACE>'") && e.contains("use a duration such as"),
            "{e}"
        );
    }
}
