//! The JSON documents conduit stores, one serde type each, shared by every writer
//! and every reader of the document.
//!
//! `docs/format.md` specifies each document in its own section; the type's docs name
//! that section, and the tests of this module check the section's example against
//! the type and parse a sample of every document as the previous code wrote it.
//! Heartbeats and `_SUCCESS` manifests have modules of their own
//! ([`crate::heartbeat`], [`crate::manifest`]) and follow the same rules.
//!
//! # Layout
//! - [`topics`]: records of the system topics, [`AuditRecord`] (`_audit`, written by
//!   publishers) and [`InvalidRecord`] (`_invalid`, written by collectors).
//! - [`checkpoints`]: [`JobCheckpoint`] (worker jobs) with [`LocalCheckpoint`],
//!   [`MergeCheckpoint`], [`ConsumerCheckpoint`] (PinTail) and the collector's
//!   [`DedupSnapshot`].
//! - [`leases`]: [`LeaseRecord`] (the worker lease), [`GroupMember`],
//!   [`GroupClaim`] and [`GroupPartitions`] (PinTail consumer groups).
//!
//! # Versions
//!
//! Every state document has a `version` field. Its type is [`Version<N>`]: it
//! writes `N` and reads only `N`, so a document of another version cannot be
//! represented. [`decode`] reads the version first, so another version is reported
//! as [`RecordError::UnsupportedVersion`] rather than as malformed. Unknown fields
//! are ignored everywhere, so a newer writer can add fields without a new version;
//! a change that older readers would misread needs a new version.

pub mod checkpoints;
pub mod leases;
pub mod topics;

#[cfg(test)]
mod tests;

use std::fmt;

use base64::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use checkpoints::{
    ConsumerCheckpoint, ConsumerPosition, DedupBatch, DedupSnapshot, DedupWindow, Hex64,
    JobCheckpoint, LocalCheckpoint, MergeCheckpoint, SealDedup, SealInProgress, SealedBatches,
    SealedPart, CONSUMER_CHECKPOINT_VERSION, DEDUP_SNAPSHOT_VERSION, JOB_CHECKPOINT_VERSION,
    MERGE_CHECKPOINT_VERSION,
};
pub use leases::{
    GroupClaim, GroupMember, GroupPartitions, LeaseRecord, GROUP_VERSION, LEASE_VERSION,
};
pub use topics::{AuditRecord, AuditRecordError, InvalidRecord, AUDIT_VERSION, MAX_AUDIT_ACKED};

/// A document that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, or not this document's shape.
    #[error("malformed {kind} {path}: {reason}")]
    Malformed {
        /// What the document is (`lease`, `checkpoint`, ...).
        kind: &'static str,
        /// Where it was read from.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// Written in a format version this build does not read.
    #[error("{kind} {path} has unsupported version {version} (this build reads {supported})")]
    UnsupportedVersion {
        /// What the document is.
        kind: &'static str,
        /// Where it was read from.
        path: String,
        /// The version found.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },
}

/// A JSON document with a `version` field of type [`Version`].
pub trait Versioned: DeserializeOwned {
    /// What the document is, in errors (`"lease"`).
    const KIND: &'static str;
    /// The format version this build writes and reads.
    const VERSION: u32;
}

/// Parses a versioned document; `path` only names it in errors.
pub fn decode<T: Versioned>(path: &str, bytes: &[u8]) -> Result<T, RecordError> {
    #[derive(Deserialize)]
    struct Probe {
        version: u32,
    }
    let malformed = |e: serde_json::Error| RecordError::Malformed {
        kind: T::KIND,
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
    if probe.version != T::VERSION {
        return Err(RecordError::UnsupportedVersion {
            kind: T::KIND,
            path: path.to_owned(),
            version: probe.version,
            supported: T::VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(malformed)
}

/// The `version` field of a document format: serializes as `N` and deserializes
/// only from `N`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Version<const N: u32>;

impl<const N: u32> Version<N> {
    /// The version number.
    pub const NUMBER: u32 = N;
}

impl<const N: u32> fmt::Debug for Version<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({N})")
    }
}

impl<const N: u32> Serialize for Version<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(N)
    }
}

impl<'de, const N: u32> Deserialize<'de> for Version<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let found = u32::deserialize(deserializer)?;
        if found == N {
            Ok(Version)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported version {found} (this build reads {N})"
            )))
        }
    }
}

/// Bytes stored as a JSON string in standard base64 with padding (RFC 4648).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Base64Bytes(pub Bytes);

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({:?})", self.0)
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(|bytes| Base64Bytes(Bytes::from(bytes)))
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// RFC 3339 spellings of instants that differ from chrono's serde default
/// (`2026-11-22T10:05:01.250Z`, fraction only as long as needed).
pub(crate) mod instant {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    /// `2026-11-22T10:07:00.123456789+00:00`: `DateTime::to_rfc3339` (numeric offset,
    /// fraction only as long as needed).
    pub fn offset<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&at.to_rfc3339())
    }

    /// `2026-11-22T10:05:01.250Z`: always milliseconds, `Z`.
    pub fn millis<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}
