//! The lake conformance suite: the exactly-once protocol's guarantees, run against any object store
//! (`InMemory` and a local directory in unit tests, S3 on LocalStack in the end-to-end tests).

use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use parquet::file::reader::{FileReader as _, SerializedFileReader};

use crate::batch::PartitionBatch;
use crate::decode::{InputRecord, Validation};
use crate::lake::{Lake, LakeError};
use crate::ledger::{PartitionState, PartitionWrite, state_key};

/// 2025-11-21T10:59:00Z: the suite's records straddle the 10:00 and 11:00 hours.
const T0: i64 = 1_763_722_740_000;
const WRITER: &str = "conformance";

/// Runs every scenario on `lake` under topics prefixed by `run`; `cas` says whether the store
/// supports conditional updates (local directories do not).
pub async fn run_all(lake: &Lake, run: &str, cas: bool) -> Result<(), String> {
    retry_with_a_smaller_batch_removes_leftovers(lake, &format!("{run}-retry")).await?;
    abandoned_attempt_is_removed_by_the_next_batch(lake, &format!("{run}-abandoned")).await?;
    exact_retry_overwrites(lake, &format!("{run}-exact")).await?;
    if cas {
        concurrent_writer_is_detected(lake, &format!("{run}-conflict")).await?;
    }
    Ok(())
}

/// Messages i (offsets first..next), one per 20 s from T0: offsets 0-2 fall in hour 10, 3+ in hour 11.
fn batch(topic: &str, first: i64, next: i64) -> PartitionWrite {
    let mut b = PartitionBatch::new(topic, 0);
    let now = T0 + 3_600_000;
    let limits = Validation {
        max_past: std::time::Duration::from_secs(u32::MAX as u64),
        ..Validation::default()
    };
    for offset in first..next {
        let value = format!(
            r#"{{"v":1,"ts":{},"tags":{{"ns":"n","mcis":"m","vm":"vm-{}"}},"metrics":{{"cpu_utilization":{offset}}}}}"#,
            T0 + offset * 20_000,
            offset % 2
        );
        let rec = InputRecord {
            topic,
            partition: 0,
            offset,
            timestamp_ms: now,
            key: None,
            value: Some(value.as_bytes()),
        };
        b.push(&rec, now, &limits);
    }
    PartitionWrite {
        topic: topic.to_owned(),
        partition: 0,
        first_offset: first,
        next_offset: next,
        objects: b.objects(&mut Default::default()).expect("encodes"),
        tail: Default::default(),
        tail_undo: Default::default(),
    }
}

/// Keys of `table` objects written for `topic`, and the rows in them.
async fn table(lake: &Lake, table: &str, topic: &str) -> Result<(Vec<String>, i64), String> {
    let keys: Vec<String> = lake
        .list(table)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|k| k.contains(&format!("/{topic}+")))
        .collect();
    let mut rows = 0;
    for k in &keys {
        let bytes = lake
            .store()
            .get(&Path::from(k.as_str()))
            .await
            .map_err(|e| e.to_string())?;
        let bytes = bytes.bytes().await.map_err(|e| e.to_string())?;
        rows += SerializedFileReader::new(bytes)
            .map_err(|e| e.to_string())?
            .metadata()
            .file_metadata()
            .num_rows();
    }
    Ok((keys, rows))
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.to_owned()) }
}

async fn write(lake: &Lake, w: &PartitionWrite) -> Result<crate::ledger::WriteReport, String> {
    lake.write_exactly_once(WRITER, w)
        .await
        .map_err(|e| e.to_string())
}

/// A batch 0..5 is written but not committed; the retry forms 0..3 (one hour only), then 3..5
/// follows: every record is in `raw` exactly once and the first attempt's hour-11 objects are gone.
async fn retry_with_a_smaller_batch_removes_leftovers(
    lake: &Lake,
    topic: &str,
) -> Result<(), String> {
    let first = write(lake, &batch(topic, 0, 5)).await?;
    check(
        first.written == 4,
        "first attempt writes raw and rollup for two hours",
    )?;
    let retry = write(lake, &batch(topic, 0, 3)).await?;
    check(
        retry.removed == 2,
        &format!(
            "retry removes the two hour-11 objects, removed {}",
            retry.removed
        ),
    )?;
    write(lake, &batch(topic, 3, 5)).await?;
    let (keys, rows) = table(lake, "raw", topic).await?;
    check(
        rows == 5,
        &format!("raw holds 5 samples exactly once, found {rows} in {keys:?}"),
    )?;
    check(
        keys.iter()
            .any(|k| k.contains("hour=11") && k.ends_with("+0000000003.parquet"))
            && !keys
                .iter()
                .any(|k| k.contains("hour=11") && k.ends_with("+0000000000.parquet")),
        &format!("hour 11 is written by the batch starting at 3 only: {keys:?}"),
    )
}

/// An attempt that died mid-write (state incomplete) and was then skipped (offsets committed past
/// it, as an on-failure destination does) is removed by the next batch of the partition.
async fn abandoned_attempt_is_removed_by_the_next_batch(
    lake: &Lake,
    topic: &str,
) -> Result<(), String> {
    let dead = batch(topic, 0, 5);
    let key = Path::from(state_key(WRITER, topic, 0));
    let state = PartitionState {
        first_offset: 0,
        next_offset: 5,
        keys: dead.objects.iter().map(|o| o.key.clone()).collect(),
        complete: false,
        tail: Default::default(),
        tail_undo: Default::default(),
    };
    lake.store()
        .put(&key, serde_json::to_vec(&state).expect("serializes").into())
        .await
        .map_err(|e| e.to_string())?;
    lake.put_all(&dead.objects[..1])
        .await
        .map_err(|e| e.to_string())?;
    let next = write(lake, &batch(topic, 5, 6)).await?;
    check(
        next.removed == 4,
        &format!(
            "all keys of the abandoned attempt are removed, removed {}",
            next.removed
        ),
    )?;
    let (keys, rows) = table(lake, "raw", topic).await?;
    check(
        rows == 1 && keys.len() == 1,
        &format!("only the new batch remains: {keys:?}"),
    )
}

/// Retrying the very same batch writes the same keys and removes nothing.
async fn exact_retry_overwrites(lake: &Lake, topic: &str) -> Result<(), String> {
    write(lake, &batch(topic, 0, 5)).await?;
    let again = write(lake, &batch(topic, 0, 5)).await?;
    check(again.removed == 0, "an exact retry removes nothing")?;
    write(lake, &batch(topic, 5, 8)).await?;
    let (_, rows) = table(lake, "raw", topic).await?;
    check(rows == 8, &format!("8 samples once each, found {rows}"))
}

/// A writer holding an old version of the state cannot overwrite a newer one.
async fn concurrent_writer_is_detected(lake: &Lake, topic: &str) -> Result<(), String> {
    write(lake, &batch(topic, 0, 2)).await?;
    let key = Path::from(state_key(WRITER, topic, 0));
    let (_, old) = lake
        .read_state::<PartitionState>(&key)
        .await
        .map_err(|e| e.to_string())?;
    write(lake, &batch(topic, 2, 4)).await?;
    let state = PartitionState {
        first_offset: 9,
        next_offset: 10,
        ..Default::default()
    };
    match lake.put_state(&key, &state, old).await {
        Err(LakeError::Conflict { .. }) => Ok(()),
        other => Err(format!("a stale version must conflict, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lake::LakeLocation;

    #[tokio::test]
    async fn in_memory() {
        let lake = Lake::with_store(
            LakeLocation::Local("/mem".into()),
            Arc::new(object_store::memory::InMemory::new()),
        );
        run_all(&lake, "mem", true).await.unwrap();
    }

    #[tokio::test]
    async fn local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        run_all(&lake, "dir", false).await.unwrap();
    }
}
