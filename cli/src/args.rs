//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// flow: an out-of-core dataflow engine. SQL and pipelines over Parquet, CSV and NDJSON, inside one
/// memory budget.
#[derive(Debug, Parser)]
#[command(name = "flow", version, about, long_about = None)]
pub struct Cli {
    /// Print the resolved settings and a summary.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline file: its sources, then its steps in order.
    Run {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        units: UnitArgs,
        /// Run every unit again, ignoring what earlier runs committed.
        #[arg(long)]
        restart: bool,
        /// Run a failing unit up to N more times before giving up on it (bad input is not retried).
        #[arg(long, value_name = "N", default_value_t = 0)]
        retries: u32,
        /// Go on with the other units when one fails; exit non-zero at the end with the list.
        #[arg(long)]
        keep_going: bool,
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// List the units of a pipeline's steps as committed, pending or failed.
    Status {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        units: UnitArgs,
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Run one SQL query: print it as a table, or write it with -o.
    Sql {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        sources: SourceArgs,
        /// Write the result here instead of printing it (.parquet, .csv, .tsv or .json, or the
        /// --format given; a folder with --partition-by or --max-file-size). `-` (or /dev/stdout)
        /// streams it to standard output, as CSV unless --format says otherwise.
        #[arg(short, long, value_name = "OUT.parquet|OUT.csv|-")]
        output: Option<PathBuf>,
        #[command(flatten)]
        write: WriteArgs,
        /// The query, e.g. "SELECT a FROM 'data/*.parquet' WHERE a > 10".
        query: String,
    },
    /// Show how a query (or a pipeline's step) runs: the optimized logical plan and the physical
    /// plan; with --analyze, run it and show what each operator did.
    Explain {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        sources: SourceArgs,
        /// Run the query (discarding its rows) and show rows, time, peak memory and spilling per
        /// operator.
        #[arg(long)]
        analyze: bool,
        /// With a pipeline file: the step to explain (default: every step).
        #[arg(long, value_name = "NAME")]
        step: Option<String>,
        /// A query, or a pipeline file (.toml).
        query: String,
    },
    /// Make data: TPC-H tables, or a synthetic table of any size with chosen key cardinality and
    /// skew, nulls and string lengths (deterministic from a seed).
    Gen {
        #[command(subcommand)]
        what: GenCommand,
    },
    /// Run the benchmark suite: TPC-H 1 to 22 and out-of-core shapes, timed from outside with
    /// peak RSS, side by side with DuckDB and Polars when their Python packages are there.
    Bench(BenchArgs),
    /// List the SQL functions: how each is called and what it returns (the scalar functions;
    /// aggregates and window functions are in docs/sql.md).
    Functions {
        /// Only functions whose names (or other names) contain this.
        name: Option<String>,
    },
    /// Show what is inside Parquet files: schema, row groups, sizes, compression, statistics.
    Inspect {
        /// Also show every row group's column statistics.
        #[arg(long)]
        row_groups: bool,
        /// Parquet files (or folders or globs of them).
        #[arg(required = true)]
        files: Vec<String>,
    },
}

/// Options of `flow bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// TPC-H scale factor of the data (the synthetic table has as many rows as lineitem).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Where the data is, or is made when missing (default: bench-data/sf<SCALE>).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// flow's budget, and DuckDB's memory_limit.
    #[arg(long, default_value = "512MiB", value_name = "SIZE")]
    pub mem_budget: String,
    /// Threads for every engine (default: every core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Queries, comma-separated: tpch, ooc, all, or names (q1, q18, group_orderkey, ...).
    #[arg(long, value_delimiter = ',', default_value = "tpch,ooc")]
    pub queries: Vec<String>,
    /// Peers to run alongside, comma-separated: duckdb, polars, or none.
    #[arg(long, value_delimiter = ',', default_value = "duckdb,polars")]
    pub peers: Vec<String>,
    /// The Python with the peers' packages (default: .venv/bin/python if there, else python3).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Runs per query and engine; the table shows the fastest.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Seconds before a query is stopped and shown as a timeout.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// Also write the table (Markdown) here.
    #[arg(long, value_name = "FILE.md")]
    pub markdown: Option<PathBuf>,
    /// Also write every measurement (JSON) here.
    #[arg(long, value_name = "FILE.json")]
    pub json: Option<PathBuf>,
}

/// What `flow gen` makes.
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// TPC-H tables as DIR/<table>.parquet (the same data as tpchgen-cli).
    Tpch {
        #[command(flatten)]
        common: CommonArgs,
        /// Scale factor: 1 is 6M lineitem rows (about 250 MB of Parquet).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Tables to make, comma-separated (default: all eight).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// The folder to write.
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
    },
    /// A synthetic table: id, key (Zipf-skewed), key_str, category, value, amount, day, payload.
    Table {
        #[command(flatten)]
        common: CommonArgs,
        /// Rows: 1000000, 10M, 2.5K, ...
        #[arg(long, default_value = "1M")]
        rows: String,
        /// Distinct keys.
        #[arg(long, default_value = "100K")]
        keys: String,
        /// Zipf exponent of the keys: 0 is uniform; 1.1 puts about a tenth of the rows on one key.
        #[arg(long, default_value_t = 0.0)]
        skew: f64,
        /// Distinct categories.
        #[arg(long, default_value_t = 16)]
        categories: u64,
        /// Share of nulls in the nullable columns (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        nulls: f64,
        /// Length range of the payload strings, e.g. 8..64.
        #[arg(long, default_value = "8..32")]
        string_len: String,
        /// Seed: the same seed and sizes give the same table.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The Parquet file to write.
        #[arg(short, long, value_name = "FILE.parquet")]
        output: PathBuf,
    },
}

/// How -o writes.
#[derive(Debug, Args, Default)]
pub struct WriteArgs {
    /// The output's format: parquet, csv, tsv or json (one object per line). Without -o, the
    /// result streams to standard output in that format instead of printing a table.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Parquet compression: zstd (level 1, the default), zstd(LEVEL) with LEVEL 1 to 22, snappy,
    /// lz4 or none.
    #[arg(long, value_name = "CODEC")]
    pub compression: Option<String>,
    /// Most rows in a Parquet row group (default: 1048576).
    #[arg(long, value_name = "N")]
    pub row_group_rows: Option<usize>,
    /// Target size of a Parquet row group, e.g. 64MiB (default: an eighth of the budget, at most
    /// 128 MiB; never more than a quarter of the budget).
    #[arg(long, value_name = "SIZE")]
    pub row_group_size: Option<String>,
    /// Split the output into files of about SIZE: -o names a folder, written as data_0.parquet,
    /// data_1.parquet, ...
    #[arg(long, value_name = "SIZE")]
    pub max_file_size: Option<String>,
    /// When the output exists: replace (the default), error, or replace-partitions (with
    /// --partition-by: partitions the result does not have are kept).
    #[arg(long, value_name = "POLICY")]
    pub overwrite: Option<String>,
    /// Write a hive-partitioned folder by these columns (comma-separated or repeated):
    /// OUT/col=value/data_0.parquet.
    #[arg(long, value_name = "COLUMN", value_delimiter = ',')]
    pub partition_by: Vec<String>,
}

impl WriteArgs {
    /// Whether any option was given.
    pub fn any(&self) -> bool {
        self.compression.is_some()
            || self.row_group_rows.is_some()
            || self.row_group_size.is_some()
            || self.max_file_size.is_some()
            || self.overwrite.is_some()
            || !self.partition_by.is_empty()
    }
}

/// Names for files, so SQL can say `FROM lineitem`.
#[derive(Debug, Args, Default)]
pub struct SourceArgs {
    /// Register files under a name: `--source lineitem=tpch/lineitem.parquet` (a path, glob or
    /// directory). Repeatable.
    #[arg(long = "source", value_name = "NAME=PATH")]
    pub sources: Vec<String>,
    /// Register every Parquet, CSV and JSON file (and every folder) of DIR under its name without
    /// the extension: `--sources tpch/` makes `lineitem` of `tpch/lineitem.parquet`.
    #[arg(long = "sources", value_name = "DIR")]
    pub source_dirs: Vec<PathBuf>,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Memory budget for the whole run: 3GiB, 512MiB, 2.5GiB or plain bytes (GB means 10^9 bytes).
    /// Default: half of the memory available to the process (cgroup limits respected).
    #[arg(long, env = "FLOW_MEM_BUDGET", value_name = "SIZE")]
    pub mem_budget: Option<String>,
    /// Worker threads (default: every core).
    #[arg(long, env = "FLOW_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Folder for spill files (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Most bytes of spill files on disk at once (default: unlimited).
    #[arg(long, value_name = "SIZE")]
    pub max_spill: Option<String>,
    /// Write a JSON report of the run here.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
}

/// Which units this process runs, for one pipeline spread over several processes or machines.
#[derive(Debug, Args, Clone, Copy)]
pub struct UnitArgs {
    /// This worker's number, from 0 (e.g. a Kubernetes Indexed Job's completion index or a
    /// Slurm array task id).
    #[arg(long = "unit", env = "FLOW_UNIT", value_name = "I", default_value_t = 0)]
    pub worker: usize,
    /// How many workers share the units; worker I takes units I, I+N, I+2N, ... in priority order.
    #[arg(long = "units", env = "FLOW_UNITS", value_name = "N", default_value_t = 1)]
    pub workers: usize,
}
