//! What the front-door tests share: a collector process with a `[collector]`
//! config, its RSS, a well-behaved client measuring its acks while an attack runs,
//! and raw sockets from chosen loopback addresses.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conduit_core::format::{decode_file, Encoding};
use conduit_core::scribe::ResultCode;
use conduit_testkit::process::{metric, CollectorProcess};
use conduit_testkit::scribe::Client;
use tokio::net::{TcpSocket, TcpStream};

/// The collector id every scene uses.
pub const ID: &str = "c1";

/// The topic of the well-behaved client.
pub const STEADY_TOPIC: &str = "steady";

pub use conduit_testkit::runtime;

/// A storage root and a log directory in a temporary directory.
pub struct Scene {
    pub dir: tempfile::TempDir,
}

impl Scene {
    pub fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Scene { dir }
    }

    pub fn root(&self) -> String {
        self.dir.path().join("root").display().to_string()
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Writes a config file with `collector` as its `[collector]` table.
    pub fn config(&self, collector: &str) -> String {
        let path = self.dir.path().join("conduit.toml");
        std::fs::write(&path, format!("[collector]\n{collector}\n")).unwrap();
        path.display().to_string()
    }

    /// Starts `conduit collector` with `collector` as its `[collector]` table.
    pub fn start(&self, collector: &str) -> CollectorProcess {
        let config = self.config(collector);
        CollectorProcess::start(&self.root(), ID, &["--config", &config], &self.logs())
            .expect("collector starts")
    }

    /// Every payload stored for `topic` (a `lines` topic), in file order.
    pub fn payloads(&self, topic: &str) -> Vec<String> {
        self.raw_payloads(topic)
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect()
    }

    /// Every payload stored for `topic` (a `lines` topic), in file order, as bytes.
    pub fn raw_payloads(&self, topic: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(&self.root()).join("data").join(topic).join(ID);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => return Vec::new(),
        };
        files.sort();
        files
            .iter()
            .flat_map(|p| {
                let shown = p.display().to_string();
                let bytes = std::fs::read(p).unwrap();
                decode_file(&shown, &bytes, Encoding::Lines)
                    .unwrap_or_else(|e| panic!("decode {shown}: {e}"))
                    .payloads
            })
            .map(|p| p.to_vec())
            .collect()
    }
}

/// RSS of a process in MiB: (now, peak).
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A sample of a Prometheus counter or gauge (0 when absent).
pub fn sample(collector: &CollectorProcess, name: &str) -> f64 {
    metric(&collector.metrics(), name).unwrap_or(0.0)
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x), so
/// that a test can play several client hosts.
pub async fn connect_from(from: &str, addr: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr.parse().unwrap()).await
}

/// What the well-behaved client saw.
#[derive(Debug, Clone, Default)]
pub struct Steady {
    /// Time from a batch's first attempt to its `OK`, per batch.
    pub ack_latencies: Vec<Duration>,
    /// `TRY_LATER` answers (each followed by a retry).
    pub try_later: u64,
    /// Payloads acknowledged.
    pub acked: BTreeSet<String>,
}

impl Steady {
    /// The `q` quantile of the ack latencies (0 with none).
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l = self.ack_latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() - 1) as f64 * q).round() as usize]
    }

    pub fn max(&self) -> Duration {
        self.ack_latencies.iter().max().copied().unwrap_or_default()
    }

    /// One line for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "{} batches acked, ack latency p50 {:?} p99 {:?} max {:?}, {} TRY_LATER",
            self.ack_latencies.len(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.max(),
            self.try_later
        )
    }
}

/// A publisher-like client: batches of 10 events to [`STEADY_TOPIC`], one after
/// another, each retried after `TRY_LATER` (after a 20 ms backoff, as a publisher
/// backs off) until acknowledged; runs until stopped.
pub struct SteadyClient {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Steady>>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyClient {
    pub fn start(rt: &tokio::runtime::Runtime, addr: &str, tag: &str) -> SteadyClient {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Steady::default()));
        let (addr, tag) = (addr.to_owned(), tag.to_owned());
        let task = {
            let (stop, seen) = (stop.clone(), seen.clone());
            rt.spawn(async move {
                let mut client = Client::connect(&addr).await;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<String> = (n..n + 10).map(|i| format!("{tag}-{i}")).collect();
                    let started = Instant::now();
                    loop {
                        let code = client
                            .try_log(
                                &batch
                                    .iter()
                                    .map(|p| (STEADY_TOPIC, p.as_str()))
                                    .collect::<Vec<_>>(),
                                Duration::from_secs(60),
                            )
                            .await
                            .expect("the well-behaved client's connection stays up");
                        if code == ResultCode::Ok {
                            break;
                        }
                        seen.lock().unwrap().try_later += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let mut seen = seen.lock().unwrap();
                    seen.ack_latencies.push(started.elapsed());
                    seen.acked.extend(batch);
                    n += 10;
                }
            })
        };
        SteadyClient { stop, seen, task }
    }

    /// Batches acknowledged so far.
    pub fn acked_batches(&self) -> usize {
        self.seen.lock().unwrap().ack_latencies.len()
    }

    /// Waits until `more` further batches are acknowledged.
    pub fn progressed(&self, more: usize, within: Duration) {
        let before = self.acked_batches();
        conduit_testkit::wait::until_blocking(
            "the well-behaved client to get acks",
            within,
            || (self.acked_batches() >= before + more).then_some(()),
        )
        .unwrap();
    }

    /// What it saw from now on (latencies recorded before are dropped).
    pub fn reset(&self) {
        let mut seen = self.seen.lock().unwrap();
        seen.ack_latencies.clear();
        seen.try_later = 0;
    }

    /// Stops it and returns what it saw.
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> Steady {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(self.task).expect("the well-behaved client");
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

/// `n` bytes of a compressible, newline-free payload.
pub fn filler(n: usize) -> Vec<u8> {
    let mut bytes = b"abcdefgh".repeat(n.div_ceil(8));
    bytes.truncate(n);
    bytes
}
