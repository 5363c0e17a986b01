//! Hash partitions written to spill files: what a join does with inputs that do not fit.
//!
//! Rows are buffered per partition under one reservation and written as a batch once a partition
//! holds a batch's worth (by rows or bytes), or all at once when the pool cannot pay for more.

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;

use std::sync::Arc;

use super::{ExecContext, OperatorMetrics};
use crate::error::Result;
use crate::memory::MemoryReservation;
use crate::spill::{SpillFile, SpillWriter};

/// A set of spill files, one per partition, being written.
pub(crate) struct SpillPartitions {
    label: String,
    schema: SchemaRef,
    buffers: Vec<Vec<RecordBatch>>,
    rows: Vec<usize>,
    bytes: Vec<u64>,
    writers: Vec<Option<SpillWriter>>,
    reservation: MemoryReservation,
    /// Most bytes buffered at once (the input still running beside needs the rest).
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
            buffers: vec![Vec::new(); partitions],
            rows: vec![0; partitions],
            bytes: vec![0; partitions],
            writers: (0..partitions).map(|_| None).collect(),
            reservation: ctx.pool.register(format!("{label} partitions"), false),
            limit,
            ctx: ctx.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Adds rows `indices` of `batch` to partition `p`.
    pub fn push_rows(&mut self, p: usize, batch: &RecordBatch, indices: Vec<u32>) -> Result<()> {
        if indices.is_empty() {
            return Ok(());
        }
        if indices.len() == batch.num_rows() {
            return self.push(p, batch.clone());
        }
        let taken = arrow::compute::take_record_batch(batch, &UInt32Array::from(indices))?;
        self.push(p, taken)
    }

    /// Adds a batch to partition `p`.
    pub fn push(&mut self, p: usize, batch: RecordBatch) -> Result<()> {
        let bytes = batch.get_array_memory_size() as u64;
        // Over the limit or refused by the pool: write out the fullest buffers first.
        loop {
            let empty = self.reservation.size() == 0;
            if empty || self.reservation.size() + bytes <= self.limit {
                match self.reservation.try_grow(bytes) {
                    Ok(()) => break,
                    Err(e) if empty => return Err(e),
                    Err(_) => {}
                }
            }
            let fullest = (0..self.bytes.len()).max_by_key(|&p| self.bytes[p]).expect("partitions");
            self.flush(fullest)?;
        }
        self.rows[p] += batch.num_rows();
        self.bytes[p] += bytes;
        self.buffers[p].push(batch);
        if self.rows[p] >= self.ctx.config.batch_size.max(1) || self.bytes[p] >= self.ctx.batch_bytes_target() {
            self.flush(p)?;
        }
        Ok(())
    }

    fn flush(&mut self, p: usize) -> Result<()> {
        if self.buffers[p].is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.buffers[p]);
        let batch = match batches.len() {
            1 => batches[0].clone(),
            _ => arrow::compute::concat_batches(&self.schema, &batches)?,
        };
        if self.writers[p].is_none() {
            self.writers[p] = Some(self.ctx.spill.create(self.schema.clone(), &format!("{}-p{p}", self.label))?);
        }
        self.writers[p].as_mut().expect("writer").write(&batch)?;
        self.reservation.shrink(self.bytes[p]);
        self.rows[p] = 0;
        self.bytes[p] = 0;
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        (0..self.buffers.len()).try_for_each(|p| self.flush(p))
    }

    /// Writes what is buffered and returns one file per partition (`None` for an empty one).
    pub fn finish(mut self) -> Result<Vec<Option<SpillFile>>> {
        self.flush_all()?;
        let files: Vec<Option<SpillFile>> =
            self.writers.into_iter().map(|w| w.map(|w| w.finish()).transpose()).collect::<Result<_>>()?;
        files.iter().flatten().for_each(|f| self.metrics.spilled(f));
        Ok(files)
    }
}
