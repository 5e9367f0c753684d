//! Charts drawn on the server as inline SVG (no script, nothing fetched): a min-max band with the
//! average as a line, a heat map, and bars. Each scales to its box's width (`viewBox`).

use maud::{Markup, html};

use super::layout::{number_text, time_text};

/// Drawing width and height, in SVG user units.
const W: f64 = 600.0;
const H: f64 = 150.0;
/// Left margin for the value labels, bottom margin for the time labels.
const LEFT: f64 = 52.0;
const BOTTOM: f64 = 18.0;

/// One window of a series: start (ms), min, avg, max.
pub type Point = (i64, f64, f64, f64);

fn x_of(t: i64, from: i64, to: i64) -> f64 {
    let span = (to - from).max(1) as f64;
    LEFT + (t - from) as f64 / span * (W - LEFT)
}

/// The value range drawn: the data's, widened so that a flat line sits mid-height.
fn y_range(lo: f64, hi: f64) -> (f64, f64) {
    if (hi - lo).abs() < f64::EPSILON * hi.abs().max(1.0) {
        (
            lo - 1.0_f64.max(lo.abs() * 0.1),
            hi + 1.0_f64.max(hi.abs() * 0.1),
        )
    } else {
        (lo, hi)
    }
}

fn axes(from: i64, to: i64, lo: f64, hi: f64) -> Markup {
    html! {
        line.axis x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) {}
        text.label x=(LEFT - 4.0) y="10" text-anchor="end" { (number_text(hi)) }
        text.label x=(LEFT - 4.0) y=(H - BOTTOM) text-anchor="end" { (number_text(lo)) }
        text.label x=(LEFT) y=(H - 4.0) { (time_text(from)) }
        text.label x=(W) y=(H - 4.0) text-anchor="end" { (time_text(to)) }
    }
}

/// Runs of points without a gap longer than `gap_ms` between neighbours.
fn runs(points: &[Point], gap_ms: i64) -> Vec<&[Point]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || points[i].0 - points[i - 1].0 > gap_ms {
            out.push(&points[start..i]);
            start = i;
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// A min-max band with the average line over `[from, to)`; windows `period_ms` apart, a missing
/// window breaks the line.
pub fn band(label: &str, points: &[Point], from: i64, to: i64, period_ms: i64) -> Markup {
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.3).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if points.is_empty() {
        (0.0, 1.0)
    } else {
        y_range(lo, hi)
    };
    let y = |v: f64| (H - BOTTOM) - (v - lo) / (hi - lo) * (H - BOTTOM - 6.0);
    let at = |t: i64| x_of(t, from, to);
    html! {
        svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(label) {
            (axes(from, to, lo, hi))
            @for run in runs(points, period_ms * 3 / 2) {
                @if run.len() == 1 {
                    line.band x1=(fmt(at(run[0].0))) y1=(fmt(y(run[0].1))) x2=(fmt(at(run[0].0))) y2=(fmt(y(run[0].3))) {}
                    circle.avg cx=(fmt(at(run[0].0))) cy=(fmt(y(run[0].2))) r="2" {}
                } @else {
                    polygon.band points={
                        @for p in run { (fmt(at(p.0))) "," (fmt(y(p.3))) " " }
                        @for p in run.iter().rev() { (fmt(at(p.0))) "," (fmt(y(p.1))) " " }
                    } {}
                    polyline.avg points={ @for p in run { (fmt(at(p.0))) "," (fmt(y(p.2))) " " } } {}
                }
            }
        }
    }
}

/// One heat-map cell: column start (ms), row (0 at the bottom), count.
pub type Cell = (i64, usize, u64);

/// A heat map of `rows` rows (labelled by `row_label`) over columns `bucket_ms` wide in
/// `[from, to)`; darker is more.
pub fn heatmap(
    label: &str,
    cells: &[Cell],
    rows: usize,
    row_label: impl Fn(usize) -> String,
    from: i64,
    to: i64,
    bucket_ms: i64,
) -> Markup {
    let most = cells.iter().map(|c| c.2).max().unwrap_or(1).max(1);
    let row_h = (H - BOTTOM) / rows as f64;
    let col_w = (x_of(from + bucket_ms, from, to) - LEFT).max(0.5);
    html! {
        svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(label) {
            line.axis x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) {}
            @for r in (0..rows).step_by(rows.div_ceil(5).max(1)) {
                text.label x=(LEFT - 4.0) y=(fmt(H - BOTTOM - r as f64 * row_h - 2.0)) text-anchor="end" { (row_label(r)) }
            }
            text.label x=(LEFT) y=(H - 4.0) { (time_text(from)) }
            text.label x=(W) y=(H - 4.0) text-anchor="end" { (time_text(to)) }
            @for (t, r, n) in cells {
                rect x=(fmt(x_of(*t, from, to))) y=(fmt(H - BOTTOM - (*r as f64 + 1.0) * row_h))
                     width=(fmt(col_w)) height=(fmt(row_h)) fill=(shade(*n, most)) {
                    title { (time_text(*t)) ", " (row_label(*r)) ": " (n) }
                }
            }
        }
    }
}

/// Bars of counts per column `bucket_ms` wide in `[from, to)`.
pub fn bars(label: &str, counts: &[(i64, u64)], from: i64, to: i64, bucket_ms: i64) -> Markup {
    let most = counts.iter().map(|c| c.1).max().unwrap_or(1).max(1);
    let col_w = (x_of(from + bucket_ms, from, to) - LEFT).max(0.5);
    html! {
        svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(label) {
            (axes(from, to, 0.0, most as f64))
            @for (t, n) in counts {
                @let h = *n as f64 / most as f64 * (H - BOTTOM - 6.0);
                rect.bar x=(fmt(x_of(*t, from, to))) y=(fmt(H - BOTTOM - h)) width=(fmt(col_w * 0.9)) height=(fmt(h)) {
                    title { (time_text(*t)) ": " (n) }
                }
            }
        }
    }
}

/// A blue from pale (few) to dark (`most`).
fn shade(n: u64, most: u64) -> String {
    let f = n as f64 / most as f64;
    let mix = |pale: f64, dark: f64| (pale + (dark - pale) * f).round() as u8;
    format!(
        "rgb({},{},{})",
        mix(222.0, 8.0),
        mix(235.0, 48.0),
        mix(247.0, 107.0)
    )
}

/// A coordinate with one decimal, enough at this size and a third of the bytes.
fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_window_breaks_the_line_and_a_lone_window_is_a_dot() {
        let p = |t: i64| (t * 60_000, 1.0, 2.0, 3.0);
        let points = [p(0), p(1), p(2), p(5), p(7), p(8)];
        let r = runs(&points, 90_000);
        assert_eq!(r.iter().map(|r| r.len()).collect::<Vec<_>>(), [3, 1, 2]);
        let svg = band("cpu", &points, 0, 10 * 60_000, 60_000).into_string();
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn a_flat_series_and_no_data_still_draw() {
        let svg = band(
            "x",
            &[(0, 5.0, 5.0, 5.0), (60_000, 5.0, 5.0, 5.0)],
            0,
            120_000,
            60_000,
        )
        .into_string();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(!band("x", &[], 0, 1, 1).into_string().contains("NaN"));
    }

    #[test]
    fn the_densest_cell_is_the_darkest() {
        assert_eq!(shade(10, 10), "rgb(8,48,107)");
        assert_eq!(shade(0, 10), "rgb(222,235,247)");
        let svg = heatmap(
            "h",
            &[(0, 0, 1), (60_000, 9, 10)],
            10,
            |r| format!("{}%", r * 10),
            0,
            120_000,
            60_000,
        )
        .into_string();
        assert_eq!(svg.matches("<rect").count(), 2);
    }
}
