//! Sources: Parquet, CSV and NDJSON files, one file, a glob or a directory, read in morsels.
//!
//! A [`Table`] resolves its files once, reads each file's schema (Parquet footers, or a sample of
//! CSV/NDJSON rows) and unifies them: a column missing from some files reads as nulls there, integer
//! widths and float widths widen, string flavours (`Utf8`, `LargeUtf8`, `Utf8View`) become `Utf8`.
//! Columns whose types cannot be reconciled are an error naming both files.
//!
//! The unit of parallel work is a [`Morsel`]: a row group of a Parquet file, or a whole CSV/NDJSON
//! file. [`Table::scan_morsel`] decodes one morsel in batches, reading only the projected columns.

mod compressed;
mod csv;
mod hive;
mod json;
mod parquet;
pub(crate) use parquet::prefetch_limit;
mod pruning;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub use self::csv::CsvOptions;
pub use self::pruning::PruningPredicate;
use crate::error::{Error, Result};

/// The format of a source's files.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Delimited text.
    Csv(CsvOptions),
    /// Newline-delimited JSON, one object a line.
    Json,
}

impl Format {
    /// The format a path's extension implies (`.parquet`, `.csv`/`.tsv`, `.json`/`.ndjson`/`.jsonl`).
    pub fn from_path(path: &str) -> Option<Format> {
        let lower = compressed::without_suffix(path).to_ascii_lowercase();
        if lower.ends_with(".parquet") || lower.ends_with(".pq") {
            Some(Format::Parquet)
        } else if lower.ends_with(".csv") || lower.ends_with(".txt") {
            Some(Format::Csv(CsvOptions::default()))
        } else if lower.ends_with(".tsv") {
            Some(Format::Csv(CsvOptions { delimiter: b'\t', ..CsvOptions::default() }))
        } else if lower.ends_with(".json") || lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

/// One file of a table, with what was learnt about it when the table was opened.
#[derive(Debug)]
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub schema: SchemaRef,
    pub parquet: Option<::parquet::arrow::arrow_reader::ArrowReaderMetadata>,
    /// Values of the hive partition columns (`category=A/` folders above the file), in the
    /// table's order, each a one-element array of the column's type (null for
    /// `__HIVE_DEFAULT_PARTITION__`).
    pub partition: Vec<ArrayRef>,
}

/// A unit of parallel scan work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Morsel {
    /// Index of the file in the table.
    pub file: usize,
    /// Row group of a Parquet file; 0 for other formats.
    pub row_group: usize,
    /// Byte range of a CSV file slice (whole records only); `None` for the whole file.
    pub range: Option<(u64, u64)>,
}

/// A set of files read as one table.
#[derive(Debug)]
pub struct Table {
    name: String,
    format: Format,
    files: Vec<SourceFile>,
    schema: SchemaRef,
    /// Column statistics, gathered from the footers the first time the optimizer asks.
    stats: std::sync::OnceLock<Vec<ColumnStats>>,
}

/// What the files' statistics say about one column, for the optimizer's estimates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnStats {
    /// The smallest value as a number (integers, decimals and floats as they are, dates in days,
    /// timestamps in their unit), when every file records it.
    pub min: Option<f64>,
    /// The largest value, likewise.
    pub max: Option<f64>,
    /// Nulls, when every file records them.
    pub nulls: Option<u64>,
    /// Distinct values, when they can be bounded: an integer-like column holds at most one value
    /// per step of its range.
    pub distinct: Option<f64>,
}

/// Counters a scan updates as it reads, for progress display and reports.
#[derive(Debug, Default)]
pub struct ScanCounters {
    /// Rows decoded.
    pub rows: std::sync::atomic::AtomicU64,
    /// Bytes of input files read (compressed size of the column chunks, or file bytes).
    pub bytes: std::sync::atomic::AtomicU64,
    /// Scan workers running now (on the engine's thread pool).
    pub workers: std::sync::atomic::AtomicUsize,
    /// Rows of the row groups read that page statistics ruled out (not decoded).
    pub page_pruned_rows: std::sync::atomic::AtomicU64,
    /// Rows an early test dropped (a filter's conditions, a join's keys, see
    /// [`Table::scan_morsel_encoded`]): their other columns were not decoded, or not kept.
    pub early_dropped_rows: std::sync::atomic::AtomicU64,
}

impl Table {
    /// Opens `location` (a file, a glob such as `data/*.parquet`, or a directory) in `format`; with
    /// `None` the format comes from the file extension. Its files must have the same columns
    /// (their order and compatible types may differ), as DuckDB wants; see [`Table::open_with`].
    pub fn open(name: &str, location: &str, format: Option<Format>) -> Result<Table> {
        Self::open_with(name, location, format, false)
    }

    /// [`Table::open`]; with `union_by_name`, files may have different columns: the table has
    /// every column of any file, null in the files that lack it (DuckDB's `union_by_name`).
    pub fn open_with(name: &str, location: &str, format: Option<Format>, union_by_name: bool) -> Result<Table> {
        let paths = resolve_paths(location)?;
        let format = match format {
            Some(f) => f,
            None => Format::from_path(location)
                .or_else(|| paths.first().and_then(|p| Format::from_path(&p.to_string_lossy())))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "source '{name}': cannot tell the format of '{location}' from its extension (hint: give format = \"parquet\", \"csv\" or \"json\")"
                    ))
                })?,
        };
        let mut files = Vec::with_capacity(paths.len());
        for path in &paths {
            let (schema, parquet) = match &format {
                Format::Parquet => {
                    let meta = parquet::open_metadata(path)?;
                    (meta.schema().clone(), Some(meta))
                }
                Format::Csv(options) => (csv::infer_schema(path, options)?, None),
                Format::Json => (json::infer_schema(path)?, None),
            };
            files.push(SourceFile { path: path.clone(), schema, parquet, partition: Vec::new() });
        }
        if !union_by_name {
            same_columns(&files)?;
        }
        let schema = unify_schemas(&files)?;
        let schema = hive::add_partition_columns(location, &paths, &mut files, schema)?;
        Ok(Table { name: name.to_string(), format, files, schema, stats: Default::default() })
    }

    /// Statistics of every column (see [`ColumnStats`]); empty values where the files have none.
    pub fn column_stats(&self) -> &[ColumnStats] {
        self.stats.get_or_init(|| {
            let rows = self.row_count();
            (0..self.schema.fields().len()).map(|c| self.gather_stats(c, rows)).collect()
        })
    }

    fn gather_stats(&self, column: usize, rows: Option<u64>) -> ColumnStats {
        use ::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
        let field = self.schema.field(column);
        let numeric = |a: ArrayRef| -> Option<arrow::array::Float64Array> {
            let a = match a.data_type() {
                DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
                    arrow::compute::cast(&a, &DataType::Int64).ok()?
                }
                _ => a,
            };
            let f = arrow::compute::cast(&a, &DataType::Float64).ok()?;
            Some(arrow::array::AsArray::as_primitive::<arrow::datatypes::Float64Type>(&f).clone())
        };
        let first_partition = self.schema.fields().len() - self.files.first().map_or(0, |f| f.partition.len());
        let (mut min, mut max, mut nulls) = (f64::INFINITY, f64::NEG_INFINITY, 0u64);
        let mut partition_values = std::collections::HashSet::new();
        for file in &self.files {
            let (mins, maxes, file_nulls) = if column >= first_partition {
                let value = file.partition[column - first_partition].clone();
                partition_values.insert(arrow::util::display::array_value_to_string(&value, 0).unwrap_or_default());
                let n = file.parquet.as_ref().map_or(0, |m| m.metadata().file_metadata().num_rows() as u64);
                let file_nulls = if arrow::array::Array::is_null(&value, 0) { n } else { 0 };
                (value.clone(), value, Some(file_nulls))
            } else {
                let Some(meta) = &file.parquet else { return ColumnStats::default() };
                let Ok(converter) = StatisticsConverter::try_new(field.name(), meta.schema(), meta.parquet_schema())
                else {
                    return ColumnStats::default();
                };
                let groups = meta.metadata().row_groups();
                let (Ok(mins), Ok(maxes)) =
                    (converter.row_group_mins(groups.iter()), converter.row_group_maxes(groups.iter()))
                else {
                    return ColumnStats::default();
                };
                let file_nulls =
                    converter.row_group_null_counts(groups.iter()).ok().and_then(|n| n.iter().sum::<Option<u64>>());
                (mins, maxes, file_nulls)
            };
            nulls = match (file_nulls, nulls) {
                (Some(n), total) => total + n,
                (None, _) => u64::MAX,
            };
            let (Some(mins), Some(maxes)) = (numeric(mins), numeric(maxes)) else {
                min = f64::NAN;
                continue;
            };
            for v in mins.iter() {
                match v {
                    Some(v) => min = min.min(v),
                    None => min = f64::NAN,
                }
            }
            for v in maxes.iter() {
                match v {
                    Some(v) => max = max.max(v),
                    None => max = f64::NAN,
                }
            }
        }
        let known = |v: f64| (v.is_finite()).then_some(v);
        let (min, max) = if min.is_nan() || max.is_nan() { (None, None) } else { (known(min), known(max)) };
        let nulls = (nulls != u64::MAX).then_some(nulls);
        let step = match field.data_type() {
            t if t.is_integer() => Some(1.0),
            DataType::Date32 | DataType::Date64 => Some(1.0),
            DataType::Decimal128(_, s) => Some(10f64.powi(-(*s as i32))),
            _ => None,
        };
        let mut distinct = match (min, max, step) {
            (Some(lo), Some(hi), Some(step)) => Some(((hi - lo) / step).floor() + 1.0),
            _ => None,
        };
        if column >= first_partition && !partition_values.is_empty() {
            distinct = Some(partition_values.len() as f64);
        }
        if distinct.is_none() && column < first_partition {
            distinct = self.dictionary_distinct(field.name(), rows);
        }
        if let (Some(d), Some(rows)) = (distinct, rows) {
            distinct = Some(d.min(rows.max(1) as f64));
        }
        ColumnStats { min, max, nulls, distinct }
    }

    /// Distinct values of a string column, from the dictionary pages of a few of its column chunks
    /// (read from disk: a dictionary page is small). A chunk whose dictionary holds a value per
    /// few rows tells of a column of distinct values, counted at the same rate over the table; one
    /// whose values did not all fit its dictionary (the writer fell back to plain pages), or
    /// without a dictionary, tells nothing.
    fn dictionary_distinct(&self, name: &str, rows: Option<u64>) -> Option<f64> {
        use ::parquet::basic::{Encoding, PageType};
        use ::parquet::file::metadata::ParquetMetaDataReader;
        const SAMPLES: usize = 3;
        let chunks: Vec<(usize, usize)> = self
            .files
            .iter()
            .enumerate()
            .flat_map(|(f, file)| {
                (0..file.parquet.as_ref().map_or(0, |m| m.metadata().num_row_groups())).map(move |g| (f, g))
            })
            .collect();
        let step = chunks.len().div_ceil(SAMPLES).max(1);
        let mut most = 0.0f64;
        for &(f, g) in chunks.iter().step_by(step) {
            let file = &self.files[f];
            let meta = file.parquet.as_ref()?;
            let leaf = meta.parquet_schema().columns().iter().position(|c| c.path().parts() == [name])?;
            let chunk = meta.metadata().row_group(g).column(leaf);
            let all_dictionary = chunk.page_encoding_stats()?.iter().all(|s| {
                !matches!(s.page_type, PageType::DATA_PAGE | PageType::DATA_PAGE_V2)
                    || matches!(s.encoding, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY)
            });
            if !all_dictionary {
                return None;
            }
            let handle = std::fs::File::open(&file.path).ok()?;
            let values = ParquetMetaDataReader::read_column_dictionary(&handle, meta.metadata(), g, leaf).ok()??;
            let group_rows = meta.metadata().row_group(g).num_rows().max(1) as f64;
            let share = values.len() as f64 / group_rows;
            // More than one value in ten rows: a column of (nearly) distinct values.
            let estimate = match rows {
                Some(total) if share > 0.1 => share * total as f64,
                _ => values.len() as f64,
            };
            most = most.max(estimate);
        }
        (most > 0.0).then_some(most)
    }

    /// Memory the files' footers take as this table holds them (a file written in thousands of
    /// small row groups holds megabytes of metadata); counted in the pool while the table is
    /// registered or read.
    ///
    /// A footer is decoded into many small allocations (a few per column chunk), each costing the
    /// allocator a header and rounding: the resident size of footers of 35K row groups was 1.10 to
    /// 1.16 times what Parquet's `memory_size` counts, so a quarter more is counted.
    pub fn metadata_bytes(&self) -> u64 {
        let bytes: u64 = self
            .files
            .iter()
            .map(|f| {
                f.parquet.as_ref().map_or(0, |m| m.metadata().memory_size() as u64) + f.path.as_os_str().len() as u64
            })
            .sum();
        bytes + bytes / 4
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unified schema of all its files.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The format of its files.
    pub fn format(&self) -> &Format {
        &self.format
    }

    /// Its files.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Total rows, when the format records it (Parquet).
    pub fn row_count(&self) -> Option<u64> {
        self.files.iter().map(|f| f.parquet.as_ref().map(|m| m.metadata().file_metadata().num_rows() as u64)).sum()
    }

    /// The morsels to scan: every row group that `pruning` cannot rule out; slices of large CSV
    /// files (cut at record boundaries, outside quotes); whole NDJSON files. Reads large CSV
    /// files to find the boundaries, so call it when about to scan.
    pub fn morsels(&self, pruning: Option<&PruningPredicate>) -> Result<Vec<Morsel>> {
        let mut out = Vec::new();
        for (i, file) in self.files.iter().enumerate() {
            match (&file.parquet, &self.format) {
                (Some(meta), _) => {
                    let keep = pruning.map(|p| p.row_groups_to_scan(meta, &self.schema, &file.partition));
                    for rg in 0..meta.metadata().num_row_groups() {
                        if keep.as_ref().is_none_or(|k| k[rg]) {
                            out.push(Morsel { file: i, row_group: rg, range: None });
                        }
                    }
                }
                (None, Format::Csv(options)) => {
                    for range in csv::slices(&file.path, options)? {
                        out.push(Morsel { file: i, row_group: 0, range });
                    }
                }
                (None, _) => out.push(Morsel { file: i, row_group: 0, range: None }),
            }
        }
        Ok(out)
    }

    /// The smallest and the largest value of `column` in each of `morsels`, from the Parquet
    /// statistics, for a column of signed integers or dates (whose recorded bounds are exact) with
    /// no nulls; `None` when a morsel's statistics do not say all of that.
    pub(crate) fn morsel_int_ranges(&self, column: usize, morsels: &[Morsel]) -> Option<Vec<(i64, i64)>> {
        use ::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
        use arrow::array::{Array, AsArray, Int64Array};
        use arrow::datatypes::Int64Type;
        let field = self.schema.field(column);
        let signed = matches!(
            field.data_type(),
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::Date32 | DataType::Date64
        );
        if !signed || self.files.iter().any(|f| column >= self.schema.fields().len() - f.partition.len()) {
            return None;
        }
        // Each file's row groups at once: (mins, maxes) as Int64, null counts.
        let mut per_file: Vec<Option<(Int64Array, Int64Array, arrow::array::UInt64Array)>> =
            vec![None; self.files.len()];
        let mut out = Vec::with_capacity(morsels.len());
        for morsel in morsels {
            let file = &self.files[morsel.file];
            if morsel.range.is_some() {
                return None;
            }
            if per_file[morsel.file].is_none() {
                let meta = file.parquet.as_ref()?;
                let converter =
                    StatisticsConverter::try_new(field.name(), meta.schema(), meta.parquet_schema()).ok()?;
                let groups = meta.metadata().row_groups();
                let ints = |a: ArrayRef| -> Option<Int64Array> {
                    Some(arrow::compute::cast(&a, &DataType::Int64).ok()?.as_primitive::<Int64Type>().clone())
                };
                let mins = ints(converter.row_group_mins(groups.iter()).ok()?)?;
                let maxes = ints(converter.row_group_maxes(groups.iter()).ok()?)?;
                let nulls = converter.row_group_null_counts(groups.iter()).ok()?;
                per_file[morsel.file] = Some((mins, maxes, nulls));
            }
            let (mins, maxes, nulls) = per_file[morsel.file].as_ref()?;
            let rg = morsel.row_group;
            if mins.is_null(rg) || maxes.is_null(rg) || nulls.is_null(rg) || nulls.value(rg) != 0 {
                return None;
            }
            out.push((mins.value(rg), maxes.value(rg)));
        }
        Some(out)
    }

    /// Whether the files are Parquet (whose morsels are row groups with known sizes).
    pub fn is_parquet(&self) -> bool {
        self.format == Format::Parquet
    }

    /// Row groups in the table (for reports on pruning).
    pub fn row_group_count(&self) -> usize {
        self.files.iter().map(|f| f.parquet.as_ref().map_or(1, |m| m.metadata().num_row_groups())).sum()
    }

    /// Rows in a morsel, when the format records it (a Parquet row group).
    pub fn morsel_rows(&self, morsel: Morsel) -> Option<u64> {
        let meta = self.files[morsel.file].parquet.as_ref()?;
        Some(meta.metadata().row_group(morsel.row_group).num_rows() as u64)
    }

    /// Estimated decoded bytes per row of the given columns in a morsel, from Parquet metadata where
    /// there is some, else from the column types.
    pub fn estimated_row_bytes(&self, morsel: Morsel, projection: &[usize]) -> u64 {
        let file = &self.files[morsel.file];
        let from_types = || projection.iter().map(|&c| type_width(self.schema.field(c).data_type())).sum::<u64>();
        match &file.parquet {
            Some(meta) => {
                parquet::estimated_row_bytes(meta, morsel.row_group, &self.schema, projection).max(from_types())
            }
            None => from_types(),
        }
    }

    /// Bytes of raw input that one morsel reads for the given columns, so the reader's page buffers
    /// can be sized: the largest column chunk's share, capped at one page per column.
    /// With a pruning predicate, also the page index read to skip pages.
    pub fn page_buffer_bytes(
        &self,
        morsel: Morsel,
        projection: &[usize],
        pruning: Option<&PruningPredicate>,
        prefetch: u64,
    ) -> u64 {
        let file = &self.files[morsel.file];
        match &file.parquet {
            Some(meta) => {
                parquet::page_buffer_bytes(meta, morsel.row_group, &self.schema, projection, pruning, prefetch)
            }
            // CSV and JSON readers buffer a block of the file at a time.
            None => csv::READ_BUFFER_BYTES + compressed::decoder_bytes(&file.path),
        }
    }

    /// Decodes one morsel, `batch_rows` rows at a time, with only the `projection` columns (indices into
    /// [`Table::schema`]), calling `emit` with each batch until it returns `false`. With a pruning
    /// predicate, pages of a Parquet row group that its page index rules out are skipped (the
    /// predicate must still be applied to the rows).
    pub fn scan_morsel(
        &self,
        morsel: Morsel,
        projection: &[usize],
        pruning: Option<&PruningPredicate>,
        batch_rows: usize,
        counters: &ScanCounters,
        emit: &mut dyn FnMut(RecordBatch) -> Result<bool>,
    ) -> Result<()> {
        self.scan_morsel_encoded(morsel, projection, pruning, batch_rows, counters, &[], None, 0, emit)
    }

    /// [`scan_morsel`](Self::scan_morsel), with the string columns at positions `dictionaries`
    /// of the projection handed out as `Dictionary(Int32, Utf8)` arrays (and their batches' schemas
    /// saying so) in the Parquet row groups that store them dictionary-encoded throughout. With
    /// `early`, a Parquet scan hands out only the rows its test passes, and decodes the columns
    /// the test does not read for those rows only; other scans ignore it, as does one with
    /// partition columns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn scan_morsel_encoded(
        &self,
        morsel: Morsel,
        projection: &[usize],
        pruning: Option<&PruningPredicate>,
        batch_rows: usize,
        counters: &ScanCounters,
        dictionaries: &[usize],
        early: Option<EarlyTest>,
        prefetch: u64,
        emit: &mut dyn FnMut(RecordBatch) -> Result<bool>,
    ) -> Result<()> {
        let file = &self.files[morsel.file];
        let out_schema = Arc::new(self.schema.project(projection)?);
        // Partition columns come from the folder names, not the file.
        let first_partition = self.schema.fields().len() - file.partition.len();
        let partition_columns: Vec<(usize, &ArrayRef)> = projection
            .iter()
            .enumerate()
            .filter(|(_, &c)| c >= first_partition)
            .map(|(i, &c)| (i, &file.partition[c - first_partition]))
            .collect();
        let keep: Vec<bool> = (0..projection.len()).map(|i| dictionaries.contains(&i)).collect();
        let mut adapt = |batch: RecordBatch| -> Result<bool> {
            let mut batch = adapt_batch(batch, &out_schema, &keep).map_err(|e| Error::bad_file(&file.path, e))?;
            if !partition_columns.is_empty() {
                batch = hive::fill(batch, &partition_columns)?;
            }
            counters.rows.fetch_add(batch.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
            emit(batch)
        };
        match &self.format {
            Format::Parquet => {
                let early = early.filter(|_| partition_columns.is_empty());
                let first = match early {
                    Some(e) => {
                        let keep: Vec<bool> = e.columns.iter().map(|c| dictionaries.contains(c)).collect();
                        Some((Arc::new(out_schema.project(e.columns)?), keep, e.keeps))
                    }
                    None => None,
                };
                let mut keeps = first.as_ref().map(|(schema, keep_dictionary, keeps)| {
                    move |batch: RecordBatch| -> Result<arrow::array::BooleanArray> {
                        let batch =
                            adapt_batch(batch, schema, keep_dictionary).map_err(|e| Error::bad_file(&file.path, e))?;
                        let keep = keeps(&batch)?;
                        // The rows the test drops were read all the same.
                        let dropped = (batch.num_rows() - keep.true_count()) as u64;
                        counters.rows.fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
                        counters.early_dropped_rows.fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
                        Ok(keep)
                    }
                });
                let split = first.as_ref().zip(keeps.as_mut()).map(|((schema, ..), keeps)| parquet::Split {
                    names: schema.fields().iter().map(|f| f.name().as_str()).collect(),
                    keeps,
                });
                parquet::scan(
                    file,
                    morsel.row_group,
                    &out_schema,
                    batch_rows,
                    counters,
                    pruning,
                    &self.schema,
                    &dictionaries.iter().map(|&i| out_schema.field(i).name().as_str()).collect::<Vec<_>>(),
                    split,
                    prefetch,
                    &mut adapt,
                )
            }
            Format::Csv(options) => {
                csv::scan(file, morsel.range, options, &out_schema, batch_rows, counters, &mut adapt)
            }
            Format::Json => json::scan(file, &out_schema, batch_rows, counters, &mut adapt),
        }
    }
}

/// A test of rows by some of a scan's columns, run before the other columns are decoded (see
/// [`Table::scan_morsel_encoded`]).
pub(crate) struct EarlyTest<'a> {
    /// Positions in the projection of the columns the test reads.
    pub columns: &'a [usize],
    /// Which rows pass, given a batch of those columns (in that order).
    pub keeps: &'a dyn Fn(&RecordBatch) -> Result<arrow::array::BooleanArray>,
}

/// The files a location names: a file, a directory (its files, sorted, hidden ones skipped) or a
/// glob (sorted). An error when none match.
pub fn expand_files(location: &str) -> Result<Vec<PathBuf>> {
    resolve_paths(location)
}

/// Finds the files a location names: a file, a directory (its files, sorted, hidden ones skipped) or
/// a glob (sorted).
fn resolve_paths(location: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(location);
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found = Vec::new();
    if path.is_dir() {
        collect_dir(path, &mut found).map_err(|e| Error::bad_file(path, e))?;
    } else if location.contains(['*', '?', '[']) {
        let entries = glob::glob(location).map_err(|e| Error::Config(format!("bad glob '{location}': {e}")))?;
        for entry in entries {
            let p = entry.map_err(|e| Error::bad_file(e.path(), e.error()))?;
            if p.is_file() {
                found.push(p);
            }
        }
    } else {
        return Err(Error::bad_file(path, "no such file or directory"));
    }
    if found.is_empty() {
        return Err(Error::bad_file(path, "no files match"));
    }
    found.sort();
    Ok(found)
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            collect_dir(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// The type flow computes with for a type found in a file.
pub(crate) fn normalize_type(t: &DataType) -> DataType {
    match t {
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::Dictionary(_, v) => normalize_type(v),
        other => other.clone(),
    }
}

/// The type two files' columns unify to, if any.
fn unify_types(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    let int_rank = |t: &DataType| match t {
        Int8 => Some(1),
        Int16 | UInt8 => Some(2),
        Int32 | UInt16 => Some(3),
        Int64 | UInt32 => Some(4),
        _ => None,
    };
    Some(match (a, b) {
        (Null, t) | (t, Null) => t.clone(),
        _ if int_rank(a).is_some() && int_rank(b).is_some() => match int_rank(a).max(int_rank(b)) {
            Some(1) => Int8,
            Some(2) => Int16,
            Some(3) => Int32,
            _ => Int64,
        },
        (Float32 | Float64, Float32 | Float64) => Float64,
        (Float32 | Float64, t) | (t, Float32 | Float64) if int_rank(t).is_some() => Float64,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            let scale = (*s1).max(*s2);
            let int_digits = (*p1 as i8 - *s1).max(*p2 as i8 - *s2);
            Decimal128(((int_digits + scale) as u8).min(38), scale)
        }
        (Timestamp(u1, tz1), Timestamp(u2, tz2)) if tz1 == tz2 => {
            use arrow::datatypes::TimeUnit::*;
            let rank = |u: &arrow::datatypes::TimeUnit| match u {
                Second => 0,
                Millisecond => 1,
                Microsecond => 2,
                Nanosecond => 3,
            };
            Timestamp(if rank(u1) >= rank(u2) { *u1 } else { *u2 }, tz1.clone())
        }
        (Date32, Timestamp(u, tz)) | (Timestamp(u, tz), Date32) => Timestamp(*u, tz.clone()),
        _ => return None,
    })
}

/// Files read as one table have the same columns, unless the user asked to union them by name:
/// a glob that picks up a file of another kind is more often a mistake than a wish.
fn same_columns(files: &[SourceFile]) -> Result<()> {
    let Some(first) = files.first() else { return Ok(()) };
    let names = |f: &SourceFile| -> Vec<String> { f.schema.fields().iter().map(|c| c.name().clone()).collect() };
    let expected = names(first);
    for file in &files[1..] {
        let found = names(file);
        let missing = expected.iter().find(|c| !found.contains(c));
        let extra = found.iter().find(|c| !expected.contains(c));
        let (column, has, lacks) = match (missing, extra) {
            (Some(c), _) => (c, first, file),
            (None, Some(c)) => (c, file, first),
            (None, None) => continue,
        };
        return Err(Error::Schema(format!(
            "column '{column}' is in {} but not in {} (hint: union_by_name = true reads files of different columns \
             by name, with nulls where a file lacks one: read_parquet('...', union_by_name = true), or in a \
             pipeline's source)",
            has.path.display(),
            lacks.path.display()
        )));
    }
    Ok(())
}

fn unify_schemas(files: &[SourceFile]) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = Vec::new();
    let mut origin: Vec<usize> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        for f in file.schema.fields() {
            let t = normalize_type(f.data_type());
            match fields.iter().position(|g| g.name() == f.name()) {
                Some(j) => {
                    let unified = unify_types(fields[j].data_type(), &t).ok_or_else(|| {
                        Error::Schema(format!(
                            "column '{}' is {} in {} but {} in {} (hint: cast it in one of the files, or read them as separate sources)",
                            f.name(),
                            fields[j].data_type(),
                            files[origin[j]].path.display(),
                            f.data_type(),
                            file.path.display()
                        ))
                    })?;
                    fields[j] = Field::new(f.name(), unified, true);
                }
                None => {
                    fields.push(Field::new(f.name(), t, true));
                    origin.push(i);
                }
            }
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Casts a decoded batch to the table's (projected) schema: columns by name, missing ones as nulls,
/// types widened or normalized.
///
/// A column flagged in `keep_dictionary` may stay a dictionary of the field's type (the batch's
/// schema then says so).
fn adapt_batch(
    batch: RecordBatch,
    schema: &SchemaRef,
    keep_dictionary: &[bool],
) -> std::result::Result<RecordBatch, String> {
    // The flagged columns that did come as dictionaries of the right type: the target says so.
    let kept = |i: usize, f: &arrow::datatypes::Field| match batch.column_by_name(f.name()).map(|c| c.data_type()) {
        Some(t @ DataType::Dictionary(_, v))
            if keep_dictionary.get(i) == Some(&true) && v.as_ref() == f.data_type() =>
        {
            Some(t.clone())
        }
        _ => None,
    };
    if schema.fields().iter().enumerate().any(|(i, f)| kept(i, f).is_some()) {
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| match kept(i, f) {
                Some(t) => f.as_ref().clone().with_data_type(t),
                None => f.as_ref().clone(),
            })
            .collect();
        let encoded =
            std::sync::Arc::new(arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone()));
        return adapt_batch(batch, &encoded, &[]);
    }
    if batch.schema().fields().len() == schema.fields().len()
        && batch
            .schema()
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type())
    {
        return RecordBatch::try_new_with_options(
            schema.clone(),
            batch.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
        .map_err(|e| e.to_string());
    }
    let rows = batch.num_rows();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(col) if col.data_type() == f.data_type() => Ok(col.clone()),
            Some(col) => arrow::compute::cast(col, f.data_type()).map_err(|e| format!("column '{}': {e}", f.name())),
            None => Ok(new_null_array(f.data_type(), rows)),
        })
        .collect::<std::result::Result<_, _>>()?;
    RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(rows)))
        .map_err(|e| e.to_string())
}

/// Bytes a value of this type takes in an Arrow array, roughly (strings: offsets plus a guess).
pub(crate) fn type_width(t: &DataType) -> u64 {
    match t.primitive_width() {
        Some(w) => w as u64,
        None => match t {
            DataType::Boolean | DataType::Null => 1,
            DataType::Utf8 | DataType::Binary => 4 + 16,
            DataType::LargeUtf8 | DataType::LargeBinary => 8 + 16,
            DataType::Utf8View | DataType::BinaryView => 16 + 16,
            _ => 32,
        },
    }
}
