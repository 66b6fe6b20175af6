//! `conduit-bench storage-ops`: the latency of each storage call the collector's
//! minute roll and the worker's seal are made of, on one root (local disk or
//! HDFS), so the seal and roll latencies of `seal-latency` can be explained call
//! by call (`docs/benchmarks.md`, "HDFS vs local").
//!
//! Each run, in a fresh directory `bench-storage-ops/<pid>/` under the root:
//!
//! - **create**: `create` of an empty file (NameNode `create` on HDFS);
//! - **write+sync 64 KiB**: one write of 64 KiB and a `sync` (`hsync`), as a commit
//!   round does;
//! - **close after sync**: writing a 48-byte trailer and closing (on HDFS the
//!   pipeline close and `complete`, retried by `hdfs-native` after 500 ms, 1 s, ...
//!   while the NameNode has not heard of the last block from the DataNode);
//! - **small file (create, write 1 KiB, close)**: a manifest, a heartbeat or a
//!   checkpoint;
//! - **file cycle**: create, write 64 KiB, `sync` (`hsync`) and close of one file,
//!   the whole life of a collector's minute file in small (what a roll costs);
//! - **rename**, **stat**, **tail read (last 48 bytes)**, **whole read 64 KiB**,
//!   **list** (a directory of `--files` files), **delete**.
//!
//! Prints median, p90, p99 and max per call in milliseconds; `--json FILE` appends one
//! JSON line with every sample. The directory is deleted at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use conduit_core::{CreateMode, RenameMode, Storage};

use crate::measure::append_json_line;

/// Arguments of `conduit-bench storage-ops`.
#[derive(Debug, Args)]
pub struct StorageOpsArgs {
    /// The root to measure: a local directory or `hdfs://host:port/path`.
    #[arg(long, env = "CONDUIT_TEST_HDFS", value_name = "URI")]
    root: String,

    /// Runs of each call.
    #[arg(long, default_value_t = 20)]
    runs: usize,

    /// Files in the directory that is listed.
    #[arg(long, default_value_t = 20)]
    files: usize,

    /// Append one JSON line with every sample to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The calls in the order they are printed.
const OPS: [&str; 11] = [
    "create",
    "write+sync 64 KiB",
    "close after sync",
    "small file (create, write 1 KiB, close)",
    "file cycle (create, write 64 KiB, sync, close)",
    "rename",
    "stat",
    "tail read (last 48 bytes)",
    "whole read 64 KiB",
    "list",
    "delete",
];

/// Milliseconds since `start`.
fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// One run of every call; samples in milliseconds by call.
async fn one_run(
    storage: &dyn Storage,
    dir: &str,
    run: usize,
    files: usize,
    samples: &mut BTreeMap<&'static str, Vec<f64>>,
) -> anyhow::Result<()> {
    let mut record = |op: &'static str, v: f64| samples.entry(op).or_default().push(v);
    let path = format!("{dir}/run-{run}.zst");
    let payload = Bytes::from(vec![0x5a_u8; 64 << 10]);

    let t = Instant::now();
    let mut writer = storage.create(&path, CreateMode::Exclusive).await?;
    record("create", ms(t));
    let t = Instant::now();
    writer.write(payload.clone()).await?;
    writer.sync().await?;
    record("write+sync 64 KiB", ms(t));
    let t = Instant::now();
    writer.write(Bytes::from(vec![0_u8; 48])).await?;
    writer.close().await?;
    record("close after sync", ms(t));

    let small = format!("{dir}/_tmp.small-{run}");
    let t = Instant::now();
    let mut writer = storage.create(&small, CreateMode::Exclusive).await?;
    writer.write(Bytes::from(vec![b'{'; 1024])).await?;
    writer.close().await?;
    record("small file (create, write 1 KiB, close)", ms(t));

    let cycle = format!("{dir}/cycle-{run}.zst");
    let t = Instant::now();
    let mut writer = storage.create(&cycle, CreateMode::Exclusive).await?;
    writer.write(payload.clone()).await?;
    writer.sync().await?;
    writer.close().await?;
    record("file cycle (create, write 64 KiB, sync, close)", ms(t));

    let moved = format!("{dir}/moved/run-{run}.zst");
    let t = Instant::now();
    storage
        .rename(&path, &moved, RenameMode::NoOverwrite)
        .await?;
    record("rename", ms(t));
    let t = Instant::now();
    let len = storage.len(&moved).await?;
    record("stat", ms(t));
    let t = Instant::now();
    let tail = storage.read_range(&moved, len - 48..len).await?;
    record("tail read (last 48 bytes)", ms(t));
    anyhow::ensure!(tail.len() == 48, "tail read returned {} bytes", tail.len());
    let t = Instant::now();
    let whole = storage.read(&moved).await?;
    record("whole read 64 KiB", ms(t));
    anyhow::ensure!(
        whole.len() as u64 == len,
        "read {} of {len} bytes",
        whole.len()
    );

    let listed = format!("{dir}/listed");
    if run == 0 {
        for i in 0..files {
            let w = storage
                .create(&format!("{listed}/f{i}"), CreateMode::Exclusive)
                .await?;
            w.close().await?;
        }
    }
    let t = Instant::now();
    let entries = storage.list(&listed).await?;
    record("list", ms(t));
    anyhow::ensure!(
        entries.len() == files,
        "listed {} of {files} files",
        entries.len()
    );

    let t = Instant::now();
    storage.delete(&small, false).await?;
    record("delete", ms(t));
    Ok(())
}

/// Runs `conduit-bench storage-ops`.
pub async fn run(args: StorageOpsArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let storage = conduit_core::open_root(&args.root)
        .await
        .with_context(|| format!("cannot open the root {}", args.root))?;
    let dir = format!("bench-storage-ops/{}", std::process::id());
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for run in 0..args.runs {
        one_run(&*storage, &dir, run, args.files, &mut samples).await?;
    }
    storage.delete(&dir, true).await?;

    println!(
        "storage calls on {} ({} runs), milliseconds:",
        args.root, args.runs
    );
    println!(
        "{:<48} {:>8} {:>8} {:>8} {:>8}",
        "call", "p50", "p90", "p99", "max"
    );
    let mut json = serde_json::Map::new();
    for op in OPS {
        let mut v = samples.remove(op).unwrap_or_default();
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "{op:<48} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
        json.insert(op.to_owned(), serde_json::json!(v));
    }
    if let Some(path) = &args.json {
        append_json_line(
            path,
            &serde_json::json!({
                "scenario": "storage-ops",
                "root": args.root,
                "at": chrono::Utc::now().to_rfc3339(),
                "runs": args.runs,
                "ms": json,
            }),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
