//! Consumer-group membership: which partitions a member reads.
//!
//! * **Solo**: one consumer reads every partition.
//! * **Static `k/N`**: member `k` of `N` reads the partitions whose name hashes to
//!   `k` modulo `N` (Conduit's scheme; changing `N` needs every member restarted).
//! * **Dynamic**: members register in the checkpoint store and share partitions by
//!   rendezvous hashing over the live members, so a join or a leave moves only the
//!   partitions that must move.
//!
//! # Dynamic protocol (files in the checkpoint store, wall-clock milliseconds)
//! The files are specified in `docs/format.md` §9.2 ([`GroupMember`],
//! [`GroupClaim`]).
//! * Member file `system/leases/pintail.<group>.<topic>.member.<id>.json`, rewritten
//!   every heartbeat; live while `expires_ms` is in the future. A member that leaves
//!   deletes it; one that dies is gone once it expires (the lease).
//! * Claim files `system/leases/pintail.<group>.<topic>.claim.<partition>.<epoch>.json`.
//!   The highest epoch is the partition's claim. A new owner creates the next epoch
//!   with an **exclusive create**, so of two racing members exactly one wins. It
//!   may do so only when the current claim is released, expired, or held by a member
//!   that is no longer live; a live owner that no longer should own a partition
//!   commits, stops reading it, then marks its claim released.
//! * Fencing: before every commit the owner re-reads the claim; if a higher epoch
//!   exists it has lost the partition, stops reading it and does not commit
//!   ([`crate::PintailError::NotOwner`]).
//!
//! Invariant: a partition is read by at most one member at a time, except while a
//! member that missed its heartbeats for longer than the lease (a paused process)
//! has not yet noticed; its commits are refused, so what it read is redelivered
//! (at-least-once). Leases use the system clock, not the consumer's test clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use conduit_core::layout::Layout;
use conduit_core::records::{GroupClaim, GroupMember, Version};
use conduit_core::{CreateMode, SharedStorage};
use serde::Deserialize;

use crate::error::Result;

/// How members share partitions (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// This consumer reads every partition.
    Solo,
    /// Member `k` of `n` (0-based), fixed.
    Static {
        /// This member's index.
        k: u32,
        /// Number of members.
        n: u32,
    },
    /// Dynamic membership with leases in the checkpoint store.
    Dynamic {
        /// This member's id (`[A-Za-z0-9_-]`, unique in the group).
        member: String,
        /// How long a member or claim lives without renewal.
        lease: Duration,
    },
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The dynamic-membership operations of one member.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub store: SharedStorage,
    pub group: String,
    pub topic: String,
    pub member: String,
    pub lease: Duration,
}

impl Group {
    fn prefix(&self) -> String {
        format!("pintail.{}.{}.", self.group, self.topic)
    }

    fn member_path(&self, member: &str) -> Result<String> {
        Ok(Layout::lease_path(&format!(
            "{}member.{member}",
            self.prefix()
        ))?)
    }

    fn claim_path(&self, partition: &str, epoch: u64) -> Result<String> {
        Ok(Layout::lease_path(&format!(
            "{}claim.{partition}.{epoch:010}",
            self.prefix()
        ))?)
    }

    fn expiry(&self) -> i64 {
        now_ms() + self.lease.as_millis() as i64
    }

    /// Registers or renews this member.
    pub async fn heartbeat(&self) -> Result<()> {
        let body = GroupMember {
            version: Version,
            member: self.member.clone(),
            expires_ms: self.expiry(),
        };
        let body = Bytes::from(serde_json::to_vec(&body).expect("serializes"));
        self.store
            .write_atomic(&self.member_path(&self.member)?, body)
            .await?;
        Ok(())
    }

    /// Deletes this member's file (a clean leave).
    pub async fn leave(&self) -> Result<()> {
        self.store
            .delete(&self.member_path(&self.member)?, false)
            .await?;
        Ok(())
    }

    /// Live members (always including this one) and every partition's current claim
    /// `(epoch, claim)`, from one listing.
    pub async fn read_state(
        &self,
    ) -> Result<(BTreeSet<String>, BTreeMap<String, (u64, GroupClaim)>)> {
        let dir = format!("{}/leases", Layout::SYSTEM_DIR);
        let prefix = self.prefix();
        let now = now_ms();
        let mut members = BTreeSet::new();
        members.insert(self.member.clone());
        let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for entry in self.store.list_or_empty(&dir).await? {
            let Some(rest) = entry
                .name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".json"))
            else {
                continue;
            };
            if let Some(member) = rest.strip_prefix("member.") {
                if member == self.member {
                    continue;
                }
                if let Some(file) = read_json::<GroupMember>(&self.store, &entry.path).await? {
                    if file.expires_ms > now {
                        members.insert(member.to_owned());
                    }
                }
            } else if let Some(claim) = rest.strip_prefix("claim.") {
                let Some((partition, epoch)) = claim.rsplit_once('.') else {
                    continue;
                };
                let Ok(epoch) = epoch.parse::<u64>() else {
                    continue;
                };
                let slot = newest
                    .entry(partition.to_owned())
                    .or_insert((epoch, entry.path.clone()));
                if epoch >= slot.0 {
                    *slot = (epoch, entry.path.clone());
                }
            }
        }
        let mut claims = BTreeMap::new();
        for (partition, (epoch, path)) in newest {
            if let Some(claim) = read_json::<GroupClaim>(&self.store, &path).await? {
                claims.insert(partition, (epoch, claim));
            }
        }
        Ok((members, claims))
    }

    /// Takes `partition` with `epoch` (one more than the current claim's). False if
    /// another member created that epoch first.
    pub async fn acquire(&self, partition: &str, epoch: u64) -> Result<bool> {
        let path = self.claim_path(partition, epoch)?;
        let claim = GroupClaim {
            version: Version,
            member: self.member.clone(),
            expires_ms: self.expiry(),
            released: false,
        };
        match self.store.create(&path, CreateMode::Exclusive).await {
            Ok(mut w) => {
                w.write(Bytes::from(serde_json::to_vec(&claim).expect("serializes")))
                    .await?;
                w.close().await?;
                if epoch >= 3 {
                    // Older epochs are history; keep the previous one for debugging.
                    for old in epoch.saturating_sub(5)..epoch - 1 {
                        let _ = self
                            .store
                            .delete(&self.claim_path(partition, old)?, false)
                            .await;
                    }
                }
                Ok(true)
            }
            Err(e) if e.is_already_exists() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Renews (or, with `released`, gives up) this member's claim of `epoch`.
    pub async fn renew(&self, partition: &str, epoch: u64, released: bool) -> Result<()> {
        let claim = GroupClaim {
            version: Version,
            member: self.member.clone(),
            expires_ms: if released { 0 } else { self.expiry() },
            released,
        };
        self.store
            .write_atomic(
                &self.claim_path(partition, epoch)?,
                Bytes::from(serde_json::to_vec(&claim).expect("serializes")),
            )
            .await?;
        Ok(())
    }

    /// Whether `epoch` is still the newest claim of `partition` (fencing check).
    pub async fn still_owner(&self, partition: &str, epoch: u64) -> Result<bool> {
        let next = self.claim_path(partition, epoch + 1)?;
        Ok(!self.store.exists(&next).await?)
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    store: &SharedStorage,
    path: &str,
) -> Result<Option<T>> {
    match store.read(path).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Rendezvous (highest random weight) owner of `partition` among `members`.
pub(crate) fn rendezvous<'a>(
    partition: &str,
    members: impl IntoIterator<Item = &'a String>,
) -> Option<&'a String> {
    members
        .into_iter()
        .max_by_key(|m| (fnv(&format!("{partition}\u{0}{m}")), (*m).clone()))
}

/// Whether static member `k` of `n` reads `partition`.
pub(crate) fn static_owner(partition: &str, k: u32, n: u32) -> bool {
    (fnv(partition) % u64::from(n.max(1))) as u32 == k
}

fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalize (splitmix64) so similar names spread well.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_what_must_move() {
        let parts: Vec<String> = (0..64).map(|i| format!("p{i}of64")).collect();
        let three: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let two: Vec<String> = vec!["a".into(), "b".into()];
        let mut moved = 0;
        for p in &parts {
            let before = rendezvous(p, &three).unwrap();
            let after = rendezvous(p, &two).unwrap();
            if before != "c" {
                assert_eq!(before, after, "{p} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 5 && moved < 40, "{moved}");
        let static_total: usize = (0..3)
            .map(|k| parts.iter().filter(|p| static_owner(p, k, 3)).count())
            .sum();
        assert_eq!(static_total, 64);
    }
}
