//! Delimited text files.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
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
    let mut file = File::open(path).map_err(|e| Error::bad_file(path, e))?;
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

pub(super) fn scan(
    file: &SourceFile,
    options: &CsvOptions,
    out_schema: &SchemaRef,
    batch_rows: usize,
    counters: &ScanCounters,
    emit: &mut dyn FnMut(RecordBatch) -> Result<bool>,
) -> Result<()> {
    let path = &file.path;
    let projection: Vec<usize> =
        out_schema.fields().iter().filter_map(|f| file.schema.index_of(f.name()).ok()).collect();
    let mut handle = File::open(path).map_err(|e| Error::bad_file(path, e))?;
    handle.rewind().map_err(|e| Error::bad_file(path, e))?;
    let counting = CountingRead { inner: handle, counters };
    let reader = arrow::csv::ReaderBuilder::new(file.schema.clone())
        .with_format(options.format())
        .with_batch_size(batch_rows.max(1))
        .with_projection(projection.clone())
        .build(BufReader::with_capacity(READ_BUFFER_BYTES as usize, counting))
        .map_err(|e| Error::bad_file(path, e))?;
    let rows_before = if options.has_header { 1 } else { 0 };
    let mut seen = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| Error::bad_file(path, csv_error(e, seen + rows_before)))?;
        seen += batch.num_rows() as u64;
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

/// Arrow's CSV errors count lines from the start of the current batch; say where in the file.
fn csv_error(e: arrow::error::ArrowError, lines_before: u64) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("Csv error: ").unwrap_or(&text).to_string();
    format!("{text} (after line {lines_before})")
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
