//! Fault injection around a real backend, for tests of outages and torn writes.
//!
//! A [`FaultPlan`] is shared between the test and the [`FaultStorage`] it controls:
//! the test switches an outage on (every operation, or chosen ones, optionally only
//! for paths containing a substring), arms a countdown that fails the N-th next
//! call, or asks the next write (or the N-th next one) to be torn (half the bytes
//! reach the file, then the call fails), and switches it off again. Everything else goes to the real backend.
//!
//! Two slow modes make calls late instead of failing them: [`FaultPlan::delay_ops`]
//! holds chosen operations for a fixed time before they go through (a sync that
//! lands after a deadline; a hang, with a delay longer than the test), and
//! [`FaultPlan::throttle`] makes reads and writes move their bytes at a given
//! rate (a slow link: a call takes `bytes / rate`, so a bigger call takes longer).
//!
//! A [`CrashPoint`] ([`FaultPlan::crash_at`]) stands for the process dying in the
//! middle of one chosen call: the N-th `write`, `create`, `rename`, `close`,
//! `sync` or `delete` whose path contains a substring. A write there is torn
//! (half its bytes reach the file and are synced); `close` dies before the call
//! reaches the backend (everything written is synced, the file is still open: on
//! HDFS its lease is held); every other operation dies right after the backend
//! carried it out, before the caller learns it did. From then on every call of
//! the plan fails, as nothing of a dead process reaches storage, and the plan's
//! crash action runs: in-process tests keep none (the engine goes on against a
//! storage that refuses everything, and a fresh one takes over), while
//! [`crate::storage::crash`] ends the real process with `SIGKILL`.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CreateMode, FileStatus, FileWriter, Progress, RenameMode, SharedStorage, Storage, StorageError,
    StorageResult,
};

/// How many bytes a throttled read hands over at a time.
pub const THROTTLE_PIECE: usize = 64 << 10;

/// The operations a plan can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `Storage::create`.
    Create,
    /// `Storage::append`.
    Append,
    /// `FileWriter::write`.
    Write,
    /// `FileWriter::sync`.
    Sync,
    /// `FileWriter::close`.
    Close,
    /// `Storage::read_range`.
    Read,
    /// `Storage::stat`.
    Stat,
    /// `Storage::list`.
    List,
    /// `Storage::rename`.
    Rename,
    /// `Storage::mkdirs`.
    Mkdirs,
    /// `Storage::delete`.
    Delete,
    /// `Storage::recover_lease`.
    RecoverLease,
}

impl Op {
    /// The lower-case name used in [`CrashPoint`] specs (`write`, `rename`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Append => "append",
            Op::Write => "write",
            Op::Sync => "sync",
            Op::Close => "close",
            Op::Read => "read",
            Op::Stat => "stat",
            Op::List => "list",
            Op::Rename => "rename",
            Op::Mkdirs => "mkdirs",
            Op::Delete => "delete",
            Op::RecoverLease => "recover_lease",
        }
    }
}

/// Where a process dies on purpose: the `nth` (from 1) call of `op` whose path
/// (either path of a rename) contains `path_contains`. Written
/// `<op>:<n>[:<path substring>]`, e.g. `write:3:data/clicks/` or `rename:1:_SUCCESS`;
/// `op` is one of `write`, `create`, `rename`, `close`, `sync`, `delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    /// The operation.
    pub op: Op,
    /// Which matching call, counting from 1.
    pub nth: u64,
    /// Only calls on paths containing this count (all calls if empty).
    pub path_contains: String,
}

/// A [`CrashPoint`] spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("crash point {spec:?} is not <op>:<n>[:<path substring>] with op one of write, create, rename, close, sync, delete and n >= 1: {reason}")]
pub struct BadCrashPoint {
    /// The rejected spec.
    pub spec: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for CrashPoint {
    type Err = BadCrashPoint;

    fn from_str(spec: &str) -> Result<CrashPoint, BadCrashPoint> {
        let bad = |reason| BadCrashPoint {
            spec: spec.to_string(),
            reason,
        };
        let mut parts = spec.splitn(3, ':');
        let op = match parts.next().unwrap_or("") {
            "write" => Op::Write,
            "create" => Op::Create,
            "rename" => Op::Rename,
            "close" => Op::Close,
            "sync" => Op::Sync,
            "delete" => Op::Delete,
            _ => return Err(bad("unknown operation")),
        };
        let nth: u64 = parts
            .next()
            .ok_or_else(|| bad("no count"))?
            .parse()
            .map_err(|_| bad("the count is not a number"))?;
        if nth == 0 {
            return Err(bad("the count starts at 1"));
        }
        Ok(CrashPoint {
            op,
            nth,
            path_contains: parts.next().unwrap_or("").to_string(),
        })
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.op.name(), self.nth)?;
        if !self.path_contains.is_empty() {
            write!(f, ":{}", self.path_contains)?;
        }
        Ok(())
    }
}

/// What runs when a crash point is reached (the operation and its path).
pub type CrashAction = Arc<dyn Fn(Op, &str) + Send + Sync>;

struct Crash {
    point: CrashPoint,
    /// Matching calls seen so far.
    seen: u64,
    action: Option<CrashAction>,
}

impl fmt::Debug for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crash")
            .field("point", &self.point)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct PlanState {
    /// Ops failing while the outage lasts; empty with `outage` set means all.
    ops: Vec<Op>,
    /// Whether an outage is in force.
    outage: bool,
    /// Whether failing writer calls (write, sync, close) go through first.
    after_doing: bool,
    /// Only paths containing this fail, if set.
    path_filter: Option<String>,
    /// Fail the call after this many more matching calls succeed.
    countdown: Option<u64>,
    /// The next write writes half its bytes, then fails.
    tear_next_write: bool,
    /// Tear the write after this many more writes succeed.
    tear_countdown: Option<u64>,
    /// These operations wait this long before they go through.
    delay: Option<(Vec<Op>, Duration)>,
    /// Reads and writes move at most this many bytes a second.
    throttle: Option<u64>,
    /// The armed crash point, if any.
    crash: Option<Crash>,
    /// Where the crash happened (operation and path), once it did: every call
    /// fails from then on.
    crashed: Option<(Op, String)>,
}

/// The switchboard a test uses to fail a [`FaultStorage`].
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    state: Arc<Mutex<PlanState>>,
    injected: Arc<AtomicU64>,
}

impl FaultPlan {
    /// A plan with no faults.
    pub fn new() -> Self {
        FaultPlan::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlanState> {
        // A test that panicked while holding the lock leaves a usable state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every operation fails until [`FaultPlan::heal`].
    pub fn fail_all(&self) {
        let mut s = self.lock();
        s.outage = true;
        s.ops.clear();
    }

    /// Only these operations fail until [`FaultPlan::heal`].
    pub fn fail_ops(&self, ops: &[Op]) {
        let mut s = self.lock();
        s.outage = true;
        s.ops = ops.to_vec();
    }

    /// Like [`FaultPlan::fail_ops`], but a failing `write`, `sync` or `close` of
    /// a writer is done first and then reported as failed: the bytes landed
    /// (an `hsync` whose answer was lost, a sync that failed after the data
    /// reached the disk). Other operations fail without being done.
    pub fn fail_ops_after_doing(&self, ops: &[Op]) {
        let mut s = self.lock();
        s.outage = true;
        s.after_doing = true;
        s.ops = ops.to_vec();
    }

    /// Restricts faults to paths containing `needle`.
    pub fn only_paths_containing(&self, needle: &str) {
        self.lock().path_filter = Some(needle.to_string());
    }

    /// Lets `n` more matching calls succeed, then fails the next one (once).
    pub fn fail_after(&self, n: u64) {
        self.lock().countdown = Some(n);
    }

    /// The next write puts half its bytes in the file and then fails.
    pub fn tear_next_write(&self) {
        self.lock().tear_next_write = true;
    }

    /// Lets `n` more writes (`FileWriter::write`, any path) succeed, then tears
    /// the next one as [`FaultPlan::tear_next_write`] does (once): a crash in
    /// the middle of the `n`-th write of a step, whatever file it writes.
    pub fn tear_write_after(&self, n: u64) {
        self.lock().tear_countdown = Some(n);
    }

    /// Holds every call of `ops` (any path, or those of
    /// [`FaultPlan::only_paths_containing`]) for `delay` before it goes through,
    /// until [`FaultPlan::heal`]: a storage that is late, not failing.
    pub fn delay_ops(&self, ops: &[Op], delay: Duration) {
        self.lock().delay = Some((ops.to_vec(), delay));
    }

    /// Makes reads (`read_range`) and writes move `bytes_per_sec` (at least 1),
    /// until [`FaultPlan::heal`]: a slow but working link. A write of `n` bytes
    /// waits `n / bytes_per_sec` seconds before it goes through; a read hands its
    /// bytes over [`THROTTLE_PIECE`] at a time at that rate (reported to its
    /// [`Progress`] as they "arrive", as HDFS reports packets).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.lock().throttle = Some(bytes_per_sec.max(1));
    }

    /// Arms a crash point (see the module docs); `action` runs once it is
    /// reached, after the torn write or the operation, before the call returns.
    pub fn crash_at(&self, point: CrashPoint, action: Option<CrashAction>) {
        self.lock().crash = Some(Crash {
            point,
            seen: 0,
            action,
        });
    }

    /// Where the crash point was reached (operation and path), if it was.
    pub fn crashed(&self) -> Option<(Op, String)> {
        self.lock().crashed.clone()
    }

    /// Counts a call of `op` on `from` (and `to`) against the crash point;
    /// true if this call is the one that dies.
    fn reaches_crash(&self, op: Op, from: &str, to: &str) -> bool {
        let mut s = self.lock();
        let Some(crash) = s.crash.as_mut() else {
            return false;
        };
        let needle = crash.point.path_contains.as_str();
        if crash.point.op != op || !(from.contains(needle) || to.contains(needle)) {
            return false;
        }
        crash.seen += 1;
        crash.seen == crash.point.nth
    }

    /// The process dies here: every later call fails, and the crash action runs.
    fn crash(&self, op: Op, path: &str) -> StorageError {
        let action = {
            let mut s = self.lock();
            s.crashed = Some((op, path.to_string()));
            s.crash.take().and_then(|c| c.action)
        };
        self.injected.fetch_add(1, Ordering::Relaxed);
        if let Some(action) = action {
            action(op, path);
        }
        StorageError::Injected {
            op,
            path: path.to_string(),
        }
    }

    /// Ends every fault (a crash point and its aftermath included).
    pub fn heal(&self) {
        *self.lock() = PlanState::default();
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Whether the failure [`FaultPlan::check`] reports for a writer call
    /// comes after the call was done ([`FaultPlan::fail_ops_after_doing`]).
    fn after_doing(&self) -> bool {
        self.lock().after_doing
    }

    fn check(&self, op: Op, path: &str) -> StorageResult<()> {
        let mut s = self.lock();
        if s.crashed.is_some() {
            return Err(StorageError::Injected {
                op,
                path: path.to_string(),
            });
        }
        if let Some(filter) = &s.path_filter {
            if !path.contains(filter.as_str()) {
                return Ok(());
            }
        }
        let op_matches = s.ops.is_empty() || s.ops.contains(&op);
        let mut fail = s.outage && op_matches;
        if let Some(left) = s.countdown {
            if left == 0 {
                s.countdown = None;
                fail = true;
            } else {
                s.countdown = Some(left - 1);
            }
        }
        if fail {
            self.injected.fetch_add(1, Ordering::Relaxed);
            Err(StorageError::Injected {
                op,
                path: path.to_string(),
            })
        } else {
            Ok(())
        }
    }

    /// Fails the call if the plan's crash point was reached.
    fn check_crashed(&self, op: Op, path: &str) -> StorageResult<()> {
        if self.lock().crashed.is_some() {
            return Err(StorageError::Injected {
                op,
                path: path.to_string(),
            });
        }
        Ok(())
    }

    /// The throttle for `path`, if any.
    fn throttle_for(&self, path: &str) -> Option<u64> {
        let s = self.lock();
        if s.path_filter
            .as_deref()
            .is_some_and(|filter| !path.contains(filter))
        {
            return None;
        }
        s.throttle
    }

    /// Waits as the slow modes say for a call of `op` on `path` moving `bytes`.
    async fn pace(&self, op: Op, path: &str, bytes: u64) {
        let wait = {
            let s = self.lock();
            if s.path_filter
                .as_deref()
                .is_some_and(|filter| !path.contains(filter))
            {
                return;
            }
            let mut wait = Duration::ZERO;
            if let Some((ops, delay)) = &s.delay {
                if ops.contains(&op) {
                    wait += *delay;
                }
            }
            if let (Some(rate), Op::Write) = (s.throttle, op) {
                wait += Duration::from_secs_f64(bytes as f64 / rate as f64);
            }
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    fn take_tear(&self) -> bool {
        let mut s = self.lock();
        match s.tear_countdown {
            Some(0) => {
                s.tear_countdown = None;
                return true;
            }
            Some(left) => s.tear_countdown = Some(left - 1),
            None => {}
        }
        std::mem::take(&mut s.tear_next_write)
    }
}

/// A storage that fails operations as its [`FaultPlan`] says.
pub struct FaultStorage {
    inner: SharedStorage,
    plan: FaultPlan,
}

impl fmt::Debug for FaultStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultStorage")
            .field("inner", &self.inner)
            .finish()
    }
}

impl FaultStorage {
    /// Wraps `inner`; faults come from `plan`.
    pub fn new(inner: SharedStorage, plan: FaultPlan) -> Self {
        FaultStorage { inner, plan }
    }

    fn wrap(&self, inner: Box<dyn FileWriter>) -> Box<dyn FileWriter> {
        Box::new(FaultWriter {
            inner,
            plan: self.plan.clone(),
        })
    }
}

#[async_trait]
impl Storage for FaultStorage {
    fn root(&self) -> &str {
        self.inner.root()
    }

    async fn create(&self, path: &str, mode: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
        self.plan.check(Op::Create, path)?;
        self.plan.pace(Op::Create, path, 0).await;
        let writer = self.wrap(self.inner.create(path, mode).await?);
        if self.plan.reaches_crash(Op::Create, path, path) {
            return Err(self.plan.crash(Op::Create, path));
        }
        Ok(writer)
    }

    async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>> {
        self.plan.check(Op::Append, path)?;
        self.plan.pace(Op::Append, path, 0).await;
        Ok(self.wrap(self.inner.append(path).await?))
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
        self.plan.check(Op::Read, path)?;
        // The fixed delay first (the throttle is applied piece by piece below).
        self.plan.pace(Op::Read, path, 0).await;
        let Some(rate) = self.plan.throttle_for(path) else {
            return self.inner.read_range_tracked(path, range, progress).await;
        };
        let bytes = self.inner.read_range(path, range).await?;
        for piece in bytes.chunks(THROTTLE_PIECE) {
            tokio::time::sleep(Duration::from_secs_f64(piece.len() as f64 / rate as f64)).await;
            progress.add(piece.len() as u64);
        }
        Ok(bytes)
    }

    async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
        self.plan.check(Op::Stat, path)?;
        self.plan.pace(Op::Stat, path, 0).await;
        self.inner.stat(path).await
    }

    async fn list(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        self.plan.check(Op::List, dir)?;
        self.plan.pace(Op::List, dir, 0).await;
        self.inner.list(dir).await
    }

    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> StorageResult<()> {
        self.plan.check(Op::Rename, from)?;
        self.plan.pace(Op::Rename, from, 0).await;
        self.inner.rename(from, to, mode).await?;
        if self.plan.reaches_crash(Op::Rename, from, to) {
            return Err(self.plan.crash(Op::Rename, from));
        }
        Ok(())
    }

    async fn mkdirs(&self, dir: &str) -> StorageResult<()> {
        self.plan.check(Op::Mkdirs, dir)?;
        self.plan.pace(Op::Mkdirs, dir, 0).await;
        self.inner.mkdirs(dir).await
    }

    async fn delete(&self, path: &str, recursive: bool) -> StorageResult<bool> {
        self.plan.check(Op::Delete, path)?;
        self.plan.pace(Op::Delete, path, 0).await;
        let deleted = self.inner.delete(path, recursive).await?;
        if self.plan.reaches_crash(Op::Delete, path, path) {
            return Err(self.plan.crash(Op::Delete, path));
        }
        Ok(deleted)
    }

    async fn recover_lease(&self, path: &str) -> StorageResult<bool> {
        self.plan.check(Op::RecoverLease, path)?;
        self.plan.pace(Op::RecoverLease, path, 0).await;
        self.inner.recover_lease(path).await
    }
}

#[derive(Debug)]
struct FaultWriter {
    inner: Box<dyn FileWriter>,
    plan: FaultPlan,
}

#[async_trait]
impl FileWriter for FaultWriter {
    async fn write(&mut self, buf: Bytes) -> StorageResult<()> {
        self.plan.check_crashed(Op::Write, self.inner.path())?;
        let path = self.inner.path();
        let crash = self.plan.reaches_crash(Op::Write, path, path);
        if crash || self.plan.take_tear() {
            let half = buf.slice(..buf.len() / 2);
            self.inner.write(half).await?;
            self.inner.sync().await?;
            let path = self.inner.path();
            if crash {
                return Err(self.plan.crash(Op::Write, path));
            }
            self.plan.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StorageError::Injected {
                op: Op::Write,
                path: path.to_string(),
            });
        }
        let refused = self.plan.check(Op::Write, self.inner.path());
        if refused.is_err() && !self.plan.after_doing() {
            return refused;
        }
        self.plan
            .pace(Op::Write, self.inner.path(), buf.len() as u64)
            .await;
        self.inner.write(buf).await?;
        refused
    }

    async fn sync(&mut self) -> StorageResult<()> {
        let refused = self.plan.check(Op::Sync, self.inner.path());
        if refused.is_err() && !self.plan.after_doing() {
            return refused;
        }
        self.plan.pace(Op::Sync, self.inner.path(), 0).await;
        self.inner.sync().await?;
        let path = self.inner.path();
        if self.plan.reaches_crash(Op::Sync, path, path) {
            return Err(self.plan.crash(Op::Sync, path));
        }
        refused
    }

    async fn close(self: Box<Self>) -> StorageResult<()> {
        let refused = self.plan.check(Op::Close, self.inner.path());
        if refused.is_err() && !self.plan.after_doing() {
            return refused;
        }
        let path = self.inner.path();
        if self.plan.reaches_crash(Op::Close, path, path) {
            return Err(self.plan.crash(Op::Close, path));
        }
        self.plan.pace(Op::Close, self.inner.path(), 0).await;
        self.inner.close().await?;
        refused
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }

    fn path(&self) -> &str {
        self.inner.path()
    }
}
