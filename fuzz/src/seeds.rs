//! The starting corpora, made by conduit's real encoders (`cargo run --example
//! seeds`, see README.md): Scribe calls and replies as the publisher, a collector and
//! stock Thrift clients send them; data files as collectors write them (marks
//! versions 1 and 2, index, trailers, torn, compacted); manifests and records as conduit wrote
//! them (the golden samples of `core/src/records/tests.rs`, read from that file so
//! they exist in one place).

use std::path::Path;

use bytes::Bytes;
use conduit_core::format::{BatchMark, PartMark};
use conduit_core::scribe::{self, reference, Call, Fb303Call, LogEntry, Reply, Request};
use conduit_core::Encoding;

use crate::documents::RECORD_KINDS;
use crate::file::{written_bytes, Unit, Written};
use crate::frame::Plan;

/// One seed: its target, file name and bytes.
#[derive(Debug)]
pub struct Seed {
    /// The fuzz target whose corpus it starts.
    pub target: &'static str,
    /// File name inside `corpus/<target>/`.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: impl Into<String>, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name: format!("seed-{}", name.into()),
        bytes,
    }
}

/// Every seed, from the encoders; `records_tests` is the text of
/// `core/src/records/tests.rs`.
pub fn all(records_tests: &str) -> Vec<Seed> {
    let mut seeds = scribe_seeds();
    seeds.extend(frame_seeds());
    seeds.extend(file_seeds());
    seeds.extend(writer_seeds());
    seeds.extend(document_seeds(records_tests));
    seeds
}

/// Writes every seed under `corpus/<target>/`; returns how many bytes it wrote.
pub fn write_all(corpus: &Path, records_tests: &str) -> std::io::Result<usize> {
    let mut total = 0;
    for s in all(records_tests) {
        let dir = corpus.join(s.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&s.name), &s.bytes)?;
        total += s.bytes.len();
    }
    Ok(total)
}

fn payload(framed: &[u8]) -> Vec<u8> {
    framed[4..].to_vec()
}

fn entries(pairs: &[(&[u8], &[u8])]) -> Vec<LogEntry> {
    pairs
        .iter()
        .map(|(c, m)| LogEntry {
            category: Bytes::copy_from_slice(c),
            message: Bytes::copy_from_slice(m),
        })
        .collect()
}

fn fb303_calls() -> Vec<Fb303Call> {
    vec![
        Fb303Call::GetName,
        Fb303Call::GetVersion,
        Fb303Call::GetStatus,
        Fb303Call::GetStatusDetails,
        Fb303Call::GetCounters,
        Fb303Call::GetCounter {
            key: Bytes::from_static(b"queue.depth"),
        },
        Fb303Call::AliveSince,
    ]
}

fn scribe_seeds() -> Vec<Seed> {
    const T: &str = "scribe_request";
    let mut out = Vec::new();
    let log: &[(&[u8], &[u8])] = &[(b"cat", b"msg")];
    let many: &[(&[u8], &[u8])] = &[
        (b"clicks", b"{\"user\":1}"),
        (b"", b""),
        (b"views", &[0xff, 0x00, b'\n', 0x80]),
    ];
    let mut b = Vec::new();
    scribe::encode_log_call(1, log, &mut b);
    out.push(seed(T, "log", payload(&b)));
    let mut b = Vec::new();
    scribe::encode_log_call(-7, many, &mut b);
    out.push(seed(T, "log-binary", payload(&b)));
    let mut b = Vec::new();
    scribe::encode_log_batch_call(9, b"pub-1", 42, many, &mut b);
    out.push(seed(T, "log-batch", payload(&b)));
    for call in fb303_calls() {
        let mut b = Vec::new();
        scribe::encode_fb303_call(3, &call, &mut b);
        out.push(seed(T, call.method_name(), payload(&b)));
    }
    // Old (non-strict) headers and ONEWAY calls, as the reference's clients send them.
    let requests = [
        (
            "log-old-header",
            Request {
                seqid: 5,
                name: "Log".into(),
                strict: false,
                oneway: false,
                call: Call::Log {
                    entries: entries(log),
                },
            },
        ),
        (
            "log-batch-old-header",
            Request {
                seqid: 6,
                name: "LogBatch".into(),
                strict: false,
                oneway: false,
                call: Call::LogBatch {
                    publisher_id: Bytes::from_static(b"p"),
                    sequence: 1,
                    entries: entries(many),
                },
            },
        ),
        (
            "shutdown-oneway",
            Request {
                seqid: 11,
                name: "shutdown".into(),
                strict: true,
                oneway: true,
                call: Call::Unknown {
                    name: "shutdown".into(),
                },
            },
        ),
    ];
    for (name, request) in requests {
        let framed = reference::encode_request(&request).expect("the reference encodes");
        out.push(seed(T, name, payload(&framed)));
    }
    // Replies, as a collector sends them.
    let counters = [("received".to_string(), 7), ("queued".to_string(), -1)];
    let replies: [(&str, &str, bool, Reply<'_>); 9] = [
        (
            "reply-ok",
            "Log",
            true,
            Reply::ResultCode(scribe::ResultCode::Ok),
        ),
        (
            "reply-try-later-old-header",
            "LogBatch",
            false,
            Reply::ResultCode(scribe::ResultCode::TryLater),
        ),
        ("reply-status", "getStatus", true, Reply::Status(2)),
        ("reply-name", "getName", true, Reply::String("conduit")),
        (
            "reply-alive-since",
            "aliveSince",
            true,
            Reply::I64(1_700_000_000),
        ),
        ("reply-counter", "getCounter", true, Reply::I64(-2)),
        (
            "reply-counters",
            "getCounters",
            true,
            Reply::Counters(&counters),
        ),
        (
            "reply-unknown-method",
            "frobnicate",
            true,
            Reply::UnknownMethod,
        ),
        (
            "reply-protocol-error",
            "Log",
            false,
            Reply::ProtocolError("bad list"),
        ),
    ];
    for (name, method, strict, reply) in replies {
        let mut b = Vec::new();
        scribe::encode_reply(method, 4, strict, &reply, &mut b);
        out.push(seed(T, name, payload(&b)));
    }
    out
}

fn frame_seeds() -> Vec<Seed> {
    const T: &str = "scribe_frame";
    let mut stream = Vec::new();
    scribe::encode_log_call(1, &[(b"a", b"b")], &mut stream);
    stream.extend_from_slice(&0u32.to_be_bytes()); // an empty frame
    scribe::encode_fb303_call(2, &Fb303Call::GetName, &mut stream);
    let mut batch = Vec::new();
    scribe::encode_log_batch_call(3, b"pub", 7, &[(b"t", &[b'x'; 300])], &mut batch);
    let plans = [
        (
            "three-frames-in-pieces",
            Plan {
                max_frame_bytes: 1024,
                pieces: vec![1, 7, 0, 3, 200],
                cancel: 0b0101_0101,
                stream: stream.clone(),
            },
        ),
        (
            "whole-stream",
            Plan {
                max_frame_bytes: 1024,
                pieces: vec![],
                cancel: 0,
                stream: stream.clone(),
            },
        ),
        (
            "frame-too-large",
            Plan {
                max_frame_bytes: 100,
                pieces: vec![16],
                cancel: 0,
                stream: batch.clone(),
            },
        ),
        (
            "truncated-mid-frame",
            Plan {
                max_frame_bytes: 4096,
                pieces: vec![5, 0],
                cancel: 0xff,
                stream: batch[..batch.len() - 9].to_vec(),
            },
        ),
        (
            "big-prefix-no-payload",
            Plan {
                max_frame_bytes: 1 << 30,
                pieces: vec![4],
                cancel: 0,
                stream: (64u32 << 20).to_be_bytes().to_vec(),
            },
        ),
        (
            "negative-prefix",
            Plan {
                max_frame_bytes: 1024,
                pieces: vec![2],
                cancel: 0,
                stream: (-2i32).to_be_bytes().to_vec(),
            },
        ),
    ];
    plans
        .into_iter()
        .map(|(name, plan)| seed(T, name, plan.to_bytes()))
        .collect()
}

fn mark(publisher: &str, sequence: i64, part: u16, parts: u16, records: u32) -> PartMark {
    PartMark {
        batch: BatchMark {
            publisher: Bytes::copy_from_slice(publisher.as_bytes()),
            sequence,
            part,
            parts,
        },
        digest: 0x5a5a_5a5a_5a5a_5a5a,
        first_record: 0,
        records,
    }
}

/// Units of a file as a collector writes them: records without batches, then
/// parts of publisher batches.
fn units() -> Vec<Unit> {
    let unit = |marks: Vec<PartMark>, payloads: &[&[u8]]| Unit {
        marks,
        payloads: payloads.iter().map(|p| p.to_vec()).collect(),
    };
    vec![
        unit(vec![], &[b"{\"a\":1}", b"{\"a\":2}"]),
        unit(vec![mark("pub-1", 42, 0, 2, 1)], &[b"x"]),
        unit(
            vec![mark("pub-1", 43, 1, 2, 1), mark("pub-2", 1, 0, 1, 1)],
            &[b"", b"y"],
        ),
    ]
}

fn written(
    encoding: Encoding,
    v1: bool,
    closed: bool,
    tear: Option<u16>,
    limit: Option<u16>,
) -> Written {
    Written {
        encoding,
        v1,
        closed,
        tear,
        limit,
        units: units(),
    }
}

fn file_seeds() -> Vec<Seed> {
    const T: &str = "data_file";
    let bytes = |encoding, v1, closed| written_bytes(&written(encoding, v1, closed, None, None));
    let closed = bytes(Encoding::Lines, false, true);
    let open = bytes(Encoding::Lines, false, false);
    let mut torn = open.clone();
    torn.extend_from_slice(&closed[open.len()..closed.len() - 5]);
    let mut compacted = bytes(Encoding::Lines, true, true);
    compacted.extend_from_slice(&bytes(Encoding::Lines, true, true));
    vec![
        seed(T, "closed-v2", closed),
        seed(T, "open-v2", open),
        seed(T, "torn-in-trailer", torn),
        seed(T, "closed-v1", bytes(Encoding::Lines, true, true)),
        seed(T, "open-v1", bytes(Encoding::Lines, true, false)),
        seed(T, "closed-base64", bytes(Encoding::Base64, false, true)),
        seed(T, "compacted", compacted),
        seed(T, "empty", Vec::new()),
    ]
}

fn writer_seeds() -> Vec<Seed> {
    const T: &str = "data_file_writer";
    let cases = [
        ("closed", Encoding::Lines, false, true, None, None),
        ("closed-v1", Encoding::Lines, true, true, None, None),
        (
            "closed-torn-in-trailer",
            Encoding::Lines,
            false,
            true,
            Some(u16::MAX - 1),
            None,
        ),
        ("open-torn", Encoding::Lines, false, false, Some(60), None),
        ("open-v1-torn", Encoding::Lines, true, false, Some(60), None),
        (
            "open-acked-prefix",
            Encoding::Lines,
            false,
            false,
            None,
            Some(40),
        ),
        (
            "base64-torn-and-acked",
            Encoding::Base64,
            false,
            false,
            Some(90),
            Some(70),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, encoding, v1, closed, tear, limit)| {
            seed(
                T,
                name,
                written(encoding, v1, closed, tear, limit).to_bytes(),
            )
        })
        .collect()
}

/// The `(kind, json)` pairs of `SAMPLES` in `core/src/records/tests.rs`.
pub fn golden_samples(records_tests: &str) -> Vec<(String, String)> {
    let start = records_tests
        .find("const SAMPLES")
        .expect("records/tests.rs has SAMPLES");
    let block = &records_tests[start..];
    let block = &block[..block.find("\n];").expect("SAMPLES ends")];
    let mut out = Vec::new();
    let mut kind = None;
    for line in block.lines().map(str::trim) {
        if let Some(json) = line
            .strip_prefix("r#\"")
            .and_then(|l| l.strip_suffix("\"#,"))
        {
            let kind = kind.take().expect("a sample's kind precedes it");
            out.push((kind, json.to_string()));
        } else if let Some(k) = line.strip_prefix('"').and_then(|l| l.strip_suffix("\",")) {
            kind = Some(k.replace(' ', "_"));
        }
    }
    assert!(out.len() >= 10, "found {} samples", out.len());
    out
}

fn document_seeds(records_tests: &str) -> Vec<Seed> {
    let mut out = Vec::new();
    for (i, (kind, json)) in golden_samples(records_tests).into_iter().enumerate() {
        if kind == "manifest" {
            out.push(seed("manifest", format!("{i}"), json.into_bytes()));
            continue;
        }
        let selector = RECORD_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("no record kind {kind}"));
        let mut bytes = vec![selector as u8];
        bytes.extend_from_slice(json.as_bytes());
        out.push(seed("records", format!("{kind}-{i}"), bytes));
    }
    out
}
