//! PromQL evaluation with Prometheus 2.x's semantics over series already fetched: no I/O here.
//!
//! A query is evaluated in two passes. [`plan`] walks the parsed expression, refuses what is not
//! supported (a 422 naming it, before any data is read) and returns one [`Selection`] per
//! selector: its matchers and the time span every step of the query will look at. The caller
//! fetches those series, and [`evaluate`] computes the answer step by step, as Prometheus's
//! range evaluation does:
//! - an instant selector at `t` takes each series' newest sample in `[t - lookback, t]`;
//! - a range selector `[r]` at `t` takes the samples in `[t - r, t]` (both ends included, as in
//!   Prometheus 2.x);
//! - `offset o` moves both back by `o`, and `@ T` fixes the time at `T` for every step;
//! - a range query evaluates at `start, start + step, ... <= end`; series without points are left
//!   out of the matrix.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    VectorMatchCardinality, VectorSelector,
};

use super::functions;
use super::model::{Labels, METRIC_NAME, PromError, QueryValue, Sample, Series};

/// Prometheus's default lookback delta: how far back an instant selector looks for a sample.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Prometheus's limit on points per series in a range query.
pub const MAX_POINTS: i64 = 11_000;

/// When and how often a query is evaluated (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First evaluation time.
    pub start: i64,
    /// Last evaluation time (at most).
    pub end: i64,
    /// Time between evaluations; 0 for an instant query.
    pub step: i64,
    /// How far back an instant selector looks.
    pub lookback: i64,
}

impl Range {
    /// One evaluation at `t`.
    pub fn instant(t: i64) -> Self {
        Range {
            start: t,
            end: t,
            step: 0,
            lookback: LOOKBACK_MS,
        }
    }

    /// Evaluations every `step` from `start` to `end`, checked as Prometheus checks them.
    pub fn stepped(start: i64, end: i64, step: i64) -> Result<Self, PromError> {
        if end < start {
            return Err(PromError::BadData(
                "invalid parameter \"end\": end timestamp must not be before start time".into(),
            ));
        }
        if step <= 0 {
            return Err(PromError::BadData(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if (end - start) / step > MAX_POINTS {
            return Err(PromError::BadData(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
            ));
        }
        Ok(Range {
            start,
            end,
            step,
            lookback: LOOKBACK_MS,
        })
    }

    fn steps(&self) -> impl Iterator<Item = i64> + '_ {
        let step = self.step.max(1);
        (0..)
            .map(move |k| self.start + k * step)
            .take_while(move |t| *t <= self.end)
            .take(if self.step == 0 { 1 } else { usize::MAX })
    }
}

/// The series one selector needs: every sample of a series its matchers select in `[from, to]`.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The selector as written (for messages).
    pub text: String,
    /// Label matchers, the metric name's included; all must hold.
    pub matchers: Vec<Matcher>,
    /// First sample time needed (milliseconds, inclusive).
    pub from: i64,
    /// Last sample time needed (milliseconds, inclusive).
    pub to: i64,
}

/// Fetched series, one list per selection, in the order [`plan`] returned them.
pub type Fetched = Vec<Vec<Series>>;

/// The functions evaluated, by name; any other is refused with a 422 naming it.
pub const FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "resets",
    "changes",
    "deriv",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "abs",
    "ceil",
    "floor",
    "round",
    "sqrt",
    "exp",
    "ln",
    "log2",
    "log10",
    "clamp",
    "clamp_min",
    "clamp_max",
    "label_replace",
    "absent",
    "absent_over_time",
    "time",
    "vector",
    "scalar",
];

/// The aggregations evaluated; any other is refused with a 422 naming it.
pub const AGGREGATIONS: &[&str] = &[
    "sum", "avg", "min", "max", "count", "group", "topk", "bottomk", "quantile", "stddev", "stdvar",
];

fn ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn dur_ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

/// The time a selector reads at when the query evaluates at `t`: its `@` time (or `t`) minus its
/// offset.
fn ref_time(vs: &VectorSelector, t: i64, range: &Range) -> i64 {
    let at = match &vs.at {
        None => t,
        Some(AtModifier::Start) => range.start,
        Some(AtModifier::End) => range.end,
        Some(AtModifier::At(at)) => ms(*at),
    };
    at - offset_ms(&vs.offset)
}

/// The selector's matchers, with its metric name as a `__name__` matcher.
fn matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, PromError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(PromError::unsupported("`or` inside a selector's braces"));
    }
    let mut out = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name {
        out.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
    }
    Ok(out)
}

fn key(e: &VectorSelector) -> usize {
    e as *const VectorSelector as usize
}

/// Walks `expr`: refuses what is not evaluated and lists the series each selector needs over
/// `range`. The expression must not move between `plan` and [`evaluate`].
pub fn plan(expr: &Expr, range: &Range) -> Result<Vec<Selection>, PromError> {
    let mut out = Vec::new();
    walk(expr, range, &mut out)?;
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

fn select(
    vs: &VectorSelector,
    back: i64,
    text: String,
    range: &Range,
    out: &mut Vec<(usize, Selection)>,
) -> Result<(), PromError> {
    let first = ref_time(vs, range.start, range);
    let last = ref_time(vs, range.end, range);
    out.push((
        key(vs),
        Selection {
            text,
            matchers: matchers(vs)?,
            from: first.min(last) - back,
            to: first.max(last),
        },
    ));
    Ok(())
}

fn walk(expr: &Expr, range: &Range, out: &mut Vec<(usize, Selection)>) -> Result<(), PromError> {
    match expr {
        Expr::VectorSelector(vs) => select(vs, range.lookback, vs.to_string(), range, out),
        Expr::MatrixSelector(m) => select(&m.vs, dur_ms(&m.range), m.to_string(), range, out),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => walk(&p.expr, range, out),
        Expr::Unary(u) => walk(&u.expr, range, out),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier
                && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return Err(PromError::unsupported("fill() in vector matching"));
            }
            if b.op.to_string() == "atan2" {
                return Err(PromError::unsupported("the atan2 operator"));
            }
            walk(&b.lhs, range, out)?;
            walk(&b.rhs, range, out)
        }
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if !AGGREGATIONS.contains(&op.as_str()) {
                return Err(PromError::unsupported(format!("the aggregation {op}")));
            }
            if let Some(p) = &a.param {
                walk(p, range, out)?;
            }
            walk(&a.expr, range, out)
        }
        Expr::Call(c) => {
            if !FUNCTIONS.contains(&c.func.name) {
                return Err(PromError::unsupported(format!(
                    "the function {}()",
                    c.func.name
                )));
            }
            for a in &c.args.args {
                walk(a, range, out)?;
            }
            Ok(())
        }
        Expr::Subquery(_) => Err(PromError::unsupported("subqueries (`expr[range:step]`)")),
        Expr::Extension(_) => Err(PromError::unsupported("extension expressions")),
    }
}

/// A value while evaluating one step.
enum Val<'a> {
    Scalar(f64),
    Str(String),
    Vector(Vec<Sample>),
    /// Per series: its labels and the samples of the window.
    Matrix(Vec<Window<'a>>),
}

/// One series' samples inside a range selector's window at one step.
pub(crate) struct Window<'a> {
    pub labels: &'a Labels,
    pub points: &'a [(i64, f64)],
}

struct Evaluator<'a> {
    range: Range,
    data: HashMap<usize, &'a [Series]>,
}

/// Evaluates `expr` over `range` with the series fetched for [`plan`]'s selections.
pub fn evaluate(expr: &Expr, range: &Range, fetched: &Fetched) -> Result<QueryValue, PromError> {
    let mut keys = Vec::new();
    walk(expr, range, &mut keys)?;
    if keys.len() != fetched.len() {
        return Err(PromError::Internal(format!(
            "{} selections planned but {} fetched",
            keys.len(),
            fetched.len()
        )));
    }
    let data = keys
        .iter()
        .zip(fetched)
        .map(|((k, _), s)| (*k, s.as_slice()))
        .collect();
    let ev = Evaluator {
        range: *range,
        data,
    };
    if range.step == 0 {
        let t = range.start;
        return Ok(match ev.eval(expr, t)? {
            Val::Scalar(v) => QueryValue::Scalar(t, v),
            Val::Str(s) => QueryValue::String(t, s),
            Val::Vector(v) => QueryValue::Vector(t, v),
            Val::Matrix(m) => QueryValue::Matrix(
                m.into_iter()
                    .map(|w| Series {
                        labels: w.labels.clone(),
                        samples: w.points.to_vec(),
                    })
                    .collect(),
            ),
        });
    }
    if matches!(expr, Expr::MatrixSelector(_)) || matches!(expr, Expr::StringLiteral(_)) {
        let kind = if matches!(expr, Expr::StringLiteral(_)) {
            "string"
        } else {
            "range vector"
        };
        return Err(PromError::BadData(format!(
            "invalid expression type \"{kind}\" for range query, must be Scalar or instant Vector"
        )));
    }
    let mut series: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
    for t in range.steps() {
        match ev.eval(expr, t)? {
            Val::Scalar(v) => series.entry(Labels::empty()).or_default().push((t, v)),
            Val::Vector(v) => {
                for s in v {
                    series.entry(s.labels).or_default().push((t, s.value));
                }
            }
            Val::Str(_) | Val::Matrix(_) => {
                return Err(PromError::Internal(
                    "a step gave a non-instant value".into(),
                ));
            }
        }
    }
    let mut out: Vec<Series> = series
        .into_iter()
        .map(|(labels, samples)| Series { labels, samples })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(QueryValue::Matrix(out))
}

/// The samples of `s` in `[from, to]`.
fn window(s: &[(i64, f64)], from: i64, to: i64) -> &[(i64, f64)] {
    let lo = s.partition_point(|p| p.0 < from);
    let hi = s.partition_point(|p| p.0 <= to);
    &s[lo..hi.max(lo)]
}

fn duplicate_check(v: &[Sample]) -> Result<(), PromError> {
    if v.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    for s in v {
        if !seen.insert(&s.labels) {
            return Err(PromError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}

impl<'a> Evaluator<'a> {
    fn series(&self, vs: &VectorSelector) -> Result<&'a [Series], PromError> {
        self.data
            .get(&key(vs))
            .copied()
            .ok_or_else(|| PromError::Internal(format!("selector {vs} was not fetched")))
    }

    fn eval(&self, e: &Expr, t: i64) -> Result<Val<'a>, PromError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => Ok(match self.eval(&u.expr, t)? {
                Val::Scalar(v) => Val::Scalar(-v),
                Val::Vector(v) => Val::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: s.labels.without_name(),
                            value: -s.value,
                        })
                        .collect(),
                ),
                _ => {
                    return Err(PromError::BadData(
                        "unary minus needs a scalar or vector".into(),
                    ));
                }
            }),
            Expr::VectorSelector(vs) => {
                let at = ref_time(vs, t, &self.range);
                let from = at - self.range.lookback;
                let out = self
                    .series(vs)?
                    .iter()
                    .filter_map(|s| {
                        window(&s.samples, from, at).last().map(|p| Sample {
                            labels: s.labels.clone(),
                            value: p.1,
                        })
                    })
                    .collect();
                Ok(Val::Vector(out))
            }
            Expr::MatrixSelector(m) => Ok(Val::Matrix(self.matrix(m, t)?)),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Call(c) => self.call(c, t),
            Expr::Subquery(_) | Expr::Extension(_) => {
                Err(PromError::unsupported("this expression"))
            }
        }
    }

    fn matrix(&self, m: &MatrixSelector, t: i64) -> Result<Vec<Window<'a>>, PromError> {
        let at = ref_time(&m.vs, t, &self.range);
        let from = at - dur_ms(&m.range);
        Ok(self
            .series(&m.vs)?
            .iter()
            .filter_map(|s| {
                let points = window(&s.samples, from, at);
                (!points.is_empty()).then_some(Window {
                    labels: &s.labels,
                    points,
                })
            })
            .collect())
    }

    fn vector(&self, e: &Expr, t: i64) -> Result<Vec<Sample>, PromError> {
        match self.eval(e, t)? {
            Val::Vector(v) => Ok(v),
            _ => Err(PromError::BadData(format!(
                "expected an instant vector: {e}"
            ))),
        }
    }

    fn scalar(&self, e: &Expr, t: i64) -> Result<f64, PromError> {
        match self.eval(e, t)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(PromError::BadData(format!("expected a scalar: {e}"))),
        }
    }

    fn call(&self, c: &Call, t: i64) -> Result<Val<'a>, PromError> {
        let name = c.func.name;
        let args = &c.args.args;
        match name {
            "time" => return Ok(Val::Scalar(t as f64 / 1000.0)),
            "vector" => {
                return Ok(Val::Vector(vec![Sample {
                    labels: Labels::empty(),
                    value: self.scalar(&args[0], t)?,
                }]));
            }
            "scalar" => {
                let v = self.vector(&args[0], t)?;
                return Ok(Val::Scalar(if v.len() == 1 {
                    v[0].value
                } else {
                    f64::NAN
                }));
            }
            "absent" | "absent_over_time" => {
                let present = match self.eval(&args[0], t)? {
                    Val::Vector(v) => !v.is_empty(),
                    Val::Matrix(m) => !m.is_empty(),
                    _ => true,
                };
                if present {
                    return Ok(Val::Vector(Vec::new()));
                }
                return Ok(Val::Vector(vec![Sample {
                    labels: functions::absent_labels(&args[0]),
                    value: 1.0,
                }]));
            }
            "label_replace" => {
                let v = self.vector(&args[0], t)?;
                let strs: Vec<String> = args[1..]
                    .iter()
                    .map(|a| match self.eval(a, t) {
                        Ok(Val::Str(s)) => Ok(s),
                        _ => Err(PromError::BadData(
                            "label_replace needs string arguments".into(),
                        )),
                    })
                    .collect::<Result<_, _>>()?;
                let out = functions::label_replace(v, &strs[0], &strs[1], &strs[2], &strs[3])?;
                duplicate_check(&out)?;
                return Ok(Val::Vector(out));
            }
            _ => {}
        }
        // A function of a range vector: one output per series with samples in its window.
        if let Some(pos) = args
            .iter()
            .position(|a| matches!(**a, Expr::MatrixSelector(_)))
        {
            let Expr::MatrixSelector(m) = &*args[pos] else {
                unreachable!()
            };
            let param = match name {
                "quantile_over_time" => Some(self.scalar(&args[0], t)?),
                _ => None,
            };
            let at = ref_time(&m.vs, t, &self.range);
            let span = functions::Span {
                start: at - dur_ms(&m.range),
                end: at,
            };
            let mut out = Vec::new();
            for w in self.matrix(m, t)? {
                if let Some(value) = functions::over_range(name, w.points, span, param)? {
                    let labels = if name == "last_over_time" {
                        w.labels.clone()
                    } else {
                        w.labels.without_name()
                    };
                    out.push(Sample { labels, value });
                }
            }
            duplicate_check(&out)?;
            return Ok(Val::Vector(out));
        }
        // A function of an instant vector and scalar parameters.
        let v = self.vector(&args[0], t)?;
        let params: Vec<f64> = args[1..]
            .iter()
            .map(|a| self.scalar(a, t))
            .collect::<Result<_, _>>()?;
        if name == "clamp" && params[1] < params[0] {
            // Prometheus answers nothing when the bounds are crossed.
            return Ok(Val::Vector(Vec::new()));
        }
        let out: Vec<Sample> = v
            .into_iter()
            .map(|s| {
                Ok(Sample {
                    labels: s.labels.without_name(),
                    value: functions::instant(name, s.value, &params)?,
                })
            })
            .collect::<Result<_, PromError>>()?;
        duplicate_check(&out)?;
        Ok(Val::Vector(out))
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Val<'a>, PromError> {
        let op = a.op.to_string();
        let param = match &a.param {
            Some(p) => Some(self.scalar(p, t)?),
            None => None,
        };
        let input = self.vector(&a.expr, t)?;
        Ok(Val::Vector(functions::aggregate(
            &op,
            param,
            a.modifier.as_ref(),
            input,
        )?))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Val<'a>, PromError> {
        let op = b.op.to_string();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let (v, keep) = functions::binop(&op, l, r)?;
                if functions::is_comparison(&op) {
                    Ok(Val::Scalar(if keep { 1.0 } else { 0.0 }))
                } else {
                    Ok(Val::Scalar(v))
                }
            }
            (Val::Vector(v), Val::Scalar(s)) => Ok(Val::Vector(functions::vector_scalar(
                &op,
                v,
                s,
                false,
                return_bool,
            )?)),
            (Val::Scalar(s), Val::Vector(v)) => Ok(Val::Vector(functions::vector_scalar(
                &op,
                v,
                s,
                true,
                return_bool,
            )?)),
            (Val::Vector(l), Val::Vector(r)) => {
                let card = b
                    .modifier
                    .as_ref()
                    .map(|m| m.card.clone())
                    .unwrap_or(VectorMatchCardinality::OneToOne);
                let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
                let out = if functions::is_set(&op) {
                    functions::set_op(&op, l, r, matching.as_ref())
                } else {
                    functions::vector_vector(&op, l, r, &card, matching.as_ref(), return_bool)?
                };
                Ok(Val::Vector(out))
            }
            _ => Err(PromError::BadData(format!(
                "binary operator {op} needs scalars or instant vectors"
            ))),
        }
    }
}

/// The label names a `by`/`without`/`on`/`ignoring` clause lists.
pub(crate) fn modifier_labels(m: Option<&LabelModifier>) -> (bool, Vec<String>) {
    match m {
        None => (false, Vec::new()),
        Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
    }
}
