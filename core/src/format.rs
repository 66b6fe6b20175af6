//! The data file format: what a batch job reads with stock tools.
//!
//! Specified in `docs/format.md` §3 (format) and §4 (reading); in short:
//!
//! A data file is a **zstd stream of independent frames** (RFC 8878), named `*.zst`:
//!
//! ```text
//! file    := frame* trailer?
//! frame   := a zstd frame with Content_Checksum_flag = 1 and the content size set;
//!            its decompressed content is one or more whole records
//! record  := lines:  payload "\n"             (payload must not contain "\n")
//!          | base64: base64(payload) "\n"     (RFC 4648 standard alphabet, padded)
//! trailer := a zstd skippable frame (magic 0x184D2A5C) marking the file closed:
//!            "CONDUIT-CLOSED" u8:version(=1) u8:encoding u64le:records u64le:record_bytes
//! marks   := a zstd skippable frame (magic 0x184D2A5D) written just before a data
//!            frame, naming the idempotent publisher batches whose records that frame
//!            holds: "CONDUIT-BATCH" u8:version(=1) u32le:count
//!            { u16le:id_len id i64le:sequence u16le:part u16le:parts }*
//! ```
//!
//! `file := (marks? frame)* trailer?`. A collector rebuilds which publisher batches
//! are durable from the marks that are followed by their complete data frame.
//!
//! Concatenating files gives a valid file (frames concatenate), which is how hourly
//! compaction works without recompressing. `zstd -dc`, Hadoop's `ZStandardCodec`,
//! DuckDB and Python `zstandard` decode the stream; skippable frames decode to nothing.
//!
//! Invariants:
//! - A frame never splits a record, so every complete frame can be decoded alone.
//! - A writer appends a frame and syncs before acknowledging its records, so after a
//!   crash the file is a sequence of complete frames possibly followed by a torn tail
//!   (a prefix of a frame). [`scan`] finds the last complete frame; [`recover_tail`]
//!   cuts the torn bytes off.
//! - A file with a trailer is **closed**: its bytes never change again. A file
//!   without one is still being written (or its writer crashed; recovery closes it).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{RenameMode, Storage, StorageError};

/// The skippable-frame magic number conduit uses for its close trailer.
pub const TRAILER_MAGIC: u32 = 0x184D_2A5C;
/// First bytes of the trailer's content.
pub const TRAILER_TAG: &[u8; 14] = b"CONDUIT-CLOSED";
/// Total trailer size in bytes: 8 (skippable header) + 14 + 1 + 1 + 8 + 8.
pub const TRAILER_LEN: usize = 8 + 14 + 1 + 1 + 8 + 8;
/// File name suffix of every data file.
pub const DATA_FILE_SUFFIX: &str = ".zst";
/// The skippable-frame magic number of batch marks (idempotent publisher batches).
pub const MARK_MAGIC: u32 = 0x184D_2A5D;
/// First bytes of a batch-mark frame's content.
pub const MARK_TAG: &[u8; 13] = b"CONDUIT-BATCH";

/// How a topic's payloads become records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `payload "\n"`: readable as text by any line-oriented tool; payloads must not
    /// contain a newline.
    #[default]
    Lines,
    /// `base64(payload) "\n"`: any bytes, as the original Conduit wrote.
    Base64,
}

impl Encoding {
    fn code(self) -> u8 {
        match self {
            Encoding::Lines => 1,
            Encoding::Base64 => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Encoding::Lines),
            2 => Some(Encoding::Base64),
            _ => None,
        }
    }

    /// Checks that `payload` can be stored in this encoding.
    pub fn check(self, payload: &[u8]) -> Result<(), RecordError> {
        match self {
            Encoding::Lines => match memchr_newline(payload) {
                Some(at) => Err(RecordError::NewlineInLinesPayload { at }),
                None => Ok(()),
            },
            Encoding::Base64 => Ok(()),
        }
    }

    /// Appends the record for `payload` to `out`.
    pub fn encode_into(self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.check(payload)?;
        match self {
            Encoding::Lines => out.extend_from_slice(payload),
            Encoding::Base64 => {
                let start = out.len();
                let encoded_len = base64::encoded_len(payload.len(), true)
                    .ok_or(RecordError::TooLarge { len: payload.len() })?;
                out.resize(start + encoded_len, 0);
                let written = base64::engine::general_purpose::STANDARD
                    .encode_slice(payload, &mut out[start..])
                    .map_err(|_| RecordError::TooLarge { len: payload.len() })?;
                out.truncate(start + written);
            }
        }
        out.push(b'\n');
        Ok(())
    }

    /// Appends the record for a payload that already passed [`Encoding::check`]
    /// (the collector checks once, then encodes without checking again).
    pub fn append_checked(self, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Encoding::Lines => {
                out.reserve(payload.len() + 1);
                out.extend_from_slice(payload);
                out.push(b'\n');
            }
            Encoding::Base64 => {
                // Cannot fail: base64 accepts any bytes.
                let _ = self.encode_into(payload, out);
            }
        }
    }

    /// Size of the record for a payload of `len` bytes, newline included.
    pub fn record_len(self, len: usize) -> usize {
        match self {
            Encoding::Lines => len + 1,
            Encoding::Base64 => base64::encoded_len(len, true).unwrap_or(usize::MAX - 1) + 1,
        }
    }

    /// Decodes one record (without its newline) back to the payload.
    pub fn decode<'a>(self, record: &'a [u8]) -> Result<Cow<'a, [u8]>, RecordError> {
        match self {
            Encoding::Lines => Ok(Cow::Borrowed(record)),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(record)
                .map(Cow::Owned)
                .map_err(|e| RecordError::BadBase64 {
                    reason: e.to_string(),
                }),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Lines => "lines",
            Encoding::Base64 => "base64",
        })
    }
}

impl FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lines" => Ok(Encoding::Lines),
            "base64" => Ok(Encoding::Base64),
            other => Err(format!(
                "unknown encoding {other:?}: expected \"lines\" or \"base64\""
            )),
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

/// Why a payload or record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A `lines` payload contained a newline.
    #[error("payload contains a newline at byte {at}, which the lines encoding cannot store")]
    NewlineInLinesPayload {
        /// Offset of the first newline.
        at: usize,
    },
    /// A record was not valid base64.
    #[error("record is not valid base64: {reason}")]
    BadBase64 {
        /// The decoder's complaint.
        reason: String,
    },
    /// A payload too large to encode.
    #[error("payload of {len} bytes is too large to encode")]
    TooLarge {
        /// Payload length.
        len: usize,
    },
}

/// Errors reading or writing data files.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A complete frame in the middle of a file failed to decode (bad checksum,
    /// corrupted bytes). Torn tails are not errors; see [`Scan::torn_bytes`].
    #[error("corrupt frame in {path} at byte offset {offset}: {reason}")]
    CorruptFrame {
        /// The file.
        path: String,
        /// Offset of the frame's first byte.
        offset: u64,
        /// What the decoder said.
        reason: String,
    },
    /// A record could not be decoded.
    #[error("bad record in {path} in the frame at byte offset {offset}: {source}")]
    BadRecord {
        /// The file.
        path: String,
        /// Offset of the frame holding the record.
        offset: u64,
        /// The record error.
        #[source]
        source: RecordError,
    },
    /// Compression failed.
    #[error("zstd compression failed: {0}")]
    Compress(std::io::Error),
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Compresses batches of records into independent frames.
pub struct FrameEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    level: i32,
}

impl fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("level", &self.level)
            .finish()
    }
}

impl FrameEncoder {
    /// An encoder at zstd `level` (1 is fast, 19 is small).
    pub fn new(level: i32) -> Result<Self, FormatError> {
        use zstd::zstd_safe::CParameter;
        let mut compressor = zstd::bulk::Compressor::new(level).map_err(FormatError::Compress)?;
        compressor
            .set_parameter(CParameter::ChecksumFlag(true))
            .map_err(FormatError::Compress)?;
        compressor
            .set_parameter(CParameter::ContentSizeFlag(true))
            .map_err(FormatError::Compress)?;
        Ok(FrameEncoder { compressor, level })
    }

    /// Compresses `records` (whole records, each ending in `\n`) into one frame.
    pub fn frame(&mut self, records: &[u8]) -> Result<Bytes, FormatError> {
        debug_assert!(records.is_empty() || records.ends_with(b"\n"));
        self.compressor
            .compress(records)
            .map(Bytes::from)
            .map_err(FormatError::Compress)
    }
}

/// What a closed file's trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Encoding of the file's records.
    pub encoding: Encoding,
    /// Number of records in the file.
    pub records: u64,
    /// Sum of the records' decompressed sizes (newlines included).
    pub record_bytes: u64,
}

impl Trailer {
    /// The trailer's bytes: one skippable frame.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(TRAILER_LEN);
        out.extend_from_slice(&TRAILER_MAGIC.to_le_bytes());
        out.extend_from_slice(&((TRAILER_LEN - 8) as u32).to_le_bytes());
        out.extend_from_slice(TRAILER_TAG);
        out.push(1);
        out.push(self.encoding.code());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&self.record_bytes.to_le_bytes());
        Bytes::from(out)
    }

    /// Parses a trailer from exactly one skippable frame, if it is conduit's.
    pub fn decode(frame: &[u8]) -> Option<Trailer> {
        if frame.len() != TRAILER_LEN
            || frame[..4] != TRAILER_MAGIC.to_le_bytes()
            || &frame[8..22] != TRAILER_TAG
            || frame[22] != 1
        {
            return None;
        }
        let encoding = Encoding::from_code(frame[23])?;
        let records = u64::from_le_bytes(frame[24..32].try_into().ok()?);
        let record_bytes = u64::from_le_bytes(frame[32..40].try_into().ok()?);
        Some(Trailer {
            encoding,
            records,
            record_bytes,
        })
    }
}

/// One publisher batch (or the part of it for one topic) held by the next data frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchMark {
    /// The publisher's id.
    pub publisher: Bytes,
    /// The batch's sequence number.
    pub sequence: i64,
    /// Which part of the batch this frame holds (one part per topic).
    pub part: u16,
    /// How many parts the batch has.
    pub parts: u16,
}

/// Encodes batch marks as one skippable frame.
pub fn encode_marks(marks: &[BatchMark]) -> Bytes {
    let mut body = Vec::with_capacity(18 + marks.len() * 32);
    body.extend_from_slice(MARK_TAG);
    body.push(1);
    body.extend_from_slice(&(marks.len() as u32).to_le_bytes());
    for mark in marks {
        let id = &mark.publisher[..mark.publisher.len().min(u16::MAX as usize)];
        body.extend_from_slice(&(id.len() as u16).to_le_bytes());
        body.extend_from_slice(id);
        body.extend_from_slice(&mark.sequence.to_le_bytes());
        body.extend_from_slice(&mark.part.to_le_bytes());
        body.extend_from_slice(&mark.parts.to_le_bytes());
    }
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&MARK_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Decodes a batch-mark frame; `None` if it is not one (or is malformed).
pub fn decode_marks(frame: &[u8]) -> Option<Vec<BatchMark>> {
    if frame.len() < 8 + 18 || frame[..4] != MARK_MAGIC.to_le_bytes() {
        return None;
    }
    let body = &frame[8..];
    if &body[..13] != MARK_TAG || body[13] != 1 {
        return None;
    }
    let count = u32::from_le_bytes(body[14..18].try_into().ok()?) as usize;
    let mut at = 18;
    let mut marks = Vec::with_capacity(count.min(body.len() / 14));
    for _ in 0..count {
        let id_len = u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
        at += 2;
        let id = body.get(at..at + id_len)?;
        at += id_len;
        let sequence = i64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?);
        let part = u16::from_le_bytes(body.get(at + 8..at + 10)?.try_into().ok()?);
        let parts = u16::from_le_bytes(body.get(at + 10..at + 12)?.try_into().ok()?);
        at += 12;
        marks.push(BatchMark {
            publisher: Bytes::copy_from_slice(id),
            sequence,
            part,
            parts,
        });
    }
    Some(marks)
}

/// One frame found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    /// Offset of the frame's first byte in the file.
    pub offset: u64,
    /// Compressed length of the frame.
    pub len: u64,
    /// Whether it is a skippable frame (no records).
    pub skippable: bool,
}

/// The structure of a file's bytes: its complete frames and what follows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Every complete frame, in order (data and skippable).
    pub frames: Vec<FrameRef>,
    /// Bytes covered by complete frames; a reader or recovery keeps `0..valid_len`.
    pub valid_len: u64,
    /// Bytes after the last complete frame (a torn write), 0 for a healthy file.
    pub torn_bytes: u64,
    /// The close trailer, if the file ends with one.
    pub trailer: Option<Trailer>,
}

impl Scan {
    /// Whether the file is closed (ends with a trailer and nothing after it).
    pub fn is_closed(&self) -> bool {
        self.trailer.is_some() && self.torn_bytes == 0
    }
}

fn is_skippable_magic(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && {
        let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        magic & 0xFFFF_FFF0 == 0x184D_2A50
    }
}

/// Finds the frames of `buf`, which holds a file's bytes from offset `base`. Stops at
/// the first incomplete frame: everything from there on is `torn_bytes`. Does not
/// decompress, so it is cheap; checksums are verified by [`decode_frame`].
pub fn scan(buf: &[u8], base: u64) -> Scan {
    let mut frames = Vec::new();
    let mut at = 0usize;
    let mut trailer = None;
    while at < buf.len() {
        let rest = &buf[at..];
        let len = match zstd::zstd_safe::find_frame_compressed_size(rest) {
            Ok(len) if len > 0 && len <= rest.len() => len,
            _ => break,
        };
        let skippable = is_skippable_magic(rest);
        trailer = if skippable {
            Trailer::decode(&rest[..len])
        } else {
            None
        };
        frames.push(FrameRef {
            offset: base + at as u64,
            len: len as u64,
            skippable,
        });
        at += len;
    }
    Scan {
        frames,
        valid_len: base + at as u64,
        torn_bytes: (buf.len() - at) as u64,
        trailer,
    }
}

/// Decompresses one data frame (verifying its checksum) to its records' bytes.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<u8>, String> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|e| format!("bad frame header: {e:?}"))?;
    match size {
        Some(size) => {
            if size > 1 << 31 {
                return Err(format!("frame claims {size} bytes, more than 2 GiB"));
            }
            // One decompression context per thread, reused: creating one per
            // frame (allocating and initialising its tables) showed in profiles.
            thread_local! {
                static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            DCTX.with(|cell| {
                let mut slot = cell.borrow_mut();
                let dctx = match slot.as_mut() {
                    Some(d) => d,
                    None => {
                        slot.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?)
                    }
                };
                dctx.decompress(frame, size as usize)
                    .map_err(|e| e.to_string())
            })
        }
        None => zstd::stream::decode_all(frame).map_err(|e| e.to_string()),
    }
}

/// Splits a frame's decompressed content into records (without newlines).
pub fn split_records(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    // memchr: the split is on every record PinTail delivers (a byte loop cost
    // ~10% of a catch-up).
    let mut ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    let mut start = 0;
    std::iter::from_fn(move || {
        if content.is_empty() {
            return None;
        }
        let end = ends.next()?;
        let record = &body[start..end];
        start = end + 1;
        Some(record)
    })
}

/// Everything decoded from a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The payloads, in order.
    pub payloads: Vec<Bytes>,
    /// Sum of the records' sizes (newlines included), as a trailer counts them.
    pub record_bytes: u64,
    /// Batch marks whose data frame is complete, in file order.
    pub marks: Vec<BatchMark>,
    /// Frame structure, torn bytes and trailer.
    pub scan: Scan,
}

/// Decodes every record in the complete frames of a file's bytes. A torn tail is
/// not an error (it is reported in `scan.torn_bytes`); a complete frame that fails
/// to decode is, unless it is the last frame of an unclosed file, which a crash can
/// leave half-written with a plausible length: then it counts as torn too.
pub fn decode_file(path: &str, buf: &[u8], encoding: Encoding) -> Result<Decoded, FormatError> {
    let mut scan = scan(buf, 0);
    let mut payloads = Vec::new();
    let mut record_bytes = 0u64;
    let mut marks = Vec::new();
    let mut pending_marks = Vec::new();
    let data_frames: Vec<FrameRef> = scan.frames.clone();
    for (i, frame) in data_frames.iter().enumerate() {
        let bytes = &buf[frame.offset as usize..(frame.offset + frame.len) as usize];
        if frame.skippable {
            if let Some(found) = decode_marks(bytes) {
                pending_marks = found;
            }
            continue;
        }
        let content = match decode_frame(bytes) {
            Ok(content) => content,
            Err(reason) => {
                let last = i + 1 == data_frames.len();
                if last && scan.trailer.is_none() {
                    // Marks written just before the lost frame go with it.
                    let cut = if i > 0 && data_frames[i - 1].skippable {
                        i - 1
                    } else {
                        i
                    };
                    let cut_at = data_frames[cut].offset;
                    scan.frames.truncate(cut);
                    scan.torn_bytes += scan.valid_len - cut_at;
                    scan.valid_len = cut_at;
                    pending_marks.clear();
                    break;
                }
                return Err(FormatError::CorruptFrame {
                    path: path.to_string(),
                    offset: frame.offset,
                    reason,
                });
            }
        };
        marks.append(&mut pending_marks);
        record_bytes += content.len() as u64;
        for record in split_records(&content) {
            let payload = encoding
                .decode(record)
                .map_err(|source| FormatError::BadRecord {
                    path: path.to_string(),
                    offset: frame.offset,
                    source,
                })?;
            payloads.push(Bytes::copy_from_slice(&payload));
        }
    }
    // Marks of a frame that never made it (torn after the marks) are dropped, and
    // so are their bytes: the file is valid up to the last complete data frame.
    if !pending_marks.is_empty() {
        if let Some(last) = scan.frames.last().copied() {
            if last.skippable && scan.trailer.is_none() {
                scan.frames.pop();
                scan.torn_bytes += scan.valid_len - last.offset;
                scan.valid_len = last.offset;
            }
        }
    }
    Ok(Decoded {
        payloads,
        record_bytes,
        marks,
        scan,
    })
}

/// Reads and decodes a whole file from storage.
pub async fn read_file(
    storage: &dyn Storage,
    path: &str,
    encoding: Encoding,
) -> Result<Decoded, FormatError> {
    let buf = storage.read(path).await?;
    decode_file(path, &buf, encoding)
}

/// The close trailer of the `len`-byte data file at `path`, read from its last
/// [`TRAILER_LEN`] bytes (a closed file never changes, so this is all it takes).
/// `None` when the file is shorter or its last bytes are no trailer: it is still
/// being written, or its writer crashed. `len` is the caller's (listed or
/// stat'ed) length; a storage error, `NotFound` included, is returned as is.
pub async fn read_trailer(
    storage: &dyn Storage,
    path: &str,
    len: u64,
) -> Result<Option<Trailer>, StorageError> {
    let Some(start) = len.checked_sub(TRAILER_LEN as u64) else {
        return Ok(None);
    };
    let tail = storage.read_range(path, start..len).await?;
    Ok(Trailer::decode(&tail))
}

/// Whether the `len`-byte data file at `path` is closed: it ends with a close
/// trailer ([`read_trailer`]).
pub async fn is_closed(storage: &dyn Storage, path: &str, len: u64) -> Result<bool, StorageError> {
    Ok(read_trailer(storage, path, len).await?.is_some())
}

/// What [`recover_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes kept (complete frames).
    pub kept_bytes: u64,
    /// Bytes removed (torn tail, or unacknowledged bytes past `limit`).
    pub dropped_bytes: u64,
    /// Whether the file already had a trailer.
    pub was_closed: bool,
    /// Records in the kept bytes.
    pub records: u64,
    /// Sum of the kept records' sizes, newlines included.
    pub record_bytes: u64,
    /// Batch marks in the kept bytes.
    pub marks: Vec<BatchMark>,
}

impl Recovery {
    /// The trailer that closes the recovered file.
    pub fn trailer(&self, encoding: Encoding) -> Trailer {
        Trailer {
            encoding,
            records: self.records,
            record_bytes: self.record_bytes,
        }
    }
}

/// Recovers the HDFS lease a crashed writer may still hold on `path` and waits
/// (up to 60 s) until the file is closed: until then its last block is not
/// readable, so a file would look shorter than it is. Nothing to do on local disk.
pub async fn wait_for_lease(storage: &dyn Storage, path: &str) -> Result<(), FormatError> {
    let mut attempt = 0u32;
    while !storage.recover_lease(path).await? {
        attempt += 1;
        if attempt >= 120 {
            return Err(FormatError::Storage(StorageError::Hdfs {
                path: path.to_string(),
                message: "lease recovery did not finish within 60 s".to_string(),
                transient: true,
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Makes a file left by a crashed or failed writer whole again: recovers its HDFS
/// lease, keeps only complete frames (and, with `limit`, only the first `limit`
/// bytes: what was acknowledged), and reports its records and batch marks. Does
/// not add a trailer (see [`close_recovered`]). The cut is a copy of the kept
/// prefix to a hidden temporary file renamed over the original, so a crash during
/// recovery leaves either the old or the new file, never a mix.
pub async fn recover_file(
    storage: &dyn Storage,
    path: &str,
    encoding: Encoding,
    limit: Option<u64>,
) -> Result<Recovery, FormatError> {
    wait_for_lease(storage, path).await?;
    let all = storage.read(path).await?;
    let buf = match limit {
        Some(limit) if (limit as usize) < all.len() => all.slice(..limit as usize),
        _ => all.clone(),
    };
    let decoded = decode_file(path, &buf, encoding)?;
    let scan = &decoded.scan;
    let kept = scan.valid_len;
    let dropped = all.len() as u64 - kept;
    if dropped > 0 {
        let tmp = crate::storage::temp_sibling(path);
        let mut writer = storage
            .create(&tmp, crate::storage::CreateMode::Overwrite)
            .await?;
        writer.write(all.slice(..kept as usize)).await?;
        writer.close().await?;
        storage.rename(&tmp, path, RenameMode::Overwrite).await?;
        tracing::warn!(
            path,
            kept_bytes = kept,
            dropped_bytes = dropped,
            "cut unacknowledged or torn bytes off a data file"
        );
    }
    Ok(Recovery {
        kept_bytes: kept,
        dropped_bytes: dropped,
        was_closed: scan.is_closed(),
        records: decoded.payloads.len() as u64,
        record_bytes: decoded.record_bytes,
        marks: decoded.marks,
    })
}

/// [`recover_file`], then appends the trailer if the file had none: the file is
/// closed afterwards and its bytes never change again.
pub async fn close_recovered(
    storage: &dyn Storage,
    path: &str,
    encoding: Encoding,
    limit: Option<u64>,
) -> Result<Recovery, FormatError> {
    let recovery = recover_file(storage, path, encoding, limit).await?;
    if !recovery.was_closed {
        let mut writer = storage.append(path).await?;
        writer.write(recovery.trailer(encoding).encode()).await?;
        writer.close().await?;
    }
    Ok(recovery)
}

/// Back-compatible name for [`recover_file`] without a limit.
pub async fn recover_tail(
    storage: &dyn Storage,
    path: &str,
    encoding: Encoding,
) -> Result<Recovery, FormatError> {
    recover_file(storage, path, encoding, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(enc: &mut FrameEncoder, encoding: Encoding, payloads: &[&[u8]]) -> Bytes {
        let mut records = Vec::new();
        for p in payloads {
            encoding.encode_into(p, &mut records).unwrap();
        }
        enc.frame(&records).unwrap()
    }

    #[test]
    fn lines_round_trip_and_reject_newlines() {
        let mut out = Vec::new();
        Encoding::Lines.encode_into(b"hello", &mut out).unwrap();
        assert_eq!(out, b"hello\n");
        assert_eq!(
            Encoding::Lines.encode_into(b"a\nb", &mut out),
            Err(RecordError::NewlineInLinesPayload { at: 1 })
        );
        assert_eq!(out, b"hello\n", "a refused payload leaves the buffer alone");
    }

    #[test]
    fn base64_round_trips_any_bytes() {
        let payload: Vec<u8> = (0..=255u8).collect();
        let mut out = Vec::new();
        Encoding::Base64.encode_into(&payload, &mut out).unwrap();
        assert_eq!(out.len(), Encoding::Base64.record_len(payload.len()));
        let record = out.strip_suffix(b"\n").unwrap();
        assert_eq!(
            Encoding::Base64.decode(record).unwrap().as_ref(),
            &payload[..]
        );
        let mut empty = Vec::new();
        Encoding::Base64.encode_into(b"", &mut empty).unwrap();
        assert_eq!(empty, b"\n");
    }

    #[test]
    fn frames_trailer_and_torn_tail() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let mut file = Vec::new();
        file.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"a", b"b"]));
        file.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"c"]));
        let complete = file.len();
        let third = frame_of(&mut enc, Encoding::Lines, &[b"d", b"e", b"f"]);
        file.extend_from_slice(&third[..third.len() / 2]);

        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.payloads, vec!["a", "b", "c"]);
        assert_eq!(decoded.scan.valid_len, complete as u64);
        assert_eq!(decoded.scan.torn_bytes, (third.len() / 2) as u64);
        assert!(!decoded.scan.is_closed());

        file.truncate(complete);
        let trailer = Trailer {
            encoding: Encoding::Lines,
            records: 3,
            record_bytes: 6,
        };
        file.extend_from_slice(&trailer.encode());
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.payloads.len(), 3);
        assert_eq!(decoded.scan.trailer, Some(trailer));
        assert!(decoded.scan.is_closed());
        // The whole file is still a valid zstd stream for stock decoders.
        let plain = zstd::stream::decode_all(&file[..]).unwrap();
        assert_eq!(plain, b"a\nb\nc\n");
    }

    #[test]
    fn corrupt_middle_frame_is_an_error_naming_the_offset() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let mut file = Vec::new();
        file.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"first"]));
        let second_at = file.len();
        let mut second = frame_of(&mut enc, Encoding::Lines, &[b"second record"]).to_vec();
        let n = second.len();
        second[n - 6] ^= 0xff; // flip a byte of the compressed block
        file.extend_from_slice(&second);
        file.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"third"]));
        let err = decode_file("x.zst", &file, Encoding::Lines).unwrap_err();
        match err {
            FormatError::CorruptFrame { path, offset, .. } => {
                assert_eq!(path, "x.zst");
                assert_eq!(offset, second_at as u64);
            }
            other => panic!("expected a corrupt frame error, got {other}"),
        }
    }

    #[test]
    fn corrupt_last_frame_of_open_file_counts_as_torn() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let mut file = frame_of(&mut enc, Encoding::Lines, &[b"kept"]).to_vec();
        let keep = file.len();
        let mut last = frame_of(&mut enc, Encoding::Lines, &[b"lost in a crash"]).to_vec();
        let n = last.len();
        last[n - 6] ^= 0xff;
        file.extend_from_slice(&last);
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.payloads, vec!["kept"]);
        assert_eq!(decoded.scan.valid_len, keep as u64);
        assert_eq!(decoded.scan.torn_bytes, last.len() as u64);
    }

    #[test]
    fn marks_count_only_with_their_complete_frame() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let mark = |seq| BatchMark {
            publisher: Bytes::from_static(b"pub-1"),
            sequence: seq,
            part: 0,
            parts: 2,
        };
        assert_eq!(decode_marks(&encode_marks(&[mark(7)])), Some(vec![mark(7)]));
        let mut file = Vec::new();
        file.extend_from_slice(&encode_marks(&[mark(1)]));
        file.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"x"]));
        let keep = file.len();
        file.extend_from_slice(&encode_marks(&[mark(2)]));
        let lost = frame_of(&mut enc, Encoding::Lines, &[b"y"]);
        file.extend_from_slice(&lost[..lost.len() - 3]);
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.marks, vec![mark(1)]);
        assert_eq!(decoded.payloads, vec!["x"]);
        assert_eq!(
            decoded.scan.valid_len, keep as u64,
            "marks of a torn frame are cut too"
        );
        // Stock decoders skip marks.
        assert_eq!(zstd::stream::decode_all(&file[..keep]).unwrap(), b"x\n");
    }

    #[test]
    fn split_records_matches_a_plain_split() {
        let mut rng = rand::rng();
        for _ in 0..2000 {
            let len = rand::Rng::random_range(&mut rng, 0..40);
            let content: Vec<u8> = (0..len)
                .map(|_| {
                    if rand::Rng::random_bool(&mut rng, 0.3) {
                        b'\n'
                    } else {
                        b'x'
                    }
                })
                .collect();
            let body = content.strip_suffix(b"\n").unwrap_or(&content);
            let want: Vec<&[u8]> = if content.is_empty() {
                vec![]
            } else {
                body.split(|&b| b == b'\n').collect()
            };
            assert_eq!(
                split_records(&content).collect::<Vec<_>>(),
                want,
                "{content:?}"
            );
        }
    }

    #[test]
    fn split_records_handles_empty_payloads() {
        let got: Vec<&[u8]> = split_records(b"a\n\nb\n").collect();
        assert_eq!(got, vec![&b"a"[..], b"", b"b"]);
        assert_eq!(split_records(b"").count(), 0);
        assert_eq!(split_records(b"\n").collect::<Vec<_>>(), vec![&b""[..]]);
    }

    #[tokio::test]
    async fn read_trailer_reads_the_last_bytes_only() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::LocalStorage::open(dir.path()).unwrap();
        let mut enc = FrameEncoder::new(1).unwrap();
        let data = frame_of(&mut enc, Encoding::Lines, &[b"a", b"b"]);
        let trailer = Trailer {
            encoding: Encoding::Lines,
            records: 2,
            record_bytes: 4,
        };
        let mut closed = data.to_vec();
        closed.extend_from_slice(&trailer.encode());
        storage
            .write_atomic("open.zst", data.clone())
            .await
            .unwrap();
        storage
            .write_atomic("closed.zst", Bytes::from(closed.clone()))
            .await
            .unwrap();
        storage
            .write_atomic("short.zst", Bytes::from_static(b"tiny"))
            .await
            .unwrap();
        let len = closed.len() as u64;
        assert_eq!(
            read_trailer(&storage, "closed.zst", len).await.unwrap(),
            Some(trailer)
        );
        assert!(is_closed(&storage, "closed.zst", len).await.unwrap());
        // A length that stops short of the trailer (an older listing) sees none.
        assert!(!is_closed(&storage, "closed.zst", len - 1).await.unwrap());
        assert_eq!(
            read_trailer(&storage, "open.zst", data.len() as u64)
                .await
                .unwrap(),
            None
        );
        assert!(!is_closed(&storage, "short.zst", 4).await.unwrap());
        let gone = read_trailer(&storage, "gone.zst", len).await.unwrap_err();
        assert!(gone.is_not_found(), "{gone}");
    }
}
