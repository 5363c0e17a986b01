//! External sort: `ORDER BY` over inputs of any size, and top-k for `ORDER BY ... LIMIT k`.
//!
//! Blocks: the whole input is consumed before the first row comes out. Spills: sorted runs to
//! Parquet through the [`SpillManager`](crate::SpillManager).
//!
//! # Algorithm
//!
//! 1. **Run generation.** Input batches are buffered under the operator's reservation
//!    (`ExternalSort`, spillable) up to half of its share of the pool; the other half is scratch
//!    for sorting (keys in Arrow row format, a 16- or 32-byte key prefix and a `u32` pair per row,
//!    one output chunk). When the buffer is full it is sorted (stably: ties keep input order) and
//!    written as one run, in chunks of `batch_size` rows (fewer for wide rows: a chunk is about a
//!    batch's worth of bytes). Once the sort has spilled, each run is sorted and written on a
//!    thread of its own (as many at once as there are threads, inside the share) while the input
//!    goes on. With a `fetch` (top-k), a full buffer is first cut to its best `k` rows and kept in
//!    memory while those fit; only a `k` too big for memory spills.
//! 2. **In memory.** If nothing was spilled, the buffer is sorted once and its chunks are produced
//!    on demand from the sorted indices (no second copy of the data).
//! 3. **Merge.** Each run costs one decoded chunk and its keys while it is merged. The fan-in is
//!    what the pool has left divided by that cost, reserved before the merge starts. With more runs
//!    than the fan-in, neighbouring runs are merged into longer runs first (a pass), keeping run
//!    order so the sort stays stable; each merged run's file is removed as soon as it is read.
//!    The runs meet in a tree of losers: one comparison per level for each row out, most of them
//!    settled by 32-byte key prefixes kept side by side.
//!
//! ```text
//!  input ─> [buffer ─ sort ─> run 1] [buffer ─ sort ─> run 2] ... [run n]
//!                                                    │ passes while n > fan-in
//!                              tree of losers (row-format keys)  ─> sorted chunks
//! ```

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use arrow_row::{RowConverter, Rows, SortField};

use super::int_map::prefetch;
use super::node::{Node, Running, Started};
use super::{sliced_bytes, start_beside, BatchStream, ExecContext, ExplainLine, OperatorMetrics, Pipeline};
use crate::error::{Error, Result};
use crate::memory::{MemoryReservation, Reclaim};
use crate::plan::SortKey;
use crate::spill::{SpillFile, SpillReader};

/// What a sort keeps reserved for itself while its input runs: a few batches to buffer and sort
/// (more than that at a small budget starved the operators beside it: an aggregation feeding a
/// sort at 8 MiB could not reserve its output with eight batches kept).
pub(crate) fn min_memory(ctx: &ExecContext) -> u64 {
    4 * ctx.batch_bytes_target().min(1 << 20)
}

/// The least memory a plan with a sort is accepted with: also room to merge runs two at a time
/// once the input is done (a chunk of each, its keys, a chunk being read and the open parts'
/// footers, in three quarters of what is free: eight batches). Accepted with four, a sort
/// failed to merge its runs (found by the fuzzer).
pub(crate) fn plan_min_memory(ctx: &ExecContext) -> u64 {
    8 * ctx.batch_bytes_target().min(1 << 20) + 2 * crate::spill::METADATA_PER_PART
}

/// An external sort: sorted runs in memory, spilled when the pool is short, merged.
pub(crate) struct SortNode {
    pub input: Box<Pipeline>,
    pub keys: Vec<SortKey>,
    /// Only the first rows (a top-N).
    pub fetch: Option<usize>,
}

impl SortNode {
    /// The keys as `EXPLAIN` (with `nulls`, their null ordering) shows them.
    fn keys(&self, nulls: bool) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{}{}{}",
                    self.input.schema.field(k.column).name(),
                    if k.descending { " DESC" } else { "" },
                    if nulls && k.nulls_first { " NULLS FIRST" } else { "" }
                )
            })
            .collect();
        let top = self.fetch.map(|f| format!(" (top {f})")).unwrap_or_default();
        format!("by {}{top}", keys.join(", "))
    }
}

impl Node for SortNode {
    fn name(&self) -> &'static str {
        "ExternalSort"
    }

    fn detail(&self) -> String {
        self.keys(false)
    }

    fn inputs(&self) -> Vec<&Pipeline> {
        vec![&self.input]
    }

    fn explain(&self, ctx: &ExecContext, id: u64, depth: usize, role: &str, out: &mut Vec<ExplainLine>) {
        out.push(ExplainLine { depth, id: Some(id), text: format!("{role}ExternalSort {}", self.keys(true)) });
        self.input.describe(ctx, depth + 1, "", out);
    }

    fn min_memory(&self, ctx: &ExecContext) -> u64 {
        self.input.min_memory(ctx) + plan_min_memory(ctx)
    }

    fn stream_memory(&self, ctx: &ExecContext, _queue_limit: u64) -> u64 {
        min_memory(ctx)
    }

    /// A sort below a sort has finished its input before it produces anything.
    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        self.input.max_memory(ctx, queue_limit).max(min_memory(ctx))
    }

    fn start(
        self: Box<Self>,
        ctx: &ExecContext,
        _schema: &SchemaRef,
        metrics: &Arc<OperatorMetrics>,
        _queue_limit: Option<u64>,
    ) -> Result<Started> {
        let SortNode { input, keys, fetch } = *self;
        // The input runs beside the sort: leave it what it can hold at most.
        let small = 2 * ctx.batch_bytes_target();
        let child_max = input.max_memory(ctx, small);
        let child_stream = input.stream_memory(ctx, small);
        // Over an aggregation, which sizes its later passes from what is free, the sort keeps its
        // minimum once the aggregation's output starts (its input is done by then; over a scan
        // or a join, running workers use that room).
        let keep_floor = matches!(input.source.name(), "HashAggregate" | "ExternalSort");
        let child = start_beside(ctx, "ExternalSort", min_memory(ctx), || input.execute_with(ctx, Some(small)))?;
        let sort = SortStream::new(child, keep_floor, keys, fetch, child_max, child_stream, ctx, metrics.clone())?;
        Ok(Started::new(sort))
    }
}

/// `chunk` in zero-copy slices of at most about `target` bytes each (a wider row alone). Chunks
/// are cut by the rows' average width, and rows of very different widths (strings of a few bytes
/// beside some of 8 KB) made chunks many times the target; the merge holds a chunk per run, and
/// at 4 MiB such a sort was accepted and then could not merge two runs.
fn cut(chunk: RecordBatch, target: u64) -> Vec<RecordBatch> {
    let mut pieces = Vec::new();
    let mut todo = vec![chunk];
    while let Some(chunk) = todo.pop() {
        let rows = chunk.num_rows();
        if rows <= 1 || sliced_bytes(&chunk) <= 2 * target {
            pieces.push(chunk);
        } else {
            todo.push(chunk.slice(rows / 2, rows - rows / 2));
            todo.push(chunk.slice(0, rows / 2));
        }
    }
    pieces
}

/// At least the bytes of `chunk`'s sort keys in row format, without converting them: a value
/// takes its bytes and a null byte, a string also a byte per 8 of its first 32 and per 32 after,
/// and at most 9 bytes of padding (a quarter more than its bytes, and 10 a row); each row an
/// 8-byte offset. The most key bytes per row seen in the input, times the chunk's rows, counted a
/// chunk of short strings as if each were the longest seen (663 KB for a chunk of 128 KB), and a
/// chunk of the longest as if they were average.
fn key_bytes(chunk: &RecordBatch, keys: &[SortKey]) -> u64 {
    let columns: u64 = keys
        .iter()
        .map(|k| {
            let c = chunk.column(k.column);
            c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum();
    columns + columns / 4 + (8 + 10 * keys.len() as u64) * chunk.num_rows() as u64
}

/// A sort in progress: consumes its input on the first call, then hands out sorted chunks.
pub(crate) struct SortStream {
    state: State,
    /// Shared with the pool, which may ask the sort to spill its runs while the input works on
    /// its next batch (see [`Reclaim`]).
    sorter: Arc<Mutex<Sorter>>,
    ctx: ExecContext,
}

enum State {
    Pending(Box<BatchStream>),
    /// One sorted run, all in memory: its chunks are the output.
    Memory(VecDeque<RecordBatch>),
    Merge(Merger),
    Done,
}

impl SortStream {
    /// `child_max` is the most the input pipeline holds while it runs beside the sort, and
    /// `child_stream` what it holds besides its reservations once its output starts (see
    /// [`Sorter::take_batch`]); with `keep_floor` the sort reserves its minimum when the first
    /// batch arrives and keeps it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        child: BatchStream,
        keep_floor: bool,
        keys: Vec<SortKey>,
        fetch: Option<usize>,
        child_max: u64,
        child_stream: u64,
        ctx: &ExecContext,
        metrics: Arc<OperatorMetrics>,
    ) -> Result<SortStream> {
        let schema = child.schema();
        let converter = RowConverter::new(sort_fields(&schema, &keys))?;
        let prefix_words = prefix_words(&schema, &keys);
        let prefix_whole = prefix_holds_keys(&schema, &keys, prefix_words);
        let share = ctx.available_for_sizing().saturating_sub(child_max);
        let reservation = ctx.pool.register("ExternalSort", true);
        let sorter = Sorter {
            schema,
            keys,
            fetch,
            converter,
            buffer: Vec::new(),
            buffer_bytes: 0,
            reservation,
            floor: None,
            keep_floor,
            prefix_words,
            prefix_whole,
            runs: Vec::new(),
            // The rest is scratch: the row order (a key prefix, batch and row: 24 or 40 bytes a
            // row) and one output chunk.
            buffer_limit: (share * 3 / 4).max(min_memory(ctx) / 2),
            run_bytes: (share * 3 / 8).clamp(min_memory(ctx) / 4, RUN_BYTES),
            max_chunk_bytes: 0,
            max_chunk_keys: 0,
            // The minimums of the operators above, still to come: the merge leaves them room.
            above: ctx.pending_minimums.load(std::sync::atomic::Ordering::Acquire),
            ctx: ctx.clone(),
            metrics,
            accepting: false,
            failed: None,
            child_stream: Some(child_stream),
        };
        let sorter = Arc::new(Mutex::new(sorter));
        let reclaimer: std::sync::Weak<dyn Reclaim> = Arc::downgrade(&sorter) as _;
        lock(&sorter).reservation.set_reclaimer(reclaimer);
        Ok(SortStream { state: State::Pending(Box::new(child)), sorter, ctx: ctx.clone() })
    }
}

impl Running for SortStream {
    fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        loop {
            let next = match &mut self.state {
                State::Pending(child) => match consume(&self.sorter, child, cancel) {
                    Ok(state) => {
                        self.state = state;
                        continue;
                    }
                    Err(e) => Err(e),
                },
                State::Memory(chunks) => match chunks.pop_front() {
                    Some(batch) => {
                        // Its bytes move from the sort's reservation to the chunk's own.
                        lock(&self.sorter).reservation.shrink(batch.get_array_memory_size() as u64);
                        Ok(batch)
                    }
                    None => {
                        self.state = State::Done;
                        return None;
                    }
                },
                State::Merge(merger) => match merger.next_chunk() {
                    Some(batch) => batch,
                    None => {
                        self.state = State::Done;
                        return None;
                    }
                },
                State::Done => return None,
            };
            return Some(next.and_then(|batch| {
                // The chunk travels with its own reservation; the consumer releases it.
                let mut r = self.ctx.pool.register("ExternalSort output", false);
                r.try_grow(batch.get_array_memory_size() as u64)?;
                Ok((batch, r))
            }));
        }
    }

    fn stop(&mut self) {
        self.state = State::Done;
        let mut sorter = lock(&self.sorter);
        sorter.accepting = false;
        // A run being written is waited for, so that its file is gone when the query is.
        let _ = sorter.finish_writes();
        sorter.buffer.clear();
        sorter.runs.clear();
        sorter.reservation.free();
    }
}

fn lock(sorter: &Mutex<Sorter>) -> MutexGuard<'_, Sorter> {
    // A panic while sorting leaves nothing half-counted that matters: the query fails anyway.
    sorter.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the whole input into sorted runs and picks the output state. The sorter is locked
/// while it takes a batch, not while the input makes the next one: meanwhile an operator below
/// (a join working through its partitions, say) that the pool cannot serve may make this sort
/// write its runs to disk.
fn consume(sorter: &Mutex<Sorter>, child: &mut BatchStream, cancel: &AtomicBool) -> Result<State> {
    lock(sorter).accepting = true;
    while let Some(item) = child.next_reserved() {
        let mut sorter = lock(sorter);
        if let Some(e) = sorter.failed.take() {
            return Err(e);
        }
        sorter.take_batch(item?, child, cancel)?;
    }
    let mut sorter = lock(sorter);
    sorter.accepting = false;
    if let Some(e) = sorter.failed.take() {
        return Err(e);
    }
    sorter.finish_input()
}

/// Asked by the pool for memory, a sort taking input writes the sorted runs it keeps in memory
/// to disk (in place: run order, and so stability, is kept). The buffer still being filled stays:
/// it is at most one run's worth, and sorting it would need memory the pool does not have.
impl Reclaim for Mutex<Sorter> {
    fn reclaim(&self, _bytes: u64) -> u64 {
        // Busy with a batch of its own (or the caller is this sort itself): nothing to give now.
        let Ok(mut sorter) = self.try_lock() else { return 0 };
        if !sorter.accepting || sorter.failed.is_some() {
            return 0;
        }
        // Runs being written hold reservations of their own, given back as they finish.
        let before = sorter.reservation.size() + sorter.in_flight();
        if let Err(e) = sorter.spill_memory_runs() {
            sorter.failed = Some(e);
        }
        let freed = before.saturating_sub(sorter.reservation.size() + sorter.in_flight());
        if freed > 0 {
            sorter.metrics.spilled_on_request();
        }
        freed
    }
}

struct Sorter {
    schema: SchemaRef,
    keys: Vec<SortKey>,
    fetch: Option<usize>,
    converter: RowConverter,
    /// Buffered batches with their sort keys in row format (reserved together).
    buffer: Vec<(RecordBatch, Rows)>,
    /// Bytes of `buffer` (batches and keys).
    buffer_bytes: u64,
    /// Pays for the buffer and the runs kept in memory.
    reservation: MemoryReservation,
    /// The sort's minimum, kept aside over a blocking input: drawn on when the pool is short (an
    /// aggregation under the sort sizes its later passes from what is free), refilled after each
    /// spill.
    floor: Option<MemoryReservation>,
    /// Whether to take the floor at the first batch.
    keep_floor: bool,
    /// Words of key prefix the run sorts compare first (see [`prefix_words`]).
    prefix_words: usize,
    /// Whether the prefix holds every key whole (see [`prefix_holds_keys`]).
    prefix_whole: bool,
    /// Sorted runs, in input order.
    runs: Vec<Run>,
    /// Most bytes of buffer plus in-memory runs.
    buffer_limit: u64,
    /// Bytes of input sorted into one run: small enough to sort with good locality.
    run_bytes: u64,
    /// The largest chunk written to a run and the largest keys of one, which size the merge buffers.
    max_chunk_bytes: u64,
    max_chunk_keys: u64,
    /// Bytes the operators above this sort need at least (they start once it merges).
    above: u64,
    ctx: ExecContext,
    metrics: Arc<OperatorMetrics>,
    /// Taking input: the pool may ask for the runs in memory to be spilled.
    accepting: bool,
    /// A spill asked for by the pool that failed, for the sort's next step to report.
    failed: Option<Error>,
    /// Until the first batch: what the input holds besides its reservations as it streams.
    child_stream: Option<u64>,
}

impl Sorter {
    fn batch_size(&self) -> usize {
        self.ctx.config.batch_size.max(1)
    }

    /// What makes a merge's keys of chunks read back (the same as [`Sorter::keys_of`]).
    fn chunk_keys(&self) -> Result<ChunkKeys> {
        Ok(ChunkKeys {
            converter: Arc::new(RowConverter::new(sort_fields(&self.schema, &self.keys))?),
            columns: self.keys.iter().map(|k| k.column).collect(),
        })
    }

    fn keys_of(&self, batch: &RecordBatch) -> Result<Rows> {
        let columns: Vec<ArrayRef> = self.keys.iter().map(|k| batch.column(k.column).clone()).collect();
        Ok(self.converter.convert_columns(&columns)?)
    }

    /// Takes one input batch into the buffer, cutting runs as it fills.
    fn take_batch(
        &mut self,
        item: (RecordBatch, MemoryReservation),
        child: &mut BatchStream,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let (batch, mut child_reservation) = item;
        if let Some(child_stream) = self.child_stream.take() {
            // The share was fixed before the input started, leaving room for the most it
            // might hold. Now it holds what it really holds (a join's table, reserved), and
            // whatever it needs later (a grace join's next partition) it can have by making
            // this sort spill its runs: the sort may take what is free but for the input's
            // streaming buffers.
            let share = self.ctx.available_for_sizing().saturating_sub(child_stream);
            self.buffer_limit = self.buffer_limit.max(share * 3 / 4);
            self.run_bytes = self.run_bytes.max((share * 3 / 8).clamp(min_memory(&self.ctx) / 4, RUN_BYTES));
        }
        if std::mem::take(&mut self.keep_floor) {
            // Out of the sort's own share: the input was sized without it.
            let minimum = min_memory(&self.ctx);
            let mut floor = self.ctx.pool.register("ExternalSort minimum", false);
            if floor.try_grow(minimum).is_ok() {
                self.floor = Some(floor);
                self.buffer_limit = self.buffer_limit.saturating_sub(minimum).max(minimum / 2);
            }
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let keys = self.keys_of(&batch)?;
        let bytes = batch.get_array_memory_size() as u64 + keys.size() as u64;
        // Take the batch's reservation over from the stream (whose flow control then moves
        // on): only its keys, and any shortfall, are new.
        let moved = self.reservation.take(&mut child_reservation);
        child.release(child_reservation);
        if moved > bytes {
            self.reservation.shrink(moved - bytes);
        }
        let extra = bytes.saturating_sub(moved);
        let over = |s: &Self| s.in_flight() + s.reservation.size() + extra > s.buffer_limit;
        // Plain growth, not spare: the sort gives memory back when others ask for it (see
        // `Reclaim`), and a buffer kept out of the headroom cut a run per batch near the minimum
        // (thousands of runs of one batch, merged for 18 minutes).
        if over(self) || self.reservation.try_grow(extra).is_err() {
            self.spill_memory_runs()?;
            if over(self) || self.reservation.try_grow(extra).is_err() {
                if self.buffer.is_empty() {
                    // The buffer's size is a target for runs; one batch larger than it is
                    // still sorted, as long as the pool can hold it.
                    self.grow_from_floor(extra).map_err(|_| self.too_small(bytes))?;
                    self.metrics.rows_in(batch.num_rows());
                    self.metrics.reserved(self.reservation.size());
                    self.buffer.push((batch, keys));
                    self.buffer_bytes += bytes;
                    return self.sort_run(false);
                }
                self.sort_run(false)?;
                self.spill_memory_runs()?;
                self.grow_from_floor(extra).map_err(|_| self.too_small(bytes))?;
            }
        }
        self.metrics.rows_in(batch.num_rows());
        self.metrics.reserved(self.reservation.size());
        self.buffer.push((batch, keys));
        self.buffer_bytes += bytes;
        if self.buffer_bytes >= self.run_bytes {
            if self.runs.iter().any(|r| !matches!(r, Run::Memory(_))) {
                self.sort_behind()?;
            } else {
                self.sort_run(false)?;
            }
        }
        Ok(())
    }

    /// Once the input is done: sorts what is buffered and picks the output state.
    fn finish_input(&mut self) -> Result<State> {
        // The input is done and its workers have stopped: the pool's threads are free.
        if !self.buffer.is_empty() {
            self.sort_run(true)?;
        }
        self.finish_writes()?;
        if self.runs.len() == 1 {
            if let Run::Memory(chunks) = &mut self.runs[0] {
                self.floor = None;
                return Ok(State::Memory(std::mem::take(chunks)));
            }
        }
        self.merge()
    }

    /// Grows the reservation by `bytes`, from the pool or else from the kept minimum.
    fn grow_from_floor(&mut self, bytes: u64) -> Result<()> {
        if self.reservation.try_grow(bytes).is_ok() {
            return Ok(());
        }
        self.draw_on_floor(bytes);
        self.reservation.try_grow(bytes)
    }

    /// Gives up to `bytes` of the kept minimum back to the pool, for a request about to be retried.
    fn draw_on_floor(&mut self, bytes: u64) {
        if let Some(floor) = &mut self.floor {
            floor.shrink(bytes.min(floor.size()));
        }
    }

    /// Puts the kept minimum back once memory is free again (after a spill).
    fn refill_floor(&mut self) {
        let want = min_memory(&self.ctx);
        if let Some(floor) = self.floor.as_mut().filter(|f| f.size() < want) {
            let _ = floor.try_resize(want);
        }
    }

    fn too_small(&self, bytes: u64) -> Error {
        let budget = self.ctx.pool.budget();
        Error::BudgetTooSmall {
            what: "sorting".into(),
            needed: budget.saturating_sub(self.ctx.pool.available()) + 4 * bytes,
            budget,
        }
    }

    /// Sorts the buffer into an in-memory run: stable, by row-format keys, cut to `fetch` rows.
    /// `parallel` sorts on the worker threads, which must then be idle: while the input still
    /// runs they are busy scanning (and waiting for this very thread), so runs cut during the input
    /// are sorted on the consumer, or on a thread of their own once the sort spills (see
    /// [`Sorter::sort_behind`]).
    fn sort_run(&mut self, parallel: bool) -> Result<()> {
        let mut buffered = std::mem::take(&mut self.buffer);
        let total: usize = buffered.iter().map(|(b, _)| b.num_rows()).sum();
        let scratch_bytes = order_bytes(total, self.prefix_words);
        let mut scratch = self.ctx.pool.register("ExternalSort order", false);
        if scratch.try_grow(scratch_bytes).is_err() {
            // Runs kept in memory make room first (the pool is shared with the operators
            // around, which may have taken more than they had when this sort sized itself).
            self.spill_memory_runs()?;
            self.draw_on_floor(scratch_bytes);
            if scratch.try_grow(scratch_bytes).is_err() {
                if buffered.len() < 2 {
                    return Err(self.too_small(scratch_bytes));
                }
                // Still no room to order the whole buffer (an aggregation beside this sort
                // at 8 MiB held what the sort had counted on): its two halves are sorted as
                // two runs, one after the other, which keeps the sort stable.
                let second = buffered.split_off(buffered.len() / 2);
                let second_bytes: u64 =
                    second.iter().map(|(b, k)| b.get_array_memory_size() as u64 + k.size() as u64).sum();
                let second_bytes = second_bytes.min(self.buffer_bytes);
                self.buffer = buffered;
                self.buffer_bytes -= second_bytes;
                self.sort_run(parallel)?;
                self.buffer = second;
                self.buffer_bytes = second_bytes;
                return self.sort_run(parallel);
            }
        }
        let order = run_order(
            &buffered,
            self.fetch,
            parallel.then_some(&*self.ctx.threads),
            self.prefix_words,
            self.prefix_whole,
        );
        let batches: Vec<&RecordBatch> = buffered.iter().map(|(b, _)| b).collect();
        let chunk_rows = self.chunk_rows(&buffered);
        let mut chunks: VecDeque<RecordBatch> = VecDeque::new();
        // Set when the run's chunks do not fit beside its input: the run goes to disk as it is cut.
        let mut writer: Option<crate::spill::SpillWriter> = None;
        let target = self.chunk_bytes() as u64;
        for part in order.chunks(chunk_rows) {
            let gathered = order.gather(part, &self.schema, &batches)?;
            let bytes = gathered.get_array_memory_size() as u64;
            // Sorted chunks replace the buffer: account for them as they are made (runs kept in
            // memory go to disk when the pool is short).
            if writer.is_none() && self.grow_from_floor(bytes).is_err() {
                self.spill_memory_runs()?;
                if self.grow_from_floor(bytes).is_err() {
                    // The input and its sorted copy do not fit together (the operators around
                    // took more than they had when the sort sized its buffer): the chunks made so
                    // far and the rest go to a spill file one at a time. An aggregation feeding
                    // this sort at 8 MiB failed here, accepted at its minimum.
                    let mut w = self.ctx.spill.create(self.schema.clone(), "ExternalSort")?;
                    for made in std::mem::take(&mut chunks) {
                        let bytes = made.get_array_memory_size() as u64;
                        self.write_chunk(&mut w, made, target)?;
                        self.reservation.shrink(bytes);
                    }
                    writer = Some(w);
                }
            }
            match writer.as_mut() {
                Some(w) => self.write_chunk(w, gathered, target)?,
                None => chunks.push_back(gathered),
            }
        }
        drop(batches);
        drop(buffered);
        self.reservation.shrink(self.buffer_bytes);
        self.buffer_bytes = 0;
        let run = match writer {
            Some(w) => {
                let file = w.finish()?;
                self.metrics.spilled(&file);
                Run::Spilled(file)
            }
            None => Run::Memory(chunks),
        };
        self.runs.push(run);
        Ok(())
    }

    /// Writes a chunk of a run to its spill file, noting its size for the merge.
    /// (In pieces of about `target` bytes: see [`cut`].)
    fn write_chunk(&mut self, writer: &mut crate::spill::SpillWriter, chunk: RecordBatch, target: u64) -> Result<()> {
        for piece in cut(chunk, target) {
            self.max_chunk_bytes = self.max_chunk_bytes.max(sliced_bytes(&piece));
            self.max_chunk_keys = self.max_chunk_keys.max(key_bytes(&piece, &self.keys));
            writer.write(&piece)?;
        }
        Ok(())
    }

    /// Rows of one chunk of a run of `batches`: a batch's worth, fewer when rows are wide, and
    /// at most a 128th of a run. Chunks are what the merge holds per run, so they set how many
    /// runs one merge takes. A run is a share of memory, so the input one merge covers is a
    /// multiple of memory set by this fraction: about 30 times what is free, where batch-sized
    /// chunks gave the lineitem sort at scale factor 10 (9 GB of rows and keys, 512 MiB) a merge
    /// pass that wrote everything once more (95 s; 75 s with a 64th, still one pass; 55 s without).
    fn chunk_rows(&self, buffered: &[(RecordBatch, Rows)]) -> usize {
        let total: usize = buffered.iter().map(|(b, _)| b.num_rows()).sum();
        let data_bytes: usize = buffered.iter().map(|(b, _)| b.get_array_memory_size()).sum();
        let row_bytes = data_bytes / total.max(1) + 1;
        (self.chunk_bytes() / row_bytes).clamp(1, self.batch_size())
    }

    fn chunk_bytes(&self) -> usize {
        (self.ctx.batch_bytes_target() as usize).min((self.run_bytes as usize / 128).max(64 << 10))
    }

    /// Once the sort has had to spill (its input does not fit), each run it cuts while the input
    /// still comes is sorted, cut into chunks and written on a thread of its own while this
    /// thread takes the next run's worth of input: the consumer of a scan had been the
    /// bottleneck, sorting every run itself while the scan workers waited on it (sorting lineitem
    /// by `l_comment` at scale factor 10: the consumer busy all the time, the two workers a sixth
    /// of it). As many runs as there are threads are in flight at once; each holds its buffer
    /// (still reserved: it moves to the thread), the sorted order and two chunks (one being
    /// encoded), reserved here before the thread starts.
    fn sort_behind(&mut self) -> Result<()> {
        let total: usize = self.buffer.iter().map(|(b, _)| b.num_rows()).sum();
        let extra = order_bytes(total, self.prefix_words) + 2 * self.chunk_bytes() as u64;
        // Runs in flight and the buffer filling meanwhile stay inside the sort's share.
        while self.writing() >= self.ctx.config.threads.max(1)
            || (self.writing() > 0 && self.in_flight() + self.reservation.size() + extra > self.buffer_limit)
        {
            self.finish_writes_beyond(self.writing() - 1)?;
        }
        if self.grow_from_floor(extra).is_err() {
            // The pool is short (operators around this sort took memory since it sized itself):
            // with every run written, or else here, a chunk at a time, as memory allows.
            self.spill_memory_runs()?;
            if self.grow_from_floor(extra).is_err() {
                self.sort_run(false)?;
                return self.spill_memory_runs();
            }
        }
        let buffered = std::mem::take(&mut self.buffer);
        let buffer_bytes = std::mem::take(&mut self.buffer_bytes);
        let chunk_rows = self.chunk_rows(&buffered);
        let target = self.chunk_bytes() as u64;
        let held = self.reservation.split(buffer_bytes + extra);
        let (spill, schema, fetch, words, whole, keys) = (
            self.ctx.spill.clone(),
            self.schema.clone(),
            self.fetch,
            self.prefix_words,
            self.prefix_whole,
            self.keys.clone(),
        );
        let writer = std::thread::Builder::new()
            .name("flow-sort-run".into())
            .spawn(move || {
                let order = run_order(&buffered, fetch, None, words, whole);
                let batches: Vec<&RecordBatch> = buffered.iter().map(|(b, _)| b).collect();
                let mut writer = spill.create(schema.clone(), "ExternalSort")?;
                let (mut max_bytes, mut max_keys) = (0, 0);
                for part in order.chunks(chunk_rows) {
                    for chunk in cut(order.gather(part, &schema, &batches)?, target) {
                        max_bytes = max_bytes.max(sliced_bytes(&chunk));
                        max_keys = max_keys.max(key_bytes(&chunk, &keys));
                        writer.write(&chunk)?;
                    }
                }
                drop(batches);
                drop((order, buffered));
                let file = writer.finish()?;
                drop(held);
                Ok(Written { file, max_chunk_bytes: max_bytes, max_chunk_keys: max_keys })
            })
            .map_err(|e| Error::Execution(format!("cannot start a sort thread: {e}")))?;
        self.runs.push(Run::Writing(writer, buffer_bytes + extra));
        Ok(())
    }

    /// Runs being sorted or written on threads of their own.
    fn writing(&self) -> usize {
        self.runs.iter().filter(|r| matches!(r, Run::Writing(..))).count()
    }

    /// Bytes the runs being sorted or written hold (reserved apart from the sort's own).
    fn in_flight(&self) -> u64 {
        self.runs.iter().map(|r| if let Run::Writing(_, bytes) = r { *bytes } else { 0 }).sum()
    }

    /// Waits for the runs being written.
    fn finish_writes(&mut self) -> Result<()> {
        self.finish_writes_beyond(0)
    }

    /// Waits for the oldest runs being written until at most `in_flight` are.
    fn finish_writes_beyond(&mut self, in_flight: usize) -> Result<()> {
        let mut wait = self.writing().saturating_sub(in_flight);
        for i in 0..self.runs.len() {
            if wait == 0 {
                break;
            }
            if !matches!(self.runs[i], Run::Writing(..)) {
                continue;
            }
            wait -= 1;
            let Run::Writing(writer, _) = std::mem::replace(&mut self.runs[i], Run::Memory(VecDeque::new())) else {
                unreachable!("checked above")
            };
            let written =
                writer.join().map_err(|_| Error::Execution("internal error: a sort thread panicked".into()))??;
            self.max_chunk_bytes = self.max_chunk_bytes.max(written.max_chunk_bytes);
            self.max_chunk_keys = self.max_chunk_keys.max(written.max_chunk_keys);
            self.metrics.spilled(&written.file);
            self.runs[i] = Run::Spilled(written.file);
        }
        Ok(())
    }

    /// Writes the runs kept in memory to spill files, in place, so the order of runs stays the
    /// input order.
    fn spill_memory_runs(&mut self) -> Result<()> {
        self.finish_writes()?;
        for i in 0..self.runs.len() {
            let Run::Memory(chunks) = &mut self.runs[i] else { continue };
            let chunks = std::mem::take(chunks);
            let mut writer = self.ctx.spill.create(self.schema.clone(), "ExternalSort")?;
            let mut freed = 0;
            let target = self.chunk_bytes() as u64;
            for chunk in chunks {
                freed += chunk.get_array_memory_size() as u64;
                self.write_chunk(&mut writer, chunk, target)?;
            }
            let file = writer.finish()?;
            self.metrics.spilled(&file);
            self.runs[i] = Run::Spilled(file);
            self.reservation.shrink(freed);
        }
        self.refill_floor();
        Ok(())
    }

    /// Merges the runs: when more runs are on disk than the fan-in allows, neighbouring runs are
    /// merged into longer ones first (passes), then a final streaming merge.
    fn merge(&mut self) -> Result<State> {
        // The input is done: the kept minimum goes to the merge buffers.
        self.floor = None;
        // One decoded chunk, its keys, the reader's page buffers and its open part's footer, per
        // run on disk.
        let per_run =
            (2 * self.max_chunk_bytes + self.max_chunk_keys + crate::spill::open_file_bytes(&self.schema)).max(1);
        let above = self.above;
        let fan_in_now_with = |pool: &crate::memory::MemoryPool, per_run: u64| {
            ((pool.available().saturating_sub(above) * 3 / 4) / per_run) as usize
        };
        let fan_in_now = |pool: &crate::memory::MemoryPool| fan_in_now_with(pool, per_run);
        let mut fan_in = fan_in_now(&self.ctx.pool);
        let mut spilled = self.runs.iter().filter(|r| matches!(r, Run::Spilled(_))).count();
        if spilled > 0 && (fan_in < self.runs.len() || self.above > 0) {
            // Runs kept in memory hold what the merge buffers (or, over a blocking operator, the
            // operator above, which starts as the merge does) need: they go to disk first.
            self.spill_memory_runs()?;
            spilled = self.runs.len();
            fan_in = fan_in_now(&self.ctx.pool);
        }
        let available = self.ctx.pool.available();
        if spilled > 0 && fan_in < 2 {
            let budget = self.ctx.pool.budget();
            return Err(Error::BudgetTooSmall {
                what: "merging sorted runs".into(),
                needed: budget - available + 3 * per_run,
                budget,
            });
        }
        if spilled > fan_in {
            // Everything to disk, then passes over groups of neighbouring runs.
            self.spill_memory_runs()?;
            while self.runs.len() > fan_in {
                self.metrics.pass();
                let runs = std::mem::take(&mut self.runs);
                let mut runs = runs.into_iter().peekable();
                while runs.peek().is_some() {
                    let group: Vec<Run> = runs.by_ref().take(fan_in).collect();
                    if group.len() == 1 {
                        self.runs.extend(group);
                        continue;
                    }
                    let mut merger = Merger::new(self, group, None, per_run, None)?;
                    let mut writer = self.ctx.spill.create(self.schema.clone(), "ExternalSort-merge")?;
                    while let Some(chunk) = merger.next_chunk() {
                        // A pass over gigabytes of runs takes minutes: an interrupt stops it (it
                        // ran on for 40 s).
                        if self.ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                            return Err(Error::Cancelled);
                        }
                        writer.write(&chunk?)?;
                    }
                    drop(merger);
                    let file = writer.finish()?;
                    self.metrics.spilled(&file);
                    self.runs.push(Run::Spilled(file));
                }
            }
        }
        // The final merge reads each spilled run's next chunk ahead, on a thread of its own, when
        // the pool holds that chunk and its keys too for every run (see [`ReadAhead`]), and the
        // run may use more than one thread.
        let per_run_ahead = per_run + self.max_chunk_bytes + self.max_chunk_keys;
        let ahead = self.ctx.config.threads > 1
            && self.runs.iter().any(|r| matches!(r, Run::Spilled(_)))
            && self.runs.len() <= fan_in_now_with(&self.ctx.pool, per_run_ahead);
        let runs = std::mem::take(&mut self.runs);
        let merger = match ahead {
            true => Merger::new(self, runs, self.fetch, per_run_ahead, Some(ReadAhead::start(self)?))?,
            false => Merger::new(self, runs, self.fetch, per_run, None)?,
        };
        Ok(State::Merge(merger))
    }
}

/// The row-format fields of the sort keys.
fn sort_fields(schema: &SchemaRef, keys: &[SortKey]) -> Vec<SortField> {
    keys.iter()
        .map(|k| {
            SortField::new_with_options(
                schema.field(k.column).data_type().clone(),
                SortOptions { descending: k.descending, nulls_first: k.nulls_first },
            )
        })
        .collect()
}

/// A sorted run: chunks kept in memory, or a spill file.
enum Run {
    Memory(VecDeque<RecordBatch>),
    /// Being sorted and written, or written, to a spill file on a thread of its own (see
    /// [`Sorter::sort_behind`]).
    Writing(std::thread::JoinHandle<Result<Written>>, u64),
    Spilled(SpillFile),
}

/// A run written by a thread of its own, and the largest of its chunks (which size the merge).
struct Written {
    file: SpillFile,
    max_chunk_bytes: u64,
    max_chunk_keys: u64,
}

/// Bytes of the order of a run of `rows` rows (see [`run_order`]).
fn order_bytes(rows: usize, words: usize) -> u64 {
    ((8 * words + 8) * rows) as u64
}

/// Words of key prefix a sort by these keys compares before whole keys (see [`key_prefix`]): two
/// (16 bytes) for numbers and dates, four for text. Neighbours in a sorted run of `l_comment`
/// (TPC-H) share their first 14 characters nearly two times in three and 21 characters one time
/// in five, and a tie is settled by the whole keys, a cache miss each: sorting a run of 229K rows
/// by `l_comment, l_orderkey` took 49-53 ms with 16-byte prefixes, 26-31 ms with 32-byte ones
/// (and 64-80 ms sorted stably with 16-byte prefixes, as runs were before).
/// Fixed-width keys are mostly settled by 16 bytes, and a wider prefix would cost their sorts
/// memory (16 bytes a row more) for little.
fn prefix_words(schema: &SchemaRef, keys: &[SortKey]) -> usize {
    if keys.iter().all(|k| schema.field(k.column).data_type().primitive_width().is_some()) {
        2
    } else {
        PREFIX_WORDS
    }
}

/// Whether keys of these types always fit in `words` words of prefix: fixed-width keys whose
/// row format (a byte of nulls and the value, for each) takes at most that many bytes. Then equal
/// prefixes are equal keys, and a tie needs no look at the keys themselves. Sorting TPC-H
/// lineitem (SF1) by `l_shipdate`, 2,526 values for 6M rows, spent a fifth of its time
/// comparing whole keys in row format after their prefixes tied.
fn prefix_holds_keys(schema: &SchemaRef, keys: &[SortKey], words: usize) -> bool {
    let widths: Option<usize> =
        keys.iter().map(|k| schema.field(k.column).data_type().primitive_width().map(|w| 1 + w)).sum();
    widths.is_some_and(|bytes| bytes <= 8 * words)
}

/// The buffered rows in key order, stable, cut to `fetch` rows; sorted on `pool` when given.
///
/// Each row is sorted as the first `words` words of its row-format key (see [`prefix_words`]),
/// then its batch and row: most comparisons end at the prefix, without touching the keys, and
/// the places settle ties of whole keys in input order, so an unstable sort (a third faster than
/// a stable one here) gives the stable order.
fn run_order(
    buffered: &[(RecordBatch, Rows)],
    fetch: Option<usize>,
    pool: Option<&rayon::ThreadPool>,
    words: usize,
    whole: bool,
) -> RunOrder {
    match words {
        2 => RunOrder::Narrow(run_order_by(buffered, fetch, pool, whole)),
        _ => RunOrder::Wide(run_order_by(buffered, fetch, pool, whole)),
    }
}

/// (With `whole`, the prefixes are the keys: see [`prefix_holds_keys`].)
fn run_order_by<const N: usize>(
    buffered: &[(RecordBatch, Rows)],
    fetch: Option<usize>,
    pool: Option<&rayon::ThreadPool>,
    whole: bool,
) -> Vec<Place<N>> {
    // Sized once: collecting the flattened rows would grow it by doubling, copying it each time
    // into fresh pages (a third of the run phase's page faults).
    let mut order: Vec<Place<N>> = Vec::with_capacity(buffered.iter().map(|(batch, _)| batch.num_rows()).sum());
    for (b, (batch, keys)) in buffered.iter().enumerate() {
        order.extend((0..batch.num_rows() as u32).map(|r| (key_prefix(keys.row(r as usize).as_ref()), b as u32, r)));
    }
    if whole {
        sort_places(&mut order, fetch, pool, |x: &Place<N>, y: &Place<N>| x.cmp(y));
    } else {
        let compare = |x: &Place<N>, y: &Place<N>| {
            x.0.cmp(&y.0)
                .then_with(|| {
                    buffered[x.1 as usize].1.row(x.2 as usize).cmp(&buffered[y.1 as usize].1.row(y.2 as usize))
                })
                .then_with(|| (x.1, x.2).cmp(&(y.1, y.2)))
        };
        sort_places(&mut order, fetch, pool, compare);
    }
    order
}

/// Sorts `order` by `compare`, keeping the best `fetch` rows when given.
fn sort_places<const N: usize>(
    order: &mut Vec<Place<N>>,
    fetch: Option<usize>,
    pool: Option<&rayon::ThreadPool>,
    compare: impl Fn(&Place<N>, &Place<N>) -> std::cmp::Ordering + Sync + Send,
) {
    use rayon::prelude::*;
    if let Some(k) = fetch.filter(|&k| k < order.len()) {
        // The best k first (no order among them), then only those sorted.
        if k > 0 {
            order.select_nth_unstable_by(k - 1, &compare);
        }
        order.truncate(k);
    }
    match pool {
        Some(pool) => pool.install(|| order.par_sort_unstable_by(compare)),
        None => order.sort_unstable_by(compare),
    }
}

/// A row of a run being sorted: its key's prefix (`N` words), its batch and its row in the batch.
type Place<const N: usize> = ([u64; N], u32, u32);

/// A run's rows in key order (see [`run_order`]).
enum RunOrder {
    Narrow(Vec<Place<2>>),
    Wide(Vec<Place<PREFIX_WORDS>>),
}

impl RunOrder {
    fn len(&self) -> usize {
        match self {
            RunOrder::Narrow(order) => order.len(),
            RunOrder::Wide(order) => order.len(),
        }
    }

    /// Rows `range` of the order, of the run's `batches`, in that order.
    fn gather(
        &self,
        range: std::ops::Range<usize>,
        schema: &SchemaRef,
        batches: &[&RecordBatch],
    ) -> Result<RecordBatch> {
        fn places<const N: usize>(order: &[Place<N>]) -> Vec<(usize, usize)> {
            order.iter().map(|&(_, b, r)| (b as usize, r as usize)).collect()
        }
        let indices = match self {
            RunOrder::Narrow(order) => places(&order[range]),
            RunOrder::Wide(order) => places(&order[range]),
        };
        interleave_batches(schema, batches, &indices)
    }

    /// The ranges of rows of the chunks of at most `rows` rows.
    fn chunks(&self, rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        let (len, rows) = (self.len(), rows.max(1));
        (0..len).step_by(rows).map(move |start| start..(start + rows).min(len))
    }
}

/// Reads a run back a chunk at a time, with the chunk's keys in row format.
enum RunReader {
    Memory(VecDeque<RecordBatch>),
    /// The file is kept until the run is read to the end; dropping it removes the file.
    Spilled {
        reader: SpillReader,
        _file: SpillFile,
    },
    /// A spilled run whose next chunk is being read by the merge's [`ReadAhead`] thread; `None`
    /// once the run is read to the end.
    Ahead {
        next: Option<std::sync::mpsc::Receiver<ReadChunk>>,
        _file: SpillFile,
    },
}

impl RunReader {
    /// The next chunk that has rows, and its keys; `None` at the end of the run.
    fn next_chunk(&mut self, keys: &ChunkKeys, ahead: Option<&ReadAhead>) -> Result<Option<(RecordBatch, Rows)>> {
        match self {
            RunReader::Memory(chunks) => match chunks.pop_front() {
                Some(batch) if batch.num_rows() > 0 => Ok(Some(keys.attach(batch)?)),
                _ => Ok(None),
            },
            RunReader::Spilled { reader, .. } => read_chunk(reader, keys),
            RunReader::Ahead { next, .. } => {
                let Some(pending) = next.take() else { return Ok(None) };
                let (reader, chunk) = pending.recv().map_err(|_| ReadAhead::stopped())?;
                if let Ok(Some(_)) = &chunk {
                    *next = Some(ahead.ok_or_else(ReadAhead::stopped)?.ask(reader)?);
                }
                chunk
            }
        }
    }
}

/// The next chunk of a spilled run that has rows, with its keys.
fn read_chunk(reader: &mut SpillReader, keys: &ChunkKeys) -> Result<Option<(RecordBatch, Rows)>> {
    match reader.next_batch()? {
        Some(batch) if batch.num_rows() > 0 => Ok(Some(keys.attach(batch)?)),
        _ => Ok(None),
    }
}

/// What a run's read-ahead gives back: the reader, to ask for the chunk after, and the chunk.
type ReadChunk = (SpillReader, Result<Option<(RecordBatch, Rows)>>);

/// Makes the merge's keys (row format) of a chunk's sort columns.
#[derive(Clone)]
struct ChunkKeys {
    converter: Arc<RowConverter>,
    columns: Arc<[usize]>,
}

impl ChunkKeys {
    fn attach(&self, batch: RecordBatch) -> Result<(RecordBatch, Rows)> {
        let columns: Vec<ArrayRef> = self.columns.iter().map(|&c| batch.column(c).clone()).collect();
        let rows = self.converter.convert_columns(&columns)?;
        Ok((batch, rows))
    }
}

/// A thread that reads the merge's spilled runs ahead: when the merge starts on a run's chunk,
/// the run's next chunk is read, decoded and given its keys here. Reading runs back was a quarter
/// of the merge thread's time sorting lineitem by `l_comment` at scale factor 10, where the merge
/// thread is the one always busy and the second core had room. It costs one more decoded chunk
/// and its keys per run, reserved with the merge buffers (the final merge reads ahead only when
/// those fit for all its runs).
///
/// Requests are served in the order they come, which is the order the merge will need them in;
/// each answer goes to a channel of its own with room for it, so the thread never waits for the
/// merge. Dropped, it closes its queue and waits for the request at hand.
struct ReadAhead {
    requests: Option<std::sync::mpsc::Sender<(SpillReader, std::sync::mpsc::SyncSender<ReadChunk>)>>,
    /// Set when the merge is dropped: requests still queued are not read.
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadAhead {
    fn start(sorter: &Sorter) -> Result<ReadAhead> {
        let keys = sorter.chunk_keys()?;
        let (requests, queue) = std::sync::mpsc::channel::<(SpillReader, std::sync::mpsc::SyncSender<ReadChunk>)>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flow-sort-read".into())
            .spawn(move || {
                while let Ok((mut reader, answer)) = queue.recv() {
                    if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let chunk = read_chunk(&mut reader, &keys);
                    // The merge may have stopped meanwhile: then nobody waits for this chunk.
                    let _ = answer.send((reader, chunk));
                }
            })
            .map_err(|e| Error::Execution(format!("cannot start a sort thread: {e}")))?;
        Ok(ReadAhead { requests: Some(requests), stop, thread: Some(thread) })
    }

    /// Asks for `reader`'s next chunk; the answer comes on the channel returned.
    fn ask(&self, reader: SpillReader) -> Result<std::sync::mpsc::Receiver<ReadChunk>> {
        let (answer, receiver) = std::sync::mpsc::sync_channel(1);
        self.requests.as_ref().and_then(|r| r.send((reader, answer)).ok()).ok_or_else(Self::stopped)?;
        Ok(receiver)
    }

    /// The error when the thread is gone (it stops only when dropped, or on a panic).
    fn stopped() -> Error {
        Error::Execution("internal error: the sort's read-ahead thread stopped".into())
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Most bytes of input (rows and keys) in one run. The lineitem sort by `l_comment` at scale
/// factor 10 (512 MiB) took about as long with 64 MiB runs (126 runs, one level less in the
/// merge, but longer run sorts) as with these (251 runs).
const RUN_BYTES: u64 = 32 << 20;

/// Most words of key prefix (see [`prefix_words`]); the merge compares this many.
const PREFIX_WORDS: usize = 4;

/// The first `8 * N` bytes of a row-format key as big-endian integers, zero-padded: ordered as
/// the keys are, up to ties (a tie is settled by the whole keys).
fn key_prefix<const N: usize>(row: &[u8]) -> [u64; N] {
    let mut words = [0u64; N];
    let mut chunks = row.chunks_exact(8);
    for word in words.iter_mut() {
        match chunks.next() {
            Some(bytes) => *word = u64::from_be_bytes(bytes.try_into().expect("8 bytes")),
            None => {
                // The last bytes, a byte at a time (a copy of a length not known here was a call
                // to memmove per row: a tenth of the merge's time).
                *word = chunks.remainder().iter().enumerate().fold(0, |w, (i, &b)| w | (b as u64) << (56 - 8 * i));
                break;
            }
        }
    }
    words
}

fn interleave_batches(schema: &SchemaRef, batches: &[&RecordBatch], indices: &[(usize, usize)]) -> Result<RecordBatch> {
    let columns = (0..schema.fields().len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            arrow::compute::interleave(&arrays, indices)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(indices.len())),
    )?)
}

/// One run being merged.
struct Cursor {
    reader: RunReader,
    batch: RecordBatch,
    rows: Rows,
    /// Average bytes of a row of `batch`, to cut output chunks by size.
    row_bytes: usize,
    pos: usize,
    /// Where the current batch sits in the output chunk's batch list, once it has been used.
    slot: Option<usize>,
}

impl Cursor {
    /// The first bytes of the current row's key (see [`key_prefix`]).
    fn prefix(&self) -> Prefix {
        key_prefix(self.rows.row(self.pos).as_ref())
    }

    /// Asks for the next row's key to be brought into the cache. The merge takes one row at a
    /// time from each of many runs (251 sorting lineitem by `l_comment` at scale factor 10, 512
    /// MiB), too many streams for the hardware to see, and the run's next row is compared only
    /// once its current one is out, hundreds of rows later: loading it then was a miss to memory
    /// for nearly every row, a sixth of the merge thread's time.
    fn prefetch_next(&self) {
        if self.pos + 1 < self.rows.num_rows() {
            let key = self.rows.row(self.pos + 1);
            let bytes = key.as_ref();
            if let (Some(first), Some(last)) = (bytes.first(), bytes.get(8 * PREFIX_WORDS - 1).or(bytes.last())) {
                prefetch(first);
                prefetch(last);
            }
        }
    }
}

/// The key prefix the merge compares first.
type Prefix = [u64; PREFIX_WORDS];

/// The prefix of a finished run: no row's is greater (a row's may be equal; see [`Merger::less`]).
const DONE: Prefix = [u64::MAX; PREFIX_WORDS];

/// A k-way merge of sorted runs with a tree of losers over the run cursors.
///
/// Each row taken replays one path from its run's leaf to the root, one comparison per level
/// (log2 k). A binary heap needs up to two per level on its way down; with 251 runs (the lineitem
/// sort at scale factor 10 and 512 MiB), that was 15 comparisons a row instead of 8.
struct Merger {
    schema: SchemaRef,
    keys: ChunkKeys,
    /// Reads spilled runs ahead, when the pool holds a chunk more per run. Declared before the
    /// cursors, so that its thread has stopped when their files go.
    ahead: Option<ReadAhead>,
    /// One per run; `None` once the run is read to the end (it then loses to every other).
    cursors: Vec<Option<Cursor>>,
    /// `tree[0]` is the run whose row comes next; `tree[n]` for `n` in `1..k` the loser of the
    /// match at node `n`, whose children are nodes `2n` and `2n + 1` (node `k + i` is run `i`).
    tree: Vec<usize>,
    left: Option<usize>,
    batch_size: usize,
    /// Output chunks stop at about this many bytes.
    chunk_bytes: usize,
    /// The prefix of each run's current row, [`DONE`] once it is finished: most comparisons end
    /// here, in a few cache lines, without touching the cursors or the keys.
    prefixes: Vec<Prefix>,
    /// The prefixes hold the keys whole (see [`prefix_holds_keys`]): equal prefixes are equal
    /// keys (and a real key's prefix is never [`DONE`], whose last words are not zero).
    whole: bool,
    _buffers: MemoryReservation,
}

impl Merger {
    fn new(
        sorter: &Sorter,
        runs: Vec<Run>,
        fetch: Option<usize>,
        per_run: u64,
        ahead: Option<ReadAhead>,
    ) -> Result<Merger> {
        // Merge buffers are reserved before the merge starts: one per run on disk (runs in memory
        // are already paid for by the sort's reservation).
        let on_disk = runs.iter().filter(|r| matches!(r, Run::Spilled(_))).count() as u64;
        let mut buffers = sorter.ctx.pool.register("ExternalSort merge", false);
        buffers.try_grow(per_run * on_disk)?;
        let mut merger = Merger {
            schema: sorter.schema.clone(),
            keys: sorter.chunk_keys()?,
            ahead,
            cursors: Vec::with_capacity(runs.len()),
            tree: Vec::new(),
            left: fetch,
            batch_size: sorter.batch_size(),
            chunk_bytes: sorter.ctx.batch_bytes_target() as usize,
            prefixes: Vec::with_capacity(runs.len()),
            whole: sorter.prefix_whole,
            _buffers: buffers,
        };
        // Every run's first chunk is asked for before any is waited for.
        let mut readers = Vec::with_capacity(runs.len());
        for run in runs {
            readers.push(match (run, &merger.ahead) {
                (Run::Memory(chunks), _) => RunReader::Memory(chunks),
                (Run::Spilled(file), Some(ahead)) => {
                    RunReader::Ahead { next: Some(ahead.ask(file.reader()?)?), _file: file }
                }
                (Run::Spilled(file), None) => RunReader::Spilled { reader: file.reader()?, _file: file },
                (Run::Writing(..), _) => unreachable!("writes finish before a merge"),
            });
        }
        for mut reader in readers {
            match reader.next_chunk(&merger.keys, merger.ahead.as_ref())? {
                Some((batch, rows)) => {
                    let row_bytes = batch.get_array_memory_size() / batch.num_rows() + 1;
                    let cursor = Cursor { reader, batch, rows, row_bytes, pos: 0, slot: None };
                    merger.prefixes.push(cursor.prefix());
                    merger.cursors.push(Some(cursor));
                }
                None => {
                    merger.prefixes.push(DONE);
                    merger.cursors.push(None);
                }
            }
        }
        merger.build_tree();
        Ok(merger)
    }

    /// Plays every match once, from the leaves up.
    fn build_tree(&mut self) {
        let k = self.cursors.len();
        self.tree = vec![0; k.max(1)];
        // The winner below each node; nodes `k..2k` are the runs themselves.
        let mut winner: Vec<usize> = (0..2 * k).map(|n| n.saturating_sub(k)).collect();
        for n in (1..k).rev() {
            let (a, b) = (winner[2 * n], winner[2 * n + 1]);
            let (win, lose) = if self.less(a, b) { (a, b) } else { (b, a) };
            winner[n] = win;
            self.tree[n] = lose;
        }
        self.tree[0] = if k > 1 { winner[1] } else { 0 };
    }

    /// After run `run` moved on: replays its matches up to the root.
    fn replay(&mut self, mut run: usize) {
        let k = self.cursors.len();
        let mut node = (run + k) / 2;
        while node > 0 {
            if self.less(self.tree[node], run) {
                std::mem::swap(&mut self.tree[node], &mut run);
            }
            node /= 2;
        }
        self.tree[0] = run;
    }

    /// Whether run `a`'s current row comes before run `b`'s: by key, then by run (the earlier run
    /// first, so the sort is stable); a finished run comes after every other.
    #[inline]
    fn less(&self, a: usize, b: usize) -> bool {
        let (p, q) = (&self.prefixes[a], &self.prefixes[b]);
        if p != q {
            return p < q;
        }
        if self.whole {
            return a < b;
        }
        let (x, y) = match (&self.cursors[a], &self.cursors[b]) {
            (Some(x), Some(y)) => (x, y),
            (Some(_), None) => return true,
            (None, Some(_)) => return false,
            (None, None) => return a < b,
        };
        match x.rows.row(x.pos).cmp(&y.rows.row(y.pos)) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => a < b,
        }
    }

    fn next_chunk(&mut self) -> Option<Result<RecordBatch>> {
        let want = match self.left {
            Some(0) => return None,
            Some(left) => left.min(self.batch_size),
            None => self.batch_size,
        };
        let mut slots: Vec<RecordBatch> = Vec::new();
        let mut indices: Vec<(usize, usize)> = Vec::with_capacity(want);
        let mut bytes = 0;
        while indices.len() < want && bytes < self.chunk_bytes {
            let top = self.tree[0];
            // The winner is a finished run only when every run is.
            let Some(cursor) = self.cursors.get_mut(top).and_then(Option::as_mut) else { break };
            let slot = *cursor.slot.get_or_insert_with(|| {
                slots.push(cursor.batch.clone());
                slots.len() - 1
            });
            indices.push((slot, cursor.pos));
            bytes += cursor.row_bytes;
            cursor.pos += 1;
            if cursor.pos < cursor.batch.num_rows() {
                self.prefixes[top] = cursor.prefix();
                cursor.prefetch_next();
            } else {
                match cursor.reader.next_chunk(&self.keys, self.ahead.as_ref()) {
                    Ok(Some((batch, rows))) => {
                        cursor.row_bytes = batch.get_array_memory_size() / batch.num_rows() + 1;
                        cursor.batch = batch;
                        cursor.rows = rows;
                        cursor.pos = 0;
                        cursor.slot = None;
                        self.prefixes[top] = cursor.prefix();
                        cursor.prefetch_next();
                    }
                    // The run is done: its file goes now.
                    Ok(_) => {
                        self.cursors[top] = None;
                        self.prefixes[top] = DONE;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            self.replay(top);
        }
        for c in self.cursors.iter_mut().flatten() {
            c.slot = None;
        }
        if let Some(left) = &mut self.left {
            *left -= indices.len();
        }
        if indices.is_empty() {
            return None;
        }
        let refs: Vec<&RecordBatch> = slots.iter().collect();
        Some(interleave_batches(&self.schema, &refs, &indices))
    }
}
