//! The docs cannot drift from the binary: every `conduit ...` command line in the
//! README and `docs/*.md` (inside code blocks) names a real subcommand and only
//! flags that subcommand accepts, and every example config in `conf/` passes
//! `conduit check`.

use std::collections::BTreeSet;
use std::process::Command;

use conduit_testkit::process::{conduit_bin, workspace_root};

/// `conduit` command lines found in fenced code blocks of a markdown file.
fn commands_in(markdown: &str) -> Vec<String> {
    let mut in_block = false;
    let mut found = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block || line.trim_start().starts_with('#') {
            continue;
        }
        // Each command of a pipeline, then what follows the binary's name,
        // whichever way it is invoked.
        for line in line.split(" | ") {
            for marker in [
                "--bin conduit -- ",
                "target/release/conduit ",
                "$B ",
                "conduit ",
            ] {
                if let Some(at) = line.find(marker) {
                    let before = &line[..at];
                    // `conduit ` must start a word (not `myconduit `), and not be a path.
                    if marker == "conduit "
                        && !(before.is_empty() || before.ends_with(' ') || before.ends_with('|'))
                    {
                        continue;
                    }
                    let rest = line[at + marker.len()..]
                        .split('#')
                        .next()
                        .unwrap_or("")
                        .trim();
                    if !rest.is_empty() {
                        found.push(rest.to_owned());
                    }
                    break;
                }
            }
        }
    }
    found
}

fn help_of(path: &[&str]) -> Option<String> {
    let out = Command::new(conduit_bin())
        .args(path)
        .arg("--help")
        .output()
        .expect("run conduit --help");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn documented_commands_use_real_subcommands_and_flags() {
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for command in commands_in(&text) {
            let mut words: Vec<&str> = command.split_whitespace().collect();
            // Global flags (and their values) may precede the subcommand.
            while words.len() >= 2 && (words[0] == "--log-level" || words[0] == "--log-format") {
                words.drain(..2);
            }
            // The subcommand path: leading words that are not flags or values,
            // as deep as `--help` accepts them (e.g. `bench ingest`, `worker local`).
            let mut path: Vec<&str> = Vec::new();
            for w in &words {
                if w.starts_with('-') || !w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    break;
                }
                let mut deeper = path.clone();
                deeper.push(w);
                if help_of(&deeper).is_some() {
                    path = deeper;
                } else {
                    break;
                }
            }
            let Some(help) = (!path.is_empty()).then(|| help_of(&path)).flatten() else {
                problems.push(format!(
                    "{}: `conduit {command}`: no such subcommand",
                    file.display()
                ));
                continue;
            };
            let flags: BTreeSet<&str> = words
                .iter()
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap())
                .collect();
            for flag in flags {
                let accepted = help.contains(&format!("{flag} "))
                    || help.contains(&format!("{flag}\n"))
                    || help.contains(&format!("{flag}="))
                    || help.contains(&format!("{flag} <"));
                if !accepted {
                    problems.push(format!(
                        "{}: `conduit {command}`: `conduit {}` has no flag {flag}",
                        file.display(),
                        path.join(" ")
                    ));
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "found only {checked} documented commands: is the parser broken?"
    );
    assert!(
        problems.is_empty(),
        "docs drifted from the binary:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_example_config_passes_check() {
    let conf = workspace_root().join("conf");
    let mut n = 0;
    for entry in std::fs::read_dir(&conf).expect("conf/") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = Command::new(conduit_bin())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "conduit check --config {} failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(
        n >= 4,
        "expected the reference config and one per supported shape, found {n}"
    );
}
