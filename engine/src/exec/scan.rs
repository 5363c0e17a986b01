//! The scan stage of a pipeline: morsels decoded, filtered and projected on the worker threads,
//! handed to the consumer in input order.
//!
//! ```text
//!            morsels 0,2,4..  ┌──────────┐   queue (bytes)   ┌───────────────────────┐
//!  Table ──┬────────────────> │ worker 0 │ ────────────────> │                       │
//!          │ morsels 1,3,5..  ├──────────┤                   │ consumer: takes       │
//!          └────────────────> │ worker 1 │ ────────────────> │ morsel 0, 1, 2, ...   │──> sink
//!                             └──────────┘                   │ in order              │
//!   scan → filter → project   (stateless ops, per worker)    └───────────────────────┘
//! ```
//! Morsels are dealt round-robin to workers; each worker decodes its morsels in order, runs the
//! stateless operators and sends each batch down its own queue. The consumer reads morsel `k` from
//! worker `k % N`, so output keeps input order (as DuckDB's insertion order does) while every core
//! decodes and filters. Each worker's queue is bounded in bytes by its share of the memory the pool
//! has left; every batch is reserved from the pool before it is sent and released when the consumer
//! is done with it. Per worker, the page buffers of the morsel being decoded are reserved too.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::SchemaRef;

use super::dict_filter::{DictCache, DictFilter};
use super::node::{Node, Running, Started};
use super::operators::{self, KeyTest, Operator, Stage};
use super::{ExecContext, ExplainLine, OperatorMetrics, Pipeline, PipelineStats};
use crate::error::{Error, Result};
use crate::expr::Expr;
use crate::memory::MemoryReservation;
use crate::source::{EarlyTest, Morsel, PruningPredicate, Table};

/// A scan and the stateless operators that run on its workers.
#[derive(Clone)]
pub(crate) struct ScanPipeline {
    table: Arc<Table>,
    projection: Vec<usize>,
    pruning: Option<PruningPredicate>,
    /// Row groups or slices to scan: known at planning for Parquet (footers are in memory), found
    /// when the scan starts for CSV (finding record boundaries reads the file).
    morsels: Option<Vec<Morsel>>,
    /// What the workers run on each decoded batch, in order.
    stages: Vec<Stage>,
    /// Set by [`keep_dictionaries`](Self::keep_dictionaries): the operators the consumer runs on
    /// the scan's output.
    dictionary_output: Option<Vec<Operator>>,
}

/// The scan as a pipeline's source: the workers run the stateless operators pushed down to it.
impl Node for ScanPipeline {
    fn name(&self) -> &'static str {
        "Scan"
    }

    fn detail(&self) -> String {
        self.describe()
    }

    fn inputs(&self) -> Vec<&Pipeline> {
        Vec::new()
    }

    fn explain(&self, ctx: &ExecContext, id: u64, depth: usize, role: &str, out: &mut Vec<ExplainLine>) {
        let (mut depth, mut role) = (depth, role.to_string());
        for op in self.worker_ops().iter().rev() {
            out.push(ExplainLine { depth, id: None, text: format!("{role}{} (on scan workers)", op.describe()) });
            role.clear();
            depth += 1;
        }
        let stats = ScanPipeline::stats(self, ctx);
        let text = format!(
            "{role}Scan {} ({} of {} row groups)",
            self.describe(),
            stats.row_groups_scanned,
            stats.row_groups_total
        );
        out.push(ExplainLine { depth, id: Some(id), text });
    }

    fn min_memory(&self, ctx: &ExecContext) -> u64 {
        ScanPipeline::min_memory(self, ctx)
    }

    fn stream_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        ScanPipeline::max_memory(self, ctx, queue_limit)
    }

    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        ScanPipeline::max_memory(self, ctx, queue_limit)
    }

    fn output_batch_bytes(&self, ctx: &ExecContext) -> u64 {
        self.batch_bytes(ctx)
    }

    fn input_files(&self, out: &mut Vec<std::path::PathBuf>) {
        ScanPipeline::input_files(self, out)
    }

    fn input_rows(&self) -> Option<u64> {
        ScanPipeline::input_rows(self)
    }

    fn stats(&self, ctx: &ExecContext) -> PipelineStats {
        ScanPipeline::stats(self, ctx)
    }

    fn runs_pushed_work_on(&self) -> Option<&'static str> {
        Some("scan workers")
    }

    fn push_down(&mut self, stages: Vec<Stage>) -> std::result::Result<(), Vec<Stage>> {
        stages.into_iter().for_each(|s| self.push_stage(s));
        Ok(())
    }

    fn as_scan(&self) -> Option<&ScanPipeline> {
        Some(self)
    }

    fn as_scan_mut(&mut self) -> Option<&mut ScanPipeline> {
        Some(self)
    }

    fn start(
        self: Box<Self>,
        ctx: &ExecContext,
        _schema: &SchemaRef,
        metrics: &Arc<OperatorMetrics>,
        queue_limit: Option<u64>,
    ) -> Result<Started> {
        // Workers running other operators' work count the scan's output themselves.
        let count_out = !self.expands();
        let stream = self.execute(ctx, queue_limit, metrics)?;
        Ok(Started { count_out, ..Started::new(stream) })
    }
}

impl ScanPipeline {
    /// Has the workers run `stage` on their output, after what they run already.
    pub(crate) fn push_stage(&mut self, stage: Stage) {
        if let (Stage::Ops(new), Some(Stage::Ops(last))) = (&stage, self.stages.last_mut()) {
            last.extend(new.iter().cloned());
            return;
        }
        self.stages.push(stage);
    }

    /// The stateless operators the workers run first.
    pub(crate) fn worker_ops(&self) -> &[Operator] {
        match self.stages.first() {
            Some(Stage::Ops(ops)) => ops,
            _ => &[],
        }
    }

    /// Where each morsel's values of output column `column` start, when the morsels hold
    /// disjoint, increasing ranges of it (Parquet statistics say so, see
    /// [`Table::morsel_int_ranges`]) and the workers' operators pass it through unchanged: then
    /// rows of a value come from one morsel only, and the consumer, which takes morsels in order,
    /// has had every row of a value below the start of the morsel it is in.
    pub(crate) fn clustered_by(&self, column: usize) -> Option<Vec<i64>> {
        let ranges = self.key_ranges(column)?;
        ranges.windows(2).all(|w| w[0].1 < w[1].0).then(|| ranges.iter().map(|r| r.0).collect())
    }

    /// Each morsel's least and greatest value of output column `column` (a column without nulls),
    /// when the morsels come in order of it: each range starts at or after the end of the one
    /// before (a value may end one morsel and start the next, as when a writer cut row groups by
    /// row count through rows of one key).
    pub(crate) fn key_ranges(&self, column: usize) -> Option<Vec<(i64, i64)>> {
        let column = self.scan_column(column)?;
        let ranges = self.table.morsel_int_ranges(self.projection[column], self.morsels.as_deref()?)?;
        ranges.windows(2).all(|w| w[0].1 <= w[1].0).then_some(ranges)
    }

    /// Whether every row the scan reads comes out (no filter or limit on its workers), so that
    /// sizes estimated from its morsels hold for its output.
    pub(crate) fn keeps_every_row(&self) -> bool {
        self.stages.iter().all(|stage| match stage {
            Stage::Ops(ops) => ops.iter().all(|op| matches!(op, Operator::Project { .. })),
            Stage::Expand(_) => false,
        })
    }

    /// Rows and estimated decoded bytes of each morsel (Parquet only).
    pub(crate) fn morsel_sizes(&self) -> Option<Vec<(u64, u64)>> {
        let morsels = self.morsels.as_deref()?;
        morsels
            .iter()
            .map(|&m| {
                let rows = self.table.morsel_rows(m)?;
                Some((rows, rows * self.table.estimated_row_bytes(m, &self.projection)))
            })
            .collect()
    }

    /// The scan's own column that output column `column` passes through unchanged.
    fn scan_column(&self, column: usize) -> Option<usize> {
        let mut column = column;
        for stage in self.stages.iter().rev() {
            let Stage::Ops(ops) = stage else { return None };
            column = operators::column_source(column, ops)?;
        }
        (column < self.projection.len()).then_some(column)
    }

    /// This scan restricted to the rows whose output column `column` lies in `lo..=hi`: the
    /// morsels whose range (see [`ScanPipeline::key_ranges`]) meets it, filtered on the scan's
    /// column before anything else the workers run (so an early test takes the condition). `None`
    /// when the column is not one the scan reads as it is.
    pub(crate) fn restricted(&self, column: usize, lo: i64, hi: i64) -> Option<ScanPipeline> {
        use crate::expr::BinaryOp;
        let ranges = self.key_ranges(column)?;
        let column = self.scan_column(column)?;
        let morsels = self.morsels.as_deref()?;
        let kept = morsels.iter().zip(&ranges).filter(|(_, r)| r.0 <= hi && r.1 >= lo).map(|(m, _)| *m).collect();
        let data_type = self.table.schema().field(self.projection[column]).data_type().clone();
        let name = self.table.schema().field(self.projection[column]).name().clone();
        let bound = |op: BinaryOp, value: i64| -> Option<Expr> {
            let value: arrow::array::ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![value]));
            Some(Expr::Binary {
                op,
                left: Box::new(Expr::column(column, name.clone())),
                right: Box::new(Expr::Literal(arrow::compute::cast(&value, &data_type).ok()?)),
                data_type: arrow::datatypes::DataType::Boolean,
            })
        };
        let mut conditions = Vec::new();
        if lo > ranges.first()?.0 {
            conditions.push(bound(BinaryOp::GtEq, lo)?);
        }
        if hi < ranges.last()?.1 {
            conditions.push(bound(BinaryOp::LtEq, hi)?);
        }
        let mut scan = self.clone();
        scan.morsels = Some(kept);
        if let Some(predicate) = conditions.iter().cloned().reduce(|a, b| Expr::Binary {
            op: BinaryOp::And,
            left: Box::new(a),
            right: Box::new(b),
            data_type: arrow::datatypes::DataType::Boolean,
        }) {
            match scan.stages.first_mut() {
                Some(Stage::Ops(ops)) => ops.insert(0, Operator::filter(predicate)),
                _ => scan.stages.insert(0, Stage::Ops(vec![Operator::filter(predicate)])),
            }
        }
        Some(scan)
    }

    /// The table's name and the columns read, for metrics.
    pub(crate) fn describe(&self) -> String {
        let schema = self.table.schema();
        let cols: Vec<&str> = self.projection.iter().map(|&i| schema.field(i).name().as_str()).collect();
        format!("{} [{}]", self.table.name(), cols.join(", "))
    }

    pub(crate) fn new(
        table: &Arc<Table>,
        projection: &[usize],
        pruning: &Option<PruningPredicate>,
        worker_ops: Vec<Operator>,
    ) -> Result<ScanPipeline> {
        let morsels = if table.is_parquet() { Some(table.morsels(pruning.as_ref())?) } else { None };
        Ok(ScanPipeline {
            table: table.clone(),
            projection: projection.to_vec(),
            pruning: pruning.clone(),
            morsels,
            stages: vec![Stage::Ops(worker_ops)],
            dictionary_output: None,
        })
    }

    fn morsels(&mut self) -> Result<&[Morsel]> {
        if self.morsels.is_none() {
            self.morsels = Some(self.table.morsels(self.pruning.as_ref())?);
        }
        Ok(self.morsels.as_deref().unwrap_or(&[]))
    }

    /// The files the scan reads: those with a row group left after pruning (every file of a text
    /// format).
    pub(crate) fn input_files(&self, out: &mut Vec<std::path::PathBuf>) {
        let paths: Vec<&std::path::Path> = self.table.paths().collect();
        match &self.morsels {
            Some(morsels) => {
                let mut used = vec![false; paths.len()];
                morsels.iter().for_each(|m| used[m.file] = true);
                out.extend(paths.iter().zip(used).filter(|(_, u)| *u).map(|(p, _)| p.to_path_buf()));
            }
            None => out.extend(paths.iter().map(|p| p.to_path_buf())),
        }
    }

    /// Rows the scan will decode (after pruning), when known before it starts (Parquet).
    pub(crate) fn input_rows(&self) -> Option<u64> {
        self.morsels.as_ref()?.iter().map(|m| self.table.morsel_rows(*m)).sum()
    }

    /// Sizes of the scan; for CSV the slices are counted once the scan has started.
    pub(crate) fn stats(&self, ctx: &ExecContext) -> PipelineStats {
        let files = self.table.row_group_count();
        let scanned = self.morsels.as_ref().map_or(files, |m| m.len());
        PipelineStats {
            // Text files have no row groups: count their slices.
            row_groups_total: if self.table.is_parquet() { files } else { scanned },
            row_groups_scanned: scanned,
            min_memory: self.min_memory(ctx),
        }
    }

    /// Memory one worker needs (the largest morsel's page buffers and three batches) and one batch
    /// at the consumer.
    fn worker_memory(&self, ctx: &ExecContext) -> (u64, u64) {
        // Text formats need the same buffers for every morsel.
        let any = [Morsel { file: 0, row_group: 0, range: None }];
        let morsels = self.morsels.as_deref().unwrap_or(&any);
        let prefetch = crate::source::prefetch_limit(ctx.pool.budget());
        let pages = morsels
            .iter()
            .map(|m| self.table.page_buffer_bytes(*m, &self.projection, self.pruning.as_ref(), prefetch))
            .max()
            .unwrap_or(0);
        let row = morsels.iter().map(|m| self.table.estimated_row_bytes(*m, &self.projection)).max().unwrap_or(0);
        let row = self.widened(row);
        // Wide rows (a value of megabytes) make batches of fewer rows, down to one.
        let batch = (row.max(1) * ctx.config.batch_size as u64).min(ctx.batch_bytes_target()).max(row);
        (pages + 3 * batch, batch)
    }

    /// `row` bytes of scanned columns as the widest row the workers' projections make of them:
    /// batches are sized in rows, and a projection that adds computed columns (two decimals
    /// beside two integers) made batches of three times the bytes every operator above was
    /// sized for.
    fn widened(&self, row: u64) -> u64 {
        widen(row, self.widening())
    }

    /// The widest projected row over the scanned row, by their types' widths, as a fraction
    /// (at least one).
    fn widening(&self) -> (u64, u64) {
        use crate::source::type_width;
        let schema = self.table.schema();
        let scanned: u64 = self.projection.iter().map(|&c| type_width(schema.field(c).data_type())).sum();
        let widest = self
            .stages
            .iter()
            .flat_map(|s| match s {
                Stage::Ops(ops) => ops.as_slice(),
                Stage::Expand(_) => &[],
            })
            .filter_map(|op| match op {
                Operator::Project { schema, .. } => {
                    Some(schema.fields().iter().map(|f| type_width(f.data_type())).sum::<u64>())
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
        match widest > scanned && scanned > 0 {
            true => (widest, scanned),
            false => (1, 1),
        }
    }

    /// About the most one output batch holds.
    pub(crate) fn batch_bytes(&self, ctx: &ExecContext) -> u64 {
        self.worker_memory(ctx).1
    }

    /// The least memory the pipeline runs in: one worker and the consumer.
    pub(crate) fn min_memory(&self, ctx: &ExecContext) -> u64 {
        let (worker, batch) = self.worker_memory(ctx);
        worker + batch
    }

    /// The most the scan holds when its queues are capped at `queue_limit` bytes per worker: every
    /// thread a worker, each with its buffers and a full queue, and the consumer's batch.
    pub(crate) fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        let (worker, batch) = self.worker_memory(ctx);
        ctx.config.threads as u64 * (worker + queue_limit) + batch
    }

    /// As many workers as there are threads, morsels, and room in the pool for.
    fn workers(&self, ctx: &ExecContext, morsels: usize) -> Result<usize> {
        let (worker, batch) = self.worker_memory(ctx);
        // Workers past the first are optional: they leave the headroom kept for batches in
        // flight alone, which the first may use.
        let fit = ctx.available_for_sizing().saturating_sub(batch) / worker.max(1);
        let available = ctx.available_for_minimums();
        if fit == 0 && available < batch + worker {
            let budget = ctx.pool.budget();
            return Err(Error::BudgetTooSmall {
                what: format!("scanning {}", self.table.name()),
                needed: budget - available + worker + batch,
                budget,
            });
        }
        Ok(ctx.config.threads.min(morsels).min(fit as usize).max(1))
    }

    /// What the workers can test of a row before they decode all its columns: the conditions of
    /// the filters they run first (those on one string column tested on its dictionary, see
    /// [`DictFilter`]), and the key test of the operator after their projections (a join's probe,
    /// see [`Expand::key_test`]), when those read columns the scan decodes and leave some column
    /// unread. Then the workers decode those columns of a row group first and the
    /// others only for the rows that pass. TPC-H Q8 probes lineitem's 60M rows against 13K parts,
    /// Q17 against 2K: they decode the prices and quantities of 0.7% and 0.1% of the rows.
    fn early_test(&self, dict_filter: Option<&DictFilter>) -> Option<EarlyKeys> {
        if !self.table.is_parquet() {
            return None;
        }
        let (ops, expand): (&[Operator], _) = match self.stages.as_slice() {
            [Stage::Ops(ops), Stage::Expand(e), ..] => (ops, Some(e)),
            [Stage::Ops(ops), ..] => (ops, None),
            [Stage::Expand(e), ..] => (&[], Some(e)),
            [] => return None,
        };
        // Filters first (their conditions read the scan's columns), then projections only.
        let filters = ops.iter().take_while(|op| matches!(op, Operator::Filter(..))).count();
        if !ops[filters..].iter().all(|op| matches!(op, Operator::Project { .. })) {
            return None;
        }
        // The columns of the conditions tested on dictionaries first.
        let mut columns: Vec<usize> = dict_filter.map(|d| d.columns()).unwrap_or_default();
        let mut at = |column: usize, name: String| {
            let at = columns.iter().position(|&c| c == column).unwrap_or_else(|| {
                columns.push(column);
                columns.len() - 1
            });
            Some(Expr::column(at, name))
        };
        let conditions: Vec<Expr> = ops[..filters]
            .iter()
            .flat_map(|op| match op {
                Operator::Filter(_, conjuncts) => conjuncts.clone(),
                _ => Vec::new(),
            })
            .collect();
        // The filter may test a condition that can fail (a cast of a string) only on rows that
        // pass the others (those tested on dictionaries first, say): the early test, which tests
        // every row, takes none.
        if !conditions.iter().all(super::dict_filter::cannot_fail) {
            return None;
        }
        let filter = super::map_key_columns(&conditions, &mut at)?;
        let keyed = match expand.and_then(|e| e.key_test()) {
            Some((keys, test)) => {
                let keys = super::map_key_columns(&keys, |index, name| at(operators::column_source(index, ops)?, name));
                keys.map(|keys| (keys, test))
            }
            None => None,
        };
        if dict_filter.is_none() && filter.is_empty() && keyed.is_none() {
            return None;
        }
        let dict = dict_filter.cloned();
        (columns.len() < self.projection.len()).then_some(EarlyKeys { columns, dict, filter, keyed })
    }

    /// Lets the scan hand out the string columns that its workers' operators and `tail` (the
    /// consumer's, up to the query's output) only move as they are (see
    /// [`operators::passes_through`]) as the dictionaries their Parquet row groups store, for an
    /// output that takes them so: a Parquet sink interns every value into its own dictionary
    /// either way. Unpacking them copies every row's bytes one value at a time: a tenth of the
    /// CPU of a lineitem scan writing `l_shipmode` with two numbers.
    pub(crate) fn keep_dictionaries(&mut self, tail: &[Operator]) {
        self.dictionary_output = Some(tail.to_vec());
    }

    /// The columns (positions in the projection) handed out as dictionaries where stored so: see
    /// [`keep_dictionaries`](Self::keep_dictionaries). Called once the dictionary filter has taken
    /// its conditions: a column it alone tests may pass too.
    fn passed_dictionaries(&self) -> Vec<usize> {
        let Some(tail) = &self.dictionary_output else { return Vec::new() };
        let mut ops: Vec<Operator> = match self.stages.as_slice() {
            [] => Vec::new(),
            [Stage::Ops(ops)] => ops.clone(),
            _ => return Vec::new(),
        };
        ops.extend(tail.iter().cloned());
        let schema = self.table.schema();
        (0..self.projection.len())
            .filter(|&c| {
                schema.field(self.projection[c]).data_type() == &arrow::datatypes::DataType::Utf8
                    && operators::passes_through(c, &ops)
            })
            .collect()
    }

    /// Whether work of other operators (a join's probe, a partial aggregation, a join's key
    /// filter) runs on the workers after the scan's own: then the workers count the scan's
    /// output rows themselves (see [`ScanWork::scan_rows`]).
    pub(crate) fn expands(&self) -> bool {
        self.stages.iter().any(|s| matches!(s, Stage::Expand(_)))
    }

    /// Starts the workers and returns the consumer's end; `metrics` are the scan's.
    pub(crate) fn execute(
        mut self,
        ctx: &ExecContext,
        queue_limit: Option<u64>,
        metrics: &Arc<OperatorMetrics>,
    ) -> Result<ScanStream> {
        let count = ctx.threads.install(|| self.morsels().map(|m| m.len()))?;
        let workers = self.workers(ctx, count)?;
        // Output keeps input order, so the consumer drains one worker's morsel while the others
        // run ahead: give each worker a queue of batches, bounded in bytes by its share of what
        // the pool has left, so they all keep decoding.
        let (worker_bytes, batch_bytes) = self.worker_memory(ctx);
        let spare = ctx.available_for_sizing().saturating_sub(workers as u64 * worker_bytes + batch_bytes);
        // Half the spare memory: the rest is headroom for what no reservation sees (allocator slack,
        // encoder scratch space).
        let queue_limit = queue_limit.unwrap_or((spare / (2 * workers as u64)).min(256 << 20).max(2 * batch_bytes));
        let stats = self.stats(ctx);
        let scan_rows = self.expands().then(|| metrics.clone());
        // Conditions on a single string column test each value of a Parquet dictionary once.
        let dict_filter = match (self.table.is_parquet(), self.stages.first_mut()) {
            (true, Some(Stage::Ops(ops))) => DictFilter::split(ops, &self.table.schema().project(&self.projection)?),
            _ => None,
        };
        let early = self.early_test(dict_filter.as_ref());
        let passed = match self.table.is_parquet() {
            true => self.passed_dictionaries(),
            false => Vec::new(),
        };
        let widening = self.widening();
        let shared = Arc::new(ScanWork {
            passed,
            scan_rows,
            early,
            dict_filter,
            table: self.table,
            projection: self.projection,
            pruning: self.pruning,
            morsels: self.morsels.unwrap_or_default(),
            stages: self.stages,
            stop: AtomicBool::new(false),
            head: AtomicUsize::new(0),
            worker_bytes,
            widening,
            queued: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            queue_limit,
            active_workers: AtomicUsize::new(workers),
        });
        let mut receivers = Vec::with_capacity(workers);
        for w in 0..workers {
            // Unbounded in count (a bounded channel allocates all its slots up front): bounded in
            // bytes by `queue_limit` instead.
            let (tx, rx) = channel::<Message>();
            receivers.push(rx);
            let shared = shared.clone();
            let ctx2 = ctx.clone();
            ctx.counters.workers.fetch_add(1, Ordering::AcqRel);
            ctx.threads.spawn(move || {
                // A panic must become an error for the consumer, not an abort of the process.
                let panic_tx = tx.clone();
                let run =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker(w, workers, &shared, &ctx2, tx)));
                if let Err(panic) = run {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    let _ = panic_tx
                        .send(Message::Error(Error::Execution(format!("internal error in a scan worker: {what}"))));
                }
                ctx2.counters.workers.fetch_sub(1, Ordering::AcqRel);
                shared.active_workers.fetch_sub(1, Ordering::AcqRel);
            });
        }
        Ok(ScanStream { stats, shared, receivers, next_morsel: 0, done: false })
    }
}

/// What a batch takes beyond its arrays' buffers and structs: the batch and its column list, a
/// header per buffer, its reservation and its place in a queue. Nothing next to a batch of
/// thousands of rows; a row group of 7 rows made batches of 200 bytes, and a queue of them took
/// several times what was counted.
fn batch_overhead(batch: &RecordBatch) -> u64 {
    256 + 128 * batch.num_columns() as u64
}

/// `row` bytes times `widest / scanned` (see [`ScanPipeline::widening`]), rounded up.
fn widen(row: u64, (widest, scanned): (u64, u64)) -> u64 {
    row.saturating_mul(widest).div_ceil(scanned)
}

/// What the scan's workers share: the table, what they read and run, and how they take turns.
struct ScanWork {
    table: Arc<Table>,
    projection: Vec<usize>,
    pruning: Option<PruningPredicate>,
    morsels: Vec<Morsel>,
    stages: Vec<Stage>,
    /// Conditions taken out of the first filter, tested on dictionary values before the stages.
    dict_filter: Option<DictFilter>,
    /// Columns the workers pass on as dictionaries (see [`ScanPipeline::keep_dictionaries`]).
    passed: Vec<usize>,
    /// Keys tested before the other columns are decoded.
    early: Option<EarlyKeys>,
    /// The scan's metrics when other operators' work runs among the stages: its output rows are
    /// those that reach the first of them, not those that leave the pipeline.
    scan_rows: Option<Arc<OperatorMetrics>>,
    stop: AtomicBool,
    /// The morsel the consumer waits for: its worker goes first when memory is short.
    head: AtomicUsize,
    /// What one worker needs for a morsel (its page buffers and batches): workers other than
    /// the head's leave that much free in the pool before they queue more batches.
    worker_bytes: u64,
    /// How much wider the workers' projections make a row (see [`ScanPipeline::widened`]).
    widening: (u64, u64),
    /// Bytes of batches each worker has sent and the consumer has not yet taken.
    queued: Vec<AtomicU64>,
    /// Most bytes a worker may have queued.
    queue_limit: u64,
    /// Workers still running: the stream waits for them when it finishes, so that everything they
    /// reserved is back in the pool when the stream is gone.
    active_workers: AtomicUsize,
}

/// Conditions and a key test that a scan runs on the columns they read before it decodes the
/// others (see [`ScanPipeline::early_test`]).
struct EarlyKeys {
    /// Positions in the projection of the columns the conditions and keys read.
    columns: Vec<usize>,
    /// The conditions tested on dictionaries (see [`DictFilter`]; the scan's own, which the
    /// workers test again on the rows that pass).
    dict: Option<DictFilter>,
    /// The conditions of the workers' first filters, over a batch of those columns.
    filter: Vec<Expr>,
    /// The keys (over a batch of those columns) and their test.
    keyed: Option<(Vec<Expr>, Arc<dyn KeyTest>)>,
}

/// Counts of the rows an early test saw in a morsel, and what it knows of the morsel's
/// dictionaries.
struct EarlyCounts {
    dictionaries: std::cell::RefCell<DictCache>,
    tested: std::cell::Cell<usize>,
    /// Rows the filters passed.
    filtered: std::cell::Cell<usize>,
    /// Rows the filters and the key test passed.
    passed: std::cell::Cell<usize>,
}

impl EarlyKeys {
    fn counts(&self) -> EarlyCounts {
        EarlyCounts {
            dictionaries: std::cell::RefCell::new(self.dict.as_ref().map(|d| d.cache()).unwrap_or_default()),
            tested: Default::default(),
            filtered: Default::default(),
            passed: Default::default(),
        }
    }

    /// Which rows of `batch` (of [`Self::columns`]) pass the filters, then the key test.
    fn keeps(&self, batch: &RecordBatch, counts: &EarlyCounts) -> Result<BooleanArray> {
        let rows = batch.num_rows();
        let at = |c: usize| self.columns.iter().position(|&x| x == c).expect("a tested column is read first");
        let mut passed = match &self.dict {
            Some(d) => d.passes(&|c| batch.column(at(c)).clone(), &mut counts.dictionaries.borrow_mut())?,
            None => None,
        }
        .unwrap_or_else(|| BooleanBuffer::new_set(rows));
        // The other conditions and the keys read plain values: a column tested on its
        // dictionary comes as one (a join key of such a column failed in the row converter).
        let plain = match self.filter.is_empty() && self.keyed.is_none() {
            true => batch.clone(),
            false => super::dict_filter::unpack_all(batch)?,
        };
        let batch = &plain;
        for condition in &self.filter {
            // A null condition drops the row, as the filter does.
            let next = condition.evaluate_predicate(batch)?;
            passed = match next.nulls() {
                Some(valid) => &(&passed & next.values()) & valid.inner(),
                None => &passed & next.values(),
            };
        }
        let mut keep = BooleanArray::new(passed, None);
        let filtered = keep.true_count();
        if let (Some((keys, test)), true) = (&self.keyed, filtered > 0) {
            // The keys of the rows the filters passed only (what the operator would see).
            keep = match filtered == rows {
                true => test.keeps(batch, keys)?,
                false => {
                    let found = test.keeps(&arrow::compute::filter_record_batch(batch, &keep)?, keys)?;
                    let mut out = arrow::array::BooleanBufferBuilder::new(rows);
                    out.append_n(rows, false);
                    for (i, row) in keep.values().set_indices().enumerate() {
                        if found.value(i) {
                            out.set_bit(row, true);
                        }
                    }
                    BooleanArray::new(out.finish(), None)
                }
            };
        }
        counts.tested.set(counts.tested.get() + rows);
        counts.filtered.set(counts.filtered.get() + filtered);
        counts.passed.set(counts.passed.get() + keep.true_count());
        Ok(keep)
    }
}

enum Message {
    Batch(RecordBatch, MemoryReservation, u64),
    MorselEnd,
    Error(Error),
}

fn worker(w: usize, workers: usize, shared: &ScanWork, ctx: &ExecContext, tx: Sender<Message>) {
    let name = format!("Scan[{}]#{w}", shared.table.name());
    let mut decode = ctx.pool.register(format!("{name} decode"), false);
    let mut in_flight = ctx.pool.register(format!("{name} batches"), false);
    let target = ctx.batch_bytes_target();
    let prefetch = crate::source::prefetch_limit(ctx.pool.budget());
    let mut dictionaries = shared.dict_filter.as_ref().map(|d| d.columns()).unwrap_or_default();
    dictionaries.extend(shared.passed.iter().filter(|c| !dictionaries.contains(c)).collect::<Vec<_>>());
    let mut dict_cache = shared.dict_filter.as_ref().map(|d| d.cache()).unwrap_or_default();
    let stopped = || shared.stop.load(Ordering::Relaxed) || ctx.cancel.load(Ordering::Relaxed);
    // Morsels to decode whole before the early test is tried again, after one where it passed
    // most rows: twice as many after each such morsel in a row (TPC-H Q1's filter passes 98%).
    let (mut early_pause, mut next_pause): (u32, u32) = (0, 16);
    for k in (w..shared.morsels.len()).step_by(workers) {
        if stopped() {
            return;
        }
        let morsel = shared.morsels[k];
        let row_bytes = shared.table.estimated_row_bytes(morsel, &shared.projection).max(1);
        let batch_rows = ((target / widen(row_bytes, shared.widening)) as usize).clamp(1, ctx.config.batch_size.max(1));
        let pages = shared.table.page_buffer_bytes(morsel, &shared.projection, shared.pruning.as_ref(), prefetch);
        let mut early = shared.early.as_ref().filter(|_| early_pause == 0);
        early_pause = early_pause.saturating_sub(1);
        // The tested columns of the whole morsel are held while the others are decoded. That is
        // beyond what the plan sized a worker for (pages and batches): when the pool cannot give
        // it now, the morsel is decoded whole instead (a row group of 1M rows held 20 MiB of
        // tested columns, and failed a 16 MiB budget that decodes it in batches).
        let base = pages + batch_rows as u64 * row_bytes;
        let held = early.map_or(0, |e| {
            let columns: Vec<usize> = e.columns.iter().map(|&c| shared.projection[c]).collect();
            shared.table.estimated_row_bytes(morsel, &columns) * shared.table.morsel_rows(morsel).unwrap_or(0)
        });
        // Taken only while it leaves the pool half of what is free: other workers and the
        // operators running beside the scan were sized on that memory (a worker holding 5.6 MiB
        // of tested columns under an 8 MiB budget failed its neighbour's next row group).
        let room = (ctx.pool.available() + decode.size()) / 2;
        let held = match held > 0 && (base + held > room || decode.try_resize(base + held).is_err()) {
            true => {
                early = None;
                0
            }
            false => held,
        };
        if let Err(e) = reserve_waiting(&mut decode, base + held, shared, ctx, Waiting::between(k)) {
            let _ = tx.send(Message::Error(e));
            return;
        }
        let mut emit = |batch: RecordBatch| -> Result<bool> {
            if stopped() {
                return Ok(false);
            }
            // The estimate was short (dictionary-encoded strings decode larger than they are
            // stored): account for what was really decoded.
            let decoded = batch.get_array_memory_size() as u64;
            if decoded > decode.size() {
                reserve_waiting(&mut decode, decoded, shared, ctx, Waiting::within(k))?;
            }
            let mut send = |out: RecordBatch| -> Result<bool> {
                let out = match shared.passed.is_empty() {
                    true => out,
                    false => super::dict_filter::unpack_large_dictionaries(out)?,
                };
                let bytes = out.get_array_memory_size() as u64 + batch_overhead(&out);
                let queued = &shared.queued[w];
                // A worker ahead of the consumer queues while its queue has room, and, when the
                // pool is short, only while it leaves a morsel's worth free for the worker the
                // consumer waits on: else that worker could not get memory that batches waiting
                // behind it hold.
                let full = || {
                    let q = queued.load(Ordering::Acquire);
                    let ahead = shared.head.load(Ordering::Acquire) != k;
                    q > 0
                        && (q + bytes > shared.queue_limit
                            || (ahead && ctx.pool.available() < bytes + shared.worker_bytes))
                };
                while full() {
                    if stopped() {
                        return Ok(false);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                in_flight_grow(&mut in_flight, bytes, shared, ctx, Waiting::within(k))?;
                let reservation = in_flight.split(bytes);
                queued.fetch_add(bytes, Ordering::AcqRel);
                Ok(tx.send(Message::Batch(out, reservation, bytes)).is_ok())
            };
            let batch = match &shared.dict_filter {
                Some(d) => match d.apply(batch, &mut dict_cache, &shared.passed)? {
                    Some(b) => b,
                    None => return Ok(true),
                },
                None => batch,
            };
            match (&shared.scan_rows, shared.stages.split_first()) {
                (Some(metrics), Some((Stage::Ops(ops), rest))) => match operators::apply(ops, batch)? {
                    Some(b) => {
                        metrics.rows_out(b.num_rows());
                        operators::run_stages(rest, b, &mut send)
                    }
                    None => Ok(true),
                },
                (Some(metrics), _) => {
                    metrics.rows_out(batch.num_rows());
                    operators::run_stages(&shared.stages, batch, &mut send)
                }
                (None, _) => operators::run_stages(&shared.stages, batch, &mut send),
            }
        };
        let tested = early.map(|e| (e, e.counts()));
        let keeps = |batch: &RecordBatch| {
            let (e, counts) = tested.as_ref().expect("the scan tests rows early only with a test");
            e.keeps(batch, counts)
        };
        let result = shared.table.scan_morsel_encoded(
            morsel,
            &shared.projection,
            shared.pruning.as_ref(),
            batch_rows,
            &ctx.counters,
            &dictionaries,
            early.map(|e| EarlyTest { columns: &e.columns, keeps: &keeps }),
            prefetch,
            &mut emit,
        );
        if let Some((e, counts)) = &tested {
            // Rows the filters passed and the key test dropped are the scan's output and the
            // tested operator's input.
            let dropped = counts.filtered.get() - counts.passed.get();
            if let Some((_, test)) = &e.keyed {
                test.dropped(dropped);
            }
            if let Some(metrics) = &shared.scan_rows {
                metrics.rows_out(dropped);
            }
            if counts.passed.get() * 2 > counts.tested.get() {
                early_pause = next_pause;
                next_pause = (2 * next_pause).min(256);
            } else {
                next_pause = 16;
            }
        }
        // The cached dictionaries belong to the morsel's chunks: let them go with it.
        dict_cache.iter_mut().for_each(|c| *c = None);
        if let Err(e) = result {
            let _ = tx.send(Message::Error(e));
            return;
        }
        if tx.send(Message::MorselEnd).is_err() {
            return;
        }
    }
}

fn in_flight_grow(
    r: &mut MemoryReservation,
    bytes: u64,
    shared: &ScanWork,
    ctx: &ExecContext,
    waiting: Waiting,
) -> Result<()> {
    let target = r.size() + bytes;
    reserve_waiting(r, target, shared, ctx, waiting)
}

/// Where in its morsel a worker asks for memory.
#[derive(Clone, Copy)]
struct Waiting {
    morsel: usize,
    /// Between two morsels: what the reservation holds is not in use, and is given back while
    /// the worker waits.
    between: bool,
}

impl Waiting {
    fn between(morsel: usize) -> Waiting {
        Waiting { morsel, between: true }
    }

    fn within(morsel: usize) -> Waiting {
        Waiting { morsel, between: false }
    }
}

/// How long a worker waits for memory while nothing at all is given back in the pool: then no
/// one is going to, and the shortage is real.
const STALL: Duration = Duration::from_secs(10);

/// Resizes `r` to `bytes`; when the pool is full, waits for memory to be given back instead of
/// failing: by the consumer (the batches it holds, a writer's queue, a spilling operator above),
/// or by the other workers of this scan, whose row groups end. The worker the consumer waits on
/// asks first: the others wait, between morsels with nothing held, while it waits too. It fails
/// when nothing at all was given back for [`STALL`] (a shortage no waiting mends), or when no one
/// else holds anything.
fn reserve_waiting(
    r: &mut MemoryReservation,
    bytes: u64,
    shared: &ScanWork,
    ctx: &ExecContext,
    waiting: Waiting,
) -> Result<()> {
    let mut quiet = Instant::now();
    loop {
        let head = shared.head.load(Ordering::Acquire) == waiting.morsel;
        match r.try_resize(bytes) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if shared.stop.load(Ordering::Relaxed) || ctx.cancel.load(Ordering::Relaxed) {
                    return Err(e);
                }
                if waiting.between && !head {
                    r.free();
                }
                let others = ctx.pool.reserved() > r.size();
                if !others || quiet.elapsed() > STALL {
                    return Err(e);
                }
                if ctx.pool.wait_for_release(Duration::from_millis(50)) {
                    quiet = Instant::now();
                }
            }
        }
    }
}

/// The consumer's end of a running scan: its batches in input order, before any tail operator.
pub(crate) struct ScanStream {
    stats: PipelineStats,
    shared: Arc<ScanWork>,
    receivers: Vec<Receiver<Message>>,
    next_morsel: usize,
    done: bool,
}

impl ScanStream {
    fn finish(&mut self) {
        self.done = true;
        self.shared.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers unblocks workers waiting to send.
        self.receivers.clear();
        while self.shared.active_workers.load(Ordering::Acquire) > 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Running for ScanStream {
    fn stats(&self) -> Option<PipelineStats> {
        Some(self.stats)
    }

    fn whole_batches(&self) -> bool {
        true
    }

    fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        loop {
            if self.done {
                return None;
            }
            if cancel.load(Ordering::Relaxed) {
                self.finish();
                return Some(Err(Error::Cancelled));
            }
            if self.next_morsel >= self.shared.morsels.len() {
                self.finish();
                return None;
            }
            let from = self.next_morsel % self.receivers.len();
            let rx = &self.receivers[from];
            let message = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => m,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return Some(Err(Error::Execution("a scan worker stopped unexpectedly".into())));
                }
            };
            match message {
                Message::MorselEnd => {
                    self.next_morsel += 1;
                    self.shared.head.store(self.next_morsel, Ordering::Release);
                }
                Message::Error(e) => {
                    self.finish();
                    return Some(Err(e));
                }
                Message::Batch(batch, reservation, bytes) => {
                    self.shared.queued[from].fetch_sub(bytes, Ordering::AcqRel);
                    return Some(Ok((batch, reservation)));
                }
            }
        }
    }

    /// Stops the workers early (a limit is satisfied).
    fn stop(&mut self) {
        self.finish();
    }
}

impl Drop for ScanStream {
    fn drop(&mut self) {
        self.finish();
    }
}
