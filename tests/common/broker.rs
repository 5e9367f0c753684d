//! A test's own Apache Kafka broker, run by `localstack/kafka-broker run` on free ports of 127.0.0.1, that the test may stop, crash, pause and restart.
//!
//! The JVM is the child process itself (the script `exec`s it), so the signals reach the broker.
//! Its data lives in the test's directory and survives a restart, as on a real host.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::free_port;

/// How long a start may take before the test fails with the broker's log (a cold JVM on a
/// busy 2-core machine takes several seconds).
const START_LIMIT: Duration = Duration::from_secs(90);

/// The script that installs and runs the broker.
pub fn script() -> PathBuf {
    std::env::var_os("DAMSELFLY_KAFKA_BROKER").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../localstack/kafka-broker"),
        PathBuf::from,
    )
}

/// Whether something accepts connections on the port of 127.0.0.1.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// Sends a signal (`-TERM`, `-KILL`, `-STOP`, `-CONT`) to a process.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One single-node broker of a test.
pub struct LocalBroker {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl LocalBroker {
    /// A broker whose data and log go under `dir`; not started.
    pub fn new(dir: &Path) -> Self {
        let port = free_port();
        let mut controller_port = free_port();
        while controller_port == port {
            controller_port = free_port();
        }
        Self {
            dir: dir.join("kafka"),
            port,
            controller_port,
            log: dir.join("kafka.log"),
            child: None,
        }
    }

    /// `host:port` of its PLAINTEXT listener.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the broker and waits until it answers a metadata request.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        assert!(
            !port_open(self.port),
            "port {} is taken by another process",
            self.port
        );
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(script())
            .args(["run", "--dir"])
            .arg(&self.dir)
            .args(["--port", &self.port.to_string()])
            .args(["--controller-port", &self.controller_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start localstack/kafka-broker run");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the broker exited during startup ({status}):\n{}",
                    tail(&self.log, 40)
                );
            }
            if port_open(self.port) && self.answers() {
                break;
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "the broker did not answer on {} within {START_LIMIT:?}:\n{}",
                self.port,
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the broker serves a metadata request now.
    fn answers(&self) -> bool {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .unwrap();
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok_and(|md| !md.brokers().is_empty())
    }

    /// SIGTERM (a clean shutdown), KILL after 30 s, then waits until the port is free.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
        }
        child.wait().unwrap();
        self.wait_port_closed();
    }

    /// SIGKILL, as when the broker's host dies: connections drop without a goodbye.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("broker running");
        signal(child.id(), "-KILL");
        child.wait().unwrap();
        self.wait_port_closed();
    }

    /// SIGSTOP: the broker holds its connections but answers nothing.
    pub fn pause(&self) {
        signal(self.pid().expect("broker running"), "-STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        signal(self.pid().expect("broker running"), "-CONT");
    }

    fn wait_port_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while port_open(self.port) {
            assert!(
                Instant::now() < deadline,
                "port {} still open after the broker exited",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
