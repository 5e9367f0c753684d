//! The metric API's query parameters (`periodType`, `statisticsCriteria`, `duration`, `device`), parsed and checked.

use super::ApiError;
use super::families::MetricFamily;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The width of the windows an answer is given in (`periodType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// One minute (`m`).
    Minute,
    /// One hour (`h`).
    Hour,
    /// One day, UTC (`d`).
    Day,
}

impl Period {
    /// Parses CB-Dragonfly's `periodType` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "m" => Some(Period::Minute),
            "h" => Some(Period::Hour),
            "d" => Some(Period::Day),
            _ => None,
        }
    }

    /// The `periodType` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "m",
            Period::Hour => "h",
            Period::Day => "d",
        }
    }

    /// The longest `duration` answered with this period: each bounds the windows (and the lake
    /// files) one request reads, so no request scans the whole history. Longer spans take the
    /// coarser period.
    pub fn max_duration_ms(self) -> i64 {
        match self {
            Period::Minute => 3 * DAY_MS,
            Period::Hour => 92 * DAY_MS,
            Period::Day => 5 * 366 * DAY_MS,
        }
    }

    /// Window length in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Period::Minute => MINUTE_MS,
            Period::Hour => HOUR_MS,
            Period::Day => DAY_MS,
        }
    }

    /// The unit `date_trunc` takes for this period.
    pub fn trunc_unit(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    /// The start of the window `ts_ms` falls in.
    pub fn floor(self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.millis()) * self.millis()
    }
}

/// How the samples of a window are summarised (`statisticsCriteria`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// Smallest sample.
    Min,
    /// Largest sample.
    Max,
    /// Mean of the samples.
    Avg,
    /// The latest sample.
    Last,
}

impl Statistic {
    /// Parses CB-Dragonfly's `statisticsCriteria` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "min" => Some(Statistic::Min),
            "max" => Some(Statistic::Max),
            "avg" => Some(Statistic::Avg),
            "last" => Some(Statistic::Last),
            _ => None,
        }
    }

    /// The `statisticsCriteria` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Min => "min",
            Statistic::Max => "max",
            Statistic::Avg => "avg",
            Statistic::Last => "last",
        }
    }

    /// The SQL aggregate that merges rollup partials into this statistic.
    pub fn merge_sql(self) -> &'static str {
        match self {
            Statistic::Min => r#"min("min")"#,
            Statistic::Max => r#"max("max")"#,
            Statistic::Avg => r#"sum("sum") / sum("count")"#,
            // Partial::merge keeps the larger (last_ts, last) on ties; so does this.
            Statistic::Last => r#"last_value("last" ORDER BY last_ts ASC, "last" ASC)"#,
        }
    }
}

/// Most digits in one number of a duration.
pub const MAX_DURATION_DIGITS: usize = 9;
/// Most `<integer><unit>` terms in a duration.
pub const MAX_DURATION_TERMS: usize = 4;

/// Parses a duration as CB-Dragonfly (InfluxQL) writes it: one to four `<integer><unit>` terms
/// with unit `s`, `m`, `h`, `d` or `w` (`5m`, `24h`, `1h30m`, `7d`) and at most 9 digits per
/// number (the OpenAPI pattern `^([0-9]{1,9}[smhdw]){1,4}$`); the result is in milliseconds.
/// `0m` is allowed: the window holding now.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    const HINT: &str = "use e.g. 5m, 1h30m, 7d";
    if s.is_empty() {
        return Err(format!("empty; {HINT}"));
    }
    let (mut total, mut terms) = (0_i64, 0_usize);
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            if digits.len() > MAX_DURATION_DIGITS {
                return Err(format!(
                    "a number longer than {MAX_DURATION_DIGITS} digits; {HINT}"
                ));
            }
            continue;
        }
        let unit = match c {
            's' => 1_000,
            'm' => MINUTE_MS,
            'h' => HOUR_MS,
            'd' => DAY_MS,
            'w' => 7 * DAY_MS,
            _ => return Err(format!("unexpected {c:?}; {HINT}")),
        };
        if digits.is_empty() {
            return Err(format!("{c:?} without a number before it; {HINT}"));
        }
        terms += 1;
        if terms > MAX_DURATION_TERMS {
            return Err(format!("more than {MAX_DURATION_TERMS} terms; {HINT}"));
        }
        // At most 4 terms of 999999999 weeks: no overflow.
        total += digits.parse::<i64>().expect("9 digits fit") * unit;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("a number without a unit; {HINT}"));
    }
    Ok(total)
}

/// One metric request: which VM, which family, and how to summarise it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRequest {
    /// Namespace.
    pub ns: String,
    /// MCIS (VM group).
    pub mcis: String,
    /// VM id.
    pub vm: String,
    /// Metric family.
    pub family: MetricFamily,
    /// Window width.
    pub period: Period,
    /// Statistic per window.
    pub statistic: Statistic,
    /// How far back from now, in milliseconds (0: the window holding now).
    pub duration_ms: i64,
    /// Only this device (mount point, block device, interface), for per-device families.
    pub device: Option<String>,
}

/// Longest ns, mcis, vm or device value accepted, in characters.
pub const MAX_ID_LEN: usize = 255;

fn check_id(name: &'static str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.chars().count() > MAX_ID_LEN {
        return Err(ApiError::bad(
            name,
            format!("must be 1 to {MAX_ID_LEN} characters long"),
        ));
    }
    Ok(())
}

impl MetricRequest {
    /// Builds a request from the path segments and the query string's pairs; a bad value is a
    /// 400 naming the parameter. Defaults: `periodType=m`, `statisticsCriteria=avg`, `duration=5m`.
    pub fn parse(
        ns: &str,
        mcis: &str,
        vm: &str,
        metric: &str,
        query: &[(String, String)],
    ) -> Result<Self, ApiError> {
        check_id("ns", ns)?;
        check_id("mcis", mcis)?;
        check_id("vm", vm)?;
        let family = MetricFamily::parse(metric).ok_or_else(|| {
            ApiError::bad(
                "metric",
                format!(
                    "unknown metric family {metric:?}; one of {}",
                    MetricFamily::names().join(", ")
                ),
            )
        })?;
        let get = |name: &str| {
            query
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let period = match get("periodType") {
            None => Period::Minute,
            Some(v) => Period::parse(v).ok_or_else(|| {
                ApiError::bad("periodType", format!("{v:?} is not one of m, h, d"))
            })?,
        };
        let statistic = match get("statisticsCriteria") {
            None => Statistic::Avg,
            Some(v) => Statistic::parse(v).ok_or_else(|| {
                ApiError::bad(
                    "statisticsCriteria",
                    format!("{v:?} is not one of min, max, avg, last"),
                )
            })?,
        };
        let duration_ms = match get("duration") {
            None => 5 * MINUTE_MS,
            Some(v) => parse_duration(v).map_err(|why| ApiError::bad("duration", why))?,
        };
        if duration_ms > period.max_duration_ms() {
            let days = period.max_duration_ms() / DAY_MS;
            let coarser = match period {
                Period::Minute => "; use periodType=h for longer spans",
                Period::Hour => "; use periodType=d for longer spans",
                Period::Day => "",
            };
            return Err(ApiError::bad(
                "duration",
                format!(
                    "is longer than the {days}d answered with periodType={}{coarser}",
                    period.name()
                ),
            ));
        }
        // A device only narrows per-device families; the others have none to narrow.
        let device = match get("device") {
            Some(d) => {
                check_id("device", d)?;
                family.per_device().then(|| d.to_owned())
            }
            None => None,
        };
        Ok(Self {
            ns: ns.to_owned(),
            mcis: mcis.to_owned(),
            vm: vm.to_owned(),
            family,
            period,
            statistic,
            duration_ms,
            device,
        })
    }

    /// The first window start answered at `now_ms`: the window holding `now - duration`.
    pub fn from_ms(&self, now_ms: i64) -> i64 {
        self.period.floor(now_ms.saturating_sub(self.duration_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_period_answers_a_bounded_span() {
        let q = |period: &str, duration: &str| {
            MetricRequest::parse(
                "ns",
                "m",
                "vm",
                "cpu",
                &[
                    ("periodType".to_owned(), period.to_owned()),
                    ("duration".to_owned(), duration.to_owned()),
                ],
            )
        };
        assert!(q("m", "3d").is_ok());
        let e = q("m", "4d").unwrap_err().to_string();
        assert!(e.contains("duration") && e.contains("periodType=h"), "{e}");
        assert!(q("h", "92d").is_ok());
        assert!(
            q("h", "93d")
                .unwrap_err()
                .to_string()
                .contains("periodType=d")
        );
        assert!(q("d", "1800d").is_ok());
        assert!(q("d", "999999w").is_err());
    }

    #[test]
    fn durations_are_influx_style() {
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("7d"), Ok(7 * DAY_MS));
        assert_eq!(parse_duration("2w"), Ok(14 * DAY_MS));
        assert_eq!(parse_duration("0m"), Ok(0));
        assert_eq!(
            parse_duration("999999999w999999999w999999999w999999999w"),
            Ok(4 * 999_999_999 * 7 * DAY_MS)
        );
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-5m",
            "1s1s1s1s1s",
            "1234567890m",
            "5 m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn periods_floor_to_their_windows() {
        let t = 1_763_737_323_456; // 2025-11-21T15:02:03.456Z
        assert_eq!(Period::Minute.floor(t), 1_763_737_320_000);
        assert_eq!(Period::Hour.floor(t), 1_763_737_200_000);
        assert_eq!(Period::Day.floor(t), 1_763_683_200_000);
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requests_default_and_name_the_bad_parameter() {
        let r = MetricRequest::parse("ns", "m", "vm", "cpu", &[]).unwrap();
        assert_eq!(
            (r.period, r.statistic, r.duration_ms),
            (Period::Minute, Statistic::Avg, 300_000)
        );
        let r = MetricRequest::parse(
            "ns",
            "m",
            "vm",
            "network",
            &q(&[
                ("periodType", "h"),
                ("statisticsCriteria", "last"),
                ("duration", "24h"),
                ("device", "eth0"),
            ]),
        )
        .unwrap();
        assert_eq!(r.device.as_deref(), Some("eth0"));
        let cpu = MetricRequest::parse("ns", "m", "vm", "cpu", &q(&[("device", "eth0")])).unwrap();
        assert_eq!(cpu.device, None, "families without devices ignore it");
        assert_eq!(
            r.from_ms(10 * DAY_MS + 5 * HOUR_MS + 7),
            9 * DAY_MS + 5 * HOUR_MS
        );
        for (metric, query, param) in [
            ("gpu", vec![], "metric"),
            ("cpu", vec![("periodType", "y")], "periodType"),
            (
                "cpu",
                vec![("statisticsCriteria", "mean")],
                "statisticsCriteria",
            ),
            ("cpu", vec![("duration", "5")], "duration"),
            ("network", vec![("device", "")], "device"),
        ] {
            let err = MetricRequest::parse("ns", "m", "vm", metric, &q(&query)).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().starts_with(param), "{err}");
        }
        let err = MetricRequest::parse("ns", "m", "", "cpu", &[]).unwrap_err();
        assert!(err.to_string().starts_with("vm"), "{err}");
    }
}
