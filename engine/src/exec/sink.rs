//! Sinks: Parquet and CSV files, written under a temporary name beside the target and renamed into
//! place when complete, so a crash never leaves a half-written file at the output path.
//!
//! The Parquet writer buffers the row group it is building (encoded, compressed pages). That buffer
//! is reserved from the pool as it grows and the row group is flushed when it reaches the row-group
//! byte target, or earlier when the pool cannot give more.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::error::{Error, Result};
use crate::memory::{MemoryPool, MemoryReservation};

/// The file formats a query result can be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Apache Parquet (zstd, statistics on).
    Parquet,
    /// Comma-separated text with a header line.
    Csv,
}

impl OutputFormat {
    /// The format a path's extension implies (Parquet unless it ends in `.csv`).
    pub fn from_path(path: &Path) -> OutputFormat {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()) {
            Some(e) if e == "csv" || e == "tsv" => OutputFormat::Csv,
            _ => OutputFormat::Parquet,
        }
    }
}

/// What a sink wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WriteSummary {
    /// The file written.
    pub path: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// Bytes of the finished file.
    pub bytes: u64,
    /// Row groups (Parquet only).
    pub row_groups: usize,
}

/// A temporary file beside the target; removed on drop unless committed.
struct PendingFile {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl PendingFile {
    fn create(target: &Path) -> Result<(PendingFile, File)> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        if target.is_dir() {
            return Err(Error::io(target, std::io::Error::other("is a directory")));
        }
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = parent.join(format!(".{name}.flow-tmp-{}-{n}", std::process::id()));
        let file = File::create(&temp).map_err(|e| Error::io(target, e))?;
        Ok((PendingFile { temp, target: target.to_path_buf(), committed: false }, file))
    }

    /// Makes the file durable and moves it into place.
    fn commit(mut self, file: &File) -> Result<u64> {
        file.sync_all().map_err(|e| Error::io(&self.temp, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(&self.temp, e))?.len();
        std::fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        self.committed = true;
        Ok(bytes)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Output types every Parquet reader understands: plain strings and binaries, no views.
pub fn portable_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
                other => other.clone(),
            };
            Field::new(f.name(), t, f.is_nullable())
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(
            |(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    arrow::compute::cast(c, f.data_type())
                }
            },
        )
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A writer's error: failed writes (a full disk) are I/O errors on the target, the rest are
/// execution errors.
fn writer_error(target: &Path, e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
            Ok(io) => Error::io(target, *io),
            Err(other) => Error::Execution(format!("writing {}: {other}", target.display())),
        },
        other => Error::Execution(format!("writing {}: {other}", target.display())),
    }
}

/// Writes batches to one file.
pub trait Sink {
    /// Appends a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Completes the file and moves it into place.
    fn finish(self: Box<Self>) -> Result<WriteSummary>;
}

/// A Parquet file sink.
pub struct ParquetSink {
    pending: PendingFile,
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    reservation: MemoryReservation,
    row_group_bytes: usize,
    rows: u64,
}

impl ParquetSink {
    /// Opens a sink for batches of `schema` at `target`, sizing its buffers from `pool`'s budget.
    pub fn create(target: &Path, schema: &Schema, pool: &MemoryPool) -> Result<ParquetSink> {
        // Row groups are flushed by bytes: an eighth of the budget, between 256 KiB and 128 MiB.
        let row_group_bytes = (pool.budget() / 8).clamp(256 << 10, 128 << 20) as usize;
        Self::with_row_group_bytes(target, schema, pool, row_group_bytes)
    }

    /// Opens a sink that flushes a row group once it holds `row_group_bytes` of encoded data.
    pub fn with_row_group_bytes(
        target: &Path,
        schema: &Schema,
        pool: &MemoryPool,
        row_group_bytes: usize,
    ) -> Result<ParquetSink> {
        let schema = portable_schema(schema);
        let columns = schema.fields().len().max(1);
        // Pages shrink with many columns so that every column's open page fits in the same share
        // (down to 64 KiB; 16 KiB for the small row groups of partitioned writers).
        let smallest_page = if row_group_bytes >= 1 << 20 { 64 << 10 } else { 16 << 10 };
        let page_bytes = (row_group_bytes / (4 * columns)).clamp(smallest_page, 1 << 20);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid zstd level")))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_data_page_size_limit(page_bytes)
            .set_dictionary_page_size_limit(page_bytes)
            .set_max_row_group_row_count(Some(1 << 20))
            .build();
        let (pending, file) = PendingFile::create(target)?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::Execution(format!("writing {}: {e}", target.display())))?;
        // Reserve the working size up front (open pages, one row group of encoded data), so that a
        // scan filling the pool cannot starve the writer half-way.
        let mut reservation = pool.register(format!("ParquetSink[{}]", target.display()), false);
        reservation.try_grow((columns * page_bytes * 2 + row_group_bytes) as u64)?;
        Ok(ParquetSink { pending, writer, schema, reservation, row_group_bytes, rows: 0 })
    }

    fn error(&self, e: parquet::errors::ParquetError) -> Error {
        writer_error(&self.pending.target, e)
    }
}

impl Sink for ParquetSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let batch = conform(batch, &self.schema)?;
        // The writer copies the batch into encoded pages: reserve that growth first (an upper
        // bound: the uncompressed size of the batch), flushing the row group early when the pool
        // is short.
        let incoming = batch.get_array_memory_size() as u64;
        let before = self.reservation.size();
        if self.reservation.try_grow(incoming).is_err() {
            self.writer.flush().map_err(|e| self.error(e))?;
            self.reservation
                .try_resize(((self.writer.memory_size() + self.writer.in_progress_size()) as u64).max(before))?;
            self.reservation.try_grow(incoming)?;
        }
        self.writer.write(&batch).map_err(|e| self.error(e))?;
        self.rows += batch.num_rows() as u64;
        if self.writer.in_progress_size() >= self.row_group_bytes {
            self.writer.flush().map_err(|e| self.error(e))?;
        }
        // Hold what the writer really holds now, but never less than the page buffers it will
        // fill again. Its own estimate leaves out encoder scratch space, so count the encoded row
        // group on top of it.
        let held = ((self.writer.memory_size() + self.writer.in_progress_size()) as u64).max(before);
        self.reservation.try_resize(held)?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<WriteSummary> {
        let mut this = *self;
        let target = this.pending.target.clone();
        let err = |e: parquet::errors::ParquetError| writer_error(&target, e);
        this.writer.flush().map_err(err)?;
        let row_groups = this.writer.flushed_row_groups().len();
        let file = this.writer.into_inner().map_err(err)?;
        let bytes = this.pending.commit(&file)?;
        drop(this.reservation);
        Ok(WriteSummary { path: target, rows: this.rows, bytes, row_groups })
    }
}

/// A CSV file sink (header line, `,` separated, RFC 4180 quoting).
pub struct CsvSink {
    pending: PendingFile,
    writer: arrow::csv::Writer<BufWriter<File>>,
    _reservation: MemoryReservation,
    rows: u64,
}

impl CsvSink {
    /// Opens a CSV sink at `target`, with a write buffer of a sixteenth of the budget (64 KiB to
    /// 1 MiB).
    pub fn create(target: &Path, pool: &MemoryPool) -> Result<CsvSink> {
        let buffer = (pool.budget() / 16).clamp(64 << 10, 1 << 20) as usize;
        let mut reservation = pool.register(format!("CsvSink[{}]", target.display()), false);
        reservation.try_grow(buffer as u64)?;
        let (pending, file) = PendingFile::create(target)?;
        let writer = arrow::csv::WriterBuilder::new().with_header(true).build(BufWriter::with_capacity(buffer, file));
        Ok(CsvSink { pending, writer, _reservation: reservation, rows: 0 })
    }
}

impl Sink for CsvSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(|e| match e {
            arrow::error::ArrowError::IoError(_, io) => Error::io(&self.pending.target, io),
            other => Error::Execution(format!("writing {}: {other}", self.pending.target.display())),
        })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<WriteSummary> {
        let this = *self;
        let target = this.pending.target.clone();
        let mut buffered = this.writer.into_inner();
        buffered.flush().map_err(|e| Error::io(&target, e))?;
        let file = buffered.into_inner().map_err(|e| Error::io(&target, e.into_error()))?;
        let bytes = this.pending.commit(&file)?;
        Ok(WriteSummary { path: target, rows: this.rows, bytes, row_groups: 0 })
    }
}

/// Where and how a [`PartitionedWriter`] writes.
#[derive(Debug, Clone)]
pub struct PartitionedOutput {
    /// The folder the files (and partition folders) go in.
    pub dir: PathBuf,
    /// Columns whose values make the folders, hive style: `dir/a=1/b=x/<name>`. Their values are in
    /// the path and left out of the files, as DuckDB, Spark and pyarrow expect.
    pub partition_by: Vec<String>,
    /// File format.
    pub format: OutputFormat,
    /// File name without extension; a partition that needs a second file gets `<stem>.1`, ...
    pub stem: String,
    /// Appended to every file name (after the extension), e.g. `.staged` for files not yet
    /// committed, so that `*.parquet` globs do not see them.
    pub suffix: String,
    /// Without `partition_by`, write a file (with the schema and no rows) for an empty result.
    pub keep_empty: bool,
}

/// The folder name hive layouts use for a null partition value.
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// One `column=value` folder name, with the value escaped as Hive and Spark do (`/`, `=`, `%`, `:`,
/// control characters and the like as `%XX`); a null value is [`HIVE_NULL`].
pub fn hive_segment(column: &str, value: Option<&str>) -> String {
    let Some(value) = value else {
        return format!("{column}={HIVE_NULL}");
    };
    let mut out = format!("{column}=");
    for c in value.chars() {
        // Hive's list (FileUtils.escapePathName).
        let escape = c.is_ascii_control() || "\"#%'*/:=?\\{[]^".contains(c);
        if escape {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

struct OpenPart {
    sink: Box<dyn Sink>,
    written: u64,
}

/// Writes a query result as one file, or as one file per partition in a hive layout. Partitions
/// are written as rows arrive, with a small writer each; when the pool cannot open another, the
/// partition holding the most is finished and its next rows go to a new file.
pub struct PartitionedWriter {
    out: PartitionedOutput,
    pool: MemoryPool,
    key_columns: Vec<usize>,
    data_columns: Vec<usize>,
    data_schema: SchemaRef,
    open: std::collections::HashMap<String, OpenPart>,
    files_per_partition: std::collections::HashMap<String, usize>,
    done: Vec<WriteSummary>,
    scratch: MemoryReservation,
    row_group_bytes: usize,
}

impl PartitionedWriter {
    /// A writer for batches of `schema`; fails when a partition column is not in it.
    pub fn new(out: PartitionedOutput, schema: &Schema, pool: &MemoryPool) -> Result<PartitionedWriter> {
        let mut key_columns = Vec::new();
        for name in &out.partition_by {
            let i = schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Error::Plan(format!(
                    "partition_by column '{name}' is not in the result (columns: {})",
                    names.join(", ")
                ))
            })?;
            if key_columns.contains(&i) {
                return Err(Error::Plan(format!("partition_by names '{name}' twice")));
            }
            key_columns.push(i);
        }
        let data_columns: Vec<usize> = (0..schema.fields().len()).filter(|i| !key_columns.contains(i)).collect();
        if data_columns.is_empty() {
            return Err(Error::Plan("partition_by takes every column: the files would have none".into()));
        }
        let data_schema =
            Arc::new(Schema::new(data_columns.iter().map(|&i| schema.field(i).clone()).collect::<Vec<_>>()));
        // Many partitions may be open at once: small row groups each.
        let row_group_bytes = if key_columns.is_empty() {
            (pool.budget() / 8).clamp(1 << 20, 128 << 20) as usize
        } else {
            (pool.budget() / 64).clamp(256 << 10, 16 << 20) as usize
        };
        let scratch = pool.register(format!("PartitionedWriter[{}]", out.dir.display()), false);
        Ok(PartitionedWriter {
            out,
            pool: pool.clone(),
            key_columns,
            data_columns,
            data_schema,
            open: Default::default(),
            files_per_partition: Default::default(),
            done: Vec::new(),
            scratch,
            row_group_bytes,
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.key_columns.is_empty() {
            let batch = batch.project(&self.data_columns)?;
            return self.write_part(String::new(), &batch);
        }
        // The split copies the batch once: reserve that while the pieces exist.
        let bytes = batch.get_array_memory_size() as u64;
        self.scratch.try_grow(bytes)?;
        let result = self.split_and_write(batch);
        self.scratch.shrink(bytes);
        result
    }

    fn split_and_write(&mut self, batch: &RecordBatch) -> Result<()> {
        let keys = self
            .key_columns
            .iter()
            .map(|&i| arrow::compute::cast(batch.column(i), &DataType::Utf8))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let keys: Vec<&arrow::array::StringArray> =
            keys.iter().map(|k| arrow::array::AsArray::as_string::<i32>(k.as_ref())).collect();
        // Rows grouped by their key values (borrowed: nothing is allocated for a row whose
        // partition was seen before); the folder path is built once per partition.
        let mut group_of: std::collections::HashMap<Vec<Option<&str>>, usize> = Default::default();
        let mut groups: Vec<(Vec<Option<&str>>, Vec<u32>)> = Vec::new();
        let mut values: Vec<Option<&str>> = Vec::with_capacity(keys.len());
        for row in 0..batch.num_rows() {
            values.clear();
            values.extend(keys.iter().map(|k| (!arrow::array::Array::is_null(*k, row)).then(|| k.value(row))));
            match group_of.get(values.as_slice()) {
                Some(&g) => groups[g].1.push(row as u32),
                None => {
                    group_of.insert(values.clone(), groups.len());
                    groups.push((values.clone(), vec![row as u32]));
                }
            }
        }
        let order: Vec<(String, Vec<u32>)> = groups
            .into_iter()
            .map(|(values, rows)| {
                let segments: Vec<String> =
                    self.out.partition_by.iter().zip(values).map(|(name, v)| hive_segment(name, v)).collect();
                (segments.join("/"), rows)
            })
            .collect();
        let data = batch.project(&self.data_columns)?;
        for (path, rows) in order {
            let indices = arrow::array::UInt32Array::from(rows);
            let part = arrow::compute::take_record_batch(&data, &indices)?;
            self.write_part(path, &part)?;
        }
        Ok(())
    }

    fn write_part(&mut self, partition: String, batch: &RecordBatch) -> Result<()> {
        if !self.open.contains_key(&partition) {
            let sink = loop {
                match self.open_sink(&partition) {
                    Ok(sink) => break sink,
                    Err(Error::ResourcesExhausted { .. }) if !self.open.is_empty() => self.close_largest()?,
                    Err(e) => return Err(e),
                }
            };
            self.open.insert(partition.clone(), OpenPart { sink, written: 0 });
        }
        let part = self.open.get_mut(&partition).expect("opened above");
        part.written += batch.get_array_memory_size() as u64;
        part.sink.write(batch)
    }

    fn open_sink(&mut self, partition: &str) -> Result<Box<dyn Sink>> {
        let n = self.files_per_partition.get(partition).copied().unwrap_or(0);
        let ext = match self.out.format {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Csv => "csv",
        };
        let name = match n {
            0 => format!("{}.{ext}{}", self.out.stem, self.out.suffix),
            n => format!("{}.{n}.{ext}{}", self.out.stem, self.out.suffix),
        };
        let target =
            if partition.is_empty() { self.out.dir.join(name) } else { self.out.dir.join(partition).join(name) };
        let sink: Box<dyn Sink> = match self.out.format {
            OutputFormat::Parquet => Box::new(ParquetSink::with_row_group_bytes(
                &target,
                &self.data_schema,
                &self.pool,
                self.row_group_bytes,
            )?),
            OutputFormat::Csv => Box::new(CsvSink::create(&target, &self.pool)?),
        };
        self.files_per_partition.insert(partition.to_string(), n + 1);
        Ok(sink)
    }

    fn close_largest(&mut self) -> Result<()> {
        let largest = self.open.iter().max_by_key(|(_, p)| p.written).map(|(k, _)| k.clone());
        if let Some(part) = largest.and_then(|k| self.open.remove(&k)) {
            self.done.push(part.sink.finish()?);
        }
        Ok(())
    }

    /// Completes every file: one per partition that got rows; without `partition_by`, one file,
    /// also for an empty result when `keep_empty` is set.
    pub fn finish(mut self) -> Result<Vec<WriteSummary>> {
        if self.key_columns.is_empty() && self.open.is_empty() && self.done.is_empty() && self.out.keep_empty {
            let empty = RecordBatch::new_empty(self.data_schema.clone());
            self.write_part(String::new(), &empty)?;
        }
        let mut parts: Vec<(String, OpenPart)> = self.open.drain().collect();
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, part) in parts {
            self.done.push(part.sink.finish()?);
        }
        self.done.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(self.done)
    }
}
