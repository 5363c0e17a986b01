//! `flow gen`: TPC-H tables (through the `tpchgen` crates, the same data as `tpchgen-cli`) and
//! synthetic tables (see `flow_engine::generate`), written as Parquet inside the memory budget.

use std::path::Path;
use std::time::Instant;

use arrow::array::RecordBatch;
use flow_engine::exec::sink::{ParquetSink, Sink};
use flow_engine::{human, Engine, Error, WriteOptions};
use rayon::prelude::*;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow, SupplierArrow,
};

/// The eight TPC-H tables.
pub const TPCH_TABLES: [&str; 8] =
    ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"];

/// Rows of a table at scale factor 1 (nation and region do not scale).
fn rows_at_sf1(table: &str) -> f64 {
    match table {
        "lineitem" => 6_001_215.0,
        "orders" => 1_500_000.0,
        "partsupp" => 800_000.0,
        "part" => 200_000.0,
        "customer" => 150_000.0,
        "supplier" => 10_000.0,
        _ => 25.0,
    }
}

/// Part `part` (1-based) of `parts` of a TPC-H table, as Arrow batches.
fn tpch_part(table: &str, scale: f64, part: i32, parts: i32) -> Result<Vec<RecordBatch>, Error> {
    type Batches = Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>>;
    let batches: Batches = match table {
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(scale, part, parts))),
        "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(scale, part, parts))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(scale, part, parts))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(scale, part, parts))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(scale, part, parts))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(scale, part, parts))),
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(scale, part, parts))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(scale, part, parts))),
        other => {
            return Err(Error::Config(format!(
                "unknown TPC-H table '{other}' (hint: one of {})",
                TPCH_TABLES.join(", ")
            )))
        }
    };
    batches.map(|b| b.map_err(|e| Error::Execution(format!("generating {table}: {e}")))).collect()
}

/// Writes TPC-H `tables` at `scale` as `dir/<table>.parquet`. A table is made in parts of about
/// 400K rows, as many at once as there are threads (their memory reserved first), written in
/// order: the file is the same whatever the thread count.
pub fn tpch(engine: &Engine, scale: f64, dir: &Path, tables: &[String], options: &WriteOptions) -> Result<(), Error> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(Error::Config(format!("--scale {scale}: must be above 0")));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.into(), source: e })?;
    for table in tables {
        let started = Instant::now();
        let rows = if matches!(table.as_str(), "nation" | "region") { 25.0 } else { rows_at_sf1(table) * scale };
        let parts = ((rows / 400_000.0).ceil() as i32).max(1);
        // A part's batches in memory: about 160 bytes a row (lineitem's widest rows).
        let part_bytes = (rows / parts as f64 * 160.0) as u64;
        let path = dir.join(format!("{table}.parquet"));
        // Opened at the first batch, which brings the table's schema.
        let mut sink: Option<ParquetSink> = None;
        let mut reservation = engine.pool().register(format!("TpchGenerator[{table}]"), false);
        let mut at_once = engine.config().threads.max(1) as u64;
        while at_once > 1 && reservation.try_grow(at_once * part_bytes).is_err() {
            at_once /= 2;
        }
        if reservation.size() == 0 {
            reservation.try_grow(part_bytes)?;
        }
        let mut written = 0;
        let mut next = 1;
        while next <= parts {
            let end = (next + at_once as i32 - 1).min(parts);
            let made: Vec<Result<Vec<RecordBatch>, Error>> =
                engine.install(|| (next..=end).into_par_iter().map(|p| tpch_part(table, scale, p, parts)).collect());
            for part in made {
                for batch in part? {
                    written += batch.num_rows();
                    let sink = match &mut sink {
                        Some(s) => s,
                        None => sink.insert(ParquetSink::with_options(&path, &batch.schema(), engine.pool(), options)?),
                    };
                    sink.write(&batch)?;
                }
            }
            next = end + 1;
        }
        drop(reservation);
        let Some(sink) = sink else {
            return Err(Error::Execution(format!("generating {table}: no rows at scale factor {scale}")));
        };
        let summary = Box::new(sink).finish()?;
        eprintln!(
            "flow: {} {written} rows, {} in {:.1}s",
            path.display(),
            human(summary.bytes),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Parses a row count: `10000`, `10K`, `2.5M`, `1G` (powers of ten; `_` allowed).
pub fn parse_count(text: &str) -> Result<u64, Error> {
    let t = text.trim().replace('_', "");
    let (number, factor) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('G') | Some('B') => (&t[..t.len() - 1], 1e9),
        _ => (t.as_str(), 1.0),
    };
    match number.parse::<f64>() {
        Ok(n) if n >= 0.0 && n.is_finite() => Ok((n * factor).round() as u64),
        _ => Err(Error::Config(format!("invalid count '{text}' (hint: e.g. 1000000, 10M or 2.5K)"))),
    }
}

/// Parses a length range `8..64` (or one length `16`).
pub fn parse_range(text: &str) -> Result<(usize, usize), Error> {
    let bad = || Error::Config(format!("invalid length range '{text}' (hint: e.g. 8..64 or 16)"));
    let (a, b) = match text.split_once("..") {
        Some((a, b)) => (a.trim(), b.trim().trim_start_matches('=')),
        None => (text.trim(), text.trim()),
    };
    let (a, b) = (a.parse::<usize>().map_err(|_| bad())?, b.parse::<usize>().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}
