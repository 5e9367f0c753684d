//! `infra/deploy --local` puts the template's LocalStack subset up through CloudFormation, and the
//! pipeline runs end to end against what that stack created: its bucket holds the lake, its SNS
//! topic delivers an alarm to its SQS subscription, and the template's Glue tables and lifecycle
//! rules match the Parquet the functions wrote.
//!
//! Needs `localstack/up` and its `localstack/.env` in the environment (tests/run does both), plus
//! `DAMSELFLY_PYTHON`: a Python with boto3, duckdb and cfn-lint (tests/requirements.txt).

mod common;
use common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use damselfly_agent::{Publisher, PublisherConfig};
use serde_json::{Value, json};

/// The repository root (the CLI crate's parent).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a command, asserting it succeeded; returns its output.
fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a Python snippet with `DAMSELFLY_PYTHON` and parses its stdout as JSON.
fn python(script: &str, args: &[&str], envs: &HashMap<String, String>) -> Value {
    let out = run_ok(
        Command::new(env("DAMSELFLY_PYTHON"))
            .args(["-c", script])
            .args(args)
            .envs(envs),
        "python",
    );
    serde_json::from_slice(&out.stdout).expect("the snippet prints JSON")
}

/// Reads the `export KEY=VALUE` lines of an env file written by infra/deploy.
fn read_env_file(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).expect("infra/deploy wrote the env file");
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_owned(), v.trim_matches('\'').to_owned())
        })
        .collect()
}

/// A stack deployed with `infra/deploy --local`; deleted (with its retained bucket) when dropped.
struct LocalStack {
    name: String,
}

impl LocalStack {
    fn deploy(name: &str, env_file: &Path, params: &[String]) -> (Self, String) {
        let mut cmd = Command::new(repo().join("infra/deploy"));
        cmd.args(["--local", "--stack-name", name, "--env-file"])
            .arg(env_file);
        for p in params {
            cmd.args(["-p", p]);
        }
        let out = run_ok(&mut cmd, "infra/deploy --local");
        (
            Self {
                name: name.to_owned(),
            },
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        let out = Command::new(repo().join("infra/deploy"))
            .args(["--local", "--delete", "--stack-name", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "deleting stack {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("deleting stack {}: {e}", self.name),
        }
    }
}

/// Runs `damselfly ARGS` with the deployed stack's environment; parses stdout as JSON when asked.
fn damselfly_in(stack_env: &HashMap<String, String>, args: &[&str]) -> Output {
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_damselfly"))
            .args(args)
            .envs(stack_env),
        &format!("damselfly {args:?}"),
    )
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The SNS subscriptions of a topic, as (protocol, endpoint) pairs.
const SUBSCRIPTIONS: &str = r#"
import boto3, json, os, sys
sns = boto3.client("sns", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
subs = sns.list_subscriptions_by_topic(TopicArn=sys.argv[1])["Subscriptions"]
print(json.dumps(sorted([s["Protocol"], s["Endpoint"]] for s in subs)))
"#;

/// The template's Glue tables and lifecycle rules beside the Parquet schemas DuckDB reads from
/// a local copy of the lake: prints what disagrees (an empty list when all agree).
const GLUE_VS_PARQUET: &str = r#"
import duckdb, glob, json, sys
from cfnlint.decode import decode
template, matches = decode(sys.argv[1])
assert not matches, matches
lake, prefix = sys.argv[2], sys.argv[3]
res = template["Resources"]
glue = {}
for name, r in res.items():
    if r["Type"] == "AWS::Glue::Table":
        ti = r["Properties"]["TableInput"]
        glue[ti["Name"]] = {
            "columns": [[c["Name"], c["Type"]] for c in ti["StorageDescriptor"]["Columns"]],
            "partitions": [[c["Name"], c["Type"]] for c in ti["PartitionKeys"]],
            "template": ti["Parameters"]["storage.location.template"],
        }
rules = res["LakeBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
lifecycle = {r["Prefix"]["Fn::Sub"] for r in rules if isinstance(r.get("Prefix"), dict)}
problems = []
tables = ["raw", "rollup_1m", "rollup_1h", "rollup_1d", "dlq", "alarms"]
if sorted(glue) != sorted(tables):
    problems.append(f"Glue tables {sorted(glue)} != lake tables {sorted(tables)}")
for t in tables:
    if "${LakePrefix}/" + t + "/" not in lifecycle:
        problems.append(f"no lifecycle rule for {t}/")
    g = glue.get(t)
    if g is None:
        continue
    if g["partitions"] != [["dt", "string"], ["hour", "string"]]:
        problems.append(f"{t}: partition keys {g['partitions']}")
    if "/" + t + "/dt=${!dt}/hour=${!hour}/" not in json.dumps(g["template"]):
        problems.append(f"{t}: storage.location.template {g['template']}")
# DuckDB type -> Glue (Hive) type of the same Parquet column.
types = {"TIMESTAMP WITH TIME ZONE": "timestamp", "VARCHAR": "string", "DOUBLE": "double",
         "BIGINT": "bigint", "INTEGER": "int"}
checked = []
for t in tables:
    files = glob.glob(f"{lake}/{t}/**/*.parquet", recursive=True)
    if not files:
        continue
    rows = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet({files!r}, hive_partitioning = false)").fetchall()
    parquet = [[r[0], types.get(r[1], r[1])] for r in rows]
    if parquet != glue[t]["columns"]:
        problems.append(f"{t}: Glue columns {glue[t]['columns']} != Parquet {parquet}")
    checked.append(t)
for t in ("rollup_1h", "rollup_1d"):  # written by compaction with rollup_1m's schema
    if glue[t]["columns"] != glue["rollup_1m"]["columns"]:
        problems.append(f"{t}: Glue columns differ from rollup_1m's")
# The Athena views (the template's named queries) run in DuckDB over the Glue tables' columns and
# agree with the views users load into DuckDB (schemas/sql/duckdb.sql).
import math, os, re
exec(sys.argv[4])
ours = open_lake(lake)
glue_con = duckdb.connect()
for t in checked:
    glue_con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{lake}/{t}/*/*/*.parquet', "
                     "hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR})")
views = []
for r in res.values():
    if r["Type"] != "AWS::Athena::NamedQuery":
        continue
    view = re.match(r"CREATE OR REPLACE VIEW (\w+) AS", r["Properties"]["QueryString"]).group(1)
    if view.removesuffix("_merged") not in checked:
        continue
    glue_con.execute(r["Properties"]["QueryString"])
    summary = (f'SELECT count(*), sum("count"), sum("sum"), sum(avg), '
               f'sum("first"), sum("last"), CAST(max(last_ts) AS VARCHAR) FROM {view}')
    athena, duck = glue_con.sql(summary).fetchone(), ours.sql(summary).fetchone()
    # Sums may differ in the last bits with the order of addition.
    same = all(math.isclose(a, b, rel_tol=1e-12) if isinstance(a, float) else a == b
               for a, b in zip(athena, duck))
    if not same or athena[0] == 0:
        problems.append(f"{view}: Athena's view gives {athena}, schemas/sql/duckdb.sql's {duck}")
    views.append(view)
if "rollup_1m_merged" not in views:
    problems.append(f"no Athena view of rollup_1m was checked ({views})")
print(json.dumps({"problems": problems, "checked": checked, "views": views}))
"#;

#[test]
#[ignore = "needs the local stack (LocalStack with CloudFormation + Apache Kafka): run tests/run"]
fn the_template_deploys_to_localstack_and_the_pipeline_runs_on_what_it_created() {
    let brokers = env("KAFKA_BROKERS");
    let endpoint = env("AWS_ENDPOINT_URL");
    let id = run_id();
    let stack = format!("dfly-test-{id}");
    let bucket = format!("dfly-test-lake-{id}");
    let topic_name = format!("dfly-test-alarms-{id}");
    let email = format!("ops-{id}@example.com");
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("stack.env");

    // 1. The same template, Target=localstack, through LocalStack's CloudFormation.
    let started = Instant::now();
    let (_stack, outputs) = LocalStack::deploy(
        &stack,
        &env_file,
        &[
            format!("LakeBucketName={bucket}"),
            format!("AlarmTopicName={topic_name}"),
            format!("AlarmEmail={email}"),
            "AlarmQueueEnabled=true".into(),
        ],
    );
    eprintln!("deployed {stack} in {:?}:\n{outputs}", started.elapsed());

    // 2. The env file has every variable localstack/up writes, pointing at the new resources.
    let stack_env = read_env_file(&env_file);
    for var in [
        "KAFKA_BROKERS",
        "KAFKA_TOPIC",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ALLOW_HTTP",
        "LAKE",
        "LAKE_BUCKET",
        "SNS_TOPIC_ARN",
    ] {
        assert!(
            stack_env.contains_key(var),
            "{var} missing from {env_file:?}: {stack_env:?}"
        );
    }
    assert_eq!(stack_env["LAKE_BUCKET"], bucket);
    assert_eq!(stack_env["LAKE"], format!("s3://{bucket}/lake"));
    assert_eq!(stack_env["AWS_ENDPOINT_URL"], endpoint);
    assert_eq!(stack_env["KAFKA_BROKERS"], brokers);
    let sns_arn = stack_env["SNS_TOPIC_ARN"].clone();
    assert!(sns_arn.ends_with(&format!(":{topic_name}")), "{sns_arn}");
    let queue = stack_env
        .get("ALARM_QUEUE_URL")
        .expect("AlarmQueueEnabled=true gives ALARM_QUEUE_URL")
        .clone();
    let alarm_group = stack_env["ALARM_GROUP"].clone();
    assert_eq!(alarm_group, format!("{stack}-alarm"));

    // The stack subscribed the queue and the e-mail address to its topic.
    let subs = python(SUBSCRIPTIONS, &[&sns_arn], &stack_env);
    let protocols: Vec<&str> = subs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["email", "sqs"], "{subs}");
    assert_eq!(subs[0][1], email.as_str());

    // 3. Metrics into a fresh topic: a simulated fleet plus one VM running hot.
    let topic = format!("deploy-{id}");
    create_topic(&brokers, &topic, 3);
    let published = damselfly(&[
        "simulate",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--vms",
        "4",
        "--interval",
        "2s",
        "--duration",
        "20s",
        "--no-pace",
        "--seed",
        "8",
        "--json",
    ]);
    assert_eq!(published["published"], 40);
    let publisher = Publisher::new(&PublisherConfig::new(&brokers, &topic)).unwrap();
    let hot_start = now_ms() - 90_000;
    let hot_messages = 40;
    for k in 0..hot_messages {
        let msg = json!({"v": 1, "ts": hot_start + k * 2_000,
            "tags": {"ns": "ns01", "mcis": "web", "vm": "vm-hot", "csp": "aws", "region": "us-east-1", "os": "linux"},
            "metrics": {"cpu_utilization": 97.0}});
        publisher
            .send("vm-hot", msg.to_string().as_bytes())
            .unwrap();
    }
    publisher.flush(Duration::from_secs(10)).unwrap();
    let records = 40 + hot_messages as u64;
    let samples = 40 * SAMPLES_PER_MESSAGE + hot_messages as u64;

    // 4. The aggregate function into the stack's bucket.
    let lake = stack_env["LAKE"].clone();
    let aggregated = json_of(&damselfly_in(
        &stack_env,
        &[
            "run",
            "aggregate",
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--group",
            &format!("{stack}-aggregate"),
            "--lake",
            &lake,
            "--until-caught-up",
            "--json",
        ],
    ));
    assert_eq!(aggregated["records"], records, "{aggregated}");
    assert_eq!(aggregated["samples"], samples, "{aggregated}");
    assert_eq!(aggregated["rejected"], 0, "{aggregated}");

    // 5. The alarm function, rules at the lake's default location (where the Lambda reads them),
    //    notifications to the stack's topic; then one tick, as the schedule would run it.
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        json!({"v": 1, "rules": [{
            "id": "cpu-hot", "name": "CPU hot", "scope": {"vm": ["vm-hot"]},
            "metric": "cpu_utilization", "statistic": "max", "period": "10s",
            "comparator": ">", "critical": 90, "fire": {"m": 1, "n": 1}, "missing_data": "ignore"}]})
        .to_string(),
    )
    .unwrap();
    damselfly_in(
        &stack_env,
        &[
            "alarm",
            "rules",
            "put",
            "--lake",
            &lake,
            rules.to_str().unwrap(),
        ],
    );
    let alarm_args = [
        "--lake",
        &lake,
        "--sns-topic-arn",
        &sns_arn,
        "--grace",
        "1s",
        "--json",
    ];
    let mut run_alarm = vec![
        "run",
        "alarm",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--group",
        &alarm_group,
        "--until-caught-up",
    ];
    run_alarm.extend(alarm_args);
    let alarmed = json_of(&damselfly_in(&stack_env, &run_alarm));
    assert_eq!(alarmed["records"], records, "{alarmed}");
    let mut tick = vec!["alarm", "tick", "--group", &alarm_group];
    tick.extend(alarm_args);
    damselfly_in(&stack_env, &tick);

    // The notification reaches the stack's SQS subscription.
    let aws_py = repo().join("tests/common/aws.py");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got: Vec<Value> = Vec::new();
    while !got.iter().any(|m| {
        m["subject"]
            .as_str()
            .unwrap_or("")
            .starts_with("[CRITICAL] cpu-hot on vm-hot")
    }) {
        assert!(
            Instant::now() < deadline,
            "no CRITICAL notification on the stack's queue within 30 s; got {got:#?}"
        );
        let out = run_ok(
            Command::new(env("DAMSELFLY_PYTHON"))
                .arg(&aws_py)
                .args(["drain", &queue, "2"])
                .envs(&stack_env),
            "aws.py drain",
        );
        got.extend(json_of(&out).as_array().unwrap().iter().cloned());
    }
    let critical: Vec<&Value> = got
        .iter()
        .filter(|m| m["attributes"]["severity"] == "CRITICAL")
        .collect();
    assert_eq!(critical.len(), 1, "one CRITICAL transition: {got:#?}");
    assert_eq!(critical[0]["attributes"]["vm"], "vm-hot");

    // 6. The lake in the stack's bucket answers SQL, ours and DuckDB's.
    let sql = |q: &str| {
        json_of(&damselfly_in(
            &stack_env,
            &["sql", "--lake", &lake, "--format", "json", q],
        ))
    };
    let counts = "SELECT (SELECT count(*) FROM raw) AS raw_rows, \
                  (SELECT count(DISTINCT vm) FROM raw) AS vms, \
                  (SELECT count(*) FROM alarms WHERE to_state = 'CRITICAL') AS critical";
    let ours = sql(counts);
    assert_eq!(
        ours,
        json!([{"raw_rows": samples, "vms": 5, "critical": 1}])
    );
    let local = dir.path().join("lake");
    let objects = copy_lake(&lake, &local);
    assert!(
        objects >= 4,
        "raw, rollup, alarms and state objects ({objects})"
    );
    let lake_dir = local;
    assert_eq!(
        duckdb(&lake_dir, counts),
        ours,
        "DuckDB reads the same lake"
    );

    // 7. The template's Glue tables describe these files, and every table has a lifecycle rule.
    let template = repo().join("infra/template.yaml");
    let report = python(
        GLUE_VS_PARQUET,
        &[
            template.to_str().unwrap(),
            lake_dir.to_str().unwrap(),
            "lake",
            DUCKDB_OPEN,
        ],
        &[("DUCKDB_VIEWS".to_owned(), DUCKDB_VIEWS.to_owned())]
            .into_iter()
            .chain(stack_env.clone())
            .collect(),
    );
    assert_eq!(report["problems"], json!([]), "{report}");
    assert_eq!(
        report["checked"],
        json!(["raw", "rollup_1m", "alarms"]),
        "the tables this run wrote were compared: {report}"
    );
}
