//! Scribe messages: conduit's decoders against the `thrift` crate reference and
//! against their own encoders.
//!
//! The input is one frame's payload (what `read_frame` returns). Requests are what a
//! collector decodes from every client, so they get the full differential check;
//! replies (decoded by conduit's publisher) get the round trips.
//!
//! Known, deliberate differences from the reference (where conduit is more lenient,
//! as Apache Thrift's C++ and Python servers are): the `thrift` crate refuses an
//! empty container whose element type is undefined ("cannot convert N to TType")
//! and skips an unknown `string` field through `read_string`, which refuses bytes
//! that are not UTF-8. Conduit accepts both; for such inputs the reference check
//! runs on conduit's re-encoding of the request instead of on the input.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use conduit_core::scribe::{
    self, reference, Call, DecodedReply, Reply, ReplyValue, Request, EXCEPTION_PROTOCOL_ERROR,
    EXCEPTION_UNKNOWN_METHOD,
};

/// Thrift message types a request may carry.
const CALL: u8 = 1;
const ONEWAY: u8 = 4;

/// Most bytes decoding a payload may hold, per byte of payload: a decoded entry
/// (two `Bytes`, 64 bytes) for each 8 bytes of the list (denser lists are refused),
/// twice over for a vector's growth.
pub const MAX_BYTES_PER_PAYLOAD_BYTE: usize = 16;
/// Fixed allowance on top of that (the method name, small vectors).
pub const MAX_BYTES_BASE: usize = 64 << 10;

/// Checks every decoder on one frame payload.
pub fn check_payload(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let header = scribe::decode_header(&payload);
    let bound = MAX_BYTES_BASE + MAX_BYTES_PER_PAYLOAD_BYTE * payload.len();
    let (request, held) = crate::alloc::peak_during(|| scribe::decode_request(payload.clone()));
    assert!(
        held <= bound,
        "decode_request held {held} bytes for a {}-byte payload (at most {bound})",
        payload.len()
    );
    let (reply, held) = crate::alloc::peak_during(|| scribe::decode_reply(payload.clone()));
    assert!(
        held <= bound,
        "decode_reply held {held} bytes for a {}-byte payload (at most {bound})",
        payload.len()
    );
    if let Ok(request) = request {
        let header = header
            .as_ref()
            .expect("a decoded request has a decodable header");
        assert_eq!(
            (header.name.as_str(), header.seqid, header.strict),
            (request.name.as_str(), request.seqid, request.strict)
        );
        assert_eq!(header.kind, if request.oneway { ONEWAY } else { CALL });
        check_request(&payload, &request);
    }
    if let Ok(reply) = reply {
        let header = header
            .as_ref()
            .expect("a decoded reply has a decodable header");
        assert_eq!(
            (header.name.as_str(), header.seqid),
            (reply.name.as_str(), reply.seqid)
        );
        check_reply(&reply, header.strict);
    }
}

/// The payload of the one frame in `framed`, read by conduit's `read_frame`.
pub fn unframe(framed: &[u8]) -> Bytes {
    let mut reader = framed;
    let mut buf = BytesMut::new();
    let frame = block_on(scribe::read_frame(&mut reader, framed.len(), &mut buf))
        .expect("an encoded message reads back as a frame")
        .expect("an encoded message is not end of stream");
    assert!(reader.is_empty() && buf.is_empty(), "exactly one frame");
    frame
}

/// Runs a future that never waits on anything but its (in-memory) reader.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn check_request(payload: &[u8], request: &Request) {
    // 1. The reference decodes what conduit decoded, to the same value.
    match reference::decode_request(payload) {
        Ok(theirs) => assert_eq!(&theirs, request, "the reference decodes differently"),
        Err(e) => assert!(
            is_known_leniency(&e),
            "conduit accepted a request the reference refuses: {e}\n{request:?}"
        ),
    }

    // 2. The reference's encoding of the value decodes, in conduit, to the same value
    //    (strict or old header, CALL or ONEWAY, unknown methods included).
    let theirs = reference::encode_request(request).expect("the reference encodes the request");
    let back = scribe::decode_request(unframe(&theirs))
        .expect("conduit decodes the reference's encoding of what it decoded");
    assert_eq!(&back, request, "round trip through the reference's encoder");

    // 3. Conduit's own encoders (strict CALLs only) produce the same bytes as the
    //    reference for the same CALL, and decode back to the same call.
    let mut ours = Vec::new();
    match &request.call {
        Call::Log { entries } => {
            let pairs: Vec<(&[u8], &[u8])> = entries
                .iter()
                .map(|e| (&e.category[..], &e.message[..]))
                .collect();
            scribe::encode_log_call(request.seqid, &pairs, &mut ours);
        }
        Call::LogBatch {
            publisher_id,
            sequence,
            entries,
        } => {
            let pairs: Vec<(&[u8], &[u8])> = entries
                .iter()
                .map(|e| (&e.category[..], &e.message[..]))
                .collect();
            scribe::encode_log_batch_call(
                request.seqid,
                publisher_id,
                *sequence,
                &pairs,
                &mut ours,
            );
        }
        Call::Fb303(call) => scribe::encode_fb303_call(request.seqid, call, &mut ours),
        Call::Unknown { .. } => return,
    }
    let back = scribe::decode_request(unframe(&ours)).expect("conduit decodes its own encoding");
    assert_eq!((&back.call, back.seqid), (&request.call, request.seqid));
    assert!(back.strict && !back.oneway);
    if request.strict && !request.oneway {
        assert_eq!(
            ours, theirs,
            "conduit and the reference encode the call differently"
        );
    }
    // The reference also reads conduit's canonical form (this is where the check
    // lands for inputs that rely on a known leniency).
    let theirs = reference::decode_request(&unframe(&ours))
        .expect("the reference decodes conduit's encoding");
    assert_eq!((&theirs.call, theirs.seqid), (&request.call, request.seqid));

    // 4. Every reply the server may send to it decodes as that reply.
    check_replies_to(request);
}

/// The reference errors that stem from the `thrift` crate being stricter than the
/// protocol (see the module docs), not from a disagreement about a value.
fn is_known_leniency(e: &thrift::Error) -> bool {
    let thrift::Error::Protocol(e) = e else {
        return false;
    };
    e.kind == thrift::ProtocolErrorKind::InvalidData
        && (e.message.contains("to TType") || e.message.contains("utf-8"))
}

fn check_replies_to(request: &Request) {
    let counters = [("c".to_string(), -1)];
    let replies = [
        Reply::ResultCode(scribe::ResultCode::Ok),
        Reply::ResultCode(scribe::ResultCode::TryLater),
        Reply::String("conduit"),
        Reply::I64(i64::MIN),
        Reply::Counters(&counters),
        Reply::UnknownMethod,
        Reply::ProtocolError("bad"),
    ];
    for reply in replies {
        let mut out = Vec::new();
        request.encode_reply(&reply, &mut out);
        let decoded = scribe::decode_reply(unframe(&out)).expect("a reply conduit encoded decodes");
        assert_eq!(decoded.seqid, request.seqid);
        let header = scribe::decode_header(&out[4..]).expect("a reply has a header");
        assert_eq!(
            header.strict, request.strict,
            "the reply mirrors the header form"
        );
        match (reply, decoded.value) {
            (Reply::UnknownMethod, ReplyValue::Exception { kind, .. }) => {
                assert_eq!(kind, EXCEPTION_UNKNOWN_METHOD)
            }
            (Reply::ProtocolError(m), ReplyValue::Exception { kind, message }) => {
                assert_eq!((kind, message.as_str()), (EXCEPTION_PROTOCOL_ERROR, m))
            }
            (Reply::UnknownMethod | Reply::ProtocolError(_), other) => {
                panic!("an exception reply decoded as {other:?}")
            }
            (_, ReplyValue::Exception { .. }) => panic!("a value reply decoded as an exception"),
            _ => assert_eq!(decoded.name, request.name),
        }
    }
}

/// The reply value as the server-side encoder's argument, where it has one.
fn as_reply(value: &ReplyValue) -> Option<Reply<'_>> {
    Some(match value {
        ReplyValue::ResultCode(code) => Reply::ResultCode(*code),
        ReplyValue::Status(status) => Reply::Status(*status),
        ReplyValue::String(s) => Reply::String(std::str::from_utf8(s).ok()?),
        ReplyValue::I64(v) => Reply::I64(*v),
        ReplyValue::Counters(counters) => Reply::Counters(counters),
        ReplyValue::Exception { kind, message } => match *kind {
            EXCEPTION_PROTOCOL_ERROR => Reply::ProtocolError(message),
            _ => return None,
        },
    })
}

fn check_reply(reply: &DecodedReply, strict: bool) {
    // Through conduit's encoder.
    if let Some(value) = as_reply(&reply.value) {
        let mut out = Vec::new();
        scribe::encode_reply(&reply.name, reply.seqid, strict, &value, &mut out);
        let back = scribe::decode_reply(unframe(&out)).expect("conduit decodes its own reply");
        assert_eq!(&back, reply, "round trip through conduit's reply encoder");
    }
    // Through the reference's encoder (exception kinds it defines only).
    let encodable = match &reply.value {
        ReplyValue::Exception { kind, .. } => (0..=10).contains(kind),
        _ => true,
    };
    if encodable {
        let theirs = reference::encode_reply(reply, strict).expect("the reference encodes it");
        let back = scribe::decode_reply(unframe(&theirs))
            .expect("conduit decodes the reference's encoding of its reply");
        assert_eq!(
            &back, reply,
            "round trip through the reference's reply encoder"
        );
    }
}
