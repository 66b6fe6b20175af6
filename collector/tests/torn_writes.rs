//! The collector crashes in the middle of every write of a scripted run, on
//! purpose: a real engine on local disk through the fault-injecting storage, a
//! test clock that crosses a minute boundary (so the old minute's files get the
//! dedup snapshot, their close index and trailer), and a crash point
//! (`FaultPlan::crash_at`) on the n-th write, for every n until a run has no
//! n-th write. At the crash half the write's bytes reach the file and are
//! synced, then nothing more of that engine reaches storage (it is left running
//! against a storage that refuses everything, as a dead process would be). A
//! fresh engine starts on the same root (recovery), the client retries what was
//! not acknowledged and finishes the script, and the real local seal seals it.
//!
//! Asserted at every n: every file in `data/` is closed after the restart and
//! the graceful stop, nothing is quarantined (the ledger never finds an
//! acknowledged byte missing), no `_tmp.` file is left, every sealed minute
//! holds exactly its manifest's files and a second seal pass finds nothing to
//! do; every acknowledged `LogBatch` event is sealed exactly once (the
//! collector's dedup table or the seal's dedup drops a retried copy); every
//! acknowledged plain `Log` event is sealed at least once, and at most twice:
//! a plain call whose frame was synced but not answered is stored again when
//! the client retries it (Scribe's at-least-once; only batch ids make a retry
//! idempotent).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conduit_core::heartbeat::Heartbeat;
use conduit_core::layout::Layout;
use conduit_core::scribe::ResultCode;
use conduit_core::storage::{CrashPoint, FaultPlan, FaultStorage, Op};
use conduit_core::{Config, SharedStorage, TestClock, Topic, View};
use conduit_merger::{Job, LocalJob};
use conduit_testkit::clock::{clock_at, set};
use conduit_testkit::collector::{self, stored_files};
use conduit_testkit::scribe::{events, Client};
use conduit_testkit::worker::{check_local_view, env, wait_watermark};
use conduit_testkit::{local_storage, minute, node, wait};

/// One step of the script.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `LogBatch` from publisher `pubA` with this sequence: 20 events of `batches`.
    Batch(i64),
    /// Plain `Log` of 20 events of `plain`, tagged with this number.
    Plain(u32),
    /// The clock moves to this minute and second of hour 10; the old minute's
    /// files are closed in the background.
    Clock(u32, u32),
}

const SCRIPT: &[Step] = &[
    Step::Batch(1),
    Step::Plain(1),
    Step::Batch(2),
    Step::Plain(2),
    Step::Clock(6, 0),
    Step::Batch(3),
    Step::Plain(3),
    Step::Batch(4),
    Step::Plain(4),
    Step::Clock(7, 0),
];

const EVENTS_PER_CALL: usize = 20;
/// Bound on the sweep (a run of the script makes far fewer writes).
const MAX_WRITES: u64 = 200;
const TIMEOUT: Duration = Duration::from_secs(30);

fn entries(step: Step) -> Vec<(&'static str, String)> {
    match step {
        Step::Batch(seq) => events("batches", &format!("b{seq}"), EVENTS_PER_CALL),
        Step::Plain(k) => events("plain", &format!("p{k}"), EVENTS_PER_CALL),
        Step::Clock(..) => Vec::new(),
    }
}

async fn send(client: &mut Client, step: Step) -> Option<ResultCode> {
    let entries = entries(step);
    match step {
        Step::Batch(seq) => client.try_log_batch("pubA", seq, &entries, TIMEOUT).await,
        Step::Plain(_) => client.try_log(&entries, TIMEOUT).await,
        Step::Clock(..) => unreachable!("not a call"),
    }
}

/// What one run of the script with a crash at the n-th write saw.
#[derive(Debug)]
struct Run {
    /// Where the crash landed (operation and path), if the run had an n-th write.
    crashed_at: Option<(Op, String)>,
    /// Acknowledged payloads by topic.
    acked: HashMap<&'static str, Vec<Bytes>>,
}

async fn start(storage: SharedStorage, clock: &TestClock) -> conduit_collector::Collector {
    // Heartbeats only when the watermark moves (no timer writes in the sweep).
    collector::on(storage)
        .clock(clock.shared())
        .heartbeat_ms(3_600_000)
        .start()
        .await
}

/// Runs the script against a collector on `root` crashing at the `n`-th write,
/// then a fresh collector that finishes it and stops gracefully.
async fn run(real: &SharedStorage, n: u64) -> Run {
    let clock = clock_at(10, 5, 30);
    let plan = FaultPlan::new();
    plan.crash_at(
        CrashPoint {
            op: Op::Write,
            nth: n,
            path_contains: String::new(),
        },
        None,
    );
    let faulty: SharedStorage = Arc::new(FaultStorage::new(real.clone(), plan.clone()));
    let first = start(faulty, &clock).await;
    let mut client = Client::connect(first.thrift_addr()).await;
    let mut second = None;
    let mut acked: HashMap<&'static str, Vec<Bytes>> = HashMap::new();
    for &step in SCRIPT {
        if plan.crashed().is_some() && second.is_none() {
            let fresh = start(real.clone(), &clock).await;
            client = Client::connect(fresh.thrift_addr()).await;
            second = Some(fresh);
        }
        match step {
            Step::Clock(m, s) => {
                set(&clock, 10, m, s);
                let done = minute(&format!("2026-11-22T10:{:02}", m - 1));
                let current = second.as_ref().unwrap_or(&first);
                wait::until("the old minute closed, or the crash", TIMEOUT, || {
                    let closed = current.status().watermark >= Some(done);
                    let crashed = second.is_none() && plan.crashed().is_some();
                    async move { closed || crashed }
                })
                .await;
            }
            Step::Batch(_) | Step::Plain(_) => {
                let mut code = send(&mut client, step).await;
                if code != Some(ResultCode::Ok) {
                    assert!(
                        second.is_none() && plan.crashed().is_some(),
                        "{step:?} refused ({code:?}) without a crash"
                    );
                    let fresh = start(real.clone(), &clock).await;
                    client = Client::connect(fresh.thrift_addr()).await;
                    second = Some(fresh);
                    // The client retries what was not acknowledged.
                    code = send(&mut client, step).await;
                }
                assert_eq!(code, Some(ResultCode::Ok), "{step:?} after the restart");
                let topic = if matches!(step, Step::Batch(_)) {
                    "batches"
                } else {
                    "plain"
                };
                acked
                    .entry(topic)
                    .or_default()
                    .extend(entries(step).into_iter().map(|(_, p)| Bytes::from(p)));
            }
        }
    }
    // The crash may come late (the last roll, its heartbeat, the graceful stop's
    // closes): whoever is last closes 10:07 and stops; a crash meanwhile means a
    // fresh collector recovers and stops.
    set(&clock, 10, 8, 0);
    let last_is_first = second.is_none();
    let last = second.unwrap_or(first);
    wait::until(
        "the watermark 10:07 published, or the crash",
        TIMEOUT,
        || {
            let real = real.clone();
            let crashed = plan.crashed().is_some();
            async move { crashed || published(&real, "2026-11-22T10:07").await }
        },
    )
    .await;
    let stopped = last.stop().await;
    if plan.crashed().is_some() && last_is_first {
        // The crashed process is restarted, whatever it was doing.
        let fresh = start(real.clone(), &clock).await;
        wait_watermark(real, "dc1", "c1", minute("2026-11-22T10:07")).await;
        fresh.stop().await.unwrap();
    } else if plan.crashed().is_none() {
        stopped.unwrap();
    }
    Run {
        crashed_at: plan.crashed(),
        acked,
    }
}

/// Whether collector c1's heartbeat publishes a watermark at or past `m`.
async fn published(storage: &SharedStorage, m: &str) -> bool {
    let (beats, _) = Heartbeat::read_all(&**storage, &node("dc1")).await.unwrap();
    beats
        .iter()
        .any(|b| b.collector.as_str() == "c1" && b.watermark >= Some(minute(m)))
}

/// Every `_tmp.` file under `dir`, recursively.
async fn tmp_files(storage: &SharedStorage, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in storage.list_or_empty(&d).await.unwrap() {
            if e.is_dir {
                todo.push(e.path);
            } else if e.name.contains("_tmp.") {
                out.push(e.path);
            }
        }
    }
    out
}

/// Payload -> times sealed in the local view of `topic`.
async fn sealed_counts(storage: &SharedStorage, topic: &str) -> (HashMap<Bytes, usize>, u64) {
    let topic = Topic::new(topic).unwrap();
    let view = check_local_view(&**storage, &topic).await;
    assert!(view.quarantined.is_empty(), "{topic:?}: {view:?}");
    assert!(view.waiting.is_empty(), "{topic:?} all sealed: {view:?}");
    let mut counts = HashMap::new();
    let mut dropped = 0;
    for (m, manifest) in &view.sealed {
        dropped += manifest.duplicates_dropped;
        for f in &manifest.files {
            let path = format!("{}/{}", Layout::minute_dir(View::Local, &topic, *m), f.name);
            let bytes = storage.read(&path).await.unwrap();
            let decoded =
                conduit_core::format::decode_file(&path, &bytes, conduit_core::Encoding::Lines)
                    .unwrap();
            for p in decoded.payloads {
                *counts.entry(p).or_insert(0) += 1;
            }
        }
    }
    (counts, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_any_collector_write_loses_no_acknowledged_event() {
    let mut table = BTreeMap::new();
    let mut plain_duplicated = 0u64;
    let mut batch_copies_dropped = 0u64;
    let mut n = 1;
    loop {
        assert!(n <= MAX_WRITES, "the script should make fewer writes");
        let dir = tempfile::tempdir().unwrap();
        let real = local_storage(dir.path());
        eprintln!("crash at write {n}");
        let outcome = run(&real, n).await;
        let Some((op, path)) = outcome.crashed_at.clone() else {
            // No n-th write: the sweep covered every write of the script.
            break;
        };
        assert_eq!(op, Op::Write);

        // The collector's own invariants after recovery and a graceful stop.
        for topic in ["batches", "plain"] {
            let files = stored_files(&*real, topic).await;
            assert!(
                files.iter().all(|f| f.is_closed()),
                "n={n} ({path}): every {topic} file closed: {files:?}"
            );
        }
        assert!(
            real.list_or_empty("quarantine").await.unwrap().is_empty(),
            "n={n} ({path}): nothing quarantined"
        );
        assert_eq!(
            tmp_files(&real, "data").await,
            Vec::<String>::new(),
            "n={n}"
        );

        // The real local seal, then its view decoded.
        let clock = clock_at(10, 9, 30);
        let mut job = LocalJob::new(env(real.clone(), clock.shared(), Config::default()));
        let report = job.pass().await.unwrap();
        assert!(report.sealed >= 2, "n={n}: {report:?}");
        let again = job.pass().await.unwrap();
        assert!(
            (again.sealed, again.files, again.deleted) == (0, 0, 0),
            "n={n} ({path}): each minute sealed once; first {report:?}, then {again:?}"
        );
        assert_eq!(tmp_files(&real, "").await, Vec::<String>::new(), "n={n}");

        let (batches, dropped) = sealed_counts(&real, "batches").await;
        batch_copies_dropped += dropped;
        for p in &outcome.acked["batches"] {
            assert_eq!(
                batches.get(p),
                Some(&1),
                "n={n} ({path}): batch event {p:?}"
            );
        }
        assert_eq!(
            batches.values().sum::<usize>(),
            outcome.acked["batches"].len(),
            "n={n}: nothing but the acknowledged batches"
        );
        let (plain, _) = sealed_counts(&real, "plain").await;
        for p in &outcome.acked["plain"] {
            let c = plain.get(p).copied().unwrap_or(0);
            assert!(
                (1..=2).contains(&c),
                "n={n} ({path}): plain event {p:?} sealed {c} times"
            );
            plain_duplicated += (c - 1) as u64;
        }
        table.insert(n, path);
        n += 1;
    }
    eprintln!("crash points (write n: file):");
    for (n, what) in &table {
        eprintln!("  {n}: {what}");
    }
    eprintln!(
        "{} runs; plain Log events stored twice (synced, crash before the answer, retried): {plain_duplicated}; batch copies dropped by the seal: {batch_copies_dropped}",
        table.len()
    );
    assert!(table.len() >= 10, "the script writes at least 10 times");
}
