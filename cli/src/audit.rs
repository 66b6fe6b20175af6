//! `conduit audit`: count one topic's events at every tier, per minute.
//!
//! Tiers, left to right in the table:
//!
//! - **acked**: events publishers had acknowledged, summed from the `_audit`
//!   records they publish (`docs/format.md` §6, `AuditRecord`), read from the
//!   collector and local views of every cluster. The minute is the publisher's
//!   enqueue minute.
//! - **collected** (per cluster): records in the collector files of the topic,
//!   whether still in `data/` or already moved to `streams_local/`, by the file's
//!   minute (the collector's arrival minute).
//! - **local** (per cluster): records listed in sealed local manifests, by the
//!   data's own minute (late files count for their original minute).
//! - **merged** / **mirror** (per cluster holding `streams/`): records listed in
//!   sealed merged manifests, by the data's own minute. The cluster named by the
//!   topic's `merge_into` is `merged`; others are `mirror`.
//!
//! A last column, **invalid**, counts the topic's entries the collectors sent to
//! `_invalid` instead (by arrival minute, from the `_invalid` records), with the
//! reasons under the table.
//!
//! Flags per minute: `LOSS` when a later storage tier has fewer records than the
//! tier it is built from, `DUP` when it has more, `unsealed` when a view has not
//! sealed the minute yet (it is not judged), `edge` when acked and collected
//! differ only because the publisher's and the collector's clocks put events on
//! different sides of a minute boundary (the totals over the range agree).
//!
//! Over the range, against the acknowledged total (when the topic has `_audit`
//! records): **loss** when the collectors hold fewer events than publishers had
//! acknowledged; **duplicates** when any tier (all collectors, all local views,
//! each merged view or mirror) holds more, with how many. Copies of a batch that
//! two collectors stored (publisher failover) and that the local seal dropped are
//! shown from the manifests' `duplicates_dropped`. Also reported: data files set
//! aside in `quarantine/` or listed in a manifest's `quarantined` (their records
//! are missing), and `_audit` records that are malformed (not JSON of the
//! record's shape, an invalid topic or minute, `acked` above 10^12, or a sum that
//! would overflow): they are counted, never summed, so a forged record can neither
//! fake a loss with absurd values nor hide one by wrapping a sum.
//!
//! Totals over the range are exact for closed, sealed ranges; the exit status is
//! non-zero when any storage tier shows loss or duplication, when acked exceeds
//! collected or a tier exceeds acked over the range, when a file of the topic is
//! quarantined, or when malformed `_audit` records concern the topic.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use conduit_core::format::{read_file, read_trailer, FormatError};
use conduit_core::layout::Layout;
use conduit_core::manifest::Manifest;
use conduit_core::records::{AuditRecord, AuditRecordError, InvalidRecord};
use conduit_core::storage::StorageError;
use conduit_core::tree::{self, MinuteWalker};
use conduit_core::{Config, Encoding, Minute, NodeName, SharedStorage, Storage, Topic, View};

use crate::verify::{count_records, parse_time, quarantined_files, QUARANTINE_HELP};

/// Arguments of `conduit audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Configuration file naming the clusters and the topic's merge/mirror roles.
    #[arg(long, value_name = "FILE", required_unless_present = "root")]
    config: Option<String>,

    /// Storage root of a single cluster, instead of a config file.
    #[arg(long, value_name = "DIR|URI", conflicts_with = "config")]
    root: Option<String>,

    /// Cluster name used with `--root`.
    #[arg(long, default_value = "dc1")]
    cluster: String,

    /// The topic to audit.
    #[arg(long)]
    topic: String,

    /// First minute (UTC `2026-11-22T10:00`, or relative like `2h`).
    #[arg(long, value_name = "TIME")]
    from: String,

    /// Last minute, inclusive (same forms as `--from`).
    #[arg(long, value_name = "TIME")]
    to: String,

    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,

    /// Minutes that started less than this many seconds ago are not compared
    /// with the acknowledged counts for duplicates: publishers send their
    /// `_audit` counts every `audit_interval` (60 s by default), so the newest
    /// minutes are not fully acknowledged in `_audit` yet (0: judge every minute,
    /// e.g. once every publisher has closed).
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    settle_secs: u64,
}

/// Per-minute counts of one tier.
type Counts = BTreeMap<Minute, u64>;

#[derive(Debug, Default, serde::Serialize)]
struct Tier {
    name: String,
    counts: Counts,
    /// Minutes the view has not sealed (not judged).
    #[serde(skip)]
    unsealed: std::collections::BTreeSet<Minute>,
    /// The oldest directory of the view in range: minutes before it are before
    /// the topic's stream started there (or purged), not waiting to be sealed.
    #[serde(skip)]
    first_dir: Option<Minute>,
    /// Records the seal dropped as copies of batches another collector stored
    /// (manifests' `duplicates_dropped`, directories in range).
    #[serde(skip)]
    dropped: u64,
    /// Files the seal set aside (manifests' `quarantined`): directory minute, name,
    /// reason.
    #[serde(skip)]
    quarantined: Vec<(Minute, String, String)>,
}

impl Tier {
    /// Whether minute `m` is still to be sealed, given the count of the tier it
    /// is built from: a minute with no directory before the view's first one, and
    /// nothing upstream, is simply before the stream (not flagged, judged as 0).
    fn waiting(&self, m: Minute, upstream: u64) -> bool {
        self.unsealed.contains(&m) && !(upstream == 0 && self.first_dir.is_none_or(|f| m < f))
    }
}

/// Records of the data file at `path`: from its trailer when closed, else by
/// decoding its complete frames.
async fn file_records(storage: &dyn Storage, path: &str, len: u64) -> anyhow::Result<u64> {
    if let Some(trailer) = read_trailer(storage, path, len).await? {
        return Ok(trailer.records);
    }
    let buf = storage.read(path).await?;
    count_records(&buf).map_err(|(offset, reason)| {
        anyhow::anyhow!("{path}: frame at offset {offset} does not decode: {reason}")
    })
}

/// A collector file of a topic, wherever it is now.
struct CollectorFile {
    /// The file's own minute (from its name).
    minute: Minute,
    path: String,
    len: u64,
}

/// Every collector file of `topic`: those in the collectors' `data/` directories
/// (`tree::collector_files`: the files the worker moves) and those the worker
/// moved into local minute directories from `since` on, each once. The worker
/// moves files while this runs: `data/` is listed first, so a file moved
/// meanwhile is found in its minute directory (and kept once, by its collector,
/// minute and sequence number); one moved after the listing, before it is read,
/// makes the read fail with "not found" (see [`retry_moved`]).
async fn collector_files(
    storage: &dyn Storage,
    topic: &Topic,
    since: Minute,
) -> anyhow::Result<Vec<CollectorFile>> {
    // Keyed by (collector, minute, seq): the same file in `data/` and in its
    // minute directory is one entry, the later listing's.
    let mut files: BTreeMap<(NodeName, Minute, u32), CollectorFile> = BTreeMap::new();
    let mut keep = |collector: NodeName, minute: Minute, seq: u32, path: String, len: u64| {
        files.insert(
            (collector, minute, seq),
            CollectorFile { minute, path, len },
        );
    };
    for file in tree::collector_files(storage, topic).await? {
        let (minute, seq) = (file.name.minute, file.name.seq);
        keep(file.collector, minute, seq, file.path, file.len);
    }
    // Late files land in later directories: look from `since` on, without an end.
    let mut dirs = MinuteWalker::new(storage, View::Local, topic).from(since);
    while let Some(minute) = dirs.next().await? {
        let dir = Layout::minute_dir(View::Local, topic, minute);
        for file in storage.list_or_empty(&dir).await? {
            if let Some(name) = Layout::local_file_in(topic, &file.name) {
                keep(name.collector, name.minute, name.seq, file.path, file.len);
            }
        }
    }
    Ok(files.into_values().collect())
}

/// Runs `scan` again (up to 10 times) while it fails because a file it listed was
/// moved by the worker before it was read.
async fn retry_moved<T, F, Fut>(mut scan: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match scan().await {
            Err(e) if attempt < 10 && is_not_found(&e) => {
                tracing::debug!(attempt, error = %e, "a file moved while auditing; listing again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<StorageError>()
            .is_some_and(StorageError::is_not_found)
            || cause
                .downcast_ref::<FormatError>()
                .is_some_and(|f| matches!(f, FormatError::Storage(s) if s.is_not_found()))
    })
}

/// Collector-written records of `topic` by the file's minute, from `data/` and
/// `streams_local/` (files keep their collector name there).
async fn collected(
    storage: &dyn Storage,
    topic: &Topic,
    from: Minute,
    to: Minute,
) -> anyhow::Result<Counts> {
    retry_moved(|| async {
        let mut counts = Counts::new();
        for file in collector_files(storage, topic, from).await? {
            if file.minute >= from && file.minute <= to {
                *counts.entry(file.minute).or_default() +=
                    file_records(storage, &file.path, file.len).await?;
            }
        }
        Ok(counts)
    })
    .await
}

/// Records listed in sealed manifests of `view`, by the data's own minute, plus
/// the directories in range that are not sealed yet.
async fn sealed(
    storage: &dyn Storage,
    view: View,
    topic: &Topic,
    from: Minute,
    to: Minute,
) -> anyhow::Result<Tier> {
    let mut tier = Tier::default();
    let dirs = MinuteWalker::new(storage, view, topic)
        .from(from)
        .all()
        .await?;
    tier.first_dir = dirs.first().copied();
    let mut seen_sealed = std::collections::BTreeSet::new();
    for minute in dirs {
        let dir = Layout::minute_dir(view, topic, minute);
        match Manifest::read(storage, &dir).await? {
            Some(manifest) => {
                seen_sealed.insert(minute);
                if minute <= to {
                    tier.dropped = tier.dropped.saturating_add(manifest.duplicates_dropped);
                    for q in manifest.quarantined {
                        tier.quarantined.push((minute, q.name, q.reason));
                    }
                }
                for file in manifest.files {
                    if file.minute >= from && file.minute <= to {
                        *tier.counts.entry(file.minute).or_default() += file.records;
                    }
                }
            }
            None if minute <= to => {
                tier.unsealed.insert(minute);
            }
            None => {}
        }
    }
    let mut m = from;
    while m <= to {
        if !seen_sealed.contains(&m) {
            tier.unsealed.insert(m);
        }
        m = m.next()?;
    }
    Ok(tier)
}

/// What the `_audit` records say about a topic.
#[derive(Debug, Default)]
struct Acked {
    /// Acknowledged events by enqueue minute (valid records only).
    counts: Counts,
    /// Malformed records that concern the topic (or name no topic): counted,
    /// never summed.
    malformed: u64,
    /// The first few of them, `<file>: <reason>`.
    malformed_examples: Vec<String>,
    /// Records of another format version, skipped.
    other_version: u64,
}

/// Malformed records shown by name.
const MALFORMED_SHOWN: usize = 3;

impl Acked {
    fn malformed(&mut self, file: &str, reason: &str) {
        self.malformed += 1;
        if self.malformed_examples.len() < MALFORMED_SHOWN {
            self.malformed_examples
                .push(format!("{file}: {}", conduit_core::text::capped(reason)));
        }
    }

    /// Adds `acked` events of `minute`; a sum that would overflow is refused.
    fn add(&mut self, minute: Minute, acked: u64) -> Result<(), String> {
        let slot = self.counts.entry(minute).or_default();
        *slot = slot
            .checked_add(acked)
            .ok_or_else(|| format!("acked {acked} would overflow the sum {slot} of {minute}"))?;
        Ok(())
    }
}

/// Whether a JSON payload names `topic` in its `topic` field; `None` when it has
/// no readable `topic`.
fn names_topic(payload: &[u8], topic: &Topic) -> Option<bool> {
    let value = serde_json::from_slice::<serde_json::Value>(payload).ok()?;
    let named = value.get("topic")?.as_str()?;
    Some(named == topic.as_str())
}

/// Whether an `_audit` payload that is not a valid record may concern `topic`:
/// it names `topic`, or no readable topic at all.
fn may_concern(payload: &[u8], topic: &Topic) -> bool {
    names_topic(payload, topic) != Some(false)
}

/// Acknowledged counts for `topic` from the `_audit` records in `storage`, each
/// validated ([`AuditRecord::parse`]) before it is summed.
async fn acked(
    storage: &dyn Storage,
    topic: &Topic,
    from: Minute,
    to: Minute,
    into: &mut Acked,
) -> anyhow::Result<()> {
    let audit = Topic::audit();
    // Audit records are written a little after their minute: look from one hour
    // before `from` (clock skew) to the end.
    let start = from.add_minutes(-60).unwrap_or(from);
    let found = retry_moved(|| async {
        let mut found = Acked::default();
        for file in collector_files(storage, &audit, start).await? {
            let decoded = read_file(storage, &file.path, Encoding::Lines)
                .await
                .with_context(|| format!("reading audit file {}", file.path))?;
            for payload in decoded.payloads {
                match AuditRecord::parse(&payload) {
                    Ok(record) => {
                        // The minute before `from` too: its events can arrive in
                        // `from` (see the duplicate judgement in `run`).
                        let first = from.prev().unwrap_or(from);
                        if record.topic == *topic && record.minute >= first && record.minute <= to {
                            if let Err(reason) = found.add(record.minute, record.acked) {
                                found.malformed(&file.path, &reason);
                            }
                        }
                    }
                    Err(AuditRecordError::OtherVersion { .. }) => {
                        if may_concern(&payload, topic) {
                            found.other_version += 1;
                        }
                    }
                    Err(AuditRecordError::Malformed { reason }) => {
                        if may_concern(&payload, topic) {
                            found.malformed(&file.path, &reason);
                        }
                    }
                }
            }
        }
        Ok(found)
    })
    .await?;
    for (minute, acked) in found.counts {
        if let Err(reason) = into.add(minute, acked) {
            into.malformed("(all clusters)", &reason);
        }
    }
    into.malformed += found.malformed;
    for example in found.malformed_examples {
        if into.malformed_examples.len() < MALFORMED_SHOWN {
            into.malformed_examples.push(example);
        }
    }
    into.other_version += found.other_version;
    Ok(())
}

/// The topic's entries that collectors sent to `_invalid`.
#[derive(Debug, Default)]
struct Invalid {
    /// By the collector file's (arrival) minute.
    counts: Counts,
    /// By `reason`.
    reasons: BTreeMap<String, u64>,
    /// `_audit` records about the topic refused from plain `Log` calls
    /// (`reserved_topic`): someone other than a conduit publisher wrote them.
    audit_refused: u64,
}

/// Reads the `_invalid` records of `storage` in `[from, to]` (arrival minute).
async fn invalid(
    storage: &dyn Storage,
    topic: &Topic,
    from: Minute,
    to: Minute,
    into: &mut Invalid,
) -> anyhow::Result<()> {
    let found = retry_moved(|| async {
        let mut found = Invalid::default();
        for file in collector_files(storage, &Topic::invalid(), from).await? {
            if file.minute < from || file.minute > to {
                continue;
            }
            let decoded = read_file(storage, &file.path, Encoding::Lines)
                .await
                .with_context(|| format!("reading _invalid file {}", file.path))?;
            for payload in decoded.payloads {
                let Ok(record) = serde_json::from_slice::<InvalidRecord>(&payload) else {
                    continue;
                };
                if record.topic == topic.as_str() {
                    *found.counts.entry(file.minute).or_default() += 1;
                    *found.reasons.entry(record.reason).or_default() += 1;
                } else if record.topic == Topic::AUDIT
                    && names_topic(&record.payload_base64.0, topic) == Some(true)
                {
                    found.audit_refused += 1;
                }
            }
        }
        Ok(found)
    })
    .await?;
    for (minute, n) in found.counts {
        *into.counts.entry(minute).or_default() += n;
    }
    for (reason, n) in found.reasons {
        *into.reasons.entry(reason).or_default() += n;
    }
    into.audit_refused += found.audit_refused;
    Ok(())
}

/// The total of `counts`; it saturates instead of wrapping.
fn sum(counts: &Counts) -> u64 {
    counts.values().fold(0u64, |a, b| a.saturating_add(*b))
}

/// A file of the topic set aside in `quarantine/` or by a seal.
#[derive(Debug, Clone, serde::Serialize)]
struct QuarantineFinding {
    /// The cluster whose storage holds it.
    cluster: String,
    /// Where it is (`quarantine/...`), or the directory and name a manifest lists.
    path: String,
    /// What is known: its size and original path, or the seal's reason.
    detail: String,
}

/// A tier holding more events than publishers had acknowledged over the range.
#[derive(Debug, Clone, serde::Serialize)]
struct Excess {
    /// The tier (`collected`, `local`, `merged:dc1`, `mirror:dc2`).
    tier: String,
    /// Its total.
    holds: u64,
    /// How many more than acknowledged.
    more: u64,
}

/// Runs `conduit audit`.
pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let config = match (&args.config, &args.root) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(root)) => Config::single_cluster(&args.cluster, root)?,
        (None, None) => unreachable!("clap requires --config or --root"),
    };
    let topic = Topic::new(&args.topic).with_context(|| format!("--topic {:?}", args.topic))?;
    let settings = config.topic(&topic);
    let now = chrono::Utc::now();
    let from = parse_time(&args.from, now).context("--from")?;
    let to = parse_time(&args.to, now).context("--to")?;
    anyhow::ensure!(from <= to, "--from {from} is after --to {to}");

    let mut clusters: Vec<(String, SharedStorage)> = Vec::new();
    for (name, cluster) in &config.clusters {
        let storage = conduit_core::open_root(&cluster.root)
            .await
            .with_context(|| format!("opening cluster {name} at {}", cluster.root))?;
        clusters.push((name.clone(), storage));
    }

    let mut acked_records = Acked::default();
    let mut invalid_records = Invalid::default();
    let mut quarantine = Vec::new();
    let mut collected_tiers = Vec::new();
    let mut local_tiers = Vec::new();
    let mut merged_tiers = Vec::new();
    for (name, storage) in &clusters {
        acked(storage.as_ref(), &topic, from, to, &mut acked_records).await?;
        invalid(storage.as_ref(), &topic, from, to, &mut invalid_records).await?;
        for q in quarantined_files(storage.as_ref()).await? {
            let ours = q
                .located
                .as_ref()
                .is_some_and(|l| l.topic == topic && l.minute >= from && l.minute <= to);
            if ours {
                quarantine.push(QuarantineFinding {
                    cluster: name.clone(),
                    detail: format!("{} bytes set aside from {}", q.len, q.original),
                    path: q.path,
                });
            }
        }
        collected_tiers.push(Tier {
            name: format!("collected:{name}"),
            counts: collected(storage.as_ref(), &topic, from, to).await?,
            ..Tier::default()
        });
        let mut local = sealed(storage.as_ref(), View::Local, &topic, from, to).await?;
        local.name = format!("local:{name}");
        for (minute, file, reason) in &local.quarantined {
            quarantine.push(QuarantineFinding {
                cluster: name.clone(),
                path: format!(
                    "{}/{file}",
                    Layout::minute_dir(View::Local, &topic, *minute)
                ),
                detail: format!("the seal set it aside: {reason}"),
            });
        }
        local_tiers.push(local);
        if storage
            .exists(&Layout::topic_dir(View::Merged, &topic))
            .await?
        {
            let mut merged = sealed(storage.as_ref(), View::Merged, &topic, from, to).await?;
            let role = if settings.merge_into.as_deref() == Some(name.as_str())
                || settings.merge_into.is_none()
            {
                "merged"
            } else {
                "mirror"
            };
            merged.name = format!("{role}:{name}");
            merged_tiers.push(merged);
        }
    }
    // Events acknowledged in the minute before `from` may have arrived in `from`
    // (publisher and collector clocks, batching): kept apart, as an allowance.
    let acked_before = from
        .prev()
        .ok()
        .and_then(|before| acked_records.counts.remove(&before))
        .unwrap_or(0);
    let acked_counts = &acked_records.counts;

    // Judge every minute: local vs collected per cluster; merged/mirror vs the sum
    // of the sources' local counts.
    let mut problems = 0u64;
    let mut rows = Vec::new();
    let mut m = from;
    while m <= to {
        let mut flags = Vec::new();
        let get = |c: &Counts| c.get(&m).copied().unwrap_or(0);
        for (collected, local) in collected_tiers.iter().zip(&local_tiers) {
            let (c, l) = (get(&collected.counts), get(&local.counts));
            if local.waiting(m, c) {
                flags.push(format!("unsealed {}", local.name));
                continue;
            }
            if l < c {
                flags.push(format!("LOSS {} {}<{}", local.name, l, c));
                problems += 1;
            } else if l > c {
                flags.push(format!("DUP {} {}>{}", local.name, l, c));
                problems += 1;
            }
        }
        let sources: u64 = local_tiers
            .iter()
            .zip(&clusters)
            .filter(|(_, (name, _))| {
                settings.merge_sources.is_empty() || settings.merge_sources.contains(name)
            })
            .map(|(t, _)| get(&t.counts))
            .fold(0u64, u64::saturating_add);
        for merged in &merged_tiers {
            if merged.waiting(m, sources) {
                flags.push(format!("unsealed {}", merged.name));
                continue;
            }
            let n = get(&merged.counts);
            if n < sources {
                flags.push(format!("LOSS {} {}<{}", merged.name, n, sources));
                problems += 1;
            } else if n > sources {
                flags.push(format!("DUP {} {}>{}", merged.name, n, sources));
                problems += 1;
            }
        }
        let collected_total: u64 = collected_tiers
            .iter()
            .map(|t| get(&t.counts))
            .fold(0u64, u64::saturating_add);
        if get(acked_counts) != collected_total && sum(acked_counts) > 0 {
            flags.push("edge".to_owned());
        }
        rows.push((m, flags));
        m = m.next()?;
    }
    let total_of = |tiers: &[Tier]| -> u64 {
        tiers
            .iter()
            .map(|t| sum(&t.counts))
            .fold(0, u64::saturating_add)
    };
    let acked_total = sum(acked_counts);
    let collected_total = total_of(&collected_tiers);
    let acked_short = acked_total > collected_total;
    if acked_short {
        problems += 1;
    }
    // Any tier holding more than was acknowledged holds duplicates. Judged when
    // the topic has audit records at all (plain Scribe clients publish none),
    // over the minutes old enough for their audit records to be published, and
    // beyond what events of the minute before `from` arriving in `from` explain.
    let settled = Minute::from_datetime(now - chrono::Duration::seconds(args.settle_secs as i64))?;
    let judged_to = to.min(settled);
    let upto = |counts: &Counts| -> u64 {
        if judged_to < from {
            // No minute of the range is settled yet: nothing is judged.
            return 0;
        }
        counts
            .range(from..=judged_to)
            .map(|(_, n)| *n)
            .fold(0, u64::saturating_add)
    };
    let upto_all = |tiers: &[Tier]| -> u64 {
        tiers
            .iter()
            .map(|t| upto(&t.counts))
            .fold(0, u64::saturating_add)
    };
    let acked_judged = upto(acked_counts);
    let mut excess = Vec::new();
    let mut unexplained = Vec::new();
    if acked_total > 0 && judged_to >= from {
        let mut judge = |tier: String, holds: u64| {
            if holds > acked_judged {
                let more = holds - acked_judged;
                let found = Excess { tier, holds, more };
                if more > acked_before {
                    excess.push(found);
                } else {
                    unexplained.push(found);
                }
            }
        };
        judge("collected".to_owned(), upto_all(&collected_tiers));
        judge("local".to_owned(), upto_all(&local_tiers));
        for merged in &merged_tiers {
            judge(merged.name.clone(), upto(&merged.counts));
        }
    }
    problems += excess.len() as u64;
    let dropped_at_seal: BTreeMap<String, u64> = local_tiers
        .iter()
        .filter(|t| t.dropped > 0)
        .map(|t| (t.name.clone(), t.dropped))
        .collect();
    problems += quarantine.len() as u64;
    if acked_records.malformed > 0 {
        problems += 1;
    }

    let tiers: Vec<&Tier> = collected_tiers
        .iter()
        .chain(&local_tiers)
        .chain(&merged_tiers)
        .collect();
    let invalid_counts = &invalid_records.counts;
    if args.json {
        let minutes: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, flags)| {
                let mut row = serde_json::Map::new();
                row.insert("minute".into(), serde_json::json!(m.to_string()));
                row.insert(
                    "acked".into(),
                    serde_json::json!(acked_counts.get(m).copied().unwrap_or(0)),
                );
                for t in &tiers {
                    row.insert(
                        t.name.clone(),
                        serde_json::json!(t.counts.get(m).copied().unwrap_or(0)),
                    );
                }
                row.insert(
                    "invalid".into(),
                    serde_json::json!(invalid_counts.get(m).copied().unwrap_or(0)),
                );
                row.insert("flags".into(), serde_json::json!(flags));
                serde_json::Value::Object(row)
            })
            .collect();
        let mut totals = serde_json::Map::new();
        totals.insert("acked".into(), serde_json::json!(acked_total));
        for t in &tiers {
            totals.insert(t.name.clone(), serde_json::json!(sum(&t.counts)));
        }
        totals.insert("invalid".into(), serde_json::json!(sum(invalid_counts)));
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "topic": topic.as_str(),
                "from": from.to_string(),
                "to": to.to_string(),
                "minutes": minutes,
                "totals": totals,
                "duplicates": excess,
                "duplicates_judged_to": judged_to.to_string(),
                "dropped_at_seal": dropped_at_seal,
                "quarantined": quarantine,
                "invalid": {
                    "reasons": invalid_records.reasons,
                    "audit_refused": invalid_records.audit_refused,
                },
                "malformed_audit": {
                    "records": acked_records.malformed,
                    "examples": acked_records.malformed_examples,
                    "other_version": acked_records.other_version,
                },
                "problems": problems,
            }))?
        );
    } else {
        let mut header = format!("{:<18} {:>10}", "minute", "acked");
        for t in &tiers {
            header.push_str(&format!(" {:>14}", t.name));
        }
        header.push_str(&format!(" {:>8}", "invalid"));
        println!("{header}  flags");
        for (m, flags) in &rows {
            let mut line = format!(
                "{:<18} {:>10}",
                m.to_string(),
                acked_counts.get(m).copied().unwrap_or(0)
            );
            for t in &tiers {
                line.push_str(&format!(" {:>14}", t.counts.get(m).copied().unwrap_or(0)));
            }
            line.push_str(&format!(
                " {:>8}",
                invalid_counts.get(m).copied().unwrap_or(0)
            ));
            println!("{line}  {}", flags.join(", "));
        }
        let mut line = format!("{:<18} {:>10}", "total", acked_total);
        for t in &tiers {
            line.push_str(&format!(" {:>14}", sum(&t.counts)));
        }
        line.push_str(&format!(" {:>8}", sum(invalid_counts)));
        println!("{line}");
        if acked_short {
            println!(
                "LOSS: publishers had {acked_total} events acknowledged, collectors hold {collected_total}"
            );
        }
        for e in &excess {
            println!(
                "DUP: {} holds {} events of {from}..{judged_to}, {} more than the {acked_judged} publishers had acknowledged",
                e.tier, e.holds, e.more
            );
        }
        for e in &unexplained {
            println!(
                "note: {} holds {} more events of {from}..{judged_to} than acknowledged, no more than the {acked_before} acknowledged in the minute before {from} (which may have arrived in it): start --from at a quiet minute to tell",
                e.tier, e.more
            );
        }
        if judged_to < to && acked_total > 0 {
            println!(
                "minutes after {judged_to} are not compared with acknowledged counts yet (--settle-secs {})",
                args.settle_secs
            );
        }
        for (tier, dropped) in &dropped_at_seal {
            println!(
                "dropped at seal: {tier} dropped {dropped} records that were second copies of batches another collector had stored (the sealed view holds each once)"
            );
        }
        if acked_total == 0 && collected_total > 0 {
            println!(
                "no _audit records for this topic in range: acknowledged counts are unknown (plain Scribe clients publish none), so loss and duplicates against them are not judged"
            );
        }
        for q in &quarantine {
            println!(
                "QUARANTINED: {} {}: {}; its records are missing from the views ({QUARANTINE_HELP})",
                q.cluster, q.path, q.detail
            );
        }
        if acked_records.malformed > 0 {
            println!(
                "MALFORMED: {} _audit record(s) not counted (not an audit record, acked above {}, or a sum that would overflow): {}",
                acked_records.malformed,
                conduit_core::records::MAX_AUDIT_ACKED,
                acked_records.malformed_examples.join("; ")
            );
        }
        if acked_records.other_version > 0 {
            println!(
                "skipped {} _audit record(s) of another format version",
                acked_records.other_version
            );
        }
        if !invalid_records.reasons.is_empty() {
            let reasons: Vec<String> = invalid_records
                .reasons
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            println!(
                "INVALID: {} entries of this topic went to _invalid ({})",
                sum(invalid_counts),
                reasons.join(", ")
            );
        }
        if invalid_records.audit_refused > 0 {
            println!(
                "refused {} _audit record(s) about this topic sent with plain Log (not a conduit publisher; in _invalid, reason reserved_topic)",
                invalid_records.audit_refused
            );
        }
        println!(
            "{}",
            if problems == 0 {
                "no loss or duplication found".to_owned()
            } else {
                format!("{problems} problem(s) found")
            }
        );
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use conduit_core::storage::LocalStorage;

    use super::*;

    #[tokio::test]
    async fn a_file_moved_during_the_listing_is_counted_once() {
        let dir = std::env::temp_dir().join(format!("conduit-audit-test-{}", std::process::id()));
        let storage: SharedStorage = Arc::new(LocalStorage::open(&dir).unwrap());
        let topic = Topic::audit();
        let minute = Minute::parse_flexible("2026-11-30T15:10").unwrap();
        let (dc1, c1) = (NodeName::new("dc1").unwrap(), NodeName::new("c1").unwrap());
        let name = Layout::collector_file_name(&topic, minute, 0);
        let data = format!("{}/{name}", Layout::collector_dir(&topic, &c1));
        let local = Layout::local_file_name(&dc1, &c1, minute, 0, &topic);
        let moved = format!(
            "{}/{local}",
            Layout::minute_dir(View::Local, &topic, minute)
        );
        // Listed in data/ and, moved meanwhile, in its minute directory.
        storage
            .write_atomic(&data, Bytes::from_static(b"x"))
            .await
            .unwrap();
        storage
            .write_atomic(&moved, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let files = collector_files(storage.as_ref(), &topic, minute)
            .await
            .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, moved, "the minute directory's path is kept");
        assert_eq!(files[0].minute, minute);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn only_the_topics_own_files_are_collected() {
        let dir = std::env::temp_dir().join(format!("conduit-audit-own-{}", std::process::id()));
        let storage = LocalStorage::open(&dir).unwrap();
        let minute = Minute::parse_flexible("2026-11-30T15:10").unwrap();
        let clicks = Topic::new("clicks").unwrap();
        let (audit, user) = (Topic::audit(), Topic::new("sys_audit").unwrap());
        let (dc1, c1) = (NodeName::new("dc1").unwrap(), NodeName::new("c1").unwrap());
        let name = Layout::collector_file_name(&audit, minute, 0);
        let local = Layout::local_file_name(&dc1, &c1, minute, 1, &audit);
        let minute_dir = |t: &Topic| Layout::minute_dir(View::Local, t, minute);
        let paths = [
            format!("{}/{name}", Layout::collector_dir(&audit, &c1)),
            format!("{}/{local}", minute_dir(&audit)),
            // Another topic's files, a leftover copy, a directory that is no
            // collector's: the worker never moves these; audit used to count them.
            format!(
                "data/_audit/c1/{}",
                Layout::collector_file_name(&clicks, minute, 2)
            ),
            format!("data/_audit/c1/{}", Layout::tmp_name(&name)),
            format!("data/_audit/_c2/{name}"),
            format!(
                "{}/{}",
                minute_dir(&audit),
                Layout::local_file_name(&dc1, &c1, minute, 3, &clicks)
            ),
        ];
        for path in &paths {
            storage
                .write_atomic(path, Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let files = collector_files(&storage, &audit, minute).await.unwrap();
        let found: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(found, [paths[0].as_str(), paths[1].as_str()]);
        // The same names in the user topic `sys_audit`'s directories are its own.
        let user_data = format!("{}/{name}", Layout::collector_dir(&user, &c1));
        storage
            .write_atomic(&user_data, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let files = collector_files(&storage, &user, minute).await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, user_data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn acked_sums_are_checked_and_malformed_records_attributed_by_topic() {
        let minute = Minute::parse_flexible("2026-11-30T15:10").unwrap();
        let mut acked = Acked::default();
        acked.add(minute, u64::MAX - 1).unwrap();
        let overflow = acked.add(minute, 2).unwrap_err();
        assert!(overflow.contains("would overflow"), "{overflow}");
        assert_eq!(
            acked.counts[&minute],
            u64::MAX - 1,
            "the refused value is not added"
        );
        for _ in 0..5 {
            acked.malformed("data/_audit/c1/f", &overflow);
        }
        assert_eq!(acked.malformed, 5);
        assert_eq!(acked.malformed_examples.len(), MALFORMED_SHOWN);

        let clicks = Topic::new("clicks").unwrap();
        assert_eq!(
            names_topic(br#"{"topic":"clicks","acked":-1}"#, &clicks),
            Some(true)
        );
        assert!(may_concern(br#"{"topic":"clicks","acked":-1}"#, &clicks));
        assert!(!may_concern(br#"{"topic":"views","acked":-1}"#, &clicks));
        assert!(
            may_concern(b"not json", &clicks),
            "no topic: it may be anyone's"
        );
        assert!(may_concern(br#"{"topic":7}"#, &clicks));
    }

    #[tokio::test]
    async fn a_scan_that_met_a_moved_file_is_run_again() {
        let mut calls = 0;
        let counted = retry_moved(|| {
            calls += 1;
            let first = calls == 1;
            async move {
                if first {
                    let gone = StorageError::NotFound {
                        path: "data/_audit/c1/sys_audit-2026-11-30-15-10_00000.zst".into(),
                    };
                    return Err(anyhow::Error::from(FormatError::Storage(gone))
                        .context("reading audit file"));
                }
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!((counted, calls), (7, 2));

        // Other errors are not retried.
        let mut calls = 0;
        let err = retry_moved(|| {
            calls += 1;
            async { Err::<u32, _>(anyhow::anyhow!("corrupt frame")) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(err.to_string().contains("corrupt frame"));
    }
}
