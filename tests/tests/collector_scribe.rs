//! A real Scribe client that nobody here wrote (PyPI `thriftpy2`, framed transport,
//! binary protocol) against the real `conduit collector` binary.
//!
//! The test kit's driver (`conduit_testkit::scribe::Thriftpy2`) runs a plan of
//! steps given as JSON (Log calls, fb303 calls, an unknown method) on one
//! connection and prints one JSON line per step.
//! The test then stops the collector and reads its files back with
//! `conduit_core::format::decode_file` (and one with the `zstd` CLI).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use conduit_core::format::{decode_file, Decoded, Encoding};
use conduit_core::scribe::ResultCode;
use conduit_testkit::gate;
use conduit_testkit::process::{metric, CollectorProcess};
use conduit_testkit::scribe::{log_step, Thriftpy2};
use conduit_testkit::wait::until_blocking;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const ID: &str = "c1";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A temporary directory with a storage root and logs, and the thriftpy2 driver.
struct Scene {
    dir: tempfile::TempDir,
    thriftpy2: Thriftpy2,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Scene {
            dir,
            thriftpy2: Thriftpy2::new(),
        }
    }

    fn root(&self) -> String {
        self.dir.path().join("root").display().to_string()
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Writes a config file listing `topics` (TOML tables) and returns its path.
    fn config(&self, topics: &str) -> String {
        let path = self.dir.path().join("conduit.toml");
        let text = format!("[clusters.dc1]\nroot = {:?}\n\n{topics}", self.root());
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn start(&self, extra: &[&str]) -> CollectorProcess {
        CollectorProcess::start(&self.root(), ID, extra, &self.logs()).expect("collector starts")
    }

    /// The data files of `topic` written by this collector, sorted by name (which
    /// sorts them by minute, then sequence number).
    fn files(&self, topic: &str) -> Vec<PathBuf> {
        let dir = Path::new(&self.root()).join("data").join(topic).join(ID);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read_dir {}: {e}", dir.display()),
        };
        files.sort();
        files
    }

    /// Decodes every file of `topic`; every one must be closed and its trailer must
    /// count exactly what the file holds. Returns (file, decoded) in order.
    fn read_topic(&self, topic: &str, encoding: Encoding) -> Vec<(PathBuf, Decoded)> {
        self.files(topic)
            .into_iter()
            .map(|path| {
                let buf = std::fs::read(&path).unwrap();
                let shown = path.display().to_string();
                let decoded = decode_file(&shown, &buf, encoding)
                    .unwrap_or_else(|e| panic!("decode {shown}: {e}"));
                assert!(
                    decoded.scan.is_closed(),
                    "{shown} is not closed: {:?}",
                    decoded.scan
                );
                let trailer = decoded.scan.trailer.unwrap();
                assert_eq!(
                    trailer.records,
                    decoded.payloads.len() as u64,
                    "{shown}: trailer records"
                );
                assert_eq!(
                    trailer.record_bytes, decoded.record_bytes,
                    "{shown}: trailer bytes"
                );
                assert_eq!(trailer.encoding, encoding, "{shown}: trailer encoding");
                (path, decoded)
            })
            .collect()
    }

    fn payloads(&self, topic: &str, encoding: Encoding) -> Vec<Bytes> {
        self.read_topic(topic, encoding)
            .into_iter()
            .flat_map(|(_, d)| d.payloads)
            .collect()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------

/// Payload `i` of the `lines` topic: JSON, multi-byte UTF-8, tabs, empty strings.
fn lines_payload(i: usize) -> Vec<u8> {
    match i % 6 {
        0 => {
            format!(r#"{{"i":{i},"user":"u{i}","tags":["a","b"],"geo":{{"lat":52.5,"lon":13.4}}}}"#)
                .into_bytes()
        }
        1 => format!("ünïcødé 日本語 🚀 Ωμέγα #{i}").into_bytes(),
        2 => format!("col1\tcol2\t{i}").into_bytes(),
        3 => Vec::new(),
        4 => {
            format!(r#"{{"quote":"a \"quoted\" \\ backslash","emoji":"😀","n":{i}}}"#).into_bytes()
        }
        _ => format!("\t{i}\t").into_bytes(),
    }
}

/// Payload `i` of the `base64` topic: any bytes, including newlines and invalid UTF-8.
fn raw_payload(i: usize) -> Vec<u8> {
    match i % 4 {
        0 => format!("line one {i}\nline two\r\n").into_bytes(),
        1 => vec![0, 0xff, 0xfe, b'\n', (i % 256) as u8, (i / 256 % 256) as u8],
        2 => Vec::new(),
        _ => format!("{{\"raw\":{i}}}").into_bytes(),
    }
}

/// 5000 events over Log calls of varying sizes to two topics (one `lines`, one
/// `base64`): every payload comes back byte for byte, in order per topic, exactly
/// once, from closed files whose trailers count them; `zstd -dc` reads a file too.
#[test]
fn thriftpy2_log_calls_round_trip_byte_for_byte() {
    if !gate::python("thriftpy2_log_calls_round_trip_byte_for_byte", "thriftpy2") {
        return;
    }
    let t0 = Instant::now();
    let scene = Scene::new();
    let config = scene.config("[topics.py_raw]\nencoding = \"base64\"\n");
    let mut collector = scene.start(&["--config", &config]);

    const N: usize = 5000;
    let sizes = [1usize, 7, 250, 1000, 2, 64, 499, 13, 1200, 3, 333];
    let (mut expected_lines, mut expected_raw) = (Vec::new(), Vec::new());
    let mut steps = Vec::new();
    let mut calls = Vec::new();
    let (mut sent, mut k) = (0usize, 0usize);
    while sent < N {
        let size = sizes[k % sizes.len()].min(N - sent);
        k += 1;
        let mut entries: Vec<(&str, Vec<u8>)> = Vec::with_capacity(size);
        for i in sent..sent + size {
            if i % 3 == 2 {
                let p = raw_payload(i);
                expected_raw.push(p.clone());
                entries.push(("py_raw", p));
            } else {
                let p = lines_payload(i);
                expected_lines.push(p.clone());
                entries.push(("py_lines", p));
            }
        }
        calls.push(size);
        steps.push(log_step(&entries));
        sent += size;
    }
    let results = scene.thriftpy2.run(&collector.thrift_addr, steps);
    assert_eq!(results.len(), calls.len(), "one result per Log call");
    for (result, size) in results.iter().zip(&calls) {
        assert_eq!(result["op"], "log");
        assert_eq!(result["entries"], *size);
        assert_eq!(result["code"], 0, "every Log call is answered OK: {result}");
    }
    let body = collector.metrics();
    assert_eq!(
        metric(&body, r#"conduit_collector_events_total{topic="py_lines"}"#),
        Some(expected_lines.len() as f64)
    );
    assert_eq!(
        metric(&body, r#"conduit_collector_events_total{topic="py_raw"}"#),
        Some(expected_raw.len() as f64)
    );
    assert_eq!(
        metric(&body, r#"conduit_collector_calls_total{method="Log"}"#),
        Some(calls.len() as f64)
    );

    let status = collector
        .terminate()
        .expect("collector exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        collector.log()
    );

    let lines = scene.payloads("py_lines", Encoding::Lines);
    let raw = scene.payloads("py_raw", Encoding::Base64);
    assert_eq!(lines.len(), expected_lines.len(), "py_lines count");
    assert_eq!(raw.len(), expected_raw.len(), "py_raw count");
    for (i, (got, want)) in lines.iter().zip(&expected_lines).enumerate() {
        assert_eq!(got.as_ref(), want.as_slice(), "py_lines payload #{i}");
    }
    for (i, (got, want)) in raw.iter().zip(&expected_raw).enumerate() {
        assert_eq!(got.as_ref(), want.as_slice(), "py_raw payload #{i}");
    }

    // A stock reader: `zstd -dc` of a `lines` file gives its records, one a line
    // (skippable frames, such as the trailer, decode to nothing).
    let (path, decoded) = scene
        .read_topic("py_lines", Encoding::Lines)
        .into_iter()
        .max_by_key(|(_, d)| d.payloads.len())
        .expect("a py_lines file");
    let out = Command::new("zstd")
        .arg("-dc")
        .arg(&path)
        .output()
        .expect("run zstd -dc");
    assert!(
        out.status.success(),
        "zstd -dc {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = Vec::new();
    for p in &decoded.payloads {
        want.extend_from_slice(p);
        want.push(b'\n');
    }
    assert!(!decoded.payloads.is_empty());
    assert_eq!(out.stdout, want, "zstd -dc output of {}", path.display());
    eprintln!(
        "thriftpy2 round trip: {} calls, {N} events, {:?}",
        calls.len(),
        t0.elapsed()
    );
}

/// fb303 from a real client: getName, getVersion, getStatus (ALIVE), getCounters
/// (exact counts), getCounter, aliveSince; an unknown method raises a
/// TApplicationException and the connection keeps working for a Log call.
#[test]
fn thriftpy2_fb303_and_unknown_method() {
    if !gate::python("thriftpy2_fb303_and_unknown_method", "thriftpy2") {
        return;
    }
    let t0 = Instant::now();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let scene = Scene::new();
    let mut collector = scene.start(&[]);
    let results = scene.thriftpy2.run(
        &collector.thrift_addr,
        vec![
            json!({"op": "fb303"}),
            log_step(&[
                ("fb_topic", b"one".to_vec()),
                ("fb_topic", b"two".to_vec()),
                ("fb_topic", b"three".to_vec()),
            ]),
            json!({"op": "unknown"}),
            log_step(&[("fb_topic", b"after the exception".to_vec())]),
            log_step(&[]),
            json!({"op": "fb303"}),
        ],
    );
    assert_eq!(results.len(), 6, "{results:?}");
    let answered = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (before, unknown, after) = (&results[0], &results[2], &results[5]);
    for fb in [before, after] {
        assert_eq!(fb["name"], "conduit-collector c1");
        assert!(!fb["version"].as_str().unwrap().is_empty(), "{fb}");
        assert_eq!(fb["status"], 2, "ALIVE: {fb}");
        assert_eq!(fb["details"], "");
        let alive = fb["alive_since"].as_i64().unwrap();
        assert!(
            alive >= started - 5 && alive <= answered,
            "aliveSince {alive}: the collector started after the test ({started}) and before it answered ({answered})"
        );
        assert!(fb["counters"].get("entries").is_some(), "{fb}");
    }
    assert_eq!(before["alive_since"], after["alive_since"]);
    assert_eq!(before["counters"]["entries"], 0);
    assert_eq!(before["counters"]["calls"], 0);
    assert_eq!(before["entries_counter"], 0);
    assert_eq!(after["counters"]["entries"], 4);
    assert_eq!(after["counters"]["calls"], 3);
    assert_eq!(after["counters"]["try_later"], 0);
    assert_eq!(after["counters"]["invalid"], 0);
    assert_eq!(after["counters"]["protocol_errors"], 0);
    assert_eq!(after["entries_counter"], 4);

    assert_eq!(results[1]["code"], 0);
    assert_eq!(unknown["exception"], "TApplicationException", "{unknown}");
    assert_eq!(unknown["type"], 1, "UNKNOWN_METHOD: {unknown}");
    assert!(
        unknown["message"].as_str().unwrap().contains("getOption"),
        "{unknown}"
    );
    assert_eq!(
        results[3]["code"], 0,
        "the connection still works after the exception"
    );
    assert_eq!(results[4]["code"], 0, "an empty Log call is OK");

    let body = collector.metrics();
    assert_eq!(
        metric(&body, r#"conduit_collector_calls_total{method="unknown"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"conduit_collector_calls_total{method="getCounters"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&body, r#"conduit_collector_calls_total{method="Log"}"#),
        Some(3.0)
    );

    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    let got: Vec<Bytes> = scene.payloads("fb_topic", Encoding::Lines);
    let want: Vec<&[u8]> = vec![b"one", b"two", b"three", b"after the exception"];
    assert_eq!(got.iter().map(|b| b.as_ref()).collect::<Vec<_>>(), want);
    eprintln!("fb303: {:?}", t0.elapsed());
}

/// The result code of the next reply on a raw connection.
async fn reply_code(stream: &mut tokio::net::TcpStream, buf: &mut bytes::BytesMut) -> ResultCode {
    let frame = conduit_core::scribe::read_frame(stream, 1 << 20, buf)
        .await
        .unwrap()
        .expect("a reply");
    match conduit_core::scribe::decode_reply(frame).unwrap().value {
        conduit_core::scribe::ReplyValue::ResultCode(code) => code,
        other => panic!("{other:?}"),
    }
}

/// With `--max-connections 1` and one connection held (with an acknowledged Log
/// call, and a second call half sent, so that it is not idle and cannot be
/// evicted), a Python client's Log on a second connection gets TRY_LATER and is
/// not stored; once the held connection closes, the next client is served.
#[test]
fn thriftpy2_gets_try_later_over_max_connections() {
    if !gate::python("thriftpy2_gets_try_later_over_max_connections", "thriftpy2") {
        return;
    }
    let t0 = Instant::now();
    let scene = Scene::new();
    let mut collector = scene.start(&["--max-connections", "1"]);
    let rt = runtime();
    // The held connection has a call in progress (half of its second call sent):
    // an idle one would be closed to make room for the newcomer.
    let mut second = Vec::new();
    conduit_core::scribe::encode_log_call(2, &[(b"held", b"second")], &mut second);
    let (first_half, second_half) = second.split_at(second.len() / 2);
    let (mut held, mut held_buf) = rt.block_on(async {
        let mut held = tokio::net::TcpStream::connect(&collector.thrift_addr)
            .await
            .unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut first = Vec::new();
        conduit_core::scribe::encode_log_call(1, &[(b"held", b"first")], &mut first);
        held.write_all(&first).await.unwrap();
        assert_eq!(reply_code(&mut held, &mut buf).await, ResultCode::Ok);
        held.write_all(first_half).await.unwrap();
        (held, buf)
    });

    let results = scene.thriftpy2.run(
        &collector.thrift_addr,
        vec![log_step(&[("held", b"refused".to_vec())])],
    );
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0]["code"], 1,
        "TRY_LATER over max_connections: {:?}",
        results[0]
    );

    let body = collector.metrics();
    assert_eq!(
        metric(
            &body,
            r#"conduit_collector_try_later_total{reason="max_connections"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"conduit_collector_connection_errors_total{reason="max_connections"}"#
        ),
        Some(1.0)
    );

    // The held connection is unaffected.
    rt.block_on(async {
        held.write_all(second_half).await.unwrap();
        assert_eq!(reply_code(&mut held, &mut held_buf).await, ResultCode::Ok);
    });
    drop(held);
    drop(rt);
    // Its slot is free once the collector has seen it close.
    until_blocking(
        "the held connection to be gone",
        Duration::from_secs(10),
        || {
            (metric(&collector.metrics(), "conduit_collector_open_connections") == Some(0.0))
                .then_some(())
        },
    )
    .unwrap();
    let results = scene.thriftpy2.run(
        &collector.thrift_addr,
        vec![
            log_step(&[("held", b"third".to_vec())]),
            json!({"op": "fb303"}),
        ],
    );
    assert_eq!(results[0]["code"], 0, "served once the slot is free");
    // fb303 counts the refused call like Prometheus does.
    let counters = &results[1]["counters"];
    assert_eq!(counters["try_later"], 1, "{counters}");

    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    let got = scene.payloads("held", Encoding::Lines);
    let want: Vec<&[u8]> = vec![b"first", b"second", b"third"];
    assert_eq!(
        got.iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
        want,
        "the refused entry is not stored"
    );
    eprintln!("try_later: {:?}", t0.elapsed());
}

/// One Log call mixing good and bad entries: the call is OK, the good entries are
/// stored, and each bad one lands in `_invalid` with its reason and payload.
#[test]
fn thriftpy2_bad_entries_go_to_invalid() {
    if !gate::python("thriftpy2_bad_entries_go_to_invalid", "thriftpy2") {
        return;
    }
    let t0 = Instant::now();
    let scene = Scene::new();
    let config = scene.config("[topics.clicks]\nvalidate = \"json\"\n");
    let mut collector = scene.start(&[
        "--config",
        &config,
        "--strict-topics",
        "--max-message-bytes",
        "1000",
    ]);
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(1100));
    let entries: Vec<(&str, Vec<u8>)> = vec![
        ("clicks", br#"{"ok":1}"#.to_vec()),
        ("clicks", br#"{"broken":"#.to_vec()),
        ("other", br#"{"unlisted":true}"#.to_vec()),
        ("bad-name", b"hello from a bad category".to_vec()),
        ("clicks", big.clone().into_bytes()),
        ("clicks", r#"{"ok":2,"text":"ü"}"#.as_bytes().to_vec()),
        // Exactly at the limit: accepted.
        (
            "clicks",
            format!(r#"{{"p":"{}"}}"#, "y".repeat(1000 - 8)).into_bytes(),
        ),
    ];
    assert_eq!(entries[6].1.len(), 1000);
    let results = scene
        .thriftpy2
        .run(&collector.thrift_addr, vec![log_step(&entries)]);
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0]["code"], 0,
        "a call with bad entries is still OK: {:?}",
        results[0]
    );

    let body = collector.metrics();
    let invalid = |topic: &str, reason: &str| {
        metric(
            &body,
            &format!(r#"conduit_collector_invalid_total{{topic="{topic}",reason="{reason}"}}"#),
        )
    };
    assert_eq!(invalid("clicks", "validation_failed"), Some(1.0), "{body}");
    assert_eq!(invalid("(invalid)", "unknown_topic"), Some(1.0), "{body}");
    assert_eq!(invalid("(invalid)", "invalid_topic"), Some(1.0), "{body}");
    assert_eq!(invalid("clicks", "message_too_large"), Some(1.0), "{body}");
    assert_eq!(
        metric(&body, r#"conduit_collector_events_total{topic="clicks"}"#),
        Some(3.0)
    );
    assert_eq!(
        metric(&body, r#"conduit_collector_events_total{topic="_invalid"}"#),
        Some(4.0)
    );

    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");

    let clicks = scene.payloads("clicks", Encoding::Lines);
    let want: Vec<&[u8]> = vec![&entries[0].1, &entries[5].1, &entries[6].1];
    assert_eq!(clicks.iter().map(|b| b.as_ref()).collect::<Vec<_>>(), want);
    assert!(
        scene.files("other").is_empty(),
        "nothing written for the unlisted topic"
    );
    assert!(!Path::new(&scene.root()).join("data/bad-name").exists());

    let invalid_files = scene.files("_invalid");
    assert!(!invalid_files.is_empty());
    for f in &invalid_files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("sys_invalid-") && name.ends_with(".zst"),
            "{name}"
        );
    }
    let records: Vec<Value> = scene
        .payloads("_invalid", Encoding::Lines)
        .iter()
        .map(|p| serde_json::from_slice(p).expect("an _invalid record is a JSON line"))
        .collect();
    let expected = [
        ("clicks", "validation_failed", &entries[1].1),
        ("other", "unknown_topic", &entries[2].1),
        ("bad-name", "invalid_topic", &entries[3].1),
        ("clicks", "message_too_large", &entries[4].1),
    ];
    assert_eq!(records.len(), expected.len(), "{records:?}");
    let mut by_reason: HashMap<&str, usize> = HashMap::new();
    for (record, (topic, reason, payload)) in records.iter().zip(expected) {
        assert_eq!(record["topic"], topic, "{record}");
        assert_eq!(record["reason"], reason, "{record}");
        assert_eq!(record["payload_base64"], b64(payload), "{record}");
        assert_eq!(record["cluster"], "dc1");
        assert_eq!(record["collector"], "c1");
        assert!(
            record["arrived_at"].is_string() && record["detail"].is_string(),
            "{record}"
        );
        *by_reason.entry(reason).or_default() += 1;
    }
    assert_eq!(by_reason.len(), 4);
    eprintln!("invalid: {:?}", t0.elapsed());
}

/// An old-style client (unversioned message headers, `strict_write=False`) is
/// understood and answered: Log and fb303 calls work and the entries are stored.
#[test]
fn thriftpy2_old_style_headers() {
    if !gate::python("thriftpy2_old_style_headers", "thriftpy2") {
        return;
    }
    let scene = Scene::new();
    let mut collector = scene.start(&[]);
    let results = scene.thriftpy2.run_with(
        &collector.thrift_addr,
        false,
        vec![
            log_step(&[
                ("old_hdr", b"first".to_vec()),
                ("old_hdr", b"second".to_vec()),
            ]),
            json!({"op": "fb303"}),
            json!({"op": "unknown"}),
            log_step(&[("old_hdr", b"third".to_vec())]),
        ],
    );
    assert_eq!(results.len(), 4, "{results:?}");
    assert_eq!(results[0]["code"], 0);
    assert_eq!(results[1]["name"], "conduit-collector c1");
    assert_eq!(results[1]["status"], 2);
    assert_eq!(results[1]["counters"]["entries"], 2);
    assert_eq!(results[2]["type"], 1, "{}", results[2]);
    assert_eq!(results[3]["code"], 0);
    let status = collector.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    let got = scene.payloads("old_hdr", Encoding::Lines);
    let want: Vec<&[u8]> = vec![b"first", b"second", b"third"];
    assert_eq!(got.iter().map(|b| b.as_ref()).collect::<Vec<_>>(), want);
}
