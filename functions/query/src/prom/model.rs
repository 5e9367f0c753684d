//! The PromQL data model: label sets, stored series, query results, and the errors Prometheus's API names.

use std::fmt;
use std::sync::Arc;

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// A series' identity: label pairs sorted by name, none with an empty value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<[(String, String)]>);

impl Labels {
    /// The label set of `pairs`, sorted by name; pairs with an empty value are left out (in
    /// PromQL an empty label is an absent one).
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut v: Vec<(String, String)> =
            pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        Labels(v.into())
    }

    /// The empty label set.
    pub fn empty() -> Self {
        Labels::default()
    }

    /// The value of `name`, or "" when the series has no such label.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .map(|i| self.0[i].1.as_str())
            .unwrap_or("")
    }

    /// The pairs, sorted by name.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The labels without the metric name (what functions and arithmetic return).
    pub fn without_name(&self) -> Self {
        if self.get(METRIC_NAME).is_empty() {
            return self.clone();
        }
        self.retain(|n| n != METRIC_NAME)
    }

    /// The labels whose names pass `keep`.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Self {
        Labels(self.0.iter().filter(|(n, _)| keep(n)).cloned().collect())
    }

    /// The labels with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut v: Vec<(String, String)> =
            self.0.iter().filter(|(n, _)| n != name).cloned().collect();
        if !value.is_empty() {
            v.push((name.to_owned(), value.to_owned()));
            v.sort();
        }
        Labels(v.into())
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// One stored series: its labels and its samples as (milliseconds, value), in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels, the metric name included.
    pub labels: Labels,
    /// Samples in increasing time order, one per timestamp.
    pub samples: Vec<(i64, f64)>,
}

/// One element of an instant vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The element's labels.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// What a query returns, in the shape of Prometheus's `resultType`.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    /// A number at an evaluation time (milliseconds).
    Scalar(i64, f64),
    /// A string at an evaluation time.
    String(i64, String),
    /// An instant vector at an evaluation time.
    Vector(i64, Vec<Sample>),
    /// Series of points: a range query's answer, or an instant query of a range selector.
    Matrix(Vec<Series>),
}

impl QueryValue {
    /// Prometheus's name of the result's type.
    pub fn result_type(&self) -> &'static str {
        match self {
            QueryValue::Scalar(..) => "scalar",
            QueryValue::String(..) => "string",
            QueryValue::Vector(..) => "vector",
            QueryValue::Matrix(_) => "matrix",
        }
    }
}

/// Why a query failed, by Prometheus's `errorType`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromError {
    /// The request is malformed: a parse error, a bad time or step (400 `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// The query is valid but cannot be evaluated: many-to-many matching, duplicate label sets,
    /// a construct Damselfly does not evaluate, a limit (422 `execution`).
    #[error("{0}")]
    Execution(String),
    /// The query ran past its time-out (503 `timeout`).
    #[error("{0}")]
    Timeout(String),
    /// The lake could not answer (500 `internal`).
    #[error("{0}")]
    Internal(String),
}

impl PromError {
    /// A construct Damselfly does not evaluate: a 422 that names it (never a wrong answer).
    pub fn unsupported(what: impl fmt::Display) -> Self {
        PromError::Execution(format!("unsupported in Damselfly's PromQL: {what}"))
    }

    /// Prometheus's `errorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            PromError::BadData(_) => "bad_data",
            PromError::Execution(_) => "execution",
            PromError::Timeout(_) => "timeout",
            PromError::Internal(_) => "internal",
        }
    }

    /// The HTTP status Prometheus answers with.
    pub fn status(&self) -> u16 {
        match self {
            PromError::BadData(_) => 400,
            PromError::Execution(_) => 422,
            PromError::Timeout(_) => 503,
            PromError::Internal(_) => 500,
        }
    }
}

/// Formats a sample value as Prometheus does (Go's `strconv.FormatFloat(v, 'f', -1, 64)`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())))
    }

    #[test]
    fn labels_sort_drop_empty_values_and_edit() {
        let a = l(&[("vm", "v1"), ("__name__", "cpu"), ("device", "")]);
        assert_eq!(a.pairs().len(), 2);
        assert_eq!(a.get("vm"), "v1");
        assert_eq!(a.get("device"), "");
        assert_eq!(a.without_name(), l(&[("vm", "v1")]));
        assert_eq!(a.with("vm", ""), l(&[("__name__", "cpu")]));
        assert_eq!(a.with("a", "x").pairs()[0].0, "__name__");
        assert_eq!(a.to_string(), r#"{__name__="cpu", vm="v1"}"#);
    }

    #[test]
    fn values_format_as_go_does() {
        assert_eq!(format_value(1.5), "1.5");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(-0.0), "-0");
    }
}
