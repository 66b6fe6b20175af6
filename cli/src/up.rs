//! `conduit up`: the whole bus on one machine, with no other service.
//!
//! Without `--config` it writes `<data-dir>/conduit.toml` (kept if it exists, so
//! it can be edited): two simulated datacenters `dc1` and `dc2` as two local roots
//! under `<data-dir>`, every topic merged into `dc1` from both and mirrored to
//! `dc2`. With `--config` it runs that layout instead (for example a cluster on
//! HDFS).
//!
//! It then supervises one `conduit collector` and one `conduit worker` per
//! cluster as child processes of this same binary, each logging to
//! `<data-dir>/logs/<name>.log`. Ports: the i-th cluster (in config order, from 0)
//! gets Scribe `--base-port + i`, collector HTTP `--base-http-port + i` and worker
//! HTTP `--base-http-port + 10 + i`. A child that exits on its own is restarted
//! with capped backoff. Before starting anything it bind-probes every port; if one
//! is in use it names the port, what it was for and the process holding it (pid
//! and command line, and its `/health` for an HTTP port) and exits 1 without
//! starting a child. Once every child answers `/health`, it prints a readiness
//! table (process, pid, ports, health), the status page's URL (the first
//! worker's HTTP port, `/`) and what to type in another terminal to publish and
//! to tail. Ctrl-C (or SIGTERM) stops every
//! child with SIGTERM, waits for their clean shutdown (killing any that take more
//! than `--stop-timeout` seconds) and exits.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use conduit_core::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Arguments of `conduit up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Run this layout instead of the built-in two local datacenters.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,

    /// Where the built-in layout keeps its data, its generated config and the
    /// children's logs.
    #[arg(long, value_name = "DIR", default_value = "./conduit-data")]
    data_dir: PathBuf,

    /// Scribe port of the first cluster's collector (the next cluster gets +1).
    #[arg(long, default_value_t = conduit_core::scribe::DEFAULT_PORT)]
    base_port: u16,

    /// HTTP port of the first collector (`/metrics`, `/health`); workers use +10.
    #[arg(long, default_value_t = conduit_core::config::DEFAULT_HTTP_PORT)]
    base_http_port: u16,

    /// Seconds to wait for a child's clean shutdown before killing it.
    #[arg(long, default_value_t = 20)]
    stop_timeout: u64,
}

/// The built-in layout: two local datacenters, merged into dc1, mirrored to dc2.
fn default_config(data_dir: &Path) -> String {
    let dc1 = data_dir.join("dc1");
    let dc2 = data_dir.join("dc2");
    format!(
        r#"# Written by `conduit up`: two simulated datacenters on local disk.
# Edit freely; `conduit up` keeps this file. Reference: conf/conduit.toml.

[clusters.dc1]
root = "{}"

[clusters.dc2]
root = "{}"

[topic_defaults]
encoding = "lines"
merge_into = "dc1"
merge_sources = ["dc1", "dc2"]
mirrors = ["dc2"]
compact = true
"#,
        dc1.display(),
        dc2.display()
    )
}

#[derive(Debug)]
struct Supervised {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    health: String,
    /// Its listening addresses, as `(what, address)` (`scribe`, `http`).
    listens: Vec<(&'static str, String)>,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
}

impl Supervised {
    fn spawn(&mut self, exe: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening log {}", self.log.display()))?;
        let child = Command::new(exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }
}

/// What `/health` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    /// The answer was a 200.
    ok: bool,
    /// Its `status` field (`ok`, `unhealthy`), or the status line when the body
    /// is not conduit's JSON.
    status: String,
}

/// GET `/health` on `addr` (within 2 s).
async fn health(addr: &str) -> Option<Health> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        (&mut stream)
            .take(64 << 10)
            .read_to_end(&mut buf)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&buf);
        let status_line = text.lines().next().unwrap_or_default().to_owned();
        let ok = status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.0 200");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let status = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_owned))
            .unwrap_or(status_line);
        Some(Health { ok, status })
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Whether `/health` on `addr` answers 200.
async fn healthy(addr: &str) -> bool {
    health(addr).await.is_some_and(|h| h.ok)
}

/// Fails, naming each busy port, what it was for and who holds it, when any of
/// the children's addresses cannot be bound.
async fn ensure_ports_free(children: &[Supervised], args: &UpArgs) -> anyhow::Result<()> {
    let mut busy = Vec::new();
    for child in children {
        for (what, addr) in &child.listens {
            let Some(e) = crate::ports::busy(addr) else {
                continue;
            };
            let mut line = format!("{addr} ({what} of {}): ", child.name);
            if !crate::ports::in_use(&e) {
                line.push_str(&format!("cannot bind: {e}"));
                busy.push(line);
                continue;
            }
            line.push_str("in use");
            let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
            match port.and_then(crate::ports::holder) {
                Some(holder) => line.push_str(&format!(" by {holder}")),
                None => line.push_str(" by a process this user cannot see"),
            }
            if *what == "http" {
                if let Some(h) = health(addr).await {
                    line.push_str(&format!("; its /health answers {}", h.status));
                }
            }
            busy.push(line);
        }
    }
    if busy.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "cannot start: {} in use, nothing started:\n  {}\nstop what holds them (another `conduit up`: Ctrl-C it), \
         or choose other ports with --base-port (now {}) and --base-http-port (now {})",
        if busy.len() == 1 { "a port is" } else { "ports are" },
        busy.join("\n  "),
        args.base_port,
        args.base_http_port
    )
}

/// Sends SIGTERM to a child process.
fn terminate(child: &Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Runs `conduit up` until Ctrl-C.
pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the conduit binary")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let config_path = match &args.config {
        Some(path) => PathBuf::from(path),
        None => {
            let path = data_dir.join("conduit.toml");
            if !path.exists() {
                std::fs::write(&path, default_config(&data_dir))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            path
        }
    };
    let config = Config::load(&config_path)?;
    crate::check::ensure_something_to_run(&config_path, &config)?;
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let config_arg = config_path.display().to_string();

    let mut children = Vec::new();
    let mut ports = Vec::new();
    for (i, name) in config.clusters.keys().enumerate() {
        let i = i as u16;
        let scribe = format!("127.0.0.1:{}", args.base_port + i);
        let http = format!("127.0.0.1:{}", args.base_http_port + i);
        let worker_http = format!("127.0.0.1:{}", args.base_http_port + 10 + i);
        ports.push((
            name.clone(),
            scribe.clone(),
            http.clone(),
            worker_http.clone(),
        ));
        let scribe_addr = scribe.clone();
        children.push(Supervised {
            name: format!("collector-{name}"),
            args: vec![
                "collector".into(),
                "--config".into(),
                config_arg.clone(),
                "--cluster".into(),
                name.clone(),
                "--id".into(),
                "c1".into(),
                "--listen".into(),
                scribe.clone(),
                "--http".into(),
                http.clone(),
            ],
            log: logs.join(format!("collector-{name}.log")),
            listens: vec![("scribe", scribe_addr), ("http", http.clone())],
            health: http,
            child: None,
            restarts: 0,
            next_start: Instant::now(),
        });
        children.push(Supervised {
            name: format!("worker-{name}"),
            args: vec![
                "worker".into(),
                "--config".into(),
                config_arg.clone(),
                "--cluster".into(),
                name.clone(),
                "--http".into(),
                worker_http.clone(),
            ],
            log: logs.join(format!("worker-{name}.log")),
            listens: vec![("http", worker_http.clone())],
            health: worker_http,
            child: None,
            restarts: 0,
            next_start: Instant::now(),
        });
    }
    ensure_ports_free(&children, &args).await?;
    for child in &mut children {
        child.spawn(&exe)?;
        tracing::info!(name = %child.name, log = %child.log.display(), "started");
    }

    let shutdown = crate::signals::wait_for_shutdown();
    tokio::pin!(shutdown);
    let mut announced = false;
    let mut warned = false;
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // Restart children that exited on their own.
        for child in &mut children {
            let exited = match child.child.as_mut() {
                Some(c) => c.try_wait()?.map(Some),
                None => Some(None),
            };
            if let Some(status) = exited {
                if child.child.is_some() {
                    child.child = None;
                    child.restarts += 1;
                    let backoff = Duration::from_secs(1 << child.restarts.min(5));
                    child.next_start = Instant::now() + backoff;
                    tracing::warn!(
                        name = %child.name,
                        status = ?status,
                        restart_in_s = backoff.as_secs(),
                        log = %child.log.display(),
                        "child exited; restarting"
                    );
                } else if Instant::now() >= child.next_start {
                    child.spawn(&exe)?;
                    tracing::info!(name = %child.name, restarts = child.restarts, "restarted");
                }
            }
        }
        if !announced {
            let mut all = true;
            for child in &children {
                if !healthy(&child.health).await {
                    all = false;
                    break;
                }
            }
            if all {
                announced = true;
                let table = readiness_table(&children).await;
                print_ready(
                    &exe,
                    &config_arg,
                    &data_dir,
                    &ports,
                    &table,
                    started.elapsed(),
                );
            } else if !warned && started.elapsed() > Duration::from_secs(60) {
                warned = true;
                tracing::warn!(logs = %logs.display(), "not every child is healthy after 60 s; see the logs");
            }
        }
    }

    println!("stopping: SIGTERM to {} children", children.len());
    for child in &children {
        if let Some(c) = &child.child {
            terminate(c);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.stop_timeout);
    let mut clean = true;
    for child in &mut children {
        if let Some(mut c) = child.child.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    clean = false;
                    eprintln!(
                        "{} exited with {status}; see {}",
                        child.name,
                        child.log.display()
                    );
                }
                Ok(Err(e)) => {
                    clean = false;
                    eprintln!("{}: {e}", child.name);
                }
                Err(_) => {
                    clean = false;
                    eprintln!(
                        "{} did not stop within {}s; killing it",
                        child.name, args.stop_timeout
                    );
                    let _ = c.kill().await;
                }
            }
        }
    }
    println!("conduit stopped");
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_ready(
    exe: &Path,
    config: &str,
    data_dir: &Path,
    ports: &[(String, String, String, String)],
    table: &str,
    took: Duration,
) {
    let exe = exe.display();
    let (first, scribe, _, _) = &ports[0];
    println!();
    println!(
        "conduit is up in {:.1}s (Ctrl-C stops everything)",
        took.as_secs_f64()
    );
    println!();
    print!("{table}");
    println!("  config: {config}");
    println!("  data and logs: {}", data_dir.display());
    println!();
    println!("In another terminal, publish:");
    println!("  seq 1 1000 | {exe} publish --topic clicks --collector {scribe}");
    println!("tail it as it arrives:");
    println!("  {exe} tail --config {config} --cluster {first} --topic clicks --from 10m");
    println!("list the sealed minutes and audit them:");
    println!(
        "  {exe} ls --config {config} --cluster {first} --topic clicks --view local --from 10m"
    );
    println!("  {exe} audit --config {config} --topic clicks --from 10m --to 1m");
    println!();
}

/// The readiness table: each child's name, pid, listening addresses and
/// `/health` status, then the status page's URL (the first worker's HTTP port)
/// and where `/metrics` is.
async fn readiness_table(children: &[Supervised]) -> String {
    let mut rows = vec![[
        "process".to_owned(),
        "pid".to_owned(),
        "listens".to_owned(),
        "health".to_owned(),
    ]];
    for child in children {
        let pid = child
            .child
            .as_ref()
            .and_then(Child::id)
            .map_or("-".to_owned(), |p| p.to_string());
        let listens: Vec<String> = child
            .listens
            .iter()
            .map(|(what, addr)| format!("{what} {addr}"))
            .collect();
        let status = health(&child.health)
            .await
            .map_or("no answer".to_owned(), |h| h.status);
        rows.push([child.name.clone(), pid, listens.join(", "), status]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        out.push_str(&format!(
            "  {:<w0$}  {:>w1$}  {:<w2$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    out.push('\n');
    if let Some(worker) = children.iter().find(|c| c.name.starts_with("worker-")) {
        out.push_str(&format!("  status page: http://{}/\n", worker.health));
    }
    out.push_str("  metrics: http://<http address>/metrics of each process\n");
    out
}
