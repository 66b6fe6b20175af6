//! The ledger of closed files: what recovery must never cut.
//!
//! A collector acknowledges bytes only once they are synced and never changes a
//! file after closing it. At start, recovery closes the files a previous run left
//! open, cutting their torn tails (bytes that were never acknowledged). A file that
//! was closed and later lost bytes (a disk fault, a truncating copy) looks exactly
//! like one left open: no trailer, perhaps a half frame at the end. Cutting it back
//! to its complete frames would drop acknowledged records behind one log line, and
//! every reader would then find a healthy closed file.
//!
//! So the collector remembers, for every file it closed that is still in `data/`,
//! its **acknowledged length** (the bytes it had synced, before the close index and
//! trailer), and saves it in the dedup snapshot (`docs/format.md` §5.6, field
//! `closed`) **before** closing the file. At recovery ([`check`]):
//!
//! - a file of the ledger whose complete frames reach its acknowledged length is
//!   closed normally (a crash while its trailer was written);
//! - one whose complete frames end before it, or that does not decode, is
//!   **quarantined** ([`quarantine`]): moved unchanged to `quarantine/<path>`
//!   (`docs/format.md` §1.3), with an ERROR line and the counter
//!   `conduit_collector_files_quarantined_total`, so nothing more is lost and
//!   `conduit verify` / `conduit audit` report it.
//!
//! A file that is not in the ledger (open at a crash) is recovered as before, except
//! that a frame that does not decode in its middle quarantines it instead of
//! stopping the collector from starting.
//!
//! # Bounds
//! Entries leave the ledger once their file is gone from `data/` (the worker moved
//! it): at recovery, which lists every file, and while running, where a background
//! listing of the directories that hold entries older than a minute ([`Pruning`])
//! runs once per minute. A worker that is down lets the ledger grow by one entry
//! per closed file, up to [`MAX_FILES`]; past that the oldest entries are forgotten
//! (logged), and those files are recovered like files left open.
//!
//! # Abandoned files
//! A storage file whose write or sync failed or missed `storage_deadline_ms` is
//! abandoned at its acknowledged length: the round's frames are acknowledged
//! from the spool (or refused), yet the late write may still land in storage as
//! complete frames. Recovery would keep those (they decode), storing events
//! twice. So the ledger also holds, for every abandoned file not yet repaired,
//! the length it must be **cut back to** (`abandoned`, `docs/format.md` §5.6),
//! saved before the round is answered (in the spool's copy of the snapshot:
//! storage is failing then; without a spool, as soon as storage takes writes
//! again, before the repair starts). At recovery such a file is cut to that
//! length and closed, or deleted if it is 0, as the background repair does.
//!
//! Two copies of the snapshot exist (storage and spool) and either may be
//! stale. `closed` entries are merged (the largest length wins: never cut
//! less than any copy protects); `abandoned` entries come from the copy with the
//! highest `generation` only (a counter of snapshot writes), since an entry
//! already repaired and dropped from the newer copy must not cut a file of the
//! same name again. The entries are as many as the engine's abandoned files (one
//! per file given up, at most one per topic and round) and leave with them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use conduit_core::format::{decode_file, wait_for_lease, Encoding, FormatError};
use conduit_core::layout::Layout;
use conduit_core::{RenameMode, SharedStorage, Storage, StorageError};

/// Entries kept at most (about 100 bytes of snapshot each).
pub const MAX_FILES: usize = 100_000;

/// The acknowledged length of every closed file still in `data/`, and of every
/// abandoned file not yet repaired, by path.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Path -> acknowledged length.
    files: HashMap<String, u64>,
    /// Paths in the order they were added (oldest first), to forget the oldest.
    order: VecDeque<String>,
    /// Abandoned files not yet repaired: path -> the length to cut back to.
    abandoned: BTreeMap<String, u64>,
    /// Snapshots written so far (the highest of the copies read at start).
    generation: u64,
}

/// The ledger as a snapshot stores it (`docs/format.md` §5.6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    /// `closed`: path -> acknowledged length.
    pub closed: BTreeMap<String, u64>,
    /// `abandoned`: path -> the length to cut back to.
    pub abandoned: BTreeMap<String, u64>,
    /// `generation`: which copy is newer.
    pub generation: u64,
}

impl Ledger {
    /// A ledger holding the entries of saved snapshots (storage and spool):
    /// every copy's closed files (the largest length of each), the abandoned
    /// files of the newest copy only (highest `generation`; on a tie, the
    /// largest length of each).
    pub fn from_saved(saved: impl IntoIterator<Item = Saved>) -> Ledger {
        let mut ledger = Ledger::default();
        let mut newest: Option<u64> = None;
        for copy in saved {
            for (path, len) in copy.closed {
                let known = ledger.files.get(&path).copied().unwrap_or(0);
                ledger.insert(path, known.max(len));
            }
            match newest {
                Some(generation) if generation > copy.generation => continue,
                Some(generation) if generation == copy.generation => {}
                _ => ledger.abandoned.clear(),
            }
            newest = Some(copy.generation);
            for (path, len) in copy.abandoned {
                let known = ledger.abandoned.get(&path).copied().unwrap_or(0);
                ledger.abandoned.insert(path, known.max(len));
            }
        }
        ledger.generation = newest.unwrap_or(0);
        ledger
    }

    /// Records that the storage file at `path` was abandoned with `acked_len`
    /// acknowledged bytes: until it is repaired, recovery cuts it back to that.
    /// False if it was already recorded so.
    pub fn abandoning(&mut self, path: &str, acked_len: u64) -> bool {
        self.abandoned.insert(path.to_owned(), acked_len) != Some(acked_len)
    }

    /// The length the abandoned file at `path` must be cut back to.
    pub fn abandoned_len(&self, path: &str) -> Option<u64> {
        self.abandoned.get(path).copied()
    }

    /// The abandoned file at `path` was repaired: cut back and closed (it is now
    /// a closed file with that many acknowledged bytes) or deleted (nothing of it
    /// was acknowledged).
    pub fn repaired(&mut self, path: &str) {
        if let Some(len) = self.abandoned.remove(path) {
            if len > 0 {
                self.insert(path.to_owned(), len);
            }
        }
    }

    /// Number of abandoned files not yet repaired.
    pub fn abandoned_count(&self) -> usize {
        self.abandoned.len()
    }

    /// Records that the file at `path` is about to be closed with `acked_len`
    /// acknowledged bytes. False if it was already recorded with that length
    /// (nothing new to save).
    pub fn closing(&mut self, path: &str, acked_len: u64) -> bool {
        if self.files.get(path) == Some(&acked_len) {
            return false;
        }
        self.insert(path.to_owned(), acked_len);
        true
    }

    fn insert(&mut self, path: String, acked_len: u64) {
        if self.files.insert(path.clone(), acked_len).is_none() {
            self.order.push_back(path);
        }
        while self.files.len() > MAX_FILES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.files.remove(&oldest).is_some() {
                if let Some(suppressed) = conduit_core::ratelimit::allow("ledger_full") {
                    tracing::warn!(
                        path = %oldest,
                        max_files = MAX_FILES,
                        suppressed,
                        "the ledger of closed files is full (is the worker moving files?); forgetting the oldest entry"
                    );
                }
            }
        }
    }

    /// The acknowledged length recorded for `path`.
    pub fn acked_len(&self, path: &str) -> Option<u64> {
        self.files.get(path).copied()
    }

    /// Forgets `path` (its file left `data/`: moved by the worker or quarantined).
    pub fn forget(&mut self, path: &str) {
        self.abandoned.remove(path);
        if self.files.remove(path).is_some() {
            self.order.retain(|p| p != path);
        }
    }

    /// Forgets every entry whose path is not in `present` (recovery listed every
    /// file of this collector).
    pub fn retain_present(&mut self, present: &HashSet<String>) {
        self.files.retain(|path, _| present.contains(path));
        self.order.retain(|path| present.contains(path));
        self.abandoned.retain(|path, _| present.contains(path));
    }

    /// Forgets every path of `gone`, in one pass.
    fn forget_all(&mut self, gone: &HashSet<String>) {
        if gone.is_empty() {
            return;
        }
        self.files.retain(|path, _| !gone.contains(path));
        self.order.retain(|path| !gone.contains(path));
    }

    /// The entries, as the next snapshot stores them (its `generation` is one
    /// more than the last one's).
    pub fn to_saved(&mut self) -> Saved {
        self.generation += 1;
        Saved {
            closed: self
                .files
                .iter()
                .map(|(path, len)| (path.clone(), *len))
                .collect(),
            abandoned: self.abandoned.clone(),
            generation: self.generation,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Drops ledger entries of files the worker moved, without stalling commits: a
/// background task lists the directories holding candidate entries; its answer is
/// applied when it is done ([`Pruning::tick`]).
#[derive(Debug, Default)]
pub struct Pruning {
    task: Option<tokio::task::JoinHandle<HashSet<String>>>,
}

impl Pruning {
    /// Applies a finished listing to `ledger`, then, if none is running, starts one
    /// for every entry not in `recent` (paths just closed, which the worker cannot
    /// have moved yet). A path is gone when no store lists it; a listing that
    /// fails keeps its directory's entries.
    pub async fn tick(
        &mut self,
        ledger: &mut Ledger,
        stores: Vec<SharedStorage>,
        recent: impl Fn(&str) -> bool,
    ) {
        match self.task.take() {
            Some(task) if task.is_finished() => {
                if let Ok(gone) = task.await {
                    ledger.forget_all(&gone);
                }
            }
            Some(task) => {
                self.task = Some(task);
                return;
            }
            None => {}
        }
        let mut dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for path in ledger.files.keys().filter(|p| !recent(p)) {
            if let Some((dir, _)) = path.rsplit_once('/') {
                dirs.entry(dir.to_owned()).or_default().push(path.clone());
            }
        }
        if dirs.is_empty() {
            return;
        }
        self.task = Some(tokio::spawn(async move {
            let mut gone = HashSet::new();
            'dirs: for (dir, paths) in dirs {
                let mut present = HashSet::new();
                for store in &stores {
                    match store.list_or_empty(&dir).await {
                        Ok(entries) => present.extend(entries.into_iter().map(|e| e.path)),
                        Err(e) => {
                            tracing::debug!(dir, error = %e, "cannot list for the ledger of closed files; keeping its entries");
                            continue 'dirs;
                        }
                    }
                }
                gone.extend(paths.into_iter().filter(|p| !present.contains(p)));
            }
            gone
        }));
    }
}

/// What recovery does with an unclosed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Close it (cutting its torn tail, if any): no acknowledged byte is lost.
    Close,
    /// Set it aside: closing it would cut acknowledged bytes, or it does not decode.
    Quarantine {
        /// Why, for the log.
        reason: String,
    },
}

/// Decides whether the unclosed file at `path`, `acked_len` bytes of which were
/// acknowledged (from the ledger or an abandoned writer), can be closed without
/// cutting any of them. Recovers the file's HDFS lease first, so its whole length
/// is readable.
pub async fn check(
    store: &dyn Storage,
    path: &str,
    encoding: Encoding,
    acked_len: u64,
) -> Result<Verdict, FormatError> {
    wait_for_lease(store, path).await?;
    let bytes = store.read(path).await?;
    Ok(match decode_file(path, &bytes, encoding) {
        Ok(decoded) if decoded.scan.valid_len >= acked_len => Verdict::Close,
        Ok(decoded) => Verdict::Quarantine {
            reason: format!(
                "{} bytes acknowledged, but its complete frames end at byte {} of {}",
                acked_len,
                decoded.scan.valid_len,
                bytes.len()
            ),
        },
        Err(e) => undecodable(e)?,
    })
}

/// A decoding error of a whole file as a verdict: a frame or record that does not
/// decode quarantines the file; a storage error is returned.
pub fn undecodable(error: FormatError) -> Result<Verdict, FormatError> {
    match error {
        FormatError::CorruptFrame { .. } | FormatError::BadRecord { .. } => {
            Ok(Verdict::Quarantine {
                reason: error.to_string(),
            })
        }
        other => Err(other),
    }
}

/// Moves the file at `path` of `store`, unchanged, to `quarantine/<path>` of the
/// same store; returns the new path.
pub async fn quarantine(store: &dyn Storage, path: &str) -> Result<String, StorageError> {
    let to = Layout::quarantine_path(path);
    store.rename(path, &to, RenameMode::NoOverwrite).await?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed<const N: usize>(entries: [(&str, u64); N]) -> Saved {
        Saved {
            closed: entries.map(|(p, l)| (p.to_owned(), l)).into(),
            ..Saved::default()
        }
    }

    fn abandoned<const N: usize>(generation: u64, entries: [(&str, u64); N]) -> Saved {
        Saved {
            abandoned: entries.map(|(p, l)| (p.to_owned(), l)).into(),
            generation,
            ..Saved::default()
        }
    }

    #[test]
    fn abandoned_files_come_from_the_newest_copy_and_leave_when_repaired() {
        // The spool's copy (generation 7) was written when the file was
        // abandoned; storage's (6) is older. Old snapshots have generation 0.
        let mut ledger = Ledger::from_saved([
            abandoned(6, [("data/t/c1/t-0.zst", 40)]),
            abandoned(7, [("data/t/c1/t-1.zst", 90), ("data/t/c1/t-2.zst", 0)]),
            closed([("data/t/c1/t-9.zst", 5)]),
        ]);
        assert_eq!(
            ledger.abandoned_len("data/t/c1/t-0.zst"),
            None,
            "stale copy"
        );
        assert_eq!(ledger.abandoned_len("data/t/c1/t-1.zst"), Some(90));
        assert_eq!(ledger.abandoned_len("data/t/c1/t-2.zst"), Some(0));
        assert_eq!(ledger.acked_len("data/t/c1/t-9.zst"), Some(5));
        // Repaired: cut back and closed (now a closed file), or deleted.
        ledger.repaired("data/t/c1/t-1.zst");
        ledger.repaired("data/t/c1/t-2.zst");
        assert_eq!(ledger.abandoned_count(), 0);
        assert_eq!(ledger.acked_len("data/t/c1/t-1.zst"), Some(90));
        assert_eq!(ledger.acked_len("data/t/c1/t-2.zst"), None);
        assert!(ledger.abandoning("data/t/c1/t-3.zst", 12));
        assert!(!ledger.abandoning("data/t/c1/t-3.zst", 12), "nothing new");
        let saved = ledger.to_saved();
        assert_eq!(saved.generation, 8, "newer than every copy read");
        assert_eq!(
            saved.abandoned,
            BTreeMap::from([("data/t/c1/t-3.zst".to_owned(), 12)])
        );
        assert_eq!(ledger.to_saved().generation, 9);
        // The older copy does not bring back what the newer one dropped.
        let back = Ledger::from_saved([abandoned(6, [("data/t/c1/t-3.zst", 1)]), saved]);
        assert_eq!(back.abandoned_len("data/t/c1/t-3.zst"), Some(12));
        ledger.forget("data/t/c1/t-3.zst");
        assert_eq!(ledger.abandoned_count(), 0);
    }

    #[test]
    fn entries_are_kept_by_path_bounded_and_pruned() {
        let mut ledger = Ledger::from_saved([
            closed([("data/a/c1/a-1.zst", 10)]),
            closed([("data/a/c1/a-1.zst", 12), ("data/b/c1/b-1.zst", 5)]),
        ]);
        assert_eq!(ledger.acked_len("data/a/c1/a-1.zst"), Some(12));
        assert!(!ledger.closing("data/b/c1/b-1.zst", 5), "nothing new");
        assert!(ledger.closing("data/b/c1/b-2.zst", 7));
        ledger.retain_present(&HashSet::from([
            "data/a/c1/a-1.zst".to_owned(),
            "data/b/c1/b-2.zst".to_owned(),
        ]));
        assert_eq!(ledger.len(), 2);
        assert_eq!(ledger.acked_len("data/b/c1/b-1.zst"), None);
        ledger.forget("data/a/c1/a-1.zst");
        assert_eq!(
            ledger.to_saved().closed,
            BTreeMap::from([("data/b/c1/b-2.zst".to_owned(), 7)])
        );

        let mut full = Ledger::default();
        for i in 0..MAX_FILES + 3 {
            full.closing(&format!("data/t/c1/f{i}"), 1);
        }
        assert_eq!(full.len(), MAX_FILES);
        assert_eq!(
            full.acked_len("data/t/c1/f0"),
            None,
            "the oldest goes first"
        );
        assert_eq!(
            full.acked_len(&format!("data/t/c1/f{}", MAX_FILES + 2)),
            Some(1)
        );
    }
}
