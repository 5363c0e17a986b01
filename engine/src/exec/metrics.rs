//! Per-operator metrics: what each operator of a running query consumed, produced, held and
//! spilled. Operators update their record as they run; the query reads them all at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::spill::SpillFile;

/// The live record of one operator.
#[derive(Debug)]
pub(crate) struct OperatorMetrics {
    id: u64,
    name: String,
    detail: String,
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    elapsed_ns: AtomicU64,
    peak_reserved: AtomicU64,
    spill_files: AtomicU64,
    spill_bytes: AtomicU64,
    spill_rows: AtomicU64,
    passes: AtomicU64,
    spills_on_request: AtomicU64,
}

impl OperatorMetrics {
    pub fn rows_in(&self, n: usize) {
        self.rows_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn rows_out(&self, n: usize) {
        self.rows_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Notes that the operator holds `bytes` of reservations now.
    pub fn reserved(&self, bytes: u64) {
        self.peak_reserved.fetch_max(bytes, Ordering::Relaxed);
    }
    /// Counts a finished spill file.
    pub fn spilled(&self, file: &SpillFile) {
        self.spill_files.fetch_add(1, Ordering::Relaxed);
        self.spill_bytes.fetch_add(file.bytes(), Ordering::Relaxed);
        self.spill_rows.fetch_add(file.rows(), Ordering::Relaxed);
    }
    /// Counts a spill the pool asked for, to make room for another operator.
    pub fn spilled_on_request(&self) {
        self.spills_on_request.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts a merge pass (sort) or a repartitioning level (join, aggregation).
    pub fn pass(&self) {
        self.passes.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds the time since `start` to the operator's time.
    pub fn time(&self, start: Instant) {
        self.elapsed_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn stats(&self) -> OperatorStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OperatorStats {
            id: self.id,
            name: self.name.clone(),
            detail: self.detail.clone(),
            rows_in: get(&self.rows_in),
            rows_out: get(&self.rows_out),
            elapsed_ms: get(&self.elapsed_ns) / 1_000_000,
            peak_reserved: get(&self.peak_reserved),
            spill_files: get(&self.spill_files),
            spill_bytes: get(&self.spill_bytes),
            spill_rows: get(&self.spill_rows),
            passes: get(&self.passes),
            spills_on_request: get(&self.spills_on_request),
        }
    }
}

/// What one operator did, for reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OperatorStats {
    /// Which node of the physical plan this is (as numbered by `EXPLAIN`).
    pub id: u64,
    /// The operator: `HashJoin`, `HashAggregate`, `ExternalSort`, `Scan`, `Union`.
    pub name: String,
    /// What it works on (join type and sides, keys, table).
    pub detail: String,
    /// Rows it consumed (both inputs of a join).
    pub rows_in: u64,
    /// Rows it produced.
    pub rows_out: u64,
    /// Wall time spent producing its output, its inputs' time included.
    pub elapsed_ms: u64,
    /// The most bytes its own reservations held at once.
    pub peak_reserved: u64,
    /// Spill files it wrote, their bytes on disk and rows.
    pub spill_files: u64,
    /// Bytes of its spill files.
    pub spill_bytes: u64,
    /// Rows written to its spill files.
    pub spill_rows: u64,
    /// Merge passes of a sort; levels of repartitioning of a join or an aggregation.
    pub passes: u64,
    /// Times the pool made it spill to make room for another operator (see
    /// [`Reclaim`](crate::memory::Reclaim)).
    pub spills_on_request: u64,
}

/// The operators of one query, in the order they started.
#[derive(Debug, Clone, Default)]
pub(crate) struct OperatorRegistry(Arc<Mutex<Vec<Arc<OperatorMetrics>>>>);

impl OperatorRegistry {
    /// Registers an operator and returns its record.
    pub fn register(&self, id: u64, name: &str, detail: String) -> Arc<OperatorMetrics> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A node run more than once (a scan read one key range at a time) adds to its numbers.
        if let Some(m) = all.iter().find(|m| m.id == id) {
            return m.clone();
        }
        let m = Arc::new(OperatorMetrics {
            id,
            name: name.to_string(),
            detail,
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            elapsed_ns: AtomicU64::new(0),
            peak_reserved: AtomicU64::new(0),
            spill_files: AtomicU64::new(0),
            spill_bytes: AtomicU64::new(0),
            spill_rows: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            spills_on_request: AtomicU64::new(0),
        });
        all.push(m.clone());
        m
    }

    /// Every operator's numbers so far.
    pub fn stats(&self) -> Vec<OperatorStats> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|m| m.stats()).collect()
    }
}
