//! Hash partitions written to spill files: what a join does with inputs that do not fit.
//!
//! Rows are buffered per partition under one reservation and written as a batch once a partition
//! holds a batch's worth (by rows or bytes), or all at once when the pool cannot pay for more.
//! The writing (Parquet encoding, LZ4, the write itself) happens on a thread of its own, so that
//! the thread partitioning the input goes on meanwhile: it had been a quarter of the consumer's
//! time in a grace join's partitioning of its build side (lineitem with orders at scale factor 10),
//! while the scan workers waited. A batch being written stays reserved until it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;

use super::{ExecContext, OperatorMetrics};
use crate::error::{Error, Result};
use crate::memory::MemoryReservation;
use crate::spill::{SpillFile, SpillManager, SpillWriter};

/// Batches queued for the writing thread at most (one more is being written).
const QUEUED: usize = 2;

/// A set of spill files, one per partition, being written.
pub(crate) struct SpillPartitions {
    label: String,
    schema: SchemaRef,
    buffers: Vec<Vec<RecordBatch>>,
    rows: Vec<usize>,
    bytes: Vec<u64>,
    /// The thread that writes flushed batches, started with the first.
    writer: Option<Writer>,
    partitions: usize,
    reservation: MemoryReservation,
    /// Bytes handed to the writing thread and not yet written (reserved apart, counted in the
    /// limit).
    in_flight: Arc<AtomicU64>,
    /// Most bytes buffered at once (the input still running beside needs the rest).
    limit: u64,
    ctx: ExecContext,
    metrics: Arc<OperatorMetrics>,
}

/// The writing thread: it owns the partitions' spill writers and hands them back at the end.
struct Writer {
    queue: SyncSender<(usize, RecordBatch, MemoryReservation)>,
    thread: JoinHandle<Result<Vec<Option<SpillWriter>>>>,
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
            writer: None,
            partitions,
            reservation: ctx.pool.register(format!("{label} partitions"), false),
            in_flight: Arc::new(AtomicU64::new(0)),
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
        // Over the limit or refused by the pool: write out the fullest buffers first, and wait
        // for batches being written when nothing is left to flush.
        loop {
            let in_flight = self.in_flight.load(Ordering::Acquire);
            let empty = self.reservation.size() == 0;
            if empty || self.reservation.size() + in_flight + bytes <= self.limit {
                match self.reservation.try_grow(bytes) {
                    Ok(()) => break,
                    Err(e) if empty && in_flight == 0 => return Err(e),
                    Err(_) => {}
                }
            }
            let fullest = (0..self.bytes.len()).max_by_key(|&p| self.bytes[p]).expect("partitions");
            if self.bytes[fullest] > 0 {
                self.flush(fullest)?;
            } else if in_flight > 0 {
                self.wait_written(in_flight)?;
            } else {
                // Nothing buffered or being written: the pool itself is short.
                self.reservation.try_grow(bytes)?;
                break;
            }
        }
        self.rows[p] += batch.num_rows();
        self.bytes[p] += bytes;
        self.buffers[p].push(batch);
        if self.rows[p] >= self.ctx.config.batch_size.max(1) || self.bytes[p] >= self.ctx.batch_bytes_target() {
            self.flush(p)?;
        }
        Ok(())
    }

    /// Waits until less than `in_flight` bytes are being written (or the writing thread stopped,
    /// whose error then comes back).
    fn wait_written(&mut self, in_flight: u64) -> Result<()> {
        while self.in_flight.load(Ordering::Acquire) >= in_flight {
            if self.writer.as_ref().is_none_or(|w| w.thread.is_finished()) {
                return self.stopped();
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Ok(())
    }

    /// The error of a writing thread that stopped early.
    fn stopped(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => {
                drop(w.queue);
                match w.thread.join() {
                    Ok(Ok(_)) => Err(Error::Execution("internal error: a spill writer stopped early".into())),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Error::Execution("internal error: a spill writer panicked".into())),
                }
            }
            None => Err(Error::Execution("internal error: spill partitions used after an error".into())),
        }
    }

    /// Hands partition `p`'s buffered rows, as one batch, to the writing thread.
    fn flush(&mut self, p: usize) -> Result<()> {
        if self.buffers[p].is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.buffers[p]);
        let batch = match batches.len() {
            1 => batches[0].clone(),
            _ => arrow::compute::concat_batches(&self.schema, &batches)?,
        };
        drop(batches);
        let held = self.reservation.split(self.bytes[p]);
        self.in_flight.fetch_add(held.size(), Ordering::AcqRel);
        self.rows[p] = 0;
        self.bytes[p] = 0;
        if self.writer.is_none() {
            self.writer = Some(self.start()?);
        }
        let queue = &self.writer.as_ref().expect("started above").queue;
        if queue.send((p, batch, held)).is_err() {
            return self.stopped();
        }
        Ok(())
    }

    fn start(&self) -> Result<Writer> {
        let (queue, batches) = sync_channel::<(usize, RecordBatch, MemoryReservation)>(QUEUED);
        let (spill, schema, label, partitions) =
            (self.ctx.spill.clone(), self.schema.clone(), self.label.clone(), self.partitions);
        let in_flight = self.in_flight.clone();
        let thread = std::thread::Builder::new()
            .name("flow-partitions".into())
            .spawn(move || -> Result<Vec<Option<SpillWriter>>> {
                let mut writers: Vec<Option<SpillWriter>> = (0..partitions).map(|_| None).collect();
                for (p, batch, held) in batches {
                    write(&spill, &schema, &label, &mut writers[p], p, &batch)?;
                    in_flight.fetch_sub(held.size(), Ordering::AcqRel);
                }
                Ok(writers)
            })
            .map_err(|e| Error::Execution(format!("cannot start a spill writer: {e}")))?;
        Ok(Writer { queue, thread })
    }

    /// Writes what is buffered and returns one file per partition (`None` for an empty one).
    pub fn finish(mut self) -> Result<Vec<Option<SpillFile>>> {
        for p in 0..self.buffers.len() {
            self.flush(p)?;
        }
        let writers = match self.writer.take() {
            Some(w) => {
                drop(w.queue);
                w.thread.join().map_err(|_| Error::Execution("internal error: a spill writer panicked".into()))??
            }
            None => (0..self.partitions).map(|_| None).collect(),
        };
        let files: Vec<Option<SpillFile>> =
            writers.into_iter().map(|w| w.map(|w| w.finish()).transpose()).collect::<Result<_>>()?;
        files.iter().flatten().for_each(|f| self.metrics.spilled(f));
        Ok(files)
    }
}

/// Appends `batch` to partition `p`'s spill file, started on its first batch.
fn write(
    spill: &SpillManager,
    schema: &SchemaRef,
    label: &str,
    writer: &mut Option<SpillWriter>,
    p: usize,
    batch: &RecordBatch,
) -> Result<()> {
    if writer.is_none() {
        *writer = Some(spill.create(schema.clone(), &format!("{label}-p{p}"))?);
    }
    writer.as_mut().expect("created above").write(batch)
}

impl Drop for SpillPartitions {
    /// Stops the writing thread and waits for it, so that its files are gone with the partitions.
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            drop(w.queue);
            let _ = w.thread.join();
        }
    }
}
