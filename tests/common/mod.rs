//! Helpers shared by the integration tests: run the real `flow` binary, measure its peak RSS, write
//! and read Parquet files.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// Writes batches to a Parquet file.
pub fn write_parquet(path: &Path, batches: &[RecordBatch], props: Option<WriterProperties>) {
    let file = File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batches[0].schema(), props).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// Reads a whole Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().map(|b| b.unwrap()).collect()
}

/// Concatenates batches into one.
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    let schema = batches[0].schema();
    arrow::compute::concat_batches(&schema, batches).unwrap()
}

/// Files in `dir` (recursively), as relative paths, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// A row of the test tables: key (nullable), string (nullable), id.
pub type KeyRow = (Option<i64>, Option<String>, i64);

/// Writes `rows` as columns `k BIGINT, s VARCHAR, id BIGINT` to a Parquet file, in batches and
/// row groups of `chunk` rows.
pub fn write_key_rows(path: &Path, rows: &[KeyRow], chunk: usize) {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("id", DataType::Int64, false),
    ]));
    let batches: Vec<RecordBatch> = rows
        .chunks(chunk.max(1))
        .map(|c| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(c.iter().map(|r| r.0).collect::<Vec<_>>())),
                    Arc::new(StringArray::from(c.iter().map(|r| r.1.clone()).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(c.iter().map(|r| r.2).collect::<Vec<_>>())),
                ],
            )
            .unwrap()
        })
        .collect();
    let batches = if batches.is_empty() { vec![RecordBatch::new_empty(schema)] } else { batches };
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(chunk.max(1))).build();
    write_parquet(path, &batches, Some(props));
}

/// A Python with pyarrow, DuckDB and Polars: `FLOW_INTEROP_PYTHON` if set, else a venv under
/// `target/` made (once) from PyPI.
///
/// Tests of one binary run on several threads and several binaries may run at once, so the venv
/// is made once per process (the other threads wait for it) in a folder of its own, and renamed
/// into place only when complete: a reader never sees a half-made venv, and two makers never
/// write into the same folder.
pub fn interop_python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(make_interop_python).clone()
}

fn make_interop_python() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOW_INTEROP_PYTHON") {
        return p.into();
    }
    let venv = repo_root().join("target/interop-venv");
    let python = venv.join("bin/python");
    if venv.join(".ready").exists() {
        return python;
    }
    let fresh = repo_root().join(format!("target/interop-venv.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    let status = std::process::Command::new("python3").args(["-m", "venv"]).arg(&fresh).status();
    assert!(status.is_ok_and(|s| s.success()), "python3 -m venv failed: the interop tests need Python 3");
    let status = std::process::Command::new(fresh.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(["pyarrow==26.0.1", "duckdb==2.0.1", "polars==2.1.0"])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "pip install pyarrow duckdb polars failed (PyPI reachable?)");
    std::fs::write(fresh.join(".ready"), b"").unwrap();
    // A venv's interpreter finds its packages from its own path, so the renamed one works as is.
    // Another process may have put its venv in place first: then ours is not needed.
    if !venv.join(".ready").exists() {
        let _ = std::fs::remove_dir_all(&venv);
        if std::fs::rename(&fresh, &venv).is_ok() {
            return python;
        }
    }
    let _ = std::fs::remove_dir_all(&fresh);
    assert!(venv.join(".ready").exists(), "the interop venv at {} is not complete", venv.display());
    python
}
