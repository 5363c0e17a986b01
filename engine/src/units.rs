//! Units of work: a pipeline step split into parts that run one at a time, each under the whole
//! budget, each committed atomically, so that a run killed half-way resumes where it stopped.
//!
//! A step with `units = "category"` runs once per distinct value of `category` in its input, the
//! input narrowed to that value (the filter is pushed into the scan, down to row-group and page pruning).
//! The step's result is the union of its units' results: the same as one run when the SQL keeps
//! units apart (groups by the unit column, joins on it, ...). `units = { by = "user_id", buckets
//! = 16 }` makes 16 units by a stable hash instead.
//!
//! The output folder holds the committed files and, out of the way of `*.parquet` globs, what
//! flow needs to resume:
//! ```text
//! out/daily/category=A/part-A-3f9c01d2e4b5.parquet   a unit's files carry its id
//! out/daily/_flow/manifest.json                      the units in priority order, and what they came from
//! out/daily/_flow/units/A-3f9c01d2e4b5.json          one commit record per unit
//! out/daily/_flow/units/A-3f9c01d2e4b5.failed.json   the last failure of a unit not committed since
//! out/daily/_flow/staging/A-3f9c01d2e4b5.<pid>.<n>/  a unit being written (`*.staged` files)
//! ```
//! **Commit.** A unit writes its files into its staging folder (each fsynced), then: its old
//! record is removed, each file is renamed into place (atomically replacing the file of the same
//! name), files of the unit that the new result no longer has are removed, the folders are
//! fsynced, and the new record is written (temporary name, fsync, rename). The record is the
//! commit point: a crash anywhere before it leaves the unit without a record, and the next run
//! redoes it. Readers never see a half-written file; a unit whose rows all fall in one partition
//! (the usual case, units by the partition column) appears at once, and a unit spread over
//! several partitions appears file by file while it commits.
//!
//! **Resume.** A unit is skipped when its record's fingerprint matches: a hash of the step's SQL
//! and output settings, the unit's value, the optimized plan, flow's version, and the path, size
//! and modification time of every input file the unit reads after pruning. So a new file that
//! row-group statistics show to hold only other units' values does not redo this one. The
//! manifest keeps the list of units, keyed by a fingerprint of all input files, so a second run
//! with nothing changed reads no data at all.
//!
//! **Several workers.** [`assigned`] deals the units out round-robin in priority order: worker
//! `i` of `n` takes units `i, i + n, ...`. Workers share nothing but the folder: each writes only
//! its own units' files and records.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Query, QueryMetrics};
use crate::error::{Error, Result};
use crate::exec::sink::{exists_error, target_taken, OutputFormat, Overwrite, PartitionedOutput, WriteOptions};
use crate::pipeline::{priority_label, PrioritySpec, StepSpec, UnitsSpec};
use crate::sql::{quote_ident, referenced_relations};

/// The most units a step may have: each reads its share of the input on its own, so units are
/// meant to be coarse (hash buckets make any number of keys into a few units).
pub const MAX_UNITS: usize = 10_000;

const FLOW_DIR: &str = "_flow";
const STAGED: &str = ".staged";

/// One unit of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// The unit's value as text (`NULL` for the unit of null values; `all` for a step without
    /// units).
    pub label: String,
    /// A name for files: the label made safe, and a hash of the value.
    pub id: String,
    /// The predicate that narrows the input to this unit (none for `all`).
    pub filter: Option<String>,
    /// The unit's priority value as text, when the step has a priority expression.
    pub priority: Option<String>,
}

/// Where a unit stands.
#[derive(Debug, Clone)]
pub enum UnitState {
    /// Committed, and its inputs, SQL and settings are unchanged since.
    Committed(UnitRecord),
    /// Not committed yet, or committed from other inputs; the reason says which.
    Pending(String),
    /// Its last attempt failed (and it has not committed since).
    Failed(UnitFailure),
}

/// A file a unit committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedFile {
    /// Path inside the output folder, with `/` separators.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// An input file as fingerprinted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    /// Path as read.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, nanoseconds since the epoch.
    pub modified_ns: u128,
}

/// The commit record of a unit (`_flow/units/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The step.
    pub step: String,
    /// The unit's value as text.
    pub unit: String,
    /// The unit's file id.
    pub id: String,
    /// What the result was computed from (see the module docs).
    pub fingerprint: String,
    /// The files, relative to the output folder.
    pub files: Vec<CommittedFile>,
    /// Rows over all files.
    pub rows: u64,
    /// The result's columns as `name TYPE`, partition columns included.
    pub schema: Vec<String>,
    /// The input files read.
    pub inputs: Vec<InputFile>,
    /// The step's SQL.
    pub sql: String,
    /// The unit's predicate.
    pub filter: Option<String>,
    /// When it committed, seconds since the epoch.
    pub committed_at: u64,
    /// How long the unit ran.
    pub elapsed_ms: u64,
    /// The flow version that wrote it.
    pub flow_version: String,
}

/// The last failure of a unit (`_flow/units/<id>.failed.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitFailure {
    /// The unit's value as text.
    pub unit: String,
    /// The unit's file id.
    pub id: String,
    /// The error.
    pub error: String,
    /// Attempts made in the run that failed.
    pub attempts: u32,
    /// Whether running again may succeed (an I/O error, an interruption) or not (bad input).
    pub transient: bool,
    /// When, seconds since the epoch.
    pub failed_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    step: String,
    /// Fingerprint of what the unit list was computed from.
    fingerprint: String,
    units: Vec<Unit>,
}

/// What running a unit did.
#[derive(Debug, Clone)]
pub struct UnitOutcome {
    /// The committed files.
    pub files: Vec<CommittedFile>,
    /// Rows written.
    pub rows: u64,
    /// The query's metrics.
    pub metrics: QueryMetrics,
}

/// The units of worker `worker` of `workers`: round-robin over the priority order.
pub fn assigned(units: &[Unit], worker: usize, workers: usize) -> Vec<Unit> {
    units.iter().enumerate().filter(|(i, _)| i % workers.max(1) == worker).map(|(_, u)| u.clone()).collect()
}

/// How a worker runs a step's units (`flow run --restart --retries N --keep-going --unit I
/// --units N`).
#[derive(Debug, Clone, Copy)]
pub struct RunUnits {
    /// Run every unit again, forgetting what earlier runs committed.
    pub restart: bool,
    /// Attempts after the first for a unit that fails (not for bad input).
    pub retries: u32,
    /// Go on with the other units after one fails for good (they are returned at the end).
    pub keep_going: bool,
    /// This worker's number, from 0.
    pub worker: usize,
    /// How many workers deal the units between them (see [`assigned`]).
    pub workers: usize,
}

impl Default for RunUnits {
    fn default() -> RunUnits {
        RunUnits { restart: false, retries: 0, keep_going: false, worker: 0, workers: 1 }
    }
}

/// What happens while a step's units run, for a caller's progress display and report. Every
/// method does nothing unless implemented.
pub trait UnitEvents {
    /// The step's units in priority order, and those dealt to this worker.
    fn listed(&mut self, _units: &[Unit], _mine: &[Unit]) {}
    /// A unit an earlier run committed, skipped.
    fn skipped(&mut self, _unit: &Unit, _record: &UnitRecord) {}
    /// Attempt `attempt` (from 1) at a unit starts.
    fn attempt(&mut self, _job: &StepJob<'_>, _unit: &Unit, _attempt: u32) {}
    /// The unit is committed.
    fn committed(&mut self, _unit: &Unit, _attempts: u32, _outcome: &UnitOutcome) {}
    /// An attempt failed (`error` names the unit); `retrying` when another attempt follows.
    fn failed(&mut self, _unit: &Unit, _attempts: u32, _error: &Error, _retrying: bool) {}
}

/// Nothing to report.
impl UnitEvents for () {}

struct UnitKey {
    /// SQL over `from` giving the unit value of a row.
    expr: String,
    from: String,
}

enum Priority {
    /// An aggregate and what follows it in `ORDER BY` (`DESC NULLS LAST`).
    Expr {
        expr: String,
        order: String,
    },
    List(Vec<String>),
}

/// A step with an output folder, run unit by unit.
pub struct StepJob<'e> {
    engine: &'e Engine,
    step: String,
    sql: String,
    dir: PathBuf,
    format: OutputFormat,
    partition_by: Vec<String>,
    options: WriteOptions,
    key: Option<UnitKey>,
    priority: Option<Priority>,
    /// Hash of everything about the step but its data.
    settings: String,
    /// Files in the output folder by unit id, found when the job opened.
    owned: Mutex<HashMap<String, Vec<PathBuf>>>,
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

impl<'e> StepJob<'e> {
    /// Checks a step with units or `partition_by` against `engine`'s catalog: the unit expression,
    /// the priority and the partition columns must all plan. Reads nothing but the output folder's
    /// file names.
    pub fn new(engine: &'e Engine, step: &StepSpec, label: &str, base_dir: &Path) -> Result<StepJob<'e>> {
        let output = step.output.as_ref().ok_or_else(|| Error::Config("units need an output folder".into()))?;
        let dir = base_dir.join(output.path());
        if dir.is_file() {
            return Err(Error::Config(format!(
                "output {} is a file; a step with units or partition_by writes a folder",
                dir.display()
            )));
        }
        let format = match output {
            crate::pipeline::OutputSpec::Table(t) if t.format.is_none() => OutputFormat::Parquet,
            other => other.format()?,
        };
        let options = output.write_options()?;
        // Resuming is not overwriting: a folder this step (or another) left its records in is ours.
        if options.overwrite == Overwrite::Error && target_taken(&dir) && !dir.join(FLOW_DIR).is_dir() {
            return Err(exists_error(&dir));
        }
        let schema = engine.sql(&step.sql)?.schema();
        for p in output.partition_by() {
            if schema.fields().iter().all(|f| !f.name().eq_ignore_ascii_case(p)) {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(Error::Plan(format!(
                    "partition_by column '{p}' is not in the step's result (columns: {})",
                    names.join(", ")
                )));
            }
        }
        let key = match &step.units {
            None => None,
            Some(spec) => {
                let expr = match spec {
                    UnitsSpec::Expr(e) => e.clone(),
                    UnitsSpec::Buckets { by, buckets } => format!("hash({by}) % {buckets}"),
                };
                let from = unit_source(engine, &step.sql, &expr, step.units_from.as_deref())?;
                Some(UnitKey { expr, from })
            }
        };
        let priority = match (&step.priority, &key) {
            (Some(PrioritySpec::Expr(p)), Some(key)) => {
                let (expr, order) = split_order(p);
                engine
                    .sql(&format!("SELECT {expr} FROM {}", quote_ident(&key.from)))
                    .map_err(|e| Error::Config(format!("priority '{p}': {e}")))?;
                Some(Priority::Expr { expr, order })
            }
            (Some(PrioritySpec::List(values)), Some(_)) => {
                Some(Priority::List(values.iter().filter_map(priority_label).collect()))
            }
            _ => None,
        };
        let settings = fingerprint(&[
            env!("CARGO_PKG_VERSION"),
            &step.sql,
            &format!("{:?}", step.units),
            step.units_from.as_deref().unwrap_or(""),
            &format!("{format:?}"),
            &output.partition_by().join(","),
            &options.describe(),
        ]);
        let owned = Mutex::new(scan_output(&dir));
        Ok(StepJob {
            engine,
            step: label.to_string(),
            sql: step.sql.clone(),
            dir,
            format,
            partition_by: output.partition_by().to_vec(),
            options,
            key,
            priority,
            settings,
            owned,
        })
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// About how much memory a list of units takes with its bookkeeping (the list, the files
    /// found in the output, a report entry each), to reserve while a step runs.
    pub fn bookkeeping_bytes(units: &[Unit]) -> u64 {
        units
            .iter()
            .map(|u| 1024 + 2 * (u.label.len() + u.id.len() + u.filter.as_ref().map_or(0, |f| f.len())) as u64)
            .sum()
    }

    /// The step's units in priority order. The list is kept in the manifest with a fingerprint of
    /// the input files; while they are unchanged it is read from there (unless `fresh`), so a run
    /// with nothing to do reads no data.
    pub fn units(&self, fresh: bool) -> Result<Vec<Unit>> {
        self.list_units(fresh, true)
    }

    /// The units as [`units`](Self::units) finds them, without writing the manifest (for
    /// `flow status`, which changes nothing).
    pub fn peek_units(&self) -> Result<Vec<Unit>> {
        self.list_units(false, false)
    }

    fn list_units(&self, fresh: bool, save: bool) -> Result<Vec<Unit>> {
        let Some(key) = &self.key else {
            return Ok(vec![Unit { label: "all".into(), id: "all".into(), filter: None, priority: None }]);
        };
        let query = self.engine.sql(&self.enumeration_sql(key))?;
        let fp = fingerprint(&[&self.settings, &query.plan().display_tree(), &inputs_text(&stat_inputs(&query)?)]);
        let path = self.flow_dir().join("manifest.json");
        if !fresh {
            if let Some(m) = read_json::<Manifest>(&path) {
                if m.fingerprint == fp {
                    return Ok(m.units);
                }
            }
        }
        let units = self.enumerate(key, query)?;
        let manifest = Manifest { step: self.step.clone(), fingerprint: fp, units };
        if save {
            // The manifest is a cache: a run that cannot save it (or loses the race with another
            // worker) still has its list. Temporary files of runs killed while saving go first.
            remove_temp_files(&self.flow_dir(), "manifest.json");
            let _ = write_json_atomic(&path, &manifest);
        }
        Ok(manifest.units)
    }

    fn enumeration_sql(&self, key: &UnitKey) -> String {
        let from = quote_ident(&key.from);
        match &self.priority {
            Some(Priority::Expr { expr, order }) => {
                format!("SELECT {} AS unit, {expr} AS priority FROM {from} GROUP BY 1 ORDER BY 2 {order}, 1", key.expr)
            }
            _ => format!("SELECT {} AS unit FROM {from} GROUP BY 1 ORDER BY 1", key.expr),
        }
    }

    fn enumerate(&self, key: &UnitKey, query: Query<'_>) -> Result<Vec<Unit>> {
        let batches = query.collect()?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows > MAX_UNITS {
            return Err(Error::Config(format!(
                "units '{}' has {rows} distinct values; at most {MAX_UNITS} (hint: use {{ by = \"{}\", buckets = N }})",
                key.expr, key.expr
            )));
        }
        let mut units = Vec::with_capacity(rows);
        for batch in &batches {
            units.extend(units_of(batch, &key.expr)?);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = units.iter().find(|u| !seen.insert(u.id.clone())) {
            return Err(Error::Execution(format!("two units share the id '{}'", dup.id)));
        }
        if let Some(Priority::List(first)) = &self.priority {
            // Listed values first, in list order; the rest keep value order (the sort is stable).
            let rank = |u: &Unit| first.iter().position(|l| *l == u.label).unwrap_or(first.len());
            units.sort_by_key(rank);
        }
        Ok(units)
    }

    /// Plans the unit's query: the step's SQL over the unit's share of the input.
    pub fn query(&self, unit: &Unit) -> Result<Query<'e>> {
        match (&self.key, &unit.filter) {
            (Some(key), Some(filter)) => self.engine.sql_where(&self.sql, &key.from, filter),
            _ => self.engine.sql(&self.sql),
        }
    }

    fn unit_fingerprint(&self, unit: &Unit, query: &Query<'_>, inputs: &[InputFile]) -> String {
        fingerprint(&[
            &self.settings,
            &unit.label,
            unit.filter.as_deref().unwrap_or(""),
            &query.plan().display_tree(),
            &inputs_text(inputs),
        ])
    }

    /// Whether `unit` is committed for the current inputs, pending, or failed. A committed unit
    /// whose files are missing or changed size counts as pending.
    pub fn state(&self, unit: &Unit) -> Result<UnitState> {
        let record = read_json::<UnitRecord>(&self.record_path(&unit.id));
        let failure = || read_json::<UnitFailure>(&self.failure_path(&unit.id));
        let Some(record) = record else {
            return Ok(match failure() {
                Some(f) => UnitState::Failed(f),
                None => UnitState::Pending("not committed".into()),
            });
        };
        let query = self.query(unit)?;
        let inputs = stat_inputs(&query)?;
        if record.fingerprint != self.unit_fingerprint(unit, &query, &inputs) {
            // Committed once, but its last attempt at the new inputs failed.
            if let Some(f) = failure() {
                return Ok(UnitState::Failed(f));
            }
            let reason = if record.inputs != inputs {
                "inputs changed"
            } else if record.sql != self.sql {
                "SQL changed"
            } else {
                "settings changed"
            };
            return Ok(UnitState::Pending(reason.into()));
        }
        for f in &record.files {
            let size = std::fs::metadata(self.dir.join(&f.path)).map(|m| m.len()).ok();
            if size != Some(f.bytes) {
                return Ok(UnitState::Pending(format!("{} is missing or changed", f.path)));
            }
        }
        Ok(UnitState::Committed(record))
    }

    /// Runs `unit` and commits its files (see the module docs).
    pub fn run(&self, unit: &Unit) -> Result<UnitOutcome> {
        let started = Instant::now();
        self.clear_staging(&unit.id)?;
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let staging = self.flow_dir().join("staging").join(format!("{}.{}.{n}", unit.id, std::process::id()));
        let result = self.run_into(unit, &staging, started);
        // Whatever happened, nothing is left in staging (a crash leaves it for the next run).
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    fn run_into(&self, unit: &Unit, staging: &Path, started: Instant) -> Result<UnitOutcome> {
        let query = self.query(unit)?;
        let inputs = stat_inputs(&query)?;
        let fp = self.unit_fingerprint(unit, &query, &inputs);
        let schema = query.schema();
        let out = PartitionedOutput {
            dir: staging.to_path_buf(),
            partition_by: self.partition_by.clone(),
            format: self.format,
            stem: format!("part-{}", unit.id),
            suffix: STAGED.into(),
            numbered: false,
            // An empty unit commits a record and no file.
            keep_empty: false,
            options: self.options.clone(),
            staged: true,
        };
        let (written, metrics) = query.write_partitioned(out)?;
        let mut files = Vec::new();
        let mut moves = Vec::new();
        for w in &written {
            let rel =
                w.path.strip_prefix(staging).map_err(|_| Error::Execution("staged file outside staging".into()))?;
            let rel = rel.to_string_lossy().trim_end_matches(STAGED).replace('\\', "/");
            files.push(CommittedFile { path: rel.clone(), rows: w.rows, bytes: w.bytes });
            moves.push((w.path.clone(), self.dir.join(&rel)));
        }
        let rows = files.iter().map(|f| f.rows).sum();
        let record = UnitRecord {
            step: self.step.clone(),
            unit: unit.label.clone(),
            id: unit.id.clone(),
            fingerprint: fp,
            files: files.clone(),
            rows,
            schema: schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect(),
            inputs,
            sql: self.sql.clone(),
            filter: unit.filter.clone(),
            committed_at: now_secs(),
            elapsed_ms: started.elapsed().as_millis() as u64,
            flow_version: env!("CARGO_PKG_VERSION").into(),
        };
        self.commit(&unit.id, &moves, &record)?;
        Ok(UnitOutcome { files, rows, metrics })
    }

    fn commit(&self, id: &str, moves: &[(PathBuf, PathBuf)], record: &UnitRecord) -> Result<()> {
        let record_path = self.record_path(id);
        remove_if_exists(&record_path)?;
        sync_dir(record_path.parent().expect("records live in a folder"));
        let mut dirs = std::collections::BTreeSet::new();
        let mut files_kept = Vec::new();
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        let files = owned.entry(id.to_string()).or_default();
        for (from, to) in moves {
            let parent = to.parent().expect("files live in the output folder");
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            std::fs::rename(from, to).map_err(|e| Error::io(to, e))?;
            // Known at once: if a later step fails, the next attempt still finds it.
            if !files.contains(to) {
                files.push(to.clone());
            }
            dirs.insert(parent.to_path_buf());
        }
        // Files of this unit that the new result does not have (a partition that is gone; with
        // `replace_partitions`, only in the partitions the new result wrote).
        let new: Vec<PathBuf> = moves.iter().map(|(_, to)| to.clone()).collect();
        let keep_other_partitions = self.options.overwrite == Overwrite::ReplacePartitions;
        let written_dirs: Vec<&Path> = new.iter().filter_map(|p| p.parent()).collect();
        for old in std::mem::take(files) {
            let elsewhere = old.parent().is_some_and(|d| !written_dirs.contains(&d));
            if keep_other_partitions && elsewhere {
                files_kept.push(old);
            } else if !new.contains(&old) {
                remove_if_exists(&old)?;
                remove_empty_parents(&old, &self.dir);
            }
        }
        let mut new = new;
        new.extend(files_kept);
        owned.insert(id.to_string(), new);
        drop(owned);
        dirs.iter().filter(|d| d.exists()).for_each(|d| sync_dir(d));
        write_json_atomic(&record_path, record)?;
        remove_if_exists(&self.failure_path(id))?;
        Ok(())
    }

    /// Writes the failure record of `unit`.
    pub fn record_failure(&self, unit: &Unit, error: &Error, attempts: u32) -> Result<()> {
        let failure = UnitFailure {
            unit: unit.label.clone(),
            id: unit.id.clone(),
            error: error.to_string(),
            attempts,
            transient: error.is_transient(),
            failed_at: now_secs(),
        };
        write_json_atomic(&self.failure_path(&unit.id), &failure)
    }

    /// Removes what belongs to units not in `units` (records, failures and files: left by
    /// values that are gone from the input, or by a run with other settings), and empty partition
    /// folders. Safe to run from several workers at once.
    pub fn remove_stale(&self, units: &[Unit]) -> Result<usize> {
        let keep: std::collections::HashSet<&str> = units.iter().map(|u| u.id.as_str()).collect();
        let mut removed = 0;
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<String> = owned.keys().filter(|id| !keep.contains(id.as_str())).cloned().collect();
        // With `replace_partitions` the files of units gone from the input stay (their partitions
        // are not rewritten); their records go.
        let stale = if self.options.overwrite == Overwrite::ReplacePartitions { Vec::new() } else { stale };
        for id in stale {
            for f in owned.remove(&id).unwrap_or_default() {
                remove_if_exists(&f)?;
                removed += 1;
                remove_empty_parents(&f, &self.dir);
            }
        }
        drop(owned);
        let records = self.flow_dir().join("units");
        if let Ok(entries) = std::fs::read_dir(&records) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = name.trim_end_matches(".json").trim_end_matches(".failed");
                if name.ends_with(".json") && !keep.contains(id) {
                    remove_if_exists(&entry.path())?;
                }
                // `.<id>.json.<pid>.<n>.tmp`: a record being written when a run was killed.
                let temp_of = name.strip_prefix('.').and_then(|n| n.split(".json").next());
                if name.ends_with(".tmp") && temp_of.is_some_and(|id| !keep.contains(id.trim_end_matches(".failed"))) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        // Staging folders of units that are gone (a run killed while writing one).
        if let Ok(entries) = std::fs::read_dir(self.flow_dir().join("staging")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(name.split('.').next().unwrap_or_default()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(removed)
    }

    /// Runs this worker's units in priority order: skips those committed (unless
    /// `options.restart`), retries failures that are not bad input, and records the failures.
    /// The unit list is counted in the pool while the step runs. Returns the units that failed
    /// for good under `keep_going` (without it, the first such failure is the error); errors
    /// name the step, and the unit where one failed; an interrupted run is [`Error::Cancelled`].
    pub fn run_units(&self, options: RunUnits, events: &mut dyn UnitEvents) -> Result<Vec<(Unit, Error)>> {
        let in_step = |e: Error| e.in_step(&self.step);
        let units = self.units(options.restart).map_err(in_step)?;
        let mut bookkeeping = self.engine.pool().register(format!("Units[{}]", self.step), false);
        bookkeeping.try_grow(StepJob::bookkeeping_bytes(&units)).map_err(in_step)?;
        self.remove_stale(&units).map_err(in_step)?;
        let mine = assigned(&units, options.worker, options.workers);
        if options.restart {
            self.forget(&mine).map_err(in_step)?;
        }
        events.listed(&units, &mine);
        let cancelled = self.engine.cancel_flag();
        let mut failed = Vec::new();
        for unit in &mine {
            if let UnitState::Committed(record) = self.state(unit).map_err(in_step)? {
                events.skipped(unit, &record);
                continue;
            }
            let mut attempts = 0;
            loop {
                attempts += 1;
                events.attempt(self, unit, attempts);
                let error = match self.run(unit) {
                    Ok(outcome) => {
                        events.committed(unit, attempts, &outcome);
                        break;
                    }
                    Err(e) if e.is_cancelled() || cancelled.load(Ordering::SeqCst) => return Err(Error::Cancelled),
                    Err(e) => e.in_step(&format!("{} [{}]", self.step, unit.label)),
                };
                let retrying = attempts <= options.retries && !error.is_bad_input();
                events.failed(unit, attempts, &error, retrying);
                if retrying {
                    continue;
                }
                // Best effort: on a full disk the record may not fit, and the unit's own error is
                // the one to report.
                let _ = self.record_failure(unit, &error, attempts);
                if !options.keep_going {
                    return Err(error);
                }
                failed.push((unit.clone(), error));
                break;
            }
        }
        Ok(failed)
    }

    /// Forgets the commit records of `units`, so that they run again (`--restart`; each worker
    /// forgets its own). Files stay until their units recommit, so readers never see them missing.
    pub fn forget(&self, units: &[Unit]) -> Result<()> {
        for unit in units {
            remove_if_exists(&self.record_path(&unit.id))?;
            remove_if_exists(&self.failure_path(&unit.id))?;
        }
        Ok(())
    }

    fn clear_staging(&self, id: &str) -> Result<()> {
        // Records being written when a run was killed (only this unit's worker writes them).
        remove_temp_files(&self.flow_dir().join("units"), id);
        let staging = self.flow_dir().join("staging");
        let Ok(entries) = std::fs::read_dir(&staging) else { return Ok(()) };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().split('.').next() == Some(id) {
                std::fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        Ok(())
    }

    fn flow_dir(&self) -> PathBuf {
        self.dir.join(FLOW_DIR)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.flow_dir().join("units").join(format!("{id}.json"))
    }

    fn failure_path(&self, id: &str) -> PathBuf {
        self.flow_dir().join("units").join(format!("{id}.failed.json"))
    }
}

/// The input the unit expression reads: `units_from`, or the one input of the step that has
/// the expression's columns.
fn unit_source(engine: &Engine, sql: &str, expr: &str, from: Option<&str>) -> Result<String> {
    let plans = |name: &str| engine.sql(&format!("SELECT {expr} FROM {}", quote_ident(name)));
    if let Some(from) = from {
        if !engine.has_relation(from) {
            return Err(Error::Config(format!("units_from '{from}' is not a source or a step")));
        }
        // Narrowing an input the SQL does not read would leave every unit the whole result.
        let read = referenced_relations(sql)?;
        if !read.iter().any(|r| r.eq_ignore_ascii_case(from)) {
            return Err(Error::Config(format!(
                "units_from '{from}' is not read by the step's SQL (it reads {})",
                if read.is_empty() { "no named input".to_string() } else { read.join(", ") }
            )));
        }
        plans(from).map_err(|e| Error::Config(format!("units '{expr}' over '{from}': {e}")))?;
        return Ok(from.to_string());
    }
    let inputs: Vec<String> = referenced_relations(sql)?.into_iter().filter(|n| engine.has_relation(n)).collect();
    let mut fits = Vec::new();
    let mut last_error = None;
    for name in &inputs {
        match plans(name) {
            Ok(_) => fits.push(name.clone()),
            Err(e) => last_error = Some(e),
        }
    }
    match fits.len() {
        1 => Ok(fits.remove(0)),
        0 if inputs.is_empty() => Err(Error::Config(format!(
            "units '{expr}': the step reads no named source (hint: register the files as a source)"
        ))),
        0 => Err(Error::Config(format!(
            "units '{expr}' does not fit any input of the step ({}): {}",
            inputs.join(", "),
            last_error.map(|e| e.to_string()).unwrap_or_default()
        ))),
        _ => Err(Error::Config(format!(
            "units '{expr}' fits several inputs ({}) (hint: say which with units_from = \"{}\")",
            fits.join(", "),
            fits[0]
        ))),
    }
}

/// Splits `sum(x) DESC NULLS LAST` into the expression and what follows it in `ORDER BY`.
fn split_order(s: &str) -> (String, String) {
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut end = words.len();
    let upper = |i: usize| words[i].to_ascii_uppercase();
    if end >= 2 && ["FIRST", "LAST"].contains(&upper(end - 1).as_str()) && upper(end - 2) == "NULLS" {
        end -= 2;
    }
    if end >= 1 && ["ASC", "DESC"].contains(&upper(end - 1).as_str()) {
        end -= 1;
    }
    let mut order: Vec<&str> = words[end..].to_vec();
    if order.is_empty() {
        order.push("ASC");
    }
    (words[..end].join(" "), order.join(" "))
}

/// The units in one batch of the enumeration query (unit value, then the priority if any).
fn units_of(batch: &RecordBatch, expr: &str) -> Result<Vec<Unit>> {
    let values = batch.column(0);
    let priority = (batch.num_columns() > 1).then(|| batch.column(1));
    let display =
        |a: &dyn Array, i: usize| -> Result<String> { Ok(arrow::util::display::array_value_to_string(a, i)?) };
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let (label, filter) = if values.is_null(i) {
            ("NULL".to_string(), format!("({expr}) IS NULL"))
        } else {
            let text = display(values.as_ref(), i)?;
            let literal = sql_literal(values.data_type(), &text).ok_or_else(|| {
                Error::NotSupported(format!(
                    "units over a {} expression (hint: cast it to VARCHAR)",
                    crate::expr::types::sql_type_name(values.data_type())
                ))
            })?;
            (text, format!("({expr}) = {literal}"))
        };
        let marker = if values.is_null(i) { "\u{0}null".to_string() } else { label.clone() };
        let id = format!("{}-{}", safe_name(&label), &fingerprint(&[&values.data_type().to_string(), &marker])[..12]);
        let priority = match priority {
            Some(p) if p.is_null(i) => Some("NULL".to_string()),
            Some(p) => Some(display(p.as_ref(), i)?),
            None => None,
        };
        out.push(Unit { label, id, filter: Some(filter), priority });
    }
    Ok(out)
}

/// A SQL literal of type `t` from its display text.
fn sql_literal(t: &DataType, text: &str) -> Option<String> {
    let quoted = format!("'{}'", text.replace('\'', "''"));
    Some(match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => quoted,
        t if t.is_integer() => text.to_string(),
        DataType::Boolean => text.to_ascii_uppercase(),
        DataType::Float32 | DataType::Float64 | DataType::Date32 | DataType::Decimal128(..) => {
            format!("CAST({quoted} AS {})", crate::expr::types::sql_type_name(t))
        }
        DataType::Timestamp(_, None) => format!("CAST({quoted} AS TIMESTAMP)"),
        _ => return None,
    })
}

/// A label made safe for a file name: ASCII letters, digits, `-` and `_`, at most 24 characters.
fn safe_name(label: &str) -> String {
    let s: String = label
        .chars()
        .take(24)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

/// A stable 64-bit FNV-1a hash of the parts, as 16 hex digits.
fn fingerprint(parts: &[&str]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn stat_inputs(query: &Query<'_>) -> Result<Vec<InputFile>> {
    query
        .input_files()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
            // The same file is the same input whichever folder the run started in.
            let p = std::fs::canonicalize(&p).unwrap_or(p);
            let modified_ns =
                meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            Ok(InputFile { path: p.to_string_lossy().into_owned(), bytes: meta.len(), modified_ns })
        })
        .collect()
}

fn inputs_text(inputs: &[InputFile]) -> String {
    inputs.iter().map(|f| format!("{}\t{}\t{}\n", f.path, f.bytes, f.modified_ns)).collect()
}

/// Files in the output folder (outside `_flow`) named `part-<id>[.<n>].<ext>`, by unit id.
fn scan_output(dir: &Path) -> HashMap<String, Vec<PathBuf>> {
    let mut out: HashMap<String, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != FLOW_DIR {
                    stack.push(path);
                }
                continue;
            }
            let Some(rest) = name.strip_prefix("part-") else { continue };
            let is_output = [".parquet", ".csv"].iter().any(|e| name.ends_with(e));
            // Only names flow gives (`<label>-<12 hex digits>` or `all`): other tools' files
            // that happen to start with `part-` are never touched.
            match rest.split('.').next() {
                Some(id) if is_output && is_unit_id(id) => out.entry(id.to_string()).or_default().push(path),
                _ => {}
            }
        }
    }
    out
}

/// Whether `id` has the shape of a unit id: `all`, or a label and 12 hex digits.
fn is_unit_id(id: &str) -> bool {
    if id == "all" {
        return true;
    }
    id.rsplit_once('-').is_some_and(|(label, hash)| {
        !label.is_empty() && hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn remove_empty_parents(file: &Path, root: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir.filter(|d| *d != root && d.starts_with(root)) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Removes the temporary files [`write_json_atomic`] leaves when killed, for names starting with
/// `stem`, except this process's own.
fn remove_temp_files(dir: &Path, stem: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let own = format!(".{}.", std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_temp = name.starts_with(&format!(".{stem}")) && name.ends_with(".tmp");
        if is_temp && !name.contains(&own) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes JSON under a temporary name, fsyncs, renames into place, and fsyncs the folder.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp =
        dir.join(format!(".{}.{}.{n}.tmp", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let json = serde_json::to_vec_pretty(value).map_err(|e| Error::Execution(e.to_string()))?;
    let written = (|| {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io(path, e));
    }
    sync_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_order_suffixes() {
        assert_eq!(split_order("sum(amount) DESC"), ("sum(amount)".into(), "DESC".into()));
        assert_eq!(split_order("count(*)"), ("count(*)".into(), "ASC".into()));
        assert_eq!(split_order("max(x) desc nulls last"), ("max(x)".into(), "desc nulls last".into()));
        assert_eq!(split_order("min(x) NULLS FIRST"), ("min(x)".into(), "NULLS FIRST".into()));
    }

    #[test]
    fn file_names_are_safe_and_stable() {
        assert_eq!(safe_name("A/B c"), "A_B_c");
        assert_eq!(safe_name(""), "_");
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_ne!(fingerprint(&["ab", ""]), fingerprint(&["a", "b"]));
    }

    #[test]
    fn only_flow_names_are_unit_files() {
        assert!(is_unit_id("c01-3f9c01d2e4b5"));
        assert!(is_unit_id("all"));
        assert!(is_unit_id("x_y_z-9c1304b44186"));
        // Spark's and others' part files are never taken for a unit's.
        assert!(!is_unit_id("00000-8a1e2f3c-4b5d-6e7f-8091-a2b3c4d5e6f7-c000"));
        assert!(!is_unit_id("0"));
        assert!(!is_unit_id("-3f9c01d2e4b5"));
    }

    #[test]
    fn literals_by_type() {
        assert_eq!(sql_literal(&DataType::Utf8, "it's").unwrap(), "'it''s'");
        assert_eq!(sql_literal(&DataType::Date32, "2024-01-02").unwrap(), "CAST('2024-01-02' AS DATE)");
        assert!(sql_literal(&DataType::Binary, "x").is_none());
    }
}
