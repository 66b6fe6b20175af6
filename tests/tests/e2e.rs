//! The whole bus on real parts: two datacenters, each with a `conduit collector`
//! and a `conduit worker` process; dc1 builds the merged view of both and dc2
//! mirrors it. Publishers (the library) send uniquely numbered events into both
//! datacenters while a collector and a worker are killed with SIGKILL and
//! restarted. Then `conduit audit` and `conduit verify` must find every
//! acknowledged event exactly once in the local, merged and mirror views, and the
//! merged and mirror files, decoded, must hold each event id exactly once.
//!
//! Meanwhile two PinTail consumer groups (the `conduit-pintail` library) of two
//! dynamic members each consume the topic from before the first event, committing
//! periodically (`Pace`): one from the merged view of dc1, where a member is
//! dropped mid-run while it holds uncommitted messages (no commit, no release, its
//! lease runs out) and a replacement joins the group; one at the live local tail of
//! both clusters, without a kill. Each group must deliver every acknowledged event
//! and commit each exactly once, and an event may be delivered again only if it was
//! read after its member's last commit on that partition and that member then died
//! or lost the partition (issue #7: a group consumes each event exactly once
//! between commits).
//!
//! `e2e_two_local_datacenters` runs on local disk; `e2e_dc1_on_hdfs` puts dc1 on
//! the real HDFS of `scripts/hdfs.sh` (`CONDUIT_TEST_HDFS`, set by `.ci/run`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conduit_core::format::read_file;
use conduit_core::layout::Layout;
use conduit_core::manifest::Manifest;
use conduit_core::{Encoding, Minute, Topic, View};
use conduit_pintail::{Consumer, PintailError, Position, ReadView};
use conduit_publisher::Publisher;
use conduit_testkit::hdfs;
use conduit_testkit::process::{conduit_bin, CollectorProcess, WorkerProcess};
use conduit_testkit::wait::until_blocking;

const TOPIC: &str = "e2e";

/// `conduit worker` of `cluster` with `config`, once its `/health` answers.
fn start_worker(config: &Path, cluster: &str, logs: &Path) -> WorkerProcess {
    let config = config.to_str().unwrap();
    WorkerProcess::start(&["--config", config, "--cluster", cluster], logs)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn write_config(dir: &Path, dc1_root: &str, dc2_root: &str) -> PathBuf {
    let path = dir.join("conduit.toml");
    std::fs::write(
        &path,
        format!(
            r#"[clusters.dc1]
root = "{dc1_root}"

[clusters.dc2]
root = "{dc2_root}"

[topic_defaults]
merge_into = "dc1"
merge_sources = ["dc1", "dc2"]
mirrors = ["dc2"]

[worker]
interval_ms = 200
lease_secs = 6
collector_timeout_secs = 30
max_source_lag_secs = 120
"#
        ),
    )
    .unwrap();
    path
}

fn conduit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(conduit_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Payloads of every file listed in the sealed manifests of `view` for the
/// minutes `from..=to` (and later ones, which may hold late data).
async fn sealed_payloads(
    root: &str,
    view: View,
    from: Minute,
    to: Minute,
) -> BTreeMap<String, u32> {
    let storage = conduit_core::open_root(root).await.unwrap();
    let topic = Topic::new(TOPIC).unwrap();
    let mut seen = BTreeMap::new();
    let mut m = from;
    let now = Minute::from_datetime(chrono::Utc::now()).unwrap();
    while m <= to.max(now) {
        let dir = Layout::minute_dir(view, &topic, m);
        if let Some(manifest) = Manifest::read(storage.as_ref(), &dir).await.unwrap() {
            for file in manifest.files {
                let decoded = read_file(
                    storage.as_ref(),
                    &format!("{dir}/{}", file.name),
                    Encoding::Lines,
                )
                .await
                .unwrap();
                assert_eq!(decoded.payloads.len() as u64, file.records, "{}", file.name);
                for p in decoded.payloads {
                    *seen
                        .entry(String::from_utf8(p.to_vec()).unwrap())
                        .or_insert(0) += 1;
                }
            }
        }
        m = m.next().unwrap();
    }
    seen
}

/// The payload of event `n` published into datacenter `dc`: its unique id.
fn event_id(dc: u32, n: u32) -> String {
    format!("{{\"dc\":{dc},\"n\":{n}}}")
}

/// How a PinTail group is paced: upkeep, lease, commits, merged-view partitions.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Group upkeep (membership heartbeat, claim renewals) interval.
    heartbeat: Duration,
    /// How long a killed member's partitions stay claimed before others take them.
    lease: Duration,
    /// A member commits what it read every this many messages...
    commit_messages: usize,
    /// ...or this often, whichever comes first.
    commit_every: Duration,
    /// Partitions of the merged view.
    partitions: u32,
}

impl Pace {
    /// Checkpoints and leases live in dc1's storage. On local disk a write takes
    /// about a millisecond. On HDFS each one (create, close, rename) takes about
    /// half a second, and upkeep rewrites the member file and then every claim the
    /// member holds, one after the other, inside `next()`: so there fewer
    /// partitions, rarer commits and the `conduit tail --group` beat and lease, or
    /// members spend their time renewing and lose partitions they still hold.
    fn for_root(dc1_root: &str) -> Pace {
        if dc1_root.starts_with("hdfs://") {
            Pace {
                heartbeat: Duration::from_secs(1),
                lease: Duration::from_secs(10),
                commit_messages: 10_000,
                commit_every: Duration::from_secs(2),
                partitions: 4,
            }
        } else {
            Pace {
                heartbeat: Duration::from_millis(250),
                lease: Duration::from_secs(3),
                commit_messages: 1000,
                commit_every: Duration::from_millis(250),
                partitions: 8,
            }
        }
    }
}

/// A member is killed only while it holds at least this many uncommitted messages.
const KILL_HOLDING: usize = 100;

/// What the members of one PinTail group did, event id by event id.
#[derive(Debug, Default)]
struct Ledger {
    /// Deliveries of each id, by any member.
    delivered: BTreeMap<String, u32>,
    /// Deliveries covered by a successful commit of the member that received them.
    committed: BTreeMap<String, u32>,
    /// Deliveries never committed: the member was killed holding them, or lost the
    /// partition (moved to another member, or its commit was fenced) first.
    uncommitted: BTreeMap<String, u32>,
    /// Deliveries per member.
    per_member: BTreeMap<String, u64>,
    /// Partitions each running member reads now (after its last `next()`).
    owned: BTreeMap<String, BTreeSet<String>>,
    /// Every partition each member read at some point.
    ever_owned: BTreeMap<String, BTreeSet<String>>,
    /// Deliveries dropped with a lost partition, per member (not the kill).
    moved: BTreeMap<String, u64>,
    /// The member that was killed, and the ids it held uncommitted.
    killed: Option<(String, Vec<String>)>,
}

impl Ledger {
    fn summary(&self) -> String {
        format!(
            "{} ids delivered ({} deliveries), {} committed, {} deliveries uncommitted; \
             per member {:?}; moved {:?}; owned {:?}; killed {:?}",
            self.delivered.len(),
            self.delivered.values().map(|n| u64::from(*n)).sum::<u64>(),
            self.committed.len(),
            self.uncommitted
                .values()
                .map(|n| u64::from(*n))
                .sum::<u64>(),
            self.per_member,
            self.moved,
            self.owned,
            self.killed
                .as_ref()
                .map(|(m, held)| (m.clone(), held.len())),
        )
    }

    /// Whether the running `members` split exactly `partitions` partitions among
    /// themselves, each reading some.
    fn split(&self, members: &[&str], partitions: usize) -> bool {
        let sets: Vec<_> = members.iter().filter_map(|m| self.owned.get(*m)).collect();
        let union: BTreeSet<&String> = sets.iter().flat_map(|s| s.iter()).collect();
        sets.len() == members.len()
            && sets.iter().all(|s| !s.is_empty())
            && sets.iter().map(|s| s.len()).sum::<usize>() == partitions
            && union.len() == partitions
    }
}

/// The ledger, also after a member panicked holding it (its panic is the one reported).
fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One PinTail consumer group following the topic in one view.
#[derive(Debug, Clone)]
struct GroupSpec {
    group: &'static str,
    view: ReadView,
    /// `(cluster, root)`: for the merged view the merged cluster only.
    roots: Vec<(String, String)>,
    members: [&'static str; 2],
    /// Kill one member once this many ids were delivered, then start this one.
    kill: Option<(usize, &'static str)>,
    pace: Pace,
    /// Every id the group must commit.
    expected: usize,
}

impl GroupSpec {
    fn consumer(&self, member: &str) -> conduit_pintail::ConsumerBuilder {
        let mut b = Consumer::builder(TOPIC)
            .view(self.view)
            .group(self.group)
            .dynamic_member(member, self.pace.lease)
            .heartbeat(self.pace.heartbeat)
            .sealed_poll(Duration::from_millis(300));
        if self.view != ReadView::Local {
            // The local view keeps one partition per collector (no sub-partitions).
            b = b.partitions(self.pace.partitions);
        }
        for (cluster, root) in &self.roots {
            b = b.cluster_uri(cluster, root);
        }
        b
    }
}

/// A running group: the task that drives its members, and their shared ledger.
struct GroupRun {
    spec: GroupSpec,
    ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<()>,
}

/// One member: reads, records each delivery, and commits each partition's last
/// position every `commit_messages` messages or `commit_every` ([`Pace`]),
/// recording what every commit covered. When `kill` is raised, the first member
/// that holds at least [`KILL_HOLDING`] uncommitted messages vanishes: its consumer
/// is dropped without a commit, a claim release or a clean leave. On `leave` it
/// commits and closes.
async fn member(
    name: String,
    builder: conduit_pintail::ConsumerBuilder,
    pace: Pace,
    ledger: Arc<Mutex<Ledger>>,
    kill: Arc<AtomicBool>,
    leave: Arc<AtomicBool>,
) {
    let mut c = builder
        .build()
        .await
        .unwrap_or_else(|e| panic!("member {name}: build: {e}"));
    let mut pending: BTreeMap<String, (Position, Vec<String>)> = BTreeMap::new();
    let mut owned: BTreeSet<String> = BTreeSet::new();
    let mut moved = 0u64;
    let mut since = 0usize;
    let mut last_commit = Instant::now();
    loop {
        if pending.values().map(|(_, ids)| ids.len()).sum::<usize>() >= KILL_HOLDING
            && kill
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            let held: Vec<String> = pending.into_values().flat_map(|(_, ids)| ids).collect();
            let mut l = lock(&ledger);
            for id in &held {
                *l.uncommitted.entry(id.clone()).or_default() += 1;
            }
            l.owned.remove(&name);
            l.killed = Some((name, held));
            return; // `c` is dropped here: nothing committed, nothing released
        }
        let leaving = leave.load(Ordering::SeqCst);
        if leaving
            || since >= pace.commit_messages
            || (since > 0 && last_commit.elapsed() >= pace.commit_every)
        {
            for (_, (position, ids)) in std::mem::take(&mut pending) {
                let result = c.commit(&position).await;
                let mut l = lock(&ledger);
                let tally = match result {
                    Ok(()) => &mut l.committed,
                    Err(PintailError::NotOwner { .. } | PintailError::StaleCommit { .. }) => {
                        moved += ids.len() as u64;
                        &mut l.uncommitted
                    }
                    Err(e) => panic!("member {name}: commit {position}: {e}"),
                };
                for id in ids {
                    *tally.entry(id).or_default() += 1;
                }
                l.moved.insert(name.clone(), moved);
            }
            since = 0;
            last_commit = Instant::now();
        }
        if leaving {
            c.close()
                .await
                .unwrap_or_else(|e| panic!("member {name}: close: {e}"));
            lock(&ledger).owned.remove(&name);
            return;
        }
        let got = c
            .next_timeout(Duration::from_millis(50))
            .await
            .unwrap_or_else(|e| panic!("member {name}: next: {e}"));
        // A partition this member no longer reads moved to another member (or was
        // fenced): what it read there since its last commit goes to the new owner.
        let now_owned: BTreeSet<String> = c.partitions().into_iter().collect();
        let mut l = lock(&ledger);
        for p in owned.difference(&now_owned) {
            if let Some((_, ids)) = pending.remove(p) {
                moved += ids.len() as u64;
                for id in ids {
                    *l.uncommitted.entry(id).or_default() += 1;
                }
            }
        }
        l.moved.insert(name.clone(), moved);
        l.ever_owned
            .entry(name.clone())
            .or_default()
            .extend(now_owned.iter().cloned());
        l.owned.insert(name.clone(), now_owned.clone());
        owned = now_owned;
        // PinTail counts the same thing: a partition lost (and perhaps taken back)
        // inside one `next()` would show here as a disagreement.
        assert_eq!(
            c.stats().lost_uncommitted,
            moved,
            "member {name}: pintail_lost_uncommitted vs deliveries dropped with lost partitions"
        );
        let Some(m) = got else { continue };
        let id = String::from_utf8(m.payload.to_vec()).unwrap();
        *l.delivered.entry(id.clone()).or_default() += 1;
        *l.per_member.entry(name.clone()).or_default() += 1;
        drop(l);
        let slot = pending
            .entry(m.position.partition().to_string())
            .or_insert_with(|| (m.position.clone(), Vec::new()));
        slot.0 = m.position;
        slot.1.push(id);
        since += 1;
    }
}

/// Waits (deadline) until `done` holds for the ledger; a member that panicked
/// fails the test at once, and members that returned (killed) leave the list.
async fn group_until(
    what: &str,
    timeout: Duration,
    members: &mut Vec<(String, tokio::task::JoinHandle<()>)>,
    ledger: &Mutex<Ledger>,
    done: impl Fn(&Ledger) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut i = 0;
        while i < members.len() {
            if members[i].1.is_finished() {
                let (name, handle) = members.remove(i);
                if let Err(e) = handle.await {
                    match e.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        Err(e) => panic!("member {name}: {e}"),
                    }
                }
            } else {
                i += 1;
            }
        }
        if done(&lock(ledger)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}: {}",
            lock(ledger).summary()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the group's members on `rt`, and the task that kills one and starts its
/// replacement (if asked), waits until every expected id is committed, and makes
/// the members commit and leave.
fn start_group(rt: &tokio::runtime::Runtime, spec: GroupSpec) -> GroupRun {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (kill, leave) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let spawn = {
        let (spec, ledger, kill, leave) =
            (spec.clone(), ledger.clone(), kill.clone(), leave.clone());
        move |name: &str| {
            let task = tokio::spawn(member(
                name.to_owned(),
                spec.consumer(name),
                spec.pace,
                ledger.clone(),
                kill.clone(),
                leave.clone(),
            ));
            (name.to_owned(), task)
        }
    };
    let task = {
        let (spec, ledger) = (spec.clone(), ledger.clone());
        rt.spawn(async move {
            let mut members: Vec<_> = spec.members.iter().map(|m| spawn(m)).collect();
            if let Some((after, replacement)) = spec.kill {
                group_until(
                    "deliveries before the kill",
                    Duration::from_secs(600),
                    &mut members,
                    &ledger,
                    |l| l.delivered.len() >= after,
                )
                .await;
                kill.store(true, Ordering::SeqCst);
                group_until(
                    "a member to die between commits",
                    Duration::from_secs(120),
                    &mut members,
                    &ledger,
                    |l| l.killed.is_some(),
                )
                .await;
                members.push(spawn(replacement));
            }
            group_until(
                "every event committed",
                Duration::from_secs(600),
                &mut members,
                &ledger,
                |l| l.committed.len() >= spec.expected,
            )
            .await;
            leave.store(true, Ordering::SeqCst);
            for (name, handle) in members {
                if let Err(e) = handle.await {
                    match e.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        Err(e) => panic!("member {name}: {e}"),
                    }
                }
            }
        })
    };
    GroupRun { spec, ledger, task }
}

impl GroupRun {
    /// Waits (deadline) until the group committed everything and its members left,
    /// then checks that every id in `expected` was delivered and committed exactly
    /// once, and that every further delivery was of a message read after its
    /// member's last commit and dropped with the member or the partition.
    fn finish(self, rt: &tokio::runtime::Runtime, expected: &BTreeSet<String>) {
        let what = self.spec.group;
        let started = Instant::now();
        let task = self.task;
        match rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), task).await }) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("group {what}: {e}"),
            },
            Err(_) => panic!(
                "group {what} did not commit every event within 120 s of the audit: {}",
                lock(&self.ledger).summary()
            ),
        }
        let l = lock(&self.ledger);
        eprintln!(
            "group {what} finished {:?} after the audit: {}",
            started.elapsed(),
            l.summary()
        );
        // (a) The union of what the members delivered is every acknowledged event,
        // and nothing else.
        let delivered: BTreeSet<&String> = l.delivered.keys().collect();
        let missing: Vec<_> = expected
            .iter()
            .filter(|id| !delivered.contains(id))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "group {what}: never delivered {missing:?}"
        );
        let foreign: Vec<_> = delivered
            .iter()
            .filter(|id| !expected.contains(**id))
            .take(5)
            .collect();
        assert!(
            foreign.is_empty(),
            "group {what}: delivered unknown payloads {foreign:?}"
        );
        // (b) Exactly once between commits: summed over the members, the
        // deliveries up to each member's commits hold every id exactly once...
        for id in expected {
            let committed = l.committed.get(id).copied().unwrap_or(0);
            assert_eq!(
                committed, 1,
                "group {what}: {id} committed {committed} times"
            );
        }
        assert_eq!(
            l.committed.len(),
            expected.len(),
            "group {what}: committed ids"
        );
        // ...and every other delivery was read after its member's last commit and
        // never committed (the member died, or lost the partition, first).
        for (id, n) in &l.delivered {
            let uncommitted = l.uncommitted.get(id).copied().unwrap_or(0);
            assert_eq!(
                *n,
                1 + uncommitted,
                "group {what}: {id} delivered {n} times, {uncommitted} of them never committed"
            );
        }
        for member in self
            .spec
            .members
            .iter()
            .chain(self.spec.kill.as_ref().map(|(_, r)| r))
        {
            assert!(
                l.ever_owned.get(*member).is_some_and(|p| !p.is_empty()),
                "group {what}: member {member} never read a partition: {}",
                l.summary()
            );
        }
        match self.spec.kill {
            Some(_) => {
                // The killed member held messages it had not committed; each was
                // delivered again (after the group's last commit of its partition).
                let (victim, held) = l.killed.as_ref().expect("a member was killed");
                assert!(!held.is_empty(), "group {what}: {victim} held nothing");
                for id in held {
                    assert!(
                        l.delivered[id] >= 2,
                        "group {what}: {id}, uncommitted when {victim} died, was not redelivered"
                    );
                }
            }
            None => {
                // Nobody died and the partitions were split before the first event:
                // nothing may be delivered twice.
                assert!(l.killed.is_none());
                let dups: Vec<_> = l
                    .delivered
                    .iter()
                    .filter(|(_, n)| **n != 1)
                    .take(5)
                    .collect();
                assert!(
                    dups.is_empty(),
                    "group {what}: delivered more than once: {dups:?}"
                );
            }
        }
    }
}

fn run_e2e(dc1_root: String, dc2_root: String) {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let config = write_config(tmp.path(), &dc1_root, &dc2_root);
    let cfg = config.to_str().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let start_collector = |root: &str, cluster: &str| {
        CollectorProcess::start(root, "c1", &["--config", cfg, "--cluster", cluster], &logs)
            .unwrap()
    };
    let mut c1 = start_collector(&dc1_root, "dc1");
    let c2 = start_collector(&dc2_root, "dc2");
    let mut w1 = start_worker(&config, "dc1", &logs);
    let _w2 = start_worker(&config, "dc2", &logs);

    // Two PinTail groups follow the topic from before the first event: one on the
    // merged view of dc1 (a member is killed mid-run and replaced), one at the live
    // local tail of both clusters. Each must split its partitions first (the
    // balanced assignment gives every member half of them): a and b, a and d,
    // b and d (4 or 8 partitions), la and lb.
    const N: u32 = 30_000;
    let expected: BTreeSet<String> = (0..N)
        .flat_map(|i| [event_id(1, i), event_id(2, i)])
        .collect();
    let pace = Pace::for_root(&dc1_root);
    let merged_group = start_group(
        &rt,
        GroupSpec {
            group: "merged",
            view: ReadView::Merged,
            roots: vec![("dc1".into(), dc1_root.clone())],
            members: ["a", "b"],
            kill: Some((expected.len() * 3 / 10, "d")),
            pace,
            expected: expected.len(),
        },
    );
    let local_group = start_group(
        &rt,
        GroupSpec {
            group: "local",
            view: ReadView::Local,
            roots: vec![
                ("dc1".into(), dc1_root.clone()),
                ("dc2".into(), dc2_root.clone()),
            ],
            members: ["la", "lb"],
            kill: None,
            pace,
            expected: expected.len(),
        },
    );
    let settling = Instant::now();
    for (run, partitions) in [(&merged_group, pace.partitions as usize), (&local_group, 2)] {
        let members = run.spec.members;
        until_blocking(
            &format!("group {} to split {partitions} partitions", run.spec.group),
            Duration::from_secs(30),
            || lock(&run.ledger).split(&members, partitions).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}: {}", lock(&run.ledger).summary()));
    }
    eprintln!(
        "PinTail groups split their partitions in {:?}",
        settling.elapsed()
    );

    let first = Minute::from_datetime(chrono::Utc::now()).unwrap();
    let p1 = Publisher::builder()
        .collectors([c1.thrift_addr.clone()])
        .build_blocking()
        .unwrap();
    let p2 = Publisher::builder()
        .collectors([c2.thrift_addr.clone()])
        .build_blocking()
        .unwrap();
    let started = Instant::now();
    for i in 0..N {
        p1.publish(TOPIC, event_id(1, i)).unwrap();
        p2.publish(TOPIC, event_id(2, i)).unwrap();
        if i == N / 3 {
            // A collector dies mid-run, batches in flight, and comes back on the
            // same address; the publisher re-sends what was not acknowledged.
            let (thrift, http) = (c1.thrift_addr.clone(), c1.http_addr.clone());
            c1.kill9();
            c1 = CollectorProcess::start_on(
                &dc1_root,
                "c1",
                &thrift,
                &http,
                &["--config", cfg, "--cluster", "dc1"],
                &logs,
            )
            .unwrap();
        }
        if i == N / 2 {
            w1.kill9();
            w1 = start_worker(&config, "dc1", &logs);
        }
        if i % 1000 == 999 {
            // About 10 s of publishing in all, so minutes roll under load sometimes.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    p1.flush().unwrap();
    p2.flush().unwrap();
    assert_eq!(p1.stats().acknowledged, N as u64, "dc1 publisher acks");
    assert_eq!(p2.stats().acknowledged, N as u64, "dc2 publisher acks");
    p1.close().unwrap();
    p2.close().unwrap();
    let last = Minute::from_datetime(chrono::Utc::now()).unwrap();
    eprintln!(
        "published 2x{N} in {:?}, minutes {first}..{last}",
        started.elapsed()
    );

    // Wait until every tier holds every event: audit counts sealed data only, by
    // each event's own minute, so late data counts where it belongs.
    let (from_s, to_s) = (first.to_string(), last.to_string());
    let n = N as u64;
    let audit = || {
        let (code, out, err) = conduit(&[
            "audit", "--config", cfg, "--topic", TOPIC, "--from", &from_s, "--to", &to_s, "--json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("audit output is not JSON ({e}):\n{out}\n{err}"));
        (code, report)
    };
    let complete = until_blocking(
        "every tier to hold every event",
        Duration::from_secs(300),
        || {
            let (code, report) = audit();
            let t = &report["totals"];
            (t["local:dc1"] == n
                && t["local:dc2"] == n
                && t["merged:dc1"] == 2 * n
                && t["mirror:dc2"] == 2 * n)
                .then_some((code, report))
        },
    );
    let (code, report) = match complete {
        Ok(done) => done,
        Err(e) => {
            let mut logs_text = String::new();
            for entry in std::fs::read_dir(&logs).unwrap() {
                let p = entry.unwrap().path();
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: String = text.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                logs_text.push_str(&format!(
                    "--- {} (last lines, newest first)\n{tail}\n",
                    p.display()
                ));
            }
            panic!("{e}; last audit {}\n{logs_text}", audit().1);
        }
    };
    // audit: no loss, no duplication at any tier, and publishers' acks agree.
    assert_eq!(code, 0, "audit found problems:\n{report}");
    let totals = &report["totals"];
    assert_eq!(totals["acked"], 2 * n, "{totals}");
    assert_eq!(totals["collected:dc1"], n, "{totals}");
    assert_eq!(totals["collected:dc2"], n, "{totals}");

    // verify: storage matches the manifests on both clusters.
    for cluster in ["dc1", "dc2"] {
        let (code, out, err) = conduit(&[
            "verify",
            "--config",
            cfg,
            "--cluster",
            cluster,
            "--topic",
            TOPIC,
            "--view",
            "local,merged",
        ]);
        assert_eq!(code, 0, "verify {cluster}:\n{out}\n{err}");
    }

    // Exactly once, by id, in the merged view and its mirror.
    for (root, what) in [(&dc1_root, "merged dc1"), (&dc2_root, "mirror dc2")] {
        let seen = rt.block_on(sealed_payloads(root, View::Merged, first, last));
        assert_eq!(seen.len(), 2 * N as usize, "{what}: distinct events");
        let dups: Vec<_> = seen.iter().filter(|(_, c)| **c != 1).take(5).collect();
        assert!(dups.is_empty(), "{what}: duplicated events {dups:?}");
        for dc in [1, 2] {
            for i in [0, N / 3, N / 2, N - 1] {
                let id = event_id(dc, i);
                assert!(seen.contains_key(&id), "{what}: {id} missing");
            }
        }
    }

    // The PinTail groups: every event delivered, each committed exactly once.
    local_group.finish(&rt, &expected);
    merged_group.finish(&rt, &expected);
}

#[test]
fn e2e_two_local_datacenters() {
    let tmp = tempfile::tempdir().unwrap();
    let dc1 = tmp.path().join("dc1").to_str().unwrap().to_owned();
    let dc2 = tmp.path().join("dc2").to_str().unwrap().to_owned();
    run_e2e(dc1, dc2);
}

#[test]
fn e2e_dc1_on_hdfs() {
    let Some(dc1) = hdfs::fresh_root("e2e_dc1_on_hdfs") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dc2 = tmp.path().join("dc2").to_str().unwrap().to_owned();
    run_e2e(dc1, dc2);
}
