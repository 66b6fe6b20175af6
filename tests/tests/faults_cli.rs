//! Faults of the command-line consumers and publishers (issue 20), against a real
//! collector process: `conduit tail --group` killed while its output pipe is
//! full commits only what it handed over; `conduit publish` exits at once when
//! everything is acknowledged and its collector was killed afterwards.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conduit_testkit::process::{conduit_bin, metric, CollectorProcess, StdoutLines};
use conduit_testkit::{gate, runtime, scribe, wait};

/// The slow reader at the other end of `conduit tail`'s stdout: reads 1 KiB at a
/// time with a pause between reads, appends what it got to `OUT`, and after every
/// read appends `<bytes received> <bytes waiting in the pipe>` to `STATUS` (the
/// pipe's fill level, `FIONREAD`), until end of file.
const SLOW_READER: &str = r#"
import fcntl, os, struct, sys, termios, time
out_path, status_path = sys.argv[1], sys.argv[2]
fd = sys.stdin.fileno()
total = 0
with open(out_path, "wb") as out, open(status_path, "w") as status:
    while True:
        waiting = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        total += len(chunk)
        out.write(chunk)
        out.flush()
        status.write(f"{total} {waiting}\n")
        status.flush()
        time.sleep(0.01)
"#;

/// The slow reader's highest rate: 1 KiB per read, at least 10 ms apart.
const READER_BYTES_PER_SEC: usize = 1024 * 100;
/// Bytes a Linux pipe holds by default.
const PIPE_BYTES: usize = 64 << 10;
/// `conduit tail`'s output buffer.
const TAIL_BUFFER_BYTES: usize = 64 << 10;

fn tail_command(root: &Path, logs: &Path, run: &str) -> Command {
    let mut tail = Command::new(conduit_bin());
    tail.args(["--log-format", "json", "tail", "--root"])
        .arg(root)
        .args(["--topic", "faults", "--group", "g", "--from-beginning"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(logs.join(format!("tail-{run}.log"))).unwrap(),
        ));
    tail
}

/// The last `(received, waiting)` line of the slow reader's status file.
fn reader_status(path: &Path) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().last()?;
    let (received, waiting) = line.split_once(' ')?;
    Some((received.parse().ok()?, waiting.parse().ok()?))
}

/// The group `g`'s checkpoints of topic `faults` (PinTail's files under
/// `system/checkpoints/pintail/`), to see a commit happen.
fn commits(root: &Path) -> Vec<String> {
    let dir = root.join("system/checkpoints/pintail");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("g.faults."))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_tail_killed_on_a_full_pipe_loses_nothing_on_restart() {
    if !gate::tool("faults_cli tail kill", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let collector = CollectorProcess::start(root.to_str().unwrap(), "c1", &[], &logs).unwrap();

    // 6000 acknowledged events of 100 bytes each (with the newline): 600 KB of
    // output, ten times what the pipe and the tail's buffer hold together.
    let n = 6000;
    let events: Vec<String> = (0..n).map(|i| format!("ev-{i:06}-{:>89}", "x")).collect();
    let line_bytes = events[0].len() + 1;
    assert_eq!(line_bytes, 100);
    let rt = runtime();
    rt.block_on(async {
        let mut client = scribe::Client::connect(collector.thrift_addr.as_str()).await;
        for chunk in events.chunks(500) {
            client.log_acked("faults", chunk).await;
        }
    });

    // First run: stdout into a slow reader; killed while the pipe is full.
    let mut tail = tail_command(&root, &logs, "1").spawn().unwrap();
    let first_out = dir.path().join("reader-1.out");
    let status = dir.path().join("reader-1.status");
    let mut reader = Command::new("python3")
        .args(["-c", SLOW_READER])
        .arg(&first_out)
        .arg(&status)
        .stdin(Stdio::from(tail.stdout.take().unwrap()))
        .spawn()
        .unwrap();
    // Past 250 KB read with the pipe full behind it: the tail is blocked
    // writing.
    wait::until_blocking(
        "the slow reader to get 250 KB with the pipe full behind it",
        Duration::from_secs(60),
        || reader_status(&status).filter(|(r, w)| *r >= 250_000 && *w >= PIPE_BYTES - 4096),
    )
    .unwrap();
    // Then the kill lands right after the tail's next commit, the pipe still
    // full: a tail that commits events still in its output buffer loses them
    // exactly there.
    let before = commits(&root);
    let (received, waiting) = wait::until_blocking(
        "the tail's next commit with the pipe full",
        Duration::from_secs(60),
        || {
            reader_status(&status)
                .filter(|(_, w)| *w >= PIPE_BYTES - 8192 && commits(&root) != before)
        },
    )
    .unwrap();
    kill9(&mut tail);
    let killed_at = Instant::now();
    // The reader drains what the pipe held and sees the end of file.
    wait::until_blocking("the slow reader to end", Duration::from_secs(60), || {
        reader.try_wait().unwrap()
    })
    .unwrap();
    let drained = killed_at.elapsed();

    // Second run of the same group, read at full speed until every event is in
    // the union of what both readers got.
    let first: Vec<String> = std::fs::read_to_string(&first_out)
        .unwrap()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n')) // the kill may cut the last line
        .map(|l| l.trim_end().to_owned())
        .collect();
    let mut second_tail = tail_command(&root, &logs, "2").spawn().unwrap();
    let mut second = StdoutLines::of(&mut second_tail);
    let known: HashSet<&str> = first.iter().map(String::as_str).collect();
    let all: HashSet<&str> = events.iter().map(String::as_str).collect();
    let covered = second.wait_until(
        "the second run to deliver what the first did not",
        Duration::from_secs(60),
        |seen| {
            let mut union = known.clone();
            union.extend(seen.iter().map(String::as_str));
            (union.len() >= all.len()).then_some(())
        },
    );
    kill9(&mut second_tail);
    let log1 = std::fs::read_to_string(logs.join("tail-1.log")).unwrap_or_default();
    let log2 = std::fs::read_to_string(logs.join("tail-2.log")).unwrap_or_default();
    covered.unwrap_or_else(|e| {
        panic!(
            "{e}: events lost; first run got {}, second {}\ntail 1 log:\n{log1}\ntail 2 log:\n{log2}",
            first.len(),
            second.seen.len()
        )
    });
    let second_lines = &second.seen;

    // Nothing lost, nothing foreign, no event twice within a run.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in first.iter().chain(second_lines) {
        assert!(all.contains(line.as_str()), "not published: {line:?}");
        *counts.entry(line.as_str()).or_default() += 1;
    }
    assert_eq!(
        counts.len(),
        n,
        "every published event was handed to a reader"
    );
    assert_eq!(first.len(), known.len(), "no event twice in the first run");
    // The second run resumes inside what the first reader got (one partition:
    // the duplicates are a suffix of the first run) and goes on from there.
    let duplicates = counts.values().filter(|c| **c > 1).count();
    let resumed_at = first.len() - duplicates;
    assert_eq!(
        &first[resumed_at..],
        &second_lines[..duplicates],
        "the duplicates are the end of the first run, in order"
    );
    assert_eq!(second_lines.len() - duplicates, n - first.len());
    // Bounded: the duplicates are what the reader got after the tail's last
    // commit: what it read until the kill, at most two seconds after that commit
    // (a commit is due a second after the last, once a flush into the full pipe
    // has gone through), plus what the pipe and the buffer held.
    let bound = (PIPE_BYTES + TAIL_BUFFER_BYTES + 2 * READER_BYTES_PER_SEC) / line_bytes;
    println!(
        "tail kill on a full pipe: {n} events acknowledged; first run handed over {} \
         (killed right after a commit with {received} B read, {waiting} B waiting in the \
         pipe; drained in {:.2} s); \
         second run {}; lost 0; duplicated {duplicates} (bound {bound})",
        first.len(),
        drained.as_secs_f64(),
        second_lines.len()
    );
    assert!(
        resumed_at > 0,
        "the first run committed something before it was killed"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than the {bound} handed over in a commit interval"
    );
}

#[test]
fn publish_exits_at_once_when_everything_is_acknowledged_and_the_collector_died() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let logs = dir.path().join("logs");
    let mut collector = CollectorProcess::start(root.to_str().unwrap(), "c1", &[], &logs).unwrap();
    let n = 1000;
    let mut publish = Command::new(conduit_bin())
        .args(["publish", "--topic", "acked", "--progress", "--collector"])
        .arg(&collector.thrift_addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = publish.stdin.take().unwrap();
    let input: String = (0..n).map(|i| format!("acked-{i}\n")).collect();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // The progress line (stderr, refreshed every 250 ms while stdin stays open)
    // says every event was acknowledged.
    let stderr = publish.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let collected = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        let mut stderr = stderr;
        while let Ok(k) = stderr.read(&mut buf) {
            if k == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..k]).into_owned();
            all.push_str(&text);
            let _ = tx.send(text);
        }
        all
    });
    let mut seen = String::new();
    wait::until_blocking(
        "publish to report every event acknowledged",
        Duration::from_secs(60),
        || {
            while let Ok(text) = rx.try_recv() {
                seen.push_str(&text);
            }
            seen.contains(&format!("{n} read, {n} acknowledged"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}; stderr so far: {seen}"));
    let stored = metric(
        &collector.metrics(),
        r#"conduit_collector_events_total{topic="acked"}"#,
    );

    // The collector dies; then the input ends.
    collector.kill9();
    let started = Instant::now();
    drop(stdin);
    let status = wait::until_blocking("publish to exit", Duration::from_secs(30), || {
        publish.try_wait().unwrap()
    })
    .unwrap();
    let took = started.elapsed();
    let stderr = collected.join().unwrap();
    println!(
        "publish: {n} events acknowledged, collector killed -9, exit {:?} after {:.3} s",
        status.code(),
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("{n} events acknowledged")) && stderr.contains("0 failed"),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(2),
        "publish took {took:?} to exit after everything was acknowledged:\n{stderr}"
    );
    // Every event is stored (read back from the collector's files).
    assert_eq!(
        stored,
        Some(n as f64),
        "the collector made every event durable"
    );
    let rt = runtime();
    let storage = conduit_testkit::local_storage(&root);
    let payloads = rt.block_on(conduit_testkit::collector::stored_payloads(
        &*storage, "acked",
    ));
    let payloads: HashSet<String> = payloads
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(payloads.len(), n, "every acknowledged event is stored once");
}
