//! The build table: build rows kept as they come, linked into chains by key, inside the
//! operator's share of the pool.

use super::*;

impl BuildTable {
    pub(super) fn new(ctx: &ExecContext, schema: &SchemaRef, limit: u64) -> BuildTable {
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

    pub(super) fn key(&self, id: u32) -> &[u8] {
        let i = id as usize;
        &self.key_data[self.key_offsets[i]..self.key_offsets[i + 1]]
    }

    /// Bytes held now.
    pub(super) fn heap_bytes(&self) -> u64 {
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
    pub(super) fn add_loose(&mut self, key: &[u8], id: u32) -> bool {
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
    pub(super) fn loose_head(&self, key: &[u8]) -> u32 {
        self.loose_keys.find(key, hash_key(key, TABLE_SEED)).map_or(NONE, |j| self.loose_heads[j])
    }

    /// Sizes the table of integer keys for `rows` rows at once, when the share allows: a
    /// partition's row count is known before it is read back, and growing step by step moves
    /// every key at each step.
    pub(super) fn expect_rows(&mut self, shared: &JoinPlan, rows: u64) {
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
    pub(super) fn try_add(&mut self, shared: &JoinPlan, batch: RecordBatch) -> Result<Option<RecordBatch>> {
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
    pub(super) fn head(&self, keys: &Keys, i: usize) -> u32 {
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
    pub(super) fn heads(&self, keys: &Keys, valid: Option<&NullBuffer>, n: usize) -> Vec<u32> {
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
    pub(super) fn gather(&self, ids: &[u32]) -> Result<Vec<ArrayRef>> {
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
    pub(super) fn int_heads_of(&self, keys: &[i64]) -> Vec<u32> {
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
    pub(super) fn compact(&mut self) -> Result<()> {
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
    pub(super) fn merge_group(
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
    pub(super) fn row_bytes(&self) -> usize {
        self.data_bytes / self.rows.max(1) + 1
    }

    /// Takes the batches back out (to partition them), freeing the rest.
    pub(super) fn into_batches(mut self) -> Result<Vec<RecordBatch>> {
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
pub(super) fn narrow(batch: &RecordBatch) -> Result<RecordBatch> {
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
pub(super) fn widen(column: ArrayRef, original: &DataType) -> ArrayRef {
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
