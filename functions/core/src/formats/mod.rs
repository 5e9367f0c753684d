//! The formats accepted on the metrics topic: native v1 JSON, Telegraf JSON and Influx line protocol.
//!
//! [`decode_value`] detects the format of one Kafka record value and turns it into native
//! [`MetricMessage`]s:
//!
//! - a JSON object with `"v"` is a native v1 message ([`MetricMessage::from_json`]);
//! - a JSON object with `"name"` and `"fields"` is one metric of Telegraf's JSON serializer, and a
//!   JSON object with `"metrics"` is its batch form (`{"metrics":[...]}`), see [`telegraf`];
//! - anything else is read as Influx line protocol, see [`influx`].
//!
//! Telegraf JSON and line protocol are both parsed into [`Point`]s (one measurement, its tags and
//! fields, one timestamp), and [`points_to_messages`] maps points onto the native model:
//!
//! - **Tags.** `ns`/`nsId`, `mcis`/`mcisId`, `vm`/`vmId`, `csp`/`cspType`, `region`, `os`/`osType`
//!   and `host` become [`Tags`] (the short name wins when both are present; CB-Dragonfly's Telegraf
//!   agents used the `*Id`/`*Type` names). `ns`, `mcis` and `vm` are required.
//! - **Devices.** For the Telegraf input plugins in the mapping table, the plugin's device tag
//!   (`cpu` unless `cpu-total`; `path`, else `device`, for disk; `name`, else `device`, for
//!   diskio; `interface` for net) makes the fields per-device, and other tags are dropped. For any
//!   other measurement, the tags that are not identity tags, sorted and written `key=value`
//!   joined by `,`, form the device, so series that differ only in those tags stay apart.
//! - **Fields.** A field of a plugin in the mapping table becomes its catalog metric
//!   (`usage_user` -> `cpu_user`, `read_bytes` -> `kb_read` / 1024, ...). A field whose name is
//!   already a catalog name (CB-Dragonfly style: measurement `cpu`, field `cpu_utilization`) is
//!   kept. Any other field becomes `{measurement}_{field}`, lowercased and sanitized to
//!   `^[a-z][a-z0-9_]{0,63}$`, so nothing is lost.
//! - **Values.** Floats, integers and unsigned integers are metrics (as `f64`; integers beyond
//!   2^53 lose precision). Booleans are metrics too: `true` is 1 and `false` is 0, so that
//!   up/down checks can be alarmed on. String fields are not metrics and are skipped; a value
//!   that yields no numeric field at all is an error.
//! - **Timestamps.** Required: a point without one is an error, because the lake is keyed by
//!   collection time, not arrival time. The unit is detected by magnitude ([`timestamp_to_ms`]).
//! - **Messages.** Points with the same timestamp (in ms) and the same [`Tags`] are merged into
//!   one message; when two points set the same metric of the same device, the later one wins.
//!   Messages come out ordered by timestamp, then tags. Every message passes
//!   [`MetricMessage::validate`]; size limits are the caller's business.

pub mod influx;
pub mod telegraf;

use std::collections::BTreeMap;
use std::fmt;

use damselfly_schemas::catalog;
use damselfly_schemas::wire::{MAX_METRIC_NAME_LEN, WIRE_VERSION};
use damselfly_schemas::{MetricMessage, Tags, WireError};
use serde::Deserialize as _;

pub use influx::InfluxError;
pub use telegraf::TelegrafError;

/// One of the formats accepted on the metrics topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Damselfly's own v1 JSON message.
    Native,
    /// Telegraf's JSON serializer, one metric or the `{"metrics":[...]}` batch form.
    TelegrafJson,
    /// Influx line protocol, one or more lines.
    Influx,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Native => "native v1 message",
            Format::TelegrafJson => "Telegraf JSON",
            Format::Influx => "Influx line protocol",
        })
    }
}

/// Where a [`Point`] came from in the record value, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A line of line protocol (1-based; a point starts on this line).
    InfluxLine(usize),
    /// A Telegraf JSON metric: `None` for a lone metric, `Some(n)` for the n-th (1-based) of a batch.
    Telegraf(Option<usize>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::InfluxLine(line) => write!(f, "influx line {line}"),
            Origin::Telegraf(None) => f.write_str("telegraf metric"),
            Origin::Telegraf(Some(n)) => write!(f, "telegraf metric {n}"),
        }
    }
}

/// A field value as Telegraf and line protocol type it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A 64-bit float (always finite: line protocol has no NaN or infinity literal, nor has JSON).
    Float(f64),
    /// A signed 64-bit integer (`1i` in line protocol).
    Integer(i64),
    /// An unsigned 64-bit integer (`1u` in line protocol).
    Unsigned(u64),
    /// A boolean.
    Boolean(bool),
    /// A string; not a metric.
    String(String),
}

impl FieldValue {
    /// The value as a metric sample: numbers as `f64`, booleans as 1 or 0, strings as `None`.
    pub fn as_metric(&self) -> Option<f64> {
        match self {
            FieldValue::Float(x) => Some(*x),
            FieldValue::Integer(i) => Some(*i as f64),
            FieldValue::Unsigned(u) => Some(*u as f64),
            FieldValue::Boolean(b) => Some(if *b { 1.0 } else { 0.0 }),
            FieldValue::String(_) => None,
        }
    }
}

/// One measurement at one time, as parsed from Telegraf JSON or line protocol, before mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Measurement name (Telegraf's `name`).
    pub measurement: String,
    /// Tags in input order (unescaped); on a repeated key the last one wins.
    pub tags: Vec<(String, String)>,
    /// Fields in input order (unescaped); on a repeated key the last one wins.
    pub fields: Vec<(String, FieldValue)>,
    /// Timestamp as written, unit unknown (see [`timestamp_to_ms`]); `None` when absent.
    pub timestamp: Option<i64>,
    /// Where the point is in the record value.
    pub origin: Origin,
}

/// Why a record value could not be turned into metric messages; its Display is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    /// The value is none of the accepted formats.
    #[error("not a native v1 message, Telegraf JSON or Influx line protocol: {0}")]
    Unrecognized(String),
    /// A native v1 message that does not parse or validate.
    #[error(transparent)]
    Native(#[from] WireError),
    /// Telegraf JSON that does not have the serializer's shape.
    #[error(transparent)]
    Telegraf(#[from] TelegrafError),
    /// Line protocol that does not parse.
    #[error(transparent)]
    Influx(#[from] InfluxError),
    /// A point has no timestamp.
    #[error(
        "{at}: missing timestamp (Damselfly needs the collection time; send one with every point)"
    )]
    MissingTimestamp {
        /// The point without a timestamp.
        at: Origin,
    },
    /// A required identity tag is absent or empty.
    #[error("{at}: missing tag `{tag}` (or `{alias}`)")]
    MissingTag {
        /// The point without the tag.
        at: Origin,
        /// Damselfly's name of the tag.
        tag: &'static str,
        /// The alternative name CB-Dragonfly's agents used.
        alias: &'static str,
    },
    /// Not a single numeric (or boolean) field in the whole value.
    #[error("{0}: no numeric fields (string fields are not metrics)")]
    NoNumericFields(Format),
    /// A mapped message fails [`MetricMessage::validate`].
    #[error("{at}: {source}")]
    Invalid {
        /// The first point of the message.
        at: Origin,
        /// What validation said.
        source: WireError,
    },
}

/// Detects the format of a record value and decodes it into native messages.
///
/// A native message yields exactly one message; Telegraf JSON and line protocol yield one message
/// per distinct (timestamp, tags) among their points. See the [module docs](self) for the rules.
pub fn decode_value(value: &[u8]) -> Result<Vec<MetricMessage>, FormatError> {
    match value.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(FormatError::Unrecognized("the value is empty".into())),
        Some(b'{') | Some(b'[') => decode_json(value),
        Some(_) => match influx::parse(value) {
            Ok(points) => points_to_messages(&points, Format::Influx),
            // Nothing parsed before the failure: the value never looked like line protocol.
            Err(e) if e.points_before == 0 => Err(FormatError::Unrecognized(e.to_string())),
            Err(e) => Err(e.into()),
        },
    }
}

fn decode_json(value: &[u8]) -> Result<Vec<MetricMessage>, FormatError> {
    // Fast path: nearly every record is native, and a valid one is then parsed only once.
    let native_error = match MetricMessage::from_json(value) {
        Ok(message) => return Ok(vec![message]),
        Err(e) => e,
    };
    let keys = JsonKeys::probe(value).map_err(FormatError::Unrecognized)?;
    if keys.v {
        Err(native_error.into())
    } else if keys.metrics || keys.name || keys.fields {
        telegraf::decode(value)
    } else {
        Err(FormatError::Unrecognized(
            "a JSON object without `v` (native v1), `name` and `fields` (Telegraf JSON) \
             or `metrics` (Telegraf JSON batch)"
                .into(),
        ))
    }
}

/// Which of the keys that tell the JSON formats apart a JSON object has.
#[derive(Debug, serde::Deserialize)]
#[serde(expecting = "a JSON object")]
pub(crate) struct JsonKeys {
    /// `v`: a native message.
    #[serde(default, deserialize_with = "present")]
    pub(crate) v: bool,
    /// `name`: a Telegraf metric.
    #[serde(default, deserialize_with = "present")]
    pub(crate) name: bool,
    /// `fields`: a Telegraf metric.
    #[serde(default, deserialize_with = "present")]
    pub(crate) fields: bool,
    /// `metrics`: a Telegraf batch (or a native message, which also has `v`).
    #[serde(default, deserialize_with = "present")]
    pub(crate) metrics: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

impl JsonKeys {
    /// Scans the whole value (without allocating) and reports the keys; the error is a reason.
    pub(crate) fn probe(value: &[u8]) -> Result<Self, String> {
        // serde would also read a struct from an array: say no first.
        match value.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            Some(b'[') => return Err("a JSON array; want a JSON object".into()),
            _ => return Err("not a JSON object".into()),
        }
        serde_json::from_slice(value).map_err(|e| json_reason(&e, value))
    }
}

/// A human reason for a JSON syntax or shape error, with a hint when NaN or infinity is the cause.
pub(crate) fn json_reason(e: &serde_json::Error, value: &[u8]) -> String {
    if e.is_data() {
        // Valid JSON of the wrong shape: serde's words say which type was expected where.
        return e.to_string();
    }
    let mut reason = format!("invalid JSON ({e})");
    let mentions = |word: &[u8]| value.windows(word.len()).any(|w| w == word);
    if e.is_syntax() && (mentions(b"NaN") || mentions(b"Infinity")) {
        reason.push_str("; JSON has no NaN or Infinity");
    }
    reason
}

/// Converts a Unix timestamp of unknown unit to milliseconds, detecting the unit by magnitude.
///
/// `|ts| < 10^11` is seconds, `< 10^14` milliseconds, `< 10^17` microseconds, anything larger
/// nanoseconds (the four units of Telegraf's `json_timestamp_units` and line protocol's
/// precisions). Every instant from 1973-03-03 to 5138-11-16 is therefore read correctly
/// whatever its unit; earlier instants in sub-second units would be misread, but they are far
/// outside any accepted time window anyway. Sub-millisecond parts are truncated toward the past.
pub fn timestamp_to_ms(ts: i64) -> i64 {
    match ts.unsigned_abs() {
        a if a < 100_000_000_000 => ts * 1_000,
        a if a < 100_000_000_000_000 => ts,
        a if a < 100_000_000_000_000_000 => ts.div_euclid(1_000),
        _ => ts.div_euclid(1_000_000),
    }
}

/// Maps parsed points onto native messages (see the [module docs](self) for the rules).
///
/// `format` only names the input in the "no numeric fields" error.
pub fn points_to_messages(
    points: &[Point],
    format: Format,
) -> Result<Vec<MetricMessage>, FormatError> {
    let mut messages: BTreeMap<(i64, Tags), (Origin, MetricMessage)> = BTreeMap::new();
    for point in points {
        let at = point.origin;
        let ts = timestamp_to_ms(
            point
                .timestamp
                .ok_or(FormatError::MissingTimestamp { at })?,
        );
        // Last one wins on repeated tag keys.
        let tags: BTreeMap<&str, &str> = point
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let identity = identity_tags(&tags, at)?;
        let plugin = PLUGINS.iter().find(|p| p.measurement == point.measurement);
        let device = device(plugin, &tags);
        let samples = samples(plugin, point);
        if samples.is_empty() {
            continue;
        }
        let (_, message) = messages.entry((ts, identity.clone())).or_insert_with(|| {
            (
                at,
                MetricMessage {
                    v: WIRE_VERSION,
                    ts,
                    tags: identity,
                    metrics: BTreeMap::new(),
                    devices: BTreeMap::new(),
                },
            )
        });
        let target = match device {
            Some(device) => message.devices.entry(device).or_default(),
            None => &mut message.metrics,
        };
        target.extend(samples);
    }
    if messages.is_empty() {
        return Err(FormatError::NoNumericFields(format));
    }
    messages
        .into_values()
        .map(|(at, message)| match message.validate() {
            Ok(()) => Ok(message),
            Err(source) => Err(FormatError::Invalid { at, source }),
        })
        .collect()
}

/// Identity tags: (Damselfly name, alternative name, required).
const IDENTITY_TAGS: [(&str, &str, bool); 7] = [
    ("ns", "nsId", true),
    ("mcis", "mcisId", true),
    ("vm", "vmId", true),
    ("csp", "cspType", false),
    ("region", "region", false),
    ("os", "osType", false),
    ("host", "host", false),
];

fn is_identity_tag(key: &str) -> bool {
    IDENTITY_TAGS
        .iter()
        .any(|(name, alias, _)| key == *name || key == *alias)
}

fn identity_tags(tags: &BTreeMap<&str, &str>, at: Origin) -> Result<Tags, FormatError> {
    let mut values = [""; 7];
    for (slot, (name, alias, required)) in values.iter_mut().zip(IDENTITY_TAGS) {
        let value = [name, alias]
            .iter()
            .filter_map(|key| tags.get(key).copied())
            .find(|v| !v.is_empty())
            .unwrap_or("");
        if required && value.is_empty() {
            return Err(FormatError::MissingTag {
                at,
                tag: name,
                alias,
            });
        }
        *slot = value;
    }
    Ok(Tags::from_strs(values))
}

/// The device a point's fields belong to, `None` for device-less fields.
fn device(plugin: Option<&Plugin>, tags: &BTreeMap<&str, &str>) -> Option<String> {
    match plugin {
        Some(plugin) => plugin
            .device_tags
            .iter()
            .filter_map(|key| tags.get(key).copied())
            .find(|v| !v.is_empty())
            .filter(|v| Some(*v) != plugin.total)
            .map(str::to_owned),
        None => {
            let rest: Vec<String> = tags
                .iter()
                .filter(|(k, v)| !is_identity_tag(k) && !v.is_empty())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            (!rest.is_empty()).then(|| rest.join(","))
        }
    }
}

/// The point's numeric fields as (metric name, value) pairs.
fn samples(plugin: Option<&Plugin>, point: &Point) -> Vec<(String, f64)> {
    let mut out = Vec::with_capacity(point.fields.len());
    for (field, value) in &point.fields {
        let Some(x) = value.as_metric() else { continue };
        let rules = plugin
            .map(|p| p.fields)
            .unwrap_or_default()
            .iter()
            .filter(|(name, ..)| *name == field.as_str());
        let before = out.len();
        out.extend(rules.map(|(_, metric, conv)| ((*metric).to_owned(), conv.apply(x))));
        if out.len() > before {
            continue;
        }
        if catalog::lookup(field).is_some() {
            out.push((field.clone(), x));
        } else {
            out.push((metric_name(&point.measurement, field), x));
        }
    }
    out
}

/// `{measurement}_{field}` as a valid metric name: lowercase ASCII letters, digits and single
/// `_`, starting with a letter (`m_` is prefixed otherwise), at most 64 bytes.
pub fn metric_name(measurement: &str, field: &str) -> String {
    let mut name = String::with_capacity(measurement.len() + field.len() + 1);
    for c in measurement.chars().chain(['_']).chain(field.chars()) {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('_') {
            name.push('_');
        }
    }
    while name.ends_with('_') {
        name.pop();
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "m_");
    }
    // ASCII only, so any byte length is a char boundary.
    name.truncate(MAX_METRIC_NAME_LEN);
    name
}

/// How a Telegraf field value becomes the catalog metric's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conv {
    /// Same unit.
    Same,
    /// Bytes to KiB (Telegraf diskio's `read_bytes`/`write_bytes` -> `kb_read`/`kb_written`).
    KiB,
    /// Bytes to 4 KiB pages (Telegraf swap's `in`/`out` are gopsutil's pswpin/pswpout x 4096).
    Pages,
    /// Idle percent to utilization percent: 100 - idle, floored at 0.
    Busy,
}

impl Conv {
    fn apply(self, x: f64) -> f64 {
        match self {
            Conv::Same => x,
            Conv::KiB => x / 1024.0,
            Conv::Pages => x / 4096.0,
            Conv::Busy => (100.0 - x).max(0.0),
        }
    }
}

/// One Telegraf input plugin's measurement and how it maps onto the catalog.
#[derive(Debug)]
struct Plugin {
    /// Measurement name.
    measurement: &'static str,
    /// Tags naming the device, first non-empty one wins; empty for device-less measurements.
    device_tags: &'static [&'static str],
    /// A device tag value that means "all devices" (the fields are then device-less).
    total: Option<&'static str>,
    /// (Telegraf field, catalog metric, conversion); a field may feed several metrics.
    fields: &'static [(&'static str, &'static str, Conv)],
}

use Conv::{Busy, KiB, Pages, Same};

/// Telegraf's standard input plugins, mapped onto CB-Dragonfly's catalog. Fields not listed
/// here keep their name if it is a catalog name, else become `{measurement}_{field}`.
static PLUGINS: &[Plugin] = &[
    Plugin {
        measurement: "cpu",
        device_tags: &["cpu"],
        total: Some("cpu-total"),
        fields: &[
            ("usage_user", "cpu_user", Same),
            ("usage_system", "cpu_system", Same),
            ("usage_idle", "cpu_idle", Same),
            ("usage_idle", "cpu_utilization", Busy),
            ("usage_iowait", "cpu_iowait", Same),
            ("usage_irq", "cpu_hintr", Same),
            ("usage_softirq", "cpu_sintr", Same),
            ("usage_steal", "cpu_steal", Same),
            ("usage_guest", "cpu_guest", Same),
            ("usage_guest_nice", "cpu_guest_nice", Same),
            ("usage_nice", "cpu_nice", Same),
        ],
    },
    Plugin {
        measurement: "mem",
        device_tags: &[],
        total: None,
        fields: &[
            ("total", "mem_total", Same),
            ("used", "mem_used", Same),
            ("free", "mem_free", Same),
            ("shared", "mem_shared", Same),
            ("buffered", "mem_buffers", Same),
            ("cached", "mem_cached", Same),
            ("used_percent", "mem_utilization", Same),
        ],
    },
    Plugin {
        measurement: "disk",
        device_tags: &["path", "device"],
        total: None,
        fields: &[
            ("total", "disk_total", Same),
            ("used", "disk_used", Same),
            ("free", "disk_free", Same),
            ("used_percent", "disk_utilization", Same),
        ],
    },
    Plugin {
        measurement: "diskio",
        device_tags: &["name", "device"],
        total: None,
        fields: &[
            ("read_bytes", "kb_read", KiB),
            ("write_bytes", "kb_written", KiB),
            ("reads", "ops_read", Same),
            ("writes", "ops_write", Same),
            ("read_time", "read_time", Same),
            ("write_time", "write_time", Same),
        ],
    },
    Plugin {
        measurement: "net",
        device_tags: &["interface"],
        total: None,
        fields: &[
            ("bytes_recv", "bytes_in", Same),
            ("bytes_sent", "bytes_out", Same),
            ("packets_recv", "pkts_in", Same),
            ("packets_sent", "pkts_out", Same),
            ("err_in", "err_in", Same),
            ("err_out", "err_out", Same),
            ("drop_in", "drop_in", Same),
            ("drop_out", "drop_out", Same),
        ],
    },
    Plugin {
        measurement: "swap",
        device_tags: &[],
        total: None,
        fields: &[
            ("total", "swap_total", Same),
            ("used", "swap_used", Same),
            ("free", "swap_free", Same),
            ("used_percent", "swap_utilization", Same),
            ("in", "page_in", Pages),
            ("out", "page_out", Pages),
        ],
    },
    Plugin {
        measurement: "system",
        device_tags: &[],
        total: None,
        fields: &[
            ("load1", "load_avg_1", Same),
            ("load5", "load_avg_5", Same),
            ("load15", "load_avg_15", Same),
            ("n_cpus", "cpu_num", Same),
            ("uptime", "uptime", Same),
        ],
    },
    Plugin {
        measurement: "processes",
        device_tags: &[],
        total: None,
        fields: &[("running", "proc_run", Same), ("total", "proc_num", Same)],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    const TAGS: &str = "nsId=ns01,mcisId=web,vmId=vm-1,cspType=aws,region=ap-northeast-2,osType=linux,host=ip-10-0-1-17";
    const TS_NS: i64 = 1_763_737_200_000_000_000;
    const TS_MS: i64 = 1_763_737_200_000;

    fn one(input: &str) -> MetricMessage {
        let mut messages =
            decode_value(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(messages.len(), 1, "{messages:?}");
        messages.remove(0)
    }

    fn err(input: &[u8]) -> String {
        match decode_value(input) {
            Ok(m) => panic!("{} decoded: {m:?}", String::from_utf8_lossy(input)),
            Err(e) => e.to_string(),
        }
    }

    fn assert_err(input: &[u8], want: &[&str]) {
        let got = err(input);
        for w in want {
            assert!(
                got.contains(w),
                "{}: got `{got}`, want `{w}`",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn native_messages_pass_through() {
        let native = br#"{"v":1,"ts":1763737200000,"tags":{"ns":"n","mcis":"m","vm":"vm-1"},"metrics":{"cpu_utilization":5}}"#;
        let got = decode_value(native).unwrap();
        assert_eq!(got, vec![MetricMessage::from_json(native).unwrap()]);
        // A native message that is wrong says so in the wire contract's words.
        assert_err(
            br#"{"v":2,"ts":1,"tags":{"ns":"n","mcis":"m","vm":"vm-1"},"metrics":{"x":1}}"#,
            &["unsupported wire version 2"],
        );
        assert_err(
            br#"{"v":1,"ts":1,"tags":{"ns":"n","mcis":"m","vm":"vm-1"},"metrics":{"x":"high"}}"#,
            &["not a v1 metric message"],
        );
    }

    #[test]
    fn timestamp_units_are_detected_by_magnitude() {
        assert_eq!(timestamp_to_ms(1_763_737_200), TS_MS);
        assert_eq!(timestamp_to_ms(TS_MS), TS_MS);
        assert_eq!(timestamp_to_ms(1_763_737_200_000_000), TS_MS);
        assert_eq!(timestamp_to_ms(TS_NS), TS_MS);
        assert_eq!(timestamp_to_ms(TS_NS + 999_999), TS_MS);
        // Boundaries: 1973-03-03 in each unit.
        assert_eq!(timestamp_to_ms(99_999_999_999), 99_999_999_999_000);
        assert_eq!(timestamp_to_ms(100_000_000_000), 100_000_000_000);
        assert_eq!(timestamp_to_ms(100_000_000_000_000), 100_000_000_000);
        assert_eq!(timestamp_to_ms(100_000_000_000_000_000), 100_000_000_000);
        // Never overflows.
        for ts in [i64::MIN, i64::MAX, -1, 0] {
            let _ = timestamp_to_ms(ts);
        }
    }

    #[test]
    fn telegraf_cpu_maps_to_the_catalog() {
        let input = format!(
            "cpu,cpu=cpu-total,{TAGS} usage_user=12.5,usage_system=3,usage_idle=80,usage_iowait=1,\
             usage_irq=0.5,usage_softirq=0.25,usage_steal=0.1,usage_guest=0,usage_guest_nice=0,\
             usage_nice=2,usage_active=20 {TS_NS}\n\
             cpu,cpu=cpu0,{TAGS} usage_idle=70 {TS_NS}"
        );
        let m = one(&input);
        assert_eq!(m.ts, TS_MS);
        assert_eq!(
            m.tags,
            Tags {
                ns: "ns01".into(),
                mcis: "web".into(),
                vm: "vm-1".into(),
                csp: "aws".into(),
                region: "ap-northeast-2".into(),
                os: "linux".into(),
                host: "ip-10-0-1-17".into(),
            }
        );
        let want: BTreeMap<String, f64> = [
            ("cpu_user", 12.5),
            ("cpu_system", 3.0),
            ("cpu_idle", 80.0),
            ("cpu_utilization", 20.0),
            ("cpu_iowait", 1.0),
            ("cpu_hintr", 0.5),
            ("cpu_sintr", 0.25),
            ("cpu_steal", 0.1),
            ("cpu_guest", 0.0),
            ("cpu_guest_nice", 0.0),
            ("cpu_nice", 2.0),
            ("cpu_usage_active", 20.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(m.metrics, want);
        assert_eq!(m.devices["cpu0"]["cpu_utilization"], 30.0);
        assert_eq!(m.devices["cpu0"]["cpu_idle"], 70.0);
    }

    #[test]
    fn telegraf_mem_swap_system_processes_map_to_the_catalog() {
        let input = format!(
            "mem,{TAGS} total=8000i,used=3000i,free=1000i,shared=10i,buffered=20i,cached=4000i,used_percent=37.5,available=5000i {TS_NS}\n\
             swap,{TAGS} total=100i,used=10i,free=90i,used_percent=10,in=8192i,out=4096i {TS_NS}\n\
             system,{TAGS} load1=0.5,load5=0.25,load15=0.125,n_cpus=4i,n_users=2i {TS_NS}\n\
             system,{TAGS} uptime=3600u {TS_NS}\n\
             system,{TAGS} uptime_format=\" 1:00\" {TS_NS}\n\
             processes,{TAGS} running=3i,total=200i,zombies=1i {TS_NS}"
        );
        let m = one(&input);
        let got: Vec<(&str, f64)> = m.metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            got,
            vec![
                ("cpu_num", 4.0),
                ("load_avg_1", 0.5),
                ("load_avg_15", 0.125),
                ("load_avg_5", 0.25),
                ("mem_available", 5000.0),
                ("mem_buffers", 20.0),
                ("mem_cached", 4000.0),
                ("mem_free", 1000.0),
                ("mem_shared", 10.0),
                ("mem_total", 8000.0),
                ("mem_used", 3000.0),
                ("mem_utilization", 37.5),
                ("page_in", 2.0),
                ("page_out", 1.0),
                ("proc_num", 200.0),
                ("proc_run", 3.0),
                ("processes_zombies", 1.0),
                ("swap_free", 90.0),
                ("swap_total", 100.0),
                ("swap_used", 10.0),
                ("swap_utilization", 10.0),
                ("system_n_users", 2.0),
                ("uptime", 3600.0),
            ]
        );
        assert!(m.devices.is_empty());
    }

    #[test]
    fn telegraf_disk_diskio_net_are_per_device() {
        let input = format!(
            "disk,device=nvme0n1p1,fstype=ext4,mode=rw,path=/,{TAGS} total=1000i,used=250i,free=750i,used_percent=25,inodes_used=7i {TS_NS}\n\
             disk,device=tmpfs,fstype=tmpfs,{TAGS} used_percent=1 {TS_NS}\n\
             diskio,name=nvme0n1,{TAGS} read_bytes=2048i,write_bytes=1024i,reads=5i,writes=6i,read_time=7i,write_time=8i,io_time=9i {TS_NS}\n\
             net,interface=eth0,{TAGS} bytes_recv=100i,bytes_sent=200i,packets_recv=3i,packets_sent=4i,err_in=0i,err_out=1i,drop_in=2i,drop_out=3i {TS_NS}"
        );
        let m = one(&input);
        assert!(m.metrics.is_empty(), "{:?}", m.metrics);
        let root = &m.devices["/"];
        assert_eq!(root["disk_total"], 1000.0);
        assert_eq!(root["disk_used"], 250.0);
        assert_eq!(root["disk_free"], 750.0);
        assert_eq!(root["disk_utilization"], 25.0);
        assert_eq!(root["disk_inodes_used"], 7.0);
        assert_eq!(m.devices["tmpfs"]["disk_utilization"], 1.0);
        let sda = &m.devices["nvme0n1"];
        assert_eq!(sda["kb_read"], 2.0);
        assert_eq!(sda["kb_written"], 1.0);
        assert_eq!(sda["ops_read"], 5.0);
        assert_eq!(sda["ops_write"], 6.0);
        assert_eq!(sda["read_time"], 7.0);
        assert_eq!(sda["write_time"], 8.0);
        assert_eq!(sda["diskio_io_time"], 9.0);
        let eth0 = &m.devices["eth0"];
        let got: Vec<(&str, f64)> = eth0.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            got,
            vec![
                ("bytes_in", 100.0),
                ("bytes_out", 200.0),
                ("drop_in", 2.0),
                ("drop_out", 3.0),
                ("err_in", 0.0),
                ("err_out", 1.0),
                ("pkts_in", 3.0),
                ("pkts_out", 4.0),
            ]
        );
    }

    #[test]
    fn cb_dragonfly_style_fields_are_kept() {
        let m = one(&format!(
            "cpu,{TAGS} cpu_utilization=23.4,cpu_user=10 {TS_NS}\n\
             cpufreq,{TAGS} cpu_speed=2400 {TS_NS}"
        ));
        assert_eq!(m.metrics["cpu_utilization"], 23.4);
        assert_eq!(m.metrics["cpu_user"], 10.0);
        assert_eq!(m.metrics["cpu_speed"], 2400.0);
    }

    #[test]
    fn short_tag_names_and_extra_tags() {
        // The short names work and win over the *Id names; unknown measurements keep their
        // extra tags as the device; known device-less measurements drop them.
        let m = one(&format!(
            "docker_container_cpu,ns=a,nsId=b,mcis=m,vm=v,container_name=web,cpu=cpu-total usage_percent=3 {TS_NS}\n\
             mem,ns=a,mcis=m,vm=v,dc=seoul used=1i {TS_NS}"
        ));
        assert_eq!(m.tags.ns, "a");
        assert_eq!(m.tags.csp, "");
        assert_eq!(
            m.devices["container_name=web,cpu=cpu-total"]["docker_container_cpu_usage_percent"],
            3.0
        );
        assert_eq!(m.metrics["mem_used"], 1.0);
    }

    #[test]
    fn other_names_are_sanitized() {
        assert_eq!(metric_name("cpu", "usage_active"), "cpu_usage_active");
        assert_eq!(
            metric_name("My.Plugin", "Field-Name"),
            "my_plugin_field_name"
        );
        assert_eq!(metric_name("9lives", "x"), "m_9lives_x");
        assert_eq!(metric_name("日本", "値"), "m_");
        assert_eq!(metric_name("__a__", "__b__"), "a_b");
        let long = metric_name(&"a".repeat(100), "b");
        assert_eq!(long.len(), 64);
        for name in [long, metric_name("日本", "値"), metric_name("", "")] {
            let msg = MetricMessage {
                v: 1,
                ts: 1,
                tags: Tags {
                    ns: "n".into(),
                    mcis: "m".into(),
                    vm: "v".into(),
                    ..Tags::default()
                },
                metrics: [(name, 1.0)].into(),
                devices: BTreeMap::new(),
            };
            msg.validate().unwrap();
        }
    }

    #[test]
    fn points_are_grouped_by_time_and_tags() {
        let input = format!(
            "mem,{TAGS} used=1i {TS_NS}\n\
             mem,{TAGS} used=2i {}\n\
             mem,nsId=ns01,mcisId=web,vmId=vm-2 used=3i {TS_NS}\n\
             mem,{TAGS} free=4i {TS_NS}\n\
             mem,{TAGS} free=5i {TS_NS}",
            TS_NS + 10_000_000_000
        );
        let messages = decode_value(input.as_bytes()).unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].tags.vm, "vm-1");
        assert_eq!(messages[0].ts, TS_MS);
        // The later duplicate wins.
        assert_eq!(messages[0].metrics["mem_free"], 5.0);
        assert_eq!(messages[0].metrics["mem_used"], 1.0);
        assert_eq!(messages[1].tags.vm, "vm-2");
        assert_eq!(messages[2].ts, TS_MS + 10_000);
    }

    #[test]
    fn booleans_are_one_and_zero_and_strings_are_skipped() {
        let m = one(&format!(
            "net_response,{TAGS} up=true,down=F,result=\"success\",response_time=0.01 {TS_NS}"
        ));
        assert_eq!(m.metrics["net_response_up"], 1.0);
        assert_eq!(m.metrics["net_response_down"], 0.0);
        assert_eq!(m.metrics["net_response_response_time"], 0.01);
        assert!(!m.metrics.contains_key("net_response_result"));
        assert_err(
            format!("system,{TAGS} uptime_format=\"1 day\" {TS_NS}").as_bytes(),
            &["Influx line protocol: no numeric fields (string fields are not metrics)"],
        );
    }

    #[test]
    fn missing_timestamp_and_tags_are_errors() {
        assert_err(
            format!("mem,{TAGS} used=1i").as_bytes(),
            &["influx line 1: missing timestamp", "collection time"],
        );
        assert_err(
            format!("mem,{TAGS} used=1i {TS_NS}\nmem,{TAGS} used=1i").as_bytes(),
            &["influx line 2: missing timestamp"],
        );
        assert_err(
            format!("mem,nsId=n,mcisId=m,host=h used=1i {TS_NS}").as_bytes(),
            &["influx line 1: missing tag `vm` (or `vmId`)"],
        );
        assert_err(
            br#"{"name":"mem","fields":{"used":1},"tags":{"vmId":"v","mcisId":"m"},"timestamp":1763737200}"#,
            &["telegraf metric: missing tag `ns` (or `nsId`)"],
        );
        assert_err(
            br#"{"name":"mem","fields":{"used":1},"tags":{"nsId":"n","mcisId":"m","vmId":"v"}}"#,
            &["telegraf metric: missing timestamp"],
        );
    }

    #[test]
    fn invalid_messages_say_why() {
        assert_err(
            br#"{"name":"disk","fields":{"used":1},"tags":{"nsId":"n","mcisId":"m","vmId":"v","path":"/\u0001"},"timestamp":1763737200}"#,
            &["telegraf metric: device name"],
        );
        assert_err(
            br#"{"name":"mem","fields":{"used":1},"tags":{"nsId":"n\u0007","mcisId":"m","vmId":"v"},"timestamp":1763737200}"#,
            &["telegraf metric: tag `ns` is invalid", "control characters"],
        );
    }

    #[test]
    fn unrecognized_values_say_what_was_tried() {
        let prefix = "not a native v1 message, Telegraf JSON or Influx line protocol: ";
        assert_err(b"", &[prefix, "empty"]);
        assert_err(b" \n\t", &[prefix, "empty"]);
        assert_err(
            b"\xff\xfe\xfd garbage",
            &[prefix, "influx line 1: a measurement is not UTF-8"],
        );
        assert_err(
            b"\x00\x01\x02",
            &[prefix, "control character '\\0' in measurement"],
        );
        assert_err(b"hello world", &[prefix, "influx line 1", "`world`"]);
        assert_err(b"{\"v\":1,\"ts\":", &[prefix, "invalid JSON", "EOF"]);
        assert_err(b"[1,2]", &[prefix, "a JSON array; want a JSON object"]);
        assert_err(b"{\"a\":1}", &[prefix, "without `v`"]);
        assert_err(
            br#"{"name":"cpu","fields":{"x":NaN},"tags":{},"timestamp":1}"#,
            &[prefix, "JSON has no NaN or Infinity"],
        );
        assert_err(
            b"{\"v\":1,\"ts\":1,\"metrics\":{\"x\":1e400}}",
            &["not a v1 metric message", "number out of range"],
        );
        // The prefix is only for values that never looked like line protocol.
        let got = err(format!("mem,{TAGS} used=1i {TS_NS}\nmem,{TAGS} used=\"x").as_bytes());
        assert_eq!(
            got,
            "influx line 2: field `used`: unterminated quoted string"
        );
    }

    #[test]
    fn every_mapped_metric_is_in_the_catalog() {
        for plugin in PLUGINS {
            for (field, metric, _) in plugin.fields {
                assert!(
                    catalog::lookup(metric).is_some(),
                    "{}.{field} -> {metric} is not a catalog metric",
                    plugin.measurement
                );
            }
            let per_device = !plugin.device_tags.is_empty();
            for (_, metric, _) in plugin.fields {
                let family = catalog::lookup(metric).map(|m| m.family);
                if let Some(family) = family.filter(|f| *f != catalog::Family::Cpu) {
                    assert_eq!(family.per_device(), per_device, "{metric}");
                }
            }
        }
    }

    /// Every prefix of every corpus entry, and every entry with one byte replaced by a
    /// delimiter, never panics (the fuzz targets in `fuzz/` explore further).
    #[test]
    fn no_input_panics() {
        let corpus: Vec<Vec<u8>> = vec![
            format!("cpu,cpu=cpu0,{TAGS} usage_idle=1,x=1i,y=2u,z=t,s=\"a\\\"b\" {TS_NS}\r\n# c\n").into_bytes(),
            format!("my\\ m,t\\=k=v\\,w {TAGS} f\\ k=1e3 -1").into_bytes(),
            br#"{"metrics":[{"name":"cpu","fields":{"usage_idle":1,"b":true,"s":"x"},"tags":{"nsId":"n","mcisId":"m","vmId":"v","cpu":"cpu0"},"timestamp":1763737200}]}"#.to_vec(),
            br#"{"name":"mem","fields":{"used":1},"tags":{"nsId":"n","mcisId":"m","vmId":"v"},"timestamp":"2026-11-21T15:00:00Z"}"#.to_vec(),
            br#"{"v":1,"ts":1763737200000,"tags":{"ns":"n","mcis":"m","vm":"v"},"devices":{"/":{"disk_used":1}}}"#.to_vec(),
        ];
        let specials = b"\\\"=, \n\r\t#{}[]:0i.u-e\x00\xff";
        for input in &corpus {
            for end in 0..=input.len() {
                let _ = decode_value(&input[..end]);
            }
            for at in 0..input.len() {
                for s in specials {
                    let mut mutated = input.clone();
                    mutated[at] = *s;
                    let _ = decode_value(&mutated);
                }
            }
        }
    }
}
