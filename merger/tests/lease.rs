//! The worker lease on local disk with a test clock: one holder, takeover by a
//! standby once the holder stops renewing, fencing of the paused old holder (its
//! local job commits nothing), racing standbys, and a clean release.

use std::sync::Arc;
use std::time::Duration;

use conduit_core::scribe::ResultCode;
use conduit_core::{Config, SharedStorage, TestClock, Topic};
use conduit_merger::{
    Fence, Job, Lease, LeaseSettings, LeaseStatus, LocalJob, Monotonic, WorkerError,
};
use conduit_testkit::clock::clock_at;
use conduit_testkit::collector;
use conduit_testkit::local_storage;
use conduit_testkit::scribe::{padded, Client};
use conduit_testkit::worker::{check_local_view, env_with_fence};

fn setup() -> (tempfile::TempDir, SharedStorage, TestClock) {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    (dir, storage, clock_at(10, 5, 30))
}

fn worker(storage: &SharedStorage, clock: &TestClock, id: &str) -> Arc<Lease> {
    Lease::new(
        storage.clone(),
        clock.shared(),
        Monotonic::from_clock(clock.shared()),
        LeaseSettings::worker(format!("dc1/{id}"), 30),
    )
}

fn held(status: LeaseStatus) -> u64 {
    match status {
        LeaseStatus::Held { epoch } => epoch,
        other => panic!("expected to hold the lease: {other:?}"),
    }
}

#[tokio::test]
async fn a_standby_takes_over_a_paused_holder_which_is_fenced() {
    let (_dir, storage, clock) = setup();
    let a = worker(&storage, &clock, "a");
    let b = worker(&storage, &clock, "b");
    assert_eq!(held(a.acquire().await.unwrap()), 1);
    a.check().await.unwrap();
    assert!(matches!(
        b.acquire().await.unwrap(),
        LeaseStatus::Standby { .. }
    ));
    let record = Lease::read_record(&storage, "worker")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.holder, "dc1/a");
    assert_eq!(record.epoch, 1);

    // A renews every 10 s; B stays standby.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(10));
        a.renew().await.unwrap();
        assert!(matches!(
            b.acquire().await.unwrap(),
            LeaseStatus::Standby { .. }
        ));
    }
    a.check().await.unwrap();
    let last_renewal = clock.shared().now();

    // A pauses (no renewals). By its own clock it stops committing after L - d.
    clock.advance(Duration::from_secs(24));
    a.check().await.unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(matches!(
        a.check().await,
        Err(WorkerError::LostLease { .. })
    ));
    // B waits for expiry plus the drift allowance (30 + 5 s)...
    assert!(matches!(
        b.acquire().await.unwrap(),
        LeaseStatus::Standby { .. }
    ));
    clock.set(last_renewal + chrono::Duration::seconds(36));
    assert_eq!(held(b.acquire().await.unwrap()), 2);
    let took = clock.shared().now() - last_renewal;
    assert!(
        took <= chrono::Duration::seconds(90),
        "takeover after {took}"
    );
    b.check().await.unwrap();

    // A wakes up: its renewal sees the higher claim; it stays fenced.
    assert!(matches!(
        a.renew().await,
        Err(WorkerError::LostLease { .. })
    ));
    assert!(matches!(
        a.check().await,
        Err(WorkerError::LostLease { .. })
    ));
    // Its late write did land; B's next renewal restores the record and B keeps it.
    clock.advance(Duration::from_secs(10));
    b.renew().await.unwrap();
    let record = Lease::read_record(&storage, "worker")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.holder.as_str(), record.epoch), ("dc1/b", 2));
    b.check().await.unwrap();
}

#[tokio::test]
async fn racing_standbys_get_one_holder_and_release_hands_over_at_once() {
    let (_dir, storage, clock) = setup();
    let workers: Vec<_> = (0..4)
        .map(|i| worker(&storage, &clock, &format!("w{i}")))
        .collect();
    let results = futures_join_all(workers.to_vec()).await;
    let holders: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, LeaseStatus::Held { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(holders.len(), 1, "exactly one holder: {results:?}");
    let holder = &workers[holders[0]];
    let other = &workers[(holders[0] + 1) % workers.len()];
    assert!(matches!(
        other.check().await,
        Err(WorkerError::LostLease { .. })
    ));

    holder.release().await.unwrap();
    assert!(
        holder.check().await.is_err(),
        "a released lease fences at once"
    );
    let epoch = held(other.acquire().await.unwrap());
    assert!(epoch >= 2);
    other.check().await.unwrap();
}

async fn futures_join_all(workers: Vec<Arc<Lease>>) -> Vec<LeaseStatus> {
    let mut tasks = Vec::new();
    for w in workers {
        tasks.push(tokio::spawn(async move { w.acquire().await.unwrap() }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_local_job_commits_nothing() {
    let (_dir, storage, clock) = setup();
    let cfg = Config::default();
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .config(cfg.clone())
        .max_file_bytes(1 << 20)
        .heartbeat_ms(200)
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log_to("clicks", &padded("x", 20, 10)).await,
        ResultCode::Ok
    );
    collector.stop().await.unwrap();
    clock.advance(Duration::from_secs(60));

    let a = worker(&storage, &clock, "a");
    let b = worker(&storage, &clock, "b");
    held(a.acquire().await.unwrap());
    let mut job_a = LocalJob::new(env_with_fence(
        storage.clone(),
        clock.shared(),
        cfg.clone(),
        a.clone(),
    ));
    // A is paused past its lease; B takes over.
    clock.advance(Duration::from_secs(36));
    held(b.acquire().await.unwrap());
    let err = job_a.pass().await.unwrap_err();
    assert!(matches!(err, WorkerError::LostLease { .. }), "{err}");
    let topic = Topic::new("clicks").unwrap();
    let view = check_local_view(&*storage, &topic).await;
    assert!(view.placed.is_empty() && view.sealed.is_empty(), "{view:?}");
    assert_eq!(view.waiting.len(), 1);

    // B's job does the work.
    let mut job_b = LocalJob::new(env_with_fence(
        storage.clone(),
        clock.shared(),
        cfg,
        b.clone(),
    ));
    let report = job_b.pass().await.unwrap();
    assert_eq!(report.sealed, 2, "10:05 and 10:06: {report:?}");
    assert_eq!(check_local_view(&*storage, &topic).await.records(), 20);
}

/// A renewal that hangs in storage until the lease lapsed (a NameNode restart)
/// and ends after the same worker claimed the next epoch sees that claim: it is
/// the worker's own, no takeover, and the new holding stays held.
#[tokio::test]
async fn a_renewal_that_outlived_its_holding_is_no_takeover() {
    use conduit_core::storage::{FaultPlan, FaultStorage, Op};
    let (_dir, local, clock) = setup();
    let plan = FaultPlan::new();
    let storage: SharedStorage = Arc::new(FaultStorage::new(local, plan.clone()));
    let a = worker(&storage, &clock, "a");
    assert_eq!(held(a.acquire().await.unwrap()), 1);
    // The renewal of epoch 1 hangs in its rename.
    plan.delay_ops(&[Op::Rename], Duration::from_millis(300));
    let renewal = tokio::spawn({
        let a = a.clone();
        async move { a.renew().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    plan.heal();
    // Meanwhile the lease lapsed and the worker claims epoch 2.
    clock.advance(chrono::Duration::seconds(40));
    assert_eq!(held(a.acquire().await.unwrap()), 2);
    let stale = renewal.await.unwrap();
    assert!(
        !matches!(stale, Err(WorkerError::LostLease { .. })),
        "no takeover: {stale:?}"
    );
    a.check().await.unwrap();
    assert!(a.is_held());
}

/// A temporary copy of the lease record that a failed write left (a NameNode
/// down between the copy's write and its rename, seen in
/// `faults_hdfs_worker`) is deleted by the worker's next write of the record,
/// not left in `system/leases/` for good.
#[tokio::test]
async fn a_temporary_copy_left_by_a_failed_record_write_is_swept() {
    let (_dir, storage, clock) = setup();
    let left = "system/leases/_tmp.worker.json.00c0ffee00c0ffee";
    storage
        .write_atomic(left, bytes::Bytes::from_static(b"{\"torn\":"))
        .await
        .unwrap();
    let w = worker(&storage, &clock, "w0");
    held(w.acquire().await.unwrap());
    assert!(
        !storage.exists(left).await.unwrap(),
        "{left} is still there"
    );
    let names: Vec<String> = storage
        .list("system/leases")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("_tmp.")),
        "no temporary copy left: {names:?}"
    );
    assert!(names.iter().any(|n| n == "worker.json"), "{names:?}");
}
