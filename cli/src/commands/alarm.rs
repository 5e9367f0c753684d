//! `damselfly alarm`: the rule set (list, put, delete, validate, import from CB-Dragonfly) and the tick.

use anyhow::Context as _;
use damselfly_alarm::config::{DEFAULT_RULES_KEY, LOCAL_OUTBOX, Settings};
use damselfly_alarm::{Alarm, RulesStore};
use damselfly_core::alarm::{Rule, RuleSet, import_alert_tasks};

use crate::cli::{AlarmCommand, RulesCommand, RulesLocation};
use crate::output;

/// Runs one alarm subcommand.
pub async fn alarm(cmd: AlarmCommand) -> anyhow::Result<()> {
    match cmd {
        AlarmCommand::Tick(args) => {
            let handler = handler(&args.lake, &args.group, &args.alarm).await?;
            let s = handler.tick(super::now_ms()).await?;
            output::summary(
                args.json,
                &s,
                &format!(
                    "ticked {} partitions: {} notifications, {} sent to {}, {} pending",
                    s.partitions,
                    s.notifications,
                    s.sent,
                    handler.notifier().destination(),
                    s.pending
                ),
            );
            Ok(())
        }
        AlarmCommand::Rules(RulesCommand::List { at, json }) => {
            let set = store(&at)?.load().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&set)?);
            } else {
                print_rules(&set);
            }
            Ok(())
        }
        AlarmCommand::Rules(RulesCommand::Put { at, file }) => {
            let store = store(&at)?;
            let rules = read_rules(&store, &file)?;
            let ids: Vec<String> = rules.iter().map(|r| r.id.clone()).collect();
            let replaced = store.put(rules).await?;
            eprintln!(
                "stored {} rules at {} ({} replaced): {}",
                ids.len(),
                store.url(),
                replaced.len(),
                ids.join(", ")
            );
            Ok(())
        }
        AlarmCommand::Rules(RulesCommand::Delete { at, id }) => {
            let store = store(&at)?;
            store.delete(&id).await?;
            eprintln!("deleted rule {id} from {}", store.url());
            Ok(())
        }
        AlarmCommand::Rules(RulesCommand::Validate { file }) => {
            let url = file.display().to_string();
            let store = RulesStore::open(&url)?;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {url}"))?;
            let set = store.parse(&bytes)?;
            eprintln!("{url}: {} valid rules", set.rules.len());
            Ok(())
        }
        AlarmCommand::Import(args) => {
            let bytes = std::fs::read(&args.file)
                .with_context(|| format!("reading {}", args.file.display()))?;
            let set = import_alert_tasks(&bytes)
                .with_context(|| format!("importing {}", args.file.display()))?;
            if args.put {
                let store = store(&args.at)?;
                let n = set.rules.len();
                let replaced = store.put(set.rules).await?;
                eprintln!(
                    "imported {n} rules into {} ({} replaced)",
                    store.url(),
                    replaced.len()
                );
            } else {
                println!("{}", serde_json::to_string_pretty(&set)?);
            }
            Ok(())
        }
    }
}

/// The alarm handler for a lake, a consumer group and the function's settings (shared with `run
/// alarm`, `redrive alarm` and the demo); without an SNS topic or an outbox, notifications go to
/// [`LOCAL_OUTBOX`].
pub async fn handler(lake: &str, group: &str, settings: &Settings) -> anyhow::Result<Alarm> {
    let mut config = settings.config(lake, group);
    if config.sns_topic_arn.is_none() {
        config.outbox.get_or_insert_with(|| LOCAL_OUTBOX.to_owned());
    }
    Alarm::from_config(&config).await
}

fn default_rules(lake: &str) -> String {
    format!("{}/{DEFAULT_RULES_KEY}", lake.trim_end_matches('/'))
}

fn store(at: &RulesLocation) -> anyhow::Result<RulesStore> {
    let url = match (&at.rules, &at.lake) {
        (Some(r), _) => r.clone(),
        (None, Some(lake)) => default_rules(lake),
        (None, None) => anyhow::bail!(
            "no rules location: pass --rules FILE|s3://bucket/key.json, or --lake (or LAKE) for \
             LAKE/{DEFAULT_RULES_KEY}"
        ),
    };
    Ok(RulesStore::open(&url)?)
}

/// Reads a file holding a rule set or one rule.
fn read_rules(store: &RulesStore, file: &std::path::Path) -> anyhow::Result<Vec<Rule>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let set = if value.get("rules").is_some() {
        bytes
    } else {
        serde_json::to_vec(&serde_json::json!({"v": 1, "rules": [value]}))?
    };
    let checked = RulesStore::open(&file.display().to_string())?.parse(&set);
    let _ = store;
    Ok(checked?.rules)
}

fn print_rules(set: &RuleSet) {
    println!(
        "{:<24} {:<8} {:<24} {:<6} {:<5} {:>9} {:>9} {:>6} {:<14}",
        "id", "enabled", "metric", "stat", "cmp", "warning", "critical", "period", "scope"
    );
    for r in &set.rules {
        let v = serde_json::to_value(r).unwrap_or_default();
        let field = |k: &str| match v.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => "-".into(),
            Some(other) => other.to_string(),
        };
        let scope = v
            .get("scope")
            .map_or_else(|| "all".to_owned(), |s| s.to_string());
        println!(
            "{:<24} {:<8} {:<24} {:<6} {:<5} {:>9} {:>9} {:>6} {:<14}",
            r.id,
            field("enabled"),
            r.metric,
            field("statistic"),
            field("comparator"),
            field("warning"),
            field("critical"),
            field("period"),
            scope
        );
    }
}
