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
//!
//! # Reads on slow links ([`TimeoutStorage::progress`])
//!
//! A fixed bound on a read of `n` bytes fails every read that needs longer
//! than the bound at the link's rate, however healthy: the worker copies 4 MiB
//! chunks, so with a 2 s bound a 256 kbit/s link never moved a single chunk, and
//! the same chunk failed again on every pass. Like HDFS's own socket timeout,
//! the bound of a read with `progress(min_bytes_per_sec)` follows its bytes
//! instead ([`Storage::read_range_tracked`] reports them as they arrive):
//!
//! - **no progress**: a read fails once `limit` passes without a byte received
//!   (since it started, or since the last bytes), [`TimeoutKind::NoProgress`].
//!   A cut link, or a call that never answers, fails after `limit`, as before;
//! - **too slow**: a read that keeps trickling fails once it has taken
//!   `limit + n / min_bytes_per_sec` ([`TimeoutKind::TooSlow`]), so a link that
//!   moves a byte now and then cannot hold a pass forever.
//!
//! So a read moving at `min_bytes_per_sec` or more always finishes, whatever
//! its size. Chunks stay large (one call per 4 MiB: on HDFS each read costs a
//! NameNode round trip, which smaller pieces would multiply on every link, fast
//! or slow). Writes and the other calls keep the plain bound: the worker writes
//! only to its own cluster, never across a slow link.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CreateMode, FileStatus, FileWriter, Progress, RenameMode, SharedStorage, Storage, StorageError,
    StorageResult,
};

/// Called with the operation (`list`, `read`, `create`, ...), the path and the
/// kind of every storage call that timed out.
pub type TimeoutObserver = Arc<dyn Fn(&'static str, &str, TimeoutKind) + Send + Sync>;

/// Why a call timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Nothing within the limit: the call did not finish (or, for a read
    /// bounded by progress, received no byte for that long).
    NoProgress,
    /// A read bounded by progress that kept moving, but below the minimum
    /// rate: it took longer than `limit + bytes / min_bytes_per_sec`.
    TooSlow,
}

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
    /// Reads are bounded by progress, with this minimum rate (bytes a second).
    min_read_rate: Option<u64>,
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
                min_read_rate: None,
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
                min_read_rate: None,
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

    /// Bounds reads by their progress instead of their total time (module
    /// docs): a read fails after `limit` without a byte received, or once it
    /// has taken `limit + bytes / min_bytes_per_sec` (at least 1 byte a second).
    pub fn progress(mut self, min_bytes_per_sec: u64) -> Self {
        self.limit.min_read_rate = Some(min_bytes_per_sec.max(1));
        self
    }
}

impl Limit {
    /// A `TimedOut` storage error for `path`.
    fn error(path: &str, message: String) -> StorageError {
        StorageError::Io {
            path: path.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, message),
        }
    }

    /// The error of a call not tried because another timed out recently, if
    /// the storage is cooling down.
    fn cooling_down(&self, op: &'static str, path: &str) -> Option<StorageError> {
        let ff = self.fail_fast.as_ref()?;
        let until = *ff.until.lock().unwrap_or_else(|p| p.into_inner());
        until
            .is_some_and(|until| tokio::time::Instant::now() < until)
            .then(|| {
                Limit::error(
                    path,
                    format!(
                        "{op} not tried: a call to this storage timed out less than {} ms ago \
                         (failing fast while it cools down)",
                        ff.cooldown.as_millis()
                    ),
                )
            })
    }

    /// Starts the cool-down and tells the observer.
    fn timed_out(&self, op: &'static str, path: &str, kind: TimeoutKind) {
        if let Some(ff) = &self.fail_fast {
            *ff.until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(tokio::time::Instant::now() + ff.cooldown);
        }
        if let Some(observer) = &self.observer {
            observer(op, path, kind);
        }
    }
}

async fn bounded<T>(
    limit: &Limit,
    op: &'static str,
    path: &str,
    fut: impl Future<Output = StorageResult<T>>,
) -> StorageResult<T> {
    if let Some(e) = limit.cooling_down(op, path) {
        return Err(e);
    }
    match tokio::time::timeout(limit.limit, fut).await {
        Ok(result) => result,
        Err(_) => {
            limit.timed_out(op, path, TimeoutKind::NoProgress);
            Err(Limit::error(
                path,
                format!("{op} did not finish within {} ms", limit.limit.as_millis()),
            ))
        }
    }
}

/// A read bounded by its progress (module docs), `min_rate` bytes a second at
/// least.
async fn bounded_read(
    limit: &Limit,
    min_rate: u64,
    inner: &dyn Storage,
    path: &str,
    range: Range<u64>,
    progress: &Progress,
) -> StorageResult<Bytes> {
    if let Some(e) = limit.cooling_down("read", path) {
        return Err(e);
    }
    let len = range.end.saturating_sub(range.start);
    let started = tokio::time::Instant::now();
    let before = progress.bytes();
    let slowest = started + limit.limit + Duration::from_secs_f64(len as f64 / min_rate as f64);
    let read = inner.read_range_tracked(path, range, progress);
    tokio::pin!(read);
    loop {
        let idle_until = progress.last_moved().map_or(started, |t| t.max(started)) + limit.limit;
        match tokio::time::timeout_at(idle_until.min(slowest), &mut read).await {
            Ok(result) => return result,
            Err(_) => {
                let now = tokio::time::Instant::now();
                let moved = progress.bytes() - before;
                if now >= slowest {
                    limit.timed_out("read", path, TimeoutKind::TooSlow);
                    return Err(Limit::error(
                        path,
                        format!(
                            "read too slow: {moved} of {len} bytes after {} ms, below the \
                             minimum of {min_rate} bytes/s (bound: {} ms + {len} bytes at that rate)",
                            (now - started).as_millis(),
                            limit.limit.as_millis()
                        ),
                    ));
                }
                let last = progress.last_moved().map_or(started, |t| t.max(started));
                if last + limit.limit > now {
                    continue; // bytes arrived meanwhile: the bound starts again
                }
                limit.timed_out("read", path, TimeoutKind::NoProgress);
                return Err(Limit::error(
                    path,
                    format!(
                        "read received no byte for {} ms ({moved} of {len} bytes received)",
                        limit.limit.as_millis()
                    ),
                ));
            }
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
        self.read_range_tracked(path, range, &Progress::default())
            .await
    }

    async fn read_range_tracked(
        &self,
        path: &str,
        range: Range<u64>,
        progress: &Progress,
    ) -> StorageResult<Bytes> {
        match self.limit.min_read_rate {
            Some(rate) => {
                bounded_read(
                    &self.limit,
                    rate,
                    self.inner.as_ref(),
                    path,
                    range,
                    progress,
                )
                .await
            }
            None => {
                bounded(
                    &self.limit,
                    "read",
                    path,
                    self.inner.read_range_tracked(path, range, progress),
                )
                .await
            }
        }
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

    /// A storage whose reads hand over `pieces` pieces of `piece` bytes, one
    /// every `gap`, then (with `stall_after`) nothing more for ever.
    /// What [`Trickle`] answers to anything but a read: it holds only the
    /// stream its reads hand over.
    fn only_reads(path: &str) -> StorageError {
        StorageError::NotFound { path: path.into() }
    }

    #[derive(Debug)]
    struct Trickle {
        pieces: usize,
        piece: usize,
        gap: Duration,
        stall_after: Option<usize>,
    }

    #[async_trait]
    impl Storage for Trickle {
        fn root(&self) -> &str {
            "trickle://"
        }
        async fn create(&self, path: &str, _: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
            Err(only_reads(path))
        }
        async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>> {
            Err(only_reads(path))
        }
        async fn read_range(&self, path: &str, range: Range<u64>) -> StorageResult<Bytes> {
            self.read_range_tracked(path, range, &Progress::default())
                .await
        }
        async fn read_range_tracked(
            &self,
            _: &str,
            _: Range<u64>,
            progress: &Progress,
        ) -> StorageResult<Bytes> {
            for i in 0..self.pieces {
                if self.stall_after == Some(i) {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(self.gap).await;
                progress.add(self.piece as u64);
            }
            Ok(Bytes::from(vec![7u8; self.pieces * self.piece]))
        }
        async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
            Err(only_reads(path))
        }
        async fn list(&self, path: &str) -> StorageResult<Vec<FileStatus>> {
            Err(only_reads(path))
        }
        async fn rename(&self, from: &str, _: &str, _: RenameMode) -> StorageResult<()> {
            Err(only_reads(from))
        }
        async fn mkdirs(&self, path: &str) -> StorageResult<()> {
            Err(only_reads(path))
        }
        async fn delete(&self, path: &str, _: bool) -> StorageResult<bool> {
            Err(only_reads(path))
        }
    }

    fn trickle(
        pieces: usize,
        piece: usize,
        gap_ms: u64,
        stall_after: Option<usize>,
    ) -> SharedStorage {
        Arc::new(Trickle {
            pieces,
            piece,
            gap: Duration::from_millis(gap_ms),
            stall_after,
        })
    }

    /// A bounded storage recording the kind of every timeout.
    fn watched(
        inner: SharedStorage,
        limit_ms: u64,
        min_rate: Option<u64>,
    ) -> (TimeoutStorage, Arc<Mutex<Vec<TimeoutKind>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let s = TimeoutStorage::observed(
            inner,
            Duration::from_millis(limit_ms),
            Arc::new(move |_, _, kind| record.lock().unwrap().push(kind)),
        );
        let s = match min_rate {
            Some(rate) => s.progress(rate),
            None => s,
        };
        (s, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_keeps_moving_finishes_however_long_it_takes() {
        // 40 pieces of 64 KiB, one a second (64 KiB/s): 40 s for 2.5 MiB, with a
        // 2 s bound. A plain bound fails it at 2 s, on every try.
        let (plain, _) = watched(trickle(40, 64 << 10, 1000, None), 2000, None);
        let err = plain.read_range("f", 0..(40 << 16)).await.unwrap_err();
        assert!(
            err.to_string().contains("did not finish within 2000 ms"),
            "{err}"
        );

        let (s, seen) = watched(trickle(40, 64 << 10, 1000, None), 2000, Some(16 << 10));
        let start = tokio::time::Instant::now();
        let bytes = s.read_range("f", 0..(40 << 16)).await.unwrap();
        assert_eq!(bytes.len(), 40 << 16);
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_moves_nothing_fails_at_the_limit() {
        let (s, seen) = watched(Arc::new(Hang), 2000, Some(16 << 10));
        let start = tokio::time::Instant::now();
        let err = s.read_range("f", 0..(4 << 20)).await.unwrap_err();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "not 2 s + 4 MiB at the rate"
        );
        assert!(err.is_transient());
        assert!(
            err.to_string()
                .contains("received no byte for 2000 ms (0 of 4194304 bytes received)"),
            "{err}"
        );
        // One that stops after 3 pieces fails the limit after the last one.
        let (s2, _) = watched(trickle(10, 1000, 1000, Some(3)), 2000, Some(100));
        let start = tokio::time::Instant::now();
        let err = s2.read_range("f", 0..10_000).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(
            err.to_string().contains("(3000 of 10000 bytes received)"),
            "{err}"
        );
        assert_eq!(*seen.lock().unwrap(), [TimeoutKind::NoProgress]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_below_the_minimum_rate_fails_once_it_had_its_time() {
        // 100 bytes, a byte a second, minimum 50 bytes/s: bound 2 s + 100 / 50 s.
        let (s, seen) = watched(trickle(100, 1, 1000, None), 2000, Some(50));
        let start = tokio::time::Instant::now();
        let err = s.read_range("f", 0..100).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        assert!(err.to_string().contains("read too slow: "), "{err}");
        assert!(
            err.to_string().contains(" of 100 bytes after 4000 ms"),
            "{err}"
        );
        assert!(err.to_string().contains("minimum of 50 bytes/s"), "{err}");
        assert_eq!(*seen.lock().unwrap(), [TimeoutKind::TooSlow]);
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
            Arc::new(move |op, path, _| record.lock().unwrap().push(format!("{op} {path}"))),
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
            Arc::new(move |_, _, _| *record.lock().unwrap() += 1),
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
