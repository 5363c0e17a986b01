//! Scan + filter + project over Parquet, written back to Parquet: the streaming path end to end.
//!
//! Data: a seeded generator writes 2M rows shaped like TPC-H lineitem's hot columns (integers,
//! decimals, dates, short strings) to a temp dir once. Variants: a roomy budget, and a tight one
//! (16 MiB) where the scan runs with fewer workers and smaller row groups.

use std::sync::Arc;

use arrow::array::{Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{criterion_group, criterion_main, Criterion};
use flow_engine::{Config, Engine};
use rand::{Rng, SeedableRng};

const ROWS: usize = 2_000_000;

fn generate(path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("l_orderkey", DataType::Int64, false),
        Field::new("l_quantity", DataType::Decimal128(15, 2), false),
        Field::new("l_extendedprice", DataType::Decimal128(15, 2), false),
        Field::new("l_discount", DataType::Decimal128(15, 2), false),
        Field::new("l_shipdate", DataType::Date32, false),
        Field::new("l_shipmode", DataType::Utf8, false),
    ]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let file = std::fs::File::create(path).unwrap();
    // Row groups of 100K rows, as TPC-H's generator and DuckDB write them (about 120K): a row group
    // of parquet-rs's default 1M rows needs a 30 MiB budget to be decoded at all, more than the
    // tight variant's 16 MiB.
    let props =
        parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(100_000)).build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let modes = ["AIR", "FOB", "MAIL", "RAIL", "REG AIR", "SHIP", "TRUCK"];
    for start in (0..ROWS).step_by(100_000) {
        let n = 100_000;
        let dec = |v: Vec<i128>| Decimal128Array::from(v).with_precision_and_scale(15, 2).unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values((start as i64..).take(n))),
                Arc::new(dec((0..n).map(|_| rng.random_range(1..=50) * 100).collect())),
                Arc::new(dec((0..n).map(|_| rng.random_range(90_000..10_000_000)).collect())),
                Arc::new(dec((0..n).map(|_| rng.random_range(0..=10)).collect())),
                Arc::new(Date32Array::from_iter_values((0..n).map(|_| rng.random_range(8035..10591)))),
                Arc::new(StringArray::from_iter_values((0..n).map(|_| modes[rng.random_range(0..modes.len())]))),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
    }
    w.close().unwrap();
}

const QUERY: &str = "SELECT l_orderkey, l_extendedprice * (1 - l_discount) AS net, l_shipmode \
                     FROM lineitem WHERE l_shipdate >= DATE '1995-01-01' AND l_quantity < 24";

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("lineitem.parquet");
    generate(&input);
    let mut group = c.benchmark_group("scan_filter_project");
    group.sample_size(10);
    for (label, budget) in [("budget_1GiB", 1u64 << 30), ("budget_16MiB", 16 << 20)] {
        let config = Config::default().with_mem_budget(budget).with_threads(2).with_spill_dir(dir.path());
        let mut engine = Engine::new(config).unwrap();
        engine.register("lineitem", input.to_str().unwrap()).unwrap();
        let out = dir.path().join(format!("out-{label}.parquet"));
        group.bench_function(label, |b| {
            b.iter(|| engine.sql(QUERY).unwrap().write(&out).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
