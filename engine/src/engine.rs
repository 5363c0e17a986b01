//! The library's entry point: an [`Engine`] holds a run's configuration, memory pool, spill folder,
//! worker threads and catalog; [`Engine::sql`] plans a query into a [`Query`] that can be collected,
//! streamed, or written to Parquet or CSV.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::exec::sink::{
    exists_error, target_taken, BackgroundSink, Destination, OutputFormat, Overwrite, ParquetSink, PartitionedOutput,
    PartitionedWriter, Sink, TextSink, WriteOptions, WriteSummary,
};
use crate::exec::{BatchStream, ExecContext, ExplainLine, Pipeline, PipelineStats};
use crate::memory::{MemoryPool, MemoryReservation};
use crate::plan::{optimize, LogicalPlan};
use crate::source::{Format, ScanCounters, Table};
use crate::spill::{SpillManager, SpillStats};
use crate::sql::{plan_sql, Catalog, Relation};
use crate::stack::deep;
use crate::Config;

/// A configured engine. See the [crate docs](crate) for an example.
pub struct Engine {
    ctx: ExecContext,
    spill: SpillManager,
    catalog: Catalog,
    /// What each registered table's footers take in memory, by table name (see
    /// [`Engine::register`]).
    footers: std::collections::HashMap<String, MemoryReservation>,
}

/// Batches a writer holds beside what the query reserves for its output: one more waiting in its
/// queue, and the one it encodes (see [`BackgroundSink`]).
const WRITER_BATCHES: u64 = 2;

/// The stack of a worker thread: as much as an entry point gets (see [`crate::stack`]).
const WORKER_STACK: usize = crate::stack::SEGMENT;

impl Engine {
    /// Opens an engine: creates the memory pool, the worker threads and the private spill folder
    /// (removing folders left by dead runs).
    pub fn new(config: Config) -> Result<Engine> {
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .thread_name(|i| format!("flow-worker-{i}"))
            .stack_size(WORKER_STACK)
            .build()
            .map_err(|e| Error::Config(format!("cannot start {} threads: {e}", config.threads)))?;
        let spill = SpillManager::new(&config.spill_dir, config.max_spill)?;
        let ctx = ExecContext {
            pool: MemoryPool::new(config.mem_budget),
            config,
            threads: Arc::new(threads),
            counters: Arc::new(ScanCounters::default()),
            cancel: Arc::new(AtomicBool::new(false)),
            spill: spill.clone(),
            operators: Default::default(),
            pending_minimums: Default::default(),
            shared: Default::default(),
            batch_target: 0,
        };
        let ctx = ExecContext { batch_target: ExecContext::default_batch_target(&ctx.config), ..ctx };
        Ok(Engine { ctx, spill, catalog: Catalog::default(), footers: Default::default() })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// The memory pool every query of this engine draws from.
    pub fn pool(&self) -> &MemoryPool {
        &self.ctx.pool
    }

    /// Runs `f` on the engine's worker threads (rayon calls inside it use them).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.ctx.threads.install(f)
    }

    /// The spill manager.
    pub fn spill(&self) -> &SpillManager {
        &self.spill
    }

    /// Scan progress counters (rows and bytes read so far).
    pub fn counters(&self) -> &Arc<ScanCounters> {
        &self.ctx.counters
    }

    /// A flag that cancels running queries when set (the CLI sets it on Ctrl-C).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.ctx.cancel.clone()
    }

    /// Resolves relative paths in SQL and registered sources against `dir`.
    pub fn set_base_dir(&mut self, dir: impl AsRef<Path>) {
        self.catalog.set_base_dir(dir.as_ref());
    }

    /// Registers files (a path, glob or directory) under `name`, with the format from the extension.
    ///
    /// Their footers stay in memory while the table is registered (a file written in thousands of
    /// small row groups holds megabytes of metadata): they are counted in the pool, past the
    /// budget if need be, so that a query too big for what is left is refused with a minimum
    /// that counts them.
    pub fn register(&mut self, name: &str, location: &str) -> Result<()> {
        self.register_with_format(name, location, None)
    }

    /// Registers files under `name` in an explicit format.
    pub fn register_with_format(&mut self, name: &str, location: &str, format: Option<Format>) -> Result<()> {
        self.register_with(name, location, format, false)
    }

    /// Registers files under `name`; with `union_by_name`, files of different columns are read
    /// by column name, with nulls where a file lacks one (else they must have the same columns).
    pub fn register_with(
        &mut self,
        name: &str,
        location: &str,
        format: Option<Format>,
        union_by_name: bool,
    ) -> Result<()> {
        let table = Table::open_with(name, &self.catalog.resolve_path(location), format, union_by_name)?;
        let mut footers = self.ctx.pool.register(format!("Footers[{name}]"), false);
        footers.grow_over_budget(table.metadata_bytes());
        self.footers.insert(name.to_ascii_lowercase(), footers);
        self.catalog.insert(name, Relation::Table(Arc::new(table)));
        Ok(())
    }

    /// What the footers of the registered tables take in the pool (see [`Engine::register`]):
    /// all that stays reserved between queries.
    pub fn catalog_memory(&self) -> u64 {
        self.footers.values().map(|r| r.size()).sum()
    }

    /// Registers the result of `sql` as a view named `name` that later queries can read.
    pub fn register_view(&mut self, name: &str, sql: &str) -> Result<()> {
        let plan = deep(|| plan_sql(sql, &self.catalog))?;
        self.catalog.insert(name, Relation::View(plan));
        Ok(())
    }

    /// Plans a query.
    ///
    /// ```
    /// # fn main() -> flow_engine::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("t.csv");
    /// # std::fs::write(&path, "a,b\n1,x\n20,y\n30,z\n").unwrap();
    /// use flow_engine::{Config, Engine};
    /// let mut engine = Engine::new(Config::default().with_threads(2))?;
    /// engine.register("t", path.to_str().unwrap())?;
    /// let batches = engine.sql("SELECT a, b FROM t WHERE a > 10")?.collect()?;
    /// assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    /// # Ok(()) }
    /// ```
    pub fn sql(&self, sql: &str) -> Result<Query<'_>> {
        deep(|| {
            let plan = optimize(plan_sql(sql, &self.catalog)?);
            Query::new(self, plan)
        })
    }

    /// Plans `sql` with the table or view `name` narrowed to its rows where `predicate` (SQL over
    /// its columns) holds. The optimizer pushes the predicate down like any filter, into the scan
    /// and its row-group pruning. This is how a unit of work reads only its share.
    pub fn sql_where(&self, sql: &str, name: &str, predicate: &str) -> Result<Query<'_>> {
        deep(|| {
            let narrowed = format!("SELECT * FROM {} WHERE {predicate}", crate::sql::quote_ident(name));
            let mut catalog = self.catalog.clone();
            catalog.insert(name, Relation::View(plan_sql(&narrowed, &self.catalog)?));
            let plan = optimize(plan_sql(sql, &catalog)?);
            Query::new(self, plan)
        })
    }

    /// Whether `name` is a registered table or view.
    pub fn has_relation(&self, name: &str) -> bool {
        self.catalog.get(name).is_some()
    }
}

/// What running a query did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueryMetrics {
    /// Rows decoded from sources.
    pub rows_read: u64,
    /// Bytes read from source files.
    pub bytes_read: u64,
    /// Rows the query produced.
    pub rows_out: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Row groups (or files) in the scanned table, and those left after pruning.
    pub pipeline: PipelineStats,
    /// The most bytes reserved from the pool at once.
    pub peak_reserved: u64,
    /// Spilling done by the engine so far.
    pub spill: SpillStats,
    /// What each operator did, in the order they started.
    pub operators: Vec<crate::exec::OperatorStats>,
}

/// A planned query.
pub struct Query<'e> {
    engine: &'e Engine,
    plan: LogicalPlan,
    pipeline: Pipeline,
    /// What the query runs with (its batch size chosen for its plan).
    ctx: ExecContext,
    /// Whether `ctx` was checked to fit the budget with what the query's consumer takes beside
    /// it: a writer's buffers are known only when the query is written, so a plan is refused
    /// there, with the minimum for the plan and its writer, not when it is planned.
    fits: bool,
    /// What the footers of the files the query reads take in memory (a file written in thousands
    /// of small row groups holds megabytes of metadata), reserved while the query lives.
    footers: MemoryReservation,
    footer_bytes: u64,
}

impl<'e> Query<'e> {
    fn new(engine: &'e Engine, plan: LogicalPlan) -> Result<Query<'e>> {
        // Registered tables' footers are counted already; tables the query opened itself (a
        // quoted path) count while it lives.
        let registered = engine.catalog.tables();
        let footer_bytes = plan
            .tables()
            .iter()
            .filter(|t| !registered.iter().any(|r| Arc::ptr_eq(r, t)))
            .map(|t| t.metadata_bytes())
            .sum();
        let pipeline = Pipeline::new(&plan)?;
        // The minimums of every operator that can run at once: scans (a row group's decode
        // buffers), and the working memory of sorts, aggregations and joins, decide its batch
        // size; it is refused when it starts (see `fits`) if they cannot fit.
        let mut footers = engine.ctx.pool.register("Footers", false);
        let (ctx, fits) = match footers.try_grow(footer_bytes) {
            Ok(()) => match engine.ctx.for_plan(&pipeline, engine.ctx.pool.reserved(), 0) {
                Ok(ctx) => (ctx, true),
                Err(_) => (engine.ctx.smallest_batches(), false),
            },
            Err(_) => (engine.ctx.smallest_batches(), false),
        };
        Ok(Query { engine, plan, pipeline, ctx, fits, footers, footer_bytes })
    }

    /// The result's schema.
    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// The optimized logical plan.
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// The files the query will read: every file of its inputs that has a row group left after
    /// pruning, each once, sorted.
    pub fn input_files(&self) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        self.pipeline.input_files(&mut files);
        files.sort();
        files.dedup();
        files
    }

    /// Rows the query's scans will decode after pruning, when every input records its row count
    /// (Parquet); for progress bars.
    pub fn input_rows(&self) -> Option<u64> {
        self.pipeline.input_rows()
    }

    /// The optimized logical plan and the physical plan, as readable trees.
    pub fn explain(&self) -> String {
        let stats = self.pipeline.stats(&self.ctx);
        format!(
            "Logical plan:\n{}\nPhysical plan:\n{}-- row groups: {} of {} after pruning; minimum memory {}\n",
            self.plan.display_tree(),
            render_physical(&self.physical(), &[]),
            stats.row_groups_scanned,
            stats.row_groups_total,
            crate::error::human(stats.min_memory)
        )
    }

    /// The physical plan, one line per operator.
    pub fn physical(&self) -> Vec<ExplainLine> {
        let mut lines = Vec::new();
        self.pipeline.describe(&self.ctx, 0, "", &mut lines);
        lines
    }

    /// Runs the query, discarding its rows, and returns the physical plan with what each operator
    /// did (rows in and out, time, peak memory, spilling), and the query's metrics.
    pub fn explain_analyze(self) -> Result<(String, QueryMetrics)> {
        let lines = self.physical();
        let metrics = self.for_each(|_| Ok(()))?;
        let text = format!(
            "{}-- {} rows in {:.3}s; read {} rows; peak memory {} accounted; spilled {} in {} files\n",
            render_physical(&lines, &metrics.operators),
            metrics.rows_out,
            metrics.elapsed.as_secs_f64(),
            metrics.rows_read,
            crate::error::human(metrics.peak_reserved),
            crate::error::human(metrics.spill.bytes),
            metrics.spill.files
        );
        Ok((text, metrics))
    }

    /// Starts the query and returns its batches as they are produced, in input order.
    pub fn stream(self) -> Result<BatchStream> {
        deep(|| self.start())
    }

    fn start(mut self) -> Result<BatchStream> {
        if !self.fits {
            self.ctx = self.engine.ctx.for_plan(&self.pipeline, self.held(), 0)?;
            self.hold_footers()?;
        }
        // Each query counts its own operators.
        let mut counts = std::collections::HashMap::new();
        self.pipeline.shared_counts(&mut counts);
        let ctx = ExecContext {
            operators: Default::default(),
            pending_minimums: Default::default(),
            shared: crate::exec::SharedRegistry::new(counts),
            ..self.ctx.clone()
        };
        self.pipeline.execute(&ctx)
    }

    /// Runs the query and returns every batch. The batches are reserved from the pool while they
    /// are collected; a result larger than the budget fails with a clear error instead of swapping.
    pub fn collect(self) -> Result<Vec<RecordBatch>> {
        deep(|| self.collect_here())
    }

    fn collect_here(self) -> Result<Vec<RecordBatch>> {
        let pool = self.engine.ctx.pool.clone();
        let mut held = pool.register("CollectResult", false);
        let mut stream = self.start()?;
        let mut out = Vec::new();
        while let Some(item) = stream.next_reserved() {
            let (batch, reservation) = item?;
            held.try_grow(batch.get_array_memory_size() as u64).map_err(|e| match e {
                Error::ResourcesExhausted { requested, in_use, budget, .. } => Error::ResourcesExhausted {
                    consumer: "CollectResult (hint: write large results to a file with -o)".into(),
                    requested,
                    in_use,
                    budget,
                    largest: vec![],
                },
                other => other,
            })?;
            stream.release(reservation);
            out.push(batch);
        }
        Ok(out)
    }

    /// Runs the query into a file; the format comes from the extension (`.parquet` or none,
    /// `.csv`, `.tsv`, `.json`; see [`OutputFormat::from_path`]).
    pub fn write(self, path: impl AsRef<Path>) -> Result<(WriteSummary, QueryMetrics)> {
        let format = OutputFormat::from_path(path.as_ref())?;
        self.write_as(path, format)
    }

    /// Runs the query into a file of the given format.
    pub fn write_as(self, path: impl AsRef<Path>, format: OutputFormat) -> Result<(WriteSummary, QueryMetrics)> {
        self.write_with(path, format, &WriteOptions::default())
    }

    /// Runs the query into one file of the given format, written as `options` say (see
    /// [`write_folder`](Self::write_folder) for outputs split by size or partitioned).
    ///
    /// ```no_run
    /// # fn main() -> flow_engine::Result<()> {
    /// use flow_engine::{Codec, Config, Engine, OutputFormat, Overwrite, WriteOptions};
    /// let engine = Engine::new(Config::default())?;
    /// let options = WriteOptions { compression: Codec::Snappy, overwrite: Overwrite::Error, ..Default::default() };
    /// engine.sql("SELECT 1 AS x")?.write_with("x.parquet", OutputFormat::Parquet, &options)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn write_with(
        mut self,
        path: impl AsRef<Path>,
        format: OutputFormat,
        options: &WriteOptions,
    ) -> Result<(WriteSummary, QueryMetrics)> {
        let path = path.as_ref();
        if options.max_file_bytes.is_some() {
            return Err(Error::Config(format!(
                "{}: a maximum file size splits the output into numbered files in a folder (write_folder)",
                path.display()
            )));
        }
        if options.overwrite == Overwrite::ReplacePartitions {
            return Err(Error::Config("overwrite 'replace_partitions' needs partition_by".into()));
        }
        if options.overwrite == Overwrite::Error && target_taken(path) {
            return Err(exists_error(path));
        }
        self.check_format(format, options)?;
        self.write_to_destination(Destination::file(path, options)?, format, options)
    }

    /// Runs the query into `path`: one file, or a folder when `partition_by` names columns or
    /// `options.max_file_bytes` splits it (see [`write_folder`](Self::write_folder)), with one
    /// summary for the folder (its rows, bytes and row groups in all).
    pub fn write_output(
        self,
        path: impl AsRef<Path>,
        format: OutputFormat,
        partition_by: &[String],
        options: &WriteOptions,
    ) -> Result<(WriteSummary, QueryMetrics)> {
        let path = path.as_ref();
        if partition_by.is_empty() && options.max_file_bytes.is_none() {
            return self.write_with(path, format, options);
        }
        let (files, metrics) = self.write_folder(path, format, partition_by, options)?;
        let summary = WriteSummary {
            path: path.to_path_buf(),
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            row_groups: files.iter().map(|f| f.row_groups).sum(),
        };
        Ok((summary, metrics))
    }

    /// Runs the query into a stream (standard output, a socket, a pipe) in the given format, as
    /// it is produced: nothing is buffered beyond the writer's own buffers (a Parquet row group).
    /// The summary's path is `-`.
    pub fn write_to(
        mut self,
        out: Box<dyn std::io::Write + Send>,
        format: OutputFormat,
        options: &WriteOptions,
    ) -> Result<(WriteSummary, QueryMetrics)> {
        if options.max_file_bytes.is_some() {
            return Err(Error::Config("a maximum file size needs a folder to write files in, not a stream".into()));
        }
        self.check_format(format, options)?;
        self.write_to_destination(Destination::Stream(out), format, options)
    }

    /// Refuses a write of `format` before anything is created (see [`Self::check_write`]).
    fn check_format(&mut self, format: OutputFormat, options: &WriteOptions) -> Result<()> {
        let schema = self.schema();
        match format {
            OutputFormat::Parquet => self.check_write(&|budget| ParquetSink::upfront(&schema, budget, options)),
            _ => self.check_write(&TextSink::upfront),
        }
    }

    fn write_to_destination(
        self,
        to: Destination,
        format: OutputFormat,
        options: &WriteOptions,
    ) -> Result<(WriteSummary, QueryMetrics)> {
        let pool = &self.engine.ctx.pool;
        let sink: Result<Box<dyn Sink + Send>> = match format {
            OutputFormat::Parquet => ParquetSink::to(to, &self.schema(), pool, options).map(|s| Box::new(s) as _),
            format => TextSink::to(to, format, pool).map(|s| Box::new(s) as _),
        };
        let sink = sink.map_err(|e| self.too_small_for_the_writer(e))?;
        self.run_into(sink)
    }

    /// A writer that cannot take its buffers from the pool: the budget is too small for the
    /// writer and the query together, which is what the error says.
    fn too_small_for_the_writer(&self, e: Error) -> Error {
        match e {
            Error::ResourcesExhausted { consumer, requested, in_use, budget, .. } => Error::BudgetTooSmall {
                what: format!("this query with its output's writer ({consumer})"),
                needed: self.engine.ctx.least_budget(&self.pipeline, &|_| in_use + requested, WRITER_BATCHES),
                budget,
            },
            other => other,
        }
    }

    /// Refuses a write before anything is created when the budget cannot hold the query and a
    /// writer of `upfront(budget)` bytes, with the smallest budget that can.
    fn check_write(&mut self, upfront: &dyn Fn(u64) -> u64) -> Result<()> {
        let ctx = &self.engine.ctx;
        let held = self.held();
        // The writer is sized from what the others leave it (see `ParquetSink::to`).
        let least =
            ctx.least_budget(&self.pipeline, &|budget| held + upfront(budget.saturating_sub(held)), WRITER_BATCHES);
        if least > ctx.config.mem_budget {
            return Err(Error::BudgetTooSmall {
                what: "this query".into(),
                needed: least,
                budget: ctx.config.mem_budget,
            });
        }
        self.hold_footers()
    }

    /// What the pool holds besides the query's running operators: reservations of others, and
    /// the query's footers (counted when not reserved yet).
    fn held(&self) -> u64 {
        self.engine.ctx.pool.reserved() + (self.footer_bytes - self.footers.size())
    }

    fn hold_footers(&mut self) -> Result<()> {
        self.footers.try_resize(self.footer_bytes)
    }

    /// Runs the query into the folder `dir`: files of at most `options.max_file_bytes` (about;
    /// one file when unset) named `data_0.parquet`, `data_1.parquet`, ..., in a hive layout
    /// (`dir/col=value/data_0.parquet`) when `partition_by` names columns. The files are written
    /// in a temporary folder beside `dir` and moved into place when all are complete: with
    /// [`Overwrite::Replace`] the folder as a whole, with [`Overwrite::ReplacePartitions`] one
    /// partition folder at a time (partitions the result does not have are kept).
    pub fn write_folder(
        self,
        dir: impl AsRef<Path>,
        format: OutputFormat,
        partition_by: &[String],
        options: &WriteOptions,
    ) -> Result<(Vec<WriteSummary>, QueryMetrics)> {
        let dir = dir.as_ref();
        if options.overwrite == Overwrite::ReplacePartitions && partition_by.is_empty() {
            return Err(Error::Config("overwrite 'replace_partitions' needs partition_by".into()));
        }
        if options.overwrite == Overwrite::Error && target_taken(dir) {
            return Err(exists_error(dir));
        }
        let staging = crate::exec::sink::StagingDir::beside(dir)?;
        let out = PartitionedOutput {
            dir: staging.path().to_path_buf(),
            partition_by: partition_by.to_vec(),
            format,
            stem: "data".into(),
            numbered: true,
            suffix: String::new(),
            keep_empty: true,
            options: options.clone(),
            staged: true,
        };
        let (written, metrics) = self.write_partitioned(out)?;
        let written = staging.commit(dir, options.overwrite, &written)?;
        Ok((written, metrics))
    }

    /// Runs the query into a folder: one file, or one per partition in a hive layout (see
    /// [`PartitionedWriter`]). Files appear only once complete.
    pub fn write_partitioned(mut self, out: PartitionedOutput) -> Result<(Vec<WriteSummary>, QueryMetrics)> {
        let engine = self.engine;
        if !out.partition_by.is_empty() {
            // Sorted by the partition columns, each partition's rows come together: one file at a
            // time, one file per partition, at any number of partitions (see `sink/partitioned.rs`).
            let keys = crate::exec::sink::partition_columns(&out.partition_by, &self.schema())?;
            self = Query::new(engine, partition_order(self.plan.clone(), &keys))?;
        }
        self.hold_footers().map_err(|e| self.too_small_for_the_writer(e))?;
        let writer = PartitionedWriter::new(out, &self.schema(), &engine.ctx.pool);
        let mut writer = writer.map_err(|e| self.too_small_for_the_writer(e))?;
        if !writer.key_columns().is_empty() {
            writer.in_key_order().map_err(|e| self.too_small_for_the_writer(e))?;
        }
        self.ctx = engine.ctx.for_plan(&self.pipeline, engine.ctx.pool.reserved(), WRITER_BATCHES)?;
        self.fits = true;
        let mut writer = BackgroundSink::start(writer, &engine.ctx.pool)?;
        let metrics = self.for_each_owned(|batch, reservation| writer.write(batch, reservation))?;
        if engine.ctx.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        Ok((writer.finish()?, metrics))
    }

    /// Runs the query, handing each batch to `f`; returns the metrics.
    pub fn for_each(self, mut f: impl FnMut(&RecordBatch) -> Result<()>) -> Result<QueryMetrics> {
        // The batch stays reserved until `f` returns.
        self.for_each_owned(|batch, _held| f(&batch))
    }

    /// Runs the query into `sink`, which encodes on a thread of its own (see [`BackgroundSink`]).
    fn run_into(mut self, mut sink: Box<dyn Sink + Send>) -> Result<(WriteSummary, QueryMetrics)> {
        let engine = self.engine;
        // The sink holds its buffers now: the plan runs in what is left, and the sink takes one
        // batch at a time into its pages. It may grow into half of what the plan's minimums
        // leave free (bigger row groups), not further: operators that started beside it count
        // on the rest.
        let held = engine.ctx.pool.reserved();
        self.ctx = engine.ctx.for_plan(&self.pipeline, held, WRITER_BATCHES)?;
        self.fits = true;
        let need = self.pipeline.min_memory(&self.ctx) + self.pipeline.output_batch_bytes(&self.ctx);
        let slack = engine.ctx.config.mem_budget.saturating_sub(held + need);
        sink.limit_memory(sink.reserved() + self.pipeline.output_batch_bytes(&self.ctx) + slack / 2);
        if sink.takes_dictionaries() {
            self.pipeline.keep_dictionaries();
        }
        let mut sink = BackgroundSink::start(sink, &engine.ctx.pool)?;
        let metrics = self.for_each_owned(|batch, reservation| sink.write(batch, reservation))?;
        if engine.ctx.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let summary = sink.finish()?;
        Ok((summary, metrics))
    }

    /// Runs the query, handing each batch to `f` with a reservation that holds it for as long
    /// as `f` keeps it (the query's flow control moves on meanwhile); returns the metrics.
    fn for_each_owned(self, f: impl FnMut(RecordBatch, MemoryReservation) -> Result<()>) -> Result<QueryMetrics> {
        deep(|| self.drive(f))
    }

    fn drive(self, mut f: impl FnMut(RecordBatch, MemoryReservation) -> Result<()>) -> Result<QueryMetrics> {
        let (engine, start) = (self.engine, Instant::now());
        let before = snapshot(engine);
        let mut stream = self.start()?;
        let stats = stream.stats();
        let mut rows = 0;
        while let Some(item) = stream.next_reserved() {
            let (batch, mut reservation) = item?;
            rows += batch.num_rows() as u64;
            let mut kept = engine.ctx.pool.register("Output queue", false);
            kept.take(&mut reservation);
            stream.release(reservation);
            f(batch, kept)?;
        }
        let operators = stream.operators();
        drop(stream);
        Ok(QueryMetrics { operators, ..metrics(engine, before, rows, start, stats) })
    }
}

/// Renders physical plan lines as an indented tree; with `stats`, each operator's numbers follow
/// its line.
pub fn render_physical(lines: &[ExplainLine], stats: &[crate::exec::OperatorStats]) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(&"  ".repeat(line.depth));
        out.push_str(&line.text);
        if let Some(s) = line.id.and_then(|id| stats.iter().find(|s| s.id == id)) {
            out.push_str(&format!(
                "  [rows in {}, out {}, {:.3}s, peak {}",
                s.rows_in,
                s.rows_out,
                s.elapsed_ms as f64 / 1000.0,
                crate::error::human(s.peak_reserved)
            ));
            if s.spill_files > 0 {
                out.push_str(&format!(", spilled {} in {} files", crate::error::human(s.spill_bytes), s.spill_files));
            }
            if s.spills_on_request > 0 {
                out.push_str(&format!(", {} on request", s.spills_on_request));
            }
            if s.passes > 0 {
                out.push_str(&format!(", {} passes", s.passes));
            }
            out.push(']');
        }
        out.push('\n');
    }
    out
}

fn snapshot(engine: &Engine) -> (u64, u64) {
    let c = &engine.ctx.counters;
    engine.ctx.pool.reset_peak();
    (c.rows.load(Ordering::Relaxed), c.bytes.load(Ordering::Relaxed))
}

fn metrics(
    engine: &Engine,
    before: (u64, u64),
    rows_out: u64,
    start: Instant,
    pipeline: PipelineStats,
) -> QueryMetrics {
    let c = &engine.ctx.counters;
    QueryMetrics {
        rows_read: c.rows.load(Ordering::Relaxed) - before.0,
        bytes_read: c.bytes.load(Ordering::Relaxed) - before.1,
        rows_out,
        elapsed: start.elapsed(),
        pipeline,
        peak_reserved: engine.ctx.pool.peak(),
        spill: engine.spill.stats(),
        operators: Vec::new(),
    }
}

/// `plan` sorted by the columns `keys` first: a partitioned write's rows in partition order. An
/// ORDER BY of the query still orders the rows within each partition (its keys follow), also
/// under a projection that drops its hidden sort columns.
fn partition_order(plan: LogicalPlan, keys: &[usize]) -> LogicalPlan {
    use crate::plan::SortKey;
    let first = |keys: &[usize], then: &[SortKey]| {
        let mut all: Vec<SortKey> =
            keys.iter().map(|&column| SortKey { column, descending: false, nulls_first: false }).collect();
        all.extend(then.iter().filter(|k| !keys.contains(&k.column)));
        all
    };
    match plan {
        LogicalPlan::Sort { input, keys: order, fetch: None } => {
            LogicalPlan::Sort { input, keys: first(keys, &order), fetch: None }
        }
        // A top-n: its rows, sorted again.
        LogicalPlan::Sort { keys: ref order, fetch: Some(_), .. } => {
            let keys = first(keys, order);
            LogicalPlan::Sort { input: Box::new(plan), keys, fetch: None }
        }
        LogicalPlan::Projection { input, exprs, schema } if matches!(*input, LogicalPlan::Sort { .. }) => {
            let below: Option<Vec<usize>> = keys
                .iter()
                .map(|&k| match &exprs[k] {
                    crate::expr::Expr::Column { index, .. } => Some(*index),
                    _ => None,
                })
                .collect();
            match below {
                Some(below) => {
                    LogicalPlan::Projection { input: Box::new(partition_order(*input, &below)), exprs, schema }
                }
                None => partition_order_plain(LogicalPlan::Projection { input, exprs, schema }, keys),
            }
        }
        other => partition_order_plain(other, keys),
    }
}

fn partition_order_plain(plan: LogicalPlan, keys: &[usize]) -> LogicalPlan {
    let keys = keys.iter().map(|&column| crate::plan::SortKey { column, descending: false, nulls_first: false });
    LogicalPlan::Sort { input: Box::new(plan), keys: keys.collect(), fetch: None }
}
