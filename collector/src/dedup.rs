//! Which idempotent publisher batches are already durable.
//!
//! conduit's publisher sends `LogBatch(publisher_id, sequence, entries)`; a retry of
//! a batch whose acknowledgement was lost carries the same id and sequence. The
//! table answers "is (id, sequence) durable?", and for a batch of which only some
//! topics became durable before a failure, "which parts?", so a retry writes only
//! what is missing and nothing twice.
//!
//! Durability of the table itself comes from the data: every data frame that holds
//! records of an idempotent batch is preceded in its file by a batch-mark frame
//! (`format::encode_marks`). On start the collector rebuilds the table from its
//! snapshot (`system/checkpoints/collector/<cluster>.<id>.dedup.json`, written before any file
//! is closed; format: `docs/format.md` §5.6, type [`DedupSnapshot`]) plus the marks of
//! every file it has not closed yet, including spool files.
//!
//! Bounds: per publisher the last [`WINDOW`] sequences are remembered exactly;
//! anything older than the window is answered "durable" (a publisher never has that
//! many batches in flight). Publishers idle for [`IDLE_EXPIRY_SECS`] are forgotten.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use conduit_core::format::BatchMark;
use conduit_core::records::{
    decode, Base64Bytes, DedupSnapshot, DedupWindow, RecordError, Version,
};

/// Sequences remembered per publisher.
pub const WINDOW: i64 = 8192;
/// Publishers idle this long are forgotten.
pub const IDLE_EXPIRY_SECS: i64 = 6 * 3600;

/// What the table knows about one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchState {
    /// Never seen durable: write everything.
    New,
    /// Every part is durable: acknowledge without writing.
    Durable,
    /// Some parts (by part index) are durable: write only the others.
    Partial(Vec<u16>),
}

/// The table, keyed by publisher id.
#[derive(Debug, Default)]
pub struct DedupTable {
    publishers: HashMap<Bytes, DedupWindow>,
}

impl DedupTable {
    /// What is known about batch `(publisher, sequence)`.
    pub fn state(&self, publisher: &[u8], sequence: i64) -> BatchState {
        let Some(window) = self.publishers.get(publisher) else {
            return BatchState::New;
        };
        match window.recent.get(&sequence) {
            Some(None) => BatchState::Durable,
            Some(Some(parts)) => BatchState::Partial(parts.clone()),
            None if sequence <= window.high - WINDOW => BatchState::Durable,
            None => BatchState::New,
        }
    }

    /// Records that the whole batch is durable.
    pub fn mark_durable(&mut self, publisher: &Bytes, sequence: i64, now_secs: i64) {
        let window = self.publishers.entry(publisher.clone()).or_default();
        window.recent.insert(sequence, None);
        window.high = window.high.max(sequence);
        window.last_seen = now_secs;
        Self::trim(window);
    }

    /// Records that these parts of a batch are durable (after a partial failure).
    pub fn mark_parts(&mut self, publisher: &Bytes, sequence: i64, parts: &[u16], now_secs: i64) {
        let window = self.publishers.entry(publisher.clone()).or_default();
        let entry = window
            .recent
            .entry(sequence)
            .or_insert_with(|| Some(Vec::new()));
        if let Some(known) = entry {
            for p in parts {
                if !known.contains(p) {
                    known.push(*p);
                }
            }
            known.sort_unstable();
        }
        window.last_seen = now_secs;
    }

    /// Rebuilds state from batch marks found in files (recovery).
    pub fn absorb_marks(&mut self, marks: &[BatchMark], now_secs: i64) {
        let mut seen: HashMap<(Bytes, i64), (u16, Vec<u16>)> = HashMap::new();
        for mark in marks {
            let entry = seen
                .entry((mark.publisher.clone(), mark.sequence))
                .or_insert((mark.parts, Vec::new()));
            if !entry.1.contains(&mark.part) {
                entry.1.push(mark.part);
            }
        }
        for ((publisher, sequence), (parts, found)) in seen {
            if matches!(self.state(&publisher, sequence), BatchState::Durable) {
                continue;
            }
            let mut all = found;
            if let BatchState::Partial(known) = self.state(&publisher, sequence) {
                all.extend(known);
            }
            all.sort_unstable();
            all.dedup();
            if all.len() >= parts as usize {
                self.mark_durable(&publisher, sequence, now_secs);
            } else {
                self.mark_parts(&publisher, sequence, &all, now_secs);
            }
        }
    }

    /// Adds everything another table knows (snapshots from storage and spool).
    pub fn merge(&mut self, other: DedupTable) {
        for (id, theirs) in other.publishers {
            let ours = self.publishers.entry(id).or_default();
            ours.high = ours.high.max(theirs.high);
            ours.last_seen = ours.last_seen.max(theirs.last_seen);
            for (seq, state) in theirs.recent {
                match (ours.recent.get(&seq), state) {
                    (Some(None), _) => {}
                    (_, None) => {
                        ours.recent.insert(seq, None);
                    }
                    (Some(Some(mine)), Some(parts)) => {
                        let mut all = mine.clone();
                        all.extend(parts);
                        all.sort_unstable();
                        all.dedup();
                        ours.recent.insert(seq, Some(all));
                    }
                    (None, Some(parts)) => {
                        ours.recent.insert(seq, Some(parts));
                    }
                }
            }
            Self::trim(ours);
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

    fn trim(window: &mut DedupWindow) {
        let floor = window.high - WINDOW;
        while let Some((&first, _)) = window.recent.first_key_value() {
            if first > floor {
                break;
            }
            window.recent.pop_first();
        }
    }

    /// JSON snapshot of the table, with the ledger of closed files
    /// (`crate::ledger`) saved along.
    pub fn to_json(&self, closed: BTreeMap<String, u64>) -> Vec<u8> {
        let snapshot = DedupSnapshot {
            version: Version,
            publishers: self
                .publishers
                .iter()
                .map(|(id, window)| (Base64Bytes(id.clone()), window.clone()))
                .collect(),
            closed,
        };
        serde_json::to_vec(&snapshot).unwrap_or_default()
    }

    /// Loads a snapshot written by [`DedupTable::to_json`]: the table and the
    /// ledger of closed files.
    pub fn from_json(bytes: &[u8]) -> Result<(DedupTable, BTreeMap<String, u64>), String> {
        let snapshot: DedupSnapshot = decode("", bytes).map_err(|e| match e {
            RecordError::Malformed { reason, .. } => format!("malformed dedup snapshot: {reason}"),
            RecordError::UnsupportedVersion { version, .. } => {
                format!("unsupported dedup snapshot version {version}")
            }
        })?;
        let mut table = DedupTable::default();
        for (Base64Bytes(id), window) in snapshot.publishers {
            table.publishers.insert(id, window);
        }
        Ok((table, snapshot.closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Bytes {
        Bytes::from_static(b"p1")
    }

    #[test]
    fn durable_partial_and_window() {
        let mut t = DedupTable::default();
        assert_eq!(t.state(b"p1", 1), BatchState::New);
        t.mark_durable(&id(), 1, 0);
        assert_eq!(t.state(b"p1", 1), BatchState::Durable);
        assert_eq!(t.state(b"p1", 2), BatchState::New);
        t.mark_parts(&id(), 2, &[1], 0);
        assert_eq!(t.state(b"p1", 2), BatchState::Partial(vec![1]));
        t.mark_durable(&id(), 2, 0);
        assert_eq!(t.state(b"p1", 2), BatchState::Durable);
        t.mark_durable(&id(), 1 + WINDOW * 2, 0);
        assert_eq!(t.state(b"p1", 5), BatchState::Durable, "below the window");
        assert_eq!(t.state(b"p1", WINDOW * 2), BatchState::New);
        assert_eq!(t.state(b"other", 1), BatchState::New);
    }

    #[test]
    fn marks_rebuild_the_table_and_snapshot_round_trips() {
        let mark = |seq, part, parts| BatchMark {
            publisher: id(),
            sequence: seq,
            part,
            parts,
        };
        let mut t = DedupTable::default();
        t.absorb_marks(&[mark(1, 0, 2), mark(1, 1, 2), mark(2, 0, 2)], 10);
        assert_eq!(t.state(b"p1", 1), BatchState::Durable);
        assert_eq!(t.state(b"p1", 2), BatchState::Partial(vec![0]));
        let closed = BTreeMap::from([("data/t/c1/t-2026-11-22-10-05_00000.zst".to_owned(), 42)]);
        let (back, ledger) = DedupTable::from_json(&t.to_json(closed.clone())).unwrap();
        assert_eq!(ledger, closed, "the ledger of closed files is saved along");
        assert_eq!(back.state(b"p1", 1), BatchState::Durable);
        assert_eq!(back.state(b"p1", 2), BatchState::Partial(vec![0]));
        assert!(DedupTable::from_json(b"{").is_err());
        let mut t = back;
        t.expire(10 + IDLE_EXPIRY_SECS);
        assert!(t.is_empty());
    }
}
