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
//! With `--only-problems` only the minutes that show a problem are listed (the
//! rule: [`Row::has_problem`]); totals and findings still cover the whole range.
//! A summary line comes first in the table (`clicks: 60 minutes, 58 sealed, ...`)
//! and as `summary` in the JSON.
//!
//! The computation is `conduit_merger::audit` (the worker's status page shows
//! the same cells); this module parses the flags and prints.
//!
//! Totals over the range are exact for closed, sealed ranges; the exit status is
//! non-zero when any storage tier shows loss or duplication, when acked exceeds
//! collected or a tier exceeds acked over the range, when a file of the topic is
//! quarantined, or when malformed `_audit` records concern the topic.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use conduit_core::{Config, SharedStorage, Topic};
use conduit_merger::audit::{audit_topic, sum, AuditRange, Row, LATE_AFTER_SECS};

use crate::verify::{parse_time, QUARANTINE_HELP};

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

    /// List only the minutes with a problem: a tier with fewer (LOSS) or more
    /// (DUP) records than the tier it is built from, a quarantined file,
    /// entries sent to `_invalid`, or a view that has not sealed the minute
    /// --late-secs after it ended. Totals, findings and the summary still
    /// cover every minute of the range.
    #[arg(long)]
    only_problems: bool,

    /// A minute a view has not sealed this many seconds after it ended is
    /// late (a problem for --only-problems and the summary).
    #[arg(long, default_value_t = LATE_AFTER_SECS, value_name = "SECS")]
    late_secs: u64,
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
    let range = AuditRange {
        from,
        to,
        now,
        settle_secs: args.settle_secs,
        late_secs: args.late_secs,
    };
    let audit = audit_topic(&clusters, &settings, &topic, range).await?;
    let summary = audit.summary();
    let rows: Vec<(conduit_core::Minute, &Vec<String>)> = audit
        .rows
        .iter()
        .filter(|row| !args.only_problems || row.has_problem())
        .map(|row: &Row| (row.minute, &row.flags))
        .collect();
    let tiers = audit.tiers();
    let acked_counts = &audit.acked.counts;
    let (acked_total, collected_total) = (audit.acked_total(), audit.collected_total());
    let acked_short = audit.acked_short();
    let (acked_records, invalid_records) = (&audit.acked, &audit.invalid);
    let (excess, unexplained) = (&audit.excess, &audit.unexplained);
    let (quarantine, dropped_at_seal) = (&audit.quarantine, &audit.dropped_at_seal);
    let (judged_to, acked_judged, acked_before) =
        (audit.judged_to, audit.acked_judged, audit.acked_before);
    let problems = audit.problems;
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
                "summary": summary,
                "summary_line": summary.to_string(),
                "only_problems": args.only_problems,
            }))?
        );
    } else {
        println!("{summary}");
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
        for e in excess {
            println!(
                "DUP: {} holds {} events of {from}..{judged_to}, {} more than the {acked_judged} publishers had acknowledged",
                e.tier, e.holds, e.more
            );
        }
        for e in unexplained {
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
        for (tier, dropped) in dropped_at_seal {
            println!(
                "dropped at seal: {tier} dropped {dropped} records that were second copies of batches another collector had stored (the sealed view holds each once)"
            );
        }
        if acked_total == 0 && collected_total > 0 {
            println!(
                "no _audit records for this topic in range: acknowledged counts are unknown (plain Scribe clients publish none), so loss and duplicates against them are not judged"
            );
        }
        for q in quarantine {
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
