//! String functions. Positions and lengths count characters, not bytes, and start at 1, as in
//! DuckDB.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Int64Type};

use super::{Arg, Call, FunctionDef, Group, Typing};
use crate::error::Result;

pub(super) const ALL: &[&FunctionDef] = &[
    &LOWER,
    &UPPER,
    &LENGTH,
    &SUBSTR,
    &TRIM,
    &LTRIM,
    &RTRIM,
    &CONCAT,
    &REPLACE,
    &STRPOS,
    &LEFT,
    &RIGHT,
    &STARTS_WITH,
    &ENDS_WITH,
    &CONTAINS,
    &REVERSE,
];

/// One string argument.
const STRING: &[Arg] = &[Arg::String];
/// Two string arguments.
const TWO_STRINGS: &[Arg] = &[Arg::String, Arg::String];

static LOWER: FunctionDef = FunctionDef {
    name: "lower",
    aliases: &["lcase"],
    signature: "lower(s)",
    doc: "s in lower case",
    group: Group::String,
    typing: Typing::Args { args: STRING, optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| Ok(map_str(&a[0], |s, out| out.push_str(&s.to_lowercase()))),
    infallible: true,
};

static UPPER: FunctionDef = FunctionDef {
    name: "upper",
    aliases: &["ucase"],
    signature: "upper(s)",
    doc: "s in upper case",
    group: Group::String,
    typing: Typing::Args { args: STRING, optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| Ok(map_str(&a[0], |s, out| out.push_str(&s.to_uppercase()))),
    infallible: true,
};

static LENGTH: FunctionDef = FunctionDef {
    name: "length",
    aliases: &["char_length", "character_length", "len"],
    signature: "length(s)",
    doc: "the number of characters of s",
    group: Group::String,
    typing: Typing::Args { args: STRING, optional: 0, returns: DataType::Int64 },
    kernel: |a, _| {
        let s = a[0].as_string::<i32>();
        Ok(Arc::new(s.iter().map(|v| v.map(|v| v.chars().count() as i64)).collect::<Int64Array>()))
    },
    infallible: true,
};

static SUBSTR: FunctionDef = FunctionDef {
    name: "substr",
    aliases: &["substring"],
    signature: "substr(s, start[, length])",
    doc: "the characters of s from start (1 is the first; a negative start counts from the end), \
          length of them or all that follow; also SUBSTRING(s FROM start FOR length)",
    group: Group::String,
    typing: Typing::Args { args: &[Arg::String, Arg::Integer, Arg::Integer], optional: 1, returns: DataType::Utf8 },
    kernel: |a, _| substr(a),
    infallible: false,
};

static TRIM: FunctionDef = FunctionDef {
    name: "trim",
    aliases: &[],
    signature: "trim(s)",
    doc: "s without the spaces at its start and end",
    group: Group::String,
    typing: Typing::Args { args: STRING, optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| Ok(map_str(&a[0], |s, out| out.push_str(s.trim_matches(' ')))),
    infallible: true,
};

static LTRIM: FunctionDef = FunctionDef {
    name: "ltrim",
    aliases: &[],
    signature: "ltrim(s)",
    doc: "s without the spaces at its start",
    group: Group::String,
    typing: Typing::Args { args: STRING, optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| Ok(map_str(&a[0], |s, out| out.push_str(s.trim_start_matches(' ')))),
    infallible: true,
};

static RTRIM: FunctionDef = FunctionDef {
    name: "rtrim",
    aliases: &[],
    signature: "rtrim(s)",
    doc: "s without the spaces at its end",
    group: Group::String,
    typing: Typing::Args { args: STRING, optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| Ok(map_str(&a[0], |s, out| out.push_str(s.trim_end_matches(' ')))),
    infallible: true,
};

static CONCAT: FunctionDef = FunctionDef {
    name: "concat",
    aliases: &[],
    signature: "concat(a, b, ...)",
    doc: "the arguments' text one after the other, nulls left out (`a || b` is null if either is)",
    group: Group::String,
    typing: Typing::Custom(|call: &mut Call| {
        call.some()?;
        for i in 0..call.args.len() {
            call.text_of(i)?;
        }
        Ok(DataType::Utf8)
    }),
    kernel: |a, _| Ok(concat_skip_nulls(a)),
    infallible: true,
};

static REPLACE: FunctionDef = FunctionDef {
    name: "replace",
    aliases: &[],
    signature: "replace(s, from, to)",
    doc: "s with every occurrence of from replaced by to",
    group: Group::String,
    typing: Typing::Args { args: &[Arg::String, Arg::String, Arg::String], optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| {
        let (s, from, to) = (a[0].as_string::<i32>(), a[1].as_string::<i32>(), a[2].as_string::<i32>());
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
        Ok(Arc::new(b.finish()))
    },
    infallible: true,
};

static STRPOS: FunctionDef = FunctionDef {
    name: "strpos",
    aliases: &["instr", "position"],
    signature: "strpos(s, needle)",
    doc: "the position of needle's first occurrence in s, 0 if there is none; also POSITION(needle IN s)",
    group: Group::String,
    typing: Typing::Args { args: TWO_STRINGS, optional: 0, returns: DataType::Int64 },
    kernel: |a, _| {
        let (s, needle) = (a[0].as_string::<i32>(), a[1].as_string::<i32>());
        let found = |i: usize| {
            let (s, needle) = (s.value(i), needle.value(i));
            s.find(needle).map_or(0, |at| s[..at].chars().count() as i64 + 1)
        };
        Ok(Arc::new(
            (0..s.len()).map(|i| (s.is_valid(i) && needle.is_valid(i)).then(|| found(i))).collect::<Int64Array>(),
        ))
    },
    infallible: true,
};

static LEFT: FunctionDef = FunctionDef {
    name: "left",
    aliases: &[],
    signature: "left(s, n)",
    doc: "the first n characters of s (a negative n: all but the last -n)",
    group: Group::String,
    typing: Typing::Args { args: &[Arg::String, Arg::Integer], optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| left_right(a, true),
    infallible: false,
};

static RIGHT: FunctionDef = FunctionDef {
    name: "right",
    aliases: &[],
    signature: "right(s, n)",
    doc: "the last n characters of s (a negative n: all but the first -n)",
    group: Group::String,
    typing: Typing::Args { args: &[Arg::String, Arg::Integer], optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| left_right(a, false),
    infallible: false,
};

static STARTS_WITH: FunctionDef = FunctionDef {
    name: "starts_with",
    aliases: &["prefix"],
    signature: "starts_with(s, prefix)",
    doc: "whether s starts with prefix",
    group: Group::String,
    typing: Typing::Args { args: TWO_STRINGS, optional: 0, returns: DataType::Boolean },
    kernel: |a, _| Ok(test_str(a, |s, p| s.starts_with(p))),
    infallible: false,
};

static ENDS_WITH: FunctionDef = FunctionDef {
    name: "ends_with",
    aliases: &["suffix"],
    signature: "ends_with(s, suffix)",
    doc: "whether s ends with suffix",
    group: Group::String,
    typing: Typing::Args { args: TWO_STRINGS, optional: 0, returns: DataType::Boolean },
    kernel: |a, _| Ok(test_str(a, |s, p| s.ends_with(p))),
    infallible: false,
};

static CONTAINS: FunctionDef = FunctionDef {
    name: "contains",
    aliases: &[],
    signature: "contains(s, needle)",
    doc: "whether needle occurs in s",
    group: Group::String,
    typing: Typing::Args { args: TWO_STRINGS, optional: 0, returns: DataType::Boolean },
    kernel: |a, _| Ok(test_str(a, |s, p| s.contains(p))),
    infallible: false,
};

static REVERSE: FunctionDef = FunctionDef {
    name: "reverse",
    aliases: &[],
    signature: "reverse(s)",
    doc: "the characters of s in reverse order",
    group: Group::String,
    typing: Typing::Args { args: STRING, optional: 0, returns: DataType::Utf8 },
    kernel: |a, _| Ok(map_str(&a[0], |s, out| out.extend(s.chars().rev()))),
    infallible: false,
};

/// Each string of `a` through `f`, which appends its result; nulls stay null.
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

/// `test(s, p)` for each pair of strings; null where either is.
fn test_str(a: &[ArrayRef], test: fn(&str, &str) -> bool) -> ArrayRef {
    let (s, p) = (a[0].as_string::<i32>(), a[1].as_string::<i32>());
    Arc::new(
        (0..s.len())
            .map(|i| (s.is_valid(i) && p.is_valid(i)).then(|| test(s.value(i), p.value(i))))
            .collect::<BooleanArray>(),
    )
}

/// `a || b`: null when either is null.
pub(in crate::expr) fn concat_strict(a: &ArrayRef, b: &ArrayRef) -> Result<ArrayRef> {
    let (a, b) = (a.as_string::<i32>(), b.as_string::<i32>());
    Ok(Arc::new(arrow::compute::kernels::concat_elements::concat_elements_utf8(a, b)?))
}

fn concat_skip_nulls(arrays: &[ArrayRef]) -> ArrayRef {
    let strings: Vec<&StringArray> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
    let rows = strings[0].len();
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
    let start = start.as_primitive::<Int64Type>();
    let len = match arrays.get(2) {
        Some(l) => Some(arrow::compute::cast(l, &DataType::Int64)?),
        None => None,
    };
    let len = len.as_ref().map(|l| l.as_primitive::<Int64Type>());
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

/// `left(s, n)` (`left`) or `right(s, n)`.
fn left_right(a: &[ArrayRef], left: bool) -> Result<ArrayRef> {
    let (s, n) = (a[0].as_string::<i32>(), arrow::compute::cast(&a[1], &DataType::Int64)?);
    let n = n.as_primitive::<Int64Type>();
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
        let piece: String =
            if left { text.chars().take(take).collect() } else { text.chars().skip(chars as usize - take).collect() };
        b.append_value(piece);
    }
    Ok(Arc::new(b.finish()))
}
