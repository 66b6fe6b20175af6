//! PinTail on sealed merged minutes on local disk: stop time, a consumer killed and
//! restarted, purged checkpoints, failover from the merged cluster to its mirror,
//! corrupt frames and bad checkpoints. Minutes are written with the real frame
//! encoder and sealed with the real manifest code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conduit_core::storage::{FaultPlan, FaultStorage};
use conduit_core::{Minute, SharedStorage};
use conduit_pintail::{Consumer, ConsumerBuilder, PintailError, ReadView, StartTime};
use conduit_testkit::minutes::sealed_minute;
use conduit_testkit::tail;
use conduit_testkit::{local_storage, minute};

/// How long a drained consumer waits for one more message.
const IDLE: Duration = Duration::from_secs(5);

/// Ten sealed minutes 10:00..10:09 of 3 files x 50 records (5 frames each).
async fn ten_minutes(roots: &[SharedStorage]) -> Vec<String> {
    let mut all = Vec::new();
    for i in 0..10 {
        let m = minute("2026-11-22T10:00").add_minutes(i).unwrap();
        all.extend(sealed_minute(roots, "clicks", m, 3, 50, 5).await);
    }
    all
}

fn merged(storage: &SharedStorage) -> ConsumerBuilder {
    Consumer::builder("clicks")
        .cluster("dc1", storage.clone())
        .view(ReadView::Merged)
        .partitions(4)
        .sealed_poll(Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_minute_ends_the_stream_after_exactly_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = local_storage(dir.path().join("dc1"));
    let all = ten_minutes(std::slice::from_ref(&s)).await;
    let mut c = merged(&s)
        .start(StartTime::parse("2026-11-22T10:02").unwrap())
        .stop(minute("2026-11-22T10:04"))
        .build()
        .await
        .unwrap();
    let got = tail::drain(&mut c, IDLE).await;
    assert!(c.is_finished(), "ended by the stop minute, not a timeout");
    let mut got: Vec<String> = got.iter().map(tail::text).collect();
    got.sort();
    let mut want: Vec<String> = all
        .into_iter()
        .filter(|p| p.as_str() >= "2026-11-22-10-02" && p.as_str() < "2026-11-22-10-05")
        .collect();
    want.sort();
    assert_eq!(got.len(), 450);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_resumes_after_its_last_commit_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let s = local_storage(dir.path().join("dc1"));
    let all = ten_minutes(std::slice::from_ref(&s)).await;
    let stop = minute("2026-11-22T10:09");

    // First run: 700 messages, explicit commits of the first 600 (per partition).
    let mut first = merged(&s).group("g").stop(stop).build().await.unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut last: BTreeMap<String, conduit_pintail::Position> = BTreeMap::new();
    let mut early = None;
    for i in 0..700 {
        let m = first.next().await.unwrap().expect("a message");
        *seen.entry(tail::text(&m)).or_default() += 1;
        if i < 600 {
            last.insert(m.position.partition().to_string(), m.position.clone());
        }
        if i == 10 {
            early = Some(m.position.clone());
        }
    }
    let early = early.unwrap();
    for p in last.values() {
        first.commit(p).await.unwrap();
    }
    drop(first); // killed: 100 delivered messages were never committed

    let mut second = merged(&s).group("g").stop(stop).build().await.unwrap();
    // A position from before the checkpoint (a stale member's, say) cannot move
    // the group backwards.
    match second.commit(&early).await {
        Err(PintailError::StaleCommit { partition, .. }) => {
            assert_eq!(partition.as_str(), early.partition())
        }
        other => panic!("a commit behind the checkpoint was not refused: {other:?}"),
    }
    let rest = tail::drain(&mut second, IDLE).await;
    assert!(second.is_finished());
    let mut dups = 0;
    for m in &rest {
        let n = seen.entry(tail::text(m)).or_default();
        if *n > 0 {
            dups += 1;
        }
        *n += 1;
    }
    assert_eq!(seen.len(), all.len(), "every message delivered");
    assert!(seen.values().all(|n| *n <= 2));
    assert_eq!(dups, 100, "exactly the uncommitted messages come again");

    // A third member of the group, after the second committed on close: nothing.
    second.close().await.unwrap();
    let mut third = merged(&s).group("g").stop(stop).build().await.unwrap();
    assert!(tail::drain(&mut third, IDLE).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_checkpoint_restarts_at_the_oldest_minute_and_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let s = local_storage(dir.path().join("dc1"));
    ten_minutes(std::slice::from_ref(&s)).await;
    let mut c = merged(&s).group("g").build().await.unwrap();
    let m = c.next().await.unwrap().unwrap();
    assert_eq!(m.position.minute(), minute("2026-11-22T10:00"));
    c.commit(&m.position).await.unwrap();
    drop(c);

    // Retention removes 10:00..10:05.
    for i in 0..6 {
        let m = minute("2026-11-22T10:00").add_minutes(i).unwrap();
        s.delete(
            &conduit_core::layout::Layout::minute_dir(
                conduit_core::View::Merged,
                &conduit_core::Topic::new("clicks").unwrap(),
                m,
            ),
            true,
        )
        .await
        .unwrap();
    }
    let mut c = merged(&s)
        .group("g")
        .stop(minute("2026-11-22T10:09"))
        .build()
        .await
        .unwrap();
    let got = tail::drain(&mut c, IDLE).await;
    assert_eq!(got.len(), 4 * 150, "10:06..10:09 in full");
    assert!(got
        .iter()
        .all(|m| m.position.minute() >= minute("2026-11-22T10:06")));
    let stats = c.stats();
    // Only the partition with a checkpoint in a purged minute reports a gap; the
    // others start at the beginning, which is now 10:06.
    assert_eq!(stats.purged_skips, 1, "{stats:?}");
    let (_, from, to) = &stats.purged_ranges[0];
    assert!(from.contains("2026-11-22T10:00Z"), "{from}");
    assert_eq!(to, "2026-11-22T10:06Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_from_the_merged_cluster_to_its_mirror_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let real1 = local_storage(dir.path().join("dc1"));
    let plan = FaultPlan::new();
    let dc1: SharedStorage = Arc::new(FaultStorage::new(real1.clone(), plan.clone()));
    let dc2 = local_storage(dir.path().join("dc2"));
    let all = ten_minutes(&[real1.clone(), dc2.clone()]).await;
    let checkpoints = dir.path().join("checkpoints");
    let stop = minute("2026-11-22T10:09");

    // One consumer with dc1 first and its mirror dc2 as fallback.
    let mut c = Consumer::builder("clicks")
        .cluster("dc1", dc1.clone())
        .cluster("dc2", dc2.clone())
        .view(ReadView::Merged)
        .partitions(4)
        .sealed_poll(Duration::from_millis(20))
        .group("g")
        .checkpoint_dir(checkpoints.to_str().unwrap())
        .stop(stop)
        .build()
        .await
        .unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut last = BTreeMap::new();
    for _ in 0..400 {
        let m = c.next().await.unwrap().unwrap();
        *seen.entry(tail::text(&m)).or_default() += 1;
        last.insert(m.position.partition().to_string(), m.position.clone());
    }
    for p in last.values() {
        c.commit(p).await.unwrap();
    }
    plan.fail_all(); // dc1 is gone
    for _ in 0..300 {
        let m = c.next().await.unwrap().unwrap();
        *seen.entry(tail::text(&m)).or_default() += 1;
    }
    assert!(plan.injected() > 0, "dc1 was really tried");
    drop(c);

    // A consumer of the mirror alone resumes from the shared checkpoints.
    let mut mirror = Consumer::builder("clicks")
        .cluster("dc2", dc2.clone())
        .view(ReadView::Mirror)
        .partitions(4)
        .sealed_poll(Duration::from_millis(20))
        .group("g")
        .checkpoint_dir(checkpoints.to_str().unwrap())
        .stop(stop)
        .build()
        .await
        .unwrap();
    let rest = tail::drain(&mut mirror, IDLE).await;
    assert!(mirror.is_finished());
    let mut dups = 0;
    for m in &rest {
        let n = seen.entry(tail::text(m)).or_default();
        dups += usize::from(*n > 0);
        *n += 1;
    }
    assert_eq!(seen.len(), all.len(), "nothing lost across the failover");
    assert_eq!(
        dups, 300,
        "only what was read after the last commit comes again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_frame_is_a_typed_error_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = local_storage(dir.path().join("dc1"));
    let m = minute("2026-11-22T10:00");
    sealed_minute(std::slice::from_ref(&s), "clicks", m, 1, 50, 5).await;
    let path = "streams/clicks/2026/11/22/10/00/dc1-c0-clicks-2026-11-22-10-00_00000.zst";
    let mut bytes = s.read(path).await.unwrap().to_vec();
    let frames = conduit_core::format::scan(&bytes, 0).frames;
    let second = frames[1];
    // Flip a byte inside the second frame's compressed body: its checksum fails.
    bytes[(second.offset + second.len / 2) as usize] ^= 0xff;
    s.write_atomic(path, bytes.into()).await.unwrap();

    let mut c = merged(&s).partitions(1).stop(m).build().await.unwrap();
    for _ in 0..10 {
        c.next().await.unwrap().unwrap();
    }
    match c.next().await {
        Err(PintailError::CorruptFrame {
            path: p, offset, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(offset, second.offset);
        }
        other => panic!("expected a corrupt frame error, got {other:?}"),
    }

    let mut c = merged(&s)
        .partitions(1)
        .stop(m)
        .skip_corrupt_frames(true)
        .build()
        .await
        .unwrap();
    let got = tail::drain(&mut c, IDLE).await;
    assert_eq!(got.len(), 40, "one frame of 10 records skipped");
    assert_eq!(c.stats().corrupt_frames_skipped, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_checkpoint_is_an_error_never_a_restart_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let s = local_storage(dir.path().join("dc1"));
    sealed_minute(
        std::slice::from_ref(&s),
        "clicks",
        minute("2026-11-22T10:00"),
        3,
        10,
        1,
    )
    .await;
    let mut c = merged(&s).group("g").build().await.unwrap();
    let m = c.next().await.unwrap().unwrap();
    c.commit(&m.position).await.unwrap();
    drop(c);
    let path =
        conduit_pintail::CheckpointStore::path("g", "clicks", m.position.partition()).unwrap();
    let text = String::from_utf8(s.read(&path).await.unwrap().to_vec()).unwrap();
    s.write_atomic(&path, text.replace("\"version\":1", "\"version\":7").into())
        .await
        .unwrap();
    let mut c = merged(&s).group("g").build().await.unwrap();
    let err = c.next().await.unwrap_err();
    assert!(
        matches!(
            err,
            PintailError::UnsupportedCheckpointVersion { version: 7, .. }
        ),
        "{err}"
    );
    s.write_atomic(&path, "not json".into()).await.unwrap();
    let mut c = merged(&s).group("g").build().await.unwrap();
    let err = c.next().await.unwrap_err();
    assert!(
        matches!(err, PintailError::MalformedCheckpoint { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&path), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_repositions_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let s = local_storage(dir.path().join("dc1"));
    ten_minutes(std::slice::from_ref(&s)).await;
    let mut c = merged(&s)
        .stop(minute("2026-11-22T10:09"))
        .build()
        .await
        .unwrap();
    let first = c.next().await.unwrap().unwrap();
    assert_eq!(first.minute, minute("2026-11-22T10:00"));
    c.seek(StartTime::At(minute("2026-11-22T10:08")))
        .await
        .unwrap();
    let rest = tail::drain(&mut c, IDLE).await;
    assert_eq!(rest.len(), 300);
    assert!(rest
        .iter()
        .all(|m| m.minute >= Minute::parse_flexible("2026-11-22T10:08").unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_what_a_checkpoint_has_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let s = local_storage(dir.path().join("dc1"));
    let all = ten_minutes(std::slice::from_ref(&s)).await;
    let mut c = merged(&s).partitions(1).group("g").build().await.unwrap();
    let mut last = None;
    for _ in 0..125 {
        last = Some(c.next().await.unwrap().unwrap().position);
    }
    let pos = last.unwrap();
    c.commit(&pos).await.unwrap();
    let topic = conduit_core::Topic::new("clicks").unwrap();
    let now = minute("2026-11-22T10:20").start();
    let lag = conduit_pintail::lag::partition_lag(&s, ReadView::Merged, &topic, &pos, 1, now)
        .await
        .unwrap();
    assert_eq!(lag.events, all.len() as u64 - 125);
    assert_eq!(
        lag.seconds,
        20 * 60,
        "the oldest undelivered minute is 10:00"
    );
    assert!(lag.bytes > 0);
}
