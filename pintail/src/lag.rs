//! How far a group's checkpoint is behind the data: events, bytes and seconds per
//! partition (for `conduit lag`).
//!
//! For a position it counts what a reader would still deliver: the rest of the
//! current file (decoding its remaining frames), then every later file of the
//! partition (closed files by their trailer or manifest counts, open ones by
//! decoding). Seconds are the age of the oldest undelivered minute on the given
//! clock time (0 when nothing is left). Only sealed minutes count for sealed views;
//! at most [`MAX_DIRS`] minute directories are examined.

use chrono::{DateTime, Utc};
use conduit_core::format::{split_records, Codec};
use conduit_core::layout::Layout;
use conduit_core::{Manifest, Minute, MinuteWalker, SharedStorage, Topic, View};
use serde::Serialize;

use crate::error::Result;
use crate::position::{CheckpointStore, Position};
use crate::reader::{data_file_key, partition_of};
use crate::ReadView;

/// Most minute directories examined per partition (one day).
pub const MAX_DIRS: usize = 1440;

/// The lag of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Lag {
    /// Records not yet delivered.
    pub events: u64,
    /// Compressed bytes not yet read.
    pub bytes: u64,
    /// Age in seconds of the oldest undelivered minute's start (0 when caught up).
    pub seconds: u64,
}

/// Largest answer asked of a collector for the rest of an open file (its
/// in-memory window is 8 MiB by default; a position older than that window is
/// counted from storage).
const OPEN_FILE_MAX: u64 = 64 << 20;

/// A file in a collector's directory (`data/`), possibly still open: its
/// collector is asked for the synced bytes first (storage may not show them
/// all: hdfs-native reads only an open file's completed blocks).
struct MaybeOpen<'a> {
    cluster: &'a conduit_core::NodeName,
    collector: &'a conduit_core::NodeName,
    topic: &'a Topic,
    name: &'a str,
}

/// Records and compressed bytes of `path` from frame `offset` on, minus the
/// `skip` records of that frame already delivered. With `sub` (the collector
/// file name and sub-partition `k` of `n`), only the records of that
/// sub-partition count ([`crate::partition::sub_partition_of`]); the bytes are
/// all read either way.
async fn rest_of_file(
    storage: &SharedStorage,
    path: &str,
    offset: u64,
    skip: u32,
    sub: Option<(&str, u32, u32)>,
    open: Option<MaybeOpen<'_>>,
) -> Result<(u64, u64)> {
    let from_collector = match open {
        Some(o) => {
            crate::collector_http::synced_from(
                &**storage,
                o.cluster,
                o.collector,
                o.topic,
                o.name,
                offset,
                OPEN_FILE_MAX,
            )
            .await
        }
        None => None,
    };
    let bytes = match from_collector {
        Some(bytes) => bytes,
        None => {
            let len = match storage.len(path).await {
                Ok(len) => len,
                Err(e) if e.is_not_found() => return Ok((0, 0)),
                Err(e) => return Err(e.into()),
            };
            if len <= offset {
                return Ok((0, 0));
            }
            storage.read_range(path, offset..len).await?
        }
    };
    if bytes.is_empty() {
        return Ok((0, 0));
    }
    let codec = Codec::of_file(path);
    let s = codec.scan(&bytes, offset);
    let mut events = 0u64;
    let mut read_bytes = s.valid_len - offset;
    for (i, f) in s.frames.iter().filter(|f| !f.skippable).enumerate() {
        let at = (f.offset - offset) as usize;
        if let Ok(content) = codec.decode_frame(&bytes[at..at + f.len as usize]) {
            let n = split_records(&content).count() as u32;
            let first = if i == 0 && f.offset == offset {
                // The frame of the position: `skip` of its records are delivered;
                // when all are, its bytes are read too.
                if n <= skip {
                    read_bytes -= f.len;
                }
                skip.min(n)
            } else {
                0
            };
            events += match sub {
                Some((name, k, parts)) => {
                    let start = crate::partition::frame_start(name, f.offset);
                    (first..n)
                        .filter(|r| crate::partition::sub_partition_from(start, *r, parts) == k)
                        .count() as u64
                }
                None => u64::from(n - first),
            };
        }
    }
    Ok((events, read_bytes))
}

/// The lag of the partition whose checkpoint is `pos`.
pub async fn partition_lag(
    storage: &SharedStorage,
    view: ReadView,
    topic: &Topic,
    pos: &Position,
    sealed_partitions: u32,
    now: DateTime<Utc>,
) -> Result<Lag> {
    let mut lag = Lag::default();
    let mut oldest: Option<Minute> = None;
    let mut add = |lag: &mut Lag, events: u64, bytes: u64, minute: Minute| {
        if events > 0 {
            oldest = Some(oldest.map_or(minute, |o| o.min(minute)));
        }
        lag.events += events;
        lag.bytes += bytes;
    };
    let key = pos.file_key();
    match view {
        ReadView::Local => {
            let data_path = format!(
                "{}/{}",
                Layout::collector_dir(topic, pos.collector()),
                pos.file()
            );
            let dir_path = format!(
                "{}/{}",
                Layout::minute_dir(View::Local, topic, pos.minute()),
                pos.local_name()
            );
            let in_data = storage.exists(&data_path).await?;
            let current = if in_data { data_path } else { dir_path };
            let sub = crate::partition::LocalPartition::parse(pos.partition())
                .filter(|p| p.n > 1)
                .map(|p| (p.k, p.n));
            let (e, b) = rest_of_file(
                storage,
                &current,
                pos.offset(),
                pos.record(),
                sub.map(|(k, n)| (pos.file(), k, n)),
                in_data.then(|| MaybeOpen {
                    cluster: pos.cluster(),
                    collector: pos.collector(),
                    topic,
                    name: pos.file(),
                }),
            )
            .await?;
            add(&mut lag, e, b, pos.minute());
            let mut later: Vec<(String, Minute, String)> = Vec::new();
            for entry in storage
                .list_or_empty(&Layout::collector_dir(topic, pos.collector()))
                .await?
            {
                if let Some(k) = data_file_key(topic, &entry.name) {
                    if Some(k) > key {
                        later.push((entry.path, k.0, entry.name));
                    }
                }
            }
            let prefix = format!("{}-{}-", pos.cluster(), pos.collector());
            let dirs = MinuteWalker::new(&**storage, View::Local, topic).from(pos.minute());
            for m in dirs.take(MAX_DIRS).await? {
                let dir = Layout::minute_dir(View::Local, topic, m);
                for entry in storage.list_or_empty(&dir).await? {
                    let Some(name) = entry.name.strip_prefix(&prefix) else {
                        continue;
                    };
                    if let Some(k) = data_file_key(topic, name) {
                        if Some(k) > key {
                            later.push((entry.path.clone(), k.0, name.to_owned()));
                        }
                    }
                }
            }
            for (path, minute, name) in later {
                let of = sub.map(|(k, n)| (name.as_str(), k, n));
                // A later file still in `data/` may be open too.
                let open = path
                    .starts_with(&Layout::collector_dir(topic, pos.collector()))
                    .then(|| MaybeOpen {
                        cluster: pos.cluster(),
                        collector: pos.collector(),
                        topic,
                        name: &name,
                    });
                let (e, b) = rest_of_file(storage, &path, 0, 0, of, open).await?;
                add(&mut lag, e, b, minute);
            }
        }
        ReadView::Merged | ReadView::Mirror => {
            let k = pos
                .partition()
                .strip_prefix('p')
                .and_then(|r| r.split_once("of"))
                .and_then(|(k, _)| k.parse::<u32>().ok())
                .unwrap_or(0);
            let name = pos.local_name();
            let dirs = MinuteWalker::new(&**storage, View::Merged, topic).from(pos.minute());
            for m in dirs.take(MAX_DIRS).await? {
                let dir = Layout::minute_dir(View::Merged, topic, m);
                let Some(manifest) = Manifest::read(&**storage, &dir).await? else {
                    break;
                };
                for f in manifest
                    .files
                    .iter()
                    .filter(|f| partition_of(&f.name, sealed_partitions) == k)
                {
                    if m == pos.minute() && f.name < name {
                        continue;
                    }
                    if m == pos.minute() && f.name == name {
                        let (e, b) = rest_of_file(
                            storage,
                            &format!("{dir}/{}", f.name),
                            pos.offset(),
                            pos.record(),
                            None,
                            None,
                        )
                        .await?;
                        add(&mut lag, e, b, m);
                    } else {
                        add(&mut lag, f.records, f.bytes, m);
                    }
                }
            }
        }
    }
    if let Some(m) = oldest {
        lag.seconds = (now - m.start()).num_seconds().max(0) as u64;
    }
    Ok(lag)
}

/// The lag of one consumer checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointLag {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: String,
    /// How far its checkpoint is behind.
    pub lag: Lag,
}

/// The view and sealed partition count a partition's name implies: `p<k>of<n>`
/// is partition `k` of `n` of a sealed view (merged, or a mirror: same paths);
/// any other name (`<cluster>-<collector>`) is a partition of the local view.
pub fn view_of_partition(name: &str) -> (ReadView, u32) {
    let sealed = name
        .strip_prefix('p')
        .and_then(|rest| rest.split_once("of"))
        .and_then(|(k, n)| Some((k.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
        .filter(|(k, n)| k < n);
    match sealed {
        Some((_, n)) => (ReadView::Merged, n),
        None => (ReadView::Local, 1),
    }
}

/// The lag of every checkpoint in `store` (at most `max`, in name order), read
/// against the data of `data`, plus what could not be measured: checkpoints
/// that do not parse and partitions whose lag fails, each as (what, error).
pub async fn every_checkpoint(
    store: &CheckpointStore,
    data: &SharedStorage,
    max: usize,
    now: DateTime<Utc>,
) -> Result<(Vec<CheckpointLag>, Vec<(String, String)>)> {
    let mut lags = Vec::new();
    let mut failed = Vec::new();
    for checkpoint in store.all().await?.into_iter().take(max) {
        let checkpoint = match checkpoint {
            Ok(c) => c,
            Err(e) => {
                failed.push((CheckpointStore::dir(), e.to_string()));
                continue;
            }
        };
        let what = format!(
            "{}.{}.{}",
            checkpoint.group, checkpoint.topic, checkpoint.partition
        );
        let topic = match Topic::new(checkpoint.topic.clone()) {
            Ok(t) => t,
            Err(e) => {
                failed.push((what, e.to_string()));
                continue;
            }
        };
        let (view, partitions) = view_of_partition(&checkpoint.partition);
        let (group, partition) = (checkpoint.group.clone(), checkpoint.partition.clone());
        let pos = Position::from(checkpoint.position);
        match partition_lag(data, view, &topic, &pos, partitions, now).await {
            Ok(lag) => lags.push(CheckpointLag {
                group,
                topic: topic.as_str().to_owned(),
                partition,
                lag,
            }),
            Err(e) => failed.push((what, e.to_string())),
        }
    }
    Ok((lags, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_say_their_view() {
        assert_eq!(view_of_partition("p3of16"), (ReadView::Merged, 16));
        assert_eq!(view_of_partition("p0of1"), (ReadView::Merged, 1));
        assert_eq!(view_of_partition("dc1-c1"), (ReadView::Local, 1));
        assert_eq!(view_of_partition("p16of16"), (ReadView::Local, 1));
        assert_eq!(view_of_partition("pxofy"), (ReadView::Local, 1));
    }
}
