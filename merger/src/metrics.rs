//! The worker's Prometheus metrics (served on `/metrics` by `conduit worker`).
//!
//! Every metric is registered under `conduit_worker_` and labelled with the job
//! (`local`, `merge`, ...), so one alert rule covers every job:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `conduit_worker_passes_total` | counter | job | passes that completed |
//! | `conduit_worker_errors_total` | counter | job | passes that failed (retried next interval) |
//! | `conduit_worker_sealed_dirs_total` | counter | job | minute (or hour) directories sealed |
//! | `conduit_worker_files_moved_total` | counter | job | data files moved or copied into a view |
//! | `conduit_worker_late_files_total` | counter | job | files recorded as late |
//! | `conduit_worker_bytes_copied_total` | counter | job | bytes copied (renames count 0) |
//! | `conduit_worker_deleted_total` | counter | job | directories deleted by retention |
//! | `conduit_worker_backlog_dirs` | gauge | job | minute (or hour) directories waiting, reported by the last pass |
//! | `conduit_worker_files_quarantined_total` | counter | job | files set aside in `quarantine/` because they could not be sealed |
//! | `conduit_worker_duplicates_dropped_total` | counter | job | records dropped at the seal as second copies of publisher batches |
//! | `conduit_worker_seal_file_checks_total` | counter | job, check (`trailer`, `full`) | data files the local seal listed, by how it learned their length and CRC-32C: from the collector's close trailer (one ranged read of the tail) or by reading the whole file (no writer checksum, or a tail that does not agree with the length) |
//! | `conduit_worker_step_seconds_total` | counter | job, step | seconds passes spent in each step (every topic job: `topics`, its reads before the topics, the heartbeats for `local`; local job: `list`, `move`, `inspect`, `dedup`, `manifest`, `checkpoint`; merge: `sources`, `copy`, `manifest`; mirror: `copy`, `manifest`): where a seal's time goes |
//! | `conduit_worker_lag_seconds` | gauge | view (`local`, `merged`, `mirror`, `hourly`), topic | clock minus the end of the newest sealed minute |
//! | `conduit_worker_source_lag_seconds` | gauge | topic, cluster | merge job: clock minus the end of the newest sealed local minute of that source cluster it has seen (a source it cannot read keeps the last value seen, so the lag grows while a link is cut); above `worker.max_source_lag_secs` the merged view stops waiting for it |
//! | `conduit_worker_invalid_rows_total` | counter | topic | events of topics with `compact_format = "parquet"` set aside from their hourly Parquet file (not matching the schema, or not UTF-8 where the payload column is a string) |
//! | `conduit_worker_storage_timeouts_total` | counter | cluster | storage calls to that cluster that did not finish within `worker.storage_timeout_ms` (an unreachable cluster: a cut link, a hung NameNode), reads that received no byte for that long; each is also logged at WARN naming the cluster, the call and the path |
//! | `conduit_worker_storage_slow_reads_total` | counter | cluster | reads from that cluster that kept moving but below `worker.storage_min_read_bytes_per_sec` (they took longer than `storage_timeout_ms` plus their bytes at that rate); each is also logged at WARN naming the cluster, the path and the rate |
//! | `conduit_worker_lease_held` | gauge | | 1 while this worker holds the lease, 0 on standby |
//! | `conduit_worker_lease_epoch` | gauge | | epoch of the lease last held |
//!
//! The lag is computed from [`SealProgress`], which jobs update as they seal,
//! after every round and every second in between
//! ([`crate::daemon::LAG_REFRESH`]), so it keeps following the clock while a
//! round waits on an unreachable cluster; a healthy cluster shows between 0 and
//! about 63 s (a minute is sealed shortly after it ends, and the lag grows until
//! the next one is).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use conduit_core::http::prometheus_client::metrics::counter::Counter;
use conduit_core::http::prometheus_client::metrics::family::Family;
use conduit_core::http::prometheus_client::metrics::gauge::Gauge;
use conduit_core::http::SharedRegistry;
use conduit_core::{Minute, NodeName, Topic};

use crate::PassReport;

/// Label set: a list of (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// What a job seals, as the `view` label of `conduit_worker_lag_seconds`: the
/// local, merged and hourly views, and the mirror (merged minutes copied from
/// another cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SealView {
    /// `streams_local/`, sealed by the local job.
    Local,
    /// `streams/`, sealed by the merge job.
    Merged,
    /// `streams/` minutes of topics mirrored from their origin cluster.
    Mirror,
    /// `streams_hourly/`, sealed by the compact job (the newest sealed minute is
    /// the last of the newest hour).
    Hourly,
}

impl SealView {
    /// Every view.
    pub const ALL: [SealView; 4] = [
        SealView::Local,
        SealView::Merged,
        SealView::Mirror,
        SealView::Hourly,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SealView::Local => "local",
            SealView::Merged => "merged",
            SealView::Mirror => "mirror",
            SealView::Hourly => "hourly",
        }
    }
}

/// The newest sealed minute per (view, topic), shared between a job and the
/// daemon's lag gauge. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SealProgress {
    inner: Arc<Mutex<BTreeMap<(SealView, Topic), Minute>>>,
    sources: Arc<Mutex<BTreeMap<(Topic, NodeName), Minute>>>,
}

impl SealProgress {
    /// Records that `minute` is the newest sealed minute of `topic` in `view`.
    pub fn record(&self, view: SealView, topic: &Topic, minute: Minute) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((view, topic.clone()), minute);
    }

    /// Every (view, topic, newest sealed minute).
    pub fn snapshot(&self) -> Vec<(SealView, Topic, Minute)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|((v, t), m)| (*v, t.clone(), *m)).collect()
    }

    /// Records that `minute` is the newest sealed local minute of `topic` that
    /// the merge job has seen on source cluster `source`.
    pub fn record_source(&self, topic: &Topic, source: &NodeName, minute: Minute) {
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((topic.clone(), source.clone()), minute);
    }

    /// Every (topic, source cluster, newest sealed local minute seen).
    pub fn source_snapshot(&self) -> Vec<(Topic, NodeName, Minute)> {
        let map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|((t, c), m)| (t.clone(), c.clone(), *m))
            .collect()
    }

    /// The newest sealed minute of `topic` in `view`, if any.
    pub fn get(&self, view: SealView, topic: &Topic) -> Option<Minute> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(view, topic.clone())).copied()
    }
}

/// All worker metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// Completed passes by job.
    pub passes: Family<Labels, Counter>,
    /// Failed passes by job.
    pub errors: Family<Labels, Counter>,
    /// Directories sealed by job.
    pub sealed: Family<Labels, Counter>,
    /// Files moved or copied by job.
    pub files: Family<Labels, Counter>,
    /// Late files by job.
    pub late_files: Family<Labels, Counter>,
    /// Bytes copied by job.
    pub bytes_copied: Family<Labels, Counter>,
    /// Directories deleted by job.
    pub deleted: Family<Labels, Counter>,
    /// Backlog of the last pass by job.
    pub pending: Family<Labels, Gauge>,
    /// Files quarantined by job.
    pub quarantined: Family<Labels, Counter>,
    /// Duplicate records dropped by job.
    pub duplicates_dropped: Family<Labels, Counter>,
    /// Data files listed by the local seal, by job and check.
    pub seal_checks: Family<Labels, Counter>,
    /// Seconds spent per step, by job and step.
    pub step_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    /// Lag of the newest sealed minute behind the clock, by view and topic.
    pub lag_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Lag of each merge source's newest sealed local minute, by topic and
    /// cluster.
    pub source_lag_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Rows set aside from hourly Parquet files, by topic (the compact job
    /// counts them, [`crate::CompactJob::with_invalid_rows`]).
    pub invalid_rows: Family<Labels, Counter>,
    /// Storage calls that timed out, by cluster.
    pub storage_timeouts: Family<Labels, Counter>,
    /// Reads below the minimum rate, by cluster.
    pub storage_slow_reads: Family<Labels, Counter>,
    /// 1 while the lease is held.
    pub lease_held: Gauge,
    /// Epoch of the lease last held.
    pub lease_epoch: Gauge,
}

impl WorkerMetrics {
    /// Creates the metrics and registers them under `conduit_worker_*`.
    pub fn new(registry: &SharedRegistry) -> Self {
        let m = WorkerMetrics {
            passes: Family::default(),
            errors: Family::default(),
            sealed: Family::default(),
            files: Family::default(),
            late_files: Family::default(),
            bytes_copied: Family::default(),
            deleted: Family::default(),
            pending: Family::default(),
            quarantined: Family::default(),
            duplicates_dropped: Family::default(),
            seal_checks: Family::default(),
            step_seconds: Family::default(),
            lag_seconds: Family::default(),
            source_lag_seconds: Family::default(),
            invalid_rows: Family::default(),
            storage_timeouts: Family::default(),
            storage_slow_reads: Family::default(),
            lease_held: Gauge::default(),
            lease_epoch: Gauge::default(),
        };
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        let r = r.sub_registry_with_prefix("conduit_worker");
        r.register("passes", "Job passes completed", m.passes.clone());
        r.register("errors", "Job passes that failed", m.errors.clone());
        r.register(
            "sealed_dirs",
            "Minute or hour directories sealed",
            m.sealed.clone(),
        );
        r.register(
            "files_moved",
            "Data files moved or copied into a view",
            m.files.clone(),
        );
        r.register("late_files", "Files recorded as late", m.late_files.clone());
        r.register(
            "bytes_copied",
            "Bytes copied (renames count 0)",
            m.bytes_copied.clone(),
        );
        r.register(
            "deleted",
            "Directories deleted by retention",
            m.deleted.clone(),
        );
        r.register(
            "backlog_dirs",
            "Minute or hour directories waiting to be sealed, as reported by the last pass",
            m.pending.clone(),
        );
        r.register(
            "files_quarantined",
            "Files set aside in quarantine/ because they could not be sealed",
            m.quarantined.clone(),
        );
        r.register(
            "duplicates_dropped",
            "Records dropped at the seal as second copies of publisher batches",
            m.duplicates_dropped.clone(),
        );
        r.register(
            "seal_file_checks",
            "Data files the local seal listed, by how it learned their length and CRC-32C (trailer: the writer's close trailer; full: read in full)",
            m.seal_checks.clone(),
        );
        r.register(
            "step_seconds",
            "Seconds job passes spent in each step",
            m.step_seconds.clone(),
        );
        r.register(
            "lag_seconds",
            "Seconds between the clock and the end of the newest sealed minute",
            m.lag_seconds.clone(),
        );
        r.register(
            "source_lag_seconds",
            "Merge job: seconds between the clock and the end of the newest sealed local minute seen on each source cluster",
            m.source_lag_seconds.clone(),
        );
        r.register(
            "invalid_rows",
            "Events set aside from hourly Parquet files (schema mismatch or not UTF-8), by topic",
            m.invalid_rows.clone(),
        );
        r.register(
            "storage_timeouts",
            "Storage calls that did not finish within worker.storage_timeout_ms, by cluster",
            m.storage_timeouts.clone(),
        );
        r.register(
            "storage_slow_reads",
            "Reads that kept moving below worker.storage_min_read_bytes_per_sec, by cluster",
            m.storage_slow_reads.clone(),
        );
        r.register(
            "lease_held",
            "1 while this worker holds the cluster's lease, 0 on standby",
            m.lease_held.clone(),
        );
        r.register(
            "lease_epoch",
            "Epoch of the lease this worker last held",
            m.lease_epoch.clone(),
        );
        m
    }

    fn job(job: &str) -> Labels {
        vec![("job", job.to_owned())]
    }

    /// Makes every counter of `job` present (at 0) before its first pass, so a
    /// scrape tells "none yet" from "not running".
    pub fn start_job(&self, job: &str) {
        let l = Self::job(job);
        for family in [
            &self.passes,
            &self.errors,
            &self.sealed,
            &self.files,
            &self.late_files,
            &self.bytes_copied,
            &self.deleted,
            &self.quarantined,
            &self.duplicates_dropped,
        ] {
            let _created = family.get_or_create(&l);
        }
    }

    /// Counts a completed pass of `job`.
    pub fn record_pass(&self, job: &str, report: &PassReport) {
        let l = Self::job(job);
        self.passes.get_or_create(&l).inc();
        self.sealed.get_or_create(&l).inc_by(report.sealed);
        self.files.get_or_create(&l).inc_by(report.files);
        self.late_files.get_or_create(&l).inc_by(report.late_files);
        self.bytes_copied
            .get_or_create(&l)
            .inc_by(report.bytes_copied);
        self.deleted.get_or_create(&l).inc_by(report.deleted);
        self.quarantined
            .get_or_create(&l)
            .inc_by(report.quarantined);
        self.duplicates_dropped
            .get_or_create(&l)
            .inc_by(report.duplicates_dropped);
        self.pending
            .get_or_create(&l)
            .set(i64::try_from(report.pending).unwrap_or(i64::MAX));
        for (check, n) in &report.seal_checks {
            self.seal_checks
                .get_or_create(&vec![
                    ("job", job.to_owned()),
                    ("check", (*check).to_owned()),
                ])
                .inc_by(*n);
        }
        for (step, micros) in &report.step_micros {
            self.step_seconds
                .get_or_create(&vec![("job", job.to_owned()), ("step", (*step).to_owned())])
                .inc_by(*micros as f64 / 1e6);
        }
    }

    /// Counts a failed pass of `job`.
    pub fn record_error(&self, job: &str) {
        self.errors.get_or_create(&Self::job(job)).inc();
    }

    /// Sets the lag gauges from `progress` at `now`.
    pub fn update_lag(&self, progress: &SealProgress, now: DateTime<Utc>) {
        for (view, topic, minute) in progress.snapshot() {
            let lag = (now - minute.end()).num_milliseconds() as f64 / 1000.0;
            self.lag_seconds
                .get_or_create(&vec![
                    ("view", view.as_str().to_owned()),
                    ("topic", topic.to_string()),
                ])
                .set(lag.max(0.0));
        }
        for (topic, cluster, minute) in progress.source_snapshot() {
            let lag = (now - minute.end()).num_milliseconds() as f64 / 1000.0;
            self.source_lag_seconds
                .get_or_create(&vec![
                    ("topic", topic.to_string()),
                    ("cluster", cluster.to_string()),
                ])
                .set(lag.max(0.0));
        }
    }
}
