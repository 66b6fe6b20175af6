//! Push, not poll, for live data (issue 17), against real `conduit collector`
//! processes on local disk: a PinTail consumer of the local view that has caught
//! up with a collector's open file long-polls the collector's open-file endpoint
//! (`/v1/open/...&wait_ms=W`), which answers when its next sync makes new bytes
//! durable.
//!
//! - Delivery goes through the long-poll (the consumer's stats and the
//!   collector's `conduit_collector_open_waits_total` say so), every event once.
//! - The collector's limits: at most `MAX_WAITERS` (128) held requests, the next
//!   one answered at once with `conduit-wait: refused`, a warning naming the
//!   limit and a counter; `wait_ms` cut to `MAX_WAIT_MS` (2 s).
//! - A collector killed with SIGKILL while the reader waits on it: the reader
//!   reads the rest of the open file from storage and, after the collector's
//!   restart, its new file; every acknowledged event is delivered exactly once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use conduit_pintail::{Consumer, ReadView};
use conduit_testkit::local_storage;
use conduit_testkit::process::{metric, CollectorProcess};
use conduit_testkit::scribe::{numbered, Client};
use conduit_testkit::tail::{take, texts};
use conduit_testkit::wait::until;

/// How long a test waits for each message.
const WITHIN: Duration = Duration::from_secs(20);
/// How long a condition may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// Starts at most 40 s into a minute, so the collector (system clock) does not
/// roll its file while a test holds requests on it.
async fn early_in_a_minute() {
    until(
        "a time early in a minute",
        Duration::from_secs(70),
        || async { chrono::Utc::now().timestamp() % 60 < 40 },
    )
    .await;
}

fn consumer(root: &Path) -> conduit_pintail::ConsumerBuilder {
    Consumer::builder("clicks")
        .cluster("dc1", local_storage(root))
        .view(ReadView::Local)
        .heartbeat(Duration::from_millis(100))
        // A slow storage poll: what arrives fast was pushed.
        .poll_interval(Duration::from_millis(200), Duration::from_millis(200))
        .group("g")
}

fn open_waits(collector: &CollectorProcess, result: &str) -> f64 {
    metric(
        &collector.metrics(),
        &format!("conduit_collector_open_waits_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

fn waiters(collector: &CollectorProcess) -> f64 {
    metric(&collector.metrics(), "conduit_collector_open_waiters").unwrap_or(0.0)
}

/// The collector's only open data file of `clicks` (name, length on disk).
fn open_file(root: &Path) -> (String, u64) {
    let dir = root.join("data/clicks/c1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".zst"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files.pop().expect("an open file")
}

/// Sends a GET on a new connection; the answer is read by [`answer`].
fn send_get(addr: &str, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    s
}

/// Status, head and body of the answer on `s`.
fn answer(mut s: TcpStream) -> (u16, String, Vec<u8>) {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), raw[end + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_are_pushed_through_the_collectors_long_poll() {
    early_in_a_minute().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let collector = CollectorProcess::start(root.to_str().unwrap(), "c1", &[], dir.path()).unwrap();
    let mut client = Client::connect(collector.thrift_addr.as_str()).await;
    client.log_acked("clicks", &numbered("a", 0, 10)).await;
    let mut c = consumer(&root).build().await.unwrap();
    let mut got = texts(&take(&mut c, 10, WITHIN).await);
    // Caught up: asked for more, the reader waits at the collector for the next
    // sync (the request stays held after `next_timeout` returns).
    assert!(c
        .next_timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    until(
        "the reader's long-poll held at the collector",
        PATIENCE,
        || async { waiters(&collector) == 1.0 },
    )
    .await;
    for round in 1..20 {
        client
            .log_acked("clicks", &numbered("a", round * 10, 10))
            .await;
        got.extend(texts(&take(&mut c, 10, WITHIN).await));
    }
    assert_eq!(got, numbered("a", 0, 200), "every event once, in order");
    let stats = c.stats();
    assert!(stats.collector_http_reads >= 19, "{stats:?}");
    assert!(stats.collector_http_waits >= 19, "{stats:?}");
    assert_eq!(stats.collector_http_fallbacks, 0, "{stats:?}");
    assert!(
        // At least the request seen held above; a call that arrives before the
        // reader asks again is answered at once (`ok`, no wait).
        open_waits(&collector, "notified") >= 1.0
            && metric(
                &collector.metrics(),
                "conduit_collector_open_reads_total{result=\"ok\"}"
            )
            .unwrap_or(0.0)
                >= 19.0,
        "{}",
        collector.metrics()
    );
    assert_eq!(open_waits(&collector, "refused"), 0.0);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_bounded_and_the_wait_is_cut_to_its_maximum() {
    early_in_a_minute().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut collector =
        CollectorProcess::start(root.to_str().unwrap(), "c1", &[], dir.path()).unwrap();
    let mut client = Client::connect(collector.thrift_addr.as_str()).await;
    client.log_acked("clicks", &numbered("a", 0, 10)).await;
    let (name, synced) = open_file(&root);
    let target = |offset: u64, wait_ms: u64| {
        format!("/v1/open/clicks/c1/{name}?offset={offset}&wait_ms={wait_ms}")
    };
    // 128 held (the limit), each waiting up to 2 s; they are answered by the next
    // sync.
    let http = collector.http_addr.clone();
    let held: Vec<TcpStream> = (0..128)
        .map(|_| send_get(&http, &target(synced, 2_000)))
        .collect();
    until("128 requests held", PATIENCE, || async {
        waiters(&collector) == 128.0
    })
    .await;
    // One more: answered at once, empty, refused.
    let (status, head, body) = answer(send_get(&http, &target(synced, 2_000)));
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("conduit-wait: refused"), "{head}");
    assert!(body.is_empty());
    assert_eq!(open_waits(&collector, "refused"), 1.0);
    let log = collector.log();
    assert!(
        log.contains("open-file long-poll answered at once") && log.contains("\"max_waiters\":128"),
        "{log}"
    );
    // The next sync answers every held request with its bytes.
    client.log_acked("clicks", &numbered("a", 10, 10)).await;
    let (_, now) = open_file(&root);
    for s in held {
        let (status, head, body) = answer(s);
        assert_eq!(status, 200, "{head}");
        assert_eq!(body.len() as u64, now - synced, "{head}");
    }
    assert_eq!(open_waits(&collector, "notified"), 128.0);
    assert_eq!(waiters(&collector), 0.0);
    // A wait longer than 2 s is cut to 2 s: an empty answer, counted as a timeout.
    let started = Instant::now();
    let (status, head, body) = answer(send_get(&http, &target(now, 600_000)));
    let waited = started.elapsed();
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty(), "{head}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    assert_eq!(open_waits(&collector, "timeout"), 1.0);
    collector.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_while_the_reader_waits_loses_and_repeats_nothing() {
    early_in_a_minute().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut collector =
        CollectorProcess::start(root.to_str().unwrap(), "c1", &[], dir.path()).unwrap();
    let (thrift, http) = (collector.thrift_addr.clone(), collector.http_addr.clone());
    let mut client = Client::connect(thrift.as_str()).await;
    let mut c = consumer(&root).build().await.unwrap();
    let mut got = Vec::new();
    client.log_acked("clicks", &numbered("a", 0, 100)).await;
    got.extend(texts(&take(&mut c, 100, WITHIN).await));
    assert!(c
        .next_timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    until(
        "the reader's long-poll held at the collector",
        PATIENCE,
        || async { waiters(&collector) == 1.0 },
    )
    .await;
    // Acknowledged while the consumer is not asking: the held request takes the
    // first call's bytes; the second call's are then only in the collector's
    // memory and in storage when the collector dies.
    let notified = open_waits(&collector, "notified");
    client.log_acked("clicks", &numbered("a", 100, 100)).await;
    until("the held request answered", PATIENCE, || async {
        open_waits(&collector, "notified") == notified + 1.0
    })
    .await;
    client.log_acked("clicks", &numbered("a", 200, 100)).await;
    collector.kill9();
    drop(client);
    got.extend(texts(&take(&mut c, 200, WITHIN).await));
    let stats = c.stats();
    assert!(stats.collector_http_fallbacks >= 1, "{stats:?}");
    // Restarted on the same ports: it recovers the old file, and the reader follows
    // into its new one.
    let collector = CollectorProcess::start_on(
        root.to_str().unwrap(),
        "c1",
        &thrift,
        &http,
        &[],
        dir.path(),
    )
    .unwrap();
    let mut client = Client::connect(collector.thrift_addr.as_str()).await;
    client.log_acked("clicks", &numbered("a", 300, 100)).await;
    got.extend(texts(&take(&mut c, 100, WITHIN).await));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &got {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    assert!(counts.values().all(|&n| n == 1), "a duplicate: {counts:?}");
    assert_eq!(
        got,
        numbered("a", 0, 400),
        "every acknowledged event once, in order"
    );
    // Nothing more comes.
    assert!(c
        .next_timeout(Duration::from_millis(500))
        .await
        .unwrap()
        .is_none());
    c.close().await.unwrap();
}
