//! Consumer lag on the worker's `/metrics`: how far every PinTail consumer group
//! whose checkpoints are in this cluster's storage is behind, per partition.
//!
//! A consumer (`conduit tail --group`, or an application with the PinTail
//! library) is often short-lived or has no HTTP port, so the worker, which runs
//! all the time beside the data, measures it: every [`INTERVAL`] it reads every
//! checkpoint in `system/checkpoints/pintail/` (at most [`MAX_CHECKPOINTS`]) and
//! computes its lag against this cluster's data with
//! [`conduit_pintail::lag::every_checkpoint`], the same computation as
//! `conduit lag`. The partition name gives the view (`p3of16`: merged or
//! mirror, 16 partitions; `dc1-c1`: local).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `conduit_consumer_lag_events` | gauge | group, topic, partition | records not yet delivered |
//! | `conduit_consumer_lag_bytes` | gauge | group, topic, partition | compressed bytes not yet read |
//! | `conduit_consumer_lag_seconds` | gauge | group, topic, partition | age of the oldest undelivered minute (0 when caught up) |
//! | `conduit_consumer_lag_unmeasured` | gauge | | checkpoints whose lag could not be computed in the last refresh |
//! | `conduit_consumer_lag_refresh_seconds` | gauge | | how long the last refresh took |
//!
//! Series of checkpoints that disappeared (a group deleted) are dropped at the
//! next refresh. A refresh that fails or runs past [`TIMEOUT`] keeps the previous
//! values and logs a WARN (rate-limited).

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use conduit_core::http::prometheus_client::metrics::family::Family;
use conduit_core::http::prometheus_client::metrics::gauge::Gauge;
use conduit_core::http::SharedRegistry;
use conduit_core::SharedStorage;
use conduit_merger::metrics::Labels;
use conduit_pintail::lag::every_checkpoint;
use conduit_pintail::CheckpointStore;

/// How often the lag is measured.
pub const INTERVAL: Duration = Duration::from_secs(15);
/// Longest a refresh may take before it is abandoned.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Most checkpoints measured per refresh.
pub const MAX_CHECKPOINTS: usize = 1000;

/// The gauges, registered in a worker's registry.
#[derive(Clone, Default)]
struct ConsumerLagMetrics {
    events: Family<Labels, Gauge>,
    bytes: Family<Labels, Gauge>,
    seconds: Family<Labels, Gauge>,
    unmeasured: Gauge,
    refresh_seconds: Gauge<f64, AtomicU64>,
}

impl ConsumerLagMetrics {
    fn register(registry: &SharedRegistry) -> ConsumerLagMetrics {
        let m = ConsumerLagMetrics::default();
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        let r = r.sub_registry_with_prefix("conduit_consumer_lag");
        r.register(
            "events",
            "Records a consumer group has not yet delivered, by partition (from its checkpoint)",
            m.events.clone(),
        );
        r.register(
            "bytes",
            "Compressed bytes a consumer group has not yet read, by partition",
            m.bytes.clone(),
        );
        r.register(
            "seconds",
            "Age of the oldest minute a consumer group has not yet delivered, by partition",
            m.seconds.clone(),
        );
        r.register(
            "unmeasured",
            "Checkpoints whose lag could not be computed in the last refresh",
            m.unmeasured.clone(),
        );
        r.register(
            "refresh_seconds",
            "Duration of the last consumer lag refresh",
            m.refresh_seconds.clone(),
        );
        m
    }

    async fn refresh(&self, store: &CheckpointStore, data: &SharedStorage) {
        let started = Instant::now();
        let now = chrono::Utc::now();
        let measured =
            tokio::time::timeout(TIMEOUT, every_checkpoint(store, data, MAX_CHECKPOINTS, now))
                .await;
        let (lags, failed) = match measured {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                if let Some(suppressed) = conduit_core::ratelimit::allow("consumer_lag_refresh") {
                    tracing::warn!(error = %e, suppressed, "cannot measure consumer lag; keeping the last values");
                }
                return;
            }
            Err(_) => {
                if let Some(suppressed) = conduit_core::ratelimit::allow("consumer_lag_refresh") {
                    tracing::warn!(
                        suppressed,
                        timeout_secs = TIMEOUT.as_secs(),
                        "consumer lag refresh timed out; keeping the last values"
                    );
                }
                return;
            }
        };
        if let Some((what, error)) = failed.first() {
            if let Some(suppressed) = conduit_core::ratelimit::allow("consumer_lag_checkpoint") {
                tracing::warn!(
                    suppressed,
                    checkpoint = %what,
                    error = %error,
                    unmeasured = failed.len(),
                    "cannot measure a consumer checkpoint's lag"
                );
            }
        }
        self.events.clear();
        self.bytes.clear();
        self.seconds.clear();
        for l in &lags {
            let labels: Labels = vec![
                ("group", l.group.clone()),
                ("topic", l.topic.clone()),
                ("partition", l.partition.clone()),
            ];
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.events.get_or_create(&labels).set(clamp(l.lag.events));
            self.bytes.get_or_create(&labels).set(clamp(l.lag.bytes));
            self.seconds
                .get_or_create(&labels)
                .set(clamp(l.lag.seconds));
        }
        self.unmeasured
            .set(i64::try_from(failed.len()).unwrap_or(i64::MAX));
        self.refresh_seconds.set(started.elapsed().as_secs_f64());
    }
}

/// Registers the consumer lag gauges in `registry` and measures them every
/// [`INTERVAL`] from the checkpoints and data of `storage` until the task is
/// aborted.
pub fn spawn(registry: &SharedRegistry, storage: SharedStorage) -> tokio::task::JoinHandle<()> {
    let metrics = ConsumerLagMetrics::register(registry);
    let store = CheckpointStore::new(storage.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            metrics.refresh(&store, &storage).await;
        }
    })
}
