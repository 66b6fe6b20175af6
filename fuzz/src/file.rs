//! Data files: the scanner, the decoders of conduit's skippable frames (marks,
//! index, trailer), the file decoder and torn-tail recovery (`core::format`).
//!
//! Two checks:
//!
//! - [`check_bytes`]: the input is a file's bytes. `scan`, `decode_file`, the
//!   frame decoders and `read_index` never panic; the scan accounts for every
//!   byte; a marks, index or trailer frame that decodes re-encodes to the same
//!   bytes; what `decode_file` keeps decodes alone to the same records; and
//!   recovery on a real `LocalStorage` keeps exactly those bytes and closes the
//!   file with an index, and a trailer that counts exactly those records and
//!   checksums every byte before it.
//! - [`check_written`]: the input describes records, frames and batch marks
//!   ([`Written::parse`]); they are written the way a collector writes a file
//!   (version 2: `data marks` units, then index and trailer; version 1, older
//!   collectors: `[marks] data` units, then the old trailer), the file is torn at
//!   a chosen byte and recovered with a chosen acknowledged length. What decodes
//!   is exactly the units that are complete before the tear; a closed file holds
//!   as many records as its trailer says; recovery keeps exactly the complete
//!   units within the acknowledged length and closes the file with their count,
//!   their index and its checksum.

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use conduit_core::format::{
    self, close_recovered, crc32c_append, decode_file, decode_index, decode_marks, decode_trailer,
    encode_closing, encode_index, encode_marks, encode_marks_v1, index_of, read_file, read_index,
    scan, trailer_in_tail, BatchMark, ClosedTail, Decoded, FileBatch, FoundMark, FrameEncoder,
    Marks, PartMark, Scan, TRAILER_V2_LEN,
};
use conduit_core::storage::{CreateMode, LocalStorage};
use conduit_core::{Encoding, Storage, Trailer};

/// The storage recovery runs on: a `LocalStorage` in a temporary directory (in
/// `/dev/shm` where there is one, so syncs cost little), one per process.
fn storage() -> &'static (tokio::runtime::Runtime, LocalStorage) {
    static STORAGE: OnceLock<(tokio::runtime::Runtime, LocalStorage)> = OnceLock::new();
    STORAGE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("conduit-fuzz-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("conduit-fuzz-").tempdir()
        }
        .expect("a temporary directory");
        // Kept for the life of the process (the fuzzer exits without destructors).
        let root = dir.keep();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        (runtime, LocalStorage::open(root).expect("a local storage"))
    })
}

const PATH: &str = "topic/f.zst";

/// Writes `file` to the fuzz storage and returns its length.
fn put(file: &[u8]) -> u64 {
    let (runtime, storage) = storage();
    runtime.block_on(async {
        let mut writer = storage
            .create(PATH, CreateMode::Overwrite)
            .await
            .expect("create the file");
        writer
            .write(Bytes::copy_from_slice(file))
            .await
            .expect("write the file");
        writer.close().await.expect("close the file");
    });
    file.len() as u64
}

/// What recovering a file found and left: the recovery's report, the file as it
/// reads back afterwards, its bytes and what its tail says.
struct Recovered {
    /// `read_index` on the file as it was before recovery.
    before: Result<Option<ClosedTail>, format::FormatError>,
    recovery: format::Recovery,
    after: Decoded,
    bytes: Bytes,
    /// `None` only for a file recovery did not close (it ended with a trailer)
    /// whose tail does not read (the worker verifies it and quarantines it).
    tail: Option<ClosedTail>,
}

/// Writes `file`, runs `close_recovered` on it with `limit`, and reads it back.
fn recover(file: &[u8], encoding: Encoding, limit: Option<u64>) -> Recovered {
    let len = put(file);
    let (runtime, storage) = storage();
    runtime.block_on(async {
        let before = read_index(storage, PATH, len).await;
        let recovery = close_recovered(storage, PATH, encoding, limit)
            .await
            .unwrap_or_else(|e| panic!("recovery failed on a file that decodes: {e}"));
        let after = read_file(storage, PATH, encoding)
            .await
            .unwrap_or_else(|e| panic!("a recovered file does not decode: {e}"));
        let bytes = storage.read(PATH).await.expect("read the recovered file");
        assert_eq!(recovery.closed_len(), bytes.len() as u64, "closed_len");
        let tail = match read_index(storage, PATH, bytes.len() as u64).await {
            Ok(tail) => Some(tail.expect("a recovered file is closed")),
            // Recovery closes nothing that ends with a trailer (a file that came
            // closed, or whose kept bytes end at one of its own trailers): such a
            // file with a damaged index or trailer stays as it is, and the worker,
            // which verifies every file it seals, quarantines it.
            Err(_) if recovery.was_closed => None,
            Err(e) => panic!("a recovered file's tail does not read: {e}"),
        };
        Recovered {
            before,
            recovery,
            after,
            bytes,
            tail,
        }
    })
}

/// Checks what a file's tail says against its bytes: the trailer is the one the
/// scan found; and, when conduit closed the file (`ours`; not a fuzzed file
/// that came closed), its index is the file's batches and a version 2 trailer
/// with a checksum checksums every byte before it. (Readers check neither; the
/// worker does, and quarantines a file that fails.)
fn check_tail(bytes: &[u8], tail: &ClosedTail, decoded: &Decoded, ours: bool) {
    assert_eq!(Some(tail.trailer), decoded.scan.trailer);
    assert_eq!(Some(tail.close), decoded.scan.close);
    let before = bytes.len() - tail.close.trailer_len() as usize;
    if ours && tail.close.crc32c != 0 {
        assert_eq!(
            crc32c_append(0, &bytes[..before]),
            tail.close.crc32c,
            "the trailer's CRC-32C is that of every byte before it"
        );
    }
    if let (Some(index), true) = (&tail.index, ours) {
        assert_eq!(
            Some(index),
            decoded.index().as_ref(),
            "the index lists the file's batches"
        );
    }
}

/// Checks the structure `scan` reports for `buf`.
fn check_scan(buf: &[u8], s: &Scan) {
    let mut at = 0u64;
    for frame in &s.frames {
        assert_eq!(frame.offset, at, "frames are contiguous from byte 0");
        assert!(frame.len > 0);
        at += frame.len;
    }
    assert_eq!(s.valid_len, at);
    assert_eq!(s.valid_len + s.torn_bytes, buf.len() as u64);
    assert_eq!(s.trailer.is_some(), s.close.is_some());
    if s.trailer.is_some() {
        let last = s.frames.last().expect("a trailer is a frame");
        assert!(last.skippable);
        let bytes = &buf[last.offset as usize..(last.offset + last.len) as usize];
        assert_eq!(decode_trailer(bytes), s.trailer.zip(s.close));
    }
    // A scan of the complete frames alone finds the same frames and nothing torn;
    // from another base offset, the same frames shifted.
    let whole = scan(&buf[..s.valid_len as usize], 7);
    assert_eq!(whole.torn_bytes, 0);
    assert_eq!(whole.trailer, s.trailer);
    assert_eq!(whole.frames.len(), s.frames.len());
    for (a, b) in whole.frames.iter().zip(&s.frames) {
        assert_eq!(
            (a.offset, a.len, a.skippable),
            (b.offset + 7, b.len, b.skippable)
        );
    }
}

/// Conduit's skippable frames decode only from their one canonical encoding:
/// what decodes re-encodes to exactly the same bytes.
fn check_frame_decoders(frame: &[u8]) {
    match decode_marks(frame) {
        Some(Marks::V1(marks)) => assert_eq!(&encode_marks_v1(&marks)[..], frame, "marks v1"),
        Some(Marks::V2(marks)) => assert_eq!(&encode_marks(&marks)[..], frame, "marks v2"),
        None => {}
    }
    if let Some(index) = decode_index(frame) {
        assert_eq!(&encode_index(&index)[..], frame, "index");
    }
    if let Some((trailer, close)) = decode_trailer(frame) {
        let again = match close.version {
            1 => trailer.encode(),
            _ => trailer.encode_v2(close.index_len, close.crc32c),
        };
        assert_eq!(&again[..], frame, "trailer");
    }
    // The trailer at the end of any bytes is one of the two sizes, decoded alone.
    if let Some(found) = trailer_in_tail(frame) {
        let len = found.1.trailer_len() as usize;
        assert_eq!(decode_trailer(&frame[frame.len() - len..]), Some(found));
    }
}

/// Checks a file's bytes (the `data_file` target).
pub fn check_bytes(buf: &[u8]) {
    check_frame_decoders(buf);
    let s = scan(buf, 0);
    check_scan(buf, &s);
    for frame in s.frames.iter().filter(|f| f.skippable) {
        check_frame_decoders(&buf[frame.offset as usize..(frame.offset + frame.len) as usize]);
    }
    // Readers decode with the encoding the trailer names (lines while unclosed).
    let encoding = s.trailer.map_or(Encoding::Lines, |t| t.encoding);
    let Ok(d) = decode_file("f", buf, encoding) else {
        // The worker's one ranged read of a closed file's tail never panics.
        put(buf);
        let (runtime, storage) = storage();
        let _ = runtime.block_on(read_index(storage, PATH, buf.len() as u64));
        return;
    };
    check_scan(buf, &d.scan);
    assert!(d.scan.valid_len <= s.valid_len);
    assert_eq!(d.scan.frames[..], s.frames[..d.scan.frames.len()]);
    if d.scan.valid_len == s.valid_len {
        assert_eq!(d.scan.trailer, s.trailer);
    }
    // (Cut shorter, the trailer is that of the kept bytes: `check_scan` above.)

    // What the decoder keeps decodes alone to the same records: that is what
    // recovery leaves on disk.
    let kept = &buf[..d.scan.valid_len as usize];
    let again = decode_file("f", kept, encoding).expect("the kept bytes decode");
    assert_eq!(again.payloads, d.payloads);
    assert_eq!(again.batches, d.batches);
    assert_eq!(again.record_bytes, d.record_bytes);
    assert_eq!(again.scan.frames, d.scan.frames);
    assert_eq!(again.scan.torn_bytes, 0);

    // Recovery on a real storage keeps exactly those bytes and, if the file was not
    // closed, closes it with an index and a trailer counting exactly those records.
    let r = recover(buf, encoding, None);
    // The worker's one ranged read of a closed file's tail finds the trailer the
    // scan found.
    if let (Ok(Some(tail)), true) = (&r.before, d.scan.is_closed()) {
        assert_eq!(Some(tail.trailer), d.scan.trailer);
    }
    assert_eq!(r.recovery.kept_bytes, d.scan.valid_len);
    assert_eq!(r.recovery.dropped_bytes, d.scan.torn_bytes);
    assert_eq!(r.recovery.was_closed, d.scan.trailer.is_some());
    assert_eq!(r.recovery.records, d.payloads.len() as u64);
    assert_eq!(r.recovery.record_bytes, d.record_bytes);
    assert_eq!(r.recovery.batches, d.batches);
    assert_eq!(r.after.payloads, d.payloads);
    assert_eq!(r.after.batches, d.batches);
    assert!(r.after.scan.is_closed(), "a recovered file is closed");
    if let Some(tail) = &r.tail {
        check_tail(&r.bytes, tail, &r.after, !r.recovery.was_closed);
    }
    if !r.recovery.was_closed {
        let tail = r
            .tail
            .as_ref()
            .expect("the tail of a file recovery closed reads");
        let t = tail.trailer;
        assert_eq!(
            (t.encoding, t.records, t.record_bytes),
            (encoding, d.payloads.len() as u64, d.record_bytes),
            "the trailer recovery wrote counts the records it kept"
        );
        assert_eq!(tail.close.version, 2);
        assert_eq!(tail.index, d.index(), "recovery indexes what it kept");
        assert_ne!(tail.close.crc32c, 0, "recovery checksums what it kept");
    }
}

/// One unit of a written file: a data frame and the marks naming its batches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unit {
    /// The batch parts whose records the frame holds (version 1: no marks frame
    /// when empty; version 2: always a marks frame).
    pub marks: Vec<PartMark>,
    /// The records' payloads.
    pub payloads: Vec<Vec<u8>>,
}

/// A file as a collector writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The records' encoding.
    pub encoding: Encoding,
    /// Written as an older collector did: marks version 1 before their data
    /// frame, trailer version 1, no index.
    pub v1: bool,
    /// Whether the file ends with its closing frames.
    pub closed: bool,
    /// The byte at which the file is torn (`None`: it is whole); taken modulo the
    /// file's length + 1.
    pub tear: Option<u16>,
    /// The acknowledged length recovery keeps at most (`None`: all); taken modulo
    /// the torn file's length + 1.
    pub limit: Option<u16>,
    /// The units, in file order.
    pub units: Vec<Unit>,
}

/// Tags of [`Written`]'s byte form.
const END_FRAME: u8 = 0xff;
const MARK: u8 = 0xfe;
/// Longest payload one record item carries.
const MAX_ITEM: u8 = 0xfd;

impl Written {
    /// Reads a file description from the fuzzer's bytes:
    ///
    /// ```text
    /// u8:flags (bit 0 base64, bit 1 closed, bit 2 version 1)
    /// u16be:tear  u16be:limit  (0xffff: none)
    /// item*    0xff                  ends the frame (if it has records)
    ///          0xfe u8:n id*n u8:sequence u8:part u8:parts u8:digest u8:first u8:records
    ///                                a mark for the frame
    ///          n (< 0xfe) byte*n     a record (lines: "\n" becomes " ")
    /// ```
    pub fn parse(data: &[u8]) -> Written {
        let byte = |at: usize| data.get(at).copied().unwrap_or(0);
        let word = |at: usize| u16::from_be_bytes([byte(at), byte(at + 1)]);
        let optional = |w: u16| (w != u16::MAX).then_some(w);
        let flags = byte(0);
        let encoding = if flags & 1 == 1 {
            Encoding::Base64
        } else {
            Encoding::Lines
        };
        let mut written = Written {
            encoding,
            closed: flags & 2 == 2,
            v1: flags & 4 == 4,
            tear: optional(word(1)),
            limit: optional(word(3)),
            units: Vec::new(),
        };
        let mut unit = Unit::default();
        let mut at = 5;
        while at < data.len() {
            let tag = data[at];
            at += 1;
            match tag {
                END_FRAME => {
                    if !unit.payloads.is_empty() {
                        written.units.push(std::mem::take(&mut unit));
                    }
                }
                MARK => {
                    let n = usize::from(byte(at));
                    let id = data.get(at + 1..).unwrap_or_default();
                    let id = &id[..n.min(id.len())];
                    at += 1 + id.len();
                    unit.marks.push(PartMark {
                        batch: BatchMark {
                            publisher: Bytes::copy_from_slice(id),
                            sequence: i64::from(byte(at)),
                            part: u16::from(byte(at + 1)),
                            parts: u16::from(byte(at + 2)),
                        },
                        digest: u64::from(byte(at + 3)) * 0x0101_0101_0101_0101,
                        first_record: u32::from(byte(at + 4)),
                        records: u32::from(byte(at + 5)),
                    });
                    at += 6;
                }
                n => {
                    let rest = data.get(at..).unwrap_or_default();
                    let mut payload = rest[..usize::from(n).min(rest.len())].to_vec();
                    at += payload.len();
                    if encoding == Encoding::Lines {
                        for b in &mut payload {
                            if *b == b'\n' {
                                *b = b' ';
                            }
                        }
                    }
                    unit.payloads.push(payload);
                }
            }
        }
        if !unit.payloads.is_empty() {
            written.units.push(unit);
        }
        written
    }

    /// The bytes [`Written::parse`] reads back as this description (for seeds).
    /// Payloads longer than an item are split into several records, so keep them
    /// short; mark fields are kept to their low byte (the digest: the same byte
    /// repeated).
    pub fn to_bytes(&self) -> Vec<u8> {
        let flags = u8::from(self.encoding == Encoding::Base64)
            | (u8::from(self.closed) << 1)
            | (u8::from(self.v1) << 2);
        let mut out = vec![flags];
        out.extend_from_slice(&self.tear.unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&self.limit.unwrap_or(u16::MAX).to_be_bytes());
        for unit in &self.units {
            for mark in &unit.marks {
                let b = &mark.batch;
                out.push(MARK);
                out.push(b.publisher.len() as u8);
                out.extend_from_slice(&b.publisher);
                out.extend_from_slice(&[
                    b.sequence as u8,
                    b.part as u8,
                    b.parts as u8,
                    mark.digest as u8,
                    mark.first_record as u8,
                    mark.records as u8,
                ]);
            }
            for payload in &unit.payloads {
                for item in payload.chunks(usize::from(MAX_ITEM)) {
                    out.push(item.len() as u8);
                    out.extend_from_slice(item);
                }
                if payload.is_empty() {
                    out.push(0);
                }
            }
            out.push(END_FRAME);
        }
        out
    }
}

/// Where each unit of a written file is, and the file's bytes.
struct Layout {
    bytes: Vec<u8>,
    /// Offset of each unit's data frame.
    data_starts: Vec<u64>,
    /// End offset of each unit's data frame.
    data_ends: Vec<u64>,
    /// End offset of each unit (after its marks in version 2).
    unit_ends: Vec<u64>,
    /// Record bytes (newlines included) of each unit.
    unit_record_bytes: Vec<u64>,
}

/// The bytes of a written file (for seeds).
pub fn written_bytes(w: &Written) -> Vec<u8> {
    write(w).bytes
}

fn write(w: &Written) -> Layout {
    thread_local! {
        static ENCODER: std::cell::RefCell<FrameEncoder> =
            std::cell::RefCell::new(FrameEncoder::new(1).expect("a zstd encoder"));
    }
    let mut l = Layout {
        bytes: Vec::new(),
        data_starts: Vec::new(),
        data_ends: Vec::new(),
        unit_ends: Vec::new(),
        unit_record_bytes: Vec::new(),
    };
    let (mut records_total, mut record_bytes_total) = (0u64, 0u64);
    for unit in &w.units {
        let batches: Vec<BatchMark> = unit.marks.iter().map(|m| m.batch.clone()).collect();
        if w.v1 && !batches.is_empty() {
            l.bytes.extend_from_slice(&encode_marks_v1(&batches));
        }
        let mut records = Vec::new();
        for payload in &unit.payloads {
            w.encoding
                .encode_into(payload, &mut records)
                .expect("payloads are valid for their encoding");
        }
        let frame = ENCODER.with(|e| e.borrow_mut().frame(&records).expect("compress"));
        l.data_starts.push(l.bytes.len() as u64);
        l.bytes.extend_from_slice(&frame);
        l.data_ends.push(l.bytes.len() as u64);
        if !w.v1 {
            l.bytes.extend_from_slice(&encode_marks(&unit.marks));
        }
        l.unit_ends.push(l.bytes.len() as u64);
        l.unit_record_bytes.push(records.len() as u64);
        records_total += unit.payloads.len() as u64;
        record_bytes_total += records.len() as u64;
    }
    if w.closed {
        let trailer = Trailer {
            encoding: w.encoding,
            records: records_total,
            record_bytes: record_bytes_total,
        };
        if w.v1 {
            l.bytes.extend_from_slice(&trailer.encode());
        } else {
            let index = index_of(&expected_batches(w, &l, w.units.len()));
            let crc = crc32c_append(0, &l.bytes);
            l.bytes
                .extend_from_slice(&encode_closing(&trailer, crc, index.as_deref()));
        }
    }
    l
}

/// The batches of the first `units` units, as `decode_file` reports them.
fn expected_batches(w: &Written, l: &Layout, units: usize) -> Vec<FileBatch> {
    let mut out = Vec::new();
    for (unit, &frame_offset) in w.units.iter().zip(&l.data_starts).take(units) {
        out.extend(unit.marks.iter().map(|m| FileBatch {
            frame_offset,
            mark: if w.v1 {
                FoundMark::V1(m.batch.clone())
            } else {
                FoundMark::V2(m.clone())
            },
        }));
    }
    out
}

/// What decoding the first `len` bytes of a written file must give.
struct Expected {
    valid_len: u64,
    closed: bool,
    payloads: Vec<Bytes>,
    batches: Vec<FileBatch>,
    record_bytes: u64,
}

fn expected(w: &Written, l: &Layout, len: u64) -> Expected {
    let whole = len == l.bytes.len() as u64;
    let complete = l.unit_ends.iter().take_while(|&&end| end <= len).count();
    let mut e = Expected {
        valid_len: complete.checked_sub(1).map_or(0, |u| l.unit_ends[u]),
        closed: whole && w.closed,
        payloads: Vec::new(),
        batches: expected_batches(w, l, complete),
        record_bytes: l.unit_record_bytes[..complete].iter().sum(),
    };
    for unit in &w.units[..complete] {
        e.payloads
            .extend(unit.payloads.iter().map(|p| Bytes::copy_from_slice(p)));
    }
    // A version 2 file torn after its first data frame and less than a marks
    // frame's header of its marks cannot be told from a version 1 file without
    // marks: the lone data frame counts (`docs/format.md` §3.3).
    if !w.v1 && complete == 0 && !w.units.is_empty() {
        let data_end = l.data_ends[0];
        if data_end <= len && len - data_end < 22 {
            e.valid_len = data_end;
            e.payloads = w.units[0]
                .payloads
                .iter()
                .map(|p| Bytes::copy_from_slice(p))
                .collect();
            e.record_bytes = l.unit_record_bytes[0];
        }
    }
    if e.closed {
        e.valid_len = len;
    }
    e
}

fn assert_decodes_as(d: &Decoded, e: &Expected, len: u64, what: &str) {
    assert_eq!(d.payloads, e.payloads, "{what}: records");
    assert_eq!(d.batches, e.batches, "{what}: batch marks");
    assert_eq!(d.record_bytes, e.record_bytes, "{what}: record bytes");
    assert_eq!(d.scan.valid_len, e.valid_len, "{what}: valid length");
    assert_eq!(d.scan.torn_bytes, len - e.valid_len, "{what}: torn bytes");
    assert_eq!(d.scan.is_closed(), e.closed, "{what}: closed");
}

/// Checks a written, torn and recovered file (the `data_file_writer` target).
pub fn check_written(data: &[u8]) {
    let w = Written::parse(data);
    let layout = write(&w);
    let full = layout.bytes.len() as u64;

    // The whole file decodes to what was written; closed, its tail says so.
    let d = decode_file("f", &layout.bytes, w.encoding).expect("a written file decodes");
    assert_decodes_as(&d, &expected(&w, &layout, full), full, "whole file");
    if w.closed {
        let t = d.scan.trailer.expect("a closed file has its trailer");
        assert_eq!(t.records, d.payloads.len() as u64, "records vs the trailer");
        assert_eq!(
            t.record_bytes, d.record_bytes,
            "record bytes vs the trailer"
        );
        assert_eq!(t.encoding, w.encoding);
        put(&layout.bytes);
        let (runtime, storage) = storage();
        let tail = runtime
            .block_on(read_index(storage, PATH, full))
            .expect("a closed file's tail reads")
            .expect("a closed file has a trailer");
        check_tail(&layout.bytes, &tail, &d, true);
        assert_eq!(tail.index.is_some(), !w.v1, "version 2 files have an index");
        assert_eq!(tail.close.version, if w.v1 { 1 } else { 2 });
    }

    // Torn at any byte: exactly the complete units decode.
    let len = w.tear.map_or(full, |t| u64::from(t) % (full + 1));
    let torn = &layout.bytes[..len as usize];
    let d = decode_file("f", torn, w.encoding).expect("a torn file decodes");
    assert_decodes_as(&d, &expected(&w, &layout, len), len, "torn file");

    // Recovery keeps the complete units within the acknowledged length and closes
    // the file with their count, their index and its checksum.
    let limit = w.limit.map(|l| u64::from(l) % (len + 1));
    let e = expected(&w, &layout, limit.unwrap_or(len));
    let r = recover(torn, w.encoding, limit);
    assert_eq!(
        r.recovery.kept_bytes, e.valid_len,
        "recovery keeps the complete units"
    );
    assert_eq!(r.recovery.records, e.payloads.len() as u64);
    assert_eq!(r.recovery.record_bytes, e.record_bytes);
    assert_eq!(r.recovery.batches, e.batches);
    assert_eq!(r.after.payloads, e.payloads, "the recovered file's records");
    assert_eq!(r.after.batches, e.batches);
    assert!(r.after.scan.is_closed(), "a recovered file is closed");
    let tail = r
        .tail
        .as_ref()
        .expect("the tail of a file recovery closed reads");
    check_tail(&r.bytes, tail, &r.after, true);
    let t = tail.trailer;
    assert_eq!(
        (t.encoding, t.records, t.record_bytes),
        (w.encoding, e.payloads.len() as u64, e.record_bytes),
        "the recovered file's trailer counts its records"
    );
    if !e.closed {
        assert_eq!(
            r.bytes.len() - TRAILER_V2_LEN,
            tail.close.index_len as usize + e.valid_len as usize,
            "recovery appends the index and a version 2 trailer"
        );
    }
}
