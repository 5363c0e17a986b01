//! # flow
//!
//! An out-of-core dataflow engine: SQL over Parquet, CSV and NDJSON files, run on Arrow record batches
//! on every core, inside one memory budget.
//!
//! * [`Config`] sizes a run (memory budget, threads, spill folder and limit, batch size).
//! * [`Engine`] holds the run's [`MemoryPool`], worker threads, [`SpillManager`] and catalog.
//! * [`Engine::sql`] plans a query; [`Query`] collects it, streams it, or writes it to Parquet or CSV.
//! * [`pipeline::PipelineFile`] reads pipeline files: sources, settings and steps in TOML.
//!
//! Every buffer that holds data is reserved from the pool before it is filled: decode buffers,
//! batches in flight, writer buffers, collected results. A request the budget cannot meet is an
//! error that names the consumer, never a swap storm.
//!
//! ```
//! # fn main() -> flow_engine::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let input = dir.path().join("events.csv");
//! # std::fs::write(&input, "a,b\n5,x\n15,y\n25,z\n").unwrap();
//! use flow_engine::{parse_size, Config, Engine};
//!
//! let config = Config::default().with_mem_budget(parse_size("64MiB")?).with_threads(2);
//! let mut engine = Engine::new(config)?;
//! engine.register("events", input.to_str().unwrap())?;
//! let (summary, metrics) = engine
//!     .sql("SELECT a, b || '!' AS c FROM events WHERE a > 10")?
//!     .write(dir.path().join("out.parquet"))?;
//! assert_eq!(summary.rows, 2);
//! assert_eq!(metrics.rows_read, 3);
//! // Only what the registered tables' footers take is left reserved.
//! assert_eq!(engine.pool().reserved(), engine.catalog_memory());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod alloc;
mod config;
mod engine;
mod error;
pub mod exec;
pub mod expr;
pub mod generate;
pub mod hive;
pub mod inspect;
pub mod memory;
pub mod pipeline;
pub mod plan;
pub mod scratch;
pub mod source;
pub mod spill;
pub mod sql;
pub mod stack;
pub mod units;

pub use config::{available_memory, default_mem_budget, parse_size, Config};
pub use engine::{Engine, Query, QueryMetrics};
pub use error::{caret, human, Error, Result};
pub use exec::sink::{Codec, OutputFormat, Overwrite, WriteOptions, WriteSummary};
pub use exec::OperatorStats;
pub use memory::{MemoryPool, MemoryReservation};
pub use spill::{SpillManager, SpillStats};
