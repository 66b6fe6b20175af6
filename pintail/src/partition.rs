//! Partition names, sub-partitions of the local view, and the group's
//! partition count.
//!
//! One setting, `partitions` ([`crate::ConsumerBuilder::partitions`], `conduit
//! tail --partitions N`), says into how many parts a group splits what it reads:
//!
//! | view | partitions | name | a record belongs to |
//! |---|---|---|---|
//! | `merged`, `mirror` | `N` (default 16) | `p<k>of<N>` | `k = FNV-1a-64(file name) mod N` (whole files) |
//! | `local` | `N` per collector stream (default 1) | `<cluster>-<collector>` when `N = 1`, else `<cluster>-<collector>-s<k>of<N>` | its stream, and `k = `[`sub_partition_of`]`(file name, frame offset, record index)` |
//!
//! **The sub-key.** A record of a collector file is identified by the file's
//! collector file name, the offset of the data frame holding it and its index
//! among that frame's records. All three are the same whether the record is
//! read from the open file in `data/`, through the collector's open-file
//! endpoint, or from the sealed local minute it is moved into (a rename: same
//! name, same bytes, `docs/format.md` §7.2), so a record maps to the same
//! sub-partition before and after the seal. Within a frame records go
//! round-robin from a start that is a hash of (name, offset), so a frame of `r`
//! records gives each sub-partition `floor(r/N)` or `ceil(r/N)` of them, and
//! one-record frames spread by the hash, as Kafka spreads records without a key.
//! (The one exception is the seal's duplicate drop, §7.2: a frame that loses
//! publisher-retried copies is rewritten with its later records moved down, so
//! they may change sub-partition; positions inside such a frame already shift
//! the same way.)
//!
//! **The count is the group's.** Checkpoints and claims are per partition, so
//! the first member of a group writes the count it was given to
//! `system/leases/pintail.<group>.<topic>.partitions.<local|sealed>.json`
//! ([`GroupPartitions`], exclusive create) and a member started with another
//! count is refused with [`PintailError::PartitionsMismatch`] naming both. A
//! group that has checkpoints from before this file existed gets the count its
//! checkpoints' names show.

use std::time::Duration;

use bytes::Bytes;
use conduit_core::layout::Layout;
use conduit_core::records::{decode, GroupPartitions, Version};
use conduit_core::{CreateMode, NodeName, SharedStorage};

use crate::error::{PintailError, Result};
use crate::position::CheckpointStore;

/// The sub-partition (`0..n`) of the record at index `record` of the data frame
/// at `frame_offset` of collector file `file` (see the [module docs](self)).
///
/// ```
/// use conduit_pintail::partition::sub_partition_of;
/// let name = "clicks-2026-11-22-10-05_00000.zst";
/// // A frame of 8 records gives each of 4 sub-partitions exactly 2.
/// let mut count = [0; 4];
/// for r in 0..8 {
///     count[sub_partition_of(name, 4096, r, 4) as usize] += 1;
/// }
/// assert_eq!(count, [2, 2, 2, 2]);
/// assert_eq!(sub_partition_of(name, 4096, 3, 1), 0);
/// ```
pub fn sub_partition_of(file: &str, frame_offset: u64, record: u32, n: u32) -> u32 {
    if n <= 1 {
        return 0;
    }
    sub_partition_from(frame_start(file, frame_offset), record, n)
}

/// The round-robin start of the data frame at `frame_offset` of collector file
/// `file`: what [`sub_partition_of`] hashes once per frame.
pub(crate) fn frame_start(file: &str, frame_offset: u64) -> u64 {
    crate::group::fnv(&format!("{file}\u{0}{frame_offset}"))
}

/// [`sub_partition_of`] from the frame's [`frame_start`].
pub(crate) fn sub_partition_from(start: u64, record: u32, n: u32) -> u32 {
    if n <= 1 {
        return 0;
    }
    ((start % u64::from(n) + u64::from(record) % u64::from(n)) % u64::from(n)) as u32
}

/// The name of sub-partition `k` of `n` of `cluster`'s `collector` stream.
pub fn local_partition(cluster: &str, collector: &str, k: u32, n: u32) -> String {
    if n <= 1 {
        format!("{cluster}-{collector}")
    } else {
        format!("{cluster}-{collector}-s{k}of{n}")
    }
}

/// A local-view partition: a collector stream and its sub-partition `(k, n)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalPartition {
    pub cluster: NodeName,
    pub collector: NodeName,
    pub k: u32,
    pub n: u32,
}

impl LocalPartition {
    /// Parses `<cluster>-<collector>` (`n = 1`) or `<cluster>-<collector>-s<k>of<n>`;
    /// node names have no `-`, so the split is unambiguous.
    pub fn parse(name: &str) -> Option<LocalPartition> {
        let mut parts = name.split('-');
        let cluster = NodeName::new(parts.next()?).ok()?;
        let collector = NodeName::new(parts.next()?).ok()?;
        let (k, n) = match parts.next() {
            None => (0, 1),
            Some(sub) => {
                let (k, n) = sub.strip_prefix('s')?.split_once("of")?;
                let (k, n): (u32, u32) = (k.parse().ok()?, n.parse().ok()?);
                if n < 2 || k >= n || parts.next().is_some() {
                    return None;
                }
                (k, n)
            }
        };
        Some(LocalPartition {
            cluster,
            collector,
            k,
            n,
        })
    }
}

/// Which kind of view a partition count is for.
pub(crate) fn family(local: bool) -> &'static str {
    if local {
        "local"
    } else {
        "sealed"
    }
}

fn settings_path(group: &str, topic: &str, view: &str) -> Result<String> {
    Ok(Layout::lease_path(&format!(
        "pintail.{group}.{topic}.partitions.{view}"
    ))?)
}

/// The count a partition name shows, if it is one of `view`'s.
fn count_of(name: &str, view: &str) -> Option<u32> {
    match view {
        "local" => LocalPartition::parse(name).map(|p| p.n),
        _ => match crate::lag::view_of_partition(name) {
            (crate::ReadView::Local, _) => None,
            (_, n) => Some(n),
        },
    }
}

/// Records `n` as the partition count of `group` on `topic` in `view` (`local`
/// or `sealed`), or checks it against the recorded one (see the
/// [module docs](self)).
pub(crate) async fn ensure_group_partitions(
    store: &SharedStorage,
    checkpoints: &CheckpointStore,
    group: &str,
    topic: &str,
    view: &'static str,
    n: u32,
) -> Result<()> {
    let path = settings_path(group, topic, view)?;
    let mismatch = |recorded: u32, path: String| PintailError::PartitionsMismatch {
        group: group.to_owned(),
        topic: topic.to_owned(),
        view,
        recorded,
        requested: n,
        path,
    };
    // A group from before the file: its checkpoints' names tell the count.
    let mut recorded = 0;
    for p in checkpoints.partitions(group, topic).await? {
        if let Some(c) = count_of(&p, view) {
            recorded = c;
            break;
        }
    }
    let body = GroupPartitions {
        version: Version,
        view: view.to_owned(),
        partitions: if recorded > 0 { recorded } else { n },
    };
    // Another member may have created it and not written it yet: look again a
    // few times before calling it damaged.
    for attempt in 0..40 {
        match store.read(&path).await {
            Ok(bytes) if !bytes.is_empty() => {
                let file: GroupPartitions =
                    decode(&path, &bytes).map_err(|e| PintailError::InvalidSetting {
                        setting: "partitions",
                        reason: format!("{e}; delete {path} to record the count again"),
                    })?;
                if file.partitions != n {
                    return Err(mismatch(file.partitions, path));
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() && attempt == 0 => {
                match store.create(&path, CreateMode::Exclusive).await {
                    Ok(mut w) => {
                        w.write(Bytes::from(serde_json::to_vec(&body).expect("serializes")))
                            .await?;
                        w.close().await?;
                        if body.partitions != n {
                            return Err(mismatch(body.partitions, path));
                        }
                        tracing::info!(
                            group,
                            topic,
                            view,
                            partitions = n,
                            path,
                            "recorded the group's partition count"
                        );
                        return Ok(());
                    }
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(PintailError::InvalidSetting {
        setting: "partitions",
        reason: format!("{path} stays empty; delete it to record the count again"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        let p = LocalPartition::parse(&local_partition("dc1", "c1", 2, 4)).unwrap();
        assert_eq!(
            (p.cluster.as_str(), p.collector.as_str(), p.k, p.n),
            ("dc1", "c1", 2, 4)
        );
        let p = LocalPartition::parse("dc1-c1").unwrap();
        assert_eq!((p.k, p.n), (0, 1));
        assert_eq!(local_partition("dc1", "c1", 0, 1), "dc1-c1");
        for bad in [
            "dc1",
            "dc1-c1-s4of4",
            "dc1-c1-s0of1",
            "dc1-c1-x",
            "dc1-c1-s1of4-x",
            "p1of4",
        ] {
            assert_eq!(LocalPartition::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sub_partitions_spread_evenly() {
        // Frames of one record each: spread by the hash alone.
        let mut count = [0u32; 4];
        for f in 0..4000u64 {
            count[sub_partition_of("t-2026-11-22-10-05_00000.zst", f * 97, 0, 4) as usize] += 1;
        }
        for c in count {
            assert!((900..1100).contains(&c), "{count:?}");
        }
        // Frames of 10 records: each sub gets 2 or 3 of every frame.
        for f in 0..100u64 {
            let mut count = [0u32; 4];
            for r in 0..10 {
                count[sub_partition_of("t-2026-11-22-10-05_00001.zst", f * 131, r, 4) as usize] +=
                    1;
            }
            assert!(count.iter().all(|c| *c == 2 || *c == 3), "{count:?}");
        }
    }

    #[tokio::test]
    async fn a_member_with_another_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStorage =
            std::sync::Arc::new(conduit_core::storage::LocalStorage::open(dir.path()).unwrap());
        let cps = CheckpointStore::new(store.clone());
        ensure_group_partitions(&store, &cps, "g", "t", "local", 4)
            .await
            .unwrap();
        ensure_group_partitions(&store, &cps, "g", "t", "local", 4)
            .await
            .unwrap();
        let e = ensure_group_partitions(&store, &cps, "g", "t", "local", 2)
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("uses 4 partitions") && text.contains("started with 2"),
            "{text}"
        );
        // The sealed count is separate.
        ensure_group_partitions(&store, &cps, "g", "t", "sealed", 16)
            .await
            .unwrap();
    }
}
