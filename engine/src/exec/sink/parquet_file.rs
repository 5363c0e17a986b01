//! The Parquet sink: row groups flushed by bytes (or early when the pool is short), statistics
//! and a page index, portable types, so that pyarrow, DuckDB, Polars and Spark read it as it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::staging::{complete, Destination, Out, PendingFile};
use super::{Sink, WriteOptions, WriteSummary};
use crate::error::{Error, Result};
use crate::exec::parquet_writer::ParquetWriter;
use crate::exec::sliced_bytes;
use crate::memory::{MemoryPool, MemoryReservation};

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
    pub(super) fn default_row_group_bytes(budget: u64) -> usize {
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

    /// What [`open`](Self::open) reserves for a sink of `schema` with these sizes.
    pub(super) fn opening_bytes(schema: &Schema, row_group_bytes: usize, room: u64) -> u64 {
        Self::sizes(schema.fields().len().max(1), row_group_bytes, room).1
    }

    /// A sink with row groups of `row_group_bytes` whose pages are sized for `room` bytes.
    pub(super) fn open(
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
pub(super) fn slices(batch: &RecordBatch, bytes: usize) -> Vec<RecordBatch> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};

    use super::*;
    use crate::memory::MemoryPool;

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
