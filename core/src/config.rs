//! Configuration: one TOML file describes clusters, topics, collectors and workers.
//!
//! `conf/conduit.toml` is the commented reference. Every table rejects unknown keys,
//! and [`Config::validate`] names the key of any bad value
//! (`topics.clicks.merge_into: unknown cluster "dc9"`). Every setting has a default,
//! so an empty file is a valid single-cluster-less config and services can run from
//! flags alone (`--root`, `--cluster`), with [`Config::single_cluster`].
//!
//! Each default is defined once, here (the `default_*` functions and the `DEFAULT_*`
//! constants). [`key_defaults`] lists every key with its default; the tests check
//! `docs/configuration.md` and `conf/conduit.toml` against it, and the `conduit`
//! binary checks the defaults its flag help mentions.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::format::{Codec, Encoding};
use crate::layout::{NodeName, Topic};
use crate::schema::TopicSchema;

/// Default port of a collector's HTTP listener (`collector.http`): `/metrics`,
/// `/health` and open-file reads. Its Scribe port is [`crate::scribe::DEFAULT_PORT`].
pub const DEFAULT_HTTP_PORT: u16 = 14630;

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrongly typed values.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is out of range or refers to something that does not exist.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// Dotted path of the key (`topics.clicks.encoding`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A topic's `format`: gzip files are written in the merged view only, so a gzip
/// topic needs one.
fn check_format(key: &str, format: Codec, merge_into: Option<&str>) -> Result<(), ConfigError> {
    if format == Codec::Gzip && merge_into.is_none() {
        return Err(invalid(
            format!("{key}.format"),
            "\"gzip\" files are written in the merged view (streams/), and this topic has none: set merge_into (the local view stays zstd)",
        ));
    }
    Ok(())
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Clusters by name; each is one storage root.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Settings every topic gets unless it overrides them.
    #[serde(default)]
    pub topic_defaults: TopicDefaults,
    /// Per-topic settings.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
    /// Collector daemon settings.
    #[serde(default)]
    pub collector: CollectorConfig,
    /// Worker settings.
    #[serde(default)]
    pub worker: WorkerConfig,
}

/// One cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Storage root: `/path`, `file:///path` or `hdfs://namenode:port/path`.
    pub root: String,
}

/// How payloads of a topic are checked before they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// Any payload the encoding can store.
    #[default]
    None,
    /// The payload must be valid UTF-8.
    Utf8,
    /// The payload must be one valid JSON value.
    Json,
}

impl Validation {
    /// Checks a payload; the error says why it failed.
    pub fn check(self, payload: &[u8]) -> Result<(), String> {
        match self {
            Validation::None => Ok(()),
            Validation::Utf8 => std::str::from_utf8(payload)
                .map(|_| ())
                .map_err(|e| format!("not valid utf-8: {e}")),
            Validation::Json => serde_json::from_slice::<serde::de::IgnoredAny>(payload)
                .map(|_| ())
                .map_err(|e| format!("not valid json: {e}")),
        }
    }
}

/// What the hourly compaction of a topic writes (`compact_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompactFormat {
    /// One zstd file of the hour's records, bytes unchanged (`docs/format.md` §7.4).
    #[default]
    Lines,
    /// One Parquet file, a row per event (`docs/format.md` §7.5).
    Parquet,
}

/// Retention of each view, in hours.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Collector files and the local view.
    #[serde(default = "default_local_retention")]
    pub local: u32,
    /// The merged view and its mirrors.
    #[serde(default = "default_merged_retention")]
    pub merged: u32,
    /// Hourly compacted files.
    #[serde(default = "default_hourly_retention")]
    pub hourly: u32,
}

fn default_local_retention() -> u32 {
    48
}
fn default_merged_retention() -> u32 {
    168
}
fn default_hourly_retention() -> u32 {
    720
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            local: default_local_retention(),
            merged: default_merged_retention(),
            hourly: default_hourly_retention(),
        }
    }
}

/// Defaults applied to every topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicDefaults {
    /// Record encoding.
    #[serde(default)]
    pub encoding: Encoding,
    /// Codec of the merged (and hourly) view's files: `zstd`, or `gzip` for batch
    /// readers with no zstd codec (the worker transcodes; `docs/format.md` §3.7).
    #[serde(default)]
    pub format: Codec,
    /// Payload validation.
    #[serde(default)]
    pub validate: Validation,
    /// Retention per view.
    #[serde(default)]
    pub retention_hours: Retention,
    /// Whether the worker writes hourly compacted files.
    #[serde(default)]
    pub compact: bool,
    /// What the hourly files are: zstd lines or Parquet.
    #[serde(default)]
    pub compact_format: CompactFormat,
    /// Typed Parquet columns (`compact_format = "parquet"` only); unset: none.
    #[serde(default)]
    pub schema: Option<TopicSchema>,
    /// Cluster holding the merged view (`None`: no merged view).
    #[serde(default)]
    pub merge_into: Option<String>,
    /// Clusters whose local views feed the merged view (empty: every cluster).
    #[serde(default)]
    pub merge_sources: Vec<String>,
    /// Clusters the merged view is mirrored to.
    #[serde(default)]
    pub mirrors: Vec<String>,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            encoding: Encoding::Lines,
            format: Codec::Zstd,
            validate: Validation::None,
            retention_hours: Retention::default(),
            compact: false,
            compact_format: CompactFormat::Lines,
            schema: None,
            merge_into: None,
            merge_sources: Vec::new(),
            mirrors: Vec::new(),
        }
    }
}

/// One topic's overrides; anything unset comes from `topic_defaults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Record encoding.
    pub encoding: Option<Encoding>,
    /// Codec of the merged (and hourly) view's files.
    pub format: Option<Codec>,
    /// Payload validation.
    pub validate: Option<Validation>,
    /// Retention per view.
    pub retention_hours: Option<Retention>,
    /// Whether the worker writes hourly compacted files.
    pub compact: Option<bool>,
    /// What the hourly files are.
    pub compact_format: Option<CompactFormat>,
    /// Typed Parquet columns.
    pub schema: Option<TopicSchema>,
    /// Cluster holding the merged view.
    pub merge_into: Option<String>,
    /// Clusters feeding the merged view.
    pub merge_sources: Option<Vec<String>>,
    /// Clusters the merged view is mirrored to.
    pub mirrors: Option<Vec<String>>,
}

/// A topic's effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSettings {
    /// The topic.
    pub topic: Topic,
    /// Record encoding.
    pub encoding: Encoding,
    /// Codec of the merged (and hourly) view's files.
    pub format: Codec,
    /// Payload validation.
    pub validate: Validation,
    /// Retention per view.
    pub retention_hours: Retention,
    /// Whether hourly compaction runs.
    pub compact: bool,
    /// What the hourly files are.
    pub compact_format: CompactFormat,
    /// Typed Parquet columns, if any.
    pub schema: Option<TopicSchema>,
    /// Cluster holding the merged view, if any.
    pub merge_into: Option<String>,
    /// Clusters feeding the merged view (resolved: never empty when `merge_into` is set).
    pub merge_sources: Vec<String>,
    /// Mirror clusters.
    pub mirrors: Vec<String>,
}

/// Collector settings. Sizes are bytes, times are in the unit their name says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Scribe/Thrift listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// HTTP listen address (`/metrics`, `/health`, open-file reads).
    #[serde(default = "default_http")]
    pub http: String,
    /// Reject topics that are not listed under `[topics]` (to `_invalid`).
    #[serde(default)]
    pub strict_topics: bool,
    /// Group-commit window: calls arriving within it share one frame and one sync.
    #[serde(default = "default_group_commit_ms")]
    pub group_commit_ms: u64,
    /// zstd level of data frames.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// A data file is closed when it reaches this size (or at the minute boundary).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Largest Thrift frame accepted; a larger one closes the connection.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u64,
    /// Largest single message; a larger one goes to `_invalid`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    /// Connections above this get `TRY_LATER` and are closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Bytes queued per topic before callers get `TRY_LATER`.
    #[serde(default = "default_topic_queue_bytes")]
    pub topic_queue_bytes: u64,
    /// Local directory for the spool used while storage is unavailable.
    #[serde(default)]
    pub spool_dir: Option<String>,
    /// Spool size bound; beyond it callers get `TRY_LATER`.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// How often the heartbeat (liveness and watermarks) is published.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A storage operation taking longer than this counts as failed (the collector
    /// then spools or answers `TRY_LATER`).
    #[serde(default = "default_storage_timeout_ms")]
    pub storage_timeout_ms: u64,
    /// A commit round whose storage steps (create, write, sync) have not finished
    /// within this counts storage as unavailable: the round's calls go to the spool
    /// (or get `TRY_LATER`) and the stuck write finishes or fails in the background.
    #[serde(default = "default_storage_deadline_ms")]
    pub storage_deadline_ms: u64,
    /// Bytes the collector holds at most for calls read and not yet answered
    /// (frames arriving, decoded calls, encoded parts, queued rounds); calls past
    /// it get `TRY_LATER`. Frames still arriving may hold half of it.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// Connections from one client address above this get `TRY_LATER` and are
    /// closed (after evicting that address's longest idle connection, if any).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// A new connection must complete its first frame within this.
    #[serde(default = "default_first_call_timeout_ms")]
    pub first_call_timeout_ms: u64,
    /// A connection with no call in progress and nothing received for this long
    /// is closed.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// A frame begun must be complete within this, or its connection is closed.
    #[serde(default = "default_frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// HTTP connections served at once; at the limit, the connection waiting
    /// longest for request headers is closed to make room.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// An HTTP client must send a request's headers within this.
    #[serde(default = "default_http_header_timeout_ms")]
    pub http_header_timeout_ms: u64,
    /// After SIGTERM the collector stops within this, drained or not (acked data
    /// is durable; files left open are recovered at the next start).
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Most data files open at once (storage and spool); before opening one more,
    /// the least recently written idle file is closed. Unset: derived from the
    /// process's open-file limit ([`max_open_files_for`]).
    #[serde(default)]
    pub max_open_files: Option<usize>,
    /// Most new data files one commit round opens; a call with more new topics is
    /// spread over later rounds while other calls are committed in every round.
    #[serde(default = "default_max_new_files_per_round")]
    pub max_new_files_per_round: usize,
    /// Client networks (CIDR, IPv4 and IPv6; a bare address is one host) allowed
    /// to connect to the Scribe and HTTP ports; others are closed at accept.
    /// Empty: every address ([`crate::allow::AllowList`]).
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// PEM certificate chain of the Scribe port; with `tls_key`, the port
    /// serves TLS only. Unset: plain Scribe.
    #[serde(default)]
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<String>,
    /// PEM bundle of the CAs that sign client certificates; when set, every TLS
    /// client must present a valid certificate.
    #[serde(default)]
    pub tls_client_ca: Option<String>,
    /// Serve the HTTP port with TLS too, with the same certificate, key and
    /// client CA.
    #[serde(default)]
    pub http_tls: bool,
}

impl CollectorConfig {
    /// `allow_networks` parsed (checked by [`Config::validate`]).
    pub fn allow_list(&self) -> Result<crate::allow::AllowList, crate::allow::AllowListError> {
        crate::allow::AllowList::parse(&self.allow_networks)
    }

    /// The Scribe port's TLS settings, when `tls_cert` and `tls_key` are set.
    pub fn server_tls(&self) -> Option<crate::tls::ServerTls> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::ServerTls {
                cert: cert.into(),
                key: key.into(),
                client_ca: self.tls_client_ca.as_ref().map(Into::into),
            }),
            _ => None,
        }
    }

    /// `max_open_files`, or when unset the value derived from this process's
    /// open-file limit ([`max_open_files_for`]).
    pub fn open_files_limit(&self) -> usize {
        self.max_open_files
            .unwrap_or_else(|| max_open_files_for(crate::storage::open_file_limit()))
    }
}

/// Cap of the derived `collector.max_open_files`.
pub const MAX_OPEN_FILES_CAP: usize = 1000;

/// `collector.max_open_files` when unset, for a process whose soft open-file limit
/// (`RLIMIT_NOFILE`) is `nofile` (`None`: unlimited): half the limit, at most
/// [`MAX_OPEN_FILES_CAP`], at least 1. The other half stays for connections, the
/// HTTP listener, heartbeats and snapshots.
pub fn max_open_files_for(nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => usize::try_from(n / 2)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_OPEN_FILES_CAP),
        None => MAX_OPEN_FILES_CAP,
    }
}

/// Default of `collector.listen`: Scribe's port on the loopback interface.
pub fn default_listen() -> String {
    format!("127.0.0.1:{}", crate::scribe::DEFAULT_PORT)
}
/// Default of `collector.http`.
pub fn default_http() -> String {
    format!("127.0.0.1:{DEFAULT_HTTP_PORT}")
}
fn default_group_commit_ms() -> u64 {
    2
}
fn default_zstd_level() -> i32 {
    1
}
fn default_max_file_bytes() -> u64 {
    256 << 20
}
fn default_max_frame_bytes() -> u64 {
    64 << 20
}
fn default_max_message_bytes() -> u64 {
    1 << 20
}
fn default_max_connections() -> usize {
    1024
}
fn default_topic_queue_bytes() -> u64 {
    64 << 20
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_storage_timeout_ms() -> u64 {
    10_000
}
fn default_storage_deadline_ms() -> u64 {
    1000
}
fn default_max_inflight_bytes() -> u64 {
    512 << 20
}
fn default_max_connections_per_ip() -> usize {
    256
}
fn default_first_call_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_secs() -> u64 {
    600
}
fn default_frame_timeout_ms() -> u64 {
    60_000
}
fn default_http_max_connections() -> usize {
    crate::http::MAX_CONNECTIONS
}
fn default_http_header_timeout_ms() -> u64 {
    crate::http::HEADER_READ_TIMEOUT.as_millis() as u64
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}
fn default_max_new_files_per_round() -> usize {
    64
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: default_listen(),
            http: default_http(),
            strict_topics: false,
            group_commit_ms: default_group_commit_ms(),
            zstd_level: default_zstd_level(),
            max_file_bytes: default_max_file_bytes(),
            max_frame_bytes: default_max_frame_bytes(),
            max_message_bytes: default_max_message_bytes(),
            max_connections: default_max_connections(),
            topic_queue_bytes: default_topic_queue_bytes(),
            spool_dir: None,
            spool_max_bytes: default_spool_max_bytes(),
            heartbeat_ms: default_heartbeat_ms(),
            storage_timeout_ms: default_storage_timeout_ms(),
            storage_deadline_ms: default_storage_deadline_ms(),
            max_inflight_bytes: default_max_inflight_bytes(),
            max_connections_per_ip: default_max_connections_per_ip(),
            first_call_timeout_ms: default_first_call_timeout_ms(),
            idle_timeout_secs: default_idle_timeout_secs(),
            frame_timeout_ms: default_frame_timeout_ms(),
            http_max_connections: default_http_max_connections(),
            http_header_timeout_ms: default_http_header_timeout_ms(),
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
            max_open_files: None,
            max_new_files_per_round: default_max_new_files_per_round(),
            allow_networks: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            http_tls: false,
        }
    }
}

/// Worker settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Pause between passes of each job.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A collector silent for longer than this no longer holds back sealing.
    #[serde(default = "default_collector_timeout_secs")]
    pub collector_timeout_secs: u64,
    /// A merge source lagging more than this no longer holds back the merged view.
    #[serde(default = "default_max_source_lag_secs")]
    pub max_source_lag_secs: u64,
    /// Lease duration of the active worker; a standby takes over after it expires.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// How many sealed minutes back the local seal looks for an earlier copy of a
    /// publisher batch (stored by two collectors after a failover) to drop.
    #[serde(default = "default_dedup_window_minutes")]
    pub dedup_window_minutes: u64,
    /// Whether the local seal reads every data file in full to compute its
    /// CRC-32C and compare it with the collector's (the checksum in its close
    /// trailer). Off: a file whose trailer carries the collector's checksum is
    /// described from its tail alone (one ranged read), and `conduit verify` and
    /// the verified copies of merge and mirror compare the whole file.
    #[serde(default)]
    pub seal_reads_files: bool,
    /// Longest time one storage call of the worker (a list, a read of a chunk, a
    /// create, a rename, ...) may take on any cluster before it fails as a
    /// timeout. A cluster behind a cut network link does not answer at all (its
    /// packets vanish), and without this bound a call waits for the operating
    /// system's TCP timeout (minutes); with it the pass fails for that cluster's
    /// topics and the merge job judges the source by its lag allowance. A read
    /// is bounded by its progress instead: it fails after this long without a
    /// byte received, so a big read on a slow link that keeps moving finishes
    /// (`storage_min_read_bytes_per_sec`).
    #[serde(default = "default_worker_storage_timeout_ms")]
    pub storage_timeout_ms: u64,
    /// Slowest read the worker waits for (bytes a second): a read of `n` bytes
    /// that keeps trickling fails once it has taken `storage_timeout_ms` plus `n`
    /// at this rate, so a link that moves a byte now and then cannot hold a pass
    /// for ever. Reads at this rate or faster always finish.
    #[serde(default = "default_worker_storage_min_read_bytes_per_sec")]
    pub storage_min_read_bytes_per_sec: u64,
}

/// Largest `worker.dedup_window_minutes`: a day of batch identities is what the
/// worker may keep in memory and in a checkpoint per topic.
pub const MAX_DEDUP_WINDOW_MINUTES: u64 = 1440;

fn default_interval_ms() -> u64 {
    500
}
fn default_collector_timeout_secs() -> u64 {
    120
}
fn default_max_source_lag_secs() -> u64 {
    300
}
fn default_lease_secs() -> u64 {
    30
}
fn default_dedup_window_minutes() -> u64 {
    10
}
fn default_worker_storage_timeout_ms() -> u64 {
    30_000
}
fn default_worker_storage_min_read_bytes_per_sec() -> u64 {
    16 << 10
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            interval_ms: default_interval_ms(),
            collector_timeout_secs: default_collector_timeout_secs(),
            max_source_lag_secs: default_max_source_lag_secs(),
            lease_secs: default_lease_secs(),
            dedup_window_minutes: default_dedup_window_minutes(),
            seal_reads_files: false,
            storage_timeout_ms: default_worker_storage_timeout_ms(),
            storage_min_read_bytes_per_sec: default_worker_storage_min_read_bytes_per_sec(),
        }
    }
}

/// What a configuration key is when the file does not give it.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyDefault {
    /// The key must be given (`clusters.NAME.root`).
    Required,
    /// Unset unless given (`collector.spool_dir`, `topic_defaults.merge_into`).
    Unset,
    /// This value.
    Value(toml::Value),
}

impl std::fmt::Display for KeyDefault {
    /// As flag help and prose show it: `127.0.0.1:1463` (strings unquoted), `2`,
    /// `[]`, `unset`, `required`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyDefault::Required => f.write_str("required"),
            KeyDefault::Unset => f.write_str("unset"),
            KeyDefault::Value(toml::Value::String(text)) => f.write_str(text),
            KeyDefault::Value(value) => write!(f, "{value}"),
        }
    }
}

/// The rules tying `compact`, `compact_format` and `schema` of one topic table
/// (`key`): `format` and `schema` as the table sets them (`None`: inherited), the
/// others effective. `[topic_defaults]` may set `compact_format = "parquet"` with
/// `compact = false` (for the topics that turn compaction on); a topic table that
/// asks for Parquet itself must compact.
fn check_compaction(
    key: &str,
    compact: bool,
    format: Option<CompactFormat>,
    effective_format: CompactFormat,
    schema: &Option<TopicSchema>,
) -> Result<(), ConfigError> {
    if format == Some(CompactFormat::Parquet) && !compact {
        return Err(invalid(
            format!("{key}.compact_format"),
            "\"parquet\" is the format of hourly compaction, which is off: set compact = true",
        ));
    }
    if let Some(schema) = schema {
        if effective_format != CompactFormat::Parquet {
            return Err(invalid(
                format!("{key}.schema"),
                "a schema types the columns of hourly Parquet files: set compact_format = \"parquet\" (and compact = true)",
            ));
        }
        schema
            .check()
            .map_err(|e| invalid(format!("{key}.schema"), e))?;
    }
    Ok(())
}

/// Every key of the configuration file with its default, in dotted form
/// (`collector.listen`, `topic_defaults.retention_hours.local`), derived from
/// [`Config::default`]. The keys of `topic_defaults` also apply per topic
/// (`topics.NAME.*`); `clusters.NAME.root` stands for every cluster's root.
pub fn key_defaults() -> Vec<(String, KeyDefault)> {
    fn flatten(prefix: &str, value: serde_json::Value, out: &mut Vec<(String, KeyDefault)>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (key, value) in map {
                    let key = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&key, value, out);
                }
            }
            // Maps of named tables (`clusters`, `topics`): no defaults of their own.
            serde_json::Value::Object(_) => {}
            serde_json::Value::Null => out.push((prefix.to_owned(), KeyDefault::Unset)),
            value => {
                let value = toml::Value::try_from(value).expect("a json default is a toml value");
                out.push((prefix.to_owned(), KeyDefault::Value(value)));
            }
        }
    }
    let mut keys = vec![("clusters.NAME.root".to_owned(), KeyDefault::Required)];
    let defaults = serde_json::to_value(Config::default()).expect("the config serializes");
    flatten("", defaults, &mut keys);
    keys
}

/// The default of one key of [`key_defaults`], if it is a key.
pub fn key_default(key: &str) -> Option<KeyDefault> {
    key_defaults()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, default)| default)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&shown, &text)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// A config with one cluster and default everything else (services run from
    /// flags alone: `--root DIR --cluster dc1`).
    pub fn single_cluster(name: &str, root: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.clusters.insert(
            name.to_string(),
            ClusterConfig {
                root: root.to_string(),
            },
        );
        config.validate()?;
        Ok(config)
    }

    /// Checks every value, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, cluster) in &self.clusters {
            NodeName::new(name).map_err(|e| invalid(format!("clusters.{name}"), e.to_string()))?;
            let root = cluster.root.trim();
            let key = format!("clusters.{name}.root");
            if root.is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
            if root.contains("://")
                && !(root.starts_with("file:///")
                    || root.starts_with("hdfs://")
                    || root.starts_with("viewfs://"))
            {
                return Err(invalid(
                    key,
                    format!("{root:?}: expected /path, file:///path or hdfs://host:port/path"),
                ));
            }
        }
        self.check_topic_common(
            "topic_defaults",
            self.topic_defaults.merge_into.as_deref(),
            &self.topic_defaults.merge_sources,
            &self.topic_defaults.mirrors,
            &self.topic_defaults.retention_hours,
        )?;
        check_format(
            "topic_defaults",
            self.topic_defaults.format,
            self.topic_defaults.merge_into.as_deref(),
        )?;
        let d = &self.topic_defaults;
        check_compaction("topic_defaults", true, None, d.compact_format, &d.schema)?;
        for (name, topic) in &self.topics {
            let key = format!("topics.{name}");
            Topic::new(name).map_err(|e| invalid(&key, e.to_string()))?;
            let settings = self.resolve(name);
            self.check_topic_common(
                &key,
                settings.merge_into.as_deref(),
                topic.merge_sources.as_deref().unwrap_or(&[]),
                &settings.mirrors,
                &settings.retention_hours,
            )?;
            check_format(&key, settings.format, settings.merge_into.as_deref())?;
            check_compaction(
                &key,
                settings.compact,
                topic.compact_format,
                settings.compact_format,
                &topic.schema,
            )?;
        }
        let c = &self.collector;
        if c.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "collector.listen",
                format!("{:?} is not an address like {}", c.listen, default_listen()),
            ));
        }
        if c.http.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "collector.http",
                format!("{:?} is not an address like {}", c.http, default_http()),
            ));
        }
        if c.group_commit_ms > 1000 {
            return Err(invalid(
                "collector.group_commit_ms",
                format!("{} is more than 1000 ms", c.group_commit_ms),
            ));
        }
        if !(-7..=22).contains(&c.zstd_level) {
            return Err(invalid(
                "collector.zstd_level",
                format!("{} is outside -7..=22", c.zstd_level),
            ));
        }
        if c.max_file_bytes < 4096 {
            return Err(invalid(
                "collector.max_file_bytes",
                format!("{} is less than 4096", c.max_file_bytes),
            ));
        }
        if c.max_frame_bytes < 1024 || c.max_frame_bytes > (1 << 31) {
            return Err(invalid(
                "collector.max_frame_bytes",
                format!("{} is outside 1024..=2147483648", c.max_frame_bytes),
            ));
        }
        if c.max_message_bytes == 0 || c.max_message_bytes > c.max_frame_bytes {
            return Err(invalid(
                "collector.max_message_bytes",
                format!(
                    "{} must be between 1 and collector.max_frame_bytes ({})",
                    c.max_message_bytes, c.max_frame_bytes
                ),
            ));
        }
        if c.max_connections == 0 {
            return Err(invalid("collector.max_connections", "must be at least 1"));
        }
        if c.topic_queue_bytes < c.max_message_bytes {
            return Err(invalid(
                "collector.topic_queue_bytes",
                format!(
                    "{} is smaller than collector.max_message_bytes ({})",
                    c.topic_queue_bytes, c.max_message_bytes
                ),
            ));
        }
        if c.heartbeat_ms == 0 || c.heartbeat_ms > 60_000 {
            return Err(invalid(
                "collector.heartbeat_ms",
                format!("{} is outside 1..=60000", c.heartbeat_ms),
            ));
        }
        if c.storage_timeout_ms < 100 {
            return Err(invalid(
                "collector.storage_timeout_ms",
                format!("{} is less than 100", c.storage_timeout_ms),
            ));
        }
        if c.storage_deadline_ms < 100 || c.storage_deadline_ms > c.storage_timeout_ms {
            return Err(invalid(
                "collector.storage_deadline_ms",
                format!(
                    "{} is outside 100..=storage_timeout_ms ({})",
                    c.storage_deadline_ms, c.storage_timeout_ms
                ),
            ));
        }
        if c.max_inflight_bytes < c.max_frame_bytes {
            return Err(invalid(
                "collector.max_inflight_bytes",
                format!(
                    "{} is smaller than collector.max_frame_bytes ({})",
                    c.max_inflight_bytes, c.max_frame_bytes
                ),
            ));
        }
        for (key, value) in [
            ("collector.max_connections_per_ip", c.max_connections_per_ip),
            ("collector.http_max_connections", c.http_max_connections),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, ms) in [
            ("collector.first_call_timeout_ms", c.first_call_timeout_ms),
            ("collector.frame_timeout_ms", c.frame_timeout_ms),
            ("collector.http_header_timeout_ms", c.http_header_timeout_ms),
        ] {
            if ms < 100 {
                return Err(invalid(key, format!("{ms} is less than 100")));
            }
        }
        for (key, secs) in [
            ("collector.idle_timeout_secs", c.idle_timeout_secs),
            ("collector.shutdown_timeout_secs", c.shutdown_timeout_secs),
        ] {
            if secs == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if c.max_open_files == Some(0) {
            return Err(invalid("collector.max_open_files", "must be at least 1"));
        }
        if c.max_new_files_per_round == 0 {
            return Err(invalid(
                "collector.max_new_files_per_round",
                "must be at least 1",
            ));
        }
        if let Err(e) = c.allow_list() {
            return Err(invalid("collector.allow_networks", e.to_string()));
        }
        for (key, value) in [
            ("collector.tls_cert", &c.tls_cert),
            ("collector.tls_key", &c.tls_key),
            ("collector.tls_client_ca", &c.tls_client_ca),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(key, "must not be empty"));
            }
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return Err(invalid(
                if c.tls_cert.is_some() {
                    "collector.tls_key"
                } else {
                    "collector.tls_cert"
                },
                "collector.tls_cert and collector.tls_key go together: set both or neither",
            ));
        }
        if c.tls_cert.is_none() {
            if c.tls_client_ca.is_some() {
                return Err(invalid(
                    "collector.tls_client_ca",
                    "needs collector.tls_cert and collector.tls_key (client certificates are asked for only over TLS)",
                ));
            }
            if c.http_tls {
                return Err(invalid(
                    "collector.http_tls",
                    "needs collector.tls_cert and collector.tls_key",
                ));
            }
        }
        let w = &self.worker;
        if w.interval_ms == 0 {
            return Err(invalid("worker.interval_ms", "must be at least 1"));
        }
        if w.lease_secs < 2 {
            return Err(invalid(
                "worker.lease_secs",
                format!("{} is less than 2", w.lease_secs),
            ));
        }
        if w.storage_timeout_ms < 100 {
            return Err(invalid(
                "worker.storage_timeout_ms",
                format!("{} is less than 100", w.storage_timeout_ms),
            ));
        }
        if w.storage_min_read_bytes_per_sec == 0 {
            return Err(invalid(
                "worker.storage_min_read_bytes_per_sec",
                "must be at least 1",
            ));
        }
        if w.dedup_window_minutes > MAX_DEDUP_WINDOW_MINUTES {
            return Err(invalid(
                "worker.dedup_window_minutes",
                format!(
                    "{} is more than {MAX_DEDUP_WINDOW_MINUTES}",
                    w.dedup_window_minutes
                ),
            ));
        }
        Ok(())
    }

    fn check_topic_common(
        &self,
        key: &str,
        merge_into: Option<&str>,
        merge_sources: &[String],
        mirrors: &[String],
        retention: &Retention,
    ) -> Result<(), ConfigError> {
        let known = |cluster: &str, field: &str| -> Result<(), ConfigError> {
            if self.clusters.contains_key(cluster) {
                Ok(())
            } else {
                Err(invalid(
                    format!("{key}.{field}"),
                    format!(
                        "unknown cluster {cluster:?} (known: {})",
                        self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        };
        if let Some(dest) = merge_into {
            known(dest, "merge_into")?;
        }
        for s in merge_sources {
            known(s, "merge_sources")?;
        }
        for m in mirrors {
            known(m, "mirrors")?;
            if merge_into.is_none() {
                return Err(invalid(
                    format!("{key}.mirrors"),
                    "mirrors need a merged view: set merge_into",
                ));
            }
            if Some(m.as_str()) == merge_into {
                return Err(invalid(
                    format!("{key}.mirrors"),
                    format!("{m:?} is the merge_into cluster itself"),
                ));
            }
        }
        for (field, hours) in [
            ("local", retention.local),
            ("merged", retention.merged),
            ("hourly", retention.hourly),
        ] {
            if hours == 0 {
                return Err(invalid(
                    format!("{key}.retention_hours.{field}"),
                    "must be at least 1 hour",
                ));
            }
        }
        Ok(())
    }

    /// Effective settings of a topic (defaults for unlisted topics). The name is not
    /// validated here; callers hold a valid [`Topic`] or came through `validate`.
    fn resolve(&self, name: &str) -> TopicSettings {
        let d = &self.topic_defaults;
        let t = self.topics.get(name).cloned().unwrap_or_default();
        let merge_into = t.merge_into.or_else(|| d.merge_into.clone());
        let mut merge_sources = t.merge_sources.unwrap_or_else(|| d.merge_sources.clone());
        if merge_into.is_some() && merge_sources.is_empty() {
            merge_sources = self.clusters.keys().cloned().collect();
        }
        TopicSettings {
            topic: Topic::new(name).unwrap_or_else(|_| Topic::invalid()),
            encoding: t.encoding.unwrap_or(d.encoding),
            format: t.format.unwrap_or(d.format),
            validate: t.validate.unwrap_or(d.validate),
            retention_hours: t.retention_hours.unwrap_or(d.retention_hours),
            compact: t.compact.unwrap_or(d.compact),
            compact_format: t.compact_format.unwrap_or(d.compact_format),
            schema: t.schema.or_else(|| d.schema.clone()),
            merge_into,
            merge_sources,
            mirrors: t.mirrors.unwrap_or_else(|| d.mirrors.clone()),
        }
    }

    /// Effective settings of a topic: its own table over `topic_defaults`.
    pub fn topic(&self, topic: &Topic) -> TopicSettings {
        let mut settings = self.resolve(topic.as_str());
        settings.topic = topic.clone();
        settings
    }

    /// Whether the topic is listed under `[topics]`.
    pub fn is_listed(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic.as_str())
    }

    /// The root URI of a cluster.
    pub fn cluster_root(&self, cluster: &str) -> Result<&str, ConfigError> {
        self.clusters
            .get(cluster)
            .map(|c| c.root.as_str())
            .ok_or_else(|| {
                invalid(
                    format!("clusters.{cluster}"),
                    format!(
                        "no such cluster (known: {})",
                        self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const EXAMPLE: &str = r#"
        [clusters.dc1]
        root = "/var/lib/conduit/dc1"
        [clusters.dc2]
        root = "hdfs://nn:9000/conduit"

        [topic_defaults]
        merge_into = "dc1"
        mirrors = ["dc2"]

        [topics.clicks]
        validate = "json"
        retention_hours = { local = 24, merged = 72, hourly = 720 }
        compact = true

        [topics.raw_bytes]
        encoding = "base64"
        format = "gzip"
        mirrors = []

        [topics.orders]
        compact = true
        compact_format = "parquet"
        [topics.orders.schema]
        type = "object"
        required = ["id"]
        properties = { id = { type = "integer" }, note = { type = "string" } }
    "#;

    #[test]
    fn parses_and_resolves_topics() {
        let config = Config::parse("example", EXAMPLE).unwrap();
        let clicks = config.topic(&Topic::new("clicks").unwrap());
        assert_eq!(clicks.encoding, Encoding::Lines);
        assert_eq!(clicks.format, Codec::Zstd);
        assert_eq!(
            config.topic(&Topic::new("raw_bytes").unwrap()).format,
            Codec::Gzip
        );
        assert_eq!(clicks.validate, Validation::Json);
        assert_eq!(clicks.retention_hours.local, 24);
        assert!(clicks.compact);
        assert_eq!(clicks.merge_into.as_deref(), Some("dc1"));
        assert_eq!(clicks.merge_sources, vec!["dc1", "dc2"]);
        assert_eq!(clicks.mirrors, vec!["dc2"]);
        assert_eq!(clicks.compact_format, CompactFormat::Lines);
        assert_eq!(clicks.schema, None);
        let orders = config.topic(&Topic::new("orders").unwrap());
        assert_eq!(orders.compact_format, CompactFormat::Parquet);
        let schema = orders.schema.unwrap();
        assert_eq!(schema.required, vec!["id"]);
        assert_eq!(
            schema.properties.keys().collect::<Vec<_>>(),
            vec!["id", "note"]
        );
        let raw = config.topic(&Topic::new("raw_bytes").unwrap());
        assert_eq!(raw.encoding, Encoding::Base64);
        assert!(raw.mirrors.is_empty());
        let other = config.topic(&Topic::new("unlisted").unwrap());
        assert_eq!(other.retention_hours, Retention::default());
        assert!(!config.is_listed(&Topic::new("unlisted").unwrap()));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("f.toml", "[collector]\nlisten_addr = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listen_addr"), "{msg}");
        assert!(msg.contains("f.toml"), "{msg}");
        let err = Config::parse("f.toml", "[topics.a]\nencodign = \"lines\"\n").unwrap_err();
        assert!(err.to_string().contains("encodign"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[topics.a]\nencoding = \"gzip\"\n", "encoding"),
            ("[topics.a]\nformat = \"lz4\"\n", "format"),
            (
                "[topics.a]\nformat = \"gzip\"\n",
                "topics.a.format: \"gzip\" files are written in the merged view",
            ),
            (
                "[topics.a]\ncompact = true\ncompact_format = \"orc\"\n",
                "unknown variant `orc`, expected `lines` or `parquet`",
            ),
            (
                "[topics.a]\ncompact_format = \"parquet\"\n",
                "topics.a.compact_format: \"parquet\" is the format of hourly compaction, which is off: set compact = true",
            ),
            (
                "[topics.a]\ncompact = true\nschema = { type = \"object\", properties = { n = { type = \"integer\" } } }\n",
                "topics.a.schema: a schema types the columns of hourly Parquet files",
            ),
            (
                "[topics.a]\ncompact = true\ncompact_format = \"parquet\"\nschema = { type = \"object\", required = [\"m\"], properties = { n = { type = \"integer\" } } }\n",
                "topics.a.schema: required names \"m\"",
            ),
            ("[topics.\"a-b\"]\n", "topics.a-b"),
            ("[topics.a]\nmerge_into = \"dc9\"\n", "topics.a.merge_into"),
            ("[clusters.dc1]\nroot = \"s3://x\"\n", "clusters.dc1.root"),
            ("[clusters.\"dc-1\"]\nroot = \"/x\"\n", "clusters.dc-1"),
            ("[collector]\nzstd_level = 40\n", "collector.zstd_level"),
            ("[collector]\nlisten = \"nowhere\"\n", "collector.listen"),
            (
                "[collector]\nmax_message_bytes = 0\n",
                "collector.max_message_bytes",
            ),
            (
                "[collector]\nmax_inflight_bytes = 1048576\n",
                "collector.max_inflight_bytes: 1048576 is smaller than collector.max_frame_bytes",
            ),
            (
                "[collector]\nmax_connections_per_ip = 0\n",
                "collector.max_connections_per_ip",
            ),
            (
                "[collector]\nframe_timeout_ms = 5\n",
                "collector.frame_timeout_ms",
            ),
            (
                "[collector]\nallow_networks = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
                "collector.allow_networks: \"10.0.0.0/33\" is not a network",
            ),
            (
                "[collector]\ntls_cert = \"c.pem\"\n",
                "collector.tls_key: collector.tls_cert and collector.tls_key go together",
            ),
            (
                "[collector]\ntls_client_ca = \"ca.pem\"\n",
                "collector.tls_client_ca: needs collector.tls_cert",
            ),
            ("[collector]\nhttp_tls = true\n", "collector.http_tls"),
            (
                "[collector]\nshutdown_timeout_secs = 0\n",
                "collector.shutdown_timeout_secs",
            ),
            (
                "[topic_defaults.retention_hours]\nlocal = 0\n",
                "topic_defaults.retention_hours.local",
            ),
            (
                "[clusters.dc1]\nroot=\"/x\"\n[topics.a]\nmirrors = [\"dc1\"]\n",
                "topics.a.mirrors",
            ),
            (
                "[worker]\ndedup_window_minutes = 1441\n",
                "worker.dedup_window_minutes",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse("t", text).expect_err(text);
            assert!(err.to_string().contains(key), "{text:?} -> {err}");
        }
    }

    #[test]
    fn validation_modes() {
        assert!(Validation::Json.check(br#"{"a":1}"#).is_ok());
        assert!(Validation::Json.check(b"{nope").is_err());
        assert!(Validation::Utf8.check(&[0xff]).is_err());
        assert!(Validation::None.check(&[0xff]).is_ok());
    }

    fn workspace_file(path: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A default as `docs/configuration.md` writes it: `` `48` ``, `unset`,
    /// `(required)`.
    fn parse_documented(cell: &str) -> Option<KeyDefault> {
        match cell {
            "(required)" => Some(KeyDefault::Required),
            "unset" => Some(KeyDefault::Unset),
            _ => {
                let literal = cell.strip_prefix('`')?.strip_suffix('`')?;
                let table: toml::Table = toml::from_str(&format!("v = {literal}")).ok()?;
                Some(KeyDefault::Value(table["v"].clone()))
            }
        }
    }

    #[test]
    fn configuration_md_documents_every_key_with_its_default() {
        let doc = workspace_file("docs/configuration.md");
        let mut documented = BTreeMap::new();
        let mut table = None;
        for line in doc.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                // "## `[collector]`", "## `[topic_defaults]` and `[topics.NAME]`".
                table = heading
                    .split('`')
                    .nth(1)
                    .and_then(|t| t.strip_prefix('['))
                    .and_then(|t| t.strip_suffix(']'))
                    .map(str::to_owned);
                continue;
            }
            let (Some(table), Some(row)) = (&table, line.strip_prefix("| `")) else {
                continue;
            };
            let cells: Vec<&str> = row.split(" | ").collect();
            let key = cells[0].trim_end_matches('`');
            let default = parse_documented(cells[1].trim())
                .unwrap_or_else(|| panic!("{table}.{key}: cannot read the default {:?}", cells[1]));
            documented.insert(format!("{table}.{key}"), default);
        }
        let defaults: BTreeMap<String, KeyDefault> = key_defaults().into_iter().collect();
        for (key, default) in &defaults {
            match documented.get(key) {
                Some(doc) => assert_eq!(doc, default, "docs/configuration.md: {key}"),
                None => panic!("docs/configuration.md does not document {key}"),
            }
        }
        for key in documented.keys() {
            assert!(
                defaults.contains_key(key),
                "docs/configuration.md: no key {key}"
            );
        }
    }

    #[test]
    fn reference_config_states_every_key_with_its_default() {
        let text = workspace_file("conf/conduit.toml");
        Config::parse("conf/conduit.toml", &text).expect("the reference config is valid");
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        // Keys given (`key = ...`) and keys shown commented out (`# key = ...`).
        let mut given = BTreeSet::new();
        let mut commented = BTreeSet::new();
        let mut table = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[') {
                table = name.split(']').next().unwrap().to_owned();
                continue;
            }
            let (set, rest) = match line.strip_prefix('#') {
                Some(rest) => (&mut commented, rest.trim_start()),
                None => (&mut given, line),
            };
            let key: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !key.is_empty() && rest[key.len()..].trim_start().starts_with('=') {
                set.insert(format!("{table}.{key}"));
            }
        }
        let value_of = |key: &str| {
            key.split('.')
                .try_fold(toml::Value::Table(parsed.clone()), |v, k| v.get(k).cloned())
        };
        for (key, default) in key_defaults() {
            if key.starts_with("clusters.") {
                continue;
            }
            match default {
                KeyDefault::Required => unreachable!("only cluster roots are required"),
                // No default value to state: the file may show an example.
                KeyDefault::Unset => assert!(
                    given.contains(&key) || commented.contains(&key),
                    "conf/conduit.toml does not show {key}"
                ),
                KeyDefault::Value(default) => {
                    assert!(given.contains(&key), "conf/conduit.toml does not set {key}");
                    let value = value_of(&key).unwrap();
                    let example = matches!(&default, toml::Value::Array(a) if a.is_empty());
                    assert!(
                        example || value == default,
                        "conf/conduit.toml sets {key} = {value}, but its default is {default}"
                    );
                }
            }
        }
    }

    #[test]
    fn key_defaults_are_the_defaults() {
        assert_eq!(
            key_default("collector.listen").unwrap().to_string(),
            "127.0.0.1:1463"
        );
        assert_eq!(
            key_default("collector.http").unwrap().to_string(),
            format!("127.0.0.1:{DEFAULT_HTTP_PORT}")
        );
        assert_eq!(
            key_default("collector.max_file_bytes").unwrap().to_string(),
            "268435456"
        );
        assert_eq!(key_default("collector.spool_dir"), Some(KeyDefault::Unset));
        assert_eq!(
            key_default("topic_defaults.retention_hours.merged")
                .unwrap()
                .to_string(),
            "168"
        );
        assert_eq!(key_default("worker.nope"), None);
    }

    #[test]
    fn max_open_files_is_half_the_descriptor_limit_capped() {
        assert_eq!(max_open_files_for(Some(256)), 128);
        assert_eq!(max_open_files_for(Some(1024)), 512);
        assert_eq!(max_open_files_for(Some(1 << 20)), MAX_OPEN_FILES_CAP);
        assert_eq!(max_open_files_for(None), MAX_OPEN_FILES_CAP);
        assert_eq!(max_open_files_for(Some(1)), 1);
        let mut config = Config::default();
        config.collector.max_open_files = Some(0);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("collector.max_open_files"), "{err}");
        config.collector.max_open_files = None;
        config.collector.max_new_files_per_round = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("collector.max_new_files_per_round"), "{err}");
    }

    #[test]
    fn storage_deadline_is_checked_against_the_timeout() {
        let mut config = Config::default();
        assert_eq!(config.collector.storage_deadline_ms, 1000);
        config.collector.storage_deadline_ms = 20_000;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("collector.storage_deadline_ms"), "{err}");
        assert!(err.contains("20000"), "{err}");
        config.collector.storage_deadline_ms = 50;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("collector.storage_deadline_ms"), "{err}");
        config.collector.storage_deadline_ms = 1500;
        config.validate().unwrap();
    }

    #[test]
    fn single_cluster_from_flags() {
        let config = Config::single_cluster("dc1", "/tmp/x").unwrap();
        assert_eq!(config.cluster_root("dc1").unwrap(), "/tmp/x");
        assert!(config
            .cluster_root("dc2")
            .unwrap_err()
            .to_string()
            .contains("dc2"));
        assert!(Config::single_cluster("dc-1", "/tmp/x").is_err());
    }
}
