//! Small batches going on as one: see [`BatchStream::coalesce`].

use std::sync::Arc;

use arrow::array::RecordBatch;

use super::{sliced_bytes, BatchStream};
use crate::error::Result;
use crate::memory::MemoryReservation;

impl BatchStream {
    /// Hands `batch` on, or holds it back when it is small, to go out with the small batches
    /// after it as one batch. Every operator above pays per batch, whatever its rows: a window
    /// over 152,441 rows read from row groups of 7 rows held 21,778 batches, whose structures
    /// took 7 MiB more than their values (and the run took 15 times as long as from one row
    /// group). Small batches also come from selective filters and from joins probed with them.
    pub(super) fn coalesce(
        &mut self,
        batch: RecordBatch,
        mut reservation: MemoryReservation,
    ) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        let small = batch.num_columns() > 0
            && batch.num_rows() < self.coalesce_rows / 8
            && sliced_bytes(&batch) < self.chunk_bytes / 16;
        if !small {
            if self.small.is_empty() {
                return Some(Ok((batch, reservation)));
            }
            self.ready = Some((batch, reservation));
            return Some(self.coalesced());
        }
        // The source gets its reservation back at once (empty), so its flow control moves on.
        let moved = reservation.split(reservation.size());
        self.source.release(reservation);
        // Batches of one stream may differ in their columns' types (a string column comes as a
        // dictionary from row groups that store it so): those go out apart.
        let same_types = |a: &RecordBatch, b: &RecordBatch| {
            a.columns().iter().zip(b.columns()).all(|(x, y)| x.data_type() == y.data_type())
        };
        if self.small.first().is_some_and(|(first, _)| !same_types(first, &batch)) {
            let out = self.coalesced();
            self.small.push((batch, moved));
            return Some(out);
        }
        self.small.push((batch, moved));
        let rows: usize = self.small.iter().map(|(b, _)| b.num_rows()).sum();
        let bytes: u64 = self.small.iter().map(|(_, r)| r.size()).sum();
        match rows >= self.coalesce_rows || bytes >= self.chunk_bytes / 4 || self.done {
            true => Some(self.coalesced()),
            false => None,
        }
    }

    /// The small batches held back, as one batch with one reservation.
    pub(super) fn coalesced(&mut self) -> Result<(RecordBatch, MemoryReservation)> {
        let mut small = std::mem::take(&mut self.small).into_iter();
        let (first, mut held) = small.next().expect("a small batch is held");
        let mut batches = vec![first];
        for (batch, reservation) in small {
            batches.push(batch);
            held.merge(reservation);
        }
        let batch = match batches.len() {
            1 => batches.pop().expect("one batch"),
            _ => {
                // A column may be nullable in some of the batches only (the two sides of a
                // union): it is in the one batch.
                let first = batches[0].schema();
                let fields: Vec<arrow::datatypes::FieldRef> = (0..first.fields().len())
                    .map(|i| {
                        let field = first.field(i);
                        match batches.iter().any(|b| b.schema().field(i).is_nullable()) {
                            true if !field.is_nullable() => Arc::new(field.clone().with_nullable(true)),
                            _ => first.fields()[i].clone(),
                        }
                    })
                    .collect();
                let schema = Arc::new(arrow::datatypes::Schema::new_with_metadata(fields, first.metadata().clone()));
                arrow::compute::concat_batches(&schema, &batches)?
            }
        };
        drop(batches);
        // The one batch holds its buffers without the small batches' structures (more, only
        // where their dictionaries were merged: held already, so counted past the budget).
        let bytes = batch.get_array_memory_size() as u64;
        match bytes > held.size() {
            true => held.grow_over_budget(bytes - held.size()),
            false => held.shrink(held.size() - bytes),
        }
        Ok((batch, held))
    }
}
