//! One topic-partition's share of a batch: accepted messages, rejected records, and the lake objects they become.

use std::collections::BTreeMap;

use base64::Engine as _;
use damselfly_schemas::paths::{HourPartition, batch_object_key};
use damselfly_schemas::{MetricMessage, Table};

use crate::accepted::{Accepted, Ids, Ranks};
use crate::decode::{InputRecord, Rejection, Validation, decode};
use crate::encode::{self, EncodeError, RawRow, RollupKey};
use crate::rates::{Tail, advance};
use crate::rollup::{Partial, minute_of};

/// A record that went to the dead-letter table, with why and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DlqRow {
    /// Kafka record timestamp (ms); decides the row's hour partition.
    pub received_at_ms: i64,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record key, lossily decoded as UTF-8.
    pub key: Option<String>,
    /// Why the record was rejected.
    pub reason: String,
    /// The record value, base64-encoded, so nothing is lost.
    pub raw_base64: String,
}

/// Counts describing a processed batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchStats {
    /// Records seen.
    pub records: u64,
    /// Samples (metric values) accepted into `raw`.
    pub samples: u64,
    /// Records sent to the dead-letter table.
    pub rejected: u64,
}

impl std::ops::AddAssign for BatchStats {
    fn add_assign(&mut self, o: Self) {
        self.records += o.records;
        self.samples += o.samples;
        self.rejected += o.rejected;
    }
}

/// One object to write to the lake: its key relative to the lake root and its Parquet bytes.
#[derive(Debug, Clone)]
pub struct LakeObject {
    /// The table the object belongs to.
    pub table: Table,
    /// Key relative to the lake root.
    pub key: String,
    /// Parquet file contents.
    pub bytes: bytes::Bytes,
    /// Rows in the file.
    pub rows: usize,
}

/// The records of one topic-partition in one batch, decoded.
#[derive(Debug, Clone)]
pub struct PartitionBatch {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset of the first record seen; names every object this batch writes.
    pub first_offset: Option<i64>,
    /// Offset of the last record seen.
    pub last_offset: Option<i64>,
    /// Rejected records.
    pub dlq: Vec<DlqRow>,
    /// Accepted messages, by ids.
    accepted: Accepted,
}

impl PartitionBatch {
    /// An empty batch for one topic-partition.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
            first_offset: None,
            last_offset: None,
            dlq: Vec::new(),
            accepted: Accepted::default(),
        }
    }

    /// Decodes a record into the batch, or files it in the dead-letter rows with the reason.
    pub fn push(&mut self, rec: &InputRecord<'_>, now_ms: i64, limits: &Validation) {
        // Most records are plain native messages, decoded straight into ids; the rest (other
        // formats, and anything to reject) take the general decoder, which has the final word.
        let fast = rec.value.is_some_and(|v| {
            v.len() <= limits.max_message_bytes
                && self.accepted.add_native(v, rec.key, limits.window(now_ms))
        });
        if fast {
            self.track(rec.offset);
            return;
        }
        match decode(rec, now_ms, limits) {
            Ok(messages) => {
                self.track(rec.offset);
                for m in &messages {
                    self.accepted.add(m);
                }
            }
            Err(why) => self.reject(rec, &why),
        }
    }

    /// Files a record in the dead-letter rows.
    pub fn reject(&mut self, rec: &InputRecord<'_>, why: &Rejection) {
        self.track(rec.offset);
        tracing::debug!(topic = rec.topic, partition = rec.partition, offset = rec.offset, reason = %why, "record rejected");
        self.dlq.push(DlqRow {
            received_at_ms: rec.timestamp_ms,
            topic: rec.topic.to_owned(),
            partition: rec.partition,
            offset: rec.offset,
            key: rec.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            reason: why.to_string(),
            raw_base64: base64::engine::general_purpose::STANDARD
                .encode(rec.value.unwrap_or_default()),
        });
    }

    fn track(&mut self, offset: i64) {
        self.first_offset.get_or_insert(offset);
        self.last_offset = Some(offset);
    }

    /// What this batch holds.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            records: (self.accepted.msgs.len() + self.dlq.len()) as u64,
            samples: self.accepted.samples.len() as u64,
            rejected: self.dlq.len() as u64,
        }
    }

    /// Encodes the batch into lake objects: per table, one Parquet file per hour partition,
    /// named deterministically by topic, partition and first offset. `tail` holds the last sample
    /// of every counter series before this batch and is advanced past it; counters' rates are
    /// rolled up as `{counter}_rate` series.
    pub fn objects(&self, tail: &mut Tail) -> Result<Vec<LakeObject>, EncodeError> {
        let Some(first_offset) = self.first_offset else {
            return Ok(Vec::new());
        };
        let key =
            |table, hour| batch_object_key(table, hour, &self.topic, self.partition, first_offset);
        let mut out = Vec::new();

        // Records were decoded into dense ids (see `accepted`): the rows and rollup windows are
        // keyed by them and sorted by ranks.
        let acc = &self.accepted;
        let (raw, mut rollups) = rows_and_windows(acc)?;
        let ranks = acc.ids.ranks();
        roll_up_rates(acc, &ranks, tail, &mut rollups)?;
        for (hour, rows) in raw {
            out.push(LakeObject {
                table: Table::Raw,
                key: key(Table::Raw, hour),
                bytes: raw_parquet(&acc.ids, &ranks, &rows)?,
                rows: rows.len(),
            });
        }
        for (hour, windows) in rollups {
            let rows = windows.len();
            out.push(LakeObject {
                table: Table::Rollup1m,
                key: key(Table::Rollup1m, hour),
                bytes: rollup_parquet(&acc.ids, &ranks, windows)?,
                rows,
            });
        }
        let mut dlq: BTreeMap<HourPartition, Vec<&DlqRow>> = BTreeMap::new();
        for row in &self.dlq {
            dlq.entry(hour_of(row.received_at_ms)?)
                .or_default()
                .push(row);
        }
        for (hour, rows) in dlq {
            out.push(LakeObject {
                table: Table::Dlq,
                key: key(Table::Dlq, hour),
                bytes: encode::dlq_parquet(&rows)?,
                rows: rows.len(),
            });
        }
        Ok(out)
    }
}

/// A batch's `raw` rows by hour partition, in batch order.
type RowsByHour = BTreeMap<HourPartition, Vec<Row>>;

/// A batch's `rollup_1m` windows by hour partition.
type WindowsByHour = BTreeMap<HourPartition, ahash::AHashMap<Window, Partial>>;

/// Files every accepted sample as a `raw` row and into its `rollup_1m` window, by hour partition.
fn rows_and_windows(acc: &Accepted) -> Result<(RowsByHour, WindowsByHour), EncodeError> {
    // Sized up front: a batch is mostly one hour, and growing these was a few percent.
    let sample_count = acc.samples.len();
    let windows_cap = sample_count.min(1 << 16);
    let mut raw: RowsByHour = BTreeMap::new();
    let mut rollups: WindowsByHour = BTreeMap::new();
    for msg in &acc.msgs {
        let (vm, ts) = (msg.vm, msg.ts);
        let hour = hour_of(ts)?;
        let window = minute_of(ts);
        let rows = raw
            .entry(hour)
            .or_insert_with(|| Vec::with_capacity(sample_count));
        let windows = rollups
            .entry(hour_of(window)?)
            .or_insert_with(|| ahash::AHashMap::with_capacity(windows_cap));
        for &(sid, value) in acc.samples_of(msg) {
            rows.push(Row { vm, sid, ts, value });
            let p = Partial::of(ts, value);
            windows
                .entry((vm, sid, window))
                .and_modify(|acc| acc.merge(&p))
                .or_insert(p);
        }
    }
    Ok((raw, rollups))
}

/// Rolls the rates of every counter series up into `rollups`, continuing from `tail`, and
/// advances `tail` past the batch.
fn roll_up_rates(
    acc: &Accepted,
    ranks: &Ranks,
    tail: &mut Tail,
    rollups: &mut WindowsByHour,
) -> Result<(), EncodeError> {
    // Every counter series in time order, continuing from the tail, which is read once per
    // series before and written once after.
    let ids = &acc.ids;
    let mut by_time: Vec<usize> = (0..acc.msgs.len()).collect();
    by_time.sort_by_key(|&i| acc.msgs[i].ts);
    // A tail series is named by the `vm` tag, not the whole tag set: keyed by rank, the VMs
    // whose other tags changed within the batch share one.
    let mut lasts: ahash::AHashMap<u64, (u32, u32, LastSample)> = Default::default();
    for i in by_time {
        let msg = &acc.msgs[i];
        let window = minute_of(msg.ts);
        for &(sid, value) in acc.samples_of(msg) {
            let Some(rate_sid) = ids.rate_of[sid as usize] else {
                continue;
            };
            let (_, _, last) = lasts
                .entry(ranks.series_of(msg.vm, sid))
                .or_insert_with(|| {
                    let (vm, metric, device) = series_name(ids, msg.vm, sid);
                    (msg.vm, sid, tail.last(vm, metric, device))
                });
            let Some(r) = advance(last, msg.ts, value) else {
                continue;
            };
            let p = Partial::of(msg.ts, r);
            rollups
                .entry(hour_of(window)?)
                .or_default()
                .entry((msg.vm, rate_sid, window))
                .and_modify(|acc| acc.merge(&p))
                .or_insert(p);
        }
    }
    for (vm, sid, last) in lasts.into_values() {
        if let Some(last) = last {
            let (vm, metric, device) = series_name(ids, vm, sid);
            tail.set(vm, metric, device, last);
        }
    }
    Ok(())
}

/// A series' name as the tail keys it: (`vm` tag, metric, device).
#[inline]
fn series_name(ids: &Ids, vm: u32, sid: u32) -> (&str, &str, &str) {
    let (metric, device) = &ids.series[sid as usize];
    (ids.vms[vm as usize].vm.as_str(), metric, device)
}

/// Encodes one hour's `raw` rows in table order (vm, metric, device, ts); equal keys keep the
/// batch's order.
fn raw_parquet(ids: &Ids, ranks: &Ranks, rows: &[Row]) -> Result<bytes::Bytes, EncodeError> {
    let mut order: Vec<(u64, i64, u32)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (ranks.series_of(r.vm, r.sid), r.ts, i as u32))
        .collect();
    order.sort_unstable();
    let rows: Vec<RawRow<'_>> = order
        .iter()
        .map(|o| {
            let r = &rows[o.2 as usize];
            let (metric, device) = &ids.series[r.sid as usize];
            RawRow {
                tags: &ids.vms[r.vm as usize],
                metric,
                device,
                ts: r.ts,
                value: r.value,
            }
        })
        .collect();
    encode::raw_parquet(&rows)
}

/// Encodes one hour's `rollup_1m` windows in table order (vm, metric, device, window_start),
/// then the rest of the tags.
fn rollup_parquet(
    ids: &Ids,
    ranks: &Ranks,
    windows: ahash::AHashMap<Window, Partial>,
) -> Result<bytes::Bytes, EncodeError> {
    let windows: Vec<(Window, Partial)> = windows.into_iter().collect();
    // The sort moves small keys, not the partials.
    let mut order: Vec<(u64, i64, u32, u32)> = windows
        .iter()
        .enumerate()
        .map(|(i, &((vm, sid, start), _))| {
            let tags = ranks.tags[vm as usize];
            (ranks.series_of(vm, sid), start, tags, i as u32)
        })
        .collect();
    order.sort_unstable();
    let windows: Vec<(RollupKey<'_>, Partial)> = order
        .iter()
        .map(|o| {
            let ((vm, sid, start), p) = windows[o.3 as usize];
            let (metric, device) = &ids.series[sid as usize];
            (
                RollupKey::new(&ids.vms[vm as usize], metric, device, start),
                p,
            )
        })
        .collect();
    encode::rollup_parquet(windows.iter().map(|(k, p)| (k, p)))
}

/// A `raw` row of a batch by ids: the VM and series are indices into [`Ids`].
struct Row {
    vm: u32,
    sid: u32,
    ts: i64,
    value: f64,
}

/// A counter series' last sample (ts ms, value), if it has one.
type LastSample = Option<(i64, f64)>;

/// A `rollup_1m` window of a batch by ids: (VM, series, window start).
type Window = (u32, u32, i64);

/// Every sample of a message as (device, metric, value); device is "" for device-less metrics.
pub fn samples(msg: &MetricMessage) -> impl Iterator<Item = (&str, &str, f64)> {
    let plain = msg.metrics.iter().map(|(m, v)| ("", m.as_str(), *v));
    let per_device = msg
        .devices
        .iter()
        .flat_map(|(d, ms)| ms.iter().map(move |(m, v)| (d.as_str(), m.as_str(), *v)));
    plain.chain(per_device)
}

fn hour_of(ts_ms: i64) -> Result<HourPartition, EncodeError> {
    HourPartition::of_millis(ts_ms).ok_or(EncodeError::TimestampOutOfRange(ts_ms))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow_array::cast::AsArray as _;
    use arrow_array::types::TimestampMillisecondType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use proptest::prelude::*;

    use super::*;
    use crate::encode::PartialColumns;
    use crate::rollup::Partial;

    const T0: i64 = 1_763_737_200_000;

    type Series = (String, String, String, i64);

    /// Reads every `rollup_1m` object back and merges the partials per (vm, metric, device, window).
    fn merged_rollups(objects: &[LakeObject], into: &mut BTreeMap<Series, Partial>) {
        for o in objects.iter().filter(|o| o.table == Table::Rollup1m) {
            let reader = ParquetRecordBatchReaderBuilder::try_new(o.bytes.clone())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
                let t = |n: &str| {
                    b.column_by_name(n)
                        .unwrap()
                        .as_primitive::<TimestampMillisecondType>()
                        .clone()
                };
                let (vm, metric, device) = (s("vm"), s("metric"), s("device"));
                let window = t("window_start");
                let partials = PartialColumns::of(&b).unwrap();
                for i in 0..b.num_rows() {
                    let p = partials.get(i);
                    let key = (
                        vm.value(i).to_owned(),
                        metric.value(i).to_owned(),
                        device.value(i).to_owned(),
                        window.value(i),
                    );
                    into.entry(key).and_modify(|acc| acc.merge(&p)).or_insert(p);
                }
            }
        }
    }

    /// Pushes one record of partition 0 at `offset`, received at `T0`.
    fn push_at(batch: &mut PartitionBatch, offset: usize, value: &str) {
        let rec = InputRecord {
            topic: "metrics",
            partition: 0,
            offset: offset as i64,
            timestamp_ms: T0,
            key: None,
            value: Some(value.as_bytes()),
        };
        batch.push(&rec, T0, &Validation::default());
    }

    fn rollups_of(messages: &[(usize, i64, i64)], splits: &[usize]) -> BTreeMap<Series, Partial> {
        let mut bounds: Vec<usize> = splits.iter().map(|s| s % (messages.len() + 1)).collect();
        bounds.extend([0, messages.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let mut merged = BTreeMap::new();
        let tail = &mut crate::rates::Tail::default();
        for w in bounds.windows(2) {
            let mut batch = PartitionBatch::new("metrics", 0);
            for (offset, (vm, dt, value)) in messages.iter().enumerate().take(w[1]).skip(w[0]) {
                let v = format!(
                    r#"{{"v":1,"ts":{},"tags":{{"ns":"n","mcis":"m","vm":"vm-{vm}"}},"metrics":{{"cpu_utilization":{value}}},"devices":{{"eth0":{{"bytes_in":{}}}}}}}"#,
                    T0 + dt,
                    value * 3
                );
                push_at(&mut batch, offset, &v);
            }
            merged_rollups(&batch.objects(tail).unwrap(), &mut merged);
        }
        merged
    }

    /// The rollup computed directly from the samples, without `Partial::merge`.
    fn reference(messages: &[(usize, i64, i64)]) -> BTreeMap<Series, Partial> {
        let mut samples: BTreeMap<Series, Vec<(i64, f64)>> = BTreeMap::new();
        for (vm, dt, value) in messages {
            let ts = T0 + dt;
            let window = crate::rollup::minute_of(ts);
            for (metric, device, v) in [
                ("cpu_utilization", "", *value as f64),
                ("bytes_in", "eth0", (*value * 3) as f64),
            ] {
                samples
                    .entry((format!("vm-{vm}"), metric.into(), device.into(), window))
                    .or_default()
                    .push((ts, v));
            }
        }
        // Rates of the counter: consecutive samples in time order (equal timestamps keep the first).
        let mut by_vm: BTreeMap<usize, Vec<(i64, f64)>> = BTreeMap::new();
        for (vm, dt, value) in messages {
            let series = by_vm.entry(*vm).or_default();
            if series.last().is_none_or(|(ts, _)| T0 + dt > *ts) {
                series.push((T0 + dt, (*value * 3) as f64));
            }
        }
        for (vm, series) in by_vm {
            for pair in series.windows(2) {
                let (dt, dv) = (pair[1].0 - pair[0].0, pair[1].1 - pair[0].1);
                if dv >= 0.0 {
                    let window = crate::rollup::minute_of(pair[1].0);
                    let key = (
                        format!("vm-{vm}"),
                        "bytes_in_rate".to_owned(),
                        "eth0".to_owned(),
                        window,
                    );
                    samples
                        .entry(key)
                        .or_default()
                        .push((pair[1].0, dv * 1000.0 / dt as f64));
                }
            }
        }
        samples
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let values = v.iter().map(|(_, x)| *x);
                let p = Partial {
                    count: v.len() as i64,
                    sum: values.clone().sum(),
                    min: values.clone().fold(f64::INFINITY, f64::min),
                    max: values.fold(f64::NEG_INFINITY, f64::max),
                    first: v[0].1,
                    first_ts: v[0].0,
                    last: v[v.len() - 1].1,
                    last_ts: v[v.len() - 1].0,
                };
                (k, p)
            })
            .collect()
    }

    fn same_rollups(
        got: &BTreeMap<Series, Partial>,
        want: &BTreeMap<Series, Partial>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, g) in got {
            let w = want[k];
            prop_assert!(
                (g.sum - w.sum).abs() <= 1e-9 * w.sum.abs().max(1.0),
                "{:?}: {:?} vs {:?}",
                k,
                g,
                w
            );
            prop_assert_eq!(Partial { sum: w.sum, ..*g }, w, "{:?}", k);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However the samples are split into batches, merging the partials gives the same rollup.
        #[test]
        fn rollups_do_not_depend_on_batch_boundaries(
            // (vm, ms after T0 within 3 minutes, integer value so sums are exact in any order)
            messages in proptest::collection::vec((0usize..3, 0i64..180_000, -1000i64..1000), 1..60),
            splits in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            // A VM's messages reach its partition in time order.
            let mut messages = messages;
            messages.sort_by_key(|m| m.1);
            let whole = rollups_of(&messages, &[]);
            let split = rollups_of(&messages, &splits);
            // Exact for counts, extremes, first and last; sums of non-integer rates may differ in
            // the last bits, as floating-point addition in another order does.
            same_rollups(&split, &whole)?;
            same_rollups(&whole, &reference(&messages))?;
            let total: i64 = whole.iter().filter(|(k, _)| !k.1.ends_with("_rate")).map(|(_, p)| p.count).sum();
            prop_assert_eq!(total, 2 * messages.len() as i64);
        }
    }

    #[test]
    fn rejected_records_keep_their_bytes_and_offset() {
        let mut b = PartitionBatch::new("metrics", 2);
        let rec = InputRecord {
            topic: "metrics",
            partition: 2,
            offset: 9,
            timestamp_ms: T0,
            key: Some(b"k"),
            value: Some(b"\x00oops"),
        };
        b.push(&rec, T0, &Validation::default());
        assert_eq!(
            b.stats(),
            BatchStats {
                records: 1,
                samples: 0,
                rejected: 1
            }
        );
        let row = &b.dlq[0];
        assert_eq!(
            (row.offset, row.partition, row.key.as_deref()),
            (9, 2, Some("k"))
        );
        assert_eq!(row.raw_base64, "AG9vcHM=");
        assert!(
            row.reason
                .starts_with("not a native v1 message, Telegraf JSON or Influx line protocol"),
            "{}",
            row.reason
        );
    }

    /// String columns of a read-back table, row by row.
    fn rows_of(o: &LakeObject, cols: &[&str], time: &str) -> Vec<(Vec<String>, i64)> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(o.bytes.clone())
            .unwrap()
            .build()
            .unwrap();
        let mut out = Vec::new();
        for b in reader {
            let b = b.unwrap();
            let t = b
                .column_by_name(time)
                .unwrap()
                .as_primitive::<TimestampMillisecondType>()
                .clone();
            for i in 0..b.num_rows() {
                let strs = cols
                    .iter()
                    .map(|c| {
                        b.column_by_name(c)
                            .unwrap()
                            .as_string::<i32>()
                            .value(i)
                            .to_owned()
                    })
                    .collect();
                out.push((strs, t.value(i)));
            }
        }
        out
    }

    #[test]
    fn objects_hold_every_sample_once_in_table_order() {
        // VMs out of order, a VM whose csp changes mid-batch, and messages whose series differ
        // from the message before them (a new device, a missing metric).
        let msgs = [
            (
                3,
                "aws",
                0,
                r#""metrics":{"cpu_utilization":1,"mem_used":2},"devices":{"eth0":{"bytes_in":10}}"#,
            ),
            (
                1,
                "gcp",
                0,
                r#""metrics":{"cpu_utilization":3},"devices":{"eth0":{"bytes_in":5},"eth1":{"bytes_in":7}}"#,
            ),
            (
                3,
                "aws",
                2_000,
                r#""metrics":{"cpu_utilization":4,"mem_used":5},"devices":{"eth0":{"bytes_in":30}}"#,
            ),
            (
                1,
                "azure",
                2_000,
                r#""metrics":{"mem_used":6},"devices":{"eth0":{"bytes_in":9}}"#,
            ),
            (
                2,
                "aws",
                61_000,
                r#""metrics":{"cpu_utilization":8,"mem_used":9}"#,
            ),
            (
                3,
                "aws",
                4_000,
                r#""devices":{"eth0":{"bytes_in":50},"sda":{"kb_read":1}}"#,
            ),
        ];
        let mut batch = PartitionBatch::new("metrics", 0);
        let mut want_raw = Vec::new();
        for (offset, (vm, csp, dt, body)) in msgs.iter().enumerate() {
            let v = format!(
                r#"{{"v":1,"ts":{},"tags":{{"ns":"n","mcis":"m","vm":"vm-{vm}","csp":"{csp}"}},{body}}}"#,
                T0 + dt
            );
            let m = MetricMessage::from_json(v.as_bytes()).unwrap();
            for (device, metric, _) in samples(&m) {
                want_raw.push((
                    vec![
                        format!("vm-{vm}"),
                        metric.to_owned(),
                        device.to_owned(),
                        csp.to_string(),
                    ],
                    T0 + dt,
                ));
            }
            push_at(&mut batch, offset, &v);
        }
        let objects = batch.objects(&mut Tail::default()).unwrap();
        let cols = ["vm", "metric", "device", "csp"];
        let raw = objects.iter().find(|o| o.table == Table::Raw).unwrap();
        let got = rows_of(raw, &cols, "ts");
        let key = |r: &(Vec<String>, i64)| (r.0[0].clone(), r.0[1].clone(), r.0[2].clone(), r.1);
        assert!(
            got.windows(2).all(|w| key(&w[0]) <= key(&w[1])),
            "raw not in table order: {got:?}"
        );
        let (mut got_set, mut want_set) = (got.clone(), want_raw);
        got_set.sort();
        want_set.sort();
        assert_eq!(got_set, want_set);

        let rollup = objects.iter().find(|o| o.table == Table::Rollup1m).unwrap();
        let got = rows_of(rollup, &cols, "window_start");
        assert!(
            got.windows(2).all(|w| key(&w[0]) <= key(&w[1])),
            "rollup not in table order: {got:?}"
        );
        // vm-3's eth0 counter has two consecutive samples in minute 0: one rate window.
        assert!(
            got.iter()
                .any(|r| r.0[..3] == ["vm-3", "bytes_in_rate", "eth0"]),
            "{got:?}"
        );
        // vm-1's csp changed between its two samples: its counter is still one series, with a
        // rate (filed under the later tag set).
        assert!(
            got.iter()
                .any(|r| r.0 == ["vm-1", "bytes_in_rate", "eth0", "azure"]),
            "{got:?}"
        );
        // vm-1 keeps one window per tag set; vm-2's sample lies in the next minute.
        let vm1_mem: Vec<_> = got
            .iter()
            .filter(|r| r.0[..2] == ["vm-1", "mem_used"])
            .collect();
        assert_eq!(vm1_mem.len(), 1, "{got:?}");
        assert_eq!(vm1_mem[0].0[3], "azure");
        assert!(
            got.iter().any(|r| r.0[0] == "vm-2" && r.1 == T0 + 60_000),
            "{got:?}"
        );
    }
}
