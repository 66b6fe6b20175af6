//! What the local seal guarantees beyond moving files, on local disk with a test
//! clock: a file it cannot seal is set aside in `quarantine/` and listed in the
//! manifest while the topic keeps sealing (against a real in-process collector);
//! a publisher batch stored by two collectors (layout-2 files written with the
//! real encoders, as after a failover) is sealed once, in the same minute, a
//! later one or late, also after a lost checkpoint; both also when the worker
//! crashes at any storage call of the pass.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use conduit_core::format::{crc32c_append, decode_file, encode_closing, scan};
use conduit_core::layout::Layout;
use conduit_core::scribe::ResultCode;
use conduit_core::storage::{FaultPlan, FaultStorage};
use conduit_core::{Config, Encoding, SharedStorage, TestClock, Topic, View};
use conduit_merger::{Job, LocalJob};
use conduit_testkit::clock::{clock_at, set};
use conduit_testkit::collector::{self, stored_files};
use conduit_testkit::hdfs;
use conduit_testkit::minutes::{batch_file, Batch};
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

/// What a sealed local minute says, without the instant of sealing: the files
/// with their records and CRCs, the files set aside with their reasons, and the
/// duplicates dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sealed {
    files: Vec<(String, u64, u32)>,
    set_aside: Vec<(String, String)>,
    duplicates_dropped: u64,
}

/// [`Sealed`] per minute.
type Outcome = BTreeMap<String, Sealed>;

fn outcome(view: &LocalView) -> Outcome {
    view.sealed
        .iter()
        .map(|(m, manifest)| {
            let sealed = Sealed {
                files: manifest
                    .files
                    .iter()
                    .map(|f| (f.name.clone(), f.records, f.crc32c))
                    .collect(),
                set_aside: manifest
                    .quarantined
                    .iter()
                    .map(|q| (q.name.clone(), q.reason.clone()))
                    .collect(),
                duplicates_dropped: manifest.duplicates_dropped,
            };
            (m.to_string(), sealed)
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
    assert!(!job.pass().await.unwrap().did_something(), "nothing left");

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
    crash_at_every(work, root, clock, unclosed, |plan, n| {
        plan.fail_after(n - 1)
    })
    .await
}

/// [`crash_at_every_call`] with the fault `arm` sets up for the n-th step (a
/// failed call, or a torn write).
async fn crash_at_every(
    work: &Path,
    root: &Path,
    clock: &TestClock,
    unclosed: &[&str],
    arm: fn(&FaultPlan, u64),
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
        arm(&plan, n);
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
    assert!(calls > 10, "a pass makes {calls} storage calls (or writes)");
    eprintln!("crashed at each of {calls} storage calls (or writes)");
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
        .flat_map(|m| m.set_aside.clone())
        .collect();
    assert_eq!(
        set_aside,
        vec![(truncated, "no_trailer".to_owned())],
        "{expected:?}"
    );
}

/// `n` records of batch `sequence` of publisher `publisher` (`tag` tells copies
/// of one batch from a different batch under the same id and sequence).
fn batch(publisher: &str, sequence: i64, n: usize, tag: &str) -> Batch {
    let records = (0..n)
        .map(|i| format!("{publisher}-{sequence}{tag}-{i}"))
        .collect();
    Batch::new(publisher, sequence, records)
}

/// Writes a closed layout-2 file of `clicks` for collector `collector`, minute
/// `stamp` (`2026-11-22-10-05`) and sequence number `seq` into `data/`, as a
/// collector closes it; returns its bytes.
async fn put(
    storage: &SharedStorage,
    collector: &str,
    stamp: &str,
    seq: u32,
    frames: &[Vec<Batch>],
) -> Bytes {
    let path = format!("data/clicks/{collector}/clicks-{stamp}_{seq:05}.zst");
    let bytes = Bytes::from(batch_file("clicks", frames));
    storage.write_atomic(&path, bytes.clone()).await.unwrap();
    bytes
}

/// Every record of the sealed minutes, with how often it is there.
async fn sealed_records(storage: &SharedStorage, view: &LocalView) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (m, manifest) in &view.sealed {
        let dir = Layout::minute_dir(View::Local, &clicks(), *m);
        for f in &manifest.files {
            let path = format!("{dir}/{}", f.name);
            let bytes = storage.read(&path).await.unwrap();
            let decoded = decode_file(&path, &bytes, Encoding::Lines).unwrap();
            for p in decoded.payloads {
                *counts
                    .entry(String::from_utf8(p.to_vec()).unwrap())
                    .or_default() += 1;
            }
        }
    }
    counts
}

/// Offsets of the data frames of a file's bytes.
fn data_frames(bytes: &[u8]) -> Vec<u64> {
    scan(bytes, 0)
        .frames
        .iter()
        .filter(|f| !f.skippable)
        .map(|f| f.offset)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_two_collectors_stored_is_sealed_once() {
    let dir = tempfile::tempdir().unwrap();
    two_collectors_copies_are_sealed_once(local_storage(dir.path())).await;
}

/// The same on the real HDFS of `scripts/hdfs.sh` (`CONDUIT_TEST_HDFS`): the
/// rewrite of a file (create, then rename over it) and the checkpoint's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_two_collectors_stored_is_sealed_once_on_hdfs() {
    let Some(root) = hdfs::root("seal_a_batch_two_collectors_stored_is_sealed_once").await else {
        return;
    };
    two_collectors_copies_are_sealed_once(root.storage).await;
}

/// Collector files of three minutes holding copies of each other's batches, in
/// `storage`, sealed by the local job: every record once, the copies counted.
async fn two_collectors_copies_are_sealed_once(storage: SharedStorage) {
    let (a, b, c, x) = (
        batch("p", 1, 5, ""),
        batch("p", 2, 3, ""),
        batch("p", 3, 4, ""),
        batch("q", 1, 2, ""),
    );
    let (d, b_other) = (batch("p", 4, 2, ""), batch("p", 2, 3, "x"));
    // 10:05: c2 stored c and b again after its publisher failed over from c1;
    // the second frame of c2's file holds nothing else.
    put(
        &storage,
        "c1",
        "2026-11-22-10-05",
        0,
        &[vec![a.clone(), b.clone()], vec![c.clone()]],
    )
    .await;
    let c2_before = put(
        &storage,
        "c2",
        "2026-11-22-10-05",
        0,
        &[vec![c.clone(), x.clone()], vec![b.clone()]],
    )
    .await;
    // 10:06: a again (sealed a minute before), d twice, and a different batch
    // under b's id and sequence (another digest: kept).
    put(&storage, "c1", "2026-11-22-10-06", 0, &[vec![d.clone()]]).await;
    put(
        &storage,
        "c2",
        "2026-11-22-10-06",
        0,
        &[vec![a.clone(), d.clone()], vec![b_other.clone()]],
    )
    .await;
    let clock = clock_at(10, 7, 30);
    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), Config::default()));
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 2, "{report:?}");
    assert_eq!(report.duplicates_dropped, 4 + 3 + 5 + 2, "{report:?}");

    let view = check_local_view(&*storage, &clicks()).await;
    let counts = sealed_records(&storage, &view).await;
    let expected: BTreeMap<String, usize> = [&a, &b, &c, &x, &d, &b_other]
        .iter()
        .flat_map(|batch| batch.records.iter().map(|r| (r.clone(), 1)))
        .collect();
    assert_eq!(counts, expected, "every record of every batch once");
    let m05 = &view.sealed[&minute("2026-11-22T10:05")];
    let m06 = &view.sealed[&minute("2026-11-22T10:06")];
    assert_eq!((m05.duplicates_dropped, m06.duplicates_dropped), (7, 7));
    assert_eq!(m05.records, 5 + 3 + 4 + 2);

    // The rewritten file keeps every data frame at its offset (local-view
    // readers and consumer checkpoints name frames by offset); its emptied
    // frame is still a data frame, so the file starts with one.
    let c2_path = "streams_local/clicks/2026/11/22/10/05/dc1-c2-clicks-2026-11-22-10-05_00000.zst";
    let c2_after = storage.read(c2_path).await.unwrap();
    assert_eq!(data_frames(&c2_after), data_frames(&c2_before));
    assert!(!scan(&c2_after, 0).frames[0].skippable);
    let decoded = decode_file(c2_path, &c2_after, Encoding::Lines).unwrap();
    assert_eq!(decoded.payloads.len(), 2);
    assert_eq!(
        decoded.index().unwrap().len(),
        1,
        "the index names what is left: {:?}",
        decoded.index()
    );

    // A copy arriving late into a later minute, and a copy after the worker lost
    // its checkpoint: both dropped against the sealed minutes.
    storage
        .delete("system/checkpoints/local/clicks.json", false)
        .await
        .unwrap();
    put(
        &storage,
        "c1",
        "2026-11-22-10-05",
        1,
        &[vec![c.clone(), batch("p", 5, 1, "")]],
    )
    .await;
    put(&storage, "c3", "2026-11-22-10-07", 0, &[vec![x.clone()]]).await;
    set(&clock, 10, 8, 30);
    let mut fresh = LocalJob::new(env(storage.clone(), clock.shared(), Config::default()));
    let report = fresh.pass().await.unwrap();
    assert_eq!((report.sealed, report.late_files), (1, 1), "{report:?}");
    assert_eq!(report.duplicates_dropped, 4 + 2, "{report:?}");
    let view = check_local_view(&*storage, &clicks()).await;
    let counts = sealed_records(&storage, &view).await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(counts.len(), expected.len() + 1);

    // Beyond the window: a copy 3 sealed minutes after the first with a window
    // of 2 is kept.
    let narrow = Config::parse("t", "[worker]\ndedup_window_minutes = 2\n").unwrap();
    set(&clock, 10, 11, 30);
    put(&storage, "c1", "2026-11-22-10-10", 0, &[vec![d.clone()]]).await;
    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), narrow));
    let report = job.pass().await.unwrap();
    assert_eq!(
        (report.sealed, report.duplicates_dropped),
        (3, 0),
        "{report:?}"
    );
    let view = check_local_view(&*storage, &clicks()).await;
    assert_eq!(sealed_records(&storage, &view).await[&d.records[0]], 2);
}

/// Collector files of 10:05 and 10:06 holding copies of each other's batches
/// (a file of 10:05 late), no collector running; returns the clock to seal with.
async fn backlog_with_copies(root: &Path) -> TestClock {
    let storage = local_storage(root);
    let (a, b, c) = (
        batch("p", 1, 3, ""),
        batch("p", 2, 2, ""),
        batch("q", 1, 4, ""),
    );
    put(
        &storage,
        "c1",
        "2026-11-22-10-05",
        0,
        &[vec![a.clone()], vec![b.clone()]],
    )
    .await;
    put(
        &storage,
        "c2",
        "2026-11-22-10-05",
        0,
        &[vec![b.clone(), c.clone()]],
    )
    .await;
    put(
        &storage,
        "c2",
        "2026-11-22-10-06",
        0,
        &[vec![a.clone()], vec![batch("p", 3, 1, "")]],
    )
    .await;
    put(&storage, "c3", "2026-11-22-10-06", 0, &[vec![c, b]]).await;
    clock_at(10, 7, 30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_storage_call_of_a_deduplicating_seal_drops_each_copy_once() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let clock = backlog_with_copies(&root).await;
    let expected = crash_at_every_call(work.path(), &root, &clock, &[]).await;
    let dropped: Vec<u64> = expected.values().map(|m| m.duplicates_dropped).collect();
    assert_eq!(dropped, vec![2, 3 + 4 + 2], "{expected:?}");
}

/// Torn writes (issue 20): each write of the pass in turn puts half its bytes in
/// the file and fails (a staged rewrite, the checkpoint's `sealing`, a
/// `_SUCCESS` manifest), the worker stops; a fresh worker ends with the same
/// view, every copy dropped once, no manifest changed and no `_tmp.` leftover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_at_any_write_of_a_deduplicating_seal_drops_each_copy_once() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let clock = backlog_with_copies(&root).await;
    let expected = crash_at_every(work.path(), &root, &clock, &[], |plan, n| {
        plan.tear_write_after(n - 1)
    })
    .await;
    let dropped: Vec<u64> = expected.values().map(|m| m.duplicates_dropped).collect();
    assert_eq!(dropped, vec![2, 3 + 4 + 2], "{expected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_index_disagrees_with_its_frames_is_set_aside_and_the_minute_planned_again() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let (a, b) = (batch("p", 1, 2, ""), batch("p", 2, 3, ""));
    put(&storage, "c1", "2026-11-22-10-05", 0, &[vec![a.clone()]]).await;
    // c2 holds a copy of `a` and `b`, but its index says the copy of `a` has 5
    // records where its frame has 2 (checksummed as written: a writer's bug, not
    // a disk fault).
    let good = batch_file("clicks", &[vec![a.clone(), b.clone()]]);
    let decoded = decode_file("c2", &good, Encoding::Lines).unwrap();
    let mut index = decoded.index().unwrap();
    index[0].mark.records = 5;
    let trailer = decoded.scan.trailer.unwrap();
    let data_end = scan(&good, 0).frames[1];
    let mut bad = good[..(data_end.offset + data_end.len) as usize].to_vec();
    let crc = crc32c_append(0, &bad);
    bad.extend_from_slice(&encode_closing(&trailer, crc, Some(&index)));
    storage
        .write_atomic(
            "data/clicks/c2/clicks-2026-11-22-10-05_00000.zst",
            Bytes::from(bad),
        )
        .await
        .unwrap();

    let clock = clock_at(10, 6, 30);
    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), Config::default()));
    let report = job.pass().await.unwrap();
    assert_eq!((report.sealed, report.quarantined), (1, 1), "{report:?}");
    let view = check_local_view(&*storage, &clicks()).await;
    let sealed = &view.sealed[&minute("2026-11-22T10:05")];
    assert_eq!(sealed.quarantined[0].reason, "bad_frame", "{sealed:?}");
    assert_eq!(
        sealed_records(&storage, &view).await.len(),
        a.records.len(),
        "c1's copy of `a` is kept"
    );
    assert_eq!(sealed.duplicates_dropped, 0);
}

/// Files a real collector closed are sealed from their close trailers alone
/// (`seal_checks` counts each as `trailer`), and every manifest entry has the
/// length, CRC-32C and record count of the file's actual bytes.
async fn closed_files_are_sealed_from_their_trailers(storage: SharedStorage) {
    let clock = clock_at(10, 5, 30);
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
    let files = stored_files(&*storage, "clicks").await;
    assert!(files.len() >= 3, "several closed files of 10:05: {files:?}");

    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), Config::default()));
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 1, "{report:?}");
    assert_eq!(
        report.seal_checks,
        BTreeMap::from([("trailer", files.len() as u64)]),
        "no file read in full: {report:?}"
    );
    let view = check_local_view(&*storage, &clicks()).await;
    let m = minute("2026-11-22T10:05");
    let sealed = &view.sealed[&m];
    assert_eq!(sealed.files.len(), files.len());
    let dir = Layout::minute_dir(View::Local, &clicks(), m);
    for f in &sealed.files {
        let path = format!("{dir}/{}", f.name);
        let bytes = storage.read(&path).await.unwrap();
        let decoded = decode_file(&path, &bytes, Encoding::Lines).unwrap();
        assert_eq!(
            (f.bytes, f.crc32c, f.records),
            (
                bytes.len() as u64,
                conduit_core::manifest::crc32c(&bytes),
                decoded.payloads.len() as u64
            ),
            "{}",
            f.name
        );
    }
    assert_eq!(view.records(), acked, "every acknowledged record is sealed");
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_files_are_sealed_from_their_trailers_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    closed_files_are_sealed_from_their_trailers(local_storage(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_files_are_sealed_from_their_trailers_on_hdfs() {
    let Some(root) = hdfs::root("seal_closed_files_are_sealed_from_their_trailers").await else {
        return;
    };
    closed_files_are_sealed_from_their_trailers(root.storage).await;
}

/// A file whose tail is a valid trailer and index but whose length disagrees
/// with them (its last data frames are gone, the index still names them) is not
/// described from its trailer: it is read in full, found not to match the
/// writer's checksum and set aside, never listed with the writer's CRC. A file
/// cut at its end (no trailer) is read in full and set aside as before.
async fn files_whose_tail_disagrees_are_read_in_full(storage: SharedStorage) {
    let (a, b, c) = (
        batch("p", 1, 2, ""),
        batch("p", 2, 3, ""),
        batch("p", 3, 4, ""),
    );
    put(&storage, "c1", "2026-11-22-10-05", 0, &[vec![a.clone()]]).await;
    // c2: `b` and `c` in two data frames, each followed by its marks; then the
    // index and the trailer. The second data frame and its marks are cut out.
    let whole = batch_file("clicks", &[vec![b.clone()], vec![c.clone()]]);
    let frames = scan(&whole, 0).frames;
    assert_eq!(frames.len(), 6, "data, marks, data, marks, index, trailer");
    let (cut_from, cut_to) = (frames[2].offset, frames[4].offset);
    let mut holed = whole[..cut_from as usize].to_vec();
    holed.extend_from_slice(&whole[cut_to as usize..]);
    put_bytes(
        &storage,
        "data/clicks/c2/clicks-2026-11-22-10-05_00000.zst",
        holed,
    )
    .await;
    // c3: its trailer (and more) cut off after it was moved into the minute
    // (a collector file without a trailer is never moved: it is not closed).
    let full = batch_file("clicks", &[vec![c.clone()]]);
    put_bytes(
        &storage,
        "streams_local/clicks/2026/11/22/10/05/dc1-c3-clicks-2026-11-22-10-05_00000.zst",
        full[..full.len() - 30].to_vec(),
    )
    .await;

    let clock = clock_at(10, 6, 30);
    let mut job = LocalJob::new(env(storage.clone(), clock.shared(), Config::default()));
    let report = job.pass().await.unwrap();
    assert_eq!((report.sealed, report.quarantined), (1, 2), "{report:?}");
    assert_eq!(
        report.seal_checks,
        BTreeMap::from([("trailer", 1)]),
        "only c1 is listed, from its trailer: {report:?}"
    );
    let view = check_local_view(&*storage, &clicks()).await;
    let sealed = &view.sealed[&minute("2026-11-22T10:05")];
    let reasons: Vec<(&str, &str)> = sealed
        .quarantined
        .iter()
        .map(|q| (q.name.as_str(), q.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "dc1-c2-clicks-2026-11-22-10-05_00000.zst",
                "checksum_mismatch"
            ),
            ("dc1-c3-clicks-2026-11-22-10-05_00000.zst", "no_trailer"),
        ]
    );
    let names: Vec<&str> = sealed.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["dc1-c1-clicks-2026-11-22-10-05_00000.zst"]);
    assert_eq!(
        sealed_records(&storage, &view).await.len(),
        a.records.len(),
        "only c1's records are sealed"
    );
}

/// Writes `bytes` to `path` as a closed file.
async fn put_bytes(storage: &SharedStorage, path: &str, bytes: Vec<u8>) {
    storage
        .write_atomic(path, Bytes::from(bytes))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_whose_tail_disagrees_with_their_length_are_read_in_full() {
    let dir = tempfile::tempdir().unwrap();
    files_whose_tail_disagrees_are_read_in_full(local_storage(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_whose_tail_disagrees_with_their_length_are_read_in_full_on_hdfs() {
    let Some(root) = hdfs::root("seal_files_whose_tail_disagrees_are_read_in_full").await else {
        return;
    };
    files_whose_tail_disagrees_are_read_in_full(root.storage).await;
}
