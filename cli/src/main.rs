//! `conduit`: the one user-facing binary. Every command is a subcommand and works
//! from flags alone (`--root DIR|hdfs://...`) as well as from a config file.
//!
//! This file only parses arguments, sets up logging and hands over to a module per
//! subcommand.

mod audit;
mod check;
mod collector;
mod consumer_lag;
mod exit_codes;
mod lag;
mod logging;
mod ls;
mod malloc;
mod ports;
mod publish;
mod signals;
mod table;
mod tail;
mod tls;
mod up;
mod verify;
mod worker;

use clap::{Parser, Subcommand};

/// Conduit: a data bus from serving apps to Hadoop and real-time consumers.
#[derive(Debug, Parser)]
#[command(name = "conduit", version, about, long_about = None, after_help = exit_codes::MAIN)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` for log shippers.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `conduit_collector=debug`).
    /// `RUST_LOG` wins when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration (or flags) and print the storage layout it implies.
    #[command(after_help = exit_codes::CHECK)]
    Check(check::CheckArgs),
    /// Run a collector: Scribe-compatible ingest that acknowledges only durable events.
    #[command(after_help = exit_codes::COLLECTOR)]
    Collector(collector::CollectorArgs),
    /// Publish stdin to a topic, one event per line, with acknowledgements.
    #[command(after_help = exit_codes::PUBLISH)]
    Publish(publish::PublishArgs),
    /// Print a topic's events as they arrive (PinTail), optionally as a consumer group.
    #[command(after_help = exit_codes::TAIL)]
    Tail(tail::TailArgs),
    /// Show how far a consumer group is behind, per partition (events, bytes, seconds).
    #[command(after_help = exit_codes::LAG)]
    Lag(lag::LagArgs),
    /// Check a cluster's sealed directories against their manifests (exit 1 on findings).
    #[command(after_help = exit_codes::VERIFY)]
    Verify(verify::VerifyArgs),
    /// Count a topic's events per minute at every tier and flag loss or duplication.
    #[command(after_help = exit_codes::AUDIT)]
    Audit(audit::AuditArgs),
    /// Run a cluster's worker: seal minutes, merge, mirror, compact, purge (one
    /// active per cluster, by lease).
    #[command(after_help = exit_codes::WORKER)]
    Worker(worker::WorkerArgs),
    /// List a topic's minute directories in a view with sealed state and counts.
    #[command(after_help = exit_codes::LS)]
    Ls(ls::LsArgs),
    /// Print the SQL (Spark, Hive, Trino) that registers a topic's sealed minutes
    /// or hours as partitions of an external table.
    #[command(after_help = exit_codes::TABLE)]
    Table(table::TableArgs),
    /// Run the whole bus on this machine: collectors and workers for two local
    /// datacenters (or the clusters of --config), until Ctrl-C.
    #[command(after_help = exit_codes::UP)]
    Up(up::UpArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Worker(_)) {
        // Before any thread exists: may replace this process image.
        malloc::bound_worker_allocator();
    }
    logging::init(&cli.log_format, &cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check(args) => check::run(args).await,
            Command::Collector(args) => collector::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::Lag(args) => lag::run(args).await,
            Command::Audit(args) => audit::run(args).await,
            Command::Up(args) => up::run(args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Ls(args) => ls::run(args).await,
            Command::Table(args) => table::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
