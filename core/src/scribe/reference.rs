//! The `thrift` crate (Apache Thrift's Rust library) as the reference for the
//! hand-written Scribe codec of the parent module: what a client or server generated
//! from `scribe.thrift` (the IDL in the parent's docs) puts on the wire and reads back,
//! written and read through thrift's `TBinaryOutputProtocol` / `TBinaryInputProtocol`
//! over its `TFramedWriteTransport` / `TFramedReadTransport`. Nothing of the parent's
//! codec is called here: only its data types (`Request`, `DecodedReply`, ...) carry the
//! values, so that both implementations can be compared with `==`.
//!
//! Built for the differential tests (`differential_tests.rs`) and, with the
//! `reference` cargo feature, for fuzz targets. Not part of conduit's API.
//!
//! # Binary strings (non-UTF-8)
//! thrift's Rust `String` holds UTF-8 only; Scribe's `string`s are bytes. As generated
//! code does for `binary` fields, this module writes and reads categories, messages,
//! `LogBatch`'s `publisher_id`, `getCounter`'s key and string replies with
//! `write_bytes` / `read_bytes`, so they carry arbitrary bytes in both directions.
//! Method names, counter names and exception messages go through thrift's `String`:
//! UTF-8 on this side (conduit reads the last two lossily).
//!
//! # Use on untrusted input
//! thrift allocates a string's announced length before reading it and treats a
//! negative list size as empty. Decode with conduit first and give the reference only
//! payloads conduit accepted (every length in them is checked against the frame): a
//! fuzz target's invariant is "conduit accepts ⇒ the reference accepts the same value".
//! Where conduit is stricter (a known field of the wrong type, which generated code
//! skips; a missing `LogBatch` field), only conduit rejects. Like conduit, and unlike a
//! generated server, the arguments of a method this module does not know are not read.

use std::io::Read;

use bytes::Bytes;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol, TListIdentifier,
    TMapIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
};
use thrift::transport::{TFramedReadTransport, TFramedWriteTransport};
use thrift::{ApplicationError, ApplicationErrorKind, ProtocolErrorKind};

use super::{Call, DecodedReply, Fb303Call, LogEntry, ReplyValue, Request, ResultCode};

/// The fb303 methods without arguments that conduit answers (`getCounter` has one).
const FB303_NO_ARGS: [Fb303Call; 6] = [
    Fb303Call::GetName,
    Fb303Call::GetVersion,
    Fb303Call::GetStatus,
    Fb303Call::GetStatusDetails,
    Fb303Call::GetCounters,
    Fb303Call::AliveSince,
];

/// The declared return type of a method (field 0 of its result struct).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returns {
    /// `ResultCode` (an i32 enum): `Log`, `LogBatch`.
    ResultCode,
    /// `fb_status` (an i32 enum): `getStatus`.
    Status,
    /// `string`: `getName`, `getVersion`, `getStatusDetails`.
    String,
    /// `i64`: `getCounter`, `aliveSince`.
    I64,
    /// `map<string, i64>`: `getCounters`.
    Counters,
}

fn returns(method: &str) -> Option<Returns> {
    Some(match method {
        "Log" | "LogBatch" => Returns::ResultCode,
        "getStatus" => Returns::Status,
        "getName" | "getVersion" | "getStatusDetails" => Returns::String,
        "getCounter" | "aliveSince" => Returns::I64,
        "getCounters" => Returns::Counters,
        _ => return None,
    })
}

fn invalid(message: impl Into<String>) -> thrift::Error {
    thrift::new_protocol_error(ProtocolErrorKind::InvalidData, message)
}

fn size(len: usize) -> thrift::Result<i32> {
    i32::try_from(len).map_err(|_| {
        thrift::new_protocol_error(ProtocolErrorKind::SizeLimit, format!("{len} elements"))
    })
}

/// A framed message written by `write` through a binary protocol (`strict`: versioned
/// header) over a framed transport.
fn framed(
    strict: bool,
    write: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>,
) -> thrift::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut o = TBinaryOutputProtocol::new(TFramedWriteTransport::new(&mut out), strict);
    write(&mut o)?;
    o.flush()?;
    drop(o);
    Ok(out)
}

/// The payload of the one frame `framed` holds, read through thrift's framed transport.
pub fn unframe(framed: &[u8]) -> thrift::Result<Vec<u8>> {
    let mut payload = vec![0; framed.len()];
    let n = TFramedReadTransport::new(framed).read(&mut payload)?;
    payload.truncate(n);
    Ok(payload)
}

// ---------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------

fn write_field(
    o: &mut dyn TOutputProtocol,
    name: &str,
    kind: TType,
    id: i16,
    value: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>,
) -> thrift::Result<()> {
    o.write_field_begin(&TFieldIdentifier::new(name, kind, id))?;
    value(o)?;
    o.write_field_end()
}

fn write_entries(o: &mut dyn TOutputProtocol, id: i16, entries: &[LogEntry]) -> thrift::Result<()> {
    write_field(o, "messages", TType::List, id, |o| {
        o.write_list_begin(&TListIdentifier::new(TType::Struct, size(entries.len())?))?;
        for entry in entries {
            o.write_struct_begin(&TStructIdentifier::new("LogEntry"))?;
            write_field(o, "category", TType::String, 1, |o| {
                o.write_bytes(&entry.category)
            })?;
            write_field(o, "message", TType::String, 2, |o| {
                o.write_bytes(&entry.message)
            })?;
            o.write_field_stop()?;
            o.write_struct_end()?;
        }
        o.write_list_end()
    })
}

/// `request` as a generated client sends it: a framed CALL (ONEWAY if `oneway`) named
/// `request.name`, strict header if `request.strict`, with `request.call`'s arguments
/// (none for [`Call::Unknown`]).
pub fn encode_request(request: &Request) -> thrift::Result<Vec<u8>> {
    framed(request.strict, |o| {
        let kind = if request.oneway {
            TMessageType::OneWay
        } else {
            TMessageType::Call
        };
        o.write_message_begin(&TMessageIdentifier::new(&request.name, kind, request.seqid))?;
        o.write_struct_begin(&TStructIdentifier::new(format!("{}_args", request.name)))?;
        match &request.call {
            Call::Log { entries } => write_entries(o, 1, entries)?,
            Call::LogBatch {
                publisher_id,
                sequence,
                entries,
            } => {
                write_field(o, "publisher_id", TType::String, 1, |o| {
                    o.write_bytes(publisher_id)
                })?;
                write_field(o, "sequence", TType::I64, 2, |o| o.write_i64(*sequence))?;
                write_entries(o, 3, entries)?;
            }
            Call::Fb303(Fb303Call::GetCounter { key }) => {
                write_field(o, "key", TType::String, 1, |o| o.write_bytes(key))?;
            }
            Call::Fb303(_) | Call::Unknown { .. } => {}
        }
        o.write_field_stop()?;
        o.write_struct_end()?;
        o.write_message_end()
    })
}

/// Reads the fields of a struct through its STOP, handing each `(id, type)` to `field`,
/// which reads the value or returns `false` to have it skipped.
fn read_struct(
    i: &mut dyn TInputProtocol,
    mut field: impl FnMut(&mut dyn TInputProtocol, Option<i16>, TType) -> thrift::Result<bool>,
) -> thrift::Result<()> {
    i.read_struct_begin()?;
    loop {
        let ident = i.read_field_begin()?;
        if ident.field_type == TType::Stop {
            break;
        }
        if !field(i, ident.id, ident.field_type)? {
            i.skip(ident.field_type)?;
        }
        i.read_field_end()?;
    }
    i.read_struct_end()
}

fn read_entries(i: &mut dyn TInputProtocol) -> thrift::Result<Vec<LogEntry>> {
    let list = i.read_list_begin()?;
    if list.size > 0 && list.element_type != TType::Struct {
        return Err(invalid(format!(
            "list of {} for messages",
            list.element_type
        )));
    }
    let mut entries = Vec::new();
    for _ in 0..list.size {
        let mut entry = LogEntry::default();
        read_struct(i, |i, id, kind| {
            match (id, kind) {
                (Some(1), TType::String) => entry.category = Bytes::from(i.read_bytes()?),
                (Some(2), TType::String) => entry.message = Bytes::from(i.read_bytes()?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        entries.push(entry);
    }
    i.read_list_end()?;
    Ok(entries)
}

/// Whether `payload` starts with a strict (versioned) header: thrift's strict reader
/// accepts only those.
fn is_strict(payload: &[u8]) -> bool {
    TBinaryInputProtocol::new(payload, true)
        .read_message_begin()
        .is_ok()
}

/// Decodes a request from a frame's payload as a generated server would (strict or
/// old header; unknown fields skipped).
pub fn decode_request(payload: &[u8]) -> thrift::Result<Request> {
    let strict = is_strict(payload);
    let mut i = TBinaryInputProtocol::new(payload, false);
    let header = i.read_message_begin()?;
    let oneway = match header.message_type {
        TMessageType::Call => false,
        TMessageType::OneWay => true,
        other => return Err(invalid(format!("a request of type {other}"))),
    };
    let call = match header.name.as_str() {
        "Log" => {
            let mut entries = Vec::new();
            read_struct(&mut i, |i, id, kind| {
                if (id, kind) != (Some(1), TType::List) {
                    return Ok(false);
                }
                entries = read_entries(i)?;
                Ok(true)
            })?;
            Call::Log { entries }
        }
        "LogBatch" => {
            let (mut publisher_id, mut sequence, mut entries) = (None, None, Vec::new());
            read_struct(&mut i, |i, id, kind| {
                match (id, kind) {
                    (Some(1), TType::String) => publisher_id = Some(Bytes::from(i.read_bytes()?)),
                    (Some(2), TType::I64) => sequence = Some(i.read_i64()?),
                    (Some(3), TType::List) => entries = read_entries(i)?,
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            Call::LogBatch {
                publisher_id: publisher_id.ok_or_else(|| invalid("no publisher_id"))?,
                sequence: sequence.ok_or_else(|| invalid("no sequence"))?,
                entries,
            }
        }
        "getCounter" => {
            let mut key = Bytes::new();
            read_struct(&mut i, |i, id, kind| {
                if (id, kind) != (Some(1), TType::String) {
                    return Ok(false);
                }
                key = Bytes::from(i.read_bytes()?);
                Ok(true)
            })?;
            Call::Fb303(Fb303Call::GetCounter { key })
        }
        name => match FB303_NO_ARGS.iter().find(|c| c.method_name() == name) {
            Some(call) => {
                read_struct(&mut i, |_, _, _| Ok(false))?;
                Call::Fb303(call.clone())
            }
            None => Call::Unknown {
                name: name.to_owned(),
            },
        },
    };
    Ok(Request {
        seqid: header.sequence_number,
        name: header.name,
        strict,
        oneway,
        call,
    })
}

// ---------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------

/// `reply` as a generated server sends it: a framed REPLY with the value in field 0 of
/// the result struct, or an EXCEPTION carrying a `TApplicationException` (whose `kind`
/// must be one thrift defines, 0..=10); strict header if `strict`.
pub fn encode_reply(reply: &DecodedReply, strict: bool) -> thrift::Result<Vec<u8>> {
    framed(strict, |o| {
        if let ReplyValue::Exception { kind, message } = &reply.value {
            let ident = TMessageIdentifier::new(&reply.name, TMessageType::Exception, reply.seqid);
            o.write_message_begin(&ident)?;
            let kind = ApplicationErrorKind::try_from(*kind)?;
            thrift::Error::write_application_error_to_out_protocol(
                &ApplicationError::new(kind, message.clone()),
                o,
            )?;
            return o.write_message_end();
        }
        let ident = TMessageIdentifier::new(&reply.name, TMessageType::Reply, reply.seqid);
        o.write_message_begin(&ident)?;
        o.write_struct_begin(&TStructIdentifier::new(format!("{}_result", reply.name)))?;
        match &reply.value {
            ReplyValue::ResultCode(code) => {
                write_field(o, "success", TType::I32, 0, |o| o.write_i32(code.as_i32()))?
            }
            ReplyValue::Status(status) => {
                write_field(o, "success", TType::I32, 0, |o| o.write_i32(*status))?
            }
            ReplyValue::String(s) => {
                write_field(o, "success", TType::String, 0, |o| o.write_bytes(s))?
            }
            ReplyValue::I64(v) => write_field(o, "success", TType::I64, 0, |o| o.write_i64(*v))?,
            ReplyValue::Counters(counters) => write_field(o, "success", TType::Map, 0, |o| {
                let n = size(counters.len())?;
                o.write_map_begin(&TMapIdentifier::new(TType::String, TType::I64, n))?;
                for (name, value) in counters {
                    o.write_string(name)?;
                    o.write_i64(*value)?;
                }
                o.write_map_end()
            })?,
            ReplyValue::Exception { .. } => unreachable!("written above"),
        }
        o.write_field_stop()?;
        o.write_struct_end()?;
        o.write_message_end()
    })
}

/// Decodes a reply from a frame's payload as a generated client of the method the reply
/// names would: field 0 of the method's declared return type (a field 0 of another
/// type is skipped, then missing), or a `TApplicationException` for EXCEPTION. A REPLY
/// to a method this module does not know is an error.
pub fn decode_reply(payload: &[u8]) -> thrift::Result<DecodedReply> {
    let mut i = TBinaryInputProtocol::new(payload, false);
    let header = i.read_message_begin()?;
    let value = match header.message_type {
        TMessageType::Reply => {
            let returns = returns(&header.name)
                .ok_or_else(|| invalid(format!("a reply to unknown method {}", header.name)))?;
            let mut value = None;
            read_struct(&mut i, |i, id, kind| {
                if id != Some(0) {
                    return Ok(false);
                }
                value = Some(match (returns, kind) {
                    (Returns::ResultCode, TType::I32) => {
                        let v = i.read_i32()?;
                        ReplyValue::ResultCode(
                            ResultCode::from_i32(v)
                                .ok_or_else(|| invalid(format!("result code {v}")))?,
                        )
                    }
                    (Returns::Status, TType::I32) => ReplyValue::Status(i.read_i32()?),
                    (Returns::String, TType::String) => {
                        ReplyValue::String(Bytes::from(i.read_bytes()?))
                    }
                    (Returns::I64, TType::I64) => ReplyValue::I64(i.read_i64()?),
                    (Returns::Counters, TType::Map) => {
                        let map = i.read_map_begin()?;
                        if map.size > 0
                            && (map.key_type, map.value_type)
                                != (Some(TType::String), Some(TType::I64))
                        {
                            return Err(invalid("counters are not map<string, i64>"));
                        }
                        let mut counters = Vec::new();
                        for _ in 0..map.size {
                            let name = String::from_utf8_lossy(&i.read_bytes()?).into_owned();
                            counters.push((name, i.read_i64()?));
                        }
                        i.read_map_end()?;
                        ReplyValue::Counters(counters)
                    }
                    _ => return Ok(false),
                });
                Ok(true)
            })?;
            value.ok_or_else(|| {
                thrift::new_application_error(
                    ApplicationErrorKind::MissingResult,
                    format!("{} returned no result", header.name),
                )
            })?
        }
        TMessageType::Exception => {
            let e = thrift::Error::read_application_error_from_in_protocol(&mut i)?;
            ReplyValue::Exception {
                kind: e.kind as i32,
                message: e.message,
            }
        }
        other => return Err(invalid(format!("a reply of type {other}"))),
    };
    i.read_message_end()?;
    Ok(DecodedReply {
        name: header.name,
        seqid: header.sequence_number,
        value,
    })
}
