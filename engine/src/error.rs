//! The engine's error type.
//!
//! Every message is lowercase, names the thing that went wrong (file, step, column or SQL position) and,
//! where one helps, ends with a hint. [`Error::is_bad_input`] separates problems with what the user gave
//! us (exit code 2 in the CLI) from failures while running (exit code 1).

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in flow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQL that does not parse, or names something that does not exist.
    #[error("sql: {message}{}", position_suffix(*.line, *.column))]
    Sql {
        /// What is wrong.
        message: String,
        /// 1-based line of the offending token, 0 when unknown.
        line: u64,
        /// 1-based column of the offending token, 0 when unknown.
        column: u64,
    },
    /// SQL that is valid but uses something flow does not run yet.
    #[error("not supported yet: {0}")]
    NotSupported(String),
    /// A query that cannot be planned: unknown column, type mismatch, ...
    #[error("plan: {0}")]
    Plan(String),
    /// Input data whose schema does not fit (incompatible files in one glob, a declared schema that
    /// does not match, ...).
    #[error("schema: {0}")]
    Schema(String),
    /// A bad configuration value or pipeline file.
    #[error("config: {0}")]
    Config(String),
    /// A file that is missing, unreadable or corrupt.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An I/O failure while running (disk full, permission denied on output, ...).
    #[error("i/o on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A memory reservation that the budget cannot satisfy.
    #[error(
        "failed to reserve {} for {consumer}: {} of {} in use{} (hint: raise --mem-budget)",
        human(*requested), human(*in_use), human(*budget), top_consumers(largest)
    )]
    ResourcesExhausted {
        /// The consumer that asked.
        consumer: String,
        /// How many bytes it asked for.
        requested: u64,
        /// Bytes reserved by everyone at that moment.
        in_use: u64,
        /// The pool's size.
        budget: u64,
        /// The biggest holders at that moment, largest first.
        largest: Vec<(String, u64)>,
    },
    /// A plan whose minimum memory does not fit the budget, found before running.
    #[error("budget too small: {what} needs at least {} but --mem-budget is {} (hint: use --mem-budget {} or more)", human_up(*needed), human(*budget), human_up(*needed))]
    BudgetTooSmall {
        /// What needs the memory.
        what: String,
        /// The smallest budget that would work.
        needed: u64,
        /// The configured budget.
        budget: u64,
    },
    /// Spill files would exceed `--max-spill`.
    #[error("spill limit reached: writing {} more would exceed --max-spill {} ({} already on disk) (hint: raise --max-spill or --mem-budget)", human(*requested), human(*limit), human(*used))]
    SpillLimit {
        /// Bytes the write needed.
        requested: u64,
        /// Bytes already on disk.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// Evaluation failed on the data (overflow, bad cast, division by zero, ...).
    #[error("{0}")]
    Execution(String),
    /// Units of work that failed in a run that went on without them (`--keep-going`).
    #[error("{} failed:{}", plural(failures.len(), "unit"), failures.iter().map(|f| format!("\n  {f}")).collect::<String>())]
    UnitsFailed {
        /// `unit: error`, one per failed unit.
        failures: Vec<String>,
        /// Whether every failure may pass on another attempt.
        transient: bool,
    },
    /// The run was cancelled (Ctrl-C).
    #[error("cancelled")]
    Cancelled,
    /// An error at a place in the SQL text (the expression it is about).
    #[error("{source} at line {line}, column {column}")]
    At {
        /// What went wrong.
        #[source]
        source: Box<Error>,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// An error from a step of a pipeline: wraps the cause with the step's name.
    #[error("step '{step}': {source}")]
    Step {
        /// The step's name.
        step: String,
        /// What went wrong in it.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// True when the error is the user's input (SQL, config, schema, missing or corrupt file), false
    /// when it happened while running (I/O, memory, disk limit).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Sql { .. }
            | Error::NotSupported(_)
            | Error::Plan(_)
            | Error::Schema(_)
            | Error::Config(_)
            | Error::BadFile { .. } => true,
            Error::Step { source, .. } | Error::At { source, .. } => source.is_bad_input(),
            _ => false,
        }
    }

    /// The error itself, without the step or SQL position it is wrapped in.
    pub fn inner(&self) -> &Error {
        match self {
            Error::Step { source, .. } | Error::At { source, .. } => source.inner(),
            other => other,
        }
    }

    /// Where in the SQL text the error is, if known: 1-based line and column.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            Error::Sql { line, column, .. } if *line > 0 => Some((*line, *column)),
            Error::At { line, column, .. } => Some((*line, *column)),
            Error::Step { source, .. } => source.position(),
            _ => None,
        }
    }

    /// The error placed at `line` and `column` of the SQL text, unless it has a place already
    /// (or the place is unknown: line 0). Only errors about the SQL get one.
    pub(crate) fn located(self, line: u64, column: u64) -> Error {
        if line == 0 || self.position().is_some() {
            return self;
        }
        match self {
            Error::Sql { message, .. } => Error::Sql { message, line, column },
            e @ (Error::Plan(_) | Error::NotSupported(_)) => Error::At { source: Box::new(e), line, column },
            other => other,
        }
    }

    /// True when running again may succeed: a full disk or quota, a failing or lost mount, the
    /// spill limit, an interruption. Bad input, a path that cannot be written (a file where a
    /// folder should be, no permission) and a budget too small for the query are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(
                    libc::ENOSPC
                        | libc::EDQUOT
                        | libc::EFBIG
                        | libc::EIO
                        | libc::EAGAIN
                        | libc::EINTR
                        | libc::EBUSY
                        | libc::ETIMEDOUT
                        | libc::ESTALE
                        | libc::ENOLCK
                )
            ),
            Error::SpillLimit { .. } | Error::Cancelled => true,
            Error::UnitsFailed { transient, .. } => *transient,
            Error::Step { source, .. } | Error::At { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// True when the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        match self {
            Error::Cancelled => true,
            Error::Step { source, .. } | Error::At { source, .. } => source.is_cancelled(),
            _ => false,
        }
    }

    /// Wraps the error with the name of the pipeline step it happened in.
    pub fn in_step(self, step: &str) -> Error {
        Error::Step { step: step.to_string(), source: Box::new(self) }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    /// An error of a Parquet writer or reader at `path`: a failed read or write (a full disk, a
    /// quota, a failing device) stays an I/O error, so that it is retried (exit 75); the rest
    /// are execution errors that say what was being `done` (`writing spill file`).
    pub(crate) fn parquet(path: &std::path::Path, doing: &str, e: parquet::errors::ParquetError) -> Error {
        match e {
            parquet::errors::ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
                Ok(io) => Error::io(path, *io),
                Err(other) => Error::Execution(format!("{doing} {}: {other}", path.display())),
            },
            other => Error::Execution(format!("{doing} {}: {other}", path.display())),
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Error {
        Error::BadFile { path: path.into(), message: message.to_string() }
    }

    pub(crate) fn sql(message: impl Into<String>) -> Error {
        Error::Sql { message: message.into(), line: 0, column: 0 }
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        use arrow::error::ArrowError as A;
        match e {
            A::ExternalError(inner) => match inner.downcast::<Error>() {
                Ok(flow) => *flow,
                Err(other) => Error::Execution(other.to_string()),
            },
            A::CastError(m) => Error::Execution(format!("cast failed: {m}")),
            A::DivideByZero => Error::Execution("division by zero".into()),
            A::ArithmeticOverflow(m) => Error::Execution(format!("overflow: {m}")),
            A::ComputeError(m) | A::InvalidArgumentError(m) => Error::Execution(m),
            other => Error::Execution(other.to_string()),
        }
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn position_suffix(line: u64, column: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" at line {line}, column {column}")
    }
}

fn top_consumers(largest: &[(String, u64)]) -> String {
    if largest.is_empty() {
        return String::new();
    }
    let list: Vec<String> = largest.iter().map(|(n, b)| format!("{n} {}", human(*b))).collect();
    format!("; largest: {}", list.join(", "))
}

/// The line of `sql` an error is on, with a caret under its column, for a terminal:
///
/// ```text
///    3 |     WHERE s = 5
///      |           ^
/// ```
///
/// A line longer than a terminal (generated SQL) is cut to [`CARET_WIDTH`] characters around the
/// spot, with `...` where it was cut.
pub fn caret(sql: &str, line: u64, column: u64) -> Option<String> {
    let text = sql.lines().nth(line.checked_sub(1)? as usize)?;
    let number = line.to_string();
    let pad = " ".repeat(number.len());
    let chars: Vec<char> = text.chars().collect();
    let at = (column.saturating_sub(1) as usize).min(chars.len());
    let (start, end) = match chars.len() > CARET_WIDTH {
        true => {
            let start = at.saturating_sub(CARET_WIDTH / 2).min(chars.len() - CARET_WIDTH);
            (start, start + CARET_WIDTH)
        }
        false => (0, chars.len()),
    };
    let (open, close) = (if start > 0 { "..." } else { "" }, if end < chars.len() { "..." } else { "" });
    let shown: String = chars[start..end].iter().collect();
    // Columns count characters; tabs keep their width under the caret.
    let before: String = std::iter::repeat_n(' ', open.len())
        .chain(chars[start..at].iter().map(|&c| if c == '\t' { '\t' } else { ' ' }))
        .collect();
    Some(format!(" {number} | {open}{shown}{close}\n {pad} | {before}^"))
}

/// The most characters of a line of SQL an error shows.
const CARET_WIDTH: usize = 100;

/// `bytes` as [`human`] prints it, rounded up rather than to the nearest: a minimum printed as
/// the budget it exceeds ("needs at least 3.5 MiB but --mem-budget is 3.5 MiB") says nothing.
pub fn human_up(bytes: u64) -> String {
    let mut unit = 1u64;
    while unit < (1 << 60) && bytes >= unit * 1024 {
        unit *= 1024;
    }
    // Up to one decimal in that unit, as `human` shows it.
    let (bytes, unit) = (bytes as u128, unit as u128);
    human(((bytes * 10).div_ceil(unit) * unit / 10) as u64)
}

/// Formats a byte count the way the CLI prints it: `15.4 MiB`.
pub fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimum_is_rounded_up() {
        let mib = 1u64 << 20;
        assert_eq!(human(7 * mib / 2 + 1000), "3.5 MiB");
        assert_eq!(human_up(7 * mib / 2 + 1000), "3.6 MiB");
        assert_eq!(human_up(7 * mib / 2), "3.5 MiB");
        assert_eq!(human_up(1000), "1000 B");
        let e = Error::BudgetTooSmall { what: "q".into(), needed: 7 * mib / 2 + 1, budget: 7 * mib / 2 };
        assert!(e.to_string().contains("needs at least 3.6 MiB but --mem-budget is 3.5 MiB"), "{e}");
    }
}
