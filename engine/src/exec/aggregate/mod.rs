//! Hash aggregation (`GROUP BY`, aggregates, `SELECT DISTINCT`) that spills.
//!
//! Blocks: the whole input is consumed before the first group comes out. Spills: input rows of
//! groups that do not fit, partitioned by hash, to Parquet through the spill manager.
//!
//! # Algorithm (hybrid hash aggregation)
//!
//! 0. Over a scan or a join, `count`/`sum`/`min`/`max`/`avg` aggregate in two phases: each
//!    worker of the input first aggregates every batch it produces on its own (see
//!    [`two_phase`]), so far fewer rows reach the steps below, which then merge partial results.
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
//!
//! The types are here; their code is in [`stream`] (the aggregation as it runs), [`table`] (the
//! group table), [`accumulators`] (states per group, their updates and output) and [`partial`]
//! (the two-phase split and what the workers run).

mod partial;
mod stream;
mod table;

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_row::{RowConverter, Rows, SortField};
use foldhash::fast::FixedState;

use super::accumulators::{groups_accumulator, update_batch, ArgValues, Gathered, GroupsAccumulator, Order, NO_GROUP};
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

use self::partial::*;
use self::stream::*;

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

/// Groups and their states.
struct GroupTable {
    spec: Arc<Spec>,
    ctx: ExecContext,
    index: GroupIndex,
    /// Groups in the table, numbered in insertion order.
    groups: usize,
    /// Groups the index and every state vector have room for (reserved).
    capacity: usize,
    accs: Vec<Box<dyn GroupsAccumulator>>,
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
