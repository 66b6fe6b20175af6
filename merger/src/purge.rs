//! The purge job: retention for the local, merged and hourly views of this cluster.
//!
//! # Rules
//!
//! - For every topic found in `streams_local/`, `streams/` and `streams_hourly/`,
//!   the retention of that view (`retention_hours.local|merged|hourly` of the
//!   topic's settings, `topic_defaults` for unlisted topics) gives a cutoff: a
//!   minute directory is expired once its minute **ended** more than the retention
//!   ago; an hour directory of the hourly view once its last minute did.
//! - Only **sealed** expired directories are deleted (recursively, after a fence
//!   check). An unsealed directory is never deleted, whatever its age; only its
//!   hidden `_tmp.*` leftovers older than an hour are removed.
//! - Then hour, day, month and year directories that are empty and entirely
//!   expired are removed, deepest first (a directory still inside the retention
//!   window is left alone even when empty, since a job may be about to write there).
//! - The walk is oldest first and stops at the first branch that is entirely inside
//!   the retention window, so a pass costs a few listings once caught up.
//!
//! # Failures
//!
//! A crash in the middle of a recursive delete can leave an expired directory
//! partially deleted (on local disk; HDFS deletes a directory atomically). Such a
//! directory is past retention, its `_SUCCESS` may be gone, and the next pass
//! deletes what is left if it is still sealed; otherwise only its `_tmp.` files
//! go. Readers of expired data were never promised it.

use chrono::{DateTime, TimeDelta, Utc};

use conduit_core::layout::Layout;
use conduit_core::tree::{self, MinuteWalker, Visit};
use conduit_core::{Manifest, Minute, Storage, Topic, View};

use crate::{Fence, Job, JobEnv, PassReport, WorkerError};

/// `_tmp.*` files older than this in an expired unsealed directory are removed.
const STALE_TMP: TimeDelta = TimeDelta::hours(1);

/// The purge job of one cluster; see the [module docs](self).
#[derive(Debug)]
pub struct PurgeJob {
    env: JobEnv,
}

impl PurgeJob {
    /// A purge job for `env.this`.
    pub fn new(env: JobEnv) -> Self {
        PurgeJob { env }
    }

    async fn purge_view(&self, view: View, report: &mut PassReport) -> Result<(), WorkerError> {
        let storage = self.env.this.storage.as_ref();
        for topic in tree::topics(storage, view).await? {
            let retention = self.env.config.topic(&topic).retention_hours;
            let hours = match view {
                View::Local => retention.local,
                View::Merged => retention.merged,
                _ => retention.hourly,
            };
            let cutoff = self.env.clock.now() - TimeDelta::hours(i64::from(hours));
            self.purge_tree(storage, view, &topic, cutoff, report)
                .await?;
        }
        Ok(())
    }

    /// Walks `topic`'s tree oldest first and deletes what expired before `cutoff`.
    async fn purge_tree(
        &self,
        storage: &dyn Storage,
        view: View,
        topic: &Topic,
        cutoff: DateTime<Utc>,
        report: &mut PassReport,
    ) -> Result<(), WorkerError> {
        // Only directories whose first minute ended by the cutoff: a branch that
        // starts inside the retention window is never entered (nor listed).
        let Ok(until) = Minute::from_datetime(cutoff - TimeDelta::minutes(1)) else {
            return Ok(());
        };
        let fence = self.env.fence.as_ref();
        let mut walk = MinuteWalker::new(storage, view, topic).until(until);
        while let Some(visit) = walk.next_visit().await? {
            match visit {
                Visit::Dir(minute) => {
                    let dir = Manifest::dir(view, topic, minute);
                    self.purge_dir(storage, view, &dir, minute, cutoff, report, fence)
                        .await?;
                }
                // After its children: remove it if it is empty and entirely expired.
                Visit::Left(parent) => {
                    let dir = walk.dir_path(parent);
                    if parent.end() <= cutoff && storage.list_or_empty(&dir).await?.is_empty() {
                        fence.check().await?;
                        storage.delete(&dir, false).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes one expired minute (or hour) directory if it is sealed; otherwise
    /// removes only its stale `_tmp.` files.
    #[allow(clippy::too_many_arguments)]
    async fn purge_dir(
        &self,
        storage: &dyn Storage,
        view: View,
        dir: &str,
        minute: Minute,
        cutoff: DateTime<Utc>,
        report: &mut PassReport,
        fence: &dyn Fence,
    ) -> Result<(), WorkerError> {
        let last = if view == View::Hourly {
            minute.add_minutes(59).unwrap_or(minute)
        } else {
            minute
        };
        if last.end() > cutoff {
            return Ok(());
        }
        if Manifest::is_sealed(storage, dir).await? {
            fence.check().await?;
            if storage.delete(dir, true).await? {
                tracing::info!(dir, view = %view, "deleted an expired sealed directory");
                report.deleted += 1;
            }
            return Ok(());
        }
        let stale_before = (self.env.clock.now() - STALE_TMP).timestamp_millis();
        for entry in storage.list_or_empty(dir).await? {
            if Layout::is_tmp(&entry.name) && entry.modified_ms < stale_before {
                fence.check().await?;
                storage.delete(&entry.path, true).await?;
                tracing::info!(path = %entry.path, "deleted a stale temporary file");
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Job for PurgeJob {
    fn name(&self) -> &'static str {
        "purge"
    }

    async fn pass(&mut self) -> Result<PassReport, WorkerError> {
        let mut report = PassReport::default();
        for view in [View::Local, View::Merged, View::Hourly] {
            self.purge_view(view, &mut report).await?;
        }
        Ok(report)
    }
}
