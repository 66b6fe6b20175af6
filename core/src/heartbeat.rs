//! Collector heartbeats: how a worker learns which minutes a collector has finished.
//!
//! Each collector rewrites `system/heartbeats/<cluster>/<collector>.json` atomically
//! every `collector.heartbeat_ms` (and at once after every minute roll and at
//! shutdown). The format, and the watermark invariant a worker seals minutes by,
//! are specified in `docs/format.md` §5.2; [`Heartbeat`] is its one type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::layout::{Layout, Minute, NodeName};
use crate::records::{decode, RecordError, Version, Versioned};
use crate::storage::{Storage, StorageError};

/// The heartbeat format version this build writes and reads.
pub const HEARTBEAT_VERSION: u32 = 1;

/// Whether a collector is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectorState {
    /// Accepting and writing.
    Running,
    /// Shut down cleanly; every file it wrote is closed.
    Stopped,
}

/// One collector's published liveness and progress (`docs/format.md` §5.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Format version ([`HEARTBEAT_VERSION`]).
    pub version: Version<HEARTBEAT_VERSION>,
    /// Cluster the collector writes to.
    pub cluster: NodeName,
    /// Collector id.
    pub collector: NodeName,
    /// Running or stopped.
    pub state: CollectorState,
    /// Scribe/Thrift address.
    pub thrift_addr: String,
    /// HTTP address (`/metrics`, `/health`, open-file reads).
    pub http_addr: String,
    /// When this collector process started.
    pub started_at: DateTime<Utc>,
    /// When this heartbeat was written (collector clock).
    pub updated_at: DateTime<Utc>,
    /// Last minute whose files are all closed in storage.
    pub watermark: Option<Minute>,
    /// Bytes waiting in the local spool for storage to come back.
    pub spooled_bytes: u64,
}

impl Versioned for Heartbeat {
    const KIND: &'static str = "heartbeat";
    const VERSION: u32 = HEARTBEAT_VERSION;
}

impl Heartbeat {
    /// Path of this heartbeat, relative to the cluster root.
    pub fn path(&self) -> String {
        Layout::heartbeat_path(&self.cluster, &self.collector)
    }

    /// Writes the heartbeat atomically.
    pub async fn publish(&self, storage: &dyn Storage) -> Result<(), StorageError> {
        let body = serde_json::to_vec(self).map_err(|e| StorageError::Io {
            path: self.path(),
            source: std::io::Error::other(e),
        })?;
        storage.write_atomic(&self.path(), body.into()).await
    }

    /// Reads every heartbeat of a cluster. Unreadable or malformed files are
    /// reported in the second list as `(path, reason)` rather than failing the call.
    pub async fn read_all(
        storage: &dyn Storage,
        cluster: &NodeName,
    ) -> Result<(Vec<Heartbeat>, Vec<(String, String)>), StorageError> {
        let dir = format!("system/heartbeats/{cluster}");
        let mut beats = Vec::new();
        let mut bad = Vec::new();
        for entry in storage.list_or_empty(&dir).await? {
            if entry.is_dir || !entry.name.ends_with(".json") || Layout::is_hidden(&entry.name) {
                continue;
            }
            match storage.read(&entry.path).await {
                Ok(bytes) => match decode::<Heartbeat>(&entry.path, &bytes) {
                    Ok(beat) => beats.push(beat),
                    Err(RecordError::UnsupportedVersion { version, .. }) => bad.push((
                        entry.path,
                        format!("unsupported heartbeat version {version}"),
                    )),
                    Err(RecordError::Malformed { reason, .. }) => {
                        bad.push((entry.path, format!("malformed heartbeat: {reason}")))
                    }
                },
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok((beats, bad))
    }
}
