//! The one HDFS gate, fresh roots on HDFS, and outages made with the real daemons.
//!
//! Tests that need HDFS read `CONDUIT_TEST_HDFS=hdfs://host:port`, printed by
//! `scripts/hdfs.sh env` (which starts a real Apache HDFS). Without it a test
//! prints one `SKIPPED <test>: ...` line and passes, so a developer without Java
//! can run `cargo test`; under `CI` it fails instead (see [`crate::gate`]):
//! `.ci/run` starts HDFS and exports the variable, so CI never skips them.
//!
//! Outages stop and start the daemons of that same instance through
//! `CONDUIT_HDFS_SCRIPT` (the path of `scripts/hdfs.sh`, with `CONDUIT_HDFS_STATE`
//! naming the instance when it is not the default one).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use conduit_core::storage::open_root;
use conduit_core::SharedStorage;

use crate::gate;

/// The variable naming the HDFS the tests use.
pub const URL_VAR: &str = "CONDUIT_TEST_HDFS";
/// The variable naming `scripts/hdfs.sh`, for outages.
pub const SCRIPT_VAR: &str = "CONDUIT_HDFS_SCRIPT";

/// The gate: the HDFS URL of `CONDUIT_TEST_HDFS` (without a trailing `/`), or
/// `None` after a `SKIPPED <test>: ...` line when it is not set. Panics when it is
/// not set under `CI`.
pub fn url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url.trim_end_matches('/').to_owned()),
        _ => {
            gate::missing(
                test,
                &format!("{URL_VAR} is not set, so there is no HDFS to run on"),
                &format!(
                    "start one with scripts/hdfs.sh start and eval \"$(scripts/hdfs.sh env)\", \
                     e.g. {URL_VAR}=hdfs://127.0.0.1:9000; .ci/run does"
                ),
            );
            None
        }
    }
}

/// A fresh root URI on HDFS for `test`: `<url>/<test>_<pid>_<millis>_<n>`, or
/// `None` (see [`url`]).
pub fn fresh_root(test: &str) -> Option<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let url = url(test)?;
    Some(format!(
        "{url}/{test}_{}_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A fresh root on HDFS, opened as services open theirs.
#[derive(Debug, Clone)]
pub struct HdfsRoot {
    /// `hdfs://host:port/<dir>`, for configs and command lines.
    pub uri: String,
    /// The storage of that root (with the retry wrapper, as services use).
    pub storage: SharedStorage,
}

/// A fresh root for `test` ([`fresh_root`]) opened, or `None` (see [`url`]).
pub async fn root(test: &str) -> Option<HdfsRoot> {
    let uri = fresh_root(test)?;
    let storage = open(&uri).await;
    Some(HdfsRoot { uri, storage })
}

/// Opens an HDFS root URI as services do; panics naming the URI when HDFS cannot
/// be reached.
pub async fn open(uri: &str) -> SharedStorage {
    open_root(uri)
        .await
        .unwrap_or_else(|e| panic!("{URL_VAR} is set but HDFS at {uri} is unusable: {e}"))
}

/// Runs `scripts/hdfs.sh <cmd>` (`CONDUIT_HDFS_SCRIPT`) and asserts it succeeded.
pub fn script(cmd: &str) {
    let script = std::env::var(SCRIPT_VAR).unwrap_or_else(|_| {
        panic!("{SCRIPT_VAR} must point at scripts/hdfs.sh when {URL_VAR} is set")
    });
    let status = Command::new(&script)
        .arg(cmd)
        .status()
        .unwrap_or_else(|e| panic!("run {script} {cmd}: {e}"));
    assert!(status.success(), "{script} {cmd} failed: {status}");
}

/// A daemon of the test HDFS stopped until this is dropped (or [`Outage::end`]
/// is called), so a failing assertion never leaves the shared instance without
/// it.
#[derive(Debug)]
#[must_use = "the daemon starts again when the outage is dropped"]
pub struct Outage {
    /// The `scripts/hdfs.sh` commands that end the outage, in order.
    start: &'static [&'static str],
}

impl Outage {
    /// Stops the DataNode.
    pub fn datanode() -> Outage {
        script("stop-datanode");
        Outage {
            start: &["start-datanode"],
        }
    }

    /// Freezes the DataNode (SIGSTOP): connections to it stay open and hang, as
    /// with a DataNode stuck in GC or on a dying disk.
    pub fn datanode_paused() -> Outage {
        script("pause-datanode");
        Outage {
            start: &["resume-datanode"],
        }
    }

    /// Stops the NameNode.
    pub fn namenode() -> Outage {
        script("stop-namenode");
        Outage {
            start: &["start-namenode"],
        }
    }

    /// Stops the DataNode and the NameNode (a whole cluster down); the end
    /// starts the NameNode, then the DataNode (whose block report lets the
    /// NameNode leave safe mode).
    pub fn namenode_and_datanode() -> Outage {
        script("stop-datanode");
        script("stop-namenode");
        Outage {
            start: &["start-namenode", "start-datanode"],
        }
    }

    /// Starts the daemon again.
    pub fn end(self) {
        drop(self);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        for cmd in self.start {
            script(cmd);
        }
    }
}
