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

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conduit_core::records::{GroupClaim, GroupMember};
use conduit_pintail::group::{assign, assignment_digest, owners};
use conduit_testkit::process::{conduit_bin, kill9, terminate, CollectorProcess, StdoutLines};
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

/// A printed event and when it was read from the tail's stdout.
type Line = (Instant, String);

/// Everything printed, by incarnation index.
#[derive(Default)]
struct Printed {
    /// Per incarnation: member id, killed, lines in order with when they were
    /// read from its stdout.
    runs: Vec<(String, bool, Vec<Line>)>,
}

struct Cluster {
    root: PathBuf,
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
            .map(|(id, _)| format!("dc1-{id}"))
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
            .args(["--from-beginning", "--wait-for-topic"])
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
            let lines = i.out.times.iter().copied().zip(i.out.seen.iter().cloned());
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

/// `(collector, seq)` of a printed event.
fn event_key(line: &str) -> (String, u64) {
    let (c, n) = line
        .rsplit_once('-')
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (
        c.to_owned(),
        n.parse()
            .unwrap_or_else(|_| panic!("unexpected line {line:?}")),
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[test]
fn members_join_leave_die_and_restart_and_the_group_stays_balanced_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut cl = Cluster {
        root,
        logs,
        collectors: Vec::new(),
        targets: Arc::default(),
        running: Vec::new(),
        done: Vec::new(),
        spawned: 0,
    };
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
        let held = cl.claimed_by("m1");
        let t = Instant::now();
        cl.leave("m1");
        wait::until_blocking("m1's partitions to be claimed by others", SETTLE, || {
            let (_, claims) = cl.group_files();
            held.iter()
                .all(|p| {
                    claims
                        .get(p)
                        .is_some_and(|c| c.member != "m1" && !c.released)
                })
                .then_some(())
        })
        .unwrap();
        handovers.push(t.elapsed());
        cl.settle(&format!("cycle {cycle}: m1 left"));

        // Killed and restarted with the same id: resumes at once.
        cl.kill("m2");
        cl.join("m2");
        let started = cl.running.last().unwrap().started;
        let inc = cl.running.last_mut().unwrap();
        inc.out
            .wait_for("the restarted m2 to print", SETTLE, |_| true)
            .unwrap_or_else(|e| panic!("{e}"));
        resumes.push(started.elapsed());
        cl.settle(&format!("cycle {cycle}: m2 killed and restarted"));

        // Killed for good: the others take its partitions after the lease.
        cl.kill("m3");
        cl.settle(&format!("cycle {cycle}: m3 killed"));
        cl.join("m1");
        cl.settle(&format!("cycle {cycle}: m1 joined again"));
    }

    // Stop publishing; every acknowledged event must be printed.
    stop.store(true, Ordering::Relaxed);
    let acked = publishing.join().unwrap();
    let expected: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(expected.len(), acked.len(), "event ids are unique");
    wait::until_blocking("every acknowledged event to be printed", SETTLE, || {
        let printed = cl.printed();
        let seen: BTreeSet<&String> = printed
            .runs
            .iter()
            .flat_map(|(_, _, l)| l.iter().map(|(_, e)| e))
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
    for (run, (_, _, lines)) in printed.runs.iter().enumerate() {
        for (at, l) in lines {
            by_event.entry(l.as_str()).or_default().push((*at, run));
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
        let mut per_partition: BTreeMap<String, Vec<bool>> = BTreeMap::new();
        for (_, l) in &printed.runs[run].2 {
            let (c, _) = event_key(l);
            let again = again_after.contains(&(run, l.as_str()));
            per_partition.entry(c).or_default().push(again);
        }
        for (c, flags) in per_partition {
            let first = flags.iter().position(|a| *a).unwrap_or(flags.len());
            assert!(
                flags[first..].iter().all(|a| *a),
                "run {run} ({}): events of {c} printed again are not a tail of what it printed",
                printed.runs[run].0
            );
        }
    }
    let kills = printed.runs.iter().filter(|r| r.1).count();
    println!(
        "group churn: {} acknowledged events, {} runs, {kills} killed with SIGKILL; \
         {extra} re-deliveries in all, per killed run {:?}; restart to first event: \
         median {:?}, max {:?}; graceful leave to partitions claimed by others: median {:?}, max {:?}",
        acked.len(),
        printed.runs.len(),
        redelivered_per_kill.values().collect::<Vec<_>>(),
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
