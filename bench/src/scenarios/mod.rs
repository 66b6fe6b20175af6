//! One module per `conduit-bench` subcommand: its arguments (`clap`) and its
//! `run`, which prints a table on stdout, progress on stderr, and appends JSON
//! result lines with `--json`.
//!
//! - [`ingest`]: collector ingest over Scribe (events/s, ack latency, RSS, CPU).
//! - [`publish`]: the publisher library's per-call cost and end-to-end throughput.
//! - [`limits`]: this machine's ceilings (synced writes, zstd, loopback TCP).
//! - [`gen`]: the benchmark's events as a file, for the peers.
//! - [`seal_latency`]: minute end to `_SUCCESS` in the local, merged and mirror
//!   views.
//! - [`catch_up`]: one hour of sealed history read by DuckDB and by PinTail.
//! - [`soak`]: the bus at a fixed rate; memory and descriptors over time, audit.
//! - [`nats_ingest`]: ingest side by side with NATS JetStream.
//! - [`hsync_loop`]: `hdfs-native` alone, write + hsync in a loop, with the
//!   NameNode's `fsync` every time or only after a new block.
//! - [`storage_ops`]: the latency of each storage call (create, sync, close,
//!   rename, reads) on one root, local or HDFS.
//! - [`tail_latency`]: publish-to-delivery latency of a PinTail consumer group
//!   (optionally against a NATS JetStream pull consumer).

pub mod catch_up;
pub mod gen;
pub mod hsync_loop;
pub mod ingest;
pub mod limits;
pub mod nats_ingest;
pub mod publish;
pub mod seal_latency;
pub mod soak;
pub mod storage_ops;
pub mod tail_latency;
