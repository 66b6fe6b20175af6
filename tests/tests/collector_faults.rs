//! Faults against the real `conduit collector` binary: kill -9 under load, garbage
//! on the wire, SIGTERM with calls in flight.
//!
//! Clients are Rust tasks speaking Scribe with `conduit_core::scribe` (the test
//! kit's raw client, or raw bytes for garbage). Every event
//! is unique (`{"w":W,"n":N}`), every call's fate is recorded (OK, or no answer /
//! TRY_LATER), and at the end every file is decoded and every payload counted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit_core::format::{decode_file, Decoded, Encoding};
use conduit_core::scribe::{encode_log_call, ResultCode, Transport};
use conduit_testkit::process::{metric, CollectorProcess};
use conduit_testkit::runtime;
use conduit_testkit::scribe::{closed_by_peer, Client};
use conduit_testkit::wait::until_blocking;
use rand::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ID: &str = "c1";
/// Events per Log call of the load workers.
const BATCH: u64 = 200;

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

    fn start(&self, extra: &[&str]) -> CollectorProcess {
        CollectorProcess::start(&self.root(), ID, extra, &self.dir.path().join("logs"))
            .expect("collector starts")
    }

    /// Every data file of this collector, any topic, sorted by path.
    fn all_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let data = Path::new(&self.root()).join("data");
        let Ok(topics) = std::fs::read_dir(&data) else {
            return files;
        };
        for topic in topics {
            let dir = topic.unwrap().path().join(ID);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                files.extend(entries.map(|e| e.unwrap().path()));
            }
        }
        files.sort();
        files
    }

    fn decode_all(&self) -> Vec<(PathBuf, Decoded)> {
        self.all_files()
            .into_iter()
            .map(|p| {
                let buf = std::fs::read(&p).unwrap();
                let shown = p.display().to_string();
                let d = decode_file(&shown, &buf, Encoding::Lines)
                    .unwrap_or_else(|e| panic!("decode {shown}: {e}"));
                (p, d)
            })
            .collect()
    }

    /// Files without a close trailer (or with bytes after it).
    fn unclosed(&self) -> Vec<PathBuf> {
        self.decode_all()
            .into_iter()
            .filter(|(_, d)| !d.scan.is_closed())
            .map(|(p, _)| p)
            .collect()
    }
}

fn payload(w: u64, n: u64) -> String {
    format!(r#"{{"w":{w},"n":{n}}}"#)
}

/// What one Log call of a load worker came to.
#[derive(Debug, Clone, Copy)]
struct CallRecord {
    w: u64,
    /// First event number; the call holds `first..first + BATCH`.
    first: u64,
    acked: bool,
}

/// A load worker: Log calls of `BATCH` unique events on its own connection until
/// `stop` is set or a call is not acknowledged (which ends the worker: the
/// collector went away or is shutting down). Returns every call's fate and the
/// next unused event number.
async fn load_worker(
    addr: String,
    w: u64,
    mut next: u64,
    topic: String,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (Vec<CallRecord>, u64) {
    let mut records = Vec::new();
    let Ok(mut client) = Client::try_connect(&addr).await else {
        return (records, next);
    };
    while !stop.load(Ordering::Relaxed) {
        let first = next;
        next += BATCH;
        let entries: Vec<(&str, String)> = (first..first + BATCH)
            .map(|n| (topic.as_str(), payload(w, n)))
            .collect();
        let code = client.try_log(&entries, Duration::from_secs(30)).await;
        let ok = code == Some(ResultCode::Ok);
        records.push(CallRecord {
            w,
            first,
            acked: ok,
        });
        if !ok {
            break;
        }
        acked.fetch_add(BATCH, Ordering::Relaxed);
    }
    (records, next)
}

/// Starts `workers` load workers (ids `0..workers`, event numbers continuing from
/// `next`, topics `load_0`/`load_1`).
fn start_load(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    next: &[u64],
    acked: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Vec<CallRecord>, u64)>> {
    (0..next.len() as u64)
        .map(|w| {
            rt.spawn(load_worker(
                addr.to_string(),
                w,
                next[w as usize],
                format!("load_{}", w % 2),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

/// Waits (deadline 30 s) for the workers to end; records their calls.
fn join_load(
    rt: &tokio::runtime::Runtime,
    handles: Vec<tokio::task::JoinHandle<(Vec<CallRecord>, u64)>>,
    next: &mut [u64],
    calls: &mut Vec<CallRecord>,
) {
    rt.block_on(async {
        for (w, h) in handles.into_iter().enumerate() {
            let (records, n) = tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("a load worker ends within 30 s")
                .expect("load worker panicked");
            next[w] = n;
            calls.extend(records);
        }
    });
}

/// Counts every payload of every file and checks them against the calls: each
/// event of an acknowledged call exactly once, each event of an unacknowledged call
/// at most once, nothing else. Returns (acked events, unacked events stored).
fn check_exactly_once(scene: &Scene, calls: &[CallRecord]) -> (usize, usize) {
    let mut fate: HashMap<(u64, u64), bool> = HashMap::new();
    for c in calls {
        for n in c.first..c.first + BATCH {
            assert!(fate.insert((c.w, n), c.acked).is_none(), "event sent twice");
        }
    }
    let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
    for (path, decoded) in scene.decode_all() {
        let topic = path
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .file_name()
            .unwrap();
        let topic = topic.to_str().unwrap().to_string();
        for p in decoded.payloads {
            let v: serde_json::Value = serde_json::from_slice(&p)
                .unwrap_or_else(|e| panic!("{}: not an event {p:?}: {e}", path.display()));
            let (w, n) = (v["w"].as_u64().unwrap(), v["n"].as_u64().unwrap());
            assert_eq!(topic, format!("load_{}", w % 2), "event in the wrong topic");
            assert_eq!(p.as_ref(), payload(w, n).as_bytes(), "payload altered");
            *seen.entry((w, n)).or_default() += 1;
        }
    }
    let (mut acked, mut unacked_stored) = (0, 0);
    for (event, acked_call) in &fate {
        let count = seen.get(event).copied().unwrap_or(0);
        if *acked_call {
            assert_eq!(
                count, 1,
                "acknowledged event {event:?} stored {count} times"
            );
            acked += 1;
        } else {
            assert!(
                count <= 1,
                "unacknowledged event {event:?} stored {count} times"
            );
            unacked_stored += count;
        }
    }
    for event in seen.keys() {
        assert!(
            fate.contains_key(event),
            "stored event {event:?} was never sent"
        );
    }
    (acked, unacked_stored)
}

fn count_in_log(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// kill -9 under load from 4 connections, three times at different instants,
/// restarting on the same root and id each time: every acknowledged event is stored
/// exactly once, unacknowledged ones at most once, nothing else; each restart's
/// recovery closes exactly the files the kill left open before it says it is ready.
#[test]
fn kill9_under_load_keeps_acknowledged_events_exactly_once() {
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start(&[]);
    let mut next = vec![0u64; 4];
    let mut calls = Vec::new();
    const KILLS: usize = 3;
    const ACKED_BEFORE_KILL: u64 = 20_000;
    let mut recovered_total = 0;
    for round in 0..KILLS {
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = start_load(&rt, &collector.thrift_addr, &next, &acked, &stop);
        // A different amount of load before each kill (growing, plus a random
        // part), so the kills hit different instants of the commit cycle.
        let target = ACKED_BEFORE_KILL * (round as u64 + 1) + rand::rng().next_u64() % (50 * BATCH);
        until_blocking("acknowledged load", Duration::from_secs(30), || {
            (acked.load(Ordering::Relaxed) >= target).then_some(())
        })
        .unwrap();
        collector.kill9();
        let calls_before = calls.len();
        join_load(&rt, handles, &mut next, &mut calls);
        let unanswered = calls[calls_before..].iter().filter(|c| !c.acked).count();
        // Every worker ends with exactly one unanswered call (the one in flight).
        assert_eq!(
            unanswered, 4,
            "round {round}: one call in flight per worker"
        );

        let unclosed = scene.unclosed();
        collector = scene.start(&[]);
        // The restarted collector is ready only after recovery: every file is closed.
        let still = scene.unclosed();
        assert!(
            still.is_empty(),
            "round {round}: not closed by recovery: {still:?}"
        );
        let log = collector.log();
        assert_eq!(
            count_in_log(&log, "closed a file left open by a previous run"),
            unclosed.len(),
            "round {round}: recovery closes exactly the files the kill left open:\n{log}"
        );
        recovered_total += unclosed.len();
        eprintln!(
            "round {round}: killed after {} acked events; {} files left open and recovered; {:?}",
            acked.load(Ordering::Relaxed),
            unclosed.len(),
            t0.elapsed()
        );
    }
    assert!(recovered_total > 0, "the kills left files open to recover");
    // The last restart takes new load and stops cleanly.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = start_load(&rt, &collector.thrift_addr, &next, &acked, &stop);
    until_blocking(
        "load after the last restart",
        Duration::from_secs(30),
        || (acked.load(Ordering::Relaxed) >= 10 * BATCH).then_some(()),
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    join_load(&rt, handles, &mut next, &mut calls);
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");

    assert!(
        scene.unclosed().is_empty(),
        "every file is closed after SIGTERM"
    );
    let (acked_events, unacked_stored) = check_exactly_once(&scene, &calls);
    let unacked_calls = calls.iter().filter(|c| !c.acked).count();
    assert_eq!(
        unacked_calls,
        4 * KILLS,
        "only the calls in flight at a kill are unanswered"
    );
    eprintln!(
        "kill -9 x{KILLS}: {acked_events} acked events exactly once; {unacked_stored} of {} unacknowledged events stored; {:?}",
        unacked_calls as u64 * BATCH,
        t0.elapsed()
    );
}

/// The newest minute of this collector's data files, from their names.
fn newest_minute(scene: &Scene) -> Option<conduit_core::Minute> {
    scene
        .all_files()
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .filter_map(|name| conduit_core::layout::Layout::parse_collector_file_name(&name).ok())
        .map(|parsed| parsed.minute)
        .max()
}

/// kill -9 at a minute roll, under load from 4 connections: the collector closes
/// the rolled minute's files in the background while it acknowledges the new
/// minute's first rounds, and it is killed as soon as the first file of the new
/// minute appears (milliseconds after the roll). Every acknowledged event is
/// stored exactly once, unacknowledged ones at most once; the restart closes
/// exactly the files the kill left open, before it says it is ready.
#[test]
fn kill9_at_the_minute_roll_keeps_acknowledged_events_exactly_once() {
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start(&[]);
    let mut next = vec![0u64; 4];
    let mut calls = Vec::new();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = start_load(&rt, &collector.thrift_addr, &next, &acked, &stop);
    until_blocking("acknowledged load", Duration::from_secs(30), || {
        (acked.load(Ordering::Relaxed) >= 10 * BATCH).then_some(())
    })
    .unwrap();
    let first = newest_minute(&scene).expect("files of the current minute");
    until_blocking("a file of the next minute", Duration::from_secs(75), || {
        newest_minute(&scene).filter(|m| *m > first).map(|_| ())
    })
    .unwrap();
    collector.kill9();
    join_load(&rt, handles, &mut next, &mut calls);
    let acked_before_kill = acked.load(Ordering::Relaxed);

    let unclosed = scene.unclosed();
    collector = scene.start(&[]);
    let still = scene.unclosed();
    assert!(still.is_empty(), "not closed by recovery: {still:?}");
    let log = collector.log();
    assert_eq!(
        count_in_log(&log, "closed a file left open by a previous run"),
        unclosed.len(),
        "recovery closes exactly the files the kill left open:\n{log}"
    );

    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = start_load(&rt, &collector.thrift_addr, &next, &acked, &stop);
    until_blocking("load after the restart", Duration::from_secs(30), || {
        (acked.load(Ordering::Relaxed) >= 10 * BATCH).then_some(())
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    join_load(&rt, handles, &mut next, &mut calls);
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        scene.unclosed().is_empty(),
        "every file is closed after SIGTERM"
    );
    let (acked_events, unacked_stored) = check_exactly_once(&scene, &calls);
    assert_eq!(
        acked_events as u64,
        acked_before_kill + acked.load(Ordering::Relaxed),
        "every acknowledged call is counted"
    );
    eprintln!(
        "kill -9 at the roll to {}: {} files left open and recovered; {acked_events} acked events exactly once; {unacked_stored} unacknowledged events stored",
        newest_minute(&scene).map(|m| m.to_string()).unwrap_or_default(),
        unclosed.len()
    );
}

/// Garbage on other connections closes each of them and nothing else: a healthy
/// connection keeps getting OK throughout; `/metrics` counts each protocol error by
/// reason and the log names the size of the too-large frame.
#[test]
fn garbage_connections_are_closed_and_healthy_one_keeps_working() {
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start(&[]);
    let addr = collector.thrift_addr.clone();

    // The healthy connection: small Log calls, one after another, until stopped.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let healthy = {
        let (addr, acked, stop) = (addr.clone(), acked.clone(), stop.clone());
        rt.spawn(async move {
            let mut client = Client::connect(&addr).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let entries: Vec<(&str, String)> =
                    (n..n + 10).map(|i| ("healthy", payload(99, i))).collect();
                let code = client.try_log(&entries, Duration::from_secs(10)).await;
                assert_eq!(code, Some(ResultCode::Ok), "the healthy connection gets OK");
                n += 10;
                acked.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    let progressed = |what: &str| {
        let before = acked.load(Ordering::Relaxed);
        until_blocking(what, Duration::from_secs(10), || {
            (acked.load(Ordering::Relaxed) >= before + 20).then_some(())
        })
        .unwrap();
    };
    progressed("the healthy connection to start");

    // 4 KiB of random bytes. The first four are read as a frame length; redraw
    // until the collector can judge them without waiting for more bytes, and
    // until they are neither an unframed message's version word nor what the
    // collector names as another protocol (text, HTTP, TLS: `not_thrift`).
    let mut random = vec![0u8; 4096];
    let random_reason = loop {
        rand::rng().fill_bytes(&mut random);
        let first: [u8; 4] = random[..4].try_into().unwrap();
        if !matches!(Transport::detect(first, 64 << 20), Ok(Transport::Framed)) {
            continue;
        }
        let len = i32::from_be_bytes(random[..4].try_into().unwrap());
        if len < 0 {
            break "malformed"; // negative length
        }
        if len as usize > 64 << 20 {
            break "frame_too_large";
        }
    };
    // A frame whose 4092 bytes are random: for the decoder, not the framing.
    let mut random_frame = 4092u32.to_be_bytes().to_vec();
    random_frame.extend_from_slice(&random[4..]);
    // A frame announcing 1 GiB.
    let mut huge_frame = (1u32 << 30).to_be_bytes().to_vec();
    huge_frame.extend_from_slice(b"\x80\x01\x00\x01");
    // A Log call with the message type patched from CALL (1) to REPLY (2).
    let mut wrong_type = Vec::new();
    encode_log_call(7, &[(b"healthy", b"never stored")], &mut wrong_type);
    assert_eq!(&wrong_type[4..8], &[0x80, 0x01, 0x00, 0x01]);
    wrong_type[7] = 2;
    // A Log call whose list claims 2^31-1 entries.
    let mut huge_list = Vec::new();
    encode_log_call(8, &[(b"healthy", b"never stored")], &mut huge_list);
    let count_at = 4 + 4 + 4 + 3 + 4 + 3 + 1; // frame len, version, name, seqid, field, elem type
    assert_eq!(&huge_list[count_at..count_at + 4], &1u32.to_be_bytes());
    huge_list[count_at..count_at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    // The first half of a valid frame, then the client hangs up (write side).
    let mut truncated = Vec::new();
    encode_log_call(9, &[(b"healthy", b"never stored either")], &mut truncated);
    truncated.truncate(truncated.len() / 2);

    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("random bytes", random.clone(), false),
        ("random frame", random_frame, false),
        ("1 GiB frame header", huge_frame, false),
        ("truncated frame", truncated, true),
        ("REPLY instead of CALL", wrong_type, false),
        ("huge list count", huge_list, false),
    ];
    for (what, bytes, hang_up) in &cases {
        rt.block_on(async {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            // The collector may close (and reset) before it has read everything.
            let _ = s.write_all(bytes).await;
            if *hang_up {
                s.shutdown().await.expect("half-close");
            }
            assert!(
                closed_by_peer(&mut s, Duration::from_secs(10)).await,
                "the collector closes the connection that sent {what}"
            );
        });
        progressed(&format!(
            "the healthy connection to keep working after {what}"
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let healthy_events = rt.block_on(healthy).expect("healthy connection task");

    let body = collector.metrics();
    let errors = |reason: &str| {
        metric(
            &body,
            &format!(r#"conduit_collector_connection_errors_total{{reason="{reason}"}}"#),
        )
        .unwrap_or(0.0)
    };
    let reasons = [
        "frame_too_large",
        "truncated_frame",
        "wrong_message_type",
        "malformed",
        "io",
        "max_connections",
    ];
    let total: f64 = reasons.iter().map(|r| errors(r)).sum();
    assert_eq!(
        total,
        cases.len() as f64,
        "one connection error per bad connection:\n{body}"
    );
    let mut expect: HashMap<&str, f64> = HashMap::new();
    *expect.entry(random_reason).or_default() += 1.0;
    *expect.entry("frame_too_large").or_default() += 1.0;
    *expect.entry("truncated_frame").or_default() += 1.0;
    *expect.entry("wrong_message_type").or_default() += 1.0;
    *expect.entry("malformed").or_default() += 1.0; // huge list count
    for (reason, n) in &expect {
        // The random frame adds one of malformed/wrong_message_type on top.
        let got = errors(reason);
        assert!(
            got == *n || got == *n + 1.0,
            "{reason}: {got}, expected {n}:\n{body}"
        );
    }
    assert_eq!(errors("truncated_frame"), 1.0);
    assert_eq!(errors("io") + errors("max_connections"), 0.0);
    // Protocol errors are logged once per kind per 10 s: the line names the size
    // of the first too-large frame, the random bytes' if they were one.
    let first_too_large = if random_reason == "frame_too_large" {
        i32::from_be_bytes(random[..4].try_into().unwrap()) as u32
    } else {
        1 << 30
    };
    let log = collector.log();
    assert!(
        log.contains(&format!("frame of {first_too_large} bytes")),
        "the log names the size of the too-large frame ({first_too_large}):\n{log}"
    );
    // Every connection is gone (the healthy one closes as its task ends).
    until_blocking("no open connections", Duration::from_secs(10), || {
        (metric(&collector.metrics(), "conduit_collector_open_connections") == Some(0.0))
            .then_some(())
    })
    .unwrap();

    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(scene.unclosed().is_empty());
    // Exactly the healthy connection's events are stored; none from the garbage.
    let stored: Vec<String> = scene
        .decode_all()
        .into_iter()
        .flat_map(|(_, d)| d.payloads)
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (0..healthy_events).map(|i| payload(99, i)).collect();
    assert_eq!(stored, want);
    eprintln!(
        "garbage: {healthy_events} healthy events; {:?}",
        t0.elapsed()
    );
}

/// SIGTERM while 2 connections have calls in flight: exit status 0, every
/// acknowledged event stored exactly once (unacknowledged at most once), every file
/// closed, and the final heartbeat says `stopped`.
#[test]
fn sigterm_with_calls_in_flight_is_clean() {
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start(&[]);
    let mut next = vec![0u64; 2];
    let mut calls = Vec::new();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = start_load(&rt, &collector.thrift_addr, &next, &acked, &stop);
    until_blocking("load", Duration::from_secs(30), || {
        (acked.load(Ordering::Relaxed) >= 10_000).then_some(())
    })
    .unwrap();
    let status = collector.terminate().unwrap();
    join_load(&rt, handles, &mut next, &mut calls);
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        collector.log()
    );

    // Both workers were cut off by the shutdown (their last call unanswered or
    // TRY_LATER), not by `stop`.
    assert_eq!(calls.iter().filter(|c| !c.acked).count(), 2);
    assert!(scene.unclosed().is_empty(), "every file is closed");
    let (acked_events, unacked_stored) = check_exactly_once(&scene, &calls);
    assert!(acked_events >= 10_000);

    let heartbeat = Path::new(&scene.root()).join("system/heartbeats/dc1/c1.json");
    let beat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&heartbeat).unwrap()).unwrap();
    assert_eq!(beat["state"], "stopped", "{beat}");
    assert_eq!(beat["collector"], "c1");
    let set: HashSet<u64> = calls.iter().map(|c| c.w).collect();
    assert_eq!(set.len(), 2);
    eprintln!(
        "sigterm: {acked_events} acked events exactly once, {unacked_stored} unacknowledged stored; {:?}",
        t0.elapsed()
    );
}

/// A client that pipelines calls but never reads its replies (so the collector's
/// reply writer blocks) must not keep SIGTERM from finishing: the collector gives
/// up on it, exits 0, and another client's acknowledged events are all stored in
/// closed files.
#[test]
fn sigterm_is_not_blocked_by_a_client_that_never_reads() {
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start(&[]);

    // Pipelined getStatus calls (answered without the committer) until the
    // client's writes stop making progress: its receive buffer and the
    // collector's send buffer are full, so the collector has stopped reading.
    let mut status_call = Vec::new();
    conduit_core::scribe::encode_fb303_call(
        1,
        &conduit_core::scribe::Fb303Call::GetStatus,
        &mut status_call,
    );
    let chunk: Vec<u8> = status_call.repeat(64 << 10 >> 5);
    let written = Arc::new(AtomicU64::new(0));
    let stuck_client = {
        let (addr, written) = (collector.thrift_addr.clone(), written.clone());
        rt.spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            while s.write_all(&chunk).await.is_ok() {
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            // Written until the collector gave up on the connection.
            s
        })
    };
    // Stuck: neither the client's writes nor the collector's count of getStatus
    // calls have moved for 1.5 s (once stuck, it stays stuck: the client never
    // reads).
    let mut last = ((0, None), Instant::now());
    until_blocking(
        "the collector to stop reading the non-reading client",
        Duration::from_secs(60),
        || {
            let calls = metric(
                &collector.metrics(),
                r#"conduit_collector_calls_total{method="getStatus"}"#,
            );
            let now = (written.load(Ordering::Relaxed), calls.map(|c| c as u64));
            if now != last.0 {
                last = (now, Instant::now());
                return None;
            }
            (now.0 > 0 && last.1.elapsed() >= Duration::from_millis(1500)).then_some(())
        },
    )
    .unwrap();

    // A well-behaved client under load at the same time.
    let mut next = vec![0u64; 1];
    let mut calls = Vec::new();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = start_load(&rt, &collector.thrift_addr, &next, &acked, &stop);
    until_blocking("load", Duration::from_secs(30), || {
        (acked.load(Ordering::Relaxed) >= 2_000).then_some(())
    })
    .unwrap();

    let term = Instant::now();
    let status = collector
        .terminate()
        .expect("the collector exits after SIGTERM");
    let took = term.elapsed();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        collector.log()
    );
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    join_load(&rt, handles, &mut next, &mut calls);
    stuck_client.abort();
    assert!(
        collector.log().contains("does not read its replies"),
        "the collector says why it dropped the connection:\n{}",
        collector.log()
    );
    assert!(scene.unclosed().is_empty(), "every file is closed");
    let (acked_events, _) = check_exactly_once(&scene, &calls);
    assert!(acked_events >= 2_000);
    let beat: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(&scene.root()).join("system/heartbeats/dc1/c1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(beat["state"], "stopped", "{beat}");
    eprintln!(
        "non-reading client: {} bytes of calls pipelined, shutdown in {took:?}; {:?}",
        written.load(Ordering::Relaxed),
        t0.elapsed()
    );
}
