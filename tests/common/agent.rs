//! The real `damselfly agent` binary run by a test, and the topic it writes read back.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use damselfly_schemas::MetricMessage;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::broker::{signal, tail};

/// One run of `damselfly agent`, logging to its own file.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    pub fn start(config: &Path, log: PathBuf) -> Self {
        let file = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_damselfly"))
            .args(["agent", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn,damselfly=info,damselfly_agent=info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start damselfly agent");
        let agent = Self {
            child: Some(child),
            log,
        };
        agent.wait_for_log("agent started", 1, Duration::from_secs(20));
        agent
    }

    pub fn log_count(&self, needle: &str) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(needle)
            .count()
    }

    pub fn wait_for_log(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.log_count(needle) < count {
            assert!(
                Instant::now() < deadline,
                "the agent did not log {needle:?} within {within:?}:\n{}",
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL: no shutdown, no final spool sync.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("agent running");
        signal(child.id(), "-KILL");
        child.wait().unwrap();
    }

    /// SIGTERM, then the totals of its closing "agent stopped" line.
    pub fn stop(&mut self) -> BTreeMap<String, u64> {
        let mut child = self.child.take().expect("agent running");
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "agent did not stop within 30s of SIGTERM:\n{}",
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = fs::read_to_string(&self.log).unwrap();
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("agent stopped"))
            .unwrap_or_else(|| panic!("no \"agent stopped\" line:\n{}", tail(&self.log, 40)));
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message read back from the topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub vm: String,
    pub ts: i64,
}

/// Reads the topic back every half second until `done` holds for what it holds (a failure after
/// `within`, which bounds how long a broken agent keeps the test running); returns that read.
pub fn wait_for_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    what: &str,
    within: Duration,
    done: impl Fn(&[Read]) -> bool,
) -> Vec<Read> {
    let deadline = Instant::now() + within;
    loop {
        let reads = read_topic(brokers, topic, partitions);
        if done(&reads) {
            return reads;
        }
        assert!(
            Instant::now() < deadline,
            "the topic did not hold {what} within {within:?}: {} messages",
            reads.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every message on the topic, in offset order per partition (partitions one after another).
pub fn read_topic(brokers: &str, topic: &str, partitions: i32) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-verify"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut end = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        if high > 0 {
            end.insert(p, high);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    let mut got: BTreeMap<i32, Vec<(i64, Read)>> = BTreeMap::new();
    if end.is_empty() {
        return Vec::new();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |got: &BTreeMap<i32, Vec<(i64, Read)>>| {
        end.iter().all(|(p, high)| {
            got.get(p)
                .and_then(|v| v.last())
                .is_some_and(|(o, _)| o + 1 >= *high)
        })
    };
    while !done(&got) {
        assert!(Instant::now() < deadline, "reading {topic} back timed out");
        let Some(m) = consumer.poll(Duration::from_millis(300)) else {
            continue;
        };
        let m = m.unwrap();
        let msg = MetricMessage::from_json(m.payload().unwrap()).unwrap();
        assert_eq!(
            m.key(),
            Some(msg.tags.vm.as_bytes()),
            "the key is the VM id"
        );
        got.entry(m.partition()).or_default().push((
            m.offset(),
            Read {
                partition: m.partition(),
                vm: msg.tags.vm,
                ts: msg.ts,
            },
        ));
    }
    got.into_values()
        .flat_map(|mut v| {
            v.sort_by_key(|(o, _)| *o);
            v.into_iter().map(|(_, r)| r)
        })
        .collect()
}
