//! Filter conditions on one string column, tested once per dictionary value instead of once per
//! row.
//!
//! Parquet writers store low-cardinality strings (ship modes, flags, nation names) as a dictionary
//! per column chunk and small integer keys per row. Decoding such a column into plain strings copies
//! every row's bytes, and a condition like `l_shipmode IN ('AIR', 'AIR REG')` then compares every
//! row's string: most of a TPC-H Q19 scan went to that. Instead, the scan reads those columns as
//! dictionary arrays; the conditions that test only that column are evaluated on the dictionary's
//! few values (once per chunk: the reader hands out one dictionary per chunk), each row takes its
//! key's answer, the batch is cut to the rows that pass, and only then are the surviving rows'
//! strings unpacked for the operators that follow. DuckDB and Velox filter dictionary vectors the
//! same way.
//!
//! A row group that stores the column plainly (a writer that fell back after its dictionary grew
//! too big) arrives as plain strings: the same conditions are then evaluated on the rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};

use super::operators::Operator;
use crate::error::Result;
use crate::expr::Expr;

/// The conditions of a scan's first filter that each test one string column, by column.
#[derive(Debug, Clone)]
pub(crate) struct DictFilter {
    columns: Vec<Tested>,
}

#[derive(Debug, Clone)]
struct Tested {
    /// Position of the column in the scan's output.
    column: usize,
    /// A one-column schema for evaluating `conditions` (the column's field, nullable).
    schema: SchemaRef,
    /// The conditions, reading column 0.
    conditions: Vec<Expr>,
}

/// What a worker remembers of the dictionaries it has seen: per tested column, the last dictionary,
/// which of its values pass, and whether null does.
pub(crate) type DictCache = Vec<Option<(ArrayRef, BooleanBuffer, bool)>>;

impl DictFilter {
    /// Takes out of `ops` (a scan's operators) the conditions of its leading filter that test a
    /// single string column of `schema` (the scan's output) and nothing else; `None` when there
    /// are none. The filter keeps the rest of its conditions, or goes if none are left.
    pub(crate) fn split(ops: &mut Vec<Operator>, schema: &Schema) -> Option<DictFilter> {
        let Some(Operator::Filter(_, conjuncts)) = ops.first() else { return None };
        let mut tested: Vec<Tested> = Vec::new();
        let mut rest: Vec<Expr> = Vec::new();
        for c in conjuncts {
            match single_string_column(c, schema) {
                Some(column) => {
                    let conditions = c.remap_columns(&|_| 0);
                    match tested.iter_mut().find(|t| t.column == column) {
                        Some(t) => t.conditions.push(conditions),
                        None => {
                            let field = schema.field(column).clone().with_nullable(true);
                            let schema = Arc::new(Schema::new(vec![field]));
                            tested.push(Tested { column, schema, conditions: vec![conditions] });
                        }
                    }
                }
                None => rest.push(c.clone()),
            }
        }
        if tested.is_empty() {
            return None;
        }
        let and = |a: Expr, b: Expr| Expr::Binary {
            op: crate::expr::BinaryOp::And,
            left: Box::new(a),
            right: Box::new(b),
            data_type: DataType::Boolean,
        };
        match rest.iter().cloned().reduce(and) {
            // `rest` keeps the filter's order (cheapest first).
            Some(predicate) => ops[0] = Operator::Filter(predicate, rest),
            None => {
                ops.remove(0);
            }
        }
        Some(DictFilter { columns: tested })
    }

    /// Positions (in the scan's output) of the columns worth reading as dictionaries.
    pub(crate) fn columns(&self) -> Vec<usize> {
        self.columns.iter().map(|t| t.column).collect()
    }

    /// A fresh cache for one worker.
    pub(crate) fn cache(&self) -> DictCache {
        vec![None; self.columns.len()]
    }

    /// Which rows pass every condition, with `column` giving the column at a position of the
    /// scan's output; `None` when nothing is tested.
    pub(crate) fn passes(
        &self,
        column: &dyn Fn(usize) -> ArrayRef,
        cache: &mut DictCache,
    ) -> Result<Option<BooleanBuffer>> {
        let mut mask: Option<BooleanBuffer> = None;
        for (tested, cached) in self.columns.iter().zip(cache.iter_mut()) {
            let passes = tested.passes(&column(tested.column), cached)?;
            mask = Some(match mask {
                Some(m) => &m & &passes,
                None => passes,
            });
        }
        Ok(mask)
    }

    /// The rows of `batch` that pass every condition, with its dictionary columns as plain
    /// strings again but for those at positions `passed`; `None` when no row passes.
    pub(crate) fn apply(
        &self,
        batch: RecordBatch,
        cache: &mut DictCache,
        passed: &[usize],
    ) -> Result<Option<RecordBatch>> {
        let mask = self.passes(&|c| batch.column(c).clone(), cache)?;
        let batch = match mask {
            Some(m) if m.count_set_bits() == 0 => return Ok(None),
            Some(m) if m.count_set_bits() < batch.num_rows() => {
                arrow::compute::filter_record_batch(&batch, &BooleanArray::new(m, None))?
            }
            _ => batch,
        };
        Ok(Some(decode(batch, passed)?))
    }
}

impl Tested {
    /// Which rows of `column` pass every condition (null counts as not passing).
    fn passes(&self, column: &ArrayRef, cached: &mut Option<(ArrayRef, BooleanBuffer, bool)>) -> Result<BooleanBuffer> {
        let Some(dictionary) = column.as_dictionary_opt::<Int32Type>() else {
            return self.evaluate(column.clone());
        };
        let values = dictionary.values();
        // The reader hands out one dictionary per column chunk, the same array for every batch.
        let hit = matches!(cached, Some((seen, ..)) if Arc::ptr_eq(seen, values));
        if !hit {
            // The values' answers, and the answer for the rows whose key is null.
            let null = self.evaluate(arrow::array::new_null_array(values.data_type(), 1))?.value(0);
            *cached = Some((values.clone(), self.evaluate(values.clone())?, null));
        }
        let (_, answers, null_answer) = cached.as_ref().expect("cached just now");
        let (answers, null_answer) = (answers, *null_answer);
        let keys = dictionary.keys();
        let raw = keys.values();
        Ok(match keys.nulls() {
            None => BooleanBuffer::collect_bool(keys.len(), |i| answers.value(raw[i] as usize)),
            Some(nulls) => BooleanBuffer::collect_bool(keys.len(), |i| match nulls.is_valid(i) {
                true => answers.value(raw[i] as usize),
                false => null_answer,
            }),
        })
    }

    /// Every condition over the plain `values`, as one mask (null as false).
    fn evaluate(&self, values: ArrayRef) -> Result<BooleanBuffer> {
        let rows = values.len();
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            vec![values],
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let mut mask: Option<BooleanBuffer> = None;
        for c in &self.conditions {
            let answer = crate::expr::not_null_true(&c.evaluate_predicate(&batch)?).values().clone();
            mask = Some(match mask {
                Some(m) => &m & &answer,
                None => answer,
            });
        }
        Ok(mask.unwrap_or_else(|| BooleanBuffer::new_set(rows)))
    }
}

/// The column `c` tests, if it is the only one and a string one, and `c` cannot fail (see
/// [`cannot_fail`]).
fn single_string_column(c: &Expr, schema: &Schema) -> Option<usize> {
    let mut columns = Vec::new();
    c.visit_columns(&mut |i| columns.push(i));
    columns.sort_unstable();
    columns.dedup();
    match columns.as_slice() {
        [i] if cannot_fail(c) && schema.field(*i).data_type() == &DataType::Utf8 => Some(*i),
        _ => None,
    }
}

/// The batch with its dictionary columns unpacked to their value type, but for those at positions
/// `passed`.
fn decode(batch: RecordBatch, passed: &[usize]) -> Result<RecordBatch> {
    unpack(batch, |i, _| !passed.contains(&i))
}

/// The batch with the dictionary columns that hold more bytes of values than 8 a row unpacked to
/// their value type. A dictionary array's memory counts its values in every batch that shares
/// them (reservations go by [`Array::get_array_memory_size`]): a column of 30K distinct 40-byte
/// strings stored as one dictionary per row group counted 1.4 MiB in each batch of a few thousand
/// rows, and a scan passing it to a Parquet output failed at a 16 MiB budget where plain strings
/// fit. The few values of a flag or a mode stay packed.
pub(crate) fn unpack_large_dictionaries(batch: RecordBatch) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    unpack(batch, |_, c| match c.as_any_dictionary_opt() {
        Some(d) => d.values().get_array_memory_size() > 8 * rows,
        None => false,
    })
}

/// The batch with every dictionary column unpacked to its value type (the batch itself when it
/// has none): for expressions and keys that expect the plain type.
pub(crate) fn unpack_all(batch: &RecordBatch) -> Result<RecordBatch> {
    if batch.columns().iter().all(|c| c.as_any_dictionary_opt().is_none()) {
        return Ok(batch.clone());
    }
    unpack(batch.clone(), |_, c| c.as_any_dictionary_opt().is_some())
}

/// The batch with the dictionary columns `which` picks (by position and array) unpacked to their
/// value type.
fn unpack(batch: RecordBatch, which: impl Fn(usize, &ArrayRef) -> bool) -> Result<RecordBatch> {
    let schema = batch.schema();
    let picked = |i: usize, f: &Field, c: &ArrayRef| matches!(f.data_type(), DataType::Dictionary(..)) && which(i, c);
    let any = schema.fields().iter().zip(batch.columns()).enumerate().any(|(i, (f, c))| picked(i, f, c));
    if !any {
        return Ok(batch);
    }
    let rows = batch.num_rows();
    let mut fields: Vec<Field> = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, (f, c)) in schema.fields().iter().zip(batch.columns()).enumerate() {
        match f.data_type() {
            DataType::Dictionary(_, value) if picked(i, f, c) => {
                columns.push(arrow::compute::cast(c, value)?);
                fields.push(f.as_ref().clone().with_data_type(value.as_ref().clone()));
            }
            _ => {
                columns.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    Ok(RecordBatch::try_new_with_options(schema, columns, &RecordBatchOptions::new().with_row_count(Some(rows)))?)
}

/// Whether evaluating `e` can raise no error whatever the strings: comparisons, `IN`, `LIKE`,
/// `IS NULL`, `CASE`, logic and string functions that take any string, over the input's columns.
/// A dictionary may hold a value that no row left by the other conditions holds (they may be
/// tested first, on fewer rows); a condition that could fail on it (a cast to a number, say)
/// stays with them. A scan's early test (which tests every row) takes only such conditions too.
pub(crate) fn cannot_fail(e: &Expr) -> bool {
    use crate::expr::BinaryOp;
    let own = match e {
        Expr::Column { .. }
        | Expr::Literal(_)
        | Expr::Not(_)
        | Expr::IsNull { .. }
        | Expr::InList { .. }
        | Expr::Like { .. }
        | Expr::Case { .. } => true,
        Expr::Binary { op, .. } => op.is_comparison() || matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Concat),
        Expr::Function { func, .. } => func.def().infallible,
        _ => false,
    };
    let mut children = true;
    e.for_each_child(&mut |c| children &= cannot_fail(c));
    own && children
}
