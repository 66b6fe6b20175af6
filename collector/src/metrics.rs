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

use crate::reasons::{CloseReason, ConnectionError, TryLaterReason};

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
    /// Connections the collector closed for a limit on time or room, by reason
    /// ([`crate::reasons::CloseReason`]).
    pub connections_closed: Family<Labels, Counter>,
    /// Bytes held for calls not yet answered (`max_inflight_bytes` bounds it).
    pub inflight_bytes: Gauge,
    /// Storage operations that failed, by operation.
    pub storage_errors: Family<Labels, Counter>,
    /// Data files closed.
    pub files_closed: Counter,
    /// Idempotent batches acknowledged again without writing.
    pub duplicate_batches: Counter,
    /// Last minute all of whose files are closed (Unix seconds of its start).
    pub watermark_seconds: Gauge,
    /// Answers of the open-file endpoint (`/v1/open/...`), by result: `ok`,
    /// `gone`, `not_found`, `too_old`, `past_end`, `bad_request`.
    pub open_reads: Family<Labels, Counter>,
}

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
            connections_closed: Family::default(),
            inflight_bytes: Gauge::default(),
            storage_errors: Family::default(),
            files_closed: Counter::default(),
            duplicate_batches: Counter::default(),
            watermark_seconds: Gauge::default(),
            open_reads: Family::default(),
        };
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
            "Connections refused or closed, by reason",
            m.connection_errors.clone(),
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
            "duplicate_batches",
            "Idempotent batches acknowledged again without writing",
            m.duplicate_batches.clone(),
        );
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
        // The front door's limits are counted from the start, at 0, so that an
        // alert on their rate needs no data first.
        for reason in CloseReason::ALL {
            let _ = m
                .connections_closed
                .get_or_create(&Metrics::label("reason", reason.as_str()));
        }
        for reason in [
            TryLaterReason::Memory,
            TryLaterReason::MaxConnections,
            TryLaterReason::MaxConnectionsPerIp,
        ] {
            let _ = m
                .try_later
                .get_or_create(&Metrics::label("reason", reason.as_str()));
        }
        for reason in [
            ConnectionError::MaxConnections,
            ConnectionError::MaxConnectionsPerIp,
        ] {
            let _ = m
                .connection_errors
                .get_or_create(&Metrics::label("reason", reason.as_str()));
        }
        m
    }

    /// One label.
    pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
        vec![(name, value.into())]
    }
}
