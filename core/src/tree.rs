//! Reading a topic's tree in storage: its date directories, the topics of a
//! view and the collector files of a topic. [`layout`](crate::layout) names the
//! paths; this module lists them, so no service walks the tree its own way.
//!
//! # Date directories ([`MinuteWalker`])
//!
//! Below `<view>/<topic>/` a minute view has `yyyy/MM/dd/HH/mm` directories, the
//! hourly view `yyyy/MM/dd/HH` ([`View::date_levels`], widths
//! [`DATE_DIR_WIDTHS`]). The walker visits them in order, oldest or newest
//! first, within an optional range of minutes, listing a directory only when it
//! is reached and skipping whole years, months, days and hours outside the range
//! without listing them, so finding the oldest or newest minute of a long
//! retention costs a handful of listings, not one per minute. An hour directory
//! is in the range when any of its minutes is. Names that are not a valid date
//! component of the level's width (`_tmp.` leftovers, markers, `2026/13`) are
//! ignored. [`Visit::Left`] also reports each year, month, day (and hour)
//! directory once its children are done, for retention. [`oldest_dir`] and
//! [`newest_sealed_dir`] are the two walks the worker's jobs start from.
//!
//! # Topics ([`topics`])
//!
//! The directories of `<view>/` that are valid topic names.
//!
//! # Collector files ([`collector_files`])
//!
//! A topic's collector files are the files of `data/<topic>/<collector>/`
//! (`<collector>` a valid node name) that [`Layout::collector_file_in`]
//! accepts: the topic token must be the directory topic's (`docs/format.md`
//! §2), hidden and `_tmp.` names are skipped.

use std::cmp::Reverse;

use chrono::{DateTime, Datelike, Months, TimeDelta, Utc};

use crate::layout::{CollectorFileName, Layout, DATE_DIR_WIDTHS};
use crate::manifest::Manifest;
use crate::storage::{Storage, StorageResult};
use crate::{Minute, NodeName, Topic, View};

/// A directory of a topic's date tree: a year (`2026`), month (`2026/11`), day,
/// hour or minute (`2026/11/22/10/05`) directory below `<view>/<topic>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateDir {
    /// Its first minute (ordering by it orders siblings by name).
    first: Minute,
    /// 1 (year) to 5 (minute): how many levels of `yyyy/MM/dd/HH/mm` it names.
    depth: usize,
}

impl DateDir {
    /// The child of `parent` (a year directory when `None`) named `name`, if
    /// `name` is a valid date component of the next level's width.
    fn child(parent: Option<DateDir>, name: &str) -> Option<DateDir> {
        let depth = parent.map_or(0, |p| p.depth) + 1;
        let width = *DATE_DIR_WIDTHS.get(depth - 1)?;
        if name.len() != width || !name.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let above = parent.map(|p| p.path()).unwrap_or_default();
        let mut fields: Vec<&str> = above.split('/').filter(|f| !f.is_empty()).collect();
        fields.push(name);
        let first = Minute::parse_dir_prefix(&fields)?;
        Some(DateDir { first, depth })
    }

    /// How many levels it names: 1 for a year up to 5 for a minute.
    pub fn depth(self) -> usize {
        self.depth
    }

    /// Its first minute.
    pub fn first(self) -> Minute {
        self.first
    }

    /// When its span ends (exclusive): the start of the next year, month, day,
    /// hour or minute.
    pub fn end(self) -> DateTime<Utc> {
        let start = self.first.start();
        let end = match self.depth {
            // January 1st exists in every year; chrono reaches far past 9999.
            1 => start.with_year(start.year() + 1),
            2 => start.checked_add_months(Months::new(1)),
            3 => start.checked_add_signed(TimeDelta::days(1)),
            4 => start.checked_add_signed(TimeDelta::hours(1)),
            _ => Some(self.first.end()),
        };
        end.expect("the end of a date directory is within chrono's range")
    }

    /// Its last minute.
    pub fn last(self) -> Minute {
        // `end` is at most 10000-01-01T00:00Z, so the minute before it is valid.
        Minute::from_datetime(self.end() - TimeDelta::minutes(1))
            .expect("a date directory ends by the year 10000")
    }

    /// Its path below `<view>/<topic>/`, e.g. `2026/11` for a month.
    pub fn path(self) -> String {
        let full = self.first.dir_path();
        full.split('/')
            .take(self.depth)
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// What [`MinuteWalker::next_visit`] reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// A minute directory (an hour directory of the hourly view: its first
    /// minute).
    Dir(Minute),
    /// A year, month, day (or, in minute views, hour) directory all of whose
    /// children in range have been visited.
    Left(DateDir),
}

/// Walks the date directories of a topic in one view; see the [module
/// docs](self).
#[derive(Debug)]
pub struct MinuteWalker<'a> {
    storage: &'a dyn Storage,
    view: View,
    topic: Topic,
    /// `<view>/<topic>`.
    base: String,
    newest_first: bool,
    from: Option<Minute>,
    until: Option<Minute>,
    started: bool,
    /// Per directory entered (`None`: the topic directory): its children still
    /// to visit, the next one last.
    stack: Vec<(Option<DateDir>, Vec<DateDir>)>,
}

impl<'a> MinuteWalker<'a> {
    /// A walk over the minute (hour) directories of `topic` in `view`, oldest
    /// first, unbounded. The collector view has no date directories: its walk
    /// is empty.
    pub fn new(storage: &'a dyn Storage, view: View, topic: &Topic) -> Self {
        MinuteWalker {
            storage,
            view,
            topic: topic.clone(),
            base: Layout::topic_dir(view, topic),
            newest_first: false,
            from: None,
            until: None,
            started: false,
            stack: Vec::new(),
        }
    }

    /// Visits the newest directory first.
    pub fn newest_first(mut self) -> Self {
        self.newest_first = true;
        self
    }

    /// Only directories with a minute at or after `from` (no bound for `None`).
    pub fn from(mut self, from: impl Into<Option<Minute>>) -> Self {
        self.from = from.into();
        self
    }

    /// Only directories with a minute at or before `until` (no bound for `None`).
    pub fn until(mut self, until: impl Into<Option<Minute>>) -> Self {
        self.until = until.into();
        self
    }

    /// The path of a directory met by [`MinuteWalker::next_visit`].
    pub fn dir_path(&self, dir: DateDir) -> String {
        format!("{}/{}", self.base, dir.path())
    }

    /// The next minute directory (hour directory for the hourly view: its first
    /// minute), or `None` at the end.
    pub async fn next(&mut self) -> StorageResult<Option<Minute>> {
        loop {
            match self.next_visit().await? {
                Some(Visit::Dir(minute)) => return Ok(Some(minute)),
                Some(Visit::Left(_)) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The next directory sealed by a `_SUCCESS` manifest.
    pub async fn next_sealed(&mut self) -> StorageResult<Option<Minute>> {
        while let Some(minute) = self.next().await? {
            let dir = Manifest::dir(self.view, &self.topic, minute);
            if Manifest::is_sealed(self.storage, &dir).await? {
                return Ok(Some(minute));
            }
        }
        Ok(None)
    }

    /// The next `limit` directories at most.
    pub async fn take(mut self, limit: usize) -> StorageResult<Vec<Minute>> {
        let mut out = Vec::new();
        while out.len() < limit {
            match self.next().await? {
                Some(minute) => out.push(minute),
                None => break,
            }
        }
        Ok(out)
    }

    /// Every directory left to visit.
    pub async fn all(self) -> StorageResult<Vec<Minute>> {
        self.take(usize::MAX).await
    }

    /// The next minute directory, or a directory above the minutes once its
    /// children are done ([`Visit::Left`]), or `None` at the end.
    pub async fn next_visit(&mut self) -> StorageResult<Option<Visit>> {
        let levels = self.view.date_levels();
        if !self.started {
            self.started = true;
            if levels == 0 {
                return Ok(None);
            }
            let years = self.children(None).await?;
            self.stack.push((None, years));
        }
        loop {
            let Some((_, pending)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(child) = pending.pop() else {
                if let Some((Some(done), _)) = self.stack.pop() {
                    return Ok(Some(Visit::Left(done)));
                }
                continue;
            };
            if child.depth == levels {
                return Ok(Some(Visit::Dir(child.first)));
            }
            let below = self.children(Some(child)).await?;
            self.stack.push((Some(child), below));
        }
    }

    /// The subdirectories of `parent` (the topic directory for `None`) that are
    /// date components in range, the next to visit last.
    async fn children(&self, parent: Option<DateDir>) -> StorageResult<Vec<DateDir>> {
        let dir = match parent {
            Some(p) => self.dir_path(p),
            None => self.base.clone(),
        };
        let mut children: Vec<DateDir> = self
            .storage
            .list_or_empty(&dir)
            .await?
            .into_iter()
            .filter(|e| e.is_dir)
            .filter_map(|e| DateDir::child(parent, &e.name))
            .filter(|d| self.from.is_none_or(|f| d.last() >= f))
            .filter(|d| self.until.is_none_or(|u| d.first <= u))
            .collect();
        if self.newest_first {
            children.sort();
        } else {
            children.sort_by_key(|d| Reverse(*d));
        }
        Ok(children)
    }
}

/// The oldest directory of `topic` in `view`, sealed or not.
pub async fn oldest_dir(
    storage: &dyn Storage,
    view: View,
    topic: &Topic,
) -> StorageResult<Option<Minute>> {
    MinuteWalker::new(storage, view, topic).next().await
}

/// The newest sealed directory of `topic` in `view` (walking newest first, so a
/// few listings when the newest directories are sealed).
pub async fn newest_sealed_dir(
    storage: &dyn Storage,
    view: View,
    topic: &Topic,
) -> StorageResult<Option<Minute>> {
    MinuteWalker::new(storage, view, topic)
        .newest_first()
        .next_sealed()
        .await
}

/// The topics with a directory in `view`, sorted (other names are skipped).
pub async fn topics(storage: &dyn Storage, view: View) -> StorageResult<Vec<Topic>> {
    let mut topics: Vec<Topic> = storage
        .list_or_empty(view.dir_name())
        .await?
        .into_iter()
        .filter(|e| e.is_dir)
        .filter_map(|e| Topic::new(e.name).ok())
        .collect();
    topics.sort();
    Ok(topics)
}

/// A collector file of a topic, as listed in `data/<topic>/<collector>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorFile {
    /// The collector whose directory holds it.
    pub collector: NodeName,
    /// Its parsed name; `name.topic` is the directory topic.
    pub name: CollectorFileName,
    /// Its path, relative to the root.
    pub path: String,
    /// Its length as listed.
    pub len: u64,
}

/// The collector files of `topic` still in `data/` (see the [module
/// docs](self)), sorted by minute, collector and sequence number.
pub async fn collector_files(
    storage: &dyn Storage,
    topic: &Topic,
) -> StorageResult<Vec<CollectorFile>> {
    let mut out = Vec::new();
    for dir in storage
        .list_or_empty(&Layout::topic_dir(View::Collector, topic))
        .await?
    {
        let Ok(collector) = NodeName::new(&dir.name) else {
            continue;
        };
        if !dir.is_dir {
            continue;
        }
        for file in storage.list_or_empty(&dir.path).await? {
            if file.is_dir {
                continue;
            }
            let Some(name) = Layout::collector_file_in(topic, &file.name) else {
                tracing::debug!(path = %file.path, "not a collector file of the topic; left alone");
                continue;
            };
            out.push(CollectorFile {
                collector: collector.clone(),
                name,
                path: file.path,
                len: file.len,
            });
        }
    }
    out.sort_by(|a, b| {
        (a.name.minute, &a.collector, a.name.seq).cmp(&(b.name.minute, &b.collector, b.name.seq))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use chrono::Utc;

    use super::*;
    use crate::storage::{FaultPlan, FaultStorage, LocalStorage, Op};

    fn m(text: &str) -> Minute {
        Minute::parse_flexible(text).unwrap()
    }

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    /// Creates the directories `dirs` and empty files `files`.
    async fn create(storage: &LocalStorage, dirs: &[&str], files: &[&str]) {
        for dir in dirs {
            storage.mkdirs(dir).await.unwrap();
        }
        for file in files {
            storage.write_atomic(file, Bytes::new()).await.unwrap();
        }
    }

    async fn storage_with(dir: &std::path::Path, view: View, minutes: &[&str]) -> LocalStorage {
        let storage = LocalStorage::open(dir).unwrap();
        for minute in minutes {
            storage
                .mkdirs(&Layout::minute_dir(view, &topic("clicks"), m(minute)))
                .await
                .unwrap();
        }
        storage
    }

    #[test]
    fn date_dirs_span_their_year_to_minute() {
        let year = DateDir::child(None, "2026").unwrap();
        assert_eq!((year.depth(), year.path()), (1, "2026".to_owned()));
        assert_eq!(year.first(), m("2026-01-01T00:00"));
        assert_eq!(year.last(), m("2026-12-31T23:59"));
        assert_eq!(year.end(), m("2027-01-01T00:00").start());
        let month = DateDir::child(Some(year), "02").unwrap();
        assert_eq!(month.path(), "2026/02");
        assert_eq!(month.end(), m("2026-03-01T00:00").start());
        let day = DateDir::child(Some(month), "28").unwrap();
        assert_eq!(day.end(), m("2026-03-01T00:00").start());
        let hour = DateDir::child(Some(day), "23").unwrap();
        assert_eq!(hour.last(), m("2026-02-28T23:59"));
        let minute = DateDir::child(Some(hour), "59").unwrap();
        assert_eq!(minute.path(), "2026/02/28/23/59");
        assert_eq!(
            (minute.first(), minute.last()),
            (m("2026-02-28T23:59"), m("2026-02-28T23:59"))
        );
        assert_eq!(minute.end(), m("2026-03-01T00:00").start());
        let last_year = DateDir::child(None, "9999").unwrap();
        assert_eq!(last_year.last(), Minute::MAX);
        for (parent, bad) in [
            (Some(year), "13"),
            (Some(month), "29"),
            (Some(year), "1"),
            (Some(year), "001"),
            (Some(year), "_tmp.x"),
            (None, "1969"),
            (None, "20266"),
            (Some(minute), "00"),
        ] {
            assert_eq!(DateDir::child(parent, bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn walks_minute_dirs_in_order_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let minutes = [
            "2026-11-22T23:59",
            "2026-11-23T00:00",
            "2026-12-01T10:05",
            "2025-01-01T00:00",
        ];
        let storage = storage_with(dir.path(), View::Local, &minutes).await;
        let junk_dirs = [
            "streams_local/clicks/2026/xx",
            "streams_local/clicks/2026/13/01/00/00",
            "streams_local/clicks/2026/11/22/23/_tmp.x",
        ];
        create(
            &storage,
            &junk_dirs,
            &["streams_local/clicks/2026/11/22/23/60"],
        )
        .await;
        let mut sorted: Vec<Minute> = minutes.iter().map(|t| m(t)).collect();
        sorted.sort();
        let clicks = topic("clicks");
        let oldest_first = MinuteWalker::new(&storage, View::Local, &clicks)
            .all()
            .await;
        assert_eq!(oldest_first.unwrap(), sorted);
        let newest_first = MinuteWalker::new(&storage, View::Local, &clicks)
            .newest_first()
            .all()
            .await
            .unwrap();
        sorted.reverse();
        assert_eq!(newest_first, sorted);
        let other = MinuteWalker::new(&storage, View::Local, &topic("none"))
            .next()
            .await
            .unwrap();
        assert_eq!(other, None);
        let collector = MinuteWalker::new(&storage, View::Collector, &clicks)
            .all()
            .await;
        assert_eq!(collector.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn a_range_skips_whole_levels_without_listing_them() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage_with(
            dir.path(),
            View::Merged,
            &[
                "2025-12-31T23:59",
                "2026-11-22T09:59",
                "2026-11-22T10:05",
                "2026-11-22T10:06",
                "2026-11-23T00:00",
            ],
        )
        .await;
        let clicks = topic("clicks");
        // Listing any of these fails the walk: the year 2025 and the hour 09
        // are before the range, the day 23 after the second minute taken.
        for skipped in ["clicks/2025", "clicks/2026/11/22/09", "clicks/2026/11/23"] {
            let plan = FaultPlan::new();
            plan.fail_ops(&[Op::List]);
            plan.only_paths_containing(skipped);
            let faulty = FaultStorage::new(Arc::new(storage.clone()), plan.clone());
            let from = MinuteWalker::new(&faulty, View::Merged, &clicks)
                .from(m("2026-11-22T10:00"))
                .take(2)
                .await
                .unwrap();
            assert_eq!(from, vec![m("2026-11-22T10:05"), m("2026-11-22T10:06")]);
            assert_eq!(plan.injected(), 0, "{skipped} was listed");
        }
        let newest_until = MinuteWalker::new(&storage, View::Merged, &clicks)
            .newest_first()
            .until(m("2026-11-22T10:05"))
            .from(None)
            .all()
            .await
            .unwrap();
        assert_eq!(
            newest_until,
            vec![
                m("2026-11-22T10:05"),
                m("2026-11-22T09:59"),
                m("2025-12-31T23:59")
            ]
        );
        let empty = MinuteWalker::new(&storage, View::Merged, &clicks)
            .from(m("2026-11-23T00:01"))
            .all()
            .await
            .unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn hour_dirs_are_in_range_when_any_of_their_minutes_is() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage_with(
            dir.path(),
            View::Hourly,
            &["2026-11-22T09:00", "2026-11-22T10:00", "2026-11-22T11:00"],
        )
        .await;
        let clicks = topic("clicks");
        let hours = MinuteWalker::new(&storage, View::Hourly, &clicks)
            .from(m("2026-11-22T09:59"))
            .until(m("2026-11-22T10:59"))
            .all()
            .await
            .unwrap();
        assert_eq!(hours, vec![m("2026-11-22T09:00"), m("2026-11-22T10:00")]);
    }

    #[tokio::test]
    async fn visits_report_each_directory_above_the_minutes_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage_with(
            dir.path(),
            View::Local,
            &["2026-11-22T23:59", "2026-11-23T00:00"],
        )
        .await;
        create(&storage, &["streams_local/clicks/2026/11/24"], &[]).await;
        let clicks = topic("clicks");
        let mut walk = MinuteWalker::new(&storage, View::Local, &clicks);
        let mut seen = Vec::new();
        while let Some(visit) = walk.next_visit().await.unwrap() {
            seen.push(match visit {
                Visit::Dir(minute) => minute.to_string(),
                Visit::Left(dir) => walk.dir_path(dir),
            });
        }
        assert_eq!(
            seen,
            [
                "2026-11-22T23:59Z",
                "streams_local/clicks/2026/11/22/23",
                "streams_local/clicks/2026/11/22",
                "2026-11-23T00:00Z",
                "streams_local/clicks/2026/11/23/00",
                "streams_local/clicks/2026/11/23",
                "streams_local/clicks/2026/11/24",
                "streams_local/clicks/2026/11",
                "streams_local/clicks/2026",
            ]
        );
    }

    #[tokio::test]
    async fn next_sealed_skips_unsealed_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage_with(
            dir.path(),
            View::Local,
            &["2026-11-22T23:58", "2026-11-22T23:59", "2026-11-23T00:00"],
        )
        .await;
        let clicks = topic("clicks");
        Manifest::new(
            View::Local,
            clicks.clone(),
            m("2026-11-22T23:59"),
            vec![],
            vec![],
            Utc::now(),
            "w".into(),
            vec![],
        )
        .seal(&storage)
        .await
        .unwrap();
        let newest = newest_sealed_dir(&storage, View::Local, &clicks).await;
        assert_eq!(newest.unwrap(), Some(m("2026-11-22T23:59")));
        let oldest = oldest_dir(&storage, View::Local, &clicks).await;
        assert_eq!(oldest.unwrap(), Some(m("2026-11-22T23:58")));
        let oldest = MinuteWalker::new(&storage, View::Local, &clicks)
            .next_sealed()
            .await
            .unwrap();
        assert_eq!(oldest, Some(m("2026-11-22T23:59")));
        let none = MinuteWalker::new(&storage, View::Local, &clicks)
            .from(m("2026-11-23T00:00"))
            .next_sealed()
            .await
            .unwrap();
        assert_eq!(none, None);
    }

    #[tokio::test]
    async fn topics_are_the_valid_directory_names() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path()).unwrap();
        let dirs = [
            "data/views",
            "data/_audit",
            "data/clicks",
            "data/.hidden",
            "data/bad-name",
        ];
        create(&storage, &dirs, &["data/afile"]).await;
        let found = topics(&storage, View::Collector).await.unwrap();
        assert_eq!(
            found,
            vec![topic("_audit"), topic("clicks"), topic("views")]
        );
        assert!(topics(&storage, View::Merged).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn collector_files_follow_the_layout_grammar() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path()).unwrap();
        let minute = m("2026-11-22T10:05");
        let later = m("2026-11-22T10:06");
        let (audit, user) = (Topic::audit(), topic("sys_audit"));
        let audit_name = Layout::collector_file_name(&audit, minute, 0);
        assert_eq!(audit_name, "sys_audit-2026-11-22-10-05_00000.zst");
        let files = [
            // Both topics' files are named `sys_audit-...`: the directory decides.
            format!("data/_audit/c2/{audit_name}"),
            format!(
                "data/_audit/c1/{}",
                Layout::collector_file_name(&audit, later, 3)
            ),
            format!("data/_audit/c1/{audit_name}"),
            format!("data/sys_audit/c1/{audit_name}"),
            // Not files of `_audit`: a leftover copy, another topic's file, a
            // name that is not a collector file, a file in no collector's
            // directory, a hidden collector directory.
            format!("data/_audit/c1/{}", Layout::tmp_name(&audit_name)),
            format!(
                "data/_audit/c1/{}.1a2b3c4d5e6f7a8b",
                Layout::tmp_name(&audit_name)
            ),
            format!(
                "data/_audit/c1/{}",
                Layout::collector_file_name(&topic("audit"), minute, 1)
            ),
            "data/_audit/c1/_audit-2026-11-22-10-05_00002.zst".to_owned(),
            "data/_audit/c1/notes.txt".to_owned(),
            format!("data/_audit/{audit_name}"),
            format!("data/_audit/_c3/{audit_name}"),
        ];
        for path in &files {
            storage
                .write_atomic(path, Bytes::from_static(b"xy"))
                .await
                .unwrap();
        }
        // A directory with a collector file's name is not a file.
        storage
            .mkdirs(&format!(
                "data/_audit/c1/{}",
                Layout::collector_file_name(&audit, minute, 9)
            ))
            .await
            .unwrap();
        let found = collector_files(&storage, &audit).await.unwrap();
        let summary: Vec<(String, String, u32, &str)> = found
            .iter()
            .map(|f| {
                assert_eq!(f.name.topic, audit);
                assert_eq!(f.len, 2);
                (
                    f.collector.to_string(),
                    f.name.minute.to_string(),
                    f.name.seq,
                    f.path.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("c1".to_owned(), minute.to_string(), 0, files[2].as_str()),
                ("c2".to_owned(), minute.to_string(), 0, files[0].as_str()),
                ("c1".to_owned(), later.to_string(), 3, files[1].as_str()),
            ]
        );
        let user_files = collector_files(&storage, &user).await.unwrap();
        assert_eq!(user_files.len(), 1);
        assert_eq!(user_files[0].path, files[3]);
        assert_eq!(user_files[0].name.topic, user);
        assert!(collector_files(&storage, &topic("audit"))
            .await
            .unwrap()
            .is_empty());
    }
}
