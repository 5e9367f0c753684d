//! The `damselfly-query` Lambda binary itself: a bad configuration stops it at start with a fix.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the
//! binary that tests/console.rs runs under `cargo lambda watch`.

use std::process::Command;

#[test]
fn a_bad_configuration_stops_the_binary_naming_the_variable_and_the_fix() {
    let run = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_damselfly-query"))
            .env_remove("LAKE")
            .env_remove("LAKE_REFRESH")
            .envs(env.iter().copied())
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
            .output()
            .expect("the binary runs");
        assert!(!out.status.success(), "{env:?}: it must not start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&[]);
    assert!(
        stderr.contains("LAKE is not set: set it to the lake URL"),
        "stderr: {stderr}"
    );
    let stderr = run(&[("LAKE", "/tmp"), ("LAKE_REFRESH", "often")]);
    assert!(
        stderr.contains("LAKE_REFRESH=\"often\" is invalid")
            && stderr.contains("use a duration such as"),
        "stderr: {stderr}"
    );
}
