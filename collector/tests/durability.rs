//! The collector in-process, on local disk through the fault-injection wrapper, with
//! a test clock: minute rolls, storage outages with and without a spool, and
//! idempotent batches. Every test counts each payload in the files.

use std::sync::Arc;
use std::time::Duration;

use conduit_core::scribe::ResultCode;
use conduit_core::storage::{FaultPlan, FaultStorage, Op};
use conduit_core::{Config, SharedStorage, TestClock};
use conduit_testkit::clock::clock_at;
use conduit_testkit::collector::{self, payload_counts, stored_files, wait_status, Start};
use conduit_testkit::scribe::{events, Client};
use conduit_testkit::{local_storage, minute};

struct Env {
    _dir: tempfile::TempDir,
    spool: std::path::PathBuf,
    real: SharedStorage,
    faulty: SharedStorage,
    plan: FaultPlan,
    clock: TestClock,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let real = local_storage(dir.path().join("root"));
    let plan = FaultPlan::new();
    let faulty: SharedStorage = Arc::new(FaultStorage::new(real.clone(), plan.clone()));
    let clock = clock_at(10, 5, 30);
    Env {
        spool: dir.path().join("spool"),
        _dir: dir,
        real,
        faulty,
        plan,
        clock,
    }
}

/// A collector on the faulty storage and the test clock of `e`.
fn start(e: &Env) -> Start {
    collector::on(e.faulty.clone()).clock(e.clock.shared())
}

/// How long a test waits for a status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_close_at_the_minute_boundary_and_the_watermark_follows() {
    let e = env();
    let collector = start(&e).start().await;
    assert_eq!(
        collector.status().watermark,
        Some(minute("2026-11-22T10:04"))
    );
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("clicks", "a", 100)).await,
        ResultCode::Ok
    );
    let files = stored_files(&*e.real, "clicks").await;
    assert_eq!(files.len(), 1);
    assert!(files[0].path.ends_with("clicks-2026-11-22-10-05_00000.zst"));
    assert_eq!(
        files[0].payloads().len(),
        100,
        "acknowledged events are readable at once"
    );
    assert!(!files[0].is_closed(), "the minute's file is still open");

    e.clock.advance(chrono::Duration::seconds(30)); // 10:06:00
    wait_status(&collector, "watermark 10:05", STATUS_TIMEOUT, |s| {
        s.watermark == Some(minute("2026-11-22T10:05"))
    })
    .await;
    let files = stored_files(&*e.real, "clicks").await;
    assert!(files[0].is_closed(), "closed at the boundary");

    assert_eq!(client.log(&events("clicks", "b", 50)).await, ResultCode::Ok);
    let files = stored_files(&*e.real, "clicks").await;
    assert_eq!(files.len(), 2);
    assert!(files[1].path.ends_with("clicks-2026-11-22-10-06_00000.zst"));
    assert_eq!(files[1].payloads().len(), 50);

    let hb = e.real.read("system/heartbeats/dc1/c1.json").await.unwrap();
    let hb: serde_json::Value = serde_json::from_slice(&hb).unwrap();
    assert_eq!(hb["collector"], "c1");
    collector.stop().await.unwrap();
    let hb = e.real.read("system/heartbeats/dc1/c1.json").await.unwrap();
    let hb: serde_json::Value = serde_json::from_slice(&hb).unwrap();
    assert_eq!(hb["state"], "stopped");
    assert!(stored_files(&*e.real, "clicks")
        .await
        .iter()
        .all(|f| f.is_closed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_spools_then_replays_in_order_without_loss_or_duplicates() {
    let e = env();
    let collector = start(&e).spool(&e.spool).start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("clicks", "before", 100)).await,
        ResultCode::Ok
    );

    // Storage goes away: syncs fail after the bytes were written.
    e.plan.fail_ops(&[
        Op::Sync,
        Op::Create,
        Op::Write,
        Op::Close,
        Op::List,
        Op::Rename,
        Op::Stat,
        Op::Read,
    ]);
    assert_eq!(
        client.log(&events("clicks", "during", 100)).await,
        ResultCode::Ok
    );
    assert!(!collector.status().storage_healthy);
    assert!(collector.status().spooled_bytes > 0);
    e.clock.advance(chrono::Duration::seconds(30)); // 10:06
    assert_eq!(
        client.log(&events("clicks", "next_minute", 100)).await,
        ResultCode::Ok
    );
    wait_status(
        &collector,
        "watermark held before the spooled minute",
        STATUS_TIMEOUT,
        |s| s.watermark == Some(minute("2026-11-22T10:04")),
    )
    .await;

    e.plan.heal();
    wait_status(&collector, "spool replayed", STATUS_TIMEOUT, |s| {
        s.storage_healthy && s.spooled_bytes == 0
    })
    .await;
    e.clock.advance(chrono::Duration::seconds(60)); // 10:07
    wait_status(&collector, "watermark 10:06", STATUS_TIMEOUT, |s| {
        s.watermark == Some(minute("2026-11-22T10:06"))
    })
    .await;
    assert_eq!(
        client.log(&events("clicks", "after", 100)).await,
        ResultCode::Ok
    );
    collector.stop().await.unwrap();

    let files = stored_files(&*e.real, "clicks").await;
    assert!(
        files.iter().all(|f| f.is_closed()),
        "every file closed: {files:?}"
    );
    let counts = payload_counts(&*e.real, "clicks").await;
    assert_eq!(counts.len(), 400);
    assert!(counts.values().all(|&c| c == 1), "exactly once");
    // Each event kept its arrival minute.
    for file in &files {
        let path = &file.path;
        for p in file.payloads() {
            let p = String::from_utf8_lossy(p);
            let expect = if p.contains("\"before\"") || p.contains("\"during\"") {
                "10-05"
            } else if p.contains("next_minute") {
                "10-06"
            } else {
                "10-07"
            };
            assert!(
                path.contains(&format!("2026-11-22-{expect}")),
                "{p} in {path}"
            );
        }
    }
    let spool_left: Vec<_> = walk(&e.spool);
    assert!(
        spool_left.iter().all(|p| !p.ends_with(".zst")),
        "spool emptied: {spool_left:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spool_failed_syncs_answer_try_later_and_leave_no_trace() {
    let e = env();
    let collector = start(&e).start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("clicks", "ok1", 10)).await,
        ResultCode::Ok
    );
    // The bytes reach the file, the sync fails: not acknowledged.
    e.plan.fail_ops(&[Op::Sync]);
    assert_eq!(
        client.log(&events("clicks", "refused", 10)).await,
        ResultCode::TryLater
    );
    e.plan.heal();
    wait_status(&collector, "storage healthy", STATUS_TIMEOUT, |s| {
        s.storage_healthy
    })
    .await;
    assert_eq!(
        client.log(&events("clicks", "ok2", 10)).await,
        ResultCode::Ok
    );
    collector.stop().await.unwrap();
    let counts = payload_counts(&*e.real, "clicks").await;
    assert_eq!(
        counts.len(),
        20,
        "the refused call left nothing behind: {counts:?}"
    );
    assert!(counts
        .keys()
        .all(|p| !String::from_utf8_lossy(p).contains("refused")));
    assert!(counts.values().all(|&c| c == 1));
    assert!(stored_files(&*e.real, "clicks")
        .await
        .iter()
        .all(|f| f.is_closed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_written_once_even_after_a_partial_failure() {
    let e = env();
    let collector = start(&e).start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    let mut batch = events("alpha", "b1", 20);
    batch.extend(events("beta", "b1", 20));
    assert_eq!(client.log_batch("pubA", 1, &batch).await, ResultCode::Ok);
    // Lost ack: the publisher sends the same batch again.
    assert_eq!(client.log_batch("pubA", 1, &batch).await, ResultCode::Ok);

    // Only beta's storage fails: alpha's part becomes durable, the call does not.
    let mut batch2 = events("alpha", "b2", 20);
    batch2.extend(events("beta", "b2", 20));
    e.plan.only_paths_containing("data/beta/");
    e.plan.fail_ops(&[Op::Sync, Op::Create, Op::Write]);
    assert_eq!(
        client.log_batch("pubA", 2, &batch2).await,
        ResultCode::TryLater
    );
    e.plan.heal();
    wait_status(&collector, "storage healthy", STATUS_TIMEOUT, |s| {
        s.storage_healthy
    })
    .await;
    assert_eq!(client.log_batch("pubA", 2, &batch2).await, ResultCode::Ok);
    collector.stop().await.unwrap();

    for topic in ["alpha", "beta"] {
        let counts = payload_counts(&*e.real, topic).await;
        assert_eq!(counts.len(), 40, "{topic}: {counts:?}");
        assert!(
            counts.values().all(|&c| c == 1),
            "{topic} exactly once: {counts:?}"
        );
    }

    // After a restart the table is rebuilt: the old batches are still duplicates.
    let collector = start(&e).start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(client.log_batch("pubA", 2, &batch2).await, ResultCode::Ok);
    assert_eq!(client.log_batch("pubA", 1, &batch).await, ResultCode::Ok);
    collector.stop().await.unwrap();
    for topic in ["alpha", "beta"] {
        let counts = payload_counts(&*e.real, topic).await;
        assert!(
            counts.values().all(|&c| c == 1),
            "{topic} after restart: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_try_later_and_stores_nothing_of_the_call() {
    let e = env();
    let mut config = Config::default();
    config.collector.spool_max_bytes = 256;
    let collector = start(&e).spool(&e.spool).config(config).start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("clicks", "ok1", 10)).await,
        ResultCode::Ok
    );
    e.plan.fail_all();
    // 500 events compress to more than the 256-byte spool bound.
    assert_eq!(
        client
            .log(&events("clicks", "too_big_for_spool", 500))
            .await,
        ResultCode::TryLater
    );
    e.plan.heal();
    wait_status(&collector, "storage healthy", STATUS_TIMEOUT, |s| {
        s.storage_healthy && s.spooled_bytes == 0
    })
    .await;
    assert_eq!(
        client.log(&events("clicks", "ok2", 10)).await,
        ResultCode::Ok
    );
    collector.stop().await.unwrap();
    let counts = payload_counts(&*e.real, "clicks").await;
    assert_eq!(counts.len(), 20, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1));
}
