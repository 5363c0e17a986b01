//! Synthetic tables of any size for benchmarks and tests, deterministic from a seed: a key of
//! chosen cardinality and skew (Zipf), a low-cardinality category, numbers, a decimal, a date and a
//! string of chosen length, with a chosen share of nulls.
//!
//! | column     | type          | values                                                           |
//! | ---------- | ------------- | ---------------------------------------------------------------- |
//! | `id`       | BIGINT        | 0, 1, 2, ... (never null)                                        |
//! | `key`      | BIGINT        | 1 ..= `keys`, Zipf-distributed with exponent `skew` (0: uniform)   |
//! | `key_str`  | VARCHAR       | `key` as text, `k000000001234`                                   |
//! | `category` | VARCHAR       | `cat-0` .. `cat-{categories - 1}`, uniform                         |
//! | `value`    | DOUBLE        | uniform in [0, 1000)                                             |
//! | `amount`   | DECIMAL(12,2) | uniform in [0, 10000.00)                                         |
//! | `day`      | DATE          | uniform over 2020-01-01 .. 2024-12-31 (never null)               |
//! | `payload`  | VARCHAR       | lowercase letters, length uniform in the `string_len` range       |
//!
//! Every column but `id` and `day` is null in a `nulls` share of the rows. Rows are made in batches
//! of [`BATCH_ROWS`], each from its own seed (the table's seed and the batch number), so batches
//! are made in parallel and the same spec always gives the same table, whatever the thread count.
//!
//! ```no_run
//! # fn main() -> flow_engine::Result<()> {
//! use flow_engine::generate::TableSpec;
//! let spec = TableSpec { rows: 10_000_000, keys: 1_000_000, skew: 1.1, ..TableSpec::default() };
//! let pool = flow_engine::MemoryPool::new(512 << 20);
//! spec.write(std::path::Path::new("big.parquet"), &pool, &Default::default())?;
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::exec::sink::{ParquetSink, Sink, WriteOptions, WriteSummary};
use crate::memory::MemoryPool;

/// Rows per generated batch.
pub const BATCH_ROWS: usize = 65_536;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// Rows in the table.
    pub rows: u64,
    /// Distinct values of `key`.
    pub keys: u64,
    /// Zipf exponent of `key`: 0 is uniform, 1 and more make a few keys hold most rows.
    pub skew: f64,
    /// Distinct values of `category`.
    pub categories: u64,
    /// Share of nulls (0 to 1) in the nullable columns.
    pub nulls: f64,
    /// Shortest and longest `payload` (bytes).
    pub string_len: (usize, usize),
    /// The seed.
    pub seed: u64,
}

impl Default for TableSpec {
    fn default() -> TableSpec {
        TableSpec {
            rows: 1_000_000,
            keys: 100_000,
            skew: 0.0,
            categories: 16,
            nulls: 0.0,
            string_len: (8, 32),
            seed: 42,
        }
    }
}

impl TableSpec {
    /// Checks the numbers.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(format!("generator: {what}")));
        if self.keys == 0 || self.categories == 0 {
            return bad("keys and categories must be at least 1");
        }
        if !(self.skew >= 0.0 && self.skew.is_finite()) {
            return bad("skew must be 0 or more");
        }
        if !(0.0..=1.0).contains(&self.nulls) {
            return bad("nulls is a share from 0 to 1");
        }
        if self.string_len.0 > self.string_len.1 {
            return bad("the shortest string is longer than the longest");
        }
        Ok(())
    }

    /// The table's schema.
    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("key", DataType::Int64, true),
            Field::new("key_str", DataType::Utf8, true),
            Field::new("category", DataType::Utf8, true),
            Field::new("value", DataType::Float64, true),
            Field::new("amount", DataType::Decimal128(12, 2), true),
            Field::new("day", DataType::Date32, false),
            Field::new("payload", DataType::Utf8, true),
        ]))
    }

    /// How many batches the table has.
    pub fn batch_count(&self) -> u64 {
        self.rows.div_ceil(BATCH_ROWS as u64)
    }

    /// Batch `index` (0-based) of the table.
    ///
    /// # Panics
    /// When the spec fails [`TableSpec::check`] (no keys, a negative skew).
    pub fn batch(&self, index: u64) -> RecordBatch {
        let start = index * BATCH_ROWS as u64;
        let n = (self.rows.saturating_sub(start)).min(BATCH_ROWS as u64) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let zipf = Zipf::new(self.keys as f64, self.skew).expect("checked spec");
        let null = |rng: &mut ChaCha8Rng| self.nulls > 0.0 && rng.random::<f64>() < self.nulls;

        let ids = Int64Array::from_iter_values(start as i64..(start + n as u64) as i64);
        let keys: Vec<Option<i64>> = (0..n).map(|_| (!null(&mut rng)).then(|| zipf.sample(&mut rng) as i64)).collect();
        let mut key_str = StringBuilder::with_capacity(n, n * 14);
        for k in &keys {
            match k {
                Some(k) => key_str.append_value(format!("k{k:012}")),
                None => key_str.append_null(),
            }
        }
        let mut category = StringBuilder::with_capacity(n, n * 6);
        for _ in 0..n {
            if null(&mut rng) {
                category.append_null();
            } else {
                category.append_value(format!("cat-{}", rng.random_range(0..self.categories)));
            }
        }
        let value: Float64Array = (0..n).map(|_| (!null(&mut rng)).then(|| rng.random_range(0.0..1000.0))).collect();
        let amount: Decimal128Array = (0..n)
            .map(|_| (!null(&mut rng)).then(|| rng.random_range(0..1_000_000i128)))
            .collect::<Decimal128Array>()
            .with_precision_and_scale(12, 2)
            .expect("valid decimal type");
        // 2020-01-01 is day 18262 of the Unix epoch; five years of days.
        let day = Date32Array::from_iter_values((0..n).map(|_| 18_262 + rng.random_range(0..1827)));
        let (short, long) = self.string_len;
        let mut payload = StringBuilder::with_capacity(n, n * (short + long) / 2);
        let mut text = String::with_capacity(long);
        for _ in 0..n {
            if null(&mut rng) {
                payload.append_null();
                continue;
            }
            text.clear();
            let len = rng.random_range(short..=long);
            text.extend((0..len).map(|_| (b'a' + rng.random_range(0..26u8)) as char));
            payload.append_value(&text);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(Int64Array::from(keys)),
            Arc::new(key_str.finish()),
            Arc::new(category.finish()),
            Arc::new(value),
            Arc::new(amount),
            Arc::new(day),
            Arc::new(payload.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns).expect("columns match the schema")
    }

    /// About how many bytes a batch takes in memory.
    fn batch_bytes(&self) -> u64 {
        let row = 8 + 9 + 15 + 8 + 9 + 17 + 4 + 5 + (self.string_len.0 + self.string_len.1) as u64 / 2;
        row * BATCH_ROWS as u64
    }

    /// Writes the table to a Parquet file. Batches are made on the rayon pool a few at a time
    /// (as many as there are threads, their memory reserved from `pool` first) and written in
    /// order.
    pub fn write(&self, path: &Path, pool: &MemoryPool, options: &WriteOptions) -> Result<WriteSummary> {
        self.check()?;
        let mut sink = Box::new(ParquetSink::with_options(path, &Self::schema(), pool, options)?);
        let mut reservation = pool.register(format!("Generator[{}]", path.display()), false);
        let wave = rayon::current_num_threads().max(1) as u64;
        // As many batches at once as the pool gives room for (at least one).
        let mut at_once = wave;
        while at_once > 1 && reservation.try_grow(at_once * self.batch_bytes()).is_err() {
            at_once /= 2;
        }
        if reservation.size() == 0 {
            reservation.try_grow(self.batch_bytes())?;
        }
        let mut next = 0;
        while next < self.batch_count() {
            let end = (next + at_once).min(self.batch_count());
            let batches: Vec<RecordBatch> = (next..end).into_par_iter().map(|i| self.batch(i)).collect();
            for b in &batches {
                sink.write(b)?;
            }
            next = end;
        }
        drop(reservation);
        sink.finish()
    }
}
