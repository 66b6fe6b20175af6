//! `conduit-bench publish`: the `conduit-publisher` library as the client of a
//! spawned `conduit collector`: the cost of `publish` on the caller's thread, and
//! end-to-end throughput with acks (every event verified in the files).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;

use crate::children::{Conduit, Proc};
use crate::measure::median_min_max;
use crate::pacer::payload_pool;
use crate::procfs;
use crate::records;
use crate::rundir::fresh_temp_dir;
use crate::TOPIC;

/// Queue capacity of the benchmarked publisher (its default).
const QUEUE_CAPACITY: u64 = 100_000;

/// Arguments of `conduit-bench publish`.
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

/// What one `publish` run measured.
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

/// Runs `conduit-bench publish`.
pub async fn run(args: PublishArgs, conduit: &Conduit) -> anyhow::Result<ExitCode> {
    let gen_started = Instant::now();
    let payloads = payload_pool(args.events as usize, args.seed);
    let payload_bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    eprintln!(
        "generated {} events ({} payload bytes, mean {:.1} bytes) in {:.1} s",
        args.events,
        payload_bytes,
        payload_bytes as f64 / args.events as f64,
        gen_started.elapsed().as_secs_f64()
    );
    let mut results = Vec::new();
    for run in 1..=args.runs {
        match publish_run(&args, conduit, run, payloads.clone(), payload_bytes).await {
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
        median_min_max(&v).expect("at least one run")
    };
    println!(
        "conduit-bench publish: {} events x {} runs (each phase), {} calls timed together, {} connection(s); room = queue kept under a quarter full, e2e = publish all then flush",
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
    conduit: &Conduit,
    run: u32,
    payloads: Arc<Vec<Bytes>>,
    payload_bytes: u64,
) -> anyhow::Result<PublishRun> {
    let load_avg = procfs::load_avg();
    let dir: PathBuf = fresh_temp_dir(&format!(
        "conduit-bench-publish-{}-{run}",
        std::process::id()
    ))?;
    let root = dir.display().to_string();
    let result = async {
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
        let collector = Proc::spawn(
            conduit,
            "collector",
            &args.collector_log_level,
            &collector_args,
            None,
            "collector ready: scribe ",
        )
        .await
        .with_context(|| format!("root {root}"))?;
        let publisher = conduit_publisher::Publisher::builder()
            .collectors([collector.addr.to_string()])
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
        collector.stop(Duration::from_secs(300)).await?;
        let events = 2 * payloads.len() as u64;
        if stats.acknowledged != events {
            bail!(
                "{} events acknowledged of {events} published",
                stats.acknowledged,
            );
        }
        let records = records::collected(&root).await?.records;
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
    if keep {
        eprintln!("kept {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: cannot remove {}: {e}", dir.display());
    }
    result
}
