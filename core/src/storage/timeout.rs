//! Bounds the time of every storage operation.
//!
//! An HDFS client keeps retrying while a NameNode is down, so a single `hsync` can
//! hang for minutes. A service that must keep answering (the collector spools when
//! storage fails) wraps its storage in [`TimeoutStorage`]: an operation that takes
//! longer than the limit fails with a transient `TimedOut` error, and a writer whose
//! operation timed out must be abandoned by its owner (its state is unknown; bytes
//! after its last successful sync are not acknowledged).
//!
//! [`TimeoutStorage::observed`] also calls an observer with the operation and
//! path of every call that timed out, so a service can log and count them (the
//! worker does: `conduit_worker_storage_timeouts_total{cluster}`).
//! [`TimeoutStorage::fail_fast`] makes every call fail at once, without reaching
//! the storage, for a while after one timed out: a storage behind a cut link
//! then costs one timeout per cool-down, not one per call (a worker pass makes
//! several calls per topic to each cluster).

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CreateMode, FileStatus, FileWriter, RenameMode, SharedStorage, Storage, StorageError,
    StorageResult,
};

/// Called with the operation (`list`, `read`, `create`, ...) and the path of
/// every storage call that timed out.
pub type TimeoutObserver = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// A storage whose every operation fails after `limit`.
pub struct TimeoutStorage {
    inner: SharedStorage,
    limit: Limit,
}

/// The bound, who to tell when it is hit, and the fail-fast state.
#[derive(Clone)]
struct Limit {
    limit: Duration,
    observer: Option<TimeoutObserver>,
    fail_fast: Option<Arc<FailFast>>,
}

/// After a timeout, calls fail at once until `until`.
struct FailFast {
    cooldown: Duration,
    until: Mutex<Option<tokio::time::Instant>>,
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.limit.fmt(f)
    }
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
        TimeoutStorage {
            inner,
            limit: Limit {
                limit,
                observer: None,
                fail_fast: None,
            },
        }
    }

    /// [`TimeoutStorage::new`] that calls `observer` for every call that timed
    /// out (before it returns the error).
    pub fn observed(inner: SharedStorage, limit: Duration, observer: TimeoutObserver) -> Self {
        TimeoutStorage {
            inner,
            limit: Limit {
                limit,
                observer: Some(observer),
                fail_fast: None,
            },
        }
    }

    /// After a call times out, every call (of this storage and of its open
    /// writers) fails at once with a `TimedOut` error naming the cool-down,
    /// without reaching the storage, for `cooldown`; then calls go through
    /// again (and the next timeout starts another cool-down).
    pub fn fail_fast(mut self, cooldown: Duration) -> Self {
        self.limit.fail_fast = Some(Arc::new(FailFast {
            cooldown,
            until: Mutex::new(None),
        }));
        self
    }
}

async fn bounded<T>(
    limit: &Limit,
    op: &'static str,
    path: &str,
    fut: impl Future<Output = StorageResult<T>>,
) -> StorageResult<T> {
    let Limit {
        limit,
        observer,
        fail_fast,
    } = limit;
    let limit = *limit;
    let timed_out = |message: String| StorageError::Io {
        path: path.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, message),
    };
    if let Some(ff) = fail_fast {
        let until = *ff.until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_some_and(|until| tokio::time::Instant::now() < until) {
            return Err(timed_out(format!(
                "{op} not tried: a call to this storage timed out less than {} ms ago \
                 (failing fast while it cools down)",
                ff.cooldown.as_millis()
            )));
        }
    }
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => {
            if let Some(ff) = fail_fast {
                *ff.until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(tokio::time::Instant::now() + ff.cooldown);
            }
            if let Some(observer) = observer {
                observer(op, path);
            }
            Err(timed_out(format!(
                "{op} did not finish within {} ms",
                limit.as_millis()
            )))
        }
    }
}

#[async_trait]
impl Storage for TimeoutStorage {
    fn root(&self) -> &str {
        self.inner.root()
    }

    async fn create(&self, path: &str, mode: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
        let inner = bounded(&self.limit, "create", path, self.inner.create(path, mode)).await?;
        Ok(Box::new(TimeoutWriter {
            inner,
            limit: self.limit.clone(),
        }))
    }

    async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>> {
        let inner = bounded(&self.limit, "append", path, self.inner.append(path)).await?;
        Ok(Box::new(TimeoutWriter {
            inner,
            limit: self.limit.clone(),
        }))
    }

    async fn read_range(&self, path: &str, range: Range<u64>) -> StorageResult<Bytes> {
        bounded(
            &self.limit,
            "read",
            path,
            self.inner.read_range(path, range),
        )
        .await
    }

    async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
        bounded(&self.limit, "stat", path, self.inner.stat(path)).await
    }

    async fn list(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        bounded(&self.limit, "list", dir, self.inner.list(dir)).await
    }

    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> StorageResult<()> {
        bounded(
            &self.limit,
            "rename",
            from,
            self.inner.rename(from, to, mode),
        )
        .await
    }

    async fn mkdirs(&self, dir: &str) -> StorageResult<()> {
        bounded(&self.limit, "mkdirs", dir, self.inner.mkdirs(dir)).await
    }

    async fn delete(&self, path: &str, recursive: bool) -> StorageResult<bool> {
        bounded(
            &self.limit,
            "delete",
            path,
            self.inner.delete(path, recursive),
        )
        .await
    }

    async fn recover_lease(&self, path: &str) -> StorageResult<bool> {
        bounded(
            &self.limit,
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
    limit: Limit,
}

#[async_trait]
impl FileWriter for TimeoutWriter {
    async fn write(&mut self, buf: Bytes) -> StorageResult<()> {
        let path = self.inner.path().to_string();
        bounded(&self.limit, "write", &path, self.inner.write(buf)).await
    }

    async fn sync(&mut self) -> StorageResult<()> {
        let path = self.inner.path().to_string();
        bounded(&self.limit, "sync", &path, self.inner.sync()).await
    }

    async fn close(self: Box<Self>) -> StorageResult<()> {
        let path = self.inner.path().to_string();
        bounded(&self.limit, "close", &path, self.inner.close()).await
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

    #[tokio::test(start_paused = true)]
    async fn the_observer_hears_every_timed_out_call() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let s = TimeoutStorage::observed(
            Arc::new(Hang),
            Duration::from_secs(1),
            Arc::new(move |op, path| record.lock().unwrap().push(format!("{op} {path}"))),
        );
        assert!(s.list("streams/t").await.is_err());
        assert!(s.read_range("a/b", 0..4).await.is_err());
        assert_eq!(*seen.lock().unwrap(), ["list streams/t", "read a/b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_timeout_calls_fail_fast_for_the_cooldown() {
        let seen = Arc::new(std::sync::Mutex::new(0));
        let record = seen.clone();
        let s = TimeoutStorage::observed(
            Arc::new(Hang),
            Duration::from_secs(2),
            Arc::new(move |_, _| *record.lock().unwrap() += 1),
        )
        .fail_fast(Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        assert!(s.list("a").await.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let err = s.stat("b").await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(2), "failed at once");
        assert!(err.to_string().contains("stat not tried"), "{err}");
        assert!(err.is_transient());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(s.stat("c").await.is_err());
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(14),
            "tried again after the cool-down"
        );
        assert_eq!(*seen.lock().unwrap(), 2, "only real timeouts are observed");
    }
}
