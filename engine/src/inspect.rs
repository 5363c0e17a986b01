//! What is inside a Parquet file: schema, row groups, sizes, compression and statistics, as
//! `flow inspect FILE.parquet` prints it. Only the footer (and, when present, the page index's
//! location) is read, never the data.
//!
//! ```no_run
//! # fn main() -> flow_engine::Result<()> {
//! let text = flow_engine::inspect::describe(std::path::Path::new("out.parquet"), false)?;
//! println!("{text}");
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::Schema;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::parquet_to_arrow_schema;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::error::{human, Error, Result};

/// The number of rows of a Parquet file, from its footer.
pub fn row_count(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::BadFile { path: path.into(), message: e.to_string() })?;
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|e| Error::BadFile { path: path.into(), message: format!("not a readable Parquet file: {e}") })?;
    Ok(metadata.file_metadata().num_rows().max(0) as u64)
}

/// A text description of the Parquet file at `path`: the file (size, rows, writer), each column
/// (Arrow type, Parquet physical and logical type, codec, encodings, sizes, nulls, min and max
/// over the file) and each row group (rows, sizes). With `row_groups`, every row group's column
/// statistics too.
pub fn describe(path: &Path, row_groups: bool) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::BadFile { path: path.into(), message: e.to_string() })?;
    let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|e| Error::BadFile { path: path.into(), message: format!("not a readable Parquet file: {e}") })?;
    let meta = metadata.file_metadata();
    let schema = parquet_to_arrow_schema(meta.schema_descr(), meta.key_value_metadata())
        .map_err(|e| Error::BadFile { path: path.into(), message: format!("schema: {e}") })?;
    let groups = metadata.row_groups();
    let compressed: i64 = groups.iter().map(|g| g.compressed_size()).sum();
    let uncompressed: i64 = groups.iter().map(|g| g.total_byte_size()).sum();
    let page_index = groups.iter().flat_map(|g| g.columns()).any(|c| c.column_index_offset().is_some());

    let mut out = String::new();
    let _ = writeln!(out, "file: {} ({})", path.display(), human(file_bytes));
    let _ = writeln!(out, "created by: {}", meta.created_by().unwrap_or("unknown"));
    let _ = writeln!(
        out,
        "rows: {} in {} row group{}; data {} compressed, {} uncompressed; page index: {}",
        meta.num_rows(),
        groups.len(),
        if groups.len() == 1 { "" } else { "s" },
        human(compressed.max(0) as u64),
        human(uncompressed.max(0) as u64),
        if page_index { "yes" } else { "no" },
    );

    // Columns: one line per leaf of the Parquet schema.
    let descr = meta.schema_descr();
    let mut rows = vec![[
        "column",
        "arrow type",
        "parquet type",
        "codec",
        "encodings",
        "compressed",
        "uncompressed",
        "nulls",
        "min",
        "max",
    ]
    .map(String::from)];
    for leaf in 0..descr.num_columns() {
        let column = descr.column(leaf);
        let name = column.path().string();
        let arrow_type =
            schema.field_with_name(&name).map(|f| f.data_type().to_string()).unwrap_or_else(|_| "(nested)".into());
        let logical = match column.logical_type_ref() {
            Some(l) => format!("{} {}", column.physical_type(), logical_name(l)),
            None => column.physical_type().to_string(),
        };
        let chunks: Vec<_> = groups.iter().map(|g| g.column(leaf)).collect();
        let codec = chunks.first().map(|c| codec_name(c.compression())).unwrap_or_default();
        let mut encodings: Vec<String> = Vec::new();
        for e in chunks.iter().flat_map(|c| c.encodings()) {
            let e = format!("{e:?}");
            if !encodings.contains(&e) {
                encodings.push(e);
            }
        }
        let stats = column_stats(&name, &schema, &metadata, None);
        rows.push([
            name,
            arrow_type,
            logical,
            codec,
            encodings.join(","),
            human(chunks.iter().map(|c| c.compressed_size()).sum::<i64>().max(0) as u64),
            human(chunks.iter().map(|c| c.uncompressed_size()).sum::<i64>().max(0) as u64),
            stats.0,
            stats.1,
            stats.2,
        ]);
    }
    let _ = writeln!(out, "\ncolumns:");
    table(&mut out, &rows);

    let _ = writeln!(out, "\nrow groups:");
    let mut rows = vec![["row group", "rows", "compressed", "uncompressed"].map(String::from)];
    for (i, g) in groups.iter().enumerate() {
        rows.push([
            i.to_string(),
            g.num_rows().to_string(),
            human(g.compressed_size().max(0) as u64),
            human(g.total_byte_size().max(0) as u64),
        ]);
    }
    table(&mut out, &rows);

    if row_groups {
        for (i, _) in groups.iter().enumerate() {
            let _ = writeln!(out, "\nrow group {i}:");
            let mut rows = vec![["column", "codec", "compressed", "nulls", "min", "max"].map(String::from)];
            for leaf in 0..descr.num_columns() {
                let name = descr.column(leaf).path().string();
                let chunk = groups[i].column(leaf);
                let (nulls, min, max) = column_stats(&name, &schema, &metadata, Some(i));
                rows.push([
                    name,
                    codec_name(chunk.compression()),
                    human(chunk.compressed_size().max(0) as u64),
                    nulls,
                    min,
                    max,
                ]);
            }
            table(&mut out, &rows);
        }
    }
    Ok(out)
}

/// Null count, min and max of a top-level column over the file (or one row group), shown with
/// the column's Arrow type ("-" where the file has no statistics).
fn column_stats(
    name: &str,
    schema: &Schema,
    metadata: &ParquetMetaData,
    group: Option<usize>,
) -> (String, String, String) {
    let missing = || ("-".to_string(), "-".to_string(), "-".to_string());
    let Ok(converter) = StatisticsConverter::try_new(name, schema, metadata.file_metadata().schema_descr()) else {
        return missing();
    };
    let groups: Vec<_> = match group {
        Some(i) => vec![metadata.row_group(i)],
        None => metadata.row_groups().iter().collect(),
    };
    let (Ok(mins), Ok(maxes), Ok(nulls)) = (
        converter.row_group_mins(groups.iter().copied()),
        converter.row_group_maxes(groups.iter().copied()),
        converter.row_group_null_counts(groups.iter().copied()),
    ) else {
        return missing();
    };
    let nulls = if nulls.null_count() > 0 { "-".to_string() } else { nulls.values().iter().sum::<u64>().to_string() };
    (nulls, extreme(&mins, true), extreme(&maxes, false))
}

/// The smallest (or largest) of the row groups' values; "-" when there is none.
fn extreme(values: &ArrayRef, smallest: bool) -> String {
    use arrow::compute::SortOptions;
    if values.is_empty() || values.null_count() == values.len() {
        return "-".into();
    }
    let options = SortOptions { descending: !smallest, nulls_first: false };
    let Ok(order) = arrow::compute::sort_to_indices(values, Some(options), Some(1)) else { return "-".into() };
    arrow::util::display::array_value_to_string(values, order.value(0) as usize).unwrap_or_else(|_| "-".into())
}

/// A codec's name (files do not record the level a codec was used at).
fn codec_name(codec: parquet::basic::Compression) -> String {
    use parquet::basic::Compression;
    match codec {
        Compression::ZSTD(_) => "ZSTD".into(),
        Compression::GZIP(_) => "GZIP".into(),
        Compression::BROTLI(_) => "BROTLI".into(),
        other => other.to_string(),
    }
}

/// A Parquet logical type as the format's documentation spells it.
fn logical_name(logical: &parquet::basic::LogicalType) -> String {
    use parquet::basic::{LogicalType, TimeUnit};
    let unit = |u: &TimeUnit| match u {
        TimeUnit::MILLIS => "MILLIS",
        TimeUnit::MICROS => "MICROS",
        TimeUnit::NANOS => "NANOS",
    };
    match logical {
        LogicalType::String => "STRING".into(),
        LogicalType::Date => "DATE".into(),
        LogicalType::Decimal(d) => format!("DECIMAL({},{})", d.precision, d.scale),
        LogicalType::Timestamp(t) => {
            format!("TIMESTAMP({}, {})", unit(&t.unit), if t.is_adjusted_to_u_t_c { "UTC" } else { "local" })
        }
        LogicalType::Time(t) => {
            format!("TIME({}, {})", unit(&t.unit), if t.is_adjusted_to_u_t_c { "UTC" } else { "local" })
        }
        LogicalType::Integer(i) => format!("INT({}, {})", i.bit_width, if i.is_signed { "signed" } else { "unsigned" }),
        other => format!("{other:?}").to_uppercase(),
    }
}

fn table<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let widths: Vec<usize> = (0..N).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
}
