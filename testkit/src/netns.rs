//! A second datacenter on this machine: a Linux network namespace joined to the
//! test's (root) namespace by two veth pairs, whose inter-datacenter link can be
//! cut and slowed down, and a real HDFS running inside it.
//!
//! ```text
//!   root namespace ("west")                 namespace "w6net-<pid>-<n>" ("east")
//!   10.A.B.1  <-- wan veth pair -->  10.A.B.2   HDFS NameNode + DataNode bind here
//!   10.A.C.1  <-- lan veth pair -->  10.A.C.2   east's collectors and worker listen here
//! ```
//!
//! * **wan**: what [`Link::cut`] and [`Link::rate_limit`] act on. Processes of the
//!   root namespace (west's worker) reach east's HDFS through it.
//! * **lan**: stays up; the test's own Scribe clients and `/metrics` scrapes use
//!   it to reach east's services, as east's own clients would reach them inside
//!   their datacenter during a partition between datacenters.
//!
//! A **cut** adds a blackhole route to west's wan address inside the namespace:
//! packets from west arrive but every answer vanishes, so west sees what a real
//! partition looks like (no reset, no "unreachable": connections and calls
//! simply never finish, until its own timeouts fire), and east's calls to west
//! fail at once. `tc netem` (delay, loss) is not available in this kernel (no
//! `sch_netem`), nor are tc filters (`matchall`, `u32`), so degradation is a
//! `tbf` rate limit on both ends of the wan pair.
//!
//! Everything is removed on drop (processes started inside are the caller's to
//! stop first: [`NetHdfs`] stops its daemons on drop), also when a test fails.
//! Needs root and `ip` (iproute2) and `tc`: [`Link::create`] fails under `CI`
//! with a message naming what is missing (see [`crate::gate`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::gate;
use crate::process::{free_port, workspace_root};

/// Runs `program args` and returns its output, or a message naming the command
/// and its stderr.
fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip args`, panicking with the command and its stderr.
fn ip(args: &[&str]) {
    run("ip", args).unwrap_or_else(|e| panic!("{e}"));
}

/// A network namespace (east) and its two veth pairs to the root namespace.
#[derive(Debug)]
pub struct Link {
    /// The namespace's name (`w6net-<pid>-<n>`).
    pub ns: String,
    /// West's (root namespace) address on the wan pair.
    pub west_wan: String,
    /// East's address on the wan pair (east's HDFS binds here).
    pub east_wan: String,
    /// East's address on the lan pair (east's services listen here).
    pub east_lan: String,
    /// Root-side interface names of the wan and lan pairs.
    wan: String,
    lan: String,
    /// Namespace-side name of the wan pair.
    wan_peer: String,
}

impl Link {
    /// Creates the namespace and both pairs, up and addressed; `None` after
    /// [`gate::missing`] when this machine cannot (not root, no `ip`, no netns
    /// support).
    pub fn create(test: &str) -> Option<Link> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes.
        let tag = format!("{}{}", n % 10, pid % 1_000_000);
        // A /24 pair per namespace, from the process id, so concurrent test
        // binaries do not share addresses.
        let a = 100 + pid % 100;
        let b = (pid / 100 % 60) * 4 + n % 4 * 2;
        let link = Link {
            ns: format!("w6net-{pid}-{n}"),
            west_wan: format!("10.{a}.{b}.1"),
            east_wan: format!("10.{a}.{b}.2"),
            east_lan: format!("10.{a}.{}.2", b + 1),
            wan: format!("w6n{tag}w"),
            lan: format!("w6n{tag}l"),
            wan_peer: format!("w6n{tag}W"),
        };
        if let Err(e) = run("ip", &["netns", "add", &link.ns]) {
            gate::missing(
                test,
                &format!("cannot create a network namespace ({e})"),
                "run as root on Linux with iproute2 installed (apt-get install iproute2); .ci/run runs as root",
            );
            return None;
        }
        if run("tc", &["-V"]).is_err() {
            let _ = run("ip", &["netns", "del", &link.ns]);
            gate::missing(
                test,
                "tc is not installed",
                "apt-get install iproute2; .ci/run installs it",
            );
            return None;
        }
        let lan_peer = format!("w6n{tag}L");
        let ns = link.ns.as_str();
        ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
        for (root_end, ns_end, west, east) in [
            (&link.wan, &link.wan_peer, &link.west_wan, &link.east_wan),
            (
                &link.lan,
                &lan_peer,
                &format!("10.{a}.{}.1", b + 1),
                &link.east_lan,
            ),
        ] {
            ip(&[
                "link", "add", root_end, "type", "veth", "peer", "name", ns_end,
            ]);
            ip(&["link", "set", ns_end, "netns", ns]);
            ip(&["addr", "add", &format!("{west}/24"), "dev", root_end]);
            ip(&["link", "set", root_end, "up"]);
            ip(&[
                "netns",
                "exec",
                ns,
                "ip",
                "addr",
                "add",
                &format!("{east}/24"),
                "dev",
                ns_end,
            ]);
            ip(&["netns", "exec", ns, "ip", "link", "set", ns_end, "up"]);
        }
        Some(link)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`,
    /// which execs it: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Cuts the wan link: every packet from east to west vanishes (see the
    /// module docs).
    pub fn cut(&self) {
        self.blackhole("add");
    }

    /// Ends a cut.
    pub fn heal(&self) {
        self.blackhole("del");
    }

    /// Adds or deletes (`action`) the blackhole route to west's wan address
    /// inside the namespace.
    fn blackhole(&self, action: &str) {
        let west = format!("{}/32", self.west_wan);
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "ip",
            "route",
            action,
            "blackhole",
            &west,
        ]);
    }

    /// Limits the wan link to `rate` (tc syntax, e.g. `2mbit`) in both
    /// directions with a token bucket (`tbf`, 32 kbit bursts, packets queued
    /// more than 400 ms dropped).
    pub fn rate_limit(&self, rate: &str) {
        let tbf = |prefix: &[&str], dev: &str| {
            let args = [
                prefix,
                &[
                    "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst",
                    "32kbit", "latency", "400ms",
                ],
            ]
            .concat();
            run(args[0], &args[1..]).unwrap_or_else(|e| panic!("{e}"));
        };
        tbf(&[], &self.wan);
        tbf(&["ip", "netns", "exec", &self.ns], &self.wan_peer);
    }

    /// Removes a rate limit.
    pub fn unlimit(&self) {
        let _ = run("tc", &["qdisc", "del", "dev", &self.wan, "root"]);
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "tc",
                "qdisc",
                "del",
                "dev",
                &self.wan_peer,
                "root",
            ],
        );
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end deletes its pair; the namespace goes once no
        // process runs in it.
        let _ = run("ip", &["link", "del", &self.wan]);
        let _ = run("ip", &["link", "del", &self.lan]);
        if let Ok(out) = run("ip", &["netns", "pids", &self.ns]) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = run("kill", &["-KILL", pid]);
            }
        }
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}

/// A real HDFS (`scripts/hdfs.sh`) on one end of a [`Link`]: inside its
/// namespace on east's wan address ([`NetHdfs::start`]), or in the root
/// namespace on west's wan address ([`NetHdfs::start_west`]); with its own state
/// directory; stopped on drop.
#[derive(Debug)]
pub struct NetHdfs {
    /// `hdfs://<wan address>:<port>`.
    pub url: String,
    state: PathBuf,
}

impl NetHdfs {
    /// Starts east's HDFS inside the namespace, bound to east's wan address
    /// (formatting `state`); panics with the script's output when it does not
    /// come up. `None` after [`gate::missing`] when Java is not installed.
    pub fn start(test: &str, link: &Link, state: &Path) -> Option<NetHdfs> {
        Self::start_on(test, link, state, Side::East)
    }

    /// Starts west's HDFS in the root namespace, bound to west's wan address
    /// on free ports (never the default ones, which another HDFS of this
    /// machine may use): west's own processes reach it locally, east's only
    /// across the wan link, so a cut separates east from it as it separates
    /// west from east's HDFS. Otherwise as [`NetHdfs::start`].
    pub fn start_west(test: &str, link: &Link, state: &Path) -> Option<NetHdfs> {
        Self::start_on(test, link, state, Side::West)
    }

    fn start_on(test: &str, link: &Link, state: &Path, side: Side) -> Option<NetHdfs> {
        if !gate::tool(test, "java") {
            return None;
        }
        let (host, ports) = match side {
            // Alone in its namespace: the script's default ports, named here so
            // that HDFS_* ports exported in the developer's shell (for another
            // HDFS of this machine) are not inherited.
            Side::East => (
                &link.east_wan,
                [
                    ("HDFS_NN_PORT", "9000"),
                    ("HDFS_NN_HTTP_PORT", "9870"),
                    ("HDFS_DN_PORT", "9866"),
                    ("HDFS_DN_HTTP_PORT", "9864"),
                    ("HDFS_DN_IPC_PORT", "9867"),
                ]
                .into_iter()
                .map(|(var, port)| (var, port.to_owned()))
                .collect::<Vec<_>>(),
            ),
            Side::West => (
                &link.west_wan,
                [
                    "HDFS_NN_PORT",
                    "HDFS_NN_HTTP_PORT",
                    "HDFS_DN_PORT",
                    "HDFS_DN_HTTP_PORT",
                    "HDFS_DN_IPC_PORT",
                ]
                .into_iter()
                .map(|var| (var, free_port().to_string()))
                .collect(),
            ),
        };
        let nn_port = ports
            .iter()
            .find(|(var, _)| *var == "HDFS_NN_PORT")
            .map(|(_, port)| port.as_str())
            .expect("every side names its ports");
        let hdfs = NetHdfs {
            url: format!("hdfs://{host}:{nn_port}"),
            state: state.to_owned(),
        };
        let script = workspace_root().join("scripts/hdfs.sh");
        let mut command = match side {
            Side::East => link.command(&script),
            Side::West => Command::new(&script),
        };
        command
            .arg("start")
            .env("CONDUIT_HDFS_STATE", state)
            .env("HDFS_HOST", host)
            .envs(ports.iter().map(|(var, port)| (*var, port)))
            .stdin(Stdio::null());
        let out = command
            .output()
            .map_err(|e| format!("{} start: {e}", script.display()))
            .and_then(|out| {
                if out.status.success() {
                    Ok(out)
                } else {
                    Err(format!(
                        "{} start failed ({}): {}{}",
                        script.display(),
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            })
            .unwrap_or_else(|e| panic!("HDFS on {host} ({side:?}, namespace {}): {e}", link.ns));
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        Some(hdfs)
    }
}

/// Which end of the link an HDFS runs on.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// Inside the namespace.
    East,
    /// In the root namespace.
    West,
}

impl Drop for NetHdfs {
    fn drop(&mut self) {
        // `stop` finds the daemons by their pid files; it needs no network.
        let script = workspace_root().join("scripts/hdfs.sh");
        let _ = Command::new(&script)
            .arg("stop")
            .env("CONDUIT_HDFS_STATE", &self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}
