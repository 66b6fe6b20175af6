//! `conduit-publisher`: the client library serving applications embed to send events
//! to conduit collectors.
//!
//! # Overview
//! A [`Publisher`] validates each event at the call (topic name, size, encoding),
//! puts it on a bounded in-memory queue and returns; one background task per
//! publisher groups queued events into batches (by count, bytes and linger time;
//! the linger is adaptive by default: a batch goes out at once when nothing is
//! on the wire, see [`PublisherBuilder::adaptive_linger`]) and
//! sends them to a collector with conduit's idempotent
//! `LogBatch(publisher_id, sequence, entries)` call over the Scribe protocol. The
//! collector answers `OK` only once a batch is durable, and remembers which
//! batches (`publisher_id`, `sequence` and a digest of their content) it made
//! durable, so a batch re-sent after a lost acknowledgement is stored once.
//!
//! - **Queue full**: [`WhenFull::Block`] (wait for room), [`WhenFull::Error`]
//!   ([`PublishError::QueueFull`] at once) or [`WhenFull::Timeout`]
//!   ([`PublishError::Timeout`] after waiting that long).
//! - **Acknowledgements**: [`Publisher::publish_acked`] resolves once the event is
//!   durable; [`Publisher::flush`] once everything enqueued before it is durable;
//!   [`Publisher::close`] flushes, then stops the background task. Dropping every
//!   handle without `close` stops the task at once; events not yet acknowledged are
//!   then abandoned (counted in [`Stats::failed`]).
//! - **Pipelining**: up to [`PublisherBuilder::max_in_flight`] batches (at most 64)
//!   are sent before their replies arrive; replies come back in order.
//! - **Several connections** ([`PublisherBuilder::connections`], default 1): the
//!   in-flight batches are spread round-robin over that many connections to the
//!   same collector, so it can work on several at once (throughput); batches are
//!   still finished (counted, acknowledged to callers, removed from the spool) in
//!   order. Any failure on one connection drops them all and re-sends what is
//!   unacknowledged.
//! - **`TRY_LATER`**: the batch is retried in place after an exponential backoff
//!   with jitter; until it succeeds only that batch is sent (one in flight).
//! - **Connection loss**: the publisher reconnects with backoff, trying the
//!   collectors in the order given (the first is preferred, the rest are
//!   failover), and re-sends every unacknowledged batch with its original sequence.
//!   While connected to a failover collector it tries the preferred one every
//!   [`PublisherBuilder::preferred_retry`] and moves back once it answers (after the
//!   batches in flight on the old connection are acknowledged).
//!   A failed attempt is logged (a warning naming the collector, the cause —
//!   connection refused, timed out, DNS — and the attempts so far, at most one
//!   line per 10 s) and [`Publisher::connect_errors`] returns, per collector not
//!   reachable since the last connection, the same as a [`ConnectError`].
//! - **Disk spool** (optional, [`PublisherBuilder::spool_dir`]): see below.
//! - **Old collectors**: a server answering `LogBatch` with `UNKNOWN_METHOD` (a plain
//!   Scribe server) is detected once (logged) and the publisher falls back to plain
//!   `Log`, one batch in flight at a time.
//!
//! # Disk spool
//! With [`PublisherBuilder::spool_dir`], once no collector has acknowledged
//! anything for [`PublisherBuilder::spool_after`] (default 2 s) after a failure
//! (every collector refusing connections, connections lost, `TRY_LATER`), the
//! publisher *spools*: the batches it holds and every batch formed afterwards are
//! appended to segment files in that directory and fsynced (format and recovery
//! rules below). A spooled
//! event no longer takes room in the queue, so `publish` keeps returning at once
//! while the collectors are down, up to [`PublisherBuilder::spool_max_bytes`]
//! (default 1 GiB); when the spool is full, events wait in memory and the
//! [`WhenFull`] policy applies once the queue is full.
//!
//! At the first acknowledgement the publisher stops spooling, but batches keep
//! going through the spool until it is empty, so events are sent in the order
//! they were accepted. A spooled batch keeps the publisher id and sequence it was
//! formed with, and a replay re-sends exactly that `LogBatch`: a batch that reached
//! the collector before a crash or a lost acknowledgement is deduplicated there (as
//! long as the collector still remembers that publisher: 6 hours). A new publisher
//! opening the same directory (after a restart) replays what is left before its
//! own events. One publisher at a time may use a directory (it is locked).
//!
//! With a spool, [`Publisher::flush`] and [`Publisher::close`] wait until every
//! event enqueued before them is acknowledged and the spool is empty — or, while
//! the publisher is spooling, until those events are acknowledged **or spooled**
//! (so `close` returns within about `spool_after` when no collector answers); a [`Publisher::publish_acked`] call whose
//! event is still in the spool when the publisher closes gets
//! [`PublishError::Spooled`]. No event is lost silently: each one ends up
//! acknowledged ([`Stats::acknowledged`], or [`Stats::replayed`] after going through
//! the spool), spooled ([`Stats::spooled`], [`Stats::spool_events`]) or failed
//! ([`Stats::failed`], with an error from the call when it was refused).
//!
//! # Delivery guarantees
//! - Against one collector: every acknowledged event is stored exactly once, even
//!   when acknowledgements are lost and batches are re-sent (the collector drops a
//!   batch whose `(publisher_id, sequence)` and content it already stored). With
//!   the plain-`Log` fallback a re-send after a lost acknowledgement can duplicate
//!   a batch.
//! - A batch a collector refuses with an exception (a sequence out of range, a
//!   call it cannot decode) is not retried: its events are failed
//!   ([`Stats::failed`], [`PublishError::Refused`] for `publish_acked`) and the
//!   error is logged.
//! - Across collectors: **at least once**. A batch whose acknowledgement was lost
//!   when the connection died, re-sent to a *different* collector after failover,
//!   is stored by both (deduplication is per collector). A collector that stops
//!   gracefully answers the calls it already received, so only an abrupt loss (crash,
//!   network cut) can cause such duplicates.
//! - Order: events of one publisher are stored in publish order, per topic, as long
//!   as no batch is answered `TRY_LATER` while later batches are already in flight
//!   (those later batches may then be stored before the retried one), and only
//!   with one connection: with `connections > 1` each batch stays in order but
//!   batches may be stored in any order.
//!
//! ## Spool format
//! A `LOCK` file and append-only segment files of checksummed batch records,
//! specified in `docs/format.md` §10. At open, a segment is cut at its first torn
//! or corrupt record and the intact records before it are replayed (logged as a
//! warning with the bytes cut).
//!
//! # Audit records
//! Unless disabled with [`PublisherBuilder::audit_interval`]`(None)`, the publisher
//! counts its acknowledged events per topic and per *enqueue minute* (the UTC
//! minute of [`PublisherBuilder::clock`] in which `publish` accepted the event)
//! and, every `audit_interval` (default 60 s) and at [`Publisher::close`],
//! publishes the counts accumulated since its previous audit record for each key as
//! events on the system topic `_audit`, through its own pipeline (so they are
//! batched, acknowledged and deduplicated like any other event; the collector
//! stores them in files named `sys_audit-...`). Audit events are not themselves
//! audited, and they are left out of [`Stats`]' event counters (counted in
//! [`Stats::audit_records`] and [`Stats::audit_acknowledged`] instead).
//!
//! Each audit event is one JSON record per `(topic, minute)` with a non-zero count,
//! whose `acked` is a **delta** (the events acknowledged since this publisher's
//! previous record for the same key): the format, and how a consumer sums records,
//! are specified in `docs/format.md` §6 (`conduit_core::records::AuditRecord`).
//! Counts still unpublished when a publisher is dropped without `close` are lost.
//!
//! **The enqueue-minute rule.** So that `publish` does not read the clock, the
//! publisher keeps the current minute in one shared atomic that a small task
//! advances at each minute boundary of the clock (and re-reads at least every
//! second, following clock adjustments); `publish` stamps whatever it holds
//! ([`Publisher::enqueue_minute`]). An event accepted in the first moments of a
//! minute — until that task has run, normally about a millisecond, longer on an
//! overloaded machine — is counted in the previous minute. Every acknowledged
//! event is counted exactly once; only its minute can be off by one at a
//! boundary, which the audit's per-minute comparison must tolerate anyway (the
//! collector files events by its own receive minute).
//!
//! # Example
//! ```
//! # use std::sync::Arc;
//! # use conduit_collector::{Collector, CollectorSettings};
//! # use conduit_core::{storage::LocalStorage, Config, NodeName, SystemClock};
//! use conduit_publisher::{Publisher, WhenFull};
//! use std::time::Duration;
//!
//! # #[tokio::main]
//! # async fn main() -> anyhow::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! # let config = Config::default();
//! # let mut limits = config.collector.clone();
//! # limits.listen = "127.0.0.1:0".into();
//! # limits.http = "127.0.0.1:0".into();
//! # let settings = CollectorSettings {
//! #     cluster: NodeName::new("dc1")?,
//! #     id: NodeName::new("c1")?,
//! #     config: Arc::new(config),
//! #     collector: limits,
//! # };
//! # let storage = Arc::new(LocalStorage::open(dir.path().to_str().unwrap())?);
//! # let collector = Collector::start(settings, storage, SystemClock::shared()).await?;
//! # let addr = collector.thrift_addr().to_string();
//! let publisher = Publisher::builder()
//!     .collectors([addr.as_str()]) // first = preferred, the rest = failover
//!     .when_full(WhenFull::Timeout(Duration::from_millis(100)))
//!     .linger(Duration::from_millis(5))
//!     .build()
//!     .await?;
//! publisher.publish("clicks", &b"{\"user\":1}"[..]).await?; // queued
//! publisher.publish_acked("clicks", &b"{\"user\":2}"[..]).await?; // durable
//! publisher.flush().await?; // everything so far is durable
//! println!("{}", publisher.stats().to_prometheus());
//! publisher.close().await?;
//! # collector.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`BlockingPublisher`] offers the same calls to code without an async runtime.

mod connect;
mod runner;
mod spool;

pub use connect::{ConnectCause, ConnectError};

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conduit_core::http::prometheus_client::encoding::text;
use conduit_core::http::prometheus_client::metrics::counter::ConstCounter;
use conduit_core::http::prometheus_client::metrics::gauge::ConstGauge;
use conduit_core::http::prometheus_client::registry::Registry;
/// TLS settings of [`PublisherBuilder::tls`] (re-exported from `conduit_core`).
pub use conduit_core::tls::ClientTls;
use conduit_core::{Encoding, Minute, SharedClock, SystemClock, Topic};
use tokio::sync::{mpsc, oneshot, watch};

/// Most batches a connection may have in flight (the collector remembers 8192
/// sequences per publisher; this stays far below).
pub const MAX_IN_FLIGHT_LIMIT: usize = 64;

/// Most connections [`PublisherBuilder::connections`] accepts.
pub const MAX_CONNECTIONS: usize = 16;

/// What [`Publisher::publish`] does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait until there is room.
    #[default]
    Block,
    /// Fail at once with [`PublishError::QueueFull`].
    Error,
    /// Wait at most this long, then fail with [`PublishError::Timeout`].
    Timeout(Duration),
}

/// Why an event was not accepted (or, for acknowledged calls, not made durable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The topic does not match `[A-Za-z0-9_]{1,128}`.
    #[error("invalid topic name {topic:?}: must match [A-Za-z0-9_]{{1,128}}")]
    InvalidTopic {
        /// The rejected topic.
        topic: String,
    },
    /// The payload is larger than `max_message_bytes`.
    #[error("message of {len} bytes exceeds max_message_bytes {max}")]
    MessageTooLarge {
        /// The payload's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The topic is configured as `lines` and the payload contains a newline.
    #[error("payload for lines topic {topic} contains a newline at byte {at}")]
    NewlineInLinesPayload {
        /// The topic.
        topic: String,
        /// Offset of the first newline.
        at: usize,
    },
    /// The queue is full ([`WhenFull::Error`]).
    #[error("publisher queue is full")]
    QueueFull,
    /// The queue stayed full for the configured time ([`WhenFull::Timeout`]).
    #[error("publisher queue stayed full for {0:?}")]
    Timeout(Duration),
    /// The publisher is closed (or its background task stopped).
    #[error("publisher is closed")]
    Closed,
    /// For [`Publisher::publish_acked`]: the publisher closed (or was dropped)
    /// while the event was in the disk spool, not yet acknowledged; it is sent when
    /// a publisher next opens the same `spool_dir` and reaches a collector.
    #[error("event is in the disk spool, not yet acknowledged by a collector")]
    Spooled,
    /// For [`Publisher::publish_acked`]: a collector refused the event's batch with
    /// an exception (for example a sequence out of range); it is not retried.
    #[error("a collector refused the batch: {message}")]
    Refused {
        /// The collector's exception message.
        message: String,
    },
}

/// Why a publisher could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// No collector address was given.
    #[error("no collector address given")]
    NoCollectors,
    /// A setting is out of range.
    #[error("invalid setting {name}: {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A topic given to `topic_encoding` is not a valid topic name.
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    /// The blocking wrapper could not start its runtime.
    #[error("cannot start the runtime: {0}")]
    Runtime(String),
    /// The spool directory could not be opened (or is used by another publisher).
    #[error("cannot open the spool directory {dir}: {reason}")]
    Spool {
        /// The directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The TLS settings are unusable (names the file or name at fault).
    #[error("tls: {0}")]
    Tls(String),
}

/// Publisher settings (see the [`PublisherBuilder`] methods for meanings and
/// defaults).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub collectors: Vec<String>,
    pub queue_capacity: usize,
    pub when_full: WhenFull,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub linger: Duration,
    pub adaptive_linger: bool,
    pub max_in_flight: usize,
    pub connections: usize,
    pub max_message_bytes: usize,
    pub encodings: HashMap<String, Encoding>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub preferred_retry: Duration,
    pub publisher_id: Option<String>,
    pub clock: SharedClock,
    pub audit_interval: Option<Duration>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub spool_after: Duration,
    /// Connects over TLS; `None`: plain Scribe.
    pub tls: Option<conduit_core::tls::TlsClient>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            collectors: Vec::new(),
            queue_capacity: 100_000,
            when_full: WhenFull::Block,
            max_batch_events: 2000,
            max_batch_bytes: 1 << 20,
            linger: Duration::from_millis(5),
            adaptive_linger: true,
            max_in_flight: 8,
            connections: 1,
            max_message_bytes: 1 << 20,
            encodings: HashMap::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            preferred_retry: Duration::from_secs(30),
            publisher_id: None,
            clock: SystemClock::shared(),
            audit_interval: Some(Duration::from_secs(60)),
            spool_dir: None,
            spool_max_bytes: 1 << 30,
            spool_after: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// Builds a [`Publisher`]; start with [`Publisher::builder`].
#[derive(Debug, Clone, Default)]
pub struct PublisherBuilder {
    settings: Settings,
    /// [`PublisherBuilder::tls`], read into `settings.tls` by `build`.
    tls: Option<ClientTls>,
}

impl PublisherBuilder {
    /// Collector addresses (`host:port`): the first is preferred, the others are
    /// tried in order when it is unreachable. Required.
    pub fn collectors<I, S>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.collectors = addrs.into_iter().map(Into::into).collect();
        self
    }

    /// Events the queue holds before [`WhenFull`] applies (default 100 000).
    pub fn queue_capacity(mut self, events: usize) -> Self {
        self.settings.queue_capacity = events;
        self
    }

    /// What `publish` does when the queue is full (default [`WhenFull::Block`]).
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.settings.when_full = policy;
        self
    }

    /// Most events per batch (default 2000).
    pub fn max_batch_events(mut self, events: usize) -> Self {
        self.settings.max_batch_events = events;
        self
    }

    /// A batch is sent once its payloads reach this many bytes (default 1 MiB).
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_batch_bytes = bytes;
        self
    }

    /// How long a batch waits for more events after its first one (default 5 ms).
    /// With [`PublisherBuilder::adaptive_linger`] (the default) this is only the
    /// upper bound under load.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.settings.linger = linger;
        self
    }

    /// Adaptive linger (default on): a batch is sent at once when nothing is on
    /// the wire (no batch sent and unanswered), and otherwise gathers events
    /// until the outstanding reply arrives, the [`PublisherBuilder::linger`]
    /// time passes or it is full. An idle publisher then adds no delay, and a
    /// busy one batches by the collector's round trip. Off: every batch waits
    /// its linger time (or until full). Measured in `docs/benchmarks.md`
    /// ("Publisher linger").
    pub fn adaptive_linger(mut self, adaptive: bool) -> Self {
        self.settings.adaptive_linger = adaptive;
        self
    }

    /// Batches sent ahead of their replies on one connection, 1 to
    /// [`MAX_IN_FLIGHT_LIMIT`] (default 8).
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.settings.max_in_flight = batches;
        self
    }

    /// Connections opened to the collector in use, 1 to [`MAX_CONNECTIONS`]
    /// (default 1). Batches are sent over them round-robin (the `max_in_flight`
    /// window is shared), which lets the collector work on several batches at
    /// once. **Order**: the collector may then store batches in a different order
    /// than they were sent — events stay in order within a batch, not across
    /// batches. Keep 1 where per-topic order matters.
    pub fn connections(mut self, connections: usize) -> Self {
        self.settings.connections = connections;
        self
    }

    /// Largest payload accepted (default 1 MiB, the collector's default
    /// `max_message_bytes`).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_message_bytes = bytes;
        self
    }

    /// Declares a topic's encoding so payloads are checked at the call (a `lines`
    /// payload must not contain `\n`). Topics not declared are not checked.
    pub fn topic_encoding(mut self, topic: impl Into<String>, encoding: Encoding) -> Self {
        self.settings.encodings.insert(topic.into(), encoding);
        self
    }

    /// Timeout of one connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// A connection whose oldest outstanding call has had no reply for this long is
    /// dropped and its batches re-sent (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// First and largest delay of the exponential backoff (with jitter) used for
    /// reconnects and `TRY_LATER` (defaults 50 ms and 5 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff_base = base;
        self.settings.backoff_max = max;
        self
    }

    /// While on a failover collector, how often the preferred one is tried
    /// (default 30 s).
    pub fn preferred_retry(mut self, every: Duration) -> Self {
        self.settings.preferred_retry = every;
        self
    }

    /// The publisher id sent with every batch (default: 16 random hex digits, new
    /// for every publisher). Two live publishers must never share an id. With a
    /// fixed id, each session's sequences start at the wall clock in microseconds
    /// since the Unix epoch (or after the spool's, if higher), so a restarted
    /// publisher never reuses a sequence of an earlier session; with a random id
    /// they start at 1.
    pub fn publisher_id(mut self, id: impl Into<String>) -> Self {
        self.settings.publisher_id = Some(id.into());
        self
    }

    /// The wall clock used to stamp each event's enqueue minute and audit records'
    /// `sent_at` (default [`SystemClock::shared`]; tests can pass a
    /// [`conduit_core::TestClock`]). Batching and retry timers do not use it.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.settings.clock = clock;
        self
    }

    /// How often accumulated audit counts are published to `_audit` (default 60 s;
    /// they are also published at [`Publisher::close`]). `None` disables auditing
    /// altogether (see "Audit records" in the crate docs).
    pub fn audit_interval(mut self, every: Option<Duration>) -> Self {
        self.settings.audit_interval = every;
        self
    }

    /// Enables the disk spool in this directory (created if missing; one publisher
    /// at a time). When no collector has acknowledged anything for
    /// [`PublisherBuilder::spool_after`] after a failure, accepted events are
    /// written there (fsynced) instead of waiting in memory, and sent in order once
    /// a collector answers again — also by a later publisher opening the same
    /// directory, which replays what is left first. See "Disk spool" in the crate
    /// docs. Default: no spool.
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.spool_dir = Some(dir.into());
        self
    }

    /// Most bytes of spool files (default 1 GiB). When the spool is full, events
    /// wait in memory and, once the queue is full, [`WhenFull`] applies.
    pub fn spool_max_bytes(mut self, bytes: u64) -> Self {
        self.settings.spool_max_bytes = bytes;
        self
    }

    /// How long after a failure (connection lost or refused, `TRY_LATER`) without
    /// any acknowledgement the publisher starts spooling (default 2 s).
    pub fn spool_after(mut self, after: Duration) -> Self {
        self.settings.spool_after = after;
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        let s = &self.settings;
        if s.collectors.is_empty() {
            return Err(BuildError::NoCollectors);
        }
        let bad = |name, reason: &str| {
            Err(BuildError::InvalidSetting {
                name,
                reason: reason.to_string(),
            })
        };
        if s.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1");
        }
        if s.max_batch_events == 0 {
            return bad("max_batch_events", "must be at least 1");
        }
        if s.max_batch_bytes == 0 {
            return bad("max_batch_bytes", "must be at least 1");
        }
        if s.max_in_flight == 0 || s.max_in_flight > MAX_IN_FLIGHT_LIMIT {
            return bad("max_in_flight", "must be between 1 and 64");
        }
        if s.audit_interval.is_some_and(|d| d.is_zero()) {
            return bad(
                "audit_interval",
                "must be positive (None disables auditing)",
            );
        }
        if s.connections == 0 || s.connections > MAX_CONNECTIONS {
            return bad("connections", "must be between 1 and 16");
        }
        if s.spool_max_bytes == 0 {
            return bad("spool_max_bytes", "must be at least 1");
        }
        if s.backoff_base.is_zero() || s.backoff_max < s.backoff_base {
            return bad("backoff", "base must be positive and at most max");
        }
        for topic in s.encodings.keys() {
            if Topic::new(topic.as_str()).is_err() {
                return Err(BuildError::InvalidTopic(topic.clone()));
            }
        }
        Ok(())
    }

    /// Connects to the collectors over TLS: trusting the CAs of `tls.ca`,
    /// presenting `tls.cert`/`tls.key` if set (for collectors with
    /// `tls_client_ca`), checking the collector's certificate against
    /// `tls.server_name` or else the host of each collector address. Default:
    /// plain Scribe. The files are read by [`PublisherBuilder::build`].
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts the publisher's background task on the current tokio runtime. It does
    /// not wait for a connection: events queue until a collector answers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn build(self) -> Result<Publisher, BuildError> {
        self.validate()?;
        let mut settings = self.settings;
        if let Some(tls) = self.tls {
            let tls_error = |e: conduit_core::tls::TlsError| BuildError::Tls(e.to_string());
            for addr in &settings.collectors {
                tls.server_name_for(addr).map_err(tls_error)?;
            }
            settings.tls = Some(conduit_core::tls::TlsClient::new(tls).map_err(tls_error)?);
        }
        let fixed_id = settings.publisher_id.is_some();
        let publisher_id = settings
            .publisher_id
            .take()
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        // A random id is new in every session, so its sequences may start at 1. A
        // fixed id must never reuse a sequence of an earlier session: collectors
        // drop a replay of a stored (id, sequence, content) and count a reuse
        // with other content as a conflict.
        let mut first_seq = if fixed_id { session_epoch() } else { 1 };
        let spool = match &settings.spool_dir {
            None => None,
            Some(dir) => {
                let (spool, recovered) = spool::Spool::open(dir, settings.spool_max_bytes)
                    .map_err(|e| BuildError::Spool {
                        dir: dir.clone(),
                        reason: e.to_string(),
                    })?;
                if recovered.records > 0 || recovered.cut_bytes > 0 {
                    tracing::info!(
                        dir = %dir.display(),
                        batches = recovered.records,
                        events = recovered.events,
                        cut_bytes = recovered.cut_bytes,
                        "spool holds batches from a previous run; they are sent first"
                    );
                }
                // A fixed publisher id continues its sequence past its spooled batches.
                if let Some((_, max)) = recovered
                    .max_seq
                    .iter()
                    .find(|(id, _)| id.as_ref() == publisher_id.as_bytes())
                {
                    first_seq = first_seq.max(max + 1);
                }
                Some(spool)
            }
        };
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let (alive_tx, alive_rx) = watch::channel(());
        let counters = Arc::new(Counters::default());
        let minute = Arc::new(AtomicI64::new(NO_MINUTE));
        if settings.audit_interval.is_some() {
            minute.store(settings.clock.minute().epoch_minutes(), Ordering::Relaxed);
            tokio::spawn(minute_ticker(
                settings.clock.clone(),
                minute.clone(),
                alive_rx.clone(),
            ));
        }
        let settings = Arc::new(settings);
        let task = runner::Runner::new(
            settings.clone(),
            counters.clone(),
            rx,
            alive_rx,
            publisher_id.clone(),
            spool,
            first_seq,
        );
        tokio::spawn(task.run());
        Ok(Publisher {
            inner: Arc::new(Inner {
                tx,
                settings,
                counters,
                serial: PUBLISHER_SERIAL.fetch_add(1, Ordering::Relaxed),
                minute,
                publisher_id,
                _alive: alive_tx,
            }),
        })
    }

    /// Builds a [`BlockingPublisher`] with its own runtime thread.
    ///
    /// # Panics
    /// Inside an async context (use [`PublisherBuilder::build`] there).
    pub fn build_blocking(self) -> Result<BlockingPublisher, BuildError> {
        BlockingPublisher::new(self)
    }
}

/// `[A-Za-z0-9_]{1,128}`, like [`Topic::new`] (which allocates).
/// The first sequence of a session of a publisher with a fixed id: the wall clock
/// in microseconds since the Unix epoch, so that each session starts above every
/// sequence an earlier one used (a session sends far fewer than a million batches
/// a second). It stays below `scribe::LOG_BATCH_SEQUENCES.end` (2^62) until the
/// year 146,000. A wall clock set back between two sessions by more than the
/// earlier one ran could make the new one reuse sequences: collectors then store
/// both batches and count a conflict, they never drop one.
fn session_epoch() -> i64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as i64);
    micros.clamp(1, conduit_core::scribe::LOG_BATCH_SEQUENCES.end / 2)
}

fn is_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= Topic::MAX_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A message to the background task.
#[derive(Debug)]
pub(crate) enum Msg {
    Event {
        topic: Bytes,
        payload: Bytes,
        /// The enqueue minute (UTC), as minutes since the Unix epoch.
        minute: i64,
        ack: Option<oneshot::Sender<Result<(), PublishError>>>,
    },
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Live counters shared with the background task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub enqueued: AtomicU64,
    pub sent: AtomicU64,
    pub acknowledged: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub queue_depth: AtomicU64,
    pub batches: AtomicU64,
    pub reconnects: AtomicU64,
    pub try_later: AtomicU64,
    pub connected: AtomicU64,
    pub legacy: AtomicU64,
    pub audit_queued: AtomicU64,
    pub audit_acked: AtomicU64,
    pub spooled: AtomicU64,
    pub replayed: AtomicU64,
    pub spool_events: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spooling: AtomicU64,
    /// Per collector (same order as the addresses): the last failed connection
    /// attempt since a connection last succeeded.
    pub connect_errors: std::sync::Mutex<Vec<Option<ConnectError>>>,
}

/// A snapshot of a publisher's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Events accepted into the queue.
    pub enqueued: u64,
    /// Events written to a connection (re-sends included).
    pub sent: u64,
    /// Events acknowledged as durable, sent from memory (events that went through
    /// the spool are counted in [`Stats::replayed`] instead).
    pub acknowledged: u64,
    /// Batches re-sent (after `TRY_LATER`, a lost connection or a fallback).
    pub retried: u64,
    /// Events rejected at the call, or abandoned when the publisher was dropped.
    pub failed: u64,
    /// Events enqueued and not yet acknowledged, spooled or abandoned.
    pub queue_depth: u64,
    /// Batches formed.
    pub batches: u64,
    /// Connections established after the first one.
    pub reconnects: u64,
    /// `TRY_LATER` answers received.
    pub try_later: u64,
    /// Index (in the collector list) of the current connection plus one; 0 when
    /// not connected.
    pub connected_to: u64,
    /// Whether the publisher fell back to plain `Log`.
    pub legacy_log: bool,
    /// Audit records (events on `_audit` produced by the publisher itself) queued.
    /// They are left out of every other counter.
    pub audit_records: u64,
    /// Audit records acknowledged.
    pub audit_acknowledged: u64,
    /// Events written to the disk spool (fsynced).
    pub spooled: u64,
    /// Events read back from the spool and acknowledged (including those spooled
    /// by an earlier publisher on the same directory).
    pub replayed: u64,
    /// Events in the spool not yet acknowledged (gauge).
    pub spool_events: u64,
    /// Bytes of spool files (gauge).
    pub spool_bytes: u64,
    /// Whether new events currently go to the spool.
    pub spooling: bool,
}

impl Stats {
    /// The counters as Prometheus metrics `conduit_publisher_*`, encoded by
    /// `prometheus-client` like every conduit service's `/metrics`: the OpenMetrics
    /// text format, where a counter is the family `conduit_publisher_<name>` with the
    /// sample `conduit_publisher_<name>_total`, a gauge the sample
    /// `conduit_publisher_<name>`, and the text ends with `# EOF`.
    pub fn to_prometheus(&self) -> String {
        enum Kind {
            Counter,
            Gauge,
        }
        use Kind::{Counter, Gauge};
        let rows: [(&str, Kind, &str, u64); 18] = [
            (
                "enqueued",
                Counter,
                "Events accepted into the queue",
                self.enqueued,
            ),
            (
                "sent",
                Counter,
                "Events written to a connection, re-sends included",
                self.sent,
            ),
            (
                "acknowledged",
                Counter,
                "Events acknowledged as durable",
                self.acknowledged,
            ),
            ("retried_batches", Counter, "Batches re-sent", self.retried),
            (
                "failed",
                Counter,
                "Events rejected at the call or abandoned",
                self.failed,
            ),
            (
                "queue_depth",
                Gauge,
                "Events enqueued and not yet acknowledged",
                self.queue_depth,
            ),
            ("batches", Counter, "Batches formed", self.batches),
            (
                "reconnects",
                Counter,
                "Connections established after the first",
                self.reconnects,
            ),
            (
                "try_later",
                Counter,
                "TRY_LATER answers received",
                self.try_later,
            ),
            (
                "connected_collector",
                Gauge,
                "Index+1 of the connected collector, 0 if none",
                self.connected_to,
            ),
            (
                "legacy_log",
                Gauge,
                "1 if the publisher fell back to plain Log",
                u64::from(self.legacy_log),
            ),
            (
                "audit_records",
                Counter,
                "Audit records queued for the _audit topic",
                self.audit_records,
            ),
            (
                "audit_acknowledged",
                Counter,
                "Audit records acknowledged",
                self.audit_acknowledged,
            ),
            (
                "spooled",
                Counter,
                "Events written to the disk spool",
                self.spooled,
            ),
            (
                "replayed",
                Counter,
                "Spooled events acknowledged after replay",
                self.replayed,
            ),
            (
                "spool_events",
                Gauge,
                "Events in the disk spool not yet acknowledged",
                self.spool_events,
            ),
            (
                "spool_bytes",
                Gauge,
                "Bytes of disk spool files",
                self.spool_bytes,
            ),
            (
                "spooling",
                Gauge,
                "1 while new events go to the disk spool",
                u64::from(self.spooling),
            ),
        ];
        // `register` ends each help text with a period.
        let mut registry = Registry::with_prefix("conduit_publisher");
        for (name, kind, help, value) in rows {
            match kind {
                Counter => registry.register(name, help, ConstCounter::new(value)),
                Gauge => registry.register(name, help, ConstGauge::new(value)),
            }
        }
        let mut out = String::new();
        text::encode(&mut out, &registry).expect("formatting into a String cannot fail");
        out
    }
}

/// Topics recently published on this thread, per publisher, with their checked
/// name as shared `Bytes` and declared encoding, so `publish` neither allocates nor
/// hashes for a topic it has seen. Bounded: [`TOPIC_CACHE_SLOTS`] per thread.
struct CachedTopic {
    publisher: u64,
    topic: Bytes,
    encoding: Option<Encoding>,
}

const TOPIC_CACHE_SLOTS: usize = 16;

thread_local! {
    static TOPICS: RefCell<Vec<CachedTopic>> = const { RefCell::new(Vec::new()) };
}

/// Distinguishes publishers in the per-thread topic caches.
static PUBLISHER_SERIAL: AtomicU64 = AtomicU64::new(1);

/// No minute stamped (auditing disabled).
const NO_MINUTE: i64 = 0;

/// Keeps `minute` equal to the clock's current minute (epoch minutes): wakes at
/// every minute boundary of the clock and at least every second (to follow clock
/// adjustments), until the publisher is dropped.
async fn minute_ticker(clock: SharedClock, minute: Arc<AtomicI64>, mut alive: watch::Receiver<()>) {
    loop {
        let now = clock.minute();
        minute.store(now.epoch_minutes(), Ordering::Relaxed);
        let next = now.next().unwrap_or(now).start();
        tokio::select! {
            _ = alive.changed() => return,
            _ = clock.sleep_until(next) => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Msg>,
    settings: Arc<Settings>,
    counters: Arc<Counters>,
    serial: u64,
    /// The enqueue minute stamped on events (epoch minutes), kept current by
    /// [`minute_ticker`].
    minute: Arc<AtomicI64>,
    publisher_id: String,
    /// Dropped with the last handle: tells the background task to stop.
    _alive: watch::Sender<()>,
}

/// An async publisher handle; clones share one queue and background task.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("publisher_id", &self.inner.publisher_id)
            .field("collectors", &self.inner.settings.collectors)
            .finish()
    }
}

impl Publisher {
    /// A builder with default settings.
    pub fn builder() -> PublisherBuilder {
        PublisherBuilder::default()
    }

    /// The id this publisher sends with every batch.
    pub fn publisher_id(&self) -> &str {
        &self.inner.publisher_id
    }

    /// The enqueue minute `publish` stamps on events right now, for the audit
    /// records (see "Audit records" in the crate docs).
    pub fn enqueue_minute(&self) -> Option<Minute> {
        self.inner.settings.audit_interval?;
        Minute::from_epoch_minutes(self.inner.minute.load(Ordering::Relaxed)).ok()
    }

    /// The topic as shared `Bytes` and its declared encoding, from this thread's
    /// cache (checking and caching it the first time).
    fn topic(&self, topic: &str) -> Result<(Bytes, Option<Encoding>), PublishError> {
        let serial = self.inner.serial;
        let hit = TOPICS.with_borrow(|cache| {
            cache
                .iter()
                .find(|c| c.publisher == serial && c.topic.as_ref() == topic.as_bytes())
                .map(|c| (c.topic.clone(), c.encoding))
        });
        if let Some(hit) = hit {
            return Ok(hit);
        }
        // `Topic::new`'s rule, checked without allocating.
        if !is_topic(topic) {
            return Err(PublishError::InvalidTopic {
                topic: topic.to_string(),
            });
        }
        let bytes = Bytes::copy_from_slice(topic.as_bytes());
        let encoding = self.inner.settings.encodings.get(topic).copied();
        TOPICS.with_borrow_mut(|cache| {
            if cache.len() >= TOPIC_CACHE_SLOTS {
                cache.remove(0);
            }
            cache.push(CachedTopic {
                publisher: serial,
                topic: bytes.clone(),
                encoding,
            });
        });
        Ok((bytes, encoding))
    }

    /// Checks an event and turns it into a queue message. Allocation-free for a
    /// topic this thread has published to recently.
    fn event(
        &self,
        topic: &str,
        payload: Bytes,
        ack: Option<oneshot::Sender<Result<(), PublishError>>>,
    ) -> Result<Msg, PublishError> {
        let settings = &self.inner.settings;
        let checked = (|| {
            let (topic_bytes, encoding) = self.topic(topic)?;
            if payload.len() > settings.max_message_bytes {
                return Err(PublishError::MessageTooLarge {
                    len: payload.len(),
                    max: settings.max_message_bytes,
                });
            }
            if let Some(encoding) = encoding {
                if let Err(conduit_core::RecordError::NewlineInLinesPayload { at }) =
                    encoding.check(&payload)
                {
                    return Err(PublishError::NewlineInLinesPayload {
                        topic: topic.to_string(),
                        at,
                    });
                }
            }
            Ok(topic_bytes)
        })();
        let topic = match checked {
            Ok(t) => t,
            Err(e) => {
                self.inner.counters.failed.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        Ok(Msg::Event {
            topic,
            payload,
            minute: self.inner.minute.load(Ordering::Relaxed),
            ack,
        })
    }

    async fn enqueue(&self, msg: Msg) -> Result<(), PublishError> {
        use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
        let c = &self.inner.counters;
        // Counted before sending so the background task never sees an ack for an
        // event the depth gauge does not hold yet.
        c.queue_depth.fetch_add(1, Ordering::Relaxed);
        let result = match self.inner.settings.when_full {
            WhenFull::Block => self
                .inner
                .tx
                .send(msg)
                .await
                .map_err(|_| PublishError::Closed),
            WhenFull::Error => self.inner.tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(_) => PublishError::QueueFull,
                TrySendError::Closed(_) => PublishError::Closed,
            }),
            WhenFull::Timeout(d) => self
                .inner
                .tx
                .send_timeout(msg, d)
                .await
                .map_err(|e| match e {
                    SendTimeoutError::Timeout(_) => PublishError::Timeout(d),
                    SendTimeoutError::Closed(_) => PublishError::Closed,
                }),
        };
        match &result {
            Ok(()) => {
                c.enqueued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                c.queue_depth.fetch_sub(1, Ordering::Relaxed);
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Validates the event and queues it; returns once it is queued (at once when
    /// there is room, otherwise per the [`WhenFull`] policy). It is durable later:
    /// see [`Publisher::flush`].
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        let msg = self.event(topic, payload.into(), None)?;
        self.enqueue(msg).await
    }

    /// Like [`Publisher::publish`], then waits until a collector has made the event
    /// durable.
    pub async fn publish_acked(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        let (tx, rx) = oneshot::channel();
        let msg = self.event(topic, payload.into(), Some(tx))?;
        self.enqueue(msg).await?;
        rx.await.unwrap_or(Err(PublishError::Closed))
    }

    /// Waits until every event enqueued before the call is durable. Sends the
    /// current partial batch at once instead of waiting for its linger time.
    pub async fn flush(&self) -> Result<(), PublishError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| PublishError::Closed)?;
        rx.await.map_err(|_| PublishError::Closed)
    }

    /// Flushes, then stops the background task. Other clones of this handle get
    /// [`PublishError::Closed`] afterwards. To bound the wait while collectors are
    /// unreachable, wrap it in `tokio::time::timeout`: dropping the future drops the
    /// handle, which stops the task.
    pub async fn close(self) -> Result<(), PublishError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Close(tx))
            .await
            .map_err(|_| PublishError::Closed)?;
        rx.await.map_err(|_| PublishError::Closed)
    }

    /// The collectors that could not be connected to since a connection last
    /// succeeded (empty while connected or before the first attempt), in the order
    /// given: address, cause of the last attempt, attempts in a row that failed.
    pub fn connect_errors(&self) -> Vec<ConnectError> {
        let errors = self
            .inner
            .counters
            .connect_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        errors.iter().flatten().cloned().collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            enqueued: get(&c.enqueued),
            sent: get(&c.sent),
            acknowledged: get(&c.acknowledged),
            retried: get(&c.retried),
            failed: get(&c.failed),
            queue_depth: get(&c.queue_depth),
            batches: get(&c.batches),
            reconnects: get(&c.reconnects),
            try_later: get(&c.try_later),
            connected_to: get(&c.connected),
            legacy_log: get(&c.legacy) != 0,
            audit_records: get(&c.audit_queued),
            audit_acknowledged: get(&c.audit_acked),
            spooled: get(&c.spooled),
            replayed: get(&c.replayed),
            spool_events: get(&c.spool_events),
            spool_bytes: get(&c.spool_bytes),
            spooling: get(&c.spooling) != 0,
        }
    }
}

/// A synchronous publisher for code without a tokio runtime: it owns a
/// single-threaded runtime on its own thread and blocks the caller on each call.
///
/// Its methods must not be called from inside an async context (they panic there,
/// like `Runtime::block_on`).
pub struct BlockingPublisher {
    // Field order matters: the publisher is dropped before the runtime.
    publisher: Option<Publisher>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for BlockingPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingPublisher")
            .field("publisher", &self.publisher)
            .finish()
    }
}

impl BlockingPublisher {
    fn new(builder: PublisherBuilder) -> Result<Self, BuildError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("conduit-publisher")
            .enable_all()
            .build()
            .map_err(|e| BuildError::Runtime(e.to_string()))?;
        let publisher = runtime.block_on(builder.build())?;
        Ok(BlockingPublisher {
            publisher: Some(publisher),
            runtime: Some(runtime),
        })
    }

    fn parts(&self) -> (&Publisher, &tokio::runtime::Runtime) {
        match (&self.publisher, &self.runtime) {
            (Some(p), Some(r)) => (p, r),
            _ => unreachable!("only taken in close and drop"),
        }
    }

    /// See [`Publisher::publish`].
    pub fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), PublishError> {
        let (p, rt) = self.parts();
        rt.block_on(p.publish(topic, payload))
    }

    /// See [`Publisher::publish_acked`].
    pub fn publish_acked(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        let (p, rt) = self.parts();
        rt.block_on(p.publish_acked(topic, payload))
    }

    /// See [`Publisher::flush`].
    pub fn flush(&self) -> Result<(), PublishError> {
        let (p, rt) = self.parts();
        rt.block_on(p.flush())
    }

    /// See [`Publisher::stats`].
    pub fn stats(&self) -> Stats {
        self.parts().0.stats()
    }

    /// See [`Publisher::connect_errors`].
    pub fn connect_errors(&self) -> Vec<ConnectError> {
        self.parts().0.connect_errors()
    }

    /// See [`Publisher::close`]; also stops the runtime thread.
    pub fn close(mut self) -> Result<(), PublishError> {
        let publisher = self.publisher.take().expect("present until close");
        let runtime = self.runtime.take().expect("present until close");
        let result = runtime.block_on(publisher.close());
        runtime.shutdown_timeout(Duration::from_secs(1));
        result
    }
}

impl Drop for BlockingPublisher {
    fn drop(&mut self) {
        drop(self.publisher.take());
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric, with the names and types the hand-formatted text had: counters'
    /// samples end in `_total`, gauges' do not.
    #[test]
    fn prometheus_text_names_and_types() {
        let stats = Stats {
            enqueued: 1,
            sent: 2,
            acknowledged: 3,
            retried: 4,
            failed: 5,
            queue_depth: 6,
            batches: 7,
            reconnects: 8,
            try_later: 9,
            connected_to: 10,
            legacy_log: true,
            audit_records: 11,
            audit_acknowledged: 12,
            spooled: 13,
            replayed: 14,
            spool_events: 15,
            spool_bytes: 16,
            spooling: false,
        };
        let text = stats.to_prometheus();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "conduit_publisher_enqueued_total 1",
                "conduit_publisher_sent_total 2",
                "conduit_publisher_acknowledged_total 3",
                "conduit_publisher_retried_batches_total 4",
                "conduit_publisher_failed_total 5",
                "conduit_publisher_queue_depth 6",
                "conduit_publisher_batches_total 7",
                "conduit_publisher_reconnects_total 8",
                "conduit_publisher_try_later_total 9",
                "conduit_publisher_connected_collector 10",
                "conduit_publisher_legacy_log 1",
                "conduit_publisher_audit_records_total 11",
                "conduit_publisher_audit_acknowledged_total 12",
                "conduit_publisher_spooled_total 13",
                "conduit_publisher_replayed_total 14",
                "conduit_publisher_spool_events 15",
                "conduit_publisher_spool_bytes 16",
                "conduit_publisher_spooling 0",
            ]
        );
        assert!(text.starts_with(
            "# HELP conduit_publisher_enqueued Events accepted into the queue.\n\
             # TYPE conduit_publisher_enqueued counter\n\
             conduit_publisher_enqueued_total 1\n"
        ));
        assert!(text.contains(
            "# HELP conduit_publisher_queue_depth Events enqueued and not yet acknowledged.\n\
             # TYPE conduit_publisher_queue_depth gauge\n"
        ));
        assert_eq!(text.matches("counter\n").count(), 12);
        assert_eq!(text.matches("gauge\n").count(), 6);
        assert!(text.ends_with("# EOF\n"));
    }
}
