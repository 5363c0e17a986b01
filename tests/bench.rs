//! The macro benchmark suite end to end, as a smoke run without peers: `flow bench` makes TPC-H
//! scale factor 1 and its synthetic table, runs the 22 TPC-H queries and the out-of-core shapes
//! under a budget that makes several of them spill, and every query finishes with its peak RSS
//! inside the budget. Also `flow gen table`'s knobs.

mod common;
#[path = "common/process.rs"]
mod process;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use common::*;
use process::*;

const BUDGET: u64 = 256 << 20;

#[test]
fn bench_suite_smoke_run_at_scale_factor_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = flow(
        d,
        &[
            "bench",
            "--scale",
            "1",
            "--data",
            "data",
            "--peers",
            "none",
            "--mem-budget",
            "256MiB",
            "--threads",
            "2",
            "--queries",
            "all",
            "--json",
            "bench.json",
            "--markdown",
            "bench.md",
        ],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("bench.json")).unwrap()).unwrap();
    let queries = json["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 28, "22 TPC-H queries and 6 out-of-core shapes");
    let mut spilled = 0;
    for q in queries {
        let flow = &q["engines"]["flow"];
        let name = q["name"].as_str().unwrap();
        assert!(flow["seconds"].as_f64().is_some(), "{name}: {flow}");
        assert!(flow["rows"].as_u64().is_some(), "{name}: {flow}");
        let rss = flow["peak_rss"].as_u64().unwrap();
        assert!(rss <= BUDGET + BUDGET / 10 + (24 << 20), "{name}: peak RSS {rss} over the budget");
        if flow["spilled_bytes"].as_u64().unwrap() > 0 {
            spilled += 1;
        }
    }
    assert!(spilled >= 2, "the out-of-core shapes spill at this budget: {json}");
    // The rows are what the queries give: TPC-H Q1 has four groups, the aggregate by order key
    // one row per order.
    let rows = |name: &str| queries.iter().find(|q| q["name"] == name).unwrap()["engines"]["flow"]["rows"].as_u64();
    assert_eq!(rows("q01"), Some(4));
    assert_eq!(rows("group_orderkey"), Some(1_500_000));
    assert_eq!(rows("window_running"), Some(6_000_000));
    let table = std::fs::read_to_string(d.join("bench.md")).unwrap();
    assert!(
        table.contains("| q22 |") && table.contains("| window_running |") && table.contains("TPC-H total"),
        "{table}"
    );
    // The data stays for the next run; a second run over it makes nothing new.
    let run = flow(d, &["bench", "--scale", "1", "--data", "data", "--peers", "none", "--queries", "q6"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(!run.stderr.contains("making"), "{}", run.stderr);
    let run = flow(d, &["bench", "--data", "data", "--queries", "q23"]);
    assert_eq!(run.code, 2, "stderr: {}", run.stderr);
    assert!(run.stderr.contains("unknown query 'q23'"), "{}", run.stderr);
}

#[test]
fn gen_table_has_the_asked_shape() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = [
        "gen",
        "table",
        "--rows",
        "200K",
        "--keys",
        "1000",
        "--skew",
        "1.2",
        "--nulls",
        "0.1",
        "--string-len",
        "5..9",
        "--seed",
        "7",
        "--threads",
    ];
    let mut a = args.to_vec();
    a.extend(["1", "-o", "a.parquet"]);
    assert_eq!(flow(d, &a).code, 0);
    let mut b = args.to_vec();
    b.extend(["2", "-o", "b.parquet"]);
    assert_eq!(flow(d, &b).code, 0);
    let (a, b) = (concat(&read_parquet(&d.join("a.parquet"))), concat(&read_parquet(&d.join("b.parquet"))));
    assert_eq!(a, b, "the same seed makes the same table on any number of threads");
    assert_eq!(a.num_rows(), 200_000);
    let key = a.column_by_name("key").unwrap().as_primitive::<Int64Type>();
    let nulls = key.null_count() as f64 / 200_000.0;
    assert!((0.09..0.11).contains(&nulls), "null share {nulls}");
    let mut counts = std::collections::HashMap::new();
    for k in key.iter().flatten() {
        assert!((1..=1000).contains(&k));
        *counts.entry(k).or_insert(0u64) += 1;
    }
    // Zipf 1.2 over 1000 keys: key 1 holds about a fifth of the rows, far above the 1/1000 of a
    // uniform key.
    let top = counts[&1] as f64 / key.len() as f64;
    assert!(top > 0.15 && top < 0.3, "share of key 1: {top}");
    let payload = a.column_by_name("payload").unwrap().as_string::<i32>();
    assert!(payload.iter().flatten().all(|s| (5..=9).contains(&s.len())));
    let run = flow(d, &["gen", "table", "--rows", "10", "--nulls", "1.5", "-o", "c.parquet"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("nulls"), "{}", run.stderr);
    assert!(!d.join("c.parquet").exists());
}
