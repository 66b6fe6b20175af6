//! `conduit worker` as a process next to a `conduit collector` process on local
//! disk, in real time: minutes are sealed within 3 s of their end while the
//! collector is healthy; the worker is killed with SIGKILL mid-run and restarted;
//! in the end the records in manifests equal the records acknowledged, and
//! directories sealed before the kill never changed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conduit_core::scribe::{decode_reply, encode_log_call, ReplyValue, ResultCode};
use conduit_core::Manifest;
use conduit_tests::harness::{http_get, metric};
use conduit_tests::{conduit_bin, free_port, wait_for, CollectorProcess};

struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(root: &Path, http: &str, logs: &Path, n: u32) -> Worker {
        let log = logs.join(format!("worker-{n}.log"));
        let child = Command::new(conduit_bin())
            .args([
                "worker",
                "--root",
                root.to_str().unwrap(),
                "--cluster",
                "dc1",
            ])
            .args(["--http", http, "--lease-secs", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        Worker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every sealed minute directory of `topic` with its manifest and raw marker.
fn sealed(root: &Path, topic: &str) -> BTreeMap<PathBuf, (Manifest, Vec<u8>)> {
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
            out.insert(dir, (m, bytes));
        }
    }
    out
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
fn publisher(addr: String, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) {
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let payloads: Vec<String> = (0..20)
            .map(|i| format!("{{\"n\":{n},\"i\":{i}}}"))
            .collect();
        let entries: Vec<(&[u8], &[u8])> = payloads
            .iter()
            .map(|p| (b"clicks".as_slice(), p.as_bytes()))
            .collect();
        let mut out = Vec::new();
        encode_log_call(n as i32 + 1, &entries, &mut out);
        stream.write_all(&out).unwrap();
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut frame).unwrap();
        if let ReplyValue::ResultCode(ResultCode::Ok) =
            decode_reply(bytes::Bytes::from(frame)).unwrap().value
        {
            acked.fetch_add(20, Ordering::Relaxed);
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_worker_restarts_without_loss_duplicates_or_changed_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut collector = CollectorProcess::start(root.to_str().unwrap(), "c1", &[], &logs).unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let first = Worker::start(&root, &http, &logs, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (addr, stop, acked) = (collector.thrift_addr.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || publisher(addr, stop, acked))
    };

    // A minute with data sealed by the first worker, within 3 s of its end.
    let before = wait_for(
        "a sealed minute with data",
        Duration::from_secs(150),
        || {
            let s = sealed(&root, "clicks");
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
    let (_, body) = http_get(&http, "/metrics").unwrap();
    assert!(metric(&body, "conduit_worker_minutes_sealed_total{job=\"local\"}").unwrap() >= 1.0);
    assert_eq!(metric(&body, "conduit_worker_lease_held"), Some(1.0));
    let (status, health) = http_get(&http, "/health").unwrap();
    assert_eq!(status, 200);
    assert!(health.contains("\"lease\":\"held\""), "{health}");
    let files_before: BTreeMap<PathBuf, BTreeMap<String, u64>> =
        before.keys().map(|d| (d.clone(), dir_files(d))).collect();

    // Kill -9 mid-run; a new worker takes over once the lease expires.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = Worker::start(&root, &http, &logs, 2);
    wait_for(
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
    std::thread::sleep(Duration::from_millis(500)); // let a few calls land after the restart
    stop.store(true, Ordering::Relaxed);
    publishing.join().unwrap();
    let acked = acked.load(Ordering::Relaxed);
    assert!(collector.terminate().unwrap().success());
    let data = root.join("data/clicks/c1");
    let after = wait_for("every file sealed", Duration::from_secs(90), || {
        let waiting = std::fs::read_dir(&data)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('_'))
                    .count()
            })
            .unwrap_or(0);
        let s = sealed(&root, "clicks");
        let records: u64 = s.values().map(|(m, _)| m.records).sum();
        (waiting == 0 && records == acked).then_some(s)
    })
    .unwrap_or_else(|e| {
        let s = sealed(&root, "clicks");
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
