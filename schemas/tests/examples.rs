//! The JSON Schema and the serde types agree on every example message, valid and invalid.

use std::path::{Path, PathBuf};

use damselfly_schemas::MetricMessage;

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn json_files(sub: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples under {sub}");
    files
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("metric.v1.schema.json")).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the schema itself is valid")
}

#[test]
fn valid_examples_pass_schema_and_types() {
    let v = validator();
    for path in json_files("examples") {
        let bytes = std::fs::read(&path).unwrap();
        let instance: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let errors: Vec<String> = v.iter_errors(&instance).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{}: schema says {errors:?}",
            path.display()
        );
        let msg = MetricMessage::from_json(&bytes)
            .unwrap_or_else(|e| panic!("{}: types say {e}", path.display()));
        assert!(msg.sample_count() > 0);
    }
}

#[test]
fn invalid_examples_fail_schema_and_types() {
    let v = validator();
    for path in json_files("examples/invalid") {
        let bytes = std::fs::read(&path).unwrap();
        let instance: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            !v.is_valid(&instance),
            "{}: schema accepted it",
            path.display()
        );
        let err = MetricMessage::from_json(&bytes)
            .expect_err(&format!("{}: types accepted it", path.display()));
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn simulated_style_message_passes_schema() {
    // Every catalog metric, placed where its family says, is a valid message.
    let mut metrics = serde_json::Map::new();
    let mut devices = serde_json::Map::new();
    for m in damselfly_schemas::catalog::METRICS {
        if m.family.per_device() {
            let dev = devices
                .entry(format!("dev-{}", m.family.name()))
                .or_insert_with(|| serde_json::json!({}));
            dev[m.name] = 1.5.into();
        } else {
            metrics.insert(m.name.into(), 1.5.into());
        }
    }
    let instance = serde_json::json!({
        "v": 1, "ts": 1_763_737_200_000_i64,
        "tags": {"ns": "n", "mcis": "m", "vm": "v"},
        "metrics": metrics, "devices": devices,
    });
    assert!(validator().is_valid(&instance));
    let msg = MetricMessage::from_json(instance.to_string().as_bytes()).unwrap();
    assert_eq!(
        msg.sample_count(),
        damselfly_schemas::catalog::METRICS.len()
    );
}
