//! Helpers shared by the worker's in-process tests (local, lease, hdfs): a real
//! collector, a Scribe client, a `JobEnv`, and the consistency check every test
//! ends with.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use conduit_collector::{Collector, CollectorSettings};
use conduit_core::format::decode_file;
use conduit_core::heartbeat::Heartbeat;
use conduit_core::layout::Layout;
use conduit_core::manifest::{crc32c, Manifest};
use conduit_core::scribe::{decode_reply, encode_log_call, read_frame, ReplyValue, ResultCode};
use conduit_core::{
    Config, Encoding, Minute, NodeName, SharedClock, SharedStorage, Storage, Topic, View,
};
use conduit_merger::{Cluster, JobEnv, NoFence, SharedFence};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub fn minute(text: &str) -> Minute {
    Minute::parse_flexible(text).unwrap()
}

pub fn node(name: &str) -> NodeName {
    NodeName::new(name).unwrap()
}

/// Starts an in-process collector `id` of cluster `dc1` on 127.0.0.1:0.
pub async fn start_collector(
    storage: SharedStorage,
    clock: SharedClock,
    id: &str,
    config: &Config,
    max_file_bytes: u64,
) -> Collector {
    let mut limits = config.collector.clone();
    limits.listen = "127.0.0.1:0".to_string();
    limits.http = "127.0.0.1:0".to_string();
    limits.group_commit_ms = 0;
    limits.max_file_bytes = max_file_bytes;
    limits.heartbeat_ms = 200;
    let settings = CollectorSettings {
        cluster: node("dc1"),
        id: node(id),
        config: Arc::new(config.clone()),
        collector: limits,
    };
    Collector::start(settings, storage, clock).await.unwrap()
}

/// A Scribe client connection.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    seqid: i32,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            seqid: 0,
        }
    }

    /// `Log` with `payloads` for `topic`; the result code.
    pub async fn log(&mut self, topic: &str, payloads: &[String]) -> ResultCode {
        self.seqid += 1;
        let refs: Vec<(&[u8], &[u8])> = payloads
            .iter()
            .map(|p| (topic.as_bytes(), p.as_bytes()))
            .collect();
        let mut out = Vec::new();
        encode_log_call(self.seqid, &refs, &mut out);
        self.stream.write_all(&out).await.unwrap();
        let frame = tokio::time::timeout(
            Duration::from_secs(30),
            read_frame(&mut self.stream, 1 << 20, &mut self.buf),
        )
        .await
        .expect("reply within 30 s")
        .unwrap()
        .expect("a reply frame");
        match decode_reply(frame).unwrap().value {
            ReplyValue::ResultCode(code) => code,
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

/// `n` payloads tagged `tag`, each `pad` bytes of poorly compressible filler.
pub fn payloads(tag: &str, n: usize, pad: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (tag.len() as u64);
    (0..n)
        .map(|i| {
            let filler: String = (0..pad)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            format!("{tag}-{i}-{filler}")
        })
        .collect()
}

/// Waits (deadline 30 s) until collector `id`'s heartbeat shows a watermark `>= m`.
pub async fn wait_watermark(storage: &SharedStorage, id: &str, m: Minute) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (beats, _) = Heartbeat::read_all(&**storage, &node("dc1")).await.unwrap();
        if beats
            .iter()
            .any(|b| b.collector.as_str() == id && b.watermark.is_some_and(|w| w >= m))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for watermark {m} of {id}: {beats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job environment for cluster `dc1` on `storage`.
pub fn env(storage: SharedStorage, clock: SharedClock, config: Config) -> JobEnv {
    env_with_fence(storage, clock, config, Arc::new(NoFence))
}

pub fn env_with_fence(
    storage: SharedStorage,
    clock: SharedClock,
    config: Config,
    fence: SharedFence,
) -> JobEnv {
    let this = Cluster {
        name: node("dc1"),
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
        worker_id: "dc1/test-worker".to_owned(),
    }
}

/// Every collector file of `topic` in `data/`, by its local-view name, with its CRC.
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
            out.insert(format!("dc1-{}-{}", dir.name, f.name), crc32c(&bytes));
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
                assert_eq!(f.cluster.as_str(), "dc1");
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

fn list_minute_dirs<'a>(
    storage: &'a dyn Storage,
    dir: &'a str,
    depth: usize,
    out: &'a mut Vec<(String, Minute)>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
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

/// Copies a directory tree.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
