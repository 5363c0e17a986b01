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
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Run one SQL query: print it as a table, or write it with -o.
    Sql {
        #[command(flatten)]
        common: CommonArgs,
        /// Write the result here instead of printing it (.parquet or .csv).
        #[arg(short, long, value_name = "OUT.parquet|OUT.csv")]
        output: Option<PathBuf>,
        /// The query, e.g. "SELECT a FROM 'data/*.parquet' WHERE a > 10".
        query: String,
    },
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
