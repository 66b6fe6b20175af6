//! Connections: Scribe/Thrift framed binary protocol in, durable acknowledgements out.
//!
//! Each connection has a reader (frames → validated, encoded [`Submission`]s) and a
//! writer (answers in request order, so pipelined calls are answered correctly).
//! A bad frame closes only its own connection; a bad entry goes to `_invalid` and
//! the rest of its call is stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use conduit_core::config::CollectorConfig;
use conduit_core::format::{Encoding, FrameEncoder};
use conduit_core::records::{Base64Bytes, InvalidRecord};
use conduit_core::scribe::{
    decode_request, read_frame, Call, Fb303Call, FbStatus, LogEntry, ProtocolError, Reply, Request,
    ResultCode,
};
use conduit_core::{Config, NodeName, SharedClock, Topic, Validation};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{EngineStatus, Outcome, Part, Submission};
use crate::metrics::Metrics;

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
    pub queues: Mutex<HashMap<Topic, Arc<AtomicU64>>>,
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

/// A category resolved for one call: (part index, encoding, validation), or the
/// reason it goes to `_invalid`.
type Slot = Result<(usize, Encoding, Validation), &'static str>;

/// The parts of one call, one per topic in order of first appearance.
#[derive(Default)]
struct PartsBuilder {
    parts: Vec<Part>,
    queues: Vec<Arc<AtomicU64>>,
    index_of: HashMap<Topic, usize>,
}

impl PartsBuilder {
    fn index(&mut self, topic: &Topic, encoding: Encoding, queue: Arc<AtomicU64>) -> usize {
        if let Some(&i) = self.index_of.get(topic) {
            return i;
        }
        let i = self.parts.len();
        self.parts.push(Part {
            topic: topic.clone(),
            encoding,
            index: i as u16,
            records: Vec::new(),
            frame: None,
            record_bytes: 0,
            count: 0,
            payload_bytes: 0,
        });
        self.queues.push(queue);
        self.index_of.insert(topic.clone(), i);
        i
    }
}

/// What the settings of a category resolve to.
#[derive(Debug, Clone)]
enum TopicInfo {
    Valid {
        topic: Topic,
        encoding: Encoding,
        validate: Validation,
        queue: Arc<AtomicU64>,
    },
    Invalid(&'static str),
}

/// A reply the writer must send, in order.
enum Pending {
    Now(Request, ReplyOwned),
    Wait(Request, oneshot::Receiver<Outcome>),
}

enum ReplyOwned {
    Code(ResultCode),
    String(String),
    I64(i64),
    Status(i32),
    Counters(Vec<(String, i64)>),
    UnknownMethod,
}

impl Shared {
    fn queue_of(&self, topic: &Topic) -> Arc<AtomicU64> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(topic.clone()).or_default().clone()
    }

    fn resolve(&self, category: &Bytes) -> TopicInfo {
        let Ok(name) = std::str::from_utf8(category) else {
            return TopicInfo::Invalid("invalid_topic");
        };
        let Ok(topic) = Topic::new(name) else {
            return TopicInfo::Invalid("invalid_topic");
        };
        if self.limits.strict_topics && !self.config.is_listed(&topic) && !topic.is_system() {
            return TopicInfo::Invalid("unknown_topic");
        }
        let settings = self.config.topic(&topic);
        TopicInfo::Valid {
            queue: self.queue_of(&topic),
            topic,
            encoding: settings.encoding,
            validate: settings.validate,
        }
    }

    /// The `_invalid` line for a refused entry (`docs/format.md` §5.5).
    fn invalid_record(
        &self,
        category: &[u8],
        reason: &str,
        detail: &str,
        payload: &[u8],
    ) -> Vec<u8> {
        InvalidRecord {
            arrived_at: self.clock.now(),
            cluster: self.cluster.clone(),
            collector: self.collector.clone(),
            detail: detail.to_owned(),
            payload_base64: Base64Bytes(Bytes::copy_from_slice(payload)),
            reason: reason.to_owned(),
            topic: String::from_utf8_lossy(category).into_owned(),
        }
        .to_line()
    }

    /// Validates and encodes a call's entries and queues them for the committer.
    fn submit(
        &self,
        entries: Vec<LogEntry>,
        batch: Option<(Bytes, i64)>,
        cache: &mut HashMap<Bytes, TopicInfo>,
        encoder: &mut FrameEncoder,
    ) -> Result<oneshot::Receiver<Outcome>, &'static str> {
        if *self.shutting_down.borrow() {
            return Err("shutting_down");
        }
        self.totals.calls.fetch_add(1, Ordering::Relaxed);
        self.totals
            .entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let max_message = self.limits.max_message_bytes as usize;
        let mut parts = PartsBuilder::default();
        // Consecutive entries usually share a category: resolve it once per run.
        let mut current: Option<(Bytes, Slot)> = None;
        for entry in &entries {
            let slot = match &current {
                Some((category, slot)) if *category == entry.category => *slot,
                _ => {
                    let info = cache
                        .entry(entry.category.clone())
                        .or_insert_with(|| self.resolve(&entry.category))
                        .clone();
                    let slot = match info {
                        TopicInfo::Valid {
                            topic,
                            encoding,
                            validate,
                            queue,
                        } => Ok((parts.index(&topic, encoding, queue), encoding, validate)),
                        TopicInfo::Invalid(reason) => Err(reason),
                    };
                    current = Some((entry.category.clone(), slot));
                    slot
                }
            };
            let message = &entry.message;
            let rejection: (&'static str, String) = match slot {
                Err(reason) => (reason, "topic names match [A-Za-z0-9_]{1,128}".to_string()),
                Ok((index, encoding, validate)) => {
                    if message.len() > max_message {
                        (
                            "message_too_large",
                            format!(
                                "message of {} bytes exceeds max_message_bytes {}",
                                message.len(),
                                max_message
                            ),
                        )
                    } else if let Err(e) = encoding.check(message) {
                        ("newline_in_lines_payload", e.to_string())
                    } else if let Err(e) = validate.check(message) {
                        ("validation_failed", e)
                    } else {
                        let part = &mut parts.parts[index];
                        encoding.append_checked(message, &mut part.records);
                        part.count += 1;
                        part.payload_bytes += message.len() as u64;
                        continue;
                    }
                }
            };
            let (reason, detail) = rejection;
            self.totals.invalid.fetch_add(1, Ordering::Relaxed);
            let category = String::from_utf8_lossy(&entry.category);
            let shown: String = category.chars().take(64).collect();
            self.metrics
                .invalid
                .get_or_create(&vec![
                    (
                        "topic",
                        if matches!(reason, "invalid_topic" | "unknown_topic") {
                            "(invalid)".to_string()
                        } else {
                            shown.clone()
                        },
                    ),
                    ("reason", reason.to_string()),
                ])
                .inc();
            if reason == "message_too_large" {
                tracing::warn!(topic = %shown, reason, detail, "entry sent to _invalid");
            } else {
                tracing::debug!(topic = %shown, reason, detail, "entry sent to _invalid");
            }
            let record = self.invalid_record(&entry.category, reason, &detail, message);
            let invalid_topic = Topic::invalid();
            let index = parts.index(
                &invalid_topic,
                Encoding::Lines,
                self.queue_of(&invalid_topic),
            );
            let part = &mut parts.parts[index];
            part.records.extend_from_slice(&record);
            part.count += 1;
            part.payload_bytes += message.len() as u64;
        }
        let PartsBuilder {
            mut parts, queues, ..
        } = parts;
        // Large parts are compressed here, on the connection's core, so compression
        // is spread over every core instead of the single committer.
        for part in parts.iter_mut() {
            part.record_bytes = part.records.len() as u64;
            if part.records.len() >= COMPRESS_IN_CONNECTION_BYTES {
                if let Ok(frame) = encoder.frame(&part.records) {
                    part.frame = Some(frame);
                    part.records = Vec::new();
                }
            }
        }
        // Bounded queues: refuse the whole call rather than store part of it.
        let limit = self.limits.topic_queue_bytes;
        let mut taken: Vec<(Arc<AtomicU64>, u64)> = Vec::with_capacity(parts.len());
        for (part, queue) in parts.iter().zip(&queues) {
            let bytes = part.record_bytes;
            let before = queue.fetch_add(bytes, Ordering::Relaxed);
            taken.push((queue.clone(), bytes));
            if before + bytes > limit && before > 0 {
                for (q, b) in &taken {
                    q.fetch_sub(*b, Ordering::Relaxed);
                }
                tracing::info!(topic = %part.topic, queued_bytes = before, topic_queue_bytes = limit, "topic queue full: TRY_LATER");
                return Err("queue_full");
            }
        }
        let (reply, rx) = oneshot::channel();
        let submission = Submission {
            parts_total: parts.len() as u16,
            parts,
            batch,
            queued: taken,
            arrived: Instant::now(),
            reply,
        };
        match self.tx.try_send(submission) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(s)) => {
                for (q, b) in &s.queued {
                    q.fetch_sub(*b, Ordering::Relaxed);
                }
                Err("queue_full")
            }
            Err(mpsc::error::TrySendError::Closed(s)) => {
                for (q, b) in &s.queued {
                    q.fetch_sub(*b, Ordering::Relaxed);
                }
                Err("shutting_down")
            }
        }
    }

    fn fb303(&self, call: &Fb303Call) -> ReplyOwned {
        match call {
            Fb303Call::GetName => {
                ReplyOwned::String(format!("conduit-collector {}", self.collector))
            }
            Fb303Call::GetVersion => ReplyOwned::String(env!("CARGO_PKG_VERSION").to_string()),
            Fb303Call::GetStatus => ReplyOwned::Status(self.fb_status().as_i32()),
            Fb303Call::GetStatusDetails => ReplyOwned::String(self.status_details()),
            Fb303Call::GetCounters => ReplyOwned::Counters(self.counters()),
            Fb303Call::GetCounter { key } => {
                let key = String::from_utf8_lossy(key);
                let value = self
                    .counters()
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v)
                    .unwrap_or(0);
                ReplyOwned::I64(value)
            }
            Fb303Call::AliveSince => ReplyOwned::I64(self.started_at),
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

fn protocol_error_kind(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::FrameTooLarge { .. } => "frame_too_large",
        ProtocolError::TruncatedFrame { .. } => "truncated_frame",
        ProtocolError::Io(_) => "io",
        ProtocolError::WrongMessageType { .. } => "wrong_message_type",
        _ => "malformed",
    }
}

/// How long a connection over `max_connections` may stay open to receive its
/// `TRY_LATER` (or one fb303 answer) before it is closed.
const OVER_LIMIT_GRACE: Duration = Duration::from_secs(5);

/// Once shutdown has begun, how long one reply may wait for a client that does not
/// read; then the connection is dropped so that shutdown can finish.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// Runs a socket write; once shutdown has begun, gives up after
/// [`SHUTDOWN_WRITE_GRACE`] (a client that never reads would otherwise block the
/// reply writer, and with it the connection and the whole shutdown, forever).
async fn write_unless_stuck<T>(
    io: impl std::future::Future<Output = std::io::Result<T>>,
    shutdown: &mut watch::Receiver<bool>,
) -> std::io::Result<T> {
    let stuck = async {
        if shutdown.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_WRITE_GRACE).await;
    };
    tokio::select! {
        r = io => r,
        _ = stuck => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client does not read its replies",
        )),
    }
}

/// Serves one connection until the peer closes it, it misbehaves, or shutdown.
pub async fn handle_connection(stream: TcpStream, shared: Arc<Shared>, over_limit: bool) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (ptx, mut prx) = mpsc::channel::<Pending>(256);
    let metrics = shared.metrics.clone();
    let totals_shared = shared.clone();
    let mut write_shutdown = shared.shutting_down.clone();
    let write_peer = peer.clone();
    let write_task = tokio::spawn(async move {
        let shutdown = &mut write_shutdown;
        let gave_up = |e: &std::io::Error| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                tracing::warn!(peer = write_peer, grace = ?SHUTDOWN_WRITE_GRACE, "client does not read its replies; closing the connection to finish shutdown");
            }
        };
        let mut writer = BufWriter::with_capacity(64 << 10, writer);
        let mut out = Vec::with_capacity(256);
        while let Some(pending) = prx.recv().await {
            let (request, reply) = match pending {
                Pending::Now(request, reply) => (request, reply),
                Pending::Wait(request, rx) => {
                    let code = match rx.await {
                        Ok(Outcome::Durable) => ResultCode::Ok,
                        Ok(Outcome::TryLater(_)) | Err(_) => {
                            totals_shared
                                .totals
                                .try_later
                                .fetch_add(1, Ordering::Relaxed);
                            ResultCode::TryLater
                        }
                    };
                    (request, ReplyOwned::Code(code))
                }
            };
            if request.oneway {
                continue;
            }
            out.clear();
            let reply = match &reply {
                ReplyOwned::Code(c) => Reply::ResultCode(*c),
                ReplyOwned::String(s) => Reply::String(s),
                ReplyOwned::I64(v) => Reply::I64(*v),
                ReplyOwned::Status(v) => Reply::Status(*v),
                ReplyOwned::Counters(c) => Reply::Counters(c),
                ReplyOwned::UnknownMethod => Reply::UnknownMethod,
            };
            request.encode_reply(&reply, &mut out);
            if let Err(e) = write_unless_stuck(writer.write_all(&out), shutdown).await {
                gave_up(&e);
                return;
            }
            if prx.is_empty() {
                if let Err(e) = write_unless_stuck(writer.flush(), shutdown).await {
                    gave_up(&e);
                    return;
                }
            }
        }
        if let Err(e) = write_unless_stuck(writer.flush(), shutdown).await {
            gave_up(&e);
        }
    });

    let mut shutdown = shared.shutting_down.clone();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut cache: HashMap<Bytes, TopicInfo> = HashMap::new();
    let mut encoder = match FrameEncoder::new(shared.limits.zstd_level) {
        Ok(encoder) => encoder,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a zstd encoder; closing the connection");
            return;
        }
    };
    let max_frame = shared.limits.max_frame_bytes as usize;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // A connection over max_connections gets one request answered (TRY_LATER
        // for Log calls) within OVER_LIMIT_GRACE, then it is closed.
        let over_limit_deadline = async {
            if over_limit {
                tokio::time::sleep(OVER_LIMIT_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let frame = tokio::select! {
            r = read_frame(&mut reader, max_frame, &mut buf) => r,
            _ = shutdown.changed() => break,
            _ = over_limit_deadline => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                let kind = protocol_error_kind(&e);
                shared
                    .totals
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                metrics
                    .connection_errors
                    .get_or_create(&Metrics::label("reason", kind))
                    .inc();
                if kind == "frame_too_large" {
                    tracing::warn!(peer, error = %e, max_frame_bytes = max_frame, "closing connection: frame too large");
                } else {
                    tracing::info!(peer, error = %e, "closing connection");
                }
                break;
            }
        };
        let request = match decode_request(frame) {
            Ok(r) => r,
            Err(e) => {
                let kind = protocol_error_kind(&e);
                shared
                    .totals
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                metrics
                    .connection_errors
                    .get_or_create(&Metrics::label("reason", kind))
                    .inc();
                tracing::warn!(peer, error = %e, "closing connection: undecodable request");
                break;
            }
        };
        let method = match &request.call {
            Call::Log { .. } => "Log",
            Call::LogBatch { .. } => "LogBatch",
            Call::Fb303(c) => c.method_name(),
            Call::Unknown { .. } => "unknown",
        };
        metrics
            .calls
            .get_or_create(&Metrics::label("method", method))
            .inc();
        let pending = match request.call.clone() {
            Call::Log { entries } | Call::LogBatch { entries, .. } if over_limit => {
                let _ = entries;
                tracing::debug!(peer, "over max_connections: TRY_LATER");
                // Counts it in Prometheus and in fb303's `try_later` alike.
                let _ = ptx
                    .send(try_later(&shared, request, "max_connections"))
                    .await;
                break;
            }
            Call::Log { entries } => match shared.submit(entries, None, &mut cache, &mut encoder) {
                Ok(rx) => Pending::Wait(request, rx),
                Err(reason) => try_later(&shared, request, reason),
            },
            Call::LogBatch {
                publisher_id,
                sequence,
                entries,
            } => match shared.submit(
                entries,
                Some((publisher_id, sequence)),
                &mut cache,
                &mut encoder,
            ) {
                Ok(rx) => Pending::Wait(request, rx),
                Err(reason) => try_later(&shared, request, reason),
            },
            Call::Fb303(call) => {
                let reply = shared.fb303(&call);
                Pending::Now(request, reply)
            }
            Call::Unknown { name } => {
                tracing::info!(peer, method = %name, "unknown method");
                Pending::Now(request, ReplyOwned::UnknownMethod)
            }
        };
        if ptx.send(pending).await.is_err() || over_limit {
            break;
        }
    }
    drop(ptx);
    let _ = write_task.await;
}

fn try_later(shared: &Shared, request: Request, reason: &'static str) -> Pending {
    shared
        .metrics
        .try_later
        .get_or_create(&Metrics::label("reason", reason))
        .inc();
    shared.totals.try_later.fetch_add(1, Ordering::Relaxed);
    Pending::Now(request, ReplyOwned::Code(ResultCode::TryLater))
}
