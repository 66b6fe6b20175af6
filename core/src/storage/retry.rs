//! Retry with capped exponential backoff for transient storage errors.
//!
//! `hdfs-native` does not retry `NotReplicatedYetException` (common right after a
//! DataNode starts) nor calls made while a NameNode restarts; this wrapper does, for
//! every namespace operation and for reads. Writes through an open writer are retried
//! only in the one case where it is provably safe: the very first write of a new file
//! failed (nothing can have reached the file), in which case the file is created
//! again and the write repeated. Any later writer failure is returned to the caller,
//! who owns the decision (the collector abandons the file and spools).
//!
//! Caveat kept visible: when an exclusive `create` or a non-overwriting `rename`
//! fails transiently *after* the NameNode applied it, the retry reports
//! `AlreadyExists`. Callers that race on exclusive creates treat that as "someone
//! holds it" and re-read, which is the conservative answer.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CreateMode, FileStatus, FileWriter, RenameMode, SharedStorage, Storage, StorageResult,
};

/// How often and how long to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub initial_backoff: Duration,
    /// Backoff never grows past this.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, 50 ms doubling to at most 2 s: about 4 s before giving up, long
    /// enough for `NotReplicatedYetException`, short enough that a real outage reaches
    /// the caller (the collector spools) quickly.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        // Full jitter between half and all of the backoff, so retrying clients spread.
        let jitter = rand::random::<f64>() * 0.5 + 0.5;
        base.mul_f64(jitter)
    }
}

/// A storage wrapper that retries transient failures.
pub struct RetryStorage {
    /// The wrapped backend.
    inner: SharedStorage,
    /// When to retry.
    policy: RetryPolicy,
}

impl fmt::Debug for RetryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryStorage")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl RetryStorage {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: SharedStorage, policy: RetryPolicy) -> Self {
        RetryStorage { inner, policy }
    }

    async fn retry<T, F, Fut>(&self, what: &str, path: &str, mut op: F) -> StorageResult<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = StorageResult<T>> + Send,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt + 1 < self.policy.max_attempts => {
                    let wait = self.policy.backoff(attempt);
                    tracing::debug!(op = what, path, attempt, error = %e, ?wait, "retrying transient storage error");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl Storage for RetryStorage {
    fn root(&self) -> &str {
        self.inner.root()
    }

    async fn create(&self, path: &str, mode: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
        let inner = self
            .retry("create", path, || self.inner.create(path, mode))
            .await?;
        Ok(Box::new(RetryWriter {
            storage: self.inner.clone(),
            policy: self.policy.clone(),
            inner,
            written: false,
        }))
    }

    async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>> {
        self.retry("append", path, || self.inner.append(path)).await
    }

    async fn read_range(&self, path: &str, range: Range<u64>) -> StorageResult<Bytes> {
        self.retry("read", path, || self.inner.read_range(path, range.clone()))
            .await
    }

    async fn read_range_tracked(
        &self,
        path: &str,
        range: Range<u64>,
        progress: &super::Progress,
    ) -> StorageResult<Bytes> {
        self.retry("read", path, || {
            self.inner.read_range_tracked(path, range.clone(), progress)
        })
        .await
    }

    async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
        self.retry("stat", path, || self.inner.stat(path)).await
    }

    async fn list(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        self.retry("list", dir, || self.inner.list(dir)).await
    }

    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> StorageResult<()> {
        self.retry("rename", from, || self.inner.rename(from, to, mode))
            .await
    }

    async fn mkdirs(&self, dir: &str) -> StorageResult<()> {
        self.retry("mkdirs", dir, || self.inner.mkdirs(dir)).await
    }

    async fn delete(&self, path: &str, recursive: bool) -> StorageResult<bool> {
        self.retry("delete", path, || self.inner.delete(path, recursive))
            .await
    }

    async fn recover_lease(&self, path: &str) -> StorageResult<bool> {
        self.retry("recover_lease", path, || self.inner.recover_lease(path))
            .await
    }
}

/// A writer that re-creates its file when the very first write fails transiently.
struct RetryWriter {
    storage: SharedStorage,
    policy: RetryPolicy,
    inner: Box<dyn FileWriter>,
    /// Whether any write has succeeded (after which failures are never retried).
    written: bool,
}

impl fmt::Debug for RetryWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryWriter")
            .field("inner", &self.inner)
            .field("written", &self.written)
            .finish()
    }
}

#[async_trait]
impl FileWriter for RetryWriter {
    async fn write(&mut self, buf: Bytes) -> StorageResult<()> {
        let mut attempt = 0;
        loop {
            match self.inner.write(buf.clone()).await {
                Ok(()) => {
                    self.written = true;
                    return Ok(());
                }
                Err(e)
                    if !self.written
                        && e.is_transient()
                        && attempt + 1 < self.policy.max_attempts =>
                {
                    let path = self.inner.path().to_string();
                    tracing::debug!(path, attempt, error = %e, "first write failed, re-creating the file");
                    tokio::time::sleep(self.policy.backoff(attempt)).await;
                    attempt += 1;
                    if let Ok(fresh) = self.storage.create(&path, CreateMode::Overwrite).await {
                        self.inner = fresh;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn sync(&mut self) -> StorageResult<()> {
        self.inner.sync().await
    }

    async fn close(self: Box<Self>) -> StorageResult<()> {
        self.inner.close().await
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }

    fn path(&self) -> &str {
        self.inner.path()
    }
}
