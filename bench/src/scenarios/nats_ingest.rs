//! `conduit-bench nats-ingest`: conduit ingest and NATS JetStream (file store,
//! acked publishes) side by side, fed the same events, interleaved run by run.
//!
//! Each round runs, in this order:
//!
//! 1. **conduit**: `conduit-bench ingest --runs 1` as a child process (a fresh
//!    collector; events acknowledged only after fsync; the records in its files
//!    are counted), with the same `--events`, `--connections` and seed; its JSON
//!    line gives events/s and ack latency.
//! 2. **NATS JetStream**: a private `nats-server` started by
//!    `scripts/peers/nats.sh serve` (which installs the Debian package if missing)
//!    with JetStream on a fresh file store, and a stream `BENCH` (subjects
//!    `bench.>`, file storage, one replica). The client is written here against
//!    the NATS text protocol (no client library): per connection one task that
//!    writes `PUB bench.e <reply> <len>` for every event, each with its own reply
//!    subject, keeping at most `--window` publishes without an ack in flight
//!    (1000 by default, as many events as one conduit call of 1000), and reads the
//!    JetStream acks (`{"stream":"BENCH","seq":N}`) from its inbox subscription.
//!    Timed from the moment every connection is ready to the last ack. Afterwards
//!    the stream's message count (`$JS.API.STREAM.INFO.BENCH`) must equal the
//!    events sent.
//!
//! **Durability differs.** conduit acknowledges after `fdatasync`. JetStream acks
//! once the message is written to its file store, and (per the NATS docs) syncs
//! to disk periodically (every 2 minutes by default); the `sync_interval: always`
//! setting exists only from nats-server 2.10, so with Debian's 2.9 the NATS
//! numbers are *not* fsync-per-ack. `nats.sh serve --sync always` tries it and
//! fails on 2.9.
//!
//! The table: median (min–max) events/s, ack p50/p99, server CPU per million
//! events and peak RSS for both, and the ratio of medians. `--json FILE` appends
//! one line per NATS run (default `bench/results/nats-ingest.jsonl`); conduit's
//! runs are appended by `ingest` to the same file.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::Utc;
use clap::Args;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Barrier, Semaphore};

use crate::children::Conduit;
use crate::measure::{append_json_line, median_min_max, nearest_rank, nproc};
use crate::pacer::payload_pool;
use crate::peers::nats::{self, start_nats, Control, NatsServer, Op};
use crate::procfs::{self, load_avg, Process};
use crate::rundir::fresh_temp_dir;

/// Arguments of `conduit-bench nats-ingest`.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// Events per run.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,

    /// Client connections (for both).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    connections: u32,

    /// NATS publishes in flight per connection (unacknowledged).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    window: u32,

    /// Rounds (each runs conduit once and NATS once).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,

    /// Skip the conduit runs (NATS only).
    #[arg(long)]
    no_conduit: bool,

    /// The peer script that installs and runs nats-server.
    #[arg(long, default_value = "scripts/peers/nats.sh", value_name = "PATH")]
    peer_script: PathBuf,

    /// Append one JSON line per run to FILE.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/results/nats-ingest.jsonl"
    )]
    json: PathBuf,

    /// Seed of the event generator (the same events as `ingest --seed`).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
}

/// One run of either side.
#[derive(Debug, Clone, Default)]
struct Sample {
    events_per_s: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    cpu_s_per_m: Option<f64>,
    rss_mib: Option<f64>,
    load: String,
}

/// Runs `conduit-bench nats-ingest`.
pub async fn run(args: NatsArgs, conduit_exe: &Conduit) -> anyhow::Result<ExitCode> {
    if !args.peer_script.exists() {
        bail!(
            "{} not found: run from the repository root or pass --peer-script",
            args.peer_script.display()
        );
    }
    let started = Instant::now();
    let payloads = payload_pool(args.events as usize, args.seed);
    eprintln!(
        "generated {} events in {:.1} s",
        payloads.len(),
        started.elapsed().as_secs_f64()
    );
    let mut conduit = Vec::new();
    let mut nats = Vec::new();
    for round in 1..=args.runs {
        if !args.no_conduit {
            match conduit_run(&args, conduit_exe).await {
                Ok(s) => {
                    eprintln!(
                        "round {round}: conduit {:.0} events/s, ack p50 {:.1} ms p99 {:.1} ms [load {}]",
                        s.events_per_s, s.ack_p50_ms, s.ack_p99_ms, s.load
                    );
                    conduit.push(s);
                }
                Err(e) => {
                    eprintln!("\n!!!!!!!!!! conduit run {round} FAILED: {e:#}\n");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        match nats_run(&args, round, payloads.clone()).await {
            Ok(s) => {
                eprintln!(
                    "round {round}: NATS JetStream {:.0} events/s, ack p50 {:.1} ms p99 {:.1} ms, server CPU {} s/M, RSS {} MiB [load {}]",
                    s.events_per_s,
                    s.ack_p50_ms,
                    s.ack_p99_ms,
                    s.cpu_s_per_m.map_or("n/a".into(), |v| format!("{v:.2}")),
                    s.rss_mib.map_or("n/a".into(), |v| format!("{v:.1}")),
                    s.load
                );
                nats.push(s);
            }
            Err(e) => {
                eprintln!("\n!!!!!!!!!! NATS run {round} FAILED: {e:#}\n");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    println!(
        "\nconduit-bench nats-ingest: {} events, {} connections, NATS window {} per connection, {} round(s), interleaved",
        args.events, args.connections, args.window, args.runs
    );
    println!(
        "{:<30} {:>26} {:>30}",
        "metric", "conduit (fsync per ack)", "NATS JetStream (no fsync)"
    );
    type Get = fn(&Sample) -> Option<f64>;
    let rows: [(&str, Get, usize); 5] = [
        ("events/s", |s| Some(s.events_per_s), 0),
        ("ack p50 ms", |s| Some(s.ack_p50_ms), 1),
        ("ack p99 ms", |s| Some(s.ack_p99_ms), 1),
        ("server CPU s/M events", |s| s.cpu_s_per_m, 2),
        ("server peak RSS MiB", |s| s.rss_mib, 1),
    ];
    let cell = |v: &[Sample], get: Get, d: usize| {
        let vals: Vec<f64> = v.iter().filter_map(get).collect();
        match median_min_max(&vals) {
            Some((m, lo, hi)) => format!("{m:.d$} ({lo:.d$}–{hi:.d$})"),
            None => "n/a".to_owned(),
        }
    };
    for (name, get, d) in rows {
        println!(
            "{name:<30} {:>26} {:>30}",
            cell(&conduit, get, d),
            cell(&nats, get, d)
        );
    }
    let med = |v: &[Sample]| {
        median_min_max(&v.iter().map(|s| s.events_per_s).collect::<Vec<_>>()).map(|m| m.0)
    };
    if let (Some(c), Some(n)) = (med(&conduit), med(&nats)) {
        println!("ratio of medians conduit / NATS JetStream: {:.2}x", c / n);
    }
    Ok(ExitCode::SUCCESS)
}

/// One `conduit-bench ingest --runs 1` (this executable) with the same events.
async fn conduit_run(args: &NatsArgs, conduit: &Conduit) -> anyhow::Result<Sample> {
    let json = std::env::temp_dir().join(format!(
        "conduit-bench-nats-conduit-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&json);
    let load = load_avg();
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let status = tokio::process::Command::new(me)
        .arg("--conduit")
        .arg(conduit.path())
        .args(["ingest", "--runs", "1"])
        .arg("--events")
        .arg(args.events.to_string())
        .arg("--connections")
        .arg(args.connections.to_string())
        .arg("--seed")
        .arg(args.seed.to_string())
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("conduit-bench ingest failed ({status})");
    }
    let text = std::fs::read_to_string(&json)?;
    let _ = std::fs::remove_file(&json);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().context("no result")?)?;
    append_json_line(&args.json, &v)?;
    if v["records_in_files"] != v["events_acked"] {
        bail!(
            "conduit stored {} of {} events",
            v["records_in_files"],
            v["events_acked"]
        );
    }
    Ok(Sample {
        events_per_s: v["events_per_s"].as_f64().context("events_per_s")?,
        ack_p50_ms: v["ack_p50_ms"].as_f64().unwrap_or(0.0),
        ack_p99_ms: v["ack_p99_ms"].as_f64().unwrap_or(0.0),
        cpu_s_per_m: v["collector_cpu_s_per_m_events"].as_f64(),
        rss_mib: v["collector_peak_rss_mib"].as_f64(),
        load,
    })
}

async fn nats_run(
    args: &NatsArgs,
    round: u32,
    payloads: Arc<Vec<Bytes>>,
) -> anyhow::Result<Sample> {
    let dir = fresh_temp_dir(&format!(
        "conduit-bench-nats-{}-{round}",
        std::process::id()
    ))?;
    let server = start_nats(&args.peer_script, &dir).await?;
    let result = nats_measure(args, &server, payloads).await;
    server.stop().await;
    match &result {
        Ok((s, bytes)) => {
            append_json_line(
                &args.json,
                &serde_json::json!({
                    "bench": "nats-jetstream",
                    "run": round,
                    "at": Utc::now().to_rfc3339(),
                    "events": args.events,
                    "connections": args.connections,
                    "window": args.window,
                    "events_per_s": s.events_per_s,
                    "ack_p50_ms": s.ack_p50_ms,
                    "ack_p99_ms": s.ack_p99_ms,
                    "server_cpu_s_per_m_events": s.cpu_s_per_m,
                    "server_peak_rss_mib": s.rss_mib,
                    "store_bytes": bytes,
                    "load_avg": s.load,
                    "nproc": nproc(),
                }),
            )?;
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("kept {}", dir.display()),
    }
    result.map(|(s, _)| s)
}

async fn nats_measure(
    args: &NatsArgs,
    server: &NatsServer,
    payloads: Arc<Vec<Bytes>>,
) -> anyhow::Result<(Sample, u64)> {
    let load = load_avg();
    let mut ctl = Control::open(server.port).await?;
    let v = ctl
        .request(
            "$JS.API.STREAM.CREATE.BENCH",
            br#"{"name":"BENCH","subjects":["bench.>"],"storage":"file","retention":"limits","discard":"old","num_replicas":1,"max_msgs":-1,"max_bytes":-1}"#,
        )
        .await?;
    if v.get("error").is_some() {
        bail!("cannot create the stream: {v}");
    }

    let conns = args.connections as usize;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut tasks = Vec::new();
    let progress = Arc::new(AtomicU64::new(0));
    for c in 0..conns {
        let (payloads, barrier, progress) = (payloads.clone(), barrier.clone(), progress.clone());
        let (port, window) = (server.port, args.window as usize);
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout_at(
                deadline,
                publish_conn(port, c, conns, window, payloads, barrier, progress),
            )
            .await
            .context("the run timed out")?
        }));
    }
    // The script execs nats-server, so its pid is the server's.
    let server_process = Process::Pid(server.pid);
    let cpu_before = procfs::cpu_seconds(server_process);
    barrier.wait().await;
    let t0 = Instant::now();
    let mut latencies = Vec::with_capacity(payloads.len());
    let mut acked = 0u64;
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok((n, lat))) => {
                acked += n;
                latencies.extend(lat);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(e.into());
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_after = procfs::cpu_seconds(server_process);
    if let Some(e) = first_err {
        return Err(e.context(format!(
            "{} of {} publishes acknowledged",
            progress.load(Ordering::Relaxed),
            payloads.len()
        )));
    }
    let v = ctl.request("$JS.API.STREAM.INFO.BENCH", b"").await?;
    let stored = v["state"]["messages"].as_u64().unwrap_or(0);
    if stored != payloads.len() as u64 || acked != stored {
        bail!(
            "NATS acked {acked} and the stream holds {stored} messages of {} sent",
            payloads.len()
        );
    }
    let store_bytes = v["state"]["bytes"].as_u64().unwrap_or(0);
    latencies.sort_unstable();
    let pct = |p: f64| nearest_rank(&latencies, p).map_or(0.0, |ns| ns as f64 / 1e6);
    Ok((
        Sample {
            events_per_s: acked as f64 / secs,
            ack_p50_ms: pct(0.5),
            ack_p99_ms: pct(0.99),
            cpu_s_per_m: match (cpu_before, cpu_after) {
                (Some(a), Some(b)) => Some((b - a) / (acked as f64 / 1e6)),
                _ => None,
            },
            rss_mib: procfs::peak_rss_mib(server_process),
            load,
        },
        store_bytes,
    ))
}

/// One connection: publishes events `c, c + conns, ...` with at most `window`
/// unacknowledged; returns (acks, ack latencies in ns).
async fn publish_conn(
    port: u16,
    c: usize,
    conns: usize,
    window: usize,
    payloads: Arc<Vec<Bytes>>,
    barrier: Arc<Barrier>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let opened = nats::connect(port, false).await;
    barrier.wait().await;
    // The writer is shared with the reader, which answers the server's PINGs.
    let (mut rs, wr) = opened?;
    let inbox = format!("_INBOX.p{c}");
    wr.lock()
        .await
        .write_all(format!("SUB {inbox}.* 1\r\n").as_bytes())
        .await?;
    let mine: Vec<usize> = (c..payloads.len()).step_by(conns).collect();
    let t0 = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..mine.len()).map(|_| AtomicU64::new(0)).collect());
    let permits = Arc::new(Semaphore::new(window));
    let total = mine.len();

    // Reader: acks in, permits back.
    let (p2, s2, inbox2, w2) = (permits.clone(), sent_at.clone(), inbox.clone(), wr.clone());
    let reader = tokio::spawn(async move {
        // When it ends (an error included), close the window so the writer never
        // waits for permits that will not come.
        let _closer = CloseOnDrop(p2.clone());
        let mut latencies = Vec::with_capacity(total);
        let prefix = format!("{inbox2}.");
        while latencies.len() < total {
            match rs.op().await? {
                Op::Msg {
                    subject,
                    body: payload,
                    ..
                } => {
                    let Some(idx) = subject.strip_prefix(prefix.as_bytes()) else {
                        continue;
                    };
                    let i: usize = std::str::from_utf8(idx)?.parse()?;
                    if payload.windows(7).any(|w| w == b"\"error\"") {
                        bail!("publish {i} failed: {}", String::from_utf8_lossy(&payload));
                    }
                    let now = t0.elapsed().as_nanos() as u64;
                    latencies.push(now.saturating_sub(s2[i].load(Ordering::Relaxed)));
                    p2.add_permits(1);
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                Op::Ping => {
                    let mut w = w2.lock().await;
                    w.write_all(b"PONG\r\n").await?;
                    w.flush().await?;
                }
                Op::Pong | Op::Other => {}
            }
        }
        Ok::<_, anyhow::Error>(latencies)
    });

    // Writer: under the lock, as many publishes as the window allows, then flush,
    // release the lock and wait for a permit.
    let mut header = Vec::with_capacity(96);
    let mut next = 0;
    'outer: while next < mine.len() {
        match permits.acquire().await {
            Ok(p) => p.forget(),
            // The reader ended early: its error is the one to report.
            Err(_) => break,
        }
        let mut w = wr.lock().await;
        let mut have_permit = true;
        while have_permit {
            let payload = &payloads[mine[next]];
            header.clear();
            header.extend_from_slice(
                format!("PUB bench.e {inbox}.{next} {}\r\n", payload.len()).as_bytes(),
            );
            sent_at[next].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            w.write_all(&header).await?;
            w.write_all(payload).await?;
            w.write_all(b"\r\n").await?;
            next += 1;
            if next == mine.len() {
                w.flush().await?;
                break 'outer;
            }
            have_permit = match permits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    true
                }
                Err(_) => false,
            };
        }
        w.flush().await?;
    }
    let latencies = reader.await.context("the reader panicked")??;
    Ok((latencies.len() as u64, latencies))
}

/// Closes the window semaphore when dropped (the reader task ended early).
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}
