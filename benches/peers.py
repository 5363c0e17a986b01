"""Runs one query on a peer engine for `flow bench` (which times this process from outside).

    python peers.py ENGINE DATA_DIR QUERY_FILE OUT.parquet THREADS MEMORY_BYTES

ENGINE is duckdb or polars. Every DATA_DIR/<name>.parquet is a table <name>. The result is
written to OUT.parquet, as flow writes it. Prints the query's own time in seconds on stdout.
Exit 3 (with the reason on stderr) when the engine is not installed or cannot run the query.
"""
import glob
import os
import sys
import time


def tables(data):
    return {os.path.basename(p)[: -len(".parquet")]: p for p in sorted(glob.glob(os.path.join(data, "*.parquet")))}


def duckdb_run(data, sql, out, threads, memory):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET memory_limit = '{memory // 1_000_000}MB'")
    con.execute("SET preserve_insertion_order = false")
    for name, path in tables(data).items():
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
    started = time.perf_counter()
    con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet)")
    return time.perf_counter() - started


def polars_run(data, sql, out, threads, memory):
    # POLARS_MAX_THREADS is read when polars is imported: set by the caller's environment.
    import polars as pl

    ctx = pl.SQLContext({name: pl.scan_parquet(path) for name, path in tables(data).items()})
    started = time.perf_counter()
    try:
        lazy = ctx.execute(sql)
    except Exception as e:  # Polars' SQL does not cover every query (correlated subqueries).
        print(f"unsupported: {str(e).splitlines()[0][:160]}", file=sys.stderr)
        sys.exit(3)
    try:
        lazy.sink_parquet(out)
    except Exception:
        try:
            lazy.collect(engine="streaming").write_parquet(out)
        except Exception as e:
            print(f"unsupported: {str(e).splitlines()[0][:160]}", file=sys.stderr)
            sys.exit(3)
    return time.perf_counter() - started


def main():
    engine, data, query_file, out, threads, memory = sys.argv[1:7]
    sql = open(query_file).read().strip().rstrip(";")
    run = {"duckdb": duckdb_run, "polars": polars_run}[engine]
    try:
        seconds = run(data, sql, out, int(threads), int(memory))
    except ImportError as e:
        print(f"not installed: {e}", file=sys.stderr)
        sys.exit(3)
    print(f"{seconds:.6f}")


if __name__ == "__main__":
    main()
