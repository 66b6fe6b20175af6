//! The worker's jobs in-process: a [`JobEnv`] for one cluster, collector
//! watermarks awaited through their heartbeats, and [`check_local_view`], the
//! consistency check every test of the `local` job ends with.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit_core::format::decode_file;
use conduit_core::heartbeat::Heartbeat;
use conduit_core::layout::Layout;
use conduit_core::manifest::{crc32c, Manifest};
use conduit_core::{Config, Encoding, Minute, SharedClock, SharedStorage, Storage, Topic, View};
use conduit_merger::{Cluster, JobEnv, LocalJob, NoFence, SharedFence};

use crate::{node, wait};

/// The cluster every single-cluster worker test runs in.
pub const CLUSTER: &str = "dc1";
/// The worker id recorded as `sealed_by` in manifests.
pub const WORKER_ID: &str = "dc1/test-worker";

/// A job environment for cluster `dc1` on `storage`, without a lease.
pub fn env(storage: SharedStorage, clock: SharedClock, config: Config) -> JobEnv {
    env_with_fence(storage, clock, config, Arc::new(NoFence))
}

/// [`env`] whose commits are checked against `fence` (a lease).
pub fn env_with_fence(
    storage: SharedStorage,
    clock: SharedClock,
    config: Config,
    fence: SharedFence,
) -> JobEnv {
    let this = Cluster {
        name: node(CLUSTER),
        storage,
    };
    let mut clusters = BTreeMap::new();
    clusters.insert(this.name.clone(), this.clone());
    JobEnv {
        this,
        clusters,
        config: Arc::new(config),
        clock,
        fence,
        worker_id: WORKER_ID.to_owned(),
    }
}

/// The `local` job of cluster `dc1` on `storage` with the default config, without a
/// lease.
pub fn local_job(storage: SharedStorage, clock: SharedClock) -> LocalJob {
    LocalJob::new(env(storage, clock, Config::default()))
}

/// Waits (deadline 30 s) until collector `id` of `cluster` publishes a watermark
/// `>= m`; panics with the heartbeats last read.
pub async fn wait_watermark(storage: &SharedStorage, cluster: &str, id: &str, m: Minute) {
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    loop {
        let (beats, _) = Heartbeat::read_all(&**storage, &node(cluster))
            .await
            .unwrap_or_else(|e| panic!("read the heartbeats of {cluster}: {e}"));
        if beats
            .iter()
            .any(|b| b.collector.as_str() == id && b.watermark.is_some_and(|w| w >= m))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for watermark {m} of {cluster}/{id}: {beats:?}"
        );
        tokio::time::sleep(wait::POLL).await;
    }
}

/// Every collector file of `topic` still in `data/`, by its local-view name (as
/// the `local` job names it in `dc1`), with its CRC.
pub async fn collector_files(storage: &dyn Storage, topic: &Topic) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for dir in storage
        .list_or_empty(&Layout::topic_dir(View::Collector, topic))
        .await
        .unwrap()
    {
        for f in storage.list_or_empty(&dir.path).await.unwrap() {
            if Layout::is_hidden(&f.name) {
                continue;
            }
            let bytes = storage.read(&f.path).await.unwrap();
            out.insert(format!("{CLUSTER}-{}-{}", dir.name, f.name), crc32c(&bytes));
        }
    }
    out
}

/// What the local view of a topic holds, checked for consistency.
#[derive(Debug, Default)]
pub struct LocalView {
    /// Sealed minutes with their manifests.
    pub sealed: BTreeMap<Minute, Manifest>,
    /// Minute directory of every data file in the view.
    pub placed: BTreeMap<String, Minute>,
    /// Files still in `data/` (local-view names).
    pub waiting: BTreeSet<String>,
}

impl LocalView {
    /// Records in the sealed minutes.
    pub fn records(&self) -> u64 {
        self.sealed.values().map(|m| m.records).sum()
    }
}

/// Reads a topic's local view and asserts the invariants: every file is in one
/// place only, every sealed directory holds exactly what its manifest lists (names,
/// sizes, CRCs, trailers), late flags match minutes, and sealed minutes are
/// contiguous.
pub async fn check_local_view(storage: &dyn Storage, topic: &Topic) -> LocalView {
    let mut view = LocalView::default();
    for name in collector_files(storage, topic).await.into_keys() {
        view.waiting.insert(name);
    }
    let base = Layout::topic_dir(View::Local, topic);
    let mut dirs = Vec::new();
    list_minute_dirs(storage, &base, 0, &mut dirs).await;
    for (dir, m) in dirs {
        let mut names = BTreeSet::new();
        for f in storage.list(&dir).await.unwrap() {
            if Layout::is_hidden(&f.name) {
                continue;
            }
            assert!(
                view.placed.insert(f.name.clone(), m).is_none(),
                "{} is in two minute directories",
                f.name
            );
            assert!(
                !view.waiting.contains(&f.name),
                "{} is both in data/ and in {dir}",
                f.name
            );
            names.insert(f.name);
        }
        if let Some(manifest) = Manifest::read(storage, &dir).await.unwrap() {
            let listed: BTreeSet<String> = manifest.files.iter().map(|f| f.name.clone()).collect();
            assert_eq!(
                listed, names,
                "manifest of {dir} lists exactly the files present"
            );
            for f in &manifest.files {
                let path = format!("{dir}/{}", f.name);
                let bytes = storage.read(&path).await.unwrap();
                assert_eq!(f.bytes, bytes.len() as u64, "{path} size");
                assert_eq!(f.crc32c, crc32c(&bytes), "{path} crc");
                let decoded = decode_file(&path, &bytes, Encoding::Lines).unwrap();
                assert!(decoded.scan.is_closed(), "{path} is closed");
                assert_eq!(f.records, decoded.payloads.len() as u64, "{path} records");
                assert_eq!(f.late, f.minute < m, "{path} late flag");
                assert_eq!(f.cluster.as_str(), CLUSTER);
            }
            assert_eq!(manifest.minute, m);
            view.sealed.insert(m, manifest);
        } else {
            for name in &names {
                let tail = storage.read(&format!("{dir}/{name}")).await.unwrap();
                let decoded = decode_file(name, &tail, Encoding::Lines).unwrap();
                assert!(
                    decoded.scan.is_closed(),
                    "only closed files are moved: {dir}/{name}"
                );
            }
        }
    }
    let sealed: Vec<Minute> = view.sealed.keys().copied().collect();
    for pair in sealed.windows(2) {
        assert_eq!(
            pair[0].next().unwrap(),
            pair[1],
            "sealed minutes are contiguous: {sealed:?}"
        );
    }
    if let Some(last) = sealed.last() {
        for m in view.placed.values() {
            if m <= last {
                assert!(
                    view.sealed.contains_key(m),
                    "a file sits in unsealed {m} below sealed {last}"
                );
            }
        }
    }
    view
}

/// Every minute directory (`yyyy/MM/dd/HH/mm`) below `dir`, with its minute.
fn list_minute_dirs<'a>(
    storage: &'a dyn Storage,
    dir: &'a str,
    depth: usize,
    out: &'a mut Vec<(String, Minute)>,
) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
    Box::pin(async move {
        for e in storage.list_or_empty(dir).await.unwrap() {
            if !e.is_dir {
                continue;
            }
            if depth == 4 {
                let suffix = e.path.splitn(3, '/').nth(2).unwrap().to_owned();
                out.push((e.path.clone(), Minute::parse_dir_path(&suffix).unwrap()));
            } else {
                list_minute_dirs(storage, &e.path, depth + 1, out).await;
            }
        }
    })
}
