//! Leases: files under `system/leases/` ([`crate::layout::Layout::lease_path`]).
//!
//! * [`LeaseRecord`]: the worker lease, `worker.json` (`docs/format.md` §8.1).
//! * [`GroupMember`], [`GroupClaim`] and [`GroupPartitions`]: PinTail
//!   consumer-group membership, partition claims and the group's partition
//!   count (`docs/format.md` §9.2).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Version, Versioned};

/// The lease record format version this build writes and reads.
pub const LEASE_VERSION: u32 = 1;

/// The record of a worker lease, `system/leases/<name>.json` (`docs/format.md`
/// §8.1), rewritten atomically by its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Format version ([`LEASE_VERSION`]).
    pub version: Version<LEASE_VERSION>,
    /// Lease name (`worker`).
    pub name: String,
    /// Who holds it (`<cluster>/<host>-<pid>-<random>`).
    pub holder: String,
    /// Increases with every takeover.
    pub epoch: u64,
    /// When this holder acquired it (holder's clock).
    pub acquired_at: DateTime<Utc>,
    /// Last renewal (holder's clock).
    pub renewed_at: DateTime<Utc>,
    /// Others may take over once their clock passes this plus the drift allowance.
    pub expires_at: DateTime<Utc>,
}

impl Versioned for LeaseRecord {
    const KIND: &'static str = "lease";
    const VERSION: u32 = LEASE_VERSION;
}

/// The consumer-group file format version this build writes and reads.
pub const GROUP_VERSION: u32 = 1;

/// A live member of a PinTail consumer group,
/// `system/leases/pintail.<group>.<topic>.member.<id>.json` (`docs/format.md` §9.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// Format version ([`GROUP_VERSION`]).
    pub version: Version<GROUP_VERSION>,
    /// The member id (also in the file name).
    pub member: String,
    /// Live until this wall-clock instant (unix milliseconds).
    pub expires_ms: i64,
    /// Which process runs this member id: larger for a process started later
    /// (static membership: a restart with the same id fences the old process).
    /// 0 (absent) in files of older builds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
    /// The partitions this member found (every member assigns the union).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
    /// Digest (16 hex digits) of the live members and partitions the member
    /// computed its assignment from: equal digests, equal assignments.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub assignment: String,
}

/// For `skip_serializing_if`: a count that is 0 is left out.
pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Versioned for GroupMember {
    const KIND: &'static str = "group member";
    const VERSION: u32 = GROUP_VERSION;
}

/// One epoch's claim of a partition,
/// `system/leases/pintail.<group>.<topic>.claim.<partition>.<epoch>.json`
/// (`docs/format.md` §9.2). The highest epoch is the partition's claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupClaim {
    /// Format version ([`GROUP_VERSION`]).
    pub version: Version<GROUP_VERSION>,
    /// The member holding it.
    pub member: String,
    /// Held until this wall-clock instant (unix milliseconds).
    pub expires_ms: i64,
    /// Given up by its member (the partition may be claimed at once).
    #[serde(default)]
    pub released: bool,
    /// The [`GroupMember::incarnation`] of the process holding it (0: absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

impl Versioned for GroupClaim {
    const KIND: &'static str = "group claim";
    const VERSION: u32 = GROUP_VERSION;
}

/// A consumer group's partition count for one kind of view,
/// `system/leases/pintail.<group>.<topic>.partitions.<local|sealed>.json`
/// (`docs/format.md` §9.2): written once (exclusive create) by the first member
/// that uses the group; a member started with another count is refused, since
/// checkpoints and claims are per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPartitions {
    /// Format version ([`GROUP_VERSION`]).
    pub version: Version<GROUP_VERSION>,
    /// `local` (sub-partitions of each collector's stream) or `sealed`
    /// (partitions of the merged and mirror views).
    pub view: String,
    /// The count: sub-partitions per collector stream (`local`), or partitions
    /// of the view (`sealed`).
    pub partitions: u32,
}

impl Versioned for GroupPartitions {
    const KIND: &'static str = "group partitions";
    const VERSION: u32 = GROUP_VERSION;
}
