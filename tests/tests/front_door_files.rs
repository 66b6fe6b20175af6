//! The front door, open files and many topics (issue 14, first row): a client that
//! sends thousands of distinct topics (a topic-per-user bug) against the real
//! `conduit collector` binary, under a low open-file limit (`ulimit -n`) and with
//! the normal one.
//!
//! What must hold meanwhile: well-behaved clients keep being acknowledged, `/health`
//! answers, heartbeats keep being written, the many-topic client gets `OK` or
//! `TRY_LATER` (never a hang), every acknowledged event is stored, and SIGTERM stops
//! the collector within its drain time. A `LogBatch` of thousands of topics is
//! stored exactly once even when the collector is killed while it is half written
//! and the batch is retried, twice at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conduit_core::format::{decode_file, Encoding};
use conduit_core::scribe::ResultCode;
use conduit_testkit::process::{http_get, metric, CollectorProcess};
use conduit_testkit::runtime;
use conduit_testkit::scribe::Client;
use conduit_testkit::wait::until_blocking;

const ID: &str = "c1";
/// The open-file limit the collector runs under in the fd tests.
const FD_LIMIT: u64 = 256;
/// How long any one call may wait for its answer before it counts as a hang.
const HANG: Duration = Duration::from_secs(60);
/// How long SIGTERM may take (the collector's documented drain time).
const DRAIN: Duration = Duration::from_secs(30);

struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Scene { dir }
    }

    fn root(&self) -> String {
        self.dir.path().join("root").display().to_string()
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// A config file with `[collector]` settings `collector` (a cluster `dc1` at
    /// the scene's root); its path.
    fn config(&self, collector: &str) -> String {
        let path = self.dir.path().join("conduit.toml");
        let text = format!(
            "[clusters.dc1]\nroot = {:?}\n\n[collector]\n{collector}\n",
            self.root()
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// Topic directories under `data/`.
    fn topics_on_disk(&self) -> usize {
        std::fs::read_dir(Path::new(&self.root()).join("data"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// How often each payload is stored, over every file of every topic.
    fn stored(&self) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        let data = Path::new(&self.root()).join("data");
        for topic in std::fs::read_dir(&data).unwrap() {
            let dir = topic.unwrap().path().join(ID);
            for file in std::fs::read_dir(&dir).unwrap() {
                let path = file.unwrap().path();
                let buf = std::fs::read(&path).unwrap();
                let shown = path.display().to_string();
                let decoded = decode_file(&shown, &buf, Encoding::Lines)
                    .unwrap_or_else(|e| panic!("decode {shown}: {e}"));
                assert!(decoded.scan.is_closed(), "{shown} is not closed");
                for p in decoded.payloads {
                    *seen
                        .entry(String::from_utf8(p.to_vec()).unwrap())
                        .or_default() += 1;
                }
            }
        }
        seen
    }
}

/// What a well-behaved client saw: every call's latency and answer.
#[derive(Debug, Default)]
struct Steady {
    /// (when the call was sent, how long its answer took, the answer; `None` when
    /// none came within [`HANG`]).
    calls: Vec<(Instant, Duration, Option<ResultCode>)>,
    /// Payloads of acknowledged calls.
    acked: Vec<String>,
}

impl Steady {
    /// Latencies of the calls sent in `window`.
    fn latencies_in(&self, from: Instant, to: Instant) -> Vec<Duration> {
        self.calls
            .iter()
            .filter(|(at, _, _)| *at >= from && *at <= to)
            .map(|(_, d, _)| *d)
            .collect()
    }
}

/// A well-behaved client: `Log` calls of 10 events to its own topic, one every
/// 20 ms, until `stop`; stops at the first unanswered call.
async fn steady(addr: String, k: usize, stop: Arc<AtomicBool>) -> Steady {
    let mut report = Steady::default();
    let mut client = Client::connect(&addr).await;
    let topic = format!("steady_{k}");
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let payloads: Vec<String> = (n..n + 10).map(|i| format!("s{k}-{i}")).collect();
        n += 10;
        let entries: Vec<(&str, &str)> = payloads
            .iter()
            .map(|p| (topic.as_str(), p.as_str()))
            .collect();
        let sent = Instant::now();
        let code = client.try_log(&entries, HANG).await;
        report.calls.push((sent, sent.elapsed(), code));
        match code {
            Some(ResultCode::Ok) => report.acked.extend(payloads),
            Some(ResultCode::TryLater) => {}
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report
}

/// One `/health` request: how long it took, and the status and body (or why
/// there was none).
type HealthProbe = (Duration, Result<(u16, String), String>);

/// Watches `/health` and the heartbeat file until `stop`: every `/health` answer,
/// and when each new heartbeat was first seen (counted in `beats` as it goes).
struct Watch {
    health: Vec<HealthProbe>,
    beats: Vec<Instant>,
}

fn watch(
    scene: &Scene,
    http: &str,
    stop: Arc<AtomicBool>,
    beats: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Watch> {
    let http = http.to_owned();
    let root = scene.root();
    std::thread::spawn(move || {
        let heartbeat = Path::new(&root).join("system/heartbeats/dc1/c1.json");
        let mut out = Watch {
            health: Vec::new(),
            beats: Vec::new(),
        };
        let mut last = None;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let answer = http_get(&http, "/health").map_err(|e| e.to_string());
            out.health.push((t.elapsed(), answer));
            let beat = std::fs::read_to_string(&heartbeat).ok();
            if beat.is_some() && beat != last {
                out.beats.push(Instant::now());
                beats.store(out.beats.len(), Ordering::Relaxed);
                last = beat;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        out
    })
}

impl Watch {
    /// Asserts `/health` always answered `200` within 5 s, with storage healthy,
    /// and that heartbeats kept coming (never more than 5 s apart).
    fn assert_alive(&self, log: &str) {
        assert!(!self.health.is_empty());
        for (took, answer) in &self.health {
            let (status, body) = answer
                .as_ref()
                .unwrap_or_else(|e| panic!("/health did not answer: {e}; log:\n{log}"));
            assert_eq!(*status, 200, "/health: {body}");
            assert!(body.contains(r#""storage_healthy":true"#), "{body}");
            assert!(*took < Duration::from_secs(5), "/health took {took:?}");
        }
        assert!(self.beats.len() >= 2, "heartbeats: {:?}", self.beats);
        let gap = self.beats.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            gap < Duration::from_secs(5),
            "heartbeats stopped for {gap:?}"
        );
    }
}

/// `n` entries to `n` distinct topics `{prefix}_{i}`, payload `{prefix}-{i}`.
fn many_topics(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}_{i}"), format!("{prefix}-{i}")))
        .collect()
}

/// Sends `entries` with `Log` until acknowledged: each answer must come within
/// [`HANG`]; `TRY_LATER` is retried until `deadline`. The number of `TRY_LATER`s.
async fn log_until_acked(
    client: &mut Client,
    entries: &[(String, String)],
    deadline: Instant,
) -> usize {
    let mut try_later = 0;
    loop {
        let code = client
            .try_log(entries, HANG)
            .await
            .expect("the many-topic call is answered (OK or TRY_LATER), never left hanging");
        match code {
            ResultCode::Ok => return try_later,
            ResultCode::TryLater => {
                try_later += 1;
                assert!(
                    Instant::now() < deadline,
                    "still TRY_LATER after {try_later} tries"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    format!(
        "n={} p50={:?} p99={:?} max={:?}",
        latencies.len(),
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies.last().unwrap()
    )
}

/// SIGTERM: the collector exits cleanly within [`DRAIN`]; how long it took.
fn terminate_within_drain(collector: &mut CollectorProcess) -> Duration {
    let t = Instant::now();
    let status = collector
        .terminate()
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", collector.log()));
    let took = t.elapsed();
    assert!(status.success(), "exit {status}; log:\n{}", collector.log());
    assert!(took < DRAIN, "SIGTERM took {took:?}");
    took
}

/// Runs the attack `attack` while two steady clients and the `/health` and
/// heartbeat watcher run; checks that they were served throughout, then stops the
/// collector with SIGTERM and checks that every acknowledged event is stored.
/// Returns the collector's metrics as of just before SIGTERM.
fn under_attack<F>(scene: &Scene, collector: &mut CollectorProcess, attack: F) -> String
where
    F: std::future::Future<Output = Vec<(String, String)>>,
{
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(AtomicUsize::new(0));
    let watcher = watch(scene, &collector.http_addr, stop.clone(), beats.clone());
    let steadies: Vec<_> = (0..2)
        .map(|k| rt.spawn(steady(collector.thrift_addr.clone(), k, stop.clone())))
        .collect();
    let started = Instant::now();
    let acked_attack = rt.block_on(attack);
    let ended = Instant::now();
    // An attack can be over within one heartbeat interval: watch until the
    // collector has written a heartbeat after it, so the watcher saw at least
    // one beat follow another (a collector that stopped beating fails here).
    let beats_at_end = beats.load(Ordering::Relaxed);
    until_blocking(
        "the watcher to see a heartbeat written after the attack",
        Duration::from_secs(5),
        || (beats.load(Ordering::Relaxed) > beats_at_end.max(1)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", collector.log()));
    stop.store(true, Ordering::Relaxed);
    let steadies: Vec<Steady> = rt.block_on(async {
        let mut out = Vec::new();
        for s in steadies {
            out.push(s.await.unwrap());
        }
        out
    });
    let watched = watcher.join().unwrap();
    let log = collector.log();
    for (k, s) in steadies.iter().enumerate() {
        for (_, took, code) in &s.calls {
            assert_eq!(
                *code,
                Some(ResultCode::Ok),
                "steady client {k}: a call took {took:?}; log:\n{log}"
            );
        }
        let mut during = s.latencies_in(started, ended);
        assert!(
            !during.is_empty(),
            "steady client {k} was not served during the attack"
        );
        let max = *during.iter().max().unwrap();
        eprintln!(
            "steady client {k} during the attack ({:?}): {}",
            ended - started,
            summary(&mut during)
        );
        assert!(
            max < Duration::from_secs(5),
            "steady client {k} waited {max:?}"
        );
    }
    watched.assert_alive(&log);
    let metrics = collector.metrics();
    let took = terminate_within_drain(collector);
    eprintln!("SIGTERM to exit: {took:?}");
    let stored = scene.stored();
    for s in &steadies {
        for p in &s.acked {
            assert_eq!(stored.get(p), Some(&1), "acknowledged {p} stored once");
        }
    }
    for (_, p) in &acked_attack {
        assert!(stored.contains_key(p), "acknowledged {p} is stored");
    }
    metrics
}

/// ~2,000 distinct topics from one client, past the collector's open-file limit
/// (`ulimit -n 256`), with the default settings: the collector keeps at most half
/// its descriptors as data files (closing idle files before opening new ones), so
/// every call is answered, other clients keep their acks, `/health` and heartbeats
/// keep working, and SIGTERM ends it within the drain time.
#[test]
fn topics_past_the_fd_limit_never_hang_the_collector() {
    let scene = Scene::new();
    let mut collector =
        CollectorProcess::start_with_fd_limit(&scene.root(), ID, &[], &scene.logs(), FD_LIMIT)
            .unwrap();
    let log = collector.log();
    assert!(
        log.contains(r#""max_open_files":128"#),
        "the collector logs the open-file limit it derives from RLIMIT_NOFILE; log:\n{log}"
    );
    let addr = collector.thrift_addr.clone();
    let metrics = under_attack(&scene, &mut collector, async move {
        let mut client = Client::connect(&addr).await;
        let deadline = Instant::now() + HANG;
        let mut acked = Vec::new();
        for call in 0..4 {
            let entries = many_topics(&format!("user{call}"), 500);
            log_until_acked(&mut client, &entries, deadline).await;
            acked.extend(entries);
        }
        acked
    });
    let evicted = metric(&metrics, "conduit_collector_files_evicted_total").unwrap();
    assert!(
        evicted > 1000.0,
        "idle files closed at the limit: {evicted}"
    );
    let open = metric(&metrics, "conduit_collector_open_files").unwrap();
    assert!(open <= 128.0, "open data files: {open}");
    assert_eq!(scene.topics_on_disk(), 2002);
}

/// The same attack with `max_open_files` set far above what `ulimit -n` allows:
/// creating a file fails with EMFILE. That is answered `TRY_LATER` (reason
/// `open_files`) and counted; storage stays healthy, idle files are closed and the
/// collector adapts, so the client's retries succeed; nothing else is disturbed.
#[test]
fn running_out_of_descriptors_is_try_later_never_an_outage() {
    let scene = Scene::new();
    let config = scene.config("max_open_files = 100000");
    let mut collector = CollectorProcess::start_with_fd_limit(
        &scene.root(),
        ID,
        &["--config", &config],
        &scene.logs(),
        FD_LIMIT,
    )
    .unwrap();
    let addr = collector.thrift_addr.clone();
    let metrics = under_attack(&scene, &mut collector, async move {
        let mut client = Client::connect(&addr).await;
        let entries = many_topics("user", 600);
        let try_later = log_until_acked(&mut client, &entries, Instant::now() + HANG).await;
        assert!(
            try_later >= 1,
            "the call that ran out of descriptors got TRY_LATER"
        );
        entries
    });
    let emfile = metric(
        &metrics,
        r#"conduit_collector_fd_exhausted_total{op="create"}"#,
    )
    .unwrap();
    assert!(emfile >= 1.0, "EMFILE counted: {metrics}");
    let try_later = metric(
        &metrics,
        r#"conduit_collector_try_later_total{reason="open_files"}"#,
    )
    .unwrap();
    assert!(try_later >= 1.0, "TRY_LATER open_files counted");
    assert_eq!(
        metric(
            &metrics,
            r#"conduit_collector_storage_errors_total{op="write"}"#
        )
        .unwrap_or(0.0),
        0.0,
        "EMFILE is not a storage failure"
    );
    let log = collector.log();
    assert!(
        log.contains("too many open files"),
        "the log names the condition; log:\n{log}"
    );
}

/// One call with 3,000 topics (normal limits) while four clients write to their
/// own topics: the call is spread over rounds of at most `max_new_files_per_round`
/// new files, the other clients are committed in every round. Prints the other
/// clients' ack latency during the call.
#[test]
fn a_call_with_thousands_of_topics_does_not_stall_other_clients() {
    let scene = Scene::new();
    let mut collector = CollectorProcess::start(&scene.root(), ID, &[], &scene.logs()).unwrap();
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let steadies: Vec<_> = (0..4)
        .map(|k| rt.spawn(steady(collector.thrift_addr.clone(), k, stop.clone())))
        .collect();
    let addr = collector.thrift_addr.clone();
    let entries = many_topics("user", 3000);
    let window = Arc::new(Mutex::new(None));
    let big = {
        let window = window.clone();
        let entries = entries.clone();
        rt.block_on(async move {
            // Let the steady clients open their files first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut client = Client::connect(&addr).await;
            let sent = Instant::now();
            let code = client.try_log(&entries, HANG).await;
            *window.lock().unwrap() = Some((sent, Instant::now()));
            code
        })
    };
    stop.store(true, Ordering::Relaxed);
    let steadies: Vec<Steady> = rt.block_on(async {
        let mut out = Vec::new();
        for s in steadies {
            out.push(s.await.unwrap());
        }
        out
    });
    assert_eq!(big, Some(ResultCode::Ok), "log:\n{}", collector.log());
    let (from, to) = window.lock().unwrap().unwrap();
    eprintln!("the 3,000-topic call took {:?}", to - from);
    let mut all = Vec::new();
    for (k, s) in steadies.iter().enumerate() {
        for (_, took, code) in &s.calls {
            assert_eq!(*code, Some(ResultCode::Ok), "steady {k}: {took:?}");
        }
        all.extend(s.latencies_in(from, to));
    }
    assert!(
        !all.is_empty(),
        "the other clients were served during the call"
    );
    eprintln!("other clients' acks during the call: {}", summary(&mut all));
    let max = *all.last().unwrap();
    assert!(
        max < Duration::from_secs(2),
        "another client waited {max:?}"
    );
    let metrics = collector.metrics();
    let deferred = metric(&metrics, "conduit_collector_deferred_parts_total").unwrap();
    assert!(deferred > 0.0, "the call was spread over rounds");
    terminate_within_drain(&mut collector);
    let stored = scene.stored();
    for (_, p) in &entries {
        assert_eq!(stored.get(p), Some(&1), "{p} stored once");
    }
    for s in &steadies {
        for p in &s.acked {
            assert_eq!(stored.get(p), Some(&1), "{p} stored once");
        }
    }
}

/// A `LogBatch` of 3,000 topics, written a few topics per round (and, past
/// `max_open_files`, through files closed early): the collector is killed (-9)
/// half way, restarted, and the batch retried on two connections at once. Both
/// are acknowledged and every event is stored exactly once: the parts durable
/// before the kill are known (snapshot and marks), the rest is written once.
#[test]
fn a_many_topic_batch_killed_half_way_is_exact_on_retry() {
    let scene = Scene::new();
    let config = scene.config("max_new_files_per_round = 8\nmax_open_files = 50");
    let extra = ["--config", config.as_str()];
    let mut collector = CollectorProcess::start(&scene.root(), ID, &extra, &scene.logs()).unwrap();
    let entries = many_topics("user", 3000);
    let rt = runtime();
    let addr = collector.thrift_addr.clone();
    let first = {
        let entries = entries.clone();
        rt.spawn(async move {
            let mut client = Client::connect(&addr).await;
            client.try_log_batch("pub-1", 7, &entries, HANG).await
        })
    };
    until_blocking("part of the batch written", HANG, || {
        (scene.topics_on_disk() >= 200).then_some(())
    })
    .unwrap();
    collector.kill9();
    let answered = rt.block_on(first).unwrap();
    assert_eq!(answered, None, "killed before the batch was acknowledged");
    let written = scene.topics_on_disk();
    assert!(written < 3000, "killed half way: {written} topics written");

    let mut collector = CollectorProcess::start(&scene.root(), ID, &extra, &scene.logs()).unwrap();
    let retries: Vec<_> = (0..2)
        .map(|_| {
            let addr = collector.thrift_addr.clone();
            let entries = entries.clone();
            rt.spawn(async move {
                let mut client = Client::connect(&addr).await;
                client.try_log_batch("pub-1", 7, &entries, HANG).await
            })
        })
        .collect();
    for r in retries {
        assert_eq!(
            rt.block_on(r).unwrap(),
            Some(ResultCode::Ok),
            "log:\n{}",
            collector.log()
        );
    }
    terminate_within_drain(&mut collector);
    let stored = scene.stored();
    for (_, p) in &entries {
        assert_eq!(stored.get(p), Some(&1), "{p} stored exactly once");
    }
    assert_eq!(stored.len(), entries.len());
}
