//! The lake as readers should see it: an object store whose listings skip files a compacted file replaces.
//!
//! Compaction writes `compacted-N.parquet` before it deletes the files it merged; in between,
//! both are in the listing. DataFusion lists through this wrapper, which drops every file named
//! in a compacted file's `damselfly.compacted_from` (see `damselfly_core::compact`), so a query
//! never counts a sample twice, whenever it runs.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use damselfly_core::compact::{FooterCache, list_live, split_live};
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// An object store that lists only live objects; everything else passes through.
#[derive(Debug)]
pub struct LiveStore {
    inner: Arc<dyn ObjectStore>,
    cache: Arc<FooterCache>,
    listings: Option<Arc<Listings>>,
}

impl LiveStore {
    /// Wraps a store (the lake's bucket or file system); every listing asks the store.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            cache: Arc::new(FooterCache::default()),
            listings: None,
        }
    }

    /// Wraps a store whose listings may be up to `max_age` old (see [`Listings`]).
    pub fn with_listings(inner: Arc<dyn ObjectStore>, max_age: Duration) -> Self {
        Self {
            listings: Some(Arc::new(Listings::new(max_age))),
            ..Self::new(inner)
        }
    }

    /// Forgets every kept listing, so the next query lists the store (after a query met a file
    /// that a compaction deleted since its listing).
    pub fn forget_listings(&self) {
        if let Some(l) = &self.listings {
            l.entries.lock().expect("listings lock").clear();
        }
    }
}

/// Live listings kept per prefix and renewed in the background (stale-while-revalidate).
///
/// Each query otherwise lists its tables whole (DataFusion lists a partitioned table's root
/// unless the filters pin every partition column), which costs a stat per file on local disk
/// and a LIST request per thousand objects on S3, for every API request. With this, a listing
/// younger than a quarter of `max_age` is used as is; an older one is still used while a single
/// background task lists again; one older than `max_age` (an idle API) is listed before the
/// query. So under load no request lists, and no answer misses a file for more than `max_age`.
#[derive(Debug)]
pub struct Listings {
    max_age: Duration,
    entries: Mutex<HashMap<Option<Path>, Listed>>,
}

#[derive(Debug, Clone)]
struct Listed {
    objects: Arc<Vec<ObjectMeta>>,
    at: Instant,
    renewing: bool,
}

impl Listings {
    fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            entries: Mutex::default(),
        }
    }

    /// The kept listing of `prefix` if it is young enough; starts its renewal if it is aging.
    fn get(
        self: &Arc<Self>,
        store: &LiveStore,
        prefix: &Option<Path>,
    ) -> Option<Arc<Vec<ObjectMeta>>> {
        let mut entries = self.entries.lock().expect("listings lock");
        let e = entries.get_mut(prefix)?;
        let age = e.at.elapsed();
        if age >= self.max_age {
            return None;
        }
        if age >= self.max_age / 4 && !e.renewing {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return None;
            };
            e.renewing = true;
            let (me, inner, cache, prefix) = (
                self.clone(),
                store.inner.clone(),
                store.cache.clone(),
                prefix.clone(),
            );
            rt.spawn(async move {
                let started = Instant::now();
                match list_live(inner.as_ref(), prefix.as_ref(), &cache).await {
                    Ok(split) => me.put(prefix, split.live, started),
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing a lake listing failed; the next query lists itself");
                        if let Some(e) = me.entries.lock().expect("listings lock").get_mut(&prefix) {
                            e.renewing = false;
                        }
                    }
                }
            });
        }
        Some(e.objects.clone())
    }

    /// Keeps a listing that started at `at` (unless a newer one is kept already).
    fn put(&self, prefix: Option<Path>, objects: Vec<ObjectMeta>, at: Instant) {
        let mut entries = self.entries.lock().expect("listings lock");
        if entries.get(&prefix).is_some_and(|e| e.at > at) {
            return;
        }
        entries.insert(
            prefix,
            Listed {
                objects: Arc::new(objects),
                at,
                renewing: false,
            },
        );
    }
}

impl std::fmt::Display for LiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LiveStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
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

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (inner, cache, prefix) = (self.inner.clone(), self.cache.clone(), prefix.cloned());
        let listings = self.listings.clone();
        if let Some(kept) = listings.as_ref().and_then(|l| l.get(self, &prefix)) {
            let objects: Vec<ObjectMeta> = kept.as_ref().clone();
            return futures::stream::iter(objects.into_iter().map(Ok)).boxed();
        }
        futures::stream::once(async move {
            let started = Instant::now();
            let split = list_live(inner.as_ref(), prefix.as_ref(), &cache).await?;
            if let Some(l) = listings {
                l.put(prefix, split.live.clone(), started);
            }
            Ok::<_, object_store::Error>(split.live)
        })
        .map_ok(|live| futures::stream::iter(live.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut attempt = 0;
        loop {
            let mut listed = self.inner.list_with_delimiter(prefix).await?;
            let objects = std::mem::take(&mut listed.objects);
            match split_live(self.inner.as_ref(), objects, &self.cache).await {
                // A compacted file vanished under us: a newer generation replaced it; look again.
                Err(object_store::Error::NotFound { .. }) if attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
                Ok(split) => {
                    listed.objects = split.live;
                    return Ok(listed);
                }
            }
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt as _;
    use object_store::memory::InMemory;

    async fn names(store: &LiveStore) -> Vec<String> {
        let mut out: Vec<String> = store
            .list(Some(&Path::from("raw")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        out.sort();
        out
    }

    #[tokio::test]
    async fn kept_listings_are_used_then_renewed_in_the_background() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        inner
            .put(&Path::from("raw/a.parquet"), "a".into())
            .await
            .unwrap();
        let store = LiveStore::with_listings(inner.clone(), Duration::from_secs(10));
        assert_eq!(names(&store).await, ["raw/a.parquet"]);
        inner
            .put(&Path::from("raw/b.parquet"), "b".into())
            .await
            .unwrap();
        // Young: the kept listing answers, without the new file.
        assert_eq!(names(&store).await, ["raw/a.parquet"]);
        // Past a quarter of its age: still answers, and a renewal starts.
        tokio::time::sleep(Duration::from_millis(2_600)).await;
        assert_eq!(names(&store).await, ["raw/a.parquet"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while names(&store).await.len() < 2 {
            assert!(Instant::now() < deadline, "the listing was never renewed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(names(&store).await, ["raw/a.parquet", "raw/b.parquet"]);
        // Forgotten: the next listing asks the store.
        inner.delete(&Path::from("raw/a.parquet")).await.unwrap();
        store.forget_listings();
        assert_eq!(names(&store).await, ["raw/b.parquet"]);
    }

    #[tokio::test]
    async fn without_kept_listings_every_listing_asks_the_store() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = LiveStore::new(inner.clone());
        assert!(names(&store).await.is_empty());
        inner
            .put(&Path::from("raw/a.parquet"), "a".into())
            .await
            .unwrap();
        assert_eq!(names(&store).await, ["raw/a.parquet"]);
    }
}
