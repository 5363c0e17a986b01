//! The aggregation as it runs: filling the table, emitting its groups, then the spilled
//! partitions, several at once when no scan is running.

use super::*;

impl Clustered {
    pub(crate) fn new((key, starts): (usize, Vec<i64>)) -> Clustered {
        Clustered { key, starts, morsel: 0 }
    }

    /// Whether the table's groups are complete now that `batch` (the operator's layout) comes:
    /// its rows are of a later morsel.
    pub(super) fn complete_before(&mut self, batch: &RecordBatch) -> Result<bool> {
        if batch.num_rows() == 0 {
            return Ok(false);
        }
        let first = arrow::compute::cast(&batch.column(self.key).slice(0, 1), &DataType::Int64)?;
        let first = first.as_primitive::<arrow::datatypes::Int64Type>();
        if first.is_null(0) {
            return Err(Error::Execution(
                "internal error: a null key in input clustered by a column without nulls".into(),
            ));
        }
        let morsel = self.starts.partition_point(|&start| start <= first.value(0)).saturating_sub(1);
        if morsel < self.morsel {
            return Err(Error::Execution("internal error: clustered input out of order".into()));
        }
        let later = morsel > self.morsel;
        self.morsel = morsel;
        Ok(later)
    }
}

impl AggregateStream {
    /// `child_max` is the most the input pipeline may hold while it runs beside the aggregation,
    /// `child_stream` what it holds once its own blocking operators are built (its batches in
    /// flight).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        child: BatchStream,
        group_exprs: Vec<Expr>,
        aggregates: Vec<AggregateExpr>,
        out_schema: SchemaRef,
        child_max: u64,
        child_stream: u64,
        input_rows: Option<u64>,
        clustered: Option<(usize, Vec<i64>)>,
        ctx: &ExecContext,
        metrics: Arc<OperatorMetrics>,
    ) -> Result<AggregateStream> {
        let first_limit = table_limit(ctx.available_for_sizing().saturating_sub(child_max), ctx);
        let (spec, arg_exprs) = build_spec(&child.schema(), &group_exprs, aggregates, out_schema, metrics)?;
        Ok(AggregateStream {
            state: State::Pending(Box::new(child), group_exprs, arg_exprs, clustered.map(Clustered::new)),
            spec,
            ctx: ctx.clone(),
            first_limit,
            child_stream,
            input_rows,
        })
    }

    /// Adds input batches to the table until the input ends (true), or until its groups are
    /// complete before it does (false; see [`Clustered`]): the batch that says so waits in
    /// `f.later` while they go out.
    pub(super) fn fill(&mut self, f: &mut Filling, cancel: &AtomicBool) -> Result<bool> {
        let table = &mut f.table;
        while let Some(item) = f.child.next_reserved() {
            let (batch, reservation) = item?;
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            if !f.sized {
                // The first batch is here: joins and sorts below hold what they hold now, not the
                // most they might. The table's share is sized again from what is free (TPC-H Q10:
                // its aggregation over three joins got 5 MiB of 512 and spilled).
                f.sized = true;
                let free = self.ctx.available_for_sizing().saturating_sub(self.child_stream);
                table.limit = table.limit.max(table_limit(free + table.reservation.size(), &self.ctx));
            }
            let input = project(&batch, &f.group_exprs, &f.arg_exprs, &self.spec.input_schema)?;
            f.child.release(reservation);
            self.spec.metrics.rows_in(input.num_rows());
            // Once the table spills, its groups are no longer all in it: it keeps on as usual.
            let complete = match &mut f.clustered {
                Some(c) => c.complete_before(&input)? && table.partitions.is_none() && table.groups() > 0,
                None => false,
            };
            if complete {
                let mut held = self.ctx.pool.register("HashAggregate waiting batch", false);
                held.try_grow(input.get_array_memory_size() as u64)?;
                f.later = Some((input, held));
                f.next = 0;
                return Ok(false);
            }
            table.add(&input)?;
            self.spec.metrics.reserved(table.reservation.size());
        }
        if self.spec.key_count == 0 && table.groups() == 0 {
            // No GROUP BY: one group even for no rows (count 0, sum NULL).
            table.add_empty_group()?;
        }
        Ok(true)
    }
}

impl Running for AggregateStream {
    fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        loop {
            match &mut self.state {
                State::Done => return None,
                State::Pending(..) => {
                    let State::Pending(child, group_exprs, arg_exprs, clustered) =
                        std::mem::replace(&mut self.state, State::Done)
                    else {
                        unreachable!()
                    };
                    let mut table = match GroupTable::new(&self.spec, &self.ctx, 0, self.first_limit) {
                        Ok(t) => t,
                        Err(e) => return Some(Err(e)),
                    };
                    table.expected_rows = self.input_rows;
                    table.scanned_at_start = Some(self.ctx.counters.rows.load(Ordering::Relaxed));
                    self.state = State::Filling(Box::new(Filling {
                        child: *child,
                        group_exprs,
                        arg_exprs,
                        table,
                        sized: false,
                        clustered,
                        later: None,
                        next: 0,
                    }));
                }
                State::Filling(f) if f.later.is_some() => {
                    // The table's groups are complete: out a batch at a time, then the table
                    // starts again with the batch that came.
                    if f.next < f.table.groups() {
                        let end = (f.next + f.table.output_rows(&self.ctx)).min(f.table.groups());
                        let chunk = output_reserved(&self.ctx, f.table.output(f.next, end));
                        f.next = end;
                        return Some(chunk);
                    }
                    f.table.clear();
                    let (later, _held) = f.later.take().expect("a batch waits");
                    if let Err(e) = f.table.add(&later) {
                        self.state = State::Done;
                        return Some(Err(e));
                    }
                    self.spec.metrics.reserved(f.table.reservation.size());
                }
                State::Filling(_) => {
                    let State::Filling(mut f) = std::mem::replace(&mut self.state, State::Done) else { unreachable!() };
                    match self.fill(&mut f, cancel) {
                        Err(e) => return Some(Err(e)),
                        Ok(false) => {
                            self.state = State::Filling(f);
                            continue;
                        }
                        Ok(true) => {}
                    }
                    let partitions = match f.table.finish_partitions() {
                        Ok(p) => p.into_iter().map(|f| (f, 1)).collect(),
                        Err(e) => return Some(Err(e)),
                    };
                    self.state = State::Emitting { tables: VecDeque::from([f.table]), next: 0, partitions };
                }
                State::Emitting { tables, next, partitions } => {
                    if let Some(table) = tables.front() {
                        if *next < table.groups() {
                            let end = (*next + table.output_rows(&self.ctx)).min(table.groups());
                            let chunk = output_reserved(&self.ctx, table.output(*next, end));
                            *next = end;
                            return Some(chunk);
                        }
                        // This table is done: free it before the next partitions' tables are built.
                        tables.pop_front();
                        *next = 0;
                        continue;
                    }
                    if partitions.is_empty() {
                        self.state = State::Done;
                        return None;
                    }
                    // Partitions are independent: with the input done and no scan running, as many
                    // as there are threads are aggregated at once, each in its slice of the share.
                    // Each table gets at least twice the operator's minimum, and a partition that
                    // was split again runs alone with all of it: under a small budget, a third
                    // of the room each was too little for any partition's groups, which split
                    // again and again until the aggregation gave up (found by the fuzzer).
                    let idle = self.ctx.counters.workers.load(std::sync::atomic::Ordering::Acquire) == 0;
                    let whole = table_limit(self.ctx.obtainable(), &self.ctx);
                    let fit = (whole / (2 * min_memory(&self.ctx))).max(1) as usize;
                    let split_again = partitions.front().is_some_and(|(_, depth)| *depth > 1);
                    let at_once = match idle && !split_again {
                        true => self.ctx.config.threads.max(1).min(partitions.len()).min(fit),
                        false => 1,
                    };
                    let limit = whole / at_once as u64;
                    let batch: Vec<(SpillFile, usize)> = partitions.drain(..at_once).collect();
                    let run = |(file, depth): (SpillFile, usize)| -> Result<(GroupTable, Vec<SpillFile>, usize)> {
                        if depth > MAX_DEPTH {
                            return Err(Error::Execution(
                                "aggregation: groups still do not fit after repartitioning (hint: raise --mem-budget)"
                                    .into(),
                            ));
                        }
                        let mut table = GroupTable::new(&self.spec, &self.ctx, depth, limit)?;
                        table.expected_rows = Some(file.rows());
                        table.presize(file.rows() as usize);
                        let mut reader = file.reader()?;
                        // Each batch read back is paid for while it is added.
                        let mut held = self.ctx.pool.register("HashAggregate read batch", false);
                        while let Some(batch) = reader.next_batch()? {
                            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                                return Err(Error::Cancelled);
                            }
                            held.try_resize(batch.get_array_memory_size() as u64)?;
                            table.add(&batch)?;
                        }
                        drop(held);
                        drop(reader);
                        drop(file);
                        let more = table.finish_partitions()?;
                        Ok((table, more, depth))
                    };
                    let results: Vec<Result<(GroupTable, Vec<SpillFile>, usize)>> = if at_once > 1 {
                        use rayon::prelude::*;
                        self.ctx.threads.install(|| batch.into_par_iter().map(run).collect())
                    } else {
                        batch.into_iter().map(run).collect()
                    };
                    let mut deeper = Vec::new();
                    for result in results {
                        match result {
                            Ok((table, more, depth)) => {
                                tables.push_back(table);
                                deeper.extend(more.into_iter().map(|f| (f, depth + 1)));
                            }
                            Err(e) => {
                                self.state = State::Done;
                                return Some(Err(e));
                            }
                        }
                    }
                    for p in deeper.into_iter().rev() {
                        partitions.push_front(p);
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        self.state = State::Done;
    }
}

/// An output batch of a table, paid for from the pool until the consumer is done with it.
pub(super) fn output_reserved(
    ctx: &ExecContext,
    batch: Result<RecordBatch>,
) -> Result<(RecordBatch, MemoryReservation)> {
    let batch = batch?;
    let mut r = ctx.pool.register("HashAggregate output", false);
    r.try_grow(batch.get_array_memory_size() as u64)?;
    Ok((batch, r))
}

/// The spec of an aggregation over `in_schema`, and the argument expressions it evaluates.
pub(super) fn build_spec(
    in_schema: &SchemaRef,
    group_exprs: &[Expr],
    aggregates: Vec<AggregateExpr>,
    out_schema: SchemaRef,
    metrics: Arc<OperatorMetrics>,
) -> Result<(Arc<Spec>, Vec<Option<Expr>>)> {
    let mut fields: Vec<Field> = group_exprs
        .iter()
        .enumerate()
        .map(|(i, e)| Field::new(format!("k{i}"), e.data_type(in_schema), true))
        .collect();
    let mut arg_columns = Vec::new();
    let mut arg_exprs = Vec::new();
    for a in &aggregates {
        match &a.arg {
            Some(e) => {
                arg_columns.push(Some(fields.len()));
                fields.push(Field::new(format!("a{}", fields.len()), e.data_type(in_schema), true));
                arg_exprs.push(Some(e.clone()));
            }
            None => {
                arg_columns.push(None);
                arg_exprs.push(None);
            }
        }
    }
    // One integer-like key is kept as `i64` (inline in the hash table); other keys in row format.
    let key_types: Vec<DataType> = group_exprs.iter().map(|e| e.data_type(in_schema)).collect();
    let key_converter = match key_types.as_slice() {
        [] => None,
        [t] if int_like(t) => None,
        _ => Some(RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?),
    };
    let spec = Arc::new(Spec {
        out_schema,
        input_schema: Arc::new(Schema::new(fields)),
        key_count: group_exprs.len(),
        aggregates,
        arg_columns,
        packing: key_converter.as_ref().and_then(|_| Packing::plan(&key_types)),
        key_converter,
        metrics,
    });
    Ok((spec, arg_exprs))
}
