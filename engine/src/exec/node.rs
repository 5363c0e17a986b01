//! What a pipeline's source operator is: a [`Node`] while the plan is built, sized and shown, and
//! a [`Running`] operator once it starts.
//!
//! A pipeline ([`Pipeline`]) is a source and the operators that run on its consumer. The source
//! is a scan, or a blocking operator (sort, aggregation, join, window, union, shared CTE) fed by
//! pipelines of its own. Each is a type of its own, in its operator's module, and provides what
//! the executor asks of every source: its inputs, the memory it needs (at least, while streaming,
//! at most), how it shows in `EXPLAIN` and metrics, and how it starts. A new operator is one type
//! implementing these two traits, and the line of the physical planner ([`super::planner`]) that
//! makes it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::operators::{Operator, Stage};
use super::scan::ScanPipeline;
use super::{ExecContext, ExplainLine, OperatorMetrics, Pipeline, PipelineStats};
use crate::error::Result;
use crate::expr::Expr;
use crate::memory::MemoryReservation;

/// A pipeline's source in the physical plan.
pub(crate) trait Node: Send {
    /// The operator's name in metrics and `EXPLAIN` ("HashJoin").
    fn name(&self) -> &'static str;

    /// What metrics show beside the name.
    fn detail(&self) -> String;

    /// The pipelines that feed it, in plan order.
    fn inputs(&self) -> Vec<&Pipeline>;

    /// Its lines of `EXPLAIN` (its own under `id`, at `depth`, after `role`), then its inputs'.
    fn explain(&self, ctx: &ExecContext, id: u64, depth: usize, role: &str, out: &mut Vec<ExplainLine>) {
        out.push(ExplainLine { depth, id: Some(id), text: format!("{role}{} {}", self.name(), self.detail()) });
        for input in self.inputs() {
            input.describe(ctx, depth + 1, "", out);
        }
    }

    /// The least memory it and its inputs run in.
    fn min_memory(&self, ctx: &ExecContext) -> u64;

    /// The memory it holds besides what it has reserved once its output starts (see
    /// [`Pipeline::stream_memory`]).
    fn stream_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64;

    /// The most memory it and its inputs hold while running with scan queues of `queue_limit`
    /// bytes.
    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64;

    /// About the most one batch of its output holds.
    fn output_batch_bytes(&self, ctx: &ExecContext) -> u64 {
        ctx.batch_bytes_target()
    }

    /// The files it reads, after pruning, in plan order.
    fn input_files(&self, out: &mut Vec<PathBuf>) {
        self.inputs().iter().for_each(|i| i.input_files(out));
    }

    /// Rows its scans will decode, when every scan knows it before starting.
    fn input_rows(&self) -> Option<u64> {
        self.inputs().iter().map(|i| i.input_rows()).sum()
    }

    /// Counts the references to each common table expression below it.
    fn shared_counts(&self, out: &mut HashMap<u64, usize>) {
        self.inputs().iter().for_each(|i| i.shared_counts(out));
    }

    /// Row groups of its scans before and after pruning (`min_memory` is the pipeline's to fill).
    fn stats(&self, ctx: &ExecContext) -> PipelineStats {
        let mut stats = PipelineStats::default();
        for s in self.inputs().iter().map(|i| i.stats(ctx)) {
            stats.row_groups_total += s.row_groups_total;
            stats.row_groups_scanned += s.row_groups_scanned;
        }
        stats
    }

    /// Where work pushed down to it ([`Node::push_down`]) runs, when it takes any.
    fn runs_pushed_work_on(&self) -> Option<&'static str> {
        None
    }

    /// Takes `stages` to run on the workers that make its output (see [`Pipeline::push_down`]),
    /// or gives them back.
    fn push_down(&mut self, stages: Vec<Stage>) -> std::result::Result<(), Vec<Stage>> {
        Err(stages)
    }

    /// Filters the rows that feed its blocking work by `keys` over its output (see
    /// [`Pipeline::push_key_filter`]); nothing by default.
    fn push_key_filter(&mut self, _keys: &[Expr], _make: &dyn Fn(Vec<Expr>) -> Stage) {}

    /// The scan, when it is one.
    fn as_scan(&self) -> Option<&ScanPipeline> {
        None
    }

    /// The scan, when it is one, to change.
    fn as_scan_mut(&mut self) -> Option<&mut ScanPipeline> {
        None
    }

    /// Starts it: `schema` is what its pipeline produces, `queue_limit` caps its scans' queues.
    fn start(
        self: Box<Self>,
        ctx: &ExecContext,
        schema: &SchemaRef,
        metrics: &Arc<OperatorMetrics>,
        queue_limit: Option<u64>,
    ) -> Result<Started>;
}

/// A source just started, and how its pipeline's stream treats it.
pub(crate) struct Started {
    pub stream: Box<dyn Running>,
    /// Operators that run on the consumer before the pipeline's own (a two-phase aggregation's
    /// final projection).
    pub head_ops: Vec<Operator>,
    /// Whether the batches it hands out are its output, to count as such (a scan whose workers
    /// run other operators' work, or a join that runs work from above, count their own).
    pub count_out: bool,
    /// Whether the stream keeps headroom for its batches (a join and a union keep their own).
    pub headroom: bool,
}

impl Started {
    /// A started operator whose batches are its output, with headroom kept for them.
    pub fn new(stream: impl Running + 'static) -> Started {
        Started { stream: Box::new(stream), head_ops: Vec::new(), count_out: true, headroom: true }
    }
}

/// A source operator at work: the consumer takes its batches one at a time.
pub(crate) trait Running: Send {
    /// The next batch and the reservation that pays for it; `None` at the end.
    fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>>;

    /// Gives back the reservation of a batch it handed out.
    fn release(&self, reservation: MemoryReservation) {
        drop(reservation);
    }

    /// Stops early (a limit above is satisfied, or the query failed): frees what it holds.
    fn stop(&mut self);

    /// What it learnt of its input once started (a scan's pruning).
    fn stats(&self) -> Option<PipelineStats> {
        None
    }

    /// Whether a repeat above copies its batches whole: a scan counts the batches it handed out
    /// by their reservations, so they may not be cut into chunks.
    fn whole_batches(&self) -> bool {
        false
    }
}
