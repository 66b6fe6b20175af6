//! The disk spool against a real in-process collector that is stopped and started
//! again on the same address: spool while it is down, replay after a publisher
//! restart (exactly once, in order, also when the replay itself is interrupted), a
//! torn spool segment, and a full spool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_collector::Collector;
use conduit_publisher::{BuildError, PublishError, Publisher, PublisherBuilder, WhenFull};
use conduit_testkit::collector::{self, stored_payloads};
use conduit_testkit::{local_storage, wait};

/// The collector writing under `root`, listening on `listen`.
async fn start_collector_on(root: &Path, listen: &str) -> Collector {
    collector::on_dir(root).listen(listen).start().await
}

/// A collector's address, with the collector stopped (nothing listens there until
/// it is started again with [`start_collector_on`]).
async fn stopped_collector(root: &Path) -> SocketAddr {
    let collector = start_collector_on(root, "127.0.0.1:0").await;
    let addr = collector.thrift_addr();
    collector.stop().await.unwrap();
    addr
}

/// Every payload of a topic under a root, in file order.
async fn read_topic(root: &Path, topic: &str) -> Vec<Bytes> {
    stored_payloads(&*local_storage(root), topic).await
}

fn payload(tag: &str, i: usize) -> Bytes {
    Bytes::from(format!("{tag}-{i:06}"))
}

fn spooling(addr: SocketAddr, spool: &Path) -> PublisherBuilder {
    Publisher::builder()
        .collectors([addr.to_string()])
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(500))
        .spool_dir(spool)
        .spool_after(Duration::from_millis(100))
        .audit_interval(None)
}

fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    out.sort();
    out
}

/// How often a wait checks the publisher's stats: some states (a replay under
/// way) do not last long.
const STATS_POLL: Duration = Duration::from_millis(2);

/// Publishes `n` events while the collector is down and closes: everything ends up
/// spooled.
async fn spool_while_down(addr: SocketAddr, spool: &Path, tag: &str, n: usize) {
    let publisher = spooling(addr, spool)
        .max_batch_events(10)
        .build()
        .await
        .unwrap();
    for i in 0..n {
        publisher.publish("spooled", payload(tag, i)).await.unwrap();
    }
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(30), publisher.close())
        .await
        .expect("close returns once everything is spooled")
        .unwrap();
    let stats = handle.stats();
    assert_eq!(stats.spooled, n as u64, "{stats:?}");
    assert_eq!(stats.spool_events, n as u64);
    assert_eq!(
        (stats.acknowledged, stats.failed, stats.queue_depth),
        (0, 0, 0)
    );
    assert!(stats.spool_bytes > (n * 10) as u64, "{stats:?}");
    assert!(stats.spooling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spool_survives_a_restart_and_is_replayed_exactly_once_in_order() {
    let root = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let addr = stopped_collector(root.path()).await;
    let n = 3000;

    // A publisher while the collector is down: publish returns, close returns once
    // everything is spooled, and an acked call learns its event is spooled.
    let publisher = spooling(addr, spool.path())
        .max_batch_events(10)
        .build()
        .await
        .unwrap();
    let acked = {
        let p = publisher.clone();
        tokio::spawn(async move { p.publish_acked("spooled_acked", "acked").await })
    };
    wait::until_every(
        "the acked event to be queued",
        Duration::from_secs(10),
        STATS_POLL,
        || async { publisher.stats().enqueued == 1 },
    )
    .await;
    for i in 0..n {
        publisher
            .publish("spooled", payload("first", i))
            .await
            .unwrap();
    }
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(30), publisher.close())
        .await
        .expect("close returns once everything is spooled")
        .unwrap();
    assert_eq!(acked.await.unwrap(), Err(PublishError::Spooled));
    let stats = handle.stats();
    assert_eq!(stats.spooled, n as u64 + 1, "{stats:?}");
    assert_eq!(stats.spool_events, n as u64 + 1);
    assert_eq!(
        (stats.acknowledged, stats.failed, stats.queue_depth),
        (0, 0, 0)
    );
    let text = stats.to_prometheus();
    assert!(
        text.contains(&format!("conduit_publisher_spooled_total {}\n", n + 1)),
        "{text}"
    );
    assert!(text.contains("conduit_publisher_spooling 1\n"), "{text}");
    assert!(!segments(spool.path()).is_empty());
    drop(handle);

    // The collector is back; a new publisher on the same spool replays the old
    // events before its own.
    let collector = start_collector_on(root.path(), &addr.to_string()).await;
    let publisher = spooling(addr, spool.path()).build().await.unwrap();
    let m = 500;
    for i in 0..m {
        publisher
            .publish("spooled", payload("second", i))
            .await
            .unwrap();
    }
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(60), publisher.close())
        .await
        .expect("close within 60 s")
        .unwrap();
    let stats = handle.stats();
    // Its own events went through the spool too, behind the old ones.
    assert_eq!(stats.spooled, m as u64, "{stats:?}");
    assert_eq!(stats.replayed, (n + 1 + m) as u64, "{stats:?}");
    assert_eq!(stats.spool_events, 0);
    assert_eq!(stats.spool_bytes, 0);
    assert!(!stats.spooling);
    assert!(
        segments(spool.path()).is_empty(),
        "acknowledged segments deleted"
    );
    let got = read_topic(root.path(), "spooled").await;
    let want: Vec<Bytes> = (0..n)
        .map(|i| payload("first", i))
        .chain((0..m).map(|i| payload("second", i)))
        .collect();
    assert_eq!(got.len(), want.len(), "each event stored exactly once");
    assert!(got == want, "old events first, all in publish order");
    assert_eq!(
        read_topic(root.path(), "spooled_acked").await,
        vec![Bytes::from("acked")]
    );
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_interrupted_by_a_crash_never_duplicates() {
    let root = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let addr = stopped_collector(root.path()).await;
    let n = 20_000;
    spool_while_down(addr, spool.path(), "crash", n).await;

    let collector = start_collector_on(root.path(), &addr.to_string()).await;
    // Replay part of the spool, then "crash" (drop without close): the segment is
    // not deleted yet, so the next publisher re-sends batches that are already
    // stored; the collector recognises their publisher id and sequence.
    let publisher = spooling(addr, spool.path()).build().await.unwrap();
    wait::until_every(
        "a partial replay",
        Duration::from_secs(30),
        STATS_POLL,
        || async { publisher.stats().replayed > 0 },
    )
    .await;
    let partial = publisher.stats().replayed;
    drop(publisher);
    assert!(
        partial < n as u64,
        "interrupted mid-replay ({partial} of {n})"
    );
    // The background task releases the spool's lock when it stops.
    let deadline = Instant::now() + Duration::from_secs(10);
    let publisher = loop {
        match spooling(addr, spool.path()).build().await {
            Ok(p) => break p,
            Err(BuildError::Spool { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(60), publisher.close())
        .await
        .expect("close within 60 s")
        .unwrap();
    assert_eq!(handle.stats().spool_events, 0);
    let got = read_topic(root.path(), "spooled").await;
    let mut counts: HashMap<Bytes, usize> = HashMap::new();
    for p in &got {
        *counts.entry(p.clone()).or_insert(0) += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "interrupted replay: {partial} replayed before the crash, {} stored, {duplicates} duplicates",
        got.len()
    );
    assert_eq!(duplicates, 0, "no duplicates");
    let want: Vec<Bytes> = (0..n).map(|i| payload("crash", i)).collect();
    assert!(got == want, "every event exactly once, in order");
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torn_segment_is_cut_and_its_intact_prefix_replayed() {
    let root = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let addr = stopped_collector(root.path()).await;
    let n = 1000;
    spool_while_down(addr, spool.path(), "torn", n).await;
    // A crash in the middle of writing the last record: cut it short.
    let last = segments(spool.path()).pop().unwrap();
    let size = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(size - 7).unwrap();
    drop(file);

    let collector = start_collector_on(root.path(), &addr.to_string()).await;
    let publisher = spooling(addr, spool.path()).build().await.unwrap();
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(60), publisher.close())
        .await
        .expect("close within 60 s")
        .unwrap();
    let stats = handle.stats();
    let got = read_topic(root.path(), "spooled").await;
    // Batches hold 10 events; the torn one is the last.
    assert_eq!(got.len(), n - 10, "all but the torn batch");
    assert_eq!(stats.replayed, (n - 10) as u64, "{stats:?}");
    let want: Vec<Bytes> = (0..n - 10).map(|i| payload("torn", i)).collect();
    assert!(got == want, "the intact prefix, exactly once, in order");
    assert!(segments(spool.path()).is_empty());
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_applies_the_when_full_policy() {
    let root = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let addr = stopped_collector(root.path()).await;
    let max = 64 * 1024;
    let publisher = spooling(addr, spool.path())
        .spool_max_bytes(max)
        .queue_capacity(100)
        .max_batch_events(10)
        .max_in_flight(2)
        .when_full(WhenFull::Error)
        .build()
        .await
        .unwrap();
    wait::until_every(
        "spooling to start",
        Duration::from_secs(10),
        STATS_POLL,
        || async { publisher.stats().spooling },
    )
    .await;
    let body = "x".repeat(1000);
    // A spooled batch is 10 events of ~1 KB: once the spool holds more than `max`
    // minus one batch (and a margin), it refuses the next one.
    let spool_full = |stats: &conduit_publisher::Stats| stats.spool_bytes + 12 * 1024 > max;
    let mut accepted = 0usize;
    let mut refusals = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        assert!(Instant::now() < deadline, "the spool never filled");
        match publisher
            .publish("full", Bytes::from(format!("{accepted:06}{body}")))
            .await
        {
            Ok(()) => accepted += 1,
            Err(e) => {
                refusals += 1;
                if spool_full(&publisher.stats()) {
                    break e;
                }
                // The queue filled faster than the background task moved it into
                // the spool (a loaded machine): the policy is under test only once
                // the spool is full too, so wait for the queue to drain into it.
                assert_eq!(e, PublishError::QueueFull);
                wait::until_every(
                    "the queue to drain into the spool",
                    Duration::from_secs(10),
                    STATS_POLL,
                    || async {
                        let stats = publisher.stats();
                        stats.queue_depth < 100 || spool_full(&stats)
                    },
                )
                .await;
            }
        }
    };
    assert_eq!(refused, PublishError::QueueFull);
    // The policy holds for as long as nothing drains.
    assert_eq!(
        publisher.publish("full", "more").await,
        Err(PublishError::QueueFull)
    );
    let stats = publisher.stats();
    assert!(stats.spooling, "{stats:?}");
    assert!(stats.spooled > 0, "{stats:?}");
    assert!(stats.spool_bytes <= max, "bounded: {stats:?}");
    assert_eq!(stats.failed, refusals + 1, "every refused call");
    assert_eq!(
        stats.enqueued,
        stats.spooled + stats.queue_depth,
        "every accepted event is spooled or waiting: {stats:?}"
    );

    // The collector returns: the spool drains, the waiting events follow, in order.
    let collector = start_collector_on(root.path(), &addr.to_string()).await;
    tokio::time::timeout(Duration::from_secs(60), publisher.flush())
        .await
        .expect("flush within 60 s")
        .unwrap();
    wait::until_every(
        "the spool to drain",
        Duration::from_secs(60),
        STATS_POLL,
        || async { publisher.stats().spool_events == 0 },
    )
    .await;
    let stats = publisher.stats();
    assert_eq!(
        stats.replayed + stats.acknowledged,
        accepted as u64,
        "{stats:?}"
    );
    let got = read_topic(root.path(), "full").await;
    assert_eq!(got.len(), accepted, "each accepted event exactly once");
    for (i, p) in got.iter().enumerate() {
        assert!(
            p.starts_with(format!("{i:06}").as_bytes()),
            "in order at {i}"
        );
    }
    publisher.close().await.unwrap();
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_per_spool_directory() {
    let spool = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let addr = stopped_collector(root.path()).await;
    let first = spooling(addr, spool.path()).build().await.unwrap();
    let err = spooling(addr, spool.path()).build().await.unwrap_err();
    match &err {
        BuildError::Spool { dir, reason } => {
            assert_eq!(dir, spool.path());
            assert!(reason.contains("in use"), "{reason}");
        }
        other => panic!("expected a spool error, got {other:?}"),
    }
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_over_several_connections_stores_each_event_once() {
    let root = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let addr = stopped_collector(root.path()).await;
    let n = 5000;
    spool_while_down(addr, spool.path(), "multi", n).await;
    let collector = start_collector_on(root.path(), &addr.to_string()).await;
    let publisher = spooling(addr, spool.path())
        .connections(4)
        .build()
        .await
        .unwrap();
    let handle = publisher.clone();
    tokio::time::timeout(Duration::from_secs(60), publisher.close())
        .await
        .expect("close within 60 s")
        .unwrap();
    let stats = handle.stats();
    assert_eq!(stats.replayed, n as u64, "{stats:?}");
    assert_eq!((stats.spool_events, stats.spool_bytes), (0, 0));
    assert!(segments(spool.path()).is_empty());
    let mut got = read_topic(root.path(), "spooled").await;
    assert_eq!(got.len(), n, "exactly once");
    got.sort();
    let want: Vec<Bytes> = (0..n).map(|i| payload("multi", i)).collect();
    assert!(got == want);
    collector.stop().await.unwrap();
}
