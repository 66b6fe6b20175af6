//! issue 15, `format = "gzip"`: the merged minutes of a gzip topic are read, with
//! counts equal to their `_SUCCESS` manifests and the payloads' checksum, by
//! readers with no zstd codec and no conduit code.
//!
//! A real `conduit collector` and `conduit worker` (config: `merge_into = "dc1"`,
//! `[topics.gz] format = "gzip"`) seal the events published to `gz`; the worker
//! transcodes each local `.zst` file into a `.gz` of the merged view. Then:
//!
//! 1. `gzip -dc`, Python `gzip.open`/`gzip.decompress`, DuckDB `read_json` and
//!    `read_csv`, polars `read_ndjson`, pyarrow `json.read_json` (gzip stream);
//! 2. pyspark 4.0.1 (`CONDUIT_PYSPARK4`): `spark.read.json`, `sc.textFile` (Hadoop
//!    `TextInputFormat` with its pure-Java gzip codec), and the SQL of
//!    `conduit table`, counted per partition (`GROUP BY dt, hh, mi`);
//! 3. pyspark 3.5.7 (`CONDUIT_PYSPARK35`): `spark.read.json`, `sc.textFile`;
//! 4. on the real HDFS (`CONDUIT_TEST_HDFS`): `hadoop fs -text` (Hadoop 2.7.3's
//!    `FsShell`, the jars `scripts/hdfs.sh` caches) on minutes the worker wrote
//!    there.
//!
//! The local fixture (processes, one sealed minute at least) is built once and
//! shared by the tests of this file. The tools are gated by `conduit_testkit::gate`:
//! skipped loudly outside CI, failing under `CI=true`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use conduit_core::layout::Layout;
use conduit_core::{Manifest, Minute, Storage, Topic, View};
use conduit_testkit::gate;
use conduit_testkit::process::{run_conduit, CollectorProcess, WorkerProcess};
use conduit_testkit::scribe::Client;
use conduit_testkit::wait::until_blocking;
use serde_json::{json, Value};

const TOPIC: &str = "gz";
const EVENTS: u64 = 6_000;
const PER_CALL: u64 = 500;

/// Event `i`: JSON with a value summed as the payloads' checksum, and text a
/// naive line reader would trip on (commas, quotes, unicode).
fn event(i: u64) -> String {
    json!({"i": i, "v": value(i), "note": format!("h\u{e9}llo, \"{}\"", "x".repeat((i % 40) as usize))})
        .to_string()
}

fn value(i: u64) -> u64 {
    (i * 7919) % 1000
}

fn checksum() -> u64 {
    (0..EVENTS).map(value).sum()
}

fn write_config(dir: &Path, root: &str) -> PathBuf {
    let path = dir.join("conduit.toml");
    std::fs::write(
        &path,
        format!(
            r#"[clusters.dc1]
root = "{root}"

[topic_defaults]
merge_into = "dc1"

[topics.{TOPIC}]
format = "gzip"

[worker]
interval_ms = 200
max_source_lag_secs = 120
"#
        ),
    )
    .unwrap();
    path
}

/// Publishes the events and returns once the worker has sealed merged minutes
/// holding all of them (then stops both processes).
fn publish_and_seal<T>(root: &str, dir: &Path, sealed: impl FnMut() -> Option<T>) -> (T, PathBuf) {
    let config = write_config(dir, root);
    let cfg = config.to_str().unwrap();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut collector =
        CollectorProcess::start(root, "c1", &["--config", cfg, "--cluster", "dc1"], &logs)
            .unwrap_or_else(|e| panic!("{e}"));
    let mut worker = WorkerProcess::start(&["--config", cfg, "--cluster", "dc1"], &logs)
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::connect(collector.thrift_addr.as_str()).await;
        for call in 0..EVENTS / PER_CALL {
            let payloads: Vec<String> = (call * PER_CALL..(call + 1) * PER_CALL)
                .map(event)
                .collect();
            assert_eq!(
                client.log_to(TOPIC, &payloads).await,
                conduit_core::scribe::ResultCode::Ok
            );
        }
    });
    // The collector closes its files at the minute's end and the worker seals it.
    let found = until_blocking(
        "merged minutes holding every event",
        Duration::from_secs(180),
        sealed,
    )
    .unwrap_or_else(|e| panic!("{e}\nworker log:\n{}", worker.log()));
    collector.terminate().expect("the collector stops cleanly");
    worker.kill9();
    (found, config)
}

/// The sealed merged minutes of the local fixture.
#[derive(Debug)]
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Per sealed minute with data: its directory and manifest.
    minutes: Vec<(PathBuf, Manifest)>,
}

impl Fixture {
    fn files(&self) -> Vec<(PathBuf, u64)> {
        self.minutes
            .iter()
            .flat_map(|(dir, m)| m.files.iter().map(move |f| (dir.join(&f.name), f.records)))
            .collect()
    }

    fn file_args(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .map(|(p, _)| p.display().to_string())
            .collect()
    }
}

/// Every sealed minute directory of the merged view under `root`.
fn merged_minutes(root: &Path) -> Vec<(PathBuf, Manifest)> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                if depth == 4 {
                    out.push(e.path());
                } else {
                    walk(&e.path(), depth + 1, out);
                }
            }
        }
    }
    let mut dirs = Vec::new();
    walk(
        &root.join(View::Merged.dir_name()).join(TOPIC),
        0,
        &mut dirs,
    );
    dirs.sort();
    dirs.into_iter()
        .filter_map(|dir| {
            let marker = dir.join(Layout::SUCCESS_MARKER);
            let bytes = std::fs::read(&marker).ok()?;
            Some((dir, Manifest::parse("_SUCCESS", &bytes).unwrap()))
        })
        .collect()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let (minutes, _) = publish_and_seal(root.to_str().unwrap(), dir.path(), || {
            let minutes = merged_minutes(&root);
            (minutes.iter().map(|(_, m)| m.records).sum::<u64>() == EVENTS).then_some(minutes)
        });
        let minutes: Vec<_> = minutes.into_iter().filter(|(_, m)| m.records > 0).collect();
        for (dir, m) in &minutes {
            assert_eq!(m.view, View::Merged);
            for f in &m.files {
                assert!(f.name.ends_with(".gz"), "{}: {}", dir.display(), f.name);
                let bytes = std::fs::read(dir.join(&f.name)).unwrap();
                assert_eq!(bytes.len() as u64, f.bytes, "{}", f.name);
                assert_eq!(
                    conduit_core::manifest::crc32c(&bytes),
                    f.crc32c,
                    "{}",
                    f.name
                );
                assert_eq!(bytes[..2], [0x1f, 0x8b], "{} starts as gzip", f.name);
            }
        }
        Fixture {
            _dir: dir,
            root,
            minutes,
        }
    })
}

/// Records and checksum of JSON lines.
fn count_lines(text: &[u8]) -> (u64, u64) {
    let mut n = 0;
    let mut sum = 0;
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).expect("a JSON record");
        n += 1;
        sum += v["v"].as_u64().unwrap();
    }
    (n, sum)
}

/// Runs a Python script with `args` and parses the JSON it prints last.
fn python_json(python: &str, script: &str, args: &[String]) -> Value {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    assert!(
        out.status.success(),
        "{python} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{python} printed {stdout:?}: {e}"))
}

const PYTHON_READERS: &str = r#"
import gzip, json, sys
files = sys.argv[1:]
out = {}
n = s = 0
for f in files:
    with gzip.open(f, "rt", encoding="utf-8") as lines:
        for line in lines:
            n += 1; s += json.loads(line)["v"]
out["gzip.open"] = [n, s]
n = s = 0
for f in files:
    with open(f, "rb") as raw:
        for line in gzip.decompress(raw.read()).splitlines():
            n += 1; s += json.loads(line)["v"]
out["gzip.decompress"] = [n, s]
import duckdb
out["duckdb.read_json"] = list(duckdb.sql("select count(*), sum(v) from read_json(%r)" % files).fetchall()[0])
csv = "read_csv(%r, header=false, delim='\x01', quote='', columns={'line': 'VARCHAR'})" % files
out["duckdb.read_csv"] = list(duckdb.sql("select count(*), sum(cast(json_extract(line, '$.v') as bigint)) from " + csv).fetchall()[0])
import polars as pl
n = s = 0
for f in files:
    df = pl.read_ndjson(f)
    n += df.height; s += int(df["v"].sum())
out["polars.read_ndjson"] = [n, s]
import pyarrow as pa, pyarrow.json as pj
n = s = 0
for f in files:
    t = pj.read_json(pa.input_stream(f, compression="gzip"))
    n += t.num_rows; s += sum(t.column("v").to_pylist())
out["pyarrow.json"] = [n, s]
print(json.dumps(out))
"#;

#[test]
fn stock_tools_read_the_gz_minutes() {
    let test = "stock_tools_read_the_gz_minutes";
    let fx = fixture();
    let want = json!([EVENTS, checksum()]);
    if gate::tool(test, "gzip") {
        let (mut n, mut sum) = (0, 0);
        for (path, records) in fx.files() {
            let (fn_, fsum) = count_lines(&gunzip(&path));
            assert_eq!(fn_, records, "gzip -dc {}", path.display());
            n += fn_;
            sum += fsum;
        }
        assert_eq!(json!([n, sum]), want, "gzip -dc");
    }
    for module in ["duckdb", "polars", "pyarrow"] {
        if !gate::python(test, module) {
            return;
        }
    }
    let got = python_json("python3", PYTHON_READERS, &fx.file_args());
    for reader in [
        "gzip.open",
        "gzip.decompress",
        "duckdb.read_json",
        "duckdb.read_csv",
        "polars.read_ndjson",
        "pyarrow.json",
    ] {
        assert_eq!(got[reader], want, "{reader}: {got}");
    }
}

/// conduit's own readers of the merged view decode the `.gz` files through the
/// same core function as the worker: `conduit tail --view merged` (PinTail) and
/// `conduit verify` (decoding every file).
#[test]
fn conduit_tail_and_verify_read_the_gz_minutes() {
    let fx = fixture();
    let root = fx.root.to_str().unwrap();
    let last = fx.minutes.last().expect("a sealed minute").1.minute;
    let to = last.start().format("%Y-%m-%dT%H:%M").to_string();
    let tail = run_conduit(
        &[
            "tail",
            "--root",
            root,
            "--topic",
            TOPIC,
            "--view",
            "merged",
            "--from-beginning",
            "--to",
            &to,
        ],
        b"",
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(tail.code, 0, "conduit tail: {}", tail.stderr);
    assert_eq!(
        count_lines(tail.stdout.as_bytes()),
        (EVENTS, checksum()),
        "conduit tail --view merged"
    );
    let verify = run_conduit(
        &[
            "verify", "--root", root, "--topic", TOPIC, "--view", "merged", "--json",
        ],
        b"",
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(
        verify.code, 0,
        "conduit verify: {}{}",
        verify.stdout, verify.stderr
    );
    let report: Value = serde_json::from_str(verify.stdout.trim())
        .unwrap_or_else(|e| panic!("conduit verify printed {:?}: {e}", verify.stdout));
    assert_eq!(report["checked"]["records"], json!(EVENTS), "{report}");
}

/// Spark: the minutes through `spark.read.json` and `sc.textFile`, then, when
/// SQL is given on stdin (`conduit table`), every statement and a count per
/// partition.
const SPARK_SCRIPT: &str = r#"
import json, sys
from pyspark.sql import SparkSession
work, dirs = sys.argv[1], sys.argv[2:]
sql = sys.stdin.read()
builder = (SparkSession.builder.master("local[1]").appName("conduit-gzip")
           .config("spark.ui.enabled", "false")
           .config("spark.sql.warehouse.dir", work + "/warehouse")
           .config("javax.jdo.option.ConnectionURL",
                   "jdbc:derby:;databaseName=" + work + "/metastore;create=true"))
# The Hive dialect of `conduit table` needs a Hive catalog.
spark = (builder.enableHiveSupport() if sql.strip() else builder).getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
out = {}
df = spark.read.json(dirs)
out["spark.read.json"] = [df.count(), df.groupBy().sum("v").collect()[0][0]]
lines = spark.sparkContext.textFile(",".join(dirs))
out["sc.textFile"] = [lines.count(), lines.map(lambda l: json.loads(l)["v"]).sum()]
if sql.strip():
    for stmt in sql.split(";\n"):
        stmt = "\n".join(l for l in stmt.splitlines() if not l.startswith("--")).strip()
        if stmt:
            spark.sql(stmt)
    for table, column in [("gz", "value"), ("gz_hive", "line")]:
        rows = spark.sql("SELECT dt, hh, mi, count(*) AS n, sum(get_json_object(%s, '$.v')) AS s FROM %s GROUP BY dt, hh, mi" % (column, table)).collect()
        out[table] = {"%s %s:%s" % (r.dt, r.hh, r.mi): [r.n, int(r.s)] for r in rows}
print(json.dumps(out))
spark.stop()
"#;

fn run_spark(python: &str, fx: &Fixture, sql: &str) -> Value {
    let work = tempfile::tempdir().unwrap();
    let mut args = vec![work.path().display().to_string()];
    args.extend(fx.minutes.iter().map(|(d, _)| d.display().to_string()));
    let mut child = Command::new(python)
        .arg("-c")
        .arg(SPARK_SCRIPT)
        .args(&args)
        .current_dir(work.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pyspark");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().expect("pyspark");
    assert!(
        out.status.success(),
        "pyspark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("pyspark printed {stdout:?}: {e}"))
}

#[test]
fn spark4_reads_the_gz_minutes_and_their_table() {
    let test = "spark4_reads_the_gz_minutes_and_their_table";
    let Some(python) = gate::pyspark(test, gate::PYSPARK4) else {
        return;
    };
    let fx = fixture();
    let root = fx.root.to_str().unwrap();
    let mut sql = String::new();
    for (dialect, table) in [("spark", "gz"), ("hive", "gz_hive")] {
        let ran = run_conduit(
            &[
                "table", "--root", root, "--topic", TOPIC, "--format", dialect, "--table", table,
            ],
            b"",
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(ran.code, 0, "conduit table: {}", ran.stderr);
        sql.push_str(&ran.stdout);
    }
    let got = run_spark(&python, fx, &sql);
    let want = json!([EVENTS, checksum()]);
    assert_eq!(got["spark.read.json"], want, "{got}");
    assert_eq!(got["sc.textFile"], want, "{got}");
    let mut per_partition = BTreeMap::new();
    for table in ["gz", "gz_hive"] {
        let counts: BTreeMap<String, Value> = serde_json::from_value(got[table].clone())
            .unwrap_or_else(|e| panic!("{table}: {e} in {got}"));
        per_partition.insert(table, counts);
    }
    let expected: BTreeMap<String, Value> = fx
        .minutes
        .iter()
        .map(|(dir, m)| {
            let start = m.minute.start();
            let sum: u64 = m
                .files
                .iter()
                .map(|f| count_lines(&gunzip(&dir.join(&f.name))).1)
                .sum();
            (
                start.format("%Y-%m-%d %H:%M").to_string(),
                json!([m.records, sum]),
            )
        })
        .collect();
    for (table, counts) in per_partition {
        assert_eq!(
            counts, expected,
            "{table}: GROUP BY dt, hh, mi = the manifests"
        );
    }
}

/// `gzip -dc` of `path` (the reference for per-minute checksums).
fn gunzip(path: &Path) -> Vec<u8> {
    let run = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(run.status.success(), "gzip -dc {}", path.display());
    run.stdout
}

#[test]
fn spark35_reads_the_gz_minutes() {
    let test = "spark35_reads_the_gz_minutes";
    let Some(python) = gate::pyspark(test, gate::PYSPARK35) else {
        return;
    };
    let fx = fixture();
    let got = run_spark(&python, fx, "");
    let want = json!([EVENTS, checksum()]);
    assert_eq!(got["spark.read.json"], want, "{got}");
    assert_eq!(got["sc.textFile"], want, "{got}");
}

#[test]
fn hadoop_fs_text_reads_gz_minutes_on_hdfs() {
    let test = "hadoop_fs_text_reads_gz_minutes_on_hdfs";
    let Some(root) = conduit_testkit::hdfs::fresh_root(test) else {
        return;
    };
    let script = match std::env::var(conduit_testkit::hdfs::SCRIPT_VAR) {
        Ok(s) => s,
        Err(_) => {
            gate::missing(
                test,
                "CONDUIT_HDFS_SCRIPT is not set (the Hadoop jars come from scripts/hdfs.sh)",
                "export CONDUIT_HDFS_SCRIPT=$PWD/scripts/hdfs.sh; .ci/run does",
            );
            return;
        }
    };
    if !gate::tool(test, "java") {
        return;
    }
    let cp = Command::new(&script).arg("classpath").output().unwrap();
    assert!(cp.status.success(), "{script} classpath");
    let classpath = String::from_utf8(cp.stdout).unwrap().trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = rt.block_on(conduit_testkit::hdfs::open(&root));
    let topic = Topic::new(TOPIC).unwrap();
    let (minutes, _) = publish_and_seal(&root, dir.path(), || {
        rt.block_on(hdfs_merged_minutes(storage.as_ref(), &topic))
            .filter(|m| m.iter().map(|m| m.records).sum::<u64>() == EVENTS)
    });
    let (mut n, mut sum) = (0, 0);
    for m in minutes.iter().filter(|m| m.records > 0) {
        let glob = format!(
            "{root}/{}/*.gz",
            Layout::minute_dir(View::Merged, &topic, m.minute)
        );
        let out = Command::new("java")
            .args([
                "-cp",
                &classpath,
                "org.apache.hadoop.fs.FsShell",
                "-text",
                &glob,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hadoop fs -text {glob}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (mn, msum) = count_lines(&out.stdout);
        assert_eq!(mn, m.records, "hadoop fs -text {glob} = its manifest");
        n += mn;
        sum += msum;
    }
    assert_eq!((n, sum), (EVENTS, checksum()));
}

/// The sealed merged minutes of the gz topic on `storage`, oldest first, or
/// `None` while none is sealed.
async fn hdfs_merged_minutes(storage: &dyn Storage, topic: &Topic) -> Option<Vec<Manifest>> {
    use conduit_core::tree::{newest_sealed_dir, oldest_dir};
    let oldest: Minute = oldest_dir(storage, View::Merged, topic).await.ok()??;
    let newest = newest_sealed_dir(storage, View::Merged, topic)
        .await
        .ok()??;
    let mut out = Vec::new();
    let mut m = oldest;
    while m <= newest {
        let dir = Layout::minute_dir(View::Merged, topic, m);
        if let Ok(Some(manifest)) = Manifest::read(storage, &dir).await {
            out.push(manifest);
        }
        m = m.next().ok()?;
    }
    Some(out)
}
