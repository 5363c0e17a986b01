//! A common table expression read more than once (`WITH x AS (...)` with `x` in two places):
//! computed once, its rows read by every reference.
//!
//! Blocks: the first reference to start runs the CTE's pipeline to the end and keeps its rows;
//! every reference (the first too) then reads them. Spills: rows are kept in memory under one
//! reservation (`CTE[name]`) up to a quarter of what the pool had free when the CTE started;
//! the rest go to a spill file, which each reference reads on its own. The rows are freed when the
//! last reference is done with them (or when the query ends, if a reference never starts).
//!
//! Memory batches are handed out as they are (shared buffers, already paid for by the CTE's
//! reservation); batches read back from the spill file are reserved by the reader that holds them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::node::{Node, Running, Started};
use super::{BatchStream, ExecContext, ExplainLine, OperatorMetrics, Pipeline};
use crate::error::{Error, Result};
use crate::memory::MemoryReservation;
use crate::spill::{SpillFile, SpillReader};

/// The materialized CTEs of one running query.
///
/// A CTE may read another (`WITH a AS (...), b AS (SELECT ... FROM a JOIN a ...)`), so computing
/// one starts readers of others on the same thread: the registry's lock is held only to find a
/// CTE's slot, and each slot has a lock of its own, held while that CTE is computed. A CTE reads
/// only CTEs defined before it, so slots are always locked in one order and two threads
/// computing CTEs cannot wait on each other.
#[derive(Default, Clone)]
pub(crate) struct SharedRegistry {
    slots: Arc<Mutex<HashMap<u64, Arc<Slot>>>>,
    /// References to each CTE in the query's plan.
    pub(crate) readers: Arc<HashMap<u64, usize>>,
}

/// One CTE: empty until its first reference has computed it.
#[derive(Default)]
struct Slot {
    rows: Mutex<Option<Arc<SharedRows>>>,
}

/// The rows of one CTE.
struct SharedRows {
    storage: Mutex<Option<Storage>>,
    readers_left: AtomicUsize,
}

struct Storage {
    batches: Vec<RecordBatch>,
    spilled: Option<SpillFile>,
    _reservation: MemoryReservation,
}

/// A common table expression: the first reference runs `input`, every one reads its rows.
pub(crate) struct SharedNode {
    pub id: u64,
    pub name: String,
    pub input: Box<Pipeline>,
}

impl Node for SharedNode {
    fn name(&self) -> &'static str {
        "CTE"
    }

    fn detail(&self) -> String {
        self.name.clone()
    }

    fn inputs(&self) -> Vec<&Pipeline> {
        vec![&self.input]
    }

    fn explain(&self, ctx: &ExecContext, id: u64, depth: usize, role: &str, out: &mut Vec<ExplainLine>) {
        let text = format!("{role}CTE {} (computed once, read by every reference)", self.name);
        out.push(ExplainLine { depth, id: Some(id), text });
        self.input.describe(ctx, depth + 1, "", out);
    }

    fn min_memory(&self, ctx: &ExecContext) -> u64 {
        self.input.min_memory(ctx)
    }

    fn stream_memory(&self, ctx: &ExecContext, _queue_limit: u64) -> u64 {
        self.input.min_memory(ctx)
    }

    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        self.input.max_memory(ctx, queue_limit)
    }

    /// The CTE's own plan runs once, so references inside it count once.
    fn shared_counts(&self, out: &mut HashMap<u64, usize>) {
        let n = out.entry(self.id).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.input.shared_counts(out);
        }
    }

    fn start(
        self: Box<Self>,
        ctx: &ExecContext,
        _schema: &SchemaRef,
        metrics: &Arc<OperatorMetrics>,
        _queue_limit: Option<u64>,
    ) -> Result<Started> {
        let SharedNode { id, name, input } = *self;
        let cancel = ctx.cancel.clone();
        let start = || input.execute_with(ctx, None);
        Ok(Started::new(ctx.shared.reader(id, &name, ctx, metrics, start, &cancel)?))
    }
}

impl SharedRegistry {
    /// A registry for a plan with `readers` references to each CTE.
    pub(crate) fn new(readers: HashMap<u64, usize>) -> SharedRegistry {
        SharedRegistry { slots: Default::default(), readers: Arc::new(readers) }
    }

    /// A reader of CTE `id`; the first call computes it with `start`.
    pub(crate) fn reader(
        &self,
        id: u64,
        name: &str,
        ctx: &ExecContext,
        metrics: &Arc<OperatorMetrics>,
        start: impl FnOnce() -> Result<BatchStream>,
        cancel: &AtomicBool,
    ) -> Result<SharedStream> {
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_default().clone();
        let rows = {
            let mut rows = slot.rows.lock().unwrap_or_else(|e| e.into_inner());
            match &*rows {
                Some(rows) => rows.clone(),
                None => {
                    let storage = materialize(name, ctx, metrics, start()?, cancel)?;
                    let readers = self.readers.get(&id).copied().unwrap_or(1).max(1);
                    let computed = Arc::new(SharedRows {
                        storage: Mutex::new(Some(storage)),
                        readers_left: AtomicUsize::new(readers),
                    });
                    rows.insert(computed).clone()
                }
            }
        };
        let spill_reader = {
            let storage = rows.storage.lock().unwrap_or_else(|e| e.into_inner());
            let storage = storage
                .as_ref()
                .ok_or_else(|| Error::Execution(format!("internal error: CTE {name} read after its last reference")))?;
            storage.spilled.as_ref().map(|f| f.reader()).transpose()?
        };
        Ok(SharedStream { rows, next: 0, spill_reader, ctx: ctx.clone(), done: false })
    }
}

/// Runs the CTE's pipeline, keeping rows in memory while its share allows and spilling the rest.
fn materialize(
    name: &str,
    ctx: &ExecContext,
    metrics: &Arc<OperatorMetrics>,
    mut input: BatchStream,
    cancel: &AtomicBool,
) -> Result<Storage> {
    let limit = ctx.available_for_sizing() / 4;
    let mut reservation = ctx.pool.register(format!("CTE[{name}]"), true);
    let mut batches = Vec::new();
    let mut writer = None;
    while let Some(item) = input.next_reserved() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let (batch, held) = item?;
        input.release(held);
        metrics.rows_in(batch.num_rows());
        let bytes = batch.get_array_memory_size() as u64;
        if writer.is_none() && reservation.size() + bytes <= limit && reservation.try_grow_spare(bytes).is_ok() {
            batches.push(batch);
            metrics.reserved(reservation.size());
            continue;
        }
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(ctx.spill.create(batch.schema(), &format!("cte-{name}"))?),
        };
        w.write(&batch)?;
    }
    let spilled = writer.map(|w| w.finish()).transpose()?;
    if let Some(f) = &spilled {
        metrics.spilled(f);
    }
    Ok(Storage { batches, spilled, _reservation: reservation })
}

/// One reference's reader of a CTE's rows.
pub(crate) struct SharedStream {
    rows: Arc<SharedRows>,
    next: usize,
    spill_reader: Option<SpillReader>,
    ctx: ExecContext,
    done: bool,
}

impl SharedStream {}

impl Running for SharedStream {
    fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        if self.done {
            return None;
        }
        if cancel.load(Ordering::Relaxed) {
            return Some(Err(Error::Cancelled));
        }
        let in_memory = {
            let storage = self.rows.storage.lock().unwrap_or_else(|e| e.into_inner());
            storage.as_ref().and_then(|s| s.batches.get(self.next).cloned())
        };
        if let Some(batch) = in_memory {
            self.next += 1;
            // Paid for by the CTE's own reservation.
            return Some(Ok((batch, self.ctx.pool.register("CTE read", false))));
        }
        let next = self.spill_reader.as_mut().map(|r| r.next_batch()).transpose();
        match next {
            Ok(Some(Some(batch))) => {
                let mut r = self.ctx.pool.register("CTE read", false);
                Some(r.try_grow(batch.get_array_memory_size() as u64).map(|_| (batch, r)))
            }
            Ok(_) => {
                self.stop();
                None
            }
            Err(e) => {
                self.stop();
                Some(Err(e))
            }
        }
    }

    /// This reference is done: the last one frees the rows.
    fn stop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.spill_reader = None;
        if self.rows.readers_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.rows.storage.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
}

impl Drop for SharedStream {
    fn drop(&mut self) {
        self.stop();
    }
}
