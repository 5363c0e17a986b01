//! Accumulators: an aggregate's state, how rows update it and how it becomes a value. One file
//! per aggregate, each with its [`GroupsAccumulator`] (a slot per group: the hash aggregate) and,
//! where its frame can slide, its [`SlidingAccumulator`] (one state that rows enter and leave:
//! the window operator). [`groups_accumulator`] and [`sliding_accumulator`] are the one place
//! that maps an aggregate function to them.
//!
//! Two traits, as DataFusion has `GroupsAccumulator` and `Accumulator`: a group table folds a
//! batch into thousands of groups at once (one call per batch and aggregate, typed loops inside),
//! while a window frame moves one row at a time and must also let rows go. Forcing either shape on
//! the other cost speed (a slot and a column per window row) or memory (a count beside every sum's
//! state per group, only for retraction). Min and max over sliding frames are not accumulators:
//! the window keeps a queue of candidate rows (`exec/window.rs`), which no per-value state can
//! replace.

mod avg;
mod count;
mod min_max;
mod number;
mod single;
mod sum;
mod variance;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, Float64Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Decimal128Type, Float64Type};
use arrow::row::{RowConverter, Rows, SortField};

use crate::error::{Error, Result};
use crate::expr::AggregateFunction;

/// One aggregate's states, a slot per group, groups numbered from 0 in the order they came.
pub(crate) trait GroupsAccumulator: Send {
    /// Bytes of state per group (values of variable size not counted: `update` reports them).
    fn slot_bytes(&self) -> u64;
    /// An argument column in the form `update` reads.
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues>;
    /// Makes room for `additional` more groups.
    fn reserve(&mut self, additional: usize);
    /// Adds a group, with the state of no rows.
    fn push_group(&mut self);
    /// Forgets every group's state, keeping the vectors' room.
    fn clear(&mut self);
    /// Folds row `row` of `arg` (`None`: `count(*)`) into group `g`; the bytes the state grew by.
    fn update(&mut self, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64>;
    /// Folds every row `r` with `group_of[r] != NO_GROUP` into its group. The common states
    /// override this with loops of their own; the default goes row by row.
    fn update_scattered(&mut self, arg: Option<&ArgValues>, group_of: &[u32]) -> Result<u64> {
        let mut grown = 0;
        for (r, &g) in group_of.iter().enumerate() {
            if g != NO_GROUP {
                grown += self.update(g as usize, arg, r)?;
            }
        }
        Ok(grown)
    }
    /// Folds the rows of each group in turn (see [`Gathered`]).
    fn update_gathered(&mut self, arg: Option<&ArgValues>, gathered: &Gathered) -> Result<u64> {
        let mut grown = 0;
        for (g, rows) in gathered.groups() {
            for &r in rows {
                grown += self.update(g, arg, r as usize)?;
            }
        }
        Ok(grown)
    }
    /// The result column for groups `start..end`, of type `out`.
    fn finish(&self, start: usize, end: usize, out: &DataType) -> Result<ArrayRef>;
}

/// One aggregate over a frame that slides: rows enter at its end and leave at its start.
pub(crate) trait SlidingAccumulator: Send + Sync {
    /// An argument column in the form `add` and `retract` read.
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues>;
    /// Row `row` of `arg` (`None`: `count(*)`) enters the frame.
    fn add(&mut self, arg: Option<&ArgValues>, row: usize) -> Result<()>;
    /// Row `row` of `arg`, added before, leaves the frame.
    fn retract(&mut self, arg: Option<&ArgValues>, row: usize) -> Result<()>;
    /// Back to the state of an empty frame.
    fn reset(&mut self);
    /// The aggregate of the rows in the frame.
    fn value(&self) -> FrameValue;
}

/// A sliding aggregate's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum FrameValue {
    Int(Option<i64>),
    Float(Option<f64>),
    /// Unscaled, at the output type's scale.
    Decimal(Option<i128>),
}

/// The group accumulator of `func` over arguments of type `arg` (`None`: no argument).
pub(crate) fn groups_accumulator(
    func: AggregateFunction,
    arg: Option<&DataType>,
) -> Result<Box<dyn GroupsAccumulator>> {
    use AggregateFunction as F;
    let float = matches!(arg, Some(DataType::Float32 | DataType::Float64));
    Ok(match (func, arg) {
        (F::CountStar | F::Count, _) => Box::new(count::Count::default()),
        (F::Sum, Some(_)) if float => Box::new(sum::Sum::<f64>::default()),
        (F::Sum, Some(_)) => Box::new(sum::Sum::<i128>::default()),
        (F::Avg, Some(t)) if float => Box::new(avg::Avg::<f64>::new(t)),
        (F::Avg, Some(t)) => Box::new(avg::Avg::<i128>::new(t)),
        (F::Min | F::Max, Some(t)) => min_max::groups(t, func == F::Max)?,
        (F::SingleValue, Some(t)) => Box::new(single::Single::new(t)?),
        (F::StddevSamp | F::StddevPop | F::VarSamp | F::VarPop, Some(_)) => Box::new(variance::Variance::new(func)),
        (f, None) => return Err(Error::Plan(format!("{}() needs an argument", f.name()))),
    })
}

/// The sliding accumulator of `func` over arguments of type `arg`, if it has one.
pub(crate) fn sliding_accumulator(
    func: AggregateFunction,
    arg: Option<&DataType>,
) -> Option<Box<dyn SlidingAccumulator>> {
    use AggregateFunction as F;
    let float = matches!(arg, Some(DataType::Float32 | DataType::Float64));
    Some(match (func, arg) {
        (F::CountStar | F::Count, _) => Box::new(count::SlidingCount::default()),
        (F::Sum, Some(_)) if float => Box::new(sum::SlidingSum::<f64>::new()),
        (F::Sum, Some(_)) => Box::new(sum::SlidingSum::<i128>::new()),
        (F::Avg, Some(t)) if float => Box::new(avg::SlidingAvg::<f64>::new(t)),
        (F::Avg, Some(t)) => Box::new(avg::SlidingAvg::<i128>::new(t)),
        _ => return None,
    })
}

/// An argument column in the form its accumulator reads.
pub(crate) enum ArgValues {
    /// Unscaled 128-bit integers (integers, decimals, dates and timestamps).
    Int(Decimal128Array),
    Float(Float64Array),
    /// Row-format values (min/max of strings and the like, single values).
    Rows(Rows, Option<NullBuffer>),
    /// Only nullness matters (count).
    Nulls(Option<NullBuffer>),
}

impl ArgValues {
    pub(crate) fn ints(column: &ArrayRef) -> Result<ArgValues> {
        Ok(ArgValues::Int(unscaled(column)?))
    }

    pub(crate) fn floats(column: &ArrayRef) -> Result<ArgValues> {
        let floats = arrow::compute::cast(column, &DataType::Float64)?;
        Ok(ArgValues::Float(floats.as_primitive::<Float64Type>().clone()))
    }

    pub(crate) fn rows(converter: &RowConverter, column: &ArrayRef) -> Result<ArgValues> {
        Ok(ArgValues::Rows(converter.convert_columns(std::slice::from_ref(column))?, column.logical_nulls()))
    }

    pub(crate) fn nulls(column: &ArrayRef) -> ArgValues {
        ArgValues::Nulls(column.logical_nulls())
    }

    /// Bytes the converted values take (beyond the column they came from, when they share it).
    pub(crate) fn bytes(&self) -> usize {
        match self {
            ArgValues::Int(a) => a.get_array_memory_size(),
            ArgValues::Float(a) => a.get_array_memory_size(),
            ArgValues::Rows(rows, _) => rows.size(),
            ArgValues::Nulls(_) => 0,
        }
    }
}

/// The error of an accumulator handed an argument of another form (a bug, never the input's).
pub(crate) fn wrong_arg() -> Error {
    Error::Execution("internal error: aggregate argument of the wrong kind".into())
}

/// A row-format converter for one column of type `t`.
fn converter(t: &DataType) -> Result<RowConverter> {
    Ok(RowConverter::new(vec![SortField::new(t.clone())])?)
}

/// Integers, decimals, dates and timestamps as their unscaled values in `i128` (a decimal keeps
/// its scale). Arrow's cast to DECIMAL(38) would rescale every value with an overflow check.
pub(crate) fn unscaled(column: &ArrayRef) -> Result<Decimal128Array> {
    let (values, scale) = match column.data_type() {
        DataType::Decimal128(_, s) => (column.as_primitive::<Decimal128Type>().clone(), *s),
        DataType::UInt64 => (column.as_primitive::<arrow::datatypes::UInt64Type>().unary(|v| v as i128), 0),
        // Every other integer, date and timestamp fits an i64 (a lossless cast).
        t if t.is_integer() || min_max::temporal(t) => {
            let ints = arrow::compute::cast(column, &DataType::Int64)?;
            (ints.as_primitive::<arrow::datatypes::Int64Type>().unary(|v| v as i128), 0)
        }
        _ => (arrow::compute::cast(column, &DataType::Decimal128(38, 0))?.as_primitive::<Decimal128Type>().clone(), 0),
    };
    Ok(values.with_precision_and_scale(38, scale)?)
}

/// The scale of a decimal type, 0 for the rest.
fn scale_of(t: &DataType) -> i8 {
    match t {
        DataType::Decimal128(_, s) => *s,
        _ => 0,
    }
}

/// The group of a row that went elsewhere (a partition on disk): no group.
pub(crate) const NO_GROUP: u32 = u32::MAX;

/// How the rows of a batch reach their groups.
#[derive(Clone, Copy)]
pub(crate) enum Order<'a> {
    /// Row `r` goes to group `group_of[r]` ([`NO_GROUP`]: to none).
    Scattered(&'a [u32]),
    /// Group by group.
    Gathered(&'a Gathered),
}

/// Folds every row of `arg` into its group, in `order`; returns bytes the state grew by.
pub(crate) fn update_batch(acc: &mut dyn GroupsAccumulator, arg: Option<&ArgValues>, order: Order) -> Result<u64> {
    match order {
        Order::Scattered(group_of) => acc.update_scattered(arg, group_of),
        Order::Gathered(gathered) => acc.update_gathered(arg, gathered),
    }
}

/// A batch's rows in group order: group `spans[k].0` gets rows `rows[spans[k].1..spans[k].2]`,
/// in batch order.
///
/// Folded row by row, the rows of a few groups (TPC-H Q1's four flag pairs) make a chain of loads
/// and stores to the same few states, each waiting for the one before, once per aggregate. Group by
/// group, a state stays in a register over its rows; the sort that gathers them is one such chain,
/// paid once per batch.
pub(crate) struct Gathered {
    rows: Vec<u32>,
    spans: Vec<(usize, usize, usize)>,
}

impl Gathered {
    /// Whether a table of `groups` groups folds a batch of `rows` rows group by group: only when
    /// each group gets several rows on average (else the sort is pure cost).
    pub(crate) fn pays(groups: usize, rows: usize) -> bool {
        groups * 8 <= rows
    }

    /// The rows of `group_of` (groups below `groups`; [`NO_GROUP`] rows left out) sorted by group,
    /// by counting.
    pub(crate) fn sort(group_of: &[u32], groups: usize) -> Gathered {
        let mut next = vec![0usize; groups];
        for &g in group_of {
            if g != NO_GROUP {
                next[g as usize] += 1;
            }
        }
        let mut spans = Vec::new();
        let mut end = 0;
        for (g, slot) in next.iter_mut().enumerate() {
            let count = *slot;
            if count > 0 {
                spans.push((g, end, end + count));
            }
            *slot = end;
            end += count;
        }
        let mut rows = vec![0u32; end];
        for (r, &g) in group_of.iter().enumerate() {
            if g != NO_GROUP {
                let at = &mut next[g as usize];
                rows[*at] = r as u32;
                *at += 1;
            }
        }
        Gathered { rows, spans }
    }

    /// Rows already in runs: run `k` starts at row `starts[k]` and is group `k`.
    pub(crate) fn runs(starts: &[u32], n: usize) -> Gathered {
        let ends = starts.iter().skip(1).map(|&s| s as usize).chain(std::iter::once(n));
        let spans = starts.iter().zip(ends).enumerate().map(|(k, (&s, e))| (k, s as usize, e)).collect();
        Gathered { rows: (0..n as u32).collect(), spans }
    }

    pub(crate) fn groups(&self) -> impl Iterator<Item = (usize, &[u32])> + '_ {
        self.spans.iter().map(|&(g, s, e)| (g, &self.rows[s..e]))
    }
}

/// The rows of a scattered batch that have a group: `(row, group)`.
fn scattered(group_of: &[u32]) -> impl Iterator<Item = (usize, usize)> + '_ {
    group_of.iter().enumerate().filter(|(_, g)| **g != NO_GROUP).map(|(r, g)| (r, *g as usize))
}

pub(crate) fn overflow(f: &str) -> Error {
    Error::Execution(format!("overflow in {f}()"))
}

/// `values` where `seen`, else null.
fn seen_column<'a, T: Copy>(values: &'a [T], seen: &'a [bool]) -> impl Iterator<Item = Option<T>> + 'a {
    values.iter().zip(seen).map(|(v, s)| s.then_some(*v))
}
