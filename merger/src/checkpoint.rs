//! Job checkpoints: small versioned JSON hints kept in the cluster's storage.
//!
//! Path: `system/checkpoints/<job>/<key>.json` ([`Layout::checkpoint_path`]),
//! written with [`Storage::write_atomic`](conduit_core::Storage::write_atomic)
//! (hidden temporary, sync, rename over), so a reader sees the old or the new
//! checkpoint, never a mix; a temporary copy a failed save could not delete (the
//! NameNode down) is deleted before the next save ([`OwnedWrites`]). Format: `docs/format.md` §8.2, type [`JobCheckpoint`].
//!
//! Invariant: a checkpoint is **only a hint**. Every job can rebuild its state from
//! the views themselves (which minutes carry a `_SUCCESS`, which collector files are
//! still in `data/`), so a lost, stale, corrupt or future-version checkpoint costs a
//! rescan, never data. [`Checkpoints::load`] therefore never fails: anything it
//! cannot use is logged and reported as absent.

use serde::de::DeserializeOwned;
use serde::Serialize;

use conduit_core::layout::Layout;
use conduit_core::records::{decode, JobCheckpoint, RecordError, Version};
use conduit_core::storage::OwnedWrites;
use conduit_core::{SharedClock, SharedStorage};

use crate::WorkerError;

/// The checkpoint format version this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = conduit_core::records::JOB_CHECKPOINT_VERSION;

/// Reads and writes the checkpoints of one job on one cluster.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    storage: SharedStorage,
    clock: SharedClock,
    job: &'static str,
    /// Sweeps the copies a failed save left (a NameNode down mid-save).
    writes: OwnedWrites,
}

impl Checkpoints {
    /// Checkpoints of `job` (`local`, `merge`, ...) in `storage`.
    pub fn new(storage: SharedStorage, clock: SharedClock, job: &'static str) -> Self {
        Checkpoints {
            storage,
            clock,
            job,
            writes: OwnedWrites::default(),
        }
    }

    /// The path of `key`'s checkpoint.
    pub fn path(&self, key: &str) -> Result<String, WorkerError> {
        Layout::checkpoint_path(self.job, key)
            .map_err(|e| WorkerError::Other(format!("checkpoint key {key:?}: {e}")))
    }

    /// The saved state of `key`, or `None` if there is none or it cannot be used
    /// (missing, unreadable, malformed, another version): the caller rescans.
    pub async fn load<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let path = self.path(key).ok()?;
        let bytes = match self.storage.read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return None,
            Err(e) => {
                tracing::warn!(%path, error = %e, "cannot read checkpoint; rescanning");
                return None;
            }
        };
        match decode::<JobCheckpoint<T>>(&path, &bytes) {
            Ok(checkpoint) if checkpoint.key == key => Some(checkpoint.state),
            Ok(checkpoint) => {
                tracing::warn!(%path, version = CHECKPOINT_VERSION, key = %checkpoint.key,
                    "checkpoint of another version or key; rescanning");
                None
            }
            Err(RecordError::UnsupportedVersion { version, .. }) => {
                tracing::warn!(%path, version, key,
                    "checkpoint of another version or key; rescanning");
                None
            }
            Err(e) => {
                tracing::warn!(%path, error = %e, "malformed checkpoint; rescanning");
                None
            }
        }
    }

    /// Saves `state` as `key`'s checkpoint (atomically replacing the old one).
    pub async fn save<T: Serialize>(&self, key: &str, state: &T) -> Result<(), WorkerError> {
        let path = self.path(key)?;
        let checkpoint = JobCheckpoint {
            version: Version,
            job: self.job.to_owned(),
            key: key.to_owned(),
            saved_at: self.clock.now(),
            state,
        };
        let body = serde_json::to_vec(&checkpoint)
            .map_err(|e| WorkerError::Other(format!("checkpoint {path}: {e}")))?;
        self.writes
            .write_atomic(&*self.storage, &path, body.into())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use conduit_core::storage::LocalStorage;
    use conduit_core::{Minute, SystemClock};
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        last_sealed: Minute,
    }

    #[tokio::test]
    async fn round_trips_and_bad_checkpoints_are_absent() {
        let dir = tempfile::tempdir().unwrap();
        let storage: SharedStorage = Arc::new(LocalStorage::open(dir.path()).unwrap());
        let cp = Checkpoints::new(storage.clone(), SystemClock::shared(), "local");
        assert_eq!(cp.load::<State>("clicks").await, None);
        let state = State {
            last_sealed: Minute::parse_flexible("2026-11-22T10:05Z").unwrap(),
        };
        cp.save("clicks", &state).await.unwrap();
        assert_eq!(cp.load::<State>("clicks").await, Some(state));
        let path = "system/checkpoints/local/clicks.json";
        let text = String::from_utf8(storage.read(path).await.unwrap().to_vec()).unwrap();
        assert!(text.contains(r#""version":1"#), "{text}");
        assert!(
            text.contains(r#""last_sealed":"2026-11-22T10:05Z""#),
            "{text}"
        );

        storage
            .write_atomic(path, bytes::Bytes::from_static(b"{garbage"))
            .await
            .unwrap();
        assert_eq!(cp.load::<State>("clicks").await, None);
        storage
            .write_atomic(
                path,
                bytes::Bytes::from_static(
                    br#"{"version":9,"job":"local","key":"clicks","saved_at":"2026-11-22T10:05:00Z","state":{"last_sealed":"2026-11-22T10:05Z"}}"#,
                ),
            )
            .await
            .unwrap();
        assert_eq!(cp.load::<State>("clicks").await, None);
    }

    /// A save that fails after its temporary copy was written, while storage
    /// cannot delete it either (a NameNode going down mid-save), leaves the copy;
    /// the next save deletes it, without a restart.
    #[tokio::test]
    async fn a_failed_save_leaves_no_copy_after_the_next_one() {
        use conduit_core::storage::{FaultPlan, FaultStorage, Op};
        let dir = tempfile::tempdir().unwrap();
        let local: SharedStorage = Arc::new(LocalStorage::open(dir.path()).unwrap());
        let plan = FaultPlan::new();
        let storage: SharedStorage = Arc::new(FaultStorage::new(local.clone(), plan.clone()));
        let cp = Checkpoints::new(storage, SystemClock::shared(), "local");
        let state = State {
            last_sealed: Minute::parse_flexible("2026-11-22T10:05Z").unwrap(),
        };
        cp.save("clicks", &state).await.unwrap();
        plan.fail_ops(&[Op::Rename, Op::Delete]);
        assert!(cp.save("clicks", &state).await.is_err());
        let copies = |local: SharedStorage| async move {
            local
                .list("system/checkpoints/local")
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.name.starts_with("_tmp."))
                .count()
        };
        assert_eq!(
            copies(local.clone()).await,
            1,
            "the failed save left its copy"
        );
        plan.heal();
        cp.save("clicks", &state).await.unwrap();
        assert_eq!(copies(local.clone()).await, 0, "the next save deleted it");
        assert_eq!(cp.load::<State>("clicks").await, Some(state));
    }
}
