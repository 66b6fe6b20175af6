//! The data file format: what a batch job reads with stock tools.
//!
//! Specified in `docs/format.md` §3 (format) and §4 (reading); in short:
//!
//! A data file is a **zstd stream of independent frames** (RFC 8878), named `*.zst`:
//!
//! ```text
//! file    := ( data marks )* [ index ] trailer?          (version 2, written today)
//!          | ( marks? data )* trailer?                   (version 1, older collectors)
//! data    := a zstd frame with Content_Checksum_flag = 1 and the content size set;
//!            its decompressed content is zero or more whole records
//! record  := lines:  payload "\n"             (payload must not contain "\n")
//!          | base64: base64(payload) "\n"     (RFC 4648 standard alphabet, padded)
//! marks   := a skippable frame (magic 0x184D2A5D) naming the idempotent publisher
//!            batches whose records a data frame holds ([`marks`]); version 2 follows
//!            EVERY data frame, version 1 preceded the data frames holding batches
//! index   := a skippable frame (magic 0x184D2A5E) written at close: every batch
//!            of the file with its data frame's offset ([`marks`])
//! trailer := a skippable frame (magic 0x184D2A5C) marking the file closed:
//!            "CONDUIT-CLOSED" u8:version u8:encoding u64le:records u64le:record_bytes
//!            [ u32le:index_len u32le:crc32c ]    (the bracket: version 2 only)
//! ```
//!
//! A collector rebuilds which publisher batches are durable from the marks of its
//! unclosed files; the worker learns a closed file's batches from its index.
//!
//! Concatenating files gives a valid file (frames concatenate), which is how hourly
//! compaction works without recompressing. `zstd -dc`, Hadoop's `ZStandardCodec`,
//! DuckDB and Python `zstandard` decode the stream; skippable frames decode to nothing.
//! No file a collector writes starts with a skippable frame.
//!
//! Invariants:
//! - A frame never splits a record, so every complete frame can be decoded alone.
//! - A writer appends a data frame and its marks and syncs before acknowledging its
//!   records, so after a crash the file is a sequence of complete frames possibly
//!   followed by a torn tail (a prefix of a frame). In a version 2 file a data frame
//!   counts only with its marks after it: the pair is the unit. [`decode_file`]
//!   finds the last complete unit; [`recover_file`] cuts the rest off.
//! - A file with a trailer is **closed**: its bytes never change again. A file
//!   without one is still being written (or its writer crashed; recovery closes it).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{RenameMode, Storage, StorageError};

pub mod gzip;
mod marks;

pub use marks::{
    batch_digest, decode_index, decode_marks, encode_index, encode_marks, encode_marks_v1,
    index_of, BatchMark, FileBatch, FoundMark, IndexEntry, Marks, PartMark, INDEX_MAGIC, INDEX_TAG,
    MARK_MAGIC, MARK_TAG, MAX_ID_LEN,
};

/// The skippable-frame magic number conduit uses for its close trailer.
pub const TRAILER_MAGIC: u32 = 0x184D_2A5C;
/// First bytes of the trailer's content.
pub const TRAILER_TAG: &[u8; 14] = b"CONDUIT-CLOSED";
/// Size of a version 1 trailer, the shortest: 8 (skippable header) + 14 + 1 + 1 +
/// 8 + 8. A file shorter than this is not closed.
pub const TRAILER_LEN: usize = 8 + 14 + 1 + 1 + 8 + 8;
/// Size of a version 2 trailer: a version 1 trailer plus `index_len` and `crc32c`.
/// The last this many bytes of a closed file hold its trailer, of either version.
pub const TRAILER_V2_LEN: usize = TRAILER_LEN + 4 + 4;
/// File name suffix of every data file.
pub const DATA_FILE_SUFFIX: &str = ".zst";

/// The codec of a topic's batch files (`format` in the config) and of a sealed
/// data file (by its name: [`Codec::of_file`]). The collector and the local view
/// are always zstd; a `gzip` topic's merged and hourly files are gzip
/// ([`gzip`], `docs/format.md` §3.7).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// `*.zst`: independent zstd frames with conduit's skippable frames (§3).
    #[default]
    Zstd,
    /// `*.gz`: multi-member gzip of records, nothing else (§3.7).
    Gzip,
}

impl Codec {
    /// The codec of the data file named `name` (`.gz`: gzip, else zstd).
    pub fn of_file(name: &str) -> Codec {
        if name.ends_with(gzip::GZIP_SUFFIX) {
            Codec::Gzip
        } else {
            Codec::Zstd
        }
    }

    /// The config value (`zstd`, `gzip`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    /// The complete units of `buf` (a file's bytes from offset `base`): zstd
    /// frames ([`scan`]) or gzip members (never skippable, no trailer).
    pub fn scan(self, buf: &[u8], base: u64) -> Scan {
        match self {
            Codec::Zstd => scan(buf, base),
            Codec::Gzip => gzip::members(buf, base).1,
        }
    }

    /// Decodes one data unit found by [`Codec::scan`] to its records' bytes.
    pub fn decode_frame(self, frame: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Codec::Zstd => decode_frame(frame),
            Codec::Gzip => gzip::decode_member(frame).map(|(_, content)| content),
        }
    }
}

/// A data unit's offset in its file and its records' bytes.
pub type Unit = (u64, Vec<u8>);

/// The records' bytes of the data units of `buf` (a file's bytes from offset
/// `base`), whatever the codec: each complete zstd data frame (skippable frames
/// are left out) or gzip member, with its offset; plus the scan (trailer, what is
/// left after the last complete unit). `Err((offset, reason))` for a complete unit
/// that does not decode. Every conduit reader of sealed files decodes through
/// this function or [`SealedReader`], which calls it.
pub fn contents(codec: Codec, buf: &[u8], base: u64) -> Result<(Vec<Unit>, Scan), (u64, String)> {
    match codec {
        Codec::Gzip => {
            let (found, scan) = gzip::members(buf, base);
            Ok((
                found.into_iter().map(|(f, c)| (f.offset, c)).collect(),
                scan,
            ))
        }
        Codec::Zstd => {
            let scan = scan(buf, base);
            let mut out = Vec::with_capacity(scan.frames.len());
            for frame in scan.frames.iter().filter(|f| !f.skippable) {
                let at = (frame.offset - base) as usize;
                let content = decode_frame(&buf[at..at + frame.len as usize])
                    .map_err(|e| (frame.offset, e))?;
                out.push((frame.offset, content));
            }
            Ok((out, scan))
        }
    }
}

/// Records in `content` (the bytes of whole records, as [`contents`] gives them).
pub fn count_records_in(content: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', content).count() as u64
}

/// Reads a sealed data file of either codec from storage in chunks of
/// [`SealedReader::CHUNK`] bytes (memory stays bounded: one chunk plus the
/// largest unit), giving the records' bytes of one data unit at a time, and the
/// CRC-32C of every byte read.
#[derive(Debug)]
pub struct SealedReader<'a> {
    storage: &'a dyn Storage,
    path: String,
    codec: Codec,
    len: u64,
    at: u64,
    pending: Vec<u8>,
    base: u64,
    ready: std::collections::VecDeque<(u64, Vec<u8>)>,
    crc: u32,
    trailer: Option<Trailer>,
}

impl<'a> SealedReader<'a> {
    /// Bytes read per storage call.
    pub const CHUNK: u64 = 4 << 20;

    /// A reader of the `len`-byte sealed file at `path`, its codec from its name.
    pub fn new(storage: &'a dyn Storage, path: &str, len: u64) -> Self {
        SealedReader {
            storage,
            path: path.to_owned(),
            codec: Codec::of_file(path),
            len,
            at: 0,
            pending: Vec::new(),
            base: 0,
            ready: Default::default(),
            crc: 0,
            trailer: None,
        }
    }

    /// The next data unit's offset and records' bytes; `None` at the end of the
    /// file. An error for a unit that does not decode, or bytes at the end that
    /// are no complete unit.
    pub async fn next(&mut self) -> Result<Option<(u64, Vec<u8>)>, FormatError> {
        loop {
            if let Some(unit) = self.ready.pop_front() {
                return Ok(Some(unit));
            }
            if self.at >= self.len {
                if !self.pending.is_empty() {
                    return Err(FormatError::CorruptFrame {
                        path: self.path.clone(),
                        offset: self.base,
                        reason: format!(
                            "the last {} bytes are not a complete {} unit",
                            self.pending.len(),
                            self.codec.name()
                        ),
                    });
                }
                return Ok(None);
            }
            let end = (self.at + Self::CHUNK).min(self.len);
            let chunk = self.storage.read_range(&self.path, self.at..end).await?;
            if chunk.is_empty() {
                return Err(FormatError::CorruptFrame {
                    path: self.path.clone(),
                    offset: self.at,
                    reason: format!("the file ends at byte {}, expected {}", self.at, self.len),
                });
            }
            self.at += chunk.len() as u64;
            self.crc = crc32c_append(self.crc, &chunk);
            self.pending.extend_from_slice(&chunk);
            let (units, scan) =
                contents(self.codec, &self.pending, self.base).map_err(|(offset, reason)| {
                    FormatError::CorruptFrame {
                        path: self.path.clone(),
                        offset,
                        reason,
                    }
                })?;
            if let Some(last) = scan.frames.last() {
                let at = (last.offset - self.base) as usize;
                self.trailer = if last.skippable {
                    Trailer::decode(&self.pending[at..at + last.len as usize])
                } else {
                    None
                };
            }
            self.ready.extend(units);
            self.pending.drain(..(scan.valid_len - self.base) as usize);
            self.base = scan.valid_len;
        }
    }

    /// CRC-32C of the bytes read so far (of the whole file once [`Self::next`]
    /// returned `None`).
    pub fn crc32c(&self) -> u32 {
        self.crc
    }

    /// The close trailer, when the units read so far end with one (zstd only).
    pub fn trailer(&self) -> Option<Trailer> {
        self.trailer
    }
}

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

/// What a closed file's trailer says about its records (both versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Encoding of the file's records.
    pub encoding: Encoding,
    /// Number of records in the file.
    pub records: u64,
    /// Sum of the records' decompressed sizes (newlines included).
    pub record_bytes: u64,
}

/// What else a trailer says: its version and, in version 2, where the index is and
/// the checksum of the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseInfo {
    /// 1 or 2.
    pub version: u8,
    /// Size of the index frame just before the trailer; 0 when there is none
    /// (always 0 in version 1).
    pub index_len: u32,
    /// CRC-32C of every byte before the trailer (index included); 0 when not
    /// computed (always 0 in version 1).
    pub crc32c: u32,
}

impl CloseInfo {
    /// The trailer's size in bytes.
    pub fn trailer_len(&self) -> u64 {
        match self.version {
            1 => TRAILER_LEN as u64,
            _ => TRAILER_V2_LEN as u64,
        }
    }
}

impl Trailer {
    /// A version 1 trailer (40 bytes): no index, no checksum. Writers that copy
    /// frames without checksumming them (hourly compaction) write this one.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(TRAILER_LEN);
        self.put(1, &mut out);
        Bytes::from(out)
    }

    /// A version 2 trailer (48 bytes): `index_len` is the size of the index frame
    /// written just before it (0: none), `crc32c` the CRC-32C of every byte before
    /// it (0: not computed).
    pub fn encode_v2(&self, index_len: u32, crc32c: u32) -> Bytes {
        let mut out = Vec::with_capacity(TRAILER_V2_LEN);
        self.put(2, &mut out);
        out.extend_from_slice(&index_len.to_le_bytes());
        out.extend_from_slice(&crc32c.to_le_bytes());
        Bytes::from(out)
    }

    fn put(&self, version: u8, out: &mut Vec<u8>) {
        let len = if version == 1 {
            TRAILER_LEN
        } else {
            TRAILER_V2_LEN
        };
        out.extend_from_slice(&TRAILER_MAGIC.to_le_bytes());
        out.extend_from_slice(&((len - 8) as u32).to_le_bytes());
        out.extend_from_slice(TRAILER_TAG);
        out.push(version);
        out.push(self.encoding.code());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&self.record_bytes.to_le_bytes());
    }

    /// Parses a trailer of either version from exactly one skippable frame, if it
    /// is conduit's.
    pub fn decode(frame: &[u8]) -> Option<Trailer> {
        decode_trailer(frame).map(|(trailer, _)| trailer)
    }
}

/// Parses a trailer of either version from exactly one skippable frame: a frame
/// with the trailer magic is a trailer only if it has the tag, a known version,
/// that version's exact size and a known encoding.
pub fn decode_trailer(frame: &[u8]) -> Option<(Trailer, CloseInfo)> {
    if frame.len() < TRAILER_LEN
        || frame[..4] != TRAILER_MAGIC.to_le_bytes()
        || &frame[8..22] != TRAILER_TAG
    {
        return None;
    }
    let version = frame[22];
    let size = u32::from_le_bytes(frame[4..8].try_into().ok()?) as usize;
    let expected = match version {
        1 => TRAILER_LEN,
        2 => TRAILER_V2_LEN,
        _ => return None,
    };
    if frame.len() != expected || size != expected - 8 {
        return None;
    }
    let encoding = Encoding::from_code(frame[23])?;
    let u64_at = |at: usize| frame[at..at + 8].try_into().ok().map(u64::from_le_bytes);
    let u32_at = |at: usize| frame[at..at + 4].try_into().ok().map(u32::from_le_bytes);
    let trailer = Trailer {
        encoding,
        records: u64_at(24)?,
        record_bytes: u64_at(32)?,
    };
    let info = match version {
        1 => CloseInfo {
            version,
            index_len: 0,
            crc32c: 0,
        },
        _ => CloseInfo {
            version,
            index_len: u32_at(40)?,
            crc32c: u32_at(44)?,
        },
    };
    Some((trailer, info))
}

/// The trailer at the end of `tail`, the last bytes of a file (at least
/// [`TRAILER_V2_LEN`] of them, or the whole file if it is shorter): a version 2
/// trailer in the last 48 bytes, or else a version 1 trailer in the last 40.
pub fn trailer_in_tail(tail: &[u8]) -> Option<(Trailer, CloseInfo)> {
    let last = |n: usize| tail.len().checked_sub(n).map(|from| &tail[from..]);
    last(TRAILER_V2_LEN)
        .and_then(decode_trailer)
        .or_else(|| last(TRAILER_LEN).and_then(decode_trailer))
}

/// CRC-32C (Castagnoli) of `bytes` continuing from `crc` (0 to start): the
/// checksum of version 2 trailers and of manifests.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// The frames that close a file whose bytes so far have CRC-32C `crc_before`:
/// the index of its batches (when `index` is given; version 1 files have none),
/// then a version 2 trailer naming the index's size and the CRC-32C of every byte
/// before the trailer.
pub fn encode_closing(trailer: &Trailer, crc_before: u32, index: Option<&[IndexEntry]>) -> Bytes {
    let mut out = Vec::with_capacity(TRAILER_V2_LEN + 64);
    let mut index_len = 0;
    if let Some(entries) = index {
        let frame = encode_index(entries);
        index_len = frame.len() as u32;
        out.extend_from_slice(&frame);
    }
    let crc = crc32c_append(crc_before, &out);
    out.extend_from_slice(&trailer.encode_v2(index_len, crc));
    Bytes::from(out)
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
    /// The trailer's version, index size and checksum (with `trailer`).
    pub close: Option<CloseInfo>,
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
            decode_trailer(&rest[..len])
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
        trailer: trailer.map(|(t, _)| t),
        close: trailer.map(|(_, c)| c),
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
    /// The batch parts named by marks whose data frame counts, in file order.
    pub batches: Vec<FileBatch>,
    /// Frame structure, torn bytes and trailer (after the rules of
    /// [`decode_file`]: `valid_len` ends after the last unit that counts).
    pub scan: Scan,
}

impl Decoded {
    /// The batch parts of the file, without their offsets and details.
    pub fn marks(&self) -> impl Iterator<Item = &BatchMark> {
        self.batches.iter().map(|b| b.mark.batch())
    }

    /// The file's index entries ([`index_of`]).
    pub fn index(&self) -> Option<Vec<IndexEntry>> {
        index_of(&self.batches)
    }
}

/// Which rule ties marks to data frames in a file (`docs/format.md` §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Marks precede the data frame they describe; a data frame counts alone.
    V1,
    /// Marks follow every data frame; a data frame counts only with its marks.
    V2,
}

impl Layout {
    /// The rule of a file: the version of its first marks frame; in a file
    /// without a complete one, the version of a marks frame its torn tail starts
    /// with (when at least its header is there); otherwise version 1, which keeps
    /// a lone data frame (a version 2 file torn right after its first data frame
    /// cannot be told from a version 1 file without marks).
    fn of(buf: &[u8], scan: &Scan) -> Layout {
        let first = scan
            .frames
            .iter()
            .filter(|f| f.skippable)
            .find_map(|f| decode_marks(&buf[f.offset as usize..(f.offset + f.len) as usize]));
        let version = match first {
            Some(Marks::V1(_)) => Some(1),
            Some(Marks::V2(_)) => Some(2),
            None => marks::marks_version_of_prefix(&buf[scan.valid_len as usize..]),
        };
        match version {
            Some(2) => Layout::V2,
            _ => Layout::V1,
        }
    }
}

/// Decodes every record in the frames of a file's bytes that count, and the
/// batch marks that go with them. What counts:
///
/// - Complete frames only: a torn tail is not an error (it is reported in
///   `scan.torn_bytes`).
/// - In an unclosed version 2 file, a data frame counts only once the marks frame
///   after it is complete; everything after the last such pair (a lone data frame,
///   an index written by a close that did not finish) is torn.
/// - In an unclosed version 1 file, marks at the end with no data frame after
///   them are torn, and so is an index at the end (a close that did not finish).
/// - A complete data frame that fails to decode is an error, unless it is the last
///   data frame of an unclosed file, which a crash can leave half-written with a
///   plausible length: then it (and its marks) counts as torn too.
pub fn decode_file(path: &str, buf: &[u8], encoding: Encoding) -> Result<Decoded, FormatError> {
    let mut scan = scan(buf, 0);
    let closed = scan.trailer.is_some();
    let layout = Layout::of(buf, &scan);
    let frames = std::mem::take(&mut scan.frames);
    let bytes_of = |f: &FrameRef| &buf[f.offset as usize..(f.offset + f.len) as usize];
    let is_marks = |f: &FrameRef| f.skippable && decode_marks(bytes_of(f)).is_some();
    let is_index = |f: &FrameRef| f.skippable && decode_index(bytes_of(f)).is_some();
    let is_marks_or_index = |f: &FrameRef| is_marks(f) || is_index(f);
    // How many frames count.
    let mut keep = frames.len();
    if !closed {
        match layout {
            Layout::V2 => {
                // The valid prefix ends after the last (data frame, marks) pair:
                // a data frame without its marks is cut with everything after it,
                // and so is the data frame before it if that one lost its marks
                // too (only damage does that), so decoding what is kept keeps it
                // all.
                let mut end = frames.len();
                keep = loop {
                    match frames[..end].iter().rposition(|f| !f.skippable) {
                        Some(d) if frames[..end].get(d + 1).is_some_and(is_marks) => break d + 2,
                        Some(d) => end = d,
                        None => break 0,
                    }
                };
            }
            Layout::V1 => {
                // An index at the end is a close that did not finish (recovery
                // closes version 1 files with an index too), and marks with no
                // data frame after them are torn: all such frames, in any order
                // (only damage writes two in a row), so that decoding what is
                // kept keeps it all.
                keep = v1_kept_before(&frames, keep, is_marks_or_index);
            }
        }
    }
    let last_data = frames[..keep].iter().rposition(|f| !f.skippable);
    // Whether the last data frame was cut because it does not decode.
    let mut torn_data = false;
    let mut payloads = Vec::new();
    let mut record_bytes = 0u64;
    let mut batches = Vec::new();
    // Version 1 marks wait for the data frame after them.
    let mut pending: Vec<BatchMark> = Vec::new();
    // The data frame a version 2 marks frame describes (the frame just before).
    let mut previous_data: Option<u64> = None;
    let mut i = 0;
    while i < keep {
        let frame = frames[i];
        let bytes = bytes_of(&frame);
        if frame.skippable {
            match decode_marks(bytes) {
                Some(Marks::V1(found)) => pending = found,
                Some(Marks::V2(found)) => {
                    if let Some(frame_offset) = previous_data {
                        batches.extend(found.into_iter().map(|mark| FileBatch {
                            frame_offset,
                            mark: FoundMark::V2(mark),
                        }));
                    }
                }
                None => {}
            }
            previous_data = None;
            i += 1;
            continue;
        }
        let content = match decode_frame(bytes) {
            Ok(content) => content,
            Err(reason) if !closed && Some(i) == last_data => {
                // Torn: cut it. What it leaves at the end (its version 1
                // marks, say) is cut by decoding the kept prefix again, below.
                keep = i;
                torn_data = true;
                tracing::debug!(path, offset = frame.offset, %reason, "last data frame does not decode: torn");
                break;
            }
            Err(reason) => {
                return Err(FormatError::CorruptFrame {
                    path: path.to_string(),
                    offset: frame.offset,
                    reason,
                })
            }
        };
        batches.extend(pending.drain(..).map(|batch| FileBatch {
            frame_offset: frame.offset,
            mark: FoundMark::V1(batch),
        }));
        previous_data = Some(frame.offset);
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
        i += 1;
    }
    // Batches of frames that were cut (a torn data frame's records were never
    // added) cannot be among them: marks attach only to decoded frames.
    if keep < frames.len() {
        let cut_at = frames[keep].offset;
        scan.torn_bytes += scan.valid_len - cut_at;
        scan.valid_len = cut_at;
        // What is kept may end with a trailer of its own (files concatenated by
        // compaction, then torn): then it is closed, like any file ending so.
        let closing = keep
            .checked_sub(1)
            .map(|last| frames[last])
            .filter(|f| f.skippable)
            .and_then(|f| decode_trailer(bytes_of(&f)));
        scan.trailer = closing.map(|(t, _)| t);
        scan.close = closing.map(|(_, c)| c);
    }
    scan.frames = frames;
    scan.frames.truncate(keep);
    if torn_data && !scan.is_closed() {
        // Cutting a torn data frame leaves what is kept ending in a way the
        // rules may cut too: the version 1 marks written before it, and
        // (only damage does these) more marks or an index before those, or in
        // version 2 the data frame before it without its marks; and marks it
        // had already lent to a kept frame (version 2 marks in a version 1
        // file) may now lie past the end. The answer is the kept prefix decoded
        // alone by the same rules, so that what is kept decodes again to
        // exactly itself: frames, records and batches. (Recovery of a torn file
        // only: a second decode.)
        let mut kept = decode_file(path, &buf[..scan.valid_len as usize], encoding)?;
        // Torn: what this decode cut, and what the prefix's decode cut.
        kept.scan.torn_bytes += scan.torn_bytes;
        return Ok(kept);
    }
    Ok(Decoded {
        payloads,
        record_bytes,
        batches,
        scan,
    })
}

/// How many of `frames[..end]` a version 1 file keeps when every trailing frame
/// that `cut` matches is torn.
fn v1_kept_before(frames: &[FrameRef], end: usize, cut: impl Fn(&FrameRef) -> bool) -> usize {
    frames[..end]
        .iter()
        .rposition(|f| !cut(f))
        .map_or(0, |last| last + 1)
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

/// The close trailer of the `len`-byte data file at `path`, of either version, read
/// from its last [`TRAILER_V2_LEN`] bytes (a closed file never changes, so this is
/// all it takes). `None` when the file is shorter or its last bytes are no trailer:
/// it is still being written, or its writer crashed. `len` is the caller's (listed
/// or stat'ed) length; a storage error, `NotFound` included, is returned as is.
pub async fn read_trailer(
    storage: &dyn Storage,
    path: &str,
    len: u64,
) -> Result<Option<Trailer>, StorageError> {
    Ok(read_close(storage, path, len).await?.map(|(t, _)| t))
}

/// [`read_trailer`] with the trailer's version, index size and checksum.
pub async fn read_close(
    storage: &dyn Storage,
    path: &str,
    len: u64,
) -> Result<Option<(Trailer, CloseInfo)>, StorageError> {
    if len < TRAILER_LEN as u64 {
        return Ok(None);
    }
    let start = len.saturating_sub(TRAILER_V2_LEN as u64);
    let tail = storage.read_range(path, start..len).await?;
    Ok(trailer_in_tail(&tail))
}

/// Whether the `len`-byte data file at `path` is closed: it ends with a close
/// trailer ([`read_trailer`]).
pub async fn is_closed(storage: &dyn Storage, path: &str, len: u64) -> Result<bool, StorageError> {
    Ok(read_trailer(storage, path, len).await?.is_some())
}

/// Bytes [`read_index`] reads at first: enough for the trailer and the index of a
/// file of a few hundred batches, so that one ranged read usually does.
pub const TAIL_READ_BYTES: u64 = 64 << 10;

/// What the end of a closed file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedTail {
    /// The trailer's counts.
    pub trailer: Trailer,
    /// Its version, index size and checksum.
    pub close: CloseInfo,
    /// The file's batches with their data frames' offsets; `None` when the file
    /// has no index (version 1 trailers, files with version 1 marks).
    pub index: Option<Vec<IndexEntry>>,
}

/// The trailer and index of the closed `len`-byte data file at `path`, from one
/// ranged read of its last [`TAIL_READ_BYTES`] (a second one only for a larger
/// index). `None` if the file is not closed. An `index_len` that does not point at
/// an index frame is a [`FormatError::CorruptFrame`].
pub async fn read_index(
    storage: &dyn Storage,
    path: &str,
    len: u64,
) -> Result<Option<ClosedTail>, FormatError> {
    if len < TRAILER_LEN as u64 {
        return Ok(None);
    }
    let start = len.saturating_sub(TAIL_READ_BYTES);
    let mut tail = storage.read_range(path, start..len).await?;
    let Some((trailer, close)) = trailer_in_tail(&tail) else {
        return Ok(None);
    };
    if close.index_len == 0 {
        return Ok(Some(ClosedTail {
            trailer,
            close,
            index: None,
        }));
    }
    let corrupt = |reason: String| FormatError::CorruptFrame {
        path: path.to_string(),
        offset: len.saturating_sub(close.trailer_len() + close.index_len as u64),
        reason,
    };
    let needed = close.trailer_len() + close.index_len as u64;
    if needed > len {
        return Err(corrupt(format!(
            "the trailer names an index of {} bytes, more than the file holds",
            close.index_len
        )));
    }
    let index_start = len - needed;
    if index_start < start {
        tail = storage.read_range(path, index_start..len).await?;
    }
    let from = (index_start - len.saturating_sub(tail.len() as u64)) as usize;
    let frame = &tail[from..from + close.index_len as usize];
    let index = decode_index(frame).ok_or_else(|| {
        corrupt("the trailer's index_len does not point at an index frame".into())
    })?;
    Ok(Some(ClosedTail {
        trailer,
        close,
        index: Some(index),
    }))
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
    /// Batch parts in the kept bytes.
    pub batches: Vec<FileBatch>,
    /// CRC-32C of the kept bytes (0 for a file that was closed already).
    pub crc32c: u32,
    /// Bytes [`close_recovered`] appended (index and trailer); 0 from
    /// [`recover_file`] and for a file that was closed already.
    pub closing_bytes: u64,
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

    /// The frames that close the recovered file: its index (when every mark in it
    /// is a version 2 mark) and a version 2 trailer with the file's CRC-32C.
    pub fn closing(&self, encoding: Encoding) -> Bytes {
        let index = index_of(&self.batches);
        encode_closing(&self.trailer(encoding), self.crc32c, index.as_deref())
    }

    /// The file's length once closed.
    pub fn closed_len(&self) -> u64 {
        self.kept_bytes + self.closing_bytes
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
    // What is kept ends with a trailer (a closed file, or closed files
    // concatenated and then torn): it is closed and stays as it is.
    let was_closed = scan.trailer.is_some();
    Ok(Recovery {
        kept_bytes: kept,
        dropped_bytes: dropped,
        was_closed,
        records: decoded.payloads.len() as u64,
        record_bytes: decoded.record_bytes,
        crc32c: if was_closed {
            0
        } else {
            crc32c_append(0, &all[..kept as usize])
        },
        batches: decoded.batches,
        closing_bytes: 0,
    })
}

/// [`recover_file`], then appends the index and trailer ([`Recovery::closing`]) if
/// the file had none: the file is closed afterwards and its bytes never change
/// again.
pub async fn close_recovered(
    storage: &dyn Storage,
    path: &str,
    encoding: Encoding,
    limit: Option<u64>,
) -> Result<Recovery, FormatError> {
    let mut recovery = recover_file(storage, path, encoding, limit).await?;
    if !recovery.was_closed {
        let closing = recovery.closing(encoding);
        recovery.closing_bytes = closing.len() as u64;
        let mut writer = storage.append(path).await?;
        writer.write(closing).await?;
        writer.close().await?;
    }
    Ok(recovery)
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
    fn v1_marks_count_only_with_their_complete_frame() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let mark = |seq| BatchMark {
            publisher: Bytes::from_static(b"pub-1"),
            sequence: seq,
            part: 0,
            parts: 2,
        };
        assert_eq!(
            decode_marks(&encode_marks_v1(&[mark(7)])),
            Some(Marks::V1(vec![mark(7)]))
        );
        let mut file = Vec::new();
        file.extend_from_slice(&encode_marks_v1(&[mark(1)]));
        let first_at = file.len() as u64;
        file.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"x"]));
        let keep = file.len();
        file.extend_from_slice(&encode_marks_v1(&[mark(2)]));
        let lost = frame_of(&mut enc, Encoding::Lines, &[b"y"]);
        file.extend_from_slice(&lost[..lost.len() - 3]);
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.marks().cloned().collect::<Vec<_>>(), vec![mark(1)]);
        assert_eq!(decoded.batches[0].frame_offset, first_at);
        assert_eq!(decoded.payloads, vec!["x"]);
        assert_eq!(
            decoded.scan.valid_len, keep as u64,
            "marks of a torn frame are cut too"
        );
        assert_eq!(decoded.index(), None, "version 1 marks cannot be indexed");
        // Marks alone at the end are cut as well.
        let mut file = file[..keep].to_vec();
        file.extend_from_slice(&encode_marks_v1(&[mark(3)]));
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.scan.valid_len, keep as u64);
        assert_eq!(decoded.marks().count(), 1);
        // Stock decoders skip marks.
        assert_eq!(zstd::stream::decode_all(&file[..keep]).unwrap(), b"x\n");
    }

    fn part(seq: i64, first_record: u32, records: u32) -> PartMark {
        PartMark {
            batch: BatchMark {
                publisher: Bytes::from_static(b"pub-2"),
                sequence: seq,
                part: 0,
                parts: 1,
            },
            digest: seq as u64 * 1000,
            first_record,
            records,
        }
    }

    /// A version 2 file of `pairs` (data frame, marks) units: unit `k` holds records
    /// `k-0`, `k-1` and batch `k` (its second and third records); returns the file
    /// and the offset of each data frame.
    fn v2_file(enc: &mut FrameEncoder, pairs: usize) -> (Vec<u8>, Vec<u64>) {
        let mut file = Vec::new();
        let mut offsets = Vec::new();
        for k in 0..pairs {
            offsets.push(file.len() as u64);
            let records = [format!("{k}-0"), format!("{k}-1"), format!("{k}-2")];
            let refs: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
            file.extend_from_slice(&frame_of(enc, Encoding::Lines, &refs));
            let marks = if k % 2 == 0 {
                vec![part(k as i64, 1, 2)]
            } else {
                vec![] // a round without batches still gets its (empty) marks
            };
            file.extend_from_slice(&encode_marks(&marks));
        }
        (file, offsets)
    }

    #[test]
    fn v2_marks_describe_the_frame_before_them() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let (file, offsets) = v2_file(&mut enc, 3);
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.payloads.len(), 9);
        assert_eq!(decoded.scan.valid_len, file.len() as u64);
        assert_eq!(
            decoded.batches,
            vec![
                FileBatch {
                    frame_offset: offsets[0],
                    mark: FoundMark::V2(part(0, 1, 2))
                },
                FileBatch {
                    frame_offset: offsets[2],
                    mark: FoundMark::V2(part(2, 1, 2))
                },
            ]
        );
        assert!(
            !is_skippable_magic(&file),
            "a version 2 file starts with a data frame"
        );
        assert_eq!(
            zstd::stream::decode_all(&file[..]).unwrap(),
            b"0-0\n0-1\n0-2\n1-0\n1-1\n1-2\n2-0\n2-1\n2-2\n"
        );
    }

    /// Torn at every byte of the last (data, marks) unit, an unclosed version 2
    /// file keeps exactly the units before it: a data frame without its complete
    /// marks was never acknowledged.
    #[test]
    fn v2_recovery_keeps_whole_units_only() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let (file, offsets) = v2_file(&mut enc, 3);
        let last = offsets[2] as usize;
        for cut in last..file.len() {
            let decoded = decode_file("f", &file[..cut], Encoding::Lines).unwrap();
            assert_eq!(decoded.scan.valid_len, last as u64, "cut at {cut}");
            assert_eq!(decoded.scan.torn_bytes, (cut - last) as u64, "cut at {cut}");
            assert_eq!(decoded.payloads.len(), 6, "cut at {cut}");
            assert_eq!(decoded.record_bytes, 24, "cut at {cut}");
            assert_eq!(
                decoded.batches.len(),
                1,
                "only batch 0 is durable (cut at {cut})"
            );
            assert_eq!(decoded.scan.frames.len(), 4, "cut at {cut}");
        }
        let whole = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(whole.scan.valid_len, file.len() as u64);
        assert_eq!(whole.batches.len(), 2);
        // A garbled last data frame with its marks after it is torn as well.
        let mut garbled = file.clone();
        garbled[offsets[2] as usize + 8] ^= 0xff;
        let decoded = decode_file("f", &garbled, Encoding::Lines).unwrap();
        assert_eq!(decoded.scan.valid_len, last as u64);
        assert_eq!(decoded.batches.len(), 1);
    }

    /// The one case the layout cannot be told: a file whose only complete frame is
    /// a data frame. It is kept (a version 1 file without marks is exactly this,
    /// and its frame was acknowledged), unless the torn tail shows a version 2
    /// marks header.
    #[test]
    fn a_lone_first_data_frame_is_kept_unless_v2_marks_follow() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let (file, _) = v2_file(&mut enc, 1);
        let data_len = file.len() - encode_marks(&[part(0, 1, 2)]).len();
        for cut in data_len..file.len() {
            let decoded = decode_file("f", &file[..cut], Encoding::Lines).unwrap();
            let header_seen = cut - data_len >= 22;
            let want = if header_seen { 0 } else { data_len as u64 };
            assert_eq!(decoded.scan.valid_len, want, "cut at {cut}");
        }
    }

    #[test]
    fn trailers_of_both_versions() {
        let trailer = Trailer {
            encoding: Encoding::Base64,
            records: 5,
            record_bytes: 77,
        };
        let v1 = trailer.encode();
        let v2 = trailer.encode_v2(123, 0xdead_beef);
        assert_eq!(v1.len(), TRAILER_LEN);
        assert_eq!(v2.len(), TRAILER_V2_LEN);
        let info1 = CloseInfo {
            version: 1,
            index_len: 0,
            crc32c: 0,
        };
        let info2 = CloseInfo {
            version: 2,
            index_len: 123,
            crc32c: 0xdead_beef,
        };
        assert_eq!(decode_trailer(&v1), Some((trailer, info1)));
        assert_eq!(decode_trailer(&v2), Some((trailer, info2)));
        assert_eq!(Trailer::decode(&v2), Some(trailer));
        assert_eq!(info1.trailer_len(), 40);
        assert_eq!(info2.trailer_len(), 48);
        // A version 2 body with a version 1 size (or the reverse) is no trailer.
        let mut wrong = v2.to_vec();
        wrong[22] = 1;
        assert_eq!(decode_trailer(&wrong), None);
        assert_eq!(decode_trailer(&wrong[..40]), None);
        // Found at the end of a file's last bytes, whatever precedes them.
        let mut tail = vec![7u8; 30];
        tail.extend_from_slice(&v1);
        assert_eq!(trailer_in_tail(&tail), Some((trailer, info1)));
        assert_eq!(trailer_in_tail(&v1), Some((trailer, info1)));
        tail.extend_from_slice(&v2);
        assert_eq!(trailer_in_tail(&tail), Some((trailer, info2)));
        assert_eq!(trailer_in_tail(&tail[..tail.len() - 1]), None);
        // Both are closing frames for the scanner.
        for t in [&v1, &v2] {
            let s = scan(t, 0);
            assert!(s.is_closed());
            assert_eq!(s.trailer, Some(trailer));
        }
    }

    #[tokio::test]
    async fn recovery_closes_with_an_index_and_a_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::LocalStorage::open(dir.path()).unwrap();
        let mut enc = FrameEncoder::new(1).unwrap();
        let (file, offsets) = v2_file(&mut enc, 3);
        let keep = offsets[2];
        // A close that wrote its index but not its trailer: the index is cut.
        let mut unfinished = file.clone();
        unfinished.extend_from_slice(&encode_index(&[]));
        storage
            .write_atomic("u.zst", Bytes::from(unfinished))
            .await
            .unwrap();
        let r = recover_file(&storage, "u.zst", Encoding::Lines, None)
            .await
            .unwrap();
        assert_eq!((r.kept_bytes, r.records), (file.len() as u64, 9));
        // Torn inside the last marks frame.
        let torn = file[..file.len() - 3].to_vec();
        storage
            .write_atomic("t.zst", Bytes::from(torn))
            .await
            .unwrap();
        let r = close_recovered(&storage, "t.zst", Encoding::Lines, None)
            .await
            .unwrap();
        assert_eq!(r.kept_bytes, keep);
        assert_eq!(r.records, 6);
        let closed = storage.read("t.zst").await.unwrap();
        assert_eq!(closed.len() as u64, r.closed_len());
        let tail = read_index(&storage, "t.zst", closed.len() as u64)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tail.trailer.records, 6);
        assert_eq!(tail.trailer.record_bytes, 24);
        assert_eq!(tail.close.version, 2);
        assert_eq!(
            tail.index,
            Some(vec![IndexEntry {
                frame_offset: offsets[0],
                mark: part(0, 1, 2)
            }])
        );
        let before_trailer = closed.len() - TRAILER_V2_LEN;
        assert_eq!(
            tail.close.crc32c,
            crc32c_append(0, &closed[..before_trailer])
        );
        assert_eq!(
            tail.close.index_len as usize,
            before_trailer - keep as usize
        );
        // The closed file decodes to the same, and closing again changes nothing.
        let decoded = decode_file("t.zst", &closed, Encoding::Lines).unwrap();
        assert!(decoded.scan.is_closed());
        assert_eq!(decoded.payloads.len(), 6);
        assert_eq!(decoded.index(), tail.index);
        let again = close_recovered(&storage, "t.zst", Encoding::Lines, None)
            .await
            .unwrap();
        assert!(again.was_closed);
        assert_eq!(storage.read("t.zst").await.unwrap(), closed);
        // A version 1 file (marks before frames) is closed without an index.
        let mut v1 = encode_marks_v1(&[part(9, 0, 1).batch]).to_vec();
        v1.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"old"]));
        storage
            .write_atomic("v1.zst", Bytes::from(v1.clone()))
            .await
            .unwrap();
        let r = close_recovered(&storage, "v1.zst", Encoding::Lines, None)
            .await
            .unwrap();
        assert_eq!((r.records, r.dropped_bytes), (1, 0));
        let tail = read_index(&storage, "v1.zst", r.closed_len())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tail.index, None);
        assert_eq!(tail.close.crc32c, crc32c_append(0, &v1));
        // A file closed with a version 1 trailer: no index, no checksum.
        let mut old = v1.clone();
        old.extend_from_slice(&r.trailer(Encoding::Lines).encode());
        storage
            .write_atomic("old.zst", Bytes::from(old.clone()))
            .await
            .unwrap();
        let tail = read_index(&storage, "old.zst", old.len() as u64)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((tail.close.version, tail.index), (1, None));
        assert!(read_index(&storage, "v1.zst", 10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_large_index_takes_a_second_read() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::LocalStorage::open(dir.path()).unwrap();
        let entries: Vec<IndexEntry> = (0..3000)
            .map(|k| IndexEntry {
                frame_offset: k,
                mark: part(k as i64, 0, 1),
            })
            .collect();
        let trailer = Trailer {
            encoding: Encoding::Lines,
            records: 0,
            record_bytes: 0,
        };
        let closing = encode_closing(&trailer, 0, Some(&entries));
        assert!(closing.len() as u64 > TAIL_READ_BYTES);
        storage
            .write_atomic("big.zst", closing.clone())
            .await
            .unwrap();
        let tail = read_index(&storage, "big.zst", closing.len() as u64)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tail.index, Some(entries));
        // An index_len pointing elsewhere is corruption, named with its offset.
        let bad = trailer.encode_v2(10, 0);
        storage.write_atomic("bad.zst", bad.clone()).await.unwrap();
        let err = read_index(&storage, "bad.zst", bad.len() as u64)
            .await
            .unwrap_err();
        assert!(matches!(err, FormatError::CorruptFrame { .. }), "{err}");
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

    /// Found by fuzzing (`fuzz/regressions/data_file/closed-then-torn-data`): two
    /// closed files concatenated (hourly compaction), the second torn in its last
    /// data frame. What is kept ends with the first file's trailer, so it is
    /// closed: recovery must not append a second closing.
    #[test]
    fn a_cut_that_ends_at_a_trailer_leaves_a_closed_file() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let mut file = frame_of(&mut enc, Encoding::Lines, &[b"a", b"b"]).to_vec();
        let trailer = Trailer {
            encoding: Encoding::Lines,
            records: 2,
            record_bytes: 4,
        };
        file.extend_from_slice(&trailer.encode_v2(0, 0));
        let closed_len = file.len() as u64;
        let mut last = frame_of(&mut enc, Encoding::Lines, &[b"lost in a crash"]).to_vec();
        let n = last.len();
        last[n - 6] ^= 0xff;
        file.extend_from_slice(&last);

        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.payloads, vec!["a", "b"]);
        assert_eq!(decoded.scan.valid_len, closed_len);
        assert_eq!(decoded.scan.torn_bytes, last.len() as u64);
        assert_eq!(decoded.scan.trailer, Some(trailer));
        assert_eq!(decoded.scan.close.map(|c| c.version), Some(2));
        // What recovery keeps is closed: it is not closed a second time.
        let kept = decode_file("f", &file[..closed_len as usize], Encoding::Lines).unwrap();
        assert!(kept.scan.is_closed());
    }

    /// Found by fuzzing (`fuzz/regressions/data_file/v2-data-frame-followed-by-a-foreign-skippable-frame`):
    /// in an unclosed layout 2 file whose last two data frames lost their marks
    /// (another skippable frame in their place: damage, never a crash), the
    /// valid prefix ends after the last intact (data, marks) pair, so decoding
    /// what is kept keeps all of it.
    #[test]
    fn data_frames_without_their_marks_are_cut_back_to_the_last_pair() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let mut foreign = 0x184D_2A57u32.to_le_bytes().to_vec();
        foreign.extend_from_slice(&4u32.to_le_bytes());
        foreign.extend_from_slice(b"junk");
        let mut file = frame_of(&mut enc, Encoding::Lines, &[b"a"]).to_vec();
        file.extend_from_slice(&encode_marks(&[]));
        let pair_end = file.len() as u64;
        for payload in [b"b", b"c"] {
            file.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[payload]));
            file.extend_from_slice(&foreign);
        }
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.payloads, vec!["a"]);
        assert_eq!(decoded.scan.valid_len, pair_end);
        let again = decode_file("f", &file[..pair_end as usize], Encoding::Lines).unwrap();
        assert_eq!(
            again.scan.valid_len, pair_end,
            "decoding the kept prefix keeps it"
        );
        assert_eq!(again.payloads, decoded.payloads);

        // `fuzz/regressions/data_file/v2-torn-last-frame-after-a-frame-without-marks`:
        // the last data frame has its marks but does not decode (torn), and the
        // one before it lost its marks: both are cut.
        let mut file = file[..pair_end as usize].to_vec();
        file.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"b"]));
        file.extend_from_slice(&foreign);
        let mut torn = frame_of(&mut enc, Encoding::Lines, &[b"lost in a crash"]).to_vec();
        let n = torn.len();
        torn[n - 6] ^= 0xff;
        file.extend_from_slice(&torn);
        file.extend_from_slice(&encode_marks(&[]));
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.payloads, vec!["a"]);
        assert_eq!(decoded.scan.valid_len, pair_end);
        assert_eq!(decoded.scan.torn_bytes, file.len() as u64 - pair_end);
        let again = decode_file("f", &file[..pair_end as usize], Encoding::Lines).unwrap();
        assert_eq!(again.scan.valid_len, pair_end);
    }

    /// Found by fuzzing (`fuzz/regressions/data_file/v1-torn-data-after-two-marks-frames`):
    /// an unclosed version 1 file ending with two marks frames and no data frame
    /// after them. Only the last was cut as torn, which left the first at the
    /// end; decoding those kept bytes again cut it too, so what recovery keeps
    /// did not decode to itself.
    #[test]
    fn v1_kept_bytes_decode_to_themselves_after_a_torn_data_frame() {
        let file =
            include_bytes!("../../fuzz/regressions/data_file/v1-torn-data-after-two-marks-frames");
        let decoded = decode_file("f", file, Encoding::Lines).unwrap();
        let kept = &file[..decoded.scan.valid_len as usize];
        let again = decode_file("f", kept, Encoding::Lines).unwrap();
        assert_eq!(again.scan.frames, decoded.scan.frames);
        assert_eq!(again.scan.torn_bytes, 0);
        assert_eq!(again.payloads, decoded.payloads);
        assert_eq!(
            decoded.payloads.len(),
            2,
            "both records of the first frame are kept"
        );
    }

    /// Found by fuzzing (`v1-torn-data-after-version-2-marks`): a version 1
    /// file (its first marks frame is version 1) holding a version 2 marks
    /// frame, then a torn last data frame. The cut took the marks frame with
    /// the torn frame, but its batch had already been lent to the data frame
    /// before it, so the decode reported a batch that the kept bytes, decoded
    /// again, do not hold. A torn file's answer is now its kept prefix decoded
    /// alone.
    #[test]
    fn a_cut_takes_the_batches_of_the_marks_it_cuts() {
        let file =
            include_bytes!("../../fuzz/regressions/data_file/v1-torn-data-after-version-2-marks");
        let decoded = decode_file("f", file, Encoding::Lines).unwrap();
        assert!(decoded.scan.torn_bytes > 0);
        let kept = &file[..decoded.scan.valid_len as usize];
        let again = decode_file("f", kept, Encoding::Lines).unwrap();
        assert_eq!(again.scan.frames, decoded.scan.frames);
        assert_eq!(again.scan.torn_bytes, 0);
        assert_eq!(again.payloads, decoded.payloads);
        assert_eq!(again.batches, decoded.batches);
        assert!(decoded.batches.is_empty(), "{:?}", decoded.batches);
    }

    /// Found by fuzzing (CI at 2c66cd6): an unclosed version 1 file whose last
    /// data frame is complete but does not decode, after two marks frames. The
    /// torn frame was cut with the marks just before it only, so what was kept
    /// ended with the first marks frame, which decoding it again cut. Every
    /// order of marks and index frames at the end, before a torn frame, an
    /// undecodable one or none, is cut whole now.
    #[test]
    fn v1_kept_bytes_decode_to_themselves_whatever_marks_and_index_end_them() {
        let mut enc = FrameEncoder::new(1).unwrap();
        let mark = |seq| BatchMark {
            publisher: Bytes::from_static(b"pub-1"),
            sequence: seq,
            part: 0,
            parts: 1,
        };
        let mut head = encode_marks_v1(&[mark(1)]).to_vec();
        head.extend_from_slice(&frame_of(&mut enc, Encoding::Lines, &[b"x"]));
        let marks = encode_marks_v1(&[mark(2)]);
        let index = encode_index(&[]);
        let next = frame_of(&mut enc, Encoding::Lines, &[b"y"]);
        let torn = next[..next.len() - 3].to_vec();
        let mut undecodable = next.to_vec();
        let at = undecodable.len() - 5; // in the content: its checksum fails
        undecodable[at] ^= 0xff;
        assert!(decode_frame(&undecodable).is_err());
        for n in 0..=3u32 {
            for pick in 0..1u32 << n {
                for tail in [&[][..], &torn, &undecodable] {
                    let mut file = head.clone();
                    let mut order = Vec::new();
                    for k in 0..n {
                        let marks_here = pick >> k & 1 == 0;
                        order.push(if marks_here { "marks" } else { "index" });
                        file.extend_from_slice(if marks_here { &marks } else { &index });
                    }
                    file.extend_from_slice(tail);
                    let case = format!("{order:?} then {} tail bytes", tail.len());
                    let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
                    assert_eq!(decoded.payloads, vec!["x"], "{case}");
                    assert_eq!(decoded.scan.valid_len, head.len() as u64, "{case}");
                    assert_eq!(
                        decoded.scan.torn_bytes,
                        (file.len() - head.len()) as u64,
                        "{case}"
                    );
                    let kept = &file[..decoded.scan.valid_len as usize];
                    let again = decode_file("f", kept, Encoding::Lines).unwrap();
                    assert_eq!(again.scan.frames, decoded.scan.frames, "{case}");
                    assert_eq!(again.scan.torn_bytes, 0, "{case}");
                    assert_eq!(again.marks().count(), 1, "{case}");
                }
            }
        }
    }

    /// Found by fuzzing (`fuzz/regressions/data_file_writer/empty-file-torn-in-trailer`):
    /// a file without records (so without marks: read by the version 1 rule)
    /// whose close was cut short after its (empty) index. An index at the end of
    /// an unclosed file is an unfinished close under either rule: it is cut, and
    /// recovery leaves one index, not two.
    #[tokio::test]
    async fn an_unfinished_close_of_an_empty_file_is_cut() {
        let trailer = Trailer {
            encoding: Encoding::Lines,
            records: 0,
            record_bytes: 0,
        };
        let closing = encode_closing(&trailer, 0, Some(&[]));
        let torn = &closing[..closing.len() - 10];
        let decoded = decode_file("f", torn, Encoding::Lines).unwrap();
        assert_eq!(decoded.scan.valid_len, 0);
        assert_eq!(decoded.scan.torn_bytes, torn.len() as u64);
        assert!(decoded.scan.frames.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::LocalStorage::open(dir.path()).unwrap();
        storage
            .write_atomic("f.zst", Bytes::copy_from_slice(torn))
            .await
            .unwrap();
        let recovery = close_recovered(&storage, "f.zst", Encoding::Lines, None)
            .await
            .unwrap();
        assert_eq!((recovery.kept_bytes, recovery.records), (0, 0));
        let after = storage.read("f.zst").await.unwrap();
        assert_eq!(after.len() as u64, recovery.closed_len());
        let frames = scan(&after, 0).frames;
        assert_eq!(frames.len(), 2, "one index and one trailer: {frames:?}");

        // With records but no marks, the data frames stay and the index goes.
        let mut enc = FrameEncoder::new(1).unwrap();
        let mut file = frame_of(&mut enc, Encoding::Lines, &[b"kept"]).to_vec();
        let data_len = file.len() as u64;
        let trailer = Trailer {
            encoding: Encoding::Lines,
            records: 1,
            record_bytes: 5,
        };
        file.extend_from_slice(&encode_closing(&trailer, 0, Some(&[])));
        file.truncate(file.len() - 10);
        let decoded = decode_file("f", &file, Encoding::Lines).unwrap();
        assert_eq!(decoded.payloads, vec!["kept"]);
        assert_eq!(decoded.scan.valid_len, data_len);
        assert_eq!(decoded.index(), Some(vec![]));
    }
}
