//! Cases shared by the local-disk tests (`live.rs`) and the real-HDFS tests
//! (`hdfs.rs`): the same assertions on both backends.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use conduit_core::{Clock, SharedStorage, TestClock};
use conduit_merger::Job;
use conduit_pintail::{Consumer, ConsumerBuilder, DefaultStart, ReadView};
use conduit_testkit::clock::{self, clock_at};
use conduit_testkit::scribe::{numbered, Client};
use conduit_testkit::tail::{take, texts};
use conduit_testkit::worker::{local_job, wait_watermark};
use conduit_testkit::{collector, minute};

/// How long a case waits for each message (a deadline, not a pause).
pub const WITHIN: Duration = Duration::from_secs(20);

/// A collector writing to `storage` on a test clock at 2026-11-22 10:05:30
/// (heartbeats every 100 ms), and a Scribe client connected to it.
pub async fn collector_at_10_05(
    storage: &SharedStorage,
) -> (TestClock, conduit_collector::Collector, Client) {
    let clock = clock_at(10, 5, 30);
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .heartbeat_ms(100)
        .start()
        .await;
    let client = Client::connect(collector.thrift_addr()).await;
    (clock, collector, client)
}

/// A local-view consumer of topic `clicks` in cluster `dc1` on the test clock.
pub fn consumer(storage: &SharedStorage, clock: &TestClock) -> ConsumerBuilder {
    Consumer::builder("clicks")
        .cluster("dc1", storage.clone())
        .view(ReadView::Local)
        .clock(clock.shared())
        .heartbeat(Duration::from_millis(50))
}

/// The lag of each member's last delivered position, added up.
async fn lag_of(
    storage: &SharedStorage,
    clock: &TestClock,
    got: &[Vec<conduit_pintail::Message>],
) -> u64 {
    let topic = conduit_core::Topic::new("clicks").unwrap();
    let mut lag = 0;
    for g in got {
        let at = &g.last().expect("each member read some").position;
        lag += conduit_pintail::lag::partition_lag(
            storage,
            ReadView::Local,
            &topic,
            at,
            1,
            clock.now(),
        )
        .await
        .unwrap()
        .events;
    }
    lag
}

/// Polls every consumer in turn (each call short, so group upkeep runs in all of
/// them) until `total` messages came from them together; returns each one's.
pub async fn take_all(cs: &mut [Consumer], total: usize) -> Vec<Vec<conduit_pintail::Message>> {
    let mut got: Vec<Vec<conduit_pintail::Message>> = cs.iter().map(|_| Vec::new()).collect();
    let deadline = Instant::now() + WITHIN * 3;
    while got.iter().map(Vec::len).sum::<usize>() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} messages within {:?}",
            got.iter().map(Vec::len).sum::<usize>(),
            WITHIN * 3
        );
        for (c, out) in cs.iter_mut().zip(got.iter_mut()) {
            while let Some(m) = c.next_timeout(Duration::from_millis(10)).await.unwrap() {
                out.push(m);
            }
        }
    }
    got
}

/// Issue 17: four members of a group share one collector's stream as four
/// sub-partitions (`partitions(4)`). Each record goes to exactly one of them,
/// read live from the open file, and the rest of that file after the worker
/// moved it into its sealed minute mid-file; a member given another count is
/// refused naming both; a solo consumer reading the four sub-partitions gets
/// every record once, and so does the same group restarted from its
/// checkpoints (nothing more) while reading the sealed file once for its four
/// sub-partitions.
pub async fn sub_partitions_split_one_stream_exactly_once_across_the_move(storage: SharedStorage) {
    let (clock, collector, mut client) = collector_at_10_05(&storage).await;
    let member = |id: &str| {
        consumer(&storage, &clock)
            .group("g")
            .partitions(4)
            .default_start(DefaultStart::Beginning)
            .dynamic_member(id, Duration::from_secs(10))
    };
    let mut members = Vec::new();
    for id in ["m0", "m1", "m2", "m3"] {
        members.push(member(id).build().await.unwrap());
    }
    let refused = consumer(&storage, &clock)
        .group("g")
        .partitions(2)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("uses 4 partitions") && refused.contains("started with 2"),
        "{refused}"
    );

    // The group settles first: one sub-partition each (balanced assignment).
    let deadline = Instant::now() + WITHIN * 3;
    while !members.iter().all(|c| c.partitions().len() == 1) {
        assert!(Instant::now() < deadline, "the group did not settle");
        for c in &mut members {
            assert!(c
                .next_timeout(Duration::from_millis(10))
                .await
                .unwrap()
                .is_none());
        }
    }

    // Two frames read live from the open 10:05 file.
    client.log_acked("clicks", &numbered("a", 0, 100)).await;
    client.log_acked("clicks", &numbered("a", 100, 100)).await;
    let live = take_all(&mut members, 200).await;
    let data_path = "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst";
    assert!(
        conduit_core::format::scan(&storage.read(data_path).await.unwrap(), 0)
            .trailer
            .is_none()
    );
    for c in &mut members {
        c.commit_delivered(true).await.unwrap();
    }
    // A third frame, then the minute ends and the worker moves the file.
    client.log_acked("clicks", &numbered("a", 200, 100)).await;
    // The lag of each sub-partition counts only its own records: together the
    // 100 of the third frame.
    // On HDFS too: the rest of the open file comes from its collector (storage
    // shows only an open HDFS file's completed blocks).
    assert_eq!(
        lag_of(&storage, &clock, &live).await,
        100,
        "sub-partition lags add up to the unread records of the open file"
    );
    clock::set(&clock, 10, 6, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;
    let report = local_job(storage.clone(), clock.shared())
        .pass()
        .await
        .unwrap();
    assert!(report.sealed >= 1, "{report:?}");
    assert!(!storage.exists(data_path).await.unwrap());
    // Closed and sealed, the file's lag is exact on every backend.
    assert_eq!(
        lag_of(&storage, &clock, &live).await,
        100,
        "sub-partition lags add up to the unread records of the sealed file"
    );
    client.log_acked("clicks", &numbered("b", 0, 100)).await;
    let sealed = take_all(&mut members, 200).await;

    let mut all: Vec<String> = Vec::new();
    for (i, (a, b)) in live.iter().zip(&sealed).enumerate() {
        let mine: std::collections::BTreeSet<&str> =
            a.iter().chain(b).map(|m| m.position.partition()).collect();
        assert_eq!(mine.len(), 1, "member {i} read one sub-partition: {mine:?}");
        assert!(
            mine.iter()
                .all(|p| p.starts_with("dc1-c1-s") && p.ends_with("of4")),
            "{mine:?}"
        );
        // About a quarter each (round-robin within a frame).
        let n = a.len() + b.len();
        assert!((95..=105).contains(&n), "member {i} got {n} of 400");
        all.extend(texts(a));
        all.extend(texts(b));
    }
    let mut want = numbered("a", 0, 300);
    want.extend(numbered("b", 0, 100));
    all.sort();
    want.sort();
    assert_eq!(all, want, "every record exactly once across the members");
    for mut c in members {
        c.commit_delivered(true).await.unwrap();
        c.close().await.unwrap();
    }

    // The same group again: everything was committed, nothing comes again.
    let mut again = member("m0").build().await.unwrap();
    assert!(again
        .next_timeout(Duration::from_millis(500))
        .await
        .unwrap()
        .is_none());
    again.close().await.unwrap();
    // A solo consumer of the four sub-partitions: every record once.
    let mut solo = consumer(&storage, &clock)
        .partitions(4)
        .build()
        .await
        .unwrap();
    let mut got = texts(&take(&mut solo, 400, WITHIN).await);
    got.sort();
    assert_eq!(got, want);
    // Its four readers of the stream read the sealed 10:05 file once: the
    // first reads and decodes the chunk, the other three take it.
    let shared = solo.stats().shared_chunks;
    assert!(
        shared >= 3,
        "sealed chunks shared by the sub-partition readers: {shared}"
    );
    assert!(solo
        .next_timeout(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    collector.stop().await.unwrap();
}
