//! The lake as readers should see it: an object store whose listings skip files a compacted file replaces.
//!
//! Compaction writes `compacted-N.parquet` before it deletes the files it merged; in between,
//! both are in the listing. DataFusion lists through this wrapper, which drops every file named
//! in a compacted file's `damselfly.compacted_from` (see `damselfly_core::compact`), so a query
//! never counts a sample twice, whenever it runs.

use std::ops::Range;
use std::sync::Arc;

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
}

impl LiveStore {
    /// Wraps a store (the lake's bucket or file system).
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            cache: Arc::new(FooterCache::default()),
        }
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
        futures::stream::once(
            async move { list_live(inner.as_ref(), prefix.as_ref(), &cache).await },
        )
        .map_ok(|split| futures::stream::iter(split.live.into_iter().map(Ok)))
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
