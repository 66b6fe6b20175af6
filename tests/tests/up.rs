//! `conduit up` as a new user meets it: it starts the two-datacenter bus, prints
//! what to type next, and the printed `publish` command works; a real Scribe
//! client from PyPI (thriftpy2) publishes into it too; the events reach the
//! local, merged and mirror views (checked with `conduit audit`); Ctrl-C
//! (SIGTERM) stops everything cleanly.

use std::process::{Command, Stdio};
use std::time::Duration;

use conduit_testkit::gate;
use conduit_testkit::process::{conduit_bin, free_up_ports, StdoutLines};
use conduit_testkit::scribe::{log_step, Thriftpy2};
use conduit_testkit::wait::until_blocking;

fn audit_totals(config: &str, topic: &str) -> Option<serde_json::Value> {
    let out = Command::new(conduit_bin())
        .args([
            "audit", "--config", config, "--topic", topic, "--from", "10m", "--to", "0m", "--json",
        ])
        .output()
        .ok()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(report["totals"].clone())
}

#[test]
fn conduit_up_runs_the_bus_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("conduit-data");
    let (base_port, base_http) = free_up_ports();
    let mut up = Command::new(conduit_bin())
        .args(["up", "--data-dir"])
        .arg(&data)
        .args(["--base-port", &base_port.to_string()])
        .args(["--base-http-port", &base_http.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = StdoutLines::of(&mut up);
    let ready = printed.wait_for(
        "conduit up to print that it is up",
        Duration::from_secs(120),
        |l| l.starts_with("conduit is up"),
    );
    if ready.is_err() {
        let _ = up.kill();
        let mut logs = String::new();
        for entry in std::fs::read_dir(data.join("logs")).into_iter().flatten() {
            let p = entry.unwrap().path();
            logs.push_str(&format!(
                "--- {}\n{}\n",
                p.display(),
                std::fs::read_to_string(&p).unwrap_or_default()
            ));
        }
        panic!(
            "conduit up never became ready; stdout:\n{}\n{logs}",
            printed.text()
        );
    }
    // Let the rest of the instructions arrive.
    let _ = printed.wait_for("the tail instructions", Duration::from_secs(5), |l| {
        l.contains(" audit ")
    });

    // The printed publish command, exactly as printed, run by a shell.
    let publish = printed
        .seen
        .iter()
        .find(|l| l.contains(" publish --topic clicks"))
        .unwrap_or_else(|| panic!("no publish instruction in:\n{}", printed.text()))
        .trim()
        .to_owned();
    let out = Command::new("sh").args(["-c", &publish]).output().unwrap();
    assert!(
        out.status.success(),
        "`{publish}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Scribe client publishes into the same collector.
    let scribe_sent = if gate::python("conduit_up_runs_the_bus_and_stops_cleanly", "thriftpy2") {
        let entries: Vec<(&str, Vec<u8>)> = (0..500)
            .map(|i| ("scribe_up", format!("event {i}").into_bytes()))
            .collect();
        let results =
            Thriftpy2::new().run(&format!("127.0.0.1:{base_port}"), vec![log_step(&entries)]);
        assert_eq!(results.len(), 1, "thriftpy2 client: {results:?}");
        assert_eq!(results[0]["code"], 0, "thriftpy2 client: {results:?}");
        true
    } else {
        false
    };

    // Every tier gets the events: dc1 local, the merged view on dc1, its mirror on dc2.
    let config = data.join("conduit.toml");
    let config = config.to_str().unwrap();
    let mut expectations = vec![("clicks", 1000u64)];
    if scribe_sent {
        expectations.push(("scribe_up", 500));
    }
    for (topic, n) in expectations {
        let reached = until_blocking(
            &format!("{topic}: {n} events in the local, merged and mirror views"),
            Duration::from_secs(240),
            || {
                let t = audit_totals(config, topic)?;
                (t["local:dc1"] == n && t["merged:dc1"] == n && t["mirror:dc2"] == n).then_some(t)
            },
        );
        let totals = reached
            .unwrap_or_else(|e| panic!("{e}; last totals {:?}", audit_totals(config, topic)));
        assert_eq!(totals["collected:dc1"], n, "{totals}");
    }

    // Ctrl-C: everything stops cleanly.
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let status = until_blocking("conduit up to exit", Duration::from_secs(60), || {
        up.try_wait().ok().flatten()
    })
    .unwrap();
    assert!(status.success(), "conduit up exited with {status}");
}
