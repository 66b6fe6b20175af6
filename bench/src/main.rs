//! `conduit-bench`: conduit's benchmarks, one subcommand per scenario.
//!
//! This file only parses arguments, sets up logging, finds the `conduit`
//! executable for the scenarios that start collectors and workers, and hands over
//! to `conduit_bench::scenarios`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use conduit_bench::children::Conduit;
use conduit_bench::scenarios::{
    catch_up, gen, hsync_loop, ingest, limits, nats_ingest, publish, seal_latency, soak,
    storage_ops, tail_latency,
};
use tracing_subscriber::EnvFilter;

/// conduit's benchmarks: ingest, seal, tail and catch-up latency, soak, machine
/// limits, NATS JetStream as a peer. `docs/benchmarks.md` has the results.
#[derive(Debug, Parser)]
#[command(name = "conduit-bench", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` for log shippers.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `conduit_bench=debug`).
    /// `RUST_LOG` wins when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,

    /// The `conduit` executable the scenarios start collectors, workers and
    /// `conduit audit` from [default: the `conduit` next to this executable].
    #[arg(long, global = true, env = "CONDUIT_BIN", value_name = "PATH")]
    conduit: Option<PathBuf>,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Measure collector ingest: events/s, MB/s, ack latency, collector RSS and CPU,
    /// bytes on disk; verifies every event sent is in the files.
    Ingest(ingest::IngestArgs),
    /// Measure the publisher library: the cost of `publish` on the caller's thread
    /// and end-to-end publisher → collector throughput with acks (verified in the
    /// files).
    Publish(publish::PublishArgs),
    /// Measure this machine's limits: synced sequential writes, zstd level 1 on
    /// one core, loopback TCP (the ceilings the other scenarios are compared to).
    Limits(limits::LimitsArgs),
    /// Write the benchmark's events to a file, one JSON event per line, so other
    /// tools (scripts/peers/*.sh) are fed exactly the same input.
    Gen(gen::GenArgs),
    /// Measure the time from a minute's end to its `_SUCCESS` in the local, merged
    /// and mirror views (two datacenters, real collector and worker processes).
    SealLatency(seal_latency::SealArgs),
    /// Read one hour of sealed history with DuckDB and with one PinTail consumer;
    /// events/s.
    CatchUp(catch_up::CatchUpArgs),
    /// Run the bus at a fixed rate for a while: RSS and file descriptors of every
    /// process over time (slope per hour), zero loss by `conduit audit`.
    Soak(soak::SoakArgs),
    /// conduit ingest and NATS JetStream (file store, acked publishes) side by
    /// side, fed the same events, interleaved.
    NatsIngest(nats_ingest::NatsArgs),
    /// Publish-to-delivery latency of a PinTail consumer group following the local
    /// view live at a fixed rate across minute boundaries (optionally against a NATS
    /// JetStream durable pull consumer).
    TailLatency(tail_latency::TailLatencyArgs),
    /// The latency of each storage call the minute roll and the seal are made of
    /// (create, sync, close, rename, stat, reads, list) on one root, local or HDFS.
    StorageOps(storage_ops::StorageOpsArgs),
    /// hdfs-native alone: write + hsync in a loop on 1 and 8 concurrent files, with
    /// the NameNode's fsync on every hsync or only after a new block.
    HsyncLoop(hsync_loop::HsyncLoopArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format, &cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Only the scenarios that start conduit processes need the executable.
        let conduit = || Conduit::locate(cli.conduit.as_deref());
        match cli.scenario {
            Scenario::Ingest(args) => ingest::run(args, &conduit()?).await,
            Scenario::Publish(args) => publish::run(args, &conduit()?).await,
            Scenario::Limits(args) => limits::run(args).await,
            Scenario::Gen(args) => gen::run(args),
            Scenario::SealLatency(args) => seal_latency::run(args, &conduit()?).await,
            Scenario::CatchUp(args) => catch_up::run(args).await,
            Scenario::Soak(args) => soak::run(args, &conduit()?).await,
            Scenario::NatsIngest(args) => nats_ingest::run(args, &conduit()?).await,
            Scenario::TailLatency(args) => tail_latency::run(args, &conduit()?).await,
            Scenario::StorageOps(args) => storage_ops::run(args).await,
            Scenario::HsyncLoop(args) => hsync_loop::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Structured logs through `tracing` on stderr, as `conduit` writes them
/// (`RUST_LOG` overrides `level` when set).
fn init_logging(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
