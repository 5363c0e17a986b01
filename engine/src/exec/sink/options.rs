//! What an output is: its format, codec, overwrite policy, row groups and file size, and what
//! writing it did.

use std::path::{Path, PathBuf};

use parquet::basic::{Compression, ZstdLevel};

use crate::error::{Error, Result};

/// The file formats a query result can be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Apache Parquet (zstd, statistics on).
    Parquet,
    /// Comma-separated text with a header line.
    Csv,
    /// Tab-separated text with a header line.
    Tsv,
    /// Newline-delimited JSON: an object per row, nulls written as `null`.
    Json,
}

impl OutputFormat {
    /// The format a path's extension names: `.parquet` (or none: a folder output, or a file
    /// named without one), `.csv`, `.tsv`, `.json`/`.ndjson`/`.jsonl`. Any other extension is an
    /// error rather than a Parquet file under a misleading name.
    pub fn from_path(path: &Path) -> Result<OutputFormat> {
        let extension = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
        match extension.as_deref() {
            None | Some("parquet" | "pq") => Ok(OutputFormat::Parquet),
            Some("csv") => Ok(OutputFormat::Csv),
            Some("tsv") => Ok(OutputFormat::Tsv),
            Some("json" | "ndjson" | "jsonl") => Ok(OutputFormat::Json),
            Some(other) => Err(Error::Config(format!(
                "output {}: unknown extension '.{other}' (hint: name it .parquet, .csv, .tsv or .json, or choose \
                 the format with --format)",
                path.display()
            ))),
        }
    }

    /// Parses `parquet`, `csv`, `tsv` or `json` (also `ndjson`).
    pub fn parse(text: &str) -> Result<OutputFormat> {
        match text.trim().to_ascii_lowercase().as_str() {
            "parquet" => Ok(OutputFormat::Parquet),
            "csv" => Ok(OutputFormat::Csv),
            "tsv" => Ok(OutputFormat::Tsv),
            "json" | "ndjson" | "jsonl" => Ok(OutputFormat::Json),
            _ => Err(Error::Config(format!("unknown output format '{text}' (hint: parquet, csv, tsv or json)"))),
        }
    }

    /// The file extension of the format.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Csv => "csv",
            OutputFormat::Tsv => "tsv",
            OutputFormat::Json => "json",
        }
    }
}

/// The compression of Parquet outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zstd at a level from 1 (fast, the default) to 22 (small).
    Zstd(i32),
    /// Snappy (what DuckDB and Spark write by default).
    Snappy,
    /// LZ4 (the `LZ4_RAW` codec of the Parquet format, which every current reader knows).
    Lz4,
    /// No compression.
    Uncompressed,
}

impl Default for Codec {
    fn default() -> Codec {
        Codec::Zstd(1)
    }
}

impl Codec {
    /// Parses `zstd`, `zstd(3)` or `zstd:3`, `snappy`, `lz4`, `none` (or `uncompressed`).
    pub fn parse(text: &str) -> Result<Codec> {
        let lower = text.trim().to_ascii_lowercase();
        let (name, level) = match lower.split_once(['(', ':']) {
            Some((name, rest)) => (name.trim(), Some(rest.trim_end_matches(')').trim())),
            None => (lower.as_str(), None),
        };
        let bad = || {
            Error::Config(format!(
                "unknown compression '{text}' (hint: zstd, zstd(LEVEL) with LEVEL from 1 to 22, snappy, lz4 or none)"
            ))
        };
        let codec = match name {
            "zstd" => match level {
                None => Codec::Zstd(1),
                Some(l) => match l.parse::<i32>() {
                    Ok(l) if (1..=22).contains(&l) => Codec::Zstd(l),
                    _ => return Err(bad()),
                },
            },
            "snappy" => Codec::Snappy,
            "lz4" | "lz4_raw" => Codec::Lz4,
            "none" | "uncompressed" => Codec::Uncompressed,
            _ => return Err(bad()),
        };
        if level.is_some() && !matches!(codec, Codec::Zstd(_)) {
            return Err(bad());
        }
        Ok(codec)
    }

    pub(super) fn parquet(self) -> Compression {
        match self {
            Codec::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default()),
            Codec::Snappy => Compression::SNAPPY,
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::Uncompressed => Compression::UNCOMPRESSED,
        }
    }
}

/// What a write does when its target already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Fail before running (a pipeline step's folder may still be resumed).
    Error,
    /// The new result takes the target's place once complete (the default).
    #[default]
    Replace,
    /// For partitioned outputs: the partitions the new result writes are replaced, the others are
    /// kept (Spark's dynamic partition overwrite).
    ReplacePartitions,
}

impl Overwrite {
    /// Parses `error`, `replace` or `replace_partitions` (also with a `-`).
    pub fn parse(text: &str) -> Result<Overwrite> {
        match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "error" => Ok(Overwrite::Error),
            "replace" => Ok(Overwrite::Replace),
            "replace_partitions" => Ok(Overwrite::ReplacePartitions),
            _ => Err(Error::Config(format!(
                "unknown overwrite policy '{text}' (hint: error, replace or replace_partitions)"
            ))),
        }
    }
}

/// How outputs are written. The defaults: zstd level 1, row groups of at most 1M rows flushed by
/// bytes (an eighth of the budget, up to 128 MiB), one file, replacing the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Parquet compression.
    pub compression: Codec,
    /// Most rows in a Parquet row group.
    pub row_group_rows: Option<usize>,
    /// Target bytes of a Parquet row group (encoded). The writer holds a row group in memory until
    /// it is flushed, so this is capped at a quarter of the budget, and a row group is flushed
    /// early when the pool is short.
    pub row_group_bytes: Option<u64>,
    /// Split the output into numbered files of about this size (the target is then a folder).
    pub max_file_bytes: Option<u64>,
    /// What to do when the target exists.
    pub overwrite: Overwrite,
}

impl WriteOptions {
    /// The options that shape the files, as one line, for the fingerprints that decide whether
    /// a unit is redone (the overwrite policy changes which files stay, not what a unit writes).
    pub fn describe(&self) -> String {
        format!("{:?} {:?} {:?} {:?}", self.compression, self.row_group_rows, self.row_group_bytes, self.max_file_bytes)
    }

    pub(super) fn row_group_bytes(&self, budget: u64, default: usize) -> usize {
        let mut bytes = match self.row_group_bytes {
            Some(b) => (b.min(budget / 4) as usize).max(64 << 10),
            None => default,
        };
        if let Some(max) = self.max_file_bytes {
            bytes = bytes.min((max as usize).max(64 << 10));
        }
        bytes
    }
}

/// What a sink wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WriteSummary {
    /// The file written.
    pub path: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// Bytes of the finished file.
    pub bytes: u64,
    /// Row groups (Parquet only).
    pub row_groups: usize,
}
