//! Accumulators: each aggregate's state per group, how a batch of rows updates it (in order,
//! scattered or gathered by group), and how the states become the output column.

use super::*;

impl Acc {
    /// Makes room for `additional` more groups.
    pub(super) fn reserve(&mut self, additional: usize) {
        match self {
            Acc::Count(v) => v.reserve_exact(additional),
            Acc::SumInt { sum, seen } => {
                sum.reserve_exact(additional);
                seen.reserve_exact(additional);
            }
            Acc::SumFloat { sum, seen } => {
                sum.reserve_exact(additional);
                seen.reserve_exact(additional);
            }
            Acc::AvgInt { sum, count, .. } => {
                sum.reserve_exact(additional);
                count.reserve_exact(additional);
            }
            Acc::AvgFloat { sum, count } => {
                sum.reserve_exact(additional);
                count.reserve_exact(additional);
            }
            Acc::Extreme { values, .. } => values.reserve_exact(additional),
            Acc::Single { values, seen, .. } => {
                values.reserve_exact(additional);
                seen.reserve_exact(additional);
            }
            Acc::ExtremeInt { values, seen, .. } => {
                values.reserve_exact(additional);
                seen.reserve_exact(additional);
            }
            Acc::Var { n, mean, m2, .. } => {
                n.reserve_exact(additional);
                mean.reserve_exact(additional);
                m2.reserve_exact(additional);
            }
        }
    }

    /// Forgets every group's state, keeping the vectors' room.
    pub(super) fn clear(&mut self) {
        match self {
            Acc::Count(v) => v.clear(),
            Acc::SumInt { sum, seen } => {
                sum.clear();
                seen.clear();
            }
            Acc::SumFloat { sum, seen } => {
                sum.clear();
                seen.clear();
            }
            Acc::AvgInt { sum, count, .. } => {
                sum.clear();
                count.clear();
            }
            Acc::AvgFloat { sum, count } => {
                sum.clear();
                count.clear();
            }
            Acc::Extreme { values, .. } => values.clear(),
            Acc::Single { values, seen, .. } => {
                values.clear();
                seen.clear();
            }
            Acc::ExtremeInt { values, seen, .. } => {
                values.clear();
                seen.clear();
            }
            Acc::Var { n, mean, m2, .. } => {
                n.clear();
                mean.clear();
                m2.clear();
            }
        }
    }
}

/// Bytes of state per group for an accumulator (not counting min/max values).
pub(super) fn slot_bytes(acc: &Acc) -> u64 {
    match acc {
        Acc::Count(_) => 8,
        Acc::SumInt { .. } => 17,
        Acc::SumFloat { .. } => 9,
        Acc::AvgInt { .. } => 24,
        Acc::AvgFloat { .. } => 16,
        Acc::Extreme { .. } => 16,
        Acc::Single { .. } => 17,
        Acc::ExtremeInt { .. } => 17,
        Acc::Var { .. } => 24,
    }
}

impl ArgValues {
    pub(super) fn new(acc: &Acc, column: &ArrayRef) -> Result<ArgValues> {
        Ok(match acc {
            Acc::Count(_) => ArgValues::Nulls(column.logical_nulls()),
            Acc::SumInt { .. } | Acc::AvgInt { .. } | Acc::ExtremeInt { .. } => ArgValues::Int(unscaled(column)?),
            Acc::SumFloat { .. } | Acc::AvgFloat { .. } | Acc::Var { .. } => ArgValues::Float(
                arrow::compute::cast(column, &DataType::Float64)?.as_primitive::<Float64Type>().clone(),
            ),
            Acc::Extreme { converter, .. } | Acc::Single { converter, .. } => {
                ArgValues::Rows(converter.convert_columns(std::slice::from_ref(column))?, column.logical_nulls())
            }
        })
    }
}

/// Integers, decimals, dates and timestamps as their unscaled values in `i128` (a decimal keeps
/// its scale). Arrow's cast to DECIMAL(38) would rescale every value with an overflow check.
pub(super) fn unscaled(column: &ArrayRef) -> Result<Decimal128Array> {
    let (values, scale) = match column.data_type() {
        DataType::Decimal128(_, s) => (column.as_primitive::<Decimal128Type>().clone(), *s),
        DataType::UInt64 => (column.as_primitive::<arrow::datatypes::UInt64Type>().unary(|v| v as i128), 0),
        // Every other integer, date and timestamp fits an i64 (a lossless cast).
        t if t.is_integer() || extreme_int(t) == Some(true) => {
            let ints = arrow::compute::cast(column, &DataType::Int64)?;
            (ints.as_primitive::<arrow::datatypes::Int64Type>().unary(|v| v as i128), 0)
        }
        _ => (arrow::compute::cast(column, &DataType::Decimal128(38, 0))?.as_primitive::<Decimal128Type>().clone(), 0),
    };
    Ok(values.with_precision_and_scale(38, scale)?)
}

/// Whether min/max of `t` keeps its state as an integer: `Some(false)` for integers and decimals,
/// `Some(true)` for dates and timestamps (which go through Int64), `None` for the rest.
pub(super) fn extreme_int(t: &DataType) -> Option<bool> {
    match t {
        t if t.is_integer() => Some(false),
        DataType::Decimal128(..) => Some(false),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => Some(true),
        _ => None,
    }
}

impl Gathered {
    /// Whether a table of `groups` groups folds a batch of `rows` rows group by group: only when
    /// each group gets several rows on average (else the sort is pure cost).
    pub(super) fn pays(groups: usize, rows: usize) -> bool {
        groups * 8 <= rows
    }

    /// The rows of `group_of` (groups below `groups`; [`NO_GROUP`] rows left out) sorted by group,
    /// by counting.
    pub(super) fn sort(group_of: &[u32], groups: usize) -> Gathered {
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

    /// Rows already in runs (see [`runs`]): run `k` starts at row `starts[k]` and is group `k`.
    pub(super) fn runs(starts: &[u32], n: usize) -> Gathered {
        let ends = starts.iter().skip(1).map(|&s| s as usize).chain(std::iter::once(n));
        let spans = starts.iter().zip(ends).enumerate().map(|(k, (&s, e))| (k, s as usize, e)).collect();
        Gathered { rows: (0..n as u32).collect(), spans }
    }

    pub(super) fn groups(&self) -> impl Iterator<Item = (usize, &[u32])> + '_ {
        self.spans.iter().map(|&(g, s, e)| (g, &self.rows[s..e]))
    }
}

pub(super) fn overflow(f: &str) -> Error {
    Error::Execution(format!("overflow in {f}()"))
}

/// `start` plus the valid values among `rows`, and how many were valid; `None` on overflow.
#[inline]
pub(super) fn sum_int(
    start: i128,
    values: &[i128],
    nulls: Option<&arrow::buffer::NullBuffer>,
    rows: &[u32],
) -> Option<(i128, i64)> {
    let mut sum = start;
    match nulls {
        None => {
            for &r in rows {
                sum = sum.checked_add(values[r as usize])?;
            }
            Some((sum, rows.len() as i64))
        }
        Some(nulls) => {
            let mut count = 0;
            for &r in rows.iter().filter(|&&r| nulls.is_valid(r as usize)) {
                sum = sum.checked_add(values[r as usize])?;
                count += 1;
            }
            Some((sum, count))
        }
    }
}

/// `start` plus the valid values among `rows` (added in row order, as row by row would), and how
/// many were valid.
#[inline]
pub(super) fn sum_float(
    start: f64,
    values: &[f64],
    nulls: Option<&arrow::buffer::NullBuffer>,
    rows: &[u32],
) -> (f64, i64) {
    let mut sum = start;
    let mut count = 0;
    for &r in rows.iter().filter(|&&r| nulls.is_none_or(|n| n.is_valid(r as usize))) {
        sum += values[r as usize];
        count += 1;
    }
    (sum, count)
}

/// Folds every row of `arg` into its group, in `order`; returns bytes the state grew by. The
/// common states have loops of their own; the rest go row by row.
pub(super) fn update_batch(acc: &mut Acc, arg: Option<&ArgValues>, order: Order) -> Result<u64> {
    match order {
        Order::Scattered(group_of) => update_scattered(acc, arg, group_of),
        Order::Gathered(gathered) => update_gathered(acc, arg, gathered),
    }
}

pub(super) fn update_scattered(acc: &mut Acc, arg: Option<&ArgValues>, group_of: &[u32]) -> Result<u64> {
    let rows = || group_of.iter().enumerate().filter(|(_, g)| **g != NO_GROUP).map(|(r, g)| (r, *g as usize));
    match (acc, arg) {
        (Acc::Count(v), None) => rows().for_each(|(_, g)| v[g] += 1),
        (Acc::Count(v), Some(ArgValues::Nulls(nulls))) => match nulls {
            None => rows().for_each(|(_, g)| v[g] += 1),
            Some(n) => rows().filter(|(r, _)| n.is_valid(*r)).for_each(|(_, g)| v[g] += 1),
        },
        (Acc::SumInt { sum, seen }, Some(ArgValues::Int(a))) => {
            let values = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                sum[g] = sum[g].checked_add(values[r]).ok_or_else(|| overflow("sum"))?;
                seen[g] = true;
            }
        }
        (Acc::SumFloat { sum, seen }, Some(ArgValues::Float(a))) => {
            let values = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                sum[g] += values[r];
                seen[g] = true;
            }
        }
        (Acc::AvgInt { sum, count, .. }, Some(ArgValues::Int(a))) => {
            let values = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                sum[g] = sum[g].checked_add(values[r]).ok_or_else(|| overflow("avg"))?;
                count[g] += 1;
            }
        }
        (Acc::AvgFloat { sum, count }, Some(ArgValues::Float(a))) => {
            let values = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                sum[g] += values[r];
                count[g] += 1;
            }
        }
        (Acc::ExtremeInt { values, seen, max, .. }, Some(ArgValues::Int(a))) => {
            let input = a.values();
            for (r, g) in rows().filter(|(r, _)| a.is_valid(*r)) {
                let v = input[r];
                if !seen[g] || (*max && v > values[g]) || (!*max && v < values[g]) {
                    values[g] = v;
                    seen[g] = true;
                }
            }
        }
        (acc, arg) => {
            let mut grown = 0;
            for (r, g) in rows() {
                grown += update(acc, g, arg, r)?;
            }
            return Ok(grown);
        }
    }
    Ok(0)
}

pub(super) fn update_gathered(acc: &mut Acc, arg: Option<&ArgValues>, gathered: &Gathered) -> Result<u64> {
    match (acc, arg) {
        (Acc::Count(v), None) | (Acc::Count(v), Some(ArgValues::Nulls(None))) => {
            for (g, rows) in gathered.groups() {
                v[g] += rows.len() as i64;
            }
        }
        (Acc::Count(v), Some(ArgValues::Nulls(Some(nulls)))) => {
            for (g, rows) in gathered.groups() {
                v[g] += rows.iter().filter(|&&r| nulls.is_valid(r as usize)).count() as i64;
            }
        }
        (Acc::SumInt { sum, seen }, Some(ArgValues::Int(a))) => {
            for (g, rows) in gathered.groups() {
                let (s, n) = sum_int(sum[g], a.values(), a.nulls(), rows).ok_or_else(|| overflow("sum"))?;
                sum[g] = s;
                seen[g] |= n > 0;
            }
        }
        (Acc::SumFloat { sum, seen }, Some(ArgValues::Float(a))) => {
            for (g, rows) in gathered.groups() {
                let (s, n) = sum_float(sum[g], a.values(), a.nulls(), rows);
                sum[g] = s;
                seen[g] |= n > 0;
            }
        }
        (Acc::AvgInt { sum, count, .. }, Some(ArgValues::Int(a))) => {
            for (g, rows) in gathered.groups() {
                let (s, n) = sum_int(sum[g], a.values(), a.nulls(), rows).ok_or_else(|| overflow("avg"))?;
                sum[g] = s;
                count[g] += n;
            }
        }
        (Acc::AvgFloat { sum, count }, Some(ArgValues::Float(a))) => {
            for (g, rows) in gathered.groups() {
                let (s, n) = sum_float(sum[g], a.values(), a.nulls(), rows);
                sum[g] = s;
                count[g] += n;
            }
        }
        (Acc::ExtremeInt { values, seen, max, .. }, Some(ArgValues::Int(a))) => {
            let input = a.values();
            for (g, rows) in gathered.groups() {
                let valid = rows.iter().map(|&r| r as usize).filter(|&r| a.is_valid(r)).map(|r| input[r]);
                let best = if *max { valid.max() } else { valid.min() };
                if let Some(v) = best {
                    if !seen[g] || (*max && v > values[g]) || (!*max && v < values[g]) {
                        values[g] = v;
                        seen[g] = true;
                    }
                }
            }
        }
        (acc, arg) => {
            let mut grown = 0;
            for (g, rows) in gathered.groups() {
                for &r in rows {
                    grown += update(acc, g, arg, r as usize)?;
                }
            }
            return Ok(grown);
        }
    }
    Ok(0)
}

/// Folds row `row` of `arg` into group `g`; returns bytes the state grew by (min/max values).
// Inlined into both loops that call it row by row (min/max of strings), as it was into the one
// loop before there were two.
#[inline(always)]
pub(super) fn update(acc: &mut Acc, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64> {
    match (acc, arg) {
        (Acc::Count(v), None) => v[g] += 1,
        (Acc::Count(v), Some(ArgValues::Nulls(nulls))) => {
            if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                v[g] += 1;
            }
        }
        (Acc::SumInt { sum, seen }, Some(ArgValues::Int(a))) => {
            if a.is_valid(row) {
                sum[g] =
                    sum[g].checked_add(a.value(row)).ok_or_else(|| Error::Execution("overflow in sum()".into()))?;
                seen[g] = true;
            }
        }
        (Acc::SumFloat { sum, seen }, Some(ArgValues::Float(a))) => {
            if a.is_valid(row) {
                sum[g] += a.value(row);
                seen[g] = true;
            }
        }
        (Acc::AvgInt { sum, count, .. }, Some(ArgValues::Int(a))) => {
            if a.is_valid(row) {
                sum[g] =
                    sum[g].checked_add(a.value(row)).ok_or_else(|| Error::Execution("overflow in avg()".into()))?;
                count[g] += 1;
            }
        }
        (Acc::AvgFloat { sum, count }, Some(ArgValues::Float(a))) => {
            if a.is_valid(row) {
                sum[g] += a.value(row);
                count[g] += 1;
            }
        }
        (Acc::Var { n, mean, m2, .. }, Some(ArgValues::Float(a))) => {
            if a.is_valid(row) {
                let x = a.value(row);
                n[g] += 1.0;
                let delta = x - mean[g];
                mean[g] += delta / n[g];
                m2[g] += delta * (x - mean[g]);
            }
        }
        (Acc::Single { values, seen, .. }, Some(ArgValues::Rows(rows, nulls))) => {
            if seen[g] {
                return Err(Error::Execution(
                    "more than one row returned by a subquery used as an expression (hint: add an aggregate or LIMIT 1)"
                        .into(),
                ));
            }
            seen[g] = true;
            if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                let value: Box<[u8]> = rows.row(row).data().into();
                let grew = (value.len() + 16) as u64;
                values[g] = Some(value);
                return Ok(grew);
            }
        }
        (Acc::Extreme { values, max, .. }, Some(ArgValues::Rows(rows, nulls))) => {
            if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                let candidate = rows.row(row);
                let better = match &values[g] {
                    None => true,
                    Some(current) => {
                        let c = candidate.data();
                        if *max {
                            c > &current[..]
                        } else {
                            c < &current[..]
                        }
                    }
                };
                if better {
                    // A boxed value costs its bytes rounded up by the allocator (16 bytes of slack
                    // counted per value).
                    let old = values[g].as_ref().map_or(0, |v| v.len() + 16);
                    let new: Box<[u8]> = candidate.data().into();
                    let grew = (new.len() + 16).saturating_sub(old) as u64;
                    values[g] = Some(new);
                    return Ok(grew);
                }
            }
        }
        _ => return Err(Error::Execution("internal error: aggregate argument of the wrong kind".into())),
    }
    Ok(0)
}

/// The result column of an accumulator for groups `start..end`.
pub(super) fn finish(acc: &Acc, start: usize, end: usize, out: &DataType) -> Result<ArrayRef> {
    let r = start..end;
    Ok(match acc {
        Acc::Count(v) => Arc::new(Int64Array::from(v[r].to_vec())),
        Acc::SumInt { sum, seen } => {
            let (p, s) = match out {
                DataType::Decimal128(p, s) => (*p, *s),
                _ => (38, 0),
            };
            let a: Decimal128Array = sum[r.clone()].iter().zip(&seen[r]).map(|(v, s)| s.then_some(*v)).collect();
            Arc::new(a.with_precision_and_scale(p, s)?)
        }
        Acc::SumFloat { sum, seen } => {
            Arc::new(sum[r.clone()].iter().zip(&seen[r]).map(|(v, s)| s.then_some(*v)).collect::<Float64Array>())
        }
        Acc::AvgInt { sum, count, scale } => {
            let div = 10f64.powi(*scale);
            Arc::new(
                sum[r.clone()]
                    .iter()
                    .zip(&count[r])
                    // As DuckDB: the exact sum over count * 10^scale, one rounding.
                    .map(|(s, c)| (*c > 0).then(|| *s as f64 / (*c as f64 * div)))
                    .collect::<Float64Array>(),
            )
        }
        Acc::AvgFloat { sum, count } => Arc::new(
            sum[r.clone()]
                .iter()
                .zip(&count[r])
                .map(|(s, c)| (*c > 0).then(|| s / *c as f64))
                .collect::<Float64Array>(),
        ),
        Acc::Var { n, m2, sqrt, sample, .. } => Arc::new(
            n[r.clone()]
                .iter()
                .zip(&m2[r])
                .map(|(n, m2)| {
                    let d = if *sample { n - 1.0 } else { *n };
                    (d > 0.0).then(|| if *sqrt { (m2 / d).sqrt() } else { m2 / d })
                })
                .collect::<Float64Array>(),
        ),
        Acc::ExtremeInt { values, seen, temporal, .. } => {
            let scale = match out {
                DataType::Decimal128(_, s) => *s,
                _ => 0,
            };
            let unscaled: Decimal128Array =
                values[r.clone()].iter().zip(&seen[r]).map(|(v, s)| s.then_some(*v)).collect();
            let unscaled: ArrayRef = Arc::new(unscaled.with_precision_and_scale(38, scale)?);
            if *temporal {
                arrow::compute::cast(&arrow::compute::cast(&unscaled, &DataType::Int64)?, out)?
            } else {
                arrow::compute::cast(&unscaled, out)?
            }
        }
        Acc::Extreme { values, converter, .. } | Acc::Single { values, converter, .. } => {
            let slice = &values[r];
            if slice.iter().all(|v| v.is_none()) {
                return Ok(new_null_array(out, slice.len()));
            }
            // Rows for nulls: the converter's encoding of a null value.
            let null_rows = converter.convert_columns(&[new_null_array(out, 1)])?;
            let null_row = null_rows.row(0);
            let parser = converter.parser();
            let rows = slice.iter().map(|v| match v {
                Some(bytes) => parser.parse(bytes),
                None => null_row,
            });
            converter.convert_rows(rows)?.remove(0)
        }
    })
}
