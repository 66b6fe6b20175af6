//! Open data files: one per topic, in storage or in the local spool.
//!
//! An [`OpenFile`] appends units of a data frame and its marks to
//! `data/<topic>/<collector>/<name>.zst` (or the same relative path under the spool
//! directory), keeps what its close needs (record counts, the CRC-32C of its bytes,
//! the index of its batches: `docs/format.md` §3.2, §3.5), and remembers
//! `acked_len`, the length after its last successful sync:
//! everything up to there was acknowledged, nothing after it was. If the writer
//! fails, the file is abandoned and later cut back to `acked_len` and closed, so
//! bytes of a failed commit never reappear next to their spooled copy.

use std::sync::Arc;

use bytes::Bytes;
use conduit_core::format::{crc32c_append, encode_closing, Encoding, IndexEntry, Trailer};
use conduit_core::{FileWriter, Minute, Topic};

use crate::engine::Chunk;
use crate::open::OpenFiles;

/// Where an open file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The cluster's storage.
    Storage,
    /// The collector's local spool (storage unavailable).
    Spool,
}

/// A data file being written.
#[derive(Debug)]
pub struct OpenFile {
    /// Path relative to the storage or spool root.
    pub path: String,
    /// Storage or spool.
    pub target: Target,
    /// Topic of every record in the file.
    pub topic: Topic,
    /// Arrival minute of every record in the file.
    pub minute: Minute,
    /// Sequence number in the file name.
    pub seq: u32,
    /// Record encoding.
    pub encoding: Encoding,
    /// The writer.
    pub writer: Box<dyn FileWriter>,
    /// Records written so far.
    pub records: u64,
    /// Decompressed bytes of those records.
    pub record_bytes: u64,
    /// Length after the last successful sync (acknowledged bytes).
    pub acked_len: u64,
    /// Records and record bytes as of `acked_len`.
    pub acked_counts: (u64, u64),
    /// Whether anything was written since the last sync.
    pub dirty: bool,
    /// Where synced frames are published for the open-file endpoint (files in
    /// storage only), and the frames written since the last sync.
    pub served: Option<Arc<OpenFiles>>,
    /// Frames appended since the last sync (published once it succeeds).
    pub unsynced: Vec<Bytes>,
    /// CRC-32C of every byte written (the close trailer's checksum).
    pub crc32c: u32,
    /// Every batch part written, with its data frame's offset (the close index).
    pub index: Vec<IndexEntry>,
    /// The commit round that last wrote to it: the least recently written idle
    /// file is the first closed at `max_open_files`.
    pub last_round: u64,
}

impl OpenFile {
    /// Appends a data frame and its marks frame. Not durable until
    /// [`OpenFile::sync`].
    pub async fn append(&mut self, chunk: &Chunk) -> conduit_core::StorageResult<()> {
        let frame_offset = self.writer.position();
        for bytes in [&chunk.frame, &chunk.marks_frame] {
            if self.served.is_some() {
                self.unsynced.push(bytes.clone());
            }
            self.crc32c = crc32c_append(self.crc32c, bytes);
            self.writer.write(bytes.clone()).await?;
        }
        self.index.extend(chunk.marks.iter().map(|mark| IndexEntry {
            frame_offset,
            mark: mark.clone(),
        }));
        self.records += chunk.count;
        self.record_bytes += chunk.record_bytes;
        self.dirty = true;
        Ok(())
    }

    /// Makes everything appended durable and advances `acked_len`.
    pub async fn sync(&mut self) -> conduit_core::StorageResult<()> {
        self.sync_writer().await?;
        self.synced();
        Ok(())
    }

    /// Syncs the writer if anything was appended, without the bookkeeping of
    /// [`OpenFile::synced`]: a commit round's write runs in a task of its own and
    /// only counts once the committer takes the file back in time.
    pub async fn sync_writer(&mut self) -> conduit_core::StorageResult<()> {
        if self.dirty {
            self.writer.sync().await?;
        }
        Ok(())
    }

    /// After a successful [`OpenFile::sync_writer`]: everything written is
    /// acknowledged, and served by the open-file endpoint.
    pub fn synced(&mut self) {
        self.dirty = false;
        self.acked_len = self.writer.position();
        self.acked_counts = (self.records, self.record_bytes);
        if let Some(served) = &self.served {
            let frames = std::mem::take(&mut self.unsynced);
            served.synced(self.topic.as_str(), self.name(), frames, self.acked_len);
        }
    }

    /// The trailer for what has been acknowledged.
    pub fn trailer(&self) -> Trailer {
        Trailer {
            encoding: self.encoding,
            records: self.acked_counts.0,
            record_bytes: self.acked_counts.1,
        }
    }

    /// Writes the index and the trailer and closes the file; its final length.
    /// Only call after a successful sync (so everything written is acknowledged).
    pub async fn close(mut self) -> conduit_core::StorageResult<u64> {
        let closing = encode_closing(&self.trailer(), self.crc32c, Some(&self.index));
        self.writer.write(closing).await?;
        let len = self.writer.position();
        self.writer.close().await?;
        Ok(len)
    }

    /// The file name (last path component).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// Current length including unsynced bytes.
    pub fn written_len(&self) -> u64 {
        self.writer.position()
    }
}

/// A storage file whose writer failed: to be cut back to `acked_len` and closed
/// once storage is reachable again (deleted if nothing of it was acknowledged).
#[derive(Debug, Clone)]
pub struct Abandoned {
    /// Path relative to the storage root.
    pub path: String,
    /// Its minute (holds back the watermark until it is closed).
    pub minute: Minute,
    /// Record encoding.
    pub encoding: Encoding,
    /// Acknowledged length.
    pub acked_len: u64,
}
