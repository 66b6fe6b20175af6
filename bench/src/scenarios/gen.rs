//! `conduit-bench gen`: the benchmark's events as a file, one compact JSON event
//! per line, so other tools (`scripts/peers/*.sh`) are fed exactly the input
//! `conduit-bench ingest` sends with the same seed.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::events::EventGenerator;

/// Arguments of `conduit-bench gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of events.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,

    /// Output file (one compact JSON event per line); `-` for stdout.
    #[arg(long, value_name = "FILE")]
    out: String,

    /// Seed of the event generator (the same as `ingest --seed`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs `conduit-bench gen`.
pub fn run(args: GenArgs) -> anyhow::Result<ExitCode> {
    let sink: Box<dyn Write> = if args.out == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out))?,
        )
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);
    let mut generator = EventGenerator::new(args.seed);
    let mut buf = Vec::with_capacity(512);
    let mut bytes = 0u64;
    for _ in 0..args.events {
        buf.clear();
        generator.next_into(&mut buf);
        buf.push(b'\n');
        bytes += buf.len() as u64;
        out.write_all(&buf)?;
    }
    out.flush()?;
    eprintln!(
        "wrote {} events, {} bytes (mean {:.1} bytes/event with newline) to {}",
        args.events,
        bytes,
        bytes as f64 / args.events as f64,
        args.out
    );
    Ok(ExitCode::SUCCESS)
}
