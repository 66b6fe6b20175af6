//! The `local` job against a real in-process collector on local disk, with a test
//! clock: minute sealing (empty minutes included), lost checkpoints, a crash at
//! every storage call of a pass, and a collector that comes back late.

use std::collections::BTreeSet;
use std::sync::Arc;

use conduit_core::scribe::ResultCode;
use conduit_core::storage::{FaultPlan, FaultStorage};
use conduit_core::{Config, SharedStorage, TestClock, Topic};
use conduit_merger::{Job, LocalJob, SealView};
use conduit_testkit::clock::{clock_at, set};
use conduit_testkit::collector;
use conduit_testkit::scribe::{padded, Client};
use conduit_testkit::worker::{check_local_view, collector_files, copy_tree, env, wait_watermark};
use conduit_testkit::{local_storage, minute, node};

/// The collectors' heartbeat period: watermarks move soon after the clock.
const HEARTBEAT_MS: u64 = 200;

fn config(extra: &str) -> Config {
    Config::parse("test", extra).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minutes_seal_in_order_with_empty_ones_and_survive_a_lost_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let clock = clock_at(10, 5, 30);
    let cfg = config("[topics.quiet]\n");
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .id("c1")
        .config(cfg.clone())
        .max_file_bytes(1 << 20)
        .heartbeat_ms(HEARTBEAT_MS)
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    let clicks = Topic::new("clicks").unwrap();

    assert_eq!(
        client.log_to("clicks", &padded("a", 100, 10)).await,
        ResultCode::Ok
    );
    set(&clock, 10, 6, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;
    assert_eq!(
        client.log_to("clicks", &padded("b", 50, 10)).await,
        ResultCode::Ok
    );
    set(&clock, 10, 8, 10); // 10:07 gets no data
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:07")).await;
    assert_eq!(
        client.log_to("clicks", &padded("c", 30, 10)).await,
        ResultCode::Ok
    );

    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), cfg.clone()));
    let report = job.pass().await.unwrap();
    assert_eq!(
        report.sealed, 3,
        "10:05, 10:06 and the empty 10:07: {report:?}"
    );
    assert_eq!(report.files, 2, "{report:?}");
    let view = check_local_view(&*storage, &clicks).await;
    let records: Vec<(String, u64, usize)> = view
        .sealed
        .values()
        .map(|m| (m.minute.to_string(), m.records, m.files.len()))
        .collect();
    assert_eq!(
        records,
        vec![
            ("2026-11-22T10:05Z".to_string(), 100, 1),
            ("2026-11-22T10:06Z".to_string(), 50, 1),
            ("2026-11-22T10:07Z".to_string(), 0, 0),
        ]
    );
    assert_eq!(view.waiting.len(), 1, "the open 10:08 file stays: {view:?}");
    let m = &view.sealed[&minute("2026-11-22T10:05")];
    assert_eq!(m.files[0].name, "dc1-c1-clicks-2026-11-22-10-05_00000.zst");
    assert_eq!(m.sealed_by, "dc1/test-worker");
    assert_eq!(m.clusters, vec![node("dc1")]);
    assert_eq!(
        job.progress().get(SealView::Local, &clicks),
        Some(minute("2026-11-22T10:07"))
    );
    let cp = storage
        .read("system/checkpoints/local/clicks.json")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&cp).contains(r#""last_sealed":"2026-11-22T10:07Z""#));

    // Nothing more to do until 10:08 ends and the collector passes it.
    assert_eq!(job.pass().await.unwrap().sealed, 0);
    set(&clock, 10, 9, 5);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:08")).await;
    let report = job.pass().await.unwrap();
    // clicks 10:08, and quiet's first minute (its stream started at 10:08, the
    // minute the worker first served it).
    assert_eq!(report.sealed, 2, "{report:?}");
    let view = check_local_view(&*storage, &clicks).await;
    assert_eq!(view.records(), 180);
    assert!(view.waiting.is_empty());
    let quiet = check_local_view(&*storage, &Topic::new("quiet").unwrap()).await;
    assert_eq!(
        quiet.sealed.keys().copied().collect::<Vec<_>>(),
        vec![minute("2026-11-22T10:08")]
    );

    // A corrupt checkpoint and a fresh job: a rescan, no re-sealing, no gap.
    storage
        .write_atomic(
            "system/checkpoints/local/clicks.json",
            bytes::Bytes::from_static(b"{"),
        )
        .await
        .unwrap();
    storage
        .delete("system/checkpoints/local/quiet.json", false)
        .await
        .unwrap();
    set(&clock, 10, 10, 5);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:09")).await;
    let mut fresh = LocalJob::new(env(storage.clone(), clock.shared(), cfg.clone()));
    let report = fresh.pass().await.unwrap();
    assert_eq!(report.sealed, 2, "10:09 of both topics: {report:?}");
    let view = check_local_view(&*storage, &clicks).await;
    assert_eq!(view.sealed.len(), 5);
    assert_eq!(view.records(), 180);
    collector.stop().await.unwrap();
}

/// Builds the state the crash test starts from: a stopped collector's files of
/// 10:05 (several, small max file size), 10:06 and 10:08; returns the root.
async fn build_backlog(root: &std::path::Path) -> (TestClock, usize) {
    let storage = local_storage(root);
    let clock = clock_at(10, 5, 30);
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .id("c1")
        .config(Config::default())
        .max_file_bytes(4096)
        .heartbeat_ms(HEARTBEAT_MS)
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    let mut acked = 0;
    for i in 0..4 {
        let batch = padded(&format!("a{i}"), 20, 200);
        assert_eq!(client.log_to("clicks", &batch).await, ResultCode::Ok);
        acked += batch.len();
    }
    set(&clock, 10, 6, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;
    let batch = padded("b", 40, 20);
    assert_eq!(client.log_to("clicks", &batch).await, ResultCode::Ok);
    acked += batch.len();
    set(&clock, 10, 8, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:07")).await;
    let batch = padded("c", 25, 20);
    assert_eq!(client.log_to("clicks", &batch).await, ResultCode::Ok);
    acked += batch.len();
    collector.stop().await.unwrap();
    (clock, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_storage_call_never_loses_or_duplicates_a_file() {
    let work = tempfile::tempdir().unwrap();
    let fresh = work.path().join("fresh");
    let (clock, acked) = build_backlog(&fresh).await;
    let clicks = Topic::new("clicks").unwrap();
    let fresh_storage = local_storage(&fresh);
    let originals = collector_files(&*fresh_storage, &clicks).await;
    assert!(
        originals.len() >= 4,
        "several files of 10:05: {originals:?}"
    );

    // Second starting point: 10:05..10:07 sealed while one 10:05 file was away;
    // it comes back late, and the clock moves past 10:08.
    let later = work.path().join("later");
    copy_tree(&fresh, &later);
    let later_storage = local_storage(&later);
    let away = "data/clicks/c1/clicks-2026-11-22-10-05_00001.zst";
    let bytes = later_storage.read(away).await.unwrap();
    later_storage.delete(away, false).await.unwrap();
    let mut job = LocalJob::new(env(
        later_storage.clone(),
        clock.shared(),
        Config::default(),
    ));
    assert_eq!(job.pass().await.unwrap().sealed, 3);
    later_storage.write_atomic(away, bytes).await.unwrap();
    let later_clock = clock_at(10, 9, 30);

    for (name, root, clock, sealed_after) in [
        ("fresh", &fresh, &later_clock, 4usize),
        ("later", &later, &later_clock, 4usize),
    ] {
        let mut calls = 0;
        for n in 1.. {
            let copy = work.path().join(format!("{name}-{n}"));
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
            // Right after the crash: consistent, nothing lost or doubled.
            let before = check_local_view(&*real, &clicks).await;
            let placed: BTreeSet<&String> =
                before.placed.keys().chain(before.waiting.iter()).collect();
            assert_eq!(
                placed,
                originals.keys().collect::<BTreeSet<_>>(),
                "{name} crash at call {n}: every file is somewhere"
            );
            // Restart: a fresh job until nothing is left to do.
            let mut restarted = LocalJob::new(env(real.clone(), clock.shared(), Config::default()));
            restarted.pass().await.unwrap();
            assert_eq!(restarted.pass().await.unwrap().sealed, 0);
            let after = check_local_view(&*real, &clicks).await;
            assert!(after.waiting.is_empty(), "{name}/{n}: {after:?}");
            assert_eq!(after.placed.len(), originals.len(), "{name}/{n}");
            assert_eq!(after.sealed.len(), sealed_after, "{name}/{n}");
            assert_eq!(
                after.records(),
                acked as u64,
                "{name}/{n}: records == acknowledged"
            );
            for (m, manifest) in &before.sealed {
                assert_eq!(
                    &after.sealed[m], manifest,
                    "{name}/{n}: sealed {m} never changes"
                );
            }
            if name == "later" {
                let late: Vec<_> = after
                    .sealed
                    .values()
                    .flat_map(|m| {
                        m.files
                            .iter()
                            .filter(|f| f.late)
                            .map(|f| (m.minute, f.minute))
                    })
                    .collect();
                assert_eq!(
                    late,
                    vec![(minute("2026-11-22T10:08"), minute("2026-11-22T10:05"))],
                    "{name}/{n}"
                );
            }
            std::fs::remove_dir_all(&copy).unwrap();
        }
        assert!(calls > 10, "{name}: a pass makes {calls} storage calls");
        eprintln!("{name}: crashed at each of {calls} storage calls");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_comes_back_late_lands_in_a_later_minute() {
    let dir = tempfile::tempdir().unwrap();
    let real = local_storage(dir.path());
    let plan = FaultPlan::new();
    let c2_storage: SharedStorage = Arc::new(FaultStorage::new(real.clone(), plan.clone()));
    let clock = clock_at(10, 5, 30);
    let cfg = config("[worker]\ncollector_timeout_secs = 5\n");
    let c1 = collector::on(real.clone())
        .clock(clock.shared())
        .id("c1")
        .config(cfg.clone())
        .max_file_bytes(1 << 20)
        .heartbeat_ms(HEARTBEAT_MS)
        .start()
        .await;
    let c2 = collector::on(c2_storage)
        .clock(clock.shared())
        .id("c2")
        .config(cfg.clone())
        .max_file_bytes(1 << 20)
        .heartbeat_ms(HEARTBEAT_MS)
        .start()
        .await;
    let mut p1 = Client::connect(c1.thrift_addr()).await;
    let mut p2 = Client::connect(c2.thrift_addr()).await;
    assert_eq!(
        p1.log_to("clicks", &padded("one", 10, 10)).await,
        ResultCode::Ok
    );
    assert_eq!(
        p2.log_to("clicks", &padded("two", 7, 10)).await,
        ResultCode::Ok
    );

    // c2 loses its storage: it cannot close its 10:05 file nor heartbeat.
    plan.fail_all();
    set(&clock, 10, 6, 10);
    wait_watermark(&real, "dc1", "c1", minute("2026-11-22T10:05")).await;
    let mut job = LocalJob::new(env(real.clone(), clock.shared(), cfg.clone()));
    let clicks = Topic::new("clicks").unwrap();
    let report = job.pass().await.unwrap();
    assert_eq!(
        report.sealed, 1,
        "c2 is silent for > 5 s and does not hold 10:05"
    );
    let view = check_local_view(&*real, &clicks).await;
    assert_eq!(view.sealed[&minute("2026-11-22T10:05")].records, 10);
    assert_eq!(view.waiting.len(), 1, "c2's unclosed file stays in data/");

    // c2's storage returns: it closes its file; the file is late.
    plan.heal();
    wait_watermark(&real, "dc1", "c2", minute("2026-11-22T10:05")).await;
    let report = job.pass().await.unwrap();
    assert_eq!(report.late_files, 1, "{report:?}");
    set(&clock, 10, 7, 5);
    wait_watermark(&real, "dc1", "c1", minute("2026-11-22T10:06")).await;
    wait_watermark(&real, "dc1", "c2", minute("2026-11-22T10:06")).await;
    assert_eq!(job.pass().await.unwrap().sealed, 1);
    let view = check_local_view(&*real, &clicks).await;
    let m = &view.sealed[&minute("2026-11-22T10:06")];
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].name, "dc1-c2-clicks-2026-11-22-10-05_00000.zst");
    assert!(m.files[0].late);
    assert_eq!(m.files[0].minute, minute("2026-11-22T10:05"));
    assert_eq!(
        view.records(),
        17,
        "records in manifests == records acknowledged"
    );
    c1.stop().await.unwrap();
    c2.stop().await.unwrap();
}

/// A collector stopped and started again within one minute, with a worker pass
/// in between that moved the first run's closed file of that minute: the second
/// run's file of the same minute must not take the same name (the worker could
/// not move it: its destination exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_restarted_within_a_minute_after_its_file_was_moved_takes_a_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let clock = clock_at(10, 5, 10);
    let cfg = config("");
    let start = || {
        collector::on(storage.clone())
            .clock(clock.shared())
            .id("c1")
            .config(cfg.clone())
            .heartbeat_ms(HEARTBEAT_MS)
            .start()
    };
    let clicks = Topic::new("clicks").unwrap();
    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), cfg.clone()));

    let first = start().await;
    let mut client = Client::connect(first.thrift_addr()).await;
    assert_eq!(
        client.log_to("clicks", &padded("a", 100, 10)).await,
        ResultCode::Ok
    );
    first.stop().await.unwrap();
    // The stop closed 10:05's file: the worker moves it at once.
    job.pass().await.unwrap();
    assert!(collector_files(&*storage, &clicks).await.is_empty());

    let second = start().await;
    let mut client = Client::connect(second.thrift_addr()).await;
    assert_eq!(
        client.log_to("clicks", &padded("b", 50, 10)).await,
        ResultCode::Ok
    );
    set(&clock, 10, 6, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 1, "{report:?}");
    let view = check_local_view(&*storage, &clicks).await;
    let m = &view.sealed[&minute("2026-11-22T10:05")];
    assert_eq!(m.records, 150, "both runs' events sealed once: {m:?}");
    assert_eq!(m.files.len(), 2, "{m:?}");
    second.stop().await.unwrap();
}

/// A collector file delivered twice (a spool replay whose first copy the worker
/// moved before the spool let go of it) meets its own first copy in the local
/// view: the second copy is deleted and the minute seals with each event once.
/// A different file under that name is an error naming the way out, and the
/// file stays where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_delivered_twice_is_sealed_once_and_a_different_one_is_not_moved_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let clock = clock_at(10, 5, 10);
    let cfg = config("");
    let clicks = Topic::new("clicks").unwrap();
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .id("c1")
        .config(cfg.clone())
        .heartbeat_ms(HEARTBEAT_MS)
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log_to("clicks", &padded("a", 100, 10)).await,
        ResultCode::Ok
    );
    collector.stop().await.unwrap();
    let path = "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst";
    let bytes = storage.read(path).await.unwrap();
    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), cfg.clone()));
    job.pass().await.unwrap();
    let moved = "streams_local/clicks/2026/11/22/10/05/dc1-c1-clicks-2026-11-22-10-05_00000.zst";
    assert_eq!(storage.read(moved).await.unwrap(), bytes);

    // Delivered again: the same bytes under the same name.
    storage.write_atomic(path, bytes.clone()).await.unwrap();
    job.pass().await.unwrap();
    assert!(
        collector_files(&*storage, &clicks).await.is_empty(),
        "the second copy is deleted"
    );
    assert_eq!(storage.read(moved).await.unwrap(), bytes, "the first stays");

    // A different file under that name: not moved over it, not deleted.
    let mut other = bytes.to_vec();
    other.extend_from_slice(&bytes);
    storage
        .write_atomic(path, bytes::Bytes::from(other.clone()))
        .await
        .unwrap();
    let err = job.pass().await.unwrap_err().to_string();
    assert!(
        err.contains("a different file of the same name") && err.contains("quarantine/"),
        "{err}"
    );
    assert_eq!(storage.read(path).await.unwrap().len(), other.len());
    storage.delete(path, false).await.unwrap();

    set(&clock, 10, 6, 10);
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 1, "{report:?}");
    let view = check_local_view(&*storage, &clicks).await;
    let m = &view.sealed[&minute("2026-11-22T10:05")];
    assert_eq!((m.records, m.files.len()), (100, 1), "{m:?}");
}
