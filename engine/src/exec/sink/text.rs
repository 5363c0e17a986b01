//! CSV, TSV and NDJSON sinks.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;

use super::staging::{complete, Destination, Out, PendingFile};
use super::{OutputFormat, Sink, WriteOptions, WriteSummary};
use crate::error::{Error, Result};
use crate::memory::{MemoryPool, MemoryReservation};

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
