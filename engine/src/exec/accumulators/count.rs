//! `count(*)` and `count(x)`: rows, or rows where `x` is not null.

use super::*;
use arrow::array::Int64Array;

/// Whether row `row` counts: every row for `count(*)`, a valid one for `count(x)`.
#[inline]
fn counts(arg: Option<&ArgValues>, row: usize) -> Result<bool> {
    match arg {
        None | Some(ArgValues::Nulls(None)) => Ok(true),
        Some(ArgValues::Nulls(Some(nulls))) => Ok(nulls.is_valid(row)),
        Some(_) => Err(wrong_arg()),
    }
}

#[derive(Default)]
pub(super) struct Count {
    counts: Vec<i64>,
}

impl GroupsAccumulator for Count {
    fn slot_bytes(&self) -> u64 {
        8
    }
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues> {
        Ok(ArgValues::nulls(column))
    }
    fn reserve(&mut self, additional: usize) {
        self.counts.reserve_exact(additional);
    }
    fn push_group(&mut self) {
        self.counts.push(0);
    }
    fn clear(&mut self) {
        self.counts.clear();
    }
    #[inline]
    fn update(&mut self, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64> {
        if counts(arg, row)? {
            self.counts[g] += 1;
        }
        Ok(0)
    }
    fn update_scattered(&mut self, arg: Option<&ArgValues>, group_of: &[u32]) -> Result<u64> {
        let v = &mut self.counts;
        match arg {
            None | Some(ArgValues::Nulls(None)) => scattered(group_of).for_each(|(_, g)| v[g] += 1),
            Some(ArgValues::Nulls(Some(n))) => {
                scattered(group_of).filter(|(r, _)| n.is_valid(*r)).for_each(|(_, g)| v[g] += 1)
            }
            Some(_) => return Err(wrong_arg()),
        }
        Ok(0)
    }
    fn update_gathered(&mut self, arg: Option<&ArgValues>, gathered: &Gathered) -> Result<u64> {
        let v = &mut self.counts;
        match arg {
            None | Some(ArgValues::Nulls(None)) => {
                for (g, rows) in gathered.groups() {
                    v[g] += rows.len() as i64;
                }
            }
            Some(ArgValues::Nulls(Some(nulls))) => {
                for (g, rows) in gathered.groups() {
                    v[g] += rows.iter().filter(|&&r| nulls.is_valid(r as usize)).count() as i64;
                }
            }
            Some(_) => return Err(wrong_arg()),
        }
        Ok(0)
    }
    fn finish(&self, start: usize, end: usize, _out: &DataType) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from(self.counts[start..end].to_vec())))
    }
}

#[derive(Default)]
pub(super) struct SlidingCount {
    count: i64,
}

impl SlidingAccumulator for SlidingCount {
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues> {
        Ok(ArgValues::nulls(column))
    }
    fn add(&mut self, arg: Option<&ArgValues>, row: usize) -> Result<()> {
        self.count += counts(arg, row)? as i64;
        Ok(())
    }
    fn retract(&mut self, arg: Option<&ArgValues>, row: usize) -> Result<()> {
        self.count -= counts(arg, row)? as i64;
        Ok(())
    }
    fn reset(&mut self) {
        self.count = 0;
    }
    fn value(&self) -> FrameValue {
        FrameValue::Int(Some(self.count))
    }
}
