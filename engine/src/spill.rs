//! Spill files: record batches written to Parquet in a private temp folder and read back through
//! memory maps.
//!
//! * Each run owns one folder `flow-spill-*` under the spill dir, with a `pid` file naming its owner.
//!   At start, folders whose owner is dead are removed ([`SpillManager::new`]).
//! * A [`SpillWriter`] writes each batch as one row group (text LZ4_RAW, numbers plain, no
//!   statistics, no dictionary, no page index: see `spill_properties`), so the writer never
//!   buffers more than the batch it was given. The bytes on disk are counted against
//!   `--max-spill`; a write that would pass it fails with [`Error::SpillLimit`] and removes its
//!   file.
//! * A Parquet writer keeps every row group's metadata (a few KB each) until the footer is written,
//!   and a reader loads it all. A spill file of thousands of small batches (a partition filled a few
//!   rows at a time) would hold megabytes no reservation pays for, so a spill file is written as
//!   parts of at most 64 KiB of metadata ([`row_groups_per_part`]: from 4 to
//!   [`ROW_GROUPS_PER_PART`] row groups), each a Parquet file of its own, read back one after
//!   another. Operators holding many files open at once count [`open_file_bytes`] for each.
//! * A [`SpillFile`] deletes itself when dropped. Its [`SpillReader`] maps the file (memmap2), hands
//!   the Parquet reader zero-copy [`Bytes`] slices of the map, and after each row group tells the
//!   kernel to drop the pages it has read (`MADV_DONTNEED`), so mapped pages do not pile up in RSS.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use memmap2::{Mmap, UncheckedAdvice};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::error::{Error, Result};

const DIR_PREFIX: &str = "flow-spill-";

/// Row groups in one part of a spill file at most: bounds the metadata a writer or reader holds.
pub const ROW_GROUPS_PER_PART: usize = 64;

/// Bytes a decoded Parquet footer holds per row group and leaf column (`ColumnChunkMetaData` and
/// its share of the row group's; measured about 390).
const METADATA_PER_COLUMN_CHUNK: u64 = 512;

/// The metadata of one open part is kept under this. A merge holds a part of every run open at
/// once: with 64 row groups a part, the 178 runs of a top-k sort of TPC-H's 16-column `lineitem`
/// at a 32 MiB budget held 69 MiB of footers no reservation paid for.
pub(crate) const METADATA_PER_PART: u64 = 64 << 10;

/// Row groups in one part of a spill file of `schema`: as many as keep its metadata under
/// [`METADATA_PER_PART`], from 4 to [`ROW_GROUPS_PER_PART`].
pub fn row_groups_per_part(schema: &SchemaRef) -> usize {
    let per_group = leaf_columns(schema) as u64 * METADATA_PER_COLUMN_CHUNK;
    ((METADATA_PER_PART / per_group.max(1)) as usize).clamp(4, ROW_GROUPS_PER_PART)
}

/// Bytes of metadata an open reader (or writer) of a spill file of `schema` holds, beyond its
/// batches: what an operator holding many spill files open at once counts per file.
pub fn open_file_bytes(schema: &SchemaRef) -> u64 {
    row_groups_per_part(schema) as u64 * leaf_columns(schema).max(1) as u64 * METADATA_PER_COLUMN_CHUNK
}

/// Parquet leaf columns of `schema` (a struct or list counts its leaves).
fn leaf_columns(schema: &SchemaRef) -> usize {
    fn leaves(t: &arrow::datatypes::DataType) -> usize {
        use arrow::datatypes::DataType::*;
        match t {
            Struct(fields) => fields.iter().map(|f| leaves(f.data_type())).sum::<usize>().max(1),
            List(f) | LargeList(f) | FixedSizeList(f, _) | ListView(f) | LargeListView(f) => leaves(f.data_type()),
            Map(f, _) => leaves(f.data_type()),
            Dictionary(_, v) => leaves(v),
            _ => 1,
        }
    }
    schema.fields().iter().map(|f| leaves(f.data_type())).sum()
}

/// Counters of what a run spilled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpillStats {
    /// Spill files written.
    pub files: u64,
    /// Bytes written to spill files.
    pub bytes: u64,
    /// Rows written to spill files.
    pub rows: u64,
    /// The most bytes of spill files on disk at once.
    pub peak_on_disk: u64,
}

/// Owns a run's spill folder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpillManager {
    inner: Arc<SpillInner>,
}

#[derive(Debug)]
struct SpillInner {
    dir: tempfile::TempDir,
    /// Removes the folder at an abrupt exit too (see [`crate::scratch`]).
    _registration: crate::scratch::Registration,
    max_bytes: u64,
    on_disk: AtomicU64,
    peak_on_disk: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    rows: AtomicU64,
    next: AtomicU64,
}

impl SpillManager {
    /// Makes a private folder under `parent` (after removing folders of dead runs there), holding at
    /// most `max_bytes` of spill files at once.
    pub fn new(parent: &Path, max_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        remove_orphans(parent);
        let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
        let pid_path = dir.path().join("pid");
        std::fs::write(&pid_path, std::process::id().to_string()).map_err(|e| Error::io(pid_path, e))?;
        Ok(SpillManager {
            inner: Arc::new(SpillInner {
                _registration: crate::scratch::Registration::new(dir.path()),
                dir,
                max_bytes,
                on_disk: AtomicU64::new(0),
                peak_on_disk: AtomicU64::new(0),
                files: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                rows: AtomicU64::new(0),
                next: AtomicU64::new(0),
            }),
        })
    }

    /// The private folder.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// What has been spilled so far.
    pub fn stats(&self) -> SpillStats {
        let i = &self.inner;
        SpillStats {
            files: i.files.load(Ordering::Relaxed),
            bytes: i.bytes.load(Ordering::Relaxed),
            rows: i.rows.load(Ordering::Relaxed),
            peak_on_disk: i.peak_on_disk.load(Ordering::Relaxed),
        }
    }

    /// Bytes of spill files on disk now.
    pub fn on_disk(&self) -> u64 {
        self.inner.on_disk.load(Ordering::Relaxed)
    }

    /// Starts a spill file for batches of `schema`. `label` names the operator, for the file name.
    pub fn create(&self, schema: SchemaRef, label: &str) -> Result<SpillWriter> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let clean: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let stem = format!("{n:06}-{clean}");
        let path = self.dir().join(format!("{stem}.parquet"));
        let writer = self.open_part(&path, &schema)?;
        self.inner.files.fetch_add(1, Ordering::Relaxed);
        Ok(SpillWriter {
            part_row_groups: row_groups_per_part(&schema),
            file: Some(SpillFile { parts: vec![path], schema, rows: 0, bytes: 0, manager: self.clone() }),
            writer: Some(writer),
            stem,
            counted: 0,
            row_groups: 0,
        })
    }

    fn open_part(&self, path: &Path, schema: &SchemaRef) -> Result<ArrowWriter<File>> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let err = |e| Error::parquet(path, "writing spill file", e);
        let stored = stored_schema(schema);
        let props = spill_properties(&stored).map_err(err)?;
        ArrowWriter::try_new(file, stored, Some(props)).map_err(err)
    }

    fn charge(&self, bytes: u64) -> Result<()> {
        let i = &self.inner;
        let used = i.on_disk.fetch_add(bytes, Ordering::Relaxed);
        if used.saturating_add(bytes) > i.max_bytes {
            i.on_disk.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Error::SpillLimit { requested: bytes, used, limit: i.max_bytes });
        }
        i.bytes.fetch_add(bytes, Ordering::Relaxed);
        i.peak_on_disk.fetch_max(used + bytes, Ordering::Relaxed);
        Ok(())
    }
}

/// The schema a spill file of batches of `schema` is written with. Batches without columns (a
/// window under a query that reads none of its input's columns) keep their rows as a column of
/// nulls: Parquet counts rows only through columns, and such a file read back as empty batches.
fn stored_schema(schema: &SchemaRef) -> SchemaRef {
    match schema.fields().is_empty() {
        true => Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "__rows",
            arrow::datatypes::DataType::Null,
            true,
        )])),
        false => schema.clone(),
    }
}

/// How spill files are written: no statistics, no dictionary, no page index; byte-array columns
/// (text, binary) compressed with LZ4, fixed-width columns (numbers, dates, decimals) stored plain.
///
/// Text compresses well and cheaply (`l_comment` of TPC-H to about a third). Fixed-width values in
/// spilled runs are in the order of some other key, nearly random: LZ4 halved them, but it was a
/// fifth of the CPU of a sort's run phase (lineitem by `l_comment` at scale factor 10, 512 MiB),
/// and reading them back decompressed them again. Stored plain, that sort spilled 2.6 GiB instead
/// of 1.7 and took 32.0-36.9 s instead of 37.4-39.7 (all columns plain: 3.7 GiB, 33.8-37.2 s).
fn spill_properties(schema: &SchemaRef) -> parquet::errors::Result<WriterProperties> {
    let columns = parquet::arrow::ArrowSchemaConverter::new().convert(schema)?;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_dictionary_enabled(false)
        .set_offset_index_disabled(true);
    for column in columns.columns() {
        if column.physical_type() == parquet::basic::Type::BYTE_ARRAY {
            props = props.set_column_compression(column.path().clone(), Compression::LZ4_RAW);
        }
    }
    Ok(props.build())
}

/// Writes one spill file. Dropping it without [`finish`](Self::finish) removes the file.
pub struct SpillWriter {
    file: Option<SpillFile>,
    writer: Option<ArrowWriter<File>>,
    /// The file name without extension; parts after the first get `.<n>`.
    stem: String,
    /// Bytes of the current part already charged to the manager.
    counted: u64,
    /// Row groups in the current part.
    row_groups: usize,
    /// Row groups a part holds (see [`row_groups_per_part`]).
    part_row_groups: usize,
}

impl SpillWriter {
    /// Appends a batch as one row group.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let (Some(writer), Some(file)) = (self.writer.as_mut(), self.file.as_mut()) else {
            return Err(Error::Execution("spill writer used after finish".into()));
        };
        let path = file.parts.last().cloned().unwrap_or_default();
        let err = |e| Error::parquet(&path, "writing spill file", e);
        match batch.num_columns() {
            0 => {
                let rows: arrow::array::ArrayRef = Arc::new(arrow::array::NullArray::new(batch.num_rows()));
                let stored = RecordBatch::try_new(stored_schema(&file.schema), vec![rows])?;
                writer.write(&stored).map_err(err)?;
            }
            _ => writer.write(batch).map_err(err)?,
        }
        writer.flush().map_err(err)?;
        file.rows += batch.num_rows() as u64;
        self.row_groups += 1;
        self.charge_written()?;
        if self.row_groups >= self.part_row_groups {
            self.next_part()?;
        }
        Ok(())
    }

    /// Finishes the current part and starts the next.
    fn next_part(&mut self) -> Result<()> {
        self.finish_part()?;
        let file = self.file.as_mut().expect("spill file present");
        let path = file.manager.dir().join(format!("{}.{}.parquet", self.stem, file.parts.len()));
        // The part is listed first, so that the file's drop removes it whatever happens next.
        file.parts.push(path.clone());
        self.writer = Some(file.manager.open_part(&path, &file.schema)?);
        self.counted = 0;
        self.row_groups = 0;
        Ok(())
    }

    /// Writes the current part's footer and charges its bytes.
    fn finish_part(&mut self) -> Result<()> {
        let Some(mut writer) = self.writer.take() else { return Ok(()) };
        let file = self.file.as_mut().expect("spill file present");
        let path = file.parts.last().cloned().unwrap_or_default();
        writer.finish().map_err(|e| Error::parquet(&path, "writing spill file", e))?;
        let written = writer.bytes_written() as u64;
        drop(writer);
        if written > self.counted {
            file.manager.charge(written - self.counted)?;
            file.bytes += written - self.counted;
            self.counted = written;
        }
        Ok(())
    }

    fn charge_written(&mut self) -> Result<()> {
        let (Some(writer), Some(file)) = (self.writer.as_ref(), self.file.as_mut()) else { return Ok(()) };
        let written = writer.bytes_written() as u64;
        if written > self.counted {
            file.manager.charge(written - self.counted)?;
            // Charged bytes are released by SpillFile's drop.
            file.bytes += written - self.counted;
            self.counted = written;
        }
        Ok(())
    }

    /// Writes the footer and returns the finished file.
    pub fn finish(mut self) -> Result<SpillFile> {
        self.finish_part()?;
        let file = self.file.take().expect("spill file present");
        file.manager.inner.rows.fetch_add(file.rows, Ordering::Relaxed);
        Ok(file)
    }
}

/// A finished spill file (one or more parts on disk). Removed from disk when dropped.
#[derive(Debug)]
pub struct SpillFile {
    parts: Vec<PathBuf>,
    schema: SchemaRef,
    rows: u64,
    bytes: u64,
    manager: SpillManager,
}

impl SpillFile {
    /// Where the file is (its first part).
    pub fn path(&self) -> &Path {
        &self.parts[0]
    }

    /// Its parts, in order.
    pub fn parts(&self) -> &[PathBuf] {
        &self.parts
    }
    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.rows
    }
    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// The schema of its batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Opens the file for reading through memory maps, one part at a time.
    pub fn reader(&self) -> Result<SpillReader> {
        let mut reader =
            SpillReader { parts: self.parts.clone(), next_part: 0, schema: self.schema.clone(), current: None };
        reader.open_next()?;
        Ok(reader)
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        for part in &self.parts {
            let _ = std::fs::remove_file(part);
        }
        self.manager.inner.on_disk.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Drop for SpillWriter {
    fn drop(&mut self) {
        // An unfinished writer: drop the Parquet writer first so the file is closed, then the
        // SpillFile's drop removes its parts and returns the charged bytes.
        self.writer.take();
    }
}

struct SharedMap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Reads a spill file back, one row group (one spilled batch) at a time, part after part.
pub struct SpillReader {
    parts: Vec<PathBuf>,
    next_part: usize,
    schema: SchemaRef,
    current: Option<Box<PartReader>>,
}

/// One part, mapped.
struct PartReader {
    path: PathBuf,
    map: Arc<Mmap>,
    bytes: Bytes,
    meta: ArrowReaderMetadata,
    next_group: usize,
}

impl SpillReader {
    /// Maps the next part (dropping the current one); false when there is none.
    fn open_next(&mut self) -> Result<bool> {
        self.current = None;
        let Some(path) = self.parts.get(self.next_part).cloned() else { return Ok(false) };
        self.next_part += 1;
        let err = |e: &dyn std::fmt::Display| Error::Execution(format!("reading spill file {}: {e}", path.display()));
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: spill files are private to this run and never modified after `finish`.
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?);
        let bytes = Bytes::from_owner(SharedMap(map.clone()));
        let meta =
            ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::new().with_schema(stored_schema(&self.schema)))
                .map_err(|e| err(&e))?;
        self.current = Some(Box::new(PartReader { path, map, bytes, meta, next_group: 0 }));
        Ok(true)
    }

    /// The next spilled batch, or `None` at the end. Pages of the previous batch are released.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let Some(part) = self.current.as_mut() else { return Ok(None) };
            if let Some(batch) = part.next_batch()? {
                if self.schema.fields().is_empty() {
                    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                    return Ok(Some(RecordBatch::try_new_with_options(self.schema.clone(), vec![], &options)?));
                }
                return Ok(Some(batch));
            }
            if !self.open_next()? {
                return Ok(None);
            }
        }
    }
}

impl PartReader {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let groups = self.meta.metadata().num_row_groups();
        if self.next_group >= groups {
            return Ok(None);
        }
        let g = self.next_group;
        self.next_group += 1;
        let rows = self.meta.metadata().row_group(g).num_rows() as usize;
        let err =
            |e: &dyn std::fmt::Display| Error::Execution(format!("reading spill file {}: {e}", self.path.display()));
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(self.bytes.clone(), self.meta.clone())
            .with_row_groups(vec![g])
            .with_batch_size(rows.max(1))
            .build()
            .map_err(|e| err(&e))?;
        let mut batches = Vec::with_capacity(1);
        for batch in reader {
            batches.push(batch.map_err(|e| err(&e))?);
        }
        self.release_group(g);
        let batch = match batches.len() {
            0 => RecordBatch::new_empty(self.meta.schema().clone()),
            1 => batches.pop().unwrap(),
            _ => arrow::compute::concat_batches(self.meta.schema(), &batches)?,
        };
        Ok(Some(batch))
    }

    /// Tells the kernel it may drop the mapped pages of row group `g`: they were decoded into
    /// Arrow buffers and will not be read again.
    fn release_group(&self, g: usize) {
        let rg = self.meta.metadata().row_group(g);
        let (mut start, mut end) = (u64::MAX, 0u64);
        for col in rg.columns() {
            let (s, len) = col.byte_range();
            start = start.min(s);
            end = end.max(s + len);
        }
        let page = 4096u64;
        let start = start.div_ceil(page) * page;
        let end = (end / page) * page;
        if end > start && (end as usize) <= self.map.len() {
            // SAFETY: a read-only, file-backed private mapping: dropped pages are re-read from the
            // file if touched again, so no data is lost.
            let _ = unsafe {
                self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, start as usize, (end - start) as usize)
            };
        }
    }
}

impl Iterator for SpillReader {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

/// Removes spill folders under `parent` whose owning process is gone.
fn remove_orphans(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let owner = std::fs::read_to_string(path.join("pid")).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let dead = match owner {
            Some(pid) => !process_alive(pid),
            // No pid file: either a run that is just starting, or one that died right away. Only
            // remove it once it is clearly old.
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().map(|d| d.as_secs() > 3600).unwrap_or(false))
                .unwrap_or(false),
        };
        if dead {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

pub(crate) fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
#[path = "spill_tests.rs"]
mod tests;
