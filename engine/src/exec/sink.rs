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

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::parquet_writer::ParquetWriter;
use super::sliced_bytes;
use crate::error::{Error, Result};
use crate::memory::{MemoryPool, MemoryReservation};

/// The file formats a query result can be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Apache Parquet (zstd, statistics on).
    Parquet,
    /// Comma-separated text with a header line.
    Csv,
    /// Tab-separated text with a header line.
    Tsv,
    /// Newline-delimited JSON: an object per row, nulls written as `null`.
    Json,
}

impl OutputFormat {
    /// The format a path's extension names: `.parquet` (or none: a folder output, or a file
    /// named without one), `.csv`, `.tsv`, `.json`/`.ndjson`/`.jsonl`. Any other extension is an
    /// error rather than a Parquet file under a misleading name.
    pub fn from_path(path: &Path) -> Result<OutputFormat> {
        let extension = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
        match extension.as_deref() {
            None | Some("parquet" | "pq") => Ok(OutputFormat::Parquet),
            Some("csv") => Ok(OutputFormat::Csv),
            Some("tsv") => Ok(OutputFormat::Tsv),
            Some("json" | "ndjson" | "jsonl") => Ok(OutputFormat::Json),
            Some(other) => Err(Error::Config(format!(
                "output {}: unknown extension '.{other}' (hint: name it .parquet, .csv, .tsv or .json, or choose \
                 the format with --format)",
                path.display()
            ))),
        }
    }

    /// Parses `parquet`, `csv`, `tsv` or `json` (also `ndjson`).
    pub fn parse(text: &str) -> Result<OutputFormat> {
        match text.trim().to_ascii_lowercase().as_str() {
            "parquet" => Ok(OutputFormat::Parquet),
            "csv" => Ok(OutputFormat::Csv),
            "tsv" => Ok(OutputFormat::Tsv),
            "json" | "ndjson" | "jsonl" => Ok(OutputFormat::Json),
            _ => Err(Error::Config(format!("unknown output format '{text}' (hint: parquet, csv, tsv or json)"))),
        }
    }

    /// The file extension of the format.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Csv => "csv",
            OutputFormat::Tsv => "tsv",
            OutputFormat::Json => "json",
        }
    }
}

/// The compression of Parquet outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zstd at a level from 1 (fast, the default) to 22 (small).
    Zstd(i32),
    /// Snappy (what DuckDB and Spark write by default).
    Snappy,
    /// LZ4 (the `LZ4_RAW` codec of the Parquet format, which every current reader knows).
    Lz4,
    /// No compression.
    Uncompressed,
}

impl Default for Codec {
    fn default() -> Codec {
        Codec::Zstd(1)
    }
}

impl Codec {
    /// Parses `zstd`, `zstd(3)` or `zstd:3`, `snappy`, `lz4`, `none` (or `uncompressed`).
    pub fn parse(text: &str) -> Result<Codec> {
        let lower = text.trim().to_ascii_lowercase();
        let (name, level) = match lower.split_once(['(', ':']) {
            Some((name, rest)) => (name.trim(), Some(rest.trim_end_matches(')').trim())),
            None => (lower.as_str(), None),
        };
        let bad = || {
            Error::Config(format!(
                "unknown compression '{text}' (hint: zstd, zstd(LEVEL) with LEVEL from 1 to 22, snappy, lz4 or none)"
            ))
        };
        let codec = match name {
            "zstd" => match level {
                None => Codec::Zstd(1),
                Some(l) => match l.parse::<i32>() {
                    Ok(l) if (1..=22).contains(&l) => Codec::Zstd(l),
                    _ => return Err(bad()),
                },
            },
            "snappy" => Codec::Snappy,
            "lz4" | "lz4_raw" => Codec::Lz4,
            "none" | "uncompressed" => Codec::Uncompressed,
            _ => return Err(bad()),
        };
        if level.is_some() && !matches!(codec, Codec::Zstd(_)) {
            return Err(bad());
        }
        Ok(codec)
    }

    fn parquet(self) -> Compression {
        match self {
            Codec::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default()),
            Codec::Snappy => Compression::SNAPPY,
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::Uncompressed => Compression::UNCOMPRESSED,
        }
    }
}

/// What a write does when its target already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Fail before running (a pipeline step's folder may still be resumed).
    Error,
    /// The new result takes the target's place once complete (the default).
    #[default]
    Replace,
    /// For partitioned outputs: the partitions the new result writes are replaced, the others are
    /// kept (Spark's dynamic partition overwrite).
    ReplacePartitions,
}

impl Overwrite {
    /// Parses `error`, `replace` or `replace_partitions` (also with a `-`).
    pub fn parse(text: &str) -> Result<Overwrite> {
        match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "error" => Ok(Overwrite::Error),
            "replace" => Ok(Overwrite::Replace),
            "replace_partitions" => Ok(Overwrite::ReplacePartitions),
            _ => Err(Error::Config(format!(
                "unknown overwrite policy '{text}' (hint: error, replace or replace_partitions)"
            ))),
        }
    }
}

/// How outputs are written. The defaults: zstd level 1, row groups of at most 1M rows flushed by
/// bytes (an eighth of the budget, up to 128 MiB), one file, replacing the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Parquet compression.
    pub compression: Codec,
    /// Most rows in a Parquet row group.
    pub row_group_rows: Option<usize>,
    /// Target bytes of a Parquet row group (encoded). The writer holds a row group in memory until
    /// it is flushed, so this is capped at a quarter of the budget, and a row group is flushed
    /// early when the pool is short.
    pub row_group_bytes: Option<u64>,
    /// Split the output into numbered files of about this size (the target is then a folder).
    pub max_file_bytes: Option<u64>,
    /// What to do when the target exists.
    pub overwrite: Overwrite,
}

impl WriteOptions {
    /// The options that shape the files, as one line, for the fingerprints that decide whether
    /// a unit is redone (the overwrite policy changes which files stay, not what a unit writes).
    pub fn describe(&self) -> String {
        format!("{:?} {:?} {:?} {:?}", self.compression, self.row_group_rows, self.row_group_bytes, self.max_file_bytes)
    }

    fn row_group_bytes(&self, budget: u64, default: usize) -> usize {
        let mut bytes = match self.row_group_bytes {
            Some(b) => (b.min(budget / 4) as usize).max(64 << 10),
            None => default,
        };
        if let Some(max) = self.max_file_bytes {
            bytes = bytes.min((max as usize).max(64 << 10));
        }
        bytes
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
pub(crate) struct PendingFile {
    temp: Scratch,
    target: PathBuf,
    /// Fail at commit rather than replace a file that appeared at the target meanwhile.
    no_clobber: bool,
}

impl PendingFile {
    fn create(target: &Path) -> Result<(PendingFile, File)> {
        let parent = scratch::parent_of(target);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        check_target(target)?;
        scratch::remove_abandoned(target);
        let (temp, file) = Scratch::file(scratch::name_beside(target, "tmp"))?;
        Ok((PendingFile { temp, target: target.to_path_buf(), no_clobber: false }, file))
    }

    /// Makes the file durable and moves it into place.
    fn commit(self, file: &File) -> Result<u64> {
        let temp = self.temp.path();
        file.sync_all().map_err(|e| Error::io(temp, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(temp, e))?.len();
        // Checked again: what is at the target may have changed while the query ran.
        check_target(&self.target)?;
        if self.no_clobber {
            // A hard link fails when the target exists: no check-then-rename race.
            match std::fs::hard_link(temp, &self.target) {
                Ok(()) => {
                    let _ = std::fs::remove_file(temp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists_error(&self.target)),
                // File systems without hard links: check, then rename.
                Err(_) if self.target.exists() => return Err(exists_error(&self.target)),
                Err(_) => std::fs::rename(temp, &self.target).map_err(|e| Error::io(&self.target, e))?,
            }
        } else {
            std::fs::rename(temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        self.temp.keep();
        if let Ok(dir) = File::open(scratch::parent_of(&self.target)) {
            let _ = dir.sync_all();
        }
        Ok(bytes)
    }
}

/// An output file replaces only a regular file (or nothing): never a folder, a device, a fifo or
/// a symbolic link, which a rename would put the output in place of (see [`Destination::file`]
/// for how those are written).
fn check_target(target: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(target) else { return Ok(()) };
    let what = if meta.is_dir() {
        "is a directory"
    } else if meta.file_type().is_symlink() {
        "is a symbolic link"
    } else if !meta.is_file() {
        "is not a regular file"
    } else {
        return Ok(());
    };
    Err(Error::io(target, std::io::Error::other(what)))
}

/// A temporary folder beside a target folder, where a folder output is written before it is moved
/// into place; removed on drop unless committed. Its name starts with a dot, which readers of
/// folders (pyarrow, DuckDB, Spark) skip.
pub struct StagingDir {
    scratch: Scratch,
}

use crate::scratch::{self, name_beside, remove_any, Scratch};

/// Puts `from` at `to`, replacing what is there: the old one is renamed aside first and removed
/// once the new one is in place (put back if that fails).
fn swap_into(from: &Path, to: &Path) -> Result<()> {
    match std::fs::symlink_metadata(to) {
        Ok(m) if !m.is_dir() => check_target(to)?,
        _ => {}
    }
    if std::fs::symlink_metadata(to).is_err() {
        if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        return std::fs::rename(from, to).map_err(|e| Error::io(to, e));
    }
    let old = name_beside(to, "old");
    std::fs::rename(to, &old).map_err(|e| Error::io(to, e))?;
    if let Err(e) = std::fs::rename(from, to) {
        let _ = std::fs::rename(&old, to);
        return Err(Error::io(to, e));
    }
    remove_any(&old).map_err(|e| Error::io(&old, e))
}

impl StagingDir {
    /// Creates the folder beside `target` (creating `target`'s parent folders).
    pub fn beside(target: &Path) -> Result<StagingDir> {
        scratch::remove_abandoned(target);
        Ok(StagingDir { scratch: Scratch::dir(name_beside(target, "tmp"))? })
    }

    /// The folder to write in.
    pub fn path(&self) -> &Path {
        self.scratch.path()
    }

    /// Moves what was written (`written`, paths inside the staging folder) into `target` as
    /// `overwrite` says; returns the summaries with their final paths.
    pub fn commit(self, target: &Path, overwrite: Overwrite, written: &[WriteSummary]) -> Result<Vec<WriteSummary>> {
        let staged = self.path();
        let relative = |p: &Path| p.strip_prefix(staged).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf());
        match overwrite {
            Overwrite::Error => {
                if target_taken(target) {
                    return Err(exists_error(target));
                }
                if target.is_dir() {
                    std::fs::remove_dir(target).map_err(|e| Error::io(target, e))?;
                }
                std::fs::rename(staged, target).map_err(|e| Error::io(target, e))?;
            }
            Overwrite::Replace => swap_into(staged, target)?,
            Overwrite::ReplacePartitions if !target.is_dir() => swap_into(staged, target)?,
            Overwrite::ReplacePartitions => {
                // Each partition folder that got files replaces its namesake; the rest stay.
                let leaves: std::collections::BTreeSet<PathBuf> =
                    written.iter().filter_map(|w| relative(&w.path).parent().map(Path::to_path_buf)).collect();
                for leaf in leaves {
                    if leaf.as_os_str().is_empty() {
                        continue;
                    }
                    swap_into(&staged.join(&leaf), &target.join(&leaf))?;
                }
                // Files at the top (there are none with partition_by; kept for completeness).
                for w in written {
                    let rel = relative(&w.path);
                    if rel.parent().is_none_or(|p| p.as_os_str().is_empty()) {
                        swap_into(&w.path, &target.join(&rel))?;
                    }
                }
                let _ = std::fs::remove_dir_all(staged);
            }
        }
        let written =
            written.iter().map(|w| WriteSummary { path: target.join(relative(&w.path)), ..w.clone() }).collect();
        self.scratch.keep();
        if let Ok(dir) = File::open(target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))) {
            let _ = dir.sync_all();
        }
        Ok(written)
    }
}

/// The error for a target that exists under `overwrite = "error"`.
pub fn exists_error(target: &Path) -> Error {
    Error::Config(format!(
        "output {} already exists (overwrite policy 'error'; hint: remove it, or use overwrite 'replace')",
        target.display()
    ))
}

/// Whether `target` exists as something a write would overwrite: a file, or a folder that is not
/// empty.
pub fn target_taken(target: &Path) -> bool {
    match std::fs::metadata(target) {
        Ok(m) if m.is_dir() => std::fs::read_dir(target).map(|mut d| d.next().is_some()).unwrap_or(true),
        Ok(_) => true,
        Err(_) => false,
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

/// `batch` with the columns of `schema`'s types, but for dictionaries of a field's type: the
/// Parquet writer writes the values of a dictionary array as it does those of a plain one (the
/// file's schema is the sink's), so they stay packed.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let mut fields: Vec<Field> = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (c, f) in batch.columns().iter().zip(schema.fields()) {
        match c.data_type() {
            t if t == f.data_type() => columns.push(c.clone()),
            DataType::Dictionary(_, v) if v.as_ref() == f.data_type() => {
                fields.push(f.as_ref().clone().with_data_type(c.data_type().clone()));
                columns.push(c.clone());
                continue;
            }
            _ => columns.push(arrow::compute::cast(c, f.data_type())?),
        }
        fields.push(f.as_ref().clone());
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let rows = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(schema, columns, &rows)?)
}

/// A writer's error: failed writes (a full disk) are I/O errors on the target, the rest are
/// execution errors.
fn writer_error(target: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::parquet(target, "writing", e)
}

/// Where a file sink's bytes go: a file under a temporary name, moved into place when complete,
/// or a stream (standard output) that takes them as they come.
pub(crate) enum Destination {
    /// A file.
    File(PendingFile, File),
    /// A stream; its summary's path is `-`.
    Stream(Box<dyn Write + Send>),
}

impl Destination {
    /// A file at `target`, written beside it first and renamed into place. A symbolic link is
    /// followed (the file it points to is replaced, the link stays); a device or a pipe
    /// (`/dev/null`, a fifo) is written into as a stream; a folder is an error.
    pub(crate) fn file(target: &Path, options: &WriteOptions) -> Result<Destination> {
        use std::os::unix::fs::FileTypeExt;
        let mut target = target.to_path_buf();
        if let Ok(meta) = std::fs::metadata(&target) {
            let kind = meta.file_type();
            if kind.is_char_device() || kind.is_fifo() {
                let file = File::options().write(true).open(&target).map_err(|e| Error::io(&target, e))?;
                return Ok(Destination::Stream(Box::new(file)));
            }
            if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
                target = std::fs::canonicalize(&target).map_err(|e| Error::io(&target, e))?;
            }
        }
        let (mut pending, file) = PendingFile::create(&target)?;
        pending.no_clobber = options.overwrite == Overwrite::Error;
        Ok(Destination::File(pending, file))
    }

    fn split(self) -> (Option<PendingFile>, PathBuf, Out) {
        match self {
            Destination::File(pending, file) => {
                let target = pending.target.clone();
                (Some(pending), target, Out::File(file))
            }
            Destination::Stream(stream) => (None, PathBuf::from("-"), Out::Stream(stream, 0)),
        }
    }
}

/// The writer behind a sink (see [`Destination`]).
enum Out {
    File(File),
    /// A stream and the bytes written to it.
    Stream(Box<dyn Write + Send>, u64),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::File(f) => f.write(buf),
            Out::Stream(s, bytes) => {
                let n = s.write(buf)?;
                *bytes += n as u64;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::File(f) => f.flush(),
            Out::Stream(s, _) => s.flush(),
        }
    }
}

/// Completes what a sink wrote to `out`: a file is made durable and moved into place, a stream
/// flushed. Returns the bytes written.
fn complete(pending: Option<PendingFile>, target: &Path, out: Out) -> Result<u64> {
    match (pending, out) {
        (Some(pending), Out::File(file)) => pending.commit(&file),
        (_, mut out) => {
            out.flush().map_err(|e| Error::io(target, e))?;
            Ok(match out {
                Out::Stream(_, bytes) => bytes,
                Out::File(_) => 0,
            })
        }
    }
}

/// Writes batches to one file.
pub trait Sink {
    /// Appends a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Completes the file and moves it into place.
    fn finish(self: Box<Self>) -> Result<WriteSummary>;
    /// About how many bytes the file has so far (written and still buffered).
    fn size(&self) -> u64;
    /// Whether string columns may come as dictionary arrays of their type (a scan then passes
    /// them on as the Parquet file stores them).
    fn takes_dictionaries(&self) -> bool {
        false
    }
    /// The most the sink may hold: the query was sized leaving it that much (see
    /// `Query::run_into`). A sink that buffers (a Parquet row group) ends its buffers early
    /// rather than grow past it.
    fn limit_memory(&mut self, _bytes: u64) {}
    /// What the sink holds now.
    fn reserved(&self) -> u64 {
        0
    }
}

/// A sink running on a thread of its own, so that encoding and compressing the output overlaps
/// with the work that makes it: the merge of an external sort, the last partitions of an
/// aggregation, anything the query's consumer thread does (the scan workers are often idle by
/// then). Batches wait in a queue, each still under the reservation that paid for it upstream
/// (moved to the queue, not reserved again).
///
/// The queue always takes [`QUEUE`](Self::QUEUE) batches. It takes more, up to a 32nd of the
/// budget in bytes, while the pool has at least that much free: a Parquet writer stops for a while
/// at the end of each row group (closing its column chunks and writing them out: about 50 ms for
/// the lineitem sort at scale factor 10), and with two batches queued the sort's merge waited out
/// most of each stop, 3 to 4 s in all. A pool short of memory keeps the queue at two batches, so
/// that the operators feeding it, sized without it, still find what they reserve.
///
/// The file is completed only by [`finish`](Self::finish): dropped before that (the query
/// failed), the writer drops its sink, which removes the temporary file, and is waited for.
pub(crate) struct BackgroundSink {
    queue: Option<std::sync::mpsc::Sender<Queued>>,
    waiting: Arc<Waiting>,
    pool: MemoryPool,
    writer: Option<std::thread::JoinHandle<Result<Option<WriteSummary>>>>,
}

enum Queued {
    /// A batch, the reservation that holds it and its bytes as counted in [`Waiting`].
    Batch(RecordBatch, MemoryReservation, u64),
    Finish,
}

/// What waits for the writer, and whether it stopped; the writer signals each batch it is done
/// with.
#[derive(Default)]
struct Waiting {
    state: std::sync::Mutex<Queue>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct Queue {
    batches: usize,
    bytes: u64,
    stopped: bool,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks the writer stopped when its thread ends, however it ends.
struct Stopped(Arc<Waiting>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.done.notify_all();
    }
}

impl BackgroundSink {
    /// Batches the queue always takes.
    const QUEUE: usize = 2;

    pub(crate) fn start(mut sink: Box<dyn Sink + Send>, pool: &MemoryPool) -> Result<BackgroundSink> {
        let (queue, batches) = std::sync::mpsc::channel::<Queued>();
        let waiting = Arc::new(Waiting::default());
        let stopped = Stopped(waiting.clone());
        let writer = std::thread::Builder::new()
            .name("flow-writer".into())
            .spawn(move || {
                // Moved in whole, so that it drops (and marks the writer stopped) as the thread ends.
                let guard = stopped;
                while let Ok(item) = batches.recv() {
                    match item {
                        Queued::Batch(batch, reservation, bytes) => {
                            sink.write(&batch)?;
                            drop((batch, reservation));
                            let mut queue = guard.0.lock();
                            queue.batches -= 1;
                            queue.bytes -= bytes;
                            guard.0.done.notify_one();
                        }
                        Queued::Finish => return sink.finish().map(Some),
                    }
                }
                // Abandoned: dropping the sink removes its temporary file.
                Ok(None)
            })
            .map_err(|e| Error::Execution(format!("cannot start the output writer: {e}")))?;
        Ok(BackgroundSink { queue: Some(queue), waiting, pool: pool.clone(), writer: Some(writer) })
    }

    /// Queues a batch with the reservation that holds it; waits while the queue is full.
    pub(crate) fn write(&mut self, batch: RecordBatch, reservation: MemoryReservation) -> Result<()> {
        let bytes = reservation.size();
        let most = self.pool.budget() / 32;
        let mut queue = self.waiting.lock();
        while !queue.stopped
            && queue.batches >= Self::QUEUE
            && (queue.bytes + bytes > most || self.pool.available() < most)
        {
            queue = self.waiting.done.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        if queue.stopped {
            // The writer stopped on an error: that is the one to report.
            drop(queue);
            return Err(self.stopped());
        }
        queue.batches += 1;
        queue.bytes += bytes;
        drop(queue);
        let sent = self.queue.as_ref().expect("open until finished").send(Queued::Batch(batch, reservation, bytes));
        if sent.is_err() {
            return Err(self.stopped());
        }
        Ok(())
    }

    /// Writes what is queued and completes the file.
    pub(crate) fn finish(mut self) -> Result<WriteSummary> {
        // A writer that stopped on an error no longer listens: `join` gives its error.
        let _ = self.queue.take().expect("open until finished").send(Queued::Finish);
        match self.join()? {
            Some(summary) => Ok(summary),
            None => Err(Error::Execution("the output writer stopped before the end".into())),
        }
    }

    /// The writer's error, once it stopped early.
    fn stopped(&mut self) -> Error {
        self.queue = None;
        match self.join() {
            Err(e) => e,
            Ok(_) => Error::Execution("the output writer stopped before the end".into()),
        }
    }

    fn join(&mut self) -> Result<Option<WriteSummary>> {
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Execution("internal error: the output writer panicked".into())),
            None => Ok(None),
        }
    }
}

impl Drop for BackgroundSink {
    fn drop(&mut self) {
        // Closing the queue makes the writer drop its sink (and the temporary file) and return.
        self.queue = None;
        let _ = self.join();
    }
}

/// A Parquet file sink.
pub struct ParquetSink {
    /// What the sink reserved when it opened (its open pages): it never holds less.
    floor: u64,
    /// The most it may hold (see [`Sink::limit_memory`]).
    cap: u64,
    pending: Option<PendingFile>,
    target: PathBuf,
    writer: ParquetWriter<Out>,
    schema: SchemaRef,
    reservation: MemoryReservation,
    row_group_bytes: usize,
    rows: u64,
}

impl ParquetSink {
    /// Opens a sink for batches of `schema` at `target`, sizing its buffers from `pool`'s budget.
    pub fn create(target: &Path, schema: &Schema, pool: &MemoryPool) -> Result<ParquetSink> {
        Self::with_options(target, schema, pool, &WriteOptions::default())
    }

    /// Opens a sink that writes as `options` say. Row groups are flushed by bytes: by default an
    /// eighth of the budget, between 256 KiB and 128 MiB.
    pub fn with_options(
        target: &Path,
        schema: &Schema,
        pool: &MemoryPool,
        options: &WriteOptions,
    ) -> Result<ParquetSink> {
        Self::to(Destination::file(target, options)?, schema, pool, options)
    }

    /// A sink's row groups by default: an eighth of the budget, between 256 KiB and 128 MiB.
    fn default_row_group_bytes(budget: u64) -> usize {
        (budget / 8).clamp(256 << 10, 128 << 20) as usize
    }

    /// What a sink of `columns` columns with row groups of `row_group_bytes` writes its pages
    /// in, and reserves when it opens: pages shrink with many columns so that every column's
    /// open page fits in the same share (down to 64 KiB; 16 KiB for the small row groups of
    /// partitioned writers); the reservation holds two pages a column and a row group of encoded
    /// data up to a thirty-second of the budget.
    fn sizes(columns: usize, row_group_bytes: usize, budget: u64) -> (usize, u64) {
        let smallest_page = if row_group_bytes >= 1 << 20 { 64 << 10 } else { 16 << 10 };
        let page_bytes = (row_group_bytes / (4 * columns)).clamp(smallest_page, 1 << 20);
        let upfront = row_group_bytes.min((budget / 32) as usize);
        (page_bytes, (columns * page_bytes * 2 + upfront) as u64)
    }

    /// What a sink for `schema` reserves when it opens with `room` bytes of the budget not
    /// reserved by others.
    pub(crate) fn upfront(schema: &Schema, room: u64, options: &WriteOptions) -> u64 {
        let row_group_bytes = options.row_group_bytes(room, Self::default_row_group_bytes(room));
        Self::sizes(schema.fields().len().max(1), row_group_bytes, room).1
    }

    /// A sink that writes to `to`, a file or a stream, sized from the part of the budget that
    /// nothing else holds when it opens: the footers of many tables can take most of a budget,
    /// and buffers sized from the whole of it then leave the query nothing (a sink opened at
    /// 123 MiB beside 110 MiB of footers took 11.6 MiB and could not take its next slice).
    pub(crate) fn to(
        to: Destination,
        schema: &Schema,
        pool: &MemoryPool,
        options: &WriteOptions,
    ) -> Result<ParquetSink> {
        let room = pool.budget().saturating_sub(pool.reserved());
        let default = Self::default_row_group_bytes(room);
        Self::open(to, schema, pool, options, options.row_group_bytes(room, default), room)
    }

    /// A sink with row groups of `row_group_bytes` whose pages are sized for `room` bytes.
    fn open(
        to: Destination,
        schema: &Schema,
        pool: &MemoryPool,
        options: &WriteOptions,
        row_group_bytes: usize,
        room: u64,
    ) -> Result<ParquetSink> {
        let schema = portable_schema(schema);
        let (page_bytes, upfront) = Self::sizes(schema.fields().len().max(1), row_group_bytes, room);
        // Statistics per page also write the page index (column and offset indexes), which lets
        // readers skip pages by value, as flow's own scans do. A dictionary stops at 256 KiB: a
        // column of many distinct values (keys, prices) is interned until its dictionary is full
        // and then written plain all the same, so a smaller one gives up sooner. On TPC-H scale
        // factor 10, writing three lineitem columns took 2.5 s instead of 2.9 s (CPU 3.7 s, not
        // 4.1 s), and the file came out a tenth smaller; columns of a few values keep theirs.
        let props = delta_for_integers(WriterProperties::builder(), &schema)
            .set_compression(options.compression.parquet())
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_data_page_size_limit(page_bytes)
            .set_dictionary_page_size_limit(page_bytes.min(256 << 10))
            .set_max_row_group_row_count(Some(options.row_group_rows.unwrap_or(1 << 20).max(1)))
            .set_created_by(format!("flow version {}", env!("CARGO_PKG_VERSION")))
            .build();
        let (pending, target, out) = to.split();
        let writer = ParquetWriter::try_new(out, schema.clone(), props).map_err(|e| writer_error(&target, e))?;
        // Reserve a working size up front (open pages, and a row group of encoded data up to a
        // thirty-second of the budget), so that operators filling the pool cannot starve the
        // writer half-way. Bigger row groups grow into the pool as rows come; when it is short,
        // the row group is flushed early. Reserving the whole row group would take an eighth of
        // the budget from the query even when the result is a few rows (TPC-H Q9's join spilled
        // for it at 512 MiB).
        let mut reservation = pool.register(format!("ParquetSink[{}]", target.display()), false);
        reservation.try_grow(upfront)?;
        Ok(ParquetSink {
            floor: upfront,
            cap: u64::MAX,
            pending,
            target,
            writer,
            schema,
            reservation,
            row_group_bytes,
            rows: 0,
        })
    }

    fn error(&self, e: parquet::errors::ParquetError) -> Error {
        writer_error(&self.target, e)
    }
}

/// Integer columns (integers, dates, timestamps, decimals of up to 18 digits) whose dictionary
/// fills go on as DELTA_BINARY_PACKED instead of PLAIN: differences, bit-packed, which for keys
/// and prices take a few bits a value instead of 4 or 8 bytes, and leave zstd less to do. Writing
/// every lineitem column of TPC-H scale factor 10 where `l_discount` is 0.05 to 0.07 took 8.4 to
/// 8.7 s instead of 9.2 to 9.4 s (user CPU 14.0 s against 15.2 s), in a file 6% smaller; the
/// three columns of `q_filter_project` 1.5 to 1.7 s instead of 1.9 s. The encoding is part of
/// the format since its first version and valid in the data pages (v1) flow writes; pyarrow,
/// DuckDB and Polars read such files back equal to the PLAIN ones. Unsigned integers keep PLAIN:
/// their differences wrap around in the signed physical type, which readers need not expect.
/// (A schema Parquet cannot hold is left to the writer, which names the column.)
fn delta_for_integers(
    mut props: parquet::file::properties::WriterPropertiesBuilder,
    schema: &Schema,
) -> parquet::file::properties::WriterPropertiesBuilder {
    use parquet::basic::{Encoding, LogicalType, Type};
    let Ok(parquet) = parquet::arrow::ArrowSchemaConverter::new().convert(schema) else {
        return props;
    };
    for column in parquet.columns() {
        let unsigned = matches!(column.logical_type_ref(), Some(LogicalType::Integer(int)) if !int.is_signed);
        if matches!(column.physical_type(), Type::INT32 | Type::INT64) && !unsigned {
            props = props.set_column_encoding(column.path().clone(), Encoding::DELTA_BINARY_PACKED);
        }
    }
    props
}

/// `batch` cut into slices of about `bytes` of memory each (zero-copy).
fn slices(batch: &RecordBatch, bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let size = sliced_bytes(batch).max(1) as usize;
    if size <= bytes || rows <= 1 {
        return vec![batch.clone()];
    }
    let per = (rows * bytes.max(1) / size).max(1);
    (0..rows).step_by(per).map(|offset| batch.slice(offset, per.min(rows - offset))).collect()
}

impl Sink for ParquetSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        // Row groups close between writes: a batch larger than a row group goes in slices, so
        // that row groups come out about the size asked for.
        for slice in slices(batch, self.row_group_bytes / 4) {
            self.write_slice(&slice)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<WriteSummary> {
        self.finish_file()
    }

    fn size(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    fn takes_dictionaries(&self) -> bool {
        true
    }

    fn limit_memory(&mut self, bytes: u64) {
        self.cap = bytes;
    }

    fn reserved(&self) -> u64 {
        self.reservation.size()
    }
}

impl ParquetSink {
    /// What the writer holds: its pages and encoders, and the encoded row group (its own
    /// estimate leaves out encoder scratch space, so the row group is counted on top), never
    /// less than the page buffers it will fill again.
    fn holding(&self) -> u64 {
        self.in_use().max(self.floor)
    }

    /// The writer's pages and encoders, and the encoded row group.
    fn in_use(&self) -> u64 {
        (self.writer.memory_size() + self.writer.in_progress_size()) as u64
    }

    fn write_slice(&mut self, batch: &RecordBatch) -> Result<()> {
        let batch = conform(batch, &self.schema)?;
        // The writer copies the batch into encoded pages: reserve that growth first (an upper
        // bound: the uncompressed size of the batch), ending the row group early when the pool
        // is short or the sink would pass its limit. The floor reserved at opening is there for
        // pages to fill: the growth is counted from what the writer holds, not on top of the
        // floor.
        let incoming = sliced_bytes(&batch);
        let wanted = |sink: &ParquetSink| (sink.in_use() + incoming).max(sink.floor);
        let growth = wanted(self).saturating_sub(self.reservation.size());
        if wanted(self) > self.cap || self.reservation.try_grow_spare(growth).is_err() {
            self.writer.flush().map_err(|e| self.error(e))?;
            if let Err(e) = self.reservation.try_resize(wanted(self)) {
                // Still short with the row group written out (a slice is a quarter of a row
                // group, and the pool may have less): the batch goes in halves, down to one row.
                let rows = batch.num_rows();
                if rows <= 1 {
                    return Err(e);
                }
                self.write_slice(&batch.slice(0, rows / 2))?;
                return self.write_slice(&batch.slice(rows / 2, rows - rows / 2));
            }
        }
        self.writer.write(&batch).map_err(|e| self.error(e))?;
        self.rows += batch.num_rows() as u64;
        if self.writer.in_progress_size() >= self.row_group_bytes {
            self.writer.flush().map_err(|e| self.error(e))?;
        }
        let held = self.holding();
        if held > self.cap || self.reservation.try_resize(held).is_err() {
            self.writer.flush().map_err(|e| self.error(e))?;
            self.reservation.try_resize(self.holding())?;
        }
        Ok(())
    }

    fn finish_file(self: Box<Self>) -> Result<WriteSummary> {
        let mut this = *self;
        let target = this.target.clone();
        let err = |e: parquet::errors::ParquetError| writer_error(&target, e);
        this.writer.flush().map_err(err)?;
        let row_groups = this.writer.row_groups();
        let out = this.writer.into_inner().map_err(err)?;
        let bytes = complete(this.pending, &target, out)?;
        drop(this.reservation);
        Ok(WriteSummary { path: target, rows: this.rows, bytes, row_groups })
    }
}

/// A text sink: CSV or TSV (a header line, RFC 4180 quoting) or newline-delimited JSON.
pub struct TextSink {
    pending: Option<PendingFile>,
    target: PathBuf,
    writer: TextWriter,
    _reservation: MemoryReservation,
    rows: u64,
    written: Arc<AtomicU64>,
}

enum TextWriter {
    Csv(arrow::csv::Writer<Counting<BufWriter<Out>>>),
    Json(arrow::json::LineDelimitedWriter<Counting<BufWriter<Out>>>),
}

impl TextSink {
    /// The write buffer a text sink reserves when `room` bytes of the budget are not reserved
    /// by others: a sixteenth of them, 64 KiB to 1 MiB.
    pub(crate) fn upfront(room: u64) -> u64 {
        (room / 16).clamp(64 << 10, 1 << 20)
    }

    /// Opens a CSV sink at `target`, with a write buffer of a sixteenth of the budget left
    /// free (64 KiB to 1 MiB).
    pub fn create(target: &Path, pool: &MemoryPool) -> Result<TextSink> {
        Self::with_options(target, pool, &WriteOptions::default())
    }

    /// Opens a CSV sink; of `options` only the overwrite policy applies to CSV.
    pub fn with_options(target: &Path, pool: &MemoryPool, options: &WriteOptions) -> Result<TextSink> {
        Self::to(Destination::file(target, options)?, OutputFormat::Csv, pool)
    }

    /// A sink of `format` (CSV, TSV or JSON) writing to `to`.
    pub(crate) fn to(to: Destination, format: OutputFormat, pool: &MemoryPool) -> Result<TextSink> {
        let buffer = Self::upfront(pool.budget().saturating_sub(pool.reserved())) as usize;
        let (pending, target, out) = to.split();
        let mut reservation = pool.register(format!("TextSink[{}]", target.display()), false);
        reservation.try_grow(buffer as u64)?;
        let written = Arc::new(AtomicU64::new(0));
        let out = Counting { inner: BufWriter::with_capacity(buffer, out), bytes: written.clone() };
        let writer = match format {
            OutputFormat::Json => {
                TextWriter::Json(arrow::json::WriterBuilder::new().with_explicit_nulls(true).build(out))
            }
            OutputFormat::Tsv => {
                TextWriter::Csv(arrow::csv::WriterBuilder::new().with_header(true).with_delimiter(b'\t').build(out))
            }
            _ => TextWriter::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(out)),
        };
        Ok(TextSink { pending, target, writer, _reservation: reservation, rows: 0, written })
    }
}

impl Sink for TextSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let written = match &mut self.writer {
            TextWriter::Csv(w) => w.write(batch),
            TextWriter::Json(w) => w.write(batch),
        };
        written.map_err(|e| match e {
            arrow::error::ArrowError::IoError(_, io) => Error::io(&self.target, io),
            other => Error::Execution(format!("writing {}: {other}", self.target.display())),
        })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<WriteSummary> {
        let this = *self;
        let target = this.target.clone();
        let mut buffered = match this.writer {
            TextWriter::Csv(w) => w.into_inner().inner,
            TextWriter::Json(mut w) => {
                w.finish().map_err(|e| Error::Execution(format!("writing {}: {e}", target.display())))?;
                w.into_inner().inner
            }
        };
        buffered.flush().map_err(|e| Error::io(&target, e))?;
        let out = buffered.into_inner().map_err(|e| Error::io(&target, e.into_error()))?;
        let bytes = complete(this.pending, &target, out)?;
        Ok(WriteSummary { path: target, rows: this.rows, bytes, row_groups: 0 })
    }

    fn size(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// A writer that counts the bytes through it.
struct Counting<W> {
    inner: W,
    bytes: Arc<AtomicU64>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
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
        let default = if key_columns.is_empty() {
            (pool.budget() / 8).clamp(1 << 20, 128 << 20) as usize
        } else {
            (pool.budget() / 64).clamp(256 << 10, 16 << 20) as usize
        };
        let row_group_bytes = out.options.row_group_bytes(pool.budget(), default);
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
                self.done.push(part.sink.finish()?);
                if pieces.peek().is_some() {
                    self.ensure_open(&partition)?;
                }
            }
        }
        Ok(())
    }

    fn open_sink(&mut self, partition: &str) -> Result<Box<dyn Sink>> {
        let n = self.files_per_partition.get(partition).copied().unwrap_or(0);
        let ext = self.out.format.extension();
        let name = match n {
            n if self.out.numbered => format!("{}_{n}.{ext}{}", self.out.stem, self.out.suffix),
            0 => format!("{}.{ext}{}", self.out.stem, self.out.suffix),
            n => format!("{}.{n}.{ext}{}", self.out.stem, self.out.suffix),
        };
        let target =
            if partition.is_empty() { self.out.dir.join(name) } else { self.out.dir.join(partition).join(name) };
        let sink: Box<dyn Sink> = match self.out.format {
            OutputFormat::Parquet => Box::new(ParquetSink::open(
                Destination::file(&target, &self.out.options)?,
                &self.data_schema,
                &self.pool,
                &self.out.options,
                self.row_group_bytes,
                self.pool.budget(),
            )?),
            format => Box::new(TextSink::to(Destination::file(&target, &self.out.options)?, format, &self.pool)?),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::{Receiver, Sender};
    use std::time::Duration;

    use arrow::array::Int64Array;

    use super::*;

    /// A sink that writes a batch only once the test lets it.
    struct Gated(Receiver<()>);

    impl Sink for Gated {
        fn write(&mut self, _batch: &RecordBatch) -> Result<()> {
            self.0.recv().map_err(|_| Error::Execution("closed".into()))
        }
        fn finish(self: Box<Self>) -> Result<WriteSummary> {
            Ok(WriteSummary::default())
        }
        fn size(&self) -> u64 {
            0
        }
    }

    /// How many batches of 100 KB a background sink takes while its writer is stuck, with `held`
    /// bytes of a 32 MiB pool taken by others (the queue's bytes are a 32nd of it: 1 MiB): waits
    /// until `expected` are queued (however slowly the producer runs), then a while longer for
    /// any more the queue would wrongly take.
    fn queued_while_stuck(held: u64, expected: usize) -> usize {
        let pool = MemoryPool::new(32 << 20);
        let mut others = pool.register("others", false);
        others.try_grow(held).unwrap();
        let (gate, gated): (Sender<()>, Receiver<()>) = std::sync::mpsc::channel();
        let mut sink = BackgroundSink::start(Box::new(Gated(gated)), &pool).unwrap();
        let queued = Arc::new(AtomicUsize::new(0));
        let counter = queued.clone();
        let producer = std::thread::spawn(move || {
            let batch = RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]).unwrap();
            for _ in 0..20 {
                let mut reservation = pool.register("batch", false);
                reservation.try_grow(100_000).unwrap();
                sink.write(batch.clone(), reservation).unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
            }
            sink.finish().unwrap();
        });
        let start = std::time::Instant::now();
        while queued.load(Ordering::SeqCst) < expected && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        let n = queued.load(Ordering::SeqCst);
        for _ in 0..20 {
            gate.send(()).unwrap();
        }
        producer.join().unwrap();
        n
    }

    #[test]
    fn the_output_queue_grows_only_while_the_pool_has_room() {
        // Ten batches make 1 MiB less 48 KB; the writer holds none of them yet.
        assert_eq!(queued_while_stuck(0, 10), 10);
        // Less than 1 MiB free: two batches, as the queue always takes.
        assert_eq!(queued_while_stuck(31 << 20, 2), 2);
    }

    /// A batch goes to the writer in slices, and each slice counts its own rows' bytes: counted
    /// with the buffers it shares, every slice of a 640 KB batch asked for 640 KB, and a run at
    /// its smallest budget of 1.8 MiB failed to write 8,192 rows of wide constants.
    #[test]
    fn each_slice_of_a_batch_counts_its_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.parquet");
        let rows = 40_000;
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from_iter_values(0..rows)) as ArrayRef),
            ("b", Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i * 7))) as ArrayRef),
        ])
        .unwrap();
        assert_eq!(sliced_bytes(&batch.slice(0, 1000)), 16_000);
        let pool = MemoryPool::new(2 << 20);
        let mut sink = ParquetSink::create(&target, &batch.schema(), &pool).unwrap();
        // Others leave less than the 640 KB batch free.
        let mut others = pool.register("others", false);
        others.try_grow(pool.budget() - pool.reserved() - (300 << 10)).unwrap();
        sink.write(&batch).unwrap();
        let summary = Box::new(sink).finish().unwrap();
        assert_eq!(summary.rows, rows as u64);
    }

    #[test]
    fn integers_of_many_values_go_delta_encoded_and_dictionary_strings_stay_dictionaries() {
        use arrow::array::{Date32Array, DictionaryArray, Int32Array, StringArray};
        use arrow::datatypes::Int32Type;
        use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
        use parquet::basic::Encoding;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.parquet");
        let rows = 300_000;
        let keys = Int64Array::from_iter_values((0..rows).map(|i| i * 3 + i % 7));
        let few = Int64Array::from_iter_values((0..rows).map(|i| i % 5));
        let days = Date32Array::from_iter_values((0..rows).map(|i| (i / 100) as i32));
        let unsigned = arrow::array::UInt64Array::from_iter_values((0..rows).map(|i| u64::MAX - i as u64 * 3));
        let modes = StringArray::from(vec!["AIR", "MAIL", "SHIP"]);
        let mode_keys = Int32Array::from_iter_values((0..rows).map(|i| ((i * 7) % 3) as i32));
        let dictionary = DictionaryArray::<Int32Type>::try_new(mode_keys, Arc::new(modes)).unwrap();
        let batch = RecordBatch::try_from_iter([
            ("key", Arc::new(keys) as ArrayRef),
            ("few", Arc::new(few) as ArrayRef),
            ("day", Arc::new(days) as ArrayRef),
            ("mode", Arc::new(dictionary) as ArrayRef),
            ("unsigned", Arc::new(unsigned) as ArrayRef),
        ])
        .unwrap();
        let schema = Schema::new(vec![
            Field::new("key", DataType::Int64, true),
            Field::new("few", DataType::Int64, true),
            Field::new("day", DataType::Date32, true),
            Field::new("mode", DataType::Utf8, true),
            Field::new("unsigned", DataType::UInt64, true),
        ]);
        let pool = MemoryPool::new(64 << 20);
        let mut sink = ParquetSink::create(&target, &schema, &pool).unwrap();
        for offset in (0..rows as usize).step_by(8192) {
            sink.write(&batch.slice(offset, 8192.min(rows as usize - offset))).unwrap();
        }
        Box::new(sink).finish().unwrap();
        assert_eq!(pool.reserved(), 0);
        let file = std::fs::File::open(&target).unwrap();
        let options = ArrowReaderOptions::new().with_encoding_stats_as_mask(false);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).unwrap();
        // The encodings of a column's data pages.
        let encodings = |column: usize| -> Vec<Encoding> {
            let meta = reader.metadata().row_group(0).column(column);
            let stats = meta.page_encoding_stats().unwrap().iter();
            stats.filter(|s| s.page_type == parquet::basic::PageType::DATA_PAGE).map(|s| s.encoding).collect()
        };
        // Keys fill the dictionary and go on as deltas, unsigned ones plain; the rest keep their
        // dictionaries.
        assert!(encodings(0).contains(&Encoding::DELTA_BINARY_PACKED), "{:?}", encodings(0));
        assert!(encodings(4).contains(&Encoding::PLAIN), "{:?}", encodings(4));
        assert!(!encodings(4).contains(&Encoding::DELTA_BINARY_PACKED), "{:?}", encodings(4));
        for column in 1..4 {
            assert!(!encodings(column).contains(&Encoding::DELTA_BINARY_PACKED), "{column}: {:?}", encodings(column));
            assert!(!encodings(column).contains(&Encoding::PLAIN), "{column}: {:?}", encodings(column));
        }
        let read: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let read = arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
        assert_eq!(read.column(0).as_ref(), batch.column(0).as_ref());
        assert_eq!(read.column(1).as_ref(), batch.column(1).as_ref());
        assert_eq!(read.column(2).as_ref(), batch.column(2).as_ref());
        let modes = arrow::compute::cast(batch.column(3), &DataType::Utf8).unwrap();
        assert_eq!(read.column(3).as_ref(), modes.as_ref());
        assert_eq!(read.column(4).as_ref(), batch.column(4).as_ref());
    }
}
