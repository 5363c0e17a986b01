//! Expressions, evaluated a whole batch at a time with Arrow compute kernels.
//!
//! The SQL planner ([`crate::sql`]) resolves names and types and inserts the casts that SQL's type
//! rules call for (DuckDB's, including decimal precision and scale), so evaluation here never guesses:
//! each node knows its inputs already have the types it expects.

pub mod aggregate;
mod functions;
pub(crate) mod types;
pub mod window;

use std::fmt;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, Scalar, UInt32Array};
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::datatypes::{DataType, Schema};

pub(crate) use self::aggregate::Split;
pub use self::aggregate::{AggregateExpr, AggregateFunction};
pub use self::functions::{all as functions, DatePartKind, Function, FunctionDef, Group};
pub(crate) use self::functions::{names as function_names, AVG_DIVIDE, COALESCE, LEAST, TRY_CAST};
use crate::error::{Error, Result};

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `*`
    Multiply,
    /// `/` (always floating point, as in DuckDB)
    Divide,
    /// `%`
    Modulo,
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `AND` (three-valued)
    And,
    /// `OR` (three-valued)
    Or,
    /// `||` (null if either side is null)
    Concat,
}

impl BinaryOp {
    /// True for `= <> < <= > >=`.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::NotEq | BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq)
    }
    /// True for `+ - * / %`.
    pub fn is_arithmetic(self) -> bool {
        matches!(self, BinaryOp::Plus | BinaryOp::Minus | BinaryOp::Multiply | BinaryOp::Divide | BinaryOp::Modulo)
    }
    /// The operator with its operands swapped (`a < b` is `b > a`).
    pub fn swap(self) -> BinaryOp {
        match self {
            BinaryOp::Lt => BinaryOp::Gt,
            BinaryOp::LtEq => BinaryOp::GtEq,
            BinaryOp::Gt => BinaryOp::Lt,
            BinaryOp::GtEq => BinaryOp::LtEq,
            other => other,
        }
    }
    fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Plus => "+",
            BinaryOp::Minus => "-",
            BinaryOp::Multiply => "*",
            BinaryOp::Divide => "/",
            BinaryOp::Modulo => "%",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "<>",
            BinaryOp::Lt => "<",
            BinaryOp::LtEq => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::GtEq => ">=",
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
            BinaryOp::Concat => "||",
        }
    }
}

/// A typed expression over the columns of its input.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The input's column `index`.
    Column {
        /// Position in the input batch.
        index: usize,
        /// Its name, for display.
        name: String,
    },
    /// A constant: a one-element array.
    Literal(ArrayRef),
    /// `left op right`; operands already have the types the operator needs.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
        /// The result type.
        data_type: DataType,
    },
    /// `NOT e`
    Not(Box<Expr>),
    /// `-e`
    Negate(Box<Expr>),
    /// `e IS [NOT] NULL`
    IsNull {
        /// Operand.
        expr: Box<Expr>,
        /// `IS NOT NULL` when true.
        negated: bool,
    },
    /// `e [NOT] IN (list)`, with SQL's null semantics.
    InList {
        /// Operand.
        expr: Box<Expr>,
        /// Candidates, of the operand's type.
        list: Vec<Expr>,
        /// `NOT IN` when true.
        negated: bool,
    },
    /// `e [NOT] [I]LIKE pattern`
    Like {
        /// Operand (a string).
        expr: Box<Expr>,
        /// Pattern (a string).
        pattern: Box<Expr>,
        /// `NOT LIKE` when true.
        negated: bool,
        /// `ILIKE` when true.
        case_insensitive: bool,
    },
    /// `CASE WHEN c THEN v ... ELSE e END`; every branch already has `data_type`.
    Case {
        /// Conditions and values, in order.
        whens: Vec<(Expr, Expr)>,
        /// The value when no condition holds (null when absent).
        otherwise: Option<Box<Expr>>,
        /// The result type.
        data_type: DataType,
    },
    /// `CAST(e AS t)`: an error on values that do not convert, as in DuckDB.
    Cast {
        /// Operand.
        expr: Box<Expr>,
        /// Target type.
        to: DataType,
    },
    /// An aggregate's result while a grouped query is planned; the planner replaces it with a
    /// column of the aggregate's output before anything runs.
    AggregateRef {
        /// Which aggregate of the query.
        index: usize,
        /// Its result type.
        data_type: DataType,
    },
    /// A window function's result while a query is planned; the planner replaces it with a
    /// column of the window operator's output before anything runs.
    WindowRef {
        /// Which window function of the query.
        index: usize,
        /// Its result type.
        data_type: DataType,
    },
    /// A column of an enclosing query, read by a correlated subquery: `depth` 1 is the query the
    /// subquery is in. Only in subquery plans while they are planned; decorrelation turns every
    /// one into a join condition or a column of the join.
    OuterColumn {
        /// How many queries out.
        depth: usize,
        /// The column in that query's input.
        index: usize,
        /// Its name, for display.
        name: String,
        /// Its type.
        data_type: DataType,
    },
    /// The result of subquery number `id` of the query being planned; replaced by a column of the
    /// join that computes it before anything runs.
    Subquery {
        /// Which subquery of the query.
        id: usize,
        /// Its type (BOOLEAN for `EXISTS` and `IN`).
        data_type: DataType,
    },
    /// A scalar function call.
    Function {
        /// Which function.
        func: Function,
        /// Arguments, already cast to what the function takes.
        args: Vec<Expr>,
        /// The result type.
        data_type: DataType,
    },
}

/// The result of evaluating an expression: a column, or one value that stands for every row.
#[derive(Debug, Clone)]
pub enum Value {
    /// One value a row.
    Array(ArrayRef),
    /// A single value (a one-element array) for all rows.
    Scalar(ArrayRef),
}

impl Value {
    /// The value as a column of `rows` rows.
    pub fn into_array(self, rows: usize) -> Result<ArrayRef> {
        match self {
            Value::Array(a) => Ok(a),
            Value::Scalar(s) => repeat(&s, rows),
        }
    }
    fn is_scalar(&self) -> bool {
        matches!(self, Value::Scalar(_))
    }
    fn data_type(&self) -> &DataType {
        match self {
            Value::Array(a) | Value::Scalar(a) => a.data_type(),
        }
    }
}

/// A one-element array repeated `rows` times.
pub(crate) fn repeat(scalar: &ArrayRef, rows: usize) -> Result<ArrayRef> {
    if scalar.is_null(0) {
        return Ok(new_null_array(scalar.data_type(), rows));
    }
    let indices = UInt32Array::from(vec![0u32; rows]);
    Ok(arrow::compute::take(scalar.as_ref(), &indices, None)?)
}

/// Runs a kernel that takes two `Datum`s, keeping scalars as scalars.
fn with_datums<T>(l: &Value, r: &Value, f: impl FnOnce(&dyn arrow::array::Datum, &dyn arrow::array::Datum) -> T) -> T {
    match (l, r) {
        (Value::Array(a), Value::Array(b)) => f(a, b),
        (Value::Array(a), Value::Scalar(b)) => f(a, &Scalar::new(b.clone())),
        (Value::Scalar(a), Value::Array(b)) => f(&Scalar::new(a.clone()), b),
        (Value::Scalar(a), Value::Scalar(b)) => f(&Scalar::new(a.clone()), &Scalar::new(b.clone())),
    }
}

fn wrap(scalar: bool, array: ArrayRef) -> Value {
    if scalar {
        Value::Scalar(array)
    } else {
        Value::Array(array)
    }
}

impl Expr {
    /// A column reference.
    pub fn column(index: usize, name: impl Into<String>) -> Expr {
        Expr::Column { index, name: name.into() }
    }

    /// The type of the values this expression yields over `input`.
    #[recursive::recursive]
    pub fn data_type(&self, input: &Schema) -> DataType {
        match self {
            Expr::Column { index, .. } => input.field(*index).data_type().clone(),
            Expr::Literal(a) => a.data_type().clone(),
            Expr::Binary { data_type, .. }
            | Expr::Case { data_type, .. }
            | Expr::Function { data_type, .. }
            | Expr::OuterColumn { data_type, .. }
            | Expr::WindowRef { data_type, .. }
            | Expr::Subquery { data_type, .. }
            | Expr::AggregateRef { data_type, .. } => data_type.clone(),
            Expr::Not(_) | Expr::IsNull { .. } | Expr::InList { .. } | Expr::Like { .. } => DataType::Boolean,
            Expr::Negate(e) => e.data_type(input),
            Expr::Cast { to, .. } => to.clone(),
        }
    }

    /// Whether the expression can yield null over `input`.
    pub fn nullable(&self, input: &Schema) -> bool {
        match self {
            Expr::Column { index, .. } => input.field(*index).is_nullable(),
            Expr::Literal(a) => a.is_null(0),
            Expr::IsNull { .. } => false,
            _ => true,
        }
    }

    /// Calls `f` on every column index the expression reads.
    #[recursive::recursive]
    pub fn visit_columns(&self, f: &mut dyn FnMut(usize)) {
        match self {
            Expr::Column { index, .. } => f(*index),
            other => other.for_each_child(&mut |c| c.visit_columns(f)),
        }
    }

    /// The same expression with every column index mapped through `map`.
    #[recursive::recursive]
    pub fn remap_columns(&self, map: &dyn Fn(usize) -> usize) -> Expr {
        let r = |e: &Expr| Box::new(e.remap_columns(map));
        match self {
            Expr::Column { index, name } => Expr::Column { index: map(*index), name: name.clone() },
            Expr::Literal(a) => Expr::Literal(a.clone()),
            Expr::AggregateRef { .. } | Expr::OuterColumn { .. } | Expr::WindowRef { .. } | Expr::Subquery { .. } => {
                self.clone()
            }
            Expr::Binary { op, left, right, data_type } => {
                Expr::Binary { op: *op, left: r(left), right: r(right), data_type: data_type.clone() }
            }
            Expr::Not(e) => Expr::Not(r(e)),
            Expr::Negate(e) => Expr::Negate(r(e)),
            Expr::IsNull { expr, negated } => Expr::IsNull { expr: r(expr), negated: *negated },
            Expr::InList { expr, list, negated } => Expr::InList {
                expr: r(expr),
                list: list.iter().map(|e| e.remap_columns(map)).collect(),
                negated: *negated,
            },
            Expr::Like { expr, pattern, negated, case_insensitive } => Expr::Like {
                expr: r(expr),
                pattern: r(pattern),
                negated: *negated,
                case_insensitive: *case_insensitive,
            },
            Expr::Case { whens, otherwise, data_type } => Expr::Case {
                whens: whens.iter().map(|(c, v)| (c.remap_columns(map), v.remap_columns(map))).collect(),
                otherwise: otherwise.as_ref().map(|e| r(e)),
                data_type: data_type.clone(),
            },
            Expr::Cast { expr, to } => Expr::Cast { expr: r(expr), to: to.clone() },
            Expr::Function { func, args, data_type } => Expr::Function {
                func: *func,
                args: args.iter().map(|e| e.remap_columns(map)).collect(),
                data_type: data_type.clone(),
            },
        }
    }

    /// Evaluates over a batch.
    #[recursive::recursive]
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Value> {
        Ok(match self {
            Expr::Column { index, .. } => Value::Array(batch.column(*index).clone()),
            Expr::Literal(a) => Value::Scalar(a.clone()),
            Expr::Binary { op, left, right, data_type } => {
                let l = left.evaluate(batch)?;
                let r = right.evaluate(batch)?;
                binary(*op, &l, &r, data_type, batch.num_rows())?
            }
            Expr::Not(e) => {
                let v = e.evaluate(batch)?;
                let scalar = v.is_scalar();
                let a = v.into_array(if scalar { 1 } else { batch.num_rows() })?;
                wrap(scalar, Arc::new(boolean::not(a.as_boolean())?))
            }
            Expr::Negate(e) => {
                let v = e.evaluate(batch)?;
                let scalar = v.is_scalar();
                let a = v.into_array(1)?;
                wrap(scalar, numeric::neg(a.as_ref())?)
            }
            Expr::IsNull { expr, negated } => {
                let v = expr.evaluate(batch)?;
                let scalar = v.is_scalar();
                let a = v.into_array(1)?;
                let r = if *negated {
                    arrow::compute::is_not_null(a.as_ref())?
                } else {
                    arrow::compute::is_null(a.as_ref())?
                };
                wrap(scalar, Arc::new(r))
            }
            Expr::InList { expr, list, negated } => {
                let v = expr.evaluate(batch)?;
                let mut acc: Option<BooleanArray> = None;
                for item in list {
                    let c = item.evaluate(batch)?;
                    let eq = with_datums(&v, &c, |a, b| cmp::eq(a, b))?;
                    let eq =
                        if eq.len() == 1 && batch.num_rows() != 1 { expand_bool(&eq, batch.num_rows())? } else { eq };
                    acc = Some(match acc {
                        None => eq,
                        Some(prev) => boolean::or_kleene(&prev, &eq)?,
                    });
                }
                let r = acc.unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
                let r = if *negated { boolean::not(&r)? } else { r };
                Value::Array(Arc::new(r))
            }
            Expr::Like { expr, pattern, negated, case_insensitive } => {
                let v = expr.evaluate(batch)?;
                let p = pattern.evaluate(batch)?;
                let scalar = v.is_scalar() && p.is_scalar();
                let r = with_datums(&v, &p, |a, b| match (negated, case_insensitive) {
                    (false, false) => arrow::compute::kernels::comparison::like(a, b),
                    (false, true) => arrow::compute::kernels::comparison::ilike(a, b),
                    (true, false) => arrow::compute::kernels::comparison::nlike(a, b),
                    (true, true) => arrow::compute::kernels::comparison::nilike(a, b),
                })?;
                wrap(scalar, Arc::new(r))
            }
            Expr::Case { whens, otherwise, data_type } => {
                let rows = batch.num_rows();
                let mut result = match otherwise {
                    Some(e) => e.evaluate(batch)?.into_array(rows)?,
                    None => new_null_array(data_type, rows),
                };
                for (cond, value) in whens.iter().rev() {
                    let c = cond.evaluate(batch)?.into_array(rows)?;
                    // A null condition does not hold.
                    let mask = not_null_true(c.as_boolean());
                    let v = value.evaluate(batch)?.into_array(rows)?;
                    result = arrow::compute::kernels::zip::zip(&mask, &v, &result)?;
                }
                Value::Array(result)
            }
            Expr::Cast { expr, to } => {
                let v = expr.evaluate(batch)?;
                let scalar = v.is_scalar();
                let a = v.into_array(1)?;
                wrap(scalar, types::cast_sql(&a, to)?)
            }
            Expr::Function { func, args, data_type } => {
                let values = args.iter().map(|a| a.evaluate(batch)).collect::<Result<Vec<_>>>()?;
                func.evaluate(&values, data_type, batch.num_rows())?
            }
            Expr::AggregateRef { .. } => {
                return Err(Error::Execution("internal error: an aggregate was not planned".into()));
            }
            Expr::OuterColumn { name, .. } => {
                return Err(Error::Execution(format!("internal error: outer column {name} was not decorrelated")));
            }
            Expr::Subquery { .. } => {
                return Err(Error::Execution("internal error: a subquery was not planned".into()));
            }
            Expr::WindowRef { .. } => {
                return Err(Error::Execution("internal error: a window function was not planned".into()));
            }
        })
    }

    /// The same node with each direct child replaced by `f(child)`.
    pub fn map_children(&self, f: &mut dyn FnMut(&Expr) -> Result<Expr>) -> Result<Expr> {
        fn t(e: &Expr, f: &mut dyn FnMut(&Expr) -> Result<Expr>) -> Result<Box<Expr>> {
            f(e).map(Box::new)
        }
        Ok(match self {
            Expr::Column { .. }
            | Expr::Literal(_)
            | Expr::AggregateRef { .. }
            | Expr::OuterColumn { .. }
            | Expr::WindowRef { .. }
            | Expr::Subquery { .. } => self.clone(),
            Expr::Binary { op, left, right, data_type } => {
                Expr::Binary { op: *op, left: t(left, f)?, right: t(right, f)?, data_type: data_type.clone() }
            }
            Expr::Not(e) => Expr::Not(t(e, f)?),
            Expr::Negate(e) => Expr::Negate(t(e, f)?),
            Expr::IsNull { expr, negated } => Expr::IsNull { expr: t(expr, f)?, negated: *negated },
            Expr::InList { expr, list, negated } => Expr::InList {
                expr: t(expr, f)?,
                list: {
                    let mut out = Vec::with_capacity(list.len());
                    for e in list {
                        out.push(f(e)?);
                    }
                    out
                },
                negated: *negated,
            },
            Expr::Like { expr, pattern, negated, case_insensitive } => Expr::Like {
                expr: t(expr, f)?,
                pattern: t(pattern, f)?,
                negated: *negated,
                case_insensitive: *case_insensitive,
            },
            Expr::Case { whens, otherwise, data_type } => Expr::Case {
                whens: {
                    let mut out = Vec::with_capacity(whens.len());
                    for (c, v) in whens {
                        out.push((f(c)?, f(v)?));
                    }
                    out
                },
                otherwise: otherwise.as_ref().map(|e| t(e, f)).transpose()?,
                data_type: data_type.clone(),
            },
            Expr::Cast { expr, to } => Expr::Cast { expr: t(expr, f)?, to: to.clone() },
            Expr::Function { func, args, data_type } => Expr::Function {
                func: *func,
                args: {
                    let mut out = Vec::with_capacity(args.len());
                    for e in args {
                        out.push(f(e)?);
                    }
                    out
                },
                data_type: data_type.clone(),
            },
        })
    }

    /// Evaluates to a boolean column of `batch.num_rows()` rows.
    pub fn evaluate_predicate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let a = self.evaluate(batch)?.into_array(batch.num_rows())?;
        match a.data_type() {
            DataType::Boolean => Ok(a.as_boolean().clone()),
            DataType::Null => Ok(BooleanArray::new_null(a.len())),
            other => Err(Error::Plan(format!("filter must be boolean, got {other}"))),
        }
    }

    /// Whether the expression reads a column of an enclosing query.
    #[recursive::recursive]
    pub fn has_outer_refs(&self) -> bool {
        let mut found = matches!(self, Expr::OuterColumn { .. });
        self.for_each_child(&mut |c| found |= c.has_outer_refs());
        found
    }

    /// Calls `f` on each direct child.
    pub fn for_each_child(&self, f: &mut dyn FnMut(&Expr)) {
        match self {
            Expr::Column { .. }
            | Expr::Literal(_)
            | Expr::AggregateRef { .. }
            | Expr::OuterColumn { .. }
            | Expr::WindowRef { .. }
            | Expr::Subquery { .. } => {}
            Expr::Binary { left, right, .. } => {
                f(left);
                f(right);
            }
            Expr::Not(e) | Expr::Negate(e) | Expr::IsNull { expr: e, .. } | Expr::Cast { expr: e, .. } => f(e),
            Expr::InList { expr, list, .. } => {
                f(expr);
                list.iter().for_each(f);
            }
            Expr::Like { expr, pattern, .. } => {
                f(expr);
                f(pattern);
            }
            Expr::Case { whens, otherwise, .. } => {
                for (c, v) in whens {
                    f(c);
                    f(v);
                }
                if let Some(e) = otherwise {
                    f(e);
                }
            }
            Expr::Function { args, .. } => args.iter().for_each(f),
        }
    }

    /// Rewrites the expression bottom-up with `f`.
    #[recursive::recursive]
    pub fn transform(&self, f: &mut dyn FnMut(Expr) -> Result<Expr>) -> Result<Expr> {
        let node = self.map_children(&mut |c| c.transform(f))?;
        f(node)
    }

    /// A rough cost of evaluating the expression per row, to test cheap conditions first.
    #[recursive::recursive]
    pub(crate) fn evaluation_cost(&self) -> usize {
        let own = match self {
            Expr::Column { .. } | Expr::Literal(_) => 0,
            Expr::Like { .. } => 8,
            Expr::InList { list, .. } => 1 + list.len() / 2,
            Expr::Binary { op: BinaryOp::Or, .. } => 2,
            Expr::Subquery { .. } => 100,
            _ => 1,
        };
        let mut children = 0;
        self.for_each_child(&mut |c| children += c.evaluation_cost());
        own + children
    }

    /// Splits a conjunction `a AND b AND c` into its parts.
    #[recursive::recursive]
    pub fn conjuncts(&self) -> Vec<&Expr> {
        match self {
            Expr::Binary { op: BinaryOp::And, left, right, .. } => {
                let mut v = left.conjuncts();
                v.extend(right.conjuncts());
                v
            }
            other => vec![other],
        }
    }
}

/// `terms` joined by `op` (`AND` or `OR`) into a balanced tree: as deep as the log of their
/// number, where folding them one by one made a chain as deep as they are many (a filter of
/// thousands of conditions overflowed the stack of every pass that walked it). `None` for no
/// terms.
pub fn balanced(op: BinaryOp, mut terms: Vec<Expr>) -> Option<Expr> {
    debug_assert!(matches!(op, BinaryOp::And | BinaryOp::Or));
    while terms.len() > 1 {
        let mut pairs = Vec::with_capacity(terms.len().div_ceil(2));
        let mut it = terms.into_iter();
        while let Some(a) = it.next() {
            pairs.push(match it.next() {
                Some(b) => Expr::Binary { op, left: Box::new(a), right: Box::new(b), data_type: DataType::Boolean },
                None => a,
            });
        }
        terms = pairs;
    }
    terms.pop()
}

/// The mask with nulls turned to false (a null condition does not hold).
pub(crate) fn not_null_true(mask: &BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 {
        mask.clone()
    } else {
        arrow::compute::prep_null_mask_filter(mask)
    }
}

fn expand_bool(a: &BooleanArray, rows: usize) -> Result<BooleanArray> {
    let arr: ArrayRef = Arc::new(a.clone());
    Ok(repeat(&arr, rows)?.as_boolean().clone())
}

fn binary(op: BinaryOp, l: &Value, r: &Value, data_type: &DataType, rows: usize) -> Result<Value> {
    let scalar = l.is_scalar() && r.is_scalar();
    if let Some(out) = temporal_binary(op, l, r, data_type, if scalar { 1 } else { rows })? {
        return Ok(wrap(scalar, out));
    }
    if let Some(out) = decimal_binary(op, l, r, data_type)? {
        return Ok(Value::Array(out));
    }
    let out: ArrayRef = match op {
        BinaryOp::Plus => with_datums(l, r, |a, b| numeric::add(a, b))?,
        BinaryOp::Minus => with_datums(l, r, |a, b| numeric::sub(a, b))?,
        BinaryOp::Multiply => with_datums(l, r, |a, b| numeric::mul(a, b))?,
        BinaryOp::Divide => with_datums(l, r, |a, b| numeric::div(a, b))?,
        BinaryOp::Modulo => with_datums(l, r, |a, b| numeric::rem(a, b))?,
        BinaryOp::Eq => Arc::new(with_datums(l, r, |a, b| cmp::eq(a, b))?),
        BinaryOp::NotEq => Arc::new(with_datums(l, r, |a, b| cmp::neq(a, b))?),
        BinaryOp::Lt => Arc::new(with_datums(l, r, |a, b| cmp::lt(a, b))?),
        BinaryOp::LtEq => Arc::new(with_datums(l, r, |a, b| cmp::lt_eq(a, b))?),
        BinaryOp::Gt => Arc::new(with_datums(l, r, |a, b| cmp::gt(a, b))?),
        BinaryOp::GtEq => Arc::new(with_datums(l, r, |a, b| cmp::gt_eq(a, b))?),
        BinaryOp::And | BinaryOp::Or => {
            let n = if scalar { 1 } else { rows };
            let a = l.clone().into_array(n)?;
            let b = r.clone().into_array(n)?;
            let (a, b) = (as_bool(&a)?, as_bool(&b)?);
            Arc::new(if op == BinaryOp::And { boolean::and_kleene(&a, &b)? } else { boolean::or_kleene(&a, &b)? })
        }
        BinaryOp::Concat => {
            let n = if scalar { 1 } else { rows };
            functions::concat_strict(&l.clone().into_array(n)?, &r.clone().into_array(n)?)?
        }
    };
    // Decimal results: Arrow picks its own precision; use SQL's (checking values fit).
    let out = if out.data_type() != data_type && l.data_type() != &DataType::Null {
        types::cast_sql(&out, data_type)?
    } else {
        out
    };
    Ok(wrap(scalar, out))
}

/// Decimal `+`, `-` and `*` over at least one column, computed on the unscaled values.
///
/// The result's type follows from the operands' (see [`types::arithmetic_types`]): a sum needs
/// one digit more than the wider operand, a product the sum of their digits, at the scale the
/// planner already made equal (a sum) or that adds up (a product). So where that exact width is
/// at most 38 digits the `i128` arithmetic cannot overflow and needs no check per value, and the
/// result is checked against its type's width only where SQL makes it narrower than exact
/// (DuckDB types a product of two narrow decimals as DECIMAL(18,s)). Arrow's kernels check every
/// value, pick their own width and leave a second pass to narrow it: TPC-H Q1 spent a tenth of
/// its time there. `None` for everything else (and for two scalars, which are one row).
fn decimal_binary(op: BinaryOp, l: &Value, r: &Value, data_type: &DataType) -> Result<Option<ArrayRef>> {
    use arrow::datatypes::Decimal128Type;
    use DataType::Decimal128;
    let (Decimal128(p1, s1), Decimal128(p2, s2), Decimal128(p, s)) = (l.data_type(), r.data_type(), data_type) else {
        return Ok(None);
    };
    let (p1, p2, p, s) = (*p1 as u32, *p2 as u32, *p as u32, *s);
    let exact = match op {
        BinaryOp::Plus | BinaryOp::Minus if *s1 == s && *s2 == s => p1.max(p2) + 1,
        BinaryOp::Multiply if *s1 as i16 + *s2 as i16 == s as i16 => p1 + p2,
        _ => return Ok(None),
    };
    if l.is_scalar() && r.is_scalar() {
        return Ok(None);
    }
    let scalar_value = |v: &ArrayRef| -> Option<i128> {
        let a = v.as_primitive::<Decimal128Type>();
        (a.len() == 1 && a.is_valid(0)).then(|| a.value(0))
    };
    // A null scalar makes every row null: the general path does that.
    for v in [l, r] {
        if let Value::Scalar(a) = v {
            if scalar_value(a).is_none() {
                return Ok(None);
            }
        }
    }
    let overflow = || arrow::error::ArrowError::ArithmeticOverflow(format!("{} of decimals", op.symbol()));
    macro_rules! apply {
        ($unchecked:expr, $checked:expr) => {{
            let (unchecked, checked) = ($unchecked, $checked);
            let checked = |a: i128, b: i128| checked(a, b).ok_or_else(overflow);
            let out: arrow::array::Decimal128Array = match (l, r) {
                (Value::Array(a), Value::Array(b)) => {
                    let (a, b) = (a.as_primitive::<Decimal128Type>(), b.as_primitive::<Decimal128Type>());
                    if exact <= 38 {
                        arrow::compute::binary(a, b, unchecked)?
                    } else {
                        arrow::compute::try_binary(a, b, checked)?
                    }
                }
                (Value::Array(a), Value::Scalar(b)) => {
                    let (a, b) = (a.as_primitive::<Decimal128Type>(), scalar_value(b).expect("checked above"));
                    if exact <= 38 {
                        a.unary(|x| unchecked(x, b))
                    } else {
                        a.try_unary(|x| checked(x, b))?
                    }
                }
                (Value::Scalar(a), Value::Array(b)) => {
                    let (a, b) = (scalar_value(a).expect("checked above"), b.as_primitive::<Decimal128Type>());
                    if exact <= 38 {
                        b.unary(|y| unchecked(a, y))
                    } else {
                        b.try_unary(|y| checked(a, y))?
                    }
                }
                (Value::Scalar(_), Value::Scalar(_)) => unreachable!("two scalars take the general path"),
            };
            out
        }};
    }
    let out = match op {
        BinaryOp::Plus => apply!(|a: i128, b: i128| a.wrapping_add(b), |a: i128, b: i128| a.checked_add(b)),
        BinaryOp::Minus => apply!(|a: i128, b: i128| a.wrapping_sub(b), |a: i128, b: i128| a.checked_sub(b)),
        _ => apply!(|a: i128, b: i128| a.wrapping_mul(b), |a: i128, b: i128| a.checked_mul(b)),
    };
    if exact > p {
        // Without an early exit, the check of a whole batch vectorizes: it was a tenth of TPC-H
        // Q1's arithmetic.
        let bound = 10i128.pow(p);
        let within = |v: i128| -bound < v && v < bound;
        let fits = match out.nulls() {
            None => out.values().iter().fold(true, |fits, &v| fits & within(v)),
            Some(n) => out.values().iter().zip(n.iter()).fold(true, |fits, (&v, valid)| fits & (!valid | within(v))),
        };
        if !fits {
            return Err(Error::Execution(format!(
                "overflow: a result of {} does not fit {}",
                op.symbol(),
                types::sql_type_name(data_type)
            )));
        }
    }
    Ok(Some(Arc::new(out.with_precision_and_scale(p as u8, s)?)))
}

/// Date arithmetic that Arrow's kernels type differently from SQL: a date plus or minus days, the
/// days between two dates, the interval between two timestamps. `None` for everything else.
fn temporal_binary(op: BinaryOp, l: &Value, r: &Value, data_type: &DataType, n: usize) -> Result<Option<ArrayRef>> {
    use arrow::compute::cast;
    use DataType::*;
    let (lt, rt) = (l.data_type().clone(), r.data_type().clone());
    let days = |v: &Value| -> Result<ArrayRef> { Ok(cast(&v.clone().into_array(n)?, &Int64)?) };
    match (&lt, &rt, data_type) {
        (Date32, Int64, Date32) | (Int64, Date32, Date32) | (Date32, Date32, Int64) => {
            let (a, b) = (days(l)?, days(r)?);
            let out = if op == BinaryOp::Plus { numeric::add(&a, &b)? } else { numeric::sub(&a, &b)? };
            if data_type == &Date32 {
                let narrow = types::cast_sql(&out, &Int32)
                    .map_err(|_| Error::Execution("date out of range in date arithmetic".into()))?;
                return Ok(Some(cast(&narrow, &Date32)?));
            }
            Ok(Some(out))
        }
        (Timestamp(unit, _), Timestamp(..), Interval(_)) => {
            let nanos_per_unit: i64 = match unit {
                arrow::datatypes::TimeUnit::Second => 1_000_000_000,
                arrow::datatypes::TimeUnit::Millisecond => 1_000_000,
                arrow::datatypes::TimeUnit::Microsecond => 1_000,
                arrow::datatypes::TimeUnit::Nanosecond => 1,
            };
            let (a, b) = (days(l)?, days(r)?);
            let diff = numeric::sub(&a, &b)?;
            // As DuckDB: whole days, and the rest as time.
            const DAY: i64 = 86_400_000_000_000;
            let out: arrow::array::IntervalMonthDayNanoArray = diff
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .map(|v| {
                    v.map(|v| {
                        let nanos = v.saturating_mul(nanos_per_unit);
                        arrow::datatypes::IntervalMonthDayNano::new(0, (nanos / DAY) as i32, nanos % DAY)
                    })
                })
                .collect();
            Ok(Some(Arc::new(out)))
        }
        _ => Ok(None),
    }
}

fn as_bool(a: &ArrayRef) -> Result<BooleanArray> {
    match a.data_type() {
        DataType::Boolean => Ok(a.as_boolean().clone()),
        DataType::Null => Ok(BooleanArray::new_null(a.len())),
        other => Err(Error::Execution(format!("expected a boolean, got {other}"))),
    }
}

impl fmt::Display for Expr {
    #[recursive::recursive]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Column { name, .. } => write!(f, "{name}"),
            Expr::Literal(a) => {
                let s = arrow::util::display::array_value_to_string(a, 0).unwrap_or_default();
                if a.is_null(0) {
                    write!(f, "NULL")
                } else if matches!(a.data_type(), DataType::Utf8) {
                    write!(f, "'{}'", s.replace('\'', "''"))
                } else if matches!(a.data_type(), DataType::Interval(_)) {
                    write!(f, "INTERVAL '{s}'")
                } else if matches!(a.data_type(), DataType::Date32 | DataType::Timestamp(..)) {
                    write!(f, "{} '{s}'", types::sql_type_name(a.data_type()))
                } else {
                    write!(f, "{s}")
                }
            }
            Expr::Binary { op, left, right, .. } => write!(f, "({left} {} {right})", op.symbol()),
            Expr::Not(e) => write!(f, "(NOT {e})"),
            Expr::Negate(e) => write!(f, "(-{e})"),
            Expr::IsNull { expr, negated } => write!(f, "({expr} IS {}NULL)", if *negated { "NOT " } else { "" }),
            Expr::InList { expr, list, negated } => {
                let items: Vec<String> = list.iter().map(|e| e.to_string()).collect();
                write!(f, "({expr} {}IN ({}))", if *negated { "NOT " } else { "" }, items.join(", "))
            }
            Expr::Like { expr, pattern, negated, case_insensitive } => write!(
                f,
                "({expr} {}{} {pattern})",
                if *negated { "NOT " } else { "" },
                if *case_insensitive { "ILIKE" } else { "LIKE" }
            ),
            Expr::Case { whens, otherwise, .. } => {
                write!(f, "CASE")?;
                for (c, v) in whens {
                    write!(f, " WHEN {c} THEN {v}")?;
                }
                if let Some(e) = otherwise {
                    write!(f, " ELSE {e}")?;
                }
                write!(f, " END")
            }
            Expr::Cast { expr, to } => write!(f, "CAST({expr} AS {})", types::sql_type_name(to)),
            Expr::Function { func, args, .. } => {
                let items: Vec<String> = args.iter().map(|e| e.to_string()).collect();
                write!(f, "{}({})", func.name(), items.join(", "))
            }
            Expr::AggregateRef { index, .. } => write!(f, "aggregate#{index}"),
            Expr::OuterColumn { name, .. } => write!(f, "outer.{name}"),
            Expr::Subquery { id, .. } => write!(f, "subquery#{id}"),
            Expr::WindowRef { index, .. } => write!(f, "window#{index}"),
        }
    }
}
