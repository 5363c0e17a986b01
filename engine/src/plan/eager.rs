//! Eager aggregation: an aggregation over inner joins computed in part before the joins that only
//! bring it more group columns.
//!
//! TPC-H Q10 sums lineitem's revenue per customer, grouping by the customer's key, name, address,
//! phone, comment and nation name. Planned as written, 1.1M joined rows carry those strings from
//! the customer join through the nation join into an aggregation keyed on all seven columns. The
//! customer and nation rows only label the groups: summing lineitem ⋈ orders per `o_custkey`
//! first leaves 380K partial sums, and the joins and the final aggregation then work on those.
//!
//! ```text
//!  Aggregate [c_custkey, c_name, .., n_name] sum(x)        Aggregate [c_custkey, c_name, .., n_name] sum(p)
//!    Join c_nationkey = n_nationkey                          Join c_nationkey = n_nationkey
//!      Join o_custkey = c_custkey                 ==>          Join o_custkey = c_custkey
//!        Join l_orderkey = o_orderkey                            Aggregate [o_custkey] p = sum(x)
//!          lineitem, orders                                        Join l_orderkey = o_orderkey
//!        customer                                                    lineitem, orders
//!      nation                                                      customer
//!                                                                nation
//! ```
//!
//! This is exact for inner joins whatever the data (Yan and Larson's eager group-by): every row of
//! the part that is aggregated first (`S`, the inputs holding the aggregates' arguments and the
//! ones joined to them here) meets the same rows of the rest whether it is joined alone or inside
//! its partial group, as the partial groups are keyed on every column of `S` that the rest
//! compares or groups by. A rest row that matches a partial group adds that group's partial state
//! once, which is what its rows would have added one by one: sums and counts add up, minimums and
//! maximums combine, and an average is a sum over a count. `DISTINCT` aggregates do not
//! decompose and keep the plan as it is.
//!
//! Whether it pays is a guess the optimizer makes from the plan's shape alone: the rest must be
//! plain tables read whole, joined to `S` only on columns equal to group columns (so a partial
//! group's key is one of the final groups' and the rest only labels them, without removing rows),
//! and must contribute group columns of its own (otherwise nothing is carried that the partial
//! aggregation saves). A filtered table in the rest would remove rows that the partial
//! aggregation then summed for nothing (TPC-H Q3's `orders` filtered by date and customer
//! segment), so none is accepted there.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};

use super::joins::{column_equality, equality, flatten, is_inner_join, ColumnClasses};
use super::LogicalPlan;
use crate::expr::{AggregateExpr, AggregateFunction as F, Expr, Split};

/// Most inputs a join under an aggregation may have for the subsets of them to be tried.
const MAX_INPUTS: usize = 12;
/// How many times fewer partial groups than rows the estimates must expect.
const MIN_REDUCTION: f64 = 2.0;

/// Rewrites every aggregation over inner joins that eager aggregation suits (see the module docs).
pub fn push_aggregates(plan: LogicalPlan) -> LogicalPlan {
    plan.transform_up(&mut |node| match &node {
        LogicalPlan::Aggregate { .. } => eager(&node).unwrap_or(node),
        _ => node,
    })
}

/// The flattened join under an aggregation: its inputs and what relates them.
struct Flat {
    inputs: Vec<LogicalPlan>,
    starts: Vec<usize>,
    /// Equalities of plain columns of two inputs (flattened column numbers).
    edges: Vec<(usize, usize)>,
    /// Conditions on one input's columns, by input.
    locals: Vec<Vec<Expr>>,
}

impl Flat {
    fn owner(&self, column: usize) -> usize {
        self.starts.iter().rposition(|&s| s <= column).expect("column in some input")
    }

    /// The inputs `e` reads, as a mask.
    fn mask(&self, e: &Expr) -> u32 {
        let mut m = 0u32;
        e.visit_columns(&mut |c| m |= 1 << self.owner(c));
        m
    }

    /// Whether the inputs in `mask` are connected by equalities among themselves.
    fn connected(&self, mask: u32) -> bool {
        let first = mask.trailing_zeros();
        let mut reached = 1u32 << first;
        loop {
            let before = reached;
            for &(a, b) in &self.edges {
                let (ma, mb) = (1u32 << self.owner(a), 1u32 << self.owner(b));
                if mask & ma != 0 && mask & mb != 0 && (reached & (ma | mb)) != 0 {
                    reached |= ma | mb;
                }
            }
            if reached == before {
                return reached == mask;
            }
        }
    }

    /// A plain table read whole (perhaps some of its columns).
    fn plain(&self, i: usize) -> bool {
        let scan = |p: &LogicalPlan| matches!(p, LogicalPlan::Scan { pruning: None, .. });
        self.locals[i].is_empty()
            && match &self.inputs[i] {
                LogicalPlan::Projection { input, .. } => scan(input),
                p => scan(p),
            }
    }
}

/// `node` (an aggregation) aggregated in part below some of its joins, if that suits it.
fn eager(node: &LogicalPlan) -> Option<LogicalPlan> {
    let LogicalPlan::Aggregate { input, group_exprs, aggregates, schema } = node else { return None };
    if group_exprs.is_empty()
        || aggregates.is_empty()
        || aggregates.iter().any(|a| a.distinct || Split::of(a.func).is_none())
    {
        return None;
    }
    // Through a projection to the join's own columns.
    let (join, groups, args): (&LogicalPlan, Vec<Expr>, Vec<Option<Expr>>) = match input.as_ref() {
        LogicalPlan::Projection { input: inner, exprs, .. } => {
            let through = |e: &Expr| {
                e.transform(&mut |x| match x {
                    Expr::Column { index, .. } => Ok(exprs[index].clone()),
                    other => Ok(other),
                })
                .ok()
            };
            let groups = group_exprs.iter().map(through).collect::<Option<Vec<_>>>()?;
            let args = aggregates.iter().map(|a| a.arg.as_ref().map(through)).collect::<Vec<_>>();
            if args.iter().any(|a| matches!(a, Some(None))) {
                return None;
            }
            (inner.as_ref(), groups, args.into_iter().map(|a| a.flatten()).collect())
        }
        other => (other, group_exprs.clone(), aggregates.iter().map(|a| a.arg.clone()).collect()),
    };
    let joins = is_inner_join(join) || matches!(join, LogicalPlan::Filter { input, .. } if is_inner_join(input));
    if !joins {
        return None;
    }
    let mut inputs = Vec::new();
    let mut conditions = Vec::new();
    flatten(join.clone(), 0, &mut inputs, &mut conditions, std::convert::identity);
    let n = inputs.len();
    if !(2..=MAX_INPUTS).contains(&n) {
        return None;
    }
    let widths: Vec<usize> = inputs.iter().map(|p| p.schema().fields().len()).collect();
    let starts: Vec<usize> = widths.iter().scan(0, |acc, w| Some(std::mem::replace(acc, *acc + w))).collect();
    let mut flat = Flat { inputs, starts, edges: Vec::new(), locals: vec![Vec::new(); n] };
    for c in conditions {
        let m = flat.mask(&c);
        match (column_equality(&c), m.count_ones()) {
            (_, 0) => return None,
            (_, 1) => flat.locals[m.trailing_zeros() as usize].push(c),
            (Some(edge), 2) => flat.edges.push(edge),
            _ => return None,
        }
    }
    let mut classes = ColumnClasses::new(widths.iter().sum());
    for &(a, b) in &flat.edges {
        classes.union(a, b);
    }
    let measures = args.iter().flatten().fold(0u32, |m, a| m | flat.mask(a));
    let group_masks: Vec<u32> = groups.iter().map(|g| flat.mask(g)).collect();
    let group_classes: Vec<usize> = groups
        .iter()
        .filter_map(|g| match g {
            Expr::Column { index, .. } => Some(classes.find(*index)),
            _ => None,
        })
        .collect();
    if measures == 0 {
        return None;
    }
    // The largest part to aggregate first that suits (see the module docs).
    let full = (1u32 << n) - 1;
    let suits = |s: u32| {
        let rest = full & !s;
        let crossing = flat.edges.iter().filter(|&&(a, b)| {
            let (ma, mb) = (1u32 << flat.owner(a), 1u32 << flat.owner(b));
            (s & ma != 0) != (s & mb != 0)
        });
        s & measures == measures
            && flat.connected(s)
            && (0..n).filter(|i| rest & (1 << i) != 0).all(|i| flat.plain(i))
            && group_masks.iter().all(|&g| g & s == g || g & s == 0)
            && group_masks.iter().any(|&g| g != 0 && g & s == 0)
            && crossing.clone().next().is_some()
            && crossing.clone().all(|&(a, _)| group_classes.contains(&classes.find(a)))
    };
    let s = (1..full).filter(|&s| suits(s)).max_by_key(|s| s.count_ones())?;
    rewrite(schema, &flat, s, &groups, &group_masks, aggregates, &args)
}

/// The plan with the inputs in `s` joined and aggregated first; `None` when the estimates expect
/// that to save little.
fn rewrite(
    schema: &arrow::datatypes::SchemaRef,
    flat: &Flat,
    s: u32,
    groups: &[Expr],
    group_masks: &[u32],
    aggregates: &[AggregateExpr],
    args: &[Option<Expr>],
) -> Option<LogicalPlan> {
    let n = flat.inputs.len();
    let inside = |i: usize| s & (1 << i) != 0;
    let in_s = |c: usize| inside(flat.owner(c));
    // The part aggregated first: its inputs joined in their order, its columns renumbered.
    let part: Vec<usize> = (0..n).filter(|&i| inside(i)).collect();
    let mut local = vec![usize::MAX; flat.starts.last().unwrap() + flat.inputs[n - 1].schema().fields().len()];
    let mut at = 0;
    for &i in &part {
        for c in 0..flat.inputs[i].schema().fields().len() {
            local[flat.starts[i] + c] = at + c;
        }
        at += flat.inputs[i].schema().fields().len();
    }
    let to_local = |e: &Expr| e.remap_columns(&|c| local[c]);
    let inner_conditions: Vec<Expr> = flat
        .edges
        .iter()
        .filter(|&&(a, b)| in_s(a) && in_s(b))
        .map(|&(a, b)| equality(column_of(flat, a, &local), column_of(flat, b, &local)))
        .chain(part.iter().flat_map(|&i| flat.locals[i].iter().map(to_local)))
        .collect();
    let below = join_all(part.iter().map(|&i| flat.inputs[i].clone()).collect(), inner_conditions);
    let below_schema = below.schema();

    // Its group keys: the columns the rest is joined on, then the group expressions over it.
    let mut keys: Vec<Expr> = Vec::new();
    let mut boundary: Vec<usize> = Vec::new();
    for &(a, b) in &flat.edges {
        for (x, y) in [(a, b), (b, a)] {
            if in_s(x) && !in_s(y) && !boundary.contains(&x) {
                boundary.push(x);
                keys.push(column_of(flat, x, &local));
            }
        }
    }
    let mut group_key: Vec<Option<usize>> = Vec::with_capacity(groups.len());
    for (g, &m) in groups.iter().zip(group_masks) {
        if m == 0 || m & s != m {
            group_key.push(None);
            continue;
        }
        let g = to_local(g);
        let k = keys.iter().position(|k| k == &g).unwrap_or_else(|| {
            keys.push(g);
            keys.len() - 1
        });
        group_key.push(Some(k));
    }
    // Partial states: what each aggregate needs from a partial group.
    let mut partials: Vec<AggregateExpr> = Vec::new();
    let mut partial = |func: F, arg: &Option<Expr>| -> usize {
        let arg = arg.as_ref().map(to_local);
        let data_type = func
            .return_type(arg.as_ref().map(|a| a.data_type(&below_schema)).as_ref())
            .expect("the aggregate was planned with this argument");
        let a = AggregateExpr { func, arg, distinct: false, data_type };
        partials.iter().position(|p| p == &a).unwrap_or_else(|| {
            partials.push(a);
            partials.len() - 1
        })
    };
    // Each aggregate's split and the partial states it reads (shared where equal).
    let finals: Vec<(Split, Vec<usize>)> = aggregates
        .iter()
        .zip(args)
        .map(|(a, arg)| {
            let split = Split::of(a.func).expect("eager aggregation takes aggregates that split");
            (split, split.partials().into_iter().map(|f| partial(f, arg)).collect())
        })
        .collect();
    let mut fields: Vec<Field> =
        keys.iter().enumerate().map(|(i, k)| Field::new(format!("__k{i}"), k.data_type(&below_schema), true)).collect();
    fields.extend(partials.iter().enumerate().map(|(i, p)| Field::new(format!("__p{i}"), p.data_type.clone(), true)));
    let part_schema = Arc::new(Schema::new(fields));
    let part_width = part_schema.fields().len();
    let part_keys = keys.len();
    let rows = super::stats::estimate(&below).rows;
    let first = LogicalPlan::Aggregate {
        input: Box::new(below),
        group_exprs: keys,
        aggregates: partials,
        schema: part_schema.clone(),
    };
    // Worth it only where the estimates expect the partial groups to be fewer than half the rows
    // (not, say, when they are keyed on an order's own key).
    if super::stats::estimate(&first).rows > rows / MIN_REDUCTION {
        return None;
    }

    // The rest joined to the partial groups, which come first.
    let rest: Vec<usize> = (0..n).filter(|&i| !inside(i)).collect();
    let mut position = vec![usize::MAX; local.len()];
    let mut at = part_width;
    for &i in &rest {
        for c in 0..flat.inputs[i].schema().fields().len() {
            position[flat.starts[i] + c] = at + c;
        }
        at += flat.inputs[i].schema().fields().len();
    }
    for (k, &x) in boundary.iter().enumerate() {
        position[x] = k;
    }
    let name = |c: usize| match position[c] < part_width {
        true => part_schema.field(position[c]).name().clone(),
        false => {
            let i = flat.owner(c);
            flat.inputs[i].schema().field(c - flat.starts[i]).name().clone()
        }
    };
    let outer_conditions: Vec<Expr> = flat
        .edges
        .iter()
        .filter(|&&(a, b)| !(in_s(a) && in_s(b)))
        .map(|&(a, b)| equality(Expr::column(position[a], name(a)), Expr::column(position[b], name(b))))
        .collect();
    let mut top_inputs = vec![first];
    top_inputs.extend(rest.iter().map(|&i| flat.inputs[i].clone()));
    let above = join_all(top_inputs, outer_conditions);
    let above_schema = above.schema();

    // The final aggregation over the partial states, then the original layout.
    let final_groups: Vec<Expr> = groups
        .iter()
        .zip(&group_key)
        .map(|(g, k)| match k {
            Some(k) => Expr::column(*k, part_schema.field(*k).name()),
            None => g.remap_columns(&|c| position[c]),
        })
        .collect();
    let nk = final_groups.len();
    let mut second: Vec<AggregateExpr> = Vec::new();
    let mut add = |func: F, p: usize| -> Expr {
        let column = part_keys + p;
        let arg = Expr::column(column, part_schema.field(column).name());
        let data_type = func.return_type(Some(&arg.data_type(&above_schema))).expect("partial states add up");
        second.push(AggregateExpr { func, arg: Some(arg), distinct: false, data_type });
        Expr::column(nk + second.len() - 1, format!("__s{}", second.len() - 1))
    };
    let outputs: Vec<Expr> = finals
        .iter()
        .map(|(split, parts)| split.finish(parts.iter().map(|&p| add(split.merge(), p)).collect()))
        .collect();
    let mut fields: Vec<Field> = (0..nk).map(|i| schema.field(i).clone().with_nullable(true)).collect();
    fields.extend(second.iter().enumerate().map(|(i, a)| Field::new(format!("__s{i}"), a.data_type.clone(), true)));
    let second_schema = Arc::new(Schema::new(fields));
    let aggregate = LogicalPlan::Aggregate {
        input: Box::new(above),
        group_exprs: final_groups,
        aggregates: second,
        schema: second_schema.clone(),
    };
    let mut exprs: Vec<Expr> = (0..nk).map(|i| Expr::column(i, second_schema.field(i).name())).collect();
    exprs.extend(outputs);
    Some(LogicalPlan::Projection { input: Box::new(aggregate), exprs, schema: schema.clone() })
}

/// Column `c` of the flattened join, numbered as `renumber` says.
fn column_of(flat: &Flat, c: usize, renumber: &[usize]) -> Expr {
    let i = flat.owner(c);
    Expr::column(renumber[c], flat.inputs[i].schema().field(c - flat.starts[i]).name())
}

/// The inputs joined left to right (inner joins without keys) under one filter of `conditions`:
/// the passes that follow order the joins and make keys of the equalities.
fn join_all(inputs: Vec<LogicalPlan>, conditions: Vec<Expr>) -> LogicalPlan {
    let mut it = inputs.into_iter();
    let first = it.next().expect("a join has inputs");
    let plan = it.fold(first, |acc, p| LogicalPlan::join(acc, p, super::JoinType::Inner, Vec::new(), None));
    match super::conjunction(conditions) {
        Some(predicate) => LogicalPlan::Filter { input: Box::new(plan), predicate },
        None => plan,
    }
}
