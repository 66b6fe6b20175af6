//! Differential tests: the hand-written codec against [`super::reference`] (the `thrift`
//! crate). Every message kind the codec handles (the `Log` and `LogBatch` calls, each
//! fb303 call, and the replies: result code, status, string, i64, counters map,
//! unknown-method and protocol-error exceptions) is encoded by one implementation,
//! framed, unframed and decoded by the other, both ways, on proptest-generated inputs;
//! where both encode the same message the bytes must be identical too.
//!
//! Non-UTF-8 coverage: categories, messages, `publisher_id` and `getCounter`'s key are
//! arbitrary bytes (empty included) in both directions. String replies are arbitrary
//! bytes from the reference to conduit only: conduit's encoder takes `&str`
//! ([`Reply::String`]). Method names, counter names and exception messages are UTF-8
//! on both sides (thrift's `String`, conduit's `&str`), generated as arbitrary Unicode.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// The payload of the one frame `framed` holds, read by conduit's [`read_frame`].
fn conduit_unframe(framed: &[u8]) -> Bytes {
    let mut reader = framed;
    let mut buf = BytesMut::new();
    let frame = futures::executor::block_on(read_frame(&mut reader, framed.len(), &mut buf))
        .expect("a frame")
        .expect("not end of stream");
    assert!(reader.is_empty() && buf.is_empty(), "exactly one frame");
    frame
}

fn reference_unframe(framed: &[u8]) -> Bytes {
    let payload = reference::unframe(framed).expect("the reference reads the frame");
    assert_eq!(payload.len() + 4, framed.len(), "exactly one frame");
    Bytes::from(payload)
}

// --- generated inputs ------------------------------------------------------------

/// Arbitrary bytes of up to `max` (mostly not UTF-8 beyond one byte; empty included).
fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn entry(max_category: usize, max_message: usize) -> impl Strategy<Value = LogEntry> {
    (binary(max_category), binary(max_message))
        .prop_map(|(category, message)| LogEntry { category, message })
}

/// Lists of entries: mostly short, sometimes thousands of small entries or a few
/// payloads of up to 256 KiB.
fn entries() -> impl Strategy<Value = Vec<LogEntry>> {
    prop_oneof![
        6 => vec(entry(24, 300), 0..12),
        1 => vec(entry(4, 8), 1_000..4_000),
        1 => vec(entry(8, 256 * 1024), 1..3),
    ]
}

fn fb303_call() -> impl Strategy<Value = Fb303Call> {
    prop_oneof![
        Just(Fb303Call::GetName),
        Just(Fb303Call::GetVersion),
        Just(Fb303Call::GetStatus),
        Just(Fb303Call::GetStatusDetails),
        Just(Fb303Call::GetCounters),
        binary(64).prop_map(|key| Fb303Call::GetCounter { key }),
        Just(Fb303Call::AliveSince),
    ]
}

/// The calls conduit's encoders produce (it never sends an unknown method).
fn known_call() -> impl Strategy<Value = Call> {
    prop_oneof![
        entries().prop_map(|entries| Call::Log { entries }),
        (binary(64), any::<i64>(), entries()).prop_map(|(publisher_id, sequence, entries)| {
            Call::LogBatch {
                publisher_id,
                sequence,
                entries,
            }
        }),
        fb303_call().prop_map(Call::Fb303),
    ]
}

fn any_call() -> impl Strategy<Value = Call> {
    let unknown = prop_oneof![
        Just("shutdown".to_owned()),
        Just("reinitialize".to_owned()),
        Just(String::new()),
        "zz\\PC{0,16}",
    ]
    .prop_map(|name| Call::Unknown { name });
    prop_oneof![4 => known_call(), 1 => unknown]
}

fn method_of(call: &Call) -> String {
    match call {
        Call::Log { .. } => LOG.to_owned(),
        Call::LogBatch { .. } => LOG_BATCH.to_owned(),
        Call::Fb303(call) => call.method_name().to_owned(),
        Call::Unknown { name } => name.clone(),
    }
}

fn request(call: Call, seqid: i32, strict: bool, oneway: bool) -> Request {
    Request {
        seqid,
        name: method_of(&call),
        strict,
        oneway,
        call,
    }
}

/// `call` encoded by conduit's client-side encoders.
fn conduit_encode_call(seqid: i32, call: &Call) -> Vec<u8> {
    let mut out = Vec::new();
    match call {
        Call::Log { entries } => {
            let pairs: Vec<(&[u8], &[u8])> = entries
                .iter()
                .map(|e| (&e.category[..], &e.message[..]))
                .collect();
            encode_log_call(seqid, &pairs, &mut out);
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
            encode_log_batch_call(seqid, publisher_id, *sequence, &pairs, &mut out);
        }
        Call::Fb303(call) => encode_fb303_call(seqid, call, &mut out),
        Call::Unknown { name } => panic!("conduit never calls unknown method {name}"),
    }
    out
}

fn counters() -> impl Strategy<Value = Vec<(String, i64)>> {
    let counter = ("\\PC{0,24}", any::<i64>());
    prop_oneof![4 => vec(counter, 0..16), 1 => vec(counter, 1_000..2_000)]
}

fn result_code() -> impl Strategy<Value = ResultCode> {
    prop_oneof![Just(ResultCode::Ok), Just(ResultCode::TryLater)]
}

/// A reply value and a method whose declared return type it fits.
fn reply_value() -> impl Strategy<Value = (String, ReplyValue)> {
    fn of<const N: usize>(methods: [&'static str; N]) -> impl Strategy<Value = String> {
        proptest::sample::select(methods.to_vec()).prop_map(str::to_owned)
    }
    prop_oneof![
        (
            of([LOG, LOG_BATCH]),
            result_code().prop_map(ReplyValue::ResultCode)
        ),
        (of(["getStatus"]), any::<i32>().prop_map(ReplyValue::Status)),
        (
            of(["getName", "getVersion", "getStatusDetails"]),
            binary(512).prop_map(ReplyValue::String)
        ),
        (
            of(["getCounter", "aliveSince"]),
            any::<i64>().prop_map(ReplyValue::I64)
        ),
        (
            of(["getCounters"]),
            counters().prop_map(ReplyValue::Counters)
        ),
        (
            "\\PC{0,16}",
            (0..=10i32, "\\PC{0,64}")
                .prop_map(|(kind, message)| ReplyValue::Exception { kind, message })
        ),
    ]
}

/// A reply conduit's server encodes ([`Reply`] owns nothing, this does).
#[derive(Debug, Clone)]
enum ServerReply {
    ResultCode(ResultCode),
    String(String),
    I64(i64),
    Status(i32),
    Counters(Vec<(String, i64)>),
    UnknownMethod,
    ProtocolError(String),
}

impl ServerReply {
    fn as_reply(&self) -> Reply<'_> {
        match self {
            Self::ResultCode(code) => Reply::ResultCode(*code),
            Self::String(s) => Reply::String(s),
            Self::I64(v) => Reply::I64(*v),
            Self::Status(v) => Reply::Status(*v),
            Self::Counters(c) => Reply::Counters(c),
            Self::UnknownMethod => Reply::UnknownMethod,
            Self::ProtocolError(message) => Reply::ProtocolError(message),
        }
    }

    /// What a client decodes from this reply to method `name`.
    fn decoded(&self, name: &str) -> ReplyValue {
        match self {
            Self::ResultCode(code) => ReplyValue::ResultCode(*code),
            Self::String(s) => ReplyValue::String(Bytes::copy_from_slice(s.as_bytes())),
            Self::I64(v) => ReplyValue::I64(*v),
            Self::Status(v) => ReplyValue::Status(*v),
            Self::Counters(c) => ReplyValue::Counters(c.clone()),
            // The name is shown escaped and capped: a reply never echoes a
            // client's bytes unbounded.
            Self::UnknownMethod => ReplyValue::Exception {
                kind: EXCEPTION_UNKNOWN_METHOD,
                message: format!("Invalid method name: '{}'", crate::text::capped(name)),
            },
            Self::ProtocolError(message) => ReplyValue::Exception {
                kind: EXCEPTION_PROTOCOL_ERROR,
                message: message.clone(),
            },
        }
    }
}

/// A reply conduit's server encodes and the method it answers.
fn server_reply() -> impl Strategy<Value = (String, ServerReply)> {
    fn of<const N: usize>(methods: [&'static str; N]) -> impl Strategy<Value = String> {
        proptest::sample::select(methods.to_vec()).prop_map(str::to_owned)
    }
    prop_oneof![
        (
            of([LOG, LOG_BATCH]),
            result_code().prop_map(ServerReply::ResultCode)
        ),
        (
            of(["getStatus"]),
            any::<i32>().prop_map(ServerReply::Status)
        ),
        (
            of(["getName", "getVersion", "getStatusDetails"]),
            "\\PC{0,128}".prop_map(ServerReply::String)
        ),
        (
            of(["getCounter", "aliveSince"]),
            any::<i64>().prop_map(ServerReply::I64)
        ),
        (
            of(["getCounters"]),
            counters().prop_map(ServerReply::Counters)
        ),
        ("\\PC{0,16}", Just(ServerReply::UnknownMethod)),
        (
            "\\PC{0,16}",
            "\\PC{0,64}".prop_map(ServerReply::ProtocolError)
        ),
    ]
}

// --- the tests ---------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Reference client → conduit server: any call, strict or old header, CALL or ONEWAY.
    #[test]
    fn conduit_decodes_reference_requests(
        call in any_call(),
        seqid in any::<i32>(),
        strict in any::<bool>(),
        oneway in any::<bool>(),
    ) {
        let sent = request(call, seqid, strict, oneway);
        let framed = reference::encode_request(&sent).unwrap();
        let payload = conduit_unframe(&framed);
        prop_assert_eq!(decode_request(payload.clone()).unwrap(), sent);
        prop_assert_eq!(&reference_unframe(&framed), &payload);
    }

    /// Conduit client → reference server, and the same bytes as the reference client.
    #[test]
    fn reference_decodes_conduit_requests(call in known_call(), seqid in any::<i32>()) {
        let framed = conduit_encode_call(seqid, &call);
        let sent = request(call, seqid, true, false);
        let decoded = reference::decode_request(&reference_unframe(&framed)).unwrap();
        prop_assert_eq!(&decoded, &sent);
        prop_assert_eq!(framed, reference::encode_request(&sent).unwrap());
    }

    /// Reference server → conduit client: every reply kind, binary strings included.
    #[test]
    fn conduit_decodes_reference_replies(
        (name, value) in reply_value(),
        seqid in any::<i32>(),
        strict in any::<bool>(),
    ) {
        let sent = DecodedReply { name, seqid, value };
        let framed = reference::encode_reply(&sent, strict).unwrap();
        prop_assert_eq!(decode_reply(conduit_unframe(&framed)).unwrap(), sent);
    }

    /// Conduit server → reference client, and the same bytes as the reference server.
    #[test]
    fn reference_decodes_conduit_replies(
        (name, reply) in server_reply(),
        seqid in any::<i32>(),
        strict in any::<bool>(),
    ) {
        let mut framed = Vec::new();
        encode_reply(&name, seqid, strict, &reply.as_reply(), &mut framed);
        let expected = DecodedReply { value: reply.decoded(&name), name, seqid };
        let decoded = reference::decode_reply(&reference_unframe(&framed)).unwrap();
        prop_assert_eq!(&decoded, &expected);
        prop_assert_eq!(framed, reference::encode_reply(&expected, strict).unwrap());
    }
}

/// The inputs above are random; these pin the cases the codec exists for.
#[test]
fn non_utf8_empty_and_large_cases_both_ways() {
    let entries = vec![
        LogEntry {
            category: Bytes::from_static(b"\xff\xfe"),
            message: Bytes::from_static(b"\xc3\x28\x00\x80"),
        },
        LogEntry::default(),
        LogEntry {
            category: Bytes::from_static(b"topic"),
            message: Bytes::from(vec![0xab; 1 << 20]),
        },
    ];
    for call in [
        Call::Log { entries: vec![] },
        Call::Log {
            entries: entries.clone(),
        },
        Call::LogBatch {
            publisher_id: Bytes::from_static(b"\x80pub"),
            sequence: i64::MIN,
            entries,
        },
        Call::Fb303(Fb303Call::GetCounter {
            key: Bytes::from_static(b"\xff"),
        }),
    ] {
        let sent = request(call.clone(), 7, true, false);
        let framed = conduit_encode_call(7, &call);
        assert_eq!(framed, reference::encode_request(&sent).unwrap());
        assert_eq!(
            reference::decode_request(&reference_unframe(&framed)).unwrap(),
            sent
        );
        assert_eq!(decode_request(conduit_unframe(&framed)).unwrap(), sent);
    }
    let sent = DecodedReply {
        name: "getName".into(),
        seqid: 1,
        value: ReplyValue::String(Bytes::from_static(b"\xfe\xff")),
    };
    let framed = reference::encode_reply(&sent, true).unwrap();
    assert_eq!(decode_reply(conduit_unframe(&framed)).unwrap(), sent);
}
