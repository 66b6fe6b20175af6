//! `conduit-bench hsync-loop`: `hdfs-native` alone, without conduit: each of
//! `--files` concurrent writers (one shared client, as in the collector) writes
//! `--write-bytes` and calls `hsync`, in a loop, for `--seconds`. Two ways to
//! sync, measured back to back and interleaved over `--rounds`:
//!
//! - **block**: `FileWriter::hsync` — the DataNodes sync the block; the
//!   NameNode's `fsync` only when a block was allocated since its last call (Java's
//!   `DFSOutputStream.hsync()`; what conduit's HDFS writer does);
//! - **every**: `FileWriter::hsync_update_length` — the same, plus the NameNode's
//!   `fsync` with the last block's length on every call (Java's
//!   `SyncFlag.UPDATE_LENGTH`; what `hdfs-native` 0.14.8 did on every `hsync`).
//!
//! Prints, per mode and number of files: syncs, write+hsync latency p50/p99/p99.9
//! /max in milliseconds, and MB/s written (all files together). Each file is
//! deleted after its case. This is the ceiling the collector's commit round sits
//! on (`docs/benchmarks.md`, "HDFS vs local").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use hdfs_native::{Client, ClientBuilder, WriteOptions};

use crate::measure::{append_json_line, nearest_rank};

/// Arguments of `conduit-bench hsync-loop`.
#[derive(Debug, Args)]
pub struct HsyncLoopArgs {
    /// The NameNode: `hdfs://host:port` (a path after it is ignored).
    #[arg(long, env = "CONDUIT_TEST_HDFS", value_name = "URI")]
    root: String,

    /// Directory on HDFS for the files (deleted at the end).
    #[arg(long, default_value = "/bench-hsync-loop")]
    dir: String,

    /// Numbers of concurrent files to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    files: Vec<usize>,

    /// Bytes written before each hsync.
    #[arg(long, default_value_t = 64 << 10)]
    write_bytes: usize,

    /// Seconds each case runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,

    /// Rounds: every case (mode × files) once per round, modes alternating.
    #[arg(long, default_value_t = 2)]
    rounds: usize,

    /// Append one JSON line per case with its samples' summary to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// How each writer syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `hsync`: NameNode `fsync` only after a new block.
    Block,
    /// `hsync_update_length`: NameNode `fsync` every time.
    Every,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Block => "block",
            Mode::Every => "every",
        }
    }
}

/// One writer's loop: write + hsync until `until`; latencies in milliseconds.
async fn one_file(
    client: Client,
    path: String,
    payload: Bytes,
    mode: Mode,
    until: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut writer = client
        .create(
            &path,
            WriteOptions {
                overwrite: true,
                create_parent: true,
                ..WriteOptions::default()
            },
        )
        .await
        .with_context(|| format!("create {path}"))?;
    let mut samples = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        writer.write_bytes(payload.clone()).await?;
        match mode {
            Mode::Block => writer.hsync().await?,
            Mode::Every => writer.hsync_update_length().await?,
        }
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    writer
        .close()
        .await
        .with_context(|| format!("close {path}"))?;
    client.delete(&path, false).await?;
    Ok(samples)
}

/// Runs `conduit-bench hsync-loop`.
pub async fn run(args: HsyncLoopArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(
        args.files.iter().all(|&n| n >= 1),
        "--files: every number must be at least 1"
    );
    let scheme_end = args
        .root
        .find("://")
        .with_context(|| format!("--root {} has no scheme (hdfs://host:port)", args.root))?;
    let authority_end = args.root[scheme_end + 3..]
        .find('/')
        .map_or(args.root.len(), |i| scheme_end + 3 + i);
    let url = &args.root[..authority_end];
    let client = ClientBuilder::new()
        .with_url(url)
        .build()
        .with_context(|| format!("cannot build an HDFS client for {url}"))?;
    let dir = format!("{}/{}", args.dir.trim_end_matches('/'), std::process::id());
    let payload = Bytes::from(
        (0..args.write_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    println!(
        "hdfs-native write {} B + hsync loop on {url}, {} s per case, {} rounds",
        args.write_bytes, args.seconds, args.rounds
    );
    println!(
        "{:<6} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "mode", "files", "round", "syncs", "p50 ms", "p99 ms", "p99.9", "max ms", "MB/s"
    );
    for round in 0..args.rounds {
        // Alternate which mode goes first, so neither always runs on a warmer cluster.
        let modes = if round % 2 == 0 {
            [Mode::Block, Mode::Every]
        } else {
            [Mode::Every, Mode::Block]
        };
        for &files in &args.files {
            for mode in modes {
                let start = Instant::now();
                let until = start + Duration::from_secs(args.seconds);
                let tasks: Vec<_> = (0..files)
                    .map(|i| {
                        tokio::spawn(one_file(
                            client.clone(),
                            format!("{dir}/{}-{files}-{round}-{i}", mode.name()),
                            payload.clone(),
                            mode,
                            until,
                        ))
                    })
                    .collect();
                let mut samples = Vec::new();
                for task in tasks {
                    samples.extend(task.await??);
                }
                let elapsed = start.elapsed().as_secs_f64();
                samples.sort_by(|a, b| a.total_cmp(b));
                let at = |p: f64| nearest_rank(&samples, p).unwrap_or(f64::NAN);
                let mb_s = (samples.len() * args.write_bytes) as f64 / elapsed / 1e6;
                println!(
                    "{:<6} {:>5} {:>5} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1}",
                    mode.name(),
                    files,
                    round,
                    samples.len(),
                    at(0.5),
                    at(0.99),
                    at(0.999),
                    at(1.0),
                    mb_s
                );
                if let Some(path) = &args.json {
                    append_json_line(
                        path,
                        &serde_json::json!({
                            "scenario": "hsync-loop",
                            "at": chrono::Utc::now().to_rfc3339(),
                            "mode": mode.name(),
                            "files": files,
                            "round": round,
                            "write_bytes": args.write_bytes,
                            "syncs": samples.len(),
                            "p50_ms": at(0.5),
                            "p99_ms": at(0.99),
                            "p999_ms": at(0.999),
                            "max_ms": at(1.0),
                            "mb_per_s": mb_s,
                        }),
                    )?;
                }
            }
        }
    }
    client.delete(&dir, true).await?;
    Ok(ExitCode::SUCCESS)
}
