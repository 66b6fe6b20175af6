//! The merge job: on cluster X, `streams/<topic>/yyyy/MM/dd/HH/mm/` is the union of
//! the sealed local minutes of every source cluster of the topics merged into X.
//!
//! # Rules
//!
//! - Topics served: those whose resolved `merge_into` is this cluster (configured
//!   topics, plus topics found in the sources' `streams_local/` when
//!   `topic_defaults.merge_into` is this cluster). Sources: `merge_sources` (every
//!   cluster when empty).
//! - Merged minutes are sealed strictly in order, oldest first. The **frontier** F
//!   is the oldest unsealed merged minute; every merged minute before it is sealed.
//!   F is only considered once it has ended on the worker clock.
//! - A source S is **included** in F when S has sealed its local minute F and every
//!   local minute of S not yet placed (see below). Then F receives every file of
//!   those local minutes. Absent local minutes (before S's view starts, or purged)
//!   count as empty once S has sealed F.
//! - A source that is not ready blocks F only while it is not **lagging**: S lags
//!   when its newest sealed local minute (as last seen; a source that cannot be
//!   read keeps the last value seen) ended more than `worker.max_source_lag_secs`
//!   ago, or, when S has no sealed local minute at all (a new topic or a new
//!   source), once F itself ended that long ago. Then F is sealed without S and
//!   lists S in `missing_clusters`. The frontier never waits on a hole.
//! - A source with no sealed local minute of a topic is asked, once per process, to
//!   serve it: the job creates the empty, unsealed local minute directory F on S,
//!   which S's local job adopts as the start of the topic's stream and seals
//!   (empty) as soon as S's collectors have passed F. So a topic that only some
//!   datacenters carry is merged seconds after each minute, with every source
//!   listed in `clusters`, instead of after the lag.
//! - **Placement rule** (what makes it exactly once): the files of S's local minute
//!   L go to the first merged minute `>= L` whose manifest lists S in `clusters`.
//!   For minutes after the last merged minute including S, S appears in
//!   `missing_clusters`; those local minutes are "pending" and all land in the next
//!   merged minute that includes S, marked `late` with their original minute.
//!   Everything the job needs to know is in the sealed manifests: walking back from
//!   the frontier to the newest manifest listing S in `clusters` (or not listing S
//!   at all: S was not a source then, or the directory is gone) gives S's placed
//!   minutes. A checkpoint (`system/checkpoints/merge/<topic>.json`,
//!   `docs/format.md` §8.3) caches that walk; it is validated against the
//!   manifests and ignored when it disagrees.
//! - Copies are byte-identical, to the same file name, through a hidden temporary
//!   name, verified by length and CRC-32C against the source manifest, renamed
//!   without overwrite after a fence check ([`crate::copy`]). For a topic with
//!   `format = "gzip"` each file is instead transcoded to a `.gz` file of the same
//!   stem, by the same steps, verified by its record count and listed with its own
//!   length and CRC-32C ([`crate::transcode`]); the local view stays zstd.
//! - Before sealing F, the job deletes from F's directory every `_tmp.*` leftover and
//!   every data file that is not part of F's plan (a copy from a source that was
//!   included by a crashed run but is not now: its local minute still holds the
//!   original, which stays pending). Then, after a fence check, it writes the
//!   manifest (`view` merged, `clusters` included, `missing_clusters` not waited for,
//!   every file with its original minute and `late` flag).
//!
//! # Crashes
//!
//! A crash at any point leaves the frontier unsealed, possibly with some verified
//! copies and `_tmp.` files in it. The next run rebuilds the same state from the
//! manifests, skips the identical copies, redoes the rest, tidies the directory and
//! seals. A file is in exactly one merged minute: the one chosen by the placement
//! rule, which only depends on sealed manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{DateTime, Utc};

use conduit_core::format::gzip::gz_name;
use conduit_core::format::Codec;
use conduit_core::layout::Layout;
use conduit_core::records::{decode, MergeCheckpoint, RecordError, Version};
use conduit_core::storage::OwnedWrites;
use conduit_core::tree::{self, newest_sealed_dir, oldest_dir};
use conduit_core::{Manifest, ManifestError, ManifestFile, Minute, NodeName, Topic, View};

use crate::copy::{copy_all, dir_state, tidy_unsealed, CopyTask, DirState, FailingClusters};
use crate::metrics::{SealProgress, SealView};
use crate::transcode::transcode_all;
use crate::{Cluster, JobEnv, PassReport, TopicJob, WorkerError};

/// Merged minutes sealed per topic in one pass at most (catch-up continues in the
/// next pass, so a pass stays short and progress is reported).
const MAX_MINUTES_PER_PASS: u64 = 240;

/// What the job remembers about one topic between passes.
#[derive(Debug, Clone)]
struct TopicState {
    /// The oldest unsealed merged minute.
    frontier: Minute,
    /// Per source: every local minute up to this one has been placed in a sealed
    /// merged minute (always `< frontier`).
    placed_through: BTreeMap<NodeName, Minute>,
    /// Per source: the newest sealed local minute seen so far (for the lag rule).
    newest_sealed: BTreeMap<NodeName, Minute>,
    /// Per source whose last read failed: when reading it first failed (cleared
    /// by a successful read). A source never read successfully counts as
    /// lagging only once it has been unreadable for longer than the lag, so a
    /// transient error after a restart does not skip a healthy source. Each
    /// pass reads these sources again, even when the frontier is not due.
    unreadable_since: BTreeMap<NodeName, DateTime<Utc>>,
    /// Sources asked to start serving this topic (see [`MergeJob::lagging`]).
    adopted: BTreeSet<NodeName>,
}

/// Whether a source can be included in the frontier.
enum Readiness {
    /// Included: the files to copy, each with the local directory it comes from.
    Ready(Vec<(String, ManifestFile)>),
    /// Not yet (its local minute is not sealed, or it cannot be read).
    NotReady,
}

/// The merge job of one cluster; see the [module docs](self).
#[derive(Debug)]
pub struct MergeJob {
    env: JobEnv,
    topics: BTreeMap<Topic, TopicState>,
    /// The newest sealed minute per topic (for the lag metric).
    progress: SealProgress,
    /// Sources whose last read failed (for their log level).
    failing: FailingClusters,
    /// Checkpoint saves, sweeping the copies a failed save left.
    checkpoint_writes: OwnedWrites,
}

impl MergeJob {
    /// A merge job writing to `env.this`.
    pub fn new(env: JobEnv) -> Self {
        MergeJob {
            env,
            topics: BTreeMap::new(),
            progress: SealProgress::default(),
            failing: FailingClusters::default(),
            checkpoint_writes: OwnedWrites::default(),
        }
    }

    /// Notes a failed read of `source`; true if it is the first since the
    /// last successful one (log it at WARN then, at DEBUG otherwise).
    fn source_failed(&self, source: &NodeName) -> bool {
        self.failing.failed(source)
    }

    /// Notes a successful read of `source`, logging when it had been failing.
    fn source_read(&self, source: &NodeName) {
        self.failing.read(
            source,
            "a merge source that could not be read is readable again",
        );
    }

    /// The newest sealed minute per topic, updated as minutes are sealed (for
    /// the lag metric).
    pub fn progress(&self) -> SealProgress {
        self.progress.clone()
    }

    fn cluster(&self, name: &NodeName) -> Option<&Cluster> {
        self.env.clusters.get(name)
    }

    /// Builds a topic's state from a valid checkpoint or from the manifests; `None`
    /// when there is nothing to merge yet.
    async fn load_state(
        &self,
        topic: &Topic,
        sources: &[NodeName],
    ) -> Result<Option<TopicState>, WorkerError> {
        let dest = self.env.this.storage.as_ref();
        let newest = newest_sealed_dir(dest, View::Merged, topic).await?;
        let Some(newest) = newest else {
            // Nothing merged yet: start at the oldest local minute of any source.
            let mut start: Option<Minute> = None;
            for source in sources {
                let Some(cluster) = self.cluster(source) else {
                    continue;
                };
                match oldest_dir(cluster.storage.as_ref(), View::Local, topic).await {
                    Ok(Some(m)) => start = Some(start.map_or(m, |s| s.min(m))),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%topic, source = %source, error = %e,
                        "cannot read a merge source's local view"),
                }
            }
            let Some(start) = start else { return Ok(None) };
            let before = start.prev().unwrap_or(start);
            return Ok(Some(TopicState {
                frontier: start,
                placed_through: sources.iter().map(|s| (s.clone(), before)).collect(),
                newest_sealed: BTreeMap::new(),
                unreadable_since: BTreeMap::new(),
                adopted: BTreeSet::new(),
            }));
        };
        let frontier = newest
            .next()
            .map_err(|e| WorkerError::Other(e.to_string()))?;
        if let Some(state) = self.load_checkpoint(topic, sources, newest, frontier).await {
            return Ok(Some(state));
        }
        // Walk back from the newest sealed minute until every source is resolved.
        let mut placed_through = BTreeMap::new();
        let mut unresolved: BTreeSet<NodeName> = sources.iter().cloned().collect();
        let mut minute = newest;
        while !unresolved.is_empty() {
            let dir = Layout::minute_dir(View::Merged, topic, minute);
            match Manifest::read(dest, &dir).await? {
                Some(manifest) => {
                    unresolved.retain(|s| {
                        let placed =
                            manifest.clusters.contains(s) || !manifest.missing_clusters.contains(s);
                        if placed {
                            placed_through.insert(s.clone(), minute);
                        }
                        !placed
                    });
                }
                None => {
                    for s in std::mem::take(&mut unresolved) {
                        placed_through.insert(s, minute);
                    }
                }
            }
            match minute.prev() {
                Ok(prev) => minute = prev,
                Err(_) => break,
            }
        }
        for s in unresolved {
            placed_through.insert(s, minute);
        }
        Ok(Some(TopicState {
            frontier,
            placed_through,
            newest_sealed: BTreeMap::new(),
            unreadable_since: BTreeMap::new(),
            adopted: BTreeSet::new(),
        }))
    }

    /// The checkpoint of `topic` if it agrees with the manifests.
    async fn load_checkpoint(
        &self,
        topic: &Topic,
        sources: &[NodeName],
        newest: Minute,
        frontier: Minute,
    ) -> Option<TopicState> {
        let dest = self.env.this.storage.as_ref();
        let path = Layout::checkpoint_path("merge", topic.as_str()).ok()?;
        let bytes = dest.read(&path).await.ok()?;
        // A cached [`TopicState`] (a hint).
        let checkpoint: MergeCheckpoint = match decode(&path, &bytes) {
            Ok(c) => c,
            Err(RecordError::UnsupportedVersion { .. }) => return None,
            Err(e) => {
                tracing::warn!(%path, error = %e, "ignoring an unreadable merge checkpoint");
                return None;
            }
        };
        if checkpoint.frontier != frontier {
            return None;
        }
        let manifest = Manifest::read(dest, &Layout::minute_dir(View::Merged, topic, newest))
            .await
            .ok()??;
        let mut placed_through = BTreeMap::new();
        for s in sources {
            let placed = *checkpoint.placed_through.get(s.as_str())?;
            let included = manifest.clusters.contains(s) || !manifest.missing_clusters.contains(s);
            if placed >= frontier || included != (placed == newest) {
                return None;
            }
            placed_through.insert(s.clone(), placed);
        }
        Some(TopicState {
            frontier,
            placed_through,
            newest_sealed: BTreeMap::new(),
            unreadable_since: BTreeMap::new(),
            adopted: BTreeSet::new(),
        })
    }

    async fn save_checkpoint(&self, topic: &Topic, state: &TopicState) {
        let Ok(path) = Layout::checkpoint_path("merge", topic.as_str()) else {
            return;
        };
        let checkpoint = MergeCheckpoint {
            version: Version,
            saved_at: self.env.clock.now(),
            frontier: state.frontier,
            placed_through: state
                .placed_through
                .iter()
                .map(|(s, m)| (s.to_string(), *m))
                .collect(),
        };
        let bytes = serde_json::to_vec(&checkpoint).expect("checkpoint serializes");
        if let Err(e) = self
            .checkpoint_writes
            .write_atomic(&*self.env.this.storage, &path, bytes.into())
            .await
        {
            tracing::warn!(%path, error = %e, "cannot save the merge checkpoint (only a hint)");
        }
    }

    /// Whether `source` can be included in `frontier`: every local minute after
    /// `placed` up to `frontier` is sealed (or absent while a later one is sealed).
    async fn readiness(
        &self,
        topic: &Topic,
        source: &NodeName,
        state: &mut TopicState,
    ) -> Result<Readiness, WorkerError> {
        let Some(cluster) = self.cluster(source) else {
            return Ok(Readiness::NotReady);
        };
        let storage = cluster.storage.as_ref();
        let frontier = state.frontier;
        let placed = state.placed_through.get(source).copied();
        let mut files = Vec::new();
        match dir_state(storage, View::Local, topic, frontier).await? {
            DirState::Sealed(manifest) => {
                note_sealed(&self.progress, topic, state, source, frontier);
                let dir = Layout::minute_dir(View::Local, topic, frontier);
                files.extend(manifest.files.into_iter().map(|f| (dir.clone(), f)));
            }
            DirState::Unsealed => return Ok(Readiness::NotReady),
            DirState::Absent => {
                let newest = newest_sealed_dir(storage, View::Local, topic).await?;
                if let Some(newest) = newest {
                    note_sealed(&self.progress, topic, state, source, newest);
                }
                if newest.is_none_or(|n| n <= frontier) {
                    return Ok(Readiness::NotReady);
                }
            }
        }
        // The pending local minutes, oldest first.
        let mut minute = match placed {
            Some(p) => p.next().map_err(|e| WorkerError::Other(e.to_string()))?,
            None => frontier,
        };
        let mut pending = Vec::new();
        while minute < frontier {
            match dir_state(storage, View::Local, topic, minute).await? {
                DirState::Sealed(manifest) => {
                    let dir = Layout::minute_dir(View::Local, topic, minute);
                    pending.extend(manifest.files.into_iter().map(|f| (dir.clone(), f)));
                }
                DirState::Unsealed => {
                    tracing::warn!(%topic, source = %source, %minute,
                        "an older local minute is unsealed while a newer one is sealed; waiting");
                    return Ok(Readiness::NotReady);
                }
                DirState::Absent => {}
            }
            minute = minute
                .next()
                .map_err(|e| WorkerError::Other(e.to_string()))?;
        }
        pending.extend(files);
        Ok(Readiness::Ready(pending))
    }

    /// Whether `source` lags more than `max_source_lag_secs` behind the clock.
    /// Reads its newest sealed local minute (recorded for the source lag
    /// gauge), or notes since when it cannot be read.
    async fn lagging(&self, topic: &Topic, source: &NodeName, state: &mut TopicState) -> bool {
        let now = self.env.clock.now();
        if let Some(cluster) = self.cluster(source) {
            match newest_sealed_dir(cluster.storage.as_ref(), View::Local, topic).await {
                Ok(newest) => {
                    self.source_read(source);
                    state.unreadable_since.remove(source);
                    match newest {
                        Some(newest) => note_sealed(&self.progress, topic, state, source, newest),
                        None if !state.adopted.contains(source) => {
                            // The source has sealed nothing of this topic, most
                            // likely because no event of it ever reached that
                            // datacenter, so its local job does not know the
                            // topic. An (empty, unsealed) minute directory at
                            // the frontier makes it serve the topic from there
                            // and seal empty minutes (local.rs, "Where a topic's
                            // stream starts"), instead of the merged view
                            // waiting out the lag on a datacenter that simply
                            // has no data. Harmless if the source already has
                            // an older unsealed minute.
                            let dir = Layout::minute_dir(View::Local, topic, state.frontier);
                            match cluster.storage.mkdirs(&dir).await {
                                Ok(()) => {
                                    tracing::info!(%topic, source = %source, minute = %state.frontier,
                                        "source has no sealed minute of this topic; asked it to serve the topic");
                                    state.adopted.insert(source.clone());
                                }
                                Err(e) => tracing::warn!(%topic, source = %source, error = %e,
                                    "cannot create the first local minute directory on a merge source"),
                            }
                        }
                        None => {}
                    }
                }
                Err(e) => {
                    if self.source_failed(source) {
                        tracing::warn!(%topic, source = %source, error = %e,
                            "cannot read a merge source; judging its lag by what was seen last (logged at DEBUG until it is read again)");
                    } else {
                        tracing::debug!(%topic, source = %source, error = %e,
                            "cannot read a merge source; judging its lag by what was seen last");
                    }
                    state.unreadable_since.entry(source.clone()).or_insert(now);
                }
            }
        }
        let max_lag = chrono::TimeDelta::seconds(self.env.config.worker.max_source_lag_secs as i64);
        match (
            state.newest_sealed.get(source),
            state.unreadable_since.get(source),
        ) {
            (Some(newest), _) => now - newest.end() > max_lag,
            (None, Some(since)) => now - *since > max_lag,
            // Nothing sealed yet (a new topic or source): give it the same lag
            // from the end of the frontier, so a topic's first minutes do not
            // routinely miss whichever source seals second.
            (None, None) => now - state.frontier.end() > max_lag,
        }
    }

    /// Merges and seals the frontier if it can be sealed now; `None` if it must wait.
    async fn merge_minute(
        &self,
        topic: &Topic,
        sources: &[NodeName],
        state: &mut TopicState,
    ) -> Result<Option<PassReport>, WorkerError> {
        let frontier = state.frontier;
        let sources_started = Instant::now();
        let mut included = Vec::new();
        let mut missing = Vec::new();
        let mut plan: Vec<(NodeName, String, ManifestFile)> = Vec::new();
        for source in sources {
            let readiness = match self.readiness(topic, source, state).await {
                Ok(r) => {
                    self.source_read(source);
                    r
                }
                Err(e) => {
                    if self.source_failed(source) {
                        tracing::warn!(%topic, source = %source, %frontier, error = %e,
                            "cannot read a merge source (logged at DEBUG until it is read again)");
                    } else {
                        tracing::debug!(%topic, source = %source, %frontier, error = %e,
                            "cannot read a merge source");
                    }
                    Readiness::NotReady
                }
            };
            match readiness {
                Readiness::Ready(files) => {
                    included.push(source.clone());
                    plan.extend(files.into_iter().map(|(dir, f)| (source.clone(), dir, f)));
                }
                Readiness::NotReady if self.lagging(topic, source, state).await => {
                    missing.push(source.clone());
                }
                Readiness::NotReady => return Ok(None),
            }
        }
        let dest = self.env.this.storage.as_ref();
        let fence = self.env.fence.as_ref();
        let dir = Layout::minute_dir(View::Merged, topic, frontier);
        let mut report = PassReport::default();
        report.timed("sources", sources_started);
        let gzip = self.env.config.topic(topic).format == Codec::Gzip;
        let mut files = Vec::with_capacity(plan.len());
        let mut tasks = Vec::with_capacity(plan.len());
        for (source, src_dir, file) in plan {
            let cluster = self.cluster(&source).expect("included sources exist");
            let late = file.minute < frontier;
            let file = ManifestFile { late, ..file };
            let name = if gzip {
                gz_name(&file.name)
            } else {
                file.name.clone()
            };
            tasks.push(CopyTask {
                src: cluster.storage.clone(),
                src_path: format!("{src_dir}/{}", file.name),
                dst_path: format!("{dir}/{name}"),
                file: file.clone(),
            });
            report.files += 1;
            report.late_files += u64::from(late);
            files.push(file);
        }
        let (dst, fence_arc) = (self.env.this.storage.clone(), self.env.fence.clone());
        let started = Instant::now();
        if gzip {
            let (transcoded, written) = transcode_all(tasks, dst, fence_arc).await?;
            files = transcoded;
            report.bytes_copied += written;
        } else {
            report.bytes_copied += copy_all(tasks, dst, fence_arc).await?;
        }
        report.timed("copy", started);
        let started = Instant::now();
        let names: BTreeSet<String> = files.iter().map(|f| f.name.clone()).collect();
        dest.mkdirs(&dir).await?;
        tidy_unsealed(dest, &dir, fence, |name| names.contains(name)).await?;
        if !missing.is_empty() {
            tracing::warn!(%topic, minute = %frontier, missing = ?missing,
                "sealing a merged minute without lagging sources; their data will arrive late");
        }
        let manifest = Manifest::new(
            View::Merged,
            topic.clone(),
            frontier,
            included.clone(),
            missing,
            self.env.clock.now(),
            self.env.worker_id.clone(),
            files,
        );
        fence.check().await?;
        match manifest.seal(dest).await {
            Ok(()) => {}
            Err(ManifestError::AlreadySealed { path }) => {
                return Err(WorkerError::Other(format!(
                    "{path} was sealed by someone else while this worker merged it"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        report.timed("manifest", started);
        tracing::info!(%topic, minute = %frontier, files = report.files, late = report.late_files,
            bytes = report.bytes_copied, "sealed merged minute");
        report.sealed = 1;
        self.progress.record(SealView::Merged, topic, frontier);
        for source in included {
            state.placed_through.insert(source, frontier);
        }
        state.frontier = frontier
            .next()
            .map_err(|e| WorkerError::Other(e.to_string()))?;
        Ok(Some(report))
    }
}

/// Notes that `source` has sealed its local minute `minute` of `topic` (kept if
/// newer than what was seen), for the lag rule and the source lag gauge.
fn note_sealed(
    progress: &SealProgress,
    topic: &Topic,
    state: &mut TopicState,
    source: &NodeName,
    minute: Minute,
) {
    let entry = state.newest_sealed.entry(source.clone()).or_insert(minute);
    if *entry < minute {
        *entry = minute;
    }
    progress.record_source(topic, source, *entry);
}

#[async_trait::async_trait]
impl TopicJob for MergeJob {
    /// The topic's source clusters.
    type Plan = Vec<NodeName>;

    const NAME: &'static str = "merge";

    /// The topics merged into this cluster, each with its source clusters.
    async fn topics(&mut self) -> Result<Vec<(Topic, Self::Plan)>, WorkerError> {
        let this = self.env.this.name.as_str();
        let config = &self.env.config;
        let mut names = self.env.configured_topics();
        if config.topic_defaults.merge_into.as_deref() == Some(this) {
            for cluster in self.env.clusters.values() {
                match tree::topics(cluster.storage.as_ref(), View::Local).await {
                    Ok(found) => {
                        self.source_read(&cluster.name);
                        names.extend(found)
                    }
                    Err(e) if self.source_failed(&cluster.name) => {
                        tracing::warn!(cluster = %cluster.name, error = %e,
                            "cannot list the local view of a merge source (logged at DEBUG until it is read again)")
                    }
                    Err(e) => tracing::debug!(cluster = %cluster.name, error = %e,
                        "cannot list the local view of a merge source"),
                }
            }
        }
        let mut served = BTreeMap::new();
        for topic in names {
            let settings = config.topic(&topic);
            if settings.merge_into.as_deref() != Some(this) {
                continue;
            }
            let sources: Vec<NodeName> = settings
                .merge_sources
                .iter()
                .filter_map(|s| NodeName::new(s.as_str()).ok())
                .collect();
            served.insert(topic, sources);
        }
        Ok(served.into_iter().collect())
    }

    /// Seals as many merged minutes of `topic` as are ready.
    async fn pass_topic(
        &mut self,
        topic: &Topic,
        sources: Self::Plan,
    ) -> Result<PassReport, WorkerError> {
        let mut report = PassReport::default();
        let mut state = match self.topics.remove(topic) {
            Some(state) => state,
            None => match self.load_state(topic, &sources).await? {
                Some(state) => state,
                None => return Ok(report),
            },
        };
        for s in &sources {
            state
                .placed_through
                .entry(s.clone())
                .or_insert(state.frontier.prev().unwrap_or(state.frontier));
        }
        let mut sealed_any = false;
        let result = async {
            for _ in 0..MAX_MINUTES_PER_PASS {
                if state.frontier.end() > self.env.clock.now() {
                    // Nothing to merge before the frontier ends, but a source
                    // that could not be read is asked again now: once its
                    // link is back, its source lag gauge drops at once
                    // instead of growing until the frontier ends.
                    let unreadable: Vec<NodeName> =
                        state.unreadable_since.keys().cloned().collect();
                    for source in unreadable {
                        self.lagging(topic, &source, &mut state).await;
                    }
                    break;
                }
                let Some(step) = self.merge_minute(topic, &sources, &mut state).await? else {
                    break;
                };
                report.add(&step);
                sealed_any = true;
            }
            Ok::<(), WorkerError>(())
        }
        .await;
        let now_minute = self.env.clock.minute();
        report.pending =
            (now_minute.epoch_minutes() - state.frontier.epoch_minutes()).max(0) as u64;
        if sealed_any {
            self.save_checkpoint(topic, &state).await;
        }
        match result {
            Ok(()) => {
                self.topics.insert(topic.clone(), state);
                Ok(report)
            }
            // Forget the cached state: the next pass rebuilds it from the manifests.
            Err(e) => Err(e),
        }
    }
}
