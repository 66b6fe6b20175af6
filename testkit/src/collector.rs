//! An in-process collector for tests, and a topic's stored files read back.
//!
//! [`on`] (a storage) or [`on_dir`] (a local directory) starts a builder whose
//! defaults are the product's config except: cluster `dc1`, id `c1`, both
//! listeners on `127.0.0.1:0`, the system clock, and group commit off
//! (`group_commit_ms = 0`: every call is synced on its own, so a test reads what was
//! acknowledged at once). Overrides: [`Start::settings`] for any collector setting,
//! plus shorthands for the common ones.
//!
//! ```no_run
//! # async fn f(storage: conduit_core::SharedStorage, clock: conduit_core::TestClock) {
//! let collector = conduit_testkit::collector::on(storage)
//!     .clock(clock.shared())
//!     .heartbeat_ms(100)
//!     .start()
//!     .await;
//! # }
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conduit_collector::{Collector, CollectorSettings, EngineStatus};
use conduit_core::config::CollectorConfig;
use conduit_core::format::{decode_file, Decoded};
use conduit_core::{Config, Encoding, SharedClock, SharedStorage, Storage, SystemClock};

use crate::{local_storage, node};

/// A change to collector settings.
type Override = Box<dyn FnOnce(&mut CollectorConfig) + Send>;

/// A collector about to start; see the module docs for the defaults.
#[must_use = "call .start().await"]
pub struct Start {
    storage: SharedStorage,
    clock: SharedClock,
    cluster: String,
    id: String,
    config: Config,
    /// Applied in order to the collector settings after the kit's defaults.
    overrides: Vec<Override>,
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Start")
            .field("root", &self.storage.root())
            .field("cluster", &self.cluster)
            .field("id", &self.id)
            .field("overrides", &self.overrides.len())
            .finish_non_exhaustive()
    }
}

/// A collector writing to `storage`.
pub fn on(storage: SharedStorage) -> Start {
    Start {
        storage,
        clock: SystemClock::shared(),
        cluster: "dc1".to_owned(),
        id: "c1".to_owned(),
        config: Config::default(),
        overrides: Vec::new(),
    }
}

/// A collector writing to local disk under `root`.
pub fn on_dir(root: &Path) -> Start {
    on(local_storage(root))
}

impl Start {
    /// Its clock (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Start {
        self.clock = clock;
        self
    }

    /// Its cluster (default `dc1`).
    pub fn cluster(mut self, cluster: &str) -> Start {
        self.cluster = cluster.to_owned();
        self
    }

    /// Its id (default `c1`).
    pub fn id(mut self, id: &str) -> Start {
        self.id = id.to_owned();
        self
    }

    /// Topics and settings (default: `Config::default()`); its `[collector]`
    /// section is the base the kit's defaults and the overrides apply to.
    pub fn config(mut self, config: Config) -> Start {
        self.config = config;
        self
    }

    /// Changes collector settings; applied after the kit's defaults, in order.
    pub fn settings(mut self, change: impl FnOnce(&mut CollectorConfig) + Send + 'static) -> Start {
        self.overrides.push(Box::new(change));
        self
    }

    /// The Scribe listen address (default `127.0.0.1:0`; a fixed one to restart on
    /// the same address).
    pub fn listen(self, addr: &str) -> Start {
        let addr = addr.to_owned();
        self.settings(move |c| c.listen = addr)
    }

    /// The local spool used while storage is down (default: none).
    pub fn spool(self, dir: &Path) -> Start {
        let dir = dir.display().to_string();
        self.settings(move |c| c.spool_dir = Some(dir))
    }

    /// How often the heartbeat (and so the watermark) is published.
    pub fn heartbeat_ms(self, ms: u64) -> Start {
        self.settings(move |c| c.heartbeat_ms = ms)
    }

    /// The size at which a data file is closed before its minute ends.
    pub fn max_file_bytes(self, bytes: u64) -> Start {
        self.settings(move |c| c.max_file_bytes = bytes)
    }

    /// Starts it (recovery included); panics when it cannot start.
    pub async fn start(self) -> Collector {
        let mut limits = self.config.collector.clone();
        limits.listen = "127.0.0.1:0".to_owned();
        limits.http = "127.0.0.1:0".to_owned();
        limits.group_commit_ms = 0;
        for change in self.overrides {
            change(&mut limits);
        }
        let settings = CollectorSettings {
            cluster: node(&self.cluster),
            id: node(&self.id),
            config: Arc::new(self.config),
            collector: limits,
        };
        let what = format!("collector {}/{}", self.cluster, self.id);
        Collector::start(settings, self.storage, self.clock)
            .await
            .unwrap_or_else(|e| panic!("{what} did not start: {e:#}"))
    }
}

/// Waits (up to `timeout`) until the collector's status satisfies `f`; panics
/// naming `what` and the last status.
pub async fn wait_status(
    collector: &Collector,
    what: &str,
    timeout: Duration,
    f: impl Fn(&EngineStatus) -> bool,
) {
    let mut rx = collector.status_watch();
    let outcome = tokio::time::timeout(timeout, rx.wait_for(|s| f(s)))
        .await
        .map(|changed| changed.is_ok());
    match outcome {
        Ok(true) => {}
        Ok(false) => panic!("the collector stopped while waiting for {what}"),
        Err(_) => panic!(
            "timed out after {timeout:?} waiting for {what}; status {:?}",
            collector.status()
        ),
    }
}

/// One data file of a topic as stored in `data/<topic>/<collector>/`.
#[derive(Debug)]
pub struct StoredFile {
    /// Its path relative to the root.
    pub path: String,
    /// The collector that wrote it.
    pub collector: String,
    /// Its file name.
    pub name: String,
    /// Everything in it.
    pub decoded: Decoded,
}

impl StoredFile {
    /// Its payloads, in order.
    pub fn payloads(&self) -> &[Bytes] {
        &self.decoded.payloads
    }

    /// Whether it ends with its close trailer (and nothing after it).
    pub fn is_closed(&self) -> bool {
        self.decoded.scan.is_closed()
    }
}

/// Every data file of `topic` still in `data/` (names starting with `_` are
/// skipped), by collector and then by name (which sorts by minute, then sequence
/// number), decoded as `lines`.
pub async fn stored_files(storage: &dyn Storage, topic: &str) -> Vec<StoredFile> {
    stored_files_as(storage, topic, Encoding::Lines).await
}

/// [`stored_files`] of a topic in `encoding`.
pub async fn stored_files_as(
    storage: &dyn Storage,
    topic: &str,
    encoding: Encoding,
) -> Vec<StoredFile> {
    let dir = format!("data/{topic}");
    let mut out = Vec::new();
    for collector in storage
        .list_or_empty(&dir)
        .await
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
    {
        let mut files = storage
            .list(&collector.path)
            .await
            .unwrap_or_else(|e| panic!("list {}: {e}", collector.path));
        files.sort_by(|a, b| a.name.cmp(&b.name));
        for file in files {
            if file.name.starts_with('_') {
                continue;
            }
            let bytes = storage
                .read(&file.path)
                .await
                .unwrap_or_else(|e| panic!("read {}: {e}", file.path));
            let decoded = decode_file(&file.path, &bytes, encoding)
                .unwrap_or_else(|e| panic!("decode {}: {e}", file.path));
            out.push(StoredFile {
                path: file.path,
                collector: collector.name.clone(),
                name: file.name,
                decoded,
            });
        }
    }
    out
}

/// Every payload of `topic` (`lines` encoding) in `data/`, in [`stored_files`]
/// order.
pub async fn stored_payloads(storage: &dyn Storage, topic: &str) -> Vec<Bytes> {
    stored_files(storage, topic)
        .await
        .into_iter()
        .flat_map(|f| f.decoded.payloads)
        .collect()
}

/// How often each payload of `topic` (`lines` encoding) is stored in `data/`.
pub async fn payload_counts(storage: &dyn Storage, topic: &str) -> HashMap<Bytes, usize> {
    let mut counts = HashMap::new();
    for p in stored_payloads(storage, topic).await {
        *counts.entry(p).or_insert(0) += 1;
    }
    counts
}
