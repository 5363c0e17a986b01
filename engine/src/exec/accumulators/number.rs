//! The numbers sums and averages add: exact unscaled 128-bit integers (integers and decimals, an
//! error on overflow) or floats. One generic state serves both.

use super::*;

pub(super) trait Number: Copy + Default + Send + Sync + 'static {
    /// The argument column in this form.
    fn arg(column: &ArrayRef) -> Result<ArgValues>;
    /// The values and nulls of an argument in this form.
    fn values(arg: Option<&ArgValues>) -> Result<(&[Self], Option<&NullBuffer>)>;
    /// `a + b`; `None` on overflow.
    fn add(a: Self, b: Self) -> Option<Self>;
    /// `a - b`; `None` on overflow.
    fn sub(a: Self, b: Self) -> Option<Self>;
    /// A sum column of type `out`.
    fn sums(values: impl Iterator<Item = Option<Self>>, out: &DataType) -> Result<ArrayRef>;
    /// The average of `count` values summing to `sum`, at decimal scale `scale`.
    fn avg(sum: Self, count: i64, scale: i32) -> Option<f64>;
    /// The sum as a sliding frame's value.
    fn frame_value(sum: Option<Self>) -> FrameValue;
}

impl Number for i128 {
    fn arg(column: &ArrayRef) -> Result<ArgValues> {
        ArgValues::ints(column)
    }
    #[inline]
    fn values(arg: Option<&ArgValues>) -> Result<(&[i128], Option<&NullBuffer>)> {
        match arg {
            Some(ArgValues::Int(a)) => Ok((a.values(), a.nulls())),
            _ => Err(wrong_arg()),
        }
    }
    #[inline]
    fn add(a: i128, b: i128) -> Option<i128> {
        a.checked_add(b)
    }
    #[inline]
    fn sub(a: i128, b: i128) -> Option<i128> {
        a.checked_sub(b)
    }
    fn sums(values: impl Iterator<Item = Option<i128>>, out: &DataType) -> Result<ArrayRef> {
        let (p, s) = match out {
            DataType::Decimal128(p, s) => (*p, *s),
            _ => (38, 0),
        };
        Ok(Arc::new(values.collect::<Decimal128Array>().with_precision_and_scale(p, s)?))
    }
    fn avg(sum: i128, count: i64, scale: i32) -> Option<f64> {
        // As DuckDB: the exact sum over count times the scale, one rounding.
        (count > 0).then(|| sum as f64 / (count as f64 * 10f64.powi(scale)))
    }
    fn frame_value(sum: Option<i128>) -> FrameValue {
        FrameValue::Decimal(sum)
    }
}

impl Number for f64 {
    fn arg(column: &ArrayRef) -> Result<ArgValues> {
        ArgValues::floats(column)
    }
    #[inline]
    fn values(arg: Option<&ArgValues>) -> Result<(&[f64], Option<&NullBuffer>)> {
        match arg {
            Some(ArgValues::Float(a)) => Ok((a.values(), a.nulls())),
            _ => Err(wrong_arg()),
        }
    }
    #[inline]
    fn add(a: f64, b: f64) -> Option<f64> {
        Some(a + b)
    }
    #[inline]
    fn sub(a: f64, b: f64) -> Option<f64> {
        Some(a - b)
    }
    fn sums(values: impl Iterator<Item = Option<f64>>, _out: &DataType) -> Result<ArrayRef> {
        Ok(Arc::new(values.collect::<Float64Array>()))
    }
    fn avg(sum: f64, count: i64, _scale: i32) -> Option<f64> {
        (count > 0).then(|| sum / count as f64)
    }
    fn frame_value(sum: Option<f64>) -> FrameValue {
        FrameValue::Float(sum)
    }
}

/// `start` plus the valid values among `rows` (added in row order, as row by row would), and how
/// many were valid; `None` on overflow.
#[inline]
pub(super) fn sum_rows<N: Number>(
    start: N,
    values: &[N],
    nulls: Option<&NullBuffer>,
    rows: &[u32],
) -> Option<(N, i64)> {
    let mut sum = start;
    match nulls {
        None => {
            for &r in rows {
                sum = N::add(sum, values[r as usize])?;
            }
            Some((sum, rows.len() as i64))
        }
        Some(nulls) => {
            let mut count = 0;
            for &r in rows.iter().filter(|&&r| nulls.is_valid(r as usize)) {
                sum = N::add(sum, values[r as usize])?;
                count += 1;
            }
            Some((sum, count))
        }
    }
}

/// The rows of a scattered batch that have a group and a value: `(row, group)`.
#[inline]
pub(super) fn valid_scattered<'a>(
    group_of: &'a [u32],
    nulls: Option<&'a NullBuffer>,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    scattered(group_of).filter(move |(r, _)| nulls.is_none_or(|n| n.is_valid(*r)))
}

/// How many values a group's sum has: a count (an average divides by it), or only whether there
/// was one (a sum is null without: one byte a group, not eight).
pub(super) trait Tally: Copy + Default + Send + Sync + 'static {
    /// `n` more values.
    fn bump(&mut self, n: i64);
}

impl Tally for i64 {
    #[inline]
    fn bump(&mut self, n: i64) {
        *self += n;
    }
}

impl Tally for bool {
    #[inline]
    fn bump(&mut self, n: i64) {
        *self |= n > 0;
    }
}

/// A sum and its tally, per group.
#[derive(Default)]
pub(super) struct Sums<N, T> {
    pub(super) sum: Vec<N>,
    pub(super) tally: Vec<T>,
}

impl<N: Number, T: Tally> Sums<N, T> {
    /// Bytes of state per group.
    pub(super) fn slot_bytes() -> u64 {
        (std::mem::size_of::<N>() + std::mem::size_of::<T>()) as u64
    }
    pub(super) fn reserve(&mut self, additional: usize) {
        self.sum.reserve_exact(additional);
        self.tally.reserve_exact(additional);
    }
    pub(super) fn push_group(&mut self) {
        self.sum.push(N::default());
        self.tally.push(T::default());
    }
    pub(super) fn clear(&mut self) {
        self.sum.clear();
        self.tally.clear();
    }
    #[inline]
    pub(super) fn update(&mut self, g: usize, arg: Option<&ArgValues>, row: usize, name: &str) -> Result<()> {
        let (values, nulls) = N::values(arg)?;
        if nulls.is_none_or(|n| n.is_valid(row)) {
            self.sum[g] = N::add(self.sum[g], values[row]).ok_or_else(|| overflow(name))?;
            self.tally[g].bump(1);
        }
        Ok(())
    }
    pub(super) fn update_scattered(&mut self, arg: Option<&ArgValues>, group_of: &[u32], name: &str) -> Result<()> {
        let (values, nulls) = N::values(arg)?;
        for (r, g) in valid_scattered(group_of, nulls) {
            self.sum[g] = N::add(self.sum[g], values[r]).ok_or_else(|| overflow(name))?;
            self.tally[g].bump(1);
        }
        Ok(())
    }
    pub(super) fn update_gathered(&mut self, arg: Option<&ArgValues>, gathered: &Gathered, name: &str) -> Result<()> {
        let (values, nulls) = N::values(arg)?;
        for (g, rows) in gathered.groups() {
            let (s, n) = sum_rows(self.sum[g], values, nulls, rows).ok_or_else(|| overflow(name))?;
            self.sum[g] = s;
            self.tally[g].bump(n);
        }
        Ok(())
    }
}

/// A sum over a sliding frame and how many values it has.
pub(super) struct SlidingSums<N> {
    pub(super) sum: N,
    pub(super) count: i64,
    /// The function whose overflow is reported.
    name: &'static str,
}

impl<N: Number> SlidingSums<N> {
    pub(super) fn new(name: &'static str) -> SlidingSums<N> {
        SlidingSums { sum: N::default(), count: 0, name }
    }
    pub(super) fn add(&mut self, arg: Option<&ArgValues>, row: usize) -> Result<()> {
        let (values, nulls) = N::values(arg)?;
        if nulls.is_none_or(|n| n.is_valid(row)) {
            self.sum = N::add(self.sum, values[row]).ok_or_else(|| overflow(self.name))?;
            self.count += 1;
        }
        Ok(())
    }
    pub(super) fn retract(&mut self, arg: Option<&ArgValues>, row: usize) -> Result<()> {
        let (values, nulls) = N::values(arg)?;
        if nulls.is_none_or(|n| n.is_valid(row)) {
            self.sum = N::sub(self.sum, values[row]).ok_or_else(|| overflow(self.name))?;
            self.count -= 1;
        }
        Ok(())
    }
    pub(super) fn reset(&mut self) {
        self.sum = N::default();
        self.count = 0;
    }
}
