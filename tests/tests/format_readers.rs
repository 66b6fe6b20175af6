//! Stock readers agree with our writer (`docs/format.md`).
//!
//! Files are built with `conduit_core::format` exactly as a collector builds them
//! (independent frames of whole records, batch marks before a frame, a close
//! trailer) under the names `conduit_core::layout::Layout` gives them, then read
//! with tools nobody here wrote: the `zstd` CLI, Python `zstandard` and DuckDB.
//!
//! * (a) a closed `lines` file: 3 frames (marks before the second), 10 000 JSON
//!   records, trailer;
//! * (b) a closed `base64` file of arbitrary binary payloads;
//! * (c) a file still being written whose last frame is torn (a prefix), and a
//!   variant whose last frame is complete in length but fails its checksum.
//!
//! The `zstd` CLI and the Python modules are required in CI (`CI` set) and skipped
//! loudly elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use conduit_core::format::{
    decode_file, encode_marks_v1, BatchMark, Encoding, FrameEncoder, Trailer,
};
use conduit_core::layout::{Layout, View};
use conduit_core::{Minute, NodeName, Topic};
use conduit_testkit::gate;
use serde_json::{json, Value};

const RECORDS: usize = 10_000;
/// Records per frame of file (a): three frames, each larger than one 128 KiB zstd
/// block, so every frame has several blocks.
const FRAME_SPLIT: [usize; 3] = [3_000, 3_000, 4_000];

fn zstd(args: &[&str], file: &Path) -> Output {
    Command::new("zstd")
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run zstd {args:?} {}: {e}", file.display()))
}

fn zstd_dc(file: &Path) -> Vec<u8> {
    let out = zstd(&["-dc"], file);
    assert!(
        out.status.success(),
        "zstd -dc {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs a Python script with `args` and parses the JSON it prints last.
fn python_json(script: &str, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        script
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("python printed {stdout:?}: {e}"))
}

/// The record (one JSON object, no newline) of event `i`: unicode, escapes and
/// commas included, so a line-oriented reader must not be naive.
fn json_record(i: usize) -> Vec<u8> {
    let value = json!({
        "i": i,
        "user": format!("u{}", i % 97),
        "amount": (i * 7919) % 1000,
        "note": match i % 4 {
            0 => "plain".to_string(),
            1 => "h\u{e9}llo \u{2713}, \u{1f600}".to_string(),
            2 => "tab\there \"quoted\" back\\slash".to_string(),
            _ => "x".repeat(i % 50),
        },
    });
    serde_json::to_vec(&value).expect("json")
}

fn amount(i: usize) -> u64 {
    ((i * 7919) % 1000) as u64
}

/// Binary payloads for the base64 file: every byte value, the empty payload,
/// newlines and NULs, and a run of pseudo-random bytes.
fn binary_payloads() -> Vec<Vec<u8>> {
    let mut payloads = vec![
        (0..=255u8).collect::<Vec<u8>>(),
        Vec::new(),
        b"\n".to_vec(),
        b"a\nb\r\nc".to_vec(),
        b"\0".to_vec(),
        b"\0\0x\0\n\0".to_vec(),
        (0..=255u8).rev().collect(),
        Vec::new(),
    ];
    let mut x: u32 = 0x1234_5678;
    for n in 0..200 {
        let payload = (0..n * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        payloads.push(payload);
    }
    payloads
}

fn mark(sequence: i64, part: u16, parts: u16) -> BatchMark {
    BatchMark {
        publisher: Bytes::from_static(b"pub-7f3a"),
        sequence,
        part,
        parts,
    }
}

/// The files under a temporary cluster root, and what was written into them.
struct Fixture {
    dir: tempfile::TempDir,
    /// (a): closed `lines` file.
    lines_file: PathBuf,
    /// Records of (a), in order, without newlines.
    lines: Vec<Vec<u8>>,
    /// Sum of the `amount` field over the records of (a).
    lines_sum: u64,
    /// (b): closed `base64` file.
    base64_file: PathBuf,
    /// Payloads of (b), in order.
    payloads: Vec<Vec<u8>>,
    /// (c): open `lines` file whose last frame is a prefix (torn).
    torn_file: PathBuf,
    /// (c'): open `lines` file whose last frame has full length but a bad checksum.
    corrupt_last_file: PathBuf,
    /// Records in the complete frames of (c) and (c').
    open_records: Vec<Vec<u8>>,
    /// Bytes of the complete frames (and marks) of (c) and (c').
    open_valid_len: u64,
}

fn records_of(encoding: Encoding, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        encoding
            .encode_into(p, &mut out)
            .expect("encodable payload");
    }
    out
}

fn write_file(root: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, bytes).expect("write data file");
    path
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut enc = FrameEncoder::new(3).expect("encoder");
    let collector = NodeName::new("c1").unwrap();
    let minute = Minute::parse_flexible("2026-11-22T10:05Z").unwrap();
    let clicks = Topic::new("clicks").unwrap();

    // (a) lines, three frames, marks before the second, trailer.
    let lines: Vec<Vec<u8>> = (0..RECORDS).map(json_record).collect();
    let mut file = Vec::new();
    let mut at = 0;
    let mut record_bytes = 0u64;
    for (k, n) in FRAME_SPLIT.into_iter().enumerate() {
        let records = records_of(Encoding::Lines, &lines[at..at + n]);
        record_bytes += records.len() as u64;
        if k == 1 {
            file.extend_from_slice(&encode_marks_v1(&[mark(41, 0, 2), mark(42, 1, 1)]));
        }
        file.extend_from_slice(&enc.frame(&records).unwrap());
        at += n;
    }
    file.extend_from_slice(
        &Trailer {
            encoding: Encoding::Lines,
            records: RECORDS as u64,
            record_bytes,
        }
        .encode(),
    );
    let rel = Layout::collector_file(&clicks, &collector, minute, 0);
    assert_eq!(rel, "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst");
    let lines_file = write_file(root, &rel, &file);

    // (b) base64 of arbitrary bytes, two frames, trailer.
    let blobs = Topic::new("blobs").unwrap();
    let payloads = binary_payloads();
    let (first, second) = payloads.split_at(100);
    let mut file = Vec::new();
    let mut record_bytes = 0u64;
    for part in [first, second] {
        let records = records_of(Encoding::Base64, part);
        record_bytes += records.len() as u64;
        file.extend_from_slice(&enc.frame(&records).unwrap());
    }
    file.extend_from_slice(
        &Trailer {
            encoding: Encoding::Base64,
            records: payloads.len() as u64,
            record_bytes,
        }
        .encode(),
    );
    let rel = Layout::collector_file(&blobs, &collector, minute, 0);
    let base64_file = write_file(root, &rel, &file);

    // (c) an open file: two complete frames, then marks and a torn third frame.
    // The third frame holds ~300 KiB, so several zstd blocks, and is cut after
    // roughly half its compressed bytes.
    let open_records: Vec<Vec<u8>> = lines[..2_000].to_vec();
    let mut file = Vec::new();
    file.extend_from_slice(
        &enc.frame(&records_of(Encoding::Lines, &open_records[..500]))
            .unwrap(),
    );
    file.extend_from_slice(&encode_marks_v1(&[mark(43, 0, 1)]));
    file.extend_from_slice(
        &enc.frame(&records_of(Encoding::Lines, &open_records[500..]))
            .unwrap(),
    );
    let open_valid_len = file.len() as u64;
    let lost = enc
        .frame(&records_of(Encoding::Lines, &lines[2_000..6_000]))
        .unwrap();
    let blocks = block_ends(&lost);
    assert!(
        blocks.len() >= 3,
        "the lost frame has several blocks: {blocks:?}"
    );
    let mut torn = file.clone();
    torn.extend_from_slice(&encode_marks_v1(&[mark(44, 0, 1)]));
    // Cut in the middle of the second block: the first block is whole, so a
    // streaming decoder can decode it although the frame never completed.
    torn.extend_from_slice(&lost[..(blocks[0] + blocks[1]) / 2]);
    let rel = Layout::collector_file(&clicks, &collector, minute, 1);
    let torn_file = write_file(root, &rel, &torn);

    // (c') the same, but the last frame is whole in length and fails its checksum
    // (a crash can leave a plausible length with garbage in it).
    let mut corrupt = file.clone();
    let mut bad = lost.to_vec();
    let n = bad.len();
    bad[n - 2] ^= 0x5a; // inside the 4-byte content checksum
    corrupt.extend_from_slice(&bad);
    let rel = Layout::collector_file(&clicks, &collector, minute, 2);
    let corrupt_last_file = write_file(root, &rel, &corrupt);

    let lines_sum = (0..RECORDS).map(amount).sum();
    Fixture {
        dir,
        lines_file,
        lines,
        lines_sum,
        base64_file,
        payloads,
        torn_file,
        corrupt_last_file,
        open_records,
        open_valid_len,
    }
}

/// Offsets just past each block of a zstd frame (RFC 8878 section 3.1.1).
fn block_ends(frame: &[u8]) -> Vec<usize> {
    let fhd = frame[4];
    let single_segment = fhd & 0x20 != 0;
    let fcs = match fhd >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dict_id = [0, 1, 2, 4][usize::from(fhd & 3)];
    let mut at = 4 + 1 + usize::from(!single_segment) + dict_id + fcs;
    let mut ends = Vec::new();
    loop {
        let header = u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], 0]);
        let last = header & 1 != 0;
        let size = (header >> 3) as usize;
        at += 3 + if (header >> 1) & 3 == 1 { 1 } else { size };
        ends.push(at);
        if last {
            return ends;
        }
    }
}

fn joined_lines(records: &[Vec<u8>]) -> Vec<u8> {
    records_of(Encoding::Lines, records)
}

fn rel_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Our own reader first: the fixture is what the format says.
#[test]
fn fixture_matches_the_format_and_the_layout() {
    let f = fixture();
    let buf = std::fs::read(&f.lines_file).unwrap();
    let decoded = decode_file("a", &buf, Encoding::Lines).unwrap();
    assert_eq!(decoded.payloads.len(), RECORDS);
    assert!(decoded
        .payloads
        .iter()
        .zip(&f.lines)
        .all(|(a, b)| a[..] == b[..]));
    assert!(decoded.scan.is_closed());
    assert_eq!(
        decoded.scan.frames.len(),
        5,
        "3 data frames, marks, trailer"
    );
    assert_eq!(
        decoded.marks().cloned().collect::<Vec<_>>(),
        vec![mark(41, 0, 2), mark(42, 1, 1)]
    );
    let trailer = decoded.scan.trailer.unwrap();
    assert_eq!(trailer.records, RECORDS as u64);
    assert_eq!(trailer.record_bytes, joined_lines(&f.lines).len() as u64);

    let buf = std::fs::read(&f.base64_file).unwrap();
    let decoded = decode_file("b", &buf, Encoding::Base64).unwrap();
    assert!(decoded.scan.is_closed());
    let got: Vec<&[u8]> = decoded.payloads.iter().map(|p| &p[..]).collect();
    let want: Vec<&[u8]> = f.payloads.iter().map(|p| &p[..]).collect();
    assert_eq!(got, want);

    for file in [
        &f.lines_file,
        &f.base64_file,
        &f.torn_file,
        &f.corrupt_last_file,
    ] {
        let name = rel_name(file);
        assert!(
            !Layout::is_hidden(&name),
            "{name} would be hidden from Hadoop"
        );
        let rel = file
            .strip_prefix(f.dir.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let located = Layout::parse_path(&rel).unwrap();
        assert_eq!(located.view, View::Collector);
        assert_eq!(located.to_path().unwrap(), rel);
    }
}

/// `zstd -dc` of a closed `lines` file is exactly its records, one per line;
/// `zstd -t` accepts it (skippable frames included).
#[test]
fn zstd_cli_reads_a_lines_file() {
    if !gate::zstd_cli("zstd_cli_reads_a_lines_file") {
        return;
    }
    let f = fixture();
    assert_eq!(zstd_dc(&f.lines_file), joined_lines(&f.lines));
    let t = zstd(&["-t"], &f.lines_file);
    assert!(
        t.status.success(),
        "zstd -t: {}",
        String::from_utf8_lossy(&t.stderr)
    );
}

/// `zstd -dc` of a `base64` file gives one base64 line per payload (empty payloads
/// are empty lines), and every line decodes back to its payload.
#[test]
fn zstd_cli_reads_a_base64_file() {
    if !gate::zstd_cli("zstd_cli_reads_a_base64_file") {
        return;
    }
    let f = fixture();
    let plain = zstd_dc(&f.base64_file);
    assert!(plain.ends_with(b"\n"));
    let lines: Vec<&[u8]> = plain[..plain.len() - 1].split(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), f.payloads.len());
    for (i, (line, payload)) in lines.iter().zip(&f.payloads).enumerate() {
        assert!(
            line.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)),
            "line {i} is not standard base64: {:?}",
            String::from_utf8_lossy(line)
        );
        let decoded = Encoding::Base64.decode(line).unwrap();
        assert_eq!(&decoded[..], &payload[..], "payload {i}");
    }
    let t = zstd(&["-t"], &f.base64_file);
    assert!(
        t.status.success(),
        "zstd -t: {}",
        String::from_utf8_lossy(&t.stderr)
    );
}

/// A file still being written: the CLI fails on the torn last frame, while
/// `decode_file` returns exactly the records of the complete frames.
#[test]
fn torn_tail_fails_the_cli_but_not_our_reader() {
    let f = fixture();
    for (file, what) in [
        (&f.torn_file, "torn"),
        (&f.corrupt_last_file, "bad checksum"),
    ] {
        let buf = std::fs::read(file).unwrap();
        let decoded = decode_file("c", &buf, Encoding::Lines).unwrap();
        let got: Vec<&[u8]> = decoded.payloads.iter().map(|p| &p[..]).collect();
        let want: Vec<&[u8]> = f.open_records.iter().map(|p| &p[..]).collect();
        assert!(got == want, "{what}: records of the complete frames only");
        assert!(decoded.scan.torn_bytes > 0, "{what}: torn bytes reported");
        assert_eq!(decoded.scan.valid_len, f.open_valid_len, "{what}");
        assert_eq!(
            decoded.scan.torn_bytes,
            buf.len() as u64 - f.open_valid_len,
            "{what}: marks before the lost frame go with it"
        );
        assert!(!decoded.scan.is_closed());
        assert_eq!(
            decoded.marks().cloned().collect::<Vec<_>>(),
            vec![mark(43, 0, 1)],
            "{what}"
        );
    }

    if !gate::zstd_cli("torn_tail_fails_the_cli_but_not_our_reader") {
        return;
    }
    let complete = joined_lines(&f.open_records);
    for (file, what) in [
        (&f.torn_file, "torn"),
        (&f.corrupt_last_file, "bad checksum"),
    ] {
        let t = zstd(&["-t"], file);
        assert!(!t.status.success(), "zstd -t accepted the {what} file");
        let dc = zstd(&["-dc"], file);
        assert!(!dc.status.success(), "zstd -dc accepted the {what} file");
        // The CLI streams: it writes the complete frames, and may write blocks of
        // the broken frame before noticing. Only a frame-aware reader can tell.
        assert!(
            dc.stdout.starts_with(&complete),
            "{what}: zstd -dc output starts with the complete frames"
        );
        eprintln!(
            "{what}: zstd -dc wrote {} bytes beyond the complete frames before failing: {}",
            dc.stdout.len() - complete.len(),
            String::from_utf8_lossy(&dc.stderr).trim()
        );
    }
}

/// Frames concatenate: a file made of two closed files (trailer in the middle
/// included) decodes to both files' records, which is what hourly compaction
/// relies on.
#[test]
fn concatenated_files_decode_to_both() {
    let f = fixture();
    let one = std::fs::read(&f.lines_file).unwrap();
    let two = [one.clone(), one].concat();
    let path = f.dir.path().join("twice.zst");
    std::fs::write(&path, &two).unwrap();
    let decoded = decode_file("twice", &two, Encoding::Lines).unwrap();
    assert_eq!(decoded.payloads.len(), 2 * RECORDS);
    assert!(decoded.scan.is_closed());
    if !gate::zstd_cli("concatenated_files_decode_to_both") {
        return;
    }
    let once = joined_lines(&f.lines);
    assert_eq!(zstd_dc(&path), [once.clone(), once].concat());
    assert!(zstd(&["-t"], &path).status.success());
}

const PY_ZSTANDARD: &str = r#"
import json, sys, zstandard
path, torn_path = sys.argv[1], sys.argv[2]
with open(path, "rb") as fh:
    data = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
lines = data.split(b"\n")
assert lines[-1] == b"", "content ends with a newline"
lines = lines[:-1]
with open(path, "rb") as fh:
    raw = fh.read()
# One-shot decompress() is not a file reader: it stops after the first frame.
try:
    one_shot = len(zstandard.ZstdDecompressor().decompress(raw))
except zstandard.ZstdError as e:
    one_shot = str(e)
obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(raw)
# A torn tail: what does a stock streaming reader do?
with open(torn_path, "rb") as fh:
    try:
        torn = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
        torn_result = {"ok": True, "bytes": len(torn), "prefix": torn.hex()}
    except zstandard.ZstdError as e:
        torn_result = {"ok": False, "error": str(e)}
print(json.dumps({
    "count": len(lines),
    "bytes": len(data),
    "first": lines[0].decode(),
    "last": lines[-1].decode(),
    "one_shot": one_shot,
    "decompressobj_bytes": len(obj),
    "torn": torn_result,
}))
"#;

/// Python `zstandard`'s streaming reader with `read_across_frames=True` reads the
/// whole file (skippable frames decode to nothing). On a torn tail it is not a
/// safe reader of open files: it may return bytes of the incomplete frame.
#[test]
fn python_zstandard_reads_across_frames() {
    if !gate::python("python_zstandard_reads_across_frames", "zstandard") {
        return;
    }
    let f = fixture();
    let got = python_json(
        PY_ZSTANDARD,
        &[
            f.lines_file.to_str().unwrap(),
            f.torn_file.to_str().unwrap(),
        ],
    );
    let all = joined_lines(&f.lines);
    assert_eq!(got["count"], RECORDS);
    assert_eq!(got["bytes"], all.len());
    assert_eq!(
        got["first"].as_str().unwrap().as_bytes(),
        &f.lines[0][..],
        "first line"
    );
    assert_eq!(
        got["last"].as_str().unwrap().as_bytes(),
        &f.lines[RECORDS - 1][..],
        "last line"
    );
    assert_eq!(got["decompressobj_bytes"], all.len());
    eprintln!(
        "zstandard one-shot decompress() of a {}-byte stream: {} (first frame: {} bytes)",
        all.len(),
        got["one_shot"],
        joined_lines(&f.lines[..FRAME_SPLIT[0]]).len()
    );
    let complete = joined_lines(&f.open_records);
    let torn = &got["torn"];
    if torn["ok"] == true {
        let n = torn["bytes"].as_u64().unwrap() as usize;
        let hex = torn["prefix"].as_str().unwrap();
        let prefix: Vec<u8> = (0..complete.len())
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(prefix, complete, "the complete frames come first");
        eprintln!(
            "zstandard on a torn tail: no error, {} bytes beyond the complete frames",
            n - complete.len()
        );
    } else {
        eprintln!("zstandard on a torn tail: error {}", torn["error"]);
    }
}

const PY_DUCKDB: &str = r#"
import json, sys, duckdb
out = {}
con = duckdb.connect()
for key, path in (("a", sys.argv[1]), ("twice", sys.argv[2])):
    count, total, first, last = con.execute(
        "SELECT count(*), sum(amount), min(i), max(i) FROM read_json(?, format='newline_delimited', compression='zstd')",
        [path],
    ).fetchone()
    out[key] = {"count": count, "sum": int(total), "min_i": first, "max_i": last}
rows, nulls, chars = con.execute(
    "SELECT count(*), count(*) - count(line), sum(length(line)) FROM read_csv(?, columns={'line': 'VARCHAR'}, header=false, delim='\x01', quote='', escape='', compression='zstd')",
    [sys.argv[3]],
).fetchone()
out["base64"] = {"rows": rows, "nulls": nulls, "chars": int(chars or 0)}
try:
    out["torn"] = {"ok": True, "count": con.execute(
        "SELECT count(*) FROM read_json(?, format='newline_delimited', compression='zstd')",
        [sys.argv[4]],
    ).fetchone()[0]}
except duckdb.Error as e:
    out["torn"] = {"ok": False, "error": str(e).splitlines()[0]}
print(json.dumps(out))
"#;

/// DuckDB reads a closed file (skippable frames included) and a concatenation of
/// two closed files.
#[test]
fn duckdb_reads_json_lines() {
    if !gate::python("duckdb_reads_json_lines", "duckdb") {
        return;
    }
    let f = fixture();
    let one = std::fs::read(&f.lines_file).unwrap();
    let twice = f.dir.path().join("twice.json.zst");
    std::fs::write(&twice, [one.clone(), one].concat()).unwrap();
    let got = python_json(
        PY_DUCKDB,
        &[
            f.lines_file.to_str().unwrap(),
            twice.to_str().unwrap(),
            f.base64_file.to_str().unwrap(),
            f.torn_file.to_str().unwrap(),
        ],
    );
    assert_eq!(got["a"]["count"], RECORDS, "{got}");
    assert_eq!(got["a"]["sum"], f.lines_sum, "{got}");
    assert_eq!(got["a"]["min_i"], 0, "{got}");
    assert_eq!(got["a"]["max_i"], RECORDS - 1, "{got}");
    assert_eq!(got["twice"]["count"], 2 * RECORDS, "{got}");
    assert_eq!(got["twice"]["sum"], 2 * f.lines_sum, "{got}");
    // A base64 file read as one text column: one row per payload; the empty line
    // of an empty payload reads as NULL.
    let empty = f.payloads.iter().filter(|p| p.is_empty()).count();
    let chars: usize = f
        .payloads
        .iter()
        .map(|p| Encoding::Base64.record_len(p.len()) - 1)
        .sum();
    assert_eq!(got["base64"]["rows"], f.payloads.len(), "{got}");
    assert_eq!(got["base64"]["nulls"], empty, "{got}");
    assert_eq!(got["base64"]["chars"], chars, "{got}");
    eprintln!("duckdb on a torn tail: {}", got["torn"]);
}
