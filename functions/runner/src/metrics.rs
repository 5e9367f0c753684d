//! The runner's live counters and their Prometheus text exposition over a minimal HTTP endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Upper bounds (seconds) of the invocation latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Counters the runner updates as it goes; read them for progress displays and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records the function processed successfully (their offsets are then committed).
    pub records: AtomicU64,
    /// Batches (or bisected parts of batches) that succeeded.
    pub batches: AtomicU64,
    /// Invocations that failed (each attempt counts).
    pub failures: AtomicU64,
    /// Invocations that repeated a failed one.
    pub retries: AtomicU64,
    /// Failing batches split in halves.
    pub bisections: AtomicU64,
    /// Batches written to the on-failure destination (then committed).
    pub failed_batches: AtomicU64,
    /// Records in those batches.
    pub failed_records: AtomicU64,
    /// Batches given up without a commit (partitions revoked, or shutdown).
    pub abandoned_batches: AtomicU64,
    /// Offset commits that failed (their offsets are retried with the next commit).
    pub commit_failures: AtomicU64,
    /// Partition assignments and revocations seen by workers.
    pub rebalances: AtomicU64,
    /// Group lag at the last measurement (-1 before the first).
    pub lag: AtomicI64,
    /// Lag measurements taken so far (incremented, with release ordering, after [`lag`](Self::lag)
    /// is updated: read it with acquire ordering before reading the lag).
    pub lag_measurements: AtomicU64,
    /// Workers (consumer-group members) running.
    pub workers: AtomicU64,
    /// Workers the last lag measurement called for.
    pub desired_workers: AtomicU64,
    /// Most workers running at once.
    pub max_workers_seen: AtomicU64,
    /// Decisions that added workers.
    pub scale_outs: AtomicU64,
    /// Decisions that removed workers.
    pub scale_ins: AtomicU64,
    /// Lag of each partition at the last measurement.
    pub partition_lag: Mutex<BTreeMap<i32, i64>>,
    /// Invocation latency.
    pub invocation_seconds: Histogram,
}

impl Stats {
    /// Scaling decisions that changed the number of workers.
    pub fn scaling_events(&self) -> u64 {
        self.scale_outs.load(Relaxed) + self.scale_ins.load(Relaxed)
    }

    /// Records the number of running workers.
    pub fn set_workers(&self, n: usize) {
        self.workers.store(n as u64, Relaxed);
        self.max_workers_seen.fetch_max(n as u64, Relaxed);
    }

    /// Records a lag measurement.
    pub fn set_lag(&self, per_partition: &BTreeMap<i32, i64>) {
        self.lag.store(per_partition.values().sum(), Relaxed);
        *self.partition_lag.lock().expect("not poisoned") = per_partition.clone();
        self.lag_measurements
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter.
    pub fn prometheus(&self, topic: &str, group: &str) -> String {
        let labels = format!(
            "topic=\"{}\",group=\"{}\"",
            escape_label_value(topic),
            escape_label_value(group)
        );
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP damselfly_runner_{name} {help}");
            let _ = writeln!(out, "# TYPE damselfly_runner_{name} {kind}");
            let _ = writeln!(out, "damselfly_runner_{name}{{{labels}}} {value}");
        };
        let c = |a: &AtomicU64| a.load(Relaxed).to_string();
        metric(
            "records_total",
            "counter",
            "Records processed successfully.",
            c(&self.records),
        );
        metric(
            "batches_total",
            "counter",
            "Batches processed successfully.",
            c(&self.batches),
        );
        metric(
            "invocation_errors_total",
            "counter",
            "Failed invocations.",
            c(&self.failures),
        );
        metric(
            "retries_total",
            "counter",
            "Invocations that retried a failed batch.",
            c(&self.retries),
        );
        metric(
            "bisections_total",
            "counter",
            "Failing batches split in halves.",
            c(&self.bisections),
        );
        metric(
            "on_failure_batches_total",
            "counter",
            "Batches sent to the on-failure destination.",
            c(&self.failed_batches),
        );
        metric(
            "on_failure_records_total",
            "counter",
            "Records sent to the on-failure destination.",
            c(&self.failed_records),
        );
        metric(
            "abandoned_batches_total",
            "counter",
            "Batches given up uncommitted (revoked or shut down).",
            c(&self.abandoned_batches),
        );
        metric(
            "commit_failures_total",
            "counter",
            "Offset commits that failed.",
            c(&self.commit_failures),
        );
        metric(
            "rebalances_total",
            "counter",
            "Partition assignments and revocations seen by workers.",
            c(&self.rebalances),
        );
        metric(
            "workers",
            "gauge",
            "Workers (consumer-group members) running.",
            c(&self.workers),
        );
        metric(
            "desired_workers",
            "gauge",
            "Workers the last lag measurement called for.",
            c(&self.desired_workers),
        );
        metric(
            "group_lag",
            "gauge",
            "Total lag of the group (high watermark - committed offset).",
            self.lag.load(Relaxed).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP damselfly_runner_scaling_events_total Scaling decisions that changed the number of workers."
        );
        let _ = writeln!(out, "# TYPE damselfly_runner_scaling_events_total counter");
        for (direction, n) in [("out", &self.scale_outs), ("in", &self.scale_ins)] {
            let _ = writeln!(
                out,
                "damselfly_runner_scaling_events_total{{{labels},direction=\"{direction}\"}} {}",
                n.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP damselfly_runner_partition_lag Lag of each partition (high watermark - committed offset)."
        );
        let _ = writeln!(out, "# TYPE damselfly_runner_partition_lag gauge");
        for (p, lag) in self.partition_lag.lock().expect("not poisoned").iter() {
            let _ = writeln!(
                out,
                "damselfly_runner_partition_lag{{{labels},partition=\"{p}\"}} {lag}"
            );
        }
        self.invocation_seconds.render(
            &mut out,
            "damselfly_runner_invocation_duration_seconds",
            "Latency of function invocations.",
            &labels,
        );
        out
    }
}

/// A Prometheus histogram with fixed buckets ([`LATENCY_BUCKETS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// A label value quoted as the Prometheus text and OpenMetrics formats require.
pub fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown` resolves.
///
/// A deliberately small HTTP/1.1 responder (one request per connection), so that the runner adds
/// no HTTP framework to the build; anything but `GET /metrics` or `GET /` gets a 404.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<Stats>,
    topic: String,
    group: String,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (stats, topic, group) = (stats.clone(), topic.clone(), group.clone());
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &stats, &topic, &group).await {
                tracing::debug!(%peer, error = %e, "metrics: request failed");
            }
        });
    }
}

async fn respond(
    mut stream: TcpStream,
    stats: &Stats,
    topic: &str,
    group: &str,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0_u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(head, Ok(Ok(()))) {
        return Ok(());
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/metrics" | "/") => ("200 OK", stats.prometheus(topic, group)),
        ("GET", _) => ("404 Not Found", "not found: try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), r"x\ny");
    }

    #[test]
    fn exposition_has_every_family() {
        let s = Stats::default();
        s.records.store(42, Relaxed);
        s.set_workers(3);
        s.set_workers(2);
        s.scale_outs.store(1, Relaxed);
        s.set_lag(&BTreeMap::from([(0, 5), (1, 7)]));
        s.invocation_seconds.observe(Duration::from_millis(30));
        s.invocation_seconds.observe(Duration::from_secs(2));
        let text = s.prometheus("metrics", "g\"1");
        for needle in [
            "damselfly_runner_records_total{topic=\"metrics\",group=\"g\\\"1\"} 42",
            "damselfly_runner_workers{topic=\"metrics\",group=\"g\\\"1\"} 2",
            "damselfly_runner_group_lag{topic=\"metrics\",group=\"g\\\"1\"} 12",
            "partition=\"1\"} 7",
            "direction=\"out\"} 1",
            "damselfly_runner_invocation_duration_seconds_bucket{topic=\"metrics\",group=\"g\\\"1\",le=\"0.05\"} 1",
            "le=\"+Inf\"} 2",
            "damselfly_runner_invocation_duration_seconds_count{topic=\"metrics\",group=\"g\\\"1\"} 2",
            "# TYPE damselfly_runner_retries_total counter",
            "# TYPE damselfly_runner_invocation_duration_seconds histogram",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(s.max_workers_seen.load(Relaxed), 3);
        assert_eq!(s.scaling_events(), 1);
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        stats.batches.store(9, Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, stats, "t".into(), "g".into(), async {
            let _ = rx.await;
        }));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("damselfly_runner_batches_total{topic=\"t\",group=\"g\"} 9"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
