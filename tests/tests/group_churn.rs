//! Consumer-group churn on real processes (issue 17): `conduit collector`
//! processes started at different times (each one a new partition of the local
//! view) take acknowledged events from a Scribe client all along, while `conduit
//! tail --group g --member-id ID` processes join, leave gracefully (SIGTERM), are
//! killed with SIGKILL, and are restarted with the same member id, round after
//! round.
//!
//! After every step the group must settle: the live member files all carry the
//! same assignment digest over the same partitions, and the claims give every
//! partition to one live member, each member owning `floor(P/N)` or
//! `ceil(P/N)`, exactly as [`assign`] computes (balance and agreement). At the end
//! every acknowledged event was printed by some member, an event printed twice
//! was printed by a member killed with SIGKILL (graceful leaves, joins,
//! rebalances and restarts re-deliver nothing), and what a killed member's
//! successors printed again is, per partition, a tail of what it had printed
//! (the part after its last commit). Printed: the re-deliveries per kill, the
//! time a restarted member took to print again, and the time a graceful leave
//! took to hand its partitions over. Timing targets are in
//! `docs/benchmarks.md`; here deadlines are generous.
//!
//! The second test runs the same churn with more members than collectors: 8
//! members share a topic written by 2 collectors as 4 sub-partitions of each
//! stream (`conduit tail --partitions 4`), with a `conduit worker` sealing the
//! minutes under them (so readers continue in moved files), and checks the
//! same: balance (8 members, 8 partitions: one each), every acknowledged event
//! printed by exactly one member except a killed member's uncommitted tail of
//! each sub-partition, and a member started with another count is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conduit_core::records::{GroupClaim, GroupMember};
use conduit_pintail::group::{assign, assignment_digest, owners};
use conduit_pintail::partition::local_partition;
use conduit_testkit::process::{
    conduit_bin, kill9, run_conduit, terminate, CollectorProcess, StdoutLines, WorkerProcess,
};
use conduit_testkit::{runtime, scribe, wait};

const TOPIC: &str = "churn";
const GROUP: &str = "g";
/// The members' lease: a killed member's partitions wait this long; a restarted
/// one must not (it resumes at once).
const LEASE_SECS: u64 = 6;
/// Deadline for the group to settle after a step (generous: the lease plus
/// hand-overs on a loaded machine).
const SETTLE: Duration = Duration::from_secs(40);
/// How many times the member steps are run.
const CYCLES: usize = 3;

/// One process of a member id.
struct Incarnation {
    member: String,
    child: Child,
    out: StdoutLines,
    started: Instant,
    /// Killed with SIGKILL (its printed events may come again).
    killed: bool,
    log: PathBuf,
}

/// A printed event (payload, partition) and when it was read from the tail's
/// stdout (`--format json`).
type Line = (Instant, Event);

/// What a `--format json` line of `conduit tail` says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    payload: String,
    partition: String,
}

fn event_of(line: &str) -> Event {
    let doc: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: unexpected line {line:?}"));
    Event {
        payload: doc["payload"].as_str().expect("payload").to_owned(),
        partition: doc["position"]["partition"]
            .as_str()
            .expect("partition")
            .to_owned(),
    }
}

/// Everything printed, by incarnation index.
#[derive(Default)]
struct Printed {
    /// Per incarnation: member id, killed, lines in order with when they were
    /// read from its stdout.
    runs: Vec<(String, bool, Vec<Line>)>,
}

struct Cluster {
    root: PathBuf,
    /// Sub-partitions of each collector's stream (`conduit tail --partitions`).
    parts: u32,
    logs: PathBuf,
    collectors: Vec<CollectorProcess>,
    /// Scribe addresses the publisher sends to, with the collector id.
    targets: Arc<Mutex<Vec<(String, String)>>>,
    running: Vec<Incarnation>,
    done: Vec<Incarnation>,
    spawned: usize,
}

impl Cluster {
    fn start_collector(&mut self, id: &str) {
        let c = CollectorProcess::start(self.root.to_str().unwrap(), id, &[], &self.logs)
            .unwrap_or_else(|e| panic!("{e}"));
        self.targets
            .lock()
            .unwrap()
            .push((id.to_owned(), c.thrift_addr.clone()));
        self.collectors.push(c);
    }

    fn partitions(&self) -> BTreeSet<String> {
        self.targets
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(id, _)| (0..self.parts).map(|k| local_partition("dc1", id, k, self.parts)))
            .collect()
    }

    fn join(&mut self, member: &str) {
        assert!(
            !self.running.iter().any(|i| i.member == member),
            "{member} runs already"
        );
        self.spawned += 1;
        let log = self
            .logs
            .join(format!("tail-{member}-{}.log", self.spawned));
        let mut child = Command::new(conduit_bin())
            .args(["--log-format", "json", "tail", "--root"])
            .arg(&self.root)
            .args(["--topic", TOPIC, "--group", GROUP, "--member-id", member])
            .args(["--from-beginning", "--wait-for-topic", "--format", "json"])
            .args(["--partitions", &self.parts.to_string()])
            .args([
                "--lease-secs",
                &LEASE_SECS.to_string(),
                "--heartbeat-ms",
                "200",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let out = StdoutLines::of(&mut child);
        self.running.push(Incarnation {
            member: member.to_owned(),
            child,
            out,
            started: Instant::now(),
            killed: false,
            log,
        });
    }

    fn take(&mut self, member: &str) -> Incarnation {
        let at = self
            .running
            .iter()
            .position(|i| i.member == member)
            .unwrap_or_else(|| panic!("{member} is not running"));
        self.running.remove(at)
    }

    /// SIGTERM: commit what was printed, release, leave.
    fn leave(&mut self, member: &str) {
        let mut inc = self.take(member);
        let status = terminate(&mut inc.child, "conduit tail").unwrap();
        inc.out.poll();
        assert!(
            status.success(),
            "{member} exited with {status}: {}",
            std::fs::read_to_string(&inc.log).unwrap_or_default()
        );
        self.done.push(inc);
    }

    fn kill(&mut self, member: &str) {
        let mut inc = self.take(member);
        kill9(&mut inc.child);
        // What the pipe held when it died was printed (the reader got it).
        wait::until_blocking("the killed tail's output to end", SETTLE, || {
            inc.out.poll();
            inc.out.is_closed().then_some(())
        })
        .unwrap();
        inc.killed = true;
        self.done.push(inc);
    }

    fn live_members(&self) -> BTreeSet<String> {
        self.running.iter().map(|i| i.member.clone()).collect()
    }

    fn poll_all(&mut self) {
        for i in &mut self.running {
            i.out.poll();
            if let Ok(Some(status)) = i.child.try_wait() {
                panic!(
                    "{} exited on its own with {status}: {}",
                    i.member,
                    std::fs::read_to_string(&i.log).unwrap_or_default()
                );
            }
        }
    }

    fn printed(&mut self) -> Printed {
        self.poll_all();
        let mut p = Printed::default();
        for i in self.done.iter().chain(&self.running) {
            let lines = i
                .out
                .times
                .iter()
                .copied()
                .zip(i.out.seen.iter().map(|l| event_of(l)));
            p.runs.push((i.member.clone(), i.killed, lines.collect()));
        }
        p
    }

    /// The group's files now: live member files and each partition's newest claim.
    fn group_files(&self) -> (BTreeMap<String, GroupMember>, BTreeMap<String, GroupClaim>) {
        let dir = self.root.join("system/leases");
        let prefix = format!("pintail.{GROUP}.{TOPIC}.");
        let now = now_ms();
        let mut members = BTreeMap::new();
        let mut newest: BTreeMap<String, (u64, GroupClaim)> = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".json"))
            else {
                continue;
            };
            let Ok(text) = std::fs::read(entry.path()) else {
                continue;
            };
            if let Some(id) = rest.strip_prefix("member.") {
                if let Ok(m) = serde_json::from_slice::<GroupMember>(&text) {
                    if m.expires_ms > now {
                        members.insert(id.to_owned(), m);
                    }
                }
            } else if let Some(claim) = rest.strip_prefix("claim.") {
                let (partition, epoch) = claim.rsplit_once('.').unwrap();
                let epoch: u64 = epoch.parse().unwrap();
                if let Ok(c) = serde_json::from_slice::<GroupClaim>(&text) {
                    if newest.get(partition).is_none_or(|(e, _)| *e < epoch) {
                        newest.insert(partition.to_owned(), (epoch, c));
                    }
                }
            }
        }
        let claims = newest.into_iter().map(|(p, (_, c))| (p, c)).collect();
        (members, claims)
    }

    /// Why the group is not settled yet (`None`: settled): see the module docs.
    fn unsettled(&self) -> Option<String> {
        let (members, claims) = self.group_files();
        let live = self.live_members();
        let partitions = self.partitions();
        let ids: BTreeSet<String> = members.keys().cloned().collect();
        if ids != live {
            return Some(format!("member files {ids:?}, running {live:?}"));
        }
        let owners = owners(&claims, &live);
        let digest = assignment_digest(&live, &partitions, &owners);
        for (id, m) in &members {
            let found: BTreeSet<String> = m.partitions.iter().cloned().collect();
            if found != partitions || m.assignment != digest {
                return Some(format!(
                    "{id} found {found:?} with digest {}, expected {partitions:?} and {digest}",
                    m.assignment
                ));
            }
        }
        let expected = assign(&live, &partitions, &owners);
        for (p, owner) in &expected {
            let Some(c) = claims.get(p) else {
                return Some(format!("{p} has no claim yet"));
            };
            if &c.member != owner || c.released || c.incarnation != members[owner].incarnation {
                return Some(format!(
                    "{p} claimed by {} (released {}, incarnation {}) instead of {owner} ({})",
                    c.member, c.released, c.incarnation, members[owner].incarnation
                ));
            }
        }
        None
    }

    /// Waits until the group settled and checks its balance.
    fn settle(&mut self, step: &str) {
        let mut why = String::new();
        let result =
            wait::until_blocking(&format!("the group to settle after {step}"), SETTLE, || {
                self.poll_all();
                match self.unsettled() {
                    None => Some(()),
                    Some(w) => {
                        why = w;
                        None
                    }
                }
            });
        if let Err(e) = result {
            let logs: Vec<String> = self
                .running
                .iter()
                .map(|i| {
                    format!(
                        "--- {}:\n{}",
                        i.member,
                        tail_lines(&std::fs::read_to_string(&i.log).unwrap_or_default(), 30)
                    )
                })
                .collect();
            panic!("{e}: {why}\n{}", logs.join("\n"));
        }
        let live = self.live_members();
        let partitions = self.partitions();
        let (_, claims) = self.group_files();
        let mut load: BTreeMap<&String, usize> = live.iter().map(|m| (m, 0)).collect();
        for p in &partitions {
            *load.get_mut(&claims[p].member).unwrap() += 1;
        }
        let (lo, hi) = (
            partitions.len() / live.len(),
            partitions.len().div_ceil(live.len()),
        );
        for (m, n) in &load {
            assert!(
                *n == lo || *n == hi,
                "{step}: {m} owns {n} of {} over {}",
                partitions.len(),
                live.len()
            );
        }
        println!("{step}: settled, owners {load:?}");
    }

    /// Partitions `member` holds a live claim of now.
    fn claimed_by(&self, member: &str) -> BTreeSet<String> {
        let (_, claims) = self.group_files();
        claims
            .into_iter()
            .filter(|(_, c)| c.member == member && !c.released)
            .map(|(p, _)| p)
            .collect()
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sends numbered events (`<collector>-<seq>`) to every collector in `targets`,
/// 20 per collector per round, until `stop`; returns what was acknowledged.
fn publisher(
    targets: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async {
            let mut clients: BTreeMap<String, scribe::Client> = BTreeMap::new();
            let mut seq: BTreeMap<String, u64> = BTreeMap::new();
            let mut acked = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let now: Vec<(String, String)> = targets.lock().unwrap().clone();
                for (id, addr) in now {
                    if !clients.contains_key(&id) {
                        clients.insert(id.clone(), scribe::Client::connect(addr.as_str()).await);
                    }
                    let n = seq.entry(id.clone()).or_default();
                    let batch: Vec<String> =
                        (0..20).map(|i| format!("{id}-{:08}", *n + i)).collect();
                    *n += 20;
                    clients.get_mut(&id).unwrap().log_acked(TOPIC, &batch).await;
                    acked.extend(batch);
                }
                // Pacing of the load, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            acked
        })
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A cluster directory with no processes yet; members read `parts`
/// sub-partitions of each collector's stream.
fn cluster(dir: &std::path::Path, parts: u32) -> Cluster {
    let root = dir.join("root");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    Cluster {
        root,
        parts,
        logs,
        collectors: Vec::new(),
        targets: Arc::default(),
        running: Vec::new(),
        done: Vec::new(),
        spawned: 0,
    }
}

/// One graceful leave of `member`: the time until every partition it held is
/// claimed by another member.
fn graceful_leave(cl: &mut Cluster, member: &str) -> Duration {
    let held = cl.claimed_by(member);
    let t = Instant::now();
    cl.leave(member);
    wait::until_blocking(
        &format!("{member}'s partitions to be claimed by others"),
        SETTLE,
        || {
            let (_, claims) = cl.group_files();
            held.iter()
                .all(|p| {
                    claims
                        .get(p)
                        .is_some_and(|c| c.member != member && !c.released)
                })
                .then_some(())
        },
    )
    .unwrap();
    t.elapsed()
}

/// `member` killed with SIGKILL and restarted with the same id: the time until
/// the new process printed its first event.
fn kill_and_restart(cl: &mut Cluster, member: &str) -> Duration {
    cl.kill(member);
    cl.join(member);
    let started = cl.running.last().unwrap().started;
    let inc = cl.running.last_mut().unwrap();
    inc.out
        .wait_for(&format!("the restarted {member} to print"), SETTLE, |_| {
            true
        })
        .unwrap_or_else(|e| panic!("{e}"));
    started.elapsed()
}

/// What the final checks found.
struct Deliveries {
    acked: usize,
    runs: usize,
    kills: usize,
    /// Deliveries beyond the first, in all.
    extra: usize,
    /// Re-deliveries after each killed run that had any.
    per_kill: Vec<usize>,
    /// Events printed per member id (all its runs).
    per_member: BTreeMap<String, usize>,
}

/// Stops publishing, waits until every acknowledged event was printed, lets
/// every member leave, and checks exactly-once delivery between commits: an
/// event printed twice was printed by a killed run first, and what came again
/// after a killed run is, per partition, a tail of what it printed.
fn finish(
    cl: &mut Cluster,
    stop: &AtomicBool,
    publishing: std::thread::JoinHandle<Vec<String>>,
) -> Deliveries {
    stop.store(true, Ordering::Relaxed);
    let acked = publishing.join().unwrap();
    let expected: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(expected.len(), acked.len(), "event ids are unique");
    wait::until_blocking("every acknowledged event to be printed", SETTLE, || {
        let printed = cl.printed();
        let seen: BTreeSet<&String> = printed
            .runs
            .iter()
            .flat_map(|(_, _, l)| l.iter().map(|(_, e)| &e.payload))
            .collect();
        expected.iter().all(|e| seen.contains(*e)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for m in cl.live_members() {
        cl.leave(&m);
    }
    let printed = cl.printed();

    // Deliveries of each event in time order: (when, run).
    let mut by_event: BTreeMap<&str, Vec<(Instant, usize)>> = BTreeMap::new();
    let mut per_member: BTreeMap<String, usize> = BTreeMap::new();
    for (run, (member, _, lines)) in printed.runs.iter().enumerate() {
        *per_member.entry(member.clone()).or_default() += lines.len();
        for (at, e) in lines {
            by_event
                .entry(e.payload.as_str())
                .or_default()
                .push((*at, run));
        }
    }
    for e in &expected {
        assert!(by_event.contains_key(e.as_str()), "{e} was never printed");
    }
    // An event comes again only after a run that printed it was killed: each
    // delivery but the first follows one by a killed run. Such an event is
    // "printed again after" that killed run.
    let mut again_after: BTreeSet<(usize, &str)> = BTreeSet::new();
    let mut extra = 0;
    for (e, deliveries) in &mut by_event {
        deliveries.sort();
        extra += deliveries.len() - 1;
        for pair in deliveries.windows(2) {
            let (before, after) = (pair[0].1, pair[1].1);
            assert!(
                printed.runs[before].1,
                "{e} printed again by {} after {}, which was not killed: \
                 only what a killed member printed after its last commit may come again",
                printed.runs[after].0, printed.runs[before].0
            );
            again_after.insert((before, e));
        }
    }
    // What came again after a kill is, per partition, a tail of what the killed
    // run printed: the part after its last commit.
    let mut redelivered_per_kill: BTreeMap<usize, usize> = BTreeMap::new();
    for &(run, _) in &again_after {
        *redelivered_per_kill.entry(run).or_default() += 1;
    }
    for &run in redelivered_per_kill.keys() {
        let mut per_partition: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
        for (_, e) in &printed.runs[run].2 {
            let again = again_after.contains(&(run, e.payload.as_str()));
            per_partition.entry(&e.partition).or_default().push(again);
        }
        for (p, flags) in per_partition {
            let first = flags.iter().position(|a| *a).unwrap_or(flags.len());
            assert!(
                flags[first..].iter().all(|a| *a),
                "run {run} ({}): events of {p} printed again are not a tail of what it printed",
                printed.runs[run].0
            );
        }
    }
    Deliveries {
        acked: acked.len(),
        runs: printed.runs.len(),
        kills: printed.runs.iter().filter(|r| r.1).count(),
        extra,
        per_kill: redelivered_per_kill.values().copied().collect(),
        per_member,
    }
}

#[test]
fn members_join_leave_die_and_restart_and_the_group_stays_balanced_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = cluster(dir.path(), 1);
    let stop = Arc::new(AtomicBool::new(false));
    cl.start_collector("c1");
    let publishing = publisher(cl.targets.clone(), stop.clone());

    let mut resumes = Vec::new();
    let mut handovers = Vec::new();
    cl.join("m1");
    cl.join("m2");
    cl.settle("m1 and m2 joined, 1 partition");
    cl.start_collector("c2");
    cl.settle("c2 appeared");
    let mut collectors = 2;
    for cycle in 0..CYCLES {
        cl.join("m3");
        cl.settle(&format!("cycle {cycle}: m3 joined"));
        if collectors < 4 {
            collectors += 1;
            cl.start_collector(&format!("c{collectors}"));
            cl.settle(&format!("cycle {cycle}: c{collectors} appeared"));
        }

        // Graceful leave: its partitions go over without a lease wait.
        handovers.push(graceful_leave(&mut cl, "m1"));
        cl.settle(&format!("cycle {cycle}: m1 left"));

        // Killed and restarted with the same id: resumes at once.
        resumes.push(kill_and_restart(&mut cl, "m2"));
        cl.settle(&format!("cycle {cycle}: m2 killed and restarted"));

        // Killed for good: the others take its partitions after the lease.
        cl.kill("m3");
        cl.settle(&format!("cycle {cycle}: m3 killed"));
        cl.join("m1");
        cl.settle(&format!("cycle {cycle}: m1 joined again"));
    }

    let d = finish(&mut cl, &stop, publishing);
    println!(
        "group churn: {} acknowledged events, {} runs, {} killed with SIGKILL; \
         {} re-deliveries in all, per killed run {:?}; restart to first event: \
         median {:?}, max {:?}; graceful leave to partitions claimed by others: median {:?}, max {:?}",
        d.acked,
        d.runs,
        d.kills,
        d.extra,
        d.per_kill,
        median(resumes.clone()),
        resumes.iter().max().unwrap(),
        median(handovers.clone()),
        handovers.iter().max().unwrap(),
    );
    // Generous bound (the lease is 6 s; an id that does not survive a restart
    // would wait that long): a restarted member resumes at once.
    assert!(
        resumes
            .iter()
            .all(|d| *d < Duration::from_secs(LEASE_SECS / 2)),
        "restarts took {resumes:?}"
    );
}

/// Whether the worker sealed a minute of the topic in the local view.
fn a_minute_is_sealed(root: &std::path::Path) -> bool {
    fn walk(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                e.file_name() == "_SUCCESS" || (p.is_dir() && walk(&p))
            })
    }
    walk(&root.join("streams_local").join(TOPIC))
}

/// Issue 17, more consumers than collectors: 8 members share 2 collectors'
/// streams as 4 sub-partitions each (see the module docs).
#[test]
fn eight_members_share_two_collectors_as_sub_partitions_exactly_once() {
    const K: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut cl = cluster(dir.path(), K);
    let stop = Arc::new(AtomicBool::new(false));
    cl.start_collector("c1");
    cl.start_collector("c2");
    // Seals the minutes under the members: files move out of `data/` while
    // they read them, and a restarted member resumes in a moved file.
    let _worker = WorkerProcess::start(
        &[
            "--root",
            cl.root.to_str().unwrap(),
            "--cluster",
            "dc1",
            "--interval-ms",
            "200",
        ],
        &cl.logs,
    )
    .expect("conduit worker starts");
    let publishing = publisher(cl.targets.clone(), stop.clone());

    let all: Vec<String> = (1..=8).map(|i| format!("m{i}")).collect();
    for m in &all {
        cl.join(m);
    }
    // 8 members, 2 × 4 partitions: `settle` checks each owns exactly one.
    cl.settle("8 members joined, 2 collectors x 4 sub-partitions");

    // A member started with another count is refused, naming both.
    let root = cl.root.to_str().unwrap().to_owned();
    let ran = run_conduit(
        &[
            "tail",
            "--root",
            &root,
            "--topic",
            TOPIC,
            "--group",
            GROUP,
            "--partitions",
            "2",
        ],
        b"",
        SETTLE,
    )
    .unwrap();
    assert_eq!(ran.code, 1, "stderr: {}", ran.stderr);
    assert!(
        ran.stderr.contains("uses 4 partitions") && ran.stderr.contains("started with 2"),
        "stderr: {}",
        ran.stderr
    );

    let mut resumes = Vec::new();
    let mut handovers = Vec::new();
    for cycle in 0..2 {
        if cycle == 1 {
            // The second cycle runs over sealed minutes.
            wait::until_blocking(
                "the worker to seal a minute",
                Duration::from_secs(130),
                || a_minute_is_sealed(&cl.root).then_some(()),
            )
            .unwrap();
        }
        handovers.push(graceful_leave(&mut cl, "m1"));
        cl.settle(&format!("cycle {cycle}: m1 left (7 members, 8 partitions)"));
        cl.join("m1");
        cl.settle(&format!("cycle {cycle}: m1 joined again"));
        resumes.push(kill_and_restart(&mut cl, "m2"));
        cl.settle(&format!("cycle {cycle}: m2 killed and restarted"));
        cl.kill("m3");
        cl.settle(&format!("cycle {cycle}: m3 killed (7 members)"));
        cl.join("m3");
        cl.settle(&format!("cycle {cycle}: m3 joined again"));
    }

    let d = finish(&mut cl, &stop, publishing);
    println!(
        "sub-partitions (2 collectors x {K}, 8 members): {} acknowledged events, {} runs, \
         {} killed with SIGKILL; {} re-deliveries in all, per killed run {:?}; printed per \
         member {:?}; restart to first event: median {:?}, max {:?}; graceful leave to \
         partitions claimed by others: median {:?}, max {:?}",
        d.acked,
        d.runs,
        d.kills,
        d.extra,
        d.per_kill,
        d.per_member,
        median(resumes.clone()),
        resumes.iter().max().unwrap(),
        median(handovers.clone()),
        handovers.iter().max().unwrap(),
    );
    assert!(
        resumes
            .iter()
            .all(|d| *d < Duration::from_secs(LEASE_SECS / 2)),
        "restarts took {resumes:?}"
    );
}
