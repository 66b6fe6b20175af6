//! `conduit-bench limits`: this machine's physical limits, measured in the same
//! run as the scenarios so ratios against them mean something.
//!
//! - **disk**: sequential writes of `--chunk-mib` with an `fdatasync` after each,
//!   `--disk-mib` in all, into a temporary file under `--dir`; MB/s.
//! - **zstd**: level-1 compression on one core of the benchmark's own events
//!   (`EventGenerator`, as lines), in independent frames of `--frame-kib` (how the
//!   collector writes) and as one stream; MB/s, ratio, and events/s equivalent.
//!   Decompression of the framed output too.
//! - **loopback**: one TCP connection on 127.0.0.1, 128 KiB writes, `--net-mib`
//!   in all; MB/s.
//!
//! Each is run `--runs` times; the table shows the median with min and max.
//! `--json FILE` appends one JSON line with every sample.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::events::EventGenerator;
use crate::measure::{append_json_line, median_min_max};

/// Arguments of `conduit-bench limits`.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// Directory for the disk test (use the filesystem the data root is on).
    #[arg(long, default_value = ".")]
    dir: PathBuf,

    /// MiB written per disk run.
    #[arg(long, default_value_t = 512)]
    disk_mib: u64,

    /// MiB per write (each followed by fdatasync).
    #[arg(long, default_value_t = 8)]
    chunk_mib: u64,

    /// Events compressed per zstd run.
    #[arg(long, default_value_t = 200_000)]
    events: usize,

    /// zstd frame size in KiB for the framed measurement.
    #[arg(long, default_value_t = 64)]
    frame_kib: usize,

    /// MiB sent per loopback run.
    #[arg(long, default_value_t = 2048)]
    net_mib: u64,

    /// Runs of each measurement.
    #[arg(long, default_value_t = 3)]
    runs: usize,

    /// Append one JSON line with every sample to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn disk_mb_s(dir: &std::path::Path, total_mib: u64, chunk_mib: u64) -> anyhow::Result<f64> {
    let path = dir.join(format!(".conduit-bench-limits-{}", std::process::id()));
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0x5au8; (chunk_mib << 20) as usize];
    let start = Instant::now();
    let mut written = 0u64;
    while written < total_mib << 20 {
        file.write_all(&chunk)?;
        file.sync_data()?;
        written += chunk.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(written as f64 / secs / 1e6)
}

struct Zstd {
    compress_mb_s: f64,
    stream_compress_mb_s: f64,
    decompress_mb_s: f64,
    ratio: f64,
    mean_event_bytes: f64,
}

fn zstd_limits(lines: &[u8], events: usize, frame_bytes: usize) -> anyhow::Result<Zstd> {
    // Framed, as the collector writes: independent frames of whole records.
    let mut compressor = zstd::bulk::Compressor::new(1)?;
    compressor.include_checksum(true)?;
    let mut frames = Vec::new();
    let start = Instant::now();
    let mut at = 0;
    while at < lines.len() {
        let mut end = (at + frame_bytes).min(lines.len());
        while end < lines.len() && lines[end - 1] != b'\n' {
            end += 1;
        }
        frames.push(compressor.compress(&lines[at..end])?);
        at = end;
    }
    let framed_secs = start.elapsed().as_secs_f64();
    let compressed: usize = frames.iter().map(Vec::len).sum();

    let start = Instant::now();
    let stream = zstd::bulk::compress(lines, 1)?;
    let stream_secs = start.elapsed().as_secs_f64();
    std::hint::black_box(&stream);

    let mut decompressor = zstd::bulk::Decompressor::new()?;
    let start = Instant::now();
    let mut out = 0usize;
    for frame in &frames {
        out += decompressor
            .decompress(frame, frame_bytes * 4 + 65_536)?
            .len();
    }
    let decompress_secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        out == lines.len(),
        "decompressed {out} bytes of {}",
        lines.len()
    );
    Ok(Zstd {
        compress_mb_s: lines.len() as f64 / framed_secs / 1e6,
        stream_compress_mb_s: lines.len() as f64 / stream_secs / 1e6,
        decompress_mb_s: lines.len() as f64 / decompress_secs / 1e6,
        ratio: lines.len() as f64 / compressed as f64,
        mean_event_bytes: lines.len() as f64 / events as f64,
    })
}

fn loopback_mb_s(total_mib: u64) -> anyhow::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let mut conn = std::net::TcpStream::connect(addr)?;
    let chunk = vec![0xa5u8; 128 << 10];
    let total = total_mib << 20;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        conn.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    drop(conn);
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("loopback reader panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == sent,
        "loopback received {received} of {sent} bytes"
    );
    Ok(sent as f64 / secs / 1e6)
}

/// Runs `conduit-bench limits`.
pub async fn run(args: LimitsArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(
        args.chunk_mib >= 1 && args.disk_mib >= args.chunk_mib,
        "--disk-mib must be at least --chunk-mib (>= 1)"
    );
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<ExitCode> {
        let mut generator = EventGenerator::new(1);
        let mut lines = Vec::new();
        for _ in 0..args.events {
            lines.extend_from_slice(&generator.next_event());
            lines.push(b'\n');
        }
        let mut disk = Vec::new();
        let mut zstd = Vec::new();
        let mut net = Vec::new();
        for run in 1..=args.runs {
            disk.push(disk_mb_s(&args.dir, args.disk_mib, args.chunk_mib)?);
            zstd.push(zstd_limits(&lines, args.events, args.frame_kib << 10)?);
            net.push(loopback_mb_s(args.net_mib)?);
            eprintln!("run {run}/{}: done", args.runs);
        }
        let event_bytes = zstd[0].mean_event_bytes;
        let rows: Vec<(&str, Vec<f64>)> = vec![
            (
                "sequential write + fdatasync (MB/s)",
                disk.clone(),
            ),
            (
                "zstd -1, one core, framed (MB/s)",
                zstd.iter().map(|z| z.compress_mb_s).collect(),
            ),
            (
                "zstd -1, one core, one stream (MB/s)",
                zstd.iter().map(|z| z.stream_compress_mb_s).collect(),
            ),
            (
                "zstd decompress, framed (MB/s)",
                zstd.iter().map(|z| z.decompress_mb_s).collect(),
            ),
            ("loopback TCP, 128 KiB writes (MB/s)", net.clone()),
        ];
        println!(
            "machine limits ({} runs; events of {:.1} bytes mean; zstd ratio {:.2} framed)",
            args.runs, event_bytes, zstd[0].ratio
        );
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>14}",
            "limit", "median", "min", "max", "events/s eq."
        );
        for (name, samples) in &rows {
            let (median, min, max) = median_min_max(samples).expect("at least one run");
            println!(
                "{name:<40} {median:>10.0} {min:>10.0} {max:>10.0} {:>14.0}",
                median * 1e6 / (event_bytes + 1.0)
            );
        }
        if let Some(path) = &args.json {
            let line = serde_json::json!({
                "scenario": "limits",
                "at": chrono::Utc::now().to_rfc3339(),
                "event_bytes": event_bytes,
                "zstd_ratio": zstd[0].ratio,
                "samples": rows.iter().map(|(n, s)| (n.to_string(), s.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            });
            append_json_line(path, &line)?;
        }
        Ok(ExitCode::SUCCESS)
    })
    .await??;
    Ok(result)
}
