//! A batch's accepted samples by dense ids, and the native v1 decoder that fills them without building a `MetricMessage`.
//!
//! Every VM (by its whole tag set) and every series (metric, device) of a batch gets a dense id
//! when it is first seen; a message is then its timestamp, its VM's id and a run of
//! (series id, value) pairs. The aggregate's hot path decodes native v1 JSON straight into that
//! form: keys are borrowed from the record, a series is looked up by comparing against the
//! message before (which usually lists the same series in the same order), and nothing is
//! allocated per sample. Anything that path does not accept plainly (another format, a rejection,
//! an escaped key, a duplicate) goes through [`crate::decode::decode`] instead, which has the
//! final word; the fast path only ever accepts what that would accept, with the same samples.

use std::borrow::Cow;
use std::fmt;

use damselfly_schemas::wire::{
    MAX_DEVICES, MAX_SAMPLES, WIRE_VERSION, check_device, check_metric_name,
};
use damselfly_schemas::{MetricMessage, Tags};
use hashbrown::HashTable;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};

use crate::rates::rate_name;

/// A batch's distinct VMs (by tags) and series (metric, device) as dense ids.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ids {
    hasher: ahash::RandomState,
    /// Per VM id: its tags.
    pub(crate) vms: Vec<Tags>,
    vm_table: HashTable<u32>,
    /// Per series id: (metric, device); device is "" for device-less metrics.
    pub(crate) series: Vec<(Box<str>, Box<str>)>,
    series_table: HashTable<u32>,
    /// Per series: the id of its derived rate series, for counters.
    pub(crate) rate_of: Vec<Option<u32>>,
}

/// Sort ranks of a batch's ids.
pub(crate) struct Ranks {
    /// Per VM id: rank of its `vm` tag (equal tags, equal rank).
    vm: Vec<u32>,
    /// Per VM id: rank of its whole tag set.
    pub(crate) tags: Vec<u32>,
    /// Per series id: rank of (metric, device).
    series: Vec<u32>,
}

impl Ids {
    /// The id of a VM's tags, if the batch has seen them.
    fn find_vm(&self, tags: [&str; 7]) -> Option<u32> {
        let hash = self.hasher.hash_one(tags);
        self.vm_table
            .find(hash, |&id| self.vms[id as usize].strs() == tags)
            .copied()
    }

    /// The id of a VM's tags, added if new.
    fn vm(&mut self, tags: &Tags) -> u32 {
        if let Some(id) = self.find_vm(tags.strs()) {
            return id;
        }
        let id = self.vms.len() as u32;
        self.vms.push(tags.clone());
        let (vms, hasher) = (&self.vms, &self.hasher);
        self.vm_table
            .insert_unique(hasher.hash_one(tags.strs()), id, |&i| {
                hasher.hash_one(vms[i as usize].strs())
            });
        id
    }

    /// Whether series `sid` is (metric, device).
    fn is(&self, sid: u32, metric: &str, device: &str) -> bool {
        let (m, d) = &self.series[sid as usize];
        same(m.as_bytes(), metric.as_bytes()) && same(d.as_bytes(), device.as_bytes())
    }

    /// The id of a series, added (with its rate series, for a counter) if new.
    pub(crate) fn series(&mut self, metric: &str, device: &str) -> u32 {
        let hash = self.hasher.hash_one((metric, device));
        if let Some(&id) = self
            .series_table
            .find(hash, |&id| self.is(id, metric, device))
        {
            return id;
        }
        let id = self.series.len() as u32;
        self.series.push((metric.into(), device.into()));
        let (series, hasher) = (&self.series, &self.hasher);
        self.series_table.insert_unique(hash, id, |&i| {
            let (m, d) = &series[i as usize];
            hasher.hash_one((&**m, &**d))
        });
        self.rate_of.push(None);
        // A rate series is not a counter itself, so this recursion stops at one level.
        if let Some(rate) = rate_name(metric) {
            self.rate_of[id as usize] = Some(self.series(rate, device));
        }
        id
    }

    /// The sort ranks of the VMs and series seen so far.
    pub(crate) fn ranks(&self) -> Ranks {
        fn rank<T: Ord>(keys: &[T]) -> Vec<u32> {
            let mut order: Vec<u32> = (0..keys.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
            let mut ranks = vec![0; keys.len()];
            let mut r = 0;
            for (i, w) in order.iter().enumerate() {
                if i > 0 && keys[order[i - 1] as usize] != keys[*w as usize] {
                    r += 1;
                }
                ranks[*w as usize] = r;
            }
            ranks
        }
        let vm_names: Vec<&str> = self.vms.iter().map(|t| t.vm.as_str()).collect();
        Ranks {
            vm: rank(&vm_names),
            tags: rank(&self.vms),
            series: rank(&self.series),
        }
    }
}

/// Byte equality for the short names compared once or twice per sample, without a `memcmp` call
/// (which the profile showed costing more than the comparison).
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    match a.len() {
        n if n != b.len() => false,
        n if n < 8 => a.iter().zip(b).all(|(x, y)| x == y),
        n => {
            // Whole words, then the last word (overlapping the one before it).
            (0..n / 8).all(|k| word(a, 8 * k) == word(b, 8 * k)) && word(a, n - 8) == word(b, n - 8)
        }
    }
}

impl Ranks {
    /// The (vm, metric, device) part of the table order as one integer.
    pub(crate) fn series_of(&self, vm: u32, sid: u32) -> u64 {
        (u64::from(self.vm[vm as usize]) << 32) | u64::from(self.series[sid as usize])
    }
}

/// One accepted message: its time, its VM and where its samples lie in [`Accepted::samples`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Msg {
    /// Collection time (ms).
    pub(crate) ts: i64,
    /// VM id.
    pub(crate) vm: u32,
    /// First sample's index.
    pub(crate) start: u32,
    /// One past the last sample's index.
    pub(crate) end: u32,
}

/// A batch's accepted messages by ids.
#[derive(Debug, Clone, Default)]
pub(crate) struct Accepted {
    /// The VMs and series the messages refer to.
    pub(crate) ids: Ids,
    /// The messages in arrival order.
    pub(crate) msgs: Vec<Msg>,
    /// Every message's (series id, value) pairs, one run per message.
    pub(crate) samples: Vec<(u32, f64)>,
    /// Per series id: the fast path's attempt that last listed it (to catch a duplicate name).
    seen: Vec<u32>,
    /// Fast-path attempts so far.
    attempts: u32,
    /// Per VM id: 1 + the index of its latest message (0: none yet).
    last_of_vm: Vec<u32>,
}

impl Accepted {
    /// The (series id, value) pairs of a message.
    pub(crate) fn samples_of(&self, m: &Msg) -> &[(u32, f64)] {
        &self.samples[m.start as usize..m.end as usize]
    }

    /// Adds a decoded message.
    pub(crate) fn add(&mut self, msg: &MetricMessage) {
        let vm = self.ids.vm(&msg.tags);
        let start = self.samples.len() as u32;
        for (device, metric, value) in crate::batch::samples(msg) {
            let sid = self.ids.series(metric, device);
            self.samples.push((sid, value));
        }
        self.push_msg(msg.ts, vm, start);
    }

    fn push_msg(&mut self, ts: i64, vm: u32, start: u32) {
        let end = self.samples.len() as u32;
        self.msgs.push(Msg { ts, vm, start, end });
        self.last_of_vm.resize(self.ids.vms.len(), 0);
        self.last_of_vm[vm as usize] = self.msgs.len() as u32;
    }

    /// The samples of a VM's latest message, if it has one.
    fn latest_of(&self, vm: u32) -> Option<std::ops::Range<usize>> {
        let i = *self.last_of_vm.get(vm as usize)?;
        let m = self.msgs.get((i as usize).checked_sub(1)?)?;
        Some(m.start as usize..m.end as usize)
    }

    /// Adds a record's value if it is a native v1 message that [`crate::decode::decode`] would
    /// accept, keyed `key`, with a timestamp within `window` (oldest, newest; ms). Returns false,
    /// having added nothing, for anything else: the caller then decodes it the general way.
    pub(crate) fn add_native(
        &mut self,
        value: &[u8],
        key: Option<&[u8]>,
        window: (i64, i64),
    ) -> bool {
        let start = self.samples.len();
        let ok = self.parse_native(value, key, window).is_some();
        if !ok {
            self.samples.truncate(start);
        }
        ok
    }

    fn parse_native(&mut self, value: &[u8], key: Option<&[u8]>, window: (i64, i64)) -> Option<()> {
        self.attempts = self.attempts.wrapping_add(1);
        if self.attempts == 0 {
            // Stamps wrapped: forget them rather than mistake an old one for this attempt's.
            self.seen.fill(0);
            self.attempts = 1;
        }
        // Series that `add` brought in have no stamp slot yet.
        self.seen.resize(self.ids.series.len(), 0);
        let start = self.samples.len();
        let prev = self
            .msgs
            .last()
            .map_or(0..0, |m| m.start as usize..m.end as usize);
        let mut de = serde_json::Deserializer::from_slice(value);
        let head = NativeSeed {
            acc: self,
            start,
            prev,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        let (v, ts, tags) = (head.v?, head.ts?, head.tags?);
        let tags = tags.strs();
        let in_window = window.0 <= ts && ts <= window.1;
        let key_ok = key.is_none_or(|k| k == tags[2].as_bytes());
        if v != WIRE_VERSION || self.samples.len() == start || !in_window || !key_ok {
            return None;
        }
        let vm = match head.vm {
            Some(vm) => vm,
            None => {
                let owned = Tags::from_strs(tags);
                owned.validate().ok()?;
                self.ids.vm(&owned)
            }
        };
        self.push_msg(ts, vm, start as u32);
        Some(())
    }

    /// Adds one sample of the message being parsed; false if its name or device is invalid or the
    /// message already listed it.
    fn sample(&mut self, at: &Cursor, metric: &str, device: &str, value: f64) -> bool {
        let j = self.samples.len() - at.start;
        if j >= MAX_SAMPLES {
            // Over the message's limit: the general decoder rejects it, with the reason.
            return false;
        }
        let sid = match at.prev.clone().nth(j) {
            Some(p) if self.ids.is(self.samples[p].0, metric, device) => self.samples[p].0,
            _ => {
                // Not where the message before had it: check the name (the caller checked the
                // device), then look it up.
                if check_metric_name(metric).is_err() {
                    return false;
                }
                let sid = self.ids.series(metric, device);
                self.seen.resize(self.ids.series.len(), 0);
                sid
            }
        };
        if std::mem::replace(&mut self.seen[sid as usize], self.attempts) == self.attempts {
            return false;
        }
        self.samples.push((sid, value));
        true
    }
}

/// Where the message being parsed starts, and the samples of the message it is compared with.
#[derive(Clone)]
struct Cursor {
    start: usize,
    prev: std::ops::Range<usize>,
}

/// A VM's tags as they appear in a record, borrowed where the JSON has no escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsRef<'a> {
    #[serde(borrow)]
    ns: Cow<'a, str>,
    #[serde(borrow)]
    mcis: Cow<'a, str>,
    #[serde(borrow)]
    vm: Cow<'a, str>,
    #[serde(borrow, default)]
    csp: Cow<'a, str>,
    #[serde(borrow, default)]
    region: Cow<'a, str>,
    #[serde(borrow, default)]
    os: Cow<'a, str>,
    #[serde(borrow, default)]
    host: Cow<'a, str>,
}

impl TagsRef<'_> {
    /// The tags as strings in field order, as [`Tags::strs`] gives them.
    fn strs(&self) -> [&str; 7] {
        [
            &self.ns,
            &self.mcis,
            &self.vm,
            &self.csp,
            &self.region,
            &self.os,
            &self.host,
        ]
        .map(|t| &**t)
    }
}

/// The message's fields other than its samples, which go straight into [`Accepted`].
struct Head<'a> {
    v: Option<u32>,
    ts: Option<i64>,
    tags: Option<TagsRef<'a>>,
    /// The id of the tags, when the batch already has them.
    vm: Option<u32>,
}

/// Parses a whole native message.
struct NativeSeed<'s> {
    acc: &'s mut Accepted,
    start: usize,
    prev: std::ops::Range<usize>,
}

/// Parses a `{name: value}` object of one device ("" for `metrics`).
struct MetricsSeed<'s, 'd> {
    acc: &'s mut Accepted,
    at: Cursor,
    device: &'d str,
}

/// Parses the `devices` object.
struct DevicesSeed<'s> {
    acc: &'s mut Accepted,
    at: Cursor,
}

/// The error a fast-path visitor gives up with; the general decoder then says what is wrong.
fn give_up<E: de::Error>() -> E {
    E::custom("not for the fast path")
}

impl<'de> DeserializeSeed<'de> for NativeSeed<'_> {
    type Value = Head<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NativeSeed<'_> {
    type Value = Head<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a native v1 metric message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut at = Cursor {
            start: self.start,
            prev: self.prev,
        };
        let mut head = Head {
            v: None,
            ts: None,
            tags: None,
            vm: None,
        };
        let (mut metrics, mut devices) = (false, false);
        while let Some(key) = map.next_key::<&'de str>()? {
            let seen = match key {
                "v" => head.v.replace(map.next_value()?).is_some(),
                "ts" => head.ts.replace(map.next_value()?).is_some(),
                "tags" => {
                    let tags: TagsRef<'de> = map.next_value()?;
                    // A VM usually lists the same series as its message before: when the tags
                    // come first (as we write them), compare against that message.
                    head.vm = self.acc.ids.find_vm(tags.strs());
                    if let Some(prev) = head.vm.and_then(|vm| self.acc.latest_of(vm)) {
                        at.prev = prev;
                    }
                    head.tags.replace(tags).is_some()
                }
                "metrics" => {
                    map.next_value_seed(MetricsSeed {
                        acc: &mut *self.acc,
                        at: at.clone(),
                        device: "",
                    })?;
                    std::mem::replace(&mut metrics, true)
                }
                "devices" => {
                    map.next_value_seed(DevicesSeed {
                        acc: &mut *self.acc,
                        at: at.clone(),
                    })?;
                    std::mem::replace(&mut devices, true)
                }
                _ => true,
            };
            if seen {
                // A repeated or unknown field: the general decoder rejects it.
                return Err(give_up());
            }
        }
        Ok(head)
    }
}

impl<'de> DeserializeSeed<'de> for MetricsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MetricsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("metric names to numbers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(metric) = map.next_key::<&'de str>()? {
            let value: f64 = map.next_value()?;
            if !self.acc.sample(&self.at, metric, self.device, value) {
                return Err(give_up());
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for DevicesSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DevicesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("devices to metric objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut devices: Vec<&'de str> = Vec::new();
        while let Some(device) = map.next_key::<&'de str>()? {
            // A repeated device replaces the earlier one in the general decoder's map; too many
            // devices are the general decoder's to reject (and would make this check quadratic).
            if devices.len() >= MAX_DEVICES
                || check_device(device).is_err()
                || devices.contains(&device)
            {
                return Err(give_up());
            }
            devices.push(device);
            map.next_value_seed(MetricsSeed {
                acc: &mut *self.acc,
                at: self.at.clone(),
                device,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::{InputRecord, Validation, decode};

    const T0: i64 = 1_763_737_200_000;

    /// A message as plain values: tags, ts, and its samples sorted by (metric, device).
    type Expanded = (Tags, i64, Vec<(String, String, u64)>);

    fn expand(acc: &Accepted) -> Vec<Expanded> {
        acc.msgs
            .iter()
            .map(|m| {
                let mut samples: Vec<_> = acc
                    .samples_of(m)
                    .iter()
                    .map(|&(sid, v)| {
                        let (metric, device) = &acc.ids.series[sid as usize];
                        (metric.to_string(), device.to_string(), v.to_bits())
                    })
                    .collect();
                samples.sort();
                (acc.ids.vms[m.vm as usize].clone(), m.ts, samples)
            })
            .collect()
    }

    /// Pushes each value through the fast path (when it takes it) and through the general
    /// decoder, into two batches; returns which values the fast path took.
    fn both(values: &[Vec<u8>], key: Option<&[u8]>) -> (Vec<bool>, Accepted, Accepted) {
        let limits = Validation::default();
        let (mut fast, mut slow) = (Accepted::default(), Accepted::default());
        let mut took = Vec::new();
        for v in values {
            let rec = InputRecord {
                topic: "metrics",
                partition: 0,
                offset: 0,
                timestamp_ms: T0,
                key,
                value: Some(v),
            };
            let general = decode(&rec, T0, &limits);
            let ok = fast.add_native(v, key, limits.window(T0));
            took.push(ok);
            if let Ok(messages) = &general {
                for m in messages {
                    slow.add(m);
                    if !ok {
                        fast.add(m);
                    }
                }
            }
            assert!(
                !ok || general.is_ok(),
                "fast path took what the decoder rejects ({:?}): {}",
                general.err(),
                String::from_utf8_lossy(v)
            );
        }
        (took, fast, slow)
    }

    fn message(tags: &str, body: &str) -> Vec<u8> {
        format!(r#"{{"v":1,"ts":{T0},"tags":{{{tags}}},{body}}}"#).into_bytes()
    }

    const TAGS: &str = r#""ns":"n","mcis":"m","vm":"vm-1""#;

    #[test]
    fn plain_messages_take_the_fast_path_and_give_what_the_decoder_gives() {
        let values = [
            message(
                TAGS,
                r#""metrics":{"cpu_utilization":1.5,"mem_used":2},"devices":{"eth0":{"bytes_in":10,"bytes_out":1e3},"/":{"disk_used":7}}"#,
            ),
            // The same series in another order, one missing, one new.
            message(
                TAGS,
                r#""devices":{"/":{"disk_used":8},"eth0":{"bytes_out":3,"bytes_in":11}},"metrics":{"mem_used":3,"load1":0.25}"#,
            ),
            // Fields in another order, every tag, one escaped.
            format!(
                r#"{{"metrics":{{"cpu_utilization":-0.0}},"tags":{{"host":"h\u00e9","os":"linux","region":"r","csp":"aws","vm":"vm-2","mcis":"m","ns":"n"}},"ts":{T0},"v":1}}"#
            )
            .into_bytes(),
        ];
        let (took, fast, slow) = both(&values, None);
        assert_eq!(took, [true, true, true]);
        assert_eq!(expand(&fast), expand(&slow));
        assert_eq!(fast.samples.len(), 11);
        assert_eq!(fast.ids.vms[1].host, "hé");
    }

    #[test]
    fn what_the_fast_path_leaves_to_the_decoder() {
        let refused = [
            // Rejections: the decoder names the reason.
            message(TAGS, r#""metrics":{}"#),
            message(TAGS, r#""devices":{"eth0":{}}"#),
            message(TAGS, r#""metrics":{"Bad":1}"#),
            message(TAGS, r#""devices":{"":{"bytes_in":1}}"#),
            message(r#""ns":"","mcis":"m","vm":"vm-1""#, r#""metrics":{"a":1}"#),
            message(TAGS, r#""metrics":{"a":1},"extra":1"#),
            message(TAGS, r#""metrics":{"a":1},"metrics":{"b":1}"#),
            message(TAGS, r#""metrics":{"a":null}"#),
            message(TAGS, r#""metrics":{"a":"1"}"#),
            message(TAGS, r#""metrics":null"#),
            br#"{"v":2,"ts":1763737200000,"tags":{"ns":"n","mcis":"m","vm":"v"},"metrics":{"a":1}}"#.to_vec(),
            br#"{"v":1,"ts":1.5,"tags":{"ns":"n","mcis":"m","vm":"v"},"metrics":{"a":1}}"#.to_vec(),
            br#"{"v":1,"ts":0,"tags":{"ns":"n","mcis":"m","vm":"v"},"metrics":{"a":1}}"#.to_vec(),
            br#"{"v":1,"tags":{"ns":"n","mcis":"m","vm":"v"},"metrics":{"a":1}}"#.to_vec(),
            [message(TAGS, r#""metrics":{"a":1}"#), b" x".to_vec()].concat(),
            b"mem,ns=n,mcis=m,vm=v used=1i 1763737200000000000".to_vec(),
            // Accepted by the decoder, but not plainly: a repeated name or device (the last one
            // wins there), an escaped name.
            message(TAGS, r#""metrics":{"a":1,"a":2}"#),
            message(TAGS, r#""devices":{"eth0":{"a":1},"eth0":{"b":2}}"#),
            message(TAGS, r#""metrics":{"\u0061":1}"#),
        ];
        let (took, fast, slow) = both(&refused, None);
        assert_eq!(took, vec![false; refused.len()]);
        assert_eq!(expand(&fast), expand(&slow));
        let accepted: Vec<usize> = expand(&slow).iter().map(|m| m.2.len()).collect();
        // The line-protocol record and the three the fast path only declines.
        assert_eq!(accepted, [1, 1, 1, 1]);

        // A key that names another VM.
        let (took, ..) = both(&[message(TAGS, r#""metrics":{"a":1}"#)], Some(b"vm-9"));
        assert_eq!(took, [false]);
        let (took, ..) = both(&[message(TAGS, r#""metrics":{"a":1}"#)], Some(b"vm-1"));
        assert_eq!(took, [true]);
    }

    /// A message's JSON from generated parts, its fields and entries in the given orders.
    fn json_of(
        vm: usize,
        dt: i64,
        metrics: &[(usize, f64)],
        devices: &[(usize, Vec<(usize, f64)>)],
        fields_reversed: bool,
    ) -> Vec<u8> {
        const NAMES: [&str; 5] = ["cpu_utilization", "bytes_in", "mem_used", "load1", "ops"];
        const DEVICES: [&str; 3] = ["eth0", "/", "sda"];
        let obj = |ms: &[(usize, f64)]| {
            let entries: Vec<String> = ms
                .iter()
                .map(|(n, v)| format!(r#""{}":{v:?}"#, NAMES[n % NAMES.len()]))
                .collect();
            format!("{{{}}}", entries.join(","))
        };
        let devs: Vec<String> = devices
            .iter()
            .map(|(d, ms)| format!(r#""{}":{}"#, DEVICES[d % DEVICES.len()], obj(ms)))
            .collect();
        let mut fields = [
            r#""v":1"#.to_owned(),
            format!(r#""ts":{}"#, T0 + dt),
            format!(
                r#""tags":{{"ns":"n","mcis":"m","vm":"vm-{vm}","csp":"c{}"}}"#,
                vm % 2
            ),
            format!(r#""metrics":{}"#, obj(metrics)),
            format!(r#""devices":{{{}}}"#, devs.join(",")),
        ];
        if fields_reversed {
            fields.reverse();
        }
        format!("{{{}}}", fields.join(",")).into_bytes()
    }

    fn sample_list() -> impl Strategy<Value = Vec<(usize, f64)>> {
        proptest::collection::vec((0usize..5, -1e3f64..1e3), 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Over sequences of messages whose series come and go, repeat and reorder, the batch the
        /// fast path builds holds exactly what the general decoder's would.
        #[test]
        fn the_fast_path_agrees_with_the_decoder(
            msgs in proptest::collection::vec(
                (
                    0usize..3,
                    -600_000i64..600_000,
                    sample_list(),
                    proptest::collection::vec((0usize..3, sample_list()), 0..3),
                    any::<bool>(),
                ),
                1..12,
            ),
        ) {
            let values: Vec<Vec<u8>> = msgs
                .iter()
                .map(|(vm, dt, ms, ds, rev)| json_of(*vm, *dt, ms, ds, *rev))
                .collect();
            let (_, fast, slow) = both(&values, None);
            prop_assert_eq!(expand(&fast), expand(&slow));
        }

        /// `same` is byte equality, on either side of the 8-byte word size.
        #[test]
        fn same_is_byte_equality(
            a in proptest::collection::vec(0u8..4, 0..20),
            b in proptest::collection::vec(0u8..4, 0..20),
        ) {
            prop_assert_eq!(same(&a, &b), a == b);
            prop_assert!(same(&a, &a.clone()));
        }

        /// Whatever a byte-level mutation of a message does, the fast path never takes a record
        /// the decoder would reject, and takes what it does take with the same samples.
        #[test]
        fn mutated_messages_never_slip_through(
            ms in sample_list(),
            ds in proptest::collection::vec((0usize..3, sample_list()), 0..3),
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), prop::sample::select(br#"{}[]",:0-9.eEaz\ u"#.to_vec())),
                1..4,
            ),
        ) {
            let mut v = json_of(1, 0, &ms, &ds, false);
            for (at, byte) in edits {
                let i = at.index(v.len());
                v[i] = byte;
            }
            let (_, fast, slow) = both(&[v], None);
            prop_assert_eq!(expand(&fast), expand(&slow));
        }
    }
}
