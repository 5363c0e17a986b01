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
//! Relative paths are relative to the pipeline file. A step with a name becomes a view later steps
//! can query; a step with an output writes it. Everything is checked, and every step planned, before
//! anything runs: a malformed file, an unknown key, a missing source, a duplicate step name or bad SQL
//! in any step stops the run before it starts.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::exec::sink::OutputFormat;
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
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
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
}

/// An output: a path, or a path with a format.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OutputSpec {
    /// `output = "out/x.parquet"`
    Path(String),
    /// `output = { path = "out/x.csv", format = "csv" }`
    Table {
        /// Where.
        path: String,
        /// `parquet` or `csv` (default: from the extension).
        format: Option<String>,
    },
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

impl OutputSpec {
    /// The path as written.
    pub fn path(&self) -> &str {
        match self {
            OutputSpec::Path(p) | OutputSpec::Table { path: p, .. } => p,
        }
    }

    /// The output format.
    pub fn format(&self) -> Result<OutputFormat> {
        match self {
            OutputSpec::Path(p) | OutputSpec::Table { path: p, format: None } => {
                Ok(OutputFormat::from_path(Path::new(p)))
            }
            OutputSpec::Table { format: Some(f), .. } => match f.to_ascii_lowercase().as_str() {
                "parquet" => Ok(OutputFormat::Parquet),
                "csv" => Ok(OutputFormat::Csv),
                other => Err(Error::Config(format!("unknown output format '{other}' (hint: parquet or csv)"))),
            },
        }
    }
}
