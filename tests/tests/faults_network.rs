//! Network faults between two datacenters (issue 20), with real processes on
//! both sides of a link that is cut and rate-limited:
//!
//! * **east**: a real HDFS inside a network namespace ([`conduit_testkit::netns`]),
//!   its collector (`conduit collector`) and worker (`conduit worker`, local job
//!   and the mirror of the merged view), all inside the namespace;
//! * **west**: a second real HDFS in the test's (root) namespace, bound to west's
//!   end of the link, its collector and its worker, which merges both
//!   datacenters' local views into west's merged view reading east's HDFS
//!   across the link. East's worker mirrors that merged view reading west's
//!   HDFS across the same link, so a cut stops the mirror too.
//!
//! A real Scribe client per datacenter sends events throughout. The link is cut
//! (packets vanish: a blackhole route, see the netns module) for longer than
//! the lag allowance (`max_source_lag_secs = 75` here; 300 s by default), healed,
//! then rate-limited, cut and healed again. Asserted with exact counts against
//! the clients' acknowledgements: merged minutes seal without east during the
//! cut (`missing_clusters = ["east"]`), east's backlog lands afterwards exactly
//! once (marked late), the mirror on east falls behind during each cut (its
//! calls to west time out and are counted, its lag grows) and catches up after
//! the heal, ending byte-identical to the merged view, nothing acknowledged is
//! lost or duplicated, the west worker never hangs (its storage calls to east
//! time out, are logged and counted) and its
//! `conduit_worker_source_lag_seconds{cluster="east"}` grows through the cut
//! past the allowance and recovers.
//!
//! Run: `cargo test -p conduit-tests --test faults_network -- --nocapture`
//! (root, `ip`, `tc`, Java; the HDFS jars of `scripts/hdfs.sh` are cached).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::format::decode_file;
use conduit_core::layout::Layout;
use conduit_core::manifest::Manifest;
use conduit_core::storage::open_root;
use conduit_core::{Encoding, Minute, SharedStorage, Topic, View};
use conduit_testkit::load::{Load, Seen};
use conduit_testkit::netns::{Link, NetHdfs};
use conduit_testkit::process::{free_port, http_get, metric, CollectorProcess, WorkerProcess};
use conduit_testkit::{runtime, wait};

const TOPIC: &str = "net";
/// `worker.max_source_lag_secs`: short, so a cut of about a minute exceeds it
/// (300 s by default). It cannot be much shorter: a source's lag is measured
/// from the end of its newest sealed minute, so when a minute ends every source
/// lags 60 s plus the seconds its local seal takes, and with an allowance below
/// that the merge would skip healthy sources too.
const LAG_SECS: u64 = 75;
/// `worker.storage_timeout_ms`.
const STORAGE_TIMEOUT_MS: u64 = 2000;
/// A merged minute is sealed after its minute ends, plus the lag allowance
/// while east is cut, plus a few passes.
const MINUTE_TIMEOUT: Duration = Duration::from_secs(200);

/// The two datacenters and everything running in them.
struct Dcs {
    // Dropped in this order: processes first, then HDFS, then the namespace.
    east_worker: WorkerProcess,
    west_worker: WorkerProcess,
    east_collector: CollectorProcess,
    west_collector: CollectorProcess,
    _east_hdfs: NetHdfs,
    _west_hdfs: NetHdfs,
    link: Link,
    west: SharedStorage,
    east: SharedStorage,
}

fn config(east_uri: &str, west_uri: &str) -> String {
    format!(
        r#"[clusters.east]
root = "{east_uri}"

[clusters.west]
root = "{west_uri}"

[topic_defaults]
encoding = "lines"
merge_into = "west"
merge_sources = ["east", "west"]
mirrors = ["east"]

[worker]
interval_ms = 200
max_source_lag_secs = {LAG_SECS}
storage_timeout_ms = {STORAGE_TIMEOUT_MS}
"#
    )
}

fn start(rt: &tokio::runtime::Runtime, test: &str, dir: &Path) -> Option<Dcs> {
    let link = Link::create(test)?;
    // Both clusters at once (each takes seconds to come up).
    let (east_hdfs, west_hdfs) = std::thread::scope(|s| {
        let west = s.spawn(|| NetHdfs::start_west(test, &link, &dir.join("hdfs-west")));
        let east = NetHdfs::start(test, &link, &dir.join("hdfs-east"));
        (east, west.join().expect("west's HDFS starts"))
    });
    let (east_hdfs, west_hdfs) = (east_hdfs?, west_hdfs?);
    let east_uri = format!("{}/{test}", east_hdfs.url);
    let west_uri = format!("{}/{test}", west_hdfs.url);
    let logs = dir.join("logs");
    let cfg = dir.join("conduit.toml");
    std::fs::write(&cfg, config(&east_uri, &west_uri)).unwrap();
    let cfg = cfg.to_str().unwrap();
    let lan = |port: u16| format!("{}:{port}", link.east_lan);
    let east_collector = CollectorProcess::start_in_netns(
        &link.ns,
        &east_uri,
        "e1",
        &lan(free_port()),
        &lan(free_port()),
        &["--config", cfg, "--cluster", "east"],
        &logs,
    )
    .expect("east's collector starts");
    let west_collector = CollectorProcess::start(
        &west_uri,
        "w1",
        &["--config", cfg, "--cluster", "west"],
        &logs,
    )
    .expect("west's collector starts");
    let east_worker = WorkerProcess::start_in_netns(
        &link.ns,
        &["--config", cfg, "--cluster", "east"],
        &lan(free_port()),
        &logs,
    )
    .expect("east's worker starts");
    let west_worker = WorkerProcess::start(&["--config", cfg, "--cluster", "west"], &logs)
        .expect("west's worker starts");
    let east = rt.block_on(open_root(&east_uri)).unwrap();
    let west = rt.block_on(open_root(&west_uri)).unwrap();
    Some(Dcs {
        east_worker,
        west_worker,
        east_collector,
        west_collector,
        _east_hdfs: east_hdfs,
        _west_hdfs: west_hdfs,
        link,
        west,
        east,
    })
}

/// A sealed minute of a view: its manifest and the marker's bytes.
type Sealed = (Manifest, Bytes);

/// The sealed merged minutes of [`TOPIC`] on `storage` from `from` on, up to
/// the first unsealed one after a sealed one (merged minutes are contiguous).
async fn sealed(storage: &SharedStorage, from: Minute) -> Vec<Sealed> {
    let topic = Topic::new(TOPIC).unwrap();
    let now = Minute::from_datetime(chrono::Utc::now()).unwrap();
    let mut out = Vec::new();
    let mut m = from;
    while m <= now {
        let marker = Layout::success_marker(&Manifest::dir(View::Merged, &topic, m));
        match storage.read(&marker).await {
            Ok(bytes) => out.push((Manifest::parse(&marker, &bytes).unwrap(), bytes)),
            Err(e) if e.is_not_found() && out.is_empty() => {}
            Err(e) if e.is_not_found() => break,
            Err(e) => panic!("read {marker}: {e}"),
        }
        m = m.next().unwrap();
    }
    out
}

/// How often each payload is stored in `minutes` (read from `storage`), and
/// asserts no file is listed by two minutes.
async fn payload_counts(storage: &SharedStorage, minutes: &[Sealed]) -> HashMap<Bytes, usize> {
    let mut counts = HashMap::new();
    let mut names = BTreeSet::new();
    for (manifest, _) in minutes {
        let dir = Manifest::dir(View::Merged, &manifest.topic, manifest.minute);
        for file in &manifest.files {
            assert!(
                names.insert(file.name.clone()),
                "{} is listed by two merged minutes",
                file.name
            );
            let path = format!("{dir}/{}", file.name);
            let bytes = storage.read(&path).await.unwrap();
            let decoded = decode_file(&path, &bytes, Encoding::Lines).unwrap();
            assert_eq!(decoded.payloads.len() as u64, file.records, "{path}");
            for p in decoded.payloads {
                *counts.entry(p).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// A worker's log without the lines repeated every pass while a cluster is
/// unreachable.
fn worker_log(worker: &WorkerProcess) -> String {
    worker
        .log()
        .lines()
        .filter(|l| !l.contains("cannot list the local view of a merge source"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn lists(names: &[conduit_core::NodeName], cluster: &str) -> bool {
    names.iter().any(|n| n.as_str() == cluster)
}

/// West's worker metrics we follow: (east's source lag, storage timeouts to
/// east, merge passes + failed passes).
fn west_metrics(dcs: &Dcs) -> (Option<f64>, f64, f64) {
    let text = dcs.west_worker.metrics();
    let lag = metric(
        &text,
        &format!(r#"conduit_worker_source_lag_seconds{{topic="{TOPIC}",cluster="east"}}"#),
    );
    let timeouts = metric(
        &text,
        r#"conduit_worker_storage_timeouts_total{cluster="east"}"#,
    )
    .unwrap_or(0.0);
    let passes = metric(&text, r#"conduit_worker_passes_total{job="merge"}"#).unwrap_or(0.0)
        + metric(&text, r#"conduit_worker_errors_total{job="merge"}"#).unwrap_or(0.0);
    (lag, timeouts, passes)
}

/// East's worker metrics we follow (scraped over the lan pair, which the cut
/// leaves up): (the mirror's lag, storage timeouts to west).
fn east_metrics(dcs: &Dcs) -> (Option<f64>, f64) {
    let text = dcs.east_worker.metrics();
    let lag = metric(
        &text,
        &format!(r#"conduit_worker_lag_seconds{{view="mirror",topic="{TOPIC}"}}"#),
    );
    let timeouts = metric(
        &text,
        r#"conduit_worker_storage_timeouts_total{cluster="west"}"#,
    )
    .unwrap_or(0.0);
    (lag, timeouts)
}

/// East's failed mirror passes (`conduit_worker_errors_total{job="mirror"}`).
fn mirror_errors(dcs: &Dcs) -> f64 {
    metric(
        &dcs.east_worker.metrics(),
        r#"conduit_worker_errors_total{job="mirror"}"#,
    )
    .unwrap_or(0.0)
}

/// How many WARN lines of a worker's log contain every one of `parts`.
fn warnings(worker: &WorkerProcess, parts: &[&str]) -> usize {
    worker
        .log()
        .lines()
        .filter(|l| l.contains(r#""level":"WARN""#) && parts.iter().all(|p| l.contains(p)))
        .count()
}

/// How many times a worker logged at WARN that its mirror pass failed.
fn mirror_pass_warnings(worker: &WorkerProcess) -> usize {
    warnings(
        worker,
        &["pass failed; retrying next interval", r#""job":"mirror""#],
    )
}

/// How many times a worker logged at WARN that it cannot list its mirror
/// origin.
fn origin_warnings(worker: &WorkerProcess) -> usize {
    warnings(
        worker,
        &["cannot list the merged view of the mirror origin"],
    )
}

/// What one cut showed.
#[derive(Debug)]
struct Cut {
    /// How long the link was cut.
    cut_for: Duration,
    /// Merged minutes sealed without east.
    missing: Vec<Minute>,
    /// East's source lag: smallest and largest sample during the cut.
    lag_min: f64,
    lag_max: f64,
    /// From the heal until a merged minute included east again.
    catch_up: Duration,
    /// The minute that received east's backlog, how long after its end it was
    /// sealed (it cannot be sealed before), and its late files of east.
    backlog_minute: Minute,
    backlog_sealed_after: f64,
    late_files: usize,
    /// East's source lag once recovered, and how long after the heal.
    lag_after: f64,
    lag_recovered_after: Duration,
    /// The mirror on east: its lag (smallest and largest sample during the cut),
    /// its storage timeouts to west during the cut, how long after the heal it
    /// had mirrored the minutes sealed during the cut and the backlog minute,
    /// and its lag then.
    mirror_lag_min: f64,
    mirror_lag_max: f64,
    mirror_timeouts: f64,
    mirror_caught_up: f64,
    mirror_catch_up: Duration,
    mirror_lag_after: f64,
}

/// Cuts the link until a merged minute is sealed without east, heals it and
/// waits until a merged minute includes east again.
fn cut_and_heal(rt: &tokio::runtime::Runtime, dcs: &Dcs, from: Minute, what: &str) -> Cut {
    let (_, timeouts_before, passes_before) = west_metrics(dcs);
    let (_, mirror_timeouts_before) = east_metrics(dcs);
    let origin_warnings_before = origin_warnings(&dcs.east_worker);
    let mirror_errors_before = mirror_errors(dcs);
    let mirror_pass_warnings_before = mirror_pass_warnings(&dcs.east_worker);
    let before = rt.block_on(sealed(&dcs.west, from)).len();
    let cut_at = Instant::now();
    dcs.link.cut();
    let mut lags = Vec::new();
    let mut mirror_lags = Vec::new();
    let missing = wait::until_blocking(
        &format!("{what}: a merged minute sealed without east"),
        MINUTE_TIMEOUT,
        || {
            // /health answers and passes go on: the worker does not hang.
            let (status, _) = http_get(&dcs.west_worker.http_addr, "/health").unwrap();
            assert_eq!(status, 200);
            lags.extend(west_metrics(dcs).0);
            mirror_lags.extend(east_metrics(dcs).0);
            let minutes = rt.block_on(sealed(&dcs.west, from));
            let missing: Vec<Minute> = minutes[before..]
                .iter()
                .filter(|(m, _)| lists(&m.missing_clusters, "east"))
                .map(|(m, _)| m.minute)
                .collect();
            (!missing.is_empty()).then_some(missing)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; west worker log:\n{}", worker_log(&dcs.west_worker)));
    // The merge sealed that minute because east's lag exceeded the allowance;
    // the gauge shows the same lag (refreshed every second and after every
    // round, so the round that sealed may be a moment ahead of the last sample).
    let lag_at_seal = wait::until_blocking(
        &format!("{what}: east's source lag gauge above {LAG_SECS} s"),
        Duration::from_secs(10),
        || west_metrics(dcs).0.filter(|lag| *lag > LAG_SECS as f64),
    )
    .unwrap_or_else(|e| panic!("{e}; samples during the cut: {lags:?}"));
    lags.push(lag_at_seal);
    let (_, timeouts, passes) = west_metrics(dcs);
    let (_, mirror_timeouts) = east_metrics(dcs);
    let origin_warnings = origin_warnings(&dcs.east_worker) - origin_warnings_before;
    let mirror_failed = mirror_errors(dcs) - mirror_errors_before;
    let mirror_pass_warnings = mirror_pass_warnings(&dcs.east_worker) - mirror_pass_warnings_before;
    dcs.link.heal();
    let healed_at_wall = chrono::Utc::now();
    let cut_for = cut_at.elapsed();
    // The mirror cannot list west's merged view during the cut: its passes
    // fail and are counted (they used to count as completed), and the daemon
    // says so at WARN at most once per 10 s, not once per pass.
    assert!(
        mirror_failed >= 1.0,
        "east's mirror passes failed during the cut and were counted ({mirror_failed})"
    );
    let most = cut_for.as_secs() / 10 + 2;
    assert!(
        (1..=most as usize).contains(&mirror_pass_warnings),
        "failed mirror passes logged at WARN once per 10 s: {mirror_pass_warnings} lines in {cut_for:?} ({mirror_failed} failed passes)"
    );
    let healed_at = Instant::now();
    assert!(
        timeouts > timeouts_before,
        "storage calls to east timed out and were counted ({timeouts_before} -> {timeouts})"
    );
    assert!(
        passes >= passes_before + 3.0,
        "merge passes went on during the cut ({passes_before} -> {passes}); west worker log:\n{}",
        worker_log(&dcs.west_worker)
    );
    let log = dcs.west_worker.log();
    assert!(
        log.contains("storage call to a cluster timed out") && log.contains("\"cluster\":\"east\""),
        "the timeouts are logged naming the cluster:\n{log}"
    );
    for (m, _) in rt.block_on(sealed(&dcs.west, from)).iter().skip(before) {
        if lists(&m.missing_clusters, "east") {
            assert_eq!(
                (m.clusters.len(), lists(&m.clusters, "west")),
                (1, true),
                "{}: only west included while east is cut: {m:?}; west worker log:\n{}",
                m.minute,
                worker_log(&dcs.west_worker)
            );
        }
    }
    // East's source lag grew through the cut, by about its length. (Not from
    // the first sample: a cut that starts as a minute is sealed may be sampled
    // before that round refreshed the gauge, from the minute before.)
    let lag_min = lags.iter().copied().fold(f64::MAX, f64::min);
    let lag_max = lags.iter().copied().fold(0.0, f64::max);
    assert!(
        lag_max > LAG_SECS as f64 && lag_max > lag_min + 60.0,
        "east's source lag grows through the cut: {lags:?}"
    );

    // When east's source lag gauge is back under a minute: as soon as a pass
    // reads east again, not only once the next merged minute is due.
    let mut lag_recovered = None;
    let recovered = |lag_recovered: &mut Option<(Duration, f64)>| {
        if lag_recovered.is_none() {
            if let Some(lag) = west_metrics(dcs).0.filter(|lag| *lag < 65.0) {
                *lag_recovered = Some((healed_at.elapsed(), lag));
            }
        }
    };
    let (backlog, catch_up) = wait::until_blocking(
        &format!("{what}: east included again after the heal"),
        MINUTE_TIMEOUT,
        || {
            recovered(&mut lag_recovered);
            let minutes = rt.block_on(sealed(&dcs.west, from));
            let first_missing = minutes
                .iter()
                .position(|(m, _)| m.minute == missing[0])
                .unwrap();
            minutes[first_missing..]
                .iter()
                .find(|(m, _)| lists(&m.clusters, "east"))
                .map(|(m, _)| (m.clone(), healed_at.elapsed()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; west worker log:\n{}", worker_log(&dcs.west_worker)));
    let late: Vec<_> = backlog
        .files
        .iter()
        .filter(|f| f.late && f.cluster.as_str() == "east")
        .collect();
    assert!(
        !late.is_empty(),
        "{}: east's backlog lands marked late",
        backlog.minute
    );
    for m in &missing {
        assert!(
            late.iter().any(|f| f.minute == *m),
            "east's files of {m} arrive late in {}",
            backlog.minute
        );
    }
    let (lag_recovered_after, lag_after) = wait::until_blocking(
        &format!("{what}: east's source lag to recover"),
        MINUTE_TIMEOUT,
        || {
            recovered(&mut lag_recovered);
            lag_recovered
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The mirror on east reads west's HDFS across the same link: it fell
    // behind during the cut (its calls to west timed out) and catches up after
    // the heal, the backlog minute included.
    assert!(
        mirror_timeouts > mirror_timeouts_before,
        "east's storage calls to west timed out during the cut and were counted \
         ({mirror_timeouts_before} -> {mirror_timeouts}); east worker log:\n{}",
        dcs.east_worker.log()
    );
    assert!(!mirror_lags.is_empty(), "mirror lag samples during the cut");
    let mirror_lag_min = mirror_lags.iter().copied().fold(f64::MAX, f64::min);
    let mirror_lag_max = mirror_lags.iter().copied().fold(0.0, f64::max);
    // By about the length of the cut (the last sample may precede the end of
    // the cut by a round).
    assert!(
        mirror_lag_max > mirror_lag_min + 60.0,
        "the mirror's lag grows through the cut: {mirror_lags:?}"
    );
    assert_eq!(
        origin_warnings, 1,
        "the unreachable origin is logged at WARN once per cut, then at DEBUG"
    );
    let mirror_catch_up = wait::until_blocking(
        &format!("{what}: the mirror on east to mirror {}", backlog.minute),
        MINUTE_TIMEOUT,
        || {
            rt.block_on(sealed(&dcs.east, from))
                .last()
                .is_some_and(|(m, _)| m.minute >= backlog.minute)
                .then(|| healed_at.elapsed())
        },
    )
    .unwrap_or_else(|e| panic!("{e}; east worker log:\n{}", dcs.east_worker.log()));
    // When the mirror sealed the last minute sealed during the cut (the close
    // of its `_SUCCESS`, by east's NameNode clock: this machine's).
    let topic = Topic::new(TOPIC).unwrap();
    let marker = Layout::success_marker(&Manifest::dir(
        View::Merged,
        &topic,
        *missing.last().unwrap(),
    ));
    let mirrored_ms = rt.block_on(dcs.east.stat(&marker)).unwrap().modified_ms;
    let mirror_caught_up = (mirrored_ms - healed_at_wall.timestamp_millis()) as f64 / 1000.0;
    assert!(
        mirror_caught_up > 0.0,
        "{marker} was mirrored after the heal, not across the cut link ({mirror_caught_up} s)"
    );
    let mirror_lag_after = wait::until_blocking(
        &format!("{what}: the mirror's lag to recover"),
        MINUTE_TIMEOUT,
        || east_metrics(dcs).0.filter(|lag| *lag < 65.0),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Cut {
        cut_for,
        missing,
        lag_min,
        lag_max,
        catch_up,
        backlog_minute: backlog.minute,
        backlog_sealed_after: (backlog.sealed_at - backlog.minute.end()).num_milliseconds() as f64
            / 1000.0,
        late_files: late.len(),
        lag_after,
        lag_recovered_after,
        mirror_lag_min,
        mirror_lag_max,
        mirror_timeouts: mirror_timeouts - mirror_timeouts_before,
        mirror_caught_up,
        mirror_catch_up,
        mirror_lag_after,
    }
}

#[test]
fn a_cut_and_a_degraded_link_between_datacenters_lose_and_duplicate_nothing() {
    let test = "faults_network";
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let Some(dcs) = start(&rt, test, dir.path()) else {
        return;
    };
    let from = Minute::from_datetime(chrono::Utc::now())
        .unwrap()
        .prev()
        .unwrap();
    let pause = Duration::from_millis(100);
    let east_addr = dcs.east_collector.thrift_addr.clone();
    let east_load = Load::start(&rt, &east_addr, TOPIC, "east", 20, pause);
    let west_addr = dcs.west_collector.thrift_addr.clone();
    let west_load = Load::start(&rt, &west_addr, TOPIC, "west", 20, pause);

    // Healthy: a merged minute with events of both datacenters, mirrored on
    // east across the link.
    let healthy = wait::until_blocking(
        "a merged minute of both datacenters",
        MINUTE_TIMEOUT,
        || {
            rt.block_on(sealed(&dcs.west, from))
                .iter()
                .find(|(m, _)| {
                    lists(&m.clusters, "east")
                        && m.files.iter().any(|f| f.cluster.as_str() == "east")
                        && m.files.iter().any(|f| f.cluster.as_str() == "west")
                })
                .map(|(m, _)| m.minute)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; west worker log:\n{}", worker_log(&dcs.west_worker)));
    wait::until_blocking(
        &format!("the mirror on east to mirror {healthy}"),
        MINUTE_TIMEOUT,
        || {
            let mirrored = rt.block_on(sealed(&dcs.east, from)).last()?.0.minute;
            (mirrored >= healthy && east_metrics(&dcs).0.is_some()).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}; east worker log:\n{}", dcs.east_worker.log()));

    let clean = cut_and_heal(&rt, &dcs, from, "cut");
    println!("cut, clean heal: {clean:?}");

    // Degraded: rate-limited; merged minutes keep including east.
    let rate = "1mbit";
    dcs.link.rate_limit(rate);
    let degraded_from = rt.block_on(sealed(&dcs.west, from)).len();
    let degraded = wait::until_blocking(
        "a merged minute sealed over the rate-limited link",
        MINUTE_TIMEOUT,
        || {
            let minutes = rt.block_on(sealed(&dcs.west, from));
            minutes[degraded_from..]
                .iter()
                .find(|(m, _)| {
                    m.files
                        .iter()
                        .any(|f| f.cluster.as_str() == "east" && !f.late)
                })
                .map(|(m, _)| m.clone())
        },
    )
    .unwrap_or_else(|e| panic!("{e}; west worker log:\n{}", worker_log(&dcs.west_worker)));
    assert!(
        degraded.missing_clusters.is_empty(),
        "{}: east is merged over the slow link, not skipped",
        degraded.minute
    );
    let degraded_delay = (degraded.sealed_at - degraded.minute.end()).num_milliseconds();
    // A cut while rate-limited, healed into the slow link.
    let slow = cut_and_heal(&rt, &dcs, from, "cut, rate-limited");
    println!("cut, heal into a {rate} link: {slow:?}");
    dcs.link.unlimit();

    let east_seen = east_load.stop(&rt);
    let west_seen = west_load.stop(&rt);
    let all_stored = |seen: &Seen, counts: &HashMap<Bytes, usize>| {
        (0..seen.calls.len()).all(|i| {
            let (first, ok) = seen.calls[i];
            !ok || counts.contains_key(seen.payload(first + seen.per_call - 1).as_bytes())
        })
    };
    let (minutes, counts) = wait::until_blocking(
        "every acknowledged event in the merged view",
        MINUTE_TIMEOUT,
        || {
            let minutes = rt.block_on(sealed(&dcs.west, from));
            let counts = rt.block_on(payload_counts(&dcs.west, &minutes));
            (all_stored(&east_seen, &counts) && all_stored(&west_seen, &counts))
                .then_some((minutes, counts))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; west worker log:\n{}", worker_log(&dcs.west_worker)));
    let (east_acked, east_extra) = east_seen.check_exactly_once(&counts);
    let (west_acked, west_extra) = west_seen.check_exactly_once(&counts);
    let skipped: Vec<Minute> = minutes
        .iter()
        .filter(|(m, _)| lists(&m.missing_clusters, "west"))
        .map(|(m, _)| m.minute)
        .collect();
    assert!(
        skipped.is_empty(),
        "west, always reachable, was never skipped: {skipped:?}"
    );
    let total: usize = counts.values().sum();
    assert_eq!(
        total as u64,
        east_acked + east_extra + west_acked + west_extra,
        "the merged view holds only the clients' events"
    );

    // The mirror on east catches up, byte-identical.
    let newest = minutes.last().unwrap().0.minute;
    let mirror = wait::until_blocking("the mirror on east to catch up", MINUTE_TIMEOUT, || {
        let mirror = rt.block_on(sealed(&dcs.east, from));
        mirror
            .last()
            .is_some_and(|(m, _)| m.minute >= newest)
            .then_some(mirror)
    })
    .unwrap_or_else(|e| panic!("{e}; east worker log:\n{}", dcs.east_worker.log()));
    for ((merged, merged_bytes), (mirrored, mirrored_bytes)) in minutes.iter().zip(&mirror) {
        assert_eq!(merged.minute, mirrored.minute);
        assert_eq!(merged_bytes, mirrored_bytes, "{}", merged.minute);
    }
    let mirror_counts = rt.block_on(payload_counts(&dcs.east, &mirror[..minutes.len()]));
    assert_eq!(mirror_counts, counts, "the mirror holds the same events");

    println!(
        "network faults between datacenters: east acked {east_acked} events ({} calls refused, \
         longest ack gap {:?}), west acked {west_acked} ({} refused, longest gap {:?}); \
         merged view: {} minutes, {total} events, 0 lost, 0 duplicated, unacknowledged stored \
         {}; mirror on east byte-identical ({} minutes)",
        east_seen.refused,
        east_seen.longest_gap,
        west_seen.refused,
        west_seen.longest_gap,
        minutes.len(),
        east_extra + west_extra,
        mirror.len()
    );
    let slow_label = format!("heal into a {rate} link");
    for (label, cut) in [("clean heal", &clean), (slow_label.as_str(), &slow)] {
        println!(
            "  cut ({label}): link cut {:.1}s, {} merged minute(s) sealed without east {:?}, \
             east's source lag {:.1}s -> {:.1}s during the cut and {:.1}s {:.1}s after the heal, \
             backlog of {} late file(s) in {} sealed {:.1}s after the heal \
             ({:.1}s after that minute ended); mirror on east: lag {:.1}s -> {:.1}s during \
             the cut ({} timeouts to west), the cut's minute(s) mirrored {:.1}s after the heal, \
             {} {:.1}s after it, lag {:.1}s after",
            cut.cut_for.as_secs_f64(),
            cut.missing.len(),
            cut.missing,
            cut.lag_min,
            cut.lag_max,
            cut.lag_after,
            cut.lag_recovered_after.as_secs_f64(),
            cut.late_files,
            cut.backlog_minute,
            cut.catch_up.as_secs_f64(),
            cut.backlog_sealed_after,
            cut.mirror_lag_min,
            cut.mirror_lag_max,
            cut.mirror_timeouts,
            cut.mirror_caught_up,
            cut.backlog_minute,
            cut.mirror_catch_up.as_secs_f64(),
            cut.mirror_lag_after
        );
    }
    println!(
        "  rate-limited to {rate}: {} sealed with east {:.1}s after its end",
        degraded.minute,
        degraded_delay as f64 / 1000.0
    );
}
