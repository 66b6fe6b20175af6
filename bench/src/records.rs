//! What a root holds of topic [`TOPIC`]: the loss checks of the scenarios count
//! the records in the files the collectors and workers wrote (every file must be
//! closed: the collectors were stopped first).

use anyhow::Context;
use conduit_core::format::{decode_file, DATA_FILE_SUFFIX};
use conduit_core::layout::Layout;
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
    for dir in storage.list_or_empty(&format!("data/{TOPIC}")).await? {
        if !dir.is_dir {
            continue;
        }
        for file in storage.list_or_empty(&dir.path).await? {
            if file.is_dir || !file.name.ends_with(DATA_FILE_SUFFIX) {
                continue;
            }
            let buf = storage.read(&file.path).await?;
            let decoded = decode_file(&file.path, &buf, Encoding::Lines)
                .with_context(|| format!("cannot decode {root}/{}", file.path))?;
            counted.records += decoded.payloads.len() as u64;
            counted.files += 1;
            counted.file_bytes += file.len;
        }
    }
    for dir in storage.list_or_empty("data/_invalid").await? {
        if dir.is_dir {
            counted.invalid_files += storage.list_or_empty(&dir.path).await?.len() as u64;
        }
    }
    Ok(counted)
}

/// Records of topic `bench` stored under a root: every data file in `data/bench/`
/// and `streams_local/bench/` (files the worker moved included; hidden `_` files
/// skipped).
pub async fn stored_records(storage: &SharedStorage) -> anyhow::Result<u64> {
    let topic = Topic::new(TOPIC)?;
    let mut total = 0;
    let mut stack = vec![
        Layout::topic_dir(View::Collector, &topic),
        Layout::topic_dir(View::Local, &topic),
    ];
    while let Some(dir) = stack.pop() {
        for entry in storage.list_or_empty(&dir).await? {
            if entry.is_dir {
                stack.push(entry.path);
            } else if entry.name.ends_with(DATA_FILE_SUFFIX) && !entry.name.starts_with('_') {
                let buf = storage.read(&entry.path).await?;
                let decoded = decode_file(&entry.path, &buf, Encoding::Lines)
                    .with_context(|| format!("cannot decode {}", entry.path))?;
                total += decoded.payloads.len() as u64;
            }
        }
    }
    Ok(total)
}
