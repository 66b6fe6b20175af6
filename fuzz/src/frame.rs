//! Scribe framing: `read_frame` over a connection whose bytes arrive in arbitrary
//! pieces, with reads that are sometimes pending and calls that are sometimes
//! cancelled (the future dropped while it waits), as a collector's `select!` does.
//!
//! Input layout ([`Plan::parse`], [`Plan::to_bytes`]):
//!
//! ```text
//! u8:max_kind [u16be:max]      max_kind < 0x80: max = the u16 (a small limit);
//!                              else max = 2^(16 + max_kind % 16) (up to 2 GiB)
//! u8:n  u8:piece * n           read sizes, cycled (0 = pending, never twice in a row)
//! u8:cancel                    bit i: cancel the call at its i-th pending read (mod 8)
//! byte*                        the stream
//! ```
//!
//! Checked: the calls return exactly the frames a model parser finds in the stream,
//! then end of stream or the error the model expects; and at every read the buffer
//! offers at most [`MAX_SPARE_BASE`] plus twice the bytes delivered so far, so a
//! length prefix alone (a peer announcing 1 GiB and sending 4 bytes) never reserves
//! its announced size.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use conduit_core::scribe::{read_frame, ProtocolError};
use tokio::io::{AsyncRead, ReadBuf};

/// Room a reader may reserve beyond twice what it has received: one growth step of
/// up to 1 MiB and its amortized doubling, with margin.
pub const MAX_SPARE_BASE: usize = 4 << 20;

/// Calls of `read_frame` after which a plan stops (each returns a frame or ends).
const MAX_CALLS: usize = 10_000;

/// What the fuzzer's bytes ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `read_frame`'s `max_frame_bytes`.
    pub max_frame_bytes: usize,
    /// Sizes of successive reads, cycled; 0 makes a read pending (never two in a row).
    pub pieces: Vec<u8>,
    /// Bit `i % 8` set: drop the call at its `i`-th pending read and call again.
    pub cancel: u8,
    /// The bytes the peer sends, then end of stream.
    pub stream: Vec<u8>,
}

impl Plan {
    /// Reads a plan from the fuzzer's bytes (missing bytes read as 0).
    pub fn parse(data: &[u8]) -> Plan {
        let mut at = 0;
        let mut next = || {
            let b = data.get(at).copied().unwrap_or(0);
            at += 1;
            b
        };
        let kind = next();
        let max_frame_bytes = if kind < 0x80 {
            usize::from(u16::from_be_bytes([next(), next()]))
        } else {
            1usize << (16 + (kind % 16))
        };
        let n = next() % 16;
        let pieces = (0..n).map(|_| next()).collect();
        let cancel = next();
        let stream = data.get(at..).unwrap_or_default().to_vec();
        Plan {
            max_frame_bytes,
            pieces,
            cancel,
            stream,
        }
    }

    /// The bytes [`Plan::parse`] reads back as this plan (for seeds). A
    /// `max_frame_bytes` that is neither a u16 nor a power of two in range is
    /// written as the nearest one above.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match u16::try_from(self.max_frame_bytes) {
            Ok(max) => {
                out.push(0);
                out.extend_from_slice(&max.to_be_bytes());
            }
            Err(_) => {
                let shift = self.max_frame_bytes.next_power_of_two().trailing_zeros();
                out.push(0x80 | (shift.clamp(16, 31) - 16) as u8);
            }
        }
        out.push(self.pieces.len() as u8);
        out.extend_from_slice(&self.pieces);
        out.push(self.cancel);
        out.extend_from_slice(&self.stream);
        out
    }
}

/// What one `read_frame` call returns, comparably.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Frame(Bytes),
    End,
    Negative(i32),
    TooLarge(usize),
    Truncated { expected: usize, got: usize },
}

/// The frames of `stream` as the framed transport defines them, and how it ends.
fn model(stream: &[u8], max: usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.is_empty() {
            out.push(Outcome::End);
            return out;
        }
        if rest.len() < 4 {
            out.push(Outcome::Truncated {
                expected: 4,
                got: rest.len(),
            });
            return out;
        }
        let word = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let Ok(len) = usize::try_from(word) else {
            out.push(Outcome::Negative(word));
            return out;
        };
        if len > max {
            out.push(Outcome::TooLarge(len));
            return out;
        }
        if rest.len() - 4 < len {
            out.push(Outcome::Truncated {
                expected: len,
                got: rest.len() - 4,
            });
            return out;
        }
        out.push(Outcome::Frame(Bytes::copy_from_slice(&rest[4..4 + len])));
        at += 4 + len;
    }
}

/// A peer sending `stream` in `pieces`, checking how much room each read offers.
struct Peer<'a> {
    stream: &'a [u8],
    pieces: &'a [u8],
    reads: usize,
    delivered: usize,
    /// Whether the last read was pending (the next one always makes progress).
    /// Shared with the driver, which decides whether to cancel the waiting call.
    pending: &'a Cell<bool>,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let spare = buf.remaining();
        assert!(
            spare <= MAX_SPARE_BASE + 2 * self.delivered,
            "read_frame offers {spare} bytes of buffer after receiving only {} \
             (a length prefix must not reserve the frame's announced size)",
            self.delivered
        );
        let piece = match self.pieces {
            [] => usize::MAX,
            pieces => usize::from(pieces[self.reads % pieces.len()]),
        };
        self.reads += 1;
        if piece == 0 && !self.pending.get() {
            self.pending.set(true);
            return Poll::Pending;
        }
        self.pending.set(false);
        let n = piece.max(1).min(self.stream.len()).min(buf.remaining());
        let (now, later) = self.stream.split_at(n);
        buf.put_slice(now);
        self.stream = later;
        self.delivered += n;
        Poll::Ready(Ok(()))
    }
}

fn outcome(result: Result<Option<Bytes>, ProtocolError>) -> Outcome {
    match result {
        Ok(Some(frame)) => Outcome::Frame(frame),
        Ok(None) => Outcome::End,
        Err(ProtocolError::NegativeLength { len }) => Outcome::Negative(len),
        Err(ProtocolError::FrameTooLarge { len, .. }) => Outcome::TooLarge(len),
        Err(ProtocolError::TruncatedFrame { expected, got }) => {
            Outcome::Truncated { expected, got }
        }
        Err(e) => panic!("read_frame failed in a way framing does not explain: {e}"),
    }
}

/// Runs the plan and checks it against the model.
pub fn check(data: &[u8]) {
    let plan = Plan::parse(data);
    let expected = model(&plan.stream, plan.max_frame_bytes);
    let pending = Cell::new(false);
    let mut peer = Peer {
        stream: &plan.stream,
        pieces: &plan.pieces,
        reads: 0,
        delivered: 0,
        pending: &pending,
    };
    let mut buf = BytesMut::new();
    let mut waits = 0usize;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for want in expected.iter().take(MAX_CALLS) {
        let got = 'call: loop {
            let mut call = std::pin::pin!(read_frame(&mut peer, plan.max_frame_bytes, &mut buf));
            loop {
                if let Poll::Ready(result) = call.as_mut().poll(&mut cx) {
                    break 'call outcome(result);
                }
                assert!(
                    pending.get(),
                    "read_frame waited on something other than its reader"
                );
                waits += 1;
                if plan.cancel & (1 << (waits % 8)) != 0 {
                    // Dropped while waiting: what it read must stay in `buf`.
                    continue 'call;
                }
            }
        };
        assert_eq!(&got, want, "read_frame disagrees with the framing model");
        match &got {
            Outcome::Frame(frame) => assert!(frame.len() <= plan.max_frame_bytes),
            _ => return,
        }
    }
}
