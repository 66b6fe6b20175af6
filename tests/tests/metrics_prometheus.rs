//! `/metrics` as Prometheus tools read it (issue 19), against real
//! `conduit collector` and `conduit worker` processes:
//! - the classic text format (`text/plain; version=0.0.4`) unless the `Accept`
//!   header prefers OpenMetrics, which Prometheus's does; the same samples in
//!   both; `promtool check metrics` accepts every endpoint's answer;
//! - every counter with a bounded label set is there from the start, at 0;
//!   process metrics and `conduit_build_info` on every process;
//! - `docs/monitoring/alerts.yml` passes `promtool check rules`, and every metric
//!   it and `docs/monitoring/grafana-dashboard.json` name is exposed (after a
//!   minute is sealed, so that the lag gauge exists).
//!
//! `promtool` comes from Debian's `prometheus` package (`.ci/run` installs it).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conduit_core::http::{CLASSIC_CONTENT_TYPE, METRICS_CONTENT_TYPE};
use conduit_testkit::gate;
use conduit_testkit::process::{metric, workspace_root, CollectorProcess, WorkerProcess};
use conduit_testkit::scribe::Client;
use conduit_testkit::wait::until_blocking;

/// The `Accept` header Prometheus 2.x scrapes with.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A collector and a worker (`dc1`) on one local root.
struct Bus {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    collector: CollectorProcess,
    worker: WorkerProcess,
}

impl Bus {
    fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&root).unwrap();
        let root_text = root.to_str().unwrap();
        let collector = CollectorProcess::start(root_text, "c1", &[], &logs).unwrap();
        let args = [
            "--root",
            root_text,
            "--cluster",
            "dc1",
            "--interval-ms",
            "200",
        ];
        let worker = WorkerProcess::start(&args, &logs).unwrap();
        Bus {
            _dir: dir,
            root,
            collector,
            worker,
        }
    }

    /// Every process's HTTP address, named.
    fn endpoints(&self) -> [(&'static str, &str); 2] {
        [
            ("collector", self.collector.http_addr.as_str()),
            ("worker", self.worker.http_addr.as_str()),
        ]
    }
}

/// `GET /metrics` with `accept`: the content type and the body.
fn scrape(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .expect("a content type");
    (content_type, body.to_owned())
}

/// `promtool` with `args`, `stdin` piped in: whether it succeeded, and what it
/// printed.
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// The sample lines of a scrape, without the process metrics (which move from
/// one scrape to the next).
fn samples(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Every metric name a scrape exposes: family names of `# TYPE` lines and
/// sample names.
fn exposed(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

/// Every `conduit_*` and `process_*` name in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c.is_ascii_lowercase()) {
        let word_start = &rest[at..];
        let len = word_start
            .find(|c: char| !is_name(c))
            .unwrap_or(word_start.len());
        let word = &word_start[..len];
        let boundary = at == 0 || !is_name(rest[..at].chars().next_back().unwrap());
        if boundary && (word.starts_with("conduit_") || word.starts_with("process_")) {
            names.insert(word.to_owned());
        }
        rest = &word_start[len.max(1)..];
    }
    names
}

#[test]
fn every_endpoint_negotiates_its_format_and_passes_promtool() {
    if !gate::promtool("every_endpoint_negotiates_its_format_and_passes_promtool") {
        return;
    }
    let bus = Bus::start();
    for (process, addr) in bus.endpoints() {
        let (content_type, classic) = scrape(addr, None);
        assert_eq!(content_type, CLASSIC_CONTENT_TYPE, "{process}");
        let (ok, printed) = promtool(&["check", "metrics"], &classic);
        assert!(
            ok,
            "promtool check metrics on the {process}:\n{printed}\n{classic}"
        );
        assert_eq!(printed.trim(), "", "{process}: promtool has nothing to say");
        assert!(!classic.contains("# EOF"), "{process}");

        let (content_type, star) = scrape(addr, Some("*/*"));
        assert_eq!(
            content_type, CLASSIC_CONTENT_TYPE,
            "{process}: curl's Accept"
        );
        assert_eq!(samples(&star), samples(&classic), "{process}");

        let (content_type, openmetrics) = scrape(addr, Some(PROMETHEUS_ACCEPT));
        assert_eq!(
            content_type, METRICS_CONTENT_TYPE,
            "{process}: Prometheus's Accept"
        );
        assert!(openmetrics.ends_with("# EOF\n"), "{process}");
        assert_eq!(
            samples(&openmetrics),
            samples(&classic),
            "{process}: the same samples in both formats"
        );
        // The formats differ where they must: a counter's family name.
        assert!(
            openmetrics.contains("# TYPE conduit_http_connections_closed counter\n"),
            "{process}"
        );
        assert!(
            classic.contains("# TYPE conduit_http_connections_closed_total counter\n"),
            "{process}"
        );
        for line in classic.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                classic.contains(&format!("# HELP {name} ")),
                "{process}: {name} has help text"
            );
        }
    }
}

#[test]
fn counters_process_metrics_and_build_info_are_there_from_the_start() {
    let bus = Bus::start();
    let collector = bus.collector.metrics();
    let zero = |name: &str, label: &str, values: &[&str]| {
        for value in values {
            let sample = format!("{name}{{{label}=\"{value}\"}}");
            assert_eq!(
                metric(&collector, &sample),
                Some(0.0),
                "{sample}:\n{collector}"
            );
        }
    };
    zero(
        "conduit_collector_connection_errors_total",
        "reason",
        &[
            "max_connections",
            "max_connections_per_ip",
            "frame_too_large",
            "truncated_frame",
            "io",
            "wrong_message_type",
            "malformed",
            "not_thrift",
        ],
    );
    zero(
        "conduit_collector_try_later_total",
        "reason",
        &[
            "queue_full",
            "shutting_down",
            "max_connections",
            "spool_unavailable",
            "storage_unavailable",
            "memory",
            "max_connections_per_ip",
            "open_files",
        ],
    );
    zero(
        "conduit_collector_calls_total",
        "method",
        &[
            "Log",
            "LogBatch",
            "getName",
            "getVersion",
            "getStatus",
            "getStatusDetails",
            "getCounters",
            "getCounter",
            "aliveSince",
            "unknown",
        ],
    );
    zero(
        "conduit_collector_connections_total",
        "transport",
        &["framed", "unframed"],
    );
    zero(
        "conduit_collector_storage_errors_total",
        "op",
        &[
            "create",
            "write",
            "sync",
            "close",
            "replay",
            "dedup_snapshot",
        ],
    );
    zero(
        "conduit_collector_open_reads_total",
        "result",
        &[
            "ok",
            "gone",
            "not_found",
            "too_old",
            "past_end",
            "bad_request",
        ],
    );
    zero(
        "conduit_collector_connections_closed_total",
        "reason",
        &[
            "first_call_timeout",
            "idle_timeout",
            "frame_timeout",
            "evicted_idle",
        ],
    );
    let worker = bus.worker.metrics();
    for job in ["local", "merge", "mirror", "compact", "purge"] {
        for counter in ["passes", "errors", "sealed_dirs", "files_quarantined"] {
            let sample = format!("conduit_worker_{counter}_total{{job=\"{job}\"}}");
            assert!(metric(&worker, &sample).is_some(), "{sample}:\n{worker}");
        }
    }

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (process, body) in [("collector", &collector), ("worker", &worker)] {
        let info = body
            .lines()
            .find(|l| l.starts_with("conduit_build_info{"))
            .unwrap_or_else(|| panic!("{process}: no conduit_build_info:\n{body}"));
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            info.starts_with(&format!(
                "conduit_build_info{{version=\"{version}\",rustc=\"rustc "
            )) && info.ends_with("} 1"),
            "{process}: {info}"
        );
        let value = |name: &str| {
            metric(body, name).unwrap_or_else(|| panic!("{process}: no {name}:\n{body}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6, "{process}");
        assert!(value("process_virtual_memory_bytes") > 1e6, "{process}");
        assert!(value("process_open_fds") >= 3.0, "{process}");
        assert!(
            value("process_max_fds") >= value("process_open_fds"),
            "{process}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0, "{process}");
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 600.0,
            "{process}: started {started}, now {now}"
        );
    }
}

/// Reads a file of the repository.
fn repo_file(path: &str) -> String {
    let path = workspace_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn alert_rules_and_dashboard_use_only_metrics_that_exist() {
    if !gate::promtool("alert_rules_and_dashboard_use_only_metrics_that_exist") {
        return;
    }
    let rules_path = workspace_root().join("docs/monitoring/alerts.yml");
    let (ok, printed) = promtool(&["check", "rules", rules_path.to_str().unwrap()], "");
    assert!(ok, "promtool check rules:\n{printed}");
    assert!(printed.contains("SUCCESS"), "{printed}");
    let rules = referenced(&repo_file("docs/monitoring/alerts.yml"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("docs/monitoring/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push_str(target["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let charted = referenced(&exprs);
    assert!(
        rules.len() >= 10 && charted.len() >= 15,
        "{rules:?} {charted:?}"
    );

    // Traffic, so that labelled families have samples (one entry for an invalid
    // topic name: `invalid_total` is labelled by topic, so it has no samples
    // until one), until the worker has sealed a minute (then the lag gauge
    // exists).
    let bus = Bus::start();
    let t0 = Instant::now();
    let rt = conduit_testkit::runtime();
    let mut client = rt.block_on(Client::connect(bus.collector.thrift_addr.as_str()));
    rt.block_on(client.log_acked("no such/topic", &["x"]));
    let worker = until_blocking("a sealed minute's lag", Duration::from_secs(100), || {
        rt.block_on(client.log_acked("clicks", &["a", "b"]));
        let body = bus.worker.metrics();
        metric(
            &body,
            r#"conduit_worker_lag_seconds{view="local",topic="clicks"}"#,
        )
        .map(|_| body)
    })
    .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", bus.worker.log()));
    let mut names = exposed(&bus.collector.metrics());
    names.extend(exposed(&worker));
    let missing: Vec<_> = rules
        .union(&charted)
        .filter(|n| !names.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "named by docs/monitoring and not exposed: {missing:?}\nexposed: {names:?}"
    );
    let lags: Vec<&str> = worker
        .lines()
        .filter(|l| l.starts_with("conduit_worker_lag_seconds"))
        .collect();
    println!(
        "{} metrics named by the rules, {} by the dashboard, all exposed ({:?}); {lags:?}",
        rules.len(),
        charted.len(),
        t0.elapsed()
    );
}

/// The worker measures every consumer group's lag from the checkpoints in its
/// cluster's storage: a group whose checkpoint (written by PinTail's own store)
/// is at the start of the topic's first file lags by every event published, per
/// partition, on the worker's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_exports_consumer_lag_per_group_and_partition() {
    use conduit_core::layout::Layout;
    use conduit_core::storage::LocalStorage;
    use conduit_pintail::{CheckpointStore, Position};

    let bus = Bus::start();
    let mut client = Client::connect(&bus.collector.thrift_addr).await;
    let events: Vec<String> = (0..500).map(|i| format!("{{\"i\":{i}}}")).collect();
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    assert_eq!(
        client.log_to("clicks", &refs).await,
        conduit_core::scribe::ResultCode::Ok
    );
    let storage = std::sync::Arc::new(LocalStorage::open(&bus.root).unwrap());
    let files = conduit_testkit::collector::stored_files(&*storage, "clicks").await;
    let first = files.first().expect("a clicks file");
    let minute = Layout::parse_collector_file_name(&first.name)
        .expect("a collector file name")
        .minute;
    let at = Position::new(
        "dc1-c1",
        minute,
        conduit_core::NodeName::new("dc1").unwrap(),
        conduit_core::NodeName::new("c1").unwrap(),
        first.name.clone(),
        0,
        0,
    );
    CheckpointStore::new(storage)
        .save("g1", "clicks", &at, chrono::Utc::now())
        .await
        .unwrap();

    let sample = "conduit_consumer_lag_events{group=\"g1\",topic=\"clicks\",partition=\"dc1-c1\"}";
    let worker = bus.worker.http_addr.clone();
    let body = until_blocking(
        "the worker to export g1's lag",
        Duration::from_secs(90),
        || {
            let (_, body) = scrape(&worker, None);
            (metric(&body, sample) == Some(500.0)).then_some(body)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", scrape(&worker, None).1));
    assert_eq!(
        metric(&body, "conduit_consumer_lag_unmeasured"),
        Some(0.0),
        "{body}"
    );
    let bytes = "conduit_consumer_lag_bytes{group=\"g1\",topic=\"clicks\",partition=\"dc1-c1\"}";
    assert!(metric(&body, bytes).is_some_and(|b| b > 0.0), "{body}");
}

/// A PinTail consumer's lag gauges (`conduit_pintail_lag_events`,
/// `conduit_pintail_lag_seconds`, per partition it reads): exactly the records
/// left after what it delivered, and `promtool check metrics` accepts its
/// registry.
#[test]
fn pintail_lag_gauges_count_what_is_left_and_pass_promtool() {
    use conduit_core::http::SharedRegistry;
    use conduit_pintail::{Consumer, ReadView};
    use conduit_testkit::minutes::sealed_minute;

    let dir = tempfile::tempdir().unwrap();
    let delivered = 70;
    let (total, text) = conduit_testkit::runtime().block_on(async {
        let storage = conduit_testkit::local_storage(dir.path());
        let mut all = Vec::new();
        for i in 0..2 {
            let m = conduit_testkit::minute("2026-11-22T10:00")
                .add_minutes(i)
                .unwrap();
            all.extend(sealed_minute(std::slice::from_ref(&storage), "clicks", m, 3, 50, 5).await);
        }
        let registry = SharedRegistry::default();
        let mut c = Consumer::builder("clicks")
            .cluster("dc1", storage)
            .view(ReadView::Merged)
            .partitions(1)
            .group("g")
            .dynamic_member("m1", Duration::from_secs(10))
            // Upkeep, and a lag measurement, in every `next()`.
            .heartbeat(Duration::ZERO)
            .lag_interval(Duration::ZERO)
            .registry(registry.clone())
            .build()
            .await
            .unwrap();
        // The last `next()` measures the lag after `delivered` messages.
        conduit_testkit::tail::take(&mut c, delivered + 1, Duration::from_secs(10)).await;
        let mut text = String::new();
        conduit_core::http::prometheus_client::encoding::text::encode(
            &mut text,
            &registry.lock().unwrap(),
        )
        .unwrap();
        (all.len(), text)
    });
    let labels = r#"{group="g",topic="clicks",member="m1",partition="p0of1"}"#;
    assert_eq!(
        metric(&text, &format!("conduit_pintail_lag_events{labels}")),
        Some((total - delivered) as f64),
        "{text}"
    );
    assert!(
        metric(&text, &format!("conduit_pintail_lag_seconds{labels}")).is_some_and(|s| s > 0.0),
        "minutes of 2026-11-22 are behind now: {text}"
    );
    if !gate::promtool("pintail_lag_gauges_count_what_is_left_and_pass_promtool") {
        return;
    }
    let classic = conduit_core::http::to_classic(&text);
    let (ok, printed) = promtool(&["check", "metrics"], &classic);
    assert!(ok, "promtool check metrics:\n{printed}\n{classic}");
    assert_eq!(
        printed.trim(),
        "",
        "promtool has nothing to say:\n{classic}"
    );
}
