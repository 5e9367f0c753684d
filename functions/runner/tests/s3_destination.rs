//! The `s3://` on-failure destination against LocalStack S3: a batch that fails non-retryably lands as one Lambda-style failure record.
//!
//! Needs `localstack/up` and its `localstack/.env` in the environment (tests/run does both); the
//! broker is librdkafka's mock cluster in this process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine as _;
use common::{cluster, committed, config, init_logs, publish, values};
use damselfly_runner::{Function, FunctionError, OnFailure, RunnerConfig, Stats};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

/// Fails every batch holding the record "poison" with an error retrying cannot fix.
struct RejectsPoison;

#[async_trait::async_trait]
impl Function for RejectsPoison {
    async fn invoke(&self, event: KafkaEvent) -> Result<serde_json::Value, FunctionError> {
        if values(&event).iter().any(|v| v == "poison") {
            return Err(FunctionError::fatal(
                "schema violation: poison is not a metric",
            ));
        }
        Ok(serde_json::json!({}))
    }
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run tests/run, or localstack/up and `source localstack/.env`")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local stack (tests/run starts it)"]
async fn a_non_retryable_batch_lands_in_s3_as_a_lambda_failure_record() {
    init_logs();
    let bucket = env("LAKE_BUCKET");
    env("AWS_ENDPOINT_URL");
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let prefix = format!("tests/on-failure-{id}");
    let (_cluster, brokers) = cluster("metrics", 2);
    publish(
        &brokers,
        "metrics",
        (0..20_i64).flat_map(|o| {
            (0..2).map(move |p| {
                let v = if (p, o) == (1, 7) {
                    "poison".to_owned()
                } else {
                    format!("{p}-{o}")
                };
                (p, v)
            })
        }),
    );
    let config = RunnerConfig {
        // Retries are allowed, but with fail-fast a non-retryable error must not use them.
        max_retry_attempts: Some(5),
        fail_fast_non_retryable: true,
        on_failure: Some(
            format!("s3://{bucket}/{prefix}/")
                .parse::<OnFailure>()
                .unwrap(),
        ),
        ..config(&brokers, "metrics", "g")
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        damselfly_runner::run(
            &config,
            Arc::new(RejectsPoison),
            Arc::new(Stats::default()),
            std::future::pending(),
        ),
    )
    .await
    .expect("bounded")
    .expect("runs");
    assert_eq!(summary.on_failure_batches, 1, "{summary:?}");
    assert_eq!(
        (summary.invocation_errors, summary.retries),
        (1, 0),
        "{summary:?}"
    );
    assert_eq!(
        summary.records + summary.on_failure_records,
        40,
        "{summary:?}"
    );
    assert_eq!(
        committed(&brokers, "g", "metrics", 2),
        vec![20, 20],
        "committed past the failed batch"
    );

    // Read the record back from S3, as an operator would.
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .with_allow_http(true)
        .build()
        .unwrap();
    let listed = s3
        .list_with_delimiter(Some(&Path::from(format!("{prefix}/g"))))
        .await
        .unwrap();
    assert_eq!(listed.objects.len(), 1, "{:?}", listed.objects);
    let key = &listed.objects[0].location;
    let bytes = s3.get(key).await.unwrap().bytes().await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    // The key is deterministic: {prefix}/{group}/{topic}+{partition}+{first offset}.json.
    let first = record["KafkaBatchInfo"]["recordsInfo"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(tp, r)| {
            let (topic, partition) = tp.rsplit_once('-').unwrap();
            format!("{topic}+{partition}+{}", r["firstRecordOffset"])
        })
        .unwrap();
    assert_eq!(key.as_ref(), format!("{prefix}/g/{first}.json"));

    assert_eq!(record["version"], "1.0");
    assert!(record["timestamp"].is_string());
    assert_eq!(record["requestContext"]["condition"], "NonRetryableError");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(record["requestContext"]["consumerGroup"], "g");
    assert_eq!(
        record["responseContext"]["errorMessage"],
        "schema violation: poison is not a metric"
    );
    assert_eq!(record["responseContext"]["retryable"], false);
    assert!(record["firstAttemptAt"].is_string() && record["lastAttemptAt"].is_string());
    assert_eq!(record["KafkaBatchInfo"]["bootstrapServers"], brokers);

    // The payload is the event the function was given, Lambda-shaped.
    let payload = &record["payload"];
    assert_eq!(payload["eventSource"], "SelfManagedKafka", "{payload}");
    let records: Vec<&serde_json::Value> = payload["records"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| v.as_array().unwrap())
        .collect();
    assert_eq!(
        records.len() as u64,
        summary.on_failure_records,
        "the record holds the whole failed batch"
    );
    assert_eq!(record["KafkaBatchInfo"]["batchSize"], records.len());
    let poison = base64::engine::general_purpose::STANDARD.encode("poison");
    let found = records
        .iter()
        .find(|r| r["value"] == poison.as_str())
        .expect("the poison record is in the failed batch");
    assert_eq!(
        (found["partition"].as_i64(), found["offset"].as_i64()),
        (Some(1), Some(7))
    );
    assert_eq!(found["topic"], "metrics");
    assert!(
        found["timestamp"].is_i64(),
        "milliseconds as a number: {found}"
    );
}
