//! The worker lease: at most one active worker per cluster, on the cluster's own
//! storage (no ZooKeeper).
//!
//! # Files
//!
//! Specified in `docs/format.md` §8.1:
//!
//! * `system/leases/worker.json` ([`Layout::lease_path`]), the **record**
//!   ([`LeaseRecord`]), rewritten with `write_atomic` through [`OwnedWrites`]:
//!   a temporary copy that a write failed mid-way (NameNode down) left behind is
//!   deleted before the next write. Only the holder of the newest claimed epoch
//!   writes the record; a copy of an older holder deleted meanwhile is the write
//!   of a fenced worker, which must not land anyway;
//! * `system/leases/worker.claim-<epoch, 20 digits>.json`, the **claims**: created
//!   exclusively (`create(Exclusive)`: exactly one of several racers wins), one per
//!   epoch, by whoever takes the lease over. Storage has no compare-and-swap; the
//!   claims make epochs unique and tell an old holder it has been replaced.
//!
//! # Protocol (`L` = `worker.lease_secs`, `d` = [`LeaseSettings::max_drift`])
//!
//! * **Verified write.** A holder of epoch `n` writes its record (`expires_at =
//!   now + L`), then lists the claims. Only if no claim is higher than `n` does it
//!   extend its **deadline** to `t0 + L - d`, where `t0` is its *monotonic* clock
//!   read before the write. Acquiring and renewing are both verified writes.
//! * **Renewal** every `L/3`. A failed renewal leaves the deadline where it was.
//! * **Fencing.** [`Fence::check`] fails once the monotonic clock passes the
//!   deadline (or a claim above `n` was seen): a paused, partitioned or
//!   storage-less holder stops committing by its own clock, without hearing from
//!   anyone.
//! * **Takeover.** A standby that reads a record with `now > expires_at + d` (or no
//!   record, or a malformed one) claims epoch `max(record epoch, highest claim) +
//!   1`. Losing the claim race means someone else is taking over. After winning, it
//!   re-reads the record: a renewal that was verified before the claim existed is
//!   visible now, and the standby waits until that `expires_at + d` has passed
//!   too. Every renewal verified after the claim fails (it sees the higher claim).
//!   Then it makes its own verified write.
//! * **Release** (clean shutdown): the holder stops committing, then rewrites its
//!   record as expired, so a standby takes over within one poll.
//!
//! # Safety argument and assumptions
//!
//! Let the holder's last verified write start at monotonic `t0` and wall `w0`. It
//! commits only before `t0 + L - d` (its fence). A standby acts only once its wall
//! clock passes `w0 + L + d`, and no later renewal can extend the old holder
//! (claims). With `δ` the offset between the two hosts' wall clocks (plus the
//! drift of the holder's monotonic clock over `L`) and `c` the longest time one
//! storage call takes to take effect after its fence check, the holder's last
//! commit lands before the standby's first one if `δ + c < 2d`. The default `d`
//! is `L/6` (5 s for 30 s leases), so NTP-synchronized hosts (offsets of
//! milliseconds) and storage calls bounded well under 10 s are safe. A standby
//! takes over at most `L + d` (35 s by default) after the holder's last renewal.
//!
//! The monotonic clock of a real worker is [`std::time::Instant`]; tests use the
//! test clock ([`Monotonic::from_clock`]) so pauses are simulated without sleeping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use conduit_core::layout::Layout;
use conduit_core::records::{decode, RecordError, Version};
use conduit_core::storage::OwnedWrites;
use conduit_core::{CreateMode, SharedClock, SharedStorage, StorageError};

use crate::{Fence, WorkerError};

pub use conduit_core::records::{LeaseRecord, LEASE_VERSION};

/// A monotonic clock for deadlines.
#[derive(Debug, Clone)]
pub enum Monotonic {
    /// The process's monotonic clock.
    System(std::time::Instant),
    /// Time elapsed on a (test) clock since a start instant.
    Clock(SharedClock, DateTime<Utc>),
}

impl Monotonic {
    /// The process's monotonic clock.
    pub fn system() -> Self {
        Monotonic::System(std::time::Instant::now())
    }

    /// Elapsed time on `clock` (tests: pause a holder by not renewing it and moving
    /// the test clock).
    pub fn from_clock(clock: SharedClock) -> Self {
        let start = clock.now();
        Monotonic::Clock(clock, start)
    }

    /// Time since this clock was created.
    pub fn elapsed(&self) -> Duration {
        match self {
            Monotonic::System(start) => start.elapsed(),
            Monotonic::Clock(clock, start) => (clock.now() - *start).to_std().unwrap_or_default(),
        }
    }
}

/// How a lease behaves.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Lease name; the record is `system/leases/<name>.json`.
    pub name: String,
    /// This worker's identity, unique per process.
    pub holder: String,
    /// Lease duration `L` (`worker.lease_secs`).
    pub duration: Duration,
    /// Allowance `d` for clock offsets between hosts and slow storage calls.
    pub max_drift: Duration,
}

impl LeaseSettings {
    /// The `worker` lease of `holder` lasting `lease_secs`, with `d = L/6` (at
    /// least 1 s).
    pub fn worker(holder: impl Into<String>, lease_secs: u64) -> Self {
        let duration = Duration::from_secs(lease_secs);
        LeaseSettings {
            name: "worker".to_owned(),
            holder: holder.into(),
            duration,
            max_drift: (duration / 6).max(Duration::from_secs(1)),
        }
    }

    /// How often a holder renews: every third of the lease.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }
}

/// The outcome of [`Lease::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// This worker holds the lease with this epoch.
    Held {
        /// The epoch held.
        epoch: u64,
    },
    /// Someone else holds it (or is taking it over); try again later.
    Standby {
        /// The current holder, if known.
        holder: Option<String>,
        /// Why this worker is not the holder.
        reason: String,
    },
}

#[derive(Debug, Default)]
struct State {
    /// The epoch held or being taken over (a claim was won).
    epoch: Option<u64>,
    /// Monotonic deadline of the last verified write.
    deadline: Option<Duration>,
    /// Wall instant after which a won claim may be turned into a holding.
    wait_until: Option<DateTime<Utc>>,
    acquired_at: Option<DateTime<Utc>>,
    /// Why the lease was lost, once it was.
    lost: Option<String>,
    /// Why the last renewal failed (a storage error), until one succeeds: the
    /// fence then says the renewal failed, not that someone took over.
    renew_error: Option<String>,
}

/// One worker's view of the cluster's lease; also its [`Fence`].
#[derive(Debug)]
pub struct Lease {
    storage: SharedStorage,
    clock: SharedClock,
    mono: Monotonic,
    settings: LeaseSettings,
    state: Mutex<State>,
    /// The record's writes (temporary copies left by failed ones are swept).
    writes: OwnedWrites,
}

impl Lease {
    /// A lease on `storage` (not yet acquired).
    pub fn new(
        storage: SharedStorage,
        clock: SharedClock,
        mono: Monotonic,
        settings: LeaseSettings,
    ) -> Arc<Self> {
        Arc::new(Lease {
            storage,
            clock,
            mono,
            settings,
            state: Mutex::new(State::default()),
            writes: OwnedWrites::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_path(&self) -> String {
        // The name is checked when the settings are built by the daemon; an
        // invalid one cannot produce a path, which `lost` reports.
        Layout::lease_path(&self.settings.name)
            .unwrap_or_else(|_| format!("system/leases/{}.json", self.settings.name))
    }

    fn claim_prefix(&self) -> String {
        format!("{}.claim-", self.settings.name)
    }

    fn claim_path(&self, epoch: u64) -> String {
        format!("system/leases/{}{epoch:020}.json", self.claim_prefix())
    }

    fn lost(&self, reason: impl Into<String>) -> WorkerError {
        WorkerError::LostLease {
            lease: self.record_path(),
            reason: reason.into(),
        }
    }

    /// Reads the record of the lease `name` on `storage`: `Ok(None)` if there is
    /// none, an error if it cannot be read or understood.
    pub async fn read_record(
        storage: &SharedStorage,
        name: &str,
    ) -> Result<Option<LeaseRecord>, WorkerError> {
        let path = Layout::lease_path(name).map_err(|e| WorkerError::Other(e.to_string()))?;
        let bytes = match storage.read(&path).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match decode::<LeaseRecord>(&path, &bytes) {
            Ok(r) => Ok(Some(r)),
            Err(RecordError::UnsupportedVersion { version, .. }) => Err(WorkerError::Other(
                format!("lease {path} has unsupported version {version}"),
            )),
            Err(RecordError::Malformed { reason, .. }) => Err(WorkerError::Other(format!(
                "malformed lease {path}: {reason}"
            ))),
        }
    }

    /// The highest claimed epoch (0 if none).
    async fn highest_claim(&self) -> Result<u64, StorageError> {
        Ok(self.highest_claim_entry().await?.0)
    }

    /// The highest claimed epoch and its claim's modification time (ms).
    async fn highest_claim_entry(&self) -> Result<(u64, i64), StorageError> {
        let prefix = self.claim_prefix();
        let mut highest = (0, 0);
        for entry in self.storage.list_or_empty("system/leases").await? {
            if let Some(rest) = entry.name.strip_prefix(&prefix) {
                if let Some(Ok(epoch)) = rest.strip_suffix(".json").map(str::parse::<u64>) {
                    if epoch > highest.0 {
                        highest = (epoch, entry.modified_ms);
                    }
                }
            }
        }
        Ok(highest)
    }

    /// Writes the record for `epoch` and verifies no higher claim exists; on
    /// success extends the deadline.
    async fn verified_write(&self, epoch: u64) -> Result<(), WorkerError> {
        let t0 = self.mono.elapsed();
        let now = self.clock.now();
        let acquired_at = self.state().acquired_at.unwrap_or(now);
        let record = LeaseRecord {
            version: Version,
            name: self.settings.name.clone(),
            holder: self.settings.holder.clone(),
            epoch,
            acquired_at,
            renewed_at: now,
            expires_at: now + self.settings.duration,
        };
        let body = serde_json::to_vec(&record).map_err(|e| WorkerError::Other(e.to_string()))?;
        let written = self
            .writes
            .write_atomic(&*self.storage, &self.record_path(), body.into())
            .await;
        let highest = match written {
            Ok(()) => self.highest_claim().await,
            Err(e) => Err(e),
        };
        let highest = match highest {
            Ok(highest) => highest,
            Err(source) => {
                // A storage error, not a takeover: remembered so that the fence,
                // once the deadline passes, says so.
                self.state().renew_error = Some(source.to_string());
                return Err(WorkerError::LeaseStorage {
                    lease: self.record_path(),
                    source,
                });
            }
        };
        let mut state = self.state();
        if state.epoch != Some(epoch) {
            // A renewal of an earlier holding that outlived it (storage hung
            // until the lease lapsed and this worker claimed a newer epoch, or
            // released it): it says nothing about the current state, and the
            // newer claim is this worker's own, no takeover.
            return Err(WorkerError::Other(format!(
                "a renewal of epoch {epoch} ended after this worker moved on to {:?}",
                state.epoch
            )));
        }
        if highest > epoch {
            let reason = format!("epoch {highest} was claimed by another worker");
            state.lost = Some(reason.clone());
            state.deadline = None;
            return Err(self.lost(reason));
        }
        if state.lost.is_some() {
            return Err(self.lost("released meanwhile"));
        }
        state.acquired_at = Some(acquired_at);
        state.deadline = Some(t0 + self.settings.duration - self.settings.max_drift);
        state.renew_error = None;
        Ok(())
    }

    /// Tries once to become (or stay) the holder.
    pub async fn acquire(&self) -> Result<LeaseStatus, WorkerError> {
        if self.is_held() {
            self.renew().await?;
            return Ok(LeaseStatus::Held {
                epoch: self.epoch().unwrap_or_default(),
            });
        }
        let drift = chrono::Duration::from_std(self.settings.max_drift)
            .map_err(|e| WorkerError::Other(e.to_string()))?;
        let pending = {
            let s = self.state();
            match (s.epoch, s.wait_until, s.lost.is_some()) {
                (Some(epoch), Some(until), false) => Some((epoch, until)),
                _ => None,
            }
        };
        let epoch = match pending {
            Some((epoch, until)) => {
                // A holder that released its lease stopped committing before it
                // rewrote the record as expired: no need to wait any longer.
                let released = matches!(
                    Self::read_record(&self.storage, &self.settings.name).await,
                    Ok(Some(r)) if r.epoch < epoch && r.expires_at < until
                        && self.clock.now() > r.expires_at + drift
                );
                if !released && self.clock.now() <= until + drift {
                    return Ok(LeaseStatus::Standby {
                        holder: None,
                        reason: format!("claimed epoch {epoch}; waiting for the old holder's lease to lapse at {until}"),
                    });
                }
                epoch
            }
            None => {
                let record = match Self::read_record(&self.storage, &self.settings.name).await {
                    Ok(r) => r,
                    Err(WorkerError::Other(reason)) => {
                        tracing::warn!(%reason, "unusable lease record; treating it as expired");
                        None
                    }
                    Err(e) => return Err(e),
                };
                if let Some(r) = &record {
                    if r.holder != self.settings.holder && self.clock.now() <= r.expires_at + drift
                    {
                        return Ok(LeaseStatus::Standby {
                            holder: Some(r.holder.clone()),
                            reason: format!("held by {} until {}", r.holder, r.expires_at),
                        });
                    }
                }
                let record_epoch = record.as_ref().map_or(0, |r| r.epoch);
                let (claimed, claimed_ms) = self.highest_claim_entry().await?;
                let own_claim = {
                    let s = self.state();
                    s.epoch == Some(claimed) && s.lost.is_none()
                };
                if claimed > record_epoch && own_claim {
                    // This worker won that claim, then could not write its
                    // record (a storage error): it is no takeover by anyone
                    // else; write the record now.
                    tracing::info!(
                        epoch = claimed,
                        "retrying the lease record for the epoch this worker claimed"
                    );
                    self.state().wait_until = None;
                    return self.hold(claimed).await;
                }
                if claimed > record_epoch {
                    // Someone won a claim but has not written the record yet: a
                    // takeover in progress, unless the claim is older than a
                    // whole lease (its claimer died).
                    let age_ms = self.clock.now().timestamp_millis() - claimed_ms;
                    let limit = self.settings.duration + self.settings.max_drift;
                    if age_ms < i64::try_from(limit.as_millis()).unwrap_or(i64::MAX) {
                        return Ok(LeaseStatus::Standby {
                            holder: None,
                            reason: format!(
                                "epoch {claimed} is being taken over by another worker"
                            ),
                        });
                    }
                }
                let epoch = record_epoch.max(claimed) + 1;
                match self
                    .storage
                    .create(&self.claim_path(epoch), CreateMode::Exclusive)
                    .await
                {
                    Ok(w) => w.close().await?,
                    Err(e) if e.is_already_exists() => {
                        return Ok(LeaseStatus::Standby {
                            holder: None,
                            reason: format!("another worker claimed epoch {epoch} first"),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
                // A renewal verified before the claim existed is visible now.
                let after = Self::read_record(&self.storage, &self.settings.name)
                    .await
                    .unwrap_or(None);
                let mut s = self.state();
                *s = State {
                    epoch: Some(epoch),
                    ..State::default()
                };
                if let Some(after) = after {
                    if after.holder != self.settings.holder
                        && self.clock.now() <= after.expires_at + drift
                    {
                        s.wait_until = Some(after.expires_at);
                        return Ok(LeaseStatus::Standby {
                            holder: Some(after.holder.clone()),
                            reason: format!(
                                "claimed epoch {epoch}; {} renewed until {}, waiting for it to lapse",
                                after.holder, after.expires_at
                            ),
                        });
                    }
                }
                epoch
            }
        };
        self.state().wait_until = None;
        self.hold(epoch).await
    }

    /// Turns the claim of `epoch` (won, and its old holder lapsed) into a
    /// holding: the verified write, then old claims are deleted.
    async fn hold(&self, epoch: u64) -> Result<LeaseStatus, WorkerError> {
        match self.verified_write(epoch).await {
            Ok(()) => {}
            Err(WorkerError::LostLease { reason, .. }) => {
                self.reset();
                return Ok(LeaseStatus::Standby {
                    holder: None,
                    reason,
                });
            }
            Err(e) => return Err(e),
        }
        // Older claims are no longer needed (best effort).
        if let Ok(entries) = self.storage.list_or_empty("system/leases").await {
            let prefix = self.claim_prefix();
            for e in entries {
                let old = e
                    .name
                    .strip_prefix(&prefix)
                    .and_then(|r| r.strip_suffix(".json"))
                    .and_then(|r| r.parse::<u64>().ok())
                    .is_some_and(|n| n < epoch);
                if old {
                    let _ = self.storage.delete(&e.path, false).await;
                }
            }
        }
        tracing::info!(epoch, holder = %self.settings.holder, "acquired the worker lease");
        Ok(LeaseStatus::Held { epoch })
    }

    /// Renews a held lease (a verified write). An error leaves the deadline where
    /// it was; [`WorkerError::LostLease`] means another worker took over.
    pub async fn renew(&self) -> Result<(), WorkerError> {
        let epoch = {
            let s = self.state();
            match (s.epoch, s.deadline, &s.lost) {
                (_, _, Some(reason)) => return Err(self.lost(reason.clone())),
                (Some(e), Some(_), None) => e,
                _ => return Err(self.lost("not held")),
            }
        };
        self.verified_write(epoch).await
    }

    /// Stops committing, then marks the record expired so a standby takes over
    /// at once (only if it is still this worker's).
    pub async fn release(&self) -> Result<(), WorkerError> {
        let epoch = {
            let mut s = self.state();
            let epoch = s.epoch.take();
            s.deadline = None;
            s.wait_until = None;
            epoch
        };
        let Some(epoch) = epoch else {
            return Ok(());
        };
        if let Some(mut r) = Self::read_record(&self.storage, &self.settings.name).await? {
            if r.epoch == epoch && r.holder == self.settings.holder {
                let drift = chrono::Duration::from_std(self.settings.max_drift)
                    .map_err(|e| WorkerError::Other(e.to_string()))?;
                let now = self.clock.now();
                r.renewed_at = now;
                r.expires_at = now - drift - chrono::Duration::seconds(1);
                let body = serde_json::to_vec(&r).map_err(|e| WorkerError::Other(e.to_string()))?;
                self.writes
                    .write_atomic(&*self.storage, &self.record_path(), body.into())
                    .await?;
                tracing::info!(epoch, "released the worker lease");
            }
        }
        Ok(())
    }

    /// Whether this worker may commit now.
    pub fn is_held(&self) -> bool {
        let s = self.state();
        s.lost.is_none() && s.deadline.is_some_and(|d| self.mono.elapsed() < d)
    }

    /// The epoch held (or claimed), if any.
    pub fn epoch(&self) -> Option<u64> {
        self.state().epoch
    }

    /// Forgets a lost lease so the next [`Lease::acquire`] starts over.
    pub fn reset(&self) {
        *self.state() = State::default();
    }
}

#[async_trait::async_trait]
impl Fence for Lease {
    async fn check(&self) -> Result<(), WorkerError> {
        let s = self.state();
        if let Some(reason) = &s.lost {
            return Err(self.lost(reason.clone()));
        }
        match s.deadline {
            Some(deadline) if self.mono.elapsed() < deadline => Ok(()),
            Some(_) => match &s.renew_error {
                Some(error) => Err(self.lost(format!(
                    "lease renewal failed: {error}; not renewed in time, so this worker stops \
                     committing (no other worker is known to hold it)"
                ))),
                None => Err(self.lost("not renewed in time: the lease may have expired")),
            },
            None => Err(self.lost("not held")),
        }
    }
}
