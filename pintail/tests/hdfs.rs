//! PinTail on the real HDFS of `scripts/hdfs.sh` (`CONDUIT_TEST_HDFS`): sealed merged
//! minutes read through an `hdfs://` root with a checkpoint and a restart, and the
//! local view of a real collector writing to HDFS. The collector does not serve the
//! bytes of its open files yet (hdfs-native cannot read an unfinished last block),
//! so on HDFS the local view delivers a file's records once the file is closed.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::TimeZone;
use conduit_core::storage::open_root;
use conduit_core::{SharedStorage, TestClock};
use conduit_pintail::{Consumer, ReadView};
use support::*;

async fn hdfs_root(name: &str) -> Option<(String, SharedStorage)> {
    let url = match std::env::var("CONDUIT_TEST_HDFS") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("SKIPPED: pintail on HDFS (set CONDUIT_TEST_HDFS)");
            return None;
        }
    };
    let root = format!(
        "{}/pintail_{name}_{}_{}",
        url.trim_end_matches('/'),
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let storage = open_root(&root).await.expect("HDFS reachable");
    Some((root, storage))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_minutes_on_hdfs_with_a_checkpoint_and_a_restart() {
    let Some((root, storage)) = hdfs_root("sealed").await else {
        return;
    };
    let mut all = Vec::new();
    for i in 0..3 {
        let m = minute("2026-11-22T10:00").add_minutes(i).unwrap();
        all.extend(sealed_minute(std::slice::from_ref(&storage), "clicks", m, 2, 100, 3).await);
    }
    let build = || {
        Consumer::builder("clicks")
            .cluster_uri("dc1", &root)
            .view(ReadView::Merged)
            .sealed_partitions(2)
            .sealed_poll(Duration::from_millis(50))
            .group("g")
            .stop(minute("2026-11-22T10:02"))
            .build()
    };
    let mut c = build().await.unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..250 {
        let m = c.next().await.unwrap().unwrap();
        seen.insert(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    c.commit_delivered(true).await.unwrap();
    drop(c);
    let mut c = build().await.unwrap();
    let mut again = 0;
    while let Some(m) = c.next_timeout(Duration::from_secs(20)).await.unwrap() {
        assert!(
            seen.insert(String::from_utf8(m.payload.to_vec()).unwrap()),
            "nothing committed comes again"
        );
        again += 1;
    }
    assert!(c.is_finished());
    assert_eq!(again, 350);
    assert_eq!(seen.len(), all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_view_of_a_collector_writing_to_hdfs() {
    let Some((_root, storage)) = hdfs_root("local").await else {
        return;
    };
    let clock = TestClock::at(
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 10, 5, 30)
            .unwrap(),
    );
    let collector = start_collector(storage.clone(), clock.shared(), "dc1", "c1").await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    client.log("clicks", &payloads("a", 0, 100)).await;
    client.log("clicks", &payloads("a", 100, 100)).await;
    let mut c = Consumer::builder("clicks")
        .cluster("dc1", storage.clone())
        .view(ReadView::Local)
        .clock(clock.shared())
        .group("g")
        .build()
        .await
        .unwrap();
    // The minute rolls: the file is closed and its last block is readable.
    clock.set(
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 10, 6, 5)
            .unwrap(),
    );
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;
    let mut got = Vec::new();
    while got.len() < 200 {
        let m = c
            .next_timeout(Duration::from_secs(30))
            .await
            .unwrap()
            .expect("the closed file's records");
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    assert_eq!(got, payloads("a", 0, 200));
    collector.stop().await.unwrap();
}
