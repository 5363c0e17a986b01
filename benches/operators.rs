//! The blocking operators: hash join, hash aggregation and external sort, each with a roomy budget
//! (in memory) and a forced-spill variant (16 MiB: partitions or runs go to disk).
//!
//! Data: a seeded generator writes a fact table (2M rows: an order key with 500K distinct values,
//! a customer key, an amount and a short comment) and a dimension table (500K orders with a
//! priority string) to a temp dir once.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{criterion_group, criterion_main, Criterion};
use flow_engine::{Config, Engine};
use rand::{Rng, SeedableRng};

const FACT_ROWS: usize = 2_000_000;
const ORDERS: usize = 500_000;

fn write(path: &std::path::Path, schema: Arc<Schema>, batches: impl Iterator<Item = Vec<arrow::array::ArrayRef>>) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
    for columns in batches {
        w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
    }
    w.close().unwrap();
}

fn generate(dir: &std::path::Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let words = ["quick", "brown", "fox", "jumps", "over", "lazy", "dog", "slyly", "final", "ideas"];
    let fact = Arc::new(Schema::new(vec![
        Field::new("orderkey", DataType::Int64, false),
        Field::new("custkey", DataType::Int64, false),
        Field::new("amount", DataType::Int64, false),
        Field::new("comment", DataType::Utf8, false),
    ]));
    let chunks: Vec<Vec<arrow::array::ArrayRef>> = (0..FACT_ROWS / 100_000)
        .map(|_| {
            let n = 100_000;
            vec![
                Arc::new(Int64Array::from_iter_values((0..n).map(|_| rng.random_range(0..ORDERS as i64)))) as _,
                Arc::new(Int64Array::from_iter_values((0..n).map(|_| rng.random_range(0..100_000)))) as _,
                Arc::new(Int64Array::from_iter_values((0..n).map(|_| rng.random_range(1..100_000)))) as _,
                Arc::new(StringArray::from_iter_values((0..n).map(|_| {
                    let k = rng.random_range(2..6);
                    (0..k).map(|_| words[rng.random_range(0..words.len())]).collect::<Vec<_>>().join(" ")
                }))) as _,
            ]
        })
        .collect();
    write(&dir.join("fact.parquet"), fact, chunks.into_iter());
    let orders = Arc::new(Schema::new(vec![
        Field::new("o_orderkey", DataType::Int64, false),
        Field::new("o_priority", DataType::Utf8, false),
    ]));
    let priorities = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"];
    let chunk = vec![
        Arc::new(Int64Array::from_iter_values(0..ORDERS as i64)) as _,
        Arc::new(StringArray::from_iter_values((0..ORDERS).map(|i| priorities[i % 5]))) as _,
    ];
    write(&dir.join("orders.parquet"), orders, std::iter::once(chunk));
}

const QUERIES: [(&str, &str); 3] = [
    (
        "join_grouped_count",
        "SELECT o_priority, count(*) FROM fact JOIN orders ON orderkey = o_orderkey GROUP BY o_priority",
    ),
    ("aggregate_500k_groups", "SELECT orderkey, count(*), sum(amount), max(comment) FROM fact GROUP BY orderkey"),
    ("sort_by_string", "SELECT comment, orderkey, amount FROM fact ORDER BY comment, orderkey"),
];

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    for (name, sql) in QUERIES {
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        for (label, budget) in [("in_memory_1GiB", 1u64 << 30), ("spilled_16MiB", 16 << 20)] {
            let config = Config::default().with_mem_budget(budget).with_threads(2).with_spill_dir(dir.path());
            let mut engine = Engine::new(config).unwrap();
            engine.register("fact", dir.path().join("fact.parquet").to_str().unwrap()).unwrap();
            engine.register("orders", dir.path().join("orders.parquet").to_str().unwrap()).unwrap();
            group.bench_function(label, |b| {
                b.iter(|| {
                    let mut rows = 0;
                    engine
                        .sql(sql)
                        .unwrap()
                        .for_each(|batch| {
                            rows += batch.num_rows();
                            Ok(())
                        })
                        .unwrap();
                    rows
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
