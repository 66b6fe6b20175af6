//! The JSON documents conduit stores: the `_SUCCESS` manifest
//! ([`check_manifest`]) and the records of `core::records` and the heartbeat
//! ([`check_record`]).
//!
//! For every type: parsing never panics, and what parses serializes to bytes that
//! parse back to the same value and serialize to the same bytes again (a reader
//! that rewrites a document it read keeps it). Types that store an instant at a
//! fixed precision (`_invalid`'s `arrived_at`: milliseconds) are compared after one
//! round trip, when the value is at that precision.

use std::fmt::Debug;

use conduit_core::heartbeat::Heartbeat;
use conduit_core::manifest::Manifest;
use conduit_core::records::{
    decode, AuditRecord, ConsumerCheckpoint, DedupSnapshot, GroupClaim, GroupMember, InvalidRecord,
    JobCheckpoint, LeaseRecord, LocalCheckpoint, MergeCheckpoint, Versioned, MAX_AUDIT_ACKED,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The record types [`check_record`] selects from with the input's first byte, in
/// selector order (the seed generator names its files after them).
pub const RECORD_KINDS: [&str; 10] = [
    "heartbeat",
    "audit",
    "invalid",
    "job_checkpoint",
    "merge_checkpoint",
    "consumer_checkpoint",
    "dedup_snapshot",
    "lease",
    "group_member",
    "group_claim",
];

/// Checks a `_SUCCESS` marker's bytes (the `manifest` target).
pub fn check_manifest(data: &[u8]) {
    let Ok(manifest) = Manifest::parse("m/_SUCCESS", data) else {
        return;
    };
    let bytes = manifest.to_bytes();
    let again = Manifest::parse("m/_SUCCESS", &bytes)
        .unwrap_or_else(|e| panic!("a manifest does not parse what it wrote: {e}"));
    assert_eq!(again, manifest, "manifest round trip");
    assert_eq!(again.to_bytes(), bytes, "manifest bytes are stable");
    // Where it lives is a function of what it says.
    let _ = manifest.path();
}

/// A versioned document: parsed with `records::decode`, like every reader does.
fn versioned<T>(data: &[u8])
where
    T: Versioned + Serialize + PartialEq + Debug,
{
    let Ok(value) = decode::<T>("r.json", data) else {
        return;
    };
    let bytes = serde_json::to_vec(&value).expect("a parsed document serializes");
    let again: T = decode("r.json", &bytes)
        .unwrap_or_else(|e| panic!("{} does not parse what it wrote: {e}", T::KIND));
    assert_eq!(again, value, "{} round trip", T::KIND);
    let bytes_again = serde_json::to_vec(&again).expect("serializes");
    assert_eq!(bytes_again, bytes, "{} bytes are stable", T::KIND);
}

/// An `_audit` payload, as `audit` reads it: what `AuditRecord::parse` accepts
/// is a record of this version with `acked` in range, and it reads back from
/// the JSON it is written as.
fn audit(json: &[u8]) {
    versioned::<AuditRecord>(json);
    let Ok(record) = AuditRecord::parse(json) else {
        return;
    };
    assert!(
        record.acked <= MAX_AUDIT_ACKED,
        "parse lets acked {} through",
        record.acked
    );
    let decoded: AuditRecord = decode("r.json", json).expect("what parse accepts decodes");
    assert_eq!(decoded, record);
    let back = AuditRecord::parse(&record.to_json())
        .unwrap_or_else(|e| panic!("an audit record does not parse what it wrote: {e}"));
    assert_eq!(back, record, "audit record round trip");
}

/// A document stored at a fixed precision: stable after one round trip.
fn plain_lossy<T>(data: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&value).expect("a parsed document serializes");
    let once: T = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("a document does not parse what it wrote: {e}"));
    let bytes_once = serde_json::to_vec(&once).expect("serializes");
    let twice: T = serde_json::from_slice(&bytes_once).expect("parses its own bytes");
    assert_eq!(twice, once, "round trip at the stored precision");
    assert_eq!(serde_json::to_vec(&twice).expect("serializes"), bytes_once);
}

/// Checks one JSON record; the first byte selects the type ([`RECORD_KINDS`]).
pub fn check_record(data: &[u8]) {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    match usize::from(selector) % RECORD_KINDS.len() {
        0 => versioned::<Heartbeat>(json),
        1 => audit(json),
        2 => plain_lossy::<InvalidRecord>(json),
        3 => versioned::<JobCheckpoint<LocalCheckpoint>>(json),
        4 => versioned::<MergeCheckpoint>(json),
        5 => versioned::<ConsumerCheckpoint>(json),
        6 => versioned::<DedupSnapshot>(json),
        7 => versioned::<LeaseRecord>(json),
        8 => versioned::<GroupMember>(json),
        _ => versioned::<GroupClaim>(json),
    }
}
