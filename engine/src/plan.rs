//! Logical plans and the optimizer passes that run on them before execution.
//!
//! ```text
//! Limit ── Projection ── Filter ── Scan(table, columns, pruning)
//! ```
//! A scan feeds stateless filters and projections, a limit cuts the stream; a sort is a pipeline
//! breaker whose sorted output feeds the operators above it. [`optimize`] pushes projections into scans (only needed columns are decoded) and hands
//! filters directly above a scan to it for row-group pruning.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::expr::Expr;
use crate::source::{PruningPredicate, Table};

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
    /// The plan's output schema.
    pub fn schema(&self) -> SchemaRef {
        match self {
            LogicalPlan::Scan { schema, .. }
            | LogicalPlan::Projection { schema, .. }
            | LogicalPlan::Aggregate { schema, .. } => schema.clone(),
            LogicalPlan::Filter { input, .. } | LogicalPlan::Limit { input, .. } | LogicalPlan::Sort { input, .. } => {
                input.schema()
            }
        }
    }

    /// A scan of every column of `table`.
    pub fn scan(table: Arc<Table>) -> LogicalPlan {
        let schema = table.schema().clone();
        LogicalPlan::Scan { projection: (0..schema.fields().len()).collect(), table, pruning: None, schema }
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
                    if pruning.is_some() { " (row-group pruning)" } else { "" }
                );
            }
            LogicalPlan::Filter { input, predicate } => {
                let _ = writeln!(out, "{pad}Filter: {predicate}");
                input.write_tree(out, depth + 1);
            }
            LogicalPlan::Projection { input, exprs, schema } => {
                let items: Vec<String> = exprs
                    .iter()
                    .zip(schema.fields())
                    .map(
                        |(e, f)| {
                            if &e.to_string() == f.name() {
                                e.to_string()
                            } else {
                                format!("{e} AS {}", f.name())
                            }
                        },
                    )
                    .collect();
                let _ = writeln!(out, "{pad}Projection: {}", items.join(", "));
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

/// Runs the optimizer passes: projection pushdown, then filter-to-scan pruning.
pub fn optimize(plan: LogicalPlan) -> LogicalPlan {
    let all: BTreeSet<usize> = (0..plan.schema().fields().len()).collect();
    let (plan, _) = prune_columns(plan, &all);
    push_pruning(plan)
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
            (LogicalPlan::Filter { input: Box::new(input), predicate }, map)
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
            let exprs: Vec<Expr> =
                keep.iter().map(|&i| exprs[i].remap_columns(&|c| map[c].expect("projected column kept"))).collect();
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
        scan @ LogicalPlan::Scan { .. } => scan,
    }
}
