//! Functions over values of any type: `coalesce`, `nullif`, `greatest`, `least`, `hash`; and two
//! the planner calls itself: `TRY_CAST` and the average of a two-phase aggregation.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::kernels::{cmp, zip::zip};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type};

use super::{Arg, Call, FunctionDef, Group, Typing};
use crate::error::{Error, Result};
use crate::expr::{types, BinaryOp};

pub(super) const ALL: &[&FunctionDef] = &[&COALESCE, &NULLIF, &GREATEST, &LEAST, &HASH, &TRY_CAST, &AVG_DIVIDE];

pub(crate) static COALESCE: FunctionDef = FunctionDef {
    name: "coalesce",
    aliases: &["ifnull"],
    signature: "coalesce(a, b, ...)",
    doc: "the first argument that is not null, in the arguments' common type",
    group: Group::General,
    typing: Typing::Common,
    kernel: |a, _| {
        let mut acc = a[0].clone();
        for next in &a[1..] {
            let present = arrow::compute::is_not_null(acc.as_ref())?;
            acc = zip(&present, &acc, next)?;
        }
        Ok(acc)
    },
    infallible: true,
};

static NULLIF: FunctionDef = FunctionDef {
    name: "nullif",
    aliases: &[],
    signature: "nullif(a, b)",
    doc: "null if a = b, else a",
    group: Group::General,
    typing: Typing::Custom(|call: &mut Call| {
        call.arity(2, 2)?;
        // Kept as `a` and the comparison `a = b`, which casts as `=` does.
        let (a, b) = (call.args[0].clone(), call.args[1].clone());
        let t = call.ty(0);
        let equal = types::comparison(BinaryOp::Eq, a, b, call.schema, |l, r| {
            Error::Plan(format!(
                "cannot compare {} with {} ({} vs {})",
                types::sql_type_name(l),
                types::sql_type_name(r),
                call.text(0),
                call.text(1)
            ))
        })?;
        call.args[1] = equal;
        Ok(t)
    }),
    kernel: |a, _| Ok(arrow::compute::nullif(&a[0], a[1].as_boolean())?),
    infallible: false,
};

pub(crate) static GREATEST: FunctionDef = FunctionDef {
    name: "greatest",
    aliases: &[],
    signature: "greatest(a, b, ...)",
    doc: "the largest argument that is not null",
    group: Group::General,
    typing: Typing::Common,
    kernel: |a, _| extreme(a, true),
    infallible: false,
};

pub(crate) static LEAST: FunctionDef = FunctionDef {
    name: "least",
    aliases: &[],
    signature: "least(a, b, ...)",
    doc: "the smallest argument that is not null",
    group: Group::General,
    typing: Typing::Common,
    kernel: |a, _| extreme(a, false),
    infallible: false,
};

static HASH: FunctionDef = FunctionDef {
    name: "hash",
    aliases: &[],
    signature: "hash(x)",
    doc: "a non-negative BIGINT from x's text (FNV-1a), the same on every run and machine; \
          units of work use it for buckets (not DuckDB's hash)",
    group: Group::General,
    typing: Typing::Args { args: &[Arg::Any], optional: 0, returns: DataType::Int64 },
    kernel: |a, _| stable_hash(&a[0]),
    infallible: false,
};

/// `TRY_CAST(x AS t)`: null where a value does not convert. Planned from its syntax.
pub(crate) static TRY_CAST: FunctionDef = FunctionDef {
    name: "try_cast",
    aliases: &[],
    signature: "try_cast(x AS type)",
    doc: "x as type, null where a value does not convert",
    group: Group::Internal,
    typing: Typing::Custom(|_| Err(Error::Plan("try_cast is planned from its syntax".into()))),
    kernel: |a, t| {
        let options = arrow::compute::CastOptions { safe: true, ..Default::default() };
        Ok(arrow::compute::cast_with_options(&a[0], t, &options)?)
    },
    infallible: false,
};

/// An average from an exact sum and a count (a two-phase aggregation's last step): the sum's
/// unscaled value over `count * 10^scale`, one rounding, as the one-phase average divides.
pub(crate) static AVG_DIVIDE: FunctionDef = FunctionDef {
    name: "avg",
    aliases: &[],
    signature: "avg(sum, count)",
    doc: "an average from its sum and count",
    group: Group::Internal,
    typing: Typing::Custom(|_| Ok(DataType::Float64)),
    kernel: |a, _| avg_divide(&a[0], &a[1]),
    infallible: false,
};

/// `greatest` (`max`) or `least`: nulls are skipped.
fn extreme(a: &[ArrayRef], max: bool) -> Result<ArrayRef> {
    let mut acc = a[0].clone();
    for next in &a[1..] {
        // Take `next` where it is better or `acc` is null.
        let better = if max { cmp::gt(next, &acc)? } else { cmp::lt(next, &acc)? };
        let better = arrow::compute::kernels::boolean::or_kleene(
            &crate::expr::not_null_true(&better),
            &arrow::compute::is_null(acc.as_ref())?,
        )?;
        acc = zip(&better, next, &acc)?;
    }
    Ok(acc)
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
