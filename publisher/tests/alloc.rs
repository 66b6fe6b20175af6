//! `publish` allocates nothing on the caller's thread beyond the payload the caller
//! made: proven with a counting global allocator (`allocation-counter`, which counts
//! per thread, so the publisher's background task and the collector, running on
//! other threads, do not pollute the count). Its own test binary, because the
//! counting allocator replaces the global allocator of the whole binary.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::Config;
use conduit_publisher::Publisher;
use conduit_testkit::collector;

/// Polls `publish` once, on this thread, outside any runtime: with room in the
/// queue it must complete at once.
fn publish_now(publisher: &Publisher, topic: &str, payload: &Bytes) {
    let mut cx = Context::from_waker(Waker::noop());
    let fut = pin!(publisher.publish(topic, payload.clone()));
    match fut.poll(&mut cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("publish waited although the queue had room"),
    }
}

#[test]
fn publish_allocates_nothing_beyond_the_payload() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The collector with the product's group commit, as publishers meet it.
    let group_commit_ms = Config::default().collector.group_commit_ms;
    let collector = rt.block_on(
        collector::on_dir(dir.path())
            .settings(move |c| c.group_commit_ms = group_commit_ms)
            .start(),
    );
    let publisher = rt
        .block_on(
            Publisher::builder()
                .collectors([collector.thrift_addr().to_string()])
                .linger(Duration::from_millis(1))
                .build(),
        )
        .unwrap();
    // The payload is made once, outside the measurement; a clone of a shared
    // `Bytes` is a reference count, not an allocation.
    let payload = Bytes::from(vec![b'x'; 300]);
    let _shared = payload.clone();

    // The first event of a topic on a thread caches the topic name: one allocation.
    let first = allocation_counter::measure(|| publish_now(&publisher, "hot", &payload));
    assert!(first.count_total >= 1, "{first:?}");

    let drain = |publisher: &Publisher| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while publisher.stats().queue_depth > 0 {
            assert!(Instant::now() < deadline, "the publisher never drained");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Warm up the queue's blocks, then measure rounds of calls, letting the
    // background task drain between rounds so there is always room.
    for _ in 0..20 {
        for _ in 0..32 {
            publish_now(&publisher, "hot", &payload);
            publish_now(&publisher, "other_topic", &payload);
        }
        drain(&publisher);
    }
    let mut calls = 0u64;
    let mut allocations = 0u64;
    let mut bytes = 0u64;
    for _ in 0..200 {
        let info = allocation_counter::measure(|| {
            for _ in 0..16 {
                publish_now(&publisher, "hot", &payload);
                publish_now(&publisher, "other_topic", &payload);
            }
        });
        calls += 32;
        allocations += info.count_total;
        bytes += info.bytes_total;
        drain(&publisher);
    }
    eprintln!("{calls} publish calls: {allocations} allocations, {bytes} bytes");
    assert_eq!(
        allocations, 0,
        "{allocations} allocations ({bytes} bytes) in {calls} calls"
    );
    let stats = publisher.stats();
    assert_eq!(stats.enqueued, 1 + 20 * 64 + calls);
    assert_eq!(stats.failed, 0);
    rt.block_on(async {
        publisher.close().await.unwrap();
        collector.stop().await.unwrap();
    });
}
