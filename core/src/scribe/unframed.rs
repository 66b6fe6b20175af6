//! Unframed transport: Thrift's `TBufferedTransport`, and which transport a
//! connection speaks.
//!
//! Old Scribe clients and the clients Thrift generates (`scribe-remote`) send
//! messages back to back with no length prefix. A connection's first four bytes
//! tell the two transports apart ([`Transport::detect`]): a strict binary message
//! begins with the version word `0x80 0x01 0x00 <type>`, which as a frame length
//! would be negative; anything else that is a frame length in `0..=max` is framed.
//! What is neither (an HTTP request, a TLS ClientHello, text) is named
//! ([`Foreign`]) so that the collector can say what the peer sent.
//!
//! An unframed message has no length: [`read_message_within`] finds its end by
//! walking the Thrift structure as the bytes arrive ([`Scanner`], resumable, so
//! each byte is looked at once), under the same bounds as a frame: at most
//! `max_message_bytes`, and a memory budget asked before the buffer grows. A
//! message the budget refuses is read to its end and dropped as it is scanned,
//! keeping its first [`FRAME_HEAD_BYTES`](super::FRAME_HEAD_BYTES) bytes, like a
//! refused frame. The message found is handed on as a [`Frame`] payload, so
//! [`decode_request`](super::decode_request) and everything after it are the
//! framed path's.
//!
//! Only strict headers are recognised as unframed (an old header's first word is
//! the method name's length, which a framed connection's first word cannot be
//! told from).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncRead;

use super::{
    deeper, fixed_size, min_size, read_at_most, ttype, Frame, ProtocolError, Reader,
    FRAME_HEAD_BYTES, FRAME_STEP_BYTES, MAX_DEPTH, READ_CHUNK, VERSION_1, VERSION_MASK,
};

/// The transport a connection speaks, decided on its first four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `TFramedTransport`: each message preceded by its i32 length.
    Framed,
    /// `TBufferedTransport`: messages back to back, strict binary headers.
    Unframed,
}

/// What the first bytes of a connection that speaks neither transport look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// An HTTP/1 request line (`GET `, `POST` ...) or HTTP/2's preface.
    Http,
    /// A TLS record (a ClientHello on a plain-text port).
    Tls,
    /// Printable text.
    Text,
    /// Other bytes.
    Binary,
}

impl Foreign {
    /// What the peer seems to speak, for the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Foreign::Http => "an HTTP request",
            Foreign::Tls => "a TLS handshake",
            Foreign::Text => "text",
            Foreign::Binary => "binary data",
        }
    }

    fn of(first: [u8; 4]) -> Foreign {
        if first[0] == 0x16 && first[1] == 0x03 {
            Foreign::Tls
        } else if first.iter().all(|b| b.is_ascii_uppercase() || *b == b' ')
            && first[0].is_ascii_uppercase()
        {
            Foreign::Http
        } else if first.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            Foreign::Text
        } else {
            Foreign::Binary
        }
    }
}

impl Transport {
    /// The transport whose message begins with `first`: a strict version word is
    /// unframed; a length the framed transport would accept is framed; a length it
    /// would refuse is framed too (the framing errors then say why), unless the
    /// bytes are recognisably another protocol, or text
    /// ([`ProtocolError::NotThrift`]).
    pub fn detect(first: [u8; 4], max_frame_bytes: usize) -> Result<Transport, ProtocolError> {
        let word = u32::from_be_bytes(first);
        if word & VERSION_MASK == VERSION_1 {
            return Ok(Transport::Unframed);
        }
        if usize::try_from(word as i32).is_ok_and(|len| len <= max_frame_bytes) {
            return Ok(Transport::Framed);
        }
        match Foreign::of(first) {
            Foreign::Binary => Ok(Transport::Framed),
            looks_like => Err(ProtocolError::NotThrift { looks_like, first }),
        }
    }

    /// The label of this transport in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Framed => "framed",
            Transport::Unframed => "unframed",
        }
    }
}

/// Reads up to four bytes into `buf` (for [`Transport::detect`]); `Ok(None)` when
/// the stream ends before the first, [`ProtocolError::TruncatedFrame`] inside them.
/// Cancel-safe: bytes read stay in `buf`.
pub async fn read_first_word<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<[u8; 4]>, ProtocolError> {
    while buf.len() < 4 {
        if buf.capacity() - buf.len() < 4 {
            buf.reserve(READ_CHUNK);
        }
        if read_at_most(r, buf, READ_CHUNK).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ProtocolError::TruncatedFrame {
                expected: 4,
                got: buf.len(),
            });
        }
    }
    Ok(Some([buf[0], buf[1], buf[2], buf[3]]))
}

/// Reads one unframed message (a request with a strict or old header, then its
/// arguments struct) and returns it as a frame payload: the unframed counterpart
/// of [`read_frame_within`](super::read_frame_within), with the same `admit`
/// contract (asked before the buffer may hold more of the message; the first call
/// covers what already arrived) and the same results.
///
/// A message longer than `max_message_bytes` is
/// [`ProtocolError::FrameTooLarge`] as soon as that is known (a string announcing
/// more, or more bytes without the message's end). Bytes read past the message's
/// end stay in `buf` for the next call.
pub async fn read_message_within<R: AsyncRead + Unpin>(
    r: &mut R,
    max_message_bytes: usize,
    buf: &mut BytesMut,
    mut admit: impl FnMut(usize) -> bool,
) -> Result<Option<Frame>, ProtocolError> {
    if buf.is_empty() && read_at_most(r, buf, READ_CHUNK).await? == 0 {
        return Ok(None);
    }
    let mut scanner = Scanner::default();
    // Bytes of `buf` scanned (all of the message's so far when kept).
    let mut scanned = 0;
    let mut admitted = 0;
    let mut refused: Option<(Bytes, usize)> = None;
    loop {
        let done = scanner.advance(&buf[scanned..])?;
        scanned += done.consumed;
        let total = dropped(&refused) + scanned;
        if done.complete {
            if let Some((head, dropped)) = refused {
                buf.advance(scanned);
                return Ok(Some(Frame::Refused {
                    head,
                    len: dropped + scanned,
                }));
            }
            if total > admitted && !admit(total) {
                let head = Bytes::copy_from_slice(&buf[..total.min(FRAME_HEAD_BYTES)]);
                buf.advance(total);
                return Ok(Some(Frame::Refused { head, len: total }));
            }
            return Ok(Some(Frame::Whole(buf.split_to(total).freeze())));
        }
        let at_least = total + done.needs;
        if at_least > max_message_bytes {
            return Err(ProtocolError::FrameTooLarge {
                len: at_least,
                max: max_message_bytes,
            });
        }
        match &mut refused {
            None => {
                let have = buf.len();
                let want = (have + READ_CHUNK.max(have).min(FRAME_STEP_BYTES))
                    .min(max_message_bytes)
                    .max(have);
                if want > admitted {
                    if admit(want) {
                        admitted = want;
                    } else {
                        let head = Bytes::copy_from_slice(&buf[..have.min(FRAME_HEAD_BYTES)]);
                        refused = Some((head, scanned));
                        buf.advance(scanned);
                        scanned = 0;
                    }
                }
            }
            Some((_, dropped)) => {
                *dropped += scanned;
                buf.advance(scanned);
                scanned = 0;
            }
        }
        buf.reserve(READ_CHUNK);
        if read_at_most(r, buf, READ_CHUNK).await? == 0 {
            return Err(ProtocolError::TruncatedFrame {
                expected: at_least,
                got: total,
            });
        }
    }
}

fn dropped(refused: &Option<(Bytes, usize)>) -> usize {
    refused.as_ref().map_or(0, |(_, n)| *n)
}

/// Finds the end of one message in a stream of bytes given piece by piece. Each
/// call consumes only whole values (or the bytes of a string), so the state it
/// keeps between calls is small: the nesting stack (at most [`MAX_DEPTH`]) and
/// what to read next.
#[derive(Debug, Default)]
struct Scanner {
    /// The header was read: the arguments struct is being walked.
    in_body: bool,
    /// Open structs and containers, innermost last.
    stack: Vec<Open>,
    /// A value of this type comes next.
    value: Option<u8>,
    /// Bytes of a string (or of fixed-size elements) still to pass.
    skip: usize,
}

/// A struct or container being walked.
#[derive(Debug)]
enum Open {
    /// Fields until STOP.
    Struct,
    /// `left` more values of type `kind` (a list or set, or a map's keys and
    /// values in turn: `kinds[left % 2]`).
    Values { kinds: [u8; 2], left: u64 },
}

/// What a [`Scanner::advance`] came to.
#[derive(Debug)]
struct Advance {
    /// Bytes consumed from the slice given.
    consumed: usize,
    /// The message ends with the last byte consumed.
    complete: bool,
    /// When not complete, at least this many more bytes are needed.
    needs: usize,
}

impl Scanner {
    /// Consumes as much of `data` as makes whole values.
    fn advance(&mut self, data: &[u8]) -> Result<Advance, ProtocolError> {
        let mut pos = 0;
        let more = |pos: usize, needs: usize| Advance {
            consumed: pos,
            complete: false,
            needs,
        };
        if !self.in_body {
            let mut r = Reader::new(data);
            match r.header() {
                Ok(header) => {
                    header.oneway()?;
                }
                Err(ProtocolError::UnexpectedEof { .. }) => return Ok(more(0, 1)),
                Err(e) => return Err(e),
            }
            pos = r.pos;
            self.in_body = true;
            self.stack.push(Open::Struct);
        }
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len() - pos);
                pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(more(pos, self.skip));
                }
            }
            let left = data.len() - pos;
            if let Some(kind) = self.value {
                let head = match kind {
                    ttype::BOOL | ttype::BYTE => 1,
                    ttype::I16 => 2,
                    ttype::I32 | ttype::STRING => 4,
                    ttype::I64 | ttype::DOUBLE => 8,
                    ttype::STRUCT => 0,
                    ttype::SET | ttype::LIST => 5,
                    ttype::MAP => 6,
                    _ => return Err(ProtocolError::InvalidType { kind }),
                };
                if left < head {
                    return Ok(more(pos, head - left));
                }
                let mut r = Reader::new(&data[pos..pos + head]);
                match kind {
                    ttype::STRING => self.skip = r.size()?,
                    ttype::STRUCT => self.open(Open::Struct)?,
                    ttype::SET | ttype::LIST => {
                        let elem = r.u8()?;
                        let count = r.size()? as u64;
                        self.open_values([elem, elem], count)?;
                    }
                    ttype::MAP => {
                        let (key, value) = (r.u8()?, r.u8()?);
                        let count = r.size()? as u64;
                        self.open_values([value, key], 2 * count)?;
                    }
                    _ => {}
                }
                pos += head;
                self.value = None;
                continue;
            }
            match self.stack.last_mut() {
                None => {
                    return Ok(Advance {
                        consumed: pos,
                        complete: true,
                        needs: 0,
                    })
                }
                Some(Open::Struct) => {
                    let Some(&kind) = data.get(pos) else {
                        return Ok(more(pos, 1));
                    };
                    if kind == ttype::STOP {
                        pos += 1;
                        self.stack.pop();
                        continue;
                    }
                    if left < 3 {
                        return Ok(more(pos, 3 - left));
                    }
                    pos += 3;
                    self.value = Some(kind);
                }
                Some(Open::Values { kinds, left }) => {
                    if *left == 0 {
                        self.stack.pop();
                        continue;
                    }
                    *left -= 1;
                    self.value = Some(kinds[(*left % 2) as usize]);
                }
            }
        }
    }

    /// Enters a struct or container, at most [`MAX_DEPTH`] deep.
    fn open(&mut self, open: Open) -> Result<(), ProtocolError> {
        deeper(self.stack.len())?;
        debug_assert!(self.stack.len() <= MAX_DEPTH);
        self.stack.push(open);
        Ok(())
    }

    /// Enters a container of `count` values; values of a fixed size are passed
    /// in one step.
    fn open_values(&mut self, kinds: [u8; 2], count: u64) -> Result<(), ProtocolError> {
        if count == 0 {
            return Ok(());
        }
        min_size(kinds[0])?;
        min_size(kinds[1])?;
        if let (true, Some(size)) = (kinds[0] == kinds[1], fixed_size(kinds[0])) {
            deeper(self.stack.len())?;
            self.skip = usize::try_from(count.saturating_mul(size as u64)).unwrap_or(usize::MAX);
            return Ok(());
        }
        self.open(Open::Values { kinds, left: count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scribe::{decode_request, encode_fb303_call, encode_log_call, Call, Fb303Call};

    fn unframed(framed: &[u8]) -> Vec<u8> {
        framed[4..].to_vec()
    }

    fn log_call(seqid: i32, entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_log_call(seqid, entries, &mut out);
        unframed(&out)
    }

    /// Feeds `stream` to a fresh scanner in pieces of `step` bytes; the length of
    /// the first message.
    fn scan_in_steps(stream: &[u8], step: usize) -> Option<usize> {
        let mut scanner = Scanner::default();
        let mut at = 0;
        let mut end = 0;
        loop {
            end = (end + step).min(stream.len());
            let done = scanner.advance(&stream[at..end]).unwrap();
            at += done.consumed;
            if done.complete {
                return Some(at);
            }
            if end == stream.len() {
                return None;
            }
        }
    }

    #[test]
    fn detects_the_transport_on_the_first_word() {
        let max = 16 << 20;
        let call = log_call(1, &[(b"c", b"m")]);
        let first = |b: &[u8]| -> [u8; 4] { b[..4].try_into().unwrap() };
        assert_eq!(
            Transport::detect(first(&call), max).unwrap(),
            Transport::Unframed
        );
        let mut framed = Vec::new();
        encode_log_call(1, &[(b"c", b"m")], &mut framed);
        assert_eq!(
            Transport::detect(first(&framed), max).unwrap(),
            Transport::Framed
        );
        for (bytes, looks) in [
            (&b"GET / HTTP/1.1\r\n"[..], Foreign::Http),
            (&b"POST /x"[..], Foreign::Http),
            (&b"PRI * HTTP/2.0"[..], Foreign::Http),
            (&[0x16, 0x03, 0x01, 0x02, 0x00][..], Foreign::Tls),
            (&b"SSH-2.0"[..], Foreign::Text),
        ] {
            match Transport::detect(first(bytes), max) {
                Err(ProtocolError::NotThrift { looks_like, .. }) => {
                    assert_eq!(looks_like, looks, "{bytes:?}")
                }
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // A length too large or negative that is no known protocol: framed, whose
        // errors say why.
        assert_eq!(
            Transport::detect([0x7f, 0, 0, 0], max).unwrap(),
            Transport::Framed
        );
        assert_eq!(
            Transport::detect([0xff, 0xff, 0xff, 0xfe], max).unwrap(),
            Transport::Framed
        );
    }

    #[test]
    fn finds_the_end_of_every_message_kind_fed_in_any_pieces() {
        let mut messages = vec![
            log_call(1, &[]),
            log_call(2, &[(b"clicks", b"a"), (b"views", &[7u8; 3000][..])]),
        ];
        for call in [
            Fb303Call::GetName,
            Fb303Call::GetCounters,
            Fb303Call::GetCounter {
                key: Bytes::from_static(b"received"),
            },
        ] {
            let mut out = Vec::new();
            encode_fb303_call(3, &call, &mut out);
            messages.push(unframed(&out));
        }
        let mut batch = Vec::new();
        crate::scribe::encode_log_batch_call(4, b"pub", 9, &[(b"t", b"m")], &mut batch);
        messages.push(unframed(&batch));
        // Unknown fields of every type in the arguments struct, nested.
        let mut body = Vec::new();
        body.extend_from_slice(&[ttype::MAP, 0, 9, ttype::STRING, ttype::LIST, 0, 0, 0, 1]);
        body.extend_from_slice(&[0, 0, 0, 2, b'k', b'v', ttype::I64, 0, 0, 0, 2]);
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[ttype::STRUCT, 0, 10, ttype::DOUBLE, 0, 1]);
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(&[ttype::SET, 0, 2, ttype::STRUCT, 0, 0, 0, 2, 0, 0]);
        body.extend_from_slice(&[ttype::STOP, ttype::STOP]);
        let mut odd = Vec::new();
        crate::scribe::put_message_begin(&mut odd, "getName", 1, 5, true);
        odd.extend_from_slice(&body);
        messages.push(odd);
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend_from_slice(m);
        }
        for step in [1, 2, 3, 7, 64, stream.len()] {
            let mut at = 0;
            for m in &messages {
                let len = scan_in_steps(&stream[at..], step).expect("complete");
                assert_eq!(len, m.len(), "step {step}");
                decode_request(Bytes::copy_from_slice(&stream[at..at + len])).unwrap();
                at += len;
            }
        }
        // Every proper prefix is incomplete.
        let one = &messages[1];
        for cut in 0..one.len() {
            assert_eq!(scan_in_steps(&one[..cut], 5), None, "cut at {cut}");
        }
    }

    /// What scanning `data` fed in pieces of `step` bytes comes to: the length of
    /// the message, `Ok(None)` while incomplete, or the error's text.
    fn scan_outcome(data: &[u8], step: usize) -> Result<Option<usize>, String> {
        let mut scanner = Scanner::default();
        let (mut at, mut end) = (0, 0);
        loop {
            end = (end + step).min(data.len());
            let done = scanner.advance(&data[at..end]).map_err(|e| e.to_string())?;
            at += done.consumed;
            if done.complete {
                return Ok(Some(at));
            }
            if end == data.len() {
                return Ok(None);
            }
        }
    }

    proptest::proptest! {
        /// Hostile bodies after a valid header: the scanner never panics and
        /// comes to the same end (or error) whatever pieces the bytes arrive in.
        #[test]
        fn any_pieces_give_the_same_outcome(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            step in 1usize..50,
        ) {
            let mut data = Vec::new();
            crate::scribe::put_message_begin(&mut data, "Log", 1, 1, true);
            data.extend_from_slice(&body);
            let whole = scan_outcome(&data, data.len().max(1));
            proptest::prop_assert_eq!(scan_outcome(&data, step), whole.clone());
            if let Ok(Some(len)) = whole {
                proptest::prop_assert!(len <= data.len());
                // The decoder never finds the message the scanner delimited cut short.
                let decoded = decode_request(Bytes::copy_from_slice(&data[..len]));
                proptest::prop_assert!(
                    !matches!(decoded, Err(ProtocolError::UnexpectedEof { .. })),
                    "{:?}", decoded
                );
            }
            // A request the decoder reads whole from the bytes is one the
            // scanner finds the end of.
            if decode_request(Bytes::copy_from_slice(&data)).is_ok() {
                proptest::prop_assert!(matches!(whole, Ok(Some(_))), "{:?}", whole);
            }
        }
    }

    #[test]
    fn refuses_hostile_structure() {
        // Nesting deeper than MAX_DEPTH.
        let mut deep = Vec::new();
        crate::scribe::put_message_begin(&mut deep, "Log", 1, 1, true);
        for _ in 0..=MAX_DEPTH {
            deep.extend_from_slice(&[ttype::STRUCT, 0, 1]);
        }
        assert!(matches!(
            Scanner::default().advance(&deep),
            Err(ProtocolError::TooDeep)
        ));
        // A REPLY is not a request.
        let mut reply = Vec::new();
        crate::scribe::put_message_begin(&mut reply, "Log", 2, 1, true);
        assert!(matches!(
            Scanner::default().advance(&reply),
            Err(ProtocolError::WrongMessageType { kind: 2 })
        ));
    }

    async fn read_all(stream: &[u8], max: usize, budget: usize) -> Vec<Frame> {
        let mut r = stream;
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        while let Some(frame) = read_message_within(&mut r, max, &mut buf, |n| n <= budget)
            .await
            .unwrap()
        {
            frames.push(frame);
        }
        frames
    }

    #[tokio::test]
    async fn reads_messages_back_to_back_and_refuses_what_the_budget_cannot_hold() {
        let small = log_call(1, &[(b"c", b"m")]);
        let big = log_call(2, &[(b"c", &[1u8; 300_000][..])]);
        let stream = [small.clone(), big.clone(), small.clone()].concat();
        let frames = read_all(&stream, 1 << 20, usize::MAX).await;
        assert_eq!(
            frames,
            vec![
                Frame::Whole(Bytes::from(small.clone())),
                Frame::Whole(Bytes::from(big.clone())),
                Frame::Whole(Bytes::from(small.clone())),
            ]
        );
        let frames = read_all(&stream, 1 << 20, 64 << 10).await;
        assert_eq!(frames[0], Frame::Whole(Bytes::from(small.clone())));
        assert_eq!(
            frames[1],
            Frame::Refused {
                head: Bytes::copy_from_slice(&big[..FRAME_HEAD_BYTES]),
                len: big.len()
            }
        );
        assert_eq!(frames[2], Frame::Whole(Bytes::from(small.clone())));
        let request = decode_request(Bytes::from(small)).unwrap();
        assert!(matches!(request.call, Call::Log { .. }));
    }

    #[tokio::test]
    async fn a_message_longer_than_the_maximum_is_an_error() {
        let big = log_call(2, &[(b"c", &[1u8; 300_000][..])]);
        let mut r = &big[..];
        let mut buf = BytesMut::new();
        let e = read_message_within(&mut r, 100_000, &mut buf, |_| true)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ProtocolError::FrameTooLarge { max: 100_000, .. }),
            "{e}"
        );
        let cut = &big[..1000];
        let mut r = cut;
        let e = read_message_within(&mut r, 1 << 20, &mut BytesMut::new(), |_| true)
            .await
            .unwrap_err();
        assert!(matches!(e, ProtocolError::TruncatedFrame { .. }), "{e}");
    }
}
