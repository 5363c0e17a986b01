//! Hive-partitioned outputs: one folder per partition value.
//!
//! A query written with `partition_by` runs sorted by the partition columns (an external sort,
//! in the budget like any other: see `Query::write_partitioned`), so that each partition's rows
//! come together: one file is open at a time, each partition is one file with full row groups,
//! and the number of partitions costs no memory. Writing every partition as its rows come, with
//! a writer open per partition, took the pool as soon as partitions were many (2,526 dates of
//! TPC-H's lineitem failed at 512 MiB after writing 338,000 files of a few rows each).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};

use super::parquet_file::slices;
use super::{Destination, OutputFormat, ParquetSink, Sink, TextSink, WriteOptions, WriteSummary};
use crate::error::{Error, Result};
use crate::exec::sliced_bytes;
use crate::memory::{MemoryPool, MemoryReservation};

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
    /// (with `numbered`: `<stem>_0`, `<stem>_1`, ...).
    pub stem: String,
    /// Number every file from 0.
    pub numbered: bool,
    /// Appended to every file name (after the extension), e.g. `.staged` for files not yet
    /// committed, so that `*.parquet` globs do not see them.
    pub suffix: String,
    /// Without `partition_by`, write a file (with the schema and no rows) for an empty result.
    pub keep_empty: bool,
    /// Compression, row groups and the file size at which a file is closed and the next begun.
    pub options: WriteOptions,
    /// `dir` is a staging folder, the writer's alone, moved into place whole only after
    /// [`PartitionedWriter::finish`]: files are created at their names (no temporary name, lock,
    /// rename and folder sync each) and made durable together when the writer finishes. An fsync
    /// of each file and each folder made 2,526 partitions take 4-6 s on ext4 instead of 2.
    pub staged: bool,
}

struct OpenPart {
    sink: Box<dyn Sink + Send>,
    written: u64,
}

/// Writes a query result as one file, or as one file per partition in a hive layout.
///
/// Rows in partition order ([`PartitionedWriter::in_key_order`]) keep one file open: a partition
/// is complete when the next begins. Otherwise partitions are written as rows arrive, with a
/// writer each; when the pool cannot open another, the partition holding the most is finished
/// and its next rows go to a new file.
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
    /// Rows come in partition order: a partition is complete when another one's rows come.
    key_order: bool,
    /// In key order, what the first file's writer takes, held from before the query starts
    /// (the query then runs in what is left, as beside a single file's writer) until it opens.
    standby: MemoryReservation,
    /// What the summaries of finished files and the count of files per partition hold (held
    /// already when counted, so counted even past the budget).
    bookkeeping: MemoryReservation,
}

/// Bytes a file's summary, or a partition's count of files, takes beside its path or name.
const BOOKKEEPING: usize = 64;

/// The positions in `schema` of the `partition_by` columns (named case-insensitively).
pub fn partition_columns(partition_by: &[String], schema: &Schema) -> Result<Vec<usize>> {
    let mut key_columns = Vec::new();
    for name in partition_by {
        let i = schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::Plan(format!("partition_by column '{name}' is not in the result (columns: {})", names.join(", ")))
        })?;
        if key_columns.contains(&i) {
            return Err(Error::Plan(format!("partition_by names '{name}' twice")));
        }
        key_columns.push(i);
    }
    Ok(key_columns)
}

/// Partition values as folder names spell them: as text, timestamps as `2020-01-01 12:30:00`,
/// as DuckDB, Hive and Spark write them (and DuckDB reads back as timestamps; with Arrow's ISO
/// `T` it read them as strings).
fn hive_values(key: &ArrayRef) -> Result<ArrayRef> {
    let text = arrow::compute::cast(key, &DataType::Utf8)?;
    if !matches!(key.data_type(), DataType::Timestamp(..)) {
        return Ok(text);
    }
    let text = arrow::array::AsArray::as_string::<i32>(text.as_ref());
    let spaced: arrow::array::StringArray = text.iter().map(|v| v.map(|v| v.replacen('T', " ", 1))).collect();
    Ok(Arc::new(spaced))
}

impl PartitionedWriter {
    /// A writer for batches of `schema`; fails when a partition column is not in it.
    pub fn new(out: PartitionedOutput, schema: &Schema, pool: &MemoryPool) -> Result<PartitionedWriter> {
        let key_columns = partition_columns(&out.partition_by, schema)?;
        let data_columns: Vec<usize> = (0..schema.fields().len()).filter(|i| !key_columns.contains(i)).collect();
        if data_columns.is_empty() {
            return Err(Error::Plan("partition_by takes every column: the files would have none".into()));
        }
        let data_schema =
            Arc::new(Schema::new(data_columns.iter().map(|&i| schema.field(i).clone()).collect::<Vec<_>>()));
        // Many partitions may be open at once: small row groups each.
        let default = if key_columns.is_empty() {
            (pool.budget() / 8).clamp(1 << 20, 128 << 20) as usize
        } else {
            (pool.budget() / 64).clamp(256 << 10, 16 << 20) as usize
        };
        let row_group_bytes = out.options.row_group_bytes(pool.budget(), default);
        let scratch = pool.register(format!("PartitionedWriter[{}]", out.dir.display()), false);
        let standby = pool.register(format!("PartitionedWriter[{}] first file", out.dir.display()), false);
        let bookkeeping = pool.register(format!("PartitionedWriter[{}] files", out.dir.display()), false);
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
            key_order: false,
            standby,
            bookkeeping,
        })
    }

    /// The positions of the partition columns in the written batches.
    pub fn key_columns(&self) -> &[usize] {
        &self.key_columns
    }

    /// Rows will come in partition order (sorted by the key columns): one file is open at a time,
    /// with the row groups of a single file. Reserves what that file's writer takes when it opens.
    pub fn in_key_order(&mut self) -> Result<()> {
        self.key_order = true;
        let budget = self.pool.budget();
        self.row_group_bytes = self.out.options.row_group_bytes(budget, ParquetSink::default_row_group_bytes(budget));
        let upfront = match self.out.format {
            OutputFormat::Parquet => ParquetSink::opening_bytes(&self.data_schema, self.row_group_bytes, budget),
            _ => TextSink::upfront(budget),
        };
        self.standby.try_grow(upfront)
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.key_columns.is_empty() {
            let batch = batch.project(&self.data_columns)?;
            return self.write_part(String::new(), &batch);
        }
        if self.key_order {
            return self.write_runs(batch);
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
            .map(|&i| hive_values(batch.column(i)))
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
                    self.out.partition_by.iter().zip(values).map(|(name, v)| crate::hive::segment(name, v)).collect();
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

    /// Rows in partition order: each run of equal keys is one partition's, written as a slice
    /// (no copy, and the folder name made once per run, not once per row).
    fn write_runs(&mut self, batch: &RecordBatch) -> Result<()> {
        let keys: Vec<_> = self.key_columns.iter().map(|&i| batch.column(i).clone()).collect();
        let data = batch.project(&self.data_columns)?;
        for run in arrow::compute::partition(&keys)?.ranges() {
            let mut segments = Vec::with_capacity(keys.len());
            for (name, key) in self.out.partition_by.iter().zip(&keys) {
                let value = hive_values(&key.slice(run.start, 1))?;
                let value = arrow::array::AsArray::as_string::<i32>(value.as_ref());
                let value = (!arrow::array::Array::is_null(value, 0)).then(|| value.value(0));
                segments.push(crate::hive::segment(name, value));
            }
            self.write_part(segments.join("/"), &data.slice(run.start, run.len()))?;
        }
        Ok(())
    }

    /// Opens a file for `partition` unless one is open, finishing others when the pool is short.
    fn ensure_open(&mut self, partition: &str) -> Result<()> {
        if !self.open.contains_key(partition) {
            let sink = loop {
                match self.open_sink(partition) {
                    Ok(sink) => break sink,
                    Err(Error::ResourcesExhausted { .. }) if !self.open.is_empty() => self.close_largest()?,
                    Err(e) => return Err(e),
                }
            };
            self.open.insert(partition.to_string(), OpenPart { sink, written: 0 });
        }
        Ok(())
    }

    fn write_part(&mut self, partition: String, batch: &RecordBatch) -> Result<()> {
        if self.key_order && !self.open.contains_key(&partition) {
            // The partitions before this one are complete.
            for (_, part) in std::mem::take(&mut self.open) {
                self.completed(part.sink.finish()?);
            }
        }
        self.ensure_open(&partition)?;
        let Some(max) = self.out.options.max_file_bytes else {
            let part = self.open.get_mut(&partition).expect("opened above");
            part.written += batch.get_array_memory_size() as u64;
            return part.sink.write(batch);
        };
        // A file that reached the size limit is complete: the partition's next rows start
        // another. Batches go in slices, so that a file ends near the limit.
        let mut pieces = slices(batch, (max / 4).max(1) as usize).into_iter().peekable();
        while let Some(piece) = pieces.next() {
            let part = self.open.get_mut(&partition).expect("opened above");
            part.written += sliced_bytes(&piece);
            part.sink.write(&piece)?;
            if part.sink.size() >= max {
                let part = self.open.remove(&partition).expect("open");
                self.completed(part.sink.finish()?);
                if pieces.peek().is_some() {
                    self.ensure_open(&partition)?;
                }
            }
        }
        Ok(())
    }

    fn open_sink(&mut self, partition: &str) -> Result<Box<dyn Sink + Send>> {
        self.standby.free();
        let n = self.files_per_partition.get(partition).copied().unwrap_or(0);
        let ext = self.out.format.extension();
        let name = match n {
            n if self.out.numbered => format!("{}_{n}.{ext}{}", self.out.stem, self.out.suffix),
            0 => format!("{}.{ext}{}", self.out.stem, self.out.suffix),
            n => format!("{}.{n}.{ext}{}", self.out.stem, self.out.suffix),
        };
        let target =
            if partition.is_empty() { self.out.dir.join(name) } else { self.out.dir.join(partition).join(name) };
        let sink: Box<dyn Sink + Send> = match self.out.format {
            OutputFormat::Parquet => Box::new(ParquetSink::open(
                self.destination(&target)?,
                &self.data_schema,
                &self.pool,
                &self.out.options,
                self.row_group_bytes,
                self.pool.budget(),
            )?),
            format => Box::new(TextSink::to(self.destination(&target)?, format, &self.pool)?),
        };
        if n == 0 {
            self.bookkeeping.grow_over_budget((partition.len() + BOOKKEEPING) as u64);
        }
        self.files_per_partition.insert(partition.to_string(), n + 1);
        Ok(sink)
    }

    /// Keeps a finished file's summary, counting it in the pool: with hundreds of thousands of
    /// partitions, the summaries and the files per partition take megabytes.
    fn completed(&mut self, summary: WriteSummary) {
        self.bookkeeping.grow_over_budget((summary.path.as_os_str().len() + BOOKKEEPING) as u64);
        self.done.push(summary);
    }

    fn destination(&self, target: &std::path::Path) -> Result<Destination> {
        match self.out.staged {
            true => Destination::staged(target),
            false => Destination::file(target, &self.out.options),
        }
    }

    fn close_largest(&mut self) -> Result<()> {
        let largest = self.open.iter().max_by_key(|(_, p)| p.written).map(|(k, _)| k.clone());
        if let Some(part) = largest.and_then(|k| self.open.remove(&k)) {
            self.completed(part.sink.finish()?);
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
            self.completed(part.sink.finish()?);
        }
        self.done.sort_by(|a, b| a.path.cmp(&b.path));
        if self.out.staged {
            super::staging::make_durable(&self.out.dir, &self.done)?;
        }
        Ok(self.done)
    }
}

/// Encoding and writing the files on a thread of their own, beside the work that makes the rows
/// (the merge of the sort by partition).
impl super::Background for PartitionedWriter {
    type Done = Vec<WriteSummary>;
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        PartitionedWriter::write(self, batch)
    }
    fn finish(self) -> Result<Vec<WriteSummary>> {
        PartitionedWriter::finish(self)
    }
}
