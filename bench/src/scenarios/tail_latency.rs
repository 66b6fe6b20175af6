//! `conduit-bench tail-latency`: publish-to-delivery latency of a PinTail consumer
//! group following the local view live, at a fixed publish rate, across minute
//! boundaries (while the worker seals minutes and moves files from `data/` into
//! `streams_local/` under the readers).
//!
//! Each run builds one cluster `dc1` in a fresh root (`--backend local`: a
//! temporary directory; `--backend hdfs`: a directory under `--hdfs`, where the
//! members read open files from the collectors' HTTP listeners):
//! `--collectors` `conduit collector` processes (`c1`, `c2`, ...; each is one
//! partition of the local view) and one `conduit worker` process (a pass every
//! `--worker-interval-ms`), started like `seal-latency` does. A PinTail
//! consumer group of `--members` dynamic members (`m0`, `m1`, ...: with two
//! collectors and two members, rendezvous hashing gives each member one
//! partition) reads the local view from the run's first minute, auto-committing
//! every second. Once the group has settled (every partition owned by exactly one
//! member, each member owning its share; reported as `group_settled_ms`, like a
//! Kafka benchmark whose consumers have joined before it measures), the
//! `conduit-publisher` library (one publisher per collector, default settings)
//! publishes `--rate` events/s for `--duration-secs`.
//!
//! Every payload is a benchmark event (`EventGenerator`) with two fields put in
//! front: `{"seq":N,"sent_us":T,...}` — a sequence number unique in the run and the
//! wall-clock time in microseconds just before `publish` was called. A member
//! computes `now - sent_us` when `next()` returns the event: publisher batching
//! (linger), the collector's fsync and acknowledgement, the reader's polling of the
//! growing file and the group's scheduling are all inside it. Only the first
//! delivery of each `seq` counts for the latency; later ones are counted as
//! duplicates.
//!
//! After publishing stops, every publisher is flushed (published must equal
//! acknowledged), and the run waits (up to `--drain-timeout-secs`) until every
//! published `seq` was delivered at least once; a run with any `seq` missing fails.
//! Reported per run: p50/p99/p99.9/max, delivered = published, duplicates, the
//! minutes sealed while the group read, and the partitions each member read. The
//! table shows the median (min–max) over `--runs`. `--json FILE` appends one line per
//! run (default `bench/results/tail-latency.jsonl`).
//!
//! `--compare nats` runs, after each conduit run, the same load against NATS
//! JetStream: a private `nats-server` (`scripts/peers/nats.sh serve`), a stream
//! `TAIL` on file storage, one publishing connection (every publish acknowledged
//! by JetStream) at the same rate with the same stamped payloads, and a durable
//! pull consumer `bench` (explicit acks) pulled by `--members` connections at
//! once (NATS's equivalent of a consumer group), with the NATS client of
//! [`crate::peers::nats`], as in `nats-ingest`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::Utc;
use clap::Args;
use conduit_core::{Manifest, Minute, SharedStorage, Topic, View};
use tokio::io::AsyncWriteExt;

use crate::children::{Conduit, Proc};
use crate::measure::{append_json_line, median_min_max, nearest_rank, nproc};
use crate::pacer::{payload_pool, Pacer};
use crate::peers::nats::{self, start_nats, Control, NatsServer, Op};
use crate::procfs::load_avg;
use crate::rundir::{fresh_temp_dir, hdfs_base_or_default, remove_storage_dir};
use crate::TOPIC;

/// The cluster name of the bus this scenario starts.
const CLUSTER: &str = "dc1";
/// The consumer group's name.
const GROUP: &str = "bench-tail";
/// The NATS stream and durable consumer.
const NATS_STREAM: &str = "TAIL";
const NATS_CONSUMER: &str = "bench";

/// Arguments of `conduit-bench tail-latency`.
#[derive(Debug, Args)]
pub struct TailLatencyArgs {
    /// Events per second published (spread round-robin over the collectors).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,

    /// How long to publish per run, in seconds (120 crosses at least one minute
    /// boundary, usually two).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,

    /// Number of runs (each a fresh bus); the table shows the median (min–max).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,

    /// Members of the PinTail consumer group (dynamic members `m0`, `m1`, ...),
    /// each its own consumer in this process; also the number of NATS pull
    /// connections with `--compare nats`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    members: u32,

    /// Collector processes (`c1`, `c2`, ...); each is one partition of the local view.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    collectors: u32,

    /// Storage of the cluster: `local` (a temporary directory) or `hdfs` (a fresh
    /// directory under --hdfs, removed after the run). On HDFS the tail reads the
    /// open files from the collectors' HTTP listeners (hdfs-native cannot read an
    /// open file's last block).
    #[arg(long, default_value = "local", value_parser = ["local", "hdfs"])]
    backend: String,

    /// HDFS root for `--backend hdfs` [default: $CONDUIT_TEST_HDFS, else
    /// hdfs://127.0.0.1:9000].
    #[arg(long, value_name = "URI")]
    hdfs: Option<String>,

    /// The worker's pause between passes (worker.interval_ms).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    worker_interval_ms: u64,

    /// After publishing stops, how long to wait for every event to be delivered
    /// before the run fails.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    drain_timeout_secs: u64,

    /// Also run a peer after each conduit run: `nats` (NATS JetStream, durable pull
    /// consumer, same rate and payloads; needs `scripts/peers/nats.sh`).
    #[arg(long, value_parser = ["nats"], value_name = "PEER")]
    compare: Option<String>,

    /// Skip the conduit runs (only the peer of --compare).
    #[arg(long)]
    no_conduit: bool,

    /// The peer script that installs and runs nats-server.
    #[arg(long, default_value = "scripts/peers/nats.sh", value_name = "PATH")]
    peer_script: PathBuf,

    /// Messages per NATS pull request (`batch` of `CONSUMER.MSG.NEXT`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    nats_batch: u64,

    /// Append one JSON line per run to FILE.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/results/tail-latency.jsonl"
    )]
    json: PathBuf,

    /// Keep each run's directory (logs, config, data) and print its path.
    #[arg(long)]
    keep: bool,

    /// Log filter of the spawned collectors and worker.
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    child_log_level: String,

    /// Seed of the event generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// The publishers' linger time in ms (`PublisherBuilder::linger`): how long a
    /// batch waits for more events (with `--linger adaptive` only while a batch
    /// is on the wire).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1000))]
    linger_ms: u64,

    /// `adaptive` (send at once when nothing is on the wire, the default of
    /// the publisher) or `fixed` (every batch waits --linger-ms or until full).
    #[arg(long, default_value = "adaptive", value_parser = ["adaptive", "fixed"])]
    linger: String,

    /// The collectors' `collector.group_commit_ms` (how long a small commit round
    /// waits for more calls) [default: the collector's default, 2].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    group_commit_ms: Option<u64>,
}

/// What can go wrong with the benchmark's own checks.
#[derive(Debug)]
enum TailBenchError {
    /// A delivered payload does not start with `{"seq":N,"sent_us":T,`.
    BadStamp { payload_prefix: String },
    /// A delivered `seq` was never published in this run.
    UnknownSeq { seq: u64, capacity: u64 },
    /// Not every published event was delivered before the drain deadline.
    Missing {
        published: u64,
        delivered_unique: u64,
        first_missing: Option<u64>,
        waited_s: u64,
    },
    /// The publisher side lost events before delivery was even measured.
    NotAcknowledged { published: u64, acknowledged: u64 },
}

impl std::fmt::Display for TailBenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailBenchError::BadStamp { payload_prefix } => write!(
                f,
                "a delivered payload has no {{\"seq\":N,\"sent_us\":T,... stamp: {payload_prefix:?}"
            ),
            TailBenchError::UnknownSeq { seq, capacity } => write!(
                f,
                "delivered seq {seq} was never published (at most {capacity} can be)"
            ),
            TailBenchError::Missing {
                published,
                delivered_unique,
                first_missing,
                waited_s,
            } => write!(
                f,
                "{delivered_unique} of {published} published events delivered {waited_s} s after publishing stopped (first missing seq: {first_missing:?})"
            ),
            TailBenchError::NotAcknowledged {
                published,
                acknowledged,
            } => write!(
                f,
                "published {published} events but only {acknowledged} were acknowledged"
            ),
        }
    }
}

impl std::error::Error for TailBenchError {}

/// Microseconds since the Unix epoch (wall clock; the same host stamps and reads).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Writes `{"seq":seq,"sent_us":now,` + the event without its leading `{` into `out`.
fn stamp(out: &mut Vec<u8>, seq: u64, event: &[u8]) {
    use std::io::Write;
    out.clear();
    let _ = write!(out, "{{\"seq\":{seq},\"sent_us\":{},", now_us());
    out.extend_from_slice(event.strip_prefix(b"{").unwrap_or(event));
}

/// Reads `(seq, sent_us)` back from a stamped payload.
fn parse_stamp(payload: &[u8]) -> Result<(u64, u64), TailBenchError> {
    fn number(rest: &[u8]) -> Option<(u64, &[u8])> {
        let end = rest.iter().position(|b| !b.is_ascii_digit())?;
        let n = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        Some((n, &rest[end..]))
    }
    let parsed = (|| {
        let rest = payload.strip_prefix(b"{\"seq\":")?;
        let (seq, rest) = number(rest)?;
        let rest = rest.strip_prefix(b",\"sent_us\":")?;
        let (sent, rest) = number(rest)?;
        rest.starts_with(b",").then_some((seq, sent))
    })();
    parsed.ok_or_else(|| TailBenchError::BadStamp {
        payload_prefix: String::from_utf8_lossy(&payload[..payload.len().min(60)]).into_owned(),
    })
}

/// Deliveries of one run, shared by the members: how often each `seq` arrived.
struct Tally {
    counts: Vec<AtomicU8>,
    unique: AtomicU64,
    duplicates: AtomicU64,
}

impl Tally {
    fn new(capacity: u64) -> Tally {
        Tally {
            counts: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// Records one delivery; returns the latency in µs and the second of the minute
    /// it was sent in, if it is the first delivery of its seq.
    fn deliver(&self, payload: &[u8]) -> Result<Option<(u32, usize)>, TailBenchError> {
        let now = now_us();
        let (seq, sent) = parse_stamp(payload)?;
        let slot = self
            .counts
            .get(seq as usize)
            .ok_or(TailBenchError::UnknownSeq {
                seq,
                capacity: self.counts.len() as u64,
            })?;
        if slot.fetch_add(1, Ordering::Relaxed) == 0 {
            self.unique.fetch_add(1, Ordering::Relaxed);
            let latency = now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
            Ok(Some((latency, ((sent / 1_000_000) % 60) as usize)))
        } else {
            // Saturate instead of wrapping back to "first delivery".
            slot.store(2, Ordering::Relaxed);
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
    }

    fn first_missing(&self, published: u64) -> Option<u64> {
        (0..published).find(|&s| self.counts[s as usize].load(Ordering::Relaxed) == 0)
    }
}

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

fn percentiles(mut lat_us: Vec<u32>) -> Latency {
    if lat_us.is_empty() {
        return Latency::default();
    }
    lat_us.sort_unstable();
    let pct = |p: f64| nearest_rank(&lat_us, p).map_or(0.0, |us| f64::from(us) / 1000.0);
    Latency {
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: pct(1.0),
    }
}

/// One run of either system.
#[derive(Debug, Clone, serde::Serialize)]
struct RunResult {
    system: &'static str,
    run: u32,
    published: u64,
    /// Events published per second actually reached (the target is `--rate`).
    publish_rate: f64,
    acknowledged: u64,
    delivered_unique: u64,
    duplicates: u64,
    latency: Latency,
    /// The largest latency (ms) of the events sent in each second of the minute
    /// (index 0 = the first second after a minute boundary).
    max_ms_by_second_of_minute: Vec<f64>,
    /// Seconds from publishing's end (the pacer told to stop) until the last event
    /// was delivered (the flush of the publishers included).
    drain_s: f64,
    /// Minutes sealed in the local view while the group read (conduit only).
    minutes_sealed: Option<u64>,
    /// Partitions each member read at the end (conduit only).
    member_partitions: Vec<Vec<String>>,
    /// Milliseconds from the members' start until the group's assignment settled
    /// (every partition owned by exactly one member, each member owning its
    /// share); publishing starts after it (conduit only).
    group_settled_ms: Option<f64>,
    load_before: String,
    load_after: String,
}

/// Runs `conduit-bench tail-latency`.
pub async fn run(args: TailLatencyArgs, conduit_exe: &Conduit) -> anyhow::Result<ExitCode> {
    if args.compare.is_some() && !args.peer_script.exists() {
        bail!(
            "{} not found: run from the repository root or pass --peer-script",
            args.peer_script.display()
        );
    }
    let events = payload_pool(100_000, args.seed);
    let mut conduit = Vec::new();
    let mut nats = Vec::new();
    let mut nats_failed = Vec::new();
    for run in 1..=args.runs {
        if !args.no_conduit {
            match conduit_run(&args, conduit_exe, run, events.clone()).await {
                Ok(r) => {
                    report_run(&args, &r)?;
                    conduit.push(r);
                }
                Err(e) => {
                    tracing::error!(run, error = %format!("{e:#}"), "conduit tail-latency run failed");
                    eprintln!("\n!!!!!!!!!! TAIL-LATENCY RUN {run} FAILED: {e:#}\n");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        if args.compare.as_deref() == Some("nats") {
            match nats_run(&args, run, events.clone()).await {
                Ok(r) => {
                    report_run(&args, &r)?;
                    nats.push(r);
                }
                Err(e) => {
                    // The peer failing (e.g. not keeping up at this rate) is a result,
                    // not a reason to stop conduit's runs.
                    tracing::error!(run, error = %format!("{e:#}"), "NATS tail-latency run failed");
                    append_json_line(
                        &args.json,
                        &serde_json::json!({
                            "bench": "tail-latency",
                            "system": "nats-jetstream",
                            "run": run,
                            "at": Utc::now().to_rfc3339(),
                            "rate": args.rate,
                            "duration_secs": args.duration_secs,
                            "failed": format!("{e:#}"),
                        }),
                    )?;
                    nats_failed.push(format!("run {run}: {e:#}"));
                }
            }
        }
    }
    print_table(&args, &conduit, &nats);
    for f in &nats_failed {
        println!("NATS FAILED {f}");
    }
    Ok(if nats_failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report_run(args: &TailLatencyArgs, r: &RunResult) -> anyhow::Result<()> {
    tracing::info!(
        system = r.system,
        run = r.run,
        published = r.published,
        delivered = r.delivered_unique,
        duplicates = r.duplicates,
        p50_ms = r.latency.p50_ms,
        p99_ms = r.latency.p99_ms,
        p999_ms = r.latency.p999_ms,
        max_ms = r.latency.max_ms,
        drain_s = r.drain_s,
        minutes_sealed = ?r.minutes_sealed,
        partitions = ?r.member_partitions,
        "run done"
    );
    let mut line = serde_json::to_value(r)?;
    if let Some(o) = line.as_object_mut() {
        o.insert("bench".into(), "tail-latency".into());
        o.insert("at".into(), Utc::now().to_rfc3339().into());
        o.insert("rate".into(), args.rate.into());
        o.insert("duration_secs".into(), args.duration_secs.into());
        o.insert("members".into(), args.members.into());
        o.insert("collectors".into(), args.collectors.into());
        o.insert("backend".into(), args.backend.clone().into());
        o.insert("linger_ms".into(), args.linger_ms.into());
        o.insert("linger".into(), args.linger.clone().into());
        o.insert("group_commit_ms".into(), args.group_commit_ms.into());
        o.insert("nproc".into(), nproc().into());
    }
    append_json_line(&args.json, &line)
}

/// How many seqs a run can publish at most: the pacer never goes beyond it.
fn capacity(args: &TailLatencyArgs) -> u64 {
    args.rate * (args.duration_secs + 5)
}

// ---- conduit ------------------------------------------------------------------

/// One cluster on local disk: collectors and a worker, processes.
struct TailBus {
    storage: SharedStorage,
    collectors: Vec<Proc>,
    worker: Option<Proc>,
}

impl TailBus {
    async fn start(
        args: &TailLatencyArgs,
        conduit: &Conduit,
        dir: &Path,
        root: &str,
    ) -> anyhow::Result<TailBus> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let config = dir.join("conduit.toml");
        std::fs::write(
            &config,
            format!(
                "# Written by conduit-bench tail-latency: one cluster, local view only.\n\
                 [clusters.{CLUSTER}]\nroot = {root:?}\n\n\
                 [topic_defaults]\nencoding = \"lines\"\ncompact = false\n\n\
                 [worker]\ninterval_ms = {}\n{}",
                args.worker_interval_ms,
                args.group_commit_ms
                    .map(|ms| format!("\n[collector]\ngroup_commit_ms = {ms}\n"))
                    .unwrap_or_default()
            ),
        )?;
        let storage = conduit_core::open_root(root)
            .await
            .with_context(|| format!("cannot open {root}"))?;
        let cfg = config.display().to_string();
        let mut bus = TailBus {
            storage,
            collectors: Vec::new(),
            worker: None,
        };
        for k in 1..=args.collectors {
            let id = format!("c{k}");
            let a: Vec<String> = [
                "collector",
                "--config",
                &cfg,
                "--cluster",
                CLUSTER,
                "--id",
                &id,
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = dir.join(format!("logs/collector-{id}.log"));
            let p = Proc::spawn(
                conduit,
                &format!("collector {id}"),
                &args.child_log_level,
                &a,
                Some(&log),
                "collector ready: scribe ",
            )
            .await;
            match p {
                Ok(p) => bus.collectors.push(p),
                Err(e) => {
                    bus.stop().await.ok();
                    return Err(e);
                }
            }
        }
        let a: Vec<String> = [
            "worker",
            "--config",
            &cfg,
            "--cluster",
            CLUSTER,
            "--http",
            "127.0.0.1:0",
            "--id",
            "bench",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = dir.join("logs/worker.log");
        match Proc::spawn(
            conduit,
            "worker",
            &args.child_log_level,
            &a,
            Some(&log),
            "worker ready: http ",
        )
        .await
        {
            Ok(p) => bus.worker = Some(p),
            Err(e) => {
                bus.stop().await.ok();
                return Err(e);
            }
        }
        Ok(bus)
    }

    /// Stops the worker, then the collectors (SIGTERM).
    async fn stop(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        for p in self
            .worker
            .take()
            .into_iter()
            .chain(self.collectors.drain(..))
        {
            if let Err(e) = p.stop(Duration::from_secs(120)).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// What one group member hands back.
struct MemberResult {
    latencies_us: Vec<u32>,
    by_second: [u32; 60],
    partitions: Vec<String>,
}

async fn conduit_run(
    args: &TailLatencyArgs,
    conduit: &Conduit,
    run: u32,
    events: Arc<Vec<Bytes>>,
) -> anyhow::Result<RunResult> {
    let dir = fresh_temp_dir(&format!("conduit-bench-tail-{}-{run}", std::process::id()))?;
    let hdfs = (args.backend == "hdfs").then(|| {
        let base = hdfs_base_or_default(args.hdfs.as_deref());
        let sub = format!("conduit_bench_tail_{}_{run}", std::process::id());
        (base, sub)
    });
    let root = match &hdfs {
        Some((base, sub)) => format!("{}/{sub}", base.trim_end_matches('/')),
        None => dir.join(CLUSTER).display().to_string(),
    };
    eprintln!("run {run}: bus in {} (root {root})", dir.display());
    let mut bus = TailBus::start(args, conduit, &dir, &root).await?;
    let result = conduit_measure(args, run, &dir, &bus, events).await;
    let stopped = bus.stop().await;
    let keep = args.keep || result.is_err() || stopped.is_err();
    if keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        if let Some((base, sub)) = &hdfs {
            remove_storage_dir(base, sub).await;
        }
    }
    let r = result?;
    stopped?;
    Ok(r)
}

async fn conduit_measure(
    args: &TailLatencyArgs,
    run: u32,
    dir: &Path,
    bus: &TailBus,
    events: Arc<Vec<Bytes>>,
) -> anyhow::Result<RunResult> {
    let cap = capacity(args);
    let tally = Arc::new(Tally::new(cap));
    let stop = Arc::new(AtomicBool::new(false));
    let first = Minute::from_datetime(Utc::now())?;
    let ckpt = dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt)?;

    // The group: dynamic members m0.., each its own consumer, from the first minute.
    let mut members = Vec::new();
    let owned = Arc::new(Mutex::new(vec![Vec::new(); args.members as usize]));
    let members_started = Instant::now();
    for k in 0..args.members {
        let consumer = conduit_pintail::Consumer::builder(TOPIC)
            .cluster(CLUSTER, bus.storage.clone())
            .view(conduit_pintail::ReadView::Local)
            .group(GROUP)
            .dynamic_member(&format!("m{k}"), Duration::from_secs(10))
            .checkpoint_dir(&ckpt.display().to_string())
            .auto_commit(Some(Duration::from_secs(1)), None)
            .start(conduit_pintail::StartTime::At(first))
            .build()
            .await
            .with_context(|| format!("cannot build group member m{k}"))?;
        let (tally, stop, owned) = (tally.clone(), stop.clone(), owned.clone());
        members.push(tokio::spawn(async move {
            let mut consumer = consumer;
            let mut latencies_us = Vec::new();
            let mut by_second = [0u32; 60];
            let mut partitions = Vec::new();
            let mut next_look = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = consumer.next_timeout(Duration::from_millis(20)).await? {
                    if let Some((l, second)) = tally.deliver(&m.payload)? {
                        latencies_us.push(l);
                        by_second[second] = by_second[second].max(l);
                    }
                }
                if Instant::now() < next_look {
                    continue;
                }
                next_look = Instant::now() + Duration::from_millis(20);
                let now = consumer.partitions();
                if now != partitions {
                    tracing::info!(member = k, partitions = ?now, "group member's partitions");
                    owned.lock().expect("not poisoned")[k as usize] = now.clone();
                    partitions = now;
                }
            }
            consumer.close().await?;
            Ok::<_, anyhow::Error>(MemberResult {
                latencies_us,
                by_second,
                partitions,
            })
        }));
    }

    let addrs: Vec<_> = bus.collectors.iter().map(|c| c.addr).collect();
    let settled = group_settled(&owned, addrs.len(), members_started).await?;
    tracing::info!(
        run,
        settled_ms = settled.as_millis() as u64,
        "consumer group settled"
    );
    let load_before = load_avg();
    tracing::info!(
        run,
        rate = args.rate,
        duration_secs = args.duration_secs,
        members = args.members,
        collectors = args.collectors,
        dir = %dir.display(),
        load = %load_before,
        "conduit: publishing"
    );
    let mut buf = Vec::with_capacity(512);
    let (linger, adaptive) = (
        Duration::from_millis(args.linger_ms),
        args.linger == "adaptive",
    );
    let tune =
        move |b: conduit_publisher::PublisherBuilder| b.linger(linger).adaptive_linger(adaptive);
    let pacer = Pacer::start_tuned(&addrs, args.rate, Some(cap), tune, move |seq| {
        stamp(&mut buf, seq, &events[(seq % events.len() as u64) as usize]);
        Bytes::copy_from_slice(&buf)
    })
    .await?;
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration_secs);
    let mut next_progress = started + Duration::from_secs(10);
    // The run's length itself (not a synchronisation): report progress meanwhile.
    while Instant::now() < end {
        tokio::time::sleep_until(next_progress.min(end).into()).await;
        if Instant::now() >= next_progress {
            tracing::info!(
                t_s = started.elapsed().as_secs(),
                published = pacer.published.load(Ordering::Relaxed),
                delivered = tally.unique.load(Ordering::Relaxed),
                duplicates = tally.duplicates.load(Ordering::Relaxed),
                "progress"
            );
            next_progress += Duration::from_secs(10);
        }
        if let Some(done) = members.iter().position(|m| m.is_finished()) {
            stop.store(true, Ordering::Relaxed);
            let _ = pacer.finish().await;
            let member = members.swap_remove(done);
            member.await.context("a group member panicked")??;
            bail!("group member ended before the run did");
        }
    }
    let published_at = Instant::now();
    let publish_secs = started.elapsed().as_secs_f64();
    let (published, acknowledged) = pacer.finish().await?;
    if acknowledged != published {
        stop.store(true, Ordering::Relaxed);
        return Err(TailBenchError::NotAcknowledged {
            published,
            acknowledged,
        }
        .into());
    }
    let last = Minute::from_datetime(Utc::now())?;

    // Wait (with a deadline) until every published seq was delivered.
    let deadline = published_at + Duration::from_secs(args.drain_timeout_secs);
    while tally.unique.load(Ordering::Relaxed) < published && Instant::now() < deadline {
        if members.iter().any(|m| m.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = published_at.elapsed().as_secs_f64();
    let delivered_unique = tally.unique.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::with_capacity(published as usize);
    let mut member_partitions = Vec::new();
    let mut by_second = [0u32; 60];
    for m in members {
        let r = m.await.context("a group member panicked")??;
        latencies.extend(r.latencies_us);
        for (all, one) in by_second.iter_mut().zip(r.by_second) {
            *all = (*all).max(one);
        }
        member_partitions.push(r.partitions);
    }
    if delivered_unique < published {
        return Err(TailBenchError::Missing {
            published,
            delivered_unique,
            first_missing: tally.first_missing(published),
            waited_s: args.drain_timeout_secs,
        }
        .into());
    }

    // Minutes sealed (and so moved to streams_local/) while the group read.
    let topic = Topic::new(TOPIC)?;
    let mut minutes_sealed = 0;
    let mut m = first;
    while m < last {
        if Manifest::is_sealed(&*bus.storage, &Manifest::dir(View::Local, &topic, m)).await? {
            minutes_sealed += 1;
        }
        m = m.add_minutes(1)?;
    }
    Ok(RunResult {
        system: "conduit",
        run,
        published,
        publish_rate: published as f64 / publish_secs,
        acknowledged,
        delivered_unique,
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        latency: percentiles(latencies),
        max_ms_by_second_of_minute: ms(&by_second),
        drain_s,
        minutes_sealed: Some(minutes_sealed),
        member_partitions,
        group_settled_ms: Some(settled.as_secs_f64() * 1e3),
        load_before,
        load_after: load_avg(),
    })
}

/// Waits until the partitions the members report (`owned[k]` is member `k`'s)
/// are each owned by exactly one member, cover every collector, and every
/// member owns `floor(P/N)` or `ceil(P/N)`: the group's steady state, like a
/// Kafka benchmark's consumers having joined before it measures. Returns how
/// long it took.
async fn group_settled(
    owned: &Mutex<Vec<Vec<String>>>,
    collectors: usize,
    started: Instant,
) -> anyhow::Result<Duration> {
    let deadline = started + Duration::from_secs(30);
    loop {
        let now = owned.lock().expect("not poisoned").clone();
        let mut all: Vec<&String> = now.iter().flatten().collect();
        all.sort();
        let total = all.len();
        all.dedup();
        let n = now.len().max(1);
        let (lo, hi) = (collectors / n, collectors.div_ceil(n));
        if all.len() == collectors
            && total == collectors
            && now.iter().all(|p| (lo..=hi).contains(&p.len()))
        {
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            bail!("the consumer group did not settle within 30 s: members own {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- NATS JetStream -------------------------------------------------------------

async fn nats_run(
    args: &TailLatencyArgs,
    run: u32,
    events: Arc<Vec<Bytes>>,
) -> anyhow::Result<RunResult> {
    let dir = fresh_temp_dir(&format!(
        "conduit-bench-tail-nats-{}-{run}",
        std::process::id()
    ))?;
    let server = start_nats(&args.peer_script, &dir).await?;
    let result = nats_measure(args, run, &server, events).await;
    server.stop().await;
    if args.keep || result.is_err() {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn nats_measure(
    args: &TailLatencyArgs,
    run: u32,
    server: &NatsServer,
    events: Arc<Vec<Bytes>>,
) -> anyhow::Result<RunResult> {
    let mut ctl = Control::open(server.port).await?;
    let v = ctl
        .request(
            &format!("$JS.API.STREAM.CREATE.{NATS_STREAM}"),
            format!(
                r#"{{"name":"{NATS_STREAM}","subjects":["tail.>"],"storage":"file","retention":"limits","discard":"old","num_replicas":1,"max_msgs":-1,"max_bytes":-1}}"#
            )
            .as_bytes(),
        )
        .await?;
    if v.get("error").is_some() {
        bail!("cannot create stream {NATS_STREAM}: {v}");
    }
    // Durable pull consumer, explicit acks, no cap on unacknowledged messages.
    let config = format!(
        r#"{{"stream_name":"{NATS_STREAM}","config":{{"durable_name":"{NATS_CONSUMER}","ack_policy":"explicit","deliver_policy":"all","ack_wait":30000000000,"max_ack_pending":-1,"max_waiting":512}}}}"#
    );
    let mut v = ctl
        .request(
            &format!("$JS.API.CONSUMER.CREATE.{NATS_STREAM}"),
            config.as_bytes(),
        )
        .await?;
    if v.get("error").is_some() {
        tracing::debug!(reply = %v, "CONSUMER.CREATE refused (nats-server 2.9 wants DURABLE.CREATE for durables)");
        v = ctl
            .request(
                &format!("$JS.API.CONSUMER.DURABLE.CREATE.{NATS_STREAM}.{NATS_CONSUMER}"),
                config.as_bytes(),
            )
            .await?;
    }
    if v.get("error").is_some() {
        bail!("cannot create durable consumer {NATS_CONSUMER}: {v}");
    }

    let cap = capacity(args);
    let tally = Arc::new(Tally::new(cap));
    let stop = Arc::new(AtomicBool::new(false));
    let mut members = Vec::new();
    for k in 0..args.members {
        let (tally, stop) = (tally.clone(), stop.clone());
        let (port, batch) = (server.port, args.nats_batch);
        members.push(tokio::spawn(async move {
            nats_pull_member(port, k, batch, tally, stop).await
        }));
    }

    // Publisher: one connection, paced like conduit's, every publish acked.
    let (mut prs, pwr) = nats::connect(server.port, true).await?;
    pwr.lock()
        .await
        .write_all(b"SUB _INBOX.pub.* 1\r\n")
        .await?;
    let acked = Arc::new(AtomicU64::new(0));
    let (a2, w2) = (acked.clone(), pwr.clone());
    let ack_reader = tokio::spawn(async move {
        loop {
            match prs.op().await? {
                Op::Msg { body, .. } => {
                    if body.windows(7).any(|w| w == b"\"error\"") {
                        bail!("a publish failed: {}", String::from_utf8_lossy(&body));
                    }
                    a2.fetch_add(1, Ordering::Relaxed);
                }
                Op::Ping => {
                    let mut w = w2.lock().await;
                    w.write_all(b"PONG\r\n").await?;
                    w.flush().await?;
                }
                Op::Pong | Op::Other => {}
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    });

    let load_before = load_avg();
    tracing::info!(run, rate = args.rate, duration_secs = args.duration_secs, members = args.members, load = %load_before, "NATS JetStream: publishing");
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration_secs);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut buf = Vec::with_capacity(512);
    let mut next_progress = started + Duration::from_secs(10);
    while Instant::now() < end {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(cap);
        let mut w = pwr.lock().await;
        while seq < due {
            stamp(&mut buf, seq, &events[(seq % events.len() as u64) as usize]);
            w.write_all(format!("PUB tail.e _INBOX.pub.{seq} {}\r\n", buf.len()).as_bytes())
                .await?;
            w.write_all(&buf).await?;
            w.write_all(b"\r\n").await?;
            seq += 1;
        }
        w.flush().await?;
        drop(w);
        if Instant::now() >= next_progress {
            tracing::info!(
                t_s = started.elapsed().as_secs(),
                published = seq,
                acknowledged = acked.load(Ordering::Relaxed),
                delivered = tally.unique.load(Ordering::Relaxed),
                "progress"
            );
            next_progress += Duration::from_secs(10);
        }
        if ack_reader.is_finished() || members.iter().any(|m| m.is_finished()) {
            break;
        }
    }
    let published = seq;
    let published_at = Instant::now();
    let publish_secs = started.elapsed().as_secs_f64();
    let deadline = published_at + Duration::from_secs(args.drain_timeout_secs);
    while (tally.unique.load(Ordering::Relaxed) < published
        || acked.load(Ordering::Relaxed) < published)
        && Instant::now() < deadline
    {
        if ack_reader.is_finished() || members.iter().any(|m| m.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = published_at.elapsed().as_secs_f64();
    let acknowledged = acked.load(Ordering::Relaxed);
    let delivered_unique = tally.unique.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::with_capacity(published as usize);
    let mut by_second = [0u32; 60];
    for m in members {
        let (l, b) = m.await.context("a pull member panicked")??;
        latencies.extend(l);
        for (all, one) in by_second.iter_mut().zip(b) {
            *all = (*all).max(one);
        }
    }
    if ack_reader.is_finished() {
        ack_reader.await.context("the ack reader panicked")??;
    } else {
        ack_reader.abort();
    }
    if acknowledged != published {
        return Err(TailBenchError::NotAcknowledged {
            published,
            acknowledged,
        }
        .into());
    }
    if delivered_unique < published {
        return Err(TailBenchError::Missing {
            published,
            delivered_unique,
            first_missing: tally.first_missing(published),
            waited_s: args.drain_timeout_secs,
        }
        .into());
    }
    Ok(RunResult {
        system: "nats-jetstream",
        run,
        published,
        publish_rate: published as f64 / publish_secs,
        acknowledged,
        delivered_unique,
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        latency: percentiles(latencies),
        max_ms_by_second_of_minute: ms(&by_second),
        drain_s,
        minutes_sealed: None,
        member_partitions: vec![],
        group_settled_ms: None,
        load_before,
        load_after: load_avg(),
    })
}

/// One pull member: keeps one pull request of `batch` messages (expiring after
/// 1 s) outstanding, acks every message, records first-delivery latencies.
async fn nats_pull_member(
    port: u16,
    k: u32,
    batch: u64,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<u32>, [u32; 60])> {
    let (mut rs, wr) = nats::connect(port, true).await?;
    let inbox = format!("_INBOX.pull{k}");
    let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{NATS_STREAM}.{NATS_CONSUMER}");
    let request = format!(r#"{{"batch":{batch},"expires":1000000000}}"#);
    let pull = format!(
        "PUB {next_subject} {inbox} {}\r\n{request}\r\n",
        request.len()
    );
    {
        let mut w = wr.lock().await;
        w.write_all(format!("SUB {inbox} 1\r\n").as_bytes()).await?;
        w.write_all(pull.as_bytes()).await?;
        w.flush().await?;
    }
    let mut left = batch;
    let mut latencies = Vec::new();
    let mut by_second = [0u32; 60];
    let mut w = wr.lock().await;
    while !stop.load(Ordering::Relaxed) {
        if !rs.has_buffered() {
            w.flush().await?;
        }
        let op = match tokio::time::timeout(Duration::from_millis(100), rs.op()).await {
            Ok(op) => op?,
            Err(_) => continue,
        };
        match op {
            Op::Msg {
                reply: Some(reply),
                body,
                ..
            } if reply.starts_with(b"$JS.ACK.") => {
                if let Some((l, second)) = tally.deliver(&body)? {
                    latencies.push(l);
                    by_second[second] = by_second[second].max(l);
                }
                w.write_all(b"PUB ").await?;
                w.write_all(&reply).await?;
                w.write_all(b" 0\r\n\r\n").await?;
                left -= 1;
                if left == 0 {
                    w.write_all(pull.as_bytes()).await?;
                    left = batch;
                }
            }
            Op::Msg { headers, .. } => {
                // A status for our pull request (404 no messages, 408 expired, 409):
                // the request is over; ask again.
                let status = String::from_utf8_lossy(
                    headers.split(|&b| b == b'\r').next().unwrap_or_default(),
                )
                .into_owned();
                if !status.contains(" 404") && !status.contains(" 408") {
                    tracing::debug!(member = k, %status, "pull request status");
                }
                w.write_all(pull.as_bytes()).await?;
                left = batch;
            }
            Op::Ping => w.write_all(b"PONG\r\n").await?,
            Op::Pong | Op::Other => {}
        }
    }
    w.flush().await?;
    Ok((latencies, by_second))
}

/// Microseconds to milliseconds.
fn ms(us: &[u32]) -> Vec<f64> {
    us.iter().map(|&u| f64::from(u) / 1000.0).collect()
}

/// The `n` seconds of the minute with the largest maximum, as `:SS max ms`.
fn worst_seconds(by_second: &[f64], n: usize) -> String {
    let mut idx: Vec<usize> = (0..by_second.len()).collect();
    idx.sort_by(|&a, &b| by_second[b].total_cmp(&by_second[a]));
    idx.iter()
        .take(n)
        .map(|&i| format!(":{i:02} {:.0} ms", by_second[i]))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- the table ------------------------------------------------------------------

fn print_table(args: &TailLatencyArgs, conduit: &[RunResult], nats: &[RunResult]) {
    println!(
        "\nconduit-bench tail-latency: {} events/s for {} s, {} run(s), {} collectors, group of {} members, view local on {}, linger {} {} ms; load {}",
        args.rate,
        args.duration_secs,
        args.runs,
        args.collectors,
        args.members,
        args.backend,
        args.linger,
        args.linger_ms,
        load_avg()
    );
    let mut header = format!(
        "{:<28} {:>30}",
        "metric (median (min–max))", "conduit PinTail group"
    );
    if !nats.is_empty() {
        header.push_str(&format!(" {:>30}", "NATS JetStream pull"));
    }
    println!("{header}");
    type Get = fn(&RunResult) -> f64;
    let rows: [(&str, Get, usize); 9] = [
        ("publish rate reached /s", |r| r.publish_rate, 0),
        ("p50 ms", |r| r.latency.p50_ms, 1),
        ("p99 ms", |r| r.latency.p99_ms, 1),
        ("p99.9 ms", |r| r.latency.p999_ms, 1),
        ("max ms", |r| r.latency.max_ms, 1),
        ("published", |r| r.published as f64, 0),
        ("delivered (unique)", |r| r.delivered_unique as f64, 0),
        ("duplicates", |r| r.duplicates as f64, 0),
        ("drain after publish end s", |r| r.drain_s, 2),
    ];
    let cell = |v: &[RunResult], get: Get, d: usize| {
        let vals: Vec<f64> = v.iter().map(get).collect();
        match median_min_max(&vals) {
            Some((m, lo, hi)) => format!("{m:.d$} ({lo:.d$}–{hi:.d$})"),
            None => "n/a".to_owned(),
        }
    };
    for (name, get, d) in rows {
        let mut line = format!("{name:<28} {:>30}", cell(conduit, get, d));
        if !nats.is_empty() {
            line.push_str(&format!(" {:>30}", cell(nats, get, d)));
        }
        println!("{line}");
    }
    for r in conduit {
        println!(
            "conduit run {}: {} published = {} delivered, {} duplicates, {} minute(s) sealed while tailing, partitions per member {:?}, worst seconds of the minute (sent) {}, load {} -> {}",
            r.run,
            r.published,
            r.delivered_unique,
            r.duplicates,
            r.minutes_sealed.unwrap_or(0),
            r.member_partitions,
            worst_seconds(&r.max_ms_by_second_of_minute, 3),
            r.load_before,
            r.load_after
        );
    }
    for r in nats {
        println!(
            "NATS run {}: {} published = {} acknowledged = {} delivered, {} duplicates, worst seconds of the minute (sent) {}, load {} -> {}",
            r.run,
            r.published,
            r.acknowledged,
            r.delivered_unique,
            r.duplicates,
            worst_seconds(&r.max_ms_by_second_of_minute, 3),
            r.load_before,
            r.load_after
        );
    }
    let med = |v: &[RunResult], get: Get| {
        median_min_max(&v.iter().map(get).collect::<Vec<_>>()).map(|m| m.0)
    };
    if let Some(p99) = med(conduit, |r| r.latency.p99_ms) {
        println!(
            "target p99 < 1 s: {} (median p99 {p99:.1} ms)",
            if p99 < 1000.0 { "met" } else { "NOT met" }
        );
    }
    if let (Some(c), Some(n)) = (
        med(conduit, |r| r.latency.p99_ms),
        med(nats, |r| r.latency.p99_ms),
    ) {
        if c >= n {
            println!("median p99: conduit is {:.2}x NATS's (NATS lower)", c / n);
        } else {
            println!(
                "median p99: NATS is {:.2}x conduit's (conduit lower)",
                n / c
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_keeps_the_event() {
        let mut buf = Vec::new();
        stamp(&mut buf, 42, br#"{"type":"click","x":1}"#);
        let (seq, sent) = parse_stamp(&buf).unwrap();
        assert_eq!(seq, 42);
        assert!(sent > 1_600_000_000_000_000, "{sent}");
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["type"], "click");
        assert_eq!(v["seq"], 42);
        assert!(matches!(
            parse_stamp(br#"{"type":"click"}"#),
            Err(TailBenchError::BadStamp { .. })
        ));
    }

    #[test]
    fn tally_counts_first_deliveries_and_duplicates() {
        let t = Tally::new(3);
        let mut buf = Vec::new();
        stamp(&mut buf, 1, b"{}");
        let (_, second) = t.deliver(&buf).unwrap().unwrap();
        assert!(second < 60);
        assert!(t.deliver(&buf).unwrap().is_none());
        assert_eq!(t.unique.load(Ordering::Relaxed), 1);
        assert_eq!(t.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(t.first_missing(3), Some(0));
        stamp(&mut buf, 7, b"{}");
        assert!(matches!(
            t.deliver(&buf),
            Err(TailBenchError::UnknownSeq { seq: 7, .. })
        ));
    }

    #[test]
    fn worst_seconds_lists_the_largest() {
        let mut v = vec![0.0; 60];
        v[0] = 500.0;
        v[59] = 20.0;
        assert_eq!(worst_seconds(&v, 2), ":00 500 ms, :59 20 ms");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = percentiles((1..=1000).collect());
        assert_eq!(l.p50_ms, 0.5);
        assert_eq!(l.p99_ms, 0.99);
        assert_eq!(l.p999_ms, 0.999);
        assert_eq!(l.max_ms, 1.0);
    }
}
