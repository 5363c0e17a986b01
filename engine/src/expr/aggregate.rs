//! Aggregate functions and their result types (DuckDB's: `sum` of integers and decimals is a
//! 38-digit decimal, `avg`, `stddev` and `variance` are DOUBLE, `count` is BIGINT).

use std::fmt;

use arrow::datatypes::DataType;

use super::types::{is_numeric, sql_type_name};
use super::Expr;
use crate::error::{Error, Result};

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFunction {
    /// `count(*)`
    CountStar,
    /// `count(x)`: non-null values.
    Count,
    /// `sum(x)`
    Sum,
    /// `avg(x)` / `mean(x)`
    Avg,
    /// `min(x)`
    Min,
    /// `max(x)`
    Max,
    /// `stddev(x)` / `stddev_samp(x)`
    StddevSamp,
    /// `stddev_pop(x)`
    StddevPop,
    /// `variance(x)` / `var_samp(x)`
    VarSamp,
    /// `var_pop(x)`
    VarPop,
    /// The one value of a group, an error when it has more than one row: what a scalar subquery
    /// that is not an aggregate returns.
    SingleValue,
}

impl AggregateFunction {
    /// Looks an aggregate up by its SQL name.
    pub fn by_name(name: &str) -> Option<AggregateFunction> {
        Some(match name {
            "count" => AggregateFunction::Count,
            "sum" => AggregateFunction::Sum,
            "avg" | "mean" => AggregateFunction::Avg,
            "min" => AggregateFunction::Min,
            "max" => AggregateFunction::Max,
            "stddev" | "stddev_samp" => AggregateFunction::StddevSamp,
            "stddev_pop" => AggregateFunction::StddevPop,
            "variance" | "var_samp" => AggregateFunction::VarSamp,
            "var_pop" => AggregateFunction::VarPop,
            _ => return None,
        })
    }

    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            AggregateFunction::CountStar | AggregateFunction::Count => "count",
            AggregateFunction::Sum => "sum",
            AggregateFunction::Avg => "avg",
            AggregateFunction::Min => "min",
            AggregateFunction::Max => "max",
            AggregateFunction::StddevSamp => "stddev_samp",
            AggregateFunction::StddevPop => "stddev_pop",
            AggregateFunction::VarSamp => "var_samp",
            AggregateFunction::VarPop => "var_pop",
            AggregateFunction::SingleValue => "single_value",
        }
    }

    /// The result type for an argument of type `arg`.
    pub fn return_type(self, arg: Option<&DataType>) -> Result<DataType> {
        let bad = |t: &DataType| Error::Plan(format!("{}() does not take {}", self.name(), sql_type_name(t)));
        Ok(match (self, arg) {
            (AggregateFunction::CountStar | AggregateFunction::Count, _) => DataType::Int64,
            (AggregateFunction::Min | AggregateFunction::Max | AggregateFunction::SingleValue, Some(t)) => t.clone(),
            (AggregateFunction::Sum, Some(t)) => match t {
                t if t.is_integer() => DataType::Decimal128(38, 0),
                DataType::Decimal128(_, s) => DataType::Decimal128(38, *s),
                DataType::Float32 | DataType::Float64 => DataType::Float64,
                DataType::Null => DataType::Decimal128(38, 0),
                other => return Err(bad(other)),
            },
            (_, Some(t)) if is_numeric(t) || t == &DataType::Null => DataType::Float64,
            (_, Some(t)) => return Err(bad(t)),
            (_, None) => return Err(Error::Plan(format!("{}() needs an argument", self.name()))),
        })
    }
}

/// One aggregate of a grouped query: a function over an expression of the input.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateExpr {
    /// The function.
    pub func: AggregateFunction,
    /// Its argument (none for `count(*)`).
    pub arg: Option<Expr>,
    /// Over distinct argument values only (`count(DISTINCT x)`). The planner turns these into
    /// two plain aggregations before anything runs.
    pub distinct: bool,
    /// The result type.
    pub data_type: DataType,
}

impl fmt::Display for AggregateExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.arg {
            Some(arg) => write!(f, "{}({}{arg})", self.func.name(), if self.distinct { "DISTINCT " } else { "" }),
            None => write!(f, "count_star()"),
        }
    }
}
