//! `flow`: run pipelines and SQL over data bigger than memory.
//!
//! Exit codes: 0 success; 2 bad input (usage, pipeline file, SQL, schema, missing or corrupt file);
//! 1 failure while running (I/O, disk limit, a budget that cannot be met); 130 interrupted (Ctrl-C).

mod args;
mod progress;
mod report;
mod signal;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use flow_engine::pipeline::PipelineFile;
use flow_engine::{human, Config, Engine, Error, OutputFormat};

use crate::args::{Cli, Command, CommonArgs};
use crate::report::{Report, StepReport};

#[global_allocator]
static ALLOC: flow_engine::alloc::CountingAllocator = flow_engine::alloc::CountingAllocator::system();

/// glibc's malloc raises its mmap threshold each time a large block is freed, after which large
/// buffers (Parquet pages, batches) come from the heap and leave it fragmented: RSS grows well past
/// what is allocated. A fixed threshold keeps large buffers in their own mappings, returned to the
/// OS on free. Fresh mappings cost page faults, though (a seventh of the CPU time of a wide scan at
/// 256 KiB), so the threshold grows with the budget: a budget of 32 MiB gets 256 KiB, 512 MiB and
/// more get 4 MiB, where the fragmentation it allows is small next to the budget's 10% headroom.
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
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
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
    let result = match &cli.command {
        Command::Run { common, pipeline } => run_pipeline(common, pipeline, cli.verbose),
        Command::Sql { common, output, query } => run_sql(common, output.as_deref(), query, cli.verbose),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_cancelled() || signal::interrupted() => {
            eprintln!("error: interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_bad_input() { 2 } else { 1 })
        }
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

fn run_pipeline(common: &CommonArgs, path: &Path, verbose: bool) -> Result<(), Error> {
    let started = Instant::now();
    let file = PipelineFile::load(path)?;
    let config = config(common, Some(&file.settings), verbose)?;
    let mut engine = Engine::new(config)?;
    signal::watch(engine.cancel_flag());
    engine.set_base_dir(&file.base_dir);
    for (name, spec) in &file.sources {
        let format = spec.format(name)?;
        engine
            .register_with_format(name, spec.path(), format)
            .map_err(|e| Error::Config(format!("source '{name}': {e}")))?;
    }
    // Plan every step before running any, so a mistake in the last step costs nothing.
    for (i, step) in file.steps.iter().enumerate() {
        let label = step.label(i);
        match &step.name {
            Some(name) => engine.register_view(name, &step.sql).map_err(|e| e.in_step(&label))?,
            None => drop(engine.sql(&step.sql).map_err(|e| e.in_step(&label))?),
        }
        if step.output.is_some() {
            drop(engine.sql(&step.sql).map_err(|e| e.in_step(&label))?);
        }
    }
    let mut report = Report::new(engine.config());
    let progress = progress::Progress::start(&engine);
    for (i, step) in file.steps.iter().enumerate() {
        let Some(output) = &step.output else { continue };
        let label = step.label(i);
        progress.set_step(&label);
        // Each step's report shows its own allocation peak.
        flow_engine::alloc::reset_peak();
        let target = file.base_dir.join(output.path());
        let format = output.format()?;
        let query = engine.sql(&step.sql).map_err(|e| e.in_step(&label))?;
        let (summary, metrics) = query.write_as(&target, format).map_err(|e| e.in_step(&label))?;
        report.steps.push(StepReport::new(&label, Some(&summary), &metrics));
    }
    progress.finish();
    report.finish(&engine, started);
    eprintln!("{}", report.summary());
    if let Some(path) = &common.report {
        report.write(path)?;
    }
    Ok(())
}

fn run_sql(common: &CommonArgs, output: Option<&Path>, sql: &str, verbose: bool) -> Result<(), Error> {
    let started = Instant::now();
    let config = config(common, None, verbose)?;
    let engine = Engine::new(config)?;
    signal::watch(engine.cancel_flag());
    let query = engine.sql(sql)?;
    let mut report = Report::new(engine.config());
    match output {
        Some(path) => {
            let progress = progress::Progress::start(&engine);
            let (summary, metrics) = query.write_as(path, OutputFormat::from_path(path))?;
            progress.finish();
            report.steps.push(StepReport::new("sql", Some(&summary), &metrics));
            report.finish(&engine, started);
            eprintln!("{}", report.summary());
        }
        None => {
            let schema = query.schema();
            let batches = query.collect()?;
            let table = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches(&[arrow::array::RecordBatch::new_empty(schema)])
            } else {
                arrow::util::pretty::pretty_format_batches(&batches)
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
