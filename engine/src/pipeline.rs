//! Pipeline files: sources, settings and steps in TOML.
//!
//! ```toml
//! [settings]            # optional; command-line flags override
//! mem_budget = "3GiB"
//!
//! [sources]
//! lineitem = "tpch/lineitem.parquet"                          # path or glob; format from the extension
//! events = { path = "raw/*.csv", format = "csv", delimiter = ";" }
//!
//! [[steps]]
//! name = "cheap"
//! sql = "SELECT l_orderkey FROM lineitem WHERE l_quantity < 5"
//! output = "out/cheap.parquet"                                # or { path = "...", format = "csv" }
//! ```
//! A step can be split into units of work that commit one at a time (see [`crate::units`]):
//! ```toml
//! [[steps]]
//! name = "per_category"
//! sql = "SELECT category, day, count(*) AS n FROM events GROUP BY category, day"
//! output = { path = "out/daily", partition_by = ["category"] }  # hive layout: out/daily/category=A/...
//! units = "category"              # one unit per distinct value; or { by = "user_id", buckets = 16 }
//! priority = "sum(amount) DESC"   # optional: which units go first; or a list of values
//! ```
//! Outputs take writer options:
//! ```toml
//! output = { path = "out/big", compression = "zstd(3)", row_group_rows = 500000,
//!            row_group_size = "64MiB", max_file_size = "1GiB", overwrite = "error" }
//! ```
//! `compression`: `zstd` (level 1, the default), `zstd(LEVEL)`, `snappy`, `lz4` or `none`.
//! `max_file_size` makes the path a folder of numbered files (`data_0.parquet`, ...). `overwrite`:
//! `replace` (the default), `error` (the target must not exist; a step's own unfinished folder may
//! still be resumed) or `replace_partitions` (with `partition_by`: partitions the new result does
//! not write are kept).
//!
//! Relative paths are relative to the pipeline file. A step with a name becomes a view later steps
//! can query; a step with an output writes it. Everything is checked, and every step planned, before
//! anything runs: a malformed file, an unknown key, a missing source, a duplicate step name or bad SQL
//! in any step stops the run before it starts.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use serde::Deserialize;

use crate::config::parse_size;
use crate::engine::{Engine, Query, QueryMetrics};
use crate::error::{Error, Result};
use crate::exec::sink::{Codec, OutputFormat, Overwrite, WriteOptions, WriteSummary};
use crate::expr::types::parse_type_name;
use crate::source::{CsvOptions, Format};

/// A parsed pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Run settings; command-line flags override them.
    #[serde(default)]
    pub settings: Settings,
    /// Named inputs.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSpec>,
    /// Steps, run in order.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// The folder the file is in (relative paths start there).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// The `[settings]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// e.g. `"3GiB"`.
    pub mem_budget: Option<String>,
    /// Worker threads.
    pub threads: Option<usize>,
    /// Spill folder.
    pub spill_dir: Option<String>,
    /// Most spill bytes on disk, e.g. `"20GiB"`.
    pub max_spill: Option<String>,
    /// Target rows per batch.
    pub batch_size: Option<usize>,
}

/// A source: a path, or a table with options.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// `name = "path/or/*.glob"`
    Path(String),
    /// `name = { path = "...", format = "csv", ... }`
    Table(SourceTable),
}

/// A source with options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    /// File, glob or directory.
    pub path: String,
    /// `parquet`, `csv` or `json` (default: from the extension).
    pub format: Option<String>,
    /// CSV field separator (one character, `\t` for tab).
    pub delimiter: Option<String>,
    /// CSV quote character.
    pub quote: Option<String>,
    /// Whether the CSV has a header line (default true).
    pub header: Option<bool>,
    /// Declared CSV columns, e.g. `["id BIGINT", "name VARCHAR"]`; nothing is inferred then.
    pub columns: Option<Vec<String>>,
    /// Files of different columns are read by column name, with nulls where a file lacks one
    /// (default false: they must have the same columns).
    pub union_by_name: Option<bool>,
}

/// One step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The step's name: later steps can read its result under this name.
    pub name: Option<String>,
    /// The query.
    pub sql: String,
    /// Where its result goes, if anywhere.
    pub output: Option<OutputSpec>,
    /// Split the step into units of work: one per distinct value of an expression over its input,
    /// or a number of hash buckets.
    pub units: Option<UnitsSpec>,
    /// The input (source or earlier step) the unit expression reads; needed only when several of
    /// the step's inputs have its columns.
    pub units_from: Option<String>,
    /// The order units run in: an aggregate over each unit's input rows with `ASC`/`DESC`
    /// (`"sum(amount) DESC"`), or a list of unit values that go first, in that order.
    pub priority: Option<PrioritySpec>,
}

/// How a step is split into units.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UnitsSpec {
    /// `units = "category"`: one unit per distinct value of this SQL expression.
    Expr(String),
    /// `units = { by = "user_id", buckets = 16 }`: `buckets` units, by hash of the expression.
    Buckets {
        /// The expression hashed.
        by: String,
        /// How many units.
        buckets: u32,
    },
}

/// Which units go first.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PrioritySpec {
    /// An aggregate over the unit's input rows, with an optional `ASC`/`DESC` and `NULLS FIRST/LAST`.
    Expr(String),
    /// Unit values that go first, in this order; the others follow in value order.
    List(Vec<toml::Value>),
}

/// An output: a path, or a path with a format.
#[derive(Debug, Clone)]
pub enum OutputSpec {
    /// `output = "out/x.parquet"`
    Path(String),
    /// `output = { path = "out/x.csv", format = "csv" }`
    Table(OutputTable),
}

/// An output with options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTable {
    /// Where: a file, or a folder for a step with units or `partition_by`.
    pub path: String,
    /// `parquet` or `csv` (default: from the extension, or Parquet for a folder).
    pub format: Option<String>,
    /// Columns whose values make a hive layout: `path/col=value/part-....parquet`.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Parquet compression: `zstd` (level 1), `zstd(LEVEL)`, `snappy`, `lz4` or `none`.
    pub compression: Option<String>,
    /// Most rows in a row group.
    pub row_group_rows: Option<usize>,
    /// Target size of a row group (`64MiB` or bytes; at most a quarter of the budget).
    pub row_group_size: Option<SizeSpec>,
    /// Split into numbered files of about this size; the path is then a folder.
    pub max_file_size: Option<SizeSpec>,
    /// `replace` (the default), `error` or `replace_partitions`.
    pub overwrite: Option<String>,
}

/// A path, or a table of options whose own errors (an unknown key, a wrong type) are reported as
/// they are (an untagged enum would only say that neither form matched).
fn path_or_table<'de, D, T, R>(
    d: D,
    path: impl FnOnce(String) -> R,
    table: impl FnOnce(T) -> R,
) -> std::result::Result<R, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error as _;
    match toml::Value::deserialize(d)? {
        toml::Value::String(p) => Ok(path(p)),
        value @ toml::Value::Table(_) => T::deserialize(value).map(table).map_err(|e| D::Error::custom(e.message())),
        other => Err(D::Error::custom(format!("expected a path or a table, found a {}", other.type_str()))),
    }
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        path_or_table(d, SourceSpec::Path, SourceSpec::Table)
    }
}

impl<'de> Deserialize<'de> for OutputSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        path_or_table(d, OutputSpec::Path, OutputSpec::Table)
    }
}

/// A size: `"64MiB"` or a number of bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// Plain bytes.
    Bytes(u64),
    /// A size with a unit.
    Text(String),
}

impl SizeSpec {
    /// The size in bytes.
    pub fn bytes(&self) -> Result<u64> {
        match self {
            SizeSpec::Bytes(b) => Ok(*b),
            SizeSpec::Text(t) => parse_size(t),
        }
    }
}

impl PipelineFile {
    /// Reads and checks a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
        let mut file: PipelineFile = toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| line_col(&text, s.start))
                .map(|(l, c)| format!(" at line {l}, column {c}"))
                .unwrap_or_default();
            Error::Config(format!("{}{at}: {msg}", path.display()))
        })?;
        file.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if file.base_dir.as_os_str().is_empty() {
            file.base_dir = PathBuf::from(".");
        }
        file.check(path)?;
        Ok(file)
    }

    /// Makes `engine` ready to run the file: its folder is where relative paths start, its
    /// sources are registered, its named steps become views, and every step is planned, so that a
    /// mistake in any step stops the run before one runs. `on_step` sees each step before it is
    /// planned (the command line keeps its SQL to point at errors in it).
    pub fn prepare(&self, engine: &mut Engine, mut on_step: impl FnMut(&StepSpec)) -> Result<()> {
        engine.set_base_dir(&self.base_dir);
        for (name, spec) in &self.sources {
            let format = spec.format(name)?;
            engine
                .register_with(name, spec.path(), format, spec.union_by_name())
                .map_err(|e| Error::Config(format!("source '{name}': {e}")))?;
        }
        for (i, step) in self.steps.iter().enumerate() {
            let label = step.label(i);
            on_step(step);
            match &step.name {
                Some(name) => engine.register_view(name, &step.sql).map_err(|e| e.in_step(&label))?,
                None => drop(engine.sql(&step.sql).map_err(|e| e.in_step(&label))?),
            }
            if step.output.is_some() {
                drop(engine.sql(&step.sql).map_err(|e| e.in_step(&label))?);
            }
        }
        Ok(())
    }

    /// Runs step `index` of a file made ready on `engine` by [`prepare`](Self::prepare): its
    /// query into its output, which appears whole or not at all. `started` sees the query before
    /// it runs. `None` for a step without an output (a view for later steps). A step with units
    /// or `partition_by` runs its units instead, through [`crate::units::StepJob`].
    pub fn run_step(
        &self,
        engine: &Engine,
        index: usize,
        started: impl FnOnce(&Query<'_>),
    ) -> Result<Option<(WriteSummary, QueryMetrics)>> {
        let step = &self.steps[index];
        let Some(output) = &step.output else { return Ok(None) };
        let label = step.label(index);
        let run = || {
            let target = self.base_dir.join(output.path());
            let (format, options) = (output.format()?, output.write_options()?);
            let query = engine.sql(&step.sql)?;
            started(&query);
            query.write_output(&target, format, output.partition_by(), &options)
        };
        run().map(Some).map_err(|e| e.in_step(&label))
    }

    fn check(&self, path: &Path) -> Result<()> {
        if self.steps.is_empty() {
            return Err(Error::Config(format!("{}: no [[steps]]", path.display())));
        }
        let mut names = HashSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let label = step.label(i);
            if step.name.is_none() && step.output.is_none() {
                return Err(Error::Config(format!("{}: {label} has neither a name nor an output", path.display())));
            }
            if let Some(name) = &step.name {
                if !names.insert(name.to_ascii_lowercase()) {
                    return Err(Error::Config(format!("{}: duplicate step name '{name}'", path.display())));
                }
                if self.sources.keys().any(|s| s.eq_ignore_ascii_case(name)) {
                    return Err(Error::Config(format!("{}: step '{name}' has the name of a source", path.display())));
                }
            }
            if let Some(out) = &step.output {
                out.format()?;
                out.write_options().map_err(|e| Error::Config(format!("{}: step '{label}': {e}", path.display())))?;
            }
            let at = |what: &str| Error::Config(format!("{}: step '{label}': {what}", path.display()));
            if step.output.is_none() && (step.units.is_some() || step.priority.is_some()) {
                return Err(at("units need an output folder"));
            }
            if step.units.is_none() && (step.priority.is_some() || step.units_from.is_some()) {
                return Err(at("priority and units_from need units"));
            }
            if let Some(UnitsSpec::Buckets { buckets: 0, .. }) = &step.units {
                return Err(at("buckets must be at least 1"));
            }
            if let Some(PrioritySpec::List(values)) = &step.priority {
                if let Some(v) = values.iter().find(|v| priority_label(v).is_none()) {
                    return Err(at(&format!("priority value {v} is not a string, number or boolean")));
                }
            }
        }
        for (name, spec) in &self.sources {
            spec.format(name)?;
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, col)
}

impl StepSpec {
    /// `step 'name'` or `step 3`.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("#{}", index + 1),
        }
    }
}

impl SourceSpec {
    /// The location as written.
    pub fn path(&self) -> &str {
        match self {
            SourceSpec::Path(p) => p,
            SourceSpec::Table(t) => &t.path,
        }
    }

    /// Whether files of different columns are read by name (see [`SourceTable::union_by_name`]).
    pub fn union_by_name(&self) -> bool {
        matches!(self, SourceSpec::Table(SourceTable { union_by_name: Some(true), .. }))
    }

    /// The format and options (`None`: from the extension).
    pub fn format(&self, name: &str) -> Result<Option<Format>> {
        let t = match self {
            SourceSpec::Path(_) => return Ok(None),
            SourceSpec::Table(t) => t,
        };
        let bad = |what: String| Error::Config(format!("source '{name}': {what}"));
        let csv_only = t.delimiter.is_some() || t.quote.is_some() || t.header.is_some() || t.columns.is_some();
        let format = match t.format.as_deref().map(|f| f.to_ascii_lowercase()) {
            Some(f) if f == "parquet" => Format::Parquet,
            Some(f) if f == "json" || f == "ndjson" => Format::Json,
            Some(f) if f == "csv" || f == "tsv" => Format::Csv(if f == "tsv" {
                CsvOptions { delimiter: b'\t', ..CsvOptions::default() }
            } else {
                CsvOptions::default()
            }),
            Some(other) => return Err(bad(format!("unknown format '{other}' (hint: parquet, csv or json)"))),
            None if csv_only => Format::Csv(CsvOptions::default()),
            None => match Format::from_path(&t.path) {
                Some(f) => f,
                None => return Ok(None),
            },
        };
        let Format::Csv(mut csv) = format else {
            if csv_only {
                return Err(bad("delimiter, quote, header and columns apply to csv only".into()));
            }
            return Ok(Some(format));
        };
        let one_char = |s: &str, what: &str| -> Result<u8> {
            let s = if s == "\\t" { "\t" } else { s };
            match s.as_bytes() {
                [b] => Ok(*b),
                _ => Err(bad(format!("{what} must be one character, got '{s}'"))),
            }
        };
        if let Some(d) = &t.delimiter {
            csv.delimiter = one_char(d, "delimiter")?;
        }
        if let Some(q) = &t.quote {
            csv.quote = one_char(q, "quote")?;
        }
        if let Some(h) = t.header {
            csv.has_header = h;
        }
        if let Some(cols) = &t.columns {
            let mut fields = Vec::new();
            for c in cols {
                let (n, ty) = c
                    .trim()
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| bad(format!("column '{c}' needs a name and a type, e.g. \"id BIGINT\"")))?;
                let ty = parse_type_name(ty.trim())
                    .map_err(|_| bad(format!("column '{n}': unknown type '{}'", ty.trim())))?;
                fields.push(Field::new(n, ty, true));
            }
            csv.schema = Some(Arc::new(Schema::new(fields)));
        }
        Ok(Some(Format::Csv(csv)))
    }
}

/// A priority list entry as the unit label it matches.
pub(crate) fn priority_label(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

impl OutputSpec {
    /// The path as written.
    pub fn path(&self) -> &str {
        match self {
            OutputSpec::Path(p) | OutputSpec::Table(OutputTable { path: p, .. }) => p,
        }
    }

    /// The `partition_by` columns (none for a plain path).
    pub fn partition_by(&self) -> &[String] {
        match self {
            OutputSpec::Path(_) => &[],
            OutputSpec::Table(t) => &t.partition_by,
        }
    }

    /// The writer options (defaults for a plain path).
    pub fn write_options(&self) -> Result<WriteOptions> {
        let OutputSpec::Table(t) = self else { return Ok(WriteOptions::default()) };
        let positive = |what: &str, v: u64| {
            if v == 0 {
                Err(Error::Config(format!("output {}: {what} must be above 0", t.path)))
            } else {
                Ok(v)
            }
        };
        let options = WriteOptions {
            compression: t.compression.as_deref().map(Codec::parse).transpose()?.unwrap_or_default(),
            row_group_rows: t
                .row_group_rows
                .map(|r| positive("row_group_rows", r as u64).map(|r| r as usize))
                .transpose()?,
            row_group_bytes: t.row_group_size.as_ref().map(|s| positive("row_group_size", s.bytes()?)).transpose()?,
            max_file_bytes: t.max_file_size.as_ref().map(|s| positive("max_file_size", s.bytes()?)).transpose()?,
            overwrite: t.overwrite.as_deref().map(Overwrite::parse).transpose()?.unwrap_or_default(),
        };
        if options.overwrite == Overwrite::ReplacePartitions && t.partition_by.is_empty() {
            return Err(Error::Config(format!("output {}: overwrite 'replace_partitions' needs partition_by", t.path)));
        }
        Ok(options)
    }

    /// The output format.
    pub fn format(&self) -> Result<OutputFormat> {
        match self {
            OutputSpec::Path(p) | OutputSpec::Table(OutputTable { path: p, format: None, .. }) => {
                OutputFormat::from_path(Path::new(p))
            }
            OutputSpec::Table(OutputTable { format: Some(f), .. }) => OutputFormat::parse(f),
        }
    }
}
