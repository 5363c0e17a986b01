//! Newline-delimited JSON files.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};

use super::csv::{CountingRead, READ_BUFFER_BYTES};
use super::{ScanCounters, SourceFile};
use crate::error::{Error, Result};

pub(super) fn infer_schema(path: &Path) -> Result<SchemaRef> {
    let file = File::open(path).map_err(|e| Error::bad_file(path, e))?;
    let (schema, _) = arrow::json::reader::infer_json_schema(BufReader::new(file), Some(10_000))
        .map_err(|e| Error::bad_file(path, format!("inferring json schema: {e}")))?;
    Ok(Arc::new(schema))
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
    let handle = File::open(path).map_err(|e| Error::bad_file(path, e))?;
    let counting = CountingRead { inner: handle, counters };
    let reader = arrow::json::ReaderBuilder::new(decode_schema.clone())
        .with_batch_size(batch_rows.max(1))
        .build(BufReader::with_capacity(READ_BUFFER_BYTES as usize, counting))
        .map_err(|e| Error::bad_file(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| Error::bad_file(path, e))?;
        if !emit(batch)? {
            break;
        }
    }
    Ok(())
}
