//! A console view's state, read from and written back to the URL's query string: the time range,
//! its end, the refresh interval and the page's own parameters (so any view can be shared).

use chrono::DateTime;

use crate::api::ApiError;
use crate::api::params::Period;

/// The time ranges the picker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last hour, in one-minute windows.
    Hour,
    /// The last six hours, in one-minute windows.
    SixHours,
    /// The last day, in hourly windows.
    Day,
    /// The last week, in hourly windows.
    Week,
}

impl Range {
    /// Every range, shortest first.
    pub const ALL: [Range; 4] = [Range::Hour, Range::SixHours, Range::Day, Range::Week];

    /// The name in the URL (`1h`, `6h`, `24h`, `7d`).
    pub fn name(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::SixHours => "6h",
            Range::Day => "24h",
            Range::Week => "7d",
        }
    }

    /// The span in milliseconds.
    pub fn millis(self) -> i64 {
        const HOUR: i64 = 3_600_000;
        match self {
            Range::Hour => HOUR,
            Range::SixHours => 6 * HOUR,
            Range::Day => 24 * HOUR,
            Range::Week => 7 * 24 * HOUR,
        }
    }

    /// The window of the charts: minutes up to 6 h, hours beyond (the metric API's `m` / `h`).
    pub fn period(self) -> Period {
        match self {
            Range::Hour | Range::SixHours => Period::Minute,
            Range::Day | Range::Week => Period::Hour,
        }
    }

    /// The width of a heat-map column: 60 columns up to 6 h, whole hours beyond.
    pub fn bucket_ms(self) -> i64 {
        match self {
            Range::Hour => 60_000,
            Range::SixHours => 360_000,
            Range::Day => 3_600_000,
            Range::Week => 4 * 3_600_000,
        }
    }
}

/// Refresh intervals the picker offers, in seconds (0: off).
pub const REFRESH_CHOICES: [u32; 4] = [0, 30, 60, 300];

/// Longest accepted query-string parameter value.
const MAX_VALUE_LEN: usize = 256;

/// What a page shows: a window `[from, end)` and how often it reloads, plus its own parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The range picked.
    pub range: Range,
    /// The window's end, in milliseconds.
    pub end_ms: i64,
    /// Whether `end` came from the URL (a fixed window) rather than the clock (a live one).
    pub end_fixed: bool,
    /// Seconds between reloads; 0 never.
    pub refresh: u32,
    /// The page's other parameters, in URL order, kept in every link.
    pub extra: Vec<(String, String)>,
    /// The console's root relative to the page (`./`, `../`, ...): links are relative, so the
    /// console works under any prefix (an API Gateway stage, a proxy's path).
    pub root: &'static str,
}

impl View {
    /// Reads `range`, `end` and `refresh` from the query string, keeping the other parameters
    /// listed in `keep`; `now_ms` is the end when none is given.
    pub fn parse(query: &[(String, String)], now_ms: i64, keep: &[&str]) -> Result<Self, ApiError> {
        let mut view = View {
            range: Range::Hour,
            end_ms: now_ms,
            end_fixed: false,
            refresh: 0,
            extra: Vec::new(),
            root: "./",
        };
        for (k, v) in query {
            if v.len() > MAX_VALUE_LEN {
                return Err(ApiError::bad(
                    "query",
                    format!("{k} is longer than {MAX_VALUE_LEN} bytes"),
                ));
            }
            match k.as_str() {
                "range" => {
                    view.range =
                        Range::ALL
                            .into_iter()
                            .find(|r| r.name() == v)
                            .ok_or_else(|| {
                                ApiError::bad("range", format!("{v:?}: use one of 1h, 6h, 24h, 7d"))
                            })?;
                }
                "end" => {
                    view.end_ms = parse_end(v)?;
                    view.end_fixed = true;
                }
                "refresh" => {
                    view.refresh = v
                        .parse()
                        .ok()
                        .filter(|s| REFRESH_CHOICES.contains(s))
                        .ok_or_else(|| {
                            ApiError::bad(
                                "refresh",
                                format!("{v:?}: use one of 0, 30, 60, 300 (seconds)"),
                            )
                        })?;
                }
                k if keep.contains(&k) => view.extra.push((k.to_owned(), v.clone())),
                _ => {}
            }
        }
        Ok(view)
    }

    /// The window's start: `end - range`, floored to the range's period (as the metric API does).
    pub fn from_ms(&self) -> i64 {
        self.range.period().floor(self.end_ms - self.range.millis())
    }

    /// The value of one of the page's own parameters.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The same view seen from a page `depth` path segments below the console's root.
    pub fn at_depth(mut self, depth: usize) -> Self {
        self.root = root_at(depth);
        self
    }

    /// The link to the console's page `page` (`""` for the fleet, `vms`, `vm/ns/mcis/vm`, ...)
    /// with this view's state and `changes` (see [`View::query`]).
    pub fn href(&self, page: &str, changes: &[(&str, &str)]) -> String {
        format!("{}{page}{}", self.root, self.query(changes))
    }

    /// The query string (with its `?`) of this view with `changes` applied: `range`, `refresh`
    /// and `end` are kept unless changed (a live view stays live), the page's own parameters too.
    pub fn query(&self, changes: &[(&str, &str)]) -> String {
        let changed = |k: &str| changes.iter().find(|(c, _)| *c == k).map(|(_, v)| *v);
        let mut pairs: Vec<(String, String)> = Vec::new();
        pairs.push((
            "range".into(),
            changed("range").unwrap_or(self.range.name()).into(),
        ));
        if let Some(end) = changed("end") {
            pairs.push(("end".into(), end.into()));
        } else if self.end_fixed {
            pairs.push(("end".into(), self.end_ms.to_string()));
        }
        let refresh = self.refresh.to_string();
        let refresh = changed("refresh").unwrap_or(&refresh);
        if refresh != "0" {
            pairs.push(("refresh".into(), refresh.into()));
        }
        for (k, v) in &self.extra {
            if changed(k).is_none() {
                pairs.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in changes {
            if !matches!(*k, "range" | "end" | "refresh") && !v.is_empty() {
                pairs.push(((*k).into(), (*v).into()));
            }
        }
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        format!("?{}", encoded.join("&"))
    }
}

/// The console's root seen from a page `depth` path segments below it (`./`, `../`, ...).
pub fn root_at(depth: usize) -> &'static str {
    const UP: [&str; 4] = ["./", "../", "../../", "../../../"];
    UP[depth.min(UP.len() - 1)]
}

/// `end` as RFC 3339 or epoch milliseconds.
fn parse_end(v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::bad(
                "end",
                format!("{v:?}: use RFC 3339 (2026-11-21T21:03:00Z) or epoch milliseconds"),
            )
        })
}

/// Percent-encodes a query-string component (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn a_view_round_trips_through_its_query_string() {
        let v = View::parse(
            &q(&[
                ("range", "6h"),
                ("end", "2026-11-21T21:03:00Z"),
                ("refresh", "60"),
                ("csp", "a b"),
                ("other", "x"),
            ]),
            0,
            &["csp"],
        )
        .unwrap();
        assert_eq!(v.range, Range::SixHours);
        assert_eq!(v.end_ms, 1_795_294_980_000);
        assert!(v.end_fixed);
        assert_eq!(v.from_ms(), 1_795_294_980_000 - 6 * 3_600_000);
        assert_eq!(
            v.query(&[("range", "24h")]),
            "?range=24h&end=1795294980000&refresh=60&csp=a%20b"
        );
        assert_eq!(
            v.query(&[("csp", "gcp"), ("page", "2")]),
            "?range=6h&end=1795294980000&refresh=60&csp=gcp&page=2"
        );
    }

    #[test]
    fn a_live_view_stays_live_and_hourly_ranges_start_on_the_hour() {
        let v = View::parse(&q(&[("range", "24h")]), 1_795_294_980_000, &[]).unwrap();
        assert!(!v.end_fixed);
        assert_eq!(v.query(&[]), "?range=24h");
        assert_eq!(v.from_ms() % 3_600_000, 0);
        assert!(v.from_ms() <= v.end_ms - 24 * 3_600_000);
    }

    #[test]
    fn bad_values_name_the_parameter_and_the_fix() {
        for (k, v, want) in [
            ("range", "2h", "range: \"2h\": use one of 1h, 6h, 24h, 7d"),
            (
                "refresh",
                "5",
                "refresh: \"5\": use one of 0, 30, 60, 300 (seconds)",
            ),
            ("end", "yesterday", "end: \"yesterday\": use RFC 3339"),
        ] {
            let e = View::parse(&q(&[(k, v)]), 0, &[]).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().starts_with(want), "{e}");
        }
        let long = "x".repeat(300);
        assert_eq!(
            View::parse(&q(&[("csp", &long)]), 0, &["csp"])
                .unwrap_err()
                .status(),
            400
        );
    }
}
