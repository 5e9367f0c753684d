//! `damselfly metric get`: one VM's metric family per window, as CB-Dragonfly's `cbmon get metric`,
//! answered from the lake by the same code as the metric API.

use damselfly_query::LakeSql;
use damselfly_query::api::{MetricRequest, metric_info};
use serde_json::Value;

use crate::cli::MetricGetArgs;

pub async fn get(args: MetricGetArgs) -> anyhow::Result<()> {
    let mut query = vec![
        ("periodType".to_owned(), args.period),
        ("statisticsCriteria".to_owned(), args.stat),
        ("duration".to_owned(), args.duration),
    ];
    if let Some(d) = args.device {
        query.push(("device".to_owned(), d));
    }
    let req = MetricRequest::parse(&args.ns, &args.mcis, &args.vm, &args.metric, &query)?;
    let sql = LakeSql::open(&args.lake).await?;
    let info = metric_info(&sql, &req, super::now_ms()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
        return Ok(());
    }
    let mut headers = vec!["time".to_owned()];
    if req.family.per_device() {
        headers.push("device".to_owned());
    }
    headers.extend(req.family.fields().iter().map(|f| f.label.to_owned()));
    let rows: Vec<Vec<String>> = info
        .values
        .iter()
        .map(|v| headers.iter().map(|h| cell(v.get(h))).collect())
        .collect();
    let tags: Vec<String> = info.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{} ({} per {}) {}",
        info.name,
        req.statistic.name(),
        req.period.trunc_unit(),
        tags.join(" ")
    );
    print!("{}", table(&headers, &rows));
    Ok(())
}

/// A value as a table cell: numbers with at most 3 decimals, `-` for null.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            Some(f) => {
                let s = format!("{f:.3}");
                s.trim_end_matches('0').trim_end_matches('.').to_owned()
            }
            None => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// Columns aligned with two spaces between them, a header row first.
pub fn table<H: AsRef<str>>(headers: &[H], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.as_ref().len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.iter().map(AsRef::as_ref).collect());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
