//! Output formats of the simulator: the native v1 message, or what Telegraf would publish (JSON, line protocol).

use damselfly_schemas::catalog::{self, Family};
use damselfly_schemas::{MetricMessage, Tags};

/// How a producer writes one VM's interval to the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireFormat {
    /// Damselfly's v1 message (`schemas/metric.v1.schema.json`).
    #[default]
    Native,
    /// Telegraf's JSON serializer, batch form: `{"metrics":[{"fields","name","tags","timestamp"}...]}`.
    TelegrafJson,
    /// Influx line protocol, one line per measurement and device.
    Influx,
}

/// Telegraf's measurement and device tag for a family (the decoder maps them back).
fn measurement(family: Family) -> (&'static str, Option<&'static str>) {
    match family {
        Family::Cpu | Family::Cpufreq => ("cpu", None),
        Family::Memory => ("mem", None),
        Family::Disk => ("disk", Some("path")),
        Family::Diskio => ("diskio", Some("name")),
        Family::Network => ("net", Some("interface")),
        Family::Swap => ("swap", None),
        Family::Load | Family::Process => ("system", None),
    }
}

/// One measurement's points of a message: (measurement, device tag and value, fields).
type Group<'a> = (
    (&'static str, Option<(&'static str, &'a str)>),
    Vec<(&'a str, f64)>,
);

fn groups<'a>(msg: &'a MetricMessage) -> Vec<Group<'a>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    let mut push =
        |m: &'static str, dev: Option<(&'static str, &'a str)>, name: &'a str, v: f64| match out
            .iter_mut()
            .find(|(k, _)| k.0 == m && k.1 == dev)
        {
            Some((_, fields)) => fields.push((name, v)),
            None => out.push(((m, dev), vec![(name, v)])),
        };
    for (name, v) in &msg.metrics {
        let family = catalog::lookup(name).map_or(Family::Process, |d| d.family);
        push(measurement(family).0, None, name, *v);
    }
    for (device, metrics) in &msg.devices {
        for (name, v) in metrics {
            let family = catalog::lookup(name).map_or(Family::Disk, |d| d.family);
            let (m, tag) = measurement(family);
            push(
                m,
                Some((tag.unwrap_or("device"), device.as_str())),
                name,
                *v,
            );
        }
    }
    out
}

fn tag_pairs(tags: &Tags) -> [(&'static str, &str); 7] {
    [
        ("ns", &tags.ns),
        ("mcis", &tags.mcis),
        ("vm", &tags.vm),
        ("csp", &tags.csp),
        ("region", &tags.region),
        ("os", &tags.os),
        ("host", &tags.host),
    ]
}

/// Encodes one VM's interval in the chosen format.
pub fn encode(msg: &MetricMessage, format: WireFormat) -> Vec<u8> {
    match format {
        WireFormat::Native => msg.to_json(),
        WireFormat::TelegrafJson => {
            // Borrowed, typed serialization: no intermediate `serde_json::Value` maps.
            let metrics: Vec<TelegrafMetric<'_>> = groups(msg)
                .into_iter()
                .map(|((name, dev), fields)| {
                    let mut tags: Vec<(&str, &str)> = tag_pairs(&msg.tags)
                        .into_iter()
                        .filter(|(_, v)| !v.is_empty())
                        .collect();
                    if name == "cpu" {
                        tags.push(("cpu", "cpu-total"));
                    }
                    tags.extend(dev);
                    TelegrafMetric {
                        fields: Pairs(fields),
                        name,
                        tags: Pairs(tags),
                        timestamp: msg.ts,
                    }
                })
                .collect();
            serde_json::to_vec(&TelegrafBatch { metrics }).expect("JSON serializes")
        }
        WireFormat::Influx => {
            use std::fmt::Write as _;
            let mut out = String::with_capacity(2048);
            let ts_ns = i128::from(msg.ts) * 1_000_000;
            for ((m, dev), fields) in groups(msg) {
                out.push_str(m);
                for (k, v) in tag_pairs(&msg.tags)
                    .into_iter()
                    .filter(|(_, v)| !v.is_empty())
                {
                    let _ = write!(out, ",{k}=");
                    escape_into(&mut out, v);
                }
                if m == "cpu" {
                    out.push_str(",cpu=cpu-total");
                }
                if let Some((t, d)) = dev {
                    let _ = write!(out, ",{t}=");
                    escape_into(&mut out, d);
                }
                for (i, (k, v)) in fields.iter().enumerate() {
                    let _ = write!(out, "{}{k}={v:?}", if i == 0 { ' ' } else { ',' });
                }
                let _ = writeln!(out, " {ts_ns}");
            }
            out.into_bytes()
        }
    }
}

/// Appends a tag value escaped for line protocol (backslashes, commas, spaces and equals signs).
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, '\\' | ',' | ' ' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Telegraf's JSON serializer output, batch form.
#[derive(serde::Serialize)]
struct TelegrafBatch<'a> {
    metrics: Vec<TelegrafMetric<'a>>,
}

/// One Telegraf metric: a measurement's fields and tags at one time.
#[derive(serde::Serialize)]
struct TelegrafMetric<'a> {
    fields: Pairs<&'a str, f64>,
    name: &'a str,
    tags: Pairs<&'a str, &'a str>,
    timestamp: i64,
}

/// Key-value pairs serialized as a JSON object, in order.
struct Pairs<K, V>(Vec<(K, V)>);

impl<K: serde::Serialize, V: serde::Serialize> serde::Serialize for Pairs<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fleet;
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn samples(msgs: &[MetricMessage]) -> BTreeSet<String> {
        msgs.iter()
            .flat_map(|m| {
                let plain = m
                    .metrics
                    .iter()
                    .map(move |(k, v)| format!("{}|{}||{k}|{v}", m.tags.vm, m.ts));
                let dev = m.devices.iter().flat_map(move |(d, ms)| {
                    ms.iter()
                        .map(move |(k, v)| format!("{}|{}|{d}|{k}|{v}", m.tags.vm, m.ts))
                });
                plain.chain(dev)
            })
            .collect()
    }

    #[test]
    fn every_format_decodes_to_the_same_samples() {
        let mut fleet = Fleet::new(14, 5, "ns01");
        for msg in fleet.tick(1_763_737_200_000, Duration::from_secs(2)) {
            let want = samples(std::slice::from_ref(&msg));
            for format in [
                WireFormat::Native,
                WireFormat::TelegrafJson,
                WireFormat::Influx,
            ] {
                let bytes = encode(&msg, format);
                let got = damselfly_core::formats::decode_value(&bytes)
                    .unwrap_or_else(|e| panic!("{format:?} of {}: {e}", msg.tags.vm));
                assert_eq!(samples(&got), want, "{format:?} of {}", msg.tags.vm);
                assert_eq!(
                    got.iter()
                        .map(|m| m.tags.clone())
                        .collect::<BTreeSet<_>>()
                        .len(),
                    1
                );
                assert_eq!(got[0].tags, msg.tags, "{format:?} keeps every tag");
            }
        }
    }
}
