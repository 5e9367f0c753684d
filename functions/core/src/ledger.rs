//! Exactly-once lake writes: a per-partition state object, updated with conditional puts, records what
//! the latest batch wrote, so a retry that forms a different batch removes what the failed attempt left.
//!
//! The protocol for a batch of one topic-partition starting at offset `first` that writes `keys`:
//! 1. read the state (and its version);
//! 2. stale = the state's keys not in `keys`, when the state describes an attempt at the same
//!    `first` (a retry) or an attempt that never completed (a batch abandoned to an on-failure
//!    destination); otherwise the state's batch was committed and is left alone;
//! 3. conditionally write the state `{first, keys, complete: false}` (a concurrent writer, such as
//!    a consumer that lost its partition in a rebalance but still runs, makes this fail);
//! 4. delete the stale keys, write the objects;
//! 5. conditionally write the state `{.., complete: true}`.
//!
//! The caller commits the Kafka offsets only after this returns. Object keys are deterministic,
//! so an exact retry overwrites; the state removes leftovers of inexact ones.
//!
//! The state also carries the partition's counter [`Tail`] after the batch, and an undo record of
//! what the batch changed in it, so a retry starts its rates from the tail as it was before.

use std::collections::BTreeSet;

use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::batch::LakeObject;
use crate::lake::{Lake, LakeError};
use crate::rates::{Tail, TailUndo};

/// Prefix of the state objects inside the lake; query engines never list it.
pub const STATE_PREFIX: &str = "_state";

/// What the latest batch of one topic-partition wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// First offset of the batch.
    pub first_offset: i64,
    /// One past the batch's last offset.
    pub next_offset: i64,
    /// Keys of every object the batch writes.
    pub keys: BTreeSet<String>,
    /// Whether all of them were written.
    pub complete: bool,
    /// The last sample of every counter series after the batch.
    #[serde(default)]
    pub tail: Tail,
    /// What the batch changed in the tail, to rebuild the tail before it for a retry.
    #[serde(default)]
    pub tail_undo: TailUndo,
}

impl PartitionState {
    /// The counter tail a batch starting at `first_offset` should start from.
    pub fn tail_for(&self, first_offset: i64) -> Tail {
        if first_offset == self.first_offset {
            self.tail.clone().undo(&self.tail_undo)
        } else {
            self.tail.clone()
        }
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
    /// What the batch changed in the tail.
    pub tail_undo: TailUndo,
}

/// What a protected write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Objects written.
    pub written: usize,
    /// Objects of an earlier, uncommitted attempt that were removed.
    pub removed: usize,
}

/// The key of a writer's state object for one topic-partition.
pub fn state_key(writer: &str, topic: &str, partition: i32) -> String {
    format!("{STATE_PREFIX}/{writer}/{topic}+{partition}.json")
}

/// The version a state object was read at: `None` when it did not exist.
pub type Version = Option<UpdateVersion>;

/// One partition's state, read before a batch is encoded and updated as it is written.
#[derive(Debug)]
pub struct Ledger<'a> {
    lake: &'a Lake,
    key: Path,
    previous: Option<PartitionState>,
    version: Version,
}

impl Ledger<'_> {
    /// The counter tail a batch starting at `first_offset` should start from.
    pub fn tail_for(&self, first_offset: i64) -> Tail {
        self.previous
            .as_ref()
            .map(|p| p.tail_for(first_offset))
            .unwrap_or_default()
    }

    /// Writes the batch under the exactly-once protocol (see the module docs).
    pub async fn write(self, w: &PartitionWrite) -> Result<WriteReport, LakeError> {
        let Ledger {
            lake,
            key,
            previous,
            version,
        } = self;
        let keys: BTreeSet<String> = w.objects.iter().map(|o| o.key.clone()).collect();
        let stale: Vec<String> = match &previous {
            Some(p) if p.first_offset == w.first_offset || !p.complete => {
                p.keys.difference(&keys).cloned().collect()
            }
            Some(p) => {
                if w.first_offset < p.next_offset {
                    tracing::warn!(
                        topic = %w.topic, partition = w.partition, first = w.first_offset, written_up_to = p.next_offset,
                        "replay of offsets already written (group offsets reset?): rows may be duplicated"
                    );
                }
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut state = PartitionState {
            first_offset: w.first_offset,
            next_offset: w.next_offset,
            keys,
            complete: false,
            tail: w.tail.clone(),
            tail_undo: w.tail_undo.clone(),
        };
        let version = lake.put_state(&key, &state, version).await?;
        for k in &stale {
            match lake.store().delete(&Path::from(k.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !stale.is_empty() {
            tracing::info!(topic = %w.topic, partition = w.partition, removed = stale.len(), "removed leftovers of an earlier attempt");
        }
        lake.put_all(&w.objects).await?;
        state.complete = true;
        lake.put_state(&key, &state, version).await?;
        Ok(WriteReport {
            written: w.objects.len(),
            removed: stale.len(),
        })
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
            key,
            previous,
            version,
        })
    }

    /// Writes one topic-partition's batch under the exactly-once protocol (see the module docs).
    pub async fn write_exactly_once(
        &self,
        writer: &str,
        w: &PartitionWrite,
    ) -> Result<WriteReport, LakeError> {
        self.ledger(writer, &w.topic, w.partition)
            .await?
            .write(w)
            .await
    }

    /// Reads a JSON state object and its version; `(None, None)` when absent.
    pub async fn read_state<T: serde::de::DeserializeOwned>(
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
                let state =
                    serde_json::from_slice(&bytes).map_err(|e| LakeError::CorruptState {
                        key: key.to_string(),
                        why: e.to_string(),
                    })?;
                Ok((Some(state), Some(version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok((None, None)),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a JSON state object only if it is still at `version` (or still absent); returns the
    /// new version. Local directories cannot compare-and-swap, so there the write is unconditional.
    pub async fn put_state<T: Serialize>(
        &self,
        key: &Path,
        state: &T,
        version: Version,
    ) -> Result<Version, LakeError> {
        let body = PutPayload::from(serde_json::to_vec(state).expect("state serializes"));
        let mode = match version {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v),
        };
        let result = match self
            .store()
            .put_opts(key, body.clone(), PutOptions::from(mode))
            .await
        {
            // Local directories cannot compare-and-swap: one writer per local lake is assumed.
            Err(object_store::Error::NotImplemented { .. }) => self.store().put(key, body).await,
            other => other,
        };
        match result {
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
