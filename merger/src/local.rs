//! The `local` job: turns collector files into sealed minute directories of the
//! local view (`streams_local/`).
//!
//! # What one pass does
//!
//! 1. Reads every collector heartbeat of this cluster
//!    (`system/heartbeats/<cluster>/*.json`) **before** listing any data
//!    directory, so every file a heartbeat's watermark promises closed is
//!    already visible in the listing that follows.
//! 2. For every topic (directories under `data/` and `streams_local/`, plus the
//!    topics of the config), lists `data/<topic>/<collector>/` and, minute by
//!    minute from the oldest unsealed minute `N`:
//!    * moves every **closed** collector file of minute `M` with one
//!      `rename(.., NoOverwrite)` to
//!      `streams_local/<topic>/<M dir>/<cluster>-<collector>-<collector file name>`
//!      (bytes unchanged, no recompression). A file is closed when its minute is
//!      at or before its collector's heartbeat watermark (the collector's
//!      invariant, see `conduit_core::heartbeat`) or when it ends with a close
//!      trailer (`docs/format.md` §3.2);
//!    * seals `M` by writing `_SUCCESS` (`conduit_core::manifest`) listing every
//!      data file of the directory, once `M` has ended on the worker's clock and
//!      every **live** collector's watermark is `>= M`. A collector is live when
//!      its heartbeat says `running` and was written less than
//!      `worker.collector_timeout_secs` ago; a stopped, silent or missing
//!      collector does not hold sealing back. Empty minutes are sealed too.
//! 3. A closed file whose minute is already sealed (a collector that came back
//!    late, a spool replayed after an outage) is moved into the **oldest unsealed**
//!    minute `N` instead and listed there with its own `minute` and `late: true`.
//! 4. A file the seal cannot list (no close trailer, a name that is no local data
//!    file name) is set aside in `quarantine/` and named in the manifest's
//!    `quarantined` (`crate::quarantine`); the minute is sealed without it, so one
//!    bad file never stops its topic.
//!
//! # Where a topic's stream starts
//!
//! Sealed minutes of a topic form one contiguous run (minutes are sealed in order
//! and never skipped; retention only removes the oldest). When nothing of a topic
//! is sealed yet, its stream starts at the oldest of: the oldest collector file in
//! `data/<topic>/`, the oldest (unsealed) minute directory in
//! `streams_local/<topic>/`, and the current minute. So a new topic's first sealed
//! minute is its first minute with data, and a configured topic without data starts
//! with the minute in which a worker first served it: the worker creates that
//! (empty, unsealed) minute directory at once, so the start survives restarts by
//! the rule above. Afterwards the stream simply continues after the newest sealed
//! minute; data older than that is late.
//!
//! # Crash consistency
//!
//! The worker may be killed between any two storage calls. A rename is the commit
//! of a file: a file is either still in `data/` (and is moved by a later pass) or
//! in exactly one minute directory. Files only go into unsealed directories, and
//! `_SUCCESS` is written last, from a listing of the directory taken after every
//! move into it, so a manifest lists exactly the files present. Leftover `_tmp.`
//! files of an interrupted seal are deleted before the directory is sealed.
//! Re-running after a crash recomputes everything from storage: the newest sealed
//! minute (checkpoint hint verified against `_SUCCESS` markers, or a scan of the
//! directory tree) and the files still in `data/`.
//!
//! # Bounded work per pass
//!
//! A pass seals at most [`MAX_MINUTES_PER_PASS`] minutes and moves at most
//! [`MAX_LATE_FILES_PER_PASS`] late files per topic, and keeps only the listing
//! entries of those minutes, so catching up hours of backlog runs in bounded
//! memory (beyond one directory listing) and returns regularly to the daemon.
//!
//! # Checkpoints
//!
//! `system/checkpoints/local/<topic>.json` holds the newest sealed minute
//! ([`LocalCheckpoint`], `docs/format.md` §8.2), saved after each pass that sealed
//! something. It is a hint: it is used only if its minute's `_SUCCESS` exists, and
//! then advanced while the next minute is sealed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use conduit_core::format::{read_trailer, TRAILER_LEN};
use conduit_core::heartbeat::{CollectorState, Heartbeat};
use conduit_core::layout::Layout;
use conduit_core::manifest::checksum_file;
use conduit_core::records::LocalCheckpoint;
use conduit_core::tree::{self, CollectorFile};
use conduit_core::{Manifest, Minute, NodeName, RenameMode, Storage, StorageError, Topic, View};

use crate::checkpoint::Checkpoints;
use crate::dedup::{self, TopicDedup, Window};
use crate::metrics::{SealProgress, SealView};
use crate::seal::{Sealed, Sealer};
use crate::{JobEnv, PassReport, TopicJob, WorkerError};

/// The job's name (command line, metrics, checkpoints).
pub const JOB_NAME: &str = "local";

/// Most minutes one pass seals per topic.
pub const MAX_MINUTES_PER_PASS: usize = 60;

/// Most late files one pass moves per topic.
pub const MAX_LATE_FILES_PER_PASS: usize = 1000;

/// How many minutes forward a checkpoint hint is advanced by probing markers
/// before falling back to a scan of the directory tree.
const MAX_FORWARD_PROBES: usize = 10_000;

/// What the heartbeats say about one collector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CollectorView {
    /// Files of minutes at or before it are closed.
    watermark: Option<Minute>,
    /// Running and heard from within `collector_timeout_secs`.
    live: bool,
}

/// What the heartbeats of this cluster say, by collector.
type Collectors = BTreeMap<NodeName, CollectorView>;

/// The `local` job of one cluster; see the [module docs](self).
#[derive(Debug)]
pub struct LocalJob {
    env: JobEnv,
    checkpoints: Checkpoints,
    /// Newest sealed minute per topic, as far as this process knows (verified
    /// against storage at the start of each topic's pass).
    sealed: BTreeMap<Topic, Minute>,
    /// What the deduplication of each topic carries to the seal of its next
    /// minute (rebuilt from the checkpoint or the views when missing).
    dedup: BTreeMap<Topic, TopicDedup>,
    progress: SealProgress,
}

impl LocalJob {
    /// The job for `env.this`.
    pub fn new(env: JobEnv) -> Self {
        let checkpoints = Checkpoints::new(env.this.storage.clone(), env.clock.clone(), JOB_NAME);
        LocalJob {
            env,
            checkpoints,
            sealed: BTreeMap::new(),
            dedup: BTreeMap::new(),
            progress: SealProgress::default(),
        }
    }

    /// The newest sealed minute per topic, updated by every pass (for the lag
    /// metric).
    pub fn progress(&self) -> SealProgress {
        self.progress.clone()
    }

    fn storage(&self) -> &dyn Storage {
        &*self.env.this.storage
    }

    /// Liveness and watermark of every collector with a heartbeat.
    async fn collectors(&self) -> Result<Collectors, WorkerError> {
        let (beats, bad) = Heartbeat::read_all(self.storage(), &self.env.this.name).await?;
        for (path, reason) in bad {
            tracing::warn!(%path, %reason, "ignoring unreadable heartbeat");
        }
        let now = self.env.clock.now();
        let timeout = chrono::Duration::seconds(
            i64::try_from(self.env.config.worker.collector_timeout_secs).unwrap_or(i64::MAX / 1000),
        );
        Ok(beats
            .into_iter()
            .map(|b| {
                let live = b.state == CollectorState::Running && now - b.updated_at <= timeout;
                (
                    b.collector,
                    CollectorView {
                        watermark: b.watermark,
                        live,
                    },
                )
            })
            .collect())
    }

    /// Every topic this cluster has: configured, in `data/` or in `streams_local/`.
    async fn served_topics(&self) -> Result<BTreeSet<Topic>, WorkerError> {
        let mut topics = self.env.configured_topics();
        for view in [View::Collector, View::Local] {
            topics.extend(tree::topics(self.storage(), view).await?);
        }
        Ok(topics)
    }

    /// Whether a collector file is closed (and so will never change).
    async fn is_closed(
        &self,
        file: &CollectorFile,
        collectors: &Collectors,
    ) -> Result<bool, WorkerError> {
        let promised = collectors
            .get(&file.collector)
            .and_then(|c| c.watermark)
            .is_some_and(|w| file.name.minute <= w);
        if promised {
            return Ok(true);
        }
        if file.len < TRAILER_LEN as u64 {
            return Ok(false);
        }
        // The listed length never exceeds the final one (on HDFS an open file's
        // may lag what was synced), so under 40 bytes it is not closed yet; a
        // closed file's trailer is its last 40 bytes, and a closed file never grows.
        let len = match self.storage().len(&file.path).await {
            Ok(len) => len,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        match read_trailer(self.storage(), &file.path, len).await {
            Ok(trailer) => Ok(trailer.is_some()),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves one closed collector file into the minute directory `into`.
    /// Returns false if the file was gone already.
    async fn move_file(
        &self,
        topic: &Topic,
        file: &CollectorFile,
        into: Minute,
    ) -> Result<bool, WorkerError> {
        let name = Layout::local_file_name(
            &self.env.this.name,
            &file.collector,
            file.name.minute,
            file.name.seq,
            topic,
        );
        let to = format!("{}/{name}", Layout::minute_dir(View::Local, topic, into));
        self.env.fence.check().await?;
        match self
            .storage()
            .rename(&file.path, &to, RenameMode::NoOverwrite)
            .await
        {
            Ok(()) => {
                tracing::debug!(from = %file.path, %to, "moved");
                Ok(true)
            }
            Err(e) if e.is_not_found() => {
                tracing::warn!(path = %file.path, "collector file vanished before it was moved");
                Ok(false)
            }
            Err(e) if e.is_already_exists() => {
                // Length and CRC-32C, as copies are checked (`crate::copy`).
                let same = checksum_file(self.storage(), &file.path).await?
                    == checksum_file(self.storage(), &to).await?;
                if same {
                    // Delivered twice (a collector's spool replay whose first copy
                    // was moved before the spool let go of it): one copy is enough.
                    tracing::warn!(
                        from = %file.path,
                        %to,
                        "a second copy of a file already in the local view (same length and CRC-32C): deleted, not sealed twice"
                    );
                    self.env.fence.check().await?;
                    self.storage().delete(&file.path, false).await?;
                    return Ok(false);
                }
                Err(WorkerError::Other(format!(
                    "cannot move {} to {to}: a different file of the same name is there already (two files of one collector took one sequence number); move the file in data/ to quarantine/ to let the topic seal on, and see docs/operations.md",
                    file.path
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn is_sealed(&self, topic: &Topic, minute: Minute) -> Result<bool, StorageError> {
        Manifest::is_sealed(
            self.storage(),
            &Layout::minute_dir(View::Local, topic, minute),
        )
        .await
    }

    /// The newest sealed minute of `topic`: from memory or the checkpoint
    /// `saved`, verified and advanced against the markers, else from a scan.
    async fn newest_sealed(
        &mut self,
        topic: &Topic,
        saved: Option<&LocalCheckpoint>,
    ) -> Result<Option<Minute>, WorkerError> {
        let hint = match self.sealed.get(topic) {
            Some(m) => Some(*m),
            None => saved.map(|c| c.last_sealed),
        };
        if let Some(mut last) = hint {
            if self.is_sealed(topic, last).await? {
                for _ in 0..MAX_FORWARD_PROBES {
                    let Ok(next) = last.next() else {
                        return Ok(Some(last));
                    };
                    if !self.is_sealed(topic, next).await? {
                        return Ok(Some(last));
                    }
                    last = next;
                }
            } else {
                tracing::info!(%topic, hint = %last, "checkpoint hint is not sealed; scanning");
            }
        }
        Ok(tree::newest_sealed_dir(self.storage(), View::Local, topic).await?)
    }

    /// Where the stream of a topic with nothing sealed starts (module docs).
    async fn stream_start(
        &self,
        topic: &Topic,
        files: &[CollectorFile],
    ) -> Result<Minute, WorkerError> {
        let mut start = self.env.clock.minute();
        if let Some(first) = files.first() {
            start = start.min(first.name.minute);
        }
        match tree::oldest_dir(self.storage(), View::Local, topic).await? {
            Some(oldest_dir) => start = start.min(oldest_dir),
            None => {
                // Remember where the stream starts: the oldest minute directory
                // is part of the rule above, so the next pass (or another
                // worker) starts here too.
                self.storage()
                    .mkdirs(&Layout::minute_dir(View::Local, topic, start))
                    .await?;
            }
        }
        Ok(start)
    }

    /// The deduplication state for the seal of `next` of `topic`: kept from the
    /// previous seal, else from the checkpoint `saved` if it was written right
    /// after the minute before `next` was sealed, else empty; then filled in from
    /// the views with the sealed minutes of the window it does not cover.
    async fn dedup_for(
        &mut self,
        topic: &Topic,
        next: Minute,
        saved: Option<LocalCheckpoint>,
    ) -> Result<TopicDedup, WorkerError> {
        let window_minutes = self.env.config.worker.dedup_window_minutes;
        let oldest = next
            .add_minutes(-i64::try_from(window_minutes).unwrap_or(i64::MAX / 2))
            .unwrap_or(Minute::MIN);
        let before = next.prev().ok();
        let mut state = match self.dedup.remove(topic) {
            Some(state) if Some(state.window().through()) == before => state,
            _ => match saved {
                Some(LocalCheckpoint {
                    last_sealed,
                    dedup: Some(dedup),
                }) if Some(last_sealed) == before => {
                    TopicDedup::new(Window::from_checkpoint(last_sealed, &dedup), dedup.sealing)
                }
                _ => TopicDedup::new(Window::before(next), None),
            },
        };
        // The window always ends with the minute before `next`; what it may lack
        // is its oldest minutes, read newest first so that it stays one range.
        let mut filled = 0;
        let mut minute = state.window().from().prev().ok();
        while let Some(m) = minute.filter(|m| *m >= oldest) {
            let parts = dedup::sealed_parts(self.storage(), topic, m).await?;
            state.fill(m, parts);
            filled += 1;
            minute = m.prev().ok();
        }
        state.forget_before(oldest);
        if filled > 0 {
            tracing::debug!(%topic, %next, filled, parts = state.window().len(),
                "read the batches of sealed minutes for the deduplication window");
        }
        Ok(state)
    }

    /// Seals `minute` of `topic` (`crate::seal`) and keeps the deduplication state
    /// for the next minute.
    async fn seal(
        &mut self,
        topic: &Topic,
        minute: Minute,
        saved: &mut Option<LocalCheckpoint>,
        report: &mut PassReport,
    ) -> Result<Sealed, WorkerError> {
        let started = Instant::now();
        let mut state = self.dedup_for(topic, minute, saved.take()).await?;
        report.timed("dedup", started);
        let sealer = Sealer {
            env: &self.env,
            checkpoints: &self.checkpoints,
        };
        let sealed = sealer.seal(topic, minute, &state, report).await?;
        if let Some(kept) = &sealed.kept {
            state.sealed(
                minute,
                kept.clone(),
                self.env.config.worker.dedup_window_minutes,
            );
            self.dedup.insert(topic.clone(), state);
        }
        Ok(sealed)
    }

    /// Whether `minute` may be sealed now.
    fn sealable(&self, minute: Minute, collectors: &Collectors) -> bool {
        self.env.clock.now() >= minute.end()
            && collectors
                .values()
                .filter(|c| c.live)
                .all(|c| c.watermark.is_some_and(|w| w >= minute))
    }

    /// Moves and seals what is ready of `topic` (module docs), adding to `report`.
    async fn seal_topic(
        &mut self,
        topic: &Topic,
        collectors: &Collectors,
        report: &mut PassReport,
    ) -> Result<(), WorkerError> {
        // The checkpoint is read only when this process knows nothing of the topic.
        let mut saved = match (
            self.sealed.contains_key(topic),
            self.dedup.contains_key(topic),
        ) {
            (true, true) => None,
            _ => {
                self.checkpoints
                    .load::<LocalCheckpoint>(topic.as_str())
                    .await
            }
        };
        let started = Instant::now();
        let last = self.newest_sealed(topic, saved.as_ref()).await?;
        let mut files = tree::collector_files(self.storage(), topic).await?;
        report.timed("list", started);
        let mut next = match last {
            Some(last) => last.next().map_err(|e| WorkerError::Other(e.to_string()))?,
            None => self.stream_start(topic, &files).await?,
        };
        let window_end = next
            .add_minutes(MAX_MINUTES_PER_PASS as i64)
            .unwrap_or(Minute::MAX);
        files.retain(|f| f.name.minute < window_end);
        if let Some(last) = last {
            self.sealed.insert(topic.clone(), last);
            self.progress.record(SealView::Local, topic, last);
        }

        // Late files: their minute is sealed; they go to the oldest unsealed one.
        let split = files.partition_point(|f| f.name.minute < next);
        let mut late_moved = 0;
        let started = Instant::now();
        for file in &files[..split] {
            if late_moved >= MAX_LATE_FILES_PER_PASS {
                break;
            }
            if self.is_closed(file, collectors).await? && self.move_file(topic, file, next).await? {
                tracing::info!(%topic, path = %file.path, minute = %file.name.minute, into = %next,
                    "late file moved into the oldest unsealed minute");
                late_moved += 1;
                report.files += 1;
                report.late_files += 1;
            }
        }
        report.timed("move", started);

        // Minutes in order: move their closed files, then seal if allowed.
        let mut rest = &files[split..];
        let mut sealed_now = 0;
        for _ in 0..MAX_MINUTES_PER_PASS {
            let count = rest.partition_point(|f| f.name.minute == next);
            let started = Instant::now();
            for file in &rest[..count] {
                if self.is_closed(file, collectors).await?
                    && self.move_file(topic, file, next).await?
                {
                    report.files += 1;
                }
            }
            report.timed("move", started);
            rest = &rest[count..];
            if !self.sealable(next, collectors) {
                break;
            }
            let sealed = self.seal(topic, next, &mut saved, report).await?;
            report.quarantined += sealed.quarantined;
            report.duplicates_dropped += sealed.duplicates_dropped;
            self.sealed.insert(topic.clone(), next);
            self.progress.record(SealView::Local, topic, next);
            report.sealed += 1;
            sealed_now += 1;
            match next.next() {
                Ok(m) => next = m,
                Err(_) => break,
            }
        }
        let current = self.env.clock.minute();
        report.pending +=
            u64::try_from(current.epoch_minutes() - next.epoch_minutes()).unwrap_or(0);
        if sealed_now > 0 {
            let started = Instant::now();
            if let Some(last) = self.sealed.get(topic).copied() {
                if let Err(e) = self
                    .checkpoints
                    .save(
                        topic.as_str(),
                        &LocalCheckpoint {
                            last_sealed: last,
                            dedup: self
                                .dedup
                                .get(topic)
                                .filter(|d| d.window().through() == last)
                                .map(|d| d.window().to_checkpoint()),
                        },
                    )
                    .await
                {
                    tracing::warn!(%topic, error = %e, "cannot save checkpoint (a hint only)");
                }
            }
            report.timed("checkpoint", started);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl TopicJob for LocalJob {
    /// The heartbeats, read once per pass before any data directory is listed.
    type Plan = Arc<Collectors>;

    const NAME: &'static str = JOB_NAME;

    async fn topics(&mut self) -> Result<Vec<(Topic, Self::Plan)>, WorkerError> {
        // Heartbeats first: a watermark read now promises files visible below.
        let collectors = Arc::new(self.collectors().await?);
        let topics = self.served_topics().await?;
        Ok(topics
            .into_iter()
            .map(|t| (t, collectors.clone()))
            .collect())
    }

    async fn pass_topic(
        &mut self,
        topic: &Topic,
        collectors: Self::Plan,
    ) -> Result<PassReport, WorkerError> {
        let mut report = PassReport::default();
        let result = self.seal_topic(topic, &collectors, &mut report).await;
        if result.is_err() {
            // Forget what this process believed; re-verify next pass.
            self.sealed.remove(topic);
            self.dedup.remove(topic);
        }
        result.map(|()| report)
    }
}
