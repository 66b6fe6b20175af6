//! The live tail of the `local` view against a real in-process collector (test
//! clock) and the real worker's `LocalJob`: growing files, a minute boundary, the
//! move of a closed file into its sealed minute directory (mid-file), a restart
//! from a checkpoint taken before the move, and a stop minute. Plus a small
//! publish-to-`next()` latency measurement with the system clock.

use std::time::{Duration, Instant};

mod common;

use common::consumer;
use conduit_core::Clock;
use conduit_merger::Job;
use conduit_pintail::{Consumer, DefaultStart, ReadView};
use conduit_testkit::clock::{self, clock_at};
use conduit_testkit::minutes::data_file;
use conduit_testkit::scribe::{numbered, Client};
use conduit_testkit::tail::{take, texts};
use conduit_testkit::worker::{local_job, wait_watermark};
use conduit_testkit::{collector, local_storage, minute};

/// How long a test waits for each message.
const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_follows_growing_files_across_a_minute_boundary_and_the_move() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let (clock, collector, mut client) = common::collector_at_10_05(&storage).await;
    let mut c = consumer(&storage, &clock).group("g").build().await.unwrap();

    // The 10:05 file grows by one frame per call; each is read while it is open.
    let data_path = "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst";
    client.log_acked("clicks", &numbered("a", 0, 100)).await;
    let first = take(&mut c, 100, WITHIN).await;
    assert_eq!(texts(&first), numbered("a", 0, 100));
    let bytes = storage.read(data_path).await.unwrap();
    assert!(
        conduit_core::format::scan(&bytes, 0).trailer.is_none(),
        "read while the file is still open"
    );
    assert_eq!(
        first[0].position.file(),
        "clicks-2026-11-22-10-05_00000.zst"
    );
    assert_eq!(first[0].minute, minute("2026-11-22T10:05"));
    client.log_acked("clicks", &numbered("a", 100, 100)).await;
    client.log_acked("clicks", &numbered("a", 200, 100)).await;
    let mid = take(&mut c, 50, WITHIN).await;
    assert_eq!(texts(&mid), numbered("a", 100, 50));
    let committed = mid.last().unwrap().position.clone();
    c.commit(&committed).await.unwrap();

    // The minute ends: the collector closes the file and starts 10:06.
    clock::set(&clock, 10, 6, 10);
    wait_watermark(&storage, "dc1", "c1", minute("2026-11-22T10:05")).await;
    client.log_acked("clicks", &numbered("b", 0, 100)).await;

    // The worker moves the closed 10:05 file (unchanged) and seals 10:05 while the
    // consumer is in the middle of it.
    let report = local_job(storage.clone(), clock.shared())
        .pass()
        .await
        .unwrap();
    assert!(report.sealed >= 1 && report.files >= 1, "{report:?}");
    let moved = "streams_local/clicks/2026/11/22/10/05/dc1-c1-clicks-2026-11-22-10-05_00000.zst";
    assert!(!storage.exists(data_path).await.unwrap());
    let moved_bytes = storage.read(moved).await.unwrap();
    assert_eq!(
        moved_bytes.slice(..bytes.len()),
        bytes,
        "the same bytes at the same offsets"
    );
    let rest = take(&mut c, 250, WITHIN).await;
    let mut want = numbered("a", 150, 150);
    want.extend(numbered("b", 0, 100));
    assert_eq!(texts(&rest), want, "in order, nothing lost or repeated");
    assert_eq!(rest[0].position.minute(), minute("2026-11-22T10:05"));
    assert_eq!(
        rest[149].position.file(),
        "clicks-2026-11-22-10-05_00000.zst"
    );
    assert_eq!(
        rest[150].position.file(),
        "clicks-2026-11-22-10-06_00000.zst"
    );
    drop(c);

    // Restart from the checkpoint taken while the file was in data/: it is found in
    // its minute directory at the same offset.
    let mut again = consumer(&storage, &clock).group("g").build().await.unwrap();
    let resumed = take(&mut again, 250, WITHIN).await;
    assert_eq!(texts(&resumed), want);
    assert!(again
        .next_timeout(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());

    // A stop minute on the live view ends once the collector's watermark passes it.
    let mut bounded = consumer(&storage, &clock)
        .stop(minute("2026-11-22T10:05"))
        .build()
        .await
        .unwrap();
    let mut n = 0;
    while let Some(m) = bounded.next_timeout(Duration::from_secs(10)).await.unwrap() {
        assert_eq!(m.minute, minute("2026-11-22T10:05"));
        n += 1;
    }
    assert!(bounded.is_finished());
    assert_eq!(n, 300);
    collector.stop().await.unwrap();
}

/// Publish-to-`next()` latency with the system clock: `calls` Scribe calls of
/// `per_call` events each, `interval` apart, read by a consumer started at the
/// live end; each payload is the time its call was sent. Returns sorted latencies
/// in microseconds (from before the publish call, so the collector's fsync and
/// acknowledgement are included).
async fn measure_latency(calls: usize, per_call: usize, interval: Duration) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let collector = collector::on(storage.clone())
        .heartbeat_ms(100)
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    client.log_acked("lat", &["warmup".to_string()]).await;
    let mut c = Consumer::builder("lat")
        .cluster("dc1", storage.clone())
        .view(ReadView::Local)
        .default_start(DefaultStart::LiveEnd)
        .build()
        .await
        .unwrap();
    // Resolve the live end before publishing.
    assert!(c
        .next_timeout(Duration::from_millis(50))
        .await
        .unwrap()
        .is_none());
    let n = calls * per_call;
    let base = Instant::now();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let Some(m) = c.next_timeout(Duration::from_secs(10)).await.unwrap() else {
                panic!("no message after {} of {n}: {:?}", lat.len(), c.stats());
            };
            let sent: u64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            lat.push(base.elapsed().as_micros() as u64 - sent);
        }
        lat
    });
    let mut next = tokio::time::Instant::now();
    for _ in 0..calls {
        let sent = base.elapsed().as_micros().to_string();
        client.log_acked("lat", &vec![sent; per_call]).await;
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    let mut lat = reader.await.unwrap();
    lat.sort_unstable();
    collector.stop().await.unwrap();
    lat
}

fn report(what: &str, lat: &[u64]) -> u64 {
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "publish-to-next latency, {what}, {} events: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        lat.len(),
        q(0.50),
        q(0.99),
        q(0.999),
        lat[lat.len() - 1]
    );
    q(0.99)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_next_latency_is_well_under_a_second() {
    let lat = measure_latency(500, 1, Duration::from_millis(2)).await;
    let p99 = report("one event per call every 2 ms", &lat);
    assert!(p99 < 1_000_000, "p99 under 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_next_latency_at_10k_events_per_second() {
    let lat = measure_latency(300, 100, Duration::from_millis(10)).await;
    let p99 = report("100 events per call every 10 ms (10k/s)", &lat);
    assert!(p99 < 1_000_000, "p99 under 1 s");
}

/// A late file (an older collector file that reaches `data/` after newer ones were
/// read, as when a spool is replayed) is read when it appears, once, and the
/// reader then goes on after the newest file without repeating it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_file_appearing_in_the_collector_directory_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let clock = clock_at(10, 7, 0);
    let put = |name: &str, records: Vec<String>| {
        let storage = storage.clone();
        let path = format!("data/clicks/c1/{name}");
        async move {
            storage
                .write_atomic(&path, data_file(&records, 2).into())
                .await
                .unwrap()
        }
    };
    put("clicks-2026-11-22-10-05_00000.zst", numbered("a", 0, 20)).await;
    put("clicks-2026-11-22-10-06_00000.zst", numbered("b", 0, 20)).await;
    let mut c = consumer(&storage, &clock).build().await.unwrap();
    assert_eq!(
        texts(&take(&mut c, 40, WITHIN).await)[20..],
        numbered("b", 0, 20)[..]
    );
    put("clicks-2026-11-22-10-05_00001.zst", numbered("late", 0, 30)).await;
    assert_eq!(
        texts(&take(&mut c, 30, WITHIN).await),
        numbered("late", 0, 30)
    );
    put("clicks-2026-11-22-10-07_00000.zst", numbered("c", 0, 10)).await;
    assert_eq!(texts(&take(&mut c, 10, WITHIN).await), numbered("c", 0, 10));
    assert!(c
        .next_timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
}

/// Issue 17's sub-partitions on local disk (the case is in `common`, shared
/// with `hdfs.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_partitions_split_one_stream_exactly_once_across_the_move() {
    let dir = tempfile::tempdir().unwrap();
    common::sub_partitions_split_one_stream_exactly_once_across_the_move(local_storage(dir.path()))
        .await;
}

/// A file its collector's repair cut back below what the reader had already read
/// (a file abandoned at a storage deadline is cut to its acknowledged length,
/// removing bytes storage had shown): the reader does not stop on it as
/// truncated; it counts it, and goes on with the collector's next file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_back_below_the_read_position_is_passed_over_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let clock = clock_at(10, 5, 30);
    let start = || {
        collector::on(storage.clone())
            .clock(clock.shared())
            .heartbeat_ms(100)
            .start()
    };
    let collector = start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    let mut c = consumer(&storage, &clock).build().await.unwrap();
    let data_path = "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst";
    client.log_acked("clicks", &numbered("a", 0, 100)).await;
    assert_eq!(
        texts(&take(&mut c, 100, WITHIN).await),
        numbered("a", 0, 100)
    );
    let acked = storage.stat(data_path).await.unwrap().len;
    client.log_acked("clicks", &numbered("a", 100, 100)).await;
    let read = take(&mut c, 100, WITHIN).await;
    assert_eq!(texts(&read), numbered("a", 100, 100));
    let read_to = storage.stat(data_path).await.unwrap().len;
    drop(client);
    collector.stop().await.unwrap();

    // The repair of an abandoned file: cut to `acked`, then the close trailer.
    conduit_core::format::close_recovered(
        &*storage,
        data_path,
        conduit_core::Encoding::Lines,
        Some(acked),
    )
    .await
    .unwrap();
    let cut = storage.stat(data_path).await.unwrap().len;
    assert!(cut < read_to, "cut back to {cut}, below {read_to}");

    clock::set(&clock, 10, 6, 10);
    let collector = start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    client.log_acked("clicks", &numbered("b", 0, 50)).await;
    assert_eq!(texts(&take(&mut c, 50, WITHIN).await), numbered("b", 0, 50));
    assert_eq!(c.stats().cut_back_files, 1);
    drop(client);
    collector.stop().await.unwrap();
}

/// The lag of a position in a file still open counts the whole unread rest,
/// also when it is longer than one answer of the collector's open-file endpoint
/// (cut at 4 MiB): the lag asks again from where an answer ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_of_an_open_file_counts_more_than_one_answer_of_its_collector() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let (clock, collector, mut client) = common::collector_at_10_05(&storage).await;
    // Records of 1,000 pseudo-random hex digits compress about 2:1, so 12 calls
    // of 1,000 make ~6 MB of frames: more than one answer (4 MiB), less than
    // the collector keeps of an open file (8 MiB).
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let (calls, per_call) = (12, 1000);
    for _ in 0..calls {
        let records: Vec<String> = (0..per_call)
            .map(|_| {
                (0..125)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!("{:08x}", x as u32)
                    })
                    .collect()
            })
            .collect();
        client.log_acked("clicks", &records).await;
    }
    let mut c = consumer(&storage, &clock).group("g").build().await.unwrap();
    let first = take(&mut c, 1, WITHIN).await;
    assert_eq!(
        collector.status().watermark,
        Some(minute("2026-11-22T10:04")),
        "the 10:05 file is still open"
    );
    let topic = conduit_core::Topic::new("clicks").unwrap();
    let lag = conduit_pintail::lag::partition_lag(
        &storage,
        ReadView::Local,
        &topic,
        &first[0].position,
        1,
        clock.now(),
    )
    .await
    .unwrap();
    assert_eq!(lag.events, calls * per_call - 1, "{lag:?}");
    assert!(lag.bytes > 4 << 20, "more than one answer: {lag:?}");
    c.close().await.unwrap();
    collector.stop().await.unwrap();
}
