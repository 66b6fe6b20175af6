//! Records of the system topics: one JSON object per record of a `lines` data file.
//!
//! * [`AuditRecord`]: `_audit`, written by publishers (`docs/format.md` §6).
//! * [`InvalidRecord`]: `_invalid`, written by collectors for entries they cannot
//!   store in their topic (`docs/format.md` §5.5).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{decode, instant, Base64Bytes, RecordError, Version, Versioned};
use crate::layout::{Minute, NodeName, Topic};

/// The `_audit` record format version this build writes and reads.
pub const AUDIT_VERSION: u32 = 1;

/// The largest `acked` of a valid `_audit` record: 10^12, far above what any
/// publisher acknowledges between two records (one per topic and minute every
/// `audit_interval`), far below where sums of records could overflow a `u64`.
pub const MAX_AUDIT_ACKED: u64 = 1_000_000_000_000;

/// Why an `_audit` payload is not counted ([`AuditRecord::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditRecordError {
    /// A record of another format version: readers skip it (`docs/format.md` §6).
    #[error("audit record of version {version} (this build reads {AUDIT_VERSION})")]
    OtherVersion {
        /// The version it claims.
        version: u32,
    },
    /// Not an audit record: not JSON, a field missing or of the wrong type, an
    /// invalid topic or minute, or `acked` out of range. Counted and reported,
    /// never summed.
    #[error("malformed audit record: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
}

/// One `_audit` record: how many events of a topic and enqueue minute one publisher
/// had acknowledged since its previous record for them (`docs/format.md` §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Format version ([`AUDIT_VERSION`]).
    pub version: Version<AUDIT_VERSION>,
    /// The publisher's id.
    pub publisher: String,
    /// The audited topic.
    pub topic: Topic,
    /// The enqueue minute (publisher clock) the count is for.
    pub minute: Minute,
    /// Events acknowledged since the previous record of this publisher for this
    /// topic and minute (a delta: readers sum them).
    pub acked: u64,
    /// When the record was made (publisher clock), with a numeric offset.
    #[serde(serialize_with = "instant::offset")]
    pub sent_at: DateTime<Utc>,
}

impl Versioned for AuditRecord {
    const KIND: &'static str = "audit record";
    const VERSION: u32 = AUDIT_VERSION;
}

impl AuditRecord {
    /// Parses and validates one `_audit` payload: the schema and version of
    /// `docs/format.md` §6 (a valid topic and minute, each field once), and
    /// `acked` at most [`MAX_AUDIT_ACKED`]. Anyone who can reach a collector can
    /// write `_audit`, so readers count only what passes.
    pub fn parse(payload: &[u8]) -> Result<AuditRecord, AuditRecordError> {
        let record: AuditRecord = decode("", payload).map_err(|e| match e {
            RecordError::UnsupportedVersion { version, .. } => {
                AuditRecordError::OtherVersion { version }
            }
            RecordError::Malformed { reason, .. } => AuditRecordError::Malformed { reason },
        })?;
        if record.acked > MAX_AUDIT_ACKED {
            return Err(AuditRecordError::Malformed {
                reason: format!(
                    "acked {} exceeds {MAX_AUDIT_ACKED}, more than any publisher acknowledges in a record",
                    record.acked
                ),
            });
        }
        Ok(record)
    }

    /// The record as one JSON line without the newline (the event payload).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an audit record serializes")
    }
}

/// One `_invalid` record: an entry the collector could not store in its topic
/// (`docs/format.md` §5.5).
///
/// The fields are declared in alphabetical order because that is the order the
/// collector has always written them in (it built the object as a JSON map), so
/// the bytes stay the same; readers must not depend on key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidRecord {
    /// When the collector received it (collector clock), with milliseconds.
    #[serde(serialize_with = "instant::millis")]
    pub arrived_at: DateTime<Utc>,
    /// The cluster of the collector that received it.
    pub cluster: NodeName,
    /// The collector that received it.
    pub collector: NodeName,
    /// Human-readable explanation.
    pub detail: String,
    /// The original message.
    pub payload_base64: Base64Bytes,
    /// Why it was refused (`invalid_topic`, `unknown_topic`, `reserved_topic`,
    /// `message_too_large`, `newline_in_lines_payload`, `validation_failed`).
    pub reason: String,
    /// The category as received (invalid UTF-8 replaced by U+FFFD).
    pub topic: String,
}

impl InvalidRecord {
    /// The record as one line of the `_invalid` topic, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("an invalid record serializes");
        line.push(b'\n');
        line
    }
}
