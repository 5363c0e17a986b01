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
        let schema = portable_schema(schema);
        let columns = schema.fields().len().max(1);
        // Row groups are flushed by bytes: an eighth of the budget, between 1 MiB and 128 MiB. Pages
        // shrink with many columns so that every column's open page fits in the same share.
        let row_group_bytes = (pool.budget() / 8).clamp(1 << 20, 128 << 20) as usize;
        let page_bytes = (row_group_bytes / (4 * columns)).clamp(64 << 10, 1 << 20);
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

    fn error(&self, e: impl std::fmt::Display) -> Error {
        Error::Execution(format!("writing {}: {e}", self.pending.target.display()))
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
        let err = |e: parquet::errors::ParquetError| Error::Execution(format!("writing {}: {e}", target.display()));
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

const CSV_BUFFER_BYTES: usize = 1 << 20;

impl CsvSink {
    /// Opens a CSV sink at `target`.
    pub fn create(target: &Path, pool: &MemoryPool) -> Result<CsvSink> {
        let mut reservation = pool.register(format!("CsvSink[{}]", target.display()), false);
        reservation.try_grow(CSV_BUFFER_BYTES as u64)?;
        let (pending, file) = PendingFile::create(target)?;
        let writer =
            arrow::csv::WriterBuilder::new().with_header(true).build(BufWriter::with_capacity(CSV_BUFFER_BYTES, file));
        Ok(CsvSink { pending, writer, _reservation: reservation, rows: 0 })
    }
}

impl Sink for CsvSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| Error::Execution(format!("writing {}: {e}", self.pending.target.display())))?;
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
