//! The committer: one task that owns every open data file and turns queued calls
//! into durable frames.
//!
//! # Group commit
//! Connection tasks validate and encode entries, then queue a [`Submission`]. The
//! committer takes everything queued (waiting up to `group_commit_ms` for more while
//! a round is small), writes one zstd frame per topic, syncs every touched file
//! concurrently, and only then answers each submission: `OK` if every part of it is
//! durable, `TRY_LATER` otherwise. One frame and one sync serve all connections.
//!
//! # Minutes and files
//! Every record of a round gets the minute of the collector clock when the round
//! starts. At each minute boundary (a timer on the [`conduit_core::Clock`], so tests
//! advance it) every open file is closed with its trailer; the watermark (the last
//! minute all of whose files are closed) then advances and is published in the
//! heartbeat. A file also closes when it reaches `max_file_bytes`.
//!
//! # Storage outages
//! When a write or sync to storage fails, the file is abandoned (to be cut back to
//! its last acknowledged length and closed later) and the round's frames for that
//! topic go to the local spool instead (same relative paths, same format, fsynced
//! before the ack). While storage is unhealthy every round goes to the spool; a
//! probe each second notices when it is back, closes the abandoned files, and
//! replays the spooled files in minute order under the names they were given when
//! spooled (so each event keeps its arrival minute, and a replay interrupted by a
//! crash is redone, not duplicated). The watermark never passes a minute that still
//! has spooled or abandoned files. Without a spool directory, or with the spool full
//! (`spool_max_bytes`), the affected calls get `TRY_LATER`: nothing is dropped.
//!
//! # Idempotent batches
//! `LogBatch` calls carry (publisher id, sequence). The committer consults the
//! [`DedupTable`] (a retried durable batch is acknowledged without writing; a
//! partially durable one writes only its missing parts) and writes batch marks
//! before each data frame so the table can be rebuilt after a crash.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::format::{
    close_recovered, encode_marks_v1, is_closed, BatchMark, Encoding, FrameEncoder, TRAILER_LEN,
};
use conduit_core::layout::Layout;
use conduit_core::tree;
use conduit_core::{
    CreateMode, Minute, NodeName, SharedClock, SharedStorage, Storage, Topic, View,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::dedup::{BatchState, DedupTable};
use crate::files::{Abandoned, OpenFile, Target};
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
    /// Publisher id and sequence of an idempotent `LogBatch`.
    pub batch: Option<(Bytes, i64)>,
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
}

/// A call of the round being committed, and what became of its parts.
struct RoundCall {
    /// The call, answered once the round is durable or has failed.
    sub: Submission,
    /// Indexes of its parts made durable in this round (a batch that is answered
    /// `TRY_LATER` remembers them, so that its retry writes only the others).
    durable_parts: Vec<u16>,
    /// Whether some part of it is not durable: it is answered `TRY_LATER`.
    failed: bool,
    /// Retries of the same idempotent batch queued in the same round: not written,
    /// answered like this call.
    twins: Vec<Submission>,
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
    /// Marks of the small parts.
    small_marks: Vec<BatchMark>,
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
        });
        &mut self.topics[i]
    }
}

/// One frame (and the batch marks written before it) to append to a topic's file.
struct Chunk {
    marks: Option<Bytes>,
    frame: Bytes,
    count: u64,
    record_bytes: u64,
}

impl Chunk {
    fn len(&self) -> u64 {
        self.frame.len() as u64 + self.marks.as_ref().map_or(0, |m| m.len() as u64)
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
    /// Whether the dedup table changed since the last snapshot.
    dedup_dirty: bool,
    status: watch::Sender<EngineStatus>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("collector", &self.settings.collector)
            .field("current_minute", &self.current_minute)
            .field("open_files", &self.files.len())
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
            dedup_dirty: false,
            status,
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

    /// Closes what a previous run left open and rebuilds in-memory state.
    async fn recover(&mut self) -> anyhow::Result<()> {
        let now = now_secs(&self.clock);
        let dedup_path = self.dedup_path();
        for store in [Some(self.storage.clone()), self.spool.clone()]
            .into_iter()
            .flatten()
        {
            match store.read(&dedup_path).await {
                Ok(bytes) => match DedupTable::from_json(&bytes) {
                    Ok(table) => self.dedup.merge(table),
                    Err(e) => {
                        tracing::warn!(path = %dedup_path, root = store.root(), error = %e, "ignoring unreadable dedup snapshot")
                    }
                },
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Storage: close files left open, learn sequence numbers in use.
        let storage = self.storage.clone();
        let marks = self.recover_tree(&storage, Target::Storage).await?;
        self.dedup.absorb_marks(&marks, now);
        if let Some(spool) = self.spool.clone() {
            let marks = self.recover_tree(&spool, Target::Spool).await?;
            self.dedup.absorb_marks(&marks, now);
        }
        if !self.spooled.is_empty() {
            self.healthy = false;
        }
        self.metrics.spool_bytes.set(self.spool_bytes as i64);
        self.dedup_dirty = true;
        self.save_dedup().await;
        Ok(())
    }

    /// Recovers every file of this collector under `data/` of one store.
    async fn recover_tree(
        &mut self,
        store: &SharedStorage,
        target: Target,
    ) -> anyhow::Result<Vec<BatchMark>> {
        let mut marks = Vec::new();
        for topic in tree::topics(store.as_ref(), View::Collector).await? {
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
                if !closed {
                    let recovery =
                        close_recovered(store.as_ref(), &entry.path, encoding, None).await?;
                    tracing::info!(
                        path = %entry.path,
                        root = store.root(),
                        records = recovery.records,
                        dropped_bytes = recovery.dropped_bytes,
                        "closed a file left open by a previous run"
                    );
                    len = recovery.kept_bytes + TRAILER_LEN as u64;
                    marks.extend(recovery.batches.into_iter().map(|b| b.mark.batch().clone()));
                }
                if target == Target::Spool {
                    self.spool_bytes += len;
                    self.spooled
                        .insert((name.minute, entry.path.clone()), (encoding, len));
                }
            }
        }
        Ok(marks)
    }

    async fn save_dedup(&mut self) {
        if !self.dedup_dirty {
            return;
        }
        self.dedup.expire(now_secs(&self.clock));
        let body = Bytes::from(self.dedup.to_json());
        let path = self.dedup_path();
        let store = if self.healthy {
            Some(self.storage.clone())
        } else {
            self.spool.clone()
        };
        let Some(store) = store else { return };
        match store.write_atomic(&path, body).await {
            Ok(()) => self.dedup_dirty = false,
            Err(e) => {
                self.storage_error("dedup_snapshot");
                tracing::warn!(error = %e, "cannot write the dedup snapshot; retrying at the next roll")
            }
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
            tokio::select! {
                biased;
                first = rx.recv() => match first {
                    Some(first) => {
                        let round = self.gather(first, &mut rx).await;
                        self.commit(round).await;
                    }
                    None => break,
                },
                _ = boundary => self.roll().await,
                _ = probe.tick() => self.maintain().await,
            }
        }
        self.shutdown().await;
    }

    async fn gather(
        &mut self,
        first: Submission,
        rx: &mut mpsc::Receiver<Submission>,
    ) -> Vec<Submission> {
        let mut bytes = first.bytes();
        let mut round = vec![first];
        while bytes < MAX_ROUND_BYTES {
            match rx.try_recv() {
                Ok(s) => {
                    bytes += s.bytes();
                    round.push(s);
                }
                Err(_) => break,
            }
        }
        if bytes < SMALL_ROUND_BYTES && !self.settings.group_commit.is_zero() {
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
        let now = now_secs(&self.clock);
        let mut calls = self.deduplicate(round);
        let mut topics = collect_topics(&mut calls);
        self.frame_small_parts(&mut topics);
        // Storage, or the spool while storage is unhealthy.
        let target = if self.healthy || self.spool.is_none() {
            Target::Storage
        } else {
            Target::Spool
        };
        self.write_frames(target, &mut topics).await;
        self.sync_written(target, &mut topics).await;
        self.spool_refused(target, &mut topics).await;
        self.answer(calls, &topics, now);
        self.close_full_files().await;
        self.publish_status();
    }

    /// Answers the idempotent batches already durable, keeps only the missing parts
    /// of partially durable ones, and attaches retries of a batch already in the
    /// round to it.
    fn deduplicate(&mut self, round: Vec<Submission>) -> Vec<RoundCall> {
        let mut calls: Vec<RoundCall> = Vec::with_capacity(round.len());
        let mut in_round: HashMap<(Bytes, i64), usize> = HashMap::new();
        for mut sub in round {
            if let Some((id, seq)) = sub.batch.clone() {
                match self.dedup.state(&id, seq) {
                    BatchState::Durable => {
                        self.metrics.duplicate_batches.inc();
                        sub.answer(Outcome::Durable, &self.metrics);
                        continue;
                    }
                    BatchState::Partial(done) => {
                        sub.parts.retain(|p| !done.contains(&p.index));
                    }
                    BatchState::New => {}
                }
                match in_round.entry((id, seq)) {
                    std::collections::hash_map::Entry::Occupied(owner) => {
                        self.metrics.duplicate_batches.inc();
                        calls[*owner.get()].twins.push(sub);
                        continue;
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(calls.len());
                    }
                }
            }
            calls.push(RoundCall {
                sub,
                durable_parts: Vec::new(),
                failed: false,
                twins: Vec::new(),
            });
        }
        calls
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
                    let marks =
                        (!tr.small_marks.is_empty()).then(|| encode_marks_v1(&tr.small_marks));
                    tr.chunks.push(Chunk {
                        marks,
                        frame,
                        count: tr.small_count,
                        record_bytes: records.len() as u64,
                    });
                }
                Err(e) => {
                    tracing::error!(topic = %tr.topic, error = %e, "compression failed");
                    tr.stage = Stage::Failed;
                }
            }
        }
    }

    /// Appends every topic's frames to its file in `target`.
    async fn write_frames(&mut self, target: Target, topics: &mut RoundTopics) {
        for tr in topics.topics.iter_mut() {
            if tr.stage != Stage::Framed {
                continue;
            }
            match self
                .append_to(target, &tr.topic, tr.encoding, &tr.chunks)
                .await
            {
                Ok(()) => tr.stage = Stage::Written,
                Err(e) => {
                    self.on_failure(&tr.topic, target, "write", &e);
                    tr.stage = Stage::Refused;
                }
            }
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
                Err(e) => {
                    self.on_failure(&topic, target, "sync", &e);
                    tr.stage = Stage::Refused;
                }
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
        let ok = match self
            .append_to(Target::Spool, topic, tr.encoding, &tr.chunks)
            .await
        {
            Ok(()) => match self.files.get_mut(topic) {
                Some(f) => f.sync().await.is_ok(),
                None => false,
            },
            Err(_) => false,
        };
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
        for tr in &topics.topics {
            let durable = tr.stage == Stage::Durable;
            for &(i, part) in &tr.members {
                if durable {
                    calls[i].durable_parts.push(part);
                } else {
                    calls[i].failed = true;
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
        let refused = if self.spool.is_some() {
            TryLaterReason::SpoolUnavailable
        } else {
            TryLaterReason::StorageUnavailable
        };
        for call in calls {
            let outcome = if call.failed {
                Outcome::TryLater(refused)
            } else {
                Outcome::Durable
            };
            if let Some((id, seq)) = &call.sub.batch {
                match outcome {
                    Outcome::Durable => self.dedup.mark_durable(id, *seq, now),
                    Outcome::TryLater(_) => {
                        if !call.durable_parts.is_empty() {
                            self.dedup.mark_parts(id, *seq, &call.durable_parts, now);
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
        if !full.is_empty() {
            self.save_dedup().await;
            for topic in full {
                if let Some(file) = self.files.remove(&topic) {
                    self.close_file(file).await;
                }
            }
        }
    }

    fn on_failure(
        &mut self,
        topic: &Topic,
        target: Target,
        op: &'static str,
        error: &conduit_core::StorageError,
    ) {
        self.storage_error(op);
        tracing::warn!(topic = %topic, ?target, op, error = %error, "write failed; abandoning the file");
        if target == Target::Storage {
            self.healthy = false;
        }
        if let Some(file) = self.files.remove(topic) {
            self.abandon(file);
        }
    }

    fn abandon(&mut self, file: OpenFile) {
        match file.target {
            Target::Storage => {
                self.settings
                    .open
                    .abandoned(file.topic.as_str(), file.name(), file.acked_len);
                self.abandoned.push(Abandoned {
                    path: file.path.clone(),
                    minute: file.minute,
                    encoding: file.encoding,
                    acked_len: file.acked_len,
                })
            }
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
        for chunk in chunks {
            file.append(
                chunk.marks.clone(),
                chunk.frame.clone(),
                chunk.count,
                chunk.record_bytes,
            )
            .await?;
        }
        Ok(())
    }

    async fn open_file(
        &mut self,
        target: Target,
        topic: &Topic,
        encoding: Encoding,
    ) -> conduit_core::StorageResult<OpenFile> {
        let store = match target {
            Target::Storage => self.storage.clone(),
            Target::Spool => self.spool.clone().expect("spool target only with a spool"),
        };
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
                Ok(writer) => {
                    tracing::debug!(path, ?target, "opened data file");
                    let served = (target == Target::Storage).then(|| {
                        let name = path.rsplit('/').next().unwrap_or(&path);
                        self.settings.open.opened(topic.as_str(), name);
                        self.settings.open.clone()
                    });
                    return Ok(OpenFile {
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
                    });
                }
                // A name used by a spool replay or an earlier run: take the next.
                Err(e) if e.is_already_exists() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn close_file(&mut self, file: OpenFile) {
        // Invariant: the dedup snapshot covers every batch mark of a file before the
        // file is closed (recovery reads marks only from unclosed files).
        self.save_dedup().await;
        let (path, target, minute, encoding, acked_len) = (
            file.path.clone(),
            file.target,
            file.minute,
            file.encoding,
            file.acked_len,
        );
        let (topic, name) = (file.topic.clone(), file.name().to_owned());
        let len = file.written_len() + TRAILER_LEN as u64;
        match file.close().await {
            Ok(()) => {
                self.metrics.files_closed.inc();
                if target == Target::Storage {
                    self.settings.open.closed(topic.as_str(), &name, len);
                }
                if target == Target::Spool {
                    self.spool_bytes += TRAILER_LEN as u64;
                    self.spooled.insert((minute, path), (encoding, len));
                }
            }
            Err(e) => {
                self.storage_error("close");
                tracing::warn!(path, error = %e, "closing a data file failed; it will be recovered");
                match target {
                    Target::Storage => {
                        self.healthy = false;
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

    /// Closes every file of past minutes and advances the watermark.
    async fn roll(&mut self) {
        let now_minute = self.clock.minute();
        if now_minute <= self.current_minute {
            return;
        }
        self.save_dedup().await;
        let files: Vec<OpenFile> = self.files.drain().map(|(_, f)| f).collect();
        for file in files {
            self.close_file(file).await;
        }
        self.seqs.retain(|(_, m), _| *m >= now_minute);
        self.current_minute = now_minute;
        tracing::debug!(minute = %now_minute, "minute rolled");
        self.maintain().await;
        self.publish_status();
    }

    /// While storage is unhealthy or the spool holds data: probe storage and, once
    /// it answers, close abandoned files and replay the spool.
    async fn maintain(&mut self) {
        if self.healthy && self.abandoned.is_empty() && self.spooled.is_empty() {
            return;
        }
        // Probe in the background so a hanging storage never stalls commits (they
        // go to the spool meanwhile); act on the probe's answer at a later tick.
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
                let storage = self.storage.clone();
                self.probe = Some(tokio::spawn(async move {
                    match storage.list_or_empty("data").await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::debug!(error = %e, "storage still unavailable");
                            false
                        }
                    }
                }));
                return;
            }
        }
        self.recover_storage().await;
    }

    /// Storage answered a probe: close open spool files, close abandoned files,
    /// replay the spool, and write to storage again.
    async fn recover_storage(&mut self) {
        // Storage answers. New rounds go to storage again: close open spool files.
        let spool_files: Vec<Topic> = self
            .files
            .iter()
            .filter(|(_, f)| f.target == Target::Spool)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in spool_files {
            if let Some(f) = self.files.remove(&topic) {
                self.close_file(f).await;
            }
        }
        while let Some(a) = self.abandoned.first().cloned() {
            match close_recovered(
                self.storage.as_ref(),
                &a.path,
                a.encoding,
                Some(a.acked_len),
            )
            .await
            {
                Ok(r) => {
                    tracing::info!(path = %a.path, kept_bytes = r.kept_bytes, dropped_bytes = r.dropped_bytes, "closed a file abandoned during an outage");
                    self.abandoned.remove(0);
                }
                Err(e) => {
                    tracing::warn!(path = %a.path, error = %e, "cannot close an abandoned file yet");
                    self.publish_status();
                    return;
                }
            }
        }
        if let Some(spool) = self.spool.clone() {
            while let Some(((minute, path), (encoding, len))) =
                self.spooled.first_key_value().map(|(k, v)| (k.clone(), *v))
            {
                match replay_one(spool.as_ref(), self.storage.as_ref(), &path, encoding, len).await
                {
                    Ok(()) => {
                        tracing::info!(path, minute = %minute, bytes = len, "replayed a spooled file to storage");
                        self.spooled.remove(&(minute, path));
                        self.spool_bytes = self.spool_bytes.saturating_sub(len);
                    }
                    Err(e) => {
                        self.storage_error("replay");
                        tracing::warn!(path, error = %e, "spool replay interrupted; will retry");
                        self.publish_status();
                        return;
                    }
                }
            }
        }
        if !self.healthy {
            tracing::info!("storage is available again");
        }
        self.healthy = true;
        self.save_dedup().await;
        self.publish_status();
    }

    async fn shutdown(mut self) {
        self.save_dedup().await;
        let files: Vec<OpenFile> = self.files.drain().map(|(_, f)| f).collect();
        for file in files {
            self.close_file(file).await;
        }
        // Last chance to hand the spool to storage; otherwise the next start does.
        if !self.spooled.is_empty() || !self.abandoned.is_empty() {
            if self.storage.list_or_empty("data").await.is_ok() {
                self.recover_storage().await;
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

/// Groups the round's parts by topic: a part compressed by its connection keeps its
/// frame (and its batch mark); the small parts of a topic are gathered to be
/// compressed into one more frame.
fn collect_topics(calls: &mut [RoundCall]) -> RoundTopics {
    let mut topics = RoundTopics::default();
    for (i, call) in calls.iter_mut().enumerate() {
        let sub = &mut call.sub;
        for part in sub.parts.iter_mut() {
            let entry = topics.entry(&part.topic, part.encoding);
            let mark = sub.batch.as_ref().map(|(id, seq)| BatchMark {
                publisher: id.clone(),
                sequence: *seq,
                part: part.index,
                parts: sub.parts_total,
            });
            match part.frame.take() {
                Some(frame) => entry.chunks.push(Chunk {
                    marks: mark.map(|m| encode_marks_v1(&[m])),
                    frame,
                    count: part.count,
                    record_bytes: part.record_bytes,
                }),
                None => {
                    if entry.records.is_empty() {
                        entry.records = std::mem::take(&mut part.records);
                    } else {
                        entry.records.extend_from_slice(&part.records);
                    }
                    entry.small_count += part.count;
                    entry.small_marks.extend(mark);
                }
            }
            entry.count += part.count;
            entry.payload_bytes += part.payload_bytes;
            entry.members.push((i, part.index));
        }
    }
    topics
}

/// Copies a closed spool file to storage under the same name, then deletes it from
/// the spool. Idempotent: a closed copy already in storage means the copy finished
/// before a crash; an unclosed one is replaced.
async fn replay_one(
    spool: &dyn Storage,
    storage: &dyn Storage,
    path: &str,
    encoding: Encoding,
    acked_len: u64,
) -> anyhow::Result<()> {
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
        Err(e) if e.is_not_found() => false,
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
