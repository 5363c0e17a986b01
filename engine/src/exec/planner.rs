//! The physical planner: a logical plan becomes pipelines, each a source operator (a [`Node`])
//! and the streaming operators above it, with the choices made here that execution follows:
//! - a join builds its table from the side expected to be smaller ([`crate::plan::estimate_rows`]);
//! - an aggregation whose aggregates merge runs its partial step on the workers of its input
//!   when that input has workers to run it (a scan, or a join's probe side; see
//!   [`AggregateNode::new`]);
//! - streaming operators below the first limit run on the scan's workers, the rest on the
//!   consumer, which keeps their order.
//!
//! `EXPLAIN` shows each choice. A new source operator is a [`Node`] and an arm here.

use super::aggregate::AggregateNode;
use super::join::{JoinNode, JoinSpec};
use super::node::Node;
use super::operators::Operator;
use super::scan::ScanPipeline;
use super::shared::SharedNode;
use super::sort::SortNode;
use super::union::UnionNode;
use super::window::WindowNode;
use super::Pipeline;
use crate::error::Result;
use crate::plan::LogicalPlan;

/// The pipelines of `plan`: the streaming operators from its root down to its first blocking
/// node run above that node, whose inputs are planned the same way.
pub(crate) fn plan(logical: &LogicalPlan) -> Result<Pipeline> {
    let schema = logical.schema();
    // The streaming operators met on the way down, top first.
    let mut ops = Vec::new();
    let mut node = logical;
    let source: Box<dyn Node> = loop {
        match node {
            LogicalPlan::Filter { predicate, .. } => ops.push(Operator::filter(predicate.clone())),
            LogicalPlan::Projection { exprs, schema, .. } => {
                ops.push(Operator::Project { exprs: exprs.clone(), schema: schema.clone() })
            }
            LogicalPlan::Limit { skip, fetch, .. } => ops.push(Operator::Limit { skip: *skip, fetch: *fetch }),
            LogicalPlan::Repeat { .. } => ops.push(Operator::Repeat { schema: node.schema() }),
            LogicalPlan::Scan { table, projection, pruning, .. } => {
                ops.reverse();
                // Operators up to the first limit run on the workers; the rest need one ordered
                // stream and run on the consumer.
                let split = ops.iter().position(|o| matches!(o, Operator::Limit { .. })).unwrap_or(ops.len());
                let tail_ops = ops.split_off(split);
                let scan = ScanPipeline::new(table, projection, pruning, ops)?;
                return Ok(Pipeline::of(Box::new(scan), tail_ops, schema));
            }
            LogicalPlan::Aggregate { input, group_exprs, aggregates, schema } => {
                let input = plan(input)?;
                break Box::new(AggregateNode::new(input, group_exprs.clone(), aggregates.clone(), schema.clone()));
            }
            LogicalPlan::Sort { input, keys, fetch } => {
                break Box::new(SortNode { input: Box::new(plan(input)?), keys: keys.clone(), fetch: *fetch });
            }
            LogicalPlan::Join { left, right, join_type, on, filter, schema } => {
                // The side expected to be smaller builds.
                let build_is_left = crate::plan::estimate_rows(left) < crate::plan::estimate_rows(right);
                let (build, probe) = if build_is_left { (left, right) } else { (right, left) };
                let (left_keys, right_keys): (Vec<_>, Vec<_>) = on.iter().cloned().unzip();
                let (build_keys, probe_keys) =
                    if build_is_left { (left_keys, right_keys) } else { (right_keys, left_keys) };
                let spec = JoinSpec {
                    join_type: *join_type,
                    build_is_left,
                    build_keys,
                    probe_keys,
                    filter: filter.clone(),
                    schema: schema.clone(),
                    pair_schema: crate::plan::join_schema(&left.schema(), &right.schema()),
                };
                let (build, probe) = (Box::new(plan(build)?), Box::new(plan(probe)?));
                break Box::new(JoinNode { build, probe, spec, above: Vec::new() });
            }
            LogicalPlan::Union { inputs, .. } => {
                break Box::new(UnionNode { inputs: inputs.iter().map(plan).collect::<Result<Vec<_>>>()? });
            }
            LogicalPlan::Window { input, partition_by, order_by, functions, schema } => {
                break Box::new(WindowNode {
                    input: Box::new(plan(input)?),
                    partition_by: partition_by.clone(),
                    order_by: order_by.clone(),
                    functions: functions.clone(),
                    schema: schema.clone(),
                });
            }
            LogicalPlan::Shared { id, name, input } => {
                break Box::new(SharedNode { id: *id, name: name.clone(), input: Box::new(plan(input)?) });
            }
        }
        node = match node {
            LogicalPlan::Filter { input, .. }
            | LogicalPlan::Projection { input, .. }
            | LogicalPlan::Limit { input, .. }
            | LogicalPlan::Repeat { input } => input,
            _ => unreachable!("blocking nodes end the loop"),
        };
    };
    ops.reverse();
    Ok(Pipeline::of(source, ops, schema))
}
