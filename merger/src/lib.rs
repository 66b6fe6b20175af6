//! `conduit-merger` is the **worker** (the crate directory is still called
//! `merger/`; `conduit worker` runs it): it turns collector files into the views
//! batch jobs and tail readers use.
//!
//! One worker is active per cluster (a lease on the cluster's own storage). Its
//! jobs, each a module with a `pass` that does one round of work and returns a
//! [`PassReport`]:
//!
//! - `local`: moves closed collector files of minute M into
//!   `streams_local/<topic>/yyyy/MM/dd/HH/mm/` and seals M once every live
//!   collector's watermark has passed it.
//! - `merge`: builds `streams/...` minute M as the union of every source cluster's
//!   sealed local minute M.
//! - `mirror`: copies sealed merged minutes byte for byte to mirror clusters.
//! - `purge`: deletes sealed minutes older than retention.
//! - `compact`: concatenates the minute files of closed hours into
//!   `streams_hourly/`, or writes them as one Parquet file per hour
//!   (`parquet`, for topics with `compact_format = "parquet"`).
//!
//! `local`, `merge`, `mirror` and `compact` work topic by topic: they implement
//! `TopicJob`, whose one pass loop ([`Job`] for every `TopicJob`) handles a
//! failing topic the same way for all of them. The tree they read (minute
//! directories, topics, collector files) is `conduit_core::tree`'s.
//!
//! Invariants (see `docs/worker.md`): a sealed directory never changes; every closed
//! collector file lands in exactly one local minute; `_SUCCESS` is written last;
//! only the lease holder commits ([`Fence`]).

pub mod audit;
pub mod checkpoint;
pub mod daemon;
mod dedup;
pub mod lease;
pub mod local;
pub mod metrics;
mod quarantine;
mod rewrite;
mod seal;
pub mod status;

pub mod compact;
mod copy;
pub mod merge;
pub mod mirror;
pub mod parquet;
pub mod purge;
mod transcode;

pub use compact::CompactJob;
pub use merge::MergeJob;
pub use mirror::MirrorJob;
pub use purge::PurgeJob;

pub use checkpoint::Checkpoints;
pub use daemon::{Daemon, DaemonStatus};
pub use lease::{Lease, LeaseRecord, LeaseSettings, LeaseStatus, Monotonic};
pub use local::LocalJob;
pub use metrics::{SealProgress, SealView, WorkerMetrics};
pub use status::StatusPage;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use conduit_core::{
    Config, ManifestError, NodeName, SharedClock, SharedStorage, StorageError, Topic,
};

/// One cluster as the worker sees it: its name and its storage root.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The cluster's name (`dc1`).
    pub name: NodeName,
    /// Its storage root.
    pub storage: SharedStorage,
}

/// `storage` of `cluster` as the worker uses it: every call bounded by
/// `worker.storage_timeout_ms`, reads by their progress (no byte for that
/// long, or slower than `worker.storage_min_read_bytes_per_sec`; see
/// `conduit_core::storage::TimeoutStorage`). A call that times out is logged at
/// WARN naming the value and counted (`conduit_worker_storage_timeouts_total`,
/// or `conduit_worker_storage_slow_reads_total` for a read below the rate), and
/// fails as a transient error, so a pass against an unreachable cluster ends
/// instead of waiting for the kernel's TCP timeout. For `storage_timeout_ms`
/// after a timeout, calls to that cluster fail at once: a cut cluster costs one
/// timeout per `storage_timeout_ms`, not one per call (a pass makes several per
/// topic).
pub fn bounded_storage(
    storage: SharedStorage,
    cluster: &str,
    limits: &conduit_core::config::WorkerConfig,
    metrics: &WorkerMetrics,
) -> SharedStorage {
    use conduit_core::storage::{TimeoutKind, TimeoutStorage};
    let label = vec![("cluster", cluster.to_owned())];
    let timeouts = metrics.storage_timeouts.get_or_create(&label).clone();
    let slow_reads = metrics.storage_slow_reads.get_or_create(&label).clone();
    let cluster = cluster.to_owned();
    let limit_ms = limits.storage_timeout_ms;
    let min_rate = limits.storage_min_read_bytes_per_sec;
    let limit = std::time::Duration::from_millis(limit_ms);
    Arc::new(
        TimeoutStorage::observed(
            storage,
            limit,
            Arc::new(move |op, path, kind| match kind {
                TimeoutKind::NoProgress => {
                    timeouts.inc();
                    tracing::warn!(
                        %cluster,
                        op,
                        path,
                        storage_timeout_ms = limit_ms,
                        "storage call to a cluster timed out (unreachable or hung storage; for a read: no byte received for that long); the pass fails for it and is retried"
                    );
                }
                TimeoutKind::TooSlow => {
                    slow_reads.inc();
                    tracing::warn!(
                        %cluster,
                        op,
                        path,
                        storage_timeout_ms = limit_ms,
                        storage_min_read_bytes_per_sec = min_rate,
                        "storage read from a cluster kept moving but below worker.storage_min_read_bytes_per_sec; the pass fails for it and is retried (lower the rate for a link this slow)"
                    );
                }
            }),
        )
        .progress(min_rate)
        .fail_fast(limit),
    )
}

/// Permission to commit. Every job calls [`Fence::check`] immediately before each
/// step that changes what readers see (a rename into a view, a `_SUCCESS`, a
/// delete); an error means the lease was lost and the job must stop.
#[async_trait::async_trait]
pub trait Fence: Send + Sync + fmt::Debug {
    /// Ok while this worker still holds the lease.
    async fn check(&self) -> Result<(), WorkerError>;
}

/// A fence that always allows (single worker, tests, `--once` without a lease).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFence;

#[async_trait::async_trait]
impl Fence for NoFence {
    async fn check(&self) -> Result<(), WorkerError> {
        Ok(())
    }
}

/// A shared fence.
pub type SharedFence = Arc<dyn Fence>;

/// Errors of worker jobs.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A storage call failed (the pass is retried later).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A manifest could not be read or written.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// This worker no longer holds the cluster's lease; it must not commit.
    #[error("lost the worker lease {lease}: {reason}")]
    LostLease {
        /// Lease path.
        lease: String,
        /// Why the lease is considered lost.
        reason: String,
    },
    /// Writing or verifying the lease record failed on storage (disk full,
    /// storage down): the lease is kept until its deadline, not taken over.
    #[error("lease renewal failed: cannot write or verify {lease}: {source}")]
    LeaseStorage {
        /// Lease path.
        lease: String,
        /// The storage error.
        source: StorageError,
    },
    /// A copied file does not match its source.
    #[error("copy of {path} does not match its source: {reason}")]
    CopyMismatch {
        /// Destination path.
        path: String,
        /// Size or checksum difference.
        reason: String,
    },
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// What one pass of a job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Minute (or hour) directories sealed.
    pub sealed: u64,
    /// Data files moved or copied into a view.
    pub files: u64,
    /// Bytes copied (renames count 0).
    pub bytes_copied: u64,
    /// Files recorded as late.
    pub late_files: u64,
    /// Directories deleted by retention.
    pub deleted: u64,
    /// Minutes still waiting (backlog), when the job can tell.
    pub pending: u64,
    /// Files set aside in `quarantine/` because they could not be sealed.
    pub quarantined: u64,
    /// Records dropped at the seal as second copies of publisher batches.
    pub duplicates_dropped: u64,
    /// Data files the seal listed, by how it learned their length and checksum
    /// (`trailer`: from the writer's close trailer; `full`: by reading them).
    pub seal_checks: BTreeMap<&'static str, u64>,
    /// Microseconds the pass spent in each of its steps (every topic job's
    /// `topics`: what it reads before the topics, the heartbeats for the local
    /// job; the local job's `list`, `move`, `inspect`, `dedup`, `manifest`,
    /// `checkpoint`; the merge job's `sources` (reading the sources' manifests),
    /// `copy`, `manifest` (tidying and sealing the directory); the mirror job's
    /// `copy`, `manifest`), for `conduit_worker_step_seconds_total`.
    pub step_micros: BTreeMap<&'static str, u64>,
}

impl PassReport {
    /// Adds another report's counts to this one.
    pub fn add(&mut self, other: &PassReport) {
        self.sealed += other.sealed;
        self.files += other.files;
        self.bytes_copied += other.bytes_copied;
        self.late_files += other.late_files;
        self.deleted += other.deleted;
        self.pending += other.pending;
        self.quarantined += other.quarantined;
        self.duplicates_dropped += other.duplicates_dropped;
        for (check, n) in &other.seal_checks {
            *self.seal_checks.entry(check).or_default() += n;
        }
        for (step, micros) in &other.step_micros {
            *self.step_micros.entry(step).or_default() += micros;
        }
    }

    /// Whether the pass changed or found anything (every count but the step
    /// times); a pass that did nothing is not logged.
    pub fn did_something(&self) -> bool {
        let counts = PassReport {
            step_micros: BTreeMap::new(),
            ..self.clone()
        };
        counts != PassReport::default()
    }

    /// Adds the time since `since` to `step`.
    pub fn timed(&mut self, step: &'static str, since: std::time::Instant) {
        let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        *self.step_micros.entry(step).or_default() += micros;
    }
}

/// What every job is built from.
///
/// A worker writes only to its own cluster (`this`); it reads other clusters
/// (merge sources, the origin of a mirror) through `clusters`. Which topics a job
/// serves comes from `config`: the merge job of cluster X serves topics whose
/// `merge_into` is X; the mirror job of cluster Y serves topics listing Y in
/// `mirrors` and pulls from their `merge_into` cluster; topics found in storage but
/// absent from the config get `topic_defaults`.
#[derive(Debug, Clone)]
pub struct JobEnv {
    /// The cluster this worker serves and writes to.
    pub this: Cluster,
    /// Every cluster of the config (including `this`), by name.
    pub clusters: BTreeMap<NodeName, Cluster>,
    /// Topics, retention, merge and mirror roles, worker settings.
    pub config: Arc<Config>,
    /// Minute boundaries and timestamps.
    pub clock: SharedClock,
    /// Checked before every commit step.
    pub fence: SharedFence,
    /// `<cluster>/<worker id>`, recorded as `sealed_by` in manifests.
    pub worker_id: String,
}

impl JobEnv {
    /// The topics named in the config (names that are not valid topics are
    /// skipped; `Config::validate` reports them).
    pub fn configured_topics(&self) -> BTreeSet<Topic> {
        self.config
            .topics
            .keys()
            .filter_map(|t| Topic::new(t.as_str()).ok())
            .collect()
    }
}

/// One job of the worker (`local`, `merge`, `mirror`, `purge`, `compact`).
#[async_trait::async_trait]
pub trait Job: Send + fmt::Debug {
    /// The job's name as used on the command line and in metrics.
    fn name(&self) -> &'static str;

    /// Does one round of work: everything that is ready now, oldest first, in
    /// bounded memory. Safe to call again after an error or a crash at any point.
    async fn pass(&mut self) -> Result<PassReport, WorkerError>;
}

/// A job that works topic by topic (`local`, `merge`, `mirror`, `compact`). Its
/// [`Job::pass`] is the same for all: list the topics with [`TopicJob::topics`],
/// run [`TopicJob::pass_topic`] for each in order and sum the reports. A topic
/// that fails is logged (`<job> pass failed for a topic`, with `topic` and
/// `error`) and the other topics still run; the pass then returns the first
/// error, which the daemon counts. A lost lease stops the pass at once.
#[async_trait::async_trait]
pub(crate) trait TopicJob: Send + fmt::Debug {
    /// What one topic's step needs besides the topic (its sources, its origin,
    /// its source view, ...).
    type Plan: Send;

    /// The job's name as used on the command line and in metrics.
    const NAME: &'static str;

    /// The topics to serve in this pass, in order, each with its plan.
    async fn topics(&mut self) -> Result<Vec<(Topic, Self::Plan)>, WorkerError>;

    /// Does the pass's work for one topic. After an error, the job must not
    /// trust what it cached about the topic (the next pass rebuilds it).
    async fn pass_topic(
        &mut self,
        topic: &Topic,
        plan: Self::Plan,
    ) -> Result<PassReport, WorkerError>;

    /// What made [`TopicJob::topics`] leave topics out of this pass (a listing
    /// it could not make), taken once its topics have run: the pass then fails
    /// with it, so `conduit_worker_errors_total` and the status page show a pass
    /// that did not do all its work.
    fn take_incomplete(&mut self) -> Option<WorkerError> {
        None
    }
}

#[async_trait::async_trait]
impl<J: TopicJob> Job for J {
    fn name(&self) -> &'static str {
        J::NAME
    }

    async fn pass(&mut self) -> Result<PassReport, WorkerError> {
        let mut report = PassReport::default();
        let mut first_error = None;
        let started = std::time::Instant::now();
        let topics = self.topics().await?;
        report.timed("topics", started);
        for (topic, plan) in topics {
            match self.pass_topic(&topic, plan).await {
                Ok(step) => report.add(&step),
                Err(e @ WorkerError::LostLease { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "{} pass failed for a topic", J::NAME);
                    first_error.get_or_insert(e);
                }
            }
        }
        let incomplete = self.take_incomplete();
        match first_error.or(incomplete) {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job whose topics fail as told; records which topics ran.
    #[derive(Debug, Default)]
    struct Scripted {
        failures: BTreeMap<&'static str, fn() -> WorkerError>,
        ran: Vec<String>,
    }

    #[async_trait::async_trait]
    impl TopicJob for Scripted {
        type Plan = u64;
        const NAME: &'static str = "scripted";

        async fn topics(&mut self) -> Result<Vec<(Topic, u64)>, WorkerError> {
            let topics = ["a", "b", "c"].map(|t| Topic::new(t).expect("valid topic"));
            Ok(topics.into_iter().zip([1, 10, 100]).collect())
        }

        async fn pass_topic(
            &mut self,
            topic: &Topic,
            files: u64,
        ) -> Result<PassReport, WorkerError> {
            self.ran.push(topic.to_string());
            match self.failures.get(topic.as_str()) {
                Some(error) => Err(error()),
                None => Ok(PassReport {
                    files,
                    ..PassReport::default()
                }),
            }
        }
    }

    #[tokio::test]
    async fn a_failing_topic_does_not_stop_the_others() {
        let mut job = Scripted::default();
        assert_eq!(job.pass().await.unwrap().files, 111);
        assert_eq!(job.name(), "scripted");

        let mut job = Scripted::default();
        job.failures
            .insert("a", || WorkerError::Other("first".into()));
        job.failures
            .insert("b", || WorkerError::Other("second".into()));
        let err = job.pass().await.unwrap_err();
        assert_eq!(err.to_string(), "first", "the first error is returned");
        assert_eq!(job.ran, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_lost_lease_stops_the_pass_at_once() {
        let mut job = Scripted::default();
        job.failures
            .insert("a", || WorkerError::Other("first".into()));
        job.failures.insert("b", || WorkerError::LostLease {
            lease: "system/leases/worker.json".into(),
            reason: "taken over".into(),
        });
        let err = job.pass().await.unwrap_err();
        assert!(matches!(err, WorkerError::LostLease { .. }), "{err}");
        assert_eq!(job.ran, ["a", "b"]);
    }
}
