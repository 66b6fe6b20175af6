//! Consumer groups on sealed merged minutes (local disk): three dynamic members
//! join, leave cleanly and die during a run, and a count proves that every message
//! was committed by exactly one member (delivered more than once only where a
//! member lost a partition before committing it); static `k/N` members split the
//! partitions without overlap; a second process with the same member id takes
//! over at once and fences the first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conduit_core::SharedStorage;
use conduit_pintail::{Consumer, PintailError, Position, ReadView};
use conduit_testkit::minutes::sealed_minute;
use conduit_testkit::{local_storage, minute, wait};
use tokio::sync::watch;

/// How long each phase of a run may take.
const PHASE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Ledger {
    /// Deliveries of each payload (any member).
    delivered: BTreeMap<String, u32>,
    /// Deliveries covered by a successful commit of the member that received them.
    committed: BTreeMap<String, u32>,
    /// Deliveries per member.
    per_member: BTreeMap<String, u32>,
    /// Deliveries whose commit was refused (the partition had moved).
    fenced: u32,
    /// Deliveries a dying member never tried to commit.
    dropped: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Run,
    Leave,
    Die,
}

/// One member: reads with a 1 ms pause per message, commits every 10 messages
/// and whenever no message came for 50 ms (its last messages too), explicitly per
/// partition, and records what each commit covered.
async fn member(
    name: &'static str,
    storage: SharedStorage,
    ledger: Arc<Mutex<Ledger>>,
    mut cmd: watch::Receiver<Cmd>,
) {
    let mut c = Consumer::builder("clicks")
        .cluster("dc1", storage)
        .view(ReadView::Merged)
        .partitions(12)
        .sealed_poll(Duration::from_millis(20))
        .group("g")
        .dynamic_member(name, Duration::from_millis(1000))
        .heartbeat(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let mut pending: BTreeMap<String, (Position, Vec<String>)> = BTreeMap::new();
    let mut since = 0;
    let mut idle = false;
    loop {
        let now = *cmd.borrow_and_update();
        if now == Cmd::Die {
            // Dropped: no commit, no release, the lease runs out.
            ledger.lock().unwrap().dropped +=
                pending.values().map(|(_, p)| p.len() as u32).sum::<u32>();
            return;
        }
        let leaving = now == Cmd::Leave;
        if since >= 10 || (idle && since > 0) || leaving {
            since = 0;
            for (_, (pos, payloads)) in std::mem::take(&mut pending) {
                let result = c.commit(&pos).await;
                let mut l = ledger.lock().unwrap();
                match result {
                    Ok(()) => {
                        for p in payloads {
                            *l.committed.entry(p).or_default() += 1;
                        }
                    }
                    Err(PintailError::NotOwner { .. }) => l.fenced += payloads.len() as u32,
                    Err(e) => panic!("{name}: commit failed: {e}"),
                }
            }
        }
        if leaving {
            c.close().await.unwrap();
            return;
        }
        let got = c.next_timeout(Duration::from_millis(50)).await.unwrap();
        idle = got.is_none();
        let Some(m) = got else {
            continue;
        };
        since += 1;
        let text = String::from_utf8(m.payload.to_vec()).unwrap();
        {
            let mut l = ledger.lock().unwrap();
            *l.delivered.entry(text.clone()).or_default() += 1;
            *l.per_member.entry(name.to_owned()).or_default() += 1;
        }
        let slot = pending
            .entry(m.position.partition().to_string())
            .or_insert_with(|| (m.position.clone(), Vec::new()));
        slot.0 = m.position.clone();
        slot.1.push(text);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_leave_and_die_and_every_message_is_committed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let mut all = Vec::new();
    for i in 0..20 {
        let m = minute("2026-11-22T10:00").add_minutes(i).unwrap();
        all.extend(sealed_minute(std::slice::from_ref(&storage), "clicks", m, 3, 100, 4).await);
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let start = |name: &'static str| {
        let (tx, rx) = watch::channel(Cmd::Run);
        let task = tokio::spawn(member(name, storage.clone(), ledger.clone(), rx));
        (tx, task)
    };
    let delivered = || ledger.lock().unwrap().delivered.len();

    let (a, a_task) = start("a");
    wait::until("a reads", PHASE, || async { delivered() > 300 }).await;
    let (b, b_task) = start("b");
    wait::until("b reads", PHASE, || async {
        ledger
            .lock()
            .unwrap()
            .per_member
            .get("b")
            .copied()
            .unwrap_or(0)
            > 200
    })
    .await;
    let (c, c_task) = start("c");
    wait::until("c reads", PHASE, || async {
        ledger
            .lock()
            .unwrap()
            .per_member
            .get("c")
            .copied()
            .unwrap_or(0)
            > 200
    })
    .await;
    a.send(Cmd::Leave).unwrap();
    a_task.await.unwrap();
    let at_leave = delivered();
    wait::until("progress after a left", PHASE, || async {
        delivered() > at_leave + 300
    })
    .await;
    c.send(Cmd::Die).unwrap();
    c_task.await.unwrap();

    // b alone finishes the run, taking over c's partitions once c's lease expires.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = {
            let l = ledger.lock().unwrap();
            l.committed.len() == all.len()
        };
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "b did not finish: {}", {
            let l = ledger.lock().unwrap();
            let missing: Vec<(&String, u32)> = all
                .iter()
                .filter(|p| !l.committed.contains_key(*p))
                .map(|p| (p, l.delivered.get(p).copied().unwrap_or(0)))
                .collect();
            format!(
                "{} committed; not committed (deliveries): {missing:?}; per member {:?}",
                l.committed.len(),
                l.per_member
            )
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.send(Cmd::Leave).unwrap();
    b_task.await.unwrap();

    let l = ledger.lock().unwrap();
    for p in &all {
        assert!(
            l.delivered.get(p).copied().unwrap_or(0) >= 1,
            "{p} never delivered"
        );
        assert_eq!(
            l.committed.get(p).copied().unwrap_or(0),
            1,
            "{p} must be committed by exactly one member"
        );
    }
    let total: u32 = l.delivered.values().sum();
    let duplicates = total - all.len() as u32;
    println!(
        "members {:?}, {} messages, {} duplicate deliveries, {} refused by fencing, {} dropped",
        l.per_member,
        all.len(),
        duplicates,
        l.fenced,
        l.dropped
    );
    assert!(
        duplicates <= l.fenced + l.dropped,
        "duplicates only where a member lost a partition before committing: {duplicates} > {} + {}",
        l.fenced,
        l.dropped
    );
    for m in ["a", "b", "c"] {
        assert!(l.per_member[m] > 0, "{m} took part");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_members_split_the_partitions_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let mut all = Vec::new();
    for i in 0..3 {
        let m = minute("2026-11-22T10:00").add_minutes(i).unwrap();
        all.extend(sealed_minute(std::slice::from_ref(&storage), "clicks", m, 8, 20, 2).await);
    }
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for k in 0..3 {
        let mut c = Consumer::builder("clicks")
            .cluster("dc1", storage.clone())
            .view(ReadView::Merged)
            .partitions(12)
            .group("s")
            .static_member(k, 3)
            .stop(minute("2026-11-22T10:02"))
            .build()
            .await
            .unwrap();
        while let Some(m) = c.next_timeout(Duration::from_secs(5)).await.unwrap() {
            *seen
                .entry(String::from_utf8(m.payload.to_vec()).unwrap())
                .or_default() += 1;
        }
        assert!(c.is_finished());
        assert!(!c.partitions().is_empty() && c.partitions().len() < 12);
    }
    assert_eq!(seen.len(), all.len());
    assert!(seen.values().all(|n| *n == 1));
}

/// Static membership: a second process with the same member id takes the
/// partitions over at once (no lease wait, though the first never left), the
/// first's late commit is refused, and its next `next()` stops it with
/// `MemberFenced`; the second resumes after the first's last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_same_member_id_takes_over_at_once_and_fences_the_old_process() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let all = sealed_minute(
        std::slice::from_ref(&storage),
        "clicks",
        minute("2026-11-22T10:00"),
        4,
        50,
        5,
    )
    .await;
    let member = || {
        Consumer::builder("clicks")
            .cluster("dc1", storage.clone())
            .view(ReadView::Merged)
            .partitions(4)
            .group("s")
            // A lease far longer than the test: only static membership explains
            // a prompt takeover.
            .dynamic_member("a", Duration::from_secs(600))
            .heartbeat(Duration::from_millis(20))
            .build()
    };
    let mut old = member().await.unwrap();
    let first = conduit_testkit::tail::take(&mut old, 30, PHASE).await;
    old.commit(&first[19].position).await.unwrap();
    let late = first[29].position.clone();

    let started = Instant::now();
    let mut new = member().await.unwrap();
    let resumed = conduit_testkit::tail::take(&mut new, 1, PHASE).await;
    println!("same id took over in {:?}", started.elapsed());
    assert!(started.elapsed() < PHASE);
    assert_eq!(
        new.partitions().len(),
        4,
        "every partition moved to the new process"
    );
    // The old process's late commit is refused (fenced by the higher epoch).
    assert!(
        matches!(old.commit(&late).await, Err(PintailError::NotOwner { .. })),
        "a late commit of the old process must be refused"
    );
    // And its next upkeep stops it.
    let stopped = loop {
        match old.next_timeout(Duration::from_millis(50)).await {
            Err(e) => break e,
            Ok(_) => assert!(started.elapsed() < PHASE, "the old process was not fenced"),
        }
    };
    assert!(
        matches!(stopped, PintailError::MemberFenced { .. }),
        "{stopped}"
    );
    // The new process resumed after the old one's last commit: what that commit
    // covered (messages up to it in its partition) never comes again; every other
    // message comes exactly once from the new process.
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for m in resumed
        .iter()
        .chain(&conduit_testkit::tail::drain(&mut new, Duration::from_millis(500)).await)
    {
        *seen
            .entry(String::from_utf8(m.payload.to_vec()).unwrap())
            .or_default() += 1;
    }
    let covered: Vec<String> = first[..20]
        .iter()
        .filter(|m| m.position.partition() == first[19].position.partition())
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    for p in &all {
        let expected = if covered.contains(p) { 0 } else { 1 };
        assert_eq!(seen.get(p).copied().unwrap_or(0), expected, "{p}");
    }
}
