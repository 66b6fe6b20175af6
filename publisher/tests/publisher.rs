//! The publisher against real in-process collectors (and, for protocol corner cases,
//! a scripted fake server).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use conduit_collector::Collector;
use conduit_core::scribe::{decode_request, read_frame, Call, Reply, ResultCode};
use conduit_core::Encoding;
use conduit_publisher::{BuildError, PublishError, Publisher, PublisherBuilder, WhenFull};
use conduit_testkit::collector::{self, stored_payloads};
use conduit_testkit::{local_storage, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Collector `id` writing under `root`.
async fn start_collector(root: &Path, id: &str) -> Collector {
    collector::on_dir(root).id(id).start().await
}

/// Every payload of a topic under a root, in file order (files sorted by name).
async fn read_topic(root: &Path, topic: &str) -> Vec<Bytes> {
    stored_payloads(&*local_storage(root), topic).await
}

fn payload(topic: &str, i: usize) -> Bytes {
    Bytes::from(format!("{topic}-{i:06}"))
}

fn fast(addrs: &[SocketAddr]) -> PublisherBuilder {
    Publisher::builder()
        .collectors(addrs.iter().map(|a| a.to_string()))
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_exactly_once_in_order_per_topic() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(dir.path(), "c1").await;
    let publisher = fast(&[collector.thrift_addr()])
        .max_batch_events(500)
        .build()
        .await
        .unwrap();
    let n = 10_000;
    for i in 0..n {
        for topic in ["alpha", "beta"] {
            publisher.publish(topic, payload(topic, i)).await.unwrap();
        }
    }
    let stats_handle = publisher.clone();
    publisher.close().await.unwrap();
    let stats = stats_handle.stats();
    assert_eq!(stats.enqueued, 2 * n as u64);
    assert_eq!(stats.acknowledged, 2 * n as u64);
    assert_eq!(stats.queue_depth, 0);
    assert_eq!(stats.failed, 0);
    for topic in ["alpha", "beta"] {
        let got = read_topic(dir.path(), topic).await;
        let want: Vec<Bytes> = (0..n).map(|i| payload(topic, i)).collect();
        assert_eq!(got.len(), want.len(), "{topic}: count");
        assert!(got == want, "{topic}: every event exactly once, in order");
    }
    assert!(matches!(
        stats_handle.publish("alpha", "late").await,
        Err(PublishError::Closed)
    ));
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_acked_and_flush_mean_durable() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(dir.path(), "c1").await;
    let acked = fast(&[collector.thrift_addr()]).build().await.unwrap();
    acked.publish_acked("acks", "first").await.unwrap();
    assert_eq!(
        read_topic(dir.path(), "acks").await,
        vec![Bytes::from("first")],
        "durable when publish_acked returns"
    );
    acked.close().await.unwrap();
    let publisher = fast(&[collector.thrift_addr()])
        // A long linger: without flush the batch would wait.
        .linger(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..100 {
        publisher.publish("acks", payload("acks", i)).await.unwrap();
    }
    publisher.flush().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(read_topic(dir.path(), "acks").await.len(), 101);
    let stats = publisher.stats();
    assert_eq!(stats.acknowledged, 100);
    assert_eq!(stats.queue_depth, 0);
    let text = stats.to_prometheus();
    assert!(
        text.contains("conduit_publisher_acknowledged_total 100\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE conduit_publisher_queue_depth gauge\n"));
    // An empty flush returns at once.
    tokio::time::timeout(Duration::from_secs(5), publisher.flush())
        .await
        .unwrap()
        .unwrap();
    publisher.close().await.unwrap();
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_loses_nothing() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = start_collector(dir_a.path(), "ca").await;
    let b = start_collector(dir_b.path(), "cb").await;
    let publisher = fast(&[a.thrift_addr(), b.thrift_addr()])
        .max_batch_events(100)
        .build()
        .await
        .unwrap();
    let n = 20_000;
    let mut a = Some(a);
    for i in 0..n {
        publisher.publish("fail", payload("fail", i)).await.unwrap();
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i == n / 2 {
            // Some of it reached the preferred collector; kill it with batches in
            // flight and queued.
            assert!(publisher.stats().acknowledged > 0);
            assert_eq!(publisher.stats().connected_to, 1);
            a.take().unwrap().stop().await.unwrap();
        }
    }
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(60), publisher.close())
        .await
        .expect("close within 60 s")
        .unwrap();
    let stats = handle.stats();
    assert_eq!(stats.acknowledged, n as u64);
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(stats.connected_to, 0, "closed");
    let on_a = read_topic(dir_a.path(), "fail").await;
    let on_b = read_topic(dir_b.path(), "fail").await;
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "both collectors got data"
    );
    let mut counts: HashMap<Bytes, usize> = HashMap::new();
    for p in on_a.iter().chain(on_b.iter()) {
        *counts.entry(p.clone()).or_insert(0) += 1;
    }
    let missing = (0..n)
        .filter(|&i| !counts.contains_key(&payload("fail", i)))
        .count();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "failover: {} on preferred, {} on failover, {duplicates} duplicates, {missing} missing",
        on_a.len(),
        on_b.len()
    );
    assert_eq!(missing, 0, "no acknowledged event lost");
    assert_eq!(counts.len(), n);
    b.stop().await.unwrap();
}

/// A proxy that, on its first connection, forwards requests but swallows the first
/// reply and cuts the connection (the collector has made the batch durable, the
/// publisher never hears so). Later connections are forwarded untouched.
async fn lossy_proxy(target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut server = TcpStream::connect(target).await.unwrap();
            if !first {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                continue;
            }
            first = false;
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = [0u8; 1];
                // The first byte of the first reply: the collector has synced.
                let _ = sr.read(&mut buf).await;
                up.abort();
                let _ = cw.shutdown().await;
                drop(cw);
                drop(sr);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_ack_is_resent_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(dir.path(), "c1").await;
    let proxy = lossy_proxy(collector.thrift_addr()).await;
    let publisher = fast(&[proxy]).max_batch_events(50).build().await.unwrap();
    let n = 2000;
    for i in 0..n {
        publisher.publish("lost", payload("lost", i)).await.unwrap();
    }
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(60), publisher.close())
        .await
        .expect("close within 60 s")
        .unwrap();
    let stats = handle.stats();
    assert!(stats.retried >= 1, "{stats:?}");
    assert!(stats.reconnects >= 1, "{stats:?}");
    let got = read_topic(dir.path(), "lost").await;
    let want: Vec<Bytes> = (0..n).map(|i| payload("lost", i)).collect();
    assert_eq!(got.len(), n, "exactly once");
    assert!(got == want, "in order");
    collector.stop().await.unwrap();
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_gets_typed_errors() {
    assert_eq!(
        Publisher::builder().build().await.unwrap_err(),
        BuildError::NoCollectors
    );
    assert!(matches!(
        Publisher::builder()
            .collectors(["127.0.0.1:1"])
            .max_in_flight(65)
            .build()
            .await,
        Err(BuildError::InvalidSetting { .. })
    ));
    let dead = dead_addr().await;
    let publisher = fast(&[dead])
        .max_message_bytes(10)
        .topic_encoding("lines_topic", Encoding::Lines)
        .topic_encoding("b64_topic", Encoding::Base64)
        .build()
        .await
        .unwrap();
    for bad in ["", "has space", "dash-no", &"x".repeat(129)] {
        assert_eq!(
            publisher.publish(bad, "p").await,
            Err(PublishError::InvalidTopic {
                topic: bad.to_string()
            })
        );
    }
    assert_eq!(
        publisher.publish("t", vec![b'x'; 11]).await,
        Err(PublishError::MessageTooLarge { len: 11, max: 10 })
    );
    assert_eq!(
        publisher.publish_acked("t", vec![b'x'; 11]).await,
        Err(PublishError::MessageTooLarge { len: 11, max: 10 })
    );
    assert_eq!(
        publisher.publish("lines_topic", "a\nb").await,
        Err(PublishError::NewlineInLinesPayload {
            topic: "lines_topic".to_string(),
            at: 1
        })
    );
    publisher.publish("b64_topic", "a\nb").await.unwrap();
    publisher.publish("undeclared", "a\nb").await.unwrap();
    assert_eq!(publisher.stats().failed, 7);
    // Dropping a publisher whose collector is unreachable does not hang.
    drop(publisher);

    // A tiny queue in front of an unreachable collector fills up.
    let full = |policy| {
        fast(&[dead])
            .queue_capacity(1)
            .max_in_flight(1)
            .max_batch_events(1)
            .when_full(policy)
    };
    let publisher = full(WhenFull::Error).build().await.unwrap();
    let mut result = Ok(());
    for i in 0..10 {
        result = publisher.publish("t", payload("t", i)).await;
        if result.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(result, Err(PublishError::QueueFull));
    let stats = publisher.stats();
    assert!(stats.queue_depth >= 2, "{stats:?}");
    drop(publisher);

    let publisher = full(WhenFull::Timeout(Duration::from_millis(100)))
        .build()
        .await
        .unwrap();
    let mut result = Ok(());
    for i in 0..10 {
        let started = Instant::now();
        result = publisher.publish("t", payload("t", i)).await;
        if result.is_err() {
            assert!(started.elapsed() >= Duration::from_millis(100));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        result,
        Err(PublishError::Timeout(Duration::from_millis(100)))
    );
    // publish_acked on a publisher dropped meanwhile fails instead of hanging.
    let clone = publisher.clone();
    let waiting = tokio::spawn(async move {
        let p = clone;
        tokio::time::timeout(Duration::from_secs(1), p.flush()).await
    });
    assert!(
        waiting.await.unwrap().is_err(),
        "flush waits for a dead collector"
    );
    tokio::time::timeout(Duration::from_secs(5), async move { drop(publisher) })
        .await
        .unwrap();
}

/// What a scripted fake server does.
#[derive(Debug, Default)]
struct Script {
    /// Answer LogBatch with UNKNOWN_METHOD (a plain Scribe server).
    plain_scribe: bool,
    /// Answer this many calls with TRY_LATER first.
    try_later: usize,
    /// What was accepted: (method, sequence, payloads).
    accepted: Vec<(String, Option<i64>, Vec<Bytes>)>,
}

async fn fake_server(script: Arc<Mutex<Script>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Ok(Some(frame)) = read_frame(&mut stream, 1 << 26, &mut buf).await {
                    let request = decode_request(frame).unwrap();
                    let reply = {
                        let mut s = script.lock().unwrap();
                        let (seq, entries) = match &request.call {
                            Call::LogBatch {
                                sequence, entries, ..
                            } => (Some(*sequence), entries),
                            Call::Log { entries } => (None, entries),
                            _ => panic!("unexpected call"),
                        };
                        if s.plain_scribe && seq.is_some() {
                            Reply::UnknownMethod
                        } else if s.try_later > 0 {
                            s.try_later -= 1;
                            Reply::ResultCode(ResultCode::TryLater)
                        } else {
                            let payloads = entries.iter().map(|e| e.message.clone()).collect();
                            s.accepted.push((request.name.clone(), seq, payloads));
                            Reply::ResultCode(ResultCode::Ok)
                        }
                    };
                    let mut out = Vec::new();
                    request.encode_reply(&reply, &mut out);
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_plain_log_on_unknown_method() {
    let script = Arc::new(Mutex::new(Script {
        plain_scribe: true,
        ..Default::default()
    }));
    let addr = fake_server(script.clone()).await;
    // Auditing off: the fake server records every entry it accepts.
    let publisher = fast(&[addr])
        .max_batch_events(10)
        .audit_interval(None)
        .build()
        .await
        .unwrap();
    for i in 0..100 {
        publisher.publish("t", payload("t", i)).await.unwrap();
    }
    let handle = publisher.clone();
    publisher.close().await.unwrap();
    assert!(handle.stats().legacy_log);
    let s = script.lock().unwrap();
    let got: Vec<Bytes> = s.accepted.iter().flat_map(|a| a.2.clone()).collect();
    let want: Vec<Bytes> = (0..100).map(|i| payload("t", i)).collect();
    assert_eq!(got, want);
    assert!(s.accepted.iter().all(|a| a.0 == "Log" && a.1.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_later_retries_the_same_batch_in_place() {
    let script = Arc::new(Mutex::new(Script {
        try_later: 5,
        ..Default::default()
    }));
    let addr = fake_server(script.clone()).await;
    let publisher = fast(&[addr])
        .max_batch_events(10)
        .max_in_flight(1)
        .audit_interval(None)
        .build()
        .await
        .unwrap();
    for i in 0..100 {
        publisher.publish("t", payload("t", i)).await.unwrap();
    }
    let handle = publisher.clone();
    publisher.close().await.unwrap();
    let stats = handle.stats();
    assert_eq!(stats.try_later, 5);
    assert_eq!(stats.retried, 5);
    let s = script.lock().unwrap();
    let seqs: Vec<i64> = s.accepted.iter().map(|a| a.1.unwrap()).collect();
    let want_seqs: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, want_seqs, "sequences from 1, in order");
    let got: Vec<Bytes> = s.accepted.iter().flat_map(|a| a.2.clone()).collect();
    assert_eq!(got, (0..100).map(|i| payload("t", i)).collect::<Vec<_>>());
}

#[test]
fn blocking_publisher_works_without_a_runtime() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector = rt.block_on(start_collector(dir.path(), "c1"));
    let publisher = Publisher::builder()
        .collectors([collector.thrift_addr().to_string()])
        .build_blocking()
        .unwrap();
    for i in 0..50 {
        publisher.publish("sync", payload("sync", i)).unwrap();
    }
    publisher
        .publish_acked("sync", payload("sync", 50))
        .unwrap();
    publisher.flush().unwrap();
    assert_eq!(publisher.stats().acknowledged, 51);
    publisher.close().unwrap();
    let got = rt.block_on(read_topic(dir.path(), "sync"));
    assert_eq!(got, (0..51).map(|i| payload("sync", i)).collect::<Vec<_>>());
    rt.block_on(collector.stop()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn returns_to_the_preferred_collector() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = start_collector(dir_a.path(), "ca").await;
    let addr_a = a.thrift_addr();
    a.stop().await.unwrap();
    let b = start_collector(dir_b.path(), "cb").await;
    let publisher = fast(&[addr_a, b.thrift_addr()])
        .preferred_retry(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    for i in 0..100 {
        publisher.publish("pref", payload("pref", i)).await.unwrap();
    }
    publisher.flush().await.unwrap();
    assert_eq!(
        publisher.stats().connected_to,
        2,
        "on the failover collector"
    );
    let a = collector::on_dir(dir_a.path())
        .id("ca")
        .listen(&addr_a.to_string())
        .start()
        .await;
    wait::until(
        "the publisher back on the preferred collector",
        Duration::from_secs(10),
        || async { publisher.stats().connected_to == 1 },
    )
    .await;
    for i in 100..200 {
        publisher.publish("pref", payload("pref", i)).await.unwrap();
    }
    publisher.close().await.unwrap();
    let on_b = read_topic(dir_b.path(), "pref").await;
    let on_a = read_topic(dir_a.path(), "pref").await;
    assert_eq!(
        on_b,
        (0..100).map(|i| payload("pref", i)).collect::<Vec<_>>()
    );
    assert_eq!(
        on_a,
        (100..200).map(|i| payload("pref", i)).collect::<Vec<_>>()
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_connections_store_every_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(dir.path(), "c1").await;
    // The first connection loses an acknowledgement: every connection is dropped
    // and the unacknowledged batches re-sent with their sequences.
    let proxy = lossy_proxy(collector.thrift_addr()).await;
    let publisher = fast(&[proxy])
        .connections(4)
        .max_batch_events(100)
        .build()
        .await
        .unwrap();
    let n = 20_000;
    for i in 0..n {
        for topic in ["multi_a", "multi_b"] {
            publisher.publish(topic, payload(topic, i)).await.unwrap();
        }
    }
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(60), publisher.close())
        .await
        .expect("close within 60 s")
        .unwrap();
    let stats = handle.stats();
    assert_eq!(stats.acknowledged, 2 * n as u64, "{stats:?}");
    assert_eq!((stats.queue_depth, stats.failed), (0, 0));
    assert!(stats.reconnects >= 1, "{stats:?}");
    for topic in ["multi_a", "multi_b"] {
        let mut got = read_topic(dir.path(), topic).await;
        assert_eq!(got.len(), n, "{topic}: exactly once");
        // Batches may be stored out of order across connections; each batch is
        // in order, and every event is there once.
        got.sort();
        let want: Vec<Bytes> = (0..n).map(|i| payload(topic, i)).collect();
        assert!(got == want, "{topic}: every event once");
    }
    assert_eq!(
        fast(&[proxy]).connections(17).build().await.unwrap_err(),
        BuildError::InvalidSetting {
            name: "connections",
            reason: "must be between 1 and 16".into()
        }
    );
    collector.stop().await.unwrap();
}
