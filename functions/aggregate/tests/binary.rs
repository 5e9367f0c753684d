//! The `damselfly-aggregate` Lambda binary itself: a bad configuration stops it at start with a fix.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the
//! binary that tests/runner_cli.rs runs under `cargo lambda watch`.

use std::process::Command;

#[test]
fn without_lake_the_binary_exits_naming_the_variable_and_the_fix() {
    let out = Command::new(env!("CARGO_BIN_EXE_damselfly-aggregate"))
        .env_remove("LAKE")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success(), "it must not start without a lake");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LAKE is not set: set it to the lake URL"),
        "stderr: {stderr}"
    );
}
