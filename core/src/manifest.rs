//! The `_SUCCESS` manifest that seals a minute (or hour) directory.
//!
//! A worker seals a directory of the local, merged or hourly view by writing
//! `<dir>/_SUCCESS` **last**: every data file it lists is already complete and
//! durable, and the directory never changes afterwards until retention deletes it.
//! The marker is written to a hidden temporary name and renamed into place without
//! overwrite, so a reader sees either no marker or the whole manifest, and a second
//! writer cannot replace it. Hadoop input formats skip `_`-files, and Oozie or
//! Airflow `_SUCCESS` sensors work unchanged.
//!
//! The format is specified in `docs/format.md` §7.1; [`Manifest`] is its one type.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::format::{
    crc32c_append, trailer_in_tail, CloseInfo, Trailer, TRAILER_LEN, TRAILER_V2_LEN,
};
use crate::layout::{Layout, Minute, NodeName, Topic, View};
use crate::records::{decode, RecordError, Version, Versioned};
use crate::storage::{temp_sibling, CreateMode, RenameMode, Storage, StorageError};

/// The manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Bytes read per storage call when checksumming a file.
const CHECKSUM_CHUNK: u64 = 8 << 20;

/// Errors reading, describing or writing manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The storage call failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The marker exists but is not a manifest this build understands.
    #[error("malformed manifest {path}: {reason}")]
    Malformed {
        /// Path of the marker.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The marker was written by a newer (or unknown) format version.
    #[error(
        "manifest {path} has unsupported version {version} (this build reads {MANIFEST_VERSION})"
    )]
    UnsupportedVersion {
        /// Path of the marker.
        path: String,
        /// The version found.
        version: u32,
    },
    /// A data file has no close trailer, so it is not complete.
    #[error(
        "{path} is not a closed conduit data file (no trailer in its last {TRAILER_V2_LEN} bytes)"
    )]
    NotClosed {
        /// Path of the file.
        path: String,
    },
    /// The directory is already sealed (another writer won).
    #[error("{path} already exists: the directory is already sealed")]
    AlreadySealed {
        /// Path of the marker.
        path: String,
    },
}

/// One data file listed in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the directory.
    pub name: String,
    /// File length in bytes.
    pub bytes: u64,
    /// Records in the file, from its close trailer.
    pub records: u64,
    /// CRC-32C of the whole file.
    #[serde(serialize_with = "ser_crc", deserialize_with = "de_crc")]
    pub crc32c: u32,
    /// The cluster whose collector wrote the data.
    pub cluster: NodeName,
    /// The collector that wrote it (absent for hourly files, which mix collectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<NodeName>,
    /// The minute the data belongs to (the hour's first minute for hourly files).
    pub minute: Minute,
    /// True when `minute` is earlier than the directory's minute.
    #[serde(default)]
    pub late: bool,
}

/// A file the worker could not seal and set aside in `quarantine/` instead of
/// listing it (`docs/format.md` §7.1, §7.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedFile {
    /// Its name in the directory; it is now at
    /// [`Layout::quarantine_path`] of `<dir>/<name>`.
    pub name: String,
    /// Why, as a stable code (`no_trailer`, `not_a_data_file`, ...).
    pub reason: String,
    /// Why, for people: what was found.
    pub detail: String,
}

/// The content of a `_SUCCESS` marker (`docs/format.md` §7.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: Version<MANIFEST_VERSION>,
    /// The view the directory belongs to.
    #[serde(serialize_with = "ser_view", deserialize_with = "de_view")]
    pub view: View,
    /// The topic.
    pub topic: Topic,
    /// The directory's minute (hour start for the hourly view).
    pub minute: Minute,
    /// Source clusters whose data the directory holds.
    pub clusters: Vec<NodeName>,
    /// Source clusters that were not waited for.
    #[serde(default)]
    pub missing_clusters: Vec<NodeName>,
    /// When the directory was sealed (worker clock).
    pub sealed_at: DateTime<Utc>,
    /// Who sealed it (`<cluster>/<worker id>`).
    pub sealed_by: String,
    /// Sum of the files' records.
    pub records: u64,
    /// Sum of the files' bytes.
    pub bytes: u64,
    /// The data files, sorted by name.
    pub files: Vec<ManifestFile>,
    /// Records the local seal dropped from `files` as second copies of publisher
    /// batches already in the view (absent: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicates_dropped: u64,
    /// Files of the directory set aside because they could not be sealed, sorted
    /// by name (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<QuarantinedFile>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Versioned for Manifest {
    const KIND: &'static str = "manifest";
    const VERSION: u32 = MANIFEST_VERSION;
}

impl Manifest {
    /// A manifest for `files` (sorted here; `records` and `bytes` summed here).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        view: View,
        topic: Topic,
        minute: Minute,
        clusters: Vec<NodeName>,
        missing_clusters: Vec<NodeName>,
        sealed_at: DateTime<Utc>,
        sealed_by: String,
        mut files: Vec<ManifestFile>,
    ) -> Manifest {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Manifest {
            version: Version,
            view,
            topic,
            minute,
            clusters,
            missing_clusters,
            sealed_at,
            sealed_by,
            records: files.iter().map(|f| f.records).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            duplicates_dropped: 0,
            quarantined: Vec::new(),
        }
    }

    /// The same manifest, recording what the local seal dropped and set aside.
    pub fn with_seal_notes(
        mut self,
        duplicates_dropped: u64,
        mut quarantined: Vec<QuarantinedFile>,
    ) -> Manifest {
        quarantined.sort_by(|a, b| a.name.cmp(&b.name));
        self.duplicates_dropped = duplicates_dropped;
        self.quarantined = quarantined;
        self
    }

    /// The directory a manifest of `view`, `topic` and `minute` seals.
    pub fn dir(view: View, topic: &Topic, minute: Minute) -> String {
        match view {
            View::Hourly => Layout::hour_dir(topic, minute),
            _ => Layout::minute_dir(view, topic, minute),
        }
    }

    /// `<dir>/_SUCCESS` of this manifest's directory.
    pub fn path(&self) -> String {
        Layout::success_marker(&Self::dir(self.view, &self.topic, self.minute))
    }

    /// Parses a marker's bytes; `path` is only used in errors.
    pub fn parse(path: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        decode(path, bytes).map_err(|e| match e {
            RecordError::Malformed { path, reason, .. } => {
                ManifestError::Malformed { path, reason }
            }
            RecordError::UnsupportedVersion { path, version, .. } => {
                ManifestError::UnsupportedVersion { path, version }
            }
        })
    }

    /// Reads the manifest sealing `dir`, or `None` if the directory is not sealed.
    pub async fn read(storage: &dyn Storage, dir: &str) -> Result<Option<Manifest>, ManifestError> {
        let path = Layout::success_marker(dir);
        match storage.read(&path).await {
            Ok(bytes) => Self::parse(&path, &bytes).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `dir` is sealed (has a `_SUCCESS` marker).
    pub async fn is_sealed(storage: &dyn Storage, dir: &str) -> Result<bool, StorageError> {
        storage.exists(&Layout::success_marker(dir)).await
    }

    /// The marker's JSON bytes.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing plain structs of strings and numbers cannot fail.
        Bytes::from(serde_json::to_vec(self).expect("manifest serializes"))
    }

    /// Seals the directory: writes the marker to a hidden temporary name, syncs it,
    /// and renames it into place without overwriting. Fails with
    /// [`ManifestError::AlreadySealed`] if the directory is already sealed. The
    /// caller must have made every listed file durable first.
    pub async fn seal(&self, storage: &dyn Storage) -> Result<(), ManifestError> {
        let path = self.path();
        let tmp = temp_sibling(&path);
        let mut writer = storage.create(&tmp, CreateMode::Overwrite).await?;
        writer.write(self.to_bytes()).await?;
        writer.close().await?;
        match storage.rename(&tmp, &path, RenameMode::NoOverwrite).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = storage.delete(&tmp, false).await;
                if e.is_already_exists() {
                    Err(ManifestError::AlreadySealed { path })
                } else {
                    Err(e.into())
                }
            }
        }
    }
}

/// CRC-32C (Castagnoli) of `bytes`, as stored in manifests. The `crc32c` crate uses
/// the CPU's CRC32 instruction (SSE 4.2, ARMv8) where there is one: ~25x the
/// byte-at-a-time table of the `crc` crate used before, same values.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_append(0, bytes)
}

/// The length, CRC-32C and trailer of the closed data file at `path`, reading it in
/// chunks (memory stays bounded for large files).
pub async fn describe_file(
    storage: &dyn Storage,
    path: &str,
) -> Result<(u64, u32, Trailer), ManifestError> {
    let described = describe(storage, path).await?;
    Ok((described.bytes, described.crc32c, described.trailer))
}

/// The length and CRC-32C of any file at `path`, as manifests list them, read in
/// chunks: all a `.gz` data file (no trailer; `docs/format.md` §3.7) or an hourly
/// Parquet file can be checked against without decoding it.
pub async fn checksum_file(storage: &dyn Storage, path: &str) -> Result<(u64, u32), StorageError> {
    let len = storage.len(path).await?;
    let mut crc = 0;
    let mut at = 0;
    while at < len {
        let end = (at + CHECKSUM_CHUNK).min(len);
        let chunk = storage.read_range(path, at..end).await?;
        if chunk.is_empty() {
            break;
        }
        crc = crc32c_append(crc, &chunk);
        at += chunk.len() as u64;
    }
    Ok((at, crc))
}

/// What [`describe`] read of a closed data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    /// Its length.
    pub bytes: u64,
    /// CRC-32C of the whole file, as manifests list it.
    pub crc32c: u32,
    /// Its close trailer.
    pub trailer: Trailer,
    /// The trailer's version, index size and checksum.
    pub close: CloseInfo,
    /// CRC-32C of the bytes before the trailer, which a version 2 trailer's
    /// `crc32c` must equal.
    pub crc32c_before_trailer: u32,
}

impl Described {
    /// Whether the bytes before the trailer are those its writer checksummed
    /// (always true for a trailer without a checksum).
    pub fn checksum_matches(&self) -> bool {
        self.close.crc32c == 0 || self.close.crc32c == self.crc32c_before_trailer
    }
}

/// Reads the closed data file at `path` once, in chunks (memory stays bounded for
/// large files): its length, CRC-32C, trailer, and the checksum of the bytes
/// before the trailer. [`ManifestError::NotClosed`] if it has no trailer.
pub async fn describe(storage: &dyn Storage, path: &str) -> Result<Described, ManifestError> {
    let len = storage.len(path).await?;
    // The trailer is the last 48 or 40 bytes: checksum up to both places.
    let cuts = [
        len.saturating_sub(TRAILER_V2_LEN as u64),
        len.saturating_sub(TRAILER_LEN as u64),
    ];
    let mut crc_at = [0u32; 2];
    let mut crc = 0;
    let mut at = 0;
    let mut tail = Vec::with_capacity(TRAILER_V2_LEN);
    while at < len {
        let end = (at + CHECKSUM_CHUNK).min(len);
        let chunk = storage.read_range(path, at..end).await?;
        for (cut, crc_cut) in cuts.iter().zip(crc_at.iter_mut()) {
            if (at..end).contains(cut) {
                *crc_cut = crc32c_append(crc, &chunk[..(cut - at) as usize]);
            }
        }
        crc = crc32c_append(crc, &chunk);
        if end + TRAILER_V2_LEN as u64 >= len {
            let keep_from = (len.saturating_sub(TRAILER_V2_LEN as u64)).max(at) - at;
            tail.extend_from_slice(&chunk[keep_from as usize..]);
        }
        at = end;
    }
    let (trailer, close) = trailer_in_tail(&tail).ok_or_else(|| ManifestError::NotClosed {
        path: path.to_owned(),
    })?;
    let crc32c_before_trailer = if close.trailer_len() == TRAILER_V2_LEN as u64 {
        crc_at[0]
    } else {
        crc_at[1]
    };
    Ok(Described {
        bytes: len,
        crc32c: crc,
        trailer,
        close,
        crc32c_before_trailer,
    })
}

fn ser_crc<S: Serializer>(crc: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{crc:08x}"))
}

fn de_crc<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    if text.len() != 8 {
        return Err(serde::de::Error::custom(format!(
            "crc32c {text:?} is not 8 hex digits"
        )));
    }
    u32::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
}

fn ser_view<S: Serializer>(view: &View, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(view.name())
}

fn de_view<'de, D: Deserializer<'de>>(d: D) -> Result<View, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    fn file(name: &str, minute: Minute) -> ManifestFile {
        ManifestFile {
            name: name.to_owned(),
            bytes: 10,
            records: 2,
            crc32c: 0x8a1f_03bc,
            cluster: NodeName::new("dc1").unwrap(),
            collector: Some(NodeName::new("c1").unwrap()),
            minute,
            late: false,
        }
    }

    #[test]
    fn round_trips_and_sums() {
        let minute = Minute::parse_flexible("2026-11-22T10:05Z").unwrap();
        let m = Manifest::new(
            View::Local,
            Topic::new("clicks").unwrap(),
            minute,
            vec![NodeName::new("dc1").unwrap()],
            vec![],
            Utc::now(),
            "dc1/w".into(),
            vec![file("b.zst", minute), file("a.zst", minute)],
        );
        assert_eq!(m.records, 4);
        assert_eq!(m.bytes, 20);
        assert_eq!(m.files[0].name, "a.zst");
        let text = String::from_utf8(m.to_bytes().to_vec()).unwrap();
        assert!(text.contains(r#""crc32c":"8a1f03bc""#), "{text}");
        assert!(text.contains(r#""view":"local""#), "{text}");
        assert_eq!(Manifest::parse("p", text.as_bytes()).unwrap(), m);
        assert_eq!(
            m.path(),
            "streams_local/clicks/2026/11/22/10/05/_SUCCESS".to_owned()
        );
    }

    #[test]
    fn seal_notes_round_trip_and_are_absent_when_empty() {
        let minute = Minute::parse_flexible("2026-11-22T10:05Z").unwrap();
        let plain = Manifest::new(
            View::Local,
            Topic::new("clicks").unwrap(),
            minute,
            vec![NodeName::new("dc1").unwrap()],
            vec![],
            Utc::now(),
            "dc1/w".into(),
            vec![file("a.zst", minute)],
        );
        let text = String::from_utf8(plain.to_bytes().to_vec()).unwrap();
        assert!(!text.contains("duplicates_dropped"), "{text}");
        assert!(!text.contains("quarantined"), "{text}");
        let set_aside = |name: &str| QuarantinedFile {
            name: name.to_owned(),
            reason: "no_trailer".to_owned(),
            detail: "truncated".to_owned(),
        };
        let noted = plain
            .clone()
            .with_seal_notes(120, vec![set_aside("z.zst"), set_aside("b.zst")]);
        assert_eq!(noted.quarantined[0].name, "b.zst", "sorted by name");
        let text = String::from_utf8(noted.to_bytes().to_vec()).unwrap();
        assert!(text.contains(r#""duplicates_dropped":120"#), "{text}");
        assert_eq!(Manifest::parse("p", text.as_bytes()).unwrap(), noted);
        assert_eq!(noted.records, plain.records, "files are summed alone");
    }

    #[test]
    fn future_versions_and_garbage_are_typed_errors() {
        assert!(matches!(
            Manifest::parse("p", br#"{"version":2}"#),
            Err(ManifestError::UnsupportedVersion { version: 2, .. })
        ));
        assert!(matches!(
            Manifest::parse("p", b"not json"),
            Err(ManifestError::Malformed { .. })
        ));
    }

    #[tokio::test]
    async fn describe_checks_the_bytes_before_a_version_2_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path()).unwrap();
        let trailer = Trailer {
            encoding: crate::format::Encoding::Lines,
            records: 1,
            record_bytes: 2,
        };
        let mut content = crate::format::FrameEncoder::new(1)
            .unwrap()
            .frame(b"a\n")
            .unwrap()
            .to_vec();
        let crc = crc32c(&content);
        content.extend_from_slice(&crate::format::encode_closing(&trailer, crc, None));
        storage
            .write_atomic("good.zst", Bytes::from(content.clone()))
            .await
            .unwrap();
        let good = describe(&storage, "good.zst").await.unwrap();
        assert_eq!(
            (good.bytes, good.crc32c),
            (content.len() as u64, crc32c(&content))
        );
        assert_eq!(good.crc32c_before_trailer, crc);
        assert!(good.checksum_matches());

        content[3] ^= 0x40;
        storage
            .write_atomic("bad.zst", Bytes::from(content))
            .await
            .unwrap();
        let bad = describe(&storage, "bad.zst").await.unwrap();
        assert!(!bad.checksum_matches(), "{bad:?}");
        // A version 1 trailer has no checksum to compare with.
        let mut old = b"x".to_vec();
        old.extend_from_slice(&trailer.encode());
        storage
            .write_atomic("v1.zst", Bytes::from(old))
            .await
            .unwrap();
        assert!(describe(&storage, "v1.zst")
            .await
            .unwrap()
            .checksum_matches());
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    /// The test vectors of RFC 3720 (iSCSI), appendix B.4, plus the empty input.
    #[test]
    fn crc32c_matches_rfc3720_vectors() {
        let ascending: Vec<u8> = (0..32).collect();
        let descending: Vec<u8> = (0..32).rev().collect();
        let read_pdu: [u8; 48] = [
            0x01, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
            0x14, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0x14, 0, 0, 0, 0x18, //
            0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xff; 32]), 0x62a8_ab43);
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
        assert_eq!(crc32c(&descending), 0x113f_db5c);
        assert_eq!(crc32c(&read_pdu), 0xd996_3a56);
    }

    #[tokio::test]
    async fn seal_is_exclusive_and_describe_reads_the_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path()).unwrap();
        let minute = Minute::parse_flexible("2026-11-22T10:05Z").unwrap();
        let topic = Topic::new("clicks").unwrap();
        let mdir = Manifest::dir(View::Local, &topic, minute);
        storage.mkdirs(&mdir).await.unwrap();
        assert!(Manifest::read(&storage, &mdir).await.unwrap().is_none());

        let mut content = vec![7u8; 20_000_000];
        let trailer = Trailer {
            encoding: crate::format::Encoding::Lines,
            records: 42,
            record_bytes: 99,
        };
        content.extend_from_slice(&trailer.encode());
        let data = format!("{mdir}/dc1-c1-clicks-2026-11-22-10-05_00000.zst");
        let mut w = storage.create(&data, CreateMode::Exclusive).await.unwrap();
        w.write(Bytes::from(content.clone())).await.unwrap();
        w.close().await.unwrap();
        let (len, crc, got) = describe_file(&storage, &data).await.unwrap();
        assert_eq!(len, content.len() as u64);
        assert_eq!(crc, crc32c(&content));
        // Computed by the `crc` crate (byte-at-a-time table) this code used before
        // `crc32c`: 3 chunks of CHECKSUM_CHUNK, the same value.
        assert_eq!(crc, 0x9aa2_cd91);
        assert_eq!(got, trailer);

        let m = Manifest::new(
            View::Local,
            topic,
            minute,
            vec![NodeName::new("dc1").unwrap()],
            vec![],
            Utc::now(),
            "dc1/w".into(),
            vec![],
        );
        m.seal(&storage).await.unwrap();
        assert_eq!(
            Manifest::read(&storage, &mdir).await.unwrap(),
            Some(m.clone())
        );
        assert!(matches!(
            m.seal(&storage).await,
            Err(ManifestError::AlreadySealed { .. })
        ));
        let names: Vec<_> = storage
            .list(&mdir)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names.len(), 2, "no temporary left behind: {names:?}");
    }
}
