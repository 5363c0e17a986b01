//! The join as it runs: build, probe in memory or partition by partition, chunks, and the
//! unmatched rows of outer joins.

use super::*;
use crate::exec::node::Running;

impl ProbeBatch {
    pub(super) fn done(&self) -> bool {
        self.row >= self.batch.num_rows()
    }
}

impl Bitmap {
    pub(super) fn new(rows: u64, ctx: &ExecContext) -> Result<Bitmap> {
        let words = rows.div_ceil(64) as usize;
        let mut reservation = ctx.pool.register("HashJoin probe bitmap", false);
        reservation.try_grow(words as u64 * 8)?;
        Ok(Bitmap { bits: vec![0; words], _reservation: reservation })
    }
    pub(super) fn set(&mut self, i: u64) {
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
    }
    pub(super) fn get(&self, i: u64) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
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
            shared: Arc::new(JoinPlan {
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

    /// A reservation for a batch read back from a spill file, held while the join works on it.
    pub(super) fn reserve_read(&self, batch: &RecordBatch) -> Result<MemoryReservation> {
        self.reserve_batch("HashJoin read batch", batch)
    }

    /// A reservation of `batch`'s bytes for `name` (the join's headroom leaves room for it).
    pub(super) fn reserve_batch(&self, name: &str, batch: &RecordBatch) -> Result<MemoryReservation> {
        let bytes = batch.get_array_memory_size() as u64;
        if let Some(headroom) = self.headroom.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            headroom.raise_to(crate::exec::headroom_for(bytes));
        }
        let mut r = self.ctx.pool.register(name, false);
        r.try_grow(bytes)?;
        Ok(r)
    }

    pub(super) fn drop_headroom(&self) {
        self.headroom.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub(super) fn next_batch(
        &mut self,
        cancel: &AtomicBool,
    ) -> Result<Option<(RecordBatch, Option<MemoryReservation>)>> {
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
                State::ProbeUnmatched { reader, _file, bitmap, offset, alone: Some(mut alone) } => {
                    let out = self.shared.next_alone(&mut alone)?;
                    let alone = out.is_some().then_some(alone);
                    self.state = State::ProbeUnmatched { reader, _file, bitmap, offset, alone };
                    if let Some(out) = out {
                        return Ok(Some((out, None)));
                    }
                }
                State::ProbeUnmatched { mut reader, _file, bitmap, offset, alone: None } => {
                    match reader.next_batch()? {
                        Some(batch) => {
                            let held = self.reserve_read(&batch)?;
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
                                    let rows = (0..n).filter(|&i| !bitmap.get(offset + i)).map(|i| i as u32).collect();
                                    let alone = Unmatched { batch, rows, at: 0, _held: Some(held) };
                                    self.state = State::ProbeUnmatched {
                                        reader,
                                        _file,
                                        bitmap,
                                        offset: offset + n,
                                        alone: Some(alone),
                                    };
                                    continue;
                                }
                            };
                            self.state =
                                State::ProbeUnmatched { reader, _file, bitmap, offset: offset + n, alone: None };
                            if let Some(out) = out {
                                return Ok(Some((out, None)));
                            }
                        }
                        None => self.state = State::NextTask,
                    }
                }
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
    pub(super) fn start(&mut self, build: Pipeline, probe: Pipeline, cancel: &AtomicBool) -> Result<()> {
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
    pub(super) fn table_share(&self, beside: u64) -> u64 {
        table_limit(self.ctx.available_for_sizing().saturating_sub(beside), &self.ctx)
    }

    /// What runs beside a build table (see [`JoinStream::table_share`]).
    pub(super) fn beside_table(&self, build: &Pipeline, probe: &Pipeline) -> u64 {
        build.stream_memory(&self.ctx, self.queue_limit) + probe.min_memory(&self.ctx)
    }

    /// Builds from the build input (`rows` of it expected, when known); probes in memory if it
    /// fit, else partitions both inputs.
    pub(super) fn join_inputs(
        &mut self,
        build: Pipeline,
        probe: Pipeline,
        rows: Option<u64>,
        cancel: &AtomicBool,
    ) -> Result<()> {
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
        let mut input = crate::exec::start_beside(&self.ctx, "HashJoin", minimum, || {
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
            let stream = crate::exec::start_beside(&self.ctx, "HashJoin", min_memory(&self.ctx), || {
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
        let input = crate::exec::start_beside(&self.ctx, "HashJoin", min_memory(&self.ctx), || {
            probe.execute_with(&self.ctx, Some(self.queue_limit))
        })?;
        let probes = parts.add_stream(input, cancel)?;
        self.queue_tasks(builds, probes, 1, u64::MAX)?;
        self.state = State::NextTask;
        Ok(())
    }

    /// Queues partition pairs (in front: depth first, so partitions on disk stay few).
    pub(super) fn queue_tasks(
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
    pub(super) fn keep_heads(&mut self, table: Arc<BuildTable>) {
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
    pub(super) fn run_task(&mut self, task: Task) -> Result<()> {
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
    pub(super) fn probe_wave(&mut self, probe: &mut Probe) -> Result<bool> {
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
                    let whole = crate::exec::operators::run_stages(&stages, batch, &mut |b| {
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
    pub(super) fn after_probe(&mut self, probe: Probe) -> Result<()> {
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
                self.state = State::ProbeUnmatched { reader, _file: chunks.probe_file, bitmap, offset: 0, alone: None };
            }
            None => self.state = State::NextTask,
        }
        Ok(())
    }

    /// The next output chunk of a probe pass (with its reservation when it already has one), or
    /// `None` when the pass is done.
    pub(super) fn probe_next(&mut self, probe: &mut Probe) -> Result<Option<(RecordBatch, Option<MemoryReservation>)>> {
        let shared = self.shared.clone();
        loop {
            if let Some((batch, reservation)) = self.wave.pop_front() {
                self.from_workers = true;
                return Ok(Some((batch, Some(reservation))));
            }
            if probe.current.is_none() && self.probe_wave(probe)? {
                continue;
            }
            if let Some(alone) = &mut probe.alone {
                match shared.next_alone(alone)? {
                    Some(out) => return Ok(Some((out, None))),
                    None => probe.alone = None,
                }
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
                    probe.alone = Some(JoinPlan::unmatched_probe_rows(current));
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
            // An outer join's rows carry nulls for the probe side's columns: a decimal null takes
            // 16 bytes, and 8192 build rows of one integer came out as 422 KiB batches.
            let max = shared.chunk_rows(table.row_bytes() + super::keys::null_row_bytes(&shared.probe_schema));
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
                let probe_nulls = JoinPlan::nulls(&shared.probe_schema, ids.len());
                return Ok(Some((shared.assemble(build, probe_nulls, ids.len())?, None)));
            }
        }
    }
}

impl Running for JoinStream {
    fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
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
                    let ran = crate::exec::operators::run_stages(&self.above, batch, &mut |b| {
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

    fn stop(&mut self) {
        self.drop_headroom();
        self.state = State::Done;
        self.tasks.clear();
        self.pending.clear();
        self.wave.clear();
    }
}

impl Probe {
    pub(super) fn new(table: BuildTable, input: ProbeInput, bitmap: Option<Bitmap>, chunks: Option<Chunks>) -> Probe {
        Probe::shared(Arc::new(table), input, false, bitmap, chunks)
    }

    pub(super) fn shared(
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
            alone: None,
            bitmap,
            chunks,
            unmatched_from: None,
            replay: VecDeque::new(),
            no_wave: false,
        }
    }
}
