//! Helpers of the library tests: a query's rows as text (and the pool back at zero after it), and
//! a Parquet file of named columns.
#![allow(dead_code)]

use std::path::Path;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use flow_engine::{Config, Engine};

use super::common::write_parquet;

/// Runs a query and renders every value as text (NULL for nulls), with the column types.
pub fn rows(engine: &Engine, sql: &str) -> (Vec<DataType>, Vec<Vec<String>>) {
    let query = engine.sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let types: Vec<DataType> = query.schema().fields().iter().map(|f| f.data_type().clone()).collect();
    // Formatted as the batches stream by: a result larger than a tiny budget is fine here.
    let mut out = Vec::new();
    let opts = FormatOptions::default().with_null("NULL");
    query
        .for_each(|b| {
            let fmts: Vec<ArrayFormatter> =
                b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap()).collect();
            for r in 0..b.num_rows() {
                out.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(engine.pool().reserved(), engine.catalog_memory(), "pool back to zero after {sql}");
    (types, out)
}

pub fn column(engine: &Engine, sql: &str) -> (DataType, Vec<String>) {
    let (types, rows) = rows(engine, sql);
    (types[0].clone(), rows.into_iter().map(|r| r[0].clone()).collect())
}

pub fn check(engine: &Engine, sql: &str, want_type: DataType, want: &[&str]) {
    let (t, got) = column(engine, sql);
    assert_eq!(t, want_type, "type of {sql}");
    assert_eq!(got, want, "values of {sql}");
}

pub fn write(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    write_parquet(path, &[batch], None);
}

/// An engine (2 threads, spilling into `dir`) with `dir/<table>.parquet` registered as `table`.
pub fn engine_on(dir: &Path, budget: u64, table: &str) -> Engine {
    let config = Config::default().with_mem_budget(budget).with_threads(2).with_spill_dir(dir);
    let mut e = Engine::new(config).unwrap();
    e.register(table, dir.join(format!("{table}.parquet")).to_str().unwrap()).unwrap();
    e
}
