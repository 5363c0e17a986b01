//! `var_samp`, `var_pop`, `stddev_samp` and `stddev_pop`: Welford's count, mean and sum of
//! squared deviations, in floating point.

use super::*;

pub(super) struct Variance {
    n: Vec<f64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
    /// The standard deviation (else the variance).
    sqrt: bool,
    /// Of a sample (divided by n - 1, else by n).
    sample: bool,
}

impl Variance {
    pub(super) fn new(func: AggregateFunction) -> Variance {
        use AggregateFunction as F;
        Variance {
            n: Vec::new(),
            mean: Vec::new(),
            m2: Vec::new(),
            sqrt: matches!(func, F::StddevSamp | F::StddevPop),
            sample: matches!(func, F::StddevSamp | F::VarSamp),
        }
    }
}

impl GroupsAccumulator for Variance {
    fn slot_bytes(&self) -> u64 {
        24
    }
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues> {
        ArgValues::floats(column)
    }
    fn reserve(&mut self, additional: usize) {
        self.n.reserve_exact(additional);
        self.mean.reserve_exact(additional);
        self.m2.reserve_exact(additional);
    }
    fn push_group(&mut self) {
        self.n.push(0.0);
        self.mean.push(0.0);
        self.m2.push(0.0);
    }
    fn clear(&mut self) {
        self.n.clear();
        self.mean.clear();
        self.m2.clear();
    }
    #[inline]
    fn update(&mut self, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64> {
        let Some(ArgValues::Float(a)) = arg else { return Err(wrong_arg()) };
        if a.is_valid(row) {
            let x = a.value(row);
            self.n[g] += 1.0;
            let delta = x - self.mean[g];
            self.mean[g] += delta / self.n[g];
            self.m2[g] += delta * (x - self.mean[g]);
        }
        Ok(0)
    }
    fn finish(&self, start: usize, end: usize, _out: &DataType) -> Result<ArrayRef> {
        let r = start..end;
        let values = self.n[r.clone()].iter().zip(&self.m2[r]).map(|(n, m2)| {
            let d = if self.sample { n - 1.0 } else { *n };
            (d > 0.0).then(|| if self.sqrt { (m2 / d).sqrt() } else { m2 / d })
        });
        Ok(Arc::new(values.collect::<Float64Array>()))
    }
}
