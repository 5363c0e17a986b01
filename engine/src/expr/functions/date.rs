//! Date and time functions: `date_part` (with `EXTRACT(part FROM d)` and `year(d)`, `month(d)`,
//! ... as its other spellings) and `date_trunc`.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::DatePart;
use arrow::datatypes::DataType;

use super::{Call, FunctionDef, Group, Typing};
use crate::error::{Error, Result};
use crate::expr::types::{self, sql_type_name};
use crate::expr::Expr;

pub(super) const ALL: &[&FunctionDef] = &[&DATE_PART, &DATE_TRUNC];

/// The parts that are functions of their own: `year(d)` is `date_part('year', d)`.
const PART_FUNCTIONS: &[&str] =
    &["year", "quarter", "month", "day", "hour", "minute", "second", "dayofweek", "dayofyear", "week"];

pub(crate) static DATE_PART: FunctionDef = FunctionDef {
    name: "date_part",
    aliases: &[
        "datepart",
        "year",
        "quarter",
        "month",
        "day",
        "hour",
        "minute",
        "second",
        "dayofweek",
        "dayofyear",
        "week",
    ],
    signature: "date_part(part, d)",
    doc: "a part of a date or timestamp as a BIGINT: year, quarter, month, day, hour, minute, second, \
          dow (Sunday is 0), doy, week (ISO); also EXTRACT(part FROM d) and year(d), month(d), ...",
    group: Group::Date,
    typing: Typing::Custom(|call: &mut Call| {
        if PART_FUNCTIONS.contains(&call.name) {
            call.arity(1, 1)?;
            call.args.insert(0, string_literal(call.name));
            call.texts.insert(0, String::new());
        }
        call.arity(2, 2)?;
        let part = part_argument(call)?;
        DatePartKind::parse(&part).ok_or_else(|| Error::NotSupported(format!("date_part('{part}')")))?;
        call.temporal(1)?;
        Ok(DataType::Int64)
    }),
    kernel: |a, _| {
        let part = part_of(&a[0])?;
        let parts = arrow::compute::date_part(a[1].as_ref(), part.arrow())?;
        Ok(arrow::compute::cast(&parts, &DataType::Int64)?)
    },
    infallible: false,
};

static DATE_TRUNC: FunctionDef = FunctionDef {
    name: "date_trunc",
    aliases: &["datetrunc"],
    signature: "date_trunc(part, d)",
    doc: "the TIMESTAMP at the start of the year, quarter, month, week, day, hour, minute or second \
          that holds d",
    group: Group::Date,
    typing: Typing::Custom(|call: &mut Call| {
        call.arity(2, 2)?;
        let part = part_argument(call)?;
        DatePartKind::parse(&part)
            .filter(|k| !matches!(k, DatePartKind::DayOfWeek | DatePartKind::DayOfYear))
            .ok_or_else(|| Error::NotSupported(format!("date_trunc('{part}')")))?;
        let t = call.ty(1);
        if !types::is_temporal(&t) {
            return Err(Error::Plan(format!("date_trunc() needs a date or timestamp, got {}", sql_type_name(&t))));
        }
        Ok(types::TIMESTAMP)
    }),
    kernel: |a, t| date_trunc(&a[1], part_of(&a[0])?, t),
    infallible: false,
};

fn string_literal(s: &str) -> Expr {
    Expr::Literal(std::sync::Arc::new(arrow::array::StringArray::from(vec![s])))
}

/// The part a call names in its first argument, which must be a constant.
fn part_argument(call: &Call) -> Result<String> {
    call.constant_string(0).ok_or_else(|| Error::Plan(format!("{}() takes the part as a string constant", call.name)))
}

/// The part named by the first value of `a` (a constant, checked when the call was planned).
fn part_of(a: &ArrayRef) -> Result<DatePartKind> {
    let names = a.as_string::<i32>();
    (names.len() > 0 && names.is_valid(0))
        .then(|| DatePartKind::parse(names.value(0)))
        .flatten()
        .ok_or_else(|| Error::Execution("internal error: a date part that is not a constant".into()))
}

/// A part of a date that `extract` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatePartKind {
    /// Year.
    Year,
    /// Quarter, 1-4.
    Quarter,
    /// Month, 1-12.
    Month,
    /// Day of month.
    Day,
    /// Hour.
    Hour,
    /// Minute.
    Minute,
    /// Second.
    Second,
    /// Day of week, Sunday = 0 (as DuckDB's `dow`).
    DayOfWeek,
    /// Day of year, 1-366.
    DayOfYear,
    /// ISO week.
    Week,
}

impl DatePartKind {
    /// Parses a part name (`year`, `month`, `dow`, ...).
    pub fn parse(name: &str) -> Option<DatePartKind> {
        Some(match name.to_ascii_lowercase().as_str() {
            "year" | "years" | "y" => DatePartKind::Year,
            "quarter" => DatePartKind::Quarter,
            "month" | "months" | "mon" => DatePartKind::Month,
            "day" | "days" | "d" => DatePartKind::Day,
            "hour" | "hours" | "h" => DatePartKind::Hour,
            "minute" | "minutes" | "m" => DatePartKind::Minute,
            "second" | "seconds" | "s" => DatePartKind::Second,
            "dow" | "dayofweek" => DatePartKind::DayOfWeek,
            "doy" | "dayofyear" => DatePartKind::DayOfYear,
            "week" | "weeks" | "w" => DatePartKind::Week,
            _ => return None,
        })
    }
    /// The name `date_part` is called with.
    pub fn name(self) -> &'static str {
        match self {
            DatePartKind::Year => "year",
            DatePartKind::Quarter => "quarter",
            DatePartKind::Month => "month",
            DatePartKind::Day => "day",
            DatePartKind::Hour => "hour",
            DatePartKind::Minute => "minute",
            DatePartKind::Second => "second",
            DatePartKind::DayOfWeek => "dow",
            DatePartKind::DayOfYear => "doy",
            DatePartKind::Week => "week",
        }
    }

    fn arrow(self) -> DatePart {
        match self {
            DatePartKind::Year => DatePart::Year,
            DatePartKind::Quarter => DatePart::Quarter,
            DatePartKind::Month => DatePart::Month,
            DatePartKind::Day => DatePart::Day,
            DatePartKind::Hour => DatePart::Hour,
            DatePartKind::Minute => DatePart::Minute,
            DatePartKind::Second => DatePart::Second,
            DatePartKind::DayOfWeek => DatePart::DayOfWeekSunday0,
            DatePartKind::DayOfYear => DatePart::DayOfYear,
            DatePartKind::Week => DatePart::Week,
        }
    }
}

/// `date_trunc`: the start of the part that holds each value, as a timestamp of `out`'s unit.
fn date_trunc(a: &ArrayRef, part: DatePartKind, out: &DataType) -> Result<ArrayRef> {
    use chrono::{Datelike, NaiveDate};
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    let micros = arrow::compute::cast(&arrow::compute::cast(a, &types::TIMESTAMP)?, &DataType::Int64)?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    let start_of = |v: i64| -> Option<i64> {
        let day = v.div_euclid(MICROS_PER_DAY);
        let floor = |unit: i64| v.div_euclid(unit) * unit;
        Some(match part {
            DatePartKind::Second => floor(1_000_000),
            DatePartKind::Minute => floor(60_000_000),
            DatePartKind::Hour => floor(3_600_000_000),
            DatePartKind::Day => day * MICROS_PER_DAY,
            // ISO weeks start on Monday; 1970-01-01 was a Thursday.
            DatePartKind::Week => (day - (day + 3).rem_euclid(7)) * MICROS_PER_DAY,
            DatePartKind::Month | DatePartKind::Quarter | DatePartKind::Year => {
                let date = epoch.checked_add_signed(chrono::TimeDelta::try_days(day)?)?;
                let month = match part {
                    DatePartKind::Year => 1,
                    DatePartKind::Quarter => (date.month0() / 3) * 3 + 1,
                    _ => date.month(),
                };
                let first = NaiveDate::from_ymd_opt(date.year(), month, 1)?;
                (first - epoch).num_days() * MICROS_PER_DAY
            }
            DatePartKind::DayOfWeek | DatePartKind::DayOfYear => return None,
        })
    };
    let truncated: Int64Array =
        micros.as_primitive::<arrow::datatypes::Int64Type>().iter().map(|v| v.and_then(start_of)).collect();
    let as_timestamp = arrow::compute::cast(&truncated, &types::TIMESTAMP)?;
    Ok(arrow::compute::cast(&as_timestamp, out)?)
}
