//! Audit records: per topic and enqueue minute, the acknowledged counts published to
//! `_audit`, checked end to end against a real in-process collector.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use conduit_core::{Minute, TestClock};
use conduit_publisher::{BuildError, Publisher};
use conduit_testkit::collector::{self, stored_files};
use conduit_testkit::{local_storage, wait};

/// Every payload stored under `data/<topic>/c1/` in files whose name starts with
/// `prefix`.
async fn read_files(root: &Path, topic: &str, prefix: &str) -> Vec<String> {
    stored_files(&*local_storage(root), topic)
        .await
        .iter()
        .filter(|f| f.collector == "c1" && f.name.starts_with(prefix) && f.name.ends_with(".zst"))
        .flat_map(|f| f.payloads())
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect()
}

/// The raw JSON text of a top-level field of a flat JSON object.
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let tag = format!("\"{key}\":");
    let start = json.find(&tag).unwrap_or_else(|| panic!("{key} in {json}")) + tag.len();
    let rest = &json[start..];
    let end = match rest.strip_prefix('"') {
        Some(quoted) => quoted.find('"').unwrap() + 2,
        None => rest.find([',', '}']).unwrap(),
    };
    &rest[..end]
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_counts_match_published_per_topic_and_minute() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector::on_dir(dir.path()).start().await;
    let m0 = Minute::from_epoch_minutes(29_876_345).unwrap();
    let clock = TestClock::at_minute(m0);
    clock.advance(Duration::from_secs(30));
    let publisher = Publisher::builder()
        .collectors([collector.thrift_addr().to_string()])
        .publisher_id("audit-test")
        .clock(clock.shared())
        // Short, so periodic records (deltas) are emitted during the test as well
        // as the final ones at close.
        .audit_interval(Some(Duration::from_millis(20)))
        .max_batch_events(250)
        .build()
        .await
        .unwrap();

    let plan: [(&str, usize, usize); 2] = [("clicks", 3000, 1200), ("views", 1700, 450)];
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (round, minute) in [m0, m0.next().unwrap()].into_iter().enumerate() {
        for (topic, first, second) in plan {
            let n = if round == 0 { first } else { second };
            for i in 0..n {
                publisher
                    .publish(topic, format!("{topic}-{round}-{i}"))
                    .await
                    .unwrap();
                if i % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            *want
                .entry((topic.to_string(), minute.to_string()))
                .or_default() += n as u64;
        }
        // Some events of this minute are acknowledged only after the clock moved on:
        // the enqueue minute is what counts.
        clock.advance(Duration::from_secs(60));
        // `publish` stamps the minute its background task keeps current: wait for
        // it to follow the clock (the enqueue-minute rule in the crate docs).
        let moved = minute.next().unwrap();
        wait::until_every(
            "the enqueue minute to advance",
            Duration::from_secs(10),
            Duration::from_millis(1),
            || async { publisher.enqueue_minute() == Some(moved) },
        )
        .await;
    }
    let handle = publisher.clone();
    publisher.close().await.unwrap();
    collector.stop().await.unwrap();
    let stats = handle.stats();
    let total: u64 = want.values().sum();
    assert_eq!(stats.enqueued, total, "audit records are not user events");
    assert_eq!(stats.acknowledged, total);
    assert_eq!(stats.queue_depth, 0);

    let records = read_files(dir.path(), "_audit", "sys_audit-").await;
    assert!(!records.is_empty(), "audit records written");
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in &records {
        assert_eq!(field(r, "version"), "1", "{r}");
        assert_eq!(unquote(field(r, "publisher")), "audit-test", "{r}");
        let sent_at = unquote(field(r, "sent_at"));
        assert!(sent_at.starts_with("20") && sent_at.contains('T'), "{r}");
        let topic = unquote(field(r, "topic")).to_string();
        assert_ne!(topic, "_audit", "audit events are not audited");
        let minute = unquote(field(r, "minute")).to_string();
        assert!(minute.ends_with('Z') && minute.len() == 17, "{r}");
        let acked: u64 = field(r, "acked").parse().unwrap();
        assert!(acked > 0, "{r}");
        *got.entry((topic, minute)).or_default() += acked;
    }
    assert_eq!(got, want, "summed audit deltas equal what was published");
    assert_eq!(stats.audit_records, records.len() as u64);
    assert_eq!(stats.audit_acknowledged, records.len() as u64);

    // And they equal what is stored.
    for (topic, first, second) in plan {
        let stored = read_files(dir.path(), topic, topic).await.len();
        assert_eq!(stored, first + second, "{topic} stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_can_be_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector::on_dir(dir.path()).start().await;
    let publisher = Publisher::builder()
        .collectors([collector.thrift_addr().to_string()])
        .audit_interval(None)
        .build()
        .await
        .unwrap();
    for i in 0..100 {
        publisher.publish("clicks", format!("e{i}")).await.unwrap();
    }
    let handle = publisher.clone();
    publisher.close().await.unwrap();
    assert_eq!(handle.stats().acknowledged, 100, "no audit events");
    collector.stop().await.unwrap();
    assert!(read_files(dir.path(), "_audit", "sys_audit-")
        .await
        .is_empty());

    let zero = Publisher::builder()
        .collectors(["127.0.0.1:1"])
        .audit_interval(Some(Duration::ZERO))
        .build()
        .await;
    assert!(matches!(
        zero,
        Err(BuildError::InvalidSetting {
            name: "audit_interval",
            ..
        })
    ));
}
