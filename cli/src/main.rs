//! `flow`: run pipelines and SQL over data bigger than memory.
//!
//! Exit codes separate "fix the input" from "run me again":
//! - 0 success;
//! - 2 bad input (usage, pipeline file, SQL, schema, missing or corrupt file): permanent;
//! - 1 a failure while running that another attempt would repeat (a budget that cannot be met, a
//!   bad value in the data): permanent;
//! - 75 a failure another attempt may not hit (I/O errors such as a full disk, the spill limit):
//!   retry;
//! - 130 interrupted (Ctrl-C or SIGTERM): retry; committed units are kept.

mod args;
mod bench;
mod generate;
mod progress;
mod report;
mod signal;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use flow_engine::pipeline::PipelineFile;
use flow_engine::{human, Codec, Config, Engine, Error, OutputFormat, Overwrite, WriteOptions};

use crate::args::{Cli, Command, CommonArgs, GenCommand, SourceArgs, UnitArgs, WriteArgs};
use crate::report::{Report, StepReport, UnitReport};
use flow_engine::units::{assigned, RunUnits, StepJob, Unit, UnitEvents, UnitOutcome, UnitRecord, UnitState};

/// The SQL text being planned or run, so that an error pointing into it can show the spot.
static SQL_CONTEXT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn set_sql(sql: &str) {
    *SQL_CONTEXT.lock().unwrap_or_else(|e| e.into_inner()) = Some(sql.to_string());
}

/// Prints an error: one line, then, for an error at a place in the SQL, that line of the SQL
/// with a caret under the spot.
fn print_error(e: &Error) {
    eprintln!("error: {e}");
    let Some((line, column)) = e.position() else { return };
    let sql = SQL_CONTEXT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(c) = sql.and_then(|sql| flow_engine::caret(&sql, line, column)) {
        eprintln!("{c}");
    }
}

/// Exit code for failures worth retrying (`EX_TEMPFAIL`).
const EXIT_RETRY: u8 = 75;

/// How `flow run` treats units.
#[derive(Debug, Clone, Copy)]
struct RunOptions {
    restart: bool,
    retries: u32,
    keep_going: bool,
    units: UnitArgs,
}

#[global_allocator]
static ALLOC: flow_engine::alloc::CountingAllocator = flow_engine::alloc::CountingAllocator::system();

/// The binary is linked as a position-dependent executable (see `build.rs`): a position-
/// independent one applies 2.3 MB of relocations at start, which keep their table and the 1.9 MB
/// of pointers they write resident for the whole run, a sixth of the RSS of a run at a few MiB.
///
/// glibc's malloc raises its mmap threshold each time a large block is freed, after which large
/// buffers (Parquet pages, batches) come from the heap and leave it fragmented: RSS grows well past
/// what is allocated. A fixed threshold keeps large buffers in their own mappings, returned to the
/// OS on free. Fresh mappings cost page faults, though (a seventh of the CPU time of a wide scan at
/// 256 KiB), so the threshold grows with the budget: a budget of 32 MiB gets 256 KiB, 512 MiB and
/// more get 4 MiB, where the fragmentation it allows is small next to the budget's 10% headroom.
/// Likewise free memory at the top of a heap goes back to the OS only past a sixteenth of the
/// budget (1 to 32 MiB): with 1 MiB, a scan of lineitem at scale factor 10 to Parquet spent 1.9 s
/// of its 7.6 s of CPU in the kernel, faulting in pages it had just given back; with 32 MiB, 1.0 s
/// (4.5 s to 4.0 s of wall time). The pool's own trims (see `memory.rs`) still return what
/// piles up.
fn tune_malloc(budget: u64) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        // glibc's own variables win, for experiments.
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            let threshold = (budget / 128).clamp(256 << 10, 4 << 20);
            libc::mallopt(libc::M_MMAP_THRESHOLD, threshold as libc::c_int);
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
            let threshold = (budget / 16).clamp(1 << 20, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, threshold as libc::c_int);
        }
        // Each thread's arena keeps free memory of its own (up to the trim threshold at its top,
        // and what fragmentation strands): under a small budget that is a large share. One arena
        // per 64 MiB of budget, all of them from 256 MiB: a join and aggregation spilling at
        // 2.3 MiB peaked at 24.7 MiB of RSS with one arena, 26.9 with one per thread.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() && budget < 256 << 20 {
            libc::mallopt(libc::M_ARENA_MAX, (budget >> 26).max(1) as libc::c_int);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = budget;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    signal::install();
    // Internal errors reach the user as one `error:` line through the engine; keep the default
    // multi-line panic report for FLOW_BACKTRACE=1.
    if std::env::var_os("FLOW_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    // A bug must not end the run without a word: a panic becomes an error like any other. The
    // command runs on a thread with the stack the engine's deepest passes want (see
    // `flow_engine::stack`), so they never switch stacks.
    let run = std::thread::scope(|scope| {
        let command = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_command(&cli)));
        match std::thread::Builder::new()
            .name("flow".into())
            .stack_size(flow_engine::stack::SEGMENT)
            .spawn_scoped(scope, command)
        {
            Ok(thread) => thread.join().unwrap_or_else(Err),
            // No room for that stack: run here, the engine grows its own.
            Err(_) => command(),
        }
    });
    let result = run.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Execution(format!("internal error: {what} (hint: FLOW_BACKTRACE=1 shows where)")))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_cancelled() || signal::interrupted() => {
            eprintln!("error: interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            print_error(&e);
            ExitCode::from(exit_code(&e))
        }
    }
}

fn run_command(cli: &Cli) -> Result<(), Error> {
    match &cli.command {
        Command::Run { common, units, restart, retries, keep_going, pipeline } => {
            let options = RunOptions { restart: *restart, retries: *retries, keep_going: *keep_going, units: *units };
            run_pipeline(common, options, pipeline, cli.verbose)
        }
        Command::Status { common, units, pipeline } => status(common, *units, pipeline),
        Command::Sql { common, sources, output, write, query } => {
            run_sql(common, sources, output.as_deref(), write, query, cli.verbose)
        }
        Command::Explain { common, sources, analyze, step, query } => {
            explain(common, sources, *analyze, step.as_deref(), query, cli.verbose)
        }
        Command::Inspect { row_groups, files } => inspect(files, *row_groups),
        Command::Functions { name } => list_functions(name.as_deref()),
        Command::Bench(args) => bench::run(args),
        Command::Gen { what } => generate(what, cli.verbose),
    }
}

fn exit_code(e: &Error) -> u8 {
    if e.is_bad_input() {
        2
    } else if e.is_transient() {
        EXIT_RETRY
    } else {
        1
    }
}

/// Builds the run's configuration: flags (and their environment variables) first, then the
/// pipeline's `[settings]`, then defaults.
fn config(
    common: &CommonArgs,
    settings: Option<&flow_engine::pipeline::Settings>,
    verbose: bool,
) -> Result<Config, Error> {
    let mut config = Config::default();
    let from_settings = |f: fn(&flow_engine::pipeline::Settings) -> Option<String>| settings.and_then(f);
    match common.mem_budget.clone().or_else(|| from_settings(|s| s.mem_budget.clone())) {
        Some(b) => config.mem_budget = flow_engine::parse_size(&b)?,
        None => {
            if verbose {
                eprintln!(
                    "flow: no --mem-budget given: using {} (half of the {} available to this process)",
                    human(config.mem_budget),
                    human(flow_engine::available_memory())
                );
            }
        }
    }
    if let Some(t) = common.threads.or_else(|| settings.and_then(|s| s.threads)) {
        if t == 0 {
            return Err(Error::Config("--threads must be at least 1".into()));
        }
        config = config.with_threads(t);
    }
    if let Some(d) = common.spill_dir.clone().or_else(|| from_settings(|s| s.spill_dir.clone()).map(Into::into)) {
        config = config.with_spill_dir(d);
    }
    if let Some(m) = common.max_spill.clone().or_else(|| from_settings(|s| s.max_spill.clone())) {
        config = config.with_max_spill(flow_engine::parse_size(&m)?);
    }
    if let Some(b) = settings.and_then(|s| s.batch_size) {
        config = config.with_batch_size(b);
    }
    tune_malloc(config.mem_budget);
    if verbose {
        eprintln!(
            "flow: budget {}, {} threads, spill dir {}, max spill {}, batch size {}",
            human(config.mem_budget),
            config.threads,
            config.spill_dir.display(),
            if config.max_spill == u64::MAX { "unlimited".to_string() } else { human(config.max_spill) },
            config.batch_size
        );
    }
    Ok(config)
}

/// Loads a pipeline file into an engine: sources registered, every step planned (so a mistake in
/// the last step costs nothing), and a job for every step that writes a folder unit by unit.
fn open_pipeline(common: &CommonArgs, path: &Path, verbose: bool) -> Result<(PipelineFile, Engine), Error> {
    let file = PipelineFile::load(path)?;
    let config = config(common, Some(&file.settings), verbose)?;
    let mut engine = Engine::new(config)?;
    file.prepare(&mut engine, |step| set_sql(&step.sql))?;
    Ok((file, engine))
}

/// Whether a step writes a folder unit by unit (it has units or partitioned output).
fn has_units(step: &flow_engine::pipeline::StepSpec) -> bool {
    step.units.is_some() || step.output.as_ref().is_some_and(|o| !o.partition_by().is_empty())
}

fn unit_jobs<'e>(file: &PipelineFile, engine: &'e Engine) -> Result<Vec<Option<StepJob<'e>>>, Error> {
    file.steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let label = step.label(i);
            has_units(step)
                .then(|| StepJob::new(engine, step, &label, &file.base_dir).map_err(|e| e.in_step(&label)))
                .transpose()
        })
        .collect()
}

fn check_workers(units: UnitArgs) -> Result<(), Error> {
    if units.workers == 0 || units.worker >= units.workers {
        return Err(Error::Config(format!(
            "--unit {} --units {}: the worker number must be below the number of workers",
            units.worker, units.workers
        )));
    }
    Ok(())
}

fn run_pipeline(common: &CommonArgs, options: RunOptions, path: &Path, verbose: bool) -> Result<(), Error> {
    let started = Instant::now();
    check_workers(options.units)?;
    let (file, engine) = open_pipeline(common, path, verbose)?;
    signal::watch(engine.cancel_flag());
    let jobs = unit_jobs(&file, &engine)?;
    let mut report = Report::new(engine.config());
    let progress = progress::Progress::start(&engine);
    let mut failed = Vec::new();
    let result = run_steps(&file, &engine, &jobs, options, &progress, &mut report, &mut failed);
    progress.finish();
    report.finish(&engine, started);
    if result.is_ok() || !report.units.is_empty() {
        eprintln!("{}", report.summary());
    }
    // The report is written whatever happened: it lists the units that failed and why.
    if let Some(path) = &common.report {
        report.write(path)?;
    }
    result?;
    if failed.is_empty() {
        return Ok(());
    }
    // The exit code follows the failures: retry only when every one of them may pass next time.
    let transient = failed.iter().all(|(_, e)| e.is_transient());
    Err(Error::UnitsFailed { failures: failed.iter().map(|(unit, e)| format!("{unit}: {e}")).collect(), transient })
}

fn run_steps(
    file: &PipelineFile,
    engine: &Engine,
    jobs: &[Option<StepJob<'_>>],
    options: RunOptions,
    progress: &progress::Progress,
    report: &mut Report,
    failed: &mut Vec<(String, Error)>,
) -> Result<(), Error> {
    for (i, step) in file.steps.iter().enumerate() {
        if step.output.is_none() {
            continue;
        }
        let label = step.label(i);
        if let Some(job) = &jobs[i] {
            failed.extend(run_units(engine, job, &label, options, progress, report)?);
            continue;
        }
        if options.units.worker != 0 {
            // Steps without units run once, on the first worker.
            continue;
        }
        // Each step's report shows its own allocation peak.
        flow_engine::alloc::reset_peak();
        set_sql(&step.sql);
        let started = |query: &flow_engine::Query<'_>| {
            flow_engine::alloc::release_code_pages();
            progress.start_query(&label, query.input_rows());
        };
        let Some((summary, metrics)) = file.run_step(engine, i, started)? else { continue };
        report.steps.push(StepReport::new(&label, Some(&summary), &metrics));
    }
    Ok(())
}

/// Runs this worker's units of one step (see `StepJob::run_units`), showing them on the progress
/// display and in the report. Returns the units that failed (with `--keep-going`; otherwise the
/// first failure is the error).
fn run_units(
    engine: &Engine,
    job: &StepJob<'_>,
    label: &str,
    options: RunOptions,
    progress: &progress::Progress,
    report: &mut Report,
) -> Result<Vec<(String, Error)>, Error> {
    let run = RunUnits {
        restart: options.restart,
        retries: options.retries,
        keep_going: options.keep_going,
        worker: options.units.worker,
        workers: options.units.workers,
    };
    let mut shown =
        ShownUnits { engine, label, options, progress, report, bookkeeping: 0, spill_before: engine.spill().stats() };
    let failed = job.run_units(run, &mut shown)?;
    progress.finish_units();
    Ok(failed.into_iter().map(|(unit, e)| (format!("{label} [{}]", unit.label), e)).collect())
}

/// A step's units as the progress display and the report show them.
struct ShownUnits<'a> {
    engine: &'a Engine,
    label: &'a str,
    options: RunOptions,
    progress: &'a progress::Progress,
    report: &'a mut Report,
    /// What the unit list holds in the pool while the step runs.
    bookkeeping: u64,
    spill_before: flow_engine::SpillStats,
}

impl UnitEvents for ShownUnits<'_> {
    fn listed(&mut self, units: &[Unit], mine: &[Unit]) {
        self.bookkeeping = StepJob::bookkeeping_bytes(units);
        self.progress.println(&describe_units(self.label, units, mine, self.options.units));
        self.progress.start_units(self.label, mine.len());
    }

    fn skipped(&mut self, unit: &Unit, record: &UnitRecord) {
        let entry = unit_report(self.label, unit, 0);
        self.report.units.push(UnitReport { status: "skipped", rows: record.rows, files: record.files.len(), ..entry });
        self.progress.unit_done();
    }

    fn attempt(&mut self, job: &StepJob<'_>, unit: &Unit, _attempt: u32) {
        flow_engine::alloc::reset_peak();
        let name = format!("{} [{}]", self.label, unit.label);
        self.progress.start_query(&name, job.query(unit).ok().and_then(|q| q.input_rows()));
        self.spill_before = self.engine.spill().stats();
        flow_engine::alloc::release_code_pages();
    }

    fn committed(&mut self, unit: &Unit, attempts: u32, outcome: &UnitOutcome) {
        let mut entry = unit_report(self.label, unit, attempts);
        release_memory(self.engine, &mut entry, self.bookkeeping);
        let m = &outcome.metrics;
        self.report.units.push(UnitReport {
            status: "committed",
            rows: outcome.rows,
            files: outcome.files.len(),
            rows_read: m.rows_read,
            bytes_read: m.bytes_read,
            elapsed_ms: m.elapsed.as_millis(),
            peak_accounted: m.peak_reserved,
            peak_allocated: flow_engine::alloc::allocated_peak(),
            spill: spill_delta(self.engine.spill().stats(), self.spill_before),
            ..entry
        });
        self.progress.unit_done();
    }

    fn failed(&mut self, unit: &Unit, attempts: u32, e: &Error, retrying: bool) {
        let mut entry = unit_report(self.label, unit, attempts);
        release_memory(self.engine, &mut entry, self.bookkeeping);
        if retrying {
            let of = self.options.retries + 1;
            self.progress.println(&format!("flow: {e} (attempt {attempts} of {of}; retrying)"));
            return;
        }
        self.report.units.push(UnitReport { status: "failed", error: Some(e.to_string()), ..entry });
        if self.options.keep_going {
            self.progress.println(&format!("flow: {e} (going on with the other units)"));
            self.progress.unit_done();
        }
    }
}

fn unit_report(step: &str, unit: &Unit, attempts: u32) -> UnitReport {
    UnitReport {
        step: step.to_string(),
        unit: unit.label.clone(),
        id: unit.id.clone(),
        status: "pending",
        attempts,
        error: None,
        rows: 0,
        files: 0,
        rows_read: 0,
        bytes_read: 0,
        elapsed_ms: 0,
        peak_accounted: 0,
        peak_allocated: None,
        spill: Default::default(),
        reserved_after: 0,
        rss_after: None,
        allocated_after: None,
    }
}

/// After a unit: every reservation of its query is back in the pool (what stays is the step's
/// `bookkeeping` and the registered tables' footers), and freed heap goes back to the system.
fn release_memory(engine: &Engine, entry: &mut UnitReport, bookkeeping: u64) {
    flow_engine::alloc::release_free_memory();
    entry.reserved_after = engine.pool().reserved().saturating_sub(bookkeeping + engine.catalog_memory());
    entry.rss_after = flow_engine::alloc::current_rss();
    entry.allocated_after = flow_engine::alloc::allocated_now();
}

fn spill_delta(after: flow_engine::SpillStats, before: flow_engine::SpillStats) -> flow_engine::SpillStats {
    flow_engine::SpillStats {
        files: after.files - before.files,
        bytes: after.bytes - before.bytes,
        rows: after.rows - before.rows,
        peak_on_disk: after.peak_on_disk,
    }
}

/// `per_category: 12 units in priority order: B (5000), A (3100), ... ; this worker (1 of 3) takes 4`
fn describe_units(step: &str, units: &[Unit], mine: &[Unit], workers: UnitArgs) -> String {
    let shown: Vec<String> = units
        .iter()
        .take(10)
        .map(|u| match &u.priority {
            Some(p) => format!("{} ({p})", u.label),
            None => u.label.clone(),
        })
        .collect();
    let more = if units.len() > 10 { format!(", ... {} more", units.len() - 10) } else { String::new() };
    let share = if workers.workers > 1 {
        format!("; worker {} of {} takes {}", workers.worker, workers.workers, mine.len())
    } else {
        String::new()
    };
    format!(
        "flow: {step}: {} unit{} in priority order: {}{more}{share}",
        units.len(),
        if units.len() == 1 { "" } else { "s" },
        shown.join(", ")
    )
}

/// `flow status`: every unit of every step with units, as committed, pending or failed.
fn status(common: &CommonArgs, workers: UnitArgs, path: &Path) -> Result<(), Error> {
    check_workers(workers)?;
    let (file, engine) = open_pipeline(common, path, false)?;
    let jobs = unit_jobs(&file, &engine)?;
    let mut out = String::new();
    for (i, job) in jobs.iter().enumerate() {
        let Some(job) = job else { continue };
        let label = file.steps[i].label(i);
        let units = job.peek_units().map_err(|e| e.in_step(&label))?;
        let mine = assigned(&units, workers.worker, workers.workers);
        let mut lines = Vec::new();
        let (mut committed, mut pending, mut failed) = (0, 0, 0);
        for unit in &mine {
            let (state, detail) = match job.state(unit).map_err(|e| e.in_step(&label))? {
                UnitState::Committed(r) => {
                    committed += 1;
                    ("committed", format!("{} rows in {} files", r.rows, r.files.len()))
                }
                UnitState::Pending(reason) => {
                    pending += 1;
                    ("pending", reason)
                }
                UnitState::Failed(f) => {
                    failed += 1;
                    let kind = if f.transient { "may pass on retry" } else { "permanent" };
                    ("failed", format!("after {} attempts ({kind}): {}", f.attempts, f.error))
                }
            };
            lines.push(format!("  {state:<9} {}  {detail}", unit.label));
        }
        out.push_str(&format!(
            "{label} -> {}: {} units: {committed} committed, {pending} pending, {failed} failed\n{}\n",
            job.dir().display(),
            mine.len(),
            lines.join("\n")
        ));
    }
    if out.is_empty() {
        out = "no step has units or partition_by\n".into();
    }
    print!("{out}");
    Ok(())
}

/// Registers `--source NAME=PATH`, and the files and folders of each `--sources DIR` that `sql`
/// reads (a registered table's footers count in the budget: a folder's other files must not).
fn register_sources(engine: &mut Engine, sources: &SourceArgs, sql: &[&str]) -> Result<(), Error> {
    let wanted: Vec<String> = sql.iter().flat_map(|text| flow_engine::sql::mentioned_names(text)).collect();
    for dir in &sources.source_dirs {
        let entries =
            std::fs::read_dir(dir).map_err(|e| Error::BadFile { path: dir.clone(), message: e.to_string() })?;
        let mut found: Vec<(String, std::path::PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            // `x.csv.gz` is `x`, like `x.csv`.
            let file_name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let plain = ["gz", "zst", "zstd"]
                .iter()
                .find_map(|c| file_name.strip_suffix(&format!(".{c}")))
                .unwrap_or(&file_name)
                .to_string();
            let (stem, extension) = plain.rsplit_once('.').unwrap_or((&plain, ""));
            let known = path.is_dir() || matches!(extension, "parquet" | "csv" | "tsv" | "json" | "ndjson" | "jsonl");
            let stem = if path.is_dir() { file_name.clone() } else { stem.to_string() };
            if known && !stem.starts_with('.') && !stem.starts_with('_') {
                found.push((stem, path));
            }
        }
        found.sort();
        for (name, path) in found {
            if wanted.contains(&name.to_ascii_lowercase()) {
                engine.register(&name, &path.to_string_lossy())?;
            }
        }
    }
    for spec in &sources.sources {
        let (name, path) = spec.split_once('=').ok_or_else(|| {
            Error::Config(format!("--source {spec}: expected NAME=PATH (e.g. lineitem=tpch/lineitem.parquet)"))
        })?;
        engine.register(name.trim(), path.trim())?;
    }
    Ok(())
}

/// `flow explain`: the plans of a query, or of a pipeline's steps.
fn explain(
    common: &CommonArgs,
    sources: &SourceArgs,
    analyze: bool,
    step: Option<&str>,
    query: &str,
    verbose: bool,
) -> Result<(), Error> {
    let pipeline = query.trim_end().ends_with(".toml") && Path::new(query.trim()).is_file();
    let (engine, steps) = if pipeline {
        let (file, mut engine) = open_pipeline(common, Path::new(query.trim()), verbose)?;
        let texts: Vec<&str> = file.steps.iter().map(|s| s.sql.as_str()).collect();
        register_sources(&mut engine, sources, &texts)?;
        let steps: Vec<(String, String)> = file
            .steps
            .iter()
            .enumerate()
            .filter(|(i, s)| step.is_none_or(|want| s.label(*i) == want || s.name.as_deref() == Some(want)))
            .map(|(i, s)| (s.label(i), s.sql.clone()))
            .collect();
        if steps.is_empty() {
            let known: Vec<String> = file.steps.iter().enumerate().map(|(i, s)| s.label(i)).collect();
            return Err(Error::Config(format!(
                "no step named '{}' (steps: {})",
                step.unwrap_or_default(),
                known.join(", ")
            )));
        }
        (engine, steps)
    } else {
        if step.is_some() {
            return Err(Error::Config("--step goes with a pipeline file".into()));
        }
        let mut engine = Engine::new(config(common, None, verbose)?)?;
        register_sources(&mut engine, sources, &[query])?;
        (engine, vec![(String::new(), query.to_string())])
    };
    signal::watch(engine.cancel_flag());
    let mut out = String::new();
    for (label, sql) in steps {
        set_sql(&sql);
        let in_step = |e: Error| if label.is_empty() { e } else { e.in_step(&label) };
        if !label.is_empty() {
            out.push_str(&format!("== step {label} ==\n"));
        }
        let q = engine.sql(&sql).map_err(in_step)?;
        if analyze {
            let (text, _) = q.explain_analyze().map_err(in_step)?;
            out.push_str(&text);
        } else {
            out.push_str(&q.explain());
        }
    }
    print!("{out}");
    Ok(())
}

fn generate(what: &GenCommand, verbose: bool) -> Result<(), Error> {
    match what {
        GenCommand::Tpch { common, scale, tables, output } => {
            let engine = Engine::new(config(common, None, verbose)?)?;
            let tables: Vec<String> = if tables.is_empty() {
                generate::TPCH_TABLES.iter().map(|t| t.to_string()).collect()
            } else {
                tables.iter().map(|t| t.trim().to_ascii_lowercase()).collect()
            };
            generate::tpch(&engine, *scale, output, &tables, &WriteOptions::default())
        }
        GenCommand::Table { common, rows, keys, skew, categories, nulls, string_len, seed, output } => {
            let engine = Engine::new(config(common, None, verbose)?)?;
            let spec = flow_engine::generate::TableSpec {
                rows: generate::parse_count(rows)?,
                keys: generate::parse_count(keys)?,
                skew: *skew,
                categories: *categories,
                nulls: *nulls,
                string_len: generate::parse_range(string_len)?,
                seed: *seed,
            };
            spec.check()?;
            let started = Instant::now();
            let summary = engine.install(|| spec.write(output, engine.pool(), &WriteOptions::default()))?;
            eprintln!(
                "flow: {} {} rows, {} in {:.1}s",
                output.display(),
                summary.rows,
                human(summary.bytes),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// `flow functions [NAME]`: the scalar functions by group, from the engine's registry; with
/// `NAME`, those whose names contain it.
fn list_functions(name: Option<&str>) -> Result<(), Error> {
    use flow_engine::expr::{functions, Group};
    let name = name.map(|n| n.to_ascii_lowercase());
    let matches = |d: &flow_engine::expr::FunctionDef| {
        name.as_deref().is_none_or(|n| std::iter::once(&d.name).chain(d.aliases).any(|a| a.contains(n)))
    };
    let mut out = String::new();
    let groups = [
        (Group::String, "Strings"),
        (Group::Number, "Numbers"),
        (Group::Date, "Dates and times"),
        (Group::General, "Any type"),
    ];
    for (group, title) in groups {
        let defs: Vec<_> = functions().filter(|d| d.group == group && matches(d)).collect();
        if defs.is_empty() {
            continue;
        }
        out.push_str(&format!("{title}:\n"));
        for d in defs {
            let also = match d.aliases {
                [] => String::new(),
                names => format!(" (also {})", names.join(", ")),
            };
            out.push_str(&format!("  {}: {}{also}\n", d.signature, d.doc));
        }
    }
    match (out.is_empty(), name) {
        (true, Some(n)) => {
            Err(Error::Config(format!("no function's name contains '{n}' (flow functions lists them all)")))
        }
        _ => {
            print!("{out}");
            Ok(())
        }
    }
}

fn inspect(patterns: &[String], row_groups: bool) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let mut first = true;
    for pattern in patterns {
        for path in flow_engine::source::expand_files(pattern)? {
            let text = flow_engine::inspect::describe(&path, row_groups)?;
            let written = write!(out, "{}{text}", if first { "" } else { "\n" });
            first = false;
            match written {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(Error::Execution(format!("writing to stdout: {e}"))),
                Ok(()) => {}
            }
        }
    }
    Ok(())
}

fn write_options(args: &WriteArgs) -> Result<WriteOptions, Error> {
    let size = |s: &Option<String>, what: &str| -> Result<Option<u64>, Error> {
        match s.as_deref().map(flow_engine::parse_size).transpose()? {
            Some(0) => Err(Error::Config(format!("--{what} must be above 0"))),
            other => Ok(other),
        }
    };
    if args.row_group_rows == Some(0) {
        return Err(Error::Config("--row-group-rows must be above 0".into()));
    }
    Ok(WriteOptions {
        compression: args.compression.as_deref().map(Codec::parse).transpose()?.unwrap_or_default(),
        row_group_rows: args.row_group_rows,
        row_group_bytes: size(&args.row_group_size, "row-group-size")?,
        max_file_bytes: size(&args.max_file_size, "max-file-size")?,
        overwrite: args.overwrite.as_deref().map(Overwrite::parse).transpose()?.unwrap_or_default(),
    })
}

/// Whether `-o` names standard output: `-`, or the paths that are standard output on Linux.
fn is_stdout(path: &Path) -> bool {
    matches!(path.to_str(), Some("-" | "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1"))
}

/// Whether an error is a write to a closed pipe.
fn broken_pipe(e: &Error) -> bool {
    matches!(e.inner(), Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run_sql(
    common: &CommonArgs,
    sources: &SourceArgs,
    output: Option<&Path>,
    write: &WriteArgs,
    sql: &str,
    verbose: bool,
) -> Result<(), Error> {
    let started = Instant::now();
    if output.is_none() && write.format.is_none() && write.any() {
        return Err(Error::Config("writer options (--compression, --partition-by, ...) need -o".into()));
    }
    let options = write_options(write)?;
    set_sql(sql);
    let config = config(common, None, verbose)?;
    let mut engine = Engine::new(config)?;
    register_sources(&mut engine, sources, &[sql])?;
    signal::watch(engine.cancel_flag());
    let query = engine.sql(sql)?;
    // The planner's code is not needed while the query runs (see `release_code_pages`).
    flow_engine::alloc::release_code_pages();
    let mut report = Report::new(engine.config());
    let format = write.format.as_deref().map(OutputFormat::parse).transpose()?;
    let stream = match output {
        Some(path) => is_stdout(path),
        None => format.is_some(),
    };
    match output {
        _ if stream => {
            if !write.partition_by.is_empty() || options.max_file_bytes.is_some() {
                return Err(Error::Config(
                    "--partition-by and --max-file-size write a folder: -o must name one, not standard output".into(),
                ));
            }
            let stdout: Box<dyn Write + Send> = Box::new(std::io::stdout());
            match query.write_to(stdout, format.unwrap_or(OutputFormat::Csv), &options) {
                Ok(_) => {}
                // A closed pipe (`flow sql -o - ... | head`) is not an error.
                Err(e) if broken_pipe(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
            if verbose {
                report.finish(&engine, started);
                eprintln!("{}", report.summary());
            }
        }
        Some(path) => {
            let progress = progress::Progress::start(&engine);
            let format = match format {
                Some(f) => f,
                None => OutputFormat::from_path(path)?,
            };
            let (summary, metrics) = query.write_output(path, format, &write.partition_by, &options)?;
            progress.finish();
            report.steps.push(StepReport::new("sql", Some(&summary), &metrics));
            report.finish(&engine, started);
            eprintln!("{}", report.summary());
        }
        None => {
            let schema = query.schema();
            let batches = query.collect()?;
            let options = arrow::util::display::FormatOptions::default().with_null("NULL");
            let table = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches_with_options(
                    &[arrow::array::RecordBatch::new_empty(schema)],
                    &options,
                )
            } else {
                arrow::util::pretty::pretty_format_batches_with_options(&batches, &options)
            }
            .map_err(|e| Error::Execution(e.to_string()))?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let mut out = std::io::stdout().lock();
            let written = writeln!(out, "{table}")
                .and_then(|_| writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" }));
            match written {
                // A closed pipe (`flow sql ... | head`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(Error::Execution(format!("writing to stdout: {e}"))),
                Ok(()) => {}
            }
            if verbose {
                report.finish(&engine, started);
                eprintln!("{}", report.summary());
            }
        }
    }
    if let Some(path) = &common.report {
        report.finish(&engine, started);
        report.write(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_counting_allocator_keeps_the_count_of_threads_that_ended() {
        // Each thread allocates less than it publishes at once, and hands what it allocated back
        // before it ends: the count must still have it.
        let before = flow_engine::alloc::allocated_now().expect("installed in this binary");
        let kept: Vec<Vec<u8>> = (0..64).map(|_| std::thread::spawn(|| vec![1u8; 100 << 10]).join().unwrap()).collect();
        let after = flow_engine::alloc::allocated_now().unwrap();
        let expected = 64 * (100 << 10);
        let slack = 2 * flow_engine::alloc::FLUSH_BYTES as u64;
        assert!(after + slack >= before + expected, "{before} then {after}: {expected} allocated");
        drop(kept);
    }
}
