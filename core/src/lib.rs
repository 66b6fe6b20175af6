//! `conduit-core`: what every conduit service shares.
//!
//! Conduit moves events from serving apps to collectors, which write zstd files per
//! topic; a worker seals them into minute directories (`streams_local`), merges
//! datacenters (`streams`) and mirrors them; batch jobs and tail readers consume the
//! sealed minutes. Everything those services agree on lives here, so no service grows
//! its own copy.
//!
//! # Layout
//! - [`storage`]: the async [`Storage`] trait, local-disk and HDFS backends, retry
//!   and fault-injection wrappers, and the [`storage::conformance`] suite every
//!   backend runs.
//! - [`layout`]: the one module that builds and parses every path (topics, minutes,
//!   views, collector files, markers, system state).
//! - [`tree`]: the one way to read a topic's tree in storage: walking its minute
//!   and hour directories, listing a view's topics, selecting its collector files.
//! - [`format`]: the data file format (independent zstd frames of whole records,
//!   `lines` or `base64`, close trailer and reading it back, torn-tail recovery).
//! - [`heartbeat`], [`manifest`] and [`records`]: one serde type per JSON document
//!   conduit stores (heartbeats, `_SUCCESS` manifests, `_audit` and `_invalid`
//!   records, checkpoints, leases, the dedup snapshot), each specified in
//!   `docs/format.md`.
//! - [`config`]: the TOML configuration with key-naming validation; every default
//!   is defined there once; [`schema`]: a topic's JSON schema (typed Parquet
//!   columns of its hourly files).
//! - [`clock`]: the [`Clock`] trait, so minute boundaries are testable without sleeps.
//! - [`text`] and [`ratelimit`]: client-supplied text in logs escaped and capped, and
//!   log lines about client mistakes rate-limited.

pub mod allow;
pub mod clock;
pub mod config;
pub mod format;
pub mod heartbeat;
pub mod http;
pub mod layout;
pub mod manifest;
pub mod ratelimit;
pub mod records;
pub mod schema;
pub mod scribe;
pub mod storage;
pub mod text;
pub mod tls;
pub mod tree;

pub use clock::{Clock, SharedClock, SystemClock, TestClock};
pub use config::{CompactFormat, Config, ConfigError, TopicSettings, Validation};
pub use format::{Encoding, FormatError, FrameEncoder, RecordError, Trailer};
pub use layout::{LayoutError, Minute, NodeName, Topic, View};
pub use manifest::{Manifest, ManifestError, ManifestFile, QuarantinedFile};
pub use storage::{
    open_root, CreateMode, FileStatus, FileWriter, RenameMode, SharedStorage, Storage,
    StorageError, StorageResult,
};
pub use tree::{CollectorFile, MinuteWalker};
