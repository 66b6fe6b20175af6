//! The collector's connections against careless and hostile clients (issue 14,
//! "the front door"): silent and idle connections, one address taking every
//! place, a slowloris on HTTP, hostile method names in the logs, and a SIGTERM
//! that something holds up. Each test runs a real `conduit collector` process and
//! asserts what a well-behaved client gets meanwhile.
//!
//! Each test prints its figures (`cargo test -p conduit-tests --test
//! front_door_connections -- --nocapture`); `docs/reliability.md` records them.

mod door;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use conduit_core::scribe::{
    decode_reply, encode_fb303_call, encode_log_call, read_frame, Fb303Call, ReplyValue,
    ResultCode, EXCEPTION_UNKNOWN_METHOD,
};
use conduit_testkit::process::{conduit_bin, free_addr, http_get};
use conduit_testkit::scribe::closed_by_peer;
use conduit_testkit::wait::until_blocking;
use door::{connect_from, runtime, sample, Scene, SteadyClient, STEADY_TOPIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `Log` call of `messages` to `topic` on a raw stream; its result code, or
/// `None` when the connection closes first.
async fn log_on(
    stream: &mut TcpStream,
    seqid: i32,
    topic: &str,
    messages: &[&str],
) -> Option<ResultCode> {
    let entries: Vec<(&[u8], &[u8])> = messages
        .iter()
        .map(|m| (topic.as_bytes(), m.as_bytes()))
        .collect();
    let mut out = Vec::new();
    encode_log_call(seqid, &entries, &mut out);
    stream.write_all(&out).await.ok()?;
    let frame = tokio::time::timeout(
        Duration::from_secs(30),
        read_frame(stream, 1 << 20, &mut BytesMut::new()),
    )
    .await
    .ok()?
    .ok()??;
    match decode_reply(frame).unwrap().value {
        ReplyValue::ResultCode(code) => Some(code),
        other => panic!("{other:?}"),
    }
}

/// 1,024 connections that never send a byte used to take every place for good:
/// each new publisher got TRY_LATER, indefinitely. Now a silent connection is
/// closed after `first_call_timeout_ms`, and before that, once it has been idle for
/// a second, it makes room for a newcomer.
#[test]
fn a_thousand_silent_connections_cannot_keep_a_publisher_out() {
    const FIRST_CALL_TIMEOUT_MS: u64 = 4000;
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start(&format!("first_call_timeout_ms = {FIRST_CALL_TIMEOUT_MS}"));
    let addr = collector.thrift_addr.clone();

    // 256 from each of 4 addresses: max_connections (1024) and
    // max_connections_per_ip (256) are both reached.
    let mut silent = rt.block_on(async {
        let mut silent = Vec::new();
        for i in 0..1024 {
            let from = format!("127.0.0.{}", 2 + i / 256);
            silent.push(connect_from(&from, &addr).await.unwrap());
        }
        silent
    });
    until_blocking("1024 open connections", Duration::from_secs(20), || {
        (sample(&collector, "conduit_collector_open_connections") >= 1024.0).then_some(())
    })
    .unwrap();

    // A publisher arrives: it retries (on a new connection) until served.
    let arrived = Instant::now();
    let attempts = rt.block_on(async {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut s = TcpStream::connect(&addr).await.unwrap();
            if log_on(&mut s, 1, STEADY_TOPIC, &["first"]).await == Some(ResultCode::Ok) {
                return attempts;
            }
            assert!(arrived.elapsed() < Duration::from_secs(30), "never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let served_after = arrived.elapsed();
    let evicted = sample(
        &collector,
        r#"conduit_collector_connections_closed_total{reason="evicted_idle"}"#,
    );
    let steady = SteadyClient::start(&rt, &addr, "steady");
    steady.progressed(5, Duration::from_secs(10));

    // Every silent connection is closed: evicted, or at first_call_timeout_ms.
    let all_closed = rt.block_on(async {
        let started = Instant::now();
        for s in silent.iter_mut() {
            assert!(closed_by_peer(s, Duration::from_secs(30)).await);
        }
        started.elapsed()
    });
    let timed_out = sample(
        &collector,
        r#"conduit_collector_connections_closed_total{reason="first_call_timeout"}"#,
    );
    // The steady client may have evicted a silent connection too, if it came
    // while every place was still taken: count the evictions again now.
    let evicted_in_all = sample(
        &collector,
        r#"conduit_collector_connections_closed_total{reason="evicted_idle"}"#,
    );
    let seen = steady.stop(&rt);
    eprintln!(
        "1024 silent connections: a publisher served after {served_after:?} ({attempts} attempts, {evicted} evicted), all silent ones closed {all_closed:?} later ({timed_out} at first_call_timeout_ms, {evicted_in_all} evicted in all); well-behaved: {}; {:?}",
        seen.summary(),
        t0.elapsed()
    );
    assert!(evicted >= 1.0);
    assert!(
        served_after < Duration::from_millis(FIRST_CALL_TIMEOUT_MS),
        "served by eviction before the silent ones time out: {served_after:?}"
    );
    assert_eq!(evicted_in_all + timed_out, 1024.0);
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    let stored = scene.payloads(STEADY_TOPIC);
    assert!(stored.contains(&"first".to_owned()));
    assert!(seen.acked.iter().all(|a| stored.contains(a)));
}

/// One address whose every connection is busy gets TRY_LATER past
/// `max_connections_per_ip` (other addresses are served); an address whose
/// connections sit idle has its longest idle one closed to make room.
#[test]
fn one_address_cannot_take_every_place() {
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start("max_connections_per_ip = 8");
    let addr = collector.thrift_addr.clone();
    let early = rt.block_on(async {
        // 8 busy connections from 127.0.0.2: each has begun a frame.
        let mut busy = Vec::new();
        for _ in 0..8 {
            let mut s = connect_from("127.0.0.2", &addr).await.unwrap();
            s.write_all(&[0, 0]).await.unwrap();
            busy.push(s);
        }
        // Until the collector has seen them all (the ninth must not be the one
        // accepted first).
        conduit_testkit::wait::until("8 connections open", Duration::from_secs(10), || {
            let http = collector.http_addr.clone();
            async move {
                let body = tokio::task::spawn_blocking(move || http_get(&http, "/metrics"))
                    .await
                    .unwrap()
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                conduit_testkit::process::metric(&body, "conduit_collector_open_connections")
                    == Some(8.0)
            }
        })
        .await;
        let mut ninth = connect_from("127.0.0.2", &addr).await.unwrap();
        assert_eq!(
            log_on(&mut ninth, 1, "per_ip", &["refused"]).await,
            Some(ResultCode::TryLater),
            "the ninth from one address"
        );
        assert!(closed_by_peer(&mut ninth, Duration::from_secs(10)).await);
        let mut other = connect_from("127.0.0.3", &addr).await.unwrap();
        assert_eq!(
            log_on(&mut other, 1, "per_ip", &["other address"]).await,
            Some(ResultCode::Ok)
        );

        // 8 idle connections from 127.0.0.4 (each made one call); a ninth from
        // there is served once one of them has been idle for a second.
        let mut idle = Vec::new();
        for i in 0..8 {
            let mut s = connect_from("127.0.0.4", &addr).await.unwrap();
            let m = format!("idle {i}");
            assert_eq!(
                log_on(&mut s, 1, "per_ip", &[&m]).await,
                Some(ResultCode::Ok)
            );
            idle.push(s);
        }
        let started = Instant::now();
        let mut early = 0;
        loop {
            let mut s = connect_from("127.0.0.4", &addr).await.unwrap();
            match log_on(&mut s, 1, "per_ip", &["made room"]).await {
                Some(ResultCode::Ok) => break,
                Some(ResultCode::TryLater) => {
                    // None of them idle for a second yet.
                    early += 1;
                    assert!(started.elapsed() < Duration::from_secs(20), "never served");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    assert!(started.elapsed() < Duration::from_secs(20), "never served");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let mut closed = 0;
        for s in idle.iter_mut() {
            if closed_by_peer(s, Duration::from_millis(100)).await {
                closed += 1;
            }
        }
        assert_eq!(closed, 1, "exactly the longest idle connection made room");
        drop(busy);
        early
    });
    let refused = sample(
        &collector,
        r#"conduit_collector_try_later_total{reason="max_connections_per_ip"}"#,
    );
    let errors = sample(
        &collector,
        r#"conduit_collector_connection_errors_total{reason="max_connections_per_ip"}"#,
    );
    let evicted = sample(
        &collector,
        r#"conduit_collector_connections_closed_total{reason="evicted_idle"}"#,
    );
    assert_eq!(
        refused,
        1.0 + early as f64,
        "the ninth busy one, and {early} early tries"
    );
    assert_eq!(errors, refused);
    assert_eq!(evicted, 1.0);
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut stored = scene.payloads("per_ip");
    stored.sort();
    assert!(!stored.contains(&"refused".to_owned()));
    assert!(
        stored.contains(&"other address".to_owned()) && stored.contains(&"made room".to_owned())
    );
    eprintln!("per-ip limit and idle eviction: {:?}", t0.elapsed());
}

/// A connection with no call in progress is closed after `idle_timeout_secs`; one
/// in the middle of a frame is not (that is `frame_timeout_ms`'s).
#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start("idle_timeout_secs = 1\nframe_timeout_ms = 4000");
    let addr = collector.thrift_addr.clone();
    rt.block_on(async {
        let mut idle = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(
            log_on(&mut idle, 1, "idle", &["one"]).await,
            Some(ResultCode::Ok)
        );
        let mut busy = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(
            log_on(&mut busy, 1, "idle", &["two"]).await,
            Some(ResultCode::Ok)
        );
        busy.write_all(&[0, 0]).await.unwrap();
        let started = Instant::now();
        assert!(closed_by_peer(&mut idle, Duration::from_secs(10)).await);
        let idle_closed = started.elapsed();
        assert!(idle_closed >= Duration::from_millis(900), "{idle_closed:?}");
        assert!(
            !closed_by_peer(&mut busy, Duration::from_millis(1500)).await,
            "a frame in progress is not idle"
        );
        assert!(closed_by_peer(&mut busy, Duration::from_secs(10)).await);
    });
    for (reason, n) in [("idle_timeout", 1.0), ("frame_timeout", 1.0)] {
        let name = format!(r#"conduit_collector_connections_closed_total{{reason="{reason}"}}"#);
        assert_eq!(sample(&collector, &name), n, "{reason}");
    }
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
}

/// 256 HTTP connections sending their headers one byte a second used to take
/// every place of the HTTP listener: `/health`, `/metrics` and `/v1/open` were
/// refused 29 of 30 s. Now a connection still waiting for its headers makes room
/// for a newcomer, and waits at most `http_header_timeout_ms`.
#[test]
fn health_answers_under_an_http_slowloris() {
    const ATTACK: Duration = Duration::from_secs(12);
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let mut collector = scene.start("");
    let http = collector.http_addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let loris: Vec<_> = (0..256)
        .map(|_| {
            let (http, stop, connects) = (http.clone(), stop.clone(), connects.clone());
            rt.spawn(async move {
                let request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n";
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(&http).await else {
                        continue;
                    };
                    connects.fetch_add(1, Ordering::Relaxed);
                    for byte in request.iter() {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        // The attack: one byte a second.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            })
        })
        .collect();
    until_blocking("the slowloris to connect", Duration::from_secs(20), || {
        (connects.load(Ordering::Relaxed) >= 256).then_some(())
    })
    .unwrap();

    let attack = Instant::now();
    let mut latencies = Vec::new();
    let mut refused = Vec::new();
    while attack.elapsed() < ATTACK {
        for path in ["/health", "/metrics", "/v1/open/t/c1/t.zst?offset=0"] {
            let started = Instant::now();
            match http_get(&http, path) {
                Ok((status, _)) if status < 500 || path == "/health" => {
                    latencies.push(started.elapsed())
                }
                other => refused.push(format!("{path}: {other:?}")),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in loris {
        rt.block_on(l).unwrap();
    }
    latencies.sort();
    let max = *latencies.last().unwrap();
    let p50 = latencies[latencies.len() / 2];
    let body = collector.metrics();
    let evicted = conduit_testkit::process::metric(
        &body,
        r#"conduit_http_connections_closed_total{reason="evicted_waiting"}"#,
    )
    .unwrap_or(0.0);
    eprintln!(
        "256 slowloris connections ({} connects): {} requests answered in {ATTACK:?}, p50 {p50:?} max {max:?}, {} refused, {evicted} evicted; {:?}",
        connects.load(Ordering::Relaxed),
        latencies.len(),
        refused.len(),
        t0.elapsed()
    );
    assert!(refused.is_empty(), "{refused:?}");
    assert!(max < Duration::from_secs(2), "max {max:?}");
    assert!(evicted >= 1.0);
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
}

/// A `conduit collector` with text logs (what a person reads, and where a newline
/// in a logged string forges a line).
struct TextCollector {
    child: Child,
    thrift_addr: String,
    log: PathBuf,
}

impl TextCollector {
    fn start(scene: &Scene) -> TextCollector {
        std::fs::create_dir_all(scene.logs()).unwrap();
        let log = scene.logs().join("text.log");
        let thrift_addr = free_addr();
        let root = scene.root();
        let http = free_addr();
        let mut child = Command::new(conduit_bin())
            .args([
                "--log-format",
                "text",
                "collector",
                "--root",
                &root,
                "--id",
                "c1",
            ])
            .args(["--listen", &thrift_addr, "--http", &http])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("collector ready") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the collector says it is ready");
        TextCollector {
            child,
            thrift_addr,
            log,
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap()).into_owned()
    }
}

impl Drop for TextCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A framed strict CALL of method `name` with an empty arguments struct.
fn call_named(name: &[u8], seqid: i32) -> Vec<u8> {
    let mut payload = 0x8001_0001u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&(name.len() as i32).to_be_bytes());
    payload.extend_from_slice(name);
    payload.extend_from_slice(&seqid.to_be_bytes());
    payload.push(0);
    let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&payload);
    framed
}

/// A method name with a newline and a terminal escape used to forge log lines (the
/// text log printed it as is), an 8 MiB one made the log grow by 8 MiB a call, and
/// the reply echoed it. Now names are escaped and capped in the log and in the
/// reply, names over 256 bytes are a protocol error, and each kind of line is
/// logged at most once per 10 s.
#[test]
fn method_names_cannot_forge_or_flood_the_log() {
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let collector = TextCollector::start(&scene);
    let addr = collector.thrift_addr.clone();
    let forged: &[u8] = b"Log\nERROR conduit_collector: forged line\x1b]0;pwned\x07";
    let huge = vec![b'A'; 8 << 20];
    let log_before = collector.log().len();
    rt.block_on(async {
        // 200 calls of the forged name, pipelined on one connection: each is
        // answered UNKNOWN_METHOD with the name escaped, and the connection stays.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let mut calls = Vec::new();
        for seqid in 0..200 {
            calls.extend_from_slice(&call_named(forged, seqid));
        }
        s.write_all(&calls).await.unwrap();
        let mut buf = BytesMut::new();
        for seqid in 0..200 {
            let frame = read_frame(&mut s, 1 << 20, &mut buf).await.unwrap().unwrap();
            assert!(frame.len() < 1024, "the reply is small: {} bytes", frame.len());
            let reply = decode_reply(frame).unwrap();
            assert_eq!(reply.seqid, seqid);
            let ReplyValue::Exception { kind, message } = reply.value else {
                panic!("{:?}", reply.value);
            };
            assert_eq!(kind, EXCEPTION_UNKNOWN_METHOD);
            assert_eq!(
                message,
                "Invalid method name: 'Log\\nERROR conduit_collector: forged line\\x1b]0;pwned\\x07'"
            );
        }
        let mut status = Vec::new();
        encode_fb303_call(1, &Fb303Call::GetStatus, &mut status);
        s.write_all(&status).await.unwrap();
        let frame = read_frame(&mut s, 1 << 20, &mut buf).await.unwrap().unwrap();
        assert_eq!(decode_reply(frame).unwrap().value, ReplyValue::Status(2));

        // 20 calls with an 8 MiB name: each closes its connection, unanswered.
        for seqid in 0..20 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let _ = s.write_all(&call_named(&huge, seqid)).await;
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
            assert!(got.is_empty(), "no reply: {} bytes", got.len());
        }
    });
    let log = collector.log();
    let grew = log.len() - log_before;
    eprintln!(
        "200 forged method names + 20 of 8 MiB: log grew {grew} bytes; {:?}",
        t0.elapsed()
    );
    assert!(grew < 16 << 10, "the log grew {grew} bytes:\n{log}");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("ERROR conduit_collector: forged")),
        "a forged line:\n{log}"
    );
    assert!(
        !log.contains("\x1b]0;"),
        "a terminal escape reached the log"
    );
    assert!(
        log.contains(r"Log\nERROR conduit_collector: forged line\x1b]0;pwned\x07"),
        "the name is logged escaped:\n{log}"
    );
    assert_eq!(
        log.matches("unknown method").count(),
        1,
        "rate-limited:\n{log}"
    );
    assert!(
        log.contains("method name of 8388608 bytes exceeds the maximum of 256 bytes"),
        "{log}"
    );
}

/// SIGTERM stops a collector within `shutdown_timeout_secs` whatever holds the
/// drain up (here a client that pipelines calls and never reads its replies, which
/// the connection gives up on only after 5 s): past the deadline it exits with
/// status 1 and an error naming what was left. Nothing acknowledged is lost: the
/// next start recovers the files left open.
#[test]
fn sigterm_stops_within_shutdown_timeout_whatever_holds_it_up() {
    const SHUTDOWN_TIMEOUT_SECS: u64 = 2;
    let t0 = Instant::now();
    let scene = Scene::new();
    let rt = runtime();
    let config = format!("shutdown_timeout_secs = {SHUTDOWN_TIMEOUT_SECS}");
    let mut collector = scene.start(&config);
    let addr = collector.thrift_addr.clone();
    let steady = SteadyClient::start(&rt, &addr, "steady");
    steady.progressed(20, Duration::from_secs(10));

    // Pipelined getStatus calls until the client's writes stop making progress
    // (its receive buffer and the collector's send buffer are full).
    let mut status_call = Vec::new();
    encode_fb303_call(1, &Fb303Call::GetStatus, &mut status_call);
    let chunk: Vec<u8> = status_call.repeat(64 << 10 >> 5);
    let written = Arc::new(AtomicU64::new(0));
    let stuck_client = {
        let (addr, written) = (addr.clone(), written.clone());
        rt.spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            while s.write_all(&chunk).await.is_ok() {
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            s
        })
    };
    let mut last = ((0, None), Instant::now());
    until_blocking(
        "the collector to stop reading the non-reading client",
        Duration::from_secs(60),
        || {
            let calls = conduit_testkit::process::metric(
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
    let seen = steady.stop(&rt);

    let term = Instant::now();
    let status = collector
        .terminate()
        .expect("the collector exits after SIGTERM");
    let took = term.elapsed();
    let log = collector.log();
    eprintln!(
        "SIGTERM with a client that never reads, shutdown_timeout_secs = {SHUTDOWN_TIMEOUT_SECS}: exited {status} after {took:?}; {:?}",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        took >= Duration::from_secs(SHUTDOWN_TIMEOUT_SECS),
        "{took:?}"
    );
    assert!(
        took < Duration::from_secs(SHUTDOWN_TIMEOUT_SECS + 3),
        "stopped {took:?} after SIGTERM"
    );
    assert!(
        log.contains("shutdown did not finish within shutdown_timeout_secs")
            && log.contains("finishing the calls of"),
        "the error names what was left:\n{log}"
    );
    drop(rt.block_on(stuck_client));

    // The next start recovers what was left open; every acked event is there.
    let mut again = scene.start(&config);
    let status = again.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    let stored: std::collections::BTreeSet<String> =
        scene.payloads(STEADY_TOPIC).into_iter().collect();
    assert!(
        seen.acked.is_subset(&stored),
        "{} acked, {} stored",
        seen.acked.len(),
        stored.len()
    );
}
