//! Closed data files and sealed minutes written with the real frame encoder,
//! trailer and manifest code, for readers to read without running a collector and
//! a worker first; [`batch_file`] writes the layout-2 files (marks, index, trailer
//! with checksum) of idempotent publisher batches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use conduit_core::format::{
    batch_digest, crc32c_append, encode_closing, encode_marks, BatchMark, IndexEntry, PartMark,
};
use conduit_core::layout::Layout;
use conduit_core::manifest::crc32c;
use conduit_core::{
    Encoding, FrameEncoder, Manifest, ManifestFile, Minute, SharedStorage, Topic, Trailer, View,
};

use crate::node;

/// A closed data file (`lines` encoding): `records` in `frames` data frames of
/// about equal size, then the trailer.
pub fn data_file<R: AsRef<[u8]>>(records: &[R], frames: usize) -> Vec<u8> {
    let mut enc = FrameEncoder::new(3).expect("a zstd encoder");
    let mut out = Vec::new();
    let per = records.len().div_ceil(frames.max(1)).max(1);
    let mut record_bytes = 0;
    for chunk in records.chunks(per) {
        let mut content = Vec::new();
        for r in chunk {
            content.extend_from_slice(r.as_ref());
            content.push(b'\n');
        }
        record_bytes += content.len() as u64;
        out.extend_from_slice(&enc.frame(&content).expect("encode a frame"));
    }
    out.extend_from_slice(
        &Trailer {
            encoding: Encoding::Lines,
            records: records.len() as u64,
            record_bytes,
        }
        .encode(),
    );
    out
}

/// Writes and seals a merged minute `m` of `topic` on every storage in `roots`
/// (byte identical): `files` files of collectors `c0..` of `dc1`, each with
/// `per_file` records in `frames` frames, payloads `<minute stamp>-c<i>-<n>`.
/// Returns the payloads.
pub async fn sealed_minute(
    roots: &[SharedStorage],
    topic: &str,
    m: Minute,
    files: usize,
    per_file: usize,
    frames: usize,
) -> Vec<String> {
    let topic = Topic::new(topic).unwrap_or_else(|e| panic!("bad topic {topic:?}: {e}"));
    let dir = Manifest::dir(View::Merged, &topic, m);
    let mut entries = Vec::new();
    let mut all = Vec::new();
    let mut contents = Vec::new();
    for i in 0..files {
        let collector = format!("c{i}");
        let records: Vec<String> = (0..per_file)
            .map(|n| format!("{}-{collector}-{n}", m.file_stamp()))
            .collect();
        all.extend(records.iter().cloned());
        let bytes = data_file(&records, frames);
        let name = Layout::local_file_name(&node("dc1"), &node(&collector), m, 0, &topic);
        entries.push(ManifestFile {
            name: name.clone(),
            bytes: bytes.len() as u64,
            records: per_file as u64,
            crc32c: crc32c(&bytes),
            cluster: node("dc1"),
            collector: Some(node(&collector)),
            minute: m,
            late: false,
        });
        contents.push((format!("{dir}/{name}"), Bytes::from(bytes)));
    }
    let manifest = Manifest::new(
        View::Merged,
        topic,
        m,
        vec![node("dc1")],
        vec![],
        m.end(),
        "dc1/test".into(),
        entries,
    );
    for root in roots {
        for (path, bytes) in &contents {
            root.write_atomic(path, bytes.clone())
                .await
                .unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
        manifest
            .seal(&**root)
            .await
            .unwrap_or_else(|e| panic!("seal {dir}: {e}"));
    }
    all
}

/// One publisher batch (a `LogBatch` call to one topic): its records, under
/// publisher id `publisher` and sequence `sequence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The publisher id.
    pub publisher: String,
    /// The batch sequence number.
    pub sequence: i64,
    /// The records (payloads of `lines` records).
    pub records: Vec<String>,
}

impl Batch {
    /// Batch `sequence` of `publisher` with `records`.
    pub fn new(publisher: &str, sequence: i64, records: Vec<String>) -> Batch {
        Batch {
            publisher: publisher.to_owned(),
            sequence,
            records,
        }
    }

    /// Its content digest as a collector computes it for a call to `topic`
    /// (`docs/format.md` §3.3).
    pub fn digest(&self, topic: &str) -> u64 {
        batch_digest(
            self.records
                .iter()
                .map(|r| (topic.as_bytes(), r.as_bytes())),
        )
    }
}

/// A closed layout-2 data file of `topic` as a collector writes it: one data
/// frame per element of `frames` holding the records of its batches in order,
/// each followed by its marks frame (each batch a single-part call), then the
/// index and a version 2 trailer with its checksum.
pub fn batch_file(topic: &str, frames: &[Vec<Batch>]) -> Vec<u8> {
    let mut encoder = FrameEncoder::new(1).expect("a zstd encoder");
    let mut out = Vec::new();
    let mut index = Vec::new();
    let mut records = 0u64;
    let mut record_bytes = 0u64;
    for batches in frames {
        let mut content = Vec::new();
        let mut marks = Vec::new();
        let mut first = 0u32;
        for batch in batches {
            for r in &batch.records {
                content.extend_from_slice(r.as_bytes());
                content.push(b'\n');
            }
            let count = batch.records.len() as u32;
            marks.push(PartMark {
                batch: BatchMark {
                    publisher: Bytes::from(batch.publisher.clone()),
                    sequence: batch.sequence,
                    part: 0,
                    parts: 1,
                },
                digest: batch.digest(topic),
                first_record: first,
                records: count,
            });
            first += count;
        }
        records += u64::from(first);
        record_bytes += content.len() as u64;
        let offset = out.len() as u64;
        out.extend_from_slice(&encoder.frame(&content).expect("encode a frame"));
        out.extend_from_slice(&encode_marks(&marks));
        index.extend(marks.into_iter().map(|mark| IndexEntry {
            frame_offset: offset,
            mark,
        }));
    }
    let trailer = Trailer {
        encoding: Encoding::Lines,
        records,
        record_bytes,
    };
    let crc = crc32c_append(0, &out);
    out.extend_from_slice(&encode_closing(&trailer, crc, Some(&index)));
    out
}

/// Every sealed minute directory of `topic` in the local view under the local
/// directory `root`, with its manifest and the marker's raw bytes.
pub fn sealed_dirs(root: &Path, topic: &str) -> BTreeMap<PathBuf, (Manifest, Vec<u8>)> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                if depth == 4 {
                    out.push(e.path());
                } else {
                    walk(&e.path(), depth + 1, out);
                }
            }
        }
    }
    let mut dirs = Vec::new();
    walk(&root.join(View::Local.dir_name()).join(topic), 0, &mut dirs);
    let mut out = BTreeMap::new();
    for dir in dirs {
        let marker = dir.join(Layout::SUCCESS_MARKER);
        if let Ok(bytes) = std::fs::read(&marker) {
            let m = Manifest::parse(marker.to_str().unwrap(), &bytes).unwrap();
            out.insert(dir, (m, bytes));
        }
    }
    out
}
