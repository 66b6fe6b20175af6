//! Issue 14, "audit that cannot be fooled" and "payloads that go to `_invalid`",
//! against the real `conduit` binary: `_audit` records forged by a plain Scribe
//! client are refused (no false loss); absurd `acked` values sent with `LogBatch`
//! are reported as malformed, never summed (no wrap); a batch stored by two
//! collectors is reported as duplicates with their count; a payload that goes to
//! `_invalid` is a WARN line in the collector's log (escaped), a per-topic counter
//! and a column of `conduit audit`.
//!
//! Events with acknowledgements counted in `_audit` come from `conduit publish`
//! (the real publisher); forgers use the PyPI `thriftpy2` client or the test kit's
//! raw client.

use std::path::Path;
use std::time::Duration;

use conduit_core::Minute;
use conduit_testkit::gate;
use conduit_testkit::process::{metric, run_conduit, CollectorProcess, Ran};
use conduit_testkit::scribe::{log_step, Client, Thriftpy2};

/// How long a `conduit` command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// Events published by the real publisher.
const PUBLISHED: usize = 200;

struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Scene { dir }
    }

    fn root(&self) -> String {
        self.dir.path().join("root").display().to_string()
    }

    fn start(&self, id: &str) -> CollectorProcess {
        CollectorProcess::start(&self.root(), id, &[], &self.dir.path().join("logs"))
            .expect("collector starts")
    }

    fn conduit(&self, args: &[&str], input: &[u8]) -> Ran {
        run_conduit(args, input, COMMAND_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `conduit publish` of `PUBLISHED` lines to `topic` (acknowledged, with the
    /// publisher's `_audit` records sent at close).
    fn publish(&self, topic: &str, collector: &CollectorProcess) {
        let input: String = (0..PUBLISHED).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let ran = self.conduit(
            &[
                "publish",
                "--topic",
                topic,
                "--collector",
                &collector.thrift_addr,
            ],
            input.as_bytes(),
        );
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(
            ran.stderr
                .contains(&format!("{PUBLISHED} events acknowledged")),
            "{ran:?}"
        );
    }

    /// `conduit audit --json` of `topic` over `[from, to]`, every minute judged.
    fn audit(&self, topic: &str, from: Minute, to: Minute) -> (i32, serde_json::Value) {
        let root = self.root();
        let (from, to) = (from.to_string(), to.to_string());
        let args = [
            "audit",
            "--root",
            &root,
            "--topic",
            topic,
            "--from",
            &from,
            "--to",
            &to,
            "--settle-secs",
            "0",
            "--json",
        ];
        let ran = self.conduit(&args, b"");
        let report = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("audit output is not JSON ({e}): {ran:?}"));
        (ran.code, report)
    }

    /// The same audit as a table.
    fn audit_text(&self, topic: &str, from: Minute, to: Minute) -> Ran {
        let root = self.root();
        let (from, to) = (from.to_string(), to.to_string());
        self.conduit(
            &[
                "audit",
                "--root",
                &root,
                "--topic",
                topic,
                "--from",
                &from,
                "--to",
                &to,
                "--settle-secs",
                "0",
            ],
            b"",
        )
    }
}

fn now_minute() -> Minute {
    Minute::from_datetime(chrono::Utc::now()).unwrap()
}

/// An `_audit` record as a publisher writes it (`docs/format.md` §6).
fn audit_record(topic: &str, minute: Minute, acked: &str) -> Vec<u8> {
    format!(
        r#"{{"version":1,"publisher":"forger","topic":"{topic}","minute":"{minute}","acked":{acked},"sent_at":"{}"}}"#,
        chrono::Utc::now().to_rfc3339()
    )
    .into_bytes()
}

/// The collector's log lines, each of which must be one JSON object (no forged
/// line).
fn log_lines(collector: &CollectorProcess) -> Vec<serde_json::Value> {
    collector
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
        .collect()
}

#[test]
fn audit_records_forged_by_a_plain_scribe_client_are_refused_not_summed() {
    if !gate::python(
        "audit_records_forged_by_a_plain_scribe_client_are_refused_not_summed",
        "thriftpy2",
    ) {
        return;
    }
    let scene = Scene::new();
    let from = now_minute();
    let mut collector = scene.start("c1");
    scene.publish("clicks", &collector);
    // A plain Scribe client claims 5000 more acknowledged events.
    let forged = audit_record("clicks", from, "5000");
    let results = Thriftpy2::new().run(
        &collector.thrift_addr,
        vec![log_step(&[("_audit", forged)])],
    );
    assert_eq!(results[0]["code"], 0, "answered OK: {results:?}");
    let metrics = collector.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"conduit_collector_invalid_total{topic="_audit",reason="reserved_topic"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    let warned = log_lines(&collector)
        .into_iter()
        .any(|l| l["level"] == "WARN" && l["fields"]["reason"] == "reserved_topic");
    assert!(warned, "{}", collector.log());
    assert!(collector.terminate().unwrap().success());

    let (code, report) = scene.audit("clicks", from, now_minute());
    assert_eq!(code, 0, "no false loss: {report}");
    let totals = &report["totals"];
    assert_eq!(totals["acked"], PUBLISHED, "{report}");
    assert_eq!(totals["collected:dc1"], PUBLISHED, "{report}");
    assert_eq!(report["invalid"]["audit_refused"], 1, "{report}");
    assert_eq!(report["problems"], 0, "{report}");
}

#[test]
fn huge_acked_values_are_reported_malformed_never_summed() {
    let scene = Scene::new();
    let from = now_minute();
    let mut collector = scene.start("c1");
    scene.publish("clicks", &collector);
    // Two records of 2^63 each: their u64 sum wrapped to 0 and added nothing.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = Client::connect(&collector.thrift_addr).await;
        let huge = audit_record("clicks", from, "9223372036854775808");
        let entries = [("_audit", huge.clone()), ("_audit", huge)];
        let code = client.log_batch("forger", 1, &entries).await;
        assert_eq!(code, conduit_core::scribe::ResultCode::Ok);
    });
    assert!(collector.terminate().unwrap().success());

    let to = now_minute();
    let (code, report) = scene.audit("clicks", from, to);
    assert_eq!(code, 1, "malformed records are a finding: {report}");
    assert_eq!(report["totals"]["acked"], PUBLISHED, "{report}");
    assert_eq!(report["malformed_audit"]["records"], 2, "{report}");
    assert_eq!(report["duplicates"], serde_json::json!([]), "{report}");
    let text = scene.audit_text("clicks", from, to);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("MALFORMED: 2 _audit record(s)") && l.contains("exceeds")),
        "{text:?}"
    );
    assert!(!text.stdout.contains("LOSS"), "{text:?}");
}

#[test]
fn a_batch_stored_by_two_collectors_is_reported_as_duplicates_with_the_count() {
    const BATCHES: i64 = 10;
    const PER_BATCH: usize = 100;
    const RESENT: i64 = 3;
    let scene = Scene::new();
    let from = now_minute();
    let mut c1 = scene.start("c1");
    let mut c2 = scene.start("c2");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut first = Client::connect(&c1.thrift_addr).await;
        let mut second = Client::connect(&c2.thrift_addr).await;
        for seq in 1..=BATCHES {
            let entries: Vec<(&str, String)> = (0..PER_BATCH)
                .map(|i| ("dups", format!(r#"{{"seq":{seq},"i":{i}}}"#)))
                .collect();
            let code = first.log_batch("p1", seq, &entries).await;
            assert_eq!(code, conduit_core::scribe::ResultCode::Ok);
            // The ack of the last batches "was lost": the publisher fails over
            // and sends them again to the other collector, which stores them.
            if seq > BATCHES - RESENT {
                let code = second.log_batch("p1", seq, &entries).await;
                assert_eq!(code, conduit_core::scribe::ResultCode::Ok);
            }
        }
        // What the publisher had acknowledged: every event once.
        let record = audit_record("dups", from, &(BATCHES as usize * PER_BATCH).to_string());
        let code = first
            .log_batch("p1", BATCHES + 1, &[("_audit", record)])
            .await;
        assert_eq!(code, conduit_core::scribe::ResultCode::Ok);
    });
    assert!(c1.terminate().unwrap().success());
    assert!(c2.terminate().unwrap().success());

    let to = now_minute();
    let acked = BATCHES as u64 * PER_BATCH as u64;
    let copies = RESENT as u64 * PER_BATCH as u64;
    let (code, report) = scene.audit("dups", from, to);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["totals"]["acked"], acked, "{report}");
    assert_eq!(
        report["duplicates"],
        serde_json::json!([{"tier": "collected", "holds": acked + copies, "more": copies}]),
        "{report}"
    );
    let text = scene.audit_text("dups", from, to);
    assert!(
        text.stdout
            .contains(&format!("DUP: collected holds {} events", acked + copies))
            && text
                .stdout
                .contains(&format!("{copies} more than the {acked}")),
        "{text:?}"
    );
    assert!(
        !text.stdout.contains("no loss or duplication found"),
        "{text:?}"
    );
}

#[test]
fn a_payload_sent_to_invalid_is_a_warning_a_counter_and_an_audit_column() {
    if !gate::python(
        "a_payload_sent_to_invalid_is_a_warning_a_counter_and_an_audit_column",
        "thriftpy2",
    ) {
        return;
    }
    let scene = Scene::new();
    let from = now_minute();
    let mut collector = scene.start("c1");
    let results = Thriftpy2::new().run(
        &collector.thrift_addr,
        vec![log_step(&[
            ("clicks", b"{\"ok\":1}".to_vec()),
            ("clicks", b"line one\nline two".to_vec()),
            ("bad\ncat\x1b[31m", b"x".to_vec()),
        ])],
    );
    assert_eq!(results[0]["code"], 0, "answered OK: {results:?}");
    let metrics = collector.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"conduit_collector_invalid_total{topic="clicks",reason="newline_in_lines_payload"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"conduit_collector_invalid_total{topic="(invalid)",reason="invalid_topic"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    // One WARN line per reason, the category escaped: every line of the log is
    // still one JSON object.
    let lines = log_lines(&collector);
    let warning = |reason: &str| {
        lines
            .iter()
            .find(|l| l["level"] == "WARN" && l["fields"]["reason"] == reason)
            .unwrap_or_else(|| panic!("no WARN line for {reason}: {}", collector.log()))
            .clone()
    };
    assert_eq!(
        warning("newline_in_lines_payload")["fields"]["topic"],
        "clicks"
    );
    assert_eq!(
        warning("invalid_topic")["fields"]["topic"],
        "bad\\ncat\\x1b[31m"
    );
    assert!(collector.terminate().unwrap().success());

    let (code, report) = scene.audit("clicks", from, now_minute());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["totals"]["invalid"], 1, "{report}");
    assert_eq!(
        report["invalid"]["reasons"]["newline_in_lines_payload"], 1,
        "{report}"
    );
    assert_eq!(report["totals"]["collected:dc1"], 1, "{report}");
    assert!(Path::new(&scene.root()).join("data/_invalid/c1").exists());
}

/// Issue 19: `conduit audit --from 7d` printed thousands of rows of zeros. A
/// summary line comes first, and `--only-problems` lists only the minutes with
/// something wrong (here `_invalid` entries; unsealed minutes are waiting, not
/// late, within `--late-secs`), while totals still cover the range.
#[test]
fn only_problems_lists_the_minutes_with_something_after_a_summary_line() {
    let scene = Scene::new();
    let from = now_minute().add_minutes(-10).unwrap();
    let mut collector = scene.start("c1");
    scene.publish("clicks", &collector);
    conduit_testkit::runtime().block_on(async {
        let mut client = Client::connect(&collector.thrift_addr).await;
        let code = client.log_to("clicks", &["line one\nline two"]).await;
        assert_eq!(code, conduit_core::scribe::ResultCode::Ok);
    });
    assert!(collector.terminate().unwrap().success());
    let to = now_minute();

    let (code, full) = scene.audit("clicks", from, to);
    assert_eq!(code, 0, "{full}");
    let rows = full["minutes"].as_array().unwrap();
    let with = |tier: &str| rows.iter().filter(|r| r[tier].as_u64() > Some(0)).count();
    let invalid_minutes: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["invalid"].as_u64() > Some(0))
        .map(|r| &r["minute"])
        .collect();
    assert!(!invalid_minutes.is_empty(), "{full}");
    // No worker ran: the minutes holding data wait for their seal; the others
    // are before the stream (nothing to seal).
    let waiting = with("collected:dc1");
    let summary = format!(
        "clicks: {} minutes, {} sealed, {waiting} waiting, 0 late, 0 lost, 0 duplicated, 0 quarantined, {} invalid",
        rows.len(),
        rows.len() - waiting,
        invalid_minutes.len()
    );
    assert_eq!(full["summary_line"], summary, "{full}");
    assert_eq!(full["summary"]["invalid"], invalid_minutes.len(), "{full}");
    assert_eq!(full["only_problems"], false);

    let root = scene.root();
    let (from_s, to_s) = (from.to_string(), to.to_string());
    let only = |json: bool| {
        let mut args = vec![
            "audit",
            "--root",
            &root,
            "--topic",
            "clicks",
            "--from",
            &from_s,
            "--to",
            &to_s,
            "--settle-secs",
            "0",
            "--only-problems",
        ];
        if json {
            args.push("--json");
        }
        scene.conduit(&args, b"")
    };
    let ran = only(true);
    assert_eq!(ran.code, 0, "{ran:?}");
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let listed: Vec<&serde_json::Value> = report["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["minute"])
        .collect();
    assert_eq!(listed, invalid_minutes, "{report}");
    assert_eq!(report["totals"], full["totals"], "totals cover the range");
    assert_eq!(report["summary_line"], summary);
    assert_eq!(report["only_problems"], true);

    let ran = only(false);
    assert_eq!(ran.code, 0, "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[0], summary, "the summary comes first: {}", ran.stdout);
    assert!(lines[1].starts_with("minute "), "{}", ran.stdout);
    let table: Vec<&str> = lines[2..]
        .iter()
        .take_while(|l| !l.starts_with("total"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let expected: Vec<&str> = invalid_minutes
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(table, expected, "{}", ran.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("INVALID: 1 entries of this topic went to _invalid")),
        "{}",
        ran.stdout
    );
}
