//! Issue 14, "corruption is loud and never spreads", against the real `conduit`
//! binary: a closed collector file that loses its tail on disk (a disk fault, a
//! truncating copy) is never cut further by the collector's recovery, is moved
//! aside to `quarantine/` untouched and reported by `conduit verify` and
//! `conduit audit`; `conduit tail` over it stops with an error naming the file and
//! what to do, and `tail --to` ends, instead of printing part of it and waiting
//! forever.
//!
//! Events are sent by the test kit's raw Scribe client, one `Log` call (one frame)
//! at a time, so a file holds many frames and a cut lands inside one of them.

use std::time::Duration;

use conduit_core::format::{decode_file, Encoding};
use conduit_core::SharedStorage;
use conduit_testkit::hdfs;
use conduit_testkit::process::{metric, run_conduit, CollectorProcess, Ran};
use conduit_testkit::scribe::Client;

const TOPIC: &str = "clicks";
/// Events per call, and calls: each call is one frame of the file.
const PER_CALL: usize = 100;
const CALLS: usize = 10;
/// How long a `conduit` command may take (`tail --to` included).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// A cluster root (a local directory or HDFS) and the collector's logs.
struct Scene {
    dir: tempfile::TempDir,
    root: String,
    storage: SharedStorage,
    rt: tokio::runtime::Runtime,
}

impl Scene {
    /// A root on local disk.
    fn local() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        Scene::on(dir, root.display().to_string())
    }

    fn on(dir: tempfile::TempDir, root: String) -> Scene {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let storage = rt.block_on(conduit_core::open_root(&root)).unwrap();
        Scene {
            dir,
            root,
            storage,
            rt,
        }
    }

    fn root(&self) -> String {
        self.root.clone()
    }

    fn start(&self) -> CollectorProcess {
        CollectorProcess::start(&self.root, "c1", &[], &self.dir.path().join("logs"))
            .expect("collector starts")
    }

    fn conduit(&self, args: &[&str]) -> Ran {
        run_conduit(args, b"", COMMAND_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The topic's files in `data/` (paths relative to the root), sorted.
    fn data_files(&self) -> Vec<String> {
        let dir = format!("data/{TOPIC}/c1");
        let mut files: Vec<String> = self
            .rt
            .block_on(self.storage.list_or_empty(&dir))
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        files.sort();
        files
    }

    fn read(&self, path: &str) -> Vec<u8> {
        self.rt.block_on(self.storage.read(path)).unwrap().to_vec()
    }

    fn exists(&self, path: &str) -> bool {
        self.rt.block_on(self.storage.exists(path)).unwrap()
    }

    /// Sends `CALLS` acknowledged calls of `PER_CALL` events, then stops the
    /// collector cleanly (every file closed, its ledger saved). Returns the
    /// largest file (the one that gets damaged) and the minute range of all.
    fn write_closed_files(&self) -> (String, String, String) {
        let mut collector = self.start();
        self.rt.block_on(async {
            let mut client = Client::connect(&collector.thrift_addr).await;
            for call in 0..CALLS {
                let events: Vec<String> = (0..PER_CALL)
                    .map(|i| format!(r#"{{"call":{call},"i":{i}}}"#))
                    .collect();
                client.log_acked(TOPIC, &events).await;
            }
        });
        let status = collector.terminate().unwrap();
        assert!(status.success(), "collector exit status {status}");
        let files = self.data_files();
        assert!(!files.is_empty(), "no data file written");
        let minute_of = |p: &str| {
            let name = p.rsplit('/').next().unwrap();
            let stamp = &name[TOPIC.len() + 1..TOPIC.len() + 17];
            // clicks-2026-11-22-10-05_00000.zst -> 2026-11-22T10:05
            format!("{}T{}:{}", &stamp[..10], &stamp[11..13], &stamp[14..16])
        };
        let (first, last) = (minute_of(&files[0]), minute_of(files.last().unwrap()));
        let largest = files
            .iter()
            .max_by_key(|p| self.read(p).len())
            .unwrap()
            .clone();
        (largest, first, last)
    }

    /// Cuts the file to half its length, as a disk fault would; returns the
    /// bytes left and how many records its complete frames still hold.
    fn truncate_half(&self, path: &str) -> (Vec<u8>, usize) {
        let bytes = self.read(path);
        let closed = decode_file("before", &bytes, Encoding::Lines).unwrap();
        assert!(closed.scan.is_closed());
        let half = bytes[..bytes.len() / 2].to_vec();
        self.rt
            .block_on(self.storage.write_atomic(path, half.clone().into()))
            .unwrap();
        let left = decode_file("after", &half, Encoding::Lines).unwrap();
        assert!(!left.scan.is_closed());
        assert!(
            left.payloads.len() < closed.payloads.len(),
            "the cut lost records"
        );
        (half, left.payloads.len())
    }
}

/// A closed file cut on disk, then a restart: quarantined untouched, counted,
/// logged at ERROR, reported by verify and audit.
fn a_truncated_closed_file_is_quarantined(scene: Scene) {
    let (damaged, from, to) = scene.write_closed_files();
    let whole = scene.read(&damaged).len();
    let (left, readable) = scene.truncate_half(&damaged);
    let quarantined = format!("quarantine/{damaged}");

    // Restart: recovery finds a file it closed, shorter than acknowledged.
    let started = std::time::Instant::now();
    let mut collector = scene.start();
    eprintln!(
        "{} events acked in {CALLS} frames; {damaged} cut from {whole} to {} bytes (complete frames left: {readable} records); restart with quarantine took {:?}",
        CALLS * PER_CALL,
        left.len(),
        started.elapsed()
    );
    assert!(!scene.exists(&damaged), "the damaged file left data/");
    assert_eq!(
        scene.read(&quarantined),
        left,
        "quarantined untouched: not one byte cut"
    );
    let metrics = collector.metrics();
    assert_eq!(
        metric(&metrics, "conduit_collector_files_quarantined_total"),
        Some(1.0),
        "{metrics}"
    );
    let log = collector.log();
    let line = log
        .lines()
        .find(|l| l.contains("quarantined_to"))
        .unwrap_or_else(|| panic!("no quarantine line in the log:\n{log}"));
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(line.contains(&damaged), "{line}");
    // The other files of the run (a minute may have rolled) are untouched.
    for other in scene.data_files() {
        let bytes = scene.read(&other);
        assert!(decode_file("other", &bytes, Encoding::Lines)
            .unwrap()
            .scan
            .is_closed());
    }
    assert!(collector.terminate().unwrap().success());

    // verify and audit both name it and exit non-zero.
    let root = scene.root();
    let verify = scene.conduit(&["verify", "--root", &root, "--view", "collector"]);
    assert_eq!(verify.code, 1, "{verify:?}");
    assert!(
        verify
            .stdout
            .lines()
            .any(|l| l.starts_with("quarantined") && l.contains(&quarantined)),
        "{verify:?}"
    );
    let audit = scene.conduit(&[
        "audit", "--root", &root, "--topic", TOPIC, "--from", &from, "--to", &to,
    ]);
    assert_eq!(audit.code, 1, "{audit:?}");
    assert!(
        audit
            .stdout
            .lines()
            .any(|l| l.starts_with("QUARANTINED") && l.contains(&quarantined)),
        "{audit:?}"
    );
    assert!(!audit.stdout.contains("no loss or duplication found"));
}

#[test]
fn a_truncated_closed_file_is_quarantined_at_restart_never_cut_and_reported() {
    a_truncated_closed_file_is_quarantined(Scene::local());
}

#[test]
fn on_hdfs_a_truncated_closed_file_is_quarantined_at_restart() {
    let Some(root) = hdfs::fresh_root("on_hdfs_a_truncated_closed_file_is_quarantined_at_restart")
    else {
        return;
    };
    a_truncated_closed_file_is_quarantined(Scene::on(tempfile::tempdir().unwrap(), root));
}

#[test]
fn tail_over_a_truncated_file_names_it_and_to_ends() {
    let scene = Scene::local();
    let (original, from, to) = scene.write_closed_files();
    let (_, readable) = scene.truncate_half(&original);
    let root = scene.root();
    let tail = |extra: &[&str]| {
        let mut args = vec![
            "tail", "--root", &root, "--topic", TOPIC, "--from", &from, "--to", &to,
        ];
        args.extend_from_slice(extra);
        scene.conduit(&args)
    };

    // The collector stopped cleanly, so the file is final: it is truncated.
    let started = std::time::Instant::now();
    let ran = tail(&[]);
    eprintln!(
        "tail --to over {original}: {} records printed (complete frames: {readable}), then the error after {:?}",
        ran.stdout.lines().count(),
        started.elapsed()
    );
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("damaged data file"), "{ran:?}");
    assert!(ran.stderr.contains(&original), "{ran:?}");
    assert!(ran.stderr.contains("truncated"), "{ran:?}");
    assert!(
        ran.stderr.contains("conduit verify"),
        "the next step: {ran:?}"
    );
    let printed = ran.stdout.lines().count();
    assert!(
        printed >= readable,
        "the records before the cut are printed: {printed} of {readable}"
    );

    // After a restart the file is in quarantine/: a reader that never saw it is
    // told too.
    let mut collector = scene.start();
    assert!(collector.terminate().unwrap().success());
    let ran = tail(&[]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!("quarantine/{original}")),
        "{ran:?}"
    );
    // --skip-corrupt reads past it, counted, and ends at --to.
    let ran = tail(&["--skip-corrupt"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran
        .stderr
        .contains("skipping the rest of a damaged data file"));
}
