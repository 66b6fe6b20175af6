//! Hourly compaction to Parquet (issue 15, `compact_format = "parquet"`): the
//! file a real `conduit worker compact` process writes is read by DuckDB, polars,
//! pyarrow and Spark with counts equal to the `_SUCCESS` manifests and the same
//! payloads (an order-independent FNV-1a checksum); typed columns of a topic's
//! schema come back with their types and values; rows that do not match are
//! counted on `/metrics` and kept in the hour's `_invalid.` file
//! (`docs/worker.md`); `conduit verify` accepts the hour and `conduit table`
//! registers it as a Parquet table.
//!
//! The hour is 2026-11-22 10:00, long closed by the system clock the worker runs
//! on: its minutes are written with the real frame encoder, trailer and manifest
//! code as sealed merged minutes (the compact job's source view for a topic
//! merged into this cluster), from collectors of two clusters. Compaction needs a
//! closed hour, which a collector receiving events now would give only at the next
//! hour boundary; a worker process cannot run on a test clock.
//!
//! Python readers need their modules (`gate::python`); Spark 4 and Spark 3.5 need
//! the pyspark venvs `.ci/run` builds (`gate::pyspark`: `CONDUIT_PYSPARK4`,
//! `CONDUIT_PYSPARK35`). All fail under `CI=true` when missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conduit_core::format::decode_file;
use conduit_core::layout::Layout;
use conduit_core::manifest::crc32c;
use conduit_core::records::InvalidRecord;
use conduit_core::storage::LocalStorage;
use conduit_core::{
    Encoding, Manifest, ManifestFile, Minute, NodeName, SharedStorage, Topic, View,
};
use conduit_testkit::gate;
use conduit_testkit::process::{metric, run_conduit, WorkerProcess};
use conduit_testkit::wait;
use serde_json::Value;

const PLAIN: &str = "plain";
const ORDERS: &str = "orders";

fn minute(text: &str) -> Minute {
    Minute::parse_flexible(text).expect("minute")
}

fn node(name: &str) -> NodeName {
    NodeName::new(name).unwrap()
}

fn hour() -> Minute {
    minute("2026-11-22T10:00")
}

/// The sealed minutes of the hour (absent minutes are skipped by the job) and
/// 11:00, which closes it.
fn minutes() -> Vec<Minute> {
    ["10:00", "10:01", "10:02", "10:17", "10:59"]
        .iter()
        .map(|m| minute(&format!("2026-11-22T{m}")))
        .collect()
}

/// The (cluster, collector) pairs whose files each minute holds.
const ORIGINS: [(&str, &str); 3] = [("dc1", "c1"), ("dc1", "c2"), ("dc2", "c7")];

/// 64-bit FNV-1a; the readers' scripts compute the same.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn checksum<'a>(payloads: impl IntoIterator<Item = &'a Vec<u8>>) -> u64 {
    payloads
        .into_iter()
        .fold(0u64, |sum, p| sum.wrapping_add(fnv1a(p)))
}

/// Writes and seals merged minute `m` of `topic`: one file per origin, with the
/// payloads `make(origin index, n)` for n in 0..per_file.
async fn seal_minute(
    storage: &SharedStorage,
    topic: &str,
    m: Minute,
    per_file: usize,
    make: &dyn Fn(usize, usize) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    let topic = Topic::new(topic).unwrap();
    let dir = Manifest::dir(View::Merged, &topic, m);
    let mut entries = Vec::new();
    let mut all = Vec::new();
    for (i, (cluster, collector)) in ORIGINS.iter().enumerate() {
        let records: Vec<Vec<u8>> = (0..per_file).map(|n| make(i, n)).collect();
        let bytes = conduit_testkit::minutes::data_file(&records, 2);
        all.extend(records);
        let name = Layout::local_file_name(&node(cluster), &node(collector), m, 0, &topic);
        entries.push(ManifestFile {
            name: name.clone(),
            bytes: bytes.len() as u64,
            records: per_file as u64,
            crc32c: crc32c(&bytes),
            cluster: node(cluster),
            collector: Some(node(collector)),
            minute: m,
            late: false,
        });
        storage
            .write_atomic(&format!("{dir}/{name}"), Bytes::from(bytes))
            .await
            .unwrap();
    }
    let clusters = vec![node("dc1"), node("dc2")];
    Manifest::new(
        View::Merged,
        topic,
        m,
        clusters,
        vec![],
        m.end(),
        "dc1/test".into(),
        entries,
    )
    .seal(storage.as_ref())
    .await
    .unwrap();
    all
}

/// What the fixture published.
struct Published {
    /// Every payload of `plain` in the hour.
    plain: Vec<Vec<u8>>,
    /// Payloads of `orders` that match its schema, and their ids.
    orders_valid: Vec<Vec<u8>>,
    /// Payloads of `orders` that do not.
    orders_invalid: Vec<Vec<u8>>,
}

/// A `plain` payload: JSON-ish text, some of it not UTF-8 (the column is BINARY).
fn plain_payload(m: Minute, origin: usize, n: usize) -> Vec<u8> {
    let mut p = format!("{{\"m\":\"{}\",\"o\":{origin},\"n\":{n}}}", m.file_stamp()).into_bytes();
    if n % 50 == 7 {
        p.extend_from_slice(b"\xff\xfe\x00tail");
    }
    p
}

/// An `orders` payload: every 13th lacks the required `id`, every 29th has a
/// string `price`, every 31st is not an object; `note` is absent every 3rd.
fn orders_payload(m: Minute, origin: usize, n: usize) -> (Vec<u8>, bool) {
    let id = m.epoch_minutes() * 10_000 + (origin * 1000 + n) as i64;
    if n % 13 == 5 {
        return (
            format!("{{\"price\":1.5,\"note\":\"no id {id}\"}}").into_bytes(),
            false,
        );
    }
    if n % 29 == 3 {
        return (
            format!("{{\"id\":{id},\"price\":\"1.5\"}}").into_bytes(),
            false,
        );
    }
    if n % 31 == 4 {
        return (format!("[{id}]").into_bytes(), false);
    }
    let note = if n.is_multiple_of(3) {
        String::new()
    } else {
        format!(",\"note\":\"n{id}\"")
    };
    let payload = format!(
        "{{\"id\":{id},\"price\":{}.25,\"paid\":{}{note},\"extra\":[1,2]}}",
        n,
        n.is_multiple_of(2)
    );
    (payload.into_bytes(), true)
}

async fn fixture(root: &Path) -> Published {
    let storage: SharedStorage = Arc::new(LocalStorage::open(root).unwrap());
    let mut published = Published {
        plain: Vec::new(),
        orders_valid: Vec::new(),
        orders_invalid: Vec::new(),
    };
    for m in minutes() {
        published
            .plain
            .extend(seal_minute(&storage, PLAIN, m, 400, &|o, n| plain_payload(m, o, n)).await);
        let orders = seal_minute(&storage, ORDERS, m, 200, &|o, n| orders_payload(m, o, n).0).await;
        for (i, p) in orders.into_iter().enumerate() {
            // seal_minute returns the payloads of origin 0, then 1, ...
            if orders_payload(m, i / 200, i % 200).1 {
                published.orders_valid.push(p);
            } else {
                published.orders_invalid.push(p);
            }
        }
    }
    // 11:00 sealed closes the hour 10 (its own hour stays open).
    let next = minute("2026-11-22T11:00");
    seal_minute(&storage, PLAIN, next, 1, &|_, n| {
        format!("x{n}").into_bytes()
    })
    .await;
    seal_minute(&storage, ORDERS, next, 1, &|_, n| {
        format!("{{\"id\":{n}}}").into_bytes()
    })
    .await;
    published
}

fn config(root: &Path) -> String {
    format!(
        r#"
[clusters.dc1]
root = "{root}"

[worker]
interval_ms = 200

[topics.{PLAIN}]
merge_into = "dc1"
compact = true
compact_format = "parquet"

[topics.{ORDERS}]
merge_into = "dc1"
validate = "json"
compact = true
compact_format = "parquet"

[topics.{ORDERS}.schema]
type = "object"
required = ["id"]
properties = {{ id = {{ type = "integer" }}, price = {{ type = "number" }}, paid = {{ type = "boolean" }}, note = {{ type = "string" }} }}
"#,
        root = root.display()
    )
}

/// A root with the fixture compacted by a real worker process: the root, the
/// config path, what was published, and the worker's `/metrics` text.
struct Compacted {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    published: Published,
    metrics: String,
}

impl Compacted {
    fn hour_dir(&self, topic: &str) -> PathBuf {
        self.root
            .join(Layout::hour_dir(&Topic::new(topic).unwrap(), hour()))
    }

    fn manifest(&self, topic: &str) -> Manifest {
        let path = self.hour_dir(topic).join("_SUCCESS");
        Manifest::parse("_SUCCESS", &std::fs::read(path).unwrap()).unwrap()
    }

    fn parquet(&self, topic: &str) -> PathBuf {
        self.hour_dir(topic).join(Layout::hourly_parquet_file_name(
            &Topic::new(topic).unwrap(),
            hour(),
        ))
    }
}

async fn compacted() -> Compacted {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    let published = fixture(&root).await;
    let config = dir.path().join("conduit.toml");
    std::fs::write(&config, config_text(&root)).unwrap();
    let ran = run_conduit(
        &["check", "--config", config.to_str().unwrap()],
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(ran.code, 0, "conduit check: {}{}", ran.stdout, ran.stderr);
    let worker = WorkerProcess::start(
        &[
            "compact",
            "--config",
            config.to_str().unwrap(),
            "--cluster",
            "dc1",
        ],
        dir.path(),
    )
    .unwrap();
    for topic in [PLAIN, ORDERS] {
        let marker = root
            .join(Layout::hour_dir(&Topic::new(topic).unwrap(), hour()))
            .join("_SUCCESS");
        wait::until(
            &format!("the hour of {topic} sealed"),
            Duration::from_secs(60),
            || {
                let exists = marker.exists();
                async move { exists }
            },
        )
        .await;
    }
    let metrics = worker.metrics();
    Compacted {
        _dir: dir,
        root,
        config,
        published,
        metrics,
    }
}

fn config_text(root: &Path) -> String {
    config(root)
}

/// Reads `path` with `reader` (duckdb, polars or pyarrow) and prints rows,
/// checksum, minutes, origins, column types and, for typed files, per-column
/// sums and null counts.
const READ_SCRIPT: &str = r#"
import json, sys
path, reader = sys.argv[1], sys.argv[2]
M = 0xFFFFFFFFFFFFFFFF
def fnv(b):
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & M
    return h
def as_bytes(p):
    return p.encode() if isinstance(p, str) else bytes(p)
if reader == "duckdb":
    import duckdb
    rel = duckdb.sql(f"select * from read_parquet('{path}')")
    names = rel.columns
    types = [str(t) for t in rel.types]
    rows = duckdb.sql(f"select * exclude (minute), cast(epoch_ms(minute) as bigint) as minute_ms from read_parquet('{path}')").fetchall()
    cols = [c for c in names if c != "minute"] + ["minute_ms"]
    records = [dict(zip(cols, r)) for r in rows]
elif reader == "polars":
    import polars as pl
    df = pl.read_parquet(path)
    names = df.columns
    types = [str(t) for t in df.dtypes]
    df = df.with_columns(pl.col("minute").dt.epoch("ms").alias("minute_ms"))
    records = df.to_dicts()
else:
    import pyarrow as pa, pyarrow.parquet as pq
    t = pq.read_table(path)
    names = t.column_names
    types = [str(f.type) for f in t.schema]
    t = t.append_column("minute_ms", t.column("minute").cast(pa.int64()))
    records = t.to_pylist()
typed = [c for c in names if c not in ("payload", "minute", "cluster", "collector")]
out = {
    "names": names,
    "types": types,
    "rows": len(records),
    "checksum": str(sum(fnv(as_bytes(r["payload"])) for r in records) & M),
    "minutes": sorted({r["minute_ms"] for r in records}),
    "origins": sorted({r["cluster"] + "/" + r["collector"] for r in records}),
    "sums": {c: repr(sum(v for v in (r[c] for r in records) if v is not None)) for c in typed if c != "note"},
    "nulls": {c: sum(1 for r in records if r[c] is None) for c in typed},
    "notes": str(sum(fnv(r["note"].encode()) for r in records if r.get("note") is not None) & M) if "note" in typed else "",
}
print(json.dumps(out))
"#;

fn read_with(reader: &str, path: &Path) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(READ_SCRIPT)
        .arg(path)
        .arg(reader)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{reader} failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{reader} printed {stdout:?}: {e}"))
}

const READERS: [&str; 3] = ["duckdb", "polars", "pyarrow"];

fn expected_minutes() -> Vec<Value> {
    minutes()
        .iter()
        .map(|m| Value::from(m.start().timestamp_millis()))
        .collect()
}

fn expected_origins() -> Vec<Value> {
    ORIGINS
        .iter()
        .map(|(c, k)| Value::from(format!("{c}/{k}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_polars_and_pyarrow_read_the_hourly_parquet_file() {
    let c = compacted().await;
    let manifest = c.manifest(PLAIN);
    let path = c.parquet(PLAIN);
    assert_eq!(manifest.files.len(), 1);
    let file = &manifest.files[0];
    assert_eq!(file.name, "plain-2026-11-22-10.parquet");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(file.bytes, bytes.len() as u64);
    assert_eq!(file.crc32c, crc32c(&bytes));
    assert_eq!(manifest.records, c.published.plain.len() as u64);
    assert_eq!(file.records, manifest.records);
    // The manifests of the minutes agree with what was published.
    let minutes_total: u64 = minutes()
        .iter()
        .map(|&m| {
            let dir = c
                .root
                .join(Manifest::dir(View::Merged, &Topic::new(PLAIN).unwrap(), m));
            Manifest::parse("m", &std::fs::read(dir.join("_SUCCESS")).unwrap())
                .unwrap()
                .records
        })
        .sum();
    assert_eq!(manifest.records, minutes_total);
    assert!(
        !c.hour_dir(PLAIN)
            .join("_invalid.plain-2026-11-22-10.zst")
            .exists(),
        "no row of a topic without a schema is set aside"
    );
    let sum = checksum(&c.published.plain).to_string();
    for reader in READERS {
        if !gate::python(
            "duckdb_polars_and_pyarrow_read_the_hourly_parquet_file",
            reader,
        ) {
            continue;
        }
        let got = read_with(reader, &path);
        assert_eq!(got["rows"], manifest.records, "{reader}: {got}");
        assert_eq!(got["checksum"], sum.as_str(), "{reader}: payload checksum");
        assert_eq!(
            got["names"],
            serde_json::json!(["payload", "minute", "cluster", "collector"]),
            "{reader}"
        );
        assert_eq!(got["minutes"], Value::from(expected_minutes()), "{reader}");
        assert_eq!(got["origins"], Value::from(expected_origins()), "{reader}");
    }
    // conduit verify reads the footer; the hourly view is consistent.
    let ran = run_conduit(
        &[
            "verify",
            "--root",
            c.root.to_str().unwrap(),
            "--topic",
            PLAIN,
            "--view",
            "hourly",
        ],
        b"",
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(ran.code, 0, "conduit verify: {}{}", ran.stdout, ran.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_and_invalid_rows() {
    let c = compacted().await;
    let p = &c.published;
    let manifest = c.manifest(ORDERS);
    let published = (p.orders_valid.len() + p.orders_invalid.len()) as u64;
    assert!(!p.orders_invalid.is_empty() && p.orders_valid.len() > 1000);
    assert_eq!(manifest.records, p.orders_valid.len() as u64);
    // Counted on /metrics.
    assert_eq!(
        metric(
            &c.metrics,
            &format!("conduit_worker_invalid_rows_total{{topic=\"{ORDERS}\"}}")
        ),
        Some(p.orders_invalid.len() as f64),
        "{}",
        c.metrics
    );
    assert_eq!(
        metric(
            &c.metrics,
            &format!("conduit_worker_invalid_rows_total{{topic=\"{PLAIN}\"}}")
        ),
        Some(0.0),
        "present at 0 for a parquet topic without invalid rows"
    );
    if gate::promtool("typed_columns_and_invalid_rows") {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(c.metrics.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && printed.trim().is_empty(),
            "promtool check metrics: {printed}"
        );
    }
    // Kept in the hour's _invalid. file as _invalid records.
    let invalid_path = c.hour_dir(ORDERS).join("_invalid.orders-2026-11-22-10.zst");
    let decoded = decode_file(
        "invalid",
        &std::fs::read(&invalid_path).unwrap(),
        Encoding::Lines,
    )
    .unwrap();
    let records: Vec<InvalidRecord> = decoded
        .payloads
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(records.len(), p.orders_invalid.len());
    assert_eq!(manifest.records + records.len() as u64, published);
    let set_aside: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            assert_eq!(r.reason, "schema_mismatch");
            assert_eq!(r.topic, ORDERS);
            assert!(
                r.detail.contains("required property \"id\" is missing")
                    || r.detail
                        .contains("property \"price\" is a string, not number")
                    || r.detail.contains("not a json object"),
                "{}",
                r.detail
            );
            r.payload_base64.0.to_vec()
        })
        .collect();
    assert_eq!(checksum(&set_aside), checksum(&p.orders_invalid));

    let ids: i64 = p
        .orders_valid
        .iter()
        .map(|v| {
            serde_json::from_slice::<Value>(v).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .sum();
    let without_note = p
        .orders_valid
        .iter()
        .filter(|v| {
            serde_json::from_slice::<Value>(v)
                .unwrap()
                .get("note")
                .is_none()
        })
        .count();
    let notes: Vec<Vec<u8>> = p
        .orders_valid
        .iter()
        .filter_map(|v| {
            serde_json::from_slice::<Value>(v).unwrap()["note"]
                .as_str()
                .map(|s| s.as_bytes().to_vec())
        })
        .collect();
    let paid = p
        .orders_valid
        .iter()
        .filter(|v| serde_json::from_slice::<Value>(v).unwrap()["paid"] == Value::Bool(true))
        .count();
    let path = c.parquet(ORDERS);
    for reader in READERS {
        if !gate::python("typed_columns_and_invalid_rows", reader) {
            continue;
        }
        let got = read_with(reader, &path);
        assert_eq!(got["rows"], manifest.records, "{reader}: {got}");
        assert_eq!(
            got["checksum"],
            checksum(&p.orders_valid).to_string().as_str(),
            "{reader}"
        );
        assert_eq!(
            got["names"],
            serde_json::json!([
                "payload",
                "minute",
                "cluster",
                "collector",
                "id",
                "note",
                "paid",
                "price"
            ]),
            "{reader}: typed columns in name order"
        );
        let types: Vec<String> = got["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_lowercase())
            .collect();
        let expected: &[&[&str]] = &[
            &["varchar", "string", "str"],
            &[
                "timestamp with time zone",
                "datetime(time_unit='ms', time_zone='utc')",
                "timestamp[ms, tz=utc]",
            ],
            &["varchar", "string", "str"],
            &["varchar", "string", "str"],
            &["bigint", "int64"],
            &["varchar", "string", "str"],
            &["boolean", "bool"],
            &["double", "float64"],
        ];
        for (t, want) in types.iter().zip(expected) {
            assert!(
                want.contains(&t.as_str()),
                "{reader}: type {t}, expected one of {want:?}"
            );
        }
        assert_eq!(
            got["sums"]["id"].as_str().unwrap(),
            ids.to_string(),
            "{reader}"
        );
        assert_eq!(
            got["sums"]["paid"].as_str().unwrap(),
            paid.to_string(),
            "{reader}: booleans"
        );
        assert_eq!(got["nulls"]["note"], without_note, "{reader}");
        assert_eq!(got["nulls"]["id"], 0, "{reader}");
        assert_eq!(
            got["notes"],
            checksum(&notes).to_string().as_str(),
            "{reader}"
        );
    }
    for spark in [gate::PYSPARK4, gate::PYSPARK35] {
        if let Some(python) = gate::pyspark("typed_columns_and_invalid_rows", spark) {
            spark_reads_the_hour(&python, &c, ids);
        }
    }
}

/// Runs the SQL on stdin in Spark local mode, then reads the `orders` hour with
/// `spark.read.parquet` and through the table; prints counts and sums.
const SPARK_SCRIPT: &str = r#"
import json, sys
from pyspark.sql import SparkSession
hour_dir, work = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master("local[1]").appName("conduit-parquet")
         .config("spark.sql.warehouse.dir", work + "/warehouse")
         .config("spark.ui.enabled", "false")
         .config("spark.sql.session.timeZone", "UTC")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.parquet(hour_dir)
direct = df.selectExpr("count(*) as n", "sum(id) as ids").collect()[0]
for stmt in sys.stdin.read().split(";\n"):
    s = "\n".join(l for l in stmt.splitlines() if not l.startswith("--")).strip()
    if s:
        spark.sql(s)
per_partition = {
    r["dt"] + "/" + r["hh"]: [r["n"], r["ids"]]
    for r in spark.sql("SELECT dt, hh, count(*) AS n, sum(id) AS ids FROM orders GROUP BY dt, hh").collect()
}
types = {f.name: f.dataType.simpleString() for f in spark.table("orders").schema.fields}
print(json.dumps({"count": direct["n"], "ids": direct["ids"], "partitions": per_partition, "types": types}))
"#;

/// Spark (the venv of `python`) reads the `orders` hour: `spark.read.parquet`
/// and the table `conduit table --view hourly` declares count the manifest's
/// records and sum the ids.
fn spark_reads_the_hour(python: &str, c: &Compacted, ids: i64) {
    let ran = run_conduit(
        &[
            "table",
            "--config",
            c.config.to_str().unwrap(),
            "--topic",
            ORDERS,
            "--view",
            "hourly",
        ],
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(ran.code, 0, "conduit table: {}", ran.stderr);
    assert!(
        ran.stdout
            .contains(") USING parquet PARTITIONED BY (`dt`, `hh`) LOCATION"),
        "{}",
        ran.stdout
    );
    let work = c.root.parent().unwrap().join("spark");
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new(python)
        .arg("-c")
        .arg(SPARK_SCRIPT)
        .arg(c.hour_dir(ORDERS))
        .arg(&work)
        .current_dir(&work)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pyspark");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(ran.stdout.as_bytes()).unwrap();
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
    let records = c.manifest(ORDERS).records;
    assert_eq!(got["count"], records, "spark.read.parquet: {got}");
    assert_eq!(got["ids"], ids, "spark.read.parquet sum(id)");
    assert_eq!(
        got["partitions"],
        serde_json::json!({ "2026-11-22/10": [records, ids] }),
        "the table's count per partition equals the hour's manifest"
    );
    assert_eq!(got["types"]["id"], "bigint");
    assert_eq!(got["types"]["price"], "double");
    assert_eq!(got["types"]["paid"], "boolean");
    assert_eq!(got["types"]["minute"], "timestamp");
}
