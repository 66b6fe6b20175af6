//! The committer: one task that owns every open data file and turns queued calls
//! into durable frames.
//!
//! # Group commit
//! Connection tasks validate and encode entries, then queue a [`Submission`]. The
//! committer takes everything queued (waiting up to `group_commit_ms` for more while
//! a round is small and other calls are likely: more than one is queued, or the
//! last round had more than one), writes one zstd frame per topic, syncs every touched file
//! concurrently, and only then answers each submission: `OK` if every part of it is
//! durable, `TRY_LATER` otherwise. One frame and one sync serve all connections.
//!
//! # Minutes and files
//! Every record of a round gets the minute of the collector clock when the round
//! starts. At each minute boundary (a timer on the [`conduit_core::Clock`], so tests
//! advance it) every open file is closed with its trailer **in a background task**
//! (the dedup snapshot covering them first, then index, trailer, sync and close,
//! which on HDFS includes the NameNode's `complete`): rounds of the new minute go
//! on into new files meanwhile, so no acknowledgement waits for a close. The
//! watermark (the last minute all of whose files are closed) advances once they
//! are closed and is published in the heartbeat. Every byte of those files was
//! acknowledged only after its sync; a kill during the background close leaves
//! files without a trailer, which recovery closes as after any crash. Only one
//! such close runs at a time, and every other snapshot write waits for it (so
//! snapshots land in order). A file also closes when it reaches `max_file_bytes`.
//!
//! # Storage outages
//! Storage health is measured on the write path. A round's storage steps (create,
//! write, sync; each file's write and sync run in a task of their own) must finish
//! within `storage_deadline_ms`; a step that fails or misses it makes storage
//! unavailable (WARN naming the step, `storage_deadline_exceeded_total{step}`,
//! gauge `storage_healthy` 0): the file is abandoned at its acknowledged length
//! (a write still running goes on in the background and its file is repaired only
//! once it has ended) and the round's frames for that topic go to the local spool
//! instead (same relative paths, same format, fsynced before the ack). While
//! storage is unavailable every round goes to the spool; a probe each second
//! writes, syncs and closes a small file of its own (a listing would succeed with
//! a NameNode up and no DataNode, or on a full disk) and, once that works, new
//! rounds go to storage again at once while a background pass repairs the
//! abandoned files (deleted if nothing in them was acknowledged, else cut back to
//! their acknowledged length and closed, each bounded in time) and replays the
//! spooled files in minute order at a bounded rate, under the names they were
//! given when spooled (so each event keeps its arrival minute, and a replay
//! interrupted by a crash is redone, not duplicated). The watermark never passes a
//! minute that still has spooled or abandoned files. Without a spool directory, or
//! with the spool full (`spool_max_bytes`), the affected calls get `TRY_LATER`:
//! nothing is dropped; without a spool, calls arriving while storage is
//! unavailable get `TRY_LATER` at once without touching storage, so a client
//! retrying fast does not leave a new file per refused call.
//!
//! # Recovery
//! At start (and, in the background, for files abandoned during an outage once
//! storage is back) every
//! unclosed file of this collector is closed, its torn tail cut. Nothing it
//! acknowledged is ever cut: before closing a file the committer saves its
//! acknowledged length in the ledger of closed files (`crate::ledger`, saved with
//! the dedup snapshot); a file that would lose any of those bytes, or that does not
//! decode, is moved to `quarantine/` untouched instead (ERROR log, counter
//! `files_quarantined`). A storage file abandoned in a round is noted in the same
//! ledger with the length it must be cut back to, and that snapshot is written
//! (to the spool: storage is failing) **before the round is answered**; a crash
//! before the background repair leaves recovery the length to cut the file to, so
//! frames of the failed round that landed late are not kept next to their
//! spooled copy or the client's retry. Without a spool the length is saved once
//! storage takes writes again, before the repair starts (a crash during the
//! outage keeps those late frames: the refused calls' retries are then stored
//! twice, nothing is lost).
//!
//! # Open files and many topics
//! At most `max_open_files` data files are open (storage and spool). Before a round
//! opens more, the least recently written files not written in the round are closed
//! (a topic written again later gets a new numbered file). A round opens at most
//! `max_new_files_per_round` new files, handed out to the calls that need them in
//! turn; a call with more new topics than that keeps the rest for the next rounds
//! (it is answered once all of it is durable), while other calls are committed in
//! every round. Only when every open file is in use by the round itself do the calls
//! needing another get `TRY_LATER` (reason `open_files`). Running out of
//! descriptors (`EMFILE`/`ENFILE`) is not a storage outage: the parts that needed a
//! descriptor get `TRY_LATER` (`open_files`), idle files are closed and the limit is
//! lowered until the next minute.
//!
//! # Idempotent batches
//! `LogBatch` calls carry (publisher id, sequence) and the connection adds the
//! digest of their content ([`BatchKey`]). The committer consults the
//! [`DedupTable`] (a replay of a durable batch is acknowledged without writing; a
//! partially durable one writes only its missing parts; a different batch under a
//! known id and sequence is stored and counted as a conflict) and writes, after
//! every data frame, the marks naming its batches with their digests and record
//! ranges (`docs/format.md` §3.3), so the table can be rebuilt after a crash. At
//! close, a file gets the index of its batches and a trailer with the CRC-32C of
//! its bytes (§3.2, §3.5).
//! A batch spread over rounds has its durable parts recorded in the table after
//! each round, and a retry arriving meanwhile waits for the original's answer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::format::{
    close_recovered, encode_marks, is_closed, BatchMark, Encoding, FileBatch, FrameEncoder,
    PartMark,
};
use conduit_core::layout::Layout;
use conduit_core::tree;
use conduit_core::{
    ratelimit, CreateMode, FileWriter, Minute, NodeName, SharedClock, SharedStorage, Storage,
    StorageError, Topic, View,
};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dedup::{BatchKey, BatchState, DedupTable};
use crate::files::{Abandoned, OpenFile, Target};
use crate::ledger::{self, Ledger, Pruning, Verdict};
use crate::metrics::Metrics;
use crate::open::OpenFiles;
use crate::queues::Reservation;
use crate::reasons::TryLaterReason;

/// Largest round the committer gathers before committing (uncompressed bytes).
const MAX_ROUND_BYTES: usize = 8 << 20;
/// A round smaller than this waits up to `group_commit_ms` for more calls.
const SMALL_ROUND_BYTES: usize = 256 << 10;
/// How often an unhealthy storage is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the background repair of one abandoned file may take (HDFS lease
/// recovery waits up to 60 s) before it is given up and tried again later.
const REPAIR_BOUND: Duration = Duration::from_secs(90);
/// Spool replay rate: a replayed file is followed by a pause that keeps the copy
/// under this many bytes a second, so replay never crowds out new commits.
const REPLAY_BYTES_PER_SEC: u64 = 32 << 20;
/// The steps of a commit round's storage write, as `storage_deadline_exceeded`
/// names them (the index is what a write task records in its `AtomicU8`).
const WRITE_STEPS: [&str; 2] = ["write", "sync"];
/// Files closed (trailer and sync) at once at a minute roll, an eviction or
/// shutdown.
const CLOSE_CONCURRENCY: usize = 64;

/// The entries of one call for one topic, already encoded as records.
#[derive(Debug)]
pub struct Part {
    /// The topic.
    pub topic: Topic,
    /// The topic's record encoding.
    pub encoding: Encoding,
    /// Index of this part in its call (order of first appearance of the topic).
    pub index: u16,
    /// Encoded records, each ending in `\n` (empty when `frame` is set).
    pub records: Vec<u8>,
    /// The records already compressed into a frame by the connection task (large
    /// parts are compressed there so compression runs on every core).
    pub frame: Option<Bytes>,
    /// Size of the encoded records (with or without `frame`).
    pub record_bytes: u64,
    /// Number of records.
    pub count: u64,
    /// Payload bytes (before encoding), for metrics.
    pub payload_bytes: u64,
}

/// What a call gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every entry is durable.
    Durable,
    /// Not stored (or not all of it): the caller should retry later.
    TryLater(TryLaterReason),
}

/// One call queued for the committer.
#[derive(Debug)]
pub struct Submission {
    /// One part per topic.
    pub parts: Vec<Part>,
    /// Number of parts of the whole call (marks name `part of parts`).
    pub parts_total: u16,
    /// Publisher id, sequence and content digest of an idempotent `LogBatch`.
    pub batch: Option<BatchKey>,
    /// The call's bytes in the topic queues, released when it is answered.
    pub queued: Reservation,
    /// When the call arrived.
    pub arrived: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Outcome>,
}

impl Submission {
    fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.record_bytes as usize).sum()
    }

    fn answer(self, outcome: Outcome, metrics: &Metrics) {
        self.queued.release();
        metrics
            .ack_seconds
            .observe(self.arrived.elapsed().as_secs_f64());
        if let Outcome::TryLater(reason) = outcome {
            metrics
                .try_later
                .get_or_create(&Metrics::label("reason", reason.as_str()))
                .inc();
        }
        // The connection may be gone; the data is durable either way.
        let _ = self.reply.send(outcome);
    }
}

/// What the committer publishes for the heartbeat and `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    /// Last minute all of whose files are closed in storage.
    pub watermark: Option<Minute>,
    /// Bytes in the spool.
    pub spooled_bytes: u64,
    /// Whether storage accepted the last write.
    pub storage_healthy: bool,
    /// Set once the committer has closed everything at shutdown.
    pub stopped: bool,
}

/// Settings the committer needs.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Cluster name.
    pub cluster: NodeName,
    /// Collector id.
    pub collector: NodeName,
    /// Group-commit window.
    pub group_commit: Duration,
    /// zstd level.
    pub zstd_level: i32,
    /// File size at which a file is closed.
    pub max_file_bytes: u64,
    /// Spool bound.
    pub spool_max_bytes: u64,
    /// Topic settings (encodings of files found at recovery).
    pub config: Arc<conduit_core::Config>,
    /// Where the synced bytes of open storage files are published for the HTTP
    /// open-file endpoint.
    pub open: Arc<OpenFiles>,
    /// Most data files open at once.
    pub max_open_files: usize,
    /// Most new data files one round opens.
    pub max_new_files_per_round: usize,
    /// How long a round's storage steps (create, write, sync) may take before
    /// storage counts as unavailable and the round goes to the spool.
    pub storage_deadline: Duration,
}

/// A call of the round being committed, and what became of its parts.
struct RoundCall {
    /// The call, answered once the round is durable or has failed.
    sub: Submission,
    /// Indexes of its parts made durable in this round (a batch that is answered
    /// `TRY_LATER` remembers them, so that its retry writes only the others).
    durable_parts: Vec<u16>,
    /// Why some part of it is not durable: it is answered `TRY_LATER`.
    failed: Option<TryLaterReason>,
    /// Retries of the same idempotent batch queued in the same round: not written,
    /// answered like this call.
    twins: Vec<Submission>,
    /// Parts put off to a later round (no new file for them in this one).
    later: Vec<Part>,
}

impl RoundCall {
    /// A call of the round, nothing known yet about its parts.
    fn new(sub: Submission) -> RoundCall {
        RoundCall {
            sub,
            durable_parts: Vec::new(),
            failed: None,
            twins: Vec::new(),
            later: Vec::new(),
        }
    }

    /// Fails the call with `reason` (the first reason sticks).
    fn fail(&mut self, reason: TryLaterReason) {
        self.failed.get_or_insert(reason);
    }
}

/// How far a topic's frames got in the round being committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Compressed, not written yet.
    Framed,
    /// Written to the round's target; durable once synced.
    Written,
    /// Storage refused the write or the sync: the spool may take them.
    Refused,
    /// Synced (in the round's target or in the spool).
    Durable,
    /// Not durable: every call with a part in them is answered `TRY_LATER`.
    Failed,
}

/// A topic's frames in the current round, kept until the round is answered so they
/// can go to the spool if storage fails.
struct TopicRound {
    /// The topic (its file is found by it).
    topic: Topic,
    /// Its record encoding (a new file needs it for its trailer).
    encoding: Encoding,
    /// Frames to append, in order: parts compressed by their connection first,
    /// then one frame for every small part.
    chunks: Vec<Chunk>,
    /// Small parts' records, compressed by the committer into the last chunk.
    records: Vec<u8>,
    /// Marks of the small parts (record ranges within the committer's frame).
    small_marks: Vec<PartMark>,
    /// Records in the small parts.
    small_count: u64,
    /// Records in every part (the `events` metric once durable).
    count: u64,
    /// Payload bytes in every part (the `bytes` metric once durable).
    payload_bytes: u64,
    /// (index in the round's calls, part index) of every part in these frames:
    /// whose answer depends on them.
    members: Vec<(usize, u16)>,
    /// How far they got.
    stage: Stage,
    /// Why they failed, when it is not storage's fault (no file descriptor).
    failure: Option<TryLaterReason>,
}

impl TopicRound {
    /// Bytes its chunks add to a file.
    fn len(&self) -> u64 {
        self.chunks.iter().map(Chunk::len).sum()
    }
}

/// Every topic of the round being committed, in order of first appearance.
#[derive(Default)]
struct RoundTopics {
    /// The topics, written in this order.
    topics: Vec<TopicRound>,
    /// Where each topic is in `topics` (open files are found by topic).
    index_of: HashMap<Topic, usize>,
}

impl RoundTopics {
    fn get_mut(&mut self, topic: &Topic) -> Option<&mut TopicRound> {
        let i = *self.index_of.get(topic)?;
        Some(&mut self.topics[i])
    }

    fn stage_of(&self, topic: &Topic) -> Option<Stage> {
        self.index_of.get(topic).map(|&i| self.topics[i].stage)
    }

    /// The topic's entry, created empty at its first part.
    fn entry(&mut self, topic: &Topic, encoding: Encoding) -> &mut TopicRound {
        if let Some(&i) = self.index_of.get(topic) {
            return &mut self.topics[i];
        }
        let i = self.topics.len();
        self.index_of.insert(topic.clone(), i);
        self.topics.push(TopicRound {
            topic: topic.clone(),
            encoding,
            chunks: Vec::new(),
            records: Vec::new(),
            small_marks: Vec::new(),
            small_count: 0,
            count: 0,
            payload_bytes: 0,
            members: Vec::new(),
            stage: Stage::Framed,
            failure: None,
        });
        &mut self.topics[i]
    }
}

/// One data frame and the marks frame written after it, to append to a topic's
/// file.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The data frame.
    pub frame: Bytes,
    /// The batches whose records it holds.
    pub marks: Vec<PartMark>,
    /// `marks` encoded (`format::encode_marks`), possibly with no entries.
    pub marks_frame: Bytes,
    /// Records in the frame.
    pub count: u64,
    /// Their decompressed size.
    pub record_bytes: u64,
}

impl Chunk {
    fn new(frame: Bytes, marks: Vec<PartMark>, count: u64, record_bytes: u64) -> Chunk {
        Chunk {
            marks_frame: encode_marks(&marks),
            frame,
            marks,
            count,
            record_bytes,
        }
    }

    fn len(&self) -> u64 {
        (self.frame.len() + self.marks_frame.len()) as u64
    }
}

/// The committer.
pub struct Engine {
    settings: EngineSettings,
    storage: SharedStorage,
    spool: Option<SharedStorage>,
    clock: SharedClock,
    metrics: Metrics,
    encoder: FrameEncoder,
    /// Open files by topic.
    files: HashMap<Topic, OpenFile>,
    /// Next sequence number per (topic, minute).
    seqs: HashMap<(Topic, Minute), u32>,
    /// Minute of the files being written.
    current_minute: Minute,
    /// Whether storage accepted the last attempt.
    healthy: bool,
    /// Closed spool files waiting for replay: (minute, path) -> (encoding, length).
    spooled: BTreeMap<(Minute, String), (Encoding, u64)>,
    /// Bytes in the spool (closed and open files).
    spool_bytes: u64,
    /// Storage files whose writer failed.
    abandoned: Vec<Abandoned>,
    dedup: DedupTable,
    /// A storage probe running in the background while storage is unhealthy.
    probe: Option<tokio::task::JoinHandle<bool>>,
    /// Writes abandoned at the deadline, still running in the background, by the
    /// path of their file: its repair waits until they are done.
    stuck: HashMap<String, tokio::task::JoinHandle<()>>,
    /// The background pass repairing abandoned files and replaying the spool.
    repair: Option<tokio::task::JoinHandle<RepairReport>>,
    /// Whether the dedup table changed since the last snapshot.
    dedup_dirty: bool,
    /// Acknowledged lengths of the closed files still in `data/`, saved with the
    /// dedup snapshot: what recovery must never cut (`crate::ledger`); and of
    /// the abandoned files, what recovery must cut back to.
    ledger: Ledger,
    /// Whether an abandoned file's length is in the ledger but in no snapshot
    /// yet ([`Engine::save_abandoned`]).
    abandoned_unsaved: bool,
    /// The background listing that drops ledger entries of moved files.
    pruning: Pruning,
    status: watch::Sender<EngineStatus>,
    /// Number of the round being committed (files remember their last).
    round: u64,
    /// Calls in the last round gathered: whether `group_commit_ms` is worth
    /// waiting for (see `gather`).
    last_round_calls: usize,
    /// Files open at most now: `max_open_files`, lowered after running out of
    /// descriptors until the next minute.
    open_limit: usize,
    /// Whether an operation ran out of descriptors since the last round ended.
    fd_pressure: bool,
    /// Calls with parts put off to a later round, oldest first.
    deferred: Vec<RoundCall>,
    /// The files of the minute last rolled, being closed in the background so that
    /// no acknowledgement waits for their trailers, syncs and (on HDFS)
    /// `complete` calls ([`Engine::roll`]).
    rolling: Option<Rolling>,
}

/// Files a roll closes in the background: what is known of each, and the task
/// that writes the dedup snapshot covering them, then closes them (results in
/// the order of `files`).
struct Rolling {
    files: Vec<Closing>,
    task: tokio::task::JoinHandle<RollOutcome>,
    /// Whether its snapshot is written to the spool (storage unhealthy then).
    snapshot_in_spool: bool,
}

/// What the background close of a roll did.
struct RollOutcome {
    /// The dedup snapshot's write failed (it is written again at the next chance).
    snapshot_failed: Option<StorageError>,
    /// Each file's close, in the order of [`Rolling::files`].
    closed: Vec<conduit_core::StorageResult<u64>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("collector", &self.settings.collector)
            .field("current_minute", &self.current_minute)
            .field("open_files", &self.files.len())
            .field("open_limit", &self.open_limit)
            .field("deferred_calls", &self.deferred.len())
            .field("healthy", &self.healthy)
            .finish()
    }
}

fn now_secs(clock: &SharedClock) -> i64 {
    clock.now().timestamp()
}

impl Engine {
    /// Creates the committer and runs crash recovery: closes every file a previous
    /// run left open (cutting torn tails), rebuilds the dedup table, and inventories
    /// the spool.
    pub async fn start(
        settings: EngineSettings,
        storage: SharedStorage,
        spool: Option<SharedStorage>,
        clock: SharedClock,
        metrics: Metrics,
    ) -> anyhow::Result<(Engine, watch::Receiver<EngineStatus>)> {
        let encoder = FrameEncoder::new(settings.zstd_level)?;
        let (status, status_rx) = watch::channel(EngineStatus {
            watermark: None,
            spooled_bytes: 0,
            storage_healthy: true,
            stopped: false,
        });
        let current_minute = clock.minute();
        let open_limit = settings.max_open_files;
        let mut engine = Engine {
            settings,
            storage,
            spool,
            clock,
            metrics,
            encoder,
            files: HashMap::new(),
            seqs: HashMap::new(),
            current_minute,
            healthy: true,
            spooled: BTreeMap::new(),
            spool_bytes: 0,
            abandoned: Vec::new(),
            dedup: DedupTable::default(),
            probe: None,
            stuck: HashMap::new(),
            repair: None,
            dedup_dirty: false,
            ledger: Ledger::default(),
            abandoned_unsaved: false,
            pruning: Pruning::default(),
            status,
            round: 0,
            last_round_calls: 0,
            open_limit,
            fd_pressure: false,
            deferred: Vec::new(),
            rolling: None,
        };
        engine.recover().await?;
        engine.publish_status();
        Ok((engine, status_rx))
    }

    fn dedup_path(&self) -> String {
        Layout::checkpoint_path(
            "collector",
            &format!(
                "{}.{}.dedup",
                self.settings.cluster, self.settings.collector
            ),
        )
        .unwrap_or_else(|_| "system/checkpoints/collector/dedup.json".to_string())
    }

    fn my_dir(&self, topic: &Topic) -> String {
        Layout::collector_dir(topic, &self.settings.collector)
    }

    /// Where the worker moves this collector's file `path` (`data/<topic>/<me>/<name>`)
    /// in the local view when the file's own minute is not sealed yet.
    fn local_view_path(&self, path: &str) -> Option<String> {
        let at = Layout::parse_path(path).ok()?;
        let file = Layout::collector_file_in(&at.topic, at.file.as_deref()?)?;
        let local = Layout::local_file_name(
            &self.settings.cluster,
            &self.settings.collector,
            file.minute,
            file.seq,
            &at.topic,
        );
        Some(format!(
            "{}/{local}",
            Layout::minute_dir(View::Local, &at.topic, file.minute)
        ))
    }

    /// Closes what a previous run left open and rebuilds in-memory state.
    async fn recover(&mut self) -> anyhow::Result<()> {
        let now = now_secs(&self.clock);
        let dedup_path = self.dedup_path();
        let mut ledgers = Vec::new();
        for store in [Some(self.storage.clone()), self.spool.clone()]
            .into_iter()
            .flatten()
        {
            conduit_core::storage::delete_temp_siblings(store.as_ref(), &dedup_path).await?;
            match store.read(&dedup_path).await {
                Ok(bytes) => match DedupTable::from_json(&bytes) {
                    Ok((table, saved)) => {
                        self.dedup.merge(table);
                        ledgers.push(saved);
                    }
                    Err(e) => {
                        tracing::warn!(path = %dedup_path, root = store.root(), error = %e, "ignoring unreadable dedup snapshot")
                    }
                },
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.ledger = Ledger::from_saved(ledgers);
        // Storage: close files left open, learn sequence numbers in use.
        let storage = self.storage.clone();
        let mut present = std::collections::HashSet::new();
        let batches = self
            .recover_tree(&storage, Target::Storage, &mut present)
            .await?;
        self.dedup.absorb_marks(&batches, now);
        if let Some(spool) = self.spool.clone() {
            let batches = self
                .recover_tree(&spool, Target::Spool, &mut present)
                .await?;
            self.dedup.absorb_marks(&batches, now);
        }
        // Files the worker moved meanwhile need no protection any more.
        self.ledger.retain_present(&present);
        if !self.spooled.is_empty() {
            self.healthy = false;
        }
        self.metrics.spool_bytes.set(self.spool_bytes as i64);
        self.dedup_dirty = true;
        self.save_dedup().await;
        Ok(())
    }

    /// Whether the spool holds a file at `path` (storage's file there is then
    /// its replay copy: names are never used in both).
    async fn in_spool(&self, path: &str) -> anyhow::Result<bool> {
        let Some(spool) = &self.spool else {
            return Ok(false);
        };
        match spool.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Recovers every file of this collector under `data/` of one store, and adds
    /// the paths of those still there to `present`.
    async fn recover_tree(
        &mut self,
        store: &SharedStorage,
        target: Target,
        present: &mut std::collections::HashSet<String>,
    ) -> anyhow::Result<Vec<FileBatch>> {
        let mut batches = Vec::new();
        let now = self.clock.minute();
        for topic in tree::topics(store.as_ref(), View::Collector).await? {
            if target == Target::Storage {
                self.learn_moved_seqs(store.as_ref(), &topic, now).await?;
            }
            let dir = self.my_dir(&topic);
            for entry in store.list_or_empty(&dir).await? {
                if entry.is_dir {
                    continue;
                }
                if Layout::is_tmp(&entry.name) {
                    // A recovery copy that never got renamed: the original is intact.
                    store.delete(&entry.path, false).await?;
                    continue;
                }
                // Only this topic's own files (docs/format.md §2): a foreign file in
                // the directory is neither recovered nor a source of sequence numbers.
                let Some(name) = Layout::collector_file_in(&topic, &entry.name) else {
                    tracing::warn!(path = %entry.path, "ignoring a file that is not a collector file of its directory's topic");
                    continue;
                };
                let next = self.seqs.entry((topic.clone(), name.minute)).or_insert(0);
                *next = (*next).max(name.seq + 1);
                let encoding = self.settings.config.topic(&topic).encoding;
                let closed = is_closed(store.as_ref(), &entry.path, entry.len)
                    .await
                    .unwrap_or(false);
                let mut len = entry.len;
                if target == Target::Storage && !closed && self.in_spool(&entry.path).await? {
                    // A replay copy the previous run did not finish: never a
                    // file of its own (its events are all in the spool file,
                    // replayed again), so not closed, which would let the
                    // worker seal its part before the whole is copied again.
                    store.delete(&entry.path, false).await?;
                    tracing::info!(
                        path = %entry.path,
                        bytes = entry.len,
                        "deleted an unfinished replay copy of a spool file; the spool file is replayed again"
                    );
                    continue;
                }
                let abandoned = match target {
                    Target::Storage => self.ledger.abandoned_len(&entry.path),
                    Target::Spool => None,
                };
                if closed && abandoned.is_some() {
                    // Repaired before the crash, but no snapshot said so yet.
                    self.ledger.repaired(&entry.path);
                }
                if !closed {
                    let recovered = match abandoned {
                        Some(acked_len) => {
                            let file = Abandoned {
                                path: entry.path.clone(),
                                minute: name.minute,
                                encoding,
                                acked_len,
                            };
                            self.recover_abandoned(store.as_ref(), &file).await?
                        }
                        None => {
                            self.close_unclosed(store.as_ref(), &entry.path, encoding, None)
                                .await?
                        }
                    };
                    let Some(recovery) = recovered else {
                        continue;
                    };
                    tracing::info!(
                        path = %entry.path,
                        root = store.root(),
                        records = recovery.records,
                        dropped_bytes = recovery.dropped_bytes,
                        "closed a file left open by a previous run"
                    );
                    len = recovery.closed_len();
                    batches.extend(recovery.batches);
                }
                present.insert(entry.path.clone());
                if target == Target::Spool {
                    self.spool_bytes += len;
                    self.spooled
                        .insert((name.minute, entry.path.clone()), (encoding, len));
                }
            }
        }
        Ok(batches)
    }

    /// Takes note of the sequence numbers this collector already used in
    /// `minute` for files the worker has since moved into the local view: a run
    /// stopped earlier in the same minute closed its file, the worker moved it at
    /// once (a closed file does not wait for the minute's end), and `data/` no
    /// longer shows its name. This run's next file of `minute` must take a higher
    /// number, or its local-view name would exist already and the worker could not
    /// move it. Only `minute` (the current one at startup) needs this: a file of
    /// a later minute is always this run's, and the files of an earlier minute
    /// were all created before this run.
    async fn learn_moved_seqs(
        &mut self,
        store: &dyn Storage,
        topic: &Topic,
        minute: Minute,
    ) -> anyhow::Result<()> {
        let dir = Layout::minute_dir(View::Local, topic, minute);
        for entry in store.list_or_empty(&dir).await? {
            let Some(name) = Layout::local_file_in(topic, &entry.name) else {
                continue;
            };
            if name.cluster == self.settings.cluster
                && name.collector == self.settings.collector
                && name.minute == minute
            {
                let next = self.seqs.entry((topic.clone(), minute)).or_insert(0);
                *next = (*next).max(name.seq + 1);
            }
        }
        Ok(())
    }

    /// Closes an unclosed file of this collector in `store` without cutting any
    /// byte it acknowledged (`crate::ledger`): its acknowledged length is the
    /// ledger's, or `limit` for a file whose writer failed (then bytes past `limit`
    /// are cut). A file that would lose acknowledged bytes, or whose frames do not
    /// decode, is quarantined instead: `None`.
    async fn close_unclosed(
        &mut self,
        store: &dyn Storage,
        path: &str,
        encoding: Encoding,
        limit: Option<u64>,
    ) -> anyhow::Result<Option<conduit_core::format::Recovery>> {
        let acked_len = limit.or_else(|| self.ledger.acked_len(path));
        match repair(store, path, encoding, acked_len, limit).await? {
            Repaired::Closed(recovery) => Ok(Some(recovery)),
            Repaired::Deleted => Ok(None),
            Repaired::Quarantined { to, reason } => {
                self.quarantined(store.root(), path, &to, &reason);
                Ok(None)
            }
        }
    }

    /// Recovers a storage file abandoned before a crash and not repaired since
    /// (`crate::ledger`, "Abandoned files"): cut back to its acknowledged length
    /// and closed, or deleted if that is 0, as the background repair does.
    /// `None` when nothing of it is left in `data/`.
    async fn recover_abandoned(
        &mut self,
        store: &dyn Storage,
        file: &Abandoned,
    ) -> anyhow::Result<Option<conduit_core::format::Recovery>> {
        let repaired = repair_abandoned(store, file).await?;
        self.ledger.repaired(&file.path);
        Ok(match repaired {
            Repaired::Closed(recovery) => {
                tracing::info!(
                    path = %file.path,
                    acked_len = file.acked_len,
                    dropped_bytes = recovery.dropped_bytes,
                    "cut a file abandoned before the restart back to its acknowledged length (the ledger's abandoned entry)"
                );
                Some(recovery)
            }
            Repaired::Deleted => {
                tracing::info!(
                    path = %file.path,
                    "deleted a file abandoned before the restart that held nothing acknowledged"
                );
                None
            }
            Repaired::Quarantined { to, reason } => {
                self.quarantined(store.root(), &file.path, &to, &reason);
                None
            }
        })
    }

    /// Accounts for a file [`repair`] moved to `quarantine/`.
    fn quarantined(&mut self, root: &str, path: &str, to: &str, reason: &str) {
        self.metrics.files_quarantined.inc();
        self.ledger.forget(path);
        self.dedup_dirty = true;
        tracing::error!(
            path,
            quarantined_to = %to,
            root,
            reason,
            "a data file lost acknowledged bytes or does not decode; it was moved aside untouched, not cut (see docs/operations.md, \"Quarantined files\")"
        );
    }

    /// Records in the ledger that these files are about to be closed; the next
    /// [`Engine::save_dedup`] saves them (before the files are closed).
    fn note_closing<'a>(&mut self, files: impl IntoIterator<Item = &'a OpenFile>) {
        for file in files {
            if self.ledger.closing(&file.path, file.acked_len) {
                self.dedup_dirty = true;
            }
        }
    }

    /// Starts or applies the background listing that drops the ledger entries of
    /// files the worker has moved; files of the minute before `now_minute` were
    /// just closed and are left alone.
    async fn prune_ledger(&mut self, now_minute: Minute) {
        let stores = [Some(self.storage.clone()), self.spool.clone()]
            .into_iter()
            .flatten()
            .collect();
        let recent_from = now_minute.prev().unwrap_or(now_minute);
        let before = self.ledger.len();
        self.pruning
            .tick(&mut self.ledger, stores, |path| {
                let name = path.rsplit('/').next().unwrap_or(path);
                Layout::parse_collector_file_name(name).map_or(true, |n| n.minute >= recent_from)
            })
            .await;
        if self.ledger.len() != before {
            self.dedup_dirty = true;
        }
    }

    async fn save_dedup(&mut self) {
        // One snapshot write at a time, in order: a roll's (in the background)
        // must not land after a newer one.
        self.finish_rolling().await;
        if !self.dedup_dirty {
            return;
        }
        self.dedup.expire(now_secs(&self.clock));
        let body = Bytes::from(self.dedup.to_json(self.ledger.to_saved()));
        let path = self.dedup_path();
        let store = if self.healthy {
            Some(self.storage.clone())
        } else {
            self.spool.clone()
        };
        let Some(store) = store else { return };
        match store.write_atomic(&path, body).await {
            Ok(()) => {
                // It holds every abandoned file's length too.
                self.dedup_dirty = false;
                self.abandoned_unsaved = false;
            }
            Err(e) if e.is_too_many_open_files() => {
                self.ran_out_of_descriptors("dedup_snapshot", &e)
            }
            Err(e) => {
                self.storage_error("dedup_snapshot");
                tracing::warn!(error = %e, "cannot write the dedup snapshot; retrying at the next roll")
            }
        }
    }

    /// Counts and logs (rate-limited) an operation that failed for want of file
    /// descriptors; the round ends by closing idle files
    /// ([`Engine::relieve_descriptors`]). Storage is not marked unhealthy.
    fn ran_out_of_descriptors(&mut self, op: &'static str, error: &StorageError) {
        self.fd_pressure = true;
        self.metrics
            .fd_exhausted
            .get_or_create(&Metrics::label("op", op))
            .inc();
        if let Some(suppressed) = ratelimit::allow("collector_out_of_descriptors") {
            tracing::warn!(
                op,
                error = %error,
                open_files = self.files.len(),
                max_open_files = self.settings.max_open_files,
                suppressed,
                "too many open files: answering TRY_LATER (open_files) and closing idle data files; lower collector.max_open_files or raise the process's open-file limit"
            );
        }
    }

    fn storage_error(&self, op: &'static str) {
        self.metrics
            .storage_errors
            .get_or_create(&Metrics::label("op", op))
            .inc();
    }

    fn watermark(&self) -> Option<Minute> {
        let mut mark = self.current_minute.prev().ok();
        let held: Option<Minute> = self
            .spooled
            .keys()
            .map(|(m, _)| *m)
            .chain(self.abandoned.iter().map(|a| a.minute))
            .chain(
                self.rolling
                    .iter()
                    .flat_map(|r| r.files.iter().map(|f| f.minute)),
            )
            .chain(
                self.files
                    .values()
                    .filter(|f| f.target == Target::Spool)
                    .map(|f| f.minute),
            )
            .min();
        if let Some(held) = held {
            let before = held.prev().ok();
            mark = match (mark, before) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
        mark
    }

    fn publish_status(&self) {
        let watermark = self.watermark();
        if let Some(w) = watermark {
            self.metrics.watermark_seconds.set(w.start().timestamp());
        }
        self.metrics.spool_bytes.set(self.spool_bytes as i64);
        self.metrics.open_files.set(self.files.len() as i64);
        self.metrics.storage_healthy.set(i64::from(self.healthy));
        self.status.send_if_modified(|s| {
            let next = EngineStatus {
                watermark,
                spooled_bytes: self.spool_bytes,
                storage_healthy: self.healthy,
                stopped: s.stopped,
            };
            if *s != next {
                *s = next;
                true
            } else {
                false
            }
        });
    }

    /// Runs until every sender of `rx` is gone, then closes everything.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let clock = self.clock.clone();
            let boundary = clock.sleep_until(self.current_minute.end());
            // Calls spread over rounds keep the committer busy: it commits the next
            // round at once, with whatever else has arrived meanwhile.
            let busy = !self.deferred.is_empty();
            tokio::select! {
                biased;
                first = rx.recv(), if !busy => match first {
                    Some(first) => {
                        let round = self.gather(first, &mut rx).await;
                        self.commit(round).await;
                    }
                    None => break,
                },
                _ = boundary => self.roll().await,
                outcome = rolled(&mut self.rolling), if self.rolling.is_some() => {
                    self.apply_rolled(outcome);
                    self.publish_status();
                }
                _ = probe.tick() => self.maintain().await,
                () = std::future::ready(()), if busy => {
                    let mut round = Vec::new();
                    take_queued(&mut rx, &mut round, 0);
                    self.commit(round).await;
                }
            }
        }
        self.shutdown().await;
    }

    async fn gather(
        &mut self,
        first: Submission,
        rx: &mut mpsc::Receiver<Submission>,
    ) -> Vec<Submission> {
        let bytes = first.bytes();
        let mut round = vec![first];
        let mut bytes = take_queued(rx, &mut round, bytes);
        // Waiting only pays when other calls may come: more than one is queued
        // now, or the last round had more than one. A lone client (one call at
        // a time, as an adaptive-linger publisher sends when idle) would only
        // wait out the window on every call.
        let concurrent = round.len() > 1 || self.last_round_calls > 1;
        if bytes < SMALL_ROUND_BYTES && !self.settings.group_commit.is_zero() && concurrent {
            let deadline = tokio::time::Instant::now() + self.settings.group_commit;
            while bytes < SMALL_ROUND_BYTES {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => {
                        bytes += s.bytes();
                        round.push(s);
                    }
                    _ => break,
                }
            }
        }
        self.last_round_calls = round.len();
        round
    }

    /// Commits one round: collects it into frames per topic, writes them (with
    /// their batch marks), syncs every touched file, falls back to the spool for
    /// what storage refused, answers every call, and closes the files that reached
    /// `max_file_bytes`.
    async fn commit(&mut self, round: Vec<Submission>) {
        if self.clock.minute() > self.current_minute {
            self.roll().await;
        }
        self.round += 1;
        let now = now_secs(&self.clock);
        let fresh = self.deduplicate(round);
        let mut calls = self.resume_deferred(fresh);
        if !self.healthy && self.spool.is_none() {
            // Storage failed and nothing else can take the calls: refuse them
            // without touching storage, so a client retrying every few
            // milliseconds does not leave a new file per call; the probe says when
            // storage takes writes again.
            for call in calls.iter_mut() {
                call.fail(TryLaterReason::StorageUnavailable);
            }
            self.answer(calls, &RoundTopics::default(), now);
            self.publish_status();
            return;
        }
        // Storage, or the spool while storage is unhealthy.
        let target = if self.healthy {
            Target::Storage
        } else {
            Target::Spool
        };
        self.plan_files(target, &mut calls);
        let mut topics = collect_topics(&mut calls);
        self.frame_small_parts(&mut topics);
        // Storage's steps of the round must finish by this instant.
        let deadline = tokio::time::Instant::now() + self.settings.storage_deadline;
        self.open_files(target, &mut topics, deadline).await;
        match target {
            Target::Storage => self.write_storage(&mut topics, deadline).await,
            Target::Spool => {
                self.write_frames(target, &mut topics).await;
                self.sync_written(target, &mut topics).await;
            }
        }
        // A file abandoned in this round: its length is durable before any
        // answer (the spool's acknowledgement or TRY_LATER).
        self.save_abandoned().await;
        self.spool_refused(target, &mut topics).await;
        self.answer(calls, &topics, now);
        self.close_full_files().await;
        self.relieve_descriptors().await;
        self.publish_status();
    }

    /// Answers the idempotent batches already durable, keeps only the missing parts
    /// of partially durable ones, and attaches retries of a batch already in the
    /// round to it.
    fn deduplicate(&mut self, round: Vec<Submission>) -> Vec<RoundCall> {
        let mut calls: Vec<RoundCall> = Vec::with_capacity(round.len());
        let mut in_round: HashMap<BatchKey, usize> = HashMap::new();
        let mut sequences_in_round: HashSet<(Bytes, i64)> = HashSet::new();
        for mut sub in round {
            if let Some(key) = sub.batch.clone() {
                match self.dedup.state(&key) {
                    BatchState::Durable => {
                        self.metrics.duplicate_batches.inc();
                        sub.answer(Outcome::Durable, &self.metrics);
                        continue;
                    }
                    BatchState::Partial(done) => {
                        sub.parts.retain(|p| !done.contains(&p.index));
                    }
                    BatchState::Conflict => self.conflict(&key),
                    BatchState::New => {}
                }
                match in_round.entry(key) {
                    std::collections::hash_map::Entry::Occupied(owner) => {
                        self.metrics.duplicate_batches.inc();
                        calls[*owner.get()].twins.push(sub);
                        continue;
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        let key = slot.key();
                        if !sequences_in_round.insert((key.publisher.clone(), key.sequence)) {
                            self.conflict(key);
                        }
                        slot.insert(calls.len());
                    }
                }
            }
            calls.push(RoundCall::new(sub));
        }
        calls
    }

    /// Counts and reports a batch that is stored although a different batch with
    /// its publisher id and sequence was stored too: a publisher reusing sequences
    /// (restarted with a fixed id by an old library), or someone sending under its
    /// id. Both are kept; only exact replays are dropped.
    fn conflict(&self, key: &BatchKey) {
        self.metrics.dedup_conflicts.inc();
        if let Some(suppressed) = conduit_core::ratelimit::allow("dedup_conflict") {
            tracing::warn!(
                publisher = %conduit_core::text::shown(&key.publisher),
                sequence = key.sequence,
                digest = %format_args!("{:016x}", key.digest),
                suppressed,
                "a batch reuses the publisher id and sequence of a different batch: storing both"
            );
        }
    }

    /// The round's calls: those put off by earlier rounds first (oldest first, each
    /// with its remaining parts), then the new ones. A new call retrying a batch that
    /// is still being written is not written again: it gets the original's answer.
    fn resume_deferred(&mut self, fresh: Vec<RoundCall>) -> Vec<RoundCall> {
        let mut calls = std::mem::take(&mut self.deferred);
        for call in calls.iter_mut() {
            call.sub.parts = std::mem::take(&mut call.later);
        }
        let resumed = calls.len();
        for call in fresh {
            let original = call.sub.batch.as_ref().and_then(|batch| {
                calls[..resumed]
                    .iter()
                    .position(|c| c.sub.batch.as_ref() == Some(batch))
            });
            match original {
                Some(i) => {
                    self.metrics.duplicate_batches.inc();
                    let RoundCall { sub, twins, .. } = call;
                    calls[i].twins.push(sub);
                    calls[i].twins.extend(twins);
                }
                None => calls.push(call),
            }
        }
        calls
    }

    /// Decides which parts are written in this round. A part whose topic has a file
    /// open (in `target`, this minute) is written. A part that needs a new file gets
    /// one while the round has opened fewer than `max_new_files_per_round` and uses
    /// fewer than the open-file limit; new files are handed out one per call in
    /// turn, so a call with thousands of new topics cannot hold up the others. Parts
    /// that get no file wait in their call for a later round. If the files the round
    /// writes to already fill the limit, the calls that need another get
    /// `TRY_LATER` (`open_files`) and nothing of them is written.
    fn plan_files(&mut self, target: Target, calls: &mut [RoundCall]) {
        let minute = self.current_minute;
        let files = &self.files;
        let mut in_use: HashSet<Topic> = calls
            .iter()
            .flat_map(|c| c.sub.parts.iter())
            .filter(|p| {
                files
                    .get(&p.topic)
                    .is_some_and(|f| f.target == target && f.minute == minute)
            })
            .map(|p| p.topic.clone())
            .collect();
        // Per call, the parts that need a new file.
        let mut waiting: Vec<(usize, VecDeque<Part>)> = Vec::new();
        for (i, call) in calls.iter_mut().enumerate() {
            if call.sub.parts.iter().all(|p| in_use.contains(&p.topic)) {
                continue;
            }
            let (ready, new): (Vec<Part>, Vec<Part>) = std::mem::take(&mut call.sub.parts)
                .into_iter()
                .partition(|p| in_use.contains(&p.topic));
            call.sub.parts = ready;
            waiting.push((i, new.into()));
        }
        if waiting.is_empty() {
            return;
        }
        if in_use.len() >= self.open_limit {
            if let Some(suppressed) = ratelimit::allow("collector_open_files_in_use") {
                tracing::warn!(
                    in_use = in_use.len(),
                    max_open_files = self.open_limit,
                    suppressed,
                    "every open data file is in use by this round: calls needing another get TRY_LATER (open_files)"
                );
            }
            for (i, _) in waiting {
                calls[i].fail(TryLaterReason::OpenFiles);
                calls[i].sub.parts.clear();
            }
            return;
        }
        let budget = self.settings.max_new_files_per_round;
        let mut opened = 0;
        loop {
            let mut granted = false;
            for (i, queue) in waiting.iter_mut() {
                while let Some(part) = queue.pop_front() {
                    if in_use.contains(&part.topic) {
                        // Another call of the round got its topic a file.
                        calls[*i].sub.parts.push(part);
                        continue;
                    }
                    if opened < budget && in_use.len() < self.open_limit {
                        opened += 1;
                        in_use.insert(part.topic.clone());
                        calls[*i].sub.parts.push(part);
                        granted = true;
                    } else {
                        queue.push_front(part);
                    }
                    break;
                }
            }
            if !granted {
                break;
            }
        }
        let mut deferred = 0;
        for (i, queue) in waiting {
            let (ready, later): (Vec<Part>, Vec<Part>) =
                queue.into_iter().partition(|p| in_use.contains(&p.topic));
            calls[i].sub.parts.extend(ready);
            deferred += later.len();
            calls[i].later = later;
        }
        if deferred > 0 {
            self.metrics.deferred_parts.inc_by(deferred as u64);
            if let Some(suppressed) = ratelimit::allow("collector_parts_deferred") {
                tracing::info!(
                    deferred_parts = deferred,
                    new_files = opened,
                    max_new_files_per_round = self.settings.max_new_files_per_round,
                    suppressed,
                    "calls with many new topics are spread over rounds"
                );
            }
        }
    }

    /// Compresses each topic's small parts into one more frame (with their marks).
    fn frame_small_parts(&mut self, topics: &mut RoundTopics) {
        for tr in topics.topics.iter_mut() {
            if tr.records.is_empty() {
                continue;
            }
            let records = std::mem::take(&mut tr.records);
            match self.encoder.frame(&records) {
                Ok(frame) => {
                    let marks = std::mem::take(&mut tr.small_marks);
                    let chunk = Chunk::new(frame, marks, tr.small_count, records.len() as u64);
                    tr.chunks.push(chunk);
                }
                Err(e) => {
                    tracing::error!(topic = %tr.topic, error = %e, "compression failed");
                    tr.stage = Stage::Failed;
                }
            }
        }
    }

    /// Gives every topic of the round a file in `target`: closes the files that
    /// new ones replace (another minute or target), closes the least recently
    /// written idle files to stay under the open-file limit, then creates the new
    /// files, concurrently; a storage create not done by `deadline` is given up
    /// ([`Engine::create_missed_deadline`]).
    async fn open_files(
        &mut self,
        target: Target,
        topics: &mut RoundTopics,
        deadline: tokio::time::Instant,
    ) {
        let (round, minute) = (self.round, self.current_minute);
        let mut new = Vec::new();
        let mut closing = Vec::new();
        for (i, tr) in topics.topics.iter().enumerate() {
            if tr.stage != Stage::Framed {
                continue;
            }
            match self.files.get_mut(&tr.topic) {
                Some(f) if f.target == target && f.minute == minute => f.last_round = round,
                Some(_) => {
                    closing.extend(self.files.remove(&tr.topic));
                    new.push(i);
                }
                None => new.push(i),
            }
        }
        let excess = (self.files.len() + new.len()).saturating_sub(self.open_limit);
        if excess > 0 {
            // Closing a file needs the dedup snapshot to cover its batch marks.
            self.save_dedup().await;
            let idle = if self.dedup_dirty {
                Vec::new()
            } else {
                self.take_idle(excess)
            };
            // What cannot get a file now (the snapshot could not be written) is
            // answered TRY_LATER.
            let unplaced = (excess - idle.len()).min(new.len());
            for &i in &new[new.len() - unplaced..] {
                let tr = &mut topics.topics[i];
                tr.stage = Stage::Failed;
                tr.failure = Some(TryLaterReason::OpenFiles);
            }
            new.truncate(new.len() - unplaced);
            if !idle.is_empty() {
                self.metrics.files_evicted.inc_by(idle.len() as u64);
                if let Some(suppressed) = ratelimit::allow("collector_files_evicted") {
                    tracing::info!(
                        closed = idle.len(),
                        open_files = self.files.len() + closing.len() + idle.len(),
                        max_open_files = self.open_limit,
                        suppressed,
                        "max_open_files reached: closing the least recently written idle data files"
                    );
                }
            }
            closing.extend(idle);
        }
        self.close_files(closing).await;
        if new.is_empty() {
            return;
        }
        let store = self.store(target);
        // Each new file takes the next free sequence number of its topic and minute.
        let planned: Vec<(usize, u32, String)> = new
            .iter()
            .map(|&i| {
                let topic = &topics.topics[i].topic;
                let next = self.seqs.entry((topic.clone(), minute)).or_insert(0);
                let seq = *next;
                *next += 1;
                let path = Layout::collector_file(topic, &self.settings.collector, minute, seq);
                (i, seq, path)
            })
            .collect();
        let create_seconds = self
            .metrics
            .file_op_seconds
            .get_or_create(&Metrics::label("op", "create"))
            .clone();
        let created: Vec<_> = futures::future::join_all(planned.iter().map(|(_, _, path)| {
            let create = store.create(path, CreateMode::Exclusive);
            let create_seconds = create_seconds.clone();
            async move {
                let started = Instant::now();
                let created = match target {
                    Target::Storage => tokio::time::timeout_at(deadline, create).await.ok(),
                    Target::Spool => Some(create.await),
                };
                create_seconds.observe(started.elapsed().as_secs_f64());
                created
            }
        }))
        .await;
        for ((i, seq, path), result) in planned.into_iter().zip(created) {
            let tr = &mut topics.topics[i];
            let Some(result) = result else {
                let since = deadline.into_std() - self.settings.storage_deadline;
                self.create_missed_deadline(tr, path, since);
                continue;
            };
            let result = match result {
                Ok(writer) => Ok(self.opened(target, &tr.topic, tr.encoding, path, seq, writer)),
                // A name used by a spool replay or an earlier run: take the next.
                Err(e) if e.is_already_exists() => {
                    self.open_file(target, &tr.topic, tr.encoding).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(mut file) => {
                    file.last_round = round;
                    self.files.insert(tr.topic.clone(), file);
                }
                Err(e) => self.failed(tr, target, "create", &e),
            }
        }
    }

    /// Takes the `n` least recently written files not written in this round out of
    /// the open files (fewer if there are not that many).
    fn take_idle(&mut self, n: usize) -> Vec<OpenFile> {
        let round = self.round;
        let mut idle: Vec<(u64, Topic)> = self
            .files
            .iter()
            .filter(|(_, f)| f.last_round < round)
            .map(|(t, f)| (f.last_round, t.clone()))
            .collect();
        idle.sort_unstable_by_key(|(last, _)| *last);
        idle.into_iter()
            .take(n)
            .filter_map(|(_, t)| self.files.remove(&t))
            .collect()
    }

    /// Writes and syncs every topic's frames to its storage file, each file in a
    /// task of its own, and waits for them until `deadline`. A file whose write or
    /// sync is not done by then is abandoned ([`Engine::write_missed_deadline`]):
    /// its task goes on in the background, its frames are refused (the spool takes
    /// them) and storage counts as unavailable.
    async fn write_storage(&mut self, topics: &mut RoundTopics, deadline: tokio::time::Instant) {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (i, tr) in topics.topics.iter().enumerate() {
            if tr.stage != Stage::Framed {
                continue;
            }
            let Some(mut file) = self.files.remove(&tr.topic) else {
                continue;
            };
            let left = Abandoned {
                path: file.path.clone(),
                minute: file.minute,
                encoding: file.encoding,
                acked_len: file.acked_len,
            };
            let chunks = tr.chunks.clone();
            let step = Arc::new(AtomicU8::new(0));
            let on = step.clone();
            let task = tokio::spawn(async move {
                let mut result = append_chunks(&mut file, &chunks)
                    .await
                    .map_err(|e| (WRITE_STEPS[0], e));
                if result.is_ok() {
                    on.store(1, Ordering::Relaxed);
                    result = file.sync_writer().await.map_err(|e| (WRITE_STEPS[1], e));
                }
                (file, result)
            });
            tasks.push((i, left, step, task));
        }
        let mut synced = 0;
        for (i, left, step, mut task) in tasks {
            let tr = &mut topics.topics[i];
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok((mut file, result))) => {
                    synced += 1;
                    let topic = tr.topic.clone();
                    match result {
                        Ok(()) => {
                            file.synced();
                            tr.stage = Stage::Durable;
                            self.files.insert(topic, file);
                        }
                        Err((op, e)) => {
                            self.files.insert(topic, file);
                            self.failed(tr, Target::Storage, op, &e);
                        }
                    }
                }
                Ok(Err(panicked)) => {
                    tracing::error!(topic = %tr.topic, path = %left.path, error = %panicked, "a storage write task failed; abandoning the file");
                    self.healthy = false;
                    self.abandon_storage_file(&tr.topic, left);
                    tr.stage = Stage::Refused;
                }
                Err(_) => {
                    let step = WRITE_STEPS[usize::from(step.load(Ordering::Relaxed)).min(1)];
                    self.write_missed_deadline(tr, left, step, task, started);
                }
            }
        }
        self.metrics
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.syncs.inc_by(synced);
        self.metrics.commits.inc();
    }

    /// A storage write or sync of the round missed `storage_deadline_ms`: storage
    /// counts as unavailable from now on, the topic's frames are refused (the spool
    /// takes them, or the calls get `TRY_LATER`), and the file is abandoned at its
    /// acknowledged length. The write goes on in the background; when it ends, a
    /// line says how late it was, and only then may the file be repaired (cut back
    /// to `acked_len`, so frames acknowledged from the spool are never stored twice).
    fn write_missed_deadline(
        &mut self,
        tr: &mut TopicRound,
        left: Abandoned,
        step: &'static str,
        task: WriteTask,
        started: Instant,
    ) {
        let deadline_ms = self.settings.storage_deadline.as_millis() as u64;
        self.missed_deadline(&tr.topic, &left.path, step, started);
        let path = left.path.clone();
        self.abandon_storage_file(&tr.topic, left);
        tr.stage = Stage::Refused;
        let key = path.clone();
        let late = tokio::spawn(async move {
            let outcome = task.await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let over_ms = elapsed_ms.saturating_sub(deadline_ms);
            match outcome {
                Ok((_, Ok(()))) => tracing::info!(path, elapsed_ms, over_ms, "a storage write abandoned at the deadline finished late; its bytes are cut off when the file is repaired"),
                Ok((_, Err((op, e)))) => tracing::warn!(path, op, elapsed_ms, over_ms, error = %e, "a storage write abandoned at the deadline failed"),
                Err(e) => tracing::error!(path, error = %e, "a storage write abandoned at the deadline panicked"),
            }
        });
        self.stuck.insert(key, late);
    }

    /// A storage create of the round missed `storage_deadline_ms`: the topic's
    /// frames are refused (spool or `TRY_LATER`), storage counts as unavailable,
    /// and the name is noted as abandoned with nothing acknowledged, so that the
    /// repair deletes the file should the create have happened after all.
    fn create_missed_deadline(&mut self, tr: &mut TopicRound, path: String, since: Instant) {
        self.missed_deadline(&tr.topic, &path, "create", since);
        let topic = tr.topic.clone();
        self.abandon_storage_file(
            &topic,
            Abandoned {
                path,
                minute: self.current_minute,
                encoding: tr.encoding,
                acked_len: 0,
            },
        );
        tr.stage = Stage::Refused;
    }

    /// Counts and reports a storage step that missed `storage_deadline_ms`; storage
    /// counts as unavailable from now on.
    fn missed_deadline(&mut self, topic: &Topic, path: &str, step: &'static str, since: Instant) {
        self.healthy = false;
        self.metrics
            .storage_deadline_exceeded
            .get_or_create(&Metrics::label("step", step))
            .inc();
        tracing::warn!(
            topic = %topic,
            path,
            step,
            deadline_ms = self.settings.storage_deadline.as_millis() as u64,
            waited_ms = since.elapsed().as_millis() as u64,
            spool = self.spool.is_some(),
            "a storage step missed collector.storage_deadline_ms: storage counts as unavailable, the round goes to the spool (TRY_LATER without one) and the file is abandoned"
        );
    }

    /// Notes a storage file given up by its writer, to be repaired in the
    /// background once storage takes writes again, and its acknowledged length
    /// in the ledger, for [`Engine::save_abandoned`] to save before the round is
    /// answered.
    fn abandon_storage_file(&mut self, topic: &Topic, left: Abandoned) {
        let name = left.path.rsplit('/').next().unwrap_or(&left.path);
        self.settings
            .open
            .abandoned(topic.as_str(), name, left.acked_len);
        if self.ledger.abandoning(&left.path, left.acked_len) {
            self.dedup_dirty = true;
            self.abandoned_unsaved = true;
        }
        self.abandoned.push(left);
    }

    /// Saves the lengths of the storage files abandoned since the last snapshot
    /// (the dedup snapshot, `crate::ledger`), so that a crash before their
    /// repair cannot keep frames that landed late: called before a round that
    /// abandoned one is answered. Storage is failing then, so the snapshot goes
    /// to the spool; without one it waits until storage takes writes again
    /// ([`Engine::storage_back`]). Waits for a roll's snapshot write only if
    /// that one goes to the same place (they must land in order); one to the
    /// other store is older, and recovery tells them apart by `generation`.
    async fn save_abandoned(&mut self) {
        if !self.abandoned_unsaved {
            return;
        }
        let (store, place) = if self.healthy {
            (self.storage.clone(), "storage")
        } else {
            match self.spool.clone() {
                Some(spool) => (spool, "spool"),
                None => return,
            }
        };
        let to_spool = !self.healthy;
        if self
            .rolling
            .as_ref()
            .is_some_and(|r| r.snapshot_in_spool == to_spool)
        {
            self.finish_rolling().await;
        }
        let started = Instant::now();
        self.dedup.expire(now_secs(&self.clock));
        let body = Bytes::from(self.dedup.to_json(self.ledger.to_saved()));
        let result = store.write_atomic(&self.dedup_path(), body).await;
        let elapsed = started.elapsed();
        self.metrics
            .abandoned_saved_seconds
            .observe(elapsed.as_secs_f64());
        match result {
            Ok(()) => {
                self.dedup_dirty = false;
                self.abandoned_unsaved = false;
                tracing::info!(
                    place,
                    abandoned_files = self.ledger.abandoned_count(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    "saved the acknowledged length of abandoned files (dedup snapshot) before answering"
                );
            }
            Err(e) => {
                self.storage_error("dedup_snapshot");
                tracing::warn!(
                    place,
                    error = %e,
                    "cannot save the acknowledged length of an abandoned file; a crash before its repair would keep its late frames (stored twice, never lost); retrying at the next round"
                );
            }
        }
    }

    /// Appends every topic's frames to its file in `target`.
    async fn write_frames(&mut self, target: Target, topics: &mut RoundTopics) {
        for tr in topics.topics.iter_mut() {
            if tr.stage != Stage::Framed {
                continue;
            }
            let Some(file) = self.files.get_mut(&tr.topic) else {
                continue;
            };
            match append_chunks(file, &tr.chunks).await {
                Ok(()) => tr.stage = Stage::Written,
                Err(e) => self.failed(tr, target, "write", &e),
            }
        }
    }

    /// A topic's frames could not be written or synced: storage refused them (the
    /// spool may take them), or the process is out of descriptors (`TRY_LATER`
    /// with reason `open_files`; storage is fine).
    fn failed(&mut self, tr: &mut TopicRound, target: Target, op: &'static str, e: &StorageError) {
        self.on_failure(&tr.topic, target, op, e);
        if e.is_too_many_open_files() {
            tr.stage = Stage::Failed;
            tr.failure = Some(TryLaterReason::OpenFiles);
        } else {
            tr.stage = Stage::Refused;
        }
    }

    /// Syncs every file written in this round, concurrently.
    async fn sync_written(&mut self, target: Target, topics: &mut RoundTopics) {
        let started = Instant::now();
        let results = {
            let touched: Vec<&mut OpenFile> = self
                .files
                .iter_mut()
                .filter(|(t, _)| topics.stage_of(t) == Some(Stage::Written))
                .map(|(_, f)| f)
                .collect();
            futures::future::join_all(touched.into_iter().map(|f| async move {
                let r = f.sync().await;
                (f.topic.clone(), r)
            }))
            .await
        };
        self.metrics
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.syncs.inc_by(results.len() as u64);
        self.metrics.commits.inc();
        for (topic, result) in results {
            let Some(tr) = topics.get_mut(&topic) else {
                continue;
            };
            match result {
                Ok(()) => {
                    tr.stage = Stage::Durable;
                    if target == Target::Spool {
                        self.spool_bytes += tr.len();
                    }
                }
                Err(e) => self.failed(tr, target, "sync", &e),
            }
        }
    }

    /// Gives what storage refused a second chance in the spool (when the round
    /// went to storage and there is a spool); what is left fails.
    async fn spool_refused(&mut self, target: Target, topics: &mut RoundTopics) {
        let second_chance = target == Target::Storage && self.spool.is_some();
        for tr in topics.topics.iter_mut() {
            if tr.stage != Stage::Refused {
                continue;
            }
            tr.stage = if second_chance && self.spool_one(tr).await {
                Stage::Durable
            } else {
                Stage::Failed
            };
        }
    }

    /// Appends a topic's frames to its spool file and syncs it; whether they are
    /// durable there.
    async fn spool_one(&mut self, tr: &TopicRound) -> bool {
        let topic = &tr.topic;
        let len = tr.len();
        if self.spool_bytes + len > self.settings.spool_max_bytes {
            tracing::warn!(topic = %topic, spool_bytes = self.spool_bytes, spool_max_bytes = self.settings.spool_max_bytes, "spool full");
            return false;
        }
        let result = match self
            .append_to(Target::Spool, topic, tr.encoding, &tr.chunks)
            .await
        {
            Ok(()) => match self.files.get_mut(topic) {
                Some(f) => f.sync().await,
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if e.is_too_many_open_files() {
                self.ran_out_of_descriptors("spool", e);
            }
        }
        let ok = result.is_ok() && self.files.contains_key(topic);
        if ok {
            self.spool_bytes += len;
        } else {
            tracing::error!(topic = %topic, "the spool refused a frame too; answering TRY_LATER");
            if let Some(f) = self.files.remove(topic) {
                self.abandon(f);
            }
        }
        ok
    }

    /// Answers every call of the round: durable only if every part of it is.
    /// Batches remember which of their parts are durable.
    fn answer(&mut self, mut calls: Vec<RoundCall>, topics: &RoundTopics, now: i64) {
        let refused = if self.spool.is_some() {
            TryLaterReason::SpoolUnavailable
        } else {
            TryLaterReason::StorageUnavailable
        };
        for tr in &topics.topics {
            let durable = tr.stage == Stage::Durable;
            for &(i, part) in &tr.members {
                if durable {
                    calls[i].durable_parts.push(part);
                } else {
                    calls[i].fail(tr.failure.unwrap_or(refused));
                }
            }
            if durable {
                let label = Metrics::label("topic", tr.topic.as_str());
                self.metrics.events.get_or_create(&label).inc_by(tr.count);
                self.metrics
                    .bytes
                    .get_or_create(&label)
                    .inc_by(tr.payload_bytes);
            }
        }
        for mut call in calls {
            if call.failed.is_none() && !call.later.is_empty() {
                // Spread over rounds: what is durable now is remembered (a retry, or
                // a restart, writes only the rest); answered once all is durable.
                if let Some(key) = &call.sub.batch {
                    if !call.durable_parts.is_empty() {
                        self.dedup.mark_parts(key, &call.durable_parts, now);
                        self.dedup_dirty = true;
                    }
                }
                call.durable_parts.clear();
                self.deferred.push(call);
                continue;
            }
            let outcome = match call.failed {
                Some(reason) => Outcome::TryLater(reason),
                None => Outcome::Durable,
            };
            if let Some(key) = &call.sub.batch {
                match outcome {
                    Outcome::Durable => self.dedup.mark_durable(key, now),
                    Outcome::TryLater(_) => {
                        if !call.durable_parts.is_empty() {
                            self.dedup.mark_parts(key, &call.durable_parts, now);
                        }
                    }
                }
                self.dedup_dirty = true;
            }
            call.sub.answer(outcome, &self.metrics);
            for twin in call.twins {
                twin.answer(outcome, &self.metrics);
            }
        }
    }

    /// Closes every file that reached `max_file_bytes`.
    async fn close_full_files(&mut self) {
        let full: Vec<Topic> = self
            .files
            .iter()
            .filter(|(_, f)| f.written_len() >= self.settings.max_file_bytes)
            .map(|(t, _)| t.clone())
            .collect();
        let full = full
            .iter()
            .filter_map(|topic| self.files.remove(topic))
            .collect();
        self.close_files(full).await;
    }

    /// After running out of descriptors: closes every file not written in this
    /// round and lowers the open-file limit to three quarters of what was open,
    /// until the next minute.
    async fn relieve_descriptors(&mut self) {
        if !std::mem::take(&mut self.fd_pressure) {
            return;
        }
        let open = self.files.len();
        self.open_limit = self.open_limit.min((open * 3 / 4).max(1));
        let idle = self.take_idle(open);
        self.metrics.files_evicted.inc_by(idle.len() as u64);
        if let Some(suppressed) = ratelimit::allow("collector_open_limit_lowered") {
            tracing::warn!(
                closed = idle.len(),
                open_files = open,
                open_limit = self.open_limit,
                max_open_files = self.settings.max_open_files,
                suppressed,
                "out of file descriptors: closing idle data files and lowering the open-file limit until the next minute"
            );
        }
        // Closing files frees descriptors for the dedup snapshot, which
        // `close_files` writes first; so try it again once they are closed.
        self.close_files(idle).await;
        self.save_dedup().await;
    }

    fn on_failure(
        &mut self,
        topic: &Topic,
        target: Target,
        op: &'static str,
        error: &conduit_core::StorageError,
    ) {
        if error.is_too_many_open_files() {
            // Storage is fine; a writer that failed halfway is cut back and closed
            // like any other (storage answers the probe, so that happens at once).
            self.ran_out_of_descriptors(if target == Target::Spool { "spool" } else { op }, error);
        } else {
            self.storage_error(op);
            tracing::warn!(topic = %topic, ?target, op, error = %error, "write failed; abandoning the file");
            if target == Target::Storage {
                self.healthy = false;
            }
        }
        if let Some(file) = self.files.remove(topic) {
            self.abandon(file);
        }
    }

    fn abandon(&mut self, file: OpenFile) {
        match file.target {
            Target::Storage => self.abandon_storage_file(
                &file.topic,
                Abandoned {
                    path: file.path.clone(),
                    minute: file.minute,
                    encoding: file.encoding,
                    acked_len: file.acked_len,
                },
            ),
            Target::Spool => {
                // Recovered at the next start; until then it stays in the inventory
                // so the watermark is held.
                self.spooled.insert(
                    (file.minute, file.path.clone()),
                    (file.encoding, file.acked_len),
                );
                tracing::error!(path = %file.path, "a spool file failed; it will be recovered at restart");
            }
        }
    }

    /// Appends frames to the topic's open file in `target`, opening one if needed.
    async fn append_to(
        &mut self,
        target: Target,
        topic: &Topic,
        encoding: Encoding,
        chunks: &[Chunk],
    ) -> conduit_core::StorageResult<()> {
        let reopen = match self.files.get(topic) {
            Some(f) => f.target != target || f.minute != self.current_minute,
            None => true,
        };
        if reopen {
            if let Some(old) = self.files.remove(topic) {
                self.close_file(old).await;
            }
            let file = self.open_file(target, topic, encoding).await?;
            self.files.insert(topic.clone(), file);
        }
        let file = self.files.get_mut(topic).expect("inserted above");
        file.last_round = self.round;
        append_chunks(file, chunks).await
    }

    fn store(&self, target: Target) -> SharedStorage {
        match target {
            Target::Storage => self.storage.clone(),
            Target::Spool => self.spool.clone().expect("spool target only with a spool"),
        }
    }

    async fn open_file(
        &mut self,
        target: Target,
        topic: &Topic,
        encoding: Encoding,
    ) -> conduit_core::StorageResult<OpenFile> {
        let store = self.store(target);
        loop {
            let next = self
                .seqs
                .entry((topic.clone(), self.current_minute))
                .or_insert(0);
            let seq = *next;
            *next += 1;
            let path =
                Layout::collector_file(topic, &self.settings.collector, self.current_minute, seq);
            match store.create(&path, CreateMode::Exclusive).await {
                Ok(writer) => return Ok(self.opened(target, topic, encoding, path, seq, writer)),
                // A name used by a spool replay or an earlier run: take the next.
                Err(e) if e.is_already_exists() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The open file for a writer just created at `path` (sequence number `seq`).
    fn opened(
        &self,
        target: Target,
        topic: &Topic,
        encoding: Encoding,
        path: String,
        seq: u32,
        writer: Box<dyn FileWriter>,
    ) -> OpenFile {
        tracing::debug!(path, ?target, "opened data file");
        let served = (target == Target::Storage).then(|| {
            let name = path.rsplit('/').next().unwrap_or(&path);
            self.settings.open.opened(topic.as_str(), name);
            self.settings.open.clone()
        });
        OpenFile {
            path,
            target,
            topic: topic.clone(),
            minute: self.current_minute,
            seq,
            encoding,
            writer,
            records: 0,
            record_bytes: 0,
            acked_len: 0,
            acked_counts: (0, 0),
            dirty: false,
            served,
            unsynced: Vec::new(),
            crc32c: 0,
            index: Vec::new(),
            last_round: self.round,
        }
    }

    async fn close_file(&mut self, file: OpenFile) {
        self.close_files(vec![file]).await;
    }

    /// Closes files (trailer, sync, close), [`CLOSE_CONCURRENCY`] at a time; a file
    /// that fails to close is left to be recovered.
    async fn close_files(&mut self, files: Vec<OpenFile>) {
        if files.is_empty() {
            return;
        }
        // Invariant: the dedup snapshot covers every batch mark of a file before the
        // file is closed (recovery reads marks only from unclosed files), and its
        // ledger holds the file's acknowledged length (recovery never cuts below it).
        self.note_closing(&files);
        self.save_dedup().await;
        let close_seconds = self
            .metrics
            .file_op_seconds
            .get_or_create(&Metrics::label("op", "close"))
            .clone();
        let closed: Vec<_> = futures::stream::iter(files.into_iter().map(|file| {
            let close_seconds = close_seconds.clone();
            async move {
                let closing = Closing::of(&file);
                let started = Instant::now();
                let result = file.close().await;
                close_seconds.observe(started.elapsed().as_secs_f64());
                (closing, result)
            }
        }))
        .buffer_unordered(CLOSE_CONCURRENCY)
        .collect()
        .await;
        for (closing, result) in closed {
            self.closed(closing, result);
        }
    }

    /// Closes `files` (a roll's) in a background task: the dedup snapshot covering
    /// them (with their acknowledged lengths in the ledger) is taken now and
    /// written first, then every file gets its index and trailer, is synced and
    /// closed, [`CLOSE_CONCURRENCY`] at a time. Nothing waits for it but the
    /// watermark ([`Engine::watermark`] stays below their minute) and the next
    /// snapshot write ([`Engine::save_dedup`] finishes it first). Every record of
    /// these files was acknowledged after its sync; a close that fails leaves the
    /// file to be repaired, as [`Engine::close_files`] does.
    fn close_in_background(&mut self, files: Vec<OpenFile>) {
        if files.is_empty() {
            return;
        }
        self.note_closing(&files);
        let snapshot = if self.dedup_dirty {
            self.dedup.expire(now_secs(&self.clock));
            let body = Bytes::from(self.dedup.to_json(self.ledger.to_saved()));
            let store = if self.healthy {
                Some(self.storage.clone())
            } else {
                self.spool.clone()
            };
            store.map(|store| (store, self.dedup_path(), body))
        } else {
            None
        };
        let snapshot_in_spool = snapshot.is_some() && !self.healthy;
        // Written below; set again if that fails.
        self.dedup_dirty = false;
        let close_seconds = self
            .metrics
            .file_op_seconds
            .get_or_create(&Metrics::label("op", "close"))
            .clone();
        let closing: Vec<Closing> = files.iter().map(Closing::of).collect();
        let task = tokio::spawn(async move {
            let mut snapshot_failed = None;
            if let Some((store, path, body)) = snapshot {
                if let Err(e) = store.write_atomic(&path, body).await {
                    snapshot_failed = Some(e);
                }
            }
            let closed = futures::stream::iter(files.into_iter().map(|file| {
                let close_seconds = close_seconds.clone();
                async move {
                    let started = Instant::now();
                    let result = file.close().await;
                    close_seconds.observe(started.elapsed().as_secs_f64());
                    result
                }
            }))
            .buffered(CLOSE_CONCURRENCY)
            .collect()
            .await;
            RollOutcome {
                snapshot_failed,
                closed,
            }
        });
        self.rolling = Some(Rolling {
            files: closing,
            task,
            snapshot_in_spool,
        });
    }

    /// Waits for the background close of the last roll, if any, and accounts
    /// for it.
    async fn finish_rolling(&mut self) {
        if self.rolling.is_some() {
            let outcome = rolled(&mut self.rolling).await;
            self.apply_rolled(outcome);
        }
    }

    /// Accounts for the background close of the last roll: each file as
    /// [`Engine::closed`] does; a snapshot that could not be written is written
    /// again at the next chance. A task that panicked leaves its files to be
    /// repaired.
    fn apply_rolled(&mut self, outcome: Result<RollOutcome, tokio::task::JoinError>) {
        let Some(rolling) = self.rolling.take() else {
            return;
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "the background close of a minute's files failed; they will be repaired");
                RollOutcome {
                    snapshot_failed: None,
                    closed: rolling
                        .files
                        .iter()
                        .map(|f| {
                            Err(StorageError::Io {
                                path: f.path.clone(),
                                source: std::io::Error::other(format!(
                                    "the background close ended early: {e}"
                                )),
                            })
                        })
                        .collect(),
                }
            }
        };
        if let Some(e) = outcome.snapshot_failed {
            self.dedup_dirty = true;
            if e.is_too_many_open_files() {
                self.ran_out_of_descriptors("dedup_snapshot", &e);
            } else {
                self.storage_error("dedup_snapshot");
                tracing::warn!(error = %e, "cannot write the dedup snapshot; retrying at the next roll");
            }
        }
        for (closing, result) in rolling.files.into_iter().zip(outcome.closed) {
            self.closed(closing, result);
        }
    }

    /// Accounts for a file closed (or not) by [`Engine::close_files`].
    fn closed(&mut self, closing: Closing, result: conduit_core::StorageResult<u64>) {
        let Closing {
            path,
            target,
            minute,
            encoding,
            acked_len,
            topic,
            name,
            written,
        } = closing;
        match result {
            Ok(len) => {
                self.metrics.files_closed.inc();
                if target == Target::Storage {
                    self.settings.open.closed(topic.as_str(), &name, len);
                }
                if target == Target::Spool {
                    self.spool_bytes += len.saturating_sub(written);
                    self.spooled.insert((minute, path), (encoding, len));
                }
            }
            Err(e) => {
                if e.is_too_many_open_files() {
                    self.ran_out_of_descriptors("write", &e);
                } else {
                    self.storage_error("close");
                    tracing::warn!(path, error = %e, "closing a data file failed; it will be recovered");
                }
                match target {
                    Target::Storage => {
                        if !e.is_too_many_open_files() {
                            self.healthy = false;
                        }
                        self.settings
                            .open
                            .abandoned(topic.as_str(), &name, acked_len);
                        self.abandoned.push(Abandoned {
                            path,
                            minute,
                            encoding,
                            acked_len,
                        });
                    }
                    Target::Spool => {
                        self.spooled.insert((minute, path), (encoding, acked_len));
                    }
                }
            }
        }
    }

    /// Moves on to the clock's minute: the files of past minutes are closed in the
    /// background ([`Engine::close_in_background`]) while new rounds go on into
    /// new files, so no acknowledgement waits for a close; the watermark advances
    /// once they are closed.
    async fn roll(&mut self) {
        let now_minute = self.clock.minute();
        if now_minute <= self.current_minute {
            return;
        }
        self.finish_rolling().await;
        let files: Vec<OpenFile> = self.files.drain().map(|(_, f)| f).collect();
        let closing = files.len();
        self.close_in_background(files);
        self.prune_ledger(now_minute).await;
        self.seqs.retain(|(_, m), _| *m >= now_minute);
        self.current_minute = now_minute;
        if self.open_limit < self.settings.max_open_files {
            tracing::info!(
                max_open_files = self.settings.max_open_files,
                "open-file limit restored after running out of descriptors"
            );
            self.open_limit = self.settings.max_open_files;
        }
        tracing::debug!(minute = %now_minute, closing, "minute rolled");
        self.maintain().await;
        self.publish_status();
    }

    /// Each second: applies a finished background repair; while storage is
    /// unhealthy, probes it with a write of its own; once it takes writes again,
    /// or while abandoned or spooled files remain, starts the next repair pass.
    async fn maintain(&mut self) {
        if self.repair.as_ref().is_some_and(|r| r.is_finished()) {
            if let Some(task) = self.repair.take() {
                match task.await {
                    Ok(report) => self.repaired(report).await,
                    Err(e) => {
                        tracing::error!(error = %e, "the background repair panicked; retrying")
                    }
                }
            }
        }
        self.stuck.retain(|_, task| !task.is_finished());
        if self.healthy && self.abandoned.is_empty() && self.spooled.is_empty() {
            return;
        }
        if !self.healthy {
            // Probe in the background so a hanging storage never stalls commits
            // (they go to the spool meanwhile); act on its answer at a later tick.
            match self.probe.take() {
                Some(probe) if probe.is_finished() => {
                    if !probe.await.unwrap_or(false) {
                        return;
                    }
                }
                Some(probe) => {
                    self.probe = Some(probe);
                    return;
                }
                None => {
                    self.probe = Some(tokio::spawn(probe(self.storage.clone(), self.probe_path())));
                    return;
                }
            }
            self.storage_back().await;
        }
        if self.repair.is_none() {
            self.start_repair();
        }
    }

    /// Where the probe writes: next to the dedup snapshot.
    fn probe_path(&self) -> String {
        Layout::checkpoint_path(
            "collector",
            &format!(
                "{}.{}.probe",
                self.settings.cluster, self.settings.collector
            ),
        )
        .unwrap_or_else(|_| "system/checkpoints/collector/probe.json".to_string())
    }

    /// Storage took the probe's write: new rounds go to storage again. Open spool
    /// files are closed (local disk, quick) so that they can be replayed; the
    /// repair runs in the background.
    async fn storage_back(&mut self) {
        let spool_files: Vec<OpenFile> = self
            .files
            .iter()
            .filter(|(_, f)| f.target == Target::Spool)
            .map(|(t, _)| t.clone())
            .collect::<Vec<Topic>>()
            .iter()
            .filter_map(|topic| self.files.remove(topic))
            .collect();
        self.close_files(spool_files).await;
        tracing::info!(
            abandoned_files = self.abandoned.len(),
            spooled_files = self.spooled.len(),
            spooled_bytes = self.spool_bytes,
            "storage takes writes again; repairing abandoned files and replaying the spool in the background"
        );
        self.healthy = true;
        // Without a spool the abandoned files' lengths could not be saved during
        // the outage: save them now, before the repair starts.
        self.save_abandoned().await;
        self.publish_status();
    }

    /// Starts a background pass over the abandoned files whose writes are done and
    /// the closed spool files, in minute order.
    fn start_repair(&mut self) {
        let abandoned: Vec<Abandoned> = self
            .abandoned
            .iter()
            .filter(|a| !self.stuck.contains_key(&a.path))
            .cloned()
            .collect();
        let spooled: Vec<Spooled> = self
            .spooled
            .iter()
            .map(|((minute, path), (encoding, len))| Spooled {
                minute: *minute,
                path: path.clone(),
                encoding: *encoding,
                len: *len,
                moved_to: self.local_view_path(path),
            })
            .collect();
        if abandoned.is_empty() && spooled.is_empty() {
            return;
        }
        self.repair = Some(tokio::spawn(repair_pass(
            self.storage.clone(),
            self.spool.clone(),
            abandoned,
            spooled,
        )));
    }

    /// Applies what a repair pass did: repaired abandoned files and replayed spool
    /// files no longer hold the watermark.
    async fn repaired(&mut self, report: RepairReport) {
        for (path, result) in report.abandoned {
            match result {
                Ok(Repaired::Closed(r)) => {
                    self.ledger.repaired(&path);
                    tracing::info!(
                        path,
                        kept_bytes = r.kept_bytes,
                        dropped_bytes = r.dropped_bytes,
                        "closed a file abandoned during an outage"
                    )
                }
                Ok(Repaired::Deleted) => {
                    self.ledger.repaired(&path);
                    tracing::info!(
                        path,
                        "deleted an abandoned file that held nothing acknowledged"
                    )
                }
                Ok(Repaired::Quarantined { to, reason }) => {
                    let root = self.storage.root().to_owned();
                    self.quarantined(&root, &path, &to, &reason);
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot repair an abandoned file yet; retrying");
                    continue;
                }
            }
            self.abandoned.retain(|a| a.path != path);
        }
        for file in report.replayed {
            tracing::info!(path = %file.path, minute = %file.minute, bytes = file.len, "replayed a spooled file to storage");
            self.spooled.remove(&(file.minute, file.path));
            self.spool_bytes = self.spool_bytes.saturating_sub(file.len);
        }
        if let Some((path, e)) = report.replay_error {
            self.storage_error("replay");
            tracing::warn!(path, error = %e, "spool replay interrupted; will retry");
        }
        self.dedup_dirty = true;
        self.save_dedup().await;
        self.publish_status();
    }

    async fn shutdown(mut self) {
        self.finish_rolling().await;
        let files: Vec<OpenFile> = self.files.drain().map(|(_, f)| f).collect();
        self.close_files(files).await;
        if let Some(task) = self.repair.take() {
            if let Ok(report) = task.await {
                self.repaired(report).await;
            }
        }
        // Writes abandoned at the deadline end within storage_timeout_ms; wait for
        // them so that their files can be repaired now.
        for (_, task) in std::mem::take(&mut self.stuck) {
            let _ = task.await;
        }
        // Last chance to hand the spool to storage; otherwise the next start does.
        if !self.spooled.is_empty() || !self.abandoned.is_empty() {
            if probe(self.storage.clone(), self.probe_path()).await {
                if !self.healthy {
                    self.storage_back().await;
                }
                self.start_repair();
                if let Some(task) = self.repair.take() {
                    if let Ok(report) = task.await {
                        self.repaired(report).await;
                    }
                }
            } else {
                tracing::warn!(
                    spooled_bytes = self.spool_bytes,
                    "storage unavailable at shutdown; the spool is replayed at the next start"
                );
            }
        }
        // Every file of this minute is closed too; the watermark stays at the last
        // full minute (a restart within this minute adds new files with new names).
        self.publish_status();
        self.status.send_modify(|s| s.stopped = true);
    }
}

/// Whether storage takes a write: the probe file is replaced (deleted first, so a
/// probe that failed halfway and left its file open cannot hold up the next one),
/// written, synced and closed. Measured on the write path, not by a listing: a
/// NameNode that answers while no DataNode takes blocks, or a full disk, fails it.
async fn probe(storage: SharedStorage, path: String) -> bool {
    let write = async {
        match storage.delete(&path, false).await {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
        let mut writer = storage.create(&path, CreateMode::Overwrite).await?;
        writer.write(Bytes::from_static(b"{}\n")).await?;
        writer.sync().await?;
        writer.close().await
    };
    match write.await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "storage still refuses writes");
            false
        }
    }
}

/// A closed spool file waiting to be replayed.
struct Spooled {
    minute: Minute,
    path: String,
    encoding: Encoding,
    len: u64,
    /// Where the worker moves its copy in the local view (in its own minute).
    moved_to: Option<String>,
}

/// What became of an unclosed file given to [`repair`].
enum Repaired {
    /// Closed (its torn or unacknowledged tail cut).
    Closed(conduit_core::format::Recovery),
    /// Deleted: nothing in it was acknowledged.
    Deleted,
    /// Moved to `quarantine/` untouched.
    Quarantined { to: String, reason: String },
}

/// What a background repair pass did.
#[derive(Default)]
struct RepairReport {
    /// Every abandoned file tried, with its outcome.
    abandoned: Vec<(String, anyhow::Result<Repaired>)>,
    /// Spool files copied to storage and deleted from the spool.
    replayed: Vec<Spooled>,
    /// The error that stopped the replay (the rest waits for the next pass).
    replay_error: Option<(String, anyhow::Error)>,
}

/// Closes an unclosed file without cutting a byte of its `acked_len` (ledger
/// checks, `crate::ledger`), cutting what is past `limit`; quarantines it instead
/// if that is not possible.
async fn repair(
    store: &dyn Storage,
    path: &str,
    encoding: Encoding,
    acked_len: Option<u64>,
    limit: Option<u64>,
) -> anyhow::Result<Repaired> {
    let verdict = match acked_len {
        Some(acked_len) => ledger::check(store, path, encoding, acked_len).await?,
        None => Verdict::Close,
    };
    let verdict = match verdict {
        Verdict::Close => match close_recovered(store, path, encoding, limit).await {
            Ok(recovery) => return Ok(Repaired::Closed(recovery)),
            Err(e) => ledger::undecodable(e)?,
        },
        quarantine => quarantine,
    };
    let Verdict::Quarantine { reason } = verdict else {
        unreachable!("closed above")
    };
    let to = ledger::quarantine(store, path).await?;
    Ok(Repaired::Quarantined { to, reason })
}

/// Repairs a storage file abandoned by its writer: deleted if nothing of it was
/// acknowledged (a refused call leaves no empty file), else cut back to its
/// acknowledged length and closed.
async fn repair_abandoned(store: &dyn Storage, file: &Abandoned) -> anyhow::Result<Repaired> {
    if file.acked_len == 0 {
        return match store.delete(&file.path, false).await {
            Ok(_) => Ok(Repaired::Deleted),
            Err(e) if e.is_not_found() => Ok(Repaired::Deleted),
            Err(e) => Err(e.into()),
        };
    }
    repair(
        store,
        &file.path,
        file.encoding,
        Some(file.acked_len),
        Some(file.acked_len),
    )
    .await
}

/// The background repair: abandoned files first (each bounded by
/// [`REPAIR_BOUND`], since HDFS lease recovery may wait a minute), then the spool
/// replayed file by file in minute order at most [`REPLAY_BYTES_PER_SEC`],
/// stopping at the first failure. Never on the commit path.
async fn repair_pass(
    storage: SharedStorage,
    spool: Option<SharedStorage>,
    abandoned: Vec<Abandoned>,
    spooled: Vec<Spooled>,
) -> RepairReport {
    let mut report = RepairReport::default();
    for file in abandoned {
        let result = tokio::time::timeout(REPAIR_BOUND, repair_abandoned(storage.as_ref(), &file))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "repair did not finish within {} s",
                    REPAIR_BOUND.as_secs()
                ))
            });
        report.abandoned.push((file.path, result));
    }
    let Some(spool) = spool else {
        return report;
    };
    for file in spooled {
        let started = Instant::now();
        if let Err(e) = replay_one(spool.as_ref(), storage.as_ref(), &file).await {
            report.replay_error = Some((file.path, e));
            break;
        }
        let due = Duration::from_secs_f64(file.len as f64 / REPLAY_BYTES_PER_SEC as f64);
        report.replayed.push(file);
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
    }
    report
}

/// Moves already queued calls into `round` (without waiting) while the round holds
/// fewer than [`MAX_ROUND_BYTES`] (`bytes` so far); the round's bytes.
fn take_queued(
    rx: &mut mpsc::Receiver<Submission>,
    round: &mut Vec<Submission>,
    mut bytes: usize,
) -> usize {
    while bytes < MAX_ROUND_BYTES {
        match rx.try_recv() {
            Ok(s) => {
                bytes += s.bytes();
                round.push(s);
            }
            Err(_) => break,
        }
    }
    bytes
}

/// Appends a topic's frames of the round (each after its batch marks) to `file`.
async fn append_chunks(file: &mut OpenFile, chunks: &[Chunk]) -> conduit_core::StorageResult<()> {
    for chunk in chunks {
        file.append(chunk).await?;
    }
    Ok(())
}

/// A storage file's write and sync of one round, in a task of its own: the file
/// back, and the step that failed with its error.
type WriteTask = tokio::task::JoinHandle<(OpenFile, Result<(), (&'static str, StorageError)>)>;

/// What is known of a file being closed, for the accounting once it is.
struct Closing {
    path: String,
    target: Target,
    minute: Minute,
    encoding: Encoding,
    acked_len: u64,
    topic: Topic,
    name: String,
    /// Bytes written before the closing frames (already counted in the spool).
    written: u64,
}

impl Closing {
    fn of(file: &OpenFile) -> Closing {
        Closing {
            path: file.path.clone(),
            target: file.target,
            minute: file.minute,
            encoding: file.encoding,
            acked_len: file.acked_len,
            topic: file.topic.clone(),
            name: file.name().to_owned(),
            written: file.written_len(),
        }
    }
}

/// Waits for the background close of a roll (`rolling` must be `Some`).
async fn rolled(rolling: &mut Option<Rolling>) -> Result<RollOutcome, tokio::task::JoinError> {
    match rolling {
        Some(r) => (&mut r.task).await,
        None => std::future::pending().await,
    }
}

/// Groups the round's parts by topic: a part compressed by its connection keeps its
/// frame (with its batch's mark); the small parts of a topic are gathered to be
/// compressed into one more frame (with the marks of theirs).
fn collect_topics(calls: &mut [RoundCall]) -> RoundTopics {
    let mut topics = RoundTopics::default();
    for (i, call) in calls.iter_mut().enumerate() {
        let sub = &mut call.sub;
        for part in sub.parts.iter_mut() {
            let entry = topics.entry(&part.topic, part.encoding);
            // The part's mark, its records starting at `first_record` of the frame
            // that will hold them.
            let mark = |first_record: u64| {
                sub.batch.as_ref().map(|key| PartMark {
                    batch: BatchMark {
                        publisher: key.publisher.clone(),
                        sequence: key.sequence,
                        part: part.index,
                        parts: sub.parts_total,
                    },
                    digest: key.digest,
                    first_record: first_record as u32,
                    records: part.count as u32,
                })
            };
            match part.frame.take() {
                Some(frame) => {
                    let marks = mark(0).into_iter().collect();
                    let chunk = Chunk::new(frame, marks, part.count, part.record_bytes);
                    entry.chunks.push(chunk);
                }
                None => {
                    entry.small_marks.extend(mark(entry.small_count));
                    if entry.records.is_empty() {
                        entry.records = std::mem::take(&mut part.records);
                    } else {
                        entry.records.extend_from_slice(&part.records);
                    }
                    entry.small_count += part.count;
                }
            }
            entry.count += part.count;
            entry.payload_bytes += part.payload_bytes;
            entry.members.push((i, part.index));
        }
    }
    topics
}

/// Whether the worker already moved a replayed copy of `path` (`len` bytes) to
/// `moved_to` in the local view.
async fn moved_already(
    storage: &dyn Storage,
    path: &str,
    moved_to: Option<&str>,
    len: usize,
) -> anyhow::Result<bool> {
    let Some(moved_to) = moved_to else {
        return Ok(false);
    };
    match storage.stat(moved_to).await {
        Ok(st) if st.len == len as u64 => {
            tracing::info!(
                path,
                moved_to,
                "a spool file's copy is already in the local view (the spool copy was not deleted after the replay); not copied again"
            );
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Copies a closed spool file to storage under the same name, then deletes it from
/// the spool. Idempotent: a closed copy already in storage means the copy finished
/// before a crash; an unclosed one is replaced; and a copy the worker already
/// moved into the local view (between the copy and the spool's delete: a crash,
/// or a delete that failed) is not made again, which would store its events twice.
async fn replay_one(
    spool: &dyn Storage,
    storage: &dyn Storage,
    file: &Spooled,
) -> anyhow::Result<()> {
    let (path, encoding, acked_len) = (file.path.as_str(), file.encoding, file.len);
    // A spool file whose writer failed is cut back to what was acknowledged and
    // closed before it is copied, so storage only ever receives closed files.
    let len = spool.len(path).await?;
    if !is_closed(spool, path, len).await.unwrap_or(false) {
        close_recovered(spool, path, encoding, Some(acked_len)).await?;
    }
    let bytes = spool.read(path).await?;
    let exists = storage.stat(path).await;
    let done = match exists {
        Ok(st) => {
            let closed = is_closed(storage, path, st.len).await.unwrap_or(false);
            if closed && st.len == bytes.len() as u64 {
                true
            } else {
                storage.delete(path, false).await?;
                false
            }
        }
        // Checked after `data/`: the worker's rename moves the copy from one to
        // the other at once, so it is seen in one place or the other.
        Err(e) if e.is_not_found() => {
            moved_already(storage, path, file.moved_to.as_deref(), bytes.len()).await?
        }
        Err(e) => return Err(e.into()),
    };
    if !done {
        let mut writer = storage.create(path, CreateMode::Exclusive).await?;
        writer.write(bytes).await?;
        writer.close().await?;
    }
    spool.delete(path, false).await?;
    Ok(())
}
