//! The group table: keys (integers, packed integers or row format) to group numbers, the
//! groups' accumulators, growth inside the reservation, and partitions for what does not fit.

use super::*;

impl GroupTable {
    /// Groups an output batch takes: a batch's bytes at what the table holds a group (more than
    /// the group's output: its index entry too), at most the batch size. Output batches of the
    /// batch size in rows took 300 KiB a batch of 64 KiB under a 1 MiB budget, and failed.
    /// What the table may always take, headroom or not (see `MemoryReservation::try_grow_past`).
    pub(super) fn floor(&self) -> u64 {
        min_memory(&self.ctx) / 2
    }

    pub(super) fn output_rows(&self, ctx: &ExecContext) -> usize {
        let per_group = (self.reservation.size() / self.groups.max(1) as u64).max(1);
        ((ctx.batch_bytes_target() / per_group) as usize).clamp(1, ctx.config.batch_size.max(1))
    }

    pub(super) fn new(spec: &Arc<Spec>, ctx: &ExecContext, depth: usize, limit: u64) -> Result<GroupTable> {
        let mut accs = Vec::with_capacity(spec.aggregates.len());
        for (a, col) in spec.aggregates.iter().zip(&spec.arg_columns) {
            let arg_type = col.map(|c| spec.input_schema.field(c).data_type());
            accs.push(groups_accumulator(a.func, arg_type)?);
        }
        Ok(GroupTable {
            spec: spec.clone(),
            ctx: ctx.clone(),
            index: GroupIndex::new(spec),
            groups: 0,
            capacity: 0,
            accs,
            reservation: ctx.pool.register(format!("HashAggregate[{depth}]"), true),
            limit,
            partitions: None,
            seed: depth as u64,
            no_spill: false,
            expected_rows: None,
            scanned_at_start: None,
            rows_seen: 0,
            fan_out: MIN_PARTITIONS,
        })
    }

    pub(super) fn groups(&self) -> usize {
        self.groups
    }

    /// Empties a table that never spilled for its next input, keeping what it allocated (and
    /// the reservation for that): min/max values are freed, and so given back.
    pub(super) fn reset(&mut self) {
        self.clear();
        self.rows_seen = 0;
    }

    /// Empties the table of its groups (for more of the same input: the rows seen stay counted).
    pub(super) fn clear(&mut self) {
        debug_assert!(self.partitions.is_none());
        self.groups = 0;
        self.index.clear();
        for acc in &mut self.accs {
            acc.clear();
        }
        let kept = self.fixed_bytes(self.capacity) + self.index.key_capacity() as u64;
        if self.reservation.size() > kept {
            self.reservation.shrink(self.reservation.size() - kept);
        }
    }

    /// Bytes of the index and the state vectors for `capacity` groups (keys of variable length
    /// not included).
    pub(super) fn fixed_bytes(&self, capacity: usize) -> u64 {
        let states: u64 = self.accs.iter().map(|a| a.slot_bytes()).sum();
        self.index.bytes(capacity) + capacity as u64 * states
    }

    /// Makes room for one more group: grows the index and every state vector to twice the
    /// capacity, reserving the new size and, for the moment of the move, the old copies too.
    /// False when that does not fit the table's share of the pool.
    pub(super) fn ensure_capacity(&mut self) -> bool {
        if self.groups < self.capacity {
            return true;
        }
        self.grow_to((self.capacity * 2).max(1024))
    }

    /// Grows the index and every state vector to room for `capacity` groups, reserving the new
    /// size and, for the moment of the move, the old copies too (already reserved). False when
    /// that does not fit the table's share of the pool.
    pub(super) fn grow_to(&mut self, capacity: usize) -> bool {
        let (old, new) = (self.fixed_bytes(self.capacity), self.fixed_bytes(capacity));
        if self.reservation.size() + new > self.limit || self.reservation.try_grow_past(new, self.floor()).is_err() {
            return false;
        }
        let additional = capacity - self.groups;
        self.index.reserve(additional);
        for acc in &mut self.accs {
            acc.reserve(additional);
        }
        self.capacity = capacity;
        self.reservation.shrink(old);
        true
    }

    /// Makes room for `groups` groups at once where the input's size is known (a partition read
    /// back from disk: its rows bound its groups), within half the table's share: grown by
    /// doubling from nothing, a table of 234K groups (a sixty-fourth of lineitem's orders) was
    /// allocated eight times over, and each time the kernel zeroed fresh pages.
    pub(super) fn presize(&mut self, groups: usize) {
        let mut capacity = groups;
        while capacity > 1024 && self.fixed_bytes(capacity) > self.limit / 2 {
            capacity /= 2;
        }
        if capacity > self.capacity.max(1024) {
            // When it does not fit, the table grows as groups come, as without a size.
            self.grow_to(capacity);
        }
    }

    /// Adds the group for row `row` of `keys` if it fits; its number.
    pub(super) fn try_insert(&mut self, keys: &BatchKeys, row: usize) -> Option<usize> {
        if self.partitions.is_some() || !self.ensure_capacity() {
            return None;
        }
        // Variable-length keys grow their buffer the same way: new size reserved first.
        let key_len = keys.len(row);
        if let Some((old, new)) = self.index.key_growth(key_len) {
            if self.reservation.size() + new > self.limit || self.reservation.try_grow_past(new, self.floor()).is_err()
            {
                return None;
            }
            self.index.grow_keys(new as usize);
            self.reservation.shrink(old);
        }
        let g = self.groups;
        self.index.insert(keys, row, g as u32);
        self.groups += 1;
        self.push_group();
        Some(g)
    }

    pub(super) fn push_group(&mut self) {
        for acc in &mut self.accs {
            acc.push_group();
        }
    }

    pub(super) fn add_empty_group(&mut self) -> Result<()> {
        if !self.ensure_capacity() {
            self.reservation.try_grow(self.fixed_bytes(1))?;
        }
        self.groups = 1;
        self.push_group();
        Ok(())
    }

    /// Folds a batch (the operator's layout) into the table, or its new groups into partitions.
    /// False only for a `no_spill` table that filled up (its states are then incomplete).
    pub(super) fn add(&mut self, batch: &RecordBatch) -> Result<bool> {
        let n = batch.num_rows();
        let spec = self.spec.clone();
        let keys = BatchKeys::new(&spec, batch)?;
        // Arguments in the forms the states take.
        let mut args: Vec<Option<ArgValues>> = Vec::with_capacity(self.accs.len());
        for (acc, col) in self.accs.iter().zip(&spec.arg_columns) {
            args.push(match col {
                Some(c) => Some(acc.arg(batch.column(*c))?),
                None => None,
            });
        }
        // First each row's group (inserting new ones), then each state over the whole batch: the
        // match on the state's kind is made once per batch, not once per row.
        let mut spilled: Vec<Vec<u32>> = Vec::new();
        let mut group_of: Vec<u32> = Vec::with_capacity(n);
        // No GROUP BY and the one group made: every row is in it (the per-row loop below was a
        // twentieth of a scan's CPU under a worker's first phase of `sum`s).
        let rows = if matches!(self.index, GroupIndex::Single) && self.groups > 0 {
            group_of.resize(n, 0);
            0..0
        } else {
            0..n
        };
        for row in rows {
            if row + IntMap::AHEAD < n {
                match (&self.index, &keys) {
                    (GroupIndex::Int { map, .. }, BatchKeys::Int(a)) => map.prefetch(a.value(row + IntMap::AHEAD)),
                    (GroupIndex::Packed { map, .. }, BatchKeys::Packed { keys, .. }) => {
                        map.prefetch(keys[row + IntMap::AHEAD] as i64)
                    }
                    _ => {}
                }
            }
            let found = match &self.index {
                GroupIndex::Single => (self.groups > 0).then_some(0),
                index => index.find(&keys, row),
            };
            match found.or_else(|| self.try_insert(&keys, row)) {
                Some(g) => group_of.push(g as u32),
                None if self.no_spill => return Ok(false),
                None => {
                    // Full: this group's rows go to a partition, now and later.
                    if self.partitions.is_none() {
                        self.start_partitions(batch, row)?;
                    }
                    if spilled.is_empty() {
                        spilled = vec![Vec::new(); self.fan_out];
                    }
                    spilled[keys.partition(row, self.seed, self.fan_out)].push(row as u32);
                    group_of.push(NO_GROUP);
                }
            }
        }
        // Min/max values grow when a longer value wins; counted after the batch.
        let gathered = Gathered::pays(self.groups, n).then(|| Gathered::sort(&group_of, self.groups));
        let order = gathered.as_ref().map_or(Order::Scattered(&group_of), Order::Gathered);
        let mut grown = 0u64;
        for (acc, arg) in self.accs.iter_mut().zip(&args) {
            grown += update_batch(acc.as_mut(), arg.as_ref(), order)?;
        }
        let counted = grown == 0 || self.reservation.try_grow(grown).is_ok();
        if !counted && self.no_spill {
            return Ok(false);
        }
        // The values are already held: when the pool refuses them, or they take the table past
        // its share, the table stops growing instead. Past its share, it took what the scan
        // below needed for its next batch (4,000 groups of 240-byte minimums under 1.3 MiB).
        if (!counted || self.reservation.size() > self.limit) && self.partitions.is_none() && !self.no_spill {
            self.start_partitions(batch, n)?;
        }
        if !spilled.is_empty() {
            self.partition_rows(batch, spilled)?;
        }
        self.rows_seen += n as u64;
        Ok(true)
    }

    /// Stops the table from growing: the rows of groups not in it go to partitions from now on
    /// (`at` is the first row of `batch` that does).
    ///
    /// Each partition is later aggregated on its own, and split again if its groups do not fit
    /// either, which writes its rows once more. So the fan-out follows what may still come: the
    /// rest of the input (as the scans count it, an upper bound) as new groups, each costing what
    /// a group of this table costs (or a row of this batch, if more), over the memory a table
    /// gets, three times over for room: from 16 to 256 partitions. Sixteen for everything wrote
    /// the rows of the distinct-payload count of the benchmark suite (mostly distinct) twice.
    pub(super) fn start_partitions(&mut self, batch: &RecordBatch, at: usize) -> Result<()> {
        if let Some(expected) = self.expected_rows {
            let row_bytes = batch.get_array_memory_size() as u64 / batch.num_rows().max(1) as u64;
            let group_bytes = self.reservation.size() / self.groups.max(1) as u64;
            let seen = self.rows_seen + at as u64;
            // Over joins, filters or a first phase of aggregation, the table sees a fraction of
            // the rows its scans decode: the rows to come are projected from how far the scans
            // have got. Counting every scanned row as one to come, TPC-H Q10's aggregation (1.1M
            // rows in, of 76M scanned) spilled 8 MiB into 256 files.
            let scanned =
                self.scanned_at_start.map_or(0, |s| self.ctx.counters.rows.load(Ordering::Relaxed).saturating_sub(s));
            let total = if scanned > 0 && scanned < expected {
                (u128::from(seen) * u128::from(expected) / u128::from(scanned)) as u64
            } else {
                expected
            };
            let left = total.saturating_sub(seen);
            let wanted = (3 * left * row_bytes.max(group_bytes).max(1) / self.limit.max(1)) as usize;
            // Each partition buffers its rows until a write is worth it: at least 256 KiB of the
            // table's share a partition, or the writes get small (and the heap fragmented).
            let affordable = ((self.limit >> 18) as usize).max(1);
            let most = (1usize << affordable.ilog2()).clamp(MIN_PARTITIONS, MAX_PARTITIONS);
            self.fan_out = wanted.next_power_of_two().clamp(MIN_PARTITIONS, most);
        }
        // The table keeps what it holds; partition buffers get a share of the rest, so the input
        // still running beside the table has room.
        let limit = (self.limit / 4).max(min_memory(&self.ctx) / 2);
        let schema = self.spec.input_schema.clone();
        let metrics = &self.spec.metrics;
        self.partitions = Some(SpillPartitions::new(&self.ctx, metrics, schema, "HashAggregate", self.fan_out, limit));
        Ok(())
    }

    /// Adds the rows of groups not in the table to their partitions.
    pub(super) fn partition_rows(&mut self, batch: &RecordBatch, spilled: Vec<Vec<u32>>) -> Result<()> {
        self.partitions.as_mut().expect("partitions started").push_split(batch, &spilled)
    }

    /// Writes out what the partitions still buffer and returns their spill files.
    pub(super) fn finish_partitions(&mut self) -> Result<Vec<SpillFile>> {
        let Some(parts) = self.partitions.take() else { return Ok(Vec::new()) };
        self.spec.metrics.pass();
        Ok(parts.finish()?.into_iter().flatten().collect())
    }

    /// Folds `batch` into the (empty) table as a group per run of rows, run `k` starting at row
    /// `starts[k]`, without the index: see [`runs`]. False when the states do not fit the table's
    /// share.
    pub(super) fn add_runs(&mut self, batch: &RecordBatch, starts: &[u32]) -> Result<bool> {
        debug_assert_eq!(self.groups, 0);
        let runs = starts.len();
        if runs > self.capacity && !self.grow_to(runs) {
            return Ok(false);
        }
        for _ in 0..runs {
            self.push_group();
        }
        self.groups = runs;
        let gathered = Gathered::runs(starts, batch.num_rows());
        let spec = self.spec.clone();
        let mut grown = 0u64;
        for (acc, col) in self.accs.iter_mut().zip(&spec.arg_columns) {
            let arg = match col {
                Some(c) => Some(acc.arg(batch.column(*c))?),
                None => None,
            };
            grown += update_batch(acc.as_mut(), arg.as_ref(), Order::Gathered(&gathered))?;
        }
        Ok(grown == 0 || self.reservation.try_grow(grown).is_ok())
    }

    /// The groups [`add_runs`](Self::add_runs) made, their keys taken from the first row of each
    /// run of `batch`.
    pub(super) fn output_runs(&self, batch: &RecordBatch, starts: &[u32]) -> Result<RecordBatch> {
        let first_rows = arrow::array::UInt32Array::from(starts.to_vec());
        let keys = (0..self.spec.key_count)
            .map(|k| Ok(arrow::compute::take(batch.column(k), &first_rows, None)?))
            .collect::<Result<Vec<_>>>()?;
        self.batch_of(keys, 0, self.groups)
    }

    /// Output rows for groups `start..end` (in insertion order).
    pub(super) fn output(&self, start: usize, end: usize) -> Result<RecordBatch> {
        self.batch_of(self.index.key_columns(&self.spec, start, end)?, start, end)
    }

    /// The output batch of groups `start..end` with these key columns, and their states.
    pub(super) fn batch_of(&self, keys: Vec<ArrayRef>, start: usize, end: usize) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.spec.out_schema.fields().len());
        columns.extend(keys);
        for (i, acc) in self.accs.iter().enumerate() {
            let field = self.spec.out_schema.field(self.spec.key_count + i);
            columns.push(acc.finish(start, end, field.data_type())?);
        }
        // Key columns come back as the converter's (or the input's) types; conform to the plan's.
        let columns = columns
            .into_iter()
            .zip(self.spec.out_schema.fields())
            .map(
                |(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c)
                    } else {
                        Ok(arrow::compute::cast(&c, f.data_type())?)
                    }
                },
            )
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.spec.out_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(end - start)),
        )?)
    }
}

impl BatchKeys {
    pub(super) fn new(spec: &Spec, batch: &RecordBatch) -> Result<BatchKeys> {
        let columns = &batch.columns()[..spec.key_count];
        Ok(match (&spec.key_converter, &spec.packing, spec.key_count) {
            (_, _, 0) => BatchKeys::None,
            (None, _, _) => {
                let ints = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
                BatchKeys::Int(ints.as_primitive::<arrow::datatypes::Int64Type>().clone())
            }
            (Some(c), Some(packing), _) => {
                let (keys, unpacked) = packing.pack(columns)?;
                let unpacked = match unpacked {
                    Some(rows) => Some((rows, c.convert_columns(columns)?)),
                    None => None,
                };
                BatchKeys::Packed { keys, unpacked }
            }
            (Some(c), None, _) => {
                let rows = c.convert_columns(columns)?;
                let hashes = rows.iter().map(|r| hash_key(r.data())).collect();
                BatchKeys::Rows(rows, hashes)
            }
        })
    }

    /// The row-format key of row `row`, if the keys are in row format.
    pub(super) fn row(&self, row: usize) -> Option<&[u8]> {
        match self {
            BatchKeys::Rows(r, _) => Some(r.row(row).data()),
            BatchKeys::Packed { unpacked: Some((rows, r)), .. } if rows[row] => Some(r.row(row).data()),
            _ => None,
        }
    }

    /// Bytes the row's key takes in a row-format key buffer (0 when it goes elsewhere).
    pub(super) fn len(&self, row: usize) -> usize {
        self.row(row).map_or(0, |r| r.len())
    }

    pub(super) fn hash(&self, row: usize, seed: u64) -> u64 {
        let state = FixedState::with_seed(seed);
        match self {
            BatchKeys::None => 0,
            BatchKeys::Int(a) if a.is_null(row) => state.hash_one(u64::MAX),
            BatchKeys::Int(a) => state.hash_one(a.value(row)),
            BatchKeys::Packed { keys, .. } => match self.row(row) {
                Some(r) => state.hash_one(r),
                None => state.hash_one(keys[row]),
            },
            BatchKeys::Rows(r, _) => state.hash_one(r.row(row).data()),
        }
    }

    /// The spill partition of row `row` at a recursion level's `seed`, of `fan_out` (a power of
    /// two): the top bits of the hash.
    pub(super) fn partition(&self, row: usize, seed: u64, fan_out: usize) -> usize {
        (self.hash(row, seed + 1) >> (64 - fan_out.trailing_zeros())) as usize
    }
}

/// The hash a row-format key is found by in [`RowKeys`].
pub(super) fn hash_key(key: &[u8]) -> u64 {
    FixedState::with_seed(TABLE_SEED).hash_one(key)
}

impl GroupIndex {
    pub(super) fn new(spec: &Spec) -> GroupIndex {
        match (&spec.key_converter, &spec.packing, spec.key_count) {
            (_, _, 0) => GroupIndex::Single,
            (None, _, _) => {
                GroupIndex::Int { map: IntMap::default(), keys: Vec::new(), nulls: Vec::new(), null_group: None }
            }
            (Some(_), Some(_), _) => {
                GroupIndex::Packed { map: IntMap::default(), keys: Vec::new(), rows: RowKeys::new() }
            }
            (Some(_), None, _) => GroupIndex::Rows(RowKeys::new()),
        }
    }

    /// Bytes for `capacity` groups: hash table buckets and control bytes, and the per-group vectors.
    pub(super) fn bytes(&self, capacity: usize) -> u64 {
        let table = |entry: usize| hash_table_bytes(capacity, entry);
        (match self {
            GroupIndex::Single => 0,
            GroupIndex::Int { .. } => IntMap::bytes_for(capacity) + capacity * 9,
            GroupIndex::Rows { .. } => table(4) + capacity * 16,
            GroupIndex::Packed { .. } => IntMap::bytes_for(capacity) + capacity * 8 + table(4) + capacity * 16,
        }) as u64
    }

    pub(super) fn reserve(&mut self, additional: usize) {
        match self {
            GroupIndex::Single => {}
            GroupIndex::Int { map, keys, nulls, .. } => {
                map.reserve(additional);
                keys.reserve_exact(additional);
                nulls.reserve_exact(additional);
            }
            GroupIndex::Rows(rows) => rows.reserve(additional),
            GroupIndex::Packed { map, keys, rows } => {
                map.reserve(additional);
                keys.reserve_exact(additional);
                if rows.table.is_empty() {
                    rows.offsets.reserve_exact(additional);
                    rows.hashes.reserve_exact(additional);
                } else {
                    rows.reserve(additional);
                }
            }
        }
    }

    pub(super) fn row_keys(&self) -> Option<&RowKeys> {
        match self {
            GroupIndex::Rows(rows) | GroupIndex::Packed { rows, .. } => Some(rows),
            _ => None,
        }
    }

    /// The (old, new) capacity in bytes of the key buffer if a key of `len` bytes does not fit.
    pub(super) fn key_growth(&self, len: usize) -> Option<(u64, u64)> {
        match self.row_keys() {
            Some(RowKeys { data, .. }) if len > 0 && data.len() + len > data.capacity() => {
                let new = (data.capacity() * 2).max(data.len() + len).max(64 << 10);
                Some((data.capacity() as u64, new as u64))
            }
            _ => None,
        }
    }

    /// Forgets every group, keeping the room.
    pub(super) fn clear(&mut self) {
        match self {
            GroupIndex::Single => {}
            GroupIndex::Int { map, keys, nulls, null_group } => {
                map.clear();
                keys.clear();
                nulls.clear();
                *null_group = None;
            }
            GroupIndex::Rows(rows) => rows.clear(),
            GroupIndex::Packed { map, keys, rows } => {
                map.clear();
                keys.clear();
                rows.clear();
            }
        }
    }

    /// Bytes of the key buffer (reserved apart from [`bytes`](Self::bytes)).
    pub(super) fn key_capacity(&self) -> usize {
        self.row_keys().map_or(0, |r| r.data.capacity())
    }

    pub(super) fn grow_keys(&mut self, capacity: usize) {
        if let GroupIndex::Rows(RowKeys { data, .. }) | GroupIndex::Packed { rows: RowKeys { data, .. }, .. } = self {
            data.reserve_exact(capacity - data.len());
        }
    }

    pub(super) fn find(&self, keys: &BatchKeys, row: usize) -> Option<usize> {
        match (self, keys) {
            (GroupIndex::Single, _) => Some(0),
            (GroupIndex::Int { null_group, .. }, BatchKeys::Int(a)) if a.is_null(row) => null_group.map(|g| g as usize),
            (GroupIndex::Int { map, .. }, BatchKeys::Int(a)) => match map.get(a.value(row)) {
                ABSENT => None,
                g => Some(g as usize),
            },
            (GroupIndex::Rows(rows), BatchKeys::Rows(r, hashes)) => rows.find(r.row(row).data(), hashes[row]),
            (GroupIndex::Packed { map, rows, .. }, BatchKeys::Packed { keys: packed, .. }) => match keys.row(row) {
                Some(key) => rows.find(key, hash_key(key)),
                None => match map.get(packed[row] as i64) {
                    ABSENT => None,
                    g => Some(g as usize),
                },
            },
            _ => unreachable!("keys and index of the same kind"),
        }
    }

    /// Adds group `g` for row `row` (room was made by `reserve` and `grow_keys`).
    pub(super) fn insert(&mut self, keys: &BatchKeys, row: usize, g: u32) {
        match (self, keys) {
            (GroupIndex::Single, _) => {}
            (GroupIndex::Int { map, keys: ks, nulls, null_group }, BatchKeys::Int(a)) => {
                if a.is_null(row) {
                    *null_group = Some(g);
                    ks.push(0);
                    nulls.push(true);
                } else {
                    map.insert(a.value(row), g);
                    ks.push(a.value(row));
                    nulls.push(false);
                }
            }
            (GroupIndex::Rows(rows), BatchKeys::Rows(r, hashes)) => {
                rows.push(Some((r.row(row).data(), hashes[row])), g)
            }
            (GroupIndex::Packed { map, keys: ks, rows }, BatchKeys::Packed { keys: packed, .. }) => match keys.row(row)
            {
                Some(key) => {
                    if rows.table.is_empty() {
                        // The first key that did not pack: the table takes the room reserved
                        // for it, for the groups there is room for.
                        rows.reserve(ks.capacity().saturating_sub(ks.len()).max(1));
                    }
                    ks.push(0);
                    rows.push(Some((key, hash_key(key))), g);
                }
                None => {
                    map.insert(packed[row] as i64, g);
                    ks.push(packed[row]);
                    rows.push(None, g);
                }
            },
            _ => unreachable!("keys and index of the same kind"),
        }
    }

    /// The key columns of groups `start..end`, in the converter's types.
    pub(super) fn key_columns(&self, spec: &Spec, start: usize, end: usize) -> Result<Vec<ArrayRef>> {
        let from_rows = |rows: &RowKeys, groups: &mut dyn Iterator<Item = usize>| -> Result<Vec<ArrayRef>> {
            let converter = spec.key_converter.as_ref().expect("row-format keys have a converter");
            let parser = converter.parser();
            Ok(converter.convert_rows(groups.map(|g| parser.parse(rows.key(g))))?)
        };
        Ok(match self {
            GroupIndex::Single => Vec::new(),
            GroupIndex::Int { keys, nulls, .. } => {
                let values = keys[start..end].iter().zip(&nulls[start..end]).map(|(k, null)| (!null).then_some(*k));
                vec![Arc::new(values.collect::<Int64Array>())]
            }
            GroupIndex::Rows(rows) => from_rows(rows, &mut (start..end))?,
            GroupIndex::Packed { keys, rows, .. } => {
                let packing = spec.packing.as_ref().expect("packed keys have a packing");
                let packed = packing.unpack(&keys[start..end])?;
                let in_rows: Vec<usize> = (start..end).filter(|&g| !rows.key(g).is_empty()).collect();
                if in_rows.is_empty() {
                    packed
                } else {
                    // Each group's key from where it is kept, in group order.
                    let unpacked = from_rows(rows, &mut in_rows.iter().copied())?;
                    let mut next = 0;
                    let pick: Vec<(usize, usize)> = (start..end)
                        .map(|g| match rows.key(g).is_empty() {
                            true => (0, g - start),
                            false => {
                                next += 1;
                                (1, next - 1)
                            }
                        })
                        .collect();
                    let mut columns = Vec::with_capacity(packed.len());
                    // Both in the key types: the packing's and the converter's are the same.
                    for (p, u) in packed.iter().zip(&unpacked) {
                        columns.push(arrow::compute::interleave(&[p.as_ref(), u.as_ref()], &pick)?);
                    }
                    columns
                }
            }
        })
    }
}
