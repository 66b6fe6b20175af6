//! Idempotence that cannot be turned against a publisher (issue 14), against a
//! real `conduit collector` process:
//!
//! - one `LogBatch` under another publisher's id with an absurd sequence (2^62, the
//!   largest legal one, a negative one) takes nothing from that publisher: its
//!   next batches are all stored;
//! - a sequence outside `0 <= s < 2^62` gets a `TApplicationException` naming the
//!   value, nothing is stored, and the connection keeps working;
//! - a retry of a stored batch is dropped (also after a kill -9 and a restart,
//!   from the marks in the files); the same id and sequence with other content is
//!   stored and counted as a conflict;
//! - a publisher with a fixed id, restarted without a spool, has every event
//!   stored;
//! - the publisher library fails a refused batch (counted, logged) instead of
//!   retrying it forever.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::format::crc32c_append;
use conduit_core::scribe::{ReplyValue, ResultCode, EXCEPTION_PROTOCOL_ERROR};
use conduit_core::storage::LocalStorage;
use conduit_publisher::Publisher;
use conduit_testkit::collector::stored_payloads;
use conduit_testkit::process::{metric, CollectorProcess};
use conduit_testkit::scribe::{numbered, Client};

const ID: &str = "c1";

struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Scene { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn start(&self) -> CollectorProcess {
        CollectorProcess::start(
            &self.root().display().to_string(),
            ID,
            &[],
            &self.dir.path().join("logs"),
        )
        .expect("collector starts")
    }

    /// Every payload stored for `topic` (open files included: what was
    /// acknowledged is there), as strings.
    async fn stored(&self, topic: &str) -> Vec<String> {
        let storage = LocalStorage::open(self.root()).unwrap();
        stored_payloads(&storage, topic)
            .await
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

fn entries(topic: &'static str, payloads: &[String]) -> Vec<(&'static str, String)> {
    payloads.iter().map(|p| (topic, p.clone())).collect()
}

fn counter(collector: &CollectorProcess, name: &str) -> f64 {
    let text = collector.metrics();
    metric(&text, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// The exception a refused `LogBatch` gets: PROTOCOL_ERROR and its message.
fn protocol_error(reply: ReplyValue) -> String {
    match reply {
        ReplyValue::Exception { kind, message } => {
            assert_eq!(kind, EXCEPTION_PROTOCOL_ERROR, "{message}");
            message
        }
        other => panic!("expected a TApplicationException, got {other:?}"),
    }
}

/// Issue 14: "one `LogBatch(id, seq = 2^62)` (or a negative seq) under another
/// publisher's id: that publisher's next 50 batches were answered OK and none was
/// stored". Now the absurd sequences are refused, the largest legal one is just a
/// batch, and the victim's 50 batches are all stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_batch_under_another_publishers_id_takes_nothing_from_it() {
    let scene = Scene::new();
    let collector = scene.start();
    let mut forger = Client::connect(&collector.thrift_addr).await;
    let forged = entries("clicks", &["forged".to_string()]);
    for (sequence, what) in [(1i64 << 62, "too large"), (-5, "negative")] {
        let message = protocol_error(forger.log_batch_reply("victim", sequence, &forged).await);
        assert!(
            message.contains(&sequence.to_string()),
            "{what}: the message names the value: {message}"
        );
    }
    // The largest legal sequence is stored like any batch, and harms nobody.
    assert_eq!(
        forger.log_batch("victim", (1i64 << 62) - 1, &forged).await,
        ResultCode::Ok
    );

    let mut victim = Client::connect(&collector.thrift_addr).await;
    let mut sent = Vec::new();
    for seq in 1..=50i64 {
        let payloads = numbered(&format!("victim-{seq}"), 0, 20);
        assert_eq!(
            victim
                .log_batch("victim", seq, &entries("clicks", &payloads))
                .await,
            ResultCode::Ok,
            "batch {seq}"
        );
        sent.extend(payloads);
    }
    let mut stored = scene.stored("clicks").await;
    stored.sort();
    let mut want = sent.clone();
    want.push("forged".to_string());
    want.sort();
    assert_eq!(
        stored.len(),
        want.len(),
        "every acknowledged event of the victim is stored, once"
    );
    assert!(stored == want, "stored exactly what was acknowledged");
    assert_eq!(
        counter(&collector, "conduit_collector_duplicate_batches_total"),
        0.0
    );
    assert_eq!(
        counter(
            &collector,
            "conduit_collector_refused_batches_total{reason=\"sequence_too_large\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &collector,
            "conduit_collector_refused_batches_total{reason=\"negative_sequence\"}"
        ),
        1.0
    );
    let log = collector.log();
    assert!(
        log.contains("sequence out of range") && log.contains("4611686018427387904"),
        "the refusal is logged with the value:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_sequence_gets_a_clear_error_and_the_connection_still_works() {
    let scene = Scene::new();
    let collector = scene.start();
    // Counters present from the start, at zero.
    for reason in ["negative_sequence", "sequence_too_large"] {
        let name = format!("conduit_collector_refused_batches_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(&collector, &name), 0.0, "{name}");
    }
    assert_eq!(
        counter(&collector, "conduit_collector_dedup_conflicts_total"),
        0.0
    );
    let mut client = Client::connect(&collector.thrift_addr).await;
    let refused = entries("clicks", &["never stored".to_string()]);
    let message = protocol_error(client.log_batch_reply("p-neg", -5, &refused).await);
    assert_eq!(message, "LogBatch sequence -5 is negative");
    let message = protocol_error(client.log_batch_reply("p-neg", i64::MIN, &refused).await);
    assert_eq!(
        message,
        format!("LogBatch sequence {} is negative", i64::MIN)
    );
    // The same connection goes on: a plain Log and a legal LogBatch are stored.
    assert_eq!(
        client.log_to("clicks", &["plain".to_string()]).await,
        ResultCode::Ok
    );
    assert_eq!(
        client
            .log_batch("p-neg", 0, &entries("clicks", &["batch".to_string()]))
            .await,
        ResultCode::Ok
    );
    let mut stored = scene.stored("clicks").await;
    stored.sort();
    assert_eq!(stored, vec!["batch", "plain"]);
    assert_eq!(
        counter(
            &collector,
            "conduit_collector_refused_batches_total{reason=\"negative_sequence\"}"
        ),
        2.0
    );
    // One log line for the two refusals (rate-limited), naming the value.
    let log = collector.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sequence out of range"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("-5"), "{}", lines[0]);
}

/// A retried batch is dropped only when it is a replay: same id, sequence and
/// content, also after a crash (the table is rebuilt from the marks). Other
/// content under the same id and sequence is stored and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_exact_replay_of_a_stored_batch_is_dropped() {
    let scene = Scene::new();
    let mut collector = scene.start();
    let first = entries("clicks", &numbered("first", 0, 30));
    let other = entries("clicks", &numbered("other", 0, 30));
    let mut client = Client::connect(&collector.thrift_addr).await;
    assert_eq!(client.log_batch("p1", 7, &first).await, ResultCode::Ok);
    // The retry of a batch whose ack was lost: same connection, then a new one.
    assert_eq!(client.log_batch("p1", 7, &first).await, ResultCode::Ok);
    let mut again = Client::connect(&collector.thrift_addr).await;
    assert_eq!(again.log_batch("p1", 7, &first).await, ResultCode::Ok);
    assert_eq!(
        counter(&collector, "conduit_collector_duplicate_batches_total"),
        2.0
    );
    assert_eq!(scene.stored("clicks").await.len(), 30);
    // Different content under the same id and sequence: stored, counted, warned.
    assert_eq!(client.log_batch("p1", 7, &other).await, ResultCode::Ok);
    assert_eq!(scene.stored("clicks").await.len(), 60);
    assert_eq!(
        counter(&collector, "conduit_collector_dedup_conflicts_total"),
        1.0
    );
    assert!(
        collector
            .log()
            .contains("reuses the publisher id and sequence of a different batch"),
        "{}",
        collector.log()
    );

    // After kill -9 the files are recovered and the table rebuilt from their marks:
    // replays of both are still dropped.
    collector.kill9();
    let collector = scene.start();
    let mut client = Client::connect(&collector.thrift_addr).await;
    assert_eq!(client.log_batch("p1", 7, &first).await, ResultCode::Ok);
    assert_eq!(client.log_batch("p1", 7, &other).await, ResultCode::Ok);
    assert_eq!(
        counter(&collector, "conduit_collector_duplicate_batches_total"),
        2.0
    );
    assert_eq!(
        counter(&collector, "conduit_collector_dedup_conflicts_total"),
        0.0
    );
    let mut stored = scene.stored("clicks").await;
    stored.sort();
    let mut want: Vec<String> = first.iter().chain(&other).map(|(_, p)| p.clone()).collect();
    want.sort();
    assert!(stored == want, "each batch stored exactly once");
}

/// A publisher with a fixed id restarted without a spool: the second session's
/// sequences start above the first's, so none of its batches looks like a replay
/// (before, they restarted at 1 and were dropped as duplicates: acknowledged, not
/// stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_id_publisher_restarted_without_a_spool_has_everything_stored() {
    let scene = Scene::new();
    let collector = scene.start();
    let mut sent = Vec::new();
    for session in 0..2 {
        let publisher = Publisher::builder()
            .collectors([collector.thrift_addr.clone()])
            .publisher_id("checkout-7")
            .max_batch_events(50)
            .audit_interval(None)
            .build()
            .await
            .unwrap();
        for payload in numbered(&format!("session{session}"), 0, 500) {
            publisher
                .publish("orders", Bytes::from(payload.clone()))
                .await
                .unwrap();
            sent.push(payload);
        }
        publisher.flush().await.unwrap();
        let stats = publisher.stats();
        assert_eq!(stats.acknowledged, 500, "session {session}: {stats:?}");
        publisher.close().await.unwrap();
    }
    let mut stored = scene.stored("orders").await;
    stored.sort();
    sent.sort();
    assert_eq!(stored.len(), 1000);
    assert!(
        stored == sent,
        "every event of both sessions is stored, once"
    );
    assert_eq!(
        counter(&collector, "conduit_collector_duplicate_batches_total"),
        0.0
    );
    assert_eq!(
        counter(&collector, "conduit_collector_dedup_conflicts_total"),
        0.0
    );
}

/// One spool record (`docs/format.md` §10) holding a batch under `id` with
/// `sequence`, its entries all on `topic`.
fn spool_record(id: &str, sequence: i64, topic: &str, payloads: &[String]) -> Vec<u8> {
    let mut body = vec![id.len() as u8];
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(&sequence.to_le_bytes());
    body.extend_from_slice(&(payloads.len() as u32).to_le_bytes());
    for payload in payloads {
        body.push(topic.len() as u8);
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&29_000_000i64.to_le_bytes());
        body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        body.extend_from_slice(payload.as_bytes());
    }
    let mut record = (body.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&crc32c_append(0, &body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

/// A spool holding a batch the collector refuses (a negative sequence, as a
/// damaged or foreign spool could): the publisher reports its events failed with
/// the collector's message and goes on; it neither retries it forever nor holds
/// back the events after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_fails_a_refused_batch_instead_of_retrying_it() {
    let scene = Scene::new();
    let collector = scene.start();
    let spool = scene.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let refused = numbered("refused", 0, 3);
    let mut segment = b"CNDSPL01".to_vec();
    segment.extend_from_slice(&spool_record("old-run", -1, "orders", &refused));
    write(&spool.join(format!("{:020}.spool", 0)), &segment);

    let started = Instant::now();
    let publisher = Publisher::builder()
        .collectors([collector.thrift_addr.clone()])
        .spool_dir(&spool)
        .audit_interval(None)
        .build()
        .await
        .unwrap();
    let later = numbered("later", 0, 20);
    for payload in &later {
        publisher
            .publish("orders", Bytes::from(payload.clone()))
            .await
            .unwrap();
    }
    let acked = publisher
        .publish_acked("orders", Bytes::from_static(b"acked"))
        .await;
    assert_eq!(acked, Ok(()));
    tokio::time::timeout(Duration::from_secs(20), publisher.flush())
        .await
        .expect("flush returns: the refused batch is not retried forever")
        .unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.failed, 3, "the refused batch's events: {stats:?}");
    // Sent through the spool, which was not empty when they were published.
    assert_eq!(stats.acknowledged + stats.replayed, 21, "{stats:?}");
    assert_eq!(stats.spool_events, 0, "removed from the spool: {stats:?}");
    publisher.close().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let mut stored = scene.stored("orders").await;
    stored.sort();
    let mut want = later.clone();
    want.push("acked".to_string());
    want.sort();
    assert_eq!(stored, want, "everything but the refused batch");
    assert_eq!(
        counter(
            &collector,
            "conduit_collector_refused_batches_total{reason=\"negative_sequence\"}"
        ),
        1.0,
        "sent once, not retried"
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
