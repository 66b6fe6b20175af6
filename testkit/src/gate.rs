//! Outside parts a test needs: Python modules, the `zstd` CLI, `promtool`,
//! command-line tools such as `openssl` and `curl` (HDFS has its own
//! gate in [`crate::hdfs`], built on [`missing`]).
//!
//! The rule, everywhere: when the part is there the test runs; when it is missing
//! on a developer machine the test prints one `SKIPPED <test>: ...` line and
//! returns; when it is missing under `CI` (`.ci/run` exports `CI=true` and installs
//! every part) the test fails, so CI never passes by skipping.

use std::process::{Command, Stdio};

/// Whether the tests run under CI: `CI` is set to anything but empty, `0` or
/// `false`.
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// `test` cannot run because `what` is missing: panics under CI, otherwise prints
/// `SKIPPED <test>: <what> (<how>)` on stderr. `how` says how to provide it.
pub fn missing(test: &str, what: &str, how: &str) {
    if under_ci() {
        panic!("{test} cannot run under CI: {what} ({how})");
    }
    eprintln!("SKIPPED {test}: {what} ({how})");
}

/// Whether a Python module imports.
pub fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `test` can use Python module `module` (see the module docs for the
/// rule when it cannot).
pub fn python(test: &str, module: &str) -> bool {
    if python_has(module) {
        return true;
    }
    missing(
        test,
        &format!("python module {module} is not installed"),
        &format!("pip install {module}; .ci/run installs it"),
    );
    false
}

/// Whether `test` can run the `zstd` CLI (see the module docs for the rule when
/// it cannot).
pub fn zstd_cli(test: &str) -> bool {
    runs_version(test, "zstd", "the zstd CLI", "apt-get install zstd")
}

/// Whether `test` can run `promtool` (Debian's `prometheus` package; see the
/// module docs for the rule when it cannot).
pub fn promtool(test: &str) -> bool {
    runs_version(test, "promtool", "promtool", "apt-get install prometheus")
}

/// Whether `program --version` runs and succeeds; when not, [`missing`] with
/// `what` and `install`.
fn runs_version(test: &str, program: &str, what: &str, install: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing(
            test,
            &format!("{what} is not installed"),
            &format!("{install}; .ci/run installs it"),
        );
    }
    ok
}

/// Whether `test` can run the command-line tool `name` (`openssl`, `curl`): it
/// is on the `PATH` (see the module docs for the rule when it is not).
pub fn tool(test: &str, name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    if !found {
        missing(
            test,
            &format!("{name} is not installed"),
            &format!("apt-get install {name}; .ci/run installs it"),
        );
    }
    found
}

/// A pyspark venv built by `scripts/pyspark-venv.sh VERSION`: the variable
/// `.ci/run` exports its python in, and the version.
#[derive(Debug, Clone, Copy)]
pub struct Pyspark {
    /// Environment variable holding the venv's python.
    pub var: &'static str,
    /// pyspark version.
    pub version: &'static str,
}

/// Spark 4 (`CONDUIT_PYSPARK4`).
pub const PYSPARK4: Pyspark = Pyspark {
    var: "CONDUIT_PYSPARK4",
    version: "4.0.1",
};

/// Spark 3.5 (`CONDUIT_PYSPARK35`).
pub const PYSPARK35: Pyspark = Pyspark {
    var: "CONDUIT_PYSPARK35",
    version: "3.5.7",
};

/// The python of `spark`'s venv: from its variable, else the cached venv under
/// `~/.cache/conduit`; `None` after [`missing`] when neither exists.
pub fn pyspark(test: &str, spark: Pyspark) -> Option<String> {
    let Pyspark { var, version } = spark;
    let python = std::env::var(var).ok().or_else(|| {
        let home = std::env::var("HOME").ok()?;
        let p = format!("{home}/.cache/conduit/venv-pyspark-{version}/bin/python");
        std::path::Path::new(&p).exists().then_some(p)
    });
    if python.is_none() {
        missing(
            test,
            &format!("no python with pyspark {version} ({var})"),
            &format!("export {var}=\"$(scripts/pyspark-venv.sh {version})\"; .ci/run does"),
        );
    }
    python
}
