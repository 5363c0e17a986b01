use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::*;

fn batch(start: i64, n: usize) -> RecordBatch {
    let schema =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
    let k = Int64Array::from_iter_values(start..start + n as i64);
    let s = StringArray::from_iter((0..n).map(|i| (i % 3 != 0).then(|| format!("value-{}", start + i as i64))));
    RecordBatch::try_new(schema, vec![Arc::new(k), Arc::new(s)]).unwrap()
}

#[test]
fn round_trip_counts_and_cleans_up() {
    let parent = tempfile::tempdir().unwrap();
    let spill = SpillManager::new(parent.path(), u64::MAX).unwrap();
    let b1 = batch(0, 1000);
    let b2 = batch(1000, 500);
    let mut w = spill.create(b1.schema(), "Sort[0]").unwrap();
    w.write(&b1).unwrap();
    w.write(&b2).unwrap();
    let file = w.finish().unwrap();
    assert_eq!(file.rows(), 1500);
    assert!(file.bytes() > 0 && spill.on_disk() == file.bytes());
    let back: Vec<RecordBatch> = file.reader().unwrap().collect::<Result<_>>().unwrap();
    assert_eq!(back, vec![b1, b2]);
    let stats = spill.stats();
    assert_eq!((stats.files, stats.rows), (1, 1500));
    let path = file.path().to_path_buf();
    drop(file);
    assert!(!path.exists());
    assert_eq!(spill.on_disk(), 0);
    let dir = spill.dir().to_path_buf();
    drop(spill);
    assert!(!dir.exists());
}

#[test]
fn disk_limit_is_enforced_and_leaves_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let spill = SpillManager::new(parent.path(), 20_000).unwrap();
    let mut w = spill.create(batch(0, 1).schema(), "Agg").unwrap();
    let mut failed = None;
    for i in 0..100 {
        if let Err(e) = w.write(&batch(i * 1000, 1000)) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("limit must trip").to_string();
    assert!(err.starts_with("spill limit reached"), "{err}");
    drop(w);
    assert_eq!(spill.on_disk(), 0);
    let left: Vec<_> = std::fs::read_dir(spill.dir()).unwrap().flatten().filter(|e| e.file_name() != "pid").collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn orphans_of_dead_runs_are_removed() {
    let parent = tempfile::tempdir().unwrap();
    let orphan = parent.path().join("flow-spill-dead");
    std::fs::create_dir(&orphan).unwrap();
    // pid_max is at most 2^22 on Linux: this pid cannot exist.
    std::fs::write(orphan.join("pid"), "99999999").unwrap();
    std::fs::write(orphan.join("000001-x.parquet"), b"junk").unwrap();
    let alive = parent.path().join("flow-spill-alive");
    std::fs::create_dir(&alive).unwrap();
    std::fs::write(alive.join("pid"), std::process::id().to_string()).unwrap();
    let _spill = SpillManager::new(parent.path(), u64::MAX).unwrap();
    assert!(!orphan.exists());
    assert!(alive.exists());
}

#[test]
fn many_small_batches_go_to_parts_read_back_in_order() {
    let parent = tempfile::tempdir().unwrap();
    let spill = SpillManager::new(parent.path(), u64::MAX).unwrap();
    let batches: Vec<RecordBatch> = (0..ROW_GROUPS_PER_PART * 2 + 5).map(|i| batch(i as i64 * 10, 10)).collect();
    let mut w = spill.create(batches[0].schema(), "Agg partition").unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    let file = w.finish().unwrap();
    assert_eq!(file.parts().len(), 3, "a part per {ROW_GROUPS_PER_PART} row groups");
    assert_eq!(spill.on_disk(), file.parts().iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>());
    let back: Vec<RecordBatch> = file.reader().unwrap().collect::<Result<_>>().unwrap();
    assert_eq!(back, batches);
    assert_eq!((spill.stats().files, file.rows()), (1, batches.len() as u64 * 10));
    let parts = file.parts().to_vec();
    drop(file);
    assert!(parts.iter().all(|p| !p.exists()));
    assert_eq!(spill.on_disk(), 0);
}

#[test]
fn text_is_compressed_and_numbers_are_stored_plain() {
    let parent = tempfile::tempdir().unwrap();
    let spill = SpillManager::new(parent.path(), u64::MAX).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("t", DataType::Struct(vec![Field::new("b", DataType::Binary, true)].into()), true),
    ]));
    let k = Int64Array::from_iter_values(0..100);
    let s = StringArray::from_iter((0..100).map(|i| (i % 3 != 0).then(|| format!("some text {}", i % 5))));
    let b = arrow::array::BinaryArray::from_iter((0..100).map(|i| Some(vec![i as u8 % 4; 8])));
    let t = arrow::array::StructArray::from(vec![(
        Arc::new(Field::new("b", DataType::Binary, true)),
        Arc::new(b) as arrow::array::ArrayRef,
    )]);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(s), Arc::new(t)]).unwrap();
    let mut w = spill.create(schema, "Sort").unwrap();
    w.write(&batch).unwrap();
    let file = w.finish().unwrap();
    let bytes = Bytes::from(std::fs::read(file.path()).unwrap());
    let meta = parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&bytes).unwrap();
    let codecs: Vec<(String, Compression)> =
        meta.row_group(0).columns().iter().map(|c| (c.column_path().string(), c.compression())).collect();
    assert_eq!(
        codecs,
        vec![
            ("k".to_string(), Compression::UNCOMPRESSED),
            ("s".to_string(), Compression::LZ4_RAW),
            ("t.b".to_string(), Compression::LZ4_RAW),
        ]
    );
    let back: Vec<RecordBatch> = file.reader().unwrap().collect::<Result<_>>().unwrap();
    assert_eq!(back, vec![batch]);
}

#[test]
fn wide_spill_files_keep_the_metadata_of_an_open_part_within_what_is_counted() {
    // Sixteen columns: a part of 64 row groups held about 400 KB of decoded footer, and a merge
    // holds a part of every run open at once.
    let fields: Vec<Field> = (0..16).map(|i| Field::new(format!("c{i}"), DataType::Int64, true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let columns: Vec<arrow::array::ArrayRef> =
        (0..16).map(|i| Arc::new(Int64Array::from_iter_values(i..i + 10)) as _).collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let per_part = row_groups_per_part(&schema);
    assert!((4..ROW_GROUPS_PER_PART).contains(&per_part), "{per_part} row groups a part");
    let parent = tempfile::tempdir().unwrap();
    let spill = SpillManager::new(parent.path(), u64::MAX).unwrap();
    let mut w = spill.create(schema.clone(), "ExternalSort").unwrap();
    for _ in 0..per_part * 2 + 1 {
        w.write(&batch).unwrap();
    }
    let file = w.finish().unwrap();
    assert_eq!(file.parts().len(), 3);
    let reader = file.reader().unwrap();
    let held = reader.current.as_ref().unwrap().meta.metadata().memory_size() as u64;
    assert!(held <= open_file_bytes(&schema), "an open part holds {held} bytes, {} counted", open_file_bytes(&schema));
    assert!(open_file_bytes(&schema) <= 64 << 10);
}

#[test]
fn batches_without_columns_keep_their_row_counts() {
    // A window over a join whose columns nothing above reads spills batches of rows alone.
    let schema = Arc::new(Schema::empty());
    let batch = |n: usize| {
        RecordBatch::try_new_with_options(
            schema.clone(),
            vec![],
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )
        .unwrap()
    };
    let parent = tempfile::tempdir().unwrap();
    let spill = SpillManager::new(parent.path(), u64::MAX).unwrap();
    let mut w = spill.create(schema.clone(), "window").unwrap();
    for n in [10, 1, 300] {
        w.write(&batch(n)).unwrap();
    }
    let file = w.finish().unwrap();
    assert_eq!(file.rows(), 311);
    let back: Vec<usize> = file.reader().unwrap().map(|b| b.unwrap().num_rows()).collect();
    assert_eq!(back, vec![10, 1, 300]);
}
