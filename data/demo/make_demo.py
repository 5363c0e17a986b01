"""Makes flow's demo data set (the committed files in this folder), deterministically.

The `description` column is about 1 KB a row but compresses to almost nothing, so 300 000 rows
decode to about 300 MB: more than the README's 256 MiB budget, while the files stay small.

    python3 -m venv .venv && .venv/bin/pip install duckdb
    .venv/bin/python data/demo/make_demo.py [ROWS_PER_FILE] [OUT_DIR]

With a larger ROWS_PER_FILE it makes the same shape at any size (e.g. 50_000_000 for ~1 GB).
"""
import sys
import duckdb

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 150_000
out = sys.argv[2] if len(sys.argv) > 2 else "data/demo"
con = duckdb.connect()
con.execute("SELECT setseed(0.42)")
categories = ["books", "games", "garden", "grocery", "music", "outdoor", "toys", "tools"]
for part in (1, 2):
    con.execute(f"""
        COPY (
            SELECT
                CAST(({part} - 1) * {rows} + i AS BIGINT)                           AS a,
                CAST(hash(i * 7 + {part}) % 100 AS INTEGER)                          AS b,
                {categories!r}[1 + CAST(hash(i + {part}) % 8 AS INTEGER)]            AS category,
                DATE '2024-01-01' + CAST(hash(i * 3 + {part}) % 182 AS INTEGER)      AS day,
                CAST((hash(i * 11 + {part}) % 100000) / 100.0 AS DECIMAL(12, 2))     AS amount,
                TIMESTAMP '2024-01-01' + to_seconds(CAST(hash(i * 13) % 15724800 AS BIGINT)) AS ts,
                CASE WHEN hash(i * 17 + {part}) % 10 = 0 THEN NULL
                     ELSE 'user-' || CAST(hash(i * 19) % 5000 AS VARCHAR) END      AS user_id,
                hash(i * 23 + {part}) % 2 = 0                                        AS flagged,
                -- ~1 KB of text from 200 variants: a few KB on disk (dictionary and zstd),
                -- hundreds of MB once decoded, which is what makes the demo out of core.
                'variant ' || CAST(hash(i * 29) % 200 AS VARCHAR) || ': '
                    || repeat(md5(CAST(hash(i * 29) % 200 AS VARCHAR)), 30)         AS description
            FROM range({rows}) t(i)
        ) TO '{out}/events-{part}.parquet' (FORMAT parquet, ROW_GROUP_SIZE 16384, COMPRESSION zstd)
    """)
con.execute(f"""
    COPY (SELECT * FROM (VALUES
        ('books', 'media', 1), ('games', 'media', 2), ('garden', 'home', 3), ('grocery', 'food', 1),
        ('music', 'media', 2), ('outdoor', 'home', 3), ('toys', 'kids', 2), ('tools', 'home', 1)
    ) t(category, department, priority)) TO '{out}/categories.csv' (HEADER, DELIMITER ',')
""")
