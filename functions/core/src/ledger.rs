//! Exactly-once lake writes: a batch is staged out of sight, decided by a conditional put of the
//! partition's state object, and only then published; a writer that lost its partition can never
//! make different data visible, and offsets the lake already holds are never written again.
//!
//! Per topic-partition the state object (`_state/{writer}/{topic}+{partition}.json`; its bytes
//! are described at [`StateObject`], and the key keeps its suffix so that states written before
//! are found) records the latest *decided* batch: its offsets `[first, next)`, the final keys of its objects, where they
//! are staged, whether they are published, and the counter [`Tail`] after it. Decided batches
//! form a chain: each is decided by a conditional put (If-Match on the version read, If-None-Match
//! for the first), so for every offset at most one decision ever exists, and everything below the
//! state's `next_offset` is in the lake (or staged and about to be published by whoever comes next).
//!
//! The protocol for a batch of one topic-partition with records from offset `from`:
//! 1. read the state and its version ([`Lake::ledger`]);
//! 2. settle the previous decision ([`Ledger::settle`]): if it is staged but not yet published,
//!    publish it (copy each staged object to its final key) and record that conditionally;
//! 3. drop the batch's records the lake holds ([`Ledger::holds`]: below the state's `next_offset`
//!    and outside its `gaps`): a retry, a replay after an offset reset or after committed offsets
//!    expired, a bisected batch;
//! 4. encode the rest from the state's tail and put its objects under a staging prefix unique to
//!    this attempt (`_staging/...`, which no query engine reads);
//! 5. decide: conditionally put the state `{first, next, keys, staging, complete: false}`; a
//!    concurrent writer (a consumer that lost its partition but still runs, a slow remote
//!    invocation) makes this fail, and the attempt removes its staged objects and fails;
//! 6. publish: copy the staged objects to their final keys
//!    (`{table}/dt=/hour=/{topic}+{partition}+{first}.parquet`);
//! 7. conditionally put the state `{.., complete: true}` and delete the staged objects.
//!
//! The caller commits the Kafka offsets only after this returns. Failure windows, and why each is
//! safe:
//! - dying before 5: only staged objects exist, which no reader sees; the retry stages anew
//!   (orphans are deleted by the attempt on conflict, else by compaction's sweep of `_staging`);
//! - dying between 5 and 7: the decision stands; the next writer of the partition (the retry, or
//!   the new owner after a rebalance) publishes it in step 2 and skips its offsets in step 3;
//! - a zombie (paused, partitioned, or a remote invocation the runner gave up on) that wakes after
//!   a new owner decided: its step 5 fails (the version moved); if it had decided first, its late
//!   step 6 copies the same staged bytes the new owner published, or finds them deleted and fails;
//!   a final key only ever holds the bytes of the one decision for its offset;
//! - a zombie's copy that lands after compaction merged that file and deleted it recreates a file
//!   its compacted file lists in `damselfly.compacted_from`: `damselfly sql` ignores it and the
//!   next compaction deletes it (tools that glob the lake see it twice until then). It needs the
//!   staged objects to have outlived their publication, which happens only when deleting them failed.
//!
//! Gaps. The chain may skip offsets: a batch the event source gave up on goes to its on-failure
//! destination and the next batch starts after it (so do transaction markers and records removed
//! by retention before they were read). A decision whose first offset lies above the state's
//! `next_offset` records the skipped range in the state's `gaps`, and the first decision of a
//! partition records everything below it as a gap. Records in a gap are not held: a redrive of the
//! on-failure records (`damselfly redrive`), or a replay, writes them, under the same protocol,
//! as a decision whose offsets lie below `next_offset`; its decision removes them from `gaps`, so
//! a second redrive of the same records is skipped like any retry. A state keeps at most
//! [`MAX_GAPS`] gaps; past that the oldest are forgotten with a warning, and a redrive of their
//! records is then skipped as held. States written before gaps existed have none: everything
//! below their `next_offset` counts as held.
//!
//! A local directory cannot compare-and-swap: its state objects are written only while this
//! process holds the lake's writer lock (`_state/writer.lock`, see [`Lake::put_state`]), so one
//! process writes a local lake at a time and a second gets a clear error.
//!
//! States written by the earlier protocol (objects put directly at their final keys, no staging)
//! are read too: an incomplete one is undone (its objects removed, its tail rewound) and its
//! offsets written anew.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::batch::LakeObject;
use crate::lake::{Lake, LakeError};
use crate::rates::{Tail, TailUndo};

/// Prefix of the state objects inside the lake; query engines never list it.
pub const STATE_PREFIX: &str = "_state";

/// Prefix of staged, not yet published objects inside the lake; query engines never list it.
pub const STAGING_PREFIX: &str = "_staging";

/// Most offset gaps a partition's state remembers (see the module docs); about 40 bytes each.
pub const MAX_GAPS: usize = 1024;

/// What the latest decided batch of one topic-partition wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// First offset of the batch.
    pub first_offset: i64,
    /// One past the highest offset decided so far: every offset below is in the lake, except
    /// those in `gaps`.
    pub next_offset: i64,
    /// Offset ranges `[from, to)` below `next_offset` the lake does not hold (skipped by the
    /// chain; see the module docs), sorted and disjoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<(i64, i64)>,
    /// Final keys of every object the batch writes.
    pub keys: BTreeSet<String>,
    /// Whether the objects are at their final keys.
    pub complete: bool,
    /// Where the objects are staged until published (`None` with `complete: false`: a state of
    /// the earlier protocol, whose objects went straight to their final keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<String>,
    /// The last sample of every counter series after the batch: stored in binary after the state's
    /// JSON (see [`StateObject`]), never in it; older states that hold it in their JSON are read.
    #[serde(default, skip_serializing)]
    pub tail: Tail,
    /// What the batch changed in the tail (written by the earlier protocol, to undo its attempts).
    #[serde(default, skip_serializing_if = "TailUndo::is_empty")]
    pub tail_undo: TailUndo,
}

impl PartitionState {
    /// Whether the lake holds `offset`: below `next_offset` and in no gap.
    pub fn holds(&self, offset: i64) -> bool {
        offset < self.next_offset && !self.gaps.iter().any(|&(a, b)| a <= offset && offset < b)
    }

    /// The gaps after a decision writing offsets `[first, next)` on top of this state: the range
    /// is removed from every gap, and a range skipped between `next_offset` and `first` is added.
    fn gaps_after(&self, first: i64, next: i64) -> Vec<(i64, i64)> {
        let mut gaps: Vec<(i64, i64)> = Vec::with_capacity(self.gaps.len() + 1);
        for &(a, b) in &self.gaps {
            if b <= first || a >= next {
                gaps.push((a, b));
                continue;
            }
            if a < first {
                gaps.push((a, first));
            }
            if next < b {
                gaps.push((next, b));
            }
        }
        if first > self.next_offset {
            gaps.push((self.next_offset, first));
        }
        gaps.sort_unstable();
        forget_oldest(&mut gaps);
        gaps
    }

    /// The staged key of `key` under this state's staging prefix.
    fn staged(&self, key: &str) -> Option<Path> {
        self.staging
            .as_ref()
            .map(|s| Path::from(format!("{s}/{key}")))
    }
}

/// Keeps the newest [`MAX_GAPS`] gaps of a sorted list, warning about the ones forgotten.
fn forget_oldest(gaps: &mut Vec<(i64, i64)>) {
    if gaps.len() > MAX_GAPS {
        let forgotten: Vec<(i64, i64)> = gaps.drain(..gaps.len() - MAX_GAPS).collect();
        tracing::warn!(
            forgotten = forgotten.len(),
            oldest = ?forgotten.first(),
            "more offset gaps than a partition's state keeps: the oldest are forgotten, and a redrive of their records is skipped as held"
        );
    }
}

/// One topic-partition's slice of a batch, ready to write.
#[derive(Debug, Clone)]
pub struct PartitionWrite {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// First offset in the batch.
    pub first_offset: i64,
    /// One past the last offset in the batch.
    pub next_offset: i64,
    /// The objects to write.
    pub objects: Vec<LakeObject>,
    /// The counter tail after the batch.
    pub tail: Tail,
}

/// What a protected write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Objects written.
    pub written: usize,
    /// Objects of an earlier decided attempt published on its behalf (it died or lost the partition
    /// between deciding and publishing).
    pub rolled_forward: usize,
    /// Objects of an earlier, undecided attempt of the earlier protocol that were removed.
    pub removed: usize,
}

/// The key of a writer's state object for one topic-partition.
pub fn state_key(writer: &str, topic: &str, partition: i32) -> String {
    format!("{STATE_PREFIX}/{writer}/{topic}+{partition}.json")
}

/// The version a state object was read at: `None` when it did not exist.
pub type Version = Option<UpdateVersion>;

/// A staging prefix no other attempt uses: the process id, the time and a counter.
fn staging_prefix(writer: &str, topic: &str, partition: i32, first: i64) -> String {
    static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{STAGING_PREFIX}/{writer}/{topic}+{partition}/{first:010}-{nanos:x}-{:x}-{}",
        std::process::id(),
        ATTEMPTS.fetch_add(1, Relaxed)
    )
}

/// One partition's state, read before a batch is encoded and updated as it is written.
#[derive(Debug)]
pub struct Ledger<'a> {
    lake: &'a Lake,
    writer: String,
    key: Path,
    previous: Option<PartitionState>,
    version: Version,
    settled: Option<WriteReport>,
}

impl Ledger<'_> {
    /// Publishes the previous decided batch if it is still staged, or undoes an incomplete attempt
    /// of the earlier protocol (step 2); idempotent. Returns what it did.
    pub async fn settle(&mut self) -> Result<WriteReport, LakeError> {
        if let Some(done) = self.settled {
            return Ok(done);
        }
        let mut report = WriteReport::default();
        if let Some(state) = self.previous.as_mut().filter(|s| !s.complete) {
            if state.staging.is_some() {
                report.rolled_forward = publish(self.lake, state).await?;
                tracing::info!(
                    key = %self.key, first = state.first_offset, next = state.next_offset,
                    objects = report.rolled_forward,
                    "published a decided batch its writer left staged"
                );
                state.complete = true;
                let staged: Vec<Path> = state.keys.iter().filter_map(|k| state.staged(k)).collect();
                state.staging = None;
                self.version = self
                    .lake
                    .put_state(&self.key, state, self.version.take())
                    .await?;
                delete_quietly(self.lake, staged).await;
            } else {
                // The earlier protocol: objects written in place, offsets never committed. Remove
                // them and write those offsets again from the tail before the attempt.
                for k in &state.keys {
                    match self.lake.store().delete(&Path::from(k.as_str())).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                report.removed = state.keys.len();
                tracing::info!(key = %self.key, removed = report.removed, "removed leftovers of an earlier attempt");
                state.tail = std::mem::take(&mut state.tail).undo(&state.tail_undo);
                state.tail_undo = TailUndo::default();
                state.next_offset = state.first_offset;
                state.keys.clear();
                state.complete = true;
            }
        }
        self.settled = Some(report);
        Ok(report)
    }

    /// One past the highest offset in the lake; `None` for a partition never written.
    pub fn next_offset(&self) -> Option<i64> {
        self.previous.as_ref().map(|p| p.next_offset)
    }

    /// Whether the lake holds `offset` (step 3 skips such records): below
    /// [`next_offset`](Self::next_offset) and in none of the state's gaps.
    pub fn holds(&self, offset: i64) -> bool {
        self.previous.as_ref().is_some_and(|p| p.holds(offset))
    }

    /// The counter tail the next batch starts from, moved out of the state read (call it once,
    /// after [`settle`](Self::settle)).
    pub fn take_tail(&mut self) -> Tail {
        self.previous
            .as_mut()
            .map(|p| std::mem::take(&mut p.tail))
            .unwrap_or_default()
    }

    /// Stages, decides and publishes the batch (steps 4-7, after [`settle`](Self::settle)); the
    /// lake must hold none of its records (see [`holds`](Self::holds)).
    pub async fn write(mut self, mut w: PartitionWrite) -> Result<WriteReport, LakeError> {
        let mut report = self.settle().await?;
        if self.holds(w.first_offset) {
            return Err(LakeError::Overlap {
                key: self.key.to_string(),
                first: w.first_offset,
                next: self.next_offset().unwrap_or(i64::MIN),
            });
        }
        let (next_offset, gaps) = match &self.previous {
            Some(p) => (
                p.next_offset.max(w.next_offset),
                p.gaps_after(w.first_offset, w.next_offset),
            ),
            // Everything below a partition's first decision is a gap a redrive may fill.
            None if w.first_offset > i64::MIN => (w.next_offset, vec![(i64::MIN, w.first_offset)]),
            None => (w.next_offset, Vec::new()),
        };
        let prefix = staging_prefix(&self.writer, &w.topic, w.partition, w.first_offset);
        let mut state = PartitionState {
            first_offset: w.first_offset,
            next_offset,
            gaps,
            keys: w.objects.iter().map(|o| o.key.clone()).collect(),
            complete: false,
            staging: Some(prefix.clone()),
            tail: std::mem::take(&mut w.tail),
            tail_undo: TailUndo::default(),
        };
        // Both writes of the state below carry the same tail: encode it once.
        let tail_frame = tail_frame(&state.tail);
        let staged: Vec<LakeObject> = w
            .objects
            .iter()
            .map(|o| LakeObject {
                key: format!("{prefix}/{}", o.key),
                ..o.clone()
            })
            .collect();
        let staged_keys: Vec<Path> = staged.iter().map(|o| Path::from(o.key.as_str())).collect();
        if let Err(e) = self.lake.put_all(&staged).await {
            delete_quietly(self.lake, staged_keys).await;
            return Err(e);
        }
        let version = match self
            .lake
            .put_state_bytes(&self.key, state.encode_with_tail(&tail_frame), self.version)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Undecided: the staged objects are nobody's. (A put that failed after it was
                // applied leaves a decision behind; the next writer publishes it from the stage,
                // so the stage must stay: only a conflict proves the decision is not ours.)
                if matches!(e, LakeError::Conflict { .. }) {
                    delete_quietly(self.lake, staged_keys).await;
                }
                return Err(e);
            }
        };
        hold_after_decision(&self.key);
        publish(self.lake, &state).await?;
        state.complete = true;
        state.staging = None;
        match self
            .lake
            .put_state_bytes(&self.key, state.encode_with_tail(&tail_frame), version)
            .await
        {
            // Someone else saw our decision staged and published it for us meanwhile.
            Ok(_) | Err(LakeError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        delete_quietly(self.lake, staged_keys).await;
        report.written = w.objects.len();
        Ok(report)
    }
}

/// A fault test's hook (feature `failpoints`, see [`crate::failpoints`]): when the `ledger-decided` fail point returns
/// (`FAILPOINTS='ledger-decided=20*off->1*return(2000)'`), the write logs that it holds and blocks
/// its thread for that many milliseconds between deciding and publishing, the window in which a
/// writer paused there (SIGSTOP) becomes a zombie. Without the feature it is empty.
fn hold_after_decision(key: &Path) {
    #[cfg(feature = "failpoints")]
    if let Some(arg) = fail::eval("ledger-decided", |arg| arg) {
        let ms = arg.and_then(|a| a.parse().ok()).unwrap_or(2_000);
        tracing::warn!(%key, ms, "fail point ledger-decided: holding between deciding and publishing");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = key;
}

/// Copies a decided batch's staged objects to their final keys (step 6); returns how many. A
/// staged object that is gone means another writer published the batch and cleaned up: the
/// caller's view is stale, which it learns as a conflict.
async fn publish(lake: &Lake, state: &PartitionState) -> Result<usize, LakeError> {
    for key in &state.keys {
        let Some(from) = state.staged(key) else {
            continue;
        };
        match lake.store().copy(&from, &Path::from(key.as_str())).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(LakeError::Conflict {
                    key: from.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(state.keys.len())
}

/// The first bytes of a zstd frame; JSON never starts with them.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// zstd level of state objects: the fastest, since a state is written twice per batch.
const STATE_ZSTD_LEVEL: i32 = 1;

/// The first bytes of a [`PartitionState`] with a binary tail, once decompressed (format 1).
const BINARY_STATE_MAGIC: &[u8; 5] = b"DFST\x01";

/// Bytes one tail series takes in the binary form besides its key: length, time, value.
const SERIES_FIXED_BYTES: usize = 4 + 8 + 8;

/// How a state object is stored in the lake: its JSON compressed with zstd, unless the type says
/// otherwise; plain JSON, as written before issue 25, is read too.
///
/// [`PartitionState`] keeps its counter tail (tens of thousands of series per partition, read once
/// and written twice per batch) out of the JSON, in a binary form that is an order of magnitude
/// cheaper to write and read than JSON's escaped keys and decimal floats. Its object is two zstd
/// frames back to back, which decompress as one stream:
/// 1. `DFST`, format byte 1, the JSON's length (u32 LE) and the state's JSON without its tail;
/// 2. the number of series (u32 LE), then per series its key's length (u32 LE), the key (UTF-8),
///    the time in ms (i64 LE) and the value (f64 LE bits).
///
/// The second frame depends on the tail alone, so a batch's two state writes share one.
pub trait StateObject: Serialize + serde::de::DeserializeOwned {
    /// The object's bytes.
    fn encode_state(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("state serializes");
        compress(&json)
    }

    /// The state from its object's bytes; `Err` says what is wrong with them.
    fn decode_state(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(&decompress(bytes)?).map_err(|e| e.to_string())
    }
}

impl StateObject for PartitionState {
    fn encode_state(&self) -> Vec<u8> {
        let mut bytes = self.header_frame();
        bytes.extend_from_slice(&tail_frame(&self.tail));
        bytes
    }

    fn decode_state(bytes: &[u8]) -> Result<Self, String> {
        let body = decompress(bytes)?;
        let Some(rest) = body.strip_prefix(BINARY_STATE_MAGIC) else {
            // JSON with the tail inside, as written before the binary form.
            return serde_json::from_slice(&body).map_err(|e| e.to_string());
        };
        let mut r = Reader(rest);
        let header_len = r.u32()? as usize;
        let mut state: PartitionState =
            serde_json::from_slice(r.take(header_len)?).map_err(|e| e.to_string())?;
        let count = r.u32()? as usize;
        // Bounded by what the bytes can hold, so a damaged count cannot allocate without limit.
        let mut tail = std::collections::HashMap::with_capacity_and_hasher(
            count.min(r.0.len() / SERIES_FIXED_BYTES),
            ahash::RandomState::new(),
        );
        for _ in 0..count {
            let key_len = r.u32()? as usize;
            let key = std::str::from_utf8(r.take(key_len)?)
                .map_err(|e| format!("tail key: {e}"))?
                .to_owned();
            let ts = i64::from_le_bytes(r.array()?);
            let value = f64::from_bits(u64::from_le_bytes(r.array()?));
            tail.insert(key, (ts, value));
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the tail", r.0.len()));
        }
        state.tail = Tail(tail);
        Ok(state)
    }
}

impl PartitionState {
    /// The first zstd frame of the state's object: the magic and the JSON without the tail.
    fn header_frame(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("state serializes");
        let mut body = Vec::with_capacity(BINARY_STATE_MAGIC.len() + 4 + json.len());
        body.extend_from_slice(BINARY_STATE_MAGIC);
        body.extend_from_slice(&(json.len() as u32).to_le_bytes());
        body.extend_from_slice(&json);
        compress(&body)
    }

    /// The state's object with a tail frame made earlier from this state's tail.
    fn encode_with_tail(&self, tail_frame: &[u8]) -> Vec<u8> {
        let mut bytes = self.header_frame();
        bytes.extend_from_slice(tail_frame);
        bytes
    }
}

/// The second zstd frame of a [`PartitionState`]'s object: its tail in binary.
fn tail_frame(tail: &Tail) -> Vec<u8> {
    let keys: usize = tail.0.keys().map(String::len).sum();
    let mut body = Vec::with_capacity(4 + keys + tail.0.len() * SERIES_FIXED_BYTES);
    body.extend_from_slice(&(tail.0.len() as u32).to_le_bytes());
    for (key, (ts, value)) in &tail.0 {
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(&ts.to_le_bytes());
        body.extend_from_slice(&value.to_bits().to_le_bytes());
    }
    compress(&body)
}

/// Reads the binary form front to back; running out of bytes is an error naming the field.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
}

/// zstd-compresses a state's bytes with this thread's reused context.
fn compress(body: &[u8]) -> Vec<u8> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with_borrow_mut(|c| {
        let c = match c {
            Some(c) => c,
            None => c.insert(zstd::bulk::Compressor::new(STATE_ZSTD_LEVEL).expect("zstd context")),
        };
        c.compress(body)
            .expect("zstd compresses an in-memory buffer")
    })
}

/// A state object's bytes decompressed; plain JSON (written before issue 25) passes as it is.
fn decompress(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if bytes.starts_with(&ZSTD_MAGIC) {
        Ok(Cow::Owned(
            zstd::stream::decode_all(bytes).map_err(|e| format!("zstd: {e}"))?,
        ))
    } else {
        Ok(Cow::Borrowed(bytes))
    }
}

/// Deletes objects, logging rather than failing: leftovers of staging are harmless.
async fn delete_quietly(lake: &Lake, keys: Vec<Path>) {
    for k in keys {
        match lake.store().delete(&k).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::debug!(key = %k, error = %e, "staged object left behind"),
        }
    }
}

impl Lake {
    /// Reads one topic-partition's state for `writer`, to encode and then write a batch.
    pub async fn ledger(
        &self,
        writer: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Ledger<'_>, LakeError> {
        let key = Path::from(state_key(writer, topic, partition));
        let (previous, version) = self.read_state(&key).await?;
        Ok(Ledger {
            lake: self,
            writer: writer.to_owned(),
            key,
            previous,
            version,
            settled: None,
        })
    }

    /// Writes one topic-partition's batch under the exactly-once protocol (see the module docs);
    /// records below the partition's next offset must have been dropped by the caller.
    pub async fn write_exactly_once(
        &self,
        writer: &str,
        w: PartitionWrite,
    ) -> Result<WriteReport, LakeError> {
        self.ledger(writer, &w.topic, w.partition)
            .await?
            .write(w)
            .await
    }

    /// Reads a state object (see [`StateObject`]) and its version; `(None, None)` when absent.
    pub async fn read_state<T: StateObject>(
        &self,
        key: &Path,
    ) -> Result<(Option<T>, Version), LakeError> {
        match self.store().get(key).await {
            Ok(got) => {
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let bytes = got.bytes().await?;
                let state = T::decode_state(&bytes).map_err(|why| LakeError::CorruptState {
                    key: key.to_string(),
                    why,
                })?;
                Ok((Some(state), Some(version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok((None, None)),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a state object (see [`StateObject`]) only if it is still at `version` (or still
    /// absent); returns the new version. A local directory cannot compare-and-swap: there the
    /// write is made under the lake's writer lock, which this process takes on its first state
    /// write (and an error names the process that holds it).
    pub async fn put_state<T: StateObject>(
        &self,
        key: &Path,
        state: &T,
        version: Version,
    ) -> Result<Version, LakeError> {
        self.put_state_bytes(key, state.encode_state(), version)
            .await
    }

    /// [`put_state`](Self::put_state) of an encoded state.
    async fn put_state_bytes(
        &self,
        key: &Path,
        bytes: Vec<u8>,
        version: Version,
    ) -> Result<Version, LakeError> {
        let body = PutPayload::from(bytes);
        if let Some(dir) = self.locked_dir() {
            crate::lake::writer_lock(dir)?;
            let r = self.store().put(key, body).await?;
            return Ok(Some(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            }));
        }
        let mode = match version {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v),
        };
        match self
            .store()
            .put_opts(key, body, PutOptions::from(mode))
            .await
        {
            Ok(r) => Ok(Some(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(LakeError::Conflict {
                key: key.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn state(next_offset: i64) -> PartitionState {
        PartitionState {
            first_offset: 0,
            next_offset,
            gaps: vec![(0, 3)],
            keys: BTreeSet::from(["raw/dt=2026-12-07/hour=04/m+0+3.parquet".to_owned()]),
            complete: true,
            staging: None,
            tail: Tail::default(),
            tail_undo: TailUndo::default(),
        }
    }

    fn lake() -> (Lake, Arc<object_store::memory::InMemory>) {
        let store = Arc::new(object_store::memory::InMemory::new());
        (
            Lake::with_store(
                crate::lake::LakeLocation::Local("/mem".into()),
                store.clone(),
            ),
            store,
        )
    }

    #[tokio::test]
    async fn states_are_written_compressed_and_read_back() {
        let (lake, store) = lake();
        let key = Path::from(state_key("aggregate", "metrics", 0));
        let v = lake.put_state(&key, &state(10), None).await.unwrap();
        let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert!(bytes.starts_with(&ZSTD_MAGIC), "a zstd frame");
        let (read, version) = lake.read_state::<PartitionState>(&key).await.unwrap();
        assert_eq!(read.unwrap().next_offset, 10);
        assert_eq!(version, v);
    }

    fn with_tail(n: usize) -> PartitionState {
        let mut s = state(3_000);
        for i in 0..n {
            s.tail.set(
                &format!("vm-{i:05}"),
                "bytes_in",
                if i % 2 == 0 { "eth0" } else { "wlan-é" },
                (1_765_000_000_000 - i as i64, -0.0 + i as f64 * 1.37e9),
            );
        }
        s.tail.set("vm-x", "reads", "", (i64::MIN, f64::MAX));
        s
    }

    #[tokio::test]
    async fn the_tail_round_trips_in_binary_outside_the_json() {
        let (lake, store) = lake();
        let key = Path::from(state_key("aggregate", "metrics", 3));
        let written = with_tail(2_000);
        lake.put_state(&key, &written, None).await.unwrap();
        let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
        let body = decompress(&bytes).unwrap();
        assert!(body.starts_with(BINARY_STATE_MAGIC));
        let json_len = u32::from_le_bytes(body[5..9].try_into().unwrap()) as usize;
        let json: serde_json::Value = serde_json::from_slice(&body[9..9 + json_len]).unwrap();
        assert!(json.get("tail").is_none(), "no tail in the JSON: {json}");
        let (read, _) = lake.read_state::<PartitionState>(&key).await.unwrap();
        let read = read.unwrap();
        assert_eq!(read.tail.0.len(), 2_001);
        assert_eq!(read, written);
        assert_eq!(
            read.tail.last("vm-x", "reads", ""),
            Some((i64::MIN, f64::MAX))
        );
    }

    #[test]
    fn a_batch_shares_one_tail_frame_between_its_two_state_writes() {
        let s = with_tail(10);
        let frame = tail_frame(&s.tail);
        let whole = s.encode_with_tail(&frame);
        assert!(whole.ends_with(&frame));
        assert_eq!(PartitionState::decode_state(&whole).unwrap(), s);
    }

    #[tokio::test]
    async fn compressed_json_states_with_their_tail_inside_are_read() {
        let (lake, store) = lake();
        let key = Path::from(state_key("aggregate", "metrics", 4));
        // The form written between the zstd change and the binary tail.
        let mut json = serde_json::to_value(state(9)).unwrap();
        json["tail"] = serde_json::json!({"vm-1\u{1f}bytes_in\u{1f}eth0": [1000, 5.5]});
        let bytes = zstd::bulk::compress(&serde_json::to_vec(&json).unwrap(), 1).unwrap();
        store.put(&key, PutPayload::from(bytes)).await.unwrap();
        let (read, _) = lake.read_state::<PartitionState>(&key).await.unwrap();
        let read = read.unwrap();
        assert_eq!(read.next_offset, 9);
        assert_eq!(
            read.tail.last("vm-1", "bytes_in", "eth0"),
            Some((1000, 5.5))
        );
    }

    #[test]
    fn a_damaged_binary_tail_is_a_clear_error_not_an_allocation() {
        let s = with_tail(3);
        let body = decompress(&s.encode_state()).unwrap().into_owned();
        // Cut inside the last series.
        let cut = compress(&body[..body.len() - 5]);
        let why = PartitionState::decode_state(&cut).unwrap_err();
        assert!(why.starts_with("truncated"), "{why}");
        // A series count far beyond the bytes.
        let json_len = u32::from_le_bytes(body[5..9].try_into().unwrap()) as usize;
        let mut huge = body.clone();
        huge[9 + json_len..13 + json_len].copy_from_slice(&u32::MAX.to_le_bytes());
        let why = PartitionState::decode_state(&compress(&huge)).unwrap_err();
        assert!(why.starts_with("truncated"), "{why}");
        // Bytes after the last series.
        let mut long = body;
        long.push(0);
        let why = PartitionState::decode_state(&compress(&long)).unwrap_err();
        assert_eq!(why, "1 bytes after the tail");
    }

    #[tokio::test]
    async fn plain_json_states_of_earlier_versions_are_read() {
        let (lake, store) = lake();
        let key = Path::from(state_key("aggregate", "metrics", 1));
        let json = serde_json::to_vec(&state(42)).unwrap();
        store.put(&key, PutPayload::from(json)).await.unwrap();
        let (read, _) = lake.read_state::<PartitionState>(&key).await.unwrap();
        let read = read.unwrap();
        assert_eq!((read.next_offset, read.gaps), (42, vec![(0, 3)]));
    }

    #[tokio::test]
    async fn a_damaged_compressed_state_is_a_clear_error() {
        let (lake, store) = lake();
        let key = Path::from(state_key("aggregate", "metrics", 2));
        let mut bytes = state(7).encode_state();
        bytes.truncate(bytes.len() / 2);
        store.put(&key, PutPayload::from(bytes)).await.unwrap();
        let err = lake.read_state::<PartitionState>(&key).await.unwrap_err();
        assert!(
            matches!(err, LakeError::CorruptState { ref why, .. } if why.starts_with("zstd")),
            "{err}"
        );
    }
}
