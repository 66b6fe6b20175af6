//! `conduit check`: validate a configuration and show where everything goes.
//!
//! A configuration with nothing to run — an empty file, or one without a
//! `[clusters.NAME]` table (each cluster runs a collector and a worker) — is
//! refused (exit 1) with the smallest configuration that runs; `conduit up`
//! refuses it the same way ([`ensure_something_to_run`]).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use conduit_core::layout::Layout;
use conduit_core::{Config, Minute, NodeName, View};

/// Arguments of `conduit check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file to validate.
    #[arg(long, value_name = "FILE", required_unless_present = "root")]
    config: Option<String>,

    /// Storage root of a single cluster, instead of a config file: a directory,
    /// `file:///path` or `hdfs://namenode:port/path`.
    #[arg(long, value_name = "DIR|URI", conflicts_with = "config")]
    root: Option<String>,

    /// Cluster name used with `--root`.
    #[arg(long, default_value = "dc1")]
    cluster: String,

    /// Also connect to every cluster's storage and check it is reachable.
    #[arg(long)]
    connect: bool,
}

/// The smallest configuration that runs, shown when one has nothing to run.
pub const MINIMAL_CONFIG: &str = r#"[clusters.dc1]
root = "/var/lib/conduit/dc1"   # a directory, file:///path or hdfs://namenode:port/path"#;

/// Fails when the configuration at `path` has nothing to run: the file is empty
/// (only blanks and comments), or it declares no cluster.
pub fn ensure_something_to_run(path: &Path, config: &Config) -> anyhow::Result<()> {
    if !config.clusters.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let empty = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    let what = if empty {
        "is empty"
    } else {
        "has no [clusters.NAME] table"
    };
    anyhow::bail!(
        "{} {what}: nothing to run (each cluster runs a collector and a worker). \
         The smallest configuration:\n\n{MINIMAL_CONFIG}\n\n\
         conf/conduit.toml lists every key with its default; `conduit up` writes a \
         two-cluster example to conduit-data/conduit.toml",
        path.display()
    )
}

/// Runs `conduit check`.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = match (&args.config, &args.root) {
        (Some(path), _) => {
            let config = Config::load(path)?;
            ensure_something_to_run(Path::new(path), &config)?;
            config
        }
        (None, Some(root)) => Config::single_cluster(&args.cluster, root)?,
        (None, None) => unreachable!("clap requires --config or --root"),
    };
    let source = args.config.as_deref().unwrap_or("flags");
    println!("configuration from {source} is valid");
    println!();
    println!("clusters:");
    for (name, cluster) in &config.clusters {
        println!("  {name:<12} {}", cluster.root);
    }
    println!();
    println!(
        "topics (unlisted topics get the defaults{}):",
        if config.collector.strict_topics {
            "; strict: unlisted topics are refused"
        } else {
            ""
        }
    );
    let example_minute = Minute::parse_flexible("2026-11-22T10:05").context("example minute")?;
    for name in config.topics.keys() {
        let topic = conduit_core::Topic::new(name)?;
        let s = config.topic(&topic);
        println!(
            "  {name:<16} encoding={} validate={:?} retention_hours(local={}, merged={}, hourly={}) compact={} merge_into={} mirrors=[{}]",
            s.encoding,
            s.validate,
            s.retention_hours.local,
            s.retention_hours.merged,
            s.retention_hours.hourly,
            s.compact,
            s.merge_into.as_deref().unwrap_or("-"),
            s.mirrors.join(",")
        );
    }
    println!();
    println!("layout (relative to each cluster root; example topic `clicks`, collector `c1`, minute {example_minute}):");
    let topic = conduit_core::Topic::new("clicks")?;
    let collector = NodeName::new("c1")?;
    let cluster = NodeName::new(
        config
            .clusters
            .keys()
            .next()
            .map(String::as_str)
            .unwrap_or("dc1"),
    )?;
    let local_dir = Layout::minute_dir(View::Local, &topic, example_minute);
    println!(
        "  collector file  {}",
        Layout::collector_file(&topic, &collector, example_minute, 0)
    );
    println!(
        "  local view      {}/{}",
        local_dir,
        Layout::local_file_name(&cluster, &collector, example_minute, 0, &topic)
    );
    println!(
        "  merged view     {}/",
        Layout::minute_dir(View::Merged, &topic, example_minute)
    );
    println!(
        "  hourly          {}/",
        Layout::hour_dir(&topic, example_minute)
    );
    println!("  sealed marker   {}", Layout::success_marker(&local_dir));
    println!(
        "  heartbeats      {}",
        Layout::heartbeat_path(&cluster, &collector)
    );
    if args.connect {
        println!();
        for (name, cluster) in &config.clusters {
            let storage = conduit_core::open_root(&cluster.root)
                .await
                .with_context(|| format!("cluster {name}"))?;
            storage
                .list_or_empty("")
                .await
                .with_context(|| format!("cluster {name}: listing {}", storage.root()))?;
            println!("  {name}: reachable at {}", storage.root());
        }
    }
    Ok(ExitCode::SUCCESS)
}
