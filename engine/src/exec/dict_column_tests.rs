use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, DictionaryArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, PageType, ZstdLevel};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use rand::{Rng, SeedableRng};

use super::{bit_width, rle_hybrid};
use crate::exec::parquet_writer::ParquetWriter;

fn props(compression: Compression, dictionary_limit: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_dictionary_page_size_limit(dictionary_limit)
        .set_data_page_size_limit(64 << 10)
        .set_max_row_group_row_count(Some(50_000))
        .build()
}

fn schema(t: DataType, nullable: bool) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("s", t, nullable)]))
}

/// `rows` rows whose column `s` is a dictionary array over `values` (keys from `key`, a null
/// where it gives `None`), or the same rows as a plain array when `plain`.
fn batch(schema: &SchemaRef, first: i64, keys: &[Option<i32>], values: ArrayRef, plain: bool) -> RecordBatch {
    let ids = Int64Array::from_iter_values(first..first + keys.len() as i64);
    let dictionary = DictionaryArray::<Int32Type>::try_new(Int32Array::from(keys.to_vec()), values).unwrap();
    let s: ArrayRef = match plain {
        true => arrow::compute::cast(&dictionary, schema.field(1).data_type()).unwrap(),
        false => Arc::new(dictionary),
    };
    // Nullable whatever the writer's schema says (a writer must refuse nulls it does not allow).
    let fields = vec![schema.field(0).clone(), Field::new("s", s.data_type().clone(), true)];
    RecordBatch::try_new(Arc::new(Schema::new(fields)), vec![Arc::new(ids), s]).unwrap()
}

fn write(schema: &SchemaRef, props: WriterProperties, batches: &[RecordBatch]) -> Bytes {
    let mut writer = ParquetWriter::try_new(Vec::new(), schema.clone(), props).unwrap();
    for b in batches {
        writer.write(b).unwrap();
    }
    Bytes::from(writer.into_inner().unwrap())
}

/// What parquet-rs's own writer makes of the same batches (dictionaries cast to plain arrays).
fn write_plain(schema: &SchemaRef, props: WriterProperties, batches: &[RecordBatch]) -> Bytes {
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).unwrap();
    for b in batches {
        let columns: Vec<ArrayRef> = b
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap())
            .collect();
        writer.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
    }
    Bytes::from(writer.into_inner().unwrap())
}

fn read(file: &Bytes) -> (Vec<RecordBatch>, Arc<ParquetMetaData>) {
    let options =
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required).with_encoding_stats_as_mask(false);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file.clone(), options).unwrap();
    let meta = builder.metadata().clone();
    (builder.build().unwrap().map(|b| b.unwrap()).collect(), meta)
}

/// Column `s` of `batches` as plain values.
fn values(batches: &[RecordBatch], t: &DataType) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    for b in batches {
        let column = arrow::compute::cast(b.column(1), t).unwrap();
        let column = arrow::compute::cast(&column, &DataType::Binary).unwrap();
        let column = column.as_any().downcast_ref::<BinaryArray>().unwrap();
        out.extend(column.iter().map(|v| v.map(<[u8]>::to_vec)));
    }
    out
}

/// Checks `file` against `expected` rows: the values, every page's least, greatest and null count
/// in the column index, and the chunks' statistics.
fn check(file: &Bytes, expected: &[Option<Vec<u8>>], t: &DataType) {
    let (batches, meta) = read(file);
    assert_eq!(values(&batches, t), expected, "values read back");
    let mut row = 0;
    for (g, group) in meta.row_groups().iter().enumerate() {
        let rows = group.num_rows() as usize;
        let chunk = &expected[row..row + rows];
        let page_index = meta.page_index_for_row_group(g);
        let offsets = &page_index.offset_index(1).expect("an offset index").page_locations;
        let Some(ColumnIndexMetaData::BYTE_ARRAY(index)) = page_index.column_index(1) else {
            panic!("no column index for s in row group {g}");
        };
        for (p, page) in offsets.iter().enumerate() {
            let end = offsets.get(p + 1).map_or(rows, |next| next.first_row_index as usize);
            let page_rows = &chunk[page.first_row_index as usize..end];
            let nulls = page_rows.iter().filter(|v| v.is_none()).count() as i64;
            assert_eq!(index.null_count(p), Some(nulls), "nulls of page {p} in row group {g}");
            let least = page_rows.iter().flatten().min();
            let greatest = page_rows.iter().flatten().max();
            assert_eq!(index.min_value(p).map(|m| m.to_vec()).as_ref(), least.map(|v| trunc(v)).as_ref(), "page {p}");
            assert_eq!(index.max_value(p).is_some(), greatest.is_some(), "page {p}");
            if let (Some(m), Some(g)) = (index.max_value(p), greatest) {
                assert!(m >= g.as_slice(), "page {p}'s maximum is a bound");
            }
        }
        let Some(Statistics::ByteArray(stats)) = group.column(1).statistics() else {
            panic!("no statistics for s in row group {g}");
        };
        let nulls = chunk.iter().filter(|v| v.is_none()).count() as u64;
        assert_eq!(stats.null_count_opt(), Some(nulls));
        assert_eq!(stats.min_opt().map(|m| m.data().to_vec()), chunk.iter().flatten().min().map(|v| trunc(v)));
        row += rows;
    }
    assert_eq!(row, expected.len());
}

/// A lower bound of at most 64 bytes, as statistics keep (ASCII test values).
fn trunc(v: &[u8]) -> Vec<u8> {
    v[..v.len().min(64)].to_vec()
}

fn words(n: usize, len: usize, seed: u64) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| (0..len).map(|_| rng.random_range(b'a'..=b'z') as char).collect()).collect()
}

fn expected_of(keys: &[Option<i32>], dictionary: &[Option<String>]) -> Vec<Option<Vec<u8>>> {
    keys.iter().map(|k| k.and_then(|k| dictionary[k as usize].clone()).map(String::into_bytes)).collect()
}

#[test]
fn dictionary_columns_read_back_with_statistics_and_page_index_as_parquet_rs_writes_them() {
    let schema = schema(DataType::Utf8, true);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut batches = Vec::new();
    let mut expected = Vec::new();
    let mut first = 0;
    // Two input dictionaries (one with a null value), runs and random keys, null keys, a batch
    // of plain strings, and batches that share a dictionary array.
    for round in 0..6 {
        let mut dictionary: Vec<Option<String>> = words(7, 4 + round, round as u64).into_iter().map(Some).collect();
        if round == 2 {
            dictionary[3] = None;
        }
        let values: ArrayRef = Arc::new(StringArray::from(dictionary.clone()));
        for part in 0..3 {
            let keys: Vec<Option<i32>> = (0..9_000)
                .map(|i| match (part, i % 100) {
                    (0, _) => Some((i / 500) % 7),
                    (_, 0..=4) => None,
                    _ => Some(rng.random_range(0..7)),
                })
                .collect();
            expected.extend(expected_of(&keys, &dictionary));
            batches.push(batch(&schema, first, &keys, values.clone(), round == 4 && part == 1));
            first += keys.len() as i64;
        }
    }
    for compression in
        [Compression::ZSTD(ZstdLevel::default()), Compression::SNAPPY, Compression::LZ4_RAW, Compression::UNCOMPRESSED]
    {
        let file = write(&schema, props(compression, 256 << 10), &batches);
        check(&file, &expected, &DataType::Utf8);
        let (_, meta) = read(&file);
        for group in meta.row_groups() {
            let column = group.column(1);
            assert_eq!(column.compression(), compression);
            let stats = column.page_encoding_stats().expect("page encoding statistics");
            assert_eq!((stats[0].page_type, stats[0].encoding), (PageType::DICTIONARY_PAGE, Encoding::PLAIN));
            assert!(stats[1..].iter().all(|s| s.encoding == Encoding::RLE_DICTIONARY), "{stats:?}");
        }
        // Same values as parquet-rs writes them, and a file no larger than a tenth over its.
        let theirs = write_plain(&schema, props(compression, 256 << 10), &batches);
        assert_eq!(values(&read(&theirs).0, &DataType::Utf8), expected);
        assert!(file.len() <= theirs.len() + theirs.len() / 10, "{} vs {} bytes", file.len(), theirs.len());
    }
}

#[test]
fn a_full_dictionary_turns_to_plain_pages_and_long_values_get_cut_statistics() {
    let schema = schema(DataType::Binary, true);
    // 3000 distinct values of 80 bytes: a 16 KiB dictionary limit is reached after about 200.
    let dictionary: Vec<Option<String>> = words(3000, 80, 11).into_iter().map(Some).collect();
    let values: ArrayRef =
        Arc::new(BinaryArray::from_iter(dictionary.iter().map(|v| v.as_ref().map(|s| s.as_bytes()))));
    let keys: Vec<Option<i32>> =
        (0..30_000).map(|i| if i % 17 == 0 { None } else { Some((i * 7919) % 3000) }).collect();
    let batches = vec![batch(&schema, 0, &keys, values, false)];
    let expected = expected_of(&keys, &dictionary);
    let file = write(&schema, props(Compression::ZSTD(ZstdLevel::default()), 16 << 10), &batches);
    check(&file, &expected, &DataType::Binary);
    let (_, meta) = read(&file);
    let column = meta.row_group(0).column(1);
    let pages: Vec<(PageType, Encoding)> =
        column.page_encoding_stats().unwrap().iter().map(|s| (s.page_type, s.encoding)).collect();
    assert_eq!(
        pages,
        [
            (PageType::DICTIONARY_PAGE, Encoding::PLAIN),
            (PageType::DATA_PAGE, Encoding::RLE_DICTIONARY),
            (PageType::DATA_PAGE, Encoding::PLAIN)
        ]
    );
    // The chunk's statistics are what parquet-rs writes for the same rows: cut to 64 bytes, the
    // maximum raised to a bound, and both marked inexact.
    let theirs = write_plain(&schema, props(Compression::ZSTD(ZstdLevel::default()), 16 << 10), &batches);
    assert_eq!(column.statistics(), read(&theirs).1.row_group(0).column(1).statistics());
}

#[test]
fn utf8_statistics_are_cut_at_a_character_and_raised_as_parquet_rs_does() {
    let schema = schema(DataType::Utf8, false);
    let long = |c: &str| format!("{}{c}", "é".repeat(31));
    let dictionary: Vec<Option<String>> = vec![Some(long("aa")), Some(long("zz")), Some("b".into())];
    let strings: ArrayRef = Arc::new(StringArray::from(dictionary.clone()));
    let keys: Vec<Option<i32>> = (0..1000).map(|i| Some(i % 3)).collect();
    let batches = vec![batch(&schema, 0, &keys, strings, false)];
    let file = write(&schema, props(Compression::SNAPPY, 1 << 20), &batches);
    let theirs = write_plain(&schema, props(Compression::SNAPPY, 1 << 20), &batches);
    let (batches_read, ours) = read(&file);
    assert_eq!(ours.row_group(0).column(1).statistics(), read(&theirs).1.row_group(0).column(1).statistics());
    assert_eq!(values(&batches_read, &DataType::Utf8), expected_of(&keys, &dictionary));
}

#[test]
fn a_null_in_a_non_nullable_column_is_an_error() {
    let schema = schema(DataType::Utf8, false);
    let values: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
    let keys = [Some(0), None, Some(1)];
    let mut writer = ParquetWriter::try_new(Vec::new(), schema.clone(), props(Compression::SNAPPY, 1 << 20)).unwrap();
    let err = writer.write(&batch(&schema, 0, &keys, values, false)).unwrap_err();
    assert!(err.to_string().contains("column s: a null in a column declared non-nullable"), "{err}");
}

#[test]
fn the_hybrid_encoding_reads_back_for_runs_and_literals_of_every_width() {
    // Decoded by parquet-rs's reader: a dictionary page of `n` values and one data page whose
    // ids mix runs of every length around eight with literals.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for n in [1usize, 2, 3, 200, 70_000] {
        let mut keys = Vec::new();
        while keys.len() < 5_000 {
            let run = rng.random_range(1..20);
            let v = rng.random_range(0..n as i32);
            keys.extend(std::iter::repeat_n(Some(v), run));
        }
        let dictionary: Vec<Option<String>> = (0..n).map(|i| Some(format!("v{i:06}"))).collect();
        let values: ArrayRef = Arc::new(StringArray::from(dictionary.clone()));
        let schema = schema(DataType::Utf8, false);
        let batches = vec![batch(&schema, 0, &keys, values, false)];
        let file = write(&schema, props(Compression::UNCOMPRESSED, 8 << 20), &batches);
        check(&file, &expected_of(&keys, &dictionary), &DataType::Utf8);
    }
    assert_eq!(
        [bit_width(0), bit_width(1), bit_width(2), bit_width(3), bit_width(256), bit_width(257)],
        [0, 0, 1, 2, 8, 9]
    );
    // Eight equal values after three literals: the literals borrow five, and three stay literal.
    let mut out = Vec::new();
    rle_hybrid(&[1u32, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4], 3, &mut out);
    assert_eq!(out[0], (2 << 1) | 1, "two bit-packed groups: {out:?}");
}
