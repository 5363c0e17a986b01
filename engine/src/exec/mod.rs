//! Execution: pipelines of streaming operators on a rayon pool, cut at blocking operators.
//!
//! ```text
//!   Scan ─> filter ─> project ─┐                       (workers, see [`scan`])
//!                              ├─> consumer ─> limit ─> sink
//!   Scan ─> ... ─> Sort ───────┘  (a sort consumes its input pipeline, spills sorted runs,
//!                                  then merges them as the source of the operators above)
//! ```
//! Blocking operators (sort, aggregation, join, window, shared CTE, and a union's inputs run one
//! after another) are a pipeline's source, fed by the pipelines below them: each a [`node::Node`]
//! of its own, made by the physical planner ([`planner`]). Work that needs no state across batches
//! runs on the scan workers: filters, projections, a join's probe into a finished table, and the
//! partial step of a two-phase aggregation (each an `Expand` set on the scan).
//!
//! A [`BatchStream`] is the consumer's end: batches come out in order, each reserved from the
//! memory pool until the consumer releases it. Operators above a limit or a blocking operator run
//! on the consumer; when a limit is satisfied the stream stops its sources early.

mod accumulators;
mod aggregate;
mod coalesce;
mod dict_column;
mod dict_filter;
mod int_map;
mod join;
mod metrics;
mod node;
mod operators;
mod packed_keys;
mod parquet_writer;
mod partition;
mod planner;
mod row_keys;
mod scan;
mod shared;
pub mod sink;
mod sort;
mod union;
mod window;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use self::metrics::OperatorStats;
pub(crate) use self::metrics::{OperatorMetrics, OperatorRegistry};
pub use self::operators::Operator;
pub(crate) use self::shared::SharedRegistry;
use crate::error::Result;
use crate::memory::{MemoryPool, MemoryReservation};
use crate::plan::LogicalPlan;
use crate::source::ScanCounters;
use crate::spill::SpillManager;
use crate::Config;

use self::node::{Node, Running};
use self::scan::ScanPipeline;

/// Whether `e` is null whenever the columns in `columns` are (and it reads one): columns, casts,
/// negation, arithmetic and concatenation of such; anything else (`coalesce`, `CASE`, `IS NULL`)
/// is taken as able to turn nulls into values.
fn null_with(e: &crate::expr::Expr, columns: &std::ops::Range<usize>) -> bool {
    use crate::expr::Expr;
    match e {
        Expr::Column { index, .. } => columns.contains(index),
        Expr::Cast { expr, .. } | Expr::Negate(expr) => null_with(expr, columns),
        Expr::Binary { op, left, right, .. } if op.is_arithmetic() || *op == crate::expr::BinaryOp::Concat => {
            null_with(left, columns) || null_with(right, columns)
        }
        _ => false,
    }
}

/// `keys` with every column replaced by what `column(index, name)` gives for it; `None` when it
/// gives nothing for one (a key that cannot be expressed below).
fn map_key_columns(
    keys: &[crate::expr::Expr],
    mut column: impl FnMut(usize, String) -> Option<crate::expr::Expr>,
) -> Option<Vec<crate::expr::Expr>> {
    use crate::expr::Expr;
    keys.iter()
        .map(|k| {
            let mut ok = true;
            let mapped = k.transform(&mut |e| match e {
                Expr::Column { index, name } => match column(index, name.clone()) {
                    Some(below) => Ok(below),
                    None => {
                        ok = false;
                        Ok(Expr::Column { index, name })
                    }
                },
                other => Ok(other),
            });
            mapped.ok().filter(|_| ok)
        })
        .collect()
}

/// Types whose values convert to and from `i64` one-to-one: a single key of such a type is kept as
/// an `i64` inline in hash tables (joins, aggregations).
pub(crate) fn int_like(t: &arrow::datatypes::DataType) -> bool {
    use arrow::compute::can_cast_types;
    use arrow::datatypes::DataType;
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
            | DataType::Time32(_)
            | DataType::Time64(_)
    ) && can_cast_types(t, &DataType::Int64)
        && can_cast_types(&DataType::Int64, t)
}

/// Bytes of a hashbrown table with room for `capacity` entries of `entry` bytes: its buckets (a
/// power of two, at most 7/8 full) and a control byte each.
pub(crate) fn hash_table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    (capacity * 8 / 7).next_power_of_two() * (entry + 1) + 16
}

/// What a running query shares with its workers.
#[derive(Clone)]
pub struct ExecContext {
    /// Sizes of the run.
    pub config: Config,
    /// The run's memory budget.
    pub pool: MemoryPool,
    /// Worker threads.
    pub threads: Arc<rayon::ThreadPool>,
    /// Scan progress, for progress bars and reports.
    pub counters: Arc<ScanCounters>,
    /// Set to stop everything (Ctrl-C).
    pub cancel: Arc<AtomicBool>,
    /// Where blocking operators spill.
    pub spill: SpillManager,
    /// The running query's operators.
    pub(crate) operators: OperatorRegistry,
    /// The minimums of blocking operators whose inputs are starting: left free when the inputs
    /// size themselves (see [`start_beside`]).
    pub(crate) pending_minimums: Arc<AtomicU64>,
    /// The running query's common table expressions, each computed once.
    pub(crate) shared: shared::SharedRegistry,
    /// Bytes one batch in flight should hold at most (see [`ExecContext::batch_bytes_target`]).
    pub(crate) batch_target: u64,
}

impl ExecContext {
    /// What an operator that is starting may size itself from: the pool's free bytes beyond the
    /// headroom kept for batches in flight, less the minimums of the operators waiting above it.
    pub(crate) fn available_for_sizing(&self) -> u64 {
        self.pool.spare().saturating_sub(self.pending_minimums.load(Ordering::Acquire))
    }

    /// What an operator's minimum may take: as [`Self::available_for_sizing`], with the headroom
    /// kept for batches in flight, which a minimum may use (it is counted in the plan's).
    pub(crate) fn available_for_minimums(&self) -> u64 {
        self.pool.available().saturating_sub(self.pending_minimums.load(Ordering::Acquire))
    }

    /// What an operator sizing itself mid-run (a join's next partition, say) may count on: the
    /// pool's spare bytes and what consumers that spill on request hold (a sort above, taking
    /// this operator's output into runs it keeps in memory; see [`crate::memory::Reclaim`]).
    pub(crate) fn obtainable(&self) -> u64 {
        self.pool.spare() + self.pool.reclaimable()
    }

    /// Bytes one batch in flight should hold at most. Every operator's minimum is a few batches,
    /// so a query with many operators under a small budget runs with smaller batches: each query
    /// picks its own (see [`ExecContext::for_plan`]).
    pub fn batch_bytes_target(&self) -> u64 {
        self.batch_target
    }

    /// The batch size a run starts from: the budget shared by every batch that can be alive at
    /// once in a simple scan (see the module docs), within sensible bounds.
    pub(crate) fn default_batch_target(config: &Config) -> u64 {
        let slots = 4 * config.threads as u64 + 4;
        (config.mem_budget / (slots * 2)).clamp(MIN_BATCH_TARGET, 16 << 20)
    }

    /// The context a pipeline runs in: batches as large as the default, or smaller until the
    /// minimums of all the plan's operators take at most half of what is left of the budget once
    /// `held` bytes are taken (a writer's buffers), at least as small as needed for them to fit
    /// at all. `consumer_batches`: batches the pipeline's consumer copies into memory of its own
    /// (a writer encodes each batch it is given: one). Errors with the smallest budget that would
    /// do when even the smallest batches do not fit.
    pub(crate) fn for_plan(&self, pipeline: &Pipeline, held: u64, consumer_batches: u64) -> Result<ExecContext> {
        let budget = self.config.mem_budget.saturating_sub(held);
        let mut ctx = self.clone();
        ctx.batch_target = Self::default_batch_target(&self.config);
        let need = |ctx: &ExecContext| plan_need(pipeline, ctx, consumer_batches);
        let mut fitting = None;
        loop {
            let needed = need(&ctx);
            if needed <= budget {
                fitting = Some(ctx.batch_target);
                if needed <= budget / 2 {
                    break;
                }
            }
            if ctx.batch_target <= MIN_BATCH_TARGET {
                break;
            }
            ctx.batch_target = (ctx.batch_target / 2).max(MIN_BATCH_TARGET);
        }
        match fitting {
            Some(target) => {
                ctx.batch_target = target;
                Ok(ctx)
            }
            None => Err(crate::Error::BudgetTooSmall {
                what: "this query".into(),
                needed: self.least_budget(pipeline, &|_| held, consumer_batches),
                budget: self.config.mem_budget,
            }),
        }
    }

    /// This context with the smallest batches.
    pub(crate) fn smallest_batches(&self) -> ExecContext {
        ExecContext { batch_target: MIN_BATCH_TARGET, ..self.clone() }
    }

    /// This context as it would be under a budget of `budget`, with the smallest batches: what
    /// the minimums are computed in.
    fn sized_for(&self, budget: u64) -> ExecContext {
        let mut config = self.config.clone();
        config.mem_budget = budget;
        ExecContext { config, pool: MemoryPool::new(budget), batch_target: MIN_BATCH_TARGET, ..self.clone() }
    }

    /// The smallest budget `pipeline` runs in with what `held(budget)` takes beside it (tables'
    /// footers, an output's writer) and `consumer_batches` batches copied by its consumer.
    ///
    /// Operators size some buffers from the budget (a Parquet chunk is read whole when it fits
    /// in a sixty-fourth of it, a writer's pages grow with it), so a minimum computed under one
    /// budget is not the minimum under another: a query refused at 1 MiB asked for 1.3, was
    /// refused at 1.3 and asked for 1.5. This is the fixed point, from the budget given up: the
    /// smallest budget at least as big as the minimum computed under it.
    pub(crate) fn least_budget(&self, pipeline: &Pipeline, held: &dyn Fn(u64) -> u64, consumer_batches: u64) -> u64 {
        let need = |budget: u64| plan_need(pipeline, &self.sized_for(budget), consumer_batches) + held(budget);
        let mut budget = self.config.mem_budget;
        // The minimum grows far slower than the budget: a few steps reach it.
        for _ in 0..32 {
            let needed = need(budget);
            if needed <= budget {
                return budget;
            }
            budget = needed;
        }
        budget
    }
}

/// What a pipeline needs to run in `ctx`: its operators' minimums and the batches its consumer
/// copies.
fn plan_need(pipeline: &Pipeline, ctx: &ExecContext, consumer_batches: u64) -> u64 {
    pipeline.min_memory(ctx) + consumer_batches * pipeline.output_batch_bytes(ctx)
}

/// The headroom an operator keeps for its batches of `bytes` (see [`crate::memory::Headroom`]):
/// two of them, of at most 1 MiB each.
pub(crate) fn headroom_for(bytes: u64) -> u64 {
    2 * bytes.min(1 << 20)
}

/// The smallest batch target: below it, per-batch overheads dominate.
const MIN_BATCH_TARGET: u64 = 64 << 10;

/// A pipeline: a source (a scan, or a blocking operator fed by pipelines of its own, see
/// [`node`]) and the operators that run on the consumer above it.
pub(crate) struct Pipeline {
    /// The node's number in `EXPLAIN` and in operator metrics.
    id: u64,
    source: Box<dyn Node>,
    tail_ops: Vec<Operator>,
    schema: SchemaRef,
}

/// Expressions as a list in `EXPLAIN` and metrics.
fn exprs_text(exprs: &[crate::expr::Expr]) -> String {
    exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
}

/// A number for a new physical plan node, unique in the process.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One line of a physical plan as `EXPLAIN` shows it: its depth, the operator node it belongs
/// to (for `EXPLAIN ANALYZE`'s numbers) and its text.
#[derive(Debug, Clone)]
pub struct ExplainLine {
    /// Indentation level.
    pub depth: usize,
    /// The operator node whose metrics go on this line, if any.
    pub id: Option<u64>,
    /// What the line says.
    pub text: String,
}

/// What the executor learnt about a plan before running it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PipelineStats {
    /// Row groups (or files) in the scanned table.
    pub row_groups_total: usize,
    /// Row groups (or files) left after pruning.
    pub row_groups_scanned: usize,
    /// The least memory the pipeline can run in.
    pub min_memory: u64,
}

/// One morsel of a scan in key order (see [`Pipeline::key_ranges`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MorselKeys {
    /// Least key.
    pub min: i64,
    /// Greatest key.
    pub max: i64,
    /// Rows.
    pub rows: u64,
    /// Estimated decoded bytes.
    pub bytes: u64,
}

impl Pipeline {
    /// A pipeline of `source` and the consumer's operators `tail_ops`, making `schema`.
    pub(crate) fn of(source: Box<dyn Node>, tail_ops: Vec<Operator>, schema: SchemaRef) -> Pipeline {
        Pipeline { id: next_id(), source, tail_ops, schema }
    }

    /// The physical plan of `plan` (see [`planner`]).
    pub(crate) fn new(plan: &LogicalPlan) -> Result<Pipeline> {
        planner::plan(plan)
    }

    /// For an output that takes string columns as dictionary arrays (a Parquet sink): a scan
    /// feeding it directly passes on those it only moves as the file stores them (see
    /// [`ScanPipeline::keep_dictionaries`]).
    pub(crate) fn keep_dictionaries(&mut self) {
        if let Some(scan) = self.source.as_scan_mut() {
            scan.keep_dictionaries(&self.tail_ops);
        }
    }

    /// Where work pushed down to this pipeline runs ([`Pipeline::push_down`]), or `None` when it
    /// cannot be: a limit on the consumer needs one ordered stream, and a blocking source
    /// other than a join has no workers to run it.
    pub(crate) fn takes_stages(&self) -> Option<&'static str> {
        if self.tail_ops.iter().any(|o| matches!(o, Operator::Limit { .. })) {
            return None;
        }
        self.source.runs_pushed_work_on()
    }

    /// Has the workers that produce this pipeline's batches also run `stages` on them, so that
    /// work above it (a join's probe, an aggregation's partial step) runs on every core: a scan
    /// runs them right away; a join runs them on its probe side's workers once its table is
    /// built, or on the consumer when it cannot. False (nothing changed) for other sources, or
    /// when a limit sits in between. `schema` is what the pipeline then produces.
    pub(crate) fn push_down(&mut self, stages: Vec<operators::Stage>, schema: SchemaRef) -> bool {
        if self.tail_ops.iter().any(|o| matches!(o, Operator::Limit { .. })) {
            return false;
        }
        let tail = std::mem::take(&mut self.tail_ops);
        let all = std::iter::once(operators::Stage::Ops(tail)).chain(stages).collect();
        match self.source.push_down(all) {
            Ok(()) => {
                self.schema = schema;
                true
            }
            Err(back) => {
                self.tail_ops = match back.into_iter().next() {
                    Some(operators::Stage::Ops(ops)) => ops,
                    _ => Vec::new(),
                };
                false
            }
        }
    }

    /// A group key among `keys` (over this pipeline's output) whose values come clustered, and
    /// where each morsel's values start (see [`ScanPipeline::clustered_by`]): a scan, with the
    /// key passed through unchanged.
    pub(crate) fn clustered_by(&self, keys: &[crate::expr::Expr]) -> Option<(usize, Vec<i64>)> {
        let scan = self.source.as_scan()?;
        keys.iter().enumerate().find_map(|(k, key)| {
            let crate::expr::Expr::Column { index, .. } = key else { return None };
            let column = operators::column_source(*index, &self.tail_ops)?;
            Some((k, scan.clustered_by(column)?))
        })
    }

    /// The scan column that output column `key` passes through unchanged, when this pipeline is
    /// a scan whose operators keep every row they are given a key for (no limit).
    fn scan_key(&self, key: &crate::expr::Expr) -> Option<(&ScanPipeline, usize)> {
        let (Some(scan), crate::expr::Expr::Column { index, .. }) = (self.source.as_scan(), key) else { return None };
        Some((scan, operators::column_source(*index, &self.tail_ops)?))
    }

    /// Each morsel's least and greatest value of `key`, rows and estimated bytes, when this
    /// pipeline is a scan whose morsels come in order of it (see
    /// [`ScanPipeline::key_ranges`]).
    pub(crate) fn key_ranges(&self, key: &crate::expr::Expr) -> Option<Vec<MorselKeys>> {
        let (scan, column) = self.scan_key(key)?;
        let ranges = scan.key_ranges(column)?.into_iter().zip(scan.morsel_sizes()?);
        Some(ranges.map(|((min, max), (rows, bytes))| MorselKeys { min, max, rows, bytes }).collect())
    }

    /// Whether this pipeline is a scan whose every row comes out (see
    /// [`ScanPipeline::keeps_every_row`]).
    pub(crate) fn keeps_every_row(&self) -> bool {
        self.source.as_scan().is_some_and(|scan| scan.keeps_every_row())
            && self.tail_ops.iter().all(|op| matches!(op, Operator::Project { .. }))
    }

    /// A copy of this pipeline (a scan, see [`Pipeline::key_ranges`]) that makes only the rows
    /// whose `key` lies in `lo..=hi`; its metrics are this pipeline's.
    pub(crate) fn restricted(&self, key: &crate::expr::Expr, lo: i64, hi: i64) -> Option<Pipeline> {
        let (scan, column) = self.scan_key(key)?;
        Some(Pipeline {
            id: self.id,
            source: Box::new(scan.restricted(column, lo, hi)?),
            tail_ops: self.tail_ops.clone(),
            schema: self.schema.clone(),
        })
    }

    /// Filters the rows that feed this pipeline's blocking work by a join key: `keys` (over the
    /// pipeline's output) are traced down through projections, a join's probe side and an
    /// aggregation's group keys (see [`Node::push_key_filter`]) to the scan below, whose workers
    /// then run `make(keys there)`. Only an aggregation is worth it (a plain scan is probed by
    /// the join itself). Nothing happens when the keys cannot be traced.
    pub(crate) fn push_key_filter(
        &mut self,
        keys: &[crate::expr::Expr],
        make: &dyn Fn(Vec<crate::expr::Expr>) -> operators::Stage,
    ) {
        use crate::expr::Expr;
        // Through the consumer's operators, top down: projections map the keys to their input.
        let mut keys: Vec<Expr> = keys.to_vec();
        for op in self.tail_ops.iter().rev() {
            match op {
                Operator::Project { exprs, .. } => {
                    let mapped: Option<Vec<Expr>> = keys
                        .iter()
                        .map(|k| {
                            k.transform(&mut |e| match e {
                                Expr::Column { index, .. } => Ok(exprs[index].clone()),
                                other => Ok(other),
                            })
                            .ok()
                        })
                        .collect();
                    match mapped {
                        Some(m) => keys = m,
                        None => return,
                    }
                }
                Operator::Filter(..) => {}
                _ => return,
            }
        }
        self.source.push_key_filter(&keys, make);
    }

    /// Runs the key filter on this pipeline's output, on its scan's workers.
    fn push_key_filter_here(
        &mut self,
        keys: Vec<crate::expr::Expr>,
        make: &dyn Fn(Vec<crate::expr::Expr>) -> operators::Stage,
    ) {
        if self.source.as_scan().is_some() {
            let schema = self.schema.clone();
            self.push_down(vec![make(keys)], schema);
        } else {
            self.push_key_filter(&keys, make);
        }
    }

    /// How many references each common table expression has.
    pub(crate) fn shared_counts(&self, out: &mut std::collections::HashMap<u64, usize>) {
        self.source.shared_counts(out)
    }

    /// The files the pipeline reads, after pruning, in plan order (a file read twice is listed twice).
    pub(crate) fn input_files(&self, out: &mut Vec<std::path::PathBuf>) {
        self.source.input_files(out)
    }

    /// Rows the pipeline's scans will decode, when every scan knows it before starting.
    pub(crate) fn input_rows(&self) -> Option<u64> {
        self.source.input_rows()
    }

    pub(crate) fn stats(&self, ctx: &ExecContext) -> PipelineStats {
        PipelineStats { min_memory: self.min_memory(ctx), ..self.source.stats(ctx) }
    }

    /// About the most one batch of the pipeline's output holds.
    pub(crate) fn output_batch_bytes(&self, ctx: &ExecContext) -> u64 {
        self.source.output_batch_bytes(ctx)
    }

    /// The least memory the pipeline runs in.
    pub(crate) fn min_memory(&self, ctx: &ExecContext) -> u64 {
        self.source.min_memory(ctx)
    }

    /// The memory the pipeline holds besides what it has reserved once its output starts: a
    /// scan's workers and queues; for a blocking operator, the output buffers it reserves as it
    /// goes (its state is reserved already); for a join, its probe side's.
    pub(crate) fn stream_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        self.source.stream_memory(ctx, queue_limit)
    }

    /// The most memory the pipeline holds while running with scan queues of `queue_limit` bytes.
    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        self.source.max_memory(ctx, queue_limit)
    }

    /// The physical plan, one line per operator, outermost first: what runs on the consumer
    /// (operators above a blocking one), the blocking operators with their inputs, and for a scan
    /// the operators its workers run.
    pub(crate) fn describe(&self, ctx: &ExecContext, depth: usize, role: &str, out: &mut Vec<ExplainLine>) {
        let mut depth = depth;
        let mut role = role.to_string();
        for op in self.tail_ops.iter().rev() {
            out.push(ExplainLine { depth, id: None, text: format!("{role}{}", op.describe()) });
            role.clear();
            depth += 1;
        }
        self.source.explain(ctx, self.id, depth, &role, out);
    }

    /// Starts the pipeline and returns the consumer's end.
    pub(crate) fn execute(self, ctx: &ExecContext) -> Result<BatchStream> {
        self.execute_with(ctx, None)
    }

    /// `queue_limit` caps the scan's per-worker queues (an input of a blocking operator needs no
    /// run-ahead: order does not matter to it, memory does).
    fn execute_with(self, ctx: &ExecContext, queue_limit: Option<u64>) -> Result<BatchStream> {
        let stats = self.stats(ctx);
        let metrics = ctx.operators.register(self.id, self.source.name(), self.source.detail());
        let started = self.source.start(ctx, &self.schema, &metrics, queue_limit)?;
        let stats = started.stream.stats().unwrap_or(stats);
        let headroom = started.headroom.then(|| ctx.pool.keep(headroom_for(ctx.batch_bytes_target())));
        Ok(BatchStream {
            headroom,
            repeating: None,
            pool: ctx.pool.clone(),
            chunk_bytes: ctx.batch_bytes_target(),
            stats,
            schema: self.schema,
            metrics,
            count_out: started.count_out,
            operators: ctx.operators.clone(),
            source: started.stream,
            tail: started.head_ops.into_iter().chain(self.tail_ops).map(operators::TailState::new).collect(),
            held: None,
            small: Vec::new(),
            ready: None,
            coalesce_rows: ctx.config.batch_size.max(1) / 4,
            cancel: ctx.cancel.clone(),
            done: false,
        })
    }
}

/// Starts the input of a blocking operator with the operator's declared minimum set aside, so the
/// input (a scan picks its worker count from what the pool has free, an aggregation its table
/// size) leaves room for it. The minimum is set aside by count, not reserved: a reservation held
/// while the input starts would refuse the input's first batches, whose workers start at once.
pub(crate) fn start_beside(
    ctx: &ExecContext,
    operator: &str,
    minimum: u64,
    start: impl FnOnce() -> Result<BatchStream>,
) -> Result<BatchStream> {
    let pending = ctx.pending_minimums.load(Ordering::Acquire);
    if ctx.available_for_minimums() < minimum {
        return Err(crate::Error::BudgetTooSmall {
            what: operator.to_string(),
            needed: ctx.pool.budget() - ctx.pool.available() + pending + minimum,
            budget: ctx.pool.budget(),
        });
    }
    ctx.pending_minimums.fetch_add(minimum, Ordering::AcqRel);
    let stream = start();
    ctx.pending_minimums.fetch_sub(minimum, Ordering::AcqRel);
    stream
}

/// The consumer's end of a running pipeline: an iterator of record batches in order.
///
/// A batch returned by `next` stays accounted in the memory pool until the following call to `next`
/// (or until the stream is dropped).
pub struct BatchStream {
    stats: PipelineStats,
    schema: SchemaRef,
    /// The source operator's record, and every operator of the query.
    metrics: Arc<OperatorMetrics>,
    /// Whether `metrics` count the batches this stream hands out as the source's output.
    count_out: bool,
    operators: OperatorRegistry,
    source: Box<dyn Running>,
    tail: Vec<operators::TailState>,
    held: Option<MemoryReservation>,
    /// Headroom for the batches this stream hands on (see [`crate::memory::Headroom`]): two of
    /// the target size, or of the largest seen (batches of wide rows pass the target).
    headroom: Option<crate::memory::Headroom>,
    /// A repeat (`EXCEPT ALL`, `INTERSECT ALL`) handing out its copies a chunk at a time.
    repeating: Option<Repeat>,
    pool: crate::memory::MemoryPool,
    /// Bytes a chunk of repeated rows takes at most (the batch target).
    chunk_bytes: u64,
    /// Small batches held back to go out as one (see [`BatchStream::coalesce`]), each with its
    /// bytes moved to a reservation of its own.
    small: Vec<(RecordBatch, MemoryReservation)>,
    /// A batch that came after small ones, to go out after them.
    ready: Option<(RecordBatch, MemoryReservation)>,
    /// Small batches (an eighth of this many rows, a sixteenth of the batch target in bytes) go
    /// out together once they make this many rows (or a quarter of the batch target in bytes):
    /// batches of a thousand rows pass as they are, not copied.
    coalesce_rows: usize,
    cancel: Arc<AtomicBool>,
    done: bool,
}

/// A repeat in progress: the tail operator it is, its state, and the reservation of the source's
/// batch it repeats (given back once the last copy is out).
struct Repeat {
    at: usize,
    state: operators::Repeating,
    held: Option<MemoryReservation>,
}

impl BatchStream {
    /// The schema of every batch.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Sizes of the scan (row groups or slices, before and after pruning).
    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    /// What each operator of the query has done so far.
    pub fn operators(&self) -> Vec<OperatorStats> {
        self.operators.stats()
    }

    /// The next batch together with the reservation that pays for it; give the reservation back
    /// with [`release`](Self::release) when done with the batch.
    pub fn next_reserved(&mut self) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        crate::stack::deep(|| self.next_here())
    }

    fn next_here(&mut self) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        self.release_held();
        loop {
            if let Some(ready) = self.ready.take() {
                return Some(Ok(ready));
            }
            if self.repeating.is_some() {
                match self.next_repeated() {
                    Ok(Some((b, r))) => match self.coalesce(b, r) {
                        Some(out) => return Some(out),
                        None => continue,
                    },
                    Ok(None) => continue,
                    Err(e) => {
                        self.finish();
                        return Some(Err(e));
                    }
                }
            }
            if self.done {
                return (!self.small.is_empty()).then(|| self.coalesced());
            }
            let started = std::time::Instant::now();
            let next = self.source.next_reserved(&self.cancel);
            self.metrics.time(started);
            if let (true, Some(Ok((b, _)))) = (self.count_out, &next) {
                self.metrics.rows_out(b.num_rows());
            }
            let (batch, reservation) = match next {
                None => {
                    self.finish();
                    return (!self.small.is_empty()).then(|| self.coalesced());
                }
                Some(Err(e)) => {
                    self.finish();
                    return Some(Err(e));
                }
                Some(Ok(item)) => item,
            };
            if let Some(headroom) = &mut self.headroom {
                headroom.raise_to(headroom_for(batch.get_array_memory_size() as u64));
            }
            let mut batch = Some(batch);
            let mut reservation = Some(reservation);
            // A scan counts the batches it handed out by their reservations: its batches are
            // repeated whole.
            let chunked = !self.source.whole_batches();
            for (at, t) in self.tail.iter_mut().enumerate() {
                if let (Some(schema), true, Some(b)) = (t.repeat_schema(), chunked, &batch) {
                    let state = operators::Repeating::new(b.clone(), schema.clone());
                    self.repeating = Some(Repeat { at, state, held: reservation.take() });
                    batch = None;
                    break;
                }
                batch = match batch {
                    Some(b) => match t.apply(b) {
                        Ok(b) => b,
                        Err(e) => {
                            if let Some(r) = reservation {
                                self.source.release(r);
                            }
                            self.finish();
                            return Some(Err(e));
                        }
                    },
                    None => None,
                };
            }
            let Some(reservation) = reservation else { continue };
            if self.tail.iter().any(|t| t.exhausted()) {
                // Everything the limit needs is here: stop the sources early.
                self.source.stop();
                self.done = true;
            }
            match batch {
                Some(b) if b.num_rows() > 0 || self.schema.fields().is_empty() => {
                    if let Some(out) = self.coalesce(b, reservation) {
                        return Some(out);
                    }
                }
                _ => self.source.release(reservation),
            }
        }
    }

    /// The next chunk of the repeat in progress, through the operators after it, with a
    /// reservation of its own; `None` when the chunk came to nothing or the repeat is done.
    fn next_repeated(&mut self) -> Result<Option<(RecordBatch, MemoryReservation)>> {
        let Some(repeat) = self.repeating.as_mut() else { return Ok(None) };
        let rows = (self.chunk_bytes / repeat.state.row_bytes()).max(1) as usize;
        let at = repeat.at;
        let Some(mut chunk) = repeat.state.next_chunk(rows)? else {
            self.end_repeat();
            return Ok(None);
        };
        for t in &mut self.tail[at + 1..] {
            match t.apply(chunk)? {
                Some(b) => chunk = b,
                None => return Ok(None),
            }
        }
        if self.tail.iter().any(|t| t.exhausted()) {
            self.end_repeat();
            self.source.stop();
            self.done = true;
        }
        let mut reservation = self.pool.register("Repeat output", false);
        reservation.try_grow(chunk.get_array_memory_size() as u64)?;
        Ok(Some((chunk, reservation)))
    }

    fn end_repeat(&mut self) {
        if let Some(Repeat { held: Some(r), .. }) = self.repeating.take() {
            self.source.release(r);
        }
    }

    fn release_held(&mut self) {
        if let Some(r) = self.held.take() {
            self.source.release(r);
        }
    }

    /// Gives back the reservation of a batch taken by [`next_reserved`](Self::next_reserved).
    pub fn release(&mut self, reservation: MemoryReservation) {
        self.source.release(reservation);
    }

    fn finish(&mut self) {
        self.done = true;
        self.ready = None;
        self.end_repeat();
        self.headroom = None;
        self.source.stop();
    }
}

impl Iterator for BatchStream {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_reserved()? {
            Ok((batch, reservation)) => {
                self.held = Some(reservation);
                Some(Ok(batch))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        self.release_held();
        self.finish();
    }
}

/// The bytes of memory a batch's rows take. For a slice this is its part of the buffers it shares
/// (`get_array_memory_size` counts whole buffers, so slices of one batch would each count it all).
pub(crate) fn sliced_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()) as u64)
        .sum()
}
