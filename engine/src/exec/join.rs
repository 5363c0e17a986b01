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
struct Shared {
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

/// Packs the values of two to four integer keys (cast to `i64`) into one `i64` per row: each
/// column gets an equal share of the 64 bits (32, 21 or 16), and a value fits when it is within
/// the signed range of its share. Returns the packed keys and, when some row with no null key
/// has a value that does not fit, which rows those are: they are compared in row format instead.
/// Whether a key packs depends only on its values, so equal keys on either side of a join always
/// take the same path, and a packed key equals another exactly when their values do.
fn pack(columns: &[&[i64]], valid: Option<&NullBuffer>, rows: usize) -> (Vec<i64>, Option<Vec<bool>>) {
    let bits = 64 / columns.len() as u32;
    let (low, high) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    let mask = (1u64 << bits) - 1;
    let mut packed = vec![0i64; rows];
    let mut out_of_range = false;
    for (j, values) in columns.iter().enumerate() {
        let shift = j as u32 * bits;
        for (p, &v) in packed.iter_mut().zip(values.iter()) {
            out_of_range |= v < low || v > high;
            *p |= (((v as u64) & mask) << shift) as i64;
        }
    }
    if !out_of_range {
        return (packed, None);
    }
    let loose: Vec<bool> = (0..rows)
        .map(|i| valid.is_none_or(|v| v.is_valid(i)) && columns.iter().any(|c| c[i] < low || c[i] > high))
        .collect();
    let any = loose.iter().any(|&l| l);
    (packed, any.then_some(loose))
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

impl Keys {
    fn hash(&self, i: usize, seed: u64) -> u64 {
        match self {
            Keys::None => 0,
            Keys::Int(v) => FixedState::with_seed(seed).hash_one(v[i]),
            Keys::Packed { loose: Some((loose, rows)), .. } if loose[i] => hash_key(rows.row(i).data(), seed),
            Keys::Packed { packed, .. } => FixedState::with_seed(seed).hash_one(packed[i]),
            Keys::Rows(r) => hash_key(r.row(i).data(), seed),
        }
    }
    fn bytes(&self) -> usize {
        match self {
            Keys::None => 0,
            Keys::Int(v) => v.len() * 8,
            Keys::Packed { packed, loose } => {
                packed.len() * 8 + loose.as_ref().map_or(0, |(flags, rows)| flags.len() + rows.size())
            }
            Keys::Rows(r) => r.size(),
        }
    }
}

impl Shared {
    /// Whether a probe row whose key is not in the table gives no output (inner and semi joins,
    /// existence joins whose query rows build): then the table's keys may filter the probe side
    /// before the join (see [`KeyFilter`], [`Expand::key_test`]).
    fn drops_unmatched(&self) -> bool {
        !self.keep_probe
            && !self.spec.join_type.is_null_aware()
            && self.existence.is_none_or(|e| e.outer_is_build || e.join_type == JoinType::Semi)
            && !matches!(self.key_kind, KeyKind::None)
    }

    /// Keys of a batch of one side, and which rows have no null key.
    fn keys(&self, batch: &RecordBatch, build: bool) -> Result<(Keys, Option<NullBuffer>)> {
        let exprs = if build { &self.spec.build_keys } else { &self.spec.probe_keys };
        self.keys_of(batch, exprs)
    }

    /// Keys computed by `exprs` (of the probe keys' types), and which rows have no null key.
    fn keys_of(&self, batch: &RecordBatch, exprs: &[Expr]) -> Result<(Keys, Option<NullBuffer>)> {
        if matches!(self.key_kind, KeyKind::None) {
            return Ok((Keys::None, None));
        }
        let rows = batch.num_rows();
        let columns = exprs.iter().map(|e| e.evaluate(batch)?.into_array(rows)).collect::<Result<Vec<ArrayRef>>>()?;
        let mut valid: Option<NullBuffer> = None;
        for c in &columns {
            valid = NullBuffer::union(valid.as_ref(), c.logical_nulls().as_ref());
        }
        let keys = match &self.key_kind {
            KeyKind::None => Keys::None,
            KeyKind::Int => {
                let ints = arrow::compute::cast(&columns[0], &DataType::Int64)?;
                Keys::Int(ints.as_primitive::<Int64Type>().values().clone())
            }
            KeyKind::Packed(converter) => {
                let ints = columns
                    .iter()
                    .map(|c| arrow::compute::cast(c, &DataType::Int64))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let values: Vec<&[i64]> =
                    ints.iter().map(|c| c.as_primitive::<Int64Type>().values().as_ref()).collect();
                let (packed, loose) = pack(&values, valid.as_ref(), rows);
                let loose = match loose {
                    Some(flags) => Some((flags, converter.convert_columns(&columns)?)),
                    None => None,
                };
                Keys::Packed { packed, loose }
            }
            KeyKind::Rows(converter) => Keys::Rows(converter.convert_columns(&columns)?),
        };
        Ok((keys, valid))
    }

    /// An output batch from build and probe columns.
    fn assemble(&self, build: Vec<ArrayRef>, probe: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
        let columns = if self.spec.build_is_left { [build, probe].concat() } else { [probe, build].concat() };
        Ok(RecordBatch::try_new_with_options(
            self.spec.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    fn nulls(schema: &SchemaRef, rows: usize) -> Vec<ArrayRef> {
        schema.fields().iter().map(|f| new_null_array(f.data_type(), rows)).collect()
    }
}

impl Shared {
    /// Whether build rows need matched flags: an outer join keeping them, or an existence join
    /// whose query rows build.
    fn track_build(&self) -> bool {
        self.keep_build || self.existence.is_some_and(|e| e.outer_is_build)
    }

    /// Notes rows of the right input (the subquery's side) as they are read.
    fn saw_right_rows(&self, rows: usize, null_key: bool) {
        if rows > 0 {
            self.right_rows.store(true, Ordering::Relaxed);
        }
        if null_key {
            self.right_null_key.store(true, Ordering::Relaxed);
        }
    }

    /// The mark of a query row: true if it found a partner; for `IN` semantics (null-aware),
    /// unknown instead of false when its key is null or the subquery has a null key, unless the
    /// subquery has no rows at all.
    fn mark(&self, existence: Existence, matched: bool, key_null: bool) -> Option<bool> {
        if matched {
            return Some(true);
        }
        if existence.join_type.is_null_aware()
            && self.right_rows.load(Ordering::Relaxed)
            && (key_null || self.right_null_key.load(Ordering::Relaxed))
        {
            return None;
        }
        Some(false)
    }

    /// The output rows of an existence join from query rows `rows` of `batch` and their marks:
    /// semi keeps the true ones, anti the false ones, mark all of them with the mark as a column.
    fn existence_output(
        &self,
        existence: Existence,
        batch: &RecordBatch,
        marks: impl Iterator<Item = (u32, Option<bool>)>,
    ) -> Result<Option<RecordBatch>> {
        let (mut rows, mut values) = (Vec::new(), Vec::new());
        for (row, mark) in marks {
            let keep = match existence.join_type {
                JoinType::Semi => mark == Some(true),
                JoinType::Anti { .. } => mark == Some(false),
                _ => true,
            };
            if keep {
                rows.push(row);
                values.push(mark);
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        let mut columns = if n == batch.num_rows() {
            batch.columns().to_vec()
        } else {
            arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?.columns().to_vec()
        };
        if matches!(existence.join_type, JoinType::Mark { .. }) {
            columns.push(Arc::new(arrow::array::BooleanArray::from(values)));
        }
        Ok(Some(RecordBatch::try_new_with_options(
            self.spec.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?))
    }

    /// Probes a batch of query rows (the probe side of an existence join) and returns its output.
    /// `bitmap` (chunked mode): matches are recorded there, over all chunks, and nothing is output
    /// until the last chunk.
    fn existence_probe(
        &self,
        existence: Existence,
        table: &BuildTable,
        batch: &RecordBatch,
        offset: u64,
        bitmap: Option<&mut Bitmap>,
    ) -> Result<Option<RecordBatch>> {
        let (keys, valid) = self.keys(batch, false)?;
        let n = batch.num_rows();
        let valid_row = |i: usize| valid.as_ref().is_none_or(|v| v.is_valid(i));
        let mut matched = vec![false; n];
        let heads = table.heads(&keys, valid.as_ref(), n);
        match &self.spec.filter {
            None => {
                for (m, &head) in matched.iter_mut().zip(&heads) {
                    *m = head != NONE;
                }
            }
            Some(filter) => {
                // Candidate pairs a chunk at a time; a row stops looking once one passes.
                let max = self.chunk_rows(table.row_bytes() + batch.get_array_memory_size() / n.max(1) + 1);
                let (mut probe_ids, mut build_ids) = (Vec::new(), Vec::new());
                let flush = |probe_ids: &mut Vec<u32>, build_ids: &mut Vec<u32>, matched: &mut [bool]| -> Result<()> {
                    if probe_ids.is_empty() {
                        return Ok(());
                    }
                    let probe_cols = arrow::compute::take_record_batch(batch, &UInt32Array::from(probe_ids.clone()))?;
                    let build_cols = table.gather(build_ids)?;
                    let pairs = self.assemble_pairs(build_cols, probe_cols.columns().to_vec(), probe_ids.len())?;
                    let mask = crate::expr::not_null_true(&filter.evaluate_predicate(&pairs)?);
                    for (k, &p) in probe_ids.iter().enumerate() {
                        if mask.value(k) {
                            matched[p as usize] = true;
                        }
                    }
                    probe_ids.clear();
                    build_ids.clear();
                    Ok(())
                };
                for (i, &head) in heads.iter().enumerate() {
                    let mut chain = head;
                    while chain != NONE {
                        probe_ids.push(i as u32);
                        build_ids.push(chain);
                        chain = table.next[chain as usize];
                        if probe_ids.len() >= max {
                            flush(&mut probe_ids, &mut build_ids, &mut matched)?;
                            if matched[i] {
                                break;
                            }
                        }
                    }
                }
                flush(&mut probe_ids, &mut build_ids, &mut matched)?;
            }
        }
        match bitmap {
            Some(bits) => {
                for (i, m) in matched.iter().enumerate() {
                    if *m {
                        bits.set(offset + i as u64);
                    }
                }
                Ok(None)
            }
            None => {
                let marks = (0..n).map(|i| (i as u32, self.mark(existence, matched[i], !valid_row(i))));
                self.existence_output(existence, batch, marks)
            }
        }
    }

    /// Probes a batch of subquery rows against a table of query rows (an existence join whose
    /// query rows build): only the build rows' matched flags change.
    fn existence_mark_build(&self, table: &BuildTable, batch: &RecordBatch) -> Result<()> {
        let (keys, valid) = self.keys(batch, false)?;
        let n = batch.num_rows();
        self.saw_right_rows(n, valid.as_ref().is_some_and(|v| v.null_count() > 0));
        let heads = table.heads(&keys, valid.as_ref(), n);
        match &self.spec.filter {
            None => {
                for &head in &heads {
                    // Every row of a chain has the same key: marked together, once.
                    if head == NONE || table.matched[head as usize].load(Ordering::Relaxed) {
                        continue;
                    }
                    let mut chain = head;
                    while chain != NONE {
                        table.matched[chain as usize].store(true, Ordering::Relaxed);
                        chain = table.next[chain as usize];
                    }
                }
            }
            Some(filter) => {
                let max = self.chunk_rows(table.row_bytes() + batch.get_array_memory_size() / n.max(1) + 1);
                let (mut probe_ids, mut build_ids) = (Vec::new(), Vec::new());
                let flush = |probe_ids: &mut Vec<u32>, build_ids: &mut Vec<u32>| -> Result<()> {
                    if probe_ids.is_empty() {
                        return Ok(());
                    }
                    let probe_cols = arrow::compute::take_record_batch(batch, &UInt32Array::from(probe_ids.clone()))?;
                    let build_cols = table.gather(build_ids)?;
                    let pairs = self.assemble_pairs(build_cols, probe_cols.columns().to_vec(), probe_ids.len())?;
                    let mask = crate::expr::not_null_true(&filter.evaluate_predicate(&pairs)?);
                    for (k, &b) in build_ids.iter().enumerate() {
                        if mask.value(k) {
                            table.matched[b as usize].store(true, Ordering::Relaxed);
                        }
                    }
                    probe_ids.clear();
                    build_ids.clear();
                    Ok(())
                };
                for (i, &head) in heads.iter().enumerate() {
                    let mut chain = head;
                    while chain != NONE {
                        if !table.matched[chain as usize].load(Ordering::Relaxed) {
                            probe_ids.push(i as u32);
                            build_ids.push(chain);
                        }
                        chain = table.next[chain as usize];
                        if probe_ids.len() >= max {
                            flush(&mut probe_ids, &mut build_ids)?;
                        }
                    }
                }
                flush(&mut probe_ids, &mut build_ids)?;
            }
        }
        Ok(())
    }

    /// Candidate pairs as the join's condition reads them: left columns, then right columns.
    fn assemble_pairs(&self, build: Vec<ArrayRef>, probe: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
        let columns = if self.spec.build_is_left { [build, probe].concat() } else { [probe, build].concat() };
        Ok(RecordBatch::try_new_with_options(
            self.spec.pair_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    /// Rows per output chunk: a batch's worth, fewer for wide rows.
    fn chunk_rows(&self, row_bytes: usize) -> usize {
        (self.chunk_bytes / row_bytes.max(1)).clamp(1, self.batch_size)
    }

    /// Probe rows `rows` of `batch` with nulls for the build side (an outer join's unmatched rows).
    fn probe_rows_alone(&self, batch: &RecordBatch, rows: Vec<u32>) -> Result<Option<RecordBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        let probe = if n == batch.num_rows() {
            batch.columns().to_vec()
        } else {
            arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?.columns().to_vec()
        };
        let build = Shared::nulls(&self.build_schema, n);
        Ok(Some(self.assemble(build, probe, n)?))
    }

    /// Walks chains from where `current` stopped until a chunk's worth of pairs; returns the pairs
    /// that meet the join's conditions (`None` when none did).
    fn join_chunk(
        &self,
        table: &BuildTable,
        current: &mut ProbeBatch,
        mut bitmap: Option<&mut Bitmap>,
    ) -> Result<Option<RecordBatch>> {
        let shared = self;
        let probe_row_bytes = current.batch.get_array_memory_size() / current.batch.num_rows().max(1) + 1;
        let max = self.chunk_rows(table.row_bytes() + probe_row_bytes);
        let n = current.batch.num_rows();
        let mut probe_ids: Vec<u32> = Vec::new();
        let mut build_ids: Vec<u32> = Vec::new();
        if current.heads.len() != n {
            current.heads = table.heads(&current.keys, current.valid.as_ref(), n);
        }
        while current.row < n && probe_ids.len() < max {
            if current.chain == NONE {
                current.chain = current.heads[current.row];
                if current.chain == NONE {
                    current.row += 1;
                    continue;
                }
            }
            while current.chain != NONE && probe_ids.len() < max {
                probe_ids.push(current.row as u32);
                build_ids.push(current.chain);
                current.chain = table.next[current.chain as usize];
            }
            if current.chain == NONE {
                current.row += 1;
            }
        }
        if current.done() {
            // The batch's own reservation goes once its last chunk is cut.
            current.reservation.take();
        }
        if probe_ids.is_empty() {
            return Ok(None);
        }
        let probe_ids = UInt32Array::from(probe_ids);
        // Every probe row once, in order (a lookup in a small dimension table such as TPC-H's
        // nation): the batch's columns as they are, not a copy of them.
        let whole = probe_ids.len() == n && probe_ids.values().iter().enumerate().all(|(k, &p)| p as usize == k);
        let probe_cols = if whole {
            current.batch.columns().to_vec()
        } else {
            arrow::compute::take_record_batch(&current.batch, &probe_ids)?.columns().to_vec()
        };
        let build_cols = table.gather(&build_ids)?;
        let mut out = shared.assemble(build_cols, probe_cols, probe_ids.len())?;
        let mut keep: Option<Vec<bool>> = None;
        if let Some(filter) = &shared.spec.filter {
            let mask = crate::expr::not_null_true(&filter.evaluate_predicate(&out)?);
            keep = Some(mask.iter().map(|v| v == Some(true)).collect());
            out = arrow::compute::filter_record_batch(&out, &mask)?;
        }
        let kept = |k: usize| keep.as_ref().is_none_or(|m| m[k]);
        if shared.keep_build {
            for (k, &b) in build_ids.iter().enumerate() {
                if kept(k) {
                    table.matched[b as usize].store(true, Ordering::Relaxed);
                }
            }
        }
        if shared.keep_probe {
            for (k, &p) in probe_ids.values().iter().enumerate() {
                if kept(k) {
                    match bitmap.as_deref_mut() {
                        Some(bits) => bits.set(current.offset + p as u64),
                        None => current.matched[p as usize] = true,
                    }
                }
            }
        }
        Ok((out.num_rows() > 0).then_some(out))
    }

    /// A probe batch ready to be joined: its keys, and matched flags when its unmatched rows are
    /// returned right after it.
    fn probe_batch(
        &self,
        batch: RecordBatch,
        offset: u64,
        track: bool,
        reservation: Option<MemoryReservation>,
    ) -> Result<ProbeBatch> {
        let (keys, valid) = self.keys(&batch, false)?;
        let n = batch.num_rows();
        Ok(ProbeBatch {
            batch,
            keys,
            valid,
            heads: Vec::new(),
            row: 0,
            chain: NONE,
            matched: if track { vec![false; n] } else { Vec::new() },
            offset,
            reservation,
        })
    }

    /// The rows of a finished probe batch that found no partner, null-extended (outer joins that
    /// keep probe rows).
    fn unmatched_probe_rows(&self, current: &ProbeBatch) -> Result<Option<RecordBatch>> {
        let rows: Vec<u32> = (0..current.batch.num_rows()).filter(|&i| !current.matched[i]).map(|i| i as u32).collect();
        self.probe_rows_alone(&current.batch, rows)
    }
}

/// Probes batches against a finished in-memory table, on the scan workers of the probe side.
struct Prober {
    shared: Arc<Shared>,
    table: Arc<BuildTable>,
    /// Count the batches as the join's input (not for partitions read back from disk, counted
    /// when they first came).
    count: bool,
}

impl Expand for Prober {
    fn key_test(&self) -> Option<(Vec<Expr>, Arc<dyn KeyTest>)> {
        let test = TableKeys { shared: self.shared.clone(), table: self.table.clone(), count: self.count };
        self.shared.drops_unmatched().then(|| (self.shared.spec.probe_keys.clone(), Arc::new(test) as Arc<dyn KeyTest>))
    }

    fn expand(&self, batch: RecordBatch, emit: &mut dyn FnMut(RecordBatch) -> Result<bool>) -> Result<bool> {
        let shared = &self.shared;
        if self.count {
            shared.metrics.rows_in(batch.num_rows());
        }
        // The join's output is counted here, before the work from above runs on it.
        let mut emit = |out: RecordBatch| {
            shared.metrics.rows_out(out.num_rows());
            emit(out)
        };
        if let Some(existence) = shared.existence {
            if existence.outer_is_build {
                shared.existence_mark_build(&self.table, &batch)?;
                return Ok(true);
            }
            return match shared.existence_probe(existence, &self.table, &batch, 0, None)? {
                Some(out) => emit(out),
                None => Ok(true),
            };
        }
        let mut current = shared.probe_batch(batch, 0, shared.keep_probe, None)?;
        while !current.done() {
            if let Some(out) = shared.join_chunk(&self.table, &mut current, None)? {
                if !emit(out)? {
                    return Ok(false);
                }
            }
        }
        if shared.keep_probe {
            if let Some(out) = shared.unmatched_probe_rows(&current)? {
                return emit(out);
            }
        }
        Ok(true)
    }
}

/// The keys of a finished build table as a test of probe rows: a row whose key is not there has
/// no partner.
struct TableKeys {
    shared: Arc<Shared>,
    table: Arc<BuildTable>,
    /// Rows the test drops early count as the join's input (they are the probe's rows).
    count: bool,
}

impl KeyTest for TableKeys {
    fn keeps(&self, batch: &RecordBatch, keys: &[Expr]) -> Result<BooleanArray> {
        let (keys, valid) = self.shared.keys_of(batch, keys)?;
        let heads = self.table.heads(&keys, valid.as_ref(), batch.num_rows());
        Ok(BooleanArray::new(BooleanBuffer::collect_bool(heads.len(), |i| heads[i] != NONE), None))
    }

    fn dropped(&self, rows: usize) {
        if self.count {
            self.shared.metrics.rows_in(rows);
        }
    }
}

/// Drops rows whose join key is not in a finished build table, before they reach the work that
/// leads to the join (an aggregation grouping by the key, say): rows the join would drop anyway.
/// `keys` compute the probe key over the batches this runs on.
struct KeyFilter {
    test: Arc<TableKeys>,
    keys: Vec<Expr>,
}

impl Expand for KeyFilter {
    fn key_test(&self) -> Option<(Vec<Expr>, Arc<dyn KeyTest>)> {
        Some((self.keys.clone(), self.test.clone()))
    }

    fn expand(&self, batch: RecordBatch, emit: &mut dyn FnMut(RecordBatch) -> Result<bool>) -> Result<bool> {
        let keep = self.test.keeps(&batch, &self.keys)?;
        if keep.true_count() == 0 {
            return Ok(true);
        }
        let out = if keep.true_count() == batch.num_rows() {
            batch
        } else {
            arrow::compute::filter_record_batch(&batch, &keep)?
        };
        emit(out)
    }
}

fn hash_key(key: &[u8], seed: u64) -> u64 {
    FixedState::with_seed(seed).hash_one(key)
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

impl BuildTable {
    fn new(ctx: &ExecContext, schema: &SchemaRef, limit: u64) -> BuildTable {
        BuildTable {
            floor: min_memory(ctx) / 2,
            schema: schema.clone(),
            batches: Vec::new(),
            starts: Vec::new(),
            rows: 0,
            data_bytes: 0,
            key_data: Vec::new(),
            key_offsets: vec![0],
            table: HashTable::new(),
            int_heads: IntMap::default(),
            int_filter: OnceLock::new(),
            loose_keys: RowKeys::new(),
            loose_heads: Vec::new(),
            next: Vec::new(),
            matched: Vec::new(),
            key_null: Vec::new(),
            all_head: NONE,
            duplicates: false,
            reservation: ctx.pool.register("HashJoin", true),
            limit,
        }
    }

    fn key(&self, id: u32) -> &[u8] {
        let i = id as usize;
        &self.key_data[self.key_offsets[i]..self.key_offsets[i + 1]]
    }

    /// Bytes held now.
    fn heap_bytes(&self) -> u64 {
        (self.data_bytes
            + self.key_data.capacity()
            + self.key_offsets.capacity() * 8
            + self.next.capacity() * 4
            + self.matched.capacity()
            + self.key_null.capacity()
            + hash_table_bytes(self.table.capacity(), 4)
            + self.int_heads.bytes()
            + self.loose_keys.bytes()
            + self.loose_heads.capacity() * 4) as u64
    }

    /// Links row `id`, whose packed key did not fit, into the chain of its row-format key.
    fn add_loose(&mut self, key: &[u8], id: u32) -> bool {
        let h = hash_key(key, TABLE_SEED);
        if let Some(j) = self.loose_keys.find(key, h) {
            self.next[id as usize] = std::mem::replace(&mut self.loose_heads[j], id);
            return true;
        }
        self.loose_keys.push(Some((key, h)), self.loose_heads.len() as u32);
        self.loose_heads.push(id);
        false
    }

    /// The chain head of a packed key that did not fit, by its row-format key.
    fn loose_head(&self, key: &[u8]) -> u32 {
        self.loose_keys.find(key, hash_key(key, TABLE_SEED)).map_or(NONE, |j| self.loose_heads[j])
    }

    /// Sizes the table of integer keys for `rows` rows at once, when the share allows: a
    /// partition's row count is known before it is read back, and growing step by step moves
    /// every key at each step.
    fn expect_rows(&mut self, shared: &Shared, rows: u64) {
        if !matches!(shared.key_kind, KeyKind::Int | KeyKind::Packed(_)) || rows >= NONE as u64 {
            return;
        }
        let bytes = self.int_heads.growth_bytes(rows as usize) as u64;
        if bytes > 0
            && self.reservation.size() + bytes <= self.limit / 2
            && self.reservation.try_grow_spare(bytes).is_ok()
        {
            self.int_heads.reserve(rows as usize);
            let held = self.heap_bytes();
            self.reservation.shrink(self.reservation.size().saturating_sub(held));
        }
    }

    /// Adds a batch if its rows, keys and table growth fit; gives it back when they do not.
    fn try_add(&mut self, shared: &Shared, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        // A filter made by probes would miss the keys added now.
        self.int_filter.take();
        let n = batch.num_rows();
        if self.rows + n >= NONE as usize {
            return Ok(Some(batch));
        }
        let (keys, valid) = shared.keys(&batch, true)?;
        // Vectors may double while growing, and a growing hash table holds old and new at once:
        // hashbrown grows to the larger of what it must hold and one more than it could (which
        // doubles its buckets).
        let grown = |len: usize, capacity: usize, entry: usize| {
            hash_table_bytes(capacity, entry) + hash_table_bytes((len + n).max(capacity + 1), entry)
        };
        let grown_table = match &keys {
            Keys::None => 0,
            Keys::Int(_) => self.int_heads.growth_bytes(self.int_heads.room_for(n)),
            Keys::Packed { loose, .. } => {
                let loose_growth = match loose {
                    Some(_) if self.loose_keys.table.len() + n > self.loose_keys.table.capacity() => {
                        grown(self.loose_keys.table.len(), self.loose_keys.table.capacity(), 4)
                    }
                    _ => 0,
                };
                self.int_heads.growth_bytes(self.int_heads.room_for(n)) + loose_growth
            }
            Keys::Rows(_) if self.table.len() + n > self.table.capacity() => {
                grown(self.table.len(), self.table.capacity(), 4)
            }
            _ => 0,
        };
        let key_bytes = match &keys {
            Keys::Rows(_) => keys.bytes() + n * 8,
            // Loose keys are kept, with an offset, a hash and a chain head each.
            Keys::Packed { loose: Some((_, rows)), .. } => rows.size() + n * 20,
            _ => 0,
        };
        // The per-row vectors (chain links, match flags, null-key flags) double when full: the new
        // buffer is held beside the old while they move.
        let grown_rows = match self.rows + n > self.next.capacity() {
            true => (2 * self.next.capacity()).max(self.rows + n) * 6,
            false => 0,
        };
        let held = narrow(&batch)?;
        let need = (held.get_array_memory_size() + 2 * key_bytes + grown_rows + grown_table) as u64;
        if self.reservation.size() + need > self.limit || self.reservation.try_grow_past(need, self.floor).is_err() {
            if !self.batches.is_empty() {
                return Ok(Some(batch));
            }
            // An empty table must take rows to make progress. A batch beyond the limit on its own
            // (rows of no columns come back from spill files by the hundred thousand, and each
            // costs the table its links) goes in the part that fits; the rest comes back.
            let room = self.limit.saturating_sub(self.reservation.size());
            if need > room && n > 1 {
                let fit = ((n as u64 * room / need) as usize).clamp(1, n - 1);
                // What comes back of the part is its end (the links' estimate is not linear).
                let taken = fit - self.try_add(shared, batch.slice(0, fit))?.map_or(0, |back| back.num_rows());
                return Ok(Some(batch.slice(taken, n - taken)));
            }
            self.reservation.try_grow(need)?;
        }
        let first = self.rows as u32;
        self.starts.push(first);
        self.next.resize(self.rows + n, NONE);
        let valid_row = |i: usize| valid.as_ref().is_none_or(|v| v.is_valid(i));
        if shared.track_build() {
            self.matched.extend((0..n).map(|_| AtomicBool::new(false)));
        }
        match shared.existence {
            Some(e) if e.outer_is_build => self.key_null.extend((0..n).map(|i| !valid_row(i))),
            Some(_) => shared.saw_right_rows(n, (0..n).any(|i| !valid_row(i))),
            None => {}
        }
        match &keys {
            Keys::None => {
                // No keys: one chain of every row.
                for i in 0..n {
                    let id = first + i as u32;
                    self.next[id as usize] = self.all_head;
                    self.duplicates |= self.all_head != NONE;
                    self.all_head = id;
                }
            }
            Keys::Int(_) | Keys::Packed { .. } => {
                let (values, loose): (&[i64], _) = match &keys {
                    Keys::Int(values) => (values, None),
                    Keys::Packed { packed, loose } => (packed, loose.as_ref()),
                    _ => unreachable!("integer keys"),
                };
                self.int_heads.reserve(self.int_heads.room_for(n));
                for (i, &key) in values.iter().enumerate() {
                    if let Some(&ahead) = values.get(i + IntMap::AHEAD) {
                        self.int_heads.prefetch(ahead);
                    }
                    if !valid_row(i) {
                        continue;
                    }
                    let id = first + i as u32;
                    if let Some((_, rows)) = loose.filter(|(flags, _)| flags[i]) {
                        self.duplicates |= self.add_loose(rows.row(i).data(), id);
                    } else if let Some(head) = self.int_heads.insert(key, id) {
                        self.next[id as usize] = head;
                        self.duplicates = true;
                    }
                }
            }
            Keys::Rows(rows) => {
                let table = &mut self.table;
                let mut duplicates = false;
                for i in 0..n {
                    let id = first + i as u32;
                    if valid_row(i) {
                        let key = rows.row(i).data();
                        self.key_data.extend_from_slice(key);
                        self.key_offsets.push(self.key_data.len());
                        let h = hash_key(key, TABLE_SEED);
                        let (data, offsets) = (&self.key_data, &self.key_offsets);
                        let key_of = |r: u32| &data[offsets[r as usize]..offsets[r as usize + 1]];
                        match table.find_mut(h, |&head| key_of(head) == key) {
                            Some(head) => {
                                self.next[id as usize] = *head;
                                *head = id;
                                duplicates = true;
                            }
                            None => {
                                table.insert_unique(h, id, |&r| hash_key(key_of(r), TABLE_SEED));
                            }
                        }
                    } else {
                        self.key_offsets.push(self.key_data.len());
                    }
                }
                self.duplicates |= duplicates;
            }
        }
        self.rows += n;
        self.data_bytes += held.get_array_memory_size();
        self.batches.push(held);
        let held = self.heap_bytes();
        if held < self.reservation.size() {
            self.reservation.shrink(self.reservation.size() - held);
        } else {
            // Over the estimate (it never should be): account for it anyway.
            self.reservation.try_grow(held - self.reservation.size())?;
        }
        shared.metrics.reserved(self.reservation.size());
        Ok(None)
    }

    /// The first build row of the chain for probe row `i` of `keys`.
    fn head(&self, keys: &Keys, i: usize) -> u32 {
        match keys {
            Keys::None => self.all_head,
            Keys::Int(values) => self.int_heads.get(values[i]),
            Keys::Packed { loose: Some((flags, rows)), .. } if flags[i] => self.loose_head(rows.row(i).data()),
            Keys::Packed { packed, .. } => self.int_heads.get(packed[i]),
            Keys::Rows(rows) => {
                let key = rows.row(i).data();
                let h = hash_key(key, TABLE_SEED);
                self.table.find(h, |&head| self.key(head) == key).copied().unwrap_or(NONE)
            }
        }
    }

    /// The first build row of the chain of every probe row of `keys` (`NONE` for a null key).
    /// Integer keys are looked up a batch at a time, each lookup's slot fetched from memory while
    /// the ones before it are done (see [`IntMap::get_all`]).
    fn heads(&self, keys: &Keys, valid: Option<&NullBuffer>, n: usize) -> Vec<u32> {
        let mut heads = match keys {
            Keys::Int(values) => self.int_heads_of(values),
            Keys::Packed { packed, loose } => {
                let mut heads = self.int_heads_of(packed);
                if let Some((flags, rows)) = loose {
                    for (i, head) in heads.iter_mut().enumerate().filter(|(i, _)| flags[*i]) {
                        *head = self.loose_head(rows.row(i).data());
                    }
                }
                heads
            }
            Keys::None => vec![self.all_head; n],
            Keys::Rows(_) => (0..n).map(|i| self.head(keys, i)).collect(),
        };
        if let Some(v) = valid.filter(|v| v.null_count() > 0) {
            for (i, head) in heads.iter_mut().enumerate() {
                if v.is_null(i) {
                    *head = NONE;
                }
            }
        }
        heads
    }

    /// Columns of build rows `ids`.
    fn gather(&self, ids: &[u32]) -> Result<Vec<ArrayRef>> {
        // Only the batches the rows are in go to `interleave`, which checks every array it gets.
        let mut used: Vec<usize> = Vec::new();
        let mut slot = vec![usize::MAX; self.batches.len()];
        let indices: Vec<(usize, usize)> = ids
            .iter()
            .map(|&id| {
                let b = self.starts.partition_point(|&s| s <= id) - 1;
                if slot[b] == usize::MAX {
                    slot[b] = used.len();
                    used.push(b);
                }
                (slot[b], (id - self.starts[b]) as usize)
            })
            .collect();
        let width = self.batches.first().map_or(0, |b| b.num_columns());
        (0..width)
            .map(|c| {
                let arrays: Vec<&dyn Array> = used.iter().map(|&b| self.batches[b].column(c).as_ref()).collect();
                Ok(widen(arrow::compute::interleave(&arrays, &indices)?, self.schema.field(c).data_type()))
            })
            .collect()
    }

    /// The chain heads of integer keys. The first batch of which more than half has no partner
    /// makes the filter of the table's keys: a join whose probe keys nearly all have partners
    /// never pays for making it (a sixth of a second at TPC-H scale factor 10 for lineitem and
    /// orders). Not only tables too big for a core's cache gain: a missing key's lookup in one
    /// that fits still takes a branch or two the CPU cannot predict (TPC-H Q8 probes lineitem's
    /// 60M part keys against 13K parts: 18 ns a key, a quarter of its CPU, before the filter;
    /// Q8 3.0 s to 2.0 s, Q17 2.1 s to 1.5 s). Tiny tables (nations, regions) are left alone.
    fn int_heads_of(&self, keys: &[i64]) -> Vec<u32> {
        const MIN_KEYS: usize = 1 << 10;
        if let Some(made) = self.int_filter.get() {
            return match made {
                Some((filter, _)) => self.int_heads.get_all_filtered(keys, filter),
                None => self.int_heads.get_all(keys),
            };
        }
        let heads = self.int_heads.get_all(keys);
        if self.int_heads.len() >= MIN_KEYS && heads.iter().filter(|&&h| h == NONE).count() > keys.len() / 2 {
            self.int_filter.get_or_init(|| {
                let count = self.int_heads.len();
                let mut reservation = self.reservation.pool().register("HashJoin key filter", false);
                reservation.try_grow_spare(IntFilter::bytes_for(count) as u64).ok()?;
                Some((IntFilter::new(count, self.int_heads.keys()), reservation))
            });
        }
        heads
    }

    /// Merges the table's batches (a filtered build side comes in many small ones) into few large
    /// ones, once the table is complete: a probe then gathers from a handful of arrays. The merged
    /// copy of each group is reserved while the group's batches still exist.
    fn compact(&mut self) -> Result<()> {
        const ROWS: usize = 1 << 16;
        if self.batches.len() <= 1 || self.rows / self.batches.len() >= ROWS / 2 {
            return Ok(());
        }
        let schema = self.batches[0].schema();
        let mut merged: Vec<RecordBatch> = Vec::new();
        let mut group: Vec<RecordBatch> = Vec::new();
        let mut group_rows = 0;
        let mut short = false;
        for b in std::mem::take(&mut self.batches) {
            group_rows += b.num_rows();
            group.push(b);
            if group_rows >= ROWS || short {
                Self::merge_group(&schema, &mut group, &mut merged, &mut self.reservation, &mut short)?;
                group_rows = 0;
            }
        }
        Self::merge_group(&schema, &mut group, &mut merged, &mut self.reservation, &mut short)?;
        self.batches = merged;
        self.starts =
            self.batches.iter().scan(0u32, |at, b| Some(std::mem::replace(at, *at + b.num_rows() as u32))).collect();
        self.data_bytes = self.batches.iter().map(|b| b.get_array_memory_size()).sum();
        let held = self.heap_bytes();
        if held < self.reservation.size() {
            self.reservation.shrink(self.reservation.size() - held);
        }
        Ok(())
    }

    /// Appends `group` to `merged` as one batch, or as it is when the pool cannot hold the copy
    /// for a moment (then `short` stops further merging).
    fn merge_group(
        schema: &SchemaRef,
        group: &mut Vec<RecordBatch>,
        merged: &mut Vec<RecordBatch>,
        reservation: &mut MemoryReservation,
        short: &mut bool,
    ) -> Result<()> {
        if group.len() <= 1 || *short {
            merged.append(group);
            return Ok(());
        }
        let bytes = group.iter().map(|b| b.get_array_memory_size()).sum::<usize>() as u64;
        if reservation.try_grow_spare(bytes).is_err() {
            *short = true;
            merged.append(group);
            return Ok(());
        }
        let batch = arrow::compute::concat_batches(schema, group.iter())?;
        group.clear();
        reservation.shrink(bytes);
        merged.push(batch);
        Ok(())
    }

    /// Average bytes of a build row, to size output chunks.
    fn row_bytes(&self) -> usize {
        self.data_bytes / self.rows.max(1) + 1
    }

    /// Takes the batches back out (to partition them), freeing the rest.
    fn into_batches(mut self) -> Result<Vec<RecordBatch>> {
        self.reservation.free();
        let schema = self.schema.clone();
        std::mem::take(&mut self.batches)
            .into_iter()
            .map(|b| {
                let held = b.schema();
                let mut fields = Vec::with_capacity(b.num_columns());
                let mut columns = Vec::with_capacity(b.num_columns());
                for ((f, c), original) in held.fields().iter().zip(b.columns()).zip(schema.fields()) {
                    let c = widen(c.clone(), original.data_type());
                    fields.push(f.as_ref().clone().with_data_type(c.data_type().clone()));
                    columns.push(c);
                }
                Ok(RecordBatch::try_new_with_options(
                    Arc::new(arrow::datatypes::Schema::new(fields)),
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
                )?)
            })
            .collect()
    }
}

/// A build batch as the table holds it: decimals of up to 18 digits in 64 bits instead of Arrow's
/// 128 (TPC-H carries four such columns through its joins: a third less memory per row, so more
/// build sides fit without spilling). [`widen`] gives the rows back as they came.
fn narrow(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::datatypes::{Decimal128Type, Decimal64Type};
    let narrowable = |t: &DataType| matches!(t, DataType::Decimal128(p, _) if *p <= 18);
    if !batch.schema().fields().iter().any(|f| narrowable(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match field.data_type() {
            &DataType::Decimal128(p, s) if p <= 18 => {
                // A value of at most 18 digits is within i64; one that is not breaks its type.
                let narrowed = column
                    .as_primitive::<Decimal128Type>()
                    .try_unary::<_, Decimal64Type, _>(|v| {
                        i64::try_from(v).map_err(|_| {
                            arrow::error::ArrowError::ComputeError(format!(
                                "value {v} of column '{}' exceeds DECIMAL({p},{s})",
                                field.name()
                            ))
                        })
                    })?
                    .with_precision_and_scale(p, s)?;
                fields.push(field.as_ref().clone().with_data_type(DataType::Decimal64(p, s)));
                columns.push(Arc::new(narrowed) as ArrayRef);
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// A column of the table as the build side made it, of type `original` (see [`narrow`]).
fn widen(column: ArrayRef, original: &DataType) -> ArrayRef {
    use arrow::datatypes::{Decimal128Type, Decimal64Type};
    match (column.data_type(), original) {
        (&DataType::Decimal64(p, s), DataType::Decimal128(..)) => Arc::new(
            column
                .as_primitive::<Decimal64Type>()
                .unary::<_, Decimal128Type>(|v| v as i128)
                .with_precision_and_scale(p, s)
                .expect("the precision and scale the column had"),
        ),
        _ => column,
    }
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

impl ProbeBatch {
    fn done(&self) -> bool {
        self.row >= self.batch.num_rows()
    }
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

impl Bitmap {
    fn new(rows: u64, ctx: &ExecContext) -> Result<Bitmap> {
        let words = rows.div_ceil(64) as usize;
        let mut reservation = ctx.pool.register("HashJoin probe bitmap", false);
        reservation.try_grow(words as u64 * 8)?;
        Ok(Bitmap { bits: vec![0; words], _reservation: reservation })
    }
    fn set(&mut self, i: u64) {
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
    }
    fn get(&self, i: u64) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
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
    },
    NextTask,
    Done,
}

/// A hash join in progress.
pub(crate) struct JoinStream {
    shared: Arc<Shared>,
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

impl JoinStream {
    /// `children_max` is the most either input holds while it runs beside the join.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        spec: JoinSpec,
        build: Pipeline,
        probe: Pipeline,
        above: Vec<Stage>,
        out_schema: SchemaRef,
        children_max: u64,
        queue_limit: u64,
        ctx: &ExecContext,
        metrics: Arc<OperatorMetrics>,
    ) -> Result<JoinStream> {
        let build_schema = build.schema.clone();
        let probe_schema = probe.schema.clone();
        let key_types: Vec<DataType> = spec.build_keys.iter().map(|e| e.data_type(&build_schema)).collect();
        let key_kind = match key_types.as_slice() {
            [] => KeyKind::None,
            [t] if int_like(t) => KeyKind::Int,
            ts if ts.len() <= 4 && ts.iter().all(int_like) => {
                KeyKind::Packed(RowConverter::new(key_types.into_iter().map(SortField::new).collect())?)
            }
            _ => KeyKind::Rows(RowConverter::new(key_types.into_iter().map(SortField::new).collect())?),
        };
        let (keep_left, keep_right) = (spec.join_type.keeps_left(), spec.join_type.keeps_right());
        let (keep_build, keep_probe) =
            if spec.build_is_left { (keep_left, keep_right) } else { (keep_right, keep_left) };
        let existence = spec
            .join_type
            .is_existence()
            .then_some(Existence { join_type: spec.join_type, outer_is_build: spec.build_is_left });
        let headroom = std::sync::Mutex::new(Some(ctx.pool.keep(kept_batches(ctx))));
        let first_limit = table_limit(ctx.available_for_sizing().saturating_sub(children_max), ctx);
        Ok(JoinStream {
            headroom,
            shared: Arc::new(Shared {
                spec,
                build_schema,
                probe_schema,
                key_kind,
                keep_build,
                keep_probe,
                existence,
                right_rows: AtomicBool::new(false),
                right_null_key: AtomicBool::new(false),
                metrics,
                chunk_bytes: ctx.batch_bytes_target() as usize,
                batch_size: ctx.config.batch_size.max(1),
            }),
            ctx: ctx.clone(),
            above,
            out_schema,
            pending: VecDeque::new(),
            wave: VecDeque::new(),
            from_workers: false,
            state: State::Start { build: Box::new(build), probe: Box::new(probe) },
            tasks: VecDeque::new(),
            spare_heads: None,
            ranges: VecDeque::new(),
            first_limit,
            queue_limit,
        })
    }

    pub(crate) fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        let reserve = |join: &Self, batch: RecordBatch| -> Result<(RecordBatch, MemoryReservation)> {
            let r = join.reserve_batch("HashJoin output", &batch)?;
            Ok((batch, r))
        };
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(reserve(self, batch));
            }
            let next = self.next_batch(cancel);
            let from_workers = std::mem::take(&mut self.from_workers);
            // Output made here is counted here (that of probes on workers by their `Prober`),
            // before the work from above: the pipeline's consumer sees what that leaves.
            if let (false, Ok(Some((batch, _)))) = (from_workers, &next) {
                self.shared.metrics.rows_out(batch.num_rows());
            }
            match next {
                Ok(Some((batch, r))) if from_workers || self.above.is_empty() => {
                    return Some(match r {
                        Some(r) => Ok((batch, r)),
                        None => reserve(self, batch),
                    });
                }
                Ok(Some((batch, r))) => {
                    // The work from above, here: its output goes out batch by batch.
                    let mut out = Vec::new();
                    let ran = super::operators::run_stages(&self.above, batch, &mut |b| {
                        out.push(b);
                        Ok(true)
                    });
                    drop(r);
                    if let Err(e) = ran {
                        self.stop();
                        return Some(Err(e));
                    }
                    self.pending.extend(out.into_iter().filter(|b| b.num_rows() > 0));
                }
                Ok(None) => {
                    self.state = State::Done;
                    self.drop_headroom();
                    return None;
                }
                Err(e) => {
                    self.stop();
                    return Some(Err(e));
                }
            }
        }
    }

    pub(crate) fn stop(&mut self) {
        self.drop_headroom();
        self.state = State::Done;
        self.tasks.clear();
        self.pending.clear();
        self.wave.clear();
    }

    /// A reservation for a batch read back from a spill file, held while the join works on it.
    fn reserve_read(&self, batch: &RecordBatch) -> Result<MemoryReservation> {
        self.reserve_batch("HashJoin read batch", batch)
    }

    /// A reservation of `batch`'s bytes for `name` (the join's headroom leaves room for it).
    fn reserve_batch(&self, name: &str, batch: &RecordBatch) -> Result<MemoryReservation> {
        let bytes = batch.get_array_memory_size() as u64;
        if let Some(headroom) = self.headroom.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            headroom.raise_to(super::headroom_for(bytes));
        }
        let mut r = self.ctx.pool.register(name, false);
        r.try_grow(bytes)?;
        Ok(r)
    }

    fn drop_headroom(&self) {
        self.headroom.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn next_batch(&mut self, cancel: &AtomicBool) -> Result<Option<(RecordBatch, Option<MemoryReservation>)>> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return Ok(None),
                State::Start { build, probe } => self.start(*build, *probe, cancel)?,
                State::Probe(mut probe) => match self.probe_next(&mut probe)? {
                    Some(batch) => {
                        self.state = State::Probe(probe);
                        return Ok(Some(batch));
                    }
                    None => self.after_probe(*probe)?,
                },
                State::ProbeUnmatched { mut reader, _file, bitmap, offset } => match reader.next_batch()? {
                    Some(batch) => {
                        let _held = self.reserve_read(&batch)?;
                        let n = batch.num_rows() as u64;
                        let out = match self.shared.existence {
                            Some(existence) => {
                                // The query rows of a chunked existence join: marked over all chunks.
                                let (_, valid) = self.shared.keys(&batch, false)?;
                                let marks = (0..n).map(|i| {
                                    let key_null = valid.as_ref().is_some_and(|v| v.is_null(i as usize));
                                    (i as u32, self.shared.mark(existence, bitmap.get(offset + i), key_null))
                                });
                                self.shared.existence_output(existence, &batch, marks)?
                            }
                            None => {
                                let rows: Vec<u32> =
                                    (0..n).filter(|&i| !bitmap.get(offset + i)).map(|i| i as u32).collect();
                                self.shared.probe_rows_alone(&batch, rows)?
                            }
                        };
                        self.state = State::ProbeUnmatched { reader, _file, bitmap, offset: offset + n };
                        if let Some(out) = out {
                            return Ok(Some((out, None)));
                        }
                    }
                    None => self.state = State::NextTask,
                },
                State::NextTask => match self.tasks.pop_front() {
                    Some(task) => self.run_task(task)?,
                    None => match self.ranges.pop_front() {
                        Some((build, probe, rows)) => self.join_inputs(build, probe, Some(rows), cancel)?,
                        None => return Ok(None),
                    },
                },
            }
        }
    }

    /// Joins the inputs whole, or one key range at a time when they allow it and the build side
    /// would not fit (see [`key_ranges`]).
    fn start(&mut self, build: Pipeline, probe: Pipeline, cancel: &AtomicBool) -> Result<()> {
        let limit = self.first_limit.max(self.table_share(self.beside_table(&build, &probe)));
        match key_ranges(&self.shared, &build, &probe, limit) {
            Some(ranges) => {
                self.ranges = ranges;
                self.state = State::NextTask;
                Ok(())
            }
            None => self.join_inputs(build, probe, None, cancel),
        }
    }

    /// The most a build table may hold now: what is free less what runs beside it, the build
    /// side while it streams (a join below has its own table by then, already reserved) and
    /// later the probe side, which needs at least its minimum.
    fn table_share(&self, beside: u64) -> u64 {
        table_limit(self.ctx.available_for_sizing().saturating_sub(beside), &self.ctx)
    }

    /// What runs beside a build table (see [`JoinStream::table_share`]).
    fn beside_table(&self, build: &Pipeline, probe: &Pipeline) -> u64 {
        build.stream_memory(&self.ctx, self.queue_limit) + probe.min_memory(&self.ctx)
    }

    /// Builds from the build input (`rows` of it expected, when known); probes in memory if it
    /// fit, else partitions both inputs.
    fn join_inputs(&mut self, build: Pipeline, probe: Pipeline, rows: Option<u64>, cancel: &AtomicBool) -> Result<()> {
        let shared = self.shared.clone();
        let mut table = BuildTable::new(&self.ctx, &self.shared.build_schema, self.first_limit);
        // The table of the range joined last is this one's to use.
        if let Some((heads, mut reservation)) = self.spare_heads.take() {
            table.int_heads = heads;
            table.reservation.take(&mut reservation);
        }
        if let Some(rows) = rows {
            table.expect_rows(&shared, rows);
        }
        let minimum = min_memory(&self.ctx);
        // The table takes its share (see [`JoinStream::table_share`]) once the build side's first
        // batch is here (and what the build side holds is known).
        let beside = self.beside_table(&build, &probe);
        let mut input = super::start_beside(&self.ctx, "HashJoin", minimum, || {
            build.execute_with(&self.ctx, Some(self.queue_limit))
        })?;
        let mut overflow = None;
        let mut sized = false;
        for batch in input.by_ref() {
            let batch = batch?;
            if !sized {
                sized = true;
                self.first_limit = self.first_limit.max(self.table_share(beside));
                table.limit = self.first_limit;
            }
            shared.metrics.rows_in(batch.num_rows());
            if let Some(back) = table.try_add(&shared, batch)? {
                overflow = Some(back);
                break;
            }
        }
        let Some(pending) = overflow else {
            drop(input);
            // Everything fits: when the probe side is a scan, its workers probe (in parallel);
            // otherwise this thread does.
            table.compact()?;
            let table = Arc::new(table);
            let mut probe = probe;
            let prober = Arc::new(Prober { shared: shared.clone(), table: table.clone(), count: true });
            // Probe rows without a partner are dropped (an inner or semi join): a probe side that
            // is not a plain scan (an aggregation grouping by the key, say) gets its input
            // filtered by the table's keys before the work, not after (TPC-H Q17, Q20).
            if shared.drops_unmatched() {
                let (shared2, table2) = (shared.clone(), table.clone());
                probe.push_key_filter(&shared.spec.probe_keys, &move |keys| {
                    let test = TableKeys { shared: shared2.clone(), table: table2.clone(), count: false };
                    Stage::Expand(Arc::new(KeyFilter { test: Arc::new(test), keys }))
                });
            }
            // The probe and whatever was pushed down from above run on the probe side's workers.
            let mut stages = vec![Stage::Expand(prober)];
            stages.extend(self.above.iter().cloned());
            let joined = probe.push_down(stages, self.out_schema.clone());
            let stream = super::start_beside(&self.ctx, "HashJoin", min_memory(&self.ctx), || {
                probe.execute_with(&self.ctx, Some(self.queue_limit))
            })?;
            let input = ProbeInput::Stream(Box::new(stream));
            self.state = State::Probe(Box::new(Probe::shared(table, input, joined, None, None)));
            return Ok(());
        };
        // Grace: partition the build side (what is held, then the rest), then the probe side.
        shared.metrics.pass();
        let mut parts = Partitioner::new(&shared, &self.ctx, 0, true, self.first_limit);
        for batch in table.into_batches()?.into_iter().chain(std::iter::once(pending)) {
            parts.add(&batch)?;
        }
        let builds = parts.add_stream(input, cancel)?;
        let parts = Partitioner::new(&shared, &self.ctx, 0, false, self.first_limit);
        let input = super::start_beside(&self.ctx, "HashJoin", min_memory(&self.ctx), || {
            probe.execute_with(&self.ctx, Some(self.queue_limit))
        })?;
        let probes = parts.add_stream(input, cancel)?;
        self.queue_tasks(builds, probes, 1, u64::MAX)?;
        self.state = State::NextTask;
        Ok(())
    }

    /// Queues partition pairs (in front: depth first, so partitions on disk stay few).
    fn queue_tasks(
        &mut self,
        builds: Vec<Option<SpillFile>>,
        probes: Vec<Option<SpillFile>>,
        depth: usize,
        parent_rows: u64,
    ) -> Result<()> {
        let mut new = Vec::new();
        for (b, p) in builds.into_iter().zip(probes) {
            let empty = |f: &Option<SpillFile>| f.as_ref().is_none_or(|f| f.rows() == 0);
            // Nothing can come out of a pair whose missing side is not kept.
            if (empty(&b) && !self.shared.keep_probe) || (empty(&p) && !self.shared.keep_build) {
                continue;
            }
            if empty(&b) && empty(&p) {
                continue;
            }
            let build = match b {
                Some(f) => f,
                None => self.ctx.spill.create(self.shared.build_schema.clone(), "HashJoin-empty")?.finish()?,
            };
            let probe = match p {
                Some(f) => f,
                None => self.ctx.spill.create(self.shared.probe_schema.clone(), "HashJoin-empty")?.finish()?,
            };
            new.push(Task { build, probe, depth, parent_rows });
        }
        for t in new.into_iter().rev() {
            self.tasks.push_front(t);
        }
        Ok(())
    }

    /// Keeps the integer-key table of a partition's build table that is done, emptied and with
    /// its reservation, when another partition is waiting to be joined.
    fn keep_heads(&mut self, table: Arc<BuildTable>) {
        if self.tasks.is_empty() && self.ranges.is_empty() {
            return;
        }
        let Ok(mut table) = Arc::try_unwrap(table) else { return };
        if table.int_heads.capacity() == 0 {
            return;
        }
        let mut heads = std::mem::take(&mut table.int_heads);
        heads.clear();
        let bytes = (heads.bytes() as u64).min(table.reservation.size());
        let reservation = table.reservation.split(bytes);
        self.spare_heads = Some((heads, reservation));
    }

    /// Joins a pair of partitions: in memory if its build side fits, else split again, else in
    /// chunks.
    fn run_task(&mut self, task: Task) -> Result<()> {
        let shared = self.shared.clone();
        // The table kept from the last partition is this one's to use: count it as free.
        let spare = self.spare_heads.take();
        let kept = spare.as_ref().map_or(0, |(_, r)| r.size());
        let limit = table_limit(self.ctx.obtainable() + kept, &self.ctx);
        let mut table = BuildTable::new(&self.ctx, &self.shared.build_schema, limit);
        if let Some((heads, mut reservation)) = spare {
            table.int_heads = heads;
            table.reservation.take(&mut reservation);
        }
        table.expect_rows(&shared, task.build.rows());
        let mut reader = task.build.reader()?;
        let mut overflow = None;
        while let Some(batch) = reader.next_batch()? {
            if let Some(back) = table.try_add(&shared, batch)? {
                overflow = Some(back);
                break;
            }
        }
        let Some(pending) = overflow else {
            drop(reader);
            drop(task.build);
            let input = ProbeInput::File { reader: task.probe.reader()?, _owned: Some(task.probe) };
            table.compact()?;
            self.state = State::Probe(Box::new(Probe::new(table, input, None, None)));
            return Ok(());
        };
        // A split that left nine tenths of its rows in one partition will not do better again: one
        // key holds them.
        let splittable = !matches!(shared.key_kind, KeyKind::None)
            && task.depth < MAX_DEPTH
            && task.build.rows() < task.parent_rows / 10 * 9;
        if splittable {
            shared.metrics.pass();
            let mut parts = Partitioner::new(&shared, &self.ctx, task.depth, true, limit);
            for batch in table.into_batches()?.into_iter().chain(std::iter::once(pending)) {
                parts.add(&batch)?;
            }
            while let Some(batch) = reader.next_batch()? {
                parts.add(&batch)?;
            }
            let rows = task.build.rows();
            drop(reader);
            drop(task.build);
            let builds = parts.finish()?;
            let mut parts = Partitioner::new(&shared, &self.ctx, task.depth, false, limit);
            let mut probe_reader = task.probe.reader()?;
            while let Some(batch) = probe_reader.next_batch()? {
                parts.add(&batch)?;
            }
            drop(probe_reader);
            drop(task.probe);
            let probes = parts.finish()?;
            self.queue_tasks(builds, probes, task.depth + 1, rows)?;
            self.state = State::NextTask;
            return Ok(());
        }
        // One key (or a cross join) larger than memory: join a chunk of build rows at a time.
        let track_probe = shared.keep_probe || shared.existence.is_some_and(|e| !e.outer_is_build);
        let bitmap = if track_probe { Some(Bitmap::new(task.probe.rows(), &self.ctx)?) } else { None };
        let input = ProbeInput::File { reader: task.probe.reader()?, _owned: None };
        let chunks = Chunks {
            build_reader: reader,
            _build_file: task.build,
            pending_reservation: self.reserve_read(&pending)?,
            pending: Some(pending),
            probe_file: task.probe,
        };
        self.state = State::Probe(Box::new(Probe::new(table, input, bitmap, Some(chunks))));
        Ok(())
    }

    /// Probes a few batches of a partition read back from disk at once, each on a worker thread
    /// with the work from above (a partial aggregation, say), as the scan workers do when the
    /// build side fits. Only for a partition whose table holds its whole build side (chunked
    /// partitions keep a bitmap over the probe rows, filled in order), and only when the pool
    /// has room for a batch and its output per thread; `false` when this pass is not one.
    fn probe_wave(&mut self, probe: &mut Probe) -> Result<bool> {
        // A table with duplicate keys can make any number of rows of one probe row: joined one
        // batch at a time, its output goes out as it is made.
        if probe.joined || probe.no_wave || probe.table.duplicates || probe.bitmap.is_some() || probe.chunks.is_some() {
            return Ok(false);
        }
        let Some(ProbeInput::File { reader, .. }) = &mut probe.input else { return Ok(false) };
        let threads = self.ctx.threads.current_num_threads() as u64;
        // Per thread: a probe batch (reserved as it is read) and room for three times as much
        // output.
        let target = self.ctx.batch_bytes_target();
        let wave = threads.min(self.ctx.pool.available() / (4 * target).max(1));
        if wave < 2 {
            return Ok(false);
        }
        let mut room = self.ctx.pool.register("HashJoin probe wave", false);
        if room.try_grow(wave * 3 * target).is_err() {
            return Ok(false);
        }
        let mut inputs: Vec<(RecordBatch, MemoryReservation)> = Vec::with_capacity(wave as usize);
        while (inputs.len() as u64) < wave {
            let next = match probe.replay.pop_front() {
                Some(held) => Some(held),
                None => match reader.next_batch()? {
                    Some(batch) => match self.reserve_read(&batch) {
                        Ok(r) => Some((batch, r)),
                        // A batch larger than the wave's estimate, with the room taken: the
                        // room goes back, and the batches go one at a time.
                        Err(_) => {
                            drop(room);
                            let r = self.reserve_read(&batch)?;
                            probe.replay.extend(inputs);
                            probe.replay.push_back((batch, r));
                            probe.no_wave = true;
                            return Ok(true);
                        }
                    },
                    None => None,
                },
            };
            match next {
                Some((batch, r)) => {
                    probe.rows_read += batch.num_rows() as u64;
                    inputs.push((batch, r));
                }
                None => break,
            }
        }
        if inputs.is_empty() {
            probe.input = None;
            probe.unmatched_from = self.shared.track_build().then_some(0);
            return Ok(true);
        }
        let prober = Prober { shared: self.shared.clone(), table: probe.table.clone(), count: false };
        let mut stages = vec![Stage::Expand(Arc::new(prober))];
        stages.extend(self.above.iter().cloned());
        // A worker stops at its share of the room: the work from above may make any number of
        // rows of one probe row (a join above whose keys repeat: a fuzzed query made 748M rows
        // out of 217K, held here until the wave ended).
        let share = 3 * target;
        let results: Vec<Result<Option<Vec<RecordBatch>>>> = self.ctx.threads.install(|| {
            use rayon::prelude::*;
            inputs
                .par_iter()
                .map(|(batch, _)| batch.clone())
                .map(|batch| {
                    let (mut out, mut bytes) = (Vec::new(), 0);
                    let whole = super::operators::run_stages(&stages, batch, &mut |b| {
                        if b.num_rows() > 0 {
                            bytes += b.get_array_memory_size() as u64;
                            out.push(b);
                        }
                        Ok(bytes <= share)
                    })?;
                    Ok(whole.then_some(out))
                })
                .collect()
        });
        let mut ready = Vec::new();
        for out in results {
            let Some(out) = out? else {
                drop(ready);
                probe.replay.extend(inputs);
                probe.no_wave = true;
                return Ok(true);
            };
            for batch in out {
                // Each output batch takes its share of the room, more if it needs it.
                let bytes = batch.get_array_memory_size() as u64;
                let mut r = room.split(bytes.min(room.size()));
                if r.size() < bytes && r.try_grow(bytes - r.size()).is_err() {
                    // More output than the pool holds: the batches go again, one at a time (the
                    // marks they left on build rows are the same the second time).
                    drop(ready);
                    probe.replay.extend(inputs);
                    probe.no_wave = true;
                    return Ok(true);
                }
                ready.push((batch, r));
            }
        }
        self.wave.extend(ready);
        Ok(true)
    }

    /// What follows a finished probe pass: the next chunk, the unmatched probe rows of a chunked
    /// partition, or the next task.
    fn after_probe(&mut self, probe: Probe) -> Result<()> {
        let Probe { table, bitmap, chunks, .. } = probe;
        let Some(mut chunks) = chunks else {
            self.keep_heads(table);
            self.state = State::NextTask;
            return Ok(());
        };
        let limit = table.limit;
        drop(table);
        let shared = self.shared.clone();
        let mut table = BuildTable::new(&self.ctx, &self.shared.build_schema, limit);
        let mut next = chunks.pending.take();
        chunks.pending_reservation.free();
        loop {
            let batch = match next.take() {
                Some(b) => b,
                None => match chunks.build_reader.next_batch()? {
                    Some(b) => b,
                    None => break,
                },
            };
            if let Some(back) = table.try_add(&shared, batch)? {
                chunks.pending_reservation = self.reserve_read(&back)?;
                chunks.pending = Some(back);
                break;
            }
        }
        if table.rows > 0 {
            let input = ProbeInput::File { reader: chunks.probe_file.reader()?, _owned: None };
            self.state = State::Probe(Box::new(Probe::new(table, input, bitmap, Some(chunks))));
            return Ok(());
        }
        // Every chunk is done.
        match bitmap {
            Some(bitmap) => {
                let reader = chunks.probe_file.reader()?;
                self.state = State::ProbeUnmatched { reader, _file: chunks.probe_file, bitmap, offset: 0 };
            }
            None => self.state = State::NextTask,
        }
        Ok(())
    }

    /// The next output chunk of a probe pass (with its reservation when it already has one), or
    /// `None` when the pass is done.
    fn probe_next(&mut self, probe: &mut Probe) -> Result<Option<(RecordBatch, Option<MemoryReservation>)>> {
        let shared = self.shared.clone();
        loop {
            if let Some((batch, reservation)) = self.wave.pop_front() {
                self.from_workers = true;
                return Ok(Some((batch, Some(reservation))));
            }
            if probe.current.is_none() && self.probe_wave(probe)? {
                continue;
            }
            if let Some(current) = &mut probe.current {
                if !current.done() {
                    if let Some(out) = shared.join_chunk(&probe.table, current, probe.bitmap.as_mut())? {
                        return Ok(Some((out, None)));
                    }
                    continue;
                }
                let current = probe.current.take().expect("current batch");
                if shared.keep_probe && probe.bitmap.is_none() {
                    if let Some(out) = shared.unmatched_probe_rows(&current)? {
                        return Ok(Some((out, None)));
                    }
                }
                continue;
            }
            if let Some(input) = &mut probe.input {
                let next = match input {
                    ProbeInput::Stream(s) => match s.next_reserved() {
                        Some(item) => {
                            let (batch, mut r) = item?;
                            if !probe.joined {
                                shared.metrics.rows_in(batch.num_rows());
                            }
                            // Take the batch's reservation over: the stream's flow control moves on.
                            let mut own = self.ctx.pool.register("HashJoin probe batch", false);
                            own.take(&mut r);
                            s.release(r);
                            Some((batch, Some(own)))
                        }
                        None => None,
                    },
                    ProbeInput::File { reader, .. } => match probe.replay.pop_front() {
                        Some((b, r)) => Some((b, Some(r))),
                        None => match reader.next_batch()? {
                            Some(b) => {
                                let r = self.reserve_read(&b)?;
                                Some((b, Some(r)))
                            }
                            None => None,
                        },
                    },
                };
                match next {
                    Some((batch, reservation)) if probe.joined => {
                        // Joined on the workers already: pass it on, under its own reservation.
                        self.from_workers = true;
                        return Ok(Some((batch, reservation)));
                    }
                    Some((batch, reservation)) => {
                        let offset = probe.rows_read;
                        probe.rows_read += batch.num_rows() as u64;
                        if let Some(existence) = shared.existence {
                            // Existence joins take a probe batch whole: query rows come out
                            // with their marks, subquery rows only mark build rows.
                            if existence.outer_is_build {
                                shared.existence_mark_build(&probe.table, &batch)?;
                                continue;
                            }
                            let out = shared.existence_probe(
                                existence,
                                &probe.table,
                                &batch,
                                offset,
                                probe.bitmap.as_mut(),
                            )?;
                            drop(reservation);
                            if let Some(out) = out {
                                return Ok(Some((out, None)));
                            }
                            continue;
                        }
                        let track = shared.keep_probe && probe.bitmap.is_none();
                        probe.current = Some(shared.probe_batch(batch, offset, track, reservation)?);
                    }
                    None => {
                        probe.input = None;
                        probe.unmatched_from = shared.track_build().then_some(0);
                    }
                }
                continue;
            }
            // The probe side is done: build rows that never matched.
            let Some(from) = probe.unmatched_from else { return Ok(None) };
            let table = &probe.table;
            let max = shared.chunk_rows(table.row_bytes());
            if let Some(existence) = shared.existence {
                // The query rows (built) with their marks.
                let mut ids = Vec::new();
                let mut marks = Vec::new();
                let mut id = from as usize;
                while id < table.rows && ids.len() < max {
                    let mark = shared.mark(existence, table.matched[id].load(Ordering::Relaxed), table.key_null[id]);
                    let keep = match existence.join_type {
                        JoinType::Semi => mark == Some(true),
                        JoinType::Anti { .. } => mark == Some(false),
                        _ => true,
                    };
                    if keep {
                        ids.push(id as u32);
                        marks.push(mark);
                    }
                    id += 1;
                }
                probe.unmatched_from = (id < table.rows).then_some(id as u32);
                if ids.is_empty() {
                    continue;
                }
                let columns = table.gather(&ids)?;
                let rows = RecordBatch::try_new_with_options(
                    shared.build_schema.clone(),
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(ids.len())),
                )?;
                let marks = marks.into_iter().enumerate().map(|(i, m)| (i as u32, m));
                if let Some(out) = shared.existence_output(existence, &rows, marks)? {
                    return Ok(Some((out, None)));
                }
                continue;
            }
            let mut ids = Vec::new();
            let mut id = from as usize;
            while id < table.rows && ids.len() < max {
                if !table.matched[id].load(Ordering::Relaxed) {
                    ids.push(id as u32);
                }
                id += 1;
            }
            probe.unmatched_from = (id < table.rows).then_some(id as u32);
            if !ids.is_empty() {
                let build = table.gather(&ids)?;
                let probe_nulls = Shared::nulls(&shared.probe_schema, ids.len());
                return Ok(Some((shared.assemble(build, probe_nulls, ids.len())?, None)));
            }
        }
    }
}

impl Probe {
    fn new(table: BuildTable, input: ProbeInput, bitmap: Option<Bitmap>, chunks: Option<Chunks>) -> Probe {
        Probe::shared(Arc::new(table), input, false, bitmap, chunks)
    }

    fn shared(
        table: Arc<BuildTable>,
        input: ProbeInput,
        joined: bool,
        bitmap: Option<Bitmap>,
        chunks: Option<Chunks>,
    ) -> Probe {
        Probe {
            table,
            input: Some(input),
            joined,
            rows_read: 0,
            current: None,
            bitmap,
            chunks,
            unmatched_from: None,
            replay: VecDeque::new(),
            no_wave: false,
        }
    }
}

/// The key ranges to join one at a time (with the build rows each is estimated to hold), when
/// both inputs are scans whose morsels come in order of their one integer key (see
/// [`Pipeline::key_ranges`]) and the build side is estimated at more than two ranges' worth:
/// every row of either input then falls in exactly one range, so joining range by range gives
/// what the whole join gives, for every join type that pairs rows by key (inner and outer; not
/// semi, anti or mark joins, whose `NOT IN` looks at the whole subquery).
///
/// A range holds build rows estimated at [`RANGE_BYTES`] (less when `limit`, the bytes a table
/// may hold, is smaller): a table that small stays in the caches while it is probed. Ranges
/// start where a morsel of the side with the larger morsels starts; a morsel of the other side
/// that straddles two ranges is read by both (each keeps its part), and the smaller morsels are
/// the cheaper to read twice.
fn key_ranges(
    shared: &Shared,
    build: &Pipeline,
    probe: &Pipeline,
    limit: u64,
) -> Option<VecDeque<(Pipeline, Pipeline, u64)>> {
    let ([build_key], [probe_key]) = (shared.spec.build_keys.as_slice(), shared.spec.probe_keys.as_slice()) else {
        return None;
    };
    // The build side's size is estimated from its row groups, which says nothing of the rows a
    // filter keeps: TPC-H Q12 builds on the 310K rows of lineitem that pass its filter (8 MiB),
    // taken for 60M, and ran as 262 ranges, each a scan of either side to start, 4x slower.
    if shared.existence.is_some() || !matches!(shared.key_kind, KeyKind::Int) || !build.keeps_every_row() {
        return None;
    }
    let builds = build.key_ranges(build_key)?;
    let probes = probe.key_ranges(probe_key)?;
    // Estimated (rows, table bytes) of the build rows with keys in lo..=hi, taking a morsel's
    // keys as spread evenly over its range.
    let estimate = |lo: i64, hi: i64| -> (f64, f64) {
        builds.iter().fold((0.0, 0.0), |(rows, bytes), m| {
            let overlap = (hi.min(m.max) as i128 - lo.max(m.min) as i128 + 1).max(0) as f64;
            let share = overlap / (m.max as i128 - m.min as i128 + 1) as f64;
            (rows + share * m.rows as f64, bytes + share * (m.bytes + m.rows * TABLE_ROW_BYTES) as f64)
        })
    };
    let target = RANGE_BYTES.min(limit / 2) as f64;
    if estimate(i64::MIN, i64::MAX).1 <= 2.0 * target {
        return None;
    }
    let mean_bytes =
        |morsels: &[super::MorselKeys]| morsels.iter().map(|m| m.bytes).sum::<u64>() / morsels.len().max(1) as u64;
    let cuts = if mean_bytes(&builds) >= mean_bytes(&probes) { &builds } else { &probes };
    // Each range: from the start of a morsel of `cuts` (the first from the least key) to just
    // below the start of the next range (the last to the greatest key).
    let mut starts = vec![i64::MIN];
    for (i, morsel) in cuts.iter().enumerate().skip(1) {
        let end = cuts.get(i + 1).map_or(i64::MAX, |next| next.min.saturating_sub(1));
        // Morsels that start with one key (a key that fills several) stay in one range.
        if morsel.min > *starts.last()? && estimate(*starts.last()?, end).1 > target {
            starts.push(morsel.min);
        }
    }
    if starts.len() < 2 {
        return None;
    }
    let ends = starts.iter().skip(1).map(|s| s - 1).chain(std::iter::once(i64::MAX));
    starts
        .iter()
        .zip(ends)
        .map(|(&lo, hi)| {
            let rows = estimate(lo, hi).0.ceil() as u64;
            Some((build.restricted(build_key, lo, hi)?, probe.restricted(probe_key, lo, hi)?, rows))
        })
        .collect()
}

/// Splits one side's rows into spill partitions by a hash of their key.
struct Partitioner {
    shared: Arc<Shared>,
    parts: SpillPartitions,
    seed: u64,
    build: bool,
}

impl Partitioner {
    fn new(shared: &Arc<Shared>, ctx: &ExecContext, depth: usize, build: bool, limit: u64) -> Partitioner {
        let (schema, label) = if build {
            (shared.build_schema.clone(), "HashJoin-build")
        } else {
            (shared.probe_schema.clone(), "HashJoin-probe")
        };
        Partitioner {
            shared: shared.clone(),
            parts: SpillPartitions::new(ctx, &shared.metrics, schema, label, PARTITIONS, limit),
            seed: depth as u64 + 1,
            build,
        }
    }

    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let (keys, valid) = self.shared.keys(batch, self.build)?;
        if matches!(keys, Keys::None) {
            return self.parts.push(0, batch.clone());
        }
        // A row with a null key never matches: it only matters if its side is kept.
        let keep_unmatched = if self.build { self.shared.keep_build } else { self.shared.keep_probe };
        if let Some(e) = self.shared.existence {
            // The subquery's side: whether it has rows and null keys decides `IN`'s unknowns.
            if self.build != e.outer_is_build {
                let null_key = valid.as_ref().is_some_and(|v| v.null_count() > 0);
                self.shared.saw_right_rows(batch.num_rows(), null_key);
            }
        }
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); PARTITIONS];
        for i in 0..batch.num_rows() {
            if valid.as_ref().is_none_or(|v| v.is_valid(i)) {
                let h = keys.hash(i, self.seed);
                rows[(h >> 60) as usize % PARTITIONS].push(i as u32);
            } else if keep_unmatched {
                rows[0].push(i as u32);
            }
        }
        self.parts.push_split(batch, &rows)
    }

    fn finish(self) -> Result<Vec<Option<SpillFile>>> {
        self.parts.finish()
    }

    /// Partitions the rest of an input stream (counting its rows as the join's input), then
    /// finishes the files.
    fn add_stream(mut self, mut input: BatchStream, cancel: &AtomicBool) -> Result<Vec<Option<SpillFile>>> {
        for batch in input.by_ref() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let batch = batch?;
            self.shared.metrics.rows_in(batch.num_rows());
            self.add(&batch)?;
        }
        drop(input);
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::pack;
    use arrow::buffer::NullBuffer;

    #[test]
    fn packing_is_exact_within_each_share_and_leaves_the_rest_loose() {
        // Two keys, 32 bits each: the ends of the signed range fit, one past them does not.
        let (low, high) = (i32::MIN as i64, i32::MAX as i64);
        let a = [low, high, -1, 0, high + 1, low - 1, 5];
        let b = [high, low, 0, -1, 0, 0, 1 << 40];
        let valid = NullBuffer::from(vec![true, true, true, true, true, true, false]);
        let (packed, loose) = pack(&[&a, &b], Some(&valid), a.len());
        // The last row's value does not fit, but its key is null: it is not compared at all.
        assert_eq!(loose, Some(vec![false, false, false, false, true, true, false]));
        let fitting = &packed[..4];
        for (i, x) in fitting.iter().enumerate() {
            for (j, y) in fitting.iter().enumerate() {
                assert_eq!(x == y, i == j, "distinct keys {i} and {j} pack apart");
            }
        }
        // Unpacking gives the values back.
        for (i, &p) in fitting.iter().enumerate() {
            assert_eq!(((p as i32) as i64, ((p >> 32) as i32) as i64), (a[i], b[i]));
        }
        assert_eq!(pack(&[&a[..4], &b[..4]], None, 4).1, None, "all fit: no row format");

        // Four keys, 16 bits each.
        let c = [-32768i64, 32767, 0];
        let (packed, loose) = pack(&[&c, &c, &c, &[0, 0, 32768]], None, 3);
        assert_eq!(loose, Some(vec![false, false, true]));
        assert_ne!(packed[0], packed[1]);
    }
}
