//! Storage faults under a real `conduit collector` (issue 20): the HDFS DataNode
//! stopped or frozen (SIGSTOP), the NameNode stopped, or both, while a client keeps
//! calling, and a full local disk,
//! each with a spool on another disk. A client measures the longest gap between
//! acknowledgements and records every call's fate; afterwards every stored file is
//! decoded and each acknowledged event must be there exactly once, each
//! unacknowledged one at most once. The full-disk tests also count the data files
//! created during the outage (a refused call must not leave a new file behind).
//!
//! The HDFS tests run on the instance of `CONDUIT_TEST_HDFS` and stop or freeze its
//! DataNode through `CONDUIT_HDFS_SCRIPT` (keep `CONDUIT_HDFS_STATE` exported when
//! it is not the default instance). The full-disk tests mount a small tmpfs and are
//! skipped (one `SKIPPED` line) when the test does not run as root.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conduit_core::storage::LocalStorage;
use conduit_core::SharedStorage;
use conduit_testkit::collector::{payload_counts, stored_files};
use conduit_testkit::hdfs::{self, Outage};
use conduit_testkit::load::{Load, Seen};
use conduit_testkit::process::CollectorProcess;
use conduit_testkit::tmpfs::Tmpfs;
use conduit_testkit::wait::until_blocking;

const ID: &str = "c1";
const TOPIC: &str = "faults";
/// Events per call.
const PER_CALL: u64 = 20;
/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(15);
/// The longest gap between acknowledgements a test accepts (the target is 2 s).
const GAP_BOUND: Duration = Duration::from_secs(3);

/// Serializes the tests of this binary: the HDFS ones share one DataNode.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// This binary's client: `PER_CALL` events of [`TOPIC`] per call, no pause
/// between acknowledged calls.
fn start_load(rt: &tokio::runtime::Runtime, addr: &str) -> Load {
    Load::start(rt, addr, TOPIC, "f", PER_CALL, Duration::ZERO)
}

/// Waits until storage is healthy and the spool replayed; how long that took.
fn wait_recovered(collector: &CollectorProcess, since: Instant) -> Duration {
    until_blocking(
        "storage healthy and the spool replayed",
        Duration::from_secs(120),
        || (collector.health() == Some((true, 0))).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; collector log:\n{}", collector.log()));
    since.elapsed()
}

/// One outage under load, from a collector with a spool: the client's view, and the
/// time from the outage's end to storage healthy with the spool replayed.
struct Run {
    seen: Seen,
    recovered_after: Duration,
}

/// Starts the client, waits for acknowledgements, runs `outage` (which returns
/// what ends it) while the client keeps calling for [`OUTAGE`], ends it, waits for
/// recovery and a few more acknowledgements, stops the client and the collector.
fn under_load<E: FnOnce()>(
    rt: &tokio::runtime::Runtime,
    collector: &mut CollectorProcess,
    outage: impl FnOnce() -> E,
) -> Run {
    let load = start_load(rt, &collector.thrift_addr);
    load.wait_acks(20, "acknowledgements before the outage");
    let end = outage();
    let began = Instant::now();
    until_blocking(
        "the outage to last its time",
        OUTAGE + Duration::from_secs(5),
        || (began.elapsed() >= OUTAGE).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    end();
    let ended = Instant::now();
    let recovered_after = wait_recovered(collector, ended);
    load.wait_acks(20, "acknowledgements after recovery");
    let seen = load.stop(rt);
    collector.terminate().expect("the collector stops");
    Run {
        seen,
        recovered_after,
    }
}

fn report(fault: &str, run: &Run, acked: u64, extra: u64) {
    println!(
        "FAULT {fault}: calls {} acked events {acked} refused calls {} unacked stored {extra} lost 0 duplicated 0 longest ack gap {:.2} s (at {:.1} s) recovered {:.1} s after the outage",
        run.seen.calls.len(),
        run.seen.refused,
        run.seen.longest_gap.as_secs_f64(),
        run.seen.longest_gap_at.as_secs_f64(),
        run.recovered_after.as_secs_f64(),
    );
}

/// An HDFS outage (`outage` stops or freezes a daemon and returns its
/// [`Outage`]) with a spool: acknowledgements go on within [`GAP_BOUND`] and every
/// acknowledged event is in HDFS exactly once after the replay.
fn hdfs_outage(test: &str, outage: fn() -> Outage) {
    let _serial = serial();
    let Some(uri) = hdfs::fresh_root(test) else {
        return;
    };
    let rt = conduit_testkit::runtime();
    let storage: SharedStorage = rt.block_on(hdfs::open(&uri));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut collector = CollectorProcess::start(
        &uri,
        ID,
        &["--spool-dir", spool.to_str().unwrap()],
        dir.path(),
    )
    .expect("collector starts");
    let run = under_load(&rt, &mut collector, || {
        let o = outage();
        move || o.end()
    });
    let counts = rt.block_on(payload_counts(storage.as_ref(), TOPIC));
    let files = rt.block_on(stored_files(storage.as_ref(), TOPIC));
    assert!(files.iter().all(|f| f.is_closed()), "every file closed");
    let (acked, extra) = run.seen.check_exactly_once(&counts);
    report(test, &run, acked, extra);
    assert!(
        run.seen.longest_gap < GAP_BOUND,
        "longest gap between acknowledgements {:?} (bound {GAP_BOUND:?}); collector log:\n{}",
        run.seen.longest_gap,
        collector.log()
    );
}

#[test]
fn hdfs_datanode_down_keeps_acknowledging_from_the_spool() {
    hdfs_outage("faults_storage_datanode_down", Outage::datanode);
}

#[test]
fn hdfs_datanode_frozen_keeps_acknowledging_from_the_spool() {
    hdfs_outage("faults_storage_datanode_frozen", Outage::datanode_paused);
}

#[test]
fn hdfs_namenode_down_keeps_acknowledging() {
    hdfs_outage("faults_storage_namenode_down", Outage::namenode);
}

#[test]
fn hdfs_namenode_and_datanode_down_keep_acknowledging_from_the_spool() {
    hdfs_outage(
        "faults_storage_namenode_and_datanode_down",
        Outage::namenode_and_datanode,
    );
}

/// Data files of the collector under a local root (every name, closed or not).
fn data_files(root: &Path) -> Vec<String> {
    let dir = root.join("data").join(TOPIC).join(ID);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A full disk for [`OUTAGE`] under load, with or without a spool on another disk:
/// acknowledgements go on (spool) within [`GAP_BOUND`], the data files created
/// meanwhile are few, none is empty, and the events are exactly once.
fn disk_full(test: &str, with_spool: bool) {
    let _serial = serial();
    let Some(disk) = Tmpfs::mount(test, 16 << 20) else {
        return;
    };
    let rt = conduit_testkit::runtime();
    let root = disk.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut extra = vec![];
    if with_spool {
        extra = vec!["--spool-dir", spool.to_str().unwrap()];
    }
    let mut collector = CollectorProcess::start(root.to_str().unwrap(), ID, &extra, dir.path())
        .expect("collector starts");
    let before = Arc::new(Mutex::new(Vec::new()));
    let run = under_load(&rt, &mut collector, || {
        *before.lock().unwrap() = data_files(&root);
        disk.fill();
        || disk.free()
    });
    let before = before.lock().unwrap().clone();
    let after = data_files(&root);
    let created = after.iter().filter(|n| !before.contains(n)).count();
    let storage: SharedStorage = Arc::new(LocalStorage::open(root.to_str().unwrap()).unwrap());
    let files = rt.block_on(stored_files(storage.as_ref(), TOPIC));
    let empty: Vec<&str> = files
        .iter()
        .filter(|f| f.payloads().is_empty())
        .map(|f| f.name.as_str())
        .collect();
    let counts = rt.block_on(payload_counts(storage.as_ref(), TOPIC));
    let (acked, unacked) = run.seen.check_exactly_once(&counts);
    report(test, &run, acked, unacked);
    println!(
        "FAULT {test}: data files created during the outage and recovery: {created} ({} refused calls); empty files: {}",
        run.seen.refused,
        empty.len()
    );
    let log = collector.log();
    assert!(empty.is_empty(), "empty data files {empty:?}; log:\n{log}");
    assert!(
        created <= 6,
        "{created} data files created during a {OUTAGE:?} outage: {after:?}; log:\n{log}"
    );
    assert!(
        log.contains("abandoning the file"),
        "the full disk refused a write; log:\n{log}"
    );
    if with_spool {
        assert!(
            run.seen.longest_gap < GAP_BOUND,
            "longest gap between acknowledgements {:?} (bound {GAP_BOUND:?}); log:\n{log}",
            run.seen.longest_gap
        );
    } else {
        assert!(
            run.seen.refused > 0,
            "without a spool a full disk refuses calls"
        );
    }
}

#[test]
fn full_disk_with_a_spool_keeps_acknowledging_without_litter() {
    disk_full("faults_storage_full_disk_spool", true);
}

#[test]
fn full_disk_without_a_spool_refuses_without_litter() {
    disk_full("faults_storage_full_disk_no_spool", false);
}

/// A collector killed -9 while the DataNode is frozen: rounds are acknowledged
/// from the spool, their HDFS file abandoned at its acknowledged length and not
/// yet repaired (the repair waits for storage). The DataNode is resumed (bytes the
/// dead writer had sent may still land in the file) and the collector restarted:
/// its recovery cuts the abandoned file back to the length saved in the spool's
/// snapshot before those rounds were answered, and replays the spool. Every
/// acknowledged event exactly once.
#[test]
fn hdfs_collector_killed_with_an_abandoned_file_keeps_each_event_once() {
    let _serial = serial();
    let test = "faults_storage_killed_with_an_abandoned_file";
    let Some(uri) = hdfs::fresh_root(test) else {
        return;
    };
    let rt = conduit_testkit::runtime();
    let storage: SharedStorage = rt.block_on(hdfs::open(&uri));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let extra = ["--spool-dir", spool.to_str().unwrap()];
    let mut first =
        CollectorProcess::start(&uri, ID, &extra, dir.path()).expect("collector starts");
    let (thrift, http) = (first.thrift_addr.clone(), first.http_addr.clone());
    let load = start_load(&rt, &thrift);
    load.wait_acks(20, "acknowledgements before the outage");
    let frozen = Outage::datanode_paused();
    until_blocking(
        "storage unavailable and the spool taking rounds",
        Duration::from_secs(60),
        || {
            first
                .health()
                .is_some_and(|(healthy, spooled)| !healthy && spooled > 0)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}; collector log:\n{}", first.log()));
    load.wait_acks(10, "acknowledgements from the spool");
    first.kill9();
    let first_log = first.log();
    frozen.end();
    assert!(
        first_log.contains("saved the acknowledged length of abandoned files"),
        "the abandoned file's length was saved before its round was answered; log:\n{first_log}"
    );
    let mut second = CollectorProcess::start_on(&uri, ID, &thrift, &http, &extra, dir.path())
        .expect("collector restarts");
    let recovered_after = wait_recovered(&second, Instant::now());
    load.wait_acks(20, "acknowledgements after the restart");
    let seen = load.stop(&rt);
    second.terminate().expect("the collector stops");
    let log = second.log();
    let counts = rt.block_on(payload_counts(storage.as_ref(), TOPIC));
    let files = rt.block_on(stored_files(storage.as_ref(), TOPIC));
    assert!(files.iter().all(|f| f.is_closed()), "every file closed");
    let (acked, extra) = seen.check_exactly_once(&counts);
    let cut_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cut a file abandoned before the restart"))
        .collect();
    let cut = cut_lines.len();
    for line in &cut_lines {
        println!("recovery: {line}");
    }
    println!(
        "FAULT {test}: calls {} acked events {acked} unacked stored {extra} lost 0 duplicated 0; \
         abandoned files cut at restart {cut}; recovered {:.1} s after the restart",
        seen.calls.len(),
        recovered_after.as_secs_f64()
    );
    assert!(
        cut >= 1,
        "recovery cut the abandoned file back (its entry was in the spool's snapshot); log:\n{log}"
    );
}
