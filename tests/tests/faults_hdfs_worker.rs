//! HDFS daemon faults under a real `conduit worker` and a real `conduit
//! collector` (issue 16: "a NameNode restart or a DataNode loss during each step
//! (seal, merge, roll) leaves nothing half-done").
//!
//! One collector (with a spool) takes a steady Scribe load that records every
//! call's fate; one worker seals its minutes into the local view and merges them
//! into the merged view of the same cluster (`merge_into = "dc1"`). Two faults
//! follow, each at a minute roll of the real clock:
//!
//! 1. the NameNode is stopped and started again (a restart: every RPC fails until
//!    it is back out of safe mode),
//! 2. the DataNode is stopped for [`DATANODE_DOWN`] (the NameNode answers, every
//!    block write and read fails).
//!
//! Each starts a few hundred ms before a minute ends, so the collector rolls the
//! minute (closes its files, publishes its watermark) during the outage, and
//! right after the worker began sealing a backlog of closed files (three minutes,
//! planted aside and moved into `data/` with one rename 1.5 s before the roll), so
//! the worker is mid-seal and mid-merge when storage goes: the test waits for the
//! first backlog minute to be sealed (or 300 ms before the roll at the latest).
//! After each fault the test waits for storage to be healthy, the spool replayed
//! and the rolled minute sealed in both views. At the end it stops the client,
//! waits for the last minute to be sealed and counts: every acknowledged event
//! exactly once in the sealed local view and exactly once in the merged view (an
//! unacknowledged one at most once), every planted record exactly once in both,
//! every sealed directory holding exactly its manifest's files, no `_tmp.`
//! leftover, `conduit verify` clean, and no worker log line that claims another
//! worker took its lease (there is only one).
//!
//! Runs on the HDFS of `CONDUIT_TEST_HDFS` and stops its daemons through
//! `CONDUIT_HDFS_SCRIPT` (see `conduit_testkit::hdfs`); skipped without it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use conduit_core::layout::Layout;
use conduit_core::manifest::Manifest;
use conduit_core::storage::RenameMode;
use conduit_core::{Minute, SharedStorage, Topic, View};
use conduit_testkit::hdfs::{self, Outage};
use conduit_testkit::load::{Load, Seen};
use conduit_testkit::process::{assert_verify_clean, terminate, CollectorProcess, WorkerProcess};
use conduit_testkit::wait::until_blocking;
use conduit_testkit::worker::{
    check_local_view, plant, sealed_counts, sealed_minutes, tmp_leftovers, wait_sealed,
};

const CLUSTER: &str = "dc1";
const COLLECTOR: &str = "c1";
/// The topic of the client's load.
const TOPIC: &str = "live";
/// Events per call.
const PER_CALL: u64 = 20;
/// How long the DataNode stays down.
const DATANODE_DOWN: Duration = Duration::from_secs(15);
/// Closed files planted per backlog minute (three minutes per fault).
const BACKLOG_FILES: u32 = 8;
/// How long a minute may take to be sealed once it can be.
const SEAL_TIMEOUT: Duration = Duration::from_secs(90);
/// How long before the minute's end the outage starts at the latest.
const BEFORE_ROLL: chrono::Duration = chrono::Duration::milliseconds(300);

/// One fault: its name and what starts it (the returned [`Outage`] ends it).
struct Fault {
    name: &'static str,
    start: fn() -> Outage,
    /// How long the daemon stays down before it is started again.
    down: Duration,
}

const FAULTS: &[Fault] = &[
    Fault {
        name: "namenode_restart",
        start: Outage::namenode,
        down: Duration::ZERO,
    },
    Fault {
        name: "datanode_down",
        start: Outage::datanode,
        down: DATANODE_DOWN,
    },
];

/// What one fault measured.
struct Measured {
    name: &'static str,
    /// Milliseconds from the outage's start to the minute's end.
    before_roll_ms: i64,
    /// What the worker had done with the backlog when the outage began.
    backlog_at_start: String,
    /// From the outage's start to its end (the daemon up again).
    outage: Duration,
    /// From the outage's end to the collector's storage healthy, spool replayed.
    recovered: Duration,
    /// From the outage's end to the rolled minute sealed in both views.
    sealed: Duration,
}

/// Waits (real clock) until `at`.
fn wait_until(at: DateTime<Utc>, what: &str) {
    let timeout = (at - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(5);
    until_blocking(what, timeout, || (Utc::now() >= at).then_some(())).unwrap_or_else(|e| {
        panic!("{e}");
    });
}

fn success_path(view: View, topic: &str, m: Minute) -> String {
    format!(
        "{}/{}",
        Layout::minute_dir(view, &Topic::new(topic).unwrap(), m),
        Layout::SUCCESS_MARKER
    )
}

/// How many of `minutes` are sealed in `view` of `topic`.
async fn sealed_of(storage: &SharedStorage, view: View, topic: &str, minutes: &[Minute]) -> usize {
    let mut n = 0;
    for &m in minutes {
        if storage
            .exists(&success_path(view, topic, m))
            .await
            .unwrap_or(false)
        {
            n += 1;
        }
    }
    n
}

/// Asserts that every sealed minute directory of `view` of `topic` holds exactly
/// the data files its manifest lists.
async fn check_sealed_dirs(storage: &SharedStorage, view: View, topic: &str, sealed: &[Minute]) {
    let t = Topic::new(topic).unwrap();
    for &m in sealed {
        let dir = Layout::minute_dir(view, &t, m);
        let manifest = Manifest::read(&**storage, &dir).await.unwrap().unwrap();
        let listed: BTreeSet<String> = manifest.files.iter().map(|f| f.name.clone()).collect();
        let present: BTreeSet<String> = storage
            .list(&dir)
            .await
            .unwrap()
            .into_iter()
            .filter(|f| !Layout::is_hidden(&f.name))
            .map(|f| f.name)
            .collect();
        assert_eq!(listed, present, "{dir} holds exactly its manifest's files");
    }
}

/// Payload counts of every sealed minute of `view` of `topic`, after checking
/// each sealed directory against its manifest.
async fn view_counts(storage: &SharedStorage, view: View, topic: &str) -> HashMap<Bytes, usize> {
    let sealed = sealed_minutes(&**storage, view, topic).await;
    check_sealed_dirs(storage, view, topic, &sealed).await;
    sealed_counts(&**storage, view, topic, &sealed).await
}

fn exactly_once(counts: &HashMap<Bytes, usize>, planted: &[Bytes], what: &str) {
    for p in planted {
        assert_eq!(counts.get(p), Some(&1), "{what}: {p:?}");
    }
    assert_eq!(counts.values().sum::<usize>(), planted.len(), "{what}");
}

#[test]
fn hdfs_namenode_restart_and_datanode_loss_while_a_worker_seals_and_merges() {
    let test = "faults_hdfs_worker";
    let Some(uri) = hdfs::fresh_root(test) else {
        return;
    };
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:6.1} s] {what}", t0.elapsed().as_secs_f64());
    let rt = conduit_testkit::runtime();
    let storage: SharedStorage = rt.block_on(hdfs::open(&uri));
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let spool = dir.path().join("spool");
    let cfg = dir.path().join("conduit.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clusters.{CLUSTER}]\nroot = \"{uri}\"\n\n\
             [topic_defaults]\nmerge_into = \"{CLUSTER}\"\nmerge_sources = [\"{CLUSTER}\"]\n\n\
             [worker]\ninterval_ms = 200\nlease_secs = 3\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let worker_args = ["--config", cfg, "--cluster", CLUSTER];

    let mut collector = CollectorProcess::start(
        &uri,
        COLLECTOR,
        &["--cluster", CLUSTER, "--spool-dir", spool.to_str().unwrap()],
        &logs,
    )
    .expect("collector starts");
    let mut worker = WorkerProcess::start(&worker_args, &logs).expect("worker starts");
    let load = Load::start(
        &rt,
        &collector.thrift_addr,
        TOPIC,
        "ev",
        PER_CALL,
        Duration::ZERO,
    );
    let load_started = Instant::now();
    load.wait_acks(20, "acknowledgements before the faults");

    let mut planted_all: Vec<(String, Vec<Bytes>)> = Vec::new();
    let mut measured = Vec::new();
    for (k, fault) in FAULTS.iter().enumerate() {
        let backlog = format!("backlog{k}");
        let staging: SharedStorage = rt.block_on(hdfs::open(&format!("{uri}/staging/{backlog}")));
        // The roll the outage spans: far enough ahead to plant the backlog.
        let roll = Minute::from_datetime(Utc::now() + chrono::Duration::seconds(8))
            .unwrap()
            .next()
            .unwrap();
        let roll_at = roll.start();
        let minutes: Vec<Minute> = (2..=4)
            .rev()
            .map(|d| roll.add_minutes(-d).unwrap())
            .collect();
        // Planted aside, then moved into data/ with one rename, so the worker
        // finds the whole backlog at once, shortly before the roll.
        let staged = format!("staging/{backlog}");
        let planted = rt.block_on(plant(
            &*staging,
            &backlog,
            COLLECTOR,
            &minutes,
            BACKLOG_FILES,
        ));
        wait_until(
            roll_at - chrono::Duration::milliseconds(1500),
            "the time to release the backlog",
        );
        rt.block_on(storage.rename(
            &format!("{staged}/data/{backlog}"),
            &format!("data/{backlog}"),
            RenameMode::NoOverwrite,
        ))
        .unwrap();
        // The collector's watermark already covers the backlog's minutes: the
        // worker starts sealing them within a pass.
        let first = minutes[0];
        until_blocking(
            "the worker sealing the backlog, or the roll near",
            Duration::from_secs(10),
            || {
                let sealed = rt
                    .block_on(storage.exists(&success_path(View::Local, &backlog, first)))
                    .unwrap_or(false);
                (sealed || Utc::now() >= roll_at - BEFORE_ROLL).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", worker.log()));
        let backlog_at_start = format!(
            "{} of {} backlog minutes sealed locally, {} merged",
            rt.block_on(sealed_of(&storage, View::Local, &backlog, &minutes)),
            minutes.len(),
            rt.block_on(sealed_of(&storage, View::Merged, &backlog, &minutes)),
        );
        phase(&format!("{}: begins ({backlog_at_start})", fault.name));
        let began_at = Utc::now();
        let outage = (fault.start)();
        let began = Instant::now();
        let before_roll_ms = (roll_at - began_at).num_milliseconds();
        assert!(
            before_roll_ms > 0,
            "{}: the outage began {} ms after the roll it must span",
            fault.name,
            -before_roll_ms
        );
        until_blocking(
            "the outage to last its time",
            fault.down + Duration::from_secs(5),
            || (began.elapsed() >= fault.down).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        outage.end();
        let ended = Instant::now();
        assert!(
            Utc::now() > roll_at,
            "{}: the outage spans the roll",
            fault.name
        );
        until_blocking(
            "storage healthy and the spool replayed",
            Duration::from_secs(120),
            || (collector.health() == Some((true, 0))).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}; collector log:\n{}", collector.log()));
        let recovered = ended.elapsed();
        phase(&format!("{}: ended; collector recovered", fault.name));
        let rolled = roll.add_minutes(-1).unwrap();
        for (view, topic, m) in [
            (View::Local, TOPIC, rolled),
            (View::Merged, TOPIC, rolled),
            (View::Local, backlog.as_str(), minutes[2]),
            (View::Merged, backlog.as_str(), minutes[2]),
        ] {
            rt.block_on(wait_sealed(
                &storage,
                view,
                topic,
                m,
                &format!(
                    "{}: {topic} {m} sealed in {view:?} after the outage",
                    fault.name
                ),
                SEAL_TIMEOUT,
            ));
        }
        phase(&format!(
            "{}: rolled minute and backlog sealed in both views",
            fault.name
        ));
        measured.push(Measured {
            name: fault.name,
            before_roll_ms,
            backlog_at_start,
            outage: ended - began,
            recovered,
            sealed: ended.elapsed(),
        });
        planted_all.push((backlog, planted));
        load.wait_acks(20, "acknowledgements after the outage");
    }

    let seen: Seen = load.stop(&rt);
    phase("client stopped");
    let load_secs = load_started.elapsed().as_secs_f64();
    // A stopped collector holds no minute back; its last minute is sealed once
    // it has ended.
    assert!(terminate(&mut collector.child, "conduit collector")
        .unwrap()
        .success());
    let last = Minute::from_datetime(Utc::now()).unwrap();
    for view in [View::Local, View::Merged] {
        rt.block_on(wait_sealed(
            &storage,
            view,
            TOPIC,
            last,
            &format!("the last minute {last} sealed in {view:?}"),
            SEAL_TIMEOUT + Duration::from_secs(60),
        ));
    }
    phase("last minute sealed");
    assert!(terminate(&mut worker.child, "conduit worker")
        .unwrap()
        .success());

    // The client's events: exactly once in each view.
    let topic = Topic::new(TOPIC).unwrap();
    let local = rt.block_on(check_local_view(&*storage, &topic));
    assert!(local.quarantined.is_empty(), "nothing set aside: {local:?}");
    assert!(local.waiting.is_empty(), "every file moved: {local:?}");
    let late: usize = local
        .sealed
        .values()
        .map(|m| m.files.iter().filter(|f| f.late).count())
        .sum();
    let local_counts = rt.block_on(view_counts(&storage, View::Local, TOPIC));
    let (acked, unacked_local) = seen.check_exactly_once(&local_counts);
    let merged_counts = rt.block_on(view_counts(&storage, View::Merged, TOPIC));
    let (_, unacked_merged) = seen.check_exactly_once(&merged_counts);
    assert_eq!(
        local_counts, merged_counts,
        "the merged view holds what the local view holds"
    );
    // Each backlog: every planted record exactly once in each view.
    for (backlog, planted) in &planted_all {
        let t = Topic::new(backlog).unwrap();
        let view = rt.block_on(check_local_view(&*storage, &t));
        assert!(view.quarantined.is_empty(), "{backlog}: {view:?}");
        assert!(view.waiting.is_empty(), "{backlog}: {view:?}");
        for v in [View::Local, View::Merged] {
            let counts = rt.block_on(view_counts(&storage, v, backlog));
            exactly_once(&counts, planted, &format!("{backlog} {v:?}"));
        }
    }
    let mut leftovers = Vec::new();
    for top in ["data", "streams_local", "streams", "system"] {
        leftovers.extend(rt.block_on(tmp_leftovers(&*storage, top)));
    }
    assert!(leftovers.is_empty(), "_tmp. leftovers: {leftovers:?}");
    let mut topics = vec![TOPIC.to_owned()];
    topics.extend(planted_all.iter().map(|(t, _)| t.clone()));
    for t in &topics {
        assert_verify_clean(
            &[
                "--config",
                cfg,
                "--cluster",
                CLUSTER,
                "--topic",
                t,
                "--view",
                "local,merged",
            ],
            t,
        );
    }

    phase("counted and verified");
    // The worker's log: what it said went wrong, and no phantom takeover
    // (there is no other worker).
    let log = worker.log();
    let mut said: Vec<String> = Vec::new();
    for line in log.lines() {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let level = json["level"].as_str().unwrap_or_default();
        if level == "WARN" || level == "ERROR" {
            let message = json["fields"]["message"].as_str().unwrap_or_default();
            let entry = format!("{level} {message}");
            if !said.contains(&entry) {
                said.push(entry);
            }
        }
    }
    let lies: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("another worker") || l.contains("held by"))
        .collect();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();

    for m in &measured {
        println!(
            "FAULT {test} {}: began {} ms before the roll ({}); down {:.1} s; collector healthy, spool replayed {:.1} s after; rolled minute sealed locally and merged {:.1} s after",
            m.name,
            m.before_roll_ms,
            m.backlog_at_start,
            m.outage.as_secs_f64(),
            m.recovered.as_secs_f64(),
            m.sealed.as_secs_f64(),
        );
    }
    println!(
        "FAULT {test}: {load_secs:.0} s of load, calls {} acked events {acked} refused calls {} unacked stored {unacked_local} (merged {unacked_merged}) lost 0 duplicated 0 (local and merged); longest ack gap {:.2} s (at {:.1} s); {} sealed minutes, {late} late files; backlogs {} records sealed and merged once; worker warnings: {said:?}",
        seen.calls.len(),
        seen.refused,
        seen.longest_gap.as_secs_f64(),
        seen.longest_gap_at.as_secs_f64(),
        local.sealed.len(),
        planted_all.iter().map(|(_, p)| p.len()).sum::<usize>(),
    );
    assert!(
        lies.is_empty(),
        "the only worker claims another took its lease:\n{}",
        lies.join("\n")
    );
    assert!(
        errors.is_empty(),
        "worker errors:\n{}\n(the full log:\n{log})",
        errors.join("\n")
    );
}
