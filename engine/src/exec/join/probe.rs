//! What runs on the scan workers: probing the table ([`Prober`]), and testing probe keys against
//! it before the rest of a row is decoded ([`TableKeys`], [`KeyFilter`]).

use super::*;

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
            let mut alone = JoinPlan::unmatched_probe_rows(current);
            while let Some(out) = shared.next_alone(&mut alone)? {
                if !emit(out)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
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
