//! The conduit collector: the daemon every publisher talks to.
//!
//! It speaks Scribe (Thrift `Log` over framed binary, port 1463 by default), so
//! existing Scribe clients work unchanged, plus conduit's idempotent `LogBatch`
//! extension and the fb303 monitoring calls. It acknowledges (`OK`) a call only once
//! every entry of it is durable: fsynced on local disk or hsynced on HDFS (or, while
//! storage is down, fsynced in the local spool). It writes
//! `data/<topic>/<collector>/<topic>-yyyy-MM-dd-HH-mm_NNNNN.zst` in the format of
//! `docs/format.md`, closes files at each UTC minute boundary, and publishes its
//! watermark in `system/heartbeats/` for the worker.
//!
//! # Layout
//! - [`connection`]: the listener, and per connection a request handler and an
//!   ordered reply writer.
//! - [`admission`]: connection limits, and who makes room at a limit.
//! - [`server`]: what calls turn into: validation, `_invalid`, fb303.
//! - [`queues`]: the memory budget and bytes queued per topic (backpressure).
//! - [`reasons`]: why a call, an entry or a connection is refused.
//! - [`engine`]: the committer (group commit, files, minute roll, spool, recovery).
//! - [`files`]: open and abandoned data files.
//! - [`dedup`]: which idempotent batches are durable.
//! - [`ledger`]: the acknowledged length of closed files, which recovery never
//!   cuts (a damaged file is quarantined instead).
//! - [`open`]: the synced bytes of open files, served over HTTP (`/v1/open/...`).
//! - [`metrics`]: Prometheus metrics.
//!
//! # Tasks
//! acceptor → one task per connection (reader + ordered reply writer) → bounded
//! queue → one committer → storage; plus the heartbeat task and the HTTP listener
//! (`/metrics`, `/health`, and the synced bytes of open files, [`open`]). Shutdown: stop accepting, let connections finish their
//! in-flight calls, drain the queue, close every file, publish the final
//! heartbeat, return; [`Progress`] says which of these it is doing, so that a
//! shutdown that takes longer than `shutdown_timeout_secs` (the binary exits
//! anyway) can say what was left.

pub mod admission;
pub mod connection;
pub mod dedup;
pub mod engine;
pub mod files;
pub mod ledger;
pub mod metrics;
pub mod open;
pub mod queues;
pub mod reasons;
pub mod server;
pub mod status;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use conduit_core::config::CollectorConfig;
use conduit_core::heartbeat::{CollectorState, Heartbeat};
use conduit_core::http::{HttpServer, SharedRegistry};
use conduit_core::storage::{LocalStorage, TimeoutStorage};
use conduit_core::{Config, NodeName, SharedClock, SharedStorage};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use engine::{EngineStatus, Outcome};
pub use metrics::Metrics;

/// Everything a collector needs to start.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    /// Cluster this collector writes to.
    pub cluster: NodeName,
    /// This collector's id (unique within the cluster; names its files).
    pub id: NodeName,
    /// Topics and their settings.
    pub config: Arc<Config>,
    /// Effective collector settings (config with flag overrides applied).
    pub collector: CollectorConfig,
}

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    thrift_addr: SocketAddr,
    http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    status: watch::Receiver<EngineStatus>,
    progress: Arc<Progress>,
    main: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// What a collector is doing (shutdown's steps), in words for a log line.
#[derive(Debug)]
pub struct Progress(Mutex<String>);

impl Progress {
    fn new() -> Progress {
        Progress(Mutex::new("running".to_owned()))
    }

    /// Records the step being taken.
    pub fn set(&self, step: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = step.into();
    }

    /// The step being taken.
    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Collector {
    /// Recovers what a previous run left, binds the listeners (port 0 picks a free
    /// port) and starts serving.
    pub async fn start(
        settings: CollectorSettings,
        storage: SharedStorage,
        clock: SharedClock,
    ) -> anyhow::Result<Collector> {
        let limits = settings.collector.clone();
        // Who may connect, read before binding: a bad certificate or key stops
        // the start with an error naming the file.
        let allow = limits.allow_list().context("collector.allow_networks")?;
        let tls = match limits.server_tls() {
            Some(tls) => Some(
                tls.acceptor()
                    .context("collector TLS (tls_cert, tls_key, tls_client_ca)")?,
            ),
            None => None,
        };
        let http_door = (allow.clone(), tls.clone().filter(|_| limits.http_tls));
        let door = connection::FrontDoor { allow, tls };
        let door_shown = door.allow.to_string();
        let listener = TcpListener::bind(&limits.listen)
            .await
            .with_context(|| format!("cannot listen on collector.listen {}", limits.listen))?;
        let http_listener = TcpListener::bind(&limits.http)
            .await
            .with_context(|| format!("cannot listen on collector.http {}", limits.http))?;
        let thrift_addr = listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        // A call to storage that hangs (HDFS while a NameNode restarts) fails after
        // storage_timeout_ms, so background work (repair, replay, heartbeats) never
        // hangs for good; commit rounds have the shorter storage_deadline_ms.
        let storage: SharedStorage = Arc::new(TimeoutStorage::new(
            storage,
            Duration::from_millis(limits.storage_timeout_ms),
        ));
        let registry: SharedRegistry = Arc::new(Mutex::new(Default::default()));
        let metrics = Metrics::new(&registry);
        conduit_core::http::register_process_metrics(&registry);
        let spool: Option<SharedStorage> = match &limits.spool_dir {
            Some(dir) => {
                let local = LocalStorage::open(dir)
                    .with_context(|| format!("cannot open collector.spool_dir {dir}"))?;
                // The crash test hook counts the spool's calls with the root's.
                Some(conduit_core::storage::crash::wrap_from_env(Arc::new(
                    local,
                ))?)
            }
            None => None,
        };
        let open_files = Arc::new(open::OpenFiles::new(
            settings.cluster.clone(),
            settings.id.clone(),
            &metrics,
        ));
        let engine_settings = engine::EngineSettings {
            cluster: settings.cluster.clone(),
            collector: settings.id.clone(),
            group_commit: Duration::from_millis(limits.group_commit_ms),
            zstd_level: limits.zstd_level,
            max_file_bytes: limits.max_file_bytes,
            spool_max_bytes: limits.spool_max_bytes,
            config: settings.config.clone(),
            open: open_files.clone(),
            max_open_files: limits.open_files_limit(),
            max_new_files_per_round: limits.max_new_files_per_round,
            storage_deadline: Duration::from_millis(limits.storage_deadline_ms),
        };
        log_open_file_limits(&limits, engine_settings.max_open_files);
        let (engine, status) = engine::Engine::start(
            engine_settings,
            storage.clone(),
            spool,
            clock.clone(),
            metrics.clone(),
        )
        .await
        .context("collector recovery failed")?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let progress = Arc::new(Progress::new());
        // Queue depth in calls; bytes are bounded per topic by topic_queue_bytes.
        let (tx, rx) = mpsc::channel(4096);
        let started_at = clock.now();
        let shared = Arc::new(server::Shared {
            config: settings.config.clone(),
            limits: limits.clone(),
            cluster: settings.cluster.clone(),
            collector: settings.id.clone(),
            tx,
            metrics: metrics.clone(),
            totals: Default::default(),
            queues: queues::TopicQueues::new(limits.topic_queue_bytes),
            memory: queues::MemoryBudget::new(
                limits.max_inflight_bytes,
                metrics.inflight_bytes.clone(),
            ),
            progress: progress.clone(),
            clock: clock.clone(),
            started_at: started_at.timestamp(),
            shutting_down: shutdown_rx.clone(),
            status: status.clone(),
        });

        let engine_task = tokio::spawn(engine.run(rx));
        let heartbeat = Heartbeat {
            version: conduit_core::records::Version,
            cluster: settings.cluster.clone(),
            collector: settings.id.clone(),
            state: CollectorState::Running,
            thrift_addr: thrift_addr.to_string(),
            http_addr: http_addr.to_string(),
            started_at,
            updated_at: started_at,
            watermark: status.borrow().watermark,
            spooled_bytes: 0,
        };
        // Publish the first heartbeat before accepting, so a worker sees this
        // collector before any of its files; a copy a crash left half-written
        // goes first.
        if let Err(e) =
            conduit_core::storage::delete_temp_siblings(storage.as_ref(), &heartbeat.path()).await
        {
            tracing::warn!(error = %e, "cannot delete temporary heartbeat copies left by a crash");
        }
        if let Err(e) = heartbeat.publish(storage.as_ref()).await {
            tracing::warn!(error = %e, "cannot publish the first heartbeat");
        }
        let heartbeat_task = tokio::spawn(heartbeat_loop(
            heartbeat,
            storage.clone(),
            clock.clone(),
            status.clone(),
            Duration::from_millis(limits.heartbeat_ms),
            metrics.clone(),
        ));

        let health_status = status.clone();
        let health_shutdown = shutdown_rx.clone();
        let http = HttpServer::new(registry)
            .with_front_door(http_door.0, http_door.1)
            .with_limits(
                limits.http_max_connections,
                Duration::from_millis(limits.http_header_timeout_ms),
            )
            .with_routes(Arc::new(status::CollectorRoutes {
                open: open::OpenRoutes(open_files),
                shared: shared.clone(),
                status: status.clone(),
                thrift_addr: thrift_addr.to_string(),
            }))
            .with_health(Arc::new(move || {
                let s = health_status.borrow().clone();
                let stopping = *health_shutdown.borrow();
                (
                    s.storage_healthy && !stopping,
                    serde_json::json!({
                        "storage_healthy": s.storage_healthy,
                        "shutting_down": stopping,
                        "spooled_bytes": s.spooled_bytes,
                        "watermark": s.watermark.map(|m| m.to_string()),
                    }),
                )
            }));
        let mut http_shutdown = shutdown_rx.clone();
        let http_task = tokio::spawn(async move {
            let stop = async move {
                let _ = http_shutdown.wait_for(|s| *s).await;
            };
            if let Err(e) = http.serve(http_listener, stop).await {
                tracing::error!(error = %e, "http listener failed");
            }
        });

        let cluster = settings.cluster.clone();
        let id = settings.id.clone();
        let steps = progress.clone();
        let main = tokio::spawn(async move {
            connection::Listener::new(listener, shared, door)
                .run()
                .await;
            // Every connection is done, and the queue's last sender went with the
            // listener's `shared`.
            steps.set("draining the committer's queue and closing files");
            engine_task.await.context("committer task failed")?;
            steps.set("publishing the final heartbeat");
            heartbeat_task.await.context("heartbeat task failed")?;
            steps.set("stopping the http listener");
            let _ = http_task.await;
            steps.set("stopped");
            tracing::info!(cluster = %cluster, collector = %id, "collector stopped");
            Ok(())
        });
        tracing::info!(
            cluster = %settings.cluster,
            collector = %settings.id,
            thrift = %thrift_addr,
            http = %http_addr,
            tls = limits.tls_cert.is_some(),
            client_certificates = limits.tls_client_ca.is_some(),
            http_tls = limits.http_tls,
            allow_networks = %door_shown,
            root = storage.root(),
            "collector listening"
        );
        Ok(Collector {
            thrift_addr,
            http_addr,
            shutdown: shutdown_tx,
            status,
            progress,
            main,
        })
    }

    /// What the collector is doing (shutdown's current step).
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// The Scribe/Thrift address.
    pub fn thrift_addr(&self) -> SocketAddr {
        self.thrift_addr
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The committer's current status.
    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes (tests wait on watermarks with it).
    pub fn status_watch(&self) -> watch::Receiver<EngineStatus> {
        self.status.clone()
    }

    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the collector has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.main.await.context("collector task panicked")?
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown();
        self.wait().await
    }
}

/// Logs the open-file limits in force (`max_open_files` derived from the process's
/// open-file limit unless configured), warning when the configured value leaves
/// less than half the descriptors for everything else.
fn log_open_file_limits(limits: &CollectorConfig, max_open_files: usize) {
    let nofile = conduit_core::storage::open_file_limit();
    let source = if limits.max_open_files.is_some() {
        "collector.max_open_files"
    } else {
        "RLIMIT_NOFILE"
    };
    tracing::info!(
        max_open_files,
        source,
        rlimit_nofile = nofile,
        max_new_files_per_round = limits.max_new_files_per_round,
        "open data file limits"
    );
    if nofile.is_some_and(|n| max_open_files as u64 > n / 2) {
        tracing::warn!(
            max_open_files,
            rlimit_nofile = nofile,
            "collector.max_open_files is above half the open-file limit: connections, HTTP and heartbeats may run out of descriptors (answered TRY_LATER, never a hang)"
        );
    }
}

async fn heartbeat_loop(
    mut beat: Heartbeat,
    storage: SharedStorage,
    clock: SharedClock,
    mut status: watch::Receiver<EngineStatus>,
    every: Duration,
    metrics: Metrics,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopped = {
            let s = status.borrow_and_update();
            beat.watermark = s.watermark;
            beat.spooled_bytes = s.spooled_bytes;
            s.stopped
        };
        beat.updated_at = clock.now();
        if stopped {
            beat.state = CollectorState::Stopped;
        }
        match beat.publish(storage.as_ref()).await {
            Ok(()) => {}
            Err(e) if e.is_too_many_open_files() => {
                metrics
                    .fd_exhausted
                    .get_or_create(&Metrics::label("op", "heartbeat"))
                    .inc();
                if let Some(suppressed) =
                    conduit_core::ratelimit::allow("collector_heartbeat_out_of_descriptors")
                {
                    tracing::warn!(error = %e, suppressed, "cannot publish heartbeat: too many open files; retrying at the next tick");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot publish heartbeat"),
        }
        if stopped {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            changed = status.changed() => {
                if changed.is_err() {
                    // The committer is gone without saying it stopped (panic).
                    return;
                }
            }
        }
    }
}
