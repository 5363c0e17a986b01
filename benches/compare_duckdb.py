"""flow against DuckDB, side by side on the same files and threads: scans to Parquet, and the
out-of-core shapes (an aggregate with one group per order, a sort of six columns by a string, a
join with a grouped count).

    cargo install tpchgen-cli && tpchgen-cli parquet -s 10 -o /tmp/tpch-sf10 --tables lineitem,orders
    cargo build --release -p flow-cli
    python3 -m venv .venv && .venv/bin/pip install duckdb
    .venv/bin/python benches/compare_duckdb.py /tmp/tpch-sf10 --threads 2 --budget 512MiB --runs 1
    .venv/bin/python benches/compare_duckdb.py /tmp/tpch-sf10 --only q_join_orders q_group_orderkey

Each run is a fresh process (timed from outside, peak RSS from the kernel via wait4); the engines
alternate, and the table shows the median wall time and the largest peak RSS of each.
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

QUERIES = {
    "q_filter_project": (
        "SELECT l_orderkey, l_extendedprice * (1 - l_discount) AS net, l_shipmode "
        "FROM {lineitem} WHERE l_shipdate >= DATE '1995-01-01' AND l_quantity < 24"
    ),
    "q_wide_strings": (
        "SELECT l_orderkey, l_partkey, upper(l_comment) AS c, l_shipinstruct, l_shipdate "
        "FROM {lineitem} WHERE l_comment LIKE '%carefully%'"
    ),
    "q_all_columns": "SELECT * FROM {lineitem} WHERE l_discount BETWEEN 0.05 AND 0.07",
    "q_group_orderkey": (
        "SELECT l_orderkey, count(*) AS n, sum(l_quantity) AS q, max(l_shipdate) AS last "
        "FROM {lineitem} GROUP BY l_orderkey"
    ),
    "q_sort_comment": (
        "SELECT l_orderkey, l_partkey, l_suppkey, l_quantity, l_shipdate, l_comment "
        "FROM {lineitem} ORDER BY l_comment, l_orderkey"
    ),
    "q_join_orders": (
        "SELECT o_orderpriority, count(*) AS n FROM {lineitem} JOIN {orders} ON l_orderkey = o_orderkey "
        "GROUP BY o_orderpriority"
    ),
}


def run(cmd):
    """Runs a command; returns (wall seconds, peak RSS bytes, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{err.read().decode()}")
        return elapsed, usage.ru_maxrss * 1024, out.read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tpch_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", default="512MiB")
    ap.add_argument("--duckdb-limit", default="512MB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--flow", default="target/release/flow")
    ap.add_argument("--only", nargs="*", help="run only these queries")
    ap.add_argument("--duckdb-compression", default="snappy", help="DuckDB's COPY codec (its default: snappy; flow writes zstd)")
    args = ap.parse_args()
    def table(name):
        path = os.path.join(args.tpch_dir, f"{name}.parquet")
        return path if os.path.exists(path) else os.path.join(args.tpch_dir, name, "*.parquet")

    lineitem, orders = table("lineitem"), table("orders")
    out = tempfile.mkdtemp()
    print("| query | flow s | DuckDB s (process) | DuckDB s (query only) | flow / DuckDB process | flow peak RSS | DuckDB peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, sql in QUERIES.items():
        if args.only and name not in args.only:
            continue
        q = sql.format(lineitem=f"'{lineitem}'", orders=f"'{orders}'")
        flow_cmd = [args.flow, "sql", "--mem-budget", args.budget, "--threads", str(args.threads),
                    "-o", os.path.join(out, "flow.parquet"), q]
        duck_script = (
            "import duckdb, time; c = duckdb.connect(); c.execute('SET enable_progress_bar=false'); "
            f"c.execute(\"SET threads={args.threads}\"); c.execute(\"SET memory_limit='{args.duckdb_limit}'\"); "
            "t = time.perf_counter(); "
            f"c.execute(\"COPY ({q}) TO '{os.path.join(out, 'duck.parquet')}' (FORMAT parquet, COMPRESSION {args.duckdb_compression})\"); "
            "print(time.perf_counter() - t)"
        )
        duck_cmd = [sys.executable, "-c", duck_script]
        flow_t, duck_t, duck_q = [], [], []
        flow_rss = duck_rss = 0
        for _ in range(args.runs):
            t, r, _ = run(flow_cmd)
            flow_t.append(t)
            flow_rss = max(flow_rss, r)
            t, r, printed = run(duck_cmd)
            duck_t.append(t)
            duck_q.append(float(printed.strip().splitlines()[-1]))
            duck_rss = max(duck_rss, r)
        f, d, dq = statistics.median(flow_t), statistics.median(duck_t), statistics.median(duck_q)
        print(f"| {name} | {f:.2f} | {d:.2f} | {dq:.2f} | {f / d:.2f} | {flow_rss / 2**20:.0f} MiB | {duck_rss / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
