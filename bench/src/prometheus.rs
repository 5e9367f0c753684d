//! Prometheus's TSDB as a storage peer: the same samples written as a block by `promtool`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use damselfly_runner::metrics::escape_label_value as escape;
use damselfly_schemas::MetricMessage;

use crate::sys;

/// Where `tests/prometheus-install` unpacks Debian's `prometheus` package (under
/// `$DAMSELFLY_CACHE`, default `~/.cache/damselfly`, as the project's scripts cache).
pub fn default_promtool() -> Option<PathBuf> {
    let cache = match std::env::var_os("DAMSELFLY_CACHE") {
        Some(c) => PathBuf::from(c),
        None => Path::new(&std::env::var_os("HOME")?).join(".cache/damselfly"),
    };
    let p = cache.join("prometheus/usr/bin/promtool");
    p.exists().then_some(p)
}

/// What one Prometheus block of the samples takes on disk.
#[derive(Debug, Clone)]
pub struct Block {
    /// `promtool` and its version.
    pub version: String,
    /// Samples the block holds (from its `meta.json`).
    pub samples: u64,
    /// Bytes of the chunk files (the samples, XOR/delta-of-delta encoded).
    pub chunks: u64,
    /// Bytes of the whole block: chunks, index (series and labels), meta.json, tombstones.
    pub total: u64,
    /// Seconds `promtool` took to build the block.
    pub seconds: f64,
}

/// Writes every sample of `messages` (native JSON, in order) as OpenMetrics with the `raw`
/// table's columns as labels, builds a TSDB block from it with `promtool tsdb
/// create-blocks-from openmetrics` in `dir` (emptied first), and measures the block.
pub fn build_block(promtool: &Path, messages: &[Vec<u8>], dir: &Path) -> anyhow::Result<Block> {
    sys::empty_dir(dir)?;
    let input = dir.join("input.om");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input)?);
    for m in messages {
        let msg = MetricMessage::from_json(m)?;
        let t = &msg.tags;
        let labels = format!(
            r#"ns="{}",mcis="{}",vm="{}",csp="{}",region="{}",os="{}""#,
            escape(&t.ns),
            escape(&t.mcis),
            escape(&t.vm),
            escape(&t.csp),
            escape(&t.region),
            escape(&t.os)
        );
        let ts = format!("{}.{:03}", msg.ts.div_euclid(1000), msg.ts.rem_euclid(1000));
        for (metric, value) in &msg.metrics {
            writeln!(f, "{metric}{{{labels}}} {value} {ts}")?;
        }
        for (device, metrics) in &msg.devices {
            for (metric, value) in metrics {
                writeln!(
                    f,
                    r#"{metric}{{{labels},device="{}"}} {value} {ts}"#,
                    escape(device)
                )?;
            }
        }
    }
    writeln!(f, "# EOF")?;
    f.flush()?;
    drop(f);

    let blocks = dir.join("blocks");
    let started = Instant::now();
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&blocks)
        .output()
        .with_context(|| format!("running {}", promtool.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    // The OpenMetrics text is about 1 GB for the default run: not worth keeping.
    std::fs::remove_file(&input)?;
    if !out.status.success() {
        bail!(
            "promtool failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let version = Command::new(promtool)
        .arg("--version")
        .output()
        .map(|o| {
            // "promtool, version 2.42.0+ds (branch: ...)" -> "promtool 2.42.0+ds"
            let text = String::from_utf8_lossy(&o.stdout);
            let version = text
                .split_whitespace()
                .skip_while(|w| *w != "version")
                .nth(1);
            format!("promtool {}", version.unwrap_or("?"))
        })
        .unwrap_or_else(|_| "promtool".into());

    let (mut samples, mut chunks, mut total) = (0, 0, 0);
    for block in std::fs::read_dir(&blocks)? {
        let block = block?.path();
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(block.join("meta.json"))?)?;
        samples += meta["stats"]["numSamples"]
            .as_u64()
            .context("meta.json without stats.numSamples")?;
        chunks += sys::du(&block.join("chunks"))?.1;
        total += sys::du(&block)?.1;
    }
    Ok(Block {
        version,
        samples,
        chunks,
        total,
        seconds,
    })
}
