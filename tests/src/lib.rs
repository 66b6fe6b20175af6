//! conduit's end-to-end tests (`tests/tests/*.rs`): the real `conduit` binary, real
//! Scribe clients from PyPI, the real HDFS of `scripts/hdfs.sh`, and stock readers
//! (`zstd`, Python `zstandard`, DuckDB). Their fixtures are in `conduit-testkit`.
//!
//! This library only keeps the old paths that `tests/bench_smoke.rs` imports,
//! until that file moves to the bench crate (issue 18); remove it then.

pub use conduit_testkit::gate::python_has;
pub use conduit_testkit::process::{conduit_bin, workspace_root};

/// Whether the Python module can be used (see `conduit_testkit::gate`).
pub fn require_python(module: &str) -> bool {
    conduit_testkit::gate::python("bench_smoke", module)
}
