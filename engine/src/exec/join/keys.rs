//! Join keys: one integer, several packed into one, or row format; the hashes of the table,
//! and what each join type makes of a probe batch's candidate pairs.

use super::*;

/// Packs the values of two to four integer keys (cast to `i64`) into one `i64` per row: each
/// column gets an equal share of the 64 bits (32, 21 or 16), and a value fits when it is within
/// the signed range of its share. Returns the packed keys and, when some row with no null key
/// has a value that does not fit, which rows those are: they are compared in row format instead.
/// Whether a key packs depends only on its values, so equal keys on either side of a join always
/// take the same path, and a packed key equals another exactly when their values do.
pub(super) fn pack(columns: &[&[i64]], valid: Option<&NullBuffer>, rows: usize) -> (Vec<i64>, Option<Vec<bool>>) {
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

impl Keys {
    pub(super) fn hash(&self, i: usize, seed: u64) -> u64 {
        match self {
            Keys::None => 0,
            Keys::Int(v) => FixedState::with_seed(seed).hash_one(v[i]),
            Keys::Packed { loose: Some((loose, rows)), .. } if loose[i] => hash_key(rows.row(i).data(), seed),
            Keys::Packed { packed, .. } => FixedState::with_seed(seed).hash_one(packed[i]),
            Keys::Rows(r) => hash_key(r.row(i).data(), seed),
        }
    }
    pub(super) fn bytes(&self) -> usize {
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

impl JoinPlan {
    /// Whether a probe row whose key is not in the table gives no output (inner and semi joins,
    /// existence joins whose query rows build): then the table's keys may filter the probe side
    /// before the join (see [`KeyFilter`], [`Expand::key_test`]).
    pub(super) fn drops_unmatched(&self) -> bool {
        !self.keep_probe
            && !self.spec.join_type.is_null_aware()
            && self.existence.is_none_or(|e| e.outer_is_build || e.join_type == JoinType::Semi)
            && !matches!(self.key_kind, KeyKind::None)
    }

    /// Keys of a batch of one side, and which rows have no null key.
    pub(super) fn keys(&self, batch: &RecordBatch, build: bool) -> Result<(Keys, Option<NullBuffer>)> {
        let exprs = if build { &self.spec.build_keys } else { &self.spec.probe_keys };
        self.keys_of(batch, exprs)
    }

    /// Keys computed by `exprs` (of the probe keys' types), and which rows have no null key.
    pub(super) fn keys_of(&self, batch: &RecordBatch, exprs: &[Expr]) -> Result<(Keys, Option<NullBuffer>)> {
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
    pub(super) fn assemble(&self, build: Vec<ArrayRef>, probe: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
        let columns = if self.spec.build_is_left { [build, probe].concat() } else { [probe, build].concat() };
        Ok(RecordBatch::try_new_with_options(
            self.spec.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    pub(super) fn nulls(schema: &SchemaRef, rows: usize) -> Vec<ArrayRef> {
        schema.fields().iter().map(|f| new_null_array(f.data_type(), rows)).collect()
    }
}

/// Bytes a row of [`JoinPlan::nulls`] takes: null arrays allocate their values (or offsets)
/// zeroed, beside a validity bit.
pub(super) fn null_row_bytes(schema: &SchemaRef) -> usize {
    let width = |t: &DataType| match t.primitive_width() {
        Some(w) => w,
        None => match t {
            DataType::Null => 0,
            DataType::Boolean => 1,
            DataType::LargeUtf8 | DataType::LargeBinary => 8,
            DataType::Utf8View | DataType::BinaryView => 16,
            _ => 4,
        },
    };
    schema.fields().iter().map(|f| width(f.data_type()) + 1).sum()
}

impl JoinPlan {
    /// Whether build rows need matched flags: an outer join keeping them, or an existence join
    /// whose query rows build.
    pub(super) fn track_build(&self) -> bool {
        self.keep_build || self.existence.is_some_and(|e| e.outer_is_build)
    }

    /// Notes rows of the right input (the subquery's side) as they are read.
    pub(super) fn saw_right_rows(&self, rows: usize, null_key: bool) {
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
    pub(super) fn mark(&self, existence: Existence, matched: bool, key_null: bool) -> Option<bool> {
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
    pub(super) fn existence_output(
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
    pub(super) fn existence_probe(
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
                    let mask = self.passing_pairs(table, batch, probe_ids, build_ids, filter)?;
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
    pub(super) fn existence_mark_build(&self, table: &BuildTable, batch: &RecordBatch) -> Result<()> {
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
                    let mask = self.passing_pairs(table, batch, probe_ids, build_ids, filter)?;
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

    /// Which of the candidate pairs (probe row of `batch`, build row of `table`) meet `filter`.
    pub(super) fn passing_pairs(
        &self,
        table: &BuildTable,
        batch: &RecordBatch,
        probe_ids: &[u32],
        build_ids: &[u32],
        filter: &Expr,
    ) -> Result<BooleanArray> {
        let probe_cols = arrow::compute::take_record_batch(batch, &UInt32Array::from(probe_ids.to_vec()))?;
        let build_cols = table.gather(build_ids)?;
        let pairs = self.assemble_pairs(build_cols, probe_cols.columns().to_vec(), probe_ids.len())?;
        Ok(crate::expr::not_null_true(&filter.evaluate_predicate(&pairs)?))
    }

    /// Candidate pairs as the join's condition reads them: left columns, then right columns.
    pub(super) fn assemble_pairs(
        &self,
        build: Vec<ArrayRef>,
        probe: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        let columns = if self.spec.build_is_left { [build, probe].concat() } else { [probe, build].concat() };
        Ok(RecordBatch::try_new_with_options(
            self.spec.pair_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    /// Rows per output chunk: a batch's worth, fewer for wide rows.
    pub(super) fn chunk_rows(&self, row_bytes: usize) -> usize {
        (self.chunk_bytes / row_bytes.max(1)).clamp(1, self.batch_size)
    }

    /// The next chunk of `alone`'s rows with nulls for the build side, sized by the output row.
    pub(super) fn next_alone(&self, alone: &mut Unmatched) -> Result<Option<RecordBatch>> {
        let Unmatched { batch, rows, at, .. } = alone;
        if *at >= rows.len() {
            return Ok(None);
        }
        let probe_row_bytes = batch.get_array_memory_size() / batch.num_rows().max(1) + 1;
        let max = self.chunk_rows(probe_row_bytes + null_row_bytes(&self.build_schema));
        let ids = &rows[*at..rows.len().min(*at + max)];
        *at += ids.len();
        let n = ids.len();
        let probe = if n == batch.num_rows() {
            batch.columns().to_vec()
        } else {
            arrow::compute::take_record_batch(batch, &UInt32Array::from(ids.to_vec()))?.columns().to_vec()
        };
        let build = JoinPlan::nulls(&self.build_schema, n);
        Ok(Some(self.assemble(build, probe, n)?))
    }

    /// Walks chains from where `current` stopped until a chunk's worth of pairs; returns the pairs
    /// that meet the join's conditions (`None` when none did).
    pub(super) fn join_chunk(
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
        if current.done() && !(self.keep_probe && bitmap.is_none()) {
            // The batch's own reservation goes once its last chunk is cut (or, for its unmatched
            // rows, once they are out).
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
    pub(super) fn probe_batch(
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
    pub(super) fn unmatched_probe_rows(current: ProbeBatch) -> Unmatched {
        let rows = (0..current.batch.num_rows()).filter(|&i| !current.matched[i]).map(|i| i as u32).collect();
        Unmatched { batch: current.batch, rows, at: 0, _held: current.reservation }
    }
}

pub(super) fn hash_key(key: &[u8], seed: u64) -> u64 {
    FixedState::with_seed(seed).hash_one(key)
}

#[cfg(test)]
mod tests {
    use super::pack;
    use arrow::buffer::NullBuffer;

    #[test]
    pub(super) fn packing_is_exact_within_each_share_and_leaves_the_rest_loose() {
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
