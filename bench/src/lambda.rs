//! The Lambda binaries' memory: the release aggregate and alarm bootstraps, each under a local Lambda Runtime API, fed a typical and the largest batch Lambda can deliver; peak RSS and duration per size.
//!
//! Lambda runs a custom runtime as one process that long-polls the Runtime API
//! (`/2018-06-01/runtime/invocation/next`) and posts each result back. This benchmark serves that
//! API itself (axum, on 127.0.0.1), starts the very binary `cargo lambda build` packages with
//! Lambda's environment (function name, memory size, version) and the local stack's lake and SNS
//! topic, and hands it events shaped as the Kafka event source mapping delivers them: records of
//! one partition, base64 key and value, grouped under "topic-partition". The largest event is the
//! one the mapping can deliver: up to 10,000 records and at most 6 MB of JSON, whichever comes
//! first (with the full metric set, the payload limit). Peak RSS is the process's VmHWM from
//! /proc after each size, so the figure is what a Lambda sandbox of that memory size must hold.
//! The peer is the memory size the function is deployed with: the ratio says how much of it the
//! peak uses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use damselfly_agent::Fleet;
use damselfly_agent::run::now_ms;
use damselfly_runner::config::MAX_PAYLOAD_BYTES;
use damselfly_runner::event::{kafka_event, lambda_json};
use rdkafka::Timestamp;
use rdkafka::message::OwnedMessage;
use tokio::sync::mpsc;

use crate::sys;

/// Most records Lambda's Kafka event source mapping puts in one invocation (BatchSize's maximum).
const MAX_RECORDS: usize = 10_000;

/// Options of the Lambda memory benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which function binaries to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [Function::Aggregate, Function::Alarm])]
    functions: Vec<Function>,
    /// Records in the typical batch (the fleet benchmark's invocations held about this many per
    /// partition).
    #[arg(long, default_value_t = 1_000)]
    typical_records: usize,
    /// Invocations of each size.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Collection interval of the simulated messages.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Where the Lambda binaries are [default: next to this one, as `cargo build --release`
    /// puts them].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The lake (localstack/.env: LAKE); each run writes under LAKE/lambda-bench/RUN.
    #[arg(long, env = "LAKE")]
    lake: String,
    /// SNS topic of the alarm function (localstack/.env: SNS_TOPIC_ARN).
    #[arg(long, env = "SNS_TOPIC_ARN")]
    sns_topic_arn: String,
    /// Where the alarm rules file and the functions' logs go (emptied first).
    #[arg(long, default_value = "bench/out/lambda")]
    out: PathBuf,
}

/// A function whose Lambda binary is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Function {
    /// `damselfly-aggregate`, deployed with 256 MB.
    Aggregate,
    /// `damselfly-alarm`, deployed with 128 MB.
    Alarm,
}

impl Function {
    fn binary(self) -> &'static str {
        match self {
            Self::Aggregate => "damselfly-aggregate",
            Self::Alarm => "damselfly-alarm",
        }
    }

    /// The memory size the goal sets (MB, as Lambda counts it).
    fn memory_mb(self) -> u64 {
        match self {
            Self::Aggregate => 256,
            Self::Alarm => 128,
        }
    }
}

impl std::fmt::Display for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Aggregate => "aggregate",
            Self::Alarm => "alarm",
        })
    }
}

/// One row of the table: a function at one batch size.
struct Row {
    function: Function,
    batch: &'static str,
    records: usize,
    payload_bytes: usize,
    durations_ms: Vec<f64>,
    objects: u64,
    hwm_mib: f64,
}

/// Runs the benchmark and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .to_path_buf(),
    };
    sys::empty_dir(&args.out)?;
    let rules = args.out.join("rules.json");
    std::fs::write(&rules, crate::alarm::BENCH_RULES)?;
    let run_id = now_ms();
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for &function in &args.functions {
        let bin = bin_dir.join(function.binary());
        if !bin.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release -p damselfly-{function}`",
                bin.display()
            );
        }
        let lake = format!(
            "{}/lambda-bench/{run_id}/{function}",
            args.lake.trim_end_matches('/')
        );
        eprintln!("measuring {} (lake {lake}) ...", bin.display());
        let mut env = vec![
            ("LAKE", lake),
            ("ALARM_RULES", rules.display().to_string()),
            ("SNS_TOPIC_ARN", args.sns_topic_arn.clone()),
        ];
        if function == Function::Aggregate {
            env.truncate(1);
        }
        rows.extend(rt.block_on(measure(args, function, &bin, &env))?);
    }
    print_table(args, &rows);
    Ok(())
}

/// Starts the binary under the local Runtime API and feeds it both sizes, `repeat` times each.
async fn measure(
    args: &Args,
    function: Function,
    bin: &std::path::Path,
    env: &[(&str, String)],
) -> anyhow::Result<Vec<Row>> {
    let api = RuntimeApi::start().await?;
    let log = std::fs::File::create(args.out.join(format!("{function}.log")))?;
    let child = Command::new(bin)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", format!("damselfly-{function}"))
        .env(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            function.memory_mb().to_string(),
        )
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut child = Kill(child);
    let pid = child.0.id();

    let mut fleet = Fleet::new(MAX_RECORDS, 25, "bench");
    // Samples of the last minutes, as a live fleet sends (the function rejects far-off times).
    let step = args.interval.as_millis().max(1) as i64;
    let mut ts = (now_ms() / step - 2 * args.repeat as i64) * step;
    let mut offset = 0_i64;
    let mut rows = Vec::new();
    for (batch, cap) in [("typical", args.typical_records), ("largest", MAX_RECORDS)] {
        let mut row = Row {
            function,
            batch,
            records: 0,
            payload_bytes: 0,
            durations_ms: Vec::new(),
            objects: 0,
            hwm_mib: 0.0,
        };
        for _ in 0..args.repeat {
            let messages = fleet.tick(ts, args.interval);
            ts += args.interval.as_millis() as i64;
            let (event, records) = event_within_limits(&messages, cap, offset)?;
            offset += records as i64;
            row.records = records;
            row.payload_bytes = event.len();
            let outcome = api.invoke(event, Duration::from_secs(120)).await?;
            let body = match outcome.result {
                Ok(body) => body,
                Err(err) => bail!(
                    "{function} failed on a {batch} batch: {err} (log: {})",
                    args.out.display()
                ),
            };
            let summary: serde_json::Value = serde_json::from_slice(&body)
                .with_context(|| format!("{function}'s result is not JSON"))?;
            let samples = summary["samples"].as_u64().unwrap_or(0);
            let want = (records * Fleet::samples_per_message()) as u64;
            if function == Function::Aggregate && samples != want {
                bail!("aggregate wrote {samples} samples of {want}: {summary}");
            }
            row.objects += summary["objects"].as_u64().unwrap_or(0);
            row.durations_ms.push(outcome.took.as_secs_f64() * 1e3);
        }
        row.hwm_mib = sys::sample(pid)?.hwm_kib as f64 / 1024.0;
        eprintln!(
            "  {batch}: {} records, {:.2} MB, peak RSS so far {:.1} MiB",
            row.records,
            row.payload_bytes as f64 / 1e6,
            row.hwm_mib
        );
        rows.push(row);
    }
    if let Ok(Some(status)) = child.0.try_wait() {
        bail!("{} exited early: {status}", bin.display());
    }
    Ok(rows)
}

/// The event JSON for as many of `messages` (one partition) as fit both of the mapping's limits.
fn event_within_limits(
    messages: &[damselfly_schemas::MetricMessage],
    cap: usize,
    first_offset: i64,
) -> anyhow::Result<(Vec<u8>, usize)> {
    let owned: Vec<OwnedMessage> = messages
        .iter()
        .take(cap)
        .enumerate()
        .map(|(i, m)| {
            OwnedMessage::new(
                Some(m.to_json()),
                Some(m.tags.vm.clone().into_bytes()),
                "metrics".to_owned(),
                Timestamp::CreateTime(m.ts),
                0,
                first_offset + i as i64,
                None,
            )
        })
        .collect();
    // Halve until it fits, then grow back by tenths: the JSON size is known only once encoded.
    let encode = |n: usize| serde_json::to_vec(&lambda_json(&kafka_event(&owned[..n], "bench")));
    let mut n = owned.len();
    let mut body = encode(n)?;
    while body.len() > MAX_PAYLOAD_BYTES {
        n = n * MAX_PAYLOAD_BYTES / body.len() * 99 / 100;
        body = encode(n)?;
    }
    if n == 0 {
        bail!("not one record fits Lambda's {MAX_PAYLOAD_BYTES}-byte payload");
    }
    Ok((body, n))
}

/// What one invocation returned.
struct Outcome {
    took: Duration,
    /// The function's JSON result, or Lambda's error document.
    result: Reply,
}

/// What the function posted: its result, or an error document.
type Reply = Result<Vec<u8>, String>;

/// The local Lambda Runtime API: one invocation at a time.
struct RuntimeApi {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    done: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Reply)>>,
    /// The next invocation's request id.
    next_id: AtomicU64,
}

/// State the Runtime API's routes share.
struct Shared {
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Vec<u8>)>>,
    send: mpsc::UnboundedSender<(String, Vec<u8>)>,
    handed: Mutex<HashMap<String, Instant>>,
    results: mpsc::UnboundedSender<(String, Reply)>,
}

impl RuntimeApi {
    /// Serves the API on an ephemeral port of 127.0.0.1.
    async fn start() -> anyhow::Result<Self> {
        let (send, events) = mpsc::unbounded_channel();
        let (results, done) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            events: tokio::sync::Mutex::new(events),
            send,
            handed: Mutex::new(HashMap::new()),
            results,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            addr,
            shared,
            done: tokio::sync::Mutex::new(done),
            next_id: AtomicU64::new(0),
        })
    }

    /// Queues one event and waits for its result; the time runs from hand-over to the result.
    async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> anyhow::Result<Outcome> {
        let id = format!("bench-{}", self.next_id.fetch_add(1, Relaxed));
        self.shared.send.send((id.clone(), event))?;
        let mut done = self.done.lock().await;
        let (got, result) = tokio::time::timeout(timeout, done.recv())
            .await
            .context("the function did not answer in time")?
            .context("the Runtime API stopped")?;
        if got != id {
            bail!("a result for {got} while waiting for {id}");
        }
        let handed = self.shared.handed.lock().expect("not poisoned").remove(&id);
        let took = handed.map_or(Duration::ZERO, |at| at.elapsed());
        Ok(Outcome { took, result })
    }
}

/// GET next: long-polls until an event is queued (Lambda's own contract).
async fn next(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let Some((id, body)) = s.events.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), Vec::new());
    };
    let deadline = std::time::SystemTime::now() + Duration::from_secs(900);
    let deadline_ms = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut h = HeaderMap::new();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("lambda-runtime-aws-request-id", id.clone());
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:000000000000:function:damselfly-bench".to_owned(),
    );
    set("lambda-runtime-trace-id", format!("Root=1-{id}"));
    set("content-type", "application/json".to_owned());
    s.handed
        .lock()
        .expect("not poisoned")
        .insert(id, Instant::now());
    (StatusCode::OK, h, body)
}

/// POST response: the invocation's result.
async fn response(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let _ = s.results.send((id, Ok(body.to_vec())));
    StatusCode::ACCEPTED
}

/// POST error: the invocation failed; the body is Lambda's error document.
async fn error(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let _ = s
        .results
        .send((id, Err(String::from_utf8_lossy(&body).into_owned())));
    StatusCode::ACCEPTED
}

/// POST init/error: the function could not start.
async fn init_error(State(s): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let _ = s.results.send((
        "init".to_owned(),
        Err(String::from_utf8_lossy(&body).into_owned()),
    ));
    StatusCode::ACCEPTED
}

/// Kills the function when the measurement ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints the table: per function and size, duration percentiles and peak RSS against the memory size.
fn print_table(args: &Args, rows: &[Row]) {
    println!(
        "\nLambda binaries (release) under a local Runtime API, {} invocations per size, the full \
         metric set at a {:?} interval, lake on LocalStack S3",
        args.repeat, args.interval
    );
    println!(
        "\n| function | batch | records | payload MB | duration p50 / max ms | GB-s per million samples | lake objects per invocation | peak RSS MiB | memory size MB | peak / size | fits |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let samples_per_record = Fleet::samples_per_message() as f64;
    for r in rows {
        let mut d = r.durations_ms.clone();
        d.sort_by(f64::total_cmp);
        let p50 = d.get(d.len() / 2).copied().unwrap_or(0.0);
        let max = d.last().copied().unwrap_or(0.0);
        let mean_s = d.iter().sum::<f64>() / d.len().max(1) as f64 / 1e3;
        let mem_gb = r.function.memory_mb() as f64 / 1024.0;
        let gbs_per_m = mean_s * mem_gb / (r.records as f64 * samples_per_record) * 1e6;
        let size_mib = r.function.memory_mb() as f64 * 1e6 / (1024.0 * 1024.0);
        println!(
            "| {} | {} | {} | {:.2} | {:.0} / {:.0} | {:.3} | {:.1} | {:.1} | {} | {:.2} | {} |",
            r.function,
            r.batch,
            r.records,
            r.payload_bytes as f64 / 1e6,
            p50,
            max,
            gbs_per_m,
            r.objects as f64 / d.len().max(1) as f64,
            r.hwm_mib,
            r.function.memory_mb(),
            r.hwm_mib / size_mib,
            if r.hwm_mib < size_mib { "yes" } else { "NO" },
        );
    }
    println!(
        "\npeak RSS = the process's VmHWM after that size's invocations (the largest runs after the \
         typical, so its figure is the peak of both); duration = event handed out by /next -> result \
         posted; GB-s per million samples = mean duration x memory size / samples per invocation"
    );
}
