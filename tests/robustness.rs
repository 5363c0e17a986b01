//! The `flow` binary on what users actually send: queries that used to hang or crash, outputs to
//! standard output and devices, runs interrupted or killed half-way. Each test names the failure
//! it guards against.

mod common;
#[path = "common/process.rs"]
mod process;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;
use process::*;

/// `t.parquet`: `k` 0..rows, `g` = k % 10, `s` = "s{k}".
fn table(dir: &Path, rows: i64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("g", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let k: Vec<i64> = (0..rows).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(k.clone())),
            Arc::new(Int64Array::from(k.iter().map(|v| v % 10).collect::<Vec<_>>())),
            Arc::new(StringArray::from(k.iter().map(|v| format!("s{v}")).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    write_parquet(&dir.join("t.parquet"), &[batch], None);
}

/// Names in `dir` that a run writes under temporary names (`.x.flow-tmp-...`).
fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".flow-"))
        .collect();
    names.sort();
    names
}

/// Two CTEs, the second reading the first, both read twice: the second's computation started a
/// reader of the first while holding the lock of the registry of computed CTEs, and waited on
/// itself forever (TPC-DS queries 2, 23 and 64).
#[test]
fn nested_shared_ctes_do_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 1000);
    let sql = "WITH a AS (SELECT g, count(*) AS n FROM 't.parquet' GROUP BY g), \
               b AS (SELECT x.g, x.n + y.n AS n FROM a x JOIN a y ON x.g = y.g) \
               SELECT count(*) AS c, sum(b1.n + b2.n) AS s FROM b b1 JOIN b b2 ON b1.g = b2.g";
    let run = flow_within(dir.path(), &["sql", "--mem-budget", "64MiB", "-o", "-", sql], 60);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "c,s\n10,4000\n");
}

/// A run stuck where the cancel flag is never read (here: opening an output fifo nobody reads)
/// survives the first SIGTERM; the second ends it at once with 130 and removes its spill folder.
#[test]
fn a_second_interrupt_ends_a_stuck_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 10);
    let fifo = dir.path().join("stuck.csv");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let spill = dir.path().join("spill");
    let pid = spawn_flow(
        dir.path(),
        &["sql", "--spill-dir", spill.to_str().unwrap(), "-o", "stuck.csv", "SELECT * FROM 't.parquet'"],
    );
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed().as_secs() < 20, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let spill_folders = || std::fs::read_dir(&spill).map(|d| d.count()).unwrap_or(0);
    wait_for("the run made its spill folder", &|| spill_folders() > 0);
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!has_exited(pid), "the open() of a fifo does not end at the first signal, or this test tests nothing");
    let sent = std::time::Instant::now();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("the second signal ends the run", &|| has_exited(pid));
    assert!(sent.elapsed().as_secs() < 2, "ended {:?} after the second signal", sent.elapsed());
    let (code, _) = wait_with_rusage(pid);
    assert_eq!(code, 130);
    assert_eq!(spill_folders(), 0, "the spill folder is removed");
    let stderr = std::fs::read_to_string(dir.path().join(".stderr")).unwrap();
    assert!(stderr.contains("interrupted"), "{stderr}");
}

/// kill -9 leaves the output's temporary file (or staging folder) behind; the next run that
/// writes the same target removes it, and a run writing elsewhere leaves a live one alone.
#[test]
fn temporary_outputs_of_killed_runs_are_removed_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 4000);
    // 16M rows: seconds of work after the temporary file appears.
    let slow = "SELECT a.k, b.s FROM 't.parquet' a CROSS JOIN 't.parquet' b";
    for (target, extra) in [("out.parquet", vec![]), ("parts", vec!["--partition-by", "g"])] {
        let mut args = vec!["sql", "--mem-budget", "64MiB", "-o", target];
        args.extend(extra.iter().copied());
        let mut slow_args = args.clone();
        slow_args.push(if extra.is_empty() {
            slow
        } else {
            "SELECT a.k, b.s, a.g FROM 't.parquet' a CROSS JOIN 't.parquet' b"
        });
        let pid = spawn_flow(dir.path(), &slow_args);
        let started = std::time::Instant::now();
        while leftovers(dir.path()).is_empty() {
            assert!(started.elapsed().as_secs() < 30 && !has_exited(pid), "no temporary output appeared");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let (code, _) = wait_with_rusage(pid);
        assert_eq!(code, 128 + libc::SIGKILL);
        let left = leftovers(dir.path());
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with(&format!(".{target}.flow-tmp-")), "{left:?}");
        // A write elsewhere leaves it; a write to the same target removes it.
        let run = flow(dir.path(), &["sql", "-o", "other.csv", "SELECT k FROM 't.parquet' LIMIT 1"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(leftovers(dir.path()), left);
        let mut quick = args.clone();
        quick.push("SELECT k, g FROM 't.parquet' WHERE k < 5");
        let run = flow(dir.path(), &quick);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }
}

/// `-o -` wrote a file named `-`, `-o /dev/stdout` renamed a temporary file over the device's
/// link (as root), and `-o out.txt` or `-o out.json` silently wrote Parquet.
#[test]
fn outputs_to_standard_output_devices_and_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 100);
    let sql = "SELECT k, s FROM 't.parquet' WHERE k < 3";
    let run = flow(dir.path(), &["sql", "-o", "-", sql]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "k,s\n0,s0\n1,s1\n2,s2\n"), "{}", run.stderr);
    assert!(!dir.path().join("-").exists());
    let run = flow(dir.path(), &["sql", "--format", "json", "SELECT k, NULL AS n FROM 't.parquet' WHERE k < 2"]);
    assert_eq!(run.stdout, "{\"k\":0,\"n\":null}\n{\"k\":1,\"n\":null}\n", "{}", run.stderr);
    let run = flow(dir.path(), &["sql", "-o", "-", "--format", "tsv", sql]);
    assert_eq!(run.stdout, "k\ts\n0\ts0\n1\ts1\n2\ts2\n");
    // Parquet to standard output is a whole file.
    let run = flow(dir.path(), &["sql", "-o", "/dev/stdout", "--format", "parquet", sql]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let bytes = bytes::Bytes::from(std::fs::read(dir.path().join(".stdout")).unwrap());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 1024).unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 3);
    assert!(std::fs::symlink_metadata("/dev/stdout").is_ok_and(|m| !m.is_file()));
    // A device is written into, never renamed over.
    let run = flow(dir.path(), &["sql", "-o", "/dev/null", sql]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(std::fs::metadata("/dev/null").is_ok_and(|m| !m.is_file()));
    // A link is followed: the file it points to gets the output, the link stays.
    std::fs::write(dir.path().join("real.csv"), "old\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("real.csv"), dir.path().join("link.csv")).unwrap();
    let run = flow(dir.path(), &["sql", "-o", "link.csv", sql]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(std::fs::symlink_metadata(dir.path().join("link.csv")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(dir.path().join("real.csv")).unwrap(), "k,s\n0,s0\n1,s1\n2,s2\n");
    // Extensions: .json is newline-delimited JSON; an unknown one is an error before anything runs.
    let run = flow(dir.path(), &["sql", "-o", "out.json", sql]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("out.json")).unwrap().lines().count(), 3);
    let run = flow(dir.path(), &["sql", "-o", "out.txt", sql]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("unknown extension '.txt'") && run.stderr.contains("--format"), "{}", run.stderr);
    assert!(!dir.path().join("out.txt").exists());
    let run = flow(dir.path(), &["sql", "-o", "out.txt", "--format", "csv", sql]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = flow(dir.path(), &["sql", "-o", "-", "--format", "xml", sql]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("unknown output format 'xml'"), "{}", run.stderr);
    // A closed pipe (`| head -1`) is not an error.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("\"$0\" sql -o - \"SELECT a.k FROM 't.parquet' a, 't.parquet' b, 't.parquet' c\" | head -1; exit ${PIPESTATUS[0]}")
        .arg(flow_bin())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k\n");
}

/// Runs `flow args` with a 2 MiB file system mounted at `dir/small` (a private mount namespace,
/// so no privileges are needed where user namespaces are allowed); returns the run and what was
/// left in that file system once the run ended.
fn flow_on_a_small_disk(dir: &Path, args: &[&str]) -> (Run, String) {
    std::fs::create_dir_all(dir.join("small")).unwrap();
    let script = "mount -t tmpfs -o size=2m tmpfs small || exit 99; \"$0\" \"$@\"; code=$?; \
                  find small -mindepth 1 > left.txt; exit $code";
    let bin = flow_bin();
    let mut full = vec!["--mount", "--map-root-user", "sh", "-c", script, bin.to_str().unwrap()];
    full.extend_from_slice(args);
    let out = std::process::Command::new("unshare").args(&full).current_dir(dir).output().expect("run unshare");
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(code, 99, "could not mount a small file system: {}", String::from_utf8_lossy(&out.stderr));
    let left = std::fs::read_to_string(dir.join("left.txt")).unwrap_or_default();
    let run = Run {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        max_rss: 0,
    };
    (run, left)
}

/// A full disk is worth retrying: exit 75, where spill writes that hit ENOSPC exited 1 (the
/// Parquet writer's I/O error was wrapped as an execution error). Nothing is left on the disk.
#[test]
fn a_full_disk_exits_75_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 1_500_000);
    // The sort spills more than the 2 MiB disk holds.
    let sort = "SELECT s, k FROM 't.parquet' ORDER BY s DESC";
    let (run, left) = flow_on_a_small_disk(
        dir.path(),
        &["sql", "--mem-budget", "16MiB", "--spill-dir", "small", "-o", "out.parquet", sort],
    );
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert!(run.stderr.contains("No space left on device"), "{}", run.stderr);
    assert_eq!(left, "", "files left on the spill disk");
    assert!(!dir.path().join("out.parquet").exists());
    // The output on the full disk.
    let (run, left) = flow_on_a_small_disk(dir.path(), &["sql", "-o", "small/out.csv", sort]);
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert!(run.stderr.contains("small/out.csv") && run.stderr.contains("No space left"), "{}", run.stderr);
    assert_eq!(left, "", "files left on the output's disk");
}

/// A pipeline file with one step writing `sql`'s result to `out.csv` (generated SQL can pass the
/// 128 KiB a command-line argument may hold).
fn run_sql_file(dir: &Path, sql: &str) -> Run {
    let toml = format!("[sources]\nt = \"t.parquet\"\n[[steps]]\nsql = '''{sql}'''\noutput = \"out.csv\"\n");
    std::fs::write(dir.join("p.toml"), toml).unwrap();
    let _ = std::fs::remove_file(dir.join("out.csv"));
    flow(dir, &["run", "--mem-budget", "64MiB", "p.toml"])
}

fn output(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("out.csv")).unwrap_or_default()
}

/// `x + 1 + 1 + ...` of 2000 terms or 2000 `AND`ed conditions overflowed the stack (abort, exit
/// 134); parentheses stopped at 24 levels. Long chains now run (`AND`/`OR` chains of any
/// length, other chains and nesting to 10,000 and about 1000 levels), and deeper ones get an
/// error naming the limit.
#[test]
fn long_and_deep_expressions_run_or_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    table(dir.path(), 5000);
    let d = dir.path();
    let sum = |n: usize| format!("SELECT sum(k{}) AS s FROM t", " + 1".repeat(n));
    let run = run_sql_file(d, &sum(2000));
    assert_eq!((run.code, output(d)), (0, format!("s\n{}\n", (0..5000).sum::<i64>() + 2000 * 5000)), "{}", run.stderr);
    let run = run_sql_file(d, &sum(9_990));
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Every condition holds for k < 100: 2000 and 30,000 of them.
    for n in [2000, 30_000] {
        let and = (0..n).map(|i| format!("k < {}", 100 + i)).collect::<Vec<_>>().join(" AND ");
        let run = run_sql_file(d, &format!("SELECT count(*) AS n FROM t WHERE {and}"));
        assert_eq!((run.code, output(d)), (0, "n\n100\n".to_string()), "{}", run.stderr);
    }
    let or = (0..30_000).map(|i| format!("k = {}", i * 7)).collect::<Vec<_>>().join(" OR ");
    let run = run_sql_file(d, &format!("SELECT count(*) AS n FROM t WHERE {or}"));
    assert_eq!((run.code, output(d)), (0, "n\n715\n".to_string()), "{}", run.stderr);
    let nested = |n: usize| format!("SELECT {}k{} AS k FROM t WHERE k = 3", "(".repeat(n), ")".repeat(n));
    let run = run_sql_file(d, &nested(1000));
    assert_eq!((run.code, output(d)), (0, "k\n3\n".to_string()), "{}", run.stderr);
    let calls = format!("SELECT {}k{} AS k FROM t WHERE k = 3", "abs(".repeat(900), ")".repeat(900));
    let run = run_sql_file(d, &calls);
    assert_eq!((run.code, output(d)), (0, "k\n3\n".to_string()), "{}", run.stderr);
    // Too deep: an error on one line (and the spot), exit 2.
    let run = run_sql_file(d, &sum(10_001));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: ") && run.stderr.contains("nested too deeply"), "{}", run.stderr);
    assert!(run.stderr.lines().all(|l| l.len() < 300), "the SQL shown is cut to the spot: {}", run.stderr);
    let run = run_sql_file(d, &nested(3000));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("nests too deeply"), "{}", run.stderr);
}

/// A 3-row file with one value of 12 MiB: budgets of 1.8 to 8 GiB panicked (`min > max` in the
/// scan's sizing) and smaller ones asked for 1.7 GiB (batches of at least 64 rows of the average
/// row). Batches now shrink to one row: the file is read, written and grouped in 96 MiB (the value
/// is held three times at once: as its dictionary page, decoded as the dictionary, and in the
/// batch), and a budget it cannot fit in gets the up-front error with what would do.
#[test]
fn a_value_of_megabytes_is_read_in_a_small_budget() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(12 << 20);
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("s", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from(vec![1, 2, 3])), Arc::new(StringArray::from(vec!["a", big.as_str(), "b"]))],
    )
    .unwrap();
    write_parquet(&dir.path().join("big.parquet"), &[batch], None);
    for budget in ["96MiB", "4GiB"] {
        let run = flow(
            dir.path(),
            &["sql", "--mem-budget", budget, "-o", "-", "SELECT id, length(s) AS n FROM 'big.parquet'"],
        );
        assert_eq!((run.code, run.stdout.as_str()), (0, "id,n\n1,1\n2,12582912\n3,1\n"), "{budget}: {}", run.stderr);
    }
    let run = flow(dir.path(), &["sql", "--mem-budget", "96MiB", "-o", "copy.parquet", "SELECT * FROM 'big.parquet'"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = read_parquet(&dir.path().join("copy.parquet"));
    assert_eq!(concat(&rows).column(1).as_any().downcast_ref::<StringArray>().unwrap().value(1).len(), 12 << 20);
    let run = flow(
        dir.path(),
        &[
            "sql",
            "--mem-budget",
            "96MiB",
            "-o",
            "-",
            "SELECT length(s) AS n, count(*) AS c FROM 'big.parquet' GROUP BY s ORDER BY n",
        ],
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, "n,c\n1,1\n1,1\n12582912,1\n"), "{}", run.stderr);
    let run = flow(dir.path(), &["sql", "--mem-budget", "16MiB", "SELECT id, length(s) FROM 'big.parquet'"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: budget too small") && run.stderr.contains("hint: use --mem-budget"),
        "{}",
        run.stderr
    );
}

/// `x.csv.gz` was taken for CSV and failed on its first compressed byte; `.zst` was unknown.
/// Compressed CSV and NDJSON read as streams, inside the budget, and `--sources DIR` names
/// `x.csv.gz` `x`.
#[test]
fn gzip_and_zstd_text_inputs_are_read() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = String::from("k,name\n");
    let mut json = String::new();
    for i in 0..50_000 {
        csv.push_str(&format!("{i},\"n{},{}\"\n", i % 7, i % 3));
        json.push_str(&format!("{{\"k\": {i}, \"name\": \"n{}\"}}\n", i % 7));
    }
    let gzip = |path: &str, text: &str| {
        let mut e = flate2::write::GzEncoder::new(std::fs::File::create(d.join(path)).unwrap(), Default::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
    };
    std::fs::create_dir(d.join("in")).unwrap();
    gzip("in/events.csv.gz", &csv);
    gzip("in/lines.ndjson.gz", &json);
    std::fs::write(d.join("in/more.csv.zst"), zstd::encode_all(csv.as_bytes(), 3).unwrap()).unwrap();
    let want = format!("n,s\n50000,{}\n", (0..50_000u64).sum::<u64>());
    for table in ["events", "lines", "more"] {
        let sql = format!("SELECT count(*) AS n, sum(k) AS s FROM {table}");
        let run = flow(d, &["sql", "--mem-budget", "16MiB", "--sources", "in", "-o", "-", &sql]);
        assert_eq!((run.code, run.stdout.as_str()), (0, want.as_str()), "{table}: {}", run.stderr);
    }
    let run = flow(
        d,
        &["sql", "-o", "-", "SELECT name, count(*) AS n FROM 'in/events.csv.gz' GROUP BY 1 ORDER BY 1 LIMIT 1"],
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, "name,n\n\"n0,0\",2381\n"), "{}", run.stderr);
    // A damaged file is an error naming it, exit 2.
    std::fs::write(d.join("broken.csv.gz"), b"\x1f\x8b\x08\x00garbage").unwrap();
    let run = flow(d, &["sql", "SELECT * FROM 'broken.csv.gz'"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: broken.csv.gz:"), "{}", run.stderr);
}

/// Errors in text files name the file's line: a bad value on line 50002 of a CSV file said
/// "line 50001 ... (after line 49153)", and a broken NDJSON line 3 said "line 1".
#[test]
fn errors_in_text_files_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = String::from("a,b\n");
    for i in 1..=60_000 {
        csv.push_str(&if i == 50_001 { "oops,x\n".to_string() } else { format!("{i},x\n") });
    }
    std::fs::write(d.join("bad.csv"), csv).unwrap();
    let run = flow(d, &["sql", "SELECT sum(a) FROM 'bad.csv'"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("bad.csv: line 50002: ") && run.stderr.contains("'oops'"), "{}", run.stderr);
    assert!(!run.stderr.contains("after line"), "{}", run.stderr);
    std::fs::write(d.join("bad.ndjson"), "{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3\n{\"a\": 4}\n").unwrap();
    let run = flow(d, &["sql", "SELECT sum(a) FROM 'bad.ndjson'"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("bad.ndjson: line 3: not valid JSON"), "{}", run.stderr);
}

/// A glob over Parquet files of different columns was silently unioned by name, where DuckDB
/// refuses; now it is refused unless `union_by_name` asks for it (in SQL or a pipeline source).
#[test]
fn files_of_different_columns_need_union_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("parts")).unwrap();
    let write = |name: &str, columns: Vec<(&str, arrow::array::ArrayRef)>| {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        write_parquet(&d.join("parts").join(name), &[batch], None);
    };
    write(
        "a.parquet",
        vec![
            ("k", Arc::new(Int64Array::from(vec![1, 2])) as _),
            ("s", Arc::new(StringArray::from(vec!["x", "y"])) as _),
        ],
    );
    write("b.parquet", vec![("k", Arc::new(Int64Array::from(vec![3])) as _)]);
    let run = flow(d, &["sql", "SELECT count(*) AS n FROM 'parts/*.parquet'"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("column 's'") && run.stderr.contains("union_by_name"), "{}", run.stderr);
    let sql = "SELECT count(*) AS n, count(s) AS s FROM read_parquet('parts/*.parquet', union_by_name = true)";
    let run = flow(d, &["sql", "-o", "-", sql]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "n,s\n3,2\n"), "{}", run.stderr);
    std::fs::write(
        d.join("p.toml"),
        "[sources]\nparts = { path = \"parts/*.parquet\", union_by_name = true }\n[[steps]]\nsql = \"SELECT count(s) AS s FROM parts\"\noutput = \"out.csv\"\n",
    )
    .unwrap();
    let run = flow(d, &["run", "p.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(d.join("out.csv")).unwrap(), "s\n2\n");
}

/// Runs `sql` over the tables `t` and `u` of `dir` at the smallest budget flow accepts it at,
/// found as a user finds it (1 MiB, then what the error asks for), and a little above: each run
/// must finish. Near their minimums, plans were accepted and then failed: a table grew into
/// what the next batch of an operator beside it needed, a writer sized its buffers from a budget
/// that footers held most of, an aggregation's output batch of 8192 groups of long strings
/// took 300 KiB where 64 KiB was planned, `EXCEPT ALL` repeated a row 100,000 times into one
/// batch (found by the differential fuzzer).
fn runs_at_its_smallest_budget(dir: &Path, sql: &str) {
    runs_at_its_smallest_budget_on(dir, sql, 2)
}

/// [`runs_at_its_smallest_budget`] with `threads` threads.
fn runs_at_its_smallest_budget_on(dir: &Path, sql: &str, threads: usize) {
    let run = |budget: u64| {
        let config = flow_engine::Config::default()
            .with_mem_budget(budget)
            .with_threads(threads)
            .with_spill_dir(dir.join("spill"));
        let mut engine = flow_engine::Engine::new(config)?;
        engine.register("t", dir.join("t.parquet").to_str().unwrap())?;
        engine.register("u", dir.join("u.parquet").to_str().unwrap())?;
        engine.sql(sql)?.write(dir.join("out.parquet")).map(|_| ())
    };
    let mut budget = 1 << 20;
    let smallest = loop {
        match run(budget) {
            Ok(()) => break budget,
            Err(e) => match e.inner() {
                flow_engine::Error::BudgetTooSmall { needed, .. } if budget == 1 << 20 => budget = *needed,
                _ => panic!("{sql}: accepted at {budget} bytes, then: {e}"),
            },
        }
    };
    for budget in [smallest + smallest / 20, smallest + smallest / 5] {
        if let Err(e) = run(budget) {
            panic!("{sql}: the smallest budget is {smallest} bytes, and at {budget}: {e}");
        }
    }
}

#[test]
fn plans_accepted_at_their_smallest_budget_finish() {
    let dir = tempfile::tempdir().unwrap();
    // `t`: 4,000 rows of long strings; `u`: 40,000 rows in row groups of 10, whose footers take
    // most of a small budget.
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("g", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let batch = |rows: i64, width: usize| {
        let k: Vec<i64> = (0..rows).map(|i| (i * 7919) % rows).collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(k.clone())),
                Arc::new(Int64Array::from(k.iter().map(|v| v % 10).collect::<Vec<_>>())),
                Arc::new(StringArray::from(k.iter().map(|v| format!("{v:0width$}")).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    };
    write_parquet(&dir.path().join("t.parquet"), &[batch(4_000, 120)], None);
    let small_groups =
        parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(10)).build();
    write_parquet(&dir.path().join("u.parquet"), &[batch(40_000, 8)], Some(small_groups));
    for sql in [
        "SELECT k, min(s || s) AS a, max(s) AS b FROM t GROUP BY k",
        "SELECT k, s FROM u WHERE k % 7 <> 0",
        "SELECT DISTINCT a.s, b.k FROM t a FULL JOIN t b ON a.k = b.g",
        // Ten groups kept about 4,000 times each: the copies go out a batch at a time.
        "SELECT g, k % 3 AS m FROM u EXCEPT ALL SELECT g, k % 3 FROM u WHERE k < 100 ORDER BY 1, 2",
    ] {
        runs_at_its_smallest_budget(dir.path(), sql);
    }
}

/// Two plans the differential fuzzer found accepted at their smallest budget and then failing:
/// a join whose build rows were strings far longer than the column's minimum and maximum (the
/// scan sized its batches from their lengths, and decoded the whole row group at once), and an
/// outer join whose unmatched rows of one narrow column came out with nulls for sixteen-byte
/// decimals (batches of 8192 rows took 422 KiB where 64 KiB was planned).
#[test]
fn long_strings_between_short_bounds_and_wide_null_extended_rows_run_at_their_smallest_budget() {
    use arrow::array::{Decimal128Array, Int32Array};
    let dir = tempfile::tempdir().unwrap();
    // `t`: one row group of 1,752 rows; 100 strings whose least and greatest are 7 characters and
    // the others 150.
    let rows = 1_752i64;
    let s: Vec<String> = (0..rows)
        .map(|i| {
            let v = (i * 37) % 100;
            format!("{v:06}-{}", if v == 0 || v == 99 { String::new() } else { "w".repeat(143) })
        })
        .collect();
    let t = RecordBatch::try_from_iter([
        ("k", Arc::new(Int64Array::from_iter_values(0..rows)) as arrow::array::ArrayRef),
        ("i", Arc::new(Int32Array::from_iter_values((0..rows).map(|i| ((i * 7) % rows) as i32))) as _),
        ("s", Arc::new(StringArray::from(s)) as _),
    ])
    .unwrap();
    write_parquet(&dir.path().join("t.parquet"), &[t], None);
    // `u`: 60,000 rows in row groups of 8192, two wide decimals beside integers.
    let rows = 60_000i64;
    let decimal = |scale: i128| {
        Arc::new(
            Decimal128Array::from_iter_values((0..rows as i128).map(|i| i * scale))
                .with_precision_and_scale(38, 10)
                .unwrap(),
        ) as arrow::array::ArrayRef
    };
    let u = RecordBatch::try_from_iter([
        ("k", Arc::new(Int64Array::from_iter_values(0..rows)) as arrow::array::ArrayRef),
        // Mostly null: nearly every row of `c` below is unmatched.
        ("i", Arc::new(Int32Array::from_iter((0..rows).map(|i| (i % 10 == 0).then_some((i % 3) as i32)))) as _),
        ("d", decimal(7)),
        ("e", decimal(11)),
        ("s", Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("s{}", i % 50))))),
    ])
    .unwrap();
    let groups = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(8192)).build();
    write_parquet(&dir.path().join("u.parquet"), &[u], Some(groups));
    for sql in [
        "SELECT a.s, b.s FROM t a JOIN t b ON a.k = b.i",
        "SELECT CAST(b.i AS DECIMAL(18, 3)) AS i, b.d, b.s FROM u a JOIN u b ON a.k = b.k RIGHT JOIN u c ON a.k = c.i \
         WHERE b.d IS NULL OR b.e = 13.2 OR b.d = 167.06",
    ] {
        for threads in 1..=3 {
            runs_at_its_smallest_budget_on(dir.path(), sql, threads);
        }
    }
}
