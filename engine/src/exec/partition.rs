//! Hash partitions written to spill files: what a join or an aggregation does with rows that do
//! not fit.
//!
//! An input batch is split once: its rows for every partition are taken out together, ordered by
//! partition, into one batch (the batch itself when all of it goes to one partition), and each
//! partition keeps the range of that batch that is its own. A partition holding a batch's worth
//! of rows (by rows or bytes) copies its ranges into one batch and writes it; a batch is freed
//! once every partition has written its range. Taking each partition's rows out of each batch on
//! its own made one small batch per partition and input batch: the aggregation of lineitem by
//! `l_orderkey` at scale factor 10 spilled 13M rows to 64 partitions through 470K of them, and
//! their allocations and copies were a fifth of the thread feeding the table.
//!
//! Everything held (the split batches, the copies being written) is reserved under one
//! reservation, within a limit: when the pool cannot pay for more, every partition writes what it
//! holds, which frees every batch.

use arrow::array::{make_array, Array, ArrayRef, MutableArrayData, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};

use std::sync::Arc;

use super::{ExecContext, OperatorMetrics};
use crate::error::Result;
use crate::memory::MemoryReservation;
use crate::spill::{SpillFile, SpillWriter};

/// Rows `start..start + len` of source `source`.
#[derive(Clone, Copy)]
struct Range {
    source: usize,
    start: usize,
    len: usize,
}

/// A split batch: rows of several partitions, each partition's rows together.
struct Source {
    batch: RecordBatch,
    /// Bytes reserved for it.
    bytes: u64,
    /// Partitions that have not written their range of it yet.
    readers: usize,
}

/// A set of spill files, one per partition, being written.
pub(crate) struct SpillPartitions {
    label: String,
    schema: SchemaRef,
    /// Split batches still read by some partition (`None`: a free slot, listed in `free`).
    sources: Vec<Option<Source>>,
    free: Vec<usize>,
    /// Each partition's rows not written yet, their count and their bytes (estimated from their
    /// batches' bytes a row).
    pending: Vec<Vec<Range>>,
    rows: Vec<usize>,
    bytes: Vec<u64>,
    writers: Vec<Option<SpillWriter>>,
    reservation: MemoryReservation,
    /// Most bytes held at once (the input still running beside needs the rest).
    limit: u64,
    ctx: ExecContext,
    metrics: Arc<OperatorMetrics>,
}

impl SpillPartitions {
    pub fn new(
        ctx: &ExecContext,
        metrics: &Arc<OperatorMetrics>,
        schema: SchemaRef,
        label: &str,
        partitions: usize,
        limit: u64,
    ) -> SpillPartitions {
        SpillPartitions {
            label: label.to_string(),
            schema,
            sources: Vec::new(),
            free: Vec::new(),
            pending: vec![Vec::new(); partitions],
            rows: vec![0; partitions],
            bytes: vec![0; partitions],
            writers: (0..partitions).map(|_| None).collect(),
            reservation: ctx.pool.register(format!("{label} partitions"), false),
            limit,
            ctx: ctx.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Adds rows of `batch` to the partitions: `rows[p]` are partition `p`'s (one list per
    /// partition).
    pub fn push_split(&mut self, batch: &RecordBatch, rows: &[Vec<u32>]) -> Result<()> {
        debug_assert_eq!(rows.len(), self.pending.len());
        let total: usize = rows.iter().map(Vec::len).sum();
        if total == 0 {
            return Ok(());
        }
        if let Some(p) = rows.iter().position(|r| r.len() == batch.num_rows()) {
            // All of it to one partition (rows are distinct, so no other has any).
            return self.push(p, batch.clone());
        }
        let mut indices = Vec::with_capacity(total);
        rows.iter().for_each(|r| indices.extend_from_slice(r));
        // The copy is reserved before it is made (and the indices, for as long as it takes).
        let row_bytes = batch.get_array_memory_size() as u64 / batch.num_rows().max(1) as u64;
        let estimate = row_bytes * total as u64 + 4 * total as u64;
        if self.make_room(estimate).is_err() {
            // No room for a copy of the batch, with every partition written out: each
            // partition's rows go straight to its file, a piece at a time.
            return self.write_directly(batch, rows, row_bytes);
        }
        let split = match arrow::compute::take_record_batch(batch, &UInt32Array::from(indices)) {
            Ok(split) => split,
            Err(e) => {
                self.reservation.shrink(estimate);
                return Err(e.into());
            }
        };
        // The reservation follows what the copy holds (a sliced input overstates its own bytes).
        let bytes = split.get_array_memory_size() as u64;
        if bytes < estimate {
            self.reservation.shrink(estimate - bytes);
        } else if bytes > estimate {
            self.make_room(bytes - estimate)?;
        }
        // Every partition with rows reads it: counted before any of them can write and free it.
        let source = self.keep(split, bytes, rows.iter().filter(|r| !r.is_empty()).count());
        let mut start = 0;
        for (p, r) in rows.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            self.add_range(p, Range { source, start, len: r.len() })?;
            start += r.len();
        }
        Ok(())
    }

    /// Writes each partition's rows of `batch` to its file without holding them: copies of at
    /// most what the pool can pay for (halved until they fit, down to one row), each written
    /// and freed before the next.
    fn write_directly(&mut self, batch: &RecordBatch, rows: &[Vec<u32>], row_bytes: u64) -> Result<()> {
        for (p, rows) in rows.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            self.open_writer(p)?;
            let mut piece = rows.len();
            let mut start = 0;
            while start < rows.len() {
                let len = piece.min(rows.len() - start);
                let bytes = (row_bytes + 4) * len as u64;
                let paid = match self.reservation.try_grow_spare(bytes) {
                    Ok(()) => bytes,
                    // A single row is written whatever the pool says.
                    Err(_) if len == 1 => 0,
                    Err(_) => {
                        piece = len / 2;
                        continue;
                    }
                };
                let indices = UInt32Array::from(rows[start..start + len].to_vec());
                let written = arrow::compute::take_record_batch(batch, &indices)
                    .map_err(Into::into)
                    .and_then(|b| self.writers[p].as_mut().expect("writer").write(&b));
                self.reservation.shrink(paid);
                written?;
                start += len;
            }
        }
        Ok(())
    }

    /// Adds a batch to partition `p`.
    pub fn push(&mut self, p: usize, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let len = batch.num_rows();
        let bytes = batch.get_array_memory_size() as u64;
        if self.make_room(bytes).is_err() {
            // No room to keep it: written as it is (its memory is its sender's).
            self.open_writer(p)?;
            return self.writers[p].as_mut().expect("writer").write(&batch);
        }
        let source = self.keep(batch, bytes, 1);
        self.add_range(p, Range { source, start: 0, len })
    }

    /// Keeps a batch (its `bytes` reserved) until its `readers` partitions have written it; its
    /// slot.
    fn keep(&mut self, batch: RecordBatch, bytes: u64, readers: usize) -> usize {
        let source = Source { batch, bytes, readers };
        match self.free.pop() {
            Some(slot) => {
                self.sources[slot] = Some(source);
                slot
            }
            None => {
                self.sources.push(Some(source));
                self.sources.len() - 1
            }
        }
    }

    fn add_range(&mut self, p: usize, range: Range) -> Result<()> {
        let source = self.sources[range.source].as_ref().expect("source held");
        let rows = source.batch.num_rows().max(1) as u64;
        self.rows[p] += range.len;
        self.bytes[p] += source.bytes * range.len as u64 / rows;
        self.pending[p].push(range);
        if self.rows[p] >= self.ctx.config.batch_size.max(1) || self.bytes[p] >= self.ctx.batch_bytes_target() {
            self.flush(p)?;
        }
        Ok(())
    }

    /// Reserves `bytes`, writing out every partition first when they do not fit the limit or the
    /// pool (which frees every split batch).
    fn make_room(&mut self, bytes: u64) -> Result<()> {
        loop {
            let holding = self.pending.iter().any(|p| !p.is_empty());
            if !holding || self.reservation.size() + bytes <= self.limit {
                // While batches are held, writing them out makes room: the headroom kept for
                // batches in flight is left alone.
                let grown =
                    if holding { self.reservation.try_grow_spare(bytes) } else { self.reservation.try_grow(bytes) };
                match grown {
                    Ok(()) => return Ok(()),
                    Err(e) if !holding => return Err(e),
                    Err(_) => {}
                }
            }
            self.flush_all()?;
        }
    }

    /// Starts partition `p`'s file if it has none yet.
    fn open_writer(&mut self, p: usize) -> Result<()> {
        if self.writers[p].is_none() {
            self.writers[p] = Some(self.ctx.spill.create(self.schema.clone(), &format!("{}-p{p}", self.label))?);
        }
        Ok(())
    }

    /// Writes partition `p`'s rows as one batch, and frees the split batches no partition reads
    /// any more.
    fn flush(&mut self, p: usize) -> Result<()> {
        if self.pending[p].is_empty() {
            return Ok(());
        }
        let ranges = std::mem::take(&mut self.pending[p]);
        let (rows, bytes) = (self.rows[p], self.bytes[p]);
        self.rows[p] = 0;
        self.bytes[p] = 0;
        self.open_writer(p)?;
        // The copy is reserved first; when the pool cannot pay for it, the ranges are written as
        // they are (smaller row groups, nothing copied).
        if ranges.len() > 1 && self.reservation.try_grow_spare(bytes).is_ok() {
            let batch = self.gather(&ranges, rows);
            let written = batch.and_then(|b| self.writers[p].as_mut().expect("writer").write(&b));
            self.reservation.shrink(bytes);
            written?;
        } else {
            for r in &ranges {
                let source = self.sources[r.source].as_ref().expect("source held");
                self.writers[p].as_mut().expect("writer").write(&source.batch.slice(r.start, r.len))?;
            }
        }
        for r in &ranges {
            let source = self.sources[r.source].as_mut().expect("source held");
            source.readers -= 1;
            if source.readers == 0 {
                self.reservation.shrink(source.bytes);
                self.sources[r.source] = None;
                self.free.push(r.source);
            }
        }
        Ok(())
    }

    /// The rows of `ranges` copied into one batch.
    fn gather(&self, ranges: &[Range], rows: usize) -> Result<RecordBatch> {
        let batches: Vec<&RecordBatch> =
            ranges.iter().map(|r| &self.sources[r.source].as_ref().expect("source held").batch).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (i, field) in self.schema.fields().iter().enumerate() {
            columns.push(if matches!(field.data_type(), DataType::Dictionary(..)) {
                // Concatenation merges dictionaries; copying would repeat each batch's.
                let slices: Vec<ArrayRef> =
                    ranges.iter().zip(&batches).map(|(r, b)| b.column(i).slice(r.start, r.len)).collect();
                let slices: Vec<&dyn Array> = slices.iter().map(|a| a.as_ref()).collect();
                arrow::compute::concat(&slices)?
            } else {
                let data: Vec<_> = batches.iter().map(|b| b.column(i).to_data()).collect();
                let mut copy = MutableArrayData::new(data.iter().collect(), field.is_nullable(), rows);
                for (k, r) in ranges.iter().enumerate() {
                    copy.try_extend(k, r.start, r.start + r.len)?;
                }
                make_array(copy.freeze())
            });
        }
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    fn flush_all(&mut self) -> Result<()> {
        (0..self.pending.len()).try_for_each(|p| self.flush(p))
    }

    /// Writes what is held and returns one file per partition (`None` for an empty one).
    pub fn finish(mut self) -> Result<Vec<Option<SpillFile>>> {
        self.flush_all()?;
        debug_assert!(self.sources.iter().all(Option::is_none), "every split batch written");
        let files: Vec<Option<SpillFile>> =
            self.writers.into_iter().map(|w| w.map(|w| w.finish()).transpose()).collect::<Result<_>>()?;
        files.iter().flatten().for_each(|f| self.metrics.spilled(f));
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::exec::OperatorRegistry;
    use crate::memory::MemoryPool;
    use crate::spill::SpillManager;
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{Field, Int64Type, Schema};
    use std::sync::atomic::AtomicBool;

    fn context(dir: &std::path::Path, budget: u64) -> ExecContext {
        let config = Config::default().with_mem_budget(budget).with_threads(1).with_batch_size(500);
        ExecContext {
            pool: MemoryPool::new(config.mem_budget),
            config,
            threads: Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap()),
            counters: Default::default(),
            cancel: Arc::new(AtomicBool::new(false)),
            spill: SpillManager::new(dir, u64::MAX).unwrap(),
            operators: Default::default(),
            pending_minimums: Default::default(),
            shared: Default::default(),
            batch_target: 1 << 20,
        }
    }

    /// Splits 40 batches of 300 rows (`id`, and a string of up to 200 bytes) by `id % 7` into
    /// seven partitions (the ids of one batch in partition 3 only), with all but `leave` bytes of
    /// the pool taken by someone else after the first 20, if asked; returns the ids each partition's file holds, in
    /// order, and how many batches they were written as.
    fn split(budget: u64, limit: u64, leave: Option<u64>) -> (Vec<Vec<i64>>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), budget);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let metrics = OperatorRegistry::default().register(0, "test", String::new());
        let mut parts = SpillPartitions::new(&ctx, &metrics, schema.clone(), "test", 7, limit);
        let mut other = ctx.pool.register("other", false);
        for b in 0..40i64 {
            let ids: Vec<i64> = (b * 300..(b + 1) * 300).collect();
            let strings: Vec<Option<String>> =
                ids.iter().map(|i| (i % 11 != 0).then(|| "x".repeat((i % 200) as usize))).collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(ids.clone())), Arc::new(StringArray::from(strings))],
            )
            .unwrap();
            if b == 13 {
                let mut rows = vec![Vec::new(); 7];
                rows[3] = (0..300).collect();
                parts.push_split(&batch, &rows).unwrap();
            } else {
                let mut rows = vec![Vec::new(); 7];
                ids.iter().enumerate().for_each(|(r, i)| rows[(i % 7) as usize].push(r as u32));
                parts.push_split(&batch, &rows).unwrap();
            }
            if let Some(leave) = leave.filter(|_| b == 20) {
                other.try_grow(ctx.pool.available() - leave).unwrap();
            }
        }
        let files = parts.finish().unwrap();
        drop(other);
        assert_eq!(ctx.pool.reserved(), 0, "everything given back");
        let mut writes = 0;
        let ids = files
            .iter()
            .map(|f| {
                let mut ids = Vec::new();
                for batch in f.as_ref().unwrap().reader().unwrap() {
                    let batch = batch.unwrap();
                    writes += 1;
                    let s = batch.column(1).as_string::<i32>();
                    for (r, id) in batch.column(0).as_primitive::<Int64Type>().values().iter().enumerate() {
                        assert_eq!(s.is_valid(r), id % 11 != 0);
                        assert_eq!(s.value(r).len(), if id % 11 != 0 { (id % 200) as usize } else { 0 });
                        ids.push(*id);
                    }
                }
                ids
            })
            .collect();
        (ids, writes)
    }

    fn expected() -> Vec<Vec<i64>> {
        let mut want = vec![Vec::new(); 7];
        for id in 0..12_000i64 {
            want[if (3900..4200).contains(&id) { 3 } else { (id % 7) as usize }].push(id);
        }
        want
    }

    #[test]
    fn every_row_reaches_its_partition_in_order_whatever_the_memory() {
        // Room: each partition writes 500 rows at a time, copied from many batches into one.
        let (ids, roomy_writes) = split(64 << 20, 32 << 20, None);
        assert_eq!(ids, expected());
        assert!(roomy_writes < 40, "{roomy_writes} writes");
        // A limit of two input batches: every partition writes whenever the split batches reach it.
        let (ids, tight_writes) = split(64 << 20, 80 << 10, None);
        assert_eq!(ids, expected());
        assert!(tight_writes > roomy_writes, "{tight_writes} writes");
        // The pool nearly all taken: the copies are refused, so ranges are written as they are.
        let (ids, starved_writes) = split(1 << 20, 1 << 20, Some(40 << 10));
        assert_eq!(ids, expected());
        assert!(starved_writes > tight_writes, "{starved_writes} writes");
    }
}
