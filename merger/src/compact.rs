//! The compact job: one file per closed hour for topics with `compact = true`.
//!
//! # Format
//!
//! `streams_hourly/<topic>/yyyy/MM/dd/HH/<ftopic>-yyyy-MM-dd-HH.zst`
//! ([`Layout::hourly_file_name`]): the hour's data frames, bytes unchanged, and one
//! close trailer, sealed by a `_SUCCESS` manifest; specified in `docs/format.md`
//! §7.4. When the hour's minutes hold `.gz` files (the merged view of a topic with
//! `format = "gzip"`), the hourly file is `<ftopic>-yyyy-MM-dd-HH.gz`: those files
//! concatenated unchanged (gzip members concatenate), checked by decoding and
//! counting its records. A topic with `compact_format = "parquet"` gets
//! `<ftopic>-yyyy-MM-dd-HH.parquet` instead, written by [`crate::parquet`]
//! (§7.5) from the records of either codec; all are sealed the same way.
//!
//! # Rules
//!
//! - Source view: the merged view when this cluster is the topic's `merge_into` or
//!   one of its `mirrors`, the local view otherwise.
//! - Hours are compacted oldest first, starting after the newest sealed hour (or at
//!   the source view's oldest hour). An hour is **closed** when every minute
//!   directory of it that exists is sealed and its last minute is sealed (or absent
//!   while the view has a sealed minute after the hour). Absent minutes (the view
//!   started mid-hour, or retention removed them) are skipped; an hour with no
//!   minute at all gets no hourly directory and is passed over.
//! - Memory is bounded: files are read in chunks of a few MiB and frames are
//!   written as soon as they are complete (one frame at most is held whole).
//! - The file is written to a hidden temporary name, closed (synced), read back for
//!   its length, CRC-32C and trailer (whose record count must equal the manifests'
//!   sum), renamed without overwrite after a fence check, then the hour is sealed.
//!
//! # Failures
//!
//! Minute directories are immutable once sealed, so redoing an hour gives the same
//! bytes. A crash before the rename leaves a `_tmp.` file that the next run
//! overwrites and tidies; a crash after it leaves the final file, which the next
//! run checks (trailer record count) and seals.

use std::collections::{BTreeMap, BTreeSet};

use bytes::BytesMut;

use conduit_core::format::gzip::gz_name;
use conduit_core::format::{scan, Codec, Trailer};
use conduit_core::layout::Layout;
use conduit_core::manifest::{checksum_file, describe_file};
use conduit_core::tree::{self, newest_sealed_dir, oldest_dir};
use conduit_core::{
    CreateMode, Encoding, FileWriter, Manifest, ManifestFile, Minute, NodeName, RenameMode,
    Storage, Topic, View,
};

use conduit_core::http::prometheus_client::metrics::counter::Counter;
use conduit_core::http::prometheus_client::metrics::family::Family;
use conduit_core::CompactFormat;

use crate::copy::{dir_state, tidy_unsealed, DirState, COPY_CHUNK};
use crate::metrics::{Labels, SealProgress, SealView};
use crate::transcode::describe_gz;
use crate::{Fence, JobEnv, PassReport, TopicJob, WorkerError};

/// Hours compacted per topic in one pass at most.
const MAX_HOURS_PER_PASS: u64 = 24;

/// The compact job of one cluster; see the [module docs](self).
#[derive(Debug)]
pub struct CompactJob {
    env: JobEnv,
    /// Per topic: the first minute of the oldest hour not yet compacted.
    frontiers: BTreeMap<Topic, Minute>,
    /// The newest sealed minute per topic (for the lag metric).
    progress: SealProgress,
    /// Rows set aside from Parquet files, by topic
    /// (`conduit_worker_invalid_rows_total`).
    invalid_rows: Family<Labels, Counter>,
}

/// The data of one hour: its sealed minute manifests, oldest first.
type Hour = Vec<Manifest>;

impl CompactJob {
    /// A compact job for `env.this`.
    pub fn new(env: JobEnv) -> Self {
        CompactJob {
            env,
            frontiers: BTreeMap::new(),
            progress: SealProgress::default(),
            invalid_rows: Family::default(),
        }
    }

    /// Counts rows set aside from Parquet files in `family` (the worker's
    /// `conduit_worker_invalid_rows_total`) instead of a private one.
    pub fn with_invalid_rows(mut self, family: Family<Labels, Counter>) -> Self {
        self.invalid_rows = family;
        self
    }

    /// The newest sealed minute per topic, updated as minutes are sealed (for
    /// the lag metric).
    pub fn progress(&self) -> SealProgress {
        self.progress.clone()
    }

    /// The hour starting at `hour` if it is closed: `Ok(Some(manifests))` (possibly
    /// empty when no minute of it exists), `Ok(None)` if it must wait.
    async fn closed_hour(
        &self,
        view: View,
        topic: &Topic,
        hour: Minute,
        newest_sealed: Option<Minute>,
    ) -> Result<Option<Hour>, WorkerError> {
        let storage = self.env.this.storage.as_ref();
        let last = hour
            .add_minutes(59)
            .map_err(|e| WorkerError::Other(e.to_string()))?;
        if last.end() > self.env.clock.now() {
            return Ok(None);
        }
        let mut manifests = Vec::new();
        let mut minute = hour;
        while minute <= last {
            match dir_state(storage, view, topic, minute).await? {
                DirState::Sealed(manifest) => manifests.push(manifest),
                DirState::Unsealed => return Ok(None),
                DirState::Absent if minute == last && newest_sealed.is_none_or(|n| n <= last) => {
                    return Ok(None)
                }
                DirState::Absent => {}
            }
            minute = minute
                .next()
                .map_err(|e| WorkerError::Other(e.to_string()))?;
        }
        Ok(Some(manifests))
    }

    /// Writes and seals the hourly file of `hour` from its minute manifests, in
    /// the topic's `compact_format`.
    async fn compact_hour(
        &self,
        topic: &Topic,
        view: View,
        hour: Minute,
        minutes: &Hour,
    ) -> Result<(), WorkerError> {
        let storage = self.env.this.storage.as_ref();
        let fence = self.env.fence.as_ref();
        let dir = Layout::hour_dir(topic, hour);
        let settings = self.env.config.topic(topic);
        let (name, records, bytes, crc32c) = match settings.compact_format {
            CompactFormat::Lines => match hour_codec(topic, hour, minutes)? {
                Codec::Zstd => lines_hour(storage, fence, topic, view, hour, minutes).await?,
                Codec::Gzip => gz_hour(storage, fence, topic, view, hour, minutes).await?,
            },
            CompactFormat::Parquet => {
                let (name, rows) = crate::parquet::write_hour(
                    storage,
                    fence,
                    &settings,
                    view,
                    hour,
                    minutes,
                    &self.invalid_rows,
                )
                .await?;
                let (bytes, crc32c) = checksum_file(storage, &format!("{dir}/{name}")).await?;
                (name, rows, bytes, crc32c)
            }
        };
        tidy_unsealed(storage, &dir, fence, |n| n == name).await?;
        let clusters: BTreeSet<NodeName> = minutes
            .iter()
            .flat_map(|m| m.clusters.iter().cloned())
            .collect();
        let missing: BTreeSet<NodeName> = minutes
            .iter()
            .flat_map(|m| m.missing_clusters.iter().cloned())
            .filter(|c| !clusters.contains(c))
            .collect();
        let manifest = Manifest::new(
            View::Hourly,
            topic.clone(),
            hour,
            clusters.into_iter().collect(),
            missing.into_iter().collect(),
            self.env.clock.now(),
            self.env.worker_id.clone(),
            vec![ManifestFile {
                name,
                bytes,
                records,
                crc32c,
                cluster: self.env.this.name.clone(),
                collector: None,
                minute: hour,
                late: false,
            }],
        );
        fence.check().await?;
        manifest.seal(storage).await?;
        tracing::info!(%topic, %hour, records, bytes, minutes = minutes.len(), format = ?settings.compact_format, "sealed hourly file");
        Ok(())
    }
}

/// Writes the lines file of `hour` (its data frames, bytes unchanged, and one
/// trailer) unless it exists, and checks it against the manifests' record
/// count. Returns its name, records, length and CRC-32C.
async fn lines_hour(
    storage: &dyn Storage,
    fence: &dyn Fence,
    topic: &Topic,
    view: View,
    hour: Minute,
    minutes: &Hour,
) -> Result<(String, u64, u64, u32), WorkerError> {
    let dir = Layout::hour_dir(topic, hour);
    let name = Layout::hourly_file_name(topic, hour);
    let path = format!("{dir}/{name}");
    let records: u64 = minutes.iter().map(|m| m.records).sum();
    if !storage.exists(&path).await? {
        let tmp = Layout::tmp_path(&path);
        let mut sink = LinesSink {
            writer: storage.create(&tmp, CreateMode::Overwrite).await?,
            out: BytesMut::new(),
        };
        let mut totals: Option<Trailer> = None;
        for manifest in minutes {
            let minute_dir = Layout::minute_dir(view, topic, manifest.minute);
            for file in &manifest.files {
                let source = format!("{minute_dir}/{}", file.name);
                let trailer = read_data_frames(storage, &source, file.bytes, &mut sink).await?;
                totals = Some(match totals {
                    None => trailer,
                    Some(t) if t.encoding == trailer.encoding => Trailer {
                        encoding: t.encoding,
                        records: t.records + trailer.records,
                        record_bytes: t.record_bytes + trailer.record_bytes,
                    },
                    Some(t) => {
                        return Err(WorkerError::Other(format!(
                            "{source} is encoded {:?} but earlier files of hour {hour} of {topic} are {:?}; \
                             an hour cannot mix encodings",
                            trailer.encoding, t.encoding
                        )))
                    }
                });
            }
        }
        let totals = totals.unwrap_or(Trailer {
            encoding: Encoding::Lines,
            records: 0,
            record_bytes: 0,
        });
        let LinesSink { mut writer, out } = sink;
        if !out.is_empty() {
            writer.write(out.freeze()).await?;
        }
        writer.write(totals.encode()).await?;
        writer.close().await?;
        let (_, _, trailer) = describe_file(storage, &tmp).await?;
        if trailer.records != records {
            return Err(WorkerError::Other(format!(
                "{path}: the compacted file holds {} records, the minute manifests {records}",
                trailer.records
            )));
        }
        fence.check().await?;
        match storage.rename(&tmp, &path, RenameMode::NoOverwrite).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {
                storage.delete(&tmp, false).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (bytes, crc32c, trailer) = describe_file(storage, &path).await?;
    if trailer.records != records {
        return Err(WorkerError::Other(format!(
            "{path} holds {} records, the minute manifests of its hour {records}",
            trailer.records
        )));
    }
    Ok((name, records, bytes, crc32c))
}

/// Writes the `.gz` hourly file of `hour` unless it exists: the hour's `.gz`
/// minute files concatenated, bytes unchanged (gzip members concatenate), through
/// a hidden temporary name checked for the manifests' record count, renamed
/// without overwrite. Returns its name, records, length and CRC-32C.
async fn gz_hour(
    storage: &dyn Storage,
    fence: &dyn Fence,
    topic: &Topic,
    view: View,
    hour: Minute,
    minutes: &Hour,
) -> Result<(String, u64, u64, u32), WorkerError> {
    let dir = Layout::hour_dir(topic, hour);
    let name = gz_name(&Layout::hourly_file_name(topic, hour));
    let path = format!("{dir}/{name}");
    let records: u64 = minutes.iter().map(|m| m.records).sum();
    if !storage.exists(&path).await? {
        let tmp = Layout::tmp_path(&path);
        let mut writer = storage.create(&tmp, CreateMode::Overwrite).await?;
        for manifest in minutes {
            let minute_dir = Layout::minute_dir(view, topic, manifest.minute);
            for file in &manifest.files {
                let source = format!("{minute_dir}/{}", file.name);
                let mut at = 0;
                while at < file.bytes {
                    let end = (at + COPY_CHUNK).min(file.bytes);
                    let chunk = storage.read_range(&source, at..end).await?;
                    if chunk.is_empty() {
                        return Err(WorkerError::Other(format!(
                            "{source} ends at byte {at}, its manifest says {} bytes",
                            file.bytes
                        )));
                    }
                    at += chunk.len() as u64;
                    writer.write(chunk).await?;
                }
            }
        }
        writer.close().await?;
        match describe_gz(storage, &tmp).await? {
            Ok((_, _, found)) if found == records => {}
            Ok((_, _, found)) => {
                return Err(WorkerError::Other(format!(
                "{path}: the compacted file holds {found} records, the minute manifests {records}"
            )))
            }
            Err(reason) => return Err(WorkerError::Other(format!("{tmp}: {reason}"))),
        }
        fence.check().await?;
        match storage.rename(&tmp, &path, RenameMode::NoOverwrite).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {
                storage.delete(&tmp, false).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (bytes, crc32c, found) = describe_gz(storage, &path)
        .await?
        .map_err(|reason| WorkerError::Other(format!("{path}: {reason}")))?;
    if found != records {
        return Err(WorkerError::Other(format!(
            "{path} holds {found} records, the minute manifests of its hour {records}"
        )));
    }
    Ok((name, records, bytes, crc32c))
}

/// The codec of an hour's files (by name): gzip when its minutes hold `.gz`
/// files (the merged view of a `format = "gzip"` topic), else zstd. An hour
/// cannot mix both (the topic's format changed within it).
fn hour_codec(topic: &Topic, hour: Minute, minutes: &Hour) -> Result<Codec, WorkerError> {
    let codecs: BTreeSet<Codec> = minutes
        .iter()
        .flat_map(|m| m.files.iter().map(|f| Codec::of_file(&f.name)))
        .collect();
    match codecs.len() {
        0 => Ok(Codec::Zstd),
        1 => Ok(*codecs.first().expect("one")),
        _ => Err(WorkerError::Other(format!(
            "hour {hour} of {topic} holds both .zst and .gz files (its format changed within the hour); \
             an hour cannot mix codecs"
        ))),
    }
}

/// Where the data frames of an hour's source files go, one at a time, as
/// [`read_data_frames`] finds them: the lines file ([`LinesSink`]) or the
/// Parquet encoder ([`crate::parquet`]).
#[async_trait::async_trait]
pub(crate) trait HourSink: Send {
    /// Takes one data frame, compressed as stored.
    async fn data_frame(&mut self, frame: &[u8]) -> Result<(), WorkerError>;
}

/// The lines output: data frames appended unchanged, written in chunks.
struct LinesSink {
    writer: Box<dyn FileWriter>,
    /// Frames not yet written.
    out: BytesMut,
}

#[async_trait::async_trait]
impl HourSink for LinesSink {
    async fn data_frame(&mut self, frame: &[u8]) -> Result<(), WorkerError> {
        self.out.extend_from_slice(frame);
        if self.out.len() as u64 >= COPY_CHUNK {
            self.writer.write(self.out.split().freeze()).await?;
        }
        Ok(())
    }
}

/// Hands the data frames of the closed file `path` (`len` bytes) to `sink`,
/// reading in chunks (one frame at most is held whole); returns the file's
/// trailer.
pub(crate) async fn read_data_frames(
    storage: &dyn Storage,
    path: &str,
    len: u64,
    sink: &mut dyn HourSink,
) -> Result<Trailer, WorkerError> {
    let mut pending = BytesMut::new(); // bytes read but not yet framed
    let mut base = 0u64; // file offset of pending[0]
    let mut at = 0u64;
    let mut trailer = None;
    while at < len {
        let end = (at + COPY_CHUNK).min(len);
        let chunk = storage.read_range(path, at..end).await?;
        if chunk.is_empty() {
            break;
        }
        at += chunk.len() as u64;
        pending.extend_from_slice(&chunk);
        let found = scan(&pending, base);
        for frame in &found.frames {
            let from = (frame.offset - base) as usize;
            let bytes = &pending[from..from + frame.len as usize];
            if frame.skippable {
                trailer = Trailer::decode(bytes);
            } else {
                trailer = None; // a trailer counts only as the last frame
                sink.data_frame(bytes).await?;
            }
        }
        let consumed = (found.valid_len - base) as usize;
        let _ = pending.split_to(consumed);
        base = found.valid_len;
    }
    if at != len || !pending.is_empty() {
        return Err(WorkerError::Other(format!(
            "{path}: {} bytes do not form complete frames (read {at} of {len} bytes)",
            pending.len()
        )));
    }
    trailer.ok_or_else(|| WorkerError::Other(format!("{path} does not end with a close trailer")))
}

#[async_trait::async_trait]
impl TopicJob for CompactJob {
    /// The view the topic's hours are compacted from.
    type Plan = View;

    const NAME: &'static str = "compact";

    /// Topics with `compact = true` found on this cluster, each with its source view.
    async fn topics(&mut self) -> Result<Vec<(Topic, Self::Plan)>, WorkerError> {
        let this = self.env.this.name.as_str();
        let config = &self.env.config;
        let storage = self.env.this.storage.as_ref();
        let mut names = self.env.configured_topics();
        if config.topic_defaults.compact {
            names.extend(tree::topics(storage, View::Local).await?);
            names.extend(tree::topics(storage, View::Merged).await?);
        }
        let mut served = BTreeMap::new();
        for topic in names {
            let settings = config.topic(&topic);
            if !settings.compact {
                continue;
            }
            if settings.compact_format == CompactFormat::Parquet {
                // Present at 0 from the first pass, so a scrape tells "none" from
                // "not counted".
                let _counter = self
                    .invalid_rows
                    .get_or_create(&vec![("topic", topic.to_string())]);
            }
            let merged_here = settings.merge_into.as_deref() == Some(this)
                || (settings.merge_into.is_some() && settings.mirrors.iter().any(|m| m == this));
            served.insert(
                topic,
                if merged_here {
                    View::Merged
                } else {
                    View::Local
                },
            );
        }
        Ok(served.into_iter().collect())
    }

    /// Compacts as many closed hours of `topic` as are ready, oldest first.
    async fn pass_topic(
        &mut self,
        topic: &Topic,
        view: Self::Plan,
    ) -> Result<PassReport, WorkerError> {
        let storage = self.env.this.storage.clone();
        let mut report = PassReport::default();
        let mut frontier = match self.frontiers.get(topic) {
            Some(f) => *f,
            None => match newest_sealed_dir(storage.as_ref(), View::Hourly, topic).await? {
                Some(newest) => newest
                    .add_minutes(60)
                    .map_err(|e| WorkerError::Other(e.to_string()))?,
                None => match oldest_dir(storage.as_ref(), view, topic).await? {
                    Some(oldest) => oldest.hour_start(),
                    None => return Ok(report),
                },
            },
        };
        let newest_sealed = newest_sealed_dir(storage.as_ref(), view, topic).await?;
        let result = async {
            for _ in 0..MAX_HOURS_PER_PASS {
                let Some(hour) = self
                    .closed_hour(view, topic, frontier, newest_sealed)
                    .await?
                else {
                    break;
                };
                if !hour.is_empty() {
                    self.compact_hour(topic, view, frontier, &hour).await?;
                    report.sealed += 1;
                    let last = frontier
                        .add_minutes(59)
                        .map_err(|e| WorkerError::Other(e.to_string()))?;
                    self.progress.record(SealView::Hourly, topic, last);
                    report.files += 1;
                }
                frontier = frontier
                    .add_minutes(60)
                    .map_err(|e| WorkerError::Other(e.to_string()))?;
            }
            Ok::<(), WorkerError>(())
        }
        .await;
        report.pending = ((self.env.clock.minute().epoch_minutes() - frontier.epoch_minutes()) / 60)
            .max(0) as u64;
        match result {
            Ok(()) => {
                self.frontiers.insert(topic.clone(), frontier);
                Ok(report)
            }
            Err(e) => {
                self.frontiers.remove(topic);
                Err(e)
            }
        }
    }
}
