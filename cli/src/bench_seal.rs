//! `conduit bench seal-latency`: how long after a minute ends its `_SUCCESS`
//! appears in the local, merged and mirror views, with the real processes.
//!
//! Each run builds a two-datacenter bus in a temporary directory: clusters `dc1`
//! and `dc2` (two local roots; with `--backend hdfs`, `dc1` is a fresh directory on
//! HDFS), every topic merged into `dc1` from both and mirrored to `dc2` (the layout
//! of `conduit up`). It starts one `conduit collector` and one `conduit worker` per
//! cluster as child processes of this executable (default worker settings: a pass
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
//!
//! The [`Bus`] and the paced publisher here are shared with `bench soak`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::Utc;
use clap::Args;
use conduit_core::events::EventGenerator;
use conduit_core::format::{decode_file, DATA_FILE_SUFFIX};
use conduit_core::layout::Layout;
use conduit_core::{Encoding, Manifest, Minute, SharedStorage, Topic, View};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The topic the bus scenarios publish to.
pub(crate) const TOPIC: &str = "bench";

/// Arguments of `conduit bench seal-latency`.
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

    /// Number of runs (each a fresh bus); the table pools every measured minute.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,

    /// How often each `_SUCCESS` is looked for, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    poll_ms: u64,

    /// The workers' pause between passes (worker.interval_ms).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    worker_interval_ms: u64,

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

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` shows them.
pub(crate) fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Median, min and max; `None` for no values.
pub(crate) fn median_min_max(values: &[f64]) -> Option<(f64, f64, f64)> {
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

/// Appends one JSON line to `path`, creating its directory.
pub(crate) fn append_json_line(path: &Path, line: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// A child process of this executable that printed a ready line.
pub(crate) struct Proc {
    /// `collector dc1`, `worker dc2`, ...
    pub name: String,
    child: tokio::process::Child,
    /// Its pid (for `/proc` samples and signals).
    pub pid: u32,
    /// The address in its ready line (Scribe for a collector, HTTP for a worker).
    pub addr: SocketAddr,
}

impl Proc {
    /// Starts `conduit --log-level L <args>` with stderr into `log` and waits up to
    /// 120 s for a stdout line starting with `ready_prefix`, followed by an address.
    pub async fn spawn(
        name: &str,
        log_level: &str,
        args: &[String],
        log: &Path,
        ready_prefix: &str,
    ) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("cannot find the conduit executable")?;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = tokio::process::Command::new(exe)
            .arg("--log-level")
            .arg(log_level)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        let pid = child.id().context("no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(ready_prefix) {
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
                bail!(
                    "the {name} exited before it was ready ({status}); log {}",
                    log.display()
                )
            }
            Ok(Err(e)) => return Err(e.context(format!("cannot read the {name}'s ready line"))),
            Err(_) => bail!(
                "the {name} was not ready within 120 s; log {}",
                log.display()
            ),
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
            addr,
        })
    }

    /// SIGTERM, then waits up to `timeout` for a successful exit.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "the {} did not stop within {timeout:?} of SIGTERM",
                    self.name
                )
            })??;
        if !status.success() {
            bail!("the {} exited with {status} after SIGTERM", self.name);
        }
        Ok(())
    }

    /// Resident set size (`VmRSS`) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> Option<u64> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid))
                .ok()?
                .count() as u64,
        )
    }
}

/// Where a bus keeps its data.
pub(crate) struct BusRoots {
    /// Root of dc1 (a directory or an HDFS URI).
    pub dc1: String,
    /// Root of dc2 (a directory).
    pub dc2: String,
}

/// Two datacenters on this machine: a collector and a worker each, processes.
pub(crate) struct Bus {
    /// The config every child reads.
    pub config: PathBuf,
    /// Storage of dc1 and dc2, in that order.
    pub storage: [SharedStorage; 2],
    /// Collectors of dc1 and dc2.
    pub collectors: Vec<Proc>,
    /// Workers of dc1 and dc2.
    pub workers: Vec<Proc>,
}

impl Bus {
    /// Writes the config into `dir` and starts both collectors and both workers.
    pub async fn start(
        dir: &Path,
        roots: BusRoots,
        worker_interval_ms: u64,
        log_level: &str,
    ) -> anyhow::Result<Bus> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let config = dir.join("conduit.toml");
        std::fs::write(
            &config,
            format!(
                "# Written by conduit bench: two datacenters, merged into dc1, mirrored to dc2.\n\
                 [clusters.dc1]\nroot = {:?}\n\n[clusters.dc2]\nroot = {:?}\n\n\
                 [topic_defaults]\nencoding = \"lines\"\nmerge_into = \"dc1\"\n\
                 merge_sources = [\"dc1\", \"dc2\"]\nmirrors = [\"dc2\"]\ncompact = false\n\n\
                 [worker]\ninterval_ms = {worker_interval_ms}\n",
                roots.dc1, roots.dc2
            ),
        )?;
        let storage = [
            conduit_core::open_root(&roots.dc1)
                .await
                .with_context(|| format!("cannot open {}", roots.dc1))?,
            conduit_core::open_root(&roots.dc2)
                .await
                .with_context(|| format!("cannot open {}", roots.dc2))?,
        ];
        let cfg = config.display().to_string();
        let mut collectors = Vec::new();
        let mut workers = Vec::new();
        for dc in ["dc1", "dc2"] {
            let args: Vec<String> = [
                "collector",
                "--config",
                &cfg,
                "--cluster",
                dc,
                "--id",
                "c1",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = dir.join(format!("logs/collector-{dc}.log"));
            collectors.push(
                Proc::spawn(
                    &format!("collector {dc}"),
                    log_level,
                    &args,
                    &log,
                    "collector ready: scribe ",
                )
                .await?,
            );
        }
        for dc in ["dc1", "dc2"] {
            let args: Vec<String> = [
                "worker",
                "--config",
                &cfg,
                "--cluster",
                dc,
                "--http",
                "127.0.0.1:0",
                "--id",
                "bench",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = dir.join(format!("logs/worker-{dc}.log"));
            workers.push(
                Proc::spawn(
                    &format!("worker {dc}"),
                    log_level,
                    &args,
                    &log,
                    "worker ready: http ",
                )
                .await?,
            );
        }
        Ok(Bus {
            config,
            storage,
            collectors,
            workers,
        })
    }

    /// Stops the workers, then the collectors (SIGTERM; collectors close every file).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        for p in self.workers.drain(..).chain(self.collectors.drain(..)) {
            if let Err(e) = p.stop(Duration::from_secs(120)).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Pre-generated payloads the paced publisher cycles through.
pub(crate) fn payload_pool(events: usize, seed: u64) -> Arc<Vec<Bytes>> {
    let mut generator = EventGenerator::new(seed);
    let mut buf = Vec::with_capacity(events * 320);
    let mut ends = Vec::with_capacity(events);
    for _ in 0..events {
        generator.next_into(&mut buf);
        ends.push(buf.len());
    }
    let buf = Bytes::from(buf);
    let mut start = 0;
    Arc::new(
        ends.iter()
            .map(|&end| {
                let p = buf.slice(start..end);
                start = end;
                p
            })
            .collect(),
    )
}

/// Publishes at a steady rate to one publisher per collector until stopped.
pub(crate) struct Pacer {
    stop: Arc<AtomicBool>,
    /// Events handed to `publish` so far.
    pub published: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<conduit_publisher::Publisher>>>,
}

impl Pacer {
    /// Builds a publisher per address and starts publishing `rate` events/s in
    /// total, spread round-robin, cycling through `payloads`.
    pub async fn start(
        addrs: &[SocketAddr],
        rate: u64,
        payloads: Arc<Vec<Bytes>>,
    ) -> anyhow::Result<Pacer> {
        Pacer::start_with(addrs, rate, None, move |i| {
            payloads[(i % payloads.len() as u64) as usize].clone()
        })
        .await
    }

    /// Like [`Pacer::start`], with event `i`'s payload from `payload(i)` and at
    /// most `limit` events: publishes in steps of 10 ms (the count due is computed
    /// from the elapsed time, so a late step catches up).
    pub async fn start_with(
        addrs: &[SocketAddr],
        rate: u64,
        limit: Option<u64>,
        mut payload: impl FnMut(u64) -> Bytes + Send + 'static,
    ) -> anyhow::Result<Pacer> {
        let mut publishers = Vec::new();
        for addr in addrs {
            publishers.push(
                conduit_publisher::Publisher::builder()
                    .collectors([addr.to_string()])
                    .build()
                    .await
                    .with_context(|| format!("cannot build a publisher for {addr}"))?,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), published.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                let due = limit.map_or(due, |l| due.min(l));
                while sent < due {
                    let publisher = &publishers[(sent % publishers.len() as u64) as usize];
                    publisher.publish(TOPIC, payload(sent)).await?;
                    sent += 1;
                }
                p.store(sent, Ordering::Relaxed);
            }
            Ok(publishers)
        });
        Ok(Pacer {
            stop,
            published,
            task,
        })
    }

    /// Stops publishing, flushes and closes every publisher; returns
    /// (events published, events acknowledged).
    pub async fn finish(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let publishers = self.task.await.context("the publishing task panicked")??;
        let mut acked = 0;
        for p in publishers {
            tokio::time::timeout(Duration::from_secs(120), p.flush())
                .await
                .context("flush timed out after 120 s")??;
            acked += p.stats().acknowledged;
            tokio::time::timeout(Duration::from_secs(60), p.close())
                .await
                .context("close timed out after 60 s")??;
        }
        Ok((self.published.load(Ordering::Relaxed), acked))
    }
}

/// Records of topic `bench` stored under a root: every data file in `data/bench/`
/// and `streams_local/bench/` (all files must be closed).
pub(crate) async fn stored_records(storage: &SharedStorage) -> anyhow::Result<u64> {
    let topic = Topic::new(TOPIC)?;
    let mut total = 0;
    let mut stack = vec![
        Layout::topic_dir(View::Collector, &topic),
        Layout::topic_dir(View::Local, &topic),
    ];
    while let Some(dir) = stack.pop() {
        for entry in storage.list_or_empty(&dir).await? {
            if entry.is_dir {
                stack.push(entry.path);
            } else if entry.name.ends_with(DATA_FILE_SUFFIX) && !entry.name.starts_with('_') {
                let buf = storage.read(&entry.path).await?;
                let decoded = decode_file(&entry.path, &buf, Encoding::Lines)
                    .with_context(|| format!("cannot decode {}", entry.path))?;
                total += decoded.payloads.len() as u64;
            }
        }
    }
    Ok(total)
}

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

/// Runs `conduit bench seal-latency`.
pub async fn run(args: SealArgs) -> anyhow::Result<ExitCode> {
    let payloads = payload_pool(100_000, args.seed);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        match one_run(&args, run, payloads.clone()).await {
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

fn hdfs_base(args: &SealArgs) -> String {
    hdfs_base_or_default(args.hdfs.as_deref())
}

/// The HDFS root of a benchmark's `--hdfs` flag: the flag, else
/// `$CONDUIT_TEST_HDFS`, else `hdfs://127.0.0.1:9000`.
pub(crate) fn hdfs_base_or_default(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("CONDUIT_TEST_HDFS").ok())
        .unwrap_or_else(|| "hdfs://127.0.0.1:9000".to_owned())
}

/// Deletes a run's directory `sub` under the HDFS root `base` (warnings only).
pub(crate) async fn remove_hdfs_dir(base: &str, sub: &str) {
    match conduit_core::open_root(base).await {
        Ok(s) => {
            if let Err(e) = s.delete(sub, true).await {
                eprintln!("warning: cannot delete {base}/{sub}: {e}");
            }
        }
        Err(e) => eprintln!("warning: cannot open {base}: {e}"),
    }
}

async fn one_run(args: &SealArgs, run: u32, payloads: Arc<Vec<Bytes>>) -> anyhow::Result<SealRun> {
    let name = format!("conduit-bench-seal-{}-{run}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let hdfs = (args.backend == "hdfs").then(|| (hdfs_base(args), name.replace('-', "_")));
    let roots = BusRoots {
        dc1: match &hdfs {
            Some((base, sub)) => format!("{}/{sub}", base.trim_end_matches('/')),
            None => dir.join("dc1").display().to_string(),
        },
        dc2: dir.join("dc2").display().to_string(),
    };
    eprintln!("run {run}: bus in {} (dc1 {})", dir.display(), roots.dc1);
    let result = measure(args, run, &dir, roots, payloads).await;
    let keep = args.keep || result.is_err();
    if keep {
        eprintln!("kept {}", dir.display());
    } else {
        if let Some((base, sub)) = &hdfs {
            remove_hdfs_dir(base, sub).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn measure(
    args: &SealArgs,
    run: u32,
    dir: &Path,
    roots: BusRoots,
    payloads: Arc<Vec<Bytes>>,
) -> anyhow::Result<SealRun> {
    let mut bus = Bus::start(dir, roots, args.worker_interval_ms, &args.child_log_level).await?;
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
        "worker_interval_ms": args.worker_interval_ms,
        "poll_ms": args.poll_ms,
        "published": r.published,
        "acknowledged": r.acked,
        "stored": r.stored,
        "load_avg_before": r.load_before,
        "load_avg_after": r.load_after,
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
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
        "\nconduit bench seal-latency: {} events/s, {} minute(s) x {} run(s), dc1 on {}, worker interval {} ms, poll {} ms",
        args.rate, args.minutes, runs.len(), args.backend, args.worker_interval_ms, args.poll_ms
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
