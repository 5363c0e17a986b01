//! Stateless streaming operators (filter, projection) and the limit, which keeps a count.
//!
//! Filter and projection run on the workers, one batch at a time, and hold nothing between
//! batches. A limit runs on the consumer, after batches are back in input order.

use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::expr::Expr;

/// One step of a streaming pipeline.
#[derive(Debug, Clone)]
pub enum Operator {
    /// Keeps rows where the predicate is true. The second field is its conjuncts, cheapest first,
    /// in the order [`filter`] tests them (see [`Operator::filter`]).
    Filter(Expr, Vec<Expr>),
    /// Computes the output columns.
    Project {
        /// One expression per output column.
        exprs: Vec<Expr>,
        /// The output schema.
        schema: SchemaRef,
    },
    /// Each row as many times as its last column says, without that column.
    Repeat {
        /// The output schema.
        schema: SchemaRef,
    },
    /// Skips, then passes a number of rows.
    Limit {
        /// Rows to skip.
        skip: usize,
        /// Rows to pass (`None`: all).
        fetch: Option<usize>,
    },
}

impl Operator {
    /// One line for `EXPLAIN`.
    pub fn describe(&self) -> String {
        match self {
            Operator::Filter(p, _) => format!("Filter {p}"),
            Operator::Project { exprs, schema } => format!("Project {}", crate::plan::projection_items(exprs, schema)),
            Operator::Repeat { .. } => "Repeat (each row as often as its count)".to_string(),
            Operator::Limit { skip, fetch } => match fetch {
                Some(f) if *skip > 0 => format!("Limit {f} offset {skip}"),
                Some(f) => format!("Limit {f}"),
                None => format!("Offset {skip}"),
            },
        }
    }
}

/// The input column that output column `column` of `ops` is, unchanged (projections of a plain
/// column, filters); `None` when it is computed.
pub(crate) fn column_source(mut column: usize, ops: &[Operator]) -> Option<usize> {
    for op in ops.iter().rev() {
        match op {
            Operator::Project { exprs, .. } => match exprs.get(column)? {
                Expr::Column { index, .. } => column = *index,
                _ => return None,
            },
            Operator::Filter(..) => {}
            Operator::Repeat { .. } | Operator::Limit { .. } => return None,
        }
    }
    Some(column)
}

/// Whether `ops` only ever move input column `column` as it is: projections of the bare column
/// (to any number of outputs), filters and limits that do not read it. Then its arrays may come in
/// any encoding of its type (a dictionary of strings, say) and leave the same way.
pub(crate) fn passes_through(column: usize, ops: &[Operator]) -> bool {
    let mut at = vec![column];
    for op in ops {
        match op {
            Operator::Filter(_, conjuncts) => {
                let mut read = false;
                conjuncts.iter().for_each(|c| c.visit_columns(&mut |i| read |= at.contains(&i)));
                if read {
                    return false;
                }
            }
            Operator::Project { exprs, .. } => {
                let mut next = Vec::new();
                for (out, e) in exprs.iter().enumerate() {
                    match e {
                        Expr::Column { index, .. } if at.contains(index) => next.push(out),
                        _ => {
                            let mut read = false;
                            e.visit_columns(&mut |i| read |= at.contains(&i));
                            if read {
                                return false;
                            }
                        }
                    }
                }
                at = next;
            }
            Operator::Limit { .. } => {}
            Operator::Repeat { .. } => return false,
        }
        if at.is_empty() {
            return true;
        }
    }
    true
}

/// An operator that turns one batch into any number of batches and holds only read-only state
/// (a join's probe against a built table): it can run on the scan workers, after their operators.
pub(crate) trait Expand: Send + Sync {
    /// Hands every output batch of `batch` to `emit`, stopping early (returning false) when
    /// `emit` does.
    fn expand(&self, batch: RecordBatch, emit: &mut dyn FnMut(RecordBatch) -> Result<bool>) -> Result<bool>;

    /// Keys (expressions over this stage's input) such that a row whose keys fail the test would
    /// produce nothing here: a join's probe into a finished table drops a row whose key is not in
    /// it. A scan feeding the stage may run the test on those columns first and decode its other
    /// columns only for the rows that pass (see [`crate::source::Table::scan_morsel_encoded`]).
    fn key_test(&self) -> Option<(Vec<Expr>, Arc<dyn KeyTest>)> {
        None
    }
}

/// The test of [`Expand::key_test`].
pub(crate) trait KeyTest: Send + Sync {
    /// Whether each row of `batch` may give output, with the keys `keys` computed over it.
    fn keeps(&self, batch: &RecordBatch, keys: &[Expr]) -> Result<arrow::array::BooleanArray>;
    /// The test dropped `rows` rows before they reached the stage (for its metrics).
    fn dropped(&self, rows: usize);
}

/// A step run on every batch of a stream: stateless operators, or an expansion (a join's probe
/// into its finished table, an aggregation's partial step). A scan's workers run a list of them
/// one after another, so a chain of joins probes on every core.
#[derive(Clone)]
pub(crate) enum Stage {
    Ops(Vec<Operator>),
    Expand(Arc<dyn Expand>),
}

/// Runs `stages` over `batch`, handing every batch that comes out of the last to `emit`; false
/// when `emit` asked to stop.
pub(crate) fn run_stages(
    stages: &[Stage],
    batch: RecordBatch,
    emit: &mut dyn FnMut(RecordBatch) -> Result<bool>,
) -> Result<bool> {
    let Some((first, rest)) = stages.split_first() else { return emit(batch) };
    match first {
        Stage::Ops(ops) => match apply(ops, batch)? {
            Some(b) => run_stages(rest, b, emit),
            None => Ok(true),
        },
        Stage::Expand(e) => e.expand(batch, &mut |b| run_stages(rest, b, emit)),
    }
}

/// Runs stateless operators over a batch; `None` when a filter removed every row.
pub(crate) fn apply(ops: &[Operator], mut batch: RecordBatch) -> Result<Option<RecordBatch>> {
    for op in ops {
        batch = match op {
            Operator::Filter(_, conjuncts) => filter(conjuncts, batch)?,
            Operator::Project { exprs, schema } => project(&batch, exprs, schema)?,
            Operator::Repeat { schema } => repeat_rows(&batch, schema)?,
            Operator::Limit { .. } => unreachable!("limits run on the consumer"),
        };
        if batch.num_rows() == 0 {
            return Ok(None);
        }
    }
    Ok(Some(batch))
}

impl Operator {
    /// A filter on `predicate`, its conjuncts ordered once, cheapest first.
    pub(crate) fn filter(predicate: Expr) -> Operator {
        let mut conjuncts: Vec<Expr> = predicate.conjuncts().into_iter().cloned().collect();
        conjuncts.sort_by_cached_key(|c| c.evaluation_cost());
        Operator::Filter(predicate, conjuncts)
    }
}

/// The rows of `batch` where every one of `conjuncts` holds. They are tested one at a time, in
/// order (cheapest first), each on the rows the ones before left: once a test leaves less than
/// half the rows the batch is cut down to them, else the masks are combined (TPC-H Q19's big `OR`
/// then runs on the few lineitem rows shipped in person by air, not on all of them). SQL sets no
/// order among conjuncts, and a conjunct tested on fewer rows can only raise fewer errors.
fn filter(conjuncts: &[Expr], batch: RecordBatch) -> Result<RecordBatch> {
    use arrow::compute::{and_kleene, filter_record_batch};
    let mut batch = batch;
    let mut mask: Option<arrow::array::BooleanArray> = None;
    for c in conjuncts {
        let next = c.evaluate_predicate(&batch)?;
        let combined = match mask.take() {
            Some(m) => and_kleene(&m, &next)?,
            None => next,
        };
        let kept = combined.true_count();
        if kept == batch.num_rows() {
            continue;
        }
        if kept * 2 < batch.num_rows() || kept == 0 {
            batch = filter_record_batch(&batch, &combined)?;
            if batch.num_rows() == 0 {
                return Ok(batch);
            }
        } else {
            mask = Some(combined);
        }
    }
    Ok(match mask {
        Some(m) => filter_record_batch(&batch, &m)?,
        None => batch,
    })
}

/// The rows of a batch each repeated as often as its count (its last column) says, handed out a
/// chunk at a time: a group of `EXCEPT ALL` kept 100,000 times made one batch of 3 MiB under a
/// 4.5 MiB budget.
pub(crate) struct Repeating {
    batch: RecordBatch,
    schema: SchemaRef,
    /// The next row to repeat, and how many of its copies went out already.
    row: usize,
    done: usize,
}

impl Repeating {
    pub(crate) fn new(batch: RecordBatch, schema: SchemaRef) -> Repeating {
        Repeating { batch, schema, row: 0, done: 0 }
    }

    /// Bytes a copy of a row takes, about.
    pub(crate) fn row_bytes(&self) -> u64 {
        (self.batch.get_array_memory_size() / self.batch.num_rows().max(1)).max(1) as u64
    }

    /// The next at most `rows` rows; `None` once every copy went out.
    pub(crate) fn next_chunk(&mut self, rows: usize) -> Result<Option<RecordBatch>> {
        use arrow::array::{Array, AsArray};
        let counts = self.batch.column(self.batch.num_columns() - 1).as_primitive::<arrow::datatypes::Int64Type>();
        let mut indices: Vec<u32> = Vec::new();
        while self.row < self.batch.num_rows() && indices.len() < rows.max(1) {
            let n = if counts.is_valid(self.row) { counts.value(self.row).max(0) as usize } else { 0 };
            let take = (n - self.done.min(n)).min(rows.max(1) - indices.len());
            indices.extend(std::iter::repeat_n(self.row as u32, take));
            self.done += take;
            if self.done >= n {
                self.row += 1;
                self.done = 0;
            }
        }
        if indices.is_empty() {
            return Ok(None);
        }
        let indices = arrow::array::UInt32Array::from(indices);
        let columns = self.batch.columns()[..self.batch.num_columns() - 1]
            .iter()
            .map(|c| arrow::compute::take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Some(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(indices.len())),
        )?))
    }
}

/// Every copy at once: where the batches are counted by their source (a scan's), not chunked.
fn repeat_rows(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut all = Repeating::new(batch.clone(), schema.clone());
    Ok(all.next_chunk(usize::MAX)?.unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

fn project(batch: &RecordBatch, exprs: &[Expr], schema: &SchemaRef) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let columns = exprs.iter().map(|e| e.evaluate(batch)?.into_array(rows)).collect::<Result<Vec<_>>>()?;
    // A literal may be typed NULL while the field says otherwise, or arrays may carry nulls in a
    // field planned non-null: build with the planned schema, relaxing nullability where needed.
    // A column the scan hands out as a dictionary of the field's type (see
    // `ScanPipeline::keep_dictionaries`) passes as one.
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| {
            let mut f = f.as_ref().clone();
            if c.null_count() > 0 && !f.is_nullable() {
                f = f.with_nullable(true);
            }
            match c.data_type() {
                t @ arrow::datatypes::DataType::Dictionary(_, v) if v.as_ref() == f.data_type() => {
                    f.with_data_type(t.clone())
                }
                _ => f,
            }
        })
        .collect();
    let out_schema = if fields.iter().zip(schema.fields()).all(|(a, b)| a == b.as_ref()) {
        schema.clone()
    } else {
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields))
    };
    Ok(RecordBatch::try_new_with_options(out_schema, columns, &RecordBatchOptions::new().with_row_count(Some(rows)))?)
}

/// An operator that runs on the consumer, with its state.
pub(crate) enum TailState {
    Stateless(Operator),
    Limit { skip: usize, left: Option<usize> },
}

impl TailState {
    /// The schema of a repeat's output, when this is one.
    pub fn repeat_schema(&self) -> Option<&SchemaRef> {
        match self {
            TailState::Stateless(Operator::Repeat { schema }) => Some(schema),
            _ => None,
        }
    }

    pub fn new(op: Operator) -> TailState {
        match op {
            Operator::Limit { skip, fetch } => TailState::Limit { skip, left: fetch },
            other => TailState::Stateless(other),
        }
    }

    /// True once a limit has passed all the rows it will.
    pub fn exhausted(&self) -> bool {
        matches!(self, TailState::Limit { left: Some(0), .. })
    }

    pub fn apply(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        match self {
            TailState::Stateless(op) => apply(std::slice::from_ref(op), batch),
            TailState::Limit { skip, left } => {
                let mut batch = batch;
                if *skip > 0 {
                    let n = (*skip).min(batch.num_rows());
                    *skip -= n;
                    batch = batch.slice(n, batch.num_rows() - n);
                }
                if let Some(l) = left {
                    let n = (*l).min(batch.num_rows());
                    *l -= n;
                    batch = batch.slice(0, n);
                }
                Ok((batch.num_rows() > 0).then_some(batch))
            }
        }
    }
}
