//! Row-group pruning: skip Parquet row groups whose statistics prove the WHERE clause false.
//!
//! Each conjunct of the filter that has the shape `column op literal` (also `BETWEEN`, `IN`,
//! `IS [NOT] NULL`, and a column under a cast) becomes a test on the row groups' min/max/null-count
//! statistics, evaluated for all row groups of a file at once with Arrow kernels. Anything else, and
//! any missing statistic, keeps the row group: pruning may only ever skip data that cannot match.

use arrow::array::{Array, ArrayRef, BooleanArray, Scalar, UInt32Array};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::{DataType, Schema};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use crate::expr::{types, BinaryOp, Expr};

/// A test on one column's statistics.
#[derive(Debug, Clone)]
enum Test {
    Compare { column: usize, casts: Vec<DataType>, op: BinaryOp, value: ArrayRef },
    In { column: usize, casts: Vec<DataType>, values: Vec<ArrayRef> },
    IsNull { column: usize, negated: bool },
}

/// The parts of a filter that row-group statistics can decide.
#[derive(Debug, Clone, Default)]
pub struct PruningPredicate {
    tests: Vec<Test>,
}

/// `column`, possibly under casts: the column's index and the casts from inside out.
fn column_under_casts(e: &Expr) -> Option<(usize, Vec<DataType>)> {
    match e {
        Expr::Column { index, .. } => Some((*index, vec![])),
        Expr::Cast { expr, to } => {
            let (c, mut casts) = column_under_casts(expr)?;
            casts.push(to.clone());
            Some((c, casts))
        }
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<ArrayRef> {
    match e {
        Expr::Literal(a) if !a.is_null(0) => Some(a.clone()),
        _ => None,
    }
}

impl PruningPredicate {
    /// Builds the tests from a filter over the table's columns. `None` when no part can prune.
    pub fn new(filter: &Expr) -> Option<PruningPredicate> {
        let mut tests = Vec::new();
        for c in filter.conjuncts() {
            match c {
                Expr::Binary { op, left, right, .. } if op.is_comparison() => {
                    if let (Some((column, casts)), Some(value)) = (column_under_casts(left), literal(right)) {
                        tests.push(Test::Compare { column, casts, op: *op, value });
                    } else if let (Some(value), Some((column, casts))) = (literal(left), column_under_casts(right)) {
                        tests.push(Test::Compare { column, casts, op: op.swap(), value });
                    }
                }
                Expr::InList { expr, list, negated: false } => {
                    if let Some((column, casts)) = column_under_casts(expr) {
                        let values: Option<Vec<ArrayRef>> = list.iter().map(literal).collect();
                        if let Some(values) = values {
                            tests.push(Test::In { column, casts, values });
                        }
                    }
                }
                Expr::IsNull { expr, negated } => {
                    if let Expr::Column { index, .. } = expr.as_ref() {
                        tests.push(Test::IsNull { column: *index, negated: *negated });
                    }
                }
                _ => {}
            }
        }
        (!tests.is_empty()).then_some(PruningPredicate { tests })
    }

    /// Which row groups of a file may hold matching rows (`true` = scan it).
    /// `partition` holds the file's values of the table's last columns (hive partition folders),
    /// which rule out the whole file or none of it.
    pub fn row_groups_to_scan(
        &self,
        meta: &ArrowReaderMetadata,
        table_schema: &Schema,
        partition: &[ArrayRef],
    ) -> Vec<bool> {
        let groups = meta.metadata().num_row_groups();
        let mut keep = BooleanArray::from(vec![true; groups]);
        for test in &self.tests {
            if let Some(mask) = self.evaluate(test, meta, table_schema, partition) {
                if let Ok(k) = boolean::and(&keep, &mask) {
                    keep = k;
                }
            }
        }
        keep.iter().map(|v| v.unwrap_or(true)).collect()
    }

    fn evaluate(
        &self,
        test: &Test,
        meta: &ArrowReaderMetadata,
        table_schema: &Schema,
        partition: &[ArrayRef],
    ) -> Option<BooleanArray> {
        let column = match test {
            Test::Compare { column, .. } | Test::In { column, .. } | Test::IsNull { column, .. } => *column,
        };
        let field = table_schema.field(column);
        let first_partition = table_schema.fields().len() - partition.len();
        // A hive partition column: the file's one value stands for every row group.
        let hive = (column >= first_partition).then(|| &partition[column - first_partition]);
        let converter = match hive {
            Some(_) => None,
            None => Some(StatisticsConverter::try_new(field.name(), meta.schema(), meta.parquet_schema()).ok()?),
        };
        let groups = meta.metadata().row_groups();
        let (casts, op_values): (&[DataType], Vec<(BinaryOp, &ArrayRef)>) = match test {
            Test::IsNull { negated, .. } => {
                let Some(converter) = converter else {
                    let null = hive.is_some_and(|v| v.is_null(0));
                    return Some(BooleanArray::from(vec![null != *negated; groups.len()]));
                };
                let nulls = converter.row_group_null_counts(groups.iter()).ok()?;
                let rows: Vec<u64> = groups.iter().map(|g| g.num_rows() as u64).collect();
                return Some(
                    nulls
                        .iter()
                        .zip(rows)
                        .map(|(n, rows)| Some(n.is_none_or(|n| if *negated { n < rows } else { n > 0 })))
                        .collect(),
                );
            }
            Test::Compare { casts, op, value, .. } => (casts, vec![(*op, value)]),
            // Any of the values may match.
            Test::In { casts, values, .. } => (casts, values.iter().map(|v| (BinaryOp::Eq, v)).collect()),
        };
        let (min, max) = match (hive, converter) {
            // Every row's value is null: no comparison holds.
            (Some(value), _) if value.is_null(0) => return Some(BooleanArray::from(vec![false; groups.len()])),
            (Some(value), _) => {
                let repeated = arrow::compute::take(value, &UInt32Array::from(vec![0u32; groups.len()]), None).ok()?;
                let bound = stat(repeated, field.data_type(), casts)?;
                (bound.clone(), bound)
            }
            (None, Some(converter)) => (
                stat(converter.row_group_mins(groups.iter()).ok()?, field.data_type(), casts)?,
                stat(converter.row_group_maxes(groups.iter()).ok()?, field.data_type(), casts)?,
            ),
            (None, None) => return None,
        };
        let mut any: Option<BooleanArray> = None;
        for (op, value) in op_values {
            let m = compare(&min, &max, op, value)?;
            any = Some(match any {
                None => m,
                Some(a) => boolean::or_kleene(&a, &m).ok()?,
            });
        }
        any
    }
}

/// Statistics cast the way the filter casts the column.
fn stat(array: ArrayRef, table_type: &DataType, casts: &[DataType]) -> Option<ArrayRef> {
    let mut a = if array.data_type() == table_type { array } else { arrow::compute::cast(&array, table_type).ok()? };
    for t in casts {
        a = types::cast_sql(&a, t).ok()?;
    }
    Some(a)
}

/// Whether a row group with these bounds may hold a row where `column op value`; null where the
/// statistics are missing (the caller keeps those).
fn compare(min: &ArrayRef, max: &ArrayRef, op: BinaryOp, value: &ArrayRef) -> Option<BooleanArray> {
    if value.data_type() != min.data_type() {
        return None;
    }
    let v = Scalar::new(value.clone());
    let r = match op {
        BinaryOp::Eq => boolean::and_kleene(&cmp::lt_eq(min, &v).ok()?, &cmp::gt_eq(max, &v).ok()?).ok()?,
        BinaryOp::NotEq => boolean::or_kleene(&cmp::neq(min, &v).ok()?, &cmp::neq(max, &v).ok()?).ok()?,
        BinaryOp::Lt => cmp::lt(min, &v).ok()?,
        BinaryOp::LtEq => cmp::lt_eq(min, &v).ok()?,
        BinaryOp::Gt => cmp::gt(max, &v).ok()?,
        BinaryOp::GtEq => cmp::gt_eq(max, &v).ok()?,
        _ => return None,
    };
    Some(r)
}
