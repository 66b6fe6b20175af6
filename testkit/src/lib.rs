//! conduit's test kit: the one home of what the integration tests of every crate
//! need, so no test crate grows its own copy.
//!
//! A dev-dependency only (`[dev-dependencies] conduit-testkit`), used from the
//! `tests/` directories of the product crates and from the end-to-end crate
//! `tests/`. Cargo allows the cycle that makes (conduit-collector's tests use this
//! crate, which uses conduit-collector) because integration tests link the crate
//! as built for everyone. Unit tests inside a product crate's lib (`#[cfg(test)]`)
//! must not use it: they see their own crate compiled with `cfg(test)`, whose types
//! are not the ones linked here.
//!
//! Everything here uses the real parts: a real collector listening on
//! `127.0.0.1:0`, the real worker jobs, the real `conduit` binary, a real HDFS
//! (`scripts/hdfs.sh`), real Scribe clients (our codec and PyPI `thriftpy2`). No
//! fixed sleeps: [`wait`] polls a condition until a deadline. Helpers panic with a
//! message naming what failed, as a test would.
//!
//! # Layout
//! - [`gate`]: outside parts a test needs (Python modules, the `zstd` CLI): a loud
//!   `SKIPPED` line on a developer machine without them, a failure under `CI`.
//! - [`hdfs`]: the one HDFS gate (`CONDUIT_TEST_HDFS`), fresh roots, and outages
//!   made with `scripts/hdfs.sh` (`CONDUIT_HDFS_SCRIPT`).
//! - [`load`]: a steady Scribe client remembering every call, and the
//!   exactly-once check of a view against it.
//! - [`netns`]: a second datacenter in a network namespace, whose link to this
//!   one can be cut and rate-limited, with a real HDFS inside.
//! - [`wait`]: waiting on a condition with a deadline (async and blocking).
//! - [`collector`]: an in-process collector on `127.0.0.1:0` with settings
//!   overrides; a topic's stored files and payloads read back.
//! - [`scribe`]: a raw Scribe client (framed binary `Log`/`LogBatch` with replies)
//!   and the PyPI `thriftpy2` client driver.
//! - [`worker`]: in-process worker jobs, collector watermarks, and the consistency
//!   check of a topic's local view.
//! - [`minutes`]: closed data files and sealed minutes written with the real
//!   encoder and manifest code.
//! - [`tail`]: taking messages from a PinTail consumer.
//! - [`process`]: the `conduit` binary as a child process (spawn, wait until
//!   ready, SIGKILL, SIGTERM, logs), plus plain HTTP and metrics.
//! - [`clock`]: the fixed test day that clock-driven tests run on.
//! - [`tmpfs`]: a small tmpfs to fill and free (full-disk faults; needs root).
//!
//! The small helpers every test uses ([`minute`], [`node`], [`local_storage`]) are
//! at the top.

pub mod clock;
pub mod collector;
pub mod gate;
pub mod hdfs;
pub mod load;
pub mod minutes;
pub mod netns;
pub mod process;
pub mod scribe;
pub mod tail;
pub mod tmpfs;
pub mod wait;
pub mod worker;

use std::path::Path;
use std::sync::Arc;

use conduit_core::storage::LocalStorage;
use conduit_core::{Minute, NodeName, SharedStorage};

/// A minute from text such as `2026-11-22T10:05` (panics on bad text).
pub fn minute(text: &str) -> Minute {
    Minute::parse_flexible(text).unwrap_or_else(|e| panic!("bad minute {text:?}: {e}"))
}

/// A cluster or collector name (panics on a bad name).
pub fn node(name: &str) -> NodeName {
    NodeName::new(name).unwrap_or_else(|e| panic!("bad node name {name:?}: {e}"))
}

/// Local-disk storage rooted at `path` (created if missing).
pub fn local_storage(path: impl AsRef<Path>) -> SharedStorage {
    let path = path.as_ref();
    Arc::new(
        LocalStorage::open(path)
            .unwrap_or_else(|e| panic!("open local storage {}: {e}", path.display())),
    )
}

/// A runtime for test clients driven from a synchronous test (2 worker threads:
/// the CI machine has 2 cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
