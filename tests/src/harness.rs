//! Starting real processes and waiting on conditions with deadlines.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// Path of the `conduit` binary built for this test run (`target/<profile>/conduit`).
/// The first call in a test process runs `cargo build --bin conduit` (a no-op when
/// `cargo test --workspace` already built it) so a test never runs a stale binary.
pub fn conduit_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>/conduit
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile> directory");
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "--bin", "conduit"]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd
                .current_dir(workspace_root())
                .status()
                .expect("run cargo build --bin conduit");
            assert!(status.success(), "cargo build --bin conduit failed");
            profile_dir.join("conduit")
        })
        .clone()
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A free TCP port on 127.0.0.1 (bound then released; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `condition` every 20 ms until it returns `Some` or the deadline passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = condition() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a Python module imports. `.ci/run` installs the ones the tests use.
pub fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Fails the test loudly when a required external tool is missing in CI, and skips
/// with a loud line on a developer machine without it.
pub fn require_python(module: &str) -> bool {
    if python_has(module) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("python module {module} is required in CI (.ci/run installs it)");
    }
    eprintln!("SKIPPED: python module {module} is not installed (pip install {module})");
    false
}

/// A `conduit collector` child process.
#[derive(Debug)]
pub struct CollectorProcess {
    /// The child.
    pub child: Child,
    /// Scribe address.
    pub thrift_addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// Everything it printed on stderr so far is collected here by a thread.
    pub log_path: PathBuf,
}

impl CollectorProcess {
    /// Starts `conduit collector --root ROOT --id ID` plus `extra` flags on free
    /// ports and waits until it prints that it is ready.
    pub fn start(root: &str, id: &str, extra: &[&str], log_dir: &Path) -> anyhow::Result<Self> {
        let thrift = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        Self::start_on(root, id, &thrift, &http, extra, log_dir)
    }

    /// Like [`CollectorProcess::start`] on given addresses (to restart on the same ports).
    pub fn start_on(
        root: &str,
        id: &str,
        thrift: &str,
        http: &str,
        extra: &[&str],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log_path = log_dir.join(format!("collector-{id}-{}.log", free_port()));
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(conduit_bin())
            .args([
                "--log-format",
                "json",
                "collector",
                "--root",
                root,
                "--id",
                id,
            ])
            .args(["--listen", thrift, "--http", http])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .spawn()
            .context("spawn conduit collector")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("collector ready") {
                    let _ = tx.send(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => Ok(CollectorProcess {
                child,
                thrift_addr: thrift.to_string(),
                http_addr: http.to_string(),
                log_path,
            }),
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                Err(anyhow!(
                    "collector did not become ready in 60 s; log:\n{log}"
                ))
            }
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status (deadline 30 s).
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        wait_for("collector exit", Duration::from_secs(30), || {
            self.child.try_wait().ok().flatten()
        })
    }

    /// The collector's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Plain-HTTP GET against 127.0.0.1 (no client dependency): returns (status, body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad http response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Value of an unlabelled or labelled sample in Prometheus/OpenMetrics text.
pub fn metric(text: &str, name_with_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_with_labels) && l[name_with_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
