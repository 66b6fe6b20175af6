//! Positions and checkpoints.
//!
//! A [`Position`] names the next record to read in one partition as
//! `(cluster, collector, collector file name, frame offset, record index)` plus the
//! minute directory the file is in (or, while the collector still writes it, its own
//! minute). The same file name and byte offsets hold in the collector's `data/`
//! directory, after the worker moved it into `streams_local/` (same bytes), and in
//! the merged view `streams/` and its mirrors (byte-identical copies under the same
//! names), so a position survives the move and is portable between a merged view and
//! its mirror.
//!
//! Checkpoints are stored one per group, topic and partition at
//! `system/checkpoints/pintail/<group>.<topic>.<partition>.json` in the checkpoint
//! store (a cluster's storage or a local directory), written atomically
//! (`Storage::write_atomic`). Format: `docs/format.md` §9.1, type
//! [`ConsumerCheckpoint`].
//!
//! `offset` is the byte offset of a frame's first byte and `record` the number of
//! records of that frame already delivered, so a resumed reader delivers exactly the
//! records after the committed one. Another `version` is refused
//! ([`PintailError::UnsupportedCheckpointVersion`]) and an unparsable file is
//! [`PintailError::MalformedCheckpoint`]: never a silent restart from the beginning.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use conduit_core::layout::Layout;
use conduit_core::records::{
    decode, ConsumerCheckpoint, ConsumerPosition, RecordError, Version, CONSUMER_CHECKPOINT_VERSION,
};
use conduit_core::{Minute, NodeName, SharedStorage};
use serde::{Deserialize, Serialize};

use crate::error::{PintailError, Result};

/// The checkpoint format version this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = CONSUMER_CHECKPOINT_VERSION;

/// The checkpoint job name under `system/checkpoints/`.
pub const CHECKPOINT_JOB: &str = "pintail";

/// Where a partition's reader is: the next record to deliver. Opaque to most users;
/// hand it back to [`crate::Consumer::commit`].
///
/// The file part (partition, minute directory, cluster, collector, file name) is
/// shared by every position in one file, so cloning a position is one reference
/// count and two integers (every message carries one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "ConsumerPosition", into = "ConsumerPosition")]
pub struct Position {
    at: Arc<FileAt>,
    offset: u64,
    record: u32,
}

/// The file a [`Position`] is in.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileAt {
    pub partition: Arc<str>,
    pub minute: Minute,
    pub cluster: NodeName,
    pub collector: NodeName,
    pub file: Arc<str>,
}

impl From<ConsumerPosition> for Position {
    fn from(r: ConsumerPosition) -> Position {
        Position::new(
            r.partition,
            r.minute,
            r.cluster,
            r.collector,
            r.file,
            r.offset,
            r.record,
        )
    }
}

impl From<Position> for ConsumerPosition {
    fn from(p: Position) -> ConsumerPosition {
        ConsumerPosition {
            partition: p.at.partition.clone(),
            minute: p.at.minute,
            cluster: p.at.cluster.clone(),
            collector: p.at.collector.clone(),
            file: p.at.file.clone(),
            offset: p.offset,
            record: p.record,
        }
    }
}

impl Position {
    /// A position: record `record` of the frame at byte `offset` of collector file
    /// `file` (by `cluster`'s `collector`), in minute directory `minute`, partition
    /// `partition`.
    pub fn new(
        partition: impl Into<Arc<str>>,
        minute: Minute,
        cluster: NodeName,
        collector: NodeName,
        file: impl Into<Arc<str>>,
        offset: u64,
        record: u32,
    ) -> Position {
        let at = FileAt {
            partition: partition.into(),
            minute,
            cluster,
            collector,
            file: file.into(),
        };
        Position::in_file(Arc::new(at), offset, record)
    }

    pub(crate) fn in_file(at: Arc<FileAt>, offset: u64, record: u32) -> Position {
        Position { at, offset, record }
    }

    /// The partition (`<cluster>-<collector>` in the local view, `p<k>of<n>` in sealed views).
    pub fn partition(&self) -> &str {
        &self.at.partition
    }

    /// The minute directory holding the file (its own minute while still in `data/`).
    pub fn minute(&self) -> Minute {
        self.at.minute
    }

    /// The cluster whose collector wrote the file.
    pub fn cluster(&self) -> &NodeName {
        &self.at.cluster
    }

    /// The collector that wrote the file.
    pub fn collector(&self) -> &NodeName {
        &self.at.collector
    }

    /// The collector file name (`<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst`).
    pub fn file(&self) -> &str {
        &self.at.file
    }

    /// Byte offset of the frame holding the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Records of that frame already delivered.
    pub fn record(&self) -> u32 {
        self.record
    }

    /// `*self = from.clone()`, touching the shared part only when it differs.
    pub(crate) fn assign(&mut self, from: &Position) {
        if !Arc::ptr_eq(&self.at, &from.at) {
            self.at = from.at.clone();
        }
        self.offset = from.offset;
        self.record = from.record;
    }

    /// The file's key within its collector's stream: (file minute, sequence).
    pub fn file_key(&self) -> Option<(Minute, u32)> {
        Layout::parse_collector_file_name(&self.at.file)
            .ok()
            .map(|f| (f.minute, f.seq))
    }

    /// The name of the file in local and merged minute directories.
    pub fn local_name(&self) -> String {
        format!("{}-{}-{}", self.at.cluster, self.at.collector, self.at.file)
    }

    /// Orders two positions of the same partition the way readers go: directory
    /// minute, then file name in the directory (`<cluster>-<collector>-...`), then
    /// offset and record.
    pub fn cmp_in_partition(&self, other: &Position) -> Ordering {
        (self.at.minute, self.local_name(), self.offset, self.record).cmp(&(
            other.at.minute,
            other.local_name(),
            other.offset,
            other.record,
        ))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}/{}+{}#{}",
            self.at.partition,
            self.at.minute,
            self.local_name(),
            self.offset,
            self.record
        )
    }
}

/// Reads and writes checkpoints in a storage (a cluster root or a local directory).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    storage: SharedStorage,
}

impl CheckpointStore {
    /// Checkpoints in `storage`, under `system/checkpoints/pintail/`.
    pub fn new(storage: SharedStorage) -> Self {
        CheckpointStore { storage }
    }

    /// The storage holding the checkpoints (also holds group leases).
    pub fn storage(&self) -> &SharedStorage {
        &self.storage
    }

    /// `system/checkpoints/pintail/<group>.<topic>.<partition>.json`.
    pub fn path(group: &str, topic: &str, partition: &str) -> Result<String> {
        Ok(Layout::checkpoint_path(
            CHECKPOINT_JOB,
            &format!("{group}.{topic}.{partition}"),
        )?)
    }

    /// The committed position of a partition, `None` if the group never committed one.
    pub async fn load(
        &self,
        group: &str,
        topic: &str,
        partition: &str,
    ) -> Result<Option<Position>> {
        let path = Self::path(group, topic, partition)?;
        let bytes = match self.storage.read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let position = Position::from(parse_checkpoint(&path, &bytes)?.position);
        if position.partition() != partition {
            return Err(PintailError::MalformedCheckpoint {
                path,
                reason: format!(
                    "it holds partition {:?}, expected {partition:?}",
                    position.partition()
                ),
            });
        }
        Ok(Some(position))
    }

    /// Writes a partition's checkpoint atomically.
    pub async fn save(
        &self,
        group: &str,
        topic: &str,
        position: &Position,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let path = Self::path(group, topic, position.partition())?;
        let checkpoint = ConsumerCheckpoint {
            version: Version,
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition: position.partition().to_string(),
            committed_at: now,
            position: position.clone().into(),
        };
        let body = serde_json::to_vec(&checkpoint).expect("checkpoint serializes");
        self.storage.write_atomic(&path, Bytes::from(body)).await?;
        Ok(())
    }

    /// The directory holding every consumer checkpoint of the store.
    pub fn dir() -> String {
        format!("{}/checkpoints/{CHECKPOINT_JOB}", Layout::SYSTEM_DIR)
    }

    /// Every checkpoint in the store, parsed: each `Ok`, or the error of a
    /// checkpoint that does not read or parse, in name order.
    pub async fn all(&self) -> Result<Vec<Result<ConsumerCheckpoint>>> {
        let mut entries = self.storage.list_or_empty(&Self::dir()).await?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::new();
        for entry in entries {
            if entry.is_dir || Layout::is_hidden(&entry.name) || !entry.name.ends_with(".json") {
                continue;
            }
            out.push(match self.storage.read(&entry.path).await {
                Ok(bytes) => parse_checkpoint(&entry.path, &bytes),
                Err(e) => Err(e.into()),
            });
        }
        Ok(out)
    }

    /// Every partition with a checkpoint of `group` and `topic`.
    pub async fn partitions(&self, group: &str, topic: &str) -> Result<Vec<String>> {
        let dir = Self::dir();
        let prefix = format!("{group}.{topic}.");
        let mut out = Vec::new();
        for entry in self.storage.list_or_empty(&dir).await? {
            if Layout::is_hidden(&entry.name) {
                continue;
            }
            if let Some(rest) = entry.name.strip_prefix(&prefix) {
                if let Some(partition) = rest.strip_suffix(".json") {
                    if !partition.contains('.') {
                        out.push(partition.to_owned());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Parses a checkpoint document, refusing other versions and malformed content.
pub fn parse_checkpoint(path: &str, bytes: &[u8]) -> Result<ConsumerCheckpoint> {
    let checkpoint: ConsumerCheckpoint = decode(path, bytes).map_err(|e| match e {
        RecordError::Malformed { path, reason, .. } => {
            PintailError::MalformedCheckpoint { path, reason }
        }
        RecordError::UnsupportedVersion {
            path,
            version,
            supported,
            ..
        } => PintailError::UnsupportedCheckpointVersion {
            path,
            version,
            supported,
        },
    })?;
    if Layout::parse_collector_file_name(&checkpoint.position.file).is_err() {
        return Err(PintailError::MalformedCheckpoint {
            path: path.to_owned(),
            reason: format!(
                "{:?} is not a collector file name",
                checkpoint.position.file
            ),
        });
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use conduit_core::storage::LocalStorage;

    use super::*;

    fn position() -> Position {
        Position::new(
            "dc1-c1",
            Minute::parse_flexible("2026-11-22T10:05").unwrap(),
            NodeName::new("dc1").unwrap(),
            NodeName::new("c1").unwrap(),
            "clicks-2026-11-22-10-05_00000.zst",
            4096,
            3,
        )
    }

    #[tokio::test]
    async fn checkpoints_round_trip_and_bad_ones_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let storage: SharedStorage = Arc::new(LocalStorage::open(dir.path()).unwrap());
        let store = CheckpointStore::new(storage.clone());
        assert_eq!(store.load("g", "clicks", "dc1-c1").await.unwrap(), None);
        store
            .save("g", "clicks", &position(), Utc::now())
            .await
            .unwrap();
        assert_eq!(
            store.load("g", "clicks", "dc1-c1").await.unwrap(),
            Some(position())
        );
        assert_eq!(
            store.partitions("g", "clicks").await.unwrap(),
            vec!["dc1-c1"]
        );
        let path = CheckpointStore::path("g", "clicks", "dc1-c1").unwrap();
        assert_eq!(path, "system/checkpoints/pintail/g.clicks.dc1-c1.json");

        let text = String::from_utf8(storage.read(&path).await.unwrap().to_vec()).unwrap();
        let future = text.replace("\"version\":1", "\"version\":2");
        storage.write_atomic(&path, future.into()).await.unwrap();
        let err = store.load("g", "clicks", "dc1-c1").await.unwrap_err();
        assert!(
            matches!(
                err,
                PintailError::UnsupportedCheckpointVersion { version: 2, .. }
            ),
            "{err}"
        );
        storage
            .write_atomic(&path, Bytes::from_static(b"{\"version\":1,"))
            .await
            .unwrap();
        let err = store.load("g", "clicks", "dc1-c1").await.unwrap_err();
        assert!(
            matches!(err, PintailError::MalformedCheckpoint { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("g.clicks.dc1-c1.json"), "{err}");
    }

    #[test]
    fn positions_order_within_a_partition() {
        let a = position();
        let at = |file: &str, offset, record| {
            let (cluster, collector) = (a.cluster().clone(), a.collector().clone());
            Position::new(
                "dc1-c1",
                a.minute(),
                cluster,
                collector,
                file,
                offset,
                record,
            )
        };
        let b = at(a.file(), 4096, 4);
        let c = at("clicks-2026-11-22-10-05_00001.zst", 0, 3);
        assert_eq!(a.cmp_in_partition(&b), Ordering::Less);
        assert_eq!(b.cmp_in_partition(&c), Ordering::Less);
        assert_eq!(a.local_name(), "dc1-c1-clicks-2026-11-22-10-05_00000.zst");
    }
}
