//! HDFS backend through `hdfs-native`.
//!
//! The root URI is `hdfs://host:port/base/path` (or a logical nameservice /
//! `viewfs://` mount resolved from `HADOOP_CONF_DIR`). The client reads
//! `core-site.xml`/`hdfs-site.xml` from `HADOOP_CONF_DIR` and takes the user from
//! `HADOOP_USER_NAME` (Kerberos through the ticket cache when the config asks for it).
//!
//! Durability: `FileWriter::sync` is `hsync`: every DataNode of the block's pipeline
//! persists the bytes before it returns. As in Java's `DFSOutputStream.hsync()`,
//! the NameNode's `fsync` (with the block's length) is called only after a new
//! block was allocated (vendored `hdfs-native` patch, `vendor/hdfs-native/PATCHES.md`),
//! not on every sync: one NameNode round trip (and on HDFS 2.7 an edit-log sync)
//! less per commit round. So the length `stat`/`list` report for a file still open
//! lags behind what is synced (completed blocks plus the last block as of its first
//! sync); it is exact once the file is closed, and lease recovery of a crashed
//! writer's file takes the length from the DataNodes. Known limitation:
//! `hdfs-native` reads only the completed blocks of a file that is still open, so
//! `read_range` returns fewer bytes than were synced until the file is closed.
//! Readers that must follow an open file use the collector's HTTP endpoint
//! instead (`collector/src/open.rs`).

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use hdfs_native::{Client, ClientBuilder, HdfsError, WriteOptions};

use super::{
    check_path, name_of, CreateMode, FileStatus, FileWriter, Progress, RenameMode, Storage,
    StorageError, StorageResult,
};

/// Storage rooted at a directory of an HDFS cluster.
#[derive(Debug, Clone)]
pub struct HdfsStorage {
    /// The client; cheap to clone, shares connections.
    client: Client,
    /// Absolute HDFS path of the root, without a trailing slash (`""` for `/`).
    base: String,
    /// The URI this storage was opened with.
    uri: String,
}

/// Exception classes after which the same call may succeed later.
const TRANSIENT_EXCEPTIONS: &[&str] = &[
    "NotReplicatedYetException",
    "SafeModeException",
    "RetriableException",
    "StandbyException",
    "ConnectException",
    "ObserverRetryOnActiveException",
    "LeaseExpiredException",
    "RecoveryInProgressException",
];

fn map_err(path: &str, error: HdfsError) -> StorageError {
    let path = path.to_string();
    match error {
        HdfsError::FileNotFound(_) => StorageError::NotFound { path },
        HdfsError::AlreadyExists(_) => StorageError::AlreadyExists { path },
        // A socket to the NameNode or a DataNode could not be opened: the process
        // is out of descriptors, HDFS is fine.
        HdfsError::IOError(source) if super::is_out_of_descriptors(&source) => {
            StorageError::TooManyOpenFiles { path, source }
        }
        HdfsError::RPCError(class, message) | HdfsError::FatalRPCError(class, message) => {
            if class.ends_with("FileNotFoundException") {
                StorageError::NotFound { path }
            } else if class.ends_with("FileAlreadyExistsException") {
                StorageError::AlreadyExists { path }
            } else {
                let transient = TRANSIENT_EXCEPTIONS.iter().any(|t| class.ends_with(t))
                    || message.contains("NotReplicatedYet");
                let first_line = message.lines().next().unwrap_or_default();
                StorageError::Hdfs {
                    path,
                    message: format!("{class}: {first_line}"),
                    transient,
                }
            }
        }
        other => {
            let transient = matches!(
                other,
                HdfsError::IOError(_)
                    | HdfsError::DataTransferError(_)
                    | HdfsError::ChecksumError
                    | HdfsError::OperationFailed(_)
                    | HdfsError::BlocksNotFound(_)
                    | HdfsError::InternalError(_)
            );
            StorageError::Hdfs {
                path,
                message: other.to_string(),
                transient,
            }
        }
    }
}

impl HdfsStorage {
    /// Connects to the cluster named by `uri` (`hdfs://host:port/path`) and creates the
    /// root directory if it is missing.
    pub async fn connect(uri: &str) -> StorageResult<Self> {
        let invalid = |reason: &str| StorageError::InvalidRoot {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let scheme_end = uri.find("://").ok_or_else(|| invalid("missing scheme"))?;
        let after = &uri[scheme_end + 3..];
        let (authority, base) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        if authority.is_empty() {
            return Err(invalid("missing namenode host (hdfs://host:port/path)"));
        }
        let base = base.trim_end_matches('/').to_string();
        if base.split('/').any(|c| c == "." || c == "..") {
            return Err(invalid("`.` and `..` are not allowed in the root path"));
        }
        let url = format!("{}://{}", &uri[..scheme_end], authority);
        let client = ClientBuilder::new()
            .with_url(url)
            .build()
            .map_err(|e| invalid(&format!("cannot build hdfs client: {e}")))?;
        let storage = HdfsStorage {
            client,
            base,
            uri: uri.to_string(),
        };
        storage.mkdirs("").await?;
        Ok(storage)
    }

    fn full(&self, path: &str) -> StorageResult<String> {
        check_path(path)?;
        Ok(if path.is_empty() {
            if self.base.is_empty() {
                "/".to_string()
            } else {
                self.base.clone()
            }
        } else {
            format!("{}/{}", self.base, path)
        })
    }

    fn status(&self, rel: &str, status: &hdfs_native::client::FileStatus) -> FileStatus {
        FileStatus {
            path: rel.to_string(),
            name: name_of(rel).to_string(),
            is_dir: status.isdir,
            len: if status.isdir {
                0
            } else {
                status.length as u64
            },
            modified_ms: status.modification_time as i64,
        }
    }
}

#[async_trait]
impl Storage for HdfsStorage {
    fn root(&self) -> &str {
        &self.uri
    }

    async fn create(&self, path: &str, mode: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
        let full = self.full(path)?;
        let options = WriteOptions {
            overwrite: mode == CreateMode::Overwrite,
            create_parent: true,
            ..WriteOptions::default()
        };
        let writer = self
            .client
            .create(&full, options)
            .await
            .map_err(|e| map_err(path, e))?;
        Ok(Box::new(HdfsWriter {
            path: path.to_string(),
            inner: writer,
            position: 0,
        }))
    }

    async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>> {
        let full = self.full(path)?;
        let len = self.len(path).await?;
        let writer = self
            .client
            .append(&full)
            .await
            .map_err(|e| map_err(path, e))?;
        Ok(Box::new(HdfsWriter {
            path: path.to_string(),
            inner: writer,
            position: len,
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
        let full = self.full(path)?;
        let reader = self
            .client
            .read(&full)
            .await
            .map_err(|e| map_err(path, e))?;
        let readable = reader.file_length() as u64;
        let start = range.start.min(readable);
        let end = range.end.min(readable);
        if end <= start {
            return Ok(Bytes::new());
        }
        // Packet by packet, so that a caller sees the bytes move.
        let mut stream = Box::pin(reader.read_range_stream(start as usize, (end - start) as usize));
        let mut buf = bytes::BytesMut::with_capacity((end - start) as usize);
        while let Some(packet) = stream.next().await {
            let packet = packet.map_err(|e| map_err(path, e))?;
            progress.add(packet.len() as u64);
            buf.extend_from_slice(&packet);
        }
        Ok(buf.freeze())
    }

    async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
        let full = self.full(path)?;
        let status = self
            .client
            .get_file_info(&full)
            .await
            .map_err(|e| map_err(path, e))?;
        Ok(self.status(path, &status))
    }

    async fn list(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        let full = self.full(dir)?;
        let entries = self
            .client
            .list_status(&full, false)
            .await
            .map_err(|e| map_err(dir, e))?;
        let mut out: Vec<FileStatus> = entries
            .iter()
            .map(|status| {
                let name = status.path.rsplit('/').next().unwrap_or_default();
                let rel = if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                };
                self.status(&rel, status)
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> StorageResult<()> {
        let src = self.full(from)?;
        let dst = self.full(to)?;
        if let Some(i) = to.rfind('/') {
            self.mkdirs(&to[..i]).await?;
        }
        self.client
            .rename(&src, &dst, mode == RenameMode::Overwrite)
            .await
            .map_err(|e| match map_err(from, e) {
                StorageError::AlreadyExists { .. } => StorageError::AlreadyExists {
                    path: to.to_string(),
                },
                other => other,
            })
    }

    async fn mkdirs(&self, dir: &str) -> StorageResult<()> {
        let full = self.full(dir)?;
        self.client
            .mkdirs(&full, 0o755, true)
            .await
            .map_err(|e| map_err(dir, e))
    }

    async fn delete(&self, path: &str, recursive: bool) -> StorageResult<bool> {
        let full = self.full(path)?;
        match self.client.delete(&full, recursive).await {
            Ok(deleted) => Ok(deleted),
            Err(e) => match map_err(path, e) {
                StorageError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn recover_lease(&self, path: &str) -> StorageResult<bool> {
        let full = self.full(path)?;
        self.client
            .recover_lease(&full)
            .await
            .map_err(|e| map_err(path, e))
    }
}

/// An HDFS file being written.
struct HdfsWriter {
    /// Relative path, for errors.
    path: String,
    /// The client's writer.
    inner: hdfs_native::file::FileWriter,
    /// Bytes in the file so far.
    position: u64,
}

impl std::fmt::Debug for HdfsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HdfsWriter")
            .field("path", &self.path)
            .field("position", &self.position)
            .finish()
    }
}

#[async_trait]
impl FileWriter for HdfsWriter {
    async fn write(&mut self, buf: Bytes) -> StorageResult<()> {
        let len = buf.len() as u64;
        self.inner
            .write_bytes(buf)
            .await
            .map_err(|e| map_err(&self.path, e))?;
        self.position += len;
        Ok(())
    }

    async fn sync(&mut self) -> StorageResult<()> {
        self.inner.hsync().await.map_err(|e| map_err(&self.path, e))
    }

    async fn close(mut self: Box<Self>) -> StorageResult<()> {
        self.inner.close().await.map_err(|e| map_err(&self.path, e))
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn path(&self) -> &str {
        &self.path
    }
}
