//! Hive-style partition folders: `out/daily/category=A/part-1.parquet` gives every row of the file
//! a column `category` with the value `A`, as DuckDB, Spark, Polars and pyarrow read such folders
//! (and as flow writes them with `partition_by`).
//!
//! The columns are found when every file under the location sits below the same `key=value`
//! folders (in the same order). Values are unescaped (`%2F` is `/`), `__HIVE_DEFAULT_PARTITION__`
//! is null, and a column whose values are all integers is a BIGINT, else a VARCHAR. A key that is
//! also a column inside the files is left to the files. Filters on partition columns prune whole
//! files (see `PruningPredicate`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, RecordBatchOptions, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::SourceFile;
use crate::error::Result;

/// Appends the partition columns of `files` (found under `location`) to `schema`, and gives each
/// file its values. Leaves everything as it is when the files are not in a hive layout.
pub(super) fn add_partition_columns(
    location: &str,
    paths: &[PathBuf],
    files: &mut [SourceFile],
    schema: SchemaRef,
) -> Result<SchemaRef> {
    let Some(base) = base_dir(location) else { return Ok(schema) };
    let mut keys: Option<Vec<String>> = None;
    let mut values: Vec<Vec<Option<String>>> = Vec::with_capacity(paths.len());
    for path in paths {
        let Some(parsed) = partition_of(path, &base) else { return Ok(schema) };
        let file_keys: Vec<String> = parsed.iter().map(|(k, _)| k.clone()).collect();
        match &keys {
            None => keys = Some(file_keys),
            Some(k) if *k == file_keys => {}
            Some(_) => return Ok(schema),
        }
        values.push(parsed.into_iter().map(|(_, v)| v).collect());
    }
    let Some(keys) = keys.filter(|k| !k.is_empty()) else { return Ok(schema) };
    // Keys that are also columns inside the files are left to the files.
    let used: Vec<usize> = (0..keys.len()).filter(|&i| schema.field_with_name(&keys[i]).is_err()).collect();
    if used.is_empty() {
        return Ok(schema);
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut types = Vec::with_capacity(used.len());
    for &i in &used {
        let integers = values.iter().filter_map(|v| v[i].as_deref()).all(|v| v.parse::<i64>().is_ok());
        let t = if integers { DataType::Int64 } else { DataType::Utf8 };
        fields.push(Field::new(&keys[i], t.clone(), true));
        types.push(t);
    }
    for (file, v) in files.iter_mut().zip(&values) {
        file.partition = used
            .iter()
            .zip(&types)
            .map(|(&i, t)| -> ArrayRef {
                match t {
                    DataType::Int64 => Arc::new(Int64Array::from(vec![v[i].as_deref().and_then(|s| s.parse().ok())])),
                    _ => Arc::new(StringArray::from(vec![v[i].clone()])),
                }
            })
            .collect();
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The folder the partition folders start in: the location itself when it is a folder, the part
/// before the first wildcard for a glob; none for a single file.
fn base_dir(location: &str) -> Option<PathBuf> {
    let path = Path::new(location);
    if path.is_dir() {
        return Some(path.to_path_buf());
    }
    let wildcard = location.find(['*', '?', '['])?;
    let prefix = &location[..wildcard];
    let cut = prefix.rfind('/').map_or(0, |i| i + 1);
    Some(PathBuf::from(if cut == 0 { "." } else { &prefix[..cut] }))
}

/// The `key=value` folders between `base` and the file, or `None` when some folder is not one.
fn partition_of(path: &Path, base: &Path) -> Option<Vec<(String, Option<String>)>> {
    let rel = path.strip_prefix(base).ok().or_else(|| path.strip_prefix(base.strip_prefix("./").ok()?).ok())?;
    let mut dirs: Vec<_> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    dirs.pop();
    dirs.iter().map(|d| crate::hive::parse_segment(d)).collect()
}

/// Replaces the columns at `columns` (position in the batch, the file's one-element value) with
/// the value repeated.
pub(super) fn fill(batch: RecordBatch, columns: &[(usize, &ArrayRef)]) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let mut out = batch.columns().to_vec();
    let zeros = UInt32Array::from(vec![0u32; rows]);
    for (i, value) in columns {
        out[*i] = arrow::compute::take(value.as_ref(), &zeros, None)?;
    }
    Ok(RecordBatch::try_new_with_options(batch.schema(), out, &RecordBatchOptions::new().with_row_count(Some(rows)))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_escapes() {
        let base = Path::new("out/daily");
        let p = Path::new("out/daily/category=x%2Fy%3Dz/day=3/part-1.parquet");
        assert_eq!(
            partition_of(p, base),
            Some(vec![("category".into(), Some("x/y=z".into())), ("day".into(), Some("3".into()))])
        );
        let null = Path::new("out/daily/category=__HIVE_DEFAULT_PARTITION__/part-1.parquet");
        assert_eq!(partition_of(null, base), Some(vec![("category".into(), None)]));
        assert_eq!(partition_of(Path::new("out/daily/plain/part.parquet"), base), None);
        assert_eq!(base_dir("out/daily/*/*.parquet"), Some(PathBuf::from("out/daily/")));
        assert_eq!(base_dir("*.parquet"), Some(PathBuf::from(".")));
    }
}
