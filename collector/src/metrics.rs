//! The collector's Prometheus metrics (served on `/metrics`).
//!
//! Every limit the collector enforces has a counter here, labelled with the reason,
//! so an operator can alert on refusals without reading logs.

use std::sync::{Arc, Mutex};

use conduit_core::http::prometheus_client::metrics::counter::Counter;
use conduit_core::http::prometheus_client::metrics::family::Family;
use conduit_core::http::prometheus_client::metrics::gauge::Gauge;
use conduit_core::http::prometheus_client::metrics::histogram::Histogram;
use conduit_core::http::prometheus_client::registry::Registry;

use conduit_core::scribe::Transport;

use crate::reasons::{CloseReason, ConnectionError, ProtocolErrorKind, TryLaterReason};

/// Label set: a list of (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// All collector metrics. Cheap to clone (every metric is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Events made durable, by topic.
    pub events: Family<Labels, Counter>,
    /// Payload bytes made durable, by topic.
    pub bytes: Family<Labels, Counter>,
    /// Calls received, by method.
    pub calls: Family<Labels, Counter>,
    /// Group commits (rounds of one frame per topic and one sync per file).
    pub commits: Counter,
    /// File syncs (fsync/hsync).
    pub syncs: Counter,
    /// Latency of a commit's syncs, seconds.
    pub sync_seconds: Histogram,
    /// Time from a call's arrival to its acknowledgement, seconds.
    pub ack_seconds: Histogram,
    /// `TRY_LATER` answers, by reason.
    pub try_later: Family<Labels, Counter>,
    /// Entries sent to `_invalid`, by original topic and reason.
    pub invalid: Family<Labels, Counter>,
    /// Bytes currently in the local spool.
    pub spool_bytes: Gauge,
    /// Open client connections.
    pub open_connections: Gauge,
    /// Connections refused or closed for protocol errors, by reason.
    pub connection_errors: Family<Labels, Counter>,
    /// Connections whose first message was read, by transport (`framed`,
    /// `unframed`).
    pub connections: Family<Labels, Counter>,
    /// Connections the collector closed for a limit on time or room, by reason
    /// ([`crate::reasons::CloseReason`]).
    pub connections_closed: Family<Labels, Counter>,
    /// Bytes held for calls not yet answered (`max_inflight_bytes` bounds it).
    pub inflight_bytes: Gauge,
    /// Storage operations that failed, by operation.
    pub storage_errors: Family<Labels, Counter>,
    /// Data files closed.
    pub files_closed: Counter,
    /// Latency of one data file's `create` and `close` (trailer, sync and, on
    /// HDFS, `complete`), by `op`: what a minute roll costs per file.
    pub file_op_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Data files moved to `quarantine/` at recovery (shorter than acknowledged,
    /// or undecodable).
    pub files_quarantined: Counter,
    /// Time a round that abandoned a storage file spent saving the file's
    /// acknowledged length (the dedup snapshot, in the spool) before answering.
    pub abandoned_saved_seconds: Histogram,
    /// Idempotent batches acknowledged again without writing.
    pub duplicate_batches: Counter,
    /// Idempotent batches stored although a different batch with the same
    /// publisher id and sequence was already stored.
    pub dedup_conflicts: Counter,
    /// `LogBatch` calls refused with an exception, by reason.
    pub refused_batches: Family<Labels, Counter>,
    /// Last minute all of whose files are closed (Unix seconds of its start).
    pub watermark_seconds: Gauge,
    /// Answers of the open-file endpoint (`/v1/open/...`), by result: `ok`,
    /// `gone`, `not_found`, `too_old`, `past_end`, `bad_request`.
    pub open_reads: Family<Labels, Counter>,
    /// Long-polls of the open-file endpoint (`wait_ms`), by how they ended:
    /// `notified` (new synced bytes or the file closed), `timeout`, `refused`
    /// (over [`crate::open::MAX_WAITERS`], answered at once).
    pub open_waits: Family<Labels, Counter>,
    /// Long-polls of the open-file endpoint held now.
    pub open_waiters: Gauge,
    /// Data files open now (storage and spool), at most `max_open_files`.
    pub open_files: Gauge,
    /// Idle data files closed early to stay under `max_open_files` (or because the
    /// process ran out of descriptors).
    pub files_evicted: Counter,
    /// Operations that failed because the process was out of file descriptors
    /// (`EMFILE`/`ENFILE`), by operation ([`FD_OPS`]).
    pub fd_exhausted: Family<Labels, Counter>,
    /// Parts of calls put off to a later round (`max_new_files_per_round`).
    pub deferred_parts: Counter,
    /// 1 while the collector writes to storage, 0 while it counts storage as
    /// unavailable (its own writes failed or missed `storage_deadline_ms`).
    pub storage_healthy: Gauge,
    /// Storage steps of a commit round that missed `storage_deadline_ms`, by step.
    pub storage_deadline_exceeded: Family<Labels, Counter>,
}

/// The `step` label values of `storage_deadline_exceeded`.
pub const DEADLINE_STEPS: [&str; 3] = ["create", "write", "sync"];

/// The operations `fd_exhausted` counts: accepting a connection, creating a data
/// file in storage or in the spool, writing or syncing one, the heartbeat and the
/// dedup snapshot.
pub const FD_OPS: [&str; 7] = [
    "accept",
    "create",
    "spool",
    "write",
    "sync",
    "heartbeat",
    "dedup_snapshot",
];

/// The `method` label values of `calls`: Scribe's, fb303's, and `unknown`.
pub const CALL_METHODS: [&str; 10] = [
    "Log",
    "LogBatch",
    "getName",
    "getVersion",
    "getStatus",
    "getStatusDetails",
    "getCounters",
    "getCounter",
    "aliveSince",
    "unknown",
];

/// The `op` label values of `storage_errors`.
pub const STORAGE_OPS: [&str; 6] = [
    "create",
    "write",
    "sync",
    "close",
    "replay",
    "dedup_snapshot",
];

/// The `result` label values of `open_reads`.
pub const OPEN_READ_RESULTS: [&str; 6] = [
    "ok",
    "gone",
    "not_found",
    "too_old",
    "past_end",
    "bad_request",
];

/// The `result` label values of `open_waits`.
pub const OPEN_WAIT_RESULTS: [&str; 3] = ["notified", "timeout", "refused"];

impl Metrics {
    /// Creates the metrics and registers them under `conduit_collector_*`.
    pub fn new(registry: &Arc<Mutex<Registry>>) -> Metrics {
        let m = Metrics {
            events: Family::default(),
            bytes: Family::default(),
            calls: Family::default(),
            commits: Counter::default(),
            syncs: Counter::default(),
            sync_seconds: conduit_core::http::latency_histogram(),
            ack_seconds: conduit_core::http::latency_histogram(),
            try_later: Family::default(),
            invalid: Family::default(),
            spool_bytes: Gauge::default(),
            open_connections: Gauge::default(),
            connection_errors: Family::default(),
            connections: Family::default(),
            connections_closed: Family::default(),
            inflight_bytes: Gauge::default(),
            storage_errors: Family::default(),
            files_closed: Counter::default(),
            file_op_seconds: Family::new_with_constructor(
                conduit_core::http::latency_histogram as fn() -> Histogram,
            ),
            files_quarantined: Counter::default(),
            abandoned_saved_seconds: conduit_core::http::latency_histogram(),
            duplicate_batches: Counter::default(),
            dedup_conflicts: Counter::default(),
            refused_batches: Family::default(),
            watermark_seconds: Gauge::default(),
            open_reads: Family::default(),
            open_waits: Family::default(),
            open_waiters: Gauge::default(),
            open_files: Gauge::default(),
            files_evicted: Counter::default(),
            fd_exhausted: Family::default(),
            deferred_parts: Counter::default(),
            storage_healthy: Gauge::default(),
            storage_deadline_exceeded: Family::default(),
        };
        m.storage_healthy.set(1);
        // Present from the start, so an alert can compare against zero.
        for op in FD_OPS {
            m.fd_exhausted
                .get_or_create(&Metrics::label("op", op))
                .inc_by(0);
        }
        m.try_later
            .get_or_create(&Metrics::label(
                "reason",
                crate::reasons::TryLaterReason::OpenFiles.as_str(),
            ))
            .inc_by(0);
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        let r = r.sub_registry_with_prefix("conduit_collector");
        r.register("events", "Events made durable", m.events.clone());
        r.register("bytes", "Payload bytes made durable", m.bytes.clone());
        r.register("calls", "Thrift calls received by method", m.calls.clone());
        r.register("commits", "Group commits", m.commits.clone());
        r.register("syncs", "File syncs (fsync or hsync)", m.syncs.clone());
        r.register(
            "sync_seconds",
            "Latency of a group commit's syncs",
            m.sync_seconds.clone(),
        );
        r.register(
            "ack_seconds",
            "Time from a call's arrival to its durable acknowledgement",
            m.ack_seconds.clone(),
        );
        r.register(
            "try_later",
            "TRY_LATER answers by reason",
            m.try_later.clone(),
        );
        r.register(
            "invalid",
            "Entries sent to _invalid by topic and reason",
            m.invalid.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes in the local spool",
            m.spool_bytes.clone(),
        );
        r.register(
            "open_connections",
            "Open client connections",
            m.open_connections.clone(),
        );
        r.register(
            "connection_errors",
            "Connections refused or closed, by reason (max_connections, max_connections_per_ip, not_allowed, tls_handshake, protocol errors)",
            m.connection_errors.clone(),
        );
        r.register(
            "connections",
            "Connections that sent a first message, by Thrift transport (framed, unframed)",
            m.connections.clone(),
        );
        r.register(
            "connections_closed",
            "Connections closed by the collector for a limit (first_call_timeout, idle_timeout, frame_timeout, evicted_idle)",
            m.connections_closed.clone(),
        );
        r.register(
            "inflight_bytes",
            "Bytes held for calls read and not yet answered (bounded by max_inflight_bytes)",
            m.inflight_bytes.clone(),
        );
        r.register(
            "storage_errors",
            "Failed storage operations by operation",
            m.storage_errors.clone(),
        );
        r.register("files_closed", "Data files closed", m.files_closed.clone());
        r.register(
            "file_op_seconds",
            "Latency of creating (op=create) and closing (op=close: index, trailer, sync, HDFS complete) one data file",
            m.file_op_seconds.clone(),
        );
        r.register(
            "files_quarantined",
            "Data files moved to quarantine/ at recovery: shorter than the acknowledged length, or undecodable",
            m.files_quarantined.clone(),
        );
        r.register(
            "abandoned_saved_seconds",
            "Time a commit round that abandoned a storage file spent saving the file's acknowledged length (dedup snapshot, in the spool) before answering",
            m.abandoned_saved_seconds.clone(),
        );
        r.register(
            "duplicate_batches",
            "Idempotent batches acknowledged again without writing",
            m.duplicate_batches.clone(),
        );
        r.register(
            "dedup_conflicts",
            "Idempotent batches stored although a different batch with the same publisher id and sequence was stored before",
            m.dedup_conflicts.clone(),
        );
        r.register(
            "refused_batches",
            "LogBatch calls refused with a TApplicationException, by reason (negative_sequence, sequence_too_large)",
            m.refused_batches.clone(),
        );
        for reason in crate::reasons::BatchRefusal::ALL {
            m.refused_batches
                .get_or_create(&Self::label("reason", reason.as_str()))
                .inc_by(0);
        }
        r.register(
            "watermark_seconds",
            "Start of the last minute whose files are all closed (unix seconds)",
            m.watermark_seconds.clone(),
        );
        r.register(
            "open_reads",
            "Answers of the open-file endpoint /v1/open by result (ok, gone, not_found, too_old, past_end, bad_request)",
            m.open_reads.clone(),
        );
        r.register(
            "open_waits",
            "Long-polls (wait_ms) of the open-file endpoint /v1/open by how they ended (notified, timeout, refused: over the waiter limit, answered at once)",
            m.open_waits.clone(),
        );
        for result in OPEN_WAIT_RESULTS {
            m.open_waits
                .get_or_create(&Self::label("result", result))
                .inc_by(0);
        }
        r.register(
            "open_waiters",
            "Long-polls of the open-file endpoint /v1/open held now",
            m.open_waiters.clone(),
        );
        r.register(
            "open_files",
            "Data files open (storage and spool), at most max_open_files",
            m.open_files.clone(),
        );
        r.register(
            "files_evicted",
            "Idle data files closed early to stay under max_open_files",
            m.files_evicted.clone(),
        );
        r.register(
            "fd_exhausted",
            "Operations failed for want of file descriptors (EMFILE/ENFILE), by operation",
            m.fd_exhausted.clone(),
        );
        r.register(
            "deferred_parts",
            "Parts of calls put off to a later round (max_new_files_per_round)",
            m.deferred_parts.clone(),
        );
        r.register(
            "storage_healthy",
            "1 while data goes to storage, 0 while storage counts as unavailable (own writes failed or missed storage_deadline_ms)",
            m.storage_healthy.clone(),
        );
        r.register(
            "storage_deadline_exceeded",
            "Storage steps of a commit round (create, write, sync) that missed storage_deadline_ms; their calls went to the spool or got TRY_LATER",
            m.storage_deadline_exceeded.clone(),
        );
        for step in DEADLINE_STEPS {
            let _ = m
                .storage_deadline_exceeded
                .get_or_create(&Metrics::label("step", step));
        }
        // The front door's limits are counted from the start, at 0, so that an
        // alert on their rate needs no data first.
        for reason in CloseReason::ALL {
            let _ = m
                .connections_closed
                .get_or_create(&Metrics::label("reason", reason.as_str()));
        }
        // So is every other counter whose label values are known.
        for reason in TryLaterReason::ALL {
            let _ = m
                .try_later
                .get_or_create(&Metrics::label("reason", reason.as_str()));
        }
        let protocol = ProtocolErrorKind::ALL.map(ConnectionError::Protocol);
        for reason in [
            ConnectionError::MaxConnections,
            ConnectionError::MaxConnectionsPerIp,
            ConnectionError::NotAllowed,
            ConnectionError::TlsHandshake,
        ]
        .into_iter()
        .chain(protocol)
        {
            let _ = m
                .connection_errors
                .get_or_create(&Metrics::label("reason", reason.as_str()));
        }
        for transport in [Transport::Framed, Transport::Unframed] {
            let _ = m
                .connections
                .get_or_create(&Metrics::label("transport", transport.as_str()));
        }
        for method in CALL_METHODS {
            let _ = m.calls.get_or_create(&Metrics::label("method", method));
        }
        for op in STORAGE_OPS {
            let _ = m.storage_errors.get_or_create(&Metrics::label("op", op));
        }
        for result in OPEN_READ_RESULTS {
            let _ = m
                .open_reads
                .get_or_create(&Metrics::label("result", result));
        }
        m
    }

    /// One label.
    pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
        vec![(name, value.into())]
    }
}
