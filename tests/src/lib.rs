//! Helpers for conduit's end-to-end tests (`tests/tests/*.rs`).
//!
//! The tests start the real `conduit` binary (built by cargo as a dependency of
//! this package's tests: `env!("CARGO_BIN_EXE_conduit")` is not available across
//! packages, so [`conduit_bin`] builds the path from the target directory), real
//! Scribe clients from PyPI, the real HDFS of `scripts/hdfs.sh`, and stock readers
//! (`zstd`, Python `zstandard`, DuckDB).

pub mod harness;

pub use harness::*;
