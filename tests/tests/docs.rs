//! The docs cannot drift from the binaries: every `conduit ...` and
//! `conduit-bench ...` command line in the README and `docs/*.md` (inside code
//! blocks) names a real subcommand and only flags that subcommand accepts, and
//! every example config in `conf/` passes `conduit check`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use conduit_testkit::process::{conduit_bin, workspace_bin, workspace_root};

/// The binaries whose command lines the docs show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    /// `conduit`, the product.
    Conduit,
    /// `conduit-bench`, the benchmarks (crate `bench/`).
    Bench,
}

impl Binary {
    fn name(self) -> &'static str {
        match self {
            Binary::Conduit => "conduit",
            Binary::Bench => "conduit-bench",
        }
    }

    /// How a command line invokes it: `cargo run` forms, the release path, a
    /// shell variable the docs set, or the bare name.
    fn markers(self) -> &'static [&'static str] {
        match self {
            Binary::Conduit => &["--bin conduit -- ", "target/release/conduit ", "conduit "],
            Binary::Bench => &[
                "-p conduit-bench -- ",
                "--bin conduit-bench -- ",
                "target/release/conduit-bench ",
                "$BENCH ",
                "conduit-bench ",
            ],
        }
    }

    /// Global flags that take a value and may precede the subcommand.
    fn global_flags(self) -> &'static [&'static str] {
        match self {
            Binary::Conduit => &["--log-level", "--log-format"],
            Binary::Bench => &["--log-level", "--log-format", "--conduit"],
        }
    }

    fn executable(self) -> PathBuf {
        match self {
            Binary::Conduit => conduit_bin(),
            Binary::Bench => bench_bin(),
        }
    }
}

/// `conduit-bench`, built into the directory of `conduit` (same profile).
fn bench_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| workspace_bin("conduit-bench", "conduit-bench"))
        .clone()
}

/// Command lines found in fenced code blocks of a markdown file: the binary and
/// what follows its name.
fn commands_in(markdown: &str) -> Vec<(Binary, String)> {
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
        // whichever way it is invoked (`conduit-bench` first: `conduit ` is not a
        // prefix of it, but its markers are more specific).
        'command: for line in line.split(" | ") {
            for binary in [Binary::Bench, Binary::Conduit] {
                for &marker in binary.markers() {
                    let Some(at) = line.find(marker) else {
                        continue;
                    };
                    let before = &line[..at];
                    // A bare name must start a word (not `myconduit `), and not be a path.
                    if marker == format!("{} ", binary.name())
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
                        found.push((binary, rest.to_owned()));
                    }
                    continue 'command;
                }
            }
        }
    }
    found
}

fn help_of(binary: Binary, path: &[&str]) -> Option<String> {
    let out = Command::new(binary.executable())
        .args(path)
        .arg("--help")
        .output()
        .expect("run --help");
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
    let mut checked_by = [0usize; 2];
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (binary, command) in commands_in(&text) {
            let bin = binary.name();
            let mut words: Vec<&str> = command.split_whitespace().collect();
            // Global flags (and their values) may precede the subcommand.
            while words.len() >= 2 && binary.global_flags().contains(&words[0]) {
                words.drain(..2);
            }
            // The subcommand path: leading words that are not flags or values,
            // as deep as `--help` accepts them (e.g. `worker local`).
            let mut path: Vec<&str> = Vec::new();
            for w in &words {
                if w.starts_with('-') || !w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    break;
                }
                let mut deeper = path.clone();
                deeper.push(w);
                if help_of(binary, &deeper).is_some() {
                    path = deeper;
                } else {
                    break;
                }
            }
            let Some(help) = (!path.is_empty()).then(|| help_of(binary, &path)).flatten() else {
                problems.push(format!(
                    "{}: `{bin} {command}`: no such subcommand",
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
                        "{}: `{bin} {command}`: `{bin} {}` has no flag {flag}",
                        file.display(),
                        path.join(" ")
                    ));
                }
            }
            checked_by[binary as usize] += 1;
        }
    }
    for binary in [Binary::Conduit, Binary::Bench] {
        let checked = checked_by[binary as usize];
        assert!(
            checked >= 5,
            "found only {checked} documented {} commands: is the parser broken?",
            binary.name()
        );
    }
    assert!(
        problems.is_empty(),
        "docs drifted from the binaries:\n{}",
        problems.join("\n")
    );
}

#[test]
fn command_lines_are_attributed_to_their_binary() {
    let markdown = "```sh\n\
        target/release/conduit-bench gen --events 10 --out - | target/release/conduit publish --topic t\n\
        cargo run --release -p conduit-bench -- ingest --runs 1\n\
        $BENCH soak --minutes 1\n\
        conduit tail --topic t  # a comment\n\
        cargo build --release -p conduit-cli -p conduit-bench\n\
        ```\n\
        conduit-bench outside a code block\n";
    let expected: Vec<(Binary, String)> = [
        (Binary::Bench, "gen --events 10 --out -"),
        (Binary::Conduit, "publish --topic t"),
        (Binary::Bench, "ingest --runs 1"),
        (Binary::Bench, "soak --minutes 1"),
        (Binary::Conduit, "tail --topic t"),
    ]
    .into_iter()
    .map(|(binary, command)| (binary, command.to_owned()))
    .collect();
    assert_eq!(commands_in(markdown), expected);
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
