//! Spill formats: Parquet (as the spill manager writes it: text LZ4_RAW, numbers plain, no
//! statistics, no dictionary, one row group a batch) against Parquet with every column
//! uncompressed, LZ4 or zstd, and Arrow IPC, uncompressed and LZ4, for the write + read-back round
//! trip of sorted runs (a string key, integers, a decimal). Seeded data; the spill manager's own
//! path is the `parquet_spill_manager` case, with its memory-mapped read.

use std::sync::Arc;

use arrow::array::{Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flow_engine::SpillManager;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use rand::{Rng, SeedableRng};

fn batches() -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("id", DataType::Int64, false),
        Field::new("n", DataType::Int64, true),
        Field::new("amount", DataType::Decimal128(15, 2), false),
    ]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    (0..100)
        .map(|b| {
            let n = 8192;
            let key: StringArray =
                (0..n).map(|_| Some(format!("customer#{:09}", rng.random_range(0..1_000_000)))).collect();
            let id = Int64Array::from_iter_values((b * n) as i64..((b + 1) * n) as i64);
            let v: Int64Array = (0..n).map(|i| (i % 7 != 0).then(|| rng.random_range(0..1000))).collect();
            let amount = Decimal128Array::from_iter_values((0..n).map(|_| rng.random_range(100..10_000_000) as i128))
                .with_precision_and_scale(15, 2)
                .unwrap();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(key), Arc::new(id), Arc::new(v), Arc::new(amount)])
                .unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = batches();
    let bytes: u64 = data.iter().map(|b| b.get_array_memory_size() as u64).sum();
    let dir = tempfile::tempdir().unwrap();
    let schema = data[0].schema();
    let mut group = c.benchmark_group("spill_round_trip");
    group.sample_size(10).throughput(Throughput::Bytes(bytes));

    let spill = SpillManager::new(dir.path(), u64::MAX).unwrap();
    group.bench_function("parquet_spill_manager", |b| {
        b.iter(|| {
            let mut w = spill.create(schema.clone(), "bench").unwrap();
            for batch in &data {
                w.write(batch).unwrap();
            }
            let file = w.finish().unwrap();
            let rows: usize = file.reader().unwrap().map(|b| b.unwrap().num_rows()).sum();
            assert_eq!(rows, 819_200);
        })
    });

    for (label, compression) in [
        ("parquet_uncompressed", Compression::UNCOMPRESSED),
        ("parquet_lz4", Compression::LZ4_RAW),
        ("parquet_zstd1", Compression::ZSTD(Default::default())),
    ] {
        let path = dir.path().join(format!("{label}.parquet"));
        group.bench_function(label, |b| {
            b.iter(|| {
                let props = WriterProperties::builder()
                    .set_compression(compression)
                    .set_statistics_enabled(EnabledStatistics::None)
                    .set_dictionary_enabled(false)
                    .build();
                let mut w =
                    ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema.clone(), Some(props)).unwrap();
                for batch in &data {
                    w.write(batch).unwrap();
                    w.flush().unwrap();
                }
                w.close().unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
                let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
                assert_eq!(rows, 819_200);
            })
        });
    }

    for (label, compression) in [("ipc_uncompressed", None), ("ipc_lz4", Some(arrow_ipc::CompressionType::LZ4_FRAME))] {
        let path = dir.path().join(format!("{label}.arrow"));
        group.bench_function(label, |b| {
            b.iter(|| {
                let options = arrow_ipc::writer::IpcWriteOptions::default().try_with_compression(compression).unwrap();
                let file = std::fs::File::create(&path).unwrap();
                let mut w = arrow_ipc::writer::FileWriter::try_new_with_options(file, &schema, options).unwrap();
                for batch in &data {
                    w.write(batch).unwrap();
                }
                w.finish().unwrap();
                let reader = arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&path).unwrap(), None).unwrap();
                let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
                assert_eq!(rows, 819_200);
            })
        });
    }
    group.finish();
    let mut w = spill.create(schema.clone(), "bench").unwrap();
    for batch in &data {
        w.write(batch).unwrap();
    }
    eprintln!("parquet_spill_manager: {} bytes", w.finish().unwrap().bytes());
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.path().is_file() {
            eprintln!("{}: {} bytes", entry.file_name().to_string_lossy(), entry.metadata().unwrap().len());
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
