//! Planning SQL expressions: names to column indices, literals to typed constants, implicit casts.

use std::sync::Arc;

use arrow::array::{
    new_null_array, ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int32Array, Int64Array, StringArray,
};
use arrow::datatypes::{DataType, SchemaRef};
use sqlparser::ast::{self, BinaryOperator, UnaryOperator};

use super::subquery::{SubqueryItem, SubqueryKind};
use super::Catalog;
use crate::error::{Error, Result};
use crate::expr::types::{self, arithmetic_types, common_type, is_numeric, sql_type_name};
use crate::expr::DatePartKind;
use crate::expr::{AggregateExpr, AggregateFunction, BinaryOp, Expr, Function, TRY_CAST};

/// The columns an expression can name: one entry per input column.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    columns: Vec<ScopeColumn>,
}

#[derive(Debug, Clone)]
struct ScopeColumn {
    qualifier: Option<String>,
    name: String,
    /// Only reachable with its qualifier, and not part of `*` (the right column of `JOIN USING`).
    hidden: bool,
}

impl Scope {
    /// Columns of `schema`, qualified by `qualifier`, renamed by a table alias's column list.
    pub fn new(
        schema: &SchemaRef,
        qualifier: Option<&str>,
        renames: Option<&[ast::TableAliasColumnDef]>,
    ) -> Result<Scope> {
        let renames = renames.unwrap_or(&[]);
        if renames.len() > schema.fields().len() {
            return Err(Error::Plan(format!(
                "table alias names {} columns but the table has {}",
                renames.len(),
                schema.fields().len()
            )));
        }
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| ScopeColumn {
                qualifier: qualifier.map(|q| q.to_string()),
                name: renames.get(i).map(|r| r.name.value.clone()).unwrap_or_else(|| f.name().clone()),
                hidden: false,
            })
            .collect();
        Ok(Scope { columns })
    }

    /// The columns of a grouped query's output: a group column that is an input column keeps that
    /// column's qualifier (`ORDER BY t.a` after `GROUP BY t.a`); the rest are unqualified.
    pub fn grouped(&self, groups: &[Expr], schema: &SchemaRef) -> Scope {
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let qualifier = match groups.get(i) {
                    Some(Expr::Column { index, .. }) => self.columns[*index].qualifier.clone(),
                    _ => None,
                };
                ScopeColumn { qualifier, name: f.name().clone(), hidden: false }
            })
            .collect();
        Scope { columns }
    }

    /// The columns of a join: this scope's, then `right`'s.
    pub fn join(&self, right: &Scope) -> Scope {
        Scope { columns: self.columns.iter().chain(&right.columns).cloned().collect() }
    }

    /// Hides column `i` from unqualified names and `*`.
    pub fn hide(&mut self, i: usize) {
        self.columns[i].hidden = true;
    }

    /// How many columns there are.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// The name of column `i` (after renames).
    pub fn name(&self, i: usize) -> &str {
        &self.columns[i].name
    }

    /// The columns `*` stands for.
    pub fn star(&self) -> Vec<usize> {
        (0..self.columns.len()).filter(|&i| !self.columns[i].hidden).collect()
    }

    /// The column an unqualified name refers to, if exactly one.
    pub fn find(&self, name: &str) -> Result<usize> {
        self.resolve(None, &ast::Ident::new(name)).map(|(i, _)| i)
    }

    /// Column indices belonging to a qualifier.
    pub fn columns_of(&self, qualifier: &str) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|&i| self.columns[i].qualifier.as_deref().is_some_and(|q| q.eq_ignore_ascii_case(qualifier)))
            .collect()
    }

    fn resolve(&self, qualifier: Option<&ast::Ident>, ident: &ast::Ident) -> Result<(usize, String)> {
        let quoted = ident.quote_style.is_some();
        let matches_name = |n: &str| if quoted { n == ident.value } else { n.eq_ignore_ascii_case(&ident.value) };
        let found: Vec<usize> = (0..self.columns.len())
            .filter(|&i| {
                let c = &self.columns[i];
                matches_name(&c.name)
                    && match qualifier {
                        None => !c.hidden,
                        Some(want) => c.qualifier.as_deref().is_some_and(|q| q.eq_ignore_ascii_case(&want.value)),
                    }
            })
            .collect();
        // An exact-case match wins over case-insensitive ones.
        let found = if found.len() > 1 {
            let exact: Vec<usize> = found.iter().copied().filter(|&i| self.columns[i].name == ident.value).collect();
            if exact.len() == 1 {
                exact
            } else {
                found
            }
        } else {
            found
        };
        let full = match qualifier {
            Some(q) => format!("{}.{}", q.value, ident.value),
            None => ident.value.clone(),
        };
        match found.as_slice() {
            [i] => Ok((*i, self.columns[*i].name.clone())),
            [] => {
                let hint = closest(&ident.value, self.columns.iter().map(|c| c.name.as_str()))
                    .map(|c| format!(" (hint: did you mean {c}?)"))
                    .unwrap_or_default();
                Err(Error::Sql {
                    message: format!("unknown column '{full}'{hint}"),
                    line: ident.span.start.line,
                    column: ident.span.start.column,
                })
            }
            _ => Err(Error::Sql {
                message: format!("column reference '{full}' is ambiguous"),
                line: ident.span.start.line,
                column: ident.span.start.column,
            }),
        }
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// An enclosing query, whose columns a correlated subquery may read.
pub(crate) struct Outer<'a> {
    /// Its columns' names.
    pub scope: &'a Scope,
    /// Its columns' types.
    pub schema: SchemaRef,
    /// The query around it, if any.
    pub parent: Option<&'a Outer<'a>>,
}

/// Plans expressions over one input.
/// How deep expressions may nest: an operand of an operand of ... (`1 + 1 + ... + 1` is a chain
/// as deep as it is long). DuckDB's default limit is 1000; every pass over an expression grows
/// its stack as it needs, so the limit is about time and memory, not the stack.
pub const MAX_EXPR_DEPTH: usize = 10_000;

thread_local! {
    /// The nesting depth of the expression being planned on this thread.
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

pub(crate) struct ExprPlanner<'a> {
    scope: &'a Scope,
    schema: SchemaRef,
    /// Where aggregate calls go when they are allowed (SELECT and HAVING of a grouped query).
    aggregates: Option<&'a std::cell::RefCell<Vec<AggregateExpr>>>,
    /// The enclosing queries, for correlated column references.
    outer: Option<&'a Outer<'a>>,
    /// Where subqueries go when they are allowed, and the catalog to plan them with.
    subqueries: Option<(&'a Catalog, &'a std::cell::RefCell<Vec<SubqueryItem>>)>,
    /// Where window function calls go when they are allowed (SELECT and ORDER BY).
    windows: Option<&'a std::cell::RefCell<Vec<super::window::WindowItem>>>,
}

/// `f(a = b)`: the parser reads `a = b` as an argument named `a`, DuckDB as a comparison, which a
/// function of positional arguments can only mean.
fn comparison_argument(arg: &ast::FunctionArg) -> Option<ast::Expr> {
    let (name, value) = match arg {
        ast::FunctionArg::ExprNamed {
            name,
            arg: ast::FunctionArgExpr::Expr(value),
            operator: ast::FunctionArgOperator::Equals,
        } => (name.clone(), value),
        ast::FunctionArg::Named {
            name,
            arg: ast::FunctionArgExpr::Expr(value),
            operator: ast::FunctionArgOperator::Equals,
        } => match name.quote_style {
            // `'a' = b`: the parser took the string for a quoted name.
            Some('\'') => (ast::Expr::Value(ast::Value::SingleQuotedString(name.value.clone()).into()), value),
            _ => (ast::Expr::Identifier(name.clone()), value),
        },
        _ => return None,
    };
    Some(ast::Expr::BinaryOp { left: Box::new(name), op: ast::BinaryOperator::Eq, right: Box::new(value.clone()) })
}

fn literal(a: ArrayRef) -> Expr {
    Expr::Literal(a)
}

fn null_literal() -> Expr {
    Expr::Literal(new_null_array(&DataType::Null, 1))
}

impl<'a> ExprPlanner<'a> {
    /// The schema of the input expressions are planned over.
    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn new(scope: &'a Scope, schema: SchemaRef) -> Self {
        ExprPlanner { scope, schema, aggregates: None, outer: None, subqueries: None, windows: None }
    }

    /// A planner that turns aggregate calls into [`Expr::AggregateRef`]s collected in `aggregates`.
    pub fn with_aggregates(
        scope: &'a Scope,
        schema: SchemaRef,
        aggregates: &'a std::cell::RefCell<Vec<AggregateExpr>>,
    ) -> Self {
        ExprPlanner { scope, schema, aggregates: Some(aggregates), outer: None, subqueries: None, windows: None }
    }

    /// Window function calls are planned and collected in `into`; the expression holds an
    /// [`Expr::WindowRef`] for each.
    pub fn with_windows(mut self, into: &'a std::cell::RefCell<Vec<super::window::WindowItem>>) -> Self {
        self.windows = Some(into);
        self
    }

    /// Names not found in the input are looked up in the enclosing queries.
    pub fn with_outer(mut self, outer: Option<&'a Outer<'a>>) -> Self {
        self.outer = outer;
        self
    }

    /// Subqueries are planned (against `catalog`) and collected in `into`; the expression holds an
    /// [`Expr::Subquery`] for each.
    pub fn with_subqueries(mut self, catalog: &'a Catalog, into: &'a std::cell::RefCell<Vec<SubqueryItem>>) -> Self {
        self.subqueries = Some((catalog, into));
        self
    }

    /// A column of the input, or else of an enclosing query (the innermost that has it).
    fn resolve_column(&self, qualifier: Option<&ast::Ident>, ident: &ast::Ident) -> Result<Expr> {
        match self.scope.resolve(qualifier, ident) {
            Ok((index, name)) => Ok(Expr::Column { index, name }),
            Err(e) => {
                let unknown = matches!(&e, Error::Sql { message, .. } if message.starts_with("unknown column"));
                let mut level = self.outer;
                let mut depth = 1;
                while let (true, Some(l)) = (unknown, level) {
                    if let Ok((index, name)) = l.scope.resolve(qualifier, ident) {
                        let data_type = l.schema.field(index).data_type().clone();
                        return Ok(Expr::OuterColumn { depth, index, name, data_type });
                    }
                    level = l.parent;
                    depth += 1;
                }
                Err(e)
            }
        }
    }

    /// Plans a subquery read by this expression: its plan (with references to this query's
    /// columns as outer columns) goes into the list, a placeholder into the expression.
    fn plan_subquery(&self, kind: SubqueryKind, query: &ast::Query, operand: Option<Expr>) -> Result<Expr> {
        let Some((catalog, into)) = self.subqueries else {
            return Err(Error::NotSupported(format!("a subquery here ({query})")));
        };
        let level = Outer { scope: self.scope, schema: self.schema.clone(), parent: self.outer };
        let plan = super::plan_query(query, super::Ctx { catalog, outer: Some(&level) })?;
        let schema = plan.schema();
        let width = schema.fields().len();
        let data_type = match kind {
            SubqueryKind::Scalar | SubqueryKind::In if width != 1 => {
                return Err(Error::Plan(format!(
                    "a subquery used as {} must return one column, this one returns {width} ({query})",
                    if kind == SubqueryKind::In { "IN (...)" } else { "a value" }
                )));
            }
            SubqueryKind::Scalar => schema.field(0).data_type().clone(),
            SubqueryKind::In => {
                let operand_type = self.ty(operand.as_ref().expect("IN has an operand"));
                let value_type = schema.field(0).data_type();
                if common_type(&operand_type, value_type).is_none() {
                    return Err(Error::Plan(format!(
                        "cannot compare {} with {} (IN subquery {query})",
                        sql_type_name(&operand_type),
                        sql_type_name(value_type)
                    )));
                }
                DataType::Boolean
            }
            SubqueryKind::Exists => DataType::Boolean,
        };
        let mut list = into.borrow_mut();
        list.push(SubqueryItem { kind, plan, operand });
        Ok(Expr::Subquery { id: list.len() - 1, data_type })
    }

    fn plan_aggregate(&self, name: &str, f: &ast::Function) -> Result<Expr> {
        let Some(aggregates) = self.aggregates else {
            return Err(Error::Plan(format!(
                "aggregate function {name}() is not allowed here (hint: aggregates go in SELECT or HAVING)"
            )));
        };
        let list = match &f.args {
            ast::FunctionArguments::List(list) => list,
            _ => return Err(Error::Plan(format!("{name}() needs an argument"))),
        };
        let distinct = matches!(list.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
        if !list.clauses.is_empty() || f.filter.is_some() || !f.within_group.is_empty() {
            return Err(Error::NotSupported(format!("{name}() with ORDER BY / FILTER / WITHIN GROUP")));
        }
        let inner = ExprPlanner::new(self.scope, self.schema.clone()).with_outer(self.outer);
        let comparison = match list.args.as_slice() {
            [a] => comparison_argument(a),
            _ => None,
        };
        let (func, arg) = match (list.args.as_slice(), &comparison) {
            ([ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard)], _) if name == "count" => {
                (AggregateFunction::CountStar, None)
            }
            (_, Some(e)) | ([ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e))], None) => {
                let func = AggregateFunction::by_name(name).expect("checked by is_aggregate");
                let arg = inner.plan(e).map_err(|err| match err {
                    Error::Plan(m) if m.contains("is not allowed here") => {
                        Error::Plan(format!("aggregate functions cannot be nested ({f})"))
                    }
                    other => other,
                })?;
                (func, Some(arg))
            }
            _ => return Err(Error::Plan(format!("{name}() takes one argument"))),
        };
        let data_type = func.return_type(arg.as_ref().map(|a| self.ty(a)).as_ref())?;
        if distinct && arg.is_none() {
            return Err(Error::Plan("count(DISTINCT *) is not valid (hint: count(DISTINCT column))".into()));
        }
        let agg = AggregateExpr { func, arg, distinct, data_type: data_type.clone() };
        let mut all = aggregates.borrow_mut();
        let index = match all.iter().position(|a| a == &agg) {
            Some(i) => i,
            None => {
                all.push(agg);
                all.len() - 1
            }
        };
        Ok(Expr::AggregateRef { index, data_type })
    }

    fn ty(&self, e: &Expr) -> DataType {
        e.data_type(&self.schema)
    }

    /// Plans a boolean condition (`WHERE`, `HAVING`, `ON`).
    pub fn plan_predicate(&self, e: &ast::Expr, clause: &str) -> Result<Expr> {
        let planned = self.plan(e)?;
        match self.ty(&planned) {
            DataType::Boolean | DataType::Null => Ok(planned),
            other => {
                Err(Error::Plan(format!("{clause} must be a boolean condition, got {} ({e})", sql_type_name(&other))))
            }
        }
    }

    /// `l = r` for two planned expressions (the keys of `JOIN ... USING`), cast to a common type.
    pub fn equals(&self, l: Expr, r: Expr, what: &str) -> Result<Expr> {
        let (lt, rt) = (self.ty(&l), self.ty(&r));
        let t = common_type(&lt, &rt).ok_or_else(|| {
            Error::Plan(format!("cannot compare {} with {} ({what})", sql_type_name(&lt), sql_type_name(&rt)))
        })?;
        Ok(Expr::Binary {
            op: BinaryOp::Eq,
            left: Box::new(self.coerce(l, &t)?),
            right: Box::new(self.coerce(r, &t)?),
            data_type: DataType::Boolean,
        })
    }

    /// Casts `e` to `to`: at plan time for constants, else with a cast node.
    fn coerce(&self, e: Expr, to: &DataType) -> Result<Expr> {
        types::coerce(e, &self.schema, to)
    }

    /// Plans an expression; an error about it says where it is in the SQL text. Expressions
    /// nest at most [`MAX_EXPR_DEPTH`] deep (chains of `AND` and `OR` count as one level); the
    /// stack grows as deep nesting needs (see [`crate::expr::deep`]).
    #[recursive::recursive]
    pub fn plan(&self, e: &ast::Expr) -> Result<Expr> {
        use sqlparser::ast::Spanned;
        let depth = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        let planned = match depth > MAX_EXPR_DEPTH {
            true => Err(Error::sql(format!(
                "expression nested too deeply (more than {MAX_EXPR_DEPTH} levels; hint: split it, or use IN (...) \
                 or a join for long lists of values)"
            ))),
            false => self.plan_inner(e),
        };
        DEPTH.with(|d| d.set(d.get() - 1));
        planned.map_err(|err| match err.position() {
            // Placed already, by the innermost expression: the span of each enclosing one (a walk
            // of its whole subtree) is not needed.
            Some(_) => err,
            None => {
                let at = e.span().start;
                err.located(at.line, at.column)
            }
        })
    }

    fn plan_inner(&self, e: &ast::Expr) -> Result<Expr> {
        use ast::Expr as A;
        Ok(match e {
            A::Identifier(id) => self.resolve_column(None, id)?,
            A::CompoundIdentifier(ids) => match ids.as_slice() {
                [q, c] => self.resolve_column(Some(q), c)?,
                _ => return Err(Error::NotSupported(format!("nested column reference {e}"))),
            },
            A::Value(v) => plan_value(&v.value)?,
            A::TypedString(ts) => {
                let text = match &ts.value.value {
                    ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
                    other => return Err(Error::Plan(format!("bad typed literal {other}"))),
                };
                let to = types::parse_sql_type(&ts.data_type)?;
                let s: ArrayRef = Arc::new(StringArray::from(vec![text.clone()]));
                let v = types::cast_sql(&s, &to)
                    .map_err(|_| Error::Plan(format!("invalid {} literal '{text}'", sql_type_name(&to))))?;
                literal(v)
            }
            A::Nested(inner) => self.plan(inner)?,
            A::UnaryOp { op, expr } => match op {
                UnaryOperator::Not => Expr::Not(Box::new(self.boolean(expr, "NOT")?)),
                UnaryOperator::Plus => self.plan(expr)?,
                UnaryOperator::Minus => {
                    // Fold `-literal` so `-2147483648` and `-0.5` are the constants they read as.
                    if let A::Value(v) = expr.as_ref() {
                        if let ast::Value::Number(n, _) = &v.value {
                            return plan_number(&format!("-{n}"));
                        }
                    }
                    let inner = self.plan(expr)?;
                    let t = self.ty(&inner);
                    if !is_numeric(&t) && t != DataType::Null {
                        return Err(Error::Plan(format!("cannot negate {} ({expr})", sql_type_name(&t))));
                    }
                    Expr::Negate(Box::new(inner))
                }
                other => return Err(Error::NotSupported(format!("operator {other}"))),
            },
            A::BinaryOp { left, op, right } => self.plan_binary(left, op, right)?,
            A::IsNull(inner) => Expr::IsNull { expr: Box::new(self.plan(inner)?), negated: false },
            A::IsNotNull(inner) => Expr::IsNull { expr: Box::new(self.plan(inner)?), negated: true },
            A::In { expr, target: ast::InTarget::List(list), negated, .. } => {
                let operand = self.plan(expr)?;
                let items = list.iter().map(|i| self.plan(i)).collect::<Result<Vec<_>>>()?;
                let mut t = self.ty(&operand);
                for i in &items {
                    let it = self.ty(i);
                    t = self.comparison_type(&t, &it, i, expr)?;
                }
                let operand = self.coerce(operand, &t)?;
                let items = items.into_iter().map(|i| self.coerce(i, &t)).collect::<Result<Vec<_>>>()?;
                Expr::InList { expr: Box::new(operand), list: items, negated: *negated }
            }
            A::In { expr, target: ast::InTarget::Subquery(subquery), negated, .. } => {
                let operand = self.plan(expr)?;
                let e = self.plan_subquery(SubqueryKind::In, subquery, Some(operand))?;
                if *negated {
                    Expr::Not(Box::new(e))
                } else {
                    e
                }
            }
            A::Exists { subquery, negated } => {
                let e = self.plan_subquery(SubqueryKind::Exists, subquery, None)?;
                if *negated {
                    Expr::Not(Box::new(e))
                } else {
                    e
                }
            }
            A::Subquery(q) => self.plan_subquery(SubqueryKind::Scalar, q, None)?,
            A::Between { expr, negated, low, high } => {
                let ge = A::BinaryOp { left: expr.clone(), op: BinaryOperator::GtEq, right: low.clone() };
                let le = A::BinaryOp { left: expr.clone(), op: BinaryOperator::LtEq, right: high.clone() };
                let both = self.plan_binary(&ge, &BinaryOperator::And, &le)?;
                if *negated {
                    Expr::Not(Box::new(both))
                } else {
                    both
                }
            }
            A::Like { negated, any, expr, pattern, escape_char }
            | A::ILike { negated, any, expr, pattern, escape_char } => {
                if *any || escape_char.is_some() {
                    return Err(Error::NotSupported("LIKE ANY / ESCAPE".into()));
                }
                let case_insensitive = matches!(e, A::ILike { .. });
                let operand = self.string(expr, "LIKE")?;
                let pattern = self.string(pattern, "LIKE")?;
                Expr::Like { expr: Box::new(operand), pattern: Box::new(pattern), negated: *negated, case_insensitive }
            }
            A::Case { operand, conditions, else_result, .. } => {
                let operand = operand.as_ref().map(|o| self.plan(o)).transpose()?;
                let mut whens = Vec::new();
                for w in conditions {
                    let cond = match &operand {
                        Some(op) => {
                            let v = self.plan(&w.condition)?;
                            self.compare(BinaryOp::Eq, op.clone(), v, &w.condition, &w.condition)?
                        }
                        None => self.boolean(&w.condition, "CASE WHEN")?,
                    };
                    whens.push((cond, self.plan(&w.result)?));
                }
                let otherwise = else_result.as_ref().map(|e| self.plan(e)).transpose()?;
                let mut t = DataType::Null;
                for v in whens.iter().map(|(_, v)| v).chain(otherwise.iter()) {
                    let vt = self.ty(v);
                    t = common_type(&t, &vt).ok_or_else(|| {
                        Error::Plan(format!(
                            "CASE branches have incompatible types {} and {}",
                            sql_type_name(&t),
                            sql_type_name(&vt)
                        ))
                    })?;
                }
                let whens = whens.into_iter().map(|(c, v)| Ok((c, self.coerce(v, &t)?))).collect::<Result<Vec<_>>>()?;
                let otherwise = otherwise.map(|o| self.coerce(o, &t)).transpose()?.map(Box::new);
                Expr::Case { whens, otherwise, data_type: t }
            }
            A::Cast { kind, expr, data_type, format } => {
                if format.is_some() {
                    return Err(Error::NotSupported("CAST ... FORMAT".into()));
                }
                let to = types::parse_sql_type(data_type)?;
                if matches!(kind, ast::CastKind::TryCast | ast::CastKind::SafeCast) {
                    // NULL where the value does not convert.
                    let inner = self.plan(expr)?;
                    let from = self.ty(&inner);
                    if !castable(&from, &to) {
                        return Err(Error::Plan(format!(
                            "cannot cast {} to {} ({e})",
                            sql_type_name(&from),
                            sql_type_name(&to)
                        )));
                    }
                    return Ok(Expr::Function { func: Function::of(&TRY_CAST), args: vec![inner], data_type: to });
                }
                let inner = self.plan(expr)?;
                let from = self.ty(&inner);
                if !castable(&from, &to) {
                    return Err(Error::Plan(format!(
                        "cannot cast {} to {} ({e})",
                        sql_type_name(&from),
                        sql_type_name(&to)
                    )));
                }
                self.coerce(inner, &to)?
            }
            A::Extract { field, expr, .. } => {
                let part = DatePartKind::parse(&field.to_string())
                    .ok_or_else(|| Error::NotSupported(format!("EXTRACT({field})")))?;
                let args = vec![literal(Arc::new(StringArray::from(vec![part.name()]))), self.plan(expr)?];
                Self::function("date_part").plan(
                    "EXTRACT",
                    args,
                    vec![String::new(), expr.to_string()],
                    &self.schema,
                )?
            }
            A::Substring { expr, substring_from, substring_for, .. } => {
                let mut args = vec![self.plan(expr)?];
                let mut texts = vec![expr.to_string()];
                match substring_from {
                    Some(f) => args.push(self.plan(f)?),
                    None => args.push(literal(Arc::new(Int64Array::from(vec![1])))),
                }
                texts.push(substring_from.as_ref().map_or("1".into(), |f| f.to_string()));
                if let Some(n) = substring_for {
                    args.push(self.plan(n)?);
                    texts.push(n.to_string());
                }
                Self::function("substr").plan("substring", args, texts, &self.schema)?
            }
            A::Trim { expr, trim_where, trim_what, trim_characters } => {
                if trim_what.is_some() || trim_characters.is_some() {
                    return Err(Error::NotSupported("TRIM of characters other than spaces".into()));
                }
                let name = match trim_where {
                    None | Some(ast::TrimWhereField::Both) => "trim",
                    Some(ast::TrimWhereField::Leading) => "ltrim",
                    Some(ast::TrimWhereField::Trailing) => "rtrim",
                };
                self.call_sql(Self::function(name), "trim", &[expr])?
            }
            A::Function(f) => self.plan_function(f)?,
            A::Interval(interval) => self.plan_interval(interval)?,
            A::Position { expr, r#in } => self.call_sql(Self::function("strpos"), "position", &[r#in, expr])?,
            A::Ceil { expr, field } | A::Floor { expr, field } => {
                if !matches!(field, ast::CeilFloorKind::DateTimeField(ast::DateTimeField::NoDateTime)) {
                    return Err(Error::NotSupported(format!("{e}")));
                }
                let name = if matches!(e, A::Ceil { .. }) { "ceil" } else { "floor" };
                self.call_sql(Self::function(name), name, &[expr])?
            }
            other => return Err(Error::NotSupported(format!("expression {other}"))),
        })
    }

    /// `INTERVAL '90' DAY`, `INTERVAL '1 year 2 months'`, `INTERVAL 3 DAY`: a constant.
    fn plan_interval(&self, interval: &ast::Interval) -> Result<Expr> {
        if interval.last_field.is_some() {
            return Err(Error::NotSupported(format!("INTERVAL ... TO ... ({interval})")));
        }
        let text = match interval.value.as_ref() {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::SingleQuotedString(s) | ast::Value::Number(s, _) => s.clone(),
                other => return Err(Error::Plan(format!("bad interval value {other}"))),
            },
            ast::Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match expr.as_ref() {
                ast::Expr::Value(v) => match &v.value {
                    ast::Value::Number(s, _) => format!("-{s}"),
                    other => return Err(Error::Plan(format!("bad interval value -{other}"))),
                },
                other => return Err(Error::NotSupported(format!("INTERVAL of an expression ({other})"))),
            },
            other => return Err(Error::NotSupported(format!("INTERVAL of an expression ({other})"))),
        };
        let unit = interval.leading_field.as_ref().map(|f| f.to_string());
        let value = types::parse_interval(&text, unit.as_deref()).ok_or_else(|| {
            Error::Plan(format!("invalid interval '{text}'{}", unit.map(|u| format!(" {u}")).unwrap_or_default()))
        })?;
        Ok(literal(Arc::new(arrow::array::IntervalMonthDayNanoArray::from(vec![value]))))
    }

    fn boolean(&self, e: &ast::Expr, what: &str) -> Result<Expr> {
        let p = self.plan(e)?;
        match self.ty(&p) {
            DataType::Boolean => Ok(p),
            DataType::Null => self.coerce(p, &DataType::Boolean),
            other => Err(Error::Plan(format!("{what} needs a boolean, got {} ({e})", sql_type_name(&other)))),
        }
    }

    fn string(&self, e: &ast::Expr, what: &str) -> Result<Expr> {
        let p = self.plan(e)?;
        match self.ty(&p) {
            DataType::Utf8 => Ok(p),
            DataType::Null | DataType::LargeUtf8 | DataType::Utf8View => self.coerce(p, &DataType::Utf8),
            other => Err(Error::Plan(format!("{what} needs a string, got {} ({e})", sql_type_name(&other)))),
        }
    }

    /// The type `a` and `b` are compared in, or an error naming both types.
    fn comparison_type(&self, a: &DataType, b: &DataType, _be: &Expr, ast_e: &ast::Expr) -> Result<DataType> {
        common_type(a, b).ok_or_else(|| {
            Error::Plan(format!("cannot compare {} with {} ({ast_e})", sql_type_name(a), sql_type_name(b)))
        })
    }

    fn compare(&self, op: BinaryOp, l: Expr, r: Expr, le: &ast::Expr, re: &ast::Expr) -> Result<Expr> {
        types::comparison(op, l, r, &self.schema, |a, b| self.bad_compare(a, b, le, re))
    }

    fn bad_compare(&self, a: &DataType, b: &DataType, le: &ast::Expr, re: &ast::Expr) -> Error {
        Error::Plan(format!("cannot compare {} with {} ({le} vs {re})", sql_type_name(a), sql_type_name(b)))
    }

    fn plan_binary(&self, left: &ast::Expr, op: &BinaryOperator, right: &ast::Expr) -> Result<Expr> {
        let op = match op {
            BinaryOperator::Plus => BinaryOp::Plus,
            BinaryOperator::Minus => BinaryOp::Minus,
            BinaryOperator::Multiply => BinaryOp::Multiply,
            BinaryOperator::Divide => BinaryOp::Divide,
            BinaryOperator::Modulo => BinaryOp::Modulo,
            BinaryOperator::Eq => BinaryOp::Eq,
            BinaryOperator::NotEq => BinaryOp::NotEq,
            BinaryOperator::Lt => BinaryOp::Lt,
            BinaryOperator::LtEq => BinaryOp::LtEq,
            BinaryOperator::Gt => BinaryOp::Gt,
            BinaryOperator::GtEq => BinaryOp::GtEq,
            BinaryOperator::And => BinaryOp::And,
            BinaryOperator::Or => BinaryOp::Or,
            BinaryOperator::StringConcat => BinaryOp::Concat,
            other => return Err(Error::NotSupported(format!("operator {other}"))),
        };
        match op {
            BinaryOp::And | BinaryOp::Or => {
                // A chain `a AND b AND ...` (thousands of terms in generated SQL) is planned term by
                // term, without recursing along it, into a balanced tree: its depth is the log of
                // its length, for every pass that walks it later. Both are associative in SQL's
                // three-valued logic.
                let sql_op = if op == BinaryOp::And { BinaryOperator::And } else { BinaryOperator::Or };
                let mut terms = Vec::new();
                let mut pending = vec![right, left];
                while let Some(e) = pending.pop() {
                    match e {
                        ast::Expr::BinaryOp { left, op, right } if *op == sql_op => {
                            pending.push(right);
                            pending.push(left);
                        }
                        term => terms.push(self.boolean(term, "AND/OR")?),
                    }
                }
                Ok(crate::expr::balanced(op, terms).expect("a chain has two terms or more"))
            }
            BinaryOp::Concat => {
                let l = self.plan(left)?;
                let r = self.plan(right)?;
                let (l, r) = (self.to_string_expr(l)?, self.to_string_expr(r)?);
                Ok(Expr::Binary { op, left: Box::new(l), right: Box::new(r), data_type: DataType::Utf8 })
            }
            _ if op.is_comparison() => {
                let l = self.plan(left)?;
                let r = self.plan(right)?;
                self.compare(op, l, r, left, right)
            }
            _ => {
                let l = self.plan(left)?;
                let r = self.plan(right)?;
                let (lt, rt) = (self.ty(&l), self.ty(&r));
                if lt == DataType::Null && rt == DataType::Null {
                    return Ok(null_literal());
                }
                let (ct_l, ct_r, result) = arithmetic_types(op, &lt, &rt).ok_or_else(|| {
                    Error::Plan(format!(
                        "cannot apply {} to {} and {} ({left} {} {right})",
                        op_name(op),
                        sql_type_name(&lt),
                        sql_type_name(&rt),
                        op_symbol(op)
                    ))
                })?;
                Ok(Expr::Binary {
                    op,
                    left: Box::new(self.coerce(l, &ct_l)?),
                    right: Box::new(self.coerce(r, &ct_r)?),
                    data_type: result,
                })
            }
        }
    }

    fn to_string_expr(&self, e: Expr) -> Result<Expr> {
        match self.ty(&e) {
            DataType::Utf8 => Ok(e),
            _ => self.coerce(e, &DataType::Utf8),
        }
    }

    fn plan_function(&self, f: &ast::Function) -> Result<Expr> {
        let name = f.name.to_string().to_ascii_lowercase();
        if f.over.is_some() {
            let Some(windows) = self.windows else {
                return Err(Error::Plan(format!(
                    "window function {name}() is not allowed here (hint: window functions go in SELECT or ORDER BY)"
                )));
            };
            // Arguments and keys may aggregate, but not nest windows.
            let inner = ExprPlanner {
                scope: self.scope,
                schema: self.schema.clone(),
                aggregates: self.aggregates,
                outer: self.outer,
                subqueries: None,
                windows: None,
            };
            let item = super::window::plan_window_call(&name, f, &inner, &self.schema)?;
            let data_type = item.expr.data_type.clone();
            let mut list = windows.borrow_mut();
            list.push(item);
            return Ok(Expr::WindowRef { index: list.len() - 1, data_type });
        }
        if is_aggregate(&name) {
            return self.plan_aggregate(&name, f);
        }
        if f.filter.is_some() || !f.within_group.is_empty() {
            return Err(Error::NotSupported(format!("{name}() with FILTER / WITHIN GROUP")));
        }
        let comparisons: Vec<Option<ast::Expr>> = match &f.args {
            ast::FunctionArguments::List(list) => list.args.iter().map(comparison_argument).collect(),
            _ => Vec::new(),
        };
        let args: Vec<&ast::Expr> = match &f.args {
            ast::FunctionArguments::None => vec![],
            ast::FunctionArguments::Subquery(_) => return Err(Error::NotSupported("subqueries".into())),
            ast::FunctionArguments::List(list) => {
                if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                    return Err(Error::NotSupported(format!("{name}() with DISTINCT or clauses")));
                }
                list.args
                    .iter()
                    .zip(&comparisons)
                    .map(|(a, comparison)| match (a, comparison) {
                        (_, Some(e)) | (ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)), None) => Ok(e),
                        (other, None) => Err(Error::NotSupported(format!("argument {other} of {name}()"))),
                    })
                    .collect::<Result<_>>()?
            }
        };
        let func = Function::by_name(&name).ok_or_else(|| {
            let hint = closest(&name, crate::expr::function_names())
                .map(|c| format!(" (hint: did you mean {c}?)"))
                .unwrap_or_default();
            Error::NotSupported(format!("function {name}(){hint}"))
        })?;
        self.call_sql(func, &name, &args)
    }

    /// A call of `func` over SQL arguments, typed by its entry; `called` is the name errors give.
    fn call_sql(&self, func: Function, called: &str, args: &[&ast::Expr]) -> Result<Expr> {
        let planned = args.iter().map(|a| self.plan(a)).collect::<Result<Vec<_>>>()?;
        func.plan(called, planned, args.iter().map(|a| a.to_string()).collect(), &self.schema)
    }

    /// The function SQL calls `name`, which the planner knows to exist.
    fn function(name: &str) -> Function {
        Function::by_name(name).unwrap_or_else(|| panic!("{name} is a function of the registry"))
    }
}

pub(crate) fn is_aggregate(name: &str) -> bool {
    AggregateFunction::by_name(name).is_some()
}

fn op_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Plus => "+",
        BinaryOp::Minus => "-",
        BinaryOp::Multiply => "*",
        BinaryOp::Divide => "/",
        BinaryOp::Modulo => "%",
        _ => "operator",
    }
}

fn op_symbol(op: BinaryOp) -> &'static str {
    op_name(op)
}

fn castable(from: &DataType, to: &DataType) -> bool {
    from == to || *from == DataType::Null || arrow::compute::can_cast_types(from, to)
}

fn plan_value(v: &ast::Value) -> Result<Expr> {
    Ok(match v {
        ast::Value::Number(n, _) => plan_number(n)?,
        ast::Value::SingleQuotedString(s) => literal(Arc::new(StringArray::from(vec![s.clone()]))),
        ast::Value::Boolean(b) => literal(Arc::new(BooleanArray::from(vec![*b]))),
        ast::Value::Null => null_literal(),
        other => return Err(Error::NotSupported(format!("literal {other}"))),
    })
}

/// Number literals as DuckDB types them: INTEGER, then BIGINT, then DECIMAL(w, s) for decimals with
/// a point (width counting every digit), DOUBLE for exponents or more than 38 digits.
fn plan_number(text: &str) -> Result<Expr> {
    if let Ok(v) = text.parse::<i32>() {
        return Ok(literal(Arc::new(Int32Array::from(vec![v]))));
    }
    if let Ok(v) = text.parse::<i64>() {
        return Ok(literal(Arc::new(Int64Array::from(vec![v]))));
    }
    let bad = || Error::Plan(format!("bad number literal {text}"));
    let negative = text.starts_with('-');
    let digits = text.trim_start_matches('-');
    if !digits.contains(['e', 'E']) {
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        let int_part = if int_part.is_empty() { "0" } else { int_part };
        let width = int_part.len() + frac_part.len();
        let scale = frac_part.len();
        if width <= 38 && int_part.chars().chain(frac_part.chars()).all(|c| c.is_ascii_digit()) {
            let mut unscaled: i128 = format!("{int_part}{frac_part}").parse().map_err(|_| bad())?;
            if negative {
                unscaled = -unscaled;
            }
            let a = Decimal128Array::from(vec![unscaled]).with_precision_and_scale(width as u8, scale as i8)?;
            return Ok(literal(Arc::new(a)));
        }
    }
    let v: f64 = text.parse().map_err(|_| bad())?;
    Ok(literal(Arc::new(Float64Array::from(vec![v]))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names() {
        let names = ["l_shipdate", "l_orderkey", "l_quantity"];
        assert_eq!(closest("l_shipdat", names.into_iter()), Some("l_shipdate"));
        assert_eq!(closest("zzz", names.into_iter()), None);
    }

    #[test]
    fn number_literals() {
        let ty = |s: &str| match plan_number(s).unwrap() {
            Expr::Literal(a) => a.data_type().clone(),
            _ => unreachable!(),
        };
        assert_eq!(ty("10"), DataType::Int32);
        assert_eq!(ty("2147483648"), DataType::Int64);
        assert_eq!(ty("0.05"), DataType::Decimal128(3, 2));
        assert_eq!(ty("100.00"), DataType::Decimal128(5, 2));
        assert_eq!(ty("1e3"), DataType::Float64);
    }
}
