//! Expression simplification, run on every expression of a plan before the other passes:
//! constant folding (`date '1998-12-01' - interval '90' day` becomes one timestamp), boolean
//! identities (`x AND true`), and comparisons of a column under a widening cast with a constant
//! turned into comparisons of the column itself (`CAST(l_shipdate AS TIMESTAMP) <= TIMESTAMP
//! '1998-09-02'` becomes `l_shipdate <= DATE '1998-09-02'`), which row-group pruning can use and
//! which cost no cast per row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Date32Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Schema, TimeUnit, TimestampMicrosecondType};

use super::LogicalPlan;
use crate::expr::{BinaryOp, Expr};

/// Simplifies every expression of the plan.
pub fn simplify_plan(plan: LogicalPlan) -> LogicalPlan {
    plan.transform_up(&mut |node| {
        let schema = match &node {
            LogicalPlan::Filter { input, .. }
            | LogicalPlan::Projection { input, .. }
            | LogicalPlan::Aggregate { input, .. } => input.schema(),
            LogicalPlan::Join { schema, .. } => schema.clone(),
            _ => return node,
        };
        match node {
            // Join keys are over one side each: simplified without the cast rewrite.
            LogicalPlan::Join { left, right, join_type, on, filter, schema } => {
                let none = Schema::empty();
                let on = on.into_iter().map(|(l, r)| (simplify_expr(&l, &none), simplify_expr(&r, &none))).collect();
                let filter = filter.map(|f| simplify_expr(&f, &schema));
                LogicalPlan::Join { left, right, join_type, on, filter, schema }
            }
            node => node.map_exprs(&mut |e| simplify_expr(&e, &schema)),
        }
    })
}

/// The expression over `input` with constant parts folded and the rewrites above applied.
#[recursive::recursive]
pub fn simplify_expr(e: &Expr, input: &Schema) -> Expr {
    let e = match e.map_children(&mut |c| Ok(simplify_expr(c, input))) {
        Ok(e) => e,
        Err(_) => e.clone(),
    };
    let e = simplify_node(e, input);
    fold(e)
}

/// Evaluates an expression that reads no column into a literal. Expressions that fail (a division
/// by zero, a cast that does not fit) are left as they are: the error belongs to the rows that
/// reach them, if any do. Its children are folded already, so it is constant when they are all
/// literals (looking no deeper keeps simplification linear in the size of the expression).
fn fold(e: Expr) -> Expr {
    if matches!(e, Expr::Literal(_)) || !is_constant(&e) {
        return e;
    }
    let one_row = match RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    ) {
        Ok(b) => b,
        Err(_) => return e,
    };
    match e.evaluate(&one_row).and_then(|v| v.into_array(1)) {
        Ok(a) if a.len() == 1 => Expr::Literal(a),
        _ => e,
    }
}

/// True when a node whose children are folded reads nothing but constants: it is no column and
/// no placeholder (aggregates and subquery results are filled in later), and its children are
/// all literals.
fn is_constant(e: &Expr) -> bool {
    let placeholder = matches!(
        e,
        Expr::Column { .. }
            | Expr::AggregateRef { .. }
            | Expr::Subquery { .. }
            | Expr::OuterColumn { .. }
            | Expr::WindowRef { .. }
    );
    let mut literals = true;
    e.for_each_child(&mut |c| literals &= matches!(c, Expr::Literal(_)));
    !placeholder && literals
}

fn boolean_literal(e: &Expr) -> Option<Option<bool>> {
    match e {
        Expr::Literal(a) if a.data_type() == &DataType::Boolean => {
            let b = a.as_boolean();
            Some(b.is_valid(0).then(|| b.value(0)))
        }
        _ => None,
    }
}

fn bool_lit(v: bool) -> Expr {
    Expr::Literal(Arc::new(BooleanArray::from(vec![v])))
}

fn simplify_node(e: Expr, input: &Schema) -> Expr {
    match e {
        Expr::Binary { op: BinaryOp::And, left, right, data_type } => {
            match (boolean_literal(&left), boolean_literal(&right)) {
                (Some(Some(true)), _) => *right,
                (_, Some(Some(true))) => *left,
                (Some(Some(false)), _) | (_, Some(Some(false))) => bool_lit(false),
                _ => Expr::Binary { op: BinaryOp::And, left, right, data_type },
            }
        }
        Expr::Binary { op: BinaryOp::Or, left, right, data_type } => {
            match (boolean_literal(&left), boolean_literal(&right)) {
                (Some(Some(false)), _) => *right,
                (_, Some(Some(false))) => *left,
                (Some(Some(true)), _) | (_, Some(Some(true))) => bool_lit(true),
                _ => factor_or(Expr::Binary { op: BinaryOp::Or, left, right, data_type }),
            }
        }
        Expr::Not(inner) => match *inner {
            Expr::Not(x) => *x,
            other => Expr::Not(Box::new(other)),
        },
        Expr::Binary { op, left, right, data_type } if op.is_comparison() => {
            let unwrapped = unwrap_date_cast(op, &left, &right, input)
                .or_else(|| unwrap_date_cast(op.swap(), &right, &left, input));
            match unwrapped {
                Some(e) => e,
                None => Expr::Binary { op, left, right, data_type },
            }
        }
        other => other,
    }
}

/// The disjuncts of `a OR b OR ...`.
pub fn disjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Binary { op: BinaryOp::Or, left, right, .. } => {
            let mut v = disjuncts(left);
            v.extend(disjuncts(right));
            v
        }
        other => vec![other],
    }
}

/// `(x AND a) OR (x AND b)` is `x AND (a OR b)`: conditions every branch of a disjunction has are
/// taken out of it, so a join key written in each branch (TPC-H Q19) is a join key.
fn factor_or(e: Expr) -> Expr {
    let branches: Vec<Vec<&Expr>> = disjuncts(&e).into_iter().map(|d| d.conjuncts()).collect();
    let common: Vec<Expr> =
        branches[0].iter().filter(|c| branches[1..].iter().all(|b| b.contains(c))).map(|c| (*c).clone()).collect();
    if common.is_empty() {
        return e;
    }
    let rest: Vec<Expr> = branches
        .iter()
        .map(|b| {
            let left: Vec<Expr> = b.iter().filter(|c| !common.contains(c)).map(|c| (*c).clone()).collect();
            super::conjunction(left).unwrap_or_else(|| bool_lit(true))
        })
        .collect();
    // A branch left with nothing is true, and so is the disjunction.
    let or = if rest.iter().any(|r| boolean_literal(r) == Some(Some(true))) {
        None
    } else {
        crate::expr::balanced(BinaryOp::Or, rest)
    };
    super::conjunction(common.into_iter().chain(or).collect()).expect("common conditions")
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// `CAST(d AS TIMESTAMP) op t`, with `d` a date and `t` a timestamp constant, as a comparison of
/// `d` with a date: `<= t` is `<= floor(t)`, `< t` is `< ceil(t)`, `>= t` is `>= ceil(t)`, `> t`
/// is `> floor(t)`, `= t` holds only when `t` is a midnight.
fn unwrap_date_cast(op: BinaryOp, column: &Expr, constant: &Expr, input: &Schema) -> Option<Expr> {
    let Expr::Cast { expr: inner, to: DataType::Timestamp(TimeUnit::Microsecond, None) } = column else {
        return None;
    };
    let Expr::Literal(value) = constant else { return None };
    if !matches!(value.data_type(), DataType::Timestamp(TimeUnit::Microsecond, None)) || value.is_null(0) {
        return None;
    }
    let mut reads_columns = false;
    inner.visit_columns(&mut |c| reads_columns |= c < input.fields().len());
    if !reads_columns || inner.data_type(input) != DataType::Date32 {
        return None;
    }
    let micros = value.as_primitive::<TimestampMicrosecondType>().value(0);
    let floor = micros.div_euclid(MICROS_PER_DAY);
    let exact = micros.rem_euclid(MICROS_PER_DAY) == 0;
    let ceil = if exact { floor } else { floor + 1 };
    let (op, day) = match op {
        BinaryOp::LtEq => (BinaryOp::LtEq, floor),
        BinaryOp::Lt => (BinaryOp::Lt, ceil),
        BinaryOp::GtEq => (BinaryOp::GtEq, ceil),
        BinaryOp::Gt => (BinaryOp::Gt, floor),
        BinaryOp::Eq if exact => (BinaryOp::Eq, floor),
        BinaryOp::NotEq if exact => (BinaryOp::NotEq, floor),
        _ => return None,
    };
    let day = i32::try_from(day).ok()?;
    let date: ArrayRef = Arc::new(Date32Array::from(vec![day]));
    Some(Expr::Binary { op, left: inner.clone(), right: Box::new(Expr::Literal(date)), data_type: DataType::Boolean })
}
