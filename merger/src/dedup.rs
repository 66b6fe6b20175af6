//! Cross-collector duplicates: the local seal keeps one copy of every publisher
//! batch part.
//!
//! A collector deduplicates the batches it stores itself, but a publisher whose
//! acknowledgement was lost (its collector was killed after the sync) re-sends the
//! batch to another collector after failing over: both store it, in their own
//! files. Every data file names the batch parts its data frames hold (batch marks
//! and the file index, `docs/format.md` §3.3): publisher id, sequence, part, the
//! digest of the whole call and the range of the part's records within its frame.
//! Two parts with the same [`PartKey`] are two copies of one acknowledged batch:
//! a publisher re-sends a batch unchanged, and a different batch under a reused id
//! and sequence has another digest, so it is kept.
//!
//! # The rule
//!
//! Sealing minute `N`, the seal goes through the parts of the directory's files in
//! file-name order. A part is a **duplicate** when an earlier copy is in a sealed
//! minute of the [`Window`] (`N - dedup_window_minutes ..= N - 1`), earlier in the
//! same file, or in a file of `N` with a smaller name; the first copy is kept, the
//! others are dropped ([`plan`]). The decision depends only on the kept copies,
//! which are never rewritten, so it is the same whenever it is made again.
//!
//! Window: copies further apart than `worker.dedup_window_minutes` sealed minutes
//! (a collector down for longer, its file sealed late) are both kept. Files
//! without an index (written by older collectors, whose marks carry no digest)
//! take no part: none of their parts is dropped or compared with.
//!
//! # State
//!
//! [`Window`] holds the parts of the sealed minutes it covers, in memory and in the
//! `local` job's checkpoint ([`SealDedup`]). It is a cache of what the sealed
//! files' indexes say: a missing, stale or unusable checkpoint costs reading those
//! indexes again (one ranged read per file), never a duplicate.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use conduit_core::format::{read_index, ClosedTail, FormatError, IndexEntry, PartMark};
use conduit_core::layout::Layout;
use conduit_core::records::{
    Base64Bytes, Hex64, SealDedup, SealInProgress, SealedBatches, SealedPart,
};
use conduit_core::{Manifest, Minute, Storage, Topic, View};

use crate::WorkerError;

/// What makes two stored batch parts copies of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PartKey {
    /// The publisher's id.
    pub(crate) publisher: Bytes,
    /// The batch's sequence number.
    pub(crate) sequence: i64,
    /// The part's index in its batch (one part per topic of the call).
    pub(crate) part: u16,
    /// The digest of the batch's whole call.
    pub(crate) digest: u64,
}

/// One batch part in a data file, and where its records are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartRef {
    /// Which part.
    pub(crate) key: PartKey,
    /// Offset of the data frame that holds its records.
    pub(crate) frame_offset: u64,
    /// Index of its first record within that frame.
    pub(crate) first_record: u32,
    /// How many records it has there (consecutive).
    pub(crate) records: u32,
}

impl PartKey {
    /// The identity of the part a version 2 mark names.
    pub(crate) fn of(mark: &PartMark) -> PartKey {
        PartKey {
            publisher: mark.batch.publisher.clone(),
            sequence: mark.batch.sequence,
            part: mark.batch.part,
            digest: mark.digest,
        }
    }
}

/// The batch parts a file's index lists, in file order.
pub(crate) fn parts_of(index: &[IndexEntry]) -> Vec<PartRef> {
    index
        .iter()
        .map(|e| PartRef {
            key: PartKey::of(&e.mark),
            frame_offset: e.frame_offset,
            first_record: e.mark.first_record,
            records: e.mark.records,
        })
        .collect()
}

/// The batch parts the files of sealed local minute `minute` of `topic` hold,
/// from their indexes (none if the minute is not sealed). A sealed file whose
/// index cannot be read is skipped with a warning.
pub(crate) async fn sealed_parts(
    storage: &dyn Storage,
    topic: &Topic,
    minute: Minute,
) -> Result<Vec<PartKey>, WorkerError> {
    let dir = Layout::minute_dir(View::Local, topic, minute);
    let Some(manifest) = Manifest::read(storage, &dir).await? else {
        return Ok(Vec::new());
    };
    let mut parts = Vec::new();
    for file in &manifest.files {
        let path = format!("{dir}/{}", file.name);
        match read_index(storage, &path, file.bytes).await {
            Ok(Some(ClosedTail {
                index: Some(index), ..
            })) => parts.extend(index.iter().map(|e| PartKey::of(&e.mark))),
            Ok(_) => {}
            Err(FormatError::Storage(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(%path, error = %e,
                    "cannot read the batches of a sealed file; its copies are not compared with");
            }
        }
    }
    Ok(parts)
}

/// What the deduplication of one topic carries from one seal to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicDedup {
    /// The parts of the sealed minutes the next seal compares with.
    window: Window,
    /// The per-file counts of an interrupted seal of the minute after the
    /// window, from the checkpoint.
    interrupted: Option<SealInProgress>,
}

impl TopicDedup {
    /// The state for the seal of the minute after `window.through()`.
    pub(crate) fn new(window: Window, interrupted: Option<SealInProgress>) -> TopicDedup {
        TopicDedup {
            window,
            interrupted,
        }
    }

    /// The window.
    pub(crate) fn window(&self) -> &Window {
        &self.window
    }

    /// What an interrupted seal of `minute` had dropped, if there was one.
    pub(crate) fn interrupted(&self, minute: Minute) -> Option<&SealInProgress> {
        self.interrupted.as_ref().filter(|s| s.minute == minute)
    }

    /// Adds the parts of an older sealed minute read from the views.
    pub(crate) fn fill(&mut self, minute: Minute, parts: Vec<PartKey>) {
        self.window.add(minute, parts);
    }

    /// Forgets the sealed minutes before `oldest`.
    pub(crate) fn forget_before(&mut self, oldest: Minute) {
        self.window.forget_before(oldest);
    }

    /// Records that `minute` was sealed holding the parts `kept`, and forgets the
    /// minutes that fall out of a window of `window_minutes`.
    pub(crate) fn sealed(&mut self, minute: Minute, kept: Vec<PartKey>, window_minutes: u64) {
        self.window.add(minute, kept);
        let oldest = minute
            .add_minutes(1 - i64::try_from(window_minutes).unwrap_or(i64::MAX / 2))
            .unwrap_or(Minute::MIN);
        self.window.forget_before(oldest);
        self.interrupted = None;
    }
}

/// The batch parts of the sealed minutes `from ..= through` of a topic, each with
/// the minute it was sealed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// The oldest sealed minute covered.
    from: Minute,
    /// The newest sealed minute covered.
    through: Minute,
    /// Every part of those minutes and the minute it is in.
    parts: HashMap<PartKey, Minute>,
}

impl Window {
    /// A window covering no sealed minute: the seal of `next` starts one.
    pub(crate) fn before(next: Minute) -> Window {
        // `from > through`: the empty range just before `next`.
        let through = next.prev().unwrap_or(Minute::MIN);
        Window {
            from: next,
            through,
            parts: HashMap::new(),
        }
    }

    /// The window a checkpoint saved after sealing `last_sealed`.
    pub(crate) fn from_checkpoint(last_sealed: Minute, saved: &SealDedup) -> Window {
        let mut parts = HashMap::new();
        for minute in &saved.sealed {
            for (publisher, list) in &minute.publishers {
                for &SealedPart(sequence, part, Hex64(digest)) in list {
                    let key = PartKey {
                        publisher: publisher.0.clone(),
                        sequence,
                        part,
                        digest,
                    };
                    parts.insert(key, minute.minute);
                }
            }
        }
        Window {
            from: saved.from,
            through: last_sealed,
            parts,
        }
    }

    /// What a checkpoint saves of it (without a seal in progress).
    pub(crate) fn to_checkpoint(&self) -> SealDedup {
        let mut by_minute: BTreeMap<Minute, BTreeMap<&Bytes, Vec<SealedPart>>> = BTreeMap::new();
        for (key, minute) in &self.parts {
            by_minute
                .entry(*minute)
                .or_default()
                .entry(&key.publisher)
                .or_default()
                .push(SealedPart(key.sequence, key.part, Hex64(key.digest)));
        }
        let sealed = by_minute
            .into_iter()
            .map(|(minute, publishers)| SealedBatches {
                minute,
                publishers: publishers
                    .into_iter()
                    .map(|(id, mut parts)| {
                        parts.sort_by_key(|p| (p.0, p.1, p.2 .0));
                        (Base64Bytes(id.clone()), parts)
                    })
                    .collect(),
            })
            .collect();
        SealDedup {
            from: self.from,
            sealed,
            sealing: None,
        }
    }

    /// The oldest sealed minute covered.
    pub(crate) fn from(&self) -> Minute {
        self.from
    }

    /// The newest sealed minute covered.
    pub(crate) fn through(&self) -> Minute {
        self.through
    }

    /// How many parts it holds.
    pub(crate) fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether a copy of `key` is in a sealed minute covered.
    pub(crate) fn contains(&self, key: &PartKey) -> bool {
        self.parts.contains_key(key)
    }

    /// Adds the parts of sealed minute `minute`, the one after `through` (or the
    /// one before `from`, when filling in from the views), and extends the range
    /// to cover it.
    pub(crate) fn add(&mut self, minute: Minute, parts: impl IntoIterator<Item = PartKey>) {
        for key in parts {
            // A part sealed twice (copies further apart than a window) stays
            // while its newer copy is in the window.
            let at = self.parts.entry(key).or_insert(minute);
            *at = (*at).max(minute);
        }
        self.from = self.from.min(minute);
        self.through = self.through.max(minute);
    }

    /// Forgets the minutes before `oldest`.
    pub(crate) fn forget_before(&mut self, oldest: Minute) {
        if oldest > self.from {
            self.parts.retain(|_, minute| *minute >= oldest);
            self.from = oldest;
        }
    }
}

/// The records one file of the minute loses: per data frame (by offset), the
/// record ranges `(first, count)` of its duplicate parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FileDrops {
    /// Ranges to drop per data frame offset, sorted by first record.
    pub(crate) frames: BTreeMap<u64, Vec<(u32, u32)>>,
    /// Records dropped in all.
    pub(crate) records: u64,
}

/// What the seal of a minute does about duplicates ([`plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Files that lose records, by name.
    pub(crate) drops: BTreeMap<String, FileDrops>,
    /// The parts the minute keeps (one copy each), for the window.
    pub(crate) kept: Vec<PartKey>,
}

/// Decides which parts of a minute's files are duplicates (module docs): `files`
/// are the directory's files in name order, each with its parts in file order.
pub(crate) fn plan<'a>(
    window: &Window,
    files: impl IntoIterator<Item = (&'a str, &'a [PartRef])>,
) -> Plan {
    let mut plan = Plan::default();
    let mut seen: HashSet<&PartKey> = HashSet::new();
    for (name, parts) in files {
        for part in parts {
            let duplicate = window.contains(&part.key) || !seen.insert(&part.key);
            if !duplicate {
                plan.kept.push(part.key.clone());
                continue;
            }
            let drops = plan.drops.entry(name.to_owned()).or_default();
            drops
                .frames
                .entry(part.frame_offset)
                .or_default()
                .push((part.first_record, part.records));
            drops.records += u64::from(part.records);
        }
    }
    for drops in plan.drops.values_mut() {
        for ranges in drops.frames.values_mut() {
            ranges.sort_unstable();
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(publisher: &'static str, sequence: i64, digest: u64) -> PartKey {
        PartKey {
            publisher: Bytes::from_static(publisher.as_bytes()),
            sequence,
            part: 0,
            digest,
        }
    }

    fn at(key: PartKey, frame_offset: u64, first_record: u32, records: u32) -> PartRef {
        PartRef {
            key,
            frame_offset,
            first_record,
            records,
        }
    }

    fn minute(text: &str) -> Minute {
        Minute::parse_flexible(text).unwrap()
    }

    #[test]
    fn the_first_copy_is_kept_and_later_ones_dropped() {
        let mut window = Window::before(minute("2026-11-22T10:05"));
        window.add(minute("2026-11-22T10:04"), [key("p", 1, 11)]);
        let a = [
            at(key("p", 2, 22), 0, 0, 5),
            at(key("q", 7, 70), 0, 5, 3),
            at(key("p", 1, 11), 100, 0, 4), // sealed a minute ago
        ];
        let b = [
            at(key("p", 2, 22), 0, 0, 5),  // in `a`
            at(key("p", 2, 99), 0, 5, 2),  // same id and sequence, other content
            at(key("q", 7, 70), 40, 0, 3), // in `a`
            at(key("p", 3, 33), 40, 3, 1),
            at(key("p", 3, 33), 90, 0, 1), // twice in `b`
        ];
        let plan = plan(&window, [("a", &a[..]), ("b", &b[..])]);
        let dropped: u64 = plan.drops.values().map(|d| d.records).sum();
        assert_eq!(dropped, 4 + 5 + 3 + 1);
        assert_eq!(
            plan.drops["a"].frames,
            BTreeMap::from([(100, vec![(0, 4)])])
        );
        assert_eq!(
            plan.drops["b"].frames,
            BTreeMap::from([(0, vec![(0, 5)]), (40, vec![(0, 3)]), (90, vec![(0, 1)])])
        );
        assert_eq!(
            plan.kept,
            vec![
                key("p", 2, 22),
                key("q", 7, 70),
                key("p", 2, 99),
                key("p", 3, 33)
            ]
        );
    }

    #[test]
    fn the_window_forgets_old_minutes_and_round_trips_through_a_checkpoint() {
        let mut window = Window::before(minute("2026-11-22T10:01"));
        window.add(minute("2026-11-22T10:01"), [key("p", 1, 1), key("q", 1, 2)]);
        window.add(minute("2026-11-22T10:02"), []);
        window.add(minute("2026-11-22T10:03"), [key("p", 2, 3)]);
        assert_eq!(window.through(), minute("2026-11-22T10:03"));
        let saved = window.to_checkpoint();
        let json = serde_json::to_string(&saved).unwrap();
        assert!(json.contains(r#"[1,0,"0000000000000001"]"#), "{json}");
        assert_eq!(
            Window::from_checkpoint(window.through(), &saved),
            window,
            "{json}"
        );

        window.forget_before(minute("2026-11-22T10:02"));
        assert_eq!(window.from(), minute("2026-11-22T10:02"));
        assert_eq!(window.len(), 1);
        assert!(window.contains(&key("p", 2, 3)));
        assert!(!window.contains(&key("p", 1, 1)));
        // Forgetting never moves the start back.
        window.forget_before(minute("2026-11-22T09:00"));
        assert_eq!(window.from(), minute("2026-11-22T10:02"));
    }
}
