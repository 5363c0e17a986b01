//! Window functions: what `f(...) OVER (PARTITION BY .. ORDER BY .. frame)` computes.

use std::fmt;

use arrow::datatypes::DataType;

use super::{AggregateFunction, Expr};
use crate::error::{Error, Result};

/// A window function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFunction {
    /// `row_number()`: 1, 2, 3, ... in each partition.
    RowNumber,
    /// `rank()`: 1 + the rows before the row's peer group.
    Rank,
    /// `dense_rank()`: 1 + the peer groups before the row's.
    DenseRank,
    /// `percent_rank()`: `(rank - 1) / (rows - 1)`.
    PercentRank,
    /// `cume_dist()`: rows up to the row's last peer, over the partition's rows.
    CumeDist,
    /// `ntile(n)`: the bucket (1 to n) of `n` nearly equal buckets the row falls in.
    Ntile,
    /// `lag(x[, offset[, default]])`: `x` of the row `offset` (1) before.
    Lag,
    /// `lead(x[, offset[, default]])`: `x` of the row `offset` (1) after.
    Lead,
    /// `first_value(x)`: `x` of the frame's first row.
    FirstValue,
    /// `last_value(x)`: `x` of the frame's last row.
    LastValue,
    /// `nth_value(x, n)`: `x` of the frame's `n`th row.
    NthValue,
    /// An aggregate over the frame.
    Aggregate(AggregateFunction),
}

impl WindowFunction {
    /// The window function a name stands for (aggregates included).
    pub fn by_name(name: &str) -> Option<WindowFunction> {
        Some(match name {
            "row_number" => WindowFunction::RowNumber,
            "rank" => WindowFunction::Rank,
            "dense_rank" => WindowFunction::DenseRank,
            "percent_rank" => WindowFunction::PercentRank,
            "cume_dist" => WindowFunction::CumeDist,
            "ntile" => WindowFunction::Ntile,
            "lag" => WindowFunction::Lag,
            "lead" => WindowFunction::Lead,
            "first_value" | "first" => WindowFunction::FirstValue,
            "last_value" | "last" => WindowFunction::LastValue,
            "nth_value" => WindowFunction::NthValue,
            other => WindowFunction::Aggregate(AggregateFunction::by_name(other)?),
        })
    }

    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            WindowFunction::RowNumber => "row_number",
            WindowFunction::Rank => "rank",
            WindowFunction::DenseRank => "dense_rank",
            WindowFunction::PercentRank => "percent_rank",
            WindowFunction::CumeDist => "cume_dist",
            WindowFunction::Ntile => "ntile",
            WindowFunction::Lag => "lag",
            WindowFunction::Lead => "lead",
            WindowFunction::FirstValue => "first_value",
            WindowFunction::LastValue => "last_value",
            WindowFunction::NthValue => "nth_value",
            WindowFunction::Aggregate(a) => a.name(),
        }
    }

    /// Whether the function reads its frame (ranking functions and `lag`/`lead` do not).
    pub fn uses_frame(self) -> bool {
        matches!(
            self,
            WindowFunction::FirstValue
                | WindowFunction::LastValue
                | WindowFunction::NthValue
                | WindowFunction::Aggregate(_)
        )
    }

    /// The result type for arguments of these types.
    pub fn return_type(self, args: &[DataType]) -> Result<DataType> {
        Ok(match self {
            WindowFunction::RowNumber | WindowFunction::Rank | WindowFunction::DenseRank | WindowFunction::Ntile => {
                DataType::Int64
            }
            WindowFunction::PercentRank | WindowFunction::CumeDist => DataType::Float64,
            WindowFunction::Lag
            | WindowFunction::Lead
            | WindowFunction::FirstValue
            | WindowFunction::LastValue
            | WindowFunction::NthValue => {
                args.first().cloned().ok_or_else(|| Error::Plan(format!("{}() needs an argument", self.name())))?
            }
            WindowFunction::Aggregate(a) => a.return_type(args.first())?,
        })
    }
}

/// Where a frame starts or ends.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameBound {
    /// The partition's first row.
    UnboundedPreceding,
    /// `n` rows (ROWS) or `n` less in the ordering key (RANGE) before.
    Preceding(f64),
    /// The row itself (ROWS), or its first/last peer (RANGE).
    CurrentRow,
    /// `n` rows or `n` more in the ordering key after.
    Following(f64),
    /// The partition's last row.
    UnboundedFollowing,
}

/// `ROWS` (offsets in rows) or `RANGE` (offsets in the ordering key's values; peers together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameUnits {
    /// Offsets count rows.
    Rows,
    /// Offsets are differences of the ordering key; the current row stands for all its peers.
    Range,
}

/// The rows a frame-reading function sees for each row.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowFrame {
    /// Rows or range.
    pub units: FrameUnits,
    /// Where it starts.
    pub start: FrameBound,
    /// Where it ends.
    pub end: FrameBound,
}

impl WindowFrame {
    /// SQL's default: with `ORDER BY`, from the partition's start to the row's last peer;
    /// without, the whole partition.
    pub fn default_for(ordered: bool) -> WindowFrame {
        if ordered {
            WindowFrame { units: FrameUnits::Range, start: FrameBound::UnboundedPreceding, end: FrameBound::CurrentRow }
        } else {
            WindowFrame {
                units: FrameUnits::Rows,
                start: FrameBound::UnboundedPreceding,
                end: FrameBound::UnboundedFollowing,
            }
        }
    }

    /// The same frame seen from the other end of the ordering (for a reversed sort): `n
    /// PRECEDING` becomes `n FOLLOWING` and the bounds swap.
    pub fn reversed(&self) -> WindowFrame {
        let mirror = |b: &FrameBound| match b {
            FrameBound::UnboundedPreceding => FrameBound::UnboundedFollowing,
            FrameBound::Preceding(n) => FrameBound::Following(*n),
            FrameBound::CurrentRow => FrameBound::CurrentRow,
            FrameBound::Following(n) => FrameBound::Preceding(*n),
            FrameBound::UnboundedFollowing => FrameBound::UnboundedPreceding,
        };
        WindowFrame { units: self.units, start: mirror(&self.end), end: mirror(&self.start) }
    }
}

impl fmt::Display for WindowFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bound = |b: &FrameBound| match b {
            FrameBound::UnboundedPreceding => "UNBOUNDED PRECEDING".to_string(),
            FrameBound::Preceding(n) => format!("{n} PRECEDING"),
            FrameBound::CurrentRow => "CURRENT ROW".to_string(),
            FrameBound::Following(n) => format!("{n} FOLLOWING"),
            FrameBound::UnboundedFollowing => "UNBOUNDED FOLLOWING".to_string(),
        };
        let units = if self.units == FrameUnits::Rows { "ROWS" } else { "RANGE" };
        write!(f, "{units} BETWEEN {} AND {}", bound(&self.start), bound(&self.end))
    }
}

/// One window function call: the function, its arguments (over the window's input) and frame.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowExpr {
    /// The function.
    pub func: WindowFunction,
    /// Its arguments: the value read (none for ranking functions and `count(*)`); `lag`/`lead`
    /// also take an offset and a default, `ntile` and `nth_value` a number (constants).
    pub args: Vec<Expr>,
    /// The frame (ignored by functions that read none).
    pub frame: WindowFrame,
    /// The result type.
    pub data_type: DataType,
}

impl fmt::Display for WindowExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args: Vec<String> = self.args.iter().map(|a| a.to_string()).collect();
        write!(f, "{}({})", self.func.name(), args.join(", "))?;
        if self.func.uses_frame() {
            write!(f, " {}", self.frame)?;
        }
        Ok(())
    }
}
