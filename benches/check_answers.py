"""The 22 TPC-H queries on flow and on DuckDB, answers compared row by row.

    .venv/bin/python benches/check_answers.py DATA_DIR [BUDGET]

DATA_DIR holds the tables as `tpchgen-cli parquet` writes them; BUDGET is flow's (default
512MiB; DuckDB gets 4 GB, its answer is the reference). Each query's result is written to Parquet
by both engines, the rows sorted, numbers compared to a millionth of their size. Exit 1 when any
answer differs or flow fails.
"""
import os
import subprocess
import sys
import tempfile

import duckdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def close(u, v):
    if isinstance(u, (int, float)) and isinstance(v, (int, float)):
        return abs(float(u) - float(v)) <= 1e-6 * max(1.0, abs(float(v)))
    return u == v


def main():
    data = sys.argv[1]
    budget = sys.argv[2] if len(sys.argv) > 2 else "512MiB"
    flow = os.path.join(ROOT, "target", "release", "flow")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = os.path.join(tmp, "flow.parquet"), os.path.join(tmp, "duckdb.parquet")
        for q in range(1, 23):
            query = os.path.join(ROOT, "tests", "tpch", "queries", f"q{q:02d}.sql")
            run = subprocess.run(
                [flow, "sql", "--mem-budget", budget, "--threads", "2", "--sources", data, "-o", ours,
                 open(query).read()],
                capture_output=True, text=True)
            if run.returncode != 0:
                print(f"q{q:02d}: flow failed: {run.stderr.strip()}")
                bad += 1
                continue
            peers = os.path.join(ROOT, "benches", "peers.py")
            subprocess.run([sys.executable, peers, "duckdb", data, query, theirs, "2", "4000000000"],
                           check=True, capture_output=True)
            con = duckdb.connect()
            # Decimals as floats, so that the two engines' types need not match exactly.
            rows = [sorted((tuple(float(x) if hasattr(x, "as_tuple") else x for x in r)
                            for r in con.execute(f"SELECT * FROM '{path}'").fetchall()),
                           key=lambda r: tuple((True, 0) if x is None else (False, x) for x in r))
                    for path in (ours, theirs)]
            same = len(rows[0]) == len(rows[1]) and all(
                len(a) == len(b) and all(close(u, v) for u, v in zip(a, b)) for a, b in zip(*rows))
            print(f"q{q:02d}: {'same' if same else 'DIFFERENT'} ({len(rows[0])} rows against {len(rows[1])})")
            bad += not same
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
