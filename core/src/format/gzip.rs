//! gzip data files (`.gz`): what the worker writes into the merged (and hourly)
//! view of a topic with `format = "gzip"`, for readers with no zstd codec
//! (Hadoop's pure-Java `GzipCodec`, Hive, Spark 3, `hadoop fs -text`).
//!
//! Specified in `docs/format.md` §3.7. A `.gz` file is a standard multi-member
//! gzip stream (RFC 1952): each member holds whole records, exactly as the
//! topic's encoding stores them (`lines` or `base64` lines). No other bytes: no
//! marks, index or trailer, nothing a reader could trip on. Concatenating two
//! files gives a valid file (members concatenate), which is how hourly compaction
//! builds its `.gz` without recompressing. A sealed `.gz` is complete because the
//! manifest that lists it says so (its length, CRC-32C and record count).
//!
//! The merge job writes members of about [`MEMBER_BYTES`] of records: small
//! enough to bound memory, large enough that the per-member header costs nothing.

use std::io::{Read, Write};

use super::{FrameRef, Scan};

/// File name suffix of a gzip data file.
pub const GZIP_SUFFIX: &str = ".gz";

/// Uncompressed bytes of records per member the merge job writes (at least one
/// source frame; a member never splits a record).
pub const MEMBER_BYTES: usize = 4 << 20;

/// The deflate level members are written with: zlib's default, the one `gzip`
/// and Hadoop use (see `docs/benchmarks.md`, "Batch formats").
pub const LEVEL: u32 = 6;

/// One gzip member holding `content` (whole records).
pub fn encode_member(content: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(content.len() / 3 + 64),
        flate2::Compression::new(LEVEL),
    );
    // Writing to a Vec cannot fail.
    encoder.write_all(content).expect("writing to a vec");
    encoder.finish().expect("writing to a vec")
}

/// Decodes the gzip member at the start of `buf`: its compressed length and
/// content. `Err` when `buf` does not start with a complete, valid member (an
/// incomplete one cannot be told from a corrupt one without more bytes).
pub fn decode_member(buf: &[u8]) -> Result<(usize, Vec<u8>), String> {
    let mut rest = buf;
    let mut decoder = flate2::bufread::GzDecoder::new(&mut rest);
    let mut content = Vec::new();
    decoder
        .read_to_end(&mut content)
        .map_err(|e| format!("not a complete gzip member: {e}"))?;
    drop(decoder);
    Ok((buf.len() - rest.len(), content))
}

/// The complete members of `buf` (a file's bytes from offset `base`), with their
/// contents; scanning stops at the first incomplete or invalid member.
pub(super) fn members(buf: &[u8], base: u64) -> (Vec<(FrameRef, Vec<u8>)>, Scan) {
    let mut found = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        match decode_member(&buf[at..]) {
            Ok((len, content)) if len > 0 => {
                let frame = FrameRef {
                    offset: base + at as u64,
                    len: len as u64,
                    skippable: false,
                };
                found.push((frame, content));
                at += len;
            }
            _ => break,
        }
    }
    let scan = Scan {
        frames: found.iter().map(|(f, _)| *f).collect(),
        valid_len: base + at as u64,
        torn_bytes: (buf.len() - at) as u64,
        trailer: None,
        close: None,
    };
    (found, scan)
}

/// The name of the `.gz` file transcoded from the data file `name`: the same stem
/// (`dc1-c1-clicks-2026-11-22-10-05_00000.zst` becomes `...05_00000.gz`).
pub fn gz_name(name: &str) -> String {
    let stem = name.strip_suffix(super::DATA_FILE_SUFFIX).unwrap_or(name);
    format!("{stem}{GZIP_SUFFIX}")
}

/// The name of the data file a `.gz` file was transcoded from (the inverse of
/// [`gz_name`]; other names unchanged), for parsing with the layout's
/// `parse_local_file_name`.
pub fn zst_name(name: &str) -> std::borrow::Cow<'_, str> {
    match name.strip_suffix(GZIP_SUFFIX) {
        Some(stem) => format!("{stem}{}", super::DATA_FILE_SUFFIX).into(),
        None => name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_concatenate_and_scan_back() {
        let a = encode_member(b"one\ntwo\n");
        let b = encode_member(b"three\n");
        let mut file = a.clone();
        file.extend_from_slice(&b);
        let (found, scan) = members(&file, 100);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0.offset, 100);
        assert_eq!(found[1].0.offset, 100 + a.len() as u64);
        assert_eq!(found[1].1, b"three\n");
        assert_eq!(scan.valid_len, 100 + file.len() as u64);
        assert_eq!(scan.torn_bytes, 0);
        // A member cut short is torn, not an error.
        let (found, scan) = members(&file[..file.len() - 3], 0);
        assert_eq!(found.len(), 1);
        assert_eq!(scan.torn_bytes, b.len() as u64 - 3);
        // Python's and gzip's readers see the same stream.
        let mut all = String::new();
        flate2::read::MultiGzDecoder::new(&file[..])
            .read_to_string(&mut all)
            .unwrap();
        assert_eq!(all, "one\ntwo\nthree\n");
    }

    #[test]
    fn names_keep_their_stem() {
        assert_eq!(
            gz_name("dc1-c1-clicks-2026-11-22-10-05_00000.zst"),
            "dc1-c1-clicks-2026-11-22-10-05_00000.gz"
        );
        assert_eq!(
            zst_name("dc1-c1-clicks-2026-11-22-10-05_00000.gz"),
            "dc1-c1-clicks-2026-11-22-10-05_00000.zst"
        );
        assert_eq!(zst_name("a.zst"), "a.zst");
    }
}
