//! `damselfly compact`: merge closed hours into one file each, build `rollup_1h`/`rollup_1d`, apply retention.

use damselfly_core::Lake;
use damselfly_core::compact::{self, CompactConfig, CompactReport, Step};
use indicatif::MultiProgress;
use serde::Serialize;

use crate::cli::CompactArgs;
use crate::output;

/// The closing summary: what was done (or, with --dry-run, would be done).
#[derive(Debug, Serialize)]
struct Summary {
    /// The lake.
    lake: String,
    /// Whether nothing was written.
    dry_run: bool,
    /// The counts.
    #[serde(flatten)]
    report: CompactReport,
}

pub async fn compact(args: CompactArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    let lake = Lake::open(&args.lake)?;
    let config = args.compact.config(&args.lake);
    let cfg = CompactConfig {
        now_ms: args
            .now
            .map_or_else(super::now_ms, |t| t.timestamp_millis()),
        grace: config.grace,
        lookback: config.lookback,
        retention: config.retention,
        ledger_writer: damselfly_aggregate::handler::WRITER.to_owned(),
        halt_after_write: args.halt_after_write,
        merge_memory: config.merge_memory,
    };
    tracing::debug!(lake = %lake.location(), now_ms = cfg.now_ms, retention = %cfg.retention, "planning compaction");
    let spinner = output::bar(progress, None, "planning");
    let plan = compact::plan(&lake, &cfg).await?;
    spinner.finish_and_clear();

    let report = if args.dry_run {
        for m in &plan.merges {
            tracing::info!(partition = %m.hour.dir(m.table), generation = m.generation, sources = m.sources.len(), superseded = m.superseded.len(), "would merge");
        }
        for e in &plan.expiries {
            tracing::info!(partition = %e.hour.dir(e.table), objects = e.objects.len(), "would expire");
        }
        plan.preview()
    } else {
        let bar = output::bar(progress, Some(plan.steps()), "compact");
        let report = compact::execute(&lake, &cfg, &plan, |step| {
            bar.inc(1);
            bar.set_message(match step {
                Step::Merged(m) => m.hour.dir(m.table),
                Step::Rollup1h(h) => h.dir(damselfly_schemas::Table::Rollup1h),
                Step::Rollup1d(d) => d.dir(damselfly_schemas::Table::Rollup1d),
                Step::Expired(e) => format!("expired {}", e.hour.dir(e.table)),
            });
        })
        .await?;
        bar.finish_and_clear();
        report
    };
    let line = summary_line(&report, args.dry_run);
    let summary = Summary {
        lake: lake.location().to_string(),
        dry_run: args.dry_run,
        report,
    };
    output::summary(args.json, &summary, &line);
    if report.failed > 0 {
        anyhow::bail!(
            "{} compaction steps failed and were skipped (each is logged with its error); the rest was done, and the next run tries them again",
            report.failed
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1_048_576.0)
}

fn summary_line(r: &CompactReport, dry_run: bool) -> String {
    let mut line = format!(
        "{}{} hour partitions compacted ({} files, {} -> {}), {} superseded files deleted, {} rollup_1h and {} rollup_1d written, {} partitions expired ({} objects, {})",
        if dry_run { "dry run: " } else { "" },
        r.partitions_compacted,
        r.files_merged,
        mib(r.bytes_before),
        if dry_run {
            "?".to_owned()
        } else {
            mib(r.bytes_after)
        },
        r.superseded_deleted,
        r.rollups_1h,
        r.rollups_1d,
        r.partitions_expired,
        r.objects_expired,
        mib(r.bytes_expired),
    );
    if r.waiting > 0 {
        line.push_str(&format!(
            "; {} batch files wait for their partition's next batch",
            r.waiting
        ));
    }
    if r.conflicts > 0 {
        line.push_str(&format!(
            "; {} partitions left to a concurrent compaction",
            r.conflicts
        ));
    }
    if r.staging_removed > 0 {
        line.push_str(&format!(
            "; {} stale staged objects removed",
            r.staging_removed
        ));
    }
    if r.failed > 0 {
        line.push_str(&format!("; {} steps FAILED (see the log)", r.failed));
    }
    line
}
