//! Issue 19, "a page that shows the bus", in a real headless browser (Debian's
//! `chromium`): two clusters (dc1 merges both, dc2 mirrors it), each with a
//! `conduit collector` and a `conduit worker`; `conduit publish` sends one topic
//! to each cluster, and once their minutes are sealed, merged and mirrored, dc1's
//! worker page at `/` is loaded, screenshotted (a real PNG of the window's size)
//! and its DOM dumped: every cell of the grid (`data-topic`, `data-minute`,
//! `data-tier`, `data-count`; tiers acked, collected, local, merged, mirror,
//! invalid) must say what `conduit audit --json` says for the same minutes,
//! sealed minutes must show as sealed and nothing as loss or duplicates. The
//! collector's page at `/` loads too.
//!
//! Without `chromium` the test is skipped on a developer machine and fails under
//! CI (`.ci/run` installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use conduit_core::Minute;
use conduit_testkit::gate;
use conduit_testkit::process::{http_get, run_conduit, CollectorProcess, Ran, WorkerProcess};
use conduit_testkit::wait::until_blocking;

const TEST: &str = "status_page";
/// How long a `conduit` or `chromium` command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// Sealing waits for the minute to end, then for the collector's watermark.
const SEAL_DEADLINE: Duration = Duration::from_secs(150);
/// Topics, the cluster whose collector receives them, events published.
const TOPICS: [(&str, &str, usize); 2] = [("clicks", "dc1", 300), ("views", "dc2", 120)];
/// The tiers of a topic in this layout.
const TIERS: [&str; 8] = [
    "acked",
    "collected:dc1",
    "collected:dc2",
    "local:dc1",
    "local:dc2",
    "merged:dc1",
    "mirror:dc2",
    "invalid",
];
/// The screenshot's window.
const WINDOW: (u32, u32) = (1600, 1200);

/// Whether `chromium` runs here (see `conduit_testkit::gate` for the rule).
fn chromium_present() -> bool {
    let ok = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        gate::missing(
            TEST,
            "chromium is not installed",
            "apt-get install chromium; .ci/run installs it",
        );
    }
    ok
}

/// A headless Chromium with its own profile directory.
struct Browser {
    dir: tempfile::TempDir,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs `chromium --headless <args> <url>` to its end; its stdout.
    fn run(&self, args: &[String], url: &str) -> String {
        let out_path = self.dir.path().join("stdout");
        let err_path = self.dir.path().join("stderr");
        let profile = self.dir.path().join("profile");
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                // CI runs as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                &format!("--user-data-dir={}", profile.display()),
            ])
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("chromium starts");
        let status = until_blocking("chromium to exit", COMMAND_DEADLINE, || {
            child.try_wait().ok().flatten()
        });
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let status = status.unwrap_or_else(|e| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{e}: chromium {args:?} {url}; stderr:\n{stderr}")
        });
        assert!(
            status.success(),
            "chromium {args:?} {url}: {status}\n{stderr}"
        );
        std::fs::read_to_string(&out_path).unwrap()
    }

    /// The page's DOM after loading, as Chromium serializes it.
    fn dump_dom(&self, url: &str) -> String {
        self.run(&["--dump-dom".to_owned()], url)
    }

    /// A screenshot of the page in a window of `WINDOW`.
    fn screenshot(&self, url: &str, to: &Path) {
        self.run(
            &[
                format!("--screenshot={}", to.display()),
                format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            ],
            url,
        );
    }
}

/// One cell of the grid, from its data attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cell {
    count: u64,
    state: String,
}

/// The attributes of an HTML start tag's text (`td class="x" data-a="1"`).
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(' ').next().unwrap_or_default().to_owned();
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        found.insert(name, rest[value_start..value_start + len].to_owned());
        rest = &rest[value_start + len + 1..];
    }
    found
}

/// Every grid cell of the DOM by (topic, minute, tier).
fn grid_cells(dom: &str) -> BTreeMap<(String, String, String), Cell> {
    let mut cells = BTreeMap::new();
    for part in dom.split("<td ").skip(1) {
        let tag = &part[..part.find('>').expect("a closed tag")];
        let attrs = attributes(tag);
        let Some(tier) = attrs.get("data-tier") else {
            continue;
        };
        let key = (
            attrs["data-topic"].clone(),
            attrs["data-minute"].clone(),
            tier.clone(),
        );
        let cell = Cell {
            count: attrs["data-count"].parse().expect("a numeric data-count"),
            state: attrs["data-state"].clone(),
        };
        assert!(
            cells.insert(key.clone(), cell).is_none(),
            "cell {key:?} twice"
        );
    }
    cells
}

fn conduit(args: &[&str], input: &[u8]) -> Ran {
    run_conduit(args, input, COMMAND_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the page shows every event of every topic sealed in the local views,
/// the merged view and the mirror.
fn sealed_on_page(page: &str) -> bool {
    let cells = grid_cells(page);
    TOPICS.iter().all(|(topic, _, n)| {
        ["local:", "merged:dc1", "mirror:dc2"].iter().all(|tier| {
            let held = cells
                .iter()
                .filter(|((t, _, k), c)| t == topic && k.starts_with(tier) && c.count > 0);
            held.clone().all(|(_, c)| c.state == "sealed")
                && held.map(|(_, c)| c.count).sum::<u64>() == *n as u64
        })
    })
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("conduit.toml");
    let root = |cluster: &str| {
        let root = dir.join(cluster);
        std::fs::create_dir_all(&root).unwrap();
        root.display().to_string()
    };
    std::fs::write(
        &path,
        format!(
            r#"[clusters.dc1]
root = "{}"

[clusters.dc2]
root = "{}"

[topic_defaults]
merge_into = "dc1"
merge_sources = ["dc1", "dc2"]
mirrors = ["dc2"]

[worker]
interval_ms = 200
"#,
            root("dc1"),
            root("dc2")
        ),
    )
    .unwrap();
    path
}

/// Checks the PNG signature and that the image has the window's size.
fn assert_png(path: &Path) {
    let png = std::fs::read(path).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!(
        (width, height),
        WINDOW,
        "the screenshot has the window's size"
    );
    // A blank page of this size compresses to a few kilobytes; the grid's cells,
    // their numbers and the tables do not.
    assert!(
        png.len() > 30_000,
        "the screenshot is only {} bytes: an empty page?",
        png.len()
    );
}

#[test]
fn the_status_pages_show_the_grid_audit_computes() {
    if !chromium_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let cfg = config.to_str().unwrap();
    let logs = dir.path().join("logs");
    let collectors: BTreeMap<&str, CollectorProcess> = ["dc1", "dc2"]
        .into_iter()
        .map(|cluster| {
            let root = dir.path().join(cluster).display().to_string();
            let extra = ["--config", cfg, "--cluster", cluster];
            let collector =
                CollectorProcess::start(&root, "c1", &extra, &logs).expect("collector starts");
            (cluster, collector)
        })
        .collect();
    let workers: Vec<WorkerProcess> = ["dc1", "dc2"]
        .into_iter()
        .map(|cluster| {
            WorkerProcess::start(&["--config", cfg, "--cluster", cluster], &logs)
                .expect("worker starts")
        })
        .collect();
    let worker = &workers[0];

    for (topic, cluster, n) in TOPICS {
        let input: String = (0..n).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let ran = conduit(
            &[
                "publish",
                "--topic",
                topic,
                "--collector",
                &collectors[cluster].thrift_addr,
            ],
            input.as_bytes(),
        );
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    // The page is cached for a few seconds: it shows the seal a little after.
    until_blocking(
        "dc1's page to show every event sealed, merged and mirrored",
        SEAL_DEADLINE,
        || {
            let (status, page) = http_get(&worker.http_addr, "/").ok()?;
            (status == 200 && sealed_on_page(&page)).then_some(())
        },
    )
    .unwrap_or_else(|e| {
        let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
        panic!("{e}; worker logs:\n{}", logs.join("\n"))
    });

    let browser = Browser::new();
    let url = format!("http://{}/", worker.http_addr);
    let dom = browser.dump_dom(&url);
    assert!(
        dom.contains("<h1>conduit worker dc1</h1>"),
        "not the worker's page:\n{dom}"
    );
    assert!(
        dom.contains("data-collector=\"c1\""),
        "no heartbeat of dc1's c1"
    );
    assert!(dom.contains("data-holder=\"dc1/"), "no lease holder");
    let cells = grid_cells(&dom);
    assert!(sealed_on_page(&dom), "chromium's DOM lost the seal");

    // Every cell of the page, against `conduit audit --json` of the same minutes.
    let minutes: Vec<&String> = cells.keys().map(|(_, m, _)| m).collect();
    let from = minutes
        .iter()
        .min()
        .expect("the grid has cells")
        .to_string();
    let to = minutes.iter().max().unwrap().to_string();
    assert_eq!(
        Minute::parse_flexible(&from)
            .unwrap()
            .add_minutes(59)
            .unwrap()
            .to_string(),
        to,
        "the page shows the last hour"
    );
    for (topic, _, n) in TOPICS {
        let ran = conduit(
            &[
                "audit", "--config", cfg, "--topic", topic, "--from", &from, "--to", &to, "--json",
            ],
            b"",
        );
        let report: serde_json::Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("audit output is not JSON ({e}): {ran:?}"));
        for tier in ["merged:dc1", "mirror:dc2"] {
            assert_eq!(report["totals"][tier], n, "{report}");
        }
        let rows = report["minutes"].as_array().expect("minutes");
        assert_eq!(rows.len(), 60, "{report}");
        let mut compared = 0;
        for row in rows {
            let minute = row["minute"].as_str().unwrap();
            for (tier, count) in row.as_object().unwrap() {
                if tier == "minute" || tier == "flags" {
                    continue;
                }
                let key = (topic.to_owned(), minute.to_owned(), tier.clone());
                let cell = cells
                    .get(&key)
                    .unwrap_or_else(|| panic!("no cell {key:?} on the page"));
                assert_eq!(
                    Some(cell.count),
                    count.as_u64(),
                    "cell {key:?} against audit's {row}"
                );
                compared += 1;
            }
        }
        let on_page = cells.keys().filter(|(t, _, _)| t == topic).count();
        assert_eq!(compared, on_page, "every cell of {topic} compared");
        assert_eq!(on_page, 60 * TIERS.len());
        for tier in TIERS {
            assert!(
                cells.keys().any(|(t, _, k)| t == topic && k == tier),
                "no {tier} row for {topic}"
            );
        }
    }
    let bad: Vec<_> = cells
        .iter()
        .filter(|(_, c)| {
            ["loss", "duplicates", "quarantined", "invalid", "late"].contains(&c.state.as_str())
        })
        .collect();
    assert!(bad.is_empty(), "cells with problems: {bad:?}");

    let shot = dir.path().join("worker.png");
    browser.screenshot(&url, &shot);
    assert_png(&shot);
    if let Some(keep) = std::env::var_os("CONDUIT_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, PathBuf::from(keep)).unwrap();
    }

    // The collector's own page.
    let collector = &collectors["dc1"];
    let page = browser.dump_dom(&format!("http://{}/", collector.http_addr));
    for expected in [
        "<h1>conduit collector c1</h1>",
        "<td id=\"storage\" class=\"ok\">healthy</td>",
        "<td id=\"connections\" class=\"n\">",
        "<td id=\"open-files\" class=\"n\">",
        "<td id=\"spooled\" class=\"n\">0</td>",
    ] {
        assert!(page.contains(expected), "{expected} missing:\n{page}");
    }
    let entries: usize = TOPICS
        .iter()
        .filter(|(_, cluster, _)| *cluster == "dc1")
        .map(|(_, _, n)| n)
        .sum();
    let counted = page
        .split("<td id=\"entries\" class=\"n\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .and_then(|n| n.parse::<usize>().ok())
        .expect("the entries row");
    // Publishers also send their `_audit` records.
    assert!(counted > entries, "{counted} entries, published {entries}");
    // `/health` and `/metrics` still answer beside the pages.
    assert_eq!(http_get(&worker.http_addr, "/health").unwrap().0, 200);
    assert_eq!(http_get(&collector.http_addr, "/metrics").unwrap().0, 200);
}
