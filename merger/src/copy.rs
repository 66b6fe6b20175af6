//! Helpers shared by the view jobs (merge, mirror, purge, compact): the verified
//! copy of a sealed data file between clusters, the state of a view's directory,
//! cleanup of hidden leftovers, sealing with given manifest bytes, and which
//! other clusters cannot be read ([`FailingClusters`]). Walking a
//! view's directories is `conduit_core::tree`'s.
//!
//! # Verified copy ([`copy_verified`])
//!
//! A file is copied to `<dir>/_tmp.<name>` ([`Layout::tmp_path`]) in chunks of
//! [`COPY_CHUNK`] bytes (memory stays bounded whatever the file size), closed (which
//! syncs), read back and checked against the source manifest entry (length and
//! CRC-32C of the whole file, and a close trailer), and only then renamed to its
//! final name without overwrite, right after a fence check. So:
//!
//! - a data file under its final name is always complete and verified;
//! - a crash leaves at most a `_tmp.` file, which the next run overwrites or the job
//!   deletes before sealing the directory;
//! - a final name that already holds the same bytes (same length and CRC) means a
//!   previous run already copied it: the copy is skipped, never duplicated. A final
//!   name holding different bytes is deleted and copied again (only the job that
//!   owns the unsealed directory ever writes there).

use std::collections::BTreeSet;

use bytes::Bytes;
use conduit_core::format::Codec;
use conduit_core::layout::Layout;
use conduit_core::manifest::{checksum_file, describe_file};
use conduit_core::storage::temp_sibling;
use conduit_core::{
    CreateMode, Manifest, ManifestError, ManifestFile, Minute, NodeName, RenameMode, SharedStorage,
    Storage, Topic, View,
};

use crate::{Fence, SharedFence, WorkerError};

/// Clusters whose last read by a job failed. A cut cluster fails every pass
/// (every 200 ms to 1 s), several times per topic: its failures are logged at
/// WARN once, then at DEBUG until a read succeeds again, which is logged at
/// INFO.
#[derive(Debug, Default)]
pub(crate) struct FailingClusters(std::sync::Mutex<BTreeSet<NodeName>>);

impl FailingClusters {
    /// Notes a failed read of `cluster`; true if it is the first since the
    /// last successful one (log it at WARN then, at DEBUG otherwise).
    pub(crate) fn failed(&self, cluster: &NodeName) -> bool {
        let mut failing = self.0.lock().unwrap_or_else(|p| p.into_inner());
        failing.insert(cluster.clone())
    }

    /// Notes a successful read of `cluster`, logging `message` at INFO when it
    /// had been failing.
    pub(crate) fn read(&self, cluster: &NodeName, message: &str) {
        let mut failing = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if failing.remove(cluster) {
            tracing::info!(cluster = %cluster, "{message}");
        }
    }
}

/// Bytes read and written per storage call when copying or compacting.
pub(crate) const COPY_CHUNK: u64 = 4 << 20;

/// What [`copy_verified`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyOutcome {
    /// The file was copied; this many bytes were written.
    Copied(u64),
    /// An identical file was already in place (a previous run copied it).
    AlreadyThere,
}

/// Whether the file at `path` has the length and CRC-32C `expected` lists.
async fn matches(
    storage: &dyn Storage,
    path: &str,
    expected: &ManifestFile,
) -> Result<Result<(), String>, WorkerError> {
    if Codec::of_file(path) == Codec::Gzip {
        // A `.gz` file of a gzip topic's merged view has no trailer to check.
        let (len, crc) = checksum_file(storage, path).await?;
        return Ok(if len == expected.bytes && crc == expected.crc32c {
            Ok(())
        } else {
            Err(format!(
                "{len} bytes with crc32c {crc:08x}, expected {} bytes with crc32c {:08x}",
                expected.bytes, expected.crc32c
            ))
        });
    }
    match describe_file(storage, path).await {
        Ok((len, crc, _)) if len == expected.bytes && crc == expected.crc32c => Ok(Ok(())),
        Ok((len, crc, _)) => Ok(Err(format!(
            "{len} bytes with crc32c {crc:08x}, expected {} bytes with crc32c {:08x}",
            expected.bytes, expected.crc32c
        ))),
        Err(ManifestError::NotClosed { .. }) => Ok(Err("no close trailer".to_owned())),
        Err(e) => Err(e.into()),
    }
}

/// Copies the sealed data file `src_path` of `src` to `dst_path` of `dst`, verified
/// against `expected` (its entry in the source manifest); see the [module
/// docs](self).
pub(crate) async fn copy_verified(
    src: &dyn Storage,
    src_path: &str,
    dst: &dyn Storage,
    dst_path: &str,
    expected: &ManifestFile,
    fence: &dyn Fence,
) -> Result<CopyOutcome, WorkerError> {
    if dst.exists(dst_path).await? {
        match matches(dst, dst_path, expected).await? {
            Ok(()) => return Ok(CopyOutcome::AlreadyThere),
            Err(reason) => {
                tracing::warn!(path = dst_path, %reason,
                    "a different file holds the name of a file to copy; replacing it");
                fence.check().await?;
                dst.delete(dst_path, false).await?;
            }
        }
    }
    let tmp = Layout::tmp_path(dst_path);
    let mut writer = dst.create(&tmp, CreateMode::Overwrite).await?;
    let mut at = 0u64;
    while at < expected.bytes {
        let end = (at + COPY_CHUNK).min(expected.bytes);
        let chunk = src.read_range(src_path, at..end).await?;
        if chunk.is_empty() {
            drop(writer);
            let _ = dst.delete(&tmp, false).await;
            return Err(WorkerError::CopyMismatch {
                path: dst_path.to_owned(),
                reason: format!(
                    "source {src_path} on {} ends at byte {at}, its manifest says {} bytes",
                    src.root(),
                    expected.bytes
                ),
            });
        }
        at += chunk.len() as u64;
        writer.write(chunk).await?;
    }
    writer.close().await?;
    if let Err(reason) = matches(dst, &tmp, expected).await? {
        let _ = dst.delete(&tmp, false).await;
        return Err(WorkerError::CopyMismatch {
            path: dst_path.to_owned(),
            reason: format!("copy of {src_path} from {}: {reason}", src.root()),
        });
    }
    fence.check().await?;
    match dst.rename(&tmp, dst_path, RenameMode::NoOverwrite).await {
        Ok(()) => Ok(CopyOutcome::Copied(expected.bytes)),
        Err(e) if e.is_already_exists() => {
            dst.delete(&tmp, false).await?;
            match matches(dst, dst_path, expected).await? {
                Ok(()) => Ok(CopyOutcome::AlreadyThere),
                Err(reason) => Err(WorkerError::CopyMismatch {
                    path: dst_path.to_owned(),
                    reason,
                }),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Copies running at once in [`copy_all`]: hides per-file round-trip latency (an
/// HDFS create and close take tens to hundreds of milliseconds each) while memory
/// stays bounded at `COPY_CONCURRENCY * COPY_CHUNK`.
pub(crate) const COPY_CONCURRENCY: usize = 8;

/// One file for [`copy_all`].
#[derive(Debug, Clone)]
pub(crate) struct CopyTask {
    /// The cluster holding the source.
    pub src: SharedStorage,
    /// Source path.
    pub src_path: String,
    /// Destination path (on the job's own cluster).
    pub dst_path: String,
    /// The source manifest's entry for the file.
    pub file: ManifestFile,
}

/// Runs [`copy_verified`] for every task, [`COPY_CONCURRENCY`] at a time; returns
/// the bytes copied. On an error no further copy starts, the running ones finish,
/// and the first error is returned.
pub(crate) async fn copy_all(
    tasks: Vec<CopyTask>,
    dst: SharedStorage,
    fence: SharedFence,
) -> Result<u64, WorkerError> {
    let mut running = tokio::task::JoinSet::new();
    let mut queue = tasks.into_iter();
    let mut copied = 0;
    let mut first_error = None;
    loop {
        while first_error.is_none() && running.len() < COPY_CONCURRENCY {
            let Some(task) = queue.next() else { break };
            let (dst, fence) = (dst.clone(), fence.clone());
            running.spawn(async move {
                copy_verified(
                    task.src.as_ref(),
                    &task.src_path,
                    dst.as_ref(),
                    &task.dst_path,
                    &task.file,
                    fence.as_ref(),
                )
                .await
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        match done {
            Ok(Ok(CopyOutcome::Copied(bytes))) => copied += bytes,
            Ok(Ok(CopyOutcome::AlreadyThere)) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(WorkerError::Other(format!("copy task failed: {e}")));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(copied),
    }
}

/// Deletes the hidden leftovers (`_tmp.*`) in `dir` and every data file whose name
/// `keep` rejects, after a fence check; returns how many entries were deleted. Only
/// for an unsealed directory the caller owns.
pub(crate) async fn tidy_unsealed(
    storage: &dyn Storage,
    dir: &str,
    fence: &dyn Fence,
    keep: impl Fn(&str) -> bool,
) -> Result<u64, WorkerError> {
    let mut deleted = 0;
    for entry in storage.list_or_empty(dir).await? {
        if entry.name == Layout::SUCCESS_MARKER {
            continue;
        }
        let stale =
            Layout::is_tmp(&entry.name) || (!Layout::is_hidden(&entry.name) && !keep(&entry.name));
        if stale {
            fence.check().await?;
            tracing::info!(path = %entry.path, "deleting a leftover in an unsealed directory");
            if storage.delete(&entry.path, true).await? {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// Seals `dir` with exactly `bytes` as its `_SUCCESS` (a mirror keeps the origin's
/// manifest bytes): temporary name, sync, rename without overwrite. An existing
/// marker with the same bytes counts as success; a different one is an error.
pub(crate) async fn seal_raw(
    storage: &dyn Storage,
    dir: &str,
    bytes: Bytes,
) -> Result<(), WorkerError> {
    let path = Layout::success_marker(dir);
    let tmp = temp_sibling(&path);
    let mut writer = storage.create(&tmp, CreateMode::Overwrite).await?;
    writer.write(bytes.clone()).await?;
    writer.close().await?;
    match storage.rename(&tmp, &path, RenameMode::NoOverwrite).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_already_exists() => {
            let _ = storage.delete(&tmp, false).await;
            if storage.read(&path).await? == bytes {
                Ok(())
            } else {
                Err(ManifestError::AlreadySealed { path }.into())
            }
        }
        Err(e) => {
            let _ = storage.delete(&tmp, false).await;
            Err(e.into())
        }
    }
}

/// The state of one minute (or hour) directory of a view.
#[derive(Debug)]
pub(crate) enum DirState {
    /// Sealed, with its manifest.
    Sealed(Manifest),
    /// The directory exists but has no `_SUCCESS` yet.
    Unsealed,
    /// No such directory.
    Absent,
}

/// Reads the state of `view`'s directory of `minute`.
pub(crate) async fn dir_state(
    storage: &dyn Storage,
    view: View,
    topic: &Topic,
    minute: Minute,
) -> Result<DirState, WorkerError> {
    let dir = Manifest::dir(view, topic, minute);
    match Manifest::read(storage, &dir).await? {
        Some(manifest) => Ok(DirState::Sealed(manifest)),
        None if storage.exists(&dir).await? => Ok(DirState::Unsealed),
        None => Ok(DirState::Absent),
    }
}
