//! Sinks: Parquet and CSV files, written under a temporary name beside the target and renamed into
//! place when complete, so a crash never leaves a half-written file at the output path.
//!
//! The Parquet writer buffers the row group it is building (encoded, compressed pages). That buffer
//! is reserved from the pool as it grows and the row group is flushed when it reaches the row-group
//! byte target, or earlier when the pool cannot give more.
//!
//! - `options`: what an output is (format, codec, overwrite policy, sizes) and what writing it did;
//! - `staging`: temporary names and folders, renamed into place when complete;
//! - `parquet_file`, `text`: the Parquet and the CSV/TSV/NDJSON sinks;
//! - `background`: a sink on a thread of its own;
//! - `partitioned`: hive-partitioned folders.

mod background;
mod options;
mod parquet_file;
mod partitioned;
mod staging;
mod text;

use arrow::array::RecordBatch;

use crate::error::Result;

pub(crate) use self::background::{Background, BackgroundSink};
pub use self::options::{Codec, OutputFormat, Overwrite, WriteOptions, WriteSummary};
pub use self::parquet_file::{portable_schema, ParquetSink};
pub use self::partitioned::{partition_columns, PartitionedOutput, PartitionedWriter};
pub(crate) use self::staging::Destination;
pub use self::staging::{exists_error, target_taken, StagingDir};
pub use self::text::TextSink;

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
