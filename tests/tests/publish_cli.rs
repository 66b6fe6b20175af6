//! `conduit publish` end to end: stdin lines → publisher → a real collector process.

use std::io::Write;
use std::process::{Command, Stdio};

use conduit_core::format::decode_file;
use conduit_core::Encoding;
use conduit_testkit::process::{conduit_bin, free_port, CollectorProcess};

fn publish(args: &[&str], input: &[u8]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(conduit_bin())
        .arg("publish")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every payload under `root/data/<topic>/c1`, in file order, checking each file
/// is closed.
fn stored(root: &std::path::Path, topic: &str) -> Vec<String> {
    let data = root.join(format!("data/{topic}/c1"));
    let mut paths: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort(); // names sort by minute, then sequence
    let mut out = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let decoded = decode_file(path.to_str().unwrap(), &bytes, Encoding::Lines).unwrap();
        assert!(decoded.scan.is_closed());
        out.extend(
            decoded
                .payloads
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        );
    }
    out
}

#[test]
fn publish_spools_while_no_collector_answers_and_sends_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let spool = dir.path().join("spool");
    let thrift = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let first: String = (0..1000).map(|i| format!("first-{i}\n")).collect();
    let args = [
        "--topic",
        "spooled",
        "--collector",
        &thrift,
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    // Nothing listens yet: everything is spooled, exit status 75.
    let (status, stderr) = publish(&args, first.as_bytes());
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("1000 in the spool; 0 failed"), "{stderr}");

    // The collector is up: the next run sends the spool first, then its own lines.
    let mut collector = CollectorProcess::start_on(
        root.to_str().unwrap(),
        "c1",
        &thrift,
        &http,
        &[],
        &dir.path().join("logs"),
    )
    .unwrap();
    let second: String = (0..500).map(|i| format!("second-{i}\n")).collect();
    let (status, stderr) = publish(&args, second.as_bytes());
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("1500 events acknowledged"), "{stderr}");
    assert!(stderr.contains("0 in the spool; 0 failed"), "{stderr}");
    assert!(collector.terminate().unwrap().success());
    let expected: Vec<String> = first
        .lines()
        .chain(second.lines())
        .map(String::from)
        .collect();
    assert_eq!(
        stored(&root, "spooled"),
        expected,
        "every line once, in order"
    );
}

#[test]
fn publish_acknowledges_every_line_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut collector =
        CollectorProcess::start(root.to_str().unwrap(), "c1", &[], &dir.path().join("logs"))
            .unwrap();
    let input: String = (0..5000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let (status, stderr) = publish(
        &["--topic", "clicks", "--collector", &collector.thrift_addr],
        input.as_bytes(),
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("5000 events acknowledged"), "{stderr}");
    assert!(stderr.contains("; 0 failed"), "{stderr}");

    // Nothing reachable: non-zero exit with the count of failures.
    let (status, stderr) = publish(
        &[
            "--topic",
            "clicks",
            "--collector",
            "127.0.0.1:1",
            "--timeout-secs",
            "1",
        ],
        b"one\ntwo\n",
    );
    assert!(!status.success());
    assert!(stderr.contains("2 failed"), "{stderr}");

    // A bad topic is refused before anything is sent.
    let (status, stderr) = publish(&["--topic", "bad-topic"], b"x\n");
    assert!(!status.success());
    assert!(stderr.contains("invalid topic name"), "{stderr}");

    assert!(collector.terminate().unwrap().success());
    let expected: Vec<String> = (0..5000).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(
        stored(&root, "clicks"),
        expected,
        "every line once, in order"
    );
}
