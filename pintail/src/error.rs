//! The crate's error type: one enum, each variant naming the offending file, offset,
//! checkpoint or setting.

use conduit_core::{LayoutError, ManifestError, StorageError};

/// What to do about a damaged data file, in the errors that name one.
pub const DAMAGED_FILE_HELP: &str = "check storage with `conduit verify` and see docs/operations.md \"Quarantined files\"; to read past it, pass --skip-corrupt (ConsumerBuilder::skip_corrupt_frames)";

/// Errors of PinTail.
#[derive(Debug, thiserror::Error)]
pub enum PintailError {
    /// A storage call failed and retrying did not help (or retrying is not allowed).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A `_SUCCESS` manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A path or name could not be built.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A complete frame failed to decode (bad checksum, garbage, a bad record).
    /// Set [`crate::ConsumerBuilder::skip_corrupt_frames`] to skip and count it instead.
    #[error("corrupt frame in {path} at byte offset {offset}: {reason}; {DAMAGED_FILE_HELP}")]
    CorruptFrame {
        /// The file, relative to its cluster root.
        path: String,
        /// Offset of the frame's first byte.
        offset: u64,
        /// What the decoder said.
        reason: String,
    },
    /// A data file is truncated or was set aside as damaged: it ends before its
    /// close trailer although its writer has closed it, or it was moved to
    /// `quarantine/` while being read. Records past `offset` cannot be read from
    /// it. Set [`crate::ConsumerBuilder::skip_corrupt_frames`] to skip the rest of
    /// the file and count it instead.
    #[error(
        "damaged data file {path}: {reason} (read up to byte offset {offset}); {DAMAGED_FILE_HELP}"
    )]
    DamagedFile {
        /// The file, relative to its cluster root.
        path: String,
        /// How far it was read (records before it were delivered).
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint file could not be parsed. PinTail never silently restarts from
    /// the beginning: fix or delete the file.
    #[error("malformed checkpoint {path}: {reason}")]
    MalformedCheckpoint {
        /// The checkpoint path in the checkpoint store.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint written by a newer PinTail.
    #[error("checkpoint {path} has version {version}, this build reads version {supported}")]
    UnsupportedCheckpointVersion {
        /// The checkpoint path.
        path: String,
        /// The version found.
        version: u32,
        /// The version this build understands.
        supported: u32,
    },
    /// A position handed to `commit` belongs to a partition this member does not own.
    #[error(
        "partition {partition} is not owned by this member (group {group}); the commit was refused"
    )]
    NotOwner {
        /// The consumer group.
        group: String,
        /// The partition.
        partition: String,
    },
    /// A later process joined the group with this member's id (static
    /// membership: a restart takes over its own partitions); this process must
    /// stop, as Kafka's fenced static members do.
    #[error(
        "member {member} of group {group} was taken over by a later process with the same member id (incarnation {by}); this one stops: run each member id once"
    )]
    MemberFenced {
        /// The consumer group.
        group: String,
        /// The member id.
        member: String,
        /// The later process's incarnation.
        by: u64,
    },
    /// A position handed to `commit` is behind the partition's checkpoint as this
    /// member last read or wrote it: typically a position delivered before the
    /// member lost the partition and took it back, after another member committed
    /// further. Committing it would move the group backwards (redelivery), so it is
    /// refused; `seek` first to rewind on purpose.
    #[error(
        "position {position} of partition {partition} is behind the group's checkpoint {checkpoint} (group {group}); the commit was refused"
    )]
    StaleCommit {
        /// The consumer group.
        group: String,
        /// The partition.
        partition: String,
        /// The refused position.
        position: String,
        /// The checkpoint it is behind.
        checkpoint: String,
    },
    /// The group already uses another partition count for this kind of view
    /// (recorded by its first member, `docs/format.md` §9.2): checkpoints and
    /// claims are per partition, so every member must use the same count.
    #[error(
        "group {group} of topic {topic} uses {recorded} partitions in the {view} view (recorded in {path}), but this member was started with {requested}; start it with --partitions {recorded}, or use a new group to change the count"
    )]
    PartitionsMismatch {
        /// The consumer group.
        group: String,
        /// The topic.
        topic: String,
        /// `local` or `sealed`.
        view: &'static str,
        /// The count the group recorded.
        recorded: u32,
        /// The count this member was given.
        requested: u32,
        /// The group's partitions file.
        path: String,
    },
    /// The builder was given an invalid or incomplete setting.
    #[error("invalid setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting (builder method or CLI flag).
        setting: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The blocking wrapper could not start its runtime.
    #[error("cannot start the pintail runtime: {0}")]
    Runtime(String),
}

/// Result of PinTail calls.
pub type Result<T> = std::result::Result<T, PintailError>;
