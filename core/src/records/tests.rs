//! Every JSON document type against (1) samples written by the code before these
//! types existed, byte for byte, and (2) its section of `docs/format.md`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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
        "dedup snapshot",
        r#"{"version":1,"publishers":[["cDE=",{"high":1796301730000001,"recent":{},"last_seen":1796301731,"batches":[{"seq":1796301730000000,"digest":"d85f2727cbb8a6c1"},{"seq":1796301730000001,"digest":"0000000000000007","parts":[1]}]}]]}"#,
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
fn audit_records_are_validated_before_they_are_counted() {
    let record = |fields: &str| {
        format!(
            r#"{{"version":1,"publisher":"p1","topic":"clicks","minute":"2026-12-03T12:42Z",{fields}"sent_at":"2026-12-03T12:42:10+00:00"}}"#
        )
    };
    let ok = AuditRecord::parse(record(r#""acked":1000,"#).as_bytes()).unwrap();
    assert_eq!(ok.acked, 1000);
    assert_eq!(
        AuditRecord::parse(record(&format!(r#""acked":{MAX_AUDIT_ACKED},"#)).as_bytes())
            .unwrap()
            .acked,
        MAX_AUDIT_ACKED
    );
    let malformed = |text: &str| match AuditRecord::parse(text.as_bytes()) {
        Err(AuditRecordError::Malformed { reason }) => reason,
        other => panic!("{text}: expected malformed, got {other:?}"),
    };
    // Values that wrapped a u64 sum: 2 x 2^63 = 0.
    let huge = malformed(&record(r#""acked":9223372036854775808,"#));
    assert!(huge.contains("exceeds 1000000000000"), "{huge}");
    malformed(&record(&format!(r#""acked":{},"#, MAX_AUDIT_ACKED + 1)));
    malformed(&record(r#""acked":18446744073709551616,"#));
    malformed(&record(r#""acked":-5,"#));
    malformed(&record(r#""acked":1.5,"#));
    malformed(&record(r#""acked":"7","#));
    malformed(&record(""));
    // A second `acked` cannot override the first.
    malformed(&record(r#""acked":1,"acked":9223372036854775808,"#));
    malformed(&record(r#""acked":1,"#).replace("clicks", "no-dashes"));
    malformed(&record(r#""acked":1,"#).replace("12:42Z", "12:61Z"));
    malformed("not json");
    malformed(r#"["version",1]"#);
    assert_eq!(
        AuditRecord::parse(
            record(r#""acked":1,"#)
                .replace(r#""version":1"#, r#""version":2"#)
                .as_bytes()
        ),
        Err(AuditRecordError::OtherVersion { version: 2 })
    );
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

// ---------------------------------------------------------------------------
// docs/format.md
// ---------------------------------------------------------------------------

fn format_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/format.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the section whose heading starts with `heading` (up to the next
/// heading of the same or a higher level).
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| doc[i..].starts_with(heading))
        .unwrap_or_else(|| panic!("docs/format.md has no heading {heading:?}"));
    let level = heading.chars().take_while(|&c| c == '#').count();
    let body = &doc[start + heading.len()..];
    let end = body
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| {
            let hashes = body[i..].chars().take_while(|&c| c == '#').count();
            hashes > 0 && hashes <= level && body[i..][hashes..].starts_with(' ')
        })
        .unwrap_or(body.len());
    &doc[start..start + heading.len() + end]
}

/// The ```json blocks of a section.
fn json_blocks(section: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```json") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Every object key in a JSON value, nested ones included.
fn keys(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                into.insert(k.clone());
                keys(v, into);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, into)),
        _ => {}
    }
}

/// Which section documents which document, and how many JSON examples it has.
const DOCUMENTED: &[(&str, &str, usize)] = &[
    ("### 5.2 ", "heartbeat", 1),
    ("### 5.5 ", "invalid", 1),
    ("### 5.6 ", "dedup snapshot", 1),
    ("## 6. ", "audit", 1),
    ("### 7.1 ", "manifest", 2),
    ("### 8.1 ", "lease", 1),
    ("### 8.2 ", "job checkpoint", 2),
    ("### 8.3 ", "merge checkpoint", 1),
    ("### 9.1 ", "consumer checkpoint", 1),
    ("### 9.2 ", "group member", 1),
    ("### 9.2 ", "group claim", 1),
];

/// Keys that are values of a map in the examples (cluster names of
/// `placed_through`, sequence numbers of `recent`, file names of `dropped`), not
/// field names.
const MAP_KEYS: &[&str] = &[
    "dc1",
    "dc2",
    "7",
    "8",
    "9",
    "dc1-c2-clicks-2026-11-22-10-06_00000.zst",
];

#[test]
fn format_md_examples_are_exactly_what_the_types_write() {
    let doc = format_md();
    for &(heading, kind, count) in DOCUMENTED {
        let text = section(&doc, heading);
        // A section documenting two documents has an example of each: take the
        // ones this type writes exactly, and report why the others do not count.
        let mut examples = Vec::new();
        let mut refused = Vec::new();
        for block in json_blocks(text) {
            let example: Value = serde_json::from_str(&block)
                .unwrap_or_else(|e| panic!("{heading}: an example is not json: {e}\n{block}"));
            match round_trip_kind(kind, block.trim()) {
                Ok(written) if serde_json::from_str::<Value>(&written).unwrap() == example => {
                    examples.push(example)
                }
                Ok(written) => refused.push(format!("the type writes {written}")),
                Err(e) => refused.push(e),
            }
        }
        assert_eq!(
            examples.len(),
            count,
            "{heading}: expected {count} json example(s) that the {kind} type writes \
             exactly; the others: {refused:?}"
        );
        for example in examples {
            let mut fields = BTreeSet::new();
            keys(&example, &mut fields);
            for field in fields {
                if MAP_KEYS.contains(&field.as_str()) {
                    continue;
                }
                assert!(
                    text.contains(&format!("`{field}`")),
                    "{heading}: field `{field}` of the {kind} is not described"
                );
            }
        }
    }
}

#[test]
fn format_md_marks_nothing_as_reserved_for_a_future_worker() {
    let doc = format_md();
    for phrase in ["specified by the worker", "does not exist yet"] {
        assert!(
            !doc.contains(phrase),
            "docs/format.md still says {phrase:?}"
        );
    }
}
