//! `conduit publish`: one event per input line, acknowledged by a collector (or,
//! with `--spool-dir`, kept in a local disk spool while no collector answers).
//!
//! Exit status: 0 when every line was acknowledged; 75 (`EX_TEMPFAIL`) when every
//! line was acknowledged or spooled and some are still in the spool (the next run
//! with the same `--spool-dir` sends them first); 1 when any line failed.
//!
//! A collector that cannot be reached is reported within seconds: when no
//! collector could be connected to `--give-up-secs` (default 5) after the start
//! and nothing was acknowledged, and there is no `--spool-dir`, it prints per
//! address the cause (connection refused, timed out, DNS lookup failed) and the
//! attempts, and exits 1. Once a collector was reached, a later outage is waited
//! out up to `--timeout-secs` after the input ends (the error then names the
//! last connect failure too).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use conduit_core::Encoding;
use conduit_publisher::{Publisher, WhenFull};

/// Arguments of `conduit publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic to publish to (`[A-Za-z0-9_]{1,128}`).
    #[arg(long)]
    topic: String,

    /// Collector address; repeat for failover (the first is preferred).
    #[arg(
        long = "collector",
        value_name = "HOST:PORT",
        default_values_t = [conduit_core::config::default_listen()]
    )]
    collectors: Vec<String>,

    /// Record encoding of the topic: with `lines`, input lines are checked here
    /// (they cannot contain a newline anyway); `base64` topics accept any bytes.
    #[arg(long, default_value = "lines", value_parser = ["lines", "base64"])]
    encoding: String,

    /// Give up on events not acknowledged this many seconds after the input ends;
    /// they are reported as failures.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    timeout_secs: u64,

    /// Show a progress line on stderr even when it is not a terminal.
    #[arg(long)]
    progress: bool,

    /// Keep events in this local directory when no collector answers for 2 s, and
    /// send them (first) when one does — in this run or the next one with the same
    /// directory. Exit status 75 when events remain spooled.
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,

    /// Exit 1 when no collector could be connected to this many seconds after the
    /// start, naming each address and why (refused, timed out, DNS); not with
    /// `--spool-dir`, which spools instead.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    give_up_secs: u64,

    #[command(flatten)]
    tls: crate::tls::TlsArgs,
}

/// Publishes stdin, one event per line; exits non-zero if any event was not
/// acknowledged.
pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let encoding: Encoding = args
        .encoding
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let mut builder = Publisher::builder()
        .collectors(args.collectors.clone())
        .when_full(WhenFull::Block)
        .topic_encoding(args.topic.clone(), encoding);
    if let Some(dir) = &args.spool_dir {
        builder = builder.spool_dir(dir);
    }
    if let Some(tls) = args.tls.client_tls()? {
        builder = builder.tls(tls);
    }
    let publisher = builder
        .build()
        .await
        .context("cannot start the publisher")?;
    let show_progress = args.progress || std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut rejected = 0u64;
    let mut lines = 0u64;
    // Reading stdin blocks; do it on a thread of its own (not the runtime's
    // blocking pool, which would hold the exit while stdin stays open after
    // giving up) and hand lines over.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if tx.blocking_send(line.clone()).is_err() {
                return Ok(());
            }
        }
    });
    let give_up = args
        .spool_dir
        .is_none()
        .then(|| started + Duration::from_secs(args.give_up_secs));
    // The progress line is refreshed every 250 ms, also while stdin is idle (so
    // it shows acknowledgements arriving after the last line read).
    let mut progress = tokio::time::interval(Duration::from_millis(250));
    let reading = async {
        loop {
            let line = tokio::select! {
                line = rx.recv() => line,
                _ = progress.tick(), if show_progress => {
                    let s = publisher.stats();
                    let acked = s.acknowledged + s.replayed;
                    let rate = acked as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    eprint!(
                        "\r{} read, {} acknowledged, {} spooled, {:.0} events/s   ",
                        lines, acked, s.spool_events, rate
                    );
                    let _ = std::io::stderr().flush();
                    continue;
                }
            };
            let Some(line) = line else {
                break;
            };
            lines += 1;
            if let Err(e) = publisher.publish(&args.topic, Bytes::from(line)).await {
                rejected += 1;
                if rejected <= 10 {
                    eprintln!("line {lines}: {e}");
                }
            }
        }
    };
    let mut unreachable = tokio::select! {
        () = reading => None,
        errors = wait_unreachable(&publisher, give_up) => Some(errors),
    };
    let flushed = match unreachable {
        // The rest of stdin is not read; the reader thread ends with the process.
        Some(_) => Ok(Err(conduit_publisher::PublishError::Closed)),
        None => {
            reader
                .join()
                .map_err(|_| anyhow::anyhow!("stdin reader panicked"))?
                .context("reading stdin")?;
            let flush =
                tokio::time::timeout(Duration::from_secs(args.timeout_secs), publisher.flush());
            tokio::select! {
                flushed = flush => flushed,
                errors = wait_unreachable(&publisher, give_up) => {
                    unreachable = Some(errors);
                    Ok(Err(conduit_publisher::PublishError::Closed))
                }
            }
        }
    };
    let last_connect_errors = publisher.connect_errors();
    let stats = publisher.stats();
    // Neither acknowledged nor spooled; `failed`: refused by a collector (logged).
    let unacked = stats.queue_depth;
    if unreachable.is_some() {
        // Nothing can be acknowledged: dropping fails what is queued at once.
        drop(publisher);
    } else {
        close_promptly(publisher).await;
    }
    if show_progress {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(errors) = &unreachable {
        for e in errors {
            eprintln!("error: {e}; gave up after {secs:.1} s");
        }
        eprintln!(
            "is a collector running there? start one (conduit collector, or conduit up), \
             or check --collector; --spool-dir DIR keeps events on disk until one answers"
        );
    }
    let failed = rejected + unacked + stats.failed;
    let acked = stats.acknowledged + stats.replayed;
    let spooled = stats.spool_events;
    if args.spool_dir.is_some() {
        eprintln!(
            "{} events acknowledged in {:.2} s ({:.0} events/s); {} in the spool; {} failed",
            acked,
            secs,
            acked as f64 / secs.max(1e-9),
            spooled,
            failed
        );
    } else {
        eprintln!(
            "{} events acknowledged in {:.2} s ({:.0} events/s); {} failed",
            acked,
            secs,
            acked as f64 / secs.max(1e-9),
            failed
        );
    }
    match flushed {
        Ok(Ok(())) if failed == 0 && spooled > 0 => Ok(ExitCode::from(75)),
        Ok(Ok(())) if failed == 0 => Ok(ExitCode::SUCCESS),
        Ok(Ok(())) | Ok(Err(_)) => Ok(ExitCode::FAILURE),
        Err(_) => {
            eprintln!(
                "error: {unacked} events not acknowledged within {} s",
                args.timeout_secs
            );
            for e in &last_connect_errors {
                eprintln!("error: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Closes the publisher once every event is acknowledged (or spooled), without
/// waiting for a collector that went away.
///
/// `close` sends this run's audit records (`_audit`, counts of what was
/// acknowledged) and waits for them. When no collector is connected any more and
/// reconnecting fails (the collector was killed after acknowledging everything),
/// waiting could only last until a timeout: the exit happens at once, with a
/// warning that the audit counts were not sent. At most [`CLOSE_TIMEOUT`] in
/// any case.
async fn close_promptly(publisher: Publisher) {
    let watched = publisher.clone();
    let gone = async {
        loop {
            if watched.stats().connected_to == 0 && !watched.connect_errors().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(CLOSE_TIMEOUT, publisher.close()) => {}
        () = gone => {
            let s = watched.stats();
            tracing::warn!(
                audit_records = s.audit_records,
                audit_acknowledged = s.audit_acknowledged,
                "no collector is reachable any more: exiting without sending this run's \
                 audit counts (every event was acknowledged)"
            );
        }
    }
}

/// The longest wait for `close` (the audit records) once every event is
/// acknowledged.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The collectors' connect errors when publishing should give up: past
/// `give_up` (none with a spool), nothing connected and nothing acknowledged yet.
fn unreachable_collectors(
    publisher: &Publisher,
    give_up: Option<Instant>,
) -> Option<Vec<conduit_publisher::ConnectError>> {
    if Instant::now() < give_up? {
        return None;
    }
    let stats = publisher.stats();
    if stats.connected_to != 0 || stats.acknowledged + stats.replayed > 0 {
        return None;
    }
    let errors = publisher.connect_errors();
    (!errors.is_empty()).then_some(errors)
}

/// Waits until [`unreachable_collectors`] says to give up (forever with a spool).
async fn wait_unreachable(
    publisher: &Publisher,
    give_up: Option<Instant>,
) -> Vec<conduit_publisher::ConnectError> {
    loop {
        if let Some(errors) = unreachable_collectors(publisher, give_up) {
            return errors;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
