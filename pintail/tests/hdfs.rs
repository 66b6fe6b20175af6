//! PinTail on the real HDFS of `scripts/hdfs.sh` (`CONDUIT_TEST_HDFS`): sealed merged
//! minutes read through an `hdfs://` root with a checkpoint and a restart, and the
//! local view of a real collector writing to HDFS. hdfs-native cannot read the
//! unfinished last block of an open file, so the local view reads open files from
//! the collector's HTTP listener (`/v1/open/...`): events are delivered while the
//! file is open (publish-to-next latency printed), the position carries over when
//! the file is closed and moved, and storage is read when the collector is stopped.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use conduit_merger::Job;
use conduit_pintail::{Consumer, ReadView};
use conduit_testkit::clock::at;
use conduit_testkit::minutes::sealed_minute;
use conduit_testkit::scribe::numbered;
use conduit_testkit::tail::{take, texts};
use conduit_testkit::worker::{local_job, wait_watermark};
use conduit_testkit::{hdfs, minute};

/// How long a test waits for each message.
const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_minutes_on_hdfs_with_a_checkpoint_and_a_restart() {
    let Some(root) = hdfs::root("pintail_sealed_minutes_on_hdfs").await else {
        return;
    };
    let storage = root.storage.clone();
    let mut all = Vec::new();
    for i in 0..3 {
        let m = minute("2026-11-22T10:00").add_minutes(i).unwrap();
        all.extend(sealed_minute(std::slice::from_ref(&storage), "clicks", m, 2, 100, 3).await);
    }
    let build = || {
        Consumer::builder("clicks")
            .cluster_uri("dc1", &root.uri)
            .view(ReadView::Merged)
            .partitions(2)
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
    let Some(root) = hdfs::root("pintail_the_local_view_of_a_collector_writing_to_hdfs").await
    else {
        return;
    };
    let storage = root.storage;
    let (clock, collector, mut client) = common::collector_at_10_05(&storage).await;
    client.log_acked("clicks", &numbered("a", 0, 100)).await;
    client.log_acked("clicks", &numbered("a", 100, 100)).await;
    let mut c = Consumer::builder("clicks")
        .cluster("dc1", storage.clone())
        .view(ReadView::Local)
        .clock(clock.shared())
        .group("g")
        .build()
        .await
        .unwrap();
    // The minute rolls: the file is closed and its last block is readable.
    clock.set(at(10, 6, 5));
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
    assert_eq!(got, numbered("a", 0, 200));
    collector.stop().await.unwrap();
}

/// The local view delivers events of a collector file on HDFS while the file is
/// still open (the test clock stays inside the file's minute, so the collector
/// cannot close it), through the collector's HTTP listener; publish-to-next latency
/// at 10k events/s is measured and printed. Then the minute rolls, the worker moves
/// the closed file, and the consumer continues at the same position with nothing
/// lost or repeated, live and after a restart from a checkpoint taken in the open
/// file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_view_reads_open_hdfs_files_from_the_collector_and_follows_the_move() {
    let Some(root) = hdfs::root("pintail_the_local_view_reads_open_hdfs_files").await else {
        return;
    };
    let storage = root.storage;
    let (clock, collector, mut client) = common::collector_at_10_05(&storage).await;
    let consumer = || {
        Consumer::builder("clicks")
            .cluster("dc1", storage.clone())
            .view(ReadView::Local)
            .clock(clock.shared())
            .heartbeat(Duration::from_millis(50))
            .group("g")
    };
    let mut c = consumer().build().await.unwrap();
    let data_path = "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst";
    let still_open = |what: &str| {
        assert_eq!(
            collector.status().watermark,
            Some(minute("2026-11-22T10:04")),
            "{what}: the 10:05 file is still open"
        );
    };

    client.log_acked("clicks", &numbered("a", 0, 100)).await;
    let first = take(&mut c, 100, WITHIN).await;
    assert_eq!(texts(&first), numbered("a", 0, 100));
    assert_eq!(
        first[0].position.file(),
        "clicks-2026-11-22-10-05_00000.zst"
    );
    still_open("first delivery");
    let readable = storage.read(data_path).await.unwrap();
    assert!(
        conduit_core::format::scan(&readable, 0).trailer.is_none(),
        "no trailer: the file is open"
    );
    assert!(c.stats().collector_http_reads > 0, "{:?}", c.stats());

    // Publish-to-next latency at 10k events/s (200 events per call every 20 ms:
    // one synchronous call waits for its hsync, 10-20 ms on this HDFS), measured
    // from before each call, so the hsync and the ack are included.
    let (calls, per_call) = (150, 200);
    let n = calls * per_call;
    let base = Instant::now();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let m = c
                .next_timeout(Duration::from_secs(20))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("no message after {}: {:?}", lat.len(), c.stats()));
            let text = std::str::from_utf8(&m.payload).unwrap();
            let sent: u64 = text.strip_prefix("t").unwrap().parse().unwrap();
            lat.push(base.elapsed().as_micros() as u64 - sent);
        }
        (c, lat)
    });
    let mut next = tokio::time::Instant::now();
    for _ in 0..calls {
        let sent = format!("t{}", base.elapsed().as_micros());
        client.log_acked("clicks", &vec![sent; per_call]).await;
        next += Duration::from_millis(20);
        tokio::time::sleep_until(next).await;
    }
    let published = base.elapsed();
    let (mut c, mut lat) = reader.await.unwrap();
    still_open("after the latency run");
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "HDFS live tail (open file via the collector), {n} events in {:.1} s ({:.0}/s): \
         publish-to-next p50 {} us, p99 {} us, p99.9 {} us, max {} us; {:?}",
        published.as_secs_f64(),
        n as f64 / published.as_secs_f64(),
        q(0.50),
        q(0.99),
        q(0.999),
        lat[lat.len() - 1],
        c.stats()
    );

    // A checkpoint inside the open file.
    client.log_acked("clicks", &numbered("b", 0, 100)).await;
    let mid = take(&mut c, 50, WITHIN).await;
    assert_eq!(texts(&mid), numbered("b", 0, 50));
    still_open("checkpoint");
    c.commit(&mid.last().unwrap().position).await.unwrap();

    // The minute ends: the collector closes the file; the worker moves it (same
    // bytes) into streams_local while the consumer is in the middle of it.
    clock.set(at(10, 6, 10));
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;
    client.log_acked("clicks", &numbered("c", 0, 100)).await;
    let report = local_job(storage.clone(), clock.shared())
        .pass()
        .await
        .unwrap();
    assert!(report.sealed >= 1 && report.files >= 1, "{report:?}");
    assert!(!storage.exists(data_path).await.unwrap());
    let rest = take(&mut c, 150, WITHIN).await;
    let mut want = numbered("b", 50, 50);
    want.extend(numbered("c", 0, 100));
    assert_eq!(texts(&rest), want, "in order, nothing lost or repeated");
    assert_eq!(
        rest[49].position.file(),
        "clicks-2026-11-22-10-05_00000.zst"
    );
    assert_eq!(
        rest[50].position.file(),
        "clicks-2026-11-22-10-06_00000.zst"
    );
    assert!(c
        .next_timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    drop(c);

    // Restart from the checkpoint taken while the file was open: found in its
    // minute directory at the same offset.
    let mut again = consumer().build().await.unwrap();
    assert_eq!(texts(&take(&mut again, 150, WITHIN).await), want);
    assert!(again
        .next_timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    collector.stop().await.unwrap();
}

/// When the collector cannot be reached, the local view reads its files from
/// storage (logged and counted): here the collector is stopped (its files are
/// closed), and what it acknowledged but the consumer had not read yet comes from
/// storage, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_view_falls_back_to_storage_when_the_collector_is_stopped() {
    let Some(root) = hdfs::root("pintail_the_local_view_falls_back_to_storage").await else {
        return;
    };
    let storage = root.storage;
    let (clock, collector, mut client) = common::collector_at_10_05(&storage).await;
    let mut c = Consumer::builder("clicks")
        .cluster("dc1", storage.clone())
        .view(ReadView::Local)
        .clock(clock.shared())
        .build()
        .await
        .unwrap();
    client.log_acked("clicks", &numbered("a", 0, 100)).await;
    assert_eq!(
        texts(&take(&mut c, 100, WITHIN).await),
        numbered("a", 0, 100)
    );
    assert!(c.stats().collector_http_reads > 0);
    assert_eq!(c.stats().collector_http_fallbacks, 0);
    client.log_acked("clicks", &numbered("b", 0, 100)).await;
    drop(client);
    collector.stop().await.unwrap();
    let rest = take(&mut c, 100, WITHIN).await;
    assert_eq!(texts(&rest), numbered("b", 0, 100));
    assert!(
        c.stats().collector_http_fallbacks >= 1,
        "the fallback is counted: {:?}",
        c.stats()
    );
    assert!(c
        .next_timeout(Duration::from_millis(500))
        .await
        .unwrap()
        .is_none());
}

/// Issue 17's sub-partitions on the real HDFS: four members share one
/// collector's stream, each record to exactly one of them, read live from the
/// open HDFS file (through the collector's open-file endpoint) and from the
/// sealed minute after the worker's move; the same case as on local disk
/// (`common`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_partitions_split_one_stream_exactly_once_on_hdfs() {
    let Some(root) = hdfs::root("pintail_sub_partitions").await else {
        return;
    };
    common::sub_partitions_split_one_stream_exactly_once_across_the_move(root.storage).await;
}
