//! The consumer: builder, `next()`, commits, auto-commit, seek, and group upkeep.
//!
//! A consumer owns one [`PartitionReader`](crate::reader) per partition it reads
//! and serves them round-robin. Group upkeep (membership heartbeat, partition
//! discovery, claims) runs inside `next()` at most every `heartbeat` interval, so a
//! member that stops calling `next()` for longer than its lease is treated as dead.
//!
//! Delivery is at-least-once. A message counts as processed once the *following*
//! `next()` call is made (or when its position is passed to `commit`); auto-commit
//! writes the processed positions every N messages or N milliseconds, when the
//! stop minute is passed, and on `close()`. After a crash a member (or the
//! partition's next owner) resumes after the last committed message, so
//! duplicates are bounded by what was delivered and not committed.
//!
//! **Commit only what was handed over.** A committed position is a promise that
//! the message and everything before it in its partition has left the
//! application's hands (written to its output and flushed, stored, acknowledged
//! downstream). An application that buffers messages (a `BufWriter`, a batch to
//! be sent) must not let auto-commit count them as processed: either call
//! `next()` again only once the previous message is handed over, or turn
//! auto-commit off and, right after each flush, call [`Consumer::commit`] with
//! the last flushed positions or [`Consumer::commit_delivered`]`(true)` (every
//! message returned so far). `conduit tail --group` does the latter.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use conduit_core::http::SharedRegistry;
use conduit_core::layout::Layout;
use conduit_core::storage::LocalStorage;
use conduit_core::{
    open_root, Encoding, Minute, NodeName, SharedClock, SharedStorage, SystemClock, Topic, View,
};

use crate::error::{PintailError, Result};
use crate::group::{assign, assignment_digest, new_incarnation, static_owner, Group, Membership};
use crate::metrics::{Metrics, Stats};
use crate::partition::{local_partition, LocalPartition};
use crate::position::{CheckpointStore, Position};
use crate::reader::{Ctx, Kind, Origin, PartitionReader, Poll};
use crate::roots::{is_retryable, Roots};

/// Which tree a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadView {
    /// What collectors write now (`data/`), then the sealed local minutes
    /// (`streams_local/`); one partition per cluster and collector.
    Local,
    /// The sealed merged minutes (`streams/`) of the merged cluster; further
    /// clusters given to the builder are its mirrors, used when it fails.
    Merged,
    /// The merged view on a mirror cluster (same paths and bytes as `Merged`).
    Mirror,
}

impl std::str::FromStr for ReadView {
    type Err = PintailError;
    fn from_str(s: &str) -> Result<ReadView> {
        match s {
            "local" => Ok(ReadView::Local),
            "merged" => Ok(ReadView::Merged),
            "mirror" => Ok(ReadView::Mirror),
            other => Err(PintailError::InvalidSetting {
                setting: "view",
                reason: format!("{other:?} is not one of local, merged, mirror"),
            }),
        }
    }
}

/// A start time: an absolute UTC minute or a duration before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTime {
    /// This minute (UTC).
    At(Minute),
    /// This long before the consumer's clock when it starts.
    Ago(Duration),
}

impl StartTime {
    /// Parses `15m`, `2h`, `30s`, `1d`, or a UTC time such as `2026-11-22T10:00`.
    ///
    /// ```
    /// use conduit_pintail::StartTime;
    /// use std::time::Duration;
    /// assert_eq!(StartTime::parse("15m").unwrap(), StartTime::Ago(Duration::from_secs(900)));
    /// assert!(matches!(StartTime::parse("2026-11-22T10:00").unwrap(), StartTime::At(_)));
    /// assert!(StartTime::parse("soon").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<StartTime> {
        let t = text.trim();
        let bad = || PintailError::InvalidSetting {
            setting: "start time",
            reason: format!(
                "{text:?} is neither a duration like 15m nor a UTC time like 2026-11-22T10:00"
            ),
        };
        if let Some(unit) = t.chars().last().filter(|c| c.is_ascii_alphabetic()) {
            let number = &t[..t.len() - 1];
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
                let n: u64 = number.parse().map_err(|_| bad())?;
                let secs = match unit {
                    's' => n,
                    'm' => n * 60,
                    'h' => n * 3600,
                    'd' => n * 86_400,
                    _ => return Err(bad()),
                };
                return Ok(StartTime::Ago(Duration::from_secs(secs)));
            }
        }
        Minute::parse_flexible(t)
            .map(StartTime::At)
            .map_err(|_| bad())
    }

    /// The minute this start time names on `clock`.
    pub fn minute(self, now: DateTime<Utc>) -> Minute {
        match self {
            StartTime::At(m) => m,
            StartTime::Ago(d) => {
                let t = now - chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
                Minute::from_datetime(t).unwrap_or(Minute::MIN)
            }
        }
    }
}

/// Where to start without a checkpoint and without a start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultStart {
    /// The oldest data still kept (beginning of retention).
    #[default]
    Beginning,
    /// Only what arrives from now on.
    LiveEnd,
}

/// The largest partition count ([`ConsumerBuilder::partitions`]): every member
/// lists and claims every partition, so the count bounds the group's files.
pub const MAX_PARTITIONS: u32 = 1024;

/// Messages delivered between two updates of the consumer's metrics.
const REPORT_EVERY: u64 = 256;
/// Group upkeep interval while a hand-over is under way: the new owner claims a
/// released partition within this, not a whole heartbeat later (measured: a
/// graceful hand-over left its partition unread for up to one heartbeat, 1 s).
/// Bounded in time: a claim not released is claimable at the latest once its
/// lease ends.
const TRANSITION_UPKEEP: Duration = Duration::from_millis(50);

/// Group upkeep or an automatic commit (both run inside `next()`, so delivery
/// waits for them) taking longer than this is logged with its step and time.
const SLOW_INLINE_STEP: Duration = Duration::from_millis(20);

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The payload as published.
    pub payload: bytes::Bytes,
    /// The topic.
    pub topic: Topic,
    /// Its arrival minute on the collector's clock.
    pub minute: Minute,
    /// The position just after this message: commit it once the message is processed.
    pub position: Position,
}

impl Message {
    /// The cluster whose collector received it.
    pub fn cluster(&self) -> &NodeName {
        self.position.cluster()
    }

    /// The collector that received it.
    pub fn collector(&self) -> &NodeName {
        self.position.collector()
    }
}

enum Source {
    Storage(SharedStorage),
    Uri(String),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Storage(s) => write!(f, "Storage({})", s.root()),
            Source::Uri(u) => write!(f, "Uri({u})"),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.flush_counts();
    }
}

/// Builds a [`Consumer`].
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use conduit_pintail::{Consumer, ReadView, DefaultStart};
/// let dir = tempfile::tempdir().unwrap();
/// let mut consumer = Consumer::builder("clicks")
///     .cluster_uri("dc1", dir.path().to_str().unwrap())
///     .view(ReadView::Merged)
///     .group("fraud")
///     .default_start(DefaultStart::Beginning)
///     .auto_commit(Some(std::time::Duration::from_secs(1)), Some(1000))
///     .build()
///     .await
///     .unwrap();
/// // Nothing was ever written: a short wait returns no message.
/// let got = consumer.next_timeout(std::time::Duration::from_millis(50)).await.unwrap();
/// assert!(got.is_none());
/// consumer.close().await.unwrap();
/// # });
/// ```
#[derive(Debug)]
pub struct ConsumerBuilder {
    topic: String,
    clusters: Vec<(String, Source)>,
    view: ReadView,
    group: Option<String>,
    start: Option<StartTime>,
    default_start: DefaultStart,
    stop: Option<Minute>,
    auto_commit_every: Option<Duration>,
    auto_commit_messages: Option<u64>,
    checkpoints: Option<Source>,
    membership: Membership,
    partitions: Option<u32>,
    encoding: Encoding,
    skip_corrupt: bool,
    poll_min: Duration,
    poll_max: Duration,
    sealed_poll: Duration,
    live_http: bool,
    heartbeat: Duration,
    lag_every: Duration,
    clock: SharedClock,
    registry: Option<SharedRegistry>,
}

impl ConsumerBuilder {
    /// Adds a cluster root. For the local view, every cluster given is read. For the
    /// merged view, the first is the merged cluster and the others its mirrors.
    pub fn cluster(mut self, name: &str, storage: SharedStorage) -> Self {
        self.clusters
            .push((name.to_owned(), Source::Storage(storage)));
        self
    }

    /// Adds a cluster root by URI (`/dir`, `file:///dir`, `hdfs://nn:9000/path`).
    pub fn cluster_uri(mut self, name: &str, uri: &str) -> Self {
        self.clusters
            .push((name.to_owned(), Source::Uri(uri.to_owned())));
        self
    }

    /// The view (default `Local`).
    pub fn view(mut self, view: ReadView) -> Self {
        self.view = view;
        self
    }

    /// The consumer group: checkpoints are per group and partition.
    pub fn group(mut self, group: &str) -> Self {
        self.group = Some(group.to_owned());
        self
    }

    /// Where to start when the group has no checkpoint for a partition.
    pub fn start(mut self, start: StartTime) -> Self {
        self.start = Some(start);
        self
    }

    /// Where to start with neither a checkpoint nor a start time (default: beginning).
    pub fn default_start(mut self, start: DefaultStart) -> Self {
        self.default_start = start;
        self
    }

    /// The last minute to read (inclusive); `next()` returns `None` after it.
    pub fn stop(mut self, minute: Minute) -> Self {
        self.stop = Some(minute);
        self
    }

    /// Auto-commit processed positions every `every` and/or every `messages`
    /// messages (both `None`: only explicit commits and `close`). A message
    /// counts as processed once `next()` is called again: an application that
    /// buffers its output should commit itself after each flush instead
    /// ([`Consumer::commit`]).
    pub fn auto_commit(mut self, every: Option<Duration>, messages: Option<u64>) -> Self {
        self.auto_commit_every = every;
        self.auto_commit_messages = messages;
        self
    }

    /// Keeps checkpoints (and group leases) in this storage instead of the first
    /// cluster's.
    pub fn checkpoint_storage(mut self, storage: SharedStorage) -> Self {
        self.checkpoints = Some(Source::Storage(storage));
        self
    }

    /// Keeps checkpoints (and group leases) in a local directory.
    pub fn checkpoint_dir(mut self, dir: &str) -> Self {
        self.checkpoints = Some(Source::Uri(dir.to_owned()));
        self
    }

    /// Static membership: member `k` of `n` (0-based).
    pub fn static_member(mut self, k: u32, n: u32) -> Self {
        self.membership = Membership::Static { k, n };
        self
    }

    /// Dynamic membership with this member id and lease.
    pub fn dynamic_member(mut self, member: &str, lease: Duration) -> Self {
        self.membership = Membership::Dynamic {
            member: member.to_owned(),
            lease,
        };
        self
    }

    /// Into how many partitions the group splits what it reads (see
    /// [`crate::partition`]): in a sealed view, the view's files by name
    /// (default 16, partitions `p<k>of<n>`); in the local view, each collector's
    /// stream by record (default 1, partitions `<cluster>-<collector>-s<k>of<n>`),
    /// so a group can keep up to collectors × `n` members busy. The same for
    /// every member of a group and fixed (checkpoints are per partition): the
    /// group records it, and a member given another count is refused with
    /// [`PintailError::PartitionsMismatch`].
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = Some(n);
        self
    }

    /// The topic's record encoding (default `lines`).
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Skip and count corrupt frames instead of failing with
    /// [`PintailError::CorruptFrame`].
    pub fn skip_corrupt_frames(mut self, skip: bool) -> Self {
        self.skip_corrupt = skip;
        self
    }

    /// Idle polling interval of storage: starts at `min`, doubles up to `max`
    /// (default 5–20 ms). Live bytes read through a collector's long-poll
    /// ([`ConsumerBuilder::live_http`]) do not wait for it.
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        self.poll_min = min;
        self.poll_max = max.max(min);
        self
    }

    /// Local view: read files a collector still has open from its HTTP listener
    /// (default on): once the reader has caught up with a file, it long-polls the
    /// collector, which answers as soon as its next sync makes new bytes durable,
    /// so delivery follows the fsync instead of the poll interval (and on HDFS it
    /// is the only way to read an open file's last block). Falls back to polling
    /// storage when the collector is unreachable.
    pub fn live_http(mut self, enabled: bool) -> Self {
        self.live_http = enabled;
        self
    }

    /// How often a sealed view looks for the next `_SUCCESS` (default 1 s).
    pub fn sealed_poll(mut self, every: Duration) -> Self {
        self.sealed_poll = every;
        self
    }

    /// Group upkeep interval (membership heartbeat, discovery; default 1 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How often the lag gauges (`conduit_pintail_lag_events`,
    /// `conduit_pintail_lag_seconds`, per partition read) are measured when a
    /// registry is given (default 5 s; each measurement reads what is left of the
    /// partitions' files, as `conduit lag` does).
    pub fn lag_interval(mut self, every: Duration) -> Self {
        self.lag_every = every;
        self
    }

    /// The clock for start times, the live end and stop checks (default: system).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Registers `pintail_*` metrics here.
    pub fn registry(mut self, registry: SharedRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Opens the roots and checkpoint store and checks the settings.
    pub async fn build(self) -> Result<Consumer> {
        let topic = Topic::new(self.topic.clone())?;
        if self.clusters.is_empty() {
            return Err(PintailError::InvalidSetting {
                setting: "cluster",
                reason: "at least one cluster root is needed".into(),
            });
        }
        let mut clusters = Vec::new();
        for (name, source) in self.clusters {
            let name = NodeName::new(name)?;
            let storage = match source {
                Source::Storage(s) => s,
                Source::Uri(uri) => open_root(&uri).await?,
            };
            clusters.push((name, storage));
        }
        if let Some(group) = &self.group {
            Layout::checkpoint_path("pintail", &format!("{group}.{topic}.x"))?;
            if group.contains('.') {
                return Err(PintailError::InvalidSetting {
                    setting: "group",
                    reason: format!("{group:?} contains '.'"),
                });
            }
        }
        let store = match self.checkpoints {
            Some(Source::Storage(s)) => s,
            Some(Source::Uri(dir)) if !dir.contains("://") => {
                std::fs::create_dir_all(&dir).map_err(|e| PintailError::InvalidSetting {
                    setting: "checkpoint_dir",
                    reason: format!("{dir}: {e}"),
                })?;
                Arc::new(LocalStorage::open(&dir)?)
            }
            Some(Source::Uri(uri)) => open_root(&uri).await?,
            None => clusters[0].1.clone(),
        };
        match &self.membership {
            Membership::Static { k, n } if *n == 0 || k >= n => {
                return Err(PintailError::InvalidSetting {
                    setting: "static_member",
                    reason: format!("member {k} of {n}: need 0 <= k < n"),
                })
            }
            Membership::Dynamic { member, .. } if self.group.is_none() => {
                return Err(PintailError::InvalidSetting {
                    setting: "dynamic_member",
                    reason: format!("member {member:?} needs a group"),
                })
            }
            Membership::Dynamic { member, .. }
                if member.is_empty()
                    || !member
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                return Err(PintailError::InvalidSetting {
                    setting: "dynamic_member",
                    reason: format!("member id {member:?} must be [A-Za-z0-9_-]+"),
                })
            }
            _ => {}
        }
        let partitions_n = self.partitions.unwrap_or(match self.view {
            ReadView::Local => 1,
            ReadView::Merged | ReadView::Mirror => 16,
        });
        if partitions_n == 0 || partitions_n > MAX_PARTITIONS {
            return Err(PintailError::InvalidSetting {
                setting: "partitions",
                reason: format!("{partitions_n}: must be between 1 and {MAX_PARTITIONS}"),
            });
        }
        let checkpoints = CheckpointStore::new(store.clone());
        if let Some(group) = &self.group {
            crate::partition::ensure_group_partitions(
                &store,
                &checkpoints,
                group,
                topic.as_str(),
                crate::partition::family(self.view == ReadView::Local),
                partitions_n,
            )
            .await?;
        }
        let member = match &self.membership {
            Membership::Dynamic { member, .. } => member.clone(),
            Membership::Static { k, n } => format!("{k}of{n}"),
            Membership::Solo => String::new(),
        };
        let metrics = Metrics::new(
            self.registry.as_ref(),
            crate::metrics::LagLabels {
                group: self.group.clone().unwrap_or_default(),
                topic: topic.to_string(),
                member,
            },
        );
        let ctx = Ctx {
            topic: topic.clone(),
            encoding: self.encoding,
            skip_corrupt: self.skip_corrupt,
            stop: self.stop,
            clock: self.clock.clone(),
            metrics: metrics.clone(),
            sealed_poll: self.sealed_poll,
            live_http: self.live_http,
            wake: Default::default(),
            purged: Default::default(),
            chunks: Default::default(),
        };
        let origin = match (self.start, self.default_start) {
            (Some(start), _) => Origin::Minute(start.minute(self.clock.now())),
            (None, DefaultStart::Beginning) => Origin::Minute(Minute::MIN),
            (None, DefaultStart::LiveEnd) => Origin::LiveEnd,
        };
        let group = match (&self.membership, &self.group) {
            (Membership::Dynamic { member, lease }, Some(g)) => Some(Group {
                store: store.clone(),
                group: g.clone(),
                topic: topic.to_string(),
                member: member.clone(),
                lease: *lease,
                incarnation: new_incarnation(),
            }),
            _ => None,
        };
        Ok(Consumer {
            ctx,
            view: self.view,
            clusters,
            store: checkpoints,
            group_name: self.group,
            membership: self.membership,
            group,
            partitions_n,
            origin,
            readers: BTreeMap::new(),
            epochs: BTreeMap::new(),
            revoking: BTreeMap::new(),
            reported: None,
            last_renew: None,
            next_lag: Instant::now(),
            lag_partitions: BTreeSet::new(),
            lag_every: self.lag_every,
            processed: BTreeMap::new(),
            committed: BTreeMap::new(),
            rewound: false,
            uncommitted: BTreeMap::new(),
            last_returned: None,
            rr: 0,
            spare: None,
            current: None,
            turn: 0,
            next_upkeep: Instant::now(),
            in_transition: false,
            unreported: (0, 0),
            heartbeat: self.heartbeat,
            auto_every: self.auto_commit_every,
            auto_messages: self.auto_commit_messages,
            last_commit: Instant::now(),
            since_commit: 0,
            poll_min: self.poll_min,
            poll_max: self.poll_max,
            metrics,
            finished: false,
            fence_errors: Arc::new(Mutex::new(0)),
            foreign_warned: false,
        })
    }
}

/// Messages a sub-partition reader delivers in a row before the next reader is
/// asked ([`Consumer::poll_round`]): a few hundred keeps the readers of one
/// stream within a chunk or two of each other, and costs one extra poll per
/// turn.
const SUB_PARTITION_TURN: u32 = 256;

/// A PinTail consumer of one topic; see the [crate docs](crate).
#[derive(Debug)]
pub struct Consumer {
    ctx: Ctx,
    view: ReadView,
    clusters: Vec<(NodeName, SharedStorage)>,
    store: CheckpointStore,
    group_name: Option<String>,
    membership: Membership,
    group: Option<Group>,
    partitions_n: u32,
    origin: Origin,
    readers: BTreeMap<String, PartitionReader>,
    /// Dynamic membership: the claim epoch of each partition held (read, or
    /// being handed over).
    epochs: BTreeMap<String, u64>,
    /// Partitions being handed over (cooperative rebalance): no longer read, their
    /// claim kept until what was delivered from them is committed or the
    /// deadline passes; the reader is kept in case the partition comes back.
    revoking: BTreeMap<String, (PartitionReader, Instant)>,
    /// What the member file says now: the partitions found and the digest of the
    /// assignment's inputs (rewritten when they change).
    reported: Option<(BTreeSet<String>, String)>,
    /// When the member file and claims were last renewed.
    last_renew: Option<Instant>,
    /// When the lag gauges are next measured.
    next_lag: Instant,
    lag_every: Duration,
    /// Partitions with lag series now.
    lag_partitions: BTreeSet<String>,
    /// Positions of messages known processed, per partition, not yet committed.
    processed: BTreeMap<String, Position>,
    committed: BTreeMap<String, Position>,
    /// Set by `seek`: commits may then rewind partitions whose checkpoint this
    /// member has not read or written since.
    rewound: bool,
    /// Messages delivered per partition since its last commit.
    uncommitted: BTreeMap<String, u64>,
    last_returned: Option<Position>,
    /// A used `Position` to overwrite: saves its reference counts per message.
    spare: Option<Position>,
    rr: usize,
    /// The reader that delivered the last message (asked first next time).
    current: Option<String>,
    /// Messages `current` delivered in a row (a sub-partition reader hands
    /// over after [`SUB_PARTITION_TURN`]).
    turn: u32,
    next_upkeep: Instant,
    /// A hand-over is under way (a partition assigned here is not claimed yet,
    /// or one assigned elsewhere is not released yet): upkeep runs every
    /// [`TRANSITION_UPKEEP`] instead of every heartbeat until it is done.
    in_transition: bool,
    /// Messages and payload bytes delivered and not yet added to the metrics
    /// (at most [`REPORT_EVERY`] messages, or until the consumer is idle).
    unreported: (u64, u64),
    heartbeat: Duration,
    auto_every: Option<Duration>,
    auto_messages: Option<u64>,
    last_commit: Instant,
    since_commit: u64,
    poll_min: Duration,
    poll_max: Duration,
    metrics: Metrics,
    finished: bool,
    fence_errors: Arc<Mutex<u64>>,
    /// Whether the WARN about other members' partitions of clusters this one
    /// does not read was logged (again after they are gone).
    foreign_warned: bool,
}

impl Consumer {
    /// A builder for a consumer of `topic`.
    pub fn builder(topic: &str) -> ConsumerBuilder {
        ConsumerBuilder {
            topic: topic.to_owned(),
            clusters: Vec::new(),
            view: ReadView::Local,
            group: None,
            start: None,
            default_start: DefaultStart::Beginning,
            stop: None,
            auto_commit_every: None,
            auto_commit_messages: None,
            checkpoints: None,
            membership: Membership::Solo,
            partitions: None,
            encoding: Encoding::Lines,
            skip_corrupt: false,
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_millis(20),
            sealed_poll: Duration::from_secs(1),
            live_http: true,
            heartbeat: Duration::from_secs(1),
            lag_every: Duration::from_secs(5),
            clock: SystemClock::shared(),
            registry: None,
        }
    }

    /// The next message, waiting for one. `None` once the stop minute is passed on
    /// every partition this member reads.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        self.next_until(None).await
    }

    /// Like [`Consumer::next`], but returns `None` after `timeout` without a message
    /// (check [`Consumer::is_finished`] to tell the end of the stream).
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Message>> {
        self.next_until(Some(Instant::now() + timeout)).await
    }

    /// Whether the stream ended (stop minute passed everywhere).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    async fn next_until(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        if let Some(pos) = self.last_returned.take() {
            // Per message: update in place; allocate a key only for a new partition.
            match self.processed.get_mut(pos.partition()) {
                Some(p) => {
                    p.assign(&pos);
                    self.spare = Some(pos);
                }
                None => {
                    self.processed.insert(pos.partition().to_string(), pos);
                }
            }
            self.since_commit += 1;
        }
        // One clock read per message.
        let mut now = Instant::now();
        self.maybe_auto_commit(now).await?;
        let mut sleep = self.poll_min;
        loop {
            if now >= self.next_upkeep {
                self.flush_counts();
                let began = Instant::now();
                self.upkeep().await?;
                slow_inline_step("group upkeep", began);
                let every = if self.in_transition {
                    self.heartbeat.min(TRANSITION_UPKEEP)
                } else {
                    self.heartbeat
                };
                self.next_upkeep = Instant::now() + every;
            }
            if let Some(msg) = self.poll_round().await? {
                self.unreported.0 += 1;
                self.unreported.1 += msg.payload.len() as u64;
                if self.unreported.0 >= REPORT_EVERY {
                    self.flush_counts();
                }
                match self.uncommitted.get_mut(msg.position.partition()) {
                    Some(n) => *n += 1,
                    None => {
                        self.uncommitted
                            .insert(msg.position.partition().to_string(), 1);
                    }
                }
                let mut last = match self.spare.take() {
                    Some(p) => p,
                    None => msg.position.clone(),
                };
                last.assign(&msg.position);
                self.last_returned = Some(last);
                return Ok(Some(msg));
            }
            if self.ctx.stop.is_some()
                && !self.readers.is_empty()
                && self.readers.values().all(|r| r.is_done())
            {
                self.finished = true;
                self.flush_counts();
                if self.auto_every.is_some() || self.auto_messages.is_some() {
                    self.commit_processed().await?;
                }
                return Ok(None);
            }
            self.flush_counts();
            now = Instant::now();
            self.maybe_auto_commit(now).await?;
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let mut nap = sleep;
            if let Some(d) = deadline {
                nap = nap.min(d - now);
            }
            nap = nap.min(self.next_upkeep.saturating_duration_since(now));
            // A collector's answer to a long-poll (new synced bytes) ends the nap
            // at once: live data is pushed, not polled.
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = self.ctx.wake.notified() => {}
            }
            sleep = (sleep * 2).min(self.poll_max);
            now = Instant::now();
        }
    }

    /// Adds the messages delivered since the last call to the metrics (per
    /// message, two shared atomic additions were a tenth of a catch-up's cost).
    fn flush_counts(&mut self) {
        let (messages, bytes) = std::mem::take(&mut self.unreported);
        if messages > 0 {
            self.metrics.messages.inc_by(messages);
            self.metrics.payload_bytes.inc_by(bytes);
        }
    }

    /// One pass over the readers. The reader that delivered last is asked first
    /// (it usually has the next message: no per-message bookkeeping); when it has
    /// nothing, the others are asked round-robin from there.
    ///
    /// A reader of a sub-partition of a collector stream hands over after
    /// [`SUB_PARTITION_TURN`] messages in a row: the readers of one stream then
    /// move through it together and read each sealed chunk once between them
    /// (`reader::SharedChunks`); asked until idle, one would read the whole
    /// backlog before the next starts, and every chunk would be read again.
    async fn poll_round(&mut self) -> Result<Option<crate::Message>> {
        let mut tried = self.current.take();
        let mut first = self.rr;
        if let Some(id) = &tried {
            let turn_over = self.turn >= SUB_PARTITION_TURN
                && self.readers.get(id).is_some_and(|r| r.shares_chunks());
            if turn_over {
                // Asked again in its turn, after the others.
                tried = None;
                first += 1;
            } else if let Some(m) = self.poll_one(id).await? {
                self.turn += 1;
                self.current = Some(id.clone());
                return Ok(Some(m));
            }
        }
        let ids: Vec<String> = self.readers.keys().cloned().collect();
        let n = ids.len();
        for i in 0..n {
            let at = (first + i) % n;
            if tried.as_deref() == Some(ids[at].as_str()) {
                continue;
            }
            if let Some(m) = self.poll_one(&ids[at]).await? {
                self.rr = at;
                self.turn = 1;
                self.current = Some(ids[at].clone());
                return Ok(Some(m));
            }
        }
        self.rr = (self.rr + 1) % n.max(1);
        Ok(None)
    }

    /// Asks one partition's reader for a message (`None`: idle, done, backing
    /// off after a storage error, or no longer ours).
    async fn poll_one(&mut self, id: &str) -> Result<Option<crate::Message>> {
        let Some(reader) = self.readers.get_mut(id) else {
            return Ok(None);
        };
        if reader.backoff_until.is_some_and(|t| Instant::now() < t) {
            return Ok(None);
        }
        match reader.poll(&self.ctx).await {
            Ok(Poll::Msg(m)) => {
                reader.backoff = Duration::ZERO;
                Ok(Some(m))
            }
            Ok(Poll::Idle) | Ok(Poll::Done) => {
                reader.backoff = Duration::ZERO;
                Ok(None)
            }
            Err(PintailError::Storage(e)) if is_retryable(&e) => {
                self.metrics.storage_errors.inc();
                reader.backoff = (reader.backoff * 2)
                    .max(Duration::from_millis(100))
                    .min(Duration::from_secs(5));
                reader.backoff_until = Some(Instant::now() + reader.backoff);
                tracing::warn!(partition = %id, error = %e, retry_in = ?reader.backoff,
                    "storage unreachable; retrying with backoff");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    // ---- commits ------------------------------------------------------------

    /// Records `position` (from a [`Message`]) as the group's progress in its
    /// partition: after a restart the partition resumes just after that message.
    /// Commit a position only once that message, and every message before it in
    /// the partition, has been handed over (written and flushed, stored,
    /// acknowledged): what is committed is never delivered again, so a commit of
    /// a message still in a buffer loses it if the process dies before the
    /// flush ([module docs](self)).
    /// Refused with [`PintailError::NotOwner`] when this member no longer owns the
    /// partition, and with [`PintailError::StaleCommit`] when the position is
    /// behind the partition's checkpoint (it would move the group backwards; after
    /// [`Consumer::seek`] rewinding is allowed).
    pub async fn commit(&mut self, position: &Position) -> Result<()> {
        let Some(group) = self.group_name.clone() else {
            return Err(PintailError::InvalidSetting {
                setting: "group",
                reason: "commit needs a consumer group".into(),
            });
        };
        if let Some(g) = &self.group {
            let owned = match self.epochs.get(position.partition()) {
                Some(epoch) => g.still_owner(position.partition(), *epoch).await?,
                None => false,
            };
            if !owned {
                self.metrics.fenced_commits.inc();
                *self.fence_errors.lock().expect("lock") += 1;
                self.lose(position.partition());
                return Err(PintailError::NotOwner {
                    group,
                    partition: position.partition().to_string(),
                });
            }
        }
        let checkpoint = match self.committed.get(position.partition()) {
            Some(c) => Some(c.clone()),
            None if self.rewound => None,
            None => self.checkpoint_of(position.partition()).await?,
        };
        if let Some(checkpoint) = checkpoint {
            if position.cmp_in_partition(&checkpoint) == std::cmp::Ordering::Less {
                self.metrics.fenced_commits.inc();
                tracing::warn!(partition = %position.partition(), %position, %checkpoint,
                    "refused a commit behind the group's checkpoint");
                return Err(PintailError::StaleCommit {
                    group,
                    partition: position.partition().to_string(),
                    position: position.to_string(),
                    checkpoint: checkpoint.to_string(),
                });
            }
        }
        self.store
            .save(
                &group,
                self.ctx.topic.as_str(),
                position,
                self.ctx.clock.now(),
            )
            .await?;
        self.metrics.commits.inc();
        self.committed
            .insert(position.partition().to_string(), position.clone());
        if self
            .processed
            .get(position.partition())
            .is_some_and(|p| p.cmp_in_partition(position) != std::cmp::Ordering::Greater)
        {
            self.processed.remove(position.partition());
        }
        if self.last_returned.as_ref().is_some_and(|p| {
            p.partition() == position.partition()
                && p.cmp_in_partition(position) != std::cmp::Ordering::Greater
        }) {
            // Committed already: not "processed" once `next()` is called again.
            self.spare = self.last_returned.take();
        }
        self.uncommitted.insert(position.partition().to_string(), 0);
        if self.revoking.contains_key(position.partition()) {
            // A partition being handed over: release it as soon as it is committed.
            self.release_if_committed(position.partition()).await?;
        }
        Ok(())
    }

    /// Commits every processed position (messages returned before the last
    /// `next()`), and the message returned last too when `include_last`. Call it
    /// after the messages were handed over (e.g. right after flushing the output
    /// they were written to), as for [`Consumer::commit`].
    pub async fn commit_delivered(&mut self, include_last: bool) -> Result<()> {
        if include_last {
            if let Some(pos) = self.last_returned.take() {
                self.processed.insert(pos.partition().to_string(), pos);
            }
        }
        self.commit_processed().await
    }

    async fn commit_processed(&mut self) -> Result<()> {
        if self.group_name.is_none() {
            self.processed.clear();
            return Ok(());
        }
        // Never move a checkpoint back behind an explicit commit.
        let positions: Vec<Position> = self
            .processed
            .values()
            .filter(|p| {
                self.committed
                    .get(p.partition())
                    .is_none_or(|c| c.cmp_in_partition(p) == std::cmp::Ordering::Less)
            })
            .cloned()
            .collect();
        self.processed.clear();
        for pos in positions {
            match self.commit(&pos).await {
                Ok(()) => {}
                Err(PintailError::NotOwner { partition, .. }) => {
                    tracing::info!(
                        partition,
                        "partition moved to another member; commit skipped"
                    );
                }
                Err(PintailError::StaleCommit { partition, .. }) => {
                    tracing::info!(
                        partition,
                        "the group's checkpoint is already further; commit skipped"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        self.since_commit = 0;
        self.last_commit = Instant::now();
        Ok(())
    }

    async fn maybe_auto_commit(&mut self, now: Instant) -> Result<()> {
        let due = self.auto_messages.is_some_and(|n| self.since_commit >= n)
            || self.auto_every.is_some_and(|d| {
                now.saturating_duration_since(self.last_commit) >= d && !self.processed.is_empty()
            });
        if due {
            let began = Instant::now();
            self.commit_processed().await?;
            slow_inline_step("automatic commit", began);
        }
        Ok(())
    }

    /// Forgets a partition this member lost (fenced); counts what was delivered
    /// and not committed.
    fn lose(&mut self, partition: &str) {
        let revoked = self.revoking.remove(partition).is_some();
        if self.readers.remove(partition).is_some() || revoked {
            let lost = self.uncommitted.remove(partition).unwrap_or(0);
            self.metrics.lost_uncommitted.inc_by(lost);
            self.metrics.rebalances.inc();
            tracing::info!(partition, lost, "lost a partition to another member");
        }
        self.epochs.remove(partition);
        self.processed.remove(partition);
        if self
            .last_returned
            .as_ref()
            .is_some_and(|p| p.partition() == partition)
        {
            self.last_returned = None;
        }
        self.metrics.owned_partitions.set(self.readers.len() as i64);
    }

    /// Repositions every partition this member reads to `start` (ignoring
    /// checkpoints; the next commit overwrites them).
    pub async fn seek(&mut self, start: StartTime) -> Result<()> {
        let minute = start.minute(self.ctx.clock.now());
        self.origin = Origin::Minute(minute);
        self.last_returned = None;
        self.processed.clear();
        self.committed.clear();
        self.rewound = true;
        let ids: Vec<String> = self.readers.keys().cloned().collect();
        for id in ids {
            let reader = self.new_reader(&id, None);
            self.readers.insert(id, reader);
        }
        self.finished = false;
        Ok(())
    }

    /// Commits processed positions (with auto-commit on, the last message too),
    /// releases this member's partitions and leaves the group.
    pub async fn close(mut self) -> Result<()> {
        let auto = self.auto_every.is_some() || self.auto_messages.is_some();
        self.commit_delivered(auto).await?;
        if let Some(g) = self.group.clone() {
            for (partition, epoch) in std::mem::take(&mut self.epochs) {
                g.renew(&partition, epoch, true).await?;
            }
            // Also a claim an interrupted upkeep created (a `next()` future
            // dropped by a `select!`) and did not record: nobody should wait for
            // its lease.
            for (partition, (epoch, claim)) in g.read_state().await?.claims {
                if claim.member == g.member && claim.incarnation == g.incarnation && !claim.released
                {
                    g.renew(&partition, epoch, true).await?;
                }
            }
            g.leave().await?;
        }
        Ok(())
    }

    /// Counters of this consumer.
    pub fn stats(&self) -> Stats {
        Stats {
            messages: self.metrics.messages.get() + self.unreported.0,
            corrupt_frames_skipped: self.metrics.corrupt_frames_skipped.get(),
            purged_skips: self.metrics.purged_skips.get(),
            storage_errors: self.metrics.storage_errors.get(),
            commits: self.metrics.commits.get(),
            fenced_commits: self.metrics.fenced_commits.get(),
            lost_uncommitted: self.metrics.lost_uncommitted.get(),
            cut_back_files: self.metrics.cut_back_files.get(),
            shared_chunks: self.metrics.shared_chunks.get(),
            owned_partitions: self.readers.len() as u64,
            collector_http_reads: self.metrics.collector_http_reads.get(),
            collector_http_fallbacks: self.metrics.collector_http_fallbacks.get(),
            collector_http_waits: self.metrics.collector_http_waits.get(),
            collector_http_waits_refused: self.metrics.collector_http_waits_refused.get(),
            purged_ranges: self.ctx.purged.lock().expect("purged lock").clone(),
        }
    }

    /// The partitions this member holds now: those it reads, and those it is
    /// handing over to another member (no longer read; released once what was
    /// delivered from them is committed, see [`crate::group`]). A partition
    /// that leaves this list without a commit of its deliveries was lost, and
    /// they are counted in [`Stats::lost_uncommitted`].
    pub fn partitions(&self) -> Vec<String> {
        let mut out: Vec<String> = self.readers.keys().cloned().collect();
        out.extend(self.revoking.keys().cloned());
        out.sort();
        out
    }

    // ---- partitions and membership ---------------------------------------------

    fn sealed_view(&self) -> View {
        match self.view {
            ReadView::Local => View::Local,
            ReadView::Merged | ReadView::Mirror => View::Merged,
        }
    }

    fn new_reader(&self, id: &str, checkpoint: Option<Position>) -> PartitionReader {
        let (kind, roots) = match self.view {
            ReadView::Local => {
                let p = LocalPartition::parse(id).expect("local partition id");
                let storage = self
                    .clusters
                    .iter()
                    .find(|(c, _)| *c == p.cluster)
                    .map(|(_, s)| s.clone())
                    .expect("known cluster");
                (
                    Kind::Local {
                        cluster: p.cluster.clone(),
                        collector: p.collector,
                        sub: (p.k, p.n),
                    },
                    Roots::new(vec![(p.cluster, storage)]),
                )
            }
            ReadView::Merged | ReadView::Mirror => {
                let k = id
                    .strip_prefix('p')
                    .and_then(|r| r.split_once("of"))
                    .and_then(|(k, _)| k.parse().ok())
                    .expect("sealed partition id");
                (
                    Kind::Sealed {
                        k,
                        n: self.partitions_n,
                    },
                    Roots::new(self.clusters.clone()),
                )
            }
        };
        PartitionReader::new(
            id.to_owned(),
            kind,
            self.sealed_view(),
            roots,
            checkpoint,
            self.origin,
        )
    }

    /// Every partition of the topic in this view.
    async fn discover(&self) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        match self.view {
            ReadView::Merged | ReadView::Mirror => {
                for k in 0..self.partitions_n {
                    out.insert(format!("p{k}of{}", self.partitions_n));
                }
            }
            ReadView::Local => {
                for (cluster, storage) in &self.clusters {
                    let dir = Layout::topic_dir(View::Collector, &self.ctx.topic);
                    let n = self.partitions_n;
                    let mut streams = BTreeSet::new();
                    for e in storage.list_or_empty(&dir).await? {
                        if e.is_dir && NodeName::new(e.name.clone()).is_ok() {
                            streams.insert(e.name);
                        }
                    }
                    let (beats, _) =
                        conduit_core::heartbeat::Heartbeat::read_all(&**storage, cluster).await?;
                    for b in beats {
                        streams.insert(b.collector.to_string());
                    }
                    for collector in streams {
                        for k in 0..n {
                            out.insert(local_partition(cluster.as_str(), &collector, k, n));
                        }
                    }
                }
                if let Some(group) = &self.group_name {
                    for p in self
                        .store
                        .partitions(group, self.ctx.topic.as_str())
                        .await?
                    {
                        if self.accepts(&p) {
                            out.insert(p);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn checkpoint_of(&self, partition: &str) -> Result<Option<Position>> {
        match &self.group_name {
            Some(g) => self.store.load(g, self.ctx.topic.as_str(), partition).await,
            None => Ok(None),
        }
    }

    async fn add_reader(&mut self, partition: &str) -> Result<()> {
        let checkpoint = self.checkpoint_of(partition).await?;
        if let Some(cp) = &checkpoint {
            self.committed.insert(partition.to_owned(), cp.clone());
        }
        let reader = self.new_reader(partition, checkpoint);
        self.readers.insert(partition.to_owned(), reader);
        self.uncommitted.insert(partition.to_owned(), 0);
        Ok(())
    }

    /// Discovery and membership: runs every heartbeat interval.
    async fn upkeep(&mut self) -> Result<()> {
        let partitions = match self.discover().await {
            Ok(p) => p,
            Err(PintailError::Storage(e)) if is_retryable(&e) => {
                self.metrics.storage_errors.inc();
                tracing::warn!(error = %e, "partition discovery failed; retrying");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match self.membership.clone() {
            Membership::Solo | Membership::Static { .. } => {
                for p in partitions {
                    let mine = match self.membership {
                        Membership::Static { k, n } => static_owner(&p, k, n),
                        _ => true,
                    };
                    if mine && !self.readers.contains_key(&p) {
                        self.add_reader(&p).await?;
                    }
                }
            }
            Membership::Dynamic { .. } => {
                if let Err(e) = self.rebalance(partitions).await {
                    match e {
                        PintailError::Storage(e) if is_retryable(&e) => {
                            self.metrics.storage_errors.inc();
                            tracing::warn!(error = %e, "group upkeep failed; retrying");
                        }
                        other => return Err(other),
                    }
                }
            }
        }
        self.metrics.owned_partitions.set(self.readers.len() as i64);
        self.measure_lag().await;
        Ok(())
    }

    /// Whether `partition` (reported by another member, or a checkpoint) is one
    /// this consumer can read: a known cluster's collector stream split into the
    /// same number of sub-partitions (local view) or one of the same number of
    /// sealed partitions.
    fn accepts(&self, partition: &str) -> bool {
        match self.view {
            ReadView::Local => LocalPartition::parse(partition).is_some_and(|p| {
                p.n == self.partitions_n && self.clusters.iter().any(|(n, _)| *n == p.cluster)
            }),
            ReadView::Merged | ReadView::Mirror => {
                crate::lag::view_of_partition(partition) != (ReadView::Local, 1)
                    && partition.ends_with(&format!("of{}", self.partitions_n))
            }
        }
    }

    /// One round of dynamic membership (see [`crate::group`]): fencing of an
    /// earlier process of this id, the assignment, hand-overs, renewals, claims.
    async fn rebalance(&mut self, found: BTreeSet<String>) -> Result<()> {
        let g = self.group.clone().expect("dynamic membership has a group");
        let state = g.read_state().await?;
        if let Some(by) = g.fenced_by(&state) {
            let held: Vec<String> = self.epochs.keys().cloned().collect();
            for p in held {
                self.lose(&p);
            }
            tracing::error!(member = %g.member, group = %g.group, incarnation = g.incarnation, by,
                "a later process joined with this member id; stopping");
            return Err(PintailError::MemberFenced {
                group: g.group.clone(),
                member: g.member.clone(),
                by,
            });
        }
        let members = state.members(&g.member);
        let mut partitions = found.clone();
        let mut foreign = Vec::new();
        for (id, other) in &state.others {
            for p in &other.partitions {
                if !self.accepts(p) {
                    foreign.push(format!("{p} (member {id})"));
                } else if !partitions.contains(p) {
                    partitions.insert(p.clone());
                }
            }
        }
        if foreign.is_empty() {
            self.foreign_warned = false;
        } else if !self.foreign_warned {
            // Left out of this member's inputs, so its assignment differs from
            // theirs for as long as this lasts.
            self.foreign_warned = true;
            tracing::warn!(group = %g.group, member = %g.member, partitions = %foreign.join(", "),
                "other members of the group read partitions this member cannot (a cluster it does not read): \
                 members of a group must read the same clusters, or they never agree on an assignment; \
                 start every member with the same --config/--cluster (or --root)");
        }
        let owners = state.owners(&members);
        let digest = assignment_digest(&members, &partitions, &owners);
        let desired: BTreeSet<String> = assign(&members, &partitions, &owners)
            .into_iter()
            .filter(|(_, m)| *m == g.member)
            .map(|(p, _)| p)
            .collect();
        let renew_due = self.last_renew.is_none_or(|t| t.elapsed() >= g.lease / 3);
        let report = (found, digest);
        if renew_due || self.reported.as_ref() != Some(&report) {
            g.heartbeat(&report.0, &report.1).await?;
            self.reported = Some(report);
        }
        // Partitions held now: noticed taken, kept, or handed over.
        let held: Vec<(String, u64)> = self.epochs.iter().map(|(p, e)| (p.clone(), *e)).collect();
        for (p, epoch) in held {
            let current = state.claims.get(&p).map(|(e, _)| *e).unwrap_or(0);
            if current > epoch {
                self.lose(&p);
            } else if desired.contains(&p) {
                if let Some((reader, _)) = self.revoking.remove(&p) {
                    // Assigned back before the hand-over finished: read on.
                    self.readers.insert(p, reader);
                }
            } else if let Some(reader) = self.readers.remove(&p) {
                // Cooperative hand-over: stop delivering from it now; release the
                // claim once what was delivered from it is committed.
                self.revoking
                    .insert(p.clone(), (reader, Instant::now() + g.lease));
                let auto = self.auto_every.is_some() || self.auto_messages.is_some();
                if let Some(pos) = self.processed.get(&p).cloned().filter(|_| auto) {
                    self.commit(&pos).await.ok();
                }
                tracing::info!(partition = %p, member = %g.member,
                    "handing a partition over: stopped reading it, releasing it once what was delivered from it is committed");
            }
        }
        let revoking: Vec<String> = self.revoking.keys().cloned().collect();
        for p in revoking {
            self.release_if_committed(&p).await?;
        }
        if renew_due {
            // Concurrently: on HDFS one claim write takes about half a second, and
            // renewing them one after the other stalled a member owning several
            // partitions for seconds per heartbeat.
            futures::future::try_join_all(
                self.epochs
                    .iter()
                    .map(|(p, epoch)| g.renew(p, *epoch, false)),
            )
            .await?;
            self.last_renew = Some(Instant::now());
        }
        let mut acquired = Vec::new();
        for p in &desired {
            if self.epochs.contains_key(p) {
                continue;
            }
            let Some(next_epoch) = g.claimable(state.claims.get(p), &members) else {
                continue; // a live owner has not released it yet
            };
            if g.acquire(p, next_epoch).await? {
                self.epochs.insert(p.clone(), next_epoch);
                self.add_reader(p).await?;
                self.metrics.rebalances.inc();
                tracing::debug!(partition = %p, member = %g.member, epoch = next_epoch, "acquired a partition");
                acquired.push(p.clone());
            }
        }
        // Claims an earlier process of this id still holds and this one is not
        // assigned: take them (fencing the old process) and release them at once,
        // so their new owners need not wait for the old lease.
        for (p, (epoch, claim)) in &state.claims {
            if claim.member == g.member
                && claim.incarnation < g.incarnation
                && !claim.released
                && !self.epochs.contains_key(p)
                && g.acquire(p, epoch + 1).await?
            {
                g.renew(p, epoch + 1, true).await?;
                tracing::info!(partition = %p, member = %g.member,
                    "released a partition an earlier process of this member held");
            }
        }
        if !acquired.is_empty() {
            tracing::info!(member = %g.member, partitions = %acquired.join(","),
                owned = self.readers.len(), "acquired partitions");
        }
        self.in_transition =
            !self.revoking.is_empty() || desired.iter().any(|p| !self.epochs.contains_key(p));
        Ok(())
    }

    /// Releases a partition being handed over once nothing delivered from it is
    /// uncommitted, or anyway once its deadline passed (what was not committed
    /// is then delivered again by the next owner, and counted).
    async fn release_if_committed(&mut self, partition: &str) -> Result<()> {
        let Some((_, deadline)) = self.revoking.get(partition) else {
            return Ok(());
        };
        let pending = self.processed.contains_key(partition)
            || self
                .last_returned
                .as_ref()
                .is_some_and(|p| p.partition() == partition);
        if pending && Instant::now() < *deadline {
            return Ok(());
        }
        let g = self.group.clone().expect("dynamic membership has a group");
        self.revoking.remove(partition);
        if pending {
            let lost = self.uncommitted.get(partition).copied().unwrap_or(0);
            self.metrics.lost_uncommitted.inc_by(lost);
            tracing::warn!(partition, member = %g.member, lost,
                "handed a partition over with deliveries never committed within the lease; its next owner delivers them again");
            self.processed.remove(partition);
            if self
                .last_returned
                .as_ref()
                .is_some_and(|p| p.partition() == partition)
            {
                self.last_returned = None;
            }
        }
        self.uncommitted.remove(partition);
        if let Some(epoch) = self.epochs.remove(partition) {
            g.renew(partition, epoch, true).await?;
        }
        self.metrics.rebalances.inc();
        self.metrics.owned_partitions.set(self.readers.len() as i64);
        tracing::info!(partition, member = %g.member, "released a partition");
        Ok(())
    }

    /// Measures the lag gauges of the partitions read (every `lag_every`, only
    /// when the metrics are exported); drops the series of partitions no longer
    /// read.
    async fn measure_lag(&mut self) {
        if !self.metrics.exported || Instant::now() < self.next_lag {
            return;
        }
        self.next_lag = Instant::now() + self.lag_every;
        let labels = self.metrics.lag_labels.clone();
        let now = self.ctx.clock.now();
        let ids: Vec<String> = self.readers.keys().cloned().collect();
        for id in &ids {
            let position = self
                .last_returned
                .as_ref()
                .filter(|p| p.partition() == id.as_str())
                .or_else(|| self.processed.get(id))
                .or_else(|| self.committed.get(id))
                .cloned();
            let Some(position) = position else {
                continue; // nothing delivered and no checkpoint yet
            };
            let storage = match self.view {
                ReadView::Local => self
                    .clusters
                    .iter()
                    .find(|(c, _)| c == position.cluster())
                    .map(|(_, s)| s.clone()),
                ReadView::Merged | ReadView::Mirror => {
                    self.clusters.first().map(|(_, s)| s.clone())
                }
            };
            let Some(storage) = storage else { continue };
            match crate::lag::partition_lag(
                &storage,
                self.view,
                &self.ctx.topic,
                &position,
                self.partitions_n,
                now,
            )
            .await
            {
                Ok(lag) => {
                    let l = labels.of(id);
                    self.metrics
                        .lag_events
                        .get_or_create(&l)
                        .set(lag.events as i64);
                    self.metrics
                        .lag_seconds
                        .get_or_create(&l)
                        .set(lag.seconds as i64);
                }
                Err(e) => {
                    self.metrics.storage_errors.inc();
                    tracing::warn!(partition = %id, error = %e, "could not measure the lag; keeping the last value");
                }
            }
        }
        for gone in self
            .lag_partitions
            .difference(&ids.iter().cloned().collect())
        {
            let l = labels.of(gone);
            self.metrics.lag_events.remove(&l);
            self.metrics.lag_seconds.remove(&l);
        }
        self.lag_partitions = ids.into_iter().collect();
    }
}

/// Logs `step` (which ran inside `next()`, holding delivery up) when it took
/// longer than [`SLOW_INLINE_STEP`].
fn slow_inline_step(step: &str, began: Instant) {
    let took = began.elapsed();
    if took > SLOW_INLINE_STEP {
        tracing::info!(
            step,
            took_ms = took.as_millis() as u64,
            "a step inside next() held delivery up"
        );
    }
}
