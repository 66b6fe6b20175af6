//! Consumer-group membership: which partitions a member reads.
//!
//! * **Solo**: one consumer reads every partition.
//! * **Static `k/N`**: member `k` of `N` reads the partitions whose name hashes to
//!   `k` modulo `N` (Conduit's scheme; changing `N` needs every member restarted).
//! * **Dynamic**: members register in the checkpoint store and share partitions by
//!   a balanced assignment that every member computes from the same inputs, so
//!   each of `N` members owns `floor(P/N)` or `ceil(P/N)` of `P` partitions.
//!
//! # Dynamic protocol (files in the checkpoint store, wall-clock milliseconds)
//! The files are specified in `docs/format.md` §9.2 ([`GroupMember`],
//! [`GroupClaim`]); `docs/pintail.md` ("Consumer groups") tells the story.
//! * Member file `system/leases/pintail.<group>.<topic>.member.<id>.json`: the
//!   member's lease (`expires_ms`), its process (`incarnation`), the partitions it
//!   found (`partitions`) and the digest of the inputs of its assignment
//!   (`assignment`). Rewritten when they change and at least every third of the
//!   lease; live while `expires_ms` is in the future. A member that leaves
//!   deletes it; one that dies is gone once it expires.
//! * **Assignment** ([`assign`]): a pure function of the sorted live member ids,
//!   the sorted union of the partitions they report and the current owners (live,
//!   unreleased claims), so members that read the same files agree. A member takes
//!   a partition while it has fewer than `floor(P/N)`, or exactly that many and
//!   fewer than `P mod N` members have taken one more; partitions first stay with
//!   their owners within those capacities (sticky: a balanced group moves
//!   nothing), the rest go by descending rendezvous weight of (partition, member).
//!   The capacities add up to `P`, so every partition is assigned and every member
//!   owns `floor(P/N)` or `ceil(P/N)`. A partition one member found reaches every
//!   other member's inputs through its member file at the next upkeep, so views
//!   that differ (partitions appearing at different times) converge within two
//!   heartbeats, and from then on all members compute the same assignment.
//! * Claim files `system/leases/pintail.<group>.<topic>.claim.<partition>.<epoch>.json`.
//!   The highest epoch is the partition's claim. A new owner creates the next epoch
//!   with an **exclusive create**, so of two racing members exactly one wins. It
//!   may do so only when the current claim is released, expired, held by a member
//!   that is no longer live, or held by an earlier process with its own member id
//!   (static membership: a restart takes its claims back at once).
//! * **Cooperative hand-over**: an owner whose partition is assigned elsewhere
//!   stops delivering from it, keeps the claim until everything it delivered from
//!   it is committed (at most one lease), then marks the claim released; only then
//!   may the new owner take it, from that commit. Nothing is delivered twice.
//! * Fencing: before every commit the owner checks that no higher epoch exists; if
//!   one does it has lost the partition, stops reading it and does not commit
//!   ([`crate::PintailError::NotOwner`]). A process that finds its member file
//!   rewritten by a later incarnation of its id stops with
//!   [`crate::PintailError::MemberFenced`].
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

/// A process-unique, increasing incarnation number: wall-clock milliseconds
/// shifted left 16 bits plus sub-millisecond nanoseconds, and never less than one
/// more than the last one this process made.
pub(crate) fn new_incarnation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let candidate = ((now.as_millis() as u64) << 16) | u64::from(now.subsec_nanos() & 0xffff);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = candidate.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// What one listing of the group's files says.
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupState {
    /// Live members other than this one, by id.
    pub others: BTreeMap<String, GroupMember>,
    /// The file of this member's id, whoever wrote it (a later process with the
    /// same id fences this one).
    pub own: Option<GroupMember>,
    /// Every partition's current claim `(epoch, claim)`.
    pub claims: BTreeMap<String, (u64, GroupClaim)>,
}

impl GroupState {
    /// The live member ids, this one included.
    pub fn members(&self, me: &str) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.others.keys().cloned().collect();
        out.insert(me.to_owned());
        out
    }

    /// Each partition's owner for [`assign`]'s stickiness: the member of its
    /// current claim, when that claim is neither released nor expired and its
    /// member is live (`members`).
    pub fn owners(&self, members: &BTreeSet<String>) -> BTreeMap<String, String> {
        owners(self.claims.iter().map(|(p, (_, c))| (p, c)), members)
    }
}

/// The owners [`assign`] keeps partitions with, from each partition's newest
/// claim: its member, when the claim is neither released nor expired and the
/// member is live (`members`).
pub fn owners<'a>(
    newest_claims: impl IntoIterator<Item = (&'a String, &'a GroupClaim)>,
    members: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let now = now_ms();
    newest_claims
        .into_iter()
        .filter(|(_, c)| !c.released && c.expires_ms > now && members.contains(&c.member))
        .map(|(p, c)| (p.clone(), c.member.clone()))
        .collect()
}

/// The dynamic-membership operations of one member.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub store: SharedStorage,
    pub group: String,
    pub topic: String,
    pub member: String,
    pub lease: Duration,
    /// This process's incarnation of `member` ([`new_incarnation`]).
    pub incarnation: u64,
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

    /// Registers or renews this member, with the partitions it found and the
    /// digest of its assignment's inputs.
    pub async fn heartbeat(&self, partitions: &BTreeSet<String>, assignment: &str) -> Result<()> {
        let body = GroupMember {
            version: Version,
            member: self.member.clone(),
            expires_ms: self.expiry(),
            incarnation: self.incarnation,
            partitions: partitions.iter().cloned().collect(),
            assignment: assignment.to_owned(),
        };
        let body = Bytes::from(serde_json::to_vec(&body).expect("serializes"));
        self.store
            .write_atomic(&self.member_path(&self.member)?, body)
            .await?;
        Ok(())
    }

    /// Deletes this member's file (a clean leave), unless a later process with
    /// the same id wrote it.
    pub async fn leave(&self) -> Result<()> {
        let path = self.member_path(&self.member)?;
        if let Some(file) = read_json::<GroupMember>(&self.store, &path).await? {
            if file.incarnation > self.incarnation {
                return Ok(());
            }
        }
        self.store.delete(&path, false).await?;
        Ok(())
    }

    /// Live members, this id's own file, and every partition's current claim,
    /// from one listing.
    pub async fn read_state(&self) -> Result<GroupState> {
        let dir = format!("{}/leases", Layout::SYSTEM_DIR);
        let prefix = self.prefix();
        let now = now_ms();
        let mut state = GroupState::default();
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
                let Some(file) = read_json::<GroupMember>(&self.store, &entry.path).await? else {
                    continue;
                };
                if member == self.member {
                    state.own = Some(file);
                } else if file.expires_ms > now {
                    state.others.insert(member.to_owned(), file);
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
        for (partition, (epoch, path)) in newest {
            if let Some(claim) = read_json::<GroupClaim>(&self.store, &path).await? {
                state.claims.insert(partition, (epoch, claim));
            }
        }
        Ok(state)
    }

    /// Whether a later process of this member id runs (its live member file has
    /// a higher incarnation): this one must stop.
    pub fn fenced_by(&self, state: &GroupState) -> Option<u64> {
        state
            .own
            .as_ref()
            .filter(|f| f.incarnation > self.incarnation && f.expires_ms > now_ms())
            .map(|f| f.incarnation)
    }

    /// The epoch to claim `partition` with now, if it may be taken: no claim yet;
    /// released, expired, or held by a member that is not live; or held by this
    /// member id in this or an earlier process.
    pub fn claimable(
        &self,
        claim: Option<&(u64, GroupClaim)>,
        live: &BTreeSet<String>,
    ) -> Option<u64> {
        match claim {
            None => Some(1),
            Some((epoch, c)) if c.member == self.member && c.incarnation <= self.incarnation => {
                Some(epoch + 1)
            }
            Some((_, c)) if c.member == self.member => None, // a later process of this id
            Some((epoch, c))
                if c.released || c.expires_ms <= now_ms() || !live.contains(&c.member) =>
            {
                Some(epoch + 1)
            }
            Some(_) => None, // a live owner has not released it yet
        }
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
            incarnation: self.incarnation,
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
            incarnation: self.incarnation,
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

/// The balanced, sticky assignment of `partitions` to `members` (partition ->
/// member). Capacities: each member takes partitions while it has fewer than
/// `floor(P/N)`, or exactly that many while fewer than `P mod N` members have
/// taken one more. First every partition stays with its current owner (`owners`:
/// the live, unreleased claims) while that owner has capacity, so a group that is
/// already balanced never moves a partition (Kafka's cooperative-sticky
/// assignor; without it two members that started at the same moment and claimed
/// one partition each could be told to swap them, a hand-over for nothing). Then
/// the rest go by descending rendezvous weight (see the [module docs](self)).
/// Deterministic: every member computes the same map from the same inputs.
pub fn assign(
    members: &BTreeSet<String>,
    partitions: &BTreeSet<String>,
    owners: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let n = members.len();
    let base = partitions.len() / n;
    let mut extra = partitions.len() % n;
    let mut pairs: Vec<(u64, &String, &String)> = Vec::with_capacity(partitions.len() * n);
    for p in partitions {
        for m in members {
            pairs.push((fnv(&format!("{p}\u{0}{m}")), p, m));
        }
    }
    // Heaviest first; ties broken by names so the order is total.
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(b.2)));
    let mut load: BTreeMap<&String, usize> = members.iter().map(|m| (m, 0)).collect();
    for sticky in [true, false] {
        for (_, p, m) in &pairs {
            if out.contains_key(*p) || (sticky && owners.get(*p) != Some(*m)) {
                continue;
            }
            let count = load.get_mut(m).expect("a member");
            if *count < base || (*count == base && extra > 0) {
                if *count == base {
                    extra -= 1;
                }
                *count += 1;
                out.insert((*p).clone(), (*m).clone());
            }
            if out.len() == partitions.len() {
                return out;
            }
        }
    }
    out
}

/// Digest (16 hex digits) of the inputs of [`assign`]: members that publish the
/// same digest computed the same assignment.
pub fn assignment_digest(
    members: &BTreeSet<String>,
    partitions: &BTreeSet<String>,
    owners: &BTreeMap<String, String>,
) -> String {
    let mut text = String::new();
    for m in members {
        text.push_str(m);
        text.push('\n');
    }
    text.push('\u{1}');
    for p in partitions {
        text.push_str(p);
        if let Some(o) = owners.get(p) {
            text.push('\u{2}');
            text.push_str(o);
        }
        text.push('\n');
    }
    format!("{:016x}", fnv(&text))
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

/// Whether static member `k` of `n` reads `partition`.
pub(crate) fn static_owner(partition: &str, k: u32, n: u32) -> bool {
    (fnv(partition) % u64::from(n.max(1))) as u32 == k
}

pub(crate) fn fnv(text: &str) -> u64 {
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

    fn names(prefix: &str, n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn every_member_owns_floor_or_ceil_and_every_partition_has_one_owner() {
        for n in 1..=9 {
            for p in 0..=40 {
                let members = names("host-", n);
                let parts = names("dc1-c", p);
                let a = assign(&members, &parts, &BTreeMap::new());
                assert_eq!(a.len(), p, "{n} members, {p} partitions");
                let mut load: BTreeMap<&String, usize> = members.iter().map(|m| (m, 0)).collect();
                for m in a.values() {
                    *load.get_mut(m).unwrap() += 1;
                }
                for (m, l) in load {
                    assert!(l == p / n || l == p.div_ceil(n), "{m}: {l} of {p} over {n}");
                }
                assert_eq!(
                    a,
                    assign(&members, &parts, &BTreeMap::new()),
                    "deterministic"
                );
            }
        }
        // Two members, two partitions: one each (plain rendezvous could idle one).
        let two = assign(&names("m", 2), &names("dc1-c", 2), &BTreeMap::new());
        assert_eq!(two.values().collect::<BTreeSet<_>>().len(), 2);
    }

    #[test]
    fn a_leave_moves_only_the_leavers_partitions() {
        let parts = names("p", 64);
        let three = names("m", 3);
        let mut two = three.clone();
        two.remove("m2");
        let before = assign(&three, &parts, &BTreeMap::new());
        // The survivors keep what they own (sticky): only m2's partitions move.
        let owners: BTreeMap<String, String> = before
            .iter()
            .filter(|(_, m)| *m != "m2")
            .map(|(p, m)| (p.clone(), m.clone()))
            .collect();
        let after = assign(&two, &parts, &owners);
        let moved = parts.iter().filter(|p| before[*p] != after[*p]).count();
        let leavers = before.values().filter(|m| *m == "m2").count();
        assert_eq!(moved, leavers, "{moved} moved, {leavers} were m2's");
        let digest = assignment_digest(&three, &parts, &BTreeMap::new());
        assert_eq!(digest.len(), 16);
        assert_ne!(digest, assignment_digest(&two, &parts, &BTreeMap::new()));
        assert_ne!(digest, assignment_digest(&three, &parts, &before));
    }

    #[test]
    fn a_balanced_group_keeps_its_owners_and_an_overloaded_owner_keeps_its_share() {
        let members = names("m", 2);
        let parts = names("dc1-c", 2);
        let plain = assign(&members, &parts, &BTreeMap::new());
        // Two members that each claimed the partition the other one would get.
        let crossed: BTreeMap<String, String> = plain
            .iter()
            .map(|(p, m)| (p.clone(), if m == "m0" { "m1" } else { "m0" }.to_owned()))
            .collect();
        assert_ne!(crossed, plain);
        assert_eq!(assign(&members, &parts, &crossed), crossed, "nobody swaps");
        // One member owns all 10; a second joins: the first keeps 5, gives 5.
        let parts = names("p", 10);
        let all_m0: BTreeMap<String, String> =
            parts.iter().map(|p| (p.clone(), "m0".to_owned())).collect();
        let a = assign(&members, &parts, &all_m0);
        assert_eq!(a.values().filter(|m| *m == "m0").count(), 5);
        assert_eq!(a.values().filter(|m| *m == "m1").count(), 5);
        // An owner that is not a member (gone) holds nothing.
        let gone: BTreeMap<String, String> =
            parts.iter().map(|p| (p.clone(), "m9".to_owned())).collect();
        assert_eq!(
            assign(&members, &parts, &gone),
            assign(&members, &parts, &BTreeMap::new())
        );
    }

    #[test]
    fn incarnations_increase_and_claims_follow_the_rules() {
        let a = new_incarnation();
        let b = new_incarnation();
        assert!(b > a);
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStorage =
            std::sync::Arc::new(conduit_core::storage::LocalStorage::open(dir.path()).unwrap());
        let g = Group {
            store,
            group: "g".into(),
            topic: "t".into(),
            member: "m1".into(),
            lease: Duration::from_secs(10),
            incarnation: b,
        };
        let claim = |member: &str, incarnation: u64, released: bool, expires_ms: i64| {
            (
                4,
                GroupClaim {
                    version: Version,
                    member: member.into(),
                    expires_ms,
                    released,
                    incarnation,
                },
            )
        };
        let live: BTreeSet<String> = ["m1".to_string(), "m2".to_string()].into();
        let later = now_ms() + 60_000;
        assert_eq!(g.claimable(None, &live), Some(1));
        // This id's earlier process (a restart) or this process: take it at once.
        assert_eq!(
            g.claimable(Some(&claim("m1", a, false, later)), &live),
            Some(5)
        );
        assert_eq!(
            g.claimable(Some(&claim("m1", 0, false, later)), &live),
            Some(5)
        );
        // A later process of this id: never.
        assert_eq!(
            g.claimable(Some(&claim("m1", b + 1, false, later)), &live),
            None
        );
        // Another live member's: only once released or expired.
        assert_eq!(
            g.claimable(Some(&claim("m2", 1, false, later)), &live),
            None
        );
        assert_eq!(g.claimable(Some(&claim("m2", 1, true, 0)), &live), Some(5));
        assert_eq!(g.claimable(Some(&claim("m2", 1, false, 1)), &live), Some(5));
        assert_eq!(
            g.claimable(Some(&claim("m3", 1, false, later)), &live),
            Some(5)
        );
    }
}
