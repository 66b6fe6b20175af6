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
//!   interval. A job that fails is counted and retried next interval; the other
//!   jobs still run. [`WorkerError::LostLease`] (a job's fence check failed) sends
//!   the daemon back to standby at once.
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

use conduit_core::SharedClock;

use crate::lease::{Lease, LeaseStatus};
use crate::metrics::{SealProgress, WorkerMetrics};
use crate::{Job, PassReport, WorkerError};

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
                    tracing::warn!(job = name, error = %e, "pass failed; retrying next interval");
                    errors.push((name.to_owned(), e.to_string()));
                    if matches!(e, WorkerError::LostLease { .. }) {
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
                // A round dropped by shutdown stops between two storage calls,
                // which every job survives (as it survives a crash).
                Ok(true) => match tokio::select! {
                    result = self.run_round() => result,
                    _ = &mut shutdown => break,
                } {
                    Err(WorkerError::LostLease { reason, .. }) => {
                        tracing::warn!(%reason, "lost the worker lease; standing by");
                        self.metrics.lease_held.set(0);
                        self.set_status(|s| s.holding = false);
                        Duration::ZERO
                    }
                    _ => self.interval,
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
