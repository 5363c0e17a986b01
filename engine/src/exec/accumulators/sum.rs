//! `sum(x)`: exact over integers and decimals (unscaled, in 128 bits, an error on overflow), in
//! floating point over floats. Null when no value was seen.

use super::number::{Number, SlidingSums, Sums};
use super::*;

/// `N`: `i128` (integers and decimals) or `f64` (floats).
#[derive(Default)]
pub(super) struct Sum<N> {
    sums: Sums<N, bool>,
}

impl<N: Number> GroupsAccumulator for Sum<N> {
    fn slot_bytes(&self) -> u64 {
        Sums::<N, bool>::slot_bytes()
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
        self.sums.update(g, arg, row, "sum").map(|_| 0)
    }
    fn update_scattered(&mut self, arg: Option<&ArgValues>, group_of: &[u32]) -> Result<u64> {
        self.sums.update_scattered(arg, group_of, "sum").map(|_| 0)
    }
    fn update_gathered(&mut self, arg: Option<&ArgValues>, gathered: &Gathered) -> Result<u64> {
        self.sums.update_gathered(arg, gathered, "sum").map(|_| 0)
    }
    fn finish(&self, start: usize, end: usize, out: &DataType) -> Result<ArrayRef> {
        let r = start..end;
        let sums = self.sums.sum[r.clone()].iter().zip(&self.sums.tally[r]).map(|(s, seen)| seen.then_some(*s));
        N::sums(sums, out)
    }
}

pub(super) struct SlidingSum<N> {
    sums: SlidingSums<N>,
}

impl<N: Number> SlidingSum<N> {
    pub(super) fn new() -> SlidingSum<N> {
        SlidingSum { sums: SlidingSums::new("sum") }
    }
}

impl<N: Number> SlidingAccumulator for SlidingSum<N> {
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
        N::frame_value((self.sums.count > 0).then_some(self.sums.sum))
    }
}
