//! Units of work on the real `flow` binary: kill -9 at random points and resume, changed inputs
//! and SQL, `--restart`, retries, `--keep-going`, three workers on one folder, Ctrl-C, a full disk
//! while committing, and RSS that stays flat over 50 units; and the same loop from the library.

mod common;
#[path = "common/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;
use process::*;

/// `events` rows: `category` (`c00`.. one of `categories`, the first holding `skew` times the
/// others' share), `user`, `amount`, `note` (a 40-character string).
fn write_events(path: &Path, rows: usize, categories: usize, seed: u64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("category", DataType::Utf8, true),
        Field::new("user", DataType::Int64, false),
        Field::new("amount", DataType::Int64, false),
        Field::new("note", DataType::Utf8, false),
    ]));
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut batches = Vec::new();
    for start in (0..rows).step_by(8192) {
        let n = 8192.min(rows - start);
        let (mut cat, mut user, mut amount, mut note) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let c = next() as usize % categories;
            cat.push(format!("c{c:02}"));
            user.push((next() % 20_000) as i64);
            amount.push((next() % 1000) as i64);
            note.push(format!("{:040}", next()));
        }
        batches.push(
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(cat)),
                    Arc::new(Int64Array::from(user)),
                    Arc::new(Int64Array::from(amount)),
                    Arc::new(StringArray::from(note)),
                ],
            )
            .unwrap(),
        );
    }
    write_parquet(path, &batches, None);
}

const PER_USER: &str = "SELECT category, user, count(*) AS n, sum(amount) AS total FROM events GROUP BY category, user";

fn pipeline(dir: &Path, events: &str, sql: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[sources]\nevents = \"{events}\"\n\n[[steps]]\nname = \"per_user\"\nsql = \"{sql}\"\n\
         output = {{ path = \"out/per_user\", partition_by = [\"category\"] }}\nunits = \"category\"\n{extra}"
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every row of a hive-partitioned output folder as text (partition values first), sorted.
fn output_rows(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for file in files_in(dir) {
        if file.starts_with("_flow") {
            continue;
        }
        assert!(file.ends_with(".parquet"), "unexpected file {file} in the output");
        let partition = Path::new(&file).parent().unwrap().to_string_lossy().into_owned();
        for batch in read_parquet(&dir.join(&file)) {
            for row in 0..batch.num_rows() {
                let values: Vec<String> = batch
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap())
                    .collect();
                rows.push(format!("{partition}|{}", values.join("|")));
            }
        }
    }
    rows.sort();
    rows
}

/// The data files of an output folder (not `_flow`).
fn data_files(dir: &Path) -> Vec<String> {
    files_in(dir).into_iter().filter(|f| !f.starts_with("_flow")).collect()
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// `(unit, status)` of every unit in the run's report, in the order they were taken.
fn unit_statuses(dir: &Path) -> Vec<(String, String)> {
    report(dir)["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["unit"].as_str().unwrap().to_string(), u["status"].as_str().unwrap().to_string()))
        .collect()
}

fn count(statuses: &[(String, String)], status: &str) -> usize {
    statuses.iter().filter(|(_, s)| s == status).count()
}

/// Nothing half-done is left: no staged, temporary or stray files anywhere in the folder.
fn assert_clean(out: &Path) {
    for f in files_in(out) {
        let name = Path::new(&f).file_name().unwrap().to_string_lossy().into_owned();
        assert!(!f.contains("staging/"), "staging left behind: {f}");
        assert!(!name.starts_with('.'), "temporary file left behind: {f}");
        assert!(name.starts_with("part-") || f.starts_with("_flow/"), "stray file {f}");
    }
}

/// A reference run in a folder of its own: the output rows and file names.
fn reference(events: &Path, sql: &str, extra: &str, budget: &str) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), events.to_str().unwrap(), sql, extra);
    let run = flow(dir.path(), &["run", "--mem-budget", budget, p.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = dir.path().join("out/per_user");
    (output_rows(&out), data_files(&out))
}

#[test]
fn killed_runs_resume_to_the_same_output() {
    let data = tempfile::tempdir().unwrap();
    let events = data.path().join("events.parquet");
    write_events(&events, 400_000, 12, 1);
    // A small budget makes each unit spill, so kills land in every phase: scanning, spilling,
    // merging, writing and committing.
    let budget = "24MiB";
    let (expected, expected_files) = reference(&events, PER_USER, "", budget);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), events.to_str().unwrap(), PER_USER, "");
    let full = flow(dir.path(), &["run", "--mem-budget", budget, p.to_str().unwrap()]);
    assert_eq!(full.code, 0, "{}", full.stderr);
    let one_run = started.elapsed().as_millis() as u64;

    for seed in 0..10u64 {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), events.to_str().unwrap(), PER_USER, "");
        let args = ["run", "--mem-budget", budget, "--report", "report.json", p.to_str().unwrap()];
        let mut kills = 0;
        let mut state = seed + 1;
        loop {
            let pid = spawn_flow(dir.path(), &args);
            // Kill at a random point of a run (xorshift; the later attempts run to the end).
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if kills < 4 {
                std::thread::sleep(Duration::from_millis(state % one_run.max(1)));
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let (code, _) = wait_with_rusage(pid);
            if code == 0 {
                break;
            }
            assert_eq!(
                code,
                128 + libc::SIGKILL,
                "seed {seed}: {}",
                std::fs::read_to_string(dir.path().join(".stderr")).unwrap()
            );
            let records = std::fs::read_dir(dir.path().join("out/per_user/_flow/units")).map_or(0, |d| d.count());
            eprintln!("seed {seed}: killed with {records} of 12 units committed");
            kills += 1;
            assert!(kills < 20, "seed {seed}: no run finished");
        }
        let out = dir.path().join("out/per_user");
        assert_eq!(output_rows(&out), expected, "seed {seed}: rows differ after {kills} kills");
        assert_eq!(data_files(&out), expected_files, "seed {seed}: files differ after {kills} kills");
        assert_clean(&out);
    }
}

#[test]
fn changed_inputs_redo_only_the_units_they_touch() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    // Two files whose categories do not overlap: c00..c02, and c10..c12 (renamed below).
    write_events(&inputs.join("a.parquet"), 30_000, 3, 2);
    let shifted = tempfile::tempdir().unwrap();
    write_events(&shifted.path().join("b.parquet"), 30_000, 3, 3);
    let sql_shift = "SELECT 'c1' || substr(category, 3, 1) AS category, user, amount, note FROM 'b.parquet'";
    let run = flow(shifted.path(), &["sql", "-o", inputs.join("b.parquet").to_str().unwrap(), sql_shift]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let p = pipeline(dir.path(), "in/*.parquet", PER_USER, "");
    let args = ["run", "--mem-budget", "64MiB", "--report", "report.json", p.to_str().unwrap()];
    assert_eq!(flow(dir.path(), &args).code, 0);
    assert_eq!(count(&unit_statuses(dir.path()), "committed"), 6);

    // Nothing changed: nothing runs, and nothing is read.
    let again = flow(dir.path(), &args);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(count(&unit_statuses(dir.path()), "skipped"), 6);
    assert_eq!(
        report(dir.path())["units"].as_array().unwrap().iter().map(|u| u["rows_read"].as_u64().unwrap()).sum::<u64>(),
        0
    );

    // Rewrite the second file with one category fewer (c12 is gone): its units redo, the first
    // file's units do not (row-group statistics show they cannot be in it), and c12's files go.
    std::thread::sleep(Duration::from_millis(20));
    let sql_fewer = "SELECT 'c1' || substr(category, 3, 1) AS category, user, amount, note FROM 'b.parquet' WHERE category <> 'c02'";
    let run = flow(shifted.path(), &["sql", "-o", inputs.join("b.parquet").to_str().unwrap(), sql_fewer]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Another tool's file in the folder is left alone, though its name starts with `part-`.
    let foreign = dir.path().join("out/per_user/part-00000-8a1e2f3c-4b5d-c000.snappy.parquet");
    std::fs::copy(inputs.join("a.parquet"), &foreign).unwrap();
    let changed = flow(dir.path(), &args);
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    assert!(foreign.exists(), "a file flow did not write was removed");
    let statuses = unit_statuses(dir.path());
    let status_of = |u: &str| statuses.iter().find(|(n, _)| n == u).map(|(_, s)| s.clone());
    for u in ["c00", "c01", "c02"] {
        assert_eq!(status_of(u).as_deref(), Some("skipped"), "{statuses:?}");
    }
    for u in ["c10", "c11"] {
        assert_eq!(status_of(u).as_deref(), Some("committed"), "{statuses:?}");
    }
    assert_eq!(status_of("c12"), None);
    let out = dir.path().join("out/per_user");
    assert!(data_files(&out).iter().all(|f| !f.contains("c12")), "{:?}", data_files(&out));
    assert!(files_in(&out.join("_flow/units")).iter().all(|f| !f.starts_with("c12")));
    let fresh = flow(dir.path(), &["sql", "SELECT count(*) AS n FROM 'out/per_user/*/*.parquet'"]);
    let expected = flow(
        dir.path(),
        &["sql", &format!("SELECT count(*) AS n FROM ({})", PER_USER.replace("events", "'in/*.parquet'"))],
    );
    assert_eq!(fresh.stdout, expected.stdout);
    assert_clean(&out);
}

#[test]
fn changed_sql_and_restart_redo_every_unit() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 20_000, 4, 4);
    pipeline(dir.path(), "events.parquet", PER_USER, "");
    let args = |extra: &'static [&'static str]| {
        let mut a = vec!["run", "--mem-budget", "64MiB", "--report", "report.json"];
        a.extend_from_slice(extra);
        a.push("pipeline.toml");
        a
    };
    assert_eq!(flow(dir.path(), &args(&[])).code, 0);
    assert_eq!(count(&unit_statuses(dir.path()), "committed"), 4);
    let restart = flow(dir.path(), &args(&["--restart"]));
    assert_eq!(restart.code, 0, "{}", restart.stderr);
    assert_eq!(count(&unit_statuses(dir.path()), "committed"), 4);

    let sql = "SELECT category, user, max(amount) AS top FROM events GROUP BY category, user";
    pipeline(dir.path(), "events.parquet", sql, "");
    let run = flow(dir.path(), &args(&[]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(count(&unit_statuses(dir.path()), "committed"), 4);
    let out = dir.path().join("out/per_user");
    let direct =
        flow(dir.path(), &["sql", &format!("SELECT count(*) AS n FROM ({sql})").replace("events", "'events.parquet'")]);
    let written = flow(dir.path(), &["sql", "SELECT count(*) AS n FROM 'out/per_user/*/*.parquet'"]);
    assert_eq!(written.stdout, direct.stdout);
    // The new result's files have its two other columns (category is in the path).
    let file = data_files(&out).into_iter().next().unwrap();
    assert_eq!(read_parquet(&out.join(file))[0].schema().field(1).name(), "top");
    assert_clean(&out);
}

#[test]
fn failing_units_are_retried_recorded_and_skipped_with_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 20_000, 4, 5);
    // Unit c02 fails on every attempt: its text ('02x'; '00' for the others) is not a number.
    let sql = "SELECT category, CAST(concat(substr(category, 2, 2), substr('x', 1, CAST(category = 'c02' AS BIGINT))) AS BIGINT) AS k, count(*) AS n FROM events GROUP BY category, k";
    pipeline(dir.path(), "events.parquet", sql, "");
    let keep = flow(
        dir.path(),
        &["run", "--mem-budget", "64MiB", "--retries", "2", "--keep-going", "--report", "report.json", "pipeline.toml"],
    );
    assert_eq!(keep.code, 1, "{}", keep.stderr);
    assert!(keep.stderr.contains("1 unit failed") && keep.stderr.contains("per_user [c02]"), "{}", keep.stderr);
    let units = report(dir.path())["units"].as_array().unwrap().clone();
    let failed: Vec<_> = units.iter().filter(|u| u["status"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["unit"], "c02");
    assert_eq!(failed[0]["attempts"], 3);
    assert_eq!(units.iter().filter(|u| u["status"] == "committed").count(), 3);
    let status = flow(dir.path(), &["status", "pipeline.toml"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.contains("3 committed, 0 pending, 1 failed"), "{}", status.stdout);
    assert!(status.stdout.contains("failed    c02  after 3 attempts (permanent)"), "{}", status.stdout);

    // Without --keep-going the run stops at the failure: units after it in the order do not run.
    let stop =
        flow(dir.path(), &["run", "--mem-budget", "64MiB", "--restart", "--report", "report.json", "pipeline.toml"]);
    assert_eq!(stop.code, 1, "{}", stop.stderr);
    assert!(stop.stderr.contains("error: step 'per_user [c02]'"), "{}", stop.stderr);
    let units = unit_statuses(dir.path());
    assert_eq!(units.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), ["c00", "c01", "c02"]);
    assert_clean(&dir.path().join("out/per_user"));
}

/// The units' loop is the engine's: a library user runs a step's units with retries and
/// `keep_going`, and sees each event; a second run skips what the first committed.
#[test]
fn a_library_user_runs_units_with_retries_and_keep_going() {
    use flow_engine::pipeline::PipelineFile;
    use flow_engine::units::{RunUnits, StepJob, Unit, UnitEvents, UnitOutcome, UnitRecord};
    use flow_engine::{Config, Engine, Error};

    #[derive(Default)]
    struct Seen(Vec<String>);
    impl UnitEvents for Seen {
        fn listed(&mut self, units: &[Unit], mine: &[Unit]) {
            self.0.push(format!("listed {} {}", units.len(), mine.len()));
        }
        fn skipped(&mut self, unit: &Unit, _record: &UnitRecord) {
            self.0.push(format!("skipped {}", unit.label));
        }
        fn committed(&mut self, unit: &Unit, attempts: u32, outcome: &UnitOutcome) {
            assert!(outcome.rows > 0);
            self.0.push(format!("committed {} {attempts}", unit.label));
        }
        fn failed(&mut self, unit: &Unit, attempts: u32, _error: &Error, retrying: bool) {
            self.0.push(format!("failed {} {attempts} {retrying}", unit.label));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 20_000, 3, 5);
    // Unit c01 fails on every attempt: its text is not a number.
    let sql = "SELECT category, CAST(concat(substr(category, 2, 2), substr('x', 1, CAST(category = 'c01' AS BIGINT))) AS BIGINT) AS k, count(*) AS n FROM events GROUP BY category, k";
    let file = PipelineFile::load(&pipeline(dir.path(), "events.parquet", sql, "")).unwrap();
    let mut engine = Engine::new(Config::default().with_mem_budget(64 << 20).with_threads(2)).unwrap();
    engine.register("events", dir.path().join("events.parquet").to_str().unwrap()).unwrap();
    let job = StepJob::new(&engine, &file.steps[0], "per_user", &file.base_dir).unwrap();
    let options = RunUnits { retries: 1, keep_going: true, ..RunUnits::default() };
    let mut seen = Seen::default();
    let failed = job.run_units(options, &mut seen).unwrap();
    assert_eq!(
        seen.0,
        ["listed 3 3", "committed c00 1", "failed c01 1 true", "failed c01 2 false", "committed c02 1"],
        "{:?}",
        seen.0
    );
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.to_string().contains("per_user [c01]"), "{}", failed[0].1);
    // Without keep_going, the failure is the error; what was committed is skipped.
    let mut again = Seen::default();
    let err = job.run_units(RunUnits::default(), &mut again).err().expect("c01 fails");
    assert!(err.to_string().contains("per_user [c01]"), "{err}");
    assert_eq!(again.0, ["listed 3 3", "skipped c00", "failed c01 1 false"]);
    assert_eq!(engine.pool().reserved(), engine.catalog_memory(), "the unit list is given back");
}

#[test]
fn three_workers_share_one_folder() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 60_000, 10, 6);
    let (expected, expected_files) = reference(&dir.path().join("events.parquet"), PER_USER, "", "64MiB");
    pipeline(dir.path(), "events.parquet", PER_USER, "priority = \"count(*) DESC\"");
    let pids: Vec<i32> = (0..3)
        .map(|i| {
            let w = dir.path().join(format!("w{i}"));
            std::fs::create_dir(&w).unwrap();
            let unit = i.to_string();
            let report = format!("../report{i}.json");
            let args = [
                "run",
                "--mem-budget",
                "48MiB",
                "--unit",
                &unit,
                "--units",
                "3",
                "--report",
                &report,
                "../pipeline.toml",
            ];
            spawn_flow(&w, &args)
        })
        .collect();
    let mut taken = Vec::new();
    for (i, pid) in pids.into_iter().enumerate() {
        let (code, _) = wait_with_rusage(pid);
        let stderr = std::fs::read_to_string(dir.path().join(format!("w{i}/.stderr"))).unwrap();
        assert_eq!(code, 0, "worker {i}: {stderr}");
        assert!(stderr.contains(&format!("worker {i} of 3 takes")), "{stderr}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(format!("report{i}.json"))).unwrap())
                .unwrap();
        taken.extend(r["units"].as_array().unwrap().iter().map(|u| u["unit"].as_str().unwrap().to_string()));
    }
    taken.sort();
    assert_eq!(taken, (0..10).map(|c| format!("c{c:02}")).collect::<Vec<_>>(), "every unit exactly once");
    let out = dir.path().join("out/per_user");
    assert_eq!(output_rows(&out), expected);
    assert_eq!(data_files(&out), expected_files);
    let status = flow(dir.path(), &["status", "pipeline.toml"]);
    assert!(status.stdout.contains("10 units: 10 committed"), "{}", status.stdout);
    assert_clean(&out);
}

#[test]
fn ctrl_c_keeps_committed_units_and_the_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 300_000, 8, 7);
    let (expected, _) = reference(&dir.path().join("events.parquet"), PER_USER, "", "24MiB");
    pipeline(dir.path(), "events.parquet", PER_USER, "");
    let records = dir.path().join("out/per_user/_flow/units");
    let pid = spawn_flow(dir.path(), &["run", "--mem-budget", "24MiB", "pipeline.toml"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&records).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "no unit committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (code, _) = wait_with_rusage(pid);
    let stderr = std::fs::read_to_string(dir.path().join(".stderr")).unwrap();
    if code == 0 {
        eprintln!("the run finished before the interrupt landed; nothing to check");
        return;
    }
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("error: interrupted"), "{stderr}");
    let out = dir.path().join("out/per_user");
    assert_clean(&out);
    let rerun = flow(dir.path(), &["run", "--mem-budget", "24MiB", "--report", "report.json", "pipeline.toml"]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert!(count(&unit_statuses(dir.path()), "skipped") >= 1, "{:?}", unit_statuses(dir.path()));
    assert_eq!(output_rows(&out), expected);
}

#[test]
fn a_full_disk_while_committing_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 100_000, 6, 8);
    // Raw rows per unit: each unit's file is about 450 KB; the limit below lets none be written.
    let sql = "SELECT category, user, amount, note FROM events";
    let (expected, expected_files) = reference(&dir.path().join("events.parquet"), sql, "", "64MiB");
    pipeline(dir.path(), "events.parquet", sql, "");
    // The file size limit makes every write past 64 KiB fail as a full disk would (EFBIG instead
    // of ENOSPC), in the unit's files, spill files and records alike.
    let mut cmd = std::process::Command::new(flow_bin());
    cmd.args(["run", "--mem-budget", "64MiB", "pipeline.toml"]).current_dir(dir.path());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "a full disk is worth a retry: {stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
    assert!(stderr.contains("per_user [c0"), "{stderr}");
    let folder = dir.path().join("out/per_user");
    assert!(data_files(&folder).is_empty(), "{:?}", data_files(&folder));
    assert_clean(&folder);
    let status = flow(dir.path(), &["status", "pipeline.toml"]);
    assert!(status.stdout.contains("may pass on retry"), "{}", status.stdout);
    // With room again, the rerun completes.
    let rerun = flow(dir.path(), &["run", "--mem-budget", "64MiB", "pipeline.toml"]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert_eq!(output_rows(&folder), expected);
    assert_eq!(data_files(&folder), expected_files);
}

#[test]
fn fifty_units_in_one_process_keep_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 500_000, 50, 9);
    pipeline(dir.path(), "events.parquet", PER_USER, "");
    let run = flow(dir.path(), &["run", "--mem-budget", "32MiB", "--report", "report.json", "pipeline.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_rss_within(&run, dir.path(), 32 << 20, "50 units");
    let units = report(dir.path())["units"].as_array().unwrap().clone();
    assert_eq!(units.len(), 50);
    for u in &units {
        assert_eq!(u["reserved_after"], 0, "{u}");
    }
    // The heap is counted exactly: between the first ten units and the last ten it may grow by
    // the run's own bookkeeping (a report entry per unit, under 1 KiB each), never by data.
    let heap: Vec<u64> = units.iter().map(|u| u["allocated_after"].as_u64().unwrap()).collect();
    eprintln!("heap after each unit (KiB): {:?}", heap.iter().map(|r| r >> 10).collect::<Vec<_>>());
    let (early, late) = (*heap[..10].iter().min().unwrap(), *heap[40..].iter().min().unwrap());
    assert!(
        late <= early + (64 << 10),
        "live heap after the last ten units at least {late}, after the first ten {early}"
    );
    // RSS also sees what is not heap (maps of spill files, thread stacks), but wobbles: the first
    // units warm up (worker threads make their allocator arenas), and single samples 3 MiB apart
    // were seen in a flat run. A leak shows as a floor that keeps rising: the lowest RSS of the
    // last ten units must not pass the highest of the first ten by more than 2 MiB.
    let rss: Vec<u64> = units.iter().map(|u| u["rss_after"].as_u64().unwrap()).collect();
    eprintln!("RSS after each unit (MiB): {:?}", rss.iter().map(|r| r >> 20).collect::<Vec<_>>());
    let (warm, late) = (*rss[..10].iter().max().unwrap(), *rss[40..].iter().min().unwrap());
    assert!(
        late <= warm + (2 << 20),
        "RSS after the last ten units at least {late}, after the first ten at most {warm}"
    );
}

#[test]
fn priority_buckets_and_plan_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 20_000, 5, 10);
    // An explicit list goes first, the rest in value order.
    pipeline(dir.path(), "events.parquet", PER_USER, "priority = [\"c03\", \"c01\"]");
    // Status before any run: every unit pending, and nothing written.
    let status = flow(dir.path(), &["status", "pipeline.toml"]);
    assert!(status.stdout.contains("5 units: 0 committed, 5 pending, 0 failed"), "{}", status.stdout);
    assert!(status.stdout.contains("pending   c03  not committed"), "{}", status.stdout);
    assert!(!dir.path().join("out").exists());
    let run = flow(dir.path(), &["run", "--mem-budget", "64MiB", "--report", "report.json", "pipeline.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let order: Vec<String> = unit_statuses(dir.path()).into_iter().map(|(u, _)| u).collect();
    assert_eq!(order, ["c03", "c01", "c00", "c02", "c04"]);
    assert!(run.stderr.contains("5 units in priority order: c03, c01, c00, c02, c04"), "{}", run.stderr);

    // Hash buckets: a user's rows all land in one unit, so per-user results are whole.
    let text = "[sources]\nevents = \"events.parquet\"\n[[steps]]\nname = \"by_user\"\nsql = \"SELECT user, count(*) AS n FROM events GROUP BY user\"\n\
         output = \"out/by_user\"\nunits = { by = \"user\", buckets = 4 }\n";
    std::fs::write(dir.path().join("buckets.toml"), text).unwrap();
    let run = flow(dir.path(), &["run", "--mem-budget", "64MiB", "buckets.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(data_files(&dir.path().join("out/by_user")).len(), 4);
    let total = flow(
        dir.path(),
        &["sql", "SELECT count(*) AS n, count(DISTINCT user) AS u, sum(n) AS rows FROM 'out/by_user/*.parquet'"],
    );
    let want = flow(
        dir.path(),
        &["sql", "SELECT count(DISTINCT user) AS n, count(DISTINCT user) AS u, count(*) AS rows FROM 'events.parquet'"],
    );
    assert_eq!(total.stdout, want.stdout);

    // Mistakes are found before anything runs, with exit code 2.
    for (extra, wanted) in [
        ("units_from = \"nope\"", "units_from 'nope' is not a source or a step"),
        (
            "units_from = \"other\"\n[sources.other]\npath = \"events.parquet\"",
            "units_from 'other' is not read by the step's SQL (it reads events)",
        ),
        ("priority = \"sum(nope) DESC\"", "priority 'sum(nope) DESC'"),
    ] {
        pipeline(dir.path(), "events.parquet", PER_USER, extra);
        let bad = flow(dir.path(), &["run", "--mem-budget", "64MiB", "pipeline.toml"]);
        assert_eq!(bad.code, 2, "{}", bad.stderr);
        assert!(bad.stderr.contains(wanted), "{}", bad.stderr);
    }
    let text = format!(
        "[sources]\nevents = \"events.parquet\"\n[[steps]]\nname = \"s\"\nsql = \"{PER_USER}\"\n\
         output = {{ path = \"out/s\", partition_by = [\"nope\"] }}\nunits = \"categroy\"\n"
    );
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    let bad = flow(dir.path(), &["run", "--mem-budget", "64MiB", "bad.toml"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("partition_by column 'nope' is not in the step's result"), "{}", bad.stderr);
    let text = std::fs::read_to_string(dir.path().join("bad.toml")).unwrap().replace("\"nope\"", "\"category\"");
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    let bad = flow(dir.path(), &["run", "--mem-budget", "64MiB", "bad.toml"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("units 'categroy' does not fit any input of the step (events)"), "{}", bad.stderr);
    assert!(bad.stderr.contains("did you mean category?"), "{}", bad.stderr);
    assert!(!dir.path().join("out/s").exists());
}

#[test]
fn the_cluster_examples_use_real_flags() {
    let help = flow(Path::new("."), &["run", "--help"]).stdout;
    for doc in ["docs/kubernetes-indexed-job.yaml", "docs/slurm-array.sh"] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        let flags: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == '=' || c == '"')
            .filter(|w| {
                w.starts_with("--") && w.len() > 2 && w[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .filter(|w| {
                ![
                    "--requeue",
                    "--job-name",
                    "--array",
                    "--cpus-per-task",
                    "--mem",
                    "--output",
                    "--path",
                    "--root",
                    "--from",
                ]
                .contains(w)
            })
            .collect();
        assert!(flags.len() >= 5, "{doc}: {flags:?}");
        for flag in flags {
            assert!(help.contains(flag), "{doc} uses {flag}, which `flow run` does not take");
        }
    }
}

#[test]
fn a_unit_spread_over_partitions_drops_the_partitions_it_no_longer_has() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("all.parquet"), 20_000, 3, 11);
    let events = dir.path().join("events.parquet");
    std::fs::copy(dir.path().join("all.parquet"), &events).unwrap();
    // Two units by hash of the user, each writing into every category's folder.
    let text = "[sources]\nevents = \"events.parquet\"\n[[steps]]\nname = \"per_user\"\n\
                sql = \"SELECT category, user, count(*) AS n FROM events GROUP BY category, user\"\n\
                output = { path = \"out/per_user\", partition_by = [\"category\"] }\n\
                units = { by = \"user\", buckets = 2 }\n";
    std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
    let run = flow(dir.path(), &["run", "--mem-budget", "64MiB", "pipeline.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = dir.path().join("out/per_user");
    assert_eq!(data_files(&out).iter().filter(|f| f.starts_with("category=c01/")).count(), 2);
    // Category c01 leaves the input: both units redo, and drop their c01 files.
    std::thread::sleep(Duration::from_millis(20));
    let sql = "SELECT * FROM 'all.parquet' WHERE category <> 'c01'";
    let tmp = dir.path().join("fewer.parquet");
    assert_eq!(flow(dir.path(), &["sql", "-o", tmp.to_str().unwrap(), sql]).code, 0);
    std::fs::rename(&tmp, &events).unwrap();
    let rerun = flow(dir.path(), &["run", "--mem-budget", "64MiB", "pipeline.toml"]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert!(data_files(&out).iter().all(|f| !f.starts_with("category=c01")), "{:?}", data_files(&out));
    assert!(!out.join("category=c01").exists(), "the emptied partition folder goes too");
    let direct = flow(
        dir.path(),
        &["sql", "SELECT count(*) AS n, sum(n) AS rows FROM (SELECT category, user, count(*) AS n FROM 'events.parquet' GROUP BY category, user)"],
    );
    let written = flow(dir.path(), &["sql", "SELECT count(*) AS n, sum(n) AS rows FROM 'out/per_user/*/*.parquet'"]);
    assert_eq!(written.stdout, direct.stdout);
    // flow reads the folder back with its partition column, as DuckDB would.
    let per_category = "SELECT category, count(*) AS users, sum(n) AS rows FROM {} GROUP BY category ORDER BY category";
    let direct = flow(
        dir.path(),
        &[
            "sql",
            &per_category
                .replace("{}", "(SELECT category, user, count(*) AS n FROM 'events.parquet' GROUP BY category, user)"),
        ],
    );
    let written = flow(dir.path(), &["sql", &per_category.replace("{}", "'out/per_user'")]);
    assert_eq!(written.code, 0, "{}", written.stderr);
    assert_eq!(written.stdout, direct.stdout);
    assert!(written.stdout.contains("| c02 "), "{}", written.stdout);
    assert_clean(&out);
}

#[test]
fn many_partitions_under_a_small_budget_one_file_each_and_rerun_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.parquet"), 60_000, 4, 12);
    // One unit (partition_by alone), 400 partitions: more open writers than 16 MiB would hold,
    // but the rows come sorted by partition, so one is open at a time and each gets one file.
    let step = |filter: &str| {
        format!(
            "[sources]\nevents = \"events.parquet\"\n[[steps]]\nname = \"by_bucket\"\n\
             sql = \"SELECT user % 400 AS bucket, user, amount FROM events {filter}\"\n\
             output = {{ path = \"out/by_bucket\", partition_by = [\"bucket\"] }}\n"
        )
    };
    std::fs::write(dir.path().join("pipeline.toml"), step("")).unwrap();
    let run = flow(dir.path(), &["run", "--mem-budget", "16MiB", "pipeline.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = dir.path().join("out/by_bucket");
    let files = data_files(&out);
    assert_eq!(files.len(), 400, "not one file per partition: {:?}", &files[..files.len().min(8)]);
    assert!(files.iter().all(|f| f.ends_with("part-all.parquet")), "{:?}", &files[..files.len().min(8)]);
    let count = |sql: &str| flow(dir.path(), &["sql", sql]).stdout;
    assert_eq!(
        count("SELECT count(*) AS n, sum(amount) AS s, count(DISTINCT bucket) AS b FROM 'out/by_bucket'"),
        count("SELECT count(*) AS n, sum(amount) AS s, count(DISTINCT user % 400) AS b FROM 'events.parquet'")
    );
    // Five partitions: each fits one file, and every other file and folder of the first run goes.
    std::fs::write(dir.path().join("pipeline.toml"), step("WHERE user % 400 < 5")).unwrap();
    let rerun = flow(dir.path(), &["run", "--mem-budget", "16MiB", "pipeline.toml"]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    let files = data_files(&out);
    assert_eq!(files.len(), 5, "files of the first run left behind: {:?}", &files[..files.len().min(8)]);
    assert_eq!(
        count("SELECT count(*) AS n, sum(amount) AS s FROM 'out/by_bucket'"),
        count("SELECT count(*) AS n, sum(amount) AS s FROM 'events.parquet' WHERE user % 400 < 5")
    );
    assert_clean(&out);
}
