//! `conduit verify`: check a cluster's storage against its `_SUCCESS` manifests.
//!
//! For every topic (or `--topic`) and every view (`local`, `merged`, `hourly`)
//! it walks the minute (hour) directories in `[--from, --to]` and reports:
//!
//! | kind | meaning |
//! |---|---|
//! | `hole` | a minute directory is missing between the first and last one of a view |
//! | `unsealed` | a directory without `_SUCCESS` whose minute ended more than `--grace` ago |
//! | `bad-manifest` | `_SUCCESS` is unreadable, malformed or of an unknown version |
//! | `unlisted-file` | a data file in a sealed directory that its manifest does not list |
//! | `missing-file` | a file the manifest lists is not there |
//! | `size-mismatch` / `checksum-mismatch` | the file differs from the manifest |
//! | `records-mismatch` | the trailer's (or, with decoding, the frames'; for an hourly Parquet file, its footer's) record count differs |
//! | `torn-file` | a listed file has no close trailer or a corrupt frame (an hourly Parquet file: no readable footer) |
//! | `unmoved-file` | a closed collector file older than `--grace` still in `data/` |
//! | `quarantined` | a damaged data file set aside under `quarantine/` (by collector recovery or the worker; `docs/format.md` §1.3), or listed in a manifest's `quarantined`: records of it are missing from the views |
//! | `leftover-tmp` | a `_tmp.*` copy left by a failed or interrupted step (seal, merge, mirror, compaction, collector recovery): in a sealed directory, or older than `--grace` in an unsealed one or in `data/`; never part of a view |
//! | `empty-file` | a data file that holds no record: zero bytes (older than `--grace` in `data/`), or listed in a manifest with 0 records; the worker deletes such files instead of sealing them |
//!
//! The exit status is non-zero when anything is found; `--json` prints one JSON
//! document for automation. On a terminal a progress bar shows the directories
//! checked.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use conduit_core::format::Codec;
use conduit_core::layout::Layout;
use conduit_core::manifest::{crc32c, Manifest};
use conduit_core::tree::{self, MinuteWalker};
use conduit_core::{Config, Minute, Storage, Topic, View};
use serde::Serialize;

/// Arguments of `conduit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Configuration file naming the clusters.
    #[arg(long, value_name = "FILE", required_unless_present = "root")]
    config: Option<String>,

    /// Storage root of the cluster, instead of a config file: a directory,
    /// `file:///path` or `hdfs://namenode:port/path`.
    #[arg(long, value_name = "DIR|URI", conflicts_with = "config")]
    root: Option<String>,

    /// The cluster to verify.
    #[arg(long, default_value = "dc1")]
    cluster: String,

    /// Only this topic (default: every topic found in storage).
    #[arg(long)]
    topic: Option<String>,

    /// Views to check, comma separated: local, merged, hourly, collector.
    #[arg(
        long,
        default_value = "local,merged,hourly,collector",
        value_delimiter = ','
    )]
    view: Vec<String>,

    /// First minute to check (UTC, e.g. `2026-11-22T10:00`, or relative like `2h`).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,

    /// Last minute to check, inclusive (same forms as `--from`).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,

    /// How long after its end a minute may stay unsealed (or a closed collector
    /// file unmoved) before it is reported, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    grace: u64,

    /// Skip decompressing files (only sizes, checksums and trailers are checked;
    /// a `.gz` file has no trailer, so its record count is checked only when
    /// decoding).
    #[arg(long)]
    no_decode: bool,

    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// One problem found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// Kind, from the table in the module docs.
    pub kind: &'static str,
    /// The path concerned.
    pub path: String,
    /// Details: expected and found values.
    pub detail: String,
}

/// Totals of what was checked.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Checked {
    directories: u64,
    sealed: u64,
    files: u64,
    bytes: u64,
    records: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    cluster: String,
    root: String,
    checked: Checked,
    findings: Vec<Finding>,
}

/// Parses `--from`/`--to`: an absolute UTC minute or a duration before now
/// (`15m`, `2h`, `1d`).
pub fn parse_time(text: &str, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Minute> {
    let text = text.trim();
    let relative = text
        .strip_suffix('m')
        .map(|n| (n, 60))
        .or_else(|| text.strip_suffix('h').map(|n| (n, 3600)))
        .or_else(|| text.strip_suffix('d').map(|n| (n, 86_400)))
        .or_else(|| text.strip_suffix('s').map(|n| (n, 1)));
    if let Some((number, unit)) = relative {
        if let Ok(n) = number.parse::<i64>() {
            let at = now - chrono::Duration::seconds(n.saturating_mul(unit));
            return Ok(Minute::from_datetime(at)?);
        }
    }
    Minute::parse_flexible(text).with_context(|| {
        format!("{text:?} is neither a UTC minute (2026-11-22T10:05) nor a duration (15m, 2h, 1d)")
    })
}

pub use conduit_merger::audit::{count_records, quarantined_files};

/// What an operator does about a quarantined file.
pub const QUARANTINE_HELP: &str = "see docs/operations.md, \"Quarantined files\"";

struct Verifier<'a> {
    storage: &'a dyn Storage,
    decode: bool,
    grace: chrono::Duration,
    now: chrono::DateTime<chrono::Utc>,
    checked: Checked,
    findings: Vec<Finding>,
    progress: Option<indicatif::ProgressBar>,
}

impl Verifier<'_> {
    fn find(&mut self, kind: &'static str, path: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            kind,
            path: path.into(),
            detail: detail.into(),
        });
    }

    async fn view(
        &mut self,
        view: View,
        topic: &Topic,
        from: Option<Minute>,
        to: Option<Minute>,
    ) -> anyhow::Result<()> {
        let dirs = MinuteWalker::new(self.storage, view, topic)
            .from(from)
            .until(to)
            .all()
            .await?;
        if let Some(bar) = &self.progress {
            bar.inc_length(dirs.len() as u64);
        }
        let step = if view == View::Hourly { 60 } else { 1 };
        // Holes: between the first and last directory (or the bounds given).
        if let (Some(first), Some(last)) = (dirs.first().copied(), dirs.last().copied()) {
            let present: BTreeSet<Minute> = dirs.iter().copied().collect();
            let start = if view == View::Hourly {
                first
            } else {
                from.map_or(first, |f| f.max(first))
            };
            let mut m = start;
            while m < last {
                if !present.contains(&m) {
                    self.find(
                        "hole",
                        Manifest::dir(view, topic, m),
                        format!("no directory for {m} between {first} and {last}"),
                    );
                }
                m = m.add_minutes(step)?;
            }
        }
        for minute in dirs {
            self.directory(view, topic, minute).await?;
            if let Some(bar) = &self.progress {
                bar.inc(1);
            }
        }
        Ok(())
    }

    async fn directory(&mut self, view: View, topic: &Topic, minute: Minute) -> anyhow::Result<()> {
        let dir = Manifest::dir(view, topic, minute);
        self.checked.directories += 1;
        let entries = self.storage.list_or_empty(&dir).await?;
        let data: BTreeMap<String, u64> = entries
            .iter()
            .filter(|e| !e.is_dir && !Layout::is_hidden(&e.name))
            .map(|e| (e.name.clone(), e.len))
            .collect();
        let sealed = entries.iter().any(|e| e.name == Layout::SUCCESS_MARKER);
        for e in &entries {
            if e.is_dir {
                continue;
            }
            if Layout::is_tmp(&e.name) && (sealed || self.older_than_grace(e.modified_ms)) {
                self.leftover_tmp(&e.path, e.len);
            } else if e.len == 0
                && !Layout::is_hidden(&e.name)
                && (sealed || self.older_than_grace(e.modified_ms))
            {
                self.find("empty-file", e.path.clone(), "zero bytes: holds no record");
            }
        }
        let manifest = match Manifest::read(self.storage, &dir).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let span = if view == View::Hourly { 60 } else { 1 };
                let ends = minute.add_minutes(span)?.start();
                if self.now - ends > self.grace {
                    self.find(
                        "unsealed",
                        dir,
                        format!(
                            "no _SUCCESS {}s after the end of {minute} ({} data files)",
                            (self.now - ends).num_seconds(),
                            data.len()
                        ),
                    );
                }
                return Ok(());
            }
            Err(e) => {
                self.find("bad-manifest", Layout::success_marker(&dir), e.to_string());
                return Ok(());
            }
        };
        self.checked.sealed += 1;
        for q in &manifest.quarantined {
            self.find(
                "quarantined",
                format!("{dir}/{}", q.name),
                format!(
                    "the seal set it aside in quarantine/ instead of listing it: {}; {QUARANTINE_HELP}",
                    q.reason
                ),
            );
        }
        let listed: BTreeSet<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
        for name in data.keys() {
            if !listed.contains(name.as_str()) {
                self.find(
                    "unlisted-file",
                    format!("{dir}/{name}"),
                    "in a sealed directory but not in its manifest",
                );
            }
        }
        for file in &manifest.files {
            let path = format!("{dir}/{}", file.name);
            let Some(&len) = data.get(&file.name) else {
                self.find("missing-file", path, "listed in the manifest but absent");
                continue;
            };
            self.checked.files += 1;
            self.checked.bytes += len;
            self.checked.records += file.records;
            if file.records == 0 && len > 0 {
                self.find(
                    "empty-file",
                    path.clone(),
                    "listed in the manifest with 0 records",
                );
            }
            if len != file.bytes {
                self.find(
                    "size-mismatch",
                    path,
                    format!("manifest says {} bytes, storage has {len}", file.bytes),
                );
                continue;
            }
            let buf = self.storage.read(&path).await?;
            let crc = crc32c(&buf);
            if crc != file.crc32c {
                self.find(
                    "checksum-mismatch",
                    path.clone(),
                    format!("manifest crc32c {:08x}, file {crc:08x}", file.crc32c),
                );
            }
            if view == View::Hourly && file.name.ends_with(Layout::PARQUET_EXTENSION) {
                // Hourly Parquet files (`docs/format.md` §7.5) have a footer, not
                // a trailer; its row count is what the manifest lists.
                match conduit_merger::parquet::footer_of_bytes(&buf) {
                    Ok(meta) => {
                        let (rows, _) = conduit_merger::parquet::counts(&meta);
                        if rows != file.records {
                            self.find(
                                "records-mismatch",
                                path,
                                format!(
                                    "manifest says {} records, parquet footer {rows}",
                                    file.records
                                ),
                            );
                        }
                    }
                    Err(reason) => {
                        self.find("torn-file", path, format!("no parquet footer: {reason}"))
                    }
                }
                continue;
            }
            let codec = Codec::of_file(&file.name);
            let structure = codec.scan(&buf, 0);
            match structure.trailer.filter(|_| structure.is_closed()) {
                // A `.gz` file has no trailer: complete members, records counted
                // by decoding.
                None if codec == Codec::Gzip && structure.torn_bytes == 0 => {}
                None => self.find(
                    "torn-file",
                    path.clone(),
                    format!(
                        "no close trailer ({} complete bytes, {} torn)",
                        structure.valid_len, structure.torn_bytes
                    ),
                ),
                Some(trailer) if trailer.records != file.records => self.find(
                    "records-mismatch",
                    path.clone(),
                    format!(
                        "manifest says {} records, trailer {}",
                        file.records, trailer.records
                    ),
                ),
                Some(_) => {}
            }
            if self.decode {
                match count_records(codec, &buf) {
                    Ok(n) if n != file.records => self.find(
                        "records-mismatch",
                        path,
                        format!("manifest says {} records, frames hold {n}", file.records),
                    ),
                    Ok(_) => {}
                    Err((offset, reason)) => self.find(
                        "torn-file",
                        path,
                        format!("frame at offset {offset} does not decode: {reason}"),
                    ),
                }
            }
        }
        Ok(())
    }

    /// Every file under `quarantine/` of `topic` (all topics: `None`) whose
    /// minute is in `[from, to]`.
    async fn quarantine(
        &mut self,
        topic: Option<&Topic>,
        from: Option<Minute>,
        to: Option<Minute>,
    ) -> anyhow::Result<()> {
        for q in quarantined_files(self.storage).await? {
            if let Some(located) = &q.located {
                let in_range = from.is_none_or(|f| located.minute >= f)
                    && to.is_none_or(|t| located.minute <= t);
                if topic.is_some_and(|t| *t != located.topic) || !in_range {
                    continue;
                }
            }
            self.find(
                "quarantined",
                q.path,
                format!(
                    "{} bytes set aside from {}: it was shorter than acknowledged or did not decode, so its records are missing from the views; {QUARANTINE_HELP}",
                    q.len, q.original
                ),
            );
        }
        Ok(())
    }

    /// Whether a file last modified at `modified_ms` (epoch milliseconds) is
    /// older than `--grace` (so no step is still writing it).
    fn older_than_grace(&self, modified_ms: i64) -> bool {
        self.now.timestamp_millis() - modified_ms > self.grace.num_milliseconds()
    }

    fn leftover_tmp(&mut self, path: &str, len: u64) {
        self.find(
            "leftover-tmp",
            path,
            format!(
                "temporary copy ({len} bytes) left by a failed or interrupted step; \
                 not part of any view, delete it"
            ),
        );
    }

    async fn collector_view(&mut self, topic: &Topic) -> anyhow::Result<()> {
        // Temporary copies (collector recovery) next to the collector files.
        for dir in self
            .storage
            .list_or_empty(&Layout::topic_dir(View::Collector, topic))
            .await?
            .into_iter()
            .filter(|d| d.is_dir)
        {
            for e in self.storage.list_or_empty(&dir.path).await? {
                if !e.is_dir && Layout::is_tmp(&e.name) && self.older_than_grace(e.modified_ms) {
                    self.leftover_tmp(&e.path, e.len);
                }
            }
        }
        for file in tree::collector_files(self.storage, topic).await? {
            let ends = file.name.minute.end();
            if self.now - ends <= self.grace {
                continue;
            }
            if file.len == 0 {
                self.find(
                    "empty-file",
                    file.path.clone(),
                    format!(
                        "collector file of {} has zero bytes: holds no record",
                        file.name.minute
                    ),
                );
            }
            self.find(
                "unmoved-file",
                file.path,
                format!(
                    "collector file of {} still in data/ {}s after its minute ended (is the worker running?)",
                    file.name.minute,
                    (self.now - ends).num_seconds()
                ),
            );
        }
        Ok(())
    }
}

/// Runs `conduit verify`.
pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = match (&args.config, &args.root) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(root)) => Config::single_cluster(&args.cluster, root)?,
        (None, None) => unreachable!("clap requires --config or --root"),
    };
    let cluster = config.clusters.get(&args.cluster).with_context(|| {
        format!(
            "--cluster {}: not in the configuration (clusters: {})",
            args.cluster,
            config
                .clusters
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let storage = conduit_core::open_root(&cluster.root)
        .await
        .with_context(|| format!("opening cluster {} at {}", args.cluster, cluster.root))?;
    let now = chrono::Utc::now();
    let from = args
        .from
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()?;
    let to = args.to.as_deref().map(|t| parse_time(t, now)).transpose()?;
    let mut views = Vec::new();
    for name in &args.view {
        let view: View = name.parse().with_context(|| {
            format!("--view {name:?}: expected local, merged, hourly or collector")
        })?;
        views.push(view);
    }
    let progress = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} verify [{bar:30}] {pos}/{len} directories {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let mut verifier = Verifier {
        storage: storage.as_ref(),
        decode: !args.no_decode,
        grace: chrono::Duration::seconds(args.grace as i64),
        now,
        checked: Checked::default(),
        findings: Vec::new(),
        progress,
    };
    for view in views {
        let topics = match &args.topic {
            Some(t) => vec![Topic::new(t).with_context(|| format!("--topic {t:?}"))?],
            None => tree::topics(storage.as_ref(), view).await?,
        };
        for topic in topics {
            if let Some(bar) = &verifier.progress {
                bar.set_message(format!("{view} {topic}"));
            }
            if view == View::Collector {
                verifier.collector_view(&topic).await?;
            } else {
                verifier.view(view, &topic, from, to).await?;
            }
        }
    }
    let topic = args
        .topic
        .as_deref()
        .map(|t| Topic::new(t).with_context(|| format!("--topic {t:?}")))
        .transpose()?;
    verifier.quarantine(topic.as_ref(), from, to).await?;
    if let Some(bar) = verifier.progress.take() {
        bar.finish_and_clear();
    }
    verifier.findings.sort();
    let report = Report {
        cluster: args.cluster.clone(),
        root: storage.root().to_owned(),
        checked: verifier.checked,
        findings: verifier.findings,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let c = &report.checked;
        println!(
            "cluster {} ({}): {} directories ({} sealed), {} files, {} bytes, {} records checked",
            report.cluster, report.root, c.directories, c.sealed, c.files, c.bytes, c.records
        );
        for f in &report.findings {
            println!("{:<18} {}  {}", f.kind, f.path, f.detail);
        }
        if report.findings.is_empty() {
            println!("no problems found");
        } else {
            println!("{} problem(s) found", report.findings.len());
        }
    }
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
