//! What the local seal guarantees beyond moving files, against a real in-process
//! collector on local disk with a test clock: a file it cannot seal is set aside
//! in `quarantine/` and listed in the manifest while the topic keeps sealing, also
//! when the worker crashes at any storage call of the pass.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use conduit_core::layout::Layout;
use conduit_core::scribe::ResultCode;
use conduit_core::storage::{FaultPlan, FaultStorage};
use conduit_core::{Config, SharedStorage, TestClock, Topic};
use conduit_merger::{Job, LocalJob};
use conduit_testkit::clock::{clock_at, set};
use conduit_testkit::collector::{self, stored_files};
use conduit_testkit::scribe::{padded, Client};
use conduit_testkit::worker::{
    check_local_view, check_local_view_allowing, copy_tree, env, wait_watermark, LocalView,
};
use conduit_testkit::{local_storage, minute};

/// The collectors' heartbeat period: watermarks move soon after the clock.
const HEARTBEAT_MS: u64 = 200;

fn clicks() -> Topic {
    Topic::new("clicks").unwrap()
}

/// Cuts the last `cut` bytes off the file at `path`, as a disk fault would.
async fn truncate(storage: &SharedStorage, path: &str, cut: usize) -> Bytes {
    let bytes = storage.read(path).await.unwrap();
    let kept = bytes.slice(..bytes.len() - cut);
    storage.write_atomic(path, kept.clone()).await.unwrap();
    kept
}

/// What a sealed local view says, without the instants of sealing: per minute,
/// the files with their records, and the files set aside with their reasons.
type Outcome = BTreeMap<String, (Vec<(String, u64)>, Vec<(String, String)>)>;

fn outcome(view: &LocalView) -> Outcome {
    view.sealed
        .iter()
        .map(|(m, manifest)| {
            let files = manifest
                .files
                .iter()
                .map(|f| (f.name.clone(), f.records))
                .collect();
            let set_aside = manifest
                .quarantined
                .iter()
                .map(|q| (q.name.clone(), q.reason.clone()))
                .collect();
            (m.to_string(), (files, set_aside))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_is_quarantined_and_the_topic_keeps_sealing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let clock = clock_at(10, 5, 30);
    let cfg = Config::default();
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .max_file_bytes(4096)
        .heartbeat_ms(HEARTBEAT_MS)
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    let mut acked = 0u64;
    for i in 0..6 {
        let batch = padded(&format!("a{i}"), 20, 200);
        assert_eq!(client.log_to("clicks", &batch).await, ResultCode::Ok);
        acked += batch.len() as u64;
    }
    set(&clock, 10, 6, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;

    // A disk fault cuts the end (the trailer and more) off one closed file.
    let files = stored_files(&*storage, "clicks").await;
    assert!(files.len() >= 3, "several closed files of 10:05");
    let victim = &files[1];
    assert!(victim.is_closed());
    let kept = truncate(&storage, &victim.path, 100).await;
    let lost = victim.payloads().len() as u64;
    let victim_name = format!("dc1-c1-{}", victim.name);

    let batch = padded("b", 30, 20);
    assert_eq!(client.log_to("clicks", &batch).await, ResultCode::Ok);
    acked += batch.len() as u64;
    set(&clock, 10, 7, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:06")).await;

    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), cfg.clone()));
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 2, "10:05 and 10:06 are sealed: {report:?}");
    assert_eq!(report.quarantined, 1, "{report:?}");
    let view = check_local_view(&*storage, &clicks()).await;
    assert_eq!(
        view.quarantined,
        BTreeMap::from([(victim_name.clone(), minute("2026-11-22T10:05"))])
    );
    let sealed = &view.sealed[&minute("2026-11-22T10:05")];
    assert_eq!(sealed.quarantined.len(), 1);
    assert_eq!(sealed.quarantined[0].name, victim_name);
    assert_eq!(sealed.quarantined[0].reason, "no_trailer");
    assert!(
        sealed.quarantined[0].detail.contains("truncated"),
        "{:?}",
        sealed.quarantined[0]
    );
    assert_eq!(
        view.records(),
        acked - lost,
        "every other acknowledged record is sealed"
    );
    let set_aside = Layout::quarantine_path(&format!(
        "streams_local/clicks/2026/11/22/10/05/{victim_name}"
    ));
    assert_eq!(
        storage.read(&set_aside).await.unwrap(),
        kept,
        "the bytes are kept as they were"
    );
    assert_eq!(
        job.pass().await.unwrap(),
        Default::default(),
        "nothing left"
    );

    // Something that is no data file in an unsealed minute is set aside too.
    let foreign = "streams_local/clicks/2026/11/22/10/07/notes.txt";
    storage
        .write_atomic(foreign, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    set(&clock, 10, 8, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:07")).await;
    let report = job.pass().await.unwrap();
    assert_eq!((report.sealed, report.quarantined), (1, 1), "{report:?}");
    let view = check_local_view(&*storage, &clicks()).await;
    let sealed = &view.sealed[&minute("2026-11-22T10:07")];
    assert_eq!(sealed.quarantined[0].name, "notes.txt");
    assert_eq!(sealed.quarantined[0].reason, "not_a_data_file");
    assert!(storage
        .exists(&Layout::quarantine_path(foreign))
        .await
        .unwrap());
    collector.stop().await.unwrap();
}

/// A stopped collector's files of 10:05 (several) and 10:06, one of 10:05
/// truncated; returns the clock to seal with and the local name of that file.
async fn backlog_with_a_truncated_file(root: &Path) -> (TestClock, String) {
    let storage = local_storage(root);
    let clock = clock_at(10, 5, 30);
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .max_file_bytes(4096)
        .heartbeat_ms(HEARTBEAT_MS)
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    for i in 0..5 {
        client
            .log_acked("clicks", &padded(&format!("a{i}"), 20, 200))
            .await;
    }
    set(&clock, 10, 6, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;
    client.log_acked("clicks", &padded("b", 30, 20)).await;
    collector.stop().await.unwrap();
    let files = stored_files(&*storage, "clicks").await;
    truncate(&storage, &files[1].path, 60).await;
    (clock_at(10, 9, 30), format!("dc1-c1-{}", files[1].name))
}

/// Runs the `local` job on a copy of `root` failing its n-th storage call, for
/// every n until a pass makes no more calls than that; after each crash a fresh
/// job finishes the work. Every such run must end with the same view as an
/// uninterrupted pass, whose outcome is returned. The files named in `unclosed`
/// may wait in an unsealed minute without their trailer after a crash.
async fn crash_at_every_call(
    work: &Path,
    root: &Path,
    clock: &TestClock,
    unclosed: &[&str],
) -> Outcome {
    let whole = work.join("whole");
    copy_tree(root, &whole);
    let storage = local_storage(&whole);
    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), Config::default()));
    job.pass().await.unwrap();
    let expected = outcome(&check_local_view(&*storage, &clicks()).await);

    let mut calls = 0;
    for n in 1.. {
        let copy = work.join(format!("crash-{n}"));
        copy_tree(root, &copy);
        let real = local_storage(&copy);
        let plan = FaultPlan::new();
        plan.fail_after(n - 1);
        let faulty: SharedStorage = Arc::new(FaultStorage::new(real.clone(), plan.clone()));
        let mut crashed = LocalJob::new(env(faulty, clock.shared(), Config::default()));
        let result = crashed.pass().await;
        if plan.injected() == 0 {
            result.unwrap();
            calls = n - 1;
            std::fs::remove_dir_all(&copy).unwrap();
            break;
        }
        drop(crashed);
        let before = check_local_view_allowing(&*real, &clicks(), unclosed).await;
        let mut restarted = LocalJob::new(env(real.clone(), clock.shared(), Config::default()));
        restarted.pass().await.unwrap();
        assert_eq!(
            restarted.pass().await.unwrap().sealed,
            0,
            "crash at call {n}"
        );
        let after = check_local_view(&*real, &clicks()).await;
        assert_eq!(outcome(&after), expected, "crash at call {n}");
        for (m, manifest) in &before.sealed {
            assert_eq!(
                &after.sealed[m], manifest,
                "crash at call {n}: sealed {m} never changes"
            );
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }
    assert!(calls > 10, "a pass makes {calls} storage calls");
    eprintln!("crashed at each of {calls} storage calls");
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_storage_call_of_a_quarantining_seal_lists_the_file_once() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let (clock, truncated) = backlog_with_a_truncated_file(&root).await;
    let expected = crash_at_every_call(work.path(), &root, &clock, &[&truncated]).await;
    let set_aside: Vec<_> = expected
        .values()
        .flat_map(|(_, quarantined)| quarantined.clone())
        .collect();
    assert_eq!(
        set_aside,
        vec![(truncated, "no_trailer".to_owned())],
        "{expected:?}"
    );
}
