//! Hash aggregation (`GROUP BY`, aggregates, `SELECT DISTINCT`) that spills.
//!
//! Blocks: the whole input is consumed before the first group comes out. Spills: input rows of
//! groups that do not fit, partitioned by hash, to Parquet through the spill manager.
//!
//! # Algorithm (hybrid hash aggregation)
//!
//! 0. Over a scan, `count`/`sum`/`min`/`max` aggregate in two phases: each scan worker first
//!    aggregates every batch it produces on its own (see [`two_phase`]), so far fewer rows reach
//!    the steps below, which then merge partial results.
//! 1. Each input batch is reduced to its group keys (one integer-like key as an `i64`, a few
//!    narrow ones packed into one integer, others in row format, hashed once) and aggregate
//!    arguments. Rows of groups already in the table update their states in place; a new group
//!    is added while the operator's reservation (`HashAggregate`, spillable) can grow for it. The
//!    table grows in steps (its capacity doubles), each reserved before it is made, the old and
//!    the new copy both counted while they coexist.
//! 2. Once it cannot, the table stops growing: rows of groups already in it still update them,
//!    rows of any other group go, as they are, to one of 16 to 256 partitions (as many as the
//!    rows still to come need, see [`GroupTable::start_partitions`]) chosen by a hash of the key,
//!    buffered per partition and written to spill files. Every group is thus aggregated in exactly
//!    one place: the table, or one partition.
//! 3. The table's groups are emitted; then each partition is aggregated the same way with another
//!    hash seed (repartitioning recursively when its groups still do not fit), several at once on
//!    the worker threads when no scan is running. A key with many rows costs one group's state,
//!    however many rows it has.
//!
//! States: counts, 128-bit integer sums (exact for integers and decimals, as DuckDB's HUGEINT),
//! float sums, Welford's mean and M2 for `stddev`/`variance`, and `min`/`max` kept in row format, so
//! they work for every type (strings, dates, decimals) and compare as bytes.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    RecordBatchOptions,
};
use arrow::datatypes::{DataType, Decimal128Type, Field, Float64Type, Schema, SchemaRef};
use arrow_row::{RowConverter, Rows, SortField};
use foldhash::fast::FixedState;

use super::int_map::{IntMap, ABSENT};
use super::node::{Node, Running, Started};
use super::operators::{Expand, Operator, Stage};
use super::packed_keys::Packing;
use super::partition::SpillPartitions;
use super::row_keys::RowKeys;
use super::{
    hash_table_bytes, int_like, start_beside, BatchStream, ExecContext, ExplainLine, OperatorMetrics, OperatorRegistry,
    Pipeline,
};
use crate::error::{Error, Result};
use crate::expr::{AggregateExpr, AggregateFunction, Expr, Split};
use crate::memory::MemoryReservation;
use crate::spill::SpillFile;

/// A hash aggregation, in one phase or two (see [`two_phase`]), spilling partitions when its
/// table outgrows its share.
pub(crate) struct AggregateNode {
    pub input: Box<Pipeline>,
    pub group_exprs: Vec<Expr>,
    pub aggregates: Vec<AggregateExpr>,
    pub schema: SchemaRef,
    /// Where the partial step runs, when the aggregation is split in two: the physical planner
    /// decides it (see [`AggregateNode::new`]).
    partial_on: Option<&'static str>,
}

impl AggregateNode {
    /// Splits the aggregation in two when its aggregates merge and its input's workers can run
    /// the partial step: a scan's, or those of a join's probe side.
    pub(crate) fn new(
        input: Pipeline,
        group_exprs: Vec<Expr>,
        aggregates: Vec<AggregateExpr>,
        schema: SchemaRef,
    ) -> AggregateNode {
        let splits = !group_exprs.is_empty() && aggregates.iter().all(splittable);
        let partial_on = match input.takes_stages() {
            Some(workers) if splits => Some(workers),
            _ => None,
        };
        AggregateNode { input: Box::new(input), group_exprs, aggregates, schema, partial_on }
    }
}

impl Node for AggregateNode {
    fn name(&self) -> &'static str {
        "HashAggregate"
    }

    fn detail(&self) -> String {
        let aggs: Vec<String> = self.aggregates.iter().map(|a| a.to_string()).collect();
        format!("groups [{}], aggregates [{}]", super::exprs_text(&self.group_exprs), aggs.join(", "))
    }

    fn inputs(&self) -> Vec<&Pipeline> {
        vec![&self.input]
    }

    fn explain(&self, ctx: &ExecContext, id: u64, depth: usize, role: &str, out: &mut Vec<ExplainLine>) {
        let partial = self.partial_on.map(|on| format!(" (partial aggregation on the {on})")).unwrap_or_default();
        let clustered = match self.input.clustered_by(&self.group_exprs) {
            Some((k, _)) => format!(
                ", groups of each row group out once it is read (row groups hold disjoint ranges of {})",
                self.group_exprs[k]
            ),
            None => String::new(),
        };
        let text = format!("{role}HashAggregate {}{partial}{clustered}", self.detail());
        out.push(ExplainLine { depth, id: Some(id), text });
        self.input.describe(ctx, depth + 1, "", out);
    }

    fn min_memory(&self, ctx: &ExecContext) -> u64 {
        self.input.min_memory(ctx) + min_memory(ctx)
    }

    fn stream_memory(&self, ctx: &ExecContext, _queue_limit: u64) -> u64 {
        min_memory(ctx)
    }

    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        self.input.max_memory(ctx, queue_limit).max(min_memory(ctx))
    }

    fn push_key_filter(&mut self, keys: &[Expr], make: &dyn Fn(Vec<Expr>) -> Stage) {
        // A key that is a group column is that group expression over the input.
        if let Some(below) = super::map_key_columns(keys, |index, _| self.group_exprs.get(index).cloned()) {
            self.input.push_key_filter_here(below, make);
        }
    }

    fn start(
        self: Box<Self>,
        ctx: &ExecContext,
        _schema: &SchemaRef,
        metrics: &Arc<OperatorMetrics>,
        _queue_limit: Option<u64>,
    ) -> Result<Started> {
        let AggregateNode { mut input, group_exprs, aggregates, schema, partial_on } = *self;
        let clustered = input.clustered_by(&group_exprs);
        let mut head_ops = Vec::new();
        // In two phases, each worker reduces its batches and this thread merges the partial rows.
        let split = match partial_on {
            Some(_) => two_phase(&input.schema, &group_exprs, &aggregates, &schema, ctx)?,
            None => None,
        };
        let (group_exprs, aggregates, schema) = match split {
            Some(tp) if input.push_down(vec![Stage::Expand(tp.partial.clone())], tp.partial_schema.clone()) => {
                head_ops.push(Operator::Project { exprs: tp.output, schema: schema.clone() });
                (tp.final_groups, tp.final_aggregates, tp.final_schema)
            }
            _ => (group_exprs, aggregates, schema),
        };
        let small = 2 * ctx.batch_bytes_target();
        let child_max = input.max_memory(ctx, small);
        let child_stream = input.stream_memory(ctx, small);
        let input_rows = input.input_rows();
        let child = start_beside(ctx, "HashAggregate", min_memory(ctx), || input.execute_with(ctx, Some(small)))?;
        let stream = AggregateStream::new(
            child,
            group_exprs,
            aggregates,
            schema,
            child_max,
            child_stream,
            input_rows,
            clustered,
            ctx,
            metrics.clone(),
        )?;
        Ok(Started { head_ops, ..Started::new(stream) })
    }
}

/// Fewest and most partitions a full table spills to (see [`GroupTable::start_partitions`]).
const MIN_PARTITIONS: usize = 16;
const MAX_PARTITIONS: usize = 256;
const MAX_DEPTH: usize = 6;

/// The least memory an aggregation needs.
pub(crate) fn min_memory(ctx: &ExecContext) -> u64 {
    4 * ctx.batch_bytes_target().min(1 << 20)
}

/// A grouped aggregation in progress.
pub(crate) struct AggregateStream {
    state: State,
    spec: Arc<Spec>,
    ctx: ExecContext,
    /// Most bytes the first table may hold (its input runs beside it, and partitions need room).
    first_limit: u64,
    /// What the input holds once it streams (see [`AggregateStream::new`]).
    child_stream: u64,
    /// Rows the input's scans will decode, when known: what the first table may have to spill.
    input_rows: Option<u64>,
}

/// An input clustered by group key `key`: the scan's morsels hold disjoint, increasing ranges of
/// it, starting at `starts`, and come in order (see [`ScanPipeline::clustered_by`]). Once a batch
/// of a later morsel comes, every group in the table has had all its rows: the table's groups go
/// out and it starts again, empty. A table then holds a morsel's groups, not all of them: TPC-H
/// Q18's 15M groups of lineitem by `l_orderkey` came to the consumer's one table, which spilled
/// most of them to aggregate them again later, with the scan's workers idle half the time.
///
/// [`ScanPipeline::clustered_by`]: super::scan::ScanPipeline::clustered_by
pub(crate) struct Clustered {
    key: usize,
    starts: Vec<i64>,
    /// The morsel the table's groups come from.
    morsel: usize,
}

impl Clustered {
    pub(crate) fn new((key, starts): (usize, Vec<i64>)) -> Clustered {
        Clustered { key, starts, morsel: 0 }
    }

    /// Whether the table's groups are complete now that `batch` (the operator's layout) comes:
    /// its rows are of a later morsel.
    fn complete_before(&mut self, batch: &RecordBatch) -> Result<bool> {
        if batch.num_rows() == 0 {
            return Ok(false);
        }
        let first = arrow::compute::cast(&batch.column(self.key).slice(0, 1), &DataType::Int64)?;
        let first = first.as_primitive::<arrow::datatypes::Int64Type>();
        if first.is_null(0) {
            return Err(Error::Execution(
                "internal error: a null key in input clustered by a column without nulls".into(),
            ));
        }
        let morsel = self.starts.partition_point(|&start| start <= first.value(0)).saturating_sub(1);
        if morsel < self.morsel {
            return Err(Error::Execution("internal error: clustered input out of order".into()));
        }
        let later = morsel > self.morsel;
        self.morsel = morsel;
        Ok(later)
    }
}

enum State {
    Pending(Box<BatchStream>, Vec<Expr>, Vec<Option<Expr>>, Option<Clustered>),
    /// Taking the input in.
    Filling(Box<Filling>),
    /// Tables whose groups come out in turn (the first from `next` on), and partitions still to
    /// aggregate (with their depth).
    Emitting {
        tables: VecDeque<GroupTable>,
        next: usize,
        partitions: VecDeque<(SpillFile, usize)>,
    },
    Done,
}

struct Filling {
    child: BatchStream,
    group_exprs: Vec<Expr>,
    arg_exprs: Vec<Option<Expr>>,
    table: GroupTable,
    /// Whether the table's share was sized again at the first batch.
    sized: bool,
    clustered: Option<Clustered>,
    /// A batch of a later morsel (and what holds it), added once the table's groups (complete)
    /// are out; the next of them to go out.
    later: Option<(RecordBatch, MemoryReservation)>,
    next: usize,
}

/// What is aggregated, over the operator's own layout: key columns, then one argument column per
/// aggregate that has one.
struct Spec {
    out_schema: SchemaRef,
    /// Schema of the partitioned rows (keys, then arguments).
    input_schema: SchemaRef,
    key_count: usize,
    aggregates: Vec<AggregateExpr>,
    /// For each aggregate, its argument's column in the operator's layout.
    arg_columns: Vec<Option<usize>>,
    key_converter: Option<RowConverter>,
    /// Keys of a few narrow columns go into one integer (see [`Packing`]).
    packing: Option<Packing>,
    metrics: Arc<OperatorMetrics>,
}

impl AggregateStream {
    /// `child_max` is the most the input pipeline may hold while it runs beside the aggregation,
    /// `child_stream` what it holds once its own blocking operators are built (its batches in
    /// flight).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        child: BatchStream,
        group_exprs: Vec<Expr>,
        aggregates: Vec<AggregateExpr>,
        out_schema: SchemaRef,
        child_max: u64,
        child_stream: u64,
        input_rows: Option<u64>,
        clustered: Option<(usize, Vec<i64>)>,
        ctx: &ExecContext,
        metrics: Arc<OperatorMetrics>,
    ) -> Result<AggregateStream> {
        let first_limit = table_limit(ctx.available_for_sizing().saturating_sub(child_max), ctx);
        let (spec, arg_exprs) = build_spec(&child.schema(), &group_exprs, aggregates, out_schema, metrics)?;
        Ok(AggregateStream {
            state: State::Pending(Box::new(child), group_exprs, arg_exprs, clustered.map(Clustered::new)),
            spec,
            ctx: ctx.clone(),
            first_limit,
            child_stream,
            input_rows,
        })
    }

    /// Adds input batches to the table until the input ends (true), or until its groups are
    /// complete before it does (false; see [`Clustered`]): the batch that says so waits in
    /// `f.later` while they go out.
    fn fill(&mut self, f: &mut Filling, cancel: &AtomicBool) -> Result<bool> {
        let table = &mut f.table;
        while let Some(item) = f.child.next_reserved() {
            let (batch, reservation) = item?;
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            if !f.sized {
                // The first batch is here: joins and sorts below hold what they hold now, not the
                // most they might. The table's share is sized again from what is free (TPC-H Q10:
                // its aggregation over three joins got 5 MiB of 512 and spilled).
                f.sized = true;
                let free = self.ctx.available_for_sizing().saturating_sub(self.child_stream);
                table.limit = table.limit.max(table_limit(free + table.reservation.size(), &self.ctx));
            }
            let input = project(&batch, &f.group_exprs, &f.arg_exprs, &self.spec.input_schema)?;
            f.child.release(reservation);
            self.spec.metrics.rows_in(input.num_rows());
            // Once the table spills, its groups are no longer all in it: it keeps on as usual.
            let complete = match &mut f.clustered {
                Some(c) => c.complete_before(&input)? && table.partitions.is_none() && table.groups() > 0,
                None => false,
            };
            if complete {
                let mut held = self.ctx.pool.register("HashAggregate waiting batch", false);
                held.try_grow(input.get_array_memory_size() as u64)?;
                f.later = Some((input, held));
                f.next = 0;
                return Ok(false);
            }
            table.add(&input)?;
            self.spec.metrics.reserved(table.reservation.size());
        }
        if self.spec.key_count == 0 && table.groups() == 0 {
            // No GROUP BY: one group even for no rows (count 0, sum NULL).
            table.add_empty_group()?;
        }
        Ok(true)
    }
}

impl Running for AggregateStream {
    fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        loop {
            match &mut self.state {
                State::Done => return None,
                State::Pending(..) => {
                    let State::Pending(child, group_exprs, arg_exprs, clustered) =
                        std::mem::replace(&mut self.state, State::Done)
                    else {
                        unreachable!()
                    };
                    let mut table = match GroupTable::new(&self.spec, &self.ctx, 0, self.first_limit) {
                        Ok(t) => t,
                        Err(e) => return Some(Err(e)),
                    };
                    table.expected_rows = self.input_rows;
                    table.scanned_at_start = Some(self.ctx.counters.rows.load(Ordering::Relaxed));
                    self.state = State::Filling(Box::new(Filling {
                        child: *child,
                        group_exprs,
                        arg_exprs,
                        table,
                        sized: false,
                        clustered,
                        later: None,
                        next: 0,
                    }));
                }
                State::Filling(f) if f.later.is_some() => {
                    // The table's groups are complete: out a batch at a time, then the table
                    // starts again with the batch that came.
                    if f.next < f.table.groups() {
                        let end = (f.next + f.table.output_rows(&self.ctx)).min(f.table.groups());
                        let chunk = output_reserved(&self.ctx, f.table.output(f.next, end));
                        f.next = end;
                        return Some(chunk);
                    }
                    f.table.clear();
                    let (later, _held) = f.later.take().expect("a batch waits");
                    if let Err(e) = f.table.add(&later) {
                        self.state = State::Done;
                        return Some(Err(e));
                    }
                    self.spec.metrics.reserved(f.table.reservation.size());
                }
                State::Filling(_) => {
                    let State::Filling(mut f) = std::mem::replace(&mut self.state, State::Done) else { unreachable!() };
                    match self.fill(&mut f, cancel) {
                        Err(e) => return Some(Err(e)),
                        Ok(false) => {
                            self.state = State::Filling(f);
                            continue;
                        }
                        Ok(true) => {}
                    }
                    let partitions = match f.table.finish_partitions() {
                        Ok(p) => p.into_iter().map(|f| (f, 1)).collect(),
                        Err(e) => return Some(Err(e)),
                    };
                    self.state = State::Emitting { tables: VecDeque::from([f.table]), next: 0, partitions };
                }
                State::Emitting { tables, next, partitions } => {
                    if let Some(table) = tables.front() {
                        if *next < table.groups() {
                            let end = (*next + table.output_rows(&self.ctx)).min(table.groups());
                            let chunk = output_reserved(&self.ctx, table.output(*next, end));
                            *next = end;
                            return Some(chunk);
                        }
                        // This table is done: free it before the next partitions' tables are built.
                        tables.pop_front();
                        *next = 0;
                        continue;
                    }
                    if partitions.is_empty() {
                        self.state = State::Done;
                        return None;
                    }
                    // Partitions are independent: with the input done and no scan running, as many
                    // as there are threads are aggregated at once, each in its slice of the share.
                    // Each table gets at least twice the operator's minimum, and a partition that
                    // was split again runs alone with all of it: under a small budget, a third
                    // of the room each was too little for any partition's groups, which split
                    // again and again until the aggregation gave up (found by the fuzzer).
                    let idle = self.ctx.counters.workers.load(std::sync::atomic::Ordering::Acquire) == 0;
                    let whole = table_limit(self.ctx.obtainable(), &self.ctx);
                    let fit = (whole / (2 * min_memory(&self.ctx))).max(1) as usize;
                    let split_again = partitions.front().is_some_and(|(_, depth)| *depth > 1);
                    let at_once = match idle && !split_again {
                        true => self.ctx.config.threads.max(1).min(partitions.len()).min(fit),
                        false => 1,
                    };
                    let limit = whole / at_once as u64;
                    let batch: Vec<(SpillFile, usize)> = partitions.drain(..at_once).collect();
                    let run = |(file, depth): (SpillFile, usize)| -> Result<(GroupTable, Vec<SpillFile>, usize)> {
                        if depth > MAX_DEPTH {
                            return Err(Error::Execution(
                                "aggregation: groups still do not fit after repartitioning (hint: raise --mem-budget)"
                                    .into(),
                            ));
                        }
                        let mut table = GroupTable::new(&self.spec, &self.ctx, depth, limit)?;
                        table.expected_rows = Some(file.rows());
                        table.presize(file.rows() as usize);
                        let mut reader = file.reader()?;
                        // Each batch read back is paid for while it is added.
                        let mut held = self.ctx.pool.register("HashAggregate read batch", false);
                        while let Some(batch) = reader.next_batch()? {
                            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                                return Err(Error::Cancelled);
                            }
                            held.try_resize(batch.get_array_memory_size() as u64)?;
                            table.add(&batch)?;
                        }
                        drop(held);
                        drop(reader);
                        drop(file);
                        let more = table.finish_partitions()?;
                        Ok((table, more, depth))
                    };
                    let results: Vec<Result<(GroupTable, Vec<SpillFile>, usize)>> = if at_once > 1 {
                        use rayon::prelude::*;
                        self.ctx.threads.install(|| batch.into_par_iter().map(run).collect())
                    } else {
                        batch.into_iter().map(run).collect()
                    };
                    let mut deeper = Vec::new();
                    for result in results {
                        match result {
                            Ok((table, more, depth)) => {
                                tables.push_back(table);
                                deeper.extend(more.into_iter().map(|f| (f, depth + 1)));
                            }
                            Err(e) => {
                                self.state = State::Done;
                                return Some(Err(e));
                            }
                        }
                    }
                    for p in deeper.into_iter().rev() {
                        partitions.push_front(p);
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        self.state = State::Done;
    }
}

/// An output batch of a table, paid for from the pool until the consumer is done with it.
fn output_reserved(ctx: &ExecContext, batch: Result<RecordBatch>) -> Result<(RecordBatch, MemoryReservation)> {
    let batch = batch?;
    let mut r = ctx.pool.register("HashAggregate output", false);
    r.try_grow(batch.get_array_memory_size() as u64)?;
    Ok((batch, r))
}

/// The spec of an aggregation over `in_schema`, and the argument expressions it evaluates.
fn build_spec(
    in_schema: &SchemaRef,
    group_exprs: &[Expr],
    aggregates: Vec<AggregateExpr>,
    out_schema: SchemaRef,
    metrics: Arc<OperatorMetrics>,
) -> Result<(Arc<Spec>, Vec<Option<Expr>>)> {
    let mut fields: Vec<Field> = group_exprs
        .iter()
        .enumerate()
        .map(|(i, e)| Field::new(format!("k{i}"), e.data_type(in_schema), true))
        .collect();
    let mut arg_columns = Vec::new();
    let mut arg_exprs = Vec::new();
    for a in &aggregates {
        match &a.arg {
            Some(e) => {
                arg_columns.push(Some(fields.len()));
                fields.push(Field::new(format!("a{}", fields.len()), e.data_type(in_schema), true));
                arg_exprs.push(Some(e.clone()));
            }
            None => {
                arg_columns.push(None);
                arg_exprs.push(None);
            }
        }
    }
    // One integer-like key is kept as `i64` (inline in the hash table); other keys in row format.
    let key_types: Vec<DataType> = group_exprs.iter().map(|e| e.data_type(in_schema)).collect();
    let key_converter = match key_types.as_slice() {
        [] => None,
        [t] if int_like(t) => None,
        _ => Some(RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?),
    };
    let spec = Arc::new(Spec {
        out_schema,
        input_schema: Arc::new(Schema::new(fields)),
        key_count: group_exprs.len(),
        aggregates,
        arg_columns,
        packing: key_converter.as_ref().and_then(|_| Packing::plan(&key_types)),
        key_converter,
        metrics,
    });
    Ok((spec, arg_exprs))
}

/// An aggregation split in two: a partial step on the scan workers, which aggregates each batch
/// on its own (no state between batches, nothing spilled), and the final, spilling aggregation on
/// the consumer, which merges the partial rows.
pub(crate) struct TwoPhase {
    pub partial: Arc<dyn Expand>,
    /// The partial rows: keys, then one column per aggregate.
    pub partial_schema: SchemaRef,
    pub final_groups: Vec<Expr>,
    pub final_aggregates: Vec<AggregateExpr>,
    pub final_schema: SchemaRef,
    /// Over the final output: the plan's layout (merged counts back to BIGINT).
    pub output: Vec<Expr>,
}

/// The two-phase form of an aggregation, when it has one: grouped, and only `count`, `sum`,
/// `min`, `max` and `avg` (as a sum and a count, divided once at the end, exactly as DuckDB
/// divides its exact sum). `stddev` and `DISTINCT` have their own plans.
pub(crate) fn two_phase(
    in_schema: &SchemaRef,
    group_exprs: &[Expr],
    aggregates: &[AggregateExpr],
    out_schema: &SchemaRef,
    ctx: &ExecContext,
) -> Result<Option<TwoPhase>> {
    if group_exprs.is_empty() || !aggregates.iter().all(splittable) {
        return Ok(None);
    }
    let keys = group_exprs.len();
    // The partial aggregates, and each aggregate's split with where its partials start.
    let mut partials: Vec<AggregateExpr> = Vec::new();
    let mut splits = Vec::with_capacity(aggregates.len());
    for a in aggregates {
        let split = Split::of(a.func).expect("a two-phase aggregate splits");
        let arg_type = a.arg.as_ref().map(|e| e.data_type(in_schema));
        splits.push((split, partials.len()));
        for func in split.partials() {
            let data_type = func.return_type(arg_type.as_ref())?;
            partials.push(AggregateExpr { func, arg: a.arg.clone(), distinct: false, data_type });
        }
    }
    let mut fields: Vec<Field> = (0..keys).map(|i| out_schema.field(i).clone()).collect();
    fields.extend(partials.iter().enumerate().map(|(j, p)| Field::new(format!("p{j}"), p.data_type.clone(), true)));
    let partial_schema = Arc::new(Schema::new(fields));
    let metrics = OperatorRegistry::default().register(0, "PartialAggregate", String::new());
    let (spec, arg_exprs) = build_spec(in_schema, group_exprs, partials.clone(), partial_schema.clone(), metrics)?;
    let col = |i: usize| Expr::column(i, partial_schema.field(i).name());
    // Final aggregates: each partial column merged as its split says.
    let mut final_aggregates = Vec::new();
    for &(split, first) in &splits {
        for j in first..first + split.partials().len() {
            let func = split.merge();
            let data_type = func.return_type(Some(&partials[j].data_type))?;
            final_aggregates.push(AggregateExpr { func, arg: Some(col(keys + j)), distinct: false, data_type });
        }
    }
    let mut fields: Vec<Field> = (0..keys).map(|i| partial_schema.field(i).clone()).collect();
    fields.extend(
        final_aggregates.iter().enumerate().map(|(i, a)| Field::new(format!("m{i}"), a.data_type.clone(), true)),
    );
    let final_schema = Arc::new(Schema::new(fields));
    let merged = |j: usize| Expr::column(keys + j, final_schema.field(keys + j).name());
    let mut output: Vec<Expr> = (0..keys).map(|i| Expr::column(i, final_schema.field(i).name())).collect();
    for (i, &(split, first)) in splits.iter().enumerate() {
        let want = out_schema.field(keys + i).data_type().clone();
        let answer = split.finish((first..first + split.partials().len()).map(merged).collect());
        output.push(match answer.data_type(&final_schema) == want {
            true => answer,
            false => Expr::Cast { expr: Box::new(answer), to: want },
        });
    }
    let partial = PartialAggregator {
        spec,
        group_exprs: group_exprs.to_vec(),
        arg_exprs,
        ctx: ctx.clone(),
        limit: (8 * ctx.batch_bytes_target()).max(1 << 20),
        spare: Mutex::new(Vec::new()),
        reduction: Reduction::default(),
    };
    let final_groups = (0..keys).map(col).collect();
    Ok(Some(TwoPhase {
        partial: Arc::new(partial),
        partial_schema,
        final_groups,
        final_aggregates,
        final_schema,
        output,
    }))
}

/// Whether `a` splits into a partial and a final step: its partial results merge exactly, or it is
/// an average (a sum and a count).
fn splittable(a: &AggregateExpr) -> bool {
    !a.distinct && Split::of(a.func).is_some()
}

/// Aggregates each batch on its own, on a scan worker.
struct PartialAggregator {
    spec: Arc<Spec>,
    group_exprs: Vec<Expr>,
    arg_exprs: Vec<Option<Expr>>,
    ctx: ExecContext,
    /// Most bytes one batch's table may reserve.
    limit: u64,
    /// Emptied tables for the next batches, at most one per worker: a new table per batch
    /// allocated its index and state vectors again each time (about a tenth of the page faults
    /// of the 15M-group aggregate of lineitem).
    spare: Mutex<Vec<GroupTable>>,
    reduction: Reduction,
}

/// How much the partial step reduces its input: when the first batches have nearly as many
/// groups as rows (a `DISTINCT` of unique rows, TPC-H Q16's 1.2M part and supplier pairs), the
/// rest go on as partial rows of one row each, and only the final step groups them (as
/// DataFusion skips its partial aggregation by the same measure).
#[derive(Default)]
struct Reduction {
    rows: AtomicU64,
    groups: AtomicU64,
    skip: AtomicBool,
}

impl Reduction {
    /// Rows seen before the decision.
    const PROBE_ROWS: u64 = 100_000;

    fn record(&self, rows: usize, groups: usize) {
        let rows = self.rows.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
        let groups = self.groups.fetch_add(groups as u64, Ordering::Relaxed) + groups as u64;
        if rows >= Self::PROBE_ROWS && groups * 10 >= rows * 8 {
            self.skip.store(true, Ordering::Relaxed);
        }
    }
}

impl Expand for PartialAggregator {
    fn expand(&self, batch: RecordBatch, emit: &mut dyn FnMut(RecordBatch) -> Result<bool>) -> Result<bool> {
        let input = project(&batch, &self.group_exprs, &self.arg_exprs, &self.spec.input_schema)?;
        drop(batch);
        if self.reduction.skip.load(Ordering::Relaxed) {
            return emit(raw_partials(&self.spec, &input)?);
        }
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut table = match spare {
            Some(table) => table,
            None => GroupTable::new(&self.spec, &self.ctx, 0, self.limit)?,
        };
        table.no_spill = true;
        // Input clustered by the keys (lineitem by l_orderkey): a group per run of equal keys,
        // found by comparing neighbours instead of looking every row up.
        if let Some(starts) = runs(&input, self.spec.key_count)? {
            if table.add_runs(&input, &starts)? {
                let out = table.output_runs(&input, &starts)?;
                table.reset();
                self.spare.lock().unwrap_or_else(|e| e.into_inner()).push(table);
                return emit(out);
            }
            table.reset();
        }
        let out = if table.add(&input)? {
            self.reduction.record(input.num_rows(), table.groups());
            let out = table.output(0, table.groups())?;
            table.reset();
            self.spare.lock().unwrap_or_else(|e| e.into_inner()).push(table);
            out
        } else {
            // No room for this batch's groups: its rows go on as partial rows of one row each.
            drop(table);
            raw_partials(&self.spec, &input)?
        };
        emit(out)
    }
}

/// The first row of every run of equal keys, when `input`'s rows (the
/// operator's layout, `keys` key columns first) come in runs of two rows or more on average and
/// sorted by the first key; `None` otherwise (a look at the first rows decides early for input in
/// no such order). Nulls are equal to each other here, as grouping has them.
fn runs(input: &RecordBatch, keys: usize) -> Result<Option<Vec<u32>>> {
    use arrow::compute::kernels::cmp::{distinct, gt, lt};
    const SAMPLE: usize = 64;
    let n = input.num_rows();
    if keys == 0 || n < 2 * SAMPLE {
        return Ok(None);
    }
    // Where the keys change: bit `i` for rows `i` and `i + 1` of the first `len`.
    let changes = |len: usize| -> Result<arrow::buffer::BooleanBuffer> {
        let mut changed: Option<arrow::buffer::BooleanBuffer> = None;
        for column in &input.columns()[..keys] {
            let differs = distinct(&column.slice(1, len - 1), &column.slice(0, len - 1))?;
            let differs = differs.values().clone();
            changed = Some(match changed {
                Some(c) => &c | &differs,
                None => differs,
            });
        }
        Ok(changed.expect("at least one key"))
    };
    let starts_of = |changed: &arrow::buffer::BooleanBuffer| -> Vec<u32> {
        std::iter::once(0).chain(changed.set_indices().map(|i| i as u32 + 1)).collect()
    };
    // Runs are worth it only where each is a group of its own in the batch (input sorted by the
    // keys): a few groups that come back run after run (TPC-H Q1's flags) fold into a handful of
    // partial rows in a table, where runs would hand the final aggregation thousands. The first
    // key column moving one way from run to run says so.
    let sorted = |starts: &[u32]| -> Result<bool> {
        let m = starts.len();
        if m < 2 {
            return Ok(true);
        }
        let first = arrow::compute::take(input.column(0), &arrow::array::UInt32Array::from(starts.to_vec()), None)?;
        let (earlier, later) = (first.slice(0, m - 1), first.slice(1, m - 1));
        let all = |b: arrow::array::BooleanArray| b.null_count() == 0 && b.true_count() == m - 1;
        Ok(all(lt(&earlier, &later)?) || all(gt(&earlier, &later)?))
    };
    let sample = changes(SAMPLE)?;
    if sample.count_set_bits() * 2 >= SAMPLE || !sorted(&starts_of(&sample))? {
        return Ok(None);
    }
    let changed = changes(n)?;
    let starts = starts_of(&changed);
    if starts.len() * 2 > n || !sorted(&starts)? {
        return Ok(None);
    }
    Ok(Some(starts))
}

/// Each row of `input` (the operator's layout) as a partial row of its own: count 1 (or 0 for a
/// null argument), the value as its own sum, minimum and maximum.
fn raw_partials(spec: &Spec, input: &RecordBatch) -> Result<RecordBatch> {
    let n = input.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(spec.out_schema.fields().len());
    for i in 0..spec.key_count {
        columns.push(arrow::compute::cast(input.column(i), spec.out_schema.field(i).data_type())?);
    }
    for (a, arg) in spec.aggregates.iter().zip(&spec.arg_columns) {
        columns.push(match (a.func, arg) {
            (AggregateFunction::CountStar, _) => Arc::new(Int64Array::from(vec![1i64; n])),
            (AggregateFunction::Count, Some(c)) => {
                arrow::compute::cast(&arrow::compute::is_not_null(input.column(*c))?, &DataType::Int64)?
            }
            (_, Some(c)) => arrow::compute::cast(input.column(*c), &a.data_type)?,
            (f, None) => return Err(Error::Plan(format!("{}() needs an argument", f.name()))),
        });
    }
    Ok(RecordBatch::try_new_with_options(
        spec.out_schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

/// The share of `available` a table may fill: the rest buffers partitions and output chunks.
fn table_limit(available: u64, ctx: &ExecContext) -> u64 {
    (available * 2 / 3).max(min_memory(ctx) / 2)
}

/// Evaluates group keys and aggregate arguments into the operator's layout.
fn project(batch: &RecordBatch, groups: &[Expr], args: &[Option<Expr>], schema: &SchemaRef) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for e in groups.iter().chain(args.iter().flatten()) {
        columns.push(e.evaluate(batch)?.into_array(rows)?);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// One aggregate's states, a slot per group.
enum Acc {
    Count(Vec<i64>),
    /// Exact sums of integers and decimals (unscaled), with whether any value was seen.
    SumInt {
        sum: Vec<i128>,
        seen: Vec<bool>,
    },
    SumFloat {
        sum: Vec<f64>,
        seen: Vec<bool>,
    },
    /// Average: exact sum (unscaled by `scale`) or float sum, and count.
    AvgInt {
        sum: Vec<i128>,
        count: Vec<i64>,
        scale: i32,
    },
    AvgFloat {
        sum: Vec<f64>,
        count: Vec<i64>,
    },
    /// Min or max of integers, decimals, dates and timestamps, as unscaled 128-bit integers (no
    /// allocation per value, unlike the row format).
    ExtremeInt {
        values: Vec<i128>,
        seen: Vec<bool>,
        max: bool,
        /// Dates and timestamps pass through Int64 (they do not cast to decimals).
        temporal: bool,
    },
    /// Min or max of anything else, in row format.
    Extreme {
        values: Vec<Option<Box<[u8]>>>,
        max: bool,
        converter: RowConverter,
    },
    /// The one row's value of each group (a scalar subquery's): a second row is an error.
    Single {
        values: Vec<Option<Box<[u8]>>>,
        seen: Vec<bool>,
        converter: RowConverter,
    },
    /// Welford: count, mean, M2.
    Var {
        n: Vec<f64>,
        mean: Vec<f64>,
        m2: Vec<f64>,
        sqrt: bool,
        sample: bool,
    },
}

impl Acc {
    /// Makes room for `additional` more groups.
    fn reserve(&mut self, additional: usize) {
        match self {
            Acc::Count(v) => v.reserve_exact(additional),
            Acc::SumInt { sum, seen } => {
                sum.reserve_exact(additional);
                seen.reserve_exact(additional);
            }
            Acc::SumFloat { sum, seen } => {
                sum.reserve_exact(additional);
                seen.reserve_exact(additional);
            }
            Acc::AvgInt { sum, count, .. } => {
                sum.reserve_exact(additional);
                count.reserve_exact(additional);
            }
            Acc::AvgFloat { sum, count } => {
                sum.reserve_exact(additional);
                count.reserve_exact(additional);
            }
            Acc::Extreme { values, .. } => values.reserve_exact(additional),
            Acc::Single { values, seen, .. } => {
                values.reserve_exact(additional);
                seen.reserve_exact(additional);
            }
            Acc::ExtremeInt { values, seen, .. } => {
                values.reserve_exact(additional);
                seen.reserve_exact(additional);
            }
            Acc::Var { n, mean, m2, .. } => {
                n.reserve_exact(additional);
                mean.reserve_exact(additional);
                m2.reserve_exact(additional);
            }
        }
    }

    /// Forgets every group's state, keeping the vectors' room.
    fn clear(&mut self) {
        match self {
            Acc::Count(v) => v.clear(),
            Acc::SumInt { sum, seen } => {
                sum.clear();
                seen.clear();
            }
            Acc::SumFloat { sum, seen } => {
                sum.clear();
                seen.clear();
            }
            Acc::AvgInt { sum, count, .. } => {
                sum.clear();
                count.clear();
            }
            Acc::AvgFloat { sum, count } => {
                sum.clear();
                count.clear();
            }
            Acc::Extreme { values, .. } => values.clear(),
            Acc::Single { values, seen, .. } => {
                values.clear();
                seen.clear();
            }
            Acc::ExtremeInt { values, seen, .. } => {
                values.clear();
                seen.clear();
            }
            Acc::Var { n, mean, m2, .. } => {
                n.clear();
                mean.clear();
                m2.clear();
            }
        }
    }
}

/// Bytes of state per group for an accumulator (not counting min/max values).
fn slot_bytes(acc: &Acc) -> u64 {
    match acc {
        Acc::Count(_) => 8,
        Acc::SumInt { .. } => 17,
        Acc::SumFloat { .. } => 9,
        Acc::AvgInt { .. } => 24,
        Acc::AvgFloat { .. } => 16,
        Acc::Extreme { .. } => 16,
        Acc::Single { .. } => 17,
        Acc::ExtremeInt { .. } => 17,
        Acc::Var { .. } => 24,
    }
}

/// Groups and their states.
struct GroupTable {
    spec: Arc<Spec>,
    ctx: ExecContext,
    index: GroupIndex,
    /// Groups in the table, numbered in insertion order.
    groups: usize,
    /// Groups the index and every state vector have room for (reserved).
    capacity: usize,
    accs: Vec<Acc>,
    reservation: MemoryReservation,
    /// Most bytes the table may reserve.
    limit: u64,
    /// Once set, the table no longer grows: rows of new groups go to the partitions.
    partitions: Option<SpillPartitions>,
    seed: u64,
    /// A table that must not spill (a worker's per-batch pre-aggregation): when full, `add` stops
    /// and says so.
    no_spill: bool,
    /// Rows the table's input brings in all, when known, and rows added so far: they choose how
    /// many partitions its overflow goes to.
    expected_rows: Option<u64>,
    rows_seen: u64,
    /// For the first table, whose expected rows are those its input's scans decode: what the
    /// query's scans had decoded when the input started (see [`GroupTable::start_partitions`]).
    scanned_at_start: Option<u64>,
    /// Partitions of the overflow (a power of two), chosen when the table fills.
    fan_out: usize,
}

impl GroupTable {
    /// Groups an output batch takes: a batch's bytes at what the table holds a group (more than
    /// the group's output: its index entry too), at most the batch size. Output batches of the
    /// batch size in rows took 300 KiB a batch of 64 KiB under a 1 MiB budget, and failed.
    /// What the table may always take, headroom or not (see `MemoryReservation::try_grow_past`).
    fn floor(&self) -> u64 {
        min_memory(&self.ctx) / 2
    }

    fn output_rows(&self, ctx: &ExecContext) -> usize {
        let per_group = (self.reservation.size() / self.groups.max(1) as u64).max(1);
        ((ctx.batch_bytes_target() / per_group) as usize).clamp(1, ctx.config.batch_size.max(1))
    }

    fn new(spec: &Arc<Spec>, ctx: &ExecContext, depth: usize, limit: u64) -> Result<GroupTable> {
        let mut accs = Vec::with_capacity(spec.aggregates.len());
        for (a, col) in spec.aggregates.iter().zip(&spec.arg_columns) {
            let arg_type = col.map(|c| spec.input_schema.field(c).data_type().clone());
            accs.push(match (a.func, arg_type) {
                (AggregateFunction::CountStar | AggregateFunction::Count, _) => Acc::Count(Vec::new()),
                (AggregateFunction::Sum, Some(DataType::Float32 | DataType::Float64)) => {
                    Acc::SumFloat { sum: Vec::new(), seen: Vec::new() }
                }
                (AggregateFunction::Sum, Some(_)) => Acc::SumInt { sum: Vec::new(), seen: Vec::new() },
                (AggregateFunction::Avg, Some(DataType::Float32 | DataType::Float64)) => {
                    Acc::AvgFloat { sum: Vec::new(), count: Vec::new() }
                }
                (AggregateFunction::Avg, Some(t)) => {
                    let scale = if let DataType::Decimal128(_, s) = t { s as i32 } else { 0 };
                    Acc::AvgInt { sum: Vec::new(), count: Vec::new(), scale }
                }
                (AggregateFunction::Min | AggregateFunction::Max, Some(t)) if extreme_int(&t).is_some() => {
                    Acc::ExtremeInt {
                        values: Vec::new(),
                        seen: Vec::new(),
                        max: a.func == AggregateFunction::Max,
                        temporal: extreme_int(&t) == Some(true),
                    }
                }
                (AggregateFunction::Min | AggregateFunction::Max, Some(t)) => Acc::Extreme {
                    values: Vec::new(),
                    max: a.func == AggregateFunction::Max,
                    converter: RowConverter::new(vec![SortField::new(t)])?,
                },
                (AggregateFunction::SingleValue, Some(t)) => Acc::Single {
                    values: Vec::new(),
                    seen: Vec::new(),
                    converter: RowConverter::new(vec![SortField::new(t)])?,
                },
                (
                    f @ (AggregateFunction::StddevSamp
                    | AggregateFunction::StddevPop
                    | AggregateFunction::VarSamp
                    | AggregateFunction::VarPop),
                    Some(_),
                ) => Acc::Var {
                    n: Vec::new(),
                    mean: Vec::new(),
                    m2: Vec::new(),
                    sqrt: matches!(f, AggregateFunction::StddevSamp | AggregateFunction::StddevPop),
                    sample: matches!(f, AggregateFunction::StddevSamp | AggregateFunction::VarSamp),
                },
                (f, None) => return Err(Error::Plan(format!("{}() needs an argument", f.name()))),
            });
        }
        Ok(GroupTable {
            spec: spec.clone(),
            ctx: ctx.clone(),
            index: GroupIndex::new(spec),
            groups: 0,
            capacity: 0,
            accs,
            reservation: ctx.pool.register(format!("HashAggregate[{depth}]"), true),
            limit,
            partitions: None,
            seed: depth as u64,
            no_spill: false,
            expected_rows: None,
            scanned_at_start: None,
            rows_seen: 0,
            fan_out: MIN_PARTITIONS,
        })
    }

    fn groups(&self) -> usize {
        self.groups
    }

    /// Empties a table that never spilled for its next input, keeping what it allocated (and
    /// the reservation for that): min/max values are freed, and so given back.
    fn reset(&mut self) {
        self.clear();
        self.rows_seen = 0;
    }

    /// Empties the table of its groups (for more of the same input: the rows seen stay counted).
    fn clear(&mut self) {
        debug_assert!(self.partitions.is_none());
        self.groups = 0;
        self.index.clear();
        for acc in &mut self.accs {
            acc.clear();
        }
        let kept = self.fixed_bytes(self.capacity) + self.index.key_capacity() as u64;
        if self.reservation.size() > kept {
            self.reservation.shrink(self.reservation.size() - kept);
        }
    }

    /// Bytes of the index and the state vectors for `capacity` groups (keys of variable length
    /// not included).
    fn fixed_bytes(&self, capacity: usize) -> u64 {
        let states: u64 = self.accs.iter().map(slot_bytes).sum();
        self.index.bytes(capacity) + capacity as u64 * states
    }

    /// Makes room for one more group: grows the index and every state vector to twice the
    /// capacity, reserving the new size and, for the moment of the move, the old copies too.
    /// False when that does not fit the table's share of the pool.
    fn ensure_capacity(&mut self) -> bool {
        if self.groups < self.capacity {
            return true;
        }
        self.grow_to((self.capacity * 2).max(1024))
    }

    /// Grows the index and every state vector to room for `capacity` groups, reserving the new
    /// size and, for the moment of the move, the old copies too (already reserved). False when
    /// that does not fit the table's share of the pool.
    fn grow_to(&mut self, capacity: usize) -> bool {
        let (old, new) = (self.fixed_bytes(self.capacity), self.fixed_bytes(capacity));
        if self.reservation.size() + new > self.limit || self.reservation.try_grow_past(new, self.floor()).is_err() {
            return false;
        }
        let additional = capacity - self.groups;
        self.index.reserve(additional);
        for acc in &mut self.accs {
            acc.reserve(additional);
        }
        self.capacity = capacity;
        self.reservation.shrink(old);
        true
    }

    /// Makes room for `groups` groups at once where the input's size is known (a partition read
    /// back from disk: its rows bound its groups), within half the table's share: grown by
    /// doubling from nothing, a table of 234K groups (a sixty-fourth of lineitem's orders) was
    /// allocated eight times over, and each time the kernel zeroed fresh pages.
    fn presize(&mut self, groups: usize) {
        let mut capacity = groups;
        while capacity > 1024 && self.fixed_bytes(capacity) > self.limit / 2 {
            capacity /= 2;
        }
        if capacity > self.capacity.max(1024) {
            // When it does not fit, the table grows as groups come, as without a size.
            self.grow_to(capacity);
        }
    }

    /// Adds the group for row `row` of `keys` if it fits; its number.
    fn try_insert(&mut self, keys: &BatchKeys, row: usize) -> Option<usize> {
        if self.partitions.is_some() || !self.ensure_capacity() {
            return None;
        }
        // Variable-length keys grow their buffer the same way: new size reserved first.
        let key_len = keys.len(row);
        if let Some((old, new)) = self.index.key_growth(key_len) {
            if self.reservation.size() + new > self.limit || self.reservation.try_grow_past(new, self.floor()).is_err()
            {
                return None;
            }
            self.index.grow_keys(new as usize);
            self.reservation.shrink(old);
        }
        let g = self.groups;
        self.index.insert(keys, row, g as u32);
        self.groups += 1;
        self.push_group();
        Some(g)
    }

    fn push_group(&mut self) {
        for acc in &mut self.accs {
            match acc {
                Acc::Count(v) => v.push(0),
                Acc::SumInt { sum, seen } => {
                    sum.push(0);
                    seen.push(false);
                }
                Acc::SumFloat { sum, seen } => {
                    sum.push(0.0);
                    seen.push(false);
                }
                Acc::AvgInt { sum, count, .. } => {
                    sum.push(0);
                    count.push(0);
                }
                Acc::AvgFloat { sum, count } => {
                    sum.push(0.0);
                    count.push(0);
                }
                Acc::Extreme { values, .. } => values.push(None),
                Acc::Single { values, seen, .. } => {
                    values.push(None);
                    seen.push(false);
                }
                Acc::ExtremeInt { values, seen, .. } => {
                    values.push(0);
                    seen.push(false);
                }
                Acc::Var { n, mean, m2, .. } => {
                    n.push(0.0);
                    mean.push(0.0);
                    m2.push(0.0);
                }
            }
        }
    }

    fn add_empty_group(&mut self) -> Result<()> {
        if !self.ensure_capacity() {
            self.reservation.try_grow(self.fixed_bytes(1))?;
        }
        self.groups = 1;
        self.push_group();
        Ok(())
    }

    /// Folds a batch (the operator's layout) into the table, or its new groups into partitions.
    /// False only for a `no_spill` table that filled up (its states are then incomplete).
    fn add(&mut self, batch: &RecordBatch) -> Result<bool> {
        let n = batch.num_rows();
        let spec = self.spec.clone();
        let keys = BatchKeys::new(&spec, batch)?;
        // Arguments in the forms the states take.
        let mut args: Vec<Option<ArgValues>> = Vec::with_capacity(self.accs.len());
        for (acc, col) in self.accs.iter().zip(&spec.arg_columns) {
            args.push(match col {
                Some(c) => Some(ArgValues::new(acc, batch.column(*c))?),
                None => None,
            });
        }
        // First each row's group (inserting new ones), then each state over the whole batch: the
        // match on the state's kind is made once per batch, not once per row.
        let mut spilled: Vec<Vec<u32>> = Vec::new();
        let mut group_of: Vec<u32> = Vec::with_capacity(n);
        // No GROUP BY and the one group made: every row is in it (the per-row loop below was a
        // twentieth of a scan's CPU under a worker's first phase of `sum`s).
        let rows = if matches!(self.index, GroupIndex::Single) && self.groups > 0 {
            group_of.resize(n, 0);
            0..0
        } else {
            0..n
        };
        for row in rows {
            if row + IntMap::AHEAD < n {
                match (&self.index, &keys) {
                    (GroupIndex::Int { map, .. }, BatchKeys::Int(a)) => map.prefetch(a.value(row + IntMap::AHEAD)),
                    (GroupIndex::Packed { map, .. }, BatchKeys::Packed { keys, .. }) => {
                        map.prefetch(keys[row + IntMap::AHEAD] as i64)
                    }
                    _ => {}
                }
            }
            let found = match &self.index {
                GroupIndex::Single => (self.groups > 0).then_some(0),
                index => index.find(&keys, row),
            };
            match found.or_else(|| self.try_insert(&keys, row)) {
                Some(g) => group_of.push(g as u32),
                None if self.no_spill => return Ok(false),
                None => {
                    // Full: this group's rows go to a partition, now and later.
                    if self.partitions.is_none() {
                        self.start_partitions(batch, row)?;
                    }
                    if spilled.is_empty() {
                        spilled = vec![Vec::new(); self.fan_out];
                    }
                    spilled[keys.partition(row, self.seed, self.fan_out)].push(row as u32);
                    group_of.push(NO_GROUP);
                }
            }
        }
        // Min/max values grow when a longer value wins; counted after the batch.
        let gathered = Gathered::pays(self.groups, n).then(|| Gathered::sort(&group_of, self.groups));
        let order = gathered.as_ref().map_or(Order::Scattered(&group_of), Order::Gathered);
        let mut grown = 0u64;
        for (acc, arg) in self.accs.iter_mut().zip(&args) {
            grown += update_batch(acc, arg.as_ref(), order)?;
        }
        let counted = grown == 0 || self.reservation.try_grow(grown).is_ok();
        if !counted && self.no_spill {
            return Ok(false);
        }
        // The values are already held: when the pool refuses them, or they take the table past
        // its share, the table stops growing instead. Past its share, it took what the scan
        // below needed for its next batch (4,000 groups of 240-byte minimums under 1.3 MiB).
        if (!counted || self.reservation.size() > self.limit) && self.partitions.is_none() && !self.no_spill {
            self.start_partitions(batch, n)?;
        }
        if !spilled.is_empty() {
            self.partition_rows(batch, spilled)?;
        }
        self.rows_seen += n as u64;
        Ok(true)
    }

    /// Stops the table from growing: the rows of groups not in it go to partitions from now on
    /// (`at` is the first row of `batch` that does).
    ///
    /// Each partition is later aggregated on its own, and split again if its groups do not fit
    /// either, which writes its rows once more. So the fan-out follows what may still come: the
    /// rest of the input (as the scans count it, an upper bound) as new groups, each costing what
    /// a group of this table costs (or a row of this batch, if more), over the memory a table
    /// gets, three times over for room: from 16 to 256 partitions. Sixteen for everything wrote
    /// the rows of the distinct-payload count of the benchmark suite (mostly distinct) twice.
    fn start_partitions(&mut self, batch: &RecordBatch, at: usize) -> Result<()> {
        if let Some(expected) = self.expected_rows {
            let row_bytes = batch.get_array_memory_size() as u64 / batch.num_rows().max(1) as u64;
            let group_bytes = self.reservation.size() / self.groups.max(1) as u64;
            let seen = self.rows_seen + at as u64;
            // Over joins, filters or a first phase of aggregation, the table sees a fraction of
            // the rows its scans decode: the rows to come are projected from how far the scans
            // have got. Counting every scanned row as one to come, TPC-H Q10's aggregation (1.1M
            // rows in, of 76M scanned) spilled 8 MiB into 256 files.
            let scanned =
                self.scanned_at_start.map_or(0, |s| self.ctx.counters.rows.load(Ordering::Relaxed).saturating_sub(s));
            let total = if scanned > 0 && scanned < expected {
                (u128::from(seen) * u128::from(expected) / u128::from(scanned)) as u64
            } else {
                expected
            };
            let left = total.saturating_sub(seen);
            let wanted = (3 * left * row_bytes.max(group_bytes).max(1) / self.limit.max(1)) as usize;
            // Each partition buffers its rows until a write is worth it: at least 256 KiB of the
            // table's share a partition, or the writes get small (and the heap fragmented).
            let affordable = ((self.limit >> 18) as usize).max(1);
            let most = (1usize << affordable.ilog2()).clamp(MIN_PARTITIONS, MAX_PARTITIONS);
            self.fan_out = wanted.next_power_of_two().clamp(MIN_PARTITIONS, most);
        }
        // The table keeps what it holds; partition buffers get a share of the rest, so the input
        // still running beside the table has room.
        let limit = (self.limit / 4).max(min_memory(&self.ctx) / 2);
        let schema = self.spec.input_schema.clone();
        let metrics = &self.spec.metrics;
        self.partitions = Some(SpillPartitions::new(&self.ctx, metrics, schema, "HashAggregate", self.fan_out, limit));
        Ok(())
    }

    /// Adds the rows of groups not in the table to their partitions.
    fn partition_rows(&mut self, batch: &RecordBatch, spilled: Vec<Vec<u32>>) -> Result<()> {
        self.partitions.as_mut().expect("partitions started").push_split(batch, &spilled)
    }

    /// Writes out what the partitions still buffer and returns their spill files.
    fn finish_partitions(&mut self) -> Result<Vec<SpillFile>> {
        let Some(parts) = self.partitions.take() else { return Ok(Vec::new()) };
        self.spec.metrics.pass();
        Ok(parts.finish()?.into_iter().flatten().collect())
    }

    /// Folds `batch` into the (empty) table as a group per run of rows, run `k` starting at row
    /// `starts[k]`, without the index: see [`runs`]. False when the states do not fit the table's
    /// share.
    fn add_runs(&mut self, batch: &RecordBatch, starts: &[u32]) -> Result<bool> {
        debug_assert_eq!(self.groups, 0);
        let runs = starts.len();
        if runs > self.capacity && !self.grow_to(runs) {
            return Ok(false);
        }
        for _ in 0..runs {
            self.push_group();
        }
        self.groups = runs;
        let gathered = Gathered::runs(starts, batch.num_rows());
        let spec = self.spec.clone();
        let mut grown = 0u64;
        for (acc, col) in self.accs.iter_mut().zip(&spec.arg_columns) {
            let arg = match col {
                Some(c) => Some(ArgValues::new(acc, batch.column(*c))?),
                None => None,
            };
            grown += update_batch(acc, arg.as_ref(), Order::Gathered(&gathered))?;
        }
        Ok(grown == 0 || self.reservation.try_grow(grown).is_ok())
    }

    /// The groups [`add_runs`](Self::add_runs) made, their keys taken from the first row of each
    /// run of `batch`.
    fn output_runs(&self, batch: &RecordBatch, starts: &[u32]) -> Result<RecordBatch> {
        let first_rows = arrow::array::UInt32Array::from(starts.to_vec());
        let keys = (0..self.spec.key_count)
            .map(|k| Ok(arrow::compute::take(batch.column(k), &first_rows, None)?))
            .collect::<Result<Vec<_>>>()?;
        self.batch_of(keys, 0, self.groups)
    }

    /// Output rows for groups `start..end` (in insertion order).
    fn output(&self, start: usize, end: usize) -> Result<RecordBatch> {
        self.batch_of(self.index.key_columns(&self.spec, start, end)?, start, end)
    }

    /// The output batch of groups `start..end` with these key columns, and their states.
    fn batch_of(&self, keys: Vec<ArrayRef>, start: usize, end: usize) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.spec.out_schema.fields().len());
        columns.extend(keys);
        for (i, acc) in self.accs.iter().enumerate() {
            let field = self.spec.out_schema.field(self.spec.key_count + i);
            columns.push(finish(acc, start, end, field.data_type())?);
        }
        // Key columns come back as the converter's (or the input's) types; conform to the plan's.
        let columns = columns
            .into_iter()
            .zip(self.spec.out_schema.fields())
            .map(
                |(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c)
                    } else {
                        Ok(arrow::compute::cast(&c, f.data_type())?)
                    }
                },
            )
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.spec.out_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(end - start)),
        )?)
    }
}

const TABLE_SEED: u64 = 0x9e37_79b9;

/// The group keys of one batch.
enum BatchKeys {
    None,
    /// One integer-like key as `i64`, with its nulls.
    Int(Int64Array),
    /// Keys in row format, and the hash each is found by in the table (made once per row: a
    /// group's key was hashed to look it up, to add it, and again each time the table grew;
    /// TPC-H Q16's keys of two strings and two integers spent a sixth of its CPU there).
    Rows(Rows, Vec<u64>),
    /// Packed keys; the rows that did not pack (if any) and, then, every row in row format.
    Packed {
        keys: Vec<u64>,
        unpacked: Option<(Vec<bool>, Rows)>,
    },
}

impl BatchKeys {
    fn new(spec: &Spec, batch: &RecordBatch) -> Result<BatchKeys> {
        let columns = &batch.columns()[..spec.key_count];
        Ok(match (&spec.key_converter, &spec.packing, spec.key_count) {
            (_, _, 0) => BatchKeys::None,
            (None, _, _) => {
                let ints = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
                BatchKeys::Int(ints.as_primitive::<arrow::datatypes::Int64Type>().clone())
            }
            (Some(c), Some(packing), _) => {
                let (keys, unpacked) = packing.pack(columns)?;
                let unpacked = match unpacked {
                    Some(rows) => Some((rows, c.convert_columns(columns)?)),
                    None => None,
                };
                BatchKeys::Packed { keys, unpacked }
            }
            (Some(c), None, _) => {
                let rows = c.convert_columns(columns)?;
                let hashes = rows.iter().map(|r| hash_key(r.data())).collect();
                BatchKeys::Rows(rows, hashes)
            }
        })
    }

    /// The row-format key of row `row`, if the keys are in row format.
    fn row(&self, row: usize) -> Option<&[u8]> {
        match self {
            BatchKeys::Rows(r, _) => Some(r.row(row).data()),
            BatchKeys::Packed { unpacked: Some((rows, r)), .. } if rows[row] => Some(r.row(row).data()),
            _ => None,
        }
    }

    /// Bytes the row's key takes in a row-format key buffer (0 when it goes elsewhere).
    fn len(&self, row: usize) -> usize {
        self.row(row).map_or(0, |r| r.len())
    }

    fn hash(&self, row: usize, seed: u64) -> u64 {
        let state = FixedState::with_seed(seed);
        match self {
            BatchKeys::None => 0,
            BatchKeys::Int(a) if a.is_null(row) => state.hash_one(u64::MAX),
            BatchKeys::Int(a) => state.hash_one(a.value(row)),
            BatchKeys::Packed { keys, .. } => match self.row(row) {
                Some(r) => state.hash_one(r),
                None => state.hash_one(keys[row]),
            },
            BatchKeys::Rows(r, _) => state.hash_one(r.row(row).data()),
        }
    }

    /// The spill partition of row `row` at a recursion level's `seed`, of `fan_out` (a power of
    /// two): the top bits of the hash.
    fn partition(&self, row: usize, seed: u64, fan_out: usize) -> usize {
        (self.hash(row, seed + 1) >> (64 - fan_out.trailing_zeros())) as usize
    }
}

/// The hash a row-format key is found by in [`RowKeys`].
fn hash_key(key: &[u8]) -> u64 {
    FixedState::with_seed(TABLE_SEED).hash_one(key)
}

/// How groups are found by key.
enum GroupIndex {
    /// No GROUP BY: one group.
    Single,
    /// One integer-like key, kept inline in the map (and by group, for output); the null key is a
    /// group of its own.
    Int { map: IntMap, keys: Vec<i64>, nulls: Vec<bool>, null_group: Option<u32> },
    /// Keys in row format.
    Rows(RowKeys),
    /// Packed keys inline in the map (and by group, for output); the keys that do not pack in row
    /// format beside it. The row table takes room only once such a key comes (its memory is
    /// reserved from the start).
    Packed { map: IntMap, keys: Vec<u64>, rows: RowKeys },
}

impl GroupIndex {
    fn new(spec: &Spec) -> GroupIndex {
        match (&spec.key_converter, &spec.packing, spec.key_count) {
            (_, _, 0) => GroupIndex::Single,
            (None, _, _) => {
                GroupIndex::Int { map: IntMap::default(), keys: Vec::new(), nulls: Vec::new(), null_group: None }
            }
            (Some(_), Some(_), _) => {
                GroupIndex::Packed { map: IntMap::default(), keys: Vec::new(), rows: RowKeys::new() }
            }
            (Some(_), None, _) => GroupIndex::Rows(RowKeys::new()),
        }
    }

    /// Bytes for `capacity` groups: hash table buckets and control bytes, and the per-group vectors.
    fn bytes(&self, capacity: usize) -> u64 {
        let table = |entry: usize| hash_table_bytes(capacity, entry);
        (match self {
            GroupIndex::Single => 0,
            GroupIndex::Int { .. } => IntMap::bytes_for(capacity) + capacity * 9,
            GroupIndex::Rows { .. } => table(4) + capacity * 16,
            GroupIndex::Packed { .. } => IntMap::bytes_for(capacity) + capacity * 8 + table(4) + capacity * 16,
        }) as u64
    }

    fn reserve(&mut self, additional: usize) {
        match self {
            GroupIndex::Single => {}
            GroupIndex::Int { map, keys, nulls, .. } => {
                map.reserve(additional);
                keys.reserve_exact(additional);
                nulls.reserve_exact(additional);
            }
            GroupIndex::Rows(rows) => rows.reserve(additional),
            GroupIndex::Packed { map, keys, rows } => {
                map.reserve(additional);
                keys.reserve_exact(additional);
                if rows.table.is_empty() {
                    rows.offsets.reserve_exact(additional);
                    rows.hashes.reserve_exact(additional);
                } else {
                    rows.reserve(additional);
                }
            }
        }
    }

    fn row_keys(&self) -> Option<&RowKeys> {
        match self {
            GroupIndex::Rows(rows) | GroupIndex::Packed { rows, .. } => Some(rows),
            _ => None,
        }
    }

    /// The (old, new) capacity in bytes of the key buffer if a key of `len` bytes does not fit.
    fn key_growth(&self, len: usize) -> Option<(u64, u64)> {
        match self.row_keys() {
            Some(RowKeys { data, .. }) if len > 0 && data.len() + len > data.capacity() => {
                let new = (data.capacity() * 2).max(data.len() + len).max(64 << 10);
                Some((data.capacity() as u64, new as u64))
            }
            _ => None,
        }
    }

    /// Forgets every group, keeping the room.
    fn clear(&mut self) {
        match self {
            GroupIndex::Single => {}
            GroupIndex::Int { map, keys, nulls, null_group } => {
                map.clear();
                keys.clear();
                nulls.clear();
                *null_group = None;
            }
            GroupIndex::Rows(rows) => rows.clear(),
            GroupIndex::Packed { map, keys, rows } => {
                map.clear();
                keys.clear();
                rows.clear();
            }
        }
    }

    /// Bytes of the key buffer (reserved apart from [`bytes`](Self::bytes)).
    fn key_capacity(&self) -> usize {
        self.row_keys().map_or(0, |r| r.data.capacity())
    }

    fn grow_keys(&mut self, capacity: usize) {
        if let GroupIndex::Rows(RowKeys { data, .. }) | GroupIndex::Packed { rows: RowKeys { data, .. }, .. } = self {
            data.reserve_exact(capacity - data.len());
        }
    }

    fn find(&self, keys: &BatchKeys, row: usize) -> Option<usize> {
        match (self, keys) {
            (GroupIndex::Single, _) => Some(0),
            (GroupIndex::Int { null_group, .. }, BatchKeys::Int(a)) if a.is_null(row) => null_group.map(|g| g as usize),
            (GroupIndex::Int { map, .. }, BatchKeys::Int(a)) => match map.get(a.value(row)) {
                ABSENT => None,
                g => Some(g as usize),
            },
            (GroupIndex::Rows(rows), BatchKeys::Rows(r, hashes)) => rows.find(r.row(row).data(), hashes[row]),
            (GroupIndex::Packed { map, rows, .. }, BatchKeys::Packed { keys: packed, .. }) => match keys.row(row) {
                Some(key) => rows.find(key, hash_key(key)),
                None => match map.get(packed[row] as i64) {
                    ABSENT => None,
                    g => Some(g as usize),
                },
            },
            _ => unreachable!("keys and index of the same kind"),
        }
    }

    /// Adds group `g` for row `row` (room was made by `reserve` and `grow_keys`).
    fn insert(&mut self, keys: &BatchKeys, row: usize, g: u32) {
        match (self, keys) {
            (GroupIndex::Single, _) => {}
            (GroupIndex::Int { map, keys: ks, nulls, null_group }, BatchKeys::Int(a)) => {
                if a.is_null(row) {
                    *null_group = Some(g);
                    ks.push(0);
                    nulls.push(true);
                } else {
                    map.insert(a.value(row), g);
                    ks.push(a.value(row));
                    nulls.push(false);
                }
            }
            (GroupIndex::Rows(rows), BatchKeys::Rows(r, hashes)) => {
                rows.push(Some((r.row(row).data(), hashes[row])), g)
            }
            (GroupIndex::Packed { map, keys: ks, rows }, BatchKeys::Packed { keys: packed, .. }) => match keys.row(row)
            {
                Some(key) => {
                    if rows.table.is_empty() {
                        // The first key that did not pack: the table takes the room reserved
                        // for it, for the groups there is room for.
                        rows.reserve(ks.capacity().saturating_sub(ks.len()).max(1));
                    }
                    ks.push(0);
                    rows.push(Some((key, hash_key(key))), g);
                }
                None => {
                    map.insert(packed[row] as i64, g);
                    ks.push(packed[row]);
                    rows.push(None, g);
                }
            },
            _ => unreachable!("keys and index of the same kind"),
        }
    }

    /// The key columns of groups `start..end`, in the converter's types.
    fn key_columns(&self, spec: &Spec, start: usize, end: usize) -> Result<Vec<ArrayRef>> {
        let from_rows = |rows: &RowKeys, groups: &mut dyn Iterator<Item = usize>| -> Result<Vec<ArrayRef>> {
            let converter = spec.key_converter.as_ref().expect("row-format keys have a converter");
            let parser = converter.parser();
            Ok(converter.convert_rows(groups.map(|g| parser.parse(rows.key(g))))?)
        };
        Ok(match self {
            GroupIndex::Single => Vec::new(),
            GroupIndex::Int { keys, nulls, .. } => {
                let values = keys[start..end].iter().zip(&nulls[start..end]).map(|(k, null)| (!null).then_some(*k));
                vec![Arc::new(values.collect::<Int64Array>())]
            }
            GroupIndex::Rows(rows) => from_rows(rows, &mut (start..end))?,
            GroupIndex::Packed { keys, rows, .. } => {
                let packing = spec.packing.as_ref().expect("packed keys have a packing");
                let packed = packing.unpack(&keys[start..end])?;
                let in_rows: Vec<usize> = (start..end).filter(|&g| !rows.key(g).is_empty()).collect();
                if in_rows.is_empty() {
                    packed
                } else {
                    // Each group's key from where it is kept, in group order.
                    let unpacked = from_rows(rows, &mut in_rows.iter().copied())?;
                    let mut next = 0;
                    let pick: Vec<(usize, usize)> = (start..end)
                        .map(|g| match rows.key(g).is_empty() {
                            true => (0, g - start),
                            false => {
                                next += 1;
                                (1, next - 1)
                            }
                        })
                        .collect();
                    let mut columns = Vec::with_capacity(packed.len());
                    // Both in the key types: the packing's and the converter's are the same.
                    for (p, u) in packed.iter().zip(&unpacked) {
                        columns.push(arrow::compute::interleave(&[p.as_ref(), u.as_ref()], &pick)?);
                    }
                    columns
                }
            }
        })
    }
}

/// An argument column in the form its accumulator reads.
enum ArgValues {
    /// Unscaled 128-bit integers (integers and decimals).
    Int(Decimal128Array),
    Float(Float64Array),
    /// Row-format values for min/max.
    Rows(Rows, Option<arrow::buffer::NullBuffer>),
    /// Only nullness matters (count).
    Nulls(Option<arrow::buffer::NullBuffer>),
}

impl ArgValues {
    fn new(acc: &Acc, column: &ArrayRef) -> Result<ArgValues> {
        Ok(match acc {
            Acc::Count(_) => ArgValues::Nulls(column.logical_nulls()),
            Acc::SumInt { .. } | Acc::AvgInt { .. } | Acc::ExtremeInt { .. } => ArgValues::Int(unscaled(column)?),
            Acc::SumFloat { .. } | Acc::AvgFloat { .. } | Acc::Var { .. } => ArgValues::Float(
                arrow::compute::cast(column, &DataType::Float64)?.as_primitive::<Float64Type>().clone(),
            ),
            Acc::Extreme { converter, .. } | Acc::Single { converter, .. } => {
                ArgValues::Rows(converter.convert_columns(std::slice::from_ref(column))?, column.logical_nulls())
            }
        })
    }
}

/// Integers, decimals, dates and timestamps as their unscaled values in `i128` (a decimal keeps
/// its scale). Arrow's cast to DECIMAL(38) would rescale every value with an overflow check.
fn unscaled(column: &ArrayRef) -> Result<Decimal128Array> {
    let (values, scale) = match column.data_type() {
        DataType::Decimal128(_, s) => (column.as_primitive::<Decimal128Type>().clone(), *s),
        DataType::UInt64 => (column.as_primitive::<arrow::datatypes::UInt64Type>().unary(|v| v as i128), 0),
        // Every other integer, date and timestamp fits an i64 (a lossless cast).
        t if t.is_integer() || extreme_int(t) == Some(true) => {
            let ints = arrow::compute::cast(column, &DataType::Int64)?;
            (ints.as_primitive::<arrow::datatypes::Int64Type>().unary(|v| v as i128), 0)
        }
        _ => (arrow::compute::cast(column, &DataType::Decimal128(38, 0))?.as_primitive::<Decimal128Type>().clone(), 0),
    };
    Ok(values.with_precision_and_scale(38, scale)?)
}

/// Whether min/max of `t` keeps its state as an integer: `Some(false)` for integers and decimals,
/// `Some(true)` for dates and timestamps (which go through Int64), `None` for the rest.
fn extreme_int(t: &DataType) -> Option<bool> {
    match t {
        t if t.is_integer() => Some(false),
        DataType::Decimal128(..) => Some(false),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => Some(true),
        _ => None,
    }
}

/// The group of a row that went to a partition instead.
const NO_GROUP: u32 = u32::MAX;

/// How the rows of a batch reach their groups.
#[derive(Clone, Copy)]
enum Order<'a> {
    /// Row `r` goes to group `group_of[r]` ([`NO_GROUP`]: to none).
    Scattered(&'a [u32]),
    /// Group by group.
    Gathered(&'a Gathered),
}

/// A batch's rows in group order: group `spans[k].0` gets rows `rows[spans[k].1..spans[k].2]`,
/// in batch order.
///
/// Folded row by row, the rows of a few groups (TPC-H Q1's four flag pairs) make a chain of loads
/// and stores to the same few states, each waiting for the one before, once per aggregate. Group by
/// group, a state stays in a register over its rows; the sort that gathers them is one such chain,
/// paid once per batch.
struct Gathered {
    rows: Vec<u32>,
    spans: Vec<(usize, usize, usize)>,
}

impl Gathered {
    /// Whether a table of `groups` groups folds a batch of `rows` rows group by group: only when
    /// each group gets several rows on average (else the sort is pure cost).
    fn pays(groups: usize, rows: usize) -> bool {
        groups * 8 <= rows
    }

    /// The rows of `group_of` (groups below `groups`; [`NO_GROUP`] rows left out) sorted by group,
    /// by counting.
    fn sort(group_of: &[u32], groups: usize) -> Gathered {
        let mut next = vec![0usize; groups];
        for &g in group_of {
            if g != NO_GROUP {
                next[g as usize] += 1;
            }
        }
        let mut spans = Vec::new();
        let mut end = 0;
        for (g, slot) in next.iter_mut().enumerate() {
            let count = *slot;
            if count > 0 {
                spans.push((g, end, end + count));
            }
            *slot = end;
            end += count;
        }
        let mut rows = vec![0u32; end];
        for (r, &g) in group_of.iter().enumerate() {
            if g != NO_GROUP {
                let at = &mut next[g as usize];
                rows[*at] = r as u32;
                *at += 1;
            }
        }
        Gathered { rows, spans }
    }

    /// Rows already in runs (see [`runs`]): run `k` starts at row `starts[k]` and is group `k`.
    fn runs(starts: &[u32], n: usize) -> Gathered {
        let ends = starts.iter().skip(1).map(|&s| s as usize).chain(std::iter::once(n));
        let spans = starts.iter().zip(ends).enumerate().map(|(k, (&s, e))| (k, s as usize, e)).collect();
        Gathered { rows: (0..n as u32).collect(), spans }
    }

    fn groups(&self) -> impl Iterator<Item = (usize, &[u32])> + '_ {
        self.spans.iter().map(|&(g, s, e)| (g, &self.rows[s..e]))
    }
}

fn overflow(f: &str) -> Error {
    Error::Execution(format!("overflow in {f}()"))
}

/// `start` plus the valid values among `rows`, and how many were valid; `None` on overflow.
#[inline]
fn sum_int(
    start: i128,
    values: &[i128],
    nulls: Option<&arrow::buffer::NullBuffer>,
    rows: &[u32],
) -> Option<(i128, i64)> {
    let mut sum = start;
    match nulls {
        None => {
            for &r in rows {
                sum = sum.checked_add(values[r as usize])?;
            }
            Some((sum, rows.len() as i64))
        }
        Some(nulls) => {
            let mut count = 0;
            for &r in rows.iter().filter(|&&r| nulls.is_valid(r as usize)) {
                sum = sum.checked_add(values[r as usize])?;
                count += 1;
            }
            Some((sum, count))
        }
    }
}

/// `start` plus the valid values among `rows` (added in row order, as row by row would), and how
/// many were valid.
#[inline]
fn sum_float(start: f64, values: &[f64], nulls: Option<&arrow::buffer::NullBuffer>, rows: &[u32]) -> (f64, i64) {
    let mut sum = start;
    let mut count = 0;
    for &r in rows.iter().filter(|&&r| nulls.is_none_or(|n| n.is_valid(r as usize))) {
        sum += values[r as usize];
        count += 1;
    }
    (sum, count)
}

/// Folds every row of `arg` into its group, in `order`; returns bytes the state grew by. The
/// common states have loops of their own; the rest go row by row.
fn update_batch(acc: &mut Acc, arg: Option<&ArgValues>, order: Order) -> Result<u64> {
    match order {
        Order::Scattered(group_of) => update_scattered(acc, arg, group_of),
        Order::Gathered(gathered) => update_gathered(acc, arg, gathered),
    }
}

fn update_scattered(acc: &mut Acc, arg: Option<&ArgValues>, group_of: &[u32]) -> Result<u64> {
    let rows = || group_of.iter().enumerate().filter(|(_, g)| **g != NO_GROUP).map(|(r, g)| (r, *g as usize));
    match (acc, arg) {
        (Acc::Count(v), None) => rows().for_each(|(_, g)| v[g] += 1),
        (Acc::Count(v), Some(ArgValues::Nulls(nulls))) => match nulls {
            None => rows().for_each(|(_, g)| v[g] += 1),
            Some(n) => rows().filter(|(r, _)| n.is_valid(*r)).for_each(|(_, g)| v[g] += 1),
        },
        (Acc::SumInt { sum, seen }, Some(ArgValues::Int(a))) => {
            let values = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                sum[g] = sum[g].checked_add(values[r]).ok_or_else(|| overflow("sum"))?;
                seen[g] = true;
            }
        }
        (Acc::SumFloat { sum, seen }, Some(ArgValues::Float(a))) => {
            let values = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                sum[g] += values[r];
                seen[g] = true;
            }
        }
        (Acc::AvgInt { sum, count, .. }, Some(ArgValues::Int(a))) => {
            let values = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                sum[g] = sum[g].checked_add(values[r]).ok_or_else(|| overflow("avg"))?;
                count[g] += 1;
            }
        }
        (Acc::AvgFloat { sum, count }, Some(ArgValues::Float(a))) => {
            let values = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                sum[g] += values[r];
                count[g] += 1;
            }
        }
        (Acc::ExtremeInt { values, seen, max, .. }, Some(ArgValues::Int(a))) => {
            let input = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                let v = input[r];
                if !seen[g] || (*max && v > values[g]) || (!*max && v < values[g]) {
                    values[g] = v;
                    seen[g] = true;
                }
            }
        }
        (acc, arg) => {
            let mut grown = 0;
            for (r, g) in rows() {
                grown += update(acc, g, arg, r)?;
            }
            return Ok(grown);
        }
    }
    Ok(0)
}

fn update_gathered(acc: &mut Acc, arg: Option<&ArgValues>, gathered: &Gathered) -> Result<u64> {
    match (acc, arg) {
        (Acc::Count(v), None) | (Acc::Count(v), Some(ArgValues::Nulls(None))) => {
            for (g, rows) in gathered.groups() {
                v[g] += rows.len() as i64;
            }
        }
        (Acc::Count(v), Some(ArgValues::Nulls(Some(nulls)))) => {
            for (g, rows) in gathered.groups() {
                v[g] += rows.iter().filter(|&&r| nulls.is_valid(r as usize)).count() as i64;
            }
        }
        (Acc::SumInt { sum, seen }, Some(ArgValues::Int(a))) => {
            for (g, rows) in gathered.groups() {
                let (s, n) = sum_int(sum[g], a.values(), a.nulls(), rows).ok_or_else(|| overflow("sum"))?;
                sum[g] = s;
                seen[g] |= n > 0;
            }
        }
        (Acc::SumFloat { sum, seen }, Some(ArgValues::Float(a))) => {
            for (g, rows) in gathered.groups() {
                let (s, n) = sum_float(sum[g], a.values(), a.nulls(), rows);
                sum[g] = s;
                seen[g] |= n > 0;
            }
        }
        (Acc::AvgInt { sum, count, .. }, Some(ArgValues::Int(a))) => {
            for (g, rows) in gathered.groups() {
                let (s, n) = sum_int(sum[g], a.values(), a.nulls(), rows).ok_or_else(|| overflow("avg"))?;
                sum[g] = s;
                count[g] += n;
            }
        }
        (Acc::AvgFloat { sum, count }, Some(ArgValues::Float(a))) => {
            for (g, rows) in gathered.groups() {
                let (s, n) = sum_float(sum[g], a.values(), a.nulls(), rows);
                sum[g] = s;
                count[g] += n;
            }
        }
        (Acc::ExtremeInt { values, seen, max, .. }, Some(ArgValues::Int(a))) => {
            let input = a.values();
            for (g, rows) in gathered.groups() {
                let valid = rows.iter().map(|&r| r as usize).filter(|&r| a.is_valid(r)).map(|r| input[r]);
                let best = if *max { valid.max() } else { valid.min() };
                if let Some(v) = best {
                    if !seen[g] || (*max && v > values[g]) || (!*max && v < values[g]) {
                        values[g] = v;
                        seen[g] = true;
                    }
                }
            }
        }
        (acc, arg) => {
            let mut grown = 0;
            for (g, rows) in gathered.groups() {
                for &r in rows {
                    grown += update(acc, g, arg, r as usize)?;
                }
            }
            return Ok(grown);
        }
    }
    Ok(0)
}

/// Folds row `row` of `arg` into group `g`; returns bytes the state grew by (min/max values).
// Inlined into both loops that call it row by row (min/max of strings), as it was into the one
// loop before there were two.
#[inline(always)]
fn update(acc: &mut Acc, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64> {
    match (acc, arg) {
        (Acc::Count(v), None) => v[g] += 1,
        (Acc::Count(v), Some(ArgValues::Nulls(nulls))) => {
            if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                v[g] += 1;
            }
        }
        (Acc::SumInt { sum, seen }, Some(ArgValues::Int(a))) => {
            if a.is_valid(row) {
                sum[g] =
                    sum[g].checked_add(a.value(row)).ok_or_else(|| Error::Execution("overflow in sum()".into()))?;
                seen[g] = true;
            }
        }
        (Acc::SumFloat { sum, seen }, Some(ArgValues::Float(a))) => {
            if a.is_valid(row) {
                sum[g] += a.value(row);
                seen[g] = true;
            }
        }
        (Acc::AvgInt { sum, count, .. }, Some(ArgValues::Int(a))) => {
            if a.is_valid(row) {
                sum[g] =
                    sum[g].checked_add(a.value(row)).ok_or_else(|| Error::Execution("overflow in avg()".into()))?;
                count[g] += 1;
            }
        }
        (Acc::AvgFloat { sum, count }, Some(ArgValues::Float(a))) => {
            if a.is_valid(row) {
                sum[g] += a.value(row);
                count[g] += 1;
            }
        }
        (Acc::Var { n, mean, m2, .. }, Some(ArgValues::Float(a))) => {
            if a.is_valid(row) {
                let x = a.value(row);
                n[g] += 1.0;
                let delta = x - mean[g];
                mean[g] += delta / n[g];
                m2[g] += delta * (x - mean[g]);
            }
        }
        (Acc::Single { values, seen, .. }, Some(ArgValues::Rows(rows, nulls))) => {
            if seen[g] {
                return Err(Error::Execution(
                    "more than one row returned by a subquery used as an expression (hint: add an aggregate or LIMIT 1)"
                        .into(),
                ));
            }
            seen[g] = true;
            if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                let value: Box<[u8]> = rows.row(row).data().into();
                let grew = (value.len() + 16) as u64;
                values[g] = Some(value);
                return Ok(grew);
            }
        }
        (Acc::Extreme { values, max, .. }, Some(ArgValues::Rows(rows, nulls))) => {
            if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                let candidate = rows.row(row);
                let better = match &values[g] {
                    None => true,
                    Some(current) => {
                        let c = candidate.data();
                        if *max {
                            c > &current[..]
                        } else {
                            c < &current[..]
                        }
                    }
                };
                if better {
                    // A boxed value costs its bytes rounded up by the allocator (16 bytes of slack
                    // counted per value).
                    let old = values[g].as_ref().map_or(0, |v| v.len() + 16);
                    let new: Box<[u8]> = candidate.data().into();
                    let grew = (new.len() + 16).saturating_sub(old) as u64;
                    values[g] = Some(new);
                    return Ok(grew);
                }
            }
        }
        _ => return Err(Error::Execution("internal error: aggregate argument of the wrong kind".into())),
    }
    Ok(0)
}

/// The result column of an accumulator for groups `start..end`.
fn finish(acc: &Acc, start: usize, end: usize, out: &DataType) -> Result<ArrayRef> {
    let r = start..end;
    Ok(match acc {
        Acc::Count(v) => Arc::new(Int64Array::from(v[r].to_vec())),
        Acc::SumInt { sum, seen } => {
            let (p, s) = match out {
                DataType::Decimal128(p, s) => (*p, *s),
                _ => (38, 0),
            };
            let a: Decimal128Array = sum[r.clone()].iter().zip(&seen[r]).map(|(v, s)| s.then_some(*v)).collect();
            Arc::new(a.with_precision_and_scale(p, s)?)
        }
        Acc::SumFloat { sum, seen } => {
            Arc::new(sum[r.clone()].iter().zip(&seen[r]).map(|(v, s)| s.then_some(*v)).collect::<Float64Array>())
        }
        Acc::AvgInt { sum, count, scale } => {
            let div = 10f64.powi(*scale);
            Arc::new(
                sum[r.clone()]
                    .iter()
                    .zip(&count[r])
                    // As DuckDB: the exact sum over count * 10^scale, one rounding.
                    .map(|(s, c)| (*c > 0).then(|| *s as f64 / (*c as f64 * div)))
                    .collect::<Float64Array>(),
            )
        }
        Acc::AvgFloat { sum, count } => Arc::new(
            sum[r.clone()]
                .iter()
                .zip(&count[r])
                .map(|(s, c)| (*c > 0).then(|| s / *c as f64))
                .collect::<Float64Array>(),
        ),
        Acc::Var { n, m2, sqrt, sample, .. } => Arc::new(
            n[r.clone()]
                .iter()
                .zip(&m2[r])
                .map(|(n, m2)| {
                    let d = if *sample { n - 1.0 } else { *n };
                    (d > 0.0).then(|| if *sqrt { (m2 / d).sqrt() } else { m2 / d })
                })
                .collect::<Float64Array>(),
        ),
        Acc::ExtremeInt { values, seen, temporal, .. } => {
            let scale = match out {
                DataType::Decimal128(_, s) => *s,
                _ => 0,
            };
            let unscaled: Decimal128Array =
                values[r.clone()].iter().zip(&seen[r]).map(|(v, s)| s.then_some(*v)).collect();
            let unscaled: ArrayRef = Arc::new(unscaled.with_precision_and_scale(38, scale)?);
            if *temporal {
                arrow::compute::cast(&arrow::compute::cast(&unscaled, &DataType::Int64)?, out)?
            } else {
                arrow::compute::cast(&unscaled, out)?
            }
        }
        Acc::Extreme { values, converter, .. } | Acc::Single { values, converter, .. } => {
            let slice = &values[r];
            if slice.iter().all(|v| v.is_none()) {
                return Ok(new_null_array(out, slice.len()));
            }
            // Rows for nulls: the converter's encoding of a null value.
            let null_rows = converter.convert_columns(&[new_null_array(out, 1)])?;
            let null_row = null_rows.row(0);
            let parser = converter.parser();
            let rows = slice.iter().map(|v| match v {
                Some(bytes) => parser.parse(bytes),
                None => null_row,
            });
            converter.convert_rows(rows)?.remove(0)
        }
    })
}
