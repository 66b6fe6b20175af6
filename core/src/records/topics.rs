//! Records of the system topics: one JSON object per record of a `lines` data file.
//!
//! * [`AuditRecord`]: `_audit`, written by publishers (`docs/format.md` §6).
//! * [`InvalidRecord`]: `_invalid`, written by collectors for entries they cannot
//!   store in their topic (`docs/format.md` §5.5).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{instant, Base64Bytes, Version, Versioned};
use crate::layout::{Minute, NodeName, Topic};

/// The `_audit` record format version this build writes and reads.
pub const AUDIT_VERSION: u32 = 1;

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
    /// Why it was refused (`invalid_topic`, `unknown_topic`, `message_too_large`,
    /// `newline_in_lines_payload`, `validation_failed`).
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
