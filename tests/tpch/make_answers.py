"""Makes the expected answers of the TPC-H tests (tests/tpch.rs).

Runs each query of tests/tpch/queries on DuckDB over TPC-H data at scale factor 0.05, made by
tpchgen-cli (the same generator, at the same version, as the tpchgen-arrow crate the tests use),
and writes tests/tpch/answers/qNN.csv: a header, then one line per row; decimals with their
scale, doubles as Python's shortest round-trip text, dates as YYYY-MM-DD, NULL for nulls.

    cargo install tpchgen-cli --version 4.0.0 && tpchgen-cli parquet -s 0.05 -o /tmp/tpch-sf0.05
    python3 -m venv .venv && .venv/bin/pip install duckdb
    .venv/bin/python tests/tpch/make_answers.py /tmp/tpch-sf0.05
"""
import csv
import datetime
import decimal
import pathlib
import sys

import duckdb

TABLES = "customer lineitem nation orders part partsupp region supplier".split()


def text(v):
    if v is None:
        return "NULL"
    if isinstance(v, decimal.Decimal):
        return format(v, "f")
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    return str(v)


def main(data):
    here = pathlib.Path(__file__).parent
    con = duckdb.connect()
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data}/{t}.parquet')")
    for path in sorted((here / "queries").glob("q*.sql")):
        cursor = con.execute(path.read_text())
        header = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        with open(here / "answers" / f"{path.stem}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            for row in rows:
                w.writerow([text(v) for v in row])
        print(f"{path.stem}: {len(rows)} rows")


if __name__ == "__main__":
    main(sys.argv[1])
