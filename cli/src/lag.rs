//! `conduit lag`: how far a consumer group is behind, per partition, in events,
//! bytes and seconds (from its checkpoints; see `conduit_pintail::lag`).

use std::process::ExitCode;

use clap::Args;
use conduit_core::Topic;
use conduit_pintail::{CheckpointStore, ReadView};

use crate::tail::SourceArgs;

/// Arguments of `conduit lag`.
#[derive(Debug, Args)]
pub struct LagArgs {
    #[command(flatten)]
    source: SourceArgs,

    /// The consumer group.
    #[arg(long)]
    group: String,

    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `conduit lag`.
pub async fn run(args: LagArgs) -> anyhow::Result<ExitCode> {
    let topic = Topic::new(args.source.topic.clone())?;
    let view: ReadView = args.source.view.parse()?;
    let root = match (&args.source.config, &args.source.root) {
        (Some(path), _) => conduit_core::Config::load(path)?
            .cluster_root(&args.source.cluster)?
            .to_owned(),
        (None, Some(root)) => root.clone(),
        (None, None) => anyhow::bail!("give --config FILE or --root DIR|URI"),
    };
    let storage = conduit_core::open_root(&root).await?;
    let store = match &args.source.checkpoint_dir {
        Some(dir) => CheckpointStore::new(std::sync::Arc::new(
            conduit_core::storage::LocalStorage::open(dir)?,
        )),
        None => CheckpointStore::new(storage.clone()),
    };
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for partition in store.partitions(&args.group, topic.as_str()).await? {
        let Some(pos) = store.load(&args.group, topic.as_str(), &partition).await? else {
            continue;
        };
        let lag = conduit_pintail::lag::partition_lag(
            &storage,
            view,
            &topic,
            &pos,
            args.source.partitions.unwrap_or(16),
            now,
        )
        .await?;
        rows.push((partition, pos, lag));
    }
    if args.json {
        let doc: Vec<_> = rows
            .iter()
            .map(|(p, pos, lag)| {
                serde_json::json!({"partition": p, "position": pos, "events": lag.events,
                    "bytes": lag.bytes, "seconds": lag.seconds})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "{:<16} {:>10} {:>12} {:>8}  position",
            "partition", "events", "bytes", "seconds"
        );
        for (p, pos, lag) in &rows {
            println!(
                "{:<16} {:>10} {:>12} {:>8}  {pos}",
                p, lag.events, lag.bytes, lag.seconds
            );
        }
        if rows.is_empty() {
            eprintln!("no checkpoints for group {} and topic {topic}", args.group);
        }
    }
    Ok(ExitCode::SUCCESS)
}
