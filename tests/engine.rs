//! The `flow_engine` library: answers (checked against values worked out by hand with DuckDB's
//! rules), types, sources, schema unification, pruning, dictionaries, and the pool back at zero
//! after every query. Sorts and aggregations spilled or not are in `operators.rs`.

mod common;
#[path = "common/rows.rs"]
mod rows;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;
use flow_engine::{Config, Engine, Error};
use rows::{check, column, engine_on, rows, write};

const T_CSV: &str = "id,name,price,qty,day,flag\n\
1,Apple,1.50,3,2024-01-15,true\n\
2,pear,,5,2024-02-29,false\n\
3,\"Plum, red\",3.25,,2023-12-31,\n\
4,  kiwi ,0.05,10,,true\n";

fn engine(dir: &Path) -> Engine {
    let config = Config::default().with_mem_budget(256 << 20).with_threads(2).with_spill_dir(dir);
    let mut engine = Engine::new(config).unwrap();
    std::fs::write(dir.join("t.csv"), T_CSV).unwrap();
    let format = flow_engine::source::Format::Csv(flow_engine::source::CsvOptions {
        schema: Some(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("price", DataType::Decimal128(10, 2), true),
            Field::new("qty", DataType::Int32, true),
            Field::new("day", DataType::Date32, true),
            Field::new("flag", DataType::Boolean, true),
        ]))),
        ..Default::default()
    });
    engine.register_with_format("t", dir.join("t.csv").to_str().unwrap(), Some(format)).unwrap();
    engine
}

#[test]
fn arithmetic_and_decimal_types_follow_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    check(&e, "SELECT price * qty FROM t", DataType::Decimal128(18, 2), &["4.50", "NULL", "NULL", "0.50"]);
    check(&e, "SELECT 1 - price FROM t", DataType::Decimal128(13, 2), &["-0.50", "NULL", "-2.25", "0.95"]);
    check(&e, "SELECT price + price FROM t", DataType::Decimal128(11, 2), &["3.00", "NULL", "6.50", "0.10"]);
    check(&e, "SELECT price * 1.5 FROM t", DataType::Decimal128(12, 3), &["2.250", "NULL", "4.875", "0.075"]);
    check(&e, "SELECT price / qty FROM t", DataType::Float64, &["0.5", "NULL", "NULL", "0.005"]);
    check(&e, "SELECT qty / 0 FROM t WHERE id = 1", DataType::Float64, &["inf"]);
    check(&e, "SELECT id % 3 FROM t", DataType::Int64, &["1", "2", "0", "1"]);
    check(&e, "SELECT qty + 1 FROM t", DataType::Int32, &["4", "6", "NULL", "11"]);
    check(&e, "SELECT -id FROM t WHERE id < 3", DataType::Int64, &["-1", "-2"]);
    check(&e, "SELECT abs(1 - qty) FROM t", DataType::Int32, &["2", "4", "NULL", "9"]);
    check(&e, "SELECT round(price, 1) FROM t", DataType::Decimal128(10, 1), &["1.5", "NULL", "3.3", "0.1"]);
    check(&e, "SELECT round(price) FROM t", DataType::Decimal128(10, 0), &["2", "NULL", "3", "0"]);
    check(&e, "SELECT CAST(price AS INTEGER) FROM t", DataType::Int32, &["2", "NULL", "3", "0"]);
    check(&e, "SELECT CAST(qty AS DOUBLE) / 4 FROM t WHERE id = 1", DataType::Float64, &["0.75"]);
    check(&e, "SELECT coalesce(price, 0) FROM t", DataType::Decimal128(12, 2), &["1.50", "0.00", "3.25", "0.05"]);
    // A product of two narrow decimals is DECIMAL(18,s), as DuckDB types it, and a value that
    // does not fit is an error (DuckDB: "Overflow in multiplication of DECIMAL(18)").
    check(&e, "SELECT price * price FROM t", DataType::Decimal128(18, 4), &["2.2500", "NULL", "10.5625", "0.0025"]);
    check(&e, "SELECT 2 * price - price FROM t", DataType::Decimal128(19, 2), &["1.50", "NULL", "3.25", "0.05"]);
    let big = "CAST(price * 10000000 AS DECIMAL(15,2))";
    let err = e.sql(&format!("SELECT {big} * {big} FROM t")).unwrap().collect().unwrap_err();
    assert!(err.to_string().contains("overflow: a result of * does not fit DECIMAL(18,4)"), "{err}");
    let err = e.sql("SELECT qty % 0 FROM t").unwrap().collect().unwrap_err();
    assert!(err.to_string().contains("division by zero"), "{err}");
    let err = e.sql("SELECT CAST(2147483647 AS INTEGER) + qty FROM t").unwrap().collect().unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
}

#[test]
fn strings_predicates_and_case() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    check(&e, "SELECT upper(name) FROM t", DataType::Utf8, &["APPLE", "PEAR", "PLUM, RED", "  KIWI "]);
    check(&e, "SELECT length(name) FROM t", DataType::Int64, &["5", "4", "9", "7"]);
    check(&e, "SELECT trim(name) || '!' FROM t", DataType::Utf8, &["Apple!", "pear!", "Plum, red!", "kiwi!"]);
    check(&e, "SELECT substr(name, 2, 3) FROM t", DataType::Utf8, &["ppl", "ear", "lum", " ki"]);
    check(&e, "SELECT SUBSTRING(name FROM -3) FROM t", DataType::Utf8, &["ple", "ear", "red", "wi "]);
    check(
        &e,
        "SELECT concat(name, '-', qty) FROM t",
        DataType::Utf8,
        &["Apple-3", "pear-5", "Plum, red-", "  kiwi -10"],
    );
    check(&e, "SELECT name || qty FROM t", DataType::Utf8, &["Apple3", "pear5", "NULL", "  kiwi 10"]);
    check(&e, "SELECT name LIKE 'P%' FROM t", DataType::Boolean, &["false", "false", "true", "false"]);
    check(&e, "SELECT name ILIKE 'p%' FROM t", DataType::Boolean, &["false", "true", "true", "false"]);
    check(&e, "SELECT name NOT LIKE '%e_' FROM t", DataType::Boolean, &["true", "true", "false", "true"]);
    check(&e, "SELECT qty IN (3, 10) FROM t", DataType::Boolean, &["true", "false", "NULL", "true"]);
    check(&e, "SELECT qty NOT IN (3, NULL) FROM t", DataType::Boolean, &["false", "NULL", "NULL", "NULL"]);
    check(&e, "SELECT qty BETWEEN 4 AND 10 FROM t", DataType::Boolean, &["false", "true", "NULL", "true"]);
    check(&e, "SELECT flag AND qty > 4 FROM t", DataType::Boolean, &["false", "false", "NULL", "true"]);
    check(&e, "SELECT flag OR qty > 4 FROM t", DataType::Boolean, &["true", "true", "NULL", "true"]);
    check(&e, "SELECT NOT flag FROM t", DataType::Boolean, &["false", "true", "NULL", "false"]);
    check(&e, "SELECT price IS NULL FROM t", DataType::Boolean, &["false", "true", "false", "false"]);
    check(
        &e,
        "SELECT CASE WHEN qty > 4 THEN 'big' WHEN qty IS NULL THEN 'none' ELSE 'small' END FROM t",
        DataType::Utf8,
        &["small", "big", "none", "big"],
    );
    check(
        &e,
        "SELECT CASE qty WHEN 3 THEN 1 WHEN 5 THEN 2.5 END FROM t",
        DataType::Decimal128(11, 1),
        &["1.0", "2.5", "NULL", "NULL"],
    );
}

#[test]
fn dates_filters_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    check(&e, "SELECT EXTRACT(year FROM day) FROM t", DataType::Int64, &["2024", "2024", "2023", "NULL"]);
    check(&e, "SELECT date_part('month', day) FROM t", DataType::Int64, &["1", "2", "12", "NULL"]);
    check(&e, "SELECT year(day) + month(day) FROM t", DataType::Int64, &["2025", "2026", "2035", "NULL"]);
    check(&e, "SELECT nullif(day, '2024-01-15') FROM t WHERE id < 3", DataType::Date32, &["NULL", "2024-02-29"]);
    check(&e, "SELECT id FROM t WHERE day > '2024-01-31'", DataType::Int64, &["2"]);
    check(&e, "SELECT id FROM t WHERE day < DATE '2024-01-31' AND flag IS NULL", DataType::Int64, &["3"]);
    check(
        &e,
        "SELECT CAST(TIMESTAMP '2024-03-01 10:30:00' AS DATE) FROM t WHERE id = 1",
        DataType::Date32,
        &["2024-03-01"],
    );
    check(&e, "SELECT id FROM t LIMIT 2 OFFSET 1", DataType::Int64, &["2", "3"]);
    check(&e, "SELECT id FROM t WHERE id > 100", DataType::Int64, &[]);
    check(&e, "SELECT i FROM (SELECT id * 10 AS i FROM t WHERE id > 1) s WHERE i < 40", DataType::Int64, &["20", "30"]);
    let (_, all) = rows(&e, "SELECT * FROM t WHERE id = 3");
    assert_eq!(all, vec![vec!["3", "Plum, red", "3.25", "NULL", "2023-12-31", "NULL"]]);
}

#[test]
fn plan_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let err = |sql: &str| e.sql(sql).err().unwrap_or_else(|| panic!("{sql} should fail"));
    assert!(matches!(err("SELECT nme FROM t"), Error::Sql { line: 1, column: 8, .. }));
    assert!(err("SELECT nme FROM t").to_string().contains("did you mean name?"));
    assert!(err("SELECT name FROM tt").to_string().contains("did you mean t?"));
    assert!(err("SELECT lowr(name) FROM t").to_string().contains("function lowr() (hint: did you mean lower?)"));
    assert!(err("SELECT date_part(name, day) FROM t").to_string().contains("takes the part as a string constant"));
    assert!(err("SELECT left(name) FROM t").to_string().contains("left() takes 2 arguments, got 1"));
    assert!(err("SELECT round(price, qty) FROM t")
        .to_string()
        .contains("round() with a non-constant number of digits"));
    assert!(err("SELECT EXTRACT(year FROM name) FROM t").to_string().contains("EXTRACT needs a date or timestamp"));
    assert!(err("SELECT id FROM t WHERE name").to_string().contains("WHERE must be a boolean condition, got VARCHAR"));
    assert!(err("SELECT upper(id) FROM t").to_string().contains("upper needs a string, got BIGINT"));
    assert!(err("SELECT frobnicate(id) FROM t").to_string().contains("function frobnicate()"));
    assert!(matches!(err("SELECT id, name FROM t GROUP BY id").inner(), Error::Plan(_)));
    assert!(matches!(err("SELECT id FROM t GROUP BY CUBE (id)").inner(), Error::NotSupported(_)));
    assert!(matches!(err("SELECT count(DISTINCT id), variance(qty) FROM t").inner(), Error::NotSupported(_)));
    assert!(matches!(err("SELECT CAST(day AS BOOLEAN) FROM t").inner(), Error::Plan(_)));
    // Errors about an expression say where it is.
    assert_eq!(err("SELECT id FROM t\nWHERE upper(id) = 'x'").position(), Some((2, 7)));
}

#[test]
fn compatible_files_unify_and_incompatible_ones_fail() {
    let dir = tempfile::tempdir().unwrap();
    let u = dir.path().join("u");
    std::fs::create_dir(&u).unwrap();
    write(
        &u.join("a.parquet"),
        vec![
            ("x", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
            ("y", Arc::new(StringArray::from(vec!["p", "q"]))),
        ],
    );
    write(
        &u.join("b.parquet"),
        vec![("x", Arc::new(Int64Array::from(vec![3])) as ArrayRef), ("z", Arc::new(Float64Array::from(vec![0.5])))],
    );
    write(
        &u.join("c.parquet"),
        vec![
            ("y", Arc::new(LargeStringArray::from(vec!["r"])) as ArrayRef),
            ("x", Arc::new(Int32Array::from(vec![4]))),
        ],
    );
    write(
        &u.join("d.parquet"),
        vec![("x", Arc::new(Int64Array::from(vec![5])) as ArrayRef), ("y", Arc::new(StringViewArray::from(vec!["s"])))],
    );
    let e = engine(dir.path());
    // Files of different columns are an error unless read by name, as in DuckDB.
    let plain = format!("SELECT x, y FROM '{}/u/*.parquet'", dir.path().display());
    let msg = e.sql(&plain).err().expect("different columns").to_string();
    assert!(msg.contains("column 'y'") && msg.contains("b.parquet") && msg.contains("union_by_name"), "{msg}");
    let glob =
        format!("SELECT x, y, z FROM read_parquet('{}/u/*.parquet', union_by_name = true)", dir.path().display());
    let (types, got) = rows(&e, &glob);
    assert_eq!(types, vec![DataType::Int64, DataType::Utf8, DataType::Float64]);
    assert_eq!(
        got,
        vec![["1", "p", "NULL"], ["2", "q", "NULL"], ["3", "NULL", "0.5"], ["4", "r", "NULL"], ["5", "s", "NULL"]]
    );
    // A directory reads the same files.
    let (_, by_dir) =
        rows(&e, &format!("SELECT x FROM read_parquet('{}/u', union_by_name = true)", dir.path().display()));
    assert_eq!(by_dir.len(), 5);
    write(&u.join("e.parquet"), vec![("x", Arc::new(StringArray::from(vec!["oops"])) as ArrayRef)]);
    let err = e.sql(&glob).err().expect("incompatible files");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Schema(_))
            && msg.contains("column 'x'")
            && msg.contains("a.parquet")
            && msg.contains("e.parquet"),
        "{msg}"
    );
}

#[test]
fn ndjson_and_csv_options() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    std::fs::write(
        dir.path().join("j.json"),
        "{\"a\": 1, \"b\": \"x\"}\n{\"a\": 2}\n{\"a\": 3, \"b\": \"z\", \"c\": true}\n",
    )
    .unwrap();
    let (types, got) = rows(&e, &format!("SELECT a, b, c FROM '{}/j.json' WHERE a > 1", dir.path().display()));
    assert_eq!(types, vec![DataType::Int64, DataType::Utf8, DataType::Boolean]);
    assert_eq!(got, vec![["2", "NULL", "NULL"], ["3", "z", "true"]]);
    std::fs::write(dir.path().join("s.txt"), "1|a\n2|b\n").unwrap();
    let (_, got) =
        rows(&e, &format!("SELECT column_2 FROM read_csv('{}/s.txt', delim='|', header=false)", dir.path().display()));
    assert_eq!(got, vec![["a"], ["b"]]);
}

#[test]
fn row_groups_are_pruned_by_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("tag", DataType::Utf8, true)]));
    let batches: Vec<RecordBatch> = (0..10)
        .map(|g| {
            let ids: Vec<i64> = (g * 100..(g + 1) * 100).collect();
            let tags: StringArray = ids.iter().map(|i| Some(format!("g{}", i / 100))).collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids)), Arc::new(tags)]).unwrap()
        })
        .collect();
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(100)).build();
    write_parquet(&dir.path().join("p.parquet"), &batches, Some(props));
    let mut e = engine(dir.path());
    e.register("p", dir.path().join("p.parquet").to_str().unwrap()).unwrap();
    for (sql, groups, count) in [
        ("SELECT id FROM p WHERE id >= 950", 1, 50),
        ("SELECT id FROM p WHERE id BETWEEN 150 AND 250", 2, 101),
        ("SELECT id FROM p WHERE id IN (5, 905)", 2, 2),
        ("SELECT id FROM p WHERE tag = 'g3'", 1, 100),
        ("SELECT id FROM p WHERE 500 > id AND id > 480", 1, 19),
        ("SELECT id FROM p WHERE id < 0", 0, 0),
        ("SELECT id FROM p WHERE id % 2 = 0 OR id = 3", 10, 501),
    ] {
        let metrics = e.sql(sql).unwrap().for_each(|_| Ok(())).unwrap();
        assert_eq!(metrics.pipeline.row_groups_total, 10);
        assert_eq!(metrics.pipeline.row_groups_scanned, groups, "{sql}");
        assert_eq!(metrics.rows_out, count, "{sql}");
    }
    assert_eq!(e.pool().reserved(), e.catalog_memory());
}

#[test]
fn pages_are_pruned_by_the_page_index() {
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("tag", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ]));
    // Sorted on id and tag; n is null on ids 3000..4000 (whole pages of nulls) and else id.
    let ids: Vec<i64> = (0..20_000).collect();
    let tags: StringArray = ids.iter().map(|i| Some(format!("t{:03}", i / 1000))).collect();
    let ns: Int64Array = ids.iter().map(|&i| (!(3000..4000).contains(&i)).then_some(i)).collect();
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ids.clone())), Arc::new(tags), Arc::new(ns)])
            .unwrap();
    // Two row groups of 10,000 rows in pages of 500; the second file has no page index.
    let props = |stats| {
        WriterProperties::builder()
            .set_max_row_group_row_count(Some(10_000))
            .set_data_page_row_count_limit(500)
            .set_write_batch_size(100)
            .set_statistics_enabled(stats)
            .build()
    };
    write_parquet(
        &dir.path().join("paged.parquet"),
        std::slice::from_ref(&batch),
        Some(props(EnabledStatistics::Page)),
    );
    write_parquet(&dir.path().join("whole.parquet"), &[batch], Some(props(EnabledStatistics::Chunk)));
    let mut e = engine(dir.path());
    e.register("paged", dir.path().join("paged.parquet").to_str().unwrap()).unwrap();
    e.register("whole", dir.path().join("whole.parquet").to_str().unwrap()).unwrap();
    let matching = |f: &dyn Fn(i64) -> bool| ids.iter().filter(|&&i| f(i)).count() as u64;
    for (filter, count, most_read) in [
        ("id BETWEEN 1234 AND 1300", matching(&|i| (1234..=1300).contains(&i)), 500),
        ("id >= 19990 OR id < 0", matching(&|i| i >= 19_990), 20_000),
        ("id >= 19990", matching(&|i| i >= 19_990), 500),
        ("id IN (10, 12345)", 2, 1000),
        ("tag = 't007' AND id % 2 = 0", matching(&|i| i / 1000 == 7 && i % 2 == 0), 1000),
        ("n IS NULL", 1000, 1000),
        ("n IS NOT NULL AND id < 4500", matching(&|i| i < 4500 && !(3000..4000).contains(&i)), 4500 - 1000),
        ("n < 3500", 3000, 3000),
        ("id > 5000 AND id < 5001", 0, 500),
        ("CAST(id AS DOUBLE) > 19500.5", matching(&|i| i > 19_500), 500),
    ] {
        let run = |table: &str| {
            let sql = format!("SELECT count(*), sum(id), min(tag), max(n) FROM {table} WHERE {filter}");
            let (_, rows) = rows(&e, &sql);
            let metrics = e.sql(&sql).unwrap().for_each(|_| Ok(())).unwrap();
            (rows, metrics.rows_read)
        };
        let (paged, paged_read) = run("paged");
        let (whole, whole_read) = run("whole");
        assert_eq!(paged, whole, "{filter}");
        assert_eq!(paged[0][0], count.to_string(), "{filter}");
        assert!(paged_read <= most_read, "{filter}: read {paged_read} rows, expected at most {most_read}");
        assert!(paged_read <= whole_read, "{filter}");
    }
    assert_eq!(e.pool().reserved(), e.catalog_memory());
}

#[test]
fn statistics_count_distinct_strings_from_dictionaries() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("status", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, false),
    ]));
    let batch = |from: i64| {
        let ids: Vec<i64> = (from..from + 1000).collect();
        let status: StringArray = ids.iter().map(|i| (i % 7 != 0).then(|| ["F", "O", "P"][*i as usize % 3])).collect();
        let names: StringArray = ids.iter().map(|i| Some(format!("Customer#{i:09}"))).collect();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids)), Arc::new(status), Arc::new(names)])
            .unwrap()
    };
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(1000)).build();
    write_parquet(&dir.path().join("s.parquet"), &[batch(0), batch(1000), batch(2000), batch(3000)], Some(props));
    let table = flow_engine::source::Table::open("s", dir.path().join("s.parquet").to_str().unwrap(), None).unwrap();
    let stats = table.column_stats();
    assert_eq!(stats[0].distinct, Some(4000.0), "integers: one value per step of the range");
    assert_eq!(stats[1].distinct, Some(3.0), "a dictionary of three values");
    assert_eq!(stats[2].distinct, Some(4000.0), "a value per row, counted at that rate");
    // A string column without dictionaries tells nothing.
    let plain = parquet::file::properties::WriterProperties::builder().set_dictionary_enabled(false).build();
    write_parquet(&dir.path().join("p.parquet"), &[batch(0)], Some(plain));
    let table = flow_engine::source::Table::open("p", dir.path().join("p.parquet").to_str().unwrap(), None).unwrap();
    assert_eq!(table.column_stats()[1].distinct, None);
}

#[test]
fn limits_stop_early_and_release_memory() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    // Many row groups, so that a scan cannot read them all before the limit stops it, even on a
    // loaded machine.
    let batches: Vec<RecordBatch> = (0..1000)
        .map(|g| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(g * 1000..(g + 1) * 1000))])
                .unwrap()
        })
        .collect();
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(1000)).build();
    write_parquet(&dir.path().join("n.parquet"), &batches, Some(props));
    let mut e = engine(dir.path());
    e.register("n", dir.path().join("n.parquet").to_str().unwrap()).unwrap();
    let metrics = e.sql("SELECT id FROM n LIMIT 10").unwrap().for_each(|_| Ok(())).unwrap();
    assert_eq!(metrics.rows_out, 10);
    assert!(metrics.rows_read < 500_000, "the scan stopped early: read {}", metrics.rows_read);
    check(
        &e,
        "SELECT id FROM n WHERE id % 1000 = 999 LIMIT 3 OFFSET 47",
        DataType::Int64,
        &["47999", "48999", "49999"],
    );
    // A stream dropped half-way gives everything back.
    let mut stream = e.sql("SELECT id FROM n").unwrap().stream().unwrap();
    let first = stream.next().unwrap().unwrap();
    assert_eq!(first.num_rows(), 1000);
    drop(stream);
    assert_eq!(e.pool().reserved(), e.catalog_memory());
    // Cancelling stops a running query with a clear error.
    e.cancel_flag().store(true, std::sync::atomic::Ordering::SeqCst);
    let err = e.sql("SELECT id FROM n").unwrap().collect().unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(e.pool().reserved(), e.catalog_memory());
}

#[test]
fn types_round_trip_through_parquet_output() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let out = dir.path().join("o.parquet");
    let (summary, metrics) = e
        .sql("SELECT id, name, price, qty, day, flag, CAST(day AS TIMESTAMP) AS ts FROM t")
        .unwrap()
        .write(&out)
        .unwrap();
    assert_eq!((summary.rows, metrics.rows_out), (4, 4));
    assert_eq!(e.pool().reserved(), e.catalog_memory());
    let back = concat(&read_parquet(&out));
    let types: Vec<DataType> = back.schema().fields().iter().map(|f| f.data_type().clone()).collect();
    assert_eq!(
        types,
        vec![
            DataType::Int64,
            DataType::Utf8,
            DataType::Decimal128(10, 2),
            DataType::Int32,
            DataType::Date32,
            DataType::Boolean,
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None)
        ]
    );
    assert_eq!(back.column(2).null_count(), 1);
    assert_eq!(back.column(6).null_count(), 1);
    // Statistics are on, so other readers (and flow itself) can prune.
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&out).unwrap()).unwrap(),
    )
    .clone();
    assert!(meta.row_group(0).column(0).statistics().is_some());
}

#[test]
fn a_filter_over_a_row_group_too_big_to_hold_its_tested_columns_runs_in_a_small_budget() {
    // One row group of 1M rows, filtered on three integer columns: the scan tests those first
    // and holds them for the whole row group (24 MB) while it decodes the rest for the rows that
    // pass. A 16 MiB budget cannot hold that, so the row group is decoded in batches instead;
    // the answer is the same, and with room to spare the early test is used.
    let dir = tempfile::tempdir().unwrap();
    let n = 1_000_000i64;
    write(
        &dir.path().join("big.parquet"),
        vec![
            ("k", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
            ("a", Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 1000))) as ArrayRef),
            ("b", Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * 7))) as ArrayRef),
            ("c", Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 13))) as ArrayRef),
            ("s", Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("s{}", i % 5)))) as ArrayRef),
        ],
    );
    let want: Vec<i64> = (0..n).filter(|i| i % 1000 < 300 && i * 7 > 1000 && i % 13 != 5).collect();
    let sql = "SELECT k, s FROM big WHERE a < 300 AND b > 1000 AND c <> 5";
    for budget in [16u64 << 20, 1 << 30] {
        let config = Config::default().with_mem_budget(budget).with_threads(2).with_spill_dir(dir.path());
        let mut e = Engine::new(config).unwrap();
        e.register("big", dir.path().join("big.parquet").to_str().unwrap()).unwrap();
        let dropped = || e.counters().early_dropped_rows.load(std::sync::atomic::Ordering::Relaxed);
        let (_, got) = rows(&e, sql);
        let keys: Vec<i64> = got.iter().map(|r| r[0].parse().unwrap()).collect();
        assert_eq!(keys, want, "budget {budget}");
        assert!(got.iter().all(|r| r[1] == format!("s{}", r[0].parse::<i64>().unwrap() % 5)), "budget {budget}");
        if budget == 1 << 30 {
            assert!(dropped() > n as u64 / 2, "the early test dropped {} rows", dropped());
        }
    }
}

#[test]
fn tiny_budgets_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
    let big: StringArray = (0..20_000).map(|i| Some(format!("{i:0>200}"))).collect();
    write_parquet(&dir.path().join("w.parquet"), &[RecordBatch::try_new(schema, vec![Arc::new(big)]).unwrap()], None);
    let engine = |budget: u64| {
        let config = Config::default().with_mem_budget(budget).with_threads(2).with_spill_dir(dir.path());
        let mut e = Engine::new(config).unwrap();
        e.register("w", dir.path().join("w.parquet").to_str().unwrap()).unwrap();
        e
    };
    let out = dir.path().join("out.parquet");
    // Refused when it starts, before anything is read or written, with a minimum that works:
    // the minimum depends on the budget it is computed under (buffers sized from the budget), so
    // it is the smallest budget that fits its own minimum.
    let e = engine(256 << 10);
    let needed = match e.sql("SELECT s FROM w").and_then(|q| q.write(&out)).err() {
        Some(Error::BudgetTooSmall { needed, budget, .. }) => {
            assert!(needed > budget);
            needed
        }
        other => panic!("expected BudgetTooSmall, got {other:?}"),
    };
    assert!(!out.exists());
    assert_eq!(e.counters().rows.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing read");
    let e = engine(needed);
    let (summary, _) = e.sql("SELECT s FROM w").and_then(|q| q.write(&out)).unwrap();
    assert_eq!(summary.rows, 20_000);
    let e = engine(needed - 1);
    let refused = e.sql("SELECT s FROM w").and_then(|q| q.write(&out)).err();
    assert!(matches!(refused, Some(Error::BudgetTooSmall { needed: n, .. }) if n == needed), "{refused:?}");
}

#[test]
fn large_csv_is_split_at_record_boundaries() {
    use arrow::array::AsArray;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    // ~80 MB: every 7th record has a quoted field with a newline, a comma and a doubled quote, so
    // slice cuts land inside quoted fields again and again.
    let text_of = |i: u64| -> String {
        if i.is_multiple_of(7) {
            format!("line {i}\nsecond, \"part\"")
        } else {
            format!("plain-{i}-{}", "x".repeat((i % 50) as usize))
        }
    };
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(w, "id,text,n").unwrap();
        for i in 0..2_000_000u64 {
            let t = text_of(i).replace('"', "\"\"");
            writeln!(w, "{i},\"{t}\",{}", i % 3).unwrap();
        }
    }
    assert!(std::fs::metadata(&path).unwrap().len() > 64 << 20);
    let e = engine(dir.path());
    let mut next = 0u64;
    let metrics = e
        .sql(&format!("SELECT id, text FROM '{}' WHERE n <> 5", path.display()))
        .unwrap()
        .for_each(|b| {
            let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
            let texts = b.column(1).as_string::<i32>();
            for r in 0..b.num_rows() {
                assert_eq!(ids.value(r) as u64, next, "records in order, none lost or split");
                assert_eq!(texts.value(r), text_of(next));
                next += 1;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(next, 2_000_000);
    assert!(metrics.pipeline.row_groups_scanned >= 3, "scanned in slices: {:?}", metrics.pipeline);
    assert_eq!(e.pool().reserved(), e.catalog_memory());
}

#[test]
fn hive_partition_folders_become_columns_and_prune_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sales");
    for (folder, ids) in [
        ("region=north/year=2023", vec![1i64, 2]),
        ("region=north/year=2024", vec![3]),
        ("region=x%2Fy/year=2024", vec![4, 5, 6]),
        ("region=__HIVE_DEFAULT_PARTITION__/year=2024", vec![7]),
    ] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
        write(&root.join(folder).join("part-0.parquet"), vec![("id", Arc::new(Int64Array::from(ids)) as ArrayRef)]);
    }
    std::fs::create_dir_all(root.join("_flow")).unwrap();
    std::fs::write(root.join("_flow/manifest.json"), "{}").unwrap();
    let mut e = engine(dir.path());
    e.register("sales", root.to_str().unwrap()).unwrap();
    let types: Vec<DataType> =
        e.sql("SELECT * FROM sales").unwrap().schema().fields().iter().map(|f| f.data_type().clone()).collect();
    assert_eq!(types, [DataType::Int64, DataType::Utf8, DataType::Int64], "year is all integers, region is not");
    let (_, got) = rows(&e, "SELECT region, year, count(*) AS n, sum(id) AS s FROM sales GROUP BY region, year ORDER BY region NULLS FIRST, year");
    assert_eq!(
        got,
        vec![
            vec!["NULL", "2024", "1", "7"],
            vec!["north", "2023", "2", "3"],
            vec!["north", "2024", "1", "3"],
            vec!["x/y", "2024", "3", "15"],
        ]
    );
    // A filter on a partition column reads only the files whose folder can match.
    let files = |sql: &str| e.sql(sql).unwrap().input_files().len();
    assert_eq!(files("SELECT id FROM sales WHERE year = 2023"), 1);
    assert_eq!(files("SELECT id FROM sales WHERE region = 'x/y'"), 1);
    assert_eq!(files("SELECT id FROM sales WHERE region IS NULL"), 1);
    assert_eq!(files("SELECT id FROM sales WHERE year >= 2024 AND region = 'north'"), 1);
    assert_eq!(files("SELECT id FROM sales"), 4);
    let (_, got) = rows(&e, "SELECT sum(id) AS s FROM sales WHERE year = 2024 AND region <> 'north'");
    assert_eq!(got, vec![vec!["15"]]);
    // A glob over the same folders finds the same columns.
    let (_, got) = rows(&e, &format!("SELECT count(DISTINCT region) AS r FROM '{}/*/*/*.parquet'", root.display()));
    assert_eq!(got, vec![vec!["2"]]);
}

const MODES: [&str; 5] = ["AIR", "AIR REG", "MAIL", "RAIL", "TRUCK"];

/// Row `i`'s `mode` in [`write_mode_how`]'s files: five values and nulls.
fn mode(i: i64) -> Option<String> {
    (i % 11 != 3).then(|| MODES[(i * 7 % 5) as usize].to_string())
}

/// Row `i`'s `how`: three values and nulls, but past row 2500 every value is new.
fn how(i: i64) -> Option<String> {
    match i {
        _ if i % 13 == 5 => None,
        i if (2500..3000).contains(&i) => Some(format!("HAND OVER {i}")),
        i => Some(["DELIVER IN PERSON", "NONE", "COLLECT COD"][(i % 3) as usize].to_string()),
    }
}

/// Writes rows 0..3000 of (`id`, [`mode`], [`how`]) to `dir`: `a.parquet` holds rows 0..1000 and
/// 2000..3000 in row groups of 500 rows with dictionaries (the one of rows 2500..3000 falls back
/// to plain pages half-way: a small dictionary limit), `b.parquet` rows 1000..2000 stored plainly.
fn write_mode_how(dir: &Path) {
    use parquet::file::properties::WriterProperties;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("mode", DataType::Utf8, true),
        Field::new("how", DataType::Utf8, true),
    ]));
    let batch = |ids: std::ops::Range<i64>| {
        let modes: StringArray = ids.clone().map(mode).collect();
        let hows: StringArray = ids.clone().map(how).collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(ids)), Arc::new(modes), Arc::new(hows)],
        )
        .unwrap()
    };
    let dictionary = WriterProperties::builder()
        .set_max_row_group_row_count(Some(500))
        .set_data_page_row_count_limit(100)
        .set_write_batch_size(100)
        .set_dictionary_page_size_limit(2048)
        .build();
    write_parquet(&dir.join("a.parquet"), &[batch(0..1000), batch(2000..3000)], Some(dictionary));
    // The file has both kinds of chunk the tests are about.
    let data_page_encodings = |rg: usize, column: usize| -> Vec<parquet::basic::Encoding> {
        let file = std::fs::File::open(dir.join("a.parquet")).unwrap();
        let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new().with_encoding_stats_as_mask(false);
        let meta = parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&file, options).unwrap();
        let stats = meta.metadata().row_group(rg).column(column).page_encoding_stats().unwrap().clone();
        stats.iter().filter(|s| s.page_type == parquet::basic::PageType::DATA_PAGE).map(|s| s.encoding).collect()
    };
    use parquet::basic::Encoding::{PLAIN, RLE_DICTIONARY};
    assert_eq!(data_page_encodings(0, 2), [RLE_DICTIONARY], "dictionary pages only");
    assert!(data_page_encodings(3, 2).contains(&PLAIN) && data_page_encodings(3, 2).contains(&RLE_DICTIONARY));
    let plain = WriterProperties::builder().set_dictionary_enabled(false).build();
    write_parquet(&dir.join("b.parquet"), &[batch(1000..2000)], Some(plain));
}

/// An engine with [`write_mode_how`]'s files in `dir` registered as `d`.
fn mode_how_engine(dir: &Path) -> Engine {
    write_mode_how(dir);
    let mut e = engine(dir);
    e.register("d", dir.join("*.parquet").to_str().unwrap()).unwrap();
    e
}

/// Conditions on one string column are tested once per dictionary value where a row group stores
/// the column dictionary-encoded; the rows must come out as if every row were tested: with nulls,
/// several such columns, other conditions beside them, and row groups stored plainly or falling
/// back to plain pages half-way.
#[test]
fn string_conditions_agree_on_dictionary_and_plain_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let e = mode_how_engine(dir.path());

    type Test = fn(i64, Option<String>, Option<String>) -> bool;
    let cases: [(&str, Test); 8] = [
        ("mode IN ('AIR', 'AIR REG')", |_, m, _| matches!(m.as_deref(), Some("AIR" | "AIR REG"))),
        ("mode = 'MAIL' AND id % 2 = 0", |i, m, _| m.as_deref() == Some("MAIL") && i % 2 == 0),
        ("mode LIKE '%AI%' AND how = 'DELIVER IN PERSON'", |_, m, h| {
            m.is_some_and(|m| m.contains("AI")) && h.as_deref() == Some("DELIVER IN PERSON")
        }),
        ("mode IS NULL", |_, m, _| m.is_none()),
        ("coalesce(how, 'none') = 'none'", |_, _, h| h.is_none()),
        ("NOT (mode <> 'RAIL') OR id < 3", |i, m, _| m.as_deref() == Some("RAIL") || i < 3),
        ("how NOT LIKE 'HAND%' AND length(how) > 4", |_, _, h| {
            h.is_some_and(|h| !h.starts_with("HAND") && h.len() > 4)
        }),
        ("mode NOT IN ('AIR', 'TRUCK') AND how > 'D' AND id BETWEEN 100 AND 2900", |i, m, h| {
            m.is_some_and(|m| m != "AIR" && m != "TRUCK")
                && h.is_some_and(|h| h.as_str() > "D")
                && (100..=2900).contains(&i)
        }),
    ];
    for (condition, test) in cases {
        let want: Vec<String> = (0..3000).filter(|&i| test(i, mode(i), how(i))).map(|i| i.to_string()).collect();
        assert!(!want.is_empty(), "{condition} selects something");
        let (_, got) = column(&e, &format!("SELECT id FROM d WHERE {condition} ORDER BY id"));
        assert_eq!(got, want, "{condition}");
        // The strings come out as they are stored, whichever way they were decoded.
        let (_, got) = rows(&e, &format!("SELECT id, mode, how FROM d WHERE {condition} ORDER BY id LIMIT 5"));
        for row in got {
            let i: i64 = row[0].parse().unwrap();
            assert_eq!(row[1], mode(i).unwrap_or("NULL".into()), "{condition}: mode of {i}");
            assert_eq!(row[2], how(i).unwrap_or("NULL".into()), "{condition}: how of {i}");
        }
    }
    // A condition that fails on every stored value is left to the rows the others leave (none).
    let (_, got) = column(&e, "SELECT id FROM d WHERE id < 0 AND CAST(how AS INTEGER) = 1");
    assert!(got.is_empty());
}

/// A Parquet output takes the string columns a scan only moves as the dictionaries the input
/// stores: the file must hold the same plain strings as a collected result, in every kind of row
/// group, whether the column is tested on its dictionary too, renamed, repeated, computed beside,
/// behind a filter that decodes the other columns for the rows it passes, or cut by a limit.
#[test]
fn parquet_output_of_dictionary_strings_holds_plain_strings() {
    let dir = tempfile::tempdir().unwrap();
    let e = mode_how_engine(dir.path());
    let queries = [
        "SELECT id, mode, how FROM d",
        "SELECT mode AS m, id, how, mode FROM d WHERE id % 3 = 1",
        "SELECT how, id FROM d WHERE mode IN ('AIR', 'RAIL') AND how IS NOT NULL",
        "SELECT mode, upper(mode) AS u, how FROM d WHERE id BETWEEN 400 AND 2700",
        "SELECT id, how FROM d WHERE how LIKE 'HAND%' OR id < 10",
        "SELECT mode, how FROM d WHERE id > 2490 LIMIT 7",
    ];
    for (k, sql) in queries.iter().enumerate() {
        let out = dir.path().join(format!("out{k}.parquet"));
        let want = concat(&e.sql(sql).unwrap().collect().unwrap());
        let (summary, _) = e.sql(sql).unwrap().write(&out).unwrap();
        assert_eq!(e.pool().reserved(), e.catalog_memory(), "{sql}");
        let back = concat(&read_parquet(&out));
        assert_eq!(summary.rows as usize, want.num_rows(), "{sql}");
        assert!(want.num_rows() > 0, "{sql} selects something");
        for (f, w) in back.schema().fields().iter().zip(want.schema().fields()) {
            assert_eq!(f.data_type(), w.data_type(), "{sql}: type of {}", f.name());
        }
        // Output keeps input order (a limit too keeps the first rows in it).
        assert_eq!(back.columns(), want.columns(), "{sql}");
    }
}

/// A string column stored as one big dictionary per row group (30K distinct values of 40 bytes)
/// reaches a Parquet output within a 16 MiB budget: a batch of a few thousand rows holding that
/// dictionary counts all of it, so where it would count more than plain strings the scan unpacks it
/// (passed as it is, every batch counted 1.4 MiB, and the scan's queue failed to reserve).
#[test]
fn big_dictionaries_reach_parquet_outputs_within_a_small_budget() {
    use parquet::file::properties::WriterProperties;
    let dir = tempfile::tempdir().unwrap();
    let value = |i: u64| format!("value-{:06}-{}", (i * 7919) % 30_000, "x".repeat(27));
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("s", DataType::Utf8, false)]));
    let batches: Vec<RecordBatch> = (0..10u64)
        .map(|b| {
            let ids = b * 200_000..(b + 1) * 200_000;
            let strings: StringArray = ids.clone().map(|i| Some(value(i))).collect();
            let ids = Int64Array::from_iter_values(ids.map(|i| i as i64));
            RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(strings)]).unwrap()
        })
        .collect();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(200_000))
        .set_dictionary_page_size_limit(4 << 20)
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    write_parquet(&dir.path().join("b.parquet"), &batches, Some(props));
    let e = engine_on(dir.path(), 16 << 20, "b");
    let out = dir.path().join("out.parquet");
    let (summary, _) = e.sql("SELECT id, s FROM b WHERE id % 2 = 0").unwrap().write(&out).unwrap();
    assert_eq!(summary.rows, 1_000_000);
    assert_eq!(e.pool().reserved(), e.catalog_memory());
    let back = concat(&read_parquet(&out));
    assert_eq!(back.schema().field(1).data_type(), &DataType::Utf8);
    use arrow::array::AsArray;
    let (ids, strings) =
        (back.column(0).as_primitive::<arrow::datatypes::Int64Type>(), back.column(1).as_string::<i32>());
    for r in (0..back.num_rows()).step_by(997) {
        assert_eq!(strings.value(r), value(ids.value(r) as u64), "row {r}");
    }
}

/// Group keys of narrow columns are packed into one integer where they fit and kept in row format
/// where a string is too long; a table holding both kinds, filled, spilled and merged, gives the
/// groups a plain count gives.
#[test]
fn packed_and_row_format_group_keys_agree() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("flag", DataType::Utf8, true),
        Field::new("small", DataType::Int16, true),
        Field::new("n", DataType::Int64, false),
    ]));
    // Flags of 0 to 8 bytes (up to 5 pack beside a 16-bit integer), nulls in both keys, many
    // groups.
    let flag = |i: i64| match i % 11 {
        0 => None,
        f => Some("ABCDEFGH"[..(f as usize % 9)].to_string()),
    };
    let small = |i: i64| (i % 7 != 0).then_some(((i * 31) % 30_000 - 15_000) as i16);
    let batch = |ids: std::ops::Range<i64>| {
        let flags: StringArray = ids.clone().map(flag).collect();
        let smalls: arrow::array::Int16Array = ids.clone().map(small).collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(flags), Arc::new(smalls), Arc::new(Int64Array::from_iter_values(ids))],
        )
        .unwrap()
    };
    let batches: Vec<RecordBatch> = (0..4).map(|b| batch(b * 100_000..(b + 1) * 100_000)).collect();
    write_parquet(&dir.path().join("g.parquet"), &batches, None);
    let mut want: std::collections::BTreeMap<(Option<String>, Option<i16>), (i64, i64)> = Default::default();
    for i in 0..400_000 {
        let g = want.entry((flag(i), small(i))).or_default();
        g.0 += 1;
        g.1 += i;
    }
    let want: Vec<Vec<String>> = want
        .into_iter()
        .map(|((f, s), (n, sum))| {
            vec![f.unwrap_or("NULL".into()), s.map_or("NULL".into(), |s| s.to_string()), n.to_string(), sum.to_string()]
        })
        .collect();
    let sql =
        "SELECT flag, small, count(*), sum(n) FROM g GROUP BY flag, small ORDER BY flag NULLS FIRST, small NULLS FIRST";
    for budget in [256u64 << 20, 8 << 20] {
        let e = engine_on(dir.path(), budget, "g");
        let (_, got) = rows(&e, sql);
        assert_eq!(got.len(), want.len(), "groups at a budget of {budget}");
        assert!(got == want, "groups at a budget of {budget}");
        if budget < 256 << 20 {
            assert!(e.spill().stats().files > 0, "a budget of {budget} spills");
        }
    }
}

#[test]
fn group_keys_in_runs_agree_with_an_independent_aggregation() {
    // Rows in runs of one to five equal keys (a file sorted by its group keys), then keys coming
    // back in later runs, nulls in keys and values: the per-batch runs that the scan's workers
    // aggregate must merge into the same groups as any other input.
    let dir = tempfile::tempdir().unwrap();
    let n = 300_000usize;
    let mut run_of = Vec::with_capacity(n);
    let mut r = 0usize;
    while run_of.len() < n {
        run_of.extend(std::iter::repeat_n(r, 1 + r % 5));
        r += 1;
    }
    run_of.truncate(n);
    // The first half sorted by the keys (runs the workers fold without a table), the second
    // coming back to the same keys again and again (and with nulls).
    let half = run_of[n / 2];
    let k1 = |r: usize| match r < half {
        true => Some(r as i64),
        false => (!r.is_multiple_of(17)).then_some((r % 1000) as i64),
    };
    let k2 = |r: usize| (!r.is_multiple_of(13)).then(|| format!("k{}", r % 3));
    let v = |i: usize| (!i.is_multiple_of(5)).then_some((i * 7919 % 10_000) as i64 - 5_000);
    let s = |i: usize| (!i.is_multiple_of(7)).then(|| format!("s{:05}", i * 31 % 99_991));
    let schema = Arc::new(Schema::new(vec![
        Field::new("k1", DataType::Int64, true),
        Field::new("k2", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]));
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(50_000)
        .map(|start| {
            let rows = start..(start + 50_000).min(n);
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(rows.clone().map(|i| k1(run_of[i])).collect::<Int64Array>()),
                    Arc::new(rows.clone().map(|i| k2(run_of[i])).collect::<StringArray>()),
                    Arc::new(rows.clone().map(v).collect::<Int64Array>()),
                    Arc::new(rows.map(s).collect::<StringArray>()),
                ],
            )
            .unwrap()
        })
        .collect();
    write_parquet(&dir.path().join("c.parquet"), &batches, None);
    type Group = (i64, i64, i64, Option<i64>, Option<String>);
    let mut want: std::collections::BTreeMap<(Option<i64>, Option<String>), Group> = Default::default();
    for (i, &r) in run_of.iter().enumerate() {
        let g = want.entry((k1(r), k2(r))).or_default();
        g.0 += 1;
        if let Some(v) = v(i) {
            g.1 += 1;
            g.2 += v;
            g.3 = Some(g.3.map_or(v, |m| m.min(v)));
        }
        if let Some(s) = s(i) {
            if g.4.as_ref().is_none_or(|m| &s > m) {
                g.4 = Some(s);
            }
        }
    }
    let text = |v: Option<i64>| v.map_or("NULL".to_string(), |v| v.to_string());
    let want: Vec<Vec<String>> = want
        .into_iter()
        .map(|((k1, k2), (n, count, sum, min, max))| {
            let sum = if count == 0 { None } else { Some(sum) };
            vec![
                text(k1),
                k2.unwrap_or("NULL".into()),
                n.to_string(),
                count.to_string(),
                text(sum),
                text(min),
                max.unwrap_or("NULL".into()),
            ]
        })
        .collect();
    let sql = "SELECT k1, k2, count(*), count(v), sum(v), min(v), max(s) FROM c GROUP BY k1, k2 \
               ORDER BY k1 NULLS FIRST, k2 NULLS FIRST";
    for budget in [256u64 << 20, 8 << 20] {
        let e = engine_on(dir.path(), budget, "c");
        let (_, got) = rows(&e, sql);
        assert_eq!(got.len(), want.len(), "groups at a budget of {budget}");
        assert!(got == want, "groups at a budget of {budget}");
        assert_eq!(e.pool().reserved(), e.catalog_memory());
    }
}

#[test]
fn groups_of_row_groups_with_disjoint_keys_go_out_early_and_agree() {
    // Row groups holding disjoint, increasing ranges of `k` (as lineitem's of `l_orderkey`), rows
    // shuffled within each: the aggregation hands each row group's groups on once the next row
    // group comes. Where a key spans two row groups (sorted rows, row groups cut anywhere) it
    // must not, and answers agree either way, also when the table spills.
    let dir = tempfile::tempdir().unwrap();
    // Row groups of several batches each.
    let (groups, rows_per_group, n) = (10usize, 20_000usize, 200_000usize);
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("c", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
    ]));
    // Row `i` of row group `g` (rows shuffled by a multiplier prime to the group size): its key
    // `10000 * g + j`, j below 9000, so each row group holds its own range.
    let key = |g: usize, i: usize| (10_000 * g + (i * 7919 % rows_per_group) % 9_000) as i64;
    let c = |i: usize| (!i.is_multiple_of(11)).then(|| format!("c{}", i % 3));
    let v = |i: usize| (!i.is_multiple_of(13)).then_some((i * 31 % 1000) as i64 - 400);
    let batch = |keys: Vec<i64>, start: usize| {
        let rows = start..start + keys.len();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(keys)),
                Arc::new(rows.clone().map(c).collect::<StringArray>()),
                Arc::new(rows.map(v).collect::<Int64Array>()),
            ],
        )
        .unwrap()
    };
    let props = |rows: usize| {
        parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(rows)).build()
    };
    let disjoint: Vec<RecordBatch> =
        (0..groups).map(|g| batch((0..rows_per_group).map(|i| key(g, i)).collect(), g * rows_per_group)).collect();
    write_parquet(&dir.path().join("disjoint.parquet"), &disjoint, Some(props(rows_per_group)));
    // The same rows sorted by key, cut into row groups of 33,333 rows: neighbours share a key.
    let mut all: Vec<(i64, usize)> = (0..n).map(|i| (key(i / rows_per_group, i % rows_per_group), i)).collect();
    all.sort();
    let sorted = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(all.iter().map(|&(k, _)| k).collect::<Int64Array>()),
            Arc::new(all.iter().map(|&(_, i)| c(i)).collect::<StringArray>()),
            Arc::new(all.iter().map(|&(_, i)| v(i)).collect::<Int64Array>()),
        ],
    )
    .unwrap();
    write_parquet(&dir.path().join("touching.parquet"), &[sorted], Some(props(33_333)));

    type Group = (i64, i64, Option<i64>);
    let mut want: std::collections::BTreeMap<(i64, Option<String>), Group> = Default::default();
    for i in 0..n {
        let v = v(i).filter(|v| *v > -300);
        let g = want.entry((key(i / rows_per_group, i % rows_per_group), c(i))).or_default();
        g.0 += 1;
        if let Some(v) = v {
            g.1 += v;
            g.2 = Some(g.2.map_or(v, |m| m.max(v)));
        }
    }
    let want: Vec<Vec<String>> = want
        .into_iter()
        .map(|((k, c), (n, sum, max))| {
            let text = |v: Option<i64>| v.map_or("NULL".to_string(), |v| v.to_string());
            vec![c.unwrap_or("NULL".into()), k.to_string(), n.to_string(), text(max.map(|_| sum)), text(max)]
        })
        .collect();
    // The clustered key second among the groups, and renamed under a projection.
    let sql = |t: &str| {
        format!(
            "SELECT c, kk, count(*), sum(w), max(w) FROM \
             (SELECT k AS kk, c, CASE WHEN v > -300 THEN v END AS w FROM {t}) \
             GROUP BY c, kk ORDER BY kk, c NULLS FIRST"
        )
    };
    for (table, clustered) in [("disjoint", true), ("touching", false)] {
        for budget in [256u64 << 20, 4 << 20] {
            let e = engine_on(dir.path(), budget, table);
            let plan = e.sql(&sql(table)).unwrap().explain();
            assert_eq!(plan.contains("row groups hold disjoint ranges of kk"), clustered, "{plan}");
            // The small budget has the table of one row group's groups spill (and go on as usual).
            let (_, metrics) = e.sql(&sql(table)).unwrap().explain_analyze().unwrap();
            let spilled = metrics.operators.iter().any(|o| o.name == "HashAggregate" && o.spill_rows > 0);
            assert_eq!(spilled, budget < 64 << 20, "{table} at a budget of {budget}");
            let (_, got) = rows(&e, &sql(table));
            assert_eq!(got.len(), want.len(), "{table} at a budget of {budget}");
            assert!(got == want, "{table} at a budget of {budget}");
            assert_eq!(e.pool().reserved(), e.catalog_memory());
        }
    }
}

#[test]
fn a_partial_aggregation_that_barely_reduces_hands_rows_on_and_loses_nothing() {
    // 300K rows of nearly unique (k, v) pairs (one row in eight repeats its neighbour, so a
    // batch's partial step reduces it by an eighth): past the first 100K rows the workers stop
    // grouping and hand rows on for the final step to group. Answers must not change, also
    // when the final step spills.
    let dir = tempfile::tempdir().unwrap();
    let n = 300_000i64;
    let k = |i: i64| (i * 7919) % 50_000;
    let v = |i: i64| if i % 8 == 1 { i - 1 } else { i };
    let schema =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new((0..n).map(|i| k(v(i))).collect::<Int64Array>()),
            Arc::new((0..n).map(v).collect::<Int64Array>()),
        ],
    )
    .unwrap();
    write_parquet(&dir.path().join("pairs.parquet"), &[batch], None);
    let mut want: std::collections::BTreeMap<i64, (i64, std::collections::BTreeSet<i64>)> = Default::default();
    for i in 0..n {
        let g = want.entry(k(v(i))).or_default();
        g.0 += 1;
        g.1.insert(v(i));
    }
    let distinct_pairs: i64 = want.values().map(|g| g.1.len() as i64).sum();
    for budget in [256u64 << 20, 8 << 20] {
        let e = engine_on(dir.path(), budget, "pairs");
        let sql = "SELECT k, v, count(*) AS n FROM pairs GROUP BY k, v";
        let mut seen = 0;
        let mut total = 0;
        let metrics = e
            .sql(sql)
            .unwrap()
            .for_each(|b| {
                let int = |c: usize| b.column(c).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                let (ks, vs, ns) = (int(0), int(1), int(2));
                for i in 0..b.num_rows() {
                    assert_eq!(ks.value(i), k(vs.value(i)), "{sql}");
                    assert!(want[&ks.value(i)].1.contains(&vs.value(i)), "{sql}");
                    assert_eq!(ns.value(i), if vs.value(i) % 8 == 0 { 2 } else { 1 }, "{sql}: {}", vs.value(i));
                }
                seen += b.num_rows() as i64;
                total += ns.values().iter().sum::<i64>();
                Ok(())
            })
            .unwrap();
        assert_eq!((seen, total), (distinct_pairs, n), "{sql} at {budget}");
        // Grouping every batch would have handed the final step 7/8 of the rows.
        let aggregate = metrics.operators.iter().find(|o| o.name == "HashAggregate").unwrap();
        assert!(aggregate.rows_in > n as u64 * 15 / 16, "{sql} at {budget}: {metrics:?}");
        assert_eq!(e.spill().stats().files > 0, budget < 256 << 20, "{sql} at {budget}");
        let (_, distinct) =
            rows(&e, "SELECT k, count(DISTINCT v) AS d, count(*) AS n FROM pairs GROUP BY k ORDER BY k");
        let expected: Vec<Vec<String>> =
            want.iter().map(|(k, g)| vec![k.to_string(), g.1.len().to_string(), g.0.to_string()]).collect();
        assert_eq!(distinct, expected, "count(DISTINCT) at {budget}");
        assert_eq!(e.pool().reserved(), e.catalog_memory());
    }
}

/// A join key on a string column that a filter tests on its Parquet dictionary: the workers'
/// early key test got the column as a dictionary array and the row converter refused it
/// ("expected Utf8 got Dictionary(Int32, Utf8)"; found by the differential fuzzer).
#[test]
fn a_join_key_tested_early_on_a_dictionary_column_reads_plain_values() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<i64> = (0..20_000).collect();
    let s: StringArray = ids.iter().map(|i| (i % 3 != 0).then(|| format!("k{}", i % 50))).collect();
    write(
        &dir.path().join("t.parquet"),
        vec![("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef), ("s", Arc::new(s))],
    );
    let e = engine_on(dir.path(), 64 << 20, "t");
    // The probe side reads `id` besides `s`: the workers test `s` (the filter on its dictionary,
    // then the join key) before they decode `id` for the rows that pass.
    let k1 = ids.iter().filter(|i| *i % 3 != 0 && *i % 50 == 1).count().to_string();
    for filter in ["a.s IS NOT NULL", "a.s LIKE 'k%'"] {
        let sql = format!(
            "SELECT count(a.id) FROM t a JOIN (SELECT 'k1' AS o FROM t WHERE id = 5) b ON a.s = b.o WHERE {filter}"
        );
        let (_, got) = rows(&e, &sql);
        assert_eq!(got, vec![vec![k1.clone()]], "{sql}");
    }
}

/// A file of many small row groups: a batch holds its rows and no more capacity. The Parquet
/// reader sizes each column's buffer for a whole batch (capped at the file's rows, not the row
/// group's): 100-row batches carried the capacity of a whole batch, and a join over such a file
/// ran 18 MiB over its budget. (Batches this small now go on as one, of about 2,000 rows.)
#[test]
fn batches_of_small_row_groups_hold_only_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let ids = Int64Array::from_iter_values(0..200_000);
    let batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as ArrayRef)]).unwrap();
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(100)).build();
    write_parquet(&dir.path().join("small_groups.parquet"), &[batch], Some(props));
    let e = engine_on(dir.path(), 256 << 20, "small_groups");
    let mut rows = 0;
    e.sql("SELECT id FROM small_groups")
        .unwrap()
        .for_each(|b| {
            rows += b.num_rows();
            assert!(
                b.get_array_memory_size() <= 8 * b.num_rows() + (1 << 10),
                "{} rows hold {} bytes",
                b.num_rows(),
                b.get_array_memory_size()
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(rows, 200_000);
}

/// Small batches go on together, and the two sides of a union may differ in whether a column
/// can be null (`INTERSECT ALL` of a constant and a `CASE` without `ELSE`). Put together,
/// such batches failed ("Column 'a' is declared as non-nullable but contains null values").
#[test]
fn small_batches_of_a_union_go_on_together() {
    let dir = tempfile::tempdir().unwrap();
    let ids = Int64Array::from_iter_values(0..2_000);
    let batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as ArrayRef)]).unwrap();
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(10)).build();
    write_parquet(&dir.path().join("small_groups.parquet"), &[batch], Some(props));
    let e = engine_on(dir.path(), 64 << 20, "small_groups");
    let sql = "SELECT count(*) AS n FROM (
            SELECT 'k' AS a FROM small_groups WHERE id < 100
            INTERSECT ALL
            SELECT CASE WHEN id % 2 = 0 THEN 'k' END AS a FROM small_groups WHERE id < 100
        )";
    let (_, got) = rows(&e, sql);
    assert_eq!(got, vec![vec!["50".to_string()]]);
}
