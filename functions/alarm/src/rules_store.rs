//! Where the alarm rules live: a JSON file or an object (`s3://...`), read and edited as a whole.

use damselfly_core::Lake;
use damselfly_core::alarm::{Rule, RuleError, RuleSet};
use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutPayload};

/// Why the rules could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The URL is not a path, file:// or s3:// URL.
    #[error("rules location {url:?}: {why}")]
    BadUrl {
        /// The location as given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// There is no rule set at the location yet.
    #[error("no rules at {url}: create them with `damselfly alarm rules put --rules {url} FILE`")]
    Missing {
        /// The location.
        url: String,
    },
    /// The store failed.
    #[error("rules at {url}: {source}")]
    Store {
        /// The location.
        url: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The JSON is not a rule set.
    #[error("rules at {url} are not a rule set (schemas/alarm-rules.v1.schema.json): {why}")]
    Parse {
        /// The location.
        url: String,
        /// The parse error, with line and column.
        why: String,
    },
    /// The rule set breaks a rule the types cannot express.
    #[error("rules at {url}: {source}")]
    Invalid {
        /// The location.
        url: String,
        /// The first problem.
        source: RuleError,
    },
    /// `delete` named a rule that does not exist.
    #[error("no rule with id {id:?} at {url}")]
    NoSuchRule {
        /// The location.
        url: String,
        /// The id asked for.
        id: String,
    },
}

/// A rule set's location.
#[derive(Debug, Clone)]
pub struct RulesStore {
    url: String,
    dir: Lake,
    key: Path,
}

impl RulesStore {
    /// Opens a location: a file path, `file:///...` or `s3://bucket/key.json`.
    pub fn open(url: &str) -> Result<Self, RulesError> {
        let bad = |why: String| RulesError::BadUrl {
            url: url.to_owned(),
            why,
        };
        if let Some(rest) = url.strip_prefix("s3://")
            && rest
                .split_once('/')
                .is_none_or(|(b, k)| b.is_empty() || k.is_empty() || k.ends_with('/'))
        {
            return Err(bad(
                "needs a bucket and a key, e.g. s3://bucket/alarm-rules.json".into(),
            ));
        }
        let (dir, name) = url
            .rsplit_once('/')
            .filter(|(_, n)| !n.is_empty())
            .map(|(d, n)| (if d.is_empty() { "/" } else { d }, n))
            .unwrap_or((".", url));
        let dir = match dir {
            "file:/" | "file:" => "/",
            d => d,
        };
        let lake = Lake::open(dir).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            dir: lake,
            key: Path::from(name),
        })
    }

    /// The location as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reads and validates the rule set.
    pub async fn load(&self) -> Result<RuleSet, RulesError> {
        let bytes = match self.dir.store().get(&self.key).await {
            Ok(got) => got.bytes().await.map_err(|source| self.store_err(source))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RulesError::Missing {
                    url: self.url.clone(),
                });
            }
            Err(source) => return Err(self.store_err(source)),
        };
        self.parse(&bytes)
    }

    /// Parses and validates rule-set JSON, naming this location in errors.
    pub fn parse(&self, bytes: &[u8]) -> Result<RuleSet, RulesError> {
        parse_rules(bytes).map_err(|e| match e {
            ParseOrInvalid::Parse(why) => RulesError::Parse {
                url: self.url.clone(),
                why,
            },
            ParseOrInvalid::Invalid(source) => RulesError::Invalid {
                url: self.url.clone(),
                source,
            },
        })
    }

    /// Validates and writes a whole rule set.
    pub async fn save(&self, rules: &RuleSet) -> Result<(), RulesError> {
        rules.validate().map_err(|source| RulesError::Invalid {
            url: self.url.clone(),
            source,
        })?;
        let body = serde_json::to_vec_pretty(rules).expect("rule sets serialize");
        self.dir
            .store()
            .put(&self.key, PutPayload::from(body))
            .await
            .map_err(|source| self.store_err(source))?;
        Ok(())
    }

    /// Adds rules or replaces those with the same id; returns the ids replaced.
    pub async fn put(&self, rules: Vec<Rule>) -> Result<Vec<String>, RulesError> {
        let mut set = match self.load().await {
            Ok(set) => set,
            Err(RulesError::Missing { .. }) => RuleSet {
                v: 1,
                rules: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        let mut replaced = Vec::new();
        for rule in rules {
            match set.rules.iter_mut().find(|r| r.id == rule.id) {
                Some(old) => {
                    replaced.push(rule.id.clone());
                    *old = rule;
                }
                None => set.rules.push(rule),
            }
        }
        self.save(&set).await?;
        Ok(replaced)
    }

    /// Removes one rule by id.
    pub async fn delete(&self, id: &str) -> Result<(), RulesError> {
        let mut set = self.load().await?;
        let before = set.rules.len();
        set.rules.retain(|r| r.id != id);
        if set.rules.len() == before {
            return Err(RulesError::NoSuchRule {
                url: self.url.clone(),
                id: id.to_owned(),
            });
        }
        self.save(&set).await
    }

    fn store_err(&self, source: object_store::Error) -> RulesError {
        RulesError::Store {
            url: self.url.clone(),
            source,
        }
    }
}

enum ParseOrInvalid {
    Parse(String),
    Invalid(RuleError),
}

fn parse_rules(bytes: &[u8]) -> Result<RuleSet, ParseOrInvalid> {
    let set: RuleSet =
        serde_json::from_slice(bytes).map_err(|e| ParseOrInvalid::Parse(e.to_string()))?;
    set.validate().map_err(ParseOrInvalid::Invalid)?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../schemas/examples/alarm-rules/sample.json");

    #[tokio::test]
    async fn put_replace_delete_round_trip_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("rules.json").display().to_string();
        let store = RulesStore::open(&url).unwrap();
        assert!(matches!(
            store.load().await,
            Err(RulesError::Missing { .. })
        ));
        let sample = store.parse(SAMPLE.as_bytes()).unwrap();
        let n = sample.rules.len();
        assert!(store.put(sample.rules.clone()).await.unwrap().is_empty());
        let mut edited = sample.rules[0].clone();
        edited.name = "edited".into();
        assert_eq!(
            store.put(vec![edited]).await.unwrap(),
            vec![sample.rules[0].id.clone()]
        );
        let back = store.load().await.unwrap();
        assert_eq!(back.rules.len(), n);
        assert_eq!(back.rules[0].name, "edited");
        store.delete(&sample.rules[0].id).await.unwrap();
        assert_eq!(store.load().await.unwrap().rules.len(), n - 1);
        let e = store.delete("nope").await.unwrap_err().to_string();
        assert!(e.contains("no rule with id \"nope\""), "{e}");
    }

    #[test]
    fn bad_json_names_the_location() {
        let store = RulesStore::open("/tmp/x/rules.json").unwrap();
        let e = store
            .parse(b"{\"v\":1,\"rules\":[{\"id\":1}]}")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rules at /tmp/x/rules.json are not a rule set"),
            "{e}"
        );
        for bad in ["s3://", "s3://bucket", "s3://bucket/", "s3:///key.json"] {
            let e = RulesStore::open(bad).unwrap_err().to_string();
            assert!(e.contains("needs a bucket and a key"), "{bad}: {e}");
        }
        assert!(RulesStore::open("s3://bucket/rules/alarm-rules.json").is_ok());
    }
}
