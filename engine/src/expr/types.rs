//! SQL's type rules, as DuckDB applies them: common types, decimal precision and scale, casts.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Float32Type, Float64Type, IntervalMonthDayNano, IntervalUnit, TimeUnit};
use arrow::util::display::FormatOptions;

use super::BinaryOp;
use crate::error::{Error, Result};

/// Most digits a `Decimal128` holds.
pub const MAX_PRECISION: u8 = 38;
/// Most digits of a decimal stored in 64 bits (DuckDB avoids growing past it on its own).
const MAX_PRECISION_INT64: u8 = 18;

/// The decimal an integer type converts to without loss (DuckDB: INTEGER is DECIMAL(10,0)).
pub fn integer_as_decimal(t: &DataType) -> Option<(u8, i8)> {
    Some(match t {
        DataType::Int8 | DataType::UInt8 => (3, 0),
        DataType::Int16 | DataType::UInt16 => (5, 0),
        DataType::Int32 | DataType::UInt32 => (10, 0),
        DataType::Int64 => (19, 0),
        DataType::UInt64 => (20, 0),
        DataType::Decimal128(p, s) => (*p, *s),
        _ => return None,
    })
}

fn int_rank(t: &DataType) -> Option<u8> {
    Some(match t {
        DataType::Int8 => 1,
        DataType::UInt8 | DataType::Int16 => 2,
        DataType::UInt16 | DataType::Int32 => 3,
        DataType::UInt32 | DataType::Int64 => 4,
        DataType::UInt64 => 5,
        _ => return None,
    })
}

fn int_of_rank(r: u8) -> DataType {
    match r {
        1 => DataType::Int8,
        2 => DataType::Int16,
        3 => DataType::Int32,
        4 => DataType::Int64,
        // UINT64 mixed with signed: DuckDB widens to HUGEINT; the nearest exact type here is a decimal.
        _ => DataType::Decimal128(20, 0),
    }
}

/// True for integer, float and decimal types.
pub fn is_numeric(t: &DataType) -> bool {
    t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(..))
}

/// True for string types.
pub fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// True for date and timestamp types.
pub fn is_temporal(t: &DataType) -> bool {
    matches!(t, DataType::Date32 | DataType::Date64 | DataType::Timestamp(..))
}

/// The type two values are compared or combined in (`CASE` branches, `IN` lists, `coalesce`).
pub fn common_type(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    Some(match (a, b) {
        (Null, t) | (t, Null) => t.clone(),
        _ if int_rank(a).is_some() && int_rank(b).is_some() => {
            let (ra, rb) = (int_rank(a).unwrap(), int_rank(b).unwrap());
            if a.is_unsigned_integer() == b.is_unsigned_integer() {
                if ra >= rb {
                    a.clone()
                } else {
                    b.clone()
                }
            } else {
                int_of_rank(ra.max(rb) + u8::from(ra == rb))
            }
        }
        (Float64, t) | (t, Float64) if is_numeric(t) => Float64,
        (Float32, t) | (t, Float32) if is_numeric(t) => {
            if matches!(t, Decimal128(..)) {
                Float64
            } else {
                Float32
            }
        }
        _ if is_numeric(a) && is_numeric(b) => {
            let (p1, s1) = integer_as_decimal(a)?;
            let (p2, s2) = integer_as_decimal(b)?;
            let scale = s1.max(s2);
            let digits = (p1 as i16 - s1 as i16).max(p2 as i16 - s2 as i16);
            Decimal128(((digits + scale as i16) as u8).min(MAX_PRECISION), scale)
        }
        (Date32, Timestamp(u, tz)) | (Timestamp(u, tz), Date32) => Timestamp(*u, tz.clone()),
        (Timestamp(u1, tz1), Timestamp(u2, tz2)) if tz1 == tz2 => Timestamp(finer(*u1, *u2), tz1.clone()),
        (Utf8, t) | (t, Utf8) if is_string(t) => Utf8,
        _ => return None,
    })
}

fn finer(a: TimeUnit, b: TimeUnit) -> TimeUnit {
    let rank = |u: TimeUnit| match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    };
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

/// SQL's `INTERVAL`: months, days and nanoseconds kept apart (a month has no fixed length), as
/// DuckDB keeps them.
pub const INTERVAL: DataType = DataType::Interval(IntervalUnit::MonthDayNano);

/// DuckDB's `TIMESTAMP`.
pub const TIMESTAMP: DataType = DataType::Timestamp(TimeUnit::Microsecond, None);

/// For an arithmetic operator: the type both operands are cast to, and the result type.
pub fn arithmetic_types(op: BinaryOp, a: &DataType, b: &DataType) -> Option<(DataType, DataType, DataType)> {
    use DataType::*;
    let (a, b) = (if a == &Null { b } else { a }, if b == &Null { a } else { b });
    if is_temporal(a) || is_temporal(b) || matches!(a, Interval(_)) || matches!(b, Interval(_)) {
        return temporal_arithmetic(op, a, b);
    }
    if !is_numeric(a) || !is_numeric(b) {
        return None;
    }
    if op == BinaryOp::Divide {
        return Some((Float64, Float64, Float64));
    }
    if a.is_floating() || b.is_floating() {
        let t = common_type(a, b)?;
        return Some((t.clone(), t.clone(), t));
    }
    if int_rank(a).is_some() && int_rank(b).is_some() {
        let t = common_type(a, b)?;
        return Some((t.clone(), t.clone(), t));
    }
    // At least one decimal: DuckDB's BindDecimalAddSubtract / Multiply / Modulo.
    let (p1, s1) = integer_as_decimal(a)?;
    let (p2, s2) = integer_as_decimal(b)?;
    let max_width = p1.max(p2);
    let max_scale = s1.max(s2);
    let max_digits = (p1 as i16 - s1 as i16).max(p2 as i16 - s2 as i16);
    let (result, left, right) = match op {
        BinaryOp::Plus | BinaryOp::Minus => {
            let mut width = ((max_scale as i16 + max_digits) as u8).max(max_width);
            if width < MAX_PRECISION {
                width += 1;
            }
            let left = Decimal128(width.min(MAX_PRECISION), max_scale);
            (Decimal128(width.min(MAX_PRECISION), max_scale), left.clone(), left)
        }
        BinaryOp::Multiply => {
            let scale = s1 + s2;
            if scale as u8 > MAX_PRECISION {
                return None;
            }
            let mut width = p1 + p2;
            if width > MAX_PRECISION_INT64 && max_width <= MAX_PRECISION_INT64 && (scale as u8) < MAX_PRECISION_INT64 {
                width = MAX_PRECISION_INT64;
            }
            (Decimal128(width.min(MAX_PRECISION), scale), Decimal128(p1, s1), Decimal128(p2, s2))
        }
        BinaryOp::Modulo => {
            let width = ((max_digits + max_scale as i16) as u8).min(MAX_PRECISION);
            let t = Decimal128(width, max_scale);
            (t.clone(), t.clone(), t)
        }
        _ => return None,
    };
    Some((left, right, result))
}

/// Date and time arithmetic, typed as DuckDB types it: a date plus an interval is a TIMESTAMP (a
/// month is added to the calendar, a day to the date), a date plus an integer is a DATE, the
/// difference of two dates is a BIGINT count of days, of two timestamps an INTERVAL.
fn temporal_arithmetic(op: BinaryOp, a: &DataType, b: &DataType) -> Option<(DataType, DataType, DataType)> {
    use DataType::*;
    let interval = |t: &DataType| matches!(t, Interval(_));
    let int = |t: &DataType| t.is_integer();
    let plus = op == BinaryOp::Plus;
    let minus = op == BinaryOp::Minus;
    Some(match (a, b) {
        (Date32, b) if (plus || minus) && interval(b) => (TIMESTAMP, INTERVAL, TIMESTAMP),
        (a, Date32) if plus && interval(a) => (INTERVAL, TIMESTAMP, TIMESTAMP),
        (Timestamp(..), b) if (plus || minus) && interval(b) => (a.clone(), INTERVAL, a.clone()),
        (a, Timestamp(..)) if plus && interval(a) => (INTERVAL, b.clone(), b.clone()),
        (Date32, b) if (plus || minus) && int(b) => (Date32, Int64, Date32),
        (a, Date32) if plus && int(a) => (Int64, Date32, Date32),
        (Date32, Date32) if minus => (Date32, Date32, Int64),
        (Timestamp(u1, tz1), Timestamp(u2, tz2)) if minus && tz1 == tz2 => {
            let t = Timestamp(finer(*u1, *u2), tz1.clone());
            (t.clone(), t, INTERVAL)
        }
        (Date32, Timestamp(u, tz)) | (Timestamp(u, tz), Date32) if minus => {
            let t = Timestamp(*u, tz.clone());
            (t.clone(), t, INTERVAL)
        }
        (a, b) if (plus || minus) && interval(a) && interval(b) => (INTERVAL, INTERVAL, INTERVAL),
        (a, b) if op == BinaryOp::Multiply && interval(a) && int(b) => (INTERVAL, Int64, INTERVAL),
        (a, b) if op == BinaryOp::Multiply && int(a) && interval(b) => (Int64, INTERVAL, INTERVAL),
        _ => return None,
    })
}

/// Parses an interval as SQL writes it: a number with the unit given apart (`INTERVAL '90' DAY`),
/// or a list of numbers and units (`INTERVAL '1 year 2 months'`, `'3 days 04:05:06'`).
pub fn parse_interval(text: &str, unit: Option<&str>) -> Option<IntervalMonthDayNano> {
    let mut total = IntervalMonthDayNano::new(0, 0, 0);
    let mut add = |value: f64, unit: &str| -> Option<()> {
        const NS: f64 = 1e9;
        let (months, days, nanos): (f64, f64, f64) = match unit.to_ascii_lowercase().as_str() {
            "year" | "years" | "y" | "yr" | "yrs" => (value * 12.0, 0.0, 0.0),
            "quarter" | "quarters" => (value * 3.0, 0.0, 0.0),
            "month" | "months" | "mon" | "mons" => (value, 0.0, 0.0),
            "week" | "weeks" | "w" => (0.0, value * 7.0, 0.0),
            "day" | "days" | "d" => (0.0, value, 0.0),
            "hour" | "hours" | "h" | "hr" | "hrs" => (0.0, 0.0, value * 3600.0 * NS),
            "minute" | "minutes" | "min" | "mins" | "m" => (0.0, 0.0, value * 60.0 * NS),
            "second" | "seconds" | "sec" | "secs" | "s" => (0.0, 0.0, value * NS),
            "millisecond" | "milliseconds" | "ms" | "msec" => (0.0, 0.0, value * 1e6),
            "microsecond" | "microseconds" | "us" | "usec" => (0.0, 0.0, value * 1e3),
            _ => return None,
        };
        // Fractions of a month or day spill into the smaller unit, as DuckDB does.
        let whole_months = months.trunc();
        let days = days + (months - whole_months) * 30.0;
        let whole_days = days.trunc();
        let nanos = nanos + (days - whole_days) * 86_400.0 * NS;
        total.months = total.months.checked_add(whole_months as i32)?;
        total.days = total.days.checked_add(whole_days as i32)?;
        total.nanoseconds = total.nanoseconds.checked_add(nanos.round() as i64)?;
        Some(())
    };
    let text = text.trim();
    if let Some(unit) = unit {
        add(text.parse().ok()?, unit)?;
        return Some(total);
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        if word.contains(':') {
            // A time of day: [-]HH:MM[:SS[.fff]].
            let (sign, clock) = word.strip_prefix('-').map_or((1.0, word), |w| (-1.0, w));
            let parts: Vec<f64> = clock.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            let seconds = match parts.as_slice() {
                [h, m] => h * 3600.0 + m * 60.0,
                [h, m, s] => h * 3600.0 + m * 60.0 + s,
                _ => return None,
            };
            add(sign * seconds, "second")?;
            i += 1;
            continue;
        }
        // A number and its unit, written apart ("3 days") or together ("3days").
        let split = word.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(word.len());
        let (number, attached) = word.split_at(split);
        let value: f64 = number.parse().ok()?;
        let unit = if attached.is_empty() {
            i += 1;
            *words.get(i)?
        } else {
            attached
        };
        add(value, unit)?;
        i += 1;
    }
    (!words.is_empty()).then_some(total)
}

/// Casts as SQL's `CAST` does in DuckDB: errors on values that do not fit, rounds (not truncates)
/// floats and decimals to integers, and parses strings strictly.
pub fn cast_sql(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    if let (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) = (array.data_type(), to) {
        if s1 == s2 {
            return relabel_decimal(array, *p1, *p2, *s2);
        }
    }
    let options = CastOptions { safe: false, format_options: FormatOptions::default() };
    let from = array.data_type();
    let rounded: ArrayRef = if to.is_integer() {
        match from {
            DataType::Float64 => {
                Arc::new(array.as_primitive::<Float64Type>().unary::<_, Float64Type>(|v| v.round_ties_even()))
            }
            DataType::Float32 => Arc::new(Float64Array::from_iter(
                array.as_primitive::<Float32Type>().iter().map(|v| v.map(|v| (v as f64).round_ties_even())),
            )),
            DataType::Decimal128(p, s) if *s > 0 => {
                // Decimal rescaling rounds half away from zero.
                arrow::compute::cast_with_options(array, &DataType::Decimal128(*p, 0), &options)
                    .map_err(|e| cast_error(from, to, e))?
            }
            _ => array.clone(),
        }
    } else {
        array.clone()
    };
    arrow::compute::cast_with_options(&rounded, to, &options).map_err(|e| cast_error(from, to, e))
}

/// A decimal to another precision at the same scale: the same unscaled values, checked to fit
/// when the precision shrinks. (Arrow's cast rescales every value by 10^0, with an overflow
/// check each: a seventh of TPC-H Q1's time went there.)
fn relabel_decimal(array: &ArrayRef, from: u8, to: u8, scale: i8) -> Result<ArrayRef> {
    use arrow::datatypes::Decimal128Type;
    let a = array.as_primitive::<Decimal128Type>();
    if to < from {
        let bound = 10i128.pow(to as u32);
        let fits = match a.nulls() {
            None => a.values().iter().all(|v| v.unsigned_abs() < bound as u128),
            Some(n) => a.values().iter().zip(n.iter()).all(|(v, valid)| !valid || v.unsigned_abs() < bound as u128),
        };
        if !fits {
            return Err(Error::Execution(format!(
                "cannot cast DECIMAL({from},{scale}) to DECIMAL({to},{scale}): a value has more than {to} digits"
            )));
        }
    }
    Ok(Arc::new(a.clone().with_precision_and_scale(to, scale)?))
}

fn cast_error(from: &DataType, to: &DataType, e: arrow::error::ArrowError) -> Error {
    let msg = e.to_string();
    let msg = msg.strip_prefix("Cast error: ").unwrap_or(&msg).to_string();
    Error::Execution(format!("cannot cast {} to {}: {msg}", sql_type_name(from), sql_type_name(to)))
}

/// DuckDB's name for a type, for messages and `EXPLAIN`.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Null => "NULL".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "UTINYINT".into(),
        DataType::UInt16 => "USMALLINT".into(),
        DataType::UInt32 => "UINTEGER".into(),
        DataType::UInt64 => "UBIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BLOB".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(TimeUnit::Second, None) => "TIMESTAMP_S".into(),
        DataType::Timestamp(TimeUnit::Millisecond, None) => "TIMESTAMP_MS".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "TIMESTAMP".into(),
        DataType::Timestamp(TimeUnit::Nanosecond, None) => "TIMESTAMP_NS".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        DataType::Interval(_) => "INTERVAL".into(),
        other => other.to_string(),
    }
}

/// The Arrow type for a SQL type name (as sqlparser prints it).
pub fn parse_sql_type(t: &sqlparser::ast::DataType) -> Result<DataType> {
    use sqlparser::ast::{DataType as S, ExactNumberInfo};
    Ok(match t {
        S::Boolean | S::Bool => DataType::Boolean,
        S::TinyInt(_) => DataType::Int8,
        S::SmallInt(_) | S::Int2(_) => DataType::Int16,
        S::Int(_) | S::Integer(_) | S::Int4(_) => DataType::Int32,
        S::BigInt(_) | S::Int8(_) | S::Int64 => DataType::Int64,
        S::Real | S::Float4 | S::Float(_) => DataType::Float32,
        S::Double(_) | S::DoublePrecision | S::Float8 | S::Float64 => DataType::Float64,
        S::Decimal(info) | S::Numeric(info) | S::Dec(info) => match info {
            ExactNumberInfo::None => DataType::Decimal128(18, 3),
            ExactNumberInfo::Precision(p) => DataType::Decimal128(check_precision(*p)?, 0),
            ExactNumberInfo::PrecisionAndScale(p, s) => {
                let p = check_precision(*p)?;
                if *s < 0 || *s as u64 > p as u64 {
                    return Err(Error::Plan(format!("decimal scale {s} must be between 0 and the precision {p}")));
                }
                DataType::Decimal128(p, *s as i8)
            }
        },
        S::Varchar(_)
        | S::Text
        | S::String(_)
        | S::Char(_)
        | S::CharacterVarying(_)
        | S::Character(_)
        | S::Nvarchar(_) => DataType::Utf8,
        S::Date => DataType::Date32,
        S::Timestamp(_, tz) => match tz {
            sqlparser::ast::TimezoneInfo::WithTimeZone | sqlparser::ast::TimezoneInfo::Tz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            _ => DataType::Timestamp(TimeUnit::Microsecond, None),
        },
        S::Datetime(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        S::Interval { .. } => INTERVAL,
        S::Blob(_) | S::Bytea | S::Binary(_) | S::Varbinary(_) => DataType::Binary,
        S::Custom(name, args) => {
            let n = name.to_string().to_ascii_uppercase();
            match (n.as_str(), args.len()) {
                ("HUGEINT", 0) => DataType::Decimal128(38, 0),
                ("UBIGINT", 0) => DataType::UInt64,
                ("UINTEGER", 0) => DataType::UInt32,
                ("USMALLINT", 0) => DataType::UInt16,
                ("UTINYINT", 0) => DataType::UInt8,
                ("TIMESTAMP_NS", 0) => DataType::Timestamp(TimeUnit::Nanosecond, None),
                ("TIMESTAMP_MS", 0) => DataType::Timestamp(TimeUnit::Millisecond, None),
                ("TIMESTAMP_S", 0) => DataType::Timestamp(TimeUnit::Second, None),
                ("TIMESTAMPTZ", 0) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                _ => return Err(Error::NotSupported(format!("type {t}"))),
            }
        }
        other => return Err(Error::NotSupported(format!("type {other}"))),
    })
}

fn check_precision(p: u64) -> Result<u8> {
    if p == 0 || p > MAX_PRECISION as u64 {
        return Err(Error::Plan(format!("decimal precision {p} must be between 1 and 38")));
    }
    Ok(p as u8)
}

/// The type named in a pipeline file's declared schema (`"BIGINT"`, `"DECIMAL(15,2)"`, ...).
pub fn parse_type_name(name: &str) -> Result<DataType> {
    let sql = format!("SELECT CAST(NULL AS {name})");
    let dialect = sqlparser::dialect::DuckDbDialect {};
    let bad = || Error::Config(format!("unknown type '{name}'"));
    let stmts = sqlparser::parser::Parser::parse_sql(&dialect, &sql).map_err(|_| bad())?;
    if let Some(sqlparser::ast::Statement::Query(q)) = stmts.first() {
        if let sqlparser::ast::SetExpr::Select(s) = q.body.as_ref() {
            if let Some(sqlparser::ast::SelectItem::UnnamedExpr(sqlparser::ast::Expr::Cast { data_type, .. })) =
                s.projection.first()
            {
                return parse_sql_type(data_type).map_err(|_| bad());
            }
        }
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;

    #[test]
    fn decimal_rules_match_duckdb() {
        let d = |p, s| Decimal128(p, s);
        let res = |op, a, b| arithmetic_types(op, &a, &b).unwrap().2;
        assert_eq!(res(BinaryOp::Minus, Int32, d(15, 2)), d(16, 2));
        assert_eq!(res(BinaryOp::Plus, Int64, d(15, 2)), d(22, 2));
        assert_eq!(res(BinaryOp::Plus, d(18, 2), d(18, 2)), d(19, 2));
        assert_eq!(res(BinaryOp::Plus, d(10, 2), d(18, 9)), d(19, 9));
        assert_eq!(res(BinaryOp::Multiply, d(15, 2), d(15, 2)), d(18, 4));
        assert_eq!(res(BinaryOp::Multiply, d(10, 2), d(18, 9)), d(18, 11));
        assert_eq!(res(BinaryOp::Multiply, d(18, 2), d(20, 2)), d(38, 4));
        assert_eq!(res(BinaryOp::Multiply, d(15, 2), Int32), d(18, 2));
        assert_eq!(res(BinaryOp::Multiply, Int64, d(2, 1)), d(21, 1));
        assert_eq!(res(BinaryOp::Modulo, d(15, 2), d(15, 3)), d(16, 3));
        assert_eq!(res(BinaryOp::Modulo, d(15, 2), Int32), d(15, 2));
        assert_eq!(res(BinaryOp::Divide, d(15, 2), d(15, 2)), Float64);
        assert_eq!(res(BinaryOp::Plus, Float32, Int32), Float32);
        assert_eq!(res(BinaryOp::Plus, Int8, Int16), Int16);
        assert_eq!(common_type(&Int32, &d(2, 1)), Some(d(11, 1)));
    }

    #[test]
    fn intervals() {
        let i = |m, d, n| Some(IntervalMonthDayNano::new(m, d, n));
        assert_eq!(parse_interval("90", Some("day")), i(0, 90, 0));
        assert_eq!(parse_interval("3", Some("MONTH")), i(3, 0, 0));
        assert_eq!(parse_interval("1", Some("year")), i(12, 0, 0));
        assert_eq!(parse_interval("1 year 2 months", None), i(14, 0, 0));
        assert_eq!(parse_interval("3days", None), i(0, 3, 0));
        assert_eq!(parse_interval("1 day 02:00:00", None), i(0, 1, 7_200_000_000_000));
        assert_eq!(parse_interval("-2 hours", None), i(0, 0, -7_200_000_000_000));
        assert_eq!(parse_interval("1.5 days", None), i(0, 1, 43_200_000_000_000));
        assert_eq!(parse_interval("3 fortnights", None), None);
        assert_eq!(parse_interval("", None), None);
        let t = |op, a: DataType, b: DataType| arithmetic_types(op, &a, &b).map(|t| t.2);
        assert_eq!(t(BinaryOp::Minus, Date32, INTERVAL), Some(TIMESTAMP));
        assert_eq!(t(BinaryOp::Plus, Date32, Int32), Some(Date32));
        assert_eq!(t(BinaryOp::Minus, Date32, Date32), Some(Int64));
        assert_eq!(t(BinaryOp::Plus, Date32, Date32), None);
        assert_eq!(t(BinaryOp::Multiply, INTERVAL, Int32), Some(INTERVAL));
    }
}

/// `e` (of its type in `schema`) as `to`: a constant is cast now, anything else gets a cast.
pub(crate) fn coerce(e: super::Expr, schema: &arrow::datatypes::Schema, to: &DataType) -> Result<super::Expr> {
    let from = e.data_type(schema);
    if &from == to {
        return Ok(e);
    }
    if let super::Expr::Literal(a) = &e {
        return cast_sql(a, to).map(super::Expr::Literal).map_err(|err| Error::Plan(err.to_string()));
    }
    Ok(super::Expr::Cast { expr: Box::new(e), to: to.clone() })
}

/// The comparison `l op r`, both sides cast to the type they compare in; `mismatch` makes the
/// error for two types that do not compare. A string constant next to a date, timestamp, number
/// or boolean is read as that type, as in DuckDB (`l_shipdate < '1995-01-01'`).
pub(crate) fn comparison(
    op: BinaryOp,
    l: super::Expr,
    r: super::Expr,
    schema: &arrow::datatypes::Schema,
    mismatch: impl Fn(&DataType, &DataType) -> Error,
) -> Result<super::Expr> {
    use super::Expr;
    let (lt, rt) = (l.data_type(schema), r.data_type(schema));
    let (l, r) = match (&l, &r) {
        (Expr::Literal(_), _) if lt == DataType::Utf8 && rt != DataType::Utf8 && rt != DataType::Null => {
            (coerce(l, schema, &rt).map_err(|_| mismatch(&lt, &rt))?, r)
        }
        (_, Expr::Literal(_)) if rt == DataType::Utf8 && lt != DataType::Utf8 && lt != DataType::Null => {
            let r = coerce(r, schema, &lt).map_err(|_| mismatch(&lt, &rt))?;
            (l, r)
        }
        _ => (l, r),
    };
    let (lt, rt) = (l.data_type(schema), r.data_type(schema));
    let t = common_type(&lt, &rt).ok_or_else(|| mismatch(&lt, &rt))?;
    let t = if t == DataType::Null { DataType::Boolean } else { t };
    Ok(Expr::Binary {
        op,
        left: Box::new(coerce(l, schema, &t)?),
        right: Box::new(coerce(r, schema, &t)?),
        data_type: DataType::Boolean,
    })
}
