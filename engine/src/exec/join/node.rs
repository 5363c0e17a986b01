//! The join in the physical plan: what it needs, how it shows, how it starts.

use super::*;
use crate::exec::node::{Node, Started};
use crate::exec::{map_key_columns, null_with, ExplainLine};

/// A hash join: the build side (chosen by the physical planner) in a table, the probe side
/// streamed through it.
pub(crate) struct JoinNode {
    pub build: Box<Pipeline>,
    pub probe: Box<Pipeline>,
    pub spec: JoinSpec,
    /// Work pushed down from above (see [`Pipeline::push_down`]), run on the join's output.
    pub above: Vec<Stage>,
}

impl JoinNode {
    fn side(&self) -> &'static str {
        if self.spec.build_is_left {
            "left"
        } else {
            "right"
        }
    }
}

impl Node for JoinNode {
    fn name(&self) -> &'static str {
        "HashJoin"
    }

    fn detail(&self) -> String {
        let spec = &self.spec;
        format!(
            "{}, build side {}, keys [{}]{}",
            spec.join_type.name(),
            self.side(),
            crate::exec::exprs_text(&spec.build_keys),
            spec.filter.as_ref().map(|f| format!(", condition {f}")).unwrap_or_default()
        )
    }

    fn inputs(&self) -> Vec<&Pipeline> {
        vec![&self.build, &self.probe]
    }

    fn explain(&self, ctx: &ExecContext, id: u64, depth: usize, role: &str, out: &mut Vec<ExplainLine>) {
        let spec = &self.spec;
        let keys: Vec<String> =
            spec.probe_keys.iter().zip(&spec.build_keys).map(|(p, b)| format!("{p} = {b}")).collect();
        let text = format!(
            "{role}HashJoin {} on [{}]{}, build side {}",
            spec.join_type.name(),
            keys.join(", "),
            spec.filter.as_ref().map(|f| format!(" and {f}")).unwrap_or_default(),
            self.side(),
        );
        out.push(ExplainLine { depth, id: Some(id), text });
        self.build.describe(ctx, depth + 1, "build: ", out);
        self.probe.describe(ctx, depth + 1, "probe: ", out);
    }

    fn min_memory(&self, ctx: &ExecContext) -> u64 {
        self.build.min_memory(ctx).max(self.probe.min_memory(ctx)) + min_memory(ctx) + kept_batches(ctx)
    }

    fn stream_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        self.probe.stream_memory(ctx, queue_limit)
    }

    /// The build table stays while the probe side runs: it takes the share a join would take if
    /// it started now.
    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        let children = self.build.max_memory(ctx, queue_limit).max(self.probe.max_memory(ctx, queue_limit));
        children + table_limit(ctx.available_for_sizing().saturating_sub(children), ctx)
    }

    fn runs_pushed_work_on(&self) -> Option<&'static str> {
        Some("probe side's workers")
    }

    /// Work from above runs on the probe side's workers once the table is built, or on the
    /// consumer when it cannot.
    fn push_down(&mut self, stages: Vec<Stage>) -> std::result::Result<(), Vec<Stage>> {
        self.above.extend(stages);
        Ok(())
    }

    /// Into the probe side of a join whose output is its inputs' columns side by side, when the
    /// keys are made of probe columns (TPC-H Q2's correlated minimum over partsupp joined to
    /// supplier, filtered to the 7854 parts that matter before the join rather than after
    /// aggregating all 1.2M). A probe row filtered out could only have made rows whose key the
    /// table above lacks, or left a build row without a partner, with null probe columns: a null
    /// key, which matches nothing either, as long as the key is null when its probe columns are.
    /// `coalesce(x, 106)` is not: below a full join, the rows the filter took from the probe side
    /// came back as build rows without a partner, keyed 106, and matched (found by the
    /// differential fuzzer).
    fn push_key_filter(&mut self, keys: &[Expr], make: &dyn Fn(Vec<Expr>) -> Stage) {
        let spec = &self.spec;
        if !self.above.is_empty() || spec.join_type.is_existence() {
            return;
        }
        let (build, probe) = (&self.build, &mut self.probe);
        let left_len = if spec.build_is_left { build.schema.fields().len() } else { probe.schema.fields().len() };
        let probe_at = if spec.build_is_left { left_len } else { 0 };
        let probe_columns = probe_at..probe_at + probe.schema.fields().len();
        let build_kept = match spec.join_type {
            JoinType::Full => true,
            JoinType::Left => spec.build_is_left,
            JoinType::Right => !spec.build_is_left,
            _ => false,
        };
        if build_kept && !keys.iter().all(|k| null_with(k, &probe_columns)) {
            return;
        }
        let below = map_key_columns(keys, |index, name| {
            probe_columns.contains(&index).then(|| Expr::column(index - probe_at, name))
        });
        if let Some(below) = below {
            probe.push_key_filter_here(below, make);
        }
    }

    fn start(
        self: Box<Self>,
        ctx: &ExecContext,
        schema: &SchemaRef,
        metrics: &Arc<OperatorMetrics>,
        _queue_limit: Option<u64>,
    ) -> Result<Started> {
        let JoinNode { build, probe, spec, above } = *self;
        let small = 2 * ctx.batch_bytes_target();
        let children = build.max_memory(ctx, small).max(probe.max_memory(ctx, small));
        let stream =
            JoinStream::new(spec, *build, *probe, above, schema.clone(), children, small, ctx, metrics.clone())?;
        // The join counts its own output (work from above may run on it before it leaves), and
        // keeps its own headroom, for the batches it reads back too.
        Ok(Started { count_out: false, headroom: false, ..Started::new(stream) })
    }
}
