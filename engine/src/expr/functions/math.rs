//! Number functions. Types follow DuckDB: `round` and `ceil`/`floor` keep a decimal a decimal,
//! `sqrt`, `ln`, `exp`, `log10` and `power` return a DOUBLE.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::kernels::{cmp, numeric, zip::zip};
use arrow::datatypes::{DataType, Decimal128Type, Float32Type, Float64Type};

use super::{Arg, Call, FunctionDef, Group, Typing};
use crate::error::{Error, Result};
use crate::expr::types::{self, is_numeric, sql_type_name};
use crate::expr::Expr;

pub(super) const ALL: &[&FunctionDef] = &[&ABS, &ROUND, &CEIL, &FLOOR, &SQRT, &POWER, &LN, &EXP, &LOG10];

/// One number, as a DOUBLE.
const NUMBER: &[Arg] = &[Arg::Number];

static ABS: FunctionDef = FunctionDef {
    name: "abs",
    aliases: &[],
    signature: "abs(x)",
    doc: "the absolute value of x, of x's type",
    group: Group::Number,
    typing: Typing::Custom(|call: &mut Call| {
        call.arity(1, 1)?;
        match call.ty(0) {
            t if is_numeric(&t) => Ok(t),
            t => Err(Error::Plan(format!("abs() needs a number, got {}", sql_type_name(&t)))),
        }
    }),
    kernel: |a, _| {
        let a = &a[0];
        let zero = types::cast_sql(&(Arc::new(Int64Array::from(vec![0])) as ArrayRef), a.data_type())?;
        let negative = cmp::lt(a, &arrow::array::Scalar::new(zero))?;
        let negated = numeric::neg(a.as_ref())?;
        Ok(zip(&negative, &negated, a)?)
    },
    infallible: false,
};

static ROUND: FunctionDef = FunctionDef {
    name: "round",
    aliases: &[],
    signature: "round(x[, digits])",
    doc: "x rounded half away from zero to digits places (default 0); a decimal keeps at most digits places",
    group: Group::Number,
    typing: Typing::Custom(|call: &mut Call| {
        call.arity(1, 2)?;
        if call.args.len() == 1 {
            call.args.push(Expr::Literal(Arc::new(Int64Array::from(vec![0]))));
        }
        call.integer(1)?;
        let Expr::Literal(digits) = &call.args[1] else {
            return Err(Error::NotSupported("round() with a non-constant number of digits".into()));
        };
        let digits = digits.as_primitive::<arrow::datatypes::Int64Type>();
        let n = digits.is_valid(0).then(|| digits.value(0));
        match (call.ty(0), n) {
            (DataType::Decimal128(p, s), Some(n)) if n < s as i64 => Ok(DataType::Decimal128(p, n.max(0) as i8)),
            (t, _) if is_numeric(&t) => Ok(t),
            (t, _) => Err(Error::Plan(format!("round() needs a number, got {}", sql_type_name(&t)))),
        }
    }),
    kernel: round,
    infallible: false,
};

static CEIL: FunctionDef = FunctionDef {
    name: "ceil",
    aliases: &["ceiling"],
    signature: "ceil(x)",
    doc: "the smallest whole number not below x (a decimal gets scale 0)",
    group: Group::Number,
    typing: Typing::Custom(ceil_floor_type),
    kernel: |a, t| ceil_floor(&a[0], true, t),
    infallible: false,
};

static FLOOR: FunctionDef = FunctionDef {
    name: "floor",
    aliases: &[],
    signature: "floor(x)",
    doc: "the largest whole number not above x (a decimal gets scale 0)",
    group: Group::Number,
    typing: Typing::Custom(ceil_floor_type),
    kernel: |a, t| ceil_floor(&a[0], false, t),
    infallible: false,
};

static SQRT: FunctionDef = FunctionDef {
    name: "sqrt",
    aliases: &[],
    signature: "sqrt(x)",
    doc: "the square root of x (NaN below 0)",
    group: Group::Number,
    typing: Typing::Args { args: NUMBER, optional: 0, returns: DataType::Float64 },
    kernel: |a, _| float_unary(&a[0], f64::sqrt),
    infallible: false,
};

static POWER: FunctionDef = FunctionDef {
    name: "power",
    aliases: &["pow"],
    signature: "power(x, y)",
    doc: "x to the power y",
    group: Group::Number,
    typing: Typing::Args { args: &[Arg::Number, Arg::Number], optional: 0, returns: DataType::Float64 },
    kernel: |a, _| {
        let x = arrow::compute::cast(&a[0], &DataType::Float64)?;
        let y = arrow::compute::cast(&a[1], &DataType::Float64)?;
        Ok(Arc::new(arrow::compute::binary::<_, _, _, Float64Type>(
            x.as_primitive::<Float64Type>(),
            y.as_primitive::<Float64Type>(),
            f64::powf,
        )?))
    },
    infallible: false,
};

static LN: FunctionDef = FunctionDef {
    name: "ln",
    aliases: &[],
    signature: "ln(x)",
    doc: "the natural logarithm of x",
    group: Group::Number,
    typing: Typing::Args { args: NUMBER, optional: 0, returns: DataType::Float64 },
    kernel: |a, _| float_unary(&a[0], f64::ln),
    infallible: false,
};

static EXP: FunctionDef = FunctionDef {
    name: "exp",
    aliases: &[],
    signature: "exp(x)",
    doc: "e to the power x",
    group: Group::Number,
    typing: Typing::Args { args: NUMBER, optional: 0, returns: DataType::Float64 },
    kernel: |a, _| float_unary(&a[0], f64::exp),
    infallible: false,
};

static LOG10: FunctionDef = FunctionDef {
    name: "log10",
    aliases: &["log"],
    signature: "log10(x)",
    doc: "the base-10 logarithm of x",
    group: Group::Number,
    typing: Typing::Args { args: NUMBER, optional: 0, returns: DataType::Float64 },
    kernel: |a, _| float_unary(&a[0], f64::log10),
    infallible: false,
};

/// `ceil`/`floor`: a decimal keeps its precision with scale 0, another number its type, a null
/// is a DOUBLE.
fn ceil_floor_type(call: &mut Call) -> Result<DataType> {
    call.arity(1, 1)?;
    match call.ty(0) {
        DataType::Decimal128(p, _) => Ok(DataType::Decimal128(p, 0)),
        t if is_numeric(&t) => Ok(t),
        DataType::Null => Ok(DataType::Float64),
        t => Err(Error::Plan(format!("{}() needs a number, got {}", call.name, sql_type_name(&t)))),
    }
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
