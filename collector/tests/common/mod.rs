//! Shared helpers for the collector's in-process tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use conduit_collector::{Collector, CollectorSettings, EngineStatus};
use conduit_core::format::decode_file;
use conduit_core::scribe::{
    decode_reply, encode_log_batch_call, encode_log_call, read_frame, ReplyValue, ResultCode,
};
use conduit_core::{Config, Encoding, NodeName, SharedClock, SharedStorage};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Starts a collector on 127.0.0.1:0 writing to `storage`.
pub async fn start(
    storage: SharedStorage,
    clock: SharedClock,
    spool_dir: Option<&std::path::Path>,
    config: Config,
) -> Collector {
    let mut limits = config.collector.clone();
    limits.listen = "127.0.0.1:0".to_string();
    limits.http = "127.0.0.1:0".to_string();
    limits.group_commit_ms = 0;
    limits.spool_dir = spool_dir.map(|p| p.display().to_string());
    let settings = CollectorSettings {
        cluster: NodeName::new("dc1").unwrap(),
        id: NodeName::new("c1").unwrap(),
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
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            seqid: 0,
        }
    }

    async fn call(&mut self, out: Vec<u8>) -> ResultCode {
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

    /// `Log` with (topic, payload) entries.
    pub async fn log(&mut self, entries: &[(&str, String)]) -> ResultCode {
        self.seqid += 1;
        let refs: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(t, p)| (t.as_bytes(), p.as_bytes()))
            .collect();
        let mut out = Vec::new();
        encode_log_call(self.seqid, &refs, &mut out);
        self.call(out).await
    }

    /// `LogBatch` with (topic, payload) entries.
    pub async fn log_batch(
        &mut self,
        publisher: &str,
        sequence: i64,
        entries: &[(&str, String)],
    ) -> ResultCode {
        self.seqid += 1;
        let refs: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(t, p)| (t.as_bytes(), p.as_bytes()))
            .collect();
        let mut out = Vec::new();
        encode_log_batch_call(self.seqid, publisher.as_bytes(), sequence, &refs, &mut out);
        self.call(out).await
    }
}

/// `n` numbered payloads for a topic.
pub fn events(topic: &'static str, tag: &str, n: usize) -> Vec<(&'static str, String)> {
    (0..n)
        .map(|i| (topic, format!("{{\"tag\":\"{tag}\",\"n\":{i}}}")))
        .collect()
}

/// Every payload of every file under `data/<topic>/` of a storage, by file path.
pub async fn read_topic(storage: &SharedStorage, topic: &str) -> Vec<(String, Vec<Bytes>, bool)> {
    let mut out = Vec::new();
    for collector in storage
        .list_or_empty(&format!("data/{topic}"))
        .await
        .unwrap()
    {
        for file in storage.list(&collector.path).await.unwrap() {
            if file.name.starts_with('_') {
                continue;
            }
            let bytes = storage.read(&file.path).await.unwrap();
            let decoded = decode_file(&file.path, &bytes, Encoding::Lines).unwrap();
            out.push((file.path, decoded.payloads, decoded.scan.is_closed()));
        }
    }
    out
}

/// Occurrences of each payload of a topic.
pub async fn counts(storage: &SharedStorage, topic: &str) -> HashMap<Bytes, usize> {
    let mut counts = HashMap::new();
    for (_, payloads, _) in read_topic(storage, topic).await {
        for p in payloads {
            *counts.entry(p).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits (deadline 30 s) until the collector's status satisfies `f`.
pub async fn wait_status(collector: &Collector, what: &str, f: impl Fn(&EngineStatus) -> bool) {
    let mut rx = collector.status_watch();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; status {:?}",
                collector.status()
            )
        })
        .unwrap();
}
