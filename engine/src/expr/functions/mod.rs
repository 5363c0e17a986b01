//! Scalar functions, one entry each: its names, how its arguments are typed, its kernel, its
//! documentation. Lookup, typing in the SQL planner, the "did you mean" hints and `flow functions`
//! all read [`all`]; adding a function is adding an entry to one of the files below (and to its
//! `ALL` list), with its tests.
//!
//! - [`string`]: `lower`, `upper`, `length`, `substr`, `trim`, `concat`, `replace`, `strpos`,
//!   `left`, `right`, `starts_with`, `ends_with`, `contains`, `reverse`;
//! - [`math`]: `abs`, `round`, `ceil`, `floor`, `sqrt`, `power`, `ln`, `exp`, `log10`;
//! - [`date`]: `date_part` (and `year()`, `month()`, ...; `EXTRACT` is planned as it), `date_trunc`;
//! - [`general`]: `coalesce`, `nullif`, `greatest`, `least`, `hash`, and the planner's own
//!   `try_cast` and the average of a two-phase aggregation, which SQL does not call by name.

mod date;
mod general;
mod math;
mod string;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Schema};

use super::types::{self, common_type, is_numeric, is_temporal, sql_type_name};
use super::{wrap, Expr, Value};
use crate::error::{Error, Result};

pub use date::DatePartKind;
pub(crate) use general::{AVG_DIVIDE, COALESCE, LEAST, TRY_CAST};
pub(super) use string::concat_strict;

/// One scalar function.
pub struct FunctionDef {
    /// The name it is shown by.
    pub name: &'static str,
    /// Other names SQL may call it by.
    pub aliases: &'static [&'static str],
    /// How it is called, for users: `substr(s, start[, length])`.
    pub signature: &'static str,
    /// What it returns, in a sentence.
    pub doc: &'static str,
    /// Where `flow functions` lists it.
    pub group: Group,
    typing: Typing,
    kernel: Kernel,
    /// It cannot fail on any row (a scan may test it before the other conditions of a filter;
    /// see `exec::dict_filter::cannot_fail`).
    pub(crate) infallible: bool,
}

/// Where a function is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Functions of strings.
    String,
    /// Functions of numbers.
    Number,
    /// Functions of dates and timestamps.
    Date,
    /// Functions of values of any type.
    General,
    /// Planned from syntax or by the planner itself; not called by name.
    Internal,
}

/// The arguments, all of one length (one row when every argument is a constant), and the result's
/// type; returns the result, of that length.
type Kernel = fn(&[ArrayRef], &DataType) -> Result<ArrayRef>;

/// How a call's arguments are checked and cast, and its type found.
enum Typing {
    /// Arguments of these kinds (the last `optional` may be left out), and the result's type.
    Args { args: &'static [Arg], optional: usize, returns: DataType },
    /// One argument or more, cast to their common type, which is the result's.
    Common,
    /// Anything else: checks and casts `call.args` and returns the result's type.
    Custom(fn(&mut Call) -> Result<DataType>),
}

/// What an argument must be.
#[derive(Clone, Copy)]
enum Arg {
    /// A string.
    String,
    /// An integer (cast to BIGINT).
    Integer,
    /// A number of any type.
    Number,
    /// Anything.
    Any,
}

/// A scalar function, as expressions hold it.
#[derive(Clone, Copy)]
pub struct Function(&'static FunctionDef);

impl PartialEq for Function {
    fn eq(&self, other: &Function) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Function {}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl Function {
    /// The function of an entry.
    pub const fn of(def: &'static FunctionDef) -> Function {
        Function(def)
    }

    /// Looks a function up by a name SQL calls it by (any case).
    pub fn by_name(name: &str) -> Option<Function> {
        let name = name.to_ascii_lowercase();
        all()
            .filter(|d| d.group != Group::Internal)
            .find(|d| d.name == name || d.aliases.contains(&name.as_str()))
            .map(Function)
    }

    /// Its entry.
    pub fn def(&self) -> &'static FunctionDef {
        self.0
    }

    /// The name it is shown by.
    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// Types a call of this function over planned arguments (`texts`: their SQL, for errors),
    /// casting them as it needs: the planned call. `name` is the name it was called by.
    pub(crate) fn plan(&self, name: &str, args: Vec<Expr>, texts: Vec<String>, schema: &Schema) -> Result<Expr> {
        let mut call = Call { name, args, texts, schema };
        let data_type = match &self.0.typing {
            Typing::Args { args, optional, returns } => {
                call.arity(args.len() - optional, args.len())?;
                for (i, arg) in args.iter().enumerate().take(call.args.len()) {
                    match arg {
                        Arg::String => call.string(i)?,
                        Arg::Integer => call.integer(i)?,
                        Arg::Number => call.number(i)?,
                        Arg::Any => {}
                    }
                }
                returns.clone()
            }
            Typing::Common => call.common()?,
            Typing::Custom(typing) => typing(&mut call)?,
        };
        Ok(Expr::Function { func: *self, args: call.args, data_type })
    }

    pub(super) fn evaluate(&self, args: &[Value], data_type: &DataType, rows: usize) -> Result<Value> {
        let scalar = args.iter().all(|a| a.is_scalar());
        let n = if scalar { 1 } else { rows };
        let arrays = args.iter().map(|a| a.clone().into_array(n)).collect::<Result<Vec<_>>>()?;
        Ok(wrap(scalar, (self.0.kernel)(&arrays, data_type)?))
    }
}

/// Every function.
pub fn all() -> impl Iterator<Item = &'static FunctionDef> {
    string::ALL.iter().chain(math::ALL).chain(date::ALL).chain(general::ALL).copied()
}

/// The names SQL calls functions by, for hints.
pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    all().filter(|d| d.group != Group::Internal).flat_map(|d| std::iter::once(d.name).chain(d.aliases.iter().copied()))
}

/// A call being typed: its arguments, planned, and what errors about them say.
pub(crate) struct Call<'a> {
    /// The name the function was called by.
    name: &'a str,
    args: Vec<Expr>,
    texts: Vec<String>,
    schema: &'a Schema,
}

impl Call<'_> {
    fn ty(&self, i: usize) -> DataType {
        self.args[i].data_type(self.schema)
    }

    fn text(&self, i: usize) -> &str {
        self.texts.get(i).map_or("", |t| t.as_str())
    }

    fn arity(&self, lo: usize, hi: usize) -> Result<()> {
        let n = self.args.len();
        if n < lo || n > hi {
            let want = if lo == hi { format!("{lo}") } else { format!("{lo} to {hi}") };
            return Err(Error::Plan(format!("{}() takes {want} arguments, got {n}", self.name)));
        }
        Ok(())
    }

    /// At least one argument.
    fn some(&self) -> Result<()> {
        match self.args.is_empty() {
            true => Err(Error::Plan(format!("{}() needs at least one argument", self.name))),
            false => Ok(()),
        }
    }

    fn cast(&mut self, i: usize, to: &DataType) -> Result<()> {
        let arg = std::mem::replace(&mut self.args[i], Expr::Literal(Arc::new(arrow::array::NullArray::new(1))));
        self.args[i] = types::coerce(arg, self.schema, to)?;
        Ok(())
    }

    fn wrong(&self, i: usize, what: &str) -> Error {
        let got = sql_type_name(&self.ty(i));
        Error::Plan(format!("{} needs {what}, got {got} ({})", self.name, self.text(i)))
    }

    fn string(&mut self, i: usize) -> Result<()> {
        match self.ty(i) {
            DataType::Utf8 => Ok(()),
            DataType::Null | DataType::LargeUtf8 | DataType::Utf8View => self.cast(i, &DataType::Utf8),
            _ => Err(self.wrong(i, "a string")),
        }
    }

    /// Any argument, as its text.
    fn text_of(&mut self, i: usize) -> Result<()> {
        self.cast(i, &DataType::Utf8)
    }

    fn integer(&mut self, i: usize) -> Result<()> {
        match self.ty(i) {
            t if t.is_integer() || t == DataType::Null => self.cast(i, &DataType::Int64),
            _ => Err(self.wrong(i, "an integer")),
        }
    }

    fn number(&mut self, i: usize) -> Result<()> {
        match self.ty(i) {
            t if is_numeric(&t) || t == DataType::Null => Ok(()),
            _ => Err(self.wrong(i, "a number")),
        }
    }

    fn temporal(&mut self, i: usize) -> Result<()> {
        match self.ty(i) {
            t if is_temporal(&t) => Ok(()),
            _ => Err(self.wrong(i, "a date or timestamp")),
        }
    }

    /// The value of a constant string argument.
    fn constant_string(&self, i: usize) -> Option<String> {
        match &self.args[i] {
            Expr::Literal(a) if a.data_type() == &DataType::Utf8 && a.is_valid(0) => {
                Some(a.as_string::<i32>().value(0).to_string())
            }
            _ => None,
        }
    }

    /// Casts every argument to their common type, and returns it.
    fn common(&mut self) -> Result<DataType> {
        self.some()?;
        let mut t = DataType::Null;
        for i in 0..self.args.len() {
            let next = self.ty(i);
            t = common_type(&t, &next).ok_or_else(|| {
                Error::Plan(format!(
                    "{}() arguments have incompatible types {} and {}",
                    self.name,
                    sql_type_name(&t),
                    sql_type_name(&next)
                ))
            })?;
        }
        for i in 0..self.args.len() {
            self.cast(i, &t)?;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_finds_its_own_function_and_only_it() {
        let mut seen = std::collections::HashMap::new();
        for def in all().filter(|d| d.group != Group::Internal) {
            for name in std::iter::once(def.name).chain(def.aliases.iter().copied()) {
                assert_eq!(name, name.to_ascii_lowercase(), "names are lower case");
                assert!(seen.insert(name, def.name).is_none(), "{name} names two functions");
                assert_eq!(Function::by_name(&name.to_ascii_uppercase()).map(|f| f.name()), Some(def.name));
            }
            assert!(def.signature.starts_with(def.name), "{} is shown as it is called", def.name);
            assert!(!def.doc.is_empty());
        }
        // Functions of the planner's own are not SQL's.
        assert!(Function::by_name("avg_divide").is_none() && Function::by_name("try_cast").is_none());
    }
}
