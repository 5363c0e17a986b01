//! The `flow` binary end to end: the README's commands, outputs, and a clear error with the right
//! exit code (and nothing left behind) for every kind of bad input.

mod common;
#[path = "common/process.rs"]
mod process;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use common::*;
use process::*;

/// A small Parquet table `t.parquet` (a: 0..1000, s: "s{a}", null every 7th) and a CSV `c.csv`.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let schema =
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
    let batches: Vec<RecordBatch> = (0..4)
        .map(|part| {
            let a: Vec<i64> = (part * 250..(part + 1) * 250).collect();
            let s: StringArray = a.iter().map(|v| (v % 7 != 0).then(|| format!("s{v}"))).collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(a)), Arc::new(s)]).unwrap()
        })
        .collect();
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(250)).build();
    write_parquet(&dir.path().join("t.parquet"), &batches, Some(props));
    std::fs::write(dir.path().join("c.csv"), "id,name,price\n1,apple,1.50\n2,pear,\n3,\"plum, red\",3.25\n").unwrap();
    dir
}

fn assert_error(run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, code, "exit code; stderr: {}", run.stderr);
    let text = run.stderr.trim_end();
    let mut lines = text.lines();
    let line = lines.next().unwrap_or_default();
    assert!(line.starts_with("error: "), "stderr: {text}");
    // One line; an error at a place in the SQL is followed by that line and a caret under it.
    let rest: Vec<&str> = lines.collect();
    if !rest.is_empty() {
        assert!(line.contains(" at line "), "one line expected: {text}");
        assert_eq!(rest.len(), 2, "the SQL line and a caret: {text}");
        assert!(rest[0].contains(" | ") && rest[1].trim_end().ends_with('^'), "{text}");
    }
    for n in needles {
        assert!(line.contains(n), "'{n}' missing from: {line}");
    }
}

#[test]
fn readme_demo_pipeline_runs() {
    let root = repo_root();
    let out = tempfile::tempdir().unwrap();
    // Copy the demo so outputs land in a temp dir.
    let demo = out.path().join("data/demo");
    std::fs::create_dir_all(&demo).unwrap();
    for f in ["events-1.parquet", "events-2.parquet", "categories.csv", "pipeline.toml"] {
        std::fs::copy(root.join("data/demo").join(f), demo.join(f)).unwrap();
    }
    let run =
        flow(out.path(), &["run", "--mem-budget", "256MiB", "--report", "report.json", "data/demo/pipeline.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("flow: 5 steps"), "{}", run.stderr);
    let rows: usize = read_parquet(&out.path().join("out/demo/big_spend.parquet")).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 75078, "the demo's answer, checked against DuckDB");
    let csv = std::fs::read_to_string(out.path().join("out/demo/top_categories.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7);
    // The join with the categories, grouped with a distinct count: DuckDB's totals over its rows.
    let csv = std::fs::read_to_string(out.path().join("out/demo/department_spend.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 24);
    assert_eq!(rows[0], ["food", "1", "3166", "2178", "1588647.66"]);
    let total = |i: usize| rows.iter().map(|r| r[i].parse::<f64>().unwrap()).sum::<f64>();
    assert_eq!((total(2), total(3)), (150010.0, 74251.0));
    assert!((total(4) - 74994469.05).abs() < 0.01);
    assert!(run.stderr.contains("HashJoin INNER, build side right"), "the summary shows the join: {}", run.stderr);
    // The step cut into units: one hive folder per category, biggest spenders first, and DuckDB's
    // totals over its rows.
    assert!(
        run.stderr.contains("daily: 8 units in priority order: toys (18909504.11), garden (18844292.23)"),
        "{}",
        run.stderr
    );
    let daily = out.path().join("out/demo/daily");
    let files: Vec<String> = files_in(&daily).into_iter().filter(|f| !f.starts_with("_flow")).collect();
    assert_eq!(files.len(), 8, "{files:?}");
    assert!(files.iter().all(|f| f.starts_with("category=") && f.ends_with(".parquet")), "{files:?}");
    let (mut groups, mut events, mut users) = (0, 0, 0);
    for f in &files {
        for b in read_parquet(&daily.join(f)) {
            groups += b.num_rows();
            events += b.column(1).as_primitive::<Int64Type>().iter().flatten().sum::<i64>();
            users += b.column(2).as_primitive::<Int64Type>().iter().flatten().sum::<i64>();
        }
    }
    assert_eq!((groups, events, users), (1456, 300_000, 265_114));
    // The sort of ~300 MB of rows under 256 MiB spilled, and kept the promise.
    let timeline: usize =
        read_parquet(&out.path().join("out/demo/timeline.parquet")).iter().map(|b| b.num_rows()).sum();
    assert_eq!(timeline, 300_000);
    assert!(run.stderr.contains("spilled") && !run.stderr.contains("spilled 0 B"), "{}", run.stderr);
    assert_rss_within(&run, out.path(), 256 << 20, "demo");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["steps"][0]["rows_read"], 300000);
    assert_eq!(report["steps"][0]["rows_out"], 75078);
    assert!(report["peak_accounted"].as_u64().unwrap() > 0);
    assert!(report["peak_rss"].as_u64().unwrap() > 0);
}

#[test]
fn sql_prints_a_table() {
    let dir = fixture();
    let run = flow(
        dir.path(),
        &["sql", "--mem-budget", "64MiB", "SELECT a, a * 2 AS c, s FROM 't.parquet' WHERE a > 10 LIMIT 3"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[1].contains("| a ") && lines[1].contains("| c ") && lines[1].contains("| s "), "{}", run.stdout);
    assert!(lines[3].contains("| 11 | 22 | s11 |"), "{}", run.stdout);
    assert!(lines[5].contains("| 13 | 26 | s13 |"), "{}", run.stdout);
    assert!(run.stdout.contains("(3 rows)"));
}

/// `flow functions` lists what the engine's registry holds, by group; a name narrows it.
#[test]
fn functions_lists_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let all = flow(dir.path(), &["functions"]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    for line in ["Strings:", "  lower(s): s in lower case (also lcase)", "Dates and times:", "  date_trunc(part, d): "]
    {
        assert!(all.stdout.contains(line), "{line} in {}", all.stdout);
    }
    // Every function SQL calls by name is listed, and only those.
    let listed = all.stdout.lines().filter(|l| l.starts_with("  ")).count();
    let callable = flow_engine::expr::functions().filter(|d| d.group != flow_engine::expr::Group::Internal).count();
    assert_eq!(listed, callable);
    assert!(!all.stdout.contains("try_cast"));
    let some = flow(dir.path(), &["functions", "TRIM"]);
    assert_eq!(some.stdout.lines().filter(|l| l.starts_with("  ")).count(), 3, "{}", some.stdout);
    let none = flow(dir.path(), &["functions", "zzz"]);
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("no function's name contains 'zzz'"), "{}", none.stderr);
}

#[test]
fn sql_orders_rows() {
    let dir = fixture();
    let run = flow(
        dir.path(),
        &[
            "sql",
            "--mem-budget",
            "16MiB",
            "SELECT a, s FROM 't.parquet' WHERE a < 30 ORDER BY s DESC NULLS FIRST, a LIMIT 4",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<&str> = run.stdout.lines().skip(3).take(4).collect();
    // Nulls first (a % 7 == 0: 0, 7, 14, 21, 28 by a), then strings descending.
    assert!(rows[0].contains("| 0  |") && rows[3].contains("| 21 |"), "{}", run.stdout);
}

#[test]
fn sql_writes_parquet_and_csv() {
    let dir = fixture();
    let run = flow(
        dir.path(),
        &[
            "sql",
            "-o",
            "out/x.parquet",
            "SELECT a, upper(s) AS u FROM 't.parquet' WHERE a % 100 = 0 OR s IS NULL AND a < 30",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = concat(&read_parquet(&dir.path().join("out/x.parquet")));
    let want: Vec<i64> = (0..1000).filter(|a| a % 100 == 0 || (a % 7 == 0 && *a < 30)).collect();
    assert_eq!(got.column(0).as_primitive::<Int64Type>().values().to_vec(), want);
    let u = got.column(1).as_string::<i32>();
    for (i, a) in want.iter().enumerate() {
        assert_eq!(u.is_null(i), a % 7 == 0, "row {a}");
        if a % 7 != 0 {
            assert_eq!(u.value(i), format!("S{a}"));
        }
    }
    // Plain Utf8 in the file, as every reader expects.
    assert_eq!(got.schema().field(1).data_type(), &DataType::Utf8);
    let run =
        flow(dir.path(), &["sql", "-o", "x.csv", "SELECT id, name, price FROM 'c.csv' WHERE price IS NULL OR id = 3"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("x.csv")).unwrap(),
        "id,name,price\n2,pear,\n3,\"plum, red\",3.25\n"
    );
    assert_eq!(files_in(dir.path()).iter().filter(|f| f.contains("flow-tmp")).count(), 0);
}

#[test]
fn env_overrides_and_verbose_settings() {
    let dir = fixture();
    let run = flow_env(
        dir.path(),
        &["sql", "-v", "SELECT a FROM 't.parquet' LIMIT 1"],
        &[("FLOW_MEM_BUDGET", "48MiB"), ("FLOW_THREADS", "3")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("budget 48.0 MiB, 3 threads"), "{}", run.stderr);
    let run = flow(dir.path(), &["sql", "-v", "SELECT a FROM 't.parquet' LIMIT 1"]);
    assert!(run.stderr.contains("no --mem-budget given"), "{}", run.stderr);
}

#[test]
fn bad_sql_names_the_position() {
    let dir = fixture();
    let run = flow(dir.path(), &["sql", "SELECT a FROM 't.parquet' WHER a > 1"]);
    assert_error(&run, 2, &["sql:", "line 1, column"]);
    let run = flow(dir.path(), &["sql", "SELECT aa FROM 't.parquet'"]);
    assert_error(&run, 2, &["unknown column 'aa'", "did you mean a?", "line 1, column 8"]);
    let run = flow(dir.path(), &["sql", "SELECT a FROM nowhere"]);
    assert_error(&run, 2, &["unknown table 'nowhere'"]);
    let run = flow(dir.path(), &["sql", "SELECT s + 1 FROM 't.parquet'"]);
    assert_error(&run, 2, &["cannot apply + to VARCHAR and INTEGER"]);
    let run = flow(dir.path(), &["sql", "SELECT a FROM 't.parquet' WHERE s = 5"]);
    assert_error(&run, 2, &["cannot compare VARCHAR with INTEGER"]);
    // The caret sits under the spot, on the line it is on.
    let run = flow(dir.path(), &["sql", "SELECT a,\n       s\nFROM 't.parquet'\nWHERE a > 1 OR s = 5"]);
    assert_error(&run, 2, &["cannot compare VARCHAR with INTEGER", "line 4, column 16"]);
    assert!(run.stderr.contains(" 4 | WHERE a > 1 OR s = 5\n   |                ^"), "{}", run.stderr);
}

#[test]
fn unsupported_sql_is_an_error_not_a_wrong_answer() {
    let dir = fixture();
    for (sql, what) in [
        ("SELECT a FROM 't.parquet' GROUP BY ROLLUP (a)", "ROLLUP"),
        ("WITH RECURSIVE r AS (SELECT 1 AS x) SELECT * FROM r", "WITH RECURSIVE"),
        ("SELECT x.a FROM 't.parquet' x NATURAL JOIN 't.parquet' y", "NATURAL JOIN"),
        ("SELECT DISTINCT ON (a) a FROM 't.parquet'", "DISTINCT ON"),
    ] {
        let run = flow(dir.path(), &["sql", "-o", "out.parquet", sql]);
        assert_error(&run, 2, &["not supported yet", what]);
        assert!(!dir.path().join("out.parquet").exists());
    }
}

#[test]
fn missing_corrupt_and_truncated_files() {
    let dir = fixture();
    let run = flow(dir.path(), &["sql", "SELECT * FROM 'missing.parquet'"]);
    assert_error(&run, 2, &["missing.parquet", "no such file"]);
    let run = flow(dir.path(), &["sql", "SELECT * FROM 'nothing-*.parquet'"]);
    assert_error(&run, 2, &["no files match"]);
    std::fs::write(dir.path().join("junk.parquet"), b"this is not parquet at all").unwrap();
    let run = flow(dir.path(), &["sql", "-o", "o.parquet", "SELECT * FROM 'junk.parquet'"]);
    assert_error(&run, 2, &["junk.parquet", "not a readable parquet file"]);
    let bytes = std::fs::read(dir.path().join("t.parquet")).unwrap();
    std::fs::write(dir.path().join("cut.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let run = flow(dir.path(), &["sql", "-o", "o.parquet", "SELECT * FROM 'cut.parquet'"]);
    assert_error(&run, 2, &["cut.parquet"]);
    // Corrupt data pages (footer intact): found while running, still a clear error, no output.
    let mut bad = bytes.clone();
    for b in &mut bad[100..bytes.len() / 2] {
        *b = 0xAB;
    }
    std::fs::write(dir.path().join("bad.parquet"), &bad).unwrap();
    let run = flow(dir.path(), &["sql", "-o", "o.parquet", "SELECT * FROM 'bad.parquet'"]);
    assert_error(&run, 2, &["bad.parquet"]);
    assert!(!dir.path().join("o.parquet").exists());
    assert_eq!(files_in(dir.path()).iter().filter(|f| f.contains("flow-tmp")).count(), 0);
}

#[test]
fn ragged_csv_fails_cleanly() {
    let dir = fixture();
    let mut text = String::from("a,b\n");
    for i in 0..50_000 {
        text.push_str(&format!("{i},{}\n", i * 2));
    }
    text.push_str("1,2,3\n");
    std::fs::write(dir.path().join("ragged.csv"), text).unwrap();
    let run = flow(dir.path(), &["sql", "-o", "o.parquet", "SELECT a FROM 'ragged.csv'"]);
    assert_error(&run, 2, &["ragged.csv", "incorrect number of fields"]);
    assert!(!dir.path().join("o.parquet").exists());
    assert_eq!(files_in(dir.path()).iter().filter(|f| f.contains("flow-tmp")).count(), 0);
}

#[test]
fn unwritable_output_is_a_runtime_error() {
    let dir = fixture();
    std::fs::create_dir(dir.path().join("ro")).unwrap();
    std::fs::write(dir.path().join("ro/blocker"), "a file where a folder should be").unwrap();
    let run = flow(dir.path(), &["sql", "-o", "ro/blocker/out.parquet", "SELECT a FROM 't.parquet'"]);
    assert_error(&run, 1, &["ro/blocker"]);
    let run = flow(dir.path(), &["sql", "-o", "ro", "SELECT a FROM 't.parquet'"]);
    assert_error(&run, 1, &["is a directory"]);
}

#[test]
fn bad_sizes_and_budgets() {
    let dir = fixture();
    let run = flow(dir.path(), &["sql", "--mem-budget", "12 parsecs", "SELECT a FROM 't.parquet'"]);
    assert_error(&run, 2, &["invalid size '12 parsecs'", "unknown unit"]);
    let run = flow(dir.path(), &["sql", "--mem-budget", "1KiB", "SELECT a, s FROM 't.parquet'"]);
    assert_error(&run, 1, &["budget too small", "hint: use --mem-budget"]);
    let run = flow(dir.path(), &["sql", "--threads", "0", "SELECT a FROM 't.parquet'"]);
    assert_error(&run, 2, &["--threads"]);
}

fn write_pipeline(dir: &Path, text: &str) {
    std::fs::write(dir.join("p.toml"), text).unwrap();
}

#[test]
fn pipeline_errors_are_found_before_anything_runs() {
    let dir = fixture();
    let cases: &[(&str, &[&str])] = &[
        ("[sources]\nt = \"t.parquet\"\n[[steps]]\nname = \"x\"\nsql = \"SELECT a FROM t\"\noutptu = \"o.parquet\"\n", &["unknown field `outptu`", "line 6"]),
        ("[sources]\nt = \"t.parquet\"\n[[steps]]\nname = \"x\"\nsql = \"SELECT a FROM t\"\n[[steps]]\nname = \"x\"\nsql = \"SELECT a FROM t\"\noutput = \"o.parquet\"\n", &["duplicate step name 'x'"]),
        ("[sources]\nt = \"gone.parquet\"\n[[steps]]\nsql = \"SELECT a FROM t\"\noutput = \"o.parquet\"\n", &["source 't'", "gone.parquet"]),
        ("[sources]\nt = \"t.parquet\"\n[[steps]]\nsql = \"SELECT a FROM t\"\noutput = \"first.parquet\"\n[[steps]]\nname = \"bad\"\nsql = \"SELECT nope FROM t\"\n", &["step 'bad'", "unknown column 'nope'"]),
        ("[sources\nt = 1", &["p.toml"]),
        ("[settings]\nmem_budget = \"lots\"\n[sources]\nt = \"t.parquet\"\n[[steps]]\nsql = \"SELECT a FROM t\"\noutput = \"o.parquet\"\n", &["invalid size 'lots'"]),
    ];
    for (text, needles) in cases {
        write_pipeline(dir.path(), text);
        let run = flow(dir.path(), &["run", "p.toml"]);
        assert_error(&run, 2, needles);
        assert!(!dir.path().join("first.parquet").exists(), "nothing runs before every step is planned");
        assert!(!dir.path().join("o.parquet").exists());
    }
    let run = flow(dir.path(), &["run", "nope.toml"]);
    assert_error(&run, 2, &["nope.toml"]);
}

#[test]
fn pipeline_views_csv_options_and_relative_paths() {
    let dir = fixture();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/semi.csv"), "k;v\n1;x\n2;y\n3;\n").unwrap();
    write_pipeline(
        &dir.path().join("sub"),
        r#"
[sources]
t = "../t.parquet"
semi = { path = "semi.csv", delimiter = ";", columns = ["k BIGINT", "v VARCHAR"] }

[[steps]]
name = "small"
sql = "SELECT a, s FROM t WHERE a < 20"

[[steps]]
name = "odd"
sql = "SELECT a, coalesce(s, 'none') AS s FROM small WHERE a % 2 = 1"
output = "out/odd.parquet"

[[steps]]
sql = "SELECT k * 10 AS k10, v FROM semi WHERE v IS NOT NULL"
output = { path = "out/semi.csv", format = "csv" }
"#,
    );
    let run = flow(dir.path(), &["run", "sub/p.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let odd = concat(&read_parquet(&dir.path().join("sub/out/odd.parquet")));
    assert_eq!(odd.column(0).as_primitive::<Int64Type>().values().to_vec(), vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
    assert_eq!(odd.column(1).as_string::<i32>().value(3), "none", "7 % 7 == 0 is null in the fixture");
    assert_eq!(std::fs::read_to_string(dir.path().join("sub/out/semi.csv")).unwrap(), "k10,v\n10,x\n20,y\n");
}

#[test]
fn spill_folders_are_private_and_removed() {
    let dir = fixture();
    let spill = dir.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    // A folder left by a run that died: removed at start.
    std::fs::create_dir(spill.join("flow-spill-dead")).unwrap();
    std::fs::write(spill.join("flow-spill-dead/pid"), "99999999").unwrap();
    let run = flow(dir.path(), &["sql", "--spill-dir", "spill", "-o", "o.parquet", "SELECT a FROM 't.parquet'"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(std::fs::read_dir(&spill).unwrap().next().is_none(), "{:?}", files_in(&spill));
}
