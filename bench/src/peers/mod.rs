//! The systems conduit is compared with, as the scenarios drive them.
//!
//! - [`nats`]: a private `nats-server` with JetStream (started through
//!   `scripts/peers/nats.sh serve`) and a client of the NATS text protocol,
//!   written here (no client library) so that what it does per message is plain.
//!
//! rsyslog has no Rust side: `scripts/peers/rsyslog.sh bench` runs it, fed the
//! events `conduit-bench gen` writes.

pub mod nats;
