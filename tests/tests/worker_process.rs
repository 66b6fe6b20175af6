//! `conduit worker` as a process next to a `conduit collector` process on local
//! disk, in real time: minutes are sealed within 3 s of their end while the
//! collector is healthy; the worker is killed with SIGKILL mid-run and restarted;
//! in the end the records in manifests equal the records acknowledged, and
//! directories sealed before the kill never changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conduit_core::scribe::ResultCode;
use conduit_testkit::minutes;
use conduit_testkit::process::{free_addr, http_get, metric, CollectorProcess, WorkerProcess};
use conduit_testkit::scribe::Client;
use conduit_testkit::wait::until_blocking;

/// `conduit worker` of `dc1` on `root`, answering HTTP on `http` (not awaited: a
/// restarted worker waits for the lease).
fn start_worker(root: &Path, http: &str, logs: &Path) -> WorkerProcess {
    let root = root.to_str().unwrap();
    let args = ["--root", root, "--cluster", "dc1", "--lease-secs", "3"];
    WorkerProcess::spawn(&args, http, logs).expect("conduit worker starts")
}

/// Data files in a sealed directory with their sizes.
fn dir_files(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// Sends `Log` calls of 20 events until `stop`, counting acknowledged events.
async fn publisher(addr: String, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) {
    let mut client = Client::connect(addr.as_str()).await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let payloads: Vec<String> = (0..20)
            .map(|i| format!("{{\"n\":{n},\"i\":{i}}}"))
            .collect();
        if client.log_to("clicks", &payloads).await == ResultCode::Ok {
            acked.fetch_add(20, Ordering::Relaxed);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_killed_worker_restarts_without_loss_duplicates_or_changed_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut collector = CollectorProcess::start(root.to_str().unwrap(), "c1", &[], &logs).unwrap();
    let http = free_addr();
    let first = start_worker(&root, &http, &logs);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (addr, stop, acked) = (collector.thrift_addr.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(publisher(addr, stop, acked));
        })
    };

    // A minute with data sealed by the first worker, within 3 s of its end.
    let before = until_blocking(
        "a sealed minute with data",
        Duration::from_secs(150),
        || {
            let s = minutes::sealed_dirs(&root, "clicks");
            s.values().any(|(m, _)| m.records > 0).then_some(s)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", first.log()));
    for (m, _) in before.values().filter(|(m, _)| m.records > 0) {
        let delay = m.sealed_at - m.minute.end();
        eprintln!(
            "minute {} sealed {} ms after its end",
            m.minute,
            delay.num_milliseconds()
        );
        assert!(
            delay < chrono::Duration::seconds(3),
            "{} sealed {delay} after its end",
            m.minute
        );
    }
    // The counter moves at the end of the pass that sealed the minute, which may
    // finish just after the minute's `_SUCCESS` appears.
    let body = until_blocking(
        "the worker to count the sealed minute",
        Duration::from_secs(30),
        || {
            let (_, body) = http_get(&http, "/metrics").ok()?;
            (metric(&body, "conduit_worker_sealed_dirs_total{job=\"local\"}")? >= 1.0)
                .then_some(body)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", first.log()));
    assert_eq!(metric(&body, "conduit_worker_lease_held"), Some(1.0));
    let (status, health) = http_get(&http, "/health").unwrap();
    assert_eq!(status, 200);
    assert!(health.contains("\"lease\":\"held\""), "{health}");
    let files_before: BTreeMap<PathBuf, BTreeMap<String, u64>> =
        before.keys().map(|d| (d.clone(), dir_files(d))).collect();

    // Kill -9 mid-run; a new worker takes over once the lease expires.
    let mut first = first;
    first.kill9();
    let second = start_worker(&root, &http, &logs);
    until_blocking(
        "the restarted worker to hold the lease",
        Duration::from_secs(30),
        || {
            http_get(&http, "/health")
                .ok()
                .filter(|(_, b)| b.contains("\"lease\":\"held\""))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", second.log()));

    // Stop publishing and the collector (all files closed); everything gets sealed.
    // Let a few calls land after the restart.
    let at_takeover = acked.load(Ordering::Relaxed);
    until_blocking(
        "calls acked after the takeover",
        Duration::from_secs(30),
        || (acked.load(Ordering::Relaxed) >= at_takeover + 5).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", second.log()));
    stop.store(true, Ordering::Relaxed);
    publishing.join().unwrap();
    let acked = acked.load(Ordering::Relaxed);
    assert!(collector.terminate().unwrap().success());
    let data = root.join("data/clicks/c1");
    let after = until_blocking("every file sealed", Duration::from_secs(90), || {
        let waiting = std::fs::read_dir(&data)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('_'))
                    .count()
            })
            .unwrap_or(0);
        let s = minutes::sealed_dirs(&root, "clicks");
        let records: u64 = s.values().map(|(m, _)| m.records).sum();
        (waiting == 0 && records == acked).then_some(s)
    })
    .unwrap_or_else(|e| {
        let s = minutes::sealed_dirs(&root, "clicks");
        let records: u64 = s.values().map(|(m, _)| m.records).sum();
        panic!(
            "{e}: {records} records sealed, {acked} acknowledged\nworker log:\n{}",
            second.log()
        )
    });
    let total: u64 = after.values().map(|(m, _)| m.records).sum();
    assert_eq!(total, acked, "records in manifests == records acknowledged");
    assert!(acked > 0);
    for (dir, (_, bytes)) in &before {
        assert_eq!(&after[dir].1, bytes, "{} manifest unchanged", dir.display());
        assert_eq!(
            dir_files(dir),
            files_before[dir],
            "{} files unchanged",
            dir.display()
        );
    }
    // Minutes are contiguous: no hole between the first and the last sealed one.
    let minutes: Vec<_> = after.values().map(|(m, _)| m.minute).collect();
    for pair in minutes.windows(2) {
        assert_eq!(pair[0].next().unwrap(), pair[1]);
    }
    eprintln!(
        "{acked} events acknowledged and sealed in {} minutes",
        minutes.len()
    );
}
