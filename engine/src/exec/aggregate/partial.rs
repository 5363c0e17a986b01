//! Two-phase aggregation: the partial step each scan worker (or a join's probe worker) runs on
//! its batches, and the split of the query's aggregates into partial and final ones.

use super::*;

/// The two-phase form of an aggregation, when it has one: grouped, and only `count`, `sum`,
/// `min`, `max` and `avg` (as a sum and a count, divided once at the end, exactly as DuckDB
/// divides its exact sum). `stddev` and `DISTINCT` have their own plans.
pub(crate) fn two_phase(
    in_schema: &SchemaRef,
    group_exprs: &[Expr],
    aggregates: &[AggregateExpr],
    out_schema: &SchemaRef,
    ctx: &ExecContext,
) -> Result<Option<TwoPhase>> {
    if group_exprs.is_empty() || !aggregates.iter().all(splittable) {
        return Ok(None);
    }
    let keys = group_exprs.len();
    // The partial aggregates, and each aggregate's split with where its partials start.
    let mut partials: Vec<AggregateExpr> = Vec::new();
    let mut splits = Vec::with_capacity(aggregates.len());
    for a in aggregates {
        let split = Split::of(a.func).expect("a two-phase aggregate splits");
        let arg_type = a.arg.as_ref().map(|e| e.data_type(in_schema));
        splits.push((split, partials.len()));
        for func in split.partials() {
            let data_type = func.return_type(arg_type.as_ref())?;
            partials.push(AggregateExpr { func, arg: a.arg.clone(), distinct: false, data_type });
        }
    }
    let mut fields: Vec<Field> = (0..keys).map(|i| out_schema.field(i).clone()).collect();
    fields.extend(partials.iter().enumerate().map(|(j, p)| Field::new(format!("p{j}"), p.data_type.clone(), true)));
    let partial_schema = Arc::new(Schema::new(fields));
    let metrics = OperatorRegistry::default().register(0, "PartialAggregate", String::new());
    let (spec, arg_exprs) = build_spec(in_schema, group_exprs, partials.clone(), partial_schema.clone(), metrics)?;
    let col = |i: usize| Expr::column(i, partial_schema.field(i).name());
    // Final aggregates: each partial column merged as its split says.
    let mut final_aggregates = Vec::new();
    for &(split, first) in &splits {
        for j in first..first + split.partials().len() {
            let func = split.merge();
            let data_type = func.return_type(Some(&partials[j].data_type))?;
            final_aggregates.push(AggregateExpr { func, arg: Some(col(keys + j)), distinct: false, data_type });
        }
    }
    let mut fields: Vec<Field> = (0..keys).map(|i| partial_schema.field(i).clone()).collect();
    fields.extend(
        final_aggregates.iter().enumerate().map(|(i, a)| Field::new(format!("m{i}"), a.data_type.clone(), true)),
    );
    let final_schema = Arc::new(Schema::new(fields));
    let merged = |j: usize| Expr::column(keys + j, final_schema.field(keys + j).name());
    let mut output: Vec<Expr> = (0..keys).map(|i| Expr::column(i, final_schema.field(i).name())).collect();
    for (i, &(split, first)) in splits.iter().enumerate() {
        let want = out_schema.field(keys + i).data_type().clone();
        let answer = split.finish((first..first + split.partials().len()).map(merged).collect());
        output.push(match answer.data_type(&final_schema) == want {
            true => answer,
            false => Expr::Cast { expr: Box::new(answer), to: want },
        });
    }
    let partial = PartialAggregator {
        spec,
        group_exprs: group_exprs.to_vec(),
        arg_exprs,
        ctx: ctx.clone(),
        limit: (8 * ctx.batch_bytes_target()).max(1 << 20),
        spare: Mutex::new(Vec::new()),
        reduction: Reduction::default(),
    };
    let final_groups = (0..keys).map(col).collect();
    Ok(Some(TwoPhase {
        partial: Arc::new(partial),
        partial_schema,
        final_groups,
        final_aggregates,
        final_schema,
        output,
    }))
}

/// Whether `a` splits into a partial and a final step: its partial results merge exactly, or it is
/// an average (a sum and a count).
pub(super) fn splittable(a: &AggregateExpr) -> bool {
    !a.distinct && Split::of(a.func).is_some()
}

impl Reduction {
    /// Rows seen before the decision.
    const PROBE_ROWS: u64 = 100_000;

    pub(super) fn record(&self, rows: usize, groups: usize) {
        let rows = self.rows.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
        let groups = self.groups.fetch_add(groups as u64, Ordering::Relaxed) + groups as u64;
        if rows >= Self::PROBE_ROWS && groups * 10 >= rows * 8 {
            self.skip.store(true, Ordering::Relaxed);
        }
    }
}

impl Expand for PartialAggregator {
    fn expand(&self, batch: RecordBatch, emit: &mut dyn FnMut(RecordBatch) -> Result<bool>) -> Result<bool> {
        let input = project(&batch, &self.group_exprs, &self.arg_exprs, &self.spec.input_schema)?;
        drop(batch);
        if self.reduction.skip.load(Ordering::Relaxed) {
            return emit(raw_partials(&self.spec, &input)?);
        }
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut table = match spare {
            Some(table) => table,
            None => GroupTable::new(&self.spec, &self.ctx, 0, self.limit)?,
        };
        table.no_spill = true;
        // Input clustered by the keys (lineitem by l_orderkey): a group per run of equal keys,
        // found by comparing neighbours instead of looking every row up.
        if let Some(starts) = runs(&input, self.spec.key_count)? {
            if table.add_runs(&input, &starts)? {
                let out = table.output_runs(&input, &starts)?;
                table.reset();
                self.spare.lock().unwrap_or_else(|e| e.into_inner()).push(table);
                return emit(out);
            }
            table.reset();
        }
        let out = if table.add(&input)? {
            self.reduction.record(input.num_rows(), table.groups());
            let out = table.output(0, table.groups())?;
            table.reset();
            self.spare.lock().unwrap_or_else(|e| e.into_inner()).push(table);
            out
        } else {
            // No room for this batch's groups: its rows go on as partial rows of one row each.
            drop(table);
            raw_partials(&self.spec, &input)?
        };
        emit(out)
    }
}

/// The first row of every run of equal keys, when `input`'s rows (the
/// operator's layout, `keys` key columns first) come in runs of two rows or more on average and
/// sorted by the first key; `None` otherwise (a look at the first rows decides early for input in
/// no such order). Nulls are equal to each other here, as grouping has them.
pub(super) fn runs(input: &RecordBatch, keys: usize) -> Result<Option<Vec<u32>>> {
    use arrow::compute::kernels::cmp::{distinct, gt, lt};
    const SAMPLE: usize = 64;
    let n = input.num_rows();
    if keys == 0 || n < 2 * SAMPLE {
        return Ok(None);
    }
    // Where the keys change: bit `i` for rows `i` and `i + 1` of the first `len`.
    let changes = |len: usize| -> Result<arrow::buffer::BooleanBuffer> {
        let mut changed: Option<arrow::buffer::BooleanBuffer> = None;
        for column in &input.columns()[..keys] {
            let differs = distinct(&column.slice(1, len - 1), &column.slice(0, len - 1))?;
            let differs = differs.values().clone();
            changed = Some(match changed {
                Some(c) => &c | &differs,
                None => differs,
            });
        }
        Ok(changed.expect("at least one key"))
    };
    let starts_of = |changed: &arrow::buffer::BooleanBuffer| -> Vec<u32> {
        std::iter::once(0).chain(changed.set_indices().map(|i| i as u32 + 1)).collect()
    };
    // Runs are worth it only where each is a group of its own in the batch (input sorted by the
    // keys): a few groups that come back run after run (TPC-H Q1's flags) fold into a handful of
    // partial rows in a table, where runs would hand the final aggregation thousands. The first
    // key column moving one way from run to run says so.
    let sorted = |starts: &[u32]| -> Result<bool> {
        let m = starts.len();
        if m < 2 {
            return Ok(true);
        }
        let first = arrow::compute::take(input.column(0), &arrow::array::UInt32Array::from(starts.to_vec()), None)?;
        let (earlier, later) = (first.slice(0, m - 1), first.slice(1, m - 1));
        let all = |b: arrow::array::BooleanArray| b.null_count() == 0 && b.true_count() == m - 1;
        Ok(all(lt(&earlier, &later)?) || all(gt(&earlier, &later)?))
    };
    let sample = changes(SAMPLE)?;
    if sample.count_set_bits() * 2 >= SAMPLE || !sorted(&starts_of(&sample))? {
        return Ok(None);
    }
    let changed = changes(n)?;
    let starts = starts_of(&changed);
    if starts.len() * 2 > n || !sorted(&starts)? {
        return Ok(None);
    }
    Ok(Some(starts))
}

/// Each row of `input` (the operator's layout) as a partial row of its own: count 1 (or 0 for a
/// null argument), the value as its own sum, minimum and maximum.
pub(super) fn raw_partials(spec: &Spec, input: &RecordBatch) -> Result<RecordBatch> {
    let n = input.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(spec.out_schema.fields().len());
    for i in 0..spec.key_count {
        columns.push(arrow::compute::cast(input.column(i), spec.out_schema.field(i).data_type())?);
    }
    for (a, arg) in spec.aggregates.iter().zip(&spec.arg_columns) {
        columns.push(match (a.func, arg) {
            (AggregateFunction::CountStar, _) => Arc::new(Int64Array::from(vec![1i64; n])),
            (AggregateFunction::Count, Some(c)) => {
                arrow::compute::cast(&arrow::compute::is_not_null(input.column(*c))?, &DataType::Int64)?
            }
            (_, Some(c)) => arrow::compute::cast(input.column(*c), &a.data_type)?,
            (f, None) => return Err(Error::Plan(format!("{}() needs an argument", f.name()))),
        });
    }
    Ok(RecordBatch::try_new_with_options(
        spec.out_schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}
