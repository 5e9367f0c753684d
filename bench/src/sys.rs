//! The machine and its helpers as benchmarks see them: /proc readings (CPU time, resident memory, load), topic creation, directories and free ports, and what every run shares in its figures and on screen (percentiles, progress bars, the debug-build warning).

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

/// One reading of /proc for a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was read.
    pub at: Instant,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far (VmHWM), KiB.
    pub hwm_kib: u64,
}

/// Clock ticks per second of /proc/PID/stat times.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Reads /proc/PID/stat and /proc/PID/status.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let at = Instant::now();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i - 3).context("short /proc/PID/stat")?.parse()?)
    };
    let cpu_ticks = ticks(14)? + ticks(15)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(Sample {
        at,
        cpu_ticks,
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
    })
}

/// Reads this process's /proc entries.
pub fn sample_self() -> anyhow::Result<Sample> {
    sample(std::process::id())
}

/// Peak resident set size of this process (VmHWM), KiB; 0 when /proc is unreadable.
pub fn peak_rss_kib() -> u64 {
    sample_self().map(|s| s.hwm_kib).unwrap_or(0)
}

/// A `Field:   123 kB` value of /proc/PID/status, KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU use between two readings, in percent of one core.
pub fn cpu_pct(a: &Sample, b: &Sample, hz: u64) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / hz as f64 / secs * 100.0
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg prints them ("?" when unreadable).
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Creates `topic` with `partitions` partitions on a Kafka-protocol broker, over plaintext.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_on(
        &damselfly_kafka::Connection::plaintext(brokers),
        topic,
        partitions,
    )
}

/// Creates `topic` with `partitions` partitions (replication factor 1) over `conn`.
pub fn create_topic_on(
    conn: &damselfly_kafka::Connection,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let context = damselfly_kafka::KafkaContext::new(conn)?;
    let admin: AdminClient<damselfly_kafka::KafkaContext> =
        conn.client_config().create_with_context(context)?;
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        ))
        .map_err(|e| match admin.inner().context().hooks().blocking() {
            Some(problem) => anyhow::anyhow!("creating {topic} on {}: {problem}", conn.brokers),
            None => anyhow::anyhow!("creating {topic} on {}: {e}", conn.brokers),
        })?;
    for r in res {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// Files and bytes under `dir`, recursively.
pub fn du(dir: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (f, b) = du(&entry.path())?;
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// Creates `dir`, empty: whatever an earlier run left there is removed first.
pub fn empty_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// A benchmark's output directory: whatever an earlier run left is removed (as far as it can be),
/// the directory is created, and its absolute path returned.
pub fn fresh_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    Ok(fs::canonicalize(dir)?)
}

/// A TCP port of 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The nearest-rank quantile `p` (0 to 1) of `sorted`, which is sorted and not empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A progress bar of `len` steps drawn with `template` (indicatif's syntax), labelled `prefix`.
pub fn progress_bar(len: u64, template: &str, prefix: impl Into<Cow<'static, str>>) -> ProgressBar {
    let pb = ProgressBar::new(len)
        .with_style(ProgressStyle::with_template(template).expect("valid template"));
    pb.set_prefix(prefix);
    pb
}

/// Warns on stderr when this is a debug build: the figures of benchmark `bench` would be far from a release build's.
pub fn warn_if_debug(bench: &str) {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: a debug build; run `cargo run --release -p damselfly-bench -- {bench}` for real figures"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_rounds_to_the_closest_index() {
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(nearest_rank(&v, 0.0), 1);
        assert_eq!(nearest_rank(&v, 0.5), 6); // index 4.5 rounds away from zero
        assert_eq!(nearest_rank(&v, 0.99), 10);
        assert_eq!(nearest_rank(&v, 1.0), 10);
        assert_eq!(nearest_rank(&[7.5], 0.99), 7.5);
    }

    #[test]
    fn fresh_dir_empties_and_makes_absolute() {
        let dir =
            std::env::temp_dir().join(format!("damselfly-bench-fresh-{}", std::process::id()));
        fs::create_dir_all(dir.join("old")).unwrap();
        let got = fresh_dir(&dir).unwrap();
        assert!(got.is_absolute());
        assert_eq!(fs::read_dir(&got).unwrap().count(), 0);
        fs::remove_dir_all(&got).unwrap();
    }
}
