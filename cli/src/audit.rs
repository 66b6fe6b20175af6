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
//! Flags per minute: `LOSS` when a later storage tier has fewer records than the
//! tier it is built from, `DUP` when it has more, `unsealed` when a view has not
//! sealed the minute yet (it is not judged), `edge` when acked and collected
//! differ only because the publisher's and the collector's clocks put events on
//! different sides of a minute boundary (the totals over the range agree). Totals
//! over the range are exact for closed, sealed ranges; the exit status is non-zero
//! when any storage tier shows loss or duplication, or when acked exceeds
//! collected over the range.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use conduit_core::format::{read_file, read_trailer, FormatError};
use conduit_core::layout::Layout;
use conduit_core::manifest::Manifest;
use conduit_core::records::AuditRecord;
use conduit_core::storage::StorageError;
use conduit_core::tree::{self, MinuteWalker};
use conduit_core::{Config, Encoding, Minute, NodeName, SharedStorage, Storage, Topic, View};

use crate::verify::{count_records, parse_time};

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

/// Acknowledged counts for `topic` from the `_audit` records in `storage`.
async fn acked(
    storage: &dyn Storage,
    topic: &Topic,
    from: Minute,
    to: Minute,
    into: &mut Counts,
) -> anyhow::Result<()> {
    let audit = Topic::audit();
    // Audit records are written a little after their minute: look from one hour
    // before `from` (clock skew) to the end.
    let start = from.add_minutes(-60).unwrap_or(from);
    let found = retry_moved(|| async {
        let mut found = Counts::new();
        for file in collector_files(storage, &audit, start).await? {
            let decoded = read_file(storage, &file.path, Encoding::Lines)
                .await
                .with_context(|| format!("reading audit file {}", file.path))?;
            for payload in decoded.payloads {
                // Records of another version or shape are not counted.
                let Ok(record) = serde_json::from_slice::<AuditRecord>(&payload) else {
                    continue;
                };
                if record.topic == *topic && record.minute >= from && record.minute <= to {
                    *found.entry(record.minute).or_default() += record.acked;
                }
            }
        }
        Ok(found)
    })
    .await?;
    for (minute, acked) in found {
        *into.entry(minute).or_default() += acked;
    }
    Ok(())
}

fn sum(counts: &Counts) -> u64 {
    counts.values().sum()
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

    let mut acked_counts = Counts::new();
    let mut collected_tiers = Vec::new();
    let mut local_tiers = Vec::new();
    let mut merged_tiers = Vec::new();
    for (name, storage) in &clusters {
        acked(storage.as_ref(), &topic, from, to, &mut acked_counts).await?;
        collected_tiers.push(Tier {
            name: format!("collected:{name}"),
            counts: collected(storage.as_ref(), &topic, from, to).await?,
            unsealed: Default::default(),
            first_dir: None,
        });
        let mut local = sealed(storage.as_ref(), View::Local, &topic, from, to).await?;
        local.name = format!("local:{name}");
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
            .sum();
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
        let collected_total: u64 = collected_tiers.iter().map(|t| get(&t.counts)).sum();
        if get(&acked_counts) != collected_total && sum(&acked_counts) > 0 {
            flags.push("edge".to_owned());
        }
        rows.push((m, flags));
        m = m.next()?;
    }
    let acked_total = sum(&acked_counts);
    let collected_total: u64 = collected_tiers.iter().map(|t| sum(&t.counts)).sum();
    let acked_short = acked_total > collected_total;
    if acked_short {
        problems += 1;
    }

    let tiers: Vec<&Tier> = collected_tiers
        .iter()
        .chain(&local_tiers)
        .chain(&merged_tiers)
        .collect();
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
                row.insert("flags".into(), serde_json::json!(flags));
                serde_json::Value::Object(row)
            })
            .collect();
        let mut totals = serde_json::Map::new();
        totals.insert("acked".into(), serde_json::json!(acked_total));
        for t in &tiers {
            totals.insert(t.name.clone(), serde_json::json!(sum(&t.counts)));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "topic": topic.as_str(),
                "from": from.to_string(),
                "to": to.to_string(),
                "minutes": minutes,
                "totals": totals,
                "problems": problems,
            }))?
        );
    } else {
        let mut header = format!("{:<18} {:>10}", "minute", "acked");
        for t in &tiers {
            header.push_str(&format!(" {:>14}", t.name));
        }
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
            println!("{line}  {}", flags.join(", "));
        }
        let mut line = format!("{:<18} {:>10}", "total", acked_total);
        for t in &tiers {
            line.push_str(&format!(" {:>14}", sum(&t.counts)));
        }
        println!("{line}");
        if acked_short {
            println!(
                "LOSS: publishers had {acked_total} events acknowledged, collectors hold {collected_total}"
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
