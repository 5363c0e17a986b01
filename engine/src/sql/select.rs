//! SELECT: FROM, WHERE, the select list, grouping, HAVING, window functions, and the ORDER BY
//! over them.

use super::*;

/// ORDER BY over a select: a key that names an output column (alias, or ordinal) sorts by it;
/// any other expression is evaluated over the select's input as a hidden column, dropped after
/// the sort.
pub(super) fn plan_order_by(
    mut select: SelectPlan,
    order_by: &ast::OrderBy,
    fetch: Option<usize>,
) -> Result<LogicalPlan> {
    let items = match &order_by.kind {
        ast::OrderByKind::Expressions(items) => items,
        ast::OrderByKind::All(_) => return Err(Error::NotSupported("ORDER BY ALL".into())),
    };
    if order_by.interpolate.is_some() {
        return Err(Error::NotSupported("ORDER BY ... INTERPOLATE".into()));
    }
    let visible = select.fields.iter().filter(|f| !f.name().starts_with("__sort_")).count();
    let mut keys = Vec::new();
    for item in items {
        if item.with_fill.is_some() {
            return Err(Error::NotSupported("ORDER BY ... WITH FILL".into()));
        }
        let descending = match item.options.sort {
            None | Some(ast::OrderBySort::Asc) => false,
            Some(ast::OrderBySort::Desc) => true,
            Some(ast::OrderBySort::Using(_)) => return Err(Error::NotSupported("ORDER BY ... USING".into())),
        };
        let nulls_first = item.options.nulls_first.unwrap_or(false);
        let planned_with_select = select.order.get(keys.len()).copied().flatten();
        let column = match &item.expr {
            _ if planned_with_select.is_some() => planned_with_select.unwrap(),
            // An integer is a position; another number is a constant, as in DuckDB.
            ast::Expr::Value(v) if is_integer(&v.value) => {
                let n = count_literal(&item.expr, "ORDER BY")?.unwrap_or(0);
                if n == 0 || n > visible {
                    return Err(Error::Plan(format!(
                        "ORDER BY position {n} is not in the select list (1 to {visible})"
                    )));
                }
                n - 1
            }
            ast::Expr::Identifier(id) if select.output_column(&id.value).is_some() => {
                select.output_column(&id.value).unwrap()
            }
            other => {
                let planner = ExprPlanner::new(&select.scope, select.input.schema());
                let expr = planner.plan(other)?;
                match select.exprs.iter().position(|e| e == &expr) {
                    Some(i) => i,
                    None => {
                        let schema = select.input.schema();
                        select.fields.push(Field::new(
                            format!("__sort_{}", keys.len()),
                            expr.data_type(&schema),
                            expr.nullable(&schema),
                        ));
                        select.exprs.push(expr);
                        select.exprs.len() - 1
                    }
                }
            }
        };
        keys.push(SortKey { column, descending, nulls_first });
    }
    let fields = select.fields[..visible].to_vec();
    let sorted = LogicalPlan::Sort { input: Box::new(select.project()), keys, fetch };
    if sorted.schema().fields().len() == visible {
        return Ok(sorted);
    }
    let schema = sorted.schema();
    let exprs = (0..visible).map(|i| crate::expr::Expr::column(i, schema.field(i).name())).collect();
    Ok(LogicalPlan::Projection { input: Box::new(sorted), exprs, schema: Arc::new(Schema::new(fields)) })
}

/// A planned SELECT before its projection is built, so ORDER BY can add hidden columns.
pub(super) struct SelectPlan {
    input: LogicalPlan,
    scope: Scope,
    exprs: Vec<crate::expr::Expr>,
    fields: Vec<Field>,
    /// For each ORDER BY item planned with the select list (an expression that is not an output
    /// name or position, in a query that may aggregate): its column among `exprs`.
    order: Vec<Option<usize>>,
}

impl SelectPlan {
    /// Every column of `plan`, as they are (the output of a set operation, which ORDER BY then
    /// refers to by name or position).
    pub(super) fn over(plan: LogicalPlan) -> Result<SelectPlan> {
        let schema = plan.schema();
        let scope = Scope::new(&schema, None, None)?;
        let exprs = schema.fields().iter().enumerate().map(|(i, f)| Expr::column(i, f.name())).collect();
        let fields = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        Ok(SelectPlan { input: plan, scope, exprs, fields, order: Vec::new() })
    }

    pub(super) fn project(self) -> LogicalPlan {
        let schema = Arc::new(Schema::new(self.fields));
        LogicalPlan::Projection { input: Box::new(self.input), exprs: self.exprs, schema }
    }

    /// The output column an ORDER BY name refers to (exact name first, then case-insensitive).
    fn output_column(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|f| f.name() == name)
            .or_else(|| self.fields.iter().position(|f| f.name().eq_ignore_ascii_case(name)))
    }
}

/// Plans a SELECT (`order_by`: the query's ORDER BY items, planned with the select list where
/// they are expressions over its input): FROM, WHERE, the select list, then grouping (GROUP BY,
/// aggregates, HAVING, DISTINCT) and window functions.
pub(super) fn plan_select(select: &ast::Select, ctx: Ctx<'_>, order_by: &[ast::OrderByExpr]) -> Result<SelectPlan> {
    let (distinct, group_asts) = select_shape(select)?;
    let (plan, scope) = plan_from(&select.from, ctx)?;
    let mut plan = match &select.selection {
        Some(selection) => plan_where(plan, &scope, selection, ctx)?,
        None => plan,
    };
    let aggregates = std::cell::RefCell::new(Vec::new());
    let subqueries = std::cell::RefCell::new(Vec::new());
    let windows = std::cell::RefCell::new(Vec::new());
    let planner = ExprPlanner::with_aggregates(&scope, plan.schema(), &aggregates)
        .with_outer(ctx.outer)
        .with_subqueries(ctx.catalog, &subqueries)
        .with_windows(&windows);
    let mut items = plan_items(select, &scope, &planner)?;
    let order = if distinct { vec![None; order_by.len()] } else { plan_order_items(order_by, &planner, &mut items)? };
    let having = select.having.as_ref().map(|h| planner.plan_predicate(h, "HAVING")).transpose()?;
    drop(planner);
    if having.as_ref().is_some_and(has_window) {
        return Err(Error::Plan("window functions are not allowed in HAVING (hint: use a subquery)".into()));
    }
    let windows = windows.into_inner();
    let mut subqueries: Vec<Option<subquery::SubqueryItem>> = subqueries.into_inner().into_iter().map(Some).collect();
    let aggregates = aggregates.into_inner();
    let grouped = !group_asts.is_empty() || !aggregates.is_empty() || having.is_some();
    if grouped && distinct {
        return Err(Error::NotSupported("SELECT DISTINCT with GROUP BY or aggregates".into()));
    }
    if grouped {
        let grouping = Grouping { select, group_asts, distinct, aggregates, having, windows };
        return plan_grouped(plan, scope, items, order, grouping, &mut subqueries, ctx);
    }
    let Items { mut exprs, fields } = items;
    if !subqueries.is_empty() {
        // Subqueries in the select list: joined to the input for their values.
        let schema = plan.schema();
        let same = |i: usize| Ok(Expr::column(i, schema.field(i).name()));
        (plan, exprs) = join_values(plan, exprs, &mut subqueries, &same)?;
    }
    if !windows.is_empty() {
        let same = |e: &Expr| Ok(e.clone());
        let (p, values) = window::plan_windows(plan, windows, &same)?;
        plan = p;
        exprs = exprs.iter().map(|e| window::replace_refs(e, &values)).collect::<Result<_>>()?;
    }
    let items = Items { exprs, fields };
    if distinct {
        // SELECT DISTINCT groups by its items, once their subqueries and windows are computed.
        let grouping =
            Grouping { select, group_asts, distinct, aggregates: Vec::new(), having: None, windows: Vec::new() };
        return plan_grouped(plan, scope, items, order, grouping, &mut [], ctx);
    }
    Ok(SelectPlan { input: plan, scope, exprs: items.exprs, fields: items.fields, order })
}

/// Whether the SELECT is DISTINCT, and its GROUP BY expressions; an error for the clauses flow
/// does not plan.
fn select_shape(select: &ast::Select) -> Result<(bool, &[ast::Expr])> {
    let distinct = match &select.distinct {
        None | Some(ast::Distinct::All) => false,
        Some(ast::Distinct::Distinct) => true,
        Some(_) => return Err(Error::NotSupported("SELECT DISTINCT ON".into())),
    };
    if select.top.is_some() || select.into.is_some() {
        return Err(Error::NotSupported("TOP / INTO".into()));
    }
    let group_asts: &[ast::Expr] = match &select.group_by {
        ast::GroupByExpr::Expressions(e, m) if m.is_empty() => e,
        _ => return Err(Error::NotSupported("GROUP BY ALL / ROLLUP / CUBE / GROUPING SETS".into())),
    };
    if select.qualify.is_some() || !select.named_window.is_empty() {
        return Err(Error::NotSupported("window functions".into()));
    }
    if !select.sort_by.is_empty() || !select.cluster_by.is_empty() || !select.distribute_by.is_empty() {
        return Err(Error::NotSupported("SORT BY / CLUSTER BY".into()));
    }
    if !select.lateral_views.is_empty() || select.prewhere.is_some() || !select.connect_by.is_empty() {
        return Err(Error::NotSupported("LATERAL VIEW / PREWHERE / CONNECT BY".into()));
    }
    if select.from.is_empty() {
        return Err(Error::NotSupported("SELECT without FROM".into()));
    }
    Ok((distinct, group_asts))
}

/// `plan` filtered by a WHERE condition; its subqueries become joins.
fn plan_where(plan: LogicalPlan, scope: &Scope, selection: &ast::Expr, ctx: Ctx<'_>) -> Result<LogicalPlan> {
    let subqueries = std::cell::RefCell::new(Vec::new());
    let planner =
        ExprPlanner::new(scope, plan.schema()).with_outer(ctx.outer).with_subqueries(ctx.catalog, &subqueries);
    let predicate = planner.plan_predicate(selection, "WHERE")?;
    drop(planner);
    let subqueries = subqueries.into_inner();
    if subqueries.is_empty() {
        return Ok(LogicalPlan::Filter { input: Box::new(plan), predicate });
    }
    let schema = plan.schema();
    let same = |i: usize| Ok(Expr::column(i, schema.field(i).name()));
    let mut subqueries: Vec<_> = subqueries.into_iter().map(Some).collect();
    subquery::apply_where(plan, predicate, &mut subqueries, &same)
}

/// The select list planned over the input: an expression and an output field per column.
struct Items {
    exprs: Vec<Expr>,
    fields: Vec<Field>,
}

impl Items {
    fn push(&mut self, expr: Expr, name: &str, input: &Schema) {
        self.fields.push(Field::new(name, expr.data_type(input), expr.nullable(input)));
        self.exprs.push(expr);
    }

    /// Input column `i` under its name in `scope`.
    fn push_column(&mut self, i: usize, scope: &Scope, input: &Schema) {
        self.exprs.push(Expr::column(i, scope.name(i)));
        self.fields.push(input.field(i).clone().with_name(scope.name(i)));
    }
}

/// Plans the select list: expressions (aggregates and window functions go to the planner's lists)
/// and stars.
fn plan_items(select: &ast::Select, scope: &Scope, planner: &ExprPlanner<'_>) -> Result<Items> {
    let input = planner.schema();
    let mut items = Items { exprs: Vec::new(), fields: Vec::new() };
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => items.push(planner.plan(e)?, &output_name(e), &input),
            SelectItem::ExprWithAlias { expr, alias } => items.push(planner.plan(expr)?, &alias.value, &input),
            SelectItem::Wildcard(options) => {
                if options.opt_exclude.is_some() || options.opt_replace.is_some() || options.opt_rename.is_some() {
                    return Err(Error::NotSupported("* EXCLUDE / REPLACE / RENAME".into()));
                }
                for i in scope.star() {
                    items.push_column(i, scope, &input);
                }
            }
            SelectItem::QualifiedWildcard(kind, _) => {
                let name = kind.to_string();
                let columns = scope.columns_of(&name);
                if columns.is_empty() {
                    return Err(Error::Plan(format!("no table named '{name}' in FROM")));
                }
                for i in columns {
                    items.push_column(i, scope, &input);
                }
            }
            other => return Err(Error::NotSupported(format!("select item {other}"))),
        }
    }
    Ok(items)
}

/// ORDER BY items that are not output names or positions, planned with the select list (as
/// hidden columns), so they may aggregate (`ORDER BY sum(x)`) and group keys resolve: for each
/// item, its column among the items (`None`: ORDER BY plans it itself).
fn plan_order_items(
    order_by: &[ast::OrderByExpr],
    planner: &ExprPlanner<'_>,
    items: &mut Items,
) -> Result<Vec<Option<usize>>> {
    let input = planner.schema();
    let output_names: Vec<String> = items.fields.iter().map(|f| f.name().to_ascii_lowercase()).collect();
    let is_output = |name: &str| output_names.contains(&name.to_ascii_lowercase());
    let mut order = Vec::with_capacity(order_by.len());
    for (k, item) in order_by.iter().enumerate() {
        let planned_elsewhere = match &item.expr {
            ast::Expr::Value(v) => matches!(v.value, ast::Value::Number(..)),
            ast::Expr::Identifier(id) => is_output(&id.value),
            _ => false,
        };
        if planned_elsewhere {
            order.push(None);
            continue;
        }
        let planned = planner.plan(&item.expr)?;
        let at = match items.exprs.iter().position(|e| *e == planned) {
            Some(i) => i,
            None => {
                items.push(planned, &format!("__sort_{k}"), &input);
                items.exprs.len() - 1
            }
        };
        order.push(Some(at));
    }
    Ok(order)
}

/// Each expression with its subqueries joined to `plan` for their values.
fn join_values(
    mut plan: LogicalPlan,
    exprs: Vec<Expr>,
    subqueries: &mut [Option<subquery::SubqueryItem>],
    column: &dyn Fn(usize) -> Result<Expr>,
) -> Result<(LogicalPlan, Vec<Expr>)> {
    let mut joined = Vec::with_capacity(exprs.len());
    for e in exprs {
        let (p, e) = subquery::join_values(plan, e, subqueries, column)?;
        plan = p;
        joined.push(e);
    }
    Ok((plan, joined))
}

/// What a grouped SELECT (or a SELECT DISTINCT) groups by and computes.
struct Grouping<'a> {
    select: &'a ast::Select,
    group_asts: &'a [ast::Expr],
    distinct: bool,
    aggregates: Vec<crate::expr::AggregateExpr>,
    having: Option<Expr>,
    windows: Vec<window::WindowItem>,
}

/// Grouping: GROUP BY names input expressions, select positions or select aliases; SELECT
/// DISTINCT groups by every select item. The select list, HAVING, subqueries and window
/// functions then read the aggregation's output.
fn plan_grouped(
    plan: LogicalPlan,
    scope: Scope,
    items: Items,
    order: Vec<Option<usize>>,
    g: Grouping<'_>,
    subqueries: &mut [Option<subquery::SubqueryItem>],
    ctx: Ctx<'_>,
) -> Result<SelectPlan> {
    let input_schema = plan.schema();
    let Items { exprs, fields } = items;
    let (group_exprs, group_fields) = if g.distinct {
        (exprs.clone(), fields.clone())
    } else {
        let plain = ExprPlanner::new(&scope, input_schema.clone()).with_outer(ctx.outer);
        group_keys(g.select, g.group_asts, &plain)?
    };
    let mut out_fields = group_fields;
    for (i, a) in g.aggregates.iter().enumerate() {
        out_fields.push(Field::new(format!("__agg_{i}_{a}"), a.data_type.clone(), true));
    }
    let agg_schema = Arc::new(Schema::new(out_fields));
    let rewrite = |e: &Expr| rewrite_grouped(e, &group_exprs, &agg_schema);
    let mut exprs: Vec<Expr> = if g.distinct {
        (0..exprs.len()).map(|i| Expr::column(i, agg_schema.field(i).name())).collect()
    } else {
        exprs.iter().map(rewrite).collect::<Result<_>>()?
    };
    let having = g.having.as_ref().map(rewrite).transpose()?;
    let mut plan = aggregate(plan, group_exprs.clone(), g.aggregates, agg_schema.clone())?;
    if subqueries.iter().any(Option::is_some) {
        // Subqueries in SELECT or HAVING of a grouped query read its groups: they are joined to
        // the aggregation's output, and the columns they read must be grouped.
        let grouped_column = |i: usize| rewrite_grouped(&Expr::column(i, scope.name(i)), &group_exprs, &agg_schema);
        for item in subqueries.iter_mut().flatten() {
            if let Some(operand) = &item.operand {
                item.operand = Some(rewrite(operand)?);
            }
        }
        if let Some(predicate) = having {
            plan = subquery::apply_where(plan, predicate, subqueries, &grouped_column)?;
        }
        (plan, exprs) = join_values(plan, exprs, subqueries, &grouped_column)?;
    } else if let Some(predicate) = having {
        plan = LogicalPlan::Filter { input: Box::new(plan), predicate };
    }
    if !g.windows.is_empty() {
        // Window functions of a grouped query read its groups and aggregates.
        let (p, values) = window::plan_windows(plan, g.windows, &rewrite)?;
        plan = p;
        exprs = exprs.iter().map(|e| window::replace_refs(e, &values)).collect::<Result<_>>()?;
    }
    let scope = scope.grouped(&group_exprs, &agg_schema);
    Ok(SelectPlan { input: plan, scope, exprs, fields, order })
}

/// The GROUP BY keys: expressions over the input, select positions (`GROUP BY 1`) or select
/// aliases (a name that is not an input column), each once, with their output fields.
fn group_keys(
    select: &ast::Select,
    group_asts: &[ast::Expr],
    plain: &ExprPlanner<'_>,
) -> Result<(Vec<Expr>, Vec<Field>)> {
    let input_schema = plain.schema();
    let mut group_exprs = Vec::new();
    let mut group_fields = Vec::new();
    for g in group_asts {
        let item = match g {
            ast::Expr::Value(v) if is_integer(&v.value) => {
                let n = count_literal(g, "GROUP BY")?.unwrap_or(0);
                let Some(e) = select_item_expr(select, n) else {
                    return Err(Error::Plan(format!("GROUP BY position {n} is not in the select list")));
                };
                e
            }
            ast::Expr::Identifier(id) if plain.plan(g).is_err() => {
                match select.projection.iter().find_map(|p| match p {
                    SelectItem::ExprWithAlias { expr, alias } if alias.value.eq_ignore_ascii_case(&id.value) => {
                        Some(expr)
                    }
                    _ => None,
                }) {
                    Some(e) => e,
                    None => g,
                }
            }
            other => other,
        };
        let expr = plain.plan(item).map_err(|e| match e {
            Error::Plan(m) if m.contains("is not allowed here") => {
                Error::Plan(format!("GROUP BY cannot hold an aggregate ({g})"))
            }
            other => other,
        })?;
        if !group_exprs.contains(&expr) {
            group_fields.push(Field::new(output_name(item), expr.data_type(&input_schema), true));
            group_exprs.push(expr);
        }
    }
    Ok((group_exprs, group_fields))
}

/// An aggregation. With `DISTINCT` aggregates, two: the first groups by the keys and the distinct
/// argument (computing partial results of the other aggregates), the second by the keys alone,
/// where each distinct value is one row. Both spill like any aggregation, so a group with millions
/// of distinct values costs no more memory than millions of groups.
fn aggregate(
    input: LogicalPlan,
    group_exprs: Vec<Expr>,
    aggregates: Vec<crate::expr::AggregateExpr>,
    schema: arrow::datatypes::SchemaRef,
) -> Result<LogicalPlan> {
    use crate::expr::{AggregateExpr, AggregateFunction as F, Function, Split};
    use arrow::datatypes::DataType;
    let mut distinct_args: Vec<Expr> = Vec::new();
    for a in aggregates.iter().filter(|a| a.distinct) {
        let arg = a.arg.clone().expect("DISTINCT aggregates have an argument");
        if !distinct_args.contains(&arg) {
            distinct_args.push(arg);
        }
    }
    if distinct_args.is_empty() {
        return Ok(LogicalPlan::Aggregate { input: Box::new(input), group_exprs, aggregates, schema });
    }
    let keys = group_exprs.len();
    let m = distinct_args.len();
    // The first level groups by the keys and the distinct values. With one distinct argument it
    // reads the input as it is. With several it reads a union of one branch per argument (its
    // values, a tag, nulls for the other arguments) and one for the plain aggregates' arguments,
    // so each argument's distinct values are grouped apart.
    let (first_input, first_groups, distinct_column, plain_arg) = if m == 1 {
        let mut groups = group_exprs.clone();
        groups.push(distinct_args[0].clone());
        let plain: Vec<Option<Expr>> =
            aggregates.iter().map(|a| if a.distinct { None } else { a.arg.clone() }).collect();
        (input, groups, vec![keys], plain)
    } else {
        let in_schema = input.schema();
        let null = |t: &DataType| Expr::Literal(arrow::array::new_null_array(t, 1));
        let int = |v: i64| Expr::Literal(Arc::new(arrow::array::Int64Array::from(vec![v])));
        let plain: Vec<usize> = (0..aggregates.len()).filter(|&i| !aggregates[i].distinct).collect();
        let mut fields: Vec<Field> = group_exprs
            .iter()
            .enumerate()
            .map(|(i, e)| Field::new(format!("__k{i}"), e.data_type(&in_schema), true))
            .collect();
        fields.push(Field::new("__tag", DataType::Int64, true));
        fields.extend(
            distinct_args.iter().enumerate().map(|(j, e)| Field::new(format!("__d{j}"), e.data_type(&in_schema), true)),
        );
        let arg_type = |i: usize| aggregates[i].arg.as_ref().map_or(DataType::Int64, |e| e.data_type(&in_schema));
        fields.extend(plain.iter().map(|&i| Field::new(format!("__a{i}"), arg_type(i), true)));
        let union_schema = Arc::new(Schema::new(fields));
        // The plain aggregates' branch only when there are plain aggregates.
        let branch_count = if plain.is_empty() { m } else { m + 1 };
        let branches = (0..branch_count)
            .map(|branch| {
                let mut exprs = group_exprs.clone();
                exprs.push(int(branch as i64));
                for (j, x) in distinct_args.iter().enumerate() {
                    exprs.push(if j == branch { x.clone() } else { null(&x.data_type(&in_schema)) });
                }
                for &i in &plain {
                    // count(*) counts the plain branch's rows: a 1 in each.
                    let arg = aggregates[i].arg.clone().unwrap_or_else(|| int(1));
                    exprs.push(if branch == m { arg } else { null(&arg_type(i)) });
                }
                LogicalPlan::Projection { input: Box::new(input.clone()), exprs, schema: union_schema.clone() }
            })
            .collect();
        let col = |i: usize| Expr::column(i, union_schema.field(i).name());
        let groups = (0..keys + 1 + m).map(col).collect();
        let mut args = vec![None; aggregates.len()];
        for (n, &i) in plain.iter().enumerate() {
            args[i] = Some(col(keys + 1 + m + n));
        }
        let union = LogicalPlan::Union { inputs: branches, schema: union_schema };
        (union, groups, (0..m).map(|j| keys + 1 + j).collect::<Vec<usize>>(), args)
    };
    let in_schema = first_input.schema();
    let first_width = first_groups.len();
    // First level: partial results of the plain aggregates, per (keys, distinct values).
    let mut partials: Vec<AggregateExpr> = Vec::new();
    let partial = |func: F, arg: &Option<Expr>, partials: &mut Vec<AggregateExpr>| -> Result<usize> {
        let data_type = func.return_type(arg.as_ref().map(|a| a.data_type(&in_schema)).as_ref())?;
        partials.push(AggregateExpr { func, arg: arg.clone(), distinct: false, data_type });
        Ok(first_width + partials.len() - 1)
    };
    enum Final {
        /// The aggregate over the distinct values (a column of the first level's keys).
        OverDistinct(F, usize),
        /// A plain aggregate, split over the first level's partial columns.
        Split(Split, Vec<usize>),
    }
    let mut finals = Vec::new();
    for (a, arg) in aggregates.iter().zip(&plain_arg) {
        // With a union, `count(*)` counts the plain branch's 1s.
        let func = if m > 1 && a.func == F::CountStar { F::Count } else { a.func };
        finals.push(match (a.distinct, Split::of(func)) {
            (true, _) => {
                let j = distinct_args.iter().position(|x| Some(x) == a.arg.as_ref()).expect("collected above");
                Final::OverDistinct(func, distinct_column[j])
            }
            (false, Some(split)) => {
                let columns = split.partials().into_iter().map(|f| partial(f, arg, &mut partials));
                Final::Split(split, columns.collect::<Result<_>>()?)
            }
            (false, None) => {
                return Err(Error::NotSupported(format!("{}() together with a DISTINCT aggregate", func.name())));
            }
        });
    }
    let mut fields: Vec<Field> = first_groups
        .iter()
        .enumerate()
        .map(|(i, e)| Field::new(format!("__k{i}"), e.data_type(&in_schema), true))
        .collect();
    fields.extend(partials.iter().enumerate().map(|(i, a)| Field::new(format!("__p{i}"), a.data_type.clone(), true)));
    let first_schema = Arc::new(Schema::new(fields));
    let first = LogicalPlan::Aggregate {
        input: Box::new(first_input),
        group_exprs: first_groups,
        aggregates: partials,
        schema: first_schema.clone(),
    };
    // Second level: per keys.
    let col = |i: usize| Expr::column(i, first_schema.field(i).name());
    let mut second_aggs: Vec<AggregateExpr> = Vec::new();
    let mut add = |func: F, column: usize| -> Result<Expr> {
        let data_type = func.return_type(Some(first_schema.field(column).data_type()))?;
        second_aggs.push(AggregateExpr { func, arg: Some(col(column)), distinct: false, data_type });
        Ok(Expr::column(keys + second_aggs.len() - 1, format!("__s{}", second_aggs.len() - 1)))
    };
    let mut outputs = Vec::new();
    for f in finals {
        outputs.push(match f {
            Final::OverDistinct(func, c) => add(func, c)?,
            Final::Split(split, columns) => {
                let merged = columns.into_iter().map(|c| add(split.merge(), c)).collect::<Result<Vec<_>>>()?;
                match split {
                    // A group may have no plain rows (all its rows are in the DISTINCT branches):
                    // its count is 0, not null.
                    Split::Count(_) => Expr::Function {
                        func: Function::of(&crate::expr::COALESCE),
                        args: vec![
                            split.finish(merged),
                            Expr::Literal(Arc::new(arrow::array::Int64Array::from(vec![0]))),
                        ],
                        data_type: DataType::Int64,
                    },
                    _ => split.finish(merged),
                }
            }
        });
    }
    let mut fields: Vec<Field> = (0..keys).map(|i| first_schema.field(i).clone()).collect();
    fields
        .extend(second_aggs.iter().enumerate().map(|(i, a)| Field::new(format!("__s{i}"), a.data_type.clone(), true)));
    let second_schema = Arc::new(Schema::new(fields));
    let second = LogicalPlan::Aggregate {
        input: Box::new(first),
        group_exprs: (0..keys).map(col).collect(),
        aggregates: second_aggs,
        schema: second_schema.clone(),
    };
    // The layout the rest of the query was planned against: keys, then one column per aggregate.
    let mut exprs: Vec<Expr> = (0..keys).map(|i| Expr::column(i, second_schema.field(i).name())).collect();
    exprs.extend(outputs);
    Ok(LogicalPlan::Projection { input: Box::new(second), exprs, schema })
}

/// Whether an expression holds a window function.
fn has_window(e: &Expr) -> bool {
    let mut found = matches!(e, Expr::WindowRef { .. });
    e.for_each_child(&mut |c| found |= has_window(c));
    found
}

/// The expression of select item `n` (1-based), if it is an expression.
fn select_item_expr(select: &ast::Select, n: usize) -> Option<&ast::Expr> {
    match select.projection.get(n.checked_sub(1)?)? {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    }
}

/// An expression over the input of a grouped query, rewritten over the aggregate's output: group
/// expressions become group columns, aggregates their result columns; any other input column is an
/// error, as in every SQL engine.
fn rewrite_grouped(
    e: &crate::expr::Expr,
    groups: &[crate::expr::Expr],
    schema: &arrow::datatypes::SchemaRef,
) -> Result<crate::expr::Expr> {
    use crate::expr::Expr;
    if let Some(i) = groups.iter().position(|g| g == e) {
        return Ok(Expr::column(i, schema.field(i).name()));
    }
    match e {
        Expr::AggregateRef { index, .. } => {
            let i = groups.len() + index;
            Ok(Expr::column(i, schema.field(i).name()))
        }
        Expr::Column { name, .. } => Err(Error::Plan(format!(
            "column '{name}' must appear in the GROUP BY clause or be used in an aggregate function"
        ))),
        other => other.map_children(&mut |c| rewrite_grouped(c, groups, schema)),
    }
}

/// The column name DuckDB gives an unaliased select item.
fn output_name(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Identifier(id) => id.value.clone(),
        ast::Expr::CompoundIdentifier(ids) => ids.last().map(|i| i.value.clone()).unwrap_or_default(),
        other => other.to_string(),
    }
}
