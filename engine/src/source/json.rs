//! Newline-delimited JSON files.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};

use super::csv::{CountingRead, READ_BUFFER_BYTES};
use super::{ScanCounters, SourceFile};
use crate::error::{Error, Result};

/// Lines read to infer the types.
const INFER_LINES: usize = 10_000;

pub(super) fn infer_schema(path: &Path) -> Result<SchemaRef> {
    let file = super::compressed::open(path)?;
    let (schema, _) = arrow::json::reader::infer_json_schema(BufReader::new(file), Some(INFER_LINES))
        .map_err(|e| Error::bad_file(path, located(path, 0, &e.to_string())))?;
    Ok(Arc::new(schema))
}

/// An error reading the file, placed on its line: arrow's JSON errors count lines and columns
/// within the one value that failed (a bad line 3 said line 1). The file is read again from
/// `from_line` (the first line of the batch that failed) to find the first line that is not a
/// JSON value; a value of the wrong type is named with the lines of its batch.
fn located(path: &Path, from_line: u64, message: &str) -> String {
    let message = message.strip_prefix("Json error: ").unwrap_or(message);
    let first_bad = || -> Option<(u64, String)> {
        let reader = BufReader::new(super::compressed::open(path).ok()?);
        for (i, line) in reader.lines().enumerate().skip(from_line as usize) {
            let line = line.ok()?;
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&line) {
                return Some((i as u64 + 1, format!("not valid JSON: {e}").replace(" at line 1 column", " at column")));
            }
        }
        None
    };
    match first_bad() {
        Some((line, what)) => format!("line {line}: {what}"),
        None => format!("{message} (in the lines from {})", from_line + 1),
    }
}

pub(super) fn scan(
    file: &SourceFile,
    out_schema: &SchemaRef,
    batch_rows: usize,
    counters: &ScanCounters,
    emit: &mut dyn FnMut(RecordBatch) -> Result<bool>,
) -> Result<()> {
    let path = &file.path;
    // Decode only the needed fields, with the file's own types; the caller casts to the table's.
    let fields: Vec<_> =
        out_schema.fields().iter().filter_map(|f| file.schema.field_with_name(f.name()).ok().cloned()).collect();
    let decode_schema = Arc::new(Schema::new(fields));
    let handle = super::compressed::open(path)?;
    let counting = CountingRead { inner: handle, counters };
    let reader = arrow::json::ReaderBuilder::new(decode_schema.clone())
        .with_batch_size(batch_rows.max(1))
        .build(BufReader::with_capacity(READ_BUFFER_BYTES as usize, counting))
        .map_err(|e| Error::bad_file(path, e))?;
    let mut lines = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| Error::bad_file(path, located(path, lines, &e.to_string())))?;
        lines += batch.num_rows() as u64;
        if !emit(batch)? {
            break;
        }
    }
    Ok(())
}
