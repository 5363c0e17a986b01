//! Outputs: writer options (compression, row groups, file size, overwrite policy), `flow inspect`,
//! and files every tool reads: what flow writes is read back by pyarrow, DuckDB and Polars (in a
//! Python venv this test makes under `target/`), values and logical types compared.

mod common;
#[path = "common/process.rs"]
mod process;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use common::*;
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use process::*;

/// `t.parquet`: 20,000 rows of `k` (0..20000), `g` (a group of ten, null every 11th row) and `s`
/// (40 hex digits).
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("g", DataType::Utf8, true),
        Field::new("s", DataType::Utf8, false),
    ]));
    let k: Vec<i64> = (0..20_000).collect();
    let g: StringArray = k.iter().map(|v| (v % 11 != 0).then(|| format!("g{}", v % 10))).collect();
    // Hex of a hash: barely compressible, so sizes on disk are predictable.
    let hash = |v: i64, m: u64| (v as u64).wrapping_add(1).wrapping_mul(m);
    let s: StringArray = k
        .iter()
        .map(|&v| {
            Some(format!("{:016x}{:016x}{:08x}", hash(v, 0x9E37_79B9_7F4A_7C15), hash(v, 0xC2B2_AE3D_27D4_EB4F), v))
        })
        .collect();
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(k)), Arc::new(g), Arc::new(s)]).unwrap();
    write_parquet(&dir.path().join("t.parquet"), &[batch], None);
    dir
}

fn ok(run: &Run) {
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
}

fn failed(run: &Run, needle: &str) {
    assert_eq!(run.code, 2, "stderr: {}", run.stderr);
    assert!(run.stderr.starts_with("error: ") && run.stderr.contains(needle), "stderr: {}", run.stderr);
}

fn metadata(path: &Path) -> parquet::file::metadata::ParquetMetaData {
    SerializedFileReader::new(File::open(path).unwrap()).unwrap().metadata().clone()
}

/// The sum of `k` and the row count over Parquet files.
fn sum_and_count(files: &[PathBuf]) -> (i64, usize) {
    let mut sum = 0;
    let mut rows = 0;
    for f in files {
        for b in read_parquet(f) {
            let k = b.column_by_name("k").unwrap().as_primitive::<Int64Type>();
            sum += k.values().iter().sum::<i64>();
            rows += b.num_rows();
        }
    }
    (sum, rows)
}

/// Names in `dir` that are temporary (start with a dot), other than the test's own output captures.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in walkdir(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') && name != ".stdout" && name != ".stderr" {
            out.push(entry.display().to_string());
        }
    }
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn compression_and_row_groups_are_as_asked() {
    let dir = fixture();
    for (codec, want) in [
        ("zstd", Compression::ZSTD(Default::default())),
        ("zstd(9)", Compression::ZSTD(parquet::basic::ZstdLevel::try_new(9).unwrap())),
        ("snappy", Compression::SNAPPY),
        ("lz4", Compression::LZ4_RAW),
        ("none", Compression::UNCOMPRESSED),
    ] {
        let run = flow(
            dir.path(),
            &[
                "sql",
                "-o",
                "o.parquet",
                "--compression",
                codec,
                "--row-group-rows",
                "3000",
                "SELECT * FROM 't.parquet'",
            ],
        );
        ok(&run);
        let meta = metadata(&dir.path().join("o.parquet"));
        assert_eq!(meta.num_row_groups(), 7, "{codec}: 20,000 rows in groups of 3,000");
        for g in meta.row_groups() {
            assert!(g.num_rows() <= 3000);
            for c in g.columns() {
                // The level is not stored in the file: zstd(9) reads back as zstd.
                let same = std::mem::discriminant(&c.compression()) == std::mem::discriminant(&want);
                assert!(same, "{codec}: {:?}", c.compression());
                assert!(c.statistics().is_some(), "statistics on");
                assert!(c.column_index_offset().is_some(), "page index written");
            }
        }
        assert_eq!(sum_and_count(&[dir.path().join("o.parquet")]), ((0..20_000).sum(), 20_000));
    }
    // Row groups by bytes: 64 KiB of 40-byte strings makes many small row groups.
    ok(&flow(dir.path(), &["sql", "-o", "b.parquet", "--row-group-size", "64KiB", "SELECT * FROM 't.parquet'"]));
    let meta = metadata(&dir.path().join("b.parquet"));
    assert!(meta.num_row_groups() > 3, "{} row groups", meta.num_row_groups());
    for (args, needle) in [
        (vec!["--compression", "gzip"], "unknown compression 'gzip'"),
        (vec!["--compression", "zstd(30)"], "unknown compression 'zstd(30)'"),
        (vec!["--row-group-rows", "0"], "--row-group-rows must be above 0"),
        (vec!["--max-file-size", "12parsecs"], "invalid size"),
        (vec!["--overwrite", "sometimes"], "unknown overwrite policy"),
        (vec!["--overwrite", "replace-partitions"], "needs partition_by"),
    ] {
        let mut all = vec!["sql", "-o", "x.parquet"];
        all.extend(args);
        all.push("SELECT * FROM 't.parquet'");
        failed(&flow(dir.path(), &all), needle);
        assert!(!dir.path().join("x.parquet").exists());
    }
    failed(&flow(dir.path(), &["sql", "--compression", "lz4", "SELECT k FROM 't.parquet'"]), "need -o");
}

#[test]
fn max_file_size_splits_into_numbered_files() {
    let dir = fixture();
    let run = flow(dir.path(), &["sql", "-o", "out/split", "--max-file-size", "128KiB", "SELECT * FROM 't.parquet'"]);
    ok(&run);
    let files = files_in(&dir.path().join("out/split"));
    assert!(files.len() >= 3, "{files:?}");
    for (i, f) in files.iter().enumerate() {
        assert_eq!(f, &format!("data_{i}.parquet"));
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.path().join("out/split").join(f)).collect();
    for p in &paths {
        // About the size asked: a file closes at the first batch that takes it past the limit.
        let size = std::fs::metadata(p).unwrap().len();
        assert!(size <= 2 * 128 * 1024, "{}: {size} bytes", p.display());
    }
    assert_eq!(sum_and_count(&paths), ((0..20_000).sum(), 20_000));
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn overwrite_policies() {
    let dir = fixture();
    let d = dir.path();
    // error: an existing file is left as it was, and the run fails before reading anything.
    std::fs::write(d.join("o.parquet"), b"precious").unwrap();
    failed(
        &flow(d, &["sql", "-o", "o.parquet", "--overwrite", "error", "SELECT k FROM 't.parquet'"]),
        "already exists",
    );
    assert_eq!(std::fs::read(d.join("o.parquet")).unwrap(), b"precious");
    ok(&flow(d, &["sql", "-o", "new.parquet", "--overwrite", "error", "SELECT k FROM 't.parquet'"]));
    // replace (the default) for a file and for a folder.
    ok(&flow(d, &["sql", "-o", "o.parquet", "SELECT k FROM 't.parquet' WHERE k < 10"]));
    assert_eq!(sum_and_count(&[d.join("o.parquet")]), (45, 10));
    ok(&flow(d, &["sql", "-o", "p", "--partition-by", "g", "SELECT k, g FROM 't.parquet'"]));
    let all = files_in(&d.join("p"));
    assert_eq!(all.len(), 11, "ten groups and null: {all:?}");
    assert!(all.contains(&"g=__HIVE_DEFAULT_PARTITION__/data_0.parquet".to_string()), "{all:?}");
    failed(&flow(d, &["sql", "-o", "p", "--overwrite", "error", "SELECT k, g FROM 't.parquet'"]), "already exists");
    // replace_partitions: g0 and g1 are rewritten with fewer rows, the other partitions stay.
    let run = flow(
        d,
        &[
            "sql",
            "-o",
            "p",
            "--partition-by",
            "g",
            "--overwrite",
            "replace-partitions",
            "SELECT k, g FROM 't.parquet' WHERE g IN ('g0', 'g1') AND k < 100",
        ],
    );
    ok(&run);
    assert_eq!(files_in(&d.join("p")), all);
    let part = |g: &str| {
        let files: Vec<PathBuf> = files_in(&d.join("p").join(format!("g={g}")))
            .iter()
            .map(|f| d.join("p").join(format!("g={g}")).join(f))
            .collect();
        sum_and_count(&files).1
    };
    assert_eq!(part("g0"), 9, "k < 100 with k % 10 = 0 and k % 11 != 0");
    assert_eq!(part("g1"), 9);
    assert_eq!(part("g2"), 1818, "untouched");
    // replace: the folder becomes the new result alone.
    ok(&flow(d, &["sql", "-o", "p", "--partition-by", "g", "SELECT k, g FROM 't.parquet' WHERE g = 'g3'"]));
    assert_eq!(files_in(&d.join("p")), vec!["g=g3/data_0.parquet".to_string()]);
    // A failed write leaves the old folder as it was.
    let run =
        flow(d, &["sql", "-o", "p", "--partition-by", "g", "SELECT k, g, CAST(g AS INTEGER) AS boom FROM 't.parquet'"]);
    assert_ne!(run.code, 0);
    assert_eq!(files_in(&d.join("p")), vec!["g=g3/data_0.parquet".to_string()]);
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

#[test]
fn pipeline_outputs_take_writer_options() {
    let dir = fixture();
    let d = dir.path();
    let pipeline = |output: &str| {
        let text =
            format!("[sources]\nt = \"t.parquet\"\n\n[[steps]]\nsql = \"SELECT k, g, s FROM t\"\noutput = {output}\n");
        std::fs::write(d.join("p.toml"), text).unwrap();
        flow(d, &["run", "p.toml"])
    };
    ok(&pipeline(r#"{ path = "out/a.parquet", compression = "snappy", row_group_rows = 5000 }"#));
    let meta = metadata(&d.join("out/a.parquet"));
    assert_eq!(meta.num_row_groups(), 4);
    assert_eq!(meta.row_group(0).column(0).compression(), Compression::SNAPPY);

    ok(&pipeline(r#"{ path = "out/split", max_file_size = "100KiB", compression = "none" }"#));
    let files = files_in(&d.join("out/split"));
    assert!(files.len() >= 3 && files[0] == "data_0.parquet", "{files:?}");

    ok(&pipeline(r#"{ path = "out/parts", partition_by = ["g"], max_file_size = 60000, compression = "lz4" }"#));
    let files = files_in(&d.join("out/parts"));
    let data: Vec<PathBuf> =
        files.iter().filter(|f| f.ends_with(".parquet")).map(|f| d.join("out/parts").join(f)).collect();
    assert!(data.len() > 11, "some partitions take more than one file: {files:?}");
    assert_eq!(sum_and_count(&data), ((0..20_000).sum(), 20_000));

    // Checked before anything runs.
    failed(&pipeline(r#"{ path = "out/b.parquet", compression = "brotli" }"#), "unknown compression 'brotli'");
    failed(&pipeline(r#"{ path = "out/b.parquet", overwrite = "replace_partitions" }"#), "needs partition_by");
    failed(&pipeline(r#"{ path = "out/b.parquet", row_group_size = "lots" }"#), "invalid size");
    failed(&pipeline(r#"{ path = "out/b.parquet", colour = "blue" }"#), "colour");
    assert!(!d.join("out/b.parquet").exists());
    failed(&pipeline(r#"{ path = "out/a.parquet", overwrite = "error" }"#), "already exists");
    // A unit folder the step wrote before is resumed, not refused.
    ok(&pipeline(r#"{ path = "out/parts", partition_by = ["g"], max_file_size = 60000, compression = "lz4" }"#));
    ok(&pipeline(
        r#"{ path = "out/parts", partition_by = ["g"], max_file_size = 60000, compression = "lz4", overwrite = "error" }"#,
    ));
}

#[test]
fn pipeline_replace_partitions_keeps_the_partitions_not_written() {
    let dir = fixture();
    let d = dir.path();
    let run = |filter: &str, overwrite: &str| {
        let text = format!(
            "[sources]\nt = \"t.parquet\"\n\n[[steps]]\nsql = \"SELECT k, g FROM t {filter}\"\n\
             output = {{ path = \"out/p\", partition_by = [\"g\"], overwrite = \"{overwrite}\" }}\n"
        );
        std::fs::write(d.join("p.toml"), text).unwrap();
        flow(d, &["run", "p.toml"])
    };
    let rows_in = |g: &str| {
        let folder = d.join("out/p").join(format!("g={g}"));
        if !folder.exists() {
            return 0;
        }
        let files: Vec<PathBuf> = files_in(&folder).iter().map(|f| folder.join(f)).collect();
        sum_and_count(&files).1
    };
    ok(&run("", "replace"));
    assert_eq!(rows_in("g2"), 1818);
    // Only g0 and g1 are in the new result: they are replaced, the other partitions stay.
    ok(&run("WHERE g IN ('g0', 'g1') AND k < 100", "replace_partitions"));
    assert_eq!((rows_in("g0"), rows_in("g1"), rows_in("g2"), rows_in("g9")), (9, 9, 1818, 1819));
    // replace: the step's result is the folder's whole content again.
    ok(&run("WHERE g = 'g3'", "replace"));
    assert_eq!((rows_in("g0"), rows_in("g2"), rows_in("g3")), (0, 0, 1818));
}

#[test]
fn inspect_shows_schema_row_groups_and_statistics() {
    let dir = fixture();
    let d = dir.path();
    ok(&flow(
        d,
        &[
            "sql",
            "-o",
            "o.parquet",
            "--row-group-rows",
            "8000",
            "--compression",
            "zstd(3)",
            "SELECT * FROM 't.parquet'",
        ],
    ));
    let run = flow(d, &["inspect", "o.parquet"]);
    ok(&run);
    let text = &run.stdout;
    for needle in [
        "rows: 20000 in 3 row groups",
        "page index: yes",
        "created by: flow version",
        "ZSTD",
        "BYTE_ARRAY STRING",
        "g0",
        "g9",
        "19999",
    ] {
        assert!(text.contains(needle), "'{needle}' missing from:\n{text}");
    }
    let k_line = text.lines().find(|l| l.trim_start().starts_with("k ")).expect("a line for k");
    let fields: Vec<&str> = k_line.split_whitespace().collect();
    assert_eq!(&fields[fields.len() - 3..], ["0", "0", "19999"], "nulls, min, max of k: {k_line}");
    let g_line = text.lines().find(|l| l.trim_start().starts_with("g ")).expect("a line for g");
    assert!(g_line.contains(" 1819 "), "1819 nulls in g: {g_line}");
    let run = flow(d, &["inspect", "--row-groups", "o.parquet"]);
    ok(&run);
    assert!(run.stdout.contains("row group 2:"), "{}", run.stdout);
    std::fs::write(d.join("bad.parquet"), b"not parquet at all").unwrap();
    failed(&flow(d, &["inspect", "bad.parquet"]), "bad.parquet: not a readable Parquet file");
    failed(&flow(d, &["inspect", "missing.parquet"]), "missing.parquet");
}

/// Thousands of partitions in a small budget: the rows go through the external sort by the
/// partition column, so each partition is one file and the open writers are one, whatever their
/// number (a writer per partition took the pool and split partitions over many files).
#[test]
fn ten_thousand_partitions_in_32_mib_one_file_each() {
    let py = interop_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Keys in random order, as strings: 10,000 partitions of about 60 rows.
    ok(&flow(d, &["gen", "table", "--rows", "600K", "--keys", "10K", "--output", "t.parquet"]));
    let run = flow(
        d,
        &[
            "sql",
            "--mem-budget",
            "32MiB",
            "--threads",
            "2",
            "--report",
            "report.json",
            "-o",
            "parts",
            "--partition-by",
            "key_str",
            "SELECT key_str, id, amount, payload FROM 't.parquet'",
        ],
    );
    ok(&run);
    assert_rss_within(&run, d, 32 << 20, "10,000 partitions");
    let folders: Vec<PathBuf> = std::fs::read_dir(d.join("parts")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(folders.len(), 10_000, "one folder per key");
    for folder in &folders {
        let files: Vec<_> = std::fs::read_dir(folder).unwrap().collect();
        assert_eq!(files.len(), 1, "{}: {} files", folder.display(), files.len());
    }
    python(&py, &["partitions", d.to_str().unwrap()]);
}

/// A partitioned output of an ordered query keeps the order inside each partition (the sort by
/// the partition column takes the query's order after it), also when the order is by a column
/// the output drops.
#[test]
fn partitions_keep_the_query_order_inside() {
    let dir = fixture();
    let d = dir.path();
    // The second sorts by a hidden column (`-k`), dropped by a projection above the sort.
    for sql in ["SELECT g, k FROM 't.parquet' ORDER BY k DESC", "SELECT g, k FROM 't.parquet' ORDER BY -k"] {
        let _ = std::fs::remove_dir_all(d.join("p"));
        ok(&flow(d, &["sql", "-o", "p", "--partition-by", "g", sql]));
        let mut seen = 0;
        for folder in std::fs::read_dir(d.join("p")).unwrap() {
            let files: Vec<_> = std::fs::read_dir(folder.unwrap().path()).unwrap().map(|f| f.unwrap().path()).collect();
            assert_eq!(files.len(), 1);
            let values: Vec<i64> = read_parquet(&files[0])
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect();
            seen += values.len();
            assert!(values.windows(2).all(|w| w[0] > w[1]), "{sql}: not in order in {}", files[0].display());
        }
        assert_eq!(seen, 20_000, "{sql}");
    }
}

/// Partition values that need escaping (`/`, `=`, `%`, `:`, `?`, `#`), spaces, unicode, an empty
/// string and a null, and dates, timestamps and negative integers, are read back as they were by
/// pyarrow, DuckDB and Polars.
#[test]
fn partition_values_of_every_kind_read_back_in_pyarrow_duckdb_and_polars() {
    let py = interop_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    python(&py, &["hive_source", d.to_str().unwrap()]);
    for column in ["s", "d", "ts", "neg"] {
        let sql = format!("SELECT {column}, id FROM 'values.parquet'");
        ok(&flow(d, &["sql", "-o", &format!("out_{column}"), "--partition-by", column, &sql]));
    }
    python(&py, &["hive_values", d.to_str().unwrap()]);
}

/// 10,000 partitions: a rewrite killed with SIGKILL half-way leaves the previous output whole,
/// and `replace-partitions` then replaces the 5,000 partitions its result has and keeps the rest.
#[test]
fn ten_thousand_partitions_survive_a_kill_and_replace_partitions_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&flow(d, &["gen", "table", "--rows", "600K", "--keys", "10K", "--output", "t.parquet"]));
    let write = |extra: &[&str], sql: &str| {
        let mut args = vec!["sql", "--mem-budget", "64MiB", "-o", "parts", "--partition-by", "key_str"];
        args.extend_from_slice(extra);
        args.push(sql);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let summary = |sql: &str| {
        let run = flow(d, &["sql", sql]);
        assert_eq!(run.code, 0, "{sql}: {}", run.stderr);
        run.stdout
    };
    let whole = "SELECT count(*) AS n, count(DISTINCT key_str) AS k, sum(id) AS s FROM 'parts'";
    let first = write(&[], "SELECT key_str, id FROM 't.parquet'");
    ok(&flow(d, &first.iter().map(String::as_str).collect::<Vec<_>>()));
    let want = summary("SELECT count(*) AS n, count(DISTINCT key_str) AS k, sum(id) AS s FROM 't.parquet'");
    assert_eq!(summary(whole), want);
    // A rewrite killed while its staging folder fills.
    let again = write(&[], "SELECT key_str, id + 1 AS id FROM 't.parquet'");
    let pid = spawn_flow(d, &again.iter().map(String::as_str).collect::<Vec<_>>());
    let staging = || {
        std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(".parts.flow-tmp-"))
    };
    let started = std::time::Instant::now();
    while staging().and_then(|s| std::fs::read_dir(s).ok()).is_none_or(|e| e.count() < 100) {
        assert!(started.elapsed().as_secs() < 60 && !has_exited(pid), "no partitions were staged");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (code, _) = wait_with_rusage(pid);
    assert_eq!(code, 128 + libc::SIGKILL);
    assert_eq!(summary(whole), want, "the killed rewrite changed the output");
    // Half the keys rewritten with other ids: those partitions are replaced, the rest kept.
    let half = write(
        &["--overwrite", "replace-partitions"],
        "SELECT key_str, id + 10000000 AS id FROM 't.parquet' WHERE key < 5000",
    );
    ok(&flow(d, &half.iter().map(String::as_str).collect::<Vec<_>>()));
    let expected = summary(
        "SELECT count(*) AS n, count(DISTINCT key_str) AS k, \
         sum(CASE WHEN key < 5000 THEN id + 10000000 ELSE id END) AS s FROM 't.parquet'",
    );
    assert_eq!(summary(whole), expected);
    let folders = std::fs::read_dir(d.join("parts")).unwrap().count();
    assert_eq!(folders, 10_000);
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".flow-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn python(python: &Path, args: &[&str]) {
    let script = repo_root().join("tests/interop/check.py");
    let out = Command::new(python).arg(&script).args(args).output().expect("run python");
    assert!(
        out.status.success(),
        "{} {args:?}:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SQL the check script expects flow to have run (its `TYPED_SQL` / `HIVE_SQL`).
fn script_sql(name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("tests/interop/check.py")).unwrap();
    let start = text.find(&format!("{name} = ")).unwrap() + name.len() + 3;
    let rest = &text[start..];
    if let Some(body) = rest.strip_prefix("\"\"\"") {
        body[..body.find("\"\"\"").unwrap()].to_string()
    } else {
        let body = &rest[1..];
        body[..body.find('"').unwrap()].to_string()
    }
}

#[test]
fn pyarrow_duckdb_and_polars_read_what_flow_writes() {
    let py = interop_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let folder = d.to_str().unwrap();
    python(&py, &["source", folder]);
    let typed = script_sql("TYPED_SQL");
    for codec in ["zstd", "snappy", "lz4", "none"] {
        let out = format!("out-{codec}.parquet");
        let run = flow(
            d,
            &[
                "sql",
                "--source",
                "src=src.parquet",
                "--row-group-rows",
                "300",
                "--compression",
                codec,
                "-o",
                &out,
                &typed,
            ],
        );
        ok(&run);
        python(&py, &["typed", &format!("{folder}/{out}")]);
    }
    // Under a small budget (small row groups, the sort in a small share) nothing changes.
    let run = flow(d, &["sql", "--mem-budget", "8MiB", "--source", "src=src.parquet", "-o", "small.parquet", &typed]);
    ok(&run);
    python(&py, &["typed", &format!("{folder}/small.parquet")]);
    let run = flow(
        d,
        &["sql", "--source", "src=src.parquet", "--partition-by", "kind,year", "-o", "hive", &script_sql("HIVE_SQL")],
    );
    ok(&run);
    python(&py, &["hive", &format!("{folder}/hive")]);
    // Integers as deltas, strings through flow's own dictionary encoder, with each codec.
    let wide = script_sql("WIDE_SQL");
    for codec in ["zstd", "snappy", "lz4", "none"] {
        let out = format!("wide-{codec}.parquet");
        ok(&flow(d, &["sql", "--source", "big=big.parquet", "--compression", codec, "-o", &out, &wide]));
        python(&py, &["wide", &format!("{folder}/{out}")]);
    }
}
