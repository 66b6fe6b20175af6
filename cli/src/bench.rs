//! `conduit bench`: measure a collector's ingest, and write the benchmark's events
//! for other tools.
//!
//! `conduit bench ingest` starts `conduit collector` as a child process of this
//! executable (so its peak RSS and CPU time can be read from `/proc`), sends
//! pre-generated events over Scribe `Log` calls from one task per connection,
//! records the ack latency of each call, then stops the collector with SIGTERM and
//! counts the records in the files it wrote: a run whose count differs from the
//! events sent fails the benchmark. `conduit bench publish` does the same with the
//! `conduit-publisher` library as the client: the cost of `publish` on the caller's
//! thread, and end-to-end throughput with acks. `docs/benchmarks.md` has the results and the
//! commands that reproduce them.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use clap::{Args, Subcommand};
use conduit_core::events::EventGenerator;
use conduit_core::format::{decode_file, DATA_FILE_SUFFIX};
use conduit_core::scribe::{decode_reply, encode_log_call, read_frame, ReplyValue, ResultCode};
use conduit_core::{Encoding, SharedStorage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// The topic every benchmark event is sent to.
const TOPIC: &str = "bench";
/// Queue capacity of the benchmarked publisher (its default).
const QUEUE_CAPACITY: u64 = 100_000;
/// Pause before a call answered `TRY_LATER` is sent again.
const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Largest reply frame accepted (replies are a few dozen bytes).
const MAX_REPLY_FRAME: usize = 1 << 20;

/// Arguments of `conduit bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Measure collector ingest: events/s, MB/s, ack latency, collector RSS and CPU,
    /// bytes on disk; verifies every event sent is in the files.
    Ingest(IngestArgs),
    /// Measure the publisher library: the cost of `publish` on the caller's thread
    /// and end-to-end publisher → collector throughput with acks (verified in the
    /// files).
    Publish(PublishArgs),
    /// Measure this machine's limits: synced sequential writes, zstd level 1 on
    /// one core, loopback TCP (the ceilings the other scenarios are compared to).
    Limits(crate::bench_limits::LimitsArgs),
    /// Write the benchmark's events to a file, one JSON event per line, so other
    /// tools (scripts/peers/*.sh) are fed exactly the same input.
    Gen(GenArgs),
    /// Measure the time from a minute's end to its `_SUCCESS` in the local, merged
    /// and mirror views (two datacenters, real collector and worker processes).
    SealLatency(crate::bench_seal::SealArgs),
    /// Read one hour of sealed history with DuckDB and with one PinTail consumer;
    /// events/s.
    CatchUp(crate::bench_catchup::CatchUpArgs),
    /// Run the bus at a fixed rate for a while: RSS and file descriptors of every
    /// process over time (slope per hour), zero loss by `conduit audit`.
    Soak(crate::bench_soak::SoakArgs),
    /// conduit ingest and NATS JetStream (file store, acked publishes) side by
    /// side, fed the same events, interleaved.
    NatsIngest(crate::bench_nats::NatsArgs),
    /// Publish-to-delivery latency of a PinTail consumer group following the local
    /// view live at a fixed rate across minute boundaries (optionally against a NATS
    /// JetStream durable pull consumer).
    TailLatency(crate::bench_tail::TailLatencyArgs),
}

/// Arguments of `conduit bench ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Concurrent client connections, one task each.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,

    /// Events to send per run (generated in memory before timing starts).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,

    /// Entries per Scribe `Log` call.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,

    /// Calls in flight per connection (Scribe clients wait for each reply: 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pipeline: u32,

    /// Storage root for the spawned collector: a directory or
    /// `hdfs://namenode:port/path`. Each run writes to a fresh sub-directory
    /// `bench-<pid>-<run>` of it, deleted after verification (see --keep).
    /// Default: a fresh temporary directory per run, removed afterwards. With
    /// --collector: the root that collector writes to, used only to count the
    /// records it wrote during each run (local roots only: open HDFS files are not
    /// fully readable).
    #[arg(long, value_name = "DIR|URI")]
    root: Option<String>,

    /// Benchmark an already running collector at HOST:PORT instead of spawning one.
    /// Its RSS and CPU are then not measured, and the records are counted only with
    /// --root.
    #[arg(long, value_name = "HOST:PORT")]
    collector: Option<String>,

    /// Number of runs; the table shows each run and the median (min–max).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,

    /// Append one JSON line per run (settings and results) to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Seed of the event generator (`conduit bench gen` with the same seed writes
    /// the same events).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Keep each run's data (the temporary directory or the sub-directory of
    /// --root) instead of deleting it; its path is printed.
    #[arg(long)]
    keep: bool,

    /// Extra argument for the spawned `conduit collector` (repeatable), e.g.
    /// `--collector-arg=--zstd-level=3` or `--collector-arg=--group-commit-ms=0`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    collector_arg: Vec<String>,

    /// Log filter of the spawned collector (its --log-level).
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    collector_log_level: String,

    /// Give up on a run after this many seconds (the run then fails).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
}

/// Arguments of `conduit bench publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Events to publish per run (generated in memory before timing starts).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,

    /// Number of runs; the table shows each run and the median (min–max).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,

    /// Consecutive `publish` calls timed together (the per-call cost is their time
    /// divided by this).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    timed_calls: u32,

    /// Connections the publisher opens to the collector (its `connections`
    /// setting; above 1, batches may be stored out of order across batches).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    connections: u32,

    /// Seed of the event generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Extra argument for the spawned `conduit collector` (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    collector_arg: Vec<String>,

    /// Log filter of the spawned collector (its --log-level).
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    collector_log_level: String,

    /// Give up on a run after this many seconds (the run then fails).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
}

/// Arguments of `conduit bench gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of events.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,

    /// Output file (one compact JSON event per line); `-` for stdout.
    #[arg(long, value_name = "FILE")]
    out: String,

    /// Seed of the event generator (the same as `bench ingest --seed`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs `conduit bench ...`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Ingest(a) => ingest(a).await,
        BenchCommand::Publish(a) => publish(a).await,
        BenchCommand::Limits(a) => crate::bench_limits::run(a).await,
        BenchCommand::Gen(a) => gen(a),
        BenchCommand::SealLatency(a) => crate::bench_seal::run(a).await,
        BenchCommand::CatchUp(a) => crate::bench_catchup::run(a).await,
        BenchCommand::Soak(a) => crate::bench_soak::run(a).await,
        BenchCommand::NatsIngest(a) => crate::bench_nats::run(a).await,
        BenchCommand::TailLatency(a) => crate::bench_tail::run(a).await,
    }
}

fn gen(args: GenArgs) -> anyhow::Result<ExitCode> {
    let sink: Box<dyn Write> = if args.out == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out))?,
        )
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);
    let mut generator = EventGenerator::new(args.seed);
    let mut buf = Vec::with_capacity(512);
    let mut bytes = 0u64;
    for _ in 0..args.events {
        buf.clear();
        generator.next_into(&mut buf);
        buf.push(b'\n');
        bytes += buf.len() as u64;
        out.write_all(&buf)?;
    }
    out.flush()?;
    eprintln!(
        "wrote {} events, {} bytes (mean {:.1} bytes/event with newline) to {}",
        args.events,
        bytes,
        bytes as f64 / args.events as f64,
        args.out
    );
    Ok(ExitCode::SUCCESS)
}

/// One pre-encoded `Log` call.
struct Call {
    frame: Vec<u8>,
    events: u64,
    payload_bytes: u64,
}

/// What one connection measured.
#[derive(Default)]
struct ConnStats {
    latencies: Vec<Duration>,
    events: u64,
    payload_bytes: u64,
    retries: u64,
}

/// Everything measured in one run.
#[derive(Debug, Clone)]
struct RunResult {
    run: u32,
    elapsed_s: f64,
    events: u64,
    payload_bytes: u64,
    events_per_s: f64,
    mb_per_s: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    ack_max_ms: f64,
    rss_mib: Option<f64>,
    cpu_s_per_m: Option<f64>,
    client_cpu_s_per_m: f64,
    file_bytes: Option<u64>,
    files: Option<u64>,
    ratio: Option<f64>,
    try_later: u64,
    records: Option<u64>,
    load_avg: String,
}

async fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let gen_started = Instant::now();
    let calls = Arc::new(generate_calls(args.events, args.batch, args.seed));
    let payload_total: u64 = calls.iter().map(|c| c.payload_bytes).sum();
    eprintln!(
        "generated {} events ({} payload bytes, mean {:.1} bytes) in {} calls of up to {} in {:.1} s",
        args.events,
        payload_total,
        payload_total as f64 / args.events as f64,
        calls.len(),
        args.batch,
        gen_started.elapsed().as_secs_f64()
    );
    let mut results = Vec::new();
    let mut failed = false;
    for run in 1..=args.runs {
        match one_run(&args, run, calls.clone()).await {
            Ok(r) => {
                eprintln!("{}", summary_line(&r));
                if let Some(path) = &args.json {
                    append_json(path, &args, &r)?;
                }
                let mismatch = r.records.is_some_and(|n| n != r.events);
                results.push(r);
                if mismatch {
                    failed = true;
                    break;
                }
            }
            Err(e) => {
                eprintln!("\n!!!!!!!!!! BENCHMARK RUN {run} FAILED: {e:#}\n");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    print_table(&args, &results);
    if failed {
        let r = results.last().expect("the failed run");
        eprintln!(
            "\n!!!!!!!!!! BENCHMARK FAILED: run {} sent {} events (all acknowledged) but the files hold {} records\n",
            r.run,
            r.events,
            r.records.unwrap_or(0)
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn generate_calls(events: u64, batch: u32, seed: u64) -> Vec<Call> {
    let mut generator = EventGenerator::new(seed);
    let mut calls = Vec::with_capacity(events.div_ceil(batch as u64) as usize);
    let mut scratch = Vec::with_capacity(batch as usize * 320);
    let mut ends = Vec::with_capacity(batch as usize);
    let mut left = events;
    while left > 0 {
        let n = left.min(batch as u64);
        scratch.clear();
        ends.clear();
        for _ in 0..n {
            generator.next_into(&mut scratch);
            ends.push(scratch.len());
        }
        let mut start = 0;
        let entries: Vec<(&[u8], &[u8])> = ends
            .iter()
            .map(|&end| {
                let e = (TOPIC.as_bytes(), &scratch[start..end]);
                start = end;
                e
            })
            .collect();
        let mut frame = Vec::new();
        // The seqid is the call's index, so a reply can be checked against it.
        encode_log_call(calls.len() as i32, &entries, &mut frame);
        calls.push(Call {
            frame,
            events: n,
            payload_bytes: scratch.len() as u64,
        });
        left -= n;
    }
    calls
}

/// The collector a run talks to.
struct Target {
    addr: SocketAddr,
    child: Option<tokio::process::Child>,
    pid: Option<u32>,
    /// Root the records are counted in, if any.
    root: Option<String>,
    /// What to delete afterwards: a local directory, or (parent root, relative
    /// path) on storage.
    cleanup: Cleanup,
}

enum Cleanup {
    None,
    LocalDir(PathBuf),
    Storage { parent: String, path: String },
}

async fn start_target(args: &IngestArgs, run: u32) -> anyhow::Result<Target> {
    if let Some(addr) = &args.collector {
        let addr = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("cannot resolve --collector {addr}"))?
            .next()
            .with_context(|| format!("--collector {addr} resolves to nothing"))?;
        return Ok(Target {
            addr,
            child: None,
            pid: None,
            root: args.root.clone(),
            cleanup: Cleanup::None,
        });
    }
    let sub = format!("bench-{}-{run}", std::process::id());
    let (root, cleanup) = match &args.root {
        None => {
            let dir = std::env::temp_dir().join(format!("conduit-{sub}"));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            (dir.display().to_string(), Cleanup::LocalDir(dir))
        }
        Some(root) if root.contains("://") && !root.starts_with("file://") => (
            format!("{}/{sub}", root.trim_end_matches('/')),
            Cleanup::Storage {
                parent: root.clone(),
                path: sub.clone(),
            },
        ),
        Some(root) => {
            let base = PathBuf::from(root.strip_prefix("file://").unwrap_or(root));
            let dir = base.join(&sub);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (dir.display().to_string(), Cleanup::LocalDir(dir))
        }
    };
    match spawn_collector(&args.collector_log_level, &args.collector_arg, &root).await {
        Ok((child, pid, addr)) => Ok(Target {
            addr,
            child: Some(child),
            pid,
            root: Some(root),
            cleanup,
        }),
        Err(e) => {
            remove_run_data(cleanup, false).await;
            Err(e)
        }
    }
}

/// Starts `conduit collector` on free ports and waits for its ready line.
async fn spawn_collector(
    log_level: &str,
    collector_args: &[String],
    root: &str,
) -> anyhow::Result<(tokio::process::Child, Option<u32>, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot find the conduit executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--log-level")
        .arg(log_level)
        .arg("collector")
        .arg("--root")
        .arg(root)
        .arg("--id")
        .arg("bench")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--http")
        .arg("127.0.0.1:0")
        .args(collector_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("cannot start the collector")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no collector stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("collector ready: scribe ") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return Ok::<_, anyhow::Error>(Some(addr.parse::<SocketAddr>()?));
            }
        }
        Ok(None)
    })
    .await;
    let addr = match ready {
        Ok(Ok(Some(addr))) => addr,
        Ok(Ok(None)) => {
            let status = child.wait().await?;
            bail!("the collector exited before it was ready ({status}); root {root}")
        }
        Ok(Err(e)) => return Err(e.context("cannot read the collector's ready line")),
        Err(_) => bail!("the collector was not ready within 120 s; root {root}"),
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, pid, addr))
}

/// One run: start the collector, measure, stop it, count, clean up. The data of a
/// failed run is kept for inspection.
async fn one_run(args: &IngestArgs, run: u32, calls: Arc<Vec<Call>>) -> anyhow::Result<RunResult> {
    let load_avg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let mut target = start_target(args, run).await?;
    let result = measure(args, run, calls, &mut target, load_avg).await;
    let failed = match &result {
        Ok(r) => r.records.is_some_and(|n| n != r.events),
        Err(_) => true,
    };
    if let Some(mut child) = target.child.take() {
        // Still running only if the run failed before stopping it.
        let _ = child.kill().await;
    }
    let cleanup = std::mem::replace(&mut target.cleanup, Cleanup::None);
    remove_run_data(cleanup, args.keep || failed).await;
    result
}

async fn remove_run_data(cleanup: Cleanup, keep: bool) {
    match cleanup {
        Cleanup::None => {}
        Cleanup::LocalDir(dir) if keep => eprintln!("kept {}", dir.display()),
        Cleanup::LocalDir(dir) => {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("warning: cannot remove {}: {e}", dir.display());
            }
        }
        Cleanup::Storage { parent, path } if keep => eprintln!("kept {parent}/{path}"),
        Cleanup::Storage { parent, path } => match conduit_core::open_root(&parent).await {
            Ok(storage) => {
                if let Err(e) = storage.delete(&path, true).await {
                    eprintln!("warning: cannot delete {parent}/{path}: {e}");
                }
            }
            Err(e) => eprintln!("warning: cannot open {parent} to delete {path}: {e}"),
        },
    }
}

async fn measure(
    args: &IngestArgs,
    run: u32,
    calls: Arc<Vec<Call>>,
    target: &mut Target,
    load_avg: String,
) -> anyhow::Result<RunResult> {
    let before = match (&args.collector, &target.root) {
        (Some(_), Some(root)) => Some(count_records(root).await?.records),
        _ => None,
    };

    let conns = args.connections as usize;
    let start = Arc::new(Barrier::new(conns + 1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut tasks = Vec::with_capacity(conns);
    for conn in 0..conns {
        let calls = calls.clone();
        let start = start.clone();
        let addr = target.addr;
        let pipeline = args.pipeline as usize;
        tasks.push(tokio::spawn(async move {
            drive(addr, calls, conn, conns, pipeline, start, deadline).await
        }));
    }
    let cpu_before = target.pid.and_then(proc_cpu_seconds);
    let client_before = self_cpu_seconds();
    start.wait().await;
    let t0 = Instant::now();
    let mut stats = ConnStats::default();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(s)) => {
                stats.latencies.extend(s.latencies);
                stats.events += s.events;
                stats.payload_bytes += s.payload_bytes;
                stats.retries += s.retries;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::Error::new(e));
            }
        }
    }
    let elapsed = t0.elapsed();
    let cpu_after = target.pid.and_then(proc_cpu_seconds);
    let client_after = self_cpu_seconds();
    let rss_mib = target.pid.and_then(proc_peak_rss_mib);
    if let Some(e) = first_error {
        return Err(e.context("a connection failed"));
    }

    // Stop the collector: SIGTERM, then it closes every file with its trailer.
    if let Some(mut child) = target.child.take() {
        if let Some(pid) = target
            .pid
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .context("cannot send SIGTERM to the collector")?;
        }
        let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
            .await
            .context("the collector did not stop within 300 s of SIGTERM")??;
        if !status.success() {
            bail!("the collector exited with {status} after SIGTERM");
        }
    }

    let counted = match &target.root {
        Some(root) => Some(count_records(root).await?),
        None => None,
    };
    let records = counted.as_ref().map(|c| c.records - before.unwrap_or(0));
    if let Some(c) = &counted {
        if c.invalid_files > 0 {
            eprintln!(
                "warning: the collector wrote {} files to _invalid",
                c.invalid_files
            );
        }
    }
    // Files of an external collector's root hold more than this run: no ratio.
    let file_bytes = counted
        .as_ref()
        .filter(|_| args.collector.is_none())
        .map(|c| c.file_bytes);
    let files = counted
        .as_ref()
        .filter(|_| args.collector.is_none())
        .map(|c| c.files);

    let secs = elapsed.as_secs_f64();
    let mut lat = stats.latencies;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e3
    };
    let per_m = |cpu: f64| cpu / (stats.events as f64 / 1e6);
    Ok(RunResult {
        run,
        elapsed_s: secs,
        events: stats.events,
        payload_bytes: stats.payload_bytes,
        events_per_s: stats.events as f64 / secs,
        mb_per_s: stats.payload_bytes as f64 / 1e6 / secs,
        ack_p50_ms: pct(0.50),
        ack_p99_ms: pct(0.99),
        ack_max_ms: lat.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
        rss_mib,
        cpu_s_per_m: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some(per_m(b - a)),
            _ => None,
        },
        client_cpu_s_per_m: per_m(client_after - client_before),
        file_bytes,
        files,
        ratio: file_bytes.map(|b| stats.payload_bytes as f64 / b.max(1) as f64),
        try_later: stats.retries,
        records,
        load_avg,
    })
}

/// One connection: sends its share of the calls (every `conns`-th, starting at
/// `conn`) with up to `pipeline` in flight, retrying `TRY_LATER` after a backoff.
async fn drive(
    addr: SocketAddr,
    calls: Arc<Vec<Call>>,
    conn: usize,
    conns: usize,
    pipeline: usize,
    start: Arc<Barrier>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<ConnStats> {
    let connected = TcpStream::connect(addr).await;
    // Wait at the barrier even on failure, so the others are not stuck.
    start.wait().await;
    let stream = connected.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let mine: Vec<usize> = (conn..calls.len()).step_by(conns).collect();
    let mut stats = ConnStats {
        latencies: Vec::with_capacity(mine.len()),
        ..Default::default()
    };
    let mut next = 0;
    // (call, first send) of calls in flight, in send order (replies come in order).
    let mut inflight: VecDeque<(usize, Instant)> = VecDeque::with_capacity(pipeline);
    // (call, first send, when to resend) of calls answered TRY_LATER.
    let mut retry: VecDeque<(usize, Instant, Instant)> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        while inflight.len() < pipeline {
            let now = Instant::now();
            let (call, first) = match retry.front() {
                Some(&(call, first, at)) if at <= now => {
                    retry.pop_front();
                    (call, first)
                }
                // A client that was told to back off does not send new calls.
                Some(_) => break,
                None if next < mine.len() => {
                    next += 1;
                    (mine[next - 1], now)
                }
                None => break,
            };
            tokio::time::timeout_at(deadline, wr.write_all(&calls[call].frame))
                .await
                .context("run timed out (--timeout) while sending")?
                .context("send failed")?;
            inflight.push_back((call, first));
        }
        let Some(&(call, first)) = inflight.front() else {
            match retry.front() {
                Some(&(_, _, at)) => {
                    tokio::time::sleep_until(at.into()).await;
                    continue;
                }
                None => break,
            }
        };
        let frame =
            tokio::time::timeout_at(deadline, read_frame(&mut rd, MAX_REPLY_FRAME, &mut buf))
                .await
                .context("run timed out (--timeout) waiting for a reply")?
                .context("cannot read a reply")?
                .context("the collector closed the connection")?;
        let reply = decode_reply(frame).context("undecodable reply")?;
        inflight.pop_front();
        if reply.seqid != call as i32 {
            bail!("reply for seqid {} while waiting for {call}", reply.seqid);
        }
        match reply.value {
            ReplyValue::ResultCode(ResultCode::Ok) => {
                stats.latencies.push(first.elapsed());
                stats.events += calls[call].events;
                stats.payload_bytes += calls[call].payload_bytes;
            }
            ReplyValue::ResultCode(ResultCode::TryLater) => {
                stats.retries += 1;
                retry.push_back((call, first, Instant::now() + RETRY_BACKOFF));
            }
            other => bail!("unexpected reply to Log: {other:?}"),
        }
    }
    Ok(stats)
}

/// What the files of one root hold.
struct Counted {
    records: u64,
    files: u64,
    file_bytes: u64,
    invalid_files: u64,
}

/// Counts the records in `data/bench/*/*.zst` of a root.
async fn count_records(root: &str) -> anyhow::Result<Counted> {
    let storage: SharedStorage = conduit_core::open_root(root)
        .await
        .with_context(|| format!("cannot open {root} to count records"))?;
    let mut counted = Counted {
        records: 0,
        files: 0,
        file_bytes: 0,
        invalid_files: 0,
    };
    for dir in storage.list_or_empty(&format!("data/{TOPIC}")).await? {
        if !dir.is_dir {
            continue;
        }
        for file in storage.list_or_empty(&dir.path).await? {
            if file.is_dir || !file.name.ends_with(DATA_FILE_SUFFIX) {
                continue;
            }
            let buf = storage.read(&file.path).await?;
            let decoded = decode_file(&file.path, &buf, Encoding::Lines)
                .with_context(|| format!("cannot decode {root}/{}", file.path))?;
            counted.records += decoded.payloads.len() as u64;
            counted.files += 1;
            counted.file_bytes += file.len;
        }
    }
    for dir in storage.list_or_empty("data/_invalid").await? {
        if dir.is_dir {
            counted.invalid_files += storage.list_or_empty(&dir.path).await?.len() as u64;
        }
    }
    Ok(counted)
}

/// utime + stime of a process, in seconds.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn self_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat_cpu(&s))
        .unwrap_or(0.0)
}

fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // Fields after "pid (comm)": state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Peak resident set size (VmHWM) of a process, in MiB.
fn proc_peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "n/a".to_string())
}

fn summary_line(r: &RunResult) -> String {
    format!(
        "run {}: {} events in {:.2} s = {:.0} events/s, {:.1} MB/s; ack p50 {:.1} ms p99 {:.1} ms max {:.1} ms; collector RSS {} MiB, CPU {} s/M events; {} file bytes (ratio {}); TRY_LATER {}; records {} [load {}]",
        r.run,
        r.events,
        r.elapsed_s,
        r.events_per_s,
        r.mb_per_s,
        r.ack_p50_ms,
        r.ack_p99_ms,
        r.ack_max_ms,
        opt(r.rss_mib, 1),
        opt(r.cpu_s_per_m, 2),
        r.file_bytes.map(|b| b.to_string()).unwrap_or_else(|| "n/a".into()),
        opt(r.ratio, 2),
        r.try_later,
        r.records.map(|b| b.to_string()).unwrap_or_else(|| "not counted".into()),
        r.load_avg,
    )
}

fn append_json(path: &PathBuf, args: &IngestArgs, r: &RunResult) -> anyhow::Result<()> {
    let line = serde_json::json!({
        "bench": "ingest",
        "run": r.run,
        "connections": args.connections,
        "events": args.events,
        "batch": args.batch,
        "pipeline": args.pipeline,
        "root": args.root.as_deref().unwrap_or("tmp"),
        "collector": args.collector,
        "collector_args": args.collector_arg,
        "seed": args.seed,
        "elapsed_s": r.elapsed_s,
        "events_acked": r.events,
        "payload_bytes": r.payload_bytes,
        "events_per_s": r.events_per_s,
        "mb_per_s": r.mb_per_s,
        "ack_p50_ms": r.ack_p50_ms,
        "ack_p99_ms": r.ack_p99_ms,
        "ack_max_ms": r.ack_max_ms,
        "collector_peak_rss_mib": r.rss_mib,
        "collector_cpu_s_per_m_events": r.cpu_s_per_m,
        "client_cpu_s_per_m_events": r.client_cpu_s_per_m,
        "file_bytes": r.file_bytes,
        "files": r.files,
        "compression_ratio": r.ratio,
        "try_later": r.try_later,
        "records_in_files": r.records,
        "load_avg": r.load_avg,
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// What one `bench publish` run measured.
struct PublishRun {
    run: u32,
    /// Events published in both phases (and expected in the files).
    events: u64,
    /// Events of the end-to-end phase.
    e2e_events: u64,
    elapsed_s: f64,
    events_per_s: f64,
    mb_per_s: f64,
    call_p50_ns: f64,
    call_p99_ns: f64,
    call_max_ns: f64,
    /// Median per-call time in the end-to-end phase (waits for room included).
    saturated_p50_ns: f64,
    records: u64,
    load_avg: String,
}

async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let gen_started = Instant::now();
    // One buffer, sliced: the payloads cost no allocation while timing.
    let mut generator = EventGenerator::new(args.seed);
    let mut buf = Vec::with_capacity(args.events as usize * 320);
    let mut ends = Vec::with_capacity(args.events as usize);
    for _ in 0..args.events {
        generator.next_into(&mut buf);
        ends.push(buf.len());
    }
    let buf = bytes::Bytes::from(buf);
    let mut start = 0;
    let payloads: Arc<Vec<bytes::Bytes>> = Arc::new(
        ends.iter()
            .map(|&end| {
                let p = buf.slice(start..end);
                start = end;
                p
            })
            .collect(),
    );
    eprintln!(
        "generated {} events ({} payload bytes, mean {:.1} bytes) in {:.1} s",
        args.events,
        buf.len(),
        buf.len() as f64 / args.events as f64,
        gen_started.elapsed().as_secs_f64()
    );
    let mut results = Vec::new();
    for run in 1..=args.runs {
        match publish_run(&args, run, payloads.clone(), buf.len() as u64).await {
            Ok(r) => {
                eprintln!(
                    "run {}: end to end {} events in {:.2} s = {:.0} events/s ({:.1} MB/s), saturated publish() p50 {:.0} ns; with room in the queue publish() per call p50 {:.0} ns, p99 {:.0} ns, max {:.0} ns; {} records in the files (of {}); load {}",
                    r.run, r.e2e_events, r.elapsed_s, r.events_per_s, r.mb_per_s, r.saturated_p50_ns,
                    r.call_p50_ns, r.call_p99_ns, r.call_max_ns, r.records, r.events, r.load_avg
                );
                let mismatch = r.records != r.events;
                results.push(r);
                if mismatch {
                    let r = results.last().expect("just pushed");
                    eprintln!(
                        "\n!!!!!!!!!! BENCHMARK FAILED: run {} published {} events (all acknowledged) but the files hold {} records\n",
                        r.run, r.events, r.records
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
            Err(e) => {
                eprintln!("\n!!!!!!!!!! BENCHMARK RUN {run} FAILED: {e:#}\n");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let med = |f: fn(&PublishRun) -> f64| {
        let v: Vec<f64> = results.iter().map(f).collect();
        stats_of(&v).expect("at least one run")
    };
    println!(
        "conduit bench publish: {} events x {} runs (each phase), {} calls timed together, {} connection(s); room = queue kept under a quarter full, e2e = publish all then flush",
        args.events, args.runs, args.timed_calls, args.connections
    );
    println!("{:<28} {:>14} {:>24}", "metric", "median", "min–max");
    type Getter = fn(&PublishRun) -> f64;
    let rows: [(&str, Getter, usize); 6] = [
        ("e2e: events/s", |r| r.events_per_s, 0),
        ("e2e: payload MB/s", |r| r.mb_per_s, 1),
        ("room: publish() p50 ns", |r| r.call_p50_ns, 0),
        ("room: publish() p99 ns", |r| r.call_p99_ns, 0),
        ("room: publish() max ns", |r| r.call_max_ns, 0),
        ("e2e: publish() p50 ns", |r| r.saturated_p50_ns, 0),
    ];
    for (name, f, d) in rows {
        let (m, lo, hi) = med(f);
        println!("{name:<28} {m:>14.d$} {:>24}", format!("{lo:.d$}–{hi:.d$}"),);
    }
    Ok(ExitCode::SUCCESS)
}

async fn publish_run(
    args: &PublishArgs,
    run: u32,
    payloads: Arc<Vec<bytes::Bytes>>,
    payload_bytes: u64,
) -> anyhow::Result<PublishRun> {
    let load_avg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "conduit-bench-publish-{}-{run}",
        std::process::id()
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let root = dir.display().to_string();
    let result = async {
        let (mut child, pid, addr) =
            spawn_collector(&args.collector_log_level, &args.collector_arg, &root).await?;
        let publisher = conduit_publisher::Publisher::builder()
            .collectors([addr.to_string()])
            .queue_capacity(QUEUE_CAPACITY as usize)
            .connections(args.connections as usize)
            .build()
            .await?;
        let timed = args.timed_calls as usize;
        let deadline = Duration::from_secs(args.timeout);
        let measured = tokio::time::timeout(deadline, async {
            // (a) The caller's cost with room in the queue: after each timed group
            // of calls, wait (untimed) while the queue is more than a quarter full,
            // so `publish` never waits for room; the background task keeps
            // draining to the collector meanwhile.
            let mut per_call_ns = Vec::with_capacity(payloads.len() / timed + 1);
            for chunk in payloads.chunks(timed) {
                let t = Instant::now();
                for p in chunk {
                    publisher.publish(TOPIC, p.clone()).await?;
                }
                per_call_ns.push(t.elapsed().as_nanos() as f64 / chunk.len() as f64);
                while publisher.stats().queue_depth > QUEUE_CAPACITY / 4 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            publisher.flush().await?;
            // (b) End to end: every event as fast as the pipeline takes it
            // (`publish` waits for room when the queue is full), then flush.
            let mut saturated_ns = Vec::with_capacity(payloads.len() / timed + 1);
            let started = Instant::now();
            for chunk in payloads.chunks(timed) {
                let t = Instant::now();
                for p in chunk {
                    publisher.publish(TOPIC, p.clone()).await?;
                }
                saturated_ns.push(t.elapsed().as_nanos() as f64 / chunk.len() as f64);
            }
            publisher.flush().await?;
            let elapsed = started.elapsed();
            Ok::<_, anyhow::Error>((per_call_ns, saturated_ns, elapsed))
        })
        .await
        .context("the run timed out")??;
        let (mut per_call_ns, mut saturated_ns, elapsed) = measured;
        let stats = publisher.stats();
        tokio::time::timeout(Duration::from_secs(60), publisher.close())
            .await
            .context("close timed out")??;
        if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .context("cannot send SIGTERM to the collector")?;
        }
        let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
            .await
            .context("the collector did not stop within 300 s of SIGTERM")??;
        if !status.success() {
            bail!("the collector exited with {status} after SIGTERM");
        }
        let events = 2 * payloads.len() as u64;
        if stats.acknowledged != events {
            bail!(
                "{} events acknowledged of {events} published",
                stats.acknowledged,
            );
        }
        let records = count_records(&root).await?.records;
        per_call_ns.sort_by(|a, b| a.total_cmp(b));
        saturated_ns.sort_by(|a, b| a.total_cmp(b));
        let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        let pct = |q: f64| at(&per_call_ns, q);
        let secs = elapsed.as_secs_f64();
        Ok(PublishRun {
            run,
            events,
            elapsed_s: secs,
            events_per_s: payloads.len() as f64 / secs,
            e2e_events: payloads.len() as u64,
            mb_per_s: payload_bytes as f64 / secs / 1e6,
            call_p50_ns: pct(0.5),
            call_p99_ns: pct(0.99),
            call_max_ns: pct(1.0),
            saturated_p50_ns: at(&saturated_ns, 0.5),
            records,
            load_avg,
        })
    }
    .await;
    let keep = !matches!(&result, Ok(r) if r.records == r.events);
    remove_run_data(Cleanup::LocalDir(dir), keep).await;
    result
}

/// Median, min and max of some values.
fn stats_of(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

fn print_table(args: &IngestArgs, results: &[RunResult]) {
    type Getter = fn(&RunResult) -> Option<f64>;
    let rows: [(&str, usize, Getter); 12] = [
        ("events/s", 0, |r| Some(r.events_per_s)),
        ("MB/s (payload)", 1, |r| Some(r.mb_per_s)),
        ("ack p50 ms", 1, |r| Some(r.ack_p50_ms)),
        ("ack p99 ms", 1, |r| Some(r.ack_p99_ms)),
        ("ack max ms", 1, |r| Some(r.ack_max_ms)),
        ("collector peak RSS MiB", 1, |r| r.rss_mib),
        ("collector CPU s/M events", 2, |r| r.cpu_s_per_m),
        ("bench client CPU s/M events", 2, |r| {
            Some(r.client_cpu_s_per_m)
        }),
        ("file MB", 1, |r| r.file_bytes.map(|b| b as f64 / 1e6)),
        ("compression ratio", 2, |r| r.ratio),
        ("TRY_LATER", 0, |r| Some(r.try_later as f64)),
        ("elapsed s", 2, |r| Some(r.elapsed_s)),
    ];
    println!(
        "\nconduit bench ingest: {} events, {} connections, batch {}, pipeline {}, root {}, {} run(s)",
        args.events,
        args.connections,
        args.batch,
        args.pipeline,
        match (&args.collector, &args.root) {
            (Some(c), _) => format!("external collector {c}"),
            (None, Some(r)) => r.clone(),
            (None, None) => "temporary directory".to_string(),
        },
        results.len()
    );
    let mut header = format!("{:<28}", "metric");
    for r in results {
        header.push_str(&format!(" {:>12}", format!("run {}", r.run)));
    }
    header.push_str(&format!(" {:>12} {:>25}", "median", "(min–max)"));
    println!("{header}");
    for (name, digits, get) in rows {
        let values: Vec<Option<f64>> = results.iter().map(get).collect();
        let mut line = format!("{name:<28}");
        for v in &values {
            line.push_str(&format!(" {:>12}", opt(*v, digits)));
        }
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        match stats_of(&present) {
            Some((median, min, max)) => line.push_str(&format!(
                " {:>12} {:>25}",
                format!("{median:.digits$}"),
                format!("({min:.digits$}–{max:.digits$})")
            )),
            None => line.push_str(&format!(" {:>12} {:>25}", "n/a", "")),
        }
        println!("{line}");
    }
    let verified: Vec<String> = results
        .iter()
        .map(|r| match r.records {
            Some(n) if n == r.events => format!("run {}: {n} records = events sent", r.run),
            Some(n) => format!("run {}: {n} records != {} events sent", r.run, r.events),
            None => format!("run {}: not verified", r.run),
        })
        .collect();
    println!("verification: {}", verified.join("; "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_parses_after_the_command_name() {
        let stat = "1234 (conduit (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(parse_stat_cpu(stat), Some(300.0 / ticks));
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(stats_of(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats_of(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats_of(&[]), None);
    }

    #[test]
    fn calls_hold_every_event() {
        let calls = generate_calls(2_500, 1000, 1);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls.iter().map(|c| c.events).sum::<u64>(), 2_500);
        assert_eq!(calls[2].events, 500);
    }
}
