//! Every JSON document type against samples written by the code before these
//! types existed, byte for byte.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;
use crate::heartbeat::Heartbeat;
use crate::manifest::Manifest;

/// Documents as conduit wrote them before the types moved here (collected from a
/// collector, `conduit publish`, `conduit worker --once` and `conduit tail --group`
/// runs, plus the shapes their code wrote but the run did not produce). Each must
/// parse and serialize back to the same bytes.
const SAMPLES: &[(&str, &str)] = &[
    (
        "heartbeat",
        r#"{"version":1,"cluster":"dc1","collector":"c1","state":"stopped","thrift_addr":"127.0.0.1:19463","http_addr":"127.0.0.1:19464","started_at":"2026-12-03T12:42:08.692635107Z","updated_at":"2026-12-03T12:43:17.330268174Z","watermark":"2026-12-03T12:42Z","spooled_bytes":0}"#,
    ),
    (
        "heartbeat",
        r#"{"version":1,"cluster":"dc1","collector":"c1","state":"running","thrift_addr":"127.0.0.1:1463","http_addr":"127.0.0.1:14630","started_at":"2026-11-22T10:00:03Z","updated_at":"2026-11-22T10:00:03Z","watermark":null,"spooled_bytes":4096}"#,
    ),
    (
        "manifest",
        r#"{"version":1,"view":"local","topic":"clicks","minute":"2026-12-03T12:42Z","clusters":["dc1"],"missing_clusters":[],"sealed_at":"2026-12-03T12:43:04.817442301Z","sealed_by":"dc1/vm-10074","records":2,"bytes":125,"files":[{"name":"dc1-c1-clicks-2026-12-03-12-42_00000.zst","bytes":125,"records":2,"crc32c":"7240a622","cluster":"dc1","collector":"c1","minute":"2026-12-03T12:42Z","late":false}]}"#,
    ),
    (
        "manifest",
        r#"{"version":1,"view":"hourly","topic":"clicks","minute":"2026-12-03T12:00Z","clusters":["dc1","dc2"],"missing_clusters":["dc3"],"sealed_at":"2026-12-03T13:01:00Z","sealed_by":"dc1/w","records":7,"bytes":300,"files":[{"name":"clicks-2026-12-03-12.zst","bytes":300,"records":7,"crc32c":"0000ffff","cluster":"dc1","minute":"2026-12-03T12:00Z","late":false}]}"#,
    ),
    (
        "audit",
        r#"{"version":1,"publisher":"ce0a7e433db43732","topic":"clicks","minute":"2026-12-03T12:42Z","acked":3,"sent_at":"2026-12-03T12:42:10.733866886+00:00"}"#,
    ),
    (
        "audit",
        r#"{"version":1,"publisher":"p\"1\\","topic":"_invalid","minute":"2026-12-03T12:42Z","acked":1,"sent_at":"2026-12-03T12:42:10+00:00"}"#,
    ),
    (
        "invalid",
        r#"{"arrived_at":"2026-12-03T12:42:10.684Z","cluster":"dc1","collector":"c1","detail":"not valid json: expected ident at line 1 column 2","payload_base64":"bm90IGpzb24=","reason":"validation_failed","topic":"clicks"}"#,
    ),
    (
        "invalid",
        r#"{"arrived_at":"2026-12-03T12:42:10.000Z","cluster":"dc1","collector":"c1","detail":"category is not valid utf-8","payload_base64":"","reason":"invalid_topic","topic":"a�"}"#,
    ),
    (
        "job checkpoint",
        r#"{"version":1,"job":"local","key":"clicks","saved_at":"2026-12-03T12:43:04.818414845Z","state":{"last_sealed":"2026-12-03T12:42Z"}}"#,
    ),
    (
        "merge checkpoint",
        r#"{"version":1,"saved_at":"2026-12-03T12:43:04.968632874Z","frontier":"2026-12-03T12:43Z","placed_through":{"dc1":"2026-12-03T12:42Z"}}"#,
    ),
    (
        "consumer checkpoint",
        r#"{"version":1,"group":"fraud","topic":"clicks","partition":"dc1-c1","committed_at":"2026-12-03T12:43:10.022861310Z","position":{"partition":"dc1-c1","minute":"2026-12-03T12:42Z","cluster":"dc1","collector":"c1","file":"clicks-2026-12-03-12-42_00000.zst","offset":56,"record":2}}"#,
    ),
    (
        "dedup snapshot",
        r#"{"version":1,"publishers":[["Y2UwYTdlNDMzZGI0MzczMg==",{"high":2,"recent":{"1":null,"2":null},"last_seen":1796301730}]]}"#,
    ),
    (
        "dedup snapshot",
        r#"{"version":1,"publishers":[["cDE=",{"high":9,"recent":{"8":null,"9":[0,2]},"last_seen":0}],["cDI=",{"high":0,"recent":{},"last_seen":5}]]}"#,
    ),
    (
        "lease",
        r#"{"version":1,"name":"worker","holder":"dc1/vm-10074-0258800f","epoch":1,"acquired_at":"2026-12-03T12:43:04.656723793Z","renewed_at":"2026-12-03T12:43:04.988643376Z","expires_at":"2026-12-03T12:42:58.988643376Z"}"#,
    ),
    (
        "group member",
        r#"{"version":1,"member":"host-10207-91ed","expires_ms":1796301800123}"#,
    ),
    (
        "group claim",
        r#"{"version":1,"member":"host-10207-91ed","expires_ms":0,"released":true}"#,
    ),
];

/// Parses `text` as `T` and serializes it again.
fn round_trip<T: Versioned + Serialize>(text: &str) -> Result<String, String> {
    let value: T = decode("example", text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(String::from_utf8(serde_json::to_vec(&value).unwrap()).unwrap())
}

fn round_trip_plain<T: DeserializeOwned + Serialize>(text: &str) -> Result<String, String> {
    let value: T = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(String::from_utf8(serde_json::to_vec(&value).unwrap()).unwrap())
}

/// Parses and re-serializes a document of the given kind.
fn round_trip_kind(kind: &str, text: &str) -> Result<String, String> {
    match kind {
        "heartbeat" => round_trip::<Heartbeat>(text),
        "manifest" => round_trip::<Manifest>(text),
        "audit" => round_trip::<AuditRecord>(text),
        "invalid" => round_trip_plain::<InvalidRecord>(text),
        "job checkpoint" => round_trip::<JobCheckpoint<LocalCheckpoint>>(text),
        "merge checkpoint" => round_trip::<MergeCheckpoint>(text),
        "consumer checkpoint" => round_trip::<ConsumerCheckpoint>(text),
        "dedup snapshot" => round_trip::<DedupSnapshot>(text),
        "lease" => round_trip::<LeaseRecord>(text),
        "group member" => round_trip::<GroupMember>(text),
        "group claim" => round_trip::<GroupClaim>(text),
        other => panic!("no type for {other:?}"),
    }
}

#[test]
fn documents_written_before_the_types_parse_and_keep_their_bytes() {
    for (kind, text) in SAMPLES {
        let written = round_trip_kind(kind, text).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(&written, text, "{kind}");
    }
}

#[test]
fn other_versions_are_typed_errors_and_garbage_is_malformed() {
    let future = r#"{"version":2,"name":"worker"}"#;
    assert_eq!(
        decode::<LeaseRecord>("p", future.as_bytes()),
        Err(RecordError::UnsupportedVersion {
            kind: "lease",
            path: "p".into(),
            version: 2,
            supported: 1,
        })
    );
    assert!(matches!(
        decode::<LeaseRecord>("p", b"{\"version\":1}"),
        Err(RecordError::Malformed { kind: "lease", .. })
    ));
    assert!(matches!(
        decode::<DedupSnapshot>("p", b"not json"),
        Err(RecordError::Malformed { .. })
    ));
    // Readers that parse with serde directly refuse other versions too.
    assert!(serde_json::from_str::<GroupClaim>(
        r#"{"version":2,"member":"m","expires_ms":0,"released":false}"#
    )
    .unwrap_err()
    .to_string()
    .contains("unsupported version 2"));
    // Unknown fields are ignored; `released` defaults to false.
    let claim: GroupClaim =
        serde_json::from_str(r#"{"version":1,"member":"m","expires_ms":5,"new":true}"#).unwrap();
    assert!(!claim.released);
}

#[test]
fn timestamps_keep_the_spelling_of_their_writer() {
    use chrono::TimeZone;
    let at = chrono::Utc
        .timestamp_opt(1_796_301_730, 733_866_886)
        .single()
        .unwrap();
    let audit = AuditRecord {
        version: Version,
        publisher: "p".into(),
        topic: crate::Topic::new("clicks").unwrap(),
        minute: crate::Minute::from_datetime(at).unwrap(),
        acked: 1,
        sent_at: at,
    };
    let text = String::from_utf8(audit.to_json()).unwrap();
    assert!(
        text.contains(&format!(r#""sent_at":"{}""#, at.to_rfc3339())),
        "{text}"
    );
    let invalid = InvalidRecord {
        arrived_at: at,
        cluster: crate::NodeName::new("dc1").unwrap(),
        collector: crate::NodeName::new("c1").unwrap(),
        detail: String::new(),
        payload_base64: Base64Bytes(bytes::Bytes::from_static(b"\xff\n")),
        reason: "validation_failed".into(),
        topic: "t".into(),
    };
    let line = invalid.to_line();
    assert!(line.ends_with(b"}\n"));
    let text = String::from_utf8(line).unwrap();
    assert!(
        text.contains(r#""arrived_at":"2026-12-03T12:42:10.733Z""#),
        "{text}"
    );
    let back: InvalidRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back.arrived_at.timestamp_millis(), at.timestamp_millis());
    assert_eq!(back.payload_base64, invalid.payload_base64);
}
