//! The `local` job and the lease on the real HDFS of `scripts/hdfs.sh`
//! (`CONDUIT_TEST_HDFS`): a real in-process collector writes through HDFS, the job
//! seals minutes (an empty one included) and a crash at a storage call of a pass is
//! recovered by a fresh job without loss or duplicates.

use std::sync::Arc;
use std::time::Duration;

use conduit_core::scribe::ResultCode;
use conduit_core::storage::{FaultPlan, FaultStorage};
use conduit_core::{Config, SharedStorage, Topic};
use conduit_merger::{Job, Lease, LeaseSettings, LeaseStatus, LocalJob, Monotonic};
use conduit_testkit::clock::{clock_at, set};
use conduit_testkit::scribe::{padded, Client};
use conduit_testkit::worker::{check_local_view, env_with_fence, wait_watermark};
use conduit_testkit::{collector, hdfs, minute};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_job_seals_minutes_on_hdfs_and_survives_a_crash() {
    let Some(root) = hdfs::root("worker_the_local_job_seals_minutes_on_hdfs").await else {
        return;
    };
    let storage = root.storage;
    let clock = clock_at(10, 5, 30);
    let cfg = Config::default();
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .config(cfg.clone())
        .max_file_bytes(4096)
        .heartbeat_ms(200)
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    let mut acked = 0u64;
    for i in 0..3 {
        let batch = padded(&format!("a{i}"), 20, 200);
        assert_eq!(client.log_to("clicks", &batch).await, ResultCode::Ok);
        acked += batch.len() as u64;
    }
    set(&clock, 10, 7, 10); // 10:06 stays empty
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:06")).await;
    let batch = padded("b", 30, 20);
    assert_eq!(client.log_to("clicks", &batch).await, ResultCode::Ok);
    acked += batch.len() as u64;
    collector.stop().await.unwrap();
    set(&clock, 10, 8, 5);

    // Lease on HDFS: one holder.
    let lease = Lease::new(
        storage.clone(),
        clock.shared(),
        Monotonic::from_clock(clock.shared()),
        LeaseSettings::worker("dc1/hdfs-test", 30),
    );
    assert_eq!(
        lease.acquire().await.unwrap(),
        LeaseStatus::Held { epoch: 1 }
    );

    // Crash at the 12th storage call of the first pass, then a fresh job.
    let plan = FaultPlan::new();
    plan.fail_after(11);
    let faulty: SharedStorage = Arc::new(FaultStorage::new(storage.clone(), plan.clone()));
    let mut crashed = LocalJob::new(env_with_fence(
        faulty,
        clock.shared(),
        cfg.clone(),
        lease.clone(),
    ));
    assert!(crashed.pass().await.is_err());
    assert_eq!(plan.injected(), 1);
    let mut job = LocalJob::new(env_with_fence(storage.clone(), clock.shared(), cfg, lease));
    let report = tokio::time::timeout(Duration::from_secs(120), job.pass())
        .await
        .unwrap()
        .unwrap();
    assert!(report.sealed >= 1, "{report:?}");
    let clicks = Topic::new("clicks").unwrap();
    let view = check_local_view(&*storage, &clicks).await;
    assert!(view.waiting.is_empty(), "{view:?}");
    assert_eq!(
        view.sealed.keys().copied().collect::<Vec<_>>(),
        vec![
            minute("2026-11-22T10:05"),
            minute("2026-11-22T10:06"),
            minute("2026-11-22T10:07")
        ]
    );
    assert_eq!(view.sealed[&minute("2026-11-22T10:06")].records, 0);
    assert!(view.sealed[&minute("2026-11-22T10:05")].files.len() >= 2);
    assert_eq!(
        view.records(),
        acked,
        "records in manifests == acknowledged"
    );
}
