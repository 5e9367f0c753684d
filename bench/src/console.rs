//! The console's page loads (issue 27): the fleet page and a VM page of the API benchmark's 10,000-VM lake, loaded in Chromium.
//!
//! The lake is the `api` benchmark's (generated once and cached under `bench/out/api`, shared
//! with it when the options match), here with the families the fleet page ranks by default (cpu,
//! memory, disk, network) so that every busiest-table has rows. It is served in this process by
//! the query crate's router (`damselfly serve`'s: the metric API and the console) with the clock
//! fixed at the end of the data. Each page and range is loaded `--loads` times by
//! `tests/console/browser.py time` (Playwright driving headless Chromium, a fresh browser context
//! per load so nothing is cached: Navigation Timing's `loadEventEnd`, from navigation start to the
//! load event, stylesheet and icon included), whose p95 is held against the goal (under 1 s), and as
//! many times by a plain HTTP client (connect, request, the whole body read): the server's share
//! of a load. The server keeps the fleet page's per-file digests between loads, as a running
//! `damselfly serve` or a warm Lambda does: the first fleet load of a fresh server reads the
//! window's files (the `max` column), and the breakdown times that cold read on its own (a fresh
//! runtime) beside the kept one.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use damselfly_query::api::{self, Api};
use damselfly_query::console::{alarms, digest, fleet, view::View};
use damselfly_query::{LakeSql, lake_runtime};
use damselfly_schemas::Tags;
use indicatif::{MultiProgress, ProgressDrawTarget};
use tracing_subscriber::EnvFilter;

use crate::api::NOW_MS;
use crate::{http, sys};

/// The goal: each page loads in under 1 s, p95 over 20 loads in the browser.
const GOAL_P95_MS: f64 = 1000.0;

/// The ranges the console offers.
const RANGES: [&str; 4] = ["1h", "6h", "24h", "7d"];

/// Options of the console benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// VMs in the lake.
    #[arg(long, default_value_t = 10_000)]
    vms: usize,
    /// Days of one-minute rollups, ending at 2026-11-21T21:03Z. One day holds the 24h range; at
    /// 10,000 VMs and these families a day is 9 GiB on disk (a week would be about 60 GiB).
    #[arg(long, default_value_t = 1)]
    days: u32,
    /// Metric families generated (comma-separated, or `all`; must include cpu): the fleet page
    /// ranks VMs by cpu, memory, disk and network.
    #[arg(long, default_value = "cpu,memory,disk,network", value_delimiter = ',')]
    families: Vec<String>,
    /// Kafka partitions of the open hours' batch files (as `api --partitions`).
    #[arg(long, default_value_t = 12)]
    partitions: usize,
    /// Minutes per batch file in the open hours (as `api --batch-minutes`).
    #[arg(long, default_value_t = 1)]
    batch_minutes: u32,
    /// Closed hours written as compaction leaves them (as `api --direct`); `--direct false` writes
    /// batch files and compacts them, which takes hours at 10,000 VMs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    direct: bool,
    /// Threads generating the lake.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where generated lakes are cached (the `api` benchmark's directory, so both share lakes).
    #[arg(long, default_value = "bench/out/api")]
    out: PathBuf,
    /// The VM whose page is loaded, by its number in the fleet (`vm-00000`, ...) [default: the
    /// middle one].
    #[arg(long)]
    vm: Option<usize>,
    /// The ranges each page is loaded with.
    #[arg(long, default_value = "1h,24h", value_delimiter = ',')]
    ranges: Vec<String>,
    /// Loads of each page and range, in the browser and over plain HTTP.
    #[arg(long, default_value_t = 20)]
    loads: usize,
    /// Runs of the whole measurement against the same server, to show the spread.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// After the loads: each of the fleet page's queries run alone this many times per range (0:
    /// none), to show where its server time goes.
    #[arg(long, default_value_t = 5)]
    breakdown: usize,
    /// The browser driver: `PYTHON BROWSER time --url URL --loads N` prints
    /// `{"url", "loads_ms": [...], "console_errors": [...]}`.
    #[arg(long, default_value = "tests/console/browser.py")]
    browser: PathBuf,
    /// Python with Playwright (tests/run puts one in ~/.cache/damselfly/tools-venv).
    #[arg(long, env = "DAMSELFLY_PYTHON", default_value = "python3")]
    python: String,
}

/// One page of the console as the benchmark loads it.
#[derive(Debug, Clone)]
struct Page {
    /// `fleet` or `vm`, as its `<body data-page>` says.
    name: &'static str,
    range: String,
    /// Path and query.
    path: String,
}

/// One page's loads in one run.
#[derive(Debug)]
struct Measured {
    run: usize,
    page: Page,
    /// Browser load times, ms, sorted.
    browser_ms: Vec<f64>,
    /// The same page over plain HTTP, ms, sorted.
    http_ms: Vec<f64>,
    /// The page's HTML, bytes.
    html_bytes: usize,
    console_errors: Vec<String>,
}

/// p50, p95 and max of sorted, non-empty `ms`.
fn quantiles(ms: &[f64]) -> (f64, f64, f64) {
    (
        sys::nearest_rank(ms, 0.5),
        sys::nearest_rank(ms, 0.95),
        ms[ms.len() - 1],
    )
}

impl Measured {
    fn browser_p95(&self) -> f64 {
        quantiles(&self.browser_ms).1
    }

    fn meets(&self) -> bool {
        self.browser_p95() < GOAL_P95_MS
    }
}

/// Runs the benchmark and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let progress = init_logs();
    sys::warn_if_debug("console");
    ensure!(
        args.vms > 0 && args.days > 0 && args.loads > 0 && args.repeat > 0,
        "nothing to measure"
    );
    for r in &args.ranges {
        ensure!(
            RANGES.contains(&r.as_str()),
            "unknown range {r:?} (the console has {})",
            RANGES.join(", ")
        );
    }
    ensure!(
        args.browser.is_file(),
        "no browser driver at {} (see --browser)",
        args.browser.display()
    );
    let vm_index = args.vm.unwrap_or(args.vms / 2);
    ensure!(vm_index < args.vms, "--vm {vm_index} is not in the fleet");
    let load_before = sys::load_average();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let lake_args = crate::api::Args {
        vms: args.vms,
        days: args.days,
        families: args.families.clone(),
        partitions: args.partitions,
        batch_minutes: args.batch_minutes,
        direct: args.direct,
        requests: 0,
        warm_up: 0,
        seed: 0,
        threads: args.threads,
        duckdb_threads: 0,
        out: args.out.clone(),
        python: args.python.clone(),
    };
    ensure!(args.partitions > 0, "--partitions must be at least 1");
    tracing::info!(vms = args.vms, days = args.days, families = %args.families.join(","), "preparing the lake");
    let (lake, facts) = crate::api::lake(&lake_args, &rt)?;
    tracing::info!(%lake, reused = facts.reused, rows = facts.generated.rows, "lake ready");

    let vm = crate::api::fleet(args.vms).swap_remove(vm_index);
    let pages = pages(args, &vm);

    let rss_before_kib = sys::sample_self().map(|s| s.rss_kib).unwrap_or(0);
    let api = rt
        .block_on(Api::open(&lake, &Default::default()))?
        .with_clock(|| NOW_MS);
    let api = Arc::new(api);
    let served = http::InProcess::start(&rt, api.clone())?;
    let addr = served.addr;
    tracing::info!(%addr, "serving the lake (metric API and console), now = {}", api::metric::rfc3339(NOW_MS));

    let measured = measure(args, addr, &pages, &progress);
    let breakdown = match &measured {
        Ok(_) => rt.block_on(fleet_breakdown(args, &api, &lake)),
        Err(_) => Ok(Vec::new()),
    };
    served.stop(&rt)?;
    let (measured, breakdown) = (measured?, breakdown?);
    let rss_after_kib = sys::sample_self().map(|s| s.rss_kib).unwrap_or(0);
    let load_after = sys::load_average();

    print_setup(args, &facts, &vm);
    print_table(&measured);
    print_spread(args, &pages, &measured);
    print_breakdown(args, &breakdown);
    print_footer(
        &facts,
        rss_before_kib,
        rss_after_kib,
        &load_before,
        &load_after,
    );
    Ok(())
}

/// The fleet page and `vm`'s page, each at every range, the window ending at [`NOW_MS`].
fn pages(args: &Args, vm: &Tags) -> Vec<Page> {
    let mut out = Vec::new();
    for (name, base) in [
        ("fleet", "/".to_owned()),
        ("vm", format!("/vm/{}/{}/{}", vm.ns, vm.mcis, vm.vm)),
    ] {
        for range in &args.ranges {
            out.push(Page {
                name,
                range: range.clone(),
                path: format!("{base}?range={range}&end={NOW_MS}"),
            });
        }
    }
    out
}

/// Every run: each page loaded in the browser, then over plain HTTP.
fn measure(
    args: &Args,
    addr: SocketAddr,
    pages: &[Page],
    progress: &MultiProgress,
) -> anyhow::Result<Vec<Measured>> {
    let pb = progress.add(crate::api::bar(
        (args.repeat * pages.len()) as u64,
        "loading",
        "pages x ranges",
    ));
    let mut out = Vec::new();
    for run in 1..=args.repeat {
        for page in pages {
            let url = format!("http://{addr}{}", page.path);
            pb.set_prefix(format!("{} {}", page.name, page.range));
            let (browser_ms, console_errors) = browser_loads(args, &url)?;
            let (http_ms, html_bytes) = http_loads(args.loads, addr, page)?;
            let m = Measured {
                run,
                page: page.clone(),
                browser_ms,
                http_ms,
                html_bytes,
                console_errors,
            };
            let (b50, b95, _) = quantiles(&m.browser_ms);
            let (h50, h95, _) = quantiles(&m.http_ms);
            tracing::info!(
                run,
                page = m.page.name,
                range = %m.page.range,
                browser_p50_ms = format!("{b50:.0}"),
                browser_p95_ms = format!("{b95:.0}"),
                http_p50_ms = format!("{h50:.0}"),
                http_p95_ms = format!("{h95:.0}"),
                html_bytes,
                console_errors = m.console_errors.len(),
                "loaded"
            );
            out.push(m);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(out)
}

/// The fleet page's queries as the page runs them (`tokio::try_join!`), then each alone.
const FLEET_PARTS: [&str; 4] = [
    "page (all, joined)",
    "fleet digests, kept",
    "fleet digests, cold (fresh runtime)",
    "alarm states",
];

/// Per range, the p50 ms of [`FLEET_PARTS`] over `--breakdown` sequential runs each, in process
/// (no HTTP, no HTML for the parts), and the files and bytes of the digests one window keeps.
async fn fleet_breakdown(
    args: &Args,
    api: &Api,
    lake: &str,
) -> anyhow::Result<Vec<(String, Vec<f64>, (usize, usize))>> {
    let sql = api.sql().await;
    let mut out = Vec::new();
    for range in args.ranges.iter().filter(|_| args.breakdown > 0) {
        let query = [
            ("range".to_owned(), range.clone()),
            ("end".to_owned(), NOW_MS.to_string()),
        ];
        let view = View::parse(&query, NOW_MS, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut p50 = Vec::new();
        let mut kept = (0, 0);
        for (part, name) in FLEET_PARTS.iter().enumerate() {
            let mut ms = Vec::new();
            for _ in 0..args.breakdown {
                // Cold: a session in a runtime of its own, so no file's digest is kept yet.
                let fresh = match part {
                    2 => Some(LakeSql::open_in(lake, lake_runtime()?).await?),
                    _ => None,
                };
                let t = Instant::now();
                let done = match (part, &fresh) {
                    (0, _) => fleet::page(&sql, &view).await.map(drop),
                    (1, _) => digest::fleet(&sql, &view).await.map(drop),
                    (2, Some(fresh)) => digest::fleet(fresh, &view).await.map(drop),
                    _ => alarms::current_states(&sql, view.end_ms).await.map(drop),
                };
                done.map_err(|e| anyhow::anyhow!("fleet {name} ({range}): {e}"))?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                if let Some(fresh) = &fresh {
                    kept = fresh.digests().kept();
                }
            }
            ms.sort_by(f64::total_cmp);
            p50.push(sys::nearest_rank(&ms, 0.5));
        }
        tracing::info!(range = %range, ?p50, files = kept.0, bytes = kept.1, "fleet page queries timed");
        out.push((range.clone(), p50, kept));
    }
    Ok(out)
}

/// `--loads` loads of `url` by the browser driver: the load times (sorted) and console errors.
fn browser_loads(args: &Args, url: &str) -> anyhow::Result<(Vec<f64>, Vec<String>)> {
    let out = Command::new(&args.python)
        .arg(&args.browser)
        .args(["time", "--url", url, "--loads", &args.loads.to_string()])
        .output()
        .with_context(|| format!("running {} (needs playwright)", args.python))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            args.browser.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{} printed: {}",
            args.browser.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let mut ms: Vec<f64> = v["loads_ms"]
        .as_array()
        .context("no loads_ms")?
        .iter()
        .map(|x| x.as_f64().context("a load time is not a number"))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        ms.len() == args.loads,
        "{} loads asked, {} timed",
        args.loads,
        ms.len()
    );
    ms.sort_by(f64::total_cmp);
    let errors = v["console_errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok((ms, errors))
}

/// `loads` GETs of `page` over fresh connections: the times (sorted) and the HTML's size; each
/// answer must be the page asked for.
fn http_loads(loads: usize, addr: SocketAddr, page: &Page) -> anyhow::Result<(Vec<f64>, usize)> {
    let marker = format!("data-page=\"{}\"", page.name);
    let (mut ms, mut size) = (Vec::with_capacity(loads), 0);
    for _ in 0..loads {
        let t = Instant::now();
        let (status, body) = http::get(addr, &page.path, "text/html")?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        let html = String::from_utf8_lossy(&body);
        ensure!(
            status == 200 && html.contains(&marker),
            "{} answered {status} without {marker}: {}",
            page.path,
            html.chars().take(500).collect::<String>()
        );
        size = body.len();
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms, size))
}

/// Logs to stderr (`RUST_LOG` wins, else info) beside the progress bars, which also draw there.
pub(crate) fn init_logs() -> MultiProgress {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
}

/// Chromium's version line, if it answers.
fn chromium_version() -> String {
    Command::new("/usr/bin/chromium")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "chromium ?".into())
}

/// Prints what was loaded and from what lake.
fn print_setup(args: &Args, facts: &crate::api::LakeFacts, vm: &Tags) {
    println!(
        "\nconsole page loads: `damselfly serve`'s router in process on 127.0.0.1, now = end = {}; \
         browser = {} via {} ({} loads per page and range, each in a fresh context: navigation start to loadEventEnd); \
         HTTP = a fresh connection per request, the whole HTML read (the server's share); \
         {} run(s) against the same server",
        api::metric::rfc3339(NOW_MS),
        chromium_version(),
        args.browser.display(),
        args.loads,
        args.repeat
    );
    println!(
        "lake: {} VMs x {} day(s) x {} series ({}) = {} rollup_1m rows in {} files of {:.1} GiB; \
         {} ({} files written in {:.0} s, compaction {:.0} s); VM page: {}/{}/{}",
        args.vms,
        args.days,
        facts.series,
        facts.names.join(", "),
        facts.generated.rows,
        facts.files,
        facts.bytes as f64 / (1u64 << 30) as f64,
        if facts.reused { "cached" } else { "generated" },
        facts.generated.batch_files,
        facts.generated.write_secs,
        facts.generated.compact_secs,
        vm.ns,
        vm.mcis,
        vm.vm
    );
}

/// Prints one row per run, page and range.
fn print_table(measured: &[Measured]) {
    println!();
    println!(
        "| run | page | range | loads | browser p50 ms | browser p95 ms | browser max ms | HTTP p50 / p95 ms (server) | HTML KiB | console errors | goal | verdict |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for m in measured {
        let (b50, b95, bmax) = quantiles(&m.browser_ms);
        let (h50, h95, _) = quantiles(&m.http_ms);
        println!(
            "| {} | {} | {} | {} | {b50:.0} | {b95:.0} | {bmax:.0} | {h50:.0} / {h95:.0} | {:.1} | {} | p95 < {:.0} s | {} |",
            m.run,
            m.page.name,
            m.page.range,
            m.browser_ms.len(),
            m.html_bytes as f64 / 1024.0,
            m.console_errors.len(),
            GOAL_P95_MS / 1000.0,
            if m.meets() { "meets" } else { "MISSES" }
        );
    }
    for m in measured.iter().filter(|m| !m.console_errors.is_empty()) {
        println!(
            "console errors, run {} {} {}: {}",
            m.run,
            m.page.name,
            m.page.range,
            m.console_errors.join(" | ")
        );
    }
}

/// Prints, per page and range, the browser p95 of every run and the verdict over all of them.
fn print_spread(args: &Args, pages: &[Page], measured: &[Measured]) {
    println!();
    for page in pages {
        let runs: Vec<&Measured> = measured
            .iter()
            .filter(|m| m.page.path == page.path)
            .collect();
        let p95: Vec<f64> = runs.iter().map(|m| m.browser_p95()).collect();
        let http95: Vec<f64> = runs.iter().map(|m| quantiles(&m.http_ms).1).collect();
        let (lo, hi) = spread(&p95);
        let (hlo, hhi) = spread(&http95);
        println!(
            "{} {}: browser p95 {lo:.0}-{hi:.0} ms over {} run(s) (HTTP p95 {hlo:.0}-{hhi:.0} ms), goal under {GOAL_P95_MS:.0} ms: {}",
            page.name,
            page.range,
            args.repeat,
            if runs.iter().all(|m| m.meets()) {
                "meets"
            } else {
                "MISSES"
            }
        );
    }
}

/// Prints where the fleet page's server time goes.
fn print_breakdown(args: &Args, breakdown: &[(String, Vec<f64>, (usize, usize))]) {
    if breakdown.is_empty() {
        return;
    }
    println!(
        "\nfleet page, server side in process (p50 of {} sequential runs each, after the loads; the page reads the digests and the alarm states at once):",
        args.breakdown
    );
    println!();
    println!(
        "| range | {} | digests of the window (files / MiB) |",
        FLEET_PARTS.join(" ms | ") + " ms"
    );
    println!("|---|{}---:|", "---:|".repeat(FLEET_PARTS.len()));
    for (range, p50, (files, bytes)) in breakdown {
        let cells: Vec<String> = p50.iter().map(|x| format!("{x:.0}")).collect();
        println!(
            "| {range} | {} | {files} / {:.1} |",
            cells.join(" | "),
            *bytes as f64 / (1 << 20) as f64
        );
    }
}

/// Smallest and largest of non-empty `xs`.
pub(crate) fn spread(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Prints the serving process's memory and the load around the run.
fn print_footer(
    facts: &crate::api::LakeFacts,
    rss_before_kib: u64,
    rss_after_kib: u64,
    load_before: &str,
    load_after: &str,
) {
    println!(
        "\npeak RSS of this process (the server; the browser is another process) {:.0} MiB{} \
         (RSS {:.0} MiB before serving, {:.0} MiB after); load average {} before, {} after",
        sys::peak_rss_kib() as f64 / 1024.0,
        if facts.reused {
            ""
        } else {
            " (includes generating the lake)"
        },
        rss_before_kib as f64 / 1024.0,
        rss_after_kib as f64 / 1024.0,
        load_before,
        load_after
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_at_now_for_every_range() {
        let args = <Args as clap::FromArgMatches>::from_arg_matches(
            &<Args as clap::Args>::augment_args(clap::Command::new("console"))
                .get_matches_from(["console", "--ranges", "1h,24h"]),
        )
        .unwrap();
        let vm = crate::api::fleet(10_000).swap_remove(5_000);
        let paths: Vec<String> = pages(&args, &vm).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                format!("/?range=1h&end={NOW_MS}"),
                format!("/?range=24h&end={NOW_MS}"),
                format!("/vm/ns01/mcis-050/vm-05000?range=1h&end={NOW_MS}"),
                format!("/vm/ns01/mcis-050/vm-05000?range=24h&end={NOW_MS}"),
            ]
        );
    }
}
