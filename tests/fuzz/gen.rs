//! Random tables and random queries over them, from a seed.
//!
//! Tables: a unique `id` and columns of every type flow reads (integers, decimals, doubles,
//! strings short and long, dates, timestamps, booleans), with nulls, skew, few or many distinct
//! values, and sizes from empty to a few hundred thousand rows in several row groups. Values are
//! drawn from small shared domains, so that joins between tables find partners.
//!
//! Queries: joins of every kind (conditions on columns of one type class, extra non-equality
//! conditions), filters, projections, aggregation with and without DISTINCT, GROUP BY of several
//! keys, HAVING, window functions, DISTINCT, ORDER BY with LIMIT and OFFSET, derived tables, CTEs
//! read once, several times and reading each other, subqueries (IN, NOT IN, EXISTS, NOT EXISTS,
//! scalar, correlated by equality) and set operations. Everything generated is SQL both flow and
//! DuckDB run with one meaning: ORDER BY under a LIMIT orders by every output column (a total
//! order up to equal rows), no LIMIT where a double's last bits could decide what is kept, and
//! set operations cast each column to one type.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// The type classes queries are typed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int,
    Dec,
    Float,
    Str,
    Date,
    Ts,
    Bool,
}

impl Ty {
    /// The SQL type a set operation casts a column of this class to.
    fn sql(self) -> &'static str {
        match self {
            Ty::Int => "BIGINT",
            Ty::Dec => "DECIMAL(18,3)",
            Ty::Float => "DOUBLE",
            Ty::Str => "VARCHAR",
            Ty::Date => "DATE",
            Ty::Ts => "TIMESTAMP",
            Ty::Bool => "BOOLEAN",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Dec | Ty::Float)
    }
}

/// A generated table: its name, columns and data.
pub struct Table {
    pub name: String,
    pub columns: Vec<(String, Ty)>,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// Rows per row group in the file.
    pub row_group_rows: usize,
}

/// How big a case's tables are.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    /// 0 to 2,000 rows.
    Small,
    /// Up to 300,000 rows: more than a small budget holds.
    Large,
}

pub fn tables(rng: &mut StdRng, size: Size) -> Vec<Table> {
    let n = *[1, 2, 2, 3, 3].choose(rng).unwrap();
    (0..n).map(|i| table(rng, i, size)).collect()
}

fn table(rng: &mut StdRng, index: usize, size: Size) -> Table {
    let rows = match size {
        Size::Small => match rng.random_range(0..10) {
            0 => 0,
            1 => 1,
            2..=5 => rng.random_range(2..200),
            _ => rng.random_range(200..2000),
        },
        Size::Large => rng.random_range(50_000..300_000),
    };
    let name = format!("t{index}");
    let mut columns = vec![(format!("{name}_id"), Ty::Int)];
    let count = rng.random_range(2..7);
    for c in 0..count {
        let ty =
            *[Ty::Int, Ty::Int, Ty::Dec, Ty::Float, Ty::Str, Ty::Str, Ty::Date, Ty::Ts, Ty::Bool].choose(rng).unwrap();
        columns.push((format!("{name}_{}{c}", prefix(ty)), ty));
    }
    // Ids in a random order (shuffled runs), so no statistics shortcut sees them sorted.
    let mut ids: Vec<i64> = (0..rows as i64).collect();
    if rng.random_bool(0.7) {
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.random_range(0..=i));
        }
    }
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(ids))];
    for (_, ty) in &columns[1..] {
        arrays.push(column(rng, *ty, rows));
    }
    let fields: Vec<Field> =
        columns.iter().zip(&arrays).map(|((n, _), a)| Field::new(n, a.data_type().clone(), true)).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    let row_group_rows = *[7, 100, 1000, 8192, 65536, 1 << 20].choose(rng).unwrap();
    Table { name, columns, batches: vec![batch], rows, row_group_rows }
}

fn prefix(ty: Ty) -> &'static str {
    match ty {
        Ty::Int => "i",
        Ty::Dec => "d",
        Ty::Float => "f",
        Ty::Str => "s",
        Ty::Date => "dt",
        Ty::Ts => "ts",
        Ty::Bool => "b",
    }
}

/// A column of `rows` values: nulls at a random rate, values from a domain of random size,
/// skewed (a few values take most rows) or not.
fn column(rng: &mut StdRng, ty: Ty, rows: usize) -> ArrayRef {
    let nulls = *[0.0, 0.0, 0.05, 0.3, 0.9].choose(rng).unwrap();
    let domain: u64 = *[1, 3, 10, 100, 10_000, 1_000_000].choose(rng).unwrap();
    let skewed = rng.random_bool(0.3);
    let draw = |rng: &mut StdRng| -> Option<i64> {
        if rng.random_bool(nulls) {
            return None;
        }
        let v = if skewed {
            // Squared uniform: small values are much more frequent.
            let u: f64 = rng.random();
            (u * u * domain as f64) as i64
        } else {
            rng.random_range(0..domain) as i64
        };
        Some(v)
    };
    let values: Vec<Option<i64>> = (0..rows).map(|_| draw(rng)).collect();
    let negative = rng.random_bool(0.3);
    let signed = |v: i64| if negative && v % 3 == 1 { -v } else { v };
    match ty {
        Ty::Int => {
            if rng.random_bool(0.5) {
                Arc::new(Int32Array::from(values.iter().map(|v| v.map(|v| signed(v) as i32)).collect::<Vec<_>>()))
            } else {
                Arc::new(Int64Array::from(values.iter().map(|v| v.map(signed)).collect::<Vec<_>>()))
            }
        }
        Ty::Dec => {
            let (precision, scale) = *[(9, 2), (15, 2), (18, 4), (38, 10)].choose(rng).unwrap();
            let unit = 10i128.pow(scale as u32 - 2);
            let array: Decimal128Array =
                values.iter().map(|v| v.map(|v| (signed(v) as i128 * 7 + 3) * unit)).collect::<Decimal128Array>();
            Arc::new(array.with_precision_and_scale(precision, scale as i8).unwrap())
        }
        Ty::Float => Arc::new(Float64Array::from(
            values.iter().map(|v| v.map(|v| signed(v) as f64 * 0.25 + 0.125)).collect::<Vec<_>>(),
        )),
        Ty::Str => {
            let long = rng.random_bool(0.2);
            let words = ["", "a", "ab", "Abc", "k", "zz", "é", "日本", "x,y", "q\"t", "o'k", "TRUE", "10"];
            Arc::new(StringArray::from(
                values
                    .iter()
                    .map(|v| {
                        v.map(|v| match (long, v % 5) {
                            (true, _) => format!("{v:06}-{}", "w".repeat((v % 97) as usize * 3)),
                            (false, 0) => words[(v as usize / 5) % words.len()].to_string(),
                            _ => format!("k{v}"),
                        })
                    })
                    .collect::<Vec<_>>(),
            ))
        }
        Ty::Date => Arc::new(Date32Array::from(
            values.iter().map(|v| v.map(|v| 18_000 + (signed(v) % 4000) as i32)).collect::<Vec<_>>(),
        )),
        Ty::Ts => Arc::new(TimestampMicrosecondArray::from(
            values
                .iter()
                .map(|v| v.map(|v| 1_500_000_000_000_000 + signed(v) % 100_000 * 3_600_000_000 + v % 7 * 1_000_001))
                .collect::<Vec<_>>(),
        )),
        Ty::Bool => Arc::new(BooleanArray::from(values.iter().map(|v| v.map(|v| v % 2 == 0)).collect::<Vec<_>>())),
    }
}

/// Arrow type of a column, for tests that check schemas.
#[allow(dead_code)]
pub fn arrow_type(ty: Ty) -> DataType {
    match ty {
        Ty::Int => DataType::Int64,
        Ty::Dec => DataType::Decimal128(18, 3),
        Ty::Float => DataType::Float64,
        Ty::Str => DataType::Utf8,
        Ty::Date => DataType::Date32,
        Ty::Ts => DataType::Timestamp(TimeUnit::Microsecond, None),
        Ty::Bool => DataType::Boolean,
    }
}

/// A generated query.
pub struct Query {
    pub sql: String,
    /// Whether the rows come in one order both engines must agree on.
    pub ordered: bool,
}

/// What a query can read: columns as SQL references and their classes.
#[derive(Clone, Default)]
struct Scope {
    columns: Vec<(String, Ty)>,
}

impl Scope {
    fn of(&self, ty: Ty) -> Vec<&String> {
        self.columns.iter().filter(|(_, t)| *t == ty).map(|(c, _)| c).collect()
    }
}

/// A relation a FROM clause can name: a table or a CTE, with its columns.
#[derive(Clone)]
struct Relation {
    name: String,
    columns: Vec<(String, Ty)>,
}

pub struct QueryGen<'a> {
    rng: &'a mut StdRng,
    relations: Vec<Relation>,
    next_alias: usize,
    /// Tables so big that a join on a column of few values would make billions of rows: joins
    /// then go through a table's unique id.
    big: bool,
}

/// The output of a SELECT: its SQL and its columns' classes.
struct Select {
    sql: String,
    types: Vec<Ty>,
    ordered: bool,
}

impl<'a> QueryGen<'a> {
    pub fn new(rng: &'a mut StdRng, tables: &[Table]) -> QueryGen<'a> {
        let relations = tables.iter().map(|t| Relation { name: t.name.clone(), columns: t.columns.clone() }).collect();
        let big = tables.iter().any(|t| t.rows >= 300);
        QueryGen { rng, relations, next_alias: 0, big }
    }

    pub fn query(&mut self) -> Query {
        let mut ctes = Vec::new();
        if self.rng.random_bool(0.25) {
            for i in 0..self.rng.random_range(1..=2) {
                let body = self.select(1, None, false);
                let name = format!("cte{i}");
                let columns = body.types.iter().enumerate().map(|(j, t)| (format!("o{j}"), *t)).collect();
                ctes.push(format!("{name} AS ({})", body.sql));
                // Later CTEs and the query may read it, often more than once.
                self.relations.push(Relation { name, columns });
            }
        }
        let body = if self.rng.random_bool(0.15) {
            let first = self.select(1, None, false);
            let second = self.select(1, Some(&first.types), false);
            let op =
                *["UNION", "UNION ALL", "INTERSECT", "INTERSECT ALL", "EXCEPT", "EXCEPT ALL"].choose(self.rng).unwrap();
            let cast = |s: &Select| -> String {
                let list: Vec<String> =
                    s.types.iter().enumerate().map(|(i, t)| format!("CAST(o{i} AS {}) AS o{i}", t.sql())).collect();
                format!("SELECT {} FROM ({}) AS set_{}", list.join(", "), s.sql, s.types.len())
            };
            let sql = format!("{} {op} {}", cast(&first), cast(&second));
            let n = first.types.len();
            match self.limit_clause(&first.types, true) {
                Some((order, limit)) => {
                    Select { sql: format!("{sql} {order}{limit}"), types: first.types, ordered: true }
                }
                None if self.rng.random_bool(0.3) => {
                    let order = (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
                    Select { sql: format!("{sql} ORDER BY {order}"), types: first.types, ordered: false }
                }
                None => Select { sql, types: first.types, ordered: false },
            }
        } else {
            self.select(2, None, true)
        };
        let sql = match ctes.is_empty() {
            true => body.sql,
            false => format!("WITH {} {}", ctes.join(", "), body.sql),
        };
        Query { sql, ordered: body.ordered }
    }

    fn alias(&mut self) -> String {
        self.next_alias += 1;
        format!("r{}", self.next_alias)
    }

    /// A FROM clause of one to three relations joined, and what it makes visible.
    fn from(&mut self, depth: u32) -> (String, Scope) {
        let count = *[1, 1, 2, 2, 2, 3].choose(self.rng).unwrap();
        let mut sql = String::new();
        let mut scope = Scope::default();
        for i in 0..count {
            let (item, columns) = self.relation(depth);
            if i == 0 {
                sql = item;
                scope.columns.extend(columns);
                continue;
            }
            let right = Scope { columns: columns.clone() };
            let condition = self.join_condition(&scope, &right);
            if self.big && condition.is_none() {
                // No key to join big tables on: stay with what is joined so far.
                break;
            }
            let kind = match condition {
                None => "CROSS JOIN",
                Some(_) => *["JOIN", "JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"].choose(self.rng).unwrap(),
            };
            sql.push_str(&format!(" {kind} {item}"));
            if let Some(on) = condition {
                sql.push_str(&format!(" ON {on}"));
            }
            scope.columns.extend(columns);
        }
        (sql, scope)
    }

    /// A table, CTE or derived table under a fresh alias.
    fn relation(&mut self, depth: u32) -> (String, Vec<(String, Ty)>) {
        let alias = self.alias();
        if depth > 0 && self.rng.random_bool(0.15) {
            let inner = self.select(depth - 1, None, false);
            let columns = inner.types.iter().enumerate().map(|(i, t)| (format!("{alias}.o{i}"), *t)).collect();
            return (format!("({}) AS {alias}", inner.sql), columns);
        }
        let r = self.relations.choose(self.rng).unwrap().clone();
        let columns = r.columns.iter().map(|(c, t)| (format!("{alias}.{c}"), *t)).collect();
        (format!("{} AS {alias}", r.name), columns)
    }

    /// An equality of two columns of one class, one from each side, sometimes with a second
    /// equality or a non-equality; `None` for a cross join (rarely).
    fn join_condition(&mut self, left: &Scope, right: &Scope) -> Option<String> {
        self.condition(left, right, true)
    }

    /// A correlation between a subquery and its outer query: equalities only.
    fn correlation(&mut self, outer: &Scope, inner: &Scope) -> Option<String> {
        self.condition(outer, inner, false)
    }

    fn condition(&mut self, left: &Scope, right: &Scope, inequality: bool) -> Option<String> {
        let mut pairs = Vec::new();
        let mut keys = Vec::new();
        for (l, lt) in &left.columns {
            for (r, rt) in &right.columns {
                if lt == rt && !matches!(lt, Ty::Float | Ty::Bool) {
                    pairs.push((l.clone(), r.clone(), *lt));
                    if l.ends_with("_id") || r.ends_with("_id") {
                        keys.push((l.clone(), r.clone(), *lt));
                    }
                }
            }
        }
        let candidates = if self.big { &keys } else { &pairs };
        if candidates.is_empty() || (!self.big && self.rng.random_bool(0.05)) {
            return None;
        }
        let (l, r, _) = candidates.choose(self.rng).unwrap().clone();
        let mut on = format!("{l} = {r}");
        if self.rng.random_bool(0.2) {
            let (l2, r2, _) = pairs.choose(self.rng).unwrap().clone();
            on.push_str(&format!(" AND {l2} = {r2}"));
        }
        if inequality && self.rng.random_bool(0.15) {
            let (l3, r3, t) = pairs.choose(self.rng).unwrap().clone();
            if t != Ty::Bool {
                let op = *["<", "<=", ">", "<>"].choose(self.rng).unwrap();
                on.push_str(&format!(" AND {l3} {op} {r3}"));
            }
        }
        Some(on)
    }

    /// A SELECT; with `types`, one whose columns have those classes. `top`: the outermost query
    /// (ORDER BY there decides the output's order).
    fn select(&mut self, depth: u32, types: Option<&[Ty]>, top: bool) -> Select {
        let (from, scope) = self.from(depth);
        let mut sql = String::from("SELECT ");
        let filter = self.rng.random_bool(0.6).then(|| self.boolean(&scope, 2, depth));
        let shape = match types {
            Some(_) => 0,
            None => self.rng.random_range(0..10),
        };
        let mut items: Vec<(String, Ty)> = Vec::new();
        let mut group_by = Vec::new();
        let mut having = None;
        match shape {
            // Aggregation.
            0..=3 if types.is_none() => {
                let keys = *[0, 1, 1, 2, 3].choose(self.rng).unwrap();
                for _ in 0..keys {
                    let ty = self.some_type(&scope);
                    let key = self.expr(ty, &scope, 1, depth);
                    if key.parse::<i64>().is_ok() {
                        // An integer in GROUP BY is a position.
                        continue;
                    }
                    group_by.push(key.clone());
                    items.push((key, ty));
                }
                for _ in 0..self.rng.random_range(1..=3) {
                    items.push(self.aggregate(&scope));
                }
                if self.rng.random_bool(0.3) {
                    let (agg, ty) = self.aggregate(&scope);
                    let threshold = self.literal(ty);
                    having = Some(match ty {
                        Ty::Bool => format!("{agg} IS NOT NULL"),
                        _ => format!("{agg} >= {threshold}"),
                    });
                }
            }
            // Window functions beside plain columns.
            4..=5 if types.is_none() => {
                for _ in 0..self.rng.random_range(1..=2) {
                    let ty = self.some_type(&scope);
                    items.push((self.expr(ty, &scope, 1, depth), ty));
                }
                // One function at most whose value depends on the order of equal rows: two of
                // them pair their values row by row, and rows equal in every column may pair
                // either way (lag's first of three equal rows beside row_number 1 or 2).
                let mut positional = true;
                for _ in 0..self.rng.random_range(1..=2) {
                    let (item, ty, by_position) = self.window(&scope, positional);
                    positional &= !by_position;
                    items.push((item, ty));
                }
            }
            _ => match types {
                Some(types) => {
                    for &ty in types {
                        items.push((self.expr(ty, &scope, 2, depth), ty));
                    }
                }
                None => {
                    for _ in 0..self.rng.random_range(1..=4) {
                        let ty = self.some_type(&scope);
                        items.push((self.expr(ty, &scope, 2, depth), ty));
                    }
                }
            },
        }
        if group_by.is_empty() && having.is_none() && types.is_none() && shape > 5 && self.rng.random_bool(0.15) {
            sql.push_str("DISTINCT ");
        }
        let list: Vec<String> = items.iter().enumerate().map(|(i, (e, _))| format!("{e} AS o{i}")).collect();
        sql.push_str(&list.join(", "));
        sql.push_str(&format!(" FROM {from}"));
        if let Some(f) = filter {
            sql.push_str(&format!(" WHERE {f}"));
        }
        if !group_by.is_empty() {
            sql.push_str(&format!(" GROUP BY {}", group_by.join(", ")));
        }
        if let Some(h) = having {
            sql.push_str(&format!(" HAVING {h}"));
        }
        let types: Vec<Ty> = items.iter().map(|(_, t)| *t).collect();
        let mut ordered = false;
        // Windows may not run under a LIMIT in DuckDB's order; a set operation's branches take none.
        if top || (depth > 0 && self.rng.random_bool(0.2)) {
            if let Some((order, limit)) = self.limit_clause(&types, top) {
                sql.push_str(&format!(" {order}{limit}"));
                ordered = top;
            }
        }
        Select { sql, types, ordered }
    }

    /// `ORDER BY` every output column (a total order) and sometimes `LIMIT`/`OFFSET`; none when a
    /// double is among the columns (its last bits may differ between engines and decide order).
    fn limit_clause(&mut self, types: &[Ty], top: bool) -> Option<(String, String)> {
        if types.contains(&Ty::Float) || !self.rng.random_bool(if top { 0.4 } else { 0.5 }) {
            return None;
        }
        let keys: Vec<String> = (1..=types.len())
            .map(|i| {
                let dir = *["", " ASC", " DESC"].choose(self.rng).unwrap();
                let nulls = *["", " NULLS FIRST", " NULLS LAST"].choose(self.rng).unwrap();
                format!("{i}{dir}{nulls}")
            })
            .collect();
        let limit = match self.rng.random_range(0..4) {
            0 => String::new(),
            1 => format!(" LIMIT {}", self.rng.random_range(0..30)),
            2 => format!(" LIMIT {} OFFSET {}", self.rng.random_range(1..30), self.rng.random_range(0..50)),
            _ => format!(" LIMIT {}", self.rng.random_range(1..3)),
        };
        Some((format!("ORDER BY {}", keys.join(", ")), limit))
    }

    fn some_type(&mut self, scope: &Scope) -> Ty {
        let present: Vec<Ty> = scope.columns.iter().map(|(_, t)| *t).collect();
        if self.rng.random_bool(0.8) {
            *present.choose(self.rng).unwrap_or(&Ty::Int)
        } else {
            *[Ty::Int, Ty::Dec, Ty::Float, Ty::Str, Ty::Date, Ty::Bool].choose(self.rng).unwrap()
        }
    }

    fn literal(&mut self, ty: Ty) -> String {
        let r = &mut self.rng;
        match ty {
            Ty::Int => r.random_range(-5..200).to_string(),
            Ty::Dec => format!("{}.{:02}", r.random_range(-5..300), r.random_range(0..100)),
            Ty::Float => format!("{}.5", r.random_range(-5..200)),
            Ty::Str => format!("'{}'", *["a", "k1", "k42", "zz", "", "é", "o''k", "000010-"].choose(r).unwrap()),
            Ty::Date => {
                format!("DATE '{}'", *["2019-04-15", "2020-01-01", "2021-12-31", "2016-02-29"].choose(r).unwrap())
            }
            Ty::Ts => format!("TIMESTAMP '{}'", *["2017-07-14 02:40:00", "2020-01-01 00:00:00"].choose(r).unwrap()),
            Ty::Bool => (*["TRUE", "FALSE"].choose(r).unwrap()).to_string(),
        }
    }

    /// An expression of class `ty` over `scope`, at most `depth` operators deep; `sub`: how many
    /// more levels of subqueries may nest.
    fn expr(&mut self, ty: Ty, scope: &Scope, depth: u32, _sub: u32) -> String {
        let sub = 0;
        let columns = scope.of(ty);
        if depth == 0 || self.rng.random_bool(0.45) {
            return match columns.choose(self.rng) {
                Some(c) if self.rng.random_bool(0.85) => (*c).clone(),
                _ => self.literal(ty),
            };
        }
        let d = depth - 1;
        match ty {
            Ty::Bool => self.boolean(scope, depth, sub),
            Ty::Int => match self.rng.random_range(0..8) {
                0 => format!("({} + {})", self.expr(Ty::Int, scope, d, sub), self.expr(Ty::Int, scope, d, sub)),
                1 => format!("({} - {})", self.expr(Ty::Int, scope, d, sub), self.literal(Ty::Int)),
                2 => format!("({} * {})", self.expr(Ty::Int, scope, d, sub), self.rng.random_range(-3..4)),
                3 => format!("abs({})", self.expr(Ty::Int, scope, d, sub)),
                4 => format!("length({})", self.expr(Ty::Str, scope, d, sub)),
                5 => format!("coalesce({}, {})", self.expr(Ty::Int, scope, d, sub), self.literal(Ty::Int)),
                6 => format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    self.boolean(scope, d, sub),
                    self.expr(Ty::Int, scope, d, sub),
                    self.expr(Ty::Int, scope, d, sub)
                ),
                _ => format!("({} % {})", self.expr(Ty::Int, scope, d, sub), self.rng.random_range(1..7)),
            },
            Ty::Dec => match self.rng.random_range(0..4) {
                0 => format!("({} + {})", self.expr(Ty::Dec, scope, d, sub), self.expr(Ty::Dec, scope, d, sub)),
                1 => format!("({} * 2)", self.expr(Ty::Dec, scope, d, sub)),
                2 => format!("CAST({} AS DECIMAL(18,3))", self.expr(Ty::Int, scope, d, sub)),
                _ => format!("coalesce({}, {})", self.expr(Ty::Dec, scope, d, sub), self.literal(Ty::Dec)),
            },
            Ty::Float => match self.rng.random_range(0..4) {
                0 => format!("({} / 4)", self.expr(Ty::Float, scope, d, sub)),
                1 => format!("({} + {})", self.expr(Ty::Float, scope, d, sub), self.expr(Ty::Float, scope, d, sub)),
                2 => format!("CAST({} AS DOUBLE)", self.expr(Ty::Int, scope, d, sub)),
                _ => format!("abs({})", self.expr(Ty::Float, scope, d, sub)),
            },
            Ty::Str => match self.rng.random_range(0..7) {
                0 => format!("lower({})", self.expr(Ty::Str, scope, d, sub)),
                1 => format!("upper({})", self.expr(Ty::Str, scope, d, sub)),
                2 => format!("({} || {})", self.expr(Ty::Str, scope, d, sub), self.expr(Ty::Str, scope, d, sub)),
                3 => format!(
                    "substr({}, {}, {})",
                    self.expr(Ty::Str, scope, d, sub),
                    self.rng.random_range(1..4),
                    self.rng.random_range(0..5)
                ),
                4 => format!("coalesce({}, {})", self.expr(Ty::Str, scope, d, sub), self.literal(Ty::Str)),
                5 => format!("CAST({} AS VARCHAR)", self.expr(Ty::Int, scope, d, sub)),
                _ => format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    self.boolean(scope, d, sub),
                    self.expr(Ty::Str, scope, d, sub),
                    self.literal(Ty::Str)
                ),
            },
            Ty::Date => match self.rng.random_range(0..2) {
                0 => format!("({} + {})", self.expr(Ty::Date, scope, d, sub), self.rng.random_range(-40..40)),
                _ => format!("coalesce({}, {})", self.expr(Ty::Date, scope, d, sub), self.literal(Ty::Date)),
            },
            Ty::Ts => format!("coalesce({}, {})", self.expr(Ty::Ts, scope, d, sub), self.literal(Ty::Ts)),
        }
    }

    /// A condition: comparisons, AND/OR/NOT, IS NULL, BETWEEN, IN lists, LIKE, and subqueries.
    fn boolean(&mut self, scope: &Scope, depth: u32, sub: u32) -> String {
        let d = depth.saturating_sub(1);
        let pick = self.rng.random_range(0..if sub > 0 { 14 } else { 10 });
        match pick {
            0..=2 => {
                let ty = self.comparable_type(scope);
                let op = *["=", "<>", "<", "<=", ">", ">="].choose(self.rng).unwrap();
                let l = self.expr(ty, scope, d, sub);
                let r = if self.rng.random_bool(0.5) { self.literal(ty) } else { self.expr(ty, scope, d, sub) };
                format!("{l} {op} {r}")
            }
            // Subqueries go where flow plans them: in conjuncts of WHERE (under OR, NOT or CASE
            // they are the SQL issue's, not this fuzzer's).
            3 if depth > 0 => format!("({} AND {})", self.boolean(scope, d, sub), self.boolean(scope, d, sub)),
            4 if depth > 0 => format!("({} OR {})", self.boolean(scope, d, 0), self.boolean(scope, d, 0)),
            5 if depth > 0 => format!("NOT ({})", self.boolean(scope, d, 0)),
            6 => {
                let ty = self.some_type(scope);
                let not = if self.rng.random_bool(0.5) { " NOT" } else { "" };
                format!("{} IS{not} NULL", self.expr(ty, scope, d, sub))
            }
            7 => {
                let ty = self.comparable_type(scope);
                let (a, b) = (self.literal(ty), self.literal(ty));
                format!("{} BETWEEN {a} AND {b}", self.expr(ty, scope, d, sub))
            }
            8 => {
                let ty = self.comparable_type(scope);
                let items: Vec<String> = (0..self.rng.random_range(1..5)).map(|_| self.literal(ty)).collect();
                let not = if self.rng.random_bool(0.3) { "NOT " } else { "" };
                format!("{} {not}IN ({})", self.expr(ty, scope, d, sub), items.join(", "))
            }
            9 => {
                let pattern = *["k1%", "%a%", "_", "%", "k_", "%0"].choose(self.rng).unwrap();
                format!("{} LIKE '{pattern}'", self.expr(Ty::Str, scope, d, sub))
            }
            10 | 11 if sub > 0 => self.exists(scope, sub),
            12 if sub > 0 => self.in_subquery(scope, sub),
            13 if sub > 0 => {
                let ty = self.comparable_type(scope);
                let op = *["=", "<", ">="].choose(self.rng).unwrap();
                format!("{} {op} {}", self.expr(ty, scope, d, sub), self.scalar_subquery(ty, scope, sub))
            }
            // AND, OR and NOT at the bottom (no depth left): a plain comparison, never a subquery
            // where `sub` allows none.
            _ => {
                let ty = self.comparable_type(scope);
                format!("{} = {}", self.expr(ty, scope, 0, 0), self.literal(ty))
            }
        }
    }

    fn comparable_type(&mut self, scope: &Scope) -> Ty {
        let present: Vec<Ty> = scope.columns.iter().map(|(_, t)| *t).filter(|t| *t != Ty::Bool).collect();
        *present.choose(self.rng).unwrap_or(&Ty::Int)
    }

    /// `[NOT] EXISTS (SELECT ... WHERE inner.x = outer.y [AND ...])`, correlated by equality.
    fn exists(&mut self, outer: &Scope, sub: u32) -> String {
        let (item, columns) = self.relation(0);
        let inner = Scope { columns };
        let mut conditions = Vec::new();
        if let Some(c) = self.correlation(outer, &inner) {
            conditions.push(c);
        }
        if self.rng.random_bool(0.5) {
            conditions.push(self.boolean(&inner, 1, sub - 1));
        }
        let not = if self.rng.random_bool(0.4) { "NOT " } else { "" };
        let filter = match conditions.is_empty() {
            true => String::new(),
            false => format!(" WHERE {}", conditions.join(" AND ")),
        };
        format!("{not}EXISTS (SELECT 1 FROM {item}{filter})")
    }

    /// `x [NOT] IN (SELECT y FROM ...)`, uncorrelated.
    fn in_subquery(&mut self, outer: &Scope, sub: u32) -> String {
        let (item, columns) = self.relation(0);
        let inner = Scope { columns };
        let ty = self.comparable_type(&inner);
        let inner_column = self.expr(ty, &inner, 0, 0);
        let filter = match self.rng.random_bool(0.4) {
            true => format!(" WHERE {}", self.boolean(&inner, 1, sub - 1)),
            false => String::new(),
        };
        let not = if self.rng.random_bool(0.4) { "NOT " } else { "" };
        format!("{} {not}IN (SELECT {inner_column} FROM {item}{filter})", self.expr(ty, outer, 1, 0))
    }

    /// `(SELECT agg(...) FROM ... [WHERE inner.x = outer.y])`: one value, correlated or not.
    fn scalar_subquery(&mut self, ty: Ty, outer: &Scope, _sub: u32) -> String {
        let (item, columns) = self.relation(0);
        let inner = Scope { columns };
        let value = match (ty, inner.of(ty).first()) {
            (Ty::Int, _) if self.rng.random_bool(0.3) => "count(*)".to_string(),
            (_, Some(c)) => format!("{}({c})", *["min", "max"].choose(self.rng).unwrap()),
            _ => format!("max({})", self.literal(ty)),
        };
        let filter = match self.rng.random_bool(0.6).then(|| self.correlation(outer, &inner)).flatten() {
            Some(c) => format!(" WHERE {c}"),
            None => String::new(),
        };
        format!("(SELECT {value} FROM {item}{filter})")
    }

    /// An aggregate over the scope and its class.
    fn aggregate(&mut self, scope: &Scope) -> (String, Ty) {
        let ty = self.some_type(scope);
        let e = self.expr(ty, scope, 1, 0);
        let distinct = if self.rng.random_bool(0.2) { "DISTINCT " } else { "" };
        match self.rng.random_range(0..7) {
            0 => ("count(*)".into(), Ty::Int),
            1 => (format!("count({distinct}{e})"), Ty::Int),
            2 | 3 if ty.numeric() => {
                let f = *["sum", "avg"].choose(self.rng).unwrap();
                let out = if f == "avg" || ty == Ty::Float { Ty::Float } else { ty };
                (format!("{f}({distinct}{e})"), out)
            }
            4 if ty == Ty::Float => (format!("stddev_samp({e})"), Ty::Float),
            _ if ty == Ty::Bool => (format!("count({distinct}{e})"), Ty::Int),
            _ => (format!("{}({e})", *["min", "max"].choose(self.rng).unwrap()), ty),
        }
    }

    /// A window function: deterministic ones, ordered by every column of the scope where order
    /// decides the value; with `positional` false, none whose value depends on the position of
    /// a row among equal ones (row_number, lag, a frame of rows). Also whether it is one.
    fn window(&mut self, scope: &Scope, positional: bool) -> (String, Ty, bool) {
        let (item, ty) = self.window_function(scope, positional);
        let by_position = ["row_number(", "lag(", "ROWS BETWEEN"].iter().any(|p| item.contains(p));
        (item, ty, by_position)
    }

    fn window_function(&mut self, scope: &Scope, positional: bool) -> (String, Ty) {
        let partition = match self.rng.random_range(0..3) {
            0 => String::new(),
            _ => {
                let (c, _) = scope.columns.choose(self.rng).unwrap();
                format!("PARTITION BY {c}")
            }
        };
        // Every column (doubles too: left out, two rows differing only there tied, and
        // row_number numbered them either way): ties only between equal rows, which no
        // function tells apart.
        let total: Vec<String> = scope
            .columns
            .iter()
            .map(|(c, _)| format!("{c}{}", if self.rng.random_bool(0.3) { " DESC" } else { "" }))
            .collect();
        let total = total.join(", ");
        let ty = self.some_type(scope);
        let column = self.expr(ty, scope, 0, 0);
        let numeric = scope.columns.iter().find(|(_, t)| matches!(t, Ty::Int | Ty::Dec)).map(|(c, _)| c.clone());
        let kind = match self.rng.random_range(0..7) {
            k @ (0 | 4 | 5) if !positional => [1, 2, 3, 6][k % 4],
            k => k,
        };
        match kind {
            0 => (format!("row_number() OVER ({partition} ORDER BY {total})"), Ty::Int),
            1 => {
                let (key, _) = scope
                    .columns
                    .iter()
                    .filter(|(_, t)| *t != Ty::Float)
                    .collect::<Vec<_>>()
                    .choose(self.rng)
                    .map(|x| (*x).clone())
                    .unwrap_or(("1".into(), Ty::Int));
                let f = *["rank", "dense_rank"].choose(self.rng).unwrap();
                (format!("{f}() OVER ({partition} ORDER BY {key})"), Ty::Int)
            }
            2 => (format!("count(*) OVER ({partition})"), Ty::Int),
            3 => match &numeric {
                Some(n) => (
                    format!("sum({n}) OVER ({partition})"),
                    if scope.columns.iter().any(|(c, t)| c == n && *t == Ty::Dec) { Ty::Dec } else { Ty::Int },
                ),
                None => (format!("count({column}) OVER ({partition})"), Ty::Int),
            },
            4 => (format!("lag({column}) OVER ({partition} ORDER BY {total})"), ty),
            5 => match &numeric {
                Some(n) => {
                    let t = if scope.columns.iter().any(|(c, t)| c == n && *t == Ty::Dec) { Ty::Dec } else { Ty::Int };
                    (
                        format!(
                            "sum({n}) OVER ({partition} ORDER BY {total} ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)"
                        ),
                        t,
                    )
                }
                None => (format!("count(*) OVER ({partition} ORDER BY {total})"), Ty::Int),
            },
            _ => (format!("{}({column}) OVER ({partition})", *["min", "max"].choose(self.rng).unwrap()), ty),
        }
    }
}

/// A generator seeded for one case.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}
