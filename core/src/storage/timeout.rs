//! Bounds the time of every storage operation.
//!
//! An HDFS client keeps retrying while a NameNode is down, so a single `hsync` can
//! hang for minutes. A service that must keep answering (the collector spools when
//! storage fails) wraps its storage in [`TimeoutStorage`]: an operation that takes
//! longer than the limit fails with a transient `TimedOut` error, and a writer whose
//! operation timed out must be abandoned by its owner (its state is unknown; bytes
//! after its last successful sync are not acknowledged).

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CreateMode, FileStatus, FileWriter, RenameMode, SharedStorage, Storage, StorageError,
    StorageResult,
};

/// A storage whose every operation fails after `limit`.
pub struct TimeoutStorage {
    inner: SharedStorage,
    limit: Duration,
}

impl fmt::Debug for TimeoutStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutStorage")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish()
    }
}

impl TimeoutStorage {
    /// Wraps `inner`; operations fail after `limit`.
    pub fn new(inner: SharedStorage, limit: Duration) -> Self {
        TimeoutStorage { inner, limit }
    }
}

async fn bounded<T>(
    limit: Duration,
    op: &str,
    path: &str,
    fut: impl Future<Output = StorageResult<T>>,
) -> StorageResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(StorageError::Io {
            path: path.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{op} did not finish within {} ms", limit.as_millis()),
            ),
        }),
    }
}

#[async_trait]
impl Storage for TimeoutStorage {
    fn root(&self) -> &str {
        self.inner.root()
    }

    async fn create(&self, path: &str, mode: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
        let inner = bounded(self.limit, "create", path, self.inner.create(path, mode)).await?;
        Ok(Box::new(TimeoutWriter {
            inner,
            limit: self.limit,
        }))
    }

    async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>> {
        let inner = bounded(self.limit, "append", path, self.inner.append(path)).await?;
        Ok(Box::new(TimeoutWriter {
            inner,
            limit: self.limit,
        }))
    }

    async fn read_range(&self, path: &str, range: Range<u64>) -> StorageResult<Bytes> {
        bounded(self.limit, "read", path, self.inner.read_range(path, range)).await
    }

    async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
        bounded(self.limit, "stat", path, self.inner.stat(path)).await
    }

    async fn list(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        bounded(self.limit, "list", dir, self.inner.list(dir)).await
    }

    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> StorageResult<()> {
        bounded(
            self.limit,
            "rename",
            from,
            self.inner.rename(from, to, mode),
        )
        .await
    }

    async fn mkdirs(&self, dir: &str) -> StorageResult<()> {
        bounded(self.limit, "mkdirs", dir, self.inner.mkdirs(dir)).await
    }

    async fn delete(&self, path: &str, recursive: bool) -> StorageResult<bool> {
        bounded(
            self.limit,
            "delete",
            path,
            self.inner.delete(path, recursive),
        )
        .await
    }

    async fn recover_lease(&self, path: &str) -> StorageResult<bool> {
        bounded(
            self.limit,
            "recover_lease",
            path,
            self.inner.recover_lease(path),
        )
        .await
    }
}

#[derive(Debug)]
struct TimeoutWriter {
    inner: Box<dyn FileWriter>,
    limit: Duration,
}

#[async_trait]
impl FileWriter for TimeoutWriter {
    async fn write(&mut self, buf: Bytes) -> StorageResult<()> {
        let path = self.inner.path().to_string();
        bounded(self.limit, "write", &path, self.inner.write(buf)).await
    }

    async fn sync(&mut self) -> StorageResult<()> {
        let path = self.inner.path().to_string();
        bounded(self.limit, "sync", &path, self.inner.sync()).await
    }

    async fn close(self: Box<Self>) -> StorageResult<()> {
        let path = self.inner.path().to_string();
        bounded(self.limit, "close", &path, self.inner.close()).await
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }

    fn path(&self) -> &str {
        self.inner.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storage whose every call never finishes.
    #[derive(Debug)]
    struct Hang;

    #[async_trait]
    impl Storage for Hang {
        fn root(&self) -> &str {
            "hang://"
        }
        async fn create(&self, _: &str, _: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
            std::future::pending().await
        }
        async fn append(&self, _: &str) -> StorageResult<Box<dyn FileWriter>> {
            std::future::pending().await
        }
        async fn read_range(&self, _: &str, _: Range<u64>) -> StorageResult<Bytes> {
            std::future::pending().await
        }
        async fn stat(&self, _: &str) -> StorageResult<FileStatus> {
            std::future::pending().await
        }
        async fn list(&self, _: &str) -> StorageResult<Vec<FileStatus>> {
            std::future::pending().await
        }
        async fn rename(&self, _: &str, _: &str, _: RenameMode) -> StorageResult<()> {
            std::future::pending().await
        }
        async fn mkdirs(&self, _: &str) -> StorageResult<()> {
            std::future::pending().await
        }
        async fn delete(&self, _: &str, _: bool) -> StorageResult<bool> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_operations_fail_as_transient_timeouts() {
        let s = TimeoutStorage::new(std::sync::Arc::new(Hang), Duration::from_secs(5));
        let err = s.stat("a/b").await.unwrap_err();
        assert!(err.is_transient());
        assert!(
            err.to_string()
                .contains("stat did not finish within 5000 ms"),
            "{err}"
        );
        assert!(s.create("x", CreateMode::Exclusive).await.is_err());
    }
}
