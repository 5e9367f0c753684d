//! The lake conformance suite: the exactly-once protocol's guarantees under retries, replays, store
//! faults and zombie writers, run against any object store (`InMemory` and a local directory in unit
//! tests, S3 on LocalStack in the end-to-end tests), each case ending with every sample exactly once.
//!
//! Faults come from a [`FaultyStore`] wrapped around the lake's store: throttled puts, a decision
//! applied but reported failed, a publish that fails half-way, and writes held while another writer
//! takes over (the zombie cases, which need compare-and-swap and so skip local directories).

use std::sync::Arc;

use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use parquet::file::reader::{FileReader as _, SerializedFileReader};

use crate::batch::PartitionBatch;
use crate::decode::{InputRecord, Validation};
use crate::faults::{Fault, FaultyStore, Op};
use crate::lake::{Lake, LakeError};
use crate::ledger::{PartitionState, PartitionWrite, STAGING_PREFIX, WriteReport, state_key};

/// 2025-11-21T10:59:00Z: the suite's records straddle the 10:00 and 11:00 hours.
const T0: i64 = 1_763_722_740_000;
const WRITER: &str = "conformance";

/// Runs every case on `lake` under topics prefixed by `run`; `cas` says whether the store
/// supports conditional updates (local directories do not: they take a writer lock instead).
pub async fn run_all(lake: &Lake, run: &str, cas: bool) -> Result<(), String> {
    let faults = Arc::new(FaultyStore::new(lake.store().clone()));
    let lake = &lake.wrap_store(faults.clone());
    let t = |case: &str| format!("{run}-{case}");
    exact_retry_writes_nothing_twice(lake, &t("exact")).await?;
    smaller_retry_after_a_decision_is_skipped(lake, &t("smaller")).await?;
    replay_after_an_offset_reset_is_skipped(lake, &t("replay")).await?;
    throttled_staging_is_retried(lake, &faults, &t("throttled")).await?;
    decision_applied_but_reported_failed(lake, &faults, &t("applied")).await?;
    publish_failing_half_way_is_rolled_forward(lake, &faults, &t("half")).await?;
    earlier_protocol_attempt_is_undone(lake, &t("legacy")).await?;
    redrive_fills_a_skipped_batch_once(lake, &t("redrive")).await?;
    if cas {
        concurrent_writer_is_detected(lake, &t("conflict")).await?;
        zombie_that_never_decided_writes_nothing(lake, &faults, &t("zombie-stage")).await?;
        zombie_that_decided_is_published_once(lake, &faults, &t("zombie-publish")).await?;
    }
    faults.clear();
    Ok(())
}

/// Records of offsets first..next, one per 20 s from T0: offsets 0-2 fall in hour 10, 3+ in hour 11.
fn records(first: i64, next: i64) -> Vec<(i64, String)> {
    (first..next)
        .map(|offset| {
            (
                offset,
                format!(
                    r#"{{"v":1,"ts":{},"tags":{{"ns":"n","mcis":"m","vm":"vm-{}"}},"metrics":{{"cpu_utilization":{offset}}}}}"#,
                    T0 + offset * 20_000,
                    offset % 2
                ),
            )
        })
        .collect()
}

/// What the aggregate function does with a batch of records first..next of partition 0: settle the
/// partition's previous write, skip what the lake holds, encode the rest from the tail, write.
async fn write(lake: &Lake, topic: &str, first: i64, next: i64) -> Result<Written, String> {
    let mut ledger = lake
        .ledger(WRITER, topic, 0)
        .await
        .map_err(|e| e.to_string())?;
    let settled = ledger.settle().await.map_err(|e| e.to_string())?;
    let fresh: Vec<i64> = (first..next).filter(|&o| !ledger.holds(o)).collect();
    let mut written = Written {
        settled,
        skipped: next - first - fresh.len() as i64,
        report: None,
    };
    if fresh.is_empty() {
        return Ok(written);
    }
    let w = encode_offsets(topic, &fresh, &mut ledger.take_tail());
    written.report = Some(ledger.write(w).await.map_err(|e| e.to_string())?);
    Ok(written)
}

/// What [`write`] did.
#[derive(Debug)]
struct Written {
    settled: WriteReport,
    skipped: i64,
    report: Option<WriteReport>,
}

fn encode(topic: &str, first: i64, next: i64, tail: &mut crate::rates::Tail) -> PartitionWrite {
    encode_offsets(topic, &(first..next).collect::<Vec<_>>(), tail)
}

/// The batch of the records at `offsets` (ascending, as Kafka delivers them).
fn encode_offsets(topic: &str, offsets: &[i64], tail: &mut crate::rates::Tail) -> PartitionWrite {
    let (first, next) = (offsets[0], offsets[offsets.len() - 1] + 1);
    let mut b = PartitionBatch::new(topic, 0);
    let now = T0 + 3_600_000;
    let limits = Validation {
        max_past: std::time::Duration::from_secs(u32::MAX as u64),
        ..Validation::default()
    };
    for (offset, value) in records(first, next)
        .into_iter()
        .filter(|(o, _)| offsets.binary_search(o).is_ok())
    {
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
        objects: b.objects(tail).expect("encodes"),
        tail: tail.clone(),
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

/// Checks that `raw` holds offsets 0..n of `topic` exactly once (one sample per record) and that
/// no staged object of the topic is left behind.
async fn exactly_once(lake: &Lake, topic: &str, n: i64, case: &str) -> Result<(), String> {
    let (keys, rows) = table(lake, "raw", topic).await?;
    check(
        rows == n,
        &format!("{case}: raw holds {n} samples exactly once, found {rows} in {keys:?}"),
    )?;
    let staged = lake
        .list(&format!("{STAGING_PREFIX}/{WRITER}/{topic}+0"))
        .await
        .map_err(|e| e.to_string())?;
    check(
        staged.is_empty(),
        &format!("{case}: staged objects left behind: {staged:?}"),
    )
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.to_owned()) }
}

/// Retrying the very same batch writes nothing: its offsets are in the lake.
async fn exact_retry_writes_nothing_twice(lake: &Lake, topic: &str) -> Result<(), String> {
    let first = write(lake, topic, 0, 5).await?;
    check(
        first.report.map(|r| r.written) == Some(4),
        &format!("the first attempt writes raw and rollup for two hours: {first:?}"),
    )?;
    let again = write(lake, topic, 0, 5).await?;
    check(
        again.skipped == 5 && again.report.is_none(),
        &format!("the retry is skipped whole: {again:?}"),
    )?;
    write(lake, topic, 5, 8).await?;
    exactly_once(lake, topic, 8, "exact retry").await
}

/// A batch 0..5 is decided and published but not committed; the retry forms 0..3 (a bisected
/// batch), then 3..5 and 5..6 follow: the first two are skipped, every record is in once.
async fn smaller_retry_after_a_decision_is_skipped(lake: &Lake, topic: &str) -> Result<(), String> {
    write(lake, topic, 0, 5).await?;
    let retry = write(lake, topic, 0, 3).await?;
    check(retry.skipped == 3, &format!("0..3 skipped: {retry:?}"))?;
    let rest = write(lake, topic, 3, 6).await?;
    check(
        rest.skipped == 2 && rest.report.is_some(),
        &format!("3..5 skipped, 5 written: {rest:?}"),
    )?;
    exactly_once(lake, topic, 6, "smaller retry").await
}

/// The group's offsets are reset to the beginning after everything was written (or expired while
/// the group was idle): the replay writes nothing.
async fn replay_after_an_offset_reset_is_skipped(lake: &Lake, topic: &str) -> Result<(), String> {
    write(lake, topic, 0, 4).await?;
    write(lake, topic, 4, 8).await?;
    let replay = write(lake, topic, 0, 8).await?;
    check(
        replay.skipped == 8 && replay.report.is_none(),
        &format!("the replay is skipped: {replay:?}"),
    )?;
    write(lake, topic, 0, 9).await?;
    exactly_once(lake, topic, 9, "replay").await
}

/// Batch 3..6 goes to the on-failure destination and the chain moves on from 6; the redrive of
/// 3..6 writes it, a second redrive and a replay from 0 skip it, and batches before the first
/// decision (offsets the partition had before the lake started) are written when they come.
async fn redrive_fills_a_skipped_batch_once(lake: &Lake, topic: &str) -> Result<(), String> {
    write(lake, topic, 1, 3).await?;
    write(lake, topic, 6, 9).await?;
    let key = Path::from(state_key(WRITER, topic, 0));
    let (state, _) = lake
        .read_state::<PartitionState>(&key)
        .await
        .map_err(|e| e.to_string())?;
    let gaps = state.map(|s| s.gaps).unwrap_or_default();
    check(
        gaps == [(i64::MIN, 1), (3, 6)],
        &format!("the skipped batch and everything before the first one are gaps: {gaps:?}"),
    )?;
    exactly_once(lake, topic, 5, "redrive, before").await?;
    let redrive = write(lake, topic, 3, 6).await?;
    check(
        redrive.skipped == 0 && redrive.report.is_some_and(|r| r.written > 0),
        &format!("the redrive writes the skipped batch: {redrive:?}"),
    )?;
    let again = write(lake, topic, 3, 6).await?;
    check(
        again.skipped == 3 && again.report.is_none(),
        &format!("a second redrive is skipped: {again:?}"),
    )?;
    let replay = write(lake, topic, 0, 10).await?;
    check(
        replay.skipped == 8,
        &format!(
            "a replay from 0 writes offset 0 (before the first decision) and 9 only: {replay:?}"
        ),
    )?;
    exactly_once(lake, topic, 10, "redrive").await
}

/// The store throttles three staged puts: each attempt that meets one fails before deciding,
/// nothing is visible meanwhile, and the retries (as the event source makes them) end with
/// everything written once.
async fn throttled_staging_is_retried(
    lake: &Lake,
    faults: &FaultyStore,
    topic: &str,
) -> Result<(), String> {
    faults.inject(
        Op::Put,
        &format!("{STAGING_PREFIX}/{WRITER}/{topic}+"),
        3,
        Fault::Throttle,
    );
    let mut failed = 0;
    for _ in 0..5 {
        match write(lake, topic, 0, 5).await {
            Ok(_) => break,
            Err(_) => {
                failed += 1;
                exactly_once(lake, topic, 0, "throttled, before a retry").await?;
            }
        }
    }
    check(failed >= 1, "a throttled stage fails its attempt")?;
    exactly_once(lake, topic, 5, "throttled").await
}

/// The state put that decides the batch is applied but reported as failed (a time-out after the
/// store did it): the attempt fails with its batch decided and staged; the retry publishes it and
/// skips its offsets.
async fn decision_applied_but_reported_failed(
    lake: &Lake,
    faults: &FaultyStore,
    topic: &str,
) -> Result<(), String> {
    faults.inject(
        Op::Put,
        &state_key(WRITER, topic, 0),
        1,
        Fault::AppliedButFailed,
    );
    check(
        write(lake, topic, 0, 5).await.is_err(),
        "the attempt fails when its decision is reported failed",
    )?;
    check(
        table(lake, "raw", topic).await?.1 == 0,
        "nothing is published before the retry",
    )?;
    let retry = write(lake, topic, 0, 5).await?;
    check(
        retry.settled.rolled_forward == 4 && retry.skipped == 5,
        &format!("the retry publishes the decided batch and skips it: {retry:?}"),
    )?;
    exactly_once(lake, topic, 5, "applied but failed").await
}

/// Publishing fails after the first object: the retry publishes the rest, and the half-published
/// batch is never visible twice.
async fn publish_failing_half_way_is_rolled_forward(
    lake: &Lake,
    faults: &FaultyStore,
    topic: &str,
) -> Result<(), String> {
    // Objects are published in key order: raw/..hour=10.. first, then raw/..hour=11.., rollups.
    faults.inject(
        Op::Copy,
        &format!("raw/dt=2025-11-21/hour=11/{topic}+"),
        1,
        Fault::Throttle,
    );
    check(
        write(lake, topic, 0, 5).await.is_err(),
        "a failed copy fails the attempt",
    )?;
    check(
        table(lake, "raw", topic).await?.1 == 3,
        "hour 10 was published before the failure",
    )?;
    let next = write(lake, topic, 0, 7).await?;
    check(
        next.settled.rolled_forward == 4 && next.skipped == 5,
        &format!("the retry finishes the publish and skips 0..5: {next:?}"),
    )?;
    exactly_once(lake, topic, 7, "half published").await
}

/// A state of the earlier protocol (objects written in place, never marked complete) is undone:
/// its objects are removed and its offsets written again, once.
async fn earlier_protocol_attempt_is_undone(lake: &Lake, topic: &str) -> Result<(), String> {
    let dead = encode(topic, 0, 5, &mut Default::default());
    let key = Path::from(state_key(WRITER, topic, 0));
    let state = PartitionState {
        first_offset: 0,
        next_offset: 5,
        keys: dead.objects.iter().map(|o| o.key.clone()).collect(),
        complete: false,
        ..Default::default()
    };
    lake.store()
        .put(&key, serde_json::to_vec(&state).expect("serializes").into())
        .await
        .map_err(|e| e.to_string())?;
    lake.put_all(&dead.objects[..1])
        .await
        .map_err(|e| e.to_string())?;
    let next = write(lake, topic, 0, 6).await?;
    check(
        next.settled.removed == 4 && next.skipped == 0,
        &format!("the earlier attempt is removed and its offsets written anew: {next:?}"),
    )?;
    exactly_once(lake, topic, 6, "earlier protocol").await
}

/// A writer holding an old version of the state cannot overwrite a newer one.
async fn concurrent_writer_is_detected(lake: &Lake, topic: &str) -> Result<(), String> {
    write(lake, topic, 0, 2).await?;
    let key = Path::from(state_key(WRITER, topic, 0));
    let (_, old) = lake
        .read_state::<PartitionState>(&key)
        .await
        .map_err(|e| e.to_string())?;
    write(lake, topic, 2, 4).await?;
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

/// A zombie (a consumer that lost its partition, a remote invocation the runner gave up on)
/// staged 0..5 and is held before it decides; the new owner writes 0..3 and 3..6; the zombie
/// then tries to decide, fails, and leaves nothing behind.
async fn zombie_that_never_decided_writes_nothing(
    lake: &Lake,
    faults: &FaultyStore,
    topic: &str,
) -> Result<(), String> {
    let (hold, held) = Fault::hold();
    faults.inject(Op::Put, &state_key(WRITER, topic, 0), 1, hold);
    let zombie = write(lake, topic, 0, 5);
    let owner = async {
        let _ = held.arrived.await;
        let a = write(lake, topic, 0, 3).await;
        let b = write(lake, topic, 3, 6).await;
        let _ = held.release.send(());
        a.and(b)
    };
    let (zombie, owner) = futures::join!(zombie, owner);
    owner?;
    check(
        zombie
            .as_ref()
            .is_err_and(|e| e.contains("changed under us")),
        &format!("the zombie's decision conflicts: {zombie:?}"),
    )?;
    exactly_once(lake, topic, 6, "zombie before deciding").await
}

/// A zombie decided 0..5 and is held while publishing; the new owner publishes the decision on
/// its behalf, skips 0..5 and writes 5..7; the zombie's late publish changes nothing.
async fn zombie_that_decided_is_published_once(
    lake: &Lake,
    faults: &FaultyStore,
    topic: &str,
) -> Result<(), String> {
    let (hold, held) = Fault::hold();
    faults.inject(Op::Copy, &format!("/{topic}+0+"), 1, hold);
    let zombie = write(lake, topic, 0, 5);
    let owner = async {
        let _ = held.arrived.await;
        let taken_over = write(lake, topic, 0, 7).await;
        let _ = held.release.send(());
        taken_over
    };
    let (zombie, owner) = futures::join!(zombie, owner);
    let owner = owner?;
    check(
        owner.settled.rolled_forward == 4 && owner.skipped == 5,
        &format!("the new owner publishes the zombie's decision and skips it: {owner:?}"),
    )?;
    // The zombie either copied the same staged bytes again or found them cleaned up; either way
    // its attempt is over and nothing is doubled.
    tracing::debug!(?zombie, "the zombie's late publish");
    exactly_once(lake, topic, 7, "zombie after deciding").await
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

    #[test]
    fn a_second_writer_of_a_local_lake_is_refused_by_name() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        // Another process holds the lock: an flock through a file of our own stands in for it.
        std::fs::create_dir_all(dir.path().join("_state")).unwrap();
        let mut other = std::fs::File::create(dir.path().join("_state/writer.lock")).unwrap();
        rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        other.write_all(b"pid 4242 (damselfly)").unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(write(&lake, "locked", 0, 2))
            .expect_err("a second writer is refused");
        assert!(
            err.contains("is being written by another process (pid 4242 (damselfly))"),
            "{err}"
        );
        assert!(err.contains("use an s3:// lake"), "{err}");
        drop(other);
        rt.block_on(write(&lake, "locked", 0, 2)).unwrap();
    }
}
