//! Faults of the worker and what `conduit verify` says about them (issue 20),
//! against real `conduit collector`, `conduit worker` and `conduit verify`
//! processes:
//!
//! * collector files that hold no record (zero bytes, or only a close trailer:
//!   files created for calls that were then refused) are never sealed;
//! * `verify` names leftover `_tmp.*` copies and empty data files;
//! * a single worker whose storage fills up says its lease renewal failed and
//!   why, never that another worker is taking over, and holds the lease again
//!   once space is back.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use conduit_core::heartbeat::Heartbeat;
use conduit_core::layout::Layout;
use conduit_core::{Minute, Topic};
use conduit_testkit::process::{http_get, run_conduit, CollectorProcess, WorkerProcess};
use conduit_testkit::tmpfs::Tmpfs;
use conduit_testkit::{local_storage, minutes, node, runtime, scribe, wait};

/// Sealing a past minute needs a few worker passes and a collector heartbeat.
const SEAL_TIMEOUT: Duration = Duration::from_secs(60);

/// `conduit worker` of `dc1` on `root`, passes every 200 ms, plus `extra`.
fn start_worker(root: &Path, logs: &Path, extra: &[&str]) -> WorkerProcess {
    let root = root.to_str().unwrap();
    let args = [
        &["--root", root, "--cluster", "dc1", "--interval-ms", "200"][..],
        extra,
    ]
    .concat();
    WorkerProcess::start(&args, logs).expect("conduit worker starts")
}

/// A collector (`c1`) with 20 acknowledged events of `topic` in the current
/// minute, and three files planted in `data/<topic>/c1/` for the minute three
/// minutes ago: 10 records, only a close trailer, and zero bytes. Returns the
/// collector, the planted minute and the three paths (relative to `root`).
fn collector_with_empty_files(
    root: &Path,
    logs: &Path,
    topic: &str,
) -> (CollectorProcess, Minute, [String; 3]) {
    let collector = CollectorProcess::start(root.to_str().unwrap(), "c1", &[], logs).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut client = scribe::Client::connect(collector.thrift_addr.as_str()).await;
        client
            .log_acked(topic, &scribe::numbered("live", 0, 20))
            .await;
    });
    let now = Minute::from_datetime(chrono::Utc::now()).unwrap();
    let planted = now.add_minutes(-3).unwrap();
    let t = Topic::new(topic).unwrap();
    let paths = [0, 1, 2].map(|seq| Layout::collector_file(&t, &node("c1"), planted, seq));
    let records: Vec<String> = scribe::numbered("planted", 0, 10);
    std::fs::write(root.join(&paths[0]), minutes::data_file(&records, 2)).unwrap();
    std::fs::write(root.join(&paths[1]), minutes::data_file::<String>(&[], 1)).unwrap();
    std::fs::write(root.join(&paths[2]), b"").unwrap();
    // The collector's watermark promises every file of that minute closed.
    let storage = local_storage(root);
    rt.block_on(wait::until(
        "the watermark of c1 to pass the planted minute",
        SEAL_TIMEOUT,
        || async {
            let (beats, _) = Heartbeat::read_all(&*storage, &node("dc1")).await.unwrap();
            beats.iter().any(|b| b.watermark >= Some(planted))
        },
    ));
    (collector, planted, paths)
}

/// The sealed local minute directory of `minute`.
fn minute_dir(root: &Path, topic: &str, minute: Minute) -> PathBuf {
    root.join(Layout::minute_dir(
        conduit_core::View::Local,
        &Topic::new(topic).unwrap(),
        minute,
    ))
}

fn wait_sealed(root: &Path, topic: &str, minute: Minute, worker: &WorkerProcess) {
    let dir = minute_dir(root, topic, minute);
    wait::until_blocking(
        &format!("{} to be sealed", dir.display()),
        SEAL_TIMEOUT,
        || dir.join(Layout::SUCCESS_MARKER).exists().then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", worker.log()));
}

#[test]
fn collector_files_without_records_are_never_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let logs = dir.path().join("logs");
    let (_collector, planted, paths) = collector_with_empty_files(&root, &logs, "tidy");
    let worker = start_worker(&root, &logs, &[]);
    wait_sealed(&root, "tidy", planted, &worker);

    let sealed = minutes::sealed_dirs(&root, "tidy");
    let (manifest, _) = &sealed[&minute_dir(&root, "tidy", planted)];
    let listed: Vec<(&str, u64)> = manifest
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.records))
        .collect();
    let kept = Layout::local_file_name(
        &node("dc1"),
        &node("c1"),
        planted,
        0,
        &Topic::new("tidy").unwrap(),
    );
    assert_eq!(
        listed,
        vec![(kept.as_str(), 10)],
        "only the file with records is listed"
    );
    assert!(
        manifest.quarantined.is_empty(),
        "{:?}",
        manifest.quarantined
    );
    // The empty files are gone: not in data/, not in the minute, not set aside.
    let in_dir: Vec<String> = std::fs::read_dir(minute_dir(&root, "tidy", planted))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(in_dir.len(), 2, "the kept file and _SUCCESS: {in_dir:?}");
    for path in &paths {
        assert!(!root.join(path).exists(), "{path} left in data/");
    }
    assert!(
        !root.join(Layout::QUARANTINE_DIR).exists(),
        "nothing set aside"
    );
    let log = worker.log();
    assert_eq!(
        log.matches("deleted a data file that holds no record")
            .count(),
        2,
        "{log}"
    );
    // No sealed minute of the topic lists a file without records.
    let empty: Vec<String> = sealed
        .values()
        .flat_map(|(m, _)| m.files.iter().filter(|f| f.records == 0))
        .map(|f| f.name.clone())
        .collect();
    assert!(empty.is_empty(), "sealed without records: {empty:?}");
    println!(
        "empty files: 1 trailer-only and 1 zero-byte collector file in {planted}: \
         deleted by the seal, {} sealed minutes list none",
        sealed.len()
    );
}

#[test]
fn verify_names_leftover_tmp_copies_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let logs = dir.path().join("logs");
    let (mut collector, planted, _) = collector_with_empty_files(&root, &logs, "tidy");
    let mut worker = start_worker(&root, &logs, &[]);
    wait_sealed(&root, "tidy", planted, &worker);
    worker.kill9();
    collector.kill9();
    let root_text = root.to_str().unwrap();
    let verify = || {
        run_conduit(
            &["verify", "--root", root_text, "--topic", "tidy"],
            b"",
            Duration::from_secs(60),
        )
        .unwrap()
    };
    let clean = verify();
    assert_eq!(clean.code, 0, "{}\n{}", clean.stdout, clean.stderr);
    assert!(
        clean.stdout.contains("no problems found"),
        "{}",
        clean.stdout
    );

    // Leftovers of failed steps, planted in the tree the worker made.
    let sealed_dir = minute_dir(&root, "tidy", planted);
    let tmp_in_sealed = sealed_dir.join("_tmp.dc1-c1-tidy-copy.zst");
    std::fs::write(&tmp_in_sealed, b"partial copy").unwrap();
    let empty_in_sealed = sealed_dir.join(Layout::local_file_name(
        &node("dc1"),
        &node("c1"),
        planted,
        7,
        &Topic::new("tidy").unwrap(),
    ));
    std::fs::write(&empty_in_sealed, b"").unwrap();
    let collector_dir = root.join("data/tidy/c1");
    let tmp_in_data = collector_dir.join("_tmp.recovered.zst");
    let file = std::fs::File::create(&tmp_in_data).unwrap();
    std::io::Write::write_all(&mut &file, b"half a recovery").unwrap();
    // An hour old: no step is still writing it.
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(file);

    let found = verify();
    println!("{}", found.stdout);
    assert_eq!(found.code, 1, "{}\n{}", found.stdout, found.stderr);
    let line_of = |kind: &str, path: &Path| {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        found
            .stdout
            .lines()
            .any(|l| l.starts_with(kind) && l.contains(&rel))
    };
    assert!(line_of("leftover-tmp", &tmp_in_sealed), "{}", found.stdout);
    assert!(line_of("leftover-tmp", &tmp_in_data), "{}", found.stdout);
    assert!(line_of("empty-file", &empty_in_sealed), "{}", found.stdout);
    assert!(
        line_of("unlisted-file", &empty_in_sealed),
        "{}",
        found.stdout
    );
    assert!(
        found.stdout.contains("4 problem(s) found"),
        "{}",
        found.stdout
    );
}

/// The worker's `/health` details: lease state and standby reason.
fn lease_state(worker: &WorkerProcess) -> Option<(String, String)> {
    let (_, body) = http_get(&worker.http_addr, "/health").ok()?;
    let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
    let details = doc.get("details").unwrap_or(&doc);
    Some((
        details["lease"].as_str().unwrap_or_default().to_owned(),
        details["standby_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}

#[test]
fn a_full_disk_is_reported_as_a_failed_lease_renewal_not_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount("faults_worker lease on a full disk", 4 << 20) else {
        return;
    };
    let root = disk.path().join("root");
    let logs = dir.path().join("logs");
    let worker = start_worker(&root, &logs, &["--lease-secs", "3"]);
    let held = |w: &WorkerProcess| lease_state(w).is_some_and(|(lease, _)| lease == "held");
    wait::until_blocking("the lease to be held", SEAL_TIMEOUT, || {
        held(&worker).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", worker.log()));

    // The disk fills up: renewals fail, the lease lapses, acquiring fails.
    disk.fill();
    let mut reasons = Vec::new();
    wait::until_blocking(
        "the worker to report the failed renewal and stand by, then retry",
        SEAL_TIMEOUT,
        || {
            if let Some((_, reason)) = lease_state(&worker) {
                reasons.push(reason);
            }
            let log = worker.log();
            (log.contains("lost the worker lease")
                && log.matches("lease renewal failed").count() >= 4)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", worker.log()));
    let log = worker.log();
    let renewal = log
        .lines()
        .find(|l| l.contains("lease renewal failed"))
        .unwrap();
    assert!(
        renewal.contains("No space left on device") || renewal.contains("os error 28"),
        "the storage error is named: {renewal}"
    );
    let lost = log
        .lines()
        .find(|l| l.contains("lost the worker lease"))
        .unwrap();
    assert!(lost.contains("lease renewal failed"), "{lost}");

    // Space is back: the same worker holds the lease again.
    disk.free();
    wait::until_blocking("the lease to be held again", SEAL_TIMEOUT, || {
        if let Some((_, reason)) = lease_state(&worker) {
            reasons.push(reason);
        }
        held(&worker).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", worker.log()));
    let log = worker.log();
    assert!(
        !log.contains("taken over") && !log.contains("claimed by another worker"),
        "a single worker never reports a takeover:\n{log}"
    );
    assert!(
        reasons.iter().all(|r| !r.contains("taken over")),
        "{reasons:?}"
    );
    println!(
        "lease on a full disk: {} renewal failures reported with the storage error ({renewal}), \
         no takeover reported, lease held again after space came back",
        log.matches("lease renewal failed").count()
    );
}
