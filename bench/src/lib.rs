//! conduit's benchmarks, kept out of the `conduit` binary: the scenarios of
//! `conduit-bench` and the measurement helpers they share.
//!
//! The scenarios start the real `conduit` executable (collectors, workers,
//! `conduit audit`) as child processes, so their memory and CPU can be read from
//! `/proc`; [`children::Conduit`] says which executable that is (by default the
//! `conduit` next to `conduit-bench`, as `cargo build --release --bin conduit
//! --bin conduit-bench` leaves them). `docs/benchmarks.md` has the results and
//! the commands that reproduce them.
//!
//! # Layout
//!
//! - [`events`]: the deterministic ~300-byte JSON ad-serving event every scenario
//!   sends (and `conduit-bench gen` writes for the peers).
//! - [`measure`]: median/min/max, nearest-rank percentiles, least-squares slopes,
//!   JSON result lines.
//! - [`procfs`]: CPU time, RSS, peak RSS and open file descriptors of a process,
//!   and the load average, from `/proc`.
//! - [`children`]: the `conduit` executable, child processes that print a ready
//!   line, and the two-datacenter bus (collector + worker per cluster).
//! - [`pacer`]: pre-generated payloads and a publisher that publishes at a fixed
//!   rate.
//! - [`records`]: counting the records a root holds (the loss checks).
//! - [`rundir`]: fresh run directories on local disk and HDFS.
//! - [`peers`]: clients of the systems conduit is compared with (NATS JetStream;
//!   rsyslog is driven by `scripts/peers/rsyslog.sh`).
//! - [`scenarios`]: one module per `conduit-bench` subcommand.

pub mod children;
pub mod events;
pub mod measure;
pub mod pacer;
pub mod peers;
pub mod procfs;
pub mod records;
pub mod rundir;
pub mod scenarios;

/// The topic every scenario publishes to.
pub const TOPIC: &str = "bench";
