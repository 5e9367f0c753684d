//! The lake: where it lives (local directory or S3 prefix) and writing batch objects into it.

use std::path::PathBuf;
use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use crate::batch::LakeObject;

/// How many objects are uploaded at once.
const PUT_CONCURRENCY: usize = 8;

/// Why the lake could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The lake URL is not a local path, `file://` URL or `s3://bucket[/prefix]` URL.
    #[error(
        "lake URL `{url}` is not usable: {why} (use a local directory, file:///abs/path or s3://bucket/prefix)"
    )]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The object store refused an operation (after its own retries).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Another writer changed a partition's state object between our read and our write.
    #[error(
        "state object {key} changed under us: another consumer is writing this partition (rebalance in progress?); retry"
    )]
    Conflict {
        /// The state object's key.
        key: String,
    },
    /// A batch starts below the partition's next offset: its caller did not drop the records the
    /// lake already holds (a bug in the caller: they would be stored twice).
    #[error(
        "batch for {key} starts at offset {first}, which the lake already holds (its next offset is {next}): drop the records it holds first"
    )]
    Overlap {
        /// The state object's key.
        key: String,
        /// The batch's first offset.
        first: i64,
        /// The partition's next offset.
        next: i64,
    },
    /// Another process writes this local lake.
    #[error(
        "the local lake {path} is being written by another process ({holder}): a local directory takes one writer at a time (it cannot compare-and-swap); stop it, or use an s3:// lake for several writers"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as its lock file says.
        holder: String,
    },
    /// A state object is not the JSON this build writes.
    #[error("state object {key} is unreadable ({why}): inspect it, then delete it to start over")]
    CorruptState {
        /// The state object's key.
        key: String,
        /// The parse error.
        why: String,
    },
    /// A local directory could not be created.
    #[error("creating lake directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Where a lake lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeLocation {
    /// A directory on the local file system (absolute).
    Local(PathBuf),
    /// A prefix in an S3 bucket (or an S3-compatible store such as LocalStack).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/`; may be empty.
        prefix: String,
    },
}

impl LakeLocation {
    /// Parses a lake URL: a path, `file:///abs/path` or `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Self, LakeError> {
        let bad = |why: &str| LakeError::BadUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name"));
            }
            check_bucket_name(bucket).map_err(|why| bad(&why))?;
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        let path = match url.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(_) => return Err(bad("a file:// URL needs an absolute path (file:///...)")),
            None if url.contains("://") => return Err(bad("unsupported scheme")),
            None if url.is_empty() => return Err(bad("empty")),
            None => PathBuf::from(url),
        };
        let abs = std::path::absolute(&path).map_err(|e| bad(&e.to_string()))?;
        Ok(Self::Local(abs))
    }

    /// The URL of the store's root as a query engine registers it (`file:///` or `s3://bucket`);
    /// it always parses as a URL, as [`LakeLocation::parse`] admits only valid bucket names.
    pub fn store_url(&self) -> String {
        match self {
            Self::Local(_) => "file:///".to_owned(),
            Self::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }

    /// The URL of a table's directory, with a trailing slash (`s3://bucket/prefix/raw/`).
    pub fn table_url(&self, table: &str) -> String {
        match self {
            Self::Local(dir) => format!("file://{}/{table}/", dir.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}/{table}/"),
            Self::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}/{table}/"),
        }
    }

    /// An object store for the whole bucket or file system (not limited to the lake's prefix).
    pub fn root_store(&self) -> Result<Arc<dyn ObjectStore>, LakeError> {
        Ok(match self {
            Self::Local(_) => Arc::new(LocalFileSystem::new()),
            Self::S3 { bucket, .. } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                // LocalStack and other local S3s are plain HTTP.
                let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
                    .or_else(|_| std::env::var("AWS_ENDPOINT_URL"));
                if endpoint.is_ok_and(|e| e.starts_with("http://")) {
                    builder = builder.with_allow_http(true);
                }
                Arc::new(builder.build()?)
            }
        })
    }
}

impl std::fmt::Display for LakeLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(dir) => write!(f, "{}", dir.display()),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A lake opened for reading and writing: keys are relative to its root.
#[derive(Debug, Clone)]
pub struct Lake {
    location: LakeLocation,
    store: Arc<dyn ObjectStore>,
    /// A local directory's root: its store cannot compare-and-swap, so writers take its lock.
    locked_dir: Option<PathBuf>,
}

/// Takes this process's writer lock of the local lake `dir` (`_state/writer.lock`, an exclusive
/// `flock` held until the process exits), once; fails naming the holder when another has it.
pub(crate) fn writer_lock(dir: &std::path::Path) -> Result<(), LakeError> {
    use std::io::{Read as _, Seek as _, Write as _};
    static HELD: std::sync::Mutex<Vec<(PathBuf, std::fs::File)>> =
        std::sync::Mutex::new(Vec::new());
    let mut held = HELD.lock().expect("lock registry poisoned");
    if held.iter().any(|(d, _)| d == dir) {
        return Ok(());
    }
    let state = dir.join(crate::ledger::STATE_PREFIX);
    let io = |source| LakeError::Io {
        path: state.clone(),
        source,
    };
    std::fs::create_dir_all(&state).map_err(io)?;
    let path = state.join("writer.lock");
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => format!("flock: {e}"),
            h => h.to_owned(),
        };
        return Err(LakeError::Locked { path, holder });
    }
    let me = format!(
        "pid {} ({})",
        std::process::id(),
        std::env::args().next().unwrap_or_default()
    );
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(me.as_bytes()).map_err(io)?;
    held.push((dir.to_owned(), file));
    Ok(())
}

impl Lake {
    /// Opens the lake at a URL, creating a local directory if needed.
    pub fn open(url: &str) -> Result<Self, LakeError> {
        let location = LakeLocation::parse(url)?;
        let locked_dir = match &location {
            LakeLocation::Local(dir) => Some(dir.clone()),
            LakeLocation::S3 { .. } => None,
        };
        let store: Arc<dyn ObjectStore> = match &location {
            LakeLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| LakeError::Io {
                    path: dir.clone(),
                    source,
                })?;
                Arc::new(LocalFileSystem::new_with_prefix(dir)?)
            }
            LakeLocation::S3 { prefix, .. } if prefix.is_empty() => location.root_store()?,
            LakeLocation::S3 { prefix, .. } => Arc::new(PrefixStore::new(
                location.root_store()?,
                Path::from(prefix.as_str()),
            )),
        };
        Ok(Self {
            location,
            store,
            locked_dir,
        })
    }

    /// A lake over any object store that can compare-and-swap (tests use `InMemory`).
    pub fn with_store(location: LakeLocation, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            location,
            store,
            locked_dir: None,
        }
    }

    /// The same lake through another store built around this one's (a fault injector, a cache).
    pub fn wrap_store(&self, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            location: self.location.clone(),
            store,
            locked_dir: self.locked_dir.clone(),
        }
    }

    /// The local directory whose writer lock guards state writes, for a local lake.
    pub(crate) fn locked_dir(&self) -> Option<&std::path::Path> {
        self.locked_dir.as_deref()
    }

    /// Where the lake lives.
    pub fn location(&self) -> &LakeLocation {
        &self.location
    }

    /// The store, rooted at the lake.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Writes objects, a few at a time; each put is atomic (readers see all of an object or none).
    pub async fn put_all(&self, objects: &[LakeObject]) -> Result<(), LakeError> {
        // Collected first: a lazy `map` over borrowed objects makes the future too general to be `Send`.
        let puts: Vec<_> = objects
            .iter()
            .map(|o| {
                let (store, path) = (self.store.clone(), Path::from(o.key.as_str()));
                let payload = PutPayload::from_bytes(o.bytes.clone());
                async move { store.put(&path, payload).await }
            })
            .collect();
        futures::stream::iter(puts)
            .buffer_unordered(PUT_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// Every object key under a table, sorted.
    pub async fn list(&self, table: &str) -> Result<Vec<String>, LakeError> {
        let mut keys: Vec<String> = self
            .store
            .list(Some(&Path::from(table)))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }
}

/// Checks a bucket name against S3's rules for general purpose buckets (3-63 characters; lower
/// case letters, digits, `.` and `-`; a letter or digit at each end; no `..`; not an IP address),
/// so that a name such as `b:x` or `My_Bucket` is refused here, not by a panic or a 400 later.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let rule = "bucket names are 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit";
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !bucket.chars().all(ok_char)
        || !ends_ok(bucket.chars().next())
        || !ends_ok(bucket.chars().last())
    {
        return Err(format!("bucket {bucket:?}: {rule}"));
    }
    if bucket.contains("..") || bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!(
            "bucket {bucket:?}: no '..' and not an IP address ({rule})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lake_urls() {
        assert_eq!(
            LakeLocation::parse("s3://bkt/lake/").unwrap(),
            LakeLocation::S3 {
                bucket: "bkt".into(),
                prefix: "lake".into()
            }
        );
        assert_eq!(
            LakeLocation::parse("s3://bkt").unwrap().table_url("raw"),
            "s3://bkt/raw/"
        );
        assert_eq!(
            LakeLocation::parse("file:///tmp/l").unwrap(),
            LakeLocation::Local("/tmp/l".into())
        );
        assert_eq!(
            LakeLocation::parse("/tmp/l").unwrap(),
            LakeLocation::Local("/tmp/l".into())
        );
        let err = LakeLocation::parse("gs://b/x").unwrap_err().to_string();
        assert!(
            err.contains("unsupported scheme") && err.contains("s3://bucket/prefix"),
            "{err}"
        );
        assert!(LakeLocation::parse("file://rel/x").is_err());
        assert!(LakeLocation::parse("s3:///x").is_err());
    }

    #[test]
    fn refuses_bucket_names_s3_would_and_keeps_store_urls_parseable() {
        for bad in [
            "s3://b:x/lake",
            "s3://user@bkt/lake",
            "s3://My_Bucket",
            "s3://ab",
            "s3://-bkt",
            "s3://bkt-",
            "s3://a..b",
            "s3://192.168.1.2/x",
            "s3://bkt?x=1",
        ] {
            let err = LakeLocation::parse(bad).unwrap_err().to_string();
            assert!(err.contains("bucket"), "{bad}: {err}");
        }
        let long = format!("s3://{}", "a".repeat(64));
        assert!(LakeLocation::parse(&long).is_err());
        for good in [
            "s3://damselfly-lake/x",
            "s3://my.lake.2024",
            &format!("s3://{}", "a".repeat(63)),
        ] {
            let loc = LakeLocation::parse(good).unwrap();
            let url = url::Url::parse(&loc.store_url()).unwrap();
            assert_eq!(url.scheme(), "s3", "{good}");
        }
    }
}
