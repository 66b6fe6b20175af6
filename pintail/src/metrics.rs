//! Prometheus metrics of a consumer (`pintail_*`), registered in a
//! [`conduit_core::http::SharedRegistry`] when the builder is given one, and
//! readable in-process through [`crate::Consumer::stats`].
//!
//! Lag of this member, per partition it reads, measured every
//! `lag_interval` (5 s) from the last delivered position (else the group's
//! checkpoint) with [`crate::lag::partition_lag`], the computation of `conduit lag`
//! and of the worker's `conduit_consumer_lag_*`:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `conduit_pintail_lag_events` | gauge | group, topic, member, partition | records not yet delivered to this member |
//! | `conduit_pintail_lag_seconds` | gauge | group, topic, member, partition | age of the oldest undelivered minute (0 when caught up) |
//!
//! A partition's series disappear when the member stops reading it.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use conduit_core::http::SharedRegistry;

/// Label values of a consumer's lag series (`partition` added per series).
#[derive(Debug, Clone, Default)]
pub(crate) struct LagLabels {
    pub group: String,
    pub topic: String,
    pub member: String,
}

/// Labels of one series.
pub(crate) type Labels = Vec<(&'static str, String)>;

impl LagLabels {
    /// The labels of `partition`'s series.
    pub fn of(&self, partition: &str) -> Labels {
        vec![
            ("group", self.group.clone()),
            ("topic", self.topic.clone()),
            ("member", self.member.clone()),
            ("partition", partition.to_owned()),
        ]
    }
}

/// The consumer's counters (cheap clones share the values).
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    /// Whether the metrics are exported (lag is measured only then).
    pub exported: bool,
    pub lag_labels: LagLabels,
    pub lag_events: Family<Labels, Gauge>,
    pub lag_seconds: Family<Labels, Gauge>,
    pub messages: Counter,
    pub payload_bytes: Counter,
    pub corrupt_frames_skipped: Counter,
    pub purged_skips: Counter,
    pub storage_errors: Counter,
    pub commits: Counter,
    pub fenced_commits: Counter,
    pub lost_uncommitted: Counter,
    pub cut_back_files: Counter,
    pub shared_chunks: Counter,
    pub rebalances: Counter,
    pub owned_partitions: Gauge,
    pub collector_http_reads: Counter,
    pub collector_http_fallbacks: Counter,
    pub collector_http_waits: Counter,
    pub collector_http_waits_refused: Counter,
}

impl Metrics {
    pub fn new(registry: Option<&SharedRegistry>, lag_labels: LagLabels) -> Metrics {
        let m = Metrics {
            exported: registry.is_some(),
            lag_labels,
            ..Metrics::default()
        };
        if let Some(registry) = registry {
            let mut r = registry.lock().expect("metrics registry lock");
            r.register(
                "conduit_pintail_lag_events",
                "Records not yet delivered to this member, per partition it reads",
                m.lag_events.clone(),
            );
            r.register(
                "conduit_pintail_lag_seconds",
                "Age in seconds of the oldest minute not yet delivered to this member, per partition it reads (0 when caught up)",
                m.lag_seconds.clone(),
            );
            r.register(
                "pintail_messages",
                "Messages delivered by next()",
                m.messages.clone(),
            );
            r.register(
                "pintail_payload_bytes",
                "Payload bytes delivered by next()",
                m.payload_bytes.clone(),
            );
            r.register(
                "pintail_corrupt_frames_skipped",
                "Corrupt frames skipped (skip_corrupt_frames)",
                m.corrupt_frames_skipped.clone(),
            );
            r.register(
                "pintail_purged_skips",
                "Times data was gone (purged) past a position and the reader skipped ahead",
                m.purged_skips.clone(),
            );
            r.register(
                "pintail_storage_errors",
                "Storage calls that failed and were retried with backoff",
                m.storage_errors.clone(),
            );
            r.register("pintail_commits", "Checkpoints written", m.commits.clone());
            r.register(
                "pintail_fenced_commits",
                "Commits refused because the partition moved to another member",
                m.fenced_commits.clone(),
            );
            r.register(
                "pintail_lost_uncommitted",
                "Messages delivered but not committed when a partition was lost (may be redelivered)",
                m.lost_uncommitted.clone(),
            );
            r.register(
                "pintail_cut_back_files",
                "Files cut back below what the reader had read, by their collector's repair after a storage deadline (the events past the cut were never acknowledged and are delivered again from their publishers' retries)",
                m.cut_back_files.clone(),
            );
            r.register(
                "pintail_shared_chunks",
                "Sealed chunks a sub-partition reader took from another sub-partition reader of the same collector stream in this member (read and decoded once for all of them)",
                m.shared_chunks.clone(),
            );
            r.register(
                "pintail_rebalances",
                "Partition assignment changes of this member",
                m.rebalances.clone(),
            );
            r.register(
                "pintail_owned_partitions",
                "Partitions this member reads",
                m.owned_partitions.clone(),
            );
            r.register(
                "pintail_collector_http_reads",
                "Reads of an open collector file answered with bytes by the collector's HTTP listener",
                m.collector_http_reads.clone(),
            );
            r.register(
                "pintail_collector_http_fallbacks",
                "Times a collector could not be reached over HTTP and its open file was read from storage",
                m.collector_http_fallbacks.clone(),
            );
            r.register(
                "pintail_collector_http_waits",
                "Long-polls (wait_ms) of a collector's open-file endpoint: each waits for the next sync of the file instead of polling storage",
                m.collector_http_waits.clone(),
            );
            r.register(
                "pintail_collector_http_waits_refused",
                "Long-polls a collector answered at once because it held its limit of waiting requests (the reader polled instead)",
                m.collector_http_waits_refused.clone(),
            );
        }
        m
    }
}

/// A snapshot of a consumer's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages delivered by `next()`.
    pub messages: u64,
    /// Corrupt frames skipped.
    pub corrupt_frames_skipped: u64,
    /// Data found purged past a position (each skip is also logged).
    pub purged_skips: u64,
    /// Storage calls that failed and were retried.
    pub storage_errors: u64,
    /// Checkpoints written.
    pub commits: u64,
    /// Commits refused by fencing.
    pub fenced_commits: u64,
    /// Messages delivered but uncommitted when a partition was lost.
    pub lost_uncommitted: u64,
    /// Files cut back below what was read by their collector's repair (the
    /// events past the cut were never acknowledged).
    pub cut_back_files: u64,
    /// Sealed chunks a sub-partition reader took from another reader of the
    /// same collector stream in this member instead of reading them again.
    pub shared_chunks: u64,
    /// Partitions currently read by this member.
    pub owned_partitions: u64,
    /// Reads of open collector files answered by the collector over HTTP.
    pub collector_http_reads: u64,
    /// Times a collector was unreachable over HTTP (storage was read instead).
    pub collector_http_fallbacks: u64,
    /// Long-polls sent to collectors (each held until the file's next sync).
    pub collector_http_waits: u64,
    /// Long-polls a collector answered at once (its waiter limit was reached).
    pub collector_http_waits_refused: u64,
    /// Ranges skipped because the data was purged: `(partition, from, to)`.
    pub purged_ranges: Vec<(String, String, String)>,
}
