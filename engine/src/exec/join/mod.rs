//! Hash join (inner, left, right, full and cross) that spills.
//!
//! Blocks on the build side (the input estimated smaller), then streams the probe side through.
//! Spills: both inputs, hash-partitioned, to Parquet through the spill manager.
//!
//! # Algorithm
//!
//! 1. **Build.** Build batches are kept as they come, with their keys (one integer-like key as an
//!    `i64` inline in the hash table, two to four packed into one `i64` when their values fit,
//!    others in row format); each row is linked into a chain of rows with the same key, found
//!    through a hash table of chain heads. Rows with a null key are kept (an outer join returns
//!    them) but never linked: SQL's `=` never matches a null.
//! 2. **Probe in memory.** When the whole build side fits the operator's share, each probe batch
//!    walks the chains of its keys; pairs are produced a chunk at a time (a key with millions of
//!    matches never makes one huge batch), checked against the join's other conditions, and
//!    marked as matched on both sides. Unmatched probe rows of an outer join come out after their
//!    batch; unmatched build rows at the end. When the probe side is a scan, its workers do this
//!    (the table is read-only by then; matched flags are atomics), see [`Prober`].
//! 3. **Grace partitions.** When the build side does not fit, it and then the probe side are split
//!    into 16 partitions by a hash of the key, written to spill files; each pair of partitions is a
//!    smaller join, done the same way with another hash seed (recursively) when its build side
//!    still does not fit.
//! 4. **Key ranges.** When both inputs are scans whose row groups come in order of their one
//!    integer key (lineitem and orders by order key), and the build side keeps every row it
//!    reads (its size is known from its row groups), the join runs one key range at a time
//!    instead of 2 or 3: the build rows of a range (read from the row groups that meet it,
//!    filtered to it) in a table small enough to stay in the caches, then the probe rows of the
//!    range probed on the scan workers (see [`key_ranges`]). Nothing is written to disk, and a
//!    build side many times memory joins as fast as one that fits; a range whose build rows do
//!    not fit after all is partitioned as in 3.
//! 5. **Chunks.** A partition that cannot be split any further (one key with more rows than
//!    memory, or a cross join) is joined a chunk of build rows at a time: each chunk reads the
//!    whole probe partition; the probe rows matched by any chunk are remembered in a bitmap, so an
//!    outer join still returns each unmatched probe row exactly once, at the end.
//!
//! Memory: the build rows and their table are reserved (`HashJoin`, spillable) before they are
//! added, up to the share fixed when the join starts; partitions buffer under their own
//! reservation; every output chunk is reserved before it is handed on.
//!
//! The types are here; their code is in [`node`] (the join in the physical plan), [`keys`] (key encodings, hashing, what each join type
//! makes of candidate pairs), [`table`] (the build table), [`probe`] (what the scan workers run),
//! [`stream`] (the join as it runs: build, probe, partitions, chunks) and [`ranges`] (key ranges
//! and grace partitions).

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow_row::{RowConverter, Rows, SortField};
use foldhash::fast::FixedState;
use hashbrown::HashTable;

use super::int_map::{IntFilter, IntMap};
use super::operators::{Expand, KeyTest, Stage};
use super::partition::SpillPartitions;
use super::row_keys::RowKeys;
use super::{hash_table_bytes, int_like, BatchStream, ExecContext, OperatorMetrics, Pipeline};
use crate::error::{Error, Result};
use crate::expr::Expr;
use crate::memory::MemoryReservation;
use crate::plan::JoinType;
use crate::spill::{SpillFile, SpillReader};

mod keys;
mod node;
mod probe;
mod ranges;
mod stream;
mod table;

use self::keys::hash_key;
pub(crate) use self::node::JoinNode;
use self::ranges::key_ranges;

const PARTITIONS: usize = 16;
const MAX_DEPTH: usize = 6;
/// End of a chain; also what the table of integer keys says for a key it does not have.
const NONE: u32 = super::int_map::ABSENT;
const TABLE_SEED: u64 = 0x5eed_7ab1e;

/// Bytes a build row costs in the table besides its columns (chain link, table slot, flags), for
/// sizing key ranges (see [`key_ranges`]).
const TABLE_ROW_BYTES: u64 = 32;

/// Estimated table bytes of one key range (see [`key_ranges`]). The lineitem-orders join at
/// scale factor 10 (2 threads) took 3.4 s with ranges of 4 MiB, 3.1-3.3 s with 8 to 32 MiB,
/// 3.8 s with 128 MiB, and 3.9-5.0 s (and 1.2 GiB) with all orders in one table.
const RANGE_BYTES: u64 = 16 << 20;

/// The least memory a join needs: a few batches of build rows, partition buffers, a probe chunk.
pub(crate) fn min_memory(ctx: &ExecContext) -> u64 {
    6 * ctx.batch_bytes_target().min(1 << 20)
}

/// What a join keeps for its own batch reservations (see `JoinStream::headroom`): two batches,
/// of at most 1 MiB each (above that the pool is roomy, and a join of a plan of seven would keep
/// 224 MiB at a 1 GiB budget).
pub(crate) fn kept_batches(ctx: &ExecContext) -> u64 {
    super::headroom_for(ctx.batch_bytes_target())
}

/// The share of `available` the build table may fill; the rest is for partition buffers and
/// output chunks, and for the operators above.
pub(crate) fn table_limit(available: u64, ctx: &ExecContext) -> u64 {
    (available * 2 / 3).max(min_memory(ctx) / 2)
}

/// What is joined, and how.
pub(crate) struct JoinSpec {
    pub join_type: JoinType,
    /// The build side is the plan's left input.
    pub build_is_left: bool,
    /// Key expressions over the build input and the probe input, pairwise of the same type.
    pub build_keys: Vec<Expr>,
    pub probe_keys: Vec<Expr>,
    /// Other conditions, over the candidate pairs (`pair_schema`).
    pub filter: Option<Expr>,
    /// Output schema: left columns, then right columns (for semi and anti joins the left
    /// columns, for a mark join those and the mark).
    pub schema: SchemaRef,
    /// The candidate pairs: left columns, then right columns.
    pub pair_schema: SchemaRef,
}

/// The spec with what execution derives from it.
struct JoinPlan {
    spec: JoinSpec,
    build_schema: SchemaRef,
    probe_schema: SchemaRef,
    key_kind: KeyKind,
    keep_build: bool,
    keep_probe: bool,
    /// For semi, anti and mark joins: which, and whether the query's rows (the left input) are
    /// the build side.
    existence: Option<Existence>,
    /// Whether the subquery's side (the right input) has a row, and a row with a null key: what
    /// `NOT IN` and `IN` need to tell false from unknown. Set as its rows are read.
    right_rows: AtomicBool,
    right_null_key: AtomicBool,
    metrics: Arc<OperatorMetrics>,
    /// Output chunks stop at about this many bytes, and at this many rows.
    chunk_bytes: usize,
    batch_size: usize,
}

/// What a semi, anti or mark join outputs.
#[derive(Debug, Clone, Copy)]
struct Existence {
    join_type: JoinType,
    /// The left input (the query's rows) is the build side.
    outer_is_build: bool,
}

/// How keys are compared.
enum KeyKind {
    /// No keys: every pair is a candidate.
    None,
    /// One integer-like key, compared as `i64` (the common case: ids, dates).
    Int,
    /// Two to four integer-like keys (TPC-H's `(partkey, suppkey)`), packed into one `i64`, see
    /// [`pack`]; the row format for keys whose values do not fit.
    Packed(RowConverter),
    /// Anything else, in row format.
    Rows(RowConverter),
}

/// The keys of one batch.
enum Keys {
    None,
    Int(ScalarBuffer<i64>),
    /// Packed keys, and for the rows whose values did not fit (`loose`), their row-format keys
    /// (made for every row, only when some row needs them).
    Packed {
        packed: Vec<i64>,
        loose: Option<(Vec<bool>, Rows)>,
    },
    Rows(Rows),
}

/// Probes batches against a finished in-memory table, on the scan workers of the probe side.
struct Prober {
    shared: Arc<JoinPlan>,
    table: Arc<BuildTable>,
    /// Count the batches as the join's input (not for partitions read back from disk, counted
    /// when they first came).
    count: bool,
}

/// The keys of a finished build table as a test of probe rows: a row whose key is not there has
/// no partner.
struct TableKeys {
    shared: Arc<JoinPlan>,
    table: Arc<BuildTable>,
    /// Rows the test drops early count as the join's input (they are the probe's rows).
    count: bool,
}

/// Drops rows whose join key is not in a finished build table, before they reach the work that
/// leads to the join (an aggregation grouping by the key, say): rows the join would drop anyway.
/// `keys` compute the probe key over the batches this runs on.
struct KeyFilter {
    test: Arc<TableKeys>,
    keys: Vec<Expr>,
}

/// Build rows in memory, with the chains of equal keys.
struct BuildTable {
    /// The build side's schema; `batches` hold some of its columns narrower (see [`narrow`]).
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    /// First row (global id) of each batch.
    starts: Vec<u32>,
    rows: usize,
    /// Bytes of `batches`, kept as they are added (probes ask for it per chunk).
    data_bytes: usize,
    /// Row-format keys of all rows, concatenated (empty for a row with a null key).
    key_data: Vec<u8>,
    key_offsets: Vec<usize>,
    /// Chain heads by row-format key.
    table: HashTable<u32>,
    /// Chain heads by integer key (one key, or packed keys).
    int_heads: IntMap,
    /// A filter of `int_heads`' keys (with its reservation), made once the table is probed when
    /// probe keys miss it (see `int_heads_of`); `None` inside when the pool had no room for it.
    int_filter: OnceLock<Option<(IntFilter, MemoryReservation)>>,
    /// Packed keys whose values did not fit: each distinct key once, in row format, numbered as
    /// the chain heads in `loose_heads` are.
    loose_keys: RowKeys,
    loose_heads: Vec<u32>,
    /// The next row of each row's chain.
    next: Vec<u32>,
    /// Rows that found a partner (outer joins keeping build rows, existence joins whose query
    /// rows build).
    matched: Vec<AtomicBool>,
    /// Rows whose key is null (existence joins whose query rows build).
    key_null: Vec<bool>,
    /// With no keys every row is in the one chain starting here.
    all_head: u32,
    /// Some key is on more than one row (a probe row may then find many partners).
    duplicates: bool,
    reservation: MemoryReservation,
    /// Most bytes the table may hold.
    limit: u64,
    /// What it may always take, headroom or not (see `MemoryReservation::try_grow_past`).
    floor: u64,
}

/// A probe batch being joined.
struct ProbeBatch {
    batch: RecordBatch,
    keys: Keys,
    valid: Option<NullBuffer>,
    /// The chain head of every row (`NONE` for a null key), looked up at the first chunk.
    heads: Vec<u32>,
    /// The next probe row to look up, and the build row its chain continues at.
    row: usize,
    chain: u32,
    matched: Vec<bool>,
    /// Row number of the batch's first row in its input (for the chunked bitmap).
    offset: u64,
    reservation: Option<MemoryReservation>,
}

/// An outer join's probe rows that found no partner, handed out null-extended a chunk at a time:
/// the build side's nulls may be far wider than the probe row they extend.
struct Unmatched {
    batch: RecordBatch,
    rows: Vec<u32>,
    /// The next of `rows` to hand out.
    at: usize,
    /// The batch's reservation, held until its last chunk is out.
    _held: Option<MemoryReservation>,
}

/// Where probe batches come from.
enum ProbeInput {
    Stream(Box<BatchStream>),
    /// A spill file, owned here unless the chunks it is read for own it.
    File {
        reader: SpillReader,
        _owned: Option<SpillFile>,
    },
}

/// Matched flags of every row of a probe partition, kept over build chunks.
struct Bitmap {
    bits: Vec<u64>,
    _reservation: MemoryReservation,
}

/// The rest of a partition joined in chunks.
struct Chunks {
    build_reader: SpillReader,
    _build_file: SpillFile,
    /// A build batch read but not yet placed in a chunk.
    pending: Option<RecordBatch>,
    /// Pays for `pending`.
    pending_reservation: MemoryReservation,
    probe_file: SpillFile,
}

/// One build table and the probe input streaming through it.
struct Probe {
    table: Arc<BuildTable>,
    input: Option<ProbeInput>,
    /// The input's batches are joined already (the scan workers probe, see [`Prober`]).
    joined: bool,
    rows_read: u64,
    current: Option<ProbeBatch>,
    /// The unmatched rows of the last probe batch, still to hand out.
    alone: Option<Unmatched>,
    /// Chunked mode: matched probe rows over all chunks, and what comes after this chunk.
    bitmap: Option<Bitmap>,
    chunks: Option<Chunks>,
    /// Once the probe input is done: the next build row to check for being unmatched.
    unmatched_from: Option<u32>,
    /// Batches of a probe wave whose output did not fit, to join one at a time (still reserved).
    replay: VecDeque<(RecordBatch, MemoryReservation)>,
    /// No more waves in this pass (one did not fit).
    no_wave: bool,
}

/// A pair of partitions still to join.
struct Task {
    build: SpillFile,
    probe: SpillFile,
    depth: usize,
    /// Rows of the partition this one was split from.
    parent_rows: u64,
}

enum State {
    Start {
        build: Box<Pipeline>,
        probe: Box<Pipeline>,
    },
    Probe(Box<Probe>),
    /// Chunked mode, after the last chunk: probe rows no chunk matched.
    ProbeUnmatched {
        reader: SpillReader,
        _file: SpillFile,
        bitmap: Bitmap,
        offset: u64,
        alone: Option<Unmatched>,
    },
    NextTask,
    Done,
}

/// A hash join in progress.
pub(crate) struct JoinStream {
    shared: Arc<JoinPlan>,
    ctx: ExecContext,
    /// Work from above the join (see [`super::Pipeline::push_down`]): run by the probe side's
    /// workers when they probe, else here on every batch the join makes.
    above: Vec<Stage>,
    out_schema: SchemaRef,
    /// Output of `above` run here, waiting to go out.
    pending: VecDeque<RecordBatch>,
    /// Output of a wave of partition batches probed in parallel (`above` done), each with its
    /// reservation.
    wave: VecDeque<(RecordBatch, MemoryReservation)>,
    /// The batch just taken came from the probe side's workers, `above` done.
    from_workers: bool,
    state: State,
    tasks: VecDeque<Task>,
    /// The emptied integer-key table of the last partition joined, still reserved, for the next
    /// partition's build table: a fresh one per partition had the kernel zero its pages again
    /// (two fifths of the page faults of the lineitem-orders join at scale factor 10).
    spare_heads: Option<(IntMap, MemoryReservation)>,
    /// Key ranges still to join, with their estimated build rows (see [`key_ranges`]).
    ranges: VecDeque<(Pipeline, Pipeline, u64)>,
    /// Most bytes the first build table may hold.
    first_limit: u64,
    /// Scan queue limit for the inputs.
    queue_limit: u64,
    /// Headroom for two of the join's own batches (a batch read back from a partition, an
    /// output batch) while it runs: tables (its own, an aggregation's above) do not grow into
    /// it, and near the minimum these small reservations failed without it (found by the fuzzer).
    /// Output rows are wider than either input's: it grows with the largest batch seen (see
    /// [`super::headroom_for`]).
    headroom: std::sync::Mutex<Option<crate::memory::Headroom>>,
}

/// Splits one side's rows into spill partitions by a hash of their key.
struct Partitioner {
    shared: Arc<JoinPlan>,
    parts: SpillPartitions,
    seed: u64,
    build: bool,
}
