//! The alarm handler: a Kafka batch (or a scheduled tick) -> rule evaluation -> notifications, exactly once per transition.
//!
//! Per topic-partition, one state object `_state/alarm/{group}/{topic}+{partition}.json` holds the
//! evaluator's state (with the last evaluated offset) and the notifications not yet delivered.
//! An invocation:
//! 1. reads the state and its version;
//! 2. evaluates the records after the state's offset (a retried batch evaluates nothing twice);
//! 3. writes the new transitions to the `alarms` table (deterministic keys: a retry overwrites);
//! 4. writes the state with the new notifications pending, conditionally (If-Match): a consumer that
//!    lost the partition in a rebalance fails here instead of notifying;
//! 5. sends every pending notification; those that fail after retries stay pending for the next
//!    invocation (nothing is lost); writes the state again.
//!
//! A crash between a send and step 5's write re-sends that notification once: the only duplicate
//! window, milliseconds wide.

use std::collections::BTreeMap;

use aws_lambda_events::event::kafka::{KafkaEvent, KafkaRecord};
use base64::Engine as _;
use damselfly_core::alarm::{
    AlarmState, EvalConfig, Evaluator, Notification, RuleError, alarms_batch, samples,
};
use damselfly_core::encode::{EncodeError, batch_parquet};
use damselfly_core::ledger::{STATE_PREFIX, Version};
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

/// One partition's alarm state as stored in the lake.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionAlarms {
    /// The evaluator's state: every series and the last evaluated offset.
    pub eval: AlarmState,
    /// Notifications decided but not yet delivered, oldest first.
    #[serde(default)]
    pub pending: Vec<Notification>,
}

/// What one invocation did; returned as the function's JSON result.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
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
}

impl HandlerError {
    /// Whether retrying the same batch may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, HandlerError::Encode(_))
    }
}

impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(e: HandlerError) -> Self {
        let kind = if e.is_retryable() {
            "Retryable"
        } else {
            "NonRetryable"
        };
        lambda_runtime::Diagnostic {
            error_type: kind.to_owned(),
            error_message: e.to_string(),
        }
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
        for ((topic, partition), records) in partitions(event) {
            let first = records.first().map_or(0, |r| r.offset);
            let (mut evaluated, mut undecodable) = (0, 0);
            let history = HistoryKey::Batch { first };
            let outcome = self
                .update(&topic, partition, &history, |state| {
                    let mut notes = Vec::new();
                    for r in &records {
                        let (key, value) = (r.key.as_deref().map(b64), r.value.as_deref().map(b64));
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
        state.pending.extend(new);
        let version = self.lake.put_state(&key, &state, version).await?;
        if state.pending.is_empty() {
            return Ok(outcome);
        }
        let mut unsent = Vec::new();
        for n in state.pending.drain(..) {
            match self.notifier.send(&n).await {
                Ok(()) => {
                    outcome.sent += 1;
                    tracing::info!(
                        rule = %n.rule_id, vm = %n.vm(), from = %n.from, to = %n.to,
                        kind = n.kind.as_str(), target = %self.notifier.target(),
                        "alarm notification sent"
                    );
                }
                Err(e) => {
                    tracing::warn!(rule = %n.rule_id, vm = %n.vm(), error = %e, "notification kept pending");
                    unsent.push(n);
                }
            }
        }
        outcome.pending = unsent.len() as u64;
        state.pending = unsent;
        self.lake.put_state(&key, &state, version).await?;
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

/// The event's records by (topic, partition), each in offset order.
fn partitions(event: KafkaEvent) -> BTreeMap<(String, i32), Vec<KafkaRecord>> {
    let mut out: BTreeMap<(String, i32), Vec<KafkaRecord>> = BTreeMap::new();
    for (group, records) in event.records {
        let fallback_topic = group
            .rsplit_once('-')
            .map_or(group.as_str(), |(t, _)| t)
            .to_owned();
        for r in records {
            let topic = r.topic.clone().unwrap_or_else(|| fallback_topic.clone());
            out.entry((topic, r.partition as i32)).or_default().push(r);
        }
    }
    for records in out.values_mut() {
        records.sort_by_key(|r| r.offset);
    }
    out
}

fn b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(s)
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
