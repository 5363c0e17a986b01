//! Window functions in SQL: `f(...) OVER (PARTITION BY .. ORDER BY .. frame)` in the select list
//! (and ORDER BY), planned into window operators after grouping and HAVING.
//!
//! Functions over the same partitioning and ordering share one operator (one sort). A frame
//! that ends at `UNBOUNDED FOLLOWING` and starts elsewhere is turned around: the same frame over
//! the reversed ordering ends at the current row, which the operator computes moving forward only.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use sqlparser::ast;

use crate::error::{Error, Result};
use crate::expr::window::{FrameBound, FrameUnits, WindowExpr, WindowFrame, WindowFunction};
use crate::expr::Expr;
use crate::plan::{LogicalPlan, SortKey};

/// A window function call found in an expression, over the query's input (before grouping).
#[derive(Debug, Clone)]
pub(crate) struct WindowItem {
    pub expr: WindowExpr,
    pub partition_by: Vec<Expr>,
    /// Ordering keys: expression, descending, nulls first.
    pub order_by: Vec<(Expr, bool, bool)>,
}

/// A frame bound's offset: a non-negative constant.
fn offset(e: &ast::Expr, units: FrameUnits, planner: &super::expr::ExprPlanner<'_>) -> Result<f64> {
    let planned = crate::plan::simplify_expr(&planner.plan(e)?, &Schema::empty());
    let Expr::Literal(a) = &planned else {
        return Err(Error::NotSupported(format!("a window frame offset that is not a constant ({e})")));
    };
    let value = match a.data_type() {
        DataType::Interval(_) => {
            // Days of an interval, for RANGE over dates.
            let i = a.as_any().downcast_ref::<arrow::array::IntervalMonthDayNanoArray>().expect("an interval").value(0);
            if i.months != 0 || i.nanoseconds != 0 {
                return Err(Error::NotSupported(format!("a RANGE offset in months or hours ({e})")));
            }
            i.days as f64
        }
        t if crate::expr::types::is_numeric(t) => {
            let f = arrow::compute::cast(a, &DataType::Float64)?;
            arrow::array::AsArray::as_primitive::<arrow::datatypes::Float64Type>(&f).value(0)
        }
        other => {
            return Err(Error::Plan(format!(
                "a window frame offset must be a number, got {}",
                crate::expr::types::sql_type_name(other)
            )))
        }
    };
    if value < 0.0 || value.is_nan() {
        return Err(Error::Plan(format!("a window frame offset cannot be negative ({e})")));
    }
    if units == FrameUnits::Rows && value.fract() != 0.0 {
        return Err(Error::Plan(format!("a ROWS offset must be a whole number ({e})")));
    }
    Ok(value)
}

/// Plans `name(args) OVER (...)`.
pub(crate) fn plan_window_call(
    name: &str,
    f: &ast::Function,
    planner: &super::expr::ExprPlanner<'_>,
    schema: &Schema,
) -> Result<WindowItem> {
    let spec = match f.over.as_ref().expect("a window call") {
        ast::WindowType::WindowSpec(spec) => spec,
        ast::WindowType::NamedWindow(n) => return Err(Error::NotSupported(format!("named window {n}"))),
    };
    if spec.window_name.is_some() {
        return Err(Error::NotSupported("named windows".into()));
    }
    if f.null_treatment.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
        return Err(Error::NotSupported(format!("{name}() OVER with IGNORE NULLS / FILTER / WITHIN GROUP")));
    }
    let func = WindowFunction::by_name(name).ok_or_else(|| Error::NotSupported(format!("window function {name}()")))?;
    let list = match &f.args {
        ast::FunctionArguments::List(list) => Some(list),
        _ => None,
    };
    if list.is_some_and(|l| l.duplicate_treatment == Some(ast::DuplicateTreatment::Distinct)) {
        return Err(Error::NotSupported(format!("{name}(DISTINCT ...) OVER")));
    }
    let mut args = Vec::new();
    let mut func = func;
    for a in list.map(|l| l.args.as_slice()).unwrap_or(&[]) {
        match a {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => args.push(planner.plan(e)?),
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard)
                if func == WindowFunction::Aggregate(crate::expr::AggregateFunction::Count) =>
            {
                func = WindowFunction::Aggregate(crate::expr::AggregateFunction::CountStar);
            }
            other => return Err(Error::NotSupported(format!("argument {other} of {name}() OVER"))),
        }
    }
    let arity = |lo: usize, hi: usize| -> Result<()> {
        if args.len() < lo || args.len() > hi {
            return Err(Error::Plan(format!("{name}() OVER takes {lo} to {hi} arguments, got {}", args.len())));
        }
        Ok(())
    };
    use crate::expr::AggregateFunction as A;
    match func {
        WindowFunction::RowNumber
        | WindowFunction::Rank
        | WindowFunction::DenseRank
        | WindowFunction::PercentRank
        | WindowFunction::CumeDist => arity(0, 0)?,
        WindowFunction::Ntile => arity(1, 1)?,
        WindowFunction::Lag | WindowFunction::Lead => arity(1, 3)?,
        WindowFunction::FirstValue | WindowFunction::LastValue => arity(1, 1)?,
        WindowFunction::NthValue => arity(2, 2)?,
        WindowFunction::Aggregate(A::CountStar) => arity(0, 0)?,
        WindowFunction::Aggregate(A::Count | A::Sum | A::Avg | A::Min | A::Max) => arity(1, 1)?,
        WindowFunction::Aggregate(other) => {
            return Err(Error::NotSupported(format!("{}() as a window function", other.name())))
        }
    }
    let types: Vec<DataType> = args.iter().map(|a| a.data_type(schema)).collect();
    let data_type = func.return_type(&types)?;
    let partition_by = spec.partition_by.iter().map(|e| planner.plan(e)).collect::<Result<Vec<_>>>()?;
    let mut order_by = Vec::new();
    for item in &spec.order_by {
        let desc = matches!(item.options.sort, Some(ast::OrderBySort::Desc));
        order_by.push((planner.plan(&item.expr)?, desc, item.options.nulls_first.unwrap_or(false)));
    }
    let frame = match &spec.window_frame {
        None => WindowFrame::default_for(!order_by.is_empty()),
        Some(frame) => {
            let units = match frame.units {
                ast::WindowFrameUnits::Rows => FrameUnits::Rows,
                ast::WindowFrameUnits::Range => FrameUnits::Range,
                ast::WindowFrameUnits::Groups => return Err(Error::NotSupported("GROUPS frames".into())),
            };
            let bound = |b: &ast::WindowFrameBound| -> Result<FrameBound> {
                Ok(match b {
                    ast::WindowFrameBound::CurrentRow => FrameBound::CurrentRow,
                    ast::WindowFrameBound::Preceding(None) => FrameBound::UnboundedPreceding,
                    ast::WindowFrameBound::Following(None) => FrameBound::UnboundedFollowing,
                    ast::WindowFrameBound::Preceding(Some(e)) => FrameBound::Preceding(offset(e, units, planner)?),
                    ast::WindowFrameBound::Following(Some(e)) => FrameBound::Following(offset(e, units, planner)?),
                })
            };
            let start = bound(&frame.start_bound)?;
            let end = frame.end_bound.as_ref().map(bound).transpose()?.unwrap_or(FrameBound::CurrentRow);
            if matches!(start, FrameBound::UnboundedFollowing) || matches!(end, FrameBound::UnboundedPreceding) {
                return Err(Error::Plan(
                    "a window frame cannot start at UNBOUNDED FOLLOWING or end at UNBOUNDED PRECEDING".into(),
                ));
            }
            let offsets =
                [&start, &end].iter().any(|b| matches!(b, FrameBound::Preceding(_) | FrameBound::Following(_)));
            if units == FrameUnits::Range && offsets {
                let ok = order_by.len() == 1 && {
                    let t = order_by[0].0.data_type(schema);
                    crate::expr::types::is_numeric(&t) || matches!(t, DataType::Date32)
                };
                if !ok {
                    return Err(Error::Plan(
                        "RANGE with an offset needs exactly one ORDER BY key, a number or a date".into(),
                    ));
                }
            }
            WindowFrame { units, start, end }
        }
    };
    Ok(WindowItem { expr: WindowExpr { func, args, frame, data_type }, partition_by, order_by })
}

/// Adds window operators for `items` above `plan` (whose columns the items' expressions read
/// after `rewrite`). Returns the new plan (the old columns first) and, for each item, the column
/// holding its result.
pub(crate) fn plan_windows(
    mut plan: LogicalPlan,
    items: Vec<WindowItem>,
    rewrite: &dyn Fn(&Expr) -> Result<Expr>,
) -> Result<(LogicalPlan, Vec<Expr>)> {
    // Over the plan: rewritten, and a frame ending at UNBOUNDED FOLLOWING turned around.
    let mut normalized = Vec::with_capacity(items.len());
    for item in items {
        let mut expr = item.expr;
        expr.args = expr.args.iter().map(rewrite).collect::<Result<_>>()?;
        let partition_by: Vec<Expr> = item.partition_by.iter().map(rewrite).collect::<Result<_>>()?;
        let mut order_by: Vec<(Expr, bool, bool)> =
            item.order_by.iter().map(|(e, d, n)| Ok((rewrite(e)?, *d, *n))).collect::<Result<_>>()?;
        if expr.func.uses_frame()
            && expr.frame.end == FrameBound::UnboundedFollowing
            && expr.frame.start != FrameBound::UnboundedPreceding
        {
            expr.frame = expr.frame.reversed();
            order_by = order_by.into_iter().map(|(e, d, n)| (e, !d, !n)).collect();
        }
        normalized.push((expr, partition_by, order_by));
    }
    // One operator per partitioning and ordering: its keys and the functions it computes.
    type Group = (Vec<Expr>, Vec<(Expr, bool, bool)>, Vec<usize>);
    let mut groups: Vec<Group> = Vec::new();
    for (i, (_, p, o)) in normalized.iter().enumerate() {
        match groups.iter_mut().find(|g| &g.0 == p && &g.1 == o) {
            Some(g) => g.2.push(i),
            None => groups.push((p.clone(), o.clone(), vec![i])),
        }
    }
    let mut columns = vec![None; normalized.len()];
    for (partition, order, members) in groups {
        // Keys that are not columns become columns first.
        let schema = plan.schema();
        let mut exprs: Vec<Expr> =
            (0..schema.fields().len()).map(|i| Expr::column(i, schema.field(i).name())).collect();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut key_column = |e: &Expr| -> usize {
            if let Expr::Column { index, .. } = e {
                return *index;
            }
            if let Some(i) = exprs.iter().position(|x| x == e) {
                return i;
            }
            fields.push(Field::new(format!("__window_key_{}", exprs.len()), e.data_type(&schema), true));
            exprs.push(e.clone());
            exprs.len() - 1
        };
        let partition_by: Vec<usize> = partition.iter().map(&mut key_column).collect();
        let order_by: Vec<SortKey> =
            order.iter().map(|(e, d, n)| SortKey { column: key_column(e), descending: *d, nulls_first: *n }).collect();
        if exprs.len() > schema.fields().len() {
            plan = LogicalPlan::Projection { input: Box::new(plan), exprs, schema: Arc::new(Schema::new(fields)) };
        }
        let schema = plan.schema();
        let width = schema.fields().len();
        let functions: Vec<WindowExpr> = members.iter().map(|&i| normalized[i].0.clone()).collect();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (k, f) in functions.iter().enumerate() {
            fields.push(Field::new(format!("__window_{}_{}", width + k, f.func.name()), f.data_type.clone(), true));
        }
        for (k, &i) in members.iter().enumerate() {
            columns[i] = Some(width + k);
        }
        plan = LogicalPlan::Window {
            input: Box::new(plan),
            partition_by,
            order_by,
            functions,
            schema: Arc::new(Schema::new(fields)),
        };
    }
    let schema = plan.schema();
    let values = columns
        .into_iter()
        .map(|c| {
            let c = c.expect("every window function planned");
            Expr::column(c, schema.field(c).name())
        })
        .collect();
    Ok((plan, values))
}

/// `expr` with each window placeholder replaced by its column.
pub(crate) fn replace_refs(expr: &Expr, values: &[Expr]) -> Result<Expr> {
    expr.transform(&mut |e| match e {
        Expr::WindowRef { index, .. } => Ok(values[index].clone()),
        other => Ok(other),
    })
}
