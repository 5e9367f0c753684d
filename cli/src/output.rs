//! Terminal output: indicatif progress bars, `tracing` logs that print above them, and summaries.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Sets up logging (`RUST_LOG` wins; `-v` raises the default) and returns the shared progress area.
pub fn init(verbose: u8) -> MultiProgress {
    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let default = match verbose {
        0 => "warn,damselfly=info",
        1 => "info",
        _ => "debug,rdkafka=info,hyper=info,h2=info,datafusion=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter(progress.clone()))
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    progress
}

/// Writes each log line with the progress bars briefly cleared, so the two never garble.
#[derive(Clone)]
struct LogWriter(MultiProgress);

/// One log record, buffered until it is complete.
struct LogLine {
    progress: MultiProgress,
    buf: Vec<u8>,
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            progress: self.0.clone(),
            buf: Vec::new(),
        }
    }
}

impl std::io::Write for LogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.progress.suspend(|| {
            let _ = std::io::stderr().write_all(&buf);
        });
    }
}

/// A counting bar (`len` known) or spinner (`len` = None) in the shared progress area.
pub fn bar(progress: &MultiProgress, len: Option<u64>, prefix: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => progress.add(ProgressBar::new(n)).with_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        None => progress.add(ProgressBar::new_spinner()).with_style(
            ProgressStyle::with_template("{prefix:>10} {spinner} {pos} {msg} ({elapsed})")
                .expect("valid template"),
        ),
    };
    pb.set_prefix(prefix.to_owned());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Prints a command's closing summary: a JSON object on stdout with `--json`, else one line on stderr.
pub fn summary<T: serde::Serialize>(json: bool, value: &T, line: &str) {
    if json {
        println!(
            "{}",
            serde_json::to_string(value).expect("summaries serialize")
        );
    } else {
        eprintln!("{line}");
    }
}
