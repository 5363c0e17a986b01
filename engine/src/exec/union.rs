//! Union: inputs run one after another, their batches handed on as they come.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::node::{Node, Running, Started};
use super::{BatchStream, ExecContext, OperatorMetrics, Pipeline};
use crate::error::Result;
use crate::memory::MemoryReservation;

pub(crate) struct UnionNode {
    pub inputs: Vec<Pipeline>,
}

impl Node for UnionNode {
    fn name(&self) -> &'static str {
        "Union"
    }

    fn detail(&self) -> String {
        format!("{} inputs", self.inputs.len())
    }

    fn inputs(&self) -> Vec<&Pipeline> {
        self.inputs.iter().collect()
    }

    fn explain(&self, ctx: &ExecContext, id: u64, depth: usize, role: &str, out: &mut Vec<super::ExplainLine>) {
        out.push(super::ExplainLine { depth, id: Some(id), text: format!("{role}Union") });
        for input in &self.inputs {
            input.describe(ctx, depth + 1, "", out);
        }
    }

    fn min_memory(&self, ctx: &ExecContext) -> u64 {
        self.inputs.iter().map(|i| i.min_memory(ctx)).max().unwrap_or(0)
    }

    /// Inputs after the first start while the operator above holds what it took: they need
    /// their minimums then (an EXCEPT's aggregation grew while its first input ran, and its
    /// second, a join, could not start its scan).
    fn stream_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        let streams = self.inputs.iter().map(|i| i.stream_memory(ctx, queue_limit));
        let starts = self.inputs.iter().skip(1).map(|i| i.min_memory(ctx));
        streams.chain(starts).max().unwrap_or(0)
    }

    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        self.inputs.iter().map(|i| i.max_memory(ctx, queue_limit)).max().unwrap_or(0)
    }

    fn start(
        self: Box<Self>,
        ctx: &ExecContext,
        _schema: &SchemaRef,
        metrics: &Arc<OperatorMetrics>,
        queue_limit: Option<u64>,
    ) -> Result<Started> {
        let stream = UnionStream {
            metrics: metrics.clone(),
            pending: self.inputs.into(),
            current: None,
            queue_limit,
            ctx: ctx.clone(),
        };
        // The inputs keep their own headroom.
        Ok(Started { headroom: false, ..Started::new(stream) })
    }
}

struct UnionStream {
    metrics: Arc<OperatorMetrics>,
    pending: std::collections::VecDeque<Pipeline>,
    current: Option<BatchStream>,
    queue_limit: Option<u64>,
    ctx: ExecContext,
}

impl Running for UnionStream {
    fn next_reserved(&mut self, _cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        loop {
            if let Some(current) = &mut self.current {
                match current.next_reserved() {
                    Some(Ok((batch, mut reservation))) => {
                        self.metrics.rows_in(batch.num_rows());
                        // The batch travels on under its own reservation; the input gets its
                        // reservation back at once (empty), so its flow control moves on.
                        let moved = reservation.split(reservation.size());
                        current.release(reservation);
                        return Some(Ok((batch, moved)));
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.current = None,
                }
            }
            let next = self.pending.pop_front()?;
            match next.execute_with(&self.ctx, self.queue_limit) {
                Ok(stream) => self.current = Some(stream),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn stop(&mut self) {
        self.pending.clear();
        self.current = None;
    }
}
