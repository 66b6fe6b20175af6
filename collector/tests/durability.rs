//! The collector in-process, on local disk through the fault-injection wrapper, with
//! a test clock: minute rolls, storage outages with and without a spool, and
//! idempotent batches. Every test counts each payload in the files.

use std::sync::Arc;
use std::time::Duration;

use conduit_core::scribe::ResultCode;
use conduit_core::storage::{FaultPlan, FaultStorage, Op};
use conduit_core::{Config, SharedStorage, TestClock};
use conduit_merger::Job;
use conduit_testkit::clock::clock_at;
use conduit_testkit::collector::{self, payload_counts, stored_files, wait_status, Start};
use conduit_testkit::process::{http_get, metric};
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

/// The calls that fail while storage is away (syncs fail after the bytes were
/// written).
const OUTAGE: &[Op] = &[
    Op::Sync,
    Op::Create,
    Op::Write,
    Op::Close,
    Op::List,
    Op::Rename,
    Op::Stat,
    Op::Read,
];

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
    e.plan.fail_ops(OUTAGE);
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

/// The replay copies a spool file into `data/` and then deletes it from the
/// spool. If the worker moves the copy into the local view before that delete
/// (here the copy's close is done but reported failed, so the replay stops and
/// is retried; a collector killed between the two leaves the same state), the
/// retry must find the copy in the local view and not make a second one: that
/// would store every event of the file twice (and in a minute not sealed yet,
/// the worker could not move it: its name exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_file_the_worker_moved_before_the_spool_let_go_is_not_copied_again() {
    let e = env();
    let collector = start(&e).spool(&e.spool).start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    e.plan.fail_ops(OUTAGE);
    assert_eq!(
        client.log(&events("clicks", "during", 100)).await,
        ResultCode::Ok
    );
    assert!(collector.status().spooled_bytes > 0);
    let spooled: Vec<String> = walk(&e.spool)
        .into_iter()
        .filter(|p| p.ends_with(".zst"))
        .collect();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let name = spooled[0].rsplit('/').next().unwrap().to_owned();

    // Storage is back, but the replay's copy of that file is closed and then
    // reported failed, and every look at it in `data/` takes 2 s: the first
    // replay stops after its copy landed, and the retry is still looking when
    // the worker moves the copy.
    e.plan.heal();
    let injected = e.plan.injected();
    e.plan
        .only_paths_containing(&format!("data/clicks/c1/{name}"));
    e.plan.delay_ops(&[Op::Stat], Duration::from_secs(2));
    e.plan.fail_ops_after_doing(&[Op::Close]);
    conduit_testkit::wait::until(
        "the replay's copy closed and reported failed",
        STATUS_TIMEOUT,
        || async { e.plan.injected() > injected },
    )
    .await;
    let mut job = conduit_testkit::worker::local_job(e.real.clone(), e.clock.shared());
    job.pass().await.unwrap();
    let moved = format!("streams_local/clicks/2026/11/22/10/05/dc1-c1-{name}");
    assert!(
        e.real.stat(&moved).await.is_ok(),
        "the worker moved the replay's copy to {moved}"
    );
    e.plan.heal();
    wait_status(&collector, "spool replayed", STATUS_TIMEOUT, |s| {
        s.storage_healthy && s.spooled_bytes == 0
    })
    .await;
    let again = stored_files(&*e.real, "clicks").await;
    assert!(
        again.is_empty(),
        "the replay made no second copy: {:?}",
        again.iter().map(|f| &f.path).collect::<Vec<_>>()
    );

    // 10:05 seals with every event once.
    e.clock.advance(chrono::Duration::seconds(60)); // 10:06:30
    wait_status(&collector, "watermark 10:05", STATUS_TIMEOUT, |s| {
        s.watermark == Some(minute("2026-11-22T10:05"))
    })
    .await;
    conduit_testkit::worker::wait_watermark(&e.real, "dc1", "c1", minute("2026-11-22T10:05")).await;
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 1, "{report:?}");
    let counts = conduit_testkit::worker::sealed_counts(
        &*e.real,
        conduit_core::View::Local,
        "clicks",
        &[minute("2026-11-22T10:05")],
    )
    .await;
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|&c| c == 1), "each event sealed once");
    collector.stop().await.unwrap();
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

/// A collector on a runtime of its own, so that a test can crash it: dropping
/// the runtime stops every task at its next await, as a kill -9 stops the
/// process (what the local disk holds stays; nothing runs afterwards).
struct Crashable {
    rt: tokio::runtime::Runtime,
    collector: conduit_collector::Collector,
}

impl Crashable {
    fn start(start: Start) -> Crashable {
        let rt = conduit_testkit::runtime();
        let collector = rt.block_on(start.start());
        Crashable { rt, collector }
    }

    fn crash(self) {
        let Crashable { rt, collector } = self;
        rt.shutdown_background();
        drop(collector);
    }
}

/// Frames of a round whose sync failed or missed `storage_deadline_ms` can be in
/// storage after all (the write landed). A crash before the background repair
/// cut them off must not keep them: they were acknowledged from the spool (and
/// are replayed from it) or refused (and the client sends them again). Plain
/// Scribe calls, so the seal has no batch ids to drop copies by: each
/// acknowledged event must be stored exactly once.
fn abandoned_then_crashed(slow_sync: bool) {
    let e = env();
    let client_rt = conduit_testkit::runtime();
    let deadline_ms = 200;
    let first = Crashable::start(
        start(&e)
            .spool(&e.spool)
            .settings(move |c| c.storage_deadline_ms = deadline_ms),
    );
    let mut client = client_rt.block_on(Client::connect(first.collector.thrift_addr()));
    assert_eq!(
        client_rt.block_on(client.log(&events("clicks", "before", 100))),
        ResultCode::Ok
    );
    if slow_sync {
        // The sync is done a second after the deadline; the probe cannot
        // replace its file, so storage stays unavailable and nothing repairs the
        // abandoned file before the crash.
        e.plan.delay_ops(&[Op::Sync], Duration::from_secs(1));
        e.plan.fail_ops(&[Op::Delete]);
    } else {
        // The sync goes through and then fails (its answer lost); every later
        // sync too, the probe's included.
        e.plan.fail_ops_after_doing(&[Op::Sync]);
    }
    assert_eq!(
        client_rt.block_on(client.log(&events("clicks", "during", 100))),
        ResultCode::Ok,
        "acknowledged from the spool"
    );
    assert!(!first.collector.status().storage_healthy);
    // The round saved the abandoned file's length before answering: once.
    let (_, metrics) = http_get(&first.collector.http_addr().to_string(), "/metrics").unwrap();
    assert_eq!(
        metric(&metrics, "conduit_collector_abandoned_saved_seconds_count"),
        Some(1.0),
        "{metrics}"
    );
    let saved_in = metric(&metrics, "conduit_collector_abandoned_saved_seconds_sum").unwrap();
    println!(
        "the abandoned file's length was saved in the spool in {:.2} ms",
        saved_in * 1e3
    );
    client_rt.block_on(conduit_testkit::wait::until(
        "the abandoned write landed in storage (the case under test)",
        STATUS_TIMEOUT,
        || async {
            let landed = stored_files(&*e.real, "clicks").await;
            landed.len() == 1 && landed[0].payloads().len() == 200
        },
    ));
    first.crash();

    e.plan.heal();
    let second = Crashable::start(start(&e).spool(&e.spool));
    client_rt.block_on(wait_status(
        &second.collector,
        "spool replayed",
        STATUS_TIMEOUT,
        |s| s.storage_healthy && s.spooled_bytes == 0,
    ));
    let Crashable { rt, collector } = second;
    rt.block_on(collector.stop()).unwrap();

    let counts = client_rt.block_on(payload_counts(&*e.real, "clicks"));
    assert_eq!(counts.len(), 200, "every acknowledged event is stored");
    let twice: Vec<_> = counts
        .iter()
        .filter(|(_, &c)| c != 1)
        .map(|(p, c)| format!("{} x{c}", String::from_utf8_lossy(p)))
        .collect();
    assert!(
        twice.is_empty(),
        "{} events stored more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    assert!(client_rt
        .block_on(stored_files(&*e.real, "clicks"))
        .iter()
        .all(|f| f.is_closed()));
}

#[test]
fn a_failed_sync_whose_write_landed_is_cut_at_restart_after_a_crash() {
    abandoned_then_crashed(false);
}

#[test]
fn a_sync_past_the_deadline_whose_write_landed_is_cut_at_restart_after_a_crash() {
    abandoned_then_crashed(true);
}

/// Without a spool the refused round's length cannot be saved while storage
/// fails; it is saved as soon as storage takes writes again, before the repair
/// starts. A crash while that repair is held up (HDFS lease recovery can take a
/// minute) cuts the file at restart, so the client's retry is stored once.
#[test]
fn without_a_spool_the_abandoned_length_is_saved_before_the_repair() {
    let e = env();
    let client_rt = conduit_testkit::runtime();
    let first = Crashable::start(start(&e));
    let mut client = client_rt.block_on(Client::connect(first.collector.thrift_addr()));
    assert_eq!(
        client_rt.block_on(client.log(&events("clicks", "before", 100))),
        ResultCode::Ok
    );
    e.plan.fail_ops_after_doing(&[Op::Sync]);
    let refused = events("clicks", "refused", 100);
    assert_eq!(
        client_rt.block_on(client.log(&refused)),
        ResultCode::TryLater
    );
    // Storage comes back; the repair of the abandoned file hangs in lease
    // recovery.
    e.plan.heal();
    e.plan
        .delay_ops(&[Op::RecoverLease], Duration::from_secs(3600));
    client_rt.block_on(wait_status(
        &first.collector,
        "storage healthy",
        STATUS_TIMEOUT,
        |s| s.storage_healthy,
    ));
    let landed = client_rt.block_on(stored_files(&*e.real, "clicks"));
    assert_eq!(landed[0].payloads().len(), 200, "the refused write landed");
    first.crash();

    e.plan.heal();
    let second = Crashable::start(start(&e));
    let mut client = client_rt.block_on(Client::connect(second.collector.thrift_addr()));
    assert_eq!(
        client_rt.block_on(client.log(&refused)),
        ResultCode::Ok,
        "the retry"
    );
    let Crashable { rt, collector } = second;
    rt.block_on(collector.stop()).unwrap();
    let counts = client_rt.block_on(payload_counts(&*e.real, "clicks"));
    assert_eq!(counts.len(), 200);
    assert_eq!(
        counts.values().filter(|&&c| c != 1).count(),
        0,
        "events stored more than once"
    );
}
