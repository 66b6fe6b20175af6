//! Files the local seal cannot list, set aside instead of blocking their topic.
//!
//! Sealing a minute lists every data file of its directory in the manifest with
//! its length, CRC-32C and close trailer ([`inspect`]). A file that cannot be
//! listed so ([`Unsealable`]: its name is not a local data file name; it has no
//! close trailer because it was truncated by a disk fault or its collector broke
//! its watermark promise; its bytes do not match its trailer's checksum; its index
//! is unreadable; or a frame the seal must rewrite does not decode) would fail
//! every pass and stop the topic from ever sealing again. Instead the seal moves it with one rename to
//! `quarantine/<its path>` ([`Layout::quarantine_path`], a top-level directory no
//! reader looks into), logs an ERROR naming it and the reason, counts it
//! (`conduit_worker_files_quarantined_total`) and lists it in the manifest's
//! `quarantined` ([`QuarantinedFile`]). The bytes stay as they were, for an
//! operator to inspect, repair or drop (`docs/worker.md`).
//!
//! Only what a file's bytes say is a reason: a storage error is returned as an
//! error (the pass is retried), never taken for a bad file.
//!
//! # Crash consistency
//!
//! The rename is the commit. A seal interrupted after it finds the file in the
//! quarantine directory of the minute ([`quarantined_earlier`]) and lists it with
//! the reason read again from its bytes, so the manifest lists every file set
//! aside from its directory whatever instant the worker was killed at.

use conduit_core::format::{
    crc32c_append, read_index, ClosedTail, FormatError, IndexEntry, TRAILER_V2_LEN,
};
use conduit_core::layout::Layout;
use conduit_core::manifest::{describe, Described};
use conduit_core::{ManifestError, QuarantinedFile, RenameMode, Storage};

use crate::{Fence, WorkerError};

/// Why a file in a minute directory cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unsealable {
    /// The name is not a local data file name (`docs/format.md` §2.1).
    #[error("not a local data file name: {reason}")]
    NotADataFile {
        /// What the name parser said.
        reason: String,
    },
    /// The file does not end with a close trailer.
    #[error(
        "no close trailer in its last {TRAILER_V2_LEN} bytes: the file was truncated, \
         or its collector never closed it"
    )]
    NoTrailer,
    /// The bytes before the trailer are not those its writer checksummed.
    #[error("its bytes do not match the checksum in its trailer: crc32c {computed:08x}, the trailer says {stored:08x}")]
    ChecksumMismatch {
        /// What the trailer says.
        stored: u32,
        /// What the bytes give.
        computed: u32,
    },
    /// The trailer names an index that is not there.
    #[error("its index cannot be read: {reason}")]
    BadIndex {
        /// What is wrong.
        reason: String,
    },
    /// A data frame the seal had to rewrite does not decode, or disagrees with
    /// the file's marks or index.
    #[error("the frame at byte offset {offset} cannot be rewritten: {reason}")]
    BadFrame {
        /// Offset of the frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier, interrupted seal set the file aside, but it now reads as a
    /// sealable file (someone replaced it in `quarantine/`).
    #[error("set aside by an interrupted seal; it now reads as a closed data file")]
    Earlier,
}

impl Unsealable {
    /// The stable code of the reason, as manifests record it.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Unsealable::NotADataFile { .. } => "not_a_data_file",
            Unsealable::NoTrailer => "no_trailer",
            Unsealable::ChecksumMismatch { .. } => "checksum_mismatch",
            Unsealable::BadIndex { .. } => "bad_index",
            Unsealable::BadFrame { .. } => "bad_frame",
            Unsealable::Earlier => "earlier",
        }
    }

    /// The manifest entry of file `name` set aside for this reason.
    pub(crate) fn entry(&self, name: &str) -> QuarantinedFile {
        QuarantinedFile {
            name: name.to_owned(),
            reason: self.code().to_owned(),
            detail: self.to_string(),
        }
    }
}

/// How the seal learned a file's length and checksum ([`Sealable::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// From its close trailer and index alone (one ranged read of its tail): the
    /// writer's CRC-32C of every byte before the trailer, extended over the
    /// trailer, is the CRC-32C of the whole file.
    Trailer,
    /// By reading every byte (a file whose writer did not checksum it, or whose
    /// tail does not agree with its length).
    Full,
}

impl Check {
    /// The label value of `conduit_worker_seal_checks_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Check::Trailer => "trailer",
            Check::Full => "full",
        }
    }
}

/// What the seal knows of a file it can list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sealable {
    /// Length, CRC-32C and trailer.
    pub(crate) file: Described,
    /// Its batch parts with their frames' offsets, from its index; `None` when
    /// it has none (version 1 marks: no digests).
    pub(crate) index: Option<Vec<IndexEntry>>,
    /// How `file` was learned.
    pub(crate) check: Check,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The file can be listed as it is.
    Sealable(Sealable),
    /// It cannot; it goes to quarantine.
    Unsealable(Unsealable),
}

/// Says whether the data file at `path`, listed with `listed_len` bytes, can be
/// sealed: it must end with a close trailer, match the trailer's checksum (when
/// it has one) and have a readable index (when it has one).
///
/// What the collector already knew is not read again: a file whose tail (one
/// ranged read, [`read_index`]) holds a version 2 trailer with the writer's
/// CRC-32C and an index that fits in `listed_len` bytes is described from that
/// tail alone ([`Check::Trailer`]). Any other file (no trailer: the collector was
/// killed, or the file was cut; a version 1 trailer; no checksum; an index that
/// does not fit) is read in full as before ([`inspect_full`]), so a file that
/// cannot be sealed is still found and set aside. A bit flipped inside a file
/// after its writer checksummed it is not found here but by `conduit verify` and
/// by the verified copy of the merge and mirror (both compare the whole file with
/// the manifest's CRC-32C). With `read_in_full` (`worker.seal_reads_files`)
/// every file is read in full. Storage errors are errors, never a verdict.
pub(crate) async fn inspect(
    storage: &dyn Storage,
    path: &str,
    listed_len: u64,
    read_in_full: bool,
) -> Result<Verdict, WorkerError> {
    if !read_in_full {
        if let Some(sealable) = inspect_tail(storage, path, listed_len).await? {
            return Ok(Verdict::Sealable(sealable));
        }
    }
    inspect_full(storage, path).await
}

/// The [`Check::Trailer`] description of the `len`-byte file at `path`, or `None`
/// when its tail does not allow one (module docs of [`inspect`]).
async fn inspect_tail(
    storage: &dyn Storage,
    path: &str,
    len: u64,
) -> Result<Option<Sealable>, WorkerError> {
    let tail = match read_index(storage, path, len).await {
        Ok(Some(tail)) => tail,
        Ok(None) | Err(FormatError::CorruptFrame { .. }) => return Ok(None),
        // Gone or shorter than listed: the full read says what it is.
        Err(FormatError::Storage(e)) if e.is_not_found() => return Ok(None),
        Err(FormatError::Storage(e)) => return Err(e.into()),
        Err(_) => return Ok(None),
    };
    let ClosedTail {
        trailer,
        close,
        index,
    } = tail;
    if close.version < 2 || close.crc32c == 0 {
        return Ok(None);
    }
    // The index frame and the trailer end the file; every indexed data frame
    // starts before the index.
    let index_start = len - close.trailer_len() - u64::from(close.index_len);
    if index
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|e| e.frame_offset >= index_start)
    {
        return Ok(None);
    }
    let trailer_bytes = trailer.encode_v2(close.index_len, close.crc32c);
    Ok(Some(Sealable {
        file: Described {
            bytes: len,
            crc32c: crc32c_append(close.crc32c, &trailer_bytes),
            trailer,
            close,
            crc32c_before_trailer: close.crc32c,
        },
        index,
        check: Check::Trailer,
    }))
}

/// Reads the data file at `path` in full (in chunks, memory stays bounded) and
/// says whether it can be sealed ([`Check::Full`]).
pub(crate) async fn inspect_full(
    storage: &dyn Storage,
    path: &str,
) -> Result<Verdict, WorkerError> {
    let file = match describe(storage, path).await {
        Ok(file) => file,
        Err(ManifestError::NotClosed { .. }) => {
            return Ok(Verdict::Unsealable(Unsealable::NoTrailer))
        }
        Err(e) => return Err(e.into()),
    };
    if !file.checksum_matches() {
        return Ok(Verdict::Unsealable(Unsealable::ChecksumMismatch {
            stored: file.close.crc32c,
            computed: file.crc32c_before_trailer,
        }));
    }
    let index = match read_index(storage, path, file.bytes).await {
        Ok(Some(tail)) => tail.index,
        // It had a trailer a moment ago, and a closed file never changes.
        Ok(None) => return Ok(Verdict::Unsealable(Unsealable::NoTrailer)),
        Err(FormatError::CorruptFrame { reason, .. }) => {
            return Ok(Verdict::Unsealable(Unsealable::BadIndex { reason }))
        }
        Err(FormatError::Storage(e)) => return Err(e.into()),
        Err(e) => return Err(WorkerError::Other(format!("{path}: {e}"))),
    };
    Ok(Verdict::Sealable(Sealable {
        file,
        index,
        check: Check::Full,
    }))
}

/// Moves the file at `path` to `quarantine/<path>`; see the [module docs](self).
pub(crate) async fn set_aside(
    storage: &dyn Storage,
    fence: &dyn Fence,
    path: &str,
    why: &Unsealable,
) -> Result<(), WorkerError> {
    let to = Layout::quarantine_path(path);
    fence.check().await?;
    match storage.rename(path, &to, RenameMode::NoOverwrite).await {
        Ok(()) => {
            tracing::error!(%path, quarantined_as = %to, reason = why.code(), detail = %why,
                "a file cannot be sealed; set aside in quarantine, the minute is sealed without it");
            Ok(())
        }
        Err(e) if e.is_already_exists() => Err(WorkerError::Other(format!(
            "cannot quarantine {path} ({why}): {to} already exists; move one of them away"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The files an earlier, interrupted seal of minute directory `dir` set aside,
/// except those named in `known`, with their reasons read again.
pub(crate) async fn quarantined_earlier(
    storage: &dyn Storage,
    dir: &str,
    known: &[QuarantinedFile],
) -> Result<Vec<QuarantinedFile>, WorkerError> {
    let mut found = Vec::new();
    for entry in storage.list_or_empty(&Layout::quarantine_path(dir)).await? {
        if entry.is_dir
            || Layout::is_hidden(&entry.name)
            || known.iter().any(|q| q.name == entry.name)
        {
            continue;
        }
        let why = match Layout::parse_local_file_name(&entry.name) {
            Err(e) => Unsealable::NotADataFile {
                reason: e.to_string(),
            },
            Ok(_) => match inspect_full(storage, &entry.path).await? {
                Verdict::Unsealable(why) => why,
                Verdict::Sealable(_) => Unsealable::Earlier,
            },
        };
        tracing::info!(path = %entry.path, reason = why.code(),
            "file set aside by an interrupted seal of this minute");
        found.push(why.entry(&entry.name));
    }
    Ok(found)
}
