//! What a root holds of topic [`TOPIC`]: the loss checks of the scenarios count
//! the records in the files the collectors and workers wrote (every file must be
//! closed: the collectors were stopped first).

use anyhow::Context;
use conduit_core::format::decode_file;
use conduit_core::layout::Layout;
use conduit_core::tree::{self, MinuteWalker};
use conduit_core::{Encoding, SharedStorage, Topic, View};

use crate::TOPIC;

/// What the collector directories of one root hold (see [`collected`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Records in the data files.
    pub records: u64,
    /// Data files.
    pub files: u64,
    /// Their size on storage.
    pub file_bytes: u64,
    /// Files the collector set aside in `data/_invalid/`.
    pub invalid_files: u64,
}

/// Counts the records of the data files in `data/bench/<collector>/` of `root`
/// (what a collector writes before any worker moves files), and the files in
/// `data/_invalid/`.
pub async fn collected(root: &str) -> anyhow::Result<Collected> {
    let storage: SharedStorage = conduit_core::open_root(root)
        .await
        .with_context(|| format!("cannot open {root} to count records"))?;
    let mut counted = Collected::default();
    for file in tree::collector_files(storage.as_ref(), &Topic::new(TOPIC)?).await? {
        counted.records += records_in(&storage, &file.path)
            .await
            .with_context(|| format!("in {root}"))?;
        counted.files += 1;
        counted.file_bytes += file.len;
    }
    let invalid = Topic::new("_invalid")?;
    for dir in storage
        .list_or_empty(&Layout::topic_dir(View::Collector, &invalid))
        .await?
    {
        if dir.is_dir {
            counted.invalid_files += storage.list_or_empty(&dir.path).await?.len() as u64;
        }
    }
    Ok(counted)
}

/// Records of topic `bench` stored under a root: its collector files still in
/// `data/` and the topic's files in its minute directories of `streams_local/`
/// (files the worker moved; markers and hidden files are not data files).
pub async fn stored_records(storage: &SharedStorage) -> anyhow::Result<u64> {
    let topic = Topic::new(TOPIC)?;
    let mut total = 0;
    for file in tree::collector_files(storage.as_ref(), &topic).await? {
        total += records_in(storage, &file.path).await?;
    }
    let mut minutes = MinuteWalker::new(storage.as_ref(), View::Local, &topic);
    while let Some(minute) = minutes.next().await? {
        let dir = Layout::minute_dir(View::Local, &topic, minute);
        for entry in storage.list_or_empty(&dir).await? {
            if !entry.is_dir && Layout::local_file_in(&topic, &entry.name).is_some() {
                total += records_in(storage, &entry.path).await?;
            }
        }
    }
    Ok(total)
}

/// Records in the closed data file at `path`.
async fn records_in(storage: &SharedStorage, path: &str) -> anyhow::Result<u64> {
    let buf = storage.read(path).await?;
    let decoded = decode_file(path, &buf, Encoding::Lines)
        .with_context(|| format!("cannot decode {path}"))?;
    Ok(decoded.payloads.len() as u64)
}
