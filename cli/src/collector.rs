//! `conduit collector`: run a collector daemon.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use conduit_collector::{Collector, CollectorSettings};
use conduit_core::{Config, NodeName, SystemClock};

/// Arguments of `conduit collector`. Flags override the config file.
#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// Configuration file (topics, limits, clusters). Without it, `--root` is
    /// required and any valid topic is accepted with default settings.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,

    /// Storage root to write to, overriding the cluster's root from the config:
    /// a directory, `file:///path` or `hdfs://namenode:port/path`.
    #[arg(long, value_name = "DIR|URI", required_unless_present = "config")]
    root: Option<String>,

    /// Cluster (datacenter) this collector writes to.
    #[arg(long, default_value = "dc1")]
    cluster: String,

    /// This collector's id, unique within the cluster; it names its files.
    #[arg(long, default_value = "c1")]
    id: String,

    /// Scribe/Thrift listen address [config: collector.listen, default 127.0.0.1:1463].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,

    /// HTTP listen address for the status page /, /metrics and /health [config: collector.http,
    /// default 127.0.0.1:14630].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,

    /// Local directory to spool to while storage is unavailable
    /// [config: collector.spool_dir; default: no spool, callers get TRY_LATER].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<String>,

    /// Refuse topics not listed in the config (they go to `_invalid`)
    /// [config: collector.strict_topics].
    #[arg(long)]
    strict_topics: bool,

    /// Group-commit window in milliseconds [config: collector.group_commit_ms, default 2].
    #[arg(long, value_name = "MS")]
    group_commit_ms: Option<u64>,

    /// zstd level of data frames [config: collector.zstd_level, default 1].
    #[arg(long, value_name = "LEVEL")]
    zstd_level: Option<i32>,

    /// Close a data file when it reaches this many bytes
    /// [config: collector.max_file_bytes, default 268435456].
    #[arg(long, value_name = "BYTES")]
    max_file_bytes: Option<u64>,

    /// Largest single message; larger ones go to `_invalid`
    /// [config: collector.max_message_bytes, default 1048576].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<u64>,

    /// Connections above this get TRY_LATER [config: collector.max_connections, default 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Allow clients from this network only (CIDR such as 10.0.0.0/8 or fd00::/8,
    /// or one address); repeat for several. Checked at accept on the Scribe and
    /// the HTTP port; others are closed, counted and logged. Replaces the
    /// config's list [config: collector.allow_networks; default: every address].
    #[arg(long = "allow-network", value_name = "CIDR")]
    allow_networks: Vec<String>,

    /// PEM certificate chain: with --tls-key, the Scribe port speaks TLS only
    /// [config: collector.tls_cert; default: plain Scribe].
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,

    /// PEM private key of --tls-cert [config: collector.tls_key].
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,

    /// PEM CA bundle: every TLS client must present a certificate signed by one
    /// of these CAs [config: collector.tls_client_ca; default: no client
    /// certificate asked].
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<String>,

    /// Serve the HTTP port (/metrics, /health, /v1/open) with TLS too, with the
    /// same certificate, key and client CA [config: collector.http_tls].
    #[arg(long)]
    http_tls: bool,
}

/// Runs a collector until SIGINT or SIGTERM, then shuts down cleanly.
pub async fn run(args: CollectorArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(root) = &args.root {
        config.clusters.insert(
            args.cluster.clone(),
            conduit_core::config::ClusterConfig { root: root.clone() },
        );
    }
    let c = &mut config.collector;
    if let Some(v) = &args.listen {
        c.listen = v.clone();
    }
    if let Some(v) = &args.http {
        c.http = v.clone();
    }
    if let Some(v) = &args.spool_dir {
        c.spool_dir = Some(v.clone());
    }
    if args.strict_topics {
        c.strict_topics = true;
    }
    if let Some(v) = args.group_commit_ms {
        c.group_commit_ms = v;
    }
    if let Some(v) = args.zstd_level {
        c.zstd_level = v;
    }
    if let Some(v) = args.max_file_bytes {
        c.max_file_bytes = v;
    }
    if let Some(v) = args.max_message_bytes {
        c.max_message_bytes = v;
    }
    if let Some(v) = args.max_connections {
        c.max_connections = v;
    }
    if !args.allow_networks.is_empty() {
        c.allow_networks = args.allow_networks.clone();
    }
    if let Some(v) = &args.tls_cert {
        c.tls_cert = Some(v.clone());
    }
    if let Some(v) = &args.tls_key {
        c.tls_key = Some(v.clone());
    }
    if let Some(v) = &args.tls_client_ca {
        c.tls_client_ca = Some(v.clone());
    }
    if args.http_tls {
        c.http_tls = true;
    }
    config.validate()?;
    let cluster = NodeName::new(&args.cluster).context("--cluster")?;
    let id = NodeName::new(&args.id).context("--id")?;
    let root = config.cluster_root(cluster.as_str())?.to_string();
    let storage = conduit_core::open_root(&root)
        .await
        .with_context(|| format!("cannot open storage root {root}"))?;
    let shutdown_timeout = Duration::from_secs(config.collector.shutdown_timeout_secs);
    let settings = CollectorSettings {
        cluster,
        id,
        collector: config.collector.clone(),
        config: Arc::new(config),
    };
    let collector = Collector::start(settings, storage, SystemClock::shared()).await?;
    // Listen for signals before saying ready: a SIGTERM right after must still
    // shut down cleanly.
    let shutdown = crate::signals::wait_for_shutdown();
    let progress = collector.progress();
    let (requested, deadline) =
        crate::signals::bounded_shutdown(shutdown_timeout, move || progress.get());
    println!(
        "collector ready: scribe {} http {} root {}",
        collector.thrift_addr(),
        collector.http_addr(),
        root
    );
    // Without the watch thread (it could not start), the handlers installed above.
    if requested.await.is_err() {
        shutdown.await;
    }
    tracing::info!(
        shutdown_timeout_secs = shutdown_timeout.as_secs(),
        "shutdown requested"
    );
    collector.stop().await?;
    deadline.finished();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use conduit_core::config::key_default;

    /// Every `[config: KEY, default VALUE]` in the help of any flag of any
    /// subcommand names a real key and states its default as `core::config`
    /// defines it.
    #[test]
    fn flag_help_states_config_keys_and_their_defaults() {
        fn walk(command: &clap::Command, checked: &mut usize) {
            for arg in command.get_arguments() {
                let help = [arg.get_help(), arg.get_long_help()]
                    .into_iter()
                    .flatten()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                for (_, rest) in help
                    .match_indices("[config: ")
                    .map(|(i, _)| help.split_at(i))
                {
                    let inner = &rest["[config: ".len()..rest.find(']').expect("closing ]")];
                    let key: String = inner
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                        .collect();
                    let flag = arg.get_long().unwrap_or(arg.get_id().as_str());
                    let default = key_default(&key).unwrap_or_else(|| {
                        panic!("{} --{flag}: no config key {key:?}", command.get_name())
                    });
                    if let Some(stated) = inner[key.len()..].strip_prefix(", default ") {
                        assert_eq!(
                            stated,
                            default.to_string(),
                            "{} --{flag}: help states the default of {key}",
                            command.get_name()
                        );
                    }
                    *checked += 1;
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, checked);
            }
        }
        let mut checked = 0;
        walk(&crate::Cli::command(), &mut checked);
        assert!(
            checked >= 10,
            "found only {checked} flags naming a config key"
        );
    }
}
