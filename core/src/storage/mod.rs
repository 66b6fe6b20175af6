//! Storage: one small async trait, several backends, and wrappers.
//!
//! Every service reaches a cluster through [`Storage`]. A cluster is one root URI
//! ([`open_root`]): a local directory (`/path`, `file:///path`, the embedded default)
//! or HDFS (`hdfs://namenode:port/path`). Paths handed to a backend are *relative to
//! that root*, use `/` separators and never start with `/` (the [`crate::layout`] module
//! builds them).
//!
//! Backends:
//! - [`LocalStorage`]: local disk. `sync` is `fdatasync` of the file plus, the first time,
//!   `fsync` of its parent directory, so a synced file survives power loss by name.
//!   Renames, creates and deletes fsync the directories they change.
//! - [`HdfsStorage`]: HDFS through `hdfs-native`; `sync` is `hsync`. `HADOOP_CONF_DIR`
//!   and `HADOOP_USER_NAME` are honoured by the client.
//! - [`RetryStorage`]: retries namespace operations that fail with a transient error
//!   (HDFS `NotReplicatedYetException`, a NameNode restarting, connection resets) with
//!   capped exponential backoff. Writes through an open writer are never retried
//!   here: a failed writer is the caller's to abandon (the collector spools).
//! - [`TimeoutStorage`]: bounds every operation (an HDFS client retries for
//!   minutes while a NameNode is down), so a service can fail over instead of hang;
//!   with [`TimeoutStorage::progress`], a read is bounded by the time without a byte
//!   received (and a minimum rate), not by its total time: a slow link still
//!   finishes a big read. Reads report their bytes as they arrive through
//!   [`Storage::read_range_tracked`] and a [`Progress`].
//! - [`FaultStorage`]: wraps a real backend and fails chosen operations on command,
//!   for tests of outages.
//! - [`crash`]: a test hook; with `CONDUIT_CRASH_AT` set, [`open_root`] wraps every
//!   root so the process kills itself (`SIGKILL`) in the middle of a chosen call.
//!
//! Invariants every backend keeps (checked by [`conformance`], which every backend runs):
//! - `create(path, Exclusive)` fails with [`StorageError::AlreadyExists`] if the path
//!   exists, and exactly one of several racing exclusive creates succeeds.
//! - After `FileWriter::sync` returns, every byte written so far is durable and visible
//!   to `len`/`read_range` (on HDFS: through `len`; see [`Storage::read_range`]).
//! - `rename(from, to, Overwrite)` replaces `to` atomically; `rename(.., NoOverwrite)`
//!   fails with `AlreadyExists` if `to` exists.
//! - Parent directories are created on demand by `create` and `rename`.

pub mod crash;
mod fault;
mod hdfs;
mod local;
mod retry;
mod timeout;

pub mod conformance;

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

pub use fault::{BadCrashPoint, CrashAction, CrashPoint, FaultPlan, FaultStorage, Op};
pub use hdfs::HdfsStorage;
pub use local::LocalStorage;
pub use retry::{RetryPolicy, RetryStorage};
pub use timeout::{TimeoutKind, TimeoutObserver, TimeoutStorage};

/// Errors from storage backends, mapped from each backend's private error types.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The path does not exist.
    #[error("not found: {path}")]
    NotFound {
        /// The missing path, relative to the root.
        path: String,
    },
    /// The path exists but the operation required it not to.
    #[error("already exists: {path}")]
    AlreadyExists {
        /// The existing path, relative to the root.
        path: String,
    },
    /// A path handed to the storage layer is not a valid relative path.
    #[error("invalid storage path {path:?}: {reason}")]
    InvalidPath {
        /// The rejected path.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A root URI could not be understood.
    #[error("invalid storage root {uri:?}: {reason}")]
    InvalidRoot {
        /// The rejected URI.
        uri: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A local I/O error.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The path being operated on.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error reported by HDFS.
    #[error("hdfs error on {path}: {message}")]
    Hdfs {
        /// The path being operated on.
        path: String,
        /// The client's description of the error.
        message: String,
        /// Whether retrying the same operation later may succeed.
        transient: bool,
    },
    /// The process (or the whole system) is out of file descriptors (`EMFILE`,
    /// `ENFILE`). Nothing is wrong with the storage: the caller must close files
    /// before it opens more. Not transient in the retry sense (retrying at once
    /// cannot succeed), and never a reason to consider the storage unavailable.
    #[error("too many open files on {path}: {source}")]
    TooManyOpenFiles {
        /// The path being operated on.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A failure injected by [`FaultStorage`].
    #[error("injected fault on {op:?} {path}")]
    Injected {
        /// The operation that was failed.
        op: Op,
        /// The path it was called with.
        path: String,
    },
}

impl StorageError {
    /// Whether the same operation may succeed if retried later (outages, restarts,
    /// `NotReplicatedYetException`). `NotFound`, `AlreadyExists` and invalid paths are
    /// permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::NotFound { .. }
            | StorageError::AlreadyExists { .. }
            | StorageError::InvalidPath { .. }
            | StorageError::InvalidRoot { .. } => false,
            StorageError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::AlreadyExists
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::PermissionDenied
            ),
            StorageError::Hdfs { transient, .. } => *transient,
            StorageError::TooManyOpenFiles { .. } => false,
            StorageError::Injected { .. } => true,
        }
    }

    /// Whether this is [`StorageError::TooManyOpenFiles`]: the process is out of
    /// file descriptors, the storage itself is fine.
    pub fn is_too_many_open_files(&self) -> bool {
        matches!(self, StorageError::TooManyOpenFiles { .. })
    }

    /// Whether this is [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// Whether this is [`StorageError::AlreadyExists`].
    pub fn is_already_exists(&self) -> bool {
        matches!(self, StorageError::AlreadyExists { .. })
    }
}

/// Whether `error` says the process or the system is out of file descriptors
/// (`EMFILE`, `ENFILE`): from opening a file, a socket or accepting a connection.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        error.raw_os_error(),
        Some(code) if code == Errno::MFILE.raw_os_error() || code == Errno::NFILE.raw_os_error()
    )
}

/// The process's soft open-file limit (`RLIMIT_NOFILE`, what `ulimit -n` shows);
/// `None` when unlimited.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Result of storage operations.
pub type StorageResult<T> = std::result::Result<T, StorageError>;

/// What `create` does when the path already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Fail with [`StorageError::AlreadyExists`] (atomic: one racer wins).
    Exclusive,
    /// Replace the existing file.
    Overwrite,
}

/// What `rename` does when the destination already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Fail with [`StorageError::AlreadyExists`].
    NoOverwrite,
    /// Atomically replace the destination.
    Overwrite,
}

/// One entry of a directory listing or a `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    /// Path relative to the root.
    pub path: String,
    /// Last component of `path`.
    pub name: String,
    /// Whether the entry is a directory.
    pub is_dir: bool,
    /// Length in bytes (0 for directories). For an HDFS file still being written,
    /// the length the NameNode knows: everything up to the last `hsync`.
    pub len: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// An open file being written. Dropping it without `close` leaves the file as
/// written so far (synced bytes are durable); on HDFS the lease is recovered later.
#[async_trait]
pub trait FileWriter: Send + fmt::Debug {
    /// Appends `buf` at the end of the file. Not durable until [`FileWriter::sync`].
    async fn write(&mut self, buf: Bytes) -> StorageResult<()>;
    /// Makes everything written so far durable (fsync / hsync).
    async fn sync(&mut self) -> StorageResult<()>;
    /// Syncs and closes the file.
    async fn close(self: Box<Self>) -> StorageResult<()>;
    /// Bytes in the file, including those written through this writer.
    fn position(&self) -> u64;
    /// The path being written, relative to the root.
    fn path(&self) -> &str;
}

/// What a read has received so far: its bytes, and when the last of them
/// arrived. [`Storage::read_range_tracked`] adds bytes as they arrive, so a
/// caller can bound a read by the time without progress ([`TimeoutStorage`]).
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    last: Mutex<Option<tokio::time::Instant>>,
}

impl Progress {
    /// Notes `n` more bytes received now.
    pub fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.bytes.fetch_add(n, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// When the last bytes arrived (`None`: none yet).
    pub fn last_moved(&self) -> Option<tokio::time::Instant> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cluster's storage: the operations every conduit service needs.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// The root URI this storage was opened with, for logs and errors.
    fn root(&self) -> &str;

    /// Creates a file for writing, creating missing parent directories.
    async fn create(&self, path: &str, mode: CreateMode) -> StorageResult<Box<dyn FileWriter>>;

    /// Opens an existing file to append to it.
    async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>>;

    /// Reads `range` of a file. A range past the end returns the bytes that exist
    /// (possibly none). On HDFS, bytes of an unfinished last block of a file still
    /// open for writing are not readable (a limitation of `hdfs-native`).
    async fn read_range(&self, path: &str, range: Range<u64>) -> StorageResult<Bytes>;

    /// [`Storage::read_range`], adding the bytes to `progress` as they arrive
    /// (HDFS: each packet from the DataNode). A backend that cannot tell adds
    /// them all when the read is done (local disk, where reads do not trickle).
    async fn read_range_tracked(
        &self,
        path: &str,
        range: Range<u64>,
        progress: &Progress,
    ) -> StorageResult<Bytes> {
        let bytes = self.read_range(path, range).await?;
        progress.add(bytes.len() as u64);
        Ok(bytes)
    }

    /// Metadata of one path. The length of a file still open for writing is, on
    /// HDFS, what the NameNode last heard from the writer: every completed block
    /// plus the last block as of its first sync (`hsync` tells the NameNode only
    /// after a new block, as Java's client does), so it may be shorter than what
    /// is synced, never longer; exact once the file is closed. On local disk it
    /// is what was written.
    async fn stat(&self, path: &str) -> StorageResult<FileStatus>;

    /// Lists a directory, sorted by name. A missing directory is `NotFound`.
    async fn list(&self, dir: &str) -> StorageResult<Vec<FileStatus>>;

    /// Renames a file or directory, creating the destination's parent directories.
    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> StorageResult<()>;

    /// Creates a directory and its parents; succeeds if it exists.
    async fn mkdirs(&self, dir: &str) -> StorageResult<()>;

    /// Deletes a path. Returns whether something was deleted. A non-empty directory
    /// needs `recursive`.
    async fn delete(&self, path: &str, recursive: bool) -> StorageResult<bool>;

    /// Ensures a file left open by a crashed writer is closed and fully readable
    /// (HDFS lease recovery). Returns `true` once the file is closed. Local disk has
    /// nothing to recover.
    async fn recover_lease(&self, _path: &str) -> StorageResult<bool> {
        Ok(true)
    }

    /// Length of a file in bytes.
    async fn len(&self, path: &str) -> StorageResult<u64> {
        Ok(self.stat(path).await?.len)
    }

    /// Whether a path exists.
    async fn exists(&self, path: &str) -> StorageResult<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole file.
    async fn read(&self, path: &str) -> StorageResult<Bytes> {
        let len = self.len(path).await?;
        self.read_range(path, 0..len).await
    }

    /// Lists a directory, treating a missing directory as empty.
    async fn list_or_empty(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        match self.list(dir).await {
            Ok(entries) => Ok(entries),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Writes a small file atomically: readers see either the old content or the new,
    /// never a mix or nothing. Written to a hidden temporary name beside `path`,
    /// synced, then renamed over `path`.
    async fn write_atomic(&self, path: &str, content: Bytes) -> StorageResult<()> {
        let tmp = temp_sibling(path);
        let staged = async {
            let mut writer = self.create(&tmp, CreateMode::Overwrite).await?;
            writer.write(content).await?;
            writer.close().await?;
            self.rename(&tmp, path, RenameMode::Overwrite).await
        }
        .await;
        if staged.is_err() {
            // A failed step leaves no temporary copy behind (best effort: storage
            // may be down; the owner's next start removes it, see
            // [`delete_temp_siblings`]).
            let _ = self.delete(&tmp, false).await;
        }
        staged
    }
}

/// Deletes every temporary copy of `path` ([`temp_sibling`]: `_tmp.<name>.*` in
/// its directory) that a crash or a failed write left behind; how many. Only for
/// a path with a single writer (a collector's own snapshot or heartbeat, a
/// worker's checkpoint: see [`OwnedWrites`]), called before that writer writes
/// it, so no copy is in use.
pub async fn delete_temp_siblings(storage: &dyn Storage, path: &str) -> StorageResult<u64> {
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    };
    let prefix = format!("_tmp.{name}.");
    let mut deleted = 0;
    for entry in storage.list_or_empty(dir).await? {
        if !entry.is_dir
            && entry.name.starts_with(&prefix)
            && storage.delete(&entry.path, false).await?
        {
            tracing::info!(path = %entry.path, "deleted a temporary copy left by a crash");
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Atomic rewrites of files that have a single writer (a worker's checkpoints):
/// [`Storage::write_atomic`], after deleting the temporary copies
/// ([`delete_temp_siblings`]) that an earlier write of the same path left when a
/// step failed and storage could not delete its copy either (a NameNode down
/// mid-write), or that a crash left. The first write of each path in this
/// process sweeps, and so does the first write after a failed one; the others
/// cost nothing more than the write. A process running through an outage thus
/// leaves no copy behind, without waiting for its next start.
#[derive(Debug, Default, Clone)]
pub struct OwnedWrites {
    /// Paths with no temporary copy left by this process.
    clean: Arc<Mutex<HashSet<String>>>,
}

impl OwnedWrites {
    /// Writes `content` to `path` atomically (see the type).
    pub async fn write_atomic(
        &self,
        storage: &dyn Storage,
        path: &str,
        content: Bytes,
    ) -> StorageResult<()> {
        let clean = self
            .clean
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(path);
        if !clean && delete_temp_siblings(storage, path).await.is_ok() {
            self.set_clean(path, true);
        }
        let written = storage.write_atomic(path, content).await;
        if written.is_err() {
            self.set_clean(path, false);
        }
        written
    }

    fn set_clean(&self, path: &str, clean: bool) {
        let mut set = self.clean.lock().unwrap_or_else(|p| p.into_inner());
        if clean {
            set.insert(path.to_owned());
        } else {
            set.remove(path);
        }
    }
}

/// A shared handle to a cluster's storage.
pub type SharedStorage = Arc<dyn Storage>;

/// The hidden temporary name used beside `path` for staged writes: `_tmp.<name>.<random>`.
/// It starts with `_`, so Hadoop input formats and conduit readers skip it.
pub fn temp_sibling(path: &str) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    format!("{dir}_tmp.{name}.{:016x}", rand::random::<u64>())
}

/// Checks a relative storage path: non-empty components, no `.`/`..`, no leading `/`.
pub(crate) fn check_path(path: &str) -> StorageResult<()> {
    let bad = |reason| {
        Err(StorageError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.starts_with('/') {
        return bad("must be relative to the root");
    }
    if path.is_empty() {
        return Ok(()); // the root itself
    }
    for component in path.split('/') {
        if component.is_empty() {
            return bad("empty path component");
        }
        if component == "." || component == ".." {
            return bad("`.` and `..` are not allowed");
        }
    }
    Ok(())
}

/// Last component of a relative path.
pub(crate) fn name_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Opens the storage for a cluster root URI:
/// - `/abs/path` or `file:///abs/path` (or a relative path, resolved against the
///   current directory): local disk, created if missing;
/// - `hdfs://host:port/path`: HDFS; the root directory is created if missing.
///
/// Every backend is wrapped in [`RetryStorage`] with the default policy (and, when
/// the test hook `CONDUIT_CRASH_AT` is set, in the crash point of [`crash`]).
pub async fn open_root(uri: &str) -> StorageResult<SharedStorage> {
    let raw = crash::wrap_from_env(open_root_raw(uri).await?)?;
    Ok(Arc::new(RetryStorage::new(raw, RetryPolicy::default())))
}

/// Opens a root URI without the retry wrapper (tests and the conformance suite use it
/// to see each backend's own behaviour).
pub async fn open_root_raw(uri: &str) -> StorageResult<SharedStorage> {
    if uri.starts_with("hdfs://") || uri.starts_with("viewfs://") {
        Ok(Arc::new(HdfsStorage::connect(uri).await?))
    } else if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(StorageError::InvalidRoot {
                uri: uri.to_string(),
                reason: "file:// URIs must hold an absolute path (file:///var/lib/conduit)"
                    .to_string(),
            });
        }
        Ok(Arc::new(LocalStorage::open(path)?))
    } else if uri.contains("://") {
        Err(StorageError::InvalidRoot {
            uri: uri.to_string(),
            reason: "unsupported scheme: use a local path, file:///path or hdfs://host:port/path"
                .to_string(),
        })
    } else if uri.is_empty() {
        Err(StorageError::InvalidRoot {
            uri: uri.to_string(),
            reason: "empty root".to_string(),
        })
    } else {
        Ok(Arc::new(LocalStorage::open(uri)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(check_path("a/b/c").is_ok());
        assert!(check_path("").is_ok());
        assert!(check_path("/a").is_err());
        assert!(check_path("a//b").is_err());
        assert!(check_path("a/../b").is_err());
        assert!(check_path("a/./b").is_err());
        assert_eq!(name_of("a/b/c"), "c");
    }

    #[test]
    fn running_out_of_descriptors_is_recognised() {
        use rustix::io::Errno;
        for errno in [Errno::MFILE, Errno::NFILE] {
            let e = std::io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(is_out_of_descriptors(&e), "{e}");
        }
        let other = std::io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error());
        assert!(!is_out_of_descriptors(&other));
        assert!(!is_out_of_descriptors(&std::io::Error::other("x")));
    }

    #[test]
    fn temp_sibling_is_hidden_and_beside() {
        let t = temp_sibling("a/b/file.json");
        assert!(t.starts_with("a/b/_tmp.file.json."), "{t}");
        let t = temp_sibling("top");
        assert!(t.starts_with("_tmp.top."), "{t}");
    }

    #[tokio::test]
    async fn bad_roots_are_clear_errors() {
        let err = open_root("s3://bucket/x").await.unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let err = open_root("file://relative").await.unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = open_root("").await.unwrap_err();
        assert!(err.to_string().contains("empty root"), "{err}");
    }
}
