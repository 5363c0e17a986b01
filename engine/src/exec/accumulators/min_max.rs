//! `min(x)` and `max(x)`: integers, decimals, dates and timestamps as unscaled 128-bit integers
//! (no allocation per value); anything else in row format, whose bytes compare as the values do.

use super::*;
use arrow::array::new_null_array;

/// Whether min/max of `t` keeps its state as an integer, and for dates and timestamps (which go
/// through Int64) whether it is one.
fn int_state(t: &DataType) -> Option<bool> {
    match t {
        t if t.is_integer() => Some(false),
        DataType::Decimal128(..) => Some(false),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => Some(true),
        _ => None,
    }
}

/// Dates and timestamps: their values pass through Int64 (they do not cast to decimals).
pub(super) fn temporal(t: &DataType) -> bool {
    int_state(t) == Some(true)
}

/// The group accumulator for min (`max` false) or max of `t`.
pub(super) fn groups(t: &DataType, max: bool) -> Result<Box<dyn GroupsAccumulator>> {
    Ok(match int_state(t) {
        Some(temporal) => Box::new(IntExtreme { values: Vec::new(), seen: Vec::new(), max, temporal }),
        None => Box::new(RowExtreme { values: Vec::new(), max, converter: converter(t)? }),
    })
}

struct IntExtreme {
    values: Vec<i128>,
    seen: Vec<bool>,
    max: bool,
    temporal: bool,
}

impl IntExtreme {
    #[inline]
    fn offer(&mut self, g: usize, v: i128) {
        if !self.seen[g] || (self.max && v > self.values[g]) || (!self.max && v < self.values[g]) {
            self.values[g] = v;
            self.seen[g] = true;
        }
    }
}

impl GroupsAccumulator for IntExtreme {
    fn slot_bytes(&self) -> u64 {
        17
    }
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues> {
        ArgValues::ints(column)
    }
    fn reserve(&mut self, additional: usize) {
        self.values.reserve_exact(additional);
        self.seen.reserve_exact(additional);
    }
    fn push_group(&mut self) {
        self.values.push(0);
        self.seen.push(false);
    }
    fn clear(&mut self) {
        self.values.clear();
        self.seen.clear();
    }
    #[inline]
    fn update(&mut self, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64> {
        let Some(ArgValues::Int(a)) = arg else { return Err(wrong_arg()) };
        if a.is_valid(row) {
            self.offer(g, a.value(row));
        }
        Ok(0)
    }
    fn update_scattered(&mut self, arg: Option<&ArgValues>, group_of: &[u32]) -> Result<u64> {
        let Some(ArgValues::Int(a)) = arg else { return Err(wrong_arg()) };
        let input = a.values();
        for (r, g) in scattered(group_of).filter(|(r, _)| a.is_valid(*r)) {
            self.offer(g, input[r]);
        }
        Ok(0)
    }
    fn update_gathered(&mut self, arg: Option<&ArgValues>, gathered: &Gathered) -> Result<u64> {
        let Some(ArgValues::Int(a)) = arg else { return Err(wrong_arg()) };
        let input = a.values();
        for (g, rows) in gathered.groups() {
            let valid = rows.iter().map(|&r| r as usize).filter(|&r| a.is_valid(r)).map(|r| input[r]);
            if let Some(v) = if self.max { valid.max() } else { valid.min() } {
                self.offer(g, v);
            }
        }
        Ok(0)
    }
    fn finish(&self, start: usize, end: usize, out: &DataType) -> Result<ArrayRef> {
        let r = start..end;
        let unscaled: Decimal128Array = seen_column(&self.values[r.clone()], &self.seen[r]).collect();
        let unscaled: ArrayRef = Arc::new(unscaled.with_precision_and_scale(38, scale_of(out))?);
        Ok(if self.temporal {
            arrow::compute::cast(&arrow::compute::cast(&unscaled, &DataType::Int64)?, out)?
        } else {
            arrow::compute::cast(&unscaled, out)?
        })
    }
}

struct RowExtreme {
    values: Vec<Option<Box<[u8]>>>,
    max: bool,
    converter: RowConverter,
}

impl GroupsAccumulator for RowExtreme {
    fn slot_bytes(&self) -> u64 {
        16
    }
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues> {
        ArgValues::rows(&self.converter, column)
    }
    fn reserve(&mut self, additional: usize) {
        self.values.reserve_exact(additional);
    }
    fn push_group(&mut self) {
        self.values.push(None);
    }
    fn clear(&mut self) {
        self.values.clear();
    }
    // Inlined into both loops that call it row by row, as it was into the one loop before there
    // were two.
    #[inline(always)]
    fn update(&mut self, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64> {
        let Some(ArgValues::Rows(rows, nulls)) = arg else { return Err(wrong_arg()) };
        if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
            return Ok(0);
        }
        let candidate = rows.row(row).data();
        let better = match &self.values[g] {
            None => true,
            Some(current) => (self.max && candidate > &current[..]) || (!self.max && candidate < &current[..]),
        };
        if !better {
            return Ok(0);
        }
        // A boxed value costs its bytes rounded up by the allocator (16 bytes of slack counted
        // per value).
        let old = self.values[g].as_ref().map_or(0, |v| v.len() + 16);
        let new: Box<[u8]> = candidate.into();
        let grew = (new.len() + 16).saturating_sub(old) as u64;
        self.values[g] = Some(new);
        Ok(grew)
    }
    fn finish(&self, start: usize, end: usize, out: &DataType) -> Result<ArrayRef> {
        row_values(&self.converter, &self.values[start..end], out)
    }
}

/// A column of `out` from values in row format (`None`: null).
pub(super) fn row_values(converter: &RowConverter, values: &[Option<Box<[u8]>>], out: &DataType) -> Result<ArrayRef> {
    if values.iter().all(|v| v.is_none()) {
        return Ok(new_null_array(out, values.len()));
    }
    // Rows for nulls: the converter's encoding of a null value.
    let null_rows = converter.convert_columns(&[new_null_array(out, 1)])?;
    let null_row = null_rows.row(0);
    let parser = converter.parser();
    let rows = values.iter().map(|v| match v {
        Some(bytes) => parser.parse(bytes),
        None => null_row,
    });
    Ok(converter.convert_rows(rows)?.remove(0))
}
