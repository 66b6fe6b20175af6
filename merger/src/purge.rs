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
use conduit_core::{Manifest, Minute, Storage, Topic, View};

use crate::copy::{is_component, levels, list_topics, minute_of};
use crate::{Fence, Job, JobEnv, PassReport, WorkerError};

/// `_tmp.*` files older than this in an expired unsealed directory are removed.
const STALE_TMP: TimeDelta = TimeDelta::hours(1);

/// The purge job of one cluster; see the [module docs](self).
#[derive(Debug)]
pub struct PurgeJob {
    env: JobEnv,
}

/// The end (exclusive) of the span a date-component prefix covers: a year, month,
/// day, hour or minute.
fn span_end(parts: &[String]) -> Option<DateTime<Utc>> {
    let start = span_start(parts)?;
    let next = match parts.len() {
        1 => start.with_year_offset(1),
        2 => start.with_month_offset(1),
        3 => start.add_minutes(24 * 60).ok(),
        4 => start.add_minutes(60).ok(),
        _ => start.add_minutes(1).ok(),
    };
    Some(next.map_or(Minute::MAX.end(), Minute::start))
}

/// The first minute of a date-component prefix.
fn span_start(parts: &[String]) -> Option<Minute> {
    let defaults = ["01", "01", "00", "00"];
    let mut full: Vec<String> = parts.to_vec();
    for d in &defaults[parts.len().saturating_sub(1).min(4)..] {
        if full.len() == 5 {
            break;
        }
        full.push((*d).to_owned());
    }
    full.truncate(5);
    Minute::parse_dir_path(&full.join("/")).ok()
}

trait Offsets: Sized {
    fn with_year_offset(self, years: i32) -> Option<Self>;
    fn with_month_offset(self, months: u32) -> Option<Self>;
}

impl Offsets for Minute {
    fn with_year_offset(self, years: i32) -> Option<Minute> {
        let t = self.start();
        use chrono::Datelike;
        let next = t.with_year(t.year() + years)?;
        Minute::from_datetime(next).ok()
    }

    fn with_month_offset(self, months: u32) -> Option<Minute> {
        let t = self.start();
        let next = t.checked_add_months(chrono::Months::new(months))?;
        Minute::from_datetime(next).ok()
    }
}

impl PurgeJob {
    /// A purge job for `env.this`.
    pub fn new(env: JobEnv) -> Self {
        PurgeJob { env }
    }

    async fn purge_view(&self, view: View, report: &mut PassReport) -> Result<(), WorkerError> {
        let storage = self.env.this.storage.as_ref();
        for topic in list_topics(storage, view).await? {
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
        let levels = levels(view);
        let top = Layout::topic_dir(view, topic);
        let fence = self.env.fence.as_ref();
        let path_of = |parts: &[String]| format!("{top}/{}", parts.join("/"));
        // Depth-first, oldest first. `Leave` entries remove a directory once its
        // children have been visited, if it is empty and entirely expired.
        enum Visit {
            Enter(Vec<String>),
            Leave(Vec<String>),
        }
        let mut stack = vec![];
        for name in self
            .children(storage, &top, levels[0])
            .await?
            .into_iter()
            .rev()
        {
            stack.push(Visit::Enter(vec![name]));
        }
        while let Some(visit) = stack.pop() {
            match visit {
                Visit::Leave(parts) => {
                    let dir = path_of(&parts);
                    if span_end(&parts).is_some_and(|end| end <= cutoff)
                        && storage.list_or_empty(&dir).await?.is_empty()
                    {
                        fence.check().await?;
                        storage.delete(&dir, false).await?;
                    }
                }
                Visit::Enter(parts) => {
                    // Oldest first: once a branch starts inside the window, so do
                    // all later ones at this level and below.
                    let Some(start) = span_start(&parts) else {
                        continue;
                    };
                    if start.end() > cutoff {
                        // Later siblings are younger still.
                        while matches!(stack.last(), Some(Visit::Enter(p)) if p.len() == parts.len())
                        {
                            stack.pop();
                        }
                        continue;
                    }
                    if parts.len() == levels.len() {
                        self.purge_dir(
                            storage,
                            view,
                            &path_of(&parts),
                            &parts,
                            cutoff,
                            report,
                            fence,
                        )
                        .await?;
                        continue;
                    }
                    stack.push(Visit::Leave(parts.clone()));
                    let width = levels[parts.len()];
                    for name in self
                        .children(storage, &path_of(&parts), width)
                        .await?
                        .into_iter()
                        .rev()
                    {
                        let mut child = parts.clone();
                        child.push(name);
                        stack.push(Visit::Enter(child));
                    }
                }
            }
        }
        Ok(())
    }

    /// Date-component subdirectories of `dir`, sorted ascending.
    async fn children(
        &self,
        storage: &dyn Storage,
        dir: &str,
        width: usize,
    ) -> Result<Vec<String>, WorkerError> {
        let mut names: Vec<String> = storage
            .list_or_empty(dir)
            .await?
            .into_iter()
            .filter(|e| e.is_dir && is_component(&e.name, width))
            .map(|e| e.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes one expired minute (or hour) directory if it is sealed; otherwise
    /// removes only its stale `_tmp.` files.
    #[allow(clippy::too_many_arguments)]
    async fn purge_dir(
        &self,
        storage: &dyn Storage,
        view: View,
        dir: &str,
        parts: &[String],
        cutoff: DateTime<Utc>,
        report: &mut PassReport,
        fence: &dyn Fence,
    ) -> Result<(), WorkerError> {
        let Some(minute) = minute_of(view, parts) else {
            return Ok(());
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> Vec<String> {
        s.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn spans_cover_years_to_minutes() {
        let m = |s: &str| Minute::parse_flexible(s).unwrap().start();
        assert_eq!(
            span_start(&parts("2026")).unwrap().start(),
            m("2026-01-01T00:00Z")
        );
        assert_eq!(span_end(&parts("2026")).unwrap(), m("2027-01-01T00:00Z"));
        assert_eq!(span_end(&parts("2026/12")).unwrap(), m("2027-01-01T00:00Z"));
        assert_eq!(
            span_end(&parts("2026/02/28")).unwrap(),
            m("2026-03-01T00:00Z")
        );
        assert_eq!(
            span_end(&parts("2026/02/28/23")).unwrap(),
            m("2026-03-01T00:00Z")
        );
        assert_eq!(
            span_end(&parts("2026/02/28/23/59")).unwrap(),
            m("2026-03-01T00:00Z")
        );
        assert_eq!(
            span_start(&parts("2026/02/28/23/59")).unwrap().start(),
            m("2026-02-28T23:59Z")
        );
        assert!(span_start(&parts("2026/13")).is_none());
    }
}
