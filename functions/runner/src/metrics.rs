//! The runner's live counters, exposed to Prometheus (OpenMetrics text, by `prometheus-client`)
//! at `GET /metrics` (served by axum).
//!
//! The counters stay plain atomics, which the workers, progress bars and summaries read directly;
//! a [`Collector`] turns them into metric families at each scrape, labelled with the topic and
//! the group (and the partition or the scaling direction where it applies).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

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
    pub invocation_errors: AtomicU64,
    /// Invocations that repeated a failed one.
    pub retries: AtomicU64,
    /// Failing batches split in halves.
    pub bisections: AtomicU64,
    /// Batches written to the on-failure destination (then committed).
    pub on_failure_batches: AtomicU64,
    /// Records in those batches.
    pub on_failure_records: AtomicU64,
    /// Batches given up without a commit (partitions revoked, or shutdown).
    pub abandoned_batches: AtomicU64,
    /// Offset commits that failed (their offsets are retried with the next commit).
    pub commit_failures: AtomicU64,
    /// Partition assignments and revocations seen by workers.
    pub rebalances: AtomicU64,
    /// Group lag at the last measurement (-1 before the first).
    pub group_lag: AtomicI64,
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
        self.group_lag.store(per_partition.values().sum(), Relaxed);
        *self.partition_lag.lock().expect("not poisoned") = per_partition.clone();
        self.lag_measurements
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// The OpenMetrics text exposition of every counter, labelled with `topic` and `group`.
    pub fn prometheus(self: &Arc<Self>, topic: &str, group: &str) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StatsCollector {
            stats: self.clone(),
            labels: vec![
                ("topic", escape_label_value(topic)),
                ("group", escape_label_value(group)),
            ],
        }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The runner's [`Stats`] as metric families, read at each scrape.
#[derive(Debug)]
struct StatsCollector {
    stats: Arc<Stats>,
    /// `topic` and `group`, values already escaped (prometheus-client writes them as given).
    labels: Vec<(&'static str, String)>,
}

impl StatsCollector {
    fn counter(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: &AtomicU64,
    ) -> std::fmt::Result {
        let c = ConstCounter::new(value.load(Relaxed));
        let mut metric = encoder.encode_descriptor(name, help, None, c.metric_type())?;
        c.encode(metric.encode_family(&self.labels)?)
    }

    fn gauge(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: i64,
    ) -> std::fmt::Result {
        let g = ConstGauge::new(value);
        let mut metric = encoder.encode_descriptor(name, help, None, g.metric_type())?;
        g.encode(metric.encode_family(&self.labels)?)
    }

    /// The topic and group labels followed by one more.
    fn with(&self, key: &'static str, value: String) -> Vec<(&'static str, String)> {
        let mut labels = self.labels.clone();
        labels.push((key, value));
        labels
    }
}

/// A counter family of [`COUNTERS`]: name, help, and where the value is.
type Counter = (&'static str, &'static str, fn(&Stats) -> &AtomicU64);

/// A gauge family of [`GAUGES`]: name, help, and how to read the value.
type Gauge = (&'static str, &'static str, fn(&Stats) -> i64);

/// The runner's counters: name (after `damselfly_runner_`, and without `_total`, which the encoder
/// appends to the samples), help, and where the value is.
const COUNTERS: [Counter; 10] = [
    ("records", "Records processed successfully.", |s| &s.records),
    ("batches", "Batches processed successfully.", |s| &s.batches),
    ("invocation_errors", "Failed invocations.", |s| {
        &s.invocation_errors
    }),
    ("retries", "Invocations that retried a failed batch.", |s| {
        &s.retries
    }),
    ("bisections", "Failing batches split in halves.", |s| {
        &s.bisections
    }),
    (
        "on_failure_batches",
        "Batches sent to the on-failure destination.",
        |s| &s.on_failure_batches,
    ),
    (
        "on_failure_records",
        "Records sent to the on-failure destination.",
        |s| &s.on_failure_records,
    ),
    (
        "abandoned_batches",
        "Batches given up uncommitted (revoked or shut down).",
        |s| &s.abandoned_batches,
    ),
    ("commit_failures", "Offset commits that failed.", |s| {
        &s.commit_failures
    }),
    (
        "rebalances",
        "Partition assignments and revocations seen by workers.",
        |s| &s.rebalances,
    ),
];

/// The runner's gauges without labels of their own: name (after `damselfly_runner_`), help, and
/// how to read the value.
const GAUGES: [Gauge; 3] = [
    (
        "workers",
        "Workers (consumer-group members) running.",
        |s| s.workers.load(Relaxed) as i64,
    ),
    (
        "desired_workers",
        "Workers the last lag measurement called for.",
        |s| s.desired_workers.load(Relaxed) as i64,
    ),
    (
        "group_lag",
        "Total lag of the group (high watermark - committed offset).",
        |s| s.group_lag.load(Relaxed),
    ),
];

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.stats;
        for (name, help, value) in COUNTERS {
            self.counter(&mut e, &format!("damselfly_runner_{name}"), help, value(s))?;
        }
        for (name, help, value) in GAUGES {
            self.gauge(&mut e, &format!("damselfly_runner_{name}"), help, value(s))?;
        }
        self.scaling_events(&mut e)?;
        self.partition_lag(&mut e)?;
        self.invocation_duration(&mut e)
    }
}

impl StatsCollector {
    /// Encodes the scaling decisions that changed the number of workers, one series per direction.
    fn scaling_events(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.stats;
        let mut scaling = e.encode_descriptor(
            "damselfly_runner_scaling_events",
            "Scaling decisions that changed the number of workers.",
            None,
            ConstCounter::new(0_u64).metric_type(),
        )?;
        for (direction, n) in [("out", &s.scale_outs), ("in", &s.scale_ins)] {
            let labels = self.with("direction", direction.to_owned());
            ConstCounter::new(n.load(Relaxed)).encode(scaling.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Encodes the lag of each partition at the last measurement, one series per partition.
    fn partition_lag(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let lags = self
            .stats
            .partition_lag
            .lock()
            .expect("not poisoned")
            .clone();
        let mut partition_lag = e.encode_descriptor(
            "damselfly_runner_partition_lag",
            "Lag of each partition (high watermark - committed offset).",
            None,
            ConstGauge::new(0_i64).metric_type(),
        )?;
        for (p, lag) in lags {
            let labels = self.with("partition", p.to_string());
            ConstGauge::new(lag).encode(partition_lag.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Encodes the invocation latency histogram.
    fn invocation_duration(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let histogram = &self.stats.invocation_seconds.inner;
        let mut latency = e.encode_descriptor(
            "damselfly_runner_invocation_duration_seconds",
            "Latency of function invocations.",
            None,
            histogram.metric_type(),
        )?;
        histogram.encode(latency.encode_family(&self.labels)?)
    }
}

/// The invocation latency histogram, with fixed buckets ([`LATENCY_BUCKETS`]).
#[derive(Debug)]
pub struct Histogram {
    inner: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            inner: prometheus_client::metrics::histogram::Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.inner.observe(d.as_secs_f64());
    }
}

/// A label value quoted as the Prometheus text and OpenMetrics formats require.
pub fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` (and `GET /`) on `listener` until `shutdown` resolves; anything else
/// is a 404 (405 for other methods).
pub async fn serve(
    listener: TcpListener,
    stats: Arc<Stats>,
    topic: String,
    group: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use axum::http::header::{CONNECTION, CONTENT_TYPE};
    // One response per connection, as a scraper that reads to the end of the stream expects.
    let scrape = move || {
        let text = stats.prometheus(&topic, &group);
        async move {
            (
                [
                    (
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    (CONNECTION, "close"),
                ],
                text,
            )
        }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape.clone()))
        .route("/", axum::routing::get(scrape))
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                [(CONNECTION, "close")],
                "not found: try /metrics\n",
            )
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
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
        let s = Arc::new(Stats::default());
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
            "damselfly_runner_invocation_duration_seconds_bucket{le=\"0.05\",topic=\"metrics\",group=\"g\\\"1\"} 1",
            "{le=\"+Inf\",topic=\"metrics\",group=\"g\\\"1\"} 2",
            "damselfly_runner_invocation_duration_seconds_count{topic=\"metrics\",group=\"g\\\"1\"} 2",
            "# TYPE damselfly_runner_retries counter",
            "# TYPE damselfly_runner_invocation_duration_seconds histogram",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(s.max_workers_seen.load(Relaxed), 3);
        assert_eq!(s.scaling_events(), 1);
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        stats.batches.store(9, Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, stats, "t".into(), "g".into(), async {
            let _ = rx.await;
        }));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            // The server closes the connection after its response (a scraper reading to the end).
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
                .await
                .expect("the connection is closed after one response")
                .unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        assert!(
            ok.to_ascii_lowercase().contains("connection: close"),
            "{ok}"
        );
        assert!(ok.contains("damselfly_runner_batches_total{topic=\"t\",group=\"g\"} 9"));
        assert!(ok.trim_end().ends_with("# EOF"), "{ok}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
