//! SQL to logical plan: parsing with `sqlparser` (DuckDB dialect), name resolution and typing.
//!
//! A statement is a query: `SELECT` with joins of every kind, subqueries (`subquery`: planned as
//! joins, never run per row), `WITH`, grouping and aggregates (`DISTINCT` ones split into two
//! aggregations), window functions (`window`), `UNION`/`INTERSECT`/`EXCEPT`, `ORDER BY` and
//! `LIMIT`. Expressions are typed with DuckDB's rules (`expr`; functions come from the registry in
//! `crate::expr`). `docs/sql.md` lists what runs; what does not is an [`Error::NotSupported`]
//! naming the construct, never a silent wrong answer.

mod expr;
mod select;
mod subquery;
mod window;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use sqlparser::ast::{self, SelectItem, SetExpr, Statement, TableFactor};
use sqlparser::dialect::DuckDbDialect;
use sqlparser::parser::{Parser, ParserError};

use self::expr::{ExprPlanner, Scope};
use self::select::{plan_order_by, plan_select, SelectPlan};
use crate::error::{Error, Result};
use crate::expr::Expr;
use crate::plan::{JoinType, LogicalPlan, SortKey};
use crate::source::{CsvOptions, Format, Table};

/// A name the SQL can read from.
#[derive(Debug, Clone)]
pub enum Relation {
    /// A set of files.
    Table(Arc<Table>),
    /// A named query (a pipeline step without output, or a registered view).
    View(LogicalPlan),
    /// A common table expression (`WITH name AS (...)`): computed once however often it is read.
    Cte {
        /// Its number, shared by every reference.
        id: u64,
        /// Its plan.
        plan: Box<LogicalPlan>,
    },
}

/// The names SQL can refer to, and where relative paths start.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    relations: HashMap<String, Relation>,
    base_dir: Option<PathBuf>,
}

impl Catalog {
    /// Adds or replaces a name (case-insensitive).
    pub fn insert(&mut self, name: &str, relation: Relation) {
        self.relations.insert(name.to_ascii_lowercase(), relation);
    }
    /// Looks a name up (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&Relation> {
        self.relations.get(&name.to_ascii_lowercase())
    }
    /// The registered tables (not views).
    pub fn tables(&self) -> Vec<Arc<Table>> {
        self.relations
            .values()
            .filter_map(|r| match r {
                Relation::Table(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.relations.keys().cloned().collect();
        v.sort();
        v
    }
    /// Sets the folder relative paths in SQL are resolved against.
    pub fn set_base_dir(&mut self, dir: impl Into<PathBuf>) {
        self.base_dir = Some(dir.into());
    }
    /// Resolves a path written in SQL or a pipeline file.
    pub fn resolve_path(&self, path: &str) -> String {
        match &self.base_dir {
            Some(base) if Path::new(path).is_relative() => base.join(path).to_string_lossy().into_owned(),
            _ => path.to_string(),
        }
    }
}

/// What a query being planned can see: the catalog, and the queries it is nested in (a
/// correlated subquery reads their columns).
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub catalog: &'a Catalog,
    pub outer: Option<&'a expr::Outer<'a>>,
}

/// Parses one SQL statement and plans it against `catalog`.
pub fn plan_sql(sql: &str, catalog: &Catalog) -> Result<LogicalPlan> {
    let statements = parse(sql)?;
    let statement = match statements.len() {
        1 => statements.into_iter().next().unwrap(),
        0 => return Err(Error::sql("empty statement")),
        n => return Err(Error::sql(format!("expected one statement, found {n}"))),
    };
    match statement {
        Statement::Query(query) => all_subqueries_planned(plan_query(&query, Ctx { catalog, outer: None })?),
        other => Err(Error::NotSupported(format!("statement {}", first_words(&other.to_string())))),
    }
}

/// A subquery the planner could not turn into a join (one inside the operand of another, say)
/// is left as a placeholder: refused here, before anything runs, rather than at the first row
/// (found by the fuzzer: "internal error: a subquery was not planned").
fn all_subqueries_planned(plan: LogicalPlan) -> Result<LogicalPlan> {
    fn has_subquery(e: &Expr) -> bool {
        let mut found = matches!(e, Expr::Subquery { .. });
        e.for_each_child(&mut |c| found |= has_subquery(c));
        found
    }
    let mut left = false;
    let plan = plan.transform_up(&mut |node| {
        node.map_exprs(&mut |e| {
            left |= has_subquery(&e);
            e
        })
    });
    match left {
        true => Err(Error::NotSupported(
            "a subquery in this place (inside another subquery's operand, or under a CASE there)".into(),
        )),
        false => Ok(plan),
    }
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The catalog names a query reads (tables and views in `FROM`, at any depth), each once, in the
/// order they appear. Quoted paths and table functions are not names and are left out.
pub fn referenced_relations(sql: &str) -> Result<Vec<String>> {
    fn in_query(q: &ast::Query, out: &mut Vec<String>) {
        in_set(&q.body, out);
    }
    fn in_set(e: &SetExpr, out: &mut Vec<String>) {
        match e {
            SetExpr::Select(select) => {
                for from in &select.from {
                    in_factor(&from.relation, out);
                    from.joins.iter().for_each(|j| in_factor(&j.relation, out));
                }
            }
            SetExpr::Query(q) => in_query(q, out),
            SetExpr::SetOperation { left, right, .. } => {
                in_set(left, out);
                in_set(right, out);
            }
            _ => {}
        }
    }
    fn in_factor(f: &TableFactor, out: &mut Vec<String>) {
        match f {
            TableFactor::Table { name, args: None, .. } => {
                if let [ast::ObjectNamePart::Identifier(ident)] = name.0.as_slice() {
                    if ident.quote_style != Some('\'') && !out.iter().any(|n| n.eq_ignore_ascii_case(&ident.value)) {
                        out.push(ident.value.clone());
                    }
                }
            }
            TableFactor::Derived { subquery, .. } => in_query(subquery, out),
            TableFactor::NestedJoin { table_with_joins, .. } => {
                in_factor(&table_with_joins.relation, out);
                table_with_joins.joins.iter().for_each(|j| in_factor(&j.relation, out));
            }
            _ => {}
        }
    }
    let statements = parse(sql)?;
    let mut out = Vec::new();
    for statement in &statements {
        if let Statement::Query(q) = statement {
            in_query(q, &mut out);
        }
    }
    Ok(out)
}

/// How deep the parser follows nested parentheses, subqueries and function calls: a level of
/// parentheses takes about two (sqlparser's own default, 50, stopped at 24 levels; DuckDB takes
/// 1000). sqlparser grows its stack as deep nesting needs.
const PARSER_RECURSION_LIMIT: usize = 2 * 1000 + 50;

/// Parses SQL text into statements.
fn parse(sql: &str) -> Result<Vec<Statement>> {
    Parser::new(&DuckDbDialect {})
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(parse_error)
}

/// Every word of `sql` that could name a table (identifiers, quoted or not, lowercased): a
/// superset of the tables it reads, at any depth, found without planning it.
pub fn mentioned_names(sql: &str) -> Vec<String> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&DuckDbDialect {}, sql).tokenize() else { return Vec::new() };
    let mut out: Vec<String> = tokens
        .into_iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.value.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// sqlparser's messages end with "at Line: L, Column: C"; lift those into the error's position.
fn parse_error(e: ParserError) -> Error {
    let text = match e {
        ParserError::ParserError(s) | ParserError::TokenizerError(s) => s,
        ParserError::RecursionLimitExceeded => {
            "query nests too deeply (more than 1000 levels of parentheses, subqueries or function calls)".into()
        }
    };
    if let Some(at) = text.rfind(" at Line: ") {
        let tail = &text[at + " at Line: ".len()..];
        let mut parts = tail.split(", Column: ");
        let line = parts.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
        let column = parts.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        return Error::Sql { message: lower_first(&text[..at]), line, column };
    }
    Error::sql(lower_first(&text))
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn plan_query(query: &ast::Query, ctx: Ctx<'_>) -> Result<LogicalPlan> {
    if let Some(with) = &query.with {
        return plan_with(with, query, ctx);
    }
    if query.fetch.is_some() {
        return Err(Error::NotSupported("FETCH".into()));
    }
    if !query.locks.is_empty()
        || query.for_clause.is_some()
        || query.settings.is_some()
        || query.format_clause.is_some()
    {
        return Err(Error::NotSupported("query clause".into()));
    }
    if !query.pipe_operators.is_empty() {
        return Err(Error::NotSupported("pipe operators".into()));
    }
    let select = match query.body.as_ref() {
        SetExpr::Select(select) => {
            let order_items: &[ast::OrderByExpr] = match query.order_by.as_ref().map(|o| &o.kind) {
                Some(ast::OrderByKind::Expressions(items)) => items,
                _ => &[],
            };
            plan_select(select, ctx, order_items)?
        }
        SetExpr::Query(inner) => {
            if query.order_by.is_some() || query.limit_clause.is_some() {
                return Err(Error::NotSupported("ORDER BY / LIMIT around a parenthesized query".into()));
            }
            return plan_query(inner, ctx);
        }
        set @ SetExpr::SetOperation { .. } => SelectPlan::over(plan_set_expr(set, ctx)?)?,
        SetExpr::Values(_) => return Err(Error::NotSupported("VALUES".into())),
        other => return Err(Error::NotSupported(first_words(&other.to_string()))),
    };
    let mut plan = match &query.order_by {
        None => select.project(),
        Some(order_by) => {
            let limit_rows = limit_rows(query)?;
            plan_order_by(select, order_by, limit_rows)?
        }
    };
    if let Some(limit) = &query.limit_clause {
        let (limit, offset) = match limit {
            ast::LimitClause::LimitOffset { limit, offset, limit_by } => {
                if !limit_by.is_empty() {
                    return Err(Error::NotSupported("LIMIT BY".into()));
                }
                (limit.as_ref(), offset.as_ref().map(|o| &o.value))
            }
            ast::LimitClause::OffsetCommaLimit { offset, limit } => (Some(limit), Some(offset)),
        };
        let fetch = limit.map(|e| count_literal(e, "LIMIT")).transpose()?.flatten();
        let skip = offset.map(|e| count_literal(e, "OFFSET")).transpose()?.flatten().unwrap_or(0);
        plan = LogicalPlan::Limit { input: Box::new(plan), skip, fetch };
    }
    Ok(plan)
}

/// `WITH a AS (...), b AS (...) query`: each name is a relation of the query (and of the later
/// names). One read once is planned in place, like a view; one read more often is computed once
/// and its rows read by each reference ([`LogicalPlan::Shared`]).
fn plan_with(with: &ast::With, query: &ast::Query, ctx: Ctx<'_>) -> Result<LogicalPlan> {
    if with.recursive {
        return Err(Error::NotSupported("WITH RECURSIVE".into()));
    }
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut catalog = ctx.catalog.clone();
    let mut ids = Vec::new();
    for cte in &with.cte_tables {
        let name = &cte.alias.name.value;
        let inner = Ctx { catalog: &catalog, outer: ctx.outer };
        let mut plan = plan_query(&cte.query, inner)?;
        if !cte.alias.columns.is_empty() {
            // `name (a, b) AS (...)`: the columns' names.
            let schema = plan.schema();
            let names = &cte.alias.columns;
            if names.len() > schema.fields().len() {
                return Err(Error::Plan(format!(
                    "WITH {name} names {} columns but its query returns {}",
                    names.len(),
                    schema.fields().len()
                )));
            }
            let exprs = (0..schema.fields().len()).map(|i| Expr::column(i, schema.field(i).name())).collect();
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| match names.get(i) {
                    Some(n) => f.as_ref().clone().with_name(n.name.value.clone()),
                    None => f.as_ref().clone(),
                })
                .collect();
            plan = LogicalPlan::Projection { input: Box::new(plan), exprs, schema: Arc::new(Schema::new(fields)) };
        }
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ids.push(id);
        catalog.insert(name, Relation::Cte { id, plan: Box::new(plan) });
    }
    let body = ast::Query { with: None, ..query.clone() };
    let plan = plan_query(&body, Ctx { catalog: &catalog, outer: ctx.outer })?;
    Ok(inline_single_use(plan, &ids))
}

/// Puts each of `ids` read only once back in place (nothing to share).
fn inline_single_use(plan: LogicalPlan, ids: &[u64]) -> LogicalPlan {
    fn count(plan: &LogicalPlan, id: u64) -> usize {
        let mut n = 0;
        let _ = plan.clone().transform_up(&mut |node| {
            if matches!(&node, LogicalPlan::Shared { id: i, .. } if *i == id) {
                n += 1;
            }
            node
        });
        n
    }
    let single: Vec<u64> = ids.iter().copied().filter(|&id| count(&plan, id) == 1).collect();
    if single.is_empty() {
        return plan;
    }
    plan.transform_up(&mut |node| match node {
        LogicalPlan::Shared { id, input, .. } if single.contains(&id) => *input,
        other => other,
    })
}

/// `skip + fetch` of the query's LIMIT, if it has one: all a sort below it has to produce.
fn limit_rows(query: &ast::Query) -> Result<Option<usize>> {
    Ok(match &query.limit_clause {
        Some(ast::LimitClause::LimitOffset { limit: Some(limit), offset, .. }) => {
            let fetch = count_literal(limit, "LIMIT")?;
            let skip = offset.as_ref().map(|o| count_literal(&o.value, "OFFSET")).transpose()?.flatten().unwrap_or(0);
            fetch.map(|f| f.saturating_add(skip))
        }
        Some(ast::LimitClause::OffsetCommaLimit { offset, limit }) => {
            let fetch = count_literal(limit, "LIMIT")?;
            let skip = count_literal(offset, "OFFSET")?.unwrap_or(0);
            fetch.map(|f| f.saturating_add(skip))
        }
        _ => None,
    })
}

/// Whether a literal is an integer (a position in GROUP BY and ORDER BY).
fn is_integer(v: &ast::Value) -> bool {
    matches!(v, ast::Value::Number(n, _) if n.bytes().all(|b| b.is_ascii_digit()))
}

/// A LIMIT or OFFSET count: a non-negative integer (`LIMIT NULL` / `LIMIT ALL` mean no limit).
fn count_literal(e: &ast::Expr, clause: &str) -> Result<Option<usize>> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::Number(n, _) => n
                .parse::<usize>()
                .map(Some)
                .map_err(|_| Error::Plan(format!("{clause} must be a non-negative integer, got {n}"))),
            ast::Value::Null => Ok(None),
            other => Err(Error::Plan(format!("{clause} must be a non-negative integer, got {other}"))),
        },
        ast::Expr::Identifier(id) if id.value.eq_ignore_ascii_case("all") => Ok(None),
        other => Err(Error::NotSupported(format!("{clause} with an expression ({other})"))),
    }
}

/// One operand of a set operation, or a set operation: `UNION ALL` concatenates its inputs (nested
/// ones flattened), `UNION` also removes duplicate rows (a grouping on every column, which spills
/// like any other).
fn plan_set_expr(e: &SetExpr, ctx: Ctx<'_>) -> Result<LogicalPlan> {
    match e {
        SetExpr::Select(select) => Ok(plan_select(select, ctx, &[])?.project()),
        SetExpr::Query(q) => plan_query(q, ctx),
        SetExpr::SetOperation { op: ast::SetOperator::Union, set_quantifier, left, right } => {
            let all = match set_quantifier {
                ast::SetQuantifier::All => true,
                ast::SetQuantifier::Distinct | ast::SetQuantifier::None => false,
                other => return Err(Error::NotSupported(format!("UNION {other}"))),
            };
            let mut inputs = Vec::new();
            for side in [left, right] {
                match (plan_set_expr(side, ctx)?, side.as_ref()) {
                    // UNION ALL of a UNION ALL: one list.
                    (LogicalPlan::Union { inputs: inner, .. }, SetExpr::SetOperation { .. }) if all => {
                        inputs.extend(inner)
                    }
                    (plan, _) => inputs.push(plan),
                }
            }
            let union = union_all(inputs)?;
            if all {
                return Ok(union);
            }
            let schema = union.schema();
            let group_exprs: Vec<Expr> =
                schema.fields().iter().enumerate().map(|(i, f)| Expr::column(i, f.name())).collect();
            Ok(LogicalPlan::Aggregate { input: Box::new(union), group_exprs, aggregates: Vec::new(), schema })
        }
        SetExpr::SetOperation {
            op: op @ (ast::SetOperator::Intersect | ast::SetOperator::Except),
            set_quantifier,
            left,
            right,
        } => {
            let all = match set_quantifier {
                ast::SetQuantifier::All => true,
                ast::SetQuantifier::Distinct | ast::SetQuantifier::None => false,
                other => return Err(Error::NotSupported(format!("{op} {other}"))),
            };
            let intersect = matches!(op, ast::SetOperator::Intersect);
            intersect_except(plan_set_expr(left, ctx)?, plan_set_expr(right, ctx)?, intersect, all)
        }
        SetExpr::SetOperation { op, .. } => Err(Error::NotSupported(format!("{op}"))),
        SetExpr::Values(_) => Err(Error::NotSupported("VALUES".into())),
        other => Err(Error::NotSupported(first_words(&other.to_string()))),
    }
}

/// `INTERSECT` and `EXCEPT` (with `ALL`: as many copies as SQL says): the two inputs tagged and
/// unioned, grouped on every column (nulls equal, as set operations want), with each group's rows
/// counted per side; a group's count on each side decides whether (and how often) it is output.
/// The grouping spills like any other.
fn intersect_except(left: LogicalPlan, right: LogicalPlan, intersect: bool, all: bool) -> Result<LogicalPlan> {
    use crate::expr::{AggregateExpr, AggregateFunction as F, BinaryOp, Function};
    use arrow::array::Int64Array;
    use arrow::datatypes::DataType;
    let width = left.schema().fields().len();
    if right.schema().fields().len() != width {
        return Err(Error::Plan(format!(
            "{} inputs must have the same number of columns ({width} and {})",
            if intersect { "INTERSECT" } else { "EXCEPT" },
            right.schema().fields().len()
        )));
    }
    let int = |v: i64| Expr::Literal(Arc::new(Int64Array::from(vec![v])));
    let tagged = |plan: LogicalPlan, tag: i64| {
        let schema = plan.schema();
        let mut exprs: Vec<Expr> = (0..width).map(|i| Expr::column(i, schema.field(i).name())).collect();
        exprs.push(int(tag));
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("__side", DataType::Int64, false));
        LogicalPlan::Projection { input: Box::new(plan), exprs, schema: Arc::new(Schema::new(fields)) }
    };
    let union = union_all(vec![tagged(left, 0), tagged(right, 1)])?;
    let schema = union.schema();
    let col = |i: usize| Expr::column(i, schema.field(i).name());
    let groups: Vec<Expr> = (0..width).map(col).collect();
    let aggregates = vec![
        AggregateExpr { func: F::CountStar, arg: None, distinct: false, data_type: DataType::Int64 },
        AggregateExpr { func: F::Sum, arg: Some(col(width)), distinct: false, data_type: DataType::Decimal128(38, 0) },
    ];
    let mut fields: Vec<Field> = (0..width).map(|i| schema.field(i).clone()).collect();
    fields.push(Field::new("__rows", DataType::Int64, true));
    fields.push(Field::new("__right", DataType::Decimal128(38, 0), true));
    let agg_schema = Arc::new(Schema::new(fields));
    let grouped =
        LogicalPlan::Aggregate { input: Box::new(union), group_exprs: groups, aggregates, schema: agg_schema };
    let binary = |op: BinaryOp, l: Expr, r: Expr, t: DataType| Expr::Binary {
        op,
        left: Box::new(l),
        right: Box::new(r),
        data_type: t,
    };
    // Rows of each side in the group.
    let right_rows = Expr::Cast { expr: Box::new(Expr::column(width + 1, "__right")), to: DataType::Int64 };
    let left_rows = binary(BinaryOp::Minus, Expr::column(width, "__rows"), right_rows.clone(), DataType::Int64);
    // How many copies of the group come out.
    let copies = match (intersect, all) {
        (true, false) => Expr::Case {
            whens: vec![(
                binary(
                    BinaryOp::And,
                    binary(BinaryOp::Gt, left_rows, int(0), DataType::Boolean),
                    binary(BinaryOp::Gt, right_rows, int(0), DataType::Boolean),
                    DataType::Boolean,
                ),
                int(1),
            )],
            otherwise: Some(Box::new(int(0))),
            data_type: DataType::Int64,
        },
        (false, false) => Expr::Case {
            whens: vec![(
                binary(
                    BinaryOp::And,
                    binary(BinaryOp::Gt, left_rows, int(0), DataType::Boolean),
                    binary(BinaryOp::Eq, right_rows, int(0), DataType::Boolean),
                    DataType::Boolean,
                ),
                int(1),
            )],
            otherwise: Some(Box::new(int(0))),
            data_type: DataType::Int64,
        },
        (true, true) => Expr::Function {
            func: Function::of(&crate::expr::LEAST),
            args: vec![left_rows, right_rows],
            data_type: DataType::Int64,
        },
        (false, true) => binary(BinaryOp::Minus, left_rows, right_rows, DataType::Int64),
    };
    let out_schema = grouped.schema();
    let mut exprs: Vec<Expr> = (0..width).map(|i| Expr::column(i, out_schema.field(i).name())).collect();
    exprs.push(copies);
    let mut fields: Vec<Field> = (0..width).map(|i| out_schema.field(i).clone()).collect();
    fields.push(Field::new("__copies", DataType::Int64, true));
    let counted = LogicalPlan::Projection { input: Box::new(grouped), exprs, schema: Arc::new(Schema::new(fields)) };
    let positive = LogicalPlan::Filter {
        input: Box::new(counted),
        predicate: binary(BinaryOp::Gt, Expr::column(width, "__copies"), int(0), DataType::Boolean),
    };
    Ok(LogicalPlan::Repeat { input: Box::new(positive) })
}

/// Inputs of a union, cast to the column types common to all of them.
fn union_all(inputs: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    let first = inputs[0].schema();
    let width = first.fields().len();
    let mut types: Vec<arrow::datatypes::DataType> = first.fields().iter().map(|f| f.data_type().clone()).collect();
    for input in &inputs[1..] {
        let schema = input.schema();
        if schema.fields().len() != width {
            return Err(Error::Plan(format!(
                "UNION inputs must have the same number of columns ({width} and {})",
                schema.fields().len()
            )));
        }
        for (i, f) in schema.fields().iter().enumerate() {
            // As in DuckDB, a union of a string with anything else is a string.
            let as_string = |a: &arrow::datatypes::DataType, b: &arrow::datatypes::DataType| {
                (crate::expr::types::is_string(a) || crate::expr::types::is_string(b))
                    .then_some(arrow::datatypes::DataType::Utf8)
            };
            let common = crate::expr::types::common_type(&types[i], f.data_type())
                .or_else(|| as_string(&types[i], f.data_type()));
            types[i] = common.ok_or_else(|| {
                Error::Plan(format!(
                    "UNION column {} ('{}') is {} in one input and {} in another",
                    i + 1,
                    first.field(i).name(),
                    crate::expr::types::sql_type_name(&types[i]),
                    crate::expr::types::sql_type_name(f.data_type())
                ))
            })?;
        }
    }
    let types: Vec<_> = types
        .into_iter()
        .map(|t| if t == arrow::datatypes::DataType::Null { arrow::datatypes::DataType::Int32 } else { t })
        .collect();
    let fields: Vec<Field> =
        first.fields().iter().zip(&types).map(|(f, t)| Field::new(f.name(), t.clone(), true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let inputs = inputs
        .into_iter()
        .map(|input| {
            let in_schema = input.schema();
            let exprs: Vec<Expr> = (0..width)
                .map(|i| {
                    let column = Expr::column(i, in_schema.field(i).name());
                    if in_schema.field(i).data_type() == &types[i] {
                        column
                    } else {
                        Expr::Cast { expr: Box::new(column), to: types[i].clone() }
                    }
                })
                .collect();
            if exprs.iter().all(|e| matches!(e, Expr::Column { .. })) {
                input
            } else {
                LogicalPlan::Projection { input: Box::new(input), exprs, schema: schema.clone() }
            }
        })
        .collect();
    Ok(LogicalPlan::Union { inputs, schema })
}

/// The FROM clause: each item with its joins; items separated by commas are cross joined (the
/// optimizer turns `WHERE` equalities between them into join keys).
fn plan_from(from: &[ast::TableWithJoins], ctx: Ctx<'_>) -> Result<(LogicalPlan, Scope)> {
    let mut acc: Option<(LogicalPlan, Scope)> = None;
    for item in from {
        let mut current = plan_relation(&item.relation, ctx)?;
        for join in &item.joins {
            current = plan_join(current, join, ctx)?;
        }
        acc = Some(match acc {
            None => current,
            Some((plan, scope)) => {
                let scope = scope.join(&current.1);
                (LogicalPlan::join(plan, current.0, JoinType::Inner, Vec::new(), None), scope)
            }
        });
    }
    acc.ok_or_else(|| Error::NotSupported("SELECT without FROM".into()))
}

/// `left <join> right ON ... | USING (...)`.
fn plan_join(left: (LogicalPlan, Scope), join: &ast::Join, ctx: Ctx<'_>) -> Result<(LogicalPlan, Scope)> {
    use ast::JoinOperator as J;
    let (join_type, constraint) = match &join.join_operator {
        J::Join(c) | J::Inner(c) | J::CrossJoin(c) => (JoinType::Inner, c),
        J::Left(c) | J::LeftOuter(c) => (JoinType::Left, c),
        J::Right(c) | J::RightOuter(c) => (JoinType::Right, c),
        J::FullOuter(c) => (JoinType::Full, c),
        other => {
            let text = other_join_name(other);
            return Err(Error::NotSupported(text));
        }
    };
    let (left_plan, left_scope) = left;
    let (right_plan, right_scope) = plan_relation(&join.relation, ctx)?;
    let nl = left_scope.len();
    let mut scope = left_scope.join(&right_scope);
    let schema = crate::plan::join_schema(&left_plan.schema(), &right_plan.schema());
    let planner = ExprPlanner::new(&scope, schema.clone());
    let mut coalesce = Vec::new();
    let mut hidden = Vec::new();
    let filter = match constraint {
        ast::JoinConstraint::On(e) => Some(planner.plan_predicate(e, "ON")?),
        ast::JoinConstraint::None => None,
        ast::JoinConstraint::Using(names) => {
            let mut conditions = Vec::new();
            for name in names {
                let text = name.to_string();
                let (Some(l), Some(r)) = (find_in(&left_scope, &text, "left")?, find_in(&right_scope, &text, "right")?)
                else {
                    unreachable!("find_in errors on a missing column")
                };
                let (le, re) = (Expr::column(l, left_scope.name(l)), Expr::column(nl + r, right_scope.name(r)));
                let eq = planner.equals(le, re, &format!("USING ({text})"))?;
                if join_type.keeps_right() {
                    coalesce.push((l, eq.clone()));
                }
                conditions.push(eq);
                hidden.push(nl + r);
            }
            crate::plan::conjunction(conditions)
        }
        ast::JoinConstraint::Natural => return Err(Error::NotSupported("NATURAL JOIN".into())),
        ast::JoinConstraint::UsingAlias(..) => return Err(Error::NotSupported("JOIN USING (...) AS alias".into())),
    };
    drop(planner);
    for i in hidden {
        scope.hide(i);
    }
    let mut plan = LogicalPlan::join(left_plan, right_plan, join_type, Vec::new(), filter);
    if !coalesce.is_empty() {
        // RIGHT and FULL JOIN USING: the shared column is the value from whichever side has one.
        let mut exprs: Vec<Expr> =
            (0..schema.fields().len()).map(|i| Expr::column(i, schema.field(i).name())).collect();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (l, eq) in coalesce {
            let Expr::Binary { left: lk, right: rk, .. } = eq else { unreachable!("equals builds a comparison") };
            let data_type = lk.data_type(&schema);
            fields[l] = Field::new(schema.field(l).name(), data_type.clone(), true);
            exprs[l] = Expr::Function {
                func: crate::expr::Function::of(&crate::expr::COALESCE),
                args: vec![*lk, *rk],
                data_type,
            };
        }
        plan = LogicalPlan::Projection { input: Box::new(plan), exprs, schema: Arc::new(Schema::new(fields)) };
    }
    Ok((plan, scope))
}

fn other_join_name(op: &ast::JoinOperator) -> String {
    use ast::JoinOperator as J;
    match op {
        J::Semi(_) | J::LeftSemi(_) | J::RightSemi(_) => "SEMI JOIN".into(),
        J::Anti(_) | J::LeftAnti(_) | J::RightAnti(_) => "ANTI JOIN".into(),
        J::CrossApply | J::OuterApply => "APPLY".into(),
        J::AsOf { .. } => "ASOF JOIN".into(),
        J::StraightJoin(_) => "STRAIGHT_JOIN".into(),
        _ => "ARRAY JOIN".into(),
    }
}

/// The column `name` of one side of `JOIN ... USING`.
fn find_in(scope: &Scope, name: &str, side: &str) -> Result<Option<usize>> {
    scope
        .find(name)
        .map(Some)
        .map_err(|_| Error::Plan(format!("column '{name}' in USING is not a column of the {side} side of the join")))
}

fn plan_relation(relation: &TableFactor, ctx: Ctx<'_>) -> Result<(LogicalPlan, Scope)> {
    match relation {
        TableFactor::NestedJoin { table_with_joins, alias } => {
            if alias.is_some() {
                return Err(Error::NotSupported("an alias on a parenthesized join".into()));
            }
            plan_from(std::slice::from_ref(table_with_joins), ctx)
        }
        TableFactor::Table { name, alias, args, .. } => {
            let parts: Vec<&ast::Ident> = name.0.iter().filter_map(|p| p.as_ident()).collect();
            let [ident] = parts.as_slice() else {
                return Err(Error::NotSupported(format!("qualified table name {name}")));
            };
            let (plan, default_name) = match args {
                Some(args) => (plan_table_function(&ident.value, &args.args, ctx)?, ident.value.clone()),
                None if ident.quote_style == Some('\'') => {
                    let table = Table::open(&ident.value, &ctx.catalog.resolve_path(&ident.value), None)?;
                    (LogicalPlan::scan(Arc::new(table)), file_stem(&ident.value))
                }
                None => match ctx.catalog.get(&ident.value) {
                    Some(Relation::Table(t)) => (LogicalPlan::scan(t.clone()), ident.value.clone()),
                    Some(Relation::View(plan)) => (plan.clone(), ident.value.clone()),
                    Some(Relation::Cte { id, plan }) => (
                        LogicalPlan::Shared { id: *id, name: ident.value.clone(), input: plan.clone() },
                        ident.value.clone(),
                    ),
                    None => {
                        let names = ctx.catalog.names();
                        let hint = expr::closest(&ident.value, names.iter().map(|s| s.as_str()))
                            .map(|c| format!(" (hint: did you mean {c}?)"))
                            .unwrap_or_else(|| {
                                if names.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (known: {})", names.join(", "))
                                }
                            });
                        return Err(Error::Sql {
                            message: format!("unknown table '{}'{hint}", ident.value),
                            line: ident.span.start.line,
                            column: ident.span.start.column,
                        });
                    }
                },
            };
            let qualifier = alias.as_ref().map(|a| a.name.value.clone()).unwrap_or(default_name);
            let scope = Scope::new(&plan.schema(), Some(&qualifier), alias.as_ref().map(|a| &a.columns[..]))?;
            Ok((plan, scope))
        }
        TableFactor::Derived { lateral, subquery, alias, .. } => {
            if *lateral {
                return Err(Error::NotSupported("LATERAL".into()));
            }
            let plan = plan_query(subquery, ctx)?;
            let qualifier = alias.as_ref().map(|a| a.name.value.clone());
            let scope = Scope::new(&plan.schema(), qualifier.as_deref(), alias.as_ref().map(|a| &a.columns[..]))?;
            Ok((plan, scope))
        }
        other => Err(Error::NotSupported(format!("FROM {}", first_words(&other.to_string())))),
    }
}

fn file_stem(path: &str) -> String {
    Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.to_string())
}

/// `read_parquet('path')`, `read_csv('path', delim=';', header=false)`, `read_json('path')`.
fn plan_table_function(name: &str, args: &[ast::FunctionArg], ctx: Ctx<'_>) -> Result<LogicalPlan> {
    let lower = name.to_ascii_lowercase();
    let mut path: Option<String> = None;
    let mut options: Vec<(String, ast::Expr)> = Vec::new();
    for arg in args {
        match arg {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) if path.is_none() => {
                path =
                    Some(string_literal(e).ok_or_else(|| Error::Plan(format!("{name}() takes a path as a string")))?);
            }
            ast::FunctionArg::Named { name: n, arg: ast::FunctionArgExpr::Expr(e), .. } => {
                options.push((n.value.to_ascii_lowercase(), e.clone()));
            }
            ast::FunctionArg::ExprNamed {
                name: ast::Expr::Identifier(n), arg: ast::FunctionArgExpr::Expr(e), ..
            } => {
                options.push((n.value.to_ascii_lowercase(), e.clone()));
            }
            other => return Err(Error::Plan(format!("unexpected argument {other} to {name}()"))),
        }
    }
    let path = path.ok_or_else(|| Error::Plan(format!("{name}() needs a path")))?;
    // Every reader takes union_by_name.
    let mut union_by_name = false;
    if let Some(i) = options.iter().position(|(k, _)| k == "union_by_name") {
        union_by_name = boolean_literal(&options.remove(i).1)
            .ok_or_else(|| Error::Plan(format!("{name}() union_by_name must be true or false")))?;
    }
    let format = match lower.as_str() {
        "read_parquet" | "parquet_scan" => {
            if let Some((k, _)) = options.first() {
                return Err(Error::NotSupported(format!("read_parquet option '{k}'")));
            }
            Format::Parquet
        }
        "read_json" | "read_ndjson" | "read_json_auto" | "read_ndjson_auto" => {
            if let Some((k, _)) = options.first() {
                return Err(Error::NotSupported(format!("read_json option '{k}'")));
            }
            Format::Json
        }
        "read_csv" | "read_csv_auto" => {
            let mut csv = CsvOptions::default();
            for (k, v) in &options {
                match k.as_str() {
                    "delim" | "sep" | "delimiter" => csv.delimiter = single_byte(v, k)?,
                    "quote" => csv.quote = single_byte(v, k)?,
                    "header" => {
                        csv.has_header = boolean_literal(v)
                            .ok_or_else(|| Error::Plan("read_csv header must be true or false".into()))?;
                    }
                    "sample_size" => {
                        csv.infer_rows = count_literal(v, "sample_size")?.unwrap_or(usize::MAX);
                    }
                    _ => return Err(Error::NotSupported(format!("read_csv option '{k}'"))),
                }
            }
            Format::Csv(csv)
        }
        _ => {
            return Err(Error::NotSupported(format!(
                "table function {name}() (hint: read_parquet, read_csv and read_json are available)"
            )))
        }
    };
    let table = Table::open_with(&path, &ctx.catalog.resolve_path(&path), Some(format), union_by_name)?;
    Ok(LogicalPlan::scan(Arc::new(table)))
}

fn boolean_literal(e: &ast::Expr) -> Option<bool> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::Boolean(b) => Some(*b),
            _ => None,
        },
        _ => None,
    }
}

fn string_literal(e: &ast::Expr) -> Option<String> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn single_byte(e: &ast::Expr, option: &str) -> Result<u8> {
    let s = string_literal(e).ok_or_else(|| Error::Plan(format!("read_csv {option} must be a string")))?;
    let s = if s == "\\t" { "\t".to_string() } else { s };
    match s.as_bytes() {
        [b] => Ok(*b),
        _ => Err(Error::Plan(format!("read_csv {option} must be one character, got '{s}'"))),
    }
}
