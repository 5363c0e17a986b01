//! Optimizer passes for joins: ordering inner joins, and pushing filters down through them.
//!
//! [`reorder`] flattens each tree of inner joins (`FROM a, b, c WHERE ...` or `a JOIN b ON ..
//! JOIN c ON ..`) into its inputs and conditions, then rebuilds it left-deep: it starts from the
//! input with the most rows and adds, at each step, the smallest input that an equality condition
//! connects to what is joined so far (a cross product only when nothing connects). The largest
//! input thus streams through every join, and each join builds on a small side.
//!
//! [`push_filters`] then moves every condition as deep as SQL allows: a condition on one side of an
//! inner join filters that input; an equality between an expression of each side becomes a join
//! key; anything else stays a condition of the join. Outer joins only take conditions that cannot
//! change which rows are null-extended.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};

use super::{JoinType, LogicalPlan};
use crate::expr::{BinaryOp, Expr};

/// Rows a plan is expected to produce, from Parquet row counts and fixed selectivities: a guess
/// good enough to tell a dimension table from a fact table.
pub fn estimate_rows(plan: &LogicalPlan) -> f64 {
    match plan {
        LogicalPlan::Scan { table, .. } => table.row_count().map_or(1e6, |n| n as f64),
        LogicalPlan::Filter { input, predicate } => {
            estimate_rows(input) * 0.5f64.powi(predicate.conjuncts().len().min(3) as i32)
        }
        LogicalPlan::Projection { input, .. } | LogicalPlan::Sort { input, .. } => estimate_rows(input),
        LogicalPlan::Limit { input, fetch, .. } => {
            let n = estimate_rows(input);
            fetch.map_or(n, |f| n.min(f as f64))
        }
        LogicalPlan::Aggregate { input, group_exprs, .. } => {
            if group_exprs.is_empty() {
                1.0
            } else {
                estimate_rows(input) * 0.5
            }
        }
        LogicalPlan::Union { inputs, .. } => inputs.iter().map(estimate_rows).sum(),
        LogicalPlan::Join { left, right, on, join_type, .. } => {
            let (l, r) = (estimate_rows(left), estimate_rows(right));
            match (on.is_empty(), join_type) {
                (true, _) => l * r,
                (false, JoinType::Inner) => l.max(r),
                (false, _) => l.max(r) + l.min(r) * 0.5,
            }
        }
    }
}

/// Reorders every tree of inner joins in `plan` (see the module docs).
pub fn reorder(plan: LogicalPlan) -> LogicalPlan {
    match plan {
        LogicalPlan::Join { join_type: JoinType::Inner, .. } => reorder_tree(plan),
        LogicalPlan::Filter { input, predicate } if is_inner_join(&input) => {
            reorder_tree(LogicalPlan::Filter { input, predicate })
        }
        other => map_inputs(other, reorder),
    }
}

fn is_inner_join(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join { join_type: JoinType::Inner, .. })
}

/// Applies `f` to each input of `plan`.
fn map_inputs(plan: LogicalPlan, f: fn(LogicalPlan) -> LogicalPlan) -> LogicalPlan {
    match plan {
        scan @ LogicalPlan::Scan { .. } => scan,
        LogicalPlan::Filter { input, predicate } => LogicalPlan::Filter { input: Box::new(f(*input)), predicate },
        LogicalPlan::Projection { input, exprs, schema } => {
            LogicalPlan::Projection { input: Box::new(f(*input)), exprs, schema }
        }
        LogicalPlan::Aggregate { input, group_exprs, aggregates, schema } => {
            LogicalPlan::Aggregate { input: Box::new(f(*input)), group_exprs, aggregates, schema }
        }
        LogicalPlan::Sort { input, keys, fetch } => LogicalPlan::Sort { input: Box::new(f(*input)), keys, fetch },
        LogicalPlan::Limit { input, skip, fetch } => LogicalPlan::Limit { input: Box::new(f(*input)), skip, fetch },
        LogicalPlan::Join { left, right, join_type, on, filter, schema } => {
            LogicalPlan::Join { left: Box::new(f(*left)), right: Box::new(f(*right)), join_type, on, filter, schema }
        }
        LogicalPlan::Union { inputs, schema } => {
            LogicalPlan::Union { inputs: inputs.into_iter().map(f).collect(), schema }
        }
    }
}

fn equality(l: Expr, r: Expr) -> Expr {
    Expr::Binary { op: BinaryOp::Eq, left: Box::new(l), right: Box::new(r), data_type: DataType::Boolean }
}

/// Collects the inputs of a tree of inner joins (with filters between them) and its conditions,
/// over the tree's output columns; `offset` is where the subtree's columns start.
fn flatten(plan: LogicalPlan, offset: usize, inputs: &mut Vec<LogicalPlan>, conditions: &mut Vec<Expr>) {
    let shift = |e: &Expr, by: usize| e.remap_columns(&|c| c + by);
    match plan {
        LogicalPlan::Join { left, right, join_type: JoinType::Inner, on, filter, .. } => {
            let nl = left.schema().fields().len();
            for (l, r) in &on {
                conditions.push(equality(shift(l, offset), shift(r, offset + nl)));
            }
            if let Some(f) = &filter {
                conditions.extend(f.conjuncts().into_iter().map(|c| shift(c, offset)));
            }
            flatten(*left, offset, inputs, conditions);
            flatten(*right, offset + nl, inputs, conditions);
        }
        LogicalPlan::Filter { input, predicate } if is_inner_join(&input) => {
            conditions.extend(predicate.conjuncts().into_iter().map(|c| shift(c, offset)));
            flatten(*input, offset, inputs, conditions);
        }
        other => inputs.push(reorder(other)),
    }
}

fn reorder_tree(plan: LogicalPlan) -> LogicalPlan {
    let schema = plan.schema();
    let mut inputs = Vec::new();
    let mut conditions = Vec::new();
    flatten(plan, 0, &mut inputs, &mut conditions);
    let widths: Vec<usize> = inputs.iter().map(|p| p.schema().fields().len()).collect();
    let starts: Vec<usize> = widths.iter().scan(0, |acc, w| Some(std::mem::replace(acc, *acc + w))).collect();
    let owner = |column: usize| starts.iter().rposition(|&s| s <= column).expect("column in some input");
    // Which inputs each condition reads, and whether it is an equality that can become a key.
    let touched: Vec<(Vec<usize>, bool)> = conditions
        .iter()
        .map(|c| {
            let mut v = Vec::new();
            c.visit_columns(&mut |col| v.push(owner(col)));
            v.sort_unstable();
            v.dedup();
            (v, matches!(c, Expr::Binary { op: BinaryOp::Eq, .. }))
        })
        .collect();
    let rows: Vec<f64> = inputs.iter().map(estimate_rows).collect();
    let n = inputs.len();
    let mut order = vec![(0..n).max_by(|&a, &b| rows[a].total_cmp(&rows[b])).expect("a join has inputs")];
    while order.len() < n {
        let joined = |i: &usize| order.contains(i);
        let connected = |j: usize| {
            touched
                .iter()
                .any(|(t, eq)| *eq && t.contains(&j) && t.iter().any(joined) && t.iter().all(|i| *i == j || joined(i)))
        };
        let candidates: Vec<usize> = (0..n).filter(|i| !joined(i)).collect();
        let pick = |from: &mut dyn Iterator<Item = usize>| from.min_by(|&a, &b| rows[a].total_cmp(&rows[b]));
        let next = pick(&mut candidates.iter().copied().filter(|&j| connected(j)))
            .or_else(|| pick(&mut candidates.iter().copied()))
            .expect("an input is left");
        order.push(next);
    }
    // New position of every column of the flattened tree.
    let mut position = vec![0; widths.iter().sum()];
    let mut at = 0;
    for &i in &order {
        for c in 0..widths[i] {
            position[starts[i] + c] = at + c;
        }
        at += widths[i];
    }
    let mut slots: Vec<Option<LogicalPlan>> = inputs.into_iter().map(Some).collect();
    let mut tree = slots[order[0]].take().expect("input");
    for &i in &order[1..] {
        tree = LogicalPlan::join(tree, slots[i].take().expect("input"), JoinType::Inner, Vec::new(), None);
    }
    if let Some(predicate) = conjunction(conditions.iter().map(|c| c.remap_columns(&|col| position[col])).collect()) {
        tree = LogicalPlan::Filter { input: Box::new(tree), predicate };
    }
    let identity = order.iter().zip(order.iter().skip(1)).all(|(a, b)| a < b);
    if identity {
        return tree;
    }
    // Restore the column order the query was planned against.
    let exprs = (0..position.len()).map(|c| Expr::column(position[c], schema.field(c).name())).collect();
    LogicalPlan::Projection { input: Box::new(tree), exprs, schema: Arc::new(Schema::new(schema.fields().clone())) }
}

/// `a AND b AND ...`, or `None` for no conditions.
pub fn conjunction(conditions: Vec<Expr>) -> Option<Expr> {
    conditions.into_iter().reduce(|a, b| Expr::Binary {
        op: BinaryOp::And,
        left: Box::new(a),
        right: Box::new(b),
        data_type: DataType::Boolean,
    })
}

/// Which inputs of a join an expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sides {
    Neither,
    Left,
    Right,
    Both,
}

fn sides(e: &Expr, left_width: usize) -> Sides {
    let (mut l, mut r) = (false, false);
    e.visit_columns(&mut |c| {
        if c < left_width {
            l = true;
        } else {
            r = true;
        }
    });
    match (l, r) {
        (false, false) => Sides::Neither,
        (true, false) => Sides::Left,
        (false, true) => Sides::Right,
        (true, true) => Sides::Both,
    }
}

/// Moves filters down through joins (see the module docs).
pub fn push_filters(plan: LogicalPlan) -> LogicalPlan {
    match plan {
        LogicalPlan::Filter { input, predicate } => {
            push_into(*input, predicate.conjuncts().into_iter().cloned().collect())
        }
        LogicalPlan::Join { .. } => push_into(plan, Vec::new()),
        other => map_inputs(other, push_filters),
    }
}

/// Places `conditions`, which hold over the output of `plan`, as deep into it as they can go.
fn push_into(plan: LogicalPlan, mut conditions: Vec<Expr>) -> LogicalPlan {
    match plan {
        LogicalPlan::Filter { input, predicate } => {
            conditions.extend(predicate.conjuncts().into_iter().cloned());
            push_into(*input, conditions)
        }
        LogicalPlan::Join { left, right, join_type, on, filter, .. } => {
            let nl = left.schema().fields().len();
            let (mut to_left, mut to_right, mut above, mut join_conditions) = (vec![], vec![], vec![], vec![]);
            // Conditions from above the join (WHERE): they filter its output.
            for c in conditions {
                match sides(&c, nl) {
                    Sides::Left if !join_type.keeps_right() => to_left.push(c),
                    Sides::Right if !join_type.keeps_left() => to_right.push(c),
                    Sides::Both if join_type == JoinType::Inner => join_conditions.push(c),
                    _ => above.push(c),
                }
            }
            // The join's own conditions (ON): they decide which pairs match.
            let mut keys = on;
            let mut residual = Vec::new();
            for c in filter.iter().flat_map(|f| f.conjuncts()).cloned().chain(join_conditions) {
                match sides(&c, nl) {
                    Sides::Left if !join_type.keeps_left() => to_left.push(c),
                    Sides::Right if !join_type.keeps_right() => to_right.push(c),
                    Sides::Both => match as_key(&c, nl, &left.schema(), &right.schema()) {
                        Some(key) => keys.push(key),
                        None => residual.push(c),
                    },
                    _ => residual.push(c),
                }
            }
            let left = push_into(*left, to_left);
            let right = push_into(*right, to_right.iter().map(|c| c.remap_columns(&|col| col - nl)).collect());
            let join = LogicalPlan::join(left, right, join_type, keys, conjunction(residual));
            with_filter(join, above)
        }
        other => with_filter(map_inputs(other, push_filters), conditions),
    }
}

fn with_filter(plan: LogicalPlan, conditions: Vec<Expr>) -> LogicalPlan {
    match conjunction(conditions) {
        Some(predicate) => LogicalPlan::Filter { input: Box::new(plan), predicate },
        None => plan,
    }
}

/// `l = r` with `l` over the left input and `r` over the right (either way round), as a key pair.
fn as_key(c: &Expr, nl: usize, left: &Schema, right: &Schema) -> Option<(Expr, Expr)> {
    let Expr::Binary { op: BinaryOp::Eq, left: a, right: b, .. } = c else { return None };
    let (l, r) = match (sides(a, nl), sides(b, nl)) {
        (Sides::Left, Sides::Right) => (a, b),
        (Sides::Right, Sides::Left) => (b, a),
        _ => return None,
    };
    let r = r.remap_columns(&|col| col - nl);
    (l.data_type(left) == r.data_type(right)).then(|| (l.as_ref().clone(), r))
}
