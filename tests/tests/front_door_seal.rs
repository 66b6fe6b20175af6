//! The worker's local seal against real `conduit collector` and `conduit worker`
//! processes on local disk, in real time (issue 14): a closed collector file that
//! lost its end to a disk fault is set aside in `quarantine/` and listed in the
//! manifest while the worker keeps sealing the topic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conduit_core::heartbeat::Heartbeat;
use conduit_core::layout::Layout;
use conduit_core::{Manifest, Minute, SharedStorage};
use conduit_testkit::collector::stored_files;
use conduit_testkit::process::{http_get, metric, CollectorProcess, WorkerProcess};
use conduit_testkit::scribe::{padded, Client};
use conduit_testkit::wait::{until, until_blocking};
use conduit_testkit::{local_storage, node};

/// Sealing needs the data's minute to end (real time): up to a minute, plus the
/// worker's interval.
const SEAL_TIMEOUT: Duration = Duration::from_secs(100);

/// Every sealed local minute directory of `topic` with its manifest.
fn sealed(root: &Path, topic: &str) -> BTreeMap<PathBuf, Manifest> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                if depth == 4 {
                    out.push(e.path());
                } else {
                    walk(&e.path(), depth + 1, out);
                }
            }
        }
    }
    let mut dirs = Vec::new();
    walk(&root.join("streams_local").join(topic), 0, &mut dirs);
    let mut out = BTreeMap::new();
    for dir in dirs {
        let marker = dir.join("_SUCCESS");
        if let Ok(bytes) = std::fs::read(&marker) {
            let m = Manifest::parse(marker.to_str().unwrap(), &bytes).unwrap();
            out.insert(dir, m);
        }
    }
    out
}

/// `conduit worker` of `dc1` on `root`, passes every 200 ms.
fn start_worker(root: &Path, logs: &Path) -> WorkerProcess {
    let root = root.to_str().unwrap();
    let args = ["--root", root, "--cluster", "dc1", "--interval-ms", "200"];
    WorkerProcess::start(&args, logs).expect("conduit worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_closed_file_is_quarantined_and_the_worker_keeps_sealing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let logs = dir.path().join("logs");
    let root_text = root.to_str().unwrap();
    // Small files: several closed files of one minute.
    let mut collector =
        CollectorProcess::start(root_text, "c1", &["--max-file-bytes", "4096"], &logs).unwrap();
    let mut client = Client::connect(collector.thrift_addr.as_str()).await;
    let mut acked = 0u64;
    for i in 0..6 {
        let batch = padded(&format!("a{i}"), 20, 200);
        client.log_acked("clicks", &batch).await;
        acked += batch.len() as u64;
    }
    // The collector promises the minute closed once it has rolled over.
    let storage = local_storage(&root);
    let files = stored_files(&*storage, "clicks").await;
    let newest = files
        .iter()
        .map(|f| Layout::parse_collector_file_name(&f.name).unwrap().minute)
        .max()
        .unwrap();
    wait_for_watermark(&storage, newest).await;

    // Then a disk fault cuts the end off one closed file, before the worker
    // moves it: the worker takes the watermark's word and moves it.
    let files = stored_files(&*storage, "clicks").await;
    assert!(files.len() >= 3, "{} files", files.len());
    let victim = &files[1];
    assert!(victim.is_closed());
    let bytes = storage.read(&victim.path).await.unwrap();
    storage
        .write_atomic(&victim.path, bytes.slice(..bytes.len() - 100))
        .await
        .unwrap();
    let lost = victim.payloads().len() as u64;
    let victim_name = format!("dc1-c1-{}", victim.name);

    let worker = start_worker(&root, &logs);
    let holding = until_blocking("every other record sealed", SEAL_TIMEOUT, || {
        let sealed = sealed(&root, "clicks");
        let records: u64 = sealed.values().map(|m| m.records).sum();
        let set_aside: Vec<_> = sealed
            .into_iter()
            .flat_map(|(dir, m)| m.quarantined.into_iter().map(move |q| (dir.clone(), q)))
            .collect();
        (records == acked - lost && !set_aside.is_empty()).then_some(set_aside)
    })
    .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", worker.log()));
    assert_eq!(holding.len(), 1, "{holding:?}");
    let (minute_dir, entry) = &holding[0];
    assert_eq!(entry.name, victim_name);
    assert_eq!(entry.reason, "no_trailer");
    let relative = minute_dir.strip_prefix(&root).unwrap().to_str().unwrap();
    let kept = root.join(Layout::quarantine_path(&format!(
        "{relative}/{victim_name}"
    )));
    assert_eq!(
        std::fs::read(&kept).unwrap().len(),
        bytes.len() - 100,
        "the truncated bytes are kept in quarantine"
    );
    assert!(
        worker.log().contains("set aside in quarantine"),
        "an ERROR names the file"
    );
    let metrics = http_get(&worker.http_addr, "/metrics").unwrap().1;
    assert_eq!(
        metric(
            &metrics,
            "conduit_worker_files_quarantined_total{job=\"local\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "conduit_worker_errors_total{job=\"local\"}").unwrap_or(0.0),
        0.0,
        "no pass failed: {metrics}"
    );
    assert!(collector.terminate().unwrap().success());
}

/// Waits until collector `c1` of `dc1` promises every file of `minute` closed.
async fn wait_for_watermark(storage: &SharedStorage, minute: Minute) {
    until(
        &format!("watermark {minute} of c1"),
        SEAL_TIMEOUT,
        || async {
            let (beats, _) = Heartbeat::read_all(&**storage, &node("dc1")).await.unwrap();
            beats.iter().any(|b| b.watermark >= Some(minute))
        },
    )
    .await;
}
