//! The real `conduit` binary as a child process: [`CollectorProcess`] and
//! [`WorkerProcess`] (spawn on free ports, wait until ready, SIGKILL, SIGTERM,
//! logs), plus plain HTTP GETs and Prometheus samples for their listeners.
//!
//! [`conduit_bin`] builds the binary on first use (`env!("CARGO_BIN_EXE_conduit")`
//! exists only in the package that owns the binary), so a test never runs a stale
//! one. Each child writes its stderr (JSON logs) to a file under the test's log
//! directory; a child still running when its handle is dropped is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::wait::{self, TimedOut};

/// How long a child may take to say it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong with a child process or its HTTP listener.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The child could not be spawned (or signalled).
    #[error("cannot run {what}: {source}")]
    Spawn {
        /// The program and its role.
        what: String,
        /// Why spawning failed.
        source: std::io::Error,
    },
    /// The child did not say it was ready in time.
    #[error("{what} did not become ready within {after:?}; log:\n{log}")]
    NotReady {
        /// The program and its role.
        what: String,
        /// How long it was given.
        after: Duration,
        /// Its log so far.
        log: String,
    },
    /// A child armed to die before it is ready said it was ready.
    #[error("{what} became ready instead of dying at its crash point before that; log:\n{log}")]
    ReadyBeforeCrash {
        /// The program and its role.
        what: String,
        /// Its log so far.
        log: String,
    },
    /// A wait ran out.
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
    /// An HTTP request failed.
    #[error("GET http://{addr}{path}: {source}")]
    Http {
        /// The server's `host:port`.
        addr: String,
        /// The path requested.
        path: String,
        /// Why the request failed.
        source: std::io::Error,
    },
    /// An HTTP answer had no status line.
    #[error("GET http://{addr}{path}: bad response {response:?}")]
    BadResponse {
        /// The server's `host:port`.
        addr: String,
        /// The path requested.
        path: String,
        /// What came back.
        response: String,
    },
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root above testkit/")
        .to_path_buf()
}

/// Path of the `conduit` binary built for this test run (`target/<profile>/conduit`).
/// The first call in a test process runs `cargo build --bin conduit` (a no-op when
/// `cargo test --workspace` already built it).
pub fn conduit_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| workspace_bin("conduit-cli", "conduit"))
        .clone()
}

/// Path of binary `bin` of workspace package `package`, built with the test run's
/// profile into `target/<profile>/` (`cargo build -p <package> --bin <bin>`, a no-op
/// when it is up to date). Test binaries of another package than the binary's get no
/// `CARGO_BIN_EXE_<bin>`; this is what they use.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<bin>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .unwrap_or_else(|e| panic!("run cargo build -p {package} --bin {bin}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    profile_dir.join(bin)
}

/// A free TCP port on 127.0.0.1 (bound then released; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `--base-port` and `--base-http-port` for `conduit up`'s built-in layout whose
/// every derived port is free right now: Scribe `base`, `base + 1`; HTTP `http`,
/// `http + 1` (collectors) and `http + 10`, `http + 11` (workers). Two
/// independent [`free_port`]s leave the derived ones to chance, and a test running
/// beside may hold one.
pub fn free_up_ports() -> (u16, u16) {
    let bindable = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..200 {
        let (base, http) = (free_port(), free_port());
        let (Some(scribe_end), Some(http_end)) = (base.checked_add(1), http.checked_add(11)) else {
            continue;
        };
        let scribe = [base, scribe_end];
        let http_ports = [http, http + 1, http + 10, http_end];
        let overlap = scribe.iter().any(|p| http_ports.contains(p));
        if !overlap && scribe.iter().chain(&http_ports).all(|&p| bindable(p)) {
            return (base, http);
        }
    }
    panic!("no free ports for conduit up after 200 tries");
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// What a finished `conduit` command printed.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Its exit code (`-1` when killed by a signal).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (the log).
    pub stderr: String,
}

/// Runs `conduit verify` with `args` (within 60 s) and panics, naming `what`
/// and showing its output, unless it exits 0 (storage matches the manifests).
pub fn assert_verify_clean(args: &[&str], what: &str) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let verify = run_conduit(&all, b"", Duration::from_secs(60)).unwrap();
    assert_eq!(
        verify.code, 0,
        "conduit verify ({what}): {}\n{}",
        verify.stdout, verify.stderr
    );
}

/// Runs `conduit <args>` with `input` on its stdin and waits for it to exit; a
/// command still running after `deadline` is killed and reported as
/// [`Error::TimedOut`] (a command that must end, such as `tail --to`, hung).
pub fn run_conduit(args: &[&str], input: &[u8], deadline: Duration) -> Result<Ran, Error> {
    let what = format!("conduit {}", args.join(" "));
    let mut child = Command::new(conduit_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            what: what.clone(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // A command that does not read stdin closes it: not an error here.
        let _ = stdin.write_all(&input);
    });
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = r.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = pipe(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait::until_blocking(&format!("{what} to exit"), deadline, || {
        child.try_wait().ok().flatten()
    });
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            kill9(&mut child);
            return Err(e.into());
        }
    };
    let _ = writer.join();
    Ok(Ran {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
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
    /// Where its stderr (its log) goes.
    pub log_path: PathBuf,
}

impl CollectorProcess {
    /// Starts `conduit collector --root ROOT --id ID` plus `extra` flags on free
    /// ports and waits until it prints that it is ready.
    pub fn start(root: &str, id: &str, extra: &[&str], log_dir: &Path) -> Result<Self, Error> {
        Self::start_on(root, id, &free_addr(), &free_addr(), extra, log_dir)
    }

    /// [`CollectorProcess::start`] on given addresses (to restart on the same
    /// ports).
    pub fn start_on(
        root: &str,
        id: &str,
        thrift: &str,
        http: &str,
        extra: &[&str],
        log_dir: &Path,
    ) -> Result<Self, Error> {
        Self::start_limited(root, id, thrift, http, extra, log_dir, Spawn::default())
    }

    /// [`CollectorProcess::start_on`] inside network namespace `netns` (`ip
    /// netns exec`; see [`crate::netns`]): `thrift` and `http` are addresses of
    /// that namespace.
    pub fn start_in_netns(
        netns: &str,
        root: &str,
        id: &str,
        thrift: &str,
        http: &str,
        extra: &[&str],
        log_dir: &Path,
    ) -> Result<Self, Error> {
        let how = Spawn {
            netns: Some(netns.to_owned()),
            ..Spawn::default()
        };
        Self::start_limited(root, id, thrift, http, extra, log_dir, how)
    }

    /// [`CollectorProcess::start_on`] with the crash point `crash_at` armed
    /// (`CONDUIT_CRASH_AT`, see `conduit_core::storage::crash`): the process
    /// kills itself with SIGKILL at that storage call.
    pub fn start_crashing(
        root: &str,
        id: &str,
        thrift: &str,
        http: &str,
        extra: &[&str],
        log_dir: &Path,
        crash_at: &str,
    ) -> Result<Self, Error> {
        let how = Spawn::crashing(crash_at, false);
        Self::start_limited(root, id, thrift, http, extra, log_dir, how)
    }

    /// [`CollectorProcess::start_crashing`] for a crash point in the collector's
    /// startup (its recovery of what the previous run left): returns once the
    /// process has ended, before it was ready ([`wait_killed`] then checks it was
    /// SIGKILL), and fails with [`Error::ReadyBeforeCrash`] if it became ready
    /// instead, i.e. the crash point was not reached during startup.
    pub fn start_dying_in_recovery(
        root: &str,
        id: &str,
        thrift: &str,
        http: &str,
        extra: &[&str],
        log_dir: &Path,
        crash_at: &str,
    ) -> Result<Self, Error> {
        let how = Spawn::crashing(crash_at, true);
        Self::start_limited(root, id, thrift, http, extra, log_dir, how)
    }

    /// [`CollectorProcess::start`] with the process's open-file limit
    /// (`RLIMIT_NOFILE`, soft and hard) set to `nofile`, as `ulimit -n` sets it in
    /// the shell that then runs the collector.
    pub fn start_with_fd_limit(
        root: &str,
        id: &str,
        extra: &[&str],
        log_dir: &Path,
        nofile: u64,
    ) -> Result<Self, Error> {
        let (thrift, http) = (free_addr(), free_addr());
        let how = Spawn {
            nofile: Some(nofile),
            ..Spawn::default()
        };
        Self::start_limited(root, id, &thrift, &http, extra, log_dir, how)
    }

    fn start_limited(
        root: &str,
        id: &str,
        thrift: &str,
        http: &str,
        extra: &[&str],
        log_dir: &Path,
        how: Spawn,
    ) -> Result<Self, Error> {
        let what = format!("conduit collector {id}");
        let dies_before_ready = how.dies_before_ready;
        let log_path = log_dir.join(format!("collector-{id}-{}.log", free_port()));
        let mut child = spawn_limited(
            &what,
            &[
                &["collector", "--root", root, "--id", id][..],
                &["--listen", thrift, "--http", http],
                extra,
            ]
            .concat(),
            &log_path,
            Stdio::piped(),
            how,
        )?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("collector ready") {
                    let _ = tx.send(line);
                }
            }
        });
        match (rx.recv_timeout(READY_TIMEOUT), dies_before_ready) {
            // Ready, as it should be; or, armed to die in its startup, its stdout
            // closed before it was ready: it ended, as it should.
            (Ok(_), false) | (Err(mpsc::RecvTimeoutError::Disconnected), true) => {
                Ok(CollectorProcess {
                    child,
                    thrift_addr: thrift.to_owned(),
                    http_addr: http.to_owned(),
                    log_path,
                })
            }
            (Ok(_), true) => {
                kill9(&mut child);
                Err(Error::ReadyBeforeCrash {
                    what,
                    log: read_log(&log_path),
                })
            }
            (Err(_), _) => {
                kill9(&mut child);
                Err(Error::NotReady {
                    what,
                    after: READY_TIMEOUT,
                    log: read_log(&log_path),
                })
            }
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Sends SIGTERM and waits (deadline 30 s) for the exit status.
    pub fn terminate(&mut self) -> Result<ExitStatus, Error> {
        terminate(&mut self.child, "conduit collector")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Its `/health` body as (storage healthy, spooled bytes), or `None` when
    /// it does not answer with them.
    pub fn health(&self) -> Option<(bool, u64)> {
        let (_, body) = http_get(&self.http_addr, "/health").ok()?;
        let json: serde_json::Value = serde_json::from_str(body.get(body.find('{')?..)?).ok()?;
        Some((
            json["storage_healthy"].as_bool()?,
            json["spooled_bytes"].as_u64()?,
        ))
    }

    /// Its `/metrics` text (asserts `200`).
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(&self.http_addr, "/metrics")
            .unwrap_or_else(|e| panic!("{e}; collector log:\n{}", self.log()));
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// A `conduit worker` child process.
#[derive(Debug)]
pub struct WorkerProcess {
    /// The child.
    pub child: Child,
    /// HTTP address (`/health`, `/metrics`).
    pub http_addr: String,
    /// Where its stderr (its log) goes.
    pub log_path: PathBuf,
}

impl WorkerProcess {
    /// Starts `conduit worker` with `args` (`--config ...`, `--cluster ...`) on a
    /// free HTTP port and waits until `/health` answers `200`.
    pub fn start(args: &[&str], log_dir: &Path) -> Result<Self, Error> {
        let worker = Self::spawn(args, &free_addr(), log_dir)?;
        worker.wait_healthy()
    }

    /// [`WorkerProcess::start`] inside network namespace `netns` (`ip netns
    /// exec`; see [`crate::netns`]), serving HTTP on `http`, an address of that
    /// namespace the test can reach.
    pub fn start_in_netns(
        netns: &str,
        args: &[&str],
        http: &str,
        log_dir: &Path,
    ) -> Result<Self, Error> {
        let how = Spawn {
            netns: Some(netns.to_owned()),
            ..Spawn::default()
        };
        Self::spawn_how(args, http, log_dir, how)?.wait_healthy()
    }

    /// [`WorkerProcess::spawn`] with the crash point `crash_at` armed
    /// (`CONDUIT_CRASH_AT`): the process kills itself with SIGKILL at that
    /// storage call. See [`wait_killed`].
    pub fn spawn_crashing(
        args: &[&str],
        http: &str,
        log_dir: &Path,
        crash_at: &str,
    ) -> Result<Self, Error> {
        let how = Spawn {
            env: vec![(CRASH_AT.to_owned(), crash_at.to_owned())],
            ..Spawn::default()
        };
        Self::spawn_how(args, http, log_dir, how)
    }

    fn wait_healthy(self) -> Result<Self, Error> {
        let worker = self;
        let healthy = wait::until_blocking("worker /health", READY_TIMEOUT, || {
            matches!(http_get(&worker.http_addr, "/health"), Ok((200, _))).then_some(())
        });
        match healthy {
            Ok(()) => Ok(worker),
            Err(_) => Err(Error::NotReady {
                what: "conduit worker".to_owned(),
                after: READY_TIMEOUT,
                log: worker.log(),
            }),
        }
    }

    /// Starts `conduit worker` with `args` and `--http <http>` without waiting (a
    /// standby worker does not answer `/health` with `200`).
    pub fn spawn(args: &[&str], http: &str, log_dir: &Path) -> Result<Self, Error> {
        Self::spawn_how(args, http, log_dir, Spawn::default())
    }

    fn spawn_how(args: &[&str], http: &str, log_dir: &Path, how: Spawn) -> Result<Self, Error> {
        let log_path = log_dir.join(format!("worker-{}.log", free_port()));
        let child = spawn_limited(
            "conduit worker",
            &[&["worker"][..], args, &["--http", http]].concat(),
            &log_path,
            Stdio::null(),
            how,
        )?;
        Ok(WorkerProcess {
            child,
            http_addr: http.to_owned(),
            log_path,
        })
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Its `/metrics` text (asserts `200`).
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(&self.http_addr, "/metrics")
            .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", self.log()));
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// Where and how a child runs: inside a network namespace, with an open-file
/// limit.
#[derive(Debug, Default)]
struct Spawn {
    netns: Option<String>,
    nofile: Option<u64>,
    /// Extra environment variables (e.g. the `CONDUIT_CRASH_AT` test hook).
    env: Vec<(String, String)>,
    /// The child must die before it says it is ready (a crash point in its
    /// startup): it is returned once its stdout closes.
    dies_before_ready: bool,
}

impl Spawn {
    /// With the crash point `crash_at` armed (`CONDUIT_CRASH_AT`).
    fn crashing(crash_at: &str, dies_before_ready: bool) -> Spawn {
        Spawn {
            env: vec![(CRASH_AT.to_owned(), crash_at.to_owned())],
            dies_before_ready,
            ..Spawn::default()
        }
    }
}

/// Spawns `conduit --log-format json <args>` with stderr to `log_path`, as
/// `how` says: inside a network namespace (`ip netns exec NS conduit ...`),
/// with the open-file limit set first (`sh -c 'ulimit -n N && exec conduit
/// ...'`).
fn spawn_limited(
    what: &str,
    args: &[&str],
    log_path: &Path,
    stdout: Stdio,
    how: Spawn,
) -> Result<Child, Error> {
    let err = |source| Error::Spawn {
        what: what.to_owned(),
        source,
    };
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let log = std::fs::File::create(log_path).map_err(err)?;
    // `ip netns exec` and the shell's `exec` keep the process id, so signals
    // reach conduit itself.
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if let Some(ns) = &how.netns {
        argv.extend(["ip", "netns", "exec", ns].map(Into::into));
    }
    if let Some(n) = how.nofile {
        argv.extend(
            [
                "sh",
                "-c",
                "ulimit -n \"$0\" && exec \"$@\"",
                &n.to_string(),
            ]
            .map(Into::into),
        );
    }
    argv.push(conduit_bin().into());
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    command.envs(how.env.iter().map(|(k, v)| (k, v)));
    command
        .args(["--log-format", "json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(err)
}

/// The environment variable of the crash-point test hook
/// (`conduit_core::storage::crash::ENV`).
pub const CRASH_AT: &str = "CONDUIT_CRASH_AT";

/// Waits (up to `timeout`) until `child`, started with a crash point, has
/// killed itself with SIGKILL; panics naming `what` (with `log`) if it is still
/// running or exited otherwise, with its log (`log_path`).
pub fn wait_killed(child: &mut Child, what: &str, timeout: Duration, log_path: &Path) {
    let log = || read_log(log_path);
    use std::os::unix::process::ExitStatusExt;
    let status = wait::until_blocking(&format!("{what} to reach its crash point"), timeout, || {
        child.try_wait().ok().flatten()
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", log()));
    assert_eq!(
        status.signal(),
        Some(9),
        "{what} ended by SIGKILL at its crash point, not {status:?}; log:\n{}",
        log()
    );
}

/// SIGKILL and reap, unless it already exited.
/// Sends SIGKILL to a child still running and reaps it.
pub fn kill9(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGTERM, then wait (deadline 30 s) for the exit status; `what` names the
/// child in errors.
pub fn terminate(child: &mut Child, what: &str) -> Result<ExitStatus, Error> {
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .map_err(|source| Error::Spawn {
            what: format!("kill -TERM {pid} ({what})"),
            source,
        })?;
    Ok(wait::until_blocking(
        &format!("{what} to exit"),
        EXIT_TIMEOUT,
        || child.try_wait().ok().flatten(),
    )?)
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Plain-HTTP GET against 127.0.0.1 (no client dependency): (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), Error> {
    let io = |source| Error::Http {
        addr: addr.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut stream = std::net::TcpStream::connect(addr).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::BadResponse {
            addr: addr.to_owned(),
            path: path.to_owned(),
            response: response.clone(),
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
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

/// The lines a child prints on its standard output, collected by a thread as they
/// come, so a test can wait for one with a deadline and still show all of them
/// when it fails (`conduit up`'s readiness table and instructions).
#[derive(Debug)]
pub struct StdoutLines {
    rx: mpsc::Receiver<(Instant, String)>,
    /// Every line received so far, in order.
    pub seen: Vec<String>,
    /// When each line of [`StdoutLines::seen`] was read from the pipe.
    pub times: Vec<Instant>,
    /// The child closed its standard output and every line was received.
    closed: bool,
}

impl StdoutLines {
    /// Takes `child`'s piped standard output.
    pub fn of(child: &mut Child) -> StdoutLines {
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        StdoutLines {
            rx,
            seen: Vec::new(),
            times: Vec::new(),
            closed: false,
        }
    }

    /// Waits until a line received so far matches `pred` (`what` names it in the
    /// error); returns its index in [`StdoutLines::seen`].
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<usize, TimedOut> {
        self.wait_until(what, timeout, |seen| seen.iter().position(|l| pred(l)))
    }

    /// Waits until `cond` of the lines received so far is `Some`.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T, TimedOut> {
        wait::until_blocking(what, timeout, || {
            while let Ok(line) = self.rx.try_recv() {
                self.seen.push(line.1);
                self.times.push(line.0);
            }
            cond(&self.seen)
        })
    }

    /// Takes the lines received since the last call into [`StdoutLines::seen`];
    /// returns how many there are now.
    pub fn poll(&mut self) -> usize {
        loop {
            match self.rx.try_recv() {
                Ok((at, line)) => {
                    self.seen.push(line);
                    self.times.push(at);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.seen.len()
    }

    /// Whether the child closed its standard output and every line it wrote is
    /// in [`StdoutLines::seen`] (after a [`StdoutLines::poll`]).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Every line received so far, one per line.
    pub fn text(&self) -> String {
        self.seen.join("\n")
    }
}
