//! Stock readers agree with our writer (`docs/format.md`).
//!
//! Files are built with `conduit_core::format` exactly as a collector builds them
//! (layout 2: independent frames of whole records, each followed by its batch
//! marks, an index and a close trailer with a CRC-32C) under the names
//! `conduit_core::layout::Layout` gives them, then read with tools nobody here
//! wrote: the `zstd` CLI, Python `zstandard`, DuckDB, polars and pyarrow.
//!
//! * (a) a closed `lines` file: 3 frames (batches in the second), 10 000 JSON
//!   records, index, trailer;
//! * (b) a closed `base64` file of arbitrary binary payloads;
//! * (c) a file still being written whose last frame is torn (a prefix), and a
//!   variant whose last frame is complete in length but fails its checksum;
//! * a layout 1 file (marks before their frame, 40-byte trailer), written byte by
//!   byte from the spec, still decodes and recovers;
//! * no file a real collector process writes starts with a skippable frame.
//!
//! The `zstd` CLI and the Python modules are required in CI (`CI` set) and skipped
//! loudly elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use conduit_core::format::{
    crc32c_append, decode_file, encode_closing, encode_marks, read_index, BatchMark, Encoding,
    FileBatch, FoundMark, FrameEncoder, IndexEntry, PartMark, Trailer, TRAILER_V2_LEN,
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

/// A version 2 mark of `mark(sequence, part, parts)` for `records` records from
/// `first_record` of its frame.
fn part_mark(sequence: i64, part: u16, parts: u16, first_record: u32, records: u32) -> PartMark {
    PartMark {
        batch: mark(sequence, part, parts),
        digest: 0x5eed_0000 + sequence as u64,
        first_record,
        records,
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

    // (a) lines, three frames each followed by its marks (batches in the second),
    // index, trailer.
    let lines: Vec<Vec<u8>> = (0..RECORDS).map(json_record).collect();
    let mut file = Vec::new();
    let mut at = 0;
    let mut record_bytes = 0u64;
    let mut index = Vec::new();
    for (k, n) in FRAME_SPLIT.into_iter().enumerate() {
        let records = records_of(Encoding::Lines, &lines[at..at + n]);
        record_bytes += records.len() as u64;
        let frame_offset = file.len() as u64;
        file.extend_from_slice(&enc.frame(&records).unwrap());
        let marks = if k == 1 {
            vec![
                part_mark(41, 0, 2, 0, 1000),
                part_mark(42, 1, 1, 1000, 2000),
            ]
        } else {
            vec![]
        };
        file.extend_from_slice(&encode_marks(&marks));
        index.extend(
            marks
                .into_iter()
                .map(|mark| IndexEntry { frame_offset, mark }),
        );
        at += n;
    }
    let crc = crc32c_append(0, &file);
    file.extend_from_slice(&encode_closing(
        &Trailer {
            encoding: Encoding::Lines,
            records: RECORDS as u64,
            record_bytes,
        },
        crc,
        Some(&index),
    ));
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
        file.extend_from_slice(&encode_marks(&[]));
    }
    let crc = crc32c_append(0, &file);
    file.extend_from_slice(&encode_closing(
        &Trailer {
            encoding: Encoding::Base64,
            records: payloads.len() as u64,
            record_bytes,
        },
        crc,
        Some(&[]),
    ));
    let rel = Layout::collector_file(&blobs, &collector, minute, 0);
    let base64_file = write_file(root, &rel, &file);

    // (c) an open file: two complete units (frame and marks), then a torn third
    // frame.
    // The third frame holds ~300 KiB, so several zstd blocks, and is cut after
    // roughly half its compressed bytes.
    let open_records: Vec<Vec<u8>> = lines[..2_000].to_vec();
    let mut file = Vec::new();
    file.extend_from_slice(
        &enc.frame(&records_of(Encoding::Lines, &open_records[..500]))
            .unwrap(),
    );
    file.extend_from_slice(&encode_marks(&[]));
    file.extend_from_slice(
        &enc.frame(&records_of(Encoding::Lines, &open_records[500..]))
            .unwrap(),
    );
    file.extend_from_slice(&encode_marks(&[part_mark(43, 0, 1, 0, 1500)]));
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
    corrupt.extend_from_slice(&encode_marks(&[part_mark(44, 0, 1, 0, 4000)]));
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
        8,
        "3 data frames, each with marks, index, trailer"
    );
    assert_eq!(
        decoded.marks().cloned().collect::<Vec<_>>(),
        vec![mark(41, 0, 2), mark(42, 1, 1)]
    );
    let second_frame = decoded.scan.frames[2].offset;
    assert_eq!(
        decoded.batches[1],
        FileBatch {
            frame_offset: second_frame,
            mark: FoundMark::V2(part_mark(42, 1, 1, 1000, 2000))
        },
        "marks describe the data frame before them"
    );
    let close = decoded.scan.close.unwrap();
    assert_eq!(close.version, 2);
    assert_eq!(
        close.crc32c,
        crc32c_append(0, &buf[..buf.len() - TRAILER_V2_LEN])
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
            "{what}: the lost frame (and its marks) go"
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

const PY_POLARS_PYARROW: &str = r#"
import io, json, sys, polars as pl, pyarrow as pa, pyarrow.compute as pc, pyarrow.json as pj
one, glob = sys.argv[1], sys.argv[2]
out = {}
df = pl.read_ndjson(one)
out["polars"] = {"count": df.height, "sum": int(df["amount"].sum()), "max_i": int(df["i"].max())}
lazy = pl.scan_ndjson(glob).select(pl.len().alias("n"), pl.col("amount").sum().alias("s")).collect()
out["polars_scan"] = {"count": int(lazy["n"][0]), "sum": int(lazy["s"][0])}
with pa.input_stream(one, compression="zstd") as stream:
    table = pj.read_json(io.BytesIO(stream.read()))
out["pyarrow"] = {"count": table.num_rows, "sum": int(pc.sum(table["amount"]).as_py())}
print(json.dumps(out))
"#;

/// polars (`read_ndjson`, `scan_ndjson` over a glob) and pyarrow
/// (`input_stream(..., compression="zstd")` + `pyarrow.json`) read a closed file
/// completely: it opens with a data frame (layout 2), so no reader trips on a
/// skippable frame first (issue 15: polars failed on files that did).
#[test]
fn polars_and_pyarrow_read_json_lines() {
    let test = "polars_and_pyarrow_read_json_lines";
    if !gate::python(test, "polars") || !gate::python(test, "pyarrow") {
        return;
    }
    let f = fixture();
    let copies = f.dir.path().join("copies");
    std::fs::create_dir_all(&copies).unwrap();
    for name in ["a.zst", "b.zst"] {
        std::fs::copy(&f.lines_file, copies.join(name)).unwrap();
    }
    let got = python_json(
        PY_POLARS_PYARROW,
        &[
            f.lines_file.to_str().unwrap(),
            copies.join("*.zst").to_str().unwrap(),
        ],
    );
    assert_eq!(got["polars"]["count"], RECORDS, "{got}");
    assert_eq!(got["polars"]["sum"], f.lines_sum, "{got}");
    assert_eq!(got["polars"]["max_i"], RECORDS - 1, "{got}");
    assert_eq!(got["polars_scan"]["count"], 2 * RECORDS, "{got}");
    assert_eq!(got["polars_scan"]["sum"], 2 * f.lines_sum, "{got}");
    assert_eq!(got["pyarrow"]["count"], RECORDS, "{got}");
    assert_eq!(got["pyarrow"]["sum"], f.lines_sum, "{got}");
}

/// A version 1 marks frame with one entry, byte by byte from `docs/format.md`
/// §3.3 (not through `conduit_core::format`, so the spec is checked too).
fn v1_marks_by_hand(id: &[u8], sequence: i64, part: u16, parts: u16) -> Vec<u8> {
    let mut body = b"CONDUIT-BATCH".to_vec();
    body.push(1);
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&(id.len() as u16).to_le_bytes());
    body.extend_from_slice(id);
    body.extend_from_slice(&sequence.to_le_bytes());
    body.extend_from_slice(&part.to_le_bytes());
    body.extend_from_slice(&parts.to_le_bytes());
    let mut out = 0x184D_2A5Du32.to_le_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A version 1 (40-byte) `lines` trailer, byte by byte from §3.2.
fn v1_trailer_by_hand(records: u64, record_bytes: u64) -> Vec<u8> {
    let mut out = 0x184D_2A5Cu32.to_le_bytes().to_vec();
    out.extend_from_slice(&32u32.to_le_bytes());
    out.extend_from_slice(b"CONDUIT-CLOSED");
    out.push(1);
    out.push(1);
    out.extend_from_slice(&records.to_le_bytes());
    out.extend_from_slice(&record_bytes.to_le_bytes());
    out
}

/// A layout 1 file, as collectors wrote before marks v2: a frame without
/// batches, marks, the frame they describe.
fn v1_units(enc: &mut FrameEncoder) -> (Vec<u8>, Vec<Vec<u8>>, u64) {
    let first: Vec<Vec<u8>> = (0..5).map(|i| format!("old-{i}").into_bytes()).collect();
    let second: Vec<Vec<u8>> = (5..9).map(|i| format!("old-{i}").into_bytes()).collect();
    let mut file = enc
        .frame(&records_of(Encoding::Lines, &first))
        .unwrap()
        .to_vec();
    file.extend_from_slice(&v1_marks_by_hand(b"pub-old", 5, 0, 1));
    let second_at = file.len() as u64;
    file.extend_from_slice(&enc.frame(&records_of(Encoding::Lines, &second)).unwrap());
    (file, [first, second].concat(), second_at)
}

/// Files written by older collectors stay readable: decoded by our reader and by
/// stock tools when closed, and recovered (closed, their batches remembered) by a
/// collector process when they were left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_file_still_decodes_and_recovers() {
    use conduit_core::storage::LocalStorage;
    use conduit_core::Storage;
    use conduit_testkit::process::{metric, CollectorProcess};
    use conduit_testkit::scribe::Client;

    let dir = tempfile::tempdir().unwrap();
    let mut enc = FrameEncoder::new(3).unwrap();
    let (units, payloads, second_at) = v1_units(&mut enc);
    let record_bytes = joined_lines(&payloads).len() as u64;

    // Closed, with a 40-byte trailer.
    let mut closed = units.clone();
    closed.extend_from_slice(&v1_trailer_by_hand(payloads.len() as u64, record_bytes));
    let decoded = decode_file("v1", &closed, Encoding::Lines).unwrap();
    assert!(decoded.scan.is_closed());
    assert_eq!(decoded.payloads.len(), payloads.len());
    assert!(decoded
        .payloads
        .iter()
        .zip(&payloads)
        .all(|(a, b)| a[..] == b[..]));
    assert_eq!(decoded.scan.close.unwrap().version, 1);
    assert_eq!(
        decoded.batches,
        vec![FileBatch {
            frame_offset: second_at,
            mark: FoundMark::V1(BatchMark {
                publisher: Bytes::from_static(b"pub-old"),
                sequence: 5,
                part: 0,
                parts: 1
            })
        }],
        "layout 1 marks describe the frame after them"
    );
    let path = dir.path().join("v1-closed.zst");
    std::fs::write(&path, &closed).unwrap();
    if gate::zstd_cli("a_v1_file_still_decodes_and_recovers") {
        assert_eq!(zstd_dc(&path), joined_lines(&payloads));
    }

    // Left open, with a torn layout 1 unit (marks, half a frame) at the end.
    let root = dir.path().join("root");
    let mut open = units.clone();
    open.extend_from_slice(&v1_marks_by_hand(b"pub-old", 6, 0, 1));
    let lost = enc
        .frame(&records_of(Encoding::Lines, &[b"never acked".to_vec()]))
        .unwrap();
    open.extend_from_slice(&lost[..lost.len() / 2]);
    let rel = "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst";
    write_file(&root, rel, &open);
    let collector = CollectorProcess::start(
        &root.display().to_string(),
        "c1",
        &[],
        &dir.path().join("logs"),
    )
    .expect("collector starts");
    let storage = LocalStorage::open(&root).unwrap();
    let recovered = storage.read(rel).await.unwrap();
    let decoded = decode_file(rel, &recovered, Encoding::Lines).unwrap();
    assert!(decoded.scan.is_closed(), "recovery closed it");
    assert_eq!(
        decoded.payloads.len(),
        payloads.len(),
        "the torn unit is cut"
    );
    assert_eq!(
        &recovered[..units.len()],
        &units[..],
        "kept bytes unchanged"
    );
    let tail = read_index(&storage, rel, recovered.len() as u64)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tail.close.version, 2);
    assert_eq!(tail.index, None, "layout 1 marks cannot be indexed");
    assert_eq!(
        tail.close.crc32c,
        crc32c_append(0, &recovered[..recovered.len() - TRAILER_V2_LEN])
    );
    // The batch its marks name is remembered: a retry is acknowledged, not stored
    // again (layout 1 marks carry no digest, so any content matches).
    let mut client = Client::connect(&collector.thrift_addr).await;
    let retry = [("clicks", "old-5")];
    assert_eq!(
        client.log_batch("pub-old", 5, &retry).await,
        conduit_core::scribe::ResultCode::Ok
    );
    let text = collector.metrics();
    assert_eq!(
        metric(&text, "conduit_collector_duplicate_batches_total"),
        Some(1.0)
    );
    let all = conduit_testkit::collector::stored_payloads(&storage, "clicks").await;
    assert_eq!(all.len(), payloads.len(), "nothing stored twice");
}

/// Every file a collector process writes is layout 2: it starts with a data frame
/// (tools that sniff the first bytes see zstd), every index entry points at the
/// records of its batch, the trailer's CRC-32C covers the bytes before it, and the
/// zstd CLI reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_a_collector_writes_starts_with_a_skippable_frame() {
    use conduit_core::format::split_records;
    use conduit_core::storage::LocalStorage;
    use conduit_core::Storage;
    use conduit_testkit::process::CollectorProcess;
    use conduit_testkit::scribe::Client;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut collector = CollectorProcess::start(
        &root.display().to_string(),
        "c1",
        &[],
        &dir.path().join("logs"),
    )
    .expect("collector starts");
    let mut client = Client::connect(&collector.thrift_addr).await;
    let ok = conduit_core::scribe::ResultCode::Ok;
    // A plain Log (no batch), then batches: small parts (framed by the committer),
    // a large part (compressed on the connection), and one with an entry for
    // `_invalid`.
    assert_eq!(client.log_to("clicks", &["plain"]).await, ok);
    let big: Vec<String> = (0..500).map(|i| format!("{i:0>100}")).collect();
    let mut batch: Vec<(&str, String)> = vec![("clicks", "b1-a".into()), ("clicks", "b1-b".into())];
    batch.extend(big.iter().map(|p| ("views", p.clone())));
    assert_eq!(client.log_batch("pub-1", 1, &batch).await, ok);
    let with_invalid = [("clicks", "b2-a"), ("no-such topic!", "x")];
    assert_eq!(client.log_batch("pub-1", 2, &with_invalid).await, ok);
    collector.terminate().expect("clean shutdown");

    let storage = LocalStorage::open(&root).unwrap();
    let mut files = 0;
    let mut indexed = 0;
    for topic in ["clicks", "views", "_invalid"] {
        for file in conduit_testkit::collector::stored_files(&storage, topic).await {
            files += 1;
            let bytes = storage.read(&file.path).await.unwrap();
            assert_eq!(
                bytes[..4],
                [0x28, 0xB5, 0x2F, 0xFD],
                "{} starts with a zstd data frame",
                file.path
            );
            assert!(file.is_closed(), "{}", file.path);
            let tail = read_index(&storage, &file.path, bytes.len() as u64)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(tail.close.version, 2, "{}", file.path);
            assert_eq!(
                tail.close.crc32c,
                crc32c_append(0, &bytes[..bytes.len() - TRAILER_V2_LEN]),
                "{}",
                file.path
            );
            let index = tail.index.expect("a collector file has an index");
            assert_eq!(Some(index.clone()), file.decoded.index(), "{}", file.path);
            for entry in index {
                indexed += 1;
                let at = entry.frame_offset as usize;
                let frame = &bytes[at..];
                let len = conduit_core::format::scan(frame, 0).frames[0].len as usize;
                let content = conduit_core::format::decode_frame(&frame[..len]).unwrap();
                let records: Vec<&[u8]> = split_records(&content).collect();
                let first = entry.mark.first_record as usize;
                let part = &records[first..first + entry.mark.records as usize];
                let want: Vec<Vec<u8>> = match (topic, entry.mark.batch.sequence) {
                    ("clicks", 1) => vec![b"b1-a".to_vec(), b"b1-b".to_vec()],
                    ("views", 1) => big.iter().map(|p| p.clone().into_bytes()).collect(),
                    ("clicks", 2) => vec![b"b2-a".to_vec()],
                    ("_invalid", 2) => {
                        assert_eq!(part.len(), 1);
                        assert!(String::from_utf8_lossy(part[0]).contains("invalid_topic"));
                        continue;
                    }
                    other => panic!("unexpected batch {other:?} in {}", file.path),
                };
                let got: Vec<Vec<u8>> = part.iter().map(|r| r.to_vec()).collect();
                assert_eq!(got, want, "{topic} batch {}", entry.mark.batch.sequence);
            }
            if gate::zstd_cli("no_file_a_collector_writes_starts_with_a_skippable_frame") {
                let path = root.join(&file.path);
                let joined: Vec<Vec<u8>> = file.payloads().iter().map(|p| p.to_vec()).collect();
                assert_eq!(zstd_dc(&path), joined_lines(&joined), "{}", file.path);
            }
        }
    }
    assert!(files >= 3, "clicks, views and _invalid files: {files}");
    assert_eq!(indexed, 4, "four batch parts in all");
}
