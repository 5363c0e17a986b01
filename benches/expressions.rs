//! Expression evaluation over batches: arithmetic on decimals and floats, string functions and
//! `LIKE`, `CASE`, date parts and a filter, on 1M rows of `flow_engine::generate`'s synthetic
//! table (seeded), with a roomy budget and a tight one (16 MiB: small batches, and the aggregate
//! that consumes the values spills its partial states).

use criterion::{criterion_group, criterion_main, Criterion};
use flow_engine::generate::TableSpec;
use flow_engine::{Config, Engine, MemoryPool};

const QUERIES: [(&str, &str); 3] = [
    (
        "arithmetic",
        "SELECT sum(amount * (1 - value / 1000) + 2) AS a, sum(value * value - key) AS b, \
         sum(CAST(amount AS DOUBLE) / (key + 1)) AS c FROM t",
    ),
    (
        "strings",
        "SELECT count(*) AS n, sum(length(upper(payload) || key_str)) AS l, \
         count(CASE WHEN payload LIKE '%ab%' THEN 1 END) AS likes, max(substr(payload, 2, 5)) AS s FROM t",
    ),
    (
        "case_dates_filter",
        "SELECT EXTRACT(year FROM day) AS y, sum(CASE WHEN value < 250 THEN amount WHEN value < 750 THEN 2 * amount \
         ELSE 0 END) AS v, count(*) AS n FROM t WHERE category IN ('cat-1', 'cat-3', 'cat-5') OR key < 100 GROUP BY 1",
    ),
];

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let spec = TableSpec { rows: 1_000_000, keys: 50_000, skew: 0.8, nulls: 0.05, ..TableSpec::default() };
    spec.write(&path, &MemoryPool::new(1 << 30), &Default::default()).unwrap();
    for (name, sql) in QUERIES {
        let mut group = c.benchmark_group(format!("expressions_{name}"));
        group.sample_size(10);
        for (label, budget) in [("roomy_1GiB", 1u64 << 30), ("tight_16MiB", 16 << 20)] {
            let config = Config::default().with_mem_budget(budget).with_threads(2).with_spill_dir(dir.path());
            let mut engine = Engine::new(config).unwrap();
            engine.register("t", path.to_str().unwrap()).unwrap();
            group.bench_function(label, |b| b.iter(|| engine.sql(sql).unwrap().collect().unwrap().len()));
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
