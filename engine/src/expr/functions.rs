//! Scalar functions: strings (`lower`, `upper`, `length`, `substr`, `trim`, `concat`, `replace`,
//! `position`, `left`, `right`, `starts_with`, ...), numbers (`abs`, `round`, `ceil`, `floor`,
//! `sqrt`, `power`, `ln`, `exp`, `log10`), `coalesce`, `greatest`/`least`, and dates (`extract`,
//! `date_trunc`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray, StringBuilder};
use arrow::compute::kernels::{cmp, numeric, zip::zip};
use arrow::compute::DatePart;
use arrow::datatypes::{DataType, Decimal128Type, Float32Type, Float64Type};

use super::{types, wrap, Value};
use crate::error::{Error, Result};

/// A scalar function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `lower(s)`
    Lower,
    /// `upper(s)`
    Upper,
    /// `length(s)`: characters, not bytes.
    Length,
    /// `substr(s, start[, len])`: 1-based; a negative start counts from the end.
    Substr,
    /// `trim(s)`
    Trim,
    /// `ltrim(s)`
    Ltrim,
    /// `rtrim(s)`
    Rtrim,
    /// `concat(a, b, ...)`: nulls are skipped.
    Concat,
    /// `coalesce(a, b, ...)`
    Coalesce,
    /// `abs(x)`
    Abs,
    /// `hash(x)`: a non-negative BIGINT from the value's text (FNV-1a), stable across runs and
    /// machines; units of work use it for buckets. Not DuckDB's `hash`.
    Hash,
    /// `round(x[, digits])`: half away from zero.
    Round,
    /// `extract(part FROM d)` / `date_part('part', d)`.
    Extract(DatePartKind),
    /// `date_trunc('part', d)`: the timestamp at the start of the part (DuckDB returns a TIMESTAMP
    /// for dates too).
    DateTrunc(DatePartKind),
    /// `replace(s, from, to)`: every occurrence.
    Replace,
    /// `position(needle IN s)` / `strpos(s, needle)`: 1-based character position, 0 if absent.
    Position,
    /// `greatest(a, b, ...)`: the largest non-null argument.
    Greatest,
    /// `least(a, b, ...)`: the smallest non-null argument.
    Least,
    /// `ceil(x)`
    Ceil,
    /// `floor(x)`
    Floor,
    /// `sqrt(x)`
    Sqrt,
    /// `power(x, y)`
    Power,
    /// `ln(x)`
    Ln,
    /// `exp(x)`
    Exp,
    /// `log10(x)`
    Log10,
    /// `left(s, n)`: the first `n` characters.
    Left,
    /// `right(s, n)`: the last `n` characters.
    Right,
    /// `starts_with(s, prefix)`
    StartsWith,
    /// `ends_with(s, suffix)`
    EndsWith,
    /// `contains(s, needle)`
    Contains,
    /// `reverse(s)`
    Reverse,
    /// `TRY_CAST(x AS t)`: NULL where a value does not convert.
    TryCast,
    /// An average from an exact sum and a count (a two-phase aggregation's last step): the sum's
    /// unscaled value over `count * 10^scale`, one rounding, as the one-phase average divides.
    AvgDivide,
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

impl Function {
    /// Looks a function up by its SQL name.
    pub fn by_name(name: &str) -> Option<Function> {
        Some(match name.to_ascii_lowercase().as_str() {
            "lower" | "lcase" => Function::Lower,
            "upper" | "ucase" => Function::Upper,
            "length" | "char_length" | "character_length" | "len" => Function::Length,
            "substr" | "substring" => Function::Substr,
            "trim" => Function::Trim,
            "ltrim" => Function::Ltrim,
            "rtrim" => Function::Rtrim,
            "concat" => Function::Concat,
            "coalesce" | "ifnull" => Function::Coalesce,
            "abs" => Function::Abs,
            "hash" => Function::Hash,
            "round" => Function::Round,
            "replace" => Function::Replace,
            "strpos" | "instr" | "position" => Function::Position,
            "greatest" => Function::Greatest,
            "least" => Function::Least,
            "ceil" | "ceiling" => Function::Ceil,
            "floor" => Function::Floor,
            "sqrt" => Function::Sqrt,
            "power" | "pow" => Function::Power,
            "ln" => Function::Ln,
            "exp" => Function::Exp,
            "log10" | "log" => Function::Log10,
            "left" => Function::Left,
            "right" => Function::Right,
            "starts_with" | "prefix" => Function::StartsWith,
            "ends_with" | "suffix" => Function::EndsWith,
            "contains" => Function::Contains,
            "reverse" => Function::Reverse,
            _ => return None,
        })
    }

    /// The SQL name.
    pub fn name(&self) -> &'static str {
        match self {
            Function::Lower => "lower",
            Function::Upper => "upper",
            Function::Length => "length",
            Function::Substr => "substr",
            Function::Trim => "trim",
            Function::Ltrim => "ltrim",
            Function::Rtrim => "rtrim",
            Function::Concat => "concat",
            Function::Coalesce => "coalesce",
            Function::Abs => "abs",
            Function::Hash => "hash",
            Function::Round => "round",
            Function::Extract(_) => "extract",
            Function::DateTrunc(_) => "date_trunc",
            Function::Replace => "replace",
            Function::Position => "strpos",
            Function::Greatest => "greatest",
            Function::Least => "least",
            Function::Ceil => "ceil",
            Function::Floor => "floor",
            Function::Sqrt => "sqrt",
            Function::Power => "power",
            Function::Ln => "ln",
            Function::Exp => "exp",
            Function::Log10 => "log10",
            Function::Left => "left",
            Function::Right => "right",
            Function::StartsWith => "starts_with",
            Function::EndsWith => "ends_with",
            Function::Contains => "contains",
            Function::Reverse => "reverse",
            Function::TryCast => "try_cast",
            Function::AvgDivide => "avg",
        }
    }

    pub(super) fn evaluate(&self, args: &[Value], data_type: &DataType, rows: usize) -> Result<Value> {
        let scalar = args.iter().all(|a| a.is_scalar());
        let n = if scalar { 1 } else { rows };
        let arrays = args.iter().map(|a| a.clone().into_array(n)).collect::<Result<Vec<_>>>()?;
        let out: ArrayRef = match self {
            Function::Lower => map_str(&arrays[0], |s, out| out.push_str(&s.to_lowercase())),
            Function::Upper => map_str(&arrays[0], |s, out| out.push_str(&s.to_uppercase())),
            Function::Trim => map_str(&arrays[0], |s, out| out.push_str(s.trim_matches(' '))),
            Function::Ltrim => map_str(&arrays[0], |s, out| out.push_str(s.trim_start_matches(' '))),
            Function::Rtrim => map_str(&arrays[0], |s, out| out.push_str(s.trim_end_matches(' '))),
            Function::Length => {
                let s = arrays[0].as_string::<i32>();
                Arc::new(s.iter().map(|v| v.map(|v| v.chars().count() as i64)).collect::<Int64Array>())
            }
            Function::Substr => substr(&arrays)?,
            Function::Concat => concat_skip_nulls(&arrays, n),
            Function::Coalesce => {
                let mut acc = arrays[0].clone();
                for next in &arrays[1..] {
                    let present = arrow::compute::is_not_null(acc.as_ref())?;
                    acc = zip(&present, &acc, next)?;
                }
                acc
            }
            Function::Abs => {
                let a = &arrays[0];
                let zero = types::cast_sql(&(Arc::new(Int64Array::from(vec![0])) as ArrayRef), a.data_type())?;
                let negative = cmp::lt(a, &arrow::array::Scalar::new(zero))?;
                let negated = numeric::neg(a.as_ref())?;
                zip(&negative, &negated, a)?
            }
            Function::Round => round(&arrays, data_type)?,
            Function::Hash => stable_hash(&arrays[0])?,
            Function::Extract(part) => {
                let parts = arrow::compute::date_part(arrays[0].as_ref(), part.arrow())?;
                arrow::compute::cast(&parts, &DataType::Int64)?
            }
            Function::DateTrunc(part) => date_trunc(&arrays[0], *part, data_type)?,
            Function::Replace => {
                let (s, from, to) = (strings(&arrays[0]), strings(&arrays[1]), strings(&arrays[2]));
                let mut b = StringBuilder::with_capacity(s.len(), s.values().len());
                for i in 0..s.len() {
                    if s.is_null(i) || from.is_null(i) || to.is_null(i) {
                        b.append_null();
                    } else if from.value(i).is_empty() {
                        b.append_value(s.value(i));
                    } else {
                        b.append_value(s.value(i).replace(from.value(i), to.value(i)));
                    }
                }
                Arc::new(b.finish())
            }
            Function::Position => {
                let (s, needle) = (strings(&arrays[0]), strings(&arrays[1]));
                Arc::new(
                    (0..s.len())
                        .map(|i| {
                            (s.is_valid(i) && needle.is_valid(i)).then(|| {
                                let (s, needle) = (s.value(i), needle.value(i));
                                s.find(needle).map_or(0, |at| s[..at].chars().count() as i64 + 1)
                            })
                        })
                        .collect::<Int64Array>(),
                )
            }
            Function::Greatest | Function::Least => {
                let mut acc = arrays[0].clone();
                for next in &arrays[1..] {
                    // Nulls are skipped: take `next` where it is better or `acc` is null.
                    let better = if *self == Function::Greatest { cmp::gt(next, &acc)? } else { cmp::lt(next, &acc)? };
                    let better = arrow::compute::kernels::boolean::or_kleene(
                        &super::not_null_true(&better),
                        &arrow::compute::is_null(acc.as_ref())?,
                    )?;
                    acc = zip(&better, next, &acc)?;
                }
                acc
            }
            Function::Ceil | Function::Floor => ceil_floor(&arrays[0], *self == Function::Ceil, data_type)?,
            Function::Sqrt => float_unary(&arrays[0], f64::sqrt)?,
            Function::Ln => float_unary(&arrays[0], f64::ln)?,
            Function::Exp => float_unary(&arrays[0], f64::exp)?,
            Function::Log10 => float_unary(&arrays[0], f64::log10)?,
            Function::Power => {
                let x = arrow::compute::cast(&arrays[0], &DataType::Float64)?;
                let y = arrow::compute::cast(&arrays[1], &DataType::Float64)?;
                Arc::new(arrow::compute::binary::<_, _, _, Float64Type>(
                    x.as_primitive::<Float64Type>(),
                    y.as_primitive::<Float64Type>(),
                    f64::powf,
                )?)
            }
            Function::Left | Function::Right => {
                let (s, n) = (strings(&arrays[0]), arrow::compute::cast(&arrays[1], &DataType::Int64)?);
                let n = n.as_primitive::<arrow::datatypes::Int64Type>();
                let left = *self == Function::Left;
                let mut b = StringBuilder::with_capacity(s.len(), s.values().len());
                for i in 0..s.len() {
                    if s.is_null(i) || n.is_null(i) {
                        b.append_null();
                        continue;
                    }
                    let (text, k) = (s.value(i), n.value(i));
                    let chars = text.chars().count() as i64;
                    // A negative count keeps all but that many (DuckDB).
                    let take = if k >= 0 { k.min(chars) } else { (chars + k).max(0) } as usize;
                    let piece: String = if left {
                        text.chars().take(take).collect()
                    } else {
                        text.chars().skip(chars as usize - take).collect()
                    };
                    b.append_value(piece);
                }
                Arc::new(b.finish())
            }
            Function::StartsWith | Function::EndsWith | Function::Contains => {
                let (s, p) = (strings(&arrays[0]), strings(&arrays[1]));
                let test: fn(&str, &str) -> bool = match self {
                    Function::StartsWith => |s, p| s.starts_with(p),
                    Function::EndsWith => |s, p| s.ends_with(p),
                    _ => |s, p| s.contains(p),
                };
                Arc::new(
                    (0..s.len())
                        .map(|i| (s.is_valid(i) && p.is_valid(i)).then(|| test(s.value(i), p.value(i))))
                        .collect::<arrow::array::BooleanArray>(),
                )
            }
            Function::Reverse => map_str(&arrays[0], |s, out| out.extend(s.chars().rev())),
            Function::TryCast => {
                let options = arrow::compute::CastOptions { safe: true, ..Default::default() };
                arrow::compute::cast_with_options(&arrays[0], data_type, &options)?
            }
            Function::AvgDivide => avg_divide(&arrays[0], &arrays[1])?,
        };
        Ok(wrap(scalar, out))
    }
}

fn avg_divide(sum: &ArrayRef, count: &ArrayRef) -> Result<ArrayRef> {
    // Counts are whole numbers, however they are typed (a sum of counts is a decimal).
    let count = arrow::compute::cast(count, &DataType::Float64)?;
    let count = count.as_primitive::<Float64Type>();
    let n = sum.len();
    let out: arrow::array::Float64Array = match sum.data_type() {
        DataType::Decimal128(_, s) => {
            let sum = sum.as_primitive::<Decimal128Type>();
            let unit = 10f64.powi(*s as i32);
            (0..n)
                .map(|i| {
                    (sum.is_valid(i) && count.is_valid(i) && count.value(i) > 0.0)
                        .then(|| sum.value(i) as f64 / (count.value(i) * unit))
                })
                .collect()
        }
        _ => {
            let sum = arrow::compute::cast(sum, &DataType::Float64)?;
            let sum = sum.as_primitive::<Float64Type>();
            (0..n)
                .map(|i| {
                    (sum.is_valid(i) && count.is_valid(i) && count.value(i) > 0.0)
                        .then(|| sum.value(i) / count.value(i))
                })
                .collect()
        }
    };
    Ok(Arc::new(out))
}

fn strings(a: &ArrayRef) -> &StringArray {
    a.as_string::<i32>()
}

fn float_unary(a: &ArrayRef, f: fn(f64) -> f64) -> Result<ArrayRef> {
    let x = arrow::compute::cast(a, &DataType::Float64)?;
    Ok(Arc::new(x.as_primitive::<Float64Type>().unary::<_, Float64Type>(f)))
}

/// `ceil`/`floor`: floats stay floats, integers are unchanged, decimals keep their precision with
/// scale 0 (as DuckDB).
fn ceil_floor(a: &ArrayRef, ceil: bool, data_type: &DataType) -> Result<ArrayRef> {
    Ok(match a.data_type() {
        DataType::Float64 => {
            let f = if ceil { f64::ceil } else { f64::floor };
            Arc::new(a.as_primitive::<Float64Type>().unary::<_, Float64Type>(f))
        }
        DataType::Float32 => {
            let f = if ceil { f32::ceil } else { f32::floor };
            Arc::new(a.as_primitive::<Float32Type>().unary::<_, Float32Type>(f))
        }
        DataType::Decimal128(_, s) => {
            let unit = 10i128.pow(*s as u32);
            let out = a.as_primitive::<Decimal128Type>().unary::<_, Decimal128Type>(|v| {
                let (q, r) = (v.div_euclid(unit), v.rem_euclid(unit));
                if ceil && r != 0 {
                    q + 1
                } else {
                    q
                }
            });
            let (p, s) = match data_type {
                DataType::Decimal128(p, s) => (*p, *s),
                _ => (38, 0),
            };
            Arc::new(out.with_precision_and_scale(p, s)?)
        }
        _ => a.clone(),
    })
}

/// `date_trunc`: the start of the part that holds each value, as a timestamp of `out`'s unit.
fn date_trunc(a: &ArrayRef, part: DatePartKind, out: &DataType) -> Result<ArrayRef> {
    use chrono::{Datelike, NaiveDate};
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    let micros = arrow::compute::cast(&arrow::compute::cast(a, &super::types::TIMESTAMP)?, &DataType::Int64)?;
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
    let as_timestamp = arrow::compute::cast(&truncated, &super::types::TIMESTAMP)?;
    Ok(arrow::compute::cast(&as_timestamp, out)?)
}

fn stable_hash(a: &ArrayRef) -> Result<ArrayRef> {
    fn fnv1a(bytes: &[u8]) -> i64 {
        let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
        (h >> 1) as i64
    }
    let text = arrow::compute::cast(a, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    // Nulls hash to a value of their own, so every row has a bucket.
    Ok(Arc::new(text.iter().map(|v| Some(v.map_or(fnv1a(&[0xff]), |v| fnv1a(v.as_bytes())))).collect::<Int64Array>()))
}

fn map_str(a: &ArrayRef, f: impl Fn(&str, &mut String)) -> ArrayRef {
    let s = a.as_string::<i32>();
    let mut b = StringBuilder::with_capacity(s.len(), s.values().len());
    let mut buf = String::new();
    for v in s.iter() {
        match v {
            Some(v) => {
                buf.clear();
                f(v, &mut buf);
                b.append_value(&buf);
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

/// `a || b`: null when either is null.
pub(super) fn concat_strict(a: &ArrayRef, b: &ArrayRef) -> Result<ArrayRef> {
    let (a, b) = (a.as_string::<i32>(), b.as_string::<i32>());
    Ok(Arc::new(arrow::compute::kernels::concat_elements::concat_elements_utf8(a, b)?))
}

fn concat_skip_nulls(arrays: &[ArrayRef], rows: usize) -> ArrayRef {
    let strings: Vec<&StringArray> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
    let mut b = StringBuilder::with_capacity(rows, strings.iter().map(|s| s.values().len()).sum());
    let mut buf = String::new();
    for row in 0..rows {
        buf.clear();
        for s in &strings {
            if s.is_valid(row) {
                buf.push_str(s.value(row));
            }
        }
        b.append_value(&buf);
    }
    Arc::new(b.finish())
}

fn substr(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let s = arrays[0].as_string::<i32>();
    let start = arrow::compute::cast(&arrays[1], &DataType::Int64)?;
    let start = start.as_primitive::<arrow::datatypes::Int64Type>();
    let len = match arrays.get(2) {
        Some(l) => Some(arrow::compute::cast(l, &DataType::Int64)?),
        None => None,
    };
    let len = len.as_ref().map(|l| l.as_primitive::<arrow::datatypes::Int64Type>());
    let mut b = StringBuilder::with_capacity(s.len(), s.values().len());
    for i in 0..s.len() {
        if s.is_null(i) || start.is_null(i) || len.is_some_and(|l| l.is_null(i)) {
            b.append_null();
            continue;
        }
        let text = s.value(i);
        let chars = text.chars().count() as i64;
        let from = start.value(i);
        // DuckDB: positions are 1-based; a negative start counts from the end; start 0 is the
        // position before the first character.
        let begin = if from > 0 {
            from - 1
        } else if from < 0 {
            chars + from
        } else {
            -1
        };
        let end = match len {
            Some(l) => begin.saturating_add(l.value(i)),
            None => chars,
        };
        let (lo, hi) = (begin.max(0), end.min(chars));
        if lo >= hi {
            b.append_value("");
        } else {
            let piece: String = text.chars().skip(lo as usize).take((hi - lo) as usize).collect();
            b.append_value(piece);
        }
    }
    Ok(Arc::new(b.finish()))
}

fn round(arrays: &[ArrayRef], data_type: &DataType) -> Result<ArrayRef> {
    let a = &arrays[0];
    let digits: i64 = match arrays.get(1) {
        Some(d) => {
            let d = arrow::compute::cast(d, &DataType::Int64)?;
            let d = d.as_primitive::<arrow::datatypes::Int64Type>();
            if d.is_null(0) {
                return Ok(arrow::array::new_null_array(data_type, a.len()));
            }
            d.value(0)
        }
        None => 0,
    };
    Ok(match a.data_type() {
        DataType::Float64 => {
            let f = 10f64.powi(digits as i32);
            Arc::new(a.as_primitive::<Float64Type>().unary::<_, Float64Type>(|v| (v * f).round() / f))
        }
        DataType::Float32 => {
            let f = 10f32.powi(digits as i32);
            Arc::new(a.as_primitive::<Float32Type>().unary::<_, Float32Type>(|v| (v * f).round() / f))
        }
        DataType::Decimal128(p, s) => {
            let (p, s) = (*p, *s as i64);
            if digits >= s {
                a.clone()
            } else {
                // Round half away from zero to `digits` places, then store at the result's scale.
                let drop = (s - digits) as u32;
                let unit = 10i128.pow(drop);
                let target_scale = digits.max(0);
                let rescale = 10i128.pow((s - target_scale) as u32);
                let rounded = a.as_primitive::<Decimal128Type>().unary::<_, Decimal128Type>(|v| {
                    let q = v / unit;
                    let r = v % unit;
                    let q = if r.abs() * 2 >= unit { q + r.signum() } else { q };
                    q * unit / rescale
                });
                Arc::new(rounded.with_precision_and_scale(p, target_scale as i8)?)
            }
        }
        _ if a.data_type().is_integer() => a.clone(),
        other => return Err(Error::Execution(format!("round() does not take {other}"))),
    })
}
