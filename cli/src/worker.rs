//! `conduit worker`: run a cluster's worker (every job, or one), as a daemon that
//! holds the cluster's lease, or once (`--once`, for cron or Airflow).
//!
//! Output: one line `worker ready: http <addr> cluster <name> root <root>` on
//! stdout once the HTTP listener is up (daemon mode), and a summary line per
//! `--once` run. Exit codes: 0 done, 1 a job failed, 75 (`EX_TEMPFAIL`) for
//! `--once` when another worker holds the lease.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use conduit_core::http::{HttpServer, SharedRegistry};
use conduit_core::{Config, NodeName, SharedClock, SystemClock};
use conduit_merger::lease::{Lease, LeaseSettings, Monotonic};
use conduit_merger::{
    bounded_storage, Cluster, CompactJob, Daemon, Job, JobEnv, LocalJob, MergeJob, MirrorJob,
    NoFence, PurgeJob, SealProgress, SharedFence, StatusPage, WorkerMetrics,
};

/// Arguments of `conduit worker`. Flags override the config file and may be given
/// before or after the job name.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Run only this job (default: every job, in the order local, merge,
    /// mirror, compact, purge).
    #[command(subcommand)]
    job: Option<JobName>,

    /// Configuration file (clusters, topics, worker settings). Without it,
    /// `--root` is required and the worker serves a single cluster.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<String>,

    /// Storage root of this worker's cluster, overriding the config: a
    /// directory, `file:///path` or `hdfs://namenode:port/path`.
    #[arg(long, value_name = "DIR|URI", global = true)]
    root: Option<String>,

    /// The cluster this worker serves (and writes to).
    #[arg(long, default_value = "dc1", global = true)]
    cluster: String,

    /// Run one pass of every selected job and exit (for cron or Airflow). Takes
    /// the lease for the run unless --no-lease; exits 75 if another worker holds it.
    #[arg(long, global = true)]
    once: bool,

    /// HTTP listen address for the status page /, /metrics and /health (daemon mode).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:14640",
        global = true
    )]
    http: String,

    /// Pause between passes in milliseconds [config: worker.interval_ms, default 500].
    #[arg(long, value_name = "MS", global = true)]
    interval_ms: Option<u64>,

    /// Lease duration in seconds; a standby takes over once it has expired
    /// [config: worker.lease_secs, default 30].
    #[arg(long, value_name = "SECS", global = true)]
    lease_secs: Option<u64>,

    /// A collector silent for longer than this no longer holds back sealing
    /// [config: worker.collector_timeout_secs, default 120].
    #[arg(long, value_name = "SECS", global = true)]
    collector_timeout_secs: Option<u64>,

    /// A storage call (list, create, rename, ...) to any cluster that takes
    /// longer, or a read that receives no byte for that long, fails as a
    /// timeout, is logged and counted (conduit_worker_storage_timeouts_total);
    /// an unreachable cluster then fails its jobs' passes instead of hanging
    /// them [config: worker.storage_timeout_ms, default 30000].
    #[arg(long, value_name = "MS", global = true)]
    storage_timeout_ms: Option<u64>,

    /// Slowest read waited for, in bytes a second: a read of N bytes that keeps
    /// moving fails once it has taken storage_timeout_ms plus N at this rate
    /// (logged, conduit_worker_storage_slow_reads_total); reads at least this
    /// fast always finish, however big
    /// [config: worker.storage_min_read_bytes_per_sec, default 16384].
    #[arg(long, value_name = "BYTES", global = true)]
    storage_min_read_bytes_per_sec: Option<u64>,

    /// Run without the cluster lease (only when no other worker can run for this
    /// cluster: two unfenced workers may both commit).
    #[arg(long, global = true)]
    no_lease: bool,

    /// This worker's id in the lease and in manifests' `sealed_by`
    /// [default: <host>-<pid>].
    #[arg(long, value_name = "ID", global = true)]
    id: Option<String>,
}

/// One job of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum JobName {
    /// Move closed collector files into sealed minute directories (streams_local/).
    Local,
    /// Merge every source cluster's sealed local minutes into streams/.
    Merge,
    /// Copy sealed merged minutes from the merge cluster to this one.
    Mirror,
    /// Delete sealed minutes older than their retention.
    Purge,
    /// Concatenate closed hours into streams_hourly/.
    Compact,
}

/// The jobs a daemon runs, in order.
type Jobs = Vec<Box<dyn Job>>;

/// Builds the selected jobs, and the sealing progress of those that report it.
fn build_jobs(
    env: &JobEnv,
    only: Option<JobName>,
    metrics: &WorkerMetrics,
) -> (Jobs, Vec<SealProgress>) {
    let mut jobs: Jobs = Vec::new();
    let mut progress = Vec::new();
    let wanted = |j: JobName| only.is_none() || only == Some(j);
    if wanted(JobName::Local) {
        let job = LocalJob::new(env.clone());
        progress.push(job.progress());
        jobs.push(Box::new(job));
    }
    if wanted(JobName::Merge) {
        let job = MergeJob::new(env.clone());
        progress.push(job.progress());
        jobs.push(Box::new(job));
    }
    if wanted(JobName::Mirror) {
        let job = MirrorJob::new(env.clone());
        progress.push(job.progress());
        jobs.push(Box::new(job));
    }
    if wanted(JobName::Compact) {
        let job = CompactJob::new(env.clone()).with_invalid_rows(metrics.invalid_rows.clone());
        progress.push(job.progress());
        jobs.push(Box::new(job));
    }
    if wanted(JobName::Purge) {
        jobs.push(Box::new(PurgeJob::new(env.clone())));
    }
    (jobs, progress)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Runs the worker until SIGINT or SIGTERM (or one round with `--once`).
pub async fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    tracing::debug!(
        glibc_tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
        "allocator settings (see cli/src/malloc.rs)"
    );
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            anyhow::ensure!(args.root.is_some(), "give --config FILE or --root DIR|URI");
            Config::default()
        }
    };
    if let Some(root) = &args.root {
        config.clusters.insert(
            args.cluster.clone(),
            conduit_core::config::ClusterConfig { root: root.clone() },
        );
    }
    if let Some(v) = args.interval_ms {
        config.worker.interval_ms = v;
    }
    if let Some(v) = args.lease_secs {
        config.worker.lease_secs = v;
    }
    if let Some(v) = args.collector_timeout_secs {
        config.worker.collector_timeout_secs = v;
    }
    if let Some(v) = args.storage_timeout_ms {
        config.worker.storage_timeout_ms = v;
    }
    if let Some(v) = args.storage_min_read_bytes_per_sec {
        config.worker.storage_min_read_bytes_per_sec = v;
    }
    config.validate()?;
    let name = NodeName::new(&args.cluster).context("--cluster")?;
    let root = config.cluster_root(name.as_str())?.to_string();

    let registry: SharedRegistry = Arc::new(Mutex::new(Default::default()));
    let metrics = WorkerMetrics::new(&registry);
    let mut clusters = BTreeMap::new();
    for (cluster, cfg) in &config.clusters {
        let cluster_name = NodeName::new(cluster)?;
        match conduit_core::open_root(&cfg.root).await {
            Ok(storage) => {
                let storage = bounded_storage(storage, cluster, &config.worker, &metrics);
                clusters.insert(
                    cluster_name.clone(),
                    Cluster {
                        name: cluster_name,
                        storage,
                    },
                );
            }
            Err(e) if cluster_name != name => {
                tracing::warn!(%cluster, root = %cfg.root, error = %e, "cannot open another cluster's storage; jobs needing it will fail");
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open storage root {root}")),
        }
    }
    let this = clusters
        .get(&name)
        .cloned()
        .context("this cluster is not configured")?;
    let clock: SharedClock = SystemClock::shared();
    let worker_id = format!(
        "{name}/{}",
        args.id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()))
    );
    let lease = (!args.no_lease).then(|| {
        Lease::new(
            this.storage.clone(),
            clock.clone(),
            Monotonic::system(),
            LeaseSettings::worker(
                format!("{worker_id}-{:08x}", rand_suffix()),
                config.worker.lease_secs,
            ),
        )
    });
    let fence: SharedFence = match &lease {
        Some(lease) => lease.clone(),
        None => Arc::new(NoFence),
    };
    let status_clusters: Vec<Cluster> = clusters.values().cloned().collect();
    let env = JobEnv {
        this,
        clusters,
        config: Arc::new(config.clone()),
        clock: clock.clone(),
        fence,
        worker_id,
    };
    let (jobs, progress) = build_jobs(&env, args.job, &metrics);
    conduit_core::http::register_process_metrics(&registry);
    let mut daemon = Daemon::new(
        jobs,
        metrics,
        clock,
        Duration::from_millis(config.worker.interval_ms),
        lease.clone(),
    );
    for p in progress {
        daemon.watch_progress(p);
    }

    if args.once {
        return run_once(daemon, lease).await;
    }

    let listener = tokio::net::TcpListener::bind(&args.http)
        .await
        .with_context(|| format!("cannot listen on --http {}", args.http))?;
    let http_addr = listener.local_addr()?;
    let status = daemon.status();
    let page = StatusPage::new(
        env.this.clone(),
        status_clusters,
        env.config.clone(),
        env.clock.clone(),
        daemon.status(),
    );
    let health: conduit_core::http::HealthFn = Arc::new(move || {
        let s = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let details = serde_json::json!({
            "lease": if s.holding { "held" } else { "standby" },
            "epoch": s.epoch,
            "standby_reason": s.standby_reason,
            "rounds": s.rounds,
            "failing_jobs": s.last_errors.iter().map(|(j, e)| serde_json::json!({"job": j, "error": e})).collect::<Vec<_>>(),
        });
        // A standby is healthy: it is ready to take over.
        (true, details)
    });
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let registry_for_lag = registry.clone();
    let server = tokio::spawn(
        HttpServer::new(registry)
            .with_health(health)
            .with_routes(Arc::new(page))
            .serve(listener, async move {
                let _ = http_stopped.await;
            }),
    );
    let consumer_lag = crate::consumer_lag::spawn(&registry_for_lag, env.this.storage.clone());
    println!("worker ready: http {http_addr} cluster {name} root {root}");
    let ran = daemon.run(crate::signals::wait_for_shutdown()).await;
    consumer_lag.abort();
    ran?;
    tracing::info!("worker stopped");
    let _ = stop_http.send(());
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

async fn run_once(mut daemon: Daemon, lease: Option<Arc<Lease>>) -> anyhow::Result<ExitCode> {
    if !daemon.hold_lease().await? {
        let reason = daemon
            .status()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .standby_reason
            .clone()
            .unwrap_or_default();
        eprintln!("another worker holds the lease ({reason}); nothing done");
        return Ok(ExitCode::from(75));
    }
    let result = daemon.run_round().await;
    if let Some(lease) = lease {
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "cannot release the worker lease; it expires on its own");
        }
    }
    match result {
        Ok(r) => {
            println!(
                "worker pass done: sealed {} files {} late {} bytes_copied {} deleted {} pending {} \
                 quarantined {} duplicates_dropped {}",
                r.sealed,
                r.files,
                r.late_files,
                r.bytes_copied,
                r.deleted,
                r.pending,
                r.quarantined,
                r.duplicates_dropped
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}
