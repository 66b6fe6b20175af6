//! `conduit-bench seal-latency`: how long after a minute ends its `_SUCCESS`
//! appears in the local, merged and mirror views, with the real processes.
//!
//! Each run builds a two-datacenter bus in a temporary directory: clusters `dc1`
//! and `dc2` (two local roots; with `--backend hdfs`, `dc1` is a fresh directory on
//! HDFS), every topic merged into `dc1` from both and mirrored to `dc2` (the layout
//! of `conduit up`). It starts one `conduit collector` and one `conduit worker` per
//! cluster as child processes (default worker settings: a pass
//! every 500 ms), and publishes the benchmark's events (`EventGenerator`) with the
//! `conduit-publisher` library at a steady `--rate`, half to each collector, across
//! `--minutes` minute boundaries.
//!
//! For every minute whose end falls inside the run it polls, every `--poll-ms`,
//! the minute's `_SUCCESS` in four places: the local view of `dc1` and of `dc2`
//! (`streams_local/`), the merged view on `dc1` and the mirror on `dc2`
//! (`streams/`). *Seen* is the first poll that finds the marker minus the minute's
//! end (wall clock), so it overstates by up to one poll interval; *sealed_at* is
//! the manifest's own `sealed_at` minus the minute's end (the worker's clock; same
//! host; not for the mirror, whose manifest is a byte-identical copy of the
//! merged one). Targets (issue 8): local 3 s, merged 10 s, mirror 15 s.
//!
//! Checks, failing the run: every measured minute is sealed in all four places
//! within `--timeout` of its end; per minute, the records of the two local
//! manifests equal the merged manifest's and the mirror's; after the collectors are
//! stopped (SIGTERM: every file closed), the records of topic `bench` stored in
//! both roots (`data/` plus `streams_local/`) equal the events acknowledged.
//!
//! Output: a table of p50 and max per place over every measured minute of every
//! run, the target and a verdict; `--json FILE` appends one JSON line per run with
//! each minute's latencies (default `bench/results/seal-latency.jsonl`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::Utc;
use clap::Args;
use conduit_core::{Manifest, Minute, Topic, View};

use crate::children::{Bus, BusRoots, Conduit};
use crate::measure::{append_json_line, nproc};
use crate::pacer::{payload_pool, Pacer};
use crate::procfs::load_avg;
use crate::records::stored_records;
use crate::rundir::{fresh_temp_dir, hdfs_base_or_default, remove_storage_dir};
use crate::TOPIC;

/// Arguments of `conduit-bench seal-latency`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// Minute boundaries to cross per run (each adds up to a minute of wall time).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=120))]
    minutes: u32,

    /// Events per second published (half to each datacenter's collector).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: u64,

    /// Storage of dc1: `local` (a temporary directory) or `hdfs` (a fresh
    /// directory under --hdfs). dc2 is always local.
    #[arg(long, default_value = "local", value_parser = ["local", "hdfs"])]
    backend: String,

    /// HDFS root for `--backend hdfs` [default: $CONDUIT_TEST_HDFS, else
    /// hdfs://127.0.0.1:9000].
    #[arg(long, value_name = "URI")]
    hdfs: Option<String>,

    /// Batch format of topic `bench` (`format` of `[topic_defaults]`): `zstd`, or
    /// `gzip` (the worker transcodes each merged minute to `.gz`; the local view
    /// stays zstd), to compare what gzip costs the merged view and the mirror.
    #[arg(long, default_value = "zstd", value_parser = ["zstd", "gzip"])]
    format: String,

    /// Number of runs (each a fresh bus); the table pools every measured minute.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,

    /// How often each `_SUCCESS` is looked for, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    poll_ms: u64,

    /// The workers' pause between passes (worker.interval_ms).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    worker_interval_ms: u64,

    /// Make the workers read every data file in full at the seal
    /// (`worker.seal_reads_files = true`, as every seal did before issue 16), to
    /// compare with the default in the same session.
    #[arg(long)]
    seal_reads_files: bool,

    /// Fail a run if a minute is not sealed everywhere this many seconds after its end.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    timeout: u64,

    /// Append one JSON line per run to FILE.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/results/seal-latency.jsonl"
    )]
    json: PathBuf,

    /// Keep each run's directory (logs, config, data) and print its path.
    #[arg(long)]
    keep: bool,

    /// Log filter of the spawned collectors and workers.
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    child_log_level: String,

    /// Seed of the event generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The four places a minute is sealed in, with the targets (seconds).
const PLACES: [(&str, f64); 4] = [
    ("local dc1", 3.0),
    ("local dc2", 3.0),
    ("merged dc1", 10.0),
    ("mirror dc2", 15.0),
];

/// `(storage index, view)` of each of [`PLACES`]: 0 = dc1, 1 = dc2.
const PLACE_AT: [(usize, View); 4] = [
    (0, View::Local),
    (1, View::Local),
    (0, View::Merged),
    (1, View::Merged),
];

/// One measured minute in one place.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// First poll that found the marker, seconds after the minute's end.
    seen_s: Option<f64>,
    /// The manifest's `sealed_at`, seconds after the minute's end.
    sealed_at_s: Option<f64>,
    records: Option<u64>,
}

/// One run's result.
struct SealRun {
    run: u32,
    /// Per minute, per place.
    minutes: BTreeMap<Minute, [Seen; 4]>,
    published: u64,
    acked: u64,
    stored: u64,
    load_before: String,
    load_after: String,
}

/// Runs `conduit-bench seal-latency`.
pub async fn run(args: SealArgs, conduit: &Conduit) -> anyhow::Result<ExitCode> {
    let payloads = payload_pool(100_000, args.seed);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        match one_run(&args, conduit, run, payloads.clone()).await {
            Ok(r) => {
                print_run(&r);
                append_json_line(&args.json, &run_json(&args, &r))?;
                runs.push(r);
            }
            Err(e) => {
                eprintln!("\n!!!!!!!!!! SEAL-LATENCY RUN {run} FAILED: {e:#}\n");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    print_table(&args, &runs);
    Ok(ExitCode::SUCCESS)
}

async fn one_run(
    args: &SealArgs,
    conduit: &Conduit,
    run: u32,
    payloads: Arc<Vec<Bytes>>,
) -> anyhow::Result<SealRun> {
    let name = format!("conduit-bench-seal-{}-{run}", std::process::id());
    let dir = fresh_temp_dir(&name)?;
    let hdfs = (args.backend == "hdfs").then(|| {
        (
            hdfs_base_or_default(args.hdfs.as_deref()),
            name.replace('-', "_"),
        )
    });
    let roots = BusRoots {
        dc1: match &hdfs {
            Some((base, sub)) => format!("{}/{sub}", base.trim_end_matches('/')),
            None => dir.join("dc1").display().to_string(),
        },
        dc2: dir.join("dc2").display().to_string(),
    };
    eprintln!("run {run}: bus in {} (dc1 {})", dir.display(), roots.dc1);
    let result = measure(args, conduit, run, &dir, roots, payloads).await;
    let keep = args.keep || result.is_err();
    if keep {
        eprintln!("kept {}", dir.display());
    } else {
        if let Some((base, sub)) = &hdfs {
            remove_storage_dir(base, sub).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn measure(
    args: &SealArgs,
    conduit: &Conduit,
    run: u32,
    dir: &Path,
    roots: BusRoots,
    payloads: Arc<Vec<Bytes>>,
) -> anyhow::Result<SealRun> {
    let mut bus = Bus::start(
        conduit,
        dir,
        roots,
        &args.format,
        args.worker_interval_ms,
        if args.seal_reads_files {
            "seal_reads_files = true\n"
        } else {
            ""
        },
        &args.child_log_level,
    )
    .await?;
    let addrs: Vec<SocketAddr> = bus.collectors.iter().map(|c| c.addr).collect();
    let load_before = load_avg();
    let pacer = Pacer::start(&addrs, args.rate, payloads).await?;
    let topic = Topic::new(TOPIC)?;
    let first = Minute::from_datetime(Utc::now())?;
    let measured: Vec<Minute> = (0..args.minutes as i64)
        .map(|i| first.add_minutes(i))
        .collect::<Result<_, _>>()?;
    let last_end = measured.last().expect("at least one minute").end();
    eprintln!(
        "run {run}: publishing {} events/s; measuring minutes {} to {} (until {}), load {load_before}",
        args.rate,
        measured[0],
        measured[measured.len() - 1],
        last_end.format("%H:%M:%S")
    );
    let mut seen: BTreeMap<Minute, [Seen; 4]> =
        measured.iter().map(|m| (*m, Default::default())).collect();
    let deadline = last_end + chrono::TimeDelta::seconds(args.timeout as i64);
    let poll = Duration::from_millis(args.poll_ms);
    loop {
        let now = Utc::now();
        let mut pending = 0;
        for (minute, places) in seen.iter_mut() {
            if minute.end() > now {
                pending += places.len();
                continue;
            }
            for (i, place) in places.iter_mut().enumerate() {
                if place.seen_s.is_some() {
                    continue;
                }
                let (at, view) = PLACE_AT[i];
                let dir = Manifest::dir(view, &topic, *minute);
                if Manifest::is_sealed(&*bus.storage[at], &dir).await? {
                    let lat = (Utc::now() - minute.end()).num_microseconds().unwrap_or(0);
                    place.seen_s = Some(lat as f64 / 1e6);
                    eprintln!(
                        "run {run}: {minute} sealed in {} after {:.3} s",
                        PLACES[i].0,
                        lat as f64 / 1e6
                    );
                } else {
                    pending += 1;
                }
            }
        }
        if pending == 0 {
            break;
        }
        if now > deadline {
            let _ = pacer.finish().await;
            let _ = bus.stop().await;
            bail!(
                "{pending} minute/place pairs were not sealed {} s after the last measured minute ended; logs in {}",
                args.timeout,
                dir.join("logs").display()
            );
        }
        tokio::time::sleep(poll).await;
    }
    let (published, acked) = pacer.finish().await?;
    let load_after = load_avg();

    // The manifests: sealed_at and records.
    for (minute, places) in seen.iter_mut() {
        for (i, place) in places.iter_mut().enumerate() {
            let (at, view) = PLACE_AT[i];
            let dir = Manifest::dir(view, &topic, *minute);
            let m = Manifest::read(&*bus.storage[at], &dir)
                .await?
                .with_context(|| format!("{dir} was sealed but has no manifest now"))?;
            // A mirror's manifest is a byte-identical copy of the merged one, so its
            // `sealed_at` is the merged view's: not reported for the mirror.
            if i != 3 {
                let lat = (m.sealed_at - minute.end()).num_microseconds().unwrap_or(0);
                place.sealed_at_s = Some(lat as f64 / 1e6);
            }
            place.records = Some(m.records);
        }
        let r: Vec<u64> = places.iter().map(|p| p.records.unwrap_or(0)).collect();
        if r[0] + r[1] != r[2] || r[2] != r[3] {
            bus.stop().await.ok();
            bail!(
                "{minute}: local dc1 {} + local dc2 {} records, merged {}, mirror {}: they must agree",
                r[0],
                r[1],
                r[2],
                r[3]
            );
        }
    }
    bus.stop().await?;
    let mut stored = 0;
    for s in &bus.storage {
        stored += stored_records(s).await?;
    }
    if stored != acked || acked != published {
        bail!(
            "published {published}, acknowledged {acked}, stored {stored} records of topic {TOPIC}: they must be equal"
        );
    }
    Ok(SealRun {
        run,
        minutes: seen,
        published,
        acked,
        stored,
        load_before,
        load_after,
    })
}

fn print_run(r: &SealRun) {
    eprintln!(
        "run {}: {} published, {} acknowledged, {} stored (equal); load {} -> {}",
        r.run, r.published, r.acked, r.stored, r.load_before, r.load_after
    );
    for (minute, places) in &r.minutes {
        let cells: Vec<String> = places
            .iter()
            .zip(PLACES)
            .map(|(p, (name, _))| {
                format!(
                    "{name} {:.2}s (sealed_at {:.2}s, {} rec)",
                    p.seen_s.unwrap_or(f64::NAN),
                    p.sealed_at_s.unwrap_or(f64::NAN),
                    p.records.unwrap_or(0)
                )
            })
            .collect();
        eprintln!("  {minute}: {}", cells.join("; "));
    }
}

fn run_json(args: &SealArgs, r: &SealRun) -> serde_json::Value {
    let minutes: Vec<serde_json::Value> = r
        .minutes
        .iter()
        .map(|(m, places)| {
            let mut o = serde_json::Map::new();
            o.insert("minute".into(), m.to_string().into());
            for (p, (name, _)) in places.iter().zip(PLACES) {
                let key = name.replace(' ', "_");
                o.insert(
                    key,
                    serde_json::json!({"seen_s": p.seen_s, "sealed_at_s": p.sealed_at_s, "records": p.records}),
                );
            }
            serde_json::Value::Object(o)
        })
        .collect();
    serde_json::json!({
        "bench": "seal-latency",
        "run": r.run,
        "at": Utc::now().to_rfc3339(),
        "rate": args.rate,
        "minutes": args.minutes,
        "backend": args.backend,
        "format": args.format,
        "worker_interval_ms": args.worker_interval_ms,
        "seal_reads_files": args.seal_reads_files,
        "poll_ms": args.poll_ms,
        "published": r.published,
        "acknowledged": r.acked,
        "stored": r.stored,
        "load_avg_before": r.load_before,
        "load_avg_after": r.load_after,
        "nproc": nproc(),
        "per_minute": minutes,
    })
}

/// `value()` with two decimals, or `copy` (a mirror's manifest is the merged one's).
fn fmt_or(copy: bool, value: impl FnOnce() -> f64) -> String {
    if copy {
        "(copy)".to_owned()
    } else {
        format!("{:.2}", value())
    }
}

/// The p50 (nearest rank) of some values.
fn p50(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() - 1) / 2]
}

fn print_table(args: &SealArgs, runs: &[SealRun]) {
    println!(
        "\nconduit-bench seal-latency: {} events/s, {} minute(s) x {} run(s), dc1 on {}, format {}, worker interval {} ms, poll {} ms",
        args.rate, args.minutes, runs.len(), args.backend, args.format, args.worker_interval_ms, args.poll_ms
    );
    println!(
        "{:<12} {:>8} {:>10} {:>10} {:>16} {:>16} {:>8}",
        "view", "minutes", "p50 s", "max s", "sealed_at p50 s", "sealed_at max s", "target"
    );
    let mut all_met = true;
    for (i, (name, target)) in PLACES.iter().enumerate() {
        let seen: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.minutes.values().filter_map(|p| p[i].seen_s))
            .collect();
        let sealed: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.minutes.values().filter_map(|p| p[i].sealed_at_s))
            .collect();
        if seen.is_empty() {
            continue;
        }
        let max = seen.iter().copied().fold(f64::MIN, f64::max);
        let met = max <= *target;
        all_met &= met;
        println!(
            "{:<12} {:>8} {:>10.2} {:>10.2} {:>16} {:>16} {:>8}",
            name,
            seen.len(),
            p50(&seen),
            max,
            fmt_or(sealed.is_empty(), || p50(&sealed)),
            fmt_or(sealed.is_empty(), || sealed
                .iter()
                .copied()
                .fold(f64::MIN, f64::max)),
            format!("{target:.0} s {}", if met { "met" } else { "MISSED" })
        );
    }
    println!(
        "loss check: {}; every minute's local records = merged = mirror; targets {}",
        runs.iter()
            .map(|r| format!(
                "run {}: {} acknowledged = {} stored",
                r.run, r.acked, r.stored
            ))
            .collect::<Vec<_>>()
            .join(", "),
        if all_met {
            "met (max of every minute)"
        } else {
            "not all met"
        }
    );
}
