//! flow's Parquet file writer: parquet-rs's Arrow column writers, but for flat string and binary
//! columns that come as dictionary arrays, which [`DictColumn`] encodes once per dictionary value
//! instead of once per row. Row groups, the file's schema and its footer (with the Arrow schema,
//! as `ArrowWriter` writes it) are parquet-rs's own.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use super::dict_column::{self, DictColumn};

/// Writes record batches to a Parquet file, a row group at a time (see the module's
/// documentation).
pub(crate) struct ParquetWriter<W: Write + Send> {
    file: SerializedFileWriter<W>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// Each field's leaf columns.
    leaves: Vec<Range<usize>>,
    max_rows: usize,
    group: Option<RowGroup>,
}

/// The row group being written: a writer per leaf column.
struct RowGroup {
    columns: Vec<Column>,
    rows: usize,
}

enum Column {
    Arrow(ArrowColumnWriter),
    Dictionary(Box<DictColumn>),
}

impl<W: Write + Send> ParquetWriter<W> {
    /// A writer of batches of `schema` to `out`, as `props` say (row groups end at their
    /// `max_row_group_row_count`, or when [`ParquetWriter::flush`] is called).
    pub(crate) fn try_new(out: W, schema: SchemaRef, mut props: WriterProperties) -> Result<Self> {
        let parquet = ArrowSchemaConverter::new().with_coerce_types(props.coerce_types()).convert(&schema)?;
        add_encoded_arrow_schema_to_metadata(&schema, &mut props);
        let max_rows = props.max_row_group_row_count().unwrap_or(usize::MAX).max(1);
        let file = SerializedFileWriter::new(out, parquet.root_schema_ptr(), Arc::new(props))?;
        let factory = ArrowRowGroupWriterFactory::new(&file, schema.clone());
        let descr = file.schema_descr();
        // Each field's range starts empty (MAX..0) and widens over the leaves under it.
        #[allow(clippy::reversed_empty_ranges)]
        let mut leaves = vec![usize::MAX..0; schema.fields().len()];
        for leaf in 0..descr.num_columns() {
            let range = &mut leaves[descr.get_column_root_idx(leaf)];
            *range = range.start.min(leaf)..leaf + 1;
        }
        Ok(ParquetWriter { file, factory, schema, leaves, max_rows, group: None })
    }

    /// Appends `batch`, whose columns are of the schema's types or dictionaries of them.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut rest = batch.clone();
        while rest.num_rows() > 0 {
            if self.group.is_none() {
                self.group = Some(self.open_group(&rest)?);
            }
            let group = self.group.as_mut().expect("a row group is open");
            let rows = (self.max_rows - group.rows).min(rest.num_rows());
            let now = rest.slice(0, rows);
            rest = rest.slice(rows, rest.num_rows() - rows);
            for ((field, column), leaves) in self.schema.fields().iter().zip(now.columns()).zip(&self.leaves) {
                if let Some(Column::Dictionary(encoder)) = group.columns.get_mut(leaves.start) {
                    encoder.write(column.as_ref())?;
                    continue;
                }
                for (leaf, values) in leaves.clone().zip(compute_leaves(field, column)?) {
                    match &mut group.columns[leaf] {
                        Column::Arrow(writer) => writer.write(&values)?,
                        Column::Dictionary(_) => return Err(ParquetError::General("a nested dictionary leaf".into())),
                    }
                }
            }
            group.rows += rows;
            if group.rows >= self.max_rows {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// A row group's writers: parquet-rs's, but for each flat string or binary field that comes
    /// as a dictionary array in `batch`, the row group's first rows.
    fn open_group(&self, batch: &RecordBatch) -> Result<RowGroup> {
        let writers = self.factory.create_column_writers(self.file.flushed_row_groups().len())?;
        let mut columns: Vec<Column> = writers.into_iter().map(Column::Arrow).collect();
        let descr = self.file.schema_descr();
        let props = self.file.properties();
        for ((field, column), leaves) in self.schema.fields().iter().zip(batch.columns()).zip(&self.leaves) {
            let leaf = leaves.start;
            if leaves.len() == 1 && dict_column::takes(column.as_ref(), &descr.column(leaf), props) {
                columns[leaf] = Column::Dictionary(Box::new(DictColumn::new(descr.column(leaf), field.name(), props)?));
            }
        }
        Ok(RowGroup { columns, rows: 0 })
    }

    /// Writes the row group being filled, if any.
    pub(crate) fn flush(&mut self) -> Result<()> {
        let Some(group) = self.group.take() else {
            return Ok(());
        };
        let mut row_group = self.file.next_row_group()?;
        for column in group.columns {
            match column {
                Column::Arrow(writer) => writer.close()?.append_to_row_group(&mut row_group)?,
                Column::Dictionary(encoder) => {
                    let (bytes, close) = encoder.close()?;
                    row_group.append_column(&bytes, close)?;
                }
            }
        }
        row_group.close()?;
        Ok(())
    }

    /// Bytes written to the file so far.
    pub(crate) fn bytes_written(&self) -> usize {
        self.file.bytes_written()
    }

    /// Row groups written so far.
    pub(crate) fn row_groups(&self) -> usize {
        self.file.flushed_row_groups().len()
    }

    /// About how many bytes the row group being filled will take in the file.
    pub(crate) fn in_progress_size(&self) -> usize {
        self.columns()
            .map(|c| match c {
                Column::Arrow(writer) => writer.get_estimated_total_bytes(),
                Column::Dictionary(encoder) => encoder.estimated_total_bytes(),
            })
            .sum()
    }

    /// About how many bytes the writers of the row group being filled hold.
    pub(crate) fn memory_size(&self) -> usize {
        self.columns()
            .map(|c| match c {
                Column::Arrow(writer) => writer.memory_size(),
                Column::Dictionary(encoder) => encoder.memory_size(),
            })
            .sum()
    }

    fn columns(&self) -> impl Iterator<Item = &Column> {
        self.group.iter().flat_map(|g| &g.columns)
    }

    /// Writes the last row group and the footer, and hands back the output.
    pub(crate) fn into_inner(mut self) -> Result<W> {
        self.flush()?;
        self.file.into_inner()
    }
}
