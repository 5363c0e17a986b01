//! `avg(x)`: as DuckDB, the exact sum of integers and decimals over the count times the scale,
//! one rounding; a float sum over the count for floats. Null when no value was seen.

use super::number::{Number, SlidingSums, Sums};
use super::*;

/// `N`: `i128` (integers and decimals, at the argument's `scale`) or `f64` (floats).
pub(super) struct Avg<N> {
    sums: Sums<N, i64>,
    scale: i32,
}

impl<N: Number> Avg<N> {
    pub(super) fn new(arg: &DataType) -> Avg<N> {
        Avg { sums: Sums { sum: Vec::new(), tally: Vec::new() }, scale: scale_of(arg) as i32 }
    }
}

impl<N: Number> GroupsAccumulator for Avg<N> {
    fn slot_bytes(&self) -> u64 {
        Sums::<N, i64>::slot_bytes()
    }
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues> {
        N::arg(column)
    }
    fn reserve(&mut self, additional: usize) {
        self.sums.reserve(additional);
    }
    fn push_group(&mut self) {
        self.sums.push_group();
    }
    fn clear(&mut self) {
        self.sums.clear();
    }
    #[inline]
    fn update(&mut self, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64> {
        self.sums.update(g, arg, row, "avg").map(|_| 0)
    }
    fn update_scattered(&mut self, arg: Option<&ArgValues>, group_of: &[u32]) -> Result<u64> {
        self.sums.update_scattered(arg, group_of, "avg").map(|_| 0)
    }
    fn update_gathered(&mut self, arg: Option<&ArgValues>, gathered: &Gathered) -> Result<u64> {
        self.sums.update_gathered(arg, gathered, "avg").map(|_| 0)
    }
    fn finish(&self, start: usize, end: usize, _out: &DataType) -> Result<ArrayRef> {
        let r = start..end;
        let avg = self.sums.sum[r.clone()].iter().zip(&self.sums.tally[r]).map(|(s, c)| N::avg(*s, *c, self.scale));
        Ok(Arc::new(avg.collect::<Float64Array>()))
    }
}

pub(super) struct SlidingAvg<N> {
    sums: SlidingSums<N>,
    scale: i32,
}

impl<N: Number> SlidingAvg<N> {
    pub(super) fn new(arg: &DataType) -> SlidingAvg<N> {
        SlidingAvg { sums: SlidingSums::new("avg"), scale: scale_of(arg) as i32 }
    }
}

impl<N: Number> SlidingAccumulator for SlidingAvg<N> {
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues> {
        N::arg(column)
    }
    fn add(&mut self, arg: Option<&ArgValues>, row: usize) -> Result<()> {
        self.sums.add(arg, row)
    }
    fn retract(&mut self, arg: Option<&ArgValues>, row: usize) -> Result<()> {
        self.sums.retract(arg, row)
    }
    fn reset(&mut self) {
        self.sums.reset();
    }
    fn value(&self) -> FrameValue {
        FrameValue::Float(N::avg(self.sums.sum, self.sums.count, self.scale))
    }
}
