//! Key ranges of inputs in key order, and the grace partitions of inputs that do not fit.

use super::*;

/// The key ranges to join one at a time (with the build rows each is estimated to hold), when
/// both inputs are scans whose morsels come in order of their one integer key (see
/// [`Pipeline::key_ranges`]) and the build side is estimated at more than two ranges' worth:
/// every row of either input then falls in exactly one range, so joining range by range gives
/// what the whole join gives, for every join type that pairs rows by key (inner and outer; not
/// semi, anti or mark joins, whose `NOT IN` looks at the whole subquery).
///
/// A range holds build rows estimated at [`RANGE_BYTES`] (less when `limit`, the bytes a table
/// may hold, is smaller): a table that small stays in the caches while it is probed. Ranges
/// start where a morsel of the side with the larger morsels starts; a morsel of the other side
/// that straddles two ranges is read by both (each keeps its part), and the smaller morsels are
/// the cheaper to read twice.
pub(super) fn key_ranges(
    shared: &JoinPlan,
    build: &Pipeline,
    probe: &Pipeline,
    limit: u64,
) -> Option<VecDeque<(Pipeline, Pipeline, u64)>> {
    let ([build_key], [probe_key]) = (shared.spec.build_keys.as_slice(), shared.spec.probe_keys.as_slice()) else {
        return None;
    };
    // The build side's size is estimated from its row groups, which says nothing of the rows a
    // filter keeps: TPC-H Q12 builds on the 310K rows of lineitem that pass its filter (8 MiB),
    // taken for 60M, and ran as 262 ranges, each a scan of either side to start, 4x slower.
    if shared.existence.is_some() || !matches!(shared.key_kind, KeyKind::Int) || !build.keeps_every_row() {
        return None;
    }
    let builds = build.key_ranges(build_key)?;
    let probes = probe.key_ranges(probe_key)?;
    // Estimated (rows, table bytes) of the build rows with keys in lo..=hi, taking a morsel's
    // keys as spread evenly over its range.
    let estimate = |lo: i64, hi: i64| -> (f64, f64) {
        builds.iter().fold((0.0, 0.0), |(rows, bytes), m| {
            let overlap = (hi.min(m.max) as i128 - lo.max(m.min) as i128 + 1).max(0) as f64;
            let share = overlap / (m.max as i128 - m.min as i128 + 1) as f64;
            (rows + share * m.rows as f64, bytes + share * (m.bytes + m.rows * TABLE_ROW_BYTES) as f64)
        })
    };
    let target = RANGE_BYTES.min(limit / 2) as f64;
    if estimate(i64::MIN, i64::MAX).1 <= 2.0 * target {
        return None;
    }
    let mean_bytes = |morsels: &[crate::exec::MorselKeys]| {
        morsels.iter().map(|m| m.bytes).sum::<u64>() / morsels.len().max(1) as u64
    };
    let cuts = if mean_bytes(&builds) >= mean_bytes(&probes) { &builds } else { &probes };
    // Each range: from the start of a morsel of `cuts` (the first from the least key) to just
    // below the start of the next range (the last to the greatest key).
    let mut starts = vec![i64::MIN];
    for (i, morsel) in cuts.iter().enumerate().skip(1) {
        let end = cuts.get(i + 1).map_or(i64::MAX, |next| next.min.saturating_sub(1));
        // Morsels that start with one key (a key that fills several) stay in one range.
        if morsel.min > *starts.last()? && estimate(*starts.last()?, end).1 > target {
            starts.push(morsel.min);
        }
    }
    if starts.len() < 2 {
        return None;
    }
    let ends = starts.iter().skip(1).map(|s| s - 1).chain(std::iter::once(i64::MAX));
    starts
        .iter()
        .zip(ends)
        .map(|(&lo, hi)| {
            let rows = estimate(lo, hi).0.ceil() as u64;
            Some((build.restricted(build_key, lo, hi)?, probe.restricted(probe_key, lo, hi)?, rows))
        })
        .collect()
}

impl Partitioner {
    pub(super) fn new(shared: &Arc<JoinPlan>, ctx: &ExecContext, depth: usize, build: bool, limit: u64) -> Partitioner {
        let (schema, label) = if build {
            (shared.build_schema.clone(), "HashJoin-build")
        } else {
            (shared.probe_schema.clone(), "HashJoin-probe")
        };
        Partitioner {
            shared: shared.clone(),
            parts: SpillPartitions::new(ctx, &shared.metrics, schema, label, PARTITIONS, limit),
            seed: depth as u64 + 1,
            build,
        }
    }

    pub(super) fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let (keys, valid) = self.shared.keys(batch, self.build)?;
        if matches!(keys, Keys::None) {
            return self.parts.push(0, batch.clone());
        }
        // A row with a null key never matches: it only matters if its side is kept.
        let keep_unmatched = if self.build { self.shared.keep_build } else { self.shared.keep_probe };
        if let Some(e) = self.shared.existence {
            // The subquery's side: whether it has rows and null keys decides `IN`'s unknowns.
            if self.build != e.outer_is_build {
                let null_key = valid.as_ref().is_some_and(|v| v.null_count() > 0);
                self.shared.saw_right_rows(batch.num_rows(), null_key);
            }
        }
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); PARTITIONS];
        for i in 0..batch.num_rows() {
            if valid.as_ref().is_none_or(|v| v.is_valid(i)) {
                let h = keys.hash(i, self.seed);
                rows[(h >> 60) as usize % PARTITIONS].push(i as u32);
            } else if keep_unmatched {
                rows[0].push(i as u32);
            }
        }
        self.parts.push_split(batch, &rows)
    }

    pub(super) fn finish(self) -> Result<Vec<Option<SpillFile>>> {
        self.parts.finish()
    }

    /// Partitions the rest of an input stream (counting its rows as the join's input), then
    /// finishes the files.
    pub(super) fn add_stream(mut self, mut input: BatchStream, cancel: &AtomicBool) -> Result<Vec<Option<SpillFile>>> {
        for batch in input.by_ref() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let batch = batch?;
            self.shared.metrics.rows_in(batch.num_rows());
            self.add(&batch)?;
        }
        drop(input);
        self.finish()
    }
}
