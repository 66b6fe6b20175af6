//! `conduit table` (issue 15, "Tables"): the statements it prints register exactly
//! the sealed directories of a view, and Spark SQL accepts them.
//!
//! The sealed minutes are written with the test kit's `sealed_minute` (real data
//! files and `_SUCCESS` manifests, as the worker writes them), plus one directory
//! that holds a data file but no manifest, which must be left out. The real
//! `conduit` binary prints the SQL; pyspark 4 (Spark SQL in local mode, with Hive
//! support so the `hive` dialect runs too) executes every statement, then
//! `SHOW PARTITIONS` and each partition's `Location` must equal the sealed
//! directories. The Spark part needs the venv `scripts/pyspark-venv.sh` builds
//! (`.ci/run` exports its python as `CONDUIT_PYSPARK4`); it is skipped loudly
//! elsewhere and fails under CI when missing.
//!
//! Counting rows through the table is not asserted here: stock Spark reads `.zst`
//! only with a native libhadoop built with zstd, which pip's pyspark lacks. Row
//! counts per partition through the same statements are asserted where Spark can
//! read the files: `format_gzip.rs` (`format = "gzip"` minutes) and
//! `compact_parquet.rs` (Parquet hours).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use conduit_core::layout::Layout;
use conduit_core::storage::LocalStorage;
use conduit_core::{Minute, SharedStorage, Topic, View};
use conduit_testkit::gate;
use conduit_testkit::minutes::sealed_minute;
use conduit_testkit::process::run_conduit;
use serde_json::Value;

const TOPIC: &str = "clicks";

fn minute(text: &str) -> Minute {
    Minute::parse_flexible(text).expect("minute")
}

/// Three sealed merged minutes 10:05..10:07 (sealed at each minute's end) and an
/// unsealed 10:08; returns the root's canonical path and the sealed minutes.
async fn fixture(root: &Path) -> (PathBuf, Vec<Minute>) {
    let storage: SharedStorage = Arc::new(LocalStorage::open(root).expect("open root"));
    let sealed: Vec<Minute> = ["2026-11-22T10:05", "2026-11-22T10:06", "2026-11-22T10:07"]
        .iter()
        .map(|m| minute(m))
        .collect();
    for &m in &sealed {
        sealed_minute(std::slice::from_ref(&storage), TOPIC, m, 2, 50, 2).await;
    }
    let open = minute("2026-11-22T10:08");
    let topic = Topic::new(TOPIC).unwrap();
    let dir = root.join(Layout::minute_dir(View::Merged, &topic, open));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("dc1-c0-clicks-2026-11-22-10-08_00000.zst"),
        conduit_testkit::minutes::data_file(&["x".to_string()], 1),
    )
    .unwrap();
    (std::fs::canonicalize(root).unwrap(), sealed)
}

fn table(args: &[&str]) -> (String, String) {
    let ran = run_conduit(args, b"", Duration::from_secs(30)).expect("conduit table");
    assert_eq!(ran.code, 0, "conduit {args:?}: {}", ran.stderr);
    (ran.stdout, ran.stderr)
}

/// `dt=..../hh=../mi=..` → location, as Spark names partitions.
fn expected_partitions(root: &Path, minutes: &[Minute]) -> BTreeMap<String, String> {
    let topic = Topic::new(TOPIC).unwrap();
    minutes
        .iter()
        .map(|&m| {
            let s = m.start();
            (
                format!(
                    "dt={}/hh={}/mi={}",
                    s.format("%Y-%m-%d"),
                    s.format("%H"),
                    s.format("%M")
                ),
                format!(
                    "file:{}/{}",
                    root.display(),
                    Layout::minute_dir(View::Merged, &topic, m)
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_registers_exactly_the_sealed_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let (root, sealed) = fixture(dir.path()).await;
    let root_arg = root.to_str().unwrap();

    let (sql, summary) = table(&["table", "--root", root_arg, "--topic", TOPIC]);
    let creates: Vec<_> = sql.lines().filter(|l| l.starts_with("CREATE ")).collect();
    assert_eq!(creates.len(), 1, "{sql}");
    assert!(
        creates[0].contains(&format!("LOCATION 'file://{root_arg}/streams/clicks'")),
        "{sql}"
    );
    let adds: Vec<_> = sql.lines().filter(|l| l.starts_with("ALTER ")).collect();
    assert_eq!(
        adds.len(),
        3,
        "one per sealed minute, not the open one: {sql}"
    );
    for (line, (_, location)) in adds.iter().zip(expected_partitions(&root, &sealed)) {
        let location = location.replacen("file:", "file://", 1);
        assert!(line.contains(&format!("LOCATION '{location}';")), "{line}");
    }
    assert!(
        !sql.contains("/10/08"),
        "the unsealed minute is left out: {sql}"
    );
    assert!(
        summary.contains(
            "3 sealed minutes of clicks in streams printed as partitions; 1 not sealed yet"
        ),
        "{summary}"
    );

    // Sealed at 10:06, 10:07, 10:08: since 10:07 leaves the first minute out.
    let (sql, _) = table(&[
        "table",
        "--root",
        root_arg,
        "--topic",
        TOPIC,
        "--since",
        "2026-11-22T10:07",
        "--partitions-only",
        "--format",
        "trino",
    ]);
    assert!(!sql.contains("CREATE "), "{sql}");
    let calls: Vec<_> = sql.lines().filter(|l| l.starts_with("CALL ")).collect();
    assert_eq!(calls.len(), 2, "{sql}");
    assert!(
        calls[0].contains("ARRAY['2026-11-22', '10', '06']"),
        "{sql}"
    );
    assert!(
        calls[1].contains("ARRAY['2026-11-22', '10', '07']"),
        "{sql}"
    );

    // A name that would need quoting is refused with the value named.
    let ran = run_conduit(
        &[
            "table", "--root", root_arg, "--topic", TOPIC, "--table", "x;drop",
        ],
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("--table \"x;drop\""), "{}", ran.stderr);
}

/// Executes `;`-terminated statements in one Spark session with Hive support and
/// prints `{table: {partition: location}}` for `tables`.
const SPARK_SCRIPT: &str = r#"
import json, sys
from pyspark.sql import SparkSession
work, tables = sys.argv[1], sys.argv[2:]
spark = (SparkSession.builder.master("local[1]").appName("conduit-table-test")
         .config("spark.ui.enabled", "false")
         .config("spark.sql.warehouse.dir", work + "/warehouse")
         .config("javax.jdo.option.ConnectionURL",
                 "jdbc:derby:;databaseName=" + work + "/metastore;create=true")
         .enableHiveSupport().getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
for stmt in sys.stdin.read().split(";\n"):
    stmt = "\n".join(l for l in stmt.splitlines() if not l.startswith("--")).strip()
    if stmt:
        spark.sql(stmt)
out = {}
for t in tables:
    parts = {}
    for (p,) in spark.sql("SHOW PARTITIONS " + t).collect():
        spec = ", ".join("%s='%s'" % tuple(kv.split("=")) for kv in p.split("/"))
        rows = spark.sql("DESCRIBE FORMATTED %s PARTITION (%s)" % (t, spec)).collect()
        parts[p] = [r[1] for r in rows if r[0].strip() == "Location"][0]
    out[t] = parts
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_sql_accepts_the_statements() {
    let Some(python) = gate::pyspark("spark_sql_accepts_the_statements", gate::PYSPARK4) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("root");
    std::fs::create_dir_all(&data).unwrap();
    let (root, sealed) = fixture(&data).await;
    let root_arg = root.to_str().unwrap();
    let (spark_sql, _) = table(&["table", "--root", root_arg, "--topic", TOPIC]);
    let (hive_sql, _) = table(&[
        "table",
        "--root",
        root_arg,
        "--topic",
        TOPIC,
        "--format",
        "hive",
        "--table",
        "clicks_hive",
    ]);
    let work = dir.path().join("spark");
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(SPARK_SCRIPT)
        .arg(&work)
        .args(["clicks", "clicks_hive"])
        .current_dir(&work)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pyspark");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{spark_sql}{hive_sql}").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().expect("pyspark");
    assert!(
        out.status.success(),
        "pyspark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("pyspark printed {stdout:?}: {e}"));
    let want = expected_partitions(&root, &sealed);
    for t in ["clicks", "clicks_hive"] {
        let parts: BTreeMap<String, String> =
            serde_json::from_value(got[t].clone()).unwrap_or_else(|e| panic!("{t}: {e} in {got}"));
        assert_eq!(parts, want, "{t}");
    }
}
