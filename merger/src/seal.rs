//! Sealing one minute of the local view: list its files, set aside those that
//! cannot be sealed, drop second copies of publisher batches, write `_SUCCESS`.
//!
//! For minute `M` of a topic, once every file of `M` is in its directory:
//!
//! 1. **List and inspect** the directory: `_tmp.` leftovers of an interrupted
//!    seal are deleted; every data file is described by one ranged read of its
//!    tail when its close trailer carries the collector's CRC-32C (length from
//!    the listing, the CRC-32C of the whole file from the trailer's, the index;
//!    `crate::quarantine::inspect`), else read once in full (length, CRC-32C,
//!    trailer, the trailer's checksum, the index); a file that holds no record (zero
//!    bytes, or a close trailer counting none: a file created for a call that
//!    was then refused) is deleted, never listed; a file that cannot be sealed
//!    is set aside in `quarantine/` (`crate::quarantine`).
//! 2. **Plan** which batch parts are second copies (`crate::dedup::plan`),
//!    against the parts of the sealed minutes before (the topic's
//!    [`TopicDedup`] window).
//! 3. **Drop them** (`crate::rewrite`): every affected file is written again under
//!    its staging name; only when all are staged are their per-file counts saved in
//!    the local checkpoint (`sealing`), and then each is renamed over its file. A
//!    file that turns out unsealable while being rewritten is set aside and the
//!    minute is planned again without it (its parts may have been the first
//!    copies).
//! 4. **Seal**: the manifest lists every file with its (new) length, CRC and
//!    records, `duplicates_dropped`, and every file set aside (also those an
//!    interrupted seal of `M` set aside before). A file left with no record
//!    (every record was a second copy) is deleted instead of listed; its
//!    dropped records still count (from the checkpoint's `sealing` when an
//!    interrupted seal emptied it).
//!
//! # Crash consistency
//!
//! Killed at any point, the next seal of `M` starts again from step 1 (an empty
//! file not yet deleted is deleted then; one deleted is simply not there). The kept
//! copies are never rewritten, so the plan finds the same duplicates in the files
//! not renamed yet and none in those already renamed; the counts of the latter
//! come from the checkpoint's `sealing`, saved before the first rename. A staging
//! file left behind is deleted in step 1. So the sealed minute holds every
//! acknowledged record once, and the manifest counts what was dropped, whatever
//! instant the worker was killed at (tested by failing every storage call of a
//! pass in turn). Only losing the checkpoint between a rename and the seal
//! under-counts `duplicates_dropped` of that minute (never the records).

use std::collections::BTreeMap;
use std::time::Instant;

use conduit_core::layout::{Layout, LocalFileName};
use conduit_core::ratelimit;
use conduit_core::records::{LocalCheckpoint, SealInProgress};
use conduit_core::{
    Manifest, ManifestError, ManifestFile, Minute, RenameMode, Storage, Topic, View,
};

use crate::checkpoint::Checkpoints;
use crate::dedup::{self, PartKey, PartRef, Plan, TopicDedup};
use crate::quarantine::{self, inspect, quarantined_earlier, Sealable, Unsealable, Verdict};
use crate::rewrite::{self, Outcome, Rewritten, Source};
use crate::{JobEnv, PassReport, WorkerError};

/// What a seal did besides listing the files, for the pass report and the
/// deduplication window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sealed {
    /// Files set aside in `quarantine/`.
    pub(crate) quarantined: u64,
    /// Records dropped as second copies of publisher batches.
    pub(crate) duplicates_dropped: u64,
    /// The batch parts the minute holds (one copy each); `None` when another
    /// worker sealed the minute first, so what it holds is not known here.
    pub(crate) kept: Option<Vec<PartKey>>,
}

/// A data file of the minute that can be listed.
#[derive(Debug)]
struct Candidate {
    /// Its name in the directory.
    name: String,
    /// Its path.
    path: String,
    /// What the name says.
    parsed: LocalFileName,
    /// What reading it said.
    inspected: Sealable,
    /// Its batch parts (none without an index).
    parts: Vec<PartRef>,
}

/// Seals minutes of one cluster's local view.
#[derive(Debug)]
pub(crate) struct Sealer<'a> {
    /// The job's environment.
    pub(crate) env: &'a JobEnv,
    /// The `local` job's checkpoints (where `sealing` is saved).
    pub(crate) checkpoints: &'a Checkpoints,
}

impl Sealer<'_> {
    fn storage(&self) -> &dyn Storage {
        &*self.env.this.storage
    }

    /// Seals `minute` of `topic`; see the [module docs](self). `dedup` must cover
    /// the sealed minutes before it; it is not updated here.
    pub(crate) async fn seal(
        &self,
        topic: &Topic,
        minute: Minute,
        dedup: &TopicDedup,
        report: &mut PassReport,
    ) -> Result<Sealed, WorkerError> {
        let dir = Layout::minute_dir(View::Local, topic, minute);
        let mut quarantined = Vec::new();
        let (candidates, plan, rewritten) = loop {
            let started = Instant::now();
            let listed = self.list(&dir, minute, &mut quarantined).await?;
            report.timed("inspect", started);
            let Some(candidates) = listed else {
                return Ok(Sealed::default());
            };
            let started = Instant::now();
            let plan = dedup::plan(
                dedup.window(),
                candidates.iter().map(|c| (c.name.as_str(), &c.parts[..])),
            );
            let dropped = self
                .drop_duplicates(topic, minute, &candidates, &plan, dedup)
                .await?;
            report.timed("dedup", started);
            match dropped {
                Ok(rewritten) => {
                    for c in &candidates {
                        *report
                            .seal_checks
                            .entry(c.inspected.check.as_str())
                            .or_default() += 1;
                    }
                    break (candidates, plan, rewritten);
                }
                Err((candidate, why)) => {
                    let c = &candidates[candidate];
                    quarantine::set_aside(self.storage(), &*self.env.fence, &c.path, &why).await?;
                    quarantined.push(why.entry(&c.name));
                }
            }
        };
        quarantined.extend(quarantined_earlier(self.storage(), &dir, &quarantined).await?);

        let earlier = dedup.interrupted(minute);
        let mut files = Vec::with_capacity(candidates.len());
        // Per file: what is dropped now, else what an interrupted seal dropped
        // before it renamed the file (or deleted it, emptied) and was stopped.
        let mut dropped: BTreeMap<&str, u64> = earlier
            .map(|e| e.dropped.iter().map(|(k, v)| (k.as_str(), *v)).collect())
            .unwrap_or_default();
        for (name, r) in &rewritten {
            if r.dropped > 0 {
                dropped.insert(name, r.dropped);
            }
        }
        for q in &quarantined {
            dropped.remove(q.name.as_str());
        }
        let duplicates_dropped: u64 = dropped.values().sum();
        for c in candidates {
            let (bytes, crc32c, records) = match rewritten.get(&c.name) {
                Some(r) => (r.bytes, r.crc32c, r.trailer.records),
                None => {
                    let f = &c.inspected.file;
                    (f.bytes, f.crc32c, f.trailer.records)
                }
            };
            if records == 0 {
                // Every record was a second copy: nothing left to list.
                self.env.fence.check().await?;
                self.storage().delete(&c.path, false).await?;
                tracing::info!(path = %c.path, "deleted a data file that holds no record; not sealed");
                continue;
            }
            files.push(ManifestFile {
                name: c.name,
                bytes,
                records,
                crc32c,
                cluster: c.parsed.cluster,
                collector: Some(c.parsed.collector),
                minute: c.parsed.minute,
                late: c.parsed.minute < minute,
            });
        }
        let sealed = Sealed {
            quarantined: quarantined.len() as u64,
            duplicates_dropped,
            kept: Some(plan.kept),
        };
        let manifest = Manifest::new(
            View::Local,
            topic.clone(),
            minute,
            vec![self.env.this.name.clone()],
            Vec::new(),
            self.env.clock.now(),
            self.env.worker_id.clone(),
            files,
        )
        .with_seal_notes(duplicates_dropped, quarantined);
        self.env.fence.check().await?;
        let started = Instant::now();
        let written = manifest.seal(self.storage()).await;
        report.timed("manifest", started);
        match written {
            Ok(()) => {
                tracing::debug!(%dir, files = manifest.files.len(), records = manifest.records,
                    duplicates_dropped, "sealed");
                if duplicates_dropped > 0 {
                    if let Some(suppressed) = ratelimit::allow("seal_duplicates_dropped") {
                        tracing::info!(%topic, %minute, duplicates_dropped,
                            window_minutes = self.env.config.worker.dedup_window_minutes,
                            suppressed,
                            "dropped second copies of publisher batches stored by two collectors");
                    }
                }
                Ok(sealed)
            }
            Err(ManifestError::AlreadySealed { path }) => {
                tracing::warn!(%path, "minute was sealed by someone else");
                Ok(Sealed::default())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Step 1: the data files of `dir` that can be sealed, in name order, after
    /// deleting staging leftovers and setting aside the others (added to
    /// `quarantined`). `None` if the directory is sealed already.
    async fn list(
        &self,
        dir: &str,
        minute: Minute,
        quarantined: &mut Vec<conduit_core::QuarantinedFile>,
    ) -> Result<Option<Vec<Candidate>>, WorkerError> {
        let mut candidates = Vec::new();
        for entry in self.storage().list_or_empty(dir).await? {
            if entry.name == Layout::SUCCESS_MARKER {
                tracing::warn!(%dir, %minute, "minute was sealed by someone else");
                return Ok(None);
            }
            if Layout::is_tmp(&entry.name) {
                // Left by an interrupted seal; never part of the view.
                self.storage().delete(&entry.path, false).await?;
                continue;
            }
            if entry.is_dir || Layout::is_hidden(&entry.name) {
                tracing::warn!(path = %entry.path, "unexpected entry in a minute directory; not listed");
                continue;
            }
            let verdict = match Layout::parse_local_file_name(&entry.name) {
                Ok(parsed) => match inspect(
                    self.storage(),
                    &entry.path,
                    entry.len,
                    self.env.config.worker.seal_reads_files,
                )
                .await?
                {
                    Verdict::Sealable(inspected) => Ok((parsed, inspected)),
                    Verdict::Unsealable(why) => Err(why),
                },
                Err(e) => Err(Unsealable::NotADataFile {
                    reason: e.to_string(),
                }),
            };
            if self.holds_no_record(&entry.path, &verdict).await? {
                // Nothing to list (a file created for a call that was then
                // refused, say): deleted, so no manifest lists an empty file.
                self.env.fence.check().await?;
                self.storage().delete(&entry.path, false).await?;
                tracing::info!(path = %entry.path, "deleted a data file that holds no record; not sealed");
                continue;
            }
            match verdict {
                Ok((parsed, inspected)) => {
                    let parts = inspected
                        .index
                        .as_deref()
                        .map(dedup::parts_of)
                        .unwrap_or_default();
                    candidates.push(Candidate {
                        name: entry.name,
                        path: entry.path,
                        parsed,
                        inspected,
                        parts,
                    });
                }
                Err(why) => {
                    quarantine::set_aside(self.storage(), &*self.env.fence, &entry.path, &why)
                        .await?;
                    quarantined.push(why.entry(&entry.name));
                }
            }
        }
        Ok(Some(candidates))
    }

    /// Whether the data file at `path` holds no record: zero bytes, or a close
    /// trailer that counts none (and nothing but the trailer and index before
    /// it is a record). Such a file is never sealed.
    async fn holds_no_record(
        &self,
        path: &str,
        verdict: &Result<(LocalFileName, Sealable), Unsealable>,
    ) -> Result<bool, WorkerError> {
        match verdict {
            Ok((_, inspected)) => Ok(inspected.file.trailer.records == 0),
            // The real length, not the listed one: a closed file never grows.
            Err(Unsealable::NoTrailer) => match self.storage().len(path).await {
                Ok(len) => Ok(len == 0),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(e.into()),
            },
            Err(_) => Ok(false),
        }
    }

    /// Step 3: stages a rewrite of every file `plan` drops records from, saves the
    /// counts, then renames each over its file. Returns the rewritten files by
    /// name, or the index of a candidate that turned out unsealable (nothing
    /// renamed then, staging files deleted).
    async fn drop_duplicates(
        &self,
        topic: &Topic,
        minute: Minute,
        candidates: &[Candidate],
        plan: &Plan,
        dedup: &TopicDedup,
    ) -> Result<Result<BTreeMap<String, Rewritten>, (usize, Unsealable)>, WorkerError> {
        let mut staged: Vec<(usize, String, Rewritten)> = Vec::new();
        let level = self.env.config.collector.zstd_level;
        for (name, drops) in &plan.drops {
            let Some(i) = candidates.iter().position(|c| &c.name == name) else {
                continue;
            };
            let c = &candidates[i];
            let file = &c.inspected.file;
            let source = Source {
                path: &c.path,
                len: file.bytes,
                trailer: file.trailer,
                close: file.close,
                index: c.inspected.index.as_deref().unwrap_or_default(),
            };
            let tmp = Layout::tmp_path(&c.path);
            match rewrite::rewrite(self.storage(), &source, &tmp, drops, level).await? {
                Outcome::Staged(done) => staged.push((i, tmp, done)),
                Outcome::Unsealable(why) => {
                    self.delete_quietly(&tmp).await;
                    for (_, tmp, _) in &staged {
                        self.delete_quietly(tmp).await;
                    }
                    return Ok(Err((i, why)));
                }
            }
        }
        if staged.is_empty() {
            return Ok(Ok(BTreeMap::new()));
        }

        // The counts first: once a file is renamed, its duplicates are gone.
        let mut dropped = dedup
            .interrupted(minute)
            .map(|e| e.dropped.clone())
            .unwrap_or_default();
        for (i, _, done) in &staged {
            if done.dropped > 0 {
                dropped.insert(candidates[*i].name.clone(), done.dropped);
            }
        }
        let mut saved = dedup.window().to_checkpoint();
        saved.sealing = Some(SealInProgress { minute, dropped });
        self.checkpoints
            .save(
                topic.as_str(),
                &LocalCheckpoint {
                    last_sealed: dedup.window().through(),
                    dedup: Some(saved),
                },
            )
            .await?;

        let mut rewritten = BTreeMap::new();
        for (i, tmp, done) in staged {
            let c = &candidates[i];
            self.env.fence.check().await?;
            self.storage()
                .rename(&tmp, &c.path, RenameMode::Overwrite)
                .await?;
            tracing::debug!(path = %c.path, dropped = done.dropped, "rewrote without duplicates");
            rewritten.insert(c.name.clone(), done);
        }
        Ok(Ok(rewritten))
    }

    /// Deletes a staging file, logging (not failing) if that does not work: the
    /// next seal of the directory deletes it anyway.
    async fn delete_quietly(&self, path: &str) {
        if let Err(e) = self.storage().delete(path, false).await {
            tracing::warn!(%path, error = %e, "cannot delete a staging file; the next seal will");
        }
    }
}
