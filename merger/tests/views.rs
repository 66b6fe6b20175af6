//! The cross-cluster and housekeeping jobs (merge, mirror, purge, compact) on two or
//! three clusters, each a separate local root in a tempdir, with a test clock.
//!
//! Sealed local minutes are built exactly as the collector and the local job write
//! them: zstd data frames from `FrameEncoder` (with batch marks before some), a close
//! trailer, the `<cluster>-<collector>-<collector file name>` name, and a
//! `_SUCCESS` manifest sealed with `Manifest::seal`. Every test checks exactly-once
//! delivery record by record, and that every sealed directory holds exactly the
//! files its manifest lists, with matching length, CRC-32C and record count.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use conduit_core::format::{encode_marks_v1, read_file, BatchMark};
use conduit_core::layout::Layout;
use conduit_core::manifest::describe_file;
use conduit_core::storage::{FaultPlan, FaultStorage, Op};
use conduit_core::{
    Clock, Config, CreateMode, Encoding, FrameEncoder, Manifest, ManifestFile, Minute, NodeName,
    SharedStorage, Storage, TestClock, Topic, Trailer, View,
};
use conduit_merger::{
    bounded_storage, Cluster, CompactJob, Job, JobEnv, LocalJob, MergeJob, MirrorJob, NoFence,
    PassReport, PurgeJob, SealView, WorkerError, WorkerMetrics,
};
use conduit_testkit::{local_storage, minute, node};

fn topic() -> Topic {
    Topic::new("clicks").unwrap()
}

/// Clusters as local roots, a shared config and a test clock.
struct World {
    _dirs: Vec<tempfile::TempDir>,
    clusters: BTreeMap<NodeName, Cluster>,
    config: Arc<Config>,
    clock: TestClock,
}

impl World {
    /// `names` clusters; `topic_toml` is the body of `[topics.clicks]`, `worker_toml`
    /// of `[worker]`.
    fn new(names: &[&str], topic_toml: &str, worker_toml: &str, now: DateTime<Utc>) -> World {
        World::from_toml(
            names,
            &format!("[worker]\n{worker_toml}\n[topics.clicks]\n{topic_toml}\n"),
            now,
        )
    }

    /// `names` clusters and `sections` appended to their `[clusters.*]` tables.
    fn from_toml(names: &[&str], sections: &str, now: DateTime<Utc>) -> World {
        let mut dirs = Vec::new();
        let mut clusters = BTreeMap::new();
        let mut toml = String::new();
        for name in names {
            let dir = tempfile::tempdir().unwrap();
            let storage = local_storage(dir.path());
            toml.push_str(&format!(
                "[clusters.{name}]\nroot = {:?}\n",
                dir.path().display().to_string()
            ));
            clusters.insert(
                node(name),
                Cluster {
                    name: node(name),
                    storage,
                },
            );
            dirs.push(dir);
        }
        toml.push_str(sections);
        let config = Config::parse("test", &toml).unwrap();
        World {
            _dirs: dirs,
            clusters,
            config: Arc::new(config),
            clock: TestClock::at(now),
        }
    }

    fn storage(&self, name: &str) -> SharedStorage {
        self.clusters[&node(name)].storage.clone()
    }

    /// The job environment of cluster `this`, optionally with its storage replaced.
    fn env(&self, this: &str, storage: Option<SharedStorage>) -> JobEnv {
        let mut clusters = self.clusters.clone();
        if let Some(storage) = storage {
            clusters.get_mut(&node(this)).unwrap().storage = storage;
        }
        JobEnv {
            this: clusters[&node(this)].clone(),
            clusters,
            config: self.config.clone(),
            clock: self.clock.shared(),
            fence: Arc::new(NoFence),
            worker_id: format!("{this}/test"),
        }
    }

    /// Every cluster's storage wrapped in one shared fault plan.
    fn env_with_faults(&self, this: &str, plan: &FaultPlan) -> JobEnv {
        let mut env = self.env(this, None);
        for cluster in env.clusters.values_mut() {
            cluster.storage = Arc::new(FaultStorage::new(cluster.storage.clone(), plan.clone()));
        }
        env.this = env.clusters[&node(this)].clone();
        env
    }
}

/// One collector file to put in a local minute.
struct FileSpec {
    collector: &'static str,
    seq: u32,
    /// The collector file's minute (earlier than the directory's for late files).
    minute: Minute,
    records: usize,
}

fn spec(collector: &'static str, seq: u32, minute: Minute, records: usize) -> FileSpec {
    FileSpec {
        collector,
        seq,
        minute,
        records,
    }
}

/// The records of a file: unique across the whole test.
fn records_of(cluster: &str, spec: &FileSpec) -> Vec<String> {
    (0..spec.records)
        .map(|i| {
            format!(
                "{{\"cluster\":\"{cluster}\",\"collector\":\"{}\",\"minute\":\"{}\",\"seq\":{},\"i\":{i}}}",
                spec.collector, spec.minute, spec.seq
            )
        })
        .collect()
}

/// The bytes of a closed data file: batch marks, then data frames of up to 7
/// records, then the trailer (layout 1, what collectors wrote before marks v2).
fn file_bytes(records: &[String]) -> Bytes {
    let mut encoder = FrameEncoder::new(1).unwrap();
    let mut out = Vec::new();
    let mut record_bytes = 0u64;
    for (n, chunk) in records.chunks(7).enumerate() {
        out.extend_from_slice(&encode_marks_v1(&[BatchMark {
            publisher: Bytes::from_static(b"pub-1"),
            sequence: n as i64,
            part: 0,
            parts: 1,
        }]));
        let mut content = Vec::new();
        for r in chunk {
            Encoding::Lines
                .encode_into(r.as_bytes(), &mut content)
                .unwrap();
        }
        record_bytes += content.len() as u64;
        out.extend_from_slice(&encoder.frame(&content).unwrap());
    }
    out.extend_from_slice(
        &Trailer {
            encoding: Encoding::Lines,
            records: records.len() as u64,
            record_bytes,
        }
        .encode(),
    );
    Bytes::from(out)
}

/// Writes and seals local minute `dir_minute` of `cluster` with `files`; returns the
/// records, in file-name order.
async fn seal_local(
    world: &World,
    cluster: &str,
    dir_minute: Minute,
    files: &[FileSpec],
) -> Vec<String> {
    let storage = world.storage(cluster);
    let dir = Layout::minute_dir(View::Local, &topic(), dir_minute);
    storage.mkdirs(&dir).await.unwrap();
    let mut entries = Vec::new();
    let mut all = BTreeMap::new();
    for f in files {
        let name = Layout::local_file_name(
            &node(cluster),
            &node(f.collector),
            f.minute,
            f.seq,
            &topic(),
        );
        let records = records_of(cluster, f);
        let path = format!("{dir}/{name}");
        let mut w = storage.create(&path, CreateMode::Exclusive).await.unwrap();
        w.write(file_bytes(&records)).await.unwrap();
        w.close().await.unwrap();
        let (bytes, crc32c, trailer) = describe_file(storage.as_ref(), &path).await.unwrap();
        entries.push(ManifestFile {
            name: name.clone(),
            bytes,
            records: trailer.records,
            crc32c,
            cluster: node(cluster),
            collector: Some(node(f.collector)),
            minute: f.minute,
            late: f.minute < dir_minute,
        });
        all.insert(name, records);
    }
    Manifest::new(
        View::Local,
        topic(),
        dir_minute,
        vec![node(cluster)],
        vec![],
        world.clock.now(),
        format!("{cluster}/local"),
        entries,
    )
    .seal(storage.as_ref())
    .await
    .unwrap();
    all.into_values().flatten().collect()
}

/// A sealed local minute with one file from collector c1 (and a second from c2 on
/// odd minutes); returns its records.
async fn seal_simple(world: &World, cluster: &str, m: Minute) -> Vec<String> {
    let mut files = vec![spec("c1", 0, m, 5 + (m.epoch_minutes() % 4) as usize)];
    if m.epoch_minutes() % 2 == 1 {
        files.push(spec("c2", 3, m, 9));
    }
    seal_local(world, cluster, m, &files).await
}

/// Checks a sealed directory against its manifest (exact file set, length, CRC,
/// record count) and returns the manifest and the records of each file in order.
async fn check_sealed(storage: &dyn Storage, view: View, m: Minute) -> (Manifest, Vec<String>) {
    let dir = Manifest::dir(view, &topic(), m);
    let manifest = Manifest::read(storage, &dir)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{dir} is not sealed"));
    assert_eq!(manifest.view, view);
    assert_eq!(manifest.minute, m);
    let names: Vec<String> = storage
        .list(&dir)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != "_SUCCESS")
        .collect();
    let listed: Vec<String> = manifest.files.iter().map(|f| f.name.clone()).collect();
    assert_eq!(
        names, listed,
        "{dir} holds exactly its manifest's files, no leftovers"
    );
    let mut records = Vec::new();
    for f in &manifest.files {
        let path = format!("{dir}/{}", f.name);
        let (bytes, crc, trailer) = describe_file(storage, &path).await.unwrap();
        assert_eq!(
            (bytes, crc, trailer.records),
            (f.bytes, f.crc32c, f.records),
            "{path}"
        );
        assert_eq!(
            f.late,
            f.minute < m,
            "{path}: late iff its minute is before the directory's"
        );
        let decoded = read_file(storage, &path, Encoding::Lines).await.unwrap();
        assert_eq!(decoded.payloads.len() as u64, f.records);
        records.extend(
            decoded
                .payloads
                .iter()
                .map(|p| String::from_utf8(p.to_vec()).unwrap()),
        );
    }
    (manifest, records)
}

/// Every record of the merged minutes `from..=to` on `storage`, checking that no
/// record appears twice; the manifests by minute.
async fn merged_records(
    storage: &dyn Storage,
    from: Minute,
    to: Minute,
) -> (BTreeSet<String>, BTreeMap<Minute, Manifest>) {
    let mut all = BTreeSet::new();
    let mut manifests = BTreeMap::new();
    let mut m = from;
    while m <= to {
        let (manifest, records) = check_sealed(storage, View::Merged, m).await;
        for r in records {
            assert!(
                all.insert(r.clone()),
                "record {r} is in two merged minutes (or twice in {m})"
            );
        }
        manifests.insert(m, manifest);
        m = m.next().unwrap();
    }
    (all, manifests)
}

const TWO_SOURCES: &str = "merge_into = \"dc3\"\nmerge_sources = [\"dc1\", \"dc2\"]\n";

#[tokio::test]
async fn merge_unions_two_sources_byte_for_byte_and_seals_within_seconds() {
    let start = minute("2026-11-22T10:00Z");
    let world = World::new(&["dc1", "dc2", "dc3"], TWO_SOURCES, "", start.start());
    let mut expected = BTreeSet::new();
    for i in 0..5 {
        let m = start.add_minutes(i).unwrap();
        world.clock.set(m.end() + TimeDelta::seconds(2));
        expected.extend(seal_simple(&world, "dc1", m).await);
        expected.extend(seal_simple(&world, "dc2", m).await);
    }
    let mut job = MergeJob::new(world.env("dc3", None));
    assert_eq!(job.name(), "merge");
    world
        .clock
        .set(minute("2026-11-22T10:05Z").start() + TimeDelta::seconds(3));
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 5);
    assert_eq!(report.late_files, 0);
    assert_eq!(report.pending, 0);

    // Sources' local minute 10:05 seals at 10:06:02; the merge pass right after.
    let m5 = minute("2026-11-22T10:05Z");
    world.clock.set(m5.end() + TimeDelta::seconds(2));
    expected.extend(seal_simple(&world, "dc1", m5).await);
    expected.extend(seal_simple(&world, "dc2", m5).await);
    world.clock.set(m5.end() + TimeDelta::seconds(3));
    let wall = std::time::Instant::now();
    let report = job.pass().await.unwrap();
    let took = wall.elapsed();
    assert_eq!(report.sealed, 1);
    // Where the pass's time went (`steps_ms`, conduit_worker_step_seconds_total).
    for step in ["sources", "copy", "manifest"] {
        assert!(
            report.step_micros.contains_key(step),
            "merge step {step} is not timed: {:?}",
            report.step_micros
        );
    }
    println!("merge pass sealing one minute of 2 sources: {took:?} wall time");
    // The lag gauge's view of it (conduit_worker_lag_seconds{view="merged"}).
    assert_eq!(job.progress().get(SealView::Merged, &topic()), Some(m5));

    let dest = world.storage("dc3");
    let (records, manifests) = merged_records(dest.as_ref(), start, m5).await;
    assert_eq!(records, expected, "every record exactly once");
    for (m, manifest) in &manifests {
        assert_eq!(manifest.clusters, vec![node("dc1"), node("dc2")]);
        assert!(manifest.missing_clusters.is_empty());
        assert!(manifest.files.iter().all(|f| !f.late));
        // Byte-identical copies under the same names.
        for f in &manifest.files {
            let source = world.storage(f.cluster.as_str());
            let local = Layout::minute_dir(View::Local, &topic(), *m);
            let merged = Layout::minute_dir(View::Merged, &topic(), *m);
            assert_eq!(
                source.read(&format!("{local}/{}", f.name)).await.unwrap(),
                dest.read(&format!("{merged}/{}", f.name)).await.unwrap()
            );
        }
    }
    let sealed_after = manifests[&m5].sealed_at - m5.end();
    assert!(
        sealed_after <= TimeDelta::seconds(10),
        "sealed {sealed_after} after the minute's end"
    );

    // Nothing left to do; a fresh job (state rebuilt from manifests) agrees.
    assert_eq!(job.pass().await.unwrap().sealed, 0);
    let mut fresh = MergeJob::new(world.env("dc3", None));
    assert_eq!(fresh.pass().await.unwrap().sealed, 0);
    // Not a merge destination: nothing to do.
    let mut other = MergeJob::new(world.env("dc1", None));
    assert!(!other.pass().await.unwrap().did_something());
}

/// The chunk trap (docs/reliability.md, "Faults"): a source reached over a slow
/// link, through the storage bounds the worker uses (`bounded_storage`) and a
/// throttled `FaultStorage` around the real root. One read of the big file takes
/// several times `storage_timeout_ms` at the link's rate; it keeps moving, so the
/// merge finishes. A source that answers nothing still times out at the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_over_a_slow_link_finishes_and_a_silent_source_times_out() {
    let start = minute("2026-11-22T10:00Z");
    let limit_ms = 1000;
    let link = 256u64 << 10; // bytes a second
    let world = World::new(
        &["dc1", "dc2", "dc3"],
        TWO_SOURCES,
        &format!("storage_timeout_ms = {limit_ms}\nstorage_min_read_bytes_per_sec = 65536"),
        start.start(),
    );
    world.clock.set(start.end() + TimeDelta::seconds(2));
    let mut expected: BTreeSet<String> =
        seal_local(&world, "dc1", start, &[spec("c1", 0, start, 30_000)])
            .await
            .into_iter()
            .collect();
    expected.extend(seal_simple(&world, "dc2", start).await);
    let dir = Layout::minute_dir(View::Local, &topic(), start);
    let big = world
        .storage("dc1")
        .list(&dir)
        .await
        .unwrap()
        .iter()
        .map(|f| f.len)
        .max()
        .unwrap();
    assert!(
        big > 2 * link * limit_ms / 1000,
        "a read of the {big}-byte file must need more than twice storage_timeout_ms at the link's rate"
    );

    let plan = FaultPlan::new();
    plan.throttle(link);
    let registry: conduit_core::http::SharedRegistry = Default::default();
    let metrics = WorkerMetrics::new(&registry);
    let mut env = world.env("dc3", None);
    let dc1 = env.clusters.get_mut(&node("dc1")).unwrap();
    dc1.storage = bounded_storage(
        Arc::new(FaultStorage::new(dc1.storage.clone(), plan.clone())),
        "dc1",
        &world.config.worker,
        &metrics,
    );
    let timeouts = |name: &str| {
        let label = vec![("cluster", name.to_owned())];
        metrics.storage_timeouts.get_or_create(&label).get()
            + metrics.storage_slow_reads.get_or_create(&label).get()
    };
    let mut job = MergeJob::new(env);
    world.clock.set(start.end() + TimeDelta::seconds(3));
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 1, "the slow but moving copy finished");
    assert_eq!(timeouts("dc1"), 0);
    let (records, manifests) = merged_records(world.storage("dc3").as_ref(), start, start).await;
    assert_eq!(records, expected, "every record exactly once");
    assert!(manifests[&start].missing_clusters.is_empty());

    // The next minute: dc1 answers nothing at all (a cut link).
    let next = start.next().unwrap();
    world.clock.set(next.end() + TimeDelta::seconds(2));
    seal_simple(&world, "dc1", next).await;
    seal_simple(&world, "dc2", next).await;
    plan.heal();
    plan.delay_ops(
        &[Op::Read, Op::Stat, Op::List],
        std::time::Duration::from_secs(3600),
    );
    world.clock.set(next.end() + TimeDelta::seconds(3));
    let _ = job.pass().await;
    assert!(timeouts("dc1") >= 1, "the silent source timed out");
    assert!(
        !world
            .storage("dc3")
            .exists(&format!(
                "{}/_SUCCESS",
                Layout::minute_dir(View::Merged, &topic(), next)
            ))
            .await
            .unwrap(),
        "not sealed without dc1 before its lag allowance"
    );
}

/// A topic that only one source datacenter ever saw (not configured, so the other
/// source's local job does not know it): the merge job asks that source to serve the
/// topic, its local job seals the empty minute, and the merged minute is sealed with
/// both sources seconds after the minute, not after `max_source_lag_secs`.
#[tokio::test]
async fn a_topic_one_source_never_saw_is_merged_without_waiting_out_the_lag() {
    let start = minute("2026-11-22T10:00Z");
    let world = World::from_toml(
        &["dc1", "dc2", "dc3"],
        &format!("[topic_defaults]\n{TWO_SOURCES}"),
        start.start(),
    );
    assert_eq!(world.config.worker.max_source_lag_secs, 300);
    world.clock.set(start.end() + TimeDelta::seconds(2));
    let expected: BTreeSet<String> = seal_simple(&world, "dc1", start)
        .await
        .into_iter()
        .collect();
    let mut merge = MergeJob::new(world.env("dc3", None));
    world.clock.set(start.end() + TimeDelta::seconds(3));
    assert_eq!(
        merge.pass().await.unwrap().sealed,
        0,
        "dc2 has not sealed 10:00"
    );

    // dc2's local job (no collectors at all there) now serves the topic.
    let mut local = LocalJob::new(world.env("dc2", None));
    local.pass().await.unwrap();
    let (empty, records) = check_sealed(world.storage("dc2").as_ref(), View::Local, start).await;
    assert_eq!((empty.records, records.len()), (0, 0));

    world.clock.set(start.end() + TimeDelta::seconds(5));
    assert_eq!(merge.pass().await.unwrap().sealed, 1);
    let (manifest, records) =
        check_sealed(world.storage("dc3").as_ref(), View::Merged, start).await;
    assert_eq!(manifest.clusters, vec![node("dc1"), node("dc2")]);
    assert!(manifest.missing_clusters.is_empty(), "{manifest:?}");
    assert_eq!(records.into_iter().collect::<BTreeSet<_>>(), expected);
}

/// Builds the "dc2 stops for a while" history used by two tests: merged minutes
/// 10:00-10:01 with both sources, 10:02 onwards sealed without dc2 once it lags,
/// then dc2 comes back. Returns the records of all sources.
struct Outage {
    world: World,
    expected: BTreeSet<String>,
}

async fn outage_before_return(lag_secs: u64) -> (Outage, MergeJob) {
    let start = minute("2026-11-22T10:00Z");
    let world = World::new(
        &["dc1", "dc2", "dc3"],
        TWO_SOURCES,
        &format!("max_source_lag_secs = {lag_secs}"),
        start.start(),
    );
    let mut expected = BTreeSet::new();
    let mut job = MergeJob::new(world.env("dc3", None));
    for i in 0..2 {
        let m = start.add_minutes(i).unwrap();
        expected.extend(seal_simple(&world, "dc1", m).await);
        expected.extend(seal_simple(&world, "dc2", m).await);
    }
    // dc1 keeps going; dc2's worker is down (its local view stops at 10:01).
    world
        .clock
        .set(minute("2026-11-22T10:02Z").end() + TimeDelta::seconds(3));
    expected.extend(seal_simple(&world, "dc1", minute("2026-11-22T10:02Z")).await);
    let report = job.pass().await.unwrap();
    assert_eq!(
        report.sealed, 2,
        "10:02 waits for dc2 while it is within the lag"
    );
    (Outage { world, expected }, job)
}

#[tokio::test]
async fn a_lagging_source_stops_blocking_and_its_data_arrives_late_exactly_once() {
    let (
        Outage {
            world,
            mut expected,
        },
        mut job,
    ) = outage_before_return(120).await;
    for i in 3..8 {
        let m = minute("2026-11-22T10:00Z").add_minutes(i).unwrap();
        expected.extend(seal_simple(&world, "dc1", m).await);
    }
    // 10:08:05: dc2's newest sealed minute (10:01) ended 6 minutes ago > 120 s.
    world
        .clock
        .set(minute("2026-11-22T10:08Z").start() + TimeDelta::seconds(5));
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 6, "10:02-10:07 seal without dc2");
    let dest = world.storage("dc3");
    for i in 2..8 {
        let m = minute("2026-11-22T10:00Z").add_minutes(i).unwrap();
        let (manifest, _) = check_sealed(dest.as_ref(), View::Merged, m).await;
        assert_eq!(manifest.clusters, vec![node("dc1")], "{m}");
        assert_eq!(manifest.missing_clusters, vec![node("dc2")], "{m}");
    }

    // dc2 comes back: its local job catches up 10:02-10:09, including a collector
    // file of 10:04 that reached it late (in its local minute 10:06).
    let mut late_from_dc2 = 0;
    for i in 2..10 {
        let m = minute("2026-11-22T10:00Z").add_minutes(i).unwrap();
        if i == 6 {
            let files = [
                spec("c1", 0, m, 4),
                spec("c1", 1, minute("2026-11-22T10:04Z"), 3),
            ];
            expected.extend(seal_local(&world, "dc2", m, &files).await);
            late_from_dc2 += 2;
        } else {
            expected.extend(seal_simple(&world, "dc2", m).await);
            late_from_dc2 += if i < 8 {
                1 + (m.epoch_minutes() % 2) as u64
            } else {
                0
            };
        }
    }
    for i in 8..10 {
        let m = minute("2026-11-22T10:00Z").add_minutes(i).unwrap();
        expected.extend(seal_simple(&world, "dc1", m).await);
    }
    world
        .clock
        .set(minute("2026-11-22T10:10Z").start() + TimeDelta::seconds(3));
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 2, "10:08 (with dc2's backlog) and 10:09");
    assert_eq!(report.late_files, late_from_dc2);

    let (records, manifests) = merged_records(
        dest.as_ref(),
        minute("2026-11-22T10:00Z"),
        minute("2026-11-22T10:09Z"),
    )
    .await;
    assert_eq!(
        records, expected,
        "every record of both sources exactly once"
    );
    let m8 = &manifests[&minute("2026-11-22T10:08Z")];
    assert_eq!(m8.clusters, vec![node("dc1"), node("dc2")]);
    assert!(m8.missing_clusters.is_empty());
    let late: Vec<&ManifestFile> = m8.files.iter().filter(|f| f.late).collect();
    assert_eq!(late.len() as u64, late_from_dc2);
    assert!(late
        .iter()
        .all(|f| f.cluster == node("dc2") && f.minute < minute("2026-11-22T10:08Z")));
    assert!(
        late.iter().any(|f| f.minute == minute("2026-11-22T10:02Z")),
        "original minutes kept"
    );
    assert!(!manifests[&minute("2026-11-22T10:09Z")]
        .files
        .iter()
        .any(|f| f.late));

    // A fresh job (no memory, checkpoint deleted) agrees there is nothing to do.
    dest.delete("system/checkpoints/merge/clicks.json", false)
        .await
        .unwrap();
    let mut fresh = MergeJob::new(world.env("dc3", None));
    assert_eq!(fresh.pass().await.unwrap().sealed, 0);
}

/// A cut source's lag gauge drops as soon as the source can be read again,
/// not only once the next merged minute is due: sources that could not be read
/// are read again by every pass.
#[tokio::test]
async fn a_cut_source_is_read_again_before_the_next_minute_is_due() {
    let start = minute("2026-11-22T10:00Z");
    let world = World::new(
        &["dc1", "dc2", "dc3"],
        TWO_SOURCES,
        "max_source_lag_secs = 90",
        start.start(),
    );
    let mut env = world.env("dc3", None);
    let cut = FaultPlan::new();
    let dc2 = env.clusters.get_mut(&node("dc2")).unwrap();
    dc2.storage = Arc::new(FaultStorage::new(dc2.storage.clone(), cut.clone()));
    let mut job = MergeJob::new(env);
    let progress = job.progress();
    let seen_of_dc2 = || {
        progress
            .source_snapshot()
            .into_iter()
            .find(|(_, cluster, _)| *cluster == node("dc2"))
            .map(|(_, _, m)| m)
    };
    for i in 0..2 {
        let m = start.add_minutes(i).unwrap();
        seal_simple(&world, "dc1", m).await;
        seal_simple(&world, "dc2", m).await;
    }
    world
        .clock
        .set(minute("2026-11-22T10:01Z").end() + TimeDelta::seconds(3));
    assert_eq!(job.pass().await.unwrap().sealed, 2);
    assert_eq!(seen_of_dc2(), Some(minute("2026-11-22T10:01Z")));

    // dc2 is cut; both datacenters keep sealing their local minutes.
    cut.fail_all();
    for i in 2..4 {
        let m = start.add_minutes(i).unwrap();
        seal_simple(&world, "dc1", m).await;
        seal_simple(&world, "dc2", m).await;
    }
    world
        .clock
        .set(minute("2026-11-22T10:04Z").start() + TimeDelta::seconds(5));
    assert_eq!(
        job.pass().await.unwrap().sealed,
        2,
        "10:02 and 10:03 sealed without dc2, which lags 125 s > 90 s"
    );
    assert_eq!(seen_of_dc2(), Some(minute("2026-11-22T10:01Z")));

    // The link is back 5 s later: the frontier (10:04) is not due for 50 s,
    // yet the next pass sees dc2's newest sealed minute.
    cut.heal();
    world
        .clock
        .set(minute("2026-11-22T10:04Z").start() + TimeDelta::seconds(10));
    assert_eq!(job.pass().await.unwrap().sealed, 0);
    assert_eq!(
        seen_of_dc2(),
        Some(minute("2026-11-22T10:03Z")),
        "dc2's lag is known again at once"
    );
}

/// The minutes and records the crash test expects after recovery.
async fn crash_world() -> (Outage, MergeJob) {
    let (
        Outage {
            world,
            mut expected,
        },
        mut job,
    ) = outage_before_return(90).await;
    // 10:03:35: dc2 (newest 10:01) lags by more than 90 s: 10:02 seals without it.
    world
        .clock
        .set(minute("2026-11-22T10:03Z").start() + TimeDelta::seconds(35));
    assert_eq!(job.pass().await.unwrap().sealed, 1);
    for i in 2..5 {
        let m = minute("2026-11-22T10:00Z").add_minutes(i).unwrap();
        expected.extend(seal_simple(&world, "dc2", m).await);
        if i > 2 {
            expected.extend(seal_simple(&world, "dc1", m).await);
        }
    }
    world
        .clock
        .set(minute("2026-11-22T10:05Z").start() + TimeDelta::seconds(3));
    (Outage { world, expected }, job)
}

#[tokio::test]
async fn merge_survives_a_crash_at_every_storage_call() {
    for n in 0.. {
        let (Outage { world, expected }, _) = crash_world().await;
        let plan = FaultPlan::new();
        plan.fail_after(n);
        let mut crashing = MergeJob::new(world.env_with_faults("dc3", &plan));
        let outcome = crashing.pass().await;
        drop(crashing);
        if plan.injected() == 0 {
            outcome.unwrap();
            assert!(n > 30, "only {n} storage calls were failed");
            println!("merge pass failed at each of its first {n} storage calls, then completed");
            break;
        }
        plan.heal();
        // A fresh worker finishes the job.
        let mut job = MergeJob::new(world.env("dc3", None));
        let mut report = PassReport::default();
        // The failed call may have been swallowed (a source read that fails makes
        // the job wait), so allow one more pass.
        for _ in 0..2 {
            report.add(
                &job.pass()
                    .await
                    .unwrap_or_else(|e| panic!("crash at call {n}: {e}")),
            );
        }
        let dest = world.storage("dc3");
        let (records, manifests) = merged_records(
            dest.as_ref(),
            minute("2026-11-22T10:00Z"),
            minute("2026-11-22T10:04Z"),
        )
        .await;
        assert_eq!(
            records, expected,
            "crash at call {n}: every record exactly once"
        );
        let m3 = &manifests[&minute("2026-11-22T10:03Z")];
        assert_eq!(
            m3.clusters,
            vec![node("dc1"), node("dc2")],
            "crash at call {n}"
        );
        assert!(
            m3.files
                .iter()
                .any(|f| f.late && f.minute == minute("2026-11-22T10:02Z")),
            "crash at call {n}: dc2's 10:02 lands late in 10:03"
        );
        assert!(dest
            .list_or_empty("streams/clicks/2026/11/22/10/05")
            .await
            .unwrap()
            .is_empty());
    }
}

/// A merge pass torn in the middle of each of its writes in turn (half the bytes
/// of a copied data file, of the `_SUCCESS` manifest or of a checkpoint reach
/// storage, then the call fails and the worker stops), then a fresh worker: every
/// record merged exactly once, every sealed directory exactly its manifest's files
/// (no `_tmp.` leftover), nothing sealed twice (issue 20).
#[tokio::test]
async fn merge_survives_a_torn_write_at_every_write() {
    for n in 0.. {
        let (Outage { world, expected }, _) = crash_world().await;
        let plan = FaultPlan::new();
        plan.tear_write_after(n);
        let mut crashing = MergeJob::new(world.env_with_faults("dc3", &plan));
        let outcome = crashing.pass().await;
        drop(crashing);
        if plan.injected() == 0 {
            outcome.unwrap();
            assert!(n > 5, "only {n} writes were torn");
            println!("merge pass torn at each of its first {n} writes, then completed");
            break;
        }
        plan.heal();
        let mut job = MergeJob::new(world.env("dc3", None));
        let mut report = PassReport::default();
        for _ in 0..2 {
            report.add(
                &job.pass()
                    .await
                    .unwrap_or_else(|e| panic!("torn write {n}: {e}")),
            );
        }
        let dest = world.storage("dc3");
        let (records, manifests) = merged_records(
            dest.as_ref(),
            minute("2026-11-22T10:00Z"),
            minute("2026-11-22T10:04Z"),
        )
        .await;
        assert_eq!(
            records, expected,
            "torn write {n}: every record exactly once"
        );
        assert_eq!(manifests.len(), 5, "torn write {n}");
    }
}

/// A mirror pass torn in the middle of each of its writes in turn, then a fresh
/// mirror job: the mirror is byte-identical to the merged view, with no
/// leftovers (issue 20).
#[tokio::test]
async fn mirror_survives_a_torn_write_at_every_write() {
    let start = minute("2026-11-22T10:00Z");
    for n in 0.. {
        let world = World::new(
            &["dc1", "dc2", "dc3"],
            "merge_into = \"dc1\"\nmerge_sources = [\"dc1\", \"dc3\"]\nmirrors = [\"dc2\"]\n",
            "",
            start.start(),
        );
        let mut merge = MergeJob::new(world.env("dc1", None));
        for i in 0..3 {
            let m = start.add_minutes(i).unwrap();
            seal_simple(&world, "dc1", m).await;
            seal_simple(&world, "dc3", m).await;
            world.clock.set(m.end() + TimeDelta::seconds(3));
            assert_eq!(merge.pass().await.unwrap().sealed, 1);
        }
        let plan = FaultPlan::new();
        plan.tear_write_after(n);
        let mut crashing = MirrorJob::new(world.env_with_faults("dc2", &plan));
        let outcome = crashing.pass().await;
        drop(crashing);
        if plan.injected() == 0 {
            assert_eq!(outcome.unwrap().sealed, 3);
            assert!(n > 3, "only {n} writes were torn");
            println!("mirror pass torn at each of its first {n} writes, then completed");
            break;
        }
        plan.heal();
        MirrorJob::new(world.env("dc2", None))
            .pass()
            .await
            .unwrap_or_else(|e| panic!("torn write {n}: {e}"));
        let origin = world.storage("dc1");
        let copy = world.storage("dc2");
        for i in 0..3 {
            let m = start.add_minutes(i).unwrap();
            let dir = Layout::minute_dir(View::Merged, &topic(), m);
            let (manifest, records) = check_sealed(copy.as_ref(), View::Merged, m).await;
            let (_, original) = check_sealed(origin.as_ref(), View::Merged, m).await;
            assert_eq!(records, original, "torn write {n}: {dir}");
            assert_eq!(
                origin.read(&format!("{dir}/_SUCCESS")).await.unwrap(),
                copy.read(&format!("{dir}/_SUCCESS")).await.unwrap(),
                "torn write {n}: {dir}"
            );
            for f in &manifest.files {
                let path = format!("{dir}/{}", f.name);
                assert_eq!(
                    origin.read(&path).await.unwrap(),
                    copy.read(&path).await.unwrap(),
                    "torn write {n}: {path}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_mirror_falls_behind_catches_up_and_is_byte_identical() {
    let start = minute("2026-11-22T10:00Z");
    let world = World::new(
        &["dc1", "dc2", "dc3"],
        "merge_into = \"dc1\"\nmerge_sources = [\"dc1\", \"dc3\"]\nmirrors = [\"dc2\"]\n",
        "",
        start.start(),
    );
    let mut merge = MergeJob::new(world.env("dc1", None));
    let mut mirror = MirrorJob::new(world.env("dc2", None));
    assert_eq!(mirror.name(), "mirror");
    assert!(
        !mirror.pass().await.unwrap().did_something(),
        "nothing merged yet"
    );
    let mut sealed = 0;
    let last = 30;
    for i in 0..last {
        let m = start.add_minutes(i).unwrap();
        seal_simple(&world, "dc1", m).await;
        seal_simple(&world, "dc3", m).await;
        world.clock.set(m.end() + TimeDelta::seconds(3));
        assert_eq!(merge.pass().await.unwrap().sealed, 1);
        // The mirror keeps up for 5 minutes, is down for 20, then catches up.
        if !(5..25).contains(&i) {
            world.clock.set(m.end() + TimeDelta::seconds(4));
            let report = mirror.pass().await.unwrap();
            sealed += report.sealed;
            for step in ["copy", "manifest"] {
                assert!(
                    report.step_micros.contains_key(step),
                    "mirror step {step} is not timed: {:?}",
                    report.step_micros
                );
            }
            if i == 25 {
                assert_eq!(report.sealed, 21, "caught up oldest first in one pass");
            } else {
                assert_eq!(report.sealed, 1);
            }
            assert_eq!(report.pending, 0);
        }
    }
    // A crash in the middle of mirroring a minute, then a fresh job.
    let m = start.add_minutes(last).unwrap();
    seal_simple(&world, "dc1", m).await;
    seal_simple(&world, "dc3", m).await;
    world.clock.set(m.end() + TimeDelta::seconds(3));
    merge.pass().await.unwrap();
    let plan = FaultPlan::new();
    plan.only_paths_containing("streams/clicks");
    plan.fail_after(10);
    let mut crashing = MirrorJob::new(world.env(
        "dc2",
        Some(Arc::new(FaultStorage::new(
            world.storage("dc2"),
            plan.clone(),
        ))),
    ));
    assert!(crashing.pass().await.is_err());
    plan.heal();
    sealed += MirrorJob::new(world.env("dc2", None))
        .pass()
        .await
        .unwrap()
        .sealed;
    assert_eq!(sealed, last as u64 + 1);
    // The first job's newest mirrored minute (conduit_worker_lag_seconds{view="mirror"}).
    assert_eq!(
        mirror.progress().get(SealView::Mirror, &topic()),
        Some(start.add_minutes(last - 1).unwrap())
    );

    let origin = world.storage("dc1");
    let copy = world.storage("dc2");
    for i in 0..=last {
        let m = start.add_minutes(i).unwrap();
        let dir = Layout::minute_dir(View::Merged, &topic(), m);
        let (manifest, _) = check_sealed(copy.as_ref(), View::Merged, m).await;
        assert_eq!(
            origin.read(&format!("{dir}/_SUCCESS")).await.unwrap(),
            copy.read(&format!("{dir}/_SUCCESS")).await.unwrap(),
            "{m}: the same manifest bytes"
        );
        for f in &manifest.files {
            let path = format!("{dir}/{}", f.name);
            assert_eq!(
                origin.read(&path).await.unwrap(),
                copy.read(&path).await.unwrap(),
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn purge_deletes_expired_sealed_minutes_and_empty_parents_only() {
    // Real time, so file modification times and the clock agree.
    let now = Utc::now();
    let world = World::new(
        &["dc1"],
        "retention_hours = { local = 2, merged = 3, hourly = 5 }\n",
        "",
        now,
    );
    let storage = world.storage("dc1");
    let m = |hours_ago: i64, min: i64| {
        Minute::from_datetime(now - TimeDelta::hours(hours_ago))
            .unwrap()
            .add_minutes(min)
            .unwrap()
    };
    // Local view: two days ago (sealed: deleted with their day), 150 minutes ago
    // (sealed: deleted; unsealed with a stale temporary: kept), 90 minutes ago
    // (sealed, young: kept).
    let old = [m(48, 0), m(48, 1)];
    for minute in old {
        seal_simple(&world, "dc1", minute).await;
    }
    let expired = m(0, -150);
    seal_simple(&world, "dc1", expired).await;
    let unsealed = m(0, -151);
    let unsealed_dir = Layout::minute_dir(View::Local, &topic(), unsealed);
    let tmp = format!("{unsealed_dir}/_tmp.dc1-c1-x.zst");
    let mut w = storage.create(&tmp, CreateMode::Exclusive).await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    w.close().await.unwrap();
    let young = m(0, -90);
    seal_simple(&world, "dc1", young).await;
    // Merged view: 150 minutes ago is young for its 3 hours.
    let merged_dir = Layout::minute_dir(View::Merged, &topic(), expired);
    storage.mkdirs(&merged_dir).await.unwrap();
    Manifest::new(
        View::Merged,
        topic(),
        expired,
        vec![node("dc1")],
        vec![],
        now,
        "t".into(),
        vec![],
    )
    .seal(storage.as_ref())
    .await
    .unwrap();
    // Hourly view: an hour that ended 6 hours ago is expired.
    let hour = m(7, 0).hour_start();
    storage
        .mkdirs(&Layout::hour_dir(&topic(), hour))
        .await
        .unwrap();
    Manifest::new(
        View::Hourly,
        topic(),
        hour,
        vec![node("dc1")],
        vec![],
        now,
        "t".into(),
        vec![],
    )
    .seal(storage.as_ref())
    .await
    .unwrap();

    let mut job = PurgeJob::new(world.env("dc1", None));
    assert_eq!(job.name(), "purge");
    let report = job.pass().await.unwrap();
    assert_eq!(
        report.deleted, 4,
        "two old minutes, one expired minute, one hour"
    );
    for minute in old.iter().chain([&expired]) {
        assert!(!storage
            .exists(&Layout::minute_dir(View::Local, &topic(), *minute))
            .await
            .unwrap());
    }
    let old_day = format!("streams_local/clicks/{}", &old[0].dir_path()[..10]);
    if old_day != format!("streams_local/clicks/{}", &expired.dir_path()[..10]) {
        assert!(
            !storage.exists(&old_day).await.unwrap(),
            "{old_day} emptied and removed"
        );
    }
    assert!(
        storage.exists(&unsealed_dir).await.unwrap(),
        "unsealed minutes are never deleted"
    );
    assert!(
        storage.exists(&tmp).await.unwrap(),
        "a temporary younger than an hour stays"
    );
    assert!(Manifest::is_sealed(
        storage.as_ref(),
        &Layout::minute_dir(View::Local, &topic(), young)
    )
    .await
    .unwrap());
    assert!(
        Manifest::is_sealed(storage.as_ref(), &merged_dir)
            .await
            .unwrap(),
        "merged keeps 3 hours"
    );
    assert!(!storage
        .exists(&Layout::hour_dir(&topic(), hour))
        .await
        .unwrap());

    // Two hours later the temporary is stale, `young` and the merged minute expire.
    world.clock.set(now + TimeDelta::hours(2));
    let report = job.pass().await.unwrap();
    assert_eq!(report.deleted, 2);
    assert!(
        !storage.exists(&tmp).await.unwrap(),
        "stale temporary removed"
    );
    assert!(
        storage.exists(&unsealed_dir).await.unwrap(),
        "the unsealed minute itself stays"
    );
    assert_eq!(job.pass().await.unwrap().deleted, 0);
}

#[tokio::test]
async fn compaction_is_one_file_the_zstd_cli_reads_in_order() {
    let hour = minute("2026-11-22T10:00Z");
    let world = World::new(&["dc1"], "compact = true\n", "", hour.start());
    let mut expected = Vec::new();
    let mut manifest_records = 0u64;
    for i in 0..60 {
        let m = hour.add_minutes(i).unwrap();
        let records = match i % 3 {
            0 => seal_local(&world, "dc1", m, &[]).await, // empty minute
            1 => seal_simple(&world, "dc1", m).await,
            _ => {
                seal_local(
                    &world,
                    "dc1",
                    m,
                    &[
                        spec("c2", 0, m, 15),
                        spec("c1", 7, m, 1),
                        spec("c1", 2, m.prev().unwrap(), 2),
                    ],
                )
                .await
            }
        };
        manifest_records += records.len() as u64;
        expected.extend(records);
    }
    // 11:00 is sealed but its hour is not closed.
    seal_simple(&world, "dc1", minute("2026-11-22T11:00Z")).await;
    world.clock.set(minute("2026-11-22T11:01Z").start());
    let mut job = CompactJob::new(world.env("dc1", None));
    assert_eq!(job.name(), "compact");
    let report = job.pass().await.unwrap();
    assert_eq!(report.sealed, 1);
    assert_eq!(
        job.pass().await.unwrap().sealed,
        0,
        "the next hour is not closed"
    );
    // The hourly lag counts from the hour's last minute.
    assert_eq!(
        job.progress().get(SealView::Hourly, &topic()),
        Some(minute("2026-11-22T10:59Z"))
    );

    let storage = world.storage("dc1");
    let (manifest, records) = check_sealed(storage.as_ref(), View::Hourly, hour).await;
    assert_eq!(manifest.records, manifest_records);
    assert_eq!(manifest.files.len(), 1);
    assert_eq!(manifest.files[0].name, "clicks-2026-11-22-10.zst");
    assert_eq!(
        records, expected,
        "same records in the same order (conduit reader)"
    );

    let dir = world._dirs[0].path();
    let path = dir.join("streams_hourly/clicks/2026/11/22/10/clicks-2026-11-22-10.zst");
    let out = Command::new("zstd")
        .arg("-dc")
        .arg(&path)
        .output()
        .expect("zstd CLI installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, manifest_records);
    assert_eq!(
        lines,
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "zstd -dc: same records, same order"
    );
    let test = Command::new("zstd").arg("-t").arg(&path).output().unwrap();
    assert!(test.status.success(), "zstd -t validates every frame");
    // The minute files concatenated (trailers and marks included) decode the same.
    let mut minute_paths = Vec::new();
    for i in 0..60 {
        let m = hour.add_minutes(i).unwrap();
        let mdir = Layout::minute_dir(View::Local, &topic(), m);
        for f in Manifest::read(storage.as_ref(), &mdir)
            .await
            .unwrap()
            .unwrap()
            .files
        {
            minute_paths.push(dir.join(format!("{mdir}/{}", f.name)));
        }
    }
    let out = Command::new("zstd")
        .arg("-dc")
        .args(&minute_paths)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
}

#[tokio::test]
async fn compaction_and_merge_errors_name_what_is_wrong() {
    // A merge source whose manifest lies about a file: the copy is refused.
    let start = minute("2026-11-22T10:00Z");
    let world = World::new(
        &["dc1", "dc3"],
        "merge_into = \"dc3\"\nmerge_sources = [\"dc1\"]\n",
        "",
        start.start(),
    );
    seal_simple(&world, "dc1", start).await;
    let storage = world.storage("dc1");
    let dir = Layout::minute_dir(View::Local, &topic(), start);
    let name = Manifest::read(storage.as_ref(), &dir)
        .await
        .unwrap()
        .unwrap()
        .files[0]
        .name
        .clone();
    let path = format!("{dir}/{name}");
    let mut bytes = storage.read(&path).await.unwrap().to_vec();
    bytes[20] ^= 0xff;
    storage
        .write_atomic(&path, Bytes::from(bytes))
        .await
        .unwrap();
    world.clock.set(start.end() + TimeDelta::seconds(3));
    let err = MergeJob::new(world.env("dc3", None))
        .pass()
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::CopyMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    assert!(!Manifest::is_sealed(
        world.storage("dc3").as_ref(),
        &Layout::minute_dir(View::Merged, &topic(), start)
    )
    .await
    .unwrap());
    assert!(
        world
            .storage("dc3")
            .list_or_empty(&Layout::minute_dir(View::Merged, &topic(), start))
            .await
            .unwrap()
            .is_empty(),
        "the bad copy is not left behind"
    );
}

/// `gzip -dc` of the file at `rel` under `root`, as lines.
fn gunzip_lines(root: &std::path::Path, rel: &str) -> Vec<String> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(root.join(rel))
        .output()
        .expect("gzip CLI installed");
    assert!(out.status.success(), "gzip -dc {rel}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_gzip_topic_is_merged_to_gz_files_and_compacted_to_one_gz_hour() {
    let hour = minute("2026-11-22T10:00Z");
    let world = World::new(
        &["dc1"],
        "merge_into = \"dc1\"\nformat = \"gzip\"\ncompact = true\n",
        "",
        hour.start(),
    );
    let mut expected = Vec::new();
    for i in 0..60 {
        let m = hour.add_minutes(i).unwrap();
        expected.extend(if i % 7 == 0 {
            seal_local(&world, "dc1", m, &[]).await // empty minute
        } else {
            seal_simple(&world, "dc1", m).await
        });
    }
    seal_simple(&world, "dc1", minute("2026-11-22T11:00Z")).await;
    world.clock.set(minute("2026-11-22T11:01Z").start());
    let mut merge = MergeJob::new(world.env("dc1", None));
    assert_eq!(merge.pass().await.unwrap().sealed, 61);

    // Merged minutes: `.gz` files of the local files' stems, described by the
    // manifest (length, CRC-32C, records), holding the same records.
    let storage = world.storage("dc1");
    let root = world._dirs[0].path();
    let mut merged = Vec::new();
    for i in 0..60 {
        let m = hour.add_minutes(i).unwrap();
        let dir = Manifest::dir(View::Merged, &topic(), m);
        let manifest = Manifest::read(storage.as_ref(), &dir)
            .await
            .unwrap()
            .unwrap();
        let local = Manifest::read(storage.as_ref(), &Manifest::dir(View::Local, &topic(), m))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(manifest.records, local.records, "{dir}");
        assert_eq!(manifest.files.len(), local.files.len(), "{dir}");
        for (f, l) in manifest.files.iter().zip(&local.files) {
            assert_eq!(f.name, l.name.replace(".zst", ".gz"), "{dir}");
            assert_eq!((f.minute, f.records), (l.minute, l.records), "{dir}");
            let path = format!("{dir}/{}", f.name);
            let bytes = storage.read(&path).await.unwrap();
            assert_eq!(
                (bytes.len() as u64, conduit_core::manifest::crc32c(&bytes)),
                (f.bytes, f.crc32c),
                "{path}"
            );
            let lines = gunzip_lines(root, &path);
            assert_eq!(lines.len() as u64, f.records, "{path}");
            merged.extend(lines);
        }
    }
    assert_eq!(merged, expected, "gzip -dc: same records, same order");

    let mut compact = CompactJob::new(world.env("dc1", None));
    assert_eq!(compact.pass().await.unwrap().sealed, 1);
    let dir = Manifest::dir(View::Hourly, &topic(), hour);
    let manifest = Manifest::read(storage.as_ref(), &dir)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(manifest.files.len(), 1);
    let file = &manifest.files[0];
    assert_eq!(file.name, "clicks-2026-11-22-10.gz");
    assert_eq!(file.records, expected.len() as u64);
    let path = format!("{dir}/{}", file.name);
    let bytes = storage.read(&path).await.unwrap();
    assert_eq!(
        (bytes.len() as u64, conduit_core::manifest::crc32c(&bytes)),
        (file.bytes, file.crc32c)
    );
    assert_eq!(gunzip_lines(root, &path), expected, "the hour, in order");
}

/// One closed hour of `clicks` (minutes 10:00, 10:01 and 10:59; 11:00 sealed)
/// compacted to Parquet with the schema `properties`; the clock after the hour.
async fn parquet_world(properties: &str) -> World {
    let hour = minute("2026-11-22T10:00Z");
    let world = World::new(
        &["dc1"],
        &format!(
            "compact = true\ncompact_format = \"parquet\"\nvalidate = \"json\"\n\
             schema = {{ type = \"object\", required = [\"i\"], properties = {{ {properties} }} }}\n"
        ),
        "",
        hour.start(),
    );
    for m in [0, 1, 59, 60] {
        seal_simple(&world, "dc1", hour.add_minutes(m).unwrap()).await;
    }
    world.clock.set(minute("2026-11-22T11:01Z").start());
    world
}

/// The hour's manifest, and the rows of its Parquet file and of its invalid file.
async fn parquet_hour(storage: &dyn Storage) -> (Manifest, u64, u64) {
    let hour = minute("2026-11-22T10:00Z");
    let dir = Layout::hour_dir(&topic(), hour);
    let manifest = Manifest::read(storage, &dir).await.unwrap().unwrap();
    assert_eq!(manifest.files.len(), 1);
    let file = &manifest.files[0];
    assert_eq!(file.name, "clicks-2026-11-22-10.parquet");
    let path = format!("{dir}/{}", file.name);
    let bytes = storage.read(&path).await.unwrap();
    assert_eq!(file.bytes, bytes.len() as u64);
    assert_eq!(file.crc32c, conduit_core::manifest::crc32c(&bytes));
    let meta = conduit_merger::parquet::footer_of_bytes(&bytes).unwrap();
    let (rows, noted) = conduit_merger::parquet::counts(&meta);
    assert_eq!(rows, file.records);
    let invalid_path = format!("{dir}/_invalid.clicks-2026-11-22-10.zst");
    let invalid = if storage.exists(&invalid_path).await.unwrap() {
        describe_file(storage, &invalid_path)
            .await
            .unwrap()
            .2
            .records
    } else {
        0
    };
    assert_eq!(noted, invalid);
    let names: BTreeSet<String> = storage
        .list_or_empty(&dir)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| !n.starts_with("_invalid.") && n != "_SUCCESS")
        .collect();
    assert_eq!(names, BTreeSet::from([file.name.clone()]), "no leftovers");
    (manifest, rows, invalid)
}

#[tokio::test]
async fn parquet_compaction_survives_a_crash_at_every_storage_call() {
    // Every row typed, then every row set aside (`seq` is not a string).
    for properties in [
        "i = { type = \"integer\" }, seq = { type = \"integer\" }, late = { type = \"boolean\" }",
        "i = { type = \"integer\" }, seq = { type = \"string\" }",
    ] {
        let clean = parquet_world(properties).await;
        let mut job = CompactJob::new(clean.env("dc1", None));
        assert_eq!(job.pass().await.unwrap().sealed, 1);
        let (want, rows, invalid) = parquet_hour(clean.storage("dc1").as_ref()).await;
        let minutes: u64 = {
            let storage = clean.storage("dc1");
            let mut sum = 0;
            for m in [0, 1, 59] {
                let m = minute("2026-11-22T10:00Z").add_minutes(m).unwrap();
                sum += Manifest::read(
                    storage.as_ref(),
                    &Layout::minute_dir(View::Local, &topic(), m),
                )
                .await
                .unwrap()
                .unwrap()
                .records;
            }
            sum
        };
        assert_eq!(rows + invalid, minutes, "{properties}");
        assert!(rows == 0 || invalid == 0, "{properties}");
        for n in 0.. {
            let world = parquet_world(properties).await;
            let plan = FaultPlan::new();
            plan.fail_after(n);
            let outcome = CompactJob::new(world.env_with_faults("dc1", &plan))
                .pass()
                .await;
            if plan.injected() == 0 {
                outcome.unwrap();
                assert!(n > 10, "only {n} storage calls were failed");
                break;
            }
            plan.heal();
            let mut job = CompactJob::new(world.env("dc1", None));
            for _ in 0..2 {
                job.pass()
                    .await
                    .unwrap_or_else(|e| panic!("crash at call {n}: {e}"));
            }
            let (got, got_rows, got_invalid) = parquet_hour(world.storage("dc1").as_ref()).await;
            assert_eq!(
                (got_rows, got_invalid),
                (rows, invalid),
                "crash at call {n}: the same rows"
            );
            assert_eq!(
                (got.files[0].bytes, got.files[0].crc32c),
                (want.files[0].bytes, want.files[0].crc32c),
                "crash at call {n}: the same file, byte for byte"
            );
        }
    }
}

#[tokio::test]
async fn a_gzip_topic_compacts_its_merged_gz_minutes_to_parquet() {
    // `format = "gzip"` and `compact_format = "parquet"` together: the hour is
    // built from the merged view's `.gz` files (not the local `.zst` ones), and
    // every record becomes one row, in order, with its minute and origin.
    let hour = minute("2026-11-22T10:00Z");
    let world = World::new(
        &["dc1"],
        "merge_into = \"dc1\"\nformat = \"gzip\"\ncompact = true\ncompact_format = \"parquet\"\n",
        "",
        hour.start(),
    );
    let mut expected = Vec::new();
    for m in [0, 1, 2, 59] {
        expected.extend(seal_simple(&world, "dc1", hour.add_minutes(m).unwrap()).await);
    }
    seal_simple(&world, "dc1", minute("2026-11-22T11:00Z")).await;
    world.clock.set(minute("2026-11-22T11:01Z").start());
    // Every minute of the hour (those without files sealed empty) and 11:00.
    assert_eq!(
        MergeJob::new(world.env("dc1", None))
            .pass()
            .await
            .unwrap()
            .sealed,
        61
    );
    let storage = world.storage("dc1");
    let merged = Manifest::dir(View::Merged, &topic(), hour);
    let names: Vec<String> = storage
        .list_or_empty(&merged)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != "_SUCCESS")
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.ends_with(".gz")),
        "the hour's sources are gzip files: {names:?}"
    );

    assert_eq!(
        CompactJob::new(world.env("dc1", None))
            .pass()
            .await
            .unwrap()
            .sealed,
        1
    );
    let (manifest, rows, invalid) = parquet_hour(storage.as_ref()).await;
    assert_eq!((rows, invalid), (expected.len() as u64, 0));
    assert_eq!(manifest.records, rows);

    let path = format!(
        "{}/{}",
        Layout::hour_dir(&topic(), hour),
        manifest.files[0].name
    );
    let bytes = storage.read(&path).await.unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut payloads = Vec::new();
    let mut collectors = BTreeSet::new();
    for batch in reader {
        let batch = batch.unwrap();
        let payload = batch.column_by_name("payload").expect("a payload column");
        let payload = payload
            .as_any()
            .downcast_ref::<arrow_array::BinaryArray>()
            .expect("payload is BINARY for a topic that does not validate");
        payloads.extend(
            payload
                .iter()
                .map(|p| String::from_utf8(p.unwrap().to_vec()).unwrap()),
        );
        let collector = batch
            .column_by_name("collector")
            .expect("a collector column");
        let collector = collector
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        collectors.extend(collector.iter().map(|c| c.unwrap().to_string()));
    }
    assert_eq!(payloads, expected, "the hour's rows: the records, in order");
    assert_eq!(
        collectors,
        BTreeSet::from(["c1".to_string(), "c2".to_string()]),
        "origin parsed from the .gz names"
    );
}

/// With `topic_defaults.mirrors` the mirror finds its topics by listing the
/// origin's merged view. When that listing fails, the pass must fail (counted in
/// `conduit_worker_errors_total`, named on the status page) instead of reporting
/// a completed pass that mirrored nothing; the configured topics still run, and
/// the next pass after the origin is back completes.
#[tokio::test]
async fn a_mirror_that_cannot_list_its_origin_fails_its_pass() {
    let start = minute("2026-11-22T10:00Z");
    let world = World::from_toml(
        &["dc1", "dc2"],
        "[topic_defaults]\nmerge_into = \"dc1\"\nmerge_sources = [\"dc1\"]\nmirrors = [\"dc2\"]\n",
        start.start(),
    );
    let mut merge = MergeJob::new(world.env("dc1", None));
    seal_simple(&world, "dc1", start).await;
    world.clock.set(start.end() + TimeDelta::seconds(3));
    assert_eq!(merge.pass().await.unwrap().sealed, 1);
    world.clock.set(start.end() + TimeDelta::seconds(4));

    let mut env = world.env("dc2", None);
    let cut = FaultPlan::new();
    let dc1 = env.clusters.get_mut(&node("dc1")).unwrap();
    dc1.storage = Arc::new(FaultStorage::new(dc1.storage.clone(), cut.clone()));
    let mut mirror = MirrorJob::new(env);
    cut.fail_all();
    let err = mirror
        .pass()
        .await
        .expect_err("a pass that could not list its origin is not complete");
    let text = err.to_string();
    assert!(
        text.contains("mirror origin dc1 could not be listed"),
        "the error names the origin: {text}"
    );
    assert!(
        world
            .storage("dc2")
            .list(&Layout::topic_dir(View::Merged, &topic()))
            .await
            .map(|l| l.is_empty())
            .unwrap_or(true),
        "nothing mirrored while the origin is cut"
    );

    cut.heal();
    let report = mirror.pass().await.unwrap();
    assert_eq!(report.sealed, 1, "the next pass mirrors the minute");
    check_sealed(world.storage("dc2").as_ref(), View::Merged, start).await;
}
