//! The merge job's copy for a topic with `format = "gzip"`: each sealed local
//! `.zst` file becomes a `.gz` file of the same stem in the merged view
//! (`docs/format.md` §3.7), holding the same records as multi-member gzip.
//!
//! The rules of [`crate::copy`]'s verified copy stay, with the verification a
//! transcoded file allows:
//!
//! - the source is read in chunks through [`SealedReader`] (memory stays bounded:
//!   a chunk, one member of [`MEMBER_BYTES`] of records and its compressed bytes);
//!   members are compressed on the blocking pool;
//! - the file is written to `<dir>/_tmp.<name>`, closed (synced), read back, and
//!   checked: it decodes completely and holds the source manifest's record count;
//!   its own length and CRC-32C (not the source's) go into the merged manifest;
//! - it is renamed to its final name without overwrite right after a fence check;
//!   a final name already holding a complete file with the same record count (a
//!   previous run's) is kept, never written twice.

use conduit_core::format::gzip::{encode_member, gz_name, MEMBER_BYTES};
use conduit_core::format::{count_records_in, SealedReader};
use conduit_core::layout::Layout;
use conduit_core::{CreateMode, ManifestFile, RenameMode, SharedStorage, Storage};

use crate::copy::{CopyTask, COPY_CONCURRENCY};
use crate::{Fence, SharedFence, WorkerError};

/// The `.gz` file's length, CRC-32C and records, or why it is not a complete
/// gzip file.
pub(crate) async fn describe_gz(
    storage: &dyn Storage,
    path: &str,
) -> Result<Result<(u64, u32, u64), String>, WorkerError> {
    let len = storage.len(path).await?;
    let mut reader = SealedReader::new(storage, path, len);
    let mut records = 0;
    loop {
        match reader.next().await {
            Ok(Some((_, content))) => records += count_records_in(&content),
            Ok(None) => return Ok(Ok((len, reader.crc32c(), records))),
            Err(conduit_core::FormatError::Storage(e)) => return Err(e.into()),
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
}

/// The entry of `dst_path` if it is a complete gzip file of `expected.records`.
async fn check(
    storage: &dyn Storage,
    path: &str,
    expected: &ManifestFile,
) -> Result<Result<ManifestFile, String>, WorkerError> {
    Ok(match describe_gz(storage, path).await? {
        Ok((bytes, crc32c, records)) if records == expected.records => Ok(ManifestFile {
            name: gz_name(&expected.name),
            bytes,
            crc32c,
            ..expected.clone()
        }),
        Ok((_, _, records)) => Err(format!(
            "{records} records, the source manifest lists {}",
            expected.records
        )),
        Err(reason) => Err(reason),
    })
}

/// Transcodes the sealed `.zst` file `src_path` of `src` (its source manifest
/// entry `expected`) into the `.gz` file `dst_path` of `dst`; returns the merged
/// manifest's entry for it. See the [module docs](self).
pub(crate) async fn transcode_verified(
    src: &dyn Storage,
    src_path: &str,
    dst: &dyn Storage,
    dst_path: &str,
    expected: &ManifestFile,
    fence: &dyn Fence,
) -> Result<(ManifestFile, u64), WorkerError> {
    if dst.exists(dst_path).await? {
        match check(dst, dst_path, expected).await? {
            Ok(entry) => return Ok((entry, 0)),
            Err(reason) => {
                tracing::warn!(path = dst_path, %reason,
                    "an incomplete or different file holds the name of a file to transcode; replacing it");
                fence.check().await?;
                dst.delete(dst_path, false).await?;
            }
        }
    }
    let tmp = Layout::tmp_path(dst_path);
    let mut writer = dst.create(&tmp, CreateMode::Overwrite).await?;
    let mut reader = SealedReader::new(src, src_path, expected.bytes);
    let mut member = Vec::new();
    let mut written = 0u64;
    let mut members = 0u64;
    loop {
        let unit = reader.next().await.map_err(|e| WorkerError::CopyMismatch {
            path: dst_path.to_owned(),
            reason: format!("reading {src_path} on {}: {e}", src.root()),
        })?;
        let last = unit.is_none();
        if let Some((_, content)) = unit {
            member.extend_from_slice(&content);
        }
        // Every file has at least one member, so an empty one is valid gzip.
        if member.len() >= MEMBER_BYTES || (last && (!member.is_empty() || members == 0)) {
            let content = std::mem::take(&mut member);
            let gz = tokio::task::spawn_blocking(move || encode_member(&content))
                .await
                .map_err(|e| WorkerError::Other(format!("gzip task failed: {e}")))?;
            written += gz.len() as u64;
            members += 1;
            writer.write(gz.into()).await?;
        }
        if last {
            break;
        }
    }
    writer.close().await?;
    let entry = match check(dst, &tmp, expected).await? {
        Ok(entry) => entry,
        Err(reason) => {
            let _ = dst.delete(&tmp, false).await;
            return Err(WorkerError::CopyMismatch {
                path: dst_path.to_owned(),
                reason: format!("transcoded from {src_path} on {}: {reason}", src.root()),
            });
        }
    };
    fence.check().await?;
    match dst.rename(&tmp, dst_path, RenameMode::NoOverwrite).await {
        Ok(()) => Ok((entry, written)),
        Err(e) if e.is_already_exists() => {
            dst.delete(&tmp, false).await?;
            match check(dst, dst_path, expected).await? {
                Ok(entry) => Ok((entry, 0)),
                Err(reason) => Err(WorkerError::CopyMismatch {
                    path: dst_path.to_owned(),
                    reason,
                }),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs [`transcode_verified`] for every task ([`CopyTask::dst_path`] names the
/// `.gz` file), [`COPY_CONCURRENCY`] at a time; returns the merged manifest's
/// entries in task order and the bytes written. On an error no further task
/// starts, the running ones finish, and the first error is returned.
pub(crate) async fn transcode_all(
    tasks: Vec<CopyTask>,
    dst: SharedStorage,
    fence: SharedFence,
) -> Result<(Vec<ManifestFile>, u64), WorkerError> {
    let mut running = tokio::task::JoinSet::new();
    let mut queue = tasks.into_iter().enumerate();
    let mut entries: Vec<Option<ManifestFile>> = vec![None; queue.len()];
    let mut written = 0;
    let mut first_error = None;
    loop {
        while first_error.is_none() && running.len() < COPY_CONCURRENCY {
            let Some((i, task)) = queue.next() else { break };
            let (dst, fence) = (dst.clone(), fence.clone());
            running.spawn(async move {
                let done = transcode_verified(
                    task.src.as_ref(),
                    &task.src_path,
                    dst.as_ref(),
                    &task.dst_path,
                    &task.file,
                    fence.as_ref(),
                )
                .await;
                (i, done)
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        match done {
            Ok((i, Ok((entry, bytes)))) => {
                entries[i] = Some(entry);
                written += bytes;
            }
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error
                    .get_or_insert(WorkerError::Other(format!("transcode task failed: {e}")));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((entries.into_iter().flatten().collect(), written)),
    }
}
