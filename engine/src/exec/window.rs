//! Window functions (`f(...) OVER (PARTITION BY .. ORDER BY .. frame)`), sort-based.
//!
//! Blocks on each partition: its rows come out once the partition is complete. Spills: the input
//! is sorted by the partition and order keys with the external sort (which spills), and a single
//! partition larger than the operator's share is written to a spill file and evaluated from it.
//!
//! # Algorithm
//!
//! 1. The sorted input is read batch by batch into a block (under the operator's reservation,
//!    `Window`), each batch with its partition and order keys in row format and the functions'
//!    arguments evaluated.
//! 2. Once the block holds enough rows, every complete partition in it is evaluated in memory and
//!    its rows come out with one column per function; the partition still being read stays.
//! 3. When one partition alone fills the share, it goes to a spill file as it is read, and is
//!    evaluated from there when it ends. Evaluation reads rows through cursors that only move
//!    forward (the current row, a frame's start and end, `lag`/`lead`'s offset row), each holding
//!    one batch: a partition of any size, and a frame or peer group of any size, fit in a few
//!    batches.
//!
//! ```text
//!  sorted input ─> block [ p1 | p2 | p3 | p4 ...  ] ─> evaluate p1..p3 ─> rows + function columns
//!                                   └ p4 too big ─> spill file ─> cursors (row, frame start, end)
//! ```
//!
//! Frames: `ROWS` and `RANGE` (offsets on one numeric or date ordering key), any start and end.
//! A frame that ends at `UNBOUNDED FOLLOWING` but starts elsewhere is computed over the reversed
//! ordering (the planner turns the sort around), so cursors never move back. Aggregates keep a
//! running state: rows are added as the frame's end moves and removed as its start moves
//! (`min`/`max` keep a monotonic queue of the frame's candidates).

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    RecordBatchOptions,
};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Float64Type, SchemaRef};
use arrow_row::{RowConverter, Rows, SortField};

use super::accumulators::{sliding_accumulator, ArgValues, FrameValue, SlidingAccumulator};
use super::node::{Node, Running, Started};
use super::sort::SortStream;
use super::{start_beside, BatchStream, ExecContext, ExplainLine, OperatorMetrics, Pipeline};
use crate::error::{Error, Result};
use crate::expr::window::{FrameBound, FrameUnits, WindowExpr, WindowFunction};
use crate::expr::{AggregateFunction, Expr};
use crate::memory::MemoryReservation;
use crate::plan::SortKey;
use crate::spill::{SpillFile, SpillReader, SpillWriter};

/// The least memory the operator needs besides its sort: a few batches of block and output.
pub(crate) fn min_memory(ctx: &ExecContext) -> u64 {
    4 * ctx.batch_bytes_target().min(1 << 20)
}

/// Window functions over the input sorted by partition and order keys.
pub(crate) struct WindowNode {
    pub input: Box<Pipeline>,
    pub partition_by: Vec<usize>,
    pub order_by: Vec<SortKey>,
    pub functions: Vec<WindowExpr>,
    pub schema: SchemaRef,
}

impl Node for WindowNode {
    fn name(&self) -> &'static str {
        "Window"
    }

    fn detail(&self) -> String {
        self.functions.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
    }

    fn inputs(&self) -> Vec<&Pipeline> {
        vec![&self.input]
    }

    fn explain(&self, ctx: &ExecContext, id: u64, depth: usize, role: &str, out: &mut Vec<ExplainLine>) {
        let items = crate::plan::window_items(&self.input.schema, &self.partition_by, &self.order_by, &self.functions);
        out.push(ExplainLine { depth, id: Some(id), text: format!("{role}Window {items} (sorted, spilling)") });
        self.input.describe(ctx, depth + 1, "", out);
    }

    fn min_memory(&self, ctx: &ExecContext) -> u64 {
        self.input.min_memory(ctx) + super::sort::plan_min_memory(ctx) + min_memory(ctx)
    }

    fn stream_memory(&self, ctx: &ExecContext, _queue_limit: u64) -> u64 {
        min_memory(ctx)
    }

    fn max_memory(&self, ctx: &ExecContext, queue_limit: u64) -> u64 {
        self.input.max_memory(ctx, queue_limit).max(super::sort::min_memory(ctx) + min_memory(ctx))
    }

    fn start(
        self: Box<Self>,
        ctx: &ExecContext,
        _schema: &SchemaRef,
        metrics: &Arc<OperatorMetrics>,
        _queue_limit: Option<u64>,
    ) -> Result<Started> {
        let WindowNode { input, partition_by, order_by, functions, schema } = *self;
        let input_schema = input.schema.clone();
        let mut keys: Vec<SortKey> =
            partition_by.iter().map(|&column| SortKey { column, descending: false, nulls_first: false }).collect();
        keys.extend(order_by.iter().copied());
        let spec = WindowSpec { partition_by, order_by, functions, schema };
        let small = 2 * ctx.batch_bytes_target();
        let child_max = input.max_memory(ctx, small);
        let child_stream = input.stream_memory(ctx, small);
        let keep_floor = matches!(input.source.name(), "HashAggregate" | "ExternalSort" | "Window");
        let minimum = super::sort::min_memory(ctx) + min_memory(ctx);
        let child = start_beside(ctx, "Window", minimum, || input.execute_with(ctx, Some(small)))?;
        let stream = if keys.is_empty() {
            WindowStream::new(spec, &input_schema, None, Some(child), ctx, metrics.clone())?
        } else {
            let sort = SortStream::new(child, keep_floor, keys, None, child_max, child_stream, ctx, metrics.clone())?;
            WindowStream::new(spec, &input_schema, Some(sort), None, ctx, metrics.clone())?
        };
        Ok(Started::new(stream))
    }
}

/// What a window operator computes.
pub(crate) struct WindowSpec {
    pub partition_by: Vec<usize>,
    pub order_by: Vec<SortKey>,
    pub functions: Vec<WindowExpr>,
    /// Output: the input's columns, then one per function.
    pub schema: SchemaRef,
}

/// An input batch with what evaluation reads from it.
struct Prepared {
    batch: RecordBatch,
    /// Partition keys and order keys in row format (equal bytes: same partition, peers).
    part: Option<Rows>,
    order: Option<Rows>,
    /// The single ordering key as a number, ascending (negated for DESC), for RANGE offsets.
    range_key: Option<Float64Array>,
    /// Per function: its value argument, in the forms the function reads.
    args: Vec<Arg>,
}

#[derive(Default)]
struct Arg {
    /// The value as it is (for functions that return a row's value).
    value: Option<ArrayRef>,
    /// For aggregates over sliding frames: the form their accumulator reads.
    acc: Option<ArgValues>,
    /// Row format, for min/max comparisons.
    rows: Option<Rows>,
}

impl Prepared {
    fn bytes(&self) -> u64 {
        let rows = |r: &Option<Rows>| r.as_ref().map_or(0, |r| r.size());
        let args: usize = self.args.iter().map(|a| a.acc.as_ref().map_or(0, |x| x.bytes()) + rows(&a.rows)).sum();
        (self.batch.get_array_memory_size() + rows(&self.part) + rows(&self.order) + args) as u64
    }
    fn rows(&self) -> usize {
        self.batch.num_rows()
    }
}

/// The window spec and its row converters, shared by the operator and its evaluators.
struct WindowPlan {
    spec: WindowSpec,
    part_converter: Option<RowConverter>,
    order_converter: Option<RowConverter>,
    /// Per function: converter for min/max comparisons.
    arg_converters: Vec<Option<RowConverter>>,
    /// Per function: for an aggregate over sliding frames, its accumulator (for its argument's form).
    sliding: Vec<Option<Box<dyn SlidingAccumulator>>>,
}

impl WindowPlan {
    fn new(spec: WindowSpec, input_schema: &SchemaRef) -> Result<WindowPlan> {
        let field = |c: usize, options: SortOptions| {
            SortField::new_with_options(input_schema.field(c).data_type().clone(), options)
        };
        let part_converter = (!spec.partition_by.is_empty())
            .then(|| RowConverter::new(spec.partition_by.iter().map(|&c| field(c, SortOptions::default())).collect()))
            .transpose()?;
        let order_converter = (!spec.order_by.is_empty())
            .then(|| {
                RowConverter::new(
                    spec.order_by
                        .iter()
                        .map(|k| field(k.column, SortOptions { descending: k.descending, nulls_first: k.nulls_first }))
                        .collect(),
                )
            })
            .transpose()?;
        let mut arg_converters = Vec::new();
        let mut sliding = Vec::new();
        for f in &spec.functions {
            sliding.push(match f.func {
                WindowFunction::Aggregate(a) => {
                    sliding_accumulator(a, f.args.first().map(|e| e.data_type(input_schema)).as_ref())
                }
                _ => None,
            });
            arg_converters.push(match f.func {
                WindowFunction::Aggregate(AggregateFunction::Min | AggregateFunction::Max) => {
                    let t = f.args[0].data_type(input_schema);
                    Some(RowConverter::new(vec![SortField::new(t)])?)
                }
                _ => None,
            });
        }
        Ok(WindowPlan { spec, part_converter, order_converter, arg_converters, sliding })
    }

    fn prepare(&self, batch: RecordBatch) -> Result<Prepared> {
        let n = batch.num_rows();
        let cols = |keys: &mut dyn Iterator<Item = usize>| keys.map(|c| batch.column(c).clone()).collect::<Vec<_>>();
        let part = match &self.part_converter {
            Some(c) => Some(c.convert_columns(&cols(&mut self.spec.partition_by.iter().copied()))?),
            None => None,
        };
        let order = match &self.order_converter {
            Some(c) => Some(c.convert_columns(&cols(&mut self.spec.order_by.iter().map(|k| k.column)))?),
            None => None,
        };
        let needs_range = self.spec.functions.iter().any(|f| {
            f.func.uses_frame()
                && f.frame.units == FrameUnits::Range
                && [&f.frame.start, &f.frame.end]
                    .iter()
                    .any(|b| matches!(b, FrameBound::Preceding(_) | FrameBound::Following(_)))
        });
        let range_key = if needs_range {
            let key = &self.spec.order_by[0];
            let column = batch.column(key.column);
            let numbers = match column.data_type() {
                DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
                    arrow::compute::cast(&arrow::compute::cast(column, &DataType::Int64)?, &DataType::Float64)?
                }
                _ => arrow::compute::cast(column, &DataType::Float64)?,
            };
            let numbers = numbers.as_primitive::<Float64Type>();
            Some(if key.descending { numbers.unary::<_, Float64Type>(|v| -v) } else { numbers.clone() })
        } else {
            None
        };
        let mut args = Vec::with_capacity(self.spec.functions.len());
        for ((f, conv), sliding) in self.spec.functions.iter().zip(&self.arg_converters).zip(&self.sliding) {
            let Some(first) = f.args.first() else {
                args.push(Arg::default());
                continue;
            };
            if matches!(f.func, WindowFunction::Ntile) {
                args.push(Arg::default());
                continue;
            }
            let value = first.evaluate(&batch)?.into_array(n)?;
            let mut arg = Arg::default();
            match f.func {
                WindowFunction::Aggregate(a) => match a {
                    AggregateFunction::Min | AggregateFunction::Max => {
                        let c = conv.as_ref().expect("a converter for min/max");
                        arg.rows = Some(c.convert_columns(std::slice::from_ref(&value))?);
                        arg.value = Some(value);
                    }
                    _ => {
                        let acc = sliding.as_ref().ok_or_else(|| not_a_window_aggregate(a))?;
                        arg.acc = Some(acc.arg(&value)?);
                    }
                },
                _ => arg.value = Some(value),
            }
            args.push(arg);
        }
        Ok(Prepared { batch, part, order, range_key, args })
    }
}

/// Where a partition's rows are: a run of the block's batches, or a spill file.
enum Storage<'a> {
    Memory { batches: &'a [Arc<Prepared>], starts: &'a [usize] },
    File { file: &'a SpillFile, shared: &'a WindowPlan },
}

/// A row a function's value comes from.
#[derive(Clone)]
struct Src {
    prepared: Arc<Prepared>,
    row: usize,
}

/// A cursor over a partition's rows that only moves forward.
struct Cursor {
    /// The row it is on (block-wide index for memory, partition index for a file).
    pos: usize,
    batch: Option<Arc<Prepared>>,
    /// Index of `batch` (memory), and the position of its first row.
    batch_index: usize,
    batch_start: usize,
    reader: Option<SpillReader>,
}

impl Cursor {
    fn new() -> Cursor {
        Cursor { pos: 0, batch: None, batch_index: 0, batch_start: 0, reader: None }
    }

    /// Moves to row `i` (at or after where it is).
    fn seek(&mut self, storage: &Storage<'_>, i: usize) -> Result<()> {
        match storage {
            Storage::Memory { batches, starts } => {
                if self.batch.is_none() || i < self.batch_start {
                    self.batch_index = starts.partition_point(|&s| s <= i) - 1;
                } else {
                    while self.batch_index + 1 < starts.len() && starts[self.batch_index + 1] <= i {
                        self.batch_index += 1;
                    }
                }
                self.batch_start = starts[self.batch_index];
                self.batch = Some(batches[self.batch_index].clone());
            }
            Storage::File { file, shared } => {
                if self.reader.is_none() {
                    self.reader = Some(file.reader()?);
                    self.batch_start = 0;
                    self.batch = None;
                }
                loop {
                    if let Some(b) = &self.batch {
                        if i < self.batch_start + b.rows() {
                            break;
                        }
                        self.batch_start += b.rows();
                        self.batch = None;
                    }
                    let next = self.reader.as_mut().expect("opened").next_batch()?;
                    match next {
                        Some(b) => self.batch = Some(Arc::new(shared.prepare(b)?)),
                        None => {
                            return Err(Error::Execution("internal error: window cursor past the partition".into()))
                        }
                    }
                }
            }
        }
        self.pos = i;
        Ok(())
    }

    fn at(&self) -> (&Prepared, usize) {
        let b = self.batch.as_ref().expect("cursor placed");
        (b, self.pos - self.batch_start)
    }

    fn src(&self) -> Src {
        Src { prepared: self.batch.clone().expect("cursor placed"), row: self.pos - self.batch_start }
    }

    fn order_key(&self) -> &[u8] {
        let (b, r) = self.at();
        b.order.as_ref().map_or(&[], |o| o.row(r).data())
    }

    fn range_key(&self) -> f64 {
        let (b, r) = self.at();
        b.range_key.as_ref().map_or(0.0, |k| k.value(r))
    }

    fn range_null(&self) -> bool {
        let (b, r) = self.at();
        b.range_key.as_ref().is_none_or(|k| k.is_null(r))
    }
}

/// One value of a function's output column.
enum Value {
    Int(Option<i64>),
    Float(Option<f64>),
    Decimal(Option<i128>),
    Row(Option<Src>),
}

/// What one row's frame is: `[start, end)` of the partition.
struct Frame {
    start: Cursor,
    end: Cursor,
    /// Where they are (`end` exclusive).
    s: usize,
    e: usize,
}

/// Evaluates one function over a partition, row after row.
struct Evaluator {
    index: usize,
    func: WindowFunction,
    expr: WindowExpr,
    /// Partition bounds, `[p0, p1)`.
    p0: usize,
    p1: usize,
    frame: Frame,
    /// For lag/lead/nth_value: a cursor of its own.
    other: Cursor,
    offset: i64,
    default: Option<ArrayRef>,
    /// Ranking: the current row's peer group's first row, and the groups so far.
    group_start: usize,
    groups: i64,
    last_key: Vec<u8>,
    /// Aggregate state over the rows `[removed, added)`.
    added: usize,
    removed: usize,
    adder: Cursor,
    remover: Cursor,
    /// Count, sum, avg: the state rows enter and leave.
    acc: Option<Box<dyn SlidingAccumulator>>,
    /// min/max: candidates `(row, key bytes, source)`, best first.
    queue: VecDeque<(usize, Vec<u8>, Src)>,
}

impl Evaluator {
    fn new(index: usize, expr: &WindowExpr, input: &arrow::datatypes::Schema) -> Result<Evaluator> {
        let arg_type = expr.args.first().map(|a| a.data_type(input));
        let acc = match expr.func {
            WindowFunction::Aggregate(a) => sliding_accumulator(a, arg_type.as_ref()),
            _ => None,
        };
        let constant = |i: usize| -> Result<Option<i64>> {
            match expr.args.get(i) {
                None => Ok(None),
                Some(Expr::Literal(a)) => {
                    let v = arrow::compute::cast(a, &DataType::Int64)?;
                    let v = v.as_primitive::<arrow::datatypes::Int64Type>();
                    Ok(v.is_valid(0).then(|| v.value(0)))
                }
                Some(other) => Err(Error::NotSupported(format!("{}() with a non-constant {other}", expr.func.name()))),
            }
        };
        let (offset, default) = match expr.func {
            WindowFunction::Lag | WindowFunction::Lead => {
                let offset = constant(1)?.unwrap_or(1);
                let default = match expr.args.get(2) {
                    None => None,
                    Some(Expr::Literal(a)) => Some(crate::expr::types::cast_sql(a, &expr.data_type)?),
                    Some(other) => {
                        return Err(Error::NotSupported(format!(
                            "{}() with a non-constant default {other}",
                            expr.func.name()
                        )))
                    }
                };
                (offset, default)
            }
            WindowFunction::Ntile | WindowFunction::NthValue => {
                let at = if expr.func == WindowFunction::Ntile { 0 } else { 1 };
                let n = constant(at)?.unwrap_or(0);
                if n <= 0 {
                    return Err(Error::Plan(format!("{}() needs a positive number, got {n}", expr.func.name())));
                }
                (n, None)
            }
            _ => (0, None),
        };
        Ok(Evaluator {
            index,
            func: expr.func,
            expr: expr.clone(),
            p0: 0,
            p1: 0,
            frame: Frame { start: Cursor::new(), end: Cursor::new(), s: 0, e: 0 },
            other: Cursor::new(),
            offset,
            default,
            group_start: 0,
            groups: 0,
            last_key: Vec::new(),
            added: 0,
            removed: 0,
            adder: Cursor::new(),
            remover: Cursor::new(),
            acc,
            queue: VecDeque::new(),
        })
    }

    fn begin(&mut self, p0: usize, p1: usize) {
        self.p0 = p0;
        self.p1 = p1;
        self.frame = Frame { start: Cursor::new(), end: Cursor::new(), s: p0, e: p0 };
        self.other = Cursor::new();
        self.group_start = p0;
        self.groups = 0;
        self.last_key.clear();
        self.reset_state(p0);
        self.adder = Cursor::new();
        self.remover = Cursor::new();
    }

    fn reset_state(&mut self, at: usize) {
        self.added = at;
        self.removed = at;
        if let Some(acc) = &mut self.acc {
            acc.reset();
        }
        self.queue.clear();
    }

    /// The value for row `i` (rows come in order), whose cursor is `current`.
    fn next(&mut self, storage: &Storage<'_>, current: &Cursor, new_group: bool) -> Result<Value> {
        let i = current.pos;
        if new_group {
            self.group_start = i;
            self.groups += 1;
        }
        let n = (self.p1 - self.p0) as i64;
        Ok(match self.func {
            WindowFunction::RowNumber => Value::Int(Some((i - self.p0) as i64 + 1)),
            WindowFunction::Rank => Value::Int(Some((self.group_start - self.p0) as i64 + 1)),
            WindowFunction::DenseRank => Value::Int(Some(self.groups)),
            WindowFunction::PercentRank => {
                let rank = (self.group_start - self.p0) as f64;
                Value::Float(Some(if n > 1 { rank / (n - 1) as f64 } else { 0.0 }))
            }
            WindowFunction::CumeDist => {
                let end = self.peer_end(storage, current)?;
                Value::Float(Some((end - self.p0) as f64 / n as f64))
            }
            WindowFunction::Ntile => {
                let (k, j) = (self.offset, (i - self.p0) as i64);
                let (q, r) = (n / k, n % k);
                let bucket = if j < r * (q + 1) {
                    j / (q + 1)
                } else if q > 0 {
                    (j - r * (q + 1)) / q + r
                } else {
                    j
                };
                Value::Int(Some(bucket + 1))
            }
            WindowFunction::Lag | WindowFunction::Lead => {
                let target =
                    if self.func == WindowFunction::Lag { i as i64 - self.offset } else { i as i64 + self.offset };
                if target >= self.p0 as i64 && target < self.p1 as i64 {
                    // Lag's target trails the current row, lead's runs ahead: both move forward.
                    self.other.seek(storage, target as usize)?;
                    Value::Row(Some(self.other.src()))
                } else {
                    Value::Row(None)
                }
            }
            WindowFunction::FirstValue | WindowFunction::LastValue | WindowFunction::NthValue => {
                self.place_frame(storage, current)?;
                let (s, e) = (self.frame.s, self.frame.e);
                let at = match self.func {
                    WindowFunction::FirstValue => s,
                    WindowFunction::LastValue => e.wrapping_sub(1),
                    _ => s + self.offset as usize - 1,
                };
                if s < e && at >= s && at < e {
                    self.other.seek(storage, at.max(self.other.pos))?;
                    if self.other.pos != at {
                        // A cursor cannot go back: last_value of a shrinking frame.
                        self.other = Cursor::new();
                        self.other.seek(storage, at)?;
                    }
                    Value::Row(Some(self.other.src()))
                } else {
                    Value::Row(None)
                }
            }
            WindowFunction::Aggregate(a) => {
                self.place_frame(storage, current)?;
                self.aggregate(storage, a)?
            }
        })
    }

    /// The end (exclusive) of the current row's peer group.
    fn peer_end(&mut self, storage: &Storage<'_>, current: &Cursor) -> Result<usize> {
        let f = &mut self.frame;
        if f.e <= current.pos {
            f.e = current.pos;
            f.end.seek(storage, f.e)?;
        }
        let key = current.order_key().to_vec();
        while f.e < self.p1 {
            f.end.seek(storage, f.e)?;
            if f.end.order_key() != key.as_slice() {
                break;
            }
            f.e += 1;
        }
        Ok(f.e)
    }

    /// Moves the frame to the current row's: `[s, e)`.
    fn place_frame(&mut self, storage: &Storage<'_>, current: &Cursor) -> Result<()> {
        let i = current.pos;
        let (p0, p1) = (self.p0, self.p1);
        let frame = self.expr.frame.clone();
        let rows = frame.units == FrameUnits::Rows;
        // Start.
        let s = match (&frame.start, rows) {
            (FrameBound::UnboundedPreceding, _) => p0,
            (FrameBound::CurrentRow, true) => i,
            (FrameBound::CurrentRow, false) => self.group_start,
            (FrameBound::Preceding(n), true) => i.saturating_sub(*n as usize).max(p0),
            (FrameBound::Following(n), true) => (i + *n as usize).min(p1),
            (FrameBound::Preceding(_) | FrameBound::Following(_), false) => {
                let target = range_target(&frame.start, current.range_key());
                let null = current.range_null();
                let f = &mut self.frame;
                let mut s = f.s.max(p0);
                while s < p1 {
                    f.start.seek(storage, s)?;
                    // Nulls sort together: a null row's frame is its peers.
                    let before = if null {
                        f.start.order_key() != current.order_key() && s < i
                    } else {
                        !f.start.range_null() && f.start.range_key() < target || (f.start.range_null() && s < i)
                    };
                    if !before {
                        break;
                    }
                    s += 1;
                }
                s
            }
            (FrameBound::UnboundedFollowing, _) => p1,
        };
        // End (exclusive).
        let e = match (&frame.end, rows) {
            (FrameBound::UnboundedFollowing, _) => p1,
            (FrameBound::CurrentRow, true) => i + 1,
            (FrameBound::CurrentRow, false) => self.peer_end(storage, current)?,
            (FrameBound::Preceding(n), true) => (i + 1).saturating_sub(*n as usize).max(p0),
            (FrameBound::Following(n), true) => (i + 1 + *n as usize).min(p1),
            (FrameBound::Preceding(_) | FrameBound::Following(_), false) => {
                let target = range_target(&frame.end, current.range_key());
                let null = current.range_null();
                let key = current.order_key().to_vec();
                let f = &mut self.frame;
                let mut e = f.e.max(p0);
                while e < p1 {
                    f.end.seek(storage, e)?;
                    let inside = if null {
                        f.end.order_key() == key.as_slice() || e < i
                    } else {
                        f.end.range_null() || f.end.range_key() <= target
                    };
                    if !inside {
                        break;
                    }
                    e += 1;
                }
                e
            }
            (FrameBound::UnboundedPreceding, _) => p0,
        };
        self.frame.s = s;
        self.frame.e = e;
        Ok(())
    }

    /// The aggregate over the frame `[s, e)`, its state moved along.
    fn aggregate(&mut self, storage: &Storage<'_>, a: AggregateFunction) -> Result<Value> {
        let (s, e) = (self.frame.s, self.frame.e.max(self.frame.s));
        if s > self.added {
            self.reset_state(s);
        }
        if matches!(a, AggregateFunction::Min | AggregateFunction::Max) {
            return self.extreme(storage, a == AggregateFunction::Max, s, e);
        }
        let k = self.index;
        let acc = self.acc.as_mut().ok_or_else(|| not_a_window_aggregate(a))?;
        while self.added < e {
            self.adder.seek(storage, self.added)?;
            let (b, r) = self.adder.at();
            acc.add(b.args[k].acc.as_ref(), r)?;
            self.added += 1;
        }
        while self.removed < s.min(self.added) {
            self.remover.seek(storage, self.removed)?;
            let (b, r) = self.remover.at();
            acc.retract(b.args[k].acc.as_ref(), r)?;
            self.removed += 1;
        }
        if e <= s {
            // An empty frame: the state of no rows.
            self.reset_state(s);
        }
        let acc = self.acc.as_ref().expect("checked above");
        Ok(match acc.value() {
            FrameValue::Int(v) => Value::Int(v),
            FrameValue::Float(v) => Value::Float(v),
            FrameValue::Decimal(v) => Value::Decimal(v),
        })
    }

    /// Min or max over the frame `[s, e)`: a queue of the rows that can still win, best first
    /// (a per-value state cannot let the best row go when it leaves the frame).
    fn extreme(&mut self, storage: &Storage<'_>, max: bool, s: usize, e: usize) -> Result<Value> {
        let k = self.index;
        let from_start = self.expr.frame.start == FrameBound::UnboundedPreceding;
        while self.added < e {
            self.adder.seek(storage, self.added)?;
            let (b, r) = self.adder.at();
            let arg = &b.args[k];
            let value = arg.value.as_ref().expect("min/max value");
            if value.is_valid(r) {
                let key = arg.rows.as_ref().expect("min/max rows").row(r).data();
                let beats = |held: &[u8]| if max { held <= key } else { held >= key };
                // Candidates that can never win again leave the back of the queue. A frame from
                // the partition's start keeps only the best: the others would win only once it
                // left the frame, which it never does. (All of them kept, a max over a whole
                // spilled partition in falling order held every row and every batch read back:
                // 12.6 MiB for 152,438 rows, counted nowhere.)
                let wins = self.queue.back().is_none_or(|(_, back, _)| beats(back));
                if !from_start || wins {
                    while self.queue.back().is_some_and(|(_, back, _)| beats(back)) {
                        self.queue.pop_back();
                    }
                    self.queue.push_back((self.added, key.to_vec(), self.adder.src()));
                }
            }
            self.added += 1;
        }
        self.removed = self.removed.max(s.min(self.added));
        while self.queue.front().is_some_and(|(row, _, _)| *row < s) {
            self.queue.pop_front();
        }
        let empty = e <= s;
        Ok(Value::Row(if empty { None } else { self.queue.front().map(|(_, _, src)| src.clone()) }))
    }
}

/// The error for an aggregate that has no sliding accumulator (the planner lets none through).
fn not_a_window_aggregate(a: AggregateFunction) -> Error {
    Error::NotSupported(format!("{}() as a window function", a.name()))
}

/// The order value a `RANGE` frame bound `n PRECEDING` / `n FOLLOWING` reaches from `key`.
fn range_target(bound: &FrameBound, key: f64) -> f64 {
    match bound {
        FrameBound::Preceding(n) => key - n,
        FrameBound::Following(n) => key + n,
        _ => unreachable!("only offset bounds have a target"),
    }
}

/// Builds one function's output column.
fn build_column(
    values: Vec<Value>,
    data_type: &DataType,
    index: usize,
    default: Option<&ArrayRef>,
) -> Result<ArrayRef> {
    let n = values.len();
    let mut ints: Vec<Option<i64>> = Vec::new();
    let mut floats: Vec<Option<f64>> = Vec::new();
    let mut decimals: Vec<Option<i128>> = Vec::new();
    // Row values: the distinct source arrays (a null array first), and where each value is.
    let mut sources: Vec<ArrayRef> = Vec::new();
    let mut source_of: Vec<*const Prepared> = Vec::new();
    let mut indices: Vec<(usize, usize)> = Vec::new();
    let mut is_rows = false;
    for v in values {
        match v {
            Value::Int(x) => ints.push(x),
            Value::Float(x) => floats.push(x),
            Value::Decimal(x) => decimals.push(x),
            Value::Row(src) => {
                is_rows = true;
                if sources.is_empty() {
                    sources.push(match default {
                        Some(d) => d.clone(),
                        None => new_null_array(data_type, 1),
                    });
                    source_of.push(std::ptr::null());
                }
                match src {
                    None => indices.push((0, 0)),
                    Some(src) => {
                        let ptr = Arc::as_ptr(&src.prepared);
                        let at = match source_of.iter().rposition(|p| *p == ptr) {
                            Some(at) => at,
                            None => {
                                let value = src.prepared.args[index].value.clone().expect("a value argument");
                                sources.push(value);
                                source_of.push(ptr);
                                sources.len() - 1
                            }
                        };
                        indices.push((at, src.row));
                    }
                }
            }
        }
    }
    Ok(if is_rows {
        let arrays: Vec<&dyn Array> = sources.iter().map(|a| a.as_ref()).collect();
        let out = arrow::compute::interleave(&arrays, &indices)?;
        if out.data_type() == data_type {
            out
        } else {
            crate::expr::types::cast_sql(&out, data_type)?
        }
    } else if !ints.is_empty() {
        Arc::new(Int64Array::from(ints))
    } else if !floats.is_empty() {
        Arc::new(Float64Array::from(floats))
    } else if !decimals.is_empty() {
        let (p, s) = match data_type {
            DataType::Decimal128(p, s) => (*p, *s),
            _ => (38, 0),
        };
        Arc::new(Decimal128Array::from(decimals).with_precision_and_scale(p, s)?)
    } else {
        new_null_array(data_type, n)
    })
}

/// Where the sorted rows come from.
enum WindowInput {
    Sorted(Box<SortStream>),
    Plain(Box<BatchStream>),
    Done,
}

impl WindowInput {
    /// The next batch; its memory is the window's to account for from here on.
    fn next(&mut self, cancel: &AtomicBool) -> Option<Result<RecordBatch>> {
        match self {
            WindowInput::Sorted(s) => s.next_reserved(cancel).map(|r| r.map(|(b, _)| b)),
            WindowInput::Plain(s) => s.next_reserved().map(|r| {
                r.map(|(b, reservation)| {
                    s.release(reservation);
                    b
                })
            }),
            WindowInput::Done => None,
        }
    }
    fn stop(&mut self) {
        if let WindowInput::Sorted(s) = self {
            s.stop();
        }
        *self = WindowInput::Done;
    }
}

/// A partition too large for memory, written to a spill file and evaluated from there.
struct SpilledPartition {
    /// While the partition is being read: its writer and partition key.
    writer: Option<SpillWriter>,
    key: Vec<u8>,
    rows: usize,
    /// Once written: the file and the cursor of the rows coming out.
    file: Option<SpillFile>,
    current: Cursor,
    next_row: usize,
    last_key: Vec<u8>,
}

/// A window operator in progress.
pub(crate) struct WindowStream {
    shared: Arc<WindowPlan>,
    input: WindowInput,
    ctx: ExecContext,
    metrics: Arc<OperatorMetrics>,
    evaluators: Vec<Evaluator>,
    /// Read rows not yet evaluated, with the block-wide index of each batch's first row and
    /// of each partition's first row.
    block: Vec<Arc<Prepared>>,
    starts: Vec<usize>,
    partition_starts: Vec<usize>,
    block_rows: usize,
    reservation: MemoryReservation,
    /// Most bytes the block may hold.
    limit: u64,
    /// Evaluated rows waiting to go out, paid for by `output_reservation` (each batch takes its
    /// share along when it leaves).
    output: VecDeque<RecordBatch>,
    output_reservation: MemoryReservation,
    spilled: Option<SpilledPartition>,
    input_done: bool,
    done: bool,
}

impl WindowStream {
    pub(crate) fn new(
        spec: WindowSpec,
        input_schema: &SchemaRef,
        child: Option<SortStream>,
        plain: Option<BatchStream>,
        ctx: &ExecContext,
        metrics: Arc<OperatorMetrics>,
    ) -> Result<WindowStream> {
        let evaluators = spec
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| Evaluator::new(i, f, input_schema))
            .collect::<Result<_>>()?;
        let shared = Arc::new(WindowPlan::new(spec, input_schema)?);
        let input = match (child, plain) {
            (Some(sort), _) => WindowInput::Sorted(Box::new(sort)),
            (None, Some(stream)) => WindowInput::Plain(Box::new(stream)),
            (None, None) => return Err(Error::Execution("internal error: window without input".into())),
        };
        // A block of a few dozen batches: enough to evaluate many small partitions at once, small
        // next to the sort below (whose merge runs beside) and the operator above.
        let limit = (ctx.available_for_sizing() / 4).min(32 * ctx.batch_bytes_target()).max(min_memory(ctx) / 2);
        Ok(WindowStream {
            shared,
            input,
            ctx: ctx.clone(),
            metrics,
            evaluators,
            block: Vec::new(),
            starts: Vec::new(),
            partition_starts: Vec::new(),
            block_rows: 0,
            reservation: ctx.pool.register("Window", true),
            limit,
            output: VecDeque::new(),
            output_reservation: ctx.pool.register("Window output", false),
            spilled: None,
            input_done: false,
            done: false,
        })
    }

    fn next_batch(&mut self, cancel: &AtomicBool) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(b) = self.output.pop_front() {
                return Ok(Some(b));
            }
            if self.done {
                return Ok(None);
            }
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            if self.spilled.as_ref().is_some_and(|s| s.file.is_some()) {
                if let Some(batch) = self.emit_spilled()? {
                    return Ok(Some(batch));
                }
                self.spilled = None;
                continue;
            }
            if self.input_done {
                if let Some(sp) = &mut self.spilled {
                    // The input ended inside the spilled partition.
                    let file = sp.writer.take().expect("being written").finish()?;
                    self.metrics.spilled(&file);
                    sp.file = Some(file);
                    self.begin_spilled();
                    continue;
                }
                let end = self.block_rows;
                self.evaluate(end)?;
                self.done = true;
                continue;
            }
            match self.input.next(cancel) {
                None => self.input_done = true,
                Some(batch) => {
                    let batch = batch?;
                    // With a sort below, the two share their metrics and the sort counted them.
                    if matches!(self.input, WindowInput::Plain(_)) {
                        self.metrics.rows_in(batch.num_rows());
                    }
                    self.absorb(batch)?;
                }
            }
        }
    }

    /// The partition key of a row, as bytes (empty without PARTITION BY).
    fn part_key(p: &Prepared, row: usize) -> &[u8] {
        p.part.as_ref().map_or(&[], |k| k.row(row).data())
    }

    /// Takes an input batch into the block, or into the spilled partition being written.
    fn absorb(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let prepared = self.shared.prepare(batch)?;
        if let Some(sp) = &mut self.spilled {
            // Rows of the spilled partition go to its file; the first row of another partition
            // ends it.
            let n = prepared.rows();
            let end = (0..n).find(|&r| Self::part_key(&prepared, r) != sp.key.as_slice()).unwrap_or(n);
            if end > 0 {
                sp.writer.as_mut().expect("being written").write(&prepared.batch.slice(0, end))?;
                sp.rows += end;
            }
            if end == n {
                return Ok(());
            }
            let file = sp.writer.take().expect("being written").finish()?;
            self.metrics.spilled(&file);
            sp.file = Some(file);
            let rest = prepared.batch.slice(end, n - end);
            self.begin_spilled();
            // The rest waits in the block until the spilled partition is out.
            return self.push_block(self.shared.prepare(rest)?);
        }
        self.push_block(prepared)
    }

    fn push_block(&mut self, prepared: Prepared) -> Result<()> {
        let bytes = prepared.bytes();
        let floor = min_memory(&self.ctx) / 2;
        let fits =
            |r: &mut MemoryReservation, limit: u64| r.size() + bytes <= limit && r.try_grow_past(bytes, floor).is_ok();
        if !fits(&mut self.reservation, self.limit) {
            // Complete partitions go out first, which frees their rows.
            if self.partition_starts.len() > 1 {
                let end = *self.partition_starts.last().expect("a partition");
                self.evaluate(end)?;
            }
            if !fits(&mut self.reservation, self.limit) {
                if self.block.is_empty() {
                    // One batch whatever its size: there is no progress otherwise.
                    self.reservation.try_grow(bytes)?;
                } else if self.spilled.is_none() {
                    // One partition fills the share: it goes to disk.
                    return self.spill_partition(prepared);
                } else {
                    self.reservation.try_grow(bytes)?;
                }
            }
        }
        // Partition boundaries in the new batch.
        let first = self.block_rows;
        let n = prepared.rows();
        for r in 0..n {
            let new_partition = match (r, self.block.last()) {
                (0, None) => true,
                (0, Some(prev)) => Self::part_key(prev, prev.rows() - 1) != Self::part_key(&prepared, 0),
                (r, _) => Self::part_key(&prepared, r - 1) != Self::part_key(&prepared, r),
            };
            if new_partition {
                self.partition_starts.push(first + r);
            }
        }
        self.starts.push(first);
        self.block.push(Arc::new(prepared));
        self.block_rows += n;
        self.metrics.reserved(self.reservation.size());
        // Evaluate complete partitions once the block holds a few batches' worth (so the rows
        // waiting to go out stay a few batches too).
        if self.partition_starts.len() > 1
            && (self.block_rows >= 4 * self.ctx.config.batch_size.max(1)
                || self.reservation.size() >= 4 * self.ctx.batch_bytes_target())
        {
            let end = *self.partition_starts.last().expect("a partition");
            self.evaluate(end)?;
        }
        Ok(())
    }

    /// Moves the block (one partition, not complete) and `next` to a spill file.
    fn spill_partition(&mut self, next: Prepared) -> Result<()> {
        let key = Self::part_key(&self.block[0], 0).to_vec();
        let schema = self.block[0].batch.schema();
        let mut writer = self.ctx.spill.create(schema, "window")?;
        let mut rows = 0;
        for p in self.block.drain(..) {
            writer.write(&p.batch)?;
            rows += p.rows();
        }
        self.starts.clear();
        self.partition_starts.clear();
        self.block_rows = 0;
        self.reservation.free();
        self.spilled = Some(SpilledPartition {
            writer: Some(writer),
            key,
            rows,
            file: None,
            current: Cursor::new(),
            next_row: 0,
            last_key: Vec::new(),
        });
        // `next` may hold the partition's end.
        let batch = next.batch;
        self.absorb(batch)
    }

    fn begin_spilled(&mut self) {
        let sp = self.spilled.as_mut().expect("a spilled partition");
        for e in &mut self.evaluators {
            e.begin(0, sp.rows);
        }
        sp.current = Cursor::new();
        sp.next_row = 0;
        sp.last_key.clear();
    }

    /// The next output batch of the spilled partition: one spilled batch's rows with their values.
    fn emit_spilled(&mut self) -> Result<Option<RecordBatch>> {
        let sp = self.spilled.as_mut().expect("a spilled partition");
        if sp.next_row >= sp.rows {
            return Ok(None);
        }
        // Held while this batch is evaluated: the cursors' batches (a few per function).
        let storage = Storage::File { file: sp.file.as_ref().expect("written"), shared: &self.shared };
        sp.current.seek(&storage, sp.next_row)?;
        let first = sp.next_row;
        let batch_end = (sp.current.batch_start + sp.current.at().0.rows()).min(sp.rows);
        let mut values: Vec<Vec<Value>> =
            self.evaluators.iter().map(|_| Vec::with_capacity(batch_end - first)).collect();
        for i in first..batch_end {
            sp.current.seek(&storage, i)?;
            let key = sp.current.order_key();
            let new_group = i == 0 || key != sp.last_key.as_slice();
            if new_group {
                sp.last_key = key.to_vec();
            }
            for (e, out) in self.evaluators.iter_mut().zip(values.iter_mut()) {
                out.push(e.next(&storage, &sp.current, new_group)?);
            }
        }
        sp.next_row = batch_end;
        let (prepared, row) = sp.current.at();
        let start = row + 1 - (batch_end - first);
        let rows = prepared.batch.slice(start, batch_end - first);
        let out = self.assemble(rows, values)?;
        Ok(Some(out))
    }

    /// Input rows and their functions' values as one output batch.
    fn assemble(&self, rows: RecordBatch, values: Vec<Vec<Value>>) -> Result<RecordBatch> {
        let n = rows.num_rows();
        let mut columns = rows.columns().to_vec();
        for (k, (v, e)) in values.into_iter().zip(&self.evaluators).enumerate() {
            columns.push(build_column(v, &e.expr.data_type, k, e.default.as_ref())?);
        }
        Ok(RecordBatch::try_new_with_options(
            self.shared.spec.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// Evaluates the block's complete partitions, rows `[0, end)`, into output batches, and keeps
    /// the rest.
    fn evaluate(&mut self, end: usize) -> Result<()> {
        if end == 0 {
            return Ok(());
        }
        let storage = Storage::Memory { batches: &self.block, starts: &self.starts };
        // Values are gathered one block batch at a time, and that batch goes out with them: a
        // value takes 32 bytes whatever its type, and a block's worth of them (72,079 rows of two
        // integers, with a count over the whole input) took 2.3 MB beside 1.2 MB of rows, counted
        // nowhere, and another copy as the columns were cut into batches.
        let first_rows = self.block.first().map_or(0, |p| p.rows()).min(end);
        let mut values: Vec<Vec<Value>> = self.evaluators.iter().map(|_| Vec::with_capacity(first_rows)).collect();
        let bounds: Vec<usize> =
            self.partition_starts.iter().copied().filter(|&p| p < end).chain(std::iter::once(end)).collect();
        let mut current = Cursor::new();
        let mut last_key: Vec<u8> = Vec::new();
        // The block batch whose rows are being evaluated, and where it ends (within `end`).
        let mut b = 0;
        let batch_end = |b: usize| (self.starts[b] + self.block[b].rows()).min(end);
        let mut upto = batch_end(0);
        for w in bounds.windows(2) {
            let (p0, p1) = (w[0], w[1]);
            for e in &mut self.evaluators {
                e.begin(p0, p1);
            }
            for i in p0..p1 {
                current.seek(&storage, i)?;
                let key = current.order_key();
                let new_group = i == p0 || key != last_key.as_slice();
                if new_group {
                    last_key = key.to_vec();
                }
                for (e, out) in self.evaluators.iter_mut().zip(values.iter_mut()) {
                    out.push(e.next(&storage, &current, new_group)?);
                }
                if i + 1 == upto {
                    // Batch `b` is complete: its rows go out with their values.
                    let rows = upto - self.starts[b];
                    let mut columns = self.block[b].batch.slice(0, rows).columns().to_vec();
                    let mut added = 0;
                    for (k, (v, e)) in values.iter_mut().zip(&self.evaluators).enumerate() {
                        let column = build_column(std::mem::take(v), &e.expr.data_type, k, e.default.as_ref())?;
                        added += column.get_array_memory_size() as u64;
                        columns.push(column);
                    }
                    // The new columns are held from now on (the rows are the block's until it is
                    // freed below).
                    self.output_reservation.grow_over_budget(added);
                    self.output.push_back(RecordBatch::try_new_with_options(
                        self.shared.spec.schema.clone(),
                        columns,
                        &RecordBatchOptions::new().with_row_count(Some(rows)),
                    )?);
                    if i + 1 < end {
                        b += 1;
                        upto = batch_end(b);
                        for v in &mut values {
                            v.reserve(upto - self.starts[b]);
                        }
                    }
                }
            }
        }
        drop(current);
        // Rows past `end` start the next block.
        let mut kept = Vec::new();
        for (p, &start) in self.block.iter().zip(&self.starts) {
            let n = p.rows();
            let from = end.saturating_sub(start).min(n);
            if from < n {
                kept.push(p.batch.slice(from, n - from));
            }
        }
        // The rows going out move from the block's reservation to the output's (the function
        // columns are new); what is left starts a new block.
        let out_bytes: u64 = self.output.iter().map(super::sliced_bytes).sum();
        self.block.clear();
        self.starts.clear();
        self.partition_starts.clear();
        self.block_rows = 0;
        self.reservation.free();
        self.output_reservation.try_resize(out_bytes)?;
        for batch in kept {
            let prepared = self.shared.prepare(batch)?;
            self.push_block(prepared)?;
        }
        Ok(())
    }
}

impl Running for WindowStream {
    fn stop(&mut self) {
        self.done = true;
        self.input.stop();
        self.block.clear();
        self.spilled = None;
        self.reservation.free();
    }

    fn next_reserved(&mut self, cancel: &AtomicBool) -> Option<Result<(RecordBatch, MemoryReservation)>> {
        match self.next_batch(cancel) {
            Ok(Some(batch)) => Some((|| {
                let bytes = super::sliced_bytes(&batch);
                let mut r = self.output_reservation.split(bytes);
                if r.size() < bytes {
                    r.try_grow(bytes - r.size())?;
                }
                Ok((batch, r))
            })()),
            Ok(None) => None,
            Err(e) => {
                self.stop();
                Some(Err(e))
            }
        }
    }
}
