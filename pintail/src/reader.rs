//! One partition's reader: a cursor over a sequence of files, frame by frame.
//!
//! # Local view (`<cluster>-<collector>` partitions)
//! A collector's stream is its files in `(minute, seq)` order. The reader looks for
//! the next file in two places: the collector's directory `data/<topic>/<collector>/`
//! (files being written, and closed ones the worker has not moved yet) and the minute
//! directories `streams_local/<topic>/<M>/` from the current file's minute on. It
//! reads a file in `data/` while it grows, decoding only complete frames: from
//! storage while it is behind, and once it has caught up through its collector's
//! open-file endpoint, a long-poll answered by the collector's next sync
//! ([`crate::collector_http`]; storage is polled again when the collector cannot
//! be reached) (a torn or half-written last frame is waited on, never
//! delivered, while its collector may still write it: once the collector's
//! heartbeat says every file of that minute is closed, a file that still ends
//! without its trailer was truncated, a [`PintailError::DamagedFile`]; a wait
//! longer than [`STALL_WARN`] is logged). When the file disappears from `data/` it
//! was renamed, unchanged, into
//! `streams_local/<topic>/<M>/<cluster>-<collector>-<name>` (`M` its own minute, or a
//! later one for a late file), and the reader continues there at the same offset;
//! if it went to `quarantine/` instead (collector recovery or the worker set it
//! aside as damaged), the reader stops with [`PintailError::DamagedFile`]. A file
//! is done at its close trailer; a closed file that ends without one is damaged.
//!
//! A **late file** (older than the newest file read, e.g. a spool replayed after an
//! outage) is noticed when it appears in `data/` after the reader's first listing
//! of that directory, and read then; the reader then continues after the newest
//! file it had read. One that arrived before the reader started, or that the worker
//! moved before the reader listed `data/` again, is not seen by the local view.
//!
//! # Sealed views (`p<k>of<n>` partitions)
//! Minute by minute, oldest first: the reader waits for a minute directory's
//! `_SUCCESS` manifest, then reads, in name order, the listed files whose name
//! hashes (FNV-1a 64) to its partition `k` modulo `n`. A minute directory that is
//! gone when the reader expected it (purged) is reported and skipped.
//!
//! # Pipelining (sealed files)
//! A closed file never changes, so while the consumer delivers one chunk of it the
//! reader already reads the next chunk (after the last one: in a sealed view the
//! first chunk of the minute's next file; in the local view that of the
//! collector's next-minute file, a guess that is used only if it is the file
//! opened next) and decodes its frames on the blocking pool, a few frames per
//! task so that they spread over the cores ([`Ahead`]). Positions, errors and
//! their order are exactly those of decoding at delivery: a frame that does not
//! decode carries its error until the reader reaches it. Files still being
//! written are decoded at delivery.
//!
//! # Sub-partitions of one stream share their reads (sealed files)
//! The readers of a member that own several sub-partitions of the same
//! collector stream (`<cluster>-<collector>-s<k>of<N>`, local view) read the
//! same files and pass over each other's records. Their sealed chunks (and the
//! chunks read ahead) go through the consumer's [`SharedChunks`]: the first
//! reader to want a chunk reads and decodes it, the others wait for it and take
//! it (`pintail_shared_chunks`), so a member owning all `N` sub-partitions of a
//! stream reads and decodes it once, not `N` times. Errors are not shared (the
//! next reader reads again), nor are files still being written (each reader
//! decodes their frames at delivery).
//!
//! # Memory
//! One read chunk (1 MiB, doubled up to [`MAX_FRAME_BYTES`] for a larger frame)
//! with its decoded payloads, plus one such chunk read ahead, per partition;
//! with sub-partitions, at most [`SHARED_CHUNKS`] more chunks kept for the
//! other sub-partition readers of their stream.

use std::collections::{BTreeSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::format::{gzip, scan, split_records, Codec, FrameRef, Scan, Trailer};
use conduit_core::layout::Layout;
use conduit_core::storage::StorageResult;
use conduit_core::{Encoding, Minute, NodeName, SharedClock, Topic, View};

use crate::collector_http::{CollectorHttp, Fetch};
use crate::error::{PintailError, Result};
use crate::metrics::Metrics;
use crate::position::{FileAt, Position};
use crate::roots::Roots;
use crate::Message;

/// Bytes read per storage call.
const READ_CHUNK: u64 = 1 << 20;
/// Largest frame accepted (the collector refuses larger calls long before this).
pub const MAX_FRAME_BYTES: u64 = 1 << 30;
/// File keys a local reader remembers for late-file detection.
const MAX_KNOWN: usize = 10_000;
/// Minute directories listed per search for a local file.
const DIRS_PER_SEARCH: usize = 60;
/// How often an idle local reader also lists minute directories (the collector's
/// own directory is listed on every poll).
const DIR_POLL: Duration = Duration::from_millis(500);
/// Largest read asked of a collector's open-file endpoint (its own limit).
const HTTP_MAX: u64 = 4 << 20;
/// After a collector answered `416` for an offset, read storage this long before
/// asking it again.
const HTTP_NOT_NOW: Duration = Duration::from_secs(1);
/// A file in `data/` that shows no new complete frame for this long while its
/// collector has not closed it gets a warning (the collector may be down).
const STALL_WARN: Duration = Duration::from_secs(30);

/// Settings every partition reader shares.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub topic: Topic,
    pub encoding: Encoding,
    pub skip_corrupt: bool,
    pub stop: Option<Minute>,
    pub clock: SharedClock,
    pub metrics: Metrics,
    pub sealed_poll: Duration,
    /// Local view: read open collector files through the collector's HTTP listener
    /// when storage has no new bytes.
    pub live_http: bool,
    /// Notified when a collector answers a long-poll: the consumer polls again
    /// at once.
    pub wake: Arc<tokio::sync::Notify>,
    /// The latest purged ranges reported (`(partition, from, to)`), at most
    /// [`MAX_PURGED_RANGES`].
    pub purged: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    /// Sealed chunks shared by the sub-partition readers of one stream.
    pub chunks: Arc<SharedChunks>,
}

/// Purged ranges kept for [`crate::Consumer::stats`].
const MAX_PURGED_RANGES: usize = 100;

/// Where a reader starts when it has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The first data at or after this minute.
    Minute(Minute),
    /// What arrives from now on.
    LiveEnd,
}

/// What a poll produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one message per poll, never stored
pub(crate) enum Poll {
    Msg(Message),
    Idle,
    Done,
}

/// Which stream a partition reads.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Local {
        cluster: NodeName,
        collector: NodeName,
        /// Sub-partition `k` of `n` of the stream: only its records are
        /// delivered ([`crate::partition::sub_partition_of`]); `(0, 1)` for all.
        sub: (u32, u32),
    },
    Sealed {
        k: u32,
        n: u32,
    },
}

/// A (collector file minute, sequence) key.
type Key = (Minute, u32);

#[derive(Debug)]
enum State {
    /// Local: the next file after `after` (or the first at or after `from` minute).
    Seek {
        after: Option<Key>,
        from: Minute,
        next_dir_check: Instant,
    },
    /// Sealed: wait for the first existing minute directory `>= minute`.
    Minute {
        minute: Minute,
        report_gap: bool,
        resume: Option<Position>,
        next_check: Instant,
    },
    /// Sealed: the remaining files of a sealed minute.
    InMinute {
        minute: Minute,
        files: VecDeque<String>,
    },
    /// Not started yet (the first poll resolves the start).
    Start {
        checkpoint: Option<Position>,
        origin: Origin,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// `data/<topic>/<collector>/<name>`: may still grow.
    Data,
    /// `<view dir>/<topic>/<minute>/<local name>`: closed.
    Dir,
}

#[derive(Debug)]
struct OpenFile {
    cluster: NodeName,
    collector: NodeName,
    name: Arc<str>,
    key: Key,
    dir_minute: Minute,
    loc: Loc,
    offset: u64,
    want: u64,
    chunk: Bytes,
    chunk_base: u64,
    frames: VecDeque<FrameRef>,
    /// Payloads of `frames` decoded ahead (same order; `None` for a skippable
    /// frame). Empty: decode at delivery.
    decoded: VecDeque<Option<Decoded>>,
    skip: u32,
    pending: VecDeque<Bytes>,
    frame_offset: u64,
    delivered_in_frame: u32,
    /// Sub-partitions: the round-robin start of the frame at this offset
    /// ([`crate::partition::frame_start`], hashed once per frame).
    frame_start: Option<(u64, u64)>,
    /// The file part of its positions, made at the first message from the fields
    /// above (change `dir_minute` with [`OpenFile::set_dir_minute`]).
    at: Option<Arc<FileAt>>,
    /// When the file was first found missing from every place it could be.
    missing_since: Option<Instant>,
    /// The collector served this file's last read: ask it first.
    via_http: bool,
    /// The collector no longer serves this file (closed, or not its open file).
    http_off: bool,
    /// The collector refused the offset: not before then.
    http_retry_at: Option<Instant>,
    /// In `data/`: when its collector's heartbeat may be read again to learn
    /// whether the file is closed ([`PartitionReader::stalled`]).
    closed_check_at: Option<Instant>,
    /// In `data/`: since when no new complete frame showed up, and whether that
    /// was logged.
    stalled_since: Option<Instant>,
    stall_logged: bool,
}

/// What asking the collector gave.
enum FromCollector {
    /// Frames are loaded into the file's chunk.
    Loaded,
    /// The collector has synced nothing new.
    Idle,
    /// Read storage instead.
    Storage,
}

enum Step {
    Continue,
    Idle,
    FileDone,
}

/// One partition's cursor.
#[derive(Debug)]
pub(crate) struct PartitionReader {
    pub id: Arc<str>,
    kind: Kind,
    view: View,
    roots: Roots,
    state: State,
    file: Option<OpenFile>,
    /// Set after a storage error: no call before then.
    pub backoff_until: Option<Instant>,
    pub backoff: Duration,
    /// Local: file keys seen in `data/` or opened; a file older than the newest one
    /// read that is not in here is a late file.
    known: Option<BTreeSet<Key>>,
    /// Local: the newest file key finished in order.
    high: Option<Key>,
    /// Local: the collector's HTTP listener (open files).
    http: Option<CollectorHttp>,
    /// Local: storage cannot read the unfinished last block of an open file (HDFS),
    /// so when it shows no new bytes the collector is asked.
    open_unreadable: bool,
    /// The next sealed chunk, being read and decoded.
    ahead: Option<Ahead>,
    /// Local: quarantined files already reported and skipped
    /// ([`PartitionReader::check_quarantined`]).
    quarantine_skipped: BTreeSet<Key>,
}

/// A frame's payloads, or why it does not decode.
type Decoded = std::result::Result<VecDeque<Bytes>, String>;

/// A chunk of a closed file being read and decoded by other tasks while the
/// consumer delivers the chunk before it.
#[derive(Debug)]
struct Ahead {
    path: String,
    offset: u64,
    want: u64,
    task: tokio::task::JoinHandle<StorageResult<Loaded>>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A chunk read from storage, its frames and their decoded payloads.
#[derive(Debug, Clone)]
struct Loaded {
    bytes: Bytes,
    scan: Scan,
    /// Per frame of `scan`, as [`OpenFile::decoded`]; empty if decoding failed to
    /// run (then frames are decoded at delivery).
    decoded: Vec<Option<Decoded>>,
}

/// Decodes one data frame (or gzip member) into its payloads.
fn decode_payloads(codec: Codec, frame: &[u8], encoding: Encoding) -> Decoded {
    payloads_of(Bytes::from(codec.decode_frame(frame)?), encoding)
}

/// The payloads of a data frame's (or gzip member's) decoded records' bytes.
fn payloads_of(content: Bytes, encoding: Encoding) -> Decoded {
    let mut payloads = VecDeque::new();
    for record in split_records(&content) {
        let payload = match encoding {
            Encoding::Lines => content.slice_ref(record),
            other => Bytes::from(
                other
                    .decode(record)
                    .map_err(|e| e.to_string())?
                    .into_owned(),
            ),
        };
        payloads.push_back(payload);
    }
    Ok(payloads)
}

/// The complete gzip members of `buf` (from offset `base`), inflated, and
/// the scan: one inflate per member ([`conduit_core::format::contents`]).
fn gzip_members(buf: &[u8], base: u64) -> (Vec<Vec<u8>>, Scan) {
    match conduit_core::format::contents(Codec::Gzip, buf, base) {
        Ok((units, scan)) => (units.into_iter().map(|(_, c)| c).collect(), scan),
        // Never for gzip (a member that does not inflate ends the scan).
        Err(_) => (Vec::new(), Codec::Gzip.scan(buf, base)),
    }
}

/// Frames per decoding task. A chunk (~14 frames of 1,000 events) is decoded by
/// several small tasks rather than one per core: on 2 vCPUs shared with the
/// consumer, 2 frames per task gave 2.05 M events/s against 1.90 M with one task
/// per core (`conduit-bench catch-up`, same machine, back to back).
const FRAMES_PER_DECODE_TASK: usize = 2;

/// Reads `range` of a closed file and decodes its complete frames in parallel on
/// the blocking pool, a few frames per task.
async fn load_sealed(
    roots: Roots,
    path: String,
    range: std::ops::Range<u64>,
    encoding: Encoding,
) -> StorageResult<Loaded> {
    let bytes = roots.read_range(&path, range.clone()).await?;
    let codec = Codec::of_file(&path);
    if codec == Codec::Gzip {
        // Finding a gzip member's end means inflating it: keep what that
        // inflated instead of inflating every member again.
        let (read, base) = (bytes.clone(), range.start);
        let task = tokio::task::spawn_blocking(move || {
            let (members, scan) = gzip_members(&read, base);
            let decoded = members
                .into_iter()
                .map(|content| Some(payloads_of(Bytes::from(content), encoding)))
                .collect();
            (scan, decoded)
        });
        let (scan, decoded) = match task.await {
            Ok(done) => done,
            // Cancelled or panicked: leave decoding to delivery, which reports it.
            Err(_) => (codec.scan(&bytes, range.start), Vec::new()),
        };
        return Ok(Loaded {
            bytes,
            scan,
            decoded,
        });
    }
    let scan = codec.scan(&bytes, range.start);
    let frames = &scan.frames;
    let mut tasks = Vec::new();
    for group in frames.chunks(FRAMES_PER_DECODE_TASK) {
        let group = group.to_vec();
        let bytes = bytes.clone();
        let base = range.start;
        tasks.push(tokio::task::spawn_blocking(move || {
            group
                .iter()
                .map(|fr| {
                    let start = (fr.offset - base) as usize;
                    let frame = &bytes[start..start + fr.len as usize];
                    (!fr.skippable).then(|| decode_payloads(codec, frame, encoding))
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut decoded = Vec::with_capacity(frames.len());
    for t in tasks {
        match t.await {
            Ok(part) => decoded.extend(part),
            // Cancelled or panicked: leave decoding to delivery, which reports it.
            Err(_) => {
                decoded.clear();
                break;
            }
        }
    }
    Ok(Loaded {
        bytes,
        scan,
        decoded,
    })
}

/// Chunks kept by [`SharedChunks`] (the newest ones asked for). Sub-partition
/// readers of one stream advance together (each delivers its share of every
/// chunk), so each stream needs about two at a time: the chunk being delivered
/// and the one read ahead.
const SHARED_CHUNKS: usize = 8;

/// A sealed chunk: path and byte range.
type ChunkKey = (String, u64, u64);

/// A shared chunk, read once by the first reader that wants it.
type ChunkCell = Arc<tokio::sync::OnceCell<Arc<Loaded>>>;

/// Sealed chunks of the local view shared by the sub-partition readers of one
/// consumer (see the [module docs](self)): each chunk is read and decoded by
/// the first reader that wants it; the others wait for that read and take a
/// copy (the payloads are shared bytes). The newest [`SHARED_CHUNKS`] chunks
/// asked for are kept; a reader that finds its chunk gone reads it again.
#[derive(Debug, Default)]
pub(crate) struct SharedChunks {
    cells: std::sync::Mutex<VecDeque<(ChunkKey, ChunkCell)>>,
}

impl SharedChunks {
    /// The cell of `key`, made (and the oldest beyond [`SHARED_CHUNKS`]
    /// forgotten) if it is not kept.
    fn cell(&self, key: ChunkKey) -> ChunkCell {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, cell)) = cells.iter().find(|(k, _)| *k == key) {
            return cell.clone();
        }
        let cell = Arc::new(tokio::sync::OnceCell::new());
        cells.push_back((key, cell.clone()));
        while cells.len() > SHARED_CHUNKS {
            cells.pop_front();
        }
        cell
    }

    /// [`load_sealed`], once for all the readers asking for the same chunk
    /// while it is kept. A failed read is not kept: the next reader reads again.
    async fn load(
        &self,
        metrics: &crate::metrics::Metrics,
        roots: Roots,
        path: String,
        range: std::ops::Range<u64>,
        encoding: Encoding,
    ) -> StorageResult<Loaded> {
        let cell = self.cell((path.clone(), range.start, range.end));
        let mut read_here = false;
        let loaded = cell
            .get_or_try_init(|| {
                read_here = true;
                async move {
                    load_sealed(roots, path, range, encoding)
                        .await
                        .map(Arc::new)
                }
            })
            .await?;
        if !read_here {
            metrics.shared_chunks.inc();
        }
        Ok(Loaded::clone(loaded))
    }
}

impl PartitionReader {
    pub fn new(
        id: String,
        kind: Kind,
        view: View,
        roots: Roots,
        checkpoint: Option<Position>,
        origin: Origin,
    ) -> Self {
        let http = match &kind {
            Kind::Local {
                cluster, collector, ..
            } => Some(CollectorHttp::new(cluster.clone(), collector.clone())),
            Kind::Sealed { .. } => None,
        };
        let open_unreadable = roots.first().root().starts_with("hdfs://");
        PartitionReader {
            id: id.into(),
            kind,
            view,
            roots,
            state: State::Start { checkpoint, origin },
            file: None,
            backoff_until: None,
            backoff: Duration::ZERO,
            known: None,
            high: None,
            http,
            open_unreadable,
            ahead: None,
            quarantine_skipped: BTreeSet::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done) && self.file.is_none()
    }

    /// Delivers the next message if one is ready without waiting.
    pub async fn poll(&mut self, ctx: &Ctx) -> Result<Poll> {
        loop {
            if let Some(f) = self.file.as_mut() {
                if let Some(payload) = f.pending.pop_front() {
                    let record = f.delivered_in_frame;
                    f.delivered_in_frame += 1;
                    if let Kind::Local { sub: (k, n), .. } = self.kind {
                        // Another sub-partition's record: passed over (the
                        // position still moves past it).
                        if n > 1 {
                            let start = match f.frame_start {
                                Some((offset, start)) if offset == f.frame_offset => start,
                                _ => {
                                    let start =
                                        crate::partition::frame_start(&f.name, f.frame_offset);
                                    f.frame_start = Some((f.frame_offset, start));
                                    start
                                }
                            };
                            if crate::partition::sub_partition_from(start, record, n) != k {
                                continue;
                            }
                        }
                    }
                    return Ok(Poll::Msg(self.message(ctx, payload)));
                }
                match self.step_file(ctx).await? {
                    Step::Continue => continue,
                    Step::Idle => return Ok(Poll::Idle),
                    Step::FileDone => {
                        let f = self.file.take().expect("open file");
                        if let Kind::Local { .. } = self.kind {
                            // After a late file, continue after the newest file read.
                            let high = self.high.map_or(f.key, |h| h.max(f.key));
                            self.high = Some(high);
                            self.state = State::Seek {
                                after: Some(high),
                                from: f.dir_minute,
                                next_dir_check: Instant::now(),
                            };
                        }
                        continue;
                    }
                }
            }
            match &mut self.state {
                State::Done => return Ok(Poll::Done),
                State::Start { .. } => self.start(ctx).await?,
                State::Seek { .. } => {
                    if !self.seek_local(ctx).await? {
                        return Ok(Poll::Idle);
                    }
                }
                State::Minute { .. } => {
                    if !self.next_minute(ctx).await? {
                        return Ok(Poll::Idle);
                    }
                }
                State::InMinute { minute, files } => {
                    let minute = *minute;
                    match files.pop_front() {
                        Some(name) => self.open_sealed(minute, &name, 0, 0)?,
                        None => {
                            self.state = State::Minute {
                                minute: minute.next()?,
                                report_gap: true,
                                resume: None,
                                next_check: Instant::now(),
                            }
                        }
                    }
                }
            }
        }
    }

    fn message(&mut self, ctx: &Ctx, payload: Bytes) -> Message {
        let f = self.file.as_mut().expect("open file");
        let at = f.at.get_or_insert_with(|| {
            Arc::new(FileAt {
                partition: self.id.clone(),
                minute: f.dir_minute,
                cluster: f.cluster.clone(),
                collector: f.collector.clone(),
                file: f.name.clone(),
            })
        });
        Message {
            payload,
            topic: ctx.topic.clone(),
            minute: f.key.0,
            position: Position::in_file(at.clone(), f.frame_offset, f.delivered_in_frame),
        }
    }

    fn path(&self, ctx: &Ctx, f: &OpenFile) -> String {
        match f.loc {
            Loc::Data => format!(
                "{}/{}",
                Layout::collector_dir(&ctx.topic, &f.collector),
                f.name
            ),
            Loc::Dir => format!(
                "{}/{}-{}-{}",
                Layout::minute_dir(self.view, &ctx.topic, f.dir_minute),
                f.cluster,
                f.collector,
                f.name
            ),
        }
    }

    // ---- start -------------------------------------------------------------

    async fn start(&mut self, ctx: &Ctx) -> Result<()> {
        let State::Start { checkpoint, origin } = &self.state else {
            return Ok(());
        };
        let (checkpoint, origin) = (checkpoint.clone(), *origin);
        match (&self.kind, checkpoint) {
            (Kind::Sealed { .. }, Some(pos)) => {
                self.state = State::Minute {
                    minute: pos.minute(),
                    report_gap: true,
                    resume: Some(pos),
                    next_check: Instant::now(),
                };
            }
            (Kind::Sealed { .. }, None) => {
                let minute = match origin {
                    Origin::Minute(m) => m,
                    Origin::LiveEnd => ctx.clock.minute(),
                };
                self.state = State::Minute {
                    minute,
                    report_gap: false,
                    resume: None,
                    next_check: Instant::now(),
                };
            }
            (Kind::Local { .. }, Some(pos)) => self.resume_local(ctx, pos).await?,
            (Kind::Local { .. }, None) => match origin {
                Origin::Minute(m) => {
                    self.state = State::Seek {
                        after: None,
                        from: m,
                        next_dir_check: Instant::now(),
                    }
                }
                Origin::LiveEnd => self.live_end(ctx).await?,
            },
        }
        Ok(())
    }

    /// Local: continue at a committed position, wherever its file is now.
    async fn resume_local(&mut self, ctx: &Ctx, pos: Position) -> Result<()> {
        let Kind::Local {
            cluster, collector, ..
        } = self.kind.clone()
        else {
            unreachable!("local only")
        };
        let Some(key) = pos.file_key() else {
            return Err(PintailError::MalformedCheckpoint {
                path: self.id.to_string(),
                reason: format!("{:?} is not a collector file name", pos.file()),
            });
        };
        let mut file = OpenFile::new(cluster, collector, pos.file(), key, pos.minute(), Loc::Data);
        file.offset = pos.offset();
        file.skip = pos.record();
        match self.locate(ctx, &mut file).await? {
            true => self.file = Some(file),
            false => {
                let data = format!(
                    "{}/{}",
                    Layout::collector_dir(&ctx.topic, &file.collector),
                    file.name
                );
                let quarantined = Layout::quarantine_path(&data);
                if self.roots.exists(&quarantined).await? {
                    let reason = format!(
                        "the checkpoint's file was moved to {quarantined} (by its collector's recovery or the worker): it is shorter than acknowledged or does not decode"
                    );
                    self.damaged_at(ctx, &data, pos.offset(), reason)?;
                    self.quarantine_skipped.insert(key);
                }
                let next = self.find_local(ctx, Some(key), pos.minute()).await?;
                let to = next
                    .as_ref()
                    .map(|(name, _, m)| format!("{m}/{name}"))
                    .unwrap_or_else(|| "the live end".to_owned());
                self.report_purged(ctx, &pos.to_string(), &to);
                self.state = State::Seek {
                    after: Some(key),
                    from: pos.minute(),
                    next_dir_check: Instant::now(),
                };
            }
        }
        Ok(())
    }

    /// Local: start after what the collector has written so far.
    async fn live_end(&mut self, ctx: &Ctx) -> Result<()> {
        let Kind::Local {
            cluster, collector, ..
        } = self.kind.clone()
        else {
            unreachable!("local only")
        };
        let dir = Layout::collector_dir(&ctx.topic, &collector);
        let newest = self
            .roots
            .list_or_empty(&dir)
            .await?
            .into_iter()
            .filter_map(|e| data_file_key(&ctx.topic, &e.name).map(|k| (k, e)))
            .max_by_key(|(k, _)| *k);
        match newest {
            Some((key, entry)) => {
                // Skip the complete frames present now; new frames follow them.
                let bytes = self.roots.read_range(&entry.path, 0..entry.len).await?;
                let s = scan(&bytes, 0);
                if s.trailer.is_some() {
                    self.state = State::Seek {
                        after: Some(key),
                        from: key.0,
                        next_dir_check: Instant::now(),
                    };
                } else {
                    let mut f =
                        OpenFile::new(cluster, collector, entry.name, key, key.0, Loc::Data);
                    f.offset = s.valid_len;
                    if (bytes.len() as u64) < entry.len || self.open_unreadable {
                        // Storage cannot show the whole open file (HDFS): the live
                        // end is the collector's synced length.
                        if let Some(end) = self.collector_synced_end(ctx, &f).await {
                            f.offset = f.offset.max(end);
                        }
                    }
                    self.file = Some(f);
                }
            }
            None => {
                self.state = State::Seek {
                    after: None,
                    from: ctx.clock.minute(),
                    next_dir_check: Instant::now(),
                }
            }
        }
        Ok(())
    }

    fn report_purged(&self, ctx: &Ctx, from: &str, to: &str) {
        tracing::warn!(partition = %self.id, topic = %ctx.topic, from, to,
            "data past the position was purged; continuing with the oldest available data");
        ctx.metrics.purged_skips.inc();
        let mut purged = ctx.purged.lock().expect("purged lock");
        if purged.len() >= MAX_PURGED_RANGES {
            purged.remove(0);
        }
        purged.push((self.id.to_string(), from.to_owned(), to.to_owned()));
    }

    /// Finds where `f` is now: `data/`, its minute directory, or a later one (late
    /// files). False if it is nowhere.
    async fn locate(&self, ctx: &Ctx, f: &mut OpenFile) -> Result<bool> {
        if self.view == View::Local {
            f.loc = Loc::Data;
            if self.roots.exists(&self.path(ctx, f)).await? {
                return Ok(true);
            }
        }
        f.loc = Loc::Dir;
        let mut candidates = vec![f.dir_minute];
        candidates.extend(
            self.roots
                .minute_dirs_from(self.view, &ctx.topic, f.dir_minute.next()?, 60)
                .await?,
        );
        for m in candidates {
            f.set_dir_minute(m);
            if self.roots.exists(&self.path(ctx, f)).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    // ---- local: the next file ------------------------------------------------

    /// Local: finds and opens the next file. False when there is none yet.
    async fn seek_local(&mut self, ctx: &Ctx) -> Result<bool> {
        let State::Seek {
            after,
            from,
            next_dir_check,
        } = &self.state
        else {
            return Ok(false);
        };
        let (after, from) = (*after, *from);
        let with_dirs = Instant::now() >= *next_dir_check;
        let found = if with_dirs {
            if let State::Seek { next_dir_check, .. } = &mut self.state {
                *next_dir_check = Instant::now() + DIR_POLL;
            }
            self.find_local(ctx, after, from).await?
        } else {
            self.find_in_data(ctx, after, from).await?
        };
        let Some((name, loc, dir_minute)) = found else {
            if with_dirs && self.local_stopped(ctx, from).await? {
                self.check_quarantined(ctx, after, from, None).await?;
                self.state = State::Done;
            }
            return Ok(false);
        };
        let key = data_file_key(&ctx.topic, &name).expect("filtered");
        if ctx.stop.is_some_and(|stop| key.0 > stop) {
            self.check_quarantined(ctx, after, from, None).await?;
            self.state = State::Done;
            return Ok(false);
        }
        self.check_quarantined(ctx, after, from, Some(key)).await?;
        let Kind::Local {
            cluster, collector, ..
        } = self.kind.clone()
        else {
            unreachable!("local only")
        };
        let known = self.known.get_or_insert_with(Default::default);
        known.insert(key);
        if known.len() > MAX_KNOWN {
            // Forget the oldest keys; a late file older than those is not expected.
            let keep: BTreeSet<Key> = known.iter().rev().take(MAX_KNOWN / 2).copied().collect();
            *known = keep;
        }
        self.file = Some(OpenFile::new(
            cluster, collector, name, key, dir_minute, loc,
        ));
        Ok(true)
    }

    /// Whether a local partition with a stop minute has nothing more to read: its
    /// collector's watermark passed the stop minute (every file up to it is closed
    /// and none is left), or it has no heartbeat and the clock is past the stop.
    async fn local_stopped(&self, ctx: &Ctx, _from: Minute) -> Result<bool> {
        let Some(stop) = ctx.stop else {
            return Ok(false);
        };
        if !matches!(self.kind, Kind::Local { .. }) {
            return Ok(false);
        }
        Ok(match self.heartbeat().await? {
            Some(b) => {
                b.watermark.is_some_and(|w| w >= stop)
                    || b.state == conduit_core::heartbeat::CollectorState::Stopped
            }
            None => ctx.clock.minute() > stop,
        })
    }

    /// A local partition's collector heartbeat; `None` when there is none (or it
    /// does not parse).
    async fn heartbeat(&self) -> Result<Option<conduit_core::heartbeat::Heartbeat>> {
        let Kind::Local {
            cluster, collector, ..
        } = &self.kind
        else {
            return Ok(None);
        };
        let path = Layout::heartbeat_path(cluster, collector);
        match self.roots.first().read(&path).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Local, a file in `data/` that shows no complete frame past `f.offset`:
    /// `None` while its collector may still write it (the caller waits; a long
    /// wait is logged once). Once the collector's heartbeat says it has closed
    /// every file of the file's minute (its watermark passed it, or it stopped
    /// cleanly), the file is read once more: new frames continue the read, and a
    /// file that still ends without its trailer was truncated
    /// ([`PartitionReader::damaged`]). The heartbeat is read at most every
    /// [`DIR_POLL`] per file.
    async fn stalled(&mut self, ctx: &Ctx, f: &mut OpenFile, path: &str) -> Result<Option<Step>> {
        let now = Instant::now();
        let since = *f.stalled_since.get_or_insert(now);
        if f.closed_check_at.is_some_and(|t| now < t) {
            return Ok(None);
        }
        f.closed_check_at = Some(now + DIR_POLL);
        let minute = f.key.0;
        let closed = self.heartbeat().await?.is_some_and(|b| {
            b.watermark.is_some_and(|w| w >= minute)
                || b.state == conduit_core::heartbeat::CollectorState::Stopped
        });
        if !closed {
            if since.elapsed() >= STALL_WARN && !f.stall_logged {
                f.stall_logged = true;
                tracing::warn!(partition = %self.id, path, offset = f.offset, waited_secs = since.elapsed().as_secs(),
                    "no new complete frame and the file is not closed: waiting for its collector (is it running? a restarted collector closes or quarantines it)");
            }
            return Ok(None);
        }
        // Closed by its collector: whatever storage shows now is final.
        let len = match self.roots.stat(path).await {
            Ok(st) => st.len,
            Err(e) if e.is_not_found() => return Ok(Some(Step::Continue)),
            Err(e) => return Err(e.into()),
        };
        if let Some(step) = self.cut_back(ctx, f, path, len).await? {
            return Ok(Some(step));
        }
        let tail = self
            .roots
            .read_range(path, f.offset..len.min(f.offset + f.want))
            .await?;
        if !scan(&tail, f.offset).frames.is_empty() {
            f.stalled_since = None;
            return Ok(Some(Step::Continue));
        }
        let Kind::Local { collector, .. } = &self.kind else {
            return Ok(None);
        };
        let ends = if tail.is_empty() {
            "it ends without its close trailer".to_owned()
        } else {
            format!(
                "it ends with {} bytes that are not a complete frame, without its close trailer",
                tail.len()
            )
        };
        let reason = format!(
            "{ends}, although collector {collector} has closed every file of {minute}: it was truncated"
        );
        self.damaged(ctx, f, path, reason).map(Some)
    }

    /// A closed file (it ends with its close trailer) of `len` bytes, shorter than
    /// what this reader already read of it: its collector's repair cut it back
    /// to its acknowledged length after abandoning it at a storage deadline
    /// (`docs/reliability.md`), removing bytes storage had shown but that were
    /// never acknowledged, whose events their publishers send again (so they
    /// are delivered again from another file: at least once, nothing lost). The
    /// file is done: a WARN and `pintail_cut_back_files`. `None` otherwise.
    async fn cut_back(
        &self,
        ctx: &Ctx,
        f: &OpenFile,
        path: &str,
        len: u64,
    ) -> Result<Option<Step>> {
        if len >= f.offset {
            return Ok(None);
        }
        let start = len.saturating_sub(conduit_core::format::TRAILER_V2_LEN as u64);
        let tail = self.roots.read_range(path, start..len).await?;
        if conduit_core::format::trailer_in_tail(&tail).is_none() {
            return Ok(None);
        }
        ctx.metrics.cut_back_files.inc();
        tracing::warn!(partition = %self.id, path, read_to = f.offset, cut_to = len,
            "a file was cut back below what this reader had read (its collector abandoned it at a storage deadline and repaired it to its acknowledged length): the events past the cut were never acknowledged and come again from their publishers' retries; going on with the next file");
        Ok(Some(Step::FileDone))
    }

    /// A damaged file: [`PintailError::DamagedFile`], or, when corrupt data is
    /// skipped, an ERROR line, a count, and the next file.
    fn damaged(&self, ctx: &Ctx, f: &OpenFile, path: &str, reason: String) -> Result<Step> {
        self.damaged_at(ctx, path, f.offset, reason)?;
        Ok(Step::FileDone)
    }

    /// [`PartitionReader::damaged`] for a file read up to `offset`: `Ok` when it is
    /// skipped.
    fn damaged_at(&self, ctx: &Ctx, path: &str, offset: u64, reason: String) -> Result<()> {
        if ctx.skip_corrupt {
            tracing::error!(partition = %self.id, path, offset, reason,
                "skipping the rest of a damaged data file");
            ctx.metrics.corrupt_frames_skipped.inc();
            return Ok(());
        }
        Err(PintailError::DamagedFile {
            path: path.to_owned(),
            offset,
            reason,
        })
    }

    /// Local: a file of this collector that was set aside in `quarantine/` and
    /// that the reader would have read next: after `after` (or from minute
    /// `from`), before `before` (the file about to be opened; `None`: up to the
    /// stop minute). Its records cannot be delivered: [`PartitionReader::damaged_at`]
    /// (each file once when skipped). Checked once per file opened, so readers
    /// that start after the quarantine learn of it too.
    async fn check_quarantined(
        &mut self,
        ctx: &Ctx,
        after: Option<Key>,
        from: Minute,
        before: Option<Key>,
    ) -> Result<()> {
        let Kind::Local { collector, .. } = &self.kind else {
            return Ok(());
        };
        let data_dir = Layout::collector_dir(&ctx.topic, collector);
        let dir = Layout::quarantine_path(&data_dir);
        let passed = self
            .roots
            .list_or_empty(&dir)
            .await?
            .into_iter()
            .filter_map(|e| data_file_key(&ctx.topic, &e.name).map(|k| (k, e.name)))
            .filter(|(k, _)| wanted(*k, after, from))
            .filter(|(k, _)| before.is_none_or(|b| *k < b))
            .filter(|(k, _)| ctx.stop.is_none_or(|stop| k.0 <= stop))
            .filter(|(k, _)| !self.quarantine_skipped.contains(k))
            .min_by_key(|(k, _)| *k);
        let Some((key, name)) = passed else {
            return Ok(());
        };
        let reason = format!(
            "it was moved to {dir}/{name} (by its collector's recovery or the worker) before it was read: it is shorter than acknowledged or does not decode, and none of its records were delivered"
        );
        self.damaged_at(ctx, &format!("{data_dir}/{name}"), 0, reason)?;
        self.quarantine_skipped.insert(key);
        Ok(())
    }

    async fn find_in_data(
        &mut self,
        ctx: &Ctx,
        after: Option<Key>,
        from: Minute,
    ) -> Result<Option<(String, Loc, Minute)>> {
        let Kind::Local { collector, .. } = &self.kind else {
            return Ok(None);
        };
        let dir = Layout::collector_dir(&ctx.topic, collector);
        let entries: Vec<(Key, String)> = self
            .roots
            .list_or_empty(&dir)
            .await?
            .into_iter()
            .filter_map(|e| data_file_key(&ctx.topic, &e.name).map(|k| (k, e.name)))
            .collect();
        // Late files: older than what was read, yet not there when this reader first
        // listed the directory (a replayed spool). Read them now.
        let known = self
            .known
            .get_or_insert_with(|| entries.iter().map(|(k, _)| *k).collect());
        if let Some(after) = after {
            let late = entries
                .iter()
                .filter(|(k, _)| *k < after && !known.contains(k))
                .min_by_key(|(k, _)| *k);
            if let Some((k, name)) = late {
                tracing::info!(partition = %self.id, file = %name, "a late file appeared; reading it");
                return Ok(Some((name.clone(), Loc::Data, k.0)));
            }
        }
        let best = entries
            .into_iter()
            .filter(|(k, _)| wanted(*k, after, from))
            .min_by_key(|(k, _)| *k);
        Ok(best.map(|(k, name)| (name, Loc::Data, k.0)))
    }

    /// The smallest wanted file in `data/` and in the first minute directories (from
    /// `from`) holding one of this collector's files. Advances the seek's `from`
    /// past sealed directories without such files.
    async fn find_local(
        &mut self,
        ctx: &Ctx,
        after: Option<Key>,
        from: Minute,
    ) -> Result<Option<(String, Loc, Minute)>> {
        let Kind::Local {
            cluster, collector, ..
        } = self.kind.clone()
        else {
            return Ok(None);
        };
        let mut best = self
            .find_in_data(ctx, after, from)
            .await?
            .map(|(name, loc, m)| (data_file_key(&ctx.topic, &name).expect("key"), name, loc, m));
        let prefix = format!("{cluster}-{collector}-");
        let mut all_sealed_so_far = true;
        let mut new_from = from;
        for m in self
            .roots
            .minute_dirs_from(View::Local, &ctx.topic, from, DIRS_PER_SEARCH)
            .await?
        {
            let entries = self
                .roots
                .list_or_empty(&Layout::minute_dir(View::Local, &ctx.topic, m))
                .await?;
            let sealed = entries.iter().any(|e| e.name == Layout::SUCCESS_MARKER);
            let found = entries
                .into_iter()
                .filter_map(|e| {
                    let name = e.name.strip_prefix(&prefix)?.to_owned();
                    data_file_key(&ctx.topic, &name).map(|k| (k, name))
                })
                .filter(|(k, _)| wanted(*k, after, from))
                .min_by_key(|(k, _)| *k);
            if let Some((k, name)) = found {
                if best.as_ref().is_none_or(|b| k < b.0) {
                    best = Some((k, name, Loc::Dir, m));
                }
                break;
            }
            all_sealed_so_far &= sealed;
            if all_sealed_so_far {
                new_from = m.next()?;
            }
        }
        if new_from > from {
            if let State::Seek { from, .. } = &mut self.state {
                *from = new_from;
            }
        }
        Ok(best.map(|(_, name, loc, m)| (name, loc, m)))
    }

    // ---- sealed views ----------------------------------------------------------

    /// Sealed: loads the next sealed minute. False while it is not sealed yet.
    async fn next_minute(&mut self, ctx: &Ctx) -> Result<bool> {
        let State::Minute {
            minute,
            report_gap,
            resume,
            next_check,
        } = &mut self.state
        else {
            return Ok(false);
        };
        if Instant::now() < *next_check {
            return Ok(false);
        }
        *next_check = Instant::now() + ctx.sealed_poll;
        let (want, report_gap, resume) = (*minute, *report_gap, resume.clone());
        if ctx.stop.is_some_and(|stop| want > stop) {
            self.state = State::Done;
            return Ok(false);
        }
        let Some(found) = self
            .roots
            .minute_dirs_from(self.view, &ctx.topic, want, 1)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(false);
        };
        if ctx.stop.is_some_and(|stop| found > stop) {
            self.state = State::Done;
            return Ok(false);
        }
        let dir = Layout::minute_dir(self.view, &ctx.topic, found);
        let Some(manifest) = self.roots.manifest(&dir).await? else {
            return Ok(false);
        };
        if found > want && report_gap {
            let from = resume
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| want.to_string());
            self.report_purged(ctx, &from, &found.to_string());
        }
        for q in &manifest.quarantined {
            tracing::error!(partition = %self.id, dir, file = %q.name, reason = %q.reason,
                "the seal set this file aside in quarantine/: its records are not in this view (see docs/operations.md, \"Quarantined files\")");
        }
        let Kind::Sealed { k, n } = self.kind else {
            unreachable!("sealed only")
        };
        let mut files: VecDeque<String> = manifest
            .files
            .iter()
            .map(|f| f.name.clone())
            .filter(|name| partition_of(name, n) == k)
            .collect();
        let mut start = (0, 0);
        if let Some(pos) = resume.filter(|_| found == want) {
            let name = pos.local_name();
            while files.front().is_some_and(|f| *f < name) {
                files.pop_front();
            }
            if files.front() == Some(&name) {
                start = (pos.offset(), pos.record());
            }
        }
        if start != (0, 0) {
            let name = files.pop_front().expect("resumed file");
            self.open_sealed(found, &name, start.0, start.1)?;
        }
        self.state = State::InMinute {
            minute: found,
            files,
        };
        Ok(true)
    }

    fn open_sealed(
        &mut self,
        minute: Minute,
        local_name: &str,
        offset: u64,
        skip: u32,
    ) -> Result<()> {
        // A gzip topic's merged view holds `.gz` transcodes of local files.
        let parsed = Layout::parse_local_file_name(&gzip::zst_name(local_name))?;
        let name = local_name
            .splitn(3, '-')
            .nth(2)
            .expect("parsed local name has three parts")
            .to_owned();
        let mut f = OpenFile::new(
            parsed.cluster,
            parsed.collector,
            name,
            (parsed.minute, parsed.seq),
            minute,
            Loc::Dir,
        );
        f.offset = offset;
        f.skip = skip;
        self.file = Some(f);
        Ok(())
    }

    // ---- frames --------------------------------------------------------------

    async fn step_file(&mut self, ctx: &Ctx) -> Result<Step> {
        let f = self.file.as_ref().expect("open file");
        if f.frames.is_empty() {
            if let Some(step) = self.refill(ctx).await? {
                return Ok(step);
            }
        }
        let path = self.path(ctx, self.file.as_ref().expect("open file"));
        let f = self.file.as_mut().expect("open file");
        let frame = f.frames.pop_front().expect("refilled");
        let ahead = f.decoded.pop_front().flatten();
        let start = (frame.offset - f.chunk_base) as usize;
        let bytes = f.chunk.slice(start..start + frame.len as usize);
        if frame.skippable {
            if Trailer::decode(&bytes).is_some() {
                return Ok(Step::FileDone);
            }
            f.offset = frame.offset + frame.len;
            return Ok(Step::Continue);
        }
        let live = f.loc == Loc::Data;
        let decoded = match ahead {
            Some(d) => d,
            None => decode_payloads(Codec::of_file(&path), &bytes, ctx.encoding),
        };
        match decoded {
            Ok(mut payloads) => {
                let skip = (f.skip as usize).min(payloads.len());
                payloads.drain(..skip);
                f.delivered_in_frame = f.skip;
                f.skip = 0;
                f.frame_offset = frame.offset;
                f.offset = frame.offset + frame.len;
                f.pending = payloads;
                Ok(Step::Continue)
            }
            Err(reason) if live && f.frames.is_empty() => {
                // The last complete frame of a file still being written may be a
                // half-written one with a plausible length: look again later.
                tracing::debug!(
                    path,
                    offset = frame.offset,
                    reason,
                    "last frame does not decode yet"
                );
                f.chunk = Bytes::new();
                Ok(Step::Idle)
            }
            Err(reason) if ctx.skip_corrupt => {
                tracing::error!(
                    path,
                    offset = frame.offset,
                    reason,
                    "skipping a corrupt frame"
                );
                ctx.metrics.corrupt_frames_skipped.inc();
                f.offset = frame.offset + frame.len;
                Ok(Step::Continue)
            }
            Err(reason) => Err(PintailError::CorruptFrame {
                path,
                offset: frame.offset,
                reason,
            }),
        }
    }

    /// Reads the next chunk of the open file. `Some(step)` when there is no
    /// complete frame to decode now.
    /// The synced length of an open file at its collector (a frame boundary).
    async fn collector_synced_end(&mut self, ctx: &Ctx, f: &OpenFile) -> Option<u64> {
        if !ctx.live_http {
            return None;
        }
        let http = self.http.as_mut()?;
        let mut at = f.offset;
        // Walk forward with cheap requests until the collector has nothing more.
        for _ in 0..64 {
            match http
                .fetch(&self.roots, &ctx.metrics, &ctx.topic, &f.name, at, 1)
                .await
            {
                Fetch::Bytes(b) if b.is_empty() => return Some(at),
                Fetch::Bytes(b) => {
                    let s = scan(&b, at);
                    if s.frames.is_empty() {
                        return None;
                    }
                    at = s.valid_len;
                }
                Fetch::NotNow => {
                    // Older than the collector keeps: ask for its synced length.
                    return None;
                }
                Fetch::NotOpen | Fetch::Unreachable | Fetch::Waiting => return None,
            }
        }
        Some(at)
    }

    /// Local, a file in `data/`: asks its collector for the synced bytes at the
    /// file's offset (the same bytes storage will hold there).
    async fn ask_collector(&mut self, ctx: &Ctx, f: &mut OpenFile) -> FromCollector {
        if !ctx.live_http
            || f.loc != Loc::Data
            || f.http_off
            || f.http_retry_at.is_some_and(|t| Instant::now() < t)
        {
            return FromCollector::Storage;
        }
        let Some(http) = self.http.as_mut() else {
            return FromCollector::Storage;
        };
        if !http.available() {
            f.via_http = false;
            return FromCollector::Storage;
        }
        let max = f.want.min(HTTP_MAX);
        match http
            .fetch_wait(
                &self.roots,
                &ctx.metrics,
                &ctx.topic,
                &f.name,
                f.offset,
                max,
                &ctx.wake,
            )
            .await
        {
            // Held at the collector until its next sync of the file (or empty
            // after the wait): the consumer is woken when the answer is in.
            Fetch::Waiting => {
                f.via_http = true;
                FromCollector::Idle
            }
            Fetch::Bytes(body) if body.is_empty() => {
                f.via_http = true;
                FromCollector::Idle
            }
            Fetch::Bytes(body) => {
                let s = scan(&body, f.offset);
                if s.frames.is_empty() {
                    // Whole frames only are served; never expected.
                    f.via_http = false;
                    f.http_retry_at = Some(Instant::now() + HTTP_NOT_NOW);
                    return FromCollector::Storage;
                }
                ctx.metrics.collector_http_reads.inc();
                f.via_http = true;
                f.stalled_since = None;
                f.stall_logged = false;
                f.chunk = body;
                f.chunk_base = f.offset;
                f.frames = s.frames.into();
                f.decoded.clear();
                FromCollector::Loaded
            }
            Fetch::NotOpen => {
                tracing::debug!(partition = %self.id, file = %f.name, offset = f.offset,
                    "the collector no longer serves the file; reading storage");
                f.via_http = false;
                f.http_off = true;
                FromCollector::Storage
            }
            Fetch::NotNow => {
                f.via_http = false;
                f.http_retry_at = Some(Instant::now() + HTTP_NOT_NOW);
                FromCollector::Storage
            }
            Fetch::Unreachable => {
                f.via_http = false;
                FromCollector::Storage
            }
        }
    }

    /// Storage has no new complete frame of a file in `data/`: the collector may.
    async fn collector_or_idle(&mut self, ctx: &Ctx, f: &mut OpenFile) -> Option<Step> {
        match self.ask_collector(ctx, f).await {
            FromCollector::Loaded => None,
            FromCollector::Idle | FromCollector::Storage => Some(Step::Idle),
        }
    }

    async fn refill(&mut self, ctx: &Ctx) -> Result<Option<Step>> {
        let mut f = self.file.take().expect("open file");
        let result = self.refill_file(ctx, &mut f).await;
        self.file = Some(f);
        result
    }

    /// Loads the next chunk of the current file. A file in `data/` is read from its
    /// collector while that serves it, else from storage (after checking it is
    /// still there and has grown); a sealed file from storage, through the chunk
    /// read ahead when there is one. `None` once a chunk with complete frames is
    /// loaded; otherwise the step to take.
    async fn refill_file(&mut self, ctx: &Ctx, f: &mut OpenFile) -> Result<Option<Step>> {
        if f.loc == Loc::Data && f.via_http {
            match self.ask_collector(ctx, f).await {
                FromCollector::Loaded => return Ok(None),
                FromCollector::Idle => return Ok(Some(Step::Idle)),
                FromCollector::Storage => {}
            }
        }
        if f.loc == Loc::Data {
            if let ControlFlow::Break(outcome) = self.check_data_file(ctx, f).await? {
                return Ok(outcome);
            }
        }
        let path = self.path(ctx, f);
        let Loaded {
            bytes,
            scan: s,
            decoded,
        } = match self.load_chunk(ctx, f, &path).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() && f.loc == Loc::Dir => {
                // A sealed file purged while we read it.
                let from = format!("{}/{}+{}", f.dir_minute, f.name, f.offset);
                self.report_purged(ctx, &from, "the next file");
                return Ok(Some(Step::FileDone));
            }
            Err(e) => return Err(e.into()),
        };
        if s.frames.is_empty() {
            return self.no_complete_frame(ctx, f, &path, &bytes).await;
        }
        if f.loc == Loc::Dir {
            self.read_ahead(ctx, f, &s, bytes.len() as u64);
        }
        f.chunk = bytes;
        f.chunk_base = f.offset;
        f.frames = s.frames.into();
        f.decoded = decoded.into();
        f.stalled_since = None;
        f.stall_logged = false;
        Ok(None)
    }

    /// Before reading a file in `data/` from storage: `Continue` when it has bytes
    /// past the reader's offset (read them), else `Break` with what
    /// [`Reader::refill_file`] returns: a chunk its collector served (`None`), or
    /// the step to take: wait (it is being written, or stalled), follow it into its
    /// minute directory, report it damaged (set aside in `quarantine/`) or skip it
    /// (purged).
    async fn check_data_file(
        &mut self,
        ctx: &Ctx,
        f: &mut OpenFile,
    ) -> Result<ControlFlow<Option<Step>>> {
        let path = self.path(ctx, f);
        match self.roots.stat(&path).await {
            Ok(st) if st.len <= f.offset => {
                // Caught up with storage: wait for the collector's next sync of
                // the file (a long-poll) rather than polling storage for it.
                let idle = match self.collector_or_idle(ctx, f).await {
                    None => return Ok(ControlFlow::Break(None)),
                    Some(step) => step,
                };
                let step = self.stalled(ctx, f, &path).await?.unwrap_or(idle);
                Ok(ControlFlow::Break(Some(step)))
            }
            Ok(_) => Ok(ControlFlow::Continue(())),
            Err(e) if e.is_not_found() => {
                let step = self.gone_from_data(ctx, f, &path).await?;
                Ok(ControlFlow::Break(Some(step)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A file is no longer at `path` in `data/`: renamed into a minute directory
    /// (same bytes: follow it), set aside as damaged (by its collector's recovery
    /// from `data/`, or by the seal of its minute from there), or purged.
    async fn gone_from_data(&mut self, ctx: &Ctx, f: &mut OpenFile, path: &str) -> Result<Step> {
        if self.locate(ctx, f).await? {
            tracing::debug!(partition = %self.id, file = %f.name, minute = %f.dir_minute,
                "followed the file into its minute directory");
            f.missing_since = None;
            return Ok(Step::Continue);
        }
        let sealed_as = format!(
            "{}/{}-{}-{}",
            Layout::minute_dir(View::Local, &ctx.topic, f.key.0),
            f.cluster,
            f.collector,
            f.name
        );
        for original in [path, sealed_as.as_str()] {
            let quarantined = Layout::quarantine_path(original);
            if self.roots.exists(&quarantined).await? {
                let reason = format!(
                    "it was moved to {quarantined} (by its collector's recovery or the worker): it is shorter than acknowledged or does not decode"
                );
                return self.damaged(ctx, f, path, reason);
            }
        }
        let since = *f.missing_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_secs(2) {
            return Ok(Step::Idle);
        }
        let from = format!("{}/{}+{}", f.dir_minute, f.name, f.offset);
        self.report_purged(ctx, &from, "the next file");
        Ok(Step::FileDone)
    }

    /// Reads `f.want` bytes at the reader's offset: from a sealed file through the
    /// chunk read ahead if it matches (decoded already), else read and decoded
    /// now; from a file in `data/` as raw bytes (decoded frame by frame later).
    async fn load_chunk(&mut self, ctx: &Ctx, f: &OpenFile, path: &str) -> StorageResult<Loaded> {
        if f.loc != Loc::Dir {
            let bytes = self
                .roots
                .read_range(path, f.offset..f.offset + f.want)
                .await?;
            return Ok(Loaded {
                scan: scan(&bytes, f.offset),
                bytes,
                decoded: Vec::new(),
            });
        }
        let ahead = match self.ahead.take() {
            Some(a) if a.path == path && a.offset == f.offset && a.want == f.want => Some(a),
            _ => None,
        };
        if let Some(mut a) = ahead {
            // Read early, an error may be stale (the file was not there yet,
            // storage was down then): errors come from reading now.
            if let Ok(Ok(loaded)) = (&mut a.task).await {
                return Ok(loaded);
            }
        }
        let range = f.offset..f.offset + f.want;
        if self.shares_chunks() {
            return ctx
                .chunks
                .load(
                    &ctx.metrics,
                    self.roots.clone(),
                    path.to_owned(),
                    range,
                    ctx.encoding,
                )
                .await;
        }
        load_sealed(self.roots.clone(), path.to_owned(), range, ctx.encoding).await
    }

    /// Whether this reader is one of several sub-partitions of a collector
    /// stream, whose sealed chunks go through [`SharedChunks`].
    pub(crate) fn shares_chunks(&self) -> bool {
        matches!(self.kind, Kind::Local { sub: (_, n), .. } if n > 1)
    }

    /// A chunk without one complete frame: read more (a frame larger than the
    /// chunk), wait for a file in `data/` to grow (asking its collector: `None`
    /// when it served a chunk), or, for a closed file read to its end without its
    /// trailer, report it truncated.
    async fn no_complete_frame(
        &mut self,
        ctx: &Ctx,
        f: &mut OpenFile,
        path: &str,
        bytes: &Bytes,
    ) -> Result<Option<Step>> {
        if bytes.len() as u64 == f.want && f.want < MAX_FRAME_BYTES {
            f.want = (f.want * 2).min(MAX_FRAME_BYTES);
            return Ok(Some(Step::Continue));
        }
        if f.loc == Loc::Data {
            // Storage shows more bytes than it can read (HDFS: the open last
            // block), or a frame is being written: ask the collector; a file
            // its collector has closed is final.
            return Ok(match self.collector_or_idle(ctx, f).await {
                None => None,
                Some(step) => Some(self.stalled(ctx, f, path).await?.unwrap_or(step)),
            });
        }
        if bytes.is_empty() && Codec::of_file(path) == Codec::Gzip {
            // A `.gz` file (sealed view of a gzip topic) has no trailer: its
            // end is the end of its last member.
            return Ok(Some(Step::FileDone));
        }
        if bytes.is_empty() {
            let len = self.roots.stat(path).await?.len;
            if let Some(step) = self.cut_back(ctx, f, path, len).await? {
                return Ok(Some(step));
            }
        }
        // A closed file read to its end without meeting a trailer, or with
        // bytes after its last complete frame: it was cut short.
        let reason = if bytes.is_empty() {
            "it ends without its close trailer: it was truncated".to_owned()
        } else {
            format!(
                "it ends with {} bytes that are not a complete frame, without its close trailer: it was truncated",
                bytes.len()
            )
        };
        self.damaged(ctx, f, path, reason).map(Some)
    }

    /// Starts reading and decoding what follows a closed file's chunk: the rest of
    /// the file, or after its trailer the next file of the minute (sealed views)
    /// or the collector's file of the next minute (local view).
    fn read_ahead(&mut self, ctx: &Ctx, f: &OpenFile, s: &Scan, read: u64) {
        let next = if s.trailer.is_none() {
            if read < f.want {
                return; // The end of the file without a trailer: nothing follows.
            }
            (self.path(ctx, f), s.valid_len, f.want)
        } else if let State::InMinute { minute, files } = &self.state {
            let Some(name) = files.front() else {
                return;
            };
            let dir = Layout::minute_dir(self.view, &ctx.topic, *minute);
            (format!("{dir}/{name}"), 0, READ_CHUNK)
        } else if let Kind::Local { .. } = self.kind {
            // A guess: a collector's next file is usually its first file of the
            // next minute. A wrong guess is never used (the path differs) and
            // costs one read.
            let Ok(next) = f.key.0.next() else {
                return;
            };
            let name = Layout::local_file_name(&f.cluster, &f.collector, next, 0, &ctx.topic);
            let dir = Layout::minute_dir(self.view, &ctx.topic, next);
            (format!("{dir}/{name}"), 0, READ_CHUNK)
        } else {
            return;
        };
        let (path, offset, want) = next;
        let (roots, range) = (self.roots.clone(), offset..offset + want);
        let task = if self.shares_chunks() {
            let (chunks, metrics, path) = (ctx.chunks.clone(), ctx.metrics.clone(), path.clone());
            let encoding = ctx.encoding;
            tokio::spawn(async move { chunks.load(&metrics, roots, path, range, encoding).await })
        } else {
            tokio::spawn(load_sealed(roots, path.clone(), range, ctx.encoding))
        };
        self.ahead = Some(Ahead {
            path,
            offset,
            want,
            task,
        });
    }
}

impl OpenFile {
    /// Moves the file to another minute directory (positions made from now on
    /// name it).
    fn set_dir_minute(&mut self, minute: Minute) {
        self.dir_minute = minute;
        self.at = None;
    }

    fn new(
        cluster: NodeName,
        collector: NodeName,
        name: impl Into<Arc<str>>,
        key: Key,
        dir_minute: Minute,
        loc: Loc,
    ) -> OpenFile {
        OpenFile {
            cluster,
            collector,
            name: name.into(),
            key,
            dir_minute,
            loc,
            offset: 0,
            want: READ_CHUNK,
            chunk: Bytes::new(),
            chunk_base: 0,
            frames: VecDeque::new(),
            decoded: VecDeque::new(),
            skip: 0,
            pending: VecDeque::new(),
            frame_offset: 0,
            delivered_in_frame: 0,
            frame_start: None,
            at: None,
            missing_since: None,
            via_http: false,
            http_off: false,
            http_retry_at: None,
            closed_check_at: None,
            stalled_since: None,
            stall_logged: false,
        }
    }
}

fn wanted(key: Key, after: Option<Key>, from: Minute) -> bool {
    match after {
        Some(after) => key > after,
        None => key.0 >= from,
    }
}

/// The key of a collector file name of `topic` (`None` for other names:
/// [`Layout::collector_file_in`]).
pub(crate) fn data_file_key(topic: &Topic, name: &str) -> Option<Key> {
    Layout::collector_file_in(topic, name).map(|parsed| (parsed.minute, parsed.seq))
}

/// The sealed-view partition of a file: FNV-1a 64 of its name, modulo `n`.
pub fn partition_of(local_name: &str, n: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in local_name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(n.max(1))) as u32
}
