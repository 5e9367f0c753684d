//! An object store that fails on purpose, for the conformance suite: throttling, a write applied but reported as failed, and an operation held until the test lets it go.
//!
//! [`FaultyStore`] wraps any store. A test arms rules ([`FaultyStore::inject`]); each rule matches
//! an operation kind and a key fragment, fires on the next `times` matching operations, and then
//! disarms. Everything else passes through unchanged.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::channel::oneshot;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// An operation a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A put (conditional or not).
    Put,
    /// A server-side copy.
    Copy,
}

/// What a rule does to a matching operation.
#[derive(Debug)]
pub enum Fault {
    /// Refuse without applying it, as S3's `503 Slow Down` does.
    Throttle,
    /// Apply it, then report a failure: a time-out after the store did the work.
    AppliedButFailed,
    /// Hold it until released (a slow request that overlaps another writer's work), then apply it.
    Hold(Hold),
}

/// The store side of a held operation: says when the operation arrived, waits for the release.
#[derive(Debug)]
pub struct Hold {
    arrived: Option<oneshot::Sender<()>>,
    release: Option<oneshot::Receiver<()>>,
}

/// The test side of a held operation.
#[derive(Debug)]
pub struct Held {
    /// Resolves when the operation reached the store (and is being held).
    pub arrived: oneshot::Receiver<()>,
    /// Send (or drop) to let the operation go on.
    pub release: oneshot::Sender<()>,
}

impl Fault {
    /// A hold and the handle that watches and releases it.
    pub fn hold() -> (Fault, Held) {
        let (arrived_tx, arrived_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        (
            Fault::Hold(Hold {
                arrived: Some(arrived_tx),
                release: Some(release_rx),
            }),
            Held {
                arrived: arrived_rx,
                release: release_tx,
            },
        )
    }
}

#[derive(Debug)]
struct Rule {
    op: Op,
    key: String,
    times: usize,
    fault: Fault,
}

/// What a matching operation must do, taken out of its rule.
enum Action {
    Throttle,
    AppliedButFailed,
    Hold(Hold),
}

/// A store that applies armed faults to matching operations and passes everything else through.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn injected(what: &str, key: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: format!("{what} (injected) on {key}").into(),
    }
}

impl FaultyStore {
    /// Wraps `inner`, with no fault armed.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            rules: Mutex::new(Vec::new()),
        }
    }

    /// Arms `fault` for the next `times` operations `op` on keys containing `key` (a hold fires once).
    pub fn inject(&self, op: Op, key: &str, times: usize, fault: Fault) {
        self.rules.lock().expect("rules").push(Rule {
            op,
            key: key.to_owned(),
            times,
            fault,
        });
    }

    /// Disarms every rule.
    pub fn clear(&self) {
        self.rules.lock().expect("rules").clear();
    }

    /// The action for an operation, if a rule matches (consuming one of its firings).
    fn action(&self, op: Op, key: &Path) -> Option<Action> {
        let mut rules = self.rules.lock().expect("rules");
        let i = rules
            .iter()
            .position(|r| r.op == op && r.times > 0 && key.as_ref().contains(&r.key))?;
        let rule = &mut rules[i];
        rule.times -= 1;
        let action = match &mut rule.fault {
            Fault::Throttle => Action::Throttle,
            Fault::AppliedButFailed => Action::AppliedButFailed,
            Fault::Hold(h) => {
                rule.times = 0;
                Action::Hold(Hold {
                    arrived: h.arrived.take(),
                    release: h.release.take(),
                })
            }
        };
        if rules[i].times == 0 {
            rules.remove(i);
        }
        Some(action)
    }

    /// Runs `apply` under the action armed for (`op`, `key`).
    async fn faulted<T, F>(&self, op: Op, key: &Path, apply: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        match self.action(op, key) {
            None => apply.await,
            Some(Action::Throttle) => Err(injected("503 Slow Down", key)),
            Some(Action::AppliedButFailed) => {
                apply.await?;
                Err(injected(
                    "time-out after the store applied the request",
                    key,
                ))
            }
            Some(Action::Hold(h)) => {
                if let Some(tx) = h.arrived {
                    let _ = tx.send(());
                }
                if let Some(rx) = h.release {
                    let _ = rx.await;
                }
                apply.await
            }
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.faulted(
            Op::Put,
            location,
            self.inner.put_opts(location, payload, opts),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.faulted(Op::Copy, to, self.inner.copy_opts(from, to, options))
            .await
    }
}
