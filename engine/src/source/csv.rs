//! Delimited text files.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::csv::reader::Format as CsvFormat;
use arrow::datatypes::{Schema, SchemaRef};

use super::{ScanCounters, SourceFile};
use crate::error::{Error, Result};

/// The reader's block of file bytes.
pub(super) const READ_BUFFER_BYTES: u64 = 1 << 20;

/// How a CSV file is laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvOptions {
    /// Whether the first line names the columns (default: yes).
    pub has_header: bool,
    /// Field separator (default `,`).
    pub delimiter: u8,
    /// Quote character (default `"`).
    pub quote: u8,
    /// Rows read to infer types when no schema is declared.
    pub infer_rows: usize,
    /// Declared column names and types; when set, nothing is inferred.
    pub schema: Option<SchemaRef>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { has_header: true, delimiter: b',', quote: b'"', infer_rows: 10_000, schema: None }
    }
}

impl CsvOptions {
    fn format(&self) -> CsvFormat {
        CsvFormat::default().with_header(self.has_header).with_delimiter(self.delimiter).with_quote(self.quote)
    }
}

pub(super) fn infer_schema(path: &Path, options: &CsvOptions) -> Result<SchemaRef> {
    let mut file = super::compressed::open(path)?;
    if let Some(schema) = &options.schema {
        if options.has_header {
            // Check the header has as many fields as the declared schema.
            let (found, _) = options
                .format()
                .infer_schema(&mut file, Some(0))
                .map_err(|e| Error::bad_file(path, format!("reading header: {e}")))?;
            if found.fields().len() != schema.fields().len() {
                return Err(Error::Schema(format!(
                    "{}: header has {} columns but the declared schema has {}",
                    path.display(),
                    found.fields().len(),
                    schema.fields().len()
                )));
            }
        }
        return Ok(schema.clone());
    }
    let (schema, _) = options
        .format()
        .infer_schema(&mut file, Some(options.infer_rows))
        .map_err(|e| Error::bad_file(path, format!("inferring csv schema: {e}")))?;
    Ok(Arc::new(schema))
}

/// Files larger than twice this are scanned in slices of about this size, in parallel.
pub const SLICE_BYTES: u64 = 32 << 20;

/// Cuts a CSV file into slices of whole records, so several workers can parse one file.
///
/// A newline ends a record only outside quotes, and whether a byte is inside quotes depends on every
/// quote before it. So: count the quote characters of each slice (in parallel), turn the counts
/// into the quote parity at each slice's start, then move each cut forward to the first newline
/// with even parity. Doubled quotes (`""`) toggle twice and change nothing, as RFC 4180 wants.
/// Small files are one slice (`None`).
pub(super) fn slices(path: &Path, options: &CsvOptions) -> Result<Vec<Option<(u64, u64)>>> {
    use rayon::prelude::*;
    let size = std::fs::metadata(path).map_err(|e| Error::bad_file(path, e))?.len();
    // A compressed file is read from its start: one slice.
    if size <= 2 * SLICE_BYTES || super::compressed::Compression::of(path) != super::compressed::Compression::None {
        return Ok(vec![None]);
    }
    let n = size.div_ceil(SLICE_BYTES);
    let read_range = |start: u64, end: u64, f: &mut dyn FnMut(&[u8]) -> bool| -> std::io::Result<()> {
        let mut file = File::open(path)?;
        file.seek(std::io::SeekFrom::Start(start))?;
        let mut reader = BufReader::with_capacity(256 << 10, file.take(end - start));
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() || !f(buf) {
                return Ok(());
            }
            let len = buf.len();
            reader.consume(len);
        }
    };
    let quote = options.quote;
    let counts: Vec<u64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut count = 0u64;
            read_range(i * SLICE_BYTES, ((i + 1) * SLICE_BYTES).min(size), &mut |buf| {
                count += buf.iter().filter(|&&b| b == quote).count() as u64;
                true
            })
            .map(|_| count)
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::bad_file(path, e))?;
    let mut odd_before = Vec::with_capacity(n as usize);
    let mut total = 0u64;
    for c in &counts {
        odd_before.push(total % 2 == 1);
        total += c;
    }
    // Cut i (i >= 1): just past the first newline at or after i * SLICE_BYTES outside quotes.
    let cuts: Vec<u64> = (1..n)
        .into_par_iter()
        .map(|i| {
            let start = i * SLICE_BYTES;
            let mut inside = odd_before[i as usize];
            let mut pos = start;
            let mut found = None;
            read_range(start, size, &mut |buf| {
                for &b in buf {
                    pos += 1;
                    if b == quote {
                        inside = !inside;
                    } else if b == b'\n' && !inside {
                        found = Some(pos);
                        return false;
                    }
                }
                true
            })
            .map(|_| found.unwrap_or(size))
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::bad_file(path, e))?;
    let mut bounds = vec![0u64];
    bounds.extend(cuts);
    bounds.push(size);
    bounds.dedup();
    Ok(bounds.windows(2).filter(|w| w[1] > w[0]).map(|w| Some((w[0], w[1]))).collect())
}

pub(super) fn scan(
    file: &SourceFile,
    range: Option<(u64, u64)>,
    options: &CsvOptions,
    out_schema: &SchemaRef,
    batch_rows: usize,
    counters: &ScanCounters,
    emit: &mut dyn FnMut(RecordBatch) -> Result<bool>,
) -> Result<()> {
    let path = &file.path;
    let projection: Vec<usize> =
        out_schema.fields().iter().filter_map(|f| file.schema.index_of(f.name()).ok()).collect();
    let (start, end) = range.unwrap_or((0, u64::MAX));
    let input: Box<dyn Read + Send> = match range {
        None => super::compressed::open(path)?,
        Some(_) => {
            let mut handle = File::open(path).map_err(|e| Error::bad_file(path, e))?;
            handle.seek(std::io::SeekFrom::Start(start)).map_err(|e| Error::bad_file(path, e))?;
            Box::new(handle.take(end - start))
        }
    };
    let counting = CountingRead { inner: input, counters };
    // Only the first slice holds the header line.
    let format = options.format().with_header(options.has_header && start == 0);
    let reader = arrow::csv::ReaderBuilder::new(file.schema.clone())
        .with_format(format)
        .with_batch_size(batch_rows.max(1))
        .with_projection(projection.clone())
        .build(BufReader::with_capacity(READ_BUFFER_BYTES as usize, counting))
        .map_err(|e| Error::bad_file(path, e))?;
    let header = options.has_header && start == 0;
    for batch in reader {
        let batch = batch.map_err(|e| Error::bad_file(path, csv_error(e, path, start, header)))?;
        let batch = if projection.is_empty() {
            RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                vec![],
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
            )?
        } else {
            batch
        };
        if !emit(batch)? {
            break;
        }
    }
    Ok(())
}

/// Arrow's CSV errors count the records the reader has read, from 1, not the file's lines: the
/// error names the file's line instead (the header is line 1; a slice of a large file starts
/// after as many lines as the file has before it; a record with quoted newlines counts as one).
fn csv_error(e: arrow::error::ArrowError, path: &Path, slice_start: u64, header: bool) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("Csv error: ").unwrap_or(&text).to_string();
    let text = text.strip_prefix("Parser error: ").unwrap_or(&text).to_string();
    let Some((before, after)) = text.split_once(" at line ") else { return text };
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let Ok(record) = digits.parse::<u64>() else { return text };
    let lines_before = match slice_start {
        0 => 0,
        start => newlines_before(path, start).unwrap_or(0),
    };
    let line = lines_before + record + u64::from(header);
    format!("line {line}: {before}{}", &after[digits.len()..])
}

/// Newlines in the first `end` bytes of a file.
fn newlines_before(path: &Path, end: u64) -> std::io::Result<u64> {
    let mut reader = BufReader::with_capacity(256 << 10, File::open(path)?.take(end));
    let mut count = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(count);
        }
        count += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        reader.consume(len);
    }
}

pub(super) struct CountingRead<'a, R> {
    pub inner: R,
    pub counters: &'a ScanCounters,
}

impl<R: Read> Read for CountingRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
