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

/// Rows a plan is expected to produce (see [`super::stats`]).
pub fn estimate_rows(plan: &LogicalPlan) -> f64 {
    super::stats::estimate(plan).rows
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

pub(super) fn is_inner_join(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join { join_type: JoinType::Inner, .. })
}

/// Applies `f` to each input of `plan`.
fn map_inputs(plan: LogicalPlan, f: fn(LogicalPlan) -> LogicalPlan) -> LogicalPlan {
    plan.map_inputs(&mut |p| f(p))
}

pub(super) fn equality(l: Expr, r: Expr) -> Expr {
    Expr::Binary { op: BinaryOp::Eq, left: Box::new(l), right: Box::new(r), data_type: DataType::Boolean }
}

/// Collects the inputs of a tree of inner joins (with filters between them) and its conditions,
/// over the tree's output columns; `offset` is where the subtree's columns start.
pub(super) fn flatten(
    plan: LogicalPlan,
    offset: usize,
    inputs: &mut Vec<LogicalPlan>,
    conditions: &mut Vec<Expr>,
    leaf: fn(LogicalPlan) -> LogicalPlan,
) {
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
            flatten(*left, offset, inputs, conditions, leaf);
            flatten(*right, offset + nl, inputs, conditions, leaf);
        }
        LogicalPlan::Filter { input, predicate } if is_inner_join(&input) => {
            conditions.extend(predicate.conjuncts().into_iter().map(|c| shift(c, offset)));
            flatten(*input, offset, inputs, conditions, leaf);
        }
        other => inputs.push(leaf(other)),
    }
}

/// A join tree over the flattened inputs.
#[derive(Debug, Clone)]
enum Tree {
    Leaf(usize),
    Join(Box<Tree>, Box<Tree>),
}

impl Tree {
    fn leaves(&self, out: &mut Vec<usize>) {
        match self {
            Tree::Leaf(i) => out.push(*i),
            Tree::Join(a, b) => {
                a.leaves(out);
                b.leaves(out);
            }
        }
    }
}

/// Most inputs ordered by dynamic programming over every subset; more are ordered greedily.
const DP_LIMIT: usize = 12;
/// Selectivity of a condition between inputs that is not an equality.
const OTHER_SELECTIVITY: f64 = 0.5;

/// Row estimates of sets of the flattened inputs (bit `i` of a mask is input `i`).
struct JoinGraph {
    rows: Vec<f64>,
    /// Equality conditions between two inputs: (i, j, selectivity, class). Equalities of columns
    /// that are all equal to each other (`a = b`, `b = c`, and the derived `a = c`) share a class.
    keys: Vec<(usize, usize, f64, usize)>,
    /// Other conditions over several inputs: the mask of inputs they read.
    others: Vec<u32>,
}

impl JoinGraph {
    /// Rows of the join of the inputs in `mask`: their rows times the selectivities of every
    /// condition among them (several keys between the same two inputs combined, see
    /// [`super::stats::combine`]).
    fn rows(&self, mask: u32) -> f64 {
        let mut rows: f64 = (0..self.rows.len()).filter(|i| mask & (1 << i) != 0).map(|i| self.rows[i]).product();
        // In each class, only the equalities of a spanning tree of the inputs count (the others
        // follow from them), the least selective first.
        let mut inside: Vec<&(usize, usize, f64, usize)> =
            self.keys.iter().filter(|&&(i, j, _, _)| mask & (1 << i) != 0 && mask & (1 << j) != 0).collect();
        inside.sort_by(|a, b| a.3.cmp(&b.3).then(b.2.total_cmp(&a.2)));
        let mut pairs: Vec<((usize, usize), Vec<f64>)> = Vec::new();
        let mut joined: Vec<(usize, u32)> = Vec::new(); // (class, inputs connected so far) per tree
        for &&(i, j, sel, class) in &inside {
            let (ti, tj) = (
                joined.iter().position(|&(c, m)| c == class && m & (1 << i) != 0),
                joined.iter().position(|&(c, m)| c == class && m & (1 << j) != 0),
            );
            match (ti, tj) {
                (Some(a), Some(b)) if a == b => continue,
                (Some(a), Some(b)) => {
                    let other = joined[b].1;
                    joined[a].1 |= other;
                    joined.swap_remove(b);
                }
                (Some(a), None) | (None, Some(a)) => joined[a].1 |= (1 << i) | (1 << j),
                (None, None) => joined.push((class, (1 << i) | (1 << j))),
            }
            let pair = (i.min(j), i.max(j));
            match pairs.iter_mut().find(|p| p.0 == pair) {
                Some(p) => p.1.push(sel),
                None => pairs.push((pair, vec![sel])),
            }
        }
        for (_, sels) in pairs {
            rows *= super::stats::combine(sels);
        }
        for &m in &self.others {
            if m & mask == m {
                rows *= OTHER_SELECTIVITY;
            }
        }
        rows.max(1.0)
    }

    /// Whether an equality connects the two sets.
    fn connected(&self, a: u32, b: u32) -> bool {
        self.keys
            .iter()
            .any(|&(i, j, _, _)| (a & (1 << i) != 0 && b & (1 << j) != 0) || (a & (1 << j) != 0 && b & (1 << i) != 0))
    }

    /// The cheapest bushy tree by dynamic programming. Cost: the rows every join produces plus
    /// the rows of its smaller input (the hash table it builds). Cross products only where no
    /// equality connects a set's parts.
    fn best_tree(&self) -> Tree {
        let n = self.rows.len();
        let full = (1u32 << n) - 1;
        let mut best: Vec<Option<(f64, Tree)>> = vec![None; 1 << n];
        for i in 0..n {
            best[1 << i] = Some((0.0, Tree::Leaf(i)));
        }
        let mut masks: Vec<u32> = (1..=full).filter(|m| m.count_ones() >= 2).collect();
        masks.sort_by_key(|m| m.count_ones());
        for mask in masks {
            let rows = self.rows(mask);
            let mut candidates: Vec<(f64, Tree)> = Vec::new();
            let mut any_connected = false;
            for pass in 0..2 {
                // First only connected splits; cross products when there are none.
                let mut sub = (mask - 1) & mask;
                while sub > 0 {
                    let other = mask ^ sub;
                    if sub < other {
                        if let (Some((ca, ta)), Some((cb, tb))) = (&best[sub as usize], &best[other as usize]) {
                            let connected = self.connected(sub, other);
                            if connected || pass == 1 {
                                any_connected |= connected;
                                let build = self.rows(sub).min(self.rows(other));
                                let cost = ca + cb + rows + build;
                                let (big, small) = if self.rows(sub) >= self.rows(other) { (ta, tb) } else { (tb, ta) };
                                candidates.push((cost, Tree::Join(Box::new(big.clone()), Box::new(small.clone()))));
                            }
                        }
                    }
                    sub = (sub - 1) & mask;
                }
                if any_connected {
                    break;
                }
            }
            best[mask as usize] = candidates.into_iter().min_by(|a, b| a.0.total_cmp(&b.0));
        }
        best[full as usize].take().expect("every set has a tree").1
    }

    /// A left-deep tree, greedily: the largest input first, then at each step the connected input
    /// that keeps the result smallest.
    fn greedy_tree(&self) -> Tree {
        let n = self.rows.len();
        let first = (0..n).max_by(|&a, &b| self.rows[a].total_cmp(&self.rows[b])).expect("a join has inputs");
        let (mut mask, mut tree) = (1u32 << first, Tree::Leaf(first));
        while mask.count_ones() < n as u32 {
            let left: Vec<usize> = (0..n).filter(|i| mask & (1 << i) == 0).collect();
            let connected: Vec<usize> = left.iter().copied().filter(|&i| self.connected(mask, 1 << i)).collect();
            let pool = if connected.is_empty() { &left } else { &connected };
            let next = *pool
                .iter()
                .min_by(|&&a, &&b| self.rows(mask | 1 << a).total_cmp(&self.rows(mask | 1 << b)))
                .expect("an input is left");
            mask |= 1 << next;
            tree = Tree::Join(Box::new(tree), Box::new(Tree::Leaf(next)));
        }
        tree
    }
}

fn reorder_tree(plan: LogicalPlan) -> LogicalPlan {
    let schema = plan.schema();
    let mut inputs = Vec::new();
    let mut conditions = Vec::new();
    flatten(plan, 0, &mut inputs, &mut conditions, reorder);
    let widths: Vec<usize> = inputs.iter().map(|p| p.schema().fields().len()).collect();
    let starts: Vec<usize> = widths.iter().scan(0, |acc, w| Some(std::mem::replace(acc, *acc + w))).collect();
    let owner = |column: usize| starts.iter().rposition(|&s| s <= column).expect("column in some input");
    let n = inputs.len();
    let mut classes = ColumnClasses::new(widths.iter().sum());
    for c in &conditions {
        if let Some((a, b)) = column_equality(c) {
            classes.union(a, b);
        }
    }
    conditions.extend(classes.derived(&conditions, &owner));
    if n > 31 {
        return rebuild(schema, inputs, conditions, &widths, &starts, &Tree::Leaf(0), true);
    }
    // Estimates of the inputs, with the conditions on one input applied to them.
    let mut estimates: Vec<super::stats::Estimate> = inputs.iter().map(super::stats::estimate).collect();
    let mut keys = Vec::new();
    let mut others = Vec::new();
    for c in &conditions {
        let mut read = Vec::new();
        c.visit_columns(&mut |col| read.push(owner(col)));
        read.sort_unstable();
        read.dedup();
        let local = |e: &Expr, i: usize| e.remap_columns(&|col| col - starts[i]);
        match read.as_slice() {
            [] => {}
            [i] => {
                let local_c = local(c, *i);
                let sel = super::stats::filter_selectivity(&local_c, &estimates[*i]);
                estimates[*i].rows = (estimates[*i].rows * sel).max(1.0);
            }
            [i, j] => {
                let eq_sides = match c {
                    Expr::Binary { op: BinaryOp::Eq, left, right, .. } => {
                        let side = |e: &Expr| {
                            let mut v = Vec::new();
                            e.visit_columns(&mut |col| v.push(owner(col)));
                            v.sort_unstable();
                            v.dedup();
                            v
                        };
                        match (side(left).as_slice(), side(right).as_slice()) {
                            ([a], [b]) if a == i && b == j => Some((left.as_ref(), right.as_ref())),
                            ([a], [b]) if a == j && b == i => Some((right.as_ref(), left.as_ref())),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match eq_sides {
                    Some((a, b)) => {
                        let sel =
                            super::stats::key_selectivity(&estimates[*i], &local(a, *i), &estimates[*j], &local(b, *j));
                        // Equalities of plain columns are in their columns' class; others alone.
                        let class = match column_equality(c) {
                            Some((x, _)) => classes.find(x),
                            None => classes.len() + keys.len(),
                        };
                        keys.push((*i, *j, sel, class));
                    }
                    None => others.push((1u32 << i) | (1u32 << j)),
                }
            }
            many => others.push(many.iter().fold(0u32, |m, i| m | (1 << i))),
        }
    }
    let graph = JoinGraph { rows: estimates.iter().map(|e| e.rows).collect(), keys, others };
    let tree = if n <= DP_LIMIT { graph.best_tree() } else { graph.greedy_tree() };
    rebuild(schema, inputs, conditions, &widths, &starts, &tree, false)
}

/// Builds the join tree over the inputs, with every condition in one filter above it (the filter
/// pushdown that follows places each where it belongs), and a projection back to the column
/// order the query was planned against.
fn rebuild(
    schema: arrow::datatypes::SchemaRef,
    inputs: Vec<LogicalPlan>,
    conditions: Vec<Expr>,
    widths: &[usize],
    starts: &[usize],
    tree: &Tree,
    keep_order: bool,
) -> LogicalPlan {
    let n = inputs.len();
    let order: Vec<usize> = if keep_order {
        (0..n).collect()
    } else {
        let mut v = Vec::new();
        tree.leaves(&mut v);
        v
    };
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
    fn build(tree: &Tree, slots: &mut [Option<LogicalPlan>]) -> LogicalPlan {
        match tree {
            Tree::Leaf(i) => slots[*i].take().expect("each input once"),
            Tree::Join(a, b) => {
                let (a, b) = (build(a, slots), build(b, slots));
                LogicalPlan::join(a, b, JoinType::Inner, Vec::new(), None)
            }
        }
    }
    let conditions = if keep_order { conditions } else { drop_implied(conditions, tree, starts) };
    let mut plan = if keep_order {
        let mut it = order.iter();
        let first = slots[*it.next().expect("inputs")].take().expect("input");
        it.fold(first, |acc, &i| {
            LogicalPlan::join(acc, slots[i].take().expect("input"), JoinType::Inner, Vec::new(), None)
        })
    } else {
        build(tree, &mut slots)
    };
    if let Some(predicate) = conjunction(conditions.iter().map(|c| c.remap_columns(&|col| position[col])).collect()) {
        plan = LogicalPlan::Filter { input: Box::new(plan), predicate };
    }
    if order.iter().zip(order.iter().skip(1)).all(|(a, b)| a < b) {
        return plan;
    }
    // Restore the column order the query was planned against.
    let exprs = (0..position.len()).map(|c| Expr::column(position[c], schema.field(c).name())).collect();
    LogicalPlan::Projection { input: Box::new(plan), exprs, schema: Arc::new(Schema::new(schema.fields().clone())) }
}

/// `a = b` of two plain columns (of the flattened tree).
pub(super) fn column_equality(c: &Expr) -> Option<(usize, usize)> {
    match c {
        Expr::Binary { op: BinaryOp::Eq, left, right, .. } => match (left.as_ref(), right.as_ref()) {
            (Expr::Column { index: a, .. }, Expr::Column { index: b, .. }) if a != b => Some((*a, *b)),
            _ => None,
        },
        _ => None,
    }
}

/// Columns known equal to each other (union-find over the flattened tree's columns).
pub(super) struct ColumnClasses {
    parent: Vec<usize>,
}

impl ColumnClasses {
    pub(super) fn new(columns: usize) -> ColumnClasses {
        ColumnClasses { parent: (0..columns).collect() }
    }

    fn len(&self) -> usize {
        self.parent.len()
    }

    pub(super) fn find(&self, mut c: usize) -> usize {
        while self.parent[c] != c {
            c = self.parent[c];
        }
        c
    }

    /// Joins the classes of `a` and `b`; false when they were one already.
    pub(super) fn union(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        self.parent[ra.max(rb)] = ra.min(rb);
        ra != rb
    }

    /// The equalities between inputs that follow from `conditions` and are not among them: with
    /// `p_partkey = l_partkey` and `ps_partkey = l_partkey`, `p_partkey = ps_partkey`, so that
    /// part and partsupp may join first (TPC-H Q9).
    fn derived(&self, conditions: &[Expr], owner: &dyn Fn(usize) -> usize) -> Vec<Expr> {
        // Each class's columns, as the conditions name them.
        let mut members: Vec<Vec<&Expr>> = vec![Vec::new(); self.len()];
        for c in conditions {
            if let Expr::Binary { op: BinaryOp::Eq, left, right, .. } = c {
                if column_equality(c).is_some() {
                    for x in [left.as_ref(), right.as_ref()] {
                        let Expr::Column { index, .. } = x else { continue };
                        let class = &mut members[self.find(*index)];
                        if !class.iter().any(|m| matches!(m, Expr::Column { index: i, .. } if i == index)) {
                            class.push(x);
                        }
                    }
                }
            }
        }
        let index = |e: &Expr| match e {
            Expr::Column { index, .. } => *index,
            _ => unreachable!("class members are columns"),
        };
        let stated = |a: usize, b: usize| {
            conditions.iter().any(|c| column_equality(c).is_some_and(|(x, y)| (x, y) == (a, b) || (x, y) == (b, a)))
        };
        let mut out = Vec::new();
        for class in members.iter_mut().filter(|m| m.len() > 2) {
            class.sort_by_key(|e| index(e));
            for (k, a) in class.iter().enumerate() {
                for b in &class[k + 1..] {
                    let (ia, ib) = (index(a), index(b));
                    if owner(ia) != owner(ib) && !stated(ia, ib) {
                        out.push(equality((*a).clone(), (*b).clone()));
                    }
                }
            }
        }
        out
    }
}

/// The conditions without the column equalities that the tree's joins below or beside them
/// already imply: each join keeps only the equalities that join classes its inputs have not
/// joined yet (stated ones before derived ones, which come last in `conditions`).
fn drop_implied(conditions: Vec<Expr>, tree: &Tree, starts: &[usize]) -> Vec<Expr> {
    let owner = |column: usize| starts.iter().rposition(|&s| s <= column).expect("column in some input");
    let columns = conditions.iter().fold(0, |m, c| {
        let mut m = m;
        c.visit_columns(&mut |col| m = m.max(col + 1));
        m
    });
    let mut classes = ColumnClasses::new(columns);
    let mut keep = vec![true; conditions.len()];
    // Post-order: the joins below decide first.
    fn visit(
        tree: &Tree,
        conditions: &[Expr],
        owner: &dyn Fn(usize) -> usize,
        classes: &mut ColumnClasses,
        keep: &mut [bool],
    ) -> u32 {
        let Tree::Join(a, b) = tree else {
            let Tree::Leaf(i) = tree else { unreachable!() };
            return 1 << i;
        };
        let (ma, mb) = (visit(a, conditions, owner, classes, keep), visit(b, conditions, owner, classes, keep));
        let mask = ma | mb;
        for (k, c) in conditions.iter().enumerate() {
            let Some((x, y)) = column_equality(c) else { continue };
            let read = (1u32 << owner(x)) | (1u32 << owner(y));
            let here = read & mask == read && read & ma != read && read & mb != read;
            if here && !classes.union(x, y) {
                keep[k] = false;
            }
        }
        mask
    }
    visit(tree, &conditions, &owner, &mut classes, &mut keep);
    conditions.into_iter().zip(keep).filter_map(|(c, k)| k.then_some(c)).collect()
}

/// Moves semi and anti joins (`IN`, `EXISTS` and their negations) below the inner joins under
/// them, onto the input whose columns they test, when that join does not shrink that input:
/// `(orders JOIN lineitem) SEMI JOIN big_orders ON o_orderkey = ...` becomes `(orders SEMI JOIN
/// big_orders) JOIN lineitem` (TPC-H Q18), so the filtering happens before the joins, and join
/// ordering sees the smaller input.
pub fn push_semi_joins(plan: LogicalPlan) -> LogicalPlan {
    let plan = plan.map_inputs(&mut push_semi_joins);
    let LogicalPlan::Join { left, right, join_type, on, filter, schema } = plan else { return plan };
    if !matches!(join_type, JoinType::Semi | JoinType::Anti { .. }) {
        return LogicalPlan::Join { left, right, join_type, on, filter, schema };
    }
    let LogicalPlan::Join { left: a, right: b, join_type: JoinType::Inner, on: inner_on, filter: inner_filter, .. } =
        *left
    else {
        return LogicalPlan::Join { left, right, join_type, on, filter, schema };
    };
    let na = a.schema().fields().len();
    let nl = na + b.schema().fields().len();
    // The left columns the semi join reads: its keys' left sides, and its condition's left part.
    let mut read = Vec::new();
    for (l, _) in &on {
        l.visit_columns(&mut |c| read.push(c));
    }
    if let Some(f) = &filter {
        f.visit_columns(&mut |c| {
            if c < nl {
                read.push(c)
            }
        });
    }
    let all_in_a = read.iter().all(|&c| c < na);
    let all_in_b = read.iter().all(|&c| c >= na && c < nl);
    let rebuild = |a: Box<LogicalPlan>, b: Box<LogicalPlan>| {
        LogicalPlan::join(*a, *b, JoinType::Inner, inner_on.clone(), inner_filter.clone())
    };
    // Worth it only when the inner join does not shrink the input the semi join tests: below a
    // selective join (TPC-H Q21's suppliers of one nation) it would test far more rows.
    let joined = super::stats::estimate(&rebuild(a.clone(), b.clone())).rows;
    let target = if all_in_a { super::stats::estimate(&a).rows } else { super::stats::estimate(&b).rows };
    if read.is_empty() || !(all_in_a || all_in_b) || joined < 0.9 * target {
        let left = Box::new(rebuild(a, b));
        return LogicalPlan::Join { left, right, join_type, on, filter, schema };
    }
    if all_in_a {
        // Right columns of the condition move from after `a ++ b` to after `a`.
        let remap = |e: &Expr| e.remap_columns(&|c| if c >= nl { c - (nl - na) } else { c });
        let on: Vec<(Expr, Expr)> = on.iter().map(|(l, r)| (l.clone(), r.clone())).collect();
        let filter = filter.as_ref().map(remap);
        let pushed = push_semi_joins(LogicalPlan::join(*a, *right, join_type, on, filter));
        return rebuild(Box::new(pushed), b);
    }
    // All in `b`: its columns start at 0 below.
    let remap = |e: &Expr| e.remap_columns(&|c| c - na);
    let on: Vec<(Expr, Expr)> = on.iter().map(|(l, r)| (l.remap_columns(&|c| c - na), r.clone())).collect();
    let filter = filter.as_ref().map(remap);
    let pushed = push_semi_joins(LogicalPlan::join(*b, *right, join_type, on, filter));
    rebuild(a, Box::new(pushed))
}

/// `a AND b AND ...`, or `None` for no conditions.
/// A condition stated twice (a filter derived again by a later pass) is kept once.
pub fn conjunction(conditions: Vec<Expr>) -> Option<Expr> {
    // Compared within groups of the same text only: a filter of thousands of conditions (generated
    // SQL) compared every pair, arrays of literals included, for minutes.
    let mut unique: Vec<Expr> = Vec::with_capacity(conditions.len());
    let mut by_text: std::collections::HashMap<String, Vec<usize>> = std::collections::HashMap::new();
    for c in conditions {
        let same = by_text.entry(c.to_string()).or_default();
        if !same.iter().any(|&i| unique[i] == c) {
            same.push(unique.len());
            unique.push(c);
        }
    }
    crate::expr::balanced(BinaryOp::And, unique)
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
            // An outer join under a condition that no null-extended row can meet is an inner
            // join (a scalar subquery compared in WHERE, say), and may then be reordered.
            let rejects =
                |side: fn(usize, usize) -> bool| conditions.iter().any(|c| rejects_nulls(c, &|col| side(col, nl)));
            let join_type = match join_type {
                JoinType::Left if rejects(|c, nl| c >= nl) => JoinType::Inner,
                JoinType::Right if rejects(|c, nl| c < nl) => JoinType::Inner,
                // Rows null-extended on the left are gone when the conditions reject nulls there:
                // what is left keeps every left row, a left join (found by the fuzzer: this
                // said right join, and a later pass made it inner).
                JoinType::Full => match (rejects(|c, nl| c < nl), rejects(|c, nl| c >= nl)) {
                    (true, true) => JoinType::Inner,
                    (true, false) => JoinType::Left,
                    (false, true) => JoinType::Right,
                    (false, false) => JoinType::Full,
                },
                other => other,
            };
            // A disjunction over both sides of an inner join also restricts each side on its
            // own when every branch does: `(n1 = 'A' AND n2 = 'B') OR (n1 = 'B' AND n2 = 'A')`
            // keeps only rows with n1 in ('A', 'B') (TPC-H Q7). The disjunction itself stays.
            if join_type == JoinType::Inner {
                let derived: Vec<Expr> = conditions
                    .iter()
                    .filter(|c| sides(c, nl) == Sides::Both)
                    .flat_map(|c| [derive_side(c, nl, Sides::Left), derive_side(c, nl, Sides::Right)])
                    .flatten()
                    .collect();
                for d in derived {
                    if !conditions.contains(&d) {
                        conditions.push(d);
                    }
                }
            }
            // Conditions from above the join (WHERE): they filter its output.
            for c in conditions {
                if join_type.is_existence() {
                    // The output is left rows (and a mark, which stays above).
                    match sides(&c, nl) {
                        Sides::Left | Sides::Neither => to_left.push(c),
                        _ => above.push(c),
                    }
                    continue;
                }
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
            let (left, right) = match join_type {
                JoinType::Inner => (
                    null_keys_rejected(*left, keys.iter().map(|(l, _)| l)),
                    null_keys_rejected(*right, keys.iter().map(|(_, r)| r)),
                ),
                _ => (*left, *right),
            };
            let left = push_into(left, to_left);
            let right = push_into(right, to_right.iter().map(|c| c.remap_columns(&|col| col - nl)).collect());
            let join = LogicalPlan::join(left, right, join_type, keys, conjunction(residual));
            with_filter(join, above)
        }
        other => with_filter(map_inputs(other, push_filters), conditions),
    }
}

/// `child` of an inner join whose keys on its side are `keys`: an outer join there whose
/// null-extended rows have a null key never meets the join (SQL's `=` never matches a null), so
/// it keeps only the rows that matched on that side (`a LEFT JOIN b ON .. JOIN c ON b.x = c.y`
/// joins `a` and `b` inner), and may then be reordered.
fn null_keys_rejected<'a>(child: LogicalPlan, keys: impl Iterator<Item = &'a Expr>) -> LogicalPlan {
    let LogicalPlan::Join { left, right, join_type, on, filter, .. } = child else { return child };
    let nl = left.schema().fields().len();
    let not_null: Vec<Expr> = keys.map(|k| Expr::IsNull { expr: Box::new(k.clone()), negated: true }).collect();
    let rejects = |in_side: &dyn Fn(usize) -> bool| not_null.iter().any(|c| rejects_nulls(c, in_side));
    let join_type = match join_type {
        JoinType::Left if rejects(&|c| c >= nl) => JoinType::Inner,
        JoinType::Right if rejects(&|c| c < nl) => JoinType::Inner,
        JoinType::Full => match (rejects(&|c| c < nl), rejects(&|c| c >= nl)) {
            (true, true) => JoinType::Inner,
            (true, false) => JoinType::Left,
            (false, true) => JoinType::Right,
            (false, false) => JoinType::Full,
        },
        other => other,
    };
    LogicalPlan::join(*left, *right, join_type, on, filter)
}

/// Whether `c` is never true when the columns `in_side` says belong to a null-extended side are
/// all null: a comparison, `LIKE` or `IN` of an expression that is null when such a column is.
fn rejects_nulls(c: &Expr, in_side: &dyn Fn(usize) -> bool) -> bool {
    /// Null whenever one of its `in_side` columns is (and reads at least one).
    fn strict(e: &Expr, in_side: &dyn Fn(usize) -> bool) -> bool {
        match e {
            Expr::Column { index, .. } => in_side(*index),
            Expr::Cast { expr, .. } | Expr::Negate(expr) => strict(expr, in_side),
            Expr::Binary { op, left, right, .. } if op.is_arithmetic() || *op == BinaryOp::Concat => {
                strict(left, in_side) || strict(right, in_side)
            }
            _ => false,
        }
    }
    match c {
        Expr::Binary { op, left, right, .. } if op.is_comparison() => strict(left, in_side) || strict(right, in_side),
        Expr::Binary { op: BinaryOp::And, left, right, .. } => {
            rejects_nulls(left, in_side) || rejects_nulls(right, in_side)
        }
        Expr::Like { expr, .. } | Expr::InList { expr, .. } => strict(expr, in_side),
        Expr::IsNull { expr, negated: true } => strict(expr, in_side),
        _ => false,
    }
}

/// For a disjunction over both sides: the disjunction of each branch's conditions on `side` alone,
/// if every branch has some (else nothing can be said about that side).
fn derive_side(c: &Expr, nl: usize, side: Sides) -> Option<Expr> {
    let branches = super::simplify::disjuncts(c);
    if branches.len() < 2 {
        return None;
    }
    let mut parts = Vec::with_capacity(branches.len());
    for b in branches {
        let on_side: Vec<Expr> = b.conjuncts().into_iter().filter(|x| sides(x, nl) == side).cloned().collect();
        parts.push(conjunction(on_side)?);
    }
    crate::expr::balanced(BinaryOp::Or, parts)
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
