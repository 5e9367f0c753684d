//! A real Prometheus over a lake's raw samples (OpenMetrics export, promtool's blocks, the server) and an HTTP client for its API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::serve::get;
use super::{DUCKDB_OPEN, DUCKDB_VIEWS, free_port, wait_bounded};

/// The directory holding `prometheus` and `promtool` (`DAMSELFLY_PROMETHEUS`); panics with how to get it.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("DAMSELFLY_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "DAMSELFLY_PROMETHEUS is not set: run tests/run, or \
                 `export DAMSELFLY_PROMETHEUS=$(tests/prometheus-install)`"
            )
        })
}

/// The Python with `duckdb` (`DAMSELFLY_PYTHON`); panics with how to get it.
pub fn python() -> String {
    std::env::var("DAMSELFLY_PYTHON").unwrap_or_else(|_| {
        panic!(
            "DAMSELFLY_PYTHON is not set: run tests/run (it makes ~/.cache/damselfly/tools-venv), or \
             point it at a Python with tests/requirements.txt installed"
        )
    })
}

/// Python writing the lake's `raw` table (argv[1]: the lake) as OpenMetrics text (argv[2]), one
/// family per metric, one series per tag set and device, samples in time order; prints the counts.
const EXPORT: &str = r##"
import json, math, sys
lake, out = sys.argv[1], sys.argv[2]
cur = open_lake(lake).execute(
    "SELECT metric, ns, mcis, vm, csp, region, os, device, epoch_ms(ts) AS t, value FROM raw "
    "ORDER BY metric, ns, mcis, vm, csp, region, os, device, t")

def esc(v):
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

def num(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)

series = samples = 0
prev = head = None
with open(out, "w") as f:
    while rows := cur.fetchmany(50000):
        for metric, ns, mcis, vm, csp, region, os_, device, t, value in rows:
            key = (metric, ns, mcis, vm, csp, region, os_, device)
            if key != prev:
                labels = [("ns", ns), ("mcis", mcis), ("vm", vm), ("csp", csp), ("region", region), ("os", os_)]
                if device:
                    labels.append(("device", device))
                head = metric + "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels) + "}"
                prev = key
                series += 1
            f.write(f"{head} {num(value)} {t // 1000}.{t % 1000:03d}\n")
            samples += 1
    f.write("# EOF\n")
print(json.dumps({"series": series, "samples": samples}))
"##;

/// Writes the lake's `raw` table as an OpenMetrics file next to the lake (`<lake>.om.txt`): metric
/// name = `metric`; labels ns, mcis, vm, csp, region, os, and device when it is not empty; no
/// `# TYPE` lines; timestamps in seconds with milliseconds; every value at full precision.
pub fn export_openmetrics(lake_dir: &Path) -> PathBuf {
    let lake_dir = lake_dir.canonicalize().expect("the lake directory");
    let out = lake_dir.with_file_name(format!(
        "{}.om.txt",
        lake_dir.file_name().unwrap().to_string_lossy()
    ));
    let script = format!("{DUCKDB_OPEN}\n{EXPORT}");
    let output = Command::new(python())
        .args([
            "-c",
            &script,
            lake_dir.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .env("DUCKDB_VIEWS", DUCKDB_VIEWS)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "OpenMetrics export: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counts: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "OpenMetrics export printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert!(
        counts["samples"].as_u64().unwrap() > 0,
        "the lake has no raw samples: {counts}"
    );
    out
}

/// What an OpenMetrics export holds: its series and sample counts and its time span.
#[derive(Debug, Clone, Copy)]
pub struct ExportStats {
    /// Distinct series (consecutive sample lines with the same name and labels).
    pub series: usize,
    /// Sample lines.
    pub samples: usize,
    /// The first sample's time, ms since the epoch.
    pub first_ms: i64,
    /// The last sample's time, ms since the epoch.
    pub last_ms: i64,
}

impl ExportStats {
    /// Reads an export written by [`export_openmetrics`] (its series are contiguous).
    pub fn read(openmetrics: &Path) -> Self {
        let text = std::fs::read_to_string(openmetrics).expect("read the OpenMetrics export");
        let mut stats = ExportStats {
            series: 0,
            samples: 0,
            first_ms: i64::MAX,
            last_ms: i64::MIN,
        };
        let mut prev = "";
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.rsplitn(3, ' ');
            let (ts, _value, key) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().expect("name, value and timestamp"),
            );
            if key != prev {
                stats.series += 1;
                prev = key;
            }
            stats.samples += 1;
            let ms = (ts.parse::<f64>().expect("a timestamp") * 1000.0).round() as i64;
            stats.first_ms = stats.first_ms.min(ms);
            stats.last_ms = stats.last_ms.max(ms);
        }
        stats
    }
}

/// Prometheus serving TSDB blocks made by promtool from an OpenMetrics file, stopped when dropped.
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    /// `host:port` it listens on.
    pub addr: String,
    /// What the file it was loaded from holds.
    pub stats: ExportStats,
}

impl Prometheus {
    /// Builds blocks from `openmetrics` with `promtool tsdb create-blocks-from openmetrics`, starts
    /// Prometheus over them (no scrapes, 100 years' retention, 5 min lookback), waits until it is
    /// ready, and asserts that it sees every series of the file.
    pub fn start(openmetrics: &Path) -> Self {
        let bin = bin_dir();
        let stats = ExportStats::read(openmetrics);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let promtool = Command::new(bin.join("promtool"))
            .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
            .arg(openmetrics)
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        let (out, log) = wait_bounded(promtool, Duration::from_secs(120));
        let out = out.unwrap_or_else(|| panic!("promtool did not finish in 120 s: {log}"));
        assert!(
            out.status.success(),
            "promtool tsdb create-blocks-from openmetrics failed: {log}"
        );
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            "# No scrapes: the data are the blocks.\nglobal: {}\n",
        )
        .unwrap();
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin.join("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address={addr}"))
            .arg("--query.lookback-delta=5m")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prom = Prometheus {
            child,
            dir,
            addr,
            stats,
        };
        let until = Instant::now() + Duration::from_secs(60);
        while get(&prom.addr, "/-/ready").map(|r| r.0) != Some(200) {
            if let Some(status) = prom.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            assert!(
                Instant::now() < until,
                "prometheus was not ready in 60 s:\n{}",
                prom.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every block is loaded: every series (each has a sample within the lookback of the last
        // sample's time) and every sample (count_over_time by metric, since it drops the name).
        let count = |expr: &str| -> usize {
            let answer = prom.instant(expr, stats.last_ms);
            answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{expr}: {answer}"))
        };
        let series = count(r#"count({__name__=~".+"})"#);
        let span_s = (stats.last_ms - stats.first_ms) / 1000 + 60;
        let (_, names) = get_json(&prom.addr, "/api/v1/label/__name__/values");
        let samples: usize = names["data"]
            .as_array()
            .expect("metric names")
            .iter()
            .map(|name| {
                count(&format!(
                    "sum(count_over_time({}[{span_s}s]))",
                    name.as_str().unwrap()
                ))
            })
            .sum();
        assert_eq!(
            (series, samples),
            (stats.series, stats.samples),
            "prometheus holds other (series, samples) than the export:\n{}",
            prom.log()
        );
        prom
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query at `ms`: its JSON answer, asserting a 200.
    pub fn instant(&self, expr: &str, ms: i64) -> Value {
        let path = api_path("/api/v1/query", &[("query", expr), ("time", &seconds(ms))]);
        let (status, body) = get_json(&self.addr, &path);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Milliseconds since the epoch as the API's seconds (`1700000000.123`).
pub fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// `endpoint?k=v&...` with the keys and values percent-encoded (RFC 3986 unreserved kept).
pub fn api_path(endpoint: &str, params: &[(&str, &str)]) -> String {
    let mut path = endpoint.to_owned();
    for (i, (k, v)) in params.iter().enumerate() {
        path.push(if i == 0 { '?' } else { '&' });
        path.push_str(&percent_encode(k));
        path.push('=');
        path.push_str(&percent_encode(v));
    }
    path
}

/// Percent-encodes every byte but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GETs `path` from `addr`: the status and the body as JSON (`null` when empty or not JSON, so
/// that a 404 page still compares as a status).
pub fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = get(addr, path).unwrap_or_else(|| panic!("GET {addr}{path} failed"));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}
