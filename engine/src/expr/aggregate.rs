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

/// How an aggregate is computed in two steps: partial aggregates over the input, each merged by
/// an aggregate of the final step over its column, then finished by an expression. One split
/// serves the three places that make it: two-phase aggregation (partial on the scan workers),
/// DISTINCT aggregates beside plain ones (partial per distinct value), and eager aggregation
/// below a join (partial before the join).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// `sum`, `min`, `max`: the same function over the partial results.
    Again(AggregateFunction),
    /// `count`, `count(*)`: the partial counts, summed.
    Count(AggregateFunction),
    /// `avg`: a partial sum and a partial count; their totals divided.
    Avg,
}

impl Split {
    /// The split of `func`, when its partial results merge exactly.
    pub(crate) fn of(func: AggregateFunction) -> Option<Split> {
        use AggregateFunction as F;
        match func {
            F::Sum | F::Min | F::Max => Some(Split::Again(func)),
            F::Count | F::CountStar => Some(Split::Count(func)),
            F::Avg => Some(Split::Avg),
            _ => None,
        }
    }

    /// The partial aggregates, over the aggregate's argument, in order.
    pub(crate) fn partials(self) -> Vec<AggregateFunction> {
        use AggregateFunction as F;
        match self {
            Split::Again(f) | Split::Count(f) => vec![f],
            Split::Avg => vec![F::Sum, F::Count],
        }
    }

    /// The final step's aggregate over a partial column: counts add up.
    pub(crate) fn merge(self) -> AggregateFunction {
        match self {
            Split::Again(f) => f,
            Split::Count(_) | Split::Avg => AggregateFunction::Sum,
        }
    }

    /// The aggregate's answer from the merged partials (`merged[i]` for partial `i`).
    pub(crate) fn finish(self, mut merged: Vec<Expr>) -> Expr {
        match self {
            Split::Again(_) => merged.swap_remove(0),
            Split::Count(_) => Expr::Cast { expr: Box::new(merged.swap_remove(0)), to: DataType::Int64 },
            // The division the aggregation's own average makes (as DuckDB's), on the totals.
            Split::Avg => Expr::Function {
                func: super::Function::of(&super::AVG_DIVIDE),
                args: merged,
                data_type: DataType::Float64,
            },
        }
    }
}
