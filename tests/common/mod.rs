//! Helpers shared by the integration tests: run the real `flow` binary, measure its peak RSS, write
//! and read Parquet files.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// The `flow` binary built for these tests.
pub fn flow_bin() -> PathBuf {
    PathBuf::from(option_env!("CARGO_BIN_EXE_flow").expect("only the flow-cli tests run the binary"))
}

/// What a finished `flow` process did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set size in bytes, as the kernel reports it for the child (`ru_maxrss`).
    pub max_rss: u64,
}

/// Runs `flow` with `args` in `dir`, without inheriting FLOW_* settings from the environment.
pub fn flow(dir: &Path, args: &[&str]) -> Run {
    flow_env(dir, args, &[])
}

/// Runs `flow` with extra environment variables.
pub fn flow_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out_path = dir.join(".stdout");
    let err_path = dir.join(".stderr");
    let mut cmd = Command::new(flow_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("FLOW_MEM_BUDGET")
        .env_remove("FLOW_THREADS")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start flow");
    let (code, max_rss) = wait_with_rusage(child.id() as i32);
    Run {
        code,
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        max_rss,
    }
}

/// Waits for one child and returns its exit code (128 + signal when killed) and peak RSS in bytes.
fn wait_with_rusage(pid: i32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: plain syscalls on a child of this process, with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    (code, usage.ru_maxrss as u64 * 1024)
}

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
