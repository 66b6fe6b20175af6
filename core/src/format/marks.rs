//! Batch metadata in data files: marks frames, the file index and the batch digest.
//!
//! Specified in `docs/format.md` §3.3 (marks) and §3.5 (index). Both are zstd
//! skippable frames, so record readers never see them.
//!
//! ```text
//! marks v1 := 0x184D2A5D u32le:size "CONDUIT-BATCH" u8:1 u32le:count
//!             { u16le:id_len id i64le:sequence u16le:part u16le:parts }*
//!             written BEFORE the data frame it describes (old collectors)
//! marks v2 := 0x184D2A5D u32le:size "CONDUIT-BATCH" u8:2 u32le:count
//!             { u16le:id_len id i64le:sequence u16le:part u16le:parts
//!               u64le:digest u32le:first_record u32le:records }*
//!             written AFTER EVERY data frame (count may be 0), naming the batches
//!             whose records that frame holds
//! index    := 0x184D2A5E u32le:size "CONDUIT-INDEX" u8:1 u32le:count
//!             { u64le:frame_offset <v2 entry> }*
//!             written once, just before the trailer, when a file is closed
//! ```
//!
//! The digest ([`batch_digest`]) is xxh3-64 (seed 0) over the whole `LogBatch`
//! call's entries, each as `u32le:category_len category u32le:message_len
//! message`, in order: a replayed batch has the same digest, a different batch
//! under the same publisher id and sequence almost surely has not.

use bytes::Bytes;

/// The skippable-frame magic number of batch marks (idempotent publisher batches).
pub const MARK_MAGIC: u32 = 0x184D_2A5D;
/// First bytes of a batch-mark frame's content.
pub const MARK_TAG: &[u8; 13] = b"CONDUIT-BATCH";
/// The skippable-frame magic number of the file index written at close.
pub const INDEX_MAGIC: u32 = 0x184D_2A5E;
/// First bytes of an index frame's content.
pub const INDEX_TAG: &[u8; 13] = b"CONDUIT-INDEX";
/// Bytes of a marks or index frame before its entries: magic, size, tag, version,
/// count.
const HEADER_LEN: usize = 8 + 13 + 1 + 4;
/// Longest publisher id a mark can hold (`id_len` is a u16).
pub const MAX_ID_LEN: usize = u16::MAX as usize;

/// One publisher batch (or the part of it for one topic): the identity a marks
/// frame of either version records.
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

/// A version 2 mark: a batch part, the digest of its whole call, and where its
/// records are in the data frame it describes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartMark {
    /// Which batch part.
    pub batch: BatchMark,
    /// [`batch_digest`] of the whole call (every part of it has the same).
    pub digest: u64,
    /// Index of the part's first record within its data frame.
    pub first_record: u32,
    /// Number of the part's records (consecutive from `first_record`).
    pub records: u32,
}

/// The entries of one marks frame, by version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marks {
    /// Version 1: identities only; the frame precedes its data frame.
    V1(Vec<BatchMark>),
    /// Version 2: with digests and record ranges; the frame follows its data frame.
    V2(Vec<PartMark>),
}

/// A batch part found in a file, with the offset of the data frame holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBatch {
    /// Offset of the data frame that holds the part's records.
    pub frame_offset: u64,
    /// What the file's marks say about it.
    pub mark: FoundMark,
}

/// A mark as found in a file: version 1 marks carry no digest or record range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundMark {
    /// From a version 1 marks frame.
    V1(BatchMark),
    /// From a version 2 marks frame.
    V2(PartMark),
}

impl FoundMark {
    /// The batch part.
    pub fn batch(&self) -> &BatchMark {
        match self {
            FoundMark::V1(batch) => batch,
            FoundMark::V2(mark) => &mark.batch,
        }
    }

    /// The call's digest (version 2 marks only).
    pub fn digest(&self) -> Option<u64> {
        match self {
            FoundMark::V1(_) => None,
            FoundMark::V2(mark) => Some(mark.digest),
        }
    }
}

/// One entry of a file index: a version 2 mark and its data frame's offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// Offset of the data frame that holds the part's records.
    pub frame_offset: u64,
    /// The mark.
    pub mark: PartMark,
}

/// The index entries of a file's batches, if every mark among them is a version 2
/// mark (no batches: an empty index); `None` when some are version 1 marks, which
/// have no digest or record range for an index to hold.
pub fn index_of(batches: &[FileBatch]) -> Option<Vec<IndexEntry>> {
    batches
        .iter()
        .map(|b| match &b.mark {
            FoundMark::V2(mark) => Some(IndexEntry {
                frame_offset: b.frame_offset,
                mark: mark.clone(),
            }),
            FoundMark::V1(_) => None,
        })
        .collect()
}

/// The digest of a `LogBatch` call's entries, `(category, message)` in call order
/// (`docs/format.md` §3.3): xxh3-64 with seed 0 over `u32le(len(category))
/// category u32le(len(message)) message` of every entry.
pub fn batch_digest<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (category, message) in entries {
        // Thrift strings are shorter than 2^31 bytes, so the length fits.
        hasher.update(&(category.len() as u32).to_le_bytes());
        hasher.update(category);
        hasher.update(&(message.len() as u32).to_le_bytes());
        hasher.update(message);
    }
    hasher.digest()
}

/// Starts a marks or index frame: magic, a size to patch, tag, version, count.
fn begin(magic: u32, tag: &[u8; 13], version: u8, count: usize, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + capacity);
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(tag);
    out.push(version);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out
}

/// Patches the frame size (bytes after the 8-byte skippable header).
fn finish(mut out: Vec<u8>) -> Bytes {
    let size = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    Bytes::from(out)
}

fn put_batch(out: &mut Vec<u8>, batch: &BatchMark) {
    let id = &batch.publisher[..batch.publisher.len().min(MAX_ID_LEN)];
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&batch.sequence.to_le_bytes());
    out.extend_from_slice(&batch.part.to_le_bytes());
    out.extend_from_slice(&batch.parts.to_le_bytes());
}

fn put_part(out: &mut Vec<u8>, mark: &PartMark) {
    put_batch(out, &mark.batch);
    out.extend_from_slice(&mark.digest.to_le_bytes());
    out.extend_from_slice(&mark.first_record.to_le_bytes());
    out.extend_from_slice(&mark.records.to_le_bytes());
}

/// Encodes version 2 marks (written after the data frame they describe) as one
/// skippable frame; `marks` may be empty.
pub fn encode_marks(marks: &[PartMark]) -> Bytes {
    let capacity = marks.iter().map(|m| 32 + m.batch.publisher.len()).sum();
    let mut out = begin(MARK_MAGIC, MARK_TAG, 2, marks.len(), capacity);
    for mark in marks {
        put_part(&mut out, mark);
    }
    finish(out)
}

/// Encodes version 1 marks (the layout of older collectors, written before the
/// data frame they describe): for tests and tools that must produce old files.
pub fn encode_marks_v1(marks: &[BatchMark]) -> Bytes {
    let capacity = marks.iter().map(|m| 14 + m.publisher.len()).sum();
    let mut out = begin(MARK_MAGIC, MARK_TAG, 1, marks.len(), capacity);
    for mark in marks {
        put_batch(&mut out, mark);
    }
    finish(out)
}

/// Encodes a file index as one skippable frame; `entries` may be empty (the file
/// holds no batch).
pub fn encode_index(entries: &[IndexEntry]) -> Bytes {
    let capacity = entries
        .iter()
        .map(|e| 40 + e.mark.batch.publisher.len())
        .sum();
    let mut out = begin(INDEX_MAGIC, INDEX_TAG, 1, entries.len(), capacity);
    for entry in entries {
        out.extend_from_slice(&entry.frame_offset.to_le_bytes());
        put_part(&mut out, &entry.mark);
    }
    finish(out)
}

/// Reads fields off a frame body, `None` once it runs out.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.body.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn batch(&mut self) -> Option<BatchMark> {
        let id_len = self.u16()? as usize;
        let id = self.take(id_len)?;
        let sequence = i64::from_le_bytes(self.array()?);
        let part = self.u16()?;
        let parts = self.u16()?;
        Some(BatchMark {
            publisher: Bytes::copy_from_slice(id),
            sequence,
            part,
            parts,
        })
    }

    fn part(&mut self) -> Option<PartMark> {
        let batch = self.batch()?;
        Some(PartMark {
            batch,
            digest: self.u64()?,
            first_record: self.u32()?,
            records: self.u32()?,
        })
    }
}

/// The version and entries of a marks or index frame with this magic and tag:
/// `None` if it is not one, or if its size field disagrees with its length.
fn open<'a>(frame: &'a [u8], magic: u32, tag: &[u8; 13]) -> Option<(u8, usize, Reader<'a>)> {
    if frame.len() < HEADER_LEN
        || frame[..4] != magic.to_le_bytes()
        || u32::from_le_bytes(frame[4..8].try_into().ok()?) as usize != frame.len() - 8
        || &frame[8..21] != tag
    {
        return None;
    }
    let version = frame[21];
    let count = u32::from_le_bytes(frame[22..26].try_into().ok()?) as usize;
    Some((
        version,
        count,
        Reader {
            body: frame,
            at: HEADER_LEN,
        },
    ))
}

/// Decodes a marks frame of either version; `None` if it is not one (another
/// skippable frame, an unknown version, or malformed).
pub fn decode_marks(frame: &[u8]) -> Option<Marks> {
    let (version, count, mut reader) = open(frame, MARK_MAGIC, MARK_TAG)?;
    // Each entry takes at least 14 bytes: never reserve more than the frame holds.
    let room = frame.len() / 14;
    let marks = match version {
        1 => {
            let mut marks = Vec::with_capacity(count.min(room));
            for _ in 0..count {
                marks.push(reader.batch()?);
            }
            Marks::V1(marks)
        }
        2 => {
            let mut marks = Vec::with_capacity(count.min(room));
            for _ in 0..count {
                marks.push(reader.part()?);
            }
            Marks::V2(marks)
        }
        _ => return None,
    };
    (reader.at == frame.len()).then_some(marks)
}

/// The version of the marks frame that `bytes` starts with, if they hold at least
/// its header (used on a torn tail, where the frame itself is incomplete).
pub(super) fn marks_version_of_prefix(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= 22 && bytes[..4] == MARK_MAGIC.to_le_bytes() && &bytes[8..21] == MARK_TAG)
        .then(|| bytes[21])
}

/// Decodes an index frame; `None` if it is not one (or malformed).
pub fn decode_index(frame: &[u8]) -> Option<Vec<IndexEntry>> {
    let (version, count, mut reader) = open(frame, INDEX_MAGIC, INDEX_TAG)?;
    if version != 1 {
        return None;
    }
    let mut entries = Vec::with_capacity(count.min(frame.len() / 40));
    for _ in 0..count {
        let frame_offset = reader.u64()?;
        entries.push(IndexEntry {
            frame_offset,
            mark: reader.part()?,
        });
    }
    (reader.at == frame.len()).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(id: &'static [u8], sequence: i64, part: u16, parts: u16) -> BatchMark {
        BatchMark {
            publisher: Bytes::from_static(id),
            sequence,
            part,
            parts,
        }
    }

    fn part_strategy() -> impl Strategy<Value = PartMark> {
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<i64>(),
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(id, sequence, part, parts, digest, first_record, records)| PartMark {
                    batch: BatchMark {
                        publisher: Bytes::from(id),
                        sequence,
                        part,
                        parts,
                    },
                    digest,
                    first_record,
                    records,
                },
            )
    }

    proptest! {
        #[test]
        fn v2_marks_and_index_round_trip(
            marks in proptest::collection::vec(part_strategy(), 0..8),
            offsets in proptest::collection::vec(any::<u64>(), 8),
        ) {
            let frame = encode_marks(&marks);
            prop_assert_eq!(decode_marks(&frame), Some(Marks::V2(marks.clone())));
            // A stock decoder sees a skippable frame of the declared size.
            prop_assert_eq!(
                zstd::zstd_safe::find_frame_compressed_size(&frame).ok(),
                Some(frame.len())
            );
            let entries: Vec<IndexEntry> = marks
                .iter()
                .zip(&offsets)
                .map(|(mark, &frame_offset)| IndexEntry { frame_offset, mark: mark.clone() })
                .collect();
            let index = encode_index(&entries);
            prop_assert_eq!(decode_index(&index), Some(entries));
            prop_assert_eq!(decode_marks(&index), None, "an index is not marks");
            prop_assert_eq!(decode_index(&frame), None, "marks are not an index");
        }

        #[test]
        fn v1_marks_round_trip(ids in proptest::collection::vec((any::<i64>(), any::<u16>()), 0..8)) {
            let marks: Vec<BatchMark> = ids
                .iter()
                .map(|&(sequence, part)| batch(b"pub-1", sequence, part, part.saturating_add(1)))
                .collect();
            prop_assert_eq!(decode_marks(&encode_marks_v1(&marks)), Some(Marks::V1(marks)));
        }

        #[test]
        fn any_cut_or_flipped_frame_never_panics(
            marks in proptest::collection::vec(part_strategy(), 0..4),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let frame = encode_marks(&marks).to_vec();
            let cut = cut.index(frame.len());
            // A prefix is never taken for a whole frame (the size field disagrees).
            prop_assert_eq!(decode_marks(&frame[..cut]), None);
            let mut flipped = frame.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 0x5a;
            let _ = decode_marks(&flipped);
            let _ = decode_index(&flipped);
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let good = encode_marks(&[PartMark {
            batch: batch(b"p", 1, 0, 1),
            digest: 7,
            first_record: 0,
            records: 3,
        }])
        .to_vec();
        assert!(decode_marks(&good).is_some());
        let mut unknown_version = good.clone();
        unknown_version[21] = 3;
        assert_eq!(decode_marks(&unknown_version), None);
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(decode_marks(&extra), None, "size field disagrees");
        let n = extra.len() as u32 - 8;
        extra[4..8].copy_from_slice(&n.to_le_bytes());
        assert_eq!(
            decode_marks(&extra),
            None,
            "trailing bytes after the entries"
        );
        let mut huge_count = encode_marks(&[]).to_vec();
        huge_count[22..26].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_marks(&huge_count), None);
        assert_eq!(decode_marks(b"short"), None);
    }

    #[test]
    fn an_empty_marks_frame_is_26_bytes() {
        let empty = encode_marks(&[]);
        assert_eq!(empty.len(), 26);
        assert_eq!(decode_marks(&empty), Some(Marks::V2(vec![])));
        assert_eq!(marks_version_of_prefix(&empty[..22]), Some(2));
        assert_eq!(marks_version_of_prefix(&empty[..21]), None);
    }

    /// The digest is part of the on-disk format: it must never change.
    #[test]
    fn batch_digest_is_stable_and_sees_entry_boundaries() {
        let entries: [(&[u8], &[u8]); 2] = [(b"clicks", b"hello"), (b"views", b"")];
        let spelled_out = b"\x06\0\0\0clicks\x05\0\0\0hello\x05\0\0\0views\0\0\0\0";
        assert_eq!(
            batch_digest(entries),
            xxhash_rust::xxh3::xxh3_64(spelled_out)
        );
        assert_eq!(batch_digest(entries), 15_591_223_486_855_030_465);
        assert_eq!(batch_digest([]), xxhash_rust::xxh3::xxh3_64(b""));
        // Moving bytes between category and message, or between entries, changes it.
        let a: [(&[u8], &[u8]); 1] = [(b"ab", b"c")];
        let b: [(&[u8], &[u8]); 1] = [(b"a", b"bc")];
        assert_ne!(batch_digest(a), batch_digest(b));
        let one: [(&[u8], &[u8]); 1] = [(b"t", b"xy")];
        let two: [(&[u8], &[u8]); 2] = [(b"t", b"x"), (b"t", b"y")];
        assert_ne!(batch_digest(one), batch_digest(two));
    }
}
