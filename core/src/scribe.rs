//! The Scribe wire protocol: a zero-copy codec for both ends of a connection.
//!
//! Conduit speaks the protocol of Facebook's Scribe so that existing Scribe clients can
//! log to a collector unchanged. A Scribe connection carries Thrift **framed transport**
//! over **`TBinaryProtocol`** (default port [`DEFAULT_PORT`]), or the same messages
//! unframed (`TBufferedTransport`, strict headers only; see [`Transport`] and
//! [`read_message_within`]):
//!
//! ```text
//! connection := frame*
//! frame      := i32be:len payload              (len bytes; 0 <= len <= max_frame_bytes)
//! payload    := header struct trailing*        (trailing bytes are ignored)
//! header     := strict | old
//! strict     := u32be:(0x8001_0000 | type) string:name i32be:seqid
//! old        := string:name (i32 len >= 0) i8:type i32be:seqid
//! type       := 1 CALL | 2 REPLY | 3 EXCEPTION | 4 ONEWAY
//! string     := i32be:len byte*len             (binary: never checked for UTF-8)
//! struct     := field* 0x00                    (0x00 is the STOP type)
//! field      := i8:ttype i16be:id value
//! list, set  := i8:elem_ttype i32be:count value*count
//! map        := i8:key_ttype i8:val_ttype i32be:count (key value)*count
//! ttype      := 2 bool | 3 byte | 4 double | 6 i16 | 8 i32 | 10 i64 | 11 string
//!             | 12 struct | 13 map | 14 set | 15 list
//! ```
//!
//! The service (`scribe.thrift` extending `fb303.FacebookService`):
//!
//! ```text
//! enum ResultCode { OK = 0, TRY_LATER = 1 }
//! struct LogEntry { 1: string category, 2: string message }
//! service scribe extends fb303.FacebookService {
//!   ResultCode Log(1: list<LogEntry> messages);
//!   // conduit extension: idempotent batches for conduit's own publisher
//!   ResultCode LogBatch(1: string publisher_id, 2: i64 sequence, 3: list<LogEntry> messages);
//! }
//! // fb303: getName, getVersion, getStatus, getStatusDetails, getCounters,
//! //        getCounter(1: string key), aliveSince
//! ```
//!
//! The reply to method `M` is a message named `M` of type REPLY with the request's
//! seqid, carrying a result struct whose field 0 is the return value. A method this
//! module does not know (including fb303's `shutdown` and `reinitialize`: conduit
//! refuses remote shutdown) is answered with type EXCEPTION and a
//! `TApplicationException { 1: string message, 2: i32 type }`.
//!
//! Server side: [`read_frame`] → [`decode_request`] → [`encode_reply`]. Client side
//! (conduit's publisher, tests): [`encode_log_call`], [`encode_log_batch_call`],
//! [`encode_fb303_call`] → [`read_frame`] → [`decode_reply`].
//!
//! # Decoding guarantees
//! - Zero copy: categories, messages and other binary strings are [`Bytes::slice`]s of
//!   the frame; the only per-message allocations are the entry `Vec` and the method name.
//! - Hostile input never panics and never makes the decoder allocate more than the frame
//!   justifies: every length and element count is checked against the bytes left in the
//!   frame before anything is reserved, and unknown fields are skipped with a nesting
//!   limit of [`MAX_DEPTH`]. A list of entries must average at least
//!   [`MIN_ENTRY_WIRE_BYTES`] per entry (an entry with its category field, even
//!   empty, takes that much), so a decoded `Log` holds at most 8 bytes of `LogEntry`
//!   per byte of frame. Method names are at most [`MAX_METHOD_NAME_BYTES`].
//! - Both strict and old (non-strict) message headers are accepted; [`Request::strict`]
//!   records which one the client used so the reply can mirror it.
//!
//! # Framing guarantees
//! [`read_frame`] and [`read_frame_within`] never allocate from a length prefix:
//! the buffer grows as the frame's bytes arrive, in steps of [`FRAME_STEP_BYTES`],
//! and never reads past the frame's end by more than one read chunk.
//! [`read_frame_within`] asks its caller before each step (a memory budget); a frame it refuses is read to its end and dropped as it arrives,
//! keeping only its first [`FRAME_HEAD_BYTES`] (enough for the message header),
//! so the caller can still answer it ([`Frame::Refused`]).
//!
//! # Checked against a reference
//! `reference` (tests, or the `reference` cargo feature) speaks the same protocol
//! through the `thrift` crate; the differential tests encode every message kind with
//! one implementation and decode it with the other, both ways, on generated inputs.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

#[cfg(test)]
mod differential_tests;
#[cfg(any(test, feature = "reference"))]
#[doc(hidden)]
pub mod reference;
mod unframed;

pub use unframed::{read_first_word, read_message_within, Foreign, Transport};

/// The port Scribe servers listen on by default.
pub const DEFAULT_PORT: u16 = 1463;

/// The deepest nesting of structs and containers the decoder accepts (the arguments
/// struct of a call counts as level 1). Deeper input fails with
/// [`ProtocolError::TooDeep`].
pub const MAX_DEPTH: usize = 32;

/// `TApplicationException` type for a method the server does not implement.
pub const EXCEPTION_UNKNOWN_METHOD: i32 = 1;

/// `TApplicationException` type for a request the server could not decode.
pub const EXCEPTION_PROTOCOL_ERROR: i32 = 7;

/// Thrift type ids of `TBinaryProtocol`.
mod ttype {
    pub const STOP: u8 = 0;
    pub const BOOL: u8 = 2;
    pub const BYTE: u8 = 3;
    pub const DOUBLE: u8 = 4;
    pub const I16: u8 = 6;
    pub const I32: u8 = 8;
    pub const I64: u8 = 10;
    pub const STRING: u8 = 11;
    pub const STRUCT: u8 = 12;
    pub const MAP: u8 = 13;
    pub const SET: u8 = 14;
    pub const LIST: u8 = 15;
}

/// Thrift message types.
mod mtype {
    pub const CALL: u8 = 1;
    pub const REPLY: u8 = 2;
    pub const EXCEPTION: u8 = 3;
    pub const ONEWAY: u8 = 4;
}

const VERSION_1: u32 = 0x8001_0000;
const VERSION_MASK: u32 = 0xffff_0000;

/// Wire size of the smallest `LogEntry` a real client sends (both fields present, both
/// empty: 2 × (type 1 + id 2 + length 4) + stop 1). Used only to bound preallocation;
/// entries with missing fields are still accepted, the `Vec` then grows.
const TYPICAL_MIN_ENTRY_BYTES: usize = 15;

/// How much a [`read_frame`] read asks for at least, so that small frames arriving
/// back to back are read with few system calls.
const READ_CHUNK: usize = 16 * 1024;

/// Longest method name accepted; a longer one is
/// [`ProtocolError::MethodNameTooLong`] (real method names are a few bytes; a
/// megabyte name only fills logs and replies).
pub const MAX_METHOD_NAME_BYTES: usize = 256;

/// Fewest wire bytes an entry of a `list<LogEntry>` takes on average: a
/// `LogEntry` with its category field, even empty (type 1 + id 2 + length 4 +
/// STOP 1). A list claiming more entries than its bytes allow at this rate is
/// [`ProtocolError::ListTooLong`]: entries without fields, which no client sends,
/// would otherwise make a decoded call 64 times the size of its frame.
pub const MIN_ENTRY_WIRE_BYTES: usize = 8;

/// Payload bytes of a refused frame kept for its caller ([`Frame::Refused`]):
/// more than any message header (version 4 + name length 4 +
/// [`MAX_METHOD_NAME_BYTES`] + seqid 4).
pub const FRAME_HEAD_BYTES: usize = 512;

/// Step by which a frame's buffer grows while its bytes arrive: the buffer holds
/// at most this much more than what has arrived of the frame (reserved address
/// space, not resident memory).
pub const FRAME_STEP_BYTES: usize = 1 << 20;

/// Name of the method a [`Call::Log`] request uses.
const LOG: &str = "Log";
/// Name of the method a [`Call::LogBatch`] request uses.
const LOG_BATCH: &str = "LogBatch";

/// The sequence numbers a `LogBatch` may carry: `0 <= sequence < 2^62`. A
/// collector answers a call outside this range with a `TApplicationException`
/// (PROTOCOL_ERROR) and stores nothing of it.
pub const LOG_BATCH_SEQUENCES: std::ops::Range<i64> = 0..1 << 62;

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The frame's length prefix is larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length the prefix announced.
        len: usize,
        /// The maximum the reader accepts.
        max: usize,
    },
    /// The stream ended inside a frame (inside its 4-byte length prefix, in which case
    /// `expected` is 4, or inside its payload).
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    TruncatedFrame {
        /// Bytes the prefix (or payload) needed.
        expected: usize,
        /// Bytes that arrived before end of stream.
        got: usize,
    },
    /// A strict message header with a version other than `0x8001`.
    #[error("bad protocol version word {word:#010x}")]
    BadVersion {
        /// The first 4 bytes of the message.
        word: u32,
    },
    /// The message type does not fit the direction (a request must be CALL or ONEWAY,
    /// a reply REPLY or EXCEPTION).
    #[error("wrong message type {kind}")]
    WrongMessageType {
        /// The message type on the wire.
        kind: u8,
    },
    /// The message ended before a value that it announced.
    #[error("unexpected end of message at byte {at}")]
    UnexpectedEof {
        /// Offset in the frame of the value that did not fit.
        at: usize,
    },
    /// A known field (or the elements of a known container) has the wrong type.
    #[error("field {field} has unexpected type {kind}")]
    BadFieldType {
        /// The field id.
        field: i16,
        /// The Thrift type found on the wire.
        kind: u8,
    },
    /// A type id that `TBinaryProtocol` does not define.
    #[error("invalid thrift type {kind}")]
    InvalidType {
        /// The type id found on the wire.
        kind: u8,
    },
    /// Structs and containers nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {} levels", MAX_DEPTH)]
    TooDeep,
    /// A negative string length, element count or frame length.
    #[error("negative length {len}")]
    NegativeLength {
        /// The length on the wire.
        len: i32,
    },
    /// A container claims more elements than the rest of the frame can hold.
    #[error("collection of {len} elements does not fit in the rest of the frame")]
    ListTooLong {
        /// The element count on the wire.
        len: usize,
    },
    /// A field the method cannot do without is absent (`LogBatch`'s `publisher_id` or
    /// `sequence`, a reply's field 0).
    #[error("missing required field {field}")]
    MissingField {
        /// The field id.
        field: i16,
    },
    /// The method name is not UTF-8.
    #[error("method name is not valid utf-8")]
    BadMethodName,
    /// The method name is longer than [`MAX_METHOD_NAME_BYTES`].
    #[error("method name of {len} bytes exceeds the maximum of {max} bytes")]
    MethodNameTooLong {
        /// The name's length on the wire.
        len: usize,
        /// [`MAX_METHOD_NAME_BYTES`].
        max: usize,
    },
    /// A `ResultCode` reply with a value the enum does not define.
    #[error("unknown result code {value}")]
    UnknownResultCode {
        /// The value on the wire.
        value: i32,
    },
    /// A connection's first bytes are neither transport's (see [`Transport::detect`]).
    #[error("not a Thrift client: the first bytes {first:02x?} look like {}; expected the Thrift binary protocol, framed (a 4-byte length first) or unframed (0x80 0x01 0x00 0x01 first)", looks_like.as_str())]
    NotThrift {
        /// What the bytes look like.
        looks_like: Foreign,
        /// The connection's first four bytes.
        first: [u8; 4],
    },
    /// Reading from the stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One Scribe log entry: a category (conduit's topic) and an opaque payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LogEntry {
    /// The category, as sent (binary; not checked for UTF-8).
    pub category: Bytes,
    /// The payload, as sent (arbitrary bytes).
    pub message: Bytes,
}

/// Scribe's answer to `Log` and `LogBatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// The entries were accepted.
    Ok = 0,
    /// The entries were not accepted; the client should retry later.
    TryLater = 1,
}

impl ResultCode {
    /// The code for a wire value, or `None` for a value the enum does not define.
    pub fn from_i32(value: i32) -> Option<Self> {
        match value {
            0 => Some(Self::Ok),
            1 => Some(Self::TryLater),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// fb303's `fb_status`, the value of a `getStatus` reply ([`Reply::Status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FbStatus {
    /// The service is dead.
    Dead = 0,
    /// The service is starting.
    Starting = 1,
    /// The service is serving.
    Alive = 2,
    /// The service is stopping.
    Stopping = 3,
    /// The service has stopped.
    Stopped = 4,
    /// The service is serving with a problem (see `getStatusDetails`).
    Warning = 5,
}

impl FbStatus {
    /// The status for a wire value, or `None` for a value the enum does not define.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::Dead,
            1 => Self::Starting,
            2 => Self::Alive,
            3 => Self::Stopping,
            4 => Self::Stopped,
            5 => Self::Warning,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// The fb303 (`FacebookService`) methods conduit answers. `shutdown` and
/// `reinitialize` are deliberately absent: they decode as [`Call::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fb303Call {
    /// `string getName()`.
    GetName,
    /// `string getVersion()`.
    GetVersion,
    /// `fb_status getStatus()`.
    GetStatus,
    /// `string getStatusDetails()`.
    GetStatusDetails,
    /// `map<string, i64> getCounters()`.
    GetCounters,
    /// `i64 getCounter(1: string key)`; a missing key decodes as empty.
    GetCounter {
        /// The counter's name (binary, as sent).
        key: Bytes,
    },
    /// `i64 aliveSince()`.
    AliveSince,
}

impl Fb303Call {
    /// The Thrift method name of the call.
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::GetName => "getName",
            Self::GetVersion => "getVersion",
            Self::GetStatus => "getStatus",
            Self::GetStatusDetails => "getStatusDetails",
            Self::GetCounters => "getCounters",
            Self::GetCounter { .. } => "getCounter",
            Self::AliveSince => "aliveSince",
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `Log(1: list<LogEntry> messages)`; a missing list decodes as empty.
    Log {
        /// The entries, in wire order.
        entries: Vec<LogEntry>,
    },
    /// `LogBatch(1: string publisher_id, 2: i64 sequence, 3: list<LogEntry> messages)`:
    /// conduit's idempotent batch. `publisher_id` and `sequence` are required; a
    /// missing list decodes as empty.
    LogBatch {
        /// Identifies the publisher instance (binary, as sent).
        publisher_id: Bytes,
        /// The batch's sequence number within the publisher.
        sequence: i64,
        /// The entries, in wire order.
        entries: Vec<LogEntry>,
    },
    /// One of the fb303 methods conduit answers.
    Fb303(Fb303Call),
    /// Any other method (including fb303's `shutdown` and `reinitialize`); answer it
    /// with [`Reply::UnknownMethod`]. Its arguments are not decoded.
    Unknown {
        /// The method name.
        name: String,
    },
}

/// A decoded request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client's sequence id, echoed in the reply.
    pub seqid: i32,
    /// The method name.
    pub name: String,
    /// Whether the client used the strict (versioned) header; the reply must use the
    /// same form.
    pub strict: bool,
    /// Whether the message type was ONEWAY: the client expects no reply.
    pub oneway: bool,
    /// What the request asks for.
    pub call: Call,
}

impl Request {
    /// Appends the framed reply to this request to `out`: [`encode_reply`] with this
    /// request's name, seqid and header form.
    pub fn encode_reply(&self, reply: &Reply<'_>, out: &mut Vec<u8>) {
        encode_reply(&self.name, self.seqid, self.strict, reply, out);
    }
}

/// The answer a server sends, borrowed so encoding allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply<'a> {
    /// `Log` / `LogBatch`: field 0 as i32.
    ResultCode(ResultCode),
    /// `getName`, `getVersion`, `getStatusDetails`: field 0 as string.
    String(&'a str),
    /// `getCounter`, `aliveSince`: field 0 as i64.
    I64(i64),
    /// `getStatus`: field 0 as i32 (an `fb_status`, see [`FbStatus`]).
    Status(i32),
    /// `getCounters`: field 0 as `map<string, i64>`.
    Counters(&'a [(String, i64)]),
    /// An EXCEPTION message: `TApplicationException` UNKNOWN_METHOD (1) with the
    /// message `Invalid method name: '<name>'`, the name escaped and capped
    /// ([`crate::text::capped`]: a client's bytes are never echoed unbounded).
    UnknownMethod,
    /// An EXCEPTION message: `TApplicationException` PROTOCOL_ERROR (7) with this
    /// message.
    ProtocolError(&'a str),
}

/// A decoded reply's value (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyValue {
    /// An i32 result of any method but `getStatus`.
    ResultCode(ResultCode),
    /// An i32 result of `getStatus` (an `fb_status`, see [`FbStatus`]).
    Status(i32),
    /// A string result (binary, as sent).
    String(Bytes),
    /// An i64 result.
    I64(i64),
    /// A `map<string, i64>` result; keys that are not UTF-8 are converted lossily.
    Counters(Vec<(String, i64)>),
    /// An EXCEPTION message carrying a `TApplicationException`.
    Exception {
        /// The exception type ([`EXCEPTION_UNKNOWN_METHOD`], ...); 0 when absent.
        kind: i32,
        /// The exception message, converted lossily to UTF-8; empty when absent.
        message: String,
    },
}

/// A decoded reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedReply {
    /// The method name the reply answers.
    pub name: String,
    /// The sequence id, equal to the request's.
    pub seqid: i32,
    /// The result.
    pub value: ReplyValue,
}

/// A decoded message header, for a server that wants to answer a request whose body
/// does not decode (with [`Reply::ProtocolError`]) instead of closing the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeader {
    /// The method name.
    pub name: String,
    /// The message type (1 CALL, 2 REPLY, 3 EXCEPTION, 4 ONEWAY); not checked here.
    pub kind: u8,
    /// The sequence id.
    pub seqid: i32,
    /// Whether the header is strict (versioned).
    pub strict: bool,
}

impl MessageHeader {
    /// Whether a request with this header is ONEWAY (its client expects no reply);
    /// a message type other than CALL or ONEWAY is
    /// [`ProtocolError::WrongMessageType`].
    pub fn oneway(&self) -> Result<bool, ProtocolError> {
        match self.kind {
            mtype::CALL => Ok(false),
            mtype::ONEWAY => Ok(true),
            kind => Err(ProtocolError::WrongMessageType { kind }),
        }
    }
}

impl fmt::Display for MessageHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (type {}, seqid {}, {})",
            self.name,
            self.kind,
            self.seqid,
            if self.strict { "strict" } else { "old" }
        )
    }
}

// ---------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------

/// A bounds-checked cursor over a frame's payload.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return Err(ProtocolError::UnexpectedEof { at: self.pos });
        }
        let data: &'a [u8] = self.data;
        let s = &data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    #[inline]
    fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    #[inline]
    fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    #[inline]
    fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A non-negative i32 length or count.
    #[inline]
    fn size(&mut self) -> Result<usize, ProtocolError> {
        let len = self.i32()?;
        usize::try_from(len).map_err(|_| ProtocolError::NegativeLength { len })
    }

    /// A binary string, borrowed.
    #[inline]
    fn binary(&mut self) -> Result<&'a [u8], ProtocolError> {
        let n = self.size()?;
        self.take(n)
    }

    /// A binary string as a zero-copy slice of `frame` (whose payload this reader reads).
    #[inline]
    fn bytes(&mut self, frame: &Bytes) -> Result<Bytes, ProtocolError> {
        let n = self.size()?;
        let start = self.pos;
        self.take(n)?;
        Ok(frame.slice(start..start + n))
    }

    /// The next field's type and id, or `None` at the struct's STOP.
    #[inline]
    fn field(&mut self) -> Result<Option<(u8, i16)>, ProtocolError> {
        let kind = self.u8()?;
        if kind == ttype::STOP {
            return Ok(None);
        }
        Ok(Some((kind, self.i16()?)))
    }

    /// Checks that `count` elements of at least `min_elem` bytes each fit in the rest of
    /// the frame.
    #[inline]
    fn check_count(&self, count: usize, min_elem: usize) -> Result<(), ProtocolError> {
        if count.saturating_mul(min_elem) > self.remaining() {
            return Err(ProtocolError::ListTooLong { len: count });
        }
        Ok(())
    }

    /// A list (or set) header whose elements must be `expect` (when there are any);
    /// returns the element count, checked against the rest of the frame.
    fn list_of(&mut self, field: i16, expect: u8) -> Result<usize, ProtocolError> {
        let elem = self.u8()?;
        let count = self.size()?;
        if count > 0 && elem != expect {
            return Err(ProtocolError::BadFieldType { field, kind: elem });
        }
        self.check_count(count, min_size(expect)?)?;
        Ok(count)
    }

    /// Skips one value of type `kind` found at nesting level `depth`.
    fn skip(&mut self, kind: u8, depth: usize) -> Result<(), ProtocolError> {
        match kind {
            ttype::BOOL | ttype::BYTE => self.take(1).map(drop),
            ttype::I16 => self.take(2).map(drop),
            ttype::I32 => self.take(4).map(drop),
            ttype::I64 | ttype::DOUBLE => self.take(8).map(drop),
            ttype::STRING => self.binary().map(drop),
            ttype::STRUCT => self.skip_struct_body(deeper(depth)?),
            ttype::MAP => {
                let depth = deeper(depth)?;
                let key = self.u8()?;
                let value = self.u8()?;
                let count = self.size()?;
                if count == 0 {
                    return Ok(());
                }
                self.check_count(count, min_size(key)? + min_size(value)?)?;
                for _ in 0..count {
                    self.skip(key, depth)?;
                    self.skip(value, depth)?;
                }
                Ok(())
            }
            ttype::SET | ttype::LIST => {
                let depth = deeper(depth)?;
                let elem = self.u8()?;
                let count = self.size()?;
                if count == 0 {
                    return Ok(());
                }
                let min = min_size(elem)?;
                self.check_count(count, min)?;
                if let Some(fixed) = fixed_size(elem) {
                    return self.take(count * fixed).map(drop);
                }
                for _ in 0..count {
                    self.skip(elem, depth)?;
                }
                Ok(())
            }
            _ => Err(ProtocolError::InvalidType { kind }),
        }
    }

    /// Skips the fields of a struct at nesting level `depth`, through its STOP.
    fn skip_struct_body(&mut self, depth: usize) -> Result<(), ProtocolError> {
        while let Some((kind, _)) = self.field()? {
            self.skip(kind, depth)?;
        }
        Ok(())
    }

    fn header(&mut self) -> Result<MessageHeader, ProtocolError> {
        let first = self.i32()?;
        let (name, kind, strict) = if first < 0 {
            let word = first as u32;
            if word & VERSION_MASK != VERSION_1 {
                return Err(ProtocolError::BadVersion { word });
            }
            let len = self.size()?;
            (self.method_name(len)?, (word & 0xff) as u8, true)
        } else {
            // Old header: `first` is the name's length.
            let name = self.method_name(first as usize)?;
            (name, self.u8()?, false)
        };
        let seqid = self.i32()?;
        let name = std::str::from_utf8(name).map_err(|_| ProtocolError::BadMethodName)?;
        Ok(MessageHeader {
            name: name.to_owned(),
            kind,
            seqid,
            strict,
        })
    }

    /// A method name of `len` bytes, refused before it is read when it is longer
    /// than [`MAX_METHOD_NAME_BYTES`].
    fn method_name(&mut self, len: usize) -> Result<&'a [u8], ProtocolError> {
        if len > MAX_METHOD_NAME_BYTES {
            return Err(ProtocolError::MethodNameTooLong {
                len,
                max: MAX_METHOD_NAME_BYTES,
            });
        }
        self.take(len)
    }

    /// A `list<LogEntry>` (the list header included) of field `field`, found at
    /// nesting level `depth`.
    fn entries(
        &mut self,
        frame: &Bytes,
        field: i16,
        depth: usize,
    ) -> Result<Vec<LogEntry>, ProtocolError> {
        let list_depth = deeper(depth)?;
        let count = self.list_of(field, ttype::STRUCT)?;
        self.check_count(count, MIN_ENTRY_WIRE_BYTES)?;
        let entry_depth = deeper(list_depth)?;
        let mut entries = Vec::with_capacity(count.min(self.remaining() / TYPICAL_MIN_ENTRY_BYTES));
        for _ in 0..count {
            entries.push(self.entry(frame, entry_depth)?);
        }
        Ok(entries)
    }

    /// One `LogEntry` struct's fields, at nesting level `depth`.
    #[inline]
    fn entry(&mut self, frame: &Bytes, depth: usize) -> Result<LogEntry, ProtocolError> {
        let mut entry = LogEntry::default();
        while let Some((kind, id)) = self.field()? {
            match (id, kind) {
                (1, ttype::STRING) => entry.category = self.bytes(frame)?,
                (2, ttype::STRING) => entry.message = self.bytes(frame)?,
                (1 | 2, _) => return Err(ProtocolError::BadFieldType { field: id, kind }),
                _ => self.skip(kind, depth)?,
            }
        }
        Ok(entry)
    }
}

/// The nesting level inside a struct or container found at level `depth`.
#[inline]
fn deeper(depth: usize) -> Result<usize, ProtocolError> {
    if depth >= MAX_DEPTH {
        Err(ProtocolError::TooDeep)
    } else {
        Ok(depth + 1)
    }
}

/// The fewest wire bytes a value of type `kind` takes.
fn min_size(kind: u8) -> Result<usize, ProtocolError> {
    Ok(match kind {
        ttype::BOOL | ttype::BYTE | ttype::STRUCT => 1,
        ttype::I16 => 2,
        ttype::I32 | ttype::STRING => 4,
        ttype::SET | ttype::LIST => 5,
        ttype::MAP => 6,
        ttype::I64 | ttype::DOUBLE => 8,
        _ => return Err(ProtocolError::InvalidType { kind }),
    })
}

/// The wire size of a value of type `kind`, if every value of the type has the same.
fn fixed_size(kind: u8) -> Option<usize> {
    match kind {
        ttype::BOOL | ttype::BYTE => Some(1),
        ttype::I16 => Some(2),
        ttype::I32 => Some(4),
        ttype::I64 | ttype::DOUBLE => Some(8),
        _ => None,
    }
}

/// Checks a known field's type.
#[inline]
fn expect_type(field: i16, kind: u8, expect: u8) -> Result<(), ProtocolError> {
    if kind == expect {
        Ok(())
    } else {
        Err(ProtocolError::BadFieldType { field, kind })
    }
}

/// Decodes just the message header of a frame's payload (without the 4-byte length).
pub fn decode_header(frame: &[u8]) -> Result<MessageHeader, ProtocolError> {
    Reader::new(frame).header()
}

/// Decodes a request from a frame's payload (without the 4-byte length), as read by
/// [`read_frame`].
///
/// The message type must be CALL or ONEWAY. Unknown fields are skipped; a known field
/// with the wrong type is an error. Bytes after the arguments struct are ignored.
/// Categories and messages are zero-copy slices of `frame`.
pub fn decode_request(frame: Bytes) -> Result<Request, ProtocolError> {
    let mut r = Reader::new(&frame);
    let header = r.header()?;
    let oneway = header.oneway()?;
    // The arguments struct is at nesting level 1.
    let depth = deeper(0)?;
    let call = match header.name.as_str() {
        LOG => {
            let mut entries = Vec::new();
            while let Some((kind, id)) = r.field()? {
                match id {
                    1 => {
                        expect_type(1, kind, ttype::LIST)?;
                        entries = r.entries(&frame, 1, depth)?;
                    }
                    _ => r.skip(kind, depth)?,
                }
            }
            Call::Log { entries }
        }
        LOG_BATCH => {
            let (mut publisher_id, mut sequence, mut entries) = (None, None, Vec::new());
            while let Some((kind, id)) = r.field()? {
                match id {
                    1 => {
                        expect_type(1, kind, ttype::STRING)?;
                        publisher_id = Some(r.bytes(&frame)?);
                    }
                    2 => {
                        expect_type(2, kind, ttype::I64)?;
                        sequence = Some(r.i64()?);
                    }
                    3 => {
                        expect_type(3, kind, ttype::LIST)?;
                        entries = r.entries(&frame, 3, depth)?;
                    }
                    _ => r.skip(kind, depth)?,
                }
            }
            Call::LogBatch {
                publisher_id: publisher_id.ok_or(ProtocolError::MissingField { field: 1 })?,
                sequence: sequence.ok_or(ProtocolError::MissingField { field: 2 })?,
                entries,
            }
        }
        "getCounter" => {
            let mut key = Bytes::new();
            while let Some((kind, id)) = r.field()? {
                match id {
                    1 => {
                        expect_type(1, kind, ttype::STRING)?;
                        key = r.bytes(&frame)?;
                    }
                    _ => r.skip(kind, depth)?,
                }
            }
            Call::Fb303(Fb303Call::GetCounter { key })
        }
        name => {
            let call = match name {
                "getName" => Fb303Call::GetName,
                "getVersion" => Fb303Call::GetVersion,
                "getStatus" => Fb303Call::GetStatus,
                "getStatusDetails" => Fb303Call::GetStatusDetails,
                "getCounters" => Fb303Call::GetCounters,
                "aliveSince" => Fb303Call::AliveSince,
                // Includes fb303's shutdown and reinitialize: never obeyed remotely.
                _ => {
                    return Ok(Request {
                        seqid: header.seqid,
                        call: Call::Unknown {
                            name: header.name.clone(),
                        },
                        name: header.name,
                        strict: header.strict,
                        oneway,
                    })
                }
            };
            r.skip_struct_body(depth)?;
            Call::Fb303(call)
        }
    };
    Ok(Request {
        seqid: header.seqid,
        name: header.name,
        strict: header.strict,
        oneway,
        call,
    })
}

/// Decodes a reply from a frame's payload (without the 4-byte length), as read by
/// [`read_frame`].
///
/// The message type must be REPLY or EXCEPTION. A REPLY's field 0 is decoded by its
/// wire type: i32 as [`ReplyValue::Status`] when the method is `getStatus`, else as
/// [`ReplyValue::ResultCode`]; string, i64 and `map<string, i64>` as the matching
/// variant. Other fields (declared exceptions) are skipped; a REPLY without field 0
/// is [`ProtocolError::MissingField`].
pub fn decode_reply(frame: Bytes) -> Result<DecodedReply, ProtocolError> {
    let mut r = Reader::new(&frame);
    let header = r.header()?;
    let depth = deeper(0)?;
    let value = match header.kind {
        mtype::REPLY => {
            let mut value = None;
            while let Some((kind, id)) = r.field()? {
                if id != 0 {
                    r.skip(kind, depth)?;
                    continue;
                }
                value = Some(match kind {
                    ttype::I32 => {
                        let v = r.i32()?;
                        if header.name == "getStatus" {
                            ReplyValue::Status(v)
                        } else {
                            ReplyValue::ResultCode(
                                ResultCode::from_i32(v)
                                    .ok_or(ProtocolError::UnknownResultCode { value: v })?,
                            )
                        }
                    }
                    ttype::STRING => ReplyValue::String(r.bytes(&frame)?),
                    ttype::I64 => ReplyValue::I64(r.i64()?),
                    ttype::MAP => {
                        deeper(depth)?;
                        let (key, val) = (r.u8()?, r.u8()?);
                        let count = r.size()?;
                        if count > 0 && key != ttype::STRING {
                            return Err(ProtocolError::BadFieldType {
                                field: 0,
                                kind: key,
                            });
                        }
                        if count > 0 && val != ttype::I64 {
                            return Err(ProtocolError::BadFieldType {
                                field: 0,
                                kind: val,
                            });
                        }
                        r.check_count(count, 4 + 8)?;
                        let mut counters = Vec::with_capacity(count);
                        for _ in 0..count {
                            let name = String::from_utf8_lossy(r.binary()?).into_owned();
                            counters.push((name, r.i64()?));
                        }
                        ReplyValue::Counters(counters)
                    }
                    kind => return Err(ProtocolError::BadFieldType { field: 0, kind }),
                });
            }
            value.ok_or(ProtocolError::MissingField { field: 0 })?
        }
        mtype::EXCEPTION => {
            let (mut kind_value, mut message) = (0, String::new());
            while let Some((kind, id)) = r.field()? {
                match id {
                    1 => {
                        expect_type(1, kind, ttype::STRING)?;
                        message = String::from_utf8_lossy(r.binary()?).into_owned();
                    }
                    2 => {
                        expect_type(2, kind, ttype::I32)?;
                        kind_value = r.i32()?;
                    }
                    _ => r.skip(kind, depth)?,
                }
            }
            ReplyValue::Exception {
                kind: kind_value,
                message,
            }
        }
        kind => return Err(ProtocolError::WrongMessageType { kind }),
    };
    Ok(DecodedReply {
        name: header.name,
        seqid: header.seqid,
        value,
    })
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

/// Reserves the 4-byte frame length; returns where it is.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

/// Writes the length of the frame begun at `at`.
fn end_frame(out: &mut [u8], at: usize) {
    let len = i32::try_from(out.len() - at - 4).expect("thrift frame longer than 2 GiB");
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = i32::try_from(len).expect("thrift length over i32::MAX");
    out.extend_from_slice(&len.to_be_bytes());
}

fn put_binary(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len());
    out.extend_from_slice(s);
}

fn put_field(out: &mut Vec<u8>, kind: u8, id: i16) {
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
}

fn put_message_begin(out: &mut Vec<u8>, name: &str, kind: u8, seqid: i32, strict: bool) {
    if strict {
        out.extend_from_slice(&(VERSION_1 | u32::from(kind)).to_be_bytes());
        put_binary(out, name.as_bytes());
    } else {
        put_binary(out, name.as_bytes());
        out.push(kind);
    }
    out.extend_from_slice(&seqid.to_be_bytes());
}

fn put_entries(out: &mut Vec<u8>, field: i16, entries: &[(&[u8], &[u8])]) {
    put_field(out, ttype::LIST, field);
    out.push(ttype::STRUCT);
    put_len(out, entries.len());
    for (category, message) in entries {
        put_field(out, ttype::STRING, 1);
        put_binary(out, category);
        put_field(out, ttype::STRING, 2);
        put_binary(out, message);
        out.push(ttype::STOP);
    }
}

fn entries_wire_len(entries: &[(&[u8], &[u8])]) -> usize {
    entries
        .iter()
        .map(|(c, m)| TYPICAL_MIN_ENTRY_BYTES + c.len() + m.len())
        .sum::<usize>()
}

fn put_app_exception(out: &mut Vec<u8>, message: &[&[u8]], kind: i32) {
    put_field(out, ttype::STRING, 1);
    put_len(out, message.iter().map(|part| part.len()).sum());
    for part in message {
        out.extend_from_slice(part);
    }
    put_field(out, ttype::I32, 2);
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(ttype::STOP);
}

/// Appends a COMPLETE framed reply (4-byte length + payload) to `out`.
///
/// `req_name`, `seqid` and `strict` come from the [`Request`] being answered (see
/// [`Request::encode_reply`]). Value replies are REPLY messages with the value in
/// field 0; [`Reply::UnknownMethod`] and [`Reply::ProtocolError`] are EXCEPTION
/// messages carrying a `TApplicationException`.
///
/// # Panics
/// If a string or the frame exceeds `i32::MAX` bytes.
pub fn encode_reply(
    req_name: &str,
    seqid: i32,
    strict: bool,
    reply: &Reply<'_>,
    out: &mut Vec<u8>,
) {
    let at = begin_frame(out);
    match reply {
        Reply::UnknownMethod => {
            put_message_begin(out, req_name, mtype::EXCEPTION, seqid, strict);
            let name = crate::text::capped(req_name);
            let message: [&[u8]; 3] = [b"Invalid method name: '", name.as_bytes(), b"'"];
            put_app_exception(out, &message, EXCEPTION_UNKNOWN_METHOD);
        }
        Reply::ProtocolError(message) => {
            put_message_begin(out, req_name, mtype::EXCEPTION, seqid, strict);
            put_app_exception(out, &[message.as_bytes()], EXCEPTION_PROTOCOL_ERROR);
        }
        value => {
            put_message_begin(out, req_name, mtype::REPLY, seqid, strict);
            match value {
                Reply::ResultCode(code) => {
                    put_field(out, ttype::I32, 0);
                    out.extend_from_slice(&code.as_i32().to_be_bytes());
                }
                Reply::Status(status) => {
                    put_field(out, ttype::I32, 0);
                    out.extend_from_slice(&status.to_be_bytes());
                }
                Reply::String(s) => {
                    put_field(out, ttype::STRING, 0);
                    put_binary(out, s.as_bytes());
                }
                Reply::I64(v) => {
                    put_field(out, ttype::I64, 0);
                    out.extend_from_slice(&v.to_be_bytes());
                }
                Reply::Counters(counters) => {
                    put_field(out, ttype::MAP, 0);
                    out.push(ttype::STRING);
                    out.push(ttype::I64);
                    put_len(out, counters.len());
                    for (name, v) in counters.iter() {
                        put_binary(out, name.as_bytes());
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                }
                Reply::UnknownMethod | Reply::ProtocolError(_) => unreachable!("handled above"),
            }
            out.push(ttype::STOP);
        }
    }
    end_frame(out, at);
}

/// Appends a complete framed, strict `Log(messages)` CALL to `out`; `entries` are
/// `(category, message)` pairs.
///
/// # Panics
/// If a string, the entry count or the frame exceeds `i32::MAX`.
pub fn encode_log_call(seqid: i32, entries: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    out.reserve(4 + 12 + LOG.len() + 3 + 5 + entries_wire_len(entries) + 1);
    let at = begin_frame(out);
    put_message_begin(out, LOG, mtype::CALL, seqid, true);
    put_entries(out, 1, entries);
    out.push(ttype::STOP);
    end_frame(out, at);
}

/// Appends a complete framed, strict `LogBatch(publisher_id, sequence, messages)` CALL
/// to `out`; `entries` are `(category, message)` pairs.
///
/// # Panics
/// If a string, the entry count or the frame exceeds `i32::MAX`.
pub fn encode_log_batch_call(
    seqid: i32,
    publisher_id: &[u8],
    sequence: i64,
    entries: &[(&[u8], &[u8])],
    out: &mut Vec<u8>,
) {
    out.reserve(
        4 + 12 + LOG_BATCH.len() + 7 + publisher_id.len() + 11 + 8 + entries_wire_len(entries) + 1,
    );
    let at = begin_frame(out);
    put_message_begin(out, LOG_BATCH, mtype::CALL, seqid, true);
    put_field(out, ttype::STRING, 1);
    put_binary(out, publisher_id);
    put_field(out, ttype::I64, 2);
    out.extend_from_slice(&sequence.to_be_bytes());
    put_entries(out, 3, entries);
    out.push(ttype::STOP);
    end_frame(out, at);
}

/// Appends a complete framed, strict CALL of an fb303 method to `out`.
///
/// # Panics
/// If the counter key exceeds `i32::MAX` bytes.
pub fn encode_fb303_call(seqid: i32, call: &Fb303Call, out: &mut Vec<u8>) {
    let at = begin_frame(out);
    put_message_begin(out, call.method_name(), mtype::CALL, seqid, true);
    if let Fb303Call::GetCounter { key } = call {
        put_field(out, ttype::STRING, 1);
        put_binary(out, key);
    }
    out.push(ttype::STOP);
    end_frame(out, at);
}

// ---------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------

/// A frame read by [`read_frame_within`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The whole payload (without the 4-byte length).
    Whole(Bytes),
    /// The caller refused to hold the frame: its payload was read and dropped as
    /// it arrived, except for its first bytes.
    Refused {
        /// The first `min(len, FRAME_HEAD_BYTES)` payload bytes: the message
        /// header when the frame holds one ([`decode_header`]).
        head: Bytes,
        /// The payload's length.
        len: usize,
    },
}

/// Reads one frame of the framed transport and returns its payload (without the
/// 4-byte length), ready for [`decode_request`] or [`decode_reply`].
///
/// `buf` is the connection's read buffer: keep passing the same one. It may hold bytes
/// of the following frames after a call (reads ask for at most 16 KiB past a frame),
/// and the returned frame shares its allocation, so decoded entries are zero-copy
/// views of what was read. The buffer grows as the frame's bytes arrive, never from
/// the length prefix alone (see the [module docs](self#framing-guarantees)). The
/// function is cancel-safe as long as `buf` is kept: bytes read before a
/// cancellation stay in `buf` for the next call.
///
/// Returns `Ok(None)` on end of stream before the first byte of a frame;
/// [`ProtocolError::TruncatedFrame`] on end of stream inside one;
/// [`ProtocolError::NegativeLength`] or [`ProtocolError::FrameTooLarge`] (before
/// allocating anything for it) on a bad length prefix.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
    buf: &mut BytesMut,
) -> Result<Option<Bytes>, ProtocolError> {
    let len = match read_frame_len(r, max_frame_bytes, buf).await? {
        Some(len) => len,
        None => return Ok(None),
    };
    read_payload(r, buf, len, |_| true)
        .await
        .map(|admitted| Some(admitted.expect("every step is admitted")))
}

/// [`read_frame`] under a memory budget: before the frame's buffer may hold more of
/// its payload, `admit(n)` is asked whether the frame may hold `n` payload bytes in
/// all (`n` grows by at most [`FRAME_STEP_BYTES`] from one call to the next, and
/// the first call covers what already arrived). When `admit` says no, the rest of
/// the frame is read and dropped as it arrives and the frame is returned as
/// [`Frame::Refused`], so that the caller can answer it from its header.
///
/// Cancel-safe like [`read_frame`] until `admit` has refused; a cancellation while
/// a refused frame is being dropped leaves the stream inside that frame (close the
/// connection).
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
    buf: &mut BytesMut,
    admit: impl FnMut(usize) -> bool,
) -> Result<Option<Frame>, ProtocolError> {
    let len = match read_frame_len(r, max_frame_bytes, buf).await? {
        Some(len) => len,
        None => return Ok(None),
    };
    match read_payload(r, buf, len, admit).await? {
        Some(payload) => Ok(Some(Frame::Whole(payload))),
        None => drop_payload(r, buf, len).await.map(Some),
    }
}

/// Reads the next frame's 4-byte length prefix (left in `buf`) and checks it.
async fn read_frame_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
    buf: &mut BytesMut,
) -> Result<Option<usize>, ProtocolError> {
    let Some(first) = read_first_word(r, buf).await? else {
        return Ok(None);
    };
    let word = i32::from_be_bytes(first);
    let len = usize::try_from(word).map_err(|_| ProtocolError::NegativeLength { len: word })?;
    if len > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(Some(len))
}

/// Reads the payload of the frame whose prefix starts `buf`, growing `buf` step by
/// step as `admit` allows; `None` (with `buf` unchanged but for bytes read) when it
/// refuses a step.
async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    len: usize,
    mut admit: impl FnMut(usize) -> bool,
) -> Result<Option<Bytes>, ProtocolError> {
    let total = 4 + len;
    let mut admitted = None;
    loop {
        let have = buf.len().min(total) - 4;
        // What already arrived, plus one step.
        let want = (have + FRAME_STEP_BYTES).min(len);
        if admitted.is_none_or(|a| want > a) {
            if !admit(want) {
                return Ok(None);
            }
            admitted = Some(want);
        }
        if have == len {
            break;
        }
        let room = 4 + want - buf.len();
        buf.reserve(room);
        if read_at_most(r, buf, room).await? == 0 {
            return Err(ProtocolError::TruncatedFrame {
                expected: len,
                got: have,
            });
        }
    }
    buf.advance(4);
    let payload = buf.split_to(len).freeze();
    if len > LARGE_FRAME_BYTES {
        detach(buf);
    }
    Ok(Some(payload))
}

/// Reads the rest of a refused frame whose prefix starts `buf`, dropping its bytes
/// as they arrive but for its first [`FRAME_HEAD_BYTES`].
async fn drop_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    len: usize,
) -> Result<Frame, ProtocolError> {
    let head_len = len.min(FRAME_HEAD_BYTES);
    let truncated = |got| ProtocolError::TruncatedFrame { expected: len, got };
    while buf.len() < 4 + head_len {
        let room = 4 + head_len - buf.len();
        buf.reserve(room);
        if read_at_most(r, buf, room).await? == 0 {
            return Err(truncated(buf.len() - 4));
        }
    }
    buf.advance(4);
    // A copy: the head must not keep the buffer's allocation alive.
    let head = Bytes::copy_from_slice(&buf[..head_len]);
    buf.advance(head_len);
    let mut left = len - head_len;
    let here = left.min(buf.len());
    buf.advance(here);
    left -= here;
    if len > LARGE_FRAME_BYTES {
        detach(buf);
    }
    let mut sink = vec![0u8; left.min(DROP_CHUNK)];
    while left > 0 {
        let want = left.min(sink.len());
        let n = r.read(&mut sink[..want]).await?;
        if n == 0 {
            return Err(truncated(len - left));
        }
        left -= n;
    }
    Ok(Frame::Refused { head, len })
}

/// Most bytes of a refused frame read (and dropped) at once.
const DROP_CHUNK: usize = 64 * 1024;

/// Reads once into `buf`, at most `max` bytes (so that a read never takes much of
/// the next frame, which would not have been admitted).
async fn read_at_most<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<usize> {
    r.read_buf(&mut (&mut *buf).limit(max)).await
}

/// A frame larger than this gets a buffer allocation of its own: [`detach`] after
/// it.
const LARGE_FRAME_BYTES: usize = 4 * READ_CHUNK;

/// Moves the bytes read past a large frame (at most one read chunk) to a fresh
/// buffer, so that the connection's buffer does not keep the frame's allocation,
/// and its resident pages, alive after the frame is freed.
fn detach(buf: &mut BytesMut) {
    *buf = BytesMut::from(&buf[..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The payload of a single complete frame.
    fn payload(framed: &[u8]) -> Bytes {
        let len = u32::from_be_bytes(framed[..4].try_into().unwrap()) as usize;
        assert_eq!(framed.len(), 4 + len, "exactly one frame");
        Bytes::copy_from_slice(&framed[4..])
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn log_call(seqid: i32, entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_log_call(seqid, entries, &mut out);
        out
    }

    fn reply_bytes(name: &str, seqid: i32, strict: bool, reply: &Reply<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_reply(name, seqid, strict, reply, &mut out);
        out
    }

    fn entries_of(req: &Request) -> Vec<(Vec<u8>, Vec<u8>)> {
        let entries = match &req.call {
            Call::Log { entries } | Call::LogBatch { entries, .. } => entries,
            other => panic!("not a log call: {other:?}"),
        };
        entries
            .iter()
            .map(|e| (e.category.to_vec(), e.message.to_vec()))
            .collect()
    }

    /// A hand-built message payload: strict CALL header, then `body`.
    fn call_payload(name: &str, seqid: i32, body: &[u8]) -> Bytes {
        let mut out = Vec::new();
        put_message_begin(&mut out, name, mtype::CALL, seqid, true);
        out.extend_from_slice(body);
        Bytes::from(out)
    }

    // --- golden bytes -----------------------------------------------------------

    /// What a stock Thrift client sends for `Log([LogEntry("cat", "msg")])`, seqid 1,
    /// strict binary protocol, framed transport; assembled by hand.
    fn golden_log_request() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x2d]); // frame length: 45
        b.extend_from_slice(&[0x80, 0x01, 0x00, 0x01]); // version 1 | CALL
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x03]); // name length 3
        b.extend_from_slice(b"Log"); // name
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x01]); // seqid 1
        b.extend_from_slice(&[0x0f, 0x00, 0x01]); // field 1 (messages): LIST
        b.extend_from_slice(&[0x0c]); // element type STRUCT
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x01]); // 1 element
        b.extend_from_slice(&[0x0b, 0x00, 0x01]); //   field 1 (category): STRING
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x03]); //   length 3
        b.extend_from_slice(b"cat");
        b.extend_from_slice(&[0x0b, 0x00, 0x02]); //   field 2 (message): STRING
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x03]); //   length 3
        b.extend_from_slice(b"msg");
        b.push(0x00); //   STOP (end of LogEntry)
        b.push(0x00); // STOP (end of Log_args)
        assert_eq!(b.len(), 4 + 45);
        b
    }

    /// The OK reply a stock server sends to the request above; assembled by hand.
    fn golden_ok_reply() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x17]); // frame length: 23
        b.extend_from_slice(&[0x80, 0x01, 0x00, 0x02]); // version 1 | REPLY
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x03]); // name length 3
        b.extend_from_slice(b"Log");
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x01]); // seqid 1
        b.extend_from_slice(&[0x08, 0x00, 0x00]); // field 0 (success): I32
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]); // ResultCode.OK
        b.push(0x00); // STOP (end of Log_result)
        assert_eq!(b.len(), 4 + 23);
        b
    }

    #[test]
    fn golden_log_request_decodes_and_encodes() {
        let golden = golden_log_request();
        assert_eq!(log_call(1, &[(b"cat", b"msg")]), golden);
        let req = decode_request(payload(&golden)).unwrap();
        assert_eq!(
            req,
            Request {
                seqid: 1,
                name: "Log".into(),
                strict: true,
                oneway: false,
                call: Call::Log {
                    entries: vec![LogEntry {
                        category: Bytes::from_static(b"cat"),
                        message: Bytes::from_static(b"msg"),
                    }],
                },
            }
        );
    }

    #[test]
    fn golden_ok_reply_encodes_and_decodes() {
        let golden = golden_ok_reply();
        assert_eq!(
            reply_bytes("Log", 1, true, &Reply::ResultCode(ResultCode::Ok)),
            golden
        );
        let reply = decode_reply(payload(&golden)).unwrap();
        assert_eq!(
            reply,
            DecodedReply {
                name: "Log".into(),
                seqid: 1,
                value: ReplyValue::ResultCode(ResultCode::Ok),
            }
        );
    }

    /// Produced once by thriftpy2 0.7.1 (an independent implementation): a `TClient`
    /// over `TBinaryProtocol` + `TFramedTransport` + `TMemoryBuffer` sent the request,
    /// and a `TProcessor` with a handler answered it (IDL as in the module docs; the
    /// handler returned OK / TRY_LATER / "conduit" / ALIVE / {"received": 7} / -2 /
    /// 1700000000). Old-header rows used `strict_write=False` on both sides.
    struct Golden {
        request: &'static str,
        reply: &'static str,
    }

    const THRIFTPY_LOG: Golden = Golden {
        request: "0000002d80010001000000034c6f67000000010f00010c000000010b00010000000363\
                  61740b0002000000036d73670000",
        reply: "0000001780010002000000034c6f67000000010800000000000000",
    };
    const THRIFTPY_LOG_OLD_HEADER: Golden = Golden {
        request: "00000025000000034c6f6701000000050f00010c000000010b000100000001610b000200\
                  0000000000",
        reply: "00000014000000034c6f6702000000050800000000000000",
    };
    const THRIFTPY_LOG_BATCH: Golden = Golden {
        request: "0000004780010001000000084c6f674261746368000000090b0001000000057075622d31\
                  0a0002000000000000002a0f00030c000000010b000100000001740b000200000003780a\
                  790000",
        reply: "0000001c80010002000000084c6f674261746368000000090800000000000100",
    };
    const THRIFTPY_GET_COUNTERS: Golden = Golden {
        request: "00000018800100010000000b676574436f756e746572730000000300",
        reply: "00000035800100020000000b676574436f756e74657273000000030d00000b0a00000001\
                000000087265636569766564000000000000000700",
    };
    const THRIFTPY_GET_COUNTER: Golden = Golden {
        request: "0000001f800100010000000a676574436f756e746572000000040b0001000000016b00",
        reply: "00000022800100020000000a676574436f756e746572000000040a0000fffffffffffffffe00",
    };
    const THRIFTPY_GET_STATUS: Golden = Golden {
        request: "0000001680010001000000096765745374617475730000000600",
        reply: "0000001d8001000200000009676574537461747573000000060800000000000200",
    };
    const THRIFTPY_GET_NAME: Golden = Golden {
        request: "0000001480010001000000076765744e616d650000000700",
        reply: "0000002280010002000000076765744e616d65000000070b000000000007636f6e647569\
                7400",
    };
    const THRIFTPY_ALIVE_SINCE: Golden = Golden {
        request: "00000017800100010000000a616c69766553696e63650000000800",
        reply: "00000022800100020000000a616c69766553696e6365000000080a0000000000006553f100\
                00",
    };
    /// thriftpy2's server answering `shutdown`, a method its IDL lacks.
    const THRIFTPY_SHUTDOWN: Golden = Golden {
        request: "00000015800100010000000873687574646f776e0000000b00",
        reply: "0000001c800100030000000873687574646f776e0000000b0800020000000100",
    };

    fn hexs(s: &str) -> Vec<u8> {
        hex(&s.split_whitespace().collect::<String>())
    }

    #[test]
    fn thriftpy2_log_is_wire_identical() {
        let g = THRIFTPY_LOG;
        assert_eq!(hexs(g.request), golden_log_request());
        assert_eq!(hexs(g.reply), golden_ok_reply());
        assert_eq!(log_call(1, &[(b"cat", b"msg")]), hexs(g.request));
        let req = decode_request(payload(&hexs(g.request))).unwrap();
        let mut out = Vec::new();
        req.encode_reply(&Reply::ResultCode(ResultCode::Ok), &mut out);
        assert_eq!(out, hexs(g.reply));
    }

    #[test]
    fn thriftpy2_old_header_is_mirrored() {
        let g = THRIFTPY_LOG_OLD_HEADER;
        let req = decode_request(payload(&hexs(g.request))).unwrap();
        assert!(!req.strict);
        assert_eq!((req.seqid, req.name.as_str()), (5, "Log"));
        assert_eq!(entries_of(&req), vec![(b"a".to_vec(), Vec::new())]);
        let mut out = Vec::new();
        req.encode_reply(&Reply::ResultCode(ResultCode::Ok), &mut out);
        assert_eq!(out, hexs(g.reply));
        let reply = decode_reply(payload(&out)).unwrap();
        assert_eq!(reply.value, ReplyValue::ResultCode(ResultCode::Ok));
        assert_eq!(reply.seqid, 5);
    }

    #[test]
    fn thriftpy2_log_batch_is_wire_identical() {
        let g = THRIFTPY_LOG_BATCH;
        let mut out = Vec::new();
        encode_log_batch_call(9, b"pub-1", 42, &[(b"t", b"x\ny")], &mut out);
        assert_eq!(out, hexs(g.request));
        let req = decode_request(payload(&out)).unwrap();
        match &req.call {
            Call::LogBatch {
                publisher_id,
                sequence,
                ..
            } => assert_eq!((&publisher_id[..], *sequence), (&b"pub-1"[..], 42)),
            other => panic!("{other:?}"),
        }
        assert_eq!(entries_of(&req), vec![(b"t".to_vec(), b"x\ny".to_vec())]);
        let mut out = Vec::new();
        req.encode_reply(&Reply::ResultCode(ResultCode::TryLater), &mut out);
        assert_eq!(out, hexs(g.reply));
        assert_eq!(
            decode_reply(payload(&out)).unwrap().value,
            ReplyValue::ResultCode(ResultCode::TryLater)
        );
    }

    #[test]
    fn thriftpy2_fb303_is_wire_identical() {
        let counters = [("received".to_string(), 7)];
        let cases: [(Golden, Fb303Call, Reply<'_>, ReplyValue); 5] = [
            (
                THRIFTPY_GET_COUNTERS,
                Fb303Call::GetCounters,
                Reply::Counters(&counters),
                ReplyValue::Counters(counters.to_vec()),
            ),
            (
                THRIFTPY_GET_COUNTER,
                Fb303Call::GetCounter {
                    key: Bytes::from_static(b"k"),
                },
                Reply::I64(-2),
                ReplyValue::I64(-2),
            ),
            (
                THRIFTPY_GET_STATUS,
                Fb303Call::GetStatus,
                Reply::Status(FbStatus::Alive.as_i32()),
                ReplyValue::Status(2),
            ),
            (
                THRIFTPY_GET_NAME,
                Fb303Call::GetName,
                Reply::String("conduit"),
                ReplyValue::String(Bytes::from_static(b"conduit")),
            ),
            (
                THRIFTPY_ALIVE_SINCE,
                Fb303Call::AliveSince,
                Reply::I64(1_700_000_000),
                ReplyValue::I64(1_700_000_000),
            ),
        ];
        let mut seqid = 2;
        for (golden, call, reply, value) in cases {
            seqid += 1;
            if seqid == 5 {
                seqid += 1; // thriftpy2's seqid 5 was the old-header Log.
            }
            let mut out = Vec::new();
            encode_fb303_call(seqid, &call, &mut out);
            assert_eq!(out, hexs(golden.request), "{call:?}");
            let req = decode_request(payload(&out)).unwrap();
            assert_eq!(req.call, Call::Fb303(call.clone()));
            let mut out = Vec::new();
            req.encode_reply(&reply, &mut out);
            assert_eq!(out, hexs(golden.reply), "{call:?}");
            let decoded = decode_reply(payload(&out)).unwrap();
            assert_eq!((decoded.seqid, decoded.value), (seqid, value));
        }
    }

    #[test]
    fn thriftpy2_unknown_method_exception_decodes() {
        let g = THRIFTPY_SHUTDOWN;
        let req = decode_request(payload(&hexs(g.request))).unwrap();
        assert_eq!(
            req.call,
            Call::Unknown {
                name: "shutdown".into()
            }
        );
        assert_eq!(req.seqid, 11);
        // thriftpy2 omits the message; only the type is sent.
        let reply = decode_reply(payload(&hexs(g.reply))).unwrap();
        assert_eq!(
            reply,
            DecodedReply {
                name: "shutdown".into(),
                seqid: 11,
                value: ReplyValue::Exception {
                    kind: EXCEPTION_UNKNOWN_METHOD,
                    message: String::new(),
                },
            }
        );
    }

    // --- round trips -------------------------------------------------------------

    #[test]
    fn log_round_trip_with_binary_payloads() {
        let invalid_utf8: &[u8] = &[0xff, 0xfe, 0x80, 0xc3];
        let entries: Vec<(&[u8], &[u8])> = vec![
            (b"topic", b"hello"),
            (b"", b""),
            (b"t", b"with\0nul"),
            (b"t", b"line\nbreak\r\n"),
            (invalid_utf8, invalid_utf8),
            (b"\0", &[0u8; 300]),
        ];
        let frame = payload(&log_call(-7, &entries));
        let req = decode_request(frame.clone()).unwrap();
        assert_eq!((req.seqid, req.strict, req.oneway), (-7, true, false));
        let got = entries_of(&req);
        let want: Vec<_> = entries
            .iter()
            .map(|(c, m)| (c.to_vec(), m.to_vec()))
            .collect();
        assert_eq!(got, want);
        // Zero copy: the payloads point into the frame.
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        if let Call::Log { entries } = &req.call {
            assert!(range.contains(&(entries[0].message.as_ptr() as usize)));
            assert!(range.contains(&(entries[4].category.as_ptr() as usize)));
        }
    }

    #[test]
    fn log_with_no_entries_and_missing_field() {
        let req = decode_request(payload(&log_call(1, &[]))).unwrap();
        assert_eq!(req.call, Call::Log { entries: vec![] });
        let req = decode_request(call_payload("Log", 1, &[ttype::STOP])).unwrap();
        assert_eq!(req.call, Call::Log { entries: vec![] });
    }

    #[test]
    fn log_batch_round_trip_and_required_fields() {
        let mut out = Vec::new();
        encode_log_batch_call(
            3,
            b"\xffpub",
            i64::MIN,
            &[(b"a", b"1"), (b"b", b"")],
            &mut out,
        );
        let req = decode_request(payload(&out)).unwrap();
        assert_eq!(
            req.call,
            Call::LogBatch {
                publisher_id: Bytes::from_static(b"\xffpub"),
                sequence: i64::MIN,
                entries: vec![
                    LogEntry {
                        category: Bytes::from_static(b"a"),
                        message: Bytes::from_static(b"1"),
                    },
                    LogEntry {
                        category: Bytes::from_static(b"b"),
                        message: Bytes::new(),
                    },
                ],
            }
        );

        // Without entries: an empty batch.
        let mut body = Vec::new();
        put_field(&mut body, ttype::STRING, 1);
        put_binary(&mut body, b"p");
        put_field(&mut body, ttype::I64, 2);
        body.extend_from_slice(&5i64.to_be_bytes());
        body.push(ttype::STOP);
        let req = decode_request(call_payload("LogBatch", 1, &body)).unwrap();
        assert!(
            matches!(req.call, Call::LogBatch { sequence: 5, ref entries, .. } if entries.is_empty())
        );

        // Without a sequence or publisher: refused.
        let mut body = Vec::new();
        put_field(&mut body, ttype::STRING, 1);
        put_binary(&mut body, b"p");
        body.push(ttype::STOP);
        assert!(matches!(
            decode_request(call_payload("LogBatch", 1, &body)),
            Err(ProtocolError::MissingField { field: 2 })
        ));
        let mut body = Vec::new();
        put_field(&mut body, ttype::I64, 2);
        body.extend_from_slice(&5i64.to_be_bytes());
        body.push(ttype::STOP);
        assert!(matches!(
            decode_request(call_payload("LogBatch", 1, &body)),
            Err(ProtocolError::MissingField { field: 1 })
        ));
    }

    #[test]
    fn every_fb303_call_round_trips() {
        let calls = [
            Fb303Call::GetName,
            Fb303Call::GetVersion,
            Fb303Call::GetStatus,
            Fb303Call::GetStatusDetails,
            Fb303Call::GetCounters,
            Fb303Call::GetCounter {
                key: Bytes::from_static(b"queue.depth\xff"),
            },
            Fb303Call::GetCounter { key: Bytes::new() },
            Fb303Call::AliveSince,
        ];
        for (i, call) in calls.into_iter().enumerate() {
            let mut out = Vec::new();
            encode_fb303_call(i as i32, &call, &mut out);
            let req = decode_request(payload(&out)).unwrap();
            assert_eq!(req.name, call.method_name());
            assert_eq!(req.seqid, i as i32);
            assert_eq!(req.call, Call::Fb303(call));
        }
        // getCounter without its key decodes with an empty key.
        let req = decode_request(call_payload("getCounter", 1, &[ttype::STOP])).unwrap();
        assert_eq!(
            req.call,
            Call::Fb303(Fb303Call::GetCounter { key: Bytes::new() })
        );
    }

    #[test]
    fn every_reply_variant_round_trips() {
        let counters = vec![
            ("a".to_string(), 1),
            ("b.c".to_string(), i64::MAX),
            ("".to_string(), -1),
        ];
        let cases: Vec<(&str, Reply<'_>, ReplyValue)> = vec![
            (
                "Log",
                Reply::ResultCode(ResultCode::Ok),
                ReplyValue::ResultCode(ResultCode::Ok),
            ),
            (
                "LogBatch",
                Reply::ResultCode(ResultCode::TryLater),
                ReplyValue::ResultCode(ResultCode::TryLater),
            ),
            (
                "getVersion",
                Reply::String("1.2.3"),
                ReplyValue::String(Bytes::from_static(b"1.2.3")),
            ),
            (
                "getStatusDetails",
                Reply::String(""),
                ReplyValue::String(Bytes::new()),
            ),
            (
                "aliveSince",
                Reply::I64(i64::MIN),
                ReplyValue::I64(i64::MIN),
            ),
            ("getStatus", Reply::Status(5), ReplyValue::Status(5)),
            (
                "getCounters",
                Reply::Counters(&counters),
                ReplyValue::Counters(counters.clone()),
            ),
            (
                "getCounters",
                Reply::Counters(&[]),
                ReplyValue::Counters(vec![]),
            ),
            (
                "frobnicate",
                Reply::UnknownMethod,
                ReplyValue::Exception {
                    kind: EXCEPTION_UNKNOWN_METHOD,
                    message: "Invalid method name: 'frobnicate'".into(),
                },
            ),
            (
                "Log",
                Reply::ProtocolError("bad list"),
                ReplyValue::Exception {
                    kind: EXCEPTION_PROTOCOL_ERROR,
                    message: "bad list".into(),
                },
            ),
        ];
        for strict in [true, false] {
            for (name, reply, value) in &cases {
                let out = reply_bytes(name, 42, strict, reply);
                let decoded = decode_reply(payload(&out)).unwrap();
                assert_eq!(
                    decoded,
                    DecodedReply {
                        name: name.to_string(),
                        seqid: 42,
                        value: value.clone(),
                    },
                    "{reply:?} strict={strict}"
                );
                let header = decode_header(&out[4..]).unwrap();
                assert_eq!(header.strict, strict);
                assert_eq!(
                    header.kind,
                    if matches!(reply, Reply::UnknownMethod | Reply::ProtocolError(_)) {
                        mtype::EXCEPTION
                    } else {
                        mtype::REPLY
                    }
                );
            }
        }
    }

    #[test]
    fn old_header_requests_decode_and_replies_mirror() {
        // Old header: i32 name length, name, i8 type, i32 seqid.
        let mut p = Vec::new();
        put_message_begin(&mut p, "getName", mtype::CALL, 77, false);
        p.push(ttype::STOP);
        assert_eq!(&p[..4], &[0, 0, 0, 7]);
        let req = decode_request(Bytes::from(p)).unwrap();
        assert_eq!(
            (req.strict, req.seqid, req.call.clone()),
            (false, 77, Call::Fb303(Fb303Call::GetName))
        );
        let mut out = Vec::new();
        req.encode_reply(&Reply::String("conduit"), &mut out);
        let mut want = Vec::new();
        put_binary(&mut want, b"getName");
        want.push(mtype::REPLY);
        want.extend_from_slice(&77i32.to_be_bytes());
        put_field(&mut want, ttype::STRING, 0);
        put_binary(&mut want, b"conduit");
        want.push(ttype::STOP);
        assert_eq!(out, framed(&want));

        // Strict request → strict reply.
        let req = decode_request(payload(&log_call(1, &[]))).unwrap();
        let mut out = Vec::new();
        req.encode_reply(&Reply::ResultCode(ResultCode::Ok), &mut out);
        assert_eq!(&out[4..8], &[0x80, 0x01, 0x00, 0x02]);
    }

    #[test]
    fn unknown_methods_decode_as_unknown() {
        for name in ["shutdown", "reinitialize", "getOption", "frobnicate", ""] {
            // Arguments of an unknown method are not decoded (even garbage).
            let req = decode_request(call_payload(name, 3, &[0xee, 0xee])).unwrap();
            assert_eq!(req.call, Call::Unknown { name: name.into() });
            assert_eq!(req.name, name);
        }
        // ONEWAY is recorded (fb303's shutdown is oneway).
        let mut p = Vec::new();
        put_message_begin(&mut p, "shutdown", mtype::ONEWAY, 1, true);
        p.push(ttype::STOP);
        let req = decode_request(Bytes::from(p)).unwrap();
        assert!(req.oneway);
        assert_eq!(
            req.call,
            Call::Unknown {
                name: "shutdown".into()
            }
        );
        // The reply for an unknown method is an EXCEPTION with UNKNOWN_METHOD.
        let out = reply_bytes("shutdown", 1, true, &Reply::UnknownMethod);
        assert_eq!(&out[4..8], &[0x80, 0x01, 0x00, 0x03]);
    }

    #[test]
    fn unknown_fields_of_every_type_are_skipped() {
        // One unknown field of each type, in the args struct and inside a LogEntry.
        let mut unknown = Vec::new();
        put_field(&mut unknown, ttype::BOOL, 10);
        unknown.push(1);
        put_field(&mut unknown, ttype::BYTE, 11);
        unknown.push(0x7f);
        put_field(&mut unknown, ttype::DOUBLE, 12);
        unknown.extend_from_slice(&1.5f64.to_be_bytes());
        put_field(&mut unknown, ttype::I16, 13);
        unknown.extend_from_slice(&[0, 1]);
        put_field(&mut unknown, ttype::I32, 14);
        unknown.extend_from_slice(&[0, 0, 0, 1]);
        put_field(&mut unknown, ttype::I64, 15);
        unknown.extend_from_slice(&[0; 8]);
        put_field(&mut unknown, ttype::STRING, 16);
        put_binary(&mut unknown, b"skip me");
        put_field(&mut unknown, ttype::STRUCT, 17);
        put_field(&mut unknown, ttype::STRING, 1);
        put_binary(&mut unknown, b"nested");
        unknown.push(ttype::STOP);
        put_field(&mut unknown, ttype::MAP, 18);
        unknown.extend_from_slice(&[ttype::STRING, ttype::LIST, 0, 0, 0, 1]);
        put_binary(&mut unknown, b"k");
        unknown.extend_from_slice(&[ttype::I32, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        put_field(&mut unknown, ttype::SET, 19);
        unknown.extend_from_slice(&[ttype::I64, 0, 0, 0, 2]);
        unknown.extend_from_slice(&[0; 16]);
        put_field(&mut unknown, ttype::LIST, 20);
        unknown.extend_from_slice(&[ttype::STRUCT, 0, 0, 0, 2, ttype::STOP, ttype::STOP]);
        put_field(&mut unknown, ttype::LIST, 21);
        unknown.extend_from_slice(&[0xee, 0, 0, 0, 0]); // empty: element type unchecked

        let mut body = unknown.clone();
        put_field(&mut body, ttype::LIST, 1);
        body.extend_from_slice(&[ttype::STRUCT, 0, 0, 0, 1]);
        body.extend_from_slice(&unknown);
        put_field(&mut body, ttype::STRING, 2);
        put_binary(&mut body, b"m");
        body.extend_from_slice(&unknown);
        body.push(ttype::STOP); // end of LogEntry
        body.extend_from_slice(&unknown);
        body.push(ttype::STOP); // end of args
        body.extend_from_slice(b"trailing bytes are ignored");
        let req = decode_request(call_payload("Log", 1, &body)).unwrap();
        assert_eq!(entries_of(&req), vec![(Vec::new(), b"m".to_vec())]);
    }

    // --- garbage -----------------------------------------------------------------

    #[test]
    fn every_truncation_is_an_error() {
        let req = log_call(9, &[(b"cat", b"msg"), (b"", b"\0\xff")]);
        let mut batch = Vec::new();
        encode_log_batch_call(1, b"p", 2, &[(b"c", b"m")], &mut batch);
        let counters = [("x".to_string(), 1)];
        for framed in [
            req,
            batch,
            reply_bytes("Log", 1, true, &Reply::ResultCode(ResultCode::Ok)),
            reply_bytes("Log", 1, false, &Reply::ResultCode(ResultCode::Ok)),
            reply_bytes("getCounters", 1, true, &Reply::Counters(&counters)),
            reply_bytes("x", 1, true, &Reply::UnknownMethod),
        ] {
            let full = payload(&framed);
            let is_request = decode_request(full.clone()).is_ok();
            assert!(is_request || decode_reply(full.clone()).is_ok());
            for cut in 0..full.len() {
                let prefix = full.slice(..cut);
                if is_request {
                    assert!(decode_request(prefix).is_err(), "cut at {cut}");
                } else {
                    assert!(decode_reply(prefix).is_err(), "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn huge_counts_fail_without_allocating() {
        // A list claiming 2^31 - 1 entries in a tiny frame.
        let mut body = Vec::new();
        put_field(&mut body, ttype::LIST, 1);
        body.extend_from_slice(&[ttype::STRUCT, 0x7f, 0xff, 0xff, 0xff]);
        body.extend_from_slice(&[0; 64]);
        assert!(matches!(
            decode_request(call_payload("Log", 1, &body)),
            Err(ProtocolError::ListTooLong { len: 0x7fff_ffff })
        ));
        // The same in an unknown field, for every container kind.
        for header in [
            &[ttype::LIST, 0, 9, ttype::BOOL, 0x7f, 0xff, 0xff, 0xff][..],
            &[ttype::SET, 0, 9, ttype::STRUCT, 0x7f, 0xff, 0xff, 0xff][..],
            &[
                ttype::MAP,
                0,
                9,
                ttype::BYTE,
                ttype::BYTE,
                0x7f,
                0xff,
                0xff,
                0xff,
            ][..],
        ] {
            let mut body = header.to_vec();
            body.extend_from_slice(&[0; 64]);
            assert!(matches!(
                decode_request(call_payload("getName", 1, &body)),
                Err(ProtocolError::ListTooLong { .. })
            ));
        }
        // Negative counts and lengths.
        let mut body = Vec::new();
        put_field(&mut body, ttype::LIST, 1);
        body.extend_from_slice(&[ttype::STRUCT, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_request(call_payload("Log", 1, &body)),
            Err(ProtocolError::NegativeLength { len: -1 })
        ));
        // A string longer than the frame.
        let mut body = Vec::new();
        put_field(&mut body, ttype::STRING, 1);
        body.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, b'x']);
        assert!(matches!(
            decode_request(call_payload("getCounter", 1, &body)),
            Err(ProtocolError::UnexpectedEof { .. })
        ));
        // A reply map claiming more counters than fit.
        let mut p = Vec::new();
        put_message_begin(&mut p, "getCounters", mtype::REPLY, 1, true);
        put_field(&mut p, ttype::MAP, 0);
        p.extend_from_slice(&[ttype::STRING, ttype::I64, 0x10, 0, 0, 0]);
        p.extend_from_slice(&[0; 100]);
        assert!(matches!(
            decode_reply(Bytes::from(p)),
            Err(ProtocolError::ListTooLong { len: 0x1000_0000 })
        ));
    }

    /// Args with an unknown field holding `levels` nested structs.
    fn nested_structs(levels: usize) -> Bytes {
        let mut body = Vec::new();
        for _ in 0..levels {
            put_field(&mut body, ttype::STRUCT, 99);
        }
        body.extend_from_slice(&vec![ttype::STOP; levels + 1]);
        call_payload("Log", 1, &body)
    }

    #[test]
    fn nesting_is_limited() {
        // Args struct (level 1) + 31 nested structs = 32 levels: fine.
        assert!(decode_request(nested_structs(MAX_DEPTH - 1)).is_ok());
        assert!(matches!(
            decode_request(nested_structs(MAX_DEPTH)),
            Err(ProtocolError::TooDeep)
        ));
        assert!(matches!(
            decode_request(nested_structs(100_000)),
            Err(ProtocolError::TooDeep)
        ));
        // Lists of lists count too.
        let mut body = Vec::new();
        put_field(&mut body, ttype::LIST, 99);
        for _ in 0..40 {
            body.extend_from_slice(&[ttype::LIST, 0, 0, 0, 1]);
        }
        body.extend_from_slice(&[ttype::BYTE, 0, 0, 0, 0]);
        assert!(matches!(
            decode_request(call_payload("Log", 1, &body)),
            Err(ProtocolError::TooDeep)
        ));
    }

    #[test]
    fn wrong_message_types_and_versions() {
        let mut p = Vec::new();
        put_message_begin(&mut p, "Log", mtype::REPLY, 1, true);
        p.push(ttype::STOP);
        assert!(matches!(
            decode_request(Bytes::from(p.clone())),
            Err(ProtocolError::WrongMessageType { kind: 2 })
        ));
        let call = payload(&log_call(1, &[]));
        assert!(matches!(
            decode_reply(call),
            Err(ProtocolError::WrongMessageType { kind: 1 })
        ));
        let mut bad = p.clone();
        bad[1] = 0x02; // version 2
        assert!(matches!(
            decode_request(Bytes::from(bad)),
            Err(ProtocolError::BadVersion { word: 0x8002_0002 })
        ));
        // Known field with the wrong type.
        let mut body = Vec::new();
        put_field(&mut body, ttype::STRING, 1);
        put_binary(&mut body, b"not a list");
        body.push(ttype::STOP);
        assert!(matches!(
            decode_request(call_payload("Log", 1, &body)),
            Err(ProtocolError::BadFieldType { field: 1, kind: 11 })
        ));
        // List of the wrong element type.
        let mut body = Vec::new();
        put_field(&mut body, ttype::LIST, 1);
        body.extend_from_slice(&[ttype::I32, 0, 0, 0, 1, 0, 0, 0, 1, ttype::STOP]);
        assert!(matches!(
            decode_request(call_payload("Log", 1, &body)),
            Err(ProtocolError::BadFieldType { field: 1, kind: 8 })
        ));
        // An undefined type id.
        let body = [7, 0, 5, ttype::STOP];
        assert!(matches!(
            decode_request(call_payload("Log", 1, &body)),
            Err(ProtocolError::InvalidType { kind: 7 })
        ));
        // Method names must be UTF-8.
        let mut p = VERSION_1.to_be_bytes().to_vec();
        p[3] = mtype::CALL;
        put_binary(&mut p, b"\xffLog");
        p.extend_from_slice(&[0, 0, 0, 1, ttype::STOP]);
        assert!(matches!(
            decode_request(Bytes::from(p)),
            Err(ProtocolError::BadMethodName)
        ));
        // Unknown result codes.
        let mut p = Vec::new();
        put_message_begin(&mut p, "Log", mtype::REPLY, 1, true);
        put_field(&mut p, ttype::I32, 0);
        p.extend_from_slice(&9i32.to_be_bytes());
        p.push(ttype::STOP);
        assert!(matches!(
            decode_reply(Bytes::from(p)),
            Err(ProtocolError::UnknownResultCode { value: 9 })
        ));
        // A reply without field 0.
        let mut p = Vec::new();
        put_message_begin(&mut p, "Log", mtype::REPLY, 1, true);
        p.push(ttype::STOP);
        assert!(matches!(
            decode_reply(Bytes::from(p)),
            Err(ProtocolError::MissingField { field: 0 })
        ));
    }

    #[test]
    fn error_messages_carry_values() {
        let e = ProtocolError::FrameTooLarge { len: 10, max: 5 };
        assert_eq!(
            e.to_string(),
            "frame of 10 bytes exceeds the maximum of 5 bytes"
        );
        assert_eq!(
            ProtocolError::TooDeep.to_string(),
            "nesting deeper than 32 levels"
        );
        let e = ProtocolError::BadVersion { word: 0x8002_0001 };
        assert_eq!(e.to_string(), "bad protocol version word 0x80020001");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let frame = Bytes::from(data);
            let _ = decode_request(frame.clone());
            let _ = decode_reply(frame.clone());
            let _ = decode_header(&frame);
        }

        #[test]
        fn mutated_frames_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut batch = Vec::new();
            encode_log_batch_call(1, b"p", 2, &[(b"cat", b"msg"), (b"", b"x")], &mut batch);
            let counters = [("c".to_string(), 3)];
            for framed in [batch, reply_bytes("getCounters", 1, true, &Reply::Counters(&counters))] {
                let mut p = framed[4..].to_vec();
                for (at, byte) in &flips {
                    let i = at % p.len();
                    p[i] = *byte;
                }
                let _ = decode_request(Bytes::from(p.clone()));
                let _ = decode_reply(Bytes::from(p));
            }
        }

        #[test]
        fn log_round_trips(
            entries in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..16),
                 proptest::collection::vec(any::<u8>(), 0..64)),
                0..20,
            ),
            seqid in any::<i32>(),
        ) {
            let refs: Vec<(&[u8], &[u8])> =
                entries.iter().map(|(c, m)| (c.as_slice(), m.as_slice())).collect();
            let req = decode_request(payload(&log_call(seqid, &refs))).unwrap();
            prop_assert_eq!(req.seqid, seqid);
            prop_assert_eq!(entries_of(&req), entries);
        }
    }

    // --- framing -----------------------------------------------------------------

    #[tokio::test]
    async fn read_frame_reads_back_to_back_frames_then_eof() {
        let mut stream = log_call(1, &[(b"a", b"b")]);
        stream.extend_from_slice(&framed(b""));
        encode_fb303_call(2, &Fb303Call::GetName, &mut stream);
        let mut reader = &stream[..];
        let mut buf = BytesMut::new();
        let first = read_frame(&mut reader, 1024, &mut buf)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(decode_request(first).unwrap().seqid, 1);
        let empty = read_frame(&mut reader, 1024, &mut buf)
            .await
            .unwrap()
            .unwrap();
        assert!(empty.is_empty());
        let third = read_frame(&mut reader, 1024, &mut buf)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            decode_request(third).unwrap().call,
            Call::Fb303(Fb303Call::GetName)
        );
        assert!(read_frame(&mut reader, 1024, &mut buf)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn read_frame_rejects_oversized_and_negative_lengths() {
        let mut reader = &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3][..];
        let mut buf = BytesMut::new();
        let err = read_frame(&mut reader, 1 << 20, &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge {
                len: 0x7fff_ffff,
                max: 0x10_0000
            }
        ));
        assert!(buf.capacity() < 1 << 20, "nothing allocated for the frame");

        let frame = log_call(1, &[(b"a", b"b")]);
        let mut reader = &frame[..];
        let err = read_frame(&mut reader, frame.len() - 5, &mut BytesMut::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));

        let mut reader = &[0xff, 0xff, 0xff, 0xfe][..];
        let err = read_frame(&mut reader, 1024, &mut BytesMut::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::NegativeLength { len: -2 }));
    }

    #[tokio::test]
    async fn read_frame_eof_mid_frame_is_truncated() {
        let frame = log_call(1, &[(b"cat", b"msg")]);
        for cut in 0..frame.len() {
            let mut reader = &frame[..cut];
            let got = read_frame(&mut reader, 1024, &mut BytesMut::new()).await;
            match cut {
                0 => assert!(got.unwrap().is_none()),
                1..=3 => assert!(matches!(
                    got,
                    Err(ProtocolError::TruncatedFrame { expected: 4, got }) if got == cut
                )),
                _ => assert!(matches!(
                    got,
                    Err(ProtocolError::TruncatedFrame { expected: 45, got }) if got == cut - 4
                )),
            }
        }
    }

    #[tokio::test]
    async fn read_frame_grows_as_bytes_arrive_not_from_the_prefix() {
        use futures::FutureExt;
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        // A 64 MiB prefix and 10 bytes of payload.
        client
            .write_all(&(64u32 << 20).to_be_bytes())
            .await
            .unwrap();
        client.write_all(&[7; 10]).await.unwrap();
        let mut buf = BytesMut::new();
        let pending = read_frame(&mut server, 64 << 20, &mut buf).now_or_never();
        assert!(pending.is_none(), "the frame is incomplete");
        assert_eq!(buf.len(), 14, "the bytes read stay in the buffer");
        assert!(
            buf.capacity() <= FRAME_STEP_BYTES + READ_CHUNK,
            "{} bytes reserved for 10 that arrived",
            buf.capacity()
        );
        // The rest arrives: the same buffer completes the frame.
        let frame = log_call(3, &[(b"t", &[1; 3 << 20])]);
        let mut stream = frame.clone();
        stream.extend_from_slice(&log_call(4, &[(b"t", b"next")]));
        let mut reader = &stream[..];
        let mut buf = BytesMut::new();
        let got = read_frame(&mut reader, 64 << 20, &mut buf)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], &frame[4..]);
        assert!(
            buf.capacity() < LARGE_FRAME_BYTES,
            "the buffer lets go of the large frame's allocation: {}",
            buf.capacity()
        );
        let next = read_frame(&mut reader, 64 << 20, &mut buf)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(decode_request(next).unwrap().seqid, 4);
    }

    #[tokio::test]
    async fn read_frame_within_asks_before_each_step_and_drops_a_refused_frame() {
        let big = log_call(1, &[(b"t", &[9; 3 << 20])]);
        let big_len = big.len() - 4;
        let small = log_call(2, &[(b"t", b"small")]);
        let mut stream = big.clone();
        stream.extend_from_slice(&small);
        let mut reader = &stream[..];
        let mut buf = BytesMut::new();
        let mut asked = Vec::new();
        let got = read_frame_within(&mut reader, 64 << 20, &mut buf, |n| {
            asked.push(n);
            n <= 2 << 20
        })
        .await
        .unwrap()
        .unwrap();
        let Frame::Refused { head, len } = got else {
            panic!("refused over 2 MiB: {got:?}");
        };
        assert_eq!(len, big_len);
        assert_eq!(&head[..], &big[4..4 + FRAME_HEAD_BYTES]);
        assert_eq!(decode_header(&head).unwrap().seqid, 1);
        assert!(asked.len() >= 2, "{asked:?}");
        assert!(asked[0] <= FRAME_STEP_BYTES + READ_CHUNK);
        for w in asked.windows(2) {
            assert!(w[0] < w[1] && w[1] - w[0] <= FRAME_STEP_BYTES, "{asked:?}");
        }
        assert!(*asked.last().unwrap() > 2 << 20);
        assert!(buf.capacity() < LARGE_FRAME_BYTES, "{}", buf.capacity());
        // The stream is still in step: the next frame is whole.
        let got = read_frame_within(&mut reader, 64 << 20, &mut buf, |_| true)
            .await
            .unwrap()
            .unwrap();
        let Frame::Whole(payload) = got else {
            panic!("{got:?}");
        };
        assert_eq!(decode_request(payload).unwrap().seqid, 2);

        // A small frame is admitted once, for its whole length.
        let mut reader = &small[..];
        let mut asked = Vec::new();
        let got = read_frame_within(&mut reader, 1024, &mut BytesMut::new(), |n| {
            asked.push(n);
            true
        })
        .await
        .unwrap();
        assert!(matches!(got, Some(Frame::Whole(_))));
        assert_eq!(asked, vec![small.len() - 4]);

        // A refused frame whose sender hangs up is truncated.
        let mut reader = &big[..big.len() / 2];
        let err = read_frame_within(&mut reader, 64 << 20, &mut BytesMut::new(), |_| false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProtocolError::TruncatedFrame { expected, got } if expected == big_len && got == big.len() / 2 - 4),
            "{err}"
        );
    }

    #[test]
    fn long_method_names_are_refused_before_they_are_read() {
        let name = "x".repeat(MAX_METHOD_NAME_BYTES);
        let req = decode_request(call_payload(&name, 1, &[ttype::STOP])).unwrap();
        assert_eq!(req.call, Call::Unknown { name });
        let name = "x".repeat(MAX_METHOD_NAME_BYTES + 1);
        let err = decode_request(call_payload(&name, 1, &[ttype::STOP])).unwrap_err();
        assert!(
            matches!(err, ProtocolError::MethodNameTooLong { len: 257, max: 256 }),
            "{err}"
        );
        // Old-style header, and a name longer than the frame: still too long,
        // not a truncation.
        let mut old = (8u32 << 20).to_be_bytes().to_vec();
        old.extend_from_slice(b"Log\n\x1b[31m");
        let err = decode_header(&old).unwrap_err();
        assert_eq!(
            err.to_string(),
            "method name of 8388608 bytes exceeds the maximum of 256 bytes"
        );
    }

    #[test]
    fn entries_without_fields_cannot_inflate_a_call() {
        // 1,000 empty LogEntry structs: 1 byte each on the wire, 64 decoded.
        let mut body = Vec::new();
        put_field(&mut body, ttype::LIST, 1);
        body.extend_from_slice(&[ttype::STRUCT, 0, 0, 0x03, 0xe8]);
        body.extend_from_slice(&[ttype::STOP; 1000]);
        body.push(ttype::STOP);
        assert!(matches!(
            decode_request(call_payload("Log", 1, &body)),
            Err(ProtocolError::ListTooLong { len: 1000 })
        ));
        // Entries with a category field (8 bytes with an empty one) decode.
        let entries: Vec<(&[u8], &[u8])> = vec![(b"", b""); 1000];
        let req = decode_request(payload(&log_call(1, &entries))).unwrap();
        assert_eq!(entries_of(&req).len(), 1000);
    }

    #[tokio::test]
    async fn read_frame_over_a_duplex_stream() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(7);
        let frame = log_call(5, &[(b"topic", &[0xab; 1000])]);
        let writer = tokio::spawn(async move {
            client.write_all(&frame).await.unwrap();
            client.write_all(&frame[..10]).await.unwrap(); // then hang up mid-frame
        });
        let mut buf = BytesMut::new();
        let got = read_frame(&mut server, 4096, &mut buf)
            .await
            .unwrap()
            .unwrap();
        let req = decode_request(got).unwrap();
        assert_eq!(entries_of(&req)[0].1.len(), 1000);
        assert!(matches!(
            read_frame(&mut server, 4096, &mut buf).await,
            Err(ProtocolError::TruncatedFrame { got: 6, .. })
        ));
        writer.await.unwrap();
    }
}
