"""Files flow writes, read back by pyarrow, DuckDB and Polars: values and logical types.

    python check.py source DIR        writes DIR/src.parquet (every type, nulls included)
    python check.py typed DIR/out...  checks files flow wrote from TYPED_SQL (see tests/outputs.rs)
    python check.py hive DIR/hive     checks the hive-partitioned folder flow wrote from HIVE_SQL
    python check.py wide DIR/out...   checks a file flow wrote from WIDE_SQL over DIR/big.parquet

Expected values come from the source as pyarrow built it and from DuckDB running the same SQL;
expected types are spelled out below, per reader. Exits non-zero with the first difference.
"""
import datetime
import decimal
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROWS = 1000
KINDS = ["red", "green", "blue green", None]

# What flow runs (FROM src); DuckDB runs the same text on the source file.
TYPED_SQL = """SELECT id, i8, i16, i32, i64, u8, u32, f32, f64, dec, dec38, s, b, dt, ts, tstz, tsny, l, st,
    CAST(i32 AS DECIMAL(12,3)) AS dec_cast, i32 > 0 AS positive, dt + INTERVAL 1 DAY AS next_day,
    s || '!' AS shout, CAST(dt AS TIMESTAMP) AS midnight
FROM src ORDER BY id"""
HIVE_SQL = "SELECT kind, year, id, s, dec FROM src"
# Over 120 000 rows: integers of too many values for a dictionary (written as deltas) and
# strings of a few values that the scan passes on as dictionaries (flow's own column encoder).
WIDE_SQL = "SELECT id, key, day, amount, mode, note FROM big WHERE id % 10 <> 3"
WIDE_ROWS = 120_000

# column: (pyarrow type, DuckDB type, Polars type)
TYPES = {
    "id": ("int64", "BIGINT", "Int64"),
    "i8": ("int8", "TINYINT", "Int8"),
    "i16": ("int16", "SMALLINT", "Int16"),
    "i32": ("int32", "INTEGER", "Int32"),
    "i64": ("int64", "BIGINT", "Int64"),
    "u8": ("uint8", "UTINYINT", "UInt8"),
    "u32": ("uint32", "UINTEGER", "UInt32"),
    "f32": ("float", "FLOAT", "Float32"),
    "f64": ("double", "DOUBLE", "Float64"),
    "dec": ("decimal128(10, 2)", "DECIMAL(10,2)", "Decimal(precision=10, scale=2)"),
    "dec38": ("decimal128(38, 10)", "DECIMAL(38,10)", "Decimal(precision=38, scale=10)"),
    "s": ("string", "VARCHAR", "String"),
    "b": ("bool", "BOOLEAN", "Boolean"),
    "dt": ("date32[day]", "DATE", "Date"),
    "ts": ("timestamp[us]", "TIMESTAMP", "Datetime(time_unit='us', time_zone=None)"),
    "tstz": ("timestamp[us, tz=UTC]", "TIMESTAMP WITH TIME ZONE", "Datetime(time_unit='us', time_zone='UTC')"),
    "tsny": (
        "timestamp[ms, tz=America/New_York]",
        "TIMESTAMP WITH TIME ZONE",
        "Datetime(time_unit='ms', time_zone='America/New_York')",
    ),
    "l": ("list<element: int64>", "BIGINT[]", "List(Int64)"),
    "st": ("struct<x: int64, y: string>", "STRUCT(x BIGINT, y VARCHAR)", "Struct({'x': Int64, 'y': String})"),
    "dec_cast": ("decimal128(12, 3)", "DECIMAL(12,3)", "Decimal(precision=12, scale=3)"),
    "positive": ("bool", "BOOLEAN", "Boolean"),
    "next_day": ("timestamp[us]", "TIMESTAMP", "Datetime(time_unit='us', time_zone=None)"),
    "shout": ("string", "VARCHAR", "String"),
    "midnight": ("timestamp[us]", "TIMESTAMP", "Datetime(time_unit='us', time_zone=None)"),
}


def fail(message):
    print(f"interop: {message}", file=sys.stderr)
    sys.exit(1)


def null_every(n, values):
    return [None if i % n == n - 1 else v for i, v in enumerate(values)]


def source(folder):
    ids = list(range(ROWS))
    day = datetime.date(1970, 1, 1)
    t = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "i8": pa.array(null_every(7, [(i % 256) - 128 for i in ids]), pa.int8()),
            "i16": pa.array(null_every(11, [i * 37 - 20000 for i in ids]), pa.int16()),
            "i32": pa.array(null_every(5, [i * 1_000_003 - 500_000_000 for i in ids]), pa.int32()),
            "i64": pa.array(null_every(13, [i * 9_000_000_000_017 - 4_000_000_000_000_000 for i in ids]), pa.int64()),
            "u8": pa.array(null_every(9, [i % 256 for i in ids]), pa.uint8()),
            "u32": pa.array(null_every(6, [i * 4_000_037 for i in ids]), pa.uint32()),
            "f32": pa.array(null_every(8, [i / 8 - 40.5 for i in ids]), pa.float32()),
            "f64": pa.array(null_every(10, [i * 1.0e-3 - 0.25 for i in ids]), pa.float64()),
            "dec": pa.array(
                null_every(4, [decimal.Decimal(i * 12345 - 3_000_000).scaleb(-2) for i in ids]), pa.decimal128(10, 2)
            ),
            "dec38": pa.array(
                null_every(12, [decimal.Decimal(i * 10**25 + 7).scaleb(-10) for i in ids]), pa.decimal128(38, 10)
            ),
            "s": pa.array(null_every(3, [f"str {i} é ✓" * (1 + i % 4) for i in ids]), pa.string()),
            "b": pa.array(null_every(7, [i % 3 == 0 for i in ids]), pa.bool_()),
            "dt": pa.array(null_every(6, [day + datetime.timedelta(days=i * 41 - 9000) for i in ids]), pa.date32()),
            "ts": pa.array(
                null_every(5, [datetime.datetime(1960, 1, 1) + datetime.timedelta(seconds=i * 3_000_017.5) for i in ids]),
                pa.timestamp("us"),
            ),
            "tstz": pa.array(
                null_every(
                    7,
                    [
                        datetime.datetime(2000, 2, 29, tzinfo=datetime.timezone.utc) + datetime.timedelta(hours=i * 17)
                        for i in ids
                    ],
                ),
                pa.timestamp("us", tz="UTC"),
            ),
            "tsny": pa.array(
                null_every(
                    9,
                    [
                        datetime.datetime(2021, 3, 14, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=i * 61)
                        for i in ids
                    ],
                ),
                pa.timestamp("ms", tz="America/New_York"),
            ),
            "l": pa.array(null_every(8, [list(range(i % 4)) for i in ids]), pa.list_(pa.int64())),
            "st": pa.array(
                null_every(10, [{"x": None if i % 4 == 0 else i, "y": f"y{i % 5}"} for i in ids]),
                pa.struct([("x", pa.int64()), ("y", pa.string())]),
            ),
            "kind": pa.array([KINDS[i % 4] for i in ids], pa.string()),
            "year": pa.array([2023 + i % 2 for i in ids], pa.int64()),
        }
    )
    pq.write_table(t, f"{folder}/src.parquet", row_group_size=300)
    modes = ["AIR", "MAIL", "RAIL", "SHIP", "TRUCK", "FOB", "REG AIR"]
    ids = range(WIDE_ROWS)
    big = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "key": pa.array(null_every(97, [(i * 2654435761) % (1 << 40) - (1 << 39) for i in ids]), pa.int64()),
            "day": pa.array([day + datetime.timedelta(days=i // 7) for i in ids], pa.date32()),
            "amount": pa.array(
                null_every(89, [decimal.Decimal(i * 7919 % 10_000_000 - 5_000_000).scaleb(-2) for i in ids]),
                pa.decimal128(12, 2),
            ),
            "mode": pa.array(null_every(11, [modes[i * 5 % 7] for i in ids]), pa.string()),
            "note": pa.array([f"note {i % 300} ✓" if i % 50 else None for i in ids], pa.string()),
        }
    )
    pq.write_table(big, f"{folder}/big.parquet", row_group_size=40_000)


def duck_reference(sql, folder):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet('{folder}/src.parquet')")
    return con.sql(sql).to_arrow_table()


def ordered(rows):
    """Rows sorted by partition and id (a null partition value first)."""
    return sorted(rows, key=lambda r: (r[0] is not None, r[0] or "", r[1], r[2]))


def same(a, b, what):
    if a != b:
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                fail(f"{what}: row {i}: {x!r} != {y!r}")
        fail(f"{what}: {len(a)} rows != {len(b)} rows")


def typed(path):
    folder = path.rsplit("/", 1)[0]
    expected = duck_reference(TYPED_SQL, folder)
    source = pq.read_table(f"{folder}/src.parquet")

    # pyarrow: types, and the values against the source itself and against DuckDB's answer.
    got = pq.read_table(path)
    names = got.schema.names
    if names != list(TYPES):
        fail(f"pyarrow: columns {names} != {list(TYPES)}")
    meta = pq.ParquetFile(path).metadata
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            if not meta.row_group(g).column(c).is_stats_set:
                fail(f"pyarrow: no statistics for column {c} of row group {g}")
    for name, (arrow_type, _, _) in TYPES.items():
        if str(got.schema.field(name).type) != arrow_type:
            fail(f"pyarrow: {name} is {got.schema.field(name).type}, expected {arrow_type}")
        values = got.column(name).to_pylist()
        if name in source.schema.names:
            same(values, source.column(name).to_pylist(), f"pyarrow {name} against the source")
        same(values, expected.column(name).to_pylist(), f"pyarrow {name} against DuckDB")

    # DuckDB: types, and the rows equal to its own answer over the source.
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    described = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()}
    for name, (_, duck_type, _) in TYPES.items():
        if described.get(name) != duck_type:
            fail(f"DuckDB: {name} is {described.get(name)}, expected {duck_type}")
    con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet('{folder}/src.parquet')")
    diff = con.execute(
        f"SELECT count(*) FROM ((SELECT * FROM read_parquet('{path}') EXCEPT ALL ({TYPED_SQL})) "
        f"UNION ALL (({TYPED_SQL}) EXCEPT ALL SELECT * FROM read_parquet('{path}')))"
    ).fetchone()[0]
    if diff != 0:
        fail(f"DuckDB: {diff} rows differ from DuckDB's own answer")

    # Polars: types, and the frame equal to DuckDB's answer converted by Polars.
    frame = pl.read_parquet(path)
    for name, (_, _, polars_type) in TYPES.items():
        if repr(frame.schema[name]) != polars_type:
            fail(f"Polars: {name} is {frame.schema[name]!r}, expected {polars_type}")
    reference = pl.from_arrow(expected)
    for name in TYPES:
        same(frame[name].to_list(), reference[name].to_list(), f"Polars {name}")
    print(f"interop: {path}: {got.num_rows} rows, {len(TYPES)} columns agree in pyarrow, DuckDB and Polars")


def hive(path):
    folder = path.rsplit("/", 1)[0]
    source = pq.read_table(f"{folder}/src.parquet").to_pylist()
    want = ordered((r["kind"], r["year"], r["id"], r["s"], r["dec"]) for r in source)

    partitioning = ds.HivePartitioning.discover(null_fallback="__HIVE_DEFAULT_PARTITION__")
    table = ds.dataset(path, format="parquet", partitioning=partitioning).to_table()
    got = ordered((r["kind"], r["year"], r["id"], r["s"], r["dec"]) for r in table.to_pylist())
    same(got, want, "pyarrow hive dataset")

    con = duckdb.connect()
    rows = con.execute(
        f"SELECT kind, year, id, s, dec FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    same(ordered(rows), want, "DuckDB hive")

    frame = pl.read_parquet(f"{path}/**/*.parquet", hive_partitioning=True)
    columns = [frame[c].to_list() for c in ["kind", "year", "id", "s", "dec"]]
    same(ordered(zip(*columns)), want, "Polars hive")
    print(f"interop: {path}: {len(want)} rows in hive partitions agree in pyarrow, DuckDB and Polars")


def partitions(folder):
    """`folder/parts`, flow's hive output of `folder/t.parquet` by `key_str`, holds each key's rows."""
    con = duckdb.connect()
    query = "SELECT key_str, count(*), sum(id), sum(amount) FROM read_parquet('{}', hive_partitioning = {}) GROUP BY key_str"
    want = con.execute(query.format(f"{folder}/t.parquet", "false")).fetchall()
    got = con.execute(query.format(f"{folder}/parts/**/*.parquet", "true")).fetchall()
    same(ordered(got), ordered(want), "DuckDB: rows, id and amount sums per partition")
    print(f"interop: {folder}/parts: {len(want)} partitions agree with DuckDB")


# Partition values that need escaping or care: `/`, `=`, `%`, `:`, `?`, `#`, a space, unicode,
# an empty string and a null; with dates, timestamps and negative integers beside them.
HIVE_VALUES = ["a/b", "x=y", "sp ace", "ünï ✓", "", None, "100%", "-5", "a:b", "q?#"]
HIVE_COLUMNS = ["s", "d", "ts", "neg"]


def hive_source(folder):
    n = len(HIVE_VALUES)
    t = pa.table(
        {
            "s": pa.array(HIVE_VALUES, pa.string()),
            "d": pa.array([datetime.date(1969, 12, 30) + datetime.timedelta(days=400 * i) for i in range(n)], pa.date32()),
            "ts": pa.array([datetime.datetime(2020, 1, 1, 12, 30, i) for i in range(n)], pa.timestamp("us")),
            "neg": pa.array([-7 * i for i in range(n)], pa.int64()),
            "id": pa.array(range(n), pa.int64()),
        }
    )
    pq.write_table(t, f"{folder}/values.parquet")


def as_text(v):
    """A partition value as text: readers give dates and timestamps typed or as strings."""
    if isinstance(v, datetime.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, datetime.date):
        return v.isoformat()
    return None if v is None else str(v)


def hive_values(folder):
    """`folder/out_<column>`: flow's hive output of `values.parquet` by each column in turn."""
    source = pq.read_table(f"{folder}/values.parquet").to_pylist()
    for column in HIVE_COLUMNS:
        want = [(as_text(r[column]), r["id"]) for r in source]
        path = f"{folder}/out_{column}"
        partitioning = ds.HivePartitioning.discover(null_fallback="__HIVE_DEFAULT_PARTITION__")
        table = ds.dataset(path, format="parquet", partitioning=partitioning).to_table().sort_by("id")
        got = [(as_text(r[column]), r["id"]) for r in table.to_pylist()]
        same(got, want, f"pyarrow hive values of {column}")
        rows = duckdb.connect().execute(
            f"SELECT {column}, id FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true) ORDER BY id"
        ).fetchall()
        same([(as_text(v), i) for v, i in rows], want, f"DuckDB hive values of {column}")
        frame = pl.read_parquet(f"{path}/**/*.parquet", hive_partitioning=True).sort("id")
        same([(as_text(v), i) for v, i in zip(frame[column].to_list(), frame["id"].to_list())], want, f"Polars {column}")
    print(f"interop: {folder}: partition values of {', '.join(HIVE_COLUMNS)} agree in pyarrow, DuckDB and Polars")


def wide(path):
    folder = path.rsplit("/", 1)[0]
    # The file must hold what this check is for: delta-encoded integers, dictionary strings.
    meta = pq.ParquetFile(path).metadata
    columns = {meta.row_group(0).column(c).path_in_schema: meta.row_group(0).column(c) for c in range(meta.num_columns)}
    for name in ["key", "amount"]:
        if "DELTA_BINARY_PACKED" not in columns[name].encodings:
            fail(f"{name}: encodings {columns[name].encodings}, expected DELTA_BINARY_PACKED among them")
    for name in ["mode", "note"]:
        if not columns[name].has_dictionary_page or "PLAIN" not in columns[name].encodings:
            fail(f"{name}: encodings {columns[name].encodings}, expected a dictionary")

    con = duckdb.connect()
    con.execute(f"CREATE VIEW big AS SELECT * FROM read_parquet('{folder}/big.parquet')")
    expected = con.sql(WIDE_SQL).to_arrow_table()
    got = pq.read_table(path)
    for name in expected.schema.names:
        same(got.column(name).to_pylist(), expected.column(name).to_pylist(), f"pyarrow {name}")
    rows = con.execute(f"SELECT * FROM read_parquet('{path}')").fetchall()
    same(rows, con.execute(WIDE_SQL).fetchall(), "DuckDB")
    # Statistics and the page index: DuckDB's filters on the file agree with the file's rows.
    for where in ["mode = 'RAIL'", "key > 0", "amount < 0", "note = 'note 7 ✓'", "mode IS NULL"]:
        count = con.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE {where}").fetchone()[0]
        want = con.execute(f"SELECT count(*) FROM ({WIDE_SQL}) WHERE {where}").fetchone()[0]
        if count != want:
            fail(f"DuckDB: {count} rows where {where}, expected {want}")
    frame = pl.read_parquet(path)
    reference = pl.from_arrow(expected)
    for name in expected.schema.names:
        same(frame[name].to_list(), reference[name].to_list(), f"Polars {name}")
    print(f"interop: {path}: {got.num_rows} rows of delta and dictionary columns agree in pyarrow, DuckDB and Polars")


if __name__ == "__main__":
    command, target = sys.argv[1], sys.argv[2]
    {
        "source": source,
        "typed": typed,
        "hive": hive,
        "hive_source": hive_source,
        "hive_values": hive_values,
        "partitions": partitions,
        "wide": wide,
    }[command](target)
