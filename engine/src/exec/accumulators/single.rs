//! The one value of a group, an error when the group has a second row: what a scalar subquery
//! that is not an aggregate returns.

use super::*;

pub(super) struct Single {
    values: Vec<Option<Box<[u8]>>>,
    seen: Vec<bool>,
    converter: RowConverter,
}

impl Single {
    pub(super) fn new(t: &DataType) -> Result<Single> {
        Ok(Single { values: Vec::new(), seen: Vec::new(), converter: converter(t)? })
    }
}

impl GroupsAccumulator for Single {
    fn slot_bytes(&self) -> u64 {
        17
    }
    fn arg(&self, column: &ArrayRef) -> Result<ArgValues> {
        ArgValues::rows(&self.converter, column)
    }
    fn reserve(&mut self, additional: usize) {
        self.values.reserve_exact(additional);
        self.seen.reserve_exact(additional);
    }
    fn push_group(&mut self) {
        self.values.push(None);
        self.seen.push(false);
    }
    fn clear(&mut self) {
        self.values.clear();
        self.seen.clear();
    }
    fn update(&mut self, g: usize, arg: Option<&ArgValues>, row: usize) -> Result<u64> {
        let Some(ArgValues::Rows(rows, nulls)) = arg else { return Err(wrong_arg()) };
        if self.seen[g] {
            return Err(Error::Execution(
                "more than one row returned by a subquery used as an expression (hint: add an aggregate or LIMIT 1)"
                    .into(),
            ));
        }
        self.seen[g] = true;
        if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
            let value: Box<[u8]> = rows.row(row).data().into();
            let grew = (value.len() + 16) as u64;
            self.values[g] = Some(value);
            return Ok(grew);
        }
        Ok(0)
    }
    fn finish(&self, start: usize, end: usize, out: &DataType) -> Result<ArrayRef> {
        super::min_max::row_values(&self.converter, &self.values[start..end], out)
    }
}
