//! PromQL's functions, aggregations and operators on one step's values, as Prometheus 2.x computes them.

use std::collections::{HashMap, HashSet};

use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, LabelModifier, VectorMatchCardinality};

use super::eval::modifier_labels;
use super::model::{Labels, METRIC_NAME, PromError, Sample};

/// The time span a range selector covers at one step (milliseconds, both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// `t - range` (after `offset` and `@`).
    pub start: i64,
    /// `t` (after `offset` and `@`).
    pub end: i64,
}

/// Go's `math.Max`: NaN wins, then +Inf.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN wins, then -Inf.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// `rate`, `increase` and `delta`: the change over the window, extrapolated to its edges unless
/// a sample lies farther than 1.1 average intervals from an edge (Prometheus's
/// `extrapolatedRate`); counters add back what a reset lost and extrapolate no lower than zero.
pub fn extrapolated_rate(
    points: &[(i64, f64)],
    span: Span,
    counter: bool,
    rate: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut prev = 0.0;
        for p in points {
            if p.1 < prev {
                result += prev;
            }
            prev = p.1;
        }
    }
    let mut to_start = (first.0 - span.start) as f64 / 1000.0;
    let to_end = (span.end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average = sampled / (points.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average / 2.0
    };
    result *= interval / sampled;
    if rate {
        result /= (span.end - span.start) as f64 / 1000.0;
    }
    Some(result)
}

/// `irate` and `idelta`: from the last two samples only.
pub fn instant_value(points: &[(i64, f64)], rate: bool) -> Option<f64> {
    let n = points.len();
    if n < 2 {
        return None;
    }
    let (prev, last) = (points[n - 2], points[n - 1]);
    let mut result = if rate && last.1 < prev.1 {
        last.1
    } else {
        last.1 - prev.1
    };
    let sampled = last.0 - prev.0;
    if sampled == 0 {
        return None;
    }
    if rate {
        result /= sampled as f64 / 1000.0;
    }
    Some(result)
}

/// The least-squares slope (per second) of the samples, time measured from `origin`.
fn slope(points: &[(i64, f64)], origin: i64) -> f64 {
    let first = points[0].1;
    if points.iter().all(|p| p.1 == first) {
        return if first.is_infinite() { f64::NAN } else { 0.0 };
    }
    let n = points.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sx2) = (0.0, 0.0, 0.0, 0.0);
    for &(t, v) in points {
        let x = (t - origin) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sx2 += x * x;
    }
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    cov / var
}

/// The φ-quantile of `values` (Prometheus's `quantile`: linear between the nearest ranks; NaN
/// sorts first; φ < 0 is -Inf and φ > 1 is +Inf).
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Welford's running mean and sum of squared deviations.
fn variance(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut count, mut mean, mut aux) = (0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        aux += delta * (v - mean);
    }
    (aux, count)
}

/// A function of a range vector over one series' window; `None` when it gives no sample.
pub fn over_range(
    name: &str,
    points: &[(i64, f64)],
    span: Span,
    param: Option<f64>,
) -> Result<Option<f64>, PromError> {
    let values = || points.iter().map(|p| p.1);
    Ok(match name {
        "rate" => extrapolated_rate(points, span, true, true),
        "increase" => extrapolated_rate(points, span, true, false),
        "delta" => extrapolated_rate(points, span, false, false),
        "irate" => instant_value(points, true),
        "idelta" => instant_value(points, false),
        "resets" => Some(points.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
        "changes" => Some(
            points
                .windows(2)
                .filter(|w| !(w[1].1 == w[0].1 || (w[1].1.is_nan() && w[0].1.is_nan())))
                .count() as f64,
        ),
        "deriv" => (points.len() >= 2).then(|| slope(points, points[0].0)),
        "avg_over_time" => {
            let (mut mean, mut count) = (0.0f64, 0.0);
            for v in values() {
                count += 1.0;
                if mean.is_infinite() {
                    if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                mean += v / count - mean / count;
            }
            Some(mean)
        }
        "sum_over_time" => Some(values().sum()),
        "count_over_time" => Some(points.len() as f64),
        "last_over_time" => points.last().map(|p| p.1),
        "min_over_time" => {
            Some(values().fold(points[0].1, |m, v| if v < m || m.is_nan() { v } else { m }))
        }
        "max_over_time" => {
            Some(values().fold(points[0].1, |m, v| if v > m || m.is_nan() { v } else { m }))
        }
        "quantile_over_time" => {
            let mut v: Vec<f64> = values().collect();
            Some(quantile(param.unwrap_or(f64::NAN), &mut v))
        }
        "stddev_over_time" => {
            let (aux, count) = variance(values());
            Some((aux / count).sqrt())
        }
        "stdvar_over_time" => {
            let (aux, count) = variance(values());
            Some(aux / count)
        }
        "absent_over_time" => None,
        other => return Err(PromError::unsupported(format!("the function {other}()"))),
    })
}

/// A function of one instant-vector element and the scalar parameters after it.
pub fn instant(name: &str, v: f64, params: &[f64]) -> Result<f64, PromError> {
    Ok(match name {
        "abs" => v.abs(),
        "ceil" => v.ceil(),
        "floor" => v.floor(),
        "sqrt" => v.sqrt(),
        "exp" => v.exp(),
        "ln" => v.ln(),
        "log2" => v.log2(),
        "log10" => v.log10(),
        "round" => {
            let inverse = 1.0 / params.first().copied().unwrap_or(1.0);
            (v * inverse + 0.5).floor() / inverse
        }
        "clamp_min" => go_max(v, params[0]),
        "clamp_max" => go_min(v, params[0]),
        "clamp" => go_max(params[0], go_min(params[1], v)),
        other => return Err(PromError::unsupported(format!("the function {other}()"))),
    })
}

/// The labels `absent()` gives: the selector's equality matchers, a label matched twice left out.
pub fn absent_labels(arg: &Expr) -> Labels {
    let vs = match arg {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(m) => &m.vs,
        _ => return Labels::empty(),
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        out.retain(|(n, _)| *n != m.name);
        if matches!(m.op, MatchOp::Equal) && seen.insert(m.name.clone()) {
            out.push((m.name.clone(), m.value.clone()));
        }
    }
    Labels::new(out)
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `label_replace(v, dst, replacement, src, regex)`: where the anchored `regex` matches `src`'s
/// value, `dst` becomes the expanded `replacement` (removed when that is empty).
pub fn label_replace(
    v: Vec<Sample>,
    dst: &str,
    replacement: &str,
    src: &str,
    regex: &str,
) -> Result<Vec<Sample>, PromError> {
    let re = regex::Regex::new(&format!("^(?:{regex})$")).map_err(|_| {
        PromError::Execution(format!(
            "invalid regular expression in label_replace(): {regex}"
        ))
    })?;
    if !valid_label_name(dst) {
        return Err(PromError::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    Ok(v.into_iter()
        .map(|s| {
            let value = s.labels.get(src).to_owned();
            match re.captures(&value) {
                Some(caps) => {
                    let mut out = String::new();
                    caps.expand(replacement, &mut out);
                    Sample {
                        labels: s.labels.with(dst, &out),
                        value: s.value,
                    }
                }
                None => s,
            }
        })
        .collect())
}

/// Whether `op` is a comparison (`==`, `!=`, `>`, `<`, `>=`, `<=`).
pub fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// Whether `op` is a set operator (`and`, `or`, `unless`).
pub fn is_set(op: &str) -> bool {
    matches!(op, "and" | "or" | "unless")
}

/// `op` on two numbers: the value, and for a comparison whether it holds (the value is then the
/// left side's).
pub fn binop(op: &str, l: f64, r: f64) -> Result<(f64, bool), PromError> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => return Err(PromError::unsupported(format!("the operator {other}"))),
    })
}

/// A vector and a scalar (`swap` when the scalar is on the left): a comparison keeps the
/// elements for which it holds, with their own values, unless `bool` asks for 0/1.
pub fn vector_scalar(
    op: &str,
    v: Vec<Sample>,
    s: f64,
    swap: bool,
    return_bool: bool,
) -> Result<Vec<Sample>, PromError> {
    let comparison = is_comparison(op);
    let mut out = Vec::with_capacity(v.len());
    for mut e in v {
        let (l, r) = if swap { (s, e.value) } else { (e.value, s) };
        let (mut value, mut keep) = binop(op, l, r)?;
        if comparison && swap {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            e.value = value;
            if !comparison || return_bool {
                e.labels = e.labels.without_name();
            }
            out.push(e);
        }
    }
    Ok(out)
}

/// The labels two elements are matched on: `on(...)` lists them; otherwise all but
/// `ignoring(...)`'s and the metric name.
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    let (on, names) = modifier_labels(matching);
    if on {
        labels.retain(|n| names.iter().any(|m| m == n))
    } else {
        labels.retain(|n| n != METRIC_NAME && !names.iter().any(|m| m == n))
    }
}

/// `and`, `or` and `unless` between two vectors.
pub fn set_op(
    op: &str,
    l: Vec<Sample>,
    r: Vec<Sample>,
    matching: Option<&LabelModifier>,
) -> Vec<Sample> {
    let sigs = |v: &[Sample]| -> HashSet<Labels> {
        v.iter().map(|s| signature(&s.labels, matching)).collect()
    };
    match op {
        "and" => {
            let right = sigs(&r);
            l.into_iter()
                .filter(|s| right.contains(&signature(&s.labels, matching)))
                .collect()
        }
        "unless" => {
            let right = sigs(&r);
            l.into_iter()
                .filter(|s| !right.contains(&signature(&s.labels, matching)))
                .collect()
        }
        _ => {
            let left = sigs(&l);
            let mut out = l;
            out.extend(
                r.into_iter()
                    .filter(|s| !left.contains(&signature(&s.labels, matching))),
            );
            out
        }
    }
}

/// An arithmetic operator or comparison between two vectors, matched one-to-one or, with
/// `group_left`/`group_right`, many-to-one (Prometheus's `VectorBinop`).
pub fn vector_vector(
    op: &str,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    card: &VectorMatchCardinality,
    matching: Option<&LabelModifier>,
    return_bool: bool,
) -> Result<Vec<Sample>, PromError> {
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut ones: HashMap<Labels, &Sample> = HashMap::with_capacity(one.len());
    for s in &one {
        let sig = signature(&s.labels, matching);
        if let Some(dup) = ones.insert(sig.clone(), s) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(PromError::Execution(format!(
                "found duplicate series for the match group {sig} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                s.labels, dup.labels
            )));
        }
    }
    let include: &[String] = match card {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => &l.labels,
        _ => &[],
    };
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let (on, names) = modifier_labels(matching);
    let mut matched: HashMap<Labels, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for s in &many {
        let sig = signature(&s.labels, matching);
        let Some(o) = ones.get(&sig) else {
            continue;
        };
        let (vl, vr) = if one_to_many {
            (o.value, s.value)
        } else {
            (s.value, o.value)
        };
        let (mut value, keep) = binop(op, vl, vr)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut labels = s.labels.clone();
        if !is_comparison(op) {
            labels = labels.without_name();
        }
        if one_to_one {
            labels = if on {
                labels.retain(|n| names.iter().any(|m| m == n))
            } else {
                labels.retain(|n| !names.iter().any(|m| m == n))
            };
        }
        for name in include {
            labels = labels.with(name, o.labels.get(name));
        }
        if return_bool {
            labels = labels.without_name();
        }
        let seen = matched.entry(sig).or_default();
        if one_to_one {
            if !seen.is_empty() {
                return Err(PromError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                ));
            }
        } else if seen.contains(&labels) {
            return Err(PromError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            ));
        }
        seen.insert(labels.clone());
        out.push(Sample { labels, value });
    }
    Ok(out)
}

struct Group {
    labels: Labels,
    value: f64,
    mean: f64,
    count: f64,
    values: Vec<f64>,
    top: Vec<Sample>,
}

/// An aggregation over one step's vector, grouped `by`/`without` as Prometheus groups.
pub fn aggregate(
    op: &str,
    param: Option<f64>,
    modifier: Option<&LabelModifier>,
    input: Vec<Sample>,
) -> Result<Vec<Sample>, PromError> {
    let (by, names) = match modifier {
        None => (true, Vec::new()),
        m => modifier_labels(m),
    };
    let k = match op {
        "topk" | "bottomk" => {
            let k = param.unwrap_or(f64::NAN);
            let k = if k.is_nan() { 0 } else { k as i64 };
            if k < 1 {
                return Ok(Vec::new());
            }
            k as usize
        }
        _ => 0,
    };
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: HashMap<Labels, Group> = HashMap::new();
    for s in input {
        let key = if by {
            s.labels.retain(|n| names.iter().any(|m| m == n))
        } else {
            s.labels
                .retain(|n| n != METRIC_NAME && !names.iter().any(|m| m == n))
        };
        let v = s.value;
        let Some(g) = groups.get_mut(&key) else {
            order.push(key.clone());
            let g = Group {
                labels: key.clone(),
                value: if matches!(op, "stddev" | "stdvar") {
                    0.0
                } else {
                    v
                },
                mean: v,
                count: 1.0,
                values: if op == "quantile" {
                    vec![v]
                } else {
                    Vec::new()
                },
                top: if k > 0 { vec![s] } else { Vec::new() },
            };
            groups.insert(key, g);
            continue;
        };
        match op {
            "sum" => g.value += v,
            "avg" => {
                g.count += 1.0;
                if g.mean.is_infinite() {
                    if v.is_infinite() && (g.mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                g.mean += v / g.count - g.mean / g.count;
            }
            "count" | "group" => g.count += 1.0,
            "max" => {
                if g.value < v || g.value.is_nan() {
                    g.value = v;
                }
            }
            "min" => {
                if g.value > v || g.value.is_nan() {
                    g.value = v;
                }
            }
            "stddev" | "stdvar" => {
                g.count += 1.0;
                let delta = v - g.mean;
                g.mean += delta / g.count;
                g.value += delta * (v - g.mean);
            }
            "quantile" => g.values.push(v),
            "topk" | "bottomk" => {
                if g.top.len() < k {
                    g.top.push(s);
                    continue;
                }
                // The element a heap would hold at its root: the smallest (topk) or the
                // largest (bottomk) value, NaN before any number.
                let top = op == "topk";
                let worse = |a: f64, b: f64| {
                    if a.is_nan() {
                        !b.is_nan()
                    } else if b.is_nan() {
                        false
                    } else if top {
                        a < b
                    } else {
                        a > b
                    }
                };
                let mut root = 0;
                for (i, e) in g.top.iter().enumerate().skip(1) {
                    if worse(e.value, g.top[root].value) {
                        root = i;
                    }
                }
                let r = g.top[root].value;
                let replace = if top { r < v } else { r > v } || (r.is_nan() && !v.is_nan());
                if replace {
                    g.top[root] = s;
                }
            }
            other => return Err(PromError::unsupported(format!("the aggregation {other}"))),
        }
    }
    let mut out = Vec::new();
    for key in order {
        let mut g = groups.remove(&key).expect("every ordered group exists");
        let value = match op {
            "avg" => g.mean,
            "count" => g.count,
            "group" => 1.0,
            "stddev" => (g.value / g.count).sqrt(),
            "stdvar" => g.value / g.count,
            "quantile" => quantile(param.unwrap_or(f64::NAN), &mut g.values),
            "topk" | "bottomk" => {
                out.append(&mut g.top);
                continue;
            }
            _ => g.value,
        };
        out.push(Sample {
            labels: g.labels,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: i64, end: i64) -> Span {
        Span { start, end }
    }

    #[test]
    fn rate_extrapolates_to_the_window_edges_and_handles_resets() {
        // Samples every 10 s from 10 s to 50 s in a 60 s window: 5 s short of each edge is
        // within 1.1 intervals, so the 40 s of data extrapolate to 60 s.
        let p: Vec<(i64, f64)> = (1..=5).map(|i| (i * 10_000, i as f64 * 10.0)).collect();
        let inc = extrapolated_rate(&p, span(0, 60_000), true, false).unwrap();
        // The counter would reach zero 10 s before the first sample: start is cut there.
        assert!(
            (inc - 40.0 * (40.0 + 10.0 + 10.0) / 40.0).abs() < 1e-12,
            "{inc}"
        );
        let rate = extrapolated_rate(&p, span(0, 60_000), true, true).unwrap();
        assert!((rate - inc / 60.0).abs() < 1e-12);
        // A reset from 30 to 5 adds the 30 lost.
        let reset = [(0, 10.0), (10_000, 30.0), (20_000, 5.0), (30_000, 15.0)];
        let inc = extrapolated_rate(&reset, span(0, 30_000), true, false).unwrap();
        assert!((inc - 35.0).abs() < 1e-12, "{inc}");
        // delta does not treat a drop as a reset.
        let d = extrapolated_rate(&reset, span(0, 30_000), false, false).unwrap();
        assert!((d - 5.0).abs() < 1e-12, "{d}");
        assert_eq!(
            extrapolated_rate(&p[..1], span(0, 60_000), true, true),
            None
        );
    }

    #[test]
    fn irate_uses_the_last_two_samples() {
        let p = [(0, 1.0), (10_000, 5.0), (20_000, 25.0)];
        assert_eq!(instant_value(&p, true), Some(2.0));
        assert_eq!(instant_value(&p, false), Some(20.0));
        assert_eq!(instant_value(&[(0, 9.0), (10_000, 3.0)], true), Some(0.3));
    }

    #[test]
    fn quantile_interpolates_between_ranks() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(0.5, &mut v), 2.5);
        assert_eq!(quantile(0.0, &mut v), 1.0);
        assert_eq!(quantile(1.0, &mut v), 4.0);
        assert_eq!(quantile(1.5, &mut v), f64::INFINITY);
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn deriv_is_the_least_squares_slope() {
        let p = [(0, 1.0), (10_000, 3.0), (20_000, 5.0)];
        assert!((slope(&p, 0) - 0.2).abs() < 1e-12);
        assert_eq!(slope(&[(0, 2.0), (1000, 2.0)], 0), 0.0);
    }

    #[test]
    fn clamping_and_rounding_follow_go() {
        assert!(instant("clamp_min", f64::NAN, &[1.0]).unwrap().is_nan());
        assert_eq!(instant("clamp_max", 5.0, &[3.0]).unwrap(), 3.0);
        assert_eq!(instant("round", 2.5, &[]).unwrap(), 3.0);
        assert_eq!(instant("round", -2.5, &[]).unwrap(), -2.0);
        assert_eq!(instant("round", 7.3, &[5.0]).unwrap(), 5.0);
    }
}
