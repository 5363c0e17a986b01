//! Logical plans and the optimizer passes that run on them before execution.
//!
//! ```text
//! Limit ── Projection ── Filter ── Scan(table, columns, pruning)
//!                               └─ Join ── Scan
//!                                       └─ Scan
//! ```
//! A scan feeds stateless filters and projections, a limit cuts the stream; sorts, aggregations
//! and joins are pipeline breakers whose output feeds the operators above them. [`optimize`]
//! orders inner joins from row-count estimates, pushes filters down through joins (turning
//! equalities between the two sides into join keys), pushes projections into scans (only needed
//! columns are decoded) and hands filters directly above a scan to it for row-group and page pruning.

mod eager;
mod joins;
mod simplify;
pub mod stats;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::expr::Expr;
use crate::source::{PruningPredicate, Table};

pub use self::joins::{conjunction, estimate_rows, push_semi_joins};
pub use self::simplify::simplify_expr;

/// A relational plan.
#[derive(Debug, Clone)]
pub enum LogicalPlan {
    /// Reads a table.
    Scan {
        /// The table.
        table: Arc<Table>,
        /// Columns read, as indices into the table's schema.
        projection: Vec<usize>,
        /// Row-group statistics tests from the filter above, if any.
        pruning: Option<PruningPredicate>,
        /// The output schema (the projected columns).
        schema: SchemaRef,
    },
    /// Keeps rows where `predicate` is true.
    Filter {
        /// Input.
        input: Box<LogicalPlan>,
        /// A boolean expression over the input.
        predicate: Expr,
    },
    /// Computes one column per expression.
    Projection {
        /// Input.
        input: Box<LogicalPlan>,
        /// Expressions over the input.
        exprs: Vec<Expr>,
        /// The output schema: one field per expression.
        schema: SchemaRef,
    },
    /// Groups rows by `group_exprs` and computes `aggregates` per group: a blocking operator
    /// (hybrid hash aggregation that spills partitions, see [`crate::exec`]). Output: the group
    /// columns, then one column per aggregate.
    Aggregate {
        /// Input.
        input: Box<LogicalPlan>,
        /// Grouping expressions over the input (none: one group for the whole input).
        group_exprs: Vec<Expr>,
        /// Aggregates over the input.
        aggregates: Vec<crate::expr::AggregateExpr>,
        /// Output schema.
        schema: SchemaRef,
    },
    /// Orders rows by key columns (a blocking operator that spills sorted runs, see
    /// [`crate::exec`]). With `fetch`, only the first `fetch` rows are needed (top-k).
    Sort {
        /// Input.
        input: Box<LogicalPlan>,
        /// Sort keys, most significant first.
        keys: Vec<SortKey>,
        /// How many rows the consumer needs at most (`skip + fetch` of a limit above).
        fetch: Option<usize>,
    },
    /// Pairs rows of `left` and `right` (a blocking operator on the side that builds, see
    /// [`crate::exec`]). Output: the left columns, then the right columns.
    Join {
        /// Left input.
        left: Box<LogicalPlan>,
        /// Right input.
        right: Box<LogicalPlan>,
        /// Which unmatched rows are kept.
        join_type: JoinType,
        /// Equality keys: an expression over the left input and one over the right, of the same
        /// type. A pair matches when every key is equal and not null. None: every pair is a
        /// candidate (a cross join, or a join on other conditions only).
        on: Vec<(Expr, Expr)>,
        /// Further conditions a candidate pair must meet, over the output columns.
        filter: Option<Expr>,
        /// Output schema (every field nullable).
        schema: SchemaRef,
    },
    /// The rows of every input, one input after another (`UNION ALL`); inputs have the union's
    /// column types.
    Union {
        /// Inputs, in order.
        inputs: Vec<LogicalPlan>,
        /// Output schema: names of the first input, types common to all.
        schema: SchemaRef,
    },
    /// A common table expression read more than once: computed once (materialized within the
    /// budget, spilling if large), its rows read by every reference with the same `id`.
    Shared {
        /// Which CTE: every reference with this id reads the same rows.
        id: u64,
        /// Its name, for display.
        name: String,
        /// Its plan (every reference holds the same one).
        input: Box<LogicalPlan>,
    },
    /// Window functions: every input row, with one column per function computed over its
    /// partition (rows with equal `partition_by` columns) in `order_by` order (a blocking
    /// operator that sorts, see [`crate::exec`]).
    Window {
        /// Input.
        input: Box<LogicalPlan>,
        /// Partition columns of the input.
        partition_by: Vec<usize>,
        /// Ordering within a partition, over input columns.
        order_by: Vec<SortKey>,
        /// The functions, their arguments over the input.
        functions: Vec<crate::expr::window::WindowExpr>,
        /// The input's columns, then one per function.
        schema: SchemaRef,
    },
    /// Each row of the input as many times as its last column (a BIGINT) says, without that
    /// column: `INTERSECT ALL` and `EXCEPT ALL`.
    Repeat {
        /// Input: the output columns, then the count.
        input: Box<LogicalPlan>,
    },
    /// Skips `skip` rows, then passes at most `fetch`.
    Limit {
        /// Input.
        input: Box<LogicalPlan>,
        /// Rows to skip.
        skip: usize,
        /// Rows to pass after skipping (`None`: all).
        fetch: Option<usize>,
    },
}

/// Which rows a join keeps besides matching pairs.
///
/// `Semi`, `Anti` and `Mark` are how subqueries run (`EXISTS`, `IN`, and their negations): the
/// left input is the query, the right one the subquery, and the output has the left columns only
/// (and, for `Mark`, one boolean column saying whether the row found a partner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinType {
    /// Matching pairs only (also `CROSS JOIN`, with no keys).
    Inner,
    /// Also left rows without a match, with nulls for the right columns.
    Left,
    /// Also right rows without a match, with nulls for the left columns.
    Right,
    /// Both.
    Full,
    /// Left rows that have a partner, each once (`EXISTS`, `IN`).
    Semi,
    /// Left rows that have no partner (`NOT EXISTS`, `NOT IN`).
    Anti {
        /// `NOT IN` semantics for the one key: a null on either side means "unknown", so a left
        /// row is kept only if its key is not null and the right side has no null key (or the
        /// right side is empty).
        null_aware: bool,
    },
    /// Every left row, with a boolean column: whether it has a partner (`EXISTS` or `IN` inside
    /// an expression).
    Mark {
        /// `IN` semantics for the one key: the mark is null (unknown) instead of false when the
        /// left key is null or the right side has a null key (and the right side is not empty).
        null_aware: bool,
    },
}

impl JoinType {
    /// Left rows without a partner are in the output.
    pub fn keeps_left(self) -> bool {
        matches!(self, JoinType::Left | JoinType::Full | JoinType::Anti { .. } | JoinType::Mark { .. })
    }
    /// Right rows without a partner are in the output.
    pub fn keeps_right(self) -> bool {
        matches!(self, JoinType::Right | JoinType::Full)
    }
    /// The output has the left columns only (and a mark): `Semi`, `Anti`, `Mark`.
    pub fn is_existence(self) -> bool {
        matches!(self, JoinType::Semi | JoinType::Anti { .. } | JoinType::Mark { .. })
    }
    /// `null_aware` of an anti or mark join.
    pub fn is_null_aware(self) -> bool {
        matches!(self, JoinType::Anti { null_aware: true } | JoinType::Mark { null_aware: true })
    }
    /// The join type as SQL (and `EXPLAIN`) name it.
    pub fn name(self) -> &'static str {
        match self {
            JoinType::Inner => "INNER",
            JoinType::Left => "LEFT",
            JoinType::Right => "RIGHT",
            JoinType::Full => "FULL",
            JoinType::Semi => "SEMI",
            JoinType::Anti { null_aware: false } => "ANTI",
            JoinType::Anti { null_aware: true } => "ANTI (null-aware)",
            JoinType::Mark { null_aware: false } => "MARK",
            JoinType::Mark { null_aware: true } => "MARK (null-aware)",
        }
    }
}

/// A projection's columns for `EXPLAIN`: `expr AS name`, or `expr` where that is its name.
pub(crate) fn projection_items(exprs: &[Expr], schema: &Schema) -> String {
    let items: Vec<String> = exprs
        .iter()
        .zip(schema.fields())
        .map(|(e, f)| {
            let text = e.to_string();
            if &text == f.name() {
                text
            } else {
                format!("{text} AS {}", f.name())
            }
        })
        .collect();
    items.join(", ")
}

/// A window's functions, partition columns and order keys for `EXPLAIN`:
/// `[f(..), ...] partition by [a, ...] order by [b DESC, ...]`.
pub(crate) fn window_items(
    schema: &Schema,
    partition_by: &[usize],
    order_by: &[SortKey],
    functions: &[crate::expr::window::WindowExpr],
) -> String {
    let parts: Vec<&str> = partition_by.iter().map(|&c| schema.field(c).name().as_str()).collect();
    let order: Vec<String> = order_by
        .iter()
        .map(|k| format!("{}{}", schema.field(k.column).name(), if k.descending { " DESC" } else { "" }))
        .collect();
    let funcs: Vec<String> = functions.iter().map(|f| f.to_string()).collect();
    format!("[{}] partition by [{}] order by [{}]", funcs.join(", "), parts.join(", "), order.join(", "))
}

/// One ORDER BY key: a column of the sort's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// The column.
    pub column: usize,
    /// `DESC`.
    pub descending: bool,
    /// `NULLS FIRST` (DuckDB's default is NULLS LAST for both directions).
    pub nulls_first: bool,
}

impl LogicalPlan {
    /// This node with each input replaced by `f(input)`.
    pub fn map_inputs(self, f: &mut dyn FnMut(LogicalPlan) -> LogicalPlan) -> LogicalPlan {
        match self {
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
                let left = Box::new(f(*left));
                LogicalPlan::Join { left, right: Box::new(f(*right)), join_type, on, filter, schema }
            }
            LogicalPlan::Union { inputs, schema } => {
                LogicalPlan::Union { inputs: inputs.into_iter().map(&mut *f).collect(), schema }
            }
            LogicalPlan::Shared { id, name, input } => LogicalPlan::Shared { id, name, input: Box::new(f(*input)) },
            LogicalPlan::Repeat { input } => LogicalPlan::Repeat { input: Box::new(f(*input)) },
            LogicalPlan::Window { input, partition_by, order_by, functions, schema } => {
                LogicalPlan::Window { input: Box::new(f(*input)), partition_by, order_by, functions, schema }
            }
        }
    }

    /// This node with each of its own expressions (not its inputs') replaced by `f(expr)`.
    pub fn map_exprs(self, f: &mut dyn FnMut(Expr) -> Expr) -> LogicalPlan {
        match self {
            LogicalPlan::Filter { input, predicate } => LogicalPlan::Filter { input, predicate: f(predicate) },
            LogicalPlan::Projection { input, exprs, schema } => {
                LogicalPlan::Projection { input, exprs: exprs.into_iter().map(&mut *f).collect(), schema }
            }
            LogicalPlan::Aggregate { input, group_exprs, aggregates, schema } => LogicalPlan::Aggregate {
                input,
                group_exprs: group_exprs.into_iter().map(&mut *f).collect(),
                aggregates: aggregates
                    .into_iter()
                    .map(|a| crate::expr::AggregateExpr { arg: a.arg.map(&mut *f), ..a })
                    .collect(),
                schema,
            },
            LogicalPlan::Join { left, right, join_type, on, filter, schema } => LogicalPlan::Join {
                left,
                right,
                join_type,
                on: on.into_iter().map(|(l, r)| (f(l), f(r))).collect(),
                filter: filter.map(&mut *f),
                schema,
            },
            LogicalPlan::Window { input, partition_by, order_by, functions, schema } => LogicalPlan::Window {
                input,
                partition_by,
                order_by,
                functions: functions
                    .into_iter()
                    .map(|w| crate::expr::window::WindowExpr { args: w.args.into_iter().map(&mut *f).collect(), ..w })
                    .collect(),
                schema,
            },
            other => other,
        }
    }

    /// The node's inputs.
    pub fn inputs(&self) -> Vec<&LogicalPlan> {
        match self {
            LogicalPlan::Scan { .. } => vec![],
            LogicalPlan::Filter { input, .. }
            | LogicalPlan::Projection { input, .. }
            | LogicalPlan::Aggregate { input, .. }
            | LogicalPlan::Sort { input, .. }
            | LogicalPlan::Limit { input, .. }
            | LogicalPlan::Shared { input, .. }
            | LogicalPlan::Repeat { input }
            | LogicalPlan::Window { input, .. } => vec![input],
            LogicalPlan::Join { left, right, .. } => vec![left, right],
            LogicalPlan::Union { inputs, .. } => inputs.iter().collect(),
        }
    }

    /// Every table the plan scans, each once.
    pub fn tables(&self) -> Vec<Arc<crate::source::Table>> {
        fn walk(plan: &LogicalPlan, out: &mut Vec<Arc<crate::source::Table>>) {
            if let LogicalPlan::Scan { table, .. } = plan {
                if !out.iter().any(|t| Arc::ptr_eq(t, table)) {
                    out.push(table.clone());
                }
            }
            plan.inputs().into_iter().for_each(|i| walk(i, out));
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }

    /// Rewrites every node bottom-up with `f`.
    pub fn transform_up(self, f: &mut dyn FnMut(LogicalPlan) -> LogicalPlan) -> LogicalPlan {
        let node = self.map_inputs(&mut |input| input.transform_up(f));
        f(node)
    }

    /// The plan's output schema.
    pub fn schema(&self) -> SchemaRef {
        match self {
            LogicalPlan::Scan { schema, .. }
            | LogicalPlan::Projection { schema, .. }
            | LogicalPlan::Aggregate { schema, .. }
            | LogicalPlan::Join { schema, .. }
            | LogicalPlan::Window { schema, .. }
            | LogicalPlan::Union { schema, .. } => schema.clone(),
            LogicalPlan::Filter { input, .. }
            | LogicalPlan::Limit { input, .. }
            | LogicalPlan::Sort { input, .. }
            | LogicalPlan::Shared { input, .. } => input.schema(),
            LogicalPlan::Repeat { input } => {
                let schema = input.schema();
                let n = schema.fields().len();
                Arc::new(schema.project(&(0..n - 1).collect::<Vec<_>>()).expect("columns of the input"))
            }
        }
    }

    /// A scan of every column of `table`.
    pub fn scan(table: Arc<Table>) -> LogicalPlan {
        let schema = table.schema().clone();
        LogicalPlan::Scan { projection: (0..schema.fields().len()).collect(), table, pruning: None, schema }
    }

    /// A join of `left` and `right`.
    pub fn join(
        left: LogicalPlan,
        right: LogicalPlan,
        join_type: JoinType,
        on: Vec<(Expr, Expr)>,
        filter: Option<Expr>,
    ) -> LogicalPlan {
        let schema = join_output_schema(&left.schema(), &right.schema(), join_type);
        LogicalPlan::Join { left: Box::new(left), right: Box::new(right), join_type, on, filter, schema }
    }

    /// Renders the plan as an indented tree, one node per line.
    pub fn display_tree(&self) -> String {
        let mut out = String::new();
        self.write_tree(&mut out, 0);
        out
    }

    fn write_tree(&self, out: &mut String, depth: usize) {
        let pad = "  ".repeat(depth);
        match self {
            LogicalPlan::Scan { table, schema, pruning, .. } => {
                let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                let _ = writeln!(
                    out,
                    "{pad}Scan: {} [{}]{}",
                    table.name(),
                    cols.join(", "),
                    if pruning.is_some() { " (row-group and page pruning)" } else { "" }
                );
            }
            LogicalPlan::Filter { input, predicate } => {
                let _ = writeln!(out, "{pad}Filter: {predicate}");
                input.write_tree(out, depth + 1);
            }
            LogicalPlan::Projection { input, exprs, schema } => {
                let _ = writeln!(out, "{pad}Projection: {}", projection_items(exprs, schema));
                input.write_tree(out, depth + 1);
            }
            LogicalPlan::Aggregate { input, group_exprs, aggregates, .. } => {
                let groups: Vec<String> = group_exprs.iter().map(|e| e.to_string()).collect();
                let aggs: Vec<String> = aggregates.iter().map(|a| a.to_string()).collect();
                let _ =
                    writeln!(out, "{pad}Aggregate: groups=[{}], aggregates=[{}]", groups.join(", "), aggs.join(", "));
                input.write_tree(out, depth + 1);
            }
            LogicalPlan::Sort { input, keys, fetch } => {
                let schema = input.schema();
                let items: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{} {} NULLS {}",
                            schema.field(k.column).name(),
                            if k.descending { "DESC" } else { "ASC" },
                            if k.nulls_first { "FIRST" } else { "LAST" }
                        )
                    })
                    .collect();
                let top = fetch.map(|f| format!(" (top {f})")).unwrap_or_default();
                let _ = writeln!(out, "{pad}Sort: {}{top}", items.join(", "));
                input.write_tree(out, depth + 1);
            }
            LogicalPlan::Join { left, right, join_type, on, filter, .. } => {
                let mut parts: Vec<String> = on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
                if let Some(f) = filter {
                    parts.push(f.to_string());
                }
                let on = if parts.is_empty() { "true".to_string() } else { parts.join(" AND ") };
                let _ = writeln!(out, "{pad}Join: {} on {on}", join_type.name());
                left.write_tree(out, depth + 1);
                right.write_tree(out, depth + 1);
            }
            LogicalPlan::Union { inputs, .. } => {
                let _ = writeln!(out, "{pad}Union: {} inputs", inputs.len());
                for input in inputs {
                    input.write_tree(out, depth + 1);
                }
            }
            LogicalPlan::Shared { id, name, input } => {
                let _ = writeln!(out, "{pad}Shared: {name} (computed once, #{id})");
                input.write_tree(out, depth + 1);
            }
            LogicalPlan::Repeat { input } => {
                let _ = writeln!(out, "{pad}Repeat: each row as often as its last column says");
                input.write_tree(out, depth + 1);
            }
            LogicalPlan::Window { input, partition_by, order_by, functions, .. } => {
                let _ =
                    writeln!(out, "{pad}Window: {}", window_items(&input.schema(), partition_by, order_by, functions));
                input.write_tree(out, depth + 1);
            }
            LogicalPlan::Limit { input, skip, fetch } => {
                let _ = writeln!(
                    out,
                    "{pad}Limit: skip={skip}, fetch={}",
                    fetch.map_or("all".to_string(), |f| f.to_string())
                );
                input.write_tree(out, depth + 1);
            }
        }
    }
}

/// The name of a mark join's boolean column.
pub const MARK_COLUMN: &str = "__mark";

/// The schema of a join's output: left fields, then right fields (every one nullable: an outer
/// join fills the missing side with nulls); for semi and anti joins the left fields as they are,
/// for a mark join those and the mark.
pub fn join_output_schema(left: &Schema, right: &Schema, join_type: JoinType) -> SchemaRef {
    match join_type {
        JoinType::Semi | JoinType::Anti { .. } => Arc::new(left.clone()),
        JoinType::Mark { .. } => {
            let mut fields: Vec<Field> = left.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(MARK_COLUMN, arrow::datatypes::DataType::Boolean, true));
            Arc::new(Schema::new(fields))
        }
        _ => join_schema(left, right),
    }
}

/// The schema of a join's candidate pairs (what its condition reads): left fields, then right
/// fields, every one nullable (an outer join fills the missing side with nulls).
pub fn join_schema(left: &Schema, right: &Schema) -> SchemaRef {
    let fields: Vec<Field> =
        left.fields().iter().chain(right.fields()).map(|f| f.as_ref().clone().with_nullable(true)).collect();
    Arc::new(Schema::new(fields))
}

/// Runs the optimizer passes: join ordering, filter pushdown, projection pushdown, then
/// filter-to-scan pruning.
pub fn optimize(plan: LogicalPlan) -> LogicalPlan {
    let plan = simplify::simplify_plan(plan);
    // Filters first go down as far as they can (outer joins under null-rejecting conditions
    // become inner joins), then inner joins are reordered, then filters go down again.
    let plan = joins::push_filters(plan);
    let plan = joins::push_semi_joins(plan);
    // Before join ordering, which then orders the joins below and above a partial aggregation.
    let plan = eager::push_aggregates(plan);
    let plan = joins::reorder(plan);
    let plan = joins::push_filters(plan);
    let all: BTreeSet<usize> = (0..plan.schema().fields().len()).collect();
    let (plan, _) = prune_columns(plan, &all);
    push_pruning(plan)
}

/// `plan` (whose old output column `c` is now at `map[c]`) under a projection to the `needed`
/// columns when it has others: a filter's own columns and a join's keys go once they are used,
/// so that what a join above builds its table from, or spills, holds only what is read later.
/// The projection only selects columns (no copy).
fn only_needed(
    plan: LogicalPlan,
    needed: &BTreeSet<usize>,
    map: Vec<Option<usize>>,
) -> (LogicalPlan, Vec<Option<usize>>) {
    let schema = plan.schema();
    let keep: Vec<usize> = needed.iter().filter_map(|&c| map.get(c).copied().flatten()).collect();
    if keep.is_empty() || keep.len() == schema.fields().len() {
        return (plan, map);
    }
    let exprs = keep.iter().map(|&c| Expr::column(c, schema.field(c).name())).collect();
    let fields: Vec<Field> = keep.iter().map(|&c| schema.field(c).clone()).collect();
    let map = map.iter().map(|m| m.and_then(|at| keep.iter().position(|&k| k == at))).collect();
    (LogicalPlan::Projection { input: Box::new(plan), exprs, schema: Arc::new(Schema::new(fields)) }, map)
}

/// Rewrites `plan` to produce only the `needed` output columns (at least), returning the new plan
/// and, for each old output column, its new position.
fn prune_columns(plan: LogicalPlan, needed: &BTreeSet<usize>) -> (LogicalPlan, Vec<Option<usize>>) {
    match plan {
        LogicalPlan::Scan { table, projection, pruning, .. } => {
            let kept: Vec<usize> = needed.iter().map(|&i| projection[i]).collect();
            let mut map = vec![None; projection.len()];
            for (new, &old) in needed.iter().enumerate() {
                map[old] = Some(new);
            }
            let schema = Arc::new(table.schema().project(&kept).expect("projection within schema"));
            (LogicalPlan::Scan { table, projection: kept, pruning, schema }, map)
        }
        LogicalPlan::Filter { input, predicate } => {
            let mut want = needed.clone();
            predicate.visit_columns(&mut |c| {
                want.insert(c);
            });
            let (input, map) = prune_columns(*input, &want);
            let predicate = predicate.remap_columns(&|c| map[c].expect("filter column kept"));
            only_needed(LogicalPlan::Filter { input: Box::new(input), predicate }, needed, map)
        }
        LogicalPlan::Projection { input, exprs, schema } => {
            let keep: Vec<usize> = (0..exprs.len()).filter(|i| needed.contains(i)).collect();
            let mut want = BTreeSet::new();
            for &i in &keep {
                exprs[i].visit_columns(&mut |c| {
                    want.insert(c);
                });
            }
            let (input, map) = prune_columns(*input, &want);
            let mut exprs: Vec<Expr> =
                keep.iter().map(|&i| exprs[i].remap_columns(&|c| map[c].expect("projected column kept"))).collect();
            // Over a projection that only picks columns (one `only_needed` added), pick from its
            // input directly.
            let input = match input {
                LogicalPlan::Projection { input: inner, exprs: picks, .. }
                    if picks.iter().all(|e| matches!(e, Expr::Column { .. })) =>
                {
                    let at = |c: usize| match &picks[c] {
                        Expr::Column { index, .. } => *index,
                        _ => unreachable!("only columns"),
                    };
                    exprs = exprs.iter().map(|e| e.remap_columns(&at)).collect();
                    *inner
                }
                other => other,
            };
            let fields: Vec<Field> = keep.iter().map(|&i| schema.field(i).clone()).collect();
            let mut out_map = vec![None; schema.fields().len()];
            for (new, &old) in keep.iter().enumerate() {
                out_map[old] = Some(new);
            }
            (LogicalPlan::Projection { input: Box::new(input), exprs, schema: Arc::new(Schema::new(fields)) }, out_map)
        }
        LogicalPlan::Limit { input, skip, fetch } => {
            let (input, map) = prune_columns(*input, needed);
            (LogicalPlan::Limit { input: Box::new(input), skip, fetch }, map)
        }
        LogicalPlan::Aggregate { input, group_exprs, aggregates, schema } => {
            // Every output column stays (the projection above picks); the input keeps what the
            // groups and the aggregates read.
            let mut want = BTreeSet::new();
            for e in group_exprs.iter().chain(aggregates.iter().filter_map(|a| a.arg.as_ref())) {
                e.visit_columns(&mut |c| {
                    want.insert(c);
                });
            }
            let (input, map) = prune_columns(*input, &want);
            let remap = |e: &Expr| e.remap_columns(&|c| map[c].expect("aggregate input kept"));
            let group_exprs = group_exprs.iter().map(remap).collect();
            let aggregates = aggregates
                .iter()
                .map(|a| crate::expr::AggregateExpr { arg: a.arg.as_ref().map(remap), ..a.clone() })
                .collect();
            let identity = (0..schema.fields().len()).map(Some).collect();
            (LogicalPlan::Aggregate { input: Box::new(input), group_exprs, aggregates, schema }, identity)
        }
        LogicalPlan::Join { left, right, join_type, on, filter, .. } => {
            let nl = left.schema().fields().len();
            let mut want_left = BTreeSet::new();
            let mut want_right = BTreeSet::new();
            let mut want = |c: usize| {
                if c < nl {
                    want_left.insert(c);
                } else {
                    want_right.insert(c - nl);
                }
            };
            // A mark join's last column is its mark, not a right column.
            needed.iter().filter(|&&c| !(join_type.is_existence() && c >= nl)).for_each(|&c| want(c));
            if let Some(f) = &filter {
                f.visit_columns(&mut want);
            }
            for (l, r) in &on {
                l.visit_columns(&mut |c| {
                    want_left.insert(c);
                });
                r.visit_columns(&mut |c| {
                    want_right.insert(c);
                });
            }
            let (left, left_map) = prune_columns(*left, &want_left);
            let (right, right_map) = prune_columns(*right, &want_right);
            let new_nl = left.schema().fields().len();
            // Positions in the candidate pairs (what the condition reads).
            let pair_map: Vec<Option<usize>> =
                left_map.iter().copied().chain(right_map.iter().map(|m| m.map(|c| c + new_nl))).collect();
            let on = on
                .iter()
                .map(|(l, r)| {
                    (
                        l.remap_columns(&|c| left_map[c].expect("join key kept")),
                        r.remap_columns(&|c| right_map[c].expect("join key kept")),
                    )
                })
                .collect();
            let filter = filter.map(|f| f.remap_columns(&|c| pair_map[c].expect("join condition column kept")));
            let map = match join_type {
                JoinType::Semi | JoinType::Anti { .. } => left_map,
                JoinType::Mark { .. } => left_map.iter().copied().chain(std::iter::once(Some(new_nl))).collect(),
                _ => pair_map,
            };
            only_needed(LogicalPlan::join(left, right, join_type, on, filter), needed, map)
        }
        LogicalPlan::Union { inputs, schema } => {
            // Every input keeps exactly the needed columns, in the union's order.
            let kept: Vec<usize> = needed.iter().copied().collect();
            let inputs = inputs
                .into_iter()
                .map(|input| {
                    let (input, map) = prune_columns(input, needed);
                    let input_schema = input.schema();
                    let exprs: Vec<Expr> = kept
                        .iter()
                        .map(|&c| {
                            let at = map[c].expect("needed column kept");
                            Expr::column(at, input_schema.field(at).name())
                        })
                        .collect();
                    if exprs.len() == input_schema.fields().len()
                        && exprs.iter().enumerate().all(|(i, e)| matches!(e, Expr::Column { index, .. } if *index == i))
                    {
                        return input;
                    }
                    let fields: Vec<Field> = kept.iter().map(|&c| schema.field(c).clone()).collect();
                    LogicalPlan::Projection { input: Box::new(input), exprs, schema: Arc::new(Schema::new(fields)) }
                })
                .collect();
            let mut map = vec![None; schema.fields().len()];
            for (new, &old) in kept.iter().enumerate() {
                map[old] = Some(new);
            }
            let schema = Arc::new(schema.project(&kept).expect("union columns"));
            (LogicalPlan::Union { inputs, schema }, map)
        }
        LogicalPlan::Window { input, partition_by, order_by, functions, schema } => {
            // The functions read above stay (with none, the window goes: a fuzzed query sorted
            // 632M join rows for a dense_rank nothing read, where DuckDB took 12 s); the input
            // keeps what is needed above, the keys and the arguments.
            let width = input.schema().fields().len();
            let read: Vec<bool> = (0..functions.len()).map(|i| needed.contains(&(width + i))).collect();
            let mut want: BTreeSet<usize> = needed.iter().copied().filter(|&c| c < width).collect();
            if !read.contains(&true) {
                let (input, mut map) = prune_columns(*input, &want);
                map.extend(read.iter().map(|_| None));
                return (input, map);
            }
            let functions: Vec<_> = functions.into_iter().zip(&read).filter(|(_, &r)| r).map(|(f, _)| f).collect();
            want.extend(partition_by.iter().copied());
            want.extend(order_by.iter().map(|k| k.column));
            for f in &functions {
                for a in &f.args {
                    a.visit_columns(&mut |c| {
                        want.insert(c);
                    });
                }
            }
            let (input, map) = prune_columns(*input, &want);
            let new_width = input.schema().fields().len();
            let partition_by = partition_by.iter().map(|&c| map[c].expect("partition column kept")).collect();
            let order_by =
                order_by.iter().map(|k| SortKey { column: map[k.column].expect("order column kept"), ..*k }).collect();
            let functions: Vec<crate::expr::window::WindowExpr> = functions
                .into_iter()
                .map(|f| crate::expr::window::WindowExpr {
                    args: f.args.iter().map(|a| a.remap_columns(&|c| map[c].expect("argument kept"))).collect(),
                    ..f
                })
                .collect();
            let in_schema = input.schema();
            let mut fields: Vec<Field> = in_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            let kept = schema.fields()[width..].iter().zip(&read).filter(|(_, &r)| r);
            fields.extend(kept.map(|(f, _)| f.as_ref().clone()));
            let mut out_map: Vec<Option<usize>> = map.clone();
            let mut next = new_width;
            out_map.extend(read.iter().map(|&r| {
                next += r as usize;
                r.then_some(next - 1)
            }));
            let plan = LogicalPlan::Window {
                input: Box::new(input),
                partition_by,
                order_by,
                functions,
                schema: Arc::new(Schema::new(fields)),
            };
            (plan, out_map)
        }
        LogicalPlan::Repeat { input } => {
            let count = input.schema().fields().len() - 1;
            let mut want = needed.clone();
            want.insert(count);
            let (input, map) = prune_columns(*input, &want);
            let new_count = map[count].expect("count kept");
            // The count must stay last: put the kept columns before it in their order.
            let schema = input.schema();
            let kept: Vec<usize> = (0..count).filter(|c| map[*c].is_some()).collect();
            let mut exprs: Vec<Expr> =
                kept.iter().map(|&c| Expr::column(map[c].unwrap(), schema.field(map[c].unwrap()).name())).collect();
            exprs.push(Expr::column(new_count, schema.field(new_count).name()));
            let mut fields: Vec<Field> = kept.iter().map(|&c| schema.field(map[c].unwrap()).clone()).collect();
            fields.push(schema.field(new_count).clone());
            let mut out_map = vec![None; count];
            for (new, &old) in kept.iter().enumerate() {
                out_map[old] = Some(new);
            }
            let input =
                LogicalPlan::Projection { input: Box::new(input), exprs, schema: Arc::new(Schema::new(fields)) };
            (LogicalPlan::Repeat { input: Box::new(input) }, out_map)
        }
        LogicalPlan::Shared { id, name, input } => {
            // Every reference reads the same rows: all their columns stay (a projection above
            // each picks), so every copy of the plan is pruned alike.
            let all: BTreeSet<usize> = (0..input.schema().fields().len()).collect();
            let (input, map) = prune_columns(*input, &all);
            (LogicalPlan::Shared { id, name, input: Box::new(input) }, map)
        }
        LogicalPlan::Sort { input, keys, fetch } => {
            let mut want = needed.clone();
            want.extend(keys.iter().map(|k| k.column));
            let (input, map) = prune_columns(*input, &want);
            let keys = keys.iter().map(|k| SortKey { column: map[k.column].expect("sort key kept"), ..*k }).collect();
            (LogicalPlan::Sort { input: Box::new(input), keys, fetch }, map)
        }
    }
}

fn push_pruning(plan: LogicalPlan) -> LogicalPlan {
    match plan {
        LogicalPlan::Filter { input, predicate } => {
            let input = match *input {
                LogicalPlan::Scan { table, projection, pruning: None, schema } => {
                    let on_table = predicate.remap_columns(&|c| projection[c]);
                    let pruning = PruningPredicate::new(&on_table);
                    LogicalPlan::Scan { table, projection, pruning, schema }
                }
                other => push_pruning(other),
            };
            LogicalPlan::Filter { input: Box::new(input), predicate }
        }
        LogicalPlan::Projection { input, exprs, schema } => {
            LogicalPlan::Projection { input: Box::new(push_pruning(*input)), exprs, schema }
        }
        LogicalPlan::Limit { input, skip, fetch } => {
            LogicalPlan::Limit { input: Box::new(push_pruning(*input)), skip, fetch }
        }
        LogicalPlan::Sort { input, keys, fetch } => {
            LogicalPlan::Sort { input: Box::new(push_pruning(*input)), keys, fetch }
        }
        LogicalPlan::Aggregate { input, group_exprs, aggregates, schema } => {
            LogicalPlan::Aggregate { input: Box::new(push_pruning(*input)), group_exprs, aggregates, schema }
        }
        LogicalPlan::Join { left, right, join_type, on, filter, schema } => LogicalPlan::Join {
            left: Box::new(push_pruning(*left)),
            right: Box::new(push_pruning(*right)),
            join_type,
            on,
            filter,
            schema,
        },
        LogicalPlan::Union { inputs, schema } => {
            LogicalPlan::Union { inputs: inputs.into_iter().map(push_pruning).collect(), schema }
        }
        LogicalPlan::Shared { id, name, input } => {
            LogicalPlan::Shared { id, name, input: Box::new(push_pruning(*input)) }
        }
        LogicalPlan::Repeat { input } => LogicalPlan::Repeat { input: Box::new(push_pruning(*input)) },
        LogicalPlan::Window { input, partition_by, order_by, functions, schema } => {
            LogicalPlan::Window { input: Box::new(push_pruning(*input)), partition_by, order_by, functions, schema }
        }
        scan @ LogicalPlan::Scan { .. } => scan,
    }
}
