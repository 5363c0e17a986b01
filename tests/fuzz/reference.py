"""DuckDB's side of flow's differential fuzzer (tests/fuzz/main.rs).

    python reference.py MANIFEST

MANIFEST holds one JSON object per line: {"id", "sql", "tables": {name: parquet path},
"ordered": bool, "flow": path of flow's result as Parquet, or null, "flow_error": str or null}.
For each case DuckDB runs the SQL over the same files, and its rows are compared with flow's:
in order when "ordered", else as multisets; numbers compare by value (integers exactly, others to
a relative 1e-6, so that sums of doubles added in another order agree), other values exactly.
Prints one JSON object per case: {"id", "verdict", "detail"}, where verdict is "agree",
"both_error", "mismatch", "flow_error" (flow failed, DuckDB did not) or "duckdb_error".
"""
import decimal
import json
import math
import sys
import threading

import duckdb

# The time a query gets, as in the Rust side's `TIMEOUT`.
TIMEOUT_SECONDS = 120


def number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else v
    if isinstance(v, float):
        return v
    return None


def same_value(a, b):
    if a is None or b is None:
        return a is None and b is None
    na, nb = number(a), number(b)
    if na is not None and nb is not None:
        if isinstance(na, int) and isinstance(nb, int):
            return na == nb
        fa, fb = float(na), float(nb)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        if math.isinf(fa) or math.isinf(fb):
            return fa == fb
        return abs(fa - fb) <= 1e-6 * max(abs(fa), abs(fb)) + 1e-9
    return type(a) is type(b) and a == b


def same_row(a, b):
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))


def sort_key(row):
    """Orders rows so that equal rows (numbers to about six digits) sit at the same position."""
    key = []
    for v in row:
        n = number(v)
        if v is None:
            key.append((0, ""))
        elif n is not None:
            f = float(n)
            key.append((1, "nan" if math.isnan(f) else f"{f:.5e}"))
        else:
            key.append((2, repr(v)))
    return key


def same_rows(mine, theirs, ordered):
    if len(mine) != len(theirs):
        return f"{len(mine)} rows from flow, {len(theirs)} from DuckDB"
    if ordered:
        for i, (a, b) in enumerate(zip(mine, theirs)):
            if not same_row(a, b):
                return f"row {i}: flow {a!r}, DuckDB {b!r}"
        return None
    a, b = sorted(mine, key=sort_key), sorted(theirs, key=sort_key)
    if all(same_row(x, y) for x, y in zip(a, b)):
        return None
    # Rounding put near-equal numbers in another order: match greedily.
    left = list(b)
    for row in a:
        for i, other in enumerate(left):
            if same_row(row, other):
                del left[i]
                break
        else:
            return f"flow has {row!r}, which DuckDB does not"
    return None


def main():
    out = sys.stdout
    for line in open(sys.argv[1]):
        case = json.loads(line)
        con = duckdb.connect()
        con.execute("SET threads = 2")
        for name, path in case["tables"].items():
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
        # As long as flow is given: a query DuckDB cannot answer in it is too big to judge.
        timer = threading.Timer(TIMEOUT_SECONDS, con.interrupt)
        timer.start()
        try:
            theirs = con.execute(case["sql"]).fetchall()
            error = None
        except Exception as e:  # any DuckDB error
            theirs, error = None, str(e).splitlines()[0]
        finally:
            timer.cancel()
        flow_error = case.get("flow_error")
        if error is not None and flow_error is not None:
            verdict, detail = "both_error", f"DuckDB: {error}; flow: {flow_error}"
        elif error is not None:
            verdict, detail = "duckdb_error", error
        elif flow_error is not None:
            verdict, detail = "flow_error", flow_error
        else:
            mine = con.execute(f"SELECT * FROM read_parquet('{case['flow']}')").fetchall()
            diff = same_rows(mine, theirs, case["ordered"])
            verdict, detail = ("agree", None) if diff is None else ("mismatch", diff)
        out.write(json.dumps({"id": case["id"], "verdict": verdict, "detail": detail}) + "\n")
        out.flush()
        con.close()


if __name__ == "__main__":
    main()
