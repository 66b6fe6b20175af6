//! Local disk backend: the embedded default.
//!
//! Durability: `create` fsyncs the new file's directory (and the parent of every
//! directory it had to make), and `FileWriter::sync` writes buffered bytes and calls
//! `fdatasync`, so an acknowledged file survives a power cut by name. Renames and
//! deletes fsync the directories they change. Blocking calls run on tokio's
//! blocking pool.
//!
//! File descriptors: a writer holds one (its file); `sync` and `close` never open
//! another, so only `create`, `append`, reads and namespace operations can fail
//! with [`StorageError::TooManyOpenFiles`], and never a writer halfway.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    check_path, name_of, CreateMode, FileStatus, FileWriter, RenameMode, Storage, StorageError,
    StorageResult,
};

/// Bytes a local writer buffers before handing them to the kernel.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Storage rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    /// Absolute root directory; every relative path is joined onto it.
    root: PathBuf,
    /// The URI shown in logs (`file:///...`).
    uri: String,
}

impl LocalStorage {
    /// Opens (creating if needed) a local root directory.
    pub fn open(root: impl AsRef<Path>) -> StorageResult<Self> {
        let root = root.as_ref();
        let shown = root.display().to_string();
        fs::create_dir_all(root).map_err(|source| StorageError::Io {
            path: shown.clone(),
            source,
        })?;
        let root = fs::canonicalize(root).map_err(|source| StorageError::Io {
            path: shown,
            source,
        })?;
        let uri = format!("file://{}", root.display());
        Ok(LocalStorage { root, uri })
    }

    /// The absolute directory this storage is rooted at.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> StorageResult<PathBuf> {
        check_path(path)?;
        Ok(if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        })
    }
}

fn io_err(path: &str, source: io::Error) -> StorageError {
    if super::is_out_of_descriptors(&source) {
        return StorageError::TooManyOpenFiles {
            path: path.to_string(),
            source,
        };
    }
    match source.kind() {
        io::ErrorKind::NotFound => StorageError::NotFound {
            path: path.to_string(),
        },
        io::ErrorKind::AlreadyExists => StorageError::AlreadyExists {
            path: path.to_string(),
        },
        _ => StorageError::Io {
            path: path.to_string(),
            source,
        },
    }
}

async fn blocking<T, F>(path: &str, f: F) -> StorageResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| io_err(path, e)),
        Err(join) => Err(StorageError::Io {
            path: path.to_string(),
            source: io::Error::other(format!("blocking task failed: {join}")),
        }),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and missing ancestors, fsyncing the parent of every directory made.
fn mkdirs_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        cursor = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

fn status_of(rel: &str, meta: &fs::Metadata) -> FileStatus {
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    FileStatus {
        path: rel.to_string(),
        name: name_of(rel).to_string(),
        is_dir: meta.is_dir(),
        len: if meta.is_dir() { 0 } else { meta.len() },
        modified_ms,
    }
}

/// Renames without replacing an existing destination, atomically where the kernel
/// supports `renameat2(RENAME_NOREPLACE)`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            // Filesystem without RENAME_NOREPLACE: link + unlink is atomic for files.
            if from.is_dir() {
                if to.exists() {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                fs::rename(from, to)
            } else {
                fs::hard_link(from, to)?;
                fs::remove_file(from)
            }
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn root(&self) -> &str {
        &self.uri
    }

    async fn create(&self, path: &str, mode: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
        let full = self.full(path)?;
        let file = blocking(path, move || {
            let parent = full.parent();
            if let Some(parent) = parent {
                mkdirs_durable(parent)?;
            }
            let mut options = OpenOptions::new();
            options.write(true);
            match mode {
                CreateMode::Exclusive => options.create_new(true),
                CreateMode::Overwrite => options.create(true).truncate(true),
            };
            let file = options.open(&full)?;
            // The new name is durable now, so that a sync never needs a second
            // descriptor (for the directory) and cannot fail for want of one.
            if let Some(parent) = parent {
                if let Err(e) = fsync_dir(parent) {
                    drop(file);
                    let _ = fs::remove_file(&full);
                    return Err(e);
                }
            }
            Ok(file)
        })
        .await?;
        Ok(Box::new(LocalWriter::new(path, file, 0)))
    }

    async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>> {
        let full = self.full(path)?;
        let (file, len) = blocking(path, move || {
            let file = OpenOptions::new().append(true).open(&full)?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await?;
        Ok(Box::new(LocalWriter::new(path, file, len)))
    }

    async fn read_range(&self, path: &str, range: Range<u64>) -> StorageResult<Bytes> {
        let full = self.full(path)?;
        blocking(path, move || {
            let mut file = File::open(&full)?;
            if file.metadata()?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a directory",
                ));
            }
            file.seek(SeekFrom::Start(range.start))?;
            let want = range.end.saturating_sub(range.start);
            let mut buf = Vec::with_capacity(want.min(64 << 20) as usize);
            file.take(want).read_to_end(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
        let full = self.full(path)?;
        let rel = path.to_string();
        blocking(path, move || Ok(status_of(&rel, &fs::metadata(&full)?))).await
    }

    async fn list(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        let full = self.full(dir)?;
        let rel = dir.to_string();
        blocking(dir, move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(&full)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                match entry.metadata() {
                    Ok(meta) => out.push(status_of(&child, &meta)),
                    // Removed between read_dir and stat: it is not there any more.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> StorageResult<()> {
        let src = self.full(from)?;
        let dst = self.full(to)?;
        let shown = format!("{from} -> {to}");
        blocking(&shown.clone(), move || {
            if !src.exists() {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            if let Some(parent) = dst.parent() {
                mkdirs_durable(parent)?;
            }
            match mode {
                RenameMode::Overwrite => fs::rename(&src, &dst)?,
                RenameMode::NoOverwrite => rename_noreplace(&src, &dst)?,
            }
            if let Some(parent) = dst.parent() {
                fsync_dir(parent)?;
            }
            if let Some(parent) = src.parent() {
                if Some(parent) != dst.parent() {
                    fsync_dir(parent)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| match e {
            // Name the side that made the rename fail.
            StorageError::NotFound { .. } => StorageError::NotFound {
                path: from.to_string(),
            },
            StorageError::AlreadyExists { .. } => StorageError::AlreadyExists {
                path: to.to_string(),
            },
            other => other,
        })
    }

    async fn mkdirs(&self, dir: &str) -> StorageResult<()> {
        let full = self.full(dir)?;
        blocking(dir, move || mkdirs_durable(&full)).await
    }

    async fn delete(&self, path: &str, recursive: bool) -> StorageResult<bool> {
        let full = self.full(path)?;
        blocking(path, move || {
            let meta = match fs::symlink_metadata(&full) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                if recursive {
                    fs::remove_dir_all(&full)?;
                } else {
                    fs::remove_dir(&full)?;
                }
            } else {
                fs::remove_file(&full)?;
            }
            if let Some(parent) = full.parent() {
                fsync_dir(parent)?;
            }
            Ok(true)
        })
        .await
    }
}

/// A local file being written. Small writes are buffered and handed to the kernel
/// together with the next `sync`, so one group commit costs one blocking call.
#[derive(Debug)]
pub struct LocalWriter {
    /// Relative path, for errors.
    path: String,
    /// The file; `None` only while a blocking call borrows it.
    file: Option<File>,
    /// Bytes written by the caller but not yet handed to the kernel.
    pending: Vec<Bytes>,
    /// Total size of `pending`.
    pending_len: usize,
    /// File length including `pending`.
    position: u64,
}

impl LocalWriter {
    fn new(path: &str, file: File, position: u64) -> Self {
        LocalWriter {
            path: path.to_string(),
            file: Some(file),
            pending: Vec::new(),
            pending_len: 0,
            position,
        }
    }

    /// Hands pending bytes to the kernel and, if `durable`, fdatasyncs.
    async fn flush(&mut self, durable: bool) -> StorageResult<()> {
        let mut file = self.file.take().ok_or_else(|| StorageError::Io {
            path: self.path.clone(),
            source: io::Error::other("writer used after a failed operation"),
        })?;
        let pending = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = (|| {
                for chunk in &pending {
                    file.write_all(chunk)?;
                }
                if durable {
                    file.sync_data()?;
                }
                Ok(())
            })();
            (file, result)
        })
        .await
        .map_err(|join| StorageError::Io {
            path: self.path.clone(),
            source: io::Error::other(format!("blocking task failed: {join}")),
        })?;
        result.map_err(|e| io_err(&self.path, e))?;
        self.file = Some(file);
        Ok(())
    }
}

#[async_trait]
impl FileWriter for LocalWriter {
    async fn write(&mut self, buf: Bytes) -> StorageResult<()> {
        self.position += buf.len() as u64;
        self.pending_len += buf.len();
        self.pending.push(buf);
        if self.pending_len >= WRITE_BUFFER_BYTES {
            self.flush(false).await?;
        }
        Ok(())
    }

    async fn sync(&mut self) -> StorageResult<()> {
        self.flush(true).await
    }

    async fn close(mut self: Box<Self>) -> StorageResult<()> {
        self.flush(true).await
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_descriptors_is_its_own_kind() {
        use rustix::io::Errno;
        for errno in [Errno::MFILE, Errno::NFILE] {
            let e = io_err(
                "data/t/c1/f.zst",
                io::Error::from_raw_os_error(errno.raw_os_error()),
            );
            assert!(e.is_too_many_open_files(), "{e}");
            assert!(!e.is_transient(), "retrying at once cannot help: {e}");
            assert!(
                e.to_string()
                    .starts_with("too many open files on data/t/c1/f.zst"),
                "{e}"
            );
        }
        let full = io_err(
            "x",
            io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error()),
        );
        assert!(!full.is_too_many_open_files());
        assert!(full.is_transient());
    }
}
