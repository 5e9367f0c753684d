//! The v1 wire message: one JSON object per VM per collection interval, keyed by VM id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only wire version this build reads and writes.
pub const WIRE_VERSION: u32 = 1;

/// Longest tag value accepted, in bytes.
pub const MAX_TAG_LEN: usize = 256;

/// Longest metric name accepted, in bytes.
pub const MAX_METRIC_NAME_LEN: usize = 64;

/// Most devices one message may carry: a host with more mounts, disks and interfaces than this
/// is either misconfigured or hostile, and each device makes series in every table.
pub const MAX_DEVICES: usize = 1024;

/// Most samples (metric values, device-less and per device) one message may carry.
pub const MAX_SAMPLES: usize = 8192;

/// One VM's metrics for one collection interval (wire format v1, `schemas/metric.v1.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricMessage {
    /// Wire format version; always 1 here.
    pub v: u32,
    /// Collection time, milliseconds since the Unix epoch (UTC).
    pub ts: i64,
    /// Where the sample comes from.
    pub tags: Tags,
    /// Device-less metrics (cpu, memory, swap, load, processes), name to value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Per-device metrics: device (mount point, block device, interface) to name to value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub devices: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The identity of a VM, attached to each of its samples.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tags {
    /// Namespace (tenant or project).
    pub ns: String,
    /// Multi-cloud infra service: the VM group.
    pub mcis: String,
    /// VM id; also the Kafka message key.
    pub vm: String,
    /// Cloud service provider (aws, gcp, azure, alibaba, openstack, ...).
    #[serde(default)]
    pub csp: String,
    /// Cloud region.
    #[serde(default)]
    pub region: String,
    /// Operating system family (linux, windows).
    #[serde(default)]
    pub os: String,
    /// Host name as the VM sees itself.
    #[serde(default)]
    pub host: String,
}

/// Why a message is not a valid v1 metric message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// The bytes are not JSON of the v1 shape.
    #[error("not a v1 metric message: {0}")]
    Json(String),
    /// The `v` field names a version this build does not read.
    #[error("unsupported wire version {0} (this build reads v1)")]
    Version(u32),
    /// A required tag is empty.
    #[error("tag `{0}` is empty")]
    EmptyTag(&'static str),
    /// A tag value is too long or contains control characters.
    #[error("tag `{0}` is invalid: {1}")]
    BadTag(&'static str, String),
    /// A metric name does not match `^[a-z][a-z0-9_]*$` or is too long.
    #[error(
        "metric name `{0}` is invalid (want lowercase letters, digits and `_`, at most 64 bytes)"
    )]
    BadMetricName(String),
    /// A device name is empty, too long or contains control characters.
    #[error("device name `{0}` is invalid")]
    BadDevice(String),
    /// The message key and `tags.vm` disagree.
    #[error("message key `{key}` does not match tags.vm `{vm}`")]
    KeyMismatch {
        /// The Kafka message key.
        key: String,
        /// The VM id in the message.
        vm: String,
    },
    /// The message carries no metric at all.
    #[error("message has no metrics")]
    Empty,
    /// The message carries more devices than [`MAX_DEVICES`].
    #[error("message has {0} devices, over the limit of {MAX_DEVICES}")]
    TooManyDevices(usize),
    /// The message carries more samples than [`MAX_SAMPLES`].
    #[error("message has {0} samples, over the limit of {MAX_SAMPLES}")]
    TooManySamples(usize),
}

impl MetricMessage {
    /// Parses and validates a v1 message from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        let msg: MetricMessage =
            serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
        msg.validate()?;
        Ok(msg)
    }

    /// Serializes the message as compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a MetricMessage always serializes")
    }

    /// Checks the rules JSON cannot express by type alone (see the JSON Schema).
    pub fn validate(&self) -> Result<(), WireError> {
        if self.v != WIRE_VERSION {
            return Err(WireError::Version(self.v));
        }
        self.tags.validate()?;
        if self.metrics.is_empty() && self.devices.values().all(BTreeMap::is_empty) {
            return Err(WireError::Empty);
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(WireError::TooManyDevices(self.devices.len()));
        }
        let samples = self.sample_count();
        if samples > MAX_SAMPLES {
            return Err(WireError::TooManySamples(samples));
        }
        for name in self.metrics.keys() {
            check_metric_name(name)?;
        }
        for (device, metrics) in &self.devices {
            check_device(device)?;
            for name in metrics.keys() {
                check_metric_name(name)?;
            }
        }
        Ok(())
    }

    /// Checks that a Kafka message key, when present, names this message's VM.
    pub fn check_key(&self, key: Option<&[u8]>) -> Result<(), WireError> {
        match key {
            Some(k) if k != self.tags.vm.as_bytes() => Err(WireError::KeyMismatch {
                key: String::from_utf8_lossy(k).into_owned(),
                vm: self.tags.vm.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Number of samples (metric values) the message carries.
    pub fn sample_count(&self) -> usize {
        self.metrics.len() + self.devices.values().map(BTreeMap::len).sum::<usize>()
    }
}

impl Tags {
    /// Tags from their values in field order: ns, mcis, vm, csp, region, os, host.
    pub fn from_strs(values: [&str; 7]) -> Self {
        let [ns, mcis, vm, csp, region, os, host] = values.map(str::to_owned);
        Self {
            ns,
            mcis,
            vm,
            csp,
            region,
            os,
            host,
        }
    }

    /// The tag values in field order, as [`Tags::from_strs`] takes them.
    pub fn strs(&self) -> [&str; 7] {
        [
            &self.ns,
            &self.mcis,
            &self.vm,
            &self.csp,
            &self.region,
            &self.os,
            &self.host,
        ]
        .map(String::as_str)
    }

    /// Checks required tags are present and every tag is a sane value.
    pub fn validate(&self) -> Result<(), WireError> {
        for (name, value, required) in [
            ("ns", &self.ns, true),
            ("mcis", &self.mcis, true),
            ("vm", &self.vm, true),
            ("csp", &self.csp, false),
            ("region", &self.region, false),
            ("os", &self.os, false),
            ("host", &self.host, false),
        ] {
            if required && value.is_empty() {
                return Err(WireError::EmptyTag(name));
            }
            if value.len() > MAX_TAG_LEN {
                return Err(WireError::BadTag(
                    name,
                    format!("longer than {MAX_TAG_LEN} bytes"),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(WireError::BadTag(
                    name,
                    "contains control characters".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a metric name: `^[a-z][a-z0-9_]*$`, at most [`MAX_METRIC_NAME_LEN`] bytes.
pub fn check_metric_name(name: &str) -> Result<(), WireError> {
    let mut bytes = name.bytes();
    let ok = name.len() <= MAX_METRIC_NAME_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(WireError::BadMetricName(name.to_owned()))
    }
}

/// Checks a device name: not empty, at most [`MAX_TAG_LEN`] bytes, no control characters.
pub fn check_device(device: &str) -> Result<(), WireError> {
    if device.is_empty() || device.len() > MAX_TAG_LEN || device.chars().any(char::is_control) {
        return Err(WireError::BadDevice(device.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "v": 1, "ts": 1_763_737_200_000_i64,
            "tags": {"ns": "ns01", "mcis": "web", "vm": "vm-1"},
            "metrics": {"cpu_utilization": 12.5}
        })
    }

    fn parse(v: &serde_json::Value) -> Result<MetricMessage, WireError> {
        MetricMessage::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn minimal_message_parses_with_default_tags() {
        let m = parse(&minimal()).unwrap();
        assert_eq!(m.tags.vm, "vm-1");
        assert_eq!(m.tags.csp, "");
        assert_eq!(m.sample_count(), 1);
    }

    #[test]
    fn round_trips_through_json() {
        let mut v = minimal();
        v["devices"] = serde_json::json!({"eth0": {"bytes_in": 10.0, "bytes_out": 20.0}});
        let m = parse(&v).unwrap();
        assert_eq!(MetricMessage::from_json(&m.to_json()).unwrap(), m);
        assert_eq!(m.sample_count(), 3);
    }

    #[test]
    fn rejections_say_why() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                {
                    let mut v = minimal();
                    v["v"] = 2.into();
                    v
                },
                "unsupported wire version 2",
            ),
            (
                {
                    let mut v = minimal();
                    v["tags"]["vm"] = "".into();
                    v
                },
                "tag `vm` is empty",
            ),
            (
                {
                    let mut v = minimal();
                    v["metrics"] = serde_json::json!({});
                    v
                },
                "no metrics",
            ),
            (
                {
                    let mut v = minimal();
                    v["metrics"] = serde_json::json!({"CPU": 1.0});
                    v
                },
                "metric name `CPU`",
            ),
            (
                {
                    let mut v = minimal();
                    v["metrics"]["x"] = "high".into();
                    v
                },
                "not a v1 metric message",
            ),
            (
                {
                    let mut v = minimal();
                    v["extra"] = 1.into();
                    v
                },
                "unknown field `extra`",
            ),
            (
                {
                    let mut v = minimal();
                    v["tags"]["ns"] = "a\u{7}b".into();
                    v
                },
                "control characters",
            ),
            (
                {
                    let mut v = minimal();
                    v["devices"] = serde_json::json!({"": {"bytes_in": 1.0}});
                    v
                },
                "device name",
            ),
        ];
        for (value, want) in cases {
            let err = parse(&value).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{value}: got `{err}`, want it to mention `{want}`"
            );
        }
    }

    #[test]
    fn non_finite_numbers_are_not_json() {
        let err = MetricMessage::from_json(
            br#"{"v":1,"ts":1,"tags":{"ns":"a","mcis":"b","vm":"c"},"metrics":{"x":NaN}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, WireError::Json(_)), "{err}");
        let err = MetricMessage::from_json(
            br#"{"v":1,"ts":1,"tags":{"ns":"a","mcis":"b","vm":"c"},"metrics":{"x":1e400}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, WireError::Json(_)), "{err}");
    }

    #[test]
    fn key_must_match_vm() {
        let m = parse(&minimal()).unwrap();
        assert!(m.check_key(Some(b"vm-1")).is_ok());
        assert!(m.check_key(None).is_ok());
        let err = m.check_key(Some(b"vm-2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "message key `vm-2` does not match tags.vm `vm-1`"
        );
    }
}
