//! Unframed Scribe (issue 19): a client on Thrift's `TBufferedTransport` (no
//! frame lengths, the transport of Thrift's generated `scribe-remote` and of old
//! Scribe clients) is detected on its first bytes and served like a framed one;
//! bytes that are neither transport (HTTP, TLS on the plain port) close the
//! connection with one line naming the peer and what was expected.
//!
//! Against a real `conduit collector`; the unframed client is PyPI `thriftpy2`
//! (`TBufferedTransportFactory`), the framed one the same library on
//! `TFramedTransportFactory`.

mod door;

use std::time::{Duration, Instant};

use conduit_core::scribe::encode_log_call;
use conduit_testkit::gate;
use conduit_testkit::process::metric;
use conduit_testkit::scribe::{closed_by_peer, log_step, Thriftpy2};
use door::{runtime, Scene};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `conduit_collector_connections_total{transport}` of `body`.
fn connections(body: &str, transport: &str) -> Option<f64> {
    metric(
        body,
        &format!(r#"conduit_collector_connections_total{{transport="{transport}"}}"#),
    )
}

/// `conduit_collector_connection_errors_total{reason}` of `body`.
fn errors(body: &str, reason: &str) -> Option<f64> {
    metric(
        body,
        &format!(r#"conduit_collector_connection_errors_total{{reason="{reason}"}}"#),
    )
}

/// 1,000 events over 21 unframed `Log` calls (one of them 300 KB, so that it
/// arrives in many reads), fb303 and an unknown method on the same connection,
/// then a framed client on the same collector: every call answered, every event
/// stored exactly once, each connection counted under its transport.
#[test]
fn thriftpy2_buffered_transport_is_served_like_framed() {
    if !gate::python(
        "thriftpy2_buffered_transport_is_served_like_framed",
        "thriftpy2",
    ) {
        return;
    }
    let t0 = Instant::now();
    let scene = Scene::new();
    let thriftpy2 = Thriftpy2::new();
    let mut collector = scene.start("");
    let body = collector.metrics();
    assert_eq!(connections(&body, "unframed"), Some(0.0), "{body}");
    assert_eq!(errors(&body, "not_thrift"), Some(0.0), "{body}");

    let big = "x".repeat(300_000);
    let mut steps = Vec::new();
    let mut want = Vec::new();
    for call in 0..20 {
        let entries: Vec<(&str, Vec<u8>)> = (0..50)
            .map(|i| ("unframed", format!("u-{call}-{i}").into_bytes()))
            .collect();
        want.extend(
            entries
                .iter()
                .map(|(_, m)| String::from_utf8(m.clone()).unwrap()),
        );
        steps.push(log_step(&entries));
        if call == 10 {
            steps.push(json!({"op": "fb303"}));
            steps.push(json!({"op": "unknown"}));
            steps.push(log_step(&[("unframed", big.clone().into_bytes())]));
            want.push(big.clone());
        }
    }
    let results = thriftpy2.run_unframed(&collector.thrift_addr, steps);
    assert_eq!(results.len(), 23, "{results:?}");
    for r in results.iter().filter(|r| r["op"] == "log") {
        assert_eq!(r["code"], 0, "every Log is acknowledged: {r}");
    }
    let fb303 = results.iter().find(|r| r["op"] == "fb303").unwrap();
    assert_eq!(fb303["name"], "conduit-collector c1", "{fb303}");
    assert_eq!(fb303["counters"]["entries"], 550, "{fb303}");
    let unknown = results.iter().find(|r| r["op"] == "unknown").unwrap();
    assert_eq!(unknown["exception"], "TApplicationException", "{unknown}");
    assert_eq!(unknown["type"], 1, "{unknown}");

    let framed = thriftpy2.run(
        &collector.thrift_addr,
        vec![log_step(&[
            ("framed", b"f-1".to_vec()),
            ("framed", b"f-2".to_vec()),
        ])],
    );
    assert_eq!(framed[0]["code"], 0, "{framed:?}");

    let body = collector.metrics();
    assert_eq!(connections(&body, "unframed"), Some(1.0), "{body}");
    assert_eq!(connections(&body, "framed"), Some(1.0), "{body}");
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    let stored = scene.payloads("unframed");
    assert_eq!(
        stored.len(),
        1001,
        "1,001 events acknowledged, all stored once"
    );
    assert_eq!(stored, want, "in order, byte for byte");
    assert_eq!(scene.payloads("framed"), vec!["f-1", "f-2"]);
    println!(
        "unframed: {} events stored, framed: 2, in {:?}",
        stored.len(),
        t0.elapsed()
    );
}

/// An HTTP request and a TLS ClientHello on the Scribe port: each connection is
/// closed, counted under `not_thrift`, and the log says once (rate-limited) which
/// peer sent what, and what was expected.
#[test]
fn http_and_tls_on_the_scribe_port_are_named_and_closed() {
    let scene = Scene::new();
    let collector = scene.start("");
    let rt = runtime();
    let client_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut peers = Vec::new();
    for bytes in [
        &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &client_hello,
    ] {
        let peer = rt.block_on(async {
            let mut s = TcpStream::connect(&collector.thrift_addr).await.unwrap();
            let _ = s.write_all(bytes).await;
            assert!(
                closed_by_peer(&mut s, Duration::from_secs(10)).await,
                "the collector closes a connection that sent {bytes:?}"
            );
            s.local_addr().unwrap().to_string()
        });
        peers.push(peer);
    }
    let body = collector.metrics();
    assert_eq!(errors(&body, "not_thrift"), Some(2.0), "{body}");
    assert_eq!(errors(&body, "malformed"), Some(0.0), "{body}");
    assert_eq!(errors(&body, "frame_too_large"), Some(0.0), "{body}");
    let log = collector.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not a Scribe client"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per 10 s for the kind:\n{log}");
    let line = lines[0];
    assert!(
        line.contains(&peers[0]),
        "names the peer {}: {line}",
        peers[0]
    );
    assert!(line.contains("look like an HTTP request"), "{line}");
    assert!(
        line.contains("expected the Thrift binary protocol, framed (a 4-byte length first) or unframed (0x80 0x01 0x00 0x01 first)"),
        "{line}"
    );
}

/// The bounds of a frame hold for an unframed message: one longer than
/// `max_frame_bytes` closes its connection (`frame_too_large`) as soon as its
/// announced length says so, and one that stops arriving is closed after
/// `frame_timeout_ms`; another unframed client is served meanwhile.
#[test]
fn unframed_messages_keep_the_frame_limits() {
    let scene = Scene::new();
    let collector =
        scene.start("max_frame_bytes = 65536\nmax_message_bytes = 65536\nframe_timeout_ms = 1500");
    let rt = runtime();
    let mut too_long = Vec::new();
    encode_log_call(1, &[(b"t", &[b'a'; 100_000][..])], &mut too_long);
    let mut small = Vec::new();
    encode_log_call(2, &[(b"t", b"ok")], &mut small);
    rt.block_on(async {
        // A 100 KB string in a 64 KiB limit, sent unframed (the 4-byte prefix cut).
        let mut s = TcpStream::connect(&collector.thrift_addr).await.unwrap();
        let _ = s.write_all(&too_long[4..]).await;
        assert!(closed_by_peer(&mut s, Duration::from_secs(10)).await);
        // Half a message, then nothing.
        let started = Instant::now();
        let mut stalled = TcpStream::connect(&collector.thrift_addr).await.unwrap();
        stalled
            .write_all(&small[4..small.len() / 2 + 2])
            .await
            .unwrap();
        assert!(closed_by_peer(&mut stalled, Duration::from_secs(10)).await);
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(1400),
            "closed after frame_timeout_ms, not before: {after:?}"
        );
    });
    let body = collector.metrics();
    assert_eq!(errors(&body, "frame_too_large"), Some(1.0), "{body}");
    assert_eq!(
        metric(
            &body,
            r#"conduit_collector_connections_closed_total{reason="frame_timeout"}"#
        ),
        Some(1.0),
        "{body}"
    );
    let log = collector.log();
    assert!(
        log.contains("frame of 100") && log.contains("exceeds the maximum of 65536 bytes"),
        "the log names the length and the limit:\n{log}"
    );
}

/// The memory budget holds for unframed messages too: a `Log` the budget cannot
/// hold while it arrives (more than half of `max_inflight_bytes`) is read to its
/// end, dropped, and answered `TRY_LATER` (reason `memory`) on the unframed
/// transport; the next call on the same connection is stored.
#[test]
fn an_unframed_call_the_memory_budget_cannot_hold_gets_try_later() {
    if !gate::python(
        "an_unframed_call_the_memory_budget_cannot_hold_gets_try_later",
        "thriftpy2",
    ) {
        return;
    }
    let scene = Scene::new();
    let thriftpy2 = Thriftpy2::new();
    let mut collector = scene.start("max_frame_bytes = 1048576\nmax_inflight_bytes = 1048576");
    let big = vec![b'x'; 800_000];
    let results = thriftpy2.run_unframed(
        &collector.thrift_addr,
        vec![
            log_step(&[("budget", big)]),
            log_step(&[("budget", b"small".to_vec())]),
        ],
    );
    assert_eq!(results[0]["code"], 1, "TRY_LATER: {results:?}");
    assert_eq!(results[1]["code"], 0, "{results:?}");
    let body = collector.metrics();
    assert_eq!(
        metric(
            &body,
            r#"conduit_collector_try_later_total{reason="memory"}"#
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(connections(&body, "unframed"), Some(1.0), "{body}");
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(scene.payloads("budget"), vec!["small"]);
}
