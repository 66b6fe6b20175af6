//! The merge job with its destination on the real HDFS of `scripts/hdfs.sh`
//! (`CONDUIT_TEST_HDFS`), sources on local disk, then a mirror from HDFS back to
//! local disk: byte-identical files and manifests, exactly once, also after a pass
//! that fails at a storage call on HDFS. Prints `SKIPPED` without an HDFS.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::TimeDelta;
use conduit_core::format::read_file;
use conduit_core::layout::Layout;
use conduit_core::manifest::describe_file;
use conduit_core::storage::{FaultPlan, FaultStorage};
use conduit_core::{
    Clock, Config, CreateMode, Encoding, FrameEncoder, Manifest, ManifestFile, Minute,
    SharedStorage, Storage, TestClock, Topic, Trailer, View,
};
use conduit_merger::{Cluster, Job, JobEnv, MergeJob, MirrorJob, NoFence};
use conduit_testkit::{hdfs, local_storage, minute, node};

fn topic() -> Topic {
    Topic::new("clicks").unwrap()
}

/// Writes and seals one local minute of `cluster` with two files; returns the records.
async fn seal_local(
    storage: &dyn Storage,
    cluster: &str,
    m: Minute,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let dir = Layout::minute_dir(View::Local, &topic(), m);
    let mut encoder = FrameEncoder::new(1).unwrap();
    let mut entries = Vec::new();
    let mut all = Vec::new();
    for (collector, records) in [("c1", 40usize), ("c2", 3)] {
        let name = Layout::local_file_name(&node(cluster), &node(collector), m, 0, &topic());
        let records: Vec<String> = (0..records)
            .map(|i| format!("{cluster} {collector} {m} {i}"))
            .collect();
        let mut content = Vec::new();
        for r in &records {
            Encoding::Lines
                .encode_into(r.as_bytes(), &mut content)
                .unwrap();
        }
        let mut bytes = encoder.frame(&content).unwrap().to_vec();
        bytes.extend_from_slice(
            &Trailer {
                encoding: Encoding::Lines,
                records: records.len() as u64,
                record_bytes: content.len() as u64,
            }
            .encode(),
        );
        let path = format!("{dir}/{name}");
        let mut w = storage.create(&path, CreateMode::Exclusive).await.unwrap();
        w.write(Bytes::from(bytes)).await.unwrap();
        w.close().await.unwrap();
        let (len, crc32c, _) = describe_file(storage, &path).await.unwrap();
        entries.push(ManifestFile {
            name,
            bytes: len,
            records: records.len() as u64,
            crc32c,
            cluster: node(cluster),
            collector: Some(node(collector)),
            minute: m,
            late: false,
        });
        all.extend(records);
    }
    Manifest::new(
        View::Local,
        topic(),
        m,
        vec![node(cluster)],
        vec![],
        now,
        "t".into(),
        entries,
    )
    .seal(storage)
    .await
    .unwrap();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_into_hdfs_and_mirror_back_to_local_disk() {
    let Some(root) = hdfs::root("merger_merge_into_hdfs_and_mirror_back").await else {
        return;
    };
    let (hdfs_root, hdfs) = (root.uri, root.storage);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let roots = [
        ("dc1", dirs[0].path().display().to_string()),
        ("dc2", dirs[1].path().display().to_string()),
        ("dc3", hdfs_root.clone()),
        ("dc4", dirs[2].path().display().to_string()),
    ];
    let mut toml = String::new();
    let mut clusters = BTreeMap::new();
    for (name, root) in &roots {
        toml.push_str(&format!("[clusters.{name}]\nroot = {root:?}\n"));
        let storage: SharedStorage = if *name == "dc3" {
            hdfs.clone()
        } else {
            local_storage(root)
        };
        clusters.insert(
            node(name),
            Cluster {
                name: node(name),
                storage,
            },
        );
    }
    toml.push_str("[topics.clicks]\nmerge_into = \"dc3\"\nmerge_sources = [\"dc1\", \"dc2\"]\nmirrors = [\"dc4\"]\n");
    let config = Arc::new(Config::parse("test", &toml).unwrap());
    let start = minute("2026-11-22T10:00Z");
    let clock = TestClock::at(start.start());
    let env = |this: &str, plan: Option<&FaultPlan>| {
        let mut clusters = clusters.clone();
        if let Some(plan) = plan {
            let c = clusters.get_mut(&node(this)).unwrap();
            c.storage = Arc::new(FaultStorage::new(c.storage.clone(), plan.clone()));
        }
        JobEnv {
            this: clusters[&node(this)].clone(),
            clusters,
            config: config.clone(),
            clock: clock.shared(),
            fence: Arc::new(NoFence),
            worker_id: format!("{this}/test"),
        }
    };

    let mut expected = BTreeSet::new();
    for i in 0..4 {
        let m = start.add_minutes(i).unwrap();
        for dc in ["dc1", "dc2"] {
            let storage = clusters[&node(dc)].storage.clone();
            expected.extend(seal_local(storage.as_ref(), dc, m, clock.now()).await);
        }
    }
    clock.set(start.add_minutes(4).unwrap().start() + TimeDelta::seconds(3));

    // A pass that fails at the 12th HDFS call, then a fresh worker.
    let plan = FaultPlan::new();
    plan.fail_after(12);
    let failed = MergeJob::new(env("dc3", Some(&plan))).pass().await;
    assert!(failed.is_err(), "the injected HDFS fault fails the pass");
    let wall = std::time::Instant::now();
    let report = MergeJob::new(env("dc3", None)).pass().await.unwrap();
    println!("merge into HDFS: {report:?} in {:?}", wall.elapsed());
    assert!(report.sealed >= 3, "{report:?}");

    let mut seen = BTreeSet::new();
    for i in 0..4 {
        let m = start.add_minutes(i).unwrap();
        let dir = Layout::minute_dir(View::Merged, &topic(), m);
        let manifest = Manifest::read(hdfs.as_ref(), &dir)
            .await
            .unwrap()
            .expect("sealed on HDFS");
        assert_eq!(manifest.clusters, vec![node("dc1"), node("dc2")]);
        let names: Vec<String> = hdfs
            .list(&dir)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "_SUCCESS")
            .collect();
        assert_eq!(
            names,
            manifest
                .files
                .iter()
                .map(|f| f.name.clone())
                .collect::<Vec<_>>(),
            "no leftovers on HDFS"
        );
        for f in &manifest.files {
            let source = clusters[&f.cluster].storage.clone();
            let local = Layout::minute_dir(View::Local, &topic(), m);
            let path = format!("{dir}/{}", f.name);
            assert_eq!(
                source.read(&format!("{local}/{}", f.name)).await.unwrap(),
                hdfs.read(&path).await.unwrap(),
                "{path} is byte-identical on HDFS"
            );
            for r in read_file(hdfs.as_ref(), &path, Encoding::Lines)
                .await
                .unwrap()
                .payloads
            {
                assert!(
                    seen.insert(String::from_utf8(r.to_vec()).unwrap()),
                    "a record twice"
                );
            }
        }
    }
    assert_eq!(seen, expected, "every record exactly once on HDFS");

    // Mirror HDFS -> local disk (dc4): the same bytes, the same manifests.
    let report = MirrorJob::new(env("dc4", None)).pass().await.unwrap();
    assert_eq!(report.sealed, 4);
    let mirror = clusters[&node("dc4")].storage.clone();
    for i in 0..4 {
        let dir = Layout::minute_dir(View::Merged, &topic(), start.add_minutes(i).unwrap());
        let marker = Layout::success_marker(&dir);
        assert_eq!(
            hdfs.read(&marker).await.unwrap(),
            mirror.read(&marker).await.unwrap()
        );
        let manifest = Manifest::read(mirror.as_ref(), &dir)
            .await
            .unwrap()
            .unwrap();
        for f in &manifest.files {
            let path = format!("{dir}/{}", f.name);
            assert_eq!(
                hdfs.read(&path).await.unwrap(),
                mirror.read(&path).await.unwrap()
            );
        }
    }
    hdfs.delete("", true).await.ok();
}
