//! `cargo lambda watch` as a local Lambda service: Runtime, Invoke and function-URL APIs on a free
//! port, hosting the project's real Lambda binaries (`damselfly-aggregate`, `damselfly-query`, ...).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// `cargo lambda watch` serving Lambda's Runtime and Invoke APIs on a free port, with no function
/// of its own: the test starts the real binaries against it (a nested `cargo` build would wait on
/// the lock `cargo test` holds).
pub struct LambdaEmulator {
    watch: Child,
    functions: Vec<Child>,
    port: u16,
}

impl LambdaEmulator {
    /// Starts the emulator and waits until it listens.
    pub fn start() -> Self {
        let port = free_port();
        let cargo_lambda =
            std::env::var("DAMSELFLY_CARGO_LAMBDA").unwrap_or_else(|_| "cargo-lambda".into());
        let watch = Command::new(&cargo_lambda)
            .args(["lambda", "watch", "--only-lambda-apis"])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(port.to_string())
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{cargo_lambda}: {e} (pip install cargo-lambda; tests/run does)")
            });
        let until = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "cargo lambda watch did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            watch,
            functions: Vec::new(),
            port,
        }
    }

    /// Starts the real `damselfly-aggregate` Lambda binary as function `name`, writing to `lake`.
    pub fn aggregate(&mut self, name: &str, lake: &Path) {
        self.aggregate_with(name, lake.to_str().unwrap(), &[], None);
    }

    /// Starts one more instance of the `damselfly-aggregate` binary as function `name`, writing
    /// to the lake URL `lake`, with extra environment `env` and its log in `log` (if given).
    pub fn aggregate_with(
        &mut self,
        name: &str,
        lake: &str,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) {
        self.function("damselfly-aggregate", name, lake, env, log);
    }

    /// Starts one instance of the project's Lambda binary `binary` as function `name` over the
    /// lake URL `lake`, with extra environment `env` and its log in `log` (if given).
    pub fn function(
        &mut self,
        binary: &str,
        name: &str,
        lake: &str,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) {
        // The binary sits beside this test's directory: target/<profile>/<binary>.
        let bin = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join(binary);
        assert!(
            bin.exists(),
            "{} is not built: cargo test --workspace --no-run builds it",
            bin.display()
        );
        let runtime_api = format!("http://127.0.0.1:{}/.rt/{name}", self.port);
        let child = Command::new(bin)
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("LAKE", lake)
            .env("RUST_LOG", "warn,damselfly_core=info")
            .envs(env.iter().copied())
            // lambda_runtime's subscriber logs to stdout, as CloudWatch reads it.
            .stdout(log.map_or_else(Stdio::null, |l| {
                std::fs::File::create(l).expect("log file").into()
            }))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e}"));
        self.functions.push(child);
    }

    /// The emulator's base URL (the Invoke API's `/2015-03-31/functions/...` is under it, and
    /// each function's URL is `/lambda-url/{name}/`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LambdaEmulator {
    fn drop(&mut self) {
        for c in self.functions.iter_mut().chain([&mut self.watch]) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
