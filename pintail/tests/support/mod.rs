//! Helpers of PinTail's integration tests: a real in-process collector and a Scribe
//! client, sealed minutes written with the real frame encoder and manifest code,
//! and waiting on conditions with deadlines.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use conduit_collector::{Collector, CollectorSettings};
use conduit_core::heartbeat::Heartbeat;
use conduit_core::manifest::crc32c;
use conduit_core::scribe::{decode_reply, encode_log_call, read_frame, ReplyValue, ResultCode};
use conduit_core::{
    Config, Encoding, FrameEncoder, Manifest, ManifestFile, Minute, NodeName, SharedClock,
    SharedStorage, Topic, Trailer, View,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub fn minute(text: &str) -> Minute {
    Minute::parse_flexible(text).unwrap()
}

pub fn node(name: &str) -> NodeName {
    NodeName::new(name).unwrap()
}

/// Starts a real collector `id` of `cluster` on 127.0.0.1:0 (group commit off).
pub async fn start_collector(
    storage: SharedStorage,
    clock: SharedClock,
    cluster: &str,
    id: &str,
) -> Collector {
    let config = Config::default();
    let mut limits = config.collector.clone();
    limits.listen = "127.0.0.1:0".to_string();
    limits.http = "127.0.0.1:0".to_string();
    limits.group_commit_ms = 0;
    limits.heartbeat_ms = 100;
    let settings = CollectorSettings {
        cluster: node(cluster),
        id: node(id),
        config: Arc::new(config),
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
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: BytesMut::new(),
            seqid: 0,
        }
    }

    /// One `Log` call of `payloads` to `topic`; asserts `OK`.
    pub async fn log(&mut self, topic: &str, payloads: &[String]) {
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
            ReplyValue::ResultCode(ResultCode::Ok) => {}
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

/// `n` payloads `tag-i`.
pub fn payloads(tag: &str, from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| format!("{tag}-{i}")).collect()
}

/// Waits (deadline 30 s) until `cond` holds.
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until collector `id` of `cluster` publishes a watermark `>= m`.
pub async fn wait_watermark(storage: &SharedStorage, cluster: &str, id: &str, m: Minute) {
    wait_for(&format!("watermark {m} of {id}"), || async {
        let (beats, _) = Heartbeat::read_all(&**storage, &node(cluster))
            .await
            .unwrap();
        beats
            .iter()
            .any(|b| b.collector.as_str() == id && b.watermark.is_some_and(|w| w >= m))
    })
    .await;
}

/// A closed data file: `frames` frames of `records`, then the trailer.
pub fn data_file(records: &[String], frames: usize) -> Vec<u8> {
    let mut enc = FrameEncoder::new(3).unwrap();
    let mut out = Vec::new();
    let per = records.len().div_ceil(frames.max(1)).max(1);
    let mut record_bytes = 0;
    for chunk in records.chunks(per) {
        let mut content = Vec::new();
        for r in chunk {
            content.extend_from_slice(r.as_bytes());
            content.push(b'\n');
        }
        record_bytes += content.len() as u64;
        out.extend_from_slice(&enc.frame(&content).unwrap());
    }
    out.extend_from_slice(
        &Trailer {
            encoding: Encoding::Lines,
            records: records.len() as u64,
            record_bytes,
        }
        .encode(),
    );
    out
}

/// Writes and seals a merged minute of `topic` on every storage in `roots` (byte
/// identical): `files` collectors `c0..`, each with `per_file` records of
/// `frames` frames, payloads `<minute>-c<i>-<n>`. Returns the payloads.
pub async fn sealed_minute(
    roots: &[SharedStorage],
    topic: &str,
    m: Minute,
    files: usize,
    per_file: usize,
    frames: usize,
) -> Vec<String> {
    let topic = Topic::new(topic).unwrap();
    let dir = Manifest::dir(View::Merged, &topic, m);
    let mut entries = Vec::new();
    let mut all = Vec::new();
    let mut contents = Vec::new();
    for i in 0..files {
        let collector = format!("c{i}");
        let records: Vec<String> = (0..per_file)
            .map(|n| format!("{}-{collector}-{n}", m.file_stamp()))
            .collect();
        all.extend(records.iter().cloned());
        let bytes = data_file(&records, frames);
        let name = conduit_core::layout::Layout::local_file_name(
            &node("dc1"),
            &node(&collector),
            m,
            0,
            &topic,
        );
        entries.push(ManifestFile {
            name: name.clone(),
            bytes: bytes.len() as u64,
            records: per_file as u64,
            crc32c: crc32c(&bytes),
            cluster: node("dc1"),
            collector: Some(node(&collector)),
            minute: m,
            late: false,
        });
        contents.push((format!("{dir}/{name}"), bytes));
    }
    let manifest = Manifest::new(
        View::Merged,
        topic,
        m,
        vec![node("dc1")],
        vec![],
        m.end(),
        "dc1/test".into(),
        entries,
    );
    for root in roots {
        for (path, bytes) in &contents {
            root.write_atomic(path, Bytes::from(bytes.clone()))
                .await
                .unwrap();
        }
        manifest.seal(&**root).await.unwrap();
    }
    all
}

/// The `local` job of cluster `dc1` on `storage`, on the test clock (no lease).
pub fn worker(
    storage: &SharedStorage,
    clock: &conduit_core::TestClock,
) -> conduit_merger::LocalJob {
    let this = conduit_merger::Cluster {
        name: node("dc1"),
        storage: storage.clone(),
    };
    let mut clusters = std::collections::BTreeMap::new();
    clusters.insert(this.name.clone(), this.clone());
    conduit_merger::LocalJob::new(conduit_merger::JobEnv {
        this,
        clusters,
        config: Arc::new(Config::default()),
        clock: clock.shared(),
        fence: Arc::new(conduit_merger::NoFence),
        worker_id: "dc1/test-worker".into(),
    })
}
