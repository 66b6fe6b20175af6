//! Hourly Parquet files: the compact job's output for `compact_format = "parquet"`.
//!
//! # Format
//!
//! `streams_hourly/<topic>/yyyy/MM/dd/HH/<ftopic>-yyyy-MM-dd-HH.parquet`
//! ([`Layout::hourly_parquet_file_name`]), specified in `docs/format.md` §7.5: one
//! row per event, in the order of the minute manifests and their files, with the
//! columns
//!
//! | column | type | value |
//! |---|---|---|
//! | `payload` | UTF8 string (topics validated `utf8` or `json`, or with a schema), BINARY otherwise | the event, decoded from the topic's encoding |
//! | `minute` | TIMESTAMP(MILLIS, UTC) | the minute the event's file belongs to |
//! | `cluster` | string | the cluster whose collector received it |
//! | `collector` | string | that collector |
//! | one per schema property | string, int64, double or boolean | the property's value (null when absent, unless required) |
//!
//! Pages are zstd-compressed; row groups hold at most [`ROW_GROUP_ROWS`] rows.
//!
//! # Invalid rows
//!
//! An event the file cannot hold (a payload that is not UTF-8 where the column is
//! UTF8, or not a JSON object matching the topic's schema) is written instead, as an
//! `_invalid` record ([`InvalidRecord`], reason `schema_mismatch` or
//! `not_utf8`), to `_invalid.<ftopic>-yyyy-MM-dd-HH.zst` in the same directory
//! ([`Layout::hourly_invalid_file_name`]): a closed `lines` data file, hidden from
//! Hadoop-style readers by its `_`. The worker cannot append to the `_invalid`
//! topic itself (collectors own its files), so the hour keeps them. Each is
//! counted in `conduit_worker_invalid_rows_total{topic}` and logged
//! (rate-limited) with the topic, minute and reason. The Parquet file's key-value
//! metadata `conduit.invalid_rows` says how many there are.
//!
//! # Rules
//!
//! Memory is bounded: source files are read in chunks (the compact job's reader),
//! rows are encoded in batches of [`BATCH_ROWS`], and encoded bytes go to storage
//! as soon as a few MiB are ready; at most one row group is held by the encoder.
//! Both files are written under hidden temporary names, closed, read back (the
//! Parquet footer's row count plus the invalid file's record count must equal the
//! minute manifests' sum), and renamed without overwrite after a fence check,
//! the invalid file first, so a final Parquet file always has its invalid file
//! beside it. Sources are sealed and immutable, so redoing an hour gives the same
//! rows.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;

use conduit_core::format::{
    decode_frame, read_trailer, split_records, Codec, SealedReader, Trailer,
};
use conduit_core::layout::Layout;
use conduit_core::manifest::describe_file;
use conduit_core::records::{Base64Bytes, InvalidRecord};
use conduit_core::schema::{FieldType, FieldValue, TopicSchema};
use conduit_core::{
    CreateMode, Encoding, FileWriter, FrameEncoder, Manifest, Minute, NodeName, RenameMode,
    Storage, Topic, TopicSettings, Validation, View,
};

use crate::compact::{read_data_frames, HourSink};
use crate::copy::COPY_CHUNK;
use crate::metrics::Labels;
use crate::WorkerError;

/// Rows encoded per Arrow batch.
pub const BATCH_ROWS: usize = 8192;

/// Most rows in one row group (readers parallelise over row groups; the encoder
/// holds one whole).
pub const ROW_GROUP_ROWS: usize = 131_072;

/// zstd level of the pages (the collectors' frames use 1; the hourly file is
/// written once and read many times).
const ZSTD_LEVEL: i32 = 3;

/// Key of the Parquet key-value metadata entry counting the hour's invalid rows.
pub const INVALID_ROWS_KEY: &str = "conduit.invalid_rows";

/// The bytes of `_invalid` records gathered before one frame is made of them.
const INVALID_FRAME_BYTES: usize = 1 << 20;

/// Where one event came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The minute of its file.
    pub minute: Minute,
    /// The cluster whose collector received it.
    pub cluster: NodeName,
    /// That collector.
    pub collector: NodeName,
}

/// The `payload` column's builder.
#[derive(Debug)]
enum PayloadColumn {
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
}

/// One typed column's builder.
#[derive(Debug)]
enum TypedColumn {
    String(StringBuilder),
    Integer(Int64Builder),
    Number(Float64Builder),
    Boolean(BooleanBuilder),
}

impl TypedColumn {
    fn new(kind: FieldType) -> Self {
        match kind {
            FieldType::String => TypedColumn::String(StringBuilder::new()),
            FieldType::Integer => TypedColumn::Integer(Int64Builder::new()),
            FieldType::Number => TypedColumn::Number(Float64Builder::new()),
            FieldType::Boolean => TypedColumn::Boolean(BooleanBuilder::new()),
        }
    }

    fn data_type(kind: FieldType) -> DataType {
        match kind {
            FieldType::String => DataType::Utf8,
            FieldType::Integer => DataType::Int64,
            FieldType::Number => DataType::Float64,
            FieldType::Boolean => DataType::Boolean,
        }
    }

    fn append(&mut self, value: FieldValue) {
        match (self, value) {
            (TypedColumn::String(b), FieldValue::String(v)) => b.append_value(v),
            (TypedColumn::Integer(b), FieldValue::Integer(v)) => b.append_value(v),
            (TypedColumn::Number(b), FieldValue::Number(v)) => b.append_value(v),
            (TypedColumn::Boolean(b), FieldValue::Boolean(v)) => b.append_value(v),
            // `TopicSchema::row` yields each property's own type or null.
            (TypedColumn::String(b), _) => b.append_null(),
            (TypedColumn::Integer(b), _) => b.append_null(),
            (TypedColumn::Number(b), _) => b.append_null(),
            (TypedColumn::Boolean(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            TypedColumn::String(b) => Arc::new(b.finish()),
            TypedColumn::Integer(b) => Arc::new(b.finish()),
            TypedColumn::Number(b) => Arc::new(b.finish()),
            TypedColumn::Boolean(b) => Arc::new(b.finish()),
        }
    }
}

/// The Arrow schema of a topic's hourly Parquet file (see the [module docs](self)).
pub fn arrow_schema(settings: &TopicSettings) -> Schema {
    let payload = if payload_is_utf8(settings) {
        DataType::Utf8
    } else {
        DataType::Binary
    };
    let mut fields = vec![
        Field::new("payload", payload, false),
        Field::new(
            "minute",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("cluster", DataType::Utf8, false),
        Field::new("collector", DataType::Utf8, false),
    ];
    if let Some(schema) = &settings.schema {
        for (name, property) in &schema.properties {
            fields.push(Field::new(
                name,
                TypedColumn::data_type(property.kind),
                !schema.is_required(name),
            ));
        }
    }
    Schema::new(fields)
}

fn payload_is_utf8(settings: &TopicSettings) -> bool {
    settings.validate != Validation::None || settings.schema.is_some()
}

/// Encodes rows into one Parquet file, in memory only as far as one row group.
pub struct HourlyRows {
    schema: SchemaRef,
    typed: Option<TopicSchema>,
    payload: PayloadColumn,
    minute: TimestampMillisecondBuilder,
    cluster: StringBuilder,
    collector: StringBuilder,
    columns: Vec<TypedColumn>,
    buffered: usize,
    rows: u64,
    writer: ArrowWriter<Vec<u8>>,
}

impl std::fmt::Debug for HourlyRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HourlyRows")
            .field("schema", &self.schema)
            .field("rows", &self.rows)
            .finish()
    }
}

impl HourlyRows {
    /// A file for a topic with `settings`.
    pub fn new(settings: &TopicSettings) -> Result<Self, parquet::errors::ParquetError> {
        let schema = Arc::new(arrow_schema(settings));
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("conduit {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?;
        let columns = settings
            .schema
            .iter()
            .flat_map(|s| s.properties.values())
            .map(|p| TypedColumn::new(p.kind))
            .collect();
        Ok(HourlyRows {
            schema,
            typed: settings.schema.clone(),
            payload: if payload_is_utf8(settings) {
                PayloadColumn::Utf8(StringBuilder::new())
            } else {
                PayloadColumn::Binary(BinaryBuilder::new())
            },
            minute: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            cluster: StringBuilder::new(),
            collector: StringBuilder::new(),
            columns,
            buffered: 0,
            rows: 0,
            writer,
        })
    }

    /// Adds one event: `Ok(Err(reason))` when it does not belong in the file (the
    /// caller sets it aside), `Err` when encoding failed.
    pub fn push(
        &mut self,
        payload: &[u8],
        origin: &Origin,
    ) -> Result<Result<(), String>, parquet::errors::ParquetError> {
        let values = match &self.typed {
            Some(schema) => match schema.row(payload) {
                Ok(values) => values,
                Err(reason) => return Ok(Err(reason)),
            },
            None => Vec::new(),
        };
        match &mut self.payload {
            PayloadColumn::Utf8(b) => match std::str::from_utf8(payload) {
                Ok(text) => b.append_value(text),
                Err(e) => return Ok(Err(format!("not valid utf-8: {e}"))),
            },
            PayloadColumn::Binary(b) => b.append_value(payload),
        }
        for (column, value) in self.columns.iter_mut().zip(values) {
            column.append(value);
        }
        self.minute
            .append_value(origin.minute.start().timestamp_millis());
        self.cluster.append_value(origin.cluster.as_str());
        self.collector.append_value(origin.collector.as_str());
        self.buffered += 1;
        self.rows += 1;
        if self.buffered >= BATCH_ROWS {
            self.write_batch()?;
        }
        Ok(Ok(()))
    }

    fn write_batch(&mut self) -> Result<(), parquet::errors::ParquetError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let mut arrays: Vec<ArrayRef> = vec![
            match &mut self.payload {
                PayloadColumn::Utf8(b) => Arc::new(b.finish()),
                PayloadColumn::Binary(b) => Arc::new(b.finish()),
            },
            Arc::new(self.minute.finish()),
            Arc::new(self.cluster.finish()),
            Arc::new(self.collector.finish()),
        ];
        arrays.extend(self.columns.iter_mut().map(TypedColumn::finish));
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.buffered = 0;
        self.writer.write(&batch)
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Encoded bytes ready for storage, once there are at least `at_least`.
    pub fn ready(&mut self, at_least: usize) -> Option<Bytes> {
        let out = self.writer.inner_mut();
        (out.len() >= at_least.max(1)).then(|| Bytes::from(std::mem::take(out)))
    }

    /// Ends the file, noting `invalid_rows` in its metadata; returns its last bytes.
    pub fn finish(mut self, invalid_rows: u64) -> Result<Bytes, parquet::errors::ParquetError> {
        self.write_batch()?;
        self.writer.append_key_value_metadata(KeyValue::new(
            INVALID_ROWS_KEY.to_owned(),
            invalid_rows.to_string(),
        ));
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

/// The rows an hour's Parquet file could not hold, as a `lines` data file of
/// `_invalid` records.
#[derive(Debug)]
struct InvalidRows {
    encoder: FrameEncoder,
    records: Vec<u8>,
    count: u64,
    record_bytes: u64,
}

impl InvalidRows {
    fn new() -> Result<Self, WorkerError> {
        Ok(InvalidRows {
            encoder: FrameEncoder::new(1).map_err(|e| WorkerError::Other(e.to_string()))?,
            records: Vec::new(),
            count: 0,
            record_bytes: 0,
        })
    }

    fn push(&mut self, record: &InvalidRecord) {
        let line = record.to_line();
        self.record_bytes += line.len() as u64;
        self.count += 1;
        self.records.extend_from_slice(&line);
    }

    /// A data frame of the records gathered, once there are at least `at_least` bytes.
    fn ready(&mut self, at_least: usize) -> Result<Option<Bytes>, WorkerError> {
        if self.records.is_empty() || self.records.len() < at_least {
            return Ok(None);
        }
        let frame = self
            .encoder
            .frame(&self.records)
            .map_err(|e| WorkerError::Other(e.to_string()))?;
        self.records.clear();
        Ok(Some(frame))
    }

    fn trailer(&self) -> Trailer {
        Trailer {
            encoding: Encoding::Lines,
            records: self.count,
            record_bytes: self.record_bytes,
        }
    }
}

/// The Parquet side of one hour: rows to the Parquet file, rejected events to the
/// invalid file, each written to storage as it fills.
struct ParquetSink<'a> {
    rows: HourlyRows,
    out: Box<dyn FileWriter>,
    invalid: InvalidRows,
    invalid_out: Option<Box<dyn FileWriter>>,
    invalid_tmp: &'a str,
    storage: &'a dyn Storage,
    topic: &'a Topic,
    /// The file being read: its origin and encoding.
    origin: Option<(Origin, Encoding)>,
    counter: &'a conduit_core::http::prometheus_client::metrics::counter::Counter,
}

impl ParquetSink<'_> {
    async fn set_aside(&mut self, payload: &[u8], reason: String) -> Result<(), WorkerError> {
        let Some((origin, _)) = &self.origin else {
            return Err(WorkerError::Other("a row without a source file".into()));
        };
        self.counter.inc();
        let code = if reason.starts_with("not valid utf-8") {
            "not_utf8"
        } else {
            "schema_mismatch"
        };
        if let Some(suppressed) = conduit_core::ratelimit::allow("compact:invalid_row") {
            tracing::warn!(
                topic = %self.topic,
                minute = %origin.minute,
                reason = %reason,
                suppressed,
                "row set aside from the hourly parquet file (conduit_worker_invalid_rows_total counts every one)"
            );
        }
        let arrived_at: DateTime<Utc> = origin.minute.start();
        self.invalid.push(&InvalidRecord {
            arrived_at,
            cluster: origin.cluster.clone(),
            collector: origin.collector.clone(),
            detail: reason,
            payload_base64: Base64Bytes(Bytes::copy_from_slice(payload)),
            reason: code.to_owned(),
            topic: self.topic.to_string(),
        });
        if let Some(frame) = self.invalid.ready(INVALID_FRAME_BYTES)? {
            self.write_invalid(frame).await?;
        }
        Ok(())
    }

    async fn write_invalid(&mut self, frame: Bytes) -> Result<(), WorkerError> {
        if self.invalid_out.is_none() {
            self.invalid_out = Some(
                self.storage
                    .create(self.invalid_tmp, CreateMode::Overwrite)
                    .await?,
            );
        }
        if let Some(out) = self.invalid_out.as_mut() {
            out.write(frame).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl HourSink for ParquetSink<'_> {
    async fn data_frame(&mut self, frame: &[u8]) -> Result<(), WorkerError> {
        let Some((origin, encoding)) = self.origin.clone() else {
            return Err(WorkerError::Other(
                "a data frame without a source file".into(),
            ));
        };
        let content = decode_frame(frame).map_err(|e| {
            WorkerError::Other(format!(
                "a data frame of {} does not decode: {e}",
                origin.minute
            ))
        })?;
        self.records(&content, origin, encoding).await
    }
}

impl ParquetSink<'_> {
    /// Takes the records' bytes of one data unit (a decoded zstd frame or gzip
    /// member) of a source file of `origin`, stored in `encoding`.
    async fn records(
        &mut self,
        content: &[u8],
        origin: Origin,
        encoding: Encoding,
    ) -> Result<(), WorkerError> {
        for record in split_records(content) {
            let payload = match encoding.decode(record) {
                Ok(p) => p,
                Err(e) => {
                    self.set_aside(record, e.to_string()).await?;
                    continue;
                }
            };
            match self.rows.push(&payload, &origin).map_err(parquet_error)? {
                Ok(()) => {}
                Err(reason) => self.set_aside(&payload, reason).await?,
            }
        }
        if let Some(bytes) = self.rows.ready(COPY_CHUNK as usize) {
            self.out.write(bytes).await?;
        }
        Ok(())
    }
}

fn parquet_error(e: parquet::errors::ParquetError) -> WorkerError {
    WorkerError::Other(format!("parquet: {e}"))
}

/// Where the rows of `file` (listed in a manifest of `dir_minute`) came from: the
/// manifest's cluster and collector, or the local file name's.
fn origin_of(file: &conduit_core::ManifestFile) -> Origin {
    let collector = file.collector.clone().unwrap_or_else(|| {
        Layout::parse_local_file_name(&conduit_core::format::gzip::zst_name(&file.name))
            .map(|n| n.collector)
            .unwrap_or_else(|_| file.cluster.clone())
    });
    Origin {
        minute: file.minute,
        cluster: file.cluster.clone(),
        collector,
    }
}

/// Reads the footer of the Parquet file at `path` (`len` bytes).
pub async fn read_footer(
    storage: &dyn Storage,
    path: &str,
    len: u64,
) -> Result<ParquetMetaData, WorkerError> {
    let bad =
        |reason: String| WorkerError::Other(format!("{path} is not a parquet file: {reason}"));
    if len < 12 {
        return Err(bad(format!("{len} bytes")));
    }
    let tail = storage.read_range(path, len - 8..len).await?;
    let meta_len = footer_len(&tail, len).map_err(bad)?;
    let meta = storage
        .read_range(path, len - 8 - meta_len..len - 8)
        .await?;
    ParquetMetaDataReader::decode_metadata(&meta).map_err(|e| bad(e.to_string()))
}

/// Decodes the footer of a whole Parquet file held in memory.
pub fn footer_of_bytes(file: &[u8]) -> Result<ParquetMetaData, String> {
    let len = file.len() as u64;
    if len < 12 {
        return Err(format!("{len} bytes"));
    }
    let meta_len = footer_len(&file[file.len() - 8..], len)? as usize;
    let end = file.len() - 8;
    ParquetMetaDataReader::decode_metadata(&file[end - meta_len..end]).map_err(|e| e.to_string())
}

/// The footer length its last 8 bytes (`tail`) give, in a file of `len` bytes.
fn footer_len(tail: &[u8], len: u64) -> Result<u64, String> {
    if tail.len() != 8 || &tail[4..] != b"PAR1" {
        return Err("no PAR1 magic at its end".to_owned());
    }
    let meta_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if meta_len + 12 > len {
        return Err(format!("a footer of {meta_len} bytes in a file of {len}"));
    }
    Ok(meta_len)
}

/// The SQL type of a column of an hourly Parquet file (for `conduit table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// UTF-8 string.
    String,
    /// Bytes.
    Binary,
    /// Timestamp (milliseconds, UTC).
    Timestamp,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Double,
    /// Boolean.
    Boolean,
}

/// The columns of an hourly Parquet file of `schema` ([`arrow_schema`], or the
/// schema a file's footer gives, [`arrow_schema_of`]), with their SQL kinds.
pub fn columns_of(schema: &Schema) -> Result<Vec<(String, ColumnKind)>, String> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let kind = match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnKind::String,
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                    ColumnKind::Binary
                }
                DataType::Timestamp(_, _) => ColumnKind::Timestamp,
                DataType::Int64 => ColumnKind::Int64,
                DataType::Float64 => ColumnKind::Double,
                DataType::Boolean => ColumnKind::Boolean,
                other => return Err(format!("column {} has type {other}", f.name())),
            };
            Ok((f.name().clone(), kind))
        })
        .collect()
}

/// The Arrow schema a Parquet file's footer describes.
pub fn arrow_schema_of(meta: &ParquetMetaData) -> Result<Schema, String> {
    let file = meta.file_metadata();
    parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
        .map_err(|e| e.to_string())
}

/// Rows of an hourly Parquet file and the invalid rows its metadata notes.
pub fn counts(meta: &ParquetMetaData) -> (u64, u64) {
    let rows = meta.file_metadata().num_rows().max(0) as u64;
    let invalid = meta
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == INVALID_ROWS_KEY))
        .and_then(|k| k.value.as_deref())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (rows, invalid)
}

/// Writes the Parquet file (and the invalid file, if any row was set aside) of
/// `hour` from its minute manifests `minutes` of `view`, unless the final file
/// already exists; checks either against the manifests' record count. Returns the
/// file name and its rows.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_hour(
    storage: &dyn Storage,
    fence: &dyn crate::Fence,
    settings: &TopicSettings,
    view: View,
    hour: Minute,
    minutes: &[Manifest],
    invalid_rows: &conduit_core::http::prometheus_client::metrics::family::Family<
        Labels,
        conduit_core::http::prometheus_client::metrics::counter::Counter,
    >,
) -> Result<(String, u64), WorkerError> {
    let topic = &settings.topic;
    let dir = Layout::hour_dir(topic, hour);
    let name = Layout::hourly_parquet_file_name(topic, hour);
    let path = format!("{dir}/{name}");
    let invalid_path = format!("{dir}/{}", Layout::hourly_invalid_file_name(topic, hour));
    let records: u64 = minutes.iter().map(|m| m.records).sum();
    // A handle of its own: the family's guard must not be held across awaits.
    let counter = invalid_rows
        .get_or_create(&vec![("topic", topic.to_string())])
        .clone();
    if !storage.exists(&path).await? {
        let tmp = Layout::tmp_path(&path);
        let invalid_tmp = Layout::tmp_path(&invalid_path);
        let mut sink = ParquetSink {
            rows: HourlyRows::new(settings).map_err(parquet_error)?,
            out: storage.create(&tmp, CreateMode::Overwrite).await?,
            invalid: InvalidRows::new()?,
            invalid_out: None,
            invalid_tmp: &invalid_tmp,
            storage,
            topic,
            origin: None,
            counter: &counter,
        };
        for manifest in minutes {
            let minute_dir = Layout::minute_dir(view, topic, manifest.minute);
            for file in &manifest.files {
                let source = format!("{minute_dir}/{}", file.name);
                if Codec::of_file(&file.name) == Codec::Gzip {
                    // A gzip topic's merged minute (`docs/format.md` §3.7): no
                    // trailer, so the encoding is the topic's.
                    let mut reader = SealedReader::new(storage, &source, file.bytes);
                    while let Some((_, content)) = reader
                        .next()
                        .await
                        .map_err(|e| WorkerError::Other(format!("{source}: {e}")))?
                    {
                        sink.records(&content, origin_of(file), settings.encoding)
                            .await?;
                    }
                    continue;
                }
                let encoding = read_trailer(storage, &source, file.bytes)
                    .await?
                    .ok_or_else(|| {
                        WorkerError::Other(format!("{source} does not end with a close trailer"))
                    })?
                    .encoding;
                sink.origin = Some((origin_of(file), encoding));
                read_data_frames(storage, &source, file.bytes, &mut sink).await?;
            }
        }
        let ParquetSink {
            rows,
            mut out,
            mut invalid,
            mut invalid_out,
            ..
        } = sink;
        let written = rows.rows();
        let invalid_count = invalid.count;
        if invalid_count > 0 {
            if let Some(frame) = invalid.ready(0)? {
                let w = match invalid_out.as_mut() {
                    Some(w) => w,
                    None => invalid_out
                        .insert(storage.create(&invalid_tmp, CreateMode::Overwrite).await?),
                };
                w.write(frame).await?;
            }
        }
        if let Some(mut w) = invalid_out {
            w.write(invalid.trailer().encode()).await?;
            w.close().await?;
        }
        out.write(rows.finish(invalid_count).map_err(parquet_error)?)
            .await?;
        out.close().await?;
        // Read back what storage holds.
        let meta = read_footer(storage, &tmp, storage.len(&tmp).await?).await?;
        let (rows_read, noted) = counts(&meta);
        let set_aside = if invalid_count > 0 {
            describe_file(storage, &invalid_tmp).await?.2.records
        } else {
            0
        };
        if rows_read != written || noted != invalid_count || rows_read + set_aside != records {
            return Err(WorkerError::Other(format!(
                "{path}: the parquet file holds {rows_read} rows and {set_aside} were set aside as invalid, \
                 the minute manifests {records} records"
            )));
        }
        fence.check().await?;
        if invalid_count > 0 {
            rename_new(storage, &invalid_tmp, &invalid_path).await?;
        }
        rename_new(storage, &tmp, &path).await?;
    }
    let meta = read_footer(storage, &path, storage.len(&path).await?).await?;
    let (rows, invalid) = counts(&meta);
    let set_aside = if invalid > 0 {
        describe_file(storage, &invalid_path).await?.2.records
    } else {
        0
    };
    if rows + set_aside != records || set_aside != invalid {
        return Err(WorkerError::Other(format!(
            "{path} holds {rows} rows and {set_aside} invalid rows (its metadata says {invalid}), \
             the minute manifests of its hour {records} records"
        )));
    }
    Ok((name, rows))
}

/// Renames `tmp` to `path` without overwrite; an existing `path` (an earlier run
/// got there first with the same rows) wins and `tmp` is deleted.
async fn rename_new(storage: &dyn Storage, tmp: &str, path: &str) -> Result<(), WorkerError> {
    match storage.rename(tmp, path, RenameMode::NoOverwrite).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_already_exists() => {
            storage.delete(tmp, false).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// Moves what the encoder has ready into `out`.
    fn collect(rows: &mut HourlyRows, out: &mut BytesMut) {
        if let Some(b) = rows.ready(1) {
            out.extend_from_slice(&b);
        }
    }
    use conduit_core::Config;

    fn settings(toml: &str) -> TopicSettings {
        let config = Config::parse("t", toml).unwrap();
        config.topic(&Topic::new("t").unwrap())
    }

    #[test]
    fn rows_become_a_parquet_file_with_typed_columns() {
        let s = settings(
            "[topics.t]\ncompact = true\ncompact_format = \"parquet\"\nvalidate = \"json\"\n\
             schema = { type = \"object\", required = [\"id\"], properties = { id = { type = \"integer\" }, tag = { type = \"string\" } } }\n",
        );
        let schema = arrow_schema(&s);
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["payload", "minute", "cluster", "collector", "id", "tag"]
        );
        let mut rows = HourlyRows::new(&s).unwrap();
        let origin = Origin {
            minute: Minute::parse_flexible("2026-12-03T10:07").unwrap(),
            cluster: NodeName::new("dc1").unwrap(),
            collector: NodeName::new("c1").unwrap(),
        };
        let mut out = BytesMut::new();
        let mut rejected = Vec::new();
        for i in 0..(BATCH_ROWS as u64 * 2 + 5) {
            let payload = if i % 100 == 0 {
                format!("{{\"tag\":\"no id {i}\"}}")
            } else {
                format!("{{\"id\":{i},\"tag\":\"t{i}\"}}")
            };
            if let Err(reason) = rows.push(payload.as_bytes(), &origin).unwrap() {
                rejected.push(reason);
            }
            collect(&mut rows, &mut out);
        }
        let written = rows.rows();
        out.extend_from_slice(&rows.finish(rejected.len() as u64).unwrap());
        let meta = footer_of_bytes(&out).unwrap();
        assert_eq!(counts(&meta), (written, rejected.len() as u64));
        assert_eq!(written + rejected.len() as u64, BATCH_ROWS as u64 * 2 + 5);
        assert!(rejected[0].contains("required property \"id\" is missing"));
    }

    #[test]
    fn payload_is_binary_without_validation() {
        let s = settings("[topics.t]\ncompact = true\ncompact_format = \"parquet\"\n");
        assert_eq!(arrow_schema(&s).field(0).data_type(), &DataType::Binary);
        let s = settings(
            "[topics.t]\ncompact = true\ncompact_format = \"parquet\"\nvalidate = \"utf8\"\n",
        );
        let mut rows = HourlyRows::new(&s).unwrap();
        let origin = Origin {
            minute: Minute::parse_flexible("2026-12-03T10:07").unwrap(),
            cluster: NodeName::new("dc1").unwrap(),
            collector: NodeName::new("c1").unwrap(),
        };
        assert!(rows.push(b"\xff\xfe", &origin).unwrap().is_err());
        assert!(rows.push(b"ok", &origin).unwrap().is_ok());
    }
}
