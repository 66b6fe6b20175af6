//! The worker's jobs in-process: a [`JobEnv`] for one cluster, collector
//! watermarks awaited through their heartbeats, and [`check_local_view`], the
//! consistency check every test of the `local` job ends with; for tests of
//! real worker processes, closed collector files [`plant`]ed as a backlog,
//! [`wait_sealed`], and the counts of what a view's manifests hold
//! ([`sealed_counts`], [`sealed_minutes`]), and [`tmp_leftovers`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::format::decode_file;
use conduit_core::heartbeat::Heartbeat;
use conduit_core::layout::Layout;
use conduit_core::manifest::{crc32c, Manifest};
use conduit_core::{Config, Encoding, Minute, SharedClock, SharedStorage, Storage, Topic, View};
use conduit_merger::{Cluster, JobEnv, LocalJob, NoFence, SharedFence};

use conduit_core::tree::MinuteWalker;

use crate::{minutes, node, wait};

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
    /// Minute directory of every file the seal set aside in `quarantine/`.
    pub quarantined: BTreeMap<String, Minute>,
}

impl LocalView {
    /// Records in the sealed minutes.
    pub fn records(&self) -> u64 {
        self.sealed.values().map(|m| m.records).sum()
    }
}

/// Reads a topic's local view and asserts the invariants: every file is in one
/// place only (`data/`, one minute directory, or `quarantine/`), every sealed
/// directory holds exactly what its manifest lists (names, sizes, CRCs, trailers)
/// and its manifest lists exactly the files set aside from it, late flags match
/// minutes, and sealed minutes are contiguous.
pub async fn check_local_view(storage: &dyn Storage, topic: &Topic) -> LocalView {
    check_local_view_allowing(storage, topic, &[]).await
}

/// [`check_local_view`], except that the files named in `unclosed` (local-view
/// names) may lie in an unsealed minute directory without their close trailer:
/// files truncated after their collector closed them, which the worker moves on
/// its watermark's word and sets aside when it seals the minute.
pub async fn check_local_view_allowing(
    storage: &dyn Storage,
    topic: &Topic,
    unclosed: &[&str],
) -> LocalView {
    let mut view = LocalView::default();
    for name in collector_files(storage, topic).await.into_keys() {
        view.waiting.insert(name);
    }
    let base = Layout::topic_dir(View::Local, topic);
    let mut set_aside = Vec::new();
    let quarantine_base = Layout::quarantine_path(&base);
    list_minute_dirs(storage, &quarantine_base, &mut set_aside).await;
    let mut quarantined_in: BTreeMap<Minute, BTreeSet<String>> = BTreeMap::new();
    for (dir, m) in set_aside {
        for f in storage.list(&dir).await.unwrap() {
            assert!(
                view.quarantined.insert(f.name.clone(), m).is_none(),
                "{} is quarantined twice",
                f.name
            );
            assert!(
                !view.waiting.contains(&f.name),
                "{} is both in data/ and in {dir}",
                f.name
            );
            quarantined_in.entry(m).or_default().insert(f.name);
        }
    }
    let mut dirs = Vec::new();
    list_minute_dirs(storage, &base, &mut dirs).await;
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
            assert!(
                !view.quarantined.contains_key(&f.name),
                "{} is both in quarantine/ and in {dir}",
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
            let set_aside: BTreeSet<String> = manifest
                .quarantined
                .iter()
                .map(|q| q.name.clone())
                .collect();
            assert_eq!(
                set_aside,
                quarantined_in.remove(&m).unwrap_or_default(),
                "manifest of {dir} lists exactly the files set aside from it"
            );
            view.sealed.insert(m, manifest);
        } else {
            for name in names.iter().filter(|n| !unclosed.contains(&n.as_str())) {
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

/// Every minute directory (`yyyy/MM/dd/HH/mm`) below `base`, with its minute.
async fn list_minute_dirs(storage: &dyn Storage, base: &str, out: &mut Vec<(String, Minute)>) {
    walk_minute_dirs(storage, base, base.to_owned(), 0, out).await;
}

fn walk_minute_dirs<'a>(
    storage: &'a dyn Storage,
    base: &'a str,
    dir: String,
    depth: usize,
    out: &'a mut Vec<(String, Minute)>,
) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
    Box::pin(async move {
        for e in storage.list_or_empty(&dir).await.unwrap() {
            if !e.is_dir {
                continue;
            }
            if depth == 4 {
                let suffix = &e.path[base.len() + 1..];
                out.push((e.path.clone(), Minute::parse_dir_path(suffix).unwrap()));
            } else {
                walk_minute_dirs(storage, base, e.path, depth + 1, out).await;
            }
        }
    })
}

/// Copies the directory tree `from` to `to` (a cluster root on local disk), so a
/// test can start several runs from the same state.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("list {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("list {}: {e}", from.display()));
        let target = to.join(entry.file_name());
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Plants `files` closed files of `collector` for each of `minutes` in topic
/// `topic` (25 records `<topic>-<collector>-<minute>-<file>-<i>` each, three
/// frames), as a backlog for a worker; returns the payloads.
pub async fn plant(
    storage: &dyn Storage,
    topic: &str,
    collector: &str,
    minutes: &[Minute],
    files: u32,
) -> Vec<Bytes> {
    let t = Topic::new(topic).unwrap();
    let mut all = Vec::new();
    for &m in minutes {
        for seq in 0..files {
            let records: Vec<String> = (0..25)
                .map(|i| format!("{topic}-{collector}-{}-{seq}-{i}", m.file_stamp()))
                .collect();
            let path = Layout::collector_file(&t, &node(collector), m, seq);
            storage
                .write_atomic(&path, minutes::data_file(&records, 3).into())
                .await
                .unwrap_or_else(|e| panic!("plant {path}: {e}"));
            all.extend(records.into_iter().map(Bytes::from));
        }
    }
    all
}

/// Payload -> times stored in the sealed minutes `minutes` of `view` of
/// `topic`, read through each minute's manifest (each file's record count
/// checked against it); panics if one of them is not sealed.
pub async fn sealed_counts(
    storage: &dyn Storage,
    view: View,
    topic: &str,
    minutes: &[Minute],
) -> HashMap<Bytes, usize> {
    let t = Topic::new(topic).unwrap();
    let mut counts = HashMap::new();
    for &m in minutes {
        let dir = Layout::minute_dir(view, &t, m);
        let manifest = Manifest::read(storage, &dir)
            .await
            .unwrap_or_else(|e| panic!("read the manifest of {dir}: {e}"))
            .unwrap_or_else(|| panic!("{dir} sealed"));
        for f in &manifest.files {
            let path = format!("{dir}/{}", f.name);
            let bytes = storage.read(&path).await.unwrap();
            let decoded = decode_file(&path, &bytes, Encoding::Lines).unwrap();
            assert_eq!(decoded.payloads.len() as u64, f.records, "{path}");
            for p in decoded.payloads {
                *counts.entry(p).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Every sealed minute of `view` of `topic`, oldest first.
pub async fn sealed_minutes(storage: &dyn Storage, view: View, topic: &str) -> Vec<Minute> {
    let t = Topic::new(topic).unwrap();
    let mut walker = MinuteWalker::new(storage, view, &t);
    let mut out = Vec::new();
    while let Some(m) = walker.next_sealed().await.unwrap() {
        out.push(m);
    }
    out
}

/// Waits (up to `timeout`, else panics naming `what`) until minute `m` of
/// `view` of `topic` is sealed.
pub async fn wait_sealed(
    storage: &SharedStorage,
    view: View,
    topic: &str,
    m: Minute,
    what: &str,
    timeout: Duration,
) {
    let path = format!(
        "{}/{}",
        Layout::minute_dir(view, &Topic::new(topic).unwrap(), m),
        Layout::SUCCESS_MARKER
    );
    wait::until(what, timeout, || {
        let storage = storage.clone();
        let path = path.clone();
        async move { storage.exists(&path).await.unwrap_or(false) }
    })
    .await;
}

/// Every `_tmp.` file or directory (an interrupted copy or seal) below `dir`.
pub async fn tmp_leftovers(storage: &dyn Storage, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in storage.list_or_empty(&dir).await.unwrap() {
            if Layout::is_tmp(&e.name) {
                out.push(e.path.clone());
            }
            if e.is_dir {
                todo.push(e.path);
            }
        }
    }
    out.sort();
    out
}
