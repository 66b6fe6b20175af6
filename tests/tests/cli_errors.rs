//! CLI failures name the cause and the next step, within seconds (issue 19): each
//! test runs the `conduit` binary with the command a user types and asserts the
//! exact message, the exit status and a deadline on how long it takes.
//!
//! | what is done | what it must say |
//! |---|---|
//! | `tail --topic clikcs` (a typo) | the topics that exist, a likely match, exit 1 |
//! | `tail` on a cluster with no data | that no topic has data yet, exit 1 |
//! | `tail --wait-for-topic`, or of a topic the config declares | waits, then prints the topic's first events |
//! | `publish --collector <nothing listens>` | the address, connection refused, the tries, exit 1 |
//! | `publish --collector <name that does not resolve>` | DNS lookup failed, exit 1 |
//! | `publish --collector <listener that never answers>` | timed out, exit 1 |
//! | a second `up` while one runs | each busy port, the pid holding it, exit 1, never "conduit is up" |
//! | `check` of an empty file / no clusters | what is missing and the smallest config (itself valid), exit 1 |
//! | `ls --json` | one JSON document with the same rows as the text |
//! | `<command> --help` | its exit statuses; a usage error exits 2 |

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conduit_testkit::process::{
    conduit_bin, free_port, free_up_ports, run_conduit, CollectorProcess, StdoutLines,
};
use conduit_testkit::wait::until_blocking;

/// How long a refusal may take: "within seconds".
const PROMPT: Duration = Duration::from_secs(10);

/// Publishes `lines` to `topic` through a real collector on `root` and stops it.
fn publish_through_collector(root: &Path, logs: &Path, topic: &str, lines: &str) {
    let root = root.to_str().unwrap();
    let mut collector = CollectorProcess::start(root, "c1", &[], logs).unwrap();
    let ran = run_conduit(
        &[
            "publish",
            "--topic",
            topic,
            "--collector",
            &collector.thrift_addr,
        ],
        lines.as_bytes(),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(collector.terminate().unwrap().success());
}

#[test]
fn tail_of_a_topic_that_does_not_exist_lists_the_topics_that_do() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root_arg = root.to_str().unwrap();

    // Nothing has data yet.
    std::fs::create_dir_all(&root).unwrap();
    let started = Instant::now();
    let ran = run_conduit(
        &["tail", "--root", root_arg, "--topic", "clicks"],
        b"",
        PROMPT,
    )
    .unwrap();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert_eq!(
        ran.stderr.trim_end(),
        format!(
            "error: no topic clicks in cluster dc1 ({root_arg}): no topic has data there yet; \
             publish to it first (conduit publish --topic clicks), or add --wait-for-topic to \
             wait for its first event"
        ),
        "{ran:?}"
    );
    eprintln!("tail on an empty root refused in {:?}", started.elapsed());

    // `clicks` and `views` have data; `clikcs` is a typo.
    let logs = dir.path().join("logs");
    publish_through_collector(&root, &logs, "clicks", "a\nb\n");
    publish_through_collector(&root, &logs, "views", "v\n");
    let started = Instant::now();
    let ran = run_conduit(
        &["tail", "--root", root_arg, "--topic", "clikcs"],
        b"",
        PROMPT,
    )
    .unwrap();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stdout.is_empty(), "{ran:?}");
    assert_eq!(
        ran.stderr.trim_end(),
        format!(
            "error: no topic clikcs in cluster dc1 ({root_arg}): topics with data there: \
             _audit, clicks, views; did you mean clicks? check --topic, or add \
             --wait-for-topic to wait for its first event"
        ),
        "{ran:?}"
    );
    eprintln!("tail --topic clikcs refused in {:?}", started.elapsed());
}

/// A running `conduit tail <args>` and the lines it prints.
struct Tail {
    child: std::process::Child,
    printed: StdoutLines,
}

impl Tail {
    fn spawn(args: &[&str]) -> Tail {
        let mut child = Command::new(conduit_bin())
            .arg("tail")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let printed = StdoutLines::of(&mut child);
        Tail { child, printed }
    }

    /// Waits for `n` lines; then stops the tail (which must still be running)
    /// and returns them.
    fn take(mut self, n: usize) -> Vec<String> {
        let child = &mut self.child;
        let got = self.printed.wait_until(
            &format!("tail to print {n} lines"),
            Duration::from_secs(60),
            |seen| (seen.len() >= n || child.try_wait().ok().flatten().is_some()).then_some(()),
        );
        let exited = self.child.try_wait().unwrap();
        let _ = self.child.kill();
        let output = self.child.wait_with_output().unwrap();
        got.unwrap_or_else(|e| panic!("{e}; printed {:?}", self.printed.seen));
        assert!(
            exited.is_none(),
            "tail exited with {exited:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.printed.seen
    }
}

#[test]
fn tail_waits_for_a_topic_without_data_only_when_asked_or_declared() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root_arg = root.to_str().unwrap().to_owned();
    let logs = dir.path().join("logs");
    let mut collector = CollectorProcess::start(&root_arg, "c1", &[], &logs).unwrap();
    let config = dir.path().join("conduit.toml");
    std::fs::write(
        &config,
        format!("[clusters.dc1]\nroot = \"{root_arg}\"\n\n[topics.orders]\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // A typo of a declared topic: refused, the declared one suggested.
    let ran = run_conduit(
        &["tail", "--config", config, "--topic", "order"],
        b"",
        PROMPT,
    )
    .unwrap();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert_eq!(
        ran.stderr.trim_end(),
        format!(
            "error: no topic order in cluster dc1 ({root_arg}): no topic has data there yet; \
             declared in the config: orders; did you mean orders? check --topic, or add \
             --wait-for-topic to wait for its first event"
        )
    );

    // Asked to wait, and declared: both tails wait and print the first events.
    let fresh = Tail::spawn(&[
        "--root",
        &root_arg,
        "--topic",
        "fresh",
        "--from",
        "10m",
        "--wait-for-topic",
    ]);
    let orders = Tail::spawn(&["--config", config, "--topic", "orders", "--from", "10m"]);
    for topic in ["fresh", "orders"] {
        let ran = run_conduit(
            &[
                "publish",
                "--topic",
                topic,
                "--collector",
                &collector.thrift_addr,
            ],
            format!("{topic} 1\n{topic} 2\n").as_bytes(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    assert_eq!(fresh.take(2), ["fresh 1", "fresh 2"]);
    assert_eq!(orders.take(2), ["orders 1", "orders 2"]);
    assert!(collector.terminate().unwrap().success());
}

#[test]
fn publish_to_an_address_where_nothing_listens_names_it_and_the_cause() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let ran = run_conduit(
        &["publish", "--topic", "clicks", "--collector", &addr],
        b"one\ntwo\n",
        PROMPT,
    )
    .unwrap();
    let took = started.elapsed();
    eprintln!("publish to {addr} refused in {took:?}");
    assert_eq!(ran.code, 1, "{ran:?}");
    let prefix = format!("error: cannot connect to collector {addr}: connection refused (");
    let line = ran
        .stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {ran:?}"));
    let tries: u64 = line[prefix.len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of tries in {line:?}"));
    assert!(tries >= 2, "{line}");
    assert!(line.contains(" tries); gave up after "), "{line}");
    assert!(
        ran.stderr.contains(
            "is a collector running there? start one (conduit collector, or conduit up), \
             or check --collector; --spool-dir DIR keeps events on disk until one answers"
        ),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("0 events acknowledged"), "{ran:?}");
    assert!(ran.stderr.contains("; 2 failed"), "{ran:?}");
}

#[test]
fn publish_to_a_collector_that_never_answers_says_timed_out() {
    // A listener with a backlog of 0 that never accepts: once its queue holds one
    // connection, the kernel drops further SYNs, as a firewall would.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        queued.push(stream);
        assert!(
            queued.len() <= 16,
            "a backlog of 0 accepted {}",
            queued.len()
        );
    }
    let addr = addr.to_string();
    let started = Instant::now();
    let ran = run_conduit(
        &["publish", "--topic", "clicks", "--collector", &addr],
        b"one\n",
        PROMPT,
    )
    .unwrap();
    eprintln!(
        "publish to {addr} (never answers) gave up in {:?}",
        started.elapsed()
    );
    assert_eq!(ran.code, 1, "{ran:?}");
    let prefix = format!("error: cannot connect to collector {addr}: timed out after 2.0 s (");
    assert!(
        ran.stderr.lines().any(|l| l.starts_with(&prefix)),
        "no line starting with {prefix:?}: {ran:?}"
    );
    assert!(ran.stderr.contains("; 1 failed"), "{ran:?}");
    drop(listener);
}

#[test]
fn publish_to_a_name_that_does_not_resolve_says_dns() {
    let ran = run_conduit(
        &[
            "publish",
            "--topic",
            "clicks",
            "--collector",
            "collector.invalid:1463",
            "--give-up-secs",
            "2",
        ],
        b"one\n",
        PROMPT,
    )
    .unwrap();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.lines().any(|l| l.starts_with(
            "error: cannot connect to collector collector.invalid:1463: DNS lookup failed ("
        )),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("; 1 failed"), "{ran:?}");
}

#[test]
fn a_second_up_while_one_runs_names_the_busy_ports_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (base_port, base_http) = free_up_ports();
    let ports = [
        "--base-port".to_owned(),
        base_port.to_string(),
        "--base-http-port".to_owned(),
        base_http.to_string(),
    ];
    let mut first = Command::new(conduit_bin())
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path().join("first"))
        .args(&ports)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = StdoutLines::of(&mut first);
    let ready = printed.wait_for(
        "the first conduit up to print its readiness table",
        Duration::from_secs(120),
        |l| l.trim_start().starts_with("status page:"),
    );
    if let Err(e) = ready {
        let _ = first.kill();
        panic!("{e}; printed:\n{}", printed.text());
    }
    let printed = printed.seen;

    // The readiness table: every process with its pid, addresses and health.
    let up_at = printed
        .iter()
        .position(|l| l.starts_with("conduit is up"))
        .expect("the up line");
    let header = printed[up_at + 2].split_whitespace().collect::<Vec<_>>();
    assert_eq!(
        header,
        ["process", "pid", "listens", "health"],
        "{printed:#?}"
    );
    let expected = [
        (
            "collector-dc1",
            format!("scribe 127.0.0.1:{base_port}, http 127.0.0.1:{base_http}"),
        ),
        ("worker-dc1", format!("http 127.0.0.1:{}", base_http + 10)),
        (
            "collector-dc2",
            format!(
                "scribe 127.0.0.1:{}, http 127.0.0.1:{}",
                base_port + 1,
                base_http + 1
            ),
        ),
        ("worker-dc2", format!("http 127.0.0.1:{}", base_http + 11)),
    ];
    let mut collector_pid = 0u32;
    for (i, (name, listens)) in expected.iter().enumerate() {
        let row = &printed[up_at + 3 + i];
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[0], *name, "{row}");
        let pid: u32 = fields[1].parse().unwrap_or_else(|_| panic!("pid in {row}"));
        if i == 0 {
            collector_pid = pid;
        }
        assert!(row.contains(listens.as_str()), "{row} lacks {listens}");
        assert_eq!(fields.last(), Some(&"ok"), "{row}");
    }
    assert!(
        printed
            .iter()
            .any(|l| l.trim() == format!("status page: http://127.0.0.1:{}/", base_http + 10)),
        "{printed:#?}"
    );

    // The second one: refused before starting anything.
    let second_dir = dir.path().join("second");
    let mut args = vec!["up", "--data-dir", second_dir.to_str().unwrap()];
    args.extend(ports.iter().map(String::as_str));
    let started = Instant::now();
    let ran = run_conduit(&args, b"", PROMPT).unwrap();
    eprintln!("second conduit up refused in {:?}", started.elapsed());
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(!ran.stdout.contains("conduit is up"), "{ran:?}");
    assert!(
        ran.stderr
            .contains("error: cannot start: ports are in use, nothing started:\n"),
        "{ran:?}"
    );
    let scribe_line = ran
        .stderr
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("127.0.0.1:{base_port} "))
        })
        .unwrap_or_else(|| panic!("no line for the Scribe port: {ran:?}"));
    assert!(
        scribe_line.starts_with(&format!(
            "  127.0.0.1:{base_port} (scribe of collector-dc1): in use by pid {collector_pid} ("
        )),
        "{scribe_line}"
    );
    assert!(
        scribe_line.contains(&format!("started by pid {} (", first.id())),
        "{scribe_line}"
    );
    let http_line = ran
        .stderr
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("127.0.0.1:{base_http} "))
        })
        .unwrap_or_else(|| panic!("no line for the HTTP port: {ran:?}"));
    assert!(
        http_line.ends_with("; its /health answers ok"),
        "{http_line}"
    );
    assert!(
        ran.stderr.contains(&format!(
            "stop what holds them (another `conduit up`: Ctrl-C it), or choose other ports \
             with --base-port (now {base_port}) and --base-http-port (now {base_http})"
        )),
        "{ran:?}"
    );
    let started_logs = std::fs::read_dir(second_dir.join("logs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(started_logs, 0, "the second up started a child");

    Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    let status = until_blocking(
        "the first conduit up to exit",
        Duration::from_secs(60),
        || first.try_wait().ok().flatten(),
    )
    .unwrap();
    assert!(status.success(), "conduit up exited with {status}");
}

#[test]
fn up_names_a_port_held_by_another_program() {
    let dir = tempfile::tempdir().unwrap();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let ran = run_conduit(
        &[
            "up",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--base-port",
            &port.to_string(),
            "--base-http-port",
            &free_port().to_string(),
        ],
        b"",
        PROMPT,
    )
    .unwrap();
    assert_eq!(ran.code, 1, "{ran:?}");
    // The other ports `up` derives from the two bases (+1, +10, +11) are not
    // reserved by this test, so another test may hold one too ("ports are in
    // use"): only the held port's line is asserted exactly.
    assert!(
        ran.stderr.starts_with("error: cannot start: ")
            && ran.stderr.contains(" in use, nothing started:\n"),
        "{ran:?}"
    );
    assert!(
        ran.stderr.contains(&format!(
            "\n  127.0.0.1:{port} (scribe of collector-dc1): in use by pid {} (",
            std::process::id()
        )),
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("conduit is up"), "{ran:?}");
    drop(held);
}

#[test]
fn check_refuses_a_config_with_nothing_to_run_and_shows_one_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let smallest = "[clusters.dc1]\nroot = \"/var/lib/conduit/dc1\"   # a directory, \
                    file:///path or hdfs://namenode:port/path";
    let cases = [
        ("empty.toml", "", "is empty"),
        ("comments.toml", "# nothing yet\n\n", "is empty"),
        (
            "no-clusters.toml",
            "[collector]\nstrict_topics = false\n",
            "has no [clusters.NAME] table",
        ),
    ];
    for (name, text, what) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let ran = run_conduit(&["check", "--config", path], b"", PROMPT).unwrap();
        assert_eq!(ran.code, 1, "{name}: {ran:?}");
        assert!(ran.stdout.is_empty(), "{name}: {ran:?}");
        assert_eq!(
            ran.stderr.trim_end(),
            format!(
                "error: {path} {what}: nothing to run (each cluster runs a collector and a \
                 worker). The smallest configuration:\n\n{smallest}\n\nconf/conduit.toml lists \
                 every key with its default; `conduit up` writes a two-cluster example to \
                 conduit-data/conduit.toml"
            ),
            "{name}"
        );
    }

    // The example shown is itself a configuration that checks.
    let example = dir.path().join("smallest.toml");
    std::fs::write(&example, smallest).unwrap();
    let ran = run_conduit(
        &["check", "--config", example.to_str().unwrap()],
        b"",
        PROMPT,
    )
    .unwrap();
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("is valid"), "{ran:?}");

    // `conduit up` refuses it the same way, before starting anything.
    let empty = dir.path().join("empty.toml");
    let ran = run_conduit(
        &[
            "up",
            "--config",
            empty.to_str().unwrap(),
            "--data-dir",
            dir.path().join("up").to_str().unwrap(),
            "--base-port",
            &free_port().to_string(),
            "--base-http-port",
            &free_port().to_string(),
        ],
        b"",
        PROMPT,
    )
    .unwrap();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("is empty: nothing to run"), "{ran:?}");
}

#[test]
fn ls_json_has_the_rows_of_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let minute = root.join("streams_local/clicks/2026/11/22/10/05");
    std::fs::create_dir_all(&minute).unwrap();
    std::fs::write(
        minute.join("dc1-c1-clicks-2026-11-22-10-05_00000.zst"),
        b"12345",
    )
    .unwrap();
    let root_arg = root.to_str().unwrap();
    let args = [
        "ls",
        "--root",
        root_arg,
        "--topic",
        "clicks",
        "--from",
        "2026-11-22T10:00",
    ];
    let text = run_conduit(&args, b"", PROMPT).unwrap();
    assert_eq!(text.code, 0, "{text:?}");
    assert_eq!(
        text.stdout,
        "2026-11-22T10:05Z  open    files=1  records=-  bytes=5  late=-\n"
    );
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let ran = run_conduit(&json_args, b"", PROMPT).unwrap();
    assert_eq!(ran.code, 0, "{ran:?}");
    let doc: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({
            "root": format!("file://{root_arg}"),
            "topic": "clicks",
            "view": "local",
            "directories": [{
                "minute": "2026-11-22T10:05Z",
                "path": "streams_local/clicks/2026/11/22/10/05",
                "sealed": false,
                "files": 1,
                "records": null,
                "bytes": 5,
                "late": null,
            }],
            "totals": {"directories": 1, "sealed": 0},
        })
    );
    assert_eq!(ran.stderr, text.stderr, "the summary line stays on stderr");
}

#[test]
fn every_command_documents_its_exit_status() {
    let commands = [
        "check",
        "collector",
        "publish",
        "tail",
        "lag",
        "verify",
        "audit",
        "worker",
        "ls",
        "up",
    ];
    for command in commands {
        let ran = run_conduit(&[command, "--help"], b"", PROMPT).unwrap();
        assert_eq!(ran.code, 0, "{command}: {ran:?}");
        let section = ran
            .stdout
            .split_once("\nExit status:\n")
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("{command} --help has no exit status:\n{}", ran.stdout));
        assert!(section.contains("  0 "), "{command}: {section}");
        assert!(section.contains("  1 "), "{command}: {section}");
        assert!(section.contains("  2 "), "{command}: {section}");
        assert!(
            section.trim_end().ends_with("usage error"),
            "{command}: {section}"
        );
    }
    for command in ["publish", "worker"] {
        let ran = run_conduit(&[command, "--help"], b"", PROMPT).unwrap();
        assert!(ran.stdout.contains("\n  75  "), "{command}: {}", ran.stdout);
    }
    let ran = run_conduit(&["--help"], b"", PROMPT).unwrap();
    assert!(
        ran.stdout.contains("Exit status: 0 success; 1 failure"),
        "{ran:?}"
    );

    // A usage error exits 2, as the help says.
    let ran = run_conduit(&["publish", "--topic", "clicks", "--bogus"], b"", PROMPT).unwrap();
    assert_eq!(ran.code, 2, "{ran:?}");
}
