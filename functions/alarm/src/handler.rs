//! The alarm handler: a Kafka batch (or a scheduled tick) -> rule evaluation -> notifications, exactly once per transition.
//!
//! Per topic-partition, one state object `_state/alarm/{group}/{topic}+{partition}.json` holds the
//! evaluator's state (with the last evaluated offset) and the notifications not yet delivered.
//! An invocation:
//! 1. reads the state and its version;
//! 2. evaluates the records after the state's offset (a retried batch evaluates nothing twice);
//! 3. writes the new transitions to the `alarms` table (deterministic keys: a retry overwrites);
//! 4. writes the state with the new notifications pending and claimed by this invocation (a lease),
//!    conditionally (If-Match): a consumer that lost the partition in a rebalance fails here
//!    instead of notifying, and of a batch and a tick that overlap only one claims a notification;
//! 5. sends what it claimed; what fails after retries stays pending, its claim released, for the
//!    next invocation (nothing is lost); writes the state again (re-reading it on a conflict).
//!
//! A crash between a send and step 5's write re-sends that notification once its claim expires:
//! the only duplicate window, milliseconds wide.

use std::collections::{BTreeMap, BTreeSet};

use aws_lambda_events::event::kafka::KafkaEvent;
use damselfly_contract::event::decode_base64;
use damselfly_contract::{Partition, Retryable};
use damselfly_core::alarm::{
    AlarmState, EvalConfig, Evaluator, Notification, RuleError, alarms_batch, samples,
};
use damselfly_core::encode::{EncodeError, batch_parquet};
use damselfly_core::ledger::{STATE_PREFIX, StateObject, Version};
use damselfly_core::{InputRecord, Lake, LakeError, Validation};
use damselfly_schemas::Table;
use damselfly_schemas::paths::{HourPartition, batch_object_key};
use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::notifier::Notifier;
use crate::rules_store::{RulesError, RulesStore};

/// Times a tick re-reads a partition's state after losing a race with a batch.
const TICK_CONFLICT_RETRIES: usize = 3;

/// Times the final state write re-reads the state after another invocation wrote it.
const SETTLE_RETRIES: usize = 5;

/// How long a claim to send a notification holds: past it, another invocation sends it.
const SEND_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// One partition's alarm state as stored in the lake.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionAlarms {
    /// The evaluator's state: every series and the last evaluated offset.
    pub eval: AlarmState,
    /// Notifications decided but not yet delivered, oldest first.
    #[serde(default)]
    pub pending: Vec<Pending>,
}

/// Stored as zstd-compressed JSON.
impl StateObject for PartitionAlarms {}

/// A notification waiting to be delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    /// What to send.
    pub notification: Notification,
    /// While set and in the future, an invocation is sending it and no other may (ms since the
    /// epoch); it expires so that a crashed sender's notifications are sent by the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until_ms: Option<i64>,
}

impl Pending {
    fn new(notification: Notification) -> Self {
        Self {
            notification,
            lease_until_ms: None,
        }
    }
}

/// What one invocation did; returned as the function's JSON result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlarmSummary {
    /// Topic-partitions handled.
    pub partitions: usize,
    /// Records evaluated.
    pub records: u64,
    /// Records that did not decode (the aggregate function puts them in `dlq`).
    pub undecodable: u64,
    /// New notifications (transitions and repeats).
    pub notifications: u64,
    /// Notifications delivered, including earlier pending ones.
    pub sent: u64,
    /// Notifications still pending after this invocation.
    pub pending: u64,
}

/// Why an invocation failed; the event source retries the whole batch.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The lake (state or history) could not be read or written: transient, retry.
    #[error("alarm state or history: {0}")]
    Lake(#[from] LakeError),
    /// The rules could not be read or are invalid: retry after fixing them.
    #[error("alarm rules: {0}")]
    Rules(#[from] RulesError),
    /// The rule set failed the evaluator's checks.
    #[error("alarm rules: {0}")]
    RuleSet(#[from] RuleError),
    /// The history rows could not be encoded: a bug.
    #[error("encoding alarm history: {0}")]
    Encode(#[from] EncodeError),
    /// The event has `records` but is not a Kafka event.
    #[error("not a Kafka event: {0}")]
    Event(String),
}

impl Retryable for HandlerError {
    fn is_retryable(&self) -> bool {
        !matches!(self, HandlerError::Encode(_) | HandlerError::Event(_))
    }
}

/// Running totals of invocations: every count adds up, except `pending`, which is the latest's.
impl damselfly_contract::Summary for AlarmSummary {
    fn merge(&mut self, later: &Self) {
        self.partitions += later.partitions;
        self.records += later.records;
        self.undecodable += later.undecodable;
        self.notifications += later.notifications;
        self.sent += later.sent;
        self.pending = later.pending;
    }
}

impl damselfly_contract::Handler for Alarm {
    type Summary = AlarmSummary;
    type Error = HandlerError;

    fn handle(
        &self,
        event: KafkaEvent,
    ) -> impl std::future::Future<Output = Result<AlarmSummary, HandlerError>> + Send {
        Alarm::handle(self, event)
    }
}

/// The alarm function with its lake, rules and notifier.
#[derive(Debug, Clone)]
pub struct Alarm {
    lake: Lake,
    rules: RulesStore,
    notifier: Notifier,
    group: String,
    eval: EvalConfig,
}

impl Alarm {
    /// A handler over explicit parts.
    pub fn new(
        lake: Lake,
        rules: RulesStore,
        notifier: Notifier,
        group: &str,
        eval: EvalConfig,
    ) -> Self {
        Self {
            lake,
            rules,
            notifier,
            group: group.to_owned(),
            eval,
        }
    }

    /// A handler from the function's configuration (SNS when a topic is set, else the outbox).
    pub async fn from_config(config: &Config) -> anyhow::Result<Self> {
        let lake = Lake::open(&config.lake)?;
        let rules = RulesStore::open(&config.rules)?;
        let notifier = match (&config.sns_topic_arn, &config.outbox) {
            (Some(arn), _) => Notifier::sns(arn.clone()).await,
            (None, Some(path)) => Notifier::Outbox(path.into()),
            (None, None) => anyhow::bail!(
                "SNS_TOPIC_ARN is not set: set it to the alarm topic's ARN, or set ALARM_OUTBOX to a \
                 file that receives notifications as JSON lines"
            ),
        };
        let eval = EvalConfig {
            grace: config.grace,
            ..EvalConfig::default()
        };
        Ok(Self::new(lake, rules, notifier, &config.group, eval))
    }

    /// Where notifications go.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The lake holding the states and the `alarms` table.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    async fn evaluator(&self) -> Result<Evaluator, HandlerError> {
        let rules = self.rules.load().await?;
        Ok(Evaluator::with_config(rules, self.eval)?)
    }

    /// Evaluates one Kafka batch; returns after its notifications are sent or safely pending.
    pub async fn handle(&self, event: KafkaEvent) -> Result<AlarmSummary, HandlerError> {
        let evaluator = self.evaluator().await?;
        let now = chrono_now_ms();
        let limits = Validation::default();
        let mut summary = AlarmSummary::default();
        for Partition {
            topic,
            partition,
            records,
        } in damselfly_contract::partitions(event)
        {
            let first = records.first().map_or(0, |r| r.offset);
            let (mut evaluated, mut undecodable) = (0, 0);
            let history = HistoryKey::Batch { first };
            let outcome = self
                .update(&topic, partition, &history, |state| {
                    let mut notes = Vec::new();
                    for r in &records {
                        let key = r.key.as_deref().map(decode_base64);
                        let value = r.value.as_deref().map(decode_base64);
                        let (Ok(key), Ok(value)) = (key.transpose(), value.transpose()) else {
                            undecodable += 1;
                            continue;
                        };
                        let rec = InputRecord {
                            topic: &topic,
                            partition,
                            offset: r.offset,
                            timestamp_ms: r.timestamp.0.timestamp_millis(),
                            key: key.as_deref(),
                            value: value.as_deref(),
                        };
                        match damselfly_core::decode::decode(&rec, now, &limits) {
                            Ok(msgs) => {
                                evaluated += 1;
                                notes.extend(evaluator.evaluate(
                                    state,
                                    r.offset,
                                    msgs.iter().flat_map(samples),
                                ));
                            }
                            Err(_) => undecodable += 1,
                        }
                    }
                    notes
                })
                .await?;
            summary.partitions += 1;
            summary.records += evaluated;
            summary.undecodable += undecodable;
            summary.add(&outcome);
        }
        tracing::info!(
            partitions = summary.partitions,
            records = summary.records,
            notifications = summary.notifications,
            sent = summary.sent,
            pending = summary.pending,
            "alarm batch evaluated"
        );
        Ok(summary)
    }

    /// Handles whatever Lambda delivers: a Kafka event (it has `records`) is evaluated; any other
    /// event (an EventBridge schedule) runs the tick at the wall clock.
    pub async fn handle_any(
        &self,
        mut payload: serde_json::Value,
    ) -> Result<AlarmSummary, HandlerError> {
        if payload.get("records").is_some() {
            // A record timestamp the event types cannot hold must not fail the whole event.
            damselfly_schemas::lambda_event::clamp_timestamps(&mut payload);
            let event: KafkaEvent =
                serde_json::from_value(payload).map_err(|e| HandlerError::Event(e.to_string()))?;
            self.handle(event).await
        } else {
            self.tick(chrono_now_ms()).await
        }
    }

    /// The scheduled tick: decides periods past their end, detects NO_DATA, repeats firing alarms
    /// and retries pending notifications, for every partition that has a state.
    pub async fn tick(&self, now_ms: i64) -> Result<AlarmSummary, HandlerError> {
        let evaluator = self.evaluator().await?;
        let mut summary = AlarmSummary::default();
        for (topic, partition) in self.partitions_with_state().await? {
            let mut attempt = 0;
            let outcome = loop {
                let history = HistoryKey::Tick { now_ms };
                match self
                    .update(&topic, partition, &history, |state| {
                        evaluator.tick(state, now_ms)
                    })
                    .await
                {
                    Err(HandlerError::Lake(LakeError::Conflict { .. }))
                        if attempt < TICK_CONFLICT_RETRIES =>
                    {
                        attempt += 1;
                    }
                    other => break other?,
                }
            };
            summary.partitions += 1;
            summary.add(&outcome);
        }
        tracing::info!(
            partitions = summary.partitions,
            notifications = summary.notifications,
            sent = summary.sent,
            pending = summary.pending,
            "alarm tick done"
        );
        Ok(summary)
    }

    fn state_dir(&self) -> String {
        format!("{STATE_PREFIX}/alarm/{}", self.group)
    }

    async fn partitions_with_state(&self) -> Result<Vec<(String, i32)>, HandlerError> {
        let dir = Path::from(self.state_dir());
        let listed = self
            .lake
            .store()
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(LakeError::from)?;
        let mut out: Vec<(String, i32)> = listed
            .objects
            .iter()
            .filter_map(|o| {
                let name = o.location.filename()?.strip_suffix(".json")?;
                let (topic, p) = name.rsplit_once('+')?;
                Some((topic.to_owned(), p.parse().ok()?))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Steps 1-5 of the module docs for one partition, `evaluate` being step 2.
    async fn update(
        &self,
        topic: &str,
        partition: i32,
        history: &HistoryKey,
        evaluate: impl FnOnce(&mut AlarmState) -> Vec<Notification>,
    ) -> Result<Outcome, HandlerError> {
        let key = Path::from(format!("{}/{topic}+{partition}.json", self.state_dir()));
        let (state, version): (Option<PartitionAlarms>, Version) =
            self.lake.read_state(&key).await?;
        let mut state = state.unwrap_or_default();
        let new = evaluate(&mut state.eval);
        self.write_history(topic, partition, history, &new).await?;
        let mut outcome = Outcome {
            new: new.len() as u64,
            ..Outcome::default()
        };
        state.pending.extend(new.into_iter().map(Pending::new));
        // Claim what nobody else is sending: the conditional write below makes the claim exclusive,
        // so a tick and a batch that overlap never both send one notification.
        let now = chrono_now_ms();
        let mut claimed = Vec::new();
        for p in &mut state.pending {
            if p.lease_until_ms.is_none_or(|until| until <= now) {
                p.lease_until_ms = Some(now + SEND_LEASE.as_millis() as i64);
                claimed.push(p.notification.clone());
            }
        }
        let mut version = self.lake.put_state(&key, &state, version).await?;
        if claimed.is_empty() {
            outcome.pending = state.pending.len() as u64;
            return Ok(outcome);
        }
        let (mut sent, mut failed) = (BTreeSet::new(), BTreeSet::new());
        for n in &claimed {
            match self.notifier.send(n).await {
                Ok(()) => {
                    outcome.sent += 1;
                    sent.insert(n.dedup_id());
                    tracing::info!(
                        rule = %n.rule_id, vm = %n.vm(), from = %n.from, to = %n.to,
                        kind = n.kind.as_str(), destination = %self.notifier.destination(),
                        "alarm notification sent"
                    );
                }
                Err(e) => {
                    failed.insert(n.dedup_id());
                    tracing::warn!(rule = %n.rule_id, vm = %n.vm(), error = %e, "notification kept pending");
                }
            }
        }
        // Settle: drop what was sent, release the lease of what failed (the next invocation
        // retries it). Someone else may have written meanwhile: re-read and settle on theirs.
        for attempt in 0.. {
            state
                .pending
                .retain(|p| !sent.contains(&p.notification.dedup_id()));
            for p in &mut state.pending {
                if failed.contains(&p.notification.dedup_id()) {
                    p.lease_until_ms = None;
                }
            }
            match self.lake.put_state(&key, &state, version).await {
                Ok(_) => break,
                Err(LakeError::Conflict { .. }) if attempt < SETTLE_RETRIES => {
                    let (again, v): (Option<PartitionAlarms>, Version) =
                        self.lake.read_state(&key).await?;
                    state = again.unwrap_or_default();
                    version = v;
                }
                Err(e) => return Err(e.into()),
            }
        }
        outcome.pending = state.pending.len() as u64;
        Ok(outcome)
    }

    async fn write_history(
        &self,
        topic: &str,
        partition: i32,
        history: &HistoryKey,
        notes: &[Notification],
    ) -> Result<(), HandlerError> {
        // Keyed by the partition directory, so objects are written in time order.
        let mut by_hour: BTreeMap<String, (HourPartition, Vec<Notification>)> = BTreeMap::new();
        for n in notes {
            let Some(hour) = HourPartition::of_millis(n.ts_ms) else {
                continue;
            };
            by_hour
                .entry(hour.dir(Table::Alarms))
                .or_insert_with(|| (hour, Vec::new()))
                .1
                .push(n.clone());
        }
        for (hour, rows) in by_hour.into_values() {
            let key = match history {
                HistoryKey::Batch { first } => {
                    batch_object_key(Table::Alarms, hour, topic, partition, *first)
                }
                HistoryKey::Tick { now_ms } => format!(
                    "{}/{topic}+{partition}+tick-{now_ms}.parquet",
                    hour.dir(Table::Alarms)
                ),
            };
            let batch = alarms_batch(topic, partition, &rows)
                .map_err(|e| HandlerError::Encode(EncodeError::from(e)))?;
            let bytes = batch_parquet(&batch, &["vm", "rule_id", "ts"])?;
            self.lake
                .store()
                .put(&Path::from(key), PutPayload::from_bytes(bytes))
                .await
                .map_err(LakeError::from)?;
        }
        Ok(())
    }
}

/// What `update` did for one partition.
#[derive(Debug, Default)]
struct Outcome {
    new: u64,
    sent: u64,
    pending: u64,
}

impl AlarmSummary {
    fn add(&mut self, o: &Outcome) {
        self.notifications += o.new;
        self.sent += o.sent;
        self.pending += o.pending;
    }
}

/// How a history object is named: after the batch's first offset, or the tick's time.
enum HistoryKey {
    Batch { first: i64 },
    Tick { now_ms: i64 },
}

fn chrono_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::kafka::KafkaRecord;
    use base64::Engine as _;
    use std::sync::Arc;

    use aws_lambda_events::encodings::MillisecondTimestamp;
    use damselfly_core::LakeLocation;
    use object_store::memory::InMemory;

    use crate::notifier::OutboxLine;

    const RULES: &str = r#"{"v": 1, "rules": [{"id": "cpu", "name": "CPU", "metric": "cpu_utilization",
        "statistic": "max", "period": "10s", "comparator": ">", "critical": 90,
        "missing_data": "ignore"}]}"#;

    fn record(offset: i64, ts: i64, cpu: f64) -> KafkaRecord {
        let value = format!(
            r#"{{"v":1,"ts":{ts},"tags":{{"ns":"n","mcis":"m","vm":"vm-1"}},"metrics":{{"cpu_utilization":{cpu}}}}}"#
        );
        let mut r = KafkaRecord::default();
        r.topic = Some("metrics".into());
        r.partition = 0;
        r.offset = offset;
        r.timestamp = MillisecondTimestamp(chrono_ts(ts));
        r.key = Some(base64::engine::general_purpose::STANDARD.encode("vm-1"));
        r.value = Some(base64::engine::general_purpose::STANDARD.encode(value));
        r
    }

    fn chrono_ts(ms: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn event(records: Vec<KafkaRecord>) -> KafkaEvent {
        let mut e = KafkaEvent::default();
        e.records.insert("metrics-0".into(), records);
        e
    }

    /// A handler over an in-memory lake, rules in a file, notifications to `outbox`.
    fn handler(dir: &std::path::Path, lake: &Lake, outbox: std::path::PathBuf) -> Alarm {
        let rules = dir.join("rules.json");
        std::fs::write(&rules, RULES).unwrap();
        Alarm::new(
            lake.clone(),
            RulesStore::open(rules.to_str().unwrap()).unwrap(),
            Notifier::Outbox(outbox),
            "g",
            EvalConfig::default(),
        )
    }

    fn outbox(path: &std::path::Path) -> Vec<OutboxLine> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn lake() -> Lake {
        Lake::with_store(
            LakeLocation::parse("s3://mem/lake").unwrap(),
            Arc::new(InMemory::new()),
        )
    }

    #[tokio::test]
    async fn lambda_kafka_and_schedule_events_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, out) = (lake(), dir.path().join("outbox.jsonl"));
        let alarm = handler(dir.path(), &lake, out.clone());
        let value = format!(
            r#"{{"v":1,"ts":{},"tags":{{"ns":"n","mcis":"m","vm":"vm-1"}},"metrics":{{"cpu_utilization":97}}}}"#,
            chrono_now_ms() - 5_000
        );
        // As Lambda's self-managed Kafka trigger sends it (timestamps as numbers).
        let kafka = serde_json::json!({
            "eventSource": "SelfManagedKafka",
            "bootstrapServers": "b-1:9092",
            "records": {"metrics-0": [{
                "topic": "metrics", "partition": 0, "offset": 7, "timestamp": chrono_now_ms(),
                "timestampType": "CREATE_TIME",
                "key": base64::engine::general_purpose::STANDARD.encode("vm-1"),
                "value": base64::engine::general_purpose::STANDARD.encode(value),
                "headers": []}]}
        });
        let s = alarm.handle_any(kafka).await.unwrap();
        assert_eq!((s.records, s.sent), (1, 1));
        // As EventBridge Scheduler sends it: a tick over every partition with a state.
        let schedule = serde_json::json!({
            "version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
            "time": "2026-11-21T10:00:00Z", "region": "eu-west-1", "resources": [], "detail": {}
        });
        let s = alarm.handle_any(schedule).await.unwrap();
        assert_eq!((s.partitions, s.records), (1, 0));
        let bad = serde_json::json!({"records": 3});
        let e = alarm.handle_any(bad).await.unwrap_err();
        assert!(
            !e.is_retryable() && e.to_string().starts_with("not a Kafka event"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_retried_batch_notifies_once() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, out) = (lake(), dir.path().join("outbox.jsonl"));
        let alarm = handler(dir.path(), &lake, out.clone());
        let t = chrono_now_ms() - 60_000;
        let batch = || event(vec![record(0, t, 10.0), record(1, t + 2_000, 95.0)]);
        let first = alarm.handle(batch()).await.unwrap();
        assert_eq!((first.notifications, first.sent, first.pending), (1, 1, 0));
        let again = alarm.handle(batch()).await.unwrap();
        assert_eq!((again.notifications, again.sent), (0, 0));
        let lines = outbox(&out);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].subject, "[CRITICAL] cpu on vm-1");
        let history = lake.list("alarms").await.unwrap();
        assert_eq!(history.len(), 1, "{history:?}");
    }

    #[tokio::test]
    async fn an_unsent_notification_stays_pending_until_a_later_invocation_sends_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake();
        // A file where the outbox's directory should be: every append fails.
        std::fs::write(dir.path().join("blocked"), "").unwrap();
        let broken = handler(dir.path(), &lake, dir.path().join("blocked/outbox.jsonl"));
        let t = chrono_now_ms() - 60_000;
        let s = broken
            .handle(event(vec![record(0, t, 95.0)]))
            .await
            .unwrap();
        assert_eq!((s.notifications, s.sent, s.pending), (1, 0, 1));
        let out = dir.path().join("outbox.jsonl");
        let fixed = handler(dir.path(), &lake, out.clone());
        let s = fixed.tick(chrono_now_ms()).await.unwrap();
        assert_eq!((s.sent, s.pending), (1, 0));
        assert_eq!(outbox(&out).len(), 1);
        assert_eq!(fixed.tick(chrono_now_ms()).await.unwrap().sent, 0);
    }

    #[tokio::test]
    async fn a_notification_claimed_by_another_invocation_is_left_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, out) = (lake(), dir.path().join("outbox.jsonl"));
        let alarm = handler(dir.path(), &lake, out.clone());
        let t = chrono_now_ms() - 60_000;
        alarm.handle(event(vec![record(0, t, 95.0)])).await.unwrap();
        // Put the sent notification back, claimed by someone else until a minute from now.
        let key = Path::from("_state/alarm/g/metrics+0.json");
        let (state, v): (Option<PartitionAlarms>, Version) = lake.read_state(&key).await.unwrap();
        let mut state = state.unwrap();
        let note = outbox(&out).remove(0).notification;
        state.pending.push(Pending {
            notification: note,
            lease_until_ms: Some(chrono_now_ms() + 60_000),
        });
        lake.put_state(&key, &state, v).await.unwrap();
        let s = alarm.tick(chrono_now_ms()).await.unwrap();
        assert_eq!((s.sent, s.pending), (0, 1));
        assert_eq!(outbox(&out).len(), 1, "not sent a second time");
        // Once the claim has expired (its holder crashed), the next invocation sends it.
        let (state, v): (Option<PartitionAlarms>, Version) = lake.read_state(&key).await.unwrap();
        let mut state = state.unwrap();
        state.pending[0].lease_until_ms = Some(chrono_now_ms() - 1);
        lake.put_state(&key, &state, v).await.unwrap();
        let s = alarm.tick(chrono_now_ms()).await.unwrap();
        assert_eq!((s.sent, s.pending), (1, 0));
        assert_eq!(outbox(&out).len(), 2);
    }
}
