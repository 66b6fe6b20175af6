//! `conduit ls`: list a topic's minute (or hour) directories in a view with their
//! sealed state, files, records and bytes.
//!
//! One line per directory, oldest first:
//! `<minute>  sealed|open  files=N  records=N|-  bytes=N  late=N`. For a sealed
//! directory the numbers come from its `_SUCCESS` manifest; for an open one from
//! the listing (records are only known once sealed).
//!
//! `--json` prints one JSON document instead (the summary line stays on stderr):
//!
//! ```json
//! {"root": "file:///var/lib/conduit/dc1", "topic": "clicks", "view": "local",
//!  "directories": [
//!    {"minute": "2026-11-22T10:05Z", "path": "streams_local/clicks/2026/11/22/10/05",
//!     "sealed": true, "files": 2, "records": 1000, "bytes": 20480, "late": 0}],
//!  "totals": {"directories": 1, "sealed": 1}}
//! ```
//!
//! `minute` is the hour stamp (`2026-11-22T10`) in the hourly view; `records`
//! and `late` are `null` for an open directory.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use conduit_core::layout::Layout;
use conduit_core::{Config, Manifest, Minute, MinuteWalker, Topic, View};

/// Arguments of `conduit ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Configuration file naming the cluster's root.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,

    /// Storage root of the cluster (overrides the config).
    #[arg(long, value_name = "DIR|URI", required_unless_present = "config")]
    root: Option<String>,

    /// The cluster to list.
    #[arg(long, default_value = "dc1")]
    cluster: String,

    /// The topic.
    #[arg(long)]
    topic: String,

    /// The view: `local` (streams_local/), `merged` (streams/) or `hourly`
    /// (streams_hourly/).
    #[arg(long, default_value = "local", value_parser = ["local", "merged", "hourly"])]
    view: String,

    /// First minute to list (e.g. `2026-11-22T10:05`, `2026-11-22 10:05`,
    /// `2026/11/22/10/05`; UTC unless an offset is given), or a duration before
    /// now such as `10m`, `2h`, `1d`.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,

    /// Last minute to list (inclusive; same forms as --from).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,

    /// Print one JSON document instead of lines: `{"root", "topic", "view",
    /// "directories": [{"minute", "path", "sealed", "files", "records"|null,
    /// "bytes", "late"|null}], "totals": {"directories", "sealed"}}`.
    #[arg(long)]
    json: bool,
}

/// The storage root `--root` names, or else `--cluster`'s root in `--config`.
pub(crate) fn root_of(
    root: Option<&str>,
    config: Option<&str>,
    cluster: &str,
) -> anyhow::Result<String> {
    match (root, config) {
        (Some(root), _) => Ok(root.to_owned()),
        (None, Some(path)) => Ok(Config::load(path)?.cluster_root(cluster)?.to_string()),
        (None, None) => anyhow::bail!("give --config FILE or --root DIR|URI"),
    }
}

/// Prints the directories; exit 0.
pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    let root = root_of(args.root.as_deref(), args.config.as_deref(), &args.cluster)?;
    let topic = Topic::new(&args.topic).context("--topic")?;
    let view: View = args.view.parse().context("--view")?;
    let parse = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<Minute>> {
        v.as_deref()
            .map(|t| {
                crate::verify::parse_time(t, chrono::Utc::now())
                    .with_context(|| format!("{flag} {t:?}"))
            })
            .transpose()
    };
    let from = parse("--from", &args.from)?;
    let to = parse("--to", &args.to)?;
    let storage = conduit_core::open_root(&root)
        .await
        .with_context(|| format!("cannot open storage root {root}"))?;
    // An hour directory is listed when any of its minutes is in range.
    let mut walk = MinuteWalker::new(&*storage, view, &topic)
        .from(from)
        .until(to);
    let (mut dirs, mut sealed) = (0u64, 0u64);
    let mut rows = Vec::new();
    while let Some(minute) = walk.next().await? {
        let dir = Manifest::dir(view, &topic, minute);
        let shown = if view == View::Hourly {
            minute.hour_stamp()
        } else {
            minute.to_string()
        };
        dirs += 1;
        let row = match Manifest::read(&*storage, &dir).await? {
            Some(m) => {
                sealed += 1;
                let late = m.files.iter().filter(|f| f.late).count() as u64;
                Row {
                    minute: shown,
                    path: dir,
                    sealed: true,
                    files: m.files.len() as u64,
                    records: Some(m.records),
                    bytes: m.bytes,
                    late: Some(late),
                }
            }
            None => {
                let files: Vec<_> = storage
                    .list_or_empty(&dir)
                    .await?
                    .into_iter()
                    .filter(|f| !f.is_dir && !Layout::is_hidden(&f.name))
                    .collect();
                Row {
                    minute: shown,
                    path: dir,
                    sealed: false,
                    files: files.len() as u64,
                    records: None,
                    bytes: files.iter().map(|f| f.len).sum(),
                    late: None,
                }
            }
        };
        if args.json {
            rows.push(row);
        } else {
            println!("{}", row.line());
        }
    }
    if args.json {
        let doc = serde_json::json!({
            "root": storage.root(),
            "topic": topic.as_str(),
            "view": view.name(),
            "directories": rows,
            "totals": {"directories": dirs, "sealed": sealed},
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    eprintln!(
        "{dirs} directories ({sealed} sealed) of {topic} in {}",
        view.dir_name()
    );
    Ok(ExitCode::SUCCESS)
}

/// One directory as listed.
#[derive(Debug, serde::Serialize)]
struct Row {
    /// Its minute (the hour stamp in the hourly view).
    minute: String,
    /// Its path relative to the root.
    path: String,
    /// It has a `_SUCCESS` manifest.
    sealed: bool,
    /// Data files (from the manifest when sealed, the listing otherwise).
    files: u64,
    /// Records, known once sealed.
    records: Option<u64>,
    /// Bytes of its data files.
    bytes: u64,
    /// Files of an earlier minute (late data), known once sealed.
    late: Option<u64>,
}

impl Row {
    /// The text line: `<minute>  sealed|open  files=N  records=N|-  bytes=N  late=N|-`.
    fn line(&self) -> String {
        let known = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
        format!(
            "{}  {}  files={}  records={}  bytes={}  late={}",
            self.minute,
            if self.sealed { "sealed" } else { "open  " },
            self.files,
            known(self.records),
            self.bytes,
            known(self.late)
        )
    }
}
