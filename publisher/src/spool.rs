//! The optional local disk spool: batches that no collector could take, kept on
//! disk until one can, across publisher restarts.
//!
//! # Layout and format
//! A spool directory holds a `LOCK` file (locked exclusively by the one publisher
//! using the directory) and append-only segment files `<20-digit index>.spool` of
//! checksummed records, one per batch exactly as it was (or will be) sent with
//! `LogBatch`. The layout, the segment format and when segments start and go are
//! specified in `docs/format.md` §10.
//!
//! # Invariants
//! Those of `docs/format.md` §10: a record counts as spooled only once its segment
//! is fsynced; records are replayed and acknowledged in the order they were
//! appended (the publisher keeps them first in its send queue); on open a segment
//! is cut at its first incomplete, corrupt or unparsable record, and the cut is
//! reported ([`Recovered::cut_bytes`]); the spool holds at most `max_bytes` of
//! segment files, except that a single larger record is accepted into an empty
//! spool.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use conduit_core::manifest::crc32c;
use conduit_core::Topic;

/// First bytes of every segment file.
const MAGIC: &[u8; 8] = b"CNDSPL01";
/// Largest record body accepted when reading (a sanity bound).
const MAX_RECORD: usize = 1 << 30;

/// One batch read back from the spool.
#[derive(Debug)]
pub(crate) struct Record {
    pub publisher: Bytes,
    pub seq: i64,
    pub entries: Vec<(Bytes, Bytes)>,
    pub minutes: Vec<i64>,
}

/// Where a record is and what it holds.
#[derive(Debug, Clone, Copy)]
struct Meta {
    segment: u64,
    offset: u64,
    /// Header plus body.
    len: u64,
    events: u64,
    /// Events that are not `_audit` records.
    user_events: u64,
}

/// What [`Spool::open`] found.
#[derive(Debug, Default, Clone)]
pub(crate) struct Recovered {
    pub records: u64,
    pub events: u64,
    /// Bytes cut off damaged or torn segment tails.
    pub cut_bytes: u64,
    /// Highest sequence found per publisher id (to continue a fixed id's sequence).
    pub max_seq: Vec<(Bytes, i64)>,
}

/// The spool directory of one publisher.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Held for the spool's lifetime: the exclusive lock on `LOCK`.
    _lock: File,
    /// Unacknowledged records in order.
    records: VecDeque<Meta>,
    /// The first `loaded` records are in the publisher's memory.
    loaded: usize,
    /// Segment files (index, size) in order.
    segments: VecDeque<(u64, u64)>,
    /// The segment being appended to (never one from before a restart).
    writer: Option<(u64, File)>,
    /// A read handle on a segment.
    reader: Option<(u64, File)>,
    bytes: u64,
    events: u64,
    next_segment: u64,
}

fn segment_name(index: u64) -> String {
    format!("{index:020}.spool")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".spool")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends one record for a batch to `out`.
pub(crate) fn encode_record(
    publisher: &[u8],
    seq: i64,
    entries: &[(Bytes, Bytes)],
    minutes: &[i64],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.push(publisher.len().min(255) as u8);
    out.extend_from_slice(&publisher[..publisher.len().min(255)]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for ((topic, payload), minute) in entries.iter().zip(minutes) {
        out.push(topic.len() as u8);
        out.extend_from_slice(topic);
        out.extend_from_slice(&minute.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
    let body_len = (out.len() - start - 8) as u32;
    let crc = crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Parses a record body (already checksummed).
fn decode_body(body: Bytes) -> Option<Record> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<Bytes> {
        let end = at.checked_add(n)?;
        if end > body.len() {
            return None;
        }
        let out = body.slice(*at..end);
        *at = end;
        Some(out)
    };
    let id_len = take(&mut at, 1)?[0] as usize;
    let publisher = take(&mut at, id_len)?;
    let seq = i64::from_le_bytes(take(&mut at, 8)?.as_ref().try_into().ok()?);
    let count = u32::from_le_bytes(take(&mut at, 4)?.as_ref().try_into().ok()?) as usize;
    // Each entry takes at least 13 bytes: bound the allocation by the body.
    if count > body.len() / 13 + 1 {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    let mut minutes = Vec::with_capacity(count);
    for _ in 0..count {
        let topic_len = take(&mut at, 1)?[0] as usize;
        let topic = take(&mut at, topic_len)?;
        let minute = i64::from_le_bytes(take(&mut at, 8)?.as_ref().try_into().ok()?);
        let len = u32::from_le_bytes(take(&mut at, 4)?.as_ref().try_into().ok()?) as usize;
        let payload = take(&mut at, len)?;
        entries.push((topic, payload));
        minutes.push(minute);
    }
    if at != body.len() {
        return None;
    }
    Some(Record {
        publisher,
        seq,
        entries,
        minutes,
    })
}

fn user_events(record: &Record) -> u64 {
    record
        .entries
        .iter()
        .filter(|(t, _)| t.as_ref() != Topic::AUDIT.as_bytes())
        .count() as u64
}

/// Reads the record at the reader's position; `Ok(None)` when it is missing,
/// incomplete, fails its checksum or does not parse.
fn read_record(file: &mut impl Read, remaining: u64) -> io::Result<Option<(u64, Record)>> {
    if remaining < 8 {
        return Ok(None);
    }
    let mut header = [0u8; 8];
    file.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD || (len as u64) > remaining - 8 {
        return Ok(None);
    }
    let mut body = vec![0u8; len];
    file.read_exact(&mut body)?;
    if crc32c(&body) != crc {
        return Ok(None);
    }
    Ok(decode_body(Bytes::from(body)).map(|r| (8 + len as u64, r)))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating) a spool directory: locks it, checks every segment, cuts
    /// torn or damaged tails, and indexes the records left to replay.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> io::Result<(Spool, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the spool directory is in use by another publisher",
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut indexes = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(index) = entry.file_name().to_str().and_then(parse_segment_name) {
                indexes.push(index);
            }
        }
        indexes.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(16 << 10, 64 << 20),
            _lock: lock,
            records: VecDeque::new(),
            loaded: 0,
            segments: VecDeque::new(),
            writer: None,
            reader: None,
            bytes: 0,
            events: 0,
            next_segment: indexes.last().map_or(1, |i| i + 1),
        };
        let mut recovered = Recovered::default();
        for index in indexes {
            spool.recover_segment(index, &mut recovered)?;
        }
        recovered.records = spool.records.len() as u64;
        recovered.events = spool.events;
        Ok((spool, recovered))
    }

    fn recover_segment(&mut self, index: u64, recovered: &mut Recovered) -> io::Result<()> {
        let path = self.dir.join(segment_name(index));
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        let mut magic = [0u8; 8];
        if size < 8 || {
            file.read_exact(&mut magic)?;
            &magic != MAGIC
        } {
            tracing::warn!(path = %path.display(), size, "spool segment without a valid header; removing it");
            recovered.cut_bytes += size;
            drop(file);
            std::fs::remove_file(&path)?;
            return Ok(());
        }
        let mut reader = io::BufReader::new(&mut file);
        let mut offset = 8u64;
        let mut metas = Vec::new();
        while offset < size {
            match read_record(&mut reader, size - offset)? {
                Some((len, record)) => {
                    let events = record.entries.len() as u64;
                    metas.push(Meta {
                        segment: index,
                        offset,
                        len,
                        events,
                        user_events: user_events(&record),
                    });
                    match recovered
                        .max_seq
                        .iter_mut()
                        .find(|(p, _)| *p == record.publisher)
                    {
                        Some((_, s)) => *s = (*s).max(record.seq),
                        None => recovered.max_seq.push((record.publisher, record.seq)),
                    }
                    offset += len;
                }
                None => break,
            }
        }
        drop(reader);
        if offset < size {
            tracing::warn!(
                path = %path.display(),
                kept_bytes = offset,
                cut_bytes = size - offset,
                "spool segment has a torn or damaged record; cutting it there"
            );
            recovered.cut_bytes += size - offset;
            file.set_len(offset)?;
            file.sync_all()?;
        }
        if metas.is_empty() {
            drop(file);
            std::fs::remove_file(&path)?;
            return Ok(());
        }
        for meta in metas {
            self.events += meta.events;
            self.records.push_back(meta);
        }
        self.segments.push_back((index, offset));
        self.bytes += offset;
        Ok(())
    }

    /// No record is waiting for an acknowledgement.
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Some records are on disk only (not loaded into memory).
    pub(crate) fn has_unloaded(&self) -> bool {
        self.loaded < self.records.len()
    }

    /// Bytes of segment files.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Events in unacknowledged records.
    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    fn new_segment(&mut self) -> io::Result<()> {
        let index = self.next_segment;
        let path = self.dir.join(segment_name(index));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.next_segment += 1;
        self.segments.push_back((index, MAGIC.len() as u64));
        self.bytes += MAGIC.len() as u64;
        self.writer = Some((index, file));
        Ok(())
    }

    /// Appends encoded records (each made by [`encode_record`], with its event and
    /// user-event counts) and fsyncs; they count as spooled only when this returns
    /// `Ok`. They start out not loaded (see [`Spool::mark_loaded`]).
    pub(crate) fn append(&mut self, records: &[(Vec<u8>, u64, u64)]) -> io::Result<()> {
        let result = self.append_inner(records);
        if result.is_err() {
            // Never append after a failed write: a partial record there would hide
            // everything after it at recovery. The partial tail is cut at open.
            self.writer = None;
        }
        result
    }

    /// Counts the next `n` records as in memory (the caller kept those batches).
    pub(crate) fn mark_loaded(&mut self, n: usize) {
        assert!(
            self.loaded + n <= self.records.len(),
            "more loaded than spooled"
        );
        self.loaded += n;
    }

    /// Whether `len` more bytes fit after `planned` bytes about to be appended
    /// (anything fits an empty spool).
    pub(crate) fn fits_after(&self, planned: u64, len: u64) -> bool {
        (self.records.is_empty() && planned == 0) || self.bytes + planned + len <= self.max_bytes
    }

    fn append_inner(&mut self, records: &[(Vec<u8>, u64, u64)]) -> io::Result<()> {
        let mut metas = Vec::with_capacity(records.len());
        let mut outcome = Ok(());
        for (record, events, user) in records {
            let rotate = match &self.writer {
                None => true,
                Some((index, _)) => {
                    let size = self.segments.back().map_or(0, |s| s.1);
                    self.segments.back().map(|s| s.0) != Some(*index) || size >= self.segment_bytes
                }
            };
            if rotate {
                if let Some((_, file)) = &self.writer {
                    if let Err(e) = file.sync_data() {
                        outcome = Err(e);
                        break;
                    }
                }
                if let Err(e) = self.new_segment() {
                    outcome = Err(e);
                    break;
                }
            }
            let (index, file) = self.writer.as_mut().expect("just ensured");
            let offset = self.segments.back().expect("writer segment").1;
            if let Err(e) = file.write_all(record) {
                outcome = Err(e);
                break;
            }
            let len = record.len() as u64;
            self.segments.back_mut().expect("writer segment").1 += len;
            self.bytes += len;
            metas.push(Meta {
                segment: *index,
                offset,
                len,
                events: *events,
                user_events: *user,
            });
        }
        if outcome.is_ok() {
            if let Some((_, file)) = &self.writer {
                outcome = file.sync_data();
            }
        }
        // On error the bytes written stay in the files (cut at the next open) and
        // in the size accounting, but no record counts.
        outcome?;
        for meta in metas {
            self.events += meta.events;
            self.records.push_back(meta);
        }
        Ok(())
    }

    /// Reads the next record not yet in memory and counts it as loaded. A record
    /// that no longer reads back intact is returned as `Err` with its event count
    /// (it is skipped: the caller reports those events as failed).
    pub(crate) fn load_next(&mut self) -> io::Result<Result<Record, u64>> {
        let meta = self.records[self.loaded];
        if self.reader.as_ref().map(|r| r.0) != Some(meta.segment) {
            let file = File::open(self.dir.join(segment_name(meta.segment)))?;
            self.reader = Some((meta.segment, file));
        }
        let (_, file) = self.reader.as_mut().expect("just opened");
        file.seek(SeekFrom::Start(meta.offset))?;
        let got = read_record(file, meta.len)?;
        self.loaded += 1;
        match got {
            Some((len, record)) if len == meta.len => Ok(Ok(record)),
            _ => {
                tracing::error!(
                    segment = meta.segment,
                    offset = meta.offset,
                    events = meta.events,
                    "spool record no longer reads back intact; its events are lost"
                );
                Ok(Err(meta.events))
            }
        }
    }

    /// The oldest record was acknowledged (or skipped): forget it and delete the
    /// segments no record needs any more. Returns its (events, user events).
    pub(crate) fn ack_front(&mut self) -> io::Result<(u64, u64)> {
        let meta = self.records.pop_front().expect("a record to acknowledge");
        self.loaded = self.loaded.saturating_sub(1);
        self.events -= meta.events;
        while let Some(&(index, size)) = self.segments.front() {
            let needed = self.records.front().is_some_and(|r| r.segment <= index);
            let writing = self.writer.as_ref().is_some_and(|w| w.0 == index);
            if needed || (writing && !self.records.is_empty()) {
                break;
            }
            if writing {
                self.writer = None;
            }
            if self.reader.as_ref().is_some_and(|r| r.0 == index) {
                self.reader = None;
            }
            self.segments.pop_front();
            self.bytes -= size;
            std::fs::remove_file(self.dir.join(segment_name(index)))?;
        }
        Ok((meta.events, meta.user_events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> (Vec<(Bytes, Bytes)>, Vec<i64>) {
        let entries = (0..n)
            .map(|i| (Bytes::from("t"), Bytes::from(format!("event-{i}"))))
            .collect();
        (entries, vec![42; n])
    }

    fn encoded(seq: i64, n: usize) -> (Vec<u8>, u64, u64) {
        let (entries, minutes) = batch(n);
        let mut out = Vec::new();
        encode_record(b"pub", seq, &entries, &minutes, &mut out);
        (out, n as u64, n as u64)
    }

    #[test]
    fn round_trip_and_segment_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, rec) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(rec.records, 0);
        spool.append(&[encoded(1, 3), encoded(2, 2)]).unwrap();
        assert_eq!(spool.events(), 5);
        let r = spool.load_next().unwrap().unwrap();
        assert_eq!((r.seq, r.entries.len()), (1, 3));
        assert_eq!(r.entries[2].1, Bytes::from("event-2"));
        assert_eq!(r.minutes, vec![42; 3]);
        assert_eq!(spool.ack_front().unwrap(), (3, 3));
        assert_eq!(spool.load_next().unwrap().unwrap().seq, 2);
        spool.ack_front().unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0, "every segment deleted");
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".spool"))
            .collect();
        assert!(files.is_empty(), "{files:?}");
    }

    #[test]
    fn second_open_of_a_locked_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), 1 << 30).unwrap();
        let err = Spool::open(dir.path(), 1 << 30).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn reopen_cuts_a_torn_tail_and_keeps_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            spool
                .append(&[encoded(1, 2), encoded(2, 2), encoded(3, 2)])
                .unwrap();
        }
        let path = dir.path().join(segment_name(1));
        let size = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(size - 5).unwrap();
        drop(file);
        let (mut spool, rec) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!((rec.records, rec.events), (2, 4));
        assert!(rec.cut_bytes > 0);
        assert_eq!(rec.max_seq, vec![(Bytes::from("pub"), 2)]);
        assert!(std::fs::metadata(&path).unwrap().len() < size - 5);
        assert_eq!(spool.load_next().unwrap().unwrap().seq, 1);
        assert_eq!(spool.load_next().unwrap().unwrap().seq, 2);
        assert!(!spool.has_unloaded());
        // New records go to a new segment after a restart.
        spool.append(&[encoded(4, 1)]).unwrap();
        spool.mark_loaded(1);
        assert!(dir.path().join(segment_name(2)).exists());
    }

    #[test]
    fn the_bound_refuses_records_unless_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 100).unwrap();
        let big = encoded(1, 20);
        assert!(
            spool.fits_after(0, big.0.len() as u64),
            "an empty spool takes anything"
        );
        assert!(!spool.fits_after(10, big.0.len() as u64));
        spool.append(&[big]).unwrap();
        assert!(!spool.fits_after(0, 10));
    }
}
