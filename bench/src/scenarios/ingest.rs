//! `conduit-bench ingest`: a collector's ingest over Scribe.
//!
//! Starts `conduit collector` as a child process (so its peak RSS and CPU time
//! can be read from `/proc`), sends pre-generated events over Scribe `Log` calls
//! from one task per connection, records the ack latency of each call, then stops
//! the collector with SIGTERM and counts the records in the files it wrote: a run
//! whose count differs from the events sent fails the benchmark.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use clap::Args;
use conduit_core::scribe::{decode_reply, encode_log_call, read_frame, ReplyValue, ResultCode};
use conduit_core::tls::{ClientTls, TlsClient};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use crate::children::{Conduit, Proc};
use crate::events::EventGenerator;
use crate::measure::{append_json_line, median_min_max, nearest_rank, nproc};
use crate::procfs::{self, Process};
use crate::records::{self, Collected};
use crate::rundir::{fresh_temp_dir, remove_storage_dir};
use crate::TOPIC;

/// Pause before a call answered `TRY_LATER` is sent again.
const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Largest reply frame accepted (replies are a few dozen bytes).
const MAX_REPLY_FRAME: usize = 1 << 20;

/// Arguments of `conduit-bench ingest`.
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

    /// Seed of the event generator (`conduit-bench gen` with the same seed writes
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

    /// Connect over TLS, trusting this PEM CA bundle (start the collector with
    /// `--collector-arg=--tls-cert=FILE --collector-arg=--tls-key=FILE`, and
    /// `--tls-client-ca` to require client certificates).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// PEM client certificate to present over TLS (with --tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,

    /// PEM key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Where a connection goes: the collector's address, over TLS or not.
#[derive(Debug, Clone)]
struct Dial {
    addr: SocketAddr,
    tls: Option<TlsClient>,
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

/// Runs `conduit-bench ingest`.
pub async fn run(args: IngestArgs, conduit: &Conduit) -> anyhow::Result<ExitCode> {
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
        match one_run(&args, conduit, run, calls.clone()).await {
            Ok(r) => {
                eprintln!("{}", summary_line(&r));
                if let Some(path) = &args.json {
                    append_json_line(path, &run_json(&args, &r))?;
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
    /// The spawned collector (none with --collector; taken once stopped).
    collector: Option<Proc>,
    /// Its pid, for `/proc` samples (none with --collector).
    pid: Option<u32>,
    /// Root the records are counted in, if any.
    root: Option<String>,
    /// What to delete afterwards.
    cleanup: Cleanup,
}

/// A run's data, deleted after a successful run.
enum Cleanup {
    None,
    LocalDir(PathBuf),
    /// `path` under the storage root `parent`.
    Storage {
        parent: String,
        path: String,
    },
}

async fn start_target(args: &IngestArgs, conduit: &Conduit, run: u32) -> anyhow::Result<Target> {
    if let Some(addr) = &args.collector {
        let addr = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("cannot resolve --collector {addr}"))?
            .next()
            .with_context(|| format!("--collector {addr} resolves to nothing"))?;
        return Ok(Target {
            addr,
            collector: None,
            pid: None,
            root: args.root.clone(),
            cleanup: Cleanup::None,
        });
    }
    let sub = format!("bench-{}-{run}", std::process::id());
    let (root, cleanup) = match &args.root {
        None => {
            let dir = fresh_temp_dir(&format!("conduit-{sub}"))?;
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
    let collector_args: Vec<String> = [
        "collector",
        "--root",
        &root,
        "--id",
        "bench",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(args.collector_arg.iter().cloned())
    .collect();
    let spawned = Proc::spawn(
        conduit,
        "collector",
        &args.collector_log_level,
        &collector_args,
        None,
        "collector ready: scribe ",
    )
    .await
    .with_context(|| format!("root {root}"));
    match spawned {
        Ok(collector) => Ok(Target {
            addr: collector.addr,
            pid: Some(collector.pid),
            collector: Some(collector),
            root: Some(root),
            cleanup,
        }),
        Err(e) => {
            remove_run_data(cleanup, false).await;
            Err(e)
        }
    }
}

/// One run: start the collector, measure, stop it, count, clean up. The data of a
/// failed run is kept for inspection.
async fn one_run(
    args: &IngestArgs,
    conduit: &Conduit,
    run: u32,
    calls: Arc<Vec<Call>>,
) -> anyhow::Result<RunResult> {
    let load_avg = procfs::load_avg();
    let mut target = start_target(args, conduit, run).await?;
    let result = measure(args, run, calls, &mut target, load_avg).await;
    let failed = match &result {
        Ok(r) => r.records.is_some_and(|n| n != r.events),
        Err(_) => true,
    };
    if let Some(collector) = target.collector.take() {
        // Still running only if the run failed before stopping it.
        collector.kill().await;
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
        Cleanup::Storage { parent, path } => remove_storage_dir(&parent, &path).await,
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
        (Some(_), Some(root)) => Some(records::collected(root).await?.records),
        _ => None,
    };

    let tls = match &args.tls_ca {
        Some(ca) => Some(TlsClient::new(ClientTls {
            ca: ca.clone(),
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            server_name: None,
        })?),
        None => None,
    };
    let conns = args.connections as usize;
    let start = Arc::new(Barrier::new(conns + 1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut tasks = Vec::with_capacity(conns);
    for conn in 0..conns {
        let calls = calls.clone();
        let start = start.clone();
        let dial = Dial {
            addr: target.addr,
            tls: tls.clone(),
        };
        let pipeline = args.pipeline as usize;
        tasks.push(tokio::spawn(async move {
            drive(dial, calls, conn, conns, pipeline, start, deadline).await
        }));
    }
    let collector = target.pid.map(Process::Pid);
    let cpu_before = collector.and_then(procfs::cpu_seconds);
    let client_before = procfs::cpu_seconds(Process::Own).unwrap_or(0.0);
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
    let cpu_after = collector.and_then(procfs::cpu_seconds);
    let client_after = procfs::cpu_seconds(Process::Own).unwrap_or(0.0);
    let rss_mib = collector.and_then(procfs::peak_rss_mib);
    if let Some(e) = first_error {
        return Err(e.context("a connection failed"));
    }

    // Stop the collector: SIGTERM, then it closes every file with its trailer.
    if let Some(collector) = target.collector.take() {
        collector.stop(Duration::from_secs(300)).await?;
    }

    let counted: Option<Collected> = match &target.root {
        Some(root) => Some(records::collected(root).await?),
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
    let pct = |p: f64| nearest_rank(&lat, p).map_or(0.0, |d| d.as_secs_f64() * 1e3);
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
    dial: Dial,
    calls: Arc<Vec<Call>>,
    conn: usize,
    conns: usize,
    pipeline: usize,
    start: Arc<Barrier>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<ConnStats> {
    let addr = dial.addr;
    let connected = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        match &dial.tls {
            // The handshake is done before the clock starts.
            Some(tls) => Ok(Err(tls.connect(&addr.to_string(), stream).await?)),
            None => Ok::<_, std::io::Error>(Ok(stream)),
        }
    }
    .await;
    // Wait at the barrier even on failure, so the others are not stuck.
    start.wait().await;
    let mine: Vec<usize> = (conn..calls.len()).step_by(conns).collect();
    match connected.with_context(|| format!("cannot connect to {addr}"))? {
        Ok(plain) => {
            let (rd, wr) = plain.into_split();
            send_calls(rd, wr, &calls, &mine, pipeline, deadline).await
        }
        Err(tls) => {
            let (rd, wr) = tokio::io::split(tls);
            send_calls(rd, wr, &calls, &mine, pipeline, deadline).await
        }
    }
}

/// Sends the calls `mine` on one connection (plain or TLS halves).
async fn send_calls<R, W>(
    mut rd: R,
    mut wr: W,
    calls: &[Call],
    mine: &[usize],
    pipeline: usize,
    deadline: tokio::time::Instant,
) -> anyhow::Result<ConnStats>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;

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

fn run_json(args: &IngestArgs, r: &RunResult) -> serde_json::Value {
    serde_json::json!({
        "bench": "ingest",
        "run": r.run,
        "connections": args.connections,
        "events": args.events,
        "batch": args.batch,
        "pipeline": args.pipeline,
        "root": args.root.as_deref().unwrap_or("tmp"),
        "collector": args.collector,
        "collector_args": args.collector_arg,
        "tls": args.tls_ca.is_some(),
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
        "nproc": nproc(),
    })
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
        "\nconduit-bench ingest: {} events, {} connections, batch {}, pipeline {}, root {}, {} run(s)",
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
        match median_min_max(&present) {
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
    fn calls_hold_every_event() {
        let calls = generate_calls(2_500, 1000, 1);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls.iter().map(|c| c.events).sum::<u64>(), 2_500);
        assert_eq!(calls[2].events, 500);
    }
}
