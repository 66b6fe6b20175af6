//! Real `conduit collector` and `conduit worker` processes killed with SIGKILL
//! at the instant of a chosen storage call (the `CONDUIT_CRASH_AT` test hook,
//! `conduit_core::storage::crash`): the collector mid-frame, mid-marks and just
//! before it closes a full file (its trailer written, the file not closed: on
//! HDFS its lease still held); the collector again and again inside its own
//! startup recovery (mid-copy of a cut, right after the copy's rename, mid-append
//! of the trailer, before its close, mid-write of the dedup snapshot); the
//! collector inside the replay of its spool after a full disk (its spool
//! file's close, mid-copy, the copy's close, after the spool's delete); the
//! worker mid-`_SUCCESS`, right after renaming `_SUCCESS` into place, right
//! after moving a file into a minute directory. Each is restarted without the
//! hook while a real Scribe client goes on, and the test then counts: every
//! acknowledged event stored exactly once (an unacknowledged one at most once),
//! every planted record sealed exactly once, every file closed, `conduit
//! verify` clean. The same bodies run on local disk and on the real HDFS
//! (`CONDUIT_TEST_HDFS`), except the spool replay, which needs a disk to fill
//! (a tmpfs: root, as CI runs).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use conduit_core::{Minute, SharedStorage, Topic, View};
use conduit_testkit::collector::{payload_counts, stored_files};
use conduit_testkit::load::{Load, Seen};
use conduit_testkit::process::{
    assert_verify_clean, free_addr, terminate, wait_killed, CollectorProcess, WorkerProcess,
};
use conduit_testkit::worker::{self, check_local_view, wait_watermark};
use conduit_testkit::{hdfs, local_storage, runtime, wait};

/// How long a crash-armed process may take to reach its crash point.
const CRASH_TIMEOUT: Duration = Duration::from_secs(60);
/// Sealing a past minute needs a few worker passes.
const SEAL_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster root for a test: a local directory or a fresh HDFS root.
struct Root {
    /// The runtime the storage's connections live on.
    rt: tokio::runtime::Runtime,
    uri: String,
    storage: SharedStorage,
    logs: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn local_root() -> Root {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root");
    Root {
        rt: runtime(),
        uri: path.to_str().unwrap().to_owned(),
        storage: local_storage(&path),
        logs: dir.path().join("logs"),
        _dir: dir,
    }
}

fn hdfs_root(test: &str) -> Option<Root> {
    let uri = hdfs::fresh_root(test)?;
    let rt = runtime();
    let storage = rt.block_on(hdfs::open(&uri));
    let dir = tempfile::tempdir().unwrap();
    Some(Root {
        rt,
        uri,
        storage,
        logs: dir.path().join("logs"),
        _dir: dir,
    })
}

/// Collector crash points, in order, each in a fresh process on the same root
/// (the count restarts with each process). Files close at 4 KiB, so the third
/// point is reached within seconds.
const COLLECTOR_POINTS: &[(&str, &str)] = &[
    (
        "mid-frame (5th data-file write: a data frame)",
        "write:5:data/crash/",
    ),
    (
        "mid-marks (6th data-file write: a marks frame)",
        "write:6:data/crash/",
    ),
    (
        "before the close of a full file (trailer written, not closed)",
        "close:1:data/crash/",
    ),
    (
        "mid-frame again, right after the restart's recovery",
        "write:1:data/crash/",
    ),
];

fn collector_killed_mid_write(root: &Root) {
    let rt = &root.rt;
    let (thrift, http) = (free_addr(), free_addr());
    let extra = ["--max-file-bytes", "4096"];
    let mut load: Option<Load> = None;
    for (what, point) in COLLECTOR_POINTS {
        let started = std::time::Instant::now();
        let mut armed = CollectorProcess::start_crashing(
            &root.uri, "c1", &thrift, &http, &extra, &root.logs, point,
        )
        .unwrap();
        let load = load.get_or_insert_with(|| {
            Load::start(rt, &thrift, "crash", "ev", 20, Duration::from_millis(5))
        });
        wait_killed(
            &mut armed.child,
            &format!("collector {what}"),
            CRASH_TIMEOUT,
            &armed.log_path,
        );
        assert!(
            armed.log().contains("is set: this process kills itself"),
            "the armed collector says so: {}",
            armed.log()
        );
        // Restarted without the hook on the same ports; the client goes on.
        let acked = load.acked_calls();
        let mut restarted =
            CollectorProcess::start_on(&root.uri, "c1", &thrift, &http, &extra, &root.logs)
                .unwrap();
        wait::until_blocking(
            "10 calls acknowledged after the restart",
            CRASH_TIMEOUT,
            || (load.acked_calls() >= acked + 10).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", restarted.log()));
        assert!(
            !restarted.log().contains("quarantine"),
            "nothing acknowledged was missing at recovery ({what}): {}",
            restarted.log()
        );
        eprintln!("{point}: crash and restart in {:?}", started.elapsed());
        let status = restarted.terminate().unwrap();
        assert!(status.success(), "graceful stop after {what}: {status:?}");
    }
    let seen = load.take().unwrap().stop(rt);
    check_topic(
        root,
        "crash",
        &seen,
        &format!("{} crash points", COLLECTOR_POINTS.len()),
    );
}

/// Checks what crashed collectors wrote to `topic`, once the last one stopped:
/// every acknowledged event of `seen` stored exactly once (an unacknowledged
/// one at most once), every file closed, no `_tmp.` copy left, `conduit
/// verify` clean. `what` says what the run did, for the summary line.
fn check_topic(root: &Root, topic: &str, seen: &Seen, what: &str) {
    let rt = &root.rt;
    let counts = rt.block_on(payload_counts(&*root.storage, topic));
    let (acked, extra_stored) = seen.check_exactly_once(&counts);
    let files = rt.block_on(stored_files(&*root.storage, topic));
    let paths: Vec<_> = files.iter().map(|f| &f.path).collect();
    assert!(
        files.iter().all(|f| f.is_closed()),
        "every collector file closed: {paths:?}"
    );
    assert!(
        paths.iter().all(|p| !p.contains("_tmp.")),
        "no recovery copy left behind: {paths:?}"
    );
    eprintln!(
        "collector on {}: {what}, {} calls, {acked} events acknowledged, all stored once; {} unacknowledged calls, {extra_stored} of their events stored (at most once); {} files, all closed",
        root.uri,
        seen.calls.len(),
        seen.refused,
        files.len()
    );
    assert!(acked > 0);
    assert_verify_clean(&["--root", &root.uri, "--topic", topic], topic);
}

#[test]
fn a_collector_killed_mid_write_loses_nothing_acknowledged() {
    collector_killed_mid_write(&local_root());
}

#[test]
fn a_collector_killed_mid_write_on_hdfs_loses_nothing_acknowledged() {
    let Some(root) = hdfs_root("a_collector_killed_mid_write_on_hdfs") else {
        return;
    };
    collector_killed_mid_write(&root);
}

/// Crash points inside the collector's startup recovery of what the run before
/// it left, in order, each in a fresh process on the same root. Before them a
/// collector is killed mid-frame, so its file has a torn frame to cut: the cut
/// copies the kept bytes to a hidden `_tmp.` sibling, renames it over the
/// original, then appends the index and trailer (`format::close_recovered`); at
/// the end recovery saves the dedup snapshot (a `_tmp.` copy renamed into place).
const RECOVERY_POINTS: &[(&str, &str)] = &[
    (
        "mid-copy of the kept bytes (the cut's hidden copy torn)",
        "write:1:_tmp.",
    ),
    (
        "right after the copy is renamed over the original, before the trailer",
        "rename:1:_tmp.",
    ),
    (
        "mid-append of the index and trailer (nothing to cut this time)",
        "write:1:data/recovery/",
    ),
    (
        "after cutting the torn trailer, before the new one is closed",
        "close:2:data/recovery/",
    ),
    (
        "mid-write of the dedup snapshot (its hidden copy torn)",
        "write:1:.dedup",
    ),
];

fn collector_killed_during_recovery(root: &Root) {
    let rt = &root.rt;
    let (thrift, http) = (free_addr(), free_addr());
    let extra = ["--max-file-bytes", "4096"];
    // A normal run killed mid-frame: the next start has a torn file to repair.
    let mut first = CollectorProcess::start_crashing(
        &root.uri,
        "c1",
        &thrift,
        &http,
        &extra,
        &root.logs,
        "write:5:data/recovery/",
    )
    .unwrap();
    let load = Load::start(rt, &thrift, "recovery", "ev", 20, Duration::from_millis(5));
    wait_killed(
        &mut first.child,
        "collector mid-frame",
        CRASH_TIMEOUT,
        &first.log_path,
    );
    for (what, point) in RECOVERY_POINTS {
        let mut armed = CollectorProcess::start_dying_in_recovery(
            &root.uri, "c1", &thrift, &http, &extra, &root.logs, point,
        )
        .unwrap_or_else(|e| panic!("collector killed {what} ({point}): {e}"));
        wait_killed(
            &mut armed.child,
            &format!("collector in recovery, {what}"),
            CRASH_TIMEOUT,
            &armed.log_path,
        );
        let at = died_at(&armed.log(), point, what);
        eprintln!("{point}: killed in recovery at {at}");
    }
    // Started without the hook: it recovers what five interrupted recoveries
    // left, and the client goes on.
    let acked = load.acked_calls();
    let mut restarted =
        CollectorProcess::start_on(&root.uri, "c1", &thrift, &http, &extra, &root.logs).unwrap();
    wait::until_blocking(
        "10 calls acknowledged after the last restart",
        CRASH_TIMEOUT,
        || (load.acked_calls() >= acked + 10).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", restarted.log()));
    assert!(
        !restarted.log().contains("quarantine"),
        "nothing acknowledged was missing at the last recovery: {}",
        restarted.log()
    );
    let status = restarted.terminate().unwrap();
    assert!(status.success(), "graceful stop: {status:?}");
    let seen = load.stop(rt);
    check_topic(
        root,
        "recovery",
        &seen,
        &format!("killed in recovery {} times", RECOVERY_POINTS.len()),
    );
}

/// Where an armed collector says it died (`CONDUIT_CRASH_AT: killing this
/// process (SIGKILL) at <op> of <path>`), checked against its crash point
/// `<op>:<n>:<path substring>`; nothing was quarantined on the way.
fn died_at(log: &str, point: &str, what: &str) -> String {
    let (op, rest) = point.split_once(':').unwrap();
    let (_, needle) = rest.split_once(':').unwrap();
    let at = log
        .lines()
        .find_map(|l| l.split_once("killing this process (SIGKILL) at "))
        .map(|(_, at)| at.to_owned())
        .unwrap_or_else(|| panic!("the armed collector names where it died: {log}"));
    assert!(
        at.starts_with(&format!("{op} of ")) && at.contains(needle),
        "died {what} at {at}, not at {point}"
    );
    assert!(
        !log.contains("quarantine"),
        "nothing was quarantined ({what}): {log}"
    );
    at
}

#[test]
fn a_collector_killed_during_its_recovery_loses_nothing_acknowledged() {
    collector_killed_during_recovery(&local_root());
}

#[test]
fn a_collector_killed_during_its_recovery_on_hdfs_loses_nothing_acknowledged() {
    let Some(root) = hdfs_root("a_collector_killed_during_its_recovery_on_hdfs") else {
        return;
    };
    collector_killed_during_recovery(&root);
}

/// How often each payload of `topic` is stored under a local root, in `data/`
/// and in the local view (sealed or not) together: a file is in one place or
/// the other, whatever the worker did meanwhile. Hidden files (`_tmp.`) and
/// quarantine are not data.
fn local_payload_counts(root: &std::path::Path, topic: &str) -> HashMap<Bytes, usize> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(['_', '.']) || name == "quarantine" {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if name.ends_with(".zst") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root.join("data").join(topic), &mut files);
    walk(&root.join("streams_local").join(topic), &mut files);
    let mut counts = HashMap::new();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let decoded = conduit_core::format::decode_file(
            path.to_str().unwrap(),
            &bytes,
            conduit_core::Encoding::Lines,
        )
        .unwrap();
        assert!(decoded.scan.is_closed(), "{path:?} is closed");
        for p in decoded.payloads {
            *counts.entry(p).or_insert(0) += 1;
        }
    }
    counts
}

/// Files of collector `id` for `topic` (names) under `data/` of a local root
/// or spool directory, and which of them are closed.
fn files_in(base: &std::path::Path, topic: &str, id: &str) -> Vec<(String, bool)> {
    let dir = base.join("data").join(topic).join(id);
    let mut out: Vec<(String, bool)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let closed = conduit_core::format::decode_file(
                    "spool",
                    &bytes,
                    conduit_core::Encoding::Lines,
                )
                .is_ok_and(|d| d.scan.is_closed());
                (
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    closed,
                )
            })
            .filter(|(name, _)| !name.starts_with(['_', '.']))
            .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A real collector acknowledging from its spool while the disk is full, killed
/// -9; the disk freed; then restarted with crash points inside the replay of
/// its spool, each in a fresh process, a real worker sealing throughout:
///
/// 0. mid-write of the repair of the storage file the full disk made it
///    abandon (startup recovery cuts it back to its acknowledged length);
/// 1. mid-append of the spool file's own index and trailer (startup recovery
///    closes the spool file the kill left open, before it can be replayed);
/// 2. mid-copy of the spool file into `data/` (half its bytes synced);
/// 3. at the copy's close (created, its bytes still in the writer's buffer);
/// 4. right after the spool file's delete, the copy complete (the worker then
///    moves the copy into the local view).
///
/// After 2 and 3 the next start finds an unfinished copy in `data/` under the
/// spool file's name: it must delete it, not close it as a file of its own,
/// which the worker would seal before the spool file is copied again.
///
/// Then a start without the hook replays what is left. Every acknowledged event
/// is stored exactly once across `data/` and the local view.
#[test]
fn a_collector_killed_during_its_spool_replay_stores_each_event_once() {
    let test = "a_collector_killed_during_its_spool_replay";
    let Some(disk) = conduit_testkit::tmpfs::Tmpfs::mount(test, 16 << 20) else {
        return;
    };
    let (topic, id) = ("replay", "c1");
    let dir = tempfile::tempdir().unwrap();
    let path = disk.path().join("root");
    let root = Root {
        rt: runtime(),
        uri: path.to_str().unwrap().to_owned(),
        storage: local_storage(&path),
        logs: dir.path().join("logs"),
        _dir: tempfile::tempdir().unwrap(),
    };
    let rt = &root.rt;
    let spool = dir.path().join("spool");
    let (thrift, http) = (free_addr(), free_addr());
    let extra = ["--spool-dir", spool.to_str().unwrap()];

    // Acknowledged from the spool while the disk is full, then killed.
    let mut first =
        CollectorProcess::start_on(&root.uri, id, &thrift, &http, &extra, &root.logs).unwrap();
    let load = Load::start(rt, &thrift, topic, "ev", 20, Duration::from_millis(5));
    let wait_acked = |n: u64, what: &str, c: &CollectorProcess| {
        let from = load.acked_calls();
        wait::until_blocking(what, CRASH_TIMEOUT, || {
            (load.acked_calls() >= from + n).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", c.log()));
    };
    wait_acked(10, "10 calls acknowledged to storage", &first);
    disk.fill();
    wait::until_blocking("the spool taking rounds", CRASH_TIMEOUT, || {
        first
            .health()
            .is_some_and(|(healthy, spooled)| !healthy && spooled > 0)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", first.log()));
    wait_acked(50, "50 calls acknowledged from the spool", &first);
    first.kill9();
    let seen = load.stop(rt);
    disk.free();
    let spooled = files_in(&spool, topic, id);
    let Some((target, _)) = spooled.iter().find(|(_, closed)| !closed).cloned() else {
        panic!("the kill left a spool file open: {spooled:?}");
    };
    // `c1/<name>` matches the spool file and its copy in `data/`, not the
    // hidden `_tmp.` siblings of a recovery cut.
    let needle = format!("{id}/{target}");
    // The storage file the full disk made the collector abandon.
    let stored = files_in(&path, topic, id);
    let Some((abandoned, _)) = stored.iter().rev().find(|(_, closed)| !closed).cloned() else {
        panic!("the full disk left a data file abandoned, open: {stored:?}");
    };

    let args = worker_args(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker = WorkerProcess::start(&args, &root.logs).unwrap();
    // Each start dies at its point, inside startup recovery (before it is
    // ready) or after; each (from the third on) first deletes the unfinished
    // copy the run before left, never closing it as a file of its own.
    let steps = [
        // In startup recovery, before the spool: the abandoned storage file cut
        // back to its acknowledged length (the ledger's entry, saved in the
        // spool's snapshot); its first write is the cut's hidden copy or, with
        // nothing to cut, the trailer's append: either is torn.
        (
            "repairing its abandoned file",
            format!("write:1:{abandoned}"),
            true,
            false,
        ),
        // In startup recovery: the open spool file's index and trailer torn.
        (
            "closing its spool file",
            format!("write:1:{needle}"),
            true,
            false,
        ),
        // In the background replay: the restart's recovery cut the torn
        // trailer through a hidden copy and appended a new one (write 1), so
        // the replay's copy is write 2.
        (
            "mid-copy into data/ (half its bytes synced)",
            format!("write:2:{needle}"),
            false,
            false,
        ),
        (
            "at the copy's close (its bytes not yet handed to the kernel)",
            format!("close:1:{needle}"),
            false,
            true,
        ),
        // Recovery's delete of the unfinished copy is delete 1, the spool's
        // own delete 2 (a delete crash point fires once the delete is done).
        (
            "right after the spool file's delete",
            format!("delete:2:{needle}"),
            false,
            true,
        ),
    ];
    for (what, point, in_recovery, deletes_unfinished_copy) in &steps {
        let start = if *in_recovery {
            CollectorProcess::start_dying_in_recovery
        } else {
            CollectorProcess::start_crashing
        };
        let mut armed = start(&root.uri, id, &thrift, &http, &extra, &root.logs, point)
            .unwrap_or_else(|e| panic!("collector killed {what} ({point}): {e}"));
        wait_killed(
            &mut armed.child,
            &format!("collector {what}"),
            CRASH_TIMEOUT,
            &armed.log_path,
        );
        let log = armed.log();
        let at = died_at(&log, point, what);
        assert_eq!(
            log.contains("deleted an unfinished replay copy of a spool file"),
            *deletes_unfinished_copy,
            "{what}: recovery deletes the copy the run before left unfinished, and only that: {log}"
        );
        eprintln!("{point}: killed {what} at {at}");
    }
    // The replay was done when the last one died: the worker moves the copy.
    assert!(files_in(&spool, topic, id)
        .iter()
        .all(|(n, _)| *n != target));
    let copy = path.join("data").join(topic).join(id).join(&target);
    wait::until_blocking("the worker to move the copy", SEAL_TIMEOUT, || {
        (!copy.exists()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", worker.log()));

    // Started without the hook: the spool is replayed.
    let mut last =
        CollectorProcess::start_on(&root.uri, id, &thrift, &http, &extra, &root.logs).unwrap();
    wait::until_blocking(
        "storage healthy and the spool replayed",
        CRASH_TIMEOUT,
        || (last.health() == Some((true, 0))).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", last.log()));
    let status = last.terminate().unwrap();
    assert!(status.success(), "graceful stop: {status:?}");
    assert!(files_in(&spool, topic, id).is_empty(), "spool emptied");
    let counts = local_payload_counts(&path, topic);
    let (acked, extra_stored) = seen.check_exactly_once(&counts);
    let view = rt.block_on(check_local_view(
        &*root.storage,
        &Topic::new(topic).unwrap(),
    ));
    assert!(view.quarantined.is_empty(), "{view:?}");
    eprintln!(
        "recovery and spool replay killed 5 times: {acked} events acknowledged, all stored once; {} unacknowledged calls, {extra_stored} of their events stored; {} files placed in the local view, {} in data/",
        seen.refused,
        view.placed.len(),
        view.waiting.len()
    );
    assert!(acked > 0);
}

/// Worker crash points; each gets a topic of its own with a backlog of three
/// closed minutes to seal, so its step is reached at once.
const WORKER_POINTS: &[(&str, &str)] = &[
    ("mid-_SUCCESS (its staged copy torn)", "write:1:_SUCCESS"),
    (
        "right after _SUCCESS is renamed into place",
        "rename:1:_SUCCESS",
    ),
    (
        "right after the second file moved into a minute directory",
        "rename:2:streams_local/",
    ),
    ("mid-write of the seal checkpoint", "write:1:checkpoints/"),
];

/// `conduit worker` arguments for `root`: passes every 200 ms, a 3 s lease (the
/// restarted worker takes over the killed one's lease once it lapses).
fn worker_args(root: &Root) -> Vec<String> {
    [
        "--root",
        &root.uri,
        "--cluster",
        "dc1",
        "--interval-ms",
        "200",
        "--lease-secs",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Plants two closed files of `collector` for each of `minutes` in topic
/// `topic` ([`worker::plant`]); the payloads.
fn plant(root: &Root, topic: &str, collector: &str, minutes: &[Minute]) -> Vec<Bytes> {
    root.rt
        .block_on(worker::plant(&*root.storage, topic, collector, minutes, 2))
}

fn worker_killed_mid_step(root: &Root) {
    let rt = &root.rt;
    // A live collector c1 whose watermark (the last minute) covers the planted
    // minutes, as after a real run.
    let collector = CollectorProcess::start(&root.uri, "c1", &[], &root.logs).unwrap();
    let args = worker_args(root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut report = Vec::new();
    for (k, (what, point)) in WORKER_POINTS.iter().enumerate() {
        let topic = format!("w{k}");
        let now = Minute::from_datetime(chrono::Utc::now()).unwrap();
        let planted_minutes: Vec<Minute> = (2..=4)
            .rev()
            .map(|d| now.add_minutes(-d).unwrap())
            .collect();
        let planted = plant(root, &topic, "c1", &planted_minutes);
        let last = *planted_minutes.last().unwrap();
        rt.block_on(wait_watermark(&root.storage, "dc1", "c1", last));
        let started = std::time::Instant::now();
        let mut armed =
            WorkerProcess::spawn_crashing(&args, &free_addr(), &root.logs, point).unwrap();
        wait_killed(
            &mut armed.child,
            &format!("worker {what}"),
            CRASH_TIMEOUT,
            &armed.log_path,
        );
        let mut worker = WorkerProcess::start(&args, &root.logs).unwrap();
        let t = Topic::new(&topic).unwrap();
        wait_sealed(
            root,
            View::Local,
            &topic,
            last,
            &format!("{topic}: every planted minute sealed after {what}"),
        );
        eprintln!("{point}: crash and seal in {:?}", started.elapsed());
        // A graceful stop releases the lease: the next armed worker takes over
        // at once.
        terminate(&mut worker.child, "conduit worker").unwrap();
        let view = rt.block_on(check_local_view(&*root.storage, &t));
        assert!(view.quarantined.is_empty(), "{topic}: {view:?}");
        assert!(view.waiting.is_empty(), "{topic}: all moved: {view:?}");
        let sealed: Vec<Minute> = view.sealed.keys().copied().collect();
        let counts = sealed_counts(root, View::Local, &topic, &sealed);
        for p in &planted {
            assert_eq!(counts.get(p), Some(&1), "{topic} ({what}): {p:?}");
        }
        assert_eq!(counts.values().sum::<usize>(), planted.len(), "{topic}");
        for m in &planted_minutes {
            assert!(view.sealed.contains_key(m), "{topic}: {m} sealed once");
        }
        assert_verify_clean(
            &["--root", &root.uri, "--topic", &topic],
            &format!("{topic} ({what})"),
        );
        report.push(format!(
            "{point} ({what}): {} records in {} minutes sealed once",
            planted.len(),
            planted_minutes.len()
        ));
    }
    drop(collector);
    eprintln!("worker on {}:\n  {}", root.uri, report.join("\n  "));
}

#[test]
fn a_worker_killed_mid_step_seals_everything_once() {
    worker_killed_mid_step(&local_root());
}

#[test]
fn a_worker_killed_mid_step_on_hdfs_seals_everything_once() {
    let Some(root) = hdfs_root("a_worker_killed_mid_step_on_hdfs") else {
        return;
    };
    worker_killed_mid_step(&root);
}

/// Payload -> times stored in the sealed minutes `minutes` of `view` of `topic`
/// in `root` ([`worker::sealed_counts`]).
fn sealed_counts(
    root: &Root,
    view: View,
    topic: &str,
    minutes: &[Minute],
) -> HashMap<Bytes, usize> {
    root.rt
        .block_on(worker::sealed_counts(&*root.storage, view, topic, minutes))
}

/// Waits until `view` of `topic` has its minute `m` sealed in `root`.
fn wait_sealed(root: &Root, view: View, topic: &str, m: Minute, what: &str) {
    root.rt.block_on(worker::wait_sealed(
        &root.storage,
        view,
        topic,
        m,
        what,
        SEAL_TIMEOUT,
    ));
}

fn merge_and_mirror_killed_mid_copy(dc1: &Root, dc2: &Root) {
    let topic = "mm";
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("conduit.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clusters.dc1]\nroot = \"{}\"\n\n[clusters.dc2]\nroot = \"{}\"\n\n\
             [topic_defaults]\nmerge_into = \"dc1\"\nmerge_sources = [\"dc1\", \"dc2\"]\nmirrors = [\"dc2\"]\n\n\
             [worker]\ninterval_ms = 200\nlease_secs = 3\n",
            dc1.uri, dc2.uri
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let _c1 = CollectorProcess::start(&dc1.uri, "c1", &["--cluster", "dc1"], &dc1.logs).unwrap();
    let _c2 = CollectorProcess::start(&dc2.uri, "c2", &["--cluster", "dc2"], &dc2.logs).unwrap();
    let now = Minute::from_datetime(chrono::Utc::now()).unwrap();
    let minutes: Vec<Minute> = (2..=4)
        .rev()
        .map(|d| now.add_minutes(-d).unwrap())
        .collect();
    let last = *minutes.last().unwrap();
    let mut planted = plant(dc1, topic, "c1", &minutes);
    planted.extend(plant(dc2, topic, "c2", &minutes));
    dc1.rt
        .block_on(wait_watermark(&dc1.storage, "dc1", "c1", last));
    dc2.rt
        .block_on(wait_watermark(&dc2.storage, "dc2", "c2", last));

    let args = |cluster: &'static str| ["--config", cfg, "--cluster", cluster];
    // dc2's worker seals its local view, then dies copying the merged view
    // into its mirror; dc1's seals, then dies copying into the merged view.
    let mut mirror_armed =
        WorkerProcess::spawn_crashing(&args("dc2"), &free_addr(), &dc2.logs, "write:2:streams/")
            .unwrap();
    let mut merge_armed =
        WorkerProcess::spawn_crashing(&args("dc1"), &free_addr(), &dc1.logs, "write:2:streams/")
            .unwrap();
    wait_killed(
        &mut merge_armed.child,
        "dc1 worker mid-copy into the merged view",
        CRASH_TIMEOUT,
        &merge_armed.log_path,
    );
    let merger = WorkerProcess::start(&args("dc1"), &dc1.logs).unwrap();
    wait_sealed(
        dc1,
        View::Merged,
        topic,
        last,
        "merged view sealed after the kill",
    );
    wait_killed(
        &mut mirror_armed.child,
        "dc2 worker mid-copy into the mirror",
        CRASH_TIMEOUT,
        &mirror_armed.log_path,
    );
    let mirror = WorkerProcess::start(&args("dc2"), &dc2.logs).unwrap();
    wait_sealed(
        dc2,
        View::Merged,
        topic,
        last,
        "mirror sealed after the kill",
    );
    drop((merger, mirror));

    for (root, what) in [(dc1, "merged view (dc1)"), (dc2, "mirror (dc2)")] {
        let counts = sealed_counts(root, View::Merged, topic, &minutes);
        for p in &planted {
            assert_eq!(counts.get(p), Some(&1), "{what}: {p:?}");
        }
        assert_eq!(counts.values().sum::<usize>(), planted.len(), "{what}");
    }
    for cluster in ["dc1", "dc2"] {
        assert_verify_clean(
            &[
                "--config",
                cfg,
                "--cluster",
                cluster,
                "--topic",
                topic,
                "--view",
                "local,merged",
            ],
            cluster,
        );
    }
    eprintln!(
        "merge killed mid-copy on {}, mirror killed mid-copy on {}: {} records in {} minutes, merged and mirrored exactly once",
        dc1.uri,
        dc2.uri,
        planted.len(),
        minutes.len()
    );
}

#[test]
fn merge_and_mirror_killed_mid_copy_lose_and_duplicate_nothing() {
    merge_and_mirror_killed_mid_copy(&local_root(), &local_root());
}

#[test]
fn merge_and_mirror_killed_mid_copy_with_dc1_on_hdfs() {
    let Some(dc1) = hdfs_root("merge_and_mirror_killed_mid_copy_with_dc1_on_hdfs") else {
        return;
    };
    merge_and_mirror_killed_mid_copy(&dc1, &local_root());
}
