//! Calls: what a connection's requests turn into.
//!
//! [`Shared::submit`] turns the entries of a `Log` or `LogBatch` call into one
//! [`Part`] per topic and queues them for the committer as one [`Submission`], in
//! phases: route each entry to its topic's part (or to `_invalid`, with an
//! [`InvalidReason`]), compress the large parts, reserve their bytes in the topic
//! queues, enqueue. A bad entry goes to `_invalid` and the rest of its call is
//! stored; a call that cannot be queued is refused whole with a
//! [`TryLaterReason`]. Every entry sent to `_invalid` is counted per topic and
//! reason and logged at WARN (one line per reason per interval, the topic escaped),
//! so a stream that vanishes into `_invalid` is noticed. `_audit` is written only
//! by `LogBatch` (conduit publishers): a plain `Log` to it goes to `_invalid` with
//! [`InvalidReason::ReservedTopic`], so plain Scribe clients cannot forge the counts
//! `conduit audit` sums. The call holds the memory budget
//! ([`crate::queues::MemoryBudget`]) throughout: its frame and decoded entries
//! while it is routed (its encoded parts grow the hold as they are written, so a
//! call of tiny entries that would each become a large `_invalid` record cannot
//! outgrow it), then only its parts until it is answered. [`Shared::fb303`]
//! answers the monitoring calls. The sockets are [`crate::connection`]'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use conduit_core::config::CollectorConfig;
use conduit_core::format::{batch_digest, Encoding, FormatError, FrameEncoder};
use conduit_core::records::{Base64Bytes, InvalidRecord};
use conduit_core::scribe::{Fb303Call, FbStatus, LogEntry, Reply, ResultCode};
use conduit_core::{Config, NodeName, SharedClock, Topic, Validation};
use tokio::sync::{mpsc, oneshot, watch};

use crate::dedup::BatchKey;
use crate::engine::{EngineStatus, Outcome, Part, Submission};
use crate::metrics::Metrics;
use crate::queues::{Held, MemoryBudget, Reservation, TopicQueue, TopicQueues};
use crate::reasons::{BatchRefusal, CloseReason, ConnectionError, InvalidReason, TryLaterReason};
use crate::Progress;

/// Simple totals for fb303 `getCounters` (Prometheus has the full picture).
#[derive(Debug, Default)]
pub struct Totals {
    /// Log/LogBatch calls.
    pub calls: AtomicU64,
    /// Entries received.
    pub entries: AtomicU64,
    /// Calls answered TRY_LATER.
    pub try_later: AtomicU64,
    /// Entries sent to `_invalid`.
    pub invalid: AtomicU64,
    /// Connections closed for protocol errors.
    pub protocol_errors: AtomicU64,
}

/// State every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Topics and their settings.
    pub config: Arc<Config>,
    /// Effective collector limits.
    pub limits: CollectorConfig,
    /// Cluster name (in `_invalid` records).
    pub cluster: NodeName,
    /// Collector id.
    pub collector: NodeName,
    /// Queue to the committer.
    pub tx: mpsc::Sender<Submission>,
    /// Metrics.
    pub metrics: Metrics,
    /// Totals for fb303.
    pub totals: Totals,
    /// Bytes queued per topic (bounded by `topic_queue_bytes`).
    pub queues: TopicQueues,
    /// Bytes held for calls not yet answered (bounded by `max_inflight_bytes`).
    pub memory: Arc<MemoryBudget>,
    /// What shutdown is doing (for the error when it takes too long).
    pub progress: Arc<Progress>,
    /// Clock (arrival times of `_invalid` records).
    pub clock: SharedClock,
    /// When this collector started (fb303 `aliveSince`).
    pub started_at: i64,
    /// Set when shutdown begins.
    pub shutting_down: watch::Receiver<bool>,
    /// Committer status (fb303 `getStatus`).
    pub status: watch::Receiver<EngineStatus>,
}

/// Parts of at least this many encoded bytes are compressed by the connection
/// task; smaller ones are merged by the committer into one frame per topic (tiny
/// frames would compress poorly).
const COMPRESS_IN_CONNECTION_BYTES: usize = 32 << 10;

/// The `_invalid` record's `detail` for an entry whose topic is rejected.
const TOPIC_RULE: &str = "topic names match [A-Za-z0-9_]{1,128}";

/// Categories a connection remembers at most; the cache is emptied when full.
const CACHED_CATEGORIES: usize = 1024;

/// Step by which a call's hold on the memory budget grows while its entries are
/// encoded into parts.
const ROUTE_STEP_BYTES: u64 = 256 << 10;

/// The `_invalid` record's `detail` for a plain `Log` to a reserved topic.
const RESERVED_RULE: &str =
    "_audit is written only with LogBatch (conduit publishers); a plain Log to it is refused";

/// The `_invalid` record's `detail` for a topic `strict_topics` refuses.
const UNKNOWN_RULE: &str = "strict_topics is set and the topic is not configured";

/// Whether only `LogBatch` calls may write `topic` (`_audit`).
fn is_reserved(topic: &Topic) -> bool {
    topic.as_str() == Topic::AUDIT
}

/// What one connection reuses from call to call.
pub struct CallCache {
    /// What each category seen on this connection resolves to (resolving takes a
    /// UTF-8 check, a name check, a config lookup and a lock). Keys are copies of
    /// categories up to a topic name's length, never views of a frame (a view
    /// would keep the whole frame in memory); at most [`CACHED_CATEGORIES`].
    topics: HashMap<Bytes, TopicInfo>,
    /// A zstd context for the parts compressed on the connection's core.
    encoder: FrameEncoder,
}

impl std::fmt::Debug for CallCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCache")
            .field("topics", &self.topics.len())
            .finish_non_exhaustive()
    }
}

impl CallCache {
    /// An empty cache compressing at zstd `level`.
    pub fn new(level: i32) -> Result<CallCache, FormatError> {
        Ok(CallCache {
            topics: HashMap::new(),
            encoder: FrameEncoder::new(level)?,
        })
    }
}

/// What the settings of a category resolve to.
#[derive(Debug, Clone)]
enum TopicInfo {
    /// Entries go to this topic.
    Valid {
        topic: Topic,
        encoding: Encoding,
        validate: Validation,
        queue: TopicQueue,
    },
    /// Entries go to `_invalid`, for this reason.
    Invalid(InvalidReason),
}

/// Where the entries of one category go in the call being routed: the part of its
/// topic, and how its messages are checked and encoded.
#[derive(Debug, Clone, Copy)]
struct Route {
    /// Index of the topic's part in [`CallParts::parts`].
    index: usize,
    /// How the topic's records are encoded (and which payloads it cannot hold).
    encoding: Encoding,
    /// The topic's payload check.
    validate: Validation,
}

/// Why one entry goes to `_invalid`.
struct Rejection {
    /// The record's `reason` (and the metric label).
    reason: InvalidReason,
    /// The record's `detail`.
    detail: String,
}

/// A call's part for one topic while the call is routed.
struct CallPart {
    /// What the committer gets.
    part: Part,
    /// The topic's queue, which holds the part's bytes once the call is queued.
    queue: TopicQueue,
}

/// The parts of one call, one per topic in order of first appearance.
#[derive(Default)]
struct CallParts {
    /// The parts; a part's index here is its index in the call (batch marks name
    /// it).
    parts: Vec<CallPart>,
    /// Where each topic's part is in `parts`.
    index_of: HashMap<Topic, usize>,
    /// Bytes of records appended to the parts so far.
    bytes: u64,
}

impl CallParts {
    /// The index of `topic`'s part, created (with the queue `queue` returns) at
    /// the topic's first entry.
    fn index(
        &mut self,
        topic: &Topic,
        encoding: Encoding,
        queue: impl FnOnce() -> TopicQueue,
    ) -> usize {
        if let Some(&i) = self.index_of.get(topic) {
            return i;
        }
        let i = self.parts.len();
        self.parts.push(CallPart {
            part: Part {
                topic: topic.clone(),
                encoding,
                index: i as u16,
                records: Vec::new(),
                frame: None,
                record_bytes: 0,
                count: 0,
                payload_bytes: 0,
            },
            queue: queue(),
        });
        self.index_of.insert(topic.clone(), i);
        i
    }

    /// Fixes each part's size and compresses the large ones here, on the
    /// connection's core, so compression is spread over every core instead of the
    /// single committer.
    fn seal(&mut self, encoder: &mut FrameEncoder) {
        for CallPart { part, .. } in self.parts.iter_mut() {
            part.record_bytes = part.records.len() as u64;
            if part.records.len() >= COMPRESS_IN_CONNECTION_BYTES {
                if let Ok(frame) = encoder.frame(&part.records) {
                    part.frame = Some(frame);
                    part.records = Vec::new();
                }
            }
        }
    }

    /// Memory the parts hold (what the call holds of the budget once queued).
    fn memory(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| {
                let frame = p.part.frame.as_ref().map_or(0, Bytes::len);
                (p.part.records.capacity() + frame) as u64
            })
            .sum()
    }
}

/// An answer known without waiting for the committer, owned so that it can wait in
/// the reply queue behind earlier calls.
#[derive(Debug)]
pub enum OwnedReply {
    /// `Log`/`LogBatch`.
    Code(ResultCode),
    /// `getName`, `getVersion`, `getStatusDetails`.
    String(String),
    /// `getCounter`, `aliveSince`.
    I64(i64),
    /// `getStatus`.
    Status(i32),
    /// `getCounters`.
    Counters(Vec<(String, i64)>),
    /// Any method conduit does not answer.
    UnknownMethod,
    /// A call conduit refuses as malformed, or a request refused without being
    /// read (`TApplicationException` PROTOCOL_ERROR with this message); the
    /// connection stays open.
    ProtocolError(String),
}

impl OwnedReply {
    /// The reply to encode.
    pub fn as_reply(&self) -> Reply<'_> {
        match self {
            OwnedReply::Code(c) => Reply::ResultCode(*c),
            OwnedReply::String(s) => Reply::String(s),
            OwnedReply::I64(v) => Reply::I64(*v),
            OwnedReply::Status(v) => Reply::Status(*v),
            OwnedReply::Counters(c) => Reply::Counters(c),
            OwnedReply::UnknownMethod => Reply::UnknownMethod,
            OwnedReply::ProtocolError(m) => Reply::ProtocolError(m),
        }
    }
}

impl Shared {
    /// The key of a `LogBatch` call (its content digest is computed here, once, on
    /// the connection's core), or, for a sequence outside
    /// `scribe::LOG_BATCH_SEQUENCES`, the message of the exception that refuses it
    /// (counted and logged, rate-limited).
    pub fn batch_key(
        &self,
        publisher: Bytes,
        sequence: i64,
        entries: &[LogEntry],
        peer: &str,
    ) -> Result<BatchKey, String> {
        if let Some(refusal) = BatchRefusal::of(sequence) {
            self.metrics
                .refused_batches
                .get_or_create(&Metrics::label("reason", refusal.as_str()))
                .inc();
            if let Some(suppressed) = conduit_core::ratelimit::allow("log_batch_sequence") {
                tracing::warn!(
                    peer,
                    publisher = %conduit_core::text::shown(&publisher),
                    sequence,
                    reason = refusal.as_str(),
                    suppressed,
                    "LogBatch refused: sequence out of range (0 <= sequence < 2^62); nothing stored"
                );
            }
            return Err(refusal.message(sequence));
        }
        let digest = batch_digest(entries.iter().map(|e| (&e.category[..], &e.message[..])));
        Ok(BatchKey {
            publisher,
            sequence,
            digest,
        })
    }

    /// Validates and encodes a call's entries and queues them for the committer;
    /// the receiver gets the committer's answer. A call that cannot be queued is
    /// refused whole. `held` is what the call holds of the memory budget (its
    /// frame and decoded entries); it grows while the parts are encoded and is
    /// then cut to the parts, held until the call is answered.
    pub fn submit(
        &self,
        entries: Vec<LogEntry>,
        batch: Option<BatchKey>,
        cache: &mut CallCache,
        mut held: Held,
    ) -> Result<oneshot::Receiver<Outcome>, TryLaterReason> {
        if *self.shutting_down.borrow() {
            return Err(TryLaterReason::ShuttingDown);
        }
        self.totals.calls.fetch_add(1, Ordering::Relaxed);
        self.totals
            .entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let mut parts = self.route(&entries, batch.is_some(), &mut cache.topics, &mut held)?;
        // The entries, and with them the frame they are views of, are freed.
        drop(entries);
        parts.seal(&mut cache.encoder);
        let memory = parts.memory();
        held.force_to(memory);
        held.shrink_to(memory);
        // Bounded queues: refuse the whole call rather than store part of it.
        let queued = self.queues.reserve(
            parts
                .parts
                .iter()
                .map(|p| (&p.part.topic, &p.queue, p.part.record_bytes)),
        )?;
        let parts = parts.parts.into_iter().map(|p| p.part).collect();
        self.enqueue(parts, batch, queued.with_memory(held))
    }

    /// Appends each entry to its topic's part, or, with the reason, to `_invalid`'s,
    /// growing `held` with the parts ([`TryLaterReason::Memory`] when the budget
    /// cannot hold them). `idempotent`: the call is a `LogBatch`, which may write
    /// reserved topics.
    fn route(
        &self,
        entries: &[LogEntry],
        idempotent: bool,
        topics: &mut HashMap<Bytes, TopicInfo>,
        held: &mut Held,
    ) -> Result<CallParts, TryLaterReason> {
        let mut parts = CallParts::default();
        let mut charged = 0;
        // Consecutive entries usually share a category: resolve it once per run.
        let mut current: Option<(&Bytes, Result<Route, InvalidReason>)> = None;
        for entry in entries {
            let route = match current {
                Some((category, route)) if *category == entry.category => route,
                _ => {
                    let route = self.route_of(&entry.category, idempotent, topics, &mut parts);
                    current = Some((&entry.category, route));
                    route
                }
            };
            match self.check(route, &entry.message) {
                Ok(route) => {
                    let part = &mut parts.parts[route.index].part;
                    let before = part.records.len();
                    route
                        .encoding
                        .append_checked(&entry.message, &mut part.records);
                    part.count += 1;
                    part.payload_bytes += entry.message.len() as u64;
                    parts.bytes += (part.records.len() - before) as u64;
                }
                Err(rejection) => self.send_to_invalid(entry, rejection, &mut parts),
            }
            if parts.bytes > charged {
                let more = (parts.bytes - charged).max(ROUTE_STEP_BYTES);
                if !held.add(more) {
                    return Err(TryLaterReason::Memory);
                }
                charged += more;
            }
        }
        Ok(parts)
    }

    /// Where the entries of `category` go in this call (`idempotent`: a
    /// `LogBatch`).
    fn route_of(
        &self,
        category: &Bytes,
        idempotent: bool,
        topics: &mut HashMap<Bytes, TopicInfo>,
        parts: &mut CallParts,
    ) -> Result<Route, InvalidReason> {
        let info = match topics.get(category) {
            Some(info) => info.clone(),
            None => {
                let info = self.resolve(category);
                if category.len() <= Topic::MAX_LEN {
                    if topics.len() >= CACHED_CATEGORIES {
                        topics.clear();
                    }
                    topics.insert(Bytes::copy_from_slice(category), info.clone());
                }
                info
            }
        };
        match info {
            TopicInfo::Valid { topic, .. } if !idempotent && is_reserved(&topic) => {
                Err(InvalidReason::ReservedTopic)
            }
            TopicInfo::Valid {
                topic,
                encoding,
                validate,
                queue,
            } => Ok(Route {
                index: parts.index(&topic, encoding, || queue),
                encoding,
                validate,
            }),
            TopicInfo::Invalid(reason) => Err(reason),
        }
    }

    fn resolve(&self, category: &Bytes) -> TopicInfo {
        if category.len() > Topic::MAX_LEN {
            return TopicInfo::Invalid(InvalidReason::InvalidTopic);
        }
        let Ok(name) = std::str::from_utf8(category) else {
            return TopicInfo::Invalid(InvalidReason::InvalidTopic);
        };
        let Ok(topic) = Topic::new(name) else {
            return TopicInfo::Invalid(InvalidReason::InvalidTopic);
        };
        if self.limits.strict_topics && !self.config.is_listed(&topic) && !topic.is_system() {
            return TopicInfo::Invalid(InvalidReason::UnknownTopic);
        }
        let settings = self.config.topic(&topic);
        TopicInfo::Valid {
            queue: self.queues.of(&topic),
            topic,
            encoding: settings.encoding,
            validate: settings.validate,
        }
    }

    /// Whether a message of a category routed to `route` may be stored in its topic.
    fn check(
        &self,
        route: Result<Route, InvalidReason>,
        message: &[u8],
    ) -> Result<Route, Rejection> {
        let route = route.map_err(|reason| Rejection {
            reason,
            detail: match reason {
                InvalidReason::ReservedTopic => RESERVED_RULE,
                InvalidReason::UnknownTopic => UNKNOWN_RULE,
                _ => TOPIC_RULE,
            }
            .to_string(),
        })?;
        let max_message = self.limits.max_message_bytes as usize;
        if message.len() > max_message {
            return Err(Rejection {
                reason: InvalidReason::MessageTooLarge,
                detail: format!(
                    "message of {} bytes exceeds max_message_bytes {}",
                    message.len(),
                    max_message
                ),
            });
        }
        if let Err(e) = route.encoding.check(message) {
            return Err(Rejection {
                reason: InvalidReason::NewlineInLinesPayload,
                detail: e.to_string(),
            });
        }
        if let Err(e) = route.validate.check(message) {
            return Err(Rejection {
                reason: InvalidReason::ValidationFailed,
                detail: e,
            });
        }
        Ok(route)
    }

    /// Counts a rejected entry and appends its `_invalid` record to the call.
    fn send_to_invalid(&self, entry: &LogEntry, rejection: Rejection, parts: &mut CallParts) {
        let Rejection { reason, detail } = rejection;
        self.totals.invalid.fetch_add(1, Ordering::Relaxed);
        // Bounded label values: a category that is not a valid topic name (or one
        // strict_topics refuses) is `(invalid)`, never the client's bytes.
        let topic_label = match std::str::from_utf8(&entry.category) {
            Ok(name) if !reason.is_about_topic() && Topic::new(name).is_ok() => name.to_owned(),
            _ => "(invalid)".to_owned(),
        };
        self.metrics
            .invalid
            .get_or_create(&vec![
                ("topic", topic_label),
                ("reason", reason.as_str().to_string()),
            ])
            .inc();
        if let Some(suppressed) = conduit_core::ratelimit::allow(reason.log_key()) {
            tracing::warn!(
                topic = %conduit_core::text::shown(&entry.category),
                reason = reason.as_str(),
                detail = %conduit_core::text::shown(&detail),
                suppressed,
                "entry sent to _invalid (conduit_collector_invalid_total counts every one by topic and reason)"
            );
        }
        let record = self.invalid_record(&entry.category, reason, &detail, &entry.message);
        let invalid_topic = Topic::invalid();
        let index = parts.index(&invalid_topic, Encoding::Lines, || {
            self.queues.of(&invalid_topic)
        });
        let part = &mut parts.parts[index].part;
        part.records.extend_from_slice(&record);
        parts.bytes += record.len() as u64;
        part.count += 1;
        part.payload_bytes += entry.message.len() as u64;
    }

    /// One `_invalid` record (`docs/format.md` §5.5), with its newline.
    fn invalid_record(
        &self,
        category: &[u8],
        reason: InvalidReason,
        detail: &str,
        payload: &[u8],
    ) -> Vec<u8> {
        InvalidRecord {
            arrived_at: self.clock.now(),
            cluster: self.cluster.clone(),
            collector: self.collector.clone(),
            detail: detail.to_owned(),
            payload_base64: Base64Bytes(Bytes::copy_from_slice(payload)),
            reason: reason.as_str().to_owned(),
            topic: String::from_utf8_lossy(category).into_owned(),
        }
        .to_line()
    }

    /// Hands the call to the committer, or gives its queued bytes back.
    fn enqueue(
        &self,
        parts: Vec<Part>,
        batch: Option<BatchKey>,
        queued: Reservation,
    ) -> Result<oneshot::Receiver<Outcome>, TryLaterReason> {
        let (reply, rx) = oneshot::channel();
        let submission = Submission {
            parts_total: parts.len() as u16,
            parts,
            batch,
            queued,
            arrived: Instant::now(),
            reply,
        };
        match self.tx.try_send(submission) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(s)) => {
                s.queued.release();
                Err(TryLaterReason::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(s)) => {
                s.queued.release();
                Err(TryLaterReason::ShuttingDown)
            }
        }
    }

    /// Counts a call refused before it reached the committer (the committer counts
    /// its own `TRY_LATER`s in Prometheus; the reply writer counts them in fb303).
    pub fn count_try_later(&self, reason: TryLaterReason) {
        self.metrics
            .try_later
            .get_or_create(&Metrics::label("reason", reason.as_str()))
            .inc();
        self.totals.try_later.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for a limit on time or room.
    pub fn count_closed(&self, reason: CloseReason) {
        self.metrics
            .connections_closed
            .get_or_create(&Metrics::label("reason", reason.as_str()))
            .inc();
    }

    /// Counts a connection refused or closed by the collector.
    pub fn count_connection_error(&self, error: ConnectionError) {
        if let ConnectionError::Protocol(_) = error {
            self.totals.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .connection_errors
            .get_or_create(&Metrics::label("reason", error.as_str()))
            .inc();
    }

    /// The answer to an fb303 call.
    pub fn fb303(&self, call: &Fb303Call) -> OwnedReply {
        match call {
            Fb303Call::GetName => {
                OwnedReply::String(format!("conduit-collector {}", self.collector))
            }
            Fb303Call::GetVersion => OwnedReply::String(env!("CARGO_PKG_VERSION").to_string()),
            Fb303Call::GetStatus => OwnedReply::Status(self.fb_status().as_i32()),
            Fb303Call::GetStatusDetails => OwnedReply::String(self.status_details()),
            Fb303Call::GetCounters => OwnedReply::Counters(self.counters()),
            Fb303Call::GetCounter { key } => {
                let key = String::from_utf8_lossy(key);
                let value = self
                    .counters()
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v)
                    .unwrap_or(0);
                OwnedReply::I64(value)
            }
            Fb303Call::AliveSince => OwnedReply::I64(self.started_at),
        }
    }

    fn fb_status(&self) -> FbStatus {
        if *self.shutting_down.borrow() {
            FbStatus::Stopping
        } else if !self.status.borrow().storage_healthy {
            FbStatus::Warning
        } else {
            FbStatus::Alive
        }
    }

    fn status_details(&self) -> String {
        let status = self.status.borrow().clone();
        if *self.shutting_down.borrow() {
            "shutting down".to_string()
        } else if !status.storage_healthy {
            format!(
                "storage unavailable; {} bytes spooled",
                status.spooled_bytes
            )
        } else {
            String::new()
        }
    }

    fn counters(&self) -> Vec<(String, i64)> {
        let t = &self.totals;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        vec![
            ("calls".to_string(), get(&t.calls)),
            ("entries".to_string(), get(&t.entries)),
            ("try_later".to_string(), get(&t.try_later)),
            ("invalid".to_string(), get(&t.invalid)),
            ("protocol_errors".to_string(), get(&t.protocol_errors)),
            (
                "spooled_bytes".to_string(),
                self.status.borrow().spooled_bytes as i64,
            ),
        ]
    }
}
