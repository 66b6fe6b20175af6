//! The worker daemon: runs every job of a cluster, in order, every
//! `worker.interval_ms`, while it holds the cluster's lease.
//!
//! # Loop
//!
//! * **Standby:** try [`Lease::acquire`] every third of the lease; set
//!   `conduit_worker_lease_held` to 0.
//! * **Holding:** a background task renews the lease every third of it; the loop
//!   runs one [`Job::pass`] of each job (oldest work first inside each job), records
//!   the [`PassReport`] in the metrics, updates the lag gauges, and sleeps for the
//!   interval. The lag gauges are also refreshed every [`LAG_REFRESH`] by a
//!   background task, so they follow the clock while a round waits on a slow
//!   or unreachable storage (a call may take up to `worker.storage_timeout_ms`,
//!   30 s by default, before it fails). A job that fails is counted
//!   (`conduit_worker_errors_total`), logged at WARN at most once per 10 s per
//!   job (DEBUG in between; the WARN carries how many were `suppressed`) and
//!   retried next interval; the other jobs still run.
//!   [`WorkerError::LostLease`] (a job's fence check failed) sends the daemon
//!   back to standby at once.
//! * **Shutdown** (the future passed to [`Daemon::run`] resolves): the current
//!   pass is dropped between two storage calls (every job survives that as it
//!   survives a crash: renames are commits, `_SUCCESS` is written last), then the
//!   lease is released so a standby takes over without waiting for expiry.
//!
//! Without a lease ([`Daemon::new`] with `None`), the jobs run unfenced: for a
//! single worker by construction (tests, `--no-lease`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conduit_core::ratelimit::{LogLimiter, LOG_INTERVAL};
use conduit_core::SharedClock;

use crate::lease::{Lease, LeaseStatus};
use crate::metrics::{SealProgress, WorkerMetrics};
use crate::{Job, PassReport, WorkerError};

/// How often the lag gauges (`conduit_worker_lag_seconds`,
/// `conduit_worker_source_lag_seconds`) are recomputed from the jobs' progress
/// between rounds.
pub const LAG_REFRESH: Duration = Duration::from_secs(1);

/// How long a graceful stop lets the pass in progress run on, so it ends its
/// step (a checkpoint half-saved would leave its `_tmp.` copy until the next
/// start); a pass still running then is dropped between two storage calls,
/// which every job survives as it survives a crash.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What `/health` reports about the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonStatus {
    /// Whether this worker holds the lease (always true without a lease).
    pub holding: bool,
    /// The epoch held, if any.
    pub epoch: Option<u64>,
    /// Why this worker is standing by, when it is.
    pub standby_reason: Option<String>,
    /// Completed rounds (every job once).
    pub rounds: u64,
    /// The last error of each job that failed in the last round.
    pub last_errors: Vec<(String, String)>,
}

/// Runs jobs while holding the lease; see the [module docs](self).
pub struct Daemon {
    jobs: Vec<Box<dyn Job>>,
    progress: Vec<SealProgress>,
    metrics: WorkerMetrics,
    clock: SharedClock,
    interval: Duration,
    lease: Option<Arc<Lease>>,
    status: Arc<Mutex<DaemonStatus>>,
    /// One WARN per job per `LOG_INTERVAL` for failed passes (a pass retried
    /// every `interval_ms` through an outage would log one each time).
    failure_lines: LogLimiter,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field(
                "jobs",
                &self.jobs.iter().map(|j| j.name()).collect::<Vec<_>>(),
            )
            .field("interval", &self.interval)
            .field("lease", &self.lease.is_some())
            .finish()
    }
}

impl Daemon {
    /// A daemon running `jobs` every `interval`, fenced by `lease` when given.
    pub fn new(
        jobs: Vec<Box<dyn Job>>,
        metrics: WorkerMetrics,
        clock: SharedClock,
        interval: Duration,
        lease: Option<Arc<Lease>>,
    ) -> Self {
        for job in &jobs {
            metrics.start_job(job.name());
        }
        Daemon {
            jobs,
            progress: Vec::new(),
            metrics,
            clock,
            interval,
            lease,
            status: Arc::new(Mutex::new(DaemonStatus::default())),
            failure_lines: LogLimiter::new(LOG_INTERVAL),
        }
    }

    /// Adds a job's sealing progress to the lag gauges.
    pub fn watch_progress(&mut self, progress: SealProgress) {
        self.progress.push(progress);
    }

    /// A handle on the daemon's status (for `/health`).
    pub fn status(&self) -> Arc<Mutex<DaemonStatus>> {
        self.status.clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut DaemonStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Tries to hold the lease (no-op without one). Returns whether it is held.
    pub async fn hold_lease(&self) -> Result<bool, WorkerError> {
        let Some(lease) = &self.lease else {
            self.set_status(|s| s.holding = true);
            return Ok(true);
        };
        if lease.is_held() {
            return Ok(true);
        }
        let was_holding = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holding;
        if was_holding {
            // Lapsed between two rounds (no job's fence noticed): say why, the
            // storage error of the failed renewals included.
            if let Err(e) = crate::Fence::check(&**lease).await {
                tracing::warn!(error = %e, "the worker lease lapsed; standing by until it is held again");
            }
            self.metrics.lease_held.set(0);
            self.set_status(|s| s.holding = false);
        }
        let status = lease.acquire().await?;
        let held = matches!(status, LeaseStatus::Held { .. });
        self.metrics.lease_held.set(i64::from(held));
        match status {
            LeaseStatus::Held { epoch } => {
                self.metrics
                    .lease_epoch
                    .set(i64::try_from(epoch).unwrap_or(i64::MAX));
                self.set_status(|s| {
                    s.holding = true;
                    s.epoch = Some(epoch);
                    s.standby_reason = None;
                });
            }
            LeaseStatus::Standby { reason, .. } => {
                tracing::debug!(%reason, "standing by");
                self.set_status(|s| {
                    s.holding = false;
                    s.epoch = None;
                    s.standby_reason = Some(reason);
                });
            }
        }
        Ok(held)
    }

    /// Runs one pass of every job (the lease must be held). Returns the summed
    /// report, or the first error after every job ran (a lost lease stops at once).
    pub async fn run_round(&mut self) -> Result<PassReport, WorkerError> {
        let mut total = PassReport::default();
        let mut first_error = None;
        let mut errors = Vec::new();
        for job in &mut self.jobs {
            let name = job.name();
            match job.pass().await {
                Ok(report) => {
                    self.metrics.record_pass(name, &report);
                    if report.did_something() {
                        let steps_ms: BTreeMap<&str, f64> = report
                            .step_micros
                            .iter()
                            .map(|(step, micros)| (*step, *micros as f64 / 1e3))
                            .collect();
                        tracing::info!(
                            job = name,
                            sealed = report.sealed,
                            files = report.files,
                            late = report.late_files,
                            pending = report.pending,
                            quarantined = report.quarantined,
                            duplicates_dropped = report.duplicates_dropped,
                            ?steps_ms,
                            "pass"
                        );
                    }
                    total.add(&report);
                }
                Err(e) => {
                    self.metrics.record_error(name);
                    let lost = matches!(e, WorkerError::LostLease { .. });
                    let allowed = self.failure_lines.allow(name);
                    if allowed.is_some() || lost {
                        let suppressed = allowed.unwrap_or(0);
                        tracing::warn!(job = name, error = %e, suppressed, "pass failed; retrying next interval");
                    } else {
                        tracing::debug!(job = name, error = %e, "pass failed; retrying next interval (WARN at most once per 10 s per job)");
                    }
                    errors.push((name.to_owned(), e.to_string()));
                    if lost {
                        first_error = Some(e);
                        break;
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        let now = self.clock.now();
        for progress in &self.progress {
            self.metrics.update_lag(progress, now);
        }
        self.set_status(|s| {
            s.rounds += 1;
            s.last_errors = errors;
        });
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Runs until `shutdown` resolves, then releases the lease.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        tokio::pin!(shutdown);
        let renewer = self.lease.clone().map(|lease| {
            tokio::spawn(async move {
                let every = lease.settings().renew_every();
                loop {
                    tokio::time::sleep(every).await;
                    if lease.is_held() {
                        if let Err(e) = lease.renew().await {
                            tracing::warn!(error = %e, "cannot renew the worker lease");
                        }
                    }
                }
            })
        });
        // Between rounds too: a round can wait up to the storage timeout on a
        // cut cluster, and a gauge frozen meanwhile would hide a growing lag.
        let lag_refresher = {
            let (metrics, clock) = (self.metrics.clone(), self.clock.clone());
            let progress = self.progress.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LAG_REFRESH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let now = clock.now();
                    for p in &progress {
                        metrics.update_lag(p, now);
                    }
                }
            })
        };
        let standby_poll = self
            .lease
            .as_ref()
            .map(|l| l.settings().renew_every())
            .unwrap_or(self.interval);
        loop {
            let held = tokio::select! {
                held = self.hold_lease() => held,
                _ = &mut shutdown => break,
            };
            let pause = match held {
                // On shutdown the round in progress gets SHUTDOWN_GRACE to end.
                Ok(true) => match {
                    let round = self.run_round();
                    tokio::pin!(round);
                    tokio::select! {
                        result = &mut round => Some(result),
                        _ = &mut shutdown => {
                            if tokio::time::timeout(SHUTDOWN_GRACE, &mut round).await.is_err() {
                                tracing::warn!(grace = ?SHUTDOWN_GRACE, "stopping in the middle of a pass");
                            }
                            None
                        }
                    }
                } {
                    None => break,
                    Some(result) => match result {
                        Err(WorkerError::LostLease { reason, .. }) => {
                            tracing::warn!(%reason, "lost the worker lease; standing by");
                            self.metrics.lease_held.set(0);
                            self.set_status(|s| s.holding = false);
                            Duration::ZERO
                        }
                        _ => self.interval,
                    },
                },
                Ok(false) => standby_poll,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the worker lease");
                    standby_poll
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        lag_refresher.abort();
        if let Some(task) = renewer {
            task.abort();
        }
        if let Some(lease) = &self.lease {
            self.metrics.lease_held.set(0);
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "cannot release the worker lease; it expires on its own");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conduit_core::clock::TestClock;
    use conduit_core::{Minute, NodeName, Topic};

    /// A job whose pass never finishes (a storage call that hangs).
    #[derive(Debug)]
    struct Stuck;

    #[async_trait::async_trait]
    impl Job for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }
        async fn pass(&mut self) -> Result<PassReport, WorkerError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lag_gauges_follow_the_clock_while_a_round_hangs() {
        let minute = Minute::from_epoch_minutes(29_000_000).unwrap();
        let clock = TestClock::at(minute.end());
        let registry = Arc::new(Mutex::new(Default::default()));
        let metrics = WorkerMetrics::new(&registry);
        let mut daemon = Daemon::new(
            vec![Box::new(Stuck)],
            metrics.clone(),
            clock.shared(),
            Duration::from_millis(200),
            None,
        );
        let progress = SealProgress::default();
        let topic = Topic::new("t").unwrap();
        progress.record_source(&topic, &NodeName::new("east").unwrap(), minute);
        progress.record(crate::metrics::SealView::Merged, &topic, minute);
        daemon.watch_progress(progress);
        let status = daemon.status();
        let source_lag = || {
            metrics
                .source_lag_seconds
                .get_or_create(&vec![
                    ("topic", "t".to_owned()),
                    ("cluster", "east".to_owned()),
                ])
                .get()
        };
        let merged_lag = || {
            metrics
                .lag_seconds
                .get_or_create(&vec![
                    ("view", "merged".to_owned()),
                    ("topic", "t".to_owned()),
                ])
                .get()
        };
        let checks = async {
            for seconds in [5.0, 35.0, 95.0] {
                clock.set(minute.end() + chrono::TimeDelta::seconds(seconds as i64));
                tokio::time::sleep(LAG_REFRESH * 2).await;
                assert_eq!(source_lag(), seconds, "source lag while the round hangs");
                assert_eq!(merged_lag(), seconds, "view lag while the round hangs");
            }
        };
        tokio::select! {
            _ = daemon.run(std::future::pending()) => panic!("the daemon stopped"),
            () = checks => {}
        }
        let rounds = status.lock().unwrap().rounds;
        assert_eq!(rounds, 0, "no round finished: the gauges moved without one");
    }
}
