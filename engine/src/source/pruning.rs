//! Row-group and page pruning: skip Parquet row groups, and pages inside the row groups read, whose
//! statistics prove the WHERE clause false.
//!
//! Each conjunct of the filter that has the shape `column op literal` (also `BETWEEN`, `IN`,
//! `IS [NOT] NULL`, and a column under a cast) becomes a test on the row groups' min/max/null-count
//! statistics, evaluated for all row groups of a file at once with Arrow kernels. Anything else, and
//! any missing statistic, keeps the row group: pruning may only ever skip data that cannot match.
//!
//! Inside a row group that is read, the same tests run on the pages' statistics when the file has a
//! page index (column and offset indexes, as the parquet-rs and Spark writers write by default):
//! the pages they rule out become a row selection, and the reader skips those rows' pages in every
//! column without decompressing them.

use arrow::array::{Array, ArrayRef, BooleanArray, Scalar, UInt32Array, UInt64Array};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::{DataType, Schema};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, RowSelection};

use crate::expr::{types, BinaryOp, Expr};

/// A test on one column's statistics.
#[derive(Debug, Clone)]
enum Test {
    Compare { column: usize, casts: Vec<DataType>, op: BinaryOp, value: ArrayRef },
    In { column: usize, casts: Vec<DataType>, values: Vec<ArrayRef> },
    IsNull { column: usize, negated: bool },
}

/// The parts of a filter that row-group and page statistics can decide.
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
        let groups = meta.metadata().row_groups();
        let rows: Vec<u64> = groups.iter().map(|g| g.num_rows().max(0) as u64).collect();
        let first_partition = table_schema.fields().len() - partition.len();
        let masks = self.tests.iter().filter_map(|test| {
            let field = table_schema.field(test.column());
            let bounds = match test.column().checked_sub(first_partition) {
                // A hive partition column: the file's one value stands for every row group.
                Some(p) => {
                    let value = &partition[p];
                    let repeated =
                        arrow::compute::take(value, &UInt32Array::from(vec![0u32; groups.len()]), None).ok()?;
                    let nulls = rows.iter().map(|&r| if value.is_null(0) { r } else { 0 }).collect();
                    Bounds { min: repeated.clone(), max: repeated, nulls, rows: rows.clone() }
                }
                None => {
                    let converter =
                        StatisticsConverter::try_new(field.name(), meta.schema(), meta.parquet_schema()).ok()?;
                    Bounds {
                        min: converter.row_group_mins(groups.iter()).ok()?,
                        max: converter.row_group_maxes(groups.iter()).ok()?,
                        nulls: converter.row_group_null_counts(groups.iter()).ok()?,
                        rows: rows.clone(),
                    }
                }
            };
            test.decide(field.data_type(), &bounds)
        });
        and_all(masks, groups.len())
    }

    /// Rows of one row group that its pages' statistics (the Parquet page index, which `meta` must
    /// hold for the tested columns) cannot rule out; `None` when they rule out nothing.
    /// Hive partition columns are left to [`PruningPredicate::row_groups_to_scan`].
    pub(super) fn rows_to_scan(
        &self,
        meta: &ArrowReaderMetadata,
        row_group: usize,
        table_schema: &Schema,
        partition_columns: usize,
    ) -> Option<RowSelection> {
        let page_index = meta.metadata().page_index()?.as_ref();
        let groups = meta.metadata().row_groups();
        let first_partition = table_schema.fields().len() - partition_columns;
        let total = groups.get(row_group)?.num_rows().max(0) as usize;
        let mut selection: Option<RowSelection> = None;
        for test in self.tests.iter().filter(|t| t.column() < first_partition) {
            let field = table_schema.field(test.column());
            let Ok(converter) = StatisticsConverter::try_new(field.name(), meta.schema(), meta.parquet_schema()) else {
                continue;
            };
            let page_bounds = || -> Option<Bounds> {
                let rows = converter.data_page_row_counts(page_index, groups, [row_group].iter()).ok()??;
                if rows.null_count() > 0 || rows.is_empty() {
                    return None;
                }
                Some(Bounds {
                    min: converter.data_page_mins(page_index, [row_group].iter()).ok()?,
                    max: converter.data_page_maxes(page_index, [row_group].iter()).ok()?,
                    nulls: converter.data_page_null_counts(page_index, [row_group].iter()).ok()?,
                    rows: rows.values().to_vec(),
                })
            };
            let Some(bounds) = page_bounds() else { continue };
            let Some(keep) = test.decide(field.data_type(), &bounds) else { continue };
            let mut start = 0usize;
            let mut ranges = Vec::new();
            for (page, &rows) in bounds.rows.iter().enumerate() {
                let end = start + rows as usize;
                if !keep.is_valid(page) || keep.value(page) {
                    ranges.push(start..end);
                }
                start = end;
            }
            if start != total {
                continue; // pages that do not add up to the row group: trust none of it
            }
            let pages = RowSelection::from_consecutive_ranges(ranges.into_iter(), total);
            selection = Some(match selection {
                None => pages,
                Some(s) => s.intersection(&pages),
            });
        }
        selection.filter(|s| s.row_count() < total)
    }

    /// The table columns whose page statistics the tests read.
    pub(super) fn columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.tests.iter().map(Test::column)
    }
}

/// What the statistics say about one column over some units of a file (row groups, or the pages of
/// a row group): smallest and largest values, nulls and rows per unit (null where unknown).
struct Bounds {
    min: ArrayRef,
    max: ArrayRef,
    nulls: UInt64Array,
    rows: Vec<u64>,
}

impl Test {
    fn column(&self) -> usize {
        match self {
            Test::Compare { column, .. } | Test::In { column, .. } | Test::IsNull { column, .. } => *column,
        }
    }

    /// For each unit, whether it may hold a matching row: `false` rules it out, `true` or null
    /// keeps it. `None` when the statistics cannot be compared with the test's values.
    fn decide(&self, table_type: &DataType, b: &Bounds) -> Option<BooleanArray> {
        let (casts, op_values): (&[DataType], Vec<(BinaryOp, &ArrayRef)>) = match self {
            Test::IsNull { negated, .. } => {
                return Some(
                    b.nulls
                        .iter()
                        .zip(&b.rows)
                        .map(|(n, &rows)| Some(n.is_none_or(|n| if *negated { n < rows } else { n > 0 })))
                        .collect(),
                );
            }
            Test::Compare { casts, op, value, .. } => (casts, vec![(*op, value)]),
            // Any of the values may match.
            Test::In { casts, values, .. } => (casts, values.iter().map(|v| (BinaryOp::Eq, v)).collect()),
        };
        let min = stat(b.min.clone(), table_type, casts)?;
        let max = stat(b.max.clone(), table_type, casts)?;
        let mut any: Option<BooleanArray> = None;
        for (op, value) in op_values {
            let m = compare(&min, &max, op, value)?;
            any = Some(match any {
                None => m,
                Some(a) => boolean::or_kleene(&a, &m).ok()?,
            });
        }
        // A unit whose every value is null holds no row where a comparison is true.
        let not_all_null: BooleanArray =
            b.nulls.iter().zip(&b.rows).map(|(n, &rows)| Some(n != Some(rows) || rows == 0)).collect();
        boolean::and_kleene(&any?, &not_all_null).ok()
    }
}

/// The conjunction of the tests' masks over `units` units; a unit is kept unless some test rules it
/// out for certain.
fn and_all(masks: impl Iterator<Item = BooleanArray>, units: usize) -> Vec<bool> {
    let mut keep = vec![true; units];
    for mask in masks {
        for (k, m) in keep.iter_mut().zip(mask.iter()) {
            *k &= m.unwrap_or(true);
        }
    }
    keep
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
