//! Rewriting a closed data file without some records, every frame at its offset.
//!
//! The local seal drops the records of duplicate batch parts (`crate::dedup`) from
//! a file of the minute it seals. It writes the file again under its staging name
//! (`_tmp.<name>`) and renames that over the file, so the file is wholly old or
//! wholly new whatever instant the worker is killed at; the staging copy of an
//! interrupted rewrite is deleted before the next seal of the directory.
//!
//! **Offsets do not move.** A PinTail reader of the local view follows a file from
//! `data/` into its minute directory at the same byte offsets, and consumer
//! checkpoints name a frame by its offset (`docs/format.md` §9.1). So each
//! affected data frame and the marks frame after it are replaced, in the same
//! bytes, by: the data frame recompressed without the dropped records (at the
//! collectors' `zstd_level`, a higher level if that does not fit; empty when
//! every record goes, so a file never starts with a skippable frame), its marks
//! without the dropped parts (the others' `first_record` moved down), and a
//! padding frame (`docs/format.md` §3.6) filling the rest. Every other frame is
//! copied unchanged; the index and trailer are written anew (the index without
//! the dropped parts, the trailer with the records left and a CRC-32C of the new
//! bytes), so only the file's end moves. A frame whose replacement cannot fit
//! (recompressing fewer records came out larger than what the marks gave back)
//! keeps its duplicates: they are reported, never guessed around.
//!
//! Memory: reads of [`READ_CHUNK`] plus the largest frame.

use std::collections::BTreeMap;

use bytes::Bytes;
use conduit_core::format::{
    crc32c_append, decode_frame, decode_marks, encode_closing, encode_marks, scan, split_records,
    CloseInfo, FrameEncoder, IndexEntry, Marks, PartMark, Trailer,
};
use conduit_core::{CreateMode, Storage};

use crate::dedup::FileDrops;
use crate::quarantine::Unsealable;
use crate::WorkerError;

/// Bytes read per storage call.
const READ_CHUNK: u64 = 4 << 20;

/// The skippable-frame magic of padding frames (`docs/format.md` §3.6).
pub(crate) const PAD_MAGIC: u32 = 0x184D_2A50;

/// Size of the smallest skippable frame (its header).
const SKIPPABLE_HEADER: usize = 8;

/// zstd levels tried, after the collectors' own, for a frame that does not fit.
const FALLBACK_LEVELS: [i32; 2] = [9, 19];

/// A closed file to rewrite, as the seal inspected it.
#[derive(Debug, Clone)]
pub(crate) struct Source<'a> {
    /// Its path.
    pub(crate) path: &'a str,
    /// Its length.
    pub(crate) len: u64,
    /// Its trailer.
    pub(crate) trailer: Trailer,
    /// What else the trailer says (where the index starts).
    pub(crate) close: CloseInfo,
    /// Its index.
    pub(crate) index: &'a [IndexEntry],
}

/// The rewritten file, staged under the temporary name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rewritten {
    /// Its length.
    pub(crate) bytes: u64,
    /// CRC-32C of the whole file.
    pub(crate) crc32c: u32,
    /// Its trailer.
    pub(crate) trailer: Trailer,
    /// Records dropped.
    pub(crate) dropped: u64,
    /// Records of duplicate parts kept because their frame could not be
    /// replaced in place.
    pub(crate) kept_duplicates: u64,
}

/// What [`rewrite`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The new file is at the temporary path.
    Staged(Rewritten),
    /// The file's frames disagree with its index or do not decode; nothing staged.
    Unsealable(Unsealable),
}

/// A data frame waiting for its marks frame.
struct Held {
    /// Its offset.
    offset: u64,
    /// Its bytes.
    frame: Bytes,
    /// Its records (without newlines), in order.
    content: Vec<u8>,
    /// The ranges `(first, count)` to drop.
    ranges: Vec<(u32, u32)>,
}

/// Writes the file `src` without the records `drops` names to `tmp`; see the
/// [module docs](self). `level` is the collectors' zstd level.
pub(crate) async fn rewrite(
    storage: &dyn Storage,
    src: &Source<'_>,
    tmp: &str,
    drops: &FileDrops,
    level: i32,
) -> Result<Outcome, WorkerError> {
    let data_end = src.len - src.close.trailer_len() - u64::from(src.close.index_len);
    let mut writer = Staged {
        out: storage.create(tmp, CreateMode::Overwrite).await?,
        crc: 0,
        len: 0,
    };
    let mut encoders = Encoders::new(level)?;
    let mut dropped_records = 0u64;
    let mut dropped_bytes = 0u64;
    let mut kept_duplicates = 0u64;
    let mut moved: BTreeMap<u64, Vec<(u32, u32)>> = BTreeMap::new();
    let mut held: Option<Held> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0u64;
    let mut at = 0u64;
    let bad = |offset: u64, reason: String| {
        Ok(Outcome::Unsealable(Unsealable::BadFrame { offset, reason }))
    };
    while at < data_end {
        let end = (at + READ_CHUNK).min(data_end);
        buf.extend_from_slice(&storage.read_range(src.path, at..end).await?);
        at = end;
        let found = scan(&buf, base);
        for frame in &found.frames {
            let bytes = Bytes::copy_from_slice(
                &buf[(frame.offset - base) as usize..(frame.offset - base + frame.len) as usize],
            );
            if let Some(data) = held.take() {
                // The marks frame of a data frame being replaced.
                let Some(Marks::V2(marks)) =
                    frame.skippable.then(|| decode_marks(&bytes)).flatten()
                else {
                    return bad(
                        frame.offset,
                        "a data frame with dropped records has no version 2 marks frame after it"
                            .into(),
                    );
                };
                let region = data.frame.len() + bytes.len();
                match replace(&data, &marks, region, &mut encoders)? {
                    Replaced::Fits {
                        out,
                        records,
                        record_bytes,
                    } => {
                        writer.write(out).await?;
                        dropped_records += records;
                        dropped_bytes += record_bytes;
                        moved.insert(data.offset, data.ranges.clone());
                    }
                    Replaced::Mismatch(reason) => return bad(data.offset, reason),
                    Replaced::TooLarge => {
                        let records: u64 = data.ranges.iter().map(|r| u64::from(r.1)).sum();
                        if let Some(suppressed) =
                            conduit_core::ratelimit::allow("seal_duplicates_kept")
                        {
                            tracing::warn!(path = src.path, offset = data.offset, records,
                                suppressed,
                                "duplicate records kept: their frame does not fit its place recompressed");
                        }
                        kept_duplicates += records;
                        writer.write(data.frame).await?;
                        writer.write(bytes).await?;
                    }
                }
                continue;
            }
            match drops.frames.get(&frame.offset) {
                Some(ranges) if !frame.skippable => match decode_frame(&bytes) {
                    Ok(content) => {
                        held = Some(Held {
                            offset: frame.offset,
                            frame: bytes,
                            content,
                            ranges: ranges.clone(),
                        })
                    }
                    Err(reason) => return bad(frame.offset, reason),
                },
                _ => writer.write(bytes).await?,
            }
        }
        let consumed = (found.valid_len - base) as usize;
        buf.drain(..consumed);
        base = found.valid_len;
    }
    if !buf.is_empty() || held.is_some() {
        return bad(base, "the frames before the index end mid-frame".into());
    }
    let handled: u64 = moved.values().flatten().map(|r| u64::from(r.1)).sum();
    if handled + kept_duplicates != drops.records {
        let missing: Vec<&u64> = drops
            .frames
            .keys()
            .filter(|o| !moved.contains_key(o))
            .collect();
        return bad(
            missing.first().map_or(0, |o| **o),
            format!("the index names data frames the file does not have at {missing:?}"),
        );
    }
    let index: Vec<IndexEntry> = src
        .index
        .iter()
        .filter_map(|e| match moved.get(&e.frame_offset) {
            None => Some(e.clone()),
            Some(ranges) => shifted(&e.mark, ranges).map(|mark| IndexEntry {
                frame_offset: e.frame_offset,
                mark,
            }),
        })
        .collect();
    let trailer = Trailer {
        encoding: src.trailer.encoding,
        records: src.trailer.records - dropped_records,
        record_bytes: src.trailer.record_bytes - dropped_bytes,
    };
    writer
        .write(encode_closing(&trailer, writer.crc, Some(&index)))
        .await?;
    let (bytes, crc32c) = writer.close().await?;
    Ok(Outcome::Staged(Rewritten {
        bytes,
        crc32c,
        trailer,
        dropped: dropped_records,
        kept_duplicates,
    }))
}

/// The staging file with the length and CRC-32C of what was written to it.
struct Staged {
    out: Box<dyn conduit_core::FileWriter>,
    crc: u32,
    len: u64,
}

impl Staged {
    async fn write(&mut self, bytes: Bytes) -> Result<(), WorkerError> {
        self.crc = crc32c_append(self.crc, &bytes);
        self.len += bytes.len() as u64;
        self.out.write(bytes).await?;
        Ok(())
    }

    /// Syncs and closes; returns the length and CRC-32C.
    async fn close(self) -> Result<(u64, u32), WorkerError> {
        self.out.close().await?;
        Ok((self.len, self.crc))
    }
}

/// One frame encoder per zstd level tried, made when first needed.
struct Encoders {
    levels: Vec<i32>,
    made: BTreeMap<i32, FrameEncoder>,
}

impl Encoders {
    fn new(level: i32) -> Result<Encoders, WorkerError> {
        let mut levels = vec![level];
        levels.extend(FALLBACK_LEVELS.iter().filter(|l| **l > level));
        Ok(Encoders {
            levels,
            made: BTreeMap::new(),
        })
    }

    fn frame(&mut self, level: i32, records: &[u8]) -> Result<Bytes, WorkerError> {
        let encoder = match self.made.entry(level) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(
                FrameEncoder::new(level).map_err(|err| WorkerError::Other(err.to_string()))?,
            ),
        };
        encoder
            .frame(records)
            .map_err(|err| WorkerError::Other(err.to_string()))
    }
}

/// What replacing a data frame and its marks gave.
enum Replaced {
    /// The replacement, exactly as long as what it replaces, and what it dropped.
    Fits {
        out: Bytes,
        records: u64,
        record_bytes: u64,
    },
    /// The frame's records or marks do not match the ranges to drop.
    Mismatch(String),
    /// No level gives a replacement that fits.
    TooLarge,
}

/// The replacement of `data` and its `marks` in `region` bytes.
fn replace(
    data: &Held,
    marks: &[PartMark],
    region: usize,
    encoders: &mut Encoders,
) -> Result<Replaced, WorkerError> {
    let records: Vec<&[u8]> = split_records(&data.content).collect();
    let total = records.len() as u64;
    let mut drop = vec![false; records.len()];
    for &(first, count) in &data.ranges {
        let (first, count) = (first as usize, count as usize);
        if first + count > records.len() || drop[first..first + count].iter().any(|d| *d) {
            return Ok(Replaced::Mismatch(format!(
                "records {first}..{} of a frame of {total} records named twice or missing",
                first + count
            )));
        }
        drop[first..first + count]
            .iter_mut()
            .for_each(|d| *d = true);
    }
    let mut kept = Vec::with_capacity(data.content.len());
    let mut record_bytes = 0u64;
    for (record, dropped) in records.iter().zip(&drop) {
        if *dropped {
            record_bytes += record.len() as u64 + 1;
        } else {
            kept.extend_from_slice(record);
            kept.push(b'\n');
        }
    }
    let named: Vec<(u32, u32)> = marks.iter().map(|m| (m.first_record, m.records)).collect();
    if let Some(missing) = data.ranges.iter().find(|r| !named.contains(r)) {
        return Ok(Replaced::Mismatch(format!(
            "records {}..{} are in the index but not in the frame's marks",
            missing.0,
            missing.0 + missing.1
        )));
    }
    let left: Vec<PartMark> = marks
        .iter()
        .filter_map(|m| shifted(m, &data.ranges))
        .collect();
    let new_marks = encode_marks(&left);
    for level in encoders.levels.clone() {
        let frame = encoders.frame(level, &kept)?;
        let used = frame.len() + new_marks.len();
        if used == region || used + SKIPPABLE_HEADER <= region {
            let mut out = Vec::with_capacity(region);
            out.extend_from_slice(&frame);
            out.extend_from_slice(&new_marks);
            if used < region {
                out.extend_from_slice(&padding(region - used));
            }
            return Ok(Replaced::Fits {
                out: Bytes::from(out),
                records: drop.iter().filter(|d| **d).count() as u64,
                record_bytes,
            });
        }
    }
    Ok(Replaced::TooLarge)
}

/// `mark` in a frame that lost the record ranges `dropped`: `None` if it is one of
/// them, else with its first record moved down by the records dropped before it.
fn shifted(mark: &PartMark, dropped: &[(u32, u32)]) -> Option<PartMark> {
    if dropped.contains(&(mark.first_record, mark.records)) {
        return None;
    }
    let before: u32 = dropped
        .iter()
        .filter(|(first, _)| *first < mark.first_record)
        .map(|(_, count)| count)
        .sum();
    let mut mark = mark.clone();
    mark.first_record -= before;
    Some(mark)
}

/// A padding frame of exactly `len` bytes (at least the 8 of its header): a
/// skippable frame of zeros.
pub(crate) fn padding(len: usize) -> Bytes {
    debug_assert!(len >= SKIPPABLE_HEADER);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&PAD_MAGIC.to_le_bytes());
    out.extend_from_slice(&((len - SKIPPABLE_HEADER) as u32).to_le_bytes());
    out.resize(len, 0);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use conduit_core::format::{scan, BatchMark};

    fn mark(first_record: u32, records: u32) -> PartMark {
        PartMark {
            batch: BatchMark {
                publisher: Bytes::from_static(b"p"),
                sequence: i64::from(first_record),
                part: 0,
                parts: 1,
            },
            digest: 7,
            first_record,
            records,
        }
    }

    #[test]
    fn marks_after_dropped_ranges_move_down() {
        let dropped = [(0, 2), (5, 1)];
        assert_eq!(shifted(&mark(0, 2), &dropped), None);
        assert_eq!(shifted(&mark(2, 3), &dropped).unwrap().first_record, 0);
        assert_eq!(shifted(&mark(6, 4), &dropped).unwrap().first_record, 3);
    }

    #[test]
    fn padding_is_one_skippable_frame_of_the_length_asked() {
        for len in [8, 9, 100, 4096] {
            let pad = padding(len);
            assert_eq!(pad.len(), len);
            let found = scan(&pad, 0);
            assert_eq!(found.frames.len(), 1);
            assert!(found.frames[0].skippable);
            assert_eq!(found.valid_len, len as u64);
        }
    }
}
