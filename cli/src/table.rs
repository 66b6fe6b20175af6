//! `conduit table`: the SQL that registers a topic's sealed directories as a
//! partitioned external table, for Spark SQL, Hive or Trino.
//!
//! Batch engines read conduit's directories directly, but the layout is
//! `yyyy/MM/dd/HH/mm`, not Hive's `key=value`, so partition discovery finds no
//! columns. Instead this command prints one `CREATE` for the table (rooted at the
//! view's topic directory) and one statement per **sealed** directory that adds it
//! as a partition with an explicit `LOCATION`: `dt` (`yyyy-MM-dd`), `hh` and, for
//! minute views, `mi`. Directories without a `_SUCCESS` manifest are never added,
//! so a query sees only complete minutes.
//!
//! `--since TIME` prints only the partitions sealed at or after TIME (the
//! manifest's `sealed_at`), so a scheduled task that runs after each `_SUCCESS`
//! (an Airflow sensor, say) adds what is new; every statement is idempotent
//! (`IF NOT EXISTS`), so overlapping runs are harmless.
//!
//! The table has one string column per record (`value` for Spark's `text` source,
//! `line` for Hive and Trino): the record exactly as stored, so a JSON topic is
//! read with `from_json`/`get_json_object`/`json_extract`, and a `base64` topic
//! decodes it with `unbase64`/`from_base64`. The hourly view of a topic with
//! `compact_format = "parquet"` is a Parquet table instead (`USING parquet`,
//! `STORED AS PARQUET`, `format = 'PARQUET'`) whose columns are the files'
//! (`payload`, `minute`, `cluster`, `collector` and the schema's), read from the
//! topic's config or from the footer of its first sealed hour. Statements end with `;` and a newline
//! and comments start with `--`, so the output can be piped into `spark-sql`,
//! `beeline -f` or `trino --file`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use conduit_core::layout::Layout;
use conduit_core::{CompactFormat, Config, Manifest, Minute, MinuteWalker, Topic, View};
use conduit_merger::parquet::ColumnKind;

/// Arguments of `conduit table`.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Configuration file naming the cluster's root.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,

    /// Storage root of the cluster (overrides the config). A local directory is
    /// printed as an absolute `file://` location.
    #[arg(long, value_name = "DIR|URI", required_unless_present = "config")]
    root: Option<String>,

    /// The cluster whose directories are registered.
    #[arg(long, default_value = "dc1")]
    cluster: String,

    /// The topic.
    #[arg(long)]
    topic: String,

    /// The view: `merged` (streams/, every datacenter), `local` (streams_local/,
    /// this cluster) or `hourly` (streams_hourly/, partitions `dt`, `hh` only).
    #[arg(long, default_value = "merged", value_parser = ["local", "merged", "hourly"])]
    view: String,

    /// SQL dialect: `spark` (Spark SQL data source table, `USING text`; no Hive
    /// metastore needed), `hive` (`CREATE EXTERNAL TABLE ... STORED AS TEXTFILE`,
    /// also Spark with Hive support and Impala) or `trino` (Hive connector;
    /// partitions through `system.register_partition`, which needs
    /// `hive.allow-register-partition-procedure=true`).
    #[arg(long, default_value = "spark", value_parser = ["spark", "hive", "trino"])]
    format: String,

    /// Table name (default: the topic's name).
    #[arg(long, value_name = "NAME")]
    table: Option<String>,

    /// Database (spark, hive) or schema (trino) that holds the table (default:
    /// unqualified for spark and hive, `default` for trino).
    #[arg(long, value_name = "NAME")]
    database: Option<String>,

    /// Trino catalog of the Hive connector.
    #[arg(long, default_value = "hive", value_name = "NAME")]
    catalog: String,

    /// Only partitions sealed at or after TIME (their manifest's `sealed_at`):
    /// a UTC minute such as `2026-11-22T10:05` or a duration before now such as
    /// `15m`, `2h`, `1d`.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,

    /// First directory to register (same forms as --since, compared with the
    /// directory's minute or hour).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,

    /// Last directory to register (inclusive).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,

    /// Print only the partition statements, not the `CREATE`.
    #[arg(long)]
    partitions_only: bool,
}

/// The SQL dialect of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Spark SQL data source table.
    Spark,
    /// HiveQL external table.
    Hive,
    /// Trino's Hive connector.
    Trino,
}

/// What one table statement set is about.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The dialect.
    pub dialect: Dialect,
    /// The view the partitions come from.
    pub view: View,
    /// Table name, unquoted.
    pub table: String,
    /// Database or schema, unquoted.
    pub database: Option<String>,
    /// Trino catalog.
    pub catalog: String,
    /// Absolute location of the storage root (`file:///...` or `hdfs://...`), no
    /// trailing `/`.
    pub root_url: String,
    /// The columns of the hourly Parquet files, when the table is over them.
    pub parquet: Option<Vec<(String, ColumnKind)>>,
}

impl TableSpec {
    fn partition_columns(&self) -> &'static [&'static str] {
        if self.view == View::Hourly {
            &["dt", "hh"]
        } else {
            &["dt", "hh", "mi"]
        }
    }

    fn quote(&self, ident: &str) -> String {
        match self.dialect {
            Dialect::Trino => format!("\"{ident}\""),
            Dialect::Spark | Dialect::Hive => format!("`{ident}`"),
        }
    }

    fn qualified_table(&self) -> String {
        match self.dialect {
            Dialect::Trino => format!(
                "{}.{}.{}",
                self.quote(&self.catalog),
                self.quote(self.database.as_deref().unwrap_or("default")),
                self.quote(&self.table)
            ),
            Dialect::Spark | Dialect::Hive => match &self.database {
                Some(db) => format!("{}.{}", self.quote(db), self.quote(&self.table)),
                None => self.quote(&self.table),
            },
        }
    }

    fn location(&self, dir: &str) -> String {
        format!("{}/{dir}", self.root_url)
    }

    fn sql_type(&self, kind: ColumnKind) -> &'static str {
        match (self.dialect, kind) {
            (Dialect::Trino, ColumnKind::String) => "varchar",
            (Dialect::Trino, ColumnKind::Binary) => "varbinary",
            (Dialect::Trino, ColumnKind::Timestamp) => "timestamp(3)",
            (Dialect::Trino, ColumnKind::Int64) => "bigint",
            (Dialect::Trino, ColumnKind::Double) => "double",
            (Dialect::Trino, ColumnKind::Boolean) => "boolean",
            (_, ColumnKind::String) => "STRING",
            (_, ColumnKind::Binary) => "BINARY",
            (_, ColumnKind::Timestamp) => "TIMESTAMP",
            (_, ColumnKind::Int64) => "BIGINT",
            (_, ColumnKind::Double) => "DOUBLE",
            (_, ColumnKind::Boolean) => "BOOLEAN",
        }
    }

    /// The `CREATE` statement of a table over hourly Parquet files.
    fn create_parquet(&self, columns: &[(String, ColumnKind)], location: &str) -> String {
        let table = self.qualified_table();
        let parts = self.partition_columns();
        let text = if self.dialect == Dialect::Trino {
            "varchar"
        } else {
            "STRING"
        };
        let cols: Vec<String> = columns
            .iter()
            .map(|(name, kind)| format!("{} {}", self.quote(name), self.sql_type(*kind)))
            .collect();
        let keys: Vec<String> = parts.iter().map(|p| self.quote(p)).collect();
        let typed_keys: Vec<String> = parts
            .iter()
            .map(|p| format!("{} {text}", self.quote(p)))
            .collect();
        match self.dialect {
            Dialect::Spark => format!(
                "CREATE TABLE IF NOT EXISTS {table} ({}, {}) USING parquet PARTITIONED BY ({}) LOCATION '{location}';\n",
                cols.join(", "),
                typed_keys.join(", "),
                keys.join(", ")
            ),
            Dialect::Hive => format!(
                "CREATE EXTERNAL TABLE IF NOT EXISTS {table} ({}) PARTITIONED BY ({}) STORED AS PARQUET LOCATION '{location}';\n",
                cols.join(", "),
                typed_keys.join(", ")
            ),
            Dialect::Trino => {
                let names: Vec<_> = parts.iter().map(|p| format!("'{p}'")).collect();
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({}, {}) WITH (format = 'PARQUET', external_location = '{location}', partitioned_by = ARRAY[{}]);\n",
                    cols.join(", "),
                    typed_keys.join(", "),
                    names.join(", ")
                )
            }
        }
    }

    /// The `CREATE` statement of the table, rooted at `topic_dir`.
    pub fn create(&self, topic_dir: &str) -> String {
        let table = self.qualified_table();
        let location = self.location(topic_dir);
        let parts = self.partition_columns();
        if let Some(columns) = &self.parquet {
            return self.create_parquet(columns, &location);
        }
        match self.dialect {
            Dialect::Spark => {
                let mut cols = vec![format!("{} STRING", self.quote("value"))];
                cols.extend(parts.iter().map(|p| format!("{} STRING", self.quote(p))));
                let keys: Vec<_> = parts.iter().map(|p| self.quote(p)).collect();
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({}) USING text PARTITIONED BY ({}) LOCATION '{location}';\n",
                    cols.join(", "),
                    keys.join(", ")
                )
            }
            Dialect::Hive => {
                let keys: Vec<_> = parts
                    .iter()
                    .map(|p| format!("{} STRING", self.quote(p)))
                    .collect();
                format!(
                    "CREATE EXTERNAL TABLE IF NOT EXISTS {table} ({} STRING) PARTITIONED BY ({}) STORED AS TEXTFILE LOCATION '{location}';\n",
                    self.quote("line"),
                    keys.join(", ")
                )
            }
            Dialect::Trino => {
                let mut cols = vec![format!("{} varchar", self.quote("line"))];
                cols.extend(parts.iter().map(|p| format!("{} varchar", self.quote(p))));
                let keys: Vec<_> = parts.iter().map(|p| format!("'{p}'")).collect();
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({}) WITH (format = 'TEXTFILE', external_location = '{location}', partitioned_by = ARRAY[{}]);\n",
                    cols.join(", "),
                    keys.join(", ")
                )
            }
        }
    }

    /// The partition values of a directory: `dt`, `hh` and (minute views) `mi`.
    pub fn partition_values(&self, minute: Minute) -> Vec<String> {
        let start = minute.start();
        let mut values = vec![
            start.format("%Y-%m-%d").to_string(),
            start.format("%H").to_string(),
        ];
        if self.view != View::Hourly {
            values.push(start.format("%M").to_string());
        }
        values
    }

    /// The statement that adds the directory `dir` of `minute` as a partition.
    pub fn add_partition(&self, minute: Minute, dir: &str) -> String {
        let values = self.partition_values(minute);
        let location = self.location(dir);
        match self.dialect {
            Dialect::Spark | Dialect::Hive => {
                let spec: Vec<_> = self
                    .partition_columns()
                    .iter()
                    .zip(&values)
                    .map(|(k, v)| format!("{}='{v}'", self.quote(k)))
                    .collect();
                format!(
                    "ALTER TABLE {} ADD IF NOT EXISTS PARTITION ({}) LOCATION '{location}';\n",
                    self.qualified_table(),
                    spec.join(", ")
                )
            }
            Dialect::Trino => {
                let keys: Vec<_> = self
                    .partition_columns()
                    .iter()
                    .map(|k| format!("'{k}'"))
                    .collect();
                let vals: Vec<_> = values.iter().map(|v| format!("'{v}'")).collect();
                format!(
                    "CALL {}.system.register_partition('{}', '{}', ARRAY[{}], ARRAY[{}], '{location}');\n",
                    self.quote(&self.catalog),
                    self.database.as_deref().unwrap_or("default"),
                    self.table,
                    keys.join(", "),
                    vals.join(", ")
                )
            }
        }
    }
}

/// The absolute URL of a storage root as SQL engines want it in `LOCATION`.
fn root_url(root: &str) -> anyhow::Result<String> {
    let url = if root.starts_with("hdfs://") || root.starts_with("viewfs://") {
        root.trim_end_matches('/').to_string()
    } else {
        let path = root.strip_prefix("file://").unwrap_or(root);
        let abs = std::fs::canonicalize(path)
            .with_context(|| format!("cannot resolve the storage root {root:?}"))?;
        let abs = abs
            .to_str()
            .with_context(|| format!("the storage root {} is not UTF-8", abs.display()))?;
        format!("file://{}", abs.trim_end_matches('/'))
    };
    // Locations go into SQL string literals; quoting rules differ between engines,
    // so refuse what would need quoting rather than guess.
    if let Some(c) = url.chars().find(|c| matches!(c, '\'' | '\\' | '\n' | '\r')) {
        anyhow::bail!(
            "the storage root {url:?} contains {c:?}, which cannot be put in a SQL string \
             literal portably; use a root path without quotes or backslashes"
        );
    }
    Ok(url)
}

/// A table, database or catalog name: word characters only, so it never needs
/// more than the dialect's quoting.
fn sql_name(flag: &str, name: &str) -> anyhow::Result<String> {
    if name.is_empty()
        || name.len() > 128
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        anyhow::bail!(
            "{flag} {name:?}: use 1 to 128 ASCII letters, digits and underscores (a name \
             that is valid unquoted in Spark, Hive and Trino)"
        );
    }
    Ok(name.to_string())
}

/// Prints the statements; exit 0.
pub async fn run(args: TableArgs) -> anyhow::Result<ExitCode> {
    let root = crate::ls::root_of(args.root.as_deref(), args.config.as_deref(), &args.cluster)?;
    let topic = Topic::new(&args.topic).context("--topic")?;
    let view: View = args.view.parse().context("--view")?;
    let dialect = match args.format.as_str() {
        "hive" => Dialect::Hive,
        "trino" => Dialect::Trino,
        _ => Dialect::Spark,
    };
    let now = Utc::now();
    let time = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<Minute>> {
        v.as_deref()
            .map(|t| crate::verify::parse_time(t, now).with_context(|| format!("{flag} {t:?}")))
            .transpose()
    };
    let since: Option<DateTime<Utc>> = time("--since", &args.since)?.map(Minute::start);
    let from = time("--from", &args.from)?;
    let to = time("--to", &args.to)?;
    let mut spec = TableSpec {
        dialect,
        view,
        table: sql_name("--table", args.table.as_deref().unwrap_or(topic.as_str()))?,
        database: args
            .database
            .as_deref()
            .map(|d| sql_name("--database", d))
            .transpose()?,
        catalog: sql_name("--catalog", &args.catalog)?,
        root_url: root_url(&root)?,
        parquet: None,
    };
    let storage = conduit_core::open_root(&root)
        .await
        .with_context(|| format!("cannot open storage root {root}"))?;
    if view == View::Hourly {
        if let Some(path) = &args.config {
            let settings = Config::load(path)?.topic(&topic);
            if settings.compact_format == CompactFormat::Parquet {
                let schema = conduit_merger::parquet::arrow_schema(&settings);
                spec.parquet = Some(
                    conduit_merger::parquet::columns_of(&schema)
                        .map_err(|e| anyhow::anyhow!("{topic}: {e}"))?,
                );
            }
        }
    }

    let mut partitions = String::new();
    let mut walk = MinuteWalker::new(&*storage, view, &topic)
        .from(from)
        .until(to);
    let (mut added, mut unsealed) = (0u64, 0u64);
    while let Some(minute) = walk.next().await? {
        let dir = Manifest::dir(view, &topic, minute);
        let Some(manifest) = Manifest::read(&*storage, &dir).await? else {
            unsealed += 1;
            continue;
        };
        if spec.parquet.is_none() && view == View::Hourly {
            if let Some(file) = manifest
                .files
                .iter()
                .find(|f| f.name.ends_with(Layout::PARQUET_EXTENSION))
            {
                let path = format!("{dir}/{}", file.name);
                let meta = conduit_merger::parquet::read_footer(&*storage, &path, file.bytes)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let columns = conduit_merger::parquet::arrow_schema_of(&meta)
                    .and_then(|s| conduit_merger::parquet::columns_of(&s))
                    .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
                spec.parquet = Some(columns);
            }
        }
        if since.is_some_and(|s| manifest.sealed_at < s) {
            continue;
        }
        partitions.push_str(&spec.add_partition(minute, &dir));
        added += 1;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- conduit table: topic {topic}, view {view}, root {}",
        spec.root_url
    );
    if !args.partitions_only {
        out.push_str(&spec.create(&Layout::topic_dir(view, &topic)));
    }
    out.push_str(&partitions);
    print!("{out}");
    eprintln!(
        "{added} sealed {} of {topic} in {} printed as partitions; {unsealed} not sealed yet, left out",
        if view == View::Hourly {
            "hours"
        } else {
            "minutes"
        },
        view.dir_name()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dialect: Dialect, view: View) -> TableSpec {
        TableSpec {
            dialect,
            view,
            table: "clicks".into(),
            database: None,
            catalog: "hive".into(),
            root_url: "hdfs://nn:8020/conduit".into(),
            parquet: None,
        }
    }

    #[test]
    fn hourly_parquet_tables() {
        let mut s = spec(Dialect::Spark, View::Hourly);
        s.parquet = Some(vec![
            ("payload".into(), ColumnKind::String),
            ("minute".into(), ColumnKind::Timestamp),
            ("n".into(), ColumnKind::Int64),
        ]);
        assert_eq!(
            s.create("streams_hourly/clicks"),
            "CREATE TABLE IF NOT EXISTS `clicks` (`payload` STRING, `minute` TIMESTAMP, `n` BIGINT, \
             `dt` STRING, `hh` STRING) USING parquet PARTITIONED BY (`dt`, `hh`) LOCATION \
             'hdfs://nn:8020/conduit/streams_hourly/clicks';\n"
        );
        s.dialect = Dialect::Hive;
        assert!(s
            .create("streams_hourly/clicks")
            .contains(") PARTITIONED BY (`dt` STRING, `hh` STRING) STORED AS PARQUET LOCATION"));
        s.dialect = Dialect::Trino;
        assert!(s
            .create("streams_hourly/clicks")
            .contains("\"minute\" timestamp(3), \"n\" bigint, \"dt\" varchar, \"hh\" varchar) WITH (format = 'PARQUET'"));
    }

    fn minute() -> Minute {
        Minute::parse_flexible("2026-11-22T10:05").unwrap()
    }

    #[test]
    fn spark_statements() {
        let s = spec(Dialect::Spark, View::Merged);
        assert_eq!(
            s.create("streams/clicks"),
            "CREATE TABLE IF NOT EXISTS `clicks` (`value` STRING, `dt` STRING, `hh` STRING, \
             `mi` STRING) USING text PARTITIONED BY (`dt`, `hh`, `mi`) LOCATION \
             'hdfs://nn:8020/conduit/streams/clicks';\n"
        );
        assert_eq!(
            s.add_partition(minute(), "streams/clicks/2026/11/22/10/05"),
            "ALTER TABLE `clicks` ADD IF NOT EXISTS PARTITION (`dt`='2026-11-22', `hh`='10', \
             `mi`='05') LOCATION 'hdfs://nn:8020/conduit/streams/clicks/2026/11/22/10/05';\n"
        );
    }

    #[test]
    fn hive_hourly_statements() {
        let mut s = spec(Dialect::Hive, View::Hourly);
        s.database = Some("events".into());
        assert_eq!(
            s.create("streams_hourly/clicks"),
            "CREATE EXTERNAL TABLE IF NOT EXISTS `events`.`clicks` (`line` STRING) PARTITIONED \
             BY (`dt` STRING, `hh` STRING) STORED AS TEXTFILE LOCATION \
             'hdfs://nn:8020/conduit/streams_hourly/clicks';\n"
        );
        assert_eq!(
            s.add_partition(minute().hour_start(), "streams_hourly/clicks/2026/11/22/10"),
            "ALTER TABLE `events`.`clicks` ADD IF NOT EXISTS PARTITION (`dt`='2026-11-22', \
             `hh`='10') LOCATION 'hdfs://nn:8020/conduit/streams_hourly/clicks/2026/11/22/10';\n"
        );
    }

    #[test]
    fn trino_statements() {
        let s = spec(Dialect::Trino, View::Local);
        assert_eq!(
            s.create("streams_local/clicks"),
            "CREATE TABLE IF NOT EXISTS \"hive\".\"default\".\"clicks\" (\"line\" varchar, \
             \"dt\" varchar, \"hh\" varchar, \"mi\" varchar) WITH (format = 'TEXTFILE', \
             external_location = 'hdfs://nn:8020/conduit/streams_local/clicks', partitioned_by \
             = ARRAY['dt', 'hh', 'mi']);\n"
        );
        assert_eq!(
            s.add_partition(minute(), "streams_local/clicks/2026/11/22/10/05"),
            "CALL \"hive\".system.register_partition('default', 'clicks', ARRAY['dt', 'hh', \
             'mi'], ARRAY['2026-11-22', '10', '05'], \
             'hdfs://nn:8020/conduit/streams_local/clicks/2026/11/22/10/05');\n"
        );
    }

    #[test]
    fn names_and_roots_that_cannot_be_quoted_are_refused() {
        assert!(sql_name("--table", "clicks_2").is_ok());
        let err = sql_name("--table", "a;drop").unwrap_err().to_string();
        assert!(err.contains("\"a;drop\""), "{err}");
        let err = root_url("hdfs://nn:8020/it's").unwrap_err().to_string();
        assert!(err.contains("'\\''"), "{err}");
        let dir = std::env::temp_dir();
        let url = root_url(dir.to_str().unwrap()).unwrap();
        assert!(url.starts_with("file:///"), "{url}");
        assert!(!url.ends_with('/'), "{url}");
    }
}
