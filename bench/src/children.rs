//! The processes a scenario runs: the `conduit` executable, one child that prints
//! a ready line ([`Proc`]), and the two-datacenter bus of collectors and workers
//! ([`Bus`]).
//!
//! Collectors and workers are real `conduit collector` / `conduit worker`
//! processes, not tasks in this process: what is measured is what a user runs,
//! and their memory and CPU can be read from `/proc` apart from the benchmark's
//! own (publishers, consumers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use conduit_core::SharedStorage;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a child may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The `conduit` executable the scenarios start collectors, workers and `conduit
/// audit` from.
#[derive(Debug, Clone)]
pub struct Conduit {
    path: PathBuf,
}

impl Conduit {
    /// `explicit` (`--conduit PATH` or `$CONDUIT_BIN`) if given, else the `conduit`
    /// next to this executable (`target/release/conduit` beside
    /// `target/release/conduit-bench`).
    pub fn locate(explicit: Option<&Path>) -> anyhow::Result<Conduit> {
        if let Some(path) = explicit {
            if !path.is_file() {
                bail!("--conduit {}: no such file", path.display());
            }
            return Ok(Conduit {
                path: path.to_owned(),
            });
        }
        let me = std::env::current_exe().context("cannot find this executable's path")?;
        let beside = me.with_file_name(format!("conduit{}", std::env::consts::EXE_SUFFIX));
        if !beside.is_file() {
            bail!(
                "no conduit executable next to {} (looked for {}): build both with \
                 `cargo build --release --bin conduit --bin conduit-bench`, or pass --conduit PATH",
                me.display(),
                beside.display()
            );
        }
        Ok(Conduit { path: beside })
    }

    /// The executable's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command running this executable.
    pub fn command(&self) -> tokio::process::Command {
        tokio::process::Command::new(&self.path)
    }
}

/// A `conduit` child process that printed a ready line.
#[derive(Debug)]
pub struct Proc {
    /// `collector dc1`, `worker dc2`, ...: how errors and tables name it.
    pub name: String,
    /// The child; killed if this is dropped before [`Proc::stop`].
    child: tokio::process::Child,
    /// Its pid (for `/proc` samples and signals).
    pub pid: u32,
    /// The address in its ready line (Scribe for a collector, HTTP for a worker).
    pub addr: SocketAddr,
}

impl Proc {
    /// Starts `conduit --log-level L <args>` with stderr into `log` (or this
    /// process's stderr for `None`) and waits up to 120 s for a stdout line
    /// starting with `ready_prefix`, followed by an address.
    pub async fn spawn(
        conduit: &Conduit,
        name: &str,
        log_level: &str,
        args: &[String],
        log: Option<&Path>,
        ready_prefix: &str,
    ) -> anyhow::Result<Proc> {
        let stderr = match log {
            Some(log) => Stdio::from(
                std::fs::File::create(log)
                    .with_context(|| format!("cannot create {}", log.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let log_hint = match log {
            Some(log) => format!("log {}", log.display()),
            None => "its log is on stderr".to_owned(),
        };
        let mut child = conduit
            .command()
            .arg("--log-level")
            .arg(log_level)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {name} ({})", conduit.path().display()))?;
        let pid = child.id().context("no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
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
                bail!("the {name} exited before it was ready ({status}); {log_hint}")
            }
            Ok(Err(e)) => return Err(e.context(format!("cannot read the {name}'s ready line"))),
            Err(_) => bail!(
                "the {name} was not ready within {} s; {log_hint}",
                READY_TIMEOUT.as_secs()
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
            // Fails only if it is gone already: its exit status says how.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "the {} did not stop within {} s of SIGTERM",
                    self.name,
                    timeout.as_secs()
                )
            })??;
        if !status.success() {
            bail!("the {} exited with {status} after SIGTERM", self.name);
        }
        Ok(())
    }

    /// SIGKILL, and waits for the exit (a failed run's cleanup).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Where a bus keeps its data.
#[derive(Debug, Clone)]
pub struct BusRoots {
    /// Root of dc1 (a directory or an HDFS URI).
    pub dc1: String,
    /// Root of dc2 (a directory).
    pub dc2: String,
}

/// Two datacenters on this machine: a collector and a worker each, processes;
/// every topic merged into dc1 from both and mirrored to dc2 (the layout of
/// `conduit up`).
pub struct Bus {
    /// The config every child reads.
    pub config: PathBuf,
    /// Storage of dc1 and dc2, in that order.
    pub storage: [SharedStorage; 2],
    /// Collectors of dc1 and dc2.
    pub collectors: Vec<Proc>,
    /// Workers of dc1 and dc2.
    pub workers: Vec<Proc>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("config", &self.config)
            .field("collectors", &self.collectors)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Writes the config into `dir` (every topic in batch format `format`,
    /// `zstd` or `gzip`) and starts both collectors and both workers (logs in
    /// `dir/logs/`); `worker_extra` is appended to the `[worker]` table (lines of
    /// TOML, each ending with a newline).
    pub async fn start(
        conduit: &Conduit,
        dir: &Path,
        roots: BusRoots,
        format: &str,
        worker_interval_ms: u64,
        worker_extra: &str,
        log_level: &str,
    ) -> anyhow::Result<Bus> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let config = dir.join("conduit.toml");
        std::fs::write(
            &config,
            format!(
                "# Written by conduit-bench: two datacenters, merged into dc1, mirrored to dc2.\n\
                 [clusters.dc1]\nroot = {:?}\n\n[clusters.dc2]\nroot = {:?}\n\n\
                 [topic_defaults]\nencoding = \"lines\"\nformat = {format:?}\nmerge_into = \"dc1\"\n\
                 merge_sources = [\"dc1\", \"dc2\"]\nmirrors = [\"dc2\"]\ncompact = false\n\n\
                 [worker]\ninterval_ms = {worker_interval_ms}\n{worker_extra}",
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
                    conduit,
                    &format!("collector {dc}"),
                    log_level,
                    &args,
                    Some(&log),
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
                    conduit,
                    &format!("worker {dc}"),
                    log_level,
                    &args,
                    Some(&log),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_conduit_must_exist() {
        let err = Conduit::locate(Some(Path::new("/nonexistent/conduit"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--conduit /nonexistent/conduit: no such file"
        );
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("conduit");
        std::fs::write(&exe, b"").unwrap();
        assert_eq!(Conduit::locate(Some(&exe)).unwrap().path(), exe);
    }
}
