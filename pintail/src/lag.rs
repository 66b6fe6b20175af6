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
use conduit_core::format::{decode_frame, scan, split_records};
use conduit_core::layout::Layout;
use conduit_core::{Manifest, Minute, MinuteWalker, SharedStorage, Topic, View};
use serde::Serialize;

use crate::error::Result;
use crate::position::Position;
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

/// Records and compressed bytes of `path` from frame `offset` on, minus the
/// `skip` records of that frame already delivered.
async fn rest_of_file(
    storage: &SharedStorage,
    path: &str,
    offset: u64,
    skip: u32,
) -> Result<(u64, u64)> {
    let len = match storage.len(path).await {
        Ok(len) => len,
        Err(e) if e.is_not_found() => return Ok((0, 0)),
        Err(e) => return Err(e.into()),
    };
    if len <= offset {
        return Ok((0, 0));
    }
    let bytes = storage.read_range(path, offset..len).await?;
    let s = scan(&bytes, offset);
    let mut events = 0u64;
    let mut read_bytes = s.valid_len - offset;
    for (i, f) in s.frames.iter().filter(|f| !f.skippable).enumerate() {
        let at = (f.offset - offset) as usize;
        if let Ok(content) = decode_frame(&bytes[at..at + f.len as usize]) {
            let n = split_records(&content).count() as u64;
            if i == 0 && f.offset == offset {
                // The frame of the position: `skip` of its records are delivered;
                // when all are, its bytes are read too.
                let left = n.saturating_sub(u64::from(skip));
                if left == 0 {
                    read_bytes -= f.len;
                }
                events += left;
            } else {
                events += n;
            }
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
            let current = if storage.exists(&data_path).await? {
                data_path
            } else {
                dir_path
            };
            let (e, b) = rest_of_file(storage, &current, pos.offset(), pos.record()).await?;
            add(&mut lag, e, b, pos.minute());
            let mut later: Vec<(String, Minute)> = Vec::new();
            for entry in storage
                .list_or_empty(&Layout::collector_dir(topic, pos.collector()))
                .await?
            {
                if let Some(k) = data_file_key(topic, &entry.name) {
                    if Some(k) > key {
                        later.push((entry.path, k.0));
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
                            later.push((entry.path, k.0));
                        }
                    }
                }
            }
            for (path, minute) in later {
                let (e, b) = rest_of_file(storage, &path, 0, 0).await?;
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
