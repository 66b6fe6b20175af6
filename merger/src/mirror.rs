//! The mirror job: on cluster Y, copies the sealed merged minutes of every topic
//! that lists Y in `mirrors` from the topic's `merge_into` cluster (the origin),
//! byte for byte, to the same paths, so a consumer can fail over to Y unchanged.
//!
//! # Rules
//!
//! - Minutes are mirrored strictly in order, oldest first, starting after the
//!   newest sealed merged minute on Y (or, on a fresh mirror, at the origin's oldest
//!   merged minute). A minute is mirrored only once the origin has sealed it.
//! - Every file listed in the origin's manifest is copied to a hidden temporary
//!   name, read back and verified (length, CRC-32C, close trailer) against the
//!   origin manifest, then renamed into place without overwrite after a fence check
//!   ([`crate::copy`]).
//! - Then every `_tmp.*` leftover and every data file the manifest does not list is
//!   deleted from the mirror directory (only this job writes there), and, after a
//!   fence check, the origin's `_SUCCESS` bytes are written unchanged (temporary
//!   name, sync, rename without overwrite). The mirror's manifest is therefore
//!   byte-identical to the origin's and lists exactly the files of the directory.
//! - If the origin has already purged minutes the mirror never copied (the mirror
//!   was down for longer than the merged retention), the mirror skips ahead to the
//!   origin's oldest minute and logs the gap.
//!
//! # Failures
//!
//! A crash leaves the mirror's frontier unsealed, possibly with verified copies and
//! `_tmp.` files; the next pass skips identical copies, redoes the rest, tidies and
//! seals. An unreachable origin fails the pass for its topics (retried next pass);
//! other topics go on. With `topic_defaults.mirrors`, the topics are found by
//! listing the origin's merged view; when that listing fails, the configured
//! topics are still mirrored and the pass then fails, naming the origin.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use conduit_core::layout::Layout;
use conduit_core::tree::{self, newest_sealed_dir, oldest_dir};
use conduit_core::{Manifest, Minute, NodeName, Topic, View};

use crate::copy::{copy_all, seal_raw, tidy_unsealed, CopyTask, FailingClusters};
use crate::metrics::{SealProgress, SealView};
use crate::{JobEnv, PassReport, TopicJob, WorkerError};

/// Minutes mirrored per topic in one pass at most.
const MAX_MINUTES_PER_PASS: u64 = 240;

/// The mirror job of one cluster; see the [module docs](self).
#[derive(Debug)]
pub struct MirrorJob {
    env: JobEnv,
    /// Per topic: the oldest merged minute not yet mirrored.
    frontiers: BTreeMap<Topic, Minute>,
    /// The newest sealed minute per topic (for the lag metric).
    progress: SealProgress,
    /// Origins whose last read failed (for their log level).
    failing: FailingClusters,
    /// Why this pass's topic list may be incomplete (the origin's merged view
    /// could not be listed): the pass fails with it once its topics have run.
    incomplete: Option<WorkerError>,
}

impl MirrorJob {
    /// A mirror job writing to `env.this`.
    pub fn new(env: JobEnv) -> Self {
        MirrorJob {
            env,
            frontiers: BTreeMap::new(),
            progress: SealProgress::default(),
            failing: FailingClusters::default(),
            incomplete: None,
        }
    }

    /// The newest sealed minute per topic, updated as minutes are sealed (for
    /// the lag metric).
    pub fn progress(&self) -> SealProgress {
        self.progress.clone()
    }
}

#[async_trait::async_trait]
impl TopicJob for MirrorJob {
    /// The topic's origin cluster.
    type Plan = NodeName;

    const NAME: &'static str = "mirror";

    /// The topics mirrored to this cluster, each with its origin cluster.
    async fn topics(&mut self) -> Result<Vec<(Topic, Self::Plan)>, WorkerError> {
        self.incomplete = None;
        let this = self.env.this.name.as_str();
        let config = &self.env.config;
        let mut names = self.env.configured_topics();
        let defaults = &config.topic_defaults;
        if defaults.mirrors.iter().any(|m| m == this) {
            if let Some(origin) = defaults
                .merge_into
                .as_deref()
                .and_then(|o| NodeName::new(o).ok())
                .and_then(|o| self.env.clusters.get(&o))
            {
                match tree::topics(origin.storage.as_ref(), View::Merged).await {
                    Ok(found) => {
                        self.failing
                            .read(&origin.name, "the mirror origin is readable again");
                        names.extend(found)
                    }
                    Err(e) => {
                        if self.failing.failed(&origin.name) {
                            tracing::warn!(origin = %origin.name, error = %e,
                                "cannot list the merged view of the mirror origin; the mirror falls behind until it is readable (logged at DEBUG until then)")
                        } else {
                            tracing::debug!(origin = %origin.name, error = %e,
                                "cannot list the merged view of the mirror origin")
                        }
                        self.incomplete = Some(WorkerError::Other(format!(
                            "mirror origin {} could not be listed, so its topics that are not in the config were not mirrored in this pass (retried next pass): {e}",
                            origin.name
                        )));
                    }
                }
            }
        }
        let mut served = BTreeMap::new();
        for topic in names {
            let settings = config.topic(&topic);
            if !settings.mirrors.iter().any(|m| m == this) {
                continue;
            }
            let Some(origin) = settings
                .merge_into
                .as_deref()
                .and_then(|o| NodeName::new(o).ok())
            else {
                continue;
            };
            if origin != self.env.this.name {
                served.insert(topic, origin);
            }
        }
        Ok(served.into_iter().collect())
    }

    fn take_incomplete(&mut self) -> Option<WorkerError> {
        self.incomplete.take()
    }

    /// Mirrors as many sealed minutes of `topic` as the origin has.
    async fn pass_topic(
        &mut self,
        topic: &Topic,
        origin: Self::Plan,
    ) -> Result<PassReport, WorkerError> {
        let mut report = PassReport::default();
        let Some(origin) = self.env.clusters.get(&origin).cloned() else {
            return Err(WorkerError::Other(format!(
                "topic {topic}: mirror origin cluster {origin} is not configured"
            )));
        };
        let src = origin.storage.as_ref();
        let dest = self.env.this.storage.as_ref();
        let fence = self.env.fence.as_ref();
        let mut frontier = match self.frontiers.get(topic) {
            Some(f) => *f,
            None => match newest_sealed_dir(dest, View::Merged, topic).await? {
                Some(newest) => newest
                    .next()
                    .map_err(|e| WorkerError::Other(e.to_string()))?,
                None => match oldest_dir(src, View::Merged, topic).await? {
                    Some(oldest) => oldest,
                    None => return Ok(report),
                },
            },
        };
        let result = async {
            for _ in 0..MAX_MINUTES_PER_PASS {
                if frontier.end() > self.env.clock.now() {
                    break;
                }
                let dir = Layout::minute_dir(View::Merged, topic, frontier);
                let marker = Layout::success_marker(&dir);
                let raw = match src.read(&marker).await {
                    Ok(raw) => raw,
                    Err(e) if e.is_not_found() => {
                        if src.exists(&dir).await? {
                            break; // not sealed yet
                        }
                        match oldest_dir(src, View::Merged, topic).await? {
                            Some(oldest) if oldest > frontier => {
                                tracing::warn!(%topic, from = %frontier, to = %oldest,
                                    "the origin no longer has these minutes; the mirror skips them");
                                frontier = oldest;
                                continue;
                            }
                            _ => break,
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                let manifest = Manifest::parse(&marker, &raw)?;
                let mut step = PassReport::default();
                let mut tasks = Vec::with_capacity(manifest.files.len());
                for file in &manifest.files {
                    let path = format!("{dir}/{}", file.name);
                    tasks.push(CopyTask {
                        src: origin.storage.clone(),
                        src_path: path.clone(),
                        dst_path: path,
                        file: file.clone(),
                    });
                    step.files += 1;
                    step.late_files += u64::from(file.late);
                }
                let started = Instant::now();
                step.bytes_copied +=
                    copy_all(tasks, self.env.this.storage.clone(), self.env.fence.clone()).await?;
                step.timed("copy", started);
                let started = Instant::now();
                let names: BTreeSet<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
                dest.mkdirs(&dir).await?;
                tidy_unsealed(dest, &dir, fence, |name| names.contains(name)).await?;
                fence.check().await?;
                seal_raw(dest, &dir, raw).await?;
                step.timed("manifest", started);
                tracing::info!(%topic, minute = %frontier, origin = %origin.name,
                    files = step.files, bytes = step.bytes_copied, "sealed mirrored minute");
                step.sealed = 1;
                self.progress.record(SealView::Mirror, topic, frontier);
                report.add(&step);
                frontier = frontier.next().map_err(|e| WorkerError::Other(e.to_string()))?;
            }
            Ok::<(), WorkerError>(())
        }
        .await;
        report.pending =
            (self.env.clock.minute().epoch_minutes() - frontier.epoch_minutes()).max(0) as u64;
        match result {
            Ok(()) => {
                self.frontiers.insert(topic.clone(), frontier);
                Ok(report)
            }
            Err(e) => {
                self.frontiers.remove(topic);
                Err(e)
            }
        }
    }
}
