//! `conduit-bench catch-up`: how fast one hour of sealed history is read back.
//!
//! Builds one hour of sealed local minutes of topic `bench` in a fresh local root
//! (`streams_local/bench/yyyy/MM/dd/HH/mm/`, 60 minutes starting at the hour two
//! hours before now): `--events` benchmark events (`EventGenerator`) spread evenly,
//! per minute `--files` data files named as the worker names them
//! (`dc1-c<i>-bench-...zst`), each a sequence of zstd level-1 frames of
//! `--frame-events` records (as a collector writes them) plus the close trailer,
//! and a `_SUCCESS` manifest written with `Manifest::seal`; the collectors'
//! directories `data/bench/c<i>/` exist and are empty, as after the worker moved
//! their files. Building is not timed.
//!
//! Then, `--runs` times each, timed from the start of the read to the last record:
//!
//! - **duckdb read_json**: `SELECT count(*) FROM read_json(<glob>,
//!   format='newline_delimited', compression='zstd')` in `python3` with the `duckdb`
//!   module (its default threads: every core); the timing is taken inside Python
//!   around the query, so the interpreter's start-up is excluded.
//! - **duckdb lines**: the same files read as one text column per line with
//!   `read_csv` (decompression and line splitting, no JSON parsing).
//! - **pintail**: one `conduit_pintail::Consumer` on the local view, from the
//!   hour's first minute with the hour's last minute as stop minute, counting
//!   messages until the stream ends.
//! - **pintail-sub** (not in the default list): the same consumer with
//!   `--partitions K` (default 4) sub-partitions of each collector's stream
//!   (issue 17). It reads all `files × K` sub-partitions, each stream once per
//!   sub-partition, so its rate is what one group member owning one
//!   sub-partition delivers on its own core (it decodes a whole stream and
//!   delivers `1/K` of it); compare with `pintail` (a member owning a stream).
//! - **conduit decode**: `conduit_core::format::decode_file` over every file, one
//!   thread (what one core of zstd and the record splitter do, for reference).
//!
//! With `--root hdfs://host:port/path` the history is written to a fresh
//! directory under that HDFS root (through the storage trait, as the worker
//! writes it) and removed afterwards unless `--keep`; only the `pintail` and
//! `pintail-sub` readers run there (DuckDB and `decode` read local files).
//!
//! Every reader must count exactly `--events` records, or the scenario fails.
//! Target (issue 8): ≥ 2,000,000 events/s. `--json FILE` appends one JSON line per
//! scenario run with every sample (default `bench/results/catch-up.jsonl`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Args;
use conduit_core::format::{decode_file, DATA_FILE_SUFFIX};
use conduit_core::layout::Layout;
use conduit_core::manifest::crc32c;
use conduit_core::storage::LocalStorage;
use conduit_core::{
    Encoding, FrameEncoder, Manifest, ManifestFile, Minute, NodeName, SharedStorage, Topic,
    Trailer, View,
};

use crate::events::EventGenerator;
use crate::measure::{append_json_line, median_min_max, nproc};
use crate::procfs::load_avg;
use crate::rundir::fresh_temp_dir;
use crate::TOPIC;

/// The target of issue 8, events/s.
const TARGET: f64 = 2_000_000.0;

/// Arguments of `conduit-bench catch-up`.
#[derive(Debug, Args)]
pub struct CatchUpArgs {
    /// Events in the hour of history (spread evenly over its 60 minutes).
    #[arg(long, default_value_t = 6_000_000, value_parser = clap::value_parser!(u64).range(60..))]
    events: u64,

    /// Data files per minute (one per simulated collector).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    files: u32,

    /// Records per zstd frame.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    frame_events: u32,

    /// Runs of each reader; the table shows the median (min–max).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,

    /// Readers to run, comma separated: duckdb-json, duckdb-lines, pintail,
    /// pintail-sub, decode.
    #[arg(
        long,
        default_value = "duckdb-json,duckdb-lines,pintail,decode",
        value_delimiter = ','
    )]
    readers: Vec<String>,

    /// Sub-partitions per collector stream of the `pintail-sub` reader.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=1024))]
    partitions: u32,

    /// Directory for the history (default: a fresh temporary directory, removed
    /// afterwards unless --keep).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Build the history under this cluster root instead of a local directory:
    /// `hdfs://host:port/path` (a fresh directory below it per scenario run).
    /// Only the `pintail` and `pintail-sub` readers run on HDFS.
    #[arg(long, value_name = "URI", conflicts_with = "dir")]
    root: Option<String>,

    /// Keep the history and print its path.
    #[arg(long)]
    keep: bool,

    /// Append one JSON line to FILE.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/results/catch-up.jsonl"
    )]
    json: PathBuf,

    /// Seed of the event generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const READERS: [&str; 5] = [
    "duckdb-json",
    "duckdb-lines",
    "pintail",
    "pintail-sub",
    "decode",
];

/// What was built.
struct History {
    first: Minute,
    last: Minute,
    events: u64,
    payload_bytes: u64,
    file_bytes: u64,
    files: u64,
}

/// Runs `conduit-bench catch-up`.
pub async fn run(args: CatchUpArgs) -> anyhow::Result<ExitCode> {
    for r in &args.readers {
        if !READERS.contains(&r.as_str()) {
            bail!("unknown reader {r:?}; known: {}", READERS.join(", "));
        }
    }
    if let Some(root) = &args.root {
        return on_root(&args, root).await;
    }
    let (dir, temporary) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), false)
        }
        None => (
            fresh_temp_dir(&format!("conduit-bench-catchup-{}", std::process::id()))?,
            true,
        ),
    };
    let storage: SharedStorage = Arc::new(LocalStorage::open(&dir)?);
    let result = measure(&args, storage, Some(&dir)).await;
    if args.keep || result.is_err() || !temporary {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// `--root`: the history in a fresh directory under a cluster root (HDFS).
async fn on_root(args: &CatchUpArgs, root: &str) -> anyhow::Result<ExitCode> {
    if let Some(r) = args.readers.iter().find(|r| !r.starts_with("pintail")) {
        bail!("reader {r:?} reads local files; with --root only pintail and pintail-sub run");
    }
    let base = conduit_core::storage::open_root(root)
        .await
        .with_context(|| format!("cannot open --root {root}"))?;
    let sub = format!("conduit-bench-catchup-{}", std::process::id());
    base.mkdirs(&sub).await?;
    let uri = format!("{}/{sub}", root.trim_end_matches('/'));
    let storage = conduit_core::storage::open_root(&uri).await?;
    let result = measure(args, storage, None).await;
    if args.keep || result.is_err() {
        eprintln!("kept {uri}");
    } else {
        base.delete(&sub, true).await?;
    }
    result
}

async fn measure(
    args: &CatchUpArgs,
    storage: SharedStorage,
    dir: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let history = build_history(args, &storage).await?;
    eprintln!(
        "built {} events ({} payload bytes) in {} files, {} file bytes (ratio {:.2}), minutes {:?}..{:?}, in {:.1} s",
        history.events,
        history.payload_bytes,
        history.files,
        history.file_bytes,
        history.payload_bytes as f64 / history.file_bytes as f64,
        history.first,
        history.last,
        started.elapsed().as_secs_f64()
    );
    // Drop the history from the page cache? No: a catch-up reader of recent data
    // reads from the cache too, and this machine's disk is not what is measured.
    let load_before = load_avg();
    let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
    for reader in &args.readers {
        let mut rates = Vec::new();
        for run in 1..=args.runs {
            let load = load_avg();
            let local = || dir.context("this reader needs the history on local disk");
            let (count, secs) = match reader.as_str() {
                "duckdb-json" => duckdb(local()?, false)?,
                "duckdb-lines" => duckdb(local()?, true)?,
                "pintail" => pintail(&storage, &history, 1).await?,
                "pintail-sub" => pintail(&storage, &history, args.partitions).await?,
                "decode" => decode_all(local()?)?,
                _ => unreachable!("checked above"),
            };
            if count != history.events {
                bail!(
                    "{reader} run {run} counted {count} records, the history holds {}",
                    history.events
                );
            }
            let rate = count as f64 / secs;
            eprintln!("{reader} run {run}: {count} records in {secs:.3} s = {rate:.0} events/s [load {load}]");
            rates.push(rate);
        }
        samples.push((reader.clone(), rates));
    }
    let load_after = load_avg();

    println!(
        "\nconduit-bench catch-up: one hour of sealed local minutes on {}, {} events ({:.1} MB payload, {:.1} MB in {} files), {} run(s) per reader, load {load_before} -> {load_after}",
        args.root.as_deref().unwrap_or("local disk"),
        history.events,
        history.payload_bytes as f64 / 1e6,
        history.file_bytes as f64 / 1e6,
        history.files,
        args.runs
    );
    println!(
        "{:<14} {:>14} {:>26} {:>12} {:>10}",
        "reader", "events/s", "(min–max)", "MB/s", "target"
    );
    let mut json_readers = serde_json::Map::new();
    for (reader, rates) in &samples {
        let (median, min, max) = median_min_max(rates).expect("at least one run");
        println!(
            "{:<14} {:>14.0} {:>26} {:>12.1} {:>10}",
            reader,
            median,
            format!("({min:.0}–{max:.0})"),
            median * history.payload_bytes as f64 / history.events as f64 / 1e6,
            format!(
                "{:.2}x {}",
                median / TARGET,
                if median >= TARGET { "met" } else { "missed" }
            )
        );
        json_readers.insert(
            reader.clone(),
            serde_json::json!({"events_per_s": rates, "median": median}),
        );
    }
    append_json_line(
        &args.json,
        &serde_json::json!({
            "bench": "catch-up",
            "root": args.root.as_deref().unwrap_or("local"),
            "at": Utc::now().to_rfc3339(),
            "events": history.events,
            "payload_bytes": history.payload_bytes,
            "file_bytes": history.file_bytes,
            "files": history.files,
            "frame_events": args.frame_events,
            "runs": args.runs,
            "readers": json_readers,
            "load_avg_before": load_before,
            "load_avg_after": load_after,
            "nproc": nproc(),
        }),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// One data file: its name, bytes, records and payload bytes.
struct Built {
    name: String,
    bytes: Vec<u8>,
    records: u64,
    payload_bytes: u64,
}

/// The files of one minute (generated and compressed on a blocking thread).
fn build_minute(
    minute: Minute,
    events: u64,
    files: u32,
    frame_events: u32,
    seed: u64,
) -> anyhow::Result<Vec<Built>> {
    let topic = Topic::new(TOPIC)?;
    let mut generator = EventGenerator::new(seed ^ (minute.epoch_minutes() as u64).rotate_left(17));
    let mut encoder = FrameEncoder::new(1)?;
    let mut out = Vec::new();
    let mut records = Vec::with_capacity(frame_events as usize * 320);
    for f in 0..files as u64 {
        let n = events / files as u64 + u64::from(f < events % files as u64);
        let mut bytes = Vec::new();
        let (mut record_bytes, mut payload_bytes, mut done) = (0u64, 0u64, 0u64);
        while done < n {
            records.clear();
            let k = (n - done).min(frame_events as u64);
            for _ in 0..k {
                let before = records.len();
                generator.next_into(&mut records);
                payload_bytes += (records.len() - before) as u64;
                records.push(b'\n');
            }
            record_bytes += records.len() as u64;
            bytes.extend_from_slice(&encoder.frame(&records)?);
            done += k;
        }
        bytes.extend_from_slice(
            &Trailer {
                encoding: Encoding::Lines,
                records: n,
                record_bytes,
            }
            .encode(),
        );
        let collector = format!("c{}", f + 1);
        out.push(Built {
            name: format!(
                "dc1-{collector}-{}",
                Layout::collector_file_name(&topic, minute, 0)
            ),
            bytes,
            records: n,
            payload_bytes,
        });
    }
    Ok(out)
}

async fn build_history(args: &CatchUpArgs, storage: &SharedStorage) -> anyhow::Result<History> {
    let topic = Topic::new(TOPIC)?;
    let dc1 = NodeName::new("dc1")?;
    let now = Minute::from_datetime(Utc::now())?;
    let first = now.hour_start().add_minutes(-120)?;
    let last = first.add_minutes(59)?;
    let mut history = History {
        first,
        last,
        events: 0,
        payload_bytes: 0,
        file_bytes: 0,
        files: 0,
    };
    // The collectors' directories in `data/`, empty as after the worker moved
    // their files (PinTail finds the local view's partitions there).
    for i in 1..=args.files {
        storage
            .mkdirs(&format!(
                "{}/c{i}",
                Layout::topic_dir(View::Collector, &topic)
            ))
            .await?;
    }
    // As many minutes at a time as there are cores, on blocking threads.
    let parallel = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(1);
    let mut pending = std::collections::VecDeque::new();
    for i in 0..60u64 {
        let minute = first.add_minutes(i as i64)?;
        let events = args.events / 60 + u64::from(i < args.events % 60);
        let (files, frame_events, seed) = (args.files, args.frame_events, args.seed);
        pending.push_back((
            minute,
            tokio::task::spawn_blocking(move || {
                build_minute(minute, events, files, frame_events, seed)
            }),
        ));
        while pending.len() >= parallel || (i == 59 && !pending.is_empty()) {
            let (minute, task) = pending.pop_front().expect("not empty");
            let built = task.await.context("a generator thread panicked")??;
            let mdir = Manifest::dir(View::Local, &topic, minute);
            storage.mkdirs(&mdir).await?;
            let mut entries = Vec::new();
            for b in built {
                let path = format!("{mdir}/{}", b.name);
                let (len, crc) = (b.bytes.len() as u64, crc32c(&b.bytes));
                storage
                    .write_atomic(&path, bytes::Bytes::from(b.bytes))
                    .await
                    .with_context(|| format!("cannot write {path}"))?;
                history.events += b.records;
                history.payload_bytes += b.payload_bytes;
                history.file_bytes += len;
                history.files += 1;
                let collector = b.name.split('-').nth(1).expect("dc1-cN-...").to_owned();
                entries.push(ManifestFile {
                    name: b.name,
                    bytes: len,
                    records: b.records,
                    crc32c: crc,
                    cluster: dc1.clone(),
                    collector: Some(NodeName::new(collector)?),
                    minute,
                    late: false,
                });
            }
            Manifest::new(
                View::Local,
                topic.clone(),
                minute,
                vec![dc1.clone()],
                vec![],
                Utc::now(),
                "dc1/bench-catch-up".to_owned(),
                entries,
            )
            .seal(&**storage)
            .await?;
        }
    }
    Ok(history)
}

/// Runs a DuckDB count over every data file; returns (count, seconds).
fn duckdb(dir: &Path, lines: bool) -> anyhow::Result<(u64, f64)> {
    let glob = format!(
        "{}/{}/*/*/*/*/*/*{DATA_FILE_SUFFIX}",
        dir.display(),
        Layout::topic_dir(View::Local, &Topic::new(TOPIC)?)
    );
    let source = if lines {
        "read_csv(?, columns={'line': 'VARCHAR'}, header=false, delim='\\x01', quote='', escape='', compression='zstd')"
    } else {
        "read_json(?, format='newline_delimited', compression='zstd')"
    };
    let script = format!(
        "import duckdb, json, sys, time\n\
         con = duckdb.connect()\n\
         con.execute('SET enable_progress_bar = false')\n\
         t = time.perf_counter()\n\
         n = con.execute(\"SELECT count(*) FROM {source}\", [sys.argv[1]]).fetchone()[0]\n\
         print(json.dumps({{'count': n, 'secs': time.perf_counter() - t}}))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&glob)
        .output()
        .context("cannot run python3 (needed for DuckDB)")?;
    if !out.status.success() {
        bail!(
            "python3 with duckdb failed ({}): {}; install it with `pip install duckdb`",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "unexpected output {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok((
        v["count"].as_u64().context("no count")?,
        v["secs"].as_f64().context("no secs")?,
    ))
}

/// Reads the hour with one PinTail consumer of `partitions` sub-partitions per
/// collector stream; returns (count, seconds).
async fn pintail(
    storage: &SharedStorage,
    history: &History,
    partitions: u32,
) -> anyhow::Result<(u64, f64)> {
    let ckpt = fresh_temp_dir(&format!(
        "conduit-bench-pintail-ckpt-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or(0)
    ))?;
    let started = Instant::now();
    let mut consumer = conduit_pintail::Consumer::builder(TOPIC)
        .cluster("dc1", storage.clone())
        .view(conduit_pintail::ReadView::Local)
        .partitions(partitions)
        .group("bench-catch-up")
        .checkpoint_dir(&ckpt.display().to_string())
        .start(conduit_pintail::StartTime::At(history.first))
        .stop(history.last)
        .build()
        .await?;
    let mut count = 0u64;
    while let Some(m) = consumer.next().await? {
        std::hint::black_box(&m.payload);
        count += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    if partitions > 1 {
        eprintln!(
            "pintail-sub: {} sealed chunks taken from another sub-partition reader of their stream",
            consumer.stats().shared_chunks
        );
    }
    drop(consumer);
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok((count, secs))
}

/// Decodes every file on this thread; returns (count, seconds).
fn decode_all(dir: &Path) -> anyhow::Result<(u64, f64)> {
    let topic_dir = dir.join(Layout::topic_dir(View::Local, &Topic::new(TOPIC)?));
    let mut files = Vec::new();
    let mut stack = vec![topic_dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(DATA_FILE_SUFFIX) {
                files.push(p);
            }
        }
    }
    files.sort();
    let started = Instant::now();
    let mut count = 0u64;
    for p in &files {
        let buf = std::fs::read(p)?;
        let decoded = decode_file(&p.display().to_string(), &buf, Encoding::Lines)?;
        count += decoded.payloads.len() as u64;
    }
    Ok((count, started.elapsed().as_secs_f64()))
}
