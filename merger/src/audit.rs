//! Per-minute counts of one topic at every tier, and what they say: the
//! computation behind `conduit audit` and the worker's status page.
//!
//! It lives in the worker's crate because it reads what the worker builds
//! (sealed local, merged and mirror views, quarantine) and the worker's status
//! page calls it; the CLI, which already depends on this crate, only renders
//! the [`TopicAudit`] as a table or JSON (`cli/src/audit.rs` documents the
//! tiers, flags and judgements for users).
//!
//! Tiers, as [`TopicAudit`] holds them:
//!
//! - **acked**: events publishers had acknowledged, summed from the `_audit`
//!   records they publish, by the publisher's enqueue minute.
//! - **collected:<cluster>**: records in the collector files of the topic,
//!   whether still in `data/` or already moved to `streams_local/`, by the file's
//!   minute.
//! - **local:<cluster>**: records listed in sealed local manifests, by the data's
//!   own minute.
//! - **merged:<cluster>** / **mirror:<cluster>**: records listed in sealed merged
//!   manifests; the cluster named by `merge_into` is `merged`, others `mirror`.
//! - **invalid**: the topic's entries collectors sent to `_invalid`.
//!
//! Every cell (tier × minute) gets a [`CellState`]; a minute counts as
//! [late](CellState::Late) when a view has not sealed it [`LATE_AFTER_SECS`]
//! after the minute ended (by default).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use chrono::{DateTime, Utc};
use conduit_core::format::{
    contents, count_records_in, read_file, read_trailer, Codec, FormatError,
};
use conduit_core::layout::{Layout, Located};
use conduit_core::records::{AuditRecord, AuditRecordError, InvalidRecord};
use conduit_core::tree::{self, MinuteWalker};
use conduit_core::{
    Encoding, LayoutError, Manifest, ManifestError, Minute, NodeName, SharedStorage, Storage,
    StorageError, Topic, TopicSettings, View,
};
use serde::Serialize;

/// A view that has not sealed a minute this many seconds after the minute
/// ended is *late* (the default of `conduit audit --late-secs`; the status
/// page's rule): collectors roll files every minute and a silent one holds
/// sealing back for `worker.collector_timeout_secs` (120 s by default).
pub const LATE_AFTER_SECS: u64 = 300;

/// The tier of acknowledged counts.
pub const ACKED: &str = "acked";

/// The tier of entries sent to `_invalid`.
pub const INVALID: &str = "invalid";

/// Malformed `_audit` records shown by name.
pub const MALFORMED_SHOWN: usize = 3;

/// Errors of an audit.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A storage call failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A data file's trailer could not be read.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// An `_audit` or `_invalid` file could not be read.
    #[error("reading {what} file {path}")]
    Read {
        /// `audit` or `_invalid`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// A data file without trailer has a frame that does not decode.
    #[error("{path}: frame at offset {offset} does not decode: {reason}")]
    Frame {
        /// The file.
        path: String,
        /// Offset of the frame.
        offset: u64,
        /// Why it does not decode.
        reason: String,
    },
    /// A manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A minute out of range.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl AuditError {
    /// Whether the error is a file that disappeared (moved by the worker).
    fn is_not_found(&self) -> bool {
        match self {
            AuditError::Storage(s) => s.is_not_found(),
            AuditError::Format(FormatError::Storage(s))
            | AuditError::Read {
                source: FormatError::Storage(s),
                ..
            } => s.is_not_found(),
            _ => false,
        }
    }
}

/// Per-minute counts of one tier.
pub type Counts = BTreeMap<Minute, u64>;

/// The total of `counts`; it saturates instead of wrapping.
pub fn sum(counts: &Counts) -> u64 {
    counts.values().fold(0u64, |a, b| a.saturating_add(*b))
}

/// One storage tier of one cluster.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tier {
    /// `collected:dc1`, `local:dc1`, `merged:dc1`, `mirror:dc2`.
    pub name: String,
    /// Records by minute.
    pub counts: Counts,
    /// Minutes the view has not sealed (not judged).
    #[serde(skip)]
    pub unsealed: BTreeSet<Minute>,
    /// The oldest directory of the view in range: minutes before it are before
    /// the topic's stream started there (or purged), not waiting to be sealed.
    #[serde(skip)]
    pub first_dir: Option<Minute>,
    /// Records the seal dropped as copies of batches another collector stored
    /// (manifests' `duplicates_dropped`, directories in range).
    #[serde(skip)]
    pub dropped: u64,
    /// Files the seal set aside (manifests' `quarantined`): directory minute, name,
    /// reason.
    #[serde(skip)]
    pub quarantined: Vec<(Minute, String, String)>,
}

impl Tier {
    /// Whether minute `m` is still to be sealed, given the count of the tier it
    /// is built from: a minute with no directory before the view's first one, and
    /// nothing upstream, is simply before the stream (not flagged, judged as 0).
    pub fn waiting(&self, m: Minute, upstream: u64) -> bool {
        self.unsealed.contains(&m) && !(upstream == 0 && self.first_dir.is_none_or(|f| m < f))
    }

    /// The count of minute `m`.
    pub fn get(&self, m: Minute) -> u64 {
        self.counts.get(&m).copied().unwrap_or(0)
    }
}

/// Records in the complete data units of `buf`, the bytes of a data file of
/// `codec` ([`conduit_core::format::contents`]), or the offset and reason of the
/// first unit that does not decode.
pub fn count_records(codec: Codec, buf: &[u8]) -> Result<u64, (u64, String)> {
    let (units, _) = contents(codec, buf, 0)?;
    Ok(units.iter().map(|(_, c)| count_records_in(c)).sum())
}

/// Records of the data file at `path`: from its trailer when closed, else by
/// decoding its complete frames.
async fn file_records(storage: &dyn Storage, path: &str, len: u64) -> Result<u64, AuditError> {
    if let Some(trailer) = read_trailer(storage, path, len).await? {
        return Ok(trailer.records);
    }
    let buf = storage.read(path).await?;
    count_records(Codec::of_file(path), &buf).map_err(|(offset, reason)| AuditError::Frame {
        path: path.to_owned(),
        offset,
        reason,
    })
}

/// A collector file of a topic, wherever it is now.
#[derive(Debug)]
pub(crate) struct FoundFile {
    /// The file's own minute (from its name).
    pub(crate) minute: Minute,
    pub(crate) path: String,
    len: u64,
}

/// Every collector file of `topic`: those in the collectors' `data/` directories
/// (`tree::collector_files`: the files the worker moves) and those the worker
/// moved into local minute directories from `since` on, each once. The worker
/// moves files while this runs: `data/` is listed first, so a file moved
/// meanwhile is found in its minute directory (and kept once, by its collector,
/// minute and sequence number); one moved after the listing, before it is read,
/// makes the read fail with "not found" (see [`retry_moved`]).
pub(crate) async fn collector_files(
    storage: &dyn Storage,
    topic: &Topic,
    since: Minute,
) -> Result<Vec<FoundFile>, AuditError> {
    // Keyed by (collector, minute, seq): the same file in `data/` and in its
    // minute directory is one entry, the later listing's.
    let mut files: BTreeMap<(NodeName, Minute, u32), FoundFile> = BTreeMap::new();
    let mut keep = |collector: NodeName, minute: Minute, seq: u32, path: String, len: u64| {
        files.insert((collector, minute, seq), FoundFile { minute, path, len });
    };
    for file in tree::collector_files(storage, topic).await? {
        let (minute, seq) = (file.name.minute, file.name.seq);
        keep(file.collector, minute, seq, file.path, file.len);
    }
    // Late files land in later directories: look from `since` on, without an end.
    let mut dirs = MinuteWalker::new(storage, View::Local, topic).from(since);
    while let Some(minute) = dirs.next().await? {
        let dir = Layout::minute_dir(View::Local, topic, minute);
        for file in storage.list_or_empty(&dir).await? {
            if let Some(name) = Layout::local_file_in(topic, &file.name) {
                keep(name.collector, name.minute, name.seq, file.path, file.len);
            }
        }
    }
    Ok(files.into_values().collect())
}

/// Runs `scan` again (up to 10 times) while it fails because a file it listed was
/// moved by the worker before it was read.
pub(crate) async fn retry_moved<T, F, Fut>(mut scan: F) -> Result<T, AuditError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AuditError>>,
{
    let mut attempt = 1;
    loop {
        match scan().await {
            Err(e) if attempt < 10 && e.is_not_found() => {
                tracing::debug!(attempt, error = %e, "a file moved while auditing; listing again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Collector-written records of `topic` by the file's minute, from `data/` and
/// `streams_local/` (files keep their collector name there).
async fn collected(
    storage: &dyn Storage,
    topic: &Topic,
    from: Minute,
    to: Minute,
) -> Result<Counts, AuditError> {
    retry_moved(|| async {
        let mut counts = Counts::new();
        for file in collector_files(storage, topic, from).await? {
            if file.minute >= from && file.minute <= to {
                *counts.entry(file.minute).or_default() +=
                    file_records(storage, &file.path, file.len).await?;
            }
        }
        Ok(counts)
    })
    .await
}

/// Records listed in sealed manifests of `view`, by the data's own minute, plus
/// the directories in range that are not sealed yet.
async fn sealed(
    storage: &dyn Storage,
    view: View,
    topic: &Topic,
    from: Minute,
    to: Minute,
) -> Result<Tier, AuditError> {
    let mut tier = Tier::default();
    let dirs = MinuteWalker::new(storage, view, topic)
        .from(from)
        .all()
        .await?;
    tier.first_dir = dirs.first().copied();
    let mut seen_sealed = BTreeSet::new();
    for minute in dirs {
        let dir = Layout::minute_dir(view, topic, minute);
        match Manifest::read(storage, &dir).await? {
            Some(manifest) => {
                seen_sealed.insert(minute);
                if minute <= to {
                    tier.dropped = tier.dropped.saturating_add(manifest.duplicates_dropped);
                    for q in manifest.quarantined {
                        tier.quarantined.push((minute, q.name, q.reason));
                    }
                }
                for file in manifest.files {
                    if file.minute >= from && file.minute <= to {
                        *tier.counts.entry(file.minute).or_default() += file.records;
                    }
                }
            }
            None if minute <= to => {
                tier.unsealed.insert(minute);
            }
            None => {}
        }
    }
    let mut m = from;
    while m <= to {
        if !seen_sealed.contains(&m) {
            tier.unsealed.insert(m);
        }
        m = m.next()?;
    }
    Ok(tier)
}

/// What the `_audit` records say about a topic.
#[derive(Debug, Default)]
pub struct Acked {
    /// Acknowledged events by enqueue minute (valid records only).
    pub counts: Counts,
    /// Malformed records that concern the topic (or name no topic): counted,
    /// never summed.
    pub malformed: u64,
    /// The first few of them, `<file>: <reason>`.
    pub malformed_examples: Vec<String>,
    /// Records of another format version, skipped.
    pub other_version: u64,
}

impl Acked {
    fn malformed(&mut self, file: &str, reason: &str) {
        self.malformed += 1;
        if self.malformed_examples.len() < MALFORMED_SHOWN {
            self.malformed_examples
                .push(format!("{file}: {}", conduit_core::text::capped(reason)));
        }
    }

    /// Adds `acked` events of `minute`; a sum that would overflow is refused.
    fn add(&mut self, minute: Minute, acked: u64) -> Result<(), String> {
        let slot = self.counts.entry(minute).or_default();
        *slot = slot
            .checked_add(acked)
            .ok_or_else(|| format!("acked {acked} would overflow the sum {slot} of {minute}"))?;
        Ok(())
    }
}

/// The `topic` field of a JSON payload, when it has a readable one.
fn named_topic(payload: &[u8]) -> Option<String> {
    let value = serde_json::from_slice::<serde_json::Value>(payload).ok()?;
    Some(value.get("topic")?.as_str()?.to_owned())
}

/// The entry of `found` for the topic named `name`.
fn find_mut<'a, T>(found: &'a mut BTreeMap<Topic, T>, name: &str) -> Option<&'a mut T> {
    found
        .iter_mut()
        .find(|(t, _)| t.as_str() == name)
        .map(|(_, v)| v)
}

/// The entries of `found` an `_audit` payload that is not a valid record may
/// concern ([`may_concern`]): the topic it names, or every one when it names none.
fn concerned<'a, T>(
    found: &'a mut BTreeMap<Topic, T>,
    payload: &[u8],
) -> impl Iterator<Item = &'a mut T> + 'a {
    let named = named_topic(payload);
    found
        .iter_mut()
        .filter(move |(topic, _)| may_concern(named.as_deref(), topic))
        .map(|(_, v)| v)
}

/// Whether an `_audit` payload that is not a valid record, whose readable
/// `topic` field is `named`, may concern `topic`: it names `topic`, or no topic.
fn may_concern(named: Option<&str>, topic: &Topic) -> bool {
    named.is_none_or(|n| n == topic.as_str())
}

/// Acknowledged counts for each of `topics` from the `_audit` records in
/// `storage` (read once for all of them), each validated ([`AuditRecord::parse`])
/// before it is summed, added to `into`.
async fn acked(
    storage: &dyn Storage,
    topics: &[Topic],
    from: Minute,
    to: Minute,
    into: &mut BTreeMap<Topic, Acked>,
) -> Result<(), AuditError> {
    let audit = Topic::audit();
    // Audit records are written a little after their minute: look from one hour
    // before `from` (clock skew) to the end.
    let start = from.add_minutes(-60).unwrap_or(from);
    let found = retry_moved(|| async {
        let mut found: BTreeMap<Topic, Acked> = topics
            .iter()
            .map(|t| (t.clone(), Acked::default()))
            .collect();
        for file in collector_files(storage, &audit, start).await? {
            let decoded = read_file(storage, &file.path, Encoding::Lines)
                .await
                .map_err(|source| AuditError::Read {
                    what: "audit",
                    path: file.path.clone(),
                    source,
                })?;
            for payload in decoded.payloads {
                match AuditRecord::parse(&payload) {
                    Ok(record) => {
                        // The minute before `from` too: its events can arrive in
                        // `from` (see the duplicate judgement in `audit_topics`).
                        let first = from.prev().unwrap_or(from);
                        let Some(topic) = found.get_mut(&record.topic) else {
                            continue;
                        };
                        if record.minute >= first && record.minute <= to {
                            if let Err(reason) = topic.add(record.minute, record.acked) {
                                topic.malformed(&file.path, &reason);
                            }
                        }
                    }
                    Err(AuditRecordError::OtherVersion { .. }) => {
                        for topic in concerned(&mut found, &payload) {
                            topic.other_version += 1;
                        }
                    }
                    Err(AuditRecordError::Malformed { reason }) => {
                        for topic in concerned(&mut found, &payload) {
                            topic.malformed(&file.path, &reason);
                        }
                    }
                }
            }
        }
        Ok(found)
    })
    .await?;
    for (topic, found) in found {
        let into = into.entry(topic).or_default();
        for (minute, acked) in found.counts {
            if let Err(reason) = into.add(minute, acked) {
                into.malformed("(all clusters)", &reason);
            }
        }
        into.malformed += found.malformed;
        for example in found.malformed_examples {
            if into.malformed_examples.len() < MALFORMED_SHOWN {
                into.malformed_examples.push(example);
            }
        }
        into.other_version += found.other_version;
    }
    Ok(())
}

/// The topic's entries that collectors sent to `_invalid`.
#[derive(Debug, Default)]
pub struct Invalid {
    /// By the collector file's (arrival) minute.
    pub counts: Counts,
    /// By `reason`.
    pub reasons: BTreeMap<String, u64>,
    /// `_audit` records about the topic refused from plain `Log` calls
    /// (`reserved_topic`): someone other than a conduit publisher wrote them.
    pub audit_refused: u64,
}

/// Reads the `_invalid` records of `storage` in `[from, to]` (arrival minute)
/// once for all of `topics`, adding each topic's to `into`.
async fn invalid(
    storage: &dyn Storage,
    topics: &[Topic],
    from: Minute,
    to: Minute,
    into: &mut BTreeMap<Topic, Invalid>,
) -> Result<(), AuditError> {
    let found = retry_moved(|| async {
        let mut found: BTreeMap<Topic, Invalid> = topics
            .iter()
            .map(|t| (t.clone(), Invalid::default()))
            .collect();
        for file in collector_files(storage, &Topic::invalid(), from).await? {
            if file.minute < from || file.minute > to {
                continue;
            }
            let decoded = read_file(storage, &file.path, Encoding::Lines)
                .await
                .map_err(|source| AuditError::Read {
                    what: "_invalid",
                    path: file.path.clone(),
                    source,
                })?;
            for payload in decoded.payloads {
                let Ok(record) = serde_json::from_slice::<InvalidRecord>(&payload) else {
                    continue;
                };
                if let Some(topic) = find_mut(&mut found, &record.topic) {
                    *topic.counts.entry(file.minute).or_default() += 1;
                    *topic.reasons.entry(record.reason).or_default() += 1;
                } else if record.topic == Topic::AUDIT {
                    // An `_audit` record refused from a plain `Log`: it counts
                    // for the topic it names.
                    let named = named_topic(&record.payload_base64.0);
                    if let Some(topic) = named.and_then(|n| find_mut(&mut found, &n)) {
                        topic.audit_refused += 1;
                    }
                }
            }
        }
        Ok(found)
    })
    .await?;
    for (topic, found) in found {
        let into = into.entry(topic).or_default();
        for (minute, n) in found.counts {
            *into.counts.entry(minute).or_default() += n;
        }
        for (reason, n) in found.reasons {
            *into.reasons.entry(reason).or_default() += n;
        }
        into.audit_refused += found.audit_refused;
    }
    Ok(())
}

/// A data file set aside under `quarantine/` (`docs/format.md` §1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where it is now: `quarantine/<original>`.
    pub path: String,
    /// Where it was.
    pub original: String,
    /// Its length.
    pub len: u64,
    /// Its original path parsed (view, topic, minute), if it is a conduit path.
    pub located: Option<Located>,
}

/// Every file under `quarantine/`, sorted by path.
pub async fn quarantined_files(storage: &dyn Storage) -> Result<Vec<Quarantined>, StorageError> {
    let mut found = Vec::new();
    let mut dirs = vec![Layout::QUARANTINE_DIR.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in storage.list_or_empty(&dir).await? {
            if entry.is_dir {
                dirs.push(entry.path);
                continue;
            }
            let Some(original) = Layout::quarantined_original(&entry.path) else {
                continue;
            };
            found.push(Quarantined {
                original: original.to_owned(),
                located: Layout::parse_path(original).ok(),
                path: entry.path.clone(),
                len: entry.len,
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// A file of the topic set aside in `quarantine/` or by a seal.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineFinding {
    /// The cluster whose storage holds it.
    pub cluster: String,
    /// Where it is (`quarantine/...`), or the directory and name a manifest lists.
    pub path: String,
    /// What is known: its size and original path, or the seal's reason.
    pub detail: String,
    /// The minute it belongs to (its original path's, or the sealed directory's).
    #[serde(skip)]
    pub minute: Option<Minute>,
}

/// A tier holding more events than publishers had acknowledged over the range.
#[derive(Debug, Clone, Serialize)]
pub struct Excess {
    /// The tier (`collected`, `local`, `merged:dc1`, `mirror:dc2`).
    pub tier: String,
    /// Its total.
    pub holds: u64,
    /// How many more than acknowledged.
    pub more: u64,
}

/// The state of one cell of the grid (one tier, one minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// Sealed and consistent (collected: its local view sealed the minute;
    /// acked: old enough for every `_audit` record to be in, `--settle-secs`).
    Sealed,
    /// Not sealed yet, within [`LATE_AFTER_SECS`] (or `--late-secs`); acked:
    /// `_audit` records may still come.
    Waiting,
    /// Not sealed longer than that after the minute ended.
    Late,
    /// Fewer records than the tier it is built from.
    Loss,
    /// More records than the tier it is built from.
    Duplicates,
    /// A file of the minute was set aside.
    Quarantined,
    /// Entries of the minute went to `_invalid`.
    Invalid,
}

impl CellState {
    /// Lower-case name (`sealed`, `waiting`, ...), as in the page and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Sealed => "sealed",
            CellState::Waiting => "waiting",
            CellState::Late => "late",
            CellState::Loss => "loss",
            CellState::Duplicates => "duplicates",
            CellState::Quarantined => "quarantined",
            CellState::Invalid => "invalid",
        }
    }

    /// Every state, in the legend's order.
    pub const ALL: [CellState; 7] = [
        CellState::Sealed,
        CellState::Waiting,
        CellState::Late,
        CellState::Loss,
        CellState::Duplicates,
        CellState::Quarantined,
        CellState::Invalid,
    ];
}

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// The tier: `acked`, a [`Tier::name`], or `invalid`.
    pub tier: String,
    /// Its count for the minute.
    pub count: u64,
    /// What it says.
    pub state: CellState,
}

/// One minute of the audit.
#[derive(Debug, Clone)]
pub struct Row {
    /// The minute.
    pub minute: Minute,
    /// `conduit audit`'s flags (`LOSS local:dc1 3<5`, `unsealed merged:dc1`, `edge`).
    pub flags: Vec<String>,
    /// Every tier's cell, in the table's column order (acked, collected,
    /// local, merged/mirror, invalid).
    pub cells: Vec<Cell>,
}

impl Row {
    /// Whether the minute shows a problem: loss, duplicates, a quarantined file,
    /// `_invalid` entries, or a view that is late to seal it (the rule of
    /// `conduit audit --only-problems`).
    pub fn has_problem(&self) -> bool {
        self.cells.iter().any(|c| {
            matches!(
                c.state,
                CellState::Loss
                    | CellState::Duplicates
                    | CellState::Quarantined
                    | CellState::Invalid
                    | CellState::Late
            )
        })
    }

    /// Whether every view (local, merged, mirror) has sealed the minute (acked
    /// counts still settling do not count: they are not sealed by anyone).
    pub fn sealed(&self) -> bool {
        !self
            .cells
            .iter()
            .any(|c| c.tier != ACKED && matches!(c.state, CellState::Waiting | CellState::Late))
    }
}

/// Minutes counted by state, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The topic.
    pub topic: String,
    /// Minutes in range.
    pub minutes: u64,
    /// Minutes every view has sealed.
    pub sealed: u64,
    /// Minutes some view is still to seal (not late yet).
    pub waiting: u64,
    /// Minutes some view is late to seal.
    pub late: u64,
    /// Minutes with loss.
    pub lost: u64,
    /// Minutes with duplicates.
    pub duplicated: u64,
    /// Minutes with a quarantined file.
    pub quarantined: u64,
    /// Minutes with entries in `_invalid`.
    pub invalid: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} minutes, {} sealed, {} waiting, {} late, {} lost, {} duplicated, {} quarantined, {} invalid",
            self.topic,
            self.minutes,
            self.sealed,
            self.waiting,
            self.late,
            self.lost,
            self.duplicated,
            self.quarantined,
            self.invalid
        )
    }
}

/// What to audit and how to judge.
#[derive(Debug, Clone)]
pub struct AuditRange {
    /// First minute.
    pub from: Minute,
    /// Last minute, inclusive.
    pub to: Minute,
    /// The time of the audit.
    pub now: DateTime<Utc>,
    /// Minutes that started less than this many seconds before `now` are not
    /// compared with the acknowledged counts for duplicates.
    pub settle_secs: u64,
    /// Unsealed this many seconds after its end, a minute is late.
    pub late_secs: u64,
}

/// Everything `conduit audit` found about one topic.
#[derive(Debug)]
pub struct TopicAudit {
    /// The topic.
    pub topic: Topic,
    /// The range audited.
    pub range: AuditRange,
    /// The `_audit` records' counts (without the minute before `from`).
    pub acked: Acked,
    /// Acknowledged in the minute before `from`: events that may have arrived in
    /// `from`, an allowance for the duplicate judgement.
    pub acked_before: u64,
    /// Entries sent to `_invalid`.
    pub invalid: Invalid,
    /// Files set aside.
    pub quarantine: Vec<QuarantineFinding>,
    /// Collected tiers, one per cluster.
    pub collected: Vec<Tier>,
    /// Local tiers, one per cluster.
    pub local: Vec<Tier>,
    /// Merged and mirror tiers, one per cluster holding `streams/`.
    pub merged: Vec<Tier>,
    /// Every minute of the range.
    pub rows: Vec<Row>,
    /// Tiers holding more than was acknowledged (beyond the allowance).
    pub excess: Vec<Excess>,
    /// Tiers holding more, within the allowance of the minute before `from`.
    pub unexplained: Vec<Excess>,
    /// Last minute compared with the acknowledged counts.
    pub judged_to: Minute,
    /// Acknowledged events up to `judged_to`.
    pub acked_judged: u64,
    /// Records the local seals dropped as second copies, by tier.
    pub dropped_at_seal: BTreeMap<String, u64>,
    /// Problems found (the exit status of `conduit audit`).
    pub problems: u64,
}

impl TopicAudit {
    /// Every storage tier in column order: collected, local, merged/mirror.
    pub fn tiers(&self) -> Vec<&Tier> {
        self.collected
            .iter()
            .chain(&self.local)
            .chain(&self.merged)
            .collect()
    }

    /// Total acknowledged over the range.
    pub fn acked_total(&self) -> u64 {
        sum(&self.acked.counts)
    }

    /// Total collected over the range, every cluster.
    pub fn collected_total(&self) -> u64 {
        self.collected
            .iter()
            .map(|t| sum(&t.counts))
            .fold(0, u64::saturating_add)
    }

    /// Whether publishers had more acknowledged than the collectors hold.
    pub fn acked_short(&self) -> bool {
        self.acked_total() > self.collected_total()
    }

    /// The minutes by state.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            topic: self.topic.as_str().to_owned(),
            minutes: self.rows.len() as u64,
            ..Summary::default()
        };
        for row in &self.rows {
            let has = |state: CellState| row.cells.iter().any(|c| c.state == state);
            if row.sealed() {
                s.sealed += 1;
            } else if has(CellState::Late) {
                s.late += 1;
            } else {
                s.waiting += 1;
            }
            s.lost += u64::from(has(CellState::Loss));
            s.duplicated += u64::from(has(CellState::Duplicates));
            s.quarantined += u64::from(has(CellState::Quarantined));
            s.invalid += u64::from(has(CellState::Invalid));
        }
        s
    }
}

/// The state of a view's cell that is built from `upstream` records.
fn view_state(
    tier: &Tier,
    m: Minute,
    upstream: u64,
    late: bool,
    quarantined: bool,
) -> (CellState, Option<String>) {
    if tier.waiting(m, upstream) {
        let state = if late {
            CellState::Late
        } else {
            CellState::Waiting
        };
        return (state, Some(format!("unsealed {}", tier.name)));
    }
    let n = tier.get(m);
    if n < upstream {
        (
            CellState::Loss,
            Some(format!("LOSS {} {}<{}", tier.name, n, upstream)),
        )
    } else if n > upstream {
        (
            CellState::Duplicates,
            Some(format!("DUP {} {}>{}", tier.name, n, upstream)),
        )
    } else if quarantined {
        (CellState::Quarantined, None)
    } else {
        (CellState::Sealed, None)
    }
}

/// Audits `topic` over `range` in `clusters` (name, storage), with the topic's
/// merge roles from `settings`.
pub async fn audit_topic(
    clusters: &[(String, SharedStorage)],
    settings: &TopicSettings,
    topic: &Topic,
    range: AuditRange,
) -> Result<TopicAudit, AuditError> {
    let topics = [(topic.clone(), settings.clone())];
    let mut audits = audit_topics(clusters, &topics, range).await?;
    Ok(audits.pop().expect("one audit per topic"))
}

/// What one topic's tiers hold, cluster by cluster.
#[derive(Debug, Default)]
struct TopicTiers {
    quarantine: Vec<QuarantineFinding>,
    collected: Vec<Tier>,
    local: Vec<Tier>,
    merged: Vec<Tier>,
}

/// Audits each of `topics` (with its settings) over `range` in `clusters`: the
/// same as [`audit_topic`] for each, but the `_audit`, `_invalid` and
/// `quarantine/` files every topic's audit reads are read once per cluster.
pub async fn audit_topics(
    clusters: &[(String, SharedStorage)],
    topics: &[(Topic, TopicSettings)],
    range: AuditRange,
) -> Result<Vec<TopicAudit>, AuditError> {
    let (from, to) = (range.from, range.to);
    let names: Vec<Topic> = topics.iter().map(|(t, _)| t.clone()).collect();
    let mut acked_all = BTreeMap::new();
    let mut invalid_all = BTreeMap::new();
    let mut tiers: Vec<TopicTiers> = topics.iter().map(|_| TopicTiers::default()).collect();
    for (name, storage) in clusters {
        acked(storage.as_ref(), &names, from, to, &mut acked_all).await?;
        invalid(storage.as_ref(), &names, from, to, &mut invalid_all).await?;
        let set_aside = quarantined_files(storage.as_ref()).await?;
        for ((topic, settings), found) in topics.iter().zip(&mut tiers) {
            let cluster = (name.as_str(), storage);
            cluster_tiers(cluster, topic, settings, &set_aside, from, to, found).await?;
        }
    }
    let mut audits = Vec::with_capacity(topics.len());
    for ((topic, settings), found) in topics.iter().zip(tiers) {
        let acked = acked_all.remove(topic).unwrap_or_default();
        let invalid = invalid_all.remove(topic).unwrap_or_default();
        let audit = judge(
            clusters,
            topic,
            settings,
            range.clone(),
            acked,
            invalid,
            found,
        )?;
        audits.push(audit);
    }
    Ok(audits)
}

/// Adds one cluster's tiers of `topic` (and its files set aside) to `found`.
async fn cluster_tiers(
    (name, storage): (&str, &SharedStorage),
    topic: &Topic,
    settings: &TopicSettings,
    set_aside: &[Quarantined],
    from: Minute,
    to: Minute,
    found: &mut TopicTiers,
) -> Result<(), AuditError> {
    for q in set_aside {
        let ours = q
            .located
            .as_ref()
            .filter(|l| l.topic == *topic && l.minute >= from && l.minute <= to);
        if let Some(located) = ours {
            found.quarantine.push(QuarantineFinding {
                cluster: name.to_owned(),
                detail: format!("{} bytes set aside from {}", q.len, q.original),
                minute: Some(located.minute),
                path: q.path.clone(),
            });
        }
    }
    found.collected.push(Tier {
        name: format!("collected:{name}"),
        counts: collected(storage.as_ref(), topic, from, to).await?,
        ..Tier::default()
    });
    let mut local = sealed(storage.as_ref(), View::Local, topic, from, to).await?;
    local.name = format!("local:{name}");
    for (minute, file, reason) in &local.quarantined {
        found.quarantine.push(QuarantineFinding {
            cluster: name.to_owned(),
            path: format!("{}/{file}", Layout::minute_dir(View::Local, topic, *minute)),
            detail: format!("the seal set it aside: {reason}"),
            minute: Some(*minute),
        });
    }
    found.local.push(local);
    if storage
        .exists(&Layout::topic_dir(View::Merged, topic))
        .await?
    {
        let mut merged = sealed(storage.as_ref(), View::Merged, topic, from, to).await?;
        let role = if settings.merge_into.as_deref() == Some(name) || settings.merge_into.is_none()
        {
            "merged"
        } else {
            "mirror"
        };
        merged.name = format!("{role}:{name}");
        found.merged.push(merged);
    }
    Ok(())
}

/// Judges one topic's counts minute by minute and over the range.
fn judge(
    clusters: &[(String, SharedStorage)],
    topic: &Topic,
    settings: &TopicSettings,
    range: AuditRange,
    mut acked_records: Acked,
    invalid_records: Invalid,
    found: TopicTiers,
) -> Result<TopicAudit, AuditError> {
    let (from, to, now) = (range.from, range.to, range.now);
    let TopicTiers {
        quarantine,
        collected: collected_tiers,
        local: local_tiers,
        merged: merged_tiers,
    } = found;
    // Events acknowledged in the minute before `from` may have arrived in `from`
    // (publisher and collector clocks, batching): kept apart, as an allowance.
    let acked_before = from
        .prev()
        .ok()
        .and_then(|before| acked_records.counts.remove(&before))
        .unwrap_or(0);
    let acked_counts = &acked_records.counts;
    let acked_sum = sum(acked_counts);
    // Any tier holding more than was acknowledged holds duplicates. Judged when
    // the topic has audit records at all (plain Scribe clients publish none),
    // over the minutes old enough for their audit records to be published, and
    // beyond what events of the minute before `from` arriving in `from` explain.
    let settled = Minute::from_datetime(now - chrono::Duration::seconds(range.settle_secs as i64))?;
    let judged_to = to.min(settled);
    let quarantined_at = |cluster: &str, m: Minute, local: bool| {
        quarantine.iter().any(|q| {
            q.cluster == cluster
                && q.minute == Some(m)
                && q.path.starts_with("quarantine/") != local
        })
    };

    // Judge every minute: local vs collected per cluster; merged/mirror vs the sum
    // of the sources' local counts.
    let mut problems = 0u64;
    let mut rows = Vec::new();
    let mut m = from;
    while m <= to {
        let late = m.end() + chrono::Duration::seconds(range.late_secs as i64) <= now;
        let mut flags = Vec::new();
        let mut cells = Vec::new();
        let get = |c: &Counts| c.get(&m).copied().unwrap_or(0);
        let acked_state = if m <= judged_to {
            CellState::Sealed
        } else {
            CellState::Waiting
        };
        cells.push(Cell {
            tier: ACKED.to_owned(),
            count: get(acked_counts),
            state: acked_state,
        });
        let mut local_cells = Vec::new();
        for ((collected, local), (cluster, _)) in
            collected_tiers.iter().zip(&local_tiers).zip(clusters)
        {
            let c = get(&collected.counts);
            let (state, flag) = view_state(local, m, c, late, quarantined_at(cluster, m, true));
            if matches!(state, CellState::Loss | CellState::Duplicates) {
                problems += 1;
            }
            flags.extend(flag);
            let collected_state = if quarantined_at(cluster, m, false) {
                CellState::Quarantined
            } else if matches!(state, CellState::Waiting | CellState::Late) {
                state
            } else {
                CellState::Sealed
            };
            cells.push(Cell {
                tier: collected.name.clone(),
                count: c,
                state: collected_state,
            });
            local_cells.push(Cell {
                tier: local.name.clone(),
                count: local.get(m),
                state,
            });
        }
        cells.extend(local_cells);
        let sources: u64 = local_tiers
            .iter()
            .zip(clusters)
            .filter(|(_, (name, _))| {
                settings.merge_sources.is_empty() || settings.merge_sources.contains(name)
            })
            .map(|(t, _)| get(&t.counts))
            .fold(0u64, u64::saturating_add);
        for merged in &merged_tiers {
            let (state, flag) = view_state(merged, m, sources, late, false);
            if matches!(state, CellState::Loss | CellState::Duplicates) {
                problems += 1;
            }
            flags.extend(flag);
            cells.push(Cell {
                tier: merged.name.clone(),
                count: merged.get(m),
                state,
            });
        }
        let collected_total: u64 = collected_tiers
            .iter()
            .map(|t| get(&t.counts))
            .fold(0u64, u64::saturating_add);
        if get(acked_counts) != collected_total && acked_sum > 0 {
            flags.push("edge".to_owned());
        }
        let invalid_here = get(&invalid_records.counts);
        cells.push(Cell {
            tier: INVALID.to_owned(),
            count: invalid_here,
            state: if invalid_here > 0 {
                CellState::Invalid
            } else {
                CellState::Sealed
            },
        });
        rows.push(Row {
            minute: m,
            flags,
            cells,
        });
        m = m.next()?;
    }
    let upto = |counts: &Counts| -> u64 {
        if judged_to < from {
            // No minute of the range is settled yet: nothing is judged.
            return 0;
        }
        counts
            .range(from..=judged_to)
            .map(|(_, n)| *n)
            .fold(0, u64::saturating_add)
    };
    let upto_all = |tiers: &[Tier]| -> u64 {
        tiers
            .iter()
            .map(|t| upto(&t.counts))
            .fold(0, u64::saturating_add)
    };
    let acked_judged = upto(acked_counts);
    let mut excess = Vec::new();
    let mut unexplained = Vec::new();
    if acked_sum > 0 && judged_to >= from {
        let mut judge = |tier: String, holds: u64| {
            if holds > acked_judged {
                let more = holds - acked_judged;
                let found = Excess { tier, holds, more };
                if more > acked_before {
                    excess.push(found);
                } else {
                    unexplained.push(found);
                }
            }
        };
        judge("collected".to_owned(), upto_all(&collected_tiers));
        judge("local".to_owned(), upto_all(&local_tiers));
        for merged in &merged_tiers {
            judge(merged.name.clone(), upto(&merged.counts));
        }
    }
    let dropped_at_seal: BTreeMap<String, u64> = local_tiers
        .iter()
        .filter(|t| t.dropped > 0)
        .map(|t| (t.name.clone(), t.dropped))
        .collect();
    let mut audit = TopicAudit {
        topic: topic.clone(),
        range,
        acked: acked_records,
        acked_before,
        invalid: invalid_records,
        quarantine,
        collected: collected_tiers,
        local: local_tiers,
        merged: merged_tiers,
        rows,
        excess,
        unexplained,
        judged_to,
        acked_judged,
        dropped_at_seal,
        problems,
    };
    if audit.acked_short() {
        audit.problems += 1;
    }
    audit.problems += audit.excess.len() as u64;
    audit.problems += audit.quarantine.len() as u64;
    if audit.acked.malformed > 0 {
        audit.problems += 1;
    }
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use conduit_core::storage::LocalStorage;

    use super::*;

    #[tokio::test]
    async fn a_file_moved_during_the_listing_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage: SharedStorage = Arc::new(LocalStorage::open(dir.path()).unwrap());
        let topic = Topic::audit();
        let minute = Minute::parse_flexible("2026-11-30T15:10").unwrap();
        let (dc1, c1) = (NodeName::new("dc1").unwrap(), NodeName::new("c1").unwrap());
        let name = Layout::collector_file_name(&topic, minute, 0);
        let data = format!("{}/{name}", Layout::collector_dir(&topic, &c1));
        let local = Layout::local_file_name(&dc1, &c1, minute, 0, &topic);
        let moved = format!(
            "{}/{local}",
            Layout::minute_dir(View::Local, &topic, minute)
        );
        // Listed in data/ and, moved meanwhile, in its minute directory.
        storage
            .write_atomic(&data, Bytes::from_static(b"x"))
            .await
            .unwrap();
        storage
            .write_atomic(&moved, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let files = collector_files(storage.as_ref(), &topic, minute)
            .await
            .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, moved, "the minute directory's path is kept");
        assert_eq!(files[0].minute, minute);
    }

    #[tokio::test]
    async fn only_the_topics_own_files_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path()).unwrap();
        let minute = Minute::parse_flexible("2026-11-30T15:10").unwrap();
        let clicks = Topic::new("clicks").unwrap();
        let (audit, user) = (Topic::audit(), Topic::new("sys_audit").unwrap());
        let (dc1, c1) = (NodeName::new("dc1").unwrap(), NodeName::new("c1").unwrap());
        let name = Layout::collector_file_name(&audit, minute, 0);
        let local = Layout::local_file_name(&dc1, &c1, minute, 1, &audit);
        let minute_dir = |t: &Topic| Layout::minute_dir(View::Local, t, minute);
        let paths = [
            format!("{}/{name}", Layout::collector_dir(&audit, &c1)),
            format!("{}/{local}", minute_dir(&audit)),
            // Another topic's files, a leftover copy, a directory that is no
            // collector's: the worker never moves these; audit used to count them.
            format!(
                "data/_audit/c1/{}",
                Layout::collector_file_name(&clicks, minute, 2)
            ),
            format!("data/_audit/c1/{}", Layout::tmp_name(&name)),
            format!("data/_audit/_c2/{name}"),
            format!(
                "{}/{}",
                minute_dir(&audit),
                Layout::local_file_name(&dc1, &c1, minute, 3, &clicks)
            ),
        ];
        for path in &paths {
            storage
                .write_atomic(path, Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let files = collector_files(&storage, &audit, minute).await.unwrap();
        let found: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(found, [paths[0].as_str(), paths[1].as_str()]);
        // The same names in the user topic `sys_audit`'s directories are its own.
        let user_data = format!("{}/{name}", Layout::collector_dir(&user, &c1));
        storage
            .write_atomic(&user_data, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let files = collector_files(&storage, &user, minute).await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, user_data);
    }

    #[test]
    fn acked_sums_are_checked_and_malformed_records_attributed_by_topic() {
        let minute = Minute::parse_flexible("2026-11-30T15:10").unwrap();
        let mut acked = Acked::default();
        acked.add(minute, u64::MAX - 1).unwrap();
        let overflow = acked.add(minute, 2).unwrap_err();
        assert!(overflow.contains("would overflow"), "{overflow}");
        assert_eq!(
            acked.counts[&minute],
            u64::MAX - 1,
            "the refused value is not added"
        );
        for _ in 0..5 {
            acked.malformed("data/_audit/c1/f", &overflow);
        }
        assert_eq!(acked.malformed, 5);
        assert_eq!(acked.malformed_examples.len(), MALFORMED_SHOWN);

        let clicks = Topic::new("clicks").unwrap();
        let concerns = |payload: &[u8]| may_concern(named_topic(payload).as_deref(), &clicks);
        assert_eq!(
            named_topic(br#"{"topic":"clicks","acked":-1}"#).as_deref(),
            Some("clicks")
        );
        assert!(concerns(br#"{"topic":"clicks","acked":-1}"#));
        assert!(!concerns(br#"{"topic":"views","acked":-1}"#));
        assert!(concerns(b"not json"), "no topic: it may be anyone's");
        assert!(concerns(br#"{"topic":7}"#));
        // Read once for several topics: a record naming one concerns it alone,
        // one naming none concerns them all.
        let mut found: BTreeMap<Topic, u32> = [clicks.clone(), Topic::new("views").unwrap()]
            .into_iter()
            .map(|t| (t, 0))
            .collect();
        for payload in [
            &br#"{"topic":"views"}"#[..],
            b"not json",
            br#"{"topic":"other"}"#,
        ] {
            for n in concerned(&mut found, payload) {
                *n += 1;
            }
        }
        assert_eq!(found[&clicks], 1);
        assert_eq!(found[&Topic::new("views").unwrap()], 2);
    }

    #[tokio::test]
    async fn a_scan_that_met_a_moved_file_is_run_again() {
        let mut calls = 0;
        let counted = retry_moved(|| {
            calls += 1;
            let first = calls == 1;
            async move {
                if first {
                    let gone = StorageError::NotFound {
                        path: "data/_audit/c1/sys_audit-2026-11-30-15-10_00000.zst".into(),
                    };
                    return Err(AuditError::Read {
                        what: "audit",
                        path: "data/_audit/c1/sys_audit-2026-11-30-15-10_00000.zst".into(),
                        source: FormatError::Storage(gone),
                    });
                }
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!((counted, calls), (7, 2));

        // Other errors are not retried.
        let mut calls = 0;
        let err = retry_moved(|| {
            calls += 1;
            async {
                Err::<u32, _>(AuditError::Frame {
                    path: "f".into(),
                    offset: 0,
                    reason: "corrupt frame".into(),
                })
            }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(err.to_string().contains("corrupt frame"));
    }
}
