//! Subqueries in expressions (`EXISTS`, `IN`, scalar), planned as joins: never run once per row.
//!
//! A subquery is planned like any query, except that names it cannot resolve are looked up in
//! the enclosing query and become [`Expr::OuterColumn`]s. Decorrelation then pulls every
//! condition that reads an outer column up out of the subquery's plan (through filters,
//! projections, inner joins, and aggregations, which group by the inner side of each correlated
//! equality instead), until the subquery is an ordinary plan and the pulled conditions are a join
//! condition between it and the enclosing query:
//!
//! ```text
//! WHERE EXISTS (SELECT * FROM l WHERE l.k = o.k AND l.x > 5)   ──>   o SEMI JOIN (l WHERE x > 5) ON l.k = o.k
//! WHERE o.v > (SELECT avg(x) FROM l WHERE l.k = o.k)           ──>   o JOIN (SELECT k, avg(x) FROM l GROUP BY k) ON k = o.k
//! ```
//!
//! * `EXISTS` / `NOT EXISTS` as a condition of `WHERE` is a semi / anti join; `IN` a semi join
//!   with the equality added; `NOT IN` an anti join that honours SQL's nulls (a null on either
//!   side makes the comparison unknown, so the row is not kept).
//! * Anywhere else (`SELECT`, under `OR`), `EXISTS` and `IN` are a mark join: every row, with a
//!   boolean column that the expression reads.
//! * A scalar subquery is a left join with its one row (per correlation key). An aggregate over
//!   no rows still has a value (`count` is 0), so a row that finds no group gets the value the
//!   expression has over an empty group. A subquery that is not an aggregate is checked to
//!   return at most one row (per key): more is an error, as in every SQL engine.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, BooleanArray, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};

use crate::error::{Error, Result};
use crate::expr::types::common_type;
use crate::expr::{AggregateExpr, AggregateFunction, BinaryOp, Expr};
use crate::plan::{conjunction, JoinType, LogicalPlan};

/// What kind of subquery an expression holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubqueryKind {
    /// `(SELECT x ...)`: one value.
    Scalar,
    /// `EXISTS (SELECT ...)`.
    Exists,
    /// `operand IN (SELECT x ...)`.
    In,
}

/// A subquery found while planning an expression.
#[derive(Debug, Clone)]
pub(crate) struct SubqueryItem {
    pub kind: SubqueryKind,
    /// Its plan, reading the enclosing query's columns as [`Expr::OuterColumn`]s of depth 1.
    pub plan: LogicalPlan,
    /// For `IN`: the value looked for, over the enclosing query's input.
    pub operand: Option<Expr>,
}

/// How the enclosing query's columns, as the subquery read them, are reached from the plan the
/// subquery is joined to (a grouped query joins after its aggregation, whose output differs).
pub(crate) type OuterMap<'a> = &'a dyn Fn(usize) -> Result<Expr>;

/// Applies a `WHERE` predicate that may hold subqueries: conditions that are an `EXISTS` or
/// `IN` (or their negations) become semi or anti joins; other subqueries are joined for their
/// values, which the remaining conditions then read. The result has `plan`'s columns.
pub(crate) fn apply_where(
    plan: LogicalPlan,
    predicate: Expr,
    subqueries: &mut [Option<SubqueryItem>],
    outer: OuterMap<'_>,
) -> Result<LogicalPlan> {
    let width = plan.schema().fields().len();
    let mut plan = plan;
    let mut rest = Vec::new();
    for c in predicate.conjuncts() {
        let (id, negated) = match c {
            Expr::Subquery { id, .. } => (*id, false),
            Expr::Not(inner) => match inner.as_ref() {
                Expr::Subquery { id, .. } => (*id, true),
                _ => {
                    rest.push(c.clone());
                    continue;
                }
            },
            _ => {
                rest.push(c.clone());
                continue;
            }
        };
        let item = subqueries[id].take().expect("each subquery once");
        if item.kind == SubqueryKind::Scalar {
            // A boolean scalar subquery used as a condition: join it for its value.
            subqueries[id] = Some(item);
            rest.push(c.clone());
            continue;
        }
        plan = filter_join(plan, item, negated, outer)?;
    }
    let rest = conjunction(rest);
    let Some(predicate) = rest else { return Ok(plan) };
    let (joined, predicate) = join_values(plan, predicate, subqueries, outer)?;
    let filtered = LogicalPlan::Filter { input: Box::new(joined), predicate };
    Ok(keep_columns(filtered, width))
}

/// Joins every subquery `exprs` read for its value, and rewrites the placeholders in `exprs` to
/// the joined columns. Returns the new input and the rewritten expression.
pub(crate) fn join_values(
    mut plan: LogicalPlan,
    expr: Expr,
    subqueries: &mut [Option<SubqueryItem>],
    outer: OuterMap<'_>,
) -> Result<(LogicalPlan, Expr)> {
    let mut ids = Vec::new();
    collect_ids(&expr, &mut ids);
    let mut values: Vec<(usize, Expr)> = Vec::new();
    for id in ids {
        if values.iter().any(|(i, _)| *i == id) {
            continue;
        }
        let item = subqueries
            .get_mut(id)
            .and_then(Option::take)
            .ok_or_else(|| Error::Execution("internal error: a subquery was planned twice".into()))?;
        let (joined, value) = value_join(plan, item, outer)?;
        plan = joined;
        values.push((id, value));
    }
    let expr = expr.transform(&mut |e| match e {
        Expr::Subquery { id, .. } => Ok(values.iter().find(|(i, _)| *i == id).expect("joined above").1.clone()),
        other => Ok(other),
    })?;
    Ok((plan, expr))
}

/// The subquery ids an expression reads.
pub(crate) fn collect_ids(e: &Expr, out: &mut Vec<usize>) {
    if let Expr::Subquery { id, .. } = e {
        out.push(*id);
    }
    e.for_each_child(&mut |c| collect_ids(c, out));
}

/// The first `width` columns of `plan`.
fn keep_columns(plan: LogicalPlan, width: usize) -> LogicalPlan {
    let schema = plan.schema();
    if schema.fields().len() == width {
        return plan;
    }
    let exprs = (0..width).map(|i| Expr::column(i, schema.field(i).name())).collect();
    let fields: Vec<Field> = (0..width).map(|i| schema.field(i).clone()).collect();
    LogicalPlan::Projection { input: Box::new(plan), exprs, schema: Arc::new(Schema::new(fields)) }
}

/// A subquery's plan with its correlated conditions pulled out.
struct Pulled {
    plan: LogicalPlan,
    /// Conditions over the plan's columns and the enclosing query's (outer) columns.
    preds: Vec<Expr>,
    /// Where each output column of the original plan is now.
    map: Vec<usize>,
}

fn width(plan: &LogicalPlan) -> usize {
    plan.schema().fields().len()
}

/// Whether any expression of the plan reads an outer column.
fn correlated(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.clone().transform_up(&mut |node| {
        node.map_exprs(&mut |e| {
            found |= e.has_outer_refs();
            e
        })
    });
    found
}

fn remap(e: &Expr, map: &[usize]) -> Expr {
    e.remap_columns(&|c| map[c])
}

fn not_supported(what: &str) -> Error {
    Error::NotSupported(format!("a correlated subquery with {what}"))
}

/// Pulls the conditions that read outer columns up to the top of `plan` (see the module docs).
fn pull_up(plan: LogicalPlan) -> Result<Pulled> {
    if !correlated(&plan) {
        let map = (0..width(&plan)).collect();
        return Ok(Pulled { plan, preds: Vec::new(), map });
    }
    match plan {
        LogicalPlan::Filter { input, predicate } => {
            let p = pull_up(*input)?;
            let predicate = remap(&predicate, &p.map);
            let mut preds = p.preds;
            let mut local = Vec::new();
            for c in predicate.conjuncts() {
                if c.has_outer_refs() {
                    preds.push(c.clone());
                } else {
                    local.push(c.clone());
                }
            }
            let plan = match conjunction(local) {
                Some(predicate) => LogicalPlan::Filter { input: Box::new(p.plan), predicate },
                None => p.plan,
            };
            Ok(Pulled { plan, preds, map: p.map })
        }
        LogicalPlan::Projection { input, exprs, schema } => {
            let p = pull_up(*input)?;
            let mut exprs: Vec<Expr> = exprs.iter().map(|e| remap(e, &p.map)).collect();
            if exprs.iter().any(|e| e.has_outer_refs()) {
                return Err(not_supported("an outer column in a select list below its top"));
            }
            let in_schema = p.plan.schema();
            let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            let original = exprs.len();
            // Every input column a condition reads becomes an output column.
            let mut position = std::collections::HashMap::new();
            for pred in &p.preds {
                pred.visit_columns(&mut |c| {
                    if position.contains_key(&c) {
                        return;
                    }
                    let at = exprs.iter().position(|e| matches!(e, Expr::Column { index, .. } if *index == c));
                    let at = at.unwrap_or_else(|| {
                        exprs.push(Expr::column(c, in_schema.field(c).name()));
                        fields.push(in_schema.field(c).clone().with_name(format!("__corr_{c}")));
                        exprs.len() - 1
                    });
                    position.insert(c, at);
                });
            }
            let preds = p.preds.iter().map(|e| e.remap_columns(&|c| position[&c])).collect();
            let plan =
                LogicalPlan::Projection { input: Box::new(p.plan), exprs, schema: Arc::new(Schema::new(fields)) };
            Ok(Pulled { plan, preds, map: (0..original).collect() })
        }
        LogicalPlan::Aggregate { input, group_exprs, aggregates, schema } => {
            let p = pull_up(*input)?;
            let mut groups: Vec<Expr> = group_exprs.iter().map(|e| remap(e, &p.map)).collect();
            let aggregates: Vec<AggregateExpr> =
                aggregates.into_iter().map(|a| AggregateExpr { arg: a.arg.map(|e| remap(&e, &p.map)), ..a }).collect();
            if aggregates.iter().any(|a| a.arg.as_ref().is_some_and(|e| e.has_outer_refs())) {
                return Err(not_supported("an outer column inside an aggregate"));
            }
            let old_groups = groups.len();
            let in_schema = p.plan.schema();
            let mut preds = Vec::new();
            let mut new_fields = Vec::new();
            for pred in p.preds {
                // Only `inner = outer` passes an aggregation: the inner side becomes a group key.
                let Some((inner, outer)) = split_equality(&pred) else {
                    return Err(not_supported(&format!(
                        "a condition other than an equality under an aggregate ({pred})"
                    )));
                };
                let g = match groups.iter().position(|g| *g == inner) {
                    Some(g) => g,
                    None => {
                        new_fields.push(Field::new(
                            format!("__corr_g{}", groups.len()),
                            inner.data_type(&in_schema),
                            true,
                        ));
                        groups.push(inner.clone());
                        groups.len() - 1
                    }
                };
                preds.push(Expr::Binary {
                    op: BinaryOp::Eq,
                    left: Box::new(Expr::column(g, format!("__corr_g{g}"))),
                    right: Box::new(outer),
                    data_type: DataType::Boolean,
                });
            }
            let added = groups.len() - old_groups;
            // Group columns first: the new keys go after the old ones, the aggregates move on.
            let mut fields: Vec<Field> = schema.fields()[..old_groups].iter().map(|f| f.as_ref().clone()).collect();
            fields.extend(new_fields);
            fields.extend(schema.fields()[old_groups..].iter().map(|f| f.as_ref().clone()));
            let map = (0..schema.fields().len()).map(|i| if i < old_groups { i } else { i + added }).collect();
            let plan = LogicalPlan::Aggregate {
                input: Box::new(p.plan),
                group_exprs: groups,
                aggregates,
                schema: Arc::new(Schema::new(fields)),
            };
            Ok(Pulled { plan, preds, map })
        }
        LogicalPlan::Join { left, right, join_type, on, filter, .. } => {
            let l = pull_up(*left)?;
            let r = pull_up(*right)?;
            if !r.preds.is_empty() && join_type != JoinType::Inner {
                return Err(not_supported("an outer column on the inner side of an outer, semi or anti join"));
            }
            if !l.preds.is_empty() && matches!(join_type, JoinType::Right | JoinType::Full) {
                return Err(not_supported("an outer column on the inner side of an outer join"));
            }
            let nl = width(&l.plan);
            let pair_map: Vec<usize> = l.map.iter().copied().chain(r.map.iter().map(|c| c + nl)).collect();
            let on: Vec<(Expr, Expr)> = on.iter().map(|(a, b)| (remap(a, &l.map), remap(b, &r.map))).collect();
            if on.iter().any(|(a, b)| a.has_outer_refs() || b.has_outer_refs()) {
                return Err(not_supported("an outer column in a join key"));
            }
            let mut preds: Vec<Expr> = l.preds;
            preds.extend(r.preds.iter().map(|e| e.remap_columns(&|c| c + nl)));
            let mut local = Vec::new();
            if let Some(f) = filter {
                for c in remap(&f, &pair_map).conjuncts() {
                    match (c.has_outer_refs(), join_type) {
                        (false, _) => local.push(c.clone()),
                        (true, JoinType::Inner) => preds.push(c.clone()),
                        (true, _) => return Err(not_supported("an outer column in an outer join's ON")),
                    }
                }
            }
            let out_map = match join_type {
                JoinType::Semi | JoinType::Anti { .. } => l.map.clone(),
                JoinType::Mark { .. } => l.map.iter().copied().chain(std::iter::once(nl)).collect(),
                _ => pair_map,
            };
            let plan = LogicalPlan::join(l.plan, r.plan, join_type, on, conjunction(local));
            Ok(Pulled { plan, preds, map: out_map })
        }
        LogicalPlan::Sort { input, fetch: None, .. } => pull_up(*input),
        LogicalPlan::Sort { .. } | LogicalPlan::Limit { .. } => Err(not_supported("LIMIT")),
        LogicalPlan::Union { .. } => Err(not_supported("UNION")),
        LogicalPlan::Shared { .. } => Err(not_supported("an outer column inside a WITH")),
        LogicalPlan::Repeat { .. } => Err(not_supported("INTERSECT ALL / EXCEPT ALL")),
        LogicalPlan::Window { .. } => Err(not_supported("window functions")),
        LogicalPlan::Scan { .. } => unreachable!("a scan reads no outer column"),
    }
}

/// `inner = outer` (either way round), where `inner` reads only the subquery's columns and
/// `outer` only the enclosing query's.
fn split_equality(pred: &Expr) -> Option<(Expr, Expr)> {
    let Expr::Binary { op: BinaryOp::Eq, left, right, .. } = pred else { return None };
    let reads_inner = |e: &Expr| {
        let mut any = false;
        e.visit_columns(&mut |_| any = true);
        any
    };
    let inner_only = |e: &Expr| reads_inner(e) && !e.has_outer_refs();
    let outer_only = |e: &Expr| !reads_inner(e) && e.has_outer_refs();
    if inner_only(left) && outer_only(right) {
        Some((left.as_ref().clone(), right.as_ref().clone()))
    } else if inner_only(right) && outer_only(left) {
        Some((right.as_ref().clone(), left.as_ref().clone()))
    } else {
        None
    }
}

/// A pulled condition over the candidate pairs of a join of the enclosing plan (its columns
/// first, reached through `outer`) and the subquery (its columns after `width`).
fn to_pair(e: &Expr, width: usize, outer: OuterMap<'_>) -> Result<Expr> {
    let shifted = e.remap_columns(&|c| c + width);
    shifted.transform(&mut |node| match node {
        Expr::OuterColumn { depth: 1, index, .. } => outer(index),
        Expr::OuterColumn { name, .. } => Err(Error::NotSupported(format!(
            "a subquery that reads a column of a query two or more levels out ({name})"
        ))),
        other => Ok(other),
    })
}

/// Strips what does not matter to `EXISTS`: the select list, ordering, a positive limit.
/// `None` when the subquery is known to return a row (an aggregate without GROUP BY), and an
/// error for `LIMIT 0`.
fn exists_body(plan: LogicalPlan) -> Result<Option<LogicalPlan>> {
    match plan {
        LogicalPlan::Projection { input, .. } => exists_body(*input),
        LogicalPlan::Sort { input, .. } => exists_body(*input),
        LogicalPlan::Limit { input, skip: 0, fetch: Some(n) } if n > 0 => exists_body(*input),
        LogicalPlan::Limit { input, skip: 0, fetch: None } => exists_body(*input),
        LogicalPlan::Aggregate { group_exprs, .. } if group_exprs.is_empty() => Ok(None),
        other => Ok(Some(other)),
    }
}

/// The body of an uncorrelated `EXISTS` (`uncorrelated`): only whether it has a row matters, so
/// its first row will do. Without the limit, `NOT EXISTS (SELECT 1 FROM big)` joined every outer
/// row against every row of `big`, spilling both.
fn first_row_if(uncorrelated: bool, body: LogicalPlan) -> LogicalPlan {
    match uncorrelated {
        true => LogicalPlan::Limit { input: Box::new(body), skip: 0, fetch: Some(1) },
        false => body,
    }
}

fn bool_literal(v: bool) -> Expr {
    Expr::Literal(Arc::new(BooleanArray::from(vec![v])))
}

fn equals(a: Expr, b: Expr, schema_a: &Schema, schema_b: &Schema) -> Result<(Expr, Expr)> {
    let (ta, tb) = (a.data_type(schema_a), b.data_type(schema_b));
    let t = common_type(&ta, &tb).ok_or_else(|| {
        Error::Plan(format!(
            "cannot compare {} with {} in IN (subquery)",
            crate::expr::types::sql_type_name(&ta),
            crate::expr::types::sql_type_name(&tb)
        ))
    })?;
    let cast = |e: Expr, from: &DataType| if *from == t { e } else { Expr::Cast { expr: Box::new(e), to: t.clone() } };
    Ok((cast(a, &ta), cast(b, &tb)))
}

fn eq(a: Expr, b: Expr) -> Expr {
    Expr::Binary { op: BinaryOp::Eq, left: Box::new(a), right: Box::new(b), data_type: DataType::Boolean }
}

fn or(a: Expr, b: Expr) -> Expr {
    Expr::Binary { op: BinaryOp::Or, left: Box::new(a), right: Box::new(b), data_type: DataType::Boolean }
}

fn is_null(e: Expr) -> Expr {
    Expr::IsNull { expr: Box::new(e), negated: false }
}

/// An `EXISTS`/`IN` condition of `WHERE` (negated: `NOT EXISTS`/`NOT IN`) as a semi or anti join.
fn filter_join(plan: LogicalPlan, item: SubqueryItem, negated: bool, outer: OuterMap<'_>) -> Result<LogicalPlan> {
    let width = width(&plan);
    let in_schema = plan.schema();
    match item.kind {
        SubqueryKind::Exists => {
            let Some(body) = exists_body(item.plan)? else {
                // An aggregate without GROUP BY always has its one row.
                return Ok(if negated {
                    LogicalPlan::Filter { input: Box::new(plan), predicate: bool_literal(false) }
                } else {
                    plan
                });
            };
            let p = pull_up(body)?;
            let conds = p.preds.iter().map(|e| to_pair(e, width, outer)).collect::<Result<Vec<_>>>()?;
            let join_type = if negated { JoinType::Anti { null_aware: false } } else { JoinType::Semi };
            let sub = first_row_if(conds.is_empty(), p.plan);
            Ok(LogicalPlan::join(plan, sub, join_type, Vec::new(), conjunction(conds)))
        }
        SubqueryKind::In => {
            let p = pull_up(item.plan)?;
            let sub_schema = p.plan.schema();
            let value = Expr::column(p.map[0], sub_schema.field(p.map[0]).name());
            let operand = item.operand.expect("IN has an operand");
            let (operand, value) = equals(operand, value, &in_schema, &sub_schema)?;
            let conds = p.preds.iter().map(|e| to_pair(e, width, outer)).collect::<Result<Vec<_>>>()?;
            let value_in_pair = value.remap_columns(&|c| c + width);
            if !negated {
                let mut all = conds;
                all.push(eq(operand, value_in_pair));
                return Ok(LogicalPlan::join(plan, p.plan, JoinType::Semi, Vec::new(), conjunction(all)));
            }
            if conds.is_empty() {
                // NOT IN (uncorrelated): the null-aware anti join on the one key.
                return Ok(LogicalPlan::join(
                    plan,
                    p.plan,
                    JoinType::Anti { null_aware: true },
                    vec![(operand, value)],
                    None,
                ));
            }
            // Correlated NOT IN: no partner may make the comparison true or unknown.
            let unknown = or(eq(operand.clone(), value_in_pair.clone()), or(is_null(operand), is_null(value_in_pair)));
            let mut all = conds;
            all.push(unknown);
            Ok(LogicalPlan::join(plan, p.plan, JoinType::Anti { null_aware: false }, Vec::new(), conjunction(all)))
        }
        SubqueryKind::Scalar => unreachable!("scalar subqueries are joined for their value"),
    }
}

/// Joins a subquery to `plan` for its value: a mark for `EXISTS`/`IN`, the value for a scalar
/// subquery. Returns the new plan (`plan`'s columns, then the join's) and the value over it.
fn value_join(plan: LogicalPlan, item: SubqueryItem, outer: OuterMap<'_>) -> Result<(LogicalPlan, Expr)> {
    let width = width(&plan);
    let in_schema = plan.schema();
    let mark = |plan: &LogicalPlan| Expr::column(plan.schema().fields().len() - 1, crate::plan::MARK_COLUMN);
    match item.kind {
        SubqueryKind::Exists => {
            let Some(body) = exists_body(item.plan)? else { return Ok((plan, bool_literal(true))) };
            let p = pull_up(body)?;
            let conds = p.preds.iter().map(|e| to_pair(e, width, outer)).collect::<Result<Vec<_>>>()?;
            let sub = first_row_if(conds.is_empty(), p.plan);
            let joined =
                LogicalPlan::join(plan, sub, JoinType::Mark { null_aware: false }, Vec::new(), conjunction(conds));
            let value = mark(&joined);
            Ok((joined, value))
        }
        SubqueryKind::In => {
            let p = pull_up(item.plan)?;
            let sub_schema = p.plan.schema();
            let value = Expr::column(p.map[0], sub_schema.field(p.map[0]).name());
            let operand = item.operand.expect("IN has an operand");
            let (operand, value) = equals(operand, value, &in_schema, &sub_schema)?;
            let conds = p.preds.iter().map(|e| to_pair(e, width, outer)).collect::<Result<Vec<_>>>()?;
            if conds.is_empty() {
                let joined =
                    LogicalPlan::join(plan, p.plan, JoinType::Mark { null_aware: true }, vec![(operand, value)], None);
                let value = mark(&joined);
                return Ok((joined, value));
            }
            // Correlated IN as a value: true if a partner is equal, else unknown if a partner
            // compares as null, else false. Two marks, one for each.
            let value_in_pair = value.remap_columns(&|c| c + width);
            let mut equal = conds.clone();
            equal.push(eq(operand.clone(), value_in_pair.clone()));
            let sub = p.plan;
            let first = LogicalPlan::join(
                plan,
                sub.clone(),
                JoinType::Mark { null_aware: false },
                Vec::new(),
                conjunction(equal),
            );
            let first_mark = mark(&first);
            // The second join's left input is the first's output: one more column.
            let shift = |e: &Expr| e.remap_columns(&|c| if c >= width { c + 1 } else { c });
            let mut unknown: Vec<Expr> = conds.iter().map(shift).collect();
            unknown.push(or(is_null(operand), is_null(shift(&value_in_pair))));
            let second =
                LogicalPlan::join(first, sub, JoinType::Mark { null_aware: false }, Vec::new(), conjunction(unknown));
            let second_mark = mark(&second);
            let null = Expr::Literal(new_null_array(&DataType::Boolean, 1));
            let value = Expr::Case {
                whens: vec![(first_mark, bool_literal(true)), (second_mark, null)],
                otherwise: Some(Box::new(bool_literal(false))),
                data_type: DataType::Boolean,
            };
            Ok((second, value))
        }
        SubqueryKind::Scalar => scalar_join(plan, item.plan, outer),
    }
}

/// Whether the plan returns one row (per correlation key, once decorrelated): an aggregate
/// without GROUP BY, under filters (HAVING) and projections.
fn one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate { group_exprs, .. } => group_exprs.is_empty(),
        LogicalPlan::Filter { input, .. } | LogicalPlan::Projection { input, .. } => one_row(input),
        _ => false,
    }
}

fn scalar_join(plan: LogicalPlan, sub: LogicalPlan, outer: OuterMap<'_>) -> Result<(LogicalPlan, Expr)> {
    let width = width(&plan);
    // The value: the top projection's one expression (which may read outer columns), over the
    // body below it.
    let (body, value) = match sub {
        LogicalPlan::Projection { input, exprs, .. } if exprs.len() == 1 => (*input, exprs.into_iter().next().unwrap()),
        other => {
            let name = other.schema().field(0).name().clone();
            (other, Expr::column(0, name))
        }
    };
    let aggregate_only = matches!(body, LogicalPlan::Aggregate { ref group_exprs, .. } if group_exprs.is_empty());
    let single = one_row(&body);
    let p = pull_up(body)?;
    let mut value = remap(&value, &p.map);
    let mut body = p.plan;
    let mut preds = p.preds;
    if !single {
        // Not one row by construction: check it, per correlation key.
        let body_schema = body.schema();
        if value.has_outer_refs() {
            return Err(not_supported("an outer column in the select list of a subquery that is not an aggregate"));
        }
        let mut keys = Vec::new();
        let mut key_preds = Vec::new();
        for pred in &preds {
            let Some((inner, o)) = split_equality(pred) else {
                return Err(not_supported(&format!(
                    "a condition other than an equality in a subquery that is not an aggregate ({pred})"
                )));
            };
            keys.push(inner);
            key_preds.push(o);
        }
        let value_type = value.data_type(&body_schema);
        let mut fields: Vec<Field> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Field::new(format!("__k{i}"), k.data_type(&body_schema), true))
            .collect();
        fields.push(Field::new("__value", value_type.clone(), true));
        let agg = AggregateExpr {
            func: AggregateFunction::SingleValue,
            arg: Some(value),
            distinct: false,
            data_type: value_type,
        };
        let n = keys.len();
        body = LogicalPlan::Aggregate {
            input: Box::new(body),
            group_exprs: keys,
            aggregates: vec![agg],
            schema: Arc::new(Schema::new(fields)),
        };
        preds = key_preds.into_iter().enumerate().map(|(i, o)| eq(Expr::column(i, format!("__k{i}")), o)).collect();
        value = Expr::column(n, "__value");
    }
    // An aggregate over no rows has a value of its own (count is 0); a row with no group gets it.
    let body_schema = body.schema();
    let empty_value = if aggregate_only && !preds.is_empty() {
        let empty = over_empty_group(&value, &body)?;
        let folded = crate::plan::simplify_expr(&empty, &body_schema);
        match &folded {
            Expr::Literal(a) if a.is_null(0) => None,
            _ => Some(folded),
        }
    } else {
        None
    };
    let present = if empty_value.is_some() {
        // A column that is null exactly when the row found no group.
        let n = body_schema.fields().len();
        let mut exprs: Vec<Expr> = (0..n).map(|i| Expr::column(i, body_schema.field(i).name())).collect();
        exprs.push(bool_literal(true));
        let mut fields: Vec<Field> = body_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("__present", DataType::Boolean, true));
        body = LogicalPlan::Projection { input: Box::new(body), exprs, schema: Arc::new(Schema::new(fields)) };
        Some(n)
    } else {
        None
    };
    let conds = preds.iter().map(|e| to_pair(e, width, outer)).collect::<Result<Vec<_>>>()?;
    let joined = LogicalPlan::join(plan, body, JoinType::Left, Vec::new(), conjunction(conds));
    let mut value = to_pair(&value, width, outer)?;
    if let (Some(empty), Some(present)) = (empty_value, present) {
        let missing = is_null(Expr::column(width + present, "__present"));
        let data_type = value.data_type(&joined.schema());
        let empty = if empty.data_type(&Schema::empty()) == data_type {
            empty
        } else {
            Expr::Cast { expr: Box::new(empty), to: data_type.clone() }
        };
        value = Expr::Case { whens: vec![(missing, empty)], otherwise: Some(Box::new(value)), data_type };
    }
    Ok((joined, value))
}

/// `value` (over an aggregation's output) as it is over a group with no rows: counts are 0, every
/// other aggregate is null. Reads no column.
fn over_empty_group(value: &Expr, aggregate: &LogicalPlan) -> Result<Expr> {
    let LogicalPlan::Aggregate { group_exprs, aggregates, .. } = aggregate else {
        return Err(Error::Execution("internal error: expected an aggregation".into()));
    };
    let groups = group_exprs.len();
    value.transform(&mut |e| match e {
        Expr::Column { index, .. } if index >= groups => {
            let a = &aggregates[index - groups];
            Ok(match a.func {
                AggregateFunction::CountStar | AggregateFunction::Count => {
                    Expr::Literal(Arc::new(Int64Array::from(vec![0i64])))
                }
                _ => Expr::Literal(new_null_array(&a.data_type, 1)),
            })
        }
        // A group key of a row with no group: null.
        Expr::Column { index, .. } => Ok(Expr::Literal(new_null_array(aggregate.schema().field(index).data_type(), 1))),
        other => Ok(other),
    })
}
