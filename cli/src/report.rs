//! The end-of-run summary line and the `--report` JSON.

use std::path::Path;
use std::time::Instant;

use flow_engine::{human, Config, Engine, Error, OperatorStats, QueryMetrics, SpillStats, WriteSummary};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub mem_budget: u64,
    pub threads: usize,
    pub steps: Vec<StepReport>,
    /// Every unit of every step with units, in the order they were taken.
    pub units: Vec<UnitReport>,
    pub elapsed_ms: u128,
    /// The most bytes reserved from the pool at once, over the run.
    pub peak_accounted: u64,
    /// The most heap bytes live at once, from the counting allocator.
    pub peak_allocated: Option<u64>,
    /// The process's peak resident set size.
    pub peak_rss: Option<u64>,
    pub spill: SpillStats,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub name: String,
    pub output: Option<String>,
    pub rows_read: u64,
    pub bytes_read: u64,
    pub rows_out: u64,
    pub bytes_written: u64,
    pub elapsed_ms: u128,
    pub row_groups_total: usize,
    pub row_groups_scanned: usize,
    pub peak_accounted: u64,
    /// The most heap bytes live at once during the step, from the counting allocator.
    pub peak_allocated: Option<u64>,
    pub spill: SpillStats,
    /// What each operator did, in the order they started.
    pub operators: Vec<OperatorStats>,
}

impl StepReport {
    pub fn new(name: &str, summary: Option<&WriteSummary>, m: &QueryMetrics) -> StepReport {
        StepReport {
            name: name.to_string(),
            output: summary.map(|s| s.path.display().to_string()),
            rows_read: m.rows_read,
            bytes_read: m.bytes_read,
            rows_out: m.rows_out,
            bytes_written: summary.map_or(0, |s| s.bytes),
            elapsed_ms: m.elapsed.as_millis(),
            row_groups_total: m.pipeline.row_groups_total,
            row_groups_scanned: m.pipeline.row_groups_scanned,
            peak_accounted: m.peak_reserved,
            peak_allocated: flow_engine::alloc::allocated_peak(),
            spill: m.spill,
            operators: m.operators.clone(),
        }
    }
}

/// One unit of work.
#[derive(Debug, Serialize)]
pub struct UnitReport {
    pub step: String,
    pub unit: String,
    pub id: String,
    /// `committed` (ran and committed now), `skipped` (committed before, inputs unchanged) or
    /// `failed`.
    pub status: &'static str,
    pub attempts: u32,
    pub error: Option<String>,
    pub rows: u64,
    pub files: usize,
    pub rows_read: u64,
    pub bytes_read: u64,
    pub elapsed_ms: u128,
    pub peak_accounted: u64,
    pub peak_allocated: Option<u64>,
    pub spill: SpillStats,
    /// Bytes still reserved from the pool once the unit was done, beyond the step's unit list
    /// (always 0).
    pub reserved_after: u64,
    /// The process's resident set size once the unit was done and memory released.
    pub rss_after: Option<u64>,
    /// Heap bytes still live once the unit was done, as the counting allocator sees them: what
    /// the run keeps between units (its report, the step's unit list), never a unit's data.
    pub allocated_after: Option<u64>,
}

impl Report {
    pub fn new(config: &Config) -> Report {
        Report {
            mem_budget: config.mem_budget,
            threads: config.threads,
            steps: Vec::new(),
            units: Vec::new(),
            elapsed_ms: 0,
            peak_accounted: 0,
            peak_allocated: None,
            peak_rss: None,
            spill: SpillStats::default(),
        }
    }

    pub fn finish(&mut self, engine: &Engine, started: Instant) {
        self.elapsed_ms = started.elapsed().as_millis();
        self.peak_accounted = self.steps.iter().map(|s| s.peak_accounted).max().unwrap_or(0).max(engine.pool().peak());
        let steps_peak = self.steps.iter().filter_map(|s| s.peak_allocated).max();
        self.peak_allocated = flow_engine::alloc::allocated_peak().max(steps_peak);
        self.peak_rss = flow_engine::alloc::peak_rss();
        self.spill = engine.spill().stats();
    }

    pub fn summary_line(&self) -> String {
        let rows_read: u64 =
            self.steps.iter().map(|s| s.rows_read).sum::<u64>() + self.units.iter().map(|u| u.rows_read).sum::<u64>();
        let bytes_read: u64 =
            self.steps.iter().map(|s| s.bytes_read).sum::<u64>() + self.units.iter().map(|u| u.bytes_read).sum::<u64>();
        let rows_out: u64 = self.steps.iter().map(|s| s.rows_out).sum::<u64>()
            + self.units.iter().filter(|u| u.status == "committed").map(|u| u.rows).sum::<u64>();
        let mut unit_steps: Vec<&str> = self.units.iter().map(|u| u.step.as_str()).collect();
        unit_steps.dedup();
        let steps = self.steps.len() + unit_steps.len();
        let opt = |v: Option<u64>| v.map(human).unwrap_or_else(|| "n/a".into());
        format!(
            "flow: {} step{} in {:.2}s: read {} rows ({}), wrote {} rows; memory peak {} accounted, {} allocated, {} RSS (budget {}); spilled {} in {} files",
            steps,
            if steps == 1 { "" } else { "s" },
            self.elapsed_ms as f64 / 1000.0,
            rows_read,
            human(bytes_read),
            rows_out,
            human(self.peak_accounted),
            opt(self.peak_allocated),
            opt(self.peak_rss),
            human(self.mem_budget),
            human(self.spill.bytes),
            self.spill.files,
        )
    }

    /// The summary line, a line per step with units, then one line per blocking operator (joins,
    /// aggregations, sorts).
    pub fn summary(&self) -> String {
        let mut out = self.summary_line();
        let mut unit_steps: Vec<&str> = self.units.iter().map(|u| u.step.as_str()).collect();
        unit_steps.dedup();
        for step in unit_steps {
            let of_step = || self.units.iter().filter(move |u| u.step == step);
            let count = |status: &str| of_step().filter(|u| u.status == status).count();
            out.push_str(&format!(
                "\n  {step}: {} units: {} committed, {} already committed, {} failed; {} rows written",
                of_step().count(),
                count("committed"),
                count("skipped"),
                count("failed"),
                of_step().filter(|u| u.status == "committed").map(|u| u.rows).sum::<u64>(),
            ));
        }
        for step in &self.steps {
            for op in step.operators.iter().filter(|o| o.name != "Scan" && o.name != "Union") {
                let spill = if op.spill_files > 0 {
                    let passes = match op.passes {
                        0 => String::new(),
                        1 => ", 1 pass".to_string(),
                        n => format!(", {n} passes"),
                    };
                    let asked = match op.spills_on_request {
                        0 => String::new(),
                        n => format!(", {n} on request"),
                    };
                    format!(
                        ", spilled {} in {} files ({} rows{passes}{asked})",
                        human(op.spill_bytes),
                        op.spill_files,
                        op.spill_rows
                    )
                } else {
                    String::new()
                };
                let prefix = if self.steps.len() > 1 { format!("{}: ", step.name) } else { String::new() };
                out.push_str(&format!(
                    "\n  {prefix}{} {}: {} rows in, {} out, {:.2}s, peak {}{spill}",
                    op.name,
                    op.detail,
                    op.rows_in,
                    op.rows_out,
                    op.elapsed_ms as f64 / 1000.0,
                    human(op.peak_reserved),
                ));
            }
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Execution(e.to_string()))?;
        std::fs::write(path, json + "\n").map_err(|e| Error::Io { path: path.to_path_buf(), source: e })
    }
}
