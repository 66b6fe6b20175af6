//! Why the collector refuses a call, an entry or a connection.
//!
//! Every refusal has a reason, and every reason has one string: the label of its
//! metric (`conduit_collector_try_later_total{reason}`, `..._invalid_total{reason}`,
//! `..._connection_errors_total{reason}`) and, for entries, the `reason` field of
//! the `_invalid` record (`docs/format.md` §5.5). The strings are part of the
//! on-disk format and of the metrics an operator alerts on: never change one.
//! Code compares the enums, never the strings.

use conduit_core::scribe::ProtocolError;

/// Why a `Log`/`LogBatch` call is answered `TRY_LATER` (nothing of it, or not all
/// of it, is durable; the client retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TryLaterReason {
    /// A topic's queued bytes would exceed `topic_queue_bytes`, or the queue to the
    /// committer is full.
    QueueFull,
    /// Shutdown has begun: no new calls are queued.
    ShuttingDown,
    /// The connection is over `max_connections`: it gets one answer, then is closed.
    MaxConnections,
    /// Storage failed and the spool could not take the data either (full or failed).
    SpoolUnavailable,
    /// Storage failed and there is no spool.
    StorageUnavailable,
    /// The call does not fit in the collector's memory budget (`max_inflight_bytes`).
    Memory,
    /// The connection is over `max_connections_per_ip`: it gets one answer, then is
    /// closed.
    MaxConnectionsPerIp,
    /// The call needs a new data file and none can be opened: every open file is
    /// in use by the round at `max_open_files`, or the process is out of file
    /// descriptors (`EMFILE`/`ENFILE`).
    OpenFiles,
}

impl TryLaterReason {
    /// Every reason, for metrics present from the start.
    pub const ALL: [TryLaterReason; 8] = [
        Self::QueueFull,
        Self::ShuttingDown,
        Self::MaxConnections,
        Self::SpoolUnavailable,
        Self::StorageUnavailable,
        Self::Memory,
        Self::MaxConnectionsPerIp,
        Self::OpenFiles,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ShuttingDown => "shutting_down",
            Self::MaxConnections => "max_connections",
            Self::SpoolUnavailable => "spool_unavailable",
            Self::StorageUnavailable => "storage_unavailable",
            Self::Memory => "memory",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::OpenFiles => "open_files",
        }
    }
}

/// Why an entry goes to `_invalid` instead of its topic (the rest of its call is
/// stored normally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    /// The category is not UTF-8 or not a valid topic name.
    InvalidTopic,
    /// `strict_topics` is set and the topic is not configured.
    UnknownTopic,
    /// A plain `Log` call to a topic only conduit publishers may write (`LogBatch`
    /// calls): `_audit`, whose records `conduit audit` sums.
    ReservedTopic,
    /// The message exceeds `max_message_bytes`.
    MessageTooLarge,
    /// A `lines` topic's message contains `\n`.
    NewlineInLinesPayload,
    /// The topic's `validate` rejects the message.
    ValidationFailed,
}

impl InvalidReason {
    /// The metric label and the `_invalid` record's `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTopic => "invalid_topic",
            Self::UnknownTopic => "unknown_topic",
            Self::ReservedTopic => "reserved_topic",
            Self::MessageTooLarge => "message_too_large",
            Self::NewlineInLinesPayload => "newline_in_lines_payload",
            Self::ValidationFailed => "validation_failed",
        }
    }

    /// Whether the entry's topic is what is wrong: its metric is then labelled
    /// `(invalid)` instead of the topic, so that garbage categories cannot grow the
    /// label set without bound.
    pub fn is_about_topic(self) -> bool {
        matches!(self, Self::InvalidTopic | Self::UnknownTopic)
    }

    /// The key of its WARN line in `conduit_core::ratelimit` (one line per reason
    /// per interval, whatever the topic).
    pub fn log_key(self) -> &'static str {
        match self {
            Self::InvalidTopic => "invalid:invalid_topic",
            Self::UnknownTopic => "invalid:unknown_topic",
            Self::ReservedTopic => "invalid:reserved_topic",
            Self::MessageTooLarge => "invalid:message_too_large",
            Self::NewlineInLinesPayload => "invalid:newline_in_lines_payload",
            Self::ValidationFailed => "invalid:validation_failed",
        }
    }
}

/// Why a `LogBatch` call is refused with a `TApplicationException` (PROTOCOL_ERROR):
/// nothing of it is stored, and retrying it cannot help. The connection stays
/// open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchRefusal {
    /// The sequence is below 0.
    NegativeSequence,
    /// The sequence is 2^62 or above.
    SequenceTooLarge,
}

impl BatchRefusal {
    /// Every refusal (each has its metric label from the start).
    pub const ALL: [BatchRefusal; 2] = [Self::NegativeSequence, Self::SequenceTooLarge];

    /// Why `sequence` is refused, if it is (the range is
    /// `conduit_core::scribe::LOG_BATCH_SEQUENCES`).
    pub fn of(sequence: i64) -> Option<BatchRefusal> {
        let allowed = conduit_core::scribe::LOG_BATCH_SEQUENCES;
        if sequence < allowed.start {
            Some(Self::NegativeSequence)
        } else if sequence >= allowed.end {
            Some(Self::SequenceTooLarge)
        } else {
            None
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NegativeSequence => "negative_sequence",
            Self::SequenceTooLarge => "sequence_too_large",
        }
    }

    /// The exception's message, naming the value.
    pub fn message(self, sequence: i64) -> String {
        match self {
            Self::NegativeSequence => format!("LogBatch sequence {sequence} is negative"),
            Self::SequenceTooLarge => {
                format!("LogBatch sequence {sequence} is too large (the limit is 2^62 - 1)")
            }
        }
    }
}

/// Why a connection is refused or closed before its peer closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionError {
    /// Accepted over `max_connections`: answered once (`TRY_LATER` for a `Log`
    /// call), then closed.
    MaxConnections,
    /// Accepted over `max_connections_per_ip`: answered once, then closed.
    MaxConnectionsPerIp,
    /// The peer's address is outside `allow_networks`: closed at accept.
    NotAllowed,
    /// The TLS handshake failed (no or a bad client certificate, plain bytes on
    /// a TLS port, ...) or did not complete within `first_call_timeout_ms`.
    TlsHandshake,
    /// The peer broke the protocol.
    Protocol(ProtocolErrorKind),
}

impl ConnectionError {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::NotAllowed => "not_allowed",
            Self::TlsHandshake => "tls_handshake",
            Self::Protocol(kind) => kind.as_str(),
        }
    }

    /// What a call on a connection refused for this reason is answered.
    pub fn try_later(self) -> TryLaterReason {
        match self {
            Self::MaxConnectionsPerIp => TryLaterReason::MaxConnectionsPerIp,
            _ => TryLaterReason::MaxConnections,
        }
    }
}

/// Why the collector closed a connection it was serving, for a limit on time or
/// room (`conduit_collector_connections_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// No complete first frame within `first_call_timeout_ms` of connecting.
    FirstCallTimeout,
    /// No call in progress and nothing received for `idle_timeout_secs`.
    IdleTimeout,
    /// A frame begun and not complete within `frame_timeout_ms`.
    FrameTimeout,
    /// Idle the longest when a newcomer needed its place at a connection limit.
    EvictedIdle,
}

impl CloseReason {
    /// Every reason (the metric's label values, present from the start).
    pub const ALL: [CloseReason; 4] = [
        Self::FirstCallTimeout,
        Self::IdleTimeout,
        Self::FrameTimeout,
        Self::EvictedIdle,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstCallTimeout => "first_call_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::FrameTimeout => "frame_timeout",
            Self::EvictedIdle => "evicted_idle",
        }
    }
}

/// The kind of a [`ProtocolError`] that closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolErrorKind {
    /// A frame's length prefix exceeds `max_frame_bytes`.
    FrameTooLarge,
    /// The stream ended inside a frame.
    TruncatedFrame,
    /// Reading the socket failed.
    Io,
    /// A message that is not a call (or oneway call).
    WrongMessageType,
    /// Anything else that does not decode.
    Malformed,
    /// A connection whose first bytes are neither Thrift transport's (HTTP, TLS,
    /// text).
    NotThrift,
}

impl ProtocolErrorKind {
    /// Every kind, for metrics present from the start.
    pub const ALL: [ProtocolErrorKind; 6] = [
        Self::FrameTooLarge,
        Self::TruncatedFrame,
        Self::Io,
        Self::WrongMessageType,
        Self::Malformed,
        Self::NotThrift,
    ];

    /// The kind of `error`.
    pub fn of(error: &ProtocolError) -> ProtocolErrorKind {
        match error {
            ProtocolError::FrameTooLarge { .. } => Self::FrameTooLarge,
            ProtocolError::TruncatedFrame { .. } => Self::TruncatedFrame,
            ProtocolError::Io(_) => Self::Io,
            ProtocolError::WrongMessageType { .. } => Self::WrongMessageType,
            ProtocolError::NotThrift { .. } => Self::NotThrift,
            _ => Self::Malformed,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrameTooLarge => "frame_too_large",
            Self::TruncatedFrame => "truncated_frame",
            Self::Io => "io",
            Self::WrongMessageType => "wrong_message_type",
            Self::Malformed => "malformed",
            Self::NotThrift => "not_thrift",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings are a format (`docs/format.md` §5.5) and metric labels.
    #[test]
    fn reasons_keep_their_strings() {
        let try_later = [
            (TryLaterReason::QueueFull, "queue_full"),
            (TryLaterReason::ShuttingDown, "shutting_down"),
            (TryLaterReason::MaxConnections, "max_connections"),
            (TryLaterReason::SpoolUnavailable, "spool_unavailable"),
            (TryLaterReason::StorageUnavailable, "storage_unavailable"),
            (TryLaterReason::Memory, "memory"),
            (
                TryLaterReason::MaxConnectionsPerIp,
                "max_connections_per_ip",
            ),
            (TryLaterReason::OpenFiles, "open_files"),
        ];
        for (reason, s) in try_later {
            assert_eq!(reason.as_str(), s);
        }
        let invalid = [
            (InvalidReason::InvalidTopic, "invalid_topic"),
            (InvalidReason::UnknownTopic, "unknown_topic"),
            (InvalidReason::ReservedTopic, "reserved_topic"),
            (InvalidReason::MessageTooLarge, "message_too_large"),
            (
                InvalidReason::NewlineInLinesPayload,
                "newline_in_lines_payload",
            ),
            (InvalidReason::ValidationFailed, "validation_failed"),
        ];
        for (reason, s) in invalid {
            assert_eq!(reason.as_str(), s);
        }
        let refused = [
            (BatchRefusal::NegativeSequence, "negative_sequence"),
            (BatchRefusal::SequenceTooLarge, "sequence_too_large"),
        ];
        for (reason, s) in refused {
            assert_eq!(reason.as_str(), s);
        }
        let connection = [
            (ConnectionError::MaxConnections, "max_connections"),
            (
                ConnectionError::MaxConnectionsPerIp,
                "max_connections_per_ip",
            ),
            (
                ConnectionError::Protocol(ProtocolErrorKind::FrameTooLarge),
                "frame_too_large",
            ),
            (
                ConnectionError::Protocol(ProtocolErrorKind::TruncatedFrame),
                "truncated_frame",
            ),
            (ConnectionError::NotAllowed, "not_allowed"),
            (ConnectionError::TlsHandshake, "tls_handshake"),
            (ConnectionError::Protocol(ProtocolErrorKind::Io), "io"),
            (
                ConnectionError::Protocol(ProtocolErrorKind::WrongMessageType),
                "wrong_message_type",
            ),
            (
                ConnectionError::Protocol(ProtocolErrorKind::NotThrift),
                "not_thrift",
            ),
            (
                ConnectionError::Protocol(ProtocolErrorKind::Malformed),
                "malformed",
            ),
        ];
        for (reason, s) in connection {
            assert_eq!(reason.as_str(), s);
        }
        let closed = [
            "first_call_timeout",
            "idle_timeout",
            "frame_timeout",
            "evicted_idle",
        ];
        for (reason, s) in CloseReason::ALL.into_iter().zip(closed) {
            assert_eq!(reason.as_str(), s);
        }
    }

    #[test]
    fn batch_sequences_outside_the_range_are_refused_naming_the_value() {
        assert_eq!(BatchRefusal::of(0), None);
        assert_eq!(BatchRefusal::of((1 << 62) - 1), None);
        assert_eq!(BatchRefusal::of(-5), Some(BatchRefusal::NegativeSequence));
        assert_eq!(
            BatchRefusal::of(1 << 62),
            Some(BatchRefusal::SequenceTooLarge)
        );
        assert_eq!(
            BatchRefusal::of(i64::MIN),
            Some(BatchRefusal::NegativeSequence)
        );
        assert_eq!(
            BatchRefusal::NegativeSequence.message(-5),
            "LogBatch sequence -5 is negative"
        );
        assert!(BatchRefusal::SequenceTooLarge
            .message(1 << 62)
            .contains("4611686018427387904"));
    }

    #[test]
    fn protocol_errors_map_to_their_kind() {
        let cases = [
            (
                ProtocolError::FrameTooLarge { len: 10, max: 5 },
                ProtocolErrorKind::FrameTooLarge,
            ),
            (
                ProtocolError::TruncatedFrame {
                    expected: 4,
                    got: 1,
                },
                ProtocolErrorKind::TruncatedFrame,
            ),
            (
                ProtocolError::WrongMessageType { kind: 2 },
                ProtocolErrorKind::WrongMessageType,
            ),
            (
                ProtocolError::BadVersion { word: 0 },
                ProtocolErrorKind::Malformed,
            ),
            (
                ProtocolError::UnexpectedEof { at: 3 },
                ProtocolErrorKind::Malformed,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(ProtocolErrorKind::of(&error), kind, "{error}");
        }
        let io = ProtocolError::Io(std::io::Error::other("reset"));
        assert_eq!(ProtocolErrorKind::of(&io), ProtocolErrorKind::Io);
    }
}
