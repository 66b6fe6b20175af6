//! Which idempotent publisher batches are already durable.
//!
//! conduit's publisher sends `LogBatch(publisher_id, sequence, entries)`; a retry of
//! a batch whose acknowledgement was lost carries the same id, sequence and
//! entries. The table answers "is this batch a replay of one already stored?" —
//! same publisher id, same sequence **and** same content digest
//! (`format::batch_digest`, computed once on the connection) — and, for a batch of
//! which only some topics became durable before a failure, "which parts?", so a
//! retry writes only what is missing and nothing twice.
//!
//! Nothing else makes a batch a duplicate. In particular a sequence far below (or
//! above) the others proves nothing: a batch is never dropped because of another
//! batch's sequence, so a client sending one batch under someone else's id cannot
//! make that publisher's next batches vanish. A batch under a known id and sequence
//! with different content is stored and counted ([`BatchState::Conflict`]).
//!
//! Durability of the table itself comes from the data: every data frame is
//! followed in its file by a marks frame naming its batches with their digests
//! (`format::encode_marks`). On start the collector rebuilds the table from its
//! snapshot (`system/checkpoints/collector/<cluster>.<id>.dedup.json`, written
//! before any file is closed; format: `docs/format.md` §5.6, type
//! [`DedupSnapshot`]) plus the marks of every file it has not closed yet, including
//! spool files. Marks of version 1 files and snapshots of older collectors carry no
//! digest: such a batch matches any content under its id and sequence (what older
//! collectors did), until it leaves the window.
//!
//! Bounds: per publisher exactly the last [`WINDOW`] batches **by arrival** are
//! remembered (a publisher never has that many in flight); publishers idle for
//! [`IDLE_EXPIRY_SECS`] are forgotten.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::ledger::Saved;
use bytes::Bytes;
use conduit_core::format::FileBatch;
use conduit_core::records::{
    decode, Base64Bytes, DedupBatch, DedupSnapshot, DedupWindow, Hex64, RecordError, Version,
};

/// Batches remembered per publisher.
pub const WINDOW: usize = 8192;
/// Publishers idle this long are forgotten.
pub const IDLE_EXPIRY_SECS: i64 = 6 * 3600;

/// An idempotent batch: who sent it, its sequence, and the digest of its content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey {
    /// The publisher id.
    pub publisher: Bytes,
    /// The sequence number the publisher gave it.
    pub sequence: i64,
    /// `format::batch_digest` of the call's entries.
    pub digest: u64,
}

/// What the table knows about one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchState {
    /// Never seen durable: write everything.
    New,
    /// Not seen, but another batch with the same publisher id and sequence and a
    /// different digest is durable: write everything (and count it).
    Conflict,
    /// Every part is durable: acknowledge without writing.
    Durable,
    /// Some parts (by part index) are durable: write only the others.
    Partial(Vec<u16>),
}

/// A remembered batch: its sequence and digest (`None`: unknown, from version 1
/// marks or an older snapshot, matching any content).
type Slot = (i64, Option<u64>);

/// What one publisher's batches are known to be: `None` when the whole batch is
/// durable, else its durable parts, ascending.
type Parts = Option<Vec<u16>>;

/// One publisher's remembered batches.
#[derive(Debug, Default)]
struct Window {
    /// Each batch's durable parts, by (sequence, digest) so that every digest
    /// stored under one sequence is found with a range.
    batches: BTreeMap<Slot, Parts>,
    /// The same batches by arrival, oldest first: the one to forget first.
    arrival: VecDeque<Slot>,
    /// Highest sequence seen durable (written to snapshots for older collectors).
    high: i64,
    /// When the publisher was last seen (unix seconds).
    last_seen: i64,
}

impl Window {
    fn state(&self, sequence: i64, digest: u64) -> BatchState {
        let found = self
            .batches
            .get(&(sequence, Some(digest)))
            .or_else(|| self.batches.get(&(sequence, None)));
        match found {
            Some(None) => BatchState::Durable,
            Some(Some(parts)) => BatchState::Partial(parts.clone()),
            None if self
                .batches
                .range((sequence, None)..=(sequence, Some(u64::MAX)))
                .next()
                .is_some() =>
            {
                BatchState::Conflict
            }
            None => BatchState::New,
        }
    }

    /// The batch's entry, remembered (and the oldest forgotten) if it is new.
    fn slot(&mut self, slot: Slot) -> &mut Parts {
        if !self.batches.contains_key(&slot) {
            self.arrival.push_back(slot);
            self.batches.insert(slot, Some(Vec::new()));
            while self.arrival.len() > WINDOW {
                if let Some(old) = self.arrival.pop_front() {
                    self.batches.remove(&old);
                }
            }
        }
        self.batches.get_mut(&slot).expect("inserted above")
    }

    fn mark_durable(&mut self, slot: Slot, now_secs: i64) {
        *self.slot(slot) = None;
        self.high = self.high.max(slot.0);
        self.last_seen = self.last_seen.max(now_secs);
    }

    fn mark_parts(&mut self, slot: Slot, parts: &[u16], now_secs: i64) {
        if let Some(known) = self.slot(slot) {
            known.extend_from_slice(parts);
            known.sort_unstable();
            known.dedup();
        }
        self.last_seen = self.last_seen.max(now_secs);
    }

    /// Adds what another record of this publisher knows.
    fn absorb(&mut self, slot: Slot, parts: Parts, now_secs: i64) {
        match parts {
            None => self.mark_durable(slot, now_secs),
            Some(parts) => self.mark_parts(slot, &parts, now_secs),
        }
    }
}

/// The table, keyed by publisher id.
#[derive(Debug, Default)]
pub struct DedupTable {
    publishers: HashMap<Bytes, Window>,
}

impl DedupTable {
    /// What is known about the batch `key`.
    pub fn state(&self, key: &BatchKey) -> BatchState {
        match self.publishers.get(&key.publisher) {
            Some(window) => window.state(key.sequence, key.digest),
            None => BatchState::New,
        }
    }

    /// Records that the whole batch is durable.
    pub fn mark_durable(&mut self, key: &BatchKey, now_secs: i64) {
        self.window(&key.publisher)
            .mark_durable((key.sequence, Some(key.digest)), now_secs);
    }

    /// Records that these parts of a batch are durable (after a partial failure).
    pub fn mark_parts(&mut self, key: &BatchKey, parts: &[u16], now_secs: i64) {
        self.window(&key.publisher)
            .mark_parts((key.sequence, Some(key.digest)), parts, now_secs);
    }

    fn window(&mut self, publisher: &Bytes) -> &mut Window {
        if !self.publishers.contains_key(publisher) {
            self.publishers.insert(publisher.clone(), Window::default());
        }
        self.publishers.get_mut(publisher).expect("inserted above")
    }

    /// Rebuilds state from the batch parts found in files (recovery), in file
    /// order: a batch is durable once every one of its parts was found.
    pub fn absorb_marks(&mut self, batches: &[FileBatch], now_secs: i64) {
        // Parts found per batch, in order of first appearance.
        let mut found: Vec<((Bytes, Slot), u16, Vec<u16>)> = Vec::new();
        let mut at: HashMap<(Bytes, Slot), usize> = HashMap::new();
        for batch in batches {
            let mark = batch.mark.batch();
            let key = (mark.publisher.clone(), (mark.sequence, batch.mark.digest()));
            let i = *at.entry(key.clone()).or_insert_with(|| {
                found.push((key, mark.parts, Vec::new()));
                found.len() - 1
            });
            found[i].2.push(mark.part);
        }
        for ((publisher, slot), parts, mut seen) in found {
            let window = self.window(&publisher);
            seen.sort_unstable();
            seen.dedup();
            if let Some(Some(known)) = window.batches.get(&slot) {
                seen.extend_from_slice(known);
                seen.sort_unstable();
                seen.dedup();
            }
            if seen.len() >= parts as usize {
                window.mark_durable(slot, now_secs);
            } else {
                window.mark_parts(slot, &seen, now_secs);
            }
        }
    }

    /// Adds everything another table knows (snapshots from storage and spool).
    pub fn merge(&mut self, other: DedupTable) {
        for (id, theirs) in other.publishers {
            let ours = self.window(&id);
            ours.high = ours.high.max(theirs.high);
            let mut theirs = theirs;
            for slot in theirs.arrival.drain(..) {
                if let Some(parts) = theirs.batches.remove(&slot) {
                    ours.absorb(slot, parts, theirs.last_seen);
                }
            }
            ours.last_seen = ours.last_seen.max(theirs.last_seen);
        }
    }

    /// Forgets publishers idle for longer than [`IDLE_EXPIRY_SECS`].
    pub fn expire(&mut self, now_secs: i64) {
        self.publishers
            .retain(|_, w| now_secs - w.last_seen < IDLE_EXPIRY_SECS);
    }

    /// Number of publishers tracked.
    pub fn len(&self) -> usize {
        self.publishers.len()
    }

    /// Whether no publisher is tracked.
    pub fn is_empty(&self) -> bool {
        self.publishers.is_empty()
    }

    /// JSON snapshot of the table, with the ledger of closed and abandoned files
    /// (`crate::ledger`) saved along.
    pub fn to_json(&self, ledger: Saved) -> Vec<u8> {
        let snapshot = DedupSnapshot {
            version: Version,
            publishers: self
                .publishers
                .iter()
                .map(|(id, window)| {
                    let batches = window
                        .arrival
                        .iter()
                        .map(|slot| DedupBatch {
                            seq: slot.0,
                            digest: slot.1.map(Hex64),
                            parts: window.batches.get(slot).cloned().flatten(),
                        })
                        .collect();
                    let saved = DedupWindow {
                        high: window.high,
                        recent: BTreeMap::new(),
                        last_seen: window.last_seen,
                        batches,
                    };
                    (Base64Bytes(id.clone()), saved)
                })
                .collect(),
            closed: ledger.closed,
            abandoned: ledger.abandoned,
            generation: ledger.generation,
        };
        serde_json::to_vec(&snapshot).unwrap_or_default()
    }

    /// Loads a snapshot written by [`DedupTable::to_json`] or by an older
    /// collector (its `recent` sequences become batches of unknown digest): the
    /// table and the ledger of closed and abandoned files.
    pub fn from_json(bytes: &[u8]) -> Result<(DedupTable, Saved), String> {
        let snapshot: DedupSnapshot = decode("", bytes).map_err(|e| match e {
            RecordError::Malformed { reason, .. } => format!("malformed dedup snapshot: {reason}"),
            RecordError::UnsupportedVersion { version, .. } => {
                format!("unsupported dedup snapshot version {version}")
            }
        })?;
        let mut table = DedupTable::default();
        for (Base64Bytes(id), saved) in snapshot.publishers {
            let window = table.window(&id);
            for (seq, parts) in saved.recent {
                window.absorb((seq, None), parts, saved.last_seen);
            }
            for batch in saved.batches {
                window.absorb(
                    (batch.seq, batch.digest.map(|d| d.0)),
                    batch.parts,
                    saved.last_seen,
                );
            }
            window.high = window.high.max(saved.high);
            window.last_seen = saved.last_seen;
        }
        Ok((
            table,
            Saved {
                closed: snapshot.closed,
                abandoned: snapshot.abandoned,
                generation: snapshot.generation,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conduit_core::format::{BatchMark, FoundMark, PartMark};

    fn key(sequence: i64, digest: u64) -> BatchKey {
        BatchKey {
            publisher: Bytes::from_static(b"p1"),
            sequence,
            digest,
        }
    }

    #[test]
    fn only_a_replay_of_a_stored_batch_is_durable() {
        let mut t = DedupTable::default();
        assert_eq!(t.state(&key(1, 10)), BatchState::New);
        t.mark_durable(&key(1, 10), 0);
        assert_eq!(t.state(&key(1, 10)), BatchState::Durable);
        assert_eq!(t.state(&key(1, 11)), BatchState::Conflict, "other content");
        assert_eq!(t.state(&key(2, 10)), BatchState::New);
        t.mark_parts(&key(2, 20), &[1], 0);
        assert_eq!(t.state(&key(2, 20)), BatchState::Partial(vec![1]));
        t.mark_durable(&key(2, 20), 0);
        assert_eq!(t.state(&key(2, 20)), BatchState::Durable);
        // A huge (or negative) sequence under the same id changes nothing else.
        t.mark_durable(&key(1 << 61, 5), 0);
        t.mark_durable(&key(-7, 5), 0);
        assert_eq!(t.state(&key(3, 30)), BatchState::New);
        assert_eq!(t.state(&key(1, 10)), BatchState::Durable);
        let other = BatchKey {
            publisher: Bytes::from_static(b"other"),
            ..key(1, 10)
        };
        assert_eq!(t.state(&other), BatchState::New);
        // Both contents of a conflict are remembered.
        t.mark_durable(&key(1, 11), 0);
        assert_eq!(t.state(&key(1, 11)), BatchState::Durable);
        assert_eq!(t.state(&key(1, 10)), BatchState::Durable);
    }

    #[test]
    fn the_window_keeps_the_last_batches_by_arrival() {
        let mut t = DedupTable::default();
        // Arrival order, not sequence order, decides what is forgotten.
        t.mark_durable(&key(1_000_000, 1), 0);
        for seq in 0..WINDOW as i64 {
            t.mark_durable(&key(seq, 1), 0);
        }
        assert_eq!(t.state(&key(1_000_000, 1)), BatchState::New, "forgotten");
        assert_eq!(t.state(&key(0, 1)), BatchState::Durable);
        t.mark_durable(&key(WINDOW as i64, 1), 0);
        assert_eq!(t.state(&key(0, 1)), BatchState::New);
        assert_eq!(t.state(&key(1, 1)), BatchState::Durable);
        // Marking a remembered batch again does not renew it.
        t.mark_durable(&key(1, 1), 0);
        t.mark_durable(&key(-1, 1), 0);
        assert_eq!(t.state(&key(1, 1)), BatchState::New);
    }

    fn found(seq: i64, part: u16, parts: u16, digest: Option<u64>) -> FileBatch {
        let batch = BatchMark {
            publisher: Bytes::from_static(b"p1"),
            sequence: seq,
            part,
            parts,
        };
        FileBatch {
            frame_offset: 0,
            mark: match digest {
                Some(digest) => FoundMark::V2(PartMark {
                    batch,
                    digest,
                    first_record: 0,
                    records: 1,
                }),
                None => FoundMark::V1(batch),
            },
        }
    }

    #[test]
    fn marks_rebuild_the_table_and_snapshot_round_trips() {
        let mut t = DedupTable::default();
        t.absorb_marks(
            &[
                found(1, 0, 2, Some(10)),
                found(1, 1, 2, Some(10)),
                found(2, 0, 2, Some(20)),
                found(3, 0, 1, None),
            ],
            10,
        );
        assert_eq!(t.state(&key(1, 10)), BatchState::Durable);
        assert_eq!(t.state(&key(1, 99)), BatchState::Conflict);
        assert_eq!(t.state(&key(2, 20)), BatchState::Partial(vec![0]));
        // Version 1 marks have no digest: any content under that sequence matches.
        assert_eq!(t.state(&key(3, 12345)), BatchState::Durable);
        let saved = Saved {
            closed: BTreeMap::from([("data/t/c1/t-2026-11-22-10-05_00000.zst".to_owned(), 42)]),
            abandoned: BTreeMap::from([("data/t/c1/t-2026-11-22-10-05_00001.zst".to_owned(), 7)]),
            generation: 3,
        };
        let (back, ledger) = DedupTable::from_json(&t.to_json(saved.clone())).unwrap();
        assert_eq!(ledger, saved, "the ledger is saved along");
        assert_eq!(back.state(&key(1, 10)), BatchState::Durable);
        assert_eq!(back.state(&key(1, 99)), BatchState::Conflict);
        assert_eq!(back.state(&key(2, 20)), BatchState::Partial(vec![0]));
        assert_eq!(back.state(&key(3, 12345)), BatchState::Durable);
        assert!(DedupTable::from_json(b"{").is_err());
        let mut t = back;
        t.expire(10 + IDLE_EXPIRY_SECS);
        assert!(t.is_empty());
    }

    #[test]
    fn snapshots_of_older_collectors_still_load() {
        let old = br#"{"version":1,"publishers":[["cDE=",{"high":9,"recent":{"8":null,"9":[0,2]},"last_seen":5}]]}"#;
        let (t, ledger) = DedupTable::from_json(old).unwrap();
        assert_eq!(
            ledger,
            Saved::default(),
            "snapshots without a ledger load with an empty one, generation 0"
        );
        assert_eq!(t.state(&key(8, 1)), BatchState::Durable);
        assert_eq!(t.state(&key(9, 1)), BatchState::Partial(vec![0, 2]));
        // The old "far below the highest sequence is durable" rule is gone.
        assert_eq!(t.state(&key(-100_000, 1)), BatchState::New);
        let written: serde_json::Value =
            serde_json::from_slice(&t.to_json(Saved::default())).unwrap();
        assert_eq!(written["publishers"][0][1]["high"], 9);
        assert_eq!(written["publishers"][0][1]["batches"][1]["parts"][1], 2);
    }

    #[test]
    fn merge_unions_what_each_table_knows() {
        let mut a = DedupTable::default();
        a.mark_parts(&key(1, 10), &[0], 5);
        let mut b = DedupTable::default();
        b.mark_parts(&key(1, 10), &[1], 7);
        b.mark_durable(&key(2, 20), 7);
        a.merge(b);
        assert_eq!(a.state(&key(1, 10)), BatchState::Partial(vec![0, 1]));
        assert_eq!(a.state(&key(2, 20)), BatchState::Durable);
        assert_eq!(a.len(), 1);
    }
}
