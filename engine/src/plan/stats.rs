//! Cardinality estimates: how many rows a plan produces, and what its columns look like (distinct
//! values, range, nulls), from Parquet row counts and column statistics. The join order and the
//! choice of build sides come from these numbers.
//!
//! Estimates follow the textbook rules (Selinger's, as in most engines): an equality with a
//! constant keeps `1/distinct` of the rows, a range the fraction of `[min, max]` it covers, an
//! equi-join `|L|·|R| / max(distinct(a), distinct(b))`. Where statistics are missing (strings,
//! CSV files, computed columns) fixed selectivities stand in. They need not be accurate: they
//! need to tell a dimension table from a fact table, and a selective filter from a loose one.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};

use super::{JoinType, LogicalPlan};
use crate::expr::{BinaryOp, Expr};

/// Rows assumed for an input whose size is unknown (CSV and JSON files).
const UNKNOWN_ROWS: f64 = 1e6;
/// Selectivity of a condition nothing is known about.
const DEFAULT_SELECTIVITY: f64 = 0.2;
/// Selectivity of an equality on a column whose distinct values are unknown (strings).
const EQ_SELECTIVITY: f64 = 0.1;
/// Selectivity of a range on a column without a known range.
const RANGE_SELECTIVITY: f64 = 1.0 / 3.0;

/// What a plan is expected to produce.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// Rows.
    pub rows: f64,
    /// One entry per output column.
    pub columns: Vec<ColumnEstimate>,
}

/// What a column is expected to hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColumnEstimate {
    /// Distinct values, if known.
    pub distinct: Option<f64>,
    /// Smallest and largest value as numbers, if known.
    pub min: Option<f64>,
    /// See `min`.
    pub max: Option<f64>,
    /// Share of nulls.
    pub null_fraction: f64,
}

impl Estimate {
    fn unknown(rows: f64, width: usize) -> Estimate {
        Estimate { rows, columns: vec![ColumnEstimate::default(); width] }
    }

    /// Scales to `rows`: a column cannot have more distinct values than there are rows.
    fn with_rows(mut self, rows: f64) -> Estimate {
        let rows = rows.max(1.0);
        for c in &mut self.columns {
            c.distinct = c.distinct.map(|d| d.min(rows));
        }
        self.rows = rows;
        self
    }

    /// Distinct values of an expression over this input: a column's (possibly under a cast), or
    /// unknown.
    pub fn distinct(&self, e: &Expr) -> Option<f64> {
        match e {
            Expr::Column { index, .. } => self.columns.get(*index).and_then(|c| c.distinct),
            Expr::Cast { expr, .. } => self.distinct(expr),
            Expr::Literal(_) => Some(1.0),
            _ => None,
        }
    }

    fn column(&self, e: &Expr) -> Option<(usize, ColumnEstimate)> {
        match e {
            Expr::Column { index, .. } => self.columns.get(*index).map(|c| (*index, *c)),
            Expr::Cast { expr, .. } => self.column(expr),
            _ => None,
        }
    }
}

/// The estimate for a plan.
pub fn estimate(plan: &LogicalPlan) -> Estimate {
    match plan {
        LogicalPlan::Scan { table, projection, .. } => {
            let rows = table.row_count().map_or(UNKNOWN_ROWS, |n| n as f64).max(1.0);
            let stats = table.column_stats();
            let columns = projection
                .iter()
                .map(|&c| {
                    let s = &stats[c];
                    ColumnEstimate {
                        distinct: s.distinct,
                        min: s.min,
                        max: s.max,
                        null_fraction: s.nulls.map_or(0.0, |n| n as f64 / rows),
                    }
                })
                .collect();
            Estimate { rows, columns }
        }
        LogicalPlan::Filter { input, predicate } => filter(estimate(input), predicate),
        LogicalPlan::Shared { input, .. } => estimate(input),
        LogicalPlan::Window { input, schema, .. } => {
            let mut e = estimate(input);
            e.columns.resize(schema.fields().len(), ColumnEstimate::default());
            e
        }
        LogicalPlan::Repeat { input } => {
            let mut e = estimate(input);
            e.columns.pop();
            e
        }
        LogicalPlan::Projection { input, exprs, .. } => {
            let input = estimate(input);
            let columns = exprs.iter().map(|e| input.column(e).map(|(_, c)| c).unwrap_or_default()).collect();
            Estimate { rows: input.rows, columns }
        }
        LogicalPlan::Aggregate { input, group_exprs, aggregates, schema } => {
            let input = estimate(input);
            if group_exprs.is_empty() {
                return Estimate::unknown(1.0, schema.fields().len());
            }
            // Groups: the product of the keys' distinct counts, at most the input rows; a key of
            // unknown distinct count is taken to leave a tenth of the rows.
            let groups = group_exprs
                .iter()
                .map(|e| input.distinct(e).unwrap_or((input.rows * 0.1).max(1.0)))
                .fold(1.0, |acc, d| acc * d)
                .min(input.rows);
            let mut columns: Vec<ColumnEstimate> =
                group_exprs.iter().map(|e| input.column(e).map(|(_, c)| c).unwrap_or_default()).collect();
            let rows_per_group = (input.rows / groups.max(1.0)).max(1.0);
            columns.extend(aggregates.iter().map(|a| aggregate_range(a, &input, rows_per_group)));
            columns.resize(schema.fields().len(), ColumnEstimate::default());
            Estimate { rows: groups, columns }.with_rows(groups)
        }
        LogicalPlan::Sort { input, fetch, .. } => {
            let e = estimate(input);
            match fetch {
                Some(f) => {
                    let rows = e.rows.min(*f as f64);
                    e.with_rows(rows)
                }
                None => e,
            }
        }
        LogicalPlan::Limit { input, fetch, .. } => {
            let e = estimate(input);
            match fetch {
                Some(f) => {
                    let rows = e.rows.min(*f as f64);
                    e.with_rows(rows)
                }
                None => e,
            }
        }
        LogicalPlan::Union { inputs, schema } => {
            let rows = inputs.iter().map(|i| estimate(i).rows).sum();
            Estimate::unknown(rows, schema.fields().len())
        }
        LogicalPlan::Join { left, right, join_type, on, filter: condition, .. } => {
            let (l, r) = (estimate(left), estimate(right));
            join(&l, &r, *join_type, on, condition.as_ref())
        }
    }
}

/// The range of an aggregate's values, from its argument's, so that a HAVING condition can be
/// estimated like a WHERE condition (TPC-H Q18's `sum(l_quantity) > 300` keeps almost no order,
/// which decides which side of the join above builds). `min`, `max` and `avg` stay within the
/// argument's range; a sum over a group of the average size `k` within `k` times it, taken twice as
/// wide on the far side for groups larger than the average; a count between one and twice `k`.
fn aggregate_range(a: &crate::expr::AggregateExpr, input: &Estimate, k: f64) -> ColumnEstimate {
    use crate::expr::AggregateFunction as F;
    let arg = a.arg.as_ref().and_then(|e| input.column(e)).map(|(_, c)| c);
    let range = |min: Option<f64>, max: Option<f64>| ColumnEstimate { min, max, ..ColumnEstimate::default() };
    match (a.func, arg) {
        _ if a.distinct => ColumnEstimate::default(),
        (F::Min | F::Max | F::Avg, Some(c)) => range(c.min, c.max),
        (F::Sum, Some(c)) => {
            let widen = |v: f64, far: bool| if far { 2.0 * k * v } else { k * v };
            range(c.min.map(|v| widen(v, v < 0.0)), c.max.map(|v| widen(v, v > 0.0)))
        }
        (F::CountStar | F::Count, _) => range(Some(if a.func == F::Count { 0.0 } else { 1.0 }), Some(2.0 * k)),
        _ => ColumnEstimate::default(),
    }
}

/// The estimate of a join of `l` and `r`.
pub fn join(l: &Estimate, r: &Estimate, join_type: JoinType, on: &[(Expr, Expr)], filter: Option<&Expr>) -> Estimate {
    let sels: Vec<f64> = on.iter().map(|(a, b)| key_selectivity(l, a, r, b)).collect();
    let inner = l.rows * r.rows * combine(sels);
    let mut columns = l.columns.clone();
    columns.extend(r.columns.iter().copied());
    let both = Estimate { rows: inner, columns };
    let inner = match filter {
        Some(f) => filter_selectivity(f, &both) * inner,
        None => inner,
    };
    let rows = match join_type {
        JoinType::Inner => inner,
        JoinType::Left => inner.max(l.rows),
        JoinType::Right => inner.max(r.rows),
        JoinType::Full => inner.max(l.rows + r.rows),
        // Existence joins keep (some of) the left rows, and their columns.
        JoinType::Semi | JoinType::Anti { .. } | JoinType::Mark { .. } => {
            let kept = match join_type {
                JoinType::Semi => inner.min(l.rows * 0.5),
                JoinType::Anti { .. } => l.rows * 0.5,
                _ => l.rows,
            };
            let mut columns = l.columns.clone();
            if matches!(join_type, JoinType::Mark { .. }) {
                columns.push(ColumnEstimate { distinct: Some(3.0), ..Default::default() });
            }
            return Estimate { rows: kept.max(1.0), columns }.with_rows(kept);
        }
    };
    both.with_rows(rows)
}

/// Selectivity of `a = b` between two inputs: one over the larger distinct count (a key meets its
/// foreign key); a key of unknown distinct count is taken to be unique.
pub fn key_selectivity(l: &Estimate, a: &Expr, r: &Estimate, b: &Expr) -> f64 {
    let da = l.distinct(a).unwrap_or(l.rows).max(1.0);
    let db = r.distinct(b).unwrap_or(r.rows).max(1.0);
    1.0 / da.max(db)
}

/// Several equality selectivities between the same inputs: the most selective counts fully, the
/// next ones less and less (keys that go together, such as a part and its supplier, are not
/// independent; multiplying them would promise far too few rows).
pub fn combine(mut sels: Vec<f64>) -> f64 {
    sels.sort_by(|a, b| a.total_cmp(b));
    let mut out = 1.0;
    let mut weight = 1.0;
    for s in sels {
        out *= s.powf(weight);
        weight /= 4.0;
    }
    out
}

fn filter(input: Estimate, predicate: &Expr) -> Estimate {
    let sel = filter_selectivity(predicate, &input);
    let mut out = input.clone();
    // A column compared with a constant by `=` keeps one value.
    for c in predicate.conjuncts() {
        if let Expr::Binary { op: BinaryOp::Eq, left, right, .. } = c {
            for (col, other) in [(left, right), (right, left)] {
                if let (Some((i, _)), Expr::Literal(_)) = (input.column(col), other.as_ref()) {
                    out.columns[i].distinct = Some(1.0);
                }
            }
        }
    }
    let rows = input.rows * sel;
    out.with_rows(rows)
}

/// The share of `input`'s rows for which `predicate` holds.
pub fn filter_selectivity(predicate: &Expr, input: &Estimate) -> f64 {
    // Conjuncts on one column's range are taken together: `a >= 1 AND a < 5` is one range.
    let mut ranges: Vec<(usize, ColumnEstimate, f64, f64)> = Vec::new();
    let mut sel = 1.0;
    for c in predicate.conjuncts() {
        if let Some((i, col, op, v)) = range_bound(c, input) {
            let (lo, hi) = match op {
                BinaryOp::Lt | BinaryOp::LtEq => (f64::NEG_INFINITY, v),
                _ => (v, f64::INFINITY),
            };
            match ranges.iter_mut().find(|r| r.0 == i) {
                Some(r) => {
                    r.2 = r.2.max(lo);
                    r.3 = r.3.min(hi);
                }
                None => ranges.push((i, col, lo, hi)),
            }
            continue;
        }
        sel *= single(c, input);
    }
    for (_, col, lo, hi) in ranges {
        let (Some(min), Some(max)) = (col.min, col.max) else {
            sel *= RANGE_SELECTIVITY;
            continue;
        };
        let (lo, hi) = (lo.max(min), hi.min(max));
        sel *= if hi < lo {
            0.0
        } else if max > min {
            // A range of one value still holds rows: count it as one step of the column.
            let step = col.distinct.map_or(0.0, |d| (max - min) / d.max(1.0));
            ((hi - lo + step) / (max - min + step)).clamp(0.0, 1.0)
        } else {
            1.0
        };
    }
    // Never promise nothing: an estimate of zero rows would make anything look free.
    sel.clamp(1e-6, 1.0)
}

/// `column op constant` with a numeric constant and a range operator.
fn range_bound(c: &Expr, input: &Estimate) -> Option<(usize, ColumnEstimate, BinaryOp, f64)> {
    let Expr::Binary { op, left, right, .. } = c else { return None };
    if !matches!(op, BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq) {
        return None;
    }
    let (col, value, op) = match (input.column(left), number(right)) {
        (Some(col), Some(v)) => (col, v, *op),
        _ => match (input.column(right), number(left)) {
            (Some(col), Some(v)) => (col, v, op.swap()),
            _ => return None,
        },
    };
    Some((col.0, col.1, op, value))
}

/// A numeric constant as statistics hold it (dates in days, decimals as numbers).
fn number(e: &Expr) -> Option<f64> {
    let Expr::Literal(a) = e else { return None };
    if a.is_null(0) {
        return None;
    }
    let a = match a.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            arrow::compute::cast(a, &DataType::Int64).ok()?
        }
        t if crate::expr::types::is_numeric(t) => a.clone(),
        _ => return None,
    };
    let f = arrow::compute::cast(&a, &DataType::Float64).ok()?;
    Some(f.as_primitive::<Float64Type>().value(0))
}

/// Selectivity of one condition (not a conjunction).
fn single(c: &Expr, input: &Estimate) -> f64 {
    let eq = |col: &Expr| -> f64 { input.distinct(col).map_or(EQ_SELECTIVITY, |d| 1.0 / d.max(1.0)) };
    match c {
        Expr::Literal(a) if a.data_type() == &DataType::Boolean => {
            let b = a.as_boolean();
            if b.is_valid(0) && b.value(0) {
                1.0
            } else {
                0.0
            }
        }
        Expr::Binary { op: BinaryOp::And, .. } => filter_selectivity(c, input),
        Expr::Binary { op: BinaryOp::Or, left, right, .. } => {
            let (a, b) = (filter_selectivity(left, input), filter_selectivity(right, input));
            (a + b - a * b).min(1.0)
        }
        Expr::Not(inner) => 1.0 - filter_selectivity(inner, input),
        Expr::Binary { op: BinaryOp::Eq, left, right, .. } => match (left.as_ref(), right.as_ref()) {
            (Expr::Literal(_), e) | (e, Expr::Literal(_)) => eq(e),
            (a, b) => match (input.distinct(a), input.distinct(b)) {
                (Some(x), Some(y)) => 1.0 / x.max(y).max(1.0),
                (Some(d), None) | (None, Some(d)) => 1.0 / d.max(1.0),
                (None, None) => EQ_SELECTIVITY,
            },
        },
        Expr::Binary { op: BinaryOp::NotEq, left, right, .. } => match (left.as_ref(), right.as_ref()) {
            (Expr::Literal(_), e) | (e, Expr::Literal(_)) => 1.0 - eq(e),
            _ => 1.0 - EQ_SELECTIVITY,
        },
        Expr::Binary { op, .. } if op.is_comparison() => RANGE_SELECTIVITY,
        Expr::InList { expr, list, negated } => {
            let s = (list.len() as f64 * eq(expr)).min(1.0);
            if *negated {
                1.0 - s
            } else {
                s
            }
        }
        Expr::Like { negated, .. } => {
            if *negated {
                1.0 - EQ_SELECTIVITY
            } else {
                EQ_SELECTIVITY
            }
        }
        Expr::IsNull { expr, negated } => {
            let nulls = input.column(expr).map_or(0.05, |(_, c)| c.null_fraction);
            if *negated {
                1.0 - nulls
            } else {
                nulls
            }
        }
        _ => DEFAULT_SELECTIVITY,
    }
}
