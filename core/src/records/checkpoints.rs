//! Checkpoints: small JSON state files under `system/checkpoints/<job>/<key>.json`
//! ([`crate::layout::Layout::checkpoint_path`]), each written atomically
//! (`Storage::write_atomic`).
//!
//! * [`JobCheckpoint`] with [`LocalCheckpoint`] (and its [`SealDedup`]): the
//!   worker's `local` job (`docs/format.md` §8.2).
//! * [`MergeCheckpoint`]: the worker's `merge` job (`docs/format.md` §8.3).
//! * [`ConsumerCheckpoint`]: a PinTail consumer group's position in one partition
//!   (`docs/format.md` §9.1).
//! * [`DedupSnapshot`]: the collector's table of durable idempotent batches
//!   (`docs/format.md` §5.6).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Base64Bytes, Version, Versioned};
use crate::layout::{Minute, NodeName};

/// The worker job checkpoint format version this build writes and reads.
pub const JOB_CHECKPOINT_VERSION: u32 = 1;

/// A worker job's checkpoint: an envelope around the job's own `state`
/// (`docs/format.md` §8.2). Only a hint: jobs rebuild their state from the views
/// when it is missing or unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCheckpoint<S> {
    /// Format version ([`JOB_CHECKPOINT_VERSION`]).
    pub version: Version<JOB_CHECKPOINT_VERSION>,
    /// The job (`local`), also the directory under `system/checkpoints/`.
    pub job: String,
    /// The key within the job (the topic), also the file name.
    pub key: String,
    /// When it was written (worker clock).
    pub saved_at: DateTime<Utc>,
    /// The job's state.
    pub state: S,
}

impl<S: DeserializeOwned> Versioned for JobCheckpoint<S> {
    const KIND: &'static str = "checkpoint";
    const VERSION: u32 = JOB_CHECKPOINT_VERSION;
}

/// The `state` of the `local` job's checkpoint of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalCheckpoint {
    /// The newest sealed local minute of the topic when it was written.
    pub last_sealed: Minute,
    /// What the cross-collector deduplication of the seal keeps between minutes;
    /// absent when unknown (the job then reads it from the sealed minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<SealDedup>,
}

/// The local seal's deduplication state after `last_sealed`
/// (`docs/format.md` §8.2): the publisher batch parts of the sealed minutes
/// `from ..= last_sealed` (a cache of what their files' marks say), and what the
/// seal of the next minute already dropped if it was interrupted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealDedup {
    /// The oldest sealed minute whose batch parts `sealed` holds.
    pub from: Minute,
    /// The batch parts of each sealed minute from `from` on that has any, oldest
    /// first.
    pub sealed: Vec<SealedBatches>,
    /// The seal of the minute after `last_sealed`, when it rewrote files and was
    /// then interrupted before writing its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing: Option<SealInProgress>,
}

/// The publisher batch parts the files of one sealed local minute hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBatches {
    /// The sealed minute (the directory's, not the files' own minutes).
    pub minute: Minute,
    /// Per publisher id (standard base64), its parts, in no particular order.
    pub publishers: Vec<(Base64Bytes, Vec<SealedPart>)>,
}

/// One batch part, as the JSON array `[sequence, part, "digest"]`, the digest as
/// 16 lowercase hex digits (`docs/format.md` §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SealedPart(
    /// The batch's sequence number.
    pub i64,
    /// The part's index in its batch.
    pub u16,
    /// The digest of the batch's whole call.
    pub Hex64,
);

/// A seal that rewrote files and was interrupted before its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealInProgress {
    /// The minute being sealed.
    pub minute: Minute,
    /// Records dropped per file name of that minute's directory.
    pub dropped: BTreeMap<String, u64>,
}

/// The merge checkpoint format version this build writes and reads.
pub const MERGE_CHECKPOINT_VERSION: u32 = 1;

/// The `merge` job's checkpoint of a topic, `system/checkpoints/merge/<topic>.json`
/// (`docs/format.md` §8.3): a cache of what the merged manifests say, used only
/// when it agrees with the newest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCheckpoint {
    /// Format version ([`MERGE_CHECKPOINT_VERSION`]).
    pub version: Version<MERGE_CHECKPOINT_VERSION>,
    /// When it was written (worker clock).
    pub saved_at: DateTime<Utc>,
    /// The oldest unsealed merged minute.
    pub frontier: Minute,
    /// Per source cluster: every local minute up to this one is placed in a sealed
    /// merged minute.
    pub placed_through: BTreeMap<String, Minute>,
}

impl Versioned for MergeCheckpoint {
    const KIND: &'static str = "merge checkpoint";
    const VERSION: u32 = MERGE_CHECKPOINT_VERSION;
}

/// The PinTail checkpoint format version this build writes and reads.
pub const CONSUMER_CHECKPOINT_VERSION: u32 = 1;

/// A consumer group's committed position in one partition,
/// `system/checkpoints/pintail/<group>.<topic>.<partition>.json`
/// (`docs/format.md` §9.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerCheckpoint {
    /// Format version ([`CONSUMER_CHECKPOINT_VERSION`]).
    pub version: Version<CONSUMER_CHECKPOINT_VERSION>,
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition (`dc1-c1` in the local view, `p3of16` in sealed views).
    pub partition: String,
    /// When it was committed (consumer clock).
    pub committed_at: DateTime<Utc>,
    /// The next record to deliver.
    pub position: ConsumerPosition,
}

impl Versioned for ConsumerCheckpoint {
    const KIND: &'static str = "checkpoint";
    const VERSION: u32 = CONSUMER_CHECKPOINT_VERSION;
}

/// A position as checkpoints store it: record `record` of the frame at byte
/// `offset` of a collector file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConsumerPosition {
    /// The partition.
    pub partition: Arc<str>,
    /// The minute directory the file is in (its own minute while in `data/`).
    pub minute: Minute,
    /// The cluster whose collector wrote the file.
    pub cluster: NodeName,
    /// The collector that wrote it.
    pub collector: NodeName,
    /// The collector file name (the same in every view).
    pub file: Arc<str>,
    /// Byte offset of a frame's first byte.
    pub offset: u64,
    /// Records of that frame already delivered.
    pub record: u32,
}

/// The dedup snapshot format version this build writes and reads.
pub const DEDUP_SNAPSHOT_VERSION: u32 = 1;

/// The collector's table of durable idempotent batches,
/// `system/checkpoints/collector/<cluster>.<collector>.dedup.json`
/// (`docs/format.md` §5.6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupSnapshot {
    /// Format version ([`DEDUP_SNAPSHOT_VERSION`]).
    pub version: Version<DEDUP_SNAPSHOT_VERSION>,
    /// Per publisher id: what is known about its recent batches.
    pub publishers: Vec<(Base64Bytes, DedupWindow)>,
    /// The ledger of closed files: the acknowledged length (bytes of the data
    /// the collector had synced, before its close index and trailer) of every
    /// file this collector closed that was still in `data/` (storage or spool)
    /// when the snapshot was written, by path. Recovery never cuts a file below
    /// it; a file shorter than it is quarantined. Absent when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub closed: BTreeMap<String, u64>,
    /// Files abandoned by their writer (a storage write or sync that failed or
    /// missed the deadline) and not yet repaired, by path: the acknowledged
    /// length each must be cut back to (late bytes past it may have landed).
    /// Absent when empty (and in snapshots of collectors that predate it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub abandoned: BTreeMap<String, u64>,
    /// Counts the snapshots this collector wrote (storage and spool copies
    /// alike): recovery takes `abandoned` from the copy with the highest. 0 (and
    /// absent) in snapshots of collectors that predate it.
    #[serde(default, skip_serializing_if = "super::leases::is_zero")]
    pub generation: u64,
}

impl Versioned for DedupSnapshot {
    const KIND: &'static str = "dedup snapshot";
    const VERSION: u32 = DEDUP_SNAPSHOT_VERSION;
}

/// What a collector knows about one publisher's batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupWindow {
    /// Highest batch sequence number seen durable. Kept for collectors that
    /// predate `batches` (they count sequences far below it as durable); this build
    /// does not use it.
    pub high: i64,
    /// Written by collectors that predate `batches`: recent sequence numbers,
    /// `None` when the whole batch is durable, the durable part indexes when only
    /// some are. This build reads them as batches of unknown digest and writes
    /// `{}`.
    pub recent: BTreeMap<i64, Option<Vec<u16>>>,
    /// When the publisher was last seen (unix seconds, collector clock).
    pub last_seen: i64,
    /// The batches remembered, oldest arrival first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<DedupBatch>,
}

/// One durable (or partly durable) batch in a [`DedupWindow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupBatch {
    /// The batch's sequence number.
    pub seq: i64,
    /// The call's content digest (`docs/format.md` §3.3); absent when unknown
    /// (learnt from version 1 marks or an older snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Hex64>,
    /// The indexes of its durable parts when only some are; absent when the whole
    /// batch is durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<u16>>,
}

/// A u64 written as 16 lowercase hex digits (JSON numbers lose precision above
/// 2^53 in many readers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hex64(pub u64);

impl Serialize for Hex64 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:016x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Hex64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.len() != 16 {
            return Err(serde::de::Error::custom(format!(
                "expected 16 hex digits, got {text:?}"
            )));
        }
        u64::from_str_radix(&text, 16)
            .map(Hex64)
            .map_err(|e| serde::de::Error::custom(format!("not hex: {text:?}: {e}")))
    }
}
