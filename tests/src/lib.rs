//! conduit's end-to-end tests (`tests/tests/*.rs`): the real `conduit` binary, real
//! Scribe clients from PyPI, the real HDFS of `scripts/hdfs.sh`, and stock readers
//! (`zstd`, Python `zstandard`, DuckDB). Their fixtures are in `conduit-testkit`;
//! this library is empty.
