//! Runs the storage conformance suite against every backend: local disk always,
//! local disk through the retry and fault wrappers (with no fault armed), and a
//! real HDFS when `CONDUIT_TEST_HDFS=hdfs://host:port` is set (`.ci/run` sets it).
//! Without it the HDFS tests print a loud SKIPPED line and pass, so a developer
//! without Java can still run `cargo test`; under `CI` they fail instead
//! (`conduit_testkit::hdfs`).

use std::sync::Arc;

use conduit_core::storage::{conformance, FaultPlan, FaultStorage, RetryPolicy, RetryStorage};
use conduit_core::SharedStorage;
use conduit_testkit::local_storage;

fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}_{n}", std::process::id())
}

async fn local() -> (SharedStorage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    (storage, dir)
}

async fn wrapped_local() -> (SharedStorage, tempfile::TempDir) {
    let (inner, dir) = local().await;
    let faulty: SharedStorage = Arc::new(FaultStorage::new(inner, FaultPlan::new()));
    (
        Arc::new(RetryStorage::new(faulty, RetryPolicy::default())),
        dir,
    )
}

/// The `conformance` directory of the test HDFS, or `None` (skipped) for `check`.
async fn hdfs(check: &str) -> Option<SharedStorage> {
    let url = conduit_testkit::hdfs::url(&format!("hdfs::{check}"))?;
    // Opened with the retry wrapper, as services do: NotReplicatedYet right after
    // start-up is expected and must not fail the suite.
    Some(conduit_testkit::hdfs::open(&format!("{url}/conformance")).await)
}

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod local_disk {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (storage, _dir) = local().await;
                    conformance::$check(storage, unique(stringify!($check))).await;
                }
            )*
        }
        mod local_disk_wrapped {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (storage, _dir) = wrapped_local().await;
                    conformance::$check(storage, unique(stringify!($check))).await;
                }
            )*
        }
        mod hdfs {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(storage) = hdfs(stringify!($check)).await else { return };
                    let dir = unique(stringify!($check));
                    conformance::$check(storage.clone(), dir.clone()).await;
                    storage.delete(&dir, true).await.unwrap();
                }
            )*
        }
    };
}

suite!(
    write_sync_read,
    exclusive_create,
    exclusive_create_race,
    concurrent_writers,
    rename_modes,
    list_and_stat,
    mkdirs_and_delete,
    append,
    large_file,
    write_atomic,
    torn_file,
);

#[test]
fn every_check_of_the_suite_is_run_here() {
    // Keeps this file and conformance::CHECKS in step.
    let here = [
        "write_sync_read",
        "exclusive_create",
        "exclusive_create_race",
        "concurrent_writers",
        "rename_modes",
        "list_and_stat",
        "mkdirs_and_delete",
        "append",
        "large_file",
        "write_atomic",
        "torn_file",
    ];
    let suite: Vec<&str> = conformance::CHECKS.iter().map(|(name, _)| *name).collect();
    assert_eq!(suite, here);
}
