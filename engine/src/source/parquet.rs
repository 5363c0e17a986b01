//! Parquet files: footers read once when the table opens, row groups decoded on demand.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;

use parquet::arrow::arrow_reader::RowSelection;
use parquet::file::metadata::{ColumnChunkMask, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use super::{PruningPredicate, ScanCounters, SourceFile};
use crate::error::{Error, Result};

pub(super) fn open_metadata(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = File::open(path).map_err(|e| Error::bad_file(path, e))?;
    let bad = |e: parquet::errors::ParquetError| Error::bad_file(path, format!("not a readable parquet file: {e}"));
    // Full page encoding stats: they tell how many pages a column chunk has, so how big one page is.
    let options = ArrowReaderOptions::new().with_encoding_stats_as_mask(false);
    let meta = ArrowReaderMetadata::load(&file, options.clone()).map_err(bad)?;
    // Decode string views, large strings and dictionaries straight into the types flow computes
    // with, instead of decoding one way and casting.
    let schema = meta.schema();
    let normalized: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(super::normalize_type(f.data_type())))
        .collect();
    if normalized.iter().zip(schema.fields()).all(|(a, b)| a.data_type() == b.data_type()) {
        return Ok(meta);
    }
    let hinted =
        std::sync::Arc::new(arrow::datatypes::Schema::new_with_metadata(normalized, schema.metadata().clone()));
    // A hint the reader cannot honour falls back to decoding as written (the scan casts).
    Ok(ArrowReaderMetadata::try_new(meta.metadata().clone(), options.with_schema(hinted)).unwrap_or(meta))
}

/// Leaf columns of the file that belong to the named top-level columns.
fn leaves_of(meta: &ArrowReaderMetadata, names: &[&str]) -> Vec<usize> {
    let descr = meta.parquet_schema();
    let roots: Vec<usize> = names.iter().filter_map(|n| meta.schema().index_of(n).ok()).collect();
    (0..descr.num_columns()).filter(|&leaf| roots.contains(&descr.get_column_root_idx(leaf))).collect()
}

fn projected_names<'a>(schema: &'a arrow::datatypes::Schema, projection: &[usize]) -> Vec<&'a str> {
    projection.iter().map(|&i| schema.field(i).name().as_str()).collect()
}

pub(super) fn estimated_row_bytes(
    meta: &ArrowReaderMetadata,
    row_group: usize,
    table_schema: &arrow::datatypes::Schema,
    projection: &[usize],
) -> u64 {
    let rg = meta.metadata().row_group(row_group);
    let rows = rg.num_rows().max(1) as u64;
    let names = projected_names(table_schema, projection);
    let bytes: u64 = leaves_of(meta, &names).iter().map(|&l| decoded_bytes(rg.column(l), rows)).sum();
    bytes.div_ceil(rows)
}

/// About what a column chunk takes decoded into Arrow arrays. Fixed-width values take what the
/// chunk holds uncompressed. Strings and binaries take more, and the decoder grows its value
/// buffer by doubling, so a batch holds up to twice its values' bytes (200-byte strings estimated
/// at 64 KiB a batch took 101 KiB, and a run accepted at its minimum failed). Their decoded bytes
/// come from the chunk's size statistics when the writer recorded them (parquet-rs does; format
/// 2.10 added them): a dictionary-encoded chunk stores each value once, and 101 strings of up to
/// 150 bytes repeated over 1752 rows took 17 KiB stored and 250 KiB decoded. Without them, from
/// the longest of the statistics' minimum and maximum when they are exact, which is only a hint
/// (a string between them may be longer than both).
fn decoded_bytes(column: &parquet::file::metadata::ColumnChunkMetaData, rows: u64) -> u64 {
    use parquet::basic::Type;
    let stored = column.uncompressed_size().max(0) as u64;
    if !matches!(column.column_type(), Type::BYTE_ARRAY | Type::FIXED_LEN_BYTE_ARRAY) {
        return stored;
    }
    // Each value's offset besides its bytes.
    if let Some(values) = column.unencoded_byte_array_data_bytes() {
        return 2 * (values.max(0) as u64 + rows * 4);
    }
    let longest = column.statistics().and_then(|s| {
        let exact = s.min_is_exact() && s.max_is_exact();
        let len = s.min_bytes_opt().map_or(0, |b| b.len()).max(s.max_bytes_opt().map_or(0, |b| b.len()));
        exact.then_some(len as u64)
    });
    let by_length = longest.map_or(0, |l| rows * (l + 4));
    2 * stored.max(by_length)
}

/// Memory the page reader holds for one morsel: for each projected column, its largest page, once
/// compressed and once decompressed, and its dictionary. Page sizes come from the page encoding
/// stats (pages per chunk); a writer that records none is assumed to have written the whole chunk as
/// one page.
///
/// A dictionary page is decoded once per chunk and kept while the chunk is read; decoding it holds
/// the page too, one column at a time. Writers cap a dictionary at about 1 MiB and then fall back
/// to plain pages, so a projection of three such columns kept 3.3 MiB of dictionaries beside its
/// pages (a run at 6.7 MiB allocated 9.9 MiB with 6.6 accounted). The dictionary's bytes are told
/// apart from the data pages' by the offsets of the chunk's first dictionary and data page;
/// compressed, its share of the chunk's uncompressed bytes is taken to be its share of the
/// compressed ones.
///
/// With a pruning predicate, also the row group's page index, read to skip pages: decoded, it takes a
/// few times the bytes it takes in the file.
pub(super) fn page_buffer_bytes(
    meta: &ArrowReaderMetadata,
    row_group: usize,
    table_schema: &arrow::datatypes::Schema,
    projection: &[usize],
    pruning: Option<&PruningPredicate>,
    prefetch: u64,
) -> u64 {
    use parquet::basic::{Compression, PageType};
    let rg = meta.metadata().row_group(row_group);
    let names = projected_names(table_schema, projection);
    let leaves = leaves_of(meta, &names);
    // Chunks that may be read whole (see [`ChunkBytes`]) are counted whole.
    let whole = chunk_bytes(rg, &leaves) <= prefetch;
    let index = match pruning {
        Some(_) => {
            let len = |r: Option<std::ops::Range<u64>>| r.map_or(0, |r| r.end - r.start);
            let bytes: u64 = leaves
                .iter()
                .map(|&l| len(rg.column(l).column_index_range()) + len(rg.column(l).offset_index_range()))
                .sum();
            // Decoded indexes, and the row group's own copy of the footer.
            4 * bytes + row_group_meta_bytes(meta)
        }
        None => 0,
    };
    // Each column reader holds its decoded dictionary and its current data page for the whole
    // morsel; the dictionary page itself only while it is decoded, one column after another.
    let (mut held, mut decoding) = (0, 0);
    for &l in &leaves {
        let c = rg.column(l);
        let pages = c
            .page_encoding_stats()
            .map(|stats| {
                stats
                    .iter()
                    .filter(|s| matches!(s.page_type, PageType::DATA_PAGE | PageType::DATA_PAGE_V2))
                    .map(|s| s.count.max(0) as u64)
                    .sum::<u64>()
            })
            .filter(|&n| n > 0)
            .unwrap_or(1);
        let uncompressed = c.uncompressed_size().max(0) as u64;
        let compressed = c.compressed_size().max(0) as u64;
        let plain = c.compression() == Compression::UNCOMPRESSED;
        let dictionary = dictionary_page_bytes(c).min(compressed);
        let dictionary_decoded = match plain {
            true => dictionary,
            false => ((dictionary as u128 * uncompressed as u128) / compressed.max(1) as u128) as u64,
        }
        .min(uncompressed);
        let (uncompressed, compressed) = (uncompressed - dictionary_decoded, compressed - dictionary);
        // Pages of one chunk vary in size: allow half again the average.
        let page = |total: u64| (total.div_ceil(pages) * 3 / 2).min(total);
        // The chunk read whole, or each page read on its own when compressed (uncompressed, the
        // page read is the page decoded).
        let (whole_chunk, read, read_dictionary) = match whole {
            true => (compressed + dictionary, 0, 0),
            false if plain => (0, 0, 0),
            false => (0, page(compressed), dictionary),
        };
        held += whole_chunk + dictionary_decoded + page(uncompressed) + read + codec_state_bytes(c.compression());
        decoding = decoding.max(if dictionary > 0 { dictionary_decoded + read_dictionary } else { 0 });
    }
    index + held + decoding
}

/// Bytes of a column chunk's dictionary page in the file, header included: from the chunk's first
/// (dictionary) page to its first data page. Zero when it has none.
fn dictionary_page_bytes(column: &parquet::file::metadata::ColumnChunkMetaData) -> u64 {
    match column.dictionary_page_offset() {
        Some(start) if start >= 0 && column.data_page_offset() > start => (column.data_page_offset() - start) as u64,
        _ => 0,
    }
}

/// Memory a column's page reader keeps for its decompressor, beyond the pages: a zstd context holds
/// about 95 KB (lineitem's 16 zstd columns on two workers held 3 MB of them), a zlib inflater its
/// 32 KiB window and state; brotli's ring buffer follows the page, LZ4 and Snappy keep nothing.
fn codec_state_bytes(codec: parquet::basic::Compression) -> u64 {
    use parquet::basic::Compression::*;
    match codec {
        ZSTD(_) => 96 << 10,
        GZIP(_) => 64 << 10,
        BROTLI(_) => 256 << 10,
        _ => 0,
    }
}

/// Memory a copy of one row group's metadata takes, with the file's key-value metadata (which holds
/// the Arrow schema); twice over, as the reader builds its own.
fn row_group_meta_bytes(meta: &ArrowReaderMetadata) -> u64 {
    let md = meta.metadata();
    let per_group = md.row_groups().first().map_or(0, |g| std::mem::size_of_val(g) + g.columns().len() * 512);
    let key_values: usize = md
        .file_metadata()
        .key_value_metadata()
        .map_or(0, |kv| kv.iter().map(|k| k.key.len() + k.value.as_ref().map_or(0, |v| v.len())).sum());
    2 * (per_group + key_values + std::mem::size_of::<ParquetMetaData>()) as u64
}

/// The row group alone, with the page index of the columns the pruning predicate tests and of the
/// columns read, and the rows its pages' statistics leave. `None` when the file has no page index for
/// the tested columns or it rules nothing out: then the row group is read whole. Any trouble reading
/// the index also falls back to that (the index only ever saves work).
fn page_selection(
    file: &SourceFile,
    meta: &ArrowReaderMetadata,
    row_group: usize,
    read_leaves: &[usize],
    pruning: &PruningPredicate,
    table_schema: &arrow::datatypes::Schema,
) -> Option<(ArrowReaderMetadata, RowSelection)> {
    let rg = meta.metadata().row_group(row_group);
    let first_partition = table_schema.fields().len() - file.partition.len();
    let tested: Vec<&str> =
        pruning.columns().filter(|&c| c < first_partition).map(|c| table_schema.field(c).name().as_str()).collect();
    let tested = leaves_of(meta, &tested);
    if !tested.iter().any(|&l| rg.column(l).column_index_range().is_some()) {
        return None;
    }
    let handle = File::open(&file.path).ok()?;
    let alone = ParquetMetaData::new(meta.metadata().file_metadata().clone(), vec![rg.clone()]);
    let mut offsets: Vec<usize> = tested.iter().chain(read_leaves).copied().collect();
    offsets.sort_unstable();
    offsets.dedup();
    let mut reader = ParquetMetaDataReader::new_with_metadata(alone)
        .with_column_index_policy(PageIndexPolicy::Optional)
        .with_offset_index_policy(PageIndexPolicy::Optional)
        .with_column_index_mask(ColumnChunkMask::columns(tested))
        .with_offset_index_mask(ColumnChunkMask::columns(offsets));
    reader.read_page_indexes(&handle).ok()?;
    let alone = ArrowReaderMetadata::try_new(
        std::sync::Arc::new(reader.finish().ok()?),
        ArrowReaderOptions::new().with_schema(meta.schema().clone()),
    )
    .ok()?;
    let selection = pruning.rows_to_scan(&alone, 0, table_schema, file.partition.len())?;
    Some((alone, selection))
}

/// Whether every data page of a column chunk is dictionary-encoded, as its page encoding stats
/// say (a writer that records none, or fell back to plain pages, gets `false`).
fn dictionary_encoded(column: &parquet::file::metadata::ColumnChunkMetaData) -> bool {
    use parquet::basic::{Encoding, PageType};
    column.page_encoding_stats().is_some_and(|stats| {
        let mut data = stats.iter().filter(|s| matches!(s.page_type, PageType::DATA_PAGE | PageType::DATA_PAGE_V2));
        let mut any = false;
        let all = data.all(|s| {
            any = true;
            matches!(s.encoding, Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY)
        });
        any && all
    })
}

/// The file's metadata with the string columns named in `dictionaries` decoded as
/// `Dictionary(Int32, Utf8)` where their chunks in `row_group` are dictionary-encoded throughout
/// (then the reader hands out the chunk's dictionary and keys instead of copying every value);
/// `None` when no column qualifies.
fn with_dictionaries(
    meta: &ArrowReaderMetadata,
    row_group: usize,
    dictionaries: &[&str],
) -> Option<ArrowReaderMetadata> {
    use arrow::datatypes::{DataType, Field, Schema};
    let rg = meta.metadata().row_group(row_group);
    let schema = meta.schema();
    let encoded: Vec<&str> = dictionaries
        .iter()
        .copied()
        .filter(|name| {
            let leaves = leaves_of(meta, &[name]);
            let string = schema.field_with_name(name).is_ok_and(|f| f.data_type() == &DataType::Utf8);
            string && leaves.len() == 1 && dictionary_encoded(rg.column(leaves[0]))
        })
        .collect();
    if encoded.is_empty() {
        return None;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match encoded.contains(&f.name().as_str()) {
            true => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Dictionary(Box::new(DataType::Int32), Box::new(f.data_type().clone()))),
            false => f.as_ref().clone(),
        })
        .collect();
    let hinted = std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    ArrowReaderMetadata::try_new(meta.metadata().clone(), ArrowReaderOptions::new().with_schema(hinted)).ok()
}

/// Most bytes of column chunks a scan worker reads whole from a row group (see [`ChunkBytes`]),
/// for a budget of `budget` bytes: a sixty-fourth of it (8 MiB at 512 MiB: every lineitem column
/// of a TPC-H row group holds 4.8 MB).
pub(crate) fn prefetch_limit(budget: u64) -> u64 {
    budget / 64
}

/// Bytes of the column chunks of `leaves` in `rg`.
fn chunk_bytes(rg: &parquet::file::metadata::RowGroupMetaData, leaves: &[usize]) -> u64 {
    leaves.iter().map(|&l| rg.column(l).compressed_size().max(0) as u64).sum()
}

/// The column chunks of one row group that a reader decodes, read whole into memory (one read per
/// chunk) and handed to the decoder as slices, beside the file for anything else (everything, when
/// no chunk was read). Reading the file itself, the decoder reads each page's header through a
/// buffer of 8 KiB and then the page again, in reads that start at 8 KiB and double: a lineitem
/// scan of every column at scale factor 10 read 3.5 GB from its 2.5 GB file in 1.3M calls.
struct ChunkBytes {
    file: std::sync::Arc<File>,
    len: u64,
    /// Each chunk's start in the file and its bytes, in file order, and whether it is compressed.
    chunks: Vec<(u64, bytes::Bytes, bool)>,
}

impl ChunkBytes {
    /// Reads the chunks of `leaves` in `rg`.
    fn read(file: File, rg: &parquet::file::metadata::RowGroupMetaData, leaves: &[usize]) -> std::io::Result<Self> {
        use parquet::basic::Compression;
        let ranges = leaves
            .iter()
            .map(|&l| (rg.column(l).byte_range(), rg.column(l).compression() != Compression::UNCOMPRESSED));
        Self::read_ranges(file, ranges.collect())
    }

    /// Reads the byte ranges (start, length) of `chunks`, each flagged compressed or not.
    fn read_ranges(file: File, mut chunks: Vec<((u64, u64), bool)>) -> std::io::Result<Self> {
        use std::io::{Read, Seek, SeekFrom};
        let len = file.metadata()?.len();
        chunks.sort_unstable();
        let chunks = chunks
            .into_iter()
            .map(|((start, length), compressed)| {
                // Read into spare capacity: zeroing the buffer first took a fortieth of a wide
                // scan's worker time.
                let mut buf = Vec::with_capacity(length as usize);
                let mut f = &file;
                f.seek(SeekFrom::Start(start))?;
                f.take(length).read_to_end(&mut buf)?;
                if buf.len() as u64 != length {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "a column chunk past the file's end",
                    ));
                }
                Ok((start, bytes::Bytes::from(buf), compressed))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(ChunkBytes { file: std::sync::Arc::new(file), len, chunks })
    }

    /// The bytes from `start` to the end of the chunk holding it, when one holds `length` bytes
    /// from there, and whether the chunk is compressed.
    fn find(&self, start: u64, length: u64) -> Option<(bytes::Bytes, bool)> {
        let at = self.chunks.partition_point(|(s, ..)| *s <= start).checked_sub(1)?;
        let (s, bytes, compressed) = &self.chunks[at];
        let from = (start - s) as usize;
        (from as u64 + length <= bytes.len() as u64).then(|| (bytes.slice(from..), *compressed))
    }
}

impl parquet::file::reader::Length for ChunkBytes {
    fn len(&self) -> u64 {
        self.len
    }
}

/// A reader of a [`ChunkBytes`]: from a chunk (and on from the file past its end), or from the
/// file where no chunk was read.
enum ChunkRead {
    Memory {
        bytes: bytes::buf::Reader<bytes::Bytes>,
        file: std::sync::Arc<File>,
        /// Where the file is read from once the chunk's bytes are all read.
        next: u64,
    },
    File(std::io::BufReader<File>),
}

impl std::io::Read for ChunkRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        match self {
            ChunkRead::Memory { bytes, file, next } => {
                let n = bytes.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                let mut f = file.as_ref();
                f.seek(SeekFrom::Start(*next))?;
                let n = f.read(buf)?;
                *next += n as u64;
                Ok(n)
            }
            ChunkRead::File(r) => r.read(buf),
        }
    }
}

impl parquet::file::reader::ChunkReader for ChunkBytes {
    type T = ChunkRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<ChunkRead> {
        use bytes::Buf;
        // A header is at least a byte long: a start at the end of a chunk is read from the file.
        Ok(match self.find(start, 1) {
            Some((bytes, _)) => {
                let next = start + bytes.len() as u64;
                ChunkRead::Memory { bytes: bytes.reader(), file: self.file.clone(), next }
            }
            None => ChunkRead::File(self.file.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        match self.find(start, length as u64) {
            // A compressed page is decompressed into a buffer of its own and its slice dropped.
            // A page stored plainly is used as it is, and a slice keeps the whole chunk allocated
            // for as long as anything holds the page: fifty groupings of an uncompressed file in
            // one process (32 MiB budget) ended at 27 MiB of RSS after the first's 24, against 24
            // to 25 with a copy. Such a page gets a copy of its own, as from the file.
            Some((bytes, true)) => Ok(bytes.slice(..length)),
            Some((bytes, false)) => Ok(bytes::Bytes::copy_from_slice(&bytes[..length])),
            None => self.file.get_bytes(start, length),
        }
    }
}

/// Runs of selected and skipped rows of 8 rows or more on average are skipped through; shorter
/// ones are decoded whole and filtered. Arrow's default is 32, but TPC-H Q15 (4% of lineitem's rows
/// by date, isolated) took 1.3-1.4 s of CPU at 8 against 1.5-1.6 s at 32, and less memory: a mask
/// decodes whole batches.
const SELECTION_POLICY: parquet::arrow::arrow_reader::RowSelectionPolicy =
    parquet::arrow::arrow_reader::RowSelectionPolicy::Auto { threshold: 8 };

/// Columns of a scan decoded first, and a test of their rows: the other columns are decoded for
/// the rows that pass only (see [`super::EarlyTest`]).
pub(super) struct Split<'a> {
    /// Names of the columns decoded first.
    pub names: Vec<&'a str>,
    /// Which rows of a batch of those columns (as the file stores them) pass.
    pub keeps: &'a mut dyn FnMut(RecordBatch) -> Result<BooleanArray>,
}

/// Decodes the projected columns of one row group, in batches of `batch_rows`. The string
/// columns named in `dictionaries` come as dictionary arrays where the row group stores them so.
/// With `split`, the batches hold only the rows its test passes.
#[allow(clippy::too_many_arguments)]
pub(super) fn scan(
    file: &SourceFile,
    row_group: usize,
    out_schema: &SchemaRef,
    batch_rows: usize,
    counters: &ScanCounters,
    pruning: Option<&PruningPredicate>,
    table_schema: &arrow::datatypes::Schema,
    dictionaries: &[&str],
    split: Option<Split>,
    prefetch: u64,
    emit: &mut dyn FnMut(RecordBatch) -> Result<bool>,
) -> Result<()> {
    let dictionary_meta = match dictionaries {
        [] => None,
        names => with_dictionaries(file.parquet.as_ref().expect("parquet file has metadata"), row_group, names),
    };
    let meta = dictionary_meta.as_ref().or(file.parquet.as_ref()).expect("parquet file has metadata");
    let bad = |e: &dyn std::fmt::Display| Error::bad_file(&file.path, format!("row group {row_group}: {e}"));
    let names: Vec<&str> = out_schema.fields().iter().map(|f| f.name().as_str()).collect();
    let roots: Vec<usize> = names.iter().filter_map(|n| meta.schema().index_of(n).ok()).collect();
    let rg = meta.metadata().row_group(row_group);
    let leaves = leaves_of(meta, &names);
    let read: u64 = leaves.iter().map(|&l| rg.column(l).compressed_size().max(0) as u64).sum();
    counters.bytes.fetch_add(read, Ordering::Relaxed);

    if roots.is_empty() {
        // Only a row count is needed (e.g. `SELECT count(*)` later, or constants): no column to decode.
        let mut left = rg.num_rows().max(0) as usize;
        while left > 0 {
            let n = left.min(batch_rows);
            left -= n;
            let batch = RecordBatch::try_new_with_options(
                std::sync::Arc::new(arrow::datatypes::Schema::empty()),
                vec![],
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
            if !emit(batch)? {
                break;
            }
        }
        return Ok(());
    }
    // The row group, or (when the page index rules pages out) the row group alone with the rows
    // its pages leave.
    let (meta, row_group, pages) =
        match pruning.and_then(|p| page_selection(file, meta, row_group, &leaves, p, table_schema)) {
            Some((_, selection)) if !selection.selects_any() => {
                counters.page_pruned_rows.fetch_add(rg.num_rows().max(0) as u64, Ordering::Relaxed);
                return Ok(());
            }
            Some((alone, selection)) => {
                let skipped = rg.num_rows().max(0) as u64 - selection.row_count() as u64;
                counters.page_pruned_rows.fetch_add(skipped, Ordering::Relaxed);
                (alone, 0, Some(selection))
            }
            None => (meta.clone(), row_group, None),
        };
    // Chunks are read whole (see [`ChunkBytes`]) where the reader reads about every page: not
    // where the page index leaves pages out, nor for the few rows a test left.
    let rg_meta = meta.metadata().row_group(row_group);
    let page_pruned = pages.is_some();
    let open =
        |columns: &[&str], selection: Option<RowSelection>, batch_rows: usize| -> Result<ParquetRecordBatchReader> {
            let handle = File::open(&file.path).map_err(|e| Error::bad_file(&file.path, e))?;
            let leaves = leaves_of(&meta, columns);
            let dense = selection.as_ref().is_none_or(|s| s.row_count() * 8 >= rg_meta.num_rows().max(0) as usize);
            let whole = dense && !page_pruned && chunk_bytes(rg_meta, &leaves) <= prefetch;
            let chunks = ChunkBytes::read(handle, rg_meta, if whole { &leaves } else { &[] })
                .map_err(|e| Error::bad_file(&file.path, e))?;
            let roots = columns.iter().filter_map(|n| meta.schema().index_of(n).ok());
            let mask = ProjectionMask::roots(meta.parquet_schema(), roots);
            // The reader allocates a whole batch's capacity for each column before it reads (and
            // clamps it to the file's rows, not the row group's): row groups of 100 rows in a file
            // of 94K, read in batches of 650K rows, held 750 KB a column for every 100 rows and
            // their batches carried that capacity on (an 18 MiB overrun at a 125 MiB budget).
            let rows = rg_meta.num_rows().max(1) as usize;
            let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(chunks, meta.clone())
                .with_row_groups(vec![row_group])
                .with_projection(mask)
                .with_batch_size(batch_rows.clamp(1, rows));
            if let Some(selection) = selection {
                builder = builder.with_row_selection(selection).with_row_selection_policy(SELECTION_POLICY);
            }
            builder.build().map_err(|e| bad(&e))
        };
    let Some(split) = split else {
        for batch in open(&names, pages, batch_rows)? {
            if !emit(batch.map_err(|e| bad(&e))?)? {
                break;
            }
        }
        return Ok(());
    };
    // The test's columns first, for the whole row group; then the others for the rows it passes
    // only. The reader skips the rows between them (or, where they are dense, decodes every row
    // and drops the rest: arrow's choice from the lengths of the runs).
    let mut firsts = Vec::new();
    let mut masks = Vec::new();
    for batch in open(&split.names, pages.clone(), batch_rows)? {
        let batch = batch.map_err(|e| bad(&e))?;
        let keep = (split.keeps)(batch.clone())?;
        if keep.true_count() > 0 {
            firsts.push(arrow::compute::filter_record_batch(&batch, &keep)?);
        }
        masks.push(keep);
    }
    if firsts.is_empty() {
        return Ok(());
    }
    let passed = RowSelection::from_filters(&masks);
    drop(masks);
    let selection = match pages {
        Some(pages) => pages.and_then(&passed),
        None => passed,
    };
    let rest: Vec<&str> = names.iter().copied().filter(|n| !split.names.contains(n)).collect();
    let mut firsts = Rows::new(firsts);
    // The reader's buffers hold a whole batch: no larger than the rows that passed.
    let batch_rows = batch_rows.min(firsts.len());
    for batch in open(&rest, Some(selection), batch_rows)? {
        let batch = batch.map_err(|e| bad(&e))?;
        let first = firsts.take(batch.num_rows())?;
        let fields: Vec<_> = first.schema().fields().iter().chain(batch.schema().fields()).cloned().collect();
        let columns: Vec<_> = first.columns().iter().chain(batch.columns()).cloned().collect();
        let joined = RecordBatch::try_new(std::sync::Arc::new(arrow::datatypes::Schema::new(fields)), columns)?;
        if !emit(joined)? {
            break;
        }
    }
    Ok(())
}

/// Batches taken from the front a number of rows at a time.
struct Rows {
    batches: std::collections::VecDeque<RecordBatch>,
}

impl Rows {
    fn new(batches: Vec<RecordBatch>) -> Rows {
        Rows { batches: batches.into() }
    }

    fn len(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// The next `n` rows (fewer when there are no more), as one batch.
    fn take(&mut self, n: usize) -> Result<RecordBatch> {
        let Some(schema) = self.batches.front().map(|b| b.schema()) else {
            return Err(Error::Execution("a split scan decoded more rows than its test passed".into()));
        };
        let mut parts = Vec::new();
        let mut left = n;
        while left > 0 {
            let Some(front) = self.batches.front_mut() else { break };
            if front.num_rows() <= left {
                left -= front.num_rows();
                parts.push(self.batches.pop_front().expect("a front batch"));
            } else {
                parts.push(front.slice(0, left));
                *front = front.slice(left, front.num_rows() - left);
                left = 0;
            }
        }
        match parts.len() {
            1 => Ok(parts.pop().expect("one part")),
            _ => Ok(arrow::compute::concat_batches(&schema, &parts)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::ChunkReader;
    use std::io::Read;

    /// Reads from a file of bytes `0, 1, 2, ..` (mod 251) with two chunks read whole: every read
    /// gives the file's bytes, from a chunk or from the file, whether it starts in a chunk, at its
    /// end, between chunks or runs across two.
    #[test]
    fn chunk_bytes_read_as_the_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let chunks =
            ChunkBytes::read_ranges(File::open(&path).unwrap(), vec![((5000, 3000), false), ((1000, 2000), true)])
                .unwrap();
        assert_eq!(parquet::file::reader::Length::len(&chunks), 10_000);
        for (start, length) in [
            (1000, 2000),
            (1500, 10),
            (2999, 1),
            (3000, 5),
            (2990, 20),
            (0, 1200),
            (4000, 1500),
            (7990, 10),
            (7999, 2001),
        ] {
            let got = chunks.get_bytes(start, length).unwrap();
            assert_eq!(&got[..], &data[start as usize..start as usize + length], "bytes {start}+{length}");
            let mut read = vec![0u8; length];
            chunks.get_read(start).unwrap().read_exact(&mut read).unwrap();
            assert_eq!(read, &data[start as usize..start as usize + length], "read {start}+{length}");
        }
        // Within a chunk, a slice of it or (stored plainly) a copy; beyond, from the file.
        assert!(matches!(chunks.get_read(1500).unwrap(), ChunkRead::Memory { .. }));
        assert!(matches!(chunks.get_read(3000).unwrap(), ChunkRead::File(_)));
        assert!(chunks.find(1000, 2001).is_none());
        assert!(chunks.get_bytes(9990, 20).is_err(), "past the end of the file");
    }
}
