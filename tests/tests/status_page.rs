//! Issue 19, "a page that shows the bus", in a real headless browser (Debian's
//! `chromium`): a `conduit collector` and a `conduit worker` run, `conduit
//! publish` sends events to two topics, and once their minutes are sealed the
//! worker's page at `/` is loaded, screenshotted (a real PNG of the window's
//! size) and its DOM dumped: every cell of the grid (`data-topic`,
//! `data-minute`, `data-tier`, `data-count`) must say what `conduit audit --json`
//! says for the same minutes, sealed minutes must show as sealed and nothing
//! as loss or duplicates. The collector's page at `/` loads too.
//!
//! Without `chromium` the test is skipped on a developer machine and fails under
//! CI (`.ci/run` installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use conduit_core::Minute;
use conduit_testkit::gate;
use conduit_testkit::minutes::sealed_dirs;
use conduit_testkit::process::{http_get, run_conduit, CollectorProcess, Ran, WorkerProcess};
use conduit_testkit::wait::until_blocking;

const TEST: &str = "status_page";
/// How long a `conduit` or `chromium` command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// Sealing waits for the minute to end, then for the collector's watermark.
const SEAL_DEADLINE: Duration = Duration::from_secs(150);
/// Events published per topic.
const TOPICS: [(&str, usize); 2] = [("clicks", 300), ("views", 120)];
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

/// Records in the sealed local minutes of `topic`.
fn sealed_records(root: &Path, topic: &str) -> u64 {
    sealed_dirs(root, topic)
        .values()
        .flat_map(|(manifest, _)| manifest.files.iter().map(|f| f.records))
        .sum()
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
    let root_path = dir.path().join("root");
    std::fs::create_dir_all(&root_path).unwrap();
    let root = root_path.display().to_string();
    let logs = dir.path().join("logs");
    let collector = CollectorProcess::start(&root, "c1", &[], &logs).expect("collector starts");
    let worker = WorkerProcess::start(&["--root", &root, "--interval-ms", "200"], &logs)
        .expect("worker starts");

    for (topic, n) in TOPICS {
        let input: String = (0..n).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let ran = conduit(
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
    }
    until_blocking(
        "every published event in sealed minutes",
        SEAL_DEADLINE,
        || {
            TOPICS
                .iter()
                .all(|(topic, n)| sealed_records(&root_path, topic) == *n as u64)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", worker.log()));

    // The page is cached for a few seconds: wait until it shows the seal.
    let sealed_on_page = |page: &str| {
        let cells = grid_cells(page);
        TOPICS.iter().all(|(topic, n)| {
            let local = cells
                .iter()
                .filter(|((t, _, tier), c)| t == topic && tier == "local:dc1" && c.count > 0);
            local.clone().all(|(_, c)| c.state == "sealed")
                && local.map(|(_, c)| c.count).sum::<u64>() == *n as u64
        })
    };
    until_blocking(
        "the worker's page to show the sealed minutes",
        SEAL_DEADLINE,
        || {
            let (status, page) = http_get(&worker.http_addr, "/").ok()?;
            (status == 200 && sealed_on_page(&page)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", worker.log()));

    let browser = Browser::new();
    let url = format!("http://{}/", worker.http_addr);
    let dom = browser.dump_dom(&url);
    assert!(
        dom.contains("<h1>conduit worker dc1</h1>"),
        "not the worker's page:\n{dom}"
    );
    assert!(dom.contains("data-collector=\"c1\""), "no heartbeat of c1");
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
    for (topic, n) in TOPICS {
        let ran = conduit(
            &[
                "audit", "--root", &root, "--topic", topic, "--from", &from, "--to", &to, "--json",
            ],
            b"",
        );
        let report: serde_json::Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("audit output is not JSON ({e}): {ran:?}"));
        assert_eq!(report["totals"]["local:dc1"], n, "{report}");
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
        // acked, collected:dc1, local:dc1, invalid: every cell of the topic.
        let on_page = cells.keys().filter(|(t, _, _)| t == topic).count();
        assert_eq!(compared, on_page, "every cell of {topic} compared");
        assert_eq!(on_page, 60 * 4);
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
    let entries: usize = TOPICS.iter().map(|(_, n)| n).sum();
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
