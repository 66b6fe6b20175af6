//! `conduit-bench soak`: the bus at a fixed rate for a while; memory and file
//! descriptors must stay flat and nothing may be lost.
//!
//! Starts the two-datacenter bus of `seal-latency` (a `conduit collector`
//! and a `conduit worker` process per cluster, merged into `dc1`, mirrored to
//! `dc2`), publishes `--rate` events/s (half to each collector) for `--minutes`,
//! and follows `dc1`'s local view with one PinTail consumer in this process (a
//! live tail from the first minute). Every `--sample-secs` it records the RSS
//! (`VmRSS`) and open file descriptors (`/proc/<pid>/fd`) of each child and of this
//! process (the publishers and the tail).
//!
//! At the end it stops publishing, waits until the last minute with data is sealed
//! in every view, waits for the tail to have delivered every record stored on
//! `dc1`, runs `conduit audit` over the whole range (its exit status is the loss
//! check: non-zero on loss or duplication at any tier) and stops the bus.
//!
//! Reported per process: first, last and max RSS and fds, and the least-squares
//! slope per hour over all samples and over the samples after the first fifth
//! (warm-up). `--json FILE` appends one JSON line with every sample (default
//! `bench/results/soak.jsonl`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Args;
use conduit_core::{Manifest, Minute, Topic, View};

use crate::children::{Bus, BusRoots, Conduit};
use crate::measure::{append_json_line, nproc, slope};
use crate::pacer::{payload_pool, Pacer};
use crate::procfs::{self, load_avg, Process};
use crate::records::stored_records;
use crate::rundir::fresh_temp_dir;
use crate::TOPIC;

/// Arguments of `conduit-bench soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long to publish, in minutes (the issue asks for 30).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,

    /// Events per second published (half to each collector).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: u64,

    /// Seconds between samples of RSS and file descriptors.
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,

    /// The workers' pause between passes (worker.interval_ms).
    #[arg(long, default_value_t = 500)]
    worker_interval_ms: u64,

    /// Follow dc1's local view with a PinTail consumer (`--tail false` to skip).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tail: bool,

    /// Append one JSON line to FILE.
    #[arg(long, value_name = "FILE", default_value = "bench/results/soak.jsonl")]
    json: PathBuf,

    /// Keep the run's directory (logs, config, data) and print its path.
    #[arg(long)]
    keep: bool,

    /// Log filter of the spawned collectors and workers.
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    child_log_level: String,

    /// Seed of the event generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Samples of one process: (seconds since start, RSS KiB, open fds).
#[derive(Default, serde::Serialize)]
struct Series {
    name: String,
    samples: Vec<(f64, u64, u64)>,
}

/// Runs `conduit-bench soak`.
pub async fn run(args: SoakArgs, conduit: &Conduit) -> anyhow::Result<ExitCode> {
    let dir = fresh_temp_dir(&format!("conduit-bench-soak-{}", std::process::id()))?;
    let result = soak(&args, conduit, &dir).await;
    if args.keep || !matches!(result, Ok(ExitCode::SUCCESS)) {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn soak(
    args: &SoakArgs,
    conduit: &Conduit,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let roots = BusRoots {
        dc1: dir.join("dc1").display().to_string(),
        dc2: dir.join("dc2").display().to_string(),
    };
    let mut bus = Bus::start(
        conduit,
        dir,
        roots,
        "zstd",
        args.worker_interval_ms,
        "",
        &args.child_log_level,
    )
    .await?;
    let payloads = payload_pool(100_000, args.seed);
    let addrs: Vec<SocketAddr> = bus.collectors.iter().map(|c| c.addr).collect();
    let load_before = load_avg();
    let first = Minute::from_datetime(Utc::now())?;
    let pacer = Pacer::start(&addrs, args.rate, payloads).await?;

    // The tail: dc1's local view, live, from the first minute.
    let delivered = Arc::new(AtomicU64::new(0));
    let tail = if args.tail {
        let ckpt = dir.join("tail-checkpoints");
        std::fs::create_dir_all(&ckpt)?;
        let mut consumer = conduit_pintail::Consumer::builder(TOPIC)
            .cluster("dc1", bus.storage[0].clone())
            .view(conduit_pintail::ReadView::Local)
            .group("bench-soak")
            .checkpoint_dir(&ckpt.display().to_string())
            .start(conduit_pintail::StartTime::At(first))
            .build()
            .await?;
        let d = delivered.clone();
        Some(tokio::spawn(async move {
            while let Some(m) = consumer.next().await? {
                std::hint::black_box(&m.payload);
                d.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }))
    } else {
        None
    };

    let mut series: Vec<Series> = bus
        .collectors
        .iter()
        .chain(bus.workers.iter())
        .map(|p| Series {
            name: p.name.clone(),
            samples: vec![],
        })
        .collect();
    series.push(Series {
        name: "bench (publishers + tail)".into(),
        samples: vec![],
    });
    let started = Instant::now();
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let every = Duration::from_secs_f64(args.sample_secs.max(0.1));
    let mut next_sample = started;
    eprintln!(
        "soak: {} events/s for {} min, sampling every {} s; bus in {}; load {load_before}",
        args.rate,
        args.minutes,
        args.sample_secs,
        dir.display()
    );
    loop {
        let now = Instant::now();
        if now >= next_sample {
            let t = now.duration_since(started).as_secs_f64();
            let procs = bus.collectors.iter().chain(bus.workers.iter());
            for (s, p) in series.iter_mut().zip(procs) {
                let process = Process::Pid(p.pid);
                let (rss, fds) = (procfs::rss_kib(process), procfs::open_fds(process));
                match (rss, fds) {
                    (Some(r), Some(f)) => s.samples.push((t, r, f)),
                    _ => bail!(
                        "the {} is gone (no /proc/{}); logs in {}",
                        p.name,
                        p.pid,
                        dir.display()
                    ),
                }
            }
            let own = series.last_mut().expect("the bench series");
            own.samples.push((
                t,
                procfs::rss_kib(Process::Own).unwrap_or(0),
                procfs::open_fds(Process::Own).unwrap_or(0),
            ));
            eprintln!(
                "t={t:>6.0}s published {} delivered {} | {}",
                pacer.published.load(Ordering::Relaxed),
                delivered.load(Ordering::Relaxed),
                series
                    .iter()
                    .map(|s| {
                        let (_, r, f) = s.samples.last().copied().unwrap_or_default();
                        format!("{} {:.1} MiB {} fds", s.name, r as f64 / 1024.0, f)
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            next_sample += every;
        }
        if now.duration_since(started) >= total {
            break;
        }
        let wake = next_sample.min(started + total);
        tokio::time::sleep_until(wake.into()).await;
    }
    let (published, acked) = pacer.finish().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let last = Minute::from_datetime(Utc::now())?;
    eprintln!(
        "soak: published {published}, acknowledged {acked} in {elapsed:.0} s ({:.0} events/s); waiting for {last} to be sealed everywhere",
        acked as f64 / elapsed
    );

    // Wait for the last minute with data to be sealed in every view.
    let topic = Topic::new(TOPIC)?;
    let deadline = last.end() + chrono::TimeDelta::seconds(180);
    for (at, view) in [
        (0, View::Local),
        (1, View::Local),
        (0, View::Merged),
        (1, View::Merged),
    ] {
        let mdir = Manifest::dir(view, &topic, last);
        while !Manifest::is_sealed(&*bus.storage[at], &mdir).await? {
            if Utc::now() > deadline {
                bus.stop().await.ok();
                bail!("{mdir} on dc{} was not sealed 180 s after its end", at + 1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Everything of topic bench on dc1 is in closed files now: the tail must get it all.
    let dc1_records = stored_records(&bus.storage[0]).await?;
    let mut tail_ok = true;
    if let Some(task) = tail {
        let until = Instant::now() + Duration::from_secs(120);
        while delivered.load(Ordering::Relaxed) < dc1_records && Instant::now() < until {
            if task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        task.abort();
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), task).await {
            eprintln!("the tail failed: {e:#}");
        }
        let d = delivered.load(Ordering::Relaxed);
        tail_ok = d >= dc1_records;
        eprintln!(
            "tail: delivered {d} of the {dc1_records} records stored on dc1 {}",
            if tail_ok { "(all)" } else { "(MISSING SOME)" }
        );
    }

    // The loss check: conduit audit over the whole range.
    let audit = conduit
        .command()
        .args(["--log-level", "warn", "audit", "--config"])
        .arg(&bus.config)
        .args([
            "--topic",
            TOPIC,
            "--from",
            &first.to_string(),
            "--to",
            &last.to_string(),
        ])
        .output()
        .await
        .context("cannot run conduit audit")?;
    let audit_out = String::from_utf8_lossy(&audit.stdout).into_owned();
    let audit_lines: Vec<&str> = audit_out.lines().collect();
    println!("\nconduit audit --topic {TOPIC} --from {first} --to {last} (last lines):");
    for l in audit_lines.iter().rev().take(6).rev() {
        println!("  {l}");
    }
    let audit_ok = audit.status.success();
    if !audit_ok {
        eprintln!("{}", String::from_utf8_lossy(&audit.stderr));
    }
    bus.stop().await?;
    let mut stored = 0;
    for s in &bus.storage {
        stored += stored_records(s).await?;
    }
    let load_after = load_avg();

    println!(
        "\nconduit-bench soak: {} events/s for {:.1} min ({published} published, {acked} acknowledged, {stored} stored), samples every {} s, load {load_before} -> {load_after}",
        args.rate, elapsed / 60.0, args.sample_secs
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>12} {:>14} {:>6} {:>6} {:>6} {:>9} {:>11}",
        "process",
        "RSS MiB",
        "last",
        "max",
        "slope MiB/h",
        "after warm-up",
        "fds",
        "last",
        "max",
        "fds/h",
        "after w-u"
    );
    let mut json_series = Vec::new();
    for s in &series {
        let rss: Vec<(f64, f64)> = s
            .samples
            .iter()
            .map(|&(t, r, _)| (t / 3600.0, r as f64 / 1024.0))
            .collect();
        let fds: Vec<(f64, f64)> = s
            .samples
            .iter()
            .map(|&(t, _, f)| (t / 3600.0, f as f64))
            .collect();
        let skip = s.samples.len() / 5;
        let fmt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:+.1}"));
        let first_s = s.samples.first().copied().unwrap_or_default();
        let last_s = s.samples.last().copied().unwrap_or_default();
        let max_rss = s.samples.iter().map(|x| x.1).max().unwrap_or(0);
        let max_fds = s.samples.iter().map(|x| x.2).max().unwrap_or(0);
        println!(
            "{:<28} {:>9.1} {:>9.1} {:>9.1} {:>12} {:>14} {:>6} {:>6} {:>6} {:>9} {:>11}",
            s.name,
            first_s.1 as f64 / 1024.0,
            last_s.1 as f64 / 1024.0,
            max_rss as f64 / 1024.0,
            fmt(slope(&rss)),
            fmt(slope(&rss[skip..])),
            first_s.2,
            last_s.2,
            max_fds,
            fmt(slope(&fds)),
            fmt(slope(&fds[skip..])),
        );
        json_series.push(serde_json::json!({
            "name": s.name,
            "rss_mib_per_h": slope(&rss),
            "rss_mib_per_h_after_warmup": slope(&rss[skip..]),
            "fds_per_h": slope(&fds),
            "fds_per_h_after_warmup": slope(&fds[skip..]),
            "samples": s.samples,
        }));
    }
    let loss_ok = stored == acked && acked == published;
    println!(
        "loss: published {published} = acknowledged {acked} = stored {stored}: {}; conduit audit: {}; tail: {}",
        if loss_ok { "yes" } else { "NO" },
        if audit_ok { "no loss or duplication (exit 0)" } else { "FAILED" },
        if !args.tail { "not run" } else if tail_ok { "delivered everything stored on dc1" } else { "MISSED RECORDS" }
    );
    append_json_line(
        &args.json,
        &serde_json::json!({
            "bench": "soak",
            "at": Utc::now().to_rfc3339(),
            "rate": args.rate,
            "minutes": elapsed / 60.0,
            "sample_secs": args.sample_secs,
            "published": published,
            "acknowledged": acked,
            "stored": stored,
            "tail_delivered": args.tail.then(|| delivered.load(Ordering::Relaxed)),
            "dc1_records": dc1_records,
            "audit_ok": audit_ok,
            "load_avg_before": load_before,
            "load_avg_after": load_after,
            "nproc": nproc(),
            "processes": json_series,
        }),
    )?;
    Ok(if loss_ok && audit_ok && tail_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
