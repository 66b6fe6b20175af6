//! The cluster roots one partition reads from, with failover.
//!
//! A local-view partition has one root (its cluster). A sealed-view partition has
//! the merged cluster first and its mirrors after it: the same relative paths hold
//! byte-identical files on each, so when a call fails on one root (not a
//! `NotFound`: that answer is authoritative) the same call is tried on the next,
//! and the root that answered is preferred from then on.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use conduit_core::{
    FileStatus, Manifest, Minute, MinuteWalker, NodeName, SharedStorage, StorageError,
    StorageResult, Topic, View,
};

use crate::error::Result;

/// Ordered cluster roots with a sticky preferred one.
#[derive(Debug, Clone)]
pub(crate) struct Roots {
    roots: Arc<Vec<(NodeName, SharedStorage)>>,
    preferred: Arc<AtomicUsize>,
}

impl Roots {
    pub fn new(roots: Vec<(NodeName, SharedStorage)>) -> Roots {
        assert!(!roots.is_empty(), "at least one root");
        Roots {
            roots: Arc::new(roots),
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The first root (the local view's only one).
    pub fn first(&self) -> &SharedStorage {
        &self.roots[0].1
    }

    async fn each<T, F, Fut>(&self, mut op: F) -> StorageResult<T>
    where
        F: FnMut(SharedStorage) -> Fut,
        Fut: std::future::Future<Output = StorageResult<T>>,
    {
        let n = self.roots.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match op(self.roots[at].1.clone()).await {
                Ok(v) => {
                    if at != start {
                        tracing::warn!(root = self.roots[at].1.root(), cluster = %self.roots[at].0,
                            "failed over to another root");
                        self.preferred.store(at, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_not_found() => return Err(e),
                Err(e) => {
                    tracing::debug!(root = self.roots[at].1.root(), error = %e, "root failed");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one root"))
    }

    pub async fn read_range(&self, path: &str, range: Range<u64>) -> StorageResult<Bytes> {
        self.each(|s| {
            let range = range.clone();
            async move { s.read_range(path, range).await }
        })
        .await
    }

    pub async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
        self.each(|s| async move { s.stat(path).await }).await
    }

    pub async fn exists(&self, path: &str) -> StorageResult<bool> {
        self.each(|s| async move { s.exists(path).await }).await
    }

    pub async fn list_or_empty(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        self.each(|s| async move { s.list_or_empty(dir).await })
            .await
    }

    /// The existing minute directories of `topic` in `view` that are `>= from`,
    /// oldest first, at most `limit` of them.
    pub async fn minute_dirs_from(
        &self,
        view: View,
        topic: &Topic,
        from: Minute,
        limit: usize,
    ) -> StorageResult<Vec<Minute>> {
        self.each(|s| async move {
            MinuteWalker::new(&*s, view, topic)
                .from(from)
                .take(limit)
                .await
        })
        .await
    }

    /// The manifest sealing `dir`, `None` if not sealed.
    pub async fn manifest(&self, dir: &str) -> Result<Option<Manifest>> {
        let found = self
            .each(|s| async move {
                match Manifest::read(&*s, dir).await {
                    Ok(m) => Ok(Ok(m)),
                    Err(conduit_core::ManifestError::Storage(e)) => Err(e),
                    Err(other) => Ok(Err(other)),
                }
            })
            .await;
        match found {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(e.into()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether an error is worth retrying later rather than surfacing.
pub(crate) fn is_retryable(e: &StorageError) -> bool {
    !matches!(e, StorageError::InvalidPath { .. })
}
